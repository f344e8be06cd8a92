/* The server API for applications: HTTP endpoints on a listener of their own (relay.node api),
 * bearer keys, a rate limit per key, idempotency keys. Each request becomes API_* messages from
 * the API's process (owner: the system) to the user's hub, wherever it lives; docs/api.md. */
#ifndef RL_API_H
#define RL_API_H

#include <stddef.h>
#include <stdint.h>

#include "rl_config.h"
#include "rl_metrics.h"

/* Bounds that are not settings (the settings are relay.node api: max_body, rate, burst,
   idempotency_ttl). */
#define RL_API_CALL_TIMEOUT_MS 5000  /* a hub (or Redis) that has not answered by then: 504 */
#define RL_API_BROADCAST_MAX 1000    /* users in one broadcast */
#define RL_API_INFLIGHT_MAX 20000    /* hub round trips in flight, all requests together */
#define RL_API_IDEM_MAX 10000        /* idempotency keys remembered (the oldest go first) */
#define RL_API_IDEM_KEY_MAX 128      /* bytes of an Idempotency-Key */
#define RL_API_USER_MAX 256          /* bytes of a user id */
#define RL_API_TOPIC_MAX 128         /* bytes of a topic name */

/* Where a user's hub is (the central hub's rl_central_locate): cb(rc, hub_pid, epoch, ud) with
   rc 0, -ENOENT (no hub) or another negative errno; cb may run inside the call. Returns 0, or
   negative when cb will not run. */
typedef void (*rl_api_located_cb)(int rc, const char *hub_pid, uint64_t epoch, void *ud);
typedef int (*rl_api_locate_fn)(const char *user, rl_api_located_cb cb, void *ud);
/* The cluster's node list as a JSON array (rl_cluster_nodes); json NULL when it failed. */
typedef void (*rl_api_nodes_cb)(const char *json, size_t len, void *ud);
typedef int (*rl_api_nodes_fn)(rl_api_nodes_cb cb, void *ud);

/* One page of user ids as JSON {"users":[...],"cursor":"C"} (cursor "0": the last page); json
   NULL when it failed. The default (no hook set) lists this node's hubs; a cluster sets one that
   reads Redis (rl_api_stream.c's rl_api_cluster_users). */
typedef void (*rl_api_users_cb)(const char *json, size_t len, void *ud);
typedef int (*rl_api_users_fn)(const char *cursor, unsigned count, rl_api_users_cb cb, void *ud);
void rl_api_set_users_fn(rl_api_users_fn fn);
/* The config rl_api_start was given (NULL when stopped). */
const rl_config *rl_api_config(void);

/* Starts the API's process. c must outlive it; locate is required, nodes NULL = standalone.
   The listener is the caller's to open (rl_gateway_add_listener with rl_api_protocols()).
   0 or negative errno. */
int rl_api_start(const rl_config *c, rl_api_locate_fn locate, rl_api_nodes_fn nodes);
/* The second entry point (the Redis stream, rl_api_stream.c): runs one operation as the HTTP
   API would, with the same checks and answers. op: "message", "broadcast", "disconnect" (user
   and body as POST /api/v1/users/{user}/...), "user" (GET /api/v1/users/{user}), "nodes"; body
   the JSON body (len 0: none). cb gets the HTTP status and the JSON answer (valid during cb);
   it runs exactly once, maybe inside this call, and within RL_API_CALL_TIMEOUT_MS (rl_api_stop
   answers 503). An unknown op or a missing user is answered 400 through cb too. Returns 0, or
   -ESHUTDOWN / -ENOMEM when cb will not run. */
typedef void (*rl_api_result_cb)(unsigned status, const char *body, size_t len, void *ud);
int rl_api_call(const char *op, const char *user, const char *body, size_t len,
                rl_api_result_cb cb, void *ud);

/* The lws protocol list that serves the API (static; NULL-terminated). */
const struct lws_protocols *rl_api_protocols(void);
/* Stops the sweep timer and the process; requests in flight are answered 503. Shutdown, before
   the gateway stops. */
void rl_api_stop(void);
/* /metrics source: requests by status class, in-flight calls, remembered idempotency keys. */
void rl_api_metrics(rl_metrics_out *out);

#endif
