/* The user hub: one process per user; keeps the user's connections and plugin states, routes
 * client messages to plugins by the longest matching prefix, broadcasts everything else. */
#ifndef RL_HUB_H
#define RL_HUB_H

#include <stddef.h>

#include "rl_config.h"
#include "rl_metrics.h"
#include "rl_proc.h"

typedef enum { RL_PLUGIN_PENDING, RL_PLUGIN_RUNNING, RL_PLUGIN_STOPPED, RL_PLUGIN_FAILED } rl_plugin_status;

/* Starts a user hub for owner's user. user_metadata: a JSON object body or NULL (a reference is
   taken).
   Starts the auto_start plugins, unless deferred: then the hub only has its pid (to be named by
   its placement) and takes no message until rl_hub_activate. c must outlive the hub. Writes its
   pid to pid_out. Returns 0 or negative errno. The hub ends on rl_cancel (after its plugins
   stopped). It reports its client count to the central hub (RL_T_HUB_ACTIVITY). */
int rl_hub_start(const rl_config *c, rl_owner *owner, rl_body *user_metadata, int deferred,
                 char pid_out[RL_PID_MAX]);
/* A deferred hub won its place: takes messages until valid_until, starts plugins. */
int rl_hub_activate(const char *pid, uint64_t valid_until);

/* After until_ms (loop clock) the hub takes no message but plugin exits: its placement could not
   confirm in time that the hub is still the user's. UINT64_MAX (the default) = always. The hub
   knows no epochs: which forwarded messages reach it is the transport's fence. Topics the hub
   also takes (from the system): RL_T_NODE_DOWN drops that node's connections; RL_T_HUB_HANDOVER
   sends RL_T_WS_REHOME to every connection and stops the hub. */
int rl_hub_set_valid_until(const char *pid, uint64_t until_ms);

const char *rl_plugin_status_name(rl_plugin_status s);
/* /metrics source: plugins of all hubs of this node, by status. */
void rl_hub_metrics(rl_metrics_out *out);

#endif
