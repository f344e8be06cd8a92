/* Process groups across nodes (rl_pg_redis.h).
 *
 * Membership in Redis is per node, not per member: a join or leave that does not change whether
 * this node has a member of the group costs Redis nothing. The set entries have no TTL; they are
 * kept true by three things: this node adds and removes its own as its groups gain their first
 * and lose their last member (in order, on the command connection); every RL_PG_REFRESH_MS it
 * adds its entries again (after Redis lost its data, or a command that failed); and a sender
 * that finds the pid of a node that is not alive (rl_cluster_pid_alive) removes it. So a node
 * that dies leaves entries for at most one send each, and what was sent to it meanwhile is lost
 * (counted in relay_messages_dropped_total by the transport's sweep). */
#include "rl_pg_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "rl_cluster.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_pg.h"
#include "rl_redis.h"

#define RL_PG_REFRESH_MS 5000
#define RL_PG_INFLIGHT_MAX 10000 /* group sends waiting for their SMEMBERS, node-wide */

static struct {
    const rl_config *cfg;
    uv_timer_t *refresh; /* its own block: a closing handle outlives stop */
    size_t inflight;
    int on;
} pr;

static int key_of(char *out, size_t cap, const char *scope, size_t slen, const char *group,
                  size_t glen)
{
    int n = snprintf(out, cap, "%spg:%zu:%.*s:%.*s", pr.cfg->redis_prefix, slen, (int)slen,
                     scope, (int)glen, group);
    return n > 0 && (size_t)n < cap ? n : -1;
}

static void set_cmd(const char *cmd, const char *scope, size_t slen, const char *group,
                    size_t glen)
{
    char key[2 * RL_PG_NAME_MAX + 128];
    struct rl_redis *r = rl_cluster_redis();
    const char *pid = rl_pg_pid();
    if (!pr.on || !r || !pid || key_of(key, sizeof key, scope, slen, group, glen) < 0)
        return;
    const char *argv[] = {cmd, key, pid};
    if (rl_redis_commandargv(r, 0, NULL, NULL, 3, argv, NULL) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS); /* the refresh adds it again */
}

static void joined(const char *scope, size_t slen, const char *group, size_t glen)
{
    set_cmd("SADD", scope, slen, group, glen);
}

static void left(const char *scope, size_t slen, const char *group, size_t glen)
{
    set_cmd("SREM", scope, slen, group, glen);
}

/* One group send waiting for the set of nodes: the message for the other nodes, built once. */
typedef struct pg_pending {
    rl_msg *m;
    char key[2 * RL_PG_NAME_MAX + 128];
} pg_pending;

static void forget_node(const char *key, const char *pid)
{
    struct rl_redis *r = rl_cluster_redis();
    const char *argv[] = {"SREM", key, pid};
    if (r)
        rl_redis_commandargv(r, 0, NULL, NULL, 3, argv, NULL);
}

static void on_members(const redisReply *reply, void *ud)
{
    pg_pending *p = ud;
    pr.inflight--;
    const char *self = rl_pg_pid();
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= RL_PID_MAX || (self && strcmp(e->str, self) == 0))
            continue;
        if (!rl_cluster_pid_alive(e->str)) { /* a node that went away: its members are gone */
            forget_node(p->key, e->str);
            continue;
        }
        rl_msg *c = rl_msg_new_body(RL_T_APP, p->m->name, p->m->name_len, p->m->body);
        if (!c) {
            rl_metric_inc(RL_M_MSGS_DROPPED);
            continue;
        }
        memcpy(c->from, p->m->from, RL_PID_MAX);
        c->flags = p->m->flags;
        if (rl_send_as(e->str, c) < 0) {
            rl_msg_free(c);
            rl_metric_inc(RL_M_MSGS_DROPPED);
        }
    }
    rl_msg_free(p->m);
    free(p);
}

static void send_remote(const char *from, rl_owner *owner, const char *scope, size_t slen,
                        const char *group, size_t glen, const char *name, size_t nlen,
                        rl_body *body)
{
    struct rl_redis *r = rl_cluster_redis();
    if (!pr.on || !r)
        return;
    if (pr.inflight >= RL_PG_INFLIGHT_MAX) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        rl_warn("pg", "group send to %.*s: %d sends wait for Redis, the other nodes' part dropped",
                (int)glen, group, RL_PG_INFLIGHT_MAX);
        return;
    }
    pg_pending *p = calloc(1, sizeof *p);
    if (!p || key_of(p->key, sizeof p->key, scope, slen, group, glen) < 0 ||
        !(p->m = rl_pg_forward_msg(from, owner, scope, slen, group, glen, name, nlen, body))) {
        free(p);
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    const char *argv[] = {"SMEMBERS", p->key};
    if (rl_redis_commandargv(r, 0, on_members, p, 2, argv, NULL) < 0) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        rl_metric_inc(RL_M_MSGS_DROPPED);
        rl_msg_free(p->m);
        free(p);
        return;
    }
    pr.inflight++;
}

static void refresh_one(const char *scope, size_t slen, const char *group, size_t glen, void *ud)
{
    (void)ud;
    set_cmd("SADD", scope, slen, group, glen);
}

static void on_refresh(uv_timer_t *t)
{
    (void)t;
    rl_pg_each_local_group(refresh_one, NULL);
}

static const rl_pg_remote remote = {joined, left, send_remote};

void rl_pg_redis_start(const rl_config *c)
{
    pr.cfg = c;
    pr.on = 1;
    rl_pg_set_remote(&remote);
    if ((pr.refresh = malloc(sizeof *pr.refresh))) {
        uv_timer_init(rl_node_loop(), pr.refresh);
        uv_timer_start(pr.refresh, on_refresh, RL_PG_REFRESH_MS, RL_PG_REFRESH_MS);
        uv_unref((uv_handle_t *)pr.refresh);
    }
}

static void free_handle(uv_handle_t *h) { free(h); }

void rl_pg_redis_stop(void)
{
    if (!pr.on)
        return;
    pr.on = 0;
    rl_pg_set_remote(NULL);
    if (pr.refresh)
        uv_close((uv_handle_t *)pr.refresh, free_handle);
    pr.refresh = NULL;
}
