/* Cluster mode: node registry and heartbeats, the Redis-stream transport between nodes, and the
 * Redis operations the central hub needs (admission, leases), all on the node's loop.
 *
 * Transport: one stream per node, <prefix>inbox:<node>. Messages for another node are queued per
 * destination while the loop turn runs and flushed at its end (uv_check) as one XADD per batch of
 * up to RL_BATCH messages: each message is one field/value pair of the entry, the field its
 * header (wire_header: lengths, then to, from, topic name, owner) and the value its body's bytes
 * as they are, or the fields of an internal topic's struct (wire_ctl). This is the one place that
 * serialises a message. All XADDs go over one connection in order,
 * so per sender->receiver order holds, and hiredis pipelines everything written in one turn.
 * The reader is a second connection looping on XREAD BLOCK from the last id it saw. */
#include "rl_cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rl_cluster_scripts.h"
#include "rl_errors.h"
#include "rl_json.h"
#include "rl_version.h"
#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"
#include "rl_placement_redis.h"
#include "rl_redis.h"
#include "rl_security.h"

#define RL_BATCH 256                /* messages per stream entry */
#define RL_OUTBOX_MAX 65536         /* queued messages per destination node before -EAGAIN */
#define RL_OUTBOX_BYTES (32u << 20) /* and queued payload bytes: memory stays bounded in a flood */
#define RL_STREAM_MAXLEN "100000"   /* approximate trim of each inbox stream (entries) */
#define RL_READ_COUNT "256"         /* entries per XREAD */
#define RL_READ_BLOCK_MS 1000
#define RL_TICK_MS 1000
#define RL_SAFETY_MS 300            /* stop trusting a TTL this long before Redis would expire it */
#define RL_CMD_MS RL_REDIS_COMMAND_TIMEOUT_MS /* the main connection's command timeout */
/* A release of a connection whose admission timed out is sent once more this long after Redis
   confirmed the first one: the admission's deadline (checked by Redis against its own clock)
   already stops a late execution, this covers a Redis clock that stepped back meanwhile. */
#define RL_LATE_MS (2 * RL_CMD_MS)
#define RL_RETRY_MIN_MS 100         /* backoff of retried releases: equal jitter, doubling */
#define RL_RETRY_MAX_MS 2000
#define RL_RETRY_PER_WAKE 1024      /* releases sent per wake-up of the retry timer */
#define RL_RELEASES_MAX 262144      /* pending releases kept; past that the oldest are dropped */
/* Work a node puts on Redis at once is bounded (redis_inflight_max): past these, an admission is
   refused at once
   (-EAGAIN: the client gets 1013 and retries later) and an acquisition waits for a later tick
   (the central hub backs off with jitter), instead of piling up behind a slow Redis. */
#define RL_ADMITS_INFLIGHT_MAX ((size_t)cl.cfg->redis_inflight_max)    /* default 2048 */
#define RL_PURGES_PER_TICK 512 /* purges of dead nodes' entries sent per second at most */
#define RL_ACQUIRES_INFLIGHT_MAX ((size_t)(cl.cfg->redis_inflight_max + 1) / 2)

typedef struct out_msg {
    struct out_msg *next;
    rl_msg *m;
    char to[RL_PID_MAX];
    char *ctl;      /* the serialised struct of an internal topic (malloc'd), or NULL */
    size_t ctl_len;
} out_msg;

#define RL_WIRE_HDR_MAX (3 * RL_PID_MAX + 640) /* header bytes before a topic name and owner */

typedef struct renew_op renew_op;

/* A connection entry this node must remove from Redis: sent, and re-sent with backoff until
   Redis confirms. Keyed by pid (borrowed key). */
typedef struct pending_rel {
    char pid[RL_PID_MAX];
    char *user;
    uint64_t seq;        /* creation order, to drop the oldest past RL_RELEASES_MAX */
    uint64_t not_before; /* loop ms: an admission of pid may still take effect in Redis until then */
    uint64_t next_at;    /* loop ms of the next attempt */
    unsigned attempts;   /* failed attempts so far */
    uint8_t inflight;    /* a release_conn is on the wire */
    uint8_t repeat;      /* send once more RL_LATE_MS after the confirmation */
    uint8_t orphan;      /* the cluster stopped: the reply callback frees it */
} pending_rel;

/* Admissions and re-assertions of a pid on the wire: a release of that pid waits for the latest
   deadline among them, after which Redis refuses them. Keyed by pid (borrowed key). */
typedef struct inflight_admit {
    char pid[RL_PID_MAX];
    unsigned n;
    uint64_t until; /* loop ms */
} inflight_admit;

typedef struct outbox {
    out_msg *head, *tail;
    size_t len;
    size_t bytes;
} outbox;

static struct {
    const rl_config *cfg;
    rl_redis *cmd, *blk;
    char inbox_key[128];
    char node_key[128];
    char last_id[64];       /* last stream id read ("" until the stream's tail is known) */
    int reading;
    rl_map outboxes;        /* node id -> outbox */
    size_t queued;
    uv_timer_t tick;
    uint64_t node_valid_until;
    int ready;
    rl_map live;            /* "<node>.<incarnation>" -> (void *)1, as of the last tick */
    int registered;         /* a heartbeat succeeded once */
    int reregistered;       /* the last heartbeat found our key gone: entries need re-adding */
    const char **dead;      /* nodes that went away at the last tick */
    size_t ndead;
    rl_cluster_tick_cb tick_cb;
    int started;
    rl_redis_script_def live_script;
    uint64_t started_at;
    renew_op *renew;        /* lease renewals waiting for the end of the loop turn */
    size_t nrenew, caprenew;
    int64_t redis_offset;   /* Redis TIME ms - loop ms, a lower bound (from live_nodes replies) */
    int offset_known;
    uint64_t recovering_until; /* loop ms: Redis lost its data; newcomers wait (not ready) */
    rl_map releases;        /* conn pid -> pending_rel */
    rl_map admits;          /* conn pid -> inflight_admit */
    uv_timer_t retry;
    uint64_t rel_seq;
    uint64_t rng;
    int burst;              /* releases have been failing since burst_t0; logged once */
    uint64_t burst_t0, burst_retries, burst_fixed;
    uint64_t m_retries, m_reconciled, m_dropped; /* /metrics */
    size_t swept;           /* messages of dead nodes' inboxes answered to their senders */
    rl_map gone;            /* "<node>.<incarnation>" -> tick it died at (+1): requests refused */
    uint64_t ticks;         /* live_nodes answers so far */
    uint64_t lapses;        /* times our registration may have lapsed (leases checked again) */
    rl_map verified;        /* user -> lease_mark: our lease, known ours since lapse number gen */
    uint64_t m_lease_checks; /* leases checked in Redis (after a lapse): /metrics */
    size_t admitting, acquiring; /* admissions and acquisitions in flight */
    size_t reasserting;     /* re-assertions in flight (after a lapse: one per user) */
    rl_map lease_rels;      /* user -> lease_rel: our leases to delete, retried until confirmed */
    rl_map purges;          /* users whose dead nodes' entries are to be dropped (paced) */
    unsigned purge_tokens;  /* purges that may still go out before the next tick */
    uint64_t m_admits_shed, m_acquires_deferred;
} cl;

/* A lease of ours lives as long as our registration (the node key, renewed every tick), so
   renewing it costs nothing in Redis: it is ours until node_valid_until, unless our registration
   may have lapsed since we last saw it in Redis (then it is checked there once). */
typedef struct lease_mark {
    uint64_t epoch;
    uint64_t gen; /* cl.lapses when the command that saw it ours was sent */
} lease_mark;

static void mark_lease(const char *user, uint64_t epoch, uint64_t gen)
{
    lease_mark *m = rl_map_get(&cl.verified, user);
    if (!m) {
        if (!(m = malloc(sizeof *m)))
            return; /* unmarked: checked in Redis at its next renewal */
        if (rl_map_set(&cl.verified, user, m) < 0) {
            free(m);
            return;
        }
    }
    m->epoch = epoch;
    m->gen = gen;
}

static void unmark_lease(const char *user) { free(rl_map_del(&cl.verified, user)); }

/* A dead incarnation's requests are refused for this many ticks after its sweep: by then every
   connection that sent to its hubs was placed again (at the tick that found it gone). */
#define RL_GONE_TICKS 5

/* "<node>.<incarnation>" of pid into out (size RL_PID_MAX); -1 when malformed. */
static int pid_incarnation(const char *pid, char out[RL_PID_MAX])
{
    const char *dot = strchr(pid, '.');
    dot = dot ? strchr(dot + 1, '.') : NULL;
    if (!dot || (size_t)(dot - pid) >= RL_PID_MAX)
        return -1;
    memcpy(out, pid, (size_t)(dot - pid));
    out[dot - pid] = '\0';
    return 0;
}

int rl_cluster_enabled(void) { return cl.started; }
struct rl_redis *rl_cluster_redis(void) { return cl.started ? cl.cmd : NULL; }
int rl_cluster_ready(void)
{
    uint64_t now = rl_now_ms();
    return cl.started && cl.ready && now < cl.node_valid_until && now >= cl.recovering_until;
}
uint64_t rl_cluster_node_valid_until(void) { return cl.node_valid_until; }
void rl_cluster_set_tick_cb(rl_cluster_tick_cb cb) { cl.tick_cb = cb; }
size_t rl_cluster_dead_since_last_tick(const char ***nodes)
{
    *nodes = cl.dead;
    return cl.ndead;
}

/* ---- transport: sending ---- */

/* Appends "len:" + bytes of s[0..n) to b (a netstring without the comma). */
static size_t put_field(char *b, size_t cap, size_t at, const char *s, size_t n)
{
    int k = snprintf(at < cap ? b + at : NULL, at < cap ? cap - at : 0, "%zu:", n);
    at += (size_t)k;
    if (at + n <= cap)
        memcpy(b + at, s, n);
    return at + n;
}

/* Serialises the struct of an internal topic that may cross nodes into a malloc'd string.
   Returns 0, -EINVAL for a topic that never leaves its node, -ENOMEM. */
