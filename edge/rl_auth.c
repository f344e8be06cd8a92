/* The handshake's checks: path, WebSocket version and key, origin and identity (JWT from
 * header, query or cookie, or the insecure ?user_id=). Refusals are answered with an HTTP status
 * and a JSON body, before any upgrade. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "rl_edge.h"
#include "rl_envelope.h"
#include "rl_gateway.h"
#include "rl_jwt.h"
#include "rl_log.h"
#include "rl_metrics.h"

int rl_gateway_cookie_find(const char *hdr, size_t len, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name), i = 0;
    while (i < len) {
        while (i < len && (hdr[i] == ' ' || hdr[i] == '\t' || hdr[i] == ';'))
            i++;
        size_t ks = i;
        while (i < len && hdr[i] != '=' && hdr[i] != ';')
            i++;
        size_t ke = i;
        while (ke > ks && (hdr[ke - 1] == ' ' || hdr[ke - 1] == '\t'))
            ke--;
        if (i >= len || hdr[i] != '=')
            continue; /* a bare token without '=': skip it */
        i++;
        size_t vs = i;
        while (i < len && hdr[i] != ';')
            i++;
        size_t ve = i;
        while (vs < ve && (hdr[vs] == ' ' || hdr[vs] == '\t'))
            vs++;
        while (ve > vs && (hdr[ve - 1] == ' ' || hdr[ve - 1] == '\t'))
            ve--;
        if (ve - vs >= 2 && hdr[vs] == '"' && hdr[ve - 1] == '"') {
            vs++;
            ve--;
        }
        if (ke - ks == nlen && memcmp(hdr + ks, name, nlen) == 0) {
            if (ve - vs >= outlen)
                return -1;
            memcpy(out, hdr + vs, ve - vs);
            out[ve - vs] = '\0';
            return (int)(ve - vs);
        }
    }
    return -1;
}

