/* relay-bench: WebSocket load generator (raw sockets + epoll): echo round trips, connect rate,
 * idle connections held for memory figures. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "rl_jwt.h"

/* Bounds: what the server controls is capped so a broken server cannot exhaust the client. */
#define BENCH_MAX_FRAME (64u << 20)      /* largest message accepted from the server */
#define BENCH_MAX_HTTP_HEAD 16384        /* largest handshake response */
#define BENCH_MAX_PENDING_OPENS 256      /* default handshakes in flight (listen backlog) */
#define BENCH_MAX_SOURCES 64             /* --source addresses */
#define BENCH_MAX_EVENTS 512
#define BENCH_HIST_FINE 100000           /* 1 us buckets up to 100 ms */
#define BENCH_HIST_COARSE 100000         /* then 1 ms buckets up to 100 s */
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

typedef enum {
    ST_IDLE = 0,   /* not opened yet */
    ST_CONNECTING, /* TCP connect in progress */
    ST_HANDSHAKE,  /* upgrade request written (maybe partly), waiting for 101 */
    ST_WELCOME,    /* upgraded, waiting for the first frame (the hub's welcome) */
    ST_READY,      /* welcomed: idle or one message in flight */
    ST_DEAD        /* failed or closed; counted once */
} conn_state;

typedef struct buf {
    uint8_t *p;
    size_t len, off, cap;
} buf;

typedef struct conn {
    int fd;
    int idx;
    int target; /* 0 = url, 1 = url2 */
    conn_state state;
    int want_out;          /* EPOLLOUT registered */
    buf in, out, msg;      /* raw input, pending output, fragmented message being reassembled */
    int msg_op;            /* opcode of the message in msg, 0 when none */
    char accept[32];       /* expected Sec-WebSocket-Accept */
    uint64_t deadline_ns;  /* open/welcome deadline, then reply deadline while in flight */
    uint64_t open_ns;      /* when the TCP connect started */
    uint64_t sent_ns;      /* when the in-flight message was sent */
    uint64_t seq;
    int inflight;
    char rid[48];          /* quoted request id of the in-flight message: "\"c-s\"" */
    size_t rid_len;
} conn;

typedef struct target {
    char host[256];
    char port[8];
    char path[1024];  /* path and query without user_id */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} target;

typedef struct bench {
    target tg[2];
    int ntargets;
    int nconns, nusers;
    int concurrency;           /* handshakes in flight at once */
    const char *user_prefix;   /* user_id = <prefix><offset + i % nusers> */
    long user_offset;
    struct sockaddr_in sources[BENCH_MAX_SOURCES]; /* local addresses, one per connection in turn */
    int nsources;
    double duration_s, warmup_s, timeout_s, hold_s;
    size_t size;
    const char *type;
    const char *jwt_secret;
    int idle_mode;
    int verbose;
    int marks; /* --marks: phase changes on stderr, so a script can sample the server then */

    int ep;
    conn *conns;
    int opened;      /* connections started */
    int pending;     /* started but not yet welcomed or dead */
    int welcomed;    /* open and welcomed now */
    int ever_welcomed;
    int dead;
    uint64_t errors;
    char first_error[256];
    uint64_t msgs;         /* replies counted in the measured window */
    uint64_t error_frames; /* error topic replies */
    int measuring;
    int stopping;
    uint64_t rng;
    uint32_t *hist;      /* round trip latencies */
    uint32_t *open_hist; /* connect start -> welcome, per connection */
    const char *trace_path; /* --trace: every measured round trip, written at the end */
    struct trace_rt {
        uint64_t end_ns; /* since measure start */
        uint32_t us;     /* latency */
        int32_t conn;
    } *trace;
    size_t ntrace, trace_cap;
    uint64_t m0; /* measure start */
} bench;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
    (void)sig;
    got_signal = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* "relay-bench: mark NAME" on stderr, flushed, when --marks asked for it. */