static int wire_ctl(const rl_msg *m, char **out, size_t *len)
{
    char buf[4 * RL_PID_MAX + RL_CLOSE_REASON_MAX + 64];
    const rl_body *meta = NULL, *scope = NULL;
    size_t n = 0;
    switch (m->topic) {
    case RL_T_WS_JOIN:
        meta = m->ctl.join.meta;
        scope = m->ctl.join.scope;
        n = put_field(buf, sizeof buf, 0, m->ctl.join.conn, strlen(m->ctl.join.conn));
        break;
    case RL_T_WS_LEAVE:
        n = put_field(buf, sizeof buf, 0, m->ctl.conn.conn, strlen(m->ctl.conn.conn));
        break;
    case RL_T_WS_REHOME:
        n = put_field(buf, sizeof buf, 0, m->ctl.rehome.conn, strlen(m->ctl.rehome.conn));
        n = put_field(buf, sizeof buf, n, m->ctl.rehome.hub, strlen(m->ctl.rehome.hub));
        break;
    case RL_T_WS_CLOSE:
        n = (size_t)snprintf(buf, sizeof buf, "%d:", m->ctl.close.code);
        n = put_field(buf, sizeof buf, n, m->ctl.close.reason, strlen(m->ctl.close.reason));
        break;
    case RL_T_WS_CONTROL:
        n = put_field(buf, sizeof buf, 0, m->ctl.control.target, strlen(m->ctl.control.target));
        n += (size_t)snprintf(buf + n, sizeof buf - n, "%" PRIu64 ":", m->ctl.control.epoch);
        break;
    case RL_T_API_PUSH:
    case RL_T_API_MESSAGE:
    case RL_T_API_DISCONNECT:
    case RL_T_API_QUERY:
    case RL_T_API_REPLY: /* "req:code:count:" then the topic and data bodies */
        meta = m->ctl.api.topic;
        scope = m->ctl.api.data;
        n = (size_t)snprintf(buf, sizeof buf, "%" PRIu64 ":%d:%" PRIu32 ":", m->ctl.api.req,
                             m->ctl.api.code, m->ctl.api.count);
        break;
    default:
        return -EINVAL;
    }
    size_t extra = (meta ? meta->len + 24 : 2) + (scope ? scope->len + 24 : 2);
    char *o = malloc(n + extra);
    if (!o)
        return -ENOMEM;
    memcpy(o, buf, n);
    size_t cap = n + extra;
    if (m->topic == RL_T_WS_JOIN || rl_topic_is_api_request((rl_topic)m->topic) ||
        m->topic == RL_T_API_REPLY) {
        const rl_body *f[2] = {meta, scope};
        for (int i = 0; i < 2; i++) {
            if (f[i]) {
                n = put_field(o, cap, n, f[i]->data, f[i]->len);
            } else {
                memcpy(o + n, "-:", 2); /* absent */
                n += 2;
            }
        }
    }
    *out = o;
    *len = n;
    return 0;
}

static int remote_send(const char *to, rl_msg *m, void *ud)
{
    (void)ud;
    char node[RL_NODE_ID_MAX];
    if (rl_pid_node(to, node) < 0)
        return -EINVAL;
    if (!rl_redis_connected(cl.cmd))
        return -EHOSTUNREACH;
    /* A request to a node whose inbox was swept would wait for an answer nobody gives: its
       sender is answered at once instead. Anything else still goes (the node may only have been
       stopped or cut off and read again: the welcome and replies of a hub here to its clients). */
    char inc[RL_PID_MAX];
    if (cl.gone.len && (m->topic == RL_T_WS_CLIENT || rl_topic_is_api_request((rl_topic)m->topic)) &&
        pid_incarnation(to, inc) == 0 && rl_map_get(&cl.gone, inc))
        return -EHOSTDOWN;
    outbox *ob = rl_map_get(&cl.outboxes, node);
    if (!ob) {
        ob = calloc(1, sizeof *ob);
        if (!ob || rl_map_set(&cl.outboxes, node, ob) < 0) {
            free(ob);
            return -ENOMEM;
        }
    }
    char *ctl = NULL;
    size_t ctl_len = 0;
    if (!m->body) {
        int rc = wire_ctl(m, &ctl, &ctl_len);
        if (rc < 0) {
            if (rc == -EINVAL)
                rl_warn("cluster", "%s to %s cannot cross nodes", rl_topic_name((rl_topic)m->topic), to);
            return rc;
        }
    }
    size_t bytes = m->body ? m->body->len : ctl_len;
    if (ob->len >= RL_OUTBOX_MAX || ob->bytes + bytes > RL_OUTBOX_BYTES) {
        free(ctl);
        return -EAGAIN;
    }
    out_msg *om = malloc(sizeof *om);
    if (!om) {
        free(ctl);
        return -ENOMEM;
    }
    om->next = NULL;
    om->m = m;
    om->ctl = ctl;
    om->ctl_len = ctl_len;
    snprintf(om->to, sizeof om->to, "%s", to);
    if (ob->tail)
        ob->tail->next = om;
    else
        ob->head = om;
    ob->tail = om;
    ob->len++;
    ob->bytes += bytes;
    cl.queued++;
    rl_turn_request();
    return 0;
}

static void note_redis_clock(long long redis_ms, long long registry_ms);
static void retry_arm(void);

static size_t om_bytes(const out_msg *om) { return om->m->body ? om->m->body->len : om->ctl_len; }

static void om_free(out_msg *om)
{
    rl_msg_free(om->m);
    free(om->ctl);
    free(om);
}

/* The header of a message on the wire: "RL1 topic epoch flags type_off type_len rid_off rid_len
   type_escaped\n" then to, from, topic name and owner as netstrings ("-:" = the system). */
static int wire_header(char *b, size_t cap, const out_msg *om)
{
    const rl_msg *m = om->m;
    int k = snprintf(b, cap, "RL1 %u %" PRIu64 " %u %u %u %u %u %u\n", (unsigned)m->topic, m->epoch,
                     (unsigned)m->flags, m->env.type_off, m->env.type_len, m->env.rid_off,
                     m->env.rid_len, (unsigned)m->env.type_escaped);
    if (k < 0 || (size_t)k >= cap)
        return -1;
    size_t n = put_field(b, cap, (size_t)k, om->to, strlen(om->to));
    n = put_field(b, cap, n, m->from, strlen(m->from));
    n = put_field(b, cap, n, m->topic == RL_T_APP && m->name ? m->name : "", m->topic == RL_T_APP ? m->name_len : 0);
    const char *user = rl_owner_user(m->owner);
    if (user)
        n = put_field(b, cap, n, user, strlen(user));
    else if (n + 2 <= cap)
        memcpy(b + n, "-:", 2), n += 2;
    else
        n += 2;
    return n > cap ? -1 : (int)n;
}

static void bounce(const char *to, const rl_msg *m, int rc);

/* The messages of one XADD, kept until Redis answers it: if it fails (an error, a timeout, a
   connection that closed with it unanswered) each sender that waits is answered (bounce). */
typedef struct xadd_batch {
    size_t n;
    out_msg *msgs[RL_BATCH];
} xadd_batch;

static void xadd_done(xadd_batch *b, int failed)
{
    for (size_t i = 0; i < b->n; i++) {
        if (failed)
            bounce(b->msgs[i]->to, b->msgs[i]->m, -EHOSTUNREACH);
        om_free(b->msgs[i]);
    }
    free(b);
}

static void on_xadd(const redisReply *r, void *ud)
{
    xadd_batch *b = ud;
    int failed = !r || r->type == REDIS_REPLY_ERROR;
    if (failed) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        rl_metric_add(RL_M_MSGS_DROPPED, b->n);
        rl_warn("cluster", "XADD failed: %s; %zu messages not forwarded, their senders answered",
                r ? r->str : "no reply", b->n);
    }
    xadd_done(b, failed);
}

/* Sends up to RL_BATCH messages of ob as one stream entry. */
static void flush_batch(const char *node, outbox *ob)
{
    const char *argv[6 + 2 * RL_BATCH];
    size_t lens[6 + 2 * RL_BATCH];
    static char headers[RL_BATCH][RL_WIRE_HDR_MAX + 1024];
    out_msg *sent[RL_BATCH];
    char key[160];
    int k = snprintf(key, sizeof key, "%sinbox:%s", cl.cfg->redis_prefix, node);
    int argc = 0;
    argv[argc] = "XADD", lens[argc++] = 4;
    argv[argc] = key, lens[argc++] = (size_t)k;
    argv[argc] = "MAXLEN", lens[argc++] = 6;
    argv[argc] = "~", lens[argc++] = 1;
    argv[argc] = RL_STREAM_MAXLEN, lens[argc++] = strlen(RL_STREAM_MAXLEN);
    argv[argc] = "*", lens[argc++] = 1;
    size_t n = 0;
    while (ob->head && n < RL_BATCH) {
        out_msg *om = ob->head;
        ob->head = om->next;
        int hl = wire_header(headers[n], sizeof headers[n], om);
        if (hl < 0) { /* a topic name or user id too long to carry: refuse, counted */
            rl_warn("cluster", "message to %s with a header over %zu bytes dropped", om->to,
                    sizeof headers[n]);
            rl_metric_inc(RL_M_MSGS_DROPPED);
            ob->bytes -= om_bytes(om);
            om_free(om);
            ob->len--;
            cl.queued--;
            continue;
        }
        argv[argc] = headers[n], lens[argc++] = (size_t)hl;
        if (om->m->body)
            argv[argc] = om->m->body->data, lens[argc++] = om->m->body->len;
        else
            argv[argc] = om->ctl, lens[argc++] = om->ctl_len;
        sent[n++] = om;
    }
    if (!ob->head)
        ob->tail = NULL;
    for (size_t i = 0; i < n; i++)
        ob->bytes -= om_bytes(sent[i]);
    ob->len -= n;
    cl.queued -= n;
    if (n == 0)
        return;
    xadd_batch *b = malloc(sizeof *b);
    if (b) {
        b->n = n;
        memcpy(b->msgs, sent, n * sizeof *sent);
    }
    int rc = b ? rl_redis_commandargv(cl.cmd, 0, on_xadd, b, argc, argv, lens) : -ENOMEM;
    if (rc < 0) {
        rl_metric_add(RL_M_MSGS_DROPPED, n);
        if (b) {
            xadd_done(b, 1);
        } else {
            for (size_t i = 0; i < n; i++) {
                bounce(sent[i]->to, sent[i]->m, -EHOSTUNREACH);
                om_free(sent[i]);
            }
        }
    } else {
        rl_metric_add(RL_M_FORWARDED_OUT, n);
    }
}

/* End of a loop turn: everything queued for other nodes goes out, pipelined. */
static void flush_renewals(void);

static void purges_send(void);

static void flush_cb(void *ud)
{
    (void)ud;
    if (cl.purges.len && cl.purge_tokens)
        purges_send();
    if (cl.nrenew)
        flush_renewals();
    if (cl.queued == 0)
        return;
    const char *node;
    void *v;
    for (size_t it = 0; rl_map_next(&cl.outboxes, &it, &node, &v);) {
        outbox *ob = v;
        while (ob->head)
            flush_batch(node, ob);
    }
}

/* ---- transport: receiving ---- */

static void read_next(void);

/* A forwarded message could not be delivered here: answer where a client is waiting, so nothing
   is lost silently. A full hub answers "overloaded"; a hub that is gone (it moved or was
   collected) or fenced (-ESTALE: it does not hold that epoch's lease) sends the connection to its
   node to be placed again. The answers come from the system (this node's runtime). */