/* A malloc'd copy of header h (all fragments), or NULL when absent or empty. */
static char *hdr_dup(struct lws *wsi, enum lws_token_indexes h)
{
    int n = lws_hdr_total_length(wsi, h);
    if (n <= 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    if (lws_hdr_copy(wsi, s, n + 1, h) < 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* A malloc'd copy of URL argument name (e.g. "user_id"), as lws decoded it; NULL if absent. */
static char *urlarg_dup(struct lws *wsi, const char *name)
{
    int total = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS);
    if (total <= 0)
        return NULL;
    char key[64];
    snprintf(key, sizeof key, "%s=", name);
    char *buf = malloc((size_t)total + 1);
    if (!buf)
        return NULL;
    const char *v = lws_get_urlarg_by_name(wsi, key, buf, total + 1);
    char *s = v ? strdup(v) : NULL;
    free(buf);
    return s;
}


/* 1 when the Sec-WebSocket-Key header is a 16-byte value in base64 (RFC 6455 4.1: 22
   characters of the alphabet and "=="). lws 4.1 takes any key under 128 bytes and hashes it. */
static int ws_key_ok(struct lws *wsi)
{
    char key[32];
    if (lws_hdr_total_length(wsi, WSI_TOKEN_KEY) != 24 ||
        lws_hdr_copy(wsi, key, sizeof key, WSI_TOKEN_KEY) != 24)
        return 0;
    for (int i = 0; i < 22; i++)
        if (!isalnum((unsigned char)key[i]) && key[i] != '+' && key[i] != '/')
            return 0;
    return key[22] == '=' && key[23] == '=';
}

/* 1 when Sec-WebSocket-Version is 13, the only version RFC 6455 defines; lws 4.1 upgrades a
   request without it, or with any other. */
static int ws_version_ok(struct lws *wsi)
{
    char v[8];
    return lws_hdr_total_length(wsi, WSI_TOKEN_VERSION) == 2 &&
           lws_hdr_copy(wsi, v, sizeof v, WSI_TOKEN_VERSION) == 2 && strcmp(v, "13") == 0;
}

static int origin_allowed(struct lws *wsi)
{
    if (!gw.cfg->norigins)
        return 1;
    char *origin = hdr_dup(wsi, WSI_TOKEN_ORIGIN);
    if (!origin)
        return 1; /* not a browser: Origin protects browsers from cross-site pages */
    int ok = 0;
    for (size_t i = 0; i < gw.cfg->norigins && !ok; i++)
        ok = strcmp(gw.cfg->allowed_origins[i], "*") == 0 ||
             strcasecmp(gw.cfg->allowed_origins[i], origin) == 0;
    free(origin);
    return ok;
}

/* The token from Authorization: Bearer, else ?x-auth-token=, else the x-auth-token cookie. */
static char *find_token(struct lws *wsi)
{
    char *auth = hdr_dup(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    if (auth) {
        const char *p = auth;
        while (*p == ' ')
            p++;
        if (strncasecmp(p, "Bearer ", 7) == 0) {
            p += 7;
            while (*p == ' ')
                p++;
            char *t = *p ? strdup(p) : NULL;
            free(auth);
            if (t) {
                for (size_t n = strlen(t); n && (t[n - 1] == ' ' || t[n - 1] == '\t');)
                    t[--n] = '\0';
                return t;
            }
        } else {
            free(auth);
        }
    }
    char *t = urlarg_dup(wsi, "x-auth-token");
    if (t && *t)
        return t;
    free(t);
    char *cookie = hdr_dup(wsi, WSI_TOKEN_HTTP_COOKIE);
    if (!cookie)
        return NULL;
    size_t clen = strlen(cookie);
    t = malloc(clen + 1);
    if (t && rl_gateway_cookie_find(cookie, clen, "x-auth-token", t, clen + 1) <= 0) {
        free(t);
        t = NULL;
    }
    free(cookie);
    return t;
}

/* 1 when s can name a user: it goes into JSON text frames, log lines and Redis keys, so it
   must be valid UTF-8 without control characters (C0, DEL, C1). */
static int user_id_ok(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
            return 0;
    return rl_env_utf8_valid(s, strlen(s));
}

/* Fills c's identity from the request (and *claims with the token's JSON claims when the
   connect hook needs them). Returns 0, or the HTTP status to refuse with (400: a malformed
   ?user_id=, 401: the token) and *why. */
static int authenticate(struct lws *wsi, rl_conn *c, const char **why, char **claims)
{
    const rl_config *cfg = gw.cfg;
    if (cfg->auth_mode == RL_AUTH_INSECURE) {
        c->user_id = urlarg_dup(wsi, "user_id");
        if (c->user_id && !c->user_id[0]) {
            free(c->user_id);
            c->user_id = NULL;
        }
        if (c->user_id && !user_id_ok(c->user_id)) {
            *why = "user_id must be UTF-8 without control characters";
            return 400;
        }
        return 0;
    }
    char *token = find_token(wsi);
    if (!token) {
        *why = "missing token";
        return 401;
    }
    if (!cfg->jwt_secret || !cfg->jwt_secret[0]) {
        free(token);
        *why = "no jwt secret configured";
        return 401;
    }
    rl_jwt_opts o = {
        .secret = cfg->jwt_secret,
        .secret_len = strlen(cfg->jwt_secret),
        .issuer = cfg->jwt_issuer,
        .audience = cfg->jwt_audience,
        .leeway_s = RL_GW_JWT_LEEWAY_S,
    };
    rl_jwt_claims cl = {0};
    const char *reason = NULL;
    int rc = rl_jwt_verify(token, &o, (int64_t)time(NULL), &cl, &reason);
    if (rc >= 0 && cfg->hook_url)
        *claims = rl_hook_claims(token);
    free(token);
    if (rc < 0) {
        *why = reason ? reason : "invalid token";
        return 401;
    }
    c->user_id = cl.sub; /* ownership moves to c (and is freed with it) */
    c->meta_json = cl.meta_json;
    c->scope = cl.scope;
    if (c->user_id && !user_id_ok(c->user_id)) {
        *why = "sub must be UTF-8 without control characters";
        return 401;
    }
    return 0;
}

/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE. Returns 0 to upgrade, 1 when a refusal was written, -1 to
   hang up. On 0 the new connection hangs on the wsi's opaque user data until ESTABLISHED (or
   WSI_DESTROY, if the handshake dies first). */
int rl_auth_handshake(struct lws *wsi, const char *upgrade)
{
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return -1;
    char *uri = hdr_dup(wsi, WSI_TOKEN_GET_URI);
    int path_ok = uri && strcmp(uri, gw.cfg->ws_path) == 0;
    free(uri);
    int status;
    const char *code, *why, *extra = NULL;
    if (!path_ok) {
        status = 404, code = "not_found", why = "No WebSocket endpoint at this path";
        goto refused;
    }
    if (!ws_version_ok(wsi)) {
        /* RFC 6455 4.4: the refusal names the versions the server speaks */
        status = 400, code = "bad_request", why = "Sec-WebSocket-Version must be 13";
        extra = "sec-websocket-version: 13\r\n";
        goto refused;
    }
    if (!ws_key_ok(wsi)) {
        status = 400, code = "bad_request", why = "Sec-WebSocket-Key must be 16 bytes in base64";
        goto refused;
    }
    if (!origin_allowed(wsi)) {
        status = 403, code = "forbidden", why = "Origin not allowed";
        goto refused;
    }
    rl_conn *c = calloc(1, sizeof *c);
    if (!c) {
        status = 503, code = "unavailable", why = "Out of memory";
        goto refused;
    }
    c->hs = 1;
    why = NULL;
    char *claims = NULL;
    status = authenticate(wsi, c, &why, &claims);
    if (status) {
        free(claims);
        rl_conn_free_mem(c);
        code = status == 400 ? "bad_request" : "unauthorized";
        goto refused;
    }
    if (gw.cfg->hook_url && c->user_id) { /* asked once the WebSocket is up (rl_hook.c) */
        size_t n = 0;
        c->rx = rl_hook_body(wsi, c->user_id, c->meta_json, c->scope, claims, &n);
        c->rxlen = (uint32_t)n;
        free(claims);
        claims = NULL;
        if (!c->rx) {
            rl_conn_free_mem(c);
            status = 503, code = "unavailable", why = "Out of memory";
            goto refused;
        }
    }
    free(claims); /* a token without sub: no hook (the client gets missing_user_id) */
    c->state = RL_CONN_UPGRADING;
    lws_set_opaque_user_data(wsi, c);
    return 0;
refused:;
    char peer[64] = "";
    lws_get_peer_simple(wsi, peer, sizeof peer);
    rl_log_field f[] = {{"status", NULL, status}, {"code", code, 0}, {"why", why ? why : "", 0},
                        {"peer", peer, 0}};
    rl_log_fields(RL_LOG_INFO, "gateway", f, sizeof f / sizeof f[0], "handshake refused");
    rl_metric_inc(RL_M_CONNS_REJECTED);
    int rc = rl_http_refuse_upgrade(wsi, (unsigned int)status, extra, code, why);
    return rc < 0 ? -1 : 1;
}

