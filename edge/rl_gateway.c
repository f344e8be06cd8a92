/* The gateway: HTTP and WebSocket on libwebsockets (on the node's libuv loop); one connection
 * process per WebSocket. */
#include "rl_gateway.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h> /* SSL_OP_* only: lws owns the SSL_CTX */
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

#include "rl_central.h"
#include "rl_console.h"
#include "rl_errors.h"
#include "rl_jwt.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_proc.h"

/* Bounds (all peer-controlled sizes are capped here or by rl_config). */
#define RL_GW_RX_BUFFER 512 /* lws rx chunk, per connection; messages are reassembled (stack.md §3) */
#define RL_GW_TX_PACKET 65536         /* largest single send(); the rest is buffered by lws */
#define RL_GW_HEADER_DATA 16384       /* request header bytes per handshake (JWT in the URL) */
#define RL_GW_FD_LIMIT_MAX (1u << 20) /* cap for fd_limit_per_thread */
#define RL_GW_PENDING_MAX 16          /* client frames kept until the hub is known */
#define RL_GW_WRITE_BATCH 32          /* queued frames written per WRITEABLE */
#define RL_GW_JWT_LEEWAY_S 30         /* clock skew allowed for exp/nbf */
#define RL_GW_CLOSE_REASON_MAX 123    /* RFC 6455: 125-byte close payload minus the code */
#define RL_GW_HTTP_HEADROOM 512       /* response header bytes */
#define RL_GW_CLOSE_FLUSH_S 5         /* a closing client gets this long to take queued frames */
#define RL_GW_LWS_ERR_MAX 256         /* the first lws error line kept during start */

/* ---------------------------------------------------------------------------------------------
 * Connection state */

typedef enum {
    RL_CONN_UPGRADING, /* handshake accepted; WebSocket not established yet; no process */
    RL_CONN_JOINING,   /* established; ws.join sent; client frames wait for the target */
    RL_CONN_ROUTED,    /* target known; client frames go to it */
    RL_CONN_CLOSING,   /* close requested: queued frames flushed (or dropped), then close frame */
    RL_CONN_CLOSED,    /* wsi gone; process exited; freed by the scheduler (ops->free) */
} rl_conn_state;

typedef struct out_frame {
    struct out_frame *next;
    size_t len;
    unsigned char buf[]; /* LWS_PRE headroom, then len bytes */
} out_frame;

typedef struct in_frame {
    struct in_frame *next;
    size_t len;
    char buf[];
} in_frame;

typedef struct rl_conn {
    rl_proc proc; /* first member: rl_proc * <-> rl_conn * */
    struct lws *wsi; /* NULL once lws closed it (or we detached) */
    rl_conn_state state;
    unsigned has_proc : 1, listed : 1, close_sent : 1;
    char *user_id, *meta_json, *scope; /* from the handshake; user_id may be NULL */
    char target[RL_PID_MAX];           /* the user hub, from ws.control */
    uint64_t epoch;                    /* its lease epoch (cluster mode; 0 standalone) */
    char *rx;                          /* message being reassembled */
    size_t rxlen;
    in_frame *pend_head, *pend_tail; /* client frames before the target is known */
    size_t npend;
    out_frame *out_head, *out_tail; /* frames waiting for WRITEABLE */
    size_t out_bytes;
    int close_code;
    char close_reason[RL_GW_CLOSE_REASON_MAX + 1];
    struct rl_conn *prev, *next; /* gw.conns: established connections */
} rl_conn;

static struct {
    struct lws_context *ctx;
    const rl_config *cfg;
    lws_retry_bo_t retry;
    int destroying; /* destroy #1 done (stop, or a failed start) */
    int (*ready)(void);
    int accepting;
    rl_conn *conns;
    size_t nconns;
    char central[RL_PID_MAX]; /* "" = rl_central_pid() */
    char *console;            /* the console page with the WS path filled in */
    size_t console_len;
    unsigned char *tx; /* frame scratch: LWS_PRE headroom + frame, reused for every frame */
    size_t txcap;
    int starting;                      /* inside rl_gateway_start: keep the first lws error */
    char lws_err[RL_GW_LWS_ERR_MAX];   /* that error ("" = none), for start's own message */
} gw = {.accepting = 1};

static const char *central_pid(void) { return gw.central[0] ? gw.central : rl_central_pid(); }

/* ---------------------------------------------------------------------------------------------
 * Small helpers */

static int tx_reserve(size_t len)
{
    if (LWS_PRE + len <= gw.txcap)
        return 0;
    size_t ncap = gw.txcap ? gw.txcap : 4096;
    while (ncap < LWS_PRE + len)
        ncap *= 2;
    unsigned char *n = realloc(gw.tx, ncap);
    if (!n)
        return -ENOMEM;
    gw.tx = n;
    gw.txcap = ncap;
    return 0;
}

/* Appends s as a JSON string literal at *p (the caller reserved 6 * len + 2 bytes). */
static char *put_json_string(char *p, const char *s)
{
    *p++ = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = (char)c;
        } else if (c < 0x20) {
            p += sprintf(p, "\\u%04x", c);
        } else {
            *p++ = (char)c;
        }
    }
    *p++ = '"';
    return p;
}

/* The raw JSON of the "request_id" member of a client frame, malloc'd; NULL if none. */
static char *request_id_of(const char *frame, size_t len)
{
    cJSON *o = cJSON_ParseWithLength(frame, len);
    if (!o)
        return NULL;
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(o, "request_id");
    char *s = (cJSON_IsObject(o) && rid) ? cJSON_PrintUnformatted(rid) : NULL;
    cJSON_Delete(o);
    return s;
}

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

/* ---------------------------------------------------------------------------------------------
 * HTTP */

/* Writes a whole response (headers and body in one write; lws buffers what the socket does not
   take and defers transaction completion until it is sent). Returns 0 or -1. */
