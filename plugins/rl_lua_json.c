/* The json module of the Lua plugin host: JSON text <-> Lua values, exactly.
 *
 * Decoding is one pass from the bytes straight into Lua values (no tree; strings without escapes
 * go to Lua straight from the input). The language is strict RFC 8259, also that of the gateway's
 * envelope scanner, so that the hub and the plugins never read one message two ways: no comments,
 * trailing commas, NaN or leading zeros, nothing but whitespace after the value; strings are valid
 * UTF-8 without raw control bytes, escapes become their exact bytes (a surrogate pair one 4-byte
 * sequence); a lone surrogate and \u0000 are errors (the hub refuses \u0000 too). A number without
 * '.' or exponent that fits in int64 becomes that Lua integer; any other a float from strtod (the
 * node runs in the "C" locale; out of range gives +-math.huge, as strtod does). null becomes nil:
 * a null member is absent, a null array item leaves its index empty (a hole: [1,null,3] gives
 * t[1] = 1, t[3] = 3), as the cJSON decoder did. Of repeated keys the first wins (as in the hub,
 * which routes on the first "type"); a first null also wins. Every table decoded from an object
 * is remembered as an object (see below), so that it encodes back as {} however many of its keys
 * the plugin removes. At most RL_LUA_JSON_DEPTH containers nest (C recursion to that depth is
 * fine).
 *
 * Known objects: every table that is known to be an object (decoded from a JSON object, made
 * by json.object(), or encoded as an object: it had string keys then) carries a mark: a spare
 * bit in its own header where the probe below finds the layout it expects, else its entry in a
 * weak-keyed set in the state's registry. An empty table encodes as {} when it is marked, as []
 * otherwise. The mark holds no table alive and is reachable from no plugin; the tables keep no
 * metatable, so a plugin may still set its own on them.
 *
 * Encoding: nil -> null; integers exact; a float as the first of %.15g, %.16g, %.17g that reads
 * back as the same double, ".0" appended when that looks like an integer so that it decodes as a
 * float again; NaN and +-inf -> null (as the original platform's encoder). An empty table -> []
 * unless it is a known object ({}); keys exactly 1..n -> array; only string keys ->
 * object with "type", then "topic", then the other keys in byte order (deterministic, and the
 * spec's example frame comes out as written). Strings byte for byte, except that '"', '\' and
 * bytes below 0x20 are escaped and invalid UTF-8 becomes U+FFFD (as Go's encoder does; the text
 * goes into WebSocket text frames). Mixed or sparse keys, functions, userdata and nesting deeper
 * than RL_LUA_JSON_DEPTH (which also catches cycles) are errors. The text is built in one C
 * scratch buffer reused by every call (encoding never runs Lua code, so calls never nest). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_lua_int.h"
#include "rl_metrics.h"
#include "rl_swar.h"

/* Registry key (its address) of the weak set of known objects. */
static const char objects_key;

/* Bytes a string holds as is, both ways: printable ASCII other than '"' and '\'. The others
   (controls, quote, backslash, and >= 0x80, which is checked as UTF-8) take the slow path. */
static const unsigned char plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20: '"' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 0x50: '\' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x70 */
};

/* Length of the valid UTF-8 sequence at s (n >= 1 bytes left), 0 if invalid (overlong forms,
   surrogates and code points past U+10FFFF are invalid). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    unsigned cp = c & (0x3f >> (k - 1));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

/* ---- encoding -------------------------------------------------------------------------- */

/* The scratch the text is written into. Grows by doubling; a call that finds it grown past
   RL_LUA_JSON_SCRATCH_KEEP frees it first (one huge message does not pin its size). It lives in
   the C heap rather than in Lua memory because rl_lua_json_encode_scratch hands it out after
   the call; only the Lua string rl_lua_json_encode makes from it counts against the cap. */
static struct {
    char *p;
    size_t len, cap;
} out;

static void out_begin(void)
{
    if (out.cap > RL_LUA_JSON_SCRATCH_KEEP) {
        free(out.p);
        out.p = NULL;
        out.cap = 0;
    }
    out.len = 0;
}

static void out_grow(lua_State *L, size_t more)
{
    size_t ncap = out.cap ? out.cap : 1024;
    while (ncap - out.len < more) {
        if (ncap > SIZE_MAX / 2)
            luaL_error(L, "not enough memory");
        ncap *= 2;
    }
    char *np = realloc(out.p, ncap);
    if (!np)
        luaL_error(L, "not enough memory");
    out.p = np;
    out.cap = ncap;
}

static inline void out_reserve(lua_State *L, size_t n)
{
    if (out.cap - out.len < n)
        out_grow(L, n);
}

