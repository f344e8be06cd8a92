/* The user hub: one process per user; keeps the user's connections and plugin states, routes
 * client messages to plugins by the longest matching prefix, broadcasts everything else. */
#include "rl_hub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rl_central.h"
#include "rl_errors.h"
#include "rl_envelope.h"
#include "rl_hub_pg.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_security.h"
#include "rl_spawn.h"

#define RL_SESSION_PREFIX "session_"
#define RL_PLUGIN_CANCEL_MS 10000

static size_t plugin_counts[4]; /* plugins of all hubs of this node, by status */

static const char *const status_names[] = {"pending", "running", "stopped", "failed"};

const char *rl_plugin_status_name(rl_plugin_status s) { return status_names[s]; }

typedef struct hub_plugin { /* 16 bytes; a plugin is always of this node: its pid is packed */
    uint64_t serial; /* of its pid (rl_pid_local), 0 when not running */
    uint32_t rnd;
    char kind;
    uint8_t status;   /* rl_plugin_status */
    uint8_t restarts; /* 0 or 1: a second crash fails it */
} hub_plugin;

static int plugin_running(const hub_plugin *hp) { return hp->serial != 0; }

static void plugin_pid(const hub_plugin *hp, char out[RL_PID_MAX])
{
    rl_pid_local p = {.serial = hp->serial, .rnd = hp->rnd, .kind = hp->kind};
    rl_pid_unpack(&p, out);
}

static int plugin_is(const hub_plugin *hp, const char *pid)
{
    rl_pid_local p = {.serial = hp->serial, .rnd = hp->rnd, .kind = hp->kind};
    return plugin_running(hp) && rl_pid_local_is(&p, pid);
}

/* Sends fwd to the plugin (rl_send_as's contract). */
static int plugin_send(const hub_plugin *hp, rl_msg *fwd)
{
    rl_pid_local p = {.serial = hp->serial, .rnd = hp->rnd, .kind = hp->kind};
    return rl_send_as_local(&p, fwd);
}

/* A connection of the user: this node's packed (no allocation), another node's as a string. */
typedef struct hub_conn { /* 16 bytes */
    union {
        uint64_t serial; /* kind != 0: of its rl_pid_local */
        char *remote;    /* kind == 0: malloc'd pid */
    };
    uint32_t rnd;
    char kind;
} hub_conn;

/* The connection's pid: its string, or buf filled in. */
static const char *conn_pid(const hub_conn *c, char buf[RL_PID_MAX])
{
    if (!c->kind)
        return c->remote;
    rl_pid_local p = {.serial = c->serial, .rnd = c->rnd, .kind = c->kind};
    rl_pid_unpack(&p, buf);
    return buf;
}

static int conn_is(const hub_conn *c, const char *pid)
{
    if (!c->kind)
        return strcmp(c->remote, pid) == 0;
    rl_pid_local p = {.serial = c->serial, .rnd = c->rnd, .kind = c->kind};
    return rl_pid_local_is(&p, pid);
}

static int conn_set(hub_conn *c, const char *pid)
{
    rl_pid_local p;
    if (rl_pid_pack(pid, &p) == 0) {
        *c = (hub_conn){.serial = p.serial, .rnd = p.rnd, .kind = p.kind};
        return 0;
    }
    *c = (hub_conn){.remote = strdup(pid)};
    return c->remote ? 0 : -ENOMEM;
}

static void conn_clear(hub_conn *c)
{
    if (!c->kind)
        free(c->remote);
}

/* One allocation: the hub, its plugins and its first connection's slot (hub_tail). 176 bytes
   and 16 per configured plugin and 16 for the slot: with two plugins the 224 class (a separate
   plugins array and slot took 192 + 32 + 16). */
typedef struct rl_hub {
    rl_proc proc; /* owner: the user */
    const rl_config *cfg;
    rl_body *user_metadata; /* JSON object, or NULL */
    hub_conn *conns; /* hub_tail's slot, or malloc'd past one; at most max_connections_per_user in
                        normal operation */
    uint32_t nconns;
    uint32_t capconns : 31, cancelling : 1; /* an int of its own would take 8 bytes more */
    uint64_t valid_until; /* loop ms after which its place may be someone else's: stop accepting */
    hub_plugin plugins[]; /* parallel to cfg->plugins; then the slot */
} rl_hub;

