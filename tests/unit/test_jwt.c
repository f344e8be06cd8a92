/* Unit tests for rl_jwt: HS256 verification, claim checks, malformed and truncated tokens. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "rl_jwt.h"

#define NOW 1700000000
#define SECRET "test-secret-0123456789"

static const char hs256_hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* Independent of the code under test: plain base64url so tests can build any token. */
static void b64url(const void *in, size_t len, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = in;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        if (i + 1 < len)
            out[o++] = a[(v >> 6) & 63];
        if (i + 2 < len)
            out[o++] = a[v & 63];
    }
    out[o] = '\0';
}

/* header.payload.HMAC(secret) built by the test; caller frees. */
static char *make_token(const char *hdr, const char *claims, const char *secret)
{
    size_t cap = (strlen(hdr) + strlen(claims)) * 2 + 128;
    char *t = malloc(cap);
    assert_non_null(t);
    b64url(hdr, strlen(hdr), t);
    strcat(t, ".");
    b64url(claims, strlen(claims), t + strlen(t));
    unsigned char md[32];
    unsigned int mdlen = 0;
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)t, strlen(t),
                         md, &mdlen));
    assert_int_equal(mdlen, 32);
    strcat(t, ".");
    b64url(md, mdlen, t + strlen(t));
    return t;
}

static rl_jwt_opts opts(void)
{
    rl_jwt_opts o = {SECRET, sizeof SECRET - 1, NULL, NULL, 30};
    return o;
}

/* Verifies tok with o at NOW; checks that a failure leaves out empty and names a reason. */
static int verify(const char *tok, const rl_jwt_opts *o, rl_jwt_claims *out, const char **why)
{
    int rc = rl_jwt_verify(tok, o, NOW, out, why);
    if (rc < 0) {
        assert_non_null(*why);
        assert_null(out->sub);
        assert_null(out->meta_json);
        assert_null(out->scope);
    }
    return rc;
}

/* Expects claims to fail with reason want under o. */
static void expect_fail_o(const char *hdr, const char *claims, const rl_jwt_opts *o,
                          const char *want)
{
    char *t = make_token(hdr, claims, SECRET);
    rl_jwt_claims c;
    const char *why = NULL;
    assert_true(verify(t, o, &c, &why) < 0);
    assert_string_equal(why, want);
    free(t);
}

static void expect_fail(const char *hdr, const char *claims, const char *want)
{
    rl_jwt_opts o = opts();
    expect_fail_o(hdr, claims, &o, want);
}

static void expect_ok_o(const char *claims, const rl_jwt_opts *o)
{
    char *t = make_token(hs256_hdr, claims, SECRET);
    rl_jwt_claims c;
    const char *why = NULL;
    assert_int_equal(verify(t, o, &c, &why), 0);
    rl_jwt_claims_free(&c);
    free(t);
}

static void expect_ok(const char *claims)
{
    rl_jwt_opts o = opts();
    expect_ok_o(claims, &o);
}

static void test_valid(void **state)
{
    (void)state;
    char claims[128];
    snprintf(claims, sizeof claims, "{\"sub\":\"alice\",\"exp\":%d,\"iat\":%d}", NOW + 60, NOW);
    char *t = make_token(hs256_hdr, claims, SECRET);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why = "x";
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_null(why);
    assert_string_equal(c.sub, "alice");
    assert_null(c.meta_json);
    assert_null(c.scope);
    rl_jwt_claims_free(&c);
    assert_null(c.sub);
    rl_jwt_claims_free(&c); /* idempotent */
    free(t);

    /* why may be NULL */
    t = make_token(hs256_hdr, "{\"sub\":\"bob\"}", SECRET);
    assert_int_equal(rl_jwt_verify(t, &o, NOW, &c, NULL), 0);
    assert_string_equal(c.sub, "bob");
    rl_jwt_claims_free(&c);
    free(t);
    /* unknown claims and header fields are ignored */
    expect_ok("{\"sub\":\"x\",\"iat\":\"whenever\",\"jti\":[1],\"x\":{\"y\":null}}");
}

