/* Cluster mode: node registry and heartbeats, the Redis-stream transport between nodes, and the
 * Redis operations the central hub needs (admission, leases), all on the node's loop. */
#ifndef RL_CLUSTER_H
#define RL_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "rl_config.h"
#include "rl_proc.h"

/* Connects to c->redis_url and installs the stream transport as the router's remote hook.
   Returns 0 or negative with a reason in err (bad URL). Connection failures are retried forever. */
int rl_cluster_start(const rl_config *c, char *err, size_t errlen);
int rl_cluster_enabled(void);
/* 1 while the node's last heartbeat round trip succeeded and is fresh (admission, /readyz). */
int rl_cluster_ready(void);
/* Loop ms until which this node's registration is certainly alive in Redis (0 when unknown). */
uint64_t rl_cluster_node_valid_until(void);
/* Called every tick (1 s) after the heartbeat answered; the central reconciles its users. */
typedef void (*rl_cluster_tick_cb)(void);
void rl_cluster_set_tick_cb(rl_cluster_tick_cb cb);
/* During the tick callback: 1 when this node's registration had lapsed (a Redis outage longer
   than node_ttl), so other nodes may have reclaimed its connection entries: re-admit them. */
int rl_cluster_reregistered(void);
/* Writes the user's <prefix>{user}:hub hash (node, pid, epoch, clients, last_active), for people. */
/* Writes relay:{user}:hub for people (node, pid, epoch, clients, last_active; created_at too
   when created: the hub was placed here just now). Times are wall-clock milliseconds. */
void rl_cluster_hub_info(const char *user, const char *hub_pid, uint64_t epoch, size_t clients,
                         int created);
/* The command connection (not the blocking one), for the server API's read-only look-ups
   (api/rl_api_stream.c: SCAN for the user list); NULL when not started. Valid until
   rl_cluster_stop. */
struct rl_redis *rl_cluster_redis(void);
/* Closes the Redis clients and timers (shutdown; the loop must run once more). */
void rl_cluster_stop(void);

/* Every callback below runs exactly once (with a failure status when Redis did not answer),
   never inside the call; on a negative return it never runs. Strings are copied. */

/* Exact admission: 1 admitted, 0 user at the limit, -1 Redis unavailable. Entries of dead nodes
   are reclaimed first. */
typedef void (*rl_cluster_admit_cb)(int result, void *ud);
int rl_cluster_admit(const char *user, const char *conn, int limit, rl_cluster_admit_cb cb, void *ud);
/* Admissions carry a deadline Redis checks against its own clock: once the node has given up
   on one (timeout, lost connection) it can no longer take effect, however late its bytes reach
   Redis; its connection's entry is released as below. Within node_ttl + 1 s after Redis lost its
   data, newcomers get -1 (the nodes re-assert their established connections first). */

/* Re-asserts established connections of the user on this node (after the registration may have
   lapsed, or Redis lost its data), whatever the limit: they are open. n <= RL_CLUSTER_REASSERT_MAX;
   retry: this repeats a failed one (counted). cb: result 1 (added: entries that were missing) or
   -1 (not done: try again later). Returns -EAGAIN while redis_inflight_max re-assertions are in
   flight (after a lapse every user is re-asserted: the caller retries at a later tick). */
#define RL_CLUSTER_REASSERT_MAX 256
typedef void (*rl_cluster_reassert_cb)(int result, size_t added, void *ud);
int rl_cluster_reassert(const char *user, const char *const *conns, size_t n, int retry,
                        rl_cluster_reassert_cb cb, void *ud);
/* Drops the user's connection entries of dead nodes (fire and forget; paced: at most 512 users
   a second, the rest wait in a set). */
void rl_cluster_purge_conns(const char *user);
/* Forgets a connection's entry: sent at once, or after any admission of it still on the wire has
   passed its deadline, and retried with jittered backoff until Redis confirms (a bounded set,
   /metrics relay_pending_releases). Fire and forget. */
void rl_cluster_release_conn(const char *user, const char *conn);

typedef enum {
    RL_LEASE_ERROR = -1, /* Redis did not answer */
    RL_LEASE_OTHER = 0,  /* held by another live node: holder, epoch, hub_pid */
    RL_LEASE_WON = 1,    /* taken by us with a new epoch for hub_pid */
    RL_LEASE_MINE = 2,   /* already held by this node incarnation: epoch, hub_pid */
    RL_LEASE_NONE = 3,   /* rl_cluster_lease_get: nobody holds it */
} rl_lease_status;

typedef struct rl_lease {
    rl_lease_status status;
    uint64_t epoch;
    char holder[RL_NODE_ID_MAX];
    char hub_pid[RL_PID_MAX];
    uint64_t valid_until; /* WON/OURS: loop ms until which the lease is certainly ours */
} rl_lease;

typedef void (*rl_cluster_lease_cb)(const rl_lease *l, void *ud);
/* 1 when rl_cluster_lease_acquire would refuse now (-EAGAIN: half of redis_inflight_max
   acquisitions in flight); counted as a deferred placement. */
int rl_cluster_acquire_busy(void);
/* Takes the user's lease for hub_pid when it is free or its holder node is gone. */
int rl_cluster_lease_acquire(const char *user, const char *hub_pid, rl_cluster_lease_cb cb, void *ud);
/* Renews our lease: l->status WON (valid_until set) when still ours, OTHER when lost, ERROR. */
int rl_cluster_lease_renew(const char *user, uint64_t epoch, rl_cluster_lease_cb cb, void *ud);
/* Releases our lease (drain); fire and forget. */
void rl_cluster_lease_release(const char *user, uint64_t epoch);
/* Reads the user's lease (no change): l->status OTHER or MINE with holder, epoch and hub_pid
   while its holder is alive as of the last tick, RL_LEASE_NONE when there is none (or its holder
   is gone), ERROR when Redis did not answer. For the server API, to find the user's hub. */
int rl_cluster_lease_get(const char *user, rl_cluster_lease_cb cb, void *ud);
/* The registered nodes as a JSON array [{"id","alive","last_heartbeat_ms","addr","incarnation",
   "started_at","version"},...] (json NULL when Redis did not answer); json is valid during cb. */
typedef void (*rl_cluster_nodes_cb)(const char *json, size_t len, void *ud);
int rl_cluster_nodes(rl_cluster_nodes_cb cb, void *ud);
/* As of the last tick: 1 when the pid's node incarnation is registered (local pids: 1). */
int rl_cluster_pid_alive(const char *pid);
/* Node incarnations ("<node>.<incarnation>") that went away at the last tick. */
size_t rl_cluster_dead_since_last_tick(const char ***nodes);

#endif