static void mark(const bench *b, const char *name)
{
    if (b->marks) {
        fprintf(stderr, "relay-bench: mark %s\n", name);
        fflush(stderr);
    }
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("relay-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* xorshift64*: frame masks need no cryptographic strength, only to vary. */
static uint32_t rnd32(bench *b)
{
    b->rng ^= b->rng >> 12;
    b->rng ^= b->rng << 25;
    b->rng ^= b->rng >> 27;
    return (uint32_t)((b->rng * 2685821657736338717ULL) >> 32);
}

/* ---- buffers ---------------------------------------------------------------------------- */

static int buf_reserve(buf *x, size_t more)
{
    if (x->len + more <= x->cap)
        return 0;
    if (x->off) { /* slide consumed bytes out first */
        memmove(x->p, x->p + x->off, x->len - x->off);
        x->len -= x->off;
        x->off = 0;
        if (x->len + more <= x->cap)
            return 0;
    }
    size_t ncap = x->cap ? x->cap : 1024;
    while (ncap < x->len + more)
        ncap *= 2;
    uint8_t *np = realloc(x->p, ncap);
    if (!np)
        return -ENOMEM;
    x->p = np;
    x->cap = ncap;
    return 0;
}

static int buf_add(buf *x, const void *p, size_t n)
{
    if (buf_reserve(x, n) < 0)
        return -ENOMEM;
    memcpy(x->p + x->len, p, n);
    x->len += n;
    return 0;
}

static void buf_free(buf *x)
{
    free(x->p);
    memset(x, 0, sizeof *x);
}

static void b64_std(const uint8_t *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = a[(v >> 18) & 63];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = i + 1 < n ? a[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[o] = '\0';
}

/* ---- errors and lifecycle --------------------------------------------------------------- */

static void note_error(bench *b, const char *fmt, ...)
{
    b->errors++;
    if (!b->first_error[0] || b->verbose) {
        char tmp[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        if (!b->first_error[0])
            snprintf(b->first_error, sizeof b->first_error, "%s", tmp);
        if (b->verbose)
            fprintf(stderr, "relay-bench: %s\n", tmp);
    }
}

static void conn_close(bench *b, conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->msg);
}

/* Marks c dead once, counting an error unless we are shutting down on purpose. */
static void conn_fail(bench *b, conn *c, const char *why)
{
    if (c->state == ST_DEAD)
        return;
    if (!b->stopping)
        note_error(b, "conn %d (%s): %s", c->idx, c->state == ST_READY ? "open" : "opening", why);
    if (c->state == ST_READY)
        b->welcomed--;
    else if (c->state != ST_IDLE) /* never-opened connections were not pending */
        b->pending--;
    c->state = ST_DEAD;
    b->dead++;
    conn_close(b, c);
}

static void want_out(bench *b, conn *c, int on)
{
    if (c->want_out == on || c->fd < 0)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(b->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->want_out = on;
}

/* Writes as much pending output as the socket takes; arms EPOLLOUT for the rest. */
static int conn_flush(bench *b, conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(b, c, 1);
            return 0;
        }
        conn_fail(b, c, n < 0 ? strerror(errno) : "send returned 0");
        return -1;
    }
    c->out.off = c->out.len = 0;
    want_out(b, c, 0);
    return 0;
}

/* Queues one masked client frame (RFC 6455 section 5.2) and flushes. */
static int conn_send_frame(bench *b, conn *c, int opcode, const void *data, size_t n)
{
    uint8_t hdr[14];
    size_t h = 0;
    hdr[h++] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        hdr[h++] = (uint8_t)(0x80 | n);
    } else if (n <= 0xffff) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (uint8_t)(n >> 8);
        hdr[h++] = (uint8_t)n;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (uint8_t)((uint64_t)n >> (8 * i));
    }
    uint32_t m = rnd32(b);
    uint8_t mask[4] = {(uint8_t)(m >> 24), (uint8_t)(m >> 16), (uint8_t)(m >> 8), (uint8_t)m};
    memcpy(hdr + h, mask, 4);
    h += 4;
    if (buf_reserve(&c->out, h + n) < 0) {
        conn_fail(b, c, "out of memory");
        return -1;
    }
    memcpy(c->out.p + c->out.len, hdr, h);
    uint8_t *dst = c->out.p + c->out.len + h;
    const uint8_t *src = data;
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] ^ mask[i & 3];
    c->out.len += h + n;
    return conn_flush(b, c);
}

/* ---- opening ------------------------------------------------------------------------------ */

static int conn_open(bench *b, conn *c)
{
    target *t = &b->tg[c->target];
    c->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->state = ST_CONNECTING;
    b->opened++;
    b->pending++;
    c->open_ns = now_ns();
    c->deadline_ns = c->open_ns + (uint64_t)(b->timeout_s * 1e9);
    if (c->fd < 0) {
        conn_fail(b, c, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (b->nsources) {
        /* the port is picked at connect(), per destination: without this, bind() would take a
           port per source address for all destinations, ~28k in all */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        const struct sockaddr_in *src = &b->sources[c->idx % b->nsources];
        if (bind(c->fd, (const struct sockaddr *)src, sizeof *src) < 0) {
            conn_fail(b, c, strerror(errno));
            return -1;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    c->want_out = 1;
    if (epoll_ctl(b->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        conn_fail(b, c, strerror(errno));
        return -1;
    }
    if (connect(c->fd, (struct sockaddr *)&t->addr, t->addrlen) < 0 && errno != EINPROGRESS) {
        conn_fail(b, c, strerror(errno));
        return -1;
    }
    return 0;
}

/* Appends the user to the target's path: "?user_id=benchK" (insecure mode) and, with a JWT
   secret, "x-auth-token=<HS256 token with sub benchK>". */
static int conn_write_upgrade(bench *b, conn *c)
{
    target *t = &b->tg[c->target];
    uint8_t raw[16];
    char key[32];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        for (size_t i = 0; i < sizeof raw; i++)
            raw[i] = (uint8_t)rnd32(b);
    }
    b64_std(raw, sizeof raw, key);

    char cat[64];
    uint8_t sha[EVP_MAX_MD_SIZE];
    unsigned int shalen = 0;
    int kl = snprintf(cat, sizeof cat, "%s" WS_GUID, key);
    if (!EVP_Digest(cat, (size_t)kl, sha, &shalen, EVP_sha1(), NULL) || shalen != 20) {
        conn_fail(b, c, "sha1 failed");
        return -1;
    }
    b64_std(sha, 20, c->accept);

    long user = b->user_offset + c->idx % b->nusers;
    char *tok = NULL;
    if (b->jwt_secret) {
        char claims[160];
        snprintf(claims, sizeof claims, "{\"sub\":\"%s%ld\"}", b->user_prefix, user);
        tok = rl_jwt_sign_hs256(claims, b->jwt_secret, strlen(b->jwt_secret));
        if (!tok) {
            conn_fail(b, c, "jwt sign failed");
            return -1;
        }
    }
    char sep = strchr(t->path, '?') ? '&' : '?';
    char req[2048 + 8192];
    int n = snprintf(req, sizeof req,
                     "GET %s%cuser_id=%s%ld%s%s HTTP/1.1\r\n"
                     "Host: %s:%s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "User-Agent: relay-bench\r\n"
                     "\r\n",
                     t->path, sep, b->user_prefix, user, tok ? "&x-auth-token=" : "",
                     tok ? tok : "", t->host, t->port, key);
    free(tok);
    if (n < 0 || (size_t)n >= sizeof req) {
        conn_fail(b, c, "request too long");
        return -1;
    }
    c->state = ST_HANDSHAKE;
    if (buf_add(&c->out, req, (size_t)n) < 0) {
        conn_fail(b, c, "out of memory");
        return -1;
    }
    return conn_flush(b, c);
}

static void conn_on_connected(bench *b, conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err) {
        conn_fail(b, c, strerror(err));
        return;
    }
    conn_write_upgrade(b, c);
}

/* Finds header name (case-insensitive) in an HTTP head; copies its trimmed value. */
static int http_header(const char *head, const char *name, char *val, size_t vlen)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t n = e ? (size_t)(e - v) : strlen(v);
            while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
                n--;
            if (n >= vlen)
                return -1;
            memcpy(val, v, n);
            val[n] = '\0';
            return 0;
        }
    }
    return -1;
}