static void test_sign_roundtrip(void **state)
{
    (void)state;
    char *t = rl_jwt_sign_hs256("{\"sub\":\"carol\",\"scope\":\"s\"}", SECRET, sizeof SECRET - 1);
    assert_non_null(t);
    char *ref = make_token(hs256_hdr, "{\"sub\":\"carol\",\"scope\":\"s\"}", SECRET);
    assert_string_equal(t, ref); /* same bytes as an independent encoder */
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_string_equal(c.sub, "carol");
    assert_string_equal(c.scope, "s");
    rl_jwt_claims_free(&c);
    free(t);
    free(ref);
    /* every payload length mod 3 */
    const char *ps[] = {"{}", "{ }", "{  }",
                        "{\"sub\":\"a\"}", "{\"sub\":\"ab\"}", "{\"sub\":\"abc\"}"};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) {
        t = rl_jwt_sign_hs256(ps[i], SECRET, sizeof SECRET - 1);
        assert_non_null(t);
        assert_int_equal(verify(t, &o, &c, &why), 0);
        rl_jwt_claims_free(&c);
        free(t);
    }
    assert_null(rl_jwt_sign_hs256(NULL, SECRET, 1));
}

static void test_expired(void **state)
{
    (void)state;
    char claims[128];
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d}", NOW - 100);
    expect_fail(hs256_hdr, claims, "token expired");
}

static void test_nbf_future(void **state)
{
    (void)state;
    char claims[128];
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"nbf\":%d}", NOW + 100);
    expect_fail(hs256_hdr, claims, "token not yet valid");
}

static void test_leeway(void **state)
{
    (void)state;
    char claims[128];
    rl_jwt_opts o = opts(); /* leeway 30 */
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d}", NOW - 29);
    expect_ok_o(claims, &o);
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d}", NOW - 30);
    expect_fail_o(hs256_hdr, claims, &o, "token expired");
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"nbf\":%d}", NOW + 30);
    expect_ok_o(claims, &o);
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"nbf\":%d}", NOW + 31);
    expect_fail_o(hs256_hdr, claims, &o, "token not yet valid");

    o.leeway_s = 0;
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d}", NOW); /* invalid on exp itself */
    expect_fail_o(hs256_hdr, claims, &o, "token expired");
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d,\"nbf\":%d}", NOW + 1, NOW);
    expect_ok_o(claims, &o);
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d.5}", NOW); /* fractional */
    expect_ok_o(claims, &o);
    o.leeway_s = -100; /* a negative leeway is treated as 0, never as extra strictness */
    snprintf(claims, sizeof claims, "{\"sub\":\"a\",\"exp\":%d}", NOW + 1);
    expect_ok_o(claims, &o);
}

static void test_bad_time_claims(void **state)
{
    (void)state;
    expect_fail(hs256_hdr, "{\"sub\":\"a\",\"exp\":\"1700000100\"}", "malformed token");
    expect_fail(hs256_hdr, "{\"sub\":\"a\",\"exp\":null}", "malformed token");
    expect_fail(hs256_hdr, "{\"sub\":\"a\",\"nbf\":true}", "malformed token");
    expect_fail(hs256_hdr, "{\"sub\":\"a\",\"exp\":1e999}", "malformed token");
    expect_fail(hs256_hdr, "{\"sub\":\"a\",\"exp\":[1]}", "malformed token");
}

static void test_alg(void **state)
{
    (void)state;
    const char *claims = "{\"sub\":\"a\"}";
    expect_fail("{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, "unsupported alg");
    expect_fail("{\"alg\":\"HS512\"}", claims, "unsupported alg");
    expect_fail("{\"alg\":\"RS256\"}", claims, "unsupported alg");
    expect_fail("{\"alg\":\"hs256\"}", claims, "unsupported alg");
    expect_fail("{\"alg\":\"HS256 \"}", claims, "unsupported alg");
    expect_fail("{\"alg\":256}", claims, "unsupported alg");
    expect_fail("{\"alg\":null}", claims, "unsupported alg");
    expect_fail("{\"typ\":\"JWT\"}", claims, "unsupported alg");
    expect_fail("{\"ALG\":\"HS256\"}", claims, "unsupported alg");
    /* ambiguous or extended headers */
    expect_fail("{\"alg\":\"HS256\",\"alg\":\"none\"}", claims, "malformed token");
    expect_fail("{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", claims, "malformed token");
    expect_fail("[\"HS256\"]", claims, "malformed token");
    expect_fail("\"HS256\"", claims, "malformed token");
    expect_fail("{\"alg\":\"HS256\"} x", claims, "malformed token");

    /* the classic: alg none with an empty signature */
    char h[64], p[64], t[160];
    b64url("{\"alg\":\"none\"}", 14, h);
    b64url(claims, strlen(claims), p);
    snprintf(t, sizeof t, "%s.%s.", h, p);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "unsupported alg");
}

