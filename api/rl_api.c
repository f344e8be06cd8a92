/* The server API: HTTP requests on the API listener become API_* messages to users' hubs.
 *
 * One request = one api_req with one target per user (broadcast: many). Each target finds the
 * user's hub (the locate hook: the central hub, then Redis), sends it an API_* message from the
 * API's process (owner NULL, so only the system side can send these topics) and waits for its
 * API_REPLY, matched by a call number. Everything is answered within RL_API_CALL_TIMEOUT_MS: a
 * sweep timer fails what is late, and a late answer finds no call and is dropped.
 *
 * The HTTP exchange (api_http, lws per-session data) and the request are apart: a client that
 * goes away detaches its request, which still finishes (and fills its idempotency entry). */
#include "rl_api.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <libwebsockets.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rl_envelope.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_map.h"
#include "rl_proc.h"
#include "rl_version.h"

#define API_SWEEP_MS 100
#define API_HEADROOM 1024 /* response header bytes */

/* X(ID, HTTP status, code, default message) */
#define API_ERRORS(X)                                                                              \
    X(UNAUTHORIZED, 401, "unauthorized", "Missing or unknown API key (Authorization: Bearer <key>)") \
    X(NOT_FOUND, 404, "not_found", "No such endpoint")                                            \
    X(METHOD, 405, "method_not_allowed", "Method not allowed on this endpoint")                   \
    X(RATE_LIMITED, 429, "rate_limited", "Too many requests for this API key")                    \
    X(LENGTH_REQUIRED, 411, "length_required", "A POST needs a Content-Length")                   \
    X(TOO_LARGE, 413, "payload_too_large", "Body exceeds api.max_body")                           \
    X(BAD_REQUEST, 400, "bad_request", "Malformed request")                                       \
    X(BAD_CURSOR, 400, "bad_request", "cursor must be the decimal cursor of the last page")    \
    X(BAD_IDEM, 400, "bad_request", "Idempotency-Key must be 1 to 128 bytes")                     \
    X(USER_OFFLINE, 404, "user_offline", "The user has no hub on any node")                       \
    X(PLUGIN_NOT_FOUND, 404, "plugin_not_found", "No plugin of the user's hub takes this topic")  \
    X(PLUGIN_FAILED, 503, "plugin_failed", "The plugin for this topic is unavailable")            \
    X(OVERLOADED, 503, "overloaded", "Queue full, try again later")                               \
    X(HUB_MOVING, 503, "hub_moving", "The user's hub is moving between nodes, try again")         \
    X(UNAVAILABLE, 503, "unavailable", "The cluster registry or the node is unavailable")         \
    X(TIMEOUT, 504, "timeout", "No answer in time; the operation may or may not have happened")   \
    X(IDEM_IN_PROGRESS, 409, "idempotency_in_progress", "A request with this Idempotency-Key is still running") \
    X(IDEM_REUSED, 422, "idempotency_key_reused", "This Idempotency-Key was used for another request") \
    X(UNKNOWN_OP, 400, "unknown_op", "Unknown op (message, broadcast, disconnect, user, nodes)") \
    X(INTERNAL, 500, "internal", "Internal error (out of memory)")

typedef enum {
#define API_ERR_ENUM(id, st, code, msg) E_##id,
    API_ERRORS(API_ERR_ENUM)
#undef API_ERR_ENUM
} api_err;

static const struct {
    unsigned status;
    const char *code, *msg;
} api_errors[] = {
#define API_ERR_ROW(id, st, code, msg) {st, code, msg},
    API_ERRORS(API_ERR_ROW)
#undef API_ERR_ROW
};

enum { M_OTHER, M_GET, M_POST, M_OPTIONS };
enum { OP_MESSAGE, OP_BROADCAST, OP_DISCONNECT, OP_USER, OP_NODES, OP_USERS };

#define API_USERS_PAGE_MAX 100  /* users in one page of GET /api/v1/users */
#define API_CURSOR_MAX 32       /* bytes of its cursor */
#define API_ORIGIN_MAX 200      /* bytes of an Origin the API answers CORS for */

typedef struct api_req api_req;

/* A remembered Idempotency-Key: in flight (req set) or its response. Kept in creation order,
   which is expiry order (one TTL for all). */
typedef struct api_idem {
    struct api_idem *prev, *next;
    char *key;            /* "<key index>:<Idempotency-Key>" (the map's key is this) */
    uint64_t expires, fingerprint;
    api_req *req;         /* the request filling it; NULL once done */
    unsigned status;
    char *body;
    size_t len;
} api_idem;

/* One HTTP exchange (lws per-session data, zeroed by lws, reused by keep-alive requests). */
typedef struct api_http {
    struct lws *wsi;
    int method;
    char *path;
    int key;              /* index of the API key that matched, -1 none */
    char idem[RL_API_IDEM_KEY_MAX + 1];
    int has_idem;
    int deferred;         /* an error found in the headers, answered once a POST's body is read */
    api_err deferred_err;
    unsigned wait;        /* E_RATE_LIMITED: seconds until the bucket has a token */
    int dispatched;       /* the request was routed (or answered) */
    int close_after;      /* hang up after the answer (the body was not read) */
    char *body;
    size_t blen, bcap;
    int discard;          /* over max_body: the rest of the body is read and dropped */
    api_req *req;
    char *resp;           /* the response body to write at WRITEABLE, NULL = none yet */
    size_t resp_len;
    unsigned status;
    char extra[160];      /* extra header lines "name: value\r\n" */
    char origin[API_ORIGIN_MAX + 1]; /* an Origin of api.cors_origins ("" = none): CORS headers */
    char cursor[API_CURSOR_MAX + 1]; /* GET /api/v1/users?cursor=&count= */
    unsigned count;
    /* Set for a call through rl_api_call (no wsi): the answer goes to cb, once. */
    rl_api_result_cb cb;
    void *cb_ud;
    int in_call;
} api_http;

typedef struct api_target {
    char *user;
    uint64_t call;        /* key in api.calls while waiting; 0 once done */
    int rc;               /* 0 or -errno */
    uint32_t count;
    rl_body *detail;
    api_req *req;
} api_target;

struct api_req {
    api_req *prev, *next; /* api.reqs (the sweep checks deadlines) */
    api_http *http;       /* NULL once the client went away */
    api_idem *idem;
    int op;
    rl_topic topic;       /* the message to each hub */
    rl_body *name, *data; /* topic name and data, or the close reason (name) */
    int code;             /* close code */
    int to_hub;
    size_t ntargets, pending;
    api_target *targets;
    uint64_t deadline;
    int starting;
};

typedef struct api_bucket {
    double tokens;
    uint64_t at;
} api_bucket;