_Static_assert(sizeof(rl_hub) <= 176, "rl_hub: with 2 plugins and the slot, the 224 class");

/* The connection slot after the plugins. */
static hub_conn *hub_tail(rl_hub *h) { return (hub_conn *)&h->plugins[h->cfg->nplugins]; }

static const char *user_of(const rl_hub *h) { return rl_owner_user(h->proc.owner); }

static void set_status(hub_plugin *hp, rl_plugin_status s)
{
    plugin_counts[hp->status]--;
    hp->status = s;
    plugin_counts[s]++;
}

/* Answers the sender of a client message m with error e, echoing its request_id. */
static void answer(rl_hub *h, const rl_msg *m, rl_err_code e, const char *msg)
{
    size_t len;
    const char *rid = rl_msg_request_id(m, &len);
    rl_err_send(&h->proc, m->from, e, msg, rid, len);
}

static int spawn_plugin(rl_hub *h, size_t i)
{
    const rl_plugin_def *def = &h->cfg->plugins[i];
    hub_plugin *hp = &h->plugins[i];
    if (hp->status == RL_PLUGIN_FAILED)
        return -EPERM;
    rl_spawn_args a = {def, h->proc.owner, &h->proc, h->user_metadata, h->cfg};
    char err[256];
    char pid[RL_PID_MAX];
    int rc = rl_spawn(&a, pid, err, sizeof err);
    rl_pid_local packed;
    if (rc == 0 && rl_pid_pack(pid, &packed) < 0) { /* not a pid of this node: cannot be */
        rl_cancel(&h->proc, pid, 0);
        snprintf(err, sizeof err, "plugin pid %s is not of this node", pid);
        rc = -EINVAL;
    }
    if (rc == 0) {
        hp->serial = packed.serial;
        hp->rnd = packed.rnd;
        hp->kind = packed.kind;
    }
    if (rc < 0) {
        rl_warn("hub", "user %s: plugin %s failed to start: %s", user_of(h), def->id, err);
        set_status(hp, RL_PLUGIN_FAILED);
        return rc;
    }
    rl_metric_inc(RL_M_PLUGINS_STARTED);
    set_status(hp, RL_PLUGIN_RUNNING);
    return 0;
}

static ssize_t find_conn(rl_hub *h, const char *pid)
{
    for (size_t i = 0; i < h->nconns; i++)
        if (conn_is(&h->conns[i], pid))
            return (ssize_t)i;
    return -1;
}

static void notify_session(rl_hub *h, const char *topic)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        if (strcmp(h->cfg->plugins[i].prefix, RL_SESSION_PREFIX) == 0 && plugin_running(&h->plugins[i])) {
            rl_msg *m = rl_msg_new_body(RL_T_APP, topic, strlen(topic), rl_body_empty_object());
            char pid[RL_PID_MAX];
            plugin_pid(&h->plugins[i], pid);
            rl_send_or_free(&h->proc, pid, m);
            return;
        }
    }
}

/* Writers for the snprintf-like formatters below (welcome, plugin map, the API's user view):
   each appends to out[n..cap) when there is room and counts what it needs either way. */
#define W(...) n += (size_t)snprintf(n < cap ? out + n : NULL, n < cap ? cap - n : 0, __VA_ARGS__)
#define WS(s) n += rl_json_escape(n < cap ? out + n : NULL, n < cap ? cap - n : 0, (s), strlen(s))

/* {P:{"status":S,<idkey>:ID},...} for every configured plugin; snprintf-like (returns the length
   it needs). The welcome names the id "process_id", the API's user view "id". */
static size_t plugins_format(const rl_hub *h, const char *idkey, char *out, size_t cap)
{
    size_t n = 0;
    W("{");
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        W(i ? "," : "");
        WS(h->cfg->plugins[i].prefix);
        W(":{\"status\":\"%s\",\"%s\":", status_names[h->plugins[i].status], idkey);
        WS(h->cfg->plugins[i].id ? h->cfg->plugins[i].id : "");
        W("}");
    }
    W("}");
    return n;
}