static void test_tampered(void **state)
{
    (void)state;
    char *good = make_token(hs256_hdr, "{\"sub\":\"alice\"}", SECRET);
    char *evil = make_token(hs256_hdr, "{\"sub\":\"admin\"}", SECRET);
    /* evil's header.payload with good's signature */
    char *t = strdup(evil);
    strcpy(strrchr(t, '.'), strrchr(good, '.'));
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");

    /* flip one character of the payload in place */
    free(t);
    t = strdup(good);
    char *p = strchr(t, '.') + 3;
    *p = *p == 'A' ? 'B' : 'A';
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");

    /* flip one character of the signature */
    free(t);
    t = strdup(good);
    p = strrchr(t, '.') + 5;
    *p = *p == 'A' ? 'B' : 'A';
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");

    /* same signature bits written non-canonically (the last char carries 2 unused bits) */
    free(t);
    t = strdup(good);
    p = t + strlen(t) - 1;
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(a, *p) - a);
    assert_int_equal(v & 3, 0);
    *p = a[v | 1];
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");

    /* signature with padding or extra chars */
    free(t);
    size_t n = strlen(good);
    t = malloc(n + 3);
    snprintf(t, n + 3, "%s=", good);
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");
    snprintf(t, n + 3, "%sA", good);
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");
    free(t);
    free(good);
    free(evil);
}

static void test_wrong_secret(void **state)
{
    (void)state;
    char *t = make_token(hs256_hdr, "{\"sub\":\"alice\"}", "other-secret");
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");
    free(t);

    /* a secret that is a prefix of the real one */
    t = make_token(hs256_hdr, "{\"sub\":\"alice\"}", "test-secret");
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");
    free(t);

    /* no secret configured refuses everything */
    t = make_token(hs256_hdr, "{\"sub\":\"alice\"}", SECRET);
    o.secret_len = 0;
    assert_true(verify(t, &o, &c, &why) < 0);
    o.secret = NULL;
    o.secret_len = 5;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_true(verify(t, NULL, &c, &why) < 0);
    o = opts();
    assert_true(verify(NULL, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    free(t);
}

static void test_unsigned(void **state)
{
    (void)state;
    char *good = make_token(hs256_hdr, "{\"sub\":\"alice\"}", SECRET);
    strrchr(good, '.')[1] = '\0';
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(good, &o, &c, &why) < 0);
    assert_string_equal(why, "bad signature");
    free(good);
}

static void test_segments(void **state)
{
    (void)state;
    char *good = make_token(hs256_hdr, "{\"sub\":\"alice\"}", SECRET);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    size_t n = strlen(good);
    char *t = malloc(n + 8);

    /* two segments */
    strcpy(t, good);
    *strrchr(t, '.') = '\0';
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    /* four segments */
    snprintf(t, n + 8, "%s.", good);
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    snprintf(t, n + 8, "%s.abc", good);
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    /* empty header or payload */
    snprintf(t, n + 8, "%s", strchr(good, '.'));
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    strcpy(t, good);
    memmove(strchr(t, '.') + 1, strrchr(t, '.'), strlen(strrchr(t, '.')) + 1);
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
    const char *odd[] = {"", ".", "..", "...", "a.b", "a..c", ".b.c"};
    for (size_t i = 0; i < sizeof odd / sizeof *odd; i++) {
        assert_true(verify(odd[i], &o, &c, &why) < 0);
        assert_string_equal(why, "malformed token");
    }
    free(t);
    free(good);
}

static void test_garbage_base64(void **state)
{
    (void)state;
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    char *good = make_token(hs256_hdr, "{\"sub\":\"alice\"}", SECRET);
    const char bad[] = {'!', '=', '+', '/', ' ', '\n', '%', '\x80', '\xff'};
    for (size_t i = 0; i < sizeof bad; i++) {
        /* into the header */
        char *t = strdup(good);
        t[2] = bad[i];
        assert_true(verify(t, &o, &c, &why) < 0);
        assert_string_equal(why, "malformed token");
        free(t);
    }
    const char *tokens[] = {
        "!!!!.!!!!.!!!!",
        "eyJhbGciOiJIUzI1NiJ9=.e30.AAAA",                    /* padded header */
        "eyJhbGciOiJIUzI1NiJ9.e30=.AAAA",                    /* padded payload, bad sig */
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9A.e30.AAAA",    /* length 1 mod 4 */
        "bm90IGpzb24.e30.AAAA",                              /* header "not json" */
        "e30.e30.AAAA",                                      /* header {} : no alg */
    };
    const char *want[] = {"malformed token", "malformed token", "bad signature",
                          "malformed token", "malformed token", "unsupported alg"};
    for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++) {
        assert_true(verify(tokens[i], &o, &c, &why) < 0);
        assert_string_equal(why, want[i]);
    }
    /* a correctly signed payload that is not a JSON object, or has a NUL inside */
    const char *payloads[] = {"not json", "[1,2]", "\"sub\"", "42", "{\"sub\":\"a\"} {}", "{",
                              /* escapes cJSON would read as a cut string: "a" */
                              "{\"sub\":\"a\\uZZZZb\"}", "{\"sub\":\"a\\u0000b\"}",
                              "{\"sub\":\"a\\u12\"}"};
    for (size_t i = 0; i < sizeof payloads / sizeof *payloads; i++)
        expect_fail(hs256_hdr, payloads[i], "malformed token");
    free(good);
}