static struct {
    rl_proc proc;
    const rl_config *cfg;
    rl_api_locate_fn locate;
    rl_api_nodes_fn nodes;
    rl_api_users_fn users;        /* NULL: this node's hubs */
    int started;
    uv_timer_t sweep;
    uint64_t next_call;
    rl_map calls;                 /* call number (decimal) -> api_target */
    size_t ncalls;
    api_req *reqs;
    rl_map idems;                 /* api_idem.key -> api_idem (borrowed keys) */
    api_idem *idem_head, *idem_tail;
    unsigned char (*key_hash)[32]; /* SHA-256 of each configured key */
    api_bucket *buckets;
    uint64_t by_class[6];         /* responses by status / 100 */
    uint64_t replayed;
} api;

static int local_users(const char *cursor, unsigned count, rl_api_users_cb cb, void *ud);

/* ---- responses ---------------------------------------------------------------------------- */

/* Writes h's response now (in WRITEABLE). Returns what the lws callback returns. */
static int http_write(api_http *h, struct lws *wsi)
{
    if (!h->resp)
        return 0;
    size_t len = h->resp_len, cap = LWS_PRE + API_HEADROOM + len;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + cap - len;
    static const char nocache[] = "no-store";
    int bad = lws_add_http_common_headers(wsi, h->status, "application/json", len, &p, end) ||
              lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                           (const unsigned char *)nocache, (int)sizeof nocache - 1,
                                           &p, end);
    if (!bad && h->origin[0]) {
        static const char vary[] = "Origin";
        bad = lws_add_http_header_by_name(wsi, (const unsigned char *)"access-control-allow-origin:",
                                          (const unsigned char *)h->origin, (int)strlen(h->origin),
                                          &p, end) ||
              lws_add_http_header_by_name(wsi, (const unsigned char *)"vary:",
                                          (const unsigned char *)vary, (int)sizeof vary - 1, &p, end);
    }
    for (char *line = h->extra; !bad && *line;) { /* "name: value\r\n" lines */
        char *colon = strchr(line, ':'), *eol = strstr(line, "\r\n");
        if (!colon || !eol)
            break;
        char name[48];
        snprintf(name, sizeof name, "%.*s", (int)(colon + 1 - line), line);
        const char *v = colon + 2;
        bad = lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                          (const unsigned char *)v, (int)(eol - v), &p, end);
        line = eol + 2;
    }
    if (bad || lws_finalize_http_header(wsi, &p, end)) {
        free(buf);
        return -1;
    }
    memcpy(p, h->resp, len);
    p += len;
    int n = lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_FINAL);
    free(buf);
    free(h->resp);
    h->resp = NULL;
    h->extra[0] = '\0';
    if (n < 0 || h->close_after)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Remembers the response in e (when status < 500: a 5xx may be retried with the same key). */
static void idem_fill(api_idem *e, unsigned status, const char *body, size_t len);
static void idem_drop(api_idem *e);

static void vhttp_free(api_http *h)
{
    free(h->path);
    free(h->body);
    free(h);
}

/* The request's (or a synchronous) answer: status and body (copied). h may be NULL (the client
   left); e the idempotency entry to fill, or NULL. */
static void complete(api_http *h, api_idem *e, unsigned status, const char *body, size_t len,
                     const char *extra)
{
    if (e) {
        if (status < 500)
            idem_fill(e, status, body, len);
        else
            idem_drop(e);
    }
    api.by_class[status / 100 < 6 ? status / 100 : 5]++;
    if (!h)
        return;
    if (h->cb || !h->wsi) { /* rl_api_call's: the request lets go of h, which goes after cb */
        rl_api_result_cb cb = h->cb;
        h->cb = NULL;
        if (h->req)
            h->req->http = NULL;
        h->req = NULL;
        if (cb)
            cb(status, body, len, h->cb_ud);
        if (!h->in_call)
            vhttp_free(h);
        return;
    }
    free(h->resp);
    h->resp = malloc(len ? len : 1);
    if (!h->resp) {
        lws_set_timeout(h->wsi, PENDING_TIMEOUT_CLOSE_ACK, LWS_TO_KILL_ASYNC);
        return;
    }
    memcpy(h->resp, body, len);
    h->resp_len = len;
    h->status = status;
    snprintf(h->extra, sizeof h->extra, "%s", extra ? extra : "");
    lws_callback_on_writable(h->wsi);
}

static void complete_json(api_http *h, api_idem *e, unsigned status, cJSON *o, const char *extra)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        complete(h, e, 500, oom, sizeof oom - 1, NULL);
        return;
    }
    complete(h, e, status, s, strlen(s), extra);
    free(s);
}

/* {"code":C,"message":M} */
static cJSON *error_object(api_err err, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    if (o) {
        cJSON_AddStringToObject(o, "code", api_errors[err].code);
        cJSON_AddStringToObject(o, "message", msg ? msg : api_errors[err].msg);
    }
    return o;
}

static void fail(api_http *h, api_idem *e, api_err err, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    if (o)
        cJSON_AddItemToObject(o, "error", error_object(err, msg));
    const char *extra = NULL;
    if (api_errors[err].status == 503)
        extra = "retry-after: 1\r\n";
    complete_json(h, e, api_errors[err].status, o, extra);
}

/* The error of a failed hub round trip. */
static api_err err_of(int rc, int to_hub)
{
    switch (rc) {
    case -ENOENT: return E_USER_OFFLINE;
    case -ENOPROTOOPT: return to_hub ? E_PLUGIN_NOT_FOUND : E_INTERNAL;
    case -EPIPE: return E_PLUGIN_FAILED;
    case -EAGAIN: return E_OVERLOADED;
    case -EBUSY:
    case -ESTALE: return E_HUB_MOVING;
    case -ETIMEDOUT: return E_TIMEOUT;
    case -EHOSTUNREACH:
    case -ESHUTDOWN: return E_UNAVAILABLE;
    default: return E_INTERNAL;
    }
}

/* ---- idempotency -------------------------------------------------------------------------- */

static void idem_unlink(api_idem *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        api.idem_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        api.idem_tail = e->prev;
}

/* Forgets e (expired, evicted, or its request ended in a 5xx). */
static void idem_drop(api_idem *e)
{
    rl_map_del(&api.idems, e->key);
    idem_unlink(e);
    if (e->req)
        e->req->idem = NULL;
    free(e->key);
    free(e->body);
    free(e);
}

static void idem_fill(api_idem *e, unsigned status, const char *body, size_t len)
{
    if (e->req)
        e->req->idem = NULL;
    e->req = NULL;
    e->status = status;
    if ((e->body = malloc(len ? len : 1))) {
        memcpy(e->body, body, len);
        e->len = len;
    } else {
        idem_drop(e);
    }
}

