/* libFuzzer target for rl_jwt: verify arbitrary tokens, and round-trip fuzzer-chosen claims. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz.h"
#include "rl_jwt.h"

/* The seeds in corpus/fuzz_jwt/ are signed with this secret (see README.md). */
#define FUZZ_SECRET "fuzz-secret-0123456789"
#define FUZZ_NOW INT64_C(1700000000)
#define FUZZ_MAX_TOKEN 8192 /* rl_jwt.c's RL_JWT_MAX_TOKEN */

static const rl_jwt_opts plain = {FUZZ_SECRET, sizeof FUZZ_SECRET - 1, NULL, NULL, 30};
static const rl_jwt_opts strict = {FUZZ_SECRET, sizeof FUZZ_SECRET - 1, "relay-test", "relay", 30};

/* Checks the contract of one rl_jwt_verify call and frees what it returned. */
static int verify(const char *token, const rl_jwt_opts *o, const char **why)
{
    rl_jwt_claims c;
    *why = NULL;
    int rc = rl_jwt_verify(token, o, FUZZ_NOW, &c, why);
    if (rc < 0) {
        FUZZ_CHECK(*why != NULL);
        FUZZ_CHECK(!c.sub && !c.meta_json && !c.scope);
    } else {
        FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(!c.sub || c.sub[0]); /* an empty sub reads as missing */
        if (c.meta_json) {
            cJSON *m = cJSON_Parse(c.meta_json);
            FUZZ_CHECK(cJSON_IsObject(m));
            cJSON_Delete(m);
        }
    }
    rl_jwt_claims_free(&c);
    FUZZ_CHECK(!c.sub && !c.meta_json && !c.scope);
    return rc;
}

/* 1 when claims is one JSON object with none of the members rl_jwt_verify interprets, so a
   token carrying it must verify. */
static int claims_neutral(const char *claims)
{
    static const char *const keys[] = {"exp", "nbf", "iss", "aud", "sub", "meta", "scope"};
    cJSON *j = cJSON_ParseWithOpts(claims, NULL, 1);
    int ok = cJSON_IsObject(j);
    for (const cJSON *m = ok ? j->child : NULL; m && ok; m = m->next)
        for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
            if (m->string && strcmp(m->string, keys[i]) == 0)
                ok = 0;
    cJSON_Delete(j);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    const char *why;

    /* 1. The input as a token. */
    verify(s, &plain, &why);
    verify(s, &strict, &why);

    /* 2. The input as claims: what rl_jwt_sign_hs256 makes must never fail on its signature or
       header, whatever the claims say. */
    char *tok = rl_jwt_sign_hs256(s, FUZZ_SECRET, sizeof FUZZ_SECRET - 1);
    if (tok) {
        size_t tlen = strlen(tok);
        int rc = verify(tok, &plain, &why);
        if (tlen > FUZZ_MAX_TOKEN) {
            FUZZ_CHECK(rc == -E2BIG);
        } else {
            FUZZ_CHECK(strcmp(why ? why : "", "bad signature") != 0);
            FUZZ_CHECK(strcmp(why ? why : "", "unsupported alg") != 0);
            if (claims_neutral(s))
                FUZZ_CHECK(rc == 0);
            if (rc == 0) {
                cJSON *j = cJSON_ParseWithOpts(s, NULL, 1);
                FUZZ_CHECK(cJSON_IsObject(j));
                cJSON_Delete(j);
            }
            rc = verify(tok, &strict, &why);
            if (rc == 0) { /* then iss and aud were there and matched */
                cJSON *j = cJSON_ParseWithOpts(s, NULL, 1);
                const cJSON *iss = cJSON_GetObjectItemCaseSensitive(j, "iss");
                FUZZ_CHECK(cJSON_IsString(iss) && strcmp(iss->valuestring, "relay-test") == 0);
                FUZZ_CHECK(cJSON_GetObjectItemCaseSensitive(j, "aud") != NULL);
                cJSON_Delete(j);
            }
        }
        free(tok);
    } else {
        FUZZ_CHECK(strlen(s) > FUZZ_MAX_TOKEN); /* the only reason left: no OOM here */
    }
    free(s);
    return 0;
}
