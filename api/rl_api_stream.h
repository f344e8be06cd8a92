/* The server API through Redis (relay.node api: stream: true): entries XADDed to <prefix>api
 * run the HTTP API's operations (rl_api_call); results, dead letters; docs/api.md "Through
 * Redis". And the cluster's user list for GET /api/v1/users (SCAN of the leases). */
#ifndef RL_API_STREAM_H
#define RL_API_STREAM_H

#include <stddef.h>

#include "rl_api.h"
#include "rl_config.h"
#include "rl_metrics.h"

/* Bounds that are not settings (those are api: stream_claim_after, stream_result_ttl,
   stream_maxlen, max_body). */
#define RL_API_STREAM_BATCH 32      /* entries per XREADGROUP or XAUTOCLAIM */
#define RL_API_STREAM_INFLIGHT 256  /* entries being run on this node at once */
#define RL_API_STREAM_BLOCK_MS 2000 /* XREADGROUP BLOCK */
#define RL_API_STREAM_OP_MAX 16     /* bytes of the op field */
#define RL_API_STREAM_GROUP "relay" /* the consumer group; consumers are node ids */

/* Starts reading c->redis_prefix + "api" (c->redis_url must be set) on two Redis connections of
   its own, after rl_api_start. 0, or negative with a reason in err. */
int rl_api_stream_start(const rl_config *c, char *err, size_t errlen);
/* Stops reading; entries still running are left pending in the group (another node claims
   them after stream_claim_after). Before rl_api_stop. */
void rl_api_stream_stop(void);
/* /metrics source: entries by outcome, entries in flight. */
void rl_api_stream_metrics(rl_metrics_out *out);

/* The users hook of a cluster node (rl_api_set_users_fn): users holding a lease, by SCAN over
   <prefix>{*}:lease on the cluster's Redis connection; the cursor is SCAN's. */
int rl_api_cluster_users(const char *cursor, unsigned count, rl_api_users_cb cb, void *ud);

#endif