/* Expired entries go; past RL_API_IDEM_MAX the oldest go too. */
static void idem_expire(void)
{
    uint64_t now = rl_now_ms();
    while (api.idem_head && (api.idem_head->expires <= now || api.idems.len > RL_API_IDEM_MAX))
        idem_drop(api.idem_head);
}

static uint64_t fingerprint(const char *path, const char *body, size_t len)
{
    uint64_t f = 1469598103934665603ULL;
    for (const char *p = path; *p; p++)
        f = (f ^ (unsigned char)*p) * 1099511628211ULL;
    f = (f ^ 0xff) * 1099511628211ULL;
    for (size_t i = 0; i < len; i++)
        f = (f ^ (unsigned char)body[i]) * 1099511628211ULL;
    return f;
}

/* ---- requests and their hub round trips --------------------------------------------------- */

static void req_free(api_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (api.reqs == r)
        api.reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->http)
        r->http->req = NULL;
    if (r->idem) /* never filled: the request ended without an answer */
        idem_drop(r->idem);
    for (size_t i = 0; i < r->ntargets; i++) {
        free(r->targets[i].user);
        rl_body_unref(r->targets[i].detail);
    }
    free(r->targets);
    rl_body_unref(r->name);
    rl_body_unref(r->data);
    free(r);
}

static api_req *req_new(api_http *h, int op, size_t ntargets)
{
    api_req *r = calloc(1, sizeof *r);
    if (!r || !(r->targets = calloc(ntargets ? ntargets : 1, sizeof *r->targets))) {
        free(r);
        return NULL;
    }
    r->op = op;
    r->ntargets = ntargets;
    r->http = h;
    r->deadline = rl_now_ms() + RL_API_CALL_TIMEOUT_MS;
    for (size_t i = 0; i < ntargets; i++)
        r->targets[i].req = r;
    r->next = api.reqs;
    if (api.reqs)
        api.reqs->prev = r;
    api.reqs = r;
    return r;
}

static void req_finish(api_req *r);

static void req_maybe_done(api_req *r)
{
    if (r->pending == 0 && !r->starting)
        req_finish(r);
}

static void call_key(char *out, size_t cap, uint64_t call)
{
    snprintf(out, cap, "%" PRIu64, call);
}

static api_target *call_find(uint64_t call)
{
    char k[24];
    call_key(k, sizeof k, call);
    return api.started ? rl_map_get(&api.calls, k) : NULL;
}

static void target_done(api_target *t, int rc)
{
    if (!t->call)
        return;
    char k[24];
    call_key(k, sizeof k, t->call);
    rl_map_del(&api.calls, k);
    api.ncalls--;
    t->call = 0;
    t->rc = rc;
    t->req->pending--;
    req_maybe_done(t->req);
}

/* The message for one hub (a new one per target: each send takes its message). */
static rl_msg *req_msg(const api_req *r, const api_target *t)
{
    rl_msg *m = rl_msg_new(r->topic);
    if (!m)
        return NULL;
    m->ctl.api.req = t->call;
    m->ctl.api.code = r->code;
    m->ctl.api.topic = rl_body_ref(r->name);
    m->ctl.api.data = rl_body_ref(r->data);
    return m;
}

static void on_located(int rc, const char *hub, uint64_t epoch, void *ud)
{
    api_target *t = call_find((uint64_t)(uintptr_t)ud);
    if (!t)
        return; /* timed out meanwhile */
    if (rc < 0) {
        target_done(t, rc);
        return;
    }
    rl_msg *m = req_msg(t->req, t);
    if (!m) {
        target_done(t, -ENOMEM);
        return;
    }
    m->epoch = epoch;
    if ((rc = rl_send(&api.proc, hub, m)) < 0) {
        rl_msg_free(m);
        target_done(t, rc);
    }
}

static void on_nodes(const char *json, size_t len, void *ud)
{
    api_target *t = call_find((uint64_t)(uintptr_t)ud);
    if (!t)
        return;
    if (json && !(t->detail = rl_body_new(json, len))) {
        target_done(t, -ENOMEM);
        return;
    }
    target_done(t, json ? 0 : -EHOSTUNREACH);
}

/* Starts every target's round trip; the request may finish inside (standalone look-ups answer
   at once, a local hub that is gone fails the send). */
static void req_start(api_req *r)
{
    r->starting = 1;
    for (size_t i = 0; i < r->ntargets; i++) {
        api_target *t = &r->targets[i];
        char k[24];
        if (api.ncalls >= RL_API_INFLIGHT_MAX) {
            t->rc = -EAGAIN;
            continue;
        }
        t->call = ++api.next_call;
        call_key(k, sizeof k, t->call);
        if (rl_map_set(&api.calls, k, t) < 0) {
            t->call = 0;
            t->rc = -ENOMEM;
            continue;
        }
        api.ncalls++;
        r->pending++;
        void *ud = (void *)(uintptr_t)t->call;
        int rc = r->op == OP_NODES   ? api.nodes(on_nodes, ud)
                 : r->op == OP_USERS ? api.users(r->http->cursor, r->http->count, on_nodes, ud)
                                     : api.locate(t->user, on_located, ud);
        if (rc < 0)
            target_done(t, rc);
    }
    r->starting = 0;
    req_maybe_done(r);
}

/* ---- answers ------------------------------------------------------------------------------- */

static cJSON *self_node(void)
{
    cJSON *n = cJSON_CreateObject();
    if (!n)
        return NULL;
    cJSON_AddStringToObject(n, "id", rl_node_id());
    cJSON_AddStringToObject(n, "incarnation", rl_node_incarnation());
    cJSON_AddStringToObject(n, "version", RL_VERSION);
    cJSON_AddBoolToObject(n, "alive", 1);
    return n;
}

static void add_local_counts(cJSON *n)
{
    cJSON_AddBoolToObject(n, "self", 1);
    cJSON_AddNumberToObject(n, "connections", (double)rl_proc_count('c'));
    cJSON_AddNumberToObject(n, "hubs", (double)rl_proc_count('h'));
}

static void answer_nodes(api_req *r)
{
    api_target *t = &r->targets[0];
    cJSON *o = cJSON_CreateObject(), *list = NULL;
    if (r->ntargets == 0) { /* standalone */
        list = cJSON_CreateArray();
        cJSON *n = self_node();
        if (n) {
            add_local_counts(n);
            cJSON_AddItemToArray(list, n);
        }
    } else if (t->rc < 0) {
        cJSON_Delete(o);
        fail(r->http, r->idem, err_of(t->rc, 0), NULL);
        return;
    } else {
        list = cJSON_ParseWithLength(t->detail->data, t->detail->len);
        cJSON *n;
        cJSON_ArrayForEach(n, list) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(n, "id");
            if (cJSON_IsString(id) && strcmp(id->valuestring, rl_node_id()) == 0)
                add_local_counts(n);
        }
    }
    if (o) {
        cJSON_AddBoolToObject(o, "cluster", r->ntargets != 0);
        cJSON_AddItemToObject(o, "nodes", list ? list : cJSON_CreateArray());
    } else {
        cJSON_Delete(list);
    }
    complete_json(r->http, r->idem, 200, o, NULL);
}

