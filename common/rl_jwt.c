/* HS256 JSON Web Token verification and signing: strict base64url, cJSON claims, OpenSSL HMAC. */
#include "rl_jwt.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "rl_json.h"

/* Bounds on what a peer controls. A token travels in a header, a query string or a cookie; 8 KiB
   is far above any sane token and matches the handshake header budget. */
#define RL_JWT_MAX_TOKEN 8192
#define RL_JWT_SIG_LEN 32 /* SHA-256 output */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url (RFC 7515 section 2) from (in, len) into out, which must hold
   len * 3 / 4 + 1 bytes; out is NUL-terminated. Strict: no '=', no whitespace, no characters
   outside the URL-safe alphabet, no length of 1 mod 4, and the unused low bits of the last
   character must be zero, so each byte string has exactly one accepted encoding (no signature
   malleability). Returns the decoded length, or -EINVAL. */
static long b64url_decode(const char *in, size_t len, unsigned char *out)
{
    if (len % 4 == 1)
        return -EINVAL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)in[i]);
        if (v < 0)
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) /* non-canonical trailing bits */
        return -EINVAL;
    out[o] = '\0';
    return (long)o;
}

/* Encodes (in, len) as unpadded base64url into out (room for 4 * ceil(len / 3) + 1); returns the
   length written, out is NUL-terminated. */
static size_t b64url_encode(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
        out[o++] = b64url_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64url_alphabet[(v >> 18) & 63];
        out[o++] = b64url_alphabet[(v >> 12) & 63];
        out[o++] = b64url_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

/* Decodes one segment and parses it as a JSON object. The decoded text must not contain NUL and
   nothing but whitespace may follow the value. Returns NULL if any of that fails. */
static cJSON *segment_json(const char *seg, size_t len)
{
    unsigned char *buf = malloc(len * 3 / 4 + 1);
    if (!buf)
        return NULL;
    cJSON *j = NULL;
    long n = b64url_decode(seg, len, buf);
    if (n > 0 && strlen((char *)buf) == (size_t)n) {
        j = rl_json_parse((const char *)buf, (size_t)n); /* strict: no \u escape cut short */
        if (j && !cJSON_IsObject(j)) {
            cJSON_Delete(j);
            j = NULL;
        }
    }
    free(buf);
    return j;
}

/* The member named key (case-sensitive), NULL when absent. A key given twice makes the object
   ambiguous (parsers disagree on which one wins), so it is reported through *dup. */
static cJSON *member(const cJSON *obj, const char *key, int *dup)
{
    cJSON *found = NULL;
    for (cJSON *c = obj->child; c; c = c->next) {
        if (c->string && strcmp(c->string, key) == 0) {
            if (found)
                *dup = 1;
            else
                found = c;
        }
    }
    return found;
}

static int hmac_sha256(const char *key, size_t keylen, const char *data, size_t len,
                       unsigned char md[RL_JWT_SIG_LEN])
{
    unsigned int mdlen = 0;
    if (keylen > INT_MAX)
        return -EINVAL;
    if (!HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)data, len, md, &mdlen) ||
        mdlen != RL_JWT_SIG_LEN)
        return -EIO;
    return 0;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Is the configured audience aud (a string, or an array holding it among strings)? */
static int audience_ok(const cJSON *aud, const char *want)
{
    if (cJSON_IsString(aud))
        return strcmp(aud->valuestring, want) == 0;
    if (!cJSON_IsArray(aud))
        return 0;
    for (const cJSON *c = aud->child; c; c = c->next)
        if (cJSON_IsString(c) && strcmp(c->valuestring, want) == 0)
            return 1;
    return 0;
}

/* A time claim: absent is fine (*present = 0), present must be a finite number. */
static int time_claim(const cJSON *claims, const char *key, double *v, int *present, int *dup)
{
    const cJSON *c = member(claims, key, dup);
    *present = 0;
    if (!c)
        return 0;
    if (!cJSON_IsNumber(c) || !isfinite(c->valuedouble))
        return -EINVAL;
    *v = c->valuedouble;
    *present = 1;
    return 0;
}

/* The check order is: shape, header (alg), signature, then claims. Claims are only interpreted
   once the signature holds, so an attacker learns nothing from claim errors without the key. */