/* Consumes the 101 response from c->in. Returns 1 when done, 0 when incomplete, -1 on failure. */
static int conn_parse_upgrade(bench *b, conn *c)
{
    uint8_t *s = c->in.p + c->in.off;
    size_t n = c->in.len - c->in.off;
    uint8_t *end = memmem(s, n, "\r\n\r\n", 4);
    if (!end) {
        if (n > BENCH_MAX_HTTP_HEAD) {
            conn_fail(b, c, "handshake response too large");
            return -1;
        }
        return 0;
    }
    size_t hl = (size_t)(end - s) + 4;
    char *head = malloc(hl + 1);
    if (!head) {
        conn_fail(b, c, "out of memory");
        return -1;
    }
    memcpy(head, s, hl);
    head[hl] = '\0';
    c->in.off += hl;
    char val[64];
    int code = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &code) != 1 || code != 101) {
        char line[128];
        const char *e = strstr(head, "\r\n");
        size_t ll = e ? (size_t)(e - head) : strlen(head);
        if (ll >= sizeof line)
            ll = sizeof line - 1;
        memcpy(line, head, ll);
        line[ll] = '\0';
        free(head);
        char why[192];
        snprintf(why, sizeof why, "upgrade refused: %s", line);
        conn_fail(b, c, why);
        return -1;
    }
    if (http_header(head, "Sec-WebSocket-Accept", val, sizeof val) < 0 ||
        strcmp(val, c->accept) != 0) {
        free(head);
        conn_fail(b, c, "bad Sec-WebSocket-Accept");
        return -1;
    }
    free(head);
    c->state = ST_WELCOME;
    return 1;
}

/* ---- echo traffic ------------------------------------------------------------------------- */

static int conn_send_ping(bench *b, conn *c)
{
    char id[40];
    snprintf(id, sizeof id, "%d-%" PRIu64, c->idx, ++c->seq);
    char prefix[160];
    int pl = snprintf(prefix, sizeof prefix, "{\"type\":\"%s\",\"request_id\":\"%s\",\"data\":\"",
                      b->type, id);
    size_t dl = b->size > (size_t)pl + 2 ? b->size - (size_t)pl - 2 : 0;
    size_t total = (size_t)pl + dl + 2;
    char *m = malloc(total);
    if (!m) {
        conn_fail(b, c, "out of memory");
        return -1;
    }
    memcpy(m, prefix, (size_t)pl);
    memset(m + pl, 'x', dl);
    memcpy(m + pl + dl, "\"}", 2);
    c->rid_len = (size_t)snprintf(c->rid, sizeof c->rid, "\"%s\"", id);
    c->inflight = 1;
    c->sent_ns = now_ns();
    c->deadline_ns = c->sent_ns + (uint64_t)(b->timeout_s * 1e9);
    int rc = conn_send_frame(b, c, 0x1, m, total);
    free(m);
    return rc;
}

static void hist_add(uint32_t *hist, uint64_t ns)
{
    uint64_t us = ns / 1000, ms = us / 1000;
    size_t i;
    if (us < BENCH_HIST_FINE)
        i = (size_t)us;
    else if (ms - BENCH_HIST_FINE / 1000 < BENCH_HIST_COARSE)
        i = BENCH_HIST_FINE + (size_t)(ms - BENCH_HIST_FINE / 1000);
    else
        i = BENCH_HIST_FINE + BENCH_HIST_COARSE - 1; /* saturates at ~100 s */
    hist[i]++;
}

