/* The cluster's atomic Redis operations (Lua scripts), key names and reply parsers.
 *
 * Key layout (DESIGN.md §5, prefix P, default "relay:"; per-user keys share the hash tag {user}):
 *   P node:<node>       string PX node_ttl: {"addr","incarnation","started_at","version"} (JSON)
 *   P nodes             zset: node -> last heartbeat (Redis TIME, ms); dead members pruned after 1 h
 *   P {<user>}:lease    string, no TTL: "<node>|<incarnation>|<epoch>|<hub_pid>"; valid while
 *                       its holder's node key lives with that incarnation (never renewed)
 *   P {<user>}:epoch    counter: fencing token, INCR on every new lease
 *   P {<user>}:conns    hash conn_pid -> node; HLEN = the user's connections, cluster-wide
 *   P {<user>}:hub      hash node, pid, epoch, ... (for people; lease_release deletes it)
 *   P inbox:<node>      stream: messages for that node's processes
 *   P registry          string: ms (Redis TIME) when the data was found lost, 0 for a fresh start
 *
 * Liveness: a node is alive while its node key exists and, when the incarnation is known (from a
 * pid "<node>.<incarnation>.<x>" or a lease value), the key's incarnation matches. So a node
 * restarted under the same id does not keep its previous life's connections or leases alive.
 *
 * The per-user scripts read node keys (other hash slots) named from a prefix argument: this needs
 * one Redis (optionally with replicas), not Redis Cluster. Every reply is at most 1 level deep. */
#ifndef RL_CLUSTER_SCRIPTS_H
#define RL_CLUSTER_SCRIPTS_H

#include <stddef.h>
#include <stdint.h>

#include "rl_proc.h"
#include "rl_redis.h"

/* X(ID, name, number of KEYS)
 *
 * admit          KEYS conns; ARGV conn_pid, node, limit, node_key_prefix ("relay:node:"),
 *                [deadline_ms, registry key, grace_ms]
 *                Past deadline_ms (Redis TIME; 0 = none) it does nothing: {-2, 0}, so an admission
 *                the node gave up on cannot take effect when its bytes arrive late.
 *                Removes conns entries whose node is dead, then: conn_pid already there or
 *                HLEN < limit (limit <= 0: no limit) -> HSET, {1, count}; else {0, count}.
 *                Within grace_ms of the registry's (re)birth (Redis lost its data) a new conn_pid
 *                is not admitted, {-1, count}: the nodes re-assert their established connections
 *                first. conn_pid "" only reclaims: {0, live count}.
 * reassert       KEYS conns; ARGV node, deadline_ms, conn_pid_1..n -> {1, added} | {-2, 0} late
 *                Adds established connections of this node again, whatever the limit (after its
 *                registration may have lapsed or Redis lost its data); idempotent.
 * release_conn   KEYS conns; ARGV conn_pid -> {removed 0|1, count}
 * lease_acquire  KEYS lease, epoch, registry; ARGV node, incarnation, hub_pid, ttl_ms, node_key_prefix
 *                No new lease within ttl_ms of the registry's (re)birth (Redis lost its data:
 *                leases granted before may still be held): code 0 with no holder, retry later.
 *                Epochs never repeat, even across a data loss: max(INCR, Redis TIME in ms).
 *                -> {code, epoch, hub_pid, holder_node, holder_incarnation}
 *                code 1: new lease for us (no lease, or its holder is dead): INCR epoch, SET
 *                        (no TTL: it lives as long as our registration, which alone is renewed).
 *                code 2: already ours (same node and incarnation): the stored hub_pid.
 *                code 0: held by another live node (its epoch and hub_pid), or our own node key
 *                        is not there with our incarnation (no holder: a lease is only ever
 *                        granted to a node whose registration is live).
 * lease_renew    KEYS lease_1..lease_n; ARGV node, incarnation, ttl_ms, epoch_1..epoch_n
 *                -> {1 still ours | 0 not ours, ...} one per key: a check (ttl_ms unused), made
 *                only after the node's registration may have lapsed, in batches of up to
 *                RL_CS_RENEW_MAX (a TTL left by an older version is removed)
 * lease_release  KEYS lease, hub; ARGV node, incarnation, epoch -> 1 deleted | 0 not ours
 *                (the hub hash is deleted too when its "epoch" field is ours)
 * heartbeat      KEYS node key, nodes, registry; ARGV node, incarnation, addr, started_at_ms,
 *                version, ttl_ms, was_registered -> 1 refreshed | 2 created | 3 replaced another
 *                incarnation's live key. Creates the registry key when missing: "now" when this
 *                node was registered before (so Redis lost its data: leases wait out a grace),
 *                else 0 (a fresh cluster: no grace).
 * node_leave     KEYS node key, nodes; ARGV node, incarnation -> 1 removed | 0 not ours */
