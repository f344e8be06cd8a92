/* lws-echo: the bench's ceiling peer, a bare lws 4.1 + libuv WebSocket echo server written the
 * fast way (stack.md §1, §3, §5): Relay's welcome frame on connect, then every message back. */
#include <errno.h>
#include <getopt.h>
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <uv.h>

/* Bounds: everything a client controls is capped. */
#define ECHO_RX_BUFFER 512          /* lws rx chunk per connection, as Relay's gateway */
#define ECHO_MAX_MESSAGE (1u << 20) /* larger messages close the connection with 1009 */
#define ECHO_MAX_QUEUED (1u << 20)  /* queued output bytes before a slow reader is closed */
#define ECHO_USER_MAX 128           /* user_id bytes taken from the query */
#define ECHO_WRITE_BATCH 32         /* queued frames written per WRITEABLE */

typedef struct out_frame {
    struct out_frame *next;
    size_t len;
    int binary;
    unsigned char buf[]; /* LWS_PRE headroom, then len bytes */
} out_frame;

/* Per connection (lws allocates and zeroes it). An idle connection owns no heap memory: rx is
   allocated only for a message that arrives in several chunks, the queue only under
   backpressure. */
typedef struct echo_conn {
    unsigned char *rx; /* message being reassembled, after LWS_PRE unused bytes */
    size_t rxlen;
    int rx_binary;
    out_frame *out_head, *out_tail;
    size_t out_bytes;
} echo_conn;

static struct {
    uv_loop_t loop;
    uv_signal_t sigterm, sigint;
    struct lws_context *ctx;
    unsigned char tx[LWS_PRE + ECHO_MAX_MESSAGE + 512]; /* one direct write at a time */
    int stopping;
} app;