static inline void out_add(lua_State *L, const void *s, size_t n)
{
    out_reserve(L, n);
    memcpy(out.p + out.len, s, n);
    out.len += n;
}

static inline void out_addc(lua_State *L, char c)
{
    out_reserve(L, 1);
    out.p[out.len++] = c;
}

/* The rest of a string from its first byte that needs a look (put_string), and the closing
   quote. */
__attribute__((noinline)) static void put_string_rest(lua_State *L, const unsigned char *u,
                                                    const unsigned char *e)
{
    static const char hex[] = "0123456789abcdef";
    while (u < e) {
        const unsigned char *run = u;
        u = rl_skip_plain8(u, e);
        while (u < e && plain[*u])
            u++;
        out_add(L, run, (size_t)(u - run));
        if (u == e)
            break;
        unsigned c = *u;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t k = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            if (c < 0x20) {
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                k = 6;
            } else if ((k = utf8_len(u, (size_t)(e - u))) != 0) {
                out_add(L, u, k);
                u += k;
                continue;
            } else {
                memcpy(esc + 1, "ufffd", 5);
                k = 6;
            }
        }
        out_add(L, esc, k);
        u++;
    }
    out_addc(L, '"');
}

/* Most strings need no escape: they are copied whole, then checked eight bytes at a time in
   the copy (a word of plain padding after it, so that no read passes the buffer), and only
   from a byte that needs a look on does the byte loop take over. */
static void put_string(lua_State *L, const char *s, size_t n)
{
    out_reserve(L, n + 10); /* the quotes and the padding */
    char *dst = out.p + out.len + 1;
    dst[-1] = '"';
    memcpy(dst, s, n);
    memcpy(dst + n, "        ", 8);
    size_t i = 0;
    for (; i < n; i += 8) {
        uint64_t m = rl_str_special8(rl_load8((const uint8_t *)dst + i));
        if (m) {
            i += rl_first_byte(m);
            break;
        }
    }
    if (i >= n) {
        dst[n] = '"';
        out.len += n + 2;
        return;
    }
    out.len += 1 + i;
    put_string_rest(L, (const unsigned char *)s + i, (const unsigned char *)s + n);
}

static void put_integer(lua_State *L, lua_Integer v)
{
    char buf[24], *q = buf + sizeof buf;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        *--q = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        *--q = '-';
    out_add(L, q, (size_t)(buf + sizeof buf - q));
}

/* The first of %.15g, %.16g, %.17g that strtod reads back as d. Any decimal of up to 15 digits
   survives the trip through a normal double (DBL_DIG), so when a shorter one reads back as d,
   %.15g writes it; subnormals hold fewer digits, so for them every precision from 1 is tried
   (5e-324, not 4.94065645841247e-324). */
static void put_float(lua_State *L, double d)
{
    if (!isfinite(d)) {
        out_add(L, "null", 4); /* what the original platform's encoder writes */
        return;
    }
    if (fabs(d) < 1e15 && d == (double)(int64_t)d) { /* what %.15g writes, without printf */
        if (d == 0 && signbit(d))
            out_addc(L, '-'); /* -0.0 stays a negative zero */
        put_integer(L, (lua_Integer)d);
        out_add(L, ".0", 2);
        return;
    }
    char num[48];
    int n = 0;
    int prec = d != 0 && fabs(d) < DBL_MIN ? 1 : 15;
    for (; prec <= 17; prec++) {
        n = snprintf(num, sizeof num - 2, "%.*g", prec, d);
        if (prec == 17 || strtod(num, NULL) == d)
            break;
    }
    if (strspn(num, "-0123456789") == (size_t)n) { /* 42.0 -> "42.0", not the integer 42 */
        memcpy(num + n, ".0", 2);
        n += 2;
    }
    out_add(L, num, (size_t)n);
}

typedef struct skey {
    const char *s;
    size_t n;
    int rank;
    int slot; /* stack index of the value, 0 when it must be looked up */
} skey;

/* Lua tables keep no key order, so objects come out in a fixed one: the keys that say what a
   message is ("type", then "topic") first, as people write them, then the rest sorted by bytes.
   So the spec's example plugin sends exactly {"type":"session_state","data":{...}}. */
static int skey_rank(const char *s, size_t n)
{
    if (n == 4 && memcmp(s, "type", 4) == 0)
        return 0;
    if (n == 5 && memcmp(s, "topic", 5) == 0)
        return 1;
    return 2;
}

