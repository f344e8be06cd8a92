/* Process groups (the platform's `pg`): named groups of processes inside a scope, on this node.
 *
 * A scope is a name ("app:pg"); a group lives in one scope and exists while it has a member. A
 * process joins and leaves only for itself (the callers check that, and the security policies);
 * it may join one group several times and is a member until it left as many times. A member
 * that exits leaves every group: the pg process (a system process, kind 'g') monitors each
 * process that ever joined or opened a scope, and drops it on its PID_EXIT.
 *
 * A group send is one application message per member (each member once, whatever its join
 * count), sharing one body, from the sender (its pid and owner kept). A member of another user
 * gets it as a granted send (RL_MSG_GRANTED: the caller checked the sender's policy for the
 * group), and every one is marked RL_MSG_PG, so a user hub writes it to its connections instead
 * of routing it by prefix. Bounds: joins per member (multi-joins counted) and members per group
 * (multi-joins counted), set by rl_pg_start. This module checks no policy: callers do. */
#ifndef RL_PG_H
#define RL_PG_H

#include <stddef.h>
#include <stdint.h>

#include "rl_proc.h"

#define RL_PG_NAME_MAX 256  /* bytes of a scope id or a group name */
#define RL_PG_TOPIC_MAX 256 /* bytes of a group send's topic */

/* Starts the pg process. max_joins: joins one process may hold (0 = none allowed);
   max_members: joins one group may hold. 0 or -ENOMEM. */
int rl_pg_start(size_t max_joins, size_t max_members);
/* Drops every group and member (at node stop). */
void rl_pg_stop(void);

/* 1 when s[0..len) is a usable scope or group name: 1..RL_PG_NAME_MAX bytes, no NUL. */
int rl_pg_name_ok(const char *s, size_t len);
/* 1 when a group send may carry topic name[0..len): 1..RL_PG_TOPIC_MAX bytes, not an internal
   topic, not '@...', and not a name the hub or the runtime send themselves ("welcome", "error",
   "pg.*", "ws.*", "pid.*", "hub.*", "api.*", "user.*"): a group send reaches other users'
   connections, and must not pass for the hub's own frames or instructions. */
int rl_pg_topic_ok(const char *name, size_t len);

/* Process pid (local, alive) joins group of scope once more. 0, or: -EINVAL bad names;
   -ENOENT no such process; -ENOSPC pid holds max_joins joins already; -EMLINK the group holds
   max_members; -ENOMEM. */
int rl_pg_join(const char *pid, const char *scope, size_t slen, const char *group, size_t glen);
/* Undoes one join. 0, or -ENOENT when pid is not a member of that group. */
int rl_pg_leave(const char *pid, const char *scope, size_t slen, const char *group, size_t glen);
/* Times pid joined the group (0 = not a member). */
uint32_t rl_pg_joins(const char *pid, const char *scope, size_t slen, const char *group,
                     size_t glen);
/* The scope in which pid is a member of group (the first found; *slen its length, not
   NUL-terminated), or NULL. Valid until the membership ends. */
const char *rl_pg_scope_of(const char *pid, const char *group, size_t glen, size_t *slen);
/* Joins pid holds, over all its groups. */
size_t rl_pg_joins_of(const char *pid);

/* Counts a scope handle pid opened (the Lua module's bound per instance): rl_pg_scope_open
   records one (0, -ENOENT no such process, -ENOMEM) and starts watching pid like a join;
   rl_pg_scope_close gives one back; rl_pg_scopes_of says how many pid holds. */
int rl_pg_scope_open(const char *pid);
void rl_pg_scope_close(const char *pid);
size_t rl_pg_scopes_of(const char *pid);

/* Calls fn for each member of the group (each once), returns how many. */
typedef void (*rl_pg_each_fn)(void *ud, const char *s, size_t len);
size_t rl_pg_members(const char *scope, size_t slen, const char *group, size_t glen,
                     rl_pg_each_fn fn, void *ud);
/* Calls fn for each group of scope that has a member, returns how many. */
size_t rl_pg_groups(const char *scope, size_t slen, rl_pg_each_fn fn, void *ud);

/* Sends topic name[0..nlen) with body (a reference is taken per message) from `from` (NULL:
   the system) to every member of the group. Returns the number of members reached; members
   whose mailbox is full or that are gone are counted in relay_messages_dropped_total. In a
   cluster the other nodes' members get it too (rl_pg_remote.send: asynchronously, not counted
   in the return). */
size_t rl_pg_send(rl_proc *from, const char *scope, size_t slen, const char *group, size_t glen,
                  const char *name, size_t nlen, rl_body *body);

/* ---- across nodes (cluster/rl_pg_redis.c registers it) ---- */

/* What the cluster does for groups: `joined` when a group gets its first member on this node,
   `left` when it loses its last, `send` for a group send's part for the other nodes (from: the
   sender's pid, "" = the system; owner: its owner, NULL = the system; body: take a reference to
   keep it). */
typedef struct rl_pg_remote {
    void (*joined)(const char *scope, size_t slen, const char *group, size_t glen);
    void (*left)(const char *scope, size_t slen, const char *group, size_t glen);
    void (*send)(const char *from, rl_owner *owner, const char *scope, size_t slen,
                 const char *group, size_t glen, const char *name, size_t nlen, rl_body *body);
} rl_pg_remote;
void rl_pg_set_remote(const rl_pg_remote *r);
/* The pg process's pid (where other nodes send this node's part of a group send). */
const char *rl_pg_pid(void);
/* A group send for another node's pg process: an application message from the system whose
   name packs the sender's user, the scope, the group and the topic, sender pid `from`, marked
   RL_MSG_PG; the receiving pg process unpacks it and sends to its local members with the
   sender's pid and owner (nodes trust one another). NULL on OOM. */
rl_msg *rl_pg_forward_msg(const char *from, const rl_owner *owner, const char *scope, size_t slen,
                          const char *group, size_t glen, const char *name, size_t nlen,
                          rl_body *body);
/* Calls fn for every group with a member on this node (scope, group as "scope\x1fgroup"). */
void rl_pg_each_local_group(void (*fn)(const char *scope, size_t slen, const char *group,
                                       size_t glen, void *ud), void *ud);
/* rl_pg_send without the other nodes (broadcast_local). */
size_t rl_pg_send_local(rl_proc *from, const char *scope, size_t slen, const char *group,
                        size_t glen, const char *name, size_t nlen, rl_body *body);

#endif