static int http_reply(struct lws *wsi, unsigned int status, const char *ctype, const char *body,
                      size_t len)
{
    size_t cap = LWS_PRE + RL_GW_HTTP_HEADROOM + len;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + cap - len;
    static const char nocache[] = "no-store";
    if (lws_add_http_common_headers(wsi, status, ctype, len, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                     (const unsigned char *)nocache, (int)sizeof nocache - 1, &p,
                                     end) ||
        lws_finalize_http_header(wsi, &p, end)) {
        free(buf);
        return -1;
    }
    memcpy(p, body, len);
    p += len;
    int n = lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_FINAL);
    free(buf);
    return n < 0 ? -1 : 0;
}

static int http_json(struct lws *wsi, unsigned int status, const char *body)
{
    return http_reply(wsi, status, "application/json", body, strlen(body));
}

/* {"error":code,"message":why} with status. */
static int http_error(struct lws *wsi, unsigned int status, const char *code, const char *why)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", why);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return -1;
    int rc = http_json(wsi, status, s);
    free(s);
    return rc;
}

static int gw_ready(void) { return gw.accepting && (!gw.ready || gw.ready()); }

static int http_healthz(struct lws *wsi) { return http_json(wsi, 200, "{\"status\":\"ok\"}"); }

static int http_readyz(struct lws *wsi)
{
    if (gw_ready())
        return http_json(wsi, 200, "{\"status\":\"ready\"}");
    return http_json(wsi, 503, "{\"status\":\"not_ready\"}");
}

static int http_metrics(struct lws *wsi)
{
    size_t len = 0;
    char *s = rl_metrics_render(&len);
    if (!s)
        return http_error(wsi, 500, "internal", "cannot render metrics");
    int rc = http_reply(wsi, 200, "text/plain; version=0.0.4", s, len);
    free(s);
    return rc;
}

static int http_console(struct lws *wsi)
{
    if (!gw.console)
        return http_error(wsi, 404, "not_found", "No such path");
    return http_reply(wsi, 200, "text/html; charset=utf-8", gw.console, gw.console_len);
}

static const struct {
    const char *path;
    int (*fn)(struct lws *wsi);
} http_routes[] = {
    {"/healthz", http_healthz},
    {"/readyz", http_readyz},
    {"/metrics", http_metrics},
    {"/", http_console},
};

/* LWS_CALLBACK_HTTP: uri is the decoded path without the query. */
static int http_on_request(struct lws *wsi, const char *uri)
{
    int rc = -2;
    for (size_t i = 0; i < sizeof http_routes / sizeof http_routes[0]; i++)
        if (strcmp(uri, http_routes[i].path) == 0) {
            rc = http_routes[i].fn(wsi);
            break;
        }
    if (rc == -2) {
        if (strcmp(uri, gw.cfg->ws_path) == 0)
            rc = http_error(wsi, 400, "bad_request", "WebSocket upgrade required");
        else
            rc = http_error(wsi, 404, "not_found", "No such path");
    }
    if (rc < 0)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* ---------------------------------------------------------------------------------------------
 * Handshake: path, origin, identity. Refusals are answered with an HTTP status and a JSON body,
   before any upgrade. */

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

/* Fills c's identity from the request; returns 0, or -1 with *why set (401). */
static int authenticate(struct lws *wsi, rl_conn *c, const char **why)
{
    const rl_config *cfg = gw.cfg;
    if (cfg->auth_mode == RL_AUTH_INSECURE) {
        c->user_id = urlarg_dup(wsi, "user_id");
        if (c->user_id && !c->user_id[0]) {
            free(c->user_id);
            c->user_id = NULL;
        }
        return 0;
    }
    char *token = find_token(wsi);
    if (!token) {
        *why = "missing token";
        return -1;
    }
    if (!cfg->jwt_secret || !cfg->jwt_secret[0]) {
        free(token);
        *why = "no jwt secret configured";
        return -1;
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
    free(token);
    if (rc < 0) {
        *why = reason ? reason : "invalid token";
        return -1;
    }
    c->user_id = cl.sub; /* ownership moves to c */
    c->meta_json = cl.meta_json;
    c->scope = cl.scope;
    return 0;
}

static void conn_free_mem(rl_conn *c);

/* Refuses an upgrade with status and a JSON body {"error":code,"message":why}, then the
   connection closes. The response is written raw: at CONFIRM_UPGRADE lws has not recorded the
   request's HTTP version yet, so its header helpers would answer "HTTP/1.0", which strict
   WebSocket clients (python websockets) reject as an invalid response. */
static int handshake_refuse(struct lws *wsi, unsigned int status, const char *code,
                            const char *why)
{
    static const struct {
        unsigned int status;
        const char *text;
    } texts[] = {{401, "Unauthorized"}, {403, "Forbidden"}, {404, "Not Found"},
                 {503, "Service Unavailable"}};
    const char *text = "Error";
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i].status == status)
            text = texts[i].text;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", why);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!body)
        return -1;
    size_t blen = strlen(body), cap = LWS_PRE + RL_GW_HTTP_HEADROOM + blen;
    char *buf = malloc(cap);
    if (!buf) {
        free(body);
        return -1;
    }
    char *start = buf + LWS_PRE;
    int n = snprintf(start, RL_GW_HTTP_HEADROOM,
                     "HTTP/1.1 %u %s\r\ncontent-type: application/json\r\n"
                     "content-length: %zu\r\ncache-control: no-store\r\n"
                     "connection: close\r\n\r\n",
                     status, text, blen);
    memcpy(start + n, body, blen);
    int w = lws_write(wsi, (unsigned char *)start, (size_t)n + blen, LWS_WRITE_HTTP);
    free(buf);
    free(body);
    return w < 0 ? -1 : 0;
}

/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE. Returns 0 to upgrade, 1 when a refusal was written, -1 to
   hang up. On 0 the new connection hangs on the wsi's opaque user data until ESTABLISHED (or
   WSI_DESTROY, if the handshake dies first). */