/* The p-quantile (0..1) of hist in microseconds; 0 when empty. */
static uint64_t hist_pct(const uint32_t *hist, double p)
{
    uint64_t total = 0;
    for (size_t i = 0; i < BENCH_HIST_FINE + BENCH_HIST_COARSE; i++)
        total += hist[i];
    if (!total)
        return 0;
    uint64_t want = (uint64_t)(p * (double)total + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t acc = 0;
    for (size_t i = 0; i < BENCH_HIST_FINE + BENCH_HIST_COARSE; i++) {
        acc += hist[i];
        if (acc >= want)
            return i < BENCH_HIST_FINE ? i : (i - BENCH_HIST_FINE + BENCH_HIST_FINE / 1000) * 1000;
    }
    return 0;
}

/* Does the JSON text (p, n) hold "key" : "val" at any level? Tolerates whitespace around the
   colon, so it works for compact and pretty encoders alike; a cheap scan, not a parser. */
static int json_has_kv(const uint8_t *p, size_t n, const char *key, const char *val)
{
    size_t kl = strlen(key), vl = strlen(val);
    const uint8_t *end = p + n;
    for (const uint8_t *q = p; q < end;) {
        const uint8_t *k = memmem(q, (size_t)(end - q), key, kl);
        if (!k)
            return 0;
        q = k + kl;
        if (k == p || k[-1] != '"' || q >= end || *q != '"')
            continue;
        const uint8_t *r = q + 1;
        while (r < end && (*r == ' ' || *r == '\t' || *r == '\n' || *r == '\r'))
            r++;
        if (r >= end || *r++ != ':')
            continue;
        while (r < end && (*r == ' ' || *r == '\t' || *r == '\n' || *r == '\r'))
            r++;
        if ((size_t)(end - r) >= vl + 2 && r[0] == '"' && memcmp(r + 1, val, vl) == 0 &&
            r[vl + 1] == '"')
            return 1;
    }
    return 0;
}

/* One complete text or binary message from the server. */
static void conn_on_message(bench *b, conn *c, const uint8_t *p, size_t n)
{
    if (c->state == ST_WELCOME) {
        if (b->verbose > 1)
            fprintf(stderr, "conn %d welcome: %.*s\n", c->idx, (int)(n > 300 ? 300 : n), p);
        if (json_has_kv(p, n, "topic", "error")) { /* e.g. missing_user_id, then a close */
            char why[200];
            snprintf(why, sizeof why, "refused: %.*s", (int)(n > 160 ? 160 : n), p);
            conn_fail(b, c, why);
            return;
        }
        c->state = ST_READY;
        hist_add(b->open_hist, now_ns() - c->open_ns);
        b->pending--;
        b->welcomed++;
        b->ever_welcomed++;
        return;
    }
    if (!c->inflight || !memmem(p, n, c->rid, c->rid_len))
        return; /* broadcasts, session messages and the like are not replies */
    uint64_t t = now_ns();
    c->inflight = 0;
    if (json_has_kv(p, n, "topic", "error")) {
        b->error_frames++;
        note_error(b, "conn %d: error reply: %.*s", c->idx, (int)(n > 160 ? 160 : n), p);
    } else if (b->measuring) {
        b->msgs++;
        hist_add(b->hist, t - c->sent_ns);
        if (b->ntrace < b->trace_cap)
            b->trace[b->ntrace++] =
                (struct trace_rt){t - b->m0, (uint32_t)((t - c->sent_ns) / 1000), c->idx};
    }
    if (!b->stopping && !b->idle_mode)
        conn_send_ping(b, c);
}

/* Parses and handles every complete frame in c->in. Returns -1 if c died. */
static int conn_parse_frames(bench *b, conn *c)
{
    for (;;) {
        uint8_t *s = c->in.p + c->in.off;
        size_t n = c->in.len - c->in.off;
        if (n < 2)
            return 0;
        int fin = s[0] & 0x80, op = s[0] & 0x0f, masked = s[1] & 0x80;
        uint64_t len = s[1] & 0x7f;
        size_t h = 2;
        if (s[0] & 0x70) {
            conn_fail(b, c, "reserved bits set (no extension negotiated)");
            return -1;
        }
        if (len == 126) {
            if (n < 4)
                return 0;
            len = (uint64_t)s[2] << 8 | s[3];
            h = 4;
        } else if (len == 127) {
            if (n < 10)
                return 0;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | s[2 + i];
            h = 10;
        }
        if (len > BENCH_MAX_FRAME) {
            conn_fail(b, c, "frame too large");
            return -1;
        }
        uint8_t mask[4] = {0, 0, 0, 0};
        if (masked) { /* servers must not mask; accept it anyway, it costs nothing */
            if (n < h + 4)
                return 0;
            memcpy(mask, s + h, 4);
            h += 4;
        }
        if (n < h + len)
            return 0;
        uint8_t *pl = s + h;
        if (masked)
            for (uint64_t i = 0; i < len; i++)
                pl[i] ^= mask[i & 3];
        c->in.off += h + (size_t)len;

        if (op & 0x8) { /* control frames: never fragmented, at most 125 bytes */
            if (!fin || len > 125) {
                conn_fail(b, c, "bad control frame");
                return -1;
            }
            if (op == 0x9) {
                if (conn_send_frame(b, c, 0xA, pl, (size_t)len) < 0)
                    return -1;
            } else if (op == 0x8) {
                char why[160];
                unsigned code = len >= 2 ? (unsigned)(pl[0] << 8 | pl[1]) : 1005;
                snprintf(why, sizeof why, "server closed: %u %.*s", code,
                         (int)(len > 2 ? len - 2 : 0), (const char *)pl + 2);
                uint8_t echo[2] = {(uint8_t)(code >> 8), (uint8_t)code};
                conn_send_frame(b, c, 0x8, echo, len >= 2 ? 2 : 0);
                conn_fail(b, c, why);
                return -1;
            } else if (op != 0xA) {
                conn_fail(b, c, "unknown control opcode");
                return -1;
            }
            continue;
        }
        if (op == 0x0) { /* continuation */
            if (!c->msg_op) {
                conn_fail(b, c, "continuation without a message");
                return -1;
            }
        } else if (op == 0x1 || op == 0x2) {
            if (c->msg_op) {
                conn_fail(b, c, "new message inside a fragmented one");
                return -1;
            }
            if (fin) {
                conn_on_message(b, c, pl, (size_t)len);
                if (c->state == ST_DEAD)
                    return -1;
                continue;
            }
            c->msg_op = op;
        } else {
            conn_fail(b, c, "unknown opcode");
            return -1;
        }
        if (c->msg.len + len > BENCH_MAX_FRAME) {
            conn_fail(b, c, "message too large");
            return -1;
        }
        if (buf_add(&c->msg, pl, (size_t)len) < 0) {
            conn_fail(b, c, "out of memory");
            return -1;
        }
        if (fin) {
            conn_on_message(b, c, c->msg.p, c->msg.len);
            if (c->state == ST_DEAD)
                return -1;
            c->msg.len = 0;
            c->msg_op = 0;
        }
    }
}

static void conn_on_readable(bench *b, conn *c)
{
    for (int rounds = 0; rounds < 16; rounds++) { /* bound work per wake-up */
        if (buf_reserve(&c->in, 16384) < 0) {
            conn_fail(b, c, "out of memory");
            return;
        }
        ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_fail(b, c, n == 0 ? "connection closed by server" : strerror(errno));
            return;
        }
        c->in.len += (size_t)n;
        if (c->state == ST_HANDSHAKE && conn_parse_upgrade(b, c) <= 0)
            return;
        if (c->state >= ST_WELCOME && conn_parse_frames(b, c) < 0)
            return;
        if ((size_t)n < 16384)
            break;
    }
    if (c->in.off == c->in.len)
        c->in.off = c->in.len = 0;
    /* idle connections keep no input buffer: this is what lets 10k+ idle clients stay small */
    if (c->in.len == 0 && c->in.cap > 65536)
        buf_free(&c->in);
}

