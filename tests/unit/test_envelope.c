/* Unit tests for rl_envelope: grammar, UTF-8, truncated prefixes, keys, spans, unescaping. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_envelope.h"
#include "rl_json.h"

/* Scans an exact-size heap copy of s[0..n), so that ASan reports any read past len. */
static int scan_n(const char *s, size_t n, rl_envelope *env)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int r = rl_env_scan(copy, n, env);
    /* Spans and offsets are into the copy; they are checked against s by the callers. */
    free(copy);
    return r;
}

/* A string literal, embedded NULs included. */
#define SCAN(lit, env) scan_n((lit), sizeof(lit) - 1, (env))

static int scan_s(const char *s, rl_envelope *env)
{
    return scan_n(s, strlen(s), env);
}

static void assert_span(const char *frame, rl_env_span sp, const char *want)
{
    size_t n = strlen(want);
    if (sp.len != n || memcmp(frame + sp.off, want, n) != 0)
        fail_msg("span [%zu, +%zu) is \"%.*s\", want \"%s\"", sp.off, sp.len, (int)sp.len,
                 frame + sp.off, want);
}

/* Every proper prefix of frame is INCOMPLETE, or (only when it is itself one JSON value, as
   rl_json_parse on cJSON decides independently) OK / NOT_OBJECT; never INVALID or BAD_UTF8.
   The whole frame gives want. */
static void check_prefixes(const char *frame, size_t n, int want)
{
    rl_envelope env;
    for (size_t k = 0; k < n; k++) {
        int r = scan_n(frame, k, &env);
        if (r == RL_ENV_INCOMPLETE) {
            assert_non_null(env.why);
            continue;
        }
        if (r != RL_ENV_OK && r != RL_ENV_NOT_OBJECT)
            fail_msg("prefix %zu of %.*s: %d (%s at %zu)", k, (int)n, frame, r, env.why,
                     env.err_off);
        cJSON *v = rl_json_parse(frame, k);
        if (!v)
            fail_msg("prefix %zu of %.*s: %d but not a value", k, (int)n, frame, r);
        assert_int_equal(r, cJSON_IsObject(v) ? RL_ENV_OK : RL_ENV_NOT_OBJECT);
        cJSON_Delete(v);
    }
    assert_int_equal(scan_n(frame, n, &env), want);
}

#define TYPICAL "{\"type\":\"echo_hello\",\"request_id\":\"r2\",\"data\":{\"text\":\"hi\",\"n\":[1,2,3.5e2,true,null]}}"

/* ---------------------------------------------------------------------------------------------
 * Valid frames */

static void test_typical(void **state)
{
    (void)state;
    rl_envelope env;
    const char *f = TYPICAL;
    assert_int_equal(scan_s(f, &env), RL_ENV_OK);
    assert_true(env.has_type);
    assert_true(env.type_is_string);
    assert_false(env.type_escaped);
    assert_span(f, env.type, "echo_hello");
    assert_true(env.has_request_id);
    assert_span(f, env.request_id, "\"r2\"");
    assert_null(env.why);
    assert_false(env.utf8_cut);
}

static void test_valid_shapes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int want;
    } cases[] = {
        {"{}", RL_ENV_OK},
        {" \t\r\n{ \t\r\n} \t\r\n", RL_ENV_OK},
        {"{\"a\":1}", RL_ENV_OK},
        {"{\"a\":{},\"b\":[],\"c\":[{}],\"d\":[[]],\"e\":{\"f\":{\"g\":[1]}}}", RL_ENV_OK},
        {"{ \"a\" : [ 1 , 2 ] , \"b\" : { \"c\" : null } }", RL_ENV_OK},
        {"{\"\":\"\"}", RL_ENV_OK},
        {"{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0041\\u00e9\\u20AC\\uD83D\\uDE00\\ud83d\\ude00\"}", RL_ENV_OK},
        {"{\"x\":1,\"x\":2}", RL_ENV_OK},
        {"{\"s\":\"\x7f\"}", RL_ENV_OK},
        {"[]", RL_ENV_NOT_OBJECT},
        {"[1,\"a\",true,false,null,{},[]]", RL_ENV_NOT_OBJECT},
        {"\"s\"", RL_ENV_NOT_OBJECT},
        {"\"\"", RL_ENV_NOT_OBJECT},
        {"true", RL_ENV_NOT_OBJECT},
        {"false", RL_ENV_NOT_OBJECT},
        {"null", RL_ENV_NOT_OBJECT},
        {" null ", RL_ENV_NOT_OBJECT},
        {"0", RL_ENV_NOT_OBJECT},
        {"-0", RL_ENV_NOT_OBJECT},
        {"12", RL_ENV_NOT_OBJECT},
        {"-12.5e+3", RL_ENV_NOT_OBJECT},
        {"[0,-0,0.0,1e5,1E5,1e-5,1E+5,0e0,-0.0e-0,123456789012345678901234567890]", RL_ENV_NOT_OBJECT},
        {"[1e999,-1e-999]", RL_ENV_NOT_OBJECT},
        {"[\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"]", RL_ENV_NOT_OBJECT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_envelope env;
        int r = scan_s(cases[i].in, &env);
        if (r != cases[i].want)
            fail_msg("%s: %d (%s at %zu), want %d", cases[i].in, r, env.why, env.err_off,
                     cases[i].want);
        assert_null(env.why);
    }
}