static int handshake_check(struct lws *wsi, const char *upgrade)
{
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0)
        return -1;
    char *uri = hdr_dup(wsi, WSI_TOKEN_GET_URI);
    int path_ok = uri && strcmp(uri, gw.cfg->ws_path) == 0;
    free(uri);
    int rc;
    if (!path_ok) {
        rc = handshake_refuse(wsi, 404, "not_found", "No WebSocket endpoint at this path");
        goto refused;
    }
    if (!origin_allowed(wsi)) {
        rc = handshake_refuse(wsi, 403, "forbidden", "Origin not allowed");
        goto refused;
    }
    rl_conn *c = calloc(1, sizeof *c);
    if (!c) {
        rc = handshake_refuse(wsi, 503, "unavailable", "Out of memory");
        goto refused;
    }
    const char *why = NULL;
    if (authenticate(wsi, c, &why) < 0) {
        conn_free_mem(c);
        rl_debug("gateway", "handshake refused: %s", why);
        rc = handshake_refuse(wsi, 401, "unauthorized", why);
        goto refused;
    }
    c->state = RL_CONN_UPGRADING;
    lws_set_opaque_user_data(wsi, c);
    return 0;
refused:
    rl_metric_inc(RL_M_CONNS_REJECTED);
    return rc < 0 ? -1 : 1;
}

/* ---------------------------------------------------------------------------------------------
 * Connection: writing frames */

static void conn_close(rl_conn *c, int code, const char *reason, int flush);

static void conn_drop_queue(rl_conn *c)
{
    while (c->out_head) {
        out_frame *f = c->out_head;
        c->out_head = f->next;
        free(f);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
}

static int conn_writable_state(const rl_conn *c)
{
    return c->wsi && (c->state == RL_CONN_JOINING || c->state == RL_CONN_ROUTED);
}

/* The client does not read: close at once (queued frames are dropped with it). */
static void conn_slow_consumer(rl_conn *c)
{
    rl_warn("gateway", "%s: outbound queue over %zu bytes: closing", c->proc.pid,
            gw.cfg->max_outbound_bytes);
    rl_metric_error(RL_E_SLOW_CONSUMER);
    conn_drop_queue(c);
    conn_close(c, rl_err_close_code(RL_E_SLOW_CONSUMER), rl_err_name(RL_E_SLOW_CONSUMER), 0);
}

/* Sends the frame in gw.tx[LWS_PRE .. LWS_PRE + len): written at once when nothing is queued and
   the socket takes it (the hybrid write, stack.md §3), else queued for WRITEABLE. Returns 0;
   -ENOENT when the connection no longer takes frames; -EAGAIN when the queue is full (the
   connection is then closed as a slow consumer); -ENOMEM. */
static int conn_write_tx(rl_conn *c, size_t len)
{
    if (!conn_writable_state(c))
        return -ENOENT;
    if (!c->out_head && !lws_send_pipe_choked(c->wsi)) {
        if (lws_write(c->wsi, gw.tx + LWS_PRE, len, LWS_WRITE_TEXT) < 0) {
            c->state = RL_CONN_CLOSING;
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            return -ENOENT;
        }
        rl_metric_inc(RL_M_MSGS_OUT);
        return 0;
    }
    if (c->out_bytes + len > gw.cfg->max_outbound_bytes) {
        conn_slow_consumer(c);
        return -EAGAIN;
    }
    out_frame *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f)
        return -ENOMEM;
    f->next = NULL;
    f->len = len;
    memcpy(f->buf + LWS_PRE, gw.tx + LWS_PRE, len);
    if (c->out_tail)
        c->out_tail->next = f;
    else
        c->out_head = f;
    c->out_tail = f;
    c->out_bytes += len;
    lws_callback_on_writable(c->wsi);
    return 0;
}

static int conn_send_raw(rl_conn *c, const char *data, size_t len)
{
    if (tx_reserve(len) < 0)
        return -ENOMEM;
    memcpy(gw.tx + LWS_PRE, data, len);
    return conn_write_tx(c, len);
}

/* {"topic":T,"data":P}, P embedded as is (null when empty). */
static int conn_send_topic(rl_conn *c, const char *topic, const char *payload, size_t len)
{
    size_t tlen = strlen(topic);
    if (tx_reserve(24 + 6 * tlen + len) < 0)
        return -ENOMEM;
    char *start = (char *)gw.tx + LWS_PRE, *p = start;
    memcpy(p, "{\"topic\":", 9);
    p = put_json_string(p + 9, topic);
    memcpy(p, ",\"data\":", 8);
    p += 8;
    if (len) {
        memcpy(p, payload, len);
        p += len;
    } else {
        memcpy(p, "null", 4);
        p += 4;
    }
    *p++ = '}';
    return conn_write_tx(c, (size_t)(p - start));
}

/* Answers the client with an error frame; frame (may be NULL) supplies the request_id. */
static void conn_send_error(rl_conn *c, rl_err_code e, const char *msg, const char *frame,
                            size_t flen)
{
    char *rid = frame ? request_id_of(frame, flen) : NULL;
    char *data = rl_err_payload(e, msg, rid);
    rl_metric_error(e);
    if (!data || conn_send_topic(c, "error", data, strlen(data)) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    free(rid);
    free(data);
}

/* Starts lws's close handshake with our code and reason (close frame, then up to 5 s for the
 * client's answer).
 *
 * Why not the documented lws_close_reason() + return -1: the Debian lws 4.1.6 is a _DEBUG build,
 * and on the libuv backend its service loop closes a wsi twice ("close_and_handled uv repeat
 * test", core-net/service.c); the second call finds the polite close pending and kills the
 * socket, so the client never sees the close frame (it reports 1006). An async-kill timeout
 * with the reason PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE is the one public path that reaches
 * __lws_close_free_wsi once and without marking the socket unusable, so lws sends the close
 * frame we prepared. (Writing the close frame ourselves needs LWS_WRITE_CLOSE, which 4.1 keeps
 * private.) With output still buffered in lws (or a socket that never drains), lws flushes for
 * up to 5 s and then cuts the socket without a close frame. */
static void conn_send_close(rl_conn *c, struct lws *wsi)
{
    lws_close_reason(wsi, (enum lws_close_status)c->close_code, (unsigned char *)c->close_reason,
                     strlen(c->close_reason));
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE, LWS_TO_KILL_ASYNC);
    c->close_sent = 1;
}

