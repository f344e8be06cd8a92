/* Security scopes and policies from the config (security.policy, security.scope): evaluation with
 * wildcards, conditions and deny over allow, the router's policy rule for sends to another
 * user, and the cross-user send (process.send to "user.<id>") through the user's hub wherever
 * it lives.
 *
 * A scope is a policy group: the policies whose `groups` name it, plus those a security.scope
 * entry lists. Evaluating a scope: any policy that applies and denies -> deny; else any that
 * applies and allows -> allow; else undefined. Only allow passes a check (`can`). A policy
 * applies when one of its action patterns matches the action, one of its resource patterns
 * matches the resource, and every condition holds. In a pattern '*' matches any run of bytes
 * (none included); every other byte matches itself. */
#ifndef RL_SECURITY_H
#define RL_SECURITY_H

#include <stddef.h>
#include <stdint.h>

#include "rl_config.h"
#include "rl_proc.h"

#define RL_SEC_ARG_MAX 4096   /* bytes of an action or resource a plugin may ask about */
#define RL_SEC_INFLIGHT_MAX 10000 /* cross-user sends waiting for a hub look-up, node-wide */
#define RL_SEC_USER_MAX 256   /* bytes of a user id in "user.<id>" (as the server API) */

typedef enum { RL_SEC_UNDEFINED = 0, RL_SEC_ALLOW, RL_SEC_DENY } rl_sec_result;

/* A field value a condition reads: kind 0 = absent, RL_SEC_V* (rl_config.h), or
   RL_SEC_VOTHER (present, but a table or another type no operator compares). */
#define RL_SEC_VOTHER 100
typedef struct rl_sec_field {
    int kind;
    const char *s; /* RL_SEC_VSTR: the bytes (len) */
    size_t len;
    double num;    /* RL_SEC_VNUM, RL_SEC_VBOOL (0/1) */
} rl_sec_field;

/* Looks up path (the part after "actor.meta." when actor, else after "meta.") and fills out;
   pointers in out stay valid until the evaluation returns. */
typedef void (*rl_sec_lookup_fn)(void *ud, int actor, const char *path, rl_sec_field *out);

typedef struct rl_sec_req {
    const char *actor_id; /* NULL: no actor (actor.id is absent) */
    const char *action;
    size_t action_len;
    const char *resource;
    size_t resource_len;
    rl_sec_lookup_fn lookup; /* NULL: actor.meta.* and meta.* are absent */
    void *ud;
} rl_sec_req;

/* Resolves the config's scopes (c must outlive it). 0 or -ENOMEM. */
int rl_sec_init(const rl_config *c);
/* Frees the resolved scopes and fails the cross-user sends still waiting for a look-up. */
void rl_sec_close(void);

/* 1 when pattern matches s[0..len). */
int rl_sec_match(const char *pattern, const char *s, size_t len);
rl_sec_result rl_sec_policy_eval(const rl_sec_policy *p, const rl_sec_req *r);
/* Deny over allow over undefined, across n policies. */
rl_sec_result rl_sec_eval(const rl_sec_policy *const *pols, size_t n, const rl_sec_req *r);
/* The policies of the named scope (pointers valid until rl_sec_close); -ENOENT when no
   security.scope entry and no policy's group has that id. */
int rl_sec_scope_get(const char *id, const rl_sec_policy *const **pols, size_t *n);
/* The policy with that id, or NULL. */
const rl_sec_policy *rl_sec_policy_find(const char *id);
/* Number of policies in the config (the bound of a scope built at run time). */
size_t rl_sec_policy_count(void);
/* 1 when a policy of the user scope has a condition on actor.meta.* (else a caller need not
   build the actor's metadata for a check). */
int rl_sec_user_scope_reads_actor_meta(void);
/* The scope a user's processes run under (user_security_scope); NULL before init. */
const char *rl_sec_user_scope(void);
/* 1 when the user scope allows action on resource for actor `user` (no metadata: conditions on
   actor.meta.* and meta.* see absent fields). */
int rl_sec_user_can(const char *user, const char *action, const char *resource);

/* The router's policy rule: 1 when m (an application topic from a user's process) may reach
   target, a user hub or plugin of another user, because rl_send_user checked the sender's
   scope and granted it (RL_MSG_GRANTED; carried across nodes, which trust one another). 0
   otherwise (the topic table decides alone: a send to another user's pid stays refused). */
int rl_sec_send_allowed(const rl_msg *m, const rl_proc *target);

/* Where a user's hub is (main registers rl_central_locate, the server API's look-up). */
typedef void (*rl_sec_located_cb)(int rc, const char *hub_pid, uint64_t epoch, void *ud);
typedef int (*rl_sec_locate_fn)(const char *user, rl_sec_located_cb cb, void *ud);
void rl_sec_set_locate(rl_sec_locate_fn fn);

/* Sends m (an application topic) from `from` (a user's process) to the hub of user[0..len),
   on whichever node holds it, with the lease epoch. Another user needs process.send allowed on
   "user.<id>" by the sender's scope, for the sender's user as actor (actor_meta, may be NULL,
   gives its actor.meta.* fields): refused sends are counted and logged and deliver nothing.
   Returns 0 when m was taken (delivered, or waiting for the cluster's look-up: a later failure
   is counted, logged and told to the sender as topic "user.undelivered"); on error the caller
   keeps m: -EPERM refused, -ENOENT the user has no hub, -EINVAL a bad user id, -EAGAIN too
   many look-ups in flight or the hub's mailbox full, or the router's other errors. */
int rl_send_user(rl_proc *from, const char *user, size_t len, rl_msg *m,
                 rl_sec_lookup_fn actor_meta, void *ud);
/* A granted send (RL_MSG_GRANTED) that could not be delivered after rl_send_user returned (no
   hub, the hub gone or moving, its node unreachable): counts the drop, logs (at most a line a
   second) and tells the sender, wherever it is, as topic "user.undelivered" {"user" (user, or
   null when not known), "topic", "error"} from the system. Does not take m. */
void rl_sec_undelivered(const rl_msg *m, const char *user, int rc);

#endif
