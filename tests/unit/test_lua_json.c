/* Unit tests for the Lua host's json module (rl_lua_json): a bare lua_State with the standard
 * library and json as a global, no host and no loop. Every document is decoded from an
 * exact-size heap copy, so that a read past its end is caught by the sanitizers. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <float.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_lua_int.h"
#include "rl_metrics.h"

static lua_State *L;

static int setup(void **state)
{
    (void)state;
    L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    rl_lua_json_open(L);
    lua_setglobal(L, "json");
    return 0;
}

/* The same tests with known objects in the registry set, the way where the header probe fails. */
static int setup_known_set(void **state)
{
    setup(state);
    assert_int_equal(rl_lua_json_header_bit(-1), 1); /* Debian's Lua 5.4: the probe passes */
    rl_lua_json_header_bit(0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(lua_gettop(L), 0);
    lua_close(L);
    L = NULL;
    rl_lua_json_close();
    if (rl_lua_json_header_bit(-1) == 0)
        rl_lua_json_header_bit(1);
    return 0;
}

/* rl_lua_json_decode on an exact-size copy of s[0..n): what it returned; the stack holds one
   value more (the value or the message). */
static int decode_n(const char *s, size_t n)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int top = lua_gettop(L);
    int ok = rl_lua_json_decode(L, copy, n);
    free(copy);
    assert_int_equal(lua_gettop(L), top + 1);
    if (!ok) {
        assert_int_equal(lua_type(L, -1), LUA_TSTRING);
        assert_memory_equal(lua_tostring(L, -1), "json: ", 6);
    }
    return ok;
}

static void decode_ok(const char *s)
{
    if (!decode_n(s, strlen(s)))
        fail_msg("decoding %s: %s", s, lua_tostring(L, -1));
}

/* Decoding s must fail with a message containing what. */
static void decode_bad_n(const char *s, size_t n, const char *what)
{
    if (decode_n(s, n))
        fail_msg("decoding %.*s succeeded", (int)n, s);
    const char *m = lua_tostring(L, -1);
    if (what && !strstr(m, what))
        fail_msg("decoding %.*s: \"%s\" does not say \"%s\"", (int)n, s, m, what);
    lua_pop(L, 1);
}

static void decode_bad(const char *s, const char *what)
{
    decode_bad_n(s, strlen(s), what);
}

/* Encodes the value on top (popping it) and compares the text with want. */
static void encode_is(const char *want)
{
    if (!rl_lua_json_encode(L, -1))
        fail_msg("encoding for %s: %s", want, lua_tostring(L, -1));
    size_t n;
    const char *t = lua_tolstring(L, -1, &n);
    if (n != strlen(want) || memcmp(t, want, n) != 0)
        fail_msg("encoded \"%.*s\", want \"%s\"", (int)n, t, want);
    lua_pop(L, 2);
}

/* decode(s) then encode gives s back, byte for byte. */
static void roundtrip(const char *s)
{
    decode_ok(s);
    encode_is(s);
}

/* Runs a Lua chunk that must return true. */
static void lua_true(const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK)
        fail_msg("%s: %s", code, lua_tostring(L, -1));
    if (!lua_toboolean(L, -1))
        fail_msg("false: %s", code);
    lua_settop(L, 0);
}

static uint64_t bits_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_roundtrip_exact(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "{}", "[]", "{\"a\":{}}", "[{}]", "[[],{}]", "{\"a\":[],\"b\":{\"c\":{}}}",
        "9007199254740993", "-9223372036854775808", "9223372036854775807", "0", "-1",
        "0.30000000000000004", "0.1", "1.0", "-0.0", "5e-324", "1e+300", "-1.5e-07",
        "2.2250738585072014e-308", "1.7976931348623157e+308", "123456789012345.0",
        "1e+15", "0.3333333333333333", "4.35",
        "true", "false", "null", "\"\"", "[1,2,3]", "[\"a\",true,false,1.5,[]]",
        "\"/\"", "\"a/b\"", "\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\"",
        "\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf \x7f\"",
        "{\"type\":\"x\",\"topic\":\"y\",\"A\":1,\"a\":{\"b\":[true]}}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++)
        roundtrip(docs[i]);
    /* not canonical: DEL is written raw, a null member is dropped */
    decode_ok("\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\\u007f\"");
    encode_is("\"\\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u001f\x7f\"");
    decode_ok("{\"type\":\"x\",\"topic\":\"y\",\"A\":1,\"a\":{\"b\":[true]},\"b\":null}");
    encode_is("{\"type\":\"x\",\"topic\":\"y\",\"A\":1,\"a\":{\"b\":[true]}}");
    /* surrogate pairs come back as the raw 4 bytes; '/' escaped comes back unescaped */
    decode_ok("\"\\ud83d\\ude00\\uD834\\uDD1E\\/\"");
    encode_is("\"\xf0\x9f\x98\x80\xf0\x9d\x84\x9e/\"");
    decode_ok(" \t\r\n[ 1 , { \"a\" : 2 } ] \n");
    encode_is("[1,{\"a\":2}]");
}