/* {"user_id":U,"client_count":N,"plugins":{P:{"status":S,"process_id":ID},...}} */
static size_t welcome_format(const rl_hub *h, char *out, size_t cap)
{
    size_t n = 0;
    W("{\"user_id\":");
    WS(user_of(h));
    W(",\"client_count\":%zu,\"plugins\":", (size_t)h->nconns);
    n += plugins_format(h, "process_id", n < cap ? out + n : NULL, n < cap ? cap - n : 0);
    W("}");
    return n;
}

static void send_welcome(rl_hub *h, const char *conn)
{
    size_t need = welcome_format(h, NULL, 0);
    rl_msg *m = rl_msg_new_data(RL_T_APP, "welcome", 7, NULL, need);
    if (m)
        welcome_format(h, rl_msg_data(m), need + 1);
    rl_send_or_free(&h->proc, conn, m);
}

/* Tells the central hub of this node the hub's client count (all nodes' connections), for GC. */
static void report_activity(rl_hub *h)
{
    rl_msg *m = rl_msg_new(RL_T_HUB_ACTIVITY);
    if (m)
        m->ctl.activity.clients = h->nconns;
    rl_send_or_free(&h->proc, rl_central_pid(), m);
}

static void on_join(rl_hub *h, const rl_msg *m)
{
    const char *conn = m->ctl.join.conn;
    if (!conn[0])
        return;
    if (find_conn(h, conn) < 0) {
        if (h->nconns == h->capconns) { /* past the slot in the hub (most users hold one) */
            uint32_t ncap = h->capconns * 2;
            int tail = h->conns == hub_tail(h);
            hub_conn *nc = tail ? malloc(ncap * sizeof *nc) : realloc(h->conns, ncap * sizeof *nc);
            if (!nc)
                return;
            if (tail)
                memcpy(nc, h->conns, h->nconns * sizeof *nc);
            h->conns = nc;
            h->capconns = ncap;
        }
        if (conn_set(&h->conns[h->nconns], conn) < 0)
            return;
        h->nconns++;
        if (h->nconns == 1)
            notify_session(h, "resume"); /* before the welcome, as the original */
        report_activity(h);
    }
    send_welcome(h, conn);
}

static void on_leave(rl_hub *h, const char *conn)
{
    ssize_t i = find_conn(h, conn);
    if (i < 0)
        return;
    conn_clear(&h->conns[i]);
    h->conns[i] = h->conns[--h->nconns];
    if (h->nconns == 0)
        notify_session(h, "shutdown");
    report_activity(h);
}

/* Longest matching prefix: cfg->plugins is sorted longest first. */
static ssize_t match_plugin(const rl_hub *h, const char *type, size_t len)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        const char *p = h->cfg->plugins[i].prefix;
        size_t pl = strlen(p);
        if (pl <= len && memcmp(type, p, pl) == 0)
            return (ssize_t)i;
    }
    return -1;
}

/* A client message (the gateway scanned it: an object with a non-empty string type). The same
   message goes on to the plugin, topic = type minus the prefix, sender still the connection:
   no byte of the body is copied. Takes m. */
