/* libFuzzer target for rl_envelope: rl_env_scan against cJSON, its spans, prefixes and UTF-8. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fuzz.h"
#include "rl_envelope.h"

/* Containers open at once at the deepest point of v (a scalar: 0), as RL_ENV_MAX_DEPTH counts. */
static int depth_of(const cJSON *v)
{
    if (!cJSON_IsArray(v) && !cJSON_IsObject(v))
        return 0;
    int d = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        int k = depth_of(c);
        if (k > d)
            d = k;
    }
    return d + 1;
}

static int only_ws(const char *p, const char *end)
{
    for (; p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
            return 0;
    return 1;
}

/* cJSON's reading of all of buf[0..len), with only RFC 8259 whitespace after the value. */
static cJSON *cjson_whole(const char *buf, size_t len)
{
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (v && !only_ws(end, buf + len)) {
        cJSON_Delete(v);
        v = NULL;
    }
    return v;
}

static int count_key(const cJSON *obj, const char *key)
{
    int n = 0;
    for (const cJSON *c = obj->child; c; c = c->next)
        n += strcmp(c->string, key) == 0;
    return n;
}

/* The raw span is one JSON value (to the scanner and to cJSON) that prints as item does. */
static void check_raw(const char *buf, rl_env_span sp, const cJSON *item)
{
    FUZZ_CHECK(sp.len > 0);
    char *raw = malloc(sp.len);
    FUZZ_CHECK(raw != NULL);
    memcpy(raw, buf + sp.off, sp.len);
    FUZZ_CHECK(!only_ws(raw, raw + 1) && !only_ws(raw + sp.len - 1, raw + sp.len));
    rl_envelope sub;
    int r = rl_env_scan(raw, sp.len, &sub);
    /* At the top now, its own members "type" and "conn_pid" must not repeat. */
    FUZZ_CHECK(r == RL_ENV_OK || r == RL_ENV_NOT_OBJECT ||
               (r == RL_ENV_INVALID && strcmp(sub.why, "duplicate key") == 0));
    cJSON *v = cjson_whole(raw, sp.len);
    FUZZ_CHECK(v != NULL);
    char *a = cJSON_PrintUnformatted(v), *b = cJSON_PrintUnformatted(item);
    if (a && b) /* NULL only when out of memory */
        FUZZ_CHECK(strcmp(a, b) == 0);
    cJSON_free(a);
    cJSON_free(b);
    cJSON_Delete(v);
    free(raw);
}

/* A string span: between quotes, escaped as type_escaped says, unescaping to item's value. */
static void check_string(const char *buf, size_t size, const rl_envelope *env, const cJSON *item)
{
    rl_env_span sp = env->type;
    FUZZ_CHECK(sp.off >= 1 && sp.off + sp.len < size);
    FUZZ_CHECK(buf[sp.off - 1] == '"' && buf[sp.off + sp.len] == '"');
    FUZZ_CHECK(env->type_escaped == (memchr(buf + sp.off, '\\', sp.len) != NULL));
    FUZZ_CHECK(cJSON_IsString(item));
    size_t cap = sp.len + 1; /* unescaping never grows a string */
    char *out = malloc(cap);
    FUZZ_CHECK(out != NULL);
    ssize_t n = rl_env_unescape(buf + sp.off, sp.len, out, cap);
    FUZZ_CHECK(n >= 0 && (size_t)n <= sp.len);
    FUZZ_CHECK(strlen(item->valuestring) == (size_t)n && memcmp(out, item->valuestring, (size_t)n) == 0);
    FUZZ_CHECK(rl_env_unescape(buf + sp.off, sp.len, out, (size_t)n) == -1);
    free(out);
}

/* Something cJSON accepts and the scanner refuses: only for the documented stricter rules, or
   where cJSON is laxer than RFC 8259 (any byte <= 0x20 as whitespace, a UTF-8 BOM, leading
   zeros and "1.", non-hex digits in \u read as 0). */
static void check_stricter(const char *buf, size_t size, const rl_envelope *env, const cJSON *v)
{
    const char *w = env->why;
    size_t at = env->err_off;
    FUZZ_CHECK(at < size);
    if (strcmp(w, "depth") == 0)
        FUZZ_CHECK(depth_of(v) > RL_ENV_MAX_DEPTH);
    else if (strcmp(w, "duplicate key") == 0)
        FUZZ_CHECK(cJSON_IsObject(v) && (count_key(v, "type") > 1 || count_key(v, "conn_pid") > 1));
    else if (strcmp(w, "\\u0000 in string") == 0)
        FUZZ_CHECK(size - at >= 6 && memcmp(buf + at, "\\u0000", 6) == 0);
    else if (strcmp(w, "control character in string") == 0)
        FUZZ_CHECK((unsigned char)buf[at] < 0x20);
    else if (strcmp(w, "bad escape") == 0)
        FUZZ_CHECK(size - at >= 2 && buf[at] == '\\' && buf[at + 1] == 'u');
    else if (strcmp(w, "unexpected byte") == 0)
        FUZZ_CHECK((unsigned char)buf[at] < 0x20 ||
                   (at == 0 && size >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0));
    else
        FUZZ_CHECK(strcmp(w, "bad number") == 0);
}

/* Proper prefixes of a valid frame are incomplete, or valid values themselves; each is scanned
   from an exact-size copy so that ASan sees a read past len. */
static void check_prefix(const char *buf, size_t k)
{
    char *p = malloc(k ? k : 1);
    FUZZ_CHECK(p != NULL);
    memcpy(p, buf, k);
    rl_envelope env;
    int r = rl_env_scan(p, k, &env);
    FUZZ_CHECK(r == RL_ENV_INCOMPLETE || r == RL_ENV_OK || r == RL_ENV_NOT_OBJECT);
    free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy (no NUL after it), so reading past len is an ASan error, at least in
       the project's code; cJSON itself is the system library and not instrumented. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);

    rl_envelope env;
    int r = rl_env_scan(buf, size, &env);
    FUZZ_CHECK(r == RL_ENV_OK || r == RL_ENV_NOT_OBJECT || r == RL_ENV_INCOMPLETE ||
               r == RL_ENV_INVALID || r == RL_ENV_BAD_UTF8);
    FUZZ_CHECK((r < 0) == (env.why != NULL));
    FUZZ_CHECK(env.err_off <= size);

    /* UTF-8 is decided over the whole frame whatever else went wrong. */
    int utf8 = rl_env_utf8_valid(buf, size);
    if (r == RL_ENV_BAD_UTF8)
        FUZZ_CHECK(!utf8 && env.err_off < size);
    else
        FUZZ_CHECK(utf8 == !env.utf8_cut);
    if (env.utf8_cut)
        FUZZ_CHECK(r == RL_ENV_INCOMPLETE || r == RL_ENV_INVALID);

    cJSON *v = cjson_whole(buf, size);
    if (r == RL_ENV_OK || r == RL_ENV_NOT_OBJECT) {
        FUZZ_CHECK(v != NULL);
        FUZZ_CHECK((r == RL_ENV_OK) == cJSON_IsObject(v));
        FUZZ_CHECK(depth_of(v) <= RL_ENV_MAX_DEPTH);
        if (r == RL_ENV_OK) {
            FUZZ_CHECK(count_key(v, "type") <= 1 && count_key(v, "conn_pid") <= 1);
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
            FUZZ_CHECK(env.has_type == (t != NULL));
            if (t && env.type_is_string)
                check_string(buf, size, &env, t);
            else if (t)
                check_raw(buf, env.type, t);
            /* cJSON finds the first member of a name, as the scanner reports it. */
            const cJSON *rid = cJSON_GetObjectItemCaseSensitive(v, "request_id");
            FUZZ_CHECK(env.has_request_id == (rid != NULL));
            if (rid)
                check_raw(buf, env.request_id, rid);
        }
        FUZZ_CHECK(env.type.off + env.type.len <= size);
        FUZZ_CHECK(env.request_id.off + env.request_id.len <= size);
        if (!env.has_type)
            FUZZ_CHECK(env.type.off == 0 && env.type.len == 0 && !env.type_is_string);
        if (!env.has_request_id)
            FUZZ_CHECK(env.request_id.off == 0 && env.request_id.len == 0);

        if (size <= 256) {
            for (size_t k = 0; k < size; k++)
                check_prefix(buf, k);
        } else {
            for (size_t i = 1; i < 16; i++)
                check_prefix(buf, size * i / 16);
            check_prefix(buf, size - 1);
        }
    } else {
        FUZZ_CHECK(!env.has_type && !env.has_request_id);
    }
    if (v) {
        /* strtod ends a number at a trailing "1.": a prefix of "1.5" to the scanner. */
        FUZZ_CHECK(r != RL_ENV_INCOMPLETE || buf[size - 1] == '.');
        if (r == RL_ENV_INVALID)
            check_stricter(buf, size, &env, v);
    }
    cJSON_Delete(v);
    free(buf);
    return 0;
}