static int skey_cmp(const void *a, const void *b)
{
    const skey *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank - y->rank;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

#define SMALL_OBJECT 16 /* keys sorted in place on the C stack; more go into a userdata */

static void sort_keys(skey *k, size_t n)
{
    if (n > SMALL_OBJECT) {
        qsort(k, n, sizeof *k, skey_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) { /* insertion sort: a message has a handful of keys */
        skey t = k[i];
        size_t j = i;
        for (; j > 0 && skey_cmp(&k[j - 1], &t) > 0; j--)
            k[j] = k[j - 1];
        k[j] = t;
    }
}

/* Known objects, the fast way: a spare bit of the table's own header. In Lua 5.4 a Table
   starts with its GC header (next pointer, type tag, GC mark) and a flags byte whose bits 0-5
   cache absent metamethods and bit 7 marks a non-real array size; bit 6 is unused. Setting it
   costs one store where the registry set costs a hash insertion into a weak table (2,100
   instructions a round trip, decode and encode, with the echo plugin). probe_header_bit()
   checks the layout on the library actually loaded (a fresh table's tag and flags, the bit
   kept through metamethod caching, resizing and a collection, absent from new tables) before
   it is used; where it fails the registry set is used instead. The bit dies with the table
   (a new table's flags are written whole), so it holds nothing alive either. */
#define TABLE_FLAGS_OFF 10 /* after the tag and the GC mark */
#define TABLE_VTAG 5       /* LUA_VTABLE: LUA_TTABLE, variant 0 */
#define TABLE_FRESH 0x3F   /* maskflags: no metamethod (TM_INDEX..TM_EQ) known present */
#define KNOWN_BIT 0x40

static int header_bit = -1; /* -1 not probed yet, 1 in use, 0 the registry set */

static unsigned char *table_flags(lua_State *L, int idx)
{
    return (unsigned char *)lua_topointer(L, idx) + TABLE_FLAGS_OFF;
}

static int probe_header_bit(lua_State *L)
{
#if LUA_VERSION_NUM != 504
    (void)L;
    return 0;
#else
    if (!lua_checkstack(L, 4))
        return 0;
    int top = lua_gettop(L), ok = 1;
    lua_createtable(L, 0, 0);
    const unsigned char *t = lua_topointer(L, -1);
    if (t[RL_LUA_GC_TAG_OFF] != TABLE_VTAG || t[TABLE_FLAGS_OFF] != TABLE_FRESH)
        ok = 0;
    if (ok) {
        *table_flags(L, -1) |= KNOWN_BIT;
        lua_createtable(L, 0, 1); /* a metatable with __index: lookups cache absent events */
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "__index_unused");
        lua_setmetatable(L, -2);
        for (int i = 0; i < 2; i++) { /* and the table as two others' metatable */
            lua_createtable(L, 0, 0);
            lua_pushvalue(L, top + 1);
            lua_setmetatable(L, -2);
        }
        if (lua_compare(L, -1, -2, LUA_OPEQ)) /* looks up (and caches) __eq in the table */
            ok = 0;
        lua_pop(L, 2);
        lua_getfield(L, -1, "missing");
        lua_pop(L, 1);
        for (int i = 1; i <= 40; i++) { /* array and hash growth, a length */
            lua_pushinteger(L, i);
            lua_rawseti(L, -2, i);
            lua_pushinteger(L, i);
            lua_setfield(L, -2, i & 1 ? "odd" : "even");
        }
        lua_len(L, -1);
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_setmetatable(L, -2);
        lua_gc(L, LUA_GCCOLLECT);
        ok = ok && (t[TABLE_FLAGS_OFF] & KNOWN_BIT) && t[RL_LUA_GC_TAG_OFF] == TABLE_VTAG;
        lua_createtable(L, 4, 4);
        const unsigned char *f = lua_topointer(L, -1);
        if (f[TABLE_FLAGS_OFF] & KNOWN_BIT)
            ok = 0;
    }
    lua_settop(L, top);
    return ok;
#endif
}

int rl_lua_json_header_bit(int on)
{
    if (on >= 0)
        header_bit = on;
    return header_bit;
}

static int is_object_marked(lua_State *L, int idx)
{
    if (header_bit > 0)
        return (*table_flags(L, idx) & KNOWN_BIT) != 0;
    idx = lua_absindex(L, idx);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &objects_key) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushvalue(L, idx);
    int r = lua_rawget(L, -2) != LUA_TNIL;
    lua_pop(L, 2);
    return r;
}

/* Adds the table at idx to the known objects (with the registry set, a no-op in a state
   without the module). */
static void mark_object_at(lua_State *L, int idx)
{
    if (header_bit > 0) {
        *table_flags(L, idx) |= KNOWN_BIT;
        return;
    }
    idx = lua_absindex(L, idx);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &objects_key) == LUA_TTABLE) {
        lua_pushvalue(L, idx);
        lua_pushboolean(L, 1);
        lua_rawset(L, -3);
    }
    lua_pop(L, 1);
}

