/* Process groups across nodes (rl_pg_redis.h).
 *
 * Membership in Redis is per node, not per member: a join or leave that does not change whether
 * this node has a member of the group costs Redis nothing. A group's key is a sorted set of pg
 * process pids scored by when their node last wrote them (wall-clock ms): a node adds its pid
 * when a group gains its first local member and removes it when the group loses its last (in
 * order, on the command connection), and writes every entry of its groups again every
 * RL_PG_REFRESH_MS (after Redis lost its data, or a command that failed). A sender first removes
 * the entries older than RL_PG_STALE_MS (a node that died, or lost Redis, stopped refreshing),
 * then sends to every pid whose node is alive as of the last tick, or whose entry is younger than
 * node_ttl (a node that started less than a tick ago). So a dead node is skipped from the tick
 * that sees it gone and forgotten after RL_PG_STALE_MS; what was sent to it before is lost
 * (counted in relay_messages_dropped_total by the transport's sweep). */
#include "rl_pg_redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "rl_cluster.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_pg.h"
#include "rl_redis.h"

#define RL_PG_REFRESH_MS 5000
#define RL_PG_STALE_MS 15000   /* an entry not written again for this long is a dead node's */
#define RL_PG_INFLIGHT_MAX 10000 /* group sends waiting for their ZRANGE, node-wide */

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

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ZADD key <now> <our pg pid> (add) or ZREM key <our pg pid>. */
static void set_cmd(int add, const char *scope, size_t slen, const char *group, size_t glen)
{
    char key[2 * RL_PG_NAME_MAX + 128], now[24];
    struct rl_redis *r = rl_cluster_redis();
    const char *pid = rl_pg_pid();
    if (!pr.on || !r || !pid || key_of(key, sizeof key, scope, slen, group, glen) < 0)
        return;
    snprintf(now, sizeof now, "%lld", wall_ms());
    const char *zadd[] = {"ZADD", key, now, pid}, *zrem[] = {"ZREM", key, pid};
    if (rl_redis_commandargv(r, 0, NULL, NULL, add ? 4 : 3, add ? zadd : zrem, NULL) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS); /* the refresh writes it again */
}

static void joined(const char *scope, size_t slen, const char *group, size_t glen)
{
    set_cmd(1, scope, slen, group, glen);
}

static void left(const char *scope, size_t slen, const char *group, size_t glen)
{
    set_cmd(0, scope, slen, group, glen);
}

/* One group send waiting for the set of nodes: the message for the other nodes, built once. */
typedef struct pg_pending {
    rl_msg *m;
    char key[2 * RL_PG_NAME_MAX + 128];
} pg_pending;

static void on_members(const redisReply *reply, void *ud)
{
    pg_pending *p = ud;
    pr.inflight--;
    const char *self = rl_pg_pid();
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        rl_metric_inc(RL_M_REDIS_ERRORS);
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
    long long young = wall_ms() - (long long)pr.cfg->node_ttl_ms;
    for (size_t i = 0; reply && reply->type == REDIS_REPLY_ARRAY && i + 1 < reply->elements; i += 2) {
        const redisReply *e = reply->element[i], *sc = reply->element[i + 1];
        if (e->type != REDIS_REPLY_STRING || e->len >= RL_PID_MAX || (self && strcmp(e->str, self) == 0))
            continue;
        long long at = sc->type == REDIS_REPLY_STRING ? atoll(sc->str) : 0;
        if (!rl_cluster_pid_alive(e->str) && at < young)
            continue; /* a node that went away (its entry goes at RL_PG_STALE_MS) */
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
    char stale[32];
    snprintf(stale, sizeof stale, "(%lld", wall_ms() - RL_PG_STALE_MS);
    const char *trim[] = {"ZREMRANGEBYSCORE", p->key, "-inf", stale};
    const char *argv[] = {"ZRANGE", p->key, "0", "-1", "WITHSCORES"};
    rl_redis_commandargv(r, 0, NULL, NULL, 4, trim, NULL);
    if (rl_redis_commandargv(r, 0, on_members, p, 5, argv, NULL) < 0) {
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
    set_cmd(1, scope, slen, group, glen);
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