static void bounce(const char *to, const rl_msg *m, int rc)
{
    if (m->topic == RL_T_WS_CLIENT && m->from[0]) {
        size_t rl;
        const char *rid = rl_msg_request_id(m, &rl);
        if (rc == -EAGAIN)
            rl_err_send(NULL, m->from, RL_E_OVERLOADED, NULL, rid, rl);
        else
            rl_err_send(NULL, m->from, RL_E_PLUGIN_FAILED, "User hub unavailable, try again", rid, rl);
        if (rc == -ENOENT || rc == -ESTALE)
            rl_send_or_free(NULL, m->from, rl_msg_rehome(m->from, to));
    } else if (m->topic == RL_T_WS_JOIN && (rc == -ENOENT || rc == -ESTALE)) {
        rl_send_or_free(NULL, m->ctl.join.conn, rl_msg_rehome(m->ctl.join.conn, to));
    } else if (rl_topic_is_api_request((rl_topic)m->topic) && m->from[0]) {
        rl_send_or_free(NULL, m->from, rl_msg_api_reply(m->ctl.api.req, rc, 0, NULL));
    } else if (m->topic == RL_T_APP && (m->flags & RL_MSG_GRANTED)) {
        rl_sec_undelivered(m, NULL, rc); /* a plugin's process.send to user.<id> */
    }
}

/* Reads a netstring field "len:bytes" at *p (end e); -1 when malformed. "-:" is absent (-2). */
static int get_field(const char **p, const char *e, const char **s, size_t *n)
{
    if (e - *p >= 2 && (*p)[0] == '-' && (*p)[1] == ':') {
        *p += 2;
        *s = NULL;
        *n = 0;
        return -2;
    }
    size_t v = 0;
    const char *q = *p;
    while (q < e && *q >= '0' && *q <= '9' && v < (1u << 30))
        v = v * 10 + (size_t)(*q++ - '0');
    if (q == *p || q >= e || *q != ':' || (size_t)(e - q - 1) < v)
        return -1;
    *s = q + 1;
    *n = v;
    *p = q + 1 + v;
    return 0;
}

static int get_pid(const char **p, const char *e, char out[RL_PID_MAX])
{
    const char *s;
    size_t n;
    if (get_field(p, e, &s, &n) < 0 || n >= RL_PID_MAX)
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static int get_body(const char **p, const char *e, rl_body **out)
{
    const char *s;
    size_t n;
    int rc = get_field(p, e, &s, &n);
    if (rc == -2)
        return 0;
    if (rc < 0 || !(*out = rl_body_new(s, n)))
        return -1;
    return 0;
}

/* The struct of an internal topic from its wire form (wire_ctl). 0 or -1. */
static int read_ctl(rl_msg *m, const char *v, size_t len)
{
    const char *p = v, *e = v + len, *s;
    size_t n;
    switch (m->topic) {
    case RL_T_WS_JOIN:
        return get_pid(&p, e, m->ctl.join.conn) < 0 || get_body(&p, e, &m->ctl.join.meta) < 0 ||
                       get_body(&p, e, &m->ctl.join.scope) < 0
                   ? -1
                   : 0;
    case RL_T_WS_LEAVE:
        return get_pid(&p, e, m->ctl.conn.conn);
    case RL_T_WS_REHOME:
        return get_pid(&p, e, m->ctl.rehome.conn) < 0 ? -1 : get_pid(&p, e, m->ctl.rehome.hub);
    case RL_T_WS_CLOSE: {
        char *end;
        long code = strtol(p, &end, 10);
        if (end >= e || *end != ':')
            return -1;
        m->ctl.close.code = (int)code;
        p = end + 1;
        if (get_field(&p, e, &s, &n) < 0 || n > RL_CLOSE_REASON_MAX)
            return -1;
        memcpy(m->ctl.close.reason, s, n);
        m->ctl.close.reason[n] = '\0';
        return 0;
    }
    case RL_T_WS_CONTROL:
        if (get_pid(&p, e, m->ctl.control.target) < 0)
            return -1;
        m->ctl.control.epoch = strtoull(p, NULL, 10);
        return 0;
    case RL_T_API_PUSH:
    case RL_T_API_MESSAGE:
    case RL_T_API_DISCONNECT:
    case RL_T_API_QUERY:
    case RL_T_API_REPLY: {
        char *end;
        unsigned long long req = strtoull(p, &end, 10);
        if (end >= e || *end != ':')
            return -1;
        long code = strtol(end + 1, &end, 10);
        if (end >= e || *end != ':' || code < INT32_MIN || code > INT32_MAX)
            return -1;
        unsigned long count = strtoul(end + 1, &end, 10);
        if (end >= e || *end != ':' || count > UINT32_MAX)
            return -1;
        m->ctl.api.req = req;
        m->ctl.api.code = (int)code;
        m->ctl.api.count = (uint32_t)count;
        p = end + 1;
        return get_body(&p, e, &m->ctl.api.topic) < 0 || get_body(&p, e, &m->ctl.api.data) < 0
                   ? -1
                   : 0;
    }
    default:
        return -1;
    }
}

/* One message of a stream entry: header field h, value v. Delivered as sent: the same body
   bytes, the sender and its owner (nodes trust one another; the router checks authority). */
/* Delivers one message of a stream entry. swept: NULL, or the pid prefix "<node>.<incarnation>."
   of a node that died before it read this entry: then only messages this node sent to it are
   looked at, and answered to their senders (bounce) instead of delivered. */
static void deliver_one(const redisReply *h, const redisReply *v, const char *swept)
{
    /* "RL1 topic epoch flags type_off type_len rid_off rid_len type_escaped\n" (wire_header) */
    uint64_t f[8];
    const char *q = h->str + 4, *qe = h->str + h->len;
    int nf = 0, ok = h->len >= 4 && memcmp(h->str, "RL1 ", 4) == 0;
    while (ok && nf < 8) {
        if (q >= qe || *q < '0' || *q > '9') {
            ok = 0;
            break;
        }
        uint64_t num = 0;
        while (q < qe && *q >= '0' && *q <= '9' && num < UINT64_MAX / 10)
            num = num * 10 + (uint64_t)(*q++ - '0');
        f[nf++] = num;
        if (q < qe && *q == (nf < 8 ? ' ' : '\n'))
            q++;
        else
            ok = 0;
    }
    if (!ok || f[0] >= RL_T_COUNT || f[2] > UINT16_MAX || f[3] > UINT32_MAX || f[4] > UINT32_MAX ||
        f[5] > UINT32_MAX || f[6] > UINT32_MAX || f[7] > 1) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        rl_warn("cluster", "malformed stream entry header dropped");
        return;
    }
    unsigned topic = (unsigned)f[0], flags = (unsigned)f[2], toff = (unsigned)f[3],
             tlen = (unsigned)f[4], roff = (unsigned)f[5], rlen = (unsigned)f[6],
             esc = (unsigned)f[7];
    uint64_t epoch = f[1];
    int hdr_end = (int)(q - h->str);
    const char *p = h->str + hdr_end, *e = h->str + h->len, *name, *user;
    size_t nlen, ulen;
    char to[RL_PID_MAX], from[RL_PID_MAX];
    int urc;
    if (get_pid(&p, e, to) < 0 || get_pid(&p, e, from) < 0 || get_field(&p, e, &name, &nlen) < 0 ||
        (urc = get_field(&p, e, &user, &ulen)) == -1) {
        if (swept)
            return;
        rl_metric_inc(RL_M_MSGS_DROPPED);
        rl_warn("cluster", "malformed stream entry header dropped");
        return;
    }
    if (swept && (!rl_pid_is_local(from) || strncmp(to, swept, strlen(swept)) != 0))
        return; /* another node's, or for a later incarnation */
    rl_msg *m;
    int is_data = topic == RL_T_APP || topic == RL_T_WS_CLIENT || topic == RL_T_WS_MESSAGE;
    if (is_data) {
        if ((toff + tlen > v->len) || (roff + rlen > v->len))
            toff = tlen = roff = rlen = 0;
        m = rl_msg_new_data((rl_topic)topic, name, nlen, v->str, v->len);
    } else {
        m = rl_msg_new((rl_topic)topic);
        if (m && read_ctl(m, v->str, v->len) < 0) {
            rl_msg_free(m);
            rl_metric_inc(RL_M_MSGS_DROPPED);
            rl_warn("cluster", "malformed %s dropped", rl_topic_name((rl_topic)topic));
            return;
        }
    }
    if (!m) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    m->epoch = epoch;
    m->arrived_ns = uv_hrtime(); /* another node's clock is not ours: routing counts from here */
    m->flags = (uint16_t)flags;
    m->env.type_off = toff;
    m->env.type_len = tlen;
    m->env.rid_off = roff;
    m->env.rid_len = rlen;
    m->env.type_escaped = (uint8_t)esc;
    memcpy(m->from, from, RL_PID_MAX);
    if (urc == 0 && !(m->owner = rl_owner_get(user, ulen))) {
        rl_msg_free(m);
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    if (swept) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        bounce(to, m, -EHOSTDOWN);
        rl_msg_free(m);
        cl.swept++;
        return;
    }
    rl_metric_inc(RL_M_FORWARDED_IN);
    /* The fence: a message addressed by a lease epoch reaches only the hub holding that lease. */
    int rc = !rl_pid_is_local(to)               ? -ENOENT
             : rl_fence_refuses(to, m->epoch) ? -ESTALE
                                              : rl_send_as(to, m);
    if (rc == -ESTALE)
        rl_metric_inc(RL_M_EPOCH_DROPPED);
    if (rc < 0) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        bounce(to, m, rc);
        rl_msg_free(m);
    }
}

static void deliver_entry(const redisReply *fields, const char *swept)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *h = fields->element[i], *v = fields->element[i + 1];
        if (h->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING)
            deliver_one(h, v, swept);
    }
}

/* Where this node has read its inbox to: field <incarnation> = stream id of the hash
   <prefix>inbox:<node>:read, written after every read on the command connection, ahead of any
   answer to what was read: once an answer reached Redis, so did the position past its request.
   One field per incarnation, so a node restarted under the same id at once does not hide where
   its previous life stopped; at start the hash is pruned to the RL_READ_KEEP latest. */
#define RL_READ_KEEP 8

static void note_read_position(void)
{
    char key[160];
    snprintf(key, sizeof key, "%s:read", cl.inbox_key);
    const char *argv[] = {"HSET", key, rl_node_incarnation(), cl.last_id};
    if (rl_redis_commandargv(cl.cmd, 0, NULL, NULL, 4, argv, NULL) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS);
}