int rl_jwt_verify(const char *token, const rl_jwt_opts *o, int64_t now, rl_jwt_claims *out,
                  const char **why)
{
    const char *dummy;
    cJSON *hdr = NULL, *claims = NULL;
    int rc;
    int dup = 0;

    if (!why)
        why = &dummy;
    *why = NULL;
    memset(out, 0, sizeof *out);

    if (!o || !o->secret || o->secret_len == 0) {
        *why = "no secret configured";
        return -EINVAL;
    }
    if (!token) {
        *why = "malformed token";
        return -EINVAL;
    }
    size_t len = strnlen(token, RL_JWT_MAX_TOKEN + 1);
    if (len > RL_JWT_MAX_TOKEN) {
        *why = "token too large";
        return -E2BIG;
    }

    /* exactly three segments: header.payload.signature */
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) || d1 == token ||
        d2 == d1 + 1) {
        *why = "malformed token";
        return -EINVAL;
    }
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
    const char *sig = d2 + 1;
    size_t slen = len - (size_t)(sig - token);

    if (!(hdr = segment_json(token, hlen))) {
        *why = "malformed token";
        rc = -EINVAL;
        goto fail;
    }
    const cJSON *alg = member(hdr, "alg", &dup);
    if (dup || member(hdr, "crit", &dup)) { /* no extension is understood, so any crit fails */
        *why = "malformed token";
        rc = -EINVAL;
        goto fail;
    }
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "HS256") != 0) {
        *why = "unsupported alg";
        rc = -ENOTSUP;
        goto fail;
    }

    unsigned char given[RL_JWT_SIG_LEN + 3], want[RL_JWT_SIG_LEN];
    /* 43 characters encode 32 bytes; anything else cannot be an HS256 signature */
    if (slen != (RL_JWT_SIG_LEN * 4 + 2) / 3 || b64url_decode(sig, slen, given) != RL_JWT_SIG_LEN) {
        *why = "bad signature";
        rc = -EPERM;
        goto fail;
    }
    if ((rc = hmac_sha256(o->secret, o->secret_len, token, (size_t)(d2 - token), want)) < 0) {
        *why = "bad signature";
        goto fail;
    }
    if (CRYPTO_memcmp(given, want, RL_JWT_SIG_LEN) != 0) {
        *why = "bad signature";
        rc = -EPERM;
        goto fail;
    }

    if (!(claims = segment_json(d1 + 1, plen))) {
        *why = "malformed token";
        rc = -EINVAL;
        goto fail;
    }
    double exp = 0, nbf = 0;
    int has_exp, has_nbf;
    if (time_claim(claims, "exp", &exp, &has_exp, &dup) < 0 ||
        time_claim(claims, "nbf", &nbf, &has_nbf, &dup) < 0) {
        *why = "malformed token";
        rc = -EINVAL;
        goto fail;
    }
    const cJSON *iss = member(claims, "iss", &dup);
    const cJSON *aud = member(claims, "aud", &dup);
    const cJSON *sub = member(claims, "sub", &dup);
    const cJSON *meta = member(claims, "meta", &dup);
    const cJSON *scope = member(claims, "scope", &dup);
    if (dup) {
        *why = "malformed token";
        rc = -EINVAL;
        goto fail;
    }
    double leeway = o->leeway_s > 0 ? (double)o->leeway_s : 0;
    if (has_exp && (double)now >= exp + leeway) { /* RFC 7519: invalid "on or after" exp */
        *why = "token expired";
        rc = -EKEYEXPIRED;
        goto fail;
    }
    if (has_nbf && (double)now + leeway < nbf) {
        *why = "token not yet valid";
        rc = -EKEYEXPIRED;
        goto fail;
    }
    if (o->issuer && !(cJSON_IsString(iss) && strcmp(iss->valuestring, o->issuer) == 0)) {
        *why = "issuer mismatch";
        rc = -EACCES;
        goto fail;
    }
    if (o->audience && !(aud && audience_ok(aud, o->audience))) {
        *why = "audience mismatch";
        rc = -EACCES;
        goto fail;
    }

    /* An empty sub names nobody: the caller sees it as missing, like a non-string one. */
    if (cJSON_IsString(sub) && sub->valuestring[0] && !(out->sub = dup_str(sub->valuestring)))
        goto oom;
    if (cJSON_IsObject(meta)) {
        char *txt = cJSON_PrintUnformatted(meta);
        if (!txt)
            goto oom;
        out->meta_json = dup_str(txt); /* out's fields are plain malloc, whatever cJSON's hooks */
        cJSON_free(txt);
        if (!out->meta_json)
            goto oom;
    }
    if (cJSON_IsString(scope) && !(out->scope = dup_str(scope->valuestring)))
        goto oom;

    cJSON_Delete(hdr);
    cJSON_Delete(claims);
    return 0;

oom:
    *why = "out of memory";
    rc = -ENOMEM;
fail:
    rl_jwt_claims_free(out);
    cJSON_Delete(hdr);
    cJSON_Delete(claims);
    return rc;
}

void rl_jwt_claims_free(rl_jwt_claims *c)
{
    if (!c)
        return;
    free(c->sub);
    free(c->meta_json);
    free(c->scope);
    memset(c, 0, sizeof *c);
}

char *rl_jwt_sign_hs256(const char *claims_json, const char *secret, size_t secret_len)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    if (!claims_json || !secret)
        return NULL;
    size_t clen = strlen(claims_json);
    if (clen > RL_JWT_MAX_TOKEN)
        return NULL;
    size_t cap = ((sizeof hdr - 1 + 2) / 3) * 4 + 1 + ((clen + 2) / 3) * 4 + 1 +
                 ((RL_JWT_SIG_LEN + 2) / 3) * 4 + 1;
    char *tok = malloc(cap);
    if (!tok)
        return NULL;
    size_t n = b64url_encode((const unsigned char *)hdr, sizeof hdr - 1, tok);
    tok[n++] = '.';
    n += b64url_encode((const unsigned char *)claims_json, clen, tok + n);
    unsigned char md[RL_JWT_SIG_LEN];
    if (hmac_sha256(secret, secret_len, tok, n, md) < 0) {
        free(tok);
        return NULL;
    }
    tok[n++] = '.';
    b64url_encode(md, sizeof md, tok + n);
    return tok;
}