static void test_numbers(void **state)
{
    (void)state;
    decode_ok("42");
    assert_true(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 42);
    decode_ok("42.0");
    assert_false(lua_isinteger(L, -1));
    assert_true(lua_tonumber(L, -1) == 42.0);
    decode_ok("9007199254740993");
    assert_true(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 9007199254740993LL);
    decode_ok("-9223372036854775808");
    assert_true(lua_isinteger(L, -1) && lua_tointeger(L, -1) == INT64_MIN);
    decode_ok("9223372036854775807");
    assert_true(lua_isinteger(L, -1) && lua_tointeger(L, -1) == INT64_MAX);
    decode_ok("-0");
    assert_true(lua_isinteger(L, -1) && lua_tointeger(L, -1) == 0);
    lua_pop(L, 6);
    /* past int64: floats */
    static const struct {
        const char *s;
        double v;
    } floats[] = {
        {"9223372036854775808", 9223372036854775808.0},
        {"-9223372036854775809", -9223372036854775808.0},
        {"18446744073709551616", 18446744073709551616.0},
        {"184467440737095516160000000000", 1.8446744073709552e29},
        {"0.30000000000000004", 0.30000000000000004},
        {"1E2", 100.0},
        {"1e-2", 0.01},
        {"2.5E+3", 2500.0},
        {"-0.0", -0.0},
        {"5e-324", 5e-324},
        {"1e400", HUGE_VAL},
        {"-1e400", -HUGE_VAL},
        {"1e-400", 0.0},
        /* longer than the 64-byte copy strtod normally gets */
        {"0.1000000000000000055511151231257827021181583404541015625000000000000000000001", 0.1},
    };
    for (size_t i = 0; i < sizeof floats / sizeof *floats; i++) {
        decode_ok(floats[i].s);
        if (lua_isinteger(L, -1) || bits_of((double)lua_tonumber(L, -1)) != bits_of(floats[i].v))
            fail_msg("%s decoded as %.17g", floats[i].s, (double)lua_tonumber(L, -1));
        lua_pop(L, 1);
    }
    /* more digits than luaL_Buffer holds inline: 0.(2000 zeros)1e2001 is exactly 1 */
    size_t bn = 2 + 2000 + 6;
    char *bignum = malloc(bn);
    assert_non_null(bignum);
    memcpy(bignum, "0.", 2);
    memset(bignum + 2, '0', 2000);
    memcpy(bignum + 2002, "1e2001", 6);
    assert_true(decode_n(bignum, bn));
    assert_false(lua_isinteger(L, -1));
    assert_true(lua_tonumber(L, -1) == 1.0);
    lua_pop(L, 1);
    free(bignum);
    /* 2^64 does not come back byte for byte (floats are written in %.17g form), but exactly */
    decode_ok("18446744073709551616");
    encode_is("1.8446744073709552e+19");
    decode_ok("1e300");
    encode_is("1e+300");
    decode_ok("350e-0");
    encode_is("350.0");
    decode_ok("[0.5,-2,1E1]");
    encode_is("[0.5,-2,10.0]");

    lua_pushnumber(L, 42.0);
    encode_is("42.0");
    lua_pushnumber(L, -7.0);
    encode_is("-7.0");
    lua_pushnumber(L, 1e15);
    encode_is("1e+15");
    lua_pushnumber(L, 999999999999999.0);
    encode_is("999999999999999.0");
    lua_pushnumber(L, 1.0 / 3);
    encode_is("0.3333333333333333");
    lua_pushnumber(L, 0.1 + 0.2);
    encode_is("0.30000000000000004");
    lua_pushnumber(L, NAN);
    encode_is("null");
    lua_pushnumber(L, HUGE_VAL);
    encode_is("null");
    lua_pushnumber(L, -HUGE_VAL);
    encode_is("null");
    lua_pushinteger(L, INT64_MIN);
    encode_is("-9223372036854775808");
    lua_pushnumber(L, DBL_TRUE_MIN);
    encode_is("5e-324");
    lua_true("return json.encode({1/0, 0/0, 2}) == '[null,null,2]'");
    lua_true("return math.type(json.decode('1.0')) == 'float' and math.type(json.decode('1')) == 'integer'");
}

/* Every double written by the encoder reads back as the same bits: subnormals, boundaries and
   a deterministic spread of bit patterns. */
