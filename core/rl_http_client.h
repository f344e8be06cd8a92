/* Outbound HTTP on the node's loop: libcurl's multi interface driven by libuv (one uv_timer for
 * curl's timeouts, one uv_poll per socket curl opens), no thread of ours and nothing that blocks
 * the loop. Shared by the plugins' http module and the gateway's connect hook. Which URLs a
 * plugin may fetch is common/rl_urlmatch's. */
#ifndef RL_HTTP_CLIENT_H
#define RL_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

/* Bounds of one request (STYLE: named constants in one place). */
#define RL_HC_URL_MAX 8192          /* bytes of a URL */
#define RL_HC_HEADERS_MAX (64u << 10) /* response header bytes kept (more: the request fails) */
#define RL_HC_REQ_HEADERS_MAX 64    /* request headers */

/* Which client a request is counted under in /metrics. */
typedef enum { RL_HC_PLUGIN = 0, RL_HC_HOOK = 1, RL_HC_KINDS } rl_hc_kind;

/* Why a request failed (or was refused before it started), the label of its /metrics counter. */
#define RL_HC_FAILS(X)                                                                            \
    X(TIMEOUT, "timeout")       /* the request's time bound passed */                             \
    X(TOO_LARGE, "too_large")   /* the response was over its size bound */                       \
    X(CONNECT, "connect")       /* refused, unreachable, DNS */                                  \
    X(OTHER, "error")           /* TLS, protocol, out of memory */                               \
    X(NOT_ALLOWED, "not_allowed") /* refused: the destination is not on the allow-list */        \
    X(BUSY, "busy")             /* refused: a concurrency bound was reached */

typedef enum {
#define RL_HC_FAIL_ENUM(id, name) RL_HC_F_##id,
    RL_HC_FAILS(RL_HC_FAIL_ENUM)
#undef RL_HC_FAIL_ENUM
    RL_HC_F_COUNT
} rl_hc_fail;

typedef struct rl_hc_req rl_hc_req;

/* What a finished request gives its callback. Every pointer is valid only during the call. */
typedef struct rl_hc_result {
    int status;          /* the HTTP status, 0 when the request failed */
    rl_hc_fail fail;     /* with status 0: why */
    const char *error;   /* with status 0: a human-readable reason */
    const char *body;    /* the response body (never NULL; NUL-terminated) */
    size_t body_len;
    const char *headers; /* the final response's header lines, "Name: value\r\n" each, as sent */
    size_t headers_len;
} rl_hc_result;

typedef void (*rl_hc_cb)(void *ud, const rl_hc_result *r);

typedef struct rl_hc_opts {
    rl_hc_kind kind;
    const char *method;           /* "GET", "POST", ... (token characters only) */
    const char *url;              /* http:// or https:// (callers check it: rl_hc_url_check) */
    const char *const *headers;   /* "Name: value" each (checked by the caller) */
    size_t nheaders;
    const char *body;             /* copied; NULL = no body */
    size_t body_len;
    uint64_t timeout_ms;          /* the whole request, connect included (> 0) */
    size_t max_response;          /* body bytes; a larger response fails with TOO_LARGE */
} rl_hc_opts;

/* Sets the node-wide bound on plugins' requests in flight (http.max_concurrent_node); the
   connect hook's are bounded by the handshakes in progress instead. */
void rl_hc_set_limit(size_t max_in_flight);
/* Starts a request; cb runs exactly once from the loop when it ends (never from inside this
   call), unless rl_hc_cancel comes first. Redirects are not followed (a 3xx is the answer),
   proxies from the environment are ignored, only http and https are spoken. Returns 0 and the
   handle in *out (valid until cb has run or rl_hc_cancel), -EAGAIN at the node-wide bound,
   -ENOMEM, or -EINVAL (curl would not take the options). */
int rl_hc_start(const rl_hc_opts *o, rl_hc_cb cb, void *ud, rl_hc_req **out);
/* Ends a request in flight at once (its sockets closed); cb never runs. */
void rl_hc_cancel(rl_hc_req *r);
/* Requests of kind in flight on this node. */
size_t rl_hc_in_flight(rl_hc_kind kind);
/* Counts a request refused before it started (NOT_ALLOWED, BUSY) under kind. */
void rl_hc_count_refused(rl_hc_kind kind, rl_hc_fail why);
/* Cancels everything in flight and closes the loop handles (shutdown; later starts work again). */
void rl_hc_stop(void);
struct rl_metrics_out;
/* relay_http_requests_total, relay_http_failures_total, relay_http_in_flight. */
void rl_hc_metrics(struct rl_metrics_out *out);

#endif
