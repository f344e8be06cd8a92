/* Outbound HTTP on the node's loop (rl_http_client.h): curl's multi interface, told about socket
 * readiness by uv_poll handles and about its timeouts by one uv_timer.
 *
 * The pattern: curl's socket callback (CURLMOPT_SOCKETFUNCTION) starts, changes or stops a
 * uv_poll per socket and hangs it on the socket with curl_multi_assign; the timer callback
 * (CURLMOPT_TIMERFUNCTION) arms the uv_timer. Each poll or timer event calls
 * curl_multi_socket_action and then reads the finished transfers (curl_multi_info_read). Callers'
 * callbacks run only from there, never from inside a curl callback, so they may start or cancel
 * requests. Name resolution runs in curl's own resolver thread (Debian's libcurl is built with the
 * threaded resolver): the loop never waits for DNS. */
#include "rl_http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_proc.h"

struct rl_hc_req {
    rl_hc_req *prev, *next; /* hc.reqs */
    CURL *easy;
    struct curl_slist *hdrs;
    rl_hc_cb cb;
    void *ud;
    rl_hc_kind kind;
    size_t max_response;
    char *body; /* the request body (copy) */
    char *resp;
    size_t resp_len, resp_cap;
    char *rhdr; /* the response header lines */
    size_t rhdr_len, rhdr_cap;
    int too_large, hdr_overflow;
    char errbuf[CURL_ERROR_SIZE];
};

/* One uv_poll per socket curl watches; freed in its close callback. */
typedef struct hc_sock {
    uv_poll_t poll;
    curl_socket_t fd;
    struct hc_sock *prev, *next; /* hc.socks */
} hc_sock;

static struct {
    CURLM *multi;
    uv_timer_t *timer; /* its own block: a closing handle outlives rl_hc_stop */
    rl_hc_req *reqs;
    hc_sock *socks; /* polls open (closed at CURL_POLL_REMOVE, or at rl_hc_stop) */
    size_t active, limit;
    size_t plugin_active; /* the node-wide bound counts plugins' requests only: plugins cannot
                             starve the connect hook, which the handshake timeout bounds */
    int global;
    uint64_t requests[RL_HC_KINDS];
    uint64_t fails[RL_HC_KINDS][RL_HC_F_COUNT];
} hc = {.limit = 64};

static const char *const kind_names[RL_HC_KINDS] = {"plugin", "connect_hook"};
static const char *const fail_names[RL_HC_F_COUNT] = {
#define RL_HC_FAIL_NAME(id, name) name,
    RL_HC_FAILS(RL_HC_FAIL_NAME)
#undef RL_HC_FAIL_NAME
};

void rl_hc_set_limit(size_t max_in_flight) { hc.limit = max_in_flight; }
size_t rl_hc_in_flight(rl_hc_kind kind)
{
    return kind == RL_HC_PLUGIN ? hc.plugin_active : hc.active - hc.plugin_active;
}

void rl_hc_count_refused(rl_hc_kind kind, rl_hc_fail why) { hc.fails[kind][why]++; }

/* ---- loop plumbing ----------------------------------------------------------------------- */

static void read_done(void);

static void sock_closed(uv_handle_t *h) { free(h->data); }