static void conn_on_event(bench *b, conn *c, uint32_t ev)
{
    if (c->state == ST_CONNECTING) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            conn_on_connected(b, c);
        return;
    }
    if (ev & EPOLLOUT) {
        if (conn_flush(b, c) < 0)
            return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
        conn_on_readable(b, c);
}

/* ---- the loop ----------------------------------------------------------------------------- */

/* Runs the event loop until the deadline (ns) or until done() says so. */
static void run_loop(bench *b, uint64_t until, int (*done)(const bench *))
{
    struct epoll_event evs[BENCH_MAX_EVENTS];
    uint64_t last_scan = 0;
    while (!got_signal) {
        uint64_t t = now_ns();
        if (t >= until || (done && done(b)))
            return;
        /* start more connections while under the handshake window */
        while (b->opened < b->nconns && b->pending < b->concurrency)
            conn_open(b, &b->conns[b->opened]);
        uint64_t left_ms = (until - t) / 1000000;
        int to = left_ms < 50 ? (int)left_ms + 1 : 50;
        int n = epoll_wait(b->ep, evs, BENCH_MAX_EVENTS, to);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->state != ST_DEAD)
                conn_on_event(b, c, evs[i].events);
        }
        t = now_ns();
        if (t - last_scan > 100000000u) { /* timeouts, every 100 ms */
            last_scan = t;
            for (int i = 0; i < b->opened; i++) {
                conn *c = &b->conns[i];
                if (c->state == ST_DEAD || c->deadline_ns == 0 || t < c->deadline_ns)
                    continue;
                if (c->state != ST_READY)
                    conn_fail(b, c, c->state == ST_WELCOME ? "timeout waiting for welcome"
                                                           : "timeout opening");
                else if (c->inflight)
                    conn_fail(b, c, "timeout waiting for reply");
            }
        }
    }
}

static int all_settled(const bench *b)
{
    return b->opened == b->nconns && b->pending == 0;
}

static int no_inflight(const bench *b)
{
    for (int i = 0; i < b->nconns; i++)
        if (b->conns[i].state == ST_READY && b->conns[i].inflight)
            return 0;
    return 1;
}

/* ---- setup -------------------------------------------------------------------------------- */

/* "ws://host:port/path?query" -> t; any user_id parameter is dropped (each connection adds its
   own). wss is not supported. */