static void test_nul_in_payload(void **state)
{
    (void)state;
    /* {"sub":"a"}\0{"sub":"b"} signed as raw bytes */
    const char raw[] = "{\"sub\":\"a\"}\0{\"sub\":\"b\"}";
    char t[256], *p;
    b64url(hs256_hdr, strlen(hs256_hdr), t);
    strcat(t, ".");
    b64url(raw, sizeof raw - 1, t + strlen(t));
    unsigned char md[32];
    unsigned int mdlen;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)t, strlen(t), md, &mdlen);
    p = t + strlen(t);
    *p++ = '.';
    b64url(md, 32, p);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "malformed token");
}

static void test_sub(void **state)
{
    (void)state;
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    const char *claims[] = {"{}", "{\"sub\":42}", "{\"sub\":null}", "{\"sub\":\"\"}",
                            "{\"sub\":{\"id\":\"a\"}}", "{\"Sub\":\"a\"}"};
    for (size_t i = 0; i < sizeof claims / sizeof *claims; i++) {
        char *t = make_token(hs256_hdr, claims[i], SECRET);
        assert_int_equal(verify(t, &o, &c, &why), 0);
        assert_null(c.sub);
        rl_jwt_claims_free(&c);
        free(t);
    }
    /* unicode escapes decode */
    char *t = make_token(hs256_hdr, "{\"sub\":\"\\u00e9l\\u00e8ve\"}", SECRET);
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_string_equal(c.sub, "\xc3\xa9l\xc3\xa8ve");
    rl_jwt_claims_free(&c);
    free(t);
    /* a duplicated claim is ambiguous */
    expect_fail(hs256_hdr, "{\"sub\":\"alice\",\"sub\":\"admin\"}", "malformed token");
}

static void test_meta_scope(void **state)
{
    (void)state;
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    char *t = make_token(hs256_hdr,
                         "{\"sub\":\"alice\","
                         "\"meta\":{ \"role\" : \"admin\", \"n\":[1,2,{\"x\":null}]},"
                         "\"scope\":\"chat:read chat:write\"}",
                         SECRET);
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_string_equal(c.sub, "alice");
    assert_string_equal(c.meta_json, "{\"role\":\"admin\",\"n\":[1,2,{\"x\":null}]}");
    assert_string_equal(c.scope, "chat:read chat:write");
    rl_jwt_claims_free(&c);
    free(t);

    /* meta that is not an object, scope that is not a string: absent */
    t = make_token(hs256_hdr, "{\"sub\":\"a\",\"meta\":[1],\"scope\":[\"x\"]}", SECRET);
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_null(c.meta_json);
    assert_null(c.scope);
    rl_jwt_claims_free(&c);
    free(t);

    t = make_token(hs256_hdr, "{\"meta\":{},\"scope\":\"\"}", SECRET);
    assert_int_equal(verify(t, &o, &c, &why), 0);
    assert_null(c.sub);
    assert_string_equal(c.meta_json, "{}");
    assert_string_equal(c.scope, "");
    rl_jwt_claims_free(&c);
    free(t);
}