static void test_large_frame(void **state)
{
    (void)state;
    /* About 64 KiB: long strings (the word-at-a-time path), multibyte text, many members. */
    size_t cap = 70000, n = 0;
    char *f = malloc(cap);
    assert_non_null(f);
    n += (size_t)sprintf(f + n, "{\"type\":\"bulk\",\"request_id\":7,\"items\":[");
    for (int i = 0; n < 65000; i++)
        n += (size_t)sprintf(f + n, "%s{\"i\":%d,\"s\":\"lorem ipsum dolor sit amet, consectetur \xc3\xa9\xe2\x82\xac\",\"f\":-%d.25e-3}",
                             i ? "," : "", i, i);
    n += (size_t)sprintf(f + n, "]}");
    rl_envelope env;
    assert_int_equal(scan_n(f, n, &env), RL_ENV_OK);
    assert_span(f, env.type, "bulk");
    assert_span(f, env.request_id, "7");
    /* Invalid UTF-8 at the very end of it, and a raw control byte in its middle. */
    f[n - 3] = '\xff';
    assert_int_equal(scan_n(f, n, &env), RL_ENV_BAD_UTF8);
    assert_int_equal(env.err_off, n - 3);
    f[n - 3] = '}';
    f[n / 2] = '\x01';
    assert_int_not_equal(scan_n(f, n, &env), RL_ENV_OK);
    free(f);
}

/* ---------------------------------------------------------------------------------------------
 * Truncated input */

static void test_prefixes(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int want;
    } frames[] = {
        {TYPICAL, RL_ENV_OK},
        {" { \"type\" : \"caf\\u00e9 \\ud83d\\ude00\\\"\\\\\" , \"request_id\" : [1,{\"a\":null}],"
         "\"x\":-0.5e-3,\"y\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"z\":[true,false,{}],"
         "\"w\":\"\",\"v\":1E+2,\"u\":0} ",
         RL_ENV_OK},
        {"  [ 1 , -2.5E+10 , \"x\\\"y\" , [ ] , { } ]  ", RL_ENV_NOT_OBJECT},
        {"-12.5e7", RL_ENV_NOT_OBJECT},
        {"0.25", RL_ENV_NOT_OBJECT},
        {"123 ", RL_ENV_NOT_OBJECT},
        {"\"\\uD83D\\uDE00\\n\\t\\u0041\\u00ff\xf4\x8f\xbf\xbf\"", RL_ENV_NOT_OBJECT},
        {"true", RL_ENV_NOT_OBJECT},
        {"false", RL_ENV_NOT_OBJECT},
        {"null ", RL_ENV_NOT_OBJECT},
        {"{\"a\":[[[{\"b\":{}}]]],\"typ\\u0065\":\"t\"}", RL_ENV_OK},
    };
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++)
        check_prefixes(frames[i].in, strlen(frames[i].in), frames[i].want);

    rl_envelope env;
    assert_int_equal(scan_s("", &env), RL_ENV_INCOMPLETE);
    assert_string_equal(env.why, "truncated");
    assert_int_equal(rl_env_scan(NULL, 0, &env), RL_ENV_INCOMPLETE);
    assert_int_equal(env.err_off, 0);
    assert_int_equal(scan_s(" \r\n\t", &env), RL_ENV_INCOMPLETE);
    assert_int_equal(env.err_off, 4);
    assert_int_equal(scan_s("{\"type\":\"a\"", &env), RL_ENV_INCOMPLETE);
    assert_int_equal(scan_s("{\"a\":12", &env), RL_ENV_INCOMPLETE);
    assert_int_equal(scan_s("[12", &env), RL_ENV_INCOMPLETE);
    /* A prefix that cannot be completed is not incomplete. */
    assert_int_equal(scan_s("\"\\uDC", &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "unpaired surrogate");
    assert_int_equal(scan_s("\"\\uD800\\u00", &env), RL_ENV_INVALID);
    assert_int_equal(scan_s("\"\\uD800\\uD", &env), RL_ENV_INCOMPLETE);
    assert_int_equal(scan_s("\"\\uD800\\uE", &env), RL_ENV_INVALID);
}