static void parse_url(const char *url, target *t)
{
    if (strncmp(url, "ws://", 5) != 0)
        die("only ws:// URLs are supported: %s", url);
    const char *h = url + 5, *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    char hostport[sizeof t->host];
    if (hl == 0 || hl >= sizeof hostport)
        die("bad host in %s", url);
    memcpy(hostport, h, hl);
    hostport[hl] = '\0';
    char *colon = strrchr(hostport, ':');
    if (hostport[0] == '[') {
        char *rb = strchr(hostport, ']');
        if (!rb)
            die("bad host in %s", url);
        *rb = '\0';
        snprintf(t->host, sizeof t->host, "%s", hostport + 1);
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        if (colon)
            *colon = '\0';
        snprintf(t->host, sizeof t->host, "%s", hostport);
    }
    snprintf(t->port, sizeof t->port, "%s", colon ? colon + 1 : "80");

    /* path, without user_id= parameters */
    const char *path = slash ? slash : "/";
    const char *q = strchr(path, '?');
    size_t pl = q ? (size_t)(q - path) : strlen(path);
    if (pl >= sizeof t->path)
        die("path too long");
    memcpy(t->path, path, pl);
    t->path[pl] = '\0';
    if (q) {
        char *qs = strdup(q + 1), *save = NULL;
        int first = 1;
        for (char *kv = strtok_r(qs, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
            if (strncmp(kv, "user_id=", 8) == 0 || strcmp(kv, "user_id") == 0)
                continue;
            size_t cur = strlen(t->path);
            if (cur + strlen(kv) + 2 >= sizeof t->path)
                die("query too long");
            snprintf(t->path + cur, sizeof t->path - cur, "%c%s", first ? '?' : '&', kv);
            first = 0;
        }
        free(qs);
    }

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(t->host, t->port, &hints, &res);
    if (rc != 0 || !res)
        die("cannot resolve %s:%s: %s", t->host, t->port, gai_strerror(rc));
    memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
    t->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
}

static void raise_nofile(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t need = (rlim_t)want + 64;
    if (rl.rlim_cur < need) {
        rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < need)
        fprintf(stderr, "relay-bench: warning: RLIMIT_NOFILE %lu < %d connections\n",
                (unsigned long)rl.rlim_cur, want);
}

static void usage(void)
{
    fputs("usage: relay-bench --url ws://HOST:PORT/ws [options]\n"
          "  --url2 URL       second node: each user's connections alternate between the two\n"
          "  --conns N        connections (default 1)\n"
          "  --users U        distinct users, user_id=bench<i%U> (default: one per connection)\n"
          "  --user-prefix P  user ids are P<K+i%U> instead of bench<i%U> ...\n"
          "  --user-offset K  ... (default P=bench, K=0)\n"
          "  --source A[,B..] local IPv4 addresses to connect from, one per connection in turn\n"
          "  --concurrency N  handshakes in flight at once (default 256)\n"
          "  --marks          print \"relay-bench: mark open_start|open_end|measure_start|\n"
          "                   measure_end\" on stderr as the phases change\n"
          "  --duration S     measured seconds (default 5)\n"
          "  --warmup S       unmeasured seconds before that (default 0.5)\n"
          "  --size B         bytes per message frame; data is padded to reach it (default 100)\n"
          "  --type T         message type (default echo_ping)\n"
          "  --timeout S      open/welcome/reply timeout (default 10)\n"
          "  --jwt-secret K   also send x-auth-token=HS256{sub:<user id>}\n"
          "  --idle N --hold S  open N connections, wait for welcomes, hold S seconds\n"
          "                   (inf: until SIGTERM/SIGINT); prints a first line once every\n"
          "                   connection is welcomed or failed\n"
          "  --trace FILE     write \"end_us latency_us conn\" per measured round trip\n"
          "                   (the first 8M) to FILE at the end\n"
          "  -v               log errors as they happen (-vv: welcomes too)\n"
          "Prints one JSON line (idle mode: two). open_per_sec and open_p50_us/open_p99_us are\n"
          "the connect rate and the time from connect() to the welcome frame. Exit status 0 if\n"
          "there were no errors, 1 otherwise.\n",
          stderr);
    exit(2);
}

static double arg_num(const char *s, const char *name)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || v < 0 || isnan(v))
        die("bad %s: %s", name, s);
    return v;
}

