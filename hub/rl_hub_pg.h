/* The user hub's process-group topics (the original module's pg.subscribe / pg.unsubscribe): a
 * process of the hub's own user (or the system) asks the hub to join or leave a group; what is
 * then sent to the group reaches the hub marked RL_MSG_PG and goes to every connection as
 * {"topic":T,"data":D}. Kept apart from rl_hub.c, which calls only rl_hub_pg_control. */
#ifndef RL_HUB_PG_H
#define RL_HUB_PG_H

#include "rl_proc.h"

/* When m is pg.subscribe {scope, group} or pg.unsubscribe {group} (an application topic that
   is not itself a group's send): handles it for hub (user_meta: the user's metadata JSON, may
   be NULL), frees m and returns 1. Otherwise returns 0 and leaves m to the hub. The hub joins
   only when its user's policies allow pg.open on the scope and pg.join on the group; a request
   from another user is refused (relay_messages_refused_total). Failures are logged. */
int rl_hub_pg_control(rl_proc *hub, const rl_body *user_meta, rl_msg *m);

#endif