/* A frame cut inside a UTF-8 sequence: incomplete, with utf8_cut for callers that hold whole
   frames (the gateway closes with 1007 then). */
static void test_utf8_cut(void **state)
{
    (void)state;
    rl_envelope env;
    assert_int_equal(SCAN("{\"type\":\"\xe2\x82", &env), RL_ENV_INCOMPLETE);
    assert_true(env.utf8_cut);
    assert_string_equal(env.why, "truncated UTF-8");
    assert_int_equal(env.err_off, 9);
    assert_int_equal(SCAN("[\"\xf0", &env), RL_ENV_INCOMPLETE);
    assert_true(env.utf8_cut);
    assert_int_equal(SCAN("[\"a", &env), RL_ENV_INCOMPLETE);
    assert_false(env.utf8_cut);
    /* After a JSON error the rest is still read as UTF-8. */
    assert_int_equal(SCAN("[1,]\xf0\x9f\x98", &env), RL_ENV_INVALID);
    assert_true(env.utf8_cut);
    assert_int_equal(env.err_off, 3);
    assert_int_equal(SCAN("[1,]\xf0\x9f\x98\x80", &env), RL_ENV_INVALID);
    assert_false(env.utf8_cut);
    /* Not a valid start of a sequence: bad, not cut. */
    assert_int_equal(SCAN("[\"\xe0\x80", &env), RL_ENV_BAD_UTF8);
    assert_int_equal(SCAN("[\"\xed\xa0", &env), RL_ENV_BAD_UTF8);
    assert_int_equal(SCAN("[\"\xf4\x90", &env), RL_ENV_BAD_UTF8);
}

/* ---------------------------------------------------------------------------------------------
 * Invalid JSON */