static void test_float_roundtrip_bits(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t b = i < 4000 ? (x & 0x000fffffffffffffu) | (i & 1ull) << 63 : x; /* subnormals */
        double d;
        memcpy(&d, &b, sizeof d);
        if (!isfinite(d))
            continue;
        lua_pushnumber(L, d);
        assert_true(rl_lua_json_encode(L, -1));
        size_t n;
        const char *t = lua_tolstring(L, -1, &n);
        assert_true(n <= 26);
        assert_true(decode_n(t, n));
        assert_false(lua_isinteger(L, -1));
        if (bits_of((double)lua_tonumber(L, -1)) != b)
            fail_msg("%.17g written as %.*s", d, (int)n, t);
        lua_pop(L, 3);
    }
}

static void test_strings(void **state)
{
    (void)state;
    /* a byte to escape at every place of strings of every length up to three words: the
       whole-copy fast path of the encoder hands over to the byte loop at the right byte */
    lua_true("local want = {['\"'] = '\\\\\"', ['\\\\'] = '\\\\\\\\', ['\\n'] = '\\\\n',\n"
             "  ['\\1'] = '\\\\u0001', ['\\195\\169'] = '\\195\\169', ['\\255'] = '\\\\ufffd'}\n"
             "for n = 0, 24 do\n"
             "  local plain = string.rep('p', n)\n"
             "  if json.encode(plain) ~= '\"' .. plain .. '\"' then return false end\n"
             "  for pos = 1, n do for ch, esc in pairs(want) do\n"
             "    local s = string.rep('a', pos - 1) .. ch .. string.rep('b', n - pos)\n"
             "    local e = '\"' .. string.rep('a', pos - 1) .. esc .. string.rep('b', n - pos) .. '\"'\n"
             "    if json.encode(s) ~= e then return false end\n"
             "    if ch ~= '\\255' and json.decode(e) ~= s then return false end\n"
             "  end end\n"
             "end return true");
    static const struct {
        const char *json, *bytes;
    } cases[] = {
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t"},
        {"\"\\u00e9\\u00E9\"", "\xc3\xa9\xc3\xa9"},
        {"\"\\u0041\\u007f\\u0080\\u07ff\\u0800\\uffff\"", "A\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf"},
        {"\"\\ud800\\udc00\\udbff\\udfff\"", "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf"},
        {"\"x\\ud83d\\ude00y\"", "x\xf0\x9f\x98\x80y"},
        {"\"\xc3\xa9\\n\xe2\x82\xac\"", "\xc3\xa9\n\xe2\x82\xac"},
        {"\"" "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" "\\t\"",
         "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\t"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        decode_ok(cases[i].json);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        assert_int_equal(n, strlen(cases[i].bytes));
        assert_memory_equal(s, cases[i].bytes, n);
        lua_pop(L, 1);
    }
    /* a string longer than luaL_Buffer's inline space, with escapes all along */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '"');
    for (int i = 0; i < 2000; i++)
        luaL_addstring(&b, "ab\\u00e9\\n");
    luaL_addchar(&b, '"');
    luaL_pushresult(&b);
    size_t n;
    const char *doc = lua_tolstring(L, -1, &n);
    assert_true(decode_n(doc, n));
    size_t dn;
    const char *s = lua_tolstring(L, -1, &dn);
    assert_int_equal(dn, 2000 * 5);
    assert_memory_equal(s + 5 * 1999, "ab\xc3\xa9\n", 5);
    lua_pop(L, 2);

    /* encoding: only '"', '\' and controls are escaped; invalid UTF-8 becomes U+FFFD */
    lua_pushlstring(L, "a\0b", 3);
    encode_is("\"a\\u0000b\"");
    lua_pushstring(L, "/\x7f\x1b\x01");
    encode_is("\"/\x7f\\u001b\\u0001\"");
    lua_pushstring(L, "\xff");
    encode_is("\"\\ufffd\"");
    lua_pushstring(L, "a\xc3");
    encode_is("\"a\\ufffd\"");
    lua_pushstring(L, "\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80");
    encode_is("\"\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd\\ufffd\"");
    lua_pushstring(L, "\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9");
    encode_is("\"\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9\"");
    /* the input is not NUL-terminated; a length short of the closing quote is an error */
    decode_bad_n("\"ab\"", 3, "unterminated string");
    assert_true(decode_n("123", 2));
    assert_true(lua_tointeger(L, -1) == 12);
    lua_pop(L, 1);
}