/* 1 when stream id a is older than b ("ms-seq"). */
static int id_older(const char *a, size_t alen, const char *b, size_t blen)
{
    char x[64], y[64];
    if (alen >= sizeof x || blen >= sizeof y)
        return 0;
    memcpy(x, a, alen), x[alen] = '\0';
    memcpy(y, b, blen), y[blen] = '\0';
    char *ex, *ey;
    unsigned long long mx = strtoull(x, &ex, 10), my = strtoull(y, &ey, 10);
    if (mx != my)
        return mx < my;
    return strtoull(*ex == '-' ? ex + 1 : ex, NULL, 10) < strtoull(*ey == '-' ? ey + 1 : ey, NULL, 10);
}

static void on_read_positions(const redisReply *r, void *ud)
{
    (void)ud;
    if (!cl.started || !r || r->type != REDIS_REPLY_ARRAY || r->elements / 2 <= RL_READ_KEEP)
        return;
    size_t n = r->elements / 2, drop = n - RL_READ_KEEP;
    const char **argv = calloc(2 + drop, sizeof *argv);
    size_t *lens = calloc(2 + drop, sizeof *lens);
    char key[160];
    if (!argv || !lens) {
        free(argv);
        free(lens);
        return;
    }
    argv[0] = "HDEL", lens[0] = 4;
    lens[1] = (size_t)snprintf(key, sizeof key, "%s:read", cl.inbox_key);
    argv[1] = key;
    /* the `drop` oldest: each field whose id at least RL_READ_KEEP others are newer than */
    size_t k = 2;
    for (size_t i = 0; i < n && k < 2 + drop; i++) {
        const redisReply *f = r->element[2 * i], *v = r->element[2 * i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        size_t newer = 0;
        for (size_t j = 0; j < n; j++) {
            const redisReply *w = r->element[2 * j + 1];
            if (j != i && w->type == REDIS_REPLY_STRING && id_older(v->str, v->len, w->str, w->len))
                newer++;
        }
        if (newer >= RL_READ_KEEP)
            argv[k] = f->str, lens[k++] = f->len;
    }
    if (k > 2 && rl_redis_commandargv(cl.cmd, 0, NULL, NULL, (int)k, argv, lens) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS);
    free(argv);
    free(lens);
}

static void prune_read_positions(void)
{
    char key[160];
    snprintf(key, sizeof key, "%s:read", cl.inbox_key);
    const char *argv[] = {"HGETALL", key};
    if (rl_redis_commandargv(cl.cmd, 0, on_read_positions, NULL, 2, argv, NULL) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS);
}

static void on_xread(const redisReply *r, void *ud)
{
    (void)ud;
    cl.reading = 0;
    if (!cl.started)
        return;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        if (r)
            rl_warn("cluster", "XREAD: %s", r->str);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        return; /* the state callback restarts reading on reconnect */
    }
    if (!rl_redis_connected(cl.cmd))
        return; /* no answer could leave now: read these entries again once it is back */
    if (rl_now_ms() >= cl.node_valid_until)
        return; /* we may look dead (stopped, cut off): the others may be answering these entries
                   from our inbox; read again after the next acknowledged heartbeat */
    /* [[key, [[id, [f, v, ...]], ...]]] */
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->elements == 2) {
        const redisReply *entries = r->element[0]->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
                continue;
            if (e->element[0]->type == REDIS_REPLY_STRING && e->element[0]->len < sizeof cl.last_id) {
                memcpy(cl.last_id, e->element[0]->str, e->element[0]->len);
                cl.last_id[e->element[0]->len] = '\0';
            }
            if (e->element[1]->type == REDIS_REPLY_ARRAY)
                deliver_entry(e->element[1], NULL);
        }
        if (entries->elements)
            note_read_position();
    }
    read_next();
}

/* Reads only while the command connection is up too: what is delivered here may need answers
   (replies, bounces) to other nodes, and those leave through it. While it is down the entries
   wait in the stream. And only while our registration is certainly alive: past that the others
   may find us gone and answer (and delete) what we have not read, so we must not deliver it too. */
static void read_next(void)
{
    if (cl.reading || !cl.last_id[0] || !rl_redis_connected(cl.blk) || !rl_redis_connected(cl.cmd) ||
        rl_now_ms() >= cl.node_valid_until)
        return;
    char block[16];
    snprintf(block, sizeof block, "%d", RL_READ_BLOCK_MS);
    const char *argv[] = {"XREAD", "COUNT", RL_READ_COUNT, "BLOCK", block, "STREAMS",
                          cl.inbox_key, cl.last_id};
    if (rl_redis_commandargv(cl.blk, RL_READ_BLOCK_MS + 2000, on_xread, NULL, 8, argv, NULL) == 0)
        cl.reading = 1;
}

/* The stream's current tail, so reading starts exactly after what exists now. */
static void on_tail(const redisReply *r, void *ud)
{
    (void)ud;
    if (r && r->type == REDIS_REPLY_STRING && r->len < sizeof cl.last_id) {
        memcpy(cl.last_id, r->str, r->len);
        cl.last_id[r->len] = '\0';
        note_read_position();
        prune_read_positions();
        read_next();
    }
}

static void on_blk_state(rl_redis *r, int connected, void *ud)
{
    (void)r;
    (void)ud;
    if (!connected)
        return;
    if (!cl.last_id[0])
        rl_redis_command(cl.blk, on_tail, NULL, "XADD %s MAXLEN ~ %s * hello %s", cl.inbox_key,
                         RL_STREAM_MAXLEN, rl_node_incarnation());
    else
        read_next();
}

/* ---- the inbox of a node that died ---- */

/* A node that dies leaves in its inbox what it never read: every node answers the messages it
   sent there (a client gets plugin_failed with its request_id), from the dead node's last
   recorded read position on, up to a "hello" entry (a new life of the node reads from there on:
   what follows is answered or delivered by it). Bounded: RL_SWEEP_PAGES pages of
   RL_SWEEP_COUNT entries. */
#define RL_SWEEP_COUNT 64
#define RL_SWEEP_COUNT_S "64"
#define RL_SWEEP_PAGES 64

typedef struct sweep_op {
    char node[RL_NODE_ID_MAX];
    char prefix[RL_PID_MAX];  /* "<node>.<incarnation>." */
    char from_id[64];
    unsigned pages;
    size_t before;            /* cl.swept at the start */
} sweep_op;

static void sweep_page(sweep_op *o);

static void sweep_done(sweep_op *o)
{
    size_t n = cl.swept - o->before;
    if (n)
        rl_warn("cluster", "node %.*s gone: %zu messages sent to it and never read were answered "
                           "to their senders", (int)(strlen(o->prefix) - 1), o->prefix, n);
    free(o);
}

static void on_sweep_page(const redisReply *r, void *ud)
{
    sweep_op *o = ud;
    if (!cl.started || !r || r->type != REDIS_REPLY_ARRAY) {
        sweep_done(o);
        return;
    }
    /* An entry is one XADD of one node: the ones we answered are ours, and are deleted, so the
       node (if it only was stopped or cut off, and reads again) does not deliver them as well. */
    const char *del[2 + RL_SWEEP_COUNT];
    size_t dlen[2 + RL_SWEEP_COUNT];
    char key[160];
    int nd = 2;
    del[0] = "XDEL", dlen[0] = 4;
    dlen[1] = (size_t)snprintf(key, sizeof key, "%sinbox:%s", cl.cfg->redis_prefix, o->node);
    del[1] = key;
    int reader = 0; /* a new life of the node started reading here: the rest is its own */
    for (size_t i = 0; i < r->elements && !reader; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *fv = e->element[1];
        if (fv->type == REDIS_REPLY_ARRAY && fv->elements >= 1 &&
            fv->element[0]->type == REDIS_REPLY_STRING && fv->element[0]->len == 5 &&
            memcmp(fv->element[0]->str, "hello", 5) == 0) {
            reader = 1;
            break;
        }
        if (e->element[0]->len + 2 < sizeof o->from_id) {
            o->from_id[0] = '(';
            memcpy(o->from_id + 1, e->element[0]->str, e->element[0]->len);
            o->from_id[e->element[0]->len + 1] = '\0';
        }
        size_t before = cl.swept;
        if (e->element[1]->type == REDIS_REPLY_ARRAY)
            deliver_entry(e->element[1], o->prefix);
        if (cl.swept != before && nd < 2 + RL_SWEEP_COUNT) {
            del[nd] = e->element[0]->str;
            dlen[nd++] = e->element[0]->len;
        }
    }
    if (nd > 2 && rl_redis_commandargv(cl.cmd, 0, NULL, NULL, nd, del, dlen) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS);
    if (!reader && r->elements == RL_SWEEP_COUNT && ++o->pages < RL_SWEEP_PAGES)
        sweep_page(o);
    else
        sweep_done(o);
}

static void sweep_page(sweep_op *o)
{
    char key[160];
    snprintf(key, sizeof key, "%sinbox:%s", cl.cfg->redis_prefix, o->node);
    const char *argv[] = {"XRANGE", key, o->from_id, "+", "COUNT", RL_SWEEP_COUNT_S};
    if (rl_redis_commandargv(cl.cmd, 0, on_sweep_page, o, 6, argv, NULL) < 0)
        sweep_done(o);
}

static void on_sweep_pos(const redisReply *r, void *ud)
{
    sweep_op *o = ud;
    /* the dead incarnation's position; none: it read nothing we know of */
    if (cl.started && r && r->type == REDIS_REPLY_STRING && r->len + 2 < sizeof o->from_id) {
        o->from_id[0] = '(';
        memcpy(o->from_id + 1, r->str, r->len);
        o->from_id[r->len + 1] = '\0';
        sweep_page(o);
        return;
    }
    sweep_done(o);
}

/* dead: "<node>.<incarnation>", gone at this tick. */
static void sweep_start(const char *dead)
{
    const char *dot = strchr(dead, '.');
    if (!dot || (size_t)(dot - dead) >= RL_NODE_ID_MAX || strlen(dead) + 2 > RL_PID_MAX)
        return;
    sweep_op *o = calloc(1, sizeof *o);
    if (!o)
        return;
    memcpy(o->node, dead, (size_t)(dot - dead));
    snprintf(o->prefix, sizeof o->prefix, "%s.", dead);
    o->before = cl.swept;
    rl_map_set(&cl.gone, dead, (void *)(uintptr_t)(cl.ticks + 1)); /* from now on, refused */
    /* What this turn queued for the dead node goes out first: the sweep then sees it. */
    flush_cb(NULL);
    char key[160], inc[RL_PID_MAX];
    snprintf(key, sizeof key, "%sinbox:%s:read", cl.cfg->redis_prefix, o->node);
    snprintf(inc, sizeof inc, "%s", dot + 1);
    const char *argv[] = {"HGET", key, inc};
    if (rl_redis_commandargv(cl.cmd, 0, on_sweep_pos, o, 3, argv, NULL) < 0)
        free(o);
}

/* ---- heartbeat and node liveness ---- */

