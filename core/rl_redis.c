/* Async Redis client on the node's libuv loop (see rl_redis.h for the contracts). */
#include "rl_redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>
#include <openssl/evp.h>

#include "rl_log.h"
#include "rl_metrics.h"

#define MOD "redis"

/* ------------------------------------------------------------------------------------------ */
/* Our hiredis <-> libuv adapter. hiredis calls the add/del hooks when it wants to read or write
 * and cleanup when the context goes away; we translate them into one uv_poll. On a poll error
 * (POLLERR: refused connect, RST) libuv stops the handle and reports status < 0 with no events;
 * we then let hiredis read/write anyway so it sees the socket error and tears the context down. */

typedef struct uvr_adapter {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis called cleanup */
    int events;            /* UV_READABLE | UV_WRITABLE wanted by hiredis */
} uvr_adapter;

static void uvr_poll_cb(uv_poll_t *h, int status, int events);

static void uvr_set_events(uvr_adapter *a, int events)
{
    if (a->ac == NULL || events == a->events)
        return;
    a->events = events;
    if (events)
        uv_poll_start(&a->poll, events, uvr_poll_cb);
    else
        uv_poll_stop(&a->poll);
}

static void uvr_poll_cb(uv_poll_t *h, int status, int events)
{
    uvr_adapter *a = h->data;
    int ev = status < 0 ? a->events : events;
    if (a->ac != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(a->ac);
    if (a->ac != NULL && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(a->ac);
    /* libuv stopped the handle on error; if hiredis kept the context, keep watching. */
    if (status < 0 && a->ac != NULL && a->events)
        uv_poll_start(&a->poll, a->events, uvr_poll_cb);
}

static void uvr_add_read(void *p) { uvr_set_events(p, ((uvr_adapter *)p)->events | UV_READABLE); }
static void uvr_del_read(void *p) { uvr_set_events(p, ((uvr_adapter *)p)->events & ~UV_READABLE); }
static void uvr_add_write(void *p) { uvr_set_events(p, ((uvr_adapter *)p)->events | UV_WRITABLE); }
static void uvr_del_write(void *p) { uvr_set_events(p, ((uvr_adapter *)p)->events & ~UV_WRITABLE); }

static void uvr_closed(uv_handle_t *h) { free(h->data); }

static void uvr_cleanup(void *p)
{
    uvr_adapter *a = p;
    if (a->ac != NULL) {
        a->ac->ev.data = NULL;
        a->ac = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&a->poll))
        uv_close((uv_handle_t *)&a->poll, uvr_closed);
}

static int uvr_attach(uv_loop_t *loop, redisAsyncContext *ac)
{
    if (ac->ev.data != NULL)
        return -EEXIST;
    uvr_adapter *a = calloc(1, sizeof *a);
    if (a == NULL)
        return -ENOMEM;
    int rc = uv_poll_init_socket(loop, &a->poll, ac->c.fd);
    if (rc < 0) {
        free(a);
        return rc;
    }
    a->poll.data = a;
    a->ac = ac;
    ac->ev.data = a;
    ac->ev.addRead = uvr_add_read;
    ac->ev.delRead = uvr_del_read;
    ac->ev.addWrite = uvr_add_write;
    ac->ev.delWrite = uvr_del_write;
    ac->ev.cleanup = uvr_cleanup;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */

typedef enum { ST_DOWN, ST_RESOLVING, ST_CONNECTING, ST_UP } conn_state;
/* K_FALLBACK: a script's EVAL after NOSCRIPT, still allowed while closing */
/* K_SENTINEL: a sentinel's answer with the master's address; K_ROLE: the master's ROLE check */
typedef enum { K_USER, K_HANDSHAKE, K_HANDSHAKE_LAST, K_PING, K_FALLBACK, K_SENTINEL, K_ROLE } req_kind;

typedef struct req {
    struct req *prev, *next;
    rl_redis *r; /* NULL once unlinked */
    rl_redis_cb cb;
    void *ud;
    uint64_t deadline; /* uv_now ms */
    uint64_t t0_ns;    /* K_PING */
    req_kind kind;
    int expired;       /* its caller was answered NULL at the deadline; the reply is dropped */
} req;

struct rl_redis {
    uv_loop_t *loop;
    char name[16];
    rl_redis_url url;
    conn_state state;
    redisAsyncContext *ac;
    uv_timer_t retry_timer, conn_timer, cmd_timer;
    uv_getaddrinfo_t gai;
    int gai_active;
    int handles_open;
    int freed;
    int closing; /* rl_redis_close: no new commands, free once nothing is pending */
    req *head, *tail;
    size_t npending;
    uint64_t progress_at; /* uv_now of the last reply, or when the idle connection got a command */
    int suspect;          /* looked stuck: one more look after the loop has read the socket */
    uint64_t expired, expired_logged_at; /* commands answered NULL at their deadline (logs) */
    uint64_t connect_ms, command_ms, backoff_min, backoff_max;
    unsigned attempts;    /* failed attempts since the last successful handshake */
    uint64_t fail_streak; /* for log rate limiting */
    uint64_t connects;
    uint64_t rng;
    rl_redis_state_cb state_cb;
    void *state_ud;
    int at_sentinel; /* Sentinel: the current attempt asks url.sentinels[sidx], not the master */
    int sidx;
};

static void start_connect(rl_redis *r);

static uint64_t rng_next(rl_redis *r)
{
    /* xorshift64*: jitter only, not security */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 2685821657736338717ULL;
}

static void maybe_release(rl_redis *r)
{
    if (r->freed && r->handles_open == 0 && !r->gai_active && r->head == NULL)
        free(r);
}

static void timer_closed(uv_handle_t *h)
{
    rl_redis *r = h->data;
    r->handles_open--;
    maybe_release(r);
}

static void list_unlink(rl_redis *r, req *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->tail = q->prev;
    q->prev = q->next = NULL;
    q->r = NULL;
    r->npending--;
}

static const char *ac_errstr(const redisAsyncContext *ac)
{
    if (ac->c.err && ac->c.errstr[0])
        return ac->c.errstr;
    if (ac->err && ac->errstr)
        return ac->errstr;
    return "connection closed";
}

static void log_failure(rl_redis *r, int was_up, const char *why)
{
    r->fail_streak++;
    if (was_up)
        rl_warn(MOD, "%s: connection to %s:%d lost: %s", r->name, r->url.host, r->url.port, why);
    else if (r->fail_streak == 1 || r->fail_streak % 50 == 0)
        rl_warn(MOD, "%s: cannot connect to %s:%d: %s (attempt %llu, retrying)", r->name,
                r->url.host, r->url.port, why, (unsigned long long)r->fail_streak);
    else
        rl_debug(MOD, "%s: cannot connect to %s:%d: %s", r->name, r->url.host, r->url.port, why);
}

static void on_retry(uv_timer_t *t)
{
    rl_redis *r = t->data;
    if (!r->freed && r->state == ST_DOWN)
        start_connect(r);
}

static void schedule_retry(rl_redis *r)
{
    if (r->freed)
        return;
    unsigned sh = r->attempts < 20 ? r->attempts : 20;
    uint64_t cap = r->backoff_min << sh;
    if (cap > r->backoff_max || cap < r->backoff_min)
        cap = r->backoff_max;
    /* "equal jitter": half fixed, half random, so retries spread but never come back at once */
    uint64_t delay = cap / 2 + rng_next(r) % (cap / 2 + 1);
    r->attempts++;
    r->state = ST_DOWN;
    uv_timer_start(&r->retry_timer, on_retry, delay, 0);
}

/* Sentinel: after a failed attempt, the next one asks a sentinel again (the next one when this
   one failed, the same one when the master it named was lost). */
static void sentinel_next(rl_redis *r)
{
    if (!r->url.sentinel)
        return;
    if (r->at_sentinel)
        r->sidx = (r->sidx + 1) % r->url.nsentinels;
    r->at_sentinel = 1;
    snprintf(r->url.host, sizeof r->url.host, "%s", r->url.sentinels[r->sidx].host);
    r->url.port = r->url.sentinels[r->sidx].port;
}

/* The current connection is gone (or must go). free_ac: we free it ourselves (timeouts, handshake
   errors, rl_redis_free); otherwise hiredis is already freeing it (onConnect failure, onDisconnect,
   a NULL reply). Pending commands fail with NULL as hiredis frees the context. Calls the user's
   state callback last. */
static void conn_lost(rl_redis *r, const char *why, int free_ac)
{
    redisAsyncContext *ac = r->ac;
    if (ac == NULL)
        return;
    int was_up = r->state == ST_UP;
    r->ac = NULL;
    ac->data = NULL;
    r->state = ST_DOWN;
    uv_timer_stop(&r->conn_timer);
    uv_timer_stop(&r->cmd_timer);
    rl_metric_inc(RL_M_REDIS_ERRORS);
    log_failure(r, was_up, why);
    sentinel_next(r);
    schedule_retry(r);
    if (free_ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside one of its reply callbacks */
    if (r->closing) {
        rl_redis_free(r);
        return;
    }
    if (was_up && !r->freed && r->state_cb)
        r->state_cb(r, 0, r->state_ud);
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    rl_redis *r = cac->data;
    if (r == NULL || status == REDIS_OK)
        return; /* "up" is decided by the handshake reply, not by TCP */
    /* hiredis frees the context after this returns, failing its callbacks; no disconnect
       callback follows. Never free it here (onConnect does not run under REDIS_IN_CALLBACK). */
    conn_lost(r, ac_errstr(cac), 0);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    rl_redis *r = cac->data;
    if (r == NULL)
        return;
    conn_lost(r, status == REDIS_OK ? "closed" : ac_errstr(cac), 0);
}

/* ROLE's first element is "master". */
static int is_master(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
           reply->element[0]->type == REDIS_REPLY_STRING && reply->element[0]->len == 6 &&
           memcmp(reply->element[0]->str, "master", 6) == 0;
}

/* A sentinel answered SENTINEL get-master-addr-by-name: [ip, port], or nil for a name it does
   not monitor. With an address, this connection goes and the next attempt is the master's,
   at once (not a failure). */
static void sentinel_answer(rl_redis *r, const redisReply *reply)
{
    char why[160];
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        if (reply->type == REDIS_REPLY_ERROR)
            snprintf(why, sizeof why, "sentinel: %.*s", (int)(reply->len < 120 ? reply->len : 120),
                     reply->str);
        else
            snprintf(why, sizeof why, "sentinel: no master named '%s'", r->url.master);
        conn_lost(r, why, 1);
        return;
    }
    const redisReply *h = reply->element[0], *pt = reply->element[1];
    char host[RL_REDIS_HOST_MAX], port[8];
    unsigned char b[16];
    long v = 0;
    int ok = h->len > 0 && h->len < sizeof host && pt->len > 0 && pt->len < sizeof port;
    if (ok) {
        memcpy(host, h->str, h->len);
        host[h->len] = '\0';
        memcpy(port, pt->str, pt->len);
        port[pt->len] = '\0';
        char *e;
        v = strtol(port, &e, 10);
        ok = *e == '\0' && v >= 1 && v <= 65535 &&
             (inet_pton(AF_INET, host, b) == 1 || inet_pton(AF_INET6, host, b) == 1);
    }
    if (!ok) {
        conn_lost(r, "sentinel: the master's address is not an IP address and port", 1);
        return;
    }
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    ac->data = NULL;
    r->state = ST_DOWN;
    uv_timer_stop(&r->conn_timer);
    uv_timer_stop(&r->cmd_timer);
    redisAsyncFree(ac); /* deferred by hiredis: we are inside its reply callback */
    rl_debug(MOD, "%s: sentinel %s:%d: master '%s' is at %s:%s", r->name, r->url.host,
             r->url.port, r->url.master, host, port);
    snprintf(r->url.host, sizeof r->url.host, "%s", host);
    r->url.port = (int)v;
    r->at_sentinel = 0;
    start_connect(r);
}

static void on_reply(redisAsyncContext *ac, void *vreply, void *privdata)
{
    req *q = privdata;
    const redisReply *reply = vreply;
    rl_redis *r = q->r;
    /* r's memory stays valid through the user callback even if it calls rl_redis_free: it is
       released only once the timers have closed, in a later loop phase. */
    int closing = r != NULL && r->closing && !r->freed;
    if (r != NULL) {
        list_unlink(r, q);
        if (reply != NULL && r->ac == ac) {
            r->progress_at = uv_now(r->loop);
            r->suspect = 0;
        }
        if (reply == NULL) {
            if (r->ac == ac) /* hiredis is freeing the context after an error */
                conn_lost(r, ac_errstr(ac), 0);
        } else if (q->kind == K_SENTINEL) {
            if (r->ac == ac)
                sentinel_answer(r, reply);
        } else if (q->kind == K_ROLE && reply->type != REDIS_REPLY_ERROR) {
            if (r->ac == ac && !is_master(reply))
                conn_lost(r, "ROLE: the sentinels' master is not a master (yet)", 1);
        } else if (reply->type == REDIS_REPLY_ERROR &&
                   (q->kind == K_HANDSHAKE || q->kind == K_HANDSHAKE_LAST || q->kind == K_ROLE)) {
            if (r->ac == ac) {
                char why[160];
                snprintf(why, sizeof why, "handshake: %.*s", (int)(reply->len < 120 ? reply->len : 120),
                         reply->str);
                conn_lost(r, why, 1);
            }
        } else if (reply->type == REDIS_REPLY_ERROR) {
            if (strncmp(reply->str, "NOSCRIPT", 8) != 0) /* the script fallback handles that */
                rl_metric_inc(RL_M_REDIS_ERRORS);
            /* a demoted master answers writes with READONLY: find the new one */
            if (r->url.sentinel && r->ac == ac && strncmp(reply->str, "READONLY", 8) == 0)
                conn_lost(r, "the master became a replica (READONLY)", 1);
        } else if (q->kind == K_PING) {
            rl_metric_set(RL_M_REDIS_RTT_US, (uv_hrtime() - q->t0_ns) / 1000);
        } else if (q->kind == K_HANDSHAKE_LAST && r->ac == ac && r->state == ST_CONNECTING) {
            r->state = ST_UP;
            r->progress_at = uv_now(r->loop);
            r->suspect = 0;
            uv_timer_stop(&r->conn_timer);
            r->attempts = 0;
            r->connects++;
            if (r->fail_streak || r->connects > 1)
                rl_info(MOD, "%s: connected to %s:%d", r->name, r->url.host, r->url.port);
            else
                rl_debug(MOD, "%s: connected to %s:%d", r->name, r->url.host, r->url.port);
            r->fail_streak = 0;
            if (!r->freed && r->state_cb)
                r->state_cb(r, 1, r->state_ud);
        }
        if (r->freed)
            maybe_release(r);
        /* r may be gone from here on */
    }
    if (q->cb)
        q->cb(reply, q->ud);
    free(q);
    if (closing && !r->freed && r->npending == 0)
        rl_redis_free(r); /* rl_redis_close: the last pending reply arrived */
}

/* Commands whose caller may be answered at their deadline while the connection stays (the
   handshake's and the sentinels' decide the connection itself). */
static int expirable(req_kind k) { return k == K_USER || k == K_PING || k == K_FALLBACK; }

#define RL_REDIS_EXPIRE_SLACK_MS 20 /* deadlines this close together are expired in one pass */

/* A command past its deadline is answered NULL (its caller gives up; its reply, when it comes,
   is dropped) but the connection stays while replies keep coming: a slow server is not a dead
   connection, and the other commands in flight still get their answers. The connection is
   stuck, and dropped with everything in flight, only when nothing was answered for a whole
   command timeout and the oldest command is past its own deadline: replies are ordered, so
   nothing behind it can arrive either. */
static void on_cmd_timer(uv_timer_t *t)
{
    rl_redis *r = t->data;
    uint64_t now = uv_now(r->loop);
    if (r->head == NULL)
        return;
    uint64_t dead_at = r->progress_at + r->command_ms;
    if (r->head->deadline > dead_at)
        dead_at = r->head->deadline;
    if (now >= dead_at) {
        /* Timers run before the loop polls its sockets: after this process itself was starved
           of CPU (or stopped) the replies may be sitting unread. Look again once it has read. */
        if (!r->suspect) {
            r->suspect = 1;
            uv_timer_start(&r->cmd_timer, on_cmd_timer, 1, 0);
            return;
        }
        r->suspect = 0;
        conn_lost(r, "no reply within the command timeout", 1);
        return;
    }
    uint64_t next = dead_at;
    size_t n = 0, cap = 0;
    struct { rl_redis_cb cb; void *ud; } *due = NULL;
    for (req *q = r->head; q; q = q->next) {
        if (q->expired)
            continue;
        if (q->deadline > now + RL_REDIS_EXPIRE_SLACK_MS) {
            if (q->deadline < next)
                next = q->deadline;
            continue;
        }
        if (!expirable(q->kind)) {
            free(due);
            conn_lost(r, "command timeout", 1);
            return;
        }
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            void *nd = realloc(due, nc * sizeof *due);
            if (nd == NULL) { /* cannot answer them apart: the old way, everything fails */
                free(due);
                conn_lost(r, "command timeout", 1);
                return;
            }
            due = nd;
            cap = nc;
        }
        due[n].cb = q->cb;
        due[n].ud = q->ud;
        n++;
        q->cb = NULL;
        q->ud = NULL;
        q->expired = 1;
    }
    uv_timer_start(&r->cmd_timer, on_cmd_timer, next > now ? next - now : 1, 0);
    if (n) {
        r->expired += n;
        rl_metric_add(RL_M_REDIS_ERRORS, n);
        if (now - r->expired_logged_at >= 5000 || r->expired_logged_at == 0) {
            rl_warn(MOD, "%s: %llu commands timed out so far, %zu in flight (replies still "
                         "arriving: connection kept)", r->name, (unsigned long long)r->expired,
                    r->npending);
            r->expired_logged_at = now;
        }
    }
    for (size_t i = 0; i < n; i++) /* last: a callback may free r */
        if (due[i].cb)
            due[i].cb(NULL, due[i].ud);
    free(due);
}

static void on_conn_timer(uv_timer_t *t)
{
    rl_redis *r = t->data;
    if (r->closing) {
        if (r->npending)
            rl_warn(MOD, "%s: closing with %zu commands unanswered", r->name, r->npending);
        rl_redis_free(r);
    } else if (r->state == ST_CONNECTING) {
        conn_lost(r, "connect timeout", 1);
    }
}

/* Queues an already formatted command on the current context. */
static int submit(rl_redis *r, uint64_t timeout_ms, req_kind kind, rl_redis_cb cb, void *ud,
                  const char *cmd, size_t len)
{
    if (r == NULL || r->freed || r->ac == NULL || (r->closing && kind != K_FALLBACK))
        return -ENOTCONN;
    if (r->at_sentinel && kind != K_SENTINEL)
        return -ENOTCONN; /* a sentinel is not where commands go */
    req *q = calloc(1, sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    uint64_t now = uv_now(r->loop);
    q->r = r;
    q->cb = cb;
    q->ud = ud;
    q->kind = kind;
    q->deadline = now + (timeout_ms ? timeout_ms : r->command_ms);
    if (r->npending == 0)
        r->progress_at = now; /* an idle connection owes nothing until now */
    if (kind == K_PING)
        q->t0_ns = uv_hrtime();
    if (redisAsyncFormattedCommand(r->ac, on_reply, q, cmd, len) != REDIS_OK) {
        free(q);
        return -ENOTCONN;
    }
    q->prev = r->tail;
    if (r->tail)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
    r->npending++;
    /* (Re)arm when idle or when this deadline comes first: replies are ordered, so one overdue
       command means the connection is stuck. */
    uint64_t due = uv_timer_get_due_in(&r->cmd_timer);
    if (!uv_is_active((uv_handle_t *)&r->cmd_timer) || q->deadline - now < due)
        uv_timer_start(&r->cmd_timer, on_cmd_timer, q->deadline - now, 0);
    return 0;
}

static int submit_argv(rl_redis *r, uint64_t timeout_ms, req_kind kind, rl_redis_cb cb, void *ud,
                       int argc, const char **argv, const size_t *argvlen)
{
    if (r == NULL || r->freed || r->ac == NULL)
        return -ENOTCONN;
    if (argc <= 0 || argv == NULL)
        return -EINVAL;
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        return len == -2 ? -ENOMEM : -EINVAL;
    int rc = submit(r, timeout_ms, kind, cb, ud, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

static void do_connect(rl_redis *r, const char *ip)
{
    redisAsyncContext *ac = redisAsyncConnect(ip, r->url.port);
    if (ac == NULL) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        log_failure(r, 0, "out of memory");
        schedule_retry(r);
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr ? ac->errstr : "connect failed");
        redisAsyncFree(ac);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        log_failure(r, 0, why);
        schedule_retry(r);
        return;
    }
    int rc = uvr_attach(r->loop, ac);
    if (rc < 0) {
        redisAsyncFree(ac);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        log_failure(r, 0, uv_strerror(rc));
        schedule_retry(r);
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->state = ST_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect); /* also asks for the first writable event */
    uv_timer_start(&r->conn_timer, on_conn_timer, r->connect_ms, 0);

    int err = 0;
    if (r->at_sentinel) {
        const char *a[3] = {"SENTINEL", "get-master-addr-by-name", r->url.master};
        if (submit_argv(r, r->connect_ms, K_SENTINEL, NULL, NULL, 3, a, NULL) < 0)
            conn_lost(r, "cannot queue the sentinel query", 1);
        return;
    }
    /* Handshake, pipelined: AUTH, SELECT, ROLE (Sentinel), then PING; "up" when the PING is
       answered. */
    if (r->url.password[0]) {
        const char *a[3] = {"AUTH", r->url.user, r->url.password};
        if (r->url.user[0])
            err = submit_argv(r, r->connect_ms, K_HANDSHAKE, NULL, NULL, 3, a, NULL);
        else {
            a[1] = r->url.password;
            err = submit_argv(r, r->connect_ms, K_HANDSHAKE, NULL, NULL, 2, a, NULL);
        }
    }
    if (!err && r->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->url.db);
        const char *a[2] = {"SELECT", db};
        err = submit_argv(r, r->connect_ms, K_HANDSHAKE, NULL, NULL, 2, a, NULL);
    }
    if (!err && r->url.sentinel) {
        const char *a[1] = {"ROLE"};
        err = submit_argv(r, r->connect_ms, K_ROLE, NULL, NULL, 1, a, NULL);
    }
    if (!err) {
        const char *a[1] = {"PING"};
        err = submit_argv(r, r->connect_ms, K_HANDSHAKE_LAST, NULL, NULL, 1, a, NULL);
    }
    if (err)
        conn_lost(r, "cannot queue the handshake", 1);
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    rl_redis *r = g->data;
    r->gai_active = 0;
    if (r->freed) {
        if (res)
            uv_freeaddrinfo(res);
        maybe_release(r);
        return;
    }
    char ip[INET6_ADDRSTRLEN] = "";
    if (status == 0 && res != NULL) {
        if (res->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof ip);
        else if (res->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)res->ai_addr)->sin6_addr, ip, sizeof ip);
    }
    if (res)
        uv_freeaddrinfo(res);
    if (!ip[0]) {
        char why[160];
        snprintf(why, sizeof why, "cannot resolve %s: %s", r->url.host,
                 status < 0 ? uv_strerror(status) : "no address");
        rl_metric_inc(RL_M_REDIS_ERRORS);
        log_failure(r, 0, why);
        schedule_retry(r);
        return;
    }
    do_connect(r, ip);
}

