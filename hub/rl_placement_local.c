/* Local placement (standalone): admission is an in-process count per user, every hub is this
 * node's and holds its place until it gives it up. Callbacks run inside the call. */
#include "rl_placement.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "rl_map.h"

static rl_map counts; /* user -> admitted connections, as (void *)(uintptr_t)n; n > 0 */
static int inited;

static int local_admit(const char *user, const char *conn, int limit, rl_place_admit_cb cb, void *ud)
{
    (void)conn;
    if (!inited) {
        rl_map_init(&counts);
        inited = 1;
    }
    uintptr_t n = (uintptr_t)rl_map_get(&counts, user);
    if (limit >= 0 && n >= (uintptr_t)limit) {
        cb(0, ud);
        return 0;
    }
    if (rl_map_set(&counts, user, (void *)(n + 1)) < 0)
        return -ENOMEM;
    cb(1, ud);
    return 0;
}

static void local_release(const char *user, const char *conn)
{
    (void)conn;
    uintptr_t n = inited ? (uintptr_t)rl_map_get(&counts, user) : 0;
    if (n > 1)
        rl_map_set(&counts, user, (void *)(n - 1)); /* replacing never allocates */
    else if (n == 1)
        rl_map_del(&counts, user);
}

static int local_reassert(const char *user, const char *const *conns, size_t n, int retry,
                          rl_place_reassert_cb cb, void *ud)
{
    (void)user, (void)conns, (void)n, (void)retry;
    cb(1, 0, ud); /* nothing can lapse here */
    return 0;
}

static int local_acquire(const char *user, const char *hub_pid, rl_place_cb cb, void *ud)
{
    (void)user;
    rl_place p = {.status = RL_PLACE_WON, .token = 0, .valid_until = UINT64_MAX};
    memcpy(p.hub_pid, hub_pid, strnlen(hub_pid, RL_PID_MAX - 1));
    cb(&p, ud);
    return 0;
}

static int local_renew(const char *user, const char *hub_pid, uint64_t token, rl_place_cb cb, void *ud)
{
    (void)token;
    return local_acquire(user, hub_pid, cb, ud);
}

static void local_give_up(const char *user, const char *hub_pid, uint64_t token, int release)
{
    (void)user, (void)hub_pid, (void)token, (void)release;
}

static int local_locate(const char *user, rl_place_cb cb, void *ud)
{
    (void)user;
    rl_place p = {.status = RL_PLACE_NONE}; /* the central knows every hub of this node */
    cb(&p, ud);
    return 0;
}

static int local_pid_alive(const char *pid)
{
    (void)pid;
    return 1;
}

static uint64_t local_node_valid_until(void) { return UINT64_MAX; }

static const rl_placement local_placement = {
    .name = "local",
    .admit = local_admit,
    .release = local_release,
    .reassert = local_reassert,
    .acquire = local_acquire,
    .renew = local_renew,
    .give_up = local_give_up,
    .locate = local_locate,
    .pid_alive = local_pid_alive,
    .node_valid_until = local_node_valid_until,
};

const rl_placement *rl_placement_local(void) { return &local_placement; }