static const char *encode(lua_State *L, int idx, int depth);

static const char *encode_table(lua_State *L, int idx, int depth)
{
    if (depth >= RL_LUA_JSON_DEPTH)
        return "nested too deep (or a cycle)";
    rl_lua_args_fill(L, idx); /* a hub plugin's args: its lazy fields first */
    /* Room is reserved pair by pair, not for SMALL_OBJECT pairs at once: Lua gives a grown
       stack back only in a collection, so a plugin's coroutine would keep it (see enter()). */
    if (!lua_checkstack(L, 6))
        return "nested too deep";
    skey small[SMALL_OBJECT], *keys = small;
    size_t nstr = 0, nint = 0, cap = SMALL_OBJECT;
    lua_Integer maxk = 0;
    int top = lua_gettop(L);
    lua_pushnil(L); /* top + 1: the keys' userdata once they outgrow small[] */
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int isint;
        lua_Integer ik;
        if (lua_type(L, -2) == LUA_TSTRING) {
            if (nstr == cap) { /* a big object: the keys move to Lua memory (collected if we raise) */
                skey *nk = lua_newuserdatauv(L, 2 * cap * sizeof *nk, 0);
                memcpy(nk, keys, nstr * sizeof *nk);
                lua_replace(L, top + 1);
                keys = nk;
                cap *= 2;
            }
            skey *k = &keys[nstr];
            k->s = lua_tolstring(L, -2, &k->n); /* a string key: no conversion */
            k->rank = skey_rank(k->s, k->n);
            k->slot = 0;
            if (nstr++ < SMALL_OBJECT) { /* leave the pair on the stack: no lookup later */
                if (!lua_checkstack(L, 5)) {
                    lua_settop(L, top);
                    return "nested too deep";
                }
                k->slot = lua_gettop(L);
                lua_pushvalue(L, -2);
                continue;
            }
        } else if ((ik = lua_tointegerx(L, -2, &isint), isint) && ik >= 1 && lua_isinteger(L, -2)) {
            nint++;
            if (ik > maxk)
                maxk = ik;
        } else {
            lua_settop(L, top);
            return "table keys must be strings or a sequence 1..n";
        }
        lua_pop(L, 1);
    }
    size_t n = nstr + nint;
    if (n == 0) {
        lua_settop(L, top);
        if (is_object_marked(L, idx))
            out_add(L, "{}", 2);
        else
            out_add(L, "[]", 2);
        return NULL;
    }
    if (nint == n) {
        lua_settop(L, top);
        if ((size_t)maxk != n)
            return "sparse array";
        out_addc(L, '[');
        for (lua_Integer i = 1; i <= maxk; i++) {
            if (i > 1)
                out_addc(L, ',');
            lua_rawgeti(L, idx, i);
            const char *e = encode(L, top + 1, depth + 1);
            lua_pop(L, 1);
            if (e)
                return e;
        }
        out_addc(L, ']');
        return NULL;
    }
    if (nint != 0) {
        lua_settop(L, top);
        return "table mixes string keys and array items";
    }
    if (!lua_checkstack(L, 3)) {
        lua_settop(L, top);
        return "nested too deep";
    }
    mark_object_at(L, idx); /* it had string keys: {} if it is emptied later */
    sort_keys(keys, n);
    out_addc(L, '{');
    int vtop = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        if (i)
            out_addc(L, ',');
        put_string(L, keys[i].s, keys[i].n);
        out_addc(L, ':');
        int slot = keys[i].slot;
        if (!slot) {
            lua_pushlstring(L, keys[i].s, keys[i].n);
            lua_rawget(L, idx);
            slot = vtop + 1;
        }
        const char *e = encode(L, slot, depth + 1);
        lua_settop(L, vtop);
        if (e) {
            lua_settop(L, top);
            return e;
        }
    }
    lua_settop(L, top);
    out_addc(L, '}');
    return NULL;
}

static const char *encode(lua_State *L, int idx, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL: out_add(L, "null", 4); return NULL;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            out_add(L, "true", 4);
        else
            out_add(L, "false", 5);
        return NULL;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            put_integer(L, lua_tointeger(L, idx));
        else
            put_float(L, (double)lua_tonumber(L, idx));
        return NULL;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_string(L, s, n);
        return NULL;
    }
    case LUA_TTABLE: return encode_table(L, idx, depth);
    default: return lua_typename(L, lua_type(L, idx));
    }
}