static void on_client_message(rl_hub *h, rl_msg *m)
{
    if (find_conn(h, m->from) < 0) {
        /* the router let a connection of this user through; only the hub knows its own */
        rl_metric_inc(RL_M_MSGS_REFUSED);
        rl_warn("hub", "user %s: client message from %s, not a connection of this hub: refused",
                user_of(h), m->from);
        rl_msg_free(m);
        return;
    }
    const char *type = m->body->data + m->env.type_off;
    size_t tlen = m->env.type_len;
    char ubuf[256];
    if (m->env.type_escaped) {
        ssize_t n = rl_env_unescape(type, tlen, ubuf, sizeof ubuf);
        if (n < 0) {
            answer(h, m, RL_E_UNKNOWN_COMMAND, "Message type is too long");
            rl_msg_free(m);
            return;
        }
        type = ubuf;
        tlen = (size_t)n;
    }
    ssize_t i = match_plugin(h, type, tlen);
    if (i < 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "No plugin found for command: %.*s", (int)(tlen > 200 ? 200 : tlen),
                 type);
        answer(h, m, RL_E_PLUGIN_NOT_FOUND, msg);
        rl_msg_free(m);
        return;
    }
    const rl_plugin_def *def = &h->cfg->plugins[i];
    hub_plugin *hp = &h->plugins[i];
    if (hp->status == RL_PLUGIN_FAILED || (!plugin_running(hp) && spawn_plugin(h, (size_t)i) < 0)) {
        char msg[300];
        snprintf(msg, sizeof msg, "Plugin %s has failed permanently", def->prefix);
        answer(h, m, RL_E_PLUGIN_FAILED, msg);
        rl_msg_free(m);
        return;
    }
    size_t plen = strlen(def->prefix);
    rl_msg *fwd = m;
    if (type == ubuf) { /* the suffix is not in the body as such: a message with its own name */
        fwd = rl_msg_new_body(RL_T_APP, type + plen, tlen - plen, m->body);
        if (!fwd) {
            answer(h, m, RL_E_OVERLOADED, "Out of memory");
            rl_msg_free(m);
            return;
        }
        memcpy(fwd->from, m->from, RL_PID_MAX);
        fwd->owner = rl_owner_ref(m->owner);
        fwd->env = m->env;
        fwd->flags = m->flags;
    } else {
        m->topic = RL_T_APP;
        m->name = type + plen;
        m->name_len = (uint32_t)(tlen - plen);
    }
    fwd->flags |= RL_MSG_CLIENT;
    uint64_t arrived = m->arrived_ns, now = uv_hrtime();
    int rc = plugin_send(hp, fwd);
    if (rc == 0) {
        rl_metric_inc(RL_M_MSGS_ROUTED);
        rl_hist_observe_ns(RL_H_ROUTING, arrived && now > arrived ? now - arrived : 0);
        if (fwd != m)
            rl_msg_free(m);
        return;
    }
    answer(h, fwd, rc == -EAGAIN ? RL_E_OVERLOADED : RL_E_PLUGIN_FAILED,
           rc == -EAGAIN ? "Plugin queue full, message not accepted" : "Plugin could not be reached");
    if (fwd != m)
        rl_msg_free(fwd);
    rl_msg_free(m);
}

static int all_plugins_stopped(const rl_hub *h)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        if (plugin_running(&h->plugins[i]))
            return 0;
    return 1;
}

static void on_plugin_exit(rl_hub *h, const rl_ctl_exit *ex)
{
    const char *error = ex->error ? ex->error->data : NULL;
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        hub_plugin *hp = &h->plugins[i];
        if (!plugin_is(hp, ex->pid))
            continue;
        hp->serial = 0;
        if (h->cancelling) {
            set_status(hp, RL_PLUGIN_STOPPED);
        } else if (!error) {
            set_status(hp, RL_PLUGIN_STOPPED); /* restarts lazily on next use */
        } else {
            rl_metric_inc(RL_M_PLUGINS_CRASHED);
            rl_warn("hub", "user %s: plugin %s crashed: %s", user_of(h), h->cfg->plugins[i].id,
                    error);
            if (hp->restarts >= 1) {
                set_status(hp, RL_PLUGIN_FAILED);
            } else {
                hp->restarts++;
                spawn_plugin(h, i);
            }
        }
        break;
    }
    if (h->cancelling && all_plugins_stopped(h))
        rl_proc_exit(&h->proc, NULL);
}

/* A topic sent to the hub by one of its user's processes goes to every connection, sharing the
   body. Takes m. */
static void broadcast(rl_hub *h, rl_msg *m)
{
    for (size_t i = 0; i < h->nconns; i++) {
        rl_msg *c = rl_msg_new_body((rl_topic)m->topic, m->name, m->name_len, m->body);
        if (c)
            c->flags = m->flags;
        char buf[RL_PID_MAX];
        rl_send_or_free(&h->proc, conn_pid(&h->conns[i], buf), c);
    }
    rl_msg_free(m);
}