static void answer_user(api_req *r)
{
    api_target *t = &r->targets[0];
    if (t->rc < 0 && t->rc != -ENOENT) {
        fail(r->http, r->idem, err_of(t->rc, 0), NULL);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON *d = t->rc == 0 && t->detail ? cJSON_ParseWithLength(t->detail->data, t->detail->len) : NULL;
    if (o) {
        cJSON_AddStringToObject(o, "user_id", t->user);
        cJSON_AddBoolToObject(o, "online", d != NULL);
        cJSON_AddNumberToObject(o, "connection_count", d ? (double)t->count : 0);
        const char *keys[] = {"hub", "connections", "plugins"};
        for (int i = 0; i < 3; i++) {
            cJSON *v = d ? cJSON_DetachItemFromObjectCaseSensitive(d, keys[i]) : NULL;
            if (!v)
                v = i == 0 ? cJSON_CreateNull() : cJSON_CreateObject();
            cJSON_AddItemToObject(o, keys[i], v);
        }
    }
    cJSON_Delete(d);
    complete_json(r->http, r->idem, 200, o, NULL);
}

static void req_finish(api_req *r)
{
    api_target *t = &r->targets[0];
    switch (r->op) {
    case OP_NODES:
        answer_nodes(r);
        break;
    case OP_USER:
        answer_user(r);
        break;
    case OP_USERS:
        if (t->rc < 0) {
            fail(r->http, r->idem, err_of(t->rc, 0), NULL);
        } else {
            cJSON *o = cJSON_ParseWithLength(t->detail->data, t->detail->len);
            if (o)
                cJSON_AddBoolToObject(o, "cluster", api.users != local_users);
            complete_json(r->http, r->idem, 200, o, NULL);
        }
        break;
    case OP_MESSAGE:
    case OP_DISCONNECT:
        if (t->rc < 0) {
            fail(r->http, r->idem, err_of(t->rc, r->to_hub), NULL);
        } else {
            cJSON *o = cJSON_CreateObject();
            if (r->op == OP_MESSAGE)
                cJSON_AddStringToObject(o, "target", r->to_hub ? "hub" : "connections");
            cJSON_AddNumberToObject(o, r->op == OP_MESSAGE ? "delivered" : "disconnected", t->count);
            complete_json(r->http, r->idem, 200, o, NULL);
        }
        break;
    case OP_BROADCAST: {
        cJSON *o = cJSON_CreateObject(), *list = cJSON_CreateArray();
        double total = 0;
        for (size_t i = 0; i < r->ntargets; i++) {
            api_target *ti = &r->targets[i];
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "user_id", ti->user);
            if (ti->rc < 0) {
                cJSON_AddItemToObject(e, "error", error_object(err_of(ti->rc, r->to_hub), NULL));
            } else {
                cJSON_AddNumberToObject(e, "delivered", ti->count);
                total += ti->count;
            }
            cJSON_AddItemToArray(list, e);
        }
        cJSON_AddStringToObject(o, "target", r->to_hub ? "hub" : "connections");
        cJSON_AddNumberToObject(o, "delivered", total);
        cJSON_AddItemToObject(o, "results", list);
        complete_json(r->http, r->idem, 200, o, NULL);
        break;
    }
    }
    req_free(r);
}

/* The API's process: the hubs' answers. */
static void api_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    if (m->topic == RL_T_API_REPLY) {
        api_target *t = call_find(m->ctl.api.req);
        if (t) {
            t->count = m->ctl.api.count;
            t->detail = rl_body_ref(m->ctl.api.data);
            target_done(t, m->ctl.api.code);
        }
    }
    rl_msg_free(m);
}

static void api_free(rl_proc *p) { (void)p; }

static const rl_proc_ops api_ops = {
    .kind = "api", .letter = 'a', .handle = api_handle, .free = api_free,
};

/* Fails every target of r still waiting with rc. */
static void req_expire(api_req *r, int rc)
{
    r->starting = 1;
    for (size_t i = 0; i < r->ntargets; i++)
        if (r->targets[i].call)
            target_done(&r->targets[i], rc);
    r->starting = 0;
    req_maybe_done(r);
}

static void sweep_tick(uv_timer_t *tm)
{
    (void)tm;
    uint64_t now = rl_now_ms();
    for (api_req *r = api.reqs, *next; r; r = next) {
        next = r->next;
        if (now >= r->deadline)
            req_expire(r, -ETIMEDOUT);
    }
    idem_expire();
}

/* ---- request bodies --------------------------------------------------------------------- */

/* Skips the JSON string at b[i] (a text rl_env_scan accepted); the index after its quote. */
static size_t skip_string(const char *b, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (b[i] == '\\')
            i++;
        else if (b[i] == '"')
            return i + 1;
    }
    return n;
}

/* Skips the JSON value at b[i]; the index after it. */
static size_t skip_value(const char *b, size_t i, size_t n)
{
    if (i < n && b[i] == '"')
        return skip_string(b, i, n);
    if (i < n && (b[i] == '{' || b[i] == '[')) {
        int depth = 0;
        while (i < n) {
            if (b[i] == '"') {
                i = skip_string(b, i, n);
                continue;
            }
            if (b[i] == '{' || b[i] == '[')
                depth++;
            else if ((b[i] == '}' || b[i] == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return n;
    }
    while (i < n && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' &&
           b[i] != '\n' && b[i] != '\r')
        i++;
    return i;
}

static size_t skip_ws(const char *b, size_t i, size_t n)
{
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r'))
        i++;
    return i;
}

/* The raw bytes of the first top-level member `key` of the object b[0..n) (valid JSON, as
   rl_env_scan checked): 1 and the span, or 0 when absent. The bytes go to clients as they
   are, so 64-bit integers and number spellings survive (cJSON reads numbers as doubles). */
static int member_span(const char *b, size_t n, const char *key, size_t *off, size_t *len)
{
    size_t i = skip_ws(b, 0, n);
    if (i >= n || b[i] != '{')
        return 0;
    i = skip_ws(b, i + 1, n);
    while (i < n && b[i] == '"') {
        size_t ke = skip_string(b, i, n);
        char kbuf[64];
        ssize_t kl = rl_env_unescape(b + i + 1, ke - i - 2, kbuf, sizeof kbuf);
        i = skip_ws(b, ke, n) + 1; /* past the ':' */
        size_t vs = skip_ws(b, i, n);
        i = skip_value(b, vs, n);
        if (kl >= 0 && strcmp(kbuf, key) == 0) {
            *off = vs;
            *len = i - vs;
            return 1;
        }
        i = skip_ws(b, i, n);
        if (i < n && b[i] == ',')
            i = skip_ws(b, i + 1, n);
    }
    return 0;
}

/* A user id: 1..RL_API_USER_MAX bytes of UTF-8 without control characters. */
static int user_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RL_API_USER_MAX || !rl_env_utf8_valid(s, n))
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* Parses h's body as a JSON object (an empty body is {} when empty_ok). NULL with an answer
   written on error. */
static cJSON *body_object(api_http *h, api_idem *e, int empty_ok)
{
    if (h->blen == 0 && empty_ok)
        return cJSON_CreateObject();
    rl_envelope env;
    int st = rl_env_scan(h->body, h->blen, &env);
    if (st != RL_ENV_OK) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s", st == RL_ENV_NOT_OBJECT ? "The body must be a JSON object"
                                                                : "The body is not valid JSON");
        if (env.why)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), " (%s)", env.why);
        fail(h, e, E_BAD_REQUEST, msg);
        return NULL;
    }
    cJSON *o = rl_json_parse(h->body, h->blen);
    if (!o)
        fail(h, e, E_INTERNAL, NULL);
    return o;
}

