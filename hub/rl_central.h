/* The central hub: admission (exact per-user limit), user hub placement, idle hub collection. */
#ifndef RL_CENTRAL_H
#define RL_CENTRAL_H

#include <stdint.h>

#include "rl_config.h"
#include "rl_metrics.h"
#include "rl_placement.h"

/* The placement the central hub uses (before rl_central_start; default: rl_placement_local). */
void rl_central_set_placement(const rl_placement *p);
/* Starts the central hub process. c must outlive it. Returns 0 or negative errno. */
int rl_central_start(const rl_config *c);
/* The central hub's pid; connections send it "ws.join" and "ws.leave". */
const char *rl_central_pid(void);
/* Where the user's hub is, for the server API: cb(rc, hub_pid, epoch, ud) with rc 0 (found;
   hub_pid valid during cb; epoch: the placement's token to stamp on messages to it), -ENOENT
   (the user has no hub) or -EHOSTUNREACH (the placement did not answer). When this node knows
   (standalone: always) cb runs inside the call; otherwise the placement is asked (cluster: the
   user's lease in Redis). Returns 0, or negative when cb will not run. */
typedef void (*rl_central_locate_cb)(int rc, const char *hub_pid, uint64_t epoch, void *ud);
int rl_central_locate(const char *user, rl_central_locate_cb cb, void *ud);
/* Drain (SIGTERM): takes no new joins; releases the leases of this node's hubs and hands them
   over, so connections on other nodes re-home at once. */
void rl_central_drain(void);
/* Cancels every hub and stops the GC timer (shutdown). */
void rl_central_stop(void);
size_t rl_central_user_count(void);
/* /metrics source: users with connections or a hub on this node. */
void rl_central_metrics(rl_metrics_out *out);

#endif
