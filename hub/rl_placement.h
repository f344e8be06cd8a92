/* Placement: where a user's hub is and how many connections a user may hold, behind one
 * interface the central hub uses (DESIGN.md section 5). Two implementations: local (in-process
 * counts, every hub here: hub/rl_placement_local.c) and Redis (exact across nodes, hubs where the
 * user's lease is: cluster/rl_placement_redis.c). node/main.c chooses one (rl_central_set_placement).
 *
 * Callbacks run exactly once when the call returned 0, never when it returned negative. The local
 * implementation runs them inside the call; the Redis one later, from the loop: a caller must
 * cope with both (change its own state before the call, not after). Strings are copied. */
#ifndef RL_PLACEMENT_H
#define RL_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "rl_proc.h"

typedef enum {
    RL_PLACE_ERROR = -1, /* the placement did not answer (Redis unreachable) */
    RL_PLACE_OTHER = 0,  /* the user's hub is elsewhere: hub_pid, token, holder */
    RL_PLACE_WON = 1,    /* the hub asked for is the user's hub now: token, valid_until */
    RL_PLACE_MINE = 2,   /* the user's hub was already one of this node's: hub_pid, token, valid_until */
    RL_PLACE_NONE = 3,   /* locate: the user has no hub */
} rl_place_status;

typedef struct rl_place {
    rl_place_status status;
    uint64_t token;       /* stamped on messages to the hub (cluster: the lease epoch); 0 = none */
    uint64_t valid_until; /* WON/MINE: loop ms until which the hub may accept messages */
    char hub_pid[RL_PID_MAX];
    char holder[RL_NODE_ID_MAX];
} rl_place;

typedef void (*rl_place_cb)(const rl_place *p, void *ud);
/* result: 1 admitted, 0 the user is at the limit, -1 unavailable. */
typedef void (*rl_place_admit_cb)(int result, void *ud);
/* result 1 (added: entries that were missing) or -1 (not done: try again later). */
typedef void (*rl_place_reassert_cb)(int result, size_t added, void *ud);

/* What the placement's tick (every second, after its registration was confirmed) tells. */
typedef struct rl_place_tick {
    int lapsed;         /* the node's registration may have lapsed: re-assert what it holds */
    const char **dead;  /* node incarnations ("<node>.<incarnation>") gone since the last tick */
    size_t ndead;
} rl_place_tick;
typedef void (*rl_place_tick_cb)(const rl_place_tick *t);

#define RL_PLACE_REASSERT_MAX 256

typedef struct rl_placement {
    const char *name; /* "local", "redis" (logs) */
    /* Admits connection conn of user under limit. */
    int (*admit)(const char *user, const char *conn, int limit, rl_place_admit_cb cb, void *ud);
    /* Forgets an admitted connection (retried until it holds; fire and forget). */
    void (*release)(const char *user, const char *conn);
    /* Asserts established connections again, whatever the limit (after a lapse);
       n <= RL_PLACE_REASSERT_MAX; retry: this repeats a failed one. */
    int (*reassert)(const char *user, const char *const *conns, size_t n, int retry,
                    rl_place_reassert_cb cb, void *ud);
    /* Makes hub_pid (a deferred local hub) the user's hub unless the user has one. */
    int (*acquire)(const char *user, const char *hub_pid, rl_place_cb cb, void *ud);
    /* Keeps our hub the user's: WON (valid_until renewed), OTHER (lost), ERROR. */
    int (*renew)(const char *user, const char *hub_pid, uint64_t token, rl_place_cb cb, void *ud);
    /* Our hub stops being the user's (release: also tell the others at once; else it is
       already lost or expired). Fire and forget. */
    void (*give_up)(const char *user, const char *hub_pid, uint64_t token, int release);
    /* Where the user's hub is, for a user this node holds nothing of: OTHER/MINE, NONE, ERROR. */
    int (*locate)(const char *user, rl_place_cb cb, void *ud);
    /* For people: the hub's client count (created: placed here just now). May be NULL. */
    void (*hub_info)(const char *user, const char *hub_pid, uint64_t token, size_t clients,
                     int created);
    /* Forgets the user's connections on nodes that are gone. May be NULL. */
    void (*purge)(const char *user);
    /* As of the last tick: 0 when pid's node is gone. */
    int (*pid_alive)(const char *pid);
    /* Loop ms until which this node's own registration is certainly alive. */
    uint64_t (*node_valid_until)(void);
    /* Installs the tick callback (NULL: none). May be NULL (no tick: nothing expires). */
    void (*set_tick)(rl_place_tick_cb cb);
    /* 1 when an acquire now would be put off (too much in flight): the caller backs off before
       it starts a hub. May be NULL (never busy). */
    int (*busy)(void);
} rl_placement;

/* In-process counts; every hub is local and never expires. */
const rl_placement *rl_placement_local(void);

#endif