/* "127.0.0.2,127.0.0.3" -> b->sources. */
static void parse_sources(bench *b, const char *list)
{
    char *copy = strdup(list), *save = NULL;
    if (!copy)
        die("out of memory");
    for (char *a = strtok_r(copy, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
        if (b->nsources == BENCH_MAX_SOURCES)
            die("more than %d --source addresses", BENCH_MAX_SOURCES);
        struct sockaddr_in *sa = &b->sources[b->nsources++];
        memset(sa, 0, sizeof *sa);
        sa->sin_family = AF_INET;
        if (inet_pton(AF_INET, a, &sa->sin_addr) != 1)
            die("bad --source address: %s", a);
    }
    free(copy);
}

/* now + s seconds in ns; an infinite or huge s never comes. */
static uint64_t deadline_after(double s)
{
    if (!(s < 1e9))
        return UINT64_MAX;
    return now_ns() + (uint64_t)(s * 1e9);
}

int main(int argc, char **argv)
{
    static bench B;
    bench *b = &B;
    const char *url = NULL, *url2 = NULL;
    b->nconns = 1;
    b->duration_s = 5;
    b->warmup_s = 0.5;
    b->timeout_s = 10;
    b->size = 100;
    b->type = "echo_ping";
    b->concurrency = BENCH_MAX_PENDING_OPENS;
    b->user_prefix = "bench";
    enum { O_URL = 256, O_URL2, O_CONNS, O_USERS, O_DUR, O_WARM, O_SIZE, O_TYPE, O_TIMEOUT,
           O_JWT, O_IDLE, O_HOLD, O_UPREFIX, O_UOFFSET, O_SOURCE, O_CONC, O_MARKS, O_TRACE };
    static const struct option lo[] = {
        {"url", 1, NULL, O_URL},         {"url2", 1, NULL, O_URL2},
        {"conns", 1, NULL, O_CONNS},     {"users", 1, NULL, O_USERS},
        {"duration", 1, NULL, O_DUR},    {"warmup", 1, NULL, O_WARM},
        {"size", 1, NULL, O_SIZE},       {"type", 1, NULL, O_TYPE},
        {"timeout", 1, NULL, O_TIMEOUT}, {"jwt-secret", 1, NULL, O_JWT},
        {"idle", 1, NULL, O_IDLE},       {"hold", 1, NULL, O_HOLD},
        {"user-prefix", 1, NULL, O_UPREFIX}, {"user-offset", 1, NULL, O_UOFFSET},
        {"source", 1, NULL, O_SOURCE},   {"concurrency", 1, NULL, O_CONC},
        {"marks", 0, NULL, O_MARKS},      {"trace", 1, NULL, O_TRACE},
        {"help", 0, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "hv", lo, NULL)) != -1) {
        switch (opt) {
        case O_URL: url = optarg; break;
        case O_URL2: url2 = optarg; break;
        case O_CONNS: b->nconns = (int)arg_num(optarg, "--conns"); break;
        case O_USERS: b->nusers = (int)arg_num(optarg, "--users"); break;
        case O_DUR: b->duration_s = arg_num(optarg, "--duration"); break;
        case O_WARM: b->warmup_s = arg_num(optarg, "--warmup"); break;
        case O_SIZE: b->size = (size_t)arg_num(optarg, "--size"); break;
        case O_TYPE: b->type = optarg; break;
        case O_TIMEOUT: b->timeout_s = arg_num(optarg, "--timeout"); break;
        case O_JWT: b->jwt_secret = optarg; break;
        case O_IDLE:
            b->idle_mode = 1;
            b->nconns = (int)arg_num(optarg, "--idle");
            break;
        case O_HOLD: b->hold_s = arg_num(optarg, "--hold"); break;
        case O_UPREFIX: b->user_prefix = optarg; break;
        case O_UOFFSET: b->user_offset = (long)arg_num(optarg, "--user-offset"); break;
        case O_SOURCE: parse_sources(b, optarg); break;
        case O_CONC: b->concurrency = (int)arg_num(optarg, "--concurrency"); break;
        case O_MARKS: b->marks = 1; break;
        case O_TRACE: b->trace_path = optarg; break;
        case 'v': b->verbose++; break;
        default: usage();
        }
    }
    if (!url || optind != argc || b->nconns < 1 || b->nconns > 1000000 || b->size > BENCH_MAX_FRAME)
        usage();
    if (strlen(b->type) > 64 || strpbrk(b->type, "\"\\"))
        die("bad --type");
    if (strlen(b->user_prefix) > 64 || strspn(b->user_prefix, "abcdefghijklmnopqrstuvwxyz"
                                                              "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                              "0123456789-_.") !=
                                           strlen(b->user_prefix))
        die("bad --user-prefix (letters, digits, -_. only)");
    if (b->concurrency < 1)
        die("bad --concurrency");
    if (b->nusers <= 0)
        b->nusers = b->nconns;
    parse_url(url, &b->tg[0]);
    b->ntargets = 1;
    if (url2) {
        parse_url(url2, &b->tg[1]);
        b->ntargets = 2;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    raise_nofile(b->nconns);
    if (getrandom(&b->rng, sizeof b->rng, 0) != (ssize_t)sizeof b->rng || !b->rng)
        b->rng = 0x9e3779b97f4a7c15ULL ^ now_ns();
    if ((b->ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1: %s", strerror(errno));
    b->conns = calloc((size_t)b->nconns, sizeof *b->conns);
    b->hist = calloc(BENCH_HIST_FINE + BENCH_HIST_COARSE, sizeof *b->hist);
    b->open_hist = calloc(BENCH_HIST_FINE + BENCH_HIST_COARSE, sizeof *b->open_hist);
    if (b->trace_path) {
        b->trace_cap = 8u << 20;
        if (!(b->trace = malloc(b->trace_cap * sizeof *b->trace)))
            die("out of memory");
    }
    if (!b->conns || !b->hist || !b->open_hist)
        die("out of memory");
    for (int i = 0; i < b->nconns; i++) {
        conn *c = &b->conns[i];
        c->fd = -1;
        c->idx = i;
        /* node = (user + round) % 2: consecutive connections alternate, and so do each user's
           successive connections, so a user with several connections spans both nodes */
        c->target = b->ntargets == 2 ? (i % b->nusers + i / b->nusers) % 2 : 0;
    }

    /* phase 1: open everything and wait for the welcomes */
    mark(b, "open_start");
    uint64_t t0 = now_ns();
    uint64_t open_limit = t0 + (uint64_t)((b->timeout_s + 0.05 * b->nconns / 100.0 + 1) * 1e9);
    run_loop(b, open_limit, all_settled);
    double open_s = (double)(now_ns() - t0) / 1e9;
    mark(b, "open_end");
    for (int i = 0; i < b->nconns; i++) /* anything still opening past the limit has failed */
        if (b->conns[i].state != ST_READY && b->conns[i].state != ST_DEAD)
            conn_fail(b, &b->conns[i], b->conns[i].state == ST_IDLE ? "not opened in time"
                                                                    : "timeout opening");
    if (b->welcomed == 0 && !got_signal)
        note_error(b, "no connection was welcomed");

    /* connect rate: connections welcomed per second of the open phase (first connect() to the
       last welcome or failure), with up to --concurrency handshakes in flight */
    char open_stats[160];
    snprintf(open_stats, sizeof open_stats,
             "\"open_seconds\":%.3f,\"open_per_sec\":%.0f,\"open_p50_us\":%" PRIu64
             ",\"open_p99_us\":%" PRIu64 ",\"concurrency\":%d",
             open_s, open_s > 0 ? b->ever_welcomed / open_s : 0.0, hist_pct(b->open_hist, 0.50),
             hist_pct(b->open_hist, 0.99), b->concurrency);

    double measured = 0;
    if (b->idle_mode) {
        /* the ready line lets a script sample the server's memory while we hold */
        printf("{\"mode\":\"idle\",\"conns\":%d,\"open\":%d,%s,\"errors\":%" PRIu64
               ",\"holding\":%.1f}\n",
               b->nconns, b->welcomed, open_stats, b->errors, b->hold_s < 1e9 ? b->hold_s : -1.0);
        fflush(stdout);
        run_loop(b, deadline_after(b->hold_s), NULL);
    } else if (b->welcomed > 0) {
        for (int i = 0; i < b->nconns; i++)
            if (b->conns[i].state == ST_READY)
                conn_send_ping(b, &b->conns[i]);
        run_loop(b, deadline_after(b->warmup_s), NULL);
        b->measuring = 1;
        mark(b, "measure_start");
        b->m0 = now_ns();
        run_loop(b, deadline_after(b->duration_s), NULL);
        b->measuring = 0;
        measured = (double)(now_ns() - b->m0) / 1e9;
        mark(b, "measure_end");
        /* let in-flight replies land so their connections are not reported as broken */
        b->stopping = 1;
        run_loop(b, now_ns() + 2000000000u, no_inflight);
    }
    b->stopping = 1;
    int open_at_end = b->welcomed;
    for (int i = 0; i < b->nconns; i++) {
        conn *c = &b->conns[i];
        if (c->state == ST_READY)
            conn_send_frame(b, c, 0x8, "\x03\xe8", 2); /* 1000 normal closure */
        conn_close(b, c);
    }

    if (!b->idle_mode) {
        printf("{\"mode\":\"echo\",\"conns\":%d,\"open\":%d,\"users\":%d,\"nodes\":%d,\"size\":%zu,"
               "\"msgs\":%" PRIu64 ",\"seconds\":%.3f,\"msgs_per_sec\":%.0f,\"p50_us\":%" PRIu64
               ",\"p90_us\":%" PRIu64 ",\"p99_us\":%" PRIu64 ",\"errors\":%" PRIu64
               ",\"error_replies\":%" PRIu64 ",%s",
               b->nconns, b->ever_welcomed, b->nusers, b->ntargets, b->size, b->msgs, measured,
               measured > 0 ? (double)b->msgs / measured : 0.0, hist_pct(b->hist, 0.50),
               hist_pct(b->hist, 0.90), hist_pct(b->hist, 0.99), b->errors, b->error_frames,
               open_stats);
    } else {
        printf("{\"mode\":\"idle\",\"conns\":%d,\"open\":%d,\"open_at_end\":%d,\"errors\":%" PRIu64
               ",%s",
               b->nconns, b->ever_welcomed, open_at_end, b->errors, open_stats);
    }
    if (b->first_error[0]) {
        printf(",\"first_error\":\"");
        for (const char *p = b->first_error; *p; p++)
            if (*p == '"' || *p == '\\')
                printf("\\%c", *p);
            else if ((unsigned char)*p < 0x20)
                printf(" ");
            else
                putchar(*p);
        printf("\"");
    }
    printf("}\n");
    if (b->trace_path) {
        FILE *f = fopen(b->trace_path, "w");
        if (!f)
            die("--trace %s: %s", b->trace_path, strerror(errno));
        for (size_t i = 0; i < b->ntrace; i++)
            fprintf(f, "%" PRIu64 " %" PRIu32 " %d\n", b->trace[i].end_ns / 1000, b->trace[i].us,
                    (int)b->trace[i].conn);
        fclose(f);
    }
    free(b->trace);
    free(b->conns);
    free(b->hist);
    free(b->open_hist);
    close(b->ep);
    return b->errors ? 1 : 0;
}