static void test_objects(void **state)
{
    (void)state;
    /* repeated keys: the first wins, also when it is null or written with an escape */
    lua_true("local t = json.decode('{\"a\":1,\"a\":2,\"b\":3}') return t.a == 1 and t.b == 3");
    lua_true("local t = json.decode('{\"a\":1,\"\\\\u0061\":2}') return t.a == 1");
    lua_true("local t = json.decode('{\"a\":1,\"a\":null}') return t.a == 1");
    lua_true("local t = json.decode('{\"a\":null,\"a\":1,\"b\":2}') return t.a == nil and t.b == 2");
    lua_true("local t = json.decode('{\"a\":{\"x\":1},\"a\":[2]}') return t.a.x == 1");
    /* an object of nothing but nulls is still an object */
    lua_true("local t = json.decode('{\"a\":null,\"a\":1}') return next(t) == nil and json.encode(t) == '{}'");
    /* past the batch of 32 members: same rules, and no placeholder is left behind */
    lua_true("local parts = {}\n"
             "for i = 1, 40 do parts[#parts + 1] = string.format('\"k%d\":%d', i, i) end\n"
             "parts[3] = '\"k3\":null'\n"
             "parts[#parts + 1] = '\"k1\":100'\n"      /* repeat of a batched key */
             "parts[#parts + 1] = '\"k3\":300'\n"      /* repeat of a batched null */
             "parts[#parts + 1] = '\"n\":null'\n"      /* a null past the batch */
             "parts[#parts + 1] = '\"n\":5'\n"         /* and its repeat */
             "parts[#parts + 1] = '\"k40\":400'\n"     /* repeat of a key past the batch */
             "local t = json.decode('{' .. table.concat(parts, ',') .. '}')\n"
             "local count = 0\n"
             "for k, v in pairs(t) do count = count + 1; if math.type(v) ~= 'integer' then return false end end\n"
             "return count == 39 and t.k1 == 1 and t.k3 == nil and t.n == nil and t.k40 == 40\n"
             "  and t.k33 == 33 and getmetatable(t) == nil");
    lua_true("local parts = {}\n"
             "for i = 1, 50 do parts[i] = '\"k' .. i .. '\":null' end\n"
             "local t = json.decode('{' .. table.concat(parts, ',') .. '}')\n"
             "return next(t) == nil and getmetatable(t) == nil and json.encode(t) == '{}'");
    /* decoded objects are known objects (no metatable): emptied at run time they stay {} */
    lua_true("return getmetatable(json.decode('{\"a\":1}')) == nil and getmetatable(json.decode('[]')) == nil");
    lua_true("return getmetatable(json.decode('{}')) == nil and json.encode(json.decode('{}')) == '{}'");
    lua_true("return json.encode(json.decode('{\"a\":{}}').a) == '{}'");
    lua_true("local t = json.decode('{\"a\":1,\"b\":{\"c\":2}}') t.a = nil; t.b.c = nil\n"
             "return json.encode(t) == '{\"b\":{}}'");
    lua_true("local t = json.decode('{\"a\":1}') t.a = nil return json.encode(t) == '{}'");
    lua_true("local t = json.decode('[1]') t[1] = nil return json.encode(t) == '[]'");
    /* a table encoded as an object once is one: emptied later it encodes as {} */
    lua_true("local t = {x = 1} assert(json.encode(t) == '{\"x\":1}') t.x = nil\n"
             "return json.encode(t) == '{}' and json.encode({}) == '[]'");
    lua_true("local t = {} t.x = 1 t.x = nil return json.encode(t) == '[]'"); /* never seen */
    /* the plugin may still set its own metatable on them */
    lua_true("local t = json.decode('{}') return pcall(setmetatable, t, {}) and json.encode(t) == '{}'");
    lua_true("local t = json.object() return getmetatable(t) == nil and json.encode(t) == '{}'");
    lua_true("local t = json.object() t.x = 1 return json.encode(t) == '{\"x\":1}'");
    lua_true("local t = json.object() t[1] = 'a' return json.encode(t) == '[\"a\"]'");
    lua_true("local a, b = json.object(), json.object() return a ~= b and json.encode({a = a, b = {}}) == '{\"a\":{},\"b\":[]}'");
    /* the set holds nothing alive */
    lua_true("collectgarbage() local before = collectgarbage('count')\n"
             "for i = 1, 20000 do json.encode(json.decode('{\"k\":' .. i .. '}')) end\n"
             "collectgarbage() collectgarbage() return collectgarbage('count') < before + 64");
    lua_true("return json.encode(setmetatable({}, {__metatable = 'json.object'})) == '[]'");
    /* a known object's memory, reused by a new table, does not make that one known */
    lua_true("for i = 1, 3000 do\n"
             "  local t = json.object() t = json.decode('{}') t = nil\n"
             "  if i % 97 == 0 then collectgarbage() end\n"
             "  if json.encode({}) ~= '[]' or json.encode({{}}) ~= '[[]]' then return false end\n"
             "end return true");
    /* metamethods on and of a known object leave it known */
    lua_true("local t = json.decode('{\"a\":1}') local u = setmetatable({}, t) t.__index = t\n"
             "local _ = u.a == 1 and (u == setmetatable({}, t)) t.a = nil t.__index = nil\n"
             "setmetatable(t, {__len = function() return 0 end}) local _ = #t setmetatable(t, nil)\n"
             "for i = 1, 40 do t['k' .. i] = i end for i = 1, 40 do t['k' .. i] = nil end\n"
             "collectgarbage() return json.encode(t) == '{}'");
    /* key order: "type", "topic", then bytes; the spec's example frame byte for byte */
    lua_true("return json.encode({type = 'session_state', data = {status = 'active'}}) ==\n"
             "  '{\"type\":\"session_state\",\"data\":{\"status\":\"active\"}}'");
    lua_true("return json.encode({b = 1, a = 2, topic = 't', type = 'x', A = 3, [''] = 4, aa = 5}) ==\n"
             "  '{\"type\":\"x\",\"topic\":\"t\",\"\":4,\"A\":3,\"a\":2,\"aa\":5,\"b\":1}'");
    /* more keys than fit on the C stack: still sorted, every value right */
    lua_true("local t, want = {}, {}\n"
             "for i = 1, 300 do t[string.format('k%03d', i)] = i end\n"
             "for i = 1, 300 do want[i] = string.format('\"k%03d\":%d', i, i) end\n"
             "t.type = 'big'\n"
             "return json.encode(t) == '{\"type\":\"big\",' .. table.concat(want, ',') .. '}'");
}

