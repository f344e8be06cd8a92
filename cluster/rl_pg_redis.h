/* Process groups across the nodes of a cluster (core/rl_pg.h's remote part). Redis keeps, per
 * group, the pg process pids of the nodes that have a member of it, in a sorted set scored by
 * when each node last wrote its entry: <prefix>pg:<len(scope)>:<scope>:<group>. A group send
 * reads it (one ZRANGE) and sends one message to each other live node's pg process through the
 * stream transport, which hands it to the local members there. */
#ifndef RL_PG_REDIS_H
#define RL_PG_REDIS_H

#include "rl_config.h"

/* Registers the remote part with rl_pg (after rl_cluster_start). */
void rl_pg_redis_start(const rl_config *c);
/* Stops the refresh timer (before rl_cluster_stop). */
void rl_pg_redis_stop(void);

#endif