static void test_invalid_grammar(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *why;
        size_t off;
    } cases[] = {
        {"[1,]", "unexpected byte", 3},
        {"{\"a\":1,}", "unexpected byte", 7},
        {"[,1]", "unexpected byte", 1},
        {"{,}", "unexpected byte", 1},
        {"[1 2]", "unexpected byte", 3},
        {"{\"a\" 1}", "unexpected byte", 5},
        {"{\"a\":1 \"b\":2}", "unexpected byte", 7},
        {"{\"a\":}", "unexpected byte", 5},
        {"{1:2}", "unexpected byte", 1},
        {"{'a':1}", "unexpected byte", 1},
        {"[}", "unexpected byte", 1},
        {"{]", "unexpected byte", 1},
        {"[1}", "unexpected byte", 2},
        {"{\"a\":1]", "unexpected byte", 6},
        {"/* c */ {}", "unexpected byte", 0},
        {"{} // c", "trailing data", 3},
        {"{\"a\":1 /* c */}", "unexpected byte", 7},
        {"[NaN]", "unexpected byte", 1},
        {"Infinity", "unexpected byte", 0},
        {"[-Infinity]", "bad number", 2},
        {"01", "bad number", 1},
        {"[00]", "bad number", 2},
        {"-01", "bad number", 2},
        {"+1", "unexpected byte", 0},
        {"[-]", "bad number", 2},
        {"[- 1]", "bad number", 2},
        {"[1.]", "bad number", 3},
        {"1.e5", "bad number", 2},
        {".5", "unexpected byte", 0},
        {"[.5]", "unexpected byte", 1},
        {"[1e]", "bad number", 3},
        {"[1e+]", "bad number", 4},
        {"[1E-x]", "bad number", 4},
        {"[1.5.3]", "unexpected byte", 4},
        {"[1-2]", "unexpected byte", 2},
        {"0x10", "trailing data", 1},
        {"\"a\x01\"", "control character in string", 2},
        {"\"a\tb\"", "control character in string", 2},
        {"\"a\nb\"", "control character in string", 2},
        {"\"\\x\"", "bad escape", 1},
        {"\"\\U0041\"", "bad escape", 1},
        {"\"\\'\"", "bad escape", 1},
        {"\"\\u00G1\"", "bad escape", 1},
        {"\"\\u12\"", "bad escape", 1},
        {"\"\\u0000\"", "\\u0000 in string", 1},
        {"{\"a\\u0000\":1}", "\\u0000 in string", 3},
        {"\"\\uD800\"", "unpaired surrogate", 1},
        {"\"\\uDBFF\"", "unpaired surrogate", 1},
        {"\"\\uDC00\"", "unpaired surrogate", 1},
        {"\"\\udfff\"", "unpaired surrogate", 1},
        {"\"\\uD800\\n\"", "unpaired surrogate", 1},
        {"\"\\uD800x\"", "unpaired surrogate", 1},
        {"\"\\uD800\\uD800\"", "unpaired surrogate", 1},
        {"\"\\uD800\\u0041\"", "unpaired surrogate", 1},
        {"\"\\uD800\\uZZZZ\"", "bad escape", 7},
        {"\"\\uDC00\\uD800\"", "unpaired surrogate", 1},
        {"[tru]", "bad literal", 1},
        {"[nul1]", "bad literal", 1},
        {"True", "unexpected byte", 0},
        {"nulll", "trailing data", 4},
        {"truex", "trailing data", 4},
        {"[truex]", "unexpected byte", 5},
        {"{}{}", "trailing data", 2},
        {"1 2", "trailing data", 2},
        {"\"a\"\"b\"", "trailing data", 3},
        {"{\"a\":1}}", "trailing data", 7},
        {"\x0b{}", "unexpected byte", 0},
        {"{}\x0c", "trailing data", 2},
        {"\xef\xbb\xbf{}", "unexpected byte", 0},
        {"[\xc3\xa9]", "unexpected byte", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_envelope env;
        int r = scan_s(cases[i].in, &env);
        if (r != RL_ENV_INVALID || strcmp(env.why, cases[i].why) != 0 || env.err_off != cases[i].off)
            fail_msg("%s: %d (%s at %zu), want %s at %zu", cases[i].in, r, env.why, env.err_off,
                     cases[i].why, cases[i].off);
        assert_false(env.has_type);
        assert_false(env.has_request_id);
    }
    rl_envelope env;
    assert_int_equal(SCAN("{}\0", &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "trailing data");
    assert_int_equal(SCAN("\"a\0\"", &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "control character in string");
    assert_int_equal(SCAN("\0", &env), RL_ENV_INVALID);
}

/* ---------------------------------------------------------------------------------------------
 * Depth */

static char *repeat(const char *head, size_t nhead, const char *mid, const char *tail, size_t ntail, size_t *len)
{
    size_t hl = strlen(head), ml = strlen(mid), tl = strlen(tail);
    char *s = malloc(hl * nhead + ml + tl * ntail + 1);
    assert_non_null(s);
    size_t n = 0;
    for (size_t i = 0; i < nhead; i++, n += hl)
        memcpy(s + n, head, hl);
    memcpy(s + n, mid, ml);
    n += ml;
    for (size_t i = 0; i < ntail; i++, n += tl)
        memcpy(s + n, tail, tl);
    s[n] = '\0';
    *len = n;
    return s;
}

static void test_depth(void **state)
{
    (void)state;
    rl_envelope env;
    size_t n;
    char *s = repeat("[", RL_ENV_MAX_DEPTH, "", "]", RL_ENV_MAX_DEPTH, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_NOT_OBJECT);
    free(s);
    s = repeat("[", RL_ENV_MAX_DEPTH + 1, "", "]", RL_ENV_MAX_DEPTH + 1, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "depth");
    assert_int_equal(env.err_off, RL_ENV_MAX_DEPTH);
    free(s);

    s = repeat("{\"a\":", RL_ENV_MAX_DEPTH, "1", "}", RL_ENV_MAX_DEPTH, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_OK);
    free(s);
    s = repeat("{\"a\":", RL_ENV_MAX_DEPTH, "{}", "}", RL_ENV_MAX_DEPTH, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "depth");
    free(s);
    /* Mixed, with the top-level keys found under the nesting. */
    s = repeat("[{\"x\":", RL_ENV_MAX_DEPTH / 2 - 1, "[{}]", "}]", RL_ENV_MAX_DEPTH / 2 - 1, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_NOT_OBJECT);
    free(s);
    /* Depth goes back down: many siblings at depth 100 are fine. */
    s = repeat("[", RL_ENV_MAX_DEPTH - 1, "[],[],[]", "]", RL_ENV_MAX_DEPTH - 1, &n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_NOT_OBJECT);
    free(s);

    /* 1 MB of '[': refused at the 101st, no recursion; bad UTF-8 at its end still counts. */
    n = 1u << 20;
    s = malloc(n);
    assert_non_null(s);
    memset(s, '[', n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "depth");
    assert_int_equal(env.err_off, RL_ENV_MAX_DEPTH);
    s[n - 1] = '\xff';
    assert_int_equal(scan_n(s, n, &env), RL_ENV_BAD_UTF8);
    assert_int_equal(env.err_off, n - 1);
    memset(s, '{', n);
    assert_int_equal(scan_n(s, n, &env), RL_ENV_INVALID);
    free(s);
}

/* ---------------------------------------------------------------------------------------------
 * Top-level keys */

static void test_duplicates(void **state)
{
    (void)state;
    static const char *const dup[] = {
        "{\"type\":\"a\",\"type\":\"a\"}",
        "{\"type\":1,\"x\":2,\"type\":{}}",
        "{\"type\":1,\"typ\\u0065\":2}",
        "{\"\\u0074ype\":1,\"type\":2}",
        "{\"type\":1,\"\\u0074\\u0079\\u0070\\u0065\":2}",
        "{\"type\":1,\"t\\u0079pe\":2}",
        "{\"conn_pid\":1,\"conn_pid\":1}",
        "{\"conn_pid\":\"a\",\"type\":\"b\",\"conn\\u005fpid\":\"c\"}",
        "{\"conn_pid\":1,\"conn\\u005Fpid\":2}",
    };
    for (size_t i = 0; i < sizeof dup / sizeof dup[0]; i++) {
        rl_envelope env;
        int r = scan_s(dup[i], &env);
        if (r != RL_ENV_INVALID || strcmp(env.why, "duplicate key") != 0)
            fail_msg("%s: %d (%s)", dup[i], r, env.why);
    }
    rl_envelope env;
    assert_int_equal(scan_s("{\"type\":1,\"x\":2,\"type\":3}", &env), RL_ENV_INVALID);
    assert_int_equal(env.err_off, 16); /* the second key's opening quote */

    static const char *const ok[] = {
        "{\"a\":{\"type\":1,\"type\":2},\"b\":[{\"conn_pid\":1,\"conn_pid\":2}]}",
        "[{\"type\":1,\"type\":2}]",
        "{\"type\":1,\"types\":2,\"typ\":3,\"Type\":4,\"type \":5,\"typ\\u0065s\":6}",
        "{\"conn_pid\":1,\"conn_pi\":2,\"conn_pidd\":3,\"type\":{\"type\":1,\"conn_pid\":2}}",
        "{\"x\":1,\"x\":2,\"request_id\":1,\"request_id\":2}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int r = scan_s(ok[i], &env);
        if (r != RL_ENV_OK && r != RL_ENV_NOT_OBJECT)
            fail_msg("%s: %d (%s)", ok[i], r, env.why);
    }
}

static void test_type(void **state)
{
    (void)state;
    rl_envelope env;
    const char *f = "{\"a\":{\"type\":\"inner\"},\"type\" : \"outer\" }";
    assert_int_equal(scan_s(f, &env), RL_ENV_OK);
    assert_true(env.has_type && env.type_is_string && !env.type_escaped);
    assert_span(f, env.type, "outer");

    f = "{\"type\":\"a\\u0062\\n\"}";
    assert_int_equal(scan_s(f, &env), RL_ENV_OK);
    assert_true(env.has_type && env.type_is_string && env.type_escaped);
    assert_span(f, env.type, "a\\u0062\\n");
    char out[16];
    assert_int_equal(rl_env_unescape(f + env.type.off, env.type.len, out, sizeof out), 3);
    assert_string_equal(out, "ab\n");

    f = "{\"typ\\u0065\":\"\"}";
    assert_int_equal(scan_s(f, &env), RL_ENV_OK);
    assert_true(env.has_type && env.type_is_string);
    assert_int_equal(env.type.len, 0);
    assert_int_equal(env.type.off, 14);

    static const char *const raw[][2] = {
        {"{\"type\":42}", "42"},
        {"{\"type\":-1.5e3 ,\"x\":1}", "-1.5e3"},
        {"{\"type\":null}", "null"},
        {"{\"type\":true}", "true"},
        {"{\"type\": {\"a\":[1,\"}\"]} }", "{\"a\":[1,\"}\"]}"},
        {"{\"type\":[]}", "[]"},
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
        assert_int_equal(scan_s(raw[i][0], &env), RL_ENV_OK);
        assert_true(env.has_type);
        assert_false(env.type_is_string);
        assert_false(env.type_escaped);
        assert_span(raw[i][0], env.type, raw[i][1]);
    }

    assert_int_equal(scan_s("{\"a\":{\"type\":\"x\"},\"b\":[{\"type\":1}]}", &env), RL_ENV_OK);
    assert_false(env.has_type);
    assert_int_equal(env.type.off, 0);
    assert_int_equal(env.type.len, 0);
    assert_int_equal(scan_s("[{\"type\":\"x\",\"request_id\":1}]", &env), RL_ENV_NOT_OBJECT);
    assert_false(env.has_type);
    assert_false(env.has_request_id);
}

static void test_request_id(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"{\"request_id\":\"r2\"}", "\"r2\""},
        {"{\"request_id\":\"r\\\"2\\u00e9\"}", "\"r\\\"2\\u00e9\""},
        {"{\"request_id\":\"\"}", "\"\""},
        {"{\"request_id\" : 12 , \"type\":\"x\"}", "12"},
        {"{\"request_id\":-0.5E+2}", "-0.5E+2"},
        {"{\"request_id\":0}", "0"},
        {"{\"request_id\":{\"a\":[1,{\"b\":\"]\"}]}}", "{\"a\":[1,{\"b\":\"]\"}]}"},
        {"{\"request_id\":[]}", "[]"},
        {"{\"request_id\":true}", "true"},
        {"{\"request_id\":false}", "false"},
        {"{\"request_id\":null}", "null"},
        {"{\"request_id\":1,\"request_id\":2}", "1"},
        {"{\"request_id\":{\"request_id\":3},\"request_id\":2}", "{\"request_id\":3}"},
        {"{\"request\\u005fid\":\"esc\",\"request_id\":2}", "\"esc\""},
        {"{\"a\":{\"request_id\":1},\"request_id\":\"top\"}", "\"top\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_envelope env;
        assert_int_equal(scan_s(cases[i][0], &env), RL_ENV_OK);
        assert_true(env.has_request_id);
        assert_span(cases[i][0], env.request_id, cases[i][1]);
    }
    rl_envelope env;
    assert_int_equal(scan_s("{\"a\":{\"request_id\":1}}", &env), RL_ENV_OK);
    assert_false(env.has_request_id);
    assert_int_equal(env.request_id.len, 0);
}

/* ---------------------------------------------------------------------------------------------
 * UTF-8 */

/* Reference: decodes by the bit patterns alone, then applies the rules. */
static int ref_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        unsigned k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k >= n) /* cut */
            return 0;
        for (unsigned j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        static const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

/* rl_env_utf8_valid and the scanner (in a string) against the reference. */
static void check_seq(const uint8_t *seq, size_t n)
{
    int want = ref_utf8_valid(seq, n);
    if (rl_env_utf8_valid((const char *)seq, n) != want)
        fail_msg("utf8_valid %02x %02x %02x %02x (%zu): want %d", seq[0], n > 1 ? seq[1] : 0,
                 n > 2 ? seq[2] : 0, n > 3 ? seq[3] : 0, n, want);
    if (seq[0] < 0x80)
        return;
    char str[8] = "\"";
    memcpy(str + 1, seq, n);
    str[n + 1] = '"';
    rl_envelope env;
    int r = scan_n(str, n + 2, &env);
    if (r != (want ? RL_ENV_NOT_OBJECT : RL_ENV_BAD_UTF8))
        fail_msg("scan \"%02x %02x %02x %02x\" (%zu): %d, want valid=%d", seq[0],
                 n > 1 ? seq[1] : 0, n > 2 ? seq[2] : 0, n > 3 ? seq[3] : 0, n, r, want);
    if (!want)
        assert_int_equal(env.err_off, 1);
}

static void test_utf8_exhaustive(void **state)
{
    (void)state;
    uint8_t s[4];
    static const uint8_t tails[] = {0x00, 0x22, 0x5c, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        check_seq(s, 1);
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            check_seq(s, 2);
            if (a < 0xE0)
                continue;
            for (size_t c = 0; c < sizeof tails; c++) {
                s[2] = tails[c];
                check_seq(s, 3);
                if (a < 0xF0)
                    continue;
                for (size_t d = 0; d < sizeof tails; d++) {
                    s[3] = tails[d];
                    check_seq(s, 4);
                }
            }
        }
    }
    /* Every 3-byte sequence, in full. */
    for (unsigned a = 0xE0; a < 0xF0; a++)
        for (unsigned b = 0; b < 256; b++)
            for (unsigned c = 0; c < 256; c++) {
                s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = (uint8_t)c;
                if (rl_env_utf8_valid((const char *)s, 3) != ref_utf8_valid(s, 3))
                    fail_msg("utf8_valid %02x %02x %02x", a, b, c);
            }
}