/* topic, data and target of a message or broadcast body into r. 0, or -1 with an answer. */
static int message_fields(api_http *h, api_idem *e, const cJSON *o, api_req *r)
{
    const cJSON *topic = cJSON_GetObjectItemCaseSensitive(o, "topic");
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(o, "target");
    if (!cJSON_IsString(topic) || !topic->valuestring[0] ||
        strlen(topic->valuestring) > RL_API_TOPIC_MAX) {
        fail(h, e, E_BAD_REQUEST, "topic must be a string of 1 to 128 bytes");
        return -1;
    }
    for (const char *p = topic->valuestring; *p; p++)
        if ((unsigned char)*p < 0x20) {
            fail(h, e, E_BAD_REQUEST, "topic must not hold control characters");
            return -1;
        }
    if (target && (!cJSON_IsString(target) || (strcmp(target->valuestring, "connections") != 0 &&
                                               strcmp(target->valuestring, "hub") != 0))) {
        fail(h, e, E_BAD_REQUEST, "target must be \"connections\" or \"hub\"");
        return -1;
    }
    r->to_hub = target && strcmp(target->valuestring, "hub") == 0;
    r->topic = r->to_hub ? RL_T_API_MESSAGE : RL_T_API_PUSH;
    size_t off = 0, len = 0;
    int has = member_span(h->body, h->blen, "data", &off, &len);
    r->name = rl_body_new(topic->valuestring, strlen(topic->valuestring));
    r->data = has ? rl_body_new(h->body + off, len) : rl_body_new("null", 4);
    if (!r->name || !r->data) {
        fail(h, e, E_INTERNAL, NULL);
        return -1;
    }
    return 0;
}

/* ---- operations ------------------------------------------------------------------------- */

/* POST /api/v1/users/{id}/messages */
static void op_message(api_http *h, api_idem *e, const char *user)
{
    cJSON *o = body_object(h, e, 0);
    if (!o)
        return;
    api_req *r = req_new(h, OP_MESSAGE, 1);
    if (!r || !(r->targets[0].user = strdup(user))) {
        cJSON_Delete(o);
        if (r)
            req_free(r);
        fail(h, e, E_INTERNAL, NULL);
        return;
    }
    int rc = message_fields(h, e, o, r);
    cJSON_Delete(o);
    if (rc < 0) {
        req_free(r);
        return;
    }
    h->req = r;
    r->idem = e;
    if (e)
        e->req = r;
    req_start(r);
}

/* POST /api/v1/broadcast */
static void op_broadcast(api_http *h, api_idem *e, const char *unused)
{
    (void)unused;
    cJSON *o = body_object(h, e, 0);
    if (!o)
        return;
    const cJSON *users = cJSON_GetObjectItemCaseSensitive(o, "users"), *u;
    int n = cJSON_IsArray(users) ? cJSON_GetArraySize(users) : -1;
    if (n < 1 || n > RL_API_BROADCAST_MAX) {
        cJSON_Delete(o);
        fail(h, e, E_BAD_REQUEST, "users must be a list of 1 to 1000 user ids");
        return;
    }
    api_req *r = req_new(h, OP_BROADCAST, (size_t)n);
    rl_map seen;
    rl_map_init(&seen);
    size_t i = 0;
    int bad = !r;
    cJSON_ArrayForEach(u, users) {
        if (bad)
            break;
        if (!cJSON_IsString(u) || !user_ok(u->valuestring)) {
            fail(h, e, E_BAD_REQUEST, "users must hold user ids (strings of 1 to 256 bytes)");
            bad = 2;
        } else if (rl_map_get(&seen, u->valuestring)) {
            char msg[320];
            snprintf(msg, sizeof msg, "users has '%s' twice", u->valuestring);
            fail(h, e, E_BAD_REQUEST, msg);
            bad = 2;
        } else if (rl_map_set(&seen, u->valuestring, (void *)1) < 0 ||
                   !(r->targets[i++].user = strdup(u->valuestring))) {
            bad = 1;
        }
    }
    rl_map_close(&seen);
    if (!bad && message_fields(h, e, o, r) < 0)
        bad = 2;
    cJSON_Delete(o);
    if (bad) {
        if (r)
            req_free(r);
        if (bad == 1)
            fail(h, e, E_INTERNAL, NULL);
        return;
    }
    h->req = r;
    r->idem = e;
    if (e)
        e->req = r;
    req_start(r);
}

/* Close codes a backend may send: normal, going away, policy, server error, try again later,
   and the application range. */
static int close_code_ok(double c)
{
    return c == 1000 || c == 1001 || c == 1008 || c == 1011 || c == 1013 ||
           (c >= 3000 && c <= 4999 && c == (int)c);
}

