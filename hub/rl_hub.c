/* The user hub: one process per user; keeps the user's connections and plugin states, routes
 * client messages to plugins by the longest matching prefix, broadcasts everything else. */
#include "rl_hub.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_central.h"
#include "rl_errors.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_lua.h"
#include "rl_metrics.h"

#define RL_SESSION_PREFIX "session_"
#define RL_PLUGIN_CANCEL_MS 10000

size_t rl_hub_plugin_counts[4];

static const char *const status_names[] = {"pending", "running", "stopped", "failed"};

const char *rl_plugin_status_name(rl_plugin_status s) { return status_names[s]; }

typedef struct hub_plugin {
    rl_plugin_status status;
    int restarts;
    char pid[RL_PID_MAX]; /* "" when not running */
} hub_plugin;

typedef struct rl_hub {
    rl_proc proc;
    const rl_config *cfg;
    char *user_id;
    char *user_metadata; /* JSON object text */
    char *scope;
    uint64_t epoch;
    char **conns; /* connection pids, at most max_connections_per_user in normal operation */
    size_t nconns, capconns;
    hub_plugin *plugins; /* parallel to cfg->plugins */
    int cancelling;
    uint64_t valid_until; /* loop ms after which the lease may be someone else's: stop accepting */
} rl_hub;

static void set_status(hub_plugin *hp, rl_plugin_status s)
{
    rl_hub_plugin_counts[hp->status]--;
    hp->status = s;
    rl_hub_plugin_counts[s]++;
}

/* Sends an error to `to`, echoing the request id of the client's message when there was one. */
static void send_error(rl_hub *h, const char *to, rl_err_code e, const char *msg, const cJSON *req)
{
    rl_err_send(h->proc.pid, to, e, msg, req);
}

static int spawn_plugin(rl_hub *h, size_t i)
{
    const rl_plugin_def *def = &h->cfg->plugins[i];
    hub_plugin *hp = &h->plugins[i];
    if (hp->status == RL_PLUGIN_FAILED)
        return -EPERM;
    cJSON *args = cJSON_CreateObject();
    cJSON_AddStringToObject(args, "user_id", h->user_id);
    cJSON *meta = h->user_metadata ? cJSON_Parse(h->user_metadata) : NULL;
    cJSON_AddItemToObject(args, "user_metadata", meta ? meta : cJSON_CreateObject());
    cJSON_AddStringToObject(args, "user_hub_pid", h->proc.pid);
    cJSON *conf = cJSON_AddObjectToObject(args, "config");
    cJSON_AddNumberToObject(conf, "max_connections_per_user", h->cfg->max_connections_per_user);
    cJSON_AddNumberToObject(conf, "queue_multiplier", h->cfg->queue_multiplier);
    char tmo[32];
    snprintf(tmo, sizeof tmo, "%llus",
             (unsigned long long)(h->cfg->user_hub_inactivity_timeout_ms / 1000));
    cJSON_AddStringToObject(conf, "user_hub_inactivity_timeout", tmo);
    if (h->cfg->user_security_scope)
        cJSON_AddStringToObject(conf, "user_security_scope", h->cfg->user_security_scope);
    cJSON_AddStringToObject(conf, "prefix", def->prefix);
    cJSON_AddStringToObject(conf, "process_id", def->id);
    char *json = cJSON_PrintUnformatted(args);
    cJSON_Delete(args);
    if (!json)
        return -ENOMEM;
    char err[256];
    int rc = rl_lua_spawn(def, json, h->proc.pid, hp->pid, err, sizeof err);
    free(json);
    if (rc < 0) {
        rl_warn("hub", "user %s: plugin %s failed to start: %s", h->user_id, def->id, err);
        hp->pid[0] = '\0';
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
        if (strcmp(h->conns[i], pid) == 0)
            return (ssize_t)i;
    return -1;
}

static void notify_session(rl_hub *h, const char *topic)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        if (strcmp(h->cfg->plugins[i].prefix, RL_SESSION_PREFIX) == 0 && h->plugins[i].pid[0]) {
            if (rl_send(h->proc.pid, h->plugins[i].pid, topic, "{}", 2) < 0)
                rl_metric_inc(RL_M_MSGS_DROPPED);
            return;
        }
    }
}