static void test_utf8_cases(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int valid;
    } cases[] = {
        {"", 1},
        {"plain ascii \x01\x7f", 1},
        {"\xc2\x80", 1},                 /* U+0080 */
        {"\xdf\xbf", 1},                 /* U+07FF */
        {"\xe0\xa0\x80", 1},             /* U+0800 */
        {"\xed\x9f\xbf", 1},             /* U+D7FF */
        {"\xee\x80\x80", 1},             /* U+E000 */
        {"\xef\xbf\xbf", 1},             /* U+FFFF */
        {"\xf0\x90\x80\x80", 1},         /* U+10000 */
        {"\xf4\x8f\xbf\xbf", 1},         /* U+10FFFF */
        {"\xc0\xaf", 0},                 /* overlong '/' */
        {"\xc1\xbf", 0},                 /* overlong */
        {"\xe0\x80\xaf", 0},             /* overlong */
        {"\xe0\x9f\xbf", 0},             /* overlong */
        {"\xf0\x80\x80\xaf", 0},         /* overlong */
        {"\xf0\x8f\xbf\xbf", 0},         /* overlong */
        {"\xed\xa0\x80", 0},             /* U+D800 */
        {"\xed\xbf\xbf", 0},             /* U+DFFF */
        {"\xed\xa0\xbd\xed\xb8\x80", 0}, /* CESU-8 pair */
        {"\xf4\x90\x80\x80", 0},         /* U+110000 */
        {"\xf5\x80\x80\x80", 0},
        {"\xf8\x88\x80\x80\x80", 0},
        {"\xff", 0},
        {"\xfe", 0},
        {"\x80", 0},
        {"\xbf", 0},
        {"a\xc3", 0}, /* cut */
        {"\xe2\x82", 0},
        {"\xf0\x9f\x98", 0},
        {"\xe2\x82x", 0},
        {"\xf0\x9f\x98\x80\xf0\x9f\x98\x80 0123456789abcdef0123456789abcdef", 1},
        {"0123456789abcdef0123456789abcdef\xff", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_int_equal(rl_env_utf8_valid(cases[i].s, strlen(cases[i].s)), cases[i].valid);
    assert_int_equal(rl_env_utf8_valid("a\0b", 3), 1);
    assert_int_equal(rl_env_utf8_valid(NULL, 0), 1);
}

/* Invalid UTF-8 wins over a JSON error before it, and is found where it is. */
static void test_utf8_after_json_error(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t off;
    } cases[] = {
        {"{\"a\":01,\"b\":\"\xff\"}", 13},
        {"[1,]\xff", 4},
        {"[1,]\xc3\xa9\xc0\x80", 6},
        {"{\"type\":1,\"type\":\"\xed\xa0\x80\"}", 18},
        {"[\"\\x\xff\"]", 4},
        {"[\"\\\xff\"]", 3},
        {"[\"\\uD800\xf0\x9f\x98\x80\xe0\x80\"]", 12},
        {"\"\x01\xf5\"", 2},
        {"\xff{}", 0},
        {"{}\xff", 2},
        {"{\"a\":\xe0\x80}", 5},
        {"[truex\xc0]", 6},
        {"{\"a\":1e\xff}", 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rl_envelope env;
        int r = scan_s(cases[i].in, &env);
        if (r != RL_ENV_BAD_UTF8 || env.err_off != cases[i].off)
            fail_msg("case %zu: %d (%s at %zu), want BAD_UTF8 at %zu", i, r, env.why,
                     env.err_off, cases[i].off);
        assert_string_equal(env.why, "invalid UTF-8");
    }
    /* Deep nesting then bad UTF-8. */
    size_t n;
    char *s = repeat("[", 200, "\xc0", "]", 0, &n);
    rl_envelope env;
    assert_int_equal(scan_n(s, n, &env), RL_ENV_BAD_UTF8);
    free(s);
}

/* \u escapes in the scanner. */
static void test_u_escapes(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "\"\\u0001\"", "\"\\u001f\"", "\"\\uD7FF\"", "\"\\uE000\"", "\"\\uFFFF\"", "\"\\uffff\"",
        "\"\\uD800\\uDC00\"", "\"\\uDBFF\\uDFFF\"", "\"\\ud83d\\ude00\"", "\"\\uD83D\\ude00x\"",
        "\"\\uAbCd\"",
    };
    rl_envelope env;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int r = scan_s(ok[i], &env);
        if (r != RL_ENV_NOT_OBJECT)
            fail_msg("%s: %d (%s)", ok[i], r, env.why);
    }
    assert_int_equal(scan_s("\"a\\u0000b\"", &env), RL_ENV_INVALID);
    assert_string_equal(env.why, "\\u0000 in string");
    assert_int_equal(env.err_off, 2);
    assert_int_equal(scan_s("{\"type\":\"\\u0000\"}", &env), RL_ENV_INVALID);
}