/* Object keys come from a small cache of interned strings (rl_lua_json.c push_key): keys that
   share a slot, keys on both sides of its length bound, escaped and empty keys all decode to
   the same strings as Lua's own, pass after pass. */
static void test_key_cache(void **state)
{
    (void)state;
    lua_true("local keys = {'', 'a', 'b', 'ab', 'ba', 'type', 'request_id', 'data', 'conn_pid',\n"
             "  string.rep('k', 21), string.rep('k', 22), string.rep('k', 23), string.rep('q', 40),\n"
             "  string.rep('q', 41), 'caf\\\\u00e9', 'tab\\\\t'}\n"
             "for i = 1, 300 do keys[#keys + 1] = 'key' .. i end\n"
             "for pass = 1, 3 do\n"
             "  for i, k in ipairs(keys) do\n"
             "    local t = json.decode('{\"' .. k .. '\":' .. i .. ',\"x' .. k .. '\":' .. -i .. '}')\n"
             "    local plain = json.decode('\"' .. k .. '\"')\n"
             "    if t[plain] ~= i or t['x' .. plain] ~= -i then return false end\n"
             "    local n = 0 for key in pairs(t) do n = n + 1 if key ~= plain and key ~= 'x' .. plain then return false end end\n"
             "    if n ~= 2 then return false end\n"
             "  end\n"
             "end\n"
             "return json.decode('{\"caf\\\\u00e9\":1}')['caf\\xc3\\xa9'] == 1");
    /* what the cache keeps is bounded: many distinct keys leave no more than its slots alive */
    lua_true("collectgarbage() local before = collectgarbage('count')\n"
             "for i = 1, 20000 do json.decode('{\"key' .. i .. '\":1}') end\n"
             "collectgarbage() collectgarbage() return collectgarbage('count') < before + 16");
}

static void test_arrays(void **state)
{
    (void)state;
    /* a null item leaves its index empty (a hole), as the cJSON decoder did */
    lua_true("local t = json.decode('[1,null,3]') return t[1] == 1 and t[2] == nil and t[3] == 3");
    lua_true("local t = json.decode('[null]') return next(t) == nil and json.encode(t) == '[]'");
    lua_true("return json.encode(json.decode('[1,null]')) == '[1]'");
    lua_true("local v, e = json.encode(json.decode('[1,null,3]')) return v == nil and e:find('sparse')");
    /* past the batch of 32 items */
    lua_true("local parts = {}\n"
             "for i = 1, 1000 do parts[i] = (i % 7 == 0) and 'null' or tostring(i) end\n"
             "local t = json.decode('[' .. table.concat(parts, ',') .. ']')\n"
             "for i = 1, 1000 do\n"
             "  local want = i if i % 7 == 0 then want = nil end\n"
             "  if t[i] ~= want then return false end\n"
             "end\n"
             "return true");
    lua_true("local t = {} for i = 1, 1000 do t[i] = i * 0.5 end\n"
             "local back = json.decode(json.encode(t))\n"
             "for i = 1, 1000 do if back[i] ~= t[i] or math.type(back[i]) ~= 'float' then return false end end\n"
             "return #back == 1000");
}

