/* Redis placement (cluster mode): exact admission across nodes, a user's hub where its lease is,
 * and the fence between the transport and this node's hubs. */
#ifndef RL_PLACEMENT_REDIS_H
#define RL_PLACEMENT_REDIS_H

#include <stdint.h>

#include "rl_placement.h"

/* The placement over the cluster's scripts (rl_cluster_start must have succeeded). */
const rl_placement *rl_placement_redis(void);

/* Fencing, for the transport: 1 when a forwarded message to local pid `to` carrying lease epoch
   `epoch` (non-zero) must not be delivered, because `to` is not (or no longer) the hub holding
   that epoch's lease. Forgets every fence on stop. */
int rl_fence_refuses(const char *to, uint64_t epoch);
void rl_fence_clear(void);

#endif