/* Writes the value at idx into the scratch; on error pushes the message and returns 0. */
static int encode_top(lua_State *L, int idx)
{
    rl_metric_inc(RL_M_JSON_ENCODES);
    idx = lua_absindex(L, idx);
    out_begin();
    out_reserve(L, 64); /* never hand memcpy a NULL scratch */
    int top = lua_gettop(L);
    const char *e = encode(L, idx, 0);
    lua_settop(L, top);
    if (!e)
        return 1;
    if (strchr(e, ' '))
        lua_pushfstring(L, "json: %s", e);
    else
        lua_pushfstring(L, "json: cannot encode a %s value", e);
    return 0;
}

int rl_lua_json_encode_scratch(lua_State *L, int idx, const char **text, size_t *len)
{
    if (!encode_top(L, idx))
        return 0;
    *text = out.p;
    *len = out.len;
    return 1;
}

int rl_lua_json_encode(lua_State *L, int idx)
{
    if (!encode_top(L, idx))
        return 0;
    lua_pushlstring(L, out.p, out.len);
    out_begin(); /* nothing points into the scratch now: trim it at once */
    return 1;
}

void rl_lua_json_close(void)
{
    free(out.p);
    out.p = NULL;
    out.cap = out.len = 0;
}

/* ---- decoding -------------------------------------------------------------------------- */

typedef struct jdec {
    lua_State *L;
    const unsigned char *p, *end; /* p: next byte to read; never read at or past end */
    const char *err;              /* what is wrong at p, once something is */
} jdec;

/* Stands for a null member while its object is being built, so that a later repeat of the key
   does not win over it; removed before the object is handed out. */
static const char null_member;

static int fail(jdec *d, const unsigned char *at, const char *what)
{
    d->p = at;
    d->err = what;
    return -1;
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *e)
{
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static int hex4(const unsigned char *p, unsigned *v)
{
    unsigned r = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], x;
        if (c - '0' < 10)
            x = c - '0';
        else if ((c | 0x20) - 'a' < 6)
            x = (c | 0x20) - 'a' + 10;
        else
            return 0;
        r = r << 4 | x;
    }
    *v = r;
    return 1;
}

/* The rest of a string that has escapes: run is its first byte, p the first backslash. Kept out
   of dec_string so that the common string without escapes needs no buffer. */
static int dec_string_escaped(jdec *d, const unsigned char *run, const unsigned char *p)
{
    const unsigned char *e = d->end;
    luaL_Buffer b;
    luaL_buffinit(d->L, &b);
    for (;;) {
        p = rl_skip_plain8(p, e);
        while (p < e && plain[*p])
            p++;
        if (p == e)
            return fail(d, p, "unterminated string");
        unsigned c = *p;
        if (c == '"') {
            luaL_addlstring(&b, (const char *)run, (size_t)(p - run));
            luaL_pushresult(&b);
            d->p = p + 1;
            return 1;
        }
        if (c < 0x20)
            return fail(d, p, "control character in string");
        if (c >= 0x80) {
            size_t k = utf8_len(p, (size_t)(e - p));
            if (!k)
                return fail(d, p, "invalid UTF-8 in string");
            p += k;
            continue;
        }
        luaL_addlstring(&b, (const char *)run, (size_t)(p - run)); /* c is the backslash */
        if (e - p < 2)
            return fail(d, p, "unterminated string");
        char one = 0;
        switch (p[1]) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': break;
        default: return fail(d, p, "bad escape in string");
        }
        if (one) {
            luaL_addchar(&b, one);
            p += 2;
            run = p;
            continue;
        }
        unsigned cp, lo;
        if (e - p < 6 || !hex4(p + 2, &cp))
            return fail(d, p, "bad \\u escape in string");
        if (cp == 0)
            return fail(d, p, "\\u0000 in string");
        if (cp >= 0xdc00 && cp <= 0xdfff)
            return fail(d, p, "lone surrogate in string");
        if (cp >= 0xd800 && cp <= 0xdbff) {
            if (e - p < 12 || p[6] != '\\' || p[7] != 'u' || !hex4(p + 8, &lo) || lo < 0xdc00 ||
                lo > 0xdfff)
                return fail(d, p, "lone surrogate in string");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            p += 6;
        }
        p += 6;
        char u8[4];
        size_t k;
        if (cp < 0x80) {
            u8[0] = (char)cp;
            k = 1;
        } else if (cp < 0x800) {
            u8[0] = (char)(0xc0 | cp >> 6);
            u8[1] = (char)(0x80 | (cp & 0x3f));
            k = 2;
        } else if (cp < 0x10000) {
            u8[0] = (char)(0xe0 | cp >> 12);
            u8[1] = (char)(0x80 | (cp >> 6 & 0x3f));
            u8[2] = (char)(0x80 | (cp & 0x3f));
            k = 3;
        } else {
            u8[0] = (char)(0xf0 | cp >> 18);
            u8[1] = (char)(0x80 | (cp >> 12 & 0x3f));
            u8[2] = (char)(0x80 | (cp >> 6 & 0x3f));
            u8[3] = (char)(0x80 | (cp & 0x3f));
            k = 4;
        }
        luaL_addlstring(&b, u8, k);
        run = p;
    }
}

