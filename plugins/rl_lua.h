/* The Lua plugin host: one lua_State per node, each plugin instance a coroutine with its own
 * _ENV running the plugin chunk (compiled once per source). Instances are rl_proc processes. */
#ifndef RL_LUA_H
#define RL_LUA_H

#include <stddef.h>

#include "rl_config.h"
#include "rl_proc.h"
#include "rl_spawn.h"

/* Creates the state and compiles every plugin of c (c must outlive the host). On a syntax
   error returns negative with "FILE: entry NAME: reason" in err. */
int rl_lua_init(const rl_config *c, char *err, size_t errlen);
/* The spawner (rl_spawn.h) main registers: starts an instance of a->def owned by a->owner; its
   method (def->method, "run") is called with args {user_id, user_metadata, user_hub_pid,
   config}. a->parent monitors it: it gets PID_EXIT when the instance returns (error NULL) or
   crashes (error text). Writes the new pid. Returns 0, or negative with a reason in err. */
int rl_lua_spawn(const rl_spawn_args *a, char pid_out[RL_PID_MAX], char *err, size_t errlen);
/* Reads and compiles every plugin source again (SIGHUP): instances started from now on run the
   new code, running ones keep theirs. On any error nothing changes and err says which file,
   entry and why. Returns 0 or negative. */
int rl_lua_reload(char *err, size_t errlen);
/* Appends the sandbox counters (kills and refusals by limit) for /metrics. */
struct rl_metrics_out;
void rl_lua_metrics(struct rl_metrics_out *out);
/* Bytes allocated by the state. */
size_t rl_lua_memory(void);
/* Ends every instance and closes the state (shutdown). */
void rl_lua_close(void);

#endif