/* POST /api/v1/users/{id}/disconnect */
static void op_disconnect(api_http *h, api_idem *e, const char *user)
{
    cJSON *o = body_object(h, e, 1);
    if (!o)
        return;
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(o, "code");
    const cJSON *reason = cJSON_GetObjectItemCaseSensitive(o, "reason");
    const char *why = NULL;
    if (code && (!cJSON_IsNumber(code) || !close_code_ok(code->valuedouble)))
        why = "code must be 1000, 1001, 1008, 1011, 1013 or 3000..4999";
    else if (reason && (!cJSON_IsString(reason) || strlen(reason->valuestring) > RL_CLOSE_REASON_MAX))
        why = "reason must be a string of at most 123 bytes";
    if (why) {
        cJSON_Delete(o);
        fail(h, e, E_BAD_REQUEST, why);
        return;
    }
    api_req *r = req_new(h, OP_DISCONNECT, 1);
    const char *rs = reason ? reason->valuestring : "disconnected";
    if (!r || !(r->targets[0].user = strdup(user)) || !(r->name = rl_body_new(rs, strlen(rs)))) {
        cJSON_Delete(o);
        if (r)
            req_free(r);
        fail(h, e, E_INTERNAL, NULL);
        return;
    }
    r->topic = RL_T_API_DISCONNECT;
    r->code = code ? (int)code->valuedouble : 4000;
    cJSON_Delete(o);
    h->req = r;
    r->idem = e;
    if (e)
        e->req = r;
    req_start(r);
}

/* GET /api/v1/users/{id} */
static void op_user(api_http *h, api_idem *e, const char *user)
{
    api_req *r = req_new(h, OP_USER, 1);
    if (!r || !(r->targets[0].user = strdup(user))) {
        if (r)
            req_free(r);
        fail(h, e, E_INTERNAL, NULL);
        return;
    }
    r->topic = RL_T_API_QUERY;
    h->req = r;
    req_start(r);
}

/* GET /api/v1/nodes */
static void op_nodes(api_http *h, api_idem *e, const char *unused)
{
    (void)unused;
    api_req *r = req_new(h, OP_NODES, api.nodes ? 1 : 0);
    if (!r) {
        fail(h, e, E_INTERNAL, NULL);
        return;
    }
    h->req = r;
    req_start(r);
}

/* GET /api/v1/users?cursor=C&count=N: one page of user ids (the users hook). */
static void op_users(api_http *h, api_idem *e, const char *unused)
{
    (void)unused;
    api_req *r = req_new(h, OP_USERS, 1);
    if (!r) {
        fail(h, e, E_INTERNAL, NULL);
        return;
    }
    h->req = r;
    req_start(r);
}

/* The users hook of a standalone node: this node's hubs, the cursor a slot of the process
   table. Answers inside the call. */
static int local_users(const char *cursor, unsigned count, rl_api_users_cb cb, void *ud)
{
    char *end;
    size_t at = (size_t)strtoull(cursor[0] ? cursor : "0", &end, 10);
    cJSON *o = cJSON_CreateObject(), *list = cJSON_CreateArray();
    rl_proc *p;
    for (unsigned n = 0; n < count && (p = rl_proc_next('h', &at));) {
        const char *u = rl_owner_user(p->owner);
        if (u && cJSON_AddItemToArray(list, cJSON_CreateString(u)))
            n++;
    }
    char next[24];
    snprintf(next, sizeof next, "%zu", at);
    if (!rl_proc_next('h', &(size_t){at}))
        snprintf(next, sizeof next, "0"); /* the end, as SCAN says it */
    cJSON_AddItemToObject(o, "users", list);
    cJSON_AddStringToObject(o, "cursor", next);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    cb(s, s ? strlen(s) : 0, ud);
    free(s);
    return 0;
}

/* The routes: a fixed prefix, then (with a suffix) one path segment, the user id. name: the
   op of rl_api_call (the Redis stream), NULL for HTTP only. */
typedef void (*api_op_fn)(api_http *h, api_idem *e, const char *user);
static const struct {
    int method;
    const char *prefix, *suffix; /* suffix NULL: the path is the prefix exactly */
    api_op_fn fn;
    const char *name;
} routes[] = {
    {M_POST, "/api/v1/users/", "/messages", op_message, "message"},
    {M_POST, "/api/v1/users/", "/disconnect", op_disconnect, "disconnect"},
    {M_GET, "/api/v1/users/", "", op_user, "user"},
    {M_GET, "/api/v1/users", NULL, op_users, NULL},
    {M_POST, "/api/v1/broadcast", NULL, op_broadcast, "broadcast"},
    {M_GET, "/api/v1/nodes", NULL, op_nodes, "nodes"},
};

/* Index of the route for path (any method; *user set: a malloc'd copy, or NULL), or -1. With
   *method_ok 0 when only another method has it. */
static int route_find(const char *path, int method, char **user, int *method_ok)
{
    int found = -1;
    *user = NULL;
    *method_ok = 0;
    for (int i = 0; i < (int)(sizeof routes / sizeof routes[0]); i++) {
        size_t pl = strlen(routes[i].prefix), n = strlen(path);
        if (strncmp(path, routes[i].prefix, pl) != 0)
            continue;
        if (!routes[i].suffix) {
            if (n != pl)
                continue;
        } else {
            size_t sl = strlen(routes[i].suffix);
            if (n < pl + sl + 1 || strcmp(path + n - sl, routes[i].suffix) != 0 ||
                memchr(path + pl, '/', n - pl - sl))
                continue;
        }
        if (found < 0 || routes[i].method == method)
            found = i;
        if (routes[i].method == method) {
            *method_ok = 1;
            if (routes[i].suffix) {
                size_t sl = strlen(routes[i].suffix);
                *user = strndup(path + pl, n - pl - sl);
            }
            return i;
        }
    }
    return found;
}

/* ---- HTTP: the lws callback -------------------------------------------------------------- */

/* Index of the key in "Bearer <key>", or -1. Every configured key is compared, each in constant
   time on SHA-256 digests (so neither the length nor the position of a mismatch shows). */
static int auth_key(const char *hdr)
{
    if (strncasecmp(hdr, "Bearer ", 7) != 0)
        return -1;
    const char *tok = hdr + 7;
    unsigned char d[32];
    unsigned int dl = 0;
    if (!EVP_Digest(tok, strlen(tok), d, &dl, EVP_sha256(), NULL) || dl != 32)
        return -1;
    int found = -1;
    for (size_t i = 0; i < api.cfg->napi_keys; i++) {
        int eq = CRYPTO_memcmp(d, api.key_hash[i], 32) == 0;
        found = eq && found < 0 ? (int)i : found;
    }
    return found;
}

/* Takes a token from the key's bucket; 0, or the seconds to wait. */
static unsigned rate_take(int key)
{
    if (api.cfg->api_rate == 0)
        return 0;
    api_bucket *b = &api.buckets[key];
    uint64_t now = rl_now_ms();
    b->tokens += (double)(now - b->at) * (double)api.cfg->api_rate / 1000.0;
    if (b->tokens > (double)api.cfg->api_burst)
        b->tokens = (double)api.cfg->api_burst;
    b->at = now;
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - b->tokens) / (double)api.cfg->api_rate;
    return (unsigned)wait + 1;
}