/* ---------------------------------------------------------------------------------------------
 * Unescaping */

static void check_unescape(const char *in, const char *want)
{
    char out[64];
    memset(out, 0x55, sizeof out);
    ssize_t n = rl_env_unescape(in, strlen(in), out, sizeof out);
    if (n != (ssize_t)strlen(want) || memcmp(out, want, strlen(want) + 1) != 0)
        fail_msg("unescape %s: %zd", in, n);
}

static void test_unescape(void **state)
{
    (void)state;
    check_unescape("", "");
    check_unescape("plain", "plain");
    check_unescape("\\\"\\\\\\/\\b\\f\\n\\r\\t", "\"\\/\b\f\n\r\t");
    check_unescape("a\\nb\\tc", "a\nb\tc");
    check_unescape("\\u0041\\u0001\\u007f", "A\x01\x7f");
    check_unescape("\\u0080\\u00e9\\u07FF", "\xc2\x80\xc3\xa9\xdf\xbf");
    check_unescape("\\u0800\\u20AC\\uffff", "\xe0\xa0\x80\xe2\x82\xac\xef\xbf\xbf");
    check_unescape("\\uD800\\uDC00", "\xf0\x90\x80\x80");
    check_unescape("x\\uD83D\\uDE00y", "x\xf0\x9f\x98\x80y");
    check_unescape("\\udbff\\udfff", "\xf4\x8f\xbf\xbf");
    check_unescape("\xc3\xa9\\u00e9", "\xc3\xa9\xc3\xa9");

    static const char *const bad[] = {
        "\\", "a\\", "\\x", "\\u", "\\u12", "\\u12G4", "\\u0000", "\\uD800", "\\uDC00",
        "\\uD800\\u0041", "\\uD800x", "\\uD800\\uD800", "\\uD800\\uDC0", "\\uD800\\",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char out[64];
        if (rl_env_unescape(bad[i], strlen(bad[i]), out, sizeof out) != -1)
            fail_msg("unescape %s: not refused", bad[i]);
    }

    /* Out of space: the NUL needs its byte, and nothing is written past cap. */
    char out[8];
    memset(out, 'X', sizeof out);
    assert_int_equal(rl_env_unescape("abcd", 4, out, 5), 4);
    assert_string_equal(out, "abcd");
    memset(out, 'X', sizeof out);
    assert_int_equal(rl_env_unescape("abcd", 4, out, 4), -1);
    assert_int_equal(out[4], 'X');
    assert_int_equal(rl_env_unescape("", 0, out, 0), -1);
    assert_int_equal(rl_env_unescape("", 0, out, 1), 0);
    assert_int_equal(rl_env_unescape(NULL, 0, out, 1), 0);
    assert_int_equal(out[0], '\0');
    memset(out, 'X', sizeof out);
    assert_int_equal(rl_env_unescape("\\uD83D\\uDE00", 12, out, 4), -1);
    assert_int_equal(out[4], 'X');
    assert_int_equal(rl_env_unescape("\\uD83D\\uDE00", 12, out, 5), 4);
    assert_int_equal(rl_env_unescape("a\\n", 3, out, 2), -1);
    assert_int_equal(rl_env_unescape("a\\n", 3, out, 3), 2);
    assert_int_equal(rl_env_unescape("ab\\u20ac", 8, out, 5), -1);
    assert_int_equal(rl_env_unescape("ab\\u20ac", 8, out, 6), 5);
    /* The input is read only to len. */
    assert_int_equal(rl_env_unescape("ab\\n", 2, out, sizeof out), 2);
    assert_string_equal(out, "ab");
}