/* Requests a close with code/reason. With flush, frames already queued go out first (for at
   most RL_GW_CLOSE_FLUSH_S, then the socket is cut); without, the close starts at once. Works
   from any context. The first close wins. */
static void conn_close(rl_conn *c, int code, const char *reason, int flush)
{
    if (!c->wsi || c->state == RL_CONN_CLOSING || c->state == RL_CONN_CLOSED)
        return;
    c->state = RL_CONN_CLOSING;
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
    if (!flush) {
        conn_drop_queue(c);
        conn_send_close(c, c->wsi);
        return;
    }
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, RL_GW_CLOSE_FLUSH_S);
    lws_callback_on_writable(c->wsi);
}

/* Answers with error e (its default message unless msg) and closes with e's close code and
   its name as the reason. */
static void conn_fail(rl_conn *c, rl_err_code e, const char *msg)
{
    conn_send_error(c, e, msg, NULL, 0);
    conn_close(c, rl_err_close_code(e), rl_err_name(e), 1);
}

/* ---------------------------------------------------------------------------------------------
 * Connection: client frames */

/* Sends to the user hub, tagged with its lease epoch. Returns 0 or rl_send's error. */
static int conn_send_target(const rl_conn *c, const char *topic, const char *data, size_t len)
{
    rl_msg *m = rl_msg_new(c->proc.pid, topic, data, len);
    if (!m)
        return -ENOMEM;
    m->epoch = c->epoch;
    int rc = rl_send_msg(c->target, m);
    if (rc < 0)
        rl_msg_free(m);
    return rc;
}

/* Asks the central hub to place the user again: the target is gone or unreachable. */
static void conn_rehome(const rl_conn *c)
{
    char buf[RL_PID_MAX * 2 + 64];
    int n = snprintf(buf, sizeof buf, "{\"client_pid\":\"%s\",\"hub_pid\":\"%s\"}",
                     c->proc.pid, c->target);
    if (rl_send(c->proc.pid, central_pid(), "ws.rehome", buf, (size_t)n) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
}

static void conn_forward(rl_conn *c, const char *data, size_t len)
{
    int rc = conn_send_target(c, "ws.message", data, len);
    if (rc == 0)
        return;
    if (rc == -EAGAIN || rc == -ENOMEM) {
        conn_send_error(c, RL_E_OVERLOADED, rc == -EAGAIN ? NULL : "Out of memory", data, len);
        return;
    }
    /* -ENOENT, -EHOSTUNREACH, -EINVAL: the hub is gone or unreachable. The connection stays:
       the central hub places the user again and sends a new ws.control and welcome. */
    rl_warn("gateway", "%s: hub %s unreachable (%d): re-homing", c->proc.pid, c->target, rc);
    conn_send_error(c, RL_E_PLUGIN_FAILED, "User hub unavailable, try again", data, len);
    conn_rehome(c);
}

/* ws.rehome {"hub_pid":H}: hub H handed the user over or is gone; when H is still this
   connection's hub, ask the central for the new one (a late notice from an old hub is ignored). */
static int conn_on_rehome(rl_conn *c, const rl_msg *m)
{
    cJSON *o = cJSON_ParseWithLength(m->payload, m->len);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "hub_pid");
    if (cJSON_IsString(h) && strcmp(h->valuestring, c->target) == 0)
        conn_rehome(c);
    cJSON_Delete(o);
    return 0;
}

static void conn_on_frame(rl_conn *c, const char *data, size_t len)
{
    rl_metric_inc(RL_M_MSGS_IN);
    switch (c->state) {
    case RL_CONN_ROUTED:
        conn_forward(c, data, len);
        break;
    case RL_CONN_JOINING: {
        if (c->npend >= RL_GW_PENDING_MAX) {
            conn_send_error(c, RL_E_OVERLOADED, "Connection not joined yet, message not accepted",
                            data, len);
            break;
        }
        in_frame *f = malloc(sizeof *f + len);
        if (!f) {
            conn_send_error(c, RL_E_OVERLOADED, "Out of memory", data, len);
            break;
        }
        f->next = NULL;
        f->len = len;
        memcpy(f->buf, data, len);
        if (c->pend_tail)
            c->pend_tail->next = f;
        else
            c->pend_head = f;
        c->pend_tail = f;
        c->npend++;
        break;
    }
    default:
        rl_metric_inc(RL_M_MSGS_DROPPED); /* closing: the client is told by the close */
        break;
    }
}

/* LWS_CALLBACK_RECEIVE: one chunk of at most RL_GW_RX_BUFFER bytes. Messages are reassembled
   up to max_message_bytes; a larger one is refused as soon as its announced length shows it,
   without buffering it. */