static void conn_drop_queue(echo_conn *c)
{
    while (c->out_head) {
        out_frame *f = c->out_head;
        c->out_head = f->next;
        free(f);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
}

/* The hybrid write: the frame in app.tx[LWS_PRE .. LWS_PRE + len) goes out at once when nothing
   is queued and the socket is not choked (lws keeps what the kernel does not take in its own
   buflist), else it is queued for WRITEABLE. Returns 0, or -1 when the connection must close. */
static int conn_send(struct lws *wsi, echo_conn *c, size_t len, int binary)
{
    enum lws_write_protocol wp = binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT;
    if (!c->out_head && !lws_send_pipe_choked(wsi))
        return lws_write(wsi, app.tx + LWS_PRE, len, wp) < 0 ? -1 : 0;
    if (c->out_bytes + len > ECHO_MAX_QUEUED)
        return -1; /* slow consumer */
    out_frame *f = malloc(sizeof *f + LWS_PRE + len);
    if (!f)
        return -1;
    f->next = NULL;
    f->len = len;
    f->binary = binary;
    memcpy(f->buf + LWS_PRE, app.tx + LWS_PRE, len);
    if (c->out_tail)
        c->out_tail->next = f;
    else
        c->out_head = f;
    c->out_tail = f;
    c->out_bytes += len;
    lws_callback_on_writable(wsi);
    return 0;
}

/* Writes queued frames while the socket takes them; asks for WRITEABLE again if any are left. */
static int conn_flush(struct lws *wsi, echo_conn *c)
{
    for (int n = 0; c->out_head && n < ECHO_WRITE_BATCH; n++) {
        if (n > 0 && lws_send_pipe_choked(wsi))
            break;
        out_frame *f = c->out_head;
        if (lws_write(wsi, f->buf + LWS_PRE, f->len, f->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT) <
            0)
            return -1;
        c->out_head = f->next;
        if (!c->out_head)
            c->out_tail = NULL;
        c->out_bytes -= f->len;
        free(f);
    }
    if (c->out_head)
        lws_callback_on_writable(wsi);
    return 0;
}

/* JSON string body of s (quotes and control characters escaped) into out; returns its length. */
static size_t json_escape(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    return o;
}

/* Relay's welcome, byte for byte the shape a bench user of relay-bench.yaml gets. */
static int conn_welcome(struct lws *wsi, echo_conn *c)
{
    char user[ECHO_USER_MAX + 1] = "";
    char arg[ECHO_USER_MAX + 16];
    const char *v = lws_get_urlarg_by_name(wsi, "user_id=", arg, (int)sizeof arg);
    char esc[ECHO_USER_MAX * 6 + 8];
    if (v)
        snprintf(user, sizeof user, "%s", v);
    json_escape(user, esc, sizeof esc);
    int n = snprintf((char *)app.tx + LWS_PRE, sizeof app.tx - LWS_PRE,
                     "{\"topic\":\"welcome\",\"data\":{\"user_id\":\"%s\",\"client_count\":1,"
                     "\"plugins\":{\"session_\":{\"status\":\"running\",\"process_id\":"
                     "\"app:session_plugin\"},\"echo_\":{\"status\":\"running\",\"process_id\":"
                     "\"app:echo_plugin\"}}}}",
                     esc);
    return conn_send(wsi, c, (size_t)n, 0);
}

/* One rx chunk; a whole message is echoed once its last chunk is in. Returns 0 or -1. */
static int conn_receive(struct lws *wsi, echo_conn *c, const void *in, size_t len)
{
    int final = lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0;
    if (!c->rx && final) { /* the common case: the message came in one chunk */
        memcpy(app.tx + LWS_PRE, in, len);
        return conn_send(wsi, c, len, lws_frame_is_binary(wsi));
    }
    if (c->rxlen + len > ECHO_MAX_MESSAGE) {
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
        return -1;
    }
    if (!c->rx)
        c->rx_binary = lws_frame_is_binary(wsi);
    unsigned char *nrx = realloc(c->rx, LWS_PRE + c->rxlen + len);
    if (!nrx)
        return -1;
    c->rx = nrx;
    memcpy(c->rx + LWS_PRE + c->rxlen, in, len);
    c->rxlen += len;
    if (!final)
        return 0;
    memcpy(app.tx + LWS_PRE, c->rx + LWS_PRE, c->rxlen);
    size_t n = c->rxlen;
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
    return conn_send(wsi, c, n, c->rx_binary);
}

static int echo_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                         size_t len)
{
    echo_conn *c = user;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        return conn_welcome(wsi, c);
    case LWS_CALLBACK_RECEIVE:
        return conn_receive(wsi, c, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return conn_flush(wsi, c);
    case LWS_CALLBACK_CLOSED:
        conn_drop_queue(c);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols protocols[] = {
    {"echo", echo_callback, sizeof(echo_conn), ECHO_RX_BUFFER, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void on_close_handle(uv_handle_t *h) { (void)h; }

/* Shutdown per stack.md §1: destroy #1 (async), close our handles, run the loop dry (main),
   destroy #2 (main). */
static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    if (app.stopping)
        return;
    app.stopping = 1;
    lws_context_destroy(app.ctx);
    uv_close((uv_handle_t *)&app.sigterm, on_close_handle);
    uv_close((uv_handle_t *)&app.sigint, on_close_handle);
}

static void log_emit(int level, const char *line)
{
    fprintf(stderr, "lws-echo: lws %d: %s", level, line);
}

static void usage(void)
{
    fputs("usage: lws-echo --listen HOST:PORT\n"
          "Bare lws+libuv WebSocket echo server (bench peer): sends Relay's welcome frame on\n"
          "connect, echoes every message. Prints \"listening HOST:PORT\" once bound; SIGTERM or\n"
          "SIGINT stops it.\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"listen", 1, NULL, 'l'}, {"help", 0, NULL, 'h'}, {NULL, 0, NULL, 0}};
    char host[64] = "127.0.0.1";
    int port = 0, opt;
    while ((opt = getopt_long(argc, argv, "l:h", lo, NULL)) != -1) {
        if (opt != 'l')
            usage();
        const char *colon = strrchr(optarg, ':');
        if (!colon || (size_t)(colon - optarg) >= sizeof host)
            usage();
        memcpy(host, optarg, (size_t)(colon - optarg));
        host[colon - optarg] = '\0';
        port = atoi(colon + 1);
    }
    if (port <= 0 || port > 65535 || optind != argc)
        usage();

    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&app.loop) != 0)
        return 1;
    uv_signal_init(&app.loop, &app.sigterm);
    uv_signal_init(&app.loop, &app.sigint);
    uv_signal_start(&app.sigterm, on_signal, SIGTERM);
    uv_signal_start(&app.sigint, on_signal, SIGINT);

    lws_set_log_level(LLL_ERR | LLL_WARN, log_emit);
    struct rlimit rl;
    unsigned int fds = 20000;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (1u << 20))
        fds = (unsigned int)rl.rlim_cur; /* lws sizes its fd table from this (stack.md §3) */
    void *foreign[1] = {&app.loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6 |
                   LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    info.foreign_loops = foreign;
    info.pcontext = &app.ctx;
    info.port = port;
    info.iface = host;
    info.protocols = protocols;
    info.vhost_name = "echo";
    info.max_http_header_data = 16384;
    info.fd_limit_per_thread = fds;
    info.gid = -1;
    info.uid = -1;
    app.ctx = lws_create_context(&info);
    if (!app.ctx) {
        fprintf(stderr, "lws-echo: cannot create the lws context\n");
        return 1;
    }
    int rc = 0;
    if (!lws_create_vhost(app.ctx, &info)) { /* bind failure shows here, not above (§1) */
        fprintf(stderr, "lws-echo: cannot listen on %s:%d\n", host, port);
        app.stopping = 1;
        lws_context_destroy(app.ctx);
        uv_close((uv_handle_t *)&app.sigterm, on_close_handle);
        uv_close((uv_handle_t *)&app.sigint, on_close_handle);
        rc = 1;
    } else {
        printf("listening %s:%d\n", host, port);
        fflush(stdout);
    }
    uv_run(&app.loop, UV_RUN_DEFAULT);
    lws_context_destroy(app.ctx); /* destroy #2 */
    if (uv_loop_close(&app.loop) != 0)
        fprintf(stderr, "lws-echo: loop not closed clean\n");
    return rc;
}