/* The cold-path reader (cJSON) must not read a document more loosely than the scanner: cJSON
   takes a \u escape with non-hex digits as U+0000 and cuts the string there. */
static void test_rl_json_parse_bad_u_escape(void **state)
{
    (void)state;
    static const char *const bad[] = {"{\"type\":\"ab\\uZZZZcd\"}", "[\"\\u12\"]", "\"\\u0000\"",
                                      "\"\\u00g1\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cJSON *v = rl_json_parse(bad[i], strlen(bad[i]));
        if (v)
            fail_msg("rl_json_parse accepted %s", bad[i]);
    }
    cJSON *v = rl_json_parse("\"\\u00e9\\uD83D\\uDE00\"", 20);
    assert_non_null(v);
    cJSON_Delete(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_typical),
        cmocka_unit_test(test_rl_json_parse_bad_u_escape),
        cmocka_unit_test(test_valid_shapes),
        cmocka_unit_test(test_large_frame),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_utf8_cut),
        cmocka_unit_test(test_invalid_grammar),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_type),
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_utf8_exhaustive),
        cmocka_unit_test(test_utf8_cases),
        cmocka_unit_test(test_utf8_after_json_error),
        cmocka_unit_test(test_u_escapes),
        cmocka_unit_test(test_unescape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