/* An application message from another user's process (the router let it through because the
   sender's policy allows process.send on user.<this user>): a topic that matches a plugin's
   prefix goes to that plugin as the server API's target "hub" does (topic minus the prefix),
   with its sender's pid and user kept (msg:from(), msg:from_user()); any other topic goes to
   every connection, as the API's target "connections". Takes m. */
static void from_other_user(rl_hub *h, rl_msg *m)
{
    ssize_t i = match_plugin(h, m->name, m->name_len);
    if (i < 0) {
        broadcast(h, m);
        return;
    }
    hub_plugin *hp = &h->plugins[i];
    size_t plen = strlen(h->cfg->plugins[i].prefix);
    int rc = -EPIPE;
    if (hp->status != RL_PLUGIN_FAILED && (plugin_running(hp) || spawn_plugin(h, (size_t)i) == 0)) {
        rl_msg *fwd = rl_msg_new_body(RL_T_APP, m->name + plen, m->name_len - plen, m->body);
        rc = -ENOMEM;
        if (fwd) {
            memcpy(fwd->from, m->from, RL_PID_MAX);
            fwd->owner = rl_owner_ref(m->owner);
            fwd->flags = m->flags & ~RL_MSG_CLIENT;
            if ((rc = plugin_send(hp, fwd)) < 0)
                rl_msg_free(fwd);
        }
    }
    if (rc < 0) /* counted, logged and told to the sender */
        rl_sec_undelivered(m, user_of(h), rc == -EAGAIN ? rc : -EPIPE);
    rl_msg_free(m);
}

/* ---- the server API's requests (api/; the router let only the system send them) ---- */

/* Answers an API request m: code 0 or -errno, count connections reached, data a JSON detail. */
static void api_answer(rl_hub *h, const rl_msg *m, int code, uint32_t count, rl_body *data)
{
    if (m->from[0])
        rl_send_or_free(&h->proc, m->from, rl_msg_api_reply(m->ctl.api.req, code, count, data));
}

/* API_PUSH: the data goes to every connection as {"topic":T,"data":D}, one body shared. */
static void api_push(rl_hub *h, const rl_msg *m)
{
    const rl_ctl_api *a = &m->ctl.api;
    uint32_t sent = 0;
    for (size_t i = 0; i < h->nconns; i++) {
        rl_msg *c = rl_msg_new_body(RL_T_APP, a->topic->data, a->topic->len, a->data);
        char buf[RL_PID_MAX];
        if (rl_send_or_free(&h->proc, conn_pid(&h->conns[i], buf), c) == 0)
            sent++;
    }
    api_answer(h, m, 0, sent, NULL);
}

/* API_MESSAGE: routed like a client message (longest prefix, topic minus the prefix), but
   from the API: the plugin sees the API's pid as the sender and no conn_pid. */
static void api_message(rl_hub *h, const rl_msg *m)
{
    const rl_ctl_api *a = &m->ctl.api;
    ssize_t i = match_plugin(h, a->topic->data, a->topic->len);
    if (i < 0) { /* -ENOENT would read as "no hub" */
        api_answer(h, m, -ENOPROTOOPT, 0, NULL);
        return;
    }
    hub_plugin *hp = &h->plugins[i];
    if (hp->status == RL_PLUGIN_FAILED || (!plugin_running(hp) && spawn_plugin(h, (size_t)i) < 0)) {
        api_answer(h, m, -EPIPE, 0, NULL);
        return;
    }
    size_t plen = strlen(h->cfg->plugins[i].prefix);
    rl_msg *fwd = rl_msg_new_body(RL_T_APP, a->topic->data + plen, a->topic->len - plen, a->data);
    if (!fwd) {
        api_answer(h, m, -ENOMEM, 0, NULL);
        return;
    }
    memcpy(fwd->from, m->from, RL_PID_MAX);
    int rc = plugin_send(hp, fwd);
    if (rc < 0)
        rl_msg_free(fwd);
    api_answer(h, m, rc == 0 ? 0 : rc == -EAGAIN ? -EAGAIN : -EPIPE, rc == 0, NULL);
}