static int is_numeric_ip(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static void start_connect(rl_redis *r)
{
    if (r->freed || r->ac != NULL || r->gai_active)
        return;
    if (is_numeric_ip(r->url.host)) {
        do_connect(r, r->url.host);
        return;
    }
    /* hiredis would call a blocking getaddrinfo on the loop; resolve on libuv's thread pool. */
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->gai.data = r;
    int rc = uv_getaddrinfo(r->loop, &r->gai, on_resolved, r->url.host, NULL, &hints);
    if (rc < 0) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        log_failure(r, 0, uv_strerror(rc));
        schedule_retry(r);
        return;
    }
    r->gai_active = 1;
    r->state = ST_RESOLVING;
}

/* ------------------------------------------------------------------------------------------ */

static int seterr(char *err, size_t n, const char *msg)
{
    if (err && n)
        snprintf(err, n, "%s", msg);
    return -EINVAL;
}

/* host[:port] in [p, end): IPv4, [IPv6], "localhost" (-> 127.0.0.1) or a DNS name. */
static int parse_hostport(const char *p, const char *end, char host[RL_REDIS_HOST_MAX], int *port,
                          char *err, size_t errlen)
{
    const char *hs = p, *he;
    const char *portp = NULL;
    if (*p == '[') {
        hs = p + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (he == NULL)
            return seterr(err, errlen, "redis URL: missing ] after an IPv6 address");
        if (he + 1 < end) {
            if (he[1] != ':')
                return seterr(err, errlen, "redis URL: junk after ]");
            portp = he + 2;
        }
    } else {
        he = memchr(hs, ':', (size_t)(end - hs));
        if (he)
            portp = he + 1;
        else
            he = end;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0)
        return seterr(err, errlen, "redis URL: empty host");
    if (hl >= RL_REDIS_HOST_MAX)
        return seterr(err, errlen, "redis URL: host too long");
    memcpy(host, hs, hl);
    host[hl] = '\0';
    for (size_t i = 0; i < hl; i++) {
        char c = host[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_' || (c == ':' && *p == '[')))
            return seterr(err, errlen, "redis URL: bad character in host");
    }
    if (*p == '[') {
        unsigned char b[16];
        if (inet_pton(AF_INET6, host, b) != 1)
            return seterr(err, errlen, "redis URL: bad IPv6 address");
    }
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (portp) {
        if (portp == end)
            return seterr(err, errlen, "redis URL: empty port");
        long v = 0;
        for (const char *s = portp; s < end; s++) {
            if (*s < '0' || *s > '9' || v > 65535)
                return seterr(err, errlen, "redis URL: bad port");
            v = v * 10 + (*s - '0');
        }
        if (v < 1 || v > 65535)
            return seterr(err, errlen, "redis URL: port out of range");
        *port = (int)v;
    }
    return 0;
}

/* A database number in [d, end). */
static int parse_db(const char *d, const char *end, int *db, char *err, size_t errlen)
{
    long v = 0;
    for (; d < end; d++) {
        if (*d < '0' || *d > '9' || v > 100000)
            return seterr(err, errlen, "redis URL: database must be a number");
        v = v * 10 + (*d - '0');
    }
    *db = (int)v;
    return 0;
}

int rl_redis_parse_url(const char *url, rl_redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    const char *p;
    if (url != NULL && strncmp(url, "redis://", 8) == 0)
        p = url + 8;
    else if (url != NULL && strncmp(url, "redis+sentinel://", 17) == 0) {
        p = url + 17;
        out->sentinel = 1;
    } else
        return seterr(err, errlen, "redis URL must start with redis:// or redis+sentinel://");
    const char *end = p + strcspn(p, "/");
    const char *at = NULL;
    for (const char *s = p; s < end; s++)
        if (*s == '@')
            at = s;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon == NULL)
            return seterr(err, errlen, "redis URL: userinfo must be [user]:password@");
        size_t ul = (size_t)(colon - p), pl = (size_t)(at - colon - 1);
        if (ul >= sizeof out->user || pl >= sizeof out->password)
            return seterr(err, errlen, "redis URL: user or password too long");
        memcpy(out->user, p, ul);
        memcpy(out->password, colon + 1, pl);
        p = at + 1;
    }
    if (!out->sentinel) {
        if (parse_hostport(p, end, out->host, &out->port, err, errlen) < 0)
            return -EINVAL;
        if (*end == '/' && parse_db(end + 1, end + 1 + strlen(end + 1), &out->db, err, errlen) < 0)
            return -EINVAL;
        return 0;
    }
    /* redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db] */
    while (p < end) {
        const char *c = memchr(p, ',', (size_t)(end - p));
        const char *e = c ? c : end;
        if (out->nsentinels == RL_REDIS_SENTINELS_MAX)
            return seterr(err, errlen, "redis URL: too many sentinels (at most 8)");
        rl_redis_sentinel *sn = &out->sentinels[out->nsentinels];
        sn->port = 26379;
        if (parse_hostport(p, e, sn->host, &sn->port, err, errlen) < 0)
            return -EINVAL;
        out->nsentinels++;
        p = c ? c + 1 : end;
        if (c && p == end)
            return seterr(err, errlen, "redis URL: empty sentinel after ','");
    }
    if (out->nsentinels == 0)
        return seterr(err, errlen, "redis URL: no sentinel host");
    if (*end != '/' || !end[1] || end[1] == '/')
        return seterr(err, errlen, "redis URL: redis+sentinel:// needs /master-name after the hosts");
    const char *m = end + 1, *me = m + strcspn(m, "/");
    if ((size_t)(me - m) >= sizeof out->master)
        return seterr(err, errlen, "redis URL: master name too long");
    for (const char *s = m; s < me; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return seterr(err, errlen, "redis URL: bad character in the master name");
    memcpy(out->master, m, (size_t)(me - m));
    if (*me == '/' && parse_db(me + 1, me + 1 + strlen(me + 1), &out->db, err, errlen) < 0)
        return -EINVAL;
    /* the master's address comes from the sentinels; until then the target is the first one */
    snprintf(out->host, sizeof out->host, "%s", out->sentinels[0].host);
    out->port = out->sentinels[0].port;
    return 0;
}

rl_redis *rl_redis_new(uv_loop_t *loop, const char *url, const char *name, char *err, size_t errlen)
{
    rl_redis_url u;
    if (rl_redis_parse_url(url, &u, err, errlen) < 0)
        return NULL;
    rl_redis *r = calloc(1, sizeof *r);
    if (r == NULL) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    r->loop = loop;
    r->url = u;
    r->at_sentinel = u.sentinel; /* url.host is the first sentinel */
    snprintf(r->name, sizeof r->name, "%s", name ? name : "redis");
    r->connect_ms = RL_REDIS_CONNECT_TIMEOUT_MS;
    r->command_ms = RL_REDIS_COMMAND_TIMEOUT_MS;
    r->backoff_min = RL_REDIS_BACKOFF_MIN_MS;
    r->backoff_max = RL_REDIS_BACKOFF_MAX_MS;
    r->rng = uv_hrtime() ^ ((uint64_t)(uintptr_t)r << 16) ^ 0x9e3779b97f4a7c15ULL;
    if (r->rng == 0)
        r->rng = 1;
    uv_timer_t *timers[3] = {&r->retry_timer, &r->conn_timer, &r->cmd_timer};
    for (int i = 0; i < 3; i++) {
        uv_timer_init(loop, timers[i]); /* cannot fail on Unix */
        timers[i]->data = r;
        r->handles_open++;
    }
    start_connect(r);
    return r;
}

void rl_redis_free(rl_redis *r)
{
    if (r == NULL || r->freed)
        return;
    r->freed = 1;
    r->state_cb = NULL;
    uv_timer_t *timers[3] = {&r->retry_timer, &r->conn_timer, &r->cmd_timer};
    for (int i = 0; i < 3; i++) {
        uv_timer_stop(timers[i]);
        uv_close((uv_handle_t *)timers[i], timer_closed);
    }
    if (r->gai_active)
        uv_cancel((uv_req_t *)&r->gai); /* if it already runs, on_resolved releases r */
    redisAsyncContext *ac = r->ac;
    if (ac != NULL) {
        r->ac = NULL;
        ac->data = NULL;
        r->state = ST_DOWN;
        redisAsyncFree(ac); /* fails the pending callbacks (now, or right after the current one) */
    }
}

void rl_redis_close(rl_redis *r, uint64_t timeout_ms)
{
    if (r == NULL || r->freed || r->closing)
        return;
    if (r->npending == 0 || r->ac == NULL) {
        rl_redis_free(r);
        return;
    }
    r->closing = 1;
    r->state_cb = NULL;
    uv_timer_stop(&r->retry_timer);
    uv_timer_start(&r->conn_timer, on_conn_timer, timeout_ms ? timeout_ms : 1, 0);
}

void rl_redis_set_state_cb(rl_redis *r, rl_redis_state_cb cb, void *ud)
{
    r->state_cb = cb;
    r->state_ud = ud;
}

void rl_redis_set_timeouts(rl_redis *r, uint64_t connect_ms, uint64_t command_ms)
{
    if (connect_ms) {
        r->connect_ms = connect_ms;
        if (r->state == ST_CONNECTING && !r->closing) /* applies to the attempt in progress too */
            uv_timer_start(&r->conn_timer, on_conn_timer, connect_ms, 0);
    }
    if (command_ms)
        r->command_ms = command_ms;
}

void rl_redis_set_backoff(rl_redis *r, uint64_t min_ms, uint64_t max_ms)
{
    if (min_ms == 0)
        min_ms = 1;
    if (max_ms < min_ms)
        max_ms = min_ms;
    r->backoff_min = min_ms;
    r->backoff_max = max_ms;
}

int rl_redis_connected(const rl_redis *r) { return r != NULL && !r->freed && r->state == ST_UP; }
size_t rl_redis_pending(const rl_redis *r) { return r ? r->npending : 0; }
uint64_t rl_redis_connects(const rl_redis *r) { return r ? r->connects : 0; }

int rl_redis_vcommand(rl_redis *r, uint64_t timeout_ms, rl_redis_cb cb, void *ud, const char *fmt,
                      va_list ap)
{
    if (r == NULL || r->freed || r->ac == NULL)
        return -ENOTCONN;
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    if (len < 0)
        return len == -2 ? -ENOMEM : -EINVAL;
    int rc = submit(r, timeout_ms, K_USER, cb, ud, cmd, (size_t)len);
    redisFreeCommand(cmd);
    return rc;
}

int rl_redis_command(rl_redis *r, rl_redis_cb cb, void *ud, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = rl_redis_vcommand(r, 0, cb, ud, fmt, ap);
    va_end(ap);
    return rc;
}

int rl_redis_commandargv(rl_redis *r, uint64_t timeout_ms, rl_redis_cb cb, void *ud, int argc,
                         const char **argv, const size_t *argvlen)
{
    return submit_argv(r, timeout_ms, K_USER, cb, ud, argc, argv, argvlen);
}

int rl_redis_ping(rl_redis *r, rl_redis_cb cb, void *ud)
{
    const char *a[1] = {"PING"};
    return submit_argv(r, 0, K_PING, cb, ud, 1, a, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Scripts */

void rl_redis_script_init(rl_redis_script_def *s, const char *name, const char *src)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    s->name = name;
    s->src = src;
    s->sha[0] = 0;
    if (EVP_Digest(src, strlen(src), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        RL_PANIC("SHA1 of script %s failed", name);
    for (unsigned i = 0; i < n; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", md[i]);
}

typedef struct script_call {
    rl_redis *r;
    const rl_redis_script_def *s;
    rl_redis_cb cb;
    void *ud;
    int argc;          /* including the command, the sha/src and numkeys slots */
    const char **argv; /* point into the allocation */
    size_t *argvlen;
} script_call;

static void script_done(const redisReply *reply, void *ud)
{
    script_call *c = ud;
    if (c->cb)
        c->cb(reply, c->ud);
    free(c);
}

static void script_first(const redisReply *reply, void *ud)
{
    script_call *c = ud;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* A non-NULL reply means c->r is alive and not freed (see rl_redis_free). */
        c->argv[0] = "EVAL";
        c->argv[1] = c->s->src;
        c->argvlen[0] = 4;
        c->argvlen[1] = strlen(c->s->src);
        rl_debug(MOD, "%s: loading script %s", c->r->name, c->s->name);
        if (submit_argv(c->r, 0, K_FALLBACK, script_done, c, c->argc, c->argv, c->argvlen) == 0)
            return;
        reply = NULL;
    }
    script_done(reply, c);
}

int rl_redis_script(rl_redis *r, const rl_redis_script_def *s, rl_redis_cb cb, void *ud, int nkeys,
                    int nargs, const char **args, const size_t *argvlen)
{
    if (r == NULL || r->freed || r->ac == NULL)
        return -ENOTCONN;
    if (nkeys < 0 || nargs < nkeys || (nargs > 0 && args == NULL) || s->sha[0] == 0)
        return -EINVAL;
    int argc = nargs + 3;
    size_t data = 0;
    for (int i = 0; i < nargs; i++)
        data += argvlen ? argvlen[i] : strlen(args[i]);
    size_t hdr = sizeof(script_call) + (size_t)argc * (sizeof(char *) + sizeof(size_t));
    script_call *c = malloc(hdr + 16 + data + 1);
    if (c == NULL)
        return -ENOMEM;
    c->r = r;
    c->s = s;
    c->cb = cb;
    c->ud = ud;
    c->argc = argc;
    c->argv = (const char **)(c + 1);
    c->argvlen = (size_t *)(c->argv + argc);
    char *nk = (char *)(c->argvlen + argc), *p = nk + 16;
    c->argv[0] = "EVALSHA";
    c->argvlen[0] = 7;
    c->argv[1] = s->sha;
    c->argvlen[1] = 40;
    c->argv[2] = nk;
    c->argvlen[2] = (size_t)snprintf(nk, 16, "%d", nkeys);
    for (int i = 0; i < nargs; i++) {
        size_t l = argvlen ? argvlen[i] : strlen(args[i]);
        if (l)
            memcpy(p, args[i], l);
        c->argv[3 + i] = p;
        c->argvlen[3 + i] = l;
        p += l;
    }
    int rc = submit_argv(r, 0, K_USER, script_first, c, argc, c->argv, c->argvlen);
    if (rc < 0)
        free(c);
    return rc;
}