static void send_welcome(rl_hub *h, const char *conn)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user_id", h->user_id);
    cJSON_AddNumberToObject(o, "client_count", (double)h->nconns);
    cJSON *pl = cJSON_AddObjectToObject(o, "plugins");
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        cJSON *e = cJSON_AddObjectToObject(pl, h->cfg->plugins[i].prefix);
        cJSON_AddStringToObject(e, "status", status_names[h->plugins[i].status]);
        cJSON_AddStringToObject(e, "process_id", h->cfg->plugins[i].id);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (s && rl_send(h->proc.pid, conn, "welcome", s, strlen(s)) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    free(s);
}

/* Payload {"client_pid":C,...} -> C, or NULL. */
static const char *client_pid_of(const cJSON *o)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "client_pid");
    return cJSON_IsString(c) && c->valuestring[0] ? c->valuestring : NULL;
}

/* Tells the central hub of this node the hub's client count (all nodes' connections), for GC. */
static void report_activity(rl_hub *h)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user_id", h->user_id);
    cJSON_AddNumberToObject(o, "client_count", (double)h->nconns);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s || rl_send(h->proc.pid, rl_central_pid(), "hub.activity", s, strlen(s)) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    free(s);
}

static void on_join(rl_hub *h, const cJSON *payload)
{
    const char *conn = client_pid_of(payload);
    if (!conn)
        return;
    if (find_conn(h, conn) < 0) {
        if (h->nconns == h->capconns) {
            size_t ncap = h->capconns ? h->capconns * 2 : 4;
            char **nc = realloc(h->conns, ncap * sizeof *nc);
            if (!nc)
                return;
            h->conns = nc;
            h->capconns = ncap;
        }
        h->conns[h->nconns] = strdup(conn);
        if (!h->conns[h->nconns])
            return;
        h->nconns++;
        if (h->nconns == 1)
            notify_session(h, "resume"); /* before the welcome, as the original */
        report_activity(h);
    }
    send_welcome(h, conn);
}

static void on_leave(rl_hub *h, const cJSON *payload)
{
    const char *conn = client_pid_of(payload);
    ssize_t i = conn ? find_conn(h, conn) : -1;
    if (i < 0)
        return;
    free(h->conns[i]);
    h->conns[i] = h->conns[--h->nconns];
    if (h->nconns == 0)
        notify_session(h, "shutdown");
    report_activity(h);
}

/* Longest matching prefix: cfg->plugins is sorted longest first. */
static ssize_t match_plugin(const rl_hub *h, const char *type)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        const char *p = h->cfg->plugins[i].prefix;
        if (strncmp(type, p, strlen(p)) == 0)
            return (ssize_t)i;
    }
    return -1;
}

static void on_client_message(rl_hub *h, rl_msg *m)
{
    const char *conn = m->from;
    cJSON *req = rl_json_parse(m->payload, m->len);
    if (!req) {
        send_error(h, conn, RL_E_INVALID_JSON, NULL, NULL);
        return;
    }
    if (!cJSON_IsObject(req)) {
        send_error(h, conn, RL_E_UNKNOWN_COMMAND, "Message must be a JSON object", NULL);
        goto done;
    }
    if (!rl_json_depth_ok(req, RL_JSON_MAX_DEPTH)) {
        send_error(h, conn, RL_E_INVALID_JSON, "JSON nests deeper than 100 levels", req);
        goto done;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(req, "type");
    if (!cJSON_IsString(type) || !type->valuestring[0]) {
        send_error(h, conn, RL_E_UNKNOWN_COMMAND, NULL, req);
        goto done;
    }
    ssize_t i = match_plugin(h, type->valuestring);
    if (i < 0) {
        char msg[300];
        snprintf(msg, sizeof msg, "No plugin found for command: %.200s", type->valuestring);
        send_error(h, conn, RL_E_PLUGIN_NOT_FOUND, msg, req);
        goto done;
    }
    const rl_plugin_def *def = &h->cfg->plugins[i];
    hub_plugin *hp = &h->plugins[i];
    if (hp->status == RL_PLUGIN_FAILED || (!hp->pid[0] && spawn_plugin(h, (size_t)i) < 0)) {
        char msg[300];
        snprintf(msg, sizeof msg, "Plugin %s has failed permanently", def->prefix);
        send_error(h, conn, RL_E_PLUGIN_FAILED, msg, req);
        goto done;
    }
    /* The plugin gets the client's object as is, plus conn_pid (never the client's own). */
    cJSON_DeleteItemFromObjectCaseSensitive(req, "conn_pid");
    cJSON_AddStringToObject(req, "conn_pid", conn);
    char *payload = cJSON_PrintUnformatted(req);
    if (!payload) {
        send_error(h, conn, RL_E_OVERLOADED, "Out of memory", req);
        goto done;
    }
    const char *topic = type->valuestring + strlen(def->prefix);
    int rc = rl_send(conn, hp->pid, topic, payload, strlen(payload));
    free(payload);
    if (rc == -EAGAIN)
        send_error(h, conn, RL_E_OVERLOADED, "Plugin queue full, message not accepted", req);
    else if (rc < 0)
        send_error(h, conn, RL_E_PLUGIN_FAILED, "Plugin could not be reached", req);
    else
        rl_metric_inc(RL_M_MSGS_ROUTED);
done:
    cJSON_Delete(req);
}

static int all_plugins_stopped(const rl_hub *h)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        if (h->plugins[i].pid[0])
            return 0;
    return 1;
}

