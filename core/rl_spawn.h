/* The interface through which a user hub starts plugin processes; the plugin host implements it
 * and main registers it (the hub never calls the plugin host directly). */
#ifndef RL_SPAWN_H
#define RL_SPAWN_H

#include <stddef.h>

#include "rl_config.h"
#include "rl_proc.h"

typedef struct rl_spawn_args {
    const rl_plugin_def *def; /* the plugin to start */
    rl_owner *owner;          /* its user (the new process's owner) */
    rl_proc *parent;          /* the user hub: monitors it, named in args.user_hub_pid */
    rl_body *user_metadata;   /* JSON object (args.user_metadata), or NULL */
    const rl_config *cfg;     /* args.config */
} rl_spawn_args;

/* Starts the process; writes its pid. Returns 0, or negative with a reason in err. */
typedef int (*rl_spawn_fn)(const rl_spawn_args *a, char pid_out[RL_PID_MAX], char *err,
                           size_t errlen);

void rl_spawner_set(rl_spawn_fn fn);
/* Through the registered spawner; -ENOSYS (with a reason) when there is none. */
int rl_spawn(const rl_spawn_args *a, char pid_out[RL_PID_MAX], char *err, size_t errlen);

#endif
