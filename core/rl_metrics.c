/* Node metrics: counters and gauges, rendered in the Prometheus text format at /metrics. */
#include "rl_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_proc.h"
#include "rl_selfstat.h"
#include "rl_version.h"

#define RL_METRICS_SOURCES 8

uint64_t rl_metric_values[RL_M_COUNT];
uint64_t rl_metric_errors[RL_E_COUNT];
rl_hist rl_hists[RL_H_COUNT];

/* The bucket bounds in nanoseconds and, for le, in seconds as text (no float formatting). */
const uint64_t rl_hist_bounds_ns[RL_HIST_BOUNDS] = {
    1000,       2500,       5000,       10000,      25000,      50000,      100000,    250000,
    500000,     1000000,    2500000,    5000000,    10000000,   25000000,   50000000,  100000000,
    250000000,  500000000,  1000000000, 2500000000, 5000000000, 10000000000,
};
static const char *const hist_le[RL_HIST_BOUNDS] = {
    "0.000001", "0.0000025", "0.000005", "0.00001", "0.000025", "0.00005", "0.0001", "0.00025",
    "0.0005",   "0.001",     "0.0025",   "0.005",   "0.01",     "0.025",   "0.05",   "0.1",
    "0.25",     "0.5",       "1",        "2.5",     "5",        "10",
};

static const struct {
    const char *name, *help;
} hist_defs[] = {
#define RL_HIST_ROW(n, pname, help) {pname, help},
    RL_HISTOGRAMS(RL_HIST_ROW)
#undef RL_HIST_ROW
};

static const struct {
    const char *name, *type, *help;
} defs[] = {
#define RL_METRIC_ROW(n, pname, type, help) {pname, type, help},
    RL_METRICS(RL_METRIC_ROW)
#undef RL_METRIC_ROW
};

struct rl_metrics_out {
    char *s;
    size_t len, cap;
};
typedef rl_metrics_out buf;

static rl_metrics_fn sources[RL_METRICS_SOURCES];
static size_t nsources;
static int (*redis_up)(void);

void rl_metrics_set_redis(int (*up)(void)) { redis_up = up; }

void rl_metrics_add_source(rl_metrics_fn fn)
{
    if (nsources < RL_METRICS_SOURCES)
        sources[nsources++] = fn;
}

#define put rl_metrics_put
void rl_metrics_put(buf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if (b->s && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *ns = realloc(b->s, ncap);
        if (!ns)
            return;
        b->s = ns;
        b->cap = ncap;
    }
}

void rl_metrics_gauge(buf *b, const char *name, const char *help, uint64_t v)
{
    put(b, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", name, help, name, name, (unsigned long long)v);
}

/* relay_redis_up and the round trip in seconds (rendered here: the table's values are integers). */
static void render_redis(buf *b)
{
    int up = redis_up() ? 1 : 0;
    rl_metrics_gauge(b, "relay_redis_up", "1 while the node's Redis round trips succeed, else 0", (uint64_t)up);
    const char *n = defs[RL_M_REDIS_RTT_US].name;
    put(b, "# HELP %s %s\n# TYPE %s gauge\n", n, defs[RL_M_REDIS_RTT_US].help, n);
    if (up)
        put(b, "%s %.6f\n", n, (double)rl_metric_values[RL_M_REDIS_RTT_US] / 1e6);
    else
        put(b, "%s NaN\n", n);
}

/* One histogram: cumulative buckets, +Inf, _sum in seconds, _count. */
static void render_hist(buf *b, rl_histogram h)
{
    const char *n = hist_defs[h].name;
    const rl_hist *hs = &rl_hists[h];
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", n, hist_defs[h].help, n);
    uint64_t cum = 0;
    for (int i = 0; i < RL_HIST_BOUNDS; i++) {
        cum += hs->counts[i];
        put(b, "%s_bucket{le=\"%s\"} %llu\n", n, hist_le[i], (unsigned long long)cum);
    }
    cum += hs->counts[RL_HIST_BOUNDS];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", n, (unsigned long long)cum,
        n, (double)hs->sum_ns / 1e9, n, (unsigned long long)cum);
}

/* The process_* metrics every Prometheus client library exports, from /proc. */
static void render_process(buf *b)
{
    rl_selfstat st;
    if (rl_selfstat_read(&st) < 0)
        return;
    put(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds\n"
           "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.2f\n",
        st.cpu_seconds);
    rl_metrics_gauge(b, "process_resident_memory_bytes", "Resident memory size in bytes",
                     st.resident_bytes);
    rl_metrics_gauge(b, "process_virtual_memory_bytes", "Virtual memory size in bytes",
                     st.virtual_bytes);
    put(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds\n"
           "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.2f\n",
        st.start_time_seconds);
    rl_metrics_gauge(b, "process_open_fds", "Number of open file descriptors", st.open_fds);
    if (st.max_fds)
        rl_metrics_gauge(b, "process_max_fds", "Maximum number of open file descriptors",
                         st.max_fds);
}

char *rl_metrics_render(size_t *len)
{
    buf b = {0};
    put(&b, "# HELP relay_build_info The node's version (always 1)\n# TYPE relay_build_info gauge\n"
            "relay_build_info{version=\"%s\"} 1\n", RL_VERSION);
    for (int i = 0; i < RL_M_COUNT; i++)
        if (i != RL_M_REDIS_RTT_US)
            put(&b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", defs[i].name, defs[i].help, defs[i].name,
                defs[i].type, defs[i].name, (unsigned long long)rl_metric_values[i]);
    render_hist(&b, RL_H_ROUTING);
    if (redis_up) {
        render_redis(&b);
        render_hist(&b, RL_H_REDIS_HEARTBEAT);
    }
    put(&b, "# HELP relay_errors_total Errors answered to clients, by code\n"
            "# TYPE relay_errors_total counter\n");
    for (int e = 0; e < RL_E_COUNT; e++)
        put(&b, "relay_errors_total{code=\"%s\"} %llu\n", rl_err_name((rl_err_code)e),
            (unsigned long long)rl_metric_errors[e]);
    rl_metrics_gauge(&b, "relay_hubs", "Live user hubs on this node", rl_proc_count('h'));
    rl_metrics_gauge(&b, "relay_plugin_processes", "Live plugin processes", rl_proc_count('p'));
    for (size_t i = 0; i < nsources; i++)
        sources[i](&b);
    render_process(&b);
    if (len)
        *len = b.len;
    return b.s;
}