static void on_plugin_exit(rl_hub *h, const cJSON *payload)
{
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(payload, "pid");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(payload, "error");
    if (!cJSON_IsString(pid))
        return;
    for (size_t i = 0; i < h->cfg->nplugins; i++) {
        hub_plugin *hp = &h->plugins[i];
        if (strcmp(hp->pid, pid->valuestring) != 0)
            continue;
        hp->pid[0] = '\0';
        if (h->cancelling) {
            set_status(hp, RL_PLUGIN_STOPPED);
        } else if (!cJSON_IsString(error)) {
            set_status(hp, RL_PLUGIN_STOPPED); /* restarts lazily on next use */
        } else {
            rl_metric_inc(RL_M_PLUGINS_CRASHED);
            rl_warn("hub", "user %s: plugin %s crashed: %s", h->user_id, h->cfg->plugins[i].id,
                    error->valuestring);
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

static void broadcast(rl_hub *h, rl_msg *m)
{
    for (size_t i = 0; i < h->nconns; i++)
        if (rl_send(m->from[0] ? m->from : h->proc.pid, h->conns[i], m->topic, m->payload, m->len) < 0)
            rl_metric_inc(RL_M_MSGS_DROPPED);
}

/* "node.down" {"node":"<node>.<incarnation>"}: forget the connections of a dead node. */
static void on_node_down(rl_hub *h, const cJSON *payload)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(payload, "node");
    if (!cJSON_IsString(n))
        return;
    size_t before = h->nconns, plen = strlen(n->valuestring);
    for (size_t i = 0; i < h->nconns;) {
        if (strncmp(h->conns[i], n->valuestring, plen) == 0 && h->conns[i][plen] == '.') {
            free(h->conns[i]);
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

/* The lease is gone or handed over: tell every connection to find the user's new hub
   ("ws.rehome" makes its node place the user again), then stop. */
static void hand_over(rl_hub *h)
{
    char payload[RL_PID_MAX + 32];
    int n = snprintf(payload, sizeof payload, "{\"hub_pid\":\"%s\"}", h->proc.pid);
    for (size_t i = 0; i < h->nconns; i++)
        rl_send(h->proc.pid, h->conns[i], "ws.rehome", payload, (size_t)n);
    h->valid_until = 0;
    h->proc.ops->cancel(&h->proc, RL_PLUGIN_CANCEL_MS);
}

static void hub_handle(rl_proc *p, rl_msg *m)
{
    rl_hub *h = (rl_hub *)p;
    if (m->epoch && m->epoch != h->epoch) {
        rl_metric_inc(RL_M_EPOCH_DROPPED);
        goto done;
    }
    int from_node = !m->epoch && strcmp(m->from, rl_central_pid()) == 0; /* our own central */
    if (from_node && strcmp(m->topic, "hub.handover") == 0) {
        hand_over(h);
        goto done;
    }
    if (from_node && strcmp(m->topic, "node.down") == 0) {
        cJSON *nd = cJSON_ParseWithLength(m->payload, m->len);
        if (nd)
            on_node_down(h, nd);
        cJSON_Delete(nd);
        goto done;
    }
    if ((h->cancelling || rl_now_ms() >= h->valid_until) && strcmp(m->topic, "pid.exit") != 0) {
        /* Fenced: another hub may own the user now. Only plugin exits still matter; a client
           is told to retry (its node places the user again). */
        if (strcmp(m->topic, "ws.message") == 0 && m->from[0]) {
            cJSON *req = cJSON_ParseWithLength(m->payload, m->len);
            send_error(h, m->from, RL_E_PLUGIN_FAILED, "User hub is moving, try again", req);
            cJSON_Delete(req);
        }
        rl_metric_inc(RL_M_EPOCH_DROPPED);
        goto done;
    }
    if (strcmp(m->topic, "ws.message") == 0 && m->from[0]) {
        on_client_message(h, m);
        goto done;
    }
    int join = strcmp(m->topic, "ws.join") == 0, leave = strcmp(m->topic, "ws.leave") == 0,
        ex = strcmp(m->topic, "pid.exit") == 0;
    if (join || leave || ex) {
        cJSON *payload = cJSON_ParseWithLength(m->payload, m->len);
        if (payload) {
            if (join)
                on_join(h, payload);
            else if (leave)
                on_leave(h, payload);
            else
                on_plugin_exit(h, payload);
        }
        cJSON_Delete(payload);
        goto done;
    }
    broadcast(h, m);
done:
    rl_msg_free(m);
}

/* CANCEL: ask every running plugin to stop; the hub exits when the last one has. */
static void hub_cancel(rl_proc *p, uint64_t deadline_ms)
{
    rl_hub *h = (rl_hub *)p;
    if (h->cancelling)
        return;
    h->cancelling = 1;
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        if (h->plugins[i].pid[0] && rl_cancel(h->plugins[i].pid, deadline_ms) < 0)
            h->plugins[i].pid[0] = '\0';
    if (all_plugins_stopped(h))
        rl_proc_exit(p, NULL);
}

static void hub_free(rl_proc *p)
{
    rl_hub *h = (rl_hub *)p;
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        rl_hub_plugin_counts[h->plugins[i].status]--;
    for (size_t i = 0; i < h->nconns; i++)
        free(h->conns[i]);
    free(h->conns);
    free(h->plugins);
    free(h->user_id);
    free(h->user_metadata);
    free(h->scope);
    free(h);
}

static const rl_proc_ops hub_ops = {
    .kind = "hub", .letter = 'h', .handle = hub_handle, .cancel = hub_cancel, .free = hub_free,
};

static void start_plugins(rl_hub *h)
{
    for (size_t i = 0; i < h->cfg->nplugins; i++)
        if (h->cfg->plugins[i].auto_start && !h->plugins[i].pid[0])
            spawn_plugin(h, i);
}

int rl_hub_activate(const char *pid, uint64_t epoch, uint64_t valid_until)
{
    rl_proc *p = rl_proc_find(pid);
    if (!p || p->ops != &hub_ops)
        return -ENOENT;
    rl_hub *h = (rl_hub *)p;
    h->epoch = epoch;
    h->valid_until = valid_until;
    start_plugins(h);
    return 0;
}

int rl_hub_start(const rl_config *c, const char *user_id, const char *user_metadata_json,
                 const char *scope, uint64_t epoch, int deferred, char pid_out[RL_PID_MAX])
{
    rl_hub *h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->cfg = c;
    h->epoch = epoch;
    h->valid_until = UINT64_MAX;
    h->user_id = strdup(user_id);
    h->user_metadata = user_metadata_json ? strdup(user_metadata_json) : NULL;
    h->scope = scope ? strdup(scope) : NULL;
    h->plugins = calloc(c->nplugins ? c->nplugins : 1, sizeof *h->plugins);
    if (!h->user_id || !h->plugins || (user_metadata_json && !h->user_metadata) ||
        (scope && !h->scope))
        goto fail;
    size_t qcap = (size_t)c->max_connections_per_user * (size_t)c->queue_multiplier;
    if (rl_proc_start(&h->proc, &hub_ops, qcap) < 0)
        goto fail;
    for (size_t i = 0; i < c->nplugins; i++)
        rl_hub_plugin_counts[RL_PLUGIN_PENDING]++;
    rl_metric_inc(RL_M_HUBS_CREATED);
    if (deferred)
        h->valid_until = 0;
    else
        start_plugins(h);
    memcpy(pid_out, h->proc.pid, RL_PID_MAX);
    return 0;
fail:
    free(h->plugins);
    free(h->user_id);
    free(h->user_metadata);
    free(h->scope);
    free(h);
    return -ENOMEM;
}

int rl_hub_set_valid_until(const char *pid, uint64_t until_ms)
{
    rl_proc *p = rl_proc_find(pid);
    if (!p || p->ops != &hub_ops)
        return -ENOENT;
    ((rl_hub *)p)->valid_until = until_ms;
    return 0;
}