static void test_decode_errors(void **state)
{
    (void)state;
    static const struct {
        const char *doc, *what;
    } bad[] = {
        {"[1] x", "trailing data"}, {"{} {}", "trailing data"}, {"1 2", "trailing data"},
        {"\"a\"\"", "trailing data"}, {"[1]\v", "trailing data"},
        {"\"\\x\"", "bad escape"}, {"\"\\U0041\"", "bad escape"}, {"\"\\'\"", "bad escape"},
        {"\"\\u00g0\"", "bad \\u escape"}, {"\"\\u12\"", "bad \\u escape"},
        {"\"\\u0000\"", "\\u0000"}, {"{\"k\\u0000\":1}", "\\u0000"},
        {"\"\\ud800\"", "lone surrogate"}, {"\"\\udc00\"", "lone surrogate"},
        {"\"\\ud800\\u0041\"", "lone surrogate"}, {"\"\\ud800x\"", "lone surrogate"},
        {"\"\\udbff\\udbff\"", "lone surrogate"}, {"\"\\ude00\\ud83d\"", "lone surrogate"},
        {"\"a\x01\"", "control character"}, {"\"\t\"", "control character"},
        {"\"\n\"", "control character"}, {"\"\x1f\"", "control character"},
        {"\"\xff\"", "invalid UTF-8"}, {"\"\xc3\"", "invalid UTF-8"}, {"\"\xc3(\"", "invalid UTF-8"},
        {"\"\xc0\xaf\"", "invalid UTF-8"}, {"\"\xe0\x80\xaf\"", "invalid UTF-8"},
        {"\"\xed\xa0\x80\"", "invalid UTF-8"}, {"\"\xf4\x90\x80\x80\"", "invalid UTF-8"},
        {"\"\xf8\x88\x80\x80\x80\"", "invalid UTF-8"}, {"\"\\n\xff\"", "invalid UTF-8"},
        {"\"\x80\"", "invalid UTF-8"},
        {"01", "leading zero"}, {"-01", "leading zero"}, {"[00]", "leading zero"},
        {"-", "bad number"}, {"-a", "bad number"}, {"1.", "bad number"}, {"1.e5", "bad number"},
        {"1e", "bad number"}, {"1e+", "bad number"}, {"1E-x", "bad number"},
        {".5", "unexpected character"}, {"+1", "unexpected character"},
        {"0x1", "trailing data"}, {"1.5.2", "trailing data"},
        {"NaN", "unexpected character"}, {"Infinity", "unexpected character"},
        {"-Infinity", "bad number"}, {"nul", "unexpected character"}, {"nulll", "trailing data"},
        {"tru", "unexpected character"}, {"True", "unexpected character"},
        {"[1,]", "unexpected character"}, {"{\"a\":1,}", "expected a string key"},
        {"[,1]", "unexpected character"}, {"{,}", "expected a string key"},
        {"[1 2]", "expected ',' or ']'"}, {"{\"a\":1 \"b\":2}", "expected ',' or '}'"},
        {"{\"a\" 1}", "expected ':'"}, {"{a:1}", "expected a string key"},
        {"{1:1}", "expected a string key"}, {"'a'", "unexpected character"},
        {"/*c*/1", "unexpected character"}, {"[1]//", "trailing data"},
        {"", "unexpected end"}, {"  \n", "unexpected end"}, {"[", "unexpected end"},
        {"{", "unexpected end"}, {"[1", "unexpected end"}, {"{\"a\"", "unexpected end"},
        {"{\"a\":", "unexpected end"}, {"{\"a\":1", "unexpected end"}, {"\"abc", "unterminated"},
        {"\"\\", "unterminated"}, {"\xef\xbb\xbf{}", "unexpected character"},
        {"]", "unexpected character"}, {"\"\\u", "bad \\u escape"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        decode_bad(bad[i].doc, bad[i].what);
    decode_bad_n("[1]\0", 4, "trailing data");
    decode_bad_n("\"a\0b\"", 5, "control character");
    /* the message says where */
    decode_bad("[1,x]", "at byte 3");
    decode_bad("{\"a\":tx}", "at byte 5");
    /* json.decode gives nil and the message */
    lua_true("local v, e = json.decode('[1') return v == nil and e:find('^json: ') ~= nil");
    lua_true("local v, e = json.decode('null') return v == nil and e == nil");
}

/* Depth: RL_LUA_JSON_DEPTH containers may nest, one more is an error, both ways. */
static void test_depth(void **state)
{
    (void)state;
    char doc[6 * (RL_LUA_JSON_DEPTH + 1) + 16]; /* up to "{\"k\":" and "}" a level */
    for (int depth = RL_LUA_JSON_DEPTH; depth <= RL_LUA_JSON_DEPTH + 1; depth++) {
        for (int mixed = 0; mixed < 2; mixed++) {
            size_t n = 0;
            for (int i = 0; i < depth; i++) {
                if (mixed && i % 2) {
                    memcpy(doc + n, "{\"k\":", 5);
                    n += 5;
                } else {
                    doc[n++] = '[';
                }
            }
            doc[n++] = '1';
            for (int i = depth - 1; i >= 0; i--)
                doc[n++] = mixed && i % 2 ? '}' : ']';
            if (depth <= RL_LUA_JSON_DEPTH) {
                assert_true(decode_n(doc, n));
                assert_true(rl_lua_json_encode(L, -1));
                size_t tn;
                const char *t = lua_tolstring(L, -1, &tn);
                assert_int_equal(tn, n);
                assert_memory_equal(t, doc, n);
                lua_pop(L, 2);
            } else {
                decode_bad_n(doc, n, "nested too deep");
            }
        }
    }
    /* far deeper than the bound: refused early, no deep recursion */
    size_t big = 100000;
    char *deep = malloc(big);
    assert_non_null(deep);
    memset(deep, '[', big);
    decode_bad_n(deep, big, "nested too deep");
    free(deep);
    lua_true("local t = {} local c = t for i = 1, 127 do c[1] = {} c = c[1] end\n"
             "return json.encode(t) ~= nil");
    lua_true("local t = {} local c = t for i = 1, 128 do c[1] = {} c = c[1] end\n"
             "local v, e = json.encode(t) return v == nil and e:find('too deep') ~= nil");
}

/* Every proper prefix of these documents is an error (each ends at its last byte), read from
   an exact-size copy: no crash, no read past the end. */
static void test_truncated(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "{\"type\":\"echo_hello\",\"request_id\":\"r2\",\"data\":{\"text\":\"hi\",\"n\":[1,2,3.5e2,true,null]}}",
        "[\"\\ud83d\\ude00 \\u00e9\\n\\\"\",-12.5e+3,0,-0.25,false,{},[],{\"\":\"\xf0\x9f\x98\x80\"}]",
        "\"\xe2\x82\xac\\/\\b\"",
        "[true,false,null,1E-2]",
        "{\"a\" : { \"b\" : [ 1 , 2 ] } }",
    };
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        size_t n = strlen(docs[i]);
        assert_true(decode_n(docs[i], n));
        lua_pop(L, 1);
        for (size_t k = 0; k < n; k++)
            decode_bad_n(docs[i], k, NULL);
    }
}