/* Object keys repeat from message to message ("type", "request_id", "data"): the last few
   seen, up to KEY_MAX bytes and without escapes, are kept interned in the registry, and a key
   found here is pushed as an array read instead of Lua hashing and interning its bytes again.
   Direct-mapped on length and three of the bytes; a miss replaces the slot (a client that
   sends new keys each time costs one registry store a key). Emptied by rl_lua_json_open, once
   per state. */
#define KEY_SLOTS 64
#define KEY_MAX 22
static struct {
    unsigned char len;
    char s[KEY_MAX];
    int ref; /* registry reference; 0 while the slot is empty */
} keys[KEY_SLOTS];

static inline size_t key_slot(const unsigned char *s, size_t n)
{
    return (n * 7 + s[0] * 31 + s[n - 1] * 3 + s[n / 2]) & (KEY_SLOTS - 1);
}

static void push_object_key(lua_State *L, const unsigned char *s, size_t n)
{
    if (n == 0 || n > KEY_MAX) {
        lua_pushlstring(L, (const char *)s, n);
        return;
    }
    size_t i = key_slot(s, n);
    if (keys[i].ref && keys[i].len == n && memcmp(keys[i].s, s, n) == 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, keys[i].ref);
        return;
    }
    lua_pushlstring(L, (const char *)s, n);
    lua_pushvalue(L, -1);
    if (keys[i].ref) {
        lua_rawseti(L, LUA_REGISTRYINDEX, keys[i].ref);
    } else {
        int ref = luaL_ref(L, LUA_REGISTRYINDEX);
        if (ref <= 0)
            return; /* no slot to be had: the key is pushed, just not kept */
        keys[i].ref = ref;
    }
    keys[i].len = (unsigned char)n;
    memcpy(keys[i].s, s, n);
}

/* d->p is just past the opening quote; pushes the string. Without escapes the bytes go to Lua
   straight from the input (an object key through push_object_key). */
static int dec_str(jdec *d, int key)
{
    const unsigned char *p = d->p, *e = d->end, *run = p;
    for (;;) {
        p = rl_skip_plain8(p, e);
        while (p < e && plain[*p])
            p++;
        if (p == e)
            return fail(d, p, "unterminated string");
        unsigned c = *p;
        if (c == '"') {
            if (key)
                push_object_key(d->L, run, (size_t)(p - run));
            else
                lua_pushlstring(d->L, (const char *)run, (size_t)(p - run));
            d->p = p + 1;
            return 1;
        }
        if (c == '\\')
            return dec_string_escaped(d, run, p);
        if (c < 0x20)
            return fail(d, p, "control character in string");
        size_t k = utf8_len(p, (size_t)(e - p));
        if (!k)
            return fail(d, p, "invalid UTF-8 in string");
        p += k;
    }
}

static int dec_string(jdec *d) { return dec_str(d, 0); }

/* A number that is not an int64 literal: strtod on a NUL-terminated copy (the input has no NUL
   at its end, and strtod would read on past the JSON number, e.g. "0x1"). */
static void push_strtod(lua_State *L, const unsigned char *s, size_t n)
{
    char small[64];
    if (n < sizeof small) {
        memcpy(small, s, n);
        small[n] = '\0';
        lua_pushnumber(L, (lua_Number)strtod(small, NULL));
        return;
    }
    luaL_Buffer b; /* hundreds of digits: rare, Lua memory */
    char *big = luaL_buffinitsize(L, &b, n + 1);
    memcpy(big, s, n);
    big[n] = '\0';
    double v = strtod(big, NULL);
    lua_pop(L, 1); /* the buffer's placeholder or box */
    lua_pushnumber(L, (lua_Number)v);
}

static inline int is_digit(unsigned c)
{
    return c - '0' < 10u;
}

static int dec_number(jdec *d)
{
    const unsigned char *s = d->p, *p = s, *e = d->end;
    int neg = *p == '-', isfloat = 0, big = 0;
    uint64_t u = 0;
    if (neg)
        p++;
    if (p == e || !is_digit(*p))
        return fail(d, p, "bad number");
    if (*p == '0') {
        p++;
        if (p < e && is_digit(*p))
            return fail(d, p, "leading zero in number");
    } else {
        for (; p < e && is_digit(*p); p++) {
            unsigned dg = (unsigned)*p - '0';
            if (u > (UINT64_MAX - dg) / 10)
                big = 1;
            else
                u = u * 10 + dg;
        }
    }
    if (p < e && *p == '.') {
        isfloat = 1;
        if (++p == e || !is_digit(*p))
            return fail(d, p, "bad number");
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        isfloat = 1;
        if (++p < e && (*p == '+' || *p == '-'))
            p++;
        if (p == e || !is_digit(*p))
            return fail(d, p, "bad number");
        while (p < e && is_digit(*p))
            p++;
    }
    d->p = p;
    if (!isfloat && !big && u <= (uint64_t)INT64_MAX + neg)
        lua_pushinteger(d->L, neg ? (u ? -(lua_Integer)(u - 1) - 1 : 0) : (lua_Integer)u);
    else
        push_strtod(d->L, s, (size_t)(p - s));
    return 1;
}