/* API_DISCONNECT: every connection is closed with the code and reason. */
static void api_disconnect(rl_hub *h, const rl_msg *m)
{
    uint32_t sent = 0;
    for (size_t i = 0; i < h->nconns; i++) {
        rl_msg *c = rl_msg_new(RL_T_WS_CLOSE);
        if (c) {
            c->ctl.close.code = m->ctl.api.code;
            snprintf(c->ctl.close.reason, sizeof c->ctl.close.reason, "%s",
                     m->ctl.api.topic ? m->ctl.api.topic->data : "");
        }
        char buf[RL_PID_MAX];
        if (rl_send_or_free(&h->proc, conn_pid(&h->conns[i], buf), c) == 0)
            sent++;
    }
    api_answer(h, m, 0, sent, NULL);
}

/* {"hub":{"pid":P,"node":N},"connections":{NODE:COUNT,...},"plugins":{PREFIX:{"status":S,
   "id":ID},...}} */
static size_t query_format(const rl_hub *h, char *out, size_t cap)
{
    size_t n = 0;
    W("{\"hub\":{\"pid\":");
    WS(h->proc.pid);
    W(",\"node\":");
    WS(rl_node_id());
    W("},\"connections\":{");
    int first = 1;
    for (size_t i = 0; i < h->nconns; i++) {
        char node[RL_NODE_ID_MAX], other[RL_NODE_ID_MAX], buf[RL_PID_MAX];
        if (rl_pid_node(conn_pid(&h->conns[i], buf), node) < 0)
            continue;
        size_t seen = 0, count = 0;
        for (size_t j = 0; j < h->nconns; j++) {
            if (rl_pid_node(conn_pid(&h->conns[j], buf), other) < 0 || strcmp(node, other) != 0)
                continue;
            if (j < i)
                seen = 1;
            count++;
        }
        if (seen) /* counted at its first connection */
            continue;
        W(first ? "" : ",");
        first = 0;
        WS(node);
        W(":%zu", count);
    }
    W("},\"plugins\":");
    n += plugins_format(h, "id", n < cap ? out + n : NULL, n < cap ? cap - n : 0);
    W("}");
    return n;
}

#undef W
#undef WS

static void api_query(rl_hub *h, const rl_msg *m)
{
    size_t need = query_format(h, NULL, 0);
    rl_body *b = rl_body_new(NULL, need);
    if (!b) {
        api_answer(h, m, -ENOMEM, 0, NULL);
        return;
    }
    query_format(h, b->data, need + 1);
    api_answer(h, m, 0, h->nconns, b);
    rl_body_unref(b);
}

/* NODE_DOWN: forget the connections of a dead node incarnation ("<node>.<incarnation>"). */
static void on_node_down(rl_hub *h, const char *node)
{
    size_t before = h->nconns, plen = strlen(node);
    for (size_t i = 0; i < h->nconns;) {
        char buf[RL_PID_MAX];
        const char *pid = conn_pid(&h->conns[i], buf);
        if (strncmp(pid, node, plen) == 0 && pid[plen] == '.') {
            conn_clear(&h->conns[i]);
            h->conns[i] = h->conns[--h->nconns];
        } else {
            i++;
        }
    }
    if (h->nconns == before)
        return;
    if (h->nconns == 0)
        notify_session(h, "shutdown");
    report_activity(h);
}

/* Its place is gone or handed over: tell every connection to find the user's new hub
   (WS_REHOME makes its node place the user again), then stop. */
static void hand_over(rl_hub *h)
{
    for (size_t i = 0; i < h->nconns; i++) {
        char buf[RL_PID_MAX];
        rl_send_or_free(&h->proc, conn_pid(&h->conns[i], buf), rl_msg_rehome(NULL, h->proc.pid));
    }
    h->valid_until = 0;
    h->proc.ops->cancel(&h->proc, RL_PLUGIN_CANCEL_MS);
}