static void test_encode_errors(void **state)
{
    (void)state;
    lua_true("local v, e = json.encode({1, 2, x = 3}) return v == nil and e == 'json: table mixes string keys and array items'");
    lua_true("local v, e = json.encode({[1] = 1, [3] = 3}) return v == nil and e == 'json: sparse array'");
    lua_true("local v, e = json.encode({[0] = 1}) return v == nil and e:find('sequence 1..n') ~= nil");
    lua_true("local v, e = json.encode({[1.5] = 1}) return v == nil and e:find('sequence 1..n') ~= nil");
    lua_true("local v, e = json.encode({[true] = 1}) return v == nil and e:find('sequence 1..n') ~= nil");
    lua_true("local v, e = json.encode(print) return v == nil and e == 'json: cannot encode a function value'");
    lua_true("local v, e = json.encode({a = {print}}) return v == nil and e == 'json: cannot encode a function value'");
    lua_true("local v, e = json.encode(io.stdout) return v == nil and e == 'json: cannot encode a userdata value'");
    lua_true("local c = {} c.self = c local v, e = json.encode(c) return v == nil and e:find('cycle') ~= nil");
    /* an error deep inside a big object unwinds cleanly */
    lua_true("local t = {} for i = 1, 100 do t['k' .. i] = i end t.k50 = print\n"
             "local v, e = json.encode({x = t}) return v == nil and e:find('function') ~= nil");
}