static void test_iss_aud(void **state)
{
    (void)state;
    rl_jwt_opts o = opts();
    o.issuer = "https://issuer.example";
    o.audience = "relay";
    expect_ok_o("{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":\"relay\"}", &o);
    expect_ok_o("{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":[\"x\",\"relay\"]}", &o);
    expect_fail_o(hs256_hdr, "{\"sub\":\"a\",\"aud\":\"relay\"}", &o, "issuer mismatch");
    expect_fail_o(hs256_hdr, "{\"sub\":\"a\",\"iss\":\"https://evil\",\"aud\":\"relay\"}", &o,
                  "issuer mismatch");
    expect_fail_o(hs256_hdr,
                  "{\"sub\":\"a\",\"iss\":[\"https://issuer.example\"],\"aud\":\"relay\"}", &o,
                  "issuer mismatch");
    expect_fail_o(hs256_hdr, "{\"sub\":\"a\",\"iss\":\"https://issuer.example\"}", &o,
                  "audience mismatch");
    expect_fail_o(hs256_hdr, "{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":\"other\"}",
                  &o, "audience mismatch");
    expect_fail_o(hs256_hdr, "{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":[]}", &o,
                  "audience mismatch");
    expect_fail_o(hs256_hdr,
                  "{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":[[\"relay\"],1]}", &o,
                  "audience mismatch");
    expect_fail_o(hs256_hdr,
                  "{\"sub\":\"a\",\"iss\":\"https://issuer.example\",\"aud\":\"relayx\"}", &o,
                  "audience mismatch");
    /* not configured: not checked */
    o = opts();
    expect_ok_o("{\"sub\":\"a\",\"iss\":\"whoever\",\"aud\":42}", &o);
    expect_ok_o("{\"sub\":\"a\"}", &o);
}

static void test_truncated_prefixes(void **state)
{
    (void)state;
    char claims[256];
    snprintf(claims, sizeof claims,
             "{\"sub\":\"alice\",\"exp\":%d,\"meta\":{\"a\":1},\"scope\":\"s\"}", NOW + 60);
    char *good = make_token(hs256_hdr, claims, SECRET);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    size_t n = strlen(good);
    assert_int_equal(verify(good, &o, &c, &why), 0);
    rl_jwt_claims_free(&c);
    for (size_t i = 0; i < n; i++) {
        char *t = strndup(good, i);
        assert_true(verify(t, &o, &c, &why) < 0);
        free(t);
        /* and every suffix missing its head */
        assert_true(verify(good + i + 1, &o, &c, &why) < 0);
    }
    free(good);
}

static void test_oversized(void **state)
{
    (void)state;
    size_t n = 20000;
    char *claims = malloc(n + 64);
    strcpy(claims, "{\"sub\":\"alice\",\"pad\":\"");
    size_t k = strlen(claims);
    memset(claims + k, 'x', n);
    strcpy(claims + k + n, "\"}");
    char *t = make_token(hs256_hdr, claims, SECRET);
    rl_jwt_opts o = opts();
    rl_jwt_claims c;
    const char *why;
    assert_true(verify(t, &o, &c, &why) < 0);
    assert_string_equal(why, "token too large");
    free(t);
    assert_null(rl_jwt_sign_hs256(claims, SECRET, sizeof SECRET - 1));
    /* just under the bound still verifies */
    claims[k + 5000] = '\0';
    strcat(claims, "\"}");
    t = make_token(hs256_hdr, claims, SECRET);
    assert_true(strlen(t) < 8192);
    assert_int_equal(verify(t, &o, &c, &why), 0);
    rl_jwt_claims_free(&c);
    free(t);
    free(claims);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_sign_roundtrip),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_nbf_future),
        cmocka_unit_test(test_leeway),
        cmocka_unit_test(test_bad_time_claims),
        cmocka_unit_test(test_alg),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_unsigned),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_garbage_base64),
        cmocka_unit_test(test_nul_in_payload),
        cmocka_unit_test(test_sub),
        cmocka_unit_test(test_meta_scope),
        cmocka_unit_test(test_iss_aud),
        cmocka_unit_test(test_truncated_prefixes),
        cmocka_unit_test(test_oversized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