/* At debug level, one line per client message a hub accepts (past its validity gate): what the
   fault tests check their invariants on (never two hubs of a user accepting at once, each
   sender's order). at_us: wall clock, comparable between the nodes of one machine. */
static void log_accepted(const rl_hub *h, const rl_msg *m)
{
    size_t len;
    const char *rid = rl_msg_request_id(m, &len);
    char r[65];
    len = rid && len < sizeof r ? len : 0;
    memcpy(r, rid ? rid : "", len);
    r[len] = '\0';
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rl_log_field f[] = {{"user", user_of(h), 0}, {"hub", h->proc.pid, 0}, {"from", m->from, 0},
                        {"rid", r, 0},
                        {"at_us", NULL, (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000}};
    rl_log_fields(RL_LOG_DEBUG, "hub", f, sizeof f / sizeof f[0], "accepted");
}

static void hub_handle(rl_proc *p, rl_msg *m)
{
    rl_hub *h = (rl_hub *)p;
    /* Internal topics from the system: the router let only system senders through. */
    switch (m->topic) {
    case RL_T_HUB_HANDOVER:
        hand_over(h);
        rl_msg_free(m);
        return;
    case RL_T_NODE_DOWN:
        on_node_down(h, m->ctl.node.node);
        rl_msg_free(m);
        return;
    case RL_T_PID_EXIT:
        on_plugin_exit(h, &m->ctl.exit);
        rl_msg_free(m);
        return;
    default:
        break;
    }
    if (h->cancelling || rl_now_ms() >= h->valid_until) {
        /* Fenced: another hub may own the user now. A client is told to retry (its node
           places the user again). */
        if (m->topic == RL_T_WS_CLIENT)
            answer(h, m, RL_E_PLUGIN_FAILED, "User hub is moving, try again");
        else if (rl_topic_is_api_request((rl_topic)m->topic))
            api_answer(h, m, -EBUSY, 0, NULL);
        else if (m->topic == RL_T_APP && (m->flags & RL_MSG_GRANTED) && !(m->flags & RL_MSG_PG))
            rl_sec_undelivered(m, user_of(h), -EBUSY); /* a group's sender is not told */
        rl_metric_inc(RL_M_EPOCH_DROPPED);
        rl_msg_free(m);
        return;
    }
    switch (m->topic) {
    case RL_T_WS_CLIENT:
        if (rl_log_get_level() == RL_LOG_DEBUG)
            log_accepted(h, m);
        on_client_message(h, m);
        return;
    case RL_T_WS_JOIN:
        on_join(h, m);
        break;
    case RL_T_WS_LEAVE:
        on_leave(h, m->ctl.conn.conn);
        break;
    case RL_T_APP:
        if (rl_hub_pg_control(&h->proc, h->user_metadata, m))
            return;
        /* fall through */
    case RL_T_WS_MESSAGE: /* a group's send (RL_MSG_PG) goes to the connections as is */
        if (m->owner && m->owner != h->proc.owner && !(m->flags & RL_MSG_PG))
            from_other_user(h, m);
        else
            broadcast(h, m);
        return;
    case RL_T_API_PUSH:
    case RL_T_API_MESSAGE:
        if (!m->ctl.api.topic || !m->ctl.api.data) /* a malformed request from another node */
            api_answer(h, m, -EINVAL, 0, NULL);
        else if (m->topic == RL_T_API_PUSH)
            api_push(h, m);
        else
            api_message(h, m);
        break;
    case RL_T_API_DISCONNECT:
        api_disconnect(h, m);
        break;
    case RL_T_API_QUERY:
        api_query(h, m);
        break;
    default:
        rl_debug("hub", "user %s: ignoring %s", user_of(h), rl_topic_name((rl_topic)m->topic));
        break;
    }
    rl_msg_free(m);
}

/* The hub exits with messages still queued: nothing is dropped without a word. Clients are
   told to retry; what its plugins sent still reaches the connections. */
static void hub_orphan(rl_proc *p, rl_msg *m)
{
    rl_hub *h = (rl_hub *)p;
    if (m->topic == RL_T_WS_CLIENT) {
        answer(h, m, RL_E_PLUGIN_FAILED, "User hub stopped, try again");
    } else if (rl_topic_is_api_request((rl_topic)m->topic)) {
        api_answer(h, m, -ENOENT, 0, NULL);
    } else if (m->topic == RL_T_APP || m->topic == RL_T_WS_MESSAGE) {
        broadcast(h, m);
        return;
    }
    rl_msg_free(m);
}

/* CANCEL: ask every running plugin to stop; the hub exits when the last one has. */
static void hub_cancel(rl_proc *p, uint64_t deadline_ms)
{
    rl_hub *h = (rl_hub *)p;
    if (h->cancelling)
        return;
    h->cancelling = 1;
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        char pid[RL_PID_MAX];
        plugin_pid(&h->plugins[i], pid);
        if (plugin_running(&h->plugins[i]) && rl_cancel(&h->proc, pid, deadline_ms) < 0)
            h->plugins[i].serial = 0;
    }
    if (all_plugins_stopped(h))
        rl_proc_exit(p, NULL);
}