static void conn_on_receive(rl_conn *c, struct lws *wsi, const char *in, size_t len)
{
    if (c->state != RL_CONN_JOINING && c->state != RL_CONN_ROUTED)
        return;
    size_t remaining = lws_remaining_packet_payload(wsi);
    int final = lws_is_final_fragment(wsi);
    size_t max = gw.cfg->max_message_bytes;
    if (c->rxlen + len > max || remaining > max - c->rxlen - len) {
        rl_debug("gateway", "%s: message over %zu bytes", c->proc.pid, max);
        free(c->rx);
        c->rx = NULL;
        c->rxlen = 0;
        conn_fail(c, RL_E_MESSAGE_TOO_LARGE, NULL);
        return;
    }
    if (final && c->rxlen == 0) {
        conn_on_frame(c, in, len);
        return;
    }
    char *n = realloc(c->rx, c->rxlen + len + remaining + 1);
    if (!n) {
        conn_fail(c, RL_E_OVERLOADED, "Out of memory");
        return;
    }
    c->rx = n;
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (final) {
        char *msg = c->rx;
        size_t mlen = c->rxlen;
        c->rx = NULL;
        c->rxlen = 0;
        conn_on_frame(c, msg, mlen);
        free(msg);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Connection: messages from processes */

/* ws.control {"target_pid":H}: route to H and flush what the client sent meanwhile. */
static int conn_on_control(rl_conn *c, const rl_msg *m)
{
    cJSON *o = cJSON_ParseWithLength(m->payload, m->len);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "target_pid");
    if (!cJSON_IsString(t) || !t->valuestring[0] || strlen(t->valuestring) >= RL_PID_MAX) {
        rl_warn("gateway", "%s: ws.control without a valid target_pid", c->proc.pid);
        cJSON_Delete(o);
        return 0;
    }
    snprintf(c->target, sizeof c->target, "%s", t->valuestring);
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(o, "epoch");
    c->epoch = cJSON_IsNumber(ep) && ep->valuedouble > 0 ? (uint64_t)ep->valuedouble : 0;
    cJSON_Delete(o);
    if (c->state == RL_CONN_JOINING)
        c->state = RL_CONN_ROUTED;
    while (c->pend_head) {
        in_frame *f = c->pend_head;
        c->pend_head = f->next;
        c->npend--;
        if (c->state == RL_CONN_ROUTED)
            conn_forward(c, f->buf, f->len);
        else
            rl_metric_inc(RL_M_MSGS_DROPPED);
        free(f);
    }
    c->pend_tail = NULL;
    return 0;
}

/* Codes an endpoint may put in a close frame (RFC 6455 7.4; 1004-1006 and 1015 are reserved). */
static int close_code_sendable(double code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* ws.close: a JSON string (close 1000 with it as the reason) or {"code":N,"reason":"..."}. */
static int conn_on_close_msg(rl_conn *c, const rl_msg *m)
{
    cJSON *o = cJSON_ParseWithLength(m->payload, m->len);
    int code = 1000;
    const char *reason = "";
    if (cJSON_IsString(o)) {
        reason = o->valuestring;
    } else if (cJSON_IsObject(o)) {
        const cJSON *cd = cJSON_GetObjectItemCaseSensitive(o, "code");
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(o, "reason");
        if (cJSON_IsNumber(cd) && close_code_sendable(cd->valuedouble))
            code = (int)cd->valuedouble;
        if (cJSON_IsString(rs))
            reason = rs->valuestring;
    }
    conn_close(c, code, reason, 1);
    cJSON_Delete(o);
    return 0;
}

/* ws.message: a JSON string goes out decoded, anything else as the payload text itself. */
static int conn_on_message(rl_conn *c, const rl_msg *m)
{
    const char *p = m->payload;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    if (*p == '"') {
        cJSON *o = cJSON_ParseWithLength(m->payload, m->len);
        if (cJSON_IsString(o)) {
            int rc = conn_send_raw(c, o->valuestring, strlen(o->valuestring));
            cJSON_Delete(o);
            return rc;
        }
        cJSON_Delete(o);
    }
    return conn_send_raw(c, m->payload, m->len);
}

static const struct {
    const char *topic;
    int (*fn)(rl_conn *c, const rl_msg *m);
} conn_topics[] = {
    {"ws.control", conn_on_control},
    {"ws.close", conn_on_close_msg},
    {"ws.message", conn_on_message},
    {"ws.rehome", conn_on_rehome},
};

/* Handles m without taking it. Returns 0 or a negative errno (see rl_send). */
static int conn_dispatch(rl_conn *c, const rl_msg *m)
{
    if (!c->wsi || c->state == RL_CONN_CLOSING || c->state == RL_CONN_CLOSED)
        return -ENOENT;
    for (size_t i = 0; i < sizeof conn_topics / sizeof conn_topics[0]; i++)
        if (strcmp(m->topic, conn_topics[i].topic) == 0)
            return conn_topics[i].fn(c, m);
    return conn_send_topic(c, m->topic, m->payload, m->len);
}

/* rl_proc fast path: every message to a connection is handled at once, in the sender's turn. */
static int conn_deliver(rl_proc *p, rl_msg *m)
{
    int rc = conn_dispatch((rl_conn *)p, m);
    if (rc == 0)
        rl_msg_free(m);
    return rc;
}

/* Only reached if a message was ever queued in the mailbox (deliver normally takes them all). */
static void conn_handle(rl_proc *p, rl_msg *m)
{
    if (conn_dispatch((rl_conn *)p, m) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    rl_msg_free(m);
}

static void conn_cancel(rl_proc *p, uint64_t deadline_ms)
{
    (void)deadline_ms;
    conn_close((rl_conn *)p, 1001, "going away", 1);
}

static void conn_unlist(rl_conn *c)
{
    if (!c->listed)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        gw.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->listed = 0;
    gw.nconns--;
    rl_metric_dec(RL_M_CONNS_OPEN);
}

static void conn_free_mem(rl_conn *c)
{
    conn_drop_queue(c);
    while (c->pend_head) {
        in_frame *f = c->pend_head;
        c->pend_head = f->next;
        free(f);
    }
    free(c->rx);
    free(c->user_id);
    free(c->meta_json);
    free(c->scope);
    free(c);
}

/* ops->free: after rl_proc_exit, outside any lws callback. If lws still has the socket (the
   process was ended from outside, e.g. rl_node_close), detach and let lws kill it. */
static void conn_proc_free(rl_proc *p)
{
    rl_conn *c = (rl_conn *)p;
    if (c->wsi) {
        lws_set_opaque_user_data(c->wsi, NULL);
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        c->wsi = NULL;
    }
    conn_unlist(c);
    conn_free_mem(c);
}

static const rl_proc_ops conn_ops = {
    .kind = "conn",
    .letter = 'c',
    .handle = conn_handle,
    .deliver = conn_deliver,
    .cancel = conn_cancel,
    .free = conn_proc_free,
};

/* ---------------------------------------------------------------------------------------------
 * Connection: lifecycle */

static char *join_payload(const rl_conn *c)
{
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(o, "metadata");
    cJSON_AddStringToObject(o, "client_pid", c->proc.pid);
    if (c->user_id)
        cJSON_AddStringToObject(meta, "user_id", c->user_id);
    cJSON *um = c->meta_json ? cJSON_Parse(c->meta_json) : NULL;
    if (!cJSON_IsObject(um)) {
        cJSON_Delete(um);
        um = cJSON_CreateObject();
    }
    cJSON_AddItemToObject(meta, "user_metadata", um);
    if (c->scope)
        cJSON_AddStringToObject(meta, "scope", c->scope);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void conn_on_established(struct lws *wsi)
{
    rl_conn *c = lws_get_opaque_user_data(wsi);
    if (!c) { /* cannot happen: CONFIRM_UPGRADE attached it */
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    c->wsi = wsi;
    c->state = RL_CONN_JOINING;
    c->listed = 1;
    c->next = gw.conns;
    if (gw.conns)
        gw.conns->prev = c;
    gw.conns = c;
    gw.nconns++;
    rl_metric_inc(RL_M_CONNS_OPEN);
    if (!gw_ready()) {
        rl_metric_inc(RL_M_CONNS_REJECTED);
        conn_fail(c, RL_E_UNAVAILABLE, NULL);
        return;
    }
    if (rl_proc_start(&c->proc, &conn_ops, 0) < 0) {
        rl_metric_inc(RL_M_CONNS_REJECTED);
        conn_fail(c, RL_E_UNAVAILABLE, "Out of memory");
        return;
    }
    c->has_proc = 1;
    rl_metric_inc(RL_M_CONNS_ACCEPTED);
    char *join = join_payload(c);
    int rc = join ? rl_send(c->proc.pid, central_pid(), "ws.join", join, strlen(join)) : -ENOMEM;
    free(join);
    if (rc < 0) {
        rl_error("gateway", "%s: ws.join to the central hub failed (%d)", c->proc.pid, rc);
        conn_fail(c, RL_E_HUB_CREATION_FAILED, NULL);
        return;
    }
    rl_debug("gateway", "%s: open (user %s)", c->proc.pid, c->user_id ? c->user_id : "-");
}

/* LWS_CALLBACK_SERVER_WRITEABLE: drains the queue (bounded per wake-up), then a pending close. */
static int conn_on_writable(rl_conn *c, struct lws *wsi)
{
    for (int n = 0; c->out_head && n < RL_GW_WRITE_BATCH; n++) {
        if (n > 0 && lws_send_pipe_choked(wsi))
            break;
        out_frame *f = c->out_head;
        c->out_head = f->next;
        if (!c->out_head)
            c->out_tail = NULL;
        c->out_bytes -= f->len;
        int w = lws_write(wsi, f->buf + LWS_PRE, f->len, LWS_WRITE_TEXT);
        free(f);
        if (w < 0)
            return -1;
        rl_metric_inc(RL_M_MSGS_OUT);
    }
    if (c->state == RL_CONN_CLOSING && !c->close_sent && !c->out_head) {
        if (!lws_send_pipe_choked(wsi)) {
            conn_send_close(c, wsi);
            return 0;
        }
    }
    if (c->out_head || (c->state == RL_CONN_CLOSING && !c->close_sent))
        lws_callback_on_writable(wsi);
    return 0;
}

/* LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: the client starts the close (lws answers it; the
   answer to a close we started never gets here). Stop writing to it. */
static int conn_on_peer_close(rl_conn *c)
{
    if (c->state == RL_CONN_JOINING || c->state == RL_CONN_ROUTED)
        c->state = RL_CONN_CLOSING;
    c->close_sent = 1;
    return 0;
}

static void send_leave(const rl_conn *c)
{
    char buf[RL_PID_MAX * 2 + 64];
    int n;
    if (c->target[0]) {
        n = snprintf(buf, sizeof buf, "{\"client_pid\":\"%s\"}", c->proc.pid);
        if (conn_send_target(c, "ws.leave", buf, (size_t)n) < 0)
            rl_metric_inc(RL_M_MSGS_DROPPED);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "client_pid", c->proc.pid);
    if (c->user_id)
        cJSON_AddStringToObject(o, "user_id", c->user_id);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s || rl_send(c->proc.pid, central_pid(), "ws.leave", s, strlen(s)) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    free(s);
}

/* The WebSocket is gone (LWS_CALLBACK_CLOSED, or WSI_DESTROY without it). The process ends
   here; its memory is freed later by the scheduler, outside any lws callback. */
static void conn_gone(rl_conn *c, struct lws *wsi)
{
    lws_set_opaque_user_data(wsi, NULL);
    c->wsi = NULL;
    c->state = RL_CONN_CLOSED;
    conn_unlist(c);
    if (!c->has_proc) {
        conn_free_mem(c);
        return;
    }
    rl_debug("gateway", "%s: closed", c->proc.pid);
    send_leave(c);
    rl_proc_exit(&c->proc, NULL);
}

static void conn_on_closed(struct lws *wsi)
{
    rl_conn *c = lws_get_opaque_user_data(wsi);
    if (c)
        conn_gone(c, wsi);
}

/* LWS_CALLBACK_WSI_DESTROY: frees a connection whose handshake never completed. */
static void conn_on_wsi_destroy(struct lws *wsi)
{
    rl_conn *c = lws_get_opaque_user_data(wsi);
    if (c)
        conn_gone(c, wsi);
}

/* ---------------------------------------------------------------------------------------------
 * The lws protocol callback: a thin switch. */

static int gw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    (void)user;
    rl_conn *c;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return http_on_request(wsi, in ? (const char *)in : "");
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return handshake_check(wsi, (const char *)in);
    case LWS_CALLBACK_ESTABLISHED:
        conn_on_established(wsi);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if ((c = lws_get_opaque_user_data(wsi)))
            conn_on_receive(c, wsi, (const char *)in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if ((c = lws_get_opaque_user_data(wsi)))
            return conn_on_writable(c, wsi);
        return -1;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        if ((c = lws_get_opaque_user_data(wsi)))
            return conn_on_peer_close(c);
        return 0;
    case LWS_CALLBACK_CLOSED:
        conn_on_closed(wsi);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY:
        conn_on_wsi_destroy(wsi);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols gw_protocols[] = {
    {"relay", gw_callback, 0, RL_GW_RX_BUFFER, 0, NULL, RL_GW_TX_PACKET},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---------------------------------------------------------------------------------------------
 * Start and stop */

static void lws_log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    rl_log(level & LLL_ERR ? RL_LOG_ERROR : RL_LOG_WARN, "lws", "%.*s", (int)n, line);
    if (gw.starting && (level & LLL_ERR) && !gw.lws_err[0])
        snprintf(gw.lws_err, sizeof gw.lws_err, "%.*s", (int)n, line);
}

/* ---------------------------------------------------------------------------------------------
 * TLS: the cert and key are checked here before lws sees them. lws 4.1.6 reports a bad pair
   only as log lines and a NULL vhost, and with OpenSSL 3 it never calls SSL_CTX_check_private_key:
   a key of another type than the cert (an EC key with an RSA cert) is accepted and every
   handshake then fails. */

/* Refuses to decrypt, so an encrypted key fails the start instead of OpenSSL prompting on a
   terminal from inside the event loop. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* The reason of OpenSSL's last queued error (or "no PEM data"), and clears the queue. */
static const char *tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "no PEM data");
    ERR_clear_error();
    return buf;
}

/* Reads c->tls_cert and c->tls_key (PEM) and checks the key is the cert's. Returns 0, or
   -EINVAL with "tls.cert PATH: reason" / "tls.key PATH: reason" in err. */
int rl_gateway_check_tls(const rl_config *c, char *err, size_t errlen)
{
    if (!c->tls_cert && !c->tls_key)
        return 0; /* TLS off */
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    char why[160];
    int rc = -EINVAL;
    FILE *f = fopen(c->tls_cert, "r");
    if (!f) {
        snprintf(err, errlen, "tls.cert %s: %s", c->tls_cert, strerror(errno));
        return -EINVAL;
    }
    x = PEM_read_X509(f, NULL, tls_no_passphrase, NULL);
    fclose(f);
    if (!x) {
        snprintf(err, errlen, "tls.cert %s: not a PEM certificate (%s)", c->tls_cert,
                 tls_reason(why, sizeof why));
        goto out;
    }
    if (!(f = fopen(c->tls_key, "r"))) {
        snprintf(err, errlen, "tls.key %s: %s", c->tls_key, strerror(errno));
        goto out;
    }
    k = PEM_read_PrivateKey(f, NULL, tls_no_passphrase, NULL);
    fclose(f);
    if (!k) {
        unsigned long e = ERR_peek_last_error();
        int encrypted =
            ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ;
        snprintf(err, errlen, "tls.key %s: %s (%s)", c->tls_key,
                 encrypted ? "encrypted keys are not supported" : "not a PEM private key",
                 tls_reason(why, sizeof why));
        goto out;
    }
    if (X509_check_private_key(x, k) != 1) {
        snprintf(err, errlen, "tls.key %s does not match tls.cert %s (%s)", c->tls_key,
                 c->tls_cert, tls_reason(why, sizeof why));
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        rl_warn("gateway", "tls.cert %s has expired: clients will refuse it", c->tls_cert);
    rc = 0;
out:
    ERR_clear_error();
    EVP_PKEY_free(k);
    X509_free(x);
    return rc;
}

/* The console page with the WS path as a JavaScript string body (", \ and < escaped). */
static int console_build(const char *ws_path)
{
    const char *mark = strstr(rl_console_html, RL_CONSOLE_PATH_MARK);
    if (!mark)
        return -EINVAL;
    size_t head = (size_t)(mark - rl_console_html), marklen = strlen(RL_CONSOLE_PATH_MARK);
    size_t tail = strlen(mark + marklen), plen = strlen(ws_path);
    char *s = malloc(head + 6 * plen + tail + 1), *p = s;
    if (!s)
        return -ENOMEM;
    memcpy(p, rl_console_html, head);
    p += head;
    for (const char *q = ws_path; *q; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"' || ch == '\\' || ch == '<' || ch < 0x20)
            p += sprintf(p, "\\u%04x", ch);
        else
            *p++ = (char)ch;
    }
    memcpy(p, mark + marklen, tail + 1);
    p += tail;
    gw.console = s;
    gw.console_len = (size_t)(p - s);
    return 0;
}

static unsigned int fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > RL_GW_FD_LIMIT_MAX)
        return RL_GW_FD_LIMIT_MAX;
    return rl.rlim_cur < 64 ? 64 : (unsigned int)rl.rlim_cur;
}

static uint16_t secs16(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return (uint16_t)(s > 65535 ? 65535 : s);
}

int rl_gateway_start(uv_loop_t *loop, const rl_config *c, char *err, size_t errlen)
{
    if (gw.ctx) {
        snprintf(err, errlen, "gateway already started");
        return -EALREADY;
    }
    gw.cfg = c;
    gw.destroying = 0;
    gw.accepting = 1;
    gw.conns = NULL;
    gw.nconns = 0;
    int rc;
    if (c->tls_cert && (rc = rl_gateway_check_tls(c, err, errlen)) < 0)
        return rc;
    if (c->console && console_build(c->ws_path) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_emit);

    memset(&gw.retry, 0, sizeof gw.retry);
    if (c->ping_interval_ms) {
        gw.retry.secs_since_valid_ping = secs16(c->ping_interval_ms);
        /* lws hangs up once nothing valid (pong or data) came for this long: must exceed the
           ping interval, else a dead-peer timeout shorter than the interval would kill every
           idle client */
        uint64_t hang = c->ping_timeout_ms > c->ping_interval_ms
                            ? c->ping_timeout_ms
                            : c->ping_interval_ms + c->ping_timeout_ms;
        gw.retry.secs_since_valid_hangup = secs16(hang);
        /* lws counts whole seconds: a sub-second interval and timeout round to the same second,
           and the hangup would fire before any ping went out */
        if (gw.retry.secs_since_valid_hangup <= gw.retry.secs_since_valid_ping)
            gw.retry.secs_since_valid_hangup = (uint16_t)(gw.retry.secs_since_valid_ping + 1);
    }

    void *foreign[1] = {loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6 |
                   LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_VALIDATE_UTF8;
    info.foreign_loops = foreign;
    info.pcontext = &gw.ctx;
    info.port = c->listen_port;
    info.iface = c->listen_host;
    info.protocols = gw_protocols;
    info.vhost_name = "relay";
    info.max_http_header_data = RL_GW_HEADER_DATA;
    info.fd_limit_per_thread = fd_limit();
    /* The handshake timeout: while a request's headers are awaited lws holds a header table
       under timeout_secs_ah_idle (10 s by default); timeout_secs covers its other round trips. */
    info.timeout_secs = secs16(c->handshake_timeout_ms ? c->handshake_timeout_ms : 1000);
    info.timeout_secs_ah_idle = info.timeout_secs;
    info.retry_and_idle_policy = c->ping_interval_ms ? &gw.retry : NULL;
    info.gid = -1;
    info.uid = -1;
    /* No info.extensions: permessage-deflate stalls on this lws build's uv backend (stack.md). */
    if (c->tls_cert) {
        /* Without DO_SSL_GLOBAL_INIT lws ignores the cert and serves plain ("SSL disabled").
           A TLS port takes TLS only (no ALLOW_NON_SSL_ON_SSL_PORT). ALPN offers http/1.1 alone:
           lws's default "h2,http/1.1" would put browsers on HTTP/2 (and WebSockets over h2),
           which the handshake refusals here (raw HTTP/1.1) do not speak. */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = c->tls_cert;
        info.ssl_private_key_filepath = c->tls_key;
        info.ssl_options_set = (long)(SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
        info.alpn = "http/1.1";
    }

    gw.lws_err[0] = '\0';
    gw.starting = 1;
    gw.ctx = lws_create_context(&info);
    if (!gw.ctx) {
        gw.starting = 0;
        snprintf(err, errlen, "cannot create the lws context (is libwebsockets-evlib-uv installed?)");
        free(gw.console);
        gw.console = NULL;
        return -EIO;
    }
    if (!lws_create_vhost(gw.ctx, &info)) {
        gw.starting = 0;
        /* lws sets up TLS before it binds: a TLS failure leaves an lws error line naming it */
        if (c->tls_cert && (strstr(gw.lws_err, "cert") || strstr(gw.lws_err, "key") ||
                            strstr(gw.lws_err, "ssl") || strstr(gw.lws_err, "SSL"))) {
            snprintf(err, errlen, "cannot set up TLS with tls.cert %s and tls.key %s (lws: %s)",
                     c->tls_cert, c->tls_key, gw.lws_err);
            rc = -EINVAL;
        } else {
            snprintf(err, errlen, "cannot listen on %s:%d", c->listen_host, c->listen_port);
            rc = -EADDRINUSE;
        }
        lws_context_destroy(gw.ctx); /* destroy #1; rl_gateway_free does #2 */
        gw.destroying = 1;
        return rc;
    }
    gw.starting = 0;
    if (c->tls_cert)
        rl_info("gateway", "TLS on (https, wss): cert %s, key %s", c->tls_cert, c->tls_key);
    else
        rl_info("gateway", "TLS off (plain http, ws)");
    return 0;
}

void rl_gateway_set_ready_fn(int (*ready)(void)) { gw.ready = ready; }

void rl_gateway_set_accepting(int accepting) { gw.accepting = accepting != 0; }

void rl_gateway_close_all(int code, const char *reason)
{
    gw.accepting = 0;
    for (rl_conn *c = gw.conns; c; c = c->next)
        conn_close(c, code, reason, 1);
}

size_t rl_gateway_conn_count(void) { return gw.nconns; }

void rl_gateway_set_central(const char *pid)
{
    snprintf(gw.central, sizeof gw.central, "%s", pid ? pid : "");
}

void rl_gateway_stop(void)
{
    if (!gw.ctx || gw.destroying)
        return;
    gw.destroying = 1;
    gw.accepting = 0;
    lws_context_destroy(gw.ctx); /* closes every wsi (CLOSED runs), then lws's uv handles */
}

void rl_gateway_free(void)
{
    if (gw.ctx) {
        /* destroy #2 right after #1, without the loop running between, is a use-after-free */
        if (!gw.destroying)
            RL_PANIC("rl_gateway_free before rl_gateway_stop");
        lws_context_destroy(gw.ctx); /* destroy #2: frees the context; lws NULLs gw.ctx */
        gw.ctx = NULL;
    }
    gw.destroying = 0;
    free(gw.console);
    gw.console = NULL;
    gw.console_len = 0;
    free(gw.tx);
    gw.tx = NULL;
    gw.txcap = 0;
}
