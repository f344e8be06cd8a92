/* The user hub: one process per user; keeps the user's connections and plugin states, routes
 * client messages to plugins by the longest matching prefix, broadcasts everything else. */
#ifndef RL_HUB_H
#define RL_HUB_H

#include <stddef.h>

#include "rl_config.h"
#include "rl_proc.h"

typedef enum { RL_PLUGIN_PENDING, RL_PLUGIN_RUNNING, RL_PLUGIN_STOPPED, RL_PLUGIN_FAILED } rl_plugin_status;

/* Starts a user hub for user_id. user_metadata_json: a JSON object or NULL; scope may be NULL.
   Starts the auto_start plugins, unless deferred: then the hub only has its pid (to be named in
   a lease) and takes no message until rl_hub_activate. c must outlive the hub. Writes its pid to
   pid_out. Returns 0 or negative errno. The hub ends on rl_cancel (after its plugins stopped).
   It reports its client count to the central hub ("hub.activity" {"user_id","client_count"}). */
int rl_hub_start(const rl_config *c, const char *user_id, const char *user_metadata_json,
                 const char *scope, uint64_t epoch, int deferred, char pid_out[RL_PID_MAX]);
/* A deferred hub won its lease: takes messages of epoch until valid_until, starts plugins. */
int rl_hub_activate(const char *pid, uint64_t epoch, uint64_t valid_until);

/* Cluster fencing: after until_ms (loop clock) the hub takes no message but plugin exits, since
   its lease may have passed to another node. UINT64_MAX (the default) = always. Topics the hub
   also takes: "node.down" {"node":N} drops that node's connections; "hub.handover" (sent
   without epoch, by its own node) sends "ws.rehome" to every connection and stops the hub. */
int rl_hub_set_valid_until(const char *pid, uint64_t until_ms);

/* Plugins of all hubs of this node by status (for /metrics). */
extern size_t rl_hub_plugin_counts[4];
const char *rl_plugin_status_name(rl_plugin_status s);

#endif