static void hub_free(rl_proc *p)
{
    rl_hub *h = (rl_hub *)p;
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        plugin_counts[h->plugins[i].status]--;
    }
    for (size_t i = 0; i < h->nconns; i++)
        conn_clear(&h->conns[i]);
    if (h->conns != hub_tail(h))
        free(h->conns);
    rl_body_unref(h->user_metadata);
    free(h);
}

static const rl_proc_ops hub_ops = {
    .kind = "hub",
    .letter = 'h',
    .handle = hub_handle,
    .cancel = hub_cancel,
    .orphan = hub_orphan,
    .free = hub_free,
};

static void start_plugins(rl_hub *h)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        if (h->cfg->plugins[i].auto_start && !plugin_running(&h->plugins[i]))
            spawn_plugin(h, i);
}

int rl_hub_activate(const char *pid, uint64_t valid_until)
{
    rl_proc *p = rl_proc_find(pid);
    if (!p || p->ops != &hub_ops)
        return -ENOENT;
    rl_hub *h = (rl_hub *)p;
    h->valid_until = valid_until;
    start_plugins(h);
    return 0;
}

int rl_hub_start(const rl_config *c, rl_owner *owner, rl_body *user_metadata, int deferred,
                 char pid_out[RL_PID_MAX])
{
    if (!owner)
        return -EINVAL; /* a hub always belongs to a user */
    rl_hub *h = calloc(1, sizeof *h + c->nplugins * sizeof h->plugins[0] + sizeof(hub_conn));
    if (!h)
        return -ENOMEM;
    h->cfg = c;
    h->valid_until = UINT64_MAX;
    h->conns = hub_tail(h);
    h->capconns = 1;
    size_t qcap = (size_t)c->max_connections_per_user * (size_t)c->queue_multiplier;
    if (rl_proc_start(&h->proc, &hub_ops, qcap, owner) < 0) {
        free(h);
        return -ENOMEM;
    }
    h->user_metadata = rl_body_ref(user_metadata);
    for (size_t i = 0; i < c->nplugins; i++)
        plugin_counts[RL_PLUGIN_PENDING]++;
    rl_metric_inc(RL_M_HUBS_CREATED);
    if (deferred)
        h->valid_until = 0;
    else
        start_plugins(h);
    memcpy(pid_out, h->proc.pid, RL_PID_MAX);
    return 0;
}

int rl_hub_set_valid_until(const char *pid, uint64_t until_ms)
{
    rl_proc *p = rl_proc_find(pid);
    if (!p || p->ops != &hub_ops)
        return -ENOENT;
    ((rl_hub *)p)->valid_until = until_ms;
    return 0;
}

void rl_hub_metrics(rl_metrics_out *out)
{
    rl_metrics_put(out, "# HELP relay_plugins Plugin states of live hubs, by status\n"
                        "# TYPE relay_plugins gauge\n");
    for (int s = 0; s < 4; s++)
        rl_metrics_put(out, "relay_plugins{status=\"%s\"} %zu\n", status_names[s], plugin_counts[s]);
}