/* {Redis TIME ms, registry value, then "<node>.<incarnation>" of every registered node whose key
   exists}. The time gives the node a bound on Redis's clock (admission deadlines); the registry
   says whether and when Redis lost its data (KEYS[2]). */
static const char live_nodes_src[] =
    "local t = redis.call('TIME')\n"
    "local out = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),\n"
    "             tonumber(redis.call('GET', KEYS[2]) or '0') or 0}\n"
    "for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  local v = redis.call('GET', ARGV[1] .. id)\n"
    "  if v then\n"
    "    local ok, info = pcall(cjson.decode, v)\n"
    "    if ok and type(info) == 'table' and info.incarnation then\n"
    "      out[#out + 1] = id .. '.' .. info.incarnation\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

int rl_cluster_pid_alive(const char *pid)
{
    if (rl_pid_is_local(pid))
        return 1;
    const char *dot = strchr(pid, '.');
    dot = dot ? strchr(dot + 1, '.') : NULL;
    if (!dot || (size_t)(dot - pid) >= RL_NODE_ID_MAX * 2)
        return 0;
    char inc[RL_NODE_ID_MAX * 2];
    memcpy(inc, pid, (size_t)(dot - pid));
    inc[dot - pid] = '\0';
    return rl_map_get(&cl.live, inc) != NULL;
}

static void lease_rels_retry(void);

static void run_tick_cb(void)
{
    cl.purge_tokens = RL_PURGES_PER_TICK;
    if (cl.lease_rels.len && rl_redis_connected(cl.cmd))
        lease_rels_retry();
    if (cl.tick_cb)
        cl.tick_cb();
    cl.reregistered = 0;
}

int rl_cluster_reregistered(void) { return cl.reregistered; }

void rl_cluster_hub_info(const char *user, const char *hub_pid, uint64_t epoch, size_t clients,
                         int created)
{
    char key[RL_CKEY_MAX], ep[24], cn[24], now[24];
    if (rl_ckey_user(key, sizeof key, cl.cfg->redis_prefix, user, "hub") < 0)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(ep, sizeof ep, "%llu", (unsigned long long)epoch);
    snprintf(cn, sizeof cn, "%zu", clients);
    snprintf(now, sizeof now, "%llu", /* wall clock ms, for people */
             (unsigned long long)ts.tv_sec * 1000ULL + (unsigned long long)(ts.tv_nsec / 1000000));
    const char *argv[] = {"HSET", key, "node", rl_node_id(), "pid", hub_pid, "epoch", ep,
                          "clients", cn, "last_active", now, "created_at", now};
    if (rl_redis_commandargv(cl.cmd, 0, NULL, NULL, created ? 14 : 12, argv, NULL) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS);
}

static void on_live_nodes(const redisReply *r, void *ud)
{
    (void)ud;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_INTEGER || r->element[1]->type != REDIS_REPLY_INTEGER) {
        if (r && r->type == REDIS_REPLY_ERROR)
            rl_warn("cluster", "live_nodes: %s", r->str);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        run_tick_cb();
        return;
    }
    note_redis_clock(r->element[0]->integer, r->element[1]->integer);
    cl.ticks++;
    const char *gk;
    void *gv;
    for (size_t it = 0; rl_map_next(&cl.gone, &it, &gk, &gv);)
        if ((uintptr_t)gv + RL_GONE_TICKS <= cl.ticks + 1)
            rl_map_del(&cl.gone, gk);
    rl_map now;
    rl_map_init(&now);
    for (size_t i = 2; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            rl_map_set(&now, r->element[i]->str, (void *)1);
    for (size_t i = 0; i < cl.ndead; i++)
        free((char *)cl.dead[i]);
    cl.ndead = 0;
    const char *k;
    for (size_t it = 0; rl_map_next(&cl.live, &it, &k, NULL);) {
        if (rl_map_get(&now, k))
            continue;
        const char **nd = realloc(cl.dead, (cl.ndead + 1) * sizeof *nd);
        if (!nd)
            break;
        cl.dead = nd;
        cl.dead[cl.ndead++] = strdup(k);
        rl_warn("cluster", "node %s is gone", k);
        if (cl.dead[cl.ndead - 1])
            sweep_start(cl.dead[cl.ndead - 1]);
    }
    for (size_t it = 0; rl_map_next(&now, &it, &k, NULL);)
        if (!rl_map_get(&cl.live, k)) {
            rl_info("cluster", "node %s is up", k);
            rl_map_del(&cl.gone, k); /* back under the same incarnation (stopped, cut off) */
        }
    rl_map_close(&cl.live);
    cl.live = now;
    run_tick_cb();
}

static void on_heartbeat(const redisReply *r, void *ud)
{
    uint64_t sent = (uint64_t)(uintptr_t)ud;
    long long v;
    if (!cl.started)
        return;
    if (rl_cs_parse_int(r, &v) < 0) {
        if (cl.ready)
            rl_warn("cluster", "heartbeat failed: %s", r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
        rl_metric_inc(RL_M_REDIS_ERRORS);
        cl.ready = 0;
        run_tick_cb(); /* hubs past their validity are stopped */
        return;
    }
    if (!cl.ready)
        rl_info("cluster", "registered in redis as %s.%s", rl_node_id(), rl_node_incarnation());
    if (v == 3)
        rl_warn("cluster", "node id %s was registered by another live incarnation: replaced", rl_node_id());
    /* Our own clock decides, not only the key: a stale heartbeat that reached Redis late (the
       data of a socket we gave up on) can re-create the key, so "present" proves nothing once no
       renewal was acknowledged within node_ttl. Other nodes may have reclaimed our entries. */
    uint64_t now = rl_now_ms();
    if (cl.registered && (v != 1 || now >= cl.node_valid_until)) {
        rl_warn("cluster", "registration %s: re-asserting connections and leases",
                v != 1 ? "had lapsed (key gone)" : "may have lapsed (no renewal acknowledged within node_ttl)");
        cl.reregistered = 1;
        cl.lapses++; /* every lease is checked in Redis at its next renewal */
    }
    cl.registered = 1;
    cl.ready = 1;
    cl.node_valid_until = sent + cl.cfg->node_ttl_ms - RL_SAFETY_MS;
    read_next(); /* reading may have waited for a registration certainly alive */
    rl_metric_set(RL_M_REDIS_RTT_US, (rl_now_ms() - sent) * 1000);
    rl_hist_observe_ns(RL_H_REDIS_HEARTBEAT, (rl_now_ms() - sent) * 1000000);
    char nodes[RL_CKEY_MAX], prefix[RL_CKEY_MAX], reg[RL_CKEY_MAX];
    rl_ckey_nodes(nodes, sizeof nodes, cl.cfg->redis_prefix);
    rl_ckey_registry(reg, sizeof reg, cl.cfg->redis_prefix);
    rl_ckey_node(prefix, sizeof prefix, cl.cfg->redis_prefix, "");
    const char *args[] = {nodes, reg, prefix};
    if (rl_redis_script(cl.cmd, &cl.live_script, on_live_nodes, NULL, 2, 3, args, NULL) < 0)
        run_tick_cb();
}

static void tick(uv_timer_t *t)
{
    (void)t;
    char addr[128];
    snprintf(addr, sizeof addr, "%s:%d", cl.cfg->listen_host, cl.cfg->listen_port);
    uint64_t sent = rl_now_ms();
    if (rl_cs_heartbeat(cl.cmd, cl.cfg->redis_prefix, rl_node_id(), rl_node_incarnation(), addr,
                        cl.started_at, RL_VERSION, cl.cfg->node_ttl_ms, cl.registered, on_heartbeat,
                        (void *)(uintptr_t)sent) < 0) {
        if (cl.ready)
            rl_warn("cluster", "redis unreachable: not ready");
        cl.ready = 0;
        run_tick_cb();
    }
}

static void on_cmd_state(rl_redis *r, int connected, void *ud)
{
    (void)r;
    (void)ud;
    if (connected) {
        rl_info("cluster", "redis connected");
        read_next(); /* reading waited for this connection */
        tick(&cl.tick); /* register at once */
        if (cl.releases.len)
            retry_arm();
    } else {
        rl_warn("cluster", "redis connection lost");
        cl.ready = 0;
    }
}

/* ---- operations for the central hub ---- */

typedef struct op {
    union {
        rl_cluster_admit_cb admit;
        rl_cluster_lease_cb lease;
    } cb;
    void *ud;
    uint64_t sent;
    uint64_t gen; /* cl.lapses when sent */
    char user[]; /* lease ops: the user (marked when the lease is seen ours) */
} op;

static op *op_new_user(void *cb, void *ud, const char *user)
{
    size_t ul = user ? strlen(user) : 0;
    op *o = malloc(sizeof *o + ul + 1);
    if (!o)
        return NULL;
    memcpy(o->user, user ? user : "", ul + 1);
    o->cb.admit = (rl_cluster_admit_cb)cb;
    o->ud = ud;
    o->sent = rl_now_ms();
    o->gen = cl.lapses;
    return o;
}

static op *op_new(void *cb, void *ud) { return op_new_user(cb, ud, NULL); }

/* ---- exact accounting: deadlines, releases retried until confirmed ---- */

/* Redis's clock as of a live_nodes reply. The script ran before the reply arrived, so
   redis_ms - now is a lower bound of (Redis clock - loop clock): a deadline converted with it is
   never later in Redis than the moment this node gives up. */
static void note_redis_clock(long long redis_ms, long long registry_ms)
{
    uint64_t now = rl_now_ms();
    cl.redis_offset = (int64_t)redis_ms - (int64_t)now;
    cl.offset_known = 1;
    uint64_t grace = cl.cfg->node_ttl_ms + RL_TICK_MS;
    if (registry_ms > 0 && redis_ms >= registry_ms && (uint64_t)(redis_ms - registry_ms) < grace) {
        uint64_t until = now + grace - (uint64_t)(redis_ms - registry_ms);
        if (cl.recovering_until < now)
            rl_warn("cluster", "redis lost its data %lld ms ago: admitting no newcomers for %llu ms, "
                               "until every node has re-asserted its connections",
                    redis_ms - registry_ms, (unsigned long long)(until - now));
        cl.recovering_until = until;
    }
}

/* The Redis-clock deadline of a command the node gives up on at loop ms until (0: unknown). */
static uint64_t redis_deadline(uint64_t until)
{
    if (!cl.offset_known || (int64_t)until + cl.redis_offset <= 0)
        return 0;
    return (uint64_t)((int64_t)until + cl.redis_offset);
}

static uint64_t cl_rng(void)
{
    /* xorshift64*: jitter only */
    cl.rng ^= cl.rng >> 12;
    cl.rng ^= cl.rng << 25;
    cl.rng ^= cl.rng >> 27;
    return cl.rng * 2685821657736338717ULL;
}

static uint64_t backoff_ms(unsigned attempts)
{
    unsigned sh = attempts < 16 ? attempts : 16;
    uint64_t cap = (uint64_t)RL_RETRY_MIN_MS << sh;
    if (cap > RL_RETRY_MAX_MS)
        cap = RL_RETRY_MAX_MS;
    return cap / 2 + cl_rng() % (cap / 2 + 1); /* equal jitter: nodes do not retry in step */
}

static void inflight_add(const char *pid, uint64_t until)
{
    inflight_admit *a = rl_map_get(&cl.admits, pid);
    if (!a) {
        a = calloc(1, sizeof *a);
        if (!a)
            return; /* then a release may not wait for this one: its deadline still holds */
        snprintf(a->pid, sizeof a->pid, "%s", pid);
        if (rl_map_set(&cl.admits, a->pid, a) < 0) {
            free(a);
            return;
        }
    }
    a->n++;
    if (until > a->until)
        a->until = until;
}

static void inflight_done(const char *pid)
{
    inflight_admit *a = rl_map_get(&cl.admits, pid);
    if (a && --a->n == 0) {
        rl_map_del(&cl.admits, pid);
        free(a);
    }
}

static void rel_free(pending_rel *pr)
{
    free(pr->user);
    free(pr);
}

static void retry_arm(void);
static void on_retry_timer(uv_timer_t *t);

/* The entry is confirmed (or given up): forget it; the end of a burst is logged once. */
static void rel_done(pending_rel *pr)
{
    rl_map_del(&cl.releases, pr->pid);
    rel_free(pr);
    if (cl.burst && cl.releases.len == 0) {
        rl_info("cluster", "pending releases confirmed by redis after %llu ms: %llu entries "
                           "removed, %llu retries",
                (unsigned long long)(rl_now_ms() - cl.burst_t0), (unsigned long long)cl.burst_fixed,
                (unsigned long long)cl.burst_retries);
        cl.burst = 0;
    }
}

static void rel_failed(pending_rel *pr, const char *why)
{
    if (!cl.burst) {
        cl.burst = 1;
        cl.burst_t0 = rl_now_ms();
        cl.burst_retries = cl.burst_fixed = 0;
        rl_warn("cluster", "connection releases failing (%s): retrying until redis confirms "
                           "(%zu pending)", why, cl.releases.len);
    }
    pr->next_at = rl_now_ms() + backoff_ms(pr->attempts);
    pr->attempts++;
    retry_arm();
}

static void on_release(const redisReply *r, void *ud)
{
    pending_rel *pr = ud;
    pr->inflight = 0;
    if (pr->orphan) {
        rel_free(pr);
        return;
    }
    int flag;
    long long count;
    if (rl_cs_parse_pair(r, &flag, &count) < 0) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        rel_failed(pr, r && r->type == REDIS_REPLY_ERROR ? r->str : "no reply");
        return;
    }
    if (flag == 1 && (pr->attempts || pr->repeat)) {
        cl.m_reconciled++; /* an entry the first try could not (or would not) remove */
        cl.burst_fixed++;
    }
    if (pr->repeat) {
        pr->repeat = 0;
        pr->attempts = 0;
        pr->next_at = rl_now_ms() + RL_LATE_MS;
        retry_arm();
        return;
    }
    rel_done(pr);
}

