/* Redis placement: the central hub's placement interface over the cluster's scripts
 * (cluster/rl_cluster_scripts.c, called through rl_cluster.c). A hub's place is the user's lease;
 * the lease epoch is the token stamped on messages to it, and this file keeps the fence: the
 * epoch each local hub holds, which the transport checks before it delivers a forwarded message
 * (the hub itself knows nothing of epochs). */
#include "rl_placement_redis.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rl_cluster.h"
#include "rl_map.h"
#include "rl_metrics.h"

/* ---- the fence: local hub pid -> its lease epoch ---- */

static rl_map fences; /* hub pid -> (void *)(uintptr_t)epoch */
static int fences_inited;

static void fence_set(const char *hub, uint64_t epoch)
{
    if (!fences_inited) {
        rl_map_init(&fences);
        fences_inited = 1;
    }
    if (rl_map_set(&fences, hub, (void *)(uintptr_t)epoch) < 0)
        rl_metric_inc(RL_M_REDIS_ERRORS); /* unfenced hub: its forwarded messages are refused */
}

static void fence_del(const char *hub)
{
    if (fences_inited)
        rl_map_del(&fences, hub);
}

int rl_fence_refuses(const char *to, uint64_t epoch)
{
    if (!epoch)
        return 0; /* not addressed to a hub by its lease */
    uintptr_t held = fences_inited ? (uintptr_t)rl_map_get(&fences, to) : 0;
    if (held)
        return held != (uintptr_t)epoch;
    return rl_pid_kind(to) == 'h'; /* a hub that holds no lease (any more) */
}

void rl_fence_clear(void)
{
    if (fences_inited)
        rl_map_close(&fences);
    fences_inited = 0;
}

/* ---- leases ---- */

/* A lease is only as good as this node's registration: once our node key may have expired,
   another node may take the lease (its holder looks dead). */
static uint64_t lease_until(uint64_t lease_valid_until)
{
    uint64_t node_until = rl_cluster_node_valid_until();
    return lease_valid_until < node_until ? lease_valid_until : node_until;
}

typedef struct lease_op {
    rl_place_cb cb;
    void *ud;
    char hub[RL_PID_MAX]; /* acquire/renew: the local hub it is for */
} lease_op;

static lease_op *lease_op_new(rl_place_cb cb, void *ud, const char *hub)
{
    lease_op *o = calloc(1, sizeof *o);
    if (o) {
        o->cb = cb;
        o->ud = ud;
        if (hub)
            memcpy(o->hub, hub, strnlen(hub, RL_PID_MAX - 1));
    }
    return o;
}

static void to_place(const rl_lease *l, rl_place *p)
{
    memset(p, 0, sizeof *p);
    p->status = l->status == RL_LEASE_WON    ? RL_PLACE_WON
                : l->status == RL_LEASE_MINE  ? RL_PLACE_MINE
                : l->status == RL_LEASE_OTHER ? RL_PLACE_OTHER
                : l->status == RL_LEASE_NONE  ? RL_PLACE_NONE
                                              : RL_PLACE_ERROR;
    p->token = l->epoch;
    if (p->status == RL_PLACE_WON || p->status == RL_PLACE_MINE)
        p->valid_until = lease_until(l->valid_until);
    memcpy(p->hub_pid, l->hub_pid, sizeof p->hub_pid);
    memcpy(p->holder, l->holder, sizeof p->holder);
}

static void on_acquire(const rl_lease *l, void *ud)
{
    lease_op *o = ud;
    rl_place p;
    to_place(l, &p);
    if (p.status == RL_PLACE_WON)
        fence_set(o->hub, p.token);
    else if (p.status == RL_PLACE_MINE && rl_pid_is_local(p.hub_pid))
        fence_set(p.hub_pid, p.token);
    o->cb(&p, o->ud);
    free(o);
}

static int redis_acquire(const char *user, const char *hub_pid, rl_place_cb cb, void *ud)
{
    lease_op *o = lease_op_new(cb, ud, hub_pid);
    if (!o)
        return -ENOMEM;
    int rc = rl_cluster_lease_acquire(user, hub_pid, on_acquire, o);
    if (rc < 0)
        free(o);
    return rc;
}

static void on_renew(const rl_lease *l, void *ud)
{
    lease_op *o = ud;
    rl_place p;
    to_place(l, &p);
    if (p.status == RL_PLACE_OTHER)
        fence_del(o->hub); /* lost: nothing forwarded reaches it any more */
    o->cb(&p, o->ud);
    free(o);
}

static int redis_renew(const char *user, const char *hub_pid, uint64_t token, rl_place_cb cb, void *ud)
{
    lease_op *o = lease_op_new(cb, ud, hub_pid);
    if (!o)
        return -ENOMEM;
    int rc = rl_cluster_lease_renew(user, token, on_renew, o);
    if (rc < 0)
        free(o);
    return rc;
}

/* Always released, whatever release says: a lease lives as long as our registration, so one
   that expired by our clock (or was lost) may still name us in Redis and would keep the user's
   hub "here" for good. The release is checked against our epoch: it never touches a newer one. */
static void redis_give_up(const char *user, const char *hub_pid, uint64_t token, int release)
{
    (void)release;
    fence_del(hub_pid);
    rl_cluster_lease_release(user, token);
}

static void on_locate(const rl_lease *l, void *ud)
{
    lease_op *o = ud;
    rl_place p;
    to_place(l, &p);
    o->cb(&p, o->ud);
    free(o);
}

static int redis_locate(const char *user, rl_place_cb cb, void *ud)
{
    lease_op *o = lease_op_new(cb, ud, NULL);
    if (!o)
        return -ENOMEM;
    int rc = rl_cluster_lease_get(user, on_locate, o);
    if (rc < 0)
        free(o);
    return rc;
}

/* ---- admission ---- */

static int redis_admit(const char *user, const char *conn, int limit, rl_place_admit_cb cb, void *ud)
{
    return rl_cluster_admit(user, conn, limit, cb, ud);
}

static int redis_reassert(const char *user, const char *const *conns, size_t n, int retry,
                          rl_place_reassert_cb cb, void *ud)
{
    return rl_cluster_reassert(user, conns, n, retry, cb, ud);
}

/* ---- the tick ---- */

static rl_place_tick_cb tick_cb;

static void on_tick(void)
{
    if (!tick_cb)
        return;
    rl_place_tick t = {.lapsed = rl_cluster_reregistered()};
    t.ndead = rl_cluster_dead_since_last_tick(&t.dead);
    tick_cb(&t);
}

static void redis_set_tick(rl_place_tick_cb cb)
{
    tick_cb = cb;
    rl_cluster_set_tick_cb(cb ? on_tick : NULL);
}

static const rl_placement redis_placement = {
    .name = "redis",
    .admit = redis_admit,
    .release = rl_cluster_release_conn,
    .reassert = redis_reassert,
    .acquire = redis_acquire,
    .renew = redis_renew,
    .give_up = redis_give_up,
    .locate = redis_locate,
    .hub_info = rl_cluster_hub_info,
    .purge = rl_cluster_purge_conns,
    .pid_alive = rl_cluster_pid_alive,
    .node_valid_until = rl_cluster_node_valid_until,
    .set_tick = redis_set_tick,
    .busy = rl_cluster_acquire_busy,
};

const rl_placement *rl_placement_redis(void) { return &redis_placement; }
_Static_assert(RL_PLACE_REASSERT_MAX == RL_CLUSTER_REASSERT_MAX, "one bound for re-assertion chunks");