/* The scratch entry point: the text stays in C memory, the stack is left as it was. */
static void test_encode_scratch(void **state)
{
    (void)state;
    const char *t;
    size_t n;
    lua_true("big = string.rep('x', 3 * 1024 * 1024) return true");
    assert_int_equal(luaL_dostring(L, "return {type = 'echo', data = json.object(), n = 1.5}"), LUA_OK);
    assert_true(rl_lua_json_encode_scratch(L, -1, &t, &n));
    assert_int_equal(lua_gettop(L), 1);
    const char *want = "{\"type\":\"echo\",\"data\":{},\"n\":1.5}";
    assert_int_equal(n, strlen(want));
    assert_memory_equal(t, want, n);
    /* grows past RL_LUA_JSON_SCRATCH_KEEP for one huge value, then works on */
    lua_getglobal(L, "big");
    assert_true(rl_lua_json_encode_scratch(L, -1, &t, &n));
    assert_int_equal(n, 3 * 1024 * 1024 + 2);
    assert_true(t[0] == '"' && t[1] == 'x' && t[n - 1] == '"');
    assert_true(rl_lua_json_encode_scratch(L, 1, &t, &n));
    assert_int_equal(n, strlen(want));
    assert_memory_equal(t, want, n);
    /* an error: 0 and the message pushed */
    lua_pushcfunction(L, luaopen_base);
    assert_false(rl_lua_json_encode_scratch(L, -1, &t, &n));
    assert_string_equal(lua_tostring(L, -1), "json: cannot encode a function value");
    lua_settop(L, 0);
    /* after close, the next call makes a new scratch */
    rl_lua_json_close();
    lua_pushboolean(L, 1);
    assert_true(rl_lua_json_encode_scratch(L, -1, &t, &n));
    assert_int_equal(n, 4);
    assert_memory_equal(t, "true", 4);
    lua_pushnil(L);
    lua_setglobal(L, "big");
    lua_settop(L, 0);
}

/* One count per top-level call, not per value. */
static void test_metrics(void **state)
{
    (void)state;
    uint64_t d0 = rl_metric_values[RL_M_JSON_DECODES], e0 = rl_metric_values[RL_M_JSON_ENCODES];
    decode_ok("{\"a\":[1,2,{\"b\":3}]}");
    assert_true(rl_lua_json_encode(L, -1));
    const char *t;
    size_t n;
    assert_true(rl_lua_json_encode_scratch(L, -2, &t, &n));
    decode_bad("[", NULL);
    lua_settop(L, 0);
    assert_int_equal(rl_metric_values[RL_M_JSON_DECODES] - d0, 2);
    assert_int_equal(rl_metric_values[RL_M_JSON_ENCODES] - e0, 2);
}

/* ---- out of memory --------------------------------------------------------------------- */

static size_t alloc_budget; /* allocations left; SIZE_MAX = unlimited */

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    (void)osize;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (alloc_budget == 0)
        return NULL;
    if (alloc_budget != SIZE_MAX)
        alloc_budget--;
    return realloc(ptr, nsize);
}

static int decode_encode_p(lua_State *l)
{
    size_t n;
    const char *s = lua_tolstring(l, 1, &n);
    if (!rl_lua_json_decode(l, s, n))
        return lua_error(l);
    if (!rl_lua_json_encode(l, -1))
        return lua_error(l);
    return 1;
}

/* With every allocation failing in turn, decoding and encoding raise a memory error (or give
   a message), never crash or leak (LeakSanitizer), and the state stays usable. */
static void test_out_of_memory(void **state)
{
    (void)state;
    const char *doc = "{\"type\":\"x\",\"s\":\"esc\\u00e9aped\",\"n\":[1,2.5,{},"
                      "\"0123456789012345678901234567890123456789012345678901234567890123456789\"],"
                      "\"o\":{\"a\":{\"b\":[[],[{}]]}},\"z\":null}";
    alloc_budget = SIZE_MAX;
    lua_State *l = lua_newstate(failing_alloc, NULL);
    assert_non_null(l);
    rl_lua_json_open(l);
    lua_pop(l, 1);
    int done = 0;
    for (size_t budget = 0; !done && budget < 10000; budget++) {
        lua_pushcfunction(l, decode_encode_p);
        lua_pushstring(l, doc);
        alloc_budget = budget;
        int st = lua_pcall(l, 1, 1, 0);
        alloc_budget = SIZE_MAX;
        if (st == LUA_OK) {
            size_t n;
            const char *t = lua_tolstring(l, -1, &n);
            const char *want = "{\"type\":\"x\",\"n\":[1,2.5,{},\"0123456789012345678901234567890"
                               "123456789012345678901234567890123456789\"],\"o\":{\"a\":{\"b\":[[],[{}]]}},"
                               "\"s\":\"esc\xc3\xa9" "aped\"}";
            assert_int_equal(n, strlen(want));
            assert_memory_equal(t, want, n);
            done = 1;
        } else if (st != LUA_ERRMEM) { /* or the stack could not grow: a message, no raise */
            assert_int_equal(st, LUA_ERRRUN);
            if (!strstr(lua_tostring(l, -1), "out of Lua stack"))
                fail_msg("budget %zu: %s", budget, lua_tostring(l, -1));
        }
        lua_settop(l, 0);
        lua_gc(l, LUA_GCCOLLECT);
    }
    assert_true(done);
    lua_close(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_float_roundtrip_bits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_objects, setup_known_set, teardown),
        cmocka_unit_test_setup_teardown(test_key_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_arrays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decode_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encode_scratch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