static void rel_send(pending_rel *pr)
{
    if (pr->attempts) {
        cl.m_retries++;
        cl.burst_retries++;
    }
    int rc = rl_cs_release_conn(cl.cmd, cl.cfg->redis_prefix, pr->user, pr->pid, on_release, pr);
    if (rc == 0)
        pr->inflight = 1;
    else if (rc == -ENAMETOOLONG || rc == -EINVAL)
        rel_done(pr); /* cannot ever be sent (and so was never admitted either) */
    else
        rel_failed(pr, rc == -ENOTCONN ? "not connected" : "cannot send");
}

/* Sends what is due (bounded per wake-up) and re-arms for the next due entry. While Redis is not
   connected nothing is tried: the reconnect calls this again. */
static void retry_pump(void)
{
    if (!cl.started)
        return;
    uint64_t now = rl_now_ms(), next = UINT64_MAX;
    size_t sent = 0;
    int up = rl_redis_connected(cl.cmd);
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&cl.releases, &it, &k, &v);) {
        pending_rel *pr = v;
        if (pr->inflight)
            continue;
        uint64_t due = pr->next_at > pr->not_before ? pr->next_at : pr->not_before;
        if (due <= now && up && sent < RL_RETRY_PER_WAKE) {
            sent++;
            rel_send(pr); /* may free pr or re-key nothing: iteration stays valid */
            continue;
        }
        if (due <= now)
            due = now + (up ? 1 : RL_RETRY_MAX_MS); /* over this wake's budget, or down */
        if (due < next)
            next = due;
    }
    if (next != UINT64_MAX)
        uv_timer_start(&cl.retry, on_retry_timer, next - now, 0);
}

static void on_retry_timer(uv_timer_t *t)
{
    (void)t;
    retry_pump();
}

static void retry_arm(void)
{
    if (cl.started)
        uv_timer_start(&cl.retry, on_retry_timer, 0, 0); /* the pump computes the real wait */
}

/* Drops the oldest pending release when the set is full: memory stays bounded in an outage with
   a flood of closes. Counted and logged; its entry is reclaimed only if this node dies. */
static void rel_make_room(void)
{
    if (cl.releases.len < RL_RELEASES_MAX)
        return;
    pending_rel *oldest = NULL;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&cl.releases, &it, &k, &v);) {
        pending_rel *pr = v;
        if (!pr->inflight && (!oldest || pr->seq < oldest->seq))
            oldest = pr;
    }
    if (!oldest)
        return;
    cl.m_dropped++;
    rl_warn("cluster", "%d releases pending: dropping the oldest (%s of %s)", RL_RELEASES_MAX,
            oldest->pid, oldest->user);
    rel_done(oldest);
}

/* Queues the removal of conn's entry; not_before: an admission of it may execute until then. */
static void rel_add(const char *user, const char *conn, uint64_t not_before, int repeat)
{
    inflight_admit *a = rl_map_get(&cl.admits, conn);
    if (a && a->until > not_before)
        not_before = a->until;
    pending_rel *pr = rl_map_get(&cl.releases, conn);
    if (!pr) {
        rel_make_room();
        pr = calloc(1, sizeof *pr);
        if (!pr || !(pr->user = strdup(user))) {
            free(pr);
            rl_metric_inc(RL_M_REDIS_ERRORS);
            return;
        }
        snprintf(pr->pid, sizeof pr->pid, "%s", conn);
        pr->seq = ++cl.rel_seq;
        if (rl_map_set(&cl.releases, pr->pid, pr) < 0) {
            rel_free(pr);
            rl_metric_inc(RL_M_REDIS_ERRORS);
            return;
        }
    }
    if (not_before > pr->not_before)
        pr->not_before = not_before;
    pr->repeat |= (uint8_t)repeat;
    if (!pr->inflight && pr->not_before <= rl_now_ms() && pr->attempts == 0)
        rel_send(pr);
    else
        retry_arm();
}

static void cluster_metrics(rl_metrics_out *out)
{
    static const struct {
        const char *name, *help;
        const uint64_t *v;
    } counters[] = {
        {"relay_redis_retries_total",
         "Connection releases and re-assertions sent again after a failure", &cl.m_retries},
        {"relay_reconciled_entries_total",
         "Connection entries made right in redis after a fault (late releases, re-asserted "
         "connections)", &cl.m_reconciled},
        {"relay_releases_dropped_total", "Pending releases dropped because too many were pending",
         &cl.m_dropped},
        {"relay_admissions_shed_total",
         "Admissions refused at once because redis_inflight_max were in flight to redis (the "
         "client gets 1013)",
         &cl.m_admits_shed},
        {"relay_acquisitions_deferred_total",
         "Hub placements put off to a later tick because redis_inflight_max / 2 were in flight to "
         "redis",
         &cl.m_acquires_deferred},
        {"relay_lease_checks_total",
         "Leases checked in redis because the registration may have lapsed (otherwise a lease "
         "costs no redis work)", &cl.m_lease_checks},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++)
        rl_metrics_put(out, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", counters[i].name,
                       counters[i].help, counters[i].name, counters[i].name,
                       (unsigned long long)*counters[i].v);
    rl_metrics_gauge(out, "relay_pending_releases", "Connection releases not yet confirmed by redis",
                     cl.releases.len);
    rl_metrics_gauge(out, "relay_pending_lease_releases",
                     "Leases given up here whose deletion redis has not confirmed yet",
                     cl.lease_rels.len);
}

/* An admission or re-assertion on the wire. */
typedef struct admit_op {
    rl_cluster_admit_cb cb;
    rl_cluster_reassert_cb rcb;
    void *ud;
    char *user;
    uint64_t until;   /* loop ms when the node gives up on it (Redis refuses it after that) */
    int reassert;
    size_t n;
    char (*pids)[RL_PID_MAX];
} admit_op;

static admit_op *admit_op_new(const char *user, size_t n, const char *const *pids,
                              rl_cluster_admit_cb cb, void *ud)
{
    admit_op *o = calloc(1, sizeof *o + n * RL_PID_MAX);
    if (!o || !(o->user = strdup(user))) {
        free(o);
        return NULL;
    }
    o->cb = cb;
    o->ud = ud;
    o->n = n;
    o->pids = (char (*)[RL_PID_MAX])(o + 1);
    for (size_t i = 0; i < n; i++)
        snprintf(o->pids[i], RL_PID_MAX, "%s", pids[i]);
    o->until = rl_now_ms() + RL_CMD_MS;
    return o;
}

static void admit_op_free(admit_op *o)
{
    free(o->user);
    free(o);
}

static void on_admit(const redisReply *r, void *ud)
{
    admit_op *o = ud;
    int flag;
    long long count;
    int res = -1, answered = rl_cs_parse_pair(r, &flag, &count) == 0;
    if (answered)
        res = flag == 1 ? 1 : flag == 0 ? 0 : -1; /* -1: recovering from a data loss; -2: too late */
    else
        rl_metric_inc(RL_M_REDIS_ERRORS);
    if (cl.started) {
        for (size_t i = 0; i < o->n; i++)
            inflight_done(o->pids[i]);
        /* No answer: it may have executed (the reply was lost) or may still execute (its bytes
           are in flight on a socket we gave up on, until its deadline). The connection is
           refused, so its entry must go: released after the deadline, and once more later. */
        if (!answered && !o->reassert)
            rel_add(o->user, o->pids[0], o->until, 1);
        if (o->reassert && res == 1)
            cl.m_reconciled += (uint64_t)count; /* entries that were missing */
    }
    if (o->reassert) {
        cl.reasserting--;
        o->rcb(res, res == 1 ? (size_t)count : 0, o->ud);
    } else {
        cl.admitting--;
        o->cb(res, o->ud);
    }
    admit_op_free(o);
}