static int dec_literal(jdec *d, const char *word, size_t n)
{
    if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
        return fail(d, d->p, "unexpected character");
    d->p += n;
    return 1;
}

static int dec_value(jdec *d, int depth);

/* Items (array) or members (object) are gathered on the Lua stack until the container closes,
   so that its table is made once at its final size instead of growing through several rehashes;
   past DEC_BATCH the table is made and the rest go straight into it (bounded stack use). */
#define DEC_BATCH 32

static int enter(jdec *d, int depth)
{
    if (depth >= RL_LUA_JSON_DEPTH)
        return fail(d, d->p, "nested too deep");
    /* the table's slot, a table made at once, a string buffer: the batch reserves its room
       item by item (grow), so a small message never makes the coroutine's stack grow for
       good (Lua shrinks a stack only in a collection, which an idle node does not run) */
    if (!lua_checkstack(d->L, 6))
        return fail(d, d->p, "out of Lua stack");
    return 0;
}

/* Room for one more item (a key, its value and what storing them needs). */
static int grow(jdec *d, const unsigned char *p)
{
    return lua_checkstack(d->L, 6) ? 0 : fail(d, p, "out of Lua stack");
}

static void mark_object(lua_State *L) { mark_object_at(L, -1); }

/* Makes the table in slot t (a placeholder below the n items above it) and stores the items
   (a nil leaves a hole). */
static void flush_items(lua_State *L, int t, lua_Integer n, int narr)
{
    lua_createtable(L, narr, 0);
    lua_replace(L, t);
    for (lua_Integer i = n; i >= 1; i--)
        lua_rawseti(L, t, i);
}

/* Makes the table in slot t (a placeholder below the n key/value pairs above it) and stores
   the pairs, the last first, so that of repeated keys the first stays; a nil value (null) then removes a later
   repeat and is itself not stored. With hold_nulls (more members follow), a null is stored as
   null_member instead, so the members still to come can see the key is taken. */
static void flush_members(lua_State *L, int t, int n, int nrec, int hold_nulls)
{
    lua_createtable(L, 0, nrec);
    lua_replace(L, t);
    for (int i = 0; i < n; i++) {
        if (hold_nulls && lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlightuserdata(L, (void *)&null_member);
        }
        lua_rawset(L, t);
    }
}

static int dec_object(jdec *d, int depth)
{
    lua_State *L = d->L;
    const unsigned char *e = d->end;
    if (enter(d, depth) < 0)
        return -1;
    int t = lua_gettop(L) + 1, n = 0, direct = 0, nulls = 0;
    const unsigned char *p = skip_ws(d->p + 1, e);
    if (p < e && *p == '}') {
        d->p = p + 1;
        lua_createtable(L, 0, 0);
        mark_object(L);
        return 1;
    }
    lua_pushnil(L); /* slot t: the table, once it is made */
    for (;;) {
        if (grow(d, p) < 0)
            return -1;
        if (p == e || *p != '"')
            return fail(d, p, p == e ? "unexpected end" : "expected a string key");
        d->p = p + 1;
        if (dec_str(d, 1) < 0)
            return -1;
        p = skip_ws(d->p, e);
        if (p == e || *p != ':')
            return fail(d, p, p == e ? "unexpected end" : "expected ':'");
        d->p = skip_ws(p + 1, e);
        int r = dec_value(d, depth + 1);
        if (r < 0)
            return -1;
        nulls += r == 0;
        if (!direct) {
            if (r == 0)
                lua_pushnil(L);
            if (++n == DEC_BATCH) {
                flush_members(L, t, n, 2 * DEC_BATCH, 1);
                direct = 1;
            }
        } else {
            if (r == 0)
                lua_pushlightuserdata(L, (void *)&null_member);
            lua_pushvalue(L, -2);
            if (lua_rawget(L, t) == LUA_TNIL) { /* the first of repeated keys wins */
                lua_pop(L, 1);
                lua_rawset(L, t);
            } else {
                lua_pop(L, 3);
            }
        }
        p = skip_ws(d->p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == '}')
            break;
        return fail(d, p, p == e ? "unexpected end" : "expected ',' or '}'");
    }
    d->p = p + 1;
    if (!direct)
        flush_members(L, t, n, n, 0);
    mark_object_at(L, t);
    if (!nulls)
        return 1;
    if (direct) { /* drop the held nulls; clearing fields during a traversal is allowed */
        lua_pushnil(L);
        while (lua_next(L, t)) {
            if (lua_touserdata(L, -1) == &null_member) {
                lua_pushvalue(L, -2);
                lua_pushnil(L);
                lua_rawset(L, t);
            }
            lua_pop(L, 1);
        }
    }
    return 1;
}