static void http_reset(api_http *h)
{
    free(h->path);
    free(h->body);
    free(h->resp);
    if (h->req)
        h->req->http = NULL;
    struct lws *wsi = h->wsi;
    memset(h, 0, sizeof *h);
    h->wsi = wsi;
    h->key = -1;
}

/* A 429 with the seconds to wait. */
static void fail_rate(api_http *h, unsigned wait)
{
    char extra[64];
    snprintf(extra, sizeof extra, "retry-after: %u\r\n", wait);
    cJSON *o = cJSON_CreateObject();
    if (o)
        cJSON_AddItemToObject(o, "error", error_object(E_RATE_LIMITED, NULL));
    complete_json(h, NULL, 429, o, extra);
}

/* A whole request is in (the body too): route, idempotency, operation. */
static void dispatch(api_http *h)
{
    if (h->dispatched)
        return;
    h->dispatched = 1;
    if (h->deferred) {
        if (h->deferred_err == E_RATE_LIMITED)
            fail_rate(h, h->wait);
        else
            fail(h, NULL, h->deferred_err, NULL);
        return;
    }
    char *user = NULL;
    int method_ok;
    int i = route_find(h->path, h->method, &user, &method_ok);
    if (i < 0 || !method_ok) {
        free(user);
        fail(h, NULL, i < 0 ? E_NOT_FOUND : E_METHOD, NULL);
        return;
    }
    if (routes[i].suffix && !user_ok(user)) {
        free(user);
        fail(h, NULL, E_BAD_REQUEST, "The user id must be 1 to 256 bytes of UTF-8 without control characters");
        return;
    }
    api_idem *e = NULL;
    if (h->has_idem && h->method == M_POST) {
        char key[RL_API_IDEM_KEY_MAX + 16];
        snprintf(key, sizeof key, "%d:%s", h->key, h->idem);
        uint64_t fp = fingerprint(h->path, h->body, h->blen);
        idem_expire();
        api_idem *old = rl_map_get(&api.idems, key);
        if (old) {
            free(user);
            if (old->fingerprint != fp)
                fail(h, NULL, E_IDEM_REUSED, NULL);
            else if (old->req)
                fail(h, NULL, E_IDEM_IN_PROGRESS, NULL);
            else {
                api.replayed++;
                complete(h, NULL, old->status, old->body, old->len, "idempotent-replayed: true\r\n");
            }
            return;
        }
        if (!(e = calloc(1, sizeof *e)) || !(e->key = strdup(key)) ||
            rl_map_set(&api.idems, e->key, e) < 0) {
            if (e)
                free(e->key);
            free(e);
            free(user);
            fail(h, NULL, E_INTERNAL, NULL);
            return;
        }
        e->fingerprint = fp;
        e->expires = rl_now_ms() + api.cfg->api_idempotency_ttl_ms;
        e->prev = api.idem_tail;
        if (api.idem_tail)
            api.idem_tail->next = e;
        else
            api.idem_head = e;
        api.idem_tail = e;
        idem_expire(); /* over the count: the oldest go */
        if (!rl_map_get(&api.idems, key)) { /* the count is so small that it went itself */
            free(user);
            fail(h, NULL, E_INTERNAL, NULL);
            return;
        }
    }
    routes[i].fn(h, e, user);
    free(user);
}

/* LWS_CALLBACK_HTTP: the request line and headers. Everything is answered from dispatch, once
   a POST's body is in: a client still sending would otherwise see a reset, not the answer. */
static int http_start(api_http *h, struct lws *wsi, const char *uri)
{
    http_reset(h);
    h->wsi = wsi;
    h->method = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0       ? M_GET
                : lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0    ? M_POST
                : lws_hdr_total_length(wsi, WSI_TOKEN_OPTIONS_URI) > 0 ? M_OPTIONS
                                                                       : M_OTHER;
    if (!(h->path = strdup(uri)))
        return -1;
    char buf[1024];
    int n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_ORIGIN);
    for (size_t i = 0; n > 0 && n <= API_ORIGIN_MAX && i < api.cfg->napi_cors_origins; i++)
        if (strcmp(buf, api.cfg->api_cors_origins[i]) == 0)
            memcpy(h->origin, buf, (size_t)n + 1);
    if (h->method == M_OPTIONS && h->origin[0]) { /* a CORS preflight: no key needed */
        h->dispatched = 1;
        complete(h, NULL, 204, "", 0,
                 "access-control-allow-methods: GET, POST\r\n"
                 "access-control-allow-headers: authorization, content-type, idempotency-key\r\n"
                 "access-control-max-age: 600\r\n");
        return 0;
    }
    h->count = 50;
    const char *v;
    int bad_args = 0;
    if ((v = lws_get_urlarg_by_name(wsi, "cursor=", buf, sizeof buf))) {
        bad_args = !*v || strlen(v) > API_CURSOR_MAX || strspn(v, "0123456789") != strlen(v);
        if (!bad_args)
            snprintf(h->cursor, sizeof h->cursor, "%s", v);
    }
    if ((v = lws_get_urlarg_by_name(wsi, "count=", buf, sizeof buf))) {
        unsigned long c = strtoul(v, NULL, 10);
        h->count = c < 1 ? 1 : c > API_USERS_PAGE_MAX ? API_USERS_PAGE_MAX : (unsigned)c;
    }
    n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_AUTHORIZATION);
    h->key = n > 0 ? auth_key(buf) : -1;
    if (h->key < 0) {
        h->deferred = 1;
        h->deferred_err = E_UNAUTHORIZED;
    } else if ((h->wait = rate_take(h->key)) > 0) {
        h->deferred = 1;
        h->deferred_err = E_RATE_LIMITED;
    } else if (bad_args) {
        h->deferred = 1;
        h->deferred_err = E_BAD_CURSOR;
    } else if ((n = lws_hdr_custom_copy(wsi, buf, sizeof buf, "idempotency-key:", 16)) >= 0) {
        if (n == 0 || n > RL_API_IDEM_KEY_MAX) {
            h->deferred = 1;
            h->deferred_err = E_BAD_IDEM;
        } else {
            memcpy(h->idem, buf, (size_t)n);
            h->has_idem = 1;
        }
    }
    if (h->method != M_POST) {
        dispatch(h);
        return 0;
    }
    n = lws_hdr_copy(wsi, buf, sizeof buf, WSI_TOKEN_HTTP_CONTENT_LENGTH);
    unsigned long long clen = n > 0 ? strtoull(buf, NULL, 10) : 0;
    int chunked = n <= 0 && lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0;
    if (!h->deferred && (chunked || clen > api.cfg->api_max_body)) {
        h->deferred = 1;
        h->deferred_err = chunked ? E_LENGTH_REQUIRED : E_TOO_LARGE;
    }
    h->discard = h->deferred;
    if (chunked || clen > 16 * (unsigned long long)api.cfg->api_max_body) {
        /* no length, or far too much to read through: answer now and hang up */
        h->close_after = 1;
        dispatch(h);
    } else if (clen == 0) {
        dispatch(h);
    }
    return 0;
}

