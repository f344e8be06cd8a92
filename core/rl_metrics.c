/* Node metrics: counters and gauges, rendered in the Prometheus text format at /metrics. */
#include "rl_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_proc.h"

#define RL_METRICS_SOURCES 8

uint64_t rl_metric_values[RL_M_COUNT];
uint64_t rl_metric_errors[RL_E_COUNT];

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

char *rl_metrics_render(size_t *len)
{
    buf b = {0};
    for (int i = 0; i < RL_M_COUNT; i++)
        put(&b, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", defs[i].name, defs[i].help, defs[i].name,
            defs[i].type, defs[i].name, (unsigned long long)rl_metric_values[i]);
    put(&b, "# HELP relay_errors_total Errors answered to clients, by code\n"
            "# TYPE relay_errors_total counter\n");
    for (int e = 0; e < RL_E_COUNT; e++)
        put(&b, "relay_errors_total{code=\"%s\"} %llu\n", rl_err_name((rl_err_code)e),
            (unsigned long long)rl_metric_errors[e]);
    rl_metrics_gauge(&b, "relay_hubs", "Live user hubs on this node", rl_proc_count('h'));
    rl_metrics_gauge(&b, "relay_plugin_processes", "Live plugin processes", rl_proc_count('p'));
    for (size_t i = 0; i < nsources; i++)
        sources[i](&b);
    if (len)
        *len = b.len;
    return b.s;
}