static int dec_array(jdec *d, int depth)
{
    lua_State *L = d->L;
    const unsigned char *e = d->end;
    if (enter(d, depth) < 0)
        return -1;
    int t = lua_gettop(L) + 1, direct = 0;
    const unsigned char *p = skip_ws(d->p + 1, e);
    if (p < e && *p == ']') {
        d->p = p + 1;
        lua_createtable(L, 0, 0);
        return 1;
    }
    lua_pushnil(L); /* slot t: the table, once it is made */
    for (lua_Integer n = 1;; n++) {
        if (grow(d, p) < 0)
            return -1;
        d->p = p;
        int r = dec_value(d, depth + 1);
        if (r < 0)
            return -1;
        if (direct) {
            if (r > 0) /* a null leaves a hole, as before */
                lua_rawseti(L, t, n);
        } else {
            if (r == 0)
                lua_pushnil(L);
            if (n == DEC_BATCH) {
                flush_items(L, t, n, 4 * DEC_BATCH);
                direct = 1;
            }
        }
        p = skip_ws(d->p, e);
        if (p < e && *p == ',') {
            p = skip_ws(p + 1, e);
            continue;
        }
        if (p < e && *p == ']') {
            d->p = p + 1;
            if (!direct)
                flush_items(L, t, n, (int)n);
            return 1;
        }
        return fail(d, p, p == e ? "unexpected end" : "expected ',' or ']'");
    }
}

/* Reads one value at d->p (no whitespace before it): pushes it and returns 1; returns 0 for null
   (nothing pushed); -1 on error. */
static int dec_value(jdec *d, int depth)
{
    if (d->p == d->end)
        return fail(d, d->p, "unexpected end");
    switch (*d->p) {
    case '{': return dec_object(d, depth);
    case '[': return dec_array(d, depth);
    case '"': d->p++; return dec_string(d);
    case 't':
        if (dec_literal(d, "true", 4) < 0)
            return -1;
        lua_pushboolean(d->L, 1);
        return 1;
    case 'f':
        if (dec_literal(d, "false", 5) < 0)
            return -1;
        lua_pushboolean(d->L, 0);
        return 1;
    case 'n': return dec_literal(d, "null", 4) < 0 ? -1 : 0;
    case '-':
    case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9': return dec_number(d);
    default: return fail(d, d->p, "unexpected character");
    }
}

int rl_lua_json_decode(lua_State *L, const char *s, size_t len)
{
    rl_metric_inc(RL_M_JSON_DECODES);
    int top = lua_gettop(L);
    const unsigned char *u = (const unsigned char *)s;
    jdec d = {L, skip_ws(u, u + len), u + len, NULL};
    int r = -1;
    if (!lua_checkstack(L, 8)) /* the value, a string buffer */
        fail(&d, d.p, "out of Lua stack");
    else if ((r = dec_value(&d, 0)) >= 0 && (d.p = skip_ws(d.p, d.end)) != d.end)
        r = fail(&d, d.p, "trailing data");
    if (r < 0) {
        lua_settop(L, top);
        lua_pushfstring(L, "json: %s at byte %I", d.err, (lua_Integer)(d.p - u));
        return 0;
    }
    if (r == 0)
        lua_pushnil(L);
    return 1;
}

/* ---- the module ------------------------------------------------------------------------ */

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    if (rl_lua_json_encode(L, 1))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (rl_lua_json_decode(L, s, len))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

/* json.object(): a new empty table known to be an object: it encodes as {} while empty (items
   1..n added later make it an array). */
static int l_object(lua_State *L)
{
    lua_createtable(L, 0, 0);
    mark_object(L);
    return 1;
}

void rl_lua_json_open(lua_State *L)
{
    memset(keys, 0, sizeof keys); /* a new state: the references were the last one's */
    if (header_bit < 0)
        header_bit = probe_header_bit(L);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &objects_key) != LUA_TTABLE) {
        lua_newtable(L); /* the known objects: weak keys */
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &objects_key);
    }
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {
        {"encode", l_encode},
        {"decode", l_decode},
        {"object", l_object},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
}
