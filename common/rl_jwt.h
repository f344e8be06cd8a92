/* HS256 JSON Web Token verification (OpenSSL HMAC). */
#ifndef RL_JWT_H
#define RL_JWT_H

#include <stddef.h>
#include <stdint.h>

typedef struct rl_jwt_opts {
    const char *secret;     /* HS256 key */
    size_t secret_len;
    const char *issuer;     /* required "iss" when non-NULL */
    const char *audience;   /* required in "aud" (string or array) when non-NULL */
    int64_t leeway_s;       /* allowed clock skew for exp/nbf, e.g. 30 */
} rl_jwt_opts;

typedef struct rl_jwt_claims {
    char *sub;        /* NULL when the token has no (string) sub; caller frees */
    char *meta_json;  /* "meta" object as JSON text, or NULL; caller frees */
    char *scope;      /* "scope" string, or NULL; caller frees */
} rl_jwt_claims;

/* Verifies token at time now (unix seconds). Returns 0 and fills out, or a negative value and
   points *why at a static reason ("malformed token", "bad signature", "token expired",
   "token not yet valid", "unsupported alg", "issuer mismatch", "audience mismatch"). */
int rl_jwt_verify(const char *token, const rl_jwt_opts *o, int64_t now, rl_jwt_claims *out,
                  const char **why);
void rl_jwt_claims_free(rl_jwt_claims *c);

/* Signs claims_json with HS256 into a malloc'd token (for tests and tools); NULL on error. */
char *rl_jwt_sign_hs256(const char *claims_json, const char *secret, size_t secret_len);

#endif