#define RL_CLUSTER_SCRIPTS(X)                                                                     \
    X(ADMIT, admit, 1)                                                                            \
    X(REASSERT, reassert, 1)                                                                      \
    X(RELEASE_CONN, release_conn, 1)                                                              \
    X(LEASE_ACQUIRE, lease_acquire, 3)                                                            \
    X(LEASE_RENEW, lease_renew, 1)                                                                \
    X(LEASE_RELEASE, lease_release, 2)                                                            \
    X(HEARTBEAT, heartbeat, 3)                                                                    \
    X(NODE_LEAVE, node_leave, 2)

typedef enum {
#define RL_CS_ENUM(id, name, nkeys) RL_CS_##id,
    RL_CLUSTER_SCRIPTS(RL_CS_ENUM)
#undef RL_CS_ENUM
    RL_CS_COUNT
} rl_cs_id;

/* Computes the scripts' SHA1s (idempotent; the wrappers below call it). */
void rl_cluster_scripts_init(void);
const rl_redis_script_def *rl_cluster_script(rl_cs_id id);
int rl_cluster_script_nkeys(rl_cs_id id);

/* Key names. Each returns the length written (NUL-terminated) or -ENAMETOOLONG. */
#define RL_CKEY_MAX 384
int rl_ckey_user(char *out, size_t n, const char *prefix, const char *user, const char *what);
int rl_ckey_node(char *out, size_t n, const char *prefix, const char *node);
int rl_ckey_nodes(char *out, size_t n, const char *prefix);
int rl_ckey_registry(char *out, size_t n, const char *prefix);
int rl_ckey_inbox(char *out, size_t n, const char *prefix, const char *node);

/* Typed calls (same return/callback contract as rl_redis_script; -ENAMETOOLONG for huge ids). */
int rl_cs_admit(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                const char *node, int limit, rl_redis_cb cb, void *ud);
/* admit with a deadline (Redis TIME ms, 0 = none) and the data-loss grace (0 = none). */
int rl_cs_admit_until(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                      const char *node, int limit, uint64_t deadline_ms, uint64_t grace_ms,
                      rl_redis_cb cb, void *ud);
#define RL_CS_REASSERT_MAX 256
/* n <= RL_CS_REASSERT_MAX connections of one user in one script run. */
int rl_cs_reassert(rl_redis *r, const char *prefix, const char *user, const char *node, size_t n,
                   const char *const *conn_pids, uint64_t deadline_ms, rl_redis_cb cb, void *ud);
/* admit's reclaim alone: drops the user's entries of dead nodes; {0, live count}. */
int rl_cs_purge_conns(rl_redis *r, const char *prefix, const char *user, rl_redis_cb cb, void *ud);
int rl_cs_release_conn(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                       rl_redis_cb cb, void *ud);
int rl_cs_lease_acquire(rl_redis *r, const char *prefix, const char *user, const char *node,
                        const char *incarnation, const char *hub_pid, uint64_t ttl_ms,
                        rl_redis_cb cb, void *ud);
#define RL_CS_RENEW_MAX 128
/* Renews n <= RL_CS_RENEW_MAX leases in one script run; the reply is an array of 1/0. */
int rl_cs_lease_renew_many(rl_redis *r, const char *prefix, size_t n, const char *const *users,
                           const uint64_t *epochs, const char *node, const char *incarnation,
                           uint64_t ttl_ms, rl_redis_cb cb, void *ud);
int rl_cs_lease_renew(rl_redis *r, const char *prefix, const char *user, const char *node,
                      const char *incarnation, uint64_t epoch, uint64_t ttl_ms, rl_redis_cb cb,
                      void *ud);
int rl_cs_lease_release(rl_redis *r, const char *prefix, const char *user, const char *node,
                        const char *incarnation, uint64_t epoch, rl_redis_cb cb, void *ud);
int rl_cs_heartbeat(rl_redis *r, const char *prefix, const char *node, const char *incarnation,
                    const char *addr, uint64_t started_at_ms, const char *version, uint64_t ttl_ms,
                    int was_registered, rl_redis_cb cb, void *ud);
int rl_cs_node_leave(rl_redis *r, const char *prefix, const char *node, const char *incarnation,
                     rl_redis_cb cb, void *ud);

/* Reply parsers: 0, or -EIO (NULL reply: no answer), -EPROTO (error reply or unexpected shape;
   an error reply is logged by the caller from reply->str). */
/* An integer, or an array holding one integer (lease_renew of one lease). */
int rl_cs_parse_int(const redisReply *reply, long long *out);
/* admit and release_conn: {flag, count} */
int rl_cs_parse_pair(const redisReply *reply, int *flag, long long *count);

typedef enum { RL_LEASE_BUSY = 0, RL_LEASE_NEW = 1, RL_LEASE_OURS = 2 } rl_lease_code;
typedef struct rl_lease_reply {
    rl_lease_code code;
    uint64_t epoch;
    char hub_pid[RL_PID_MAX];
    char node[RL_NODE_ID_MAX];
    char incarnation[RL_NODE_ID_MAX];
} rl_lease_reply;
int rl_cs_parse_lease(const redisReply *reply, rl_lease_reply *out);

#endif