int rl_cluster_admit(const char *user, const char *conn, int limit, rl_cluster_admit_cb cb, void *ud)
{
    if (cl.admitting >= RL_ADMITS_INFLIGHT_MAX) {
        cl.m_admits_shed++;
        return -EAGAIN;
    }
    admit_op *o = admit_op_new(user, 1, &conn, cb, ud);
    if (!o)
        return -ENOMEM;
    int rc = rl_cs_admit_until(cl.cmd, cl.cfg->redis_prefix, user, conn, rl_node_id(), limit,
                               redis_deadline(o->until), cl.cfg->node_ttl_ms + RL_TICK_MS, on_admit, o);
    if (rc < 0) {
        admit_op_free(o);
        return rc;
    }
    cl.admitting++;
    inflight_add(conn, o->until);
    return 0;
}

int rl_cluster_reassert(const char *user, const char *const *conns, size_t n, int retry,
                        rl_cluster_reassert_cb cb, void *ud)
{
    if (n == 0 || n > RL_CLUSTER_REASSERT_MAX)
        return -EINVAL;
    /* after a lapse every user is re-asserted: bounded like admissions, the rest is retried
       with the central hub's backoff */
    if (cl.reasserting >= RL_ADMITS_INFLIGHT_MAX)
        return -EAGAIN;
    admit_op *o = admit_op_new(user, n, conns, NULL, ud);
    if (!o)
        return -ENOMEM;
    o->reassert = 1;
    o->rcb = cb;
    if (retry)
        cl.m_retries++;
    int rc = rl_cs_reassert(cl.cmd, cl.cfg->redis_prefix, user, rl_node_id(), n, conns,
                            redis_deadline(o->until), on_admit, o);
    if (rc < 0) {
        admit_op_free(o);
        return rc;
    }
    cl.reasserting++;
    for (size_t i = 0; i < n; i++)
        inflight_add(conns[i], o->until);
    return 0;
}

/* A node going away makes every node purge each of its users once: that is per-user work in a
   burst (16,000 scripts per node for 100,000 users on six nodes), and in a burst it can delay the
   heartbeats behind it past node_ttl. So purges are a set, sent RL_PURGES_PER_TICK per second at
   most (admissions reclaim dead entries by themselves meanwhile). */

static void purges_send(void)
{
    const char *k;
    for (size_t it = 0; cl.purge_tokens && rl_map_next(&cl.purges, &it, &k, NULL);) {
        if (rl_cs_purge_conns(cl.cmd, cl.cfg->redis_prefix, k, NULL, NULL) < 0) {
            rl_metric_inc(RL_M_REDIS_ERRORS);
            return; /* not connected: the next tick tries again */
        }
        cl.purge_tokens--;
        rl_map_del(&cl.purges, k);
    }
}

void rl_cluster_purge_conns(const char *user)
{
    if (!cl.started || rl_map_set(&cl.purges, user, (void *)1) < 0)
        return;
    rl_turn_request();
}

void rl_cluster_release_conn(const char *user, const char *conn)
{
    if (cl.started)
        rel_add(user, conn, 0, 0);
}

static void on_lease(const redisReply *r, void *ud)
{
    op *o = ud;
    cl.acquiring--;
    rl_lease l = {.status = RL_LEASE_ERROR};
    rl_lease_reply lr;
    if (rl_cs_parse_lease(r, &lr) == 0) {
        l.status = lr.code == RL_LEASE_NEW ? RL_LEASE_WON : lr.code == RL_LEASE_OURS ? RL_LEASE_MINE : RL_LEASE_OTHER;
        l.epoch = lr.epoch;
        snprintf(l.holder, sizeof l.holder, "%s", lr.node);
        snprintf(l.hub_pid, sizeof l.hub_pid, "%s", lr.hub_pid);
        /* A lease of ours is valid while our registration is: the script found our node key */
        l.valid_until = cl.node_valid_until;
        if (cl.started && o->user[0]) {
            if (l.status == RL_LEASE_OTHER)
                unmark_lease(o->user);
            else
                mark_lease(o->user, l.epoch, o->gen);
        }
    } else {
        if (r && r->type == REDIS_REPLY_ERROR)
            rl_warn("cluster", "lease script: %s", r->str);
        rl_metric_inc(RL_M_REDIS_ERRORS);
    }
    o->cb.lease(&l, o->ud);
    free(o);
}

/* GET of a lease: "<node>|<incarnation>|<epoch>|<hub_pid>" or nil. */
static void on_lease_get(const redisReply *r, void *ud)
{
    op *o = ud;
    rl_lease l = {.status = RL_LEASE_ERROR};
    if (r && r->type == REDIS_REPLY_NIL) {
        l.status = RL_LEASE_NONE;
    } else if (r && r->type == REDIS_REPLY_STRING && r->len < 256) {
        char v[256], *save = NULL;
        memcpy(v, r->str, r->len);
        v[r->len] = '\0';
        const char *node = strtok_r(v, "|", &save), *inc = strtok_r(NULL, "|", &save);
        const char *ep = strtok_r(NULL, "|", &save), *hub = strtok_r(NULL, "|", &save);
        if (node && inc && ep && hub && strlen(node) < sizeof l.holder &&
            strlen(hub) < sizeof l.hub_pid) {
            l.epoch = strtoull(ep, NULL, 10);
            snprintf(l.holder, sizeof l.holder, "%s", node);
            snprintf(l.hub_pid, sizeof l.hub_pid, "%s", hub);
            l.status = !rl_cluster_pid_alive(hub) ? RL_LEASE_NONE
                       : rl_pid_is_local(hub)     ? RL_LEASE_MINE
                                                  : RL_LEASE_OTHER;
        }
    } else {
        rl_metric_inc(RL_M_REDIS_ERRORS);
    }
    o->cb.lease(&l, o->ud);
    free(o);
}

int rl_cluster_lease_get(const char *user, rl_cluster_lease_cb cb, void *ud)
{
    char key[RL_CKEY_MAX];
    if (!cl.started || rl_ckey_user(key, sizeof key, cl.cfg->redis_prefix, user, "lease") < 0)
        return -EINVAL;
    op *o = op_new((void *)cb, ud);
    if (!o)
        return -ENOMEM;
    const char *argv[] = {"GET", key};
    int rc = rl_redis_commandargv(cl.cmd, 0, on_lease_get, o, 2, argv, NULL);
    if (rc < 0)
        free(o);
    return rc;
}

/* The node registry as JSON, built in Redis (one string reply). */
static const char nodes_src[] =
    "local out = {}\n"
    "local z = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')\n"
    "for i = 1, #z, 2 do\n"
    "  local n = {id = z[i], last_heartbeat_ms = tonumber(z[i + 1]), alive = false}\n"
    "  local v = redis.call('GET', ARGV[1] .. z[i])\n"
    "  if v then\n"
    "    local ok, info = pcall(cjson.decode, v)\n"
    "    if ok and type(info) == 'table' then\n"
    "      for k, x in pairs(info) do n[k] = x end\n"
    "      n.alive = true\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = n\n"
    "end\n"
    "if #out == 0 then return '[]' end\n"
    "return cjson.encode(out)\n";

typedef struct nodes_op {
    rl_cluster_nodes_cb cb;
    void *ud;
} nodes_op;

static void on_nodes(const redisReply *r, void *ud)
{
    nodes_op *o = ud;
    if (r && r->type == REDIS_REPLY_STRING) {
        o->cb(r->str, r->len, o->ud);
    } else {
        if (r && r->type == REDIS_REPLY_ERROR)
            rl_warn("cluster", "nodes script: %s", r->str);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        o->cb(NULL, 0, o->ud);
    }
    free(o);
}

int rl_cluster_nodes(rl_cluster_nodes_cb cb, void *ud)
{
    static rl_redis_script_def script;
    if (!cl.started)
        return -EINVAL;
    if (!script.name)
        rl_redis_script_init(&script, "api_nodes", nodes_src);
    nodes_op *o = malloc(sizeof *o);
    if (!o)
        return -ENOMEM;
    o->cb = cb;
    o->ud = ud;
    char nodes[RL_CKEY_MAX], prefix[RL_CKEY_MAX];
    rl_ckey_nodes(nodes, sizeof nodes, cl.cfg->redis_prefix);
    rl_ckey_node(prefix, sizeof prefix, cl.cfg->redis_prefix, "");
    const char *args[] = {nodes, prefix};
    int rc = rl_redis_script(cl.cmd, &script, on_nodes, o, 1, 2, args, NULL);
    if (rc < 0)
        free(o);
    return rc;
}

int rl_cluster_acquire_busy(void)
{
    if (!cl.started || cl.acquiring < RL_ACQUIRES_INFLIGHT_MAX)
        return 0;
    cl.m_acquires_deferred++;
    return 1;
}

int rl_cluster_lease_acquire(const char *user, const char *hub_pid, rl_cluster_lease_cb cb, void *ud)
{
    if (cl.acquiring >= RL_ACQUIRES_INFLIGHT_MAX) {
        cl.m_acquires_deferred++;
        return -EAGAIN;
    }
    op *o = op_new_user((void *)cb, ud, user);
    if (!o)
        return -ENOMEM;
    /* After Redis lost its data no lease is granted for this long: a hub of before keeps
       accepting until its node's registration may have lapsed by its own clock (node_ttl after
       the last acknowledged heartbeat), so the grace covers node_ttl too. */
    uint64_t grace = cl.cfg->lease_ttl_ms > cl.cfg->node_ttl_ms ? cl.cfg->lease_ttl_ms : cl.cfg->node_ttl_ms;
    int rc = rl_cs_lease_acquire(cl.cmd, cl.cfg->redis_prefix, user, rl_node_id(),
                                 rl_node_incarnation(), hub_pid, grace, on_lease, o);
    if (rc < 0)
        free(o);
    else
        cl.acquiring++;
    return rc;
}

/* Renewals asked for during a loop turn are answered at its end (never inside the call). A lease
   seen ours since our registration last may have lapsed costs nothing: it is ours until
   node_valid_until (the heartbeat renews the one key all our leases hang on). The others (after a
   lapse, or never confirmed) are checked in Redis, RL_CS_RENEW_MAX per script run. */
struct renew_op {
    char *user;
    uint64_t epoch;
    op *o;
};

typedef struct renew_batch {
    size_t n;
    renew_op ops[RL_CS_RENEW_MAX];
} renew_batch;

/* v: the check's answer (integer 1 ours, 0 not), or NULL (no answer) */
static void renew_done(renew_op *ro, const redisReply *v)
{
    rl_lease l = {.status = RL_LEASE_ERROR};
    if (v && v->type == REDIS_REPLY_INTEGER) {
        l.status = v->integer == 1 ? RL_LEASE_WON : RL_LEASE_OTHER;
        l.valid_until = cl.node_valid_until;
        if (cl.started) {
            if (v->integer == 1)
                mark_lease(ro->user, ro->epoch, ro->o->gen);
            else
                unmark_lease(ro->user);
        }
    }
    ro->o->cb.lease(&l, ro->o->ud);
    free(ro->o);
    free(ro->user);
}

