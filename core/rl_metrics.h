/* Node metrics: counters and gauges, rendered in the Prometheus text format at /metrics. */
#ifndef RL_METRICS_H
#define RL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "rl_errors.h"

/* X(name, prometheus name, type, help) */
#define RL_METRICS(X)                                                                             \
    X(CONNS_ACCEPTED, "relay_connections_accepted_total", "counter", "WebSocket upgrades accepted") \
    X(CONNS_REJECTED, "relay_connections_rejected_total", "counter", "Handshakes refused (auth, origin, unavailable)") \
    X(CONNS_OPEN, "relay_connections", "gauge", "Open WebSocket connections")                     \
    X(PING_TIMEOUTS, "relay_ping_timeouts_total", "counter", "Connections cut: no pong or frame within ping_timeout") \
    X(MSGS_IN, "relay_messages_in_total", "counter", "Client frames received")                    \
    X(MSGS_OUT, "relay_messages_out_total", "counter", "Frames sent to clients")                  \
    X(MSGS_ROUTED, "relay_messages_routed_total", "counter", "Client messages routed to plugins") \
    X(MSGS_REFUSED, "relay_messages_refused_total", "counter", "Messages refused: the sender may not send that topic to that process") \
    X(MSGS_DROPPED, "relay_messages_dropped_total", "counter", "Messages dropped (target gone or mailbox discarded)") \
    X(FORWARDED_OUT, "relay_forwarded_out_total", "counter", "Messages forwarded to other nodes") \
    X(FORWARDED_IN, "relay_forwarded_in_total", "counter", "Messages received from other nodes") \
    X(EPOCH_DROPPED, "relay_epoch_dropped_total", "counter", "Forwarded messages dropped for a stale lease epoch") \
    X(HUBS_CREATED, "relay_hubs_created_total", "counter", "User hubs created")                  \
    X(HUBS_COLLECTED, "relay_hubs_collected_total", "counter", "Idle user hubs collected")       \
    X(PLUGINS_STARTED, "relay_plugins_started_total", "counter", "Plugin processes started")     \
    X(PLUGINS_CRASHED, "relay_plugins_crashed_total", "counter", "Plugin processes that crashed") \
    X(REDIS_ERRORS, "relay_redis_errors_total", "counter", "Redis command or connection errors") \
    X(REDIS_RTT_US, "relay_redis_rtt_seconds", "gauge", "Last measured Redis round trip (NaN while Redis is down)") \
    X(LUA_BYTES, "relay_lua_memory_bytes", "gauge", "Bytes allocated by the Lua state")         \
    X(JSON_DECODES, "relay_json_decodes_total", "counter", "JSON documents decoded into Lua values") \
    X(JSON_ENCODES, "relay_json_encodes_total", "counter", "Lua values encoded to JSON")        \
    X(HOOK_ACCEPTED, "relay_connect_hook_accepted_total", "counter", "Connections the connect hook accepted") \
    X(HOOK_DENIED, "relay_connect_hook_denied_total", "counter", "Connections the connect hook denied (closed 1008)") \
    X(HOOK_FAILED, "relay_connect_hook_failed_total", "counter", "Connect hook calls that failed (timeout, error status, bad answer, unreachable)")

typedef enum {
#define RL_METRIC_ENUM(name, pname, type, help) RL_M_##name,
    RL_METRICS(RL_METRIC_ENUM)
#undef RL_METRIC_ENUM
    RL_M_COUNT
} rl_metric;

/* Latency histograms: X(name, prometheus name, help). Fixed log-spaced buckets (1, 2.5, 5 per
   decade from 1 us to 10 s, then +Inf): an observation is a few compares and two adds, no
   allocation. Observed in nanoseconds, rendered in seconds as a Prometheus histogram. */
#define RL_HISTOGRAMS(X)                                                                          \
    X(ROUTING, "relay_routing_seconds", "Client frame arrival at the node to its hand-over to a plugin") \
    X(REDIS_HEARTBEAT, "relay_redis_heartbeat_seconds", "Cluster heartbeat round trips to Redis (millisecond resolution)")

typedef enum {
#define RL_HIST_ENUM(name, pname, help) RL_H_##name,
    RL_HISTOGRAMS(RL_HIST_ENUM)
#undef RL_HIST_ENUM
    RL_H_COUNT
} rl_histogram;

#define RL_HIST_BOUNDS 22
typedef struct rl_hist {
    uint64_t counts[RL_HIST_BOUNDS + 1]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t sum_ns;
} rl_hist;
extern const uint64_t rl_hist_bounds_ns[RL_HIST_BOUNDS];
extern rl_hist rl_hists[RL_H_COUNT];

static inline void rl_hist_observe_ns(rl_histogram h, uint64_t ns)
{
    unsigned i = 0;
    while (i < RL_HIST_BOUNDS && ns > rl_hist_bounds_ns[i])
        i++;
    rl_hists[h].counts[i]++;
    rl_hists[h].sum_ns += ns;
}

extern uint64_t rl_metric_values[RL_M_COUNT];
extern uint64_t rl_metric_errors[RL_E_COUNT];

static inline void rl_metric_inc(rl_metric m) { rl_metric_values[m]++; }
static inline void rl_metric_add(rl_metric m, uint64_t n) { rl_metric_values[m] += n; }
static inline void rl_metric_dec(rl_metric m) { rl_metric_values[m]--; }
static inline void rl_metric_set(rl_metric m, uint64_t v) { rl_metric_values[m] = v; }
static inline void rl_metric_error(rl_err_code e) { rl_metric_errors[e]++; }

/* Renders every metric (plus the live gauges of the registered sources) into a malloc'd
   string; *len gets its length. Caller frees. */
char *rl_metrics_render(size_t *len);

/* Live gauges of other layers (users, plugins by status): main registers each source, which
   appends Prometheus text with rl_metrics_put / rl_metrics_gauge when /metrics is rendered. */
typedef struct rl_metrics_out rl_metrics_out;
typedef void (*rl_metrics_fn)(rl_metrics_out *out);
void rl_metrics_add_source(rl_metrics_fn fn);
void rl_metrics_put(rl_metrics_out *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rl_metrics_gauge(rl_metrics_out *out, const char *name, const char *help, uint64_t v);

/* Cluster mode: up() tells whether Redis answers (relay_redis_up). The REDIS_RTT_US value is kept
   in microseconds and shown in seconds, only with up() set, and NaN while up() is 0: a stale or
   zero round trip must not look like a fast Redis. relay_redis_heartbeat_seconds is shown only
   in cluster mode too. */
void rl_metrics_set_redis(int (*up)(void));

#endif