static int http_body(api_http *h, const char *in, size_t len)
{
    if (h->discard || len == 0) /* lws reports an empty body as (NULL, 0) */
        return 0;
    if (h->blen + len > api.cfg->api_max_body) { /* more than Content-Length said */
        h->deferred = 1;
        h->deferred_err = E_TOO_LARGE;
        h->discard = 1;
        return 0;
    }
    if (h->blen + len + 1 > h->bcap) {
        size_t ncap = h->bcap ? h->bcap * 2 : 4096;
        while (ncap < h->blen + len + 1)
            ncap *= 2;
        char *nb = realloc(h->body, ncap);
        if (!nb)
            return -1;
        h->body = nb;
        h->bcap = ncap;
    }
    memcpy(h->body + h->blen, in, len);
    h->blen += len;
    h->body[h->blen] = '\0';
    return 0;
}

static int api_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    api_http *h = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        if (!api.started)
            return -1;
        return http_start(h, wsi, in ? (const char *)in : "");
    case LWS_CALLBACK_HTTP_BODY:
        return h && api.started ? http_body(h, (const char *)in, len) : -1;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (!h || !api.started)
            return -1;
        dispatch(h);
        return 0;
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return h ? http_write(h, wsi) : -1;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return -1; /* no WebSockets on the API listener */
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (h) {
            http_reset(h);
            h->wsi = NULL;
        }
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols api_protocols[] = {
    {"relay-api", api_callback, sizeof(api_http), 4096, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

const struct lws_protocols *rl_api_protocols(void) { return api_protocols; }

/* ---- start, stop, metrics ---------------------------------------------------------------- */

void rl_api_set_users_fn(rl_api_users_fn fn) { api.users = fn; }

const rl_config *rl_api_config(void) { return api.started ? api.cfg : NULL; }

int rl_api_call(const char *op, const char *user, const char *body, size_t len,
                rl_api_result_cb cb, void *ud)
{
    if (!api.started)
        return -ESHUTDOWN;
    api_http *h = calloc(1, sizeof *h);
    if (!h || !(h->path = strdup("")) || !(h->body = malloc(len + 1))) {
        if (h)
            free(h->path);
        free(h);
        return -ENOMEM;
    }
    memcpy(h->body, body, len);
    h->body[len] = '\0';
    h->blen = len;
    h->key = -1;
    h->cb = cb;
    h->cb_ud = ud;
    h->in_call = 1;
    h->dispatched = 1;
    int i = 0, n = (int)(sizeof routes / sizeof routes[0]);
    while (i < n && (!routes[i].name || strcmp(routes[i].name, op) != 0))
        i++;
    if (i == n) {
        fail(h, NULL, E_UNKNOWN_OP, NULL);
    } else if (routes[i].suffix && (!user || !user_ok(user))) {
        fail(h, NULL, E_BAD_REQUEST, user ? "The user id must be 1 to 256 bytes of UTF-8 without control characters"
                                          : "This op needs a user");
    } else if (!routes[i].suffix && len == 0 && routes[i].method == M_POST) {
        fail(h, NULL, E_BAD_REQUEST, "This op needs a body");
    } else {
        routes[i].fn(h, NULL, routes[i].suffix ? user : NULL);
    }
    h->in_call = 0;
    if (!h->cb) /* answered inside */
        vhttp_free(h);
    return 0;
}

int rl_api_start(const rl_config *c, rl_api_locate_fn locate, rl_api_nodes_fn nodes)
{
    if (api.started || !locate)
        return -EINVAL;
    api.cfg = c;
    api.locate = locate;
    api.nodes = nodes;
    if (!api.users)
        api.users = local_users;
    api.key_hash = calloc(c->napi_keys ? c->napi_keys : 1, sizeof *api.key_hash);
    api.buckets = calloc(c->napi_keys ? c->napi_keys : 1, sizeof *api.buckets);
    if (!api.key_hash || !api.buckets)
        goto fail;
    for (size_t i = 0; i < c->napi_keys; i++) {
        unsigned int dl = 0;
        if (!EVP_Digest(c->api_keys[i], strlen(c->api_keys[i]), api.key_hash[i], &dl,
                        EVP_sha256(), NULL))
            goto fail;
        api.buckets[i].tokens = (double)c->api_burst;
        api.buckets[i].at = rl_now_ms();
    }
    rl_map_init(&api.calls);
    rl_map_init_borrowed(&api.idems);
    if (rl_proc_start(&api.proc, &api_ops, 0, NULL) < 0) {
        rl_map_close(&api.calls);
        rl_map_close(&api.idems);
        goto fail;
    }
    uv_timer_init(rl_node_loop(), &api.sweep);
    uv_timer_start(&api.sweep, sweep_tick, API_SWEEP_MS, API_SWEEP_MS);
    api.started = 1;
    return 0;
fail:
    free(api.key_hash);
    free(api.buckets);
    api.key_hash = NULL;
    api.buckets = NULL;
    return -ENOMEM;
}

void rl_api_stop(void)
{
    if (!api.started)
        return;
    while (api.reqs)
        req_expire(api.reqs, -ESHUTDOWN);
    while (api.idem_head)
        idem_drop(api.idem_head);
    api.started = 0;
    uv_timer_stop(&api.sweep);
    uv_close((uv_handle_t *)&api.sweep, NULL);
    rl_map_close(&api.calls);
    rl_map_close(&api.idems);
    rl_proc_exit(&api.proc, NULL);
    free(api.key_hash);
    free(api.buckets);
    api.key_hash = NULL;
    api.buckets = NULL;
}

void rl_api_metrics(rl_metrics_out *out)
{
    rl_metrics_put(out, "# HELP relay_api_responses_total Server API responses, by status class\n"
                        "# TYPE relay_api_responses_total counter\n");
    for (int i = 2; i < 6; i++)
        rl_metrics_put(out, "relay_api_responses_total{class=\"%dxx\"} %" PRIu64 "\n", i,
                       api.by_class[i]);
    rl_metrics_gauge(out, "relay_api_calls_inflight", "Server API hub round trips in flight",
                     api.ncalls);
    rl_metrics_gauge(out, "relay_api_idempotency_keys", "Idempotency keys remembered",
                     api.idems.len);
    rl_metrics_put(out, "# HELP relay_api_replayed_total Responses replayed for a repeated "
                        "Idempotency-Key\n# TYPE relay_api_replayed_total counter\n"
                        "relay_api_replayed_total %" PRIu64 "\n", api.replayed);
}