static void on_renew_batch(const redisReply *r, void *ud)
{
    renew_batch *b = ud;
    int ok = r && r->type == REDIS_REPLY_ARRAY && r->elements == b->n;
    if (!ok)
        rl_metric_inc(RL_M_REDIS_ERRORS);
    for (size_t i = 0; i < b->n; i++)
        renew_done(&b->ops[i], ok ? r->element[i] : NULL);
    free(b);
}

static void flush_renewals(void)
{
    uint64_t now = rl_now_ms();
    size_t keep = 0;
    for (size_t i = 0; i < cl.nrenew; i++) { /* answered here: no Redis work */
        renew_op *ro = &cl.renew[i];
        lease_mark *m = rl_map_get(&cl.verified, ro->user);
        if (m && m->epoch == ro->epoch && m->gen == cl.lapses) {
            rl_lease l = {.status = now < cl.node_valid_until ? RL_LEASE_WON : RL_LEASE_ERROR,
                          .epoch = ro->epoch, .valid_until = cl.node_valid_until};
            ro->o->cb.lease(&l, ro->o->ud);
            free(ro->o);
            free(ro->user);
        } else {
            cl.renew[keep++] = *ro;
        }
    }
    cl.nrenew = keep;
    while (cl.nrenew > 0) {
        renew_batch *b = calloc(1, sizeof *b);
        if (!b)
            return;
        size_t n = cl.nrenew < RL_CS_RENEW_MAX ? cl.nrenew : RL_CS_RENEW_MAX;
        const char *users[RL_CS_RENEW_MAX];
        uint64_t epochs[RL_CS_RENEW_MAX];
        for (size_t i = 0; i < n; i++) {
            b->ops[i] = cl.renew[cl.nrenew - n + i];
            users[i] = b->ops[i].user;
            epochs[i] = b->ops[i].epoch;
        }
        cl.nrenew -= n;
        b->n = n;
        cl.m_lease_checks += n;
        if (rl_cs_lease_renew_many(cl.cmd, cl.cfg->redis_prefix, n, users, epochs, rl_node_id(),
                                   rl_node_incarnation(), cl.cfg->lease_ttl_ms, on_renew_batch, b) < 0)
            on_renew_batch(NULL, b); /* every callback runs once, with an error */
    }
}

int rl_cluster_lease_renew(const char *user, uint64_t epoch, rl_cluster_lease_cb cb, void *ud)
{
    if (!cl.started)
        return -ENOTCONN;
    if (cl.nrenew == cl.caprenew) {
        size_t ncap = cl.caprenew ? cl.caprenew * 2 : 64;
        renew_op *nr = realloc(cl.renew, ncap * sizeof *nr);
        if (!nr)
            return -ENOMEM;
        cl.renew = nr;
        cl.caprenew = ncap;
    }
    op *o = op_new((void *)cb, ud);
    char *u = strdup(user);
    if (!o || !u) {
        free(o);
        free(u);
        return -ENOMEM;
    }
    cl.renew[cl.nrenew++] = (renew_op){u, epoch, o};
    rl_turn_request();
    return 0;
}

/* A lease no longer expires by itself: one this node gave up must be deleted, or it would keep
   the user's hub here (a hub that no longer runs) for as long as this node lives. So a release is
   retried every tick until Redis answers it (deleted, or not ours any more: the script checks
   node, incarnation and epoch, so a late one never touches a newer lease). */
#define RL_LEASE_RELS_PER_TICK 1024

typedef struct lease_rel {
    char *user;
    uint64_t epoch;
    uint8_t inflight;
    uint8_t stale; /* replaced by a newer release of the user, or the cluster stopped */
} lease_rel;

static void lease_rel_free(lease_rel *lr)
{
    free(lr->user);
    free(lr);
}

static void on_lease_rel(const redisReply *r, void *ud)
{
    lease_rel *lr = ud;
    lr->inflight = 0;
    if (!cl.started || lr->stale) {
        lease_rel_free(lr);
        return;
    }
    if (r && r->type == REDIS_REPLY_INTEGER) { /* confirmed: deleted (1) or not ours (0) */
        rl_map_del(&cl.lease_rels, lr->user);
        lease_rel_free(lr);
    } else {
        rl_metric_inc(RL_M_REDIS_ERRORS); /* kept: sent again at the next tick */
    }
}

static void lease_rel_send(lease_rel *lr)
{
    if (lr->inflight)
        return;
    if (rl_cs_lease_release(cl.cmd, cl.cfg->redis_prefix, lr->user, rl_node_id(),
                            rl_node_incarnation(), lr->epoch, on_lease_rel, lr) == 0)
        lr->inflight = 1;
}

static void lease_rels_retry(void)
{
    size_t sent = 0;
    const char *k;
    void *v;
    for (size_t it = 0; sent < RL_LEASE_RELS_PER_TICK && rl_map_next(&cl.lease_rels, &it, &k, &v);) {
        lease_rel *lr = v;
        if (!lr->inflight) {
            lease_rel_send(lr);
            sent++;
        }
    }
}

void rl_cluster_lease_release(const char *user, uint64_t epoch)
{
    unmark_lease(user);
    if (!cl.started)
        return;
    lease_rel *lr = calloc(1, sizeof *lr);
    if (!lr || !(lr->user = strdup(user))) {
        free(lr);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        return;
    }
    lr->epoch = epoch;
    lease_rel *old = rl_map_get(&cl.lease_rels, user);
    if (rl_map_set(&cl.lease_rels, user, lr) < 0) {
        lease_rel_free(lr);
        rl_metric_inc(RL_M_REDIS_ERRORS);
        return;
    }
    if (old) { /* an older epoch of the user: that lease was replaced in Redis since */
        if (old->inflight)
            old->stale = 1;
        else
            lease_rel_free(old);
    }
    lease_rel_send(lr);
}

/* ---- start and stop ---- */


int rl_cluster_start(const rl_config *c, char *err, size_t errlen)
{
    memset(&cl, 0, sizeof cl);
    cl.cfg = c;
    rl_cluster_scripts_init();
    rl_redis_script_init(&cl.live_script, "live_nodes", live_nodes_src);
    rl_ckey_inbox(cl.inbox_key, sizeof cl.inbox_key, c->redis_prefix, rl_node_id());
    rl_map_init(&cl.outboxes);
    rl_map_init(&cl.live);
    rl_map_init(&cl.gone);
    rl_map_init_borrowed(&cl.releases);
    rl_map_init_borrowed(&cl.admits);
    rl_map_init(&cl.verified);
    rl_map_init(&cl.lease_rels);
    rl_map_init(&cl.purges);
    cl.purge_tokens = RL_PURGES_PER_TICK;
    cl.rng = uv_hrtime() ^ 0x9e3779b97f4a7c15ULL;
    cl.started_at = (uint64_t)time(NULL) * 1000;
    cl.cmd = rl_redis_new(rl_node_loop(), c->redis_url, "main", err, errlen);
    if (!cl.cmd)
        return -EINVAL;
    cl.blk = rl_redis_new(rl_node_loop(), c->redis_url, "block", err, errlen);
    if (!cl.blk) {
        rl_redis_free(cl.cmd);
        return -EINVAL;
    }
    rl_redis_set_state_cb(cl.cmd, on_cmd_state, NULL);
    rl_redis_set_state_cb(cl.blk, on_blk_state, NULL);
    rl_turn_set(RL_TURN_OUTBOX, flush_cb, NULL);
    uv_timer_init(rl_node_loop(), &cl.tick);
    uv_timer_start(&cl.tick, tick, RL_TICK_MS, RL_TICK_MS);
    uv_timer_init(rl_node_loop(), &cl.retry);
    rl_router_set_remote(remote_send, NULL);
    rl_metrics_add_source(cluster_metrics);
    cl.started = 1;
    return 0;
}

void rl_cluster_stop(void)
{
    if (!cl.started)
        return;
    rl_fence_clear();
    flush_cb(NULL); /* what is queued goes out before the connection closes */
    /* Pending releases get one last try (our entries die with our key anyway); replies to them
       and to admissions still on the wire free their own state. */
    const char *rk;
    void *rv;
    for (size_t it = 0; rl_map_next(&cl.releases, &it, &rk, &rv);) {
        pending_rel *pr = rv;
        if (!pr->inflight &&
            rl_cs_release_conn(cl.cmd, cl.cfg->redis_prefix, pr->user, pr->pid, on_release, pr) == 0)
            pr->inflight = 1;
        if (pr->inflight)
            pr->orphan = 1;
        else
            rel_free(pr);
    }
    rl_map_close(&cl.releases);
    for (size_t it = 0; rl_map_next(&cl.admits, &it, &rk, &rv);)
        free(rv);
    rl_map_close(&cl.admits);
    for (size_t it = 0; rl_map_next(&cl.lease_rels, &it, &rk, &rv);) { /* one last try */
        lease_rel *lr = rv;
        lease_rel_send(lr);
        if (lr->inflight)
            lr->stale = 1; /* its reply frees it */
        else
            lease_rel_free(lr);
    }
    rl_map_close(&cl.lease_rels);
    rl_map_close(&cl.purges);
    uv_timer_stop(&cl.retry);
    uv_close((uv_handle_t *)&cl.retry, NULL);
    cl.started = 0;
    rl_router_set_remote(NULL, NULL);
    rl_cs_node_leave(cl.cmd, cl.cfg->redis_prefix, rl_node_id(), rl_node_incarnation(), NULL, NULL);
    uv_timer_stop(&cl.tick);
    uv_close((uv_handle_t *)&cl.tick, NULL);
    rl_turn_set(RL_TURN_OUTBOX, NULL, NULL);
    rl_redis_free(cl.blk);
    rl_redis_close(cl.cmd, 1000); /* the last XADDs and node_leave still go out */
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&cl.outboxes, &it, &k, &v);) {
        outbox *ob = v;
        while (ob->head) {
            out_msg *om = ob->head;
            ob->head = om->next;
            rl_msg_free(om->m);
            free(om);
        }
        free(ob);
    }
    rl_map_close(&cl.outboxes);
    for (size_t i = 0; i < cl.nrenew; i++) { /* the central hub has stopped: nobody waits */
        free(cl.renew[i].o);
        free(cl.renew[i].user);
    }
    free(cl.renew);
    for (size_t it = 0; rl_map_next(&cl.verified, &it, &k, &v);)
        free(v);
    rl_map_close(&cl.verified);
    rl_map_close(&cl.live);
    rl_map_close(&cl.gone);
    for (size_t i = 0; i < cl.ndead; i++)
        free((char *)cl.dead[i]);
    free(cl.dead);
}
