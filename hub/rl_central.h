/* The central hub: admission (exact per-user limit), user hub placement, idle hub collection. */
#ifndef RL_CENTRAL_H
#define RL_CENTRAL_H

#include "rl_config.h"
#include "rl_metrics.h"

/* Starts the central hub process. c must outlive it. Returns 0 or negative errno. */
int rl_central_start(const rl_config *c);
/* The central hub's pid; connections send it "ws.join" and "ws.leave". */
const char *rl_central_pid(void);
/* Drain (SIGTERM): takes no new joins; releases the leases of this node's hubs and hands them
   over, so connections on other nodes re-home at once. */
void rl_central_drain(void);
/* Cancels every hub and stops the GC timer (shutdown). */
void rl_central_stop(void);
size_t rl_central_user_count(void);
/* /metrics source: users with connections or a hub on this node. */
void rl_central_metrics(rl_metrics_out *out);

#endif