static void sock_close(hc_sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        hc.socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    hc_sock *s = p->data;
    int flags = 0, running = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(hc.multi, s->fd, flags, &running);
    read_done();
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
    int running = 0;
    curl_multi_socket_action(hc.multi, CURL_SOCKET_TIMEOUT, 0, &running);
    read_done();
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)userp;
    hc_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            sock_close(s);
            curl_multi_assign(hc.multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        if (!(s = calloc(1, sizeof *s)))
            return -1; /* curl fails the transfer */
        s->fd = fd;
        if (uv_poll_init_socket(rl_node_loop(), &s->poll, fd) < 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->next = hc.socks;
        if (s->next)
            s->next->prev = s;
        hc.socks = s;
        curl_multi_assign(hc.multi, fd, s);
    }
    int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    (void)userp;
    if (timeout_ms < 0)
        uv_timer_stop(hc.timer);
    else /* 0: at once, from the loop (calling socket_action from here is not allowed) */
        uv_timer_start(hc.timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static void timer_closed(uv_handle_t *h) { free(h); }

static int hc_open(void)
{
    if (hc.multi)
        return 0;
    if (!hc.global) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
            return -ENOMEM;
        hc.global = 1;
    }
    if (!(hc.timer = malloc(sizeof *hc.timer)))
        return -ENOMEM;
    if (!(hc.multi = curl_multi_init())) {
        free(hc.timer);
        hc.timer = NULL;
        return -ENOMEM;
    }
    uv_timer_init(rl_node_loop(), hc.timer); /* armed only while curl has work */
    curl_multi_setopt(hc.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(hc.multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    return 0;
}

/* ---- requests ---------------------------------------------------------------------------- */

static int buf_add(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 1024;
        while (nc < *len + n + 1)
            nc *= 2;
        char *b = realloc(*buf, nc);
        if (!b)
            return -1;
        *buf = b;
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
    rl_hc_req *r = ud;
    size_t n = size * nmemb;
    if (r->resp_len + n > r->max_response) {
        r->too_large = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    return buf_add(&r->resp, &r->resp_len, &r->resp_cap, p, n) < 0 ? 0 : n;
}

static size_t header_cb(char *p, size_t size, size_t nmemb, void *ud)
{
    rl_hc_req *r = ud;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        r->rhdr_len = 0; /* a new response (after 100 Continue): only the last one counts */
    if (r->rhdr_len + n > RL_HC_HEADERS_MAX) {
        r->hdr_overflow = 1;
        return 0;
    }
    return buf_add(&r->rhdr, &r->rhdr_len, &r->rhdr_cap, p, n) < 0 ? 0 : n;
}

static void req_unlink(rl_hc_req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        hc.reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

static void req_free(rl_hc_req *r)
{
    if (r->easy) {
        curl_multi_remove_handle(hc.multi, r->easy);
        curl_easy_cleanup(r->easy);
        hc.active--;
        if (r->kind == RL_HC_PLUGIN)
            hc.plugin_active--;
    }
    curl_slist_free_all(r->hdrs);
    free(r->body);
    free(r->resp);
    free(r->rhdr);
    free(r);
}

static void req_finish(rl_hc_req *r, CURLcode code)
{
    rl_hc_result res = {0};
    long status = 0;
    if (code == CURLE_OK)
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    res.status = (int)status;
    if (!res.status) {
        if (r->too_large || code == CURLE_FILESIZE_EXCEEDED) {
            res.fail = RL_HC_F_TOO_LARGE, res.error = "response too large";
        } else if (code == CURLE_OPERATION_TIMEDOUT) {
            res.fail = RL_HC_F_TIMEOUT, res.error = "timeout";
        } else if (code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
                   code == CURLE_COULDNT_RESOLVE_PROXY) {
            res.fail = RL_HC_F_CONNECT;
            res.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(code);
        } else {
            res.fail = RL_HC_F_OTHER;
            res.error = r->hdr_overflow ? "response headers too large"
                        : r->errbuf[0]  ? r->errbuf
                                        : curl_easy_strerror(code);
        }
        hc.fails[r->kind][res.fail]++;
    }
    res.body = r->resp ? r->resp : "";
    res.body_len = r->resp_len;
    res.headers = r->rhdr ? r->rhdr : "";
    res.headers_len = r->rhdr_len;
    req_unlink(r);
    rl_hc_cb cb = r->cb;
    void *ud = r->ud;
    cb(ud, &res); /* the request is off the list: a cancel of it from cb cannot happen */
    req_free(r);
}

static void read_done(void)
{
    CURLMsg *m;
    int left;
    while (hc.multi && (m = curl_multi_info_read(hc.multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        rl_hc_req *r = NULL;
        CURLcode code = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (r)
            req_finish(r, code);
    }
}

int rl_hc_start(const rl_hc_opts *o, rl_hc_cb cb, void *ud, rl_hc_req **out)
{
    *out = NULL;
    if (o->kind == RL_HC_PLUGIN && hc.plugin_active >= hc.limit) {
        hc.fails[o->kind][RL_HC_F_BUSY]++;
        return -EAGAIN;
    }
    int rc = hc_open();
    if (rc < 0)
        return rc;
    rl_hc_req *r = calloc(1, sizeof *r);
    if (!r)
        return -ENOMEM;
    r->cb = cb;
    r->ud = ud;
    r->kind = o->kind;
    r->max_response = o->max_response;
    rc = -ENOMEM;
    if (!(r->easy = curl_easy_init()))
        goto fail;
    hc.active++;
    if (r->kind == RL_HC_PLUGIN)
        hc.plugin_active++;
    for (size_t i = 0; i < o->nheaders; i++) {
        struct curl_slist *l = curl_slist_append(r->hdrs, o->headers[i]);
        if (!l)
            goto fail;
        r->hdrs = l;
    }
    /* curl adds "Expect: 100-continue" to larger bodies and waits a second for it */
    struct curl_slist *l = curl_slist_append(r->hdrs, "Expect:");
    if (!l)
        goto fail;
    r->hdrs = l;
    CURL *e = r->easy;
    rc = -EINVAL;
    if (curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method) != CURLE_OK)
        goto fail;
    if (strcmp(o->method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    if (o->body) {
        if (!(r->body = malloc(o->body_len ? o->body_len : 1)))
            goto fail_nomem;
        memcpy(r->body, o->body, o->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method); /* POSTFIELDS implies POST */
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* no proxy from http_proxy & co. */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_response);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)r);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "relay-node");
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL);
    if (curl_multi_add_handle(hc.multi, e) != CURLM_OK)
        goto fail;
    r->next = hc.reqs;
    if (r->next)
        r->next->prev = r;
    hc.reqs = r;
    hc.requests[o->kind]++;
    *out = r;
    return 0;
fail_nomem:
    rc = -ENOMEM;
fail:
    if (r->easy) {
        curl_easy_cleanup(r->easy); /* never added to the multi */
        r->easy = NULL;
        hc.active--;
        if (r->kind == RL_HC_PLUGIN)
            hc.plugin_active--;
    }
    req_free(r);
    return rc;
}

void rl_hc_cancel(rl_hc_req *r)
{
    if (!r)
        return;
    req_unlink(r);
    req_free(r);
}

void rl_hc_stop(void)
{
    while (hc.reqs) {
        rl_hc_req *r = hc.reqs;
        rl_warn("http", "shutdown: request still in flight cancelled");
        rl_hc_cancel(r);
    }
    if (!hc.multi)
        return;
    curl_multi_cleanup(hc.multi); /* closes the cached connections (CURL_POLL_REMOVE) */
    hc.multi = NULL;
    while (hc.socks) /* whatever curl did not tell us about */
        sock_close(hc.socks);
    uv_timer_stop(hc.timer);
    uv_close((uv_handle_t *)hc.timer, timer_closed);
    hc.timer = NULL;
}

void rl_hc_metrics(rl_metrics_out *out)
{
    rl_metrics_put(out, "# HELP relay_http_requests_total Outbound HTTP requests started\n"
                        "# TYPE relay_http_requests_total counter\n");
    for (int k = 0; k < RL_HC_KINDS; k++)
        rl_metrics_put(out, "relay_http_requests_total{client=\"%s\"} %llu\n", kind_names[k],
                       (unsigned long long)hc.requests[k]);
    rl_metrics_put(out, "# HELP relay_http_failures_total Outbound HTTP requests that failed or "
                        "were refused, by reason\n"
                        "# TYPE relay_http_failures_total counter\n");
    for (int k = 0; k < RL_HC_KINDS; k++)
        for (int f = 0; f < RL_HC_F_COUNT; f++)
            rl_metrics_put(out, "relay_http_failures_total{client=\"%s\",reason=\"%s\"} %llu\n",
                           kind_names[k], fail_names[f], (unsigned long long)hc.fails[k][f]);
    rl_metrics_gauge(out, "relay_http_in_flight", "Outbound HTTP requests in flight", hc.active);
}
