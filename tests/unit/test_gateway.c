/* Unit tests of the gateway: HTTP routes, bind failure, handshake refusal, a WebSocket round trip
 * through a fake central process, pre-join buffering, size limit, clean shutdown. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "rl_gateway.h"
#include "rl_metrics.h"
#include "rl_proc.h"

#define DEADLINE_MS 5000

static uv_loop_t loop;
static rl_config cfg;

/* ---------------------------------------------------------------------------------------------
 * A fake central: answers WS_JOIN with WS_CONTROL naming a fake hub of the joining user (owned by
 * the user, so the router lets the connection's frames through), which echoes every client
 * message back as a raw frame; counts WS_LEAVE. With hold set it keeps the joins until
 * released. */

#define FAKE_HUBS 8

static struct {
    rl_proc proc;
    rl_proc hubs[FAKE_HUBS];
    size_t nhubs;
    int hold;
    char held[RL_PID_MAX]; /* a conn whose join waits */
    rl_owner *held_owner;
    int joins, leaves, messages;
    char last_conn[RL_PID_MAX];
} fake;

static void hub_handle(rl_proc *p, rl_msg *m)
{
    if (m->topic == RL_T_WS_CLIENT) {
        fake.messages++;
        rl_msg *e = rl_msg_new_body(RL_T_WS_MESSAGE, NULL, 0, m->body);
        assert_non_null(e);
        assert_int_equal(rl_send(p, m->from, e), 0);
    }
    rl_msg_free(m);
}

static const rl_proc_ops hub_ops = {.kind = "hub", .letter = 'h', .handle = hub_handle};

static rl_proc *fake_hub(rl_owner *owner)
{
    for (size_t i = 0; i < fake.nhubs; i++)
        if (fake.hubs[i].owner == owner)
            return &fake.hubs[i];
    assert_true(fake.nhubs < FAKE_HUBS);
    rl_proc *h = &fake.hubs[fake.nhubs++];
    assert_int_equal(rl_proc_start(h, &hub_ops, 0, owner), 0);
    return h;
}

static void fake_control(const char *conn, rl_owner *owner)
{
    rl_msg *m = rl_msg_new(RL_T_WS_CONTROL);
    assert_non_null(m);
    memcpy(m->ctl.control.target, fake_hub(owner)->pid, RL_PID_MAX);
    assert_int_equal(rl_send(&fake.proc, conn, m), 0);
}

static void fake_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    if (m->topic == RL_T_WS_JOIN) {
        assert_string_equal(m->ctl.join.conn, m->from);
        snprintf(fake.last_conn, sizeof fake.last_conn, "%s", m->from);
        fake.joins++;
        if (fake.hold) {
            snprintf(fake.held, sizeof fake.held, "%s", m->from);
            fake.held_owner = m->owner;
        } else {
            fake_control(m->from, m->owner);
        }
    } else if (m->topic == RL_T_WS_LEAVE) {
        fake.leaves++;
    }
    rl_msg_free(m);
}

static const rl_proc_ops fake_ops = {.kind = "central", .letter = 'x', .handle = fake_handle};

/* ---------------------------------------------------------------------------------------------
 * Loop and socket helpers. The client sockets are non-blocking and pumped between loop turns. */

static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

static void turn(void)
{
    uv_run(&loop, UV_RUN_NOWAIT);
    usleep(200);
}

/* Runs the loop until cond holds; fails the test after DEADLINE_MS. */
#define WAIT_UNTIL(cond)                                                                          \
    do {                                                                                          \
        uint64_t end_ = now_ms() + DEADLINE_MS;                                                   \
        while (!(cond)) {                                                                         \
            assert_true(now_ms() < end_);                                                         \
            turn();                                                                               \
        }                                                                                         \
    } while (0)

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct client {
    int fd;
    char buf[1 << 17];
    size_t len;
    int eof;
} client;

static void client_connect(client *c, int port)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(c->fd, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
}

static void client_send(client *c, const void *data, size_t len)
{
    const char *p = data;
    uint64_t end = now_ms() + DEADLINE_MS;
    while (len) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        assert_true(n < 0 && (errno == EAGAIN || errno == ENOTCONN));
        assert_true(now_ms() < end);
        turn();
    }
}

static void client_pump(client *c)
{
    while (!c->eof && c->len < sizeof c->buf - 1) {
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
        if (n > 0)
            c->len += (size_t)n;
        else if (n == 0 || (errno != EAGAIN && errno != ENOTCONN))
            c->eof = 1;
        else
            break;
    }
    c->buf[c->len] = '\0';
}

static void client_close(client *c) { close(c->fd); }

/* Runs the loop until the client's buffer holds an HTTP response whose body is complete. */
static void wait_http(client *c)
{
    uint64_t end = now_ms() + DEADLINE_MS;
    for (;;) {
        turn();
        client_pump(c);
        const char *hdr_end = strstr(c->buf, "\r\n\r\n");
        if (hdr_end) {
            const char *cl = strcasestr(c->buf, "content-length:");
            size_t want = cl && cl < hdr_end ? (size_t)atol(cl + 15) : 0;
            if (c->len >= (size_t)(hdr_end + 4 - c->buf) + want)
                return;
        }
        assert_false(c->eof);
        assert_true(now_ms() < end);
    }
}

static void http_get(client *c, int port, const char *path)
{
    char req[256];
    client_connect(c, port);
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                     path);
    client_send(c, req, (size_t)n);
    wait_http(c);
}

static const char *http_body(const client *c) { return strstr(c->buf, "\r\n\r\n") + 4; }

static void ws_connect(client *c, int port, const char *target, const char *extra)
{
    char req[1024];
    client_connect(c, port);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "%s\r\n",
                     target, extra ? extra : "");
    client_send(c, req, (size_t)n);
}

/* Waits for the 101 and drops the response head from the buffer. */
static void ws_upgraded(client *c)
{
    uint64_t end = now_ms() + DEADLINE_MS;
    char *e;
    while (!(e = strstr(c->buf, "\r\n\r\n"))) {
        turn();
        client_pump(c);
        assert_false(c->eof);
        assert_true(now_ms() < end);
    }
    assert_memory_equal(c->buf, "HTTP/1.1 101", 12);
    size_t head = (size_t)(e + 4 - c->buf);
    memmove(c->buf, c->buf + head, c->len - head);
    c->len -= head;
}

/* A masked client frame (opcode 1 text, or 2 binary). */
static void ws_send(client *c, int opcode, const char *data, size_t len)
{
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    static const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(hdr + h, mask, 4);
    h += 4;
    unsigned char *f = malloc(h + len);
    memcpy(f, hdr, h);
    for (size_t i = 0; i < len; i++)
        f[h + i] = (unsigned char)data[i] ^ mask[i & 3];
    client_send(c, f, h + len);
    free(f);
}

static void ws_text(client *c, const char *s) { ws_send(c, 1, s, strlen(s)); }

/* Reads one server frame (unmasked). Payload copied NUL-terminated into out. Returns opcode. */
static int ws_read(client *c, char *out, size_t outlen, size_t *plen)
{
    uint64_t end = now_ms() + DEADLINE_MS;
    for (;;) {
        const unsigned char *b = (const unsigned char *)c->buf;
        if (c->len >= 2) {
            size_t h = 2, len = b[1] & 0x7f;
            if (len == 126 && c->len >= 4) {
                len = ((size_t)b[2] << 8) | b[3];
                h = 4;
            } else if (len == 127 && c->len >= 10) {
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = (len << 8) | b[2 + i];
                h = 10;
            }
            if (!(len >= 126 && h == 2) && c->len >= h + len) {
                int opcode = b[0] & 0x0f;
                assert_true(len < outlen);
                memcpy(out, b + h, len);
                out[len] = '\0';
                if (plen)
                    *plen = len;
                memmove(c->buf, c->buf + h + len, c->len - h - len);
                c->len -= h + len;
                return opcode;
            }
        }
        assert_false(c->eof);
        assert_true(now_ms() < end);
        turn();
        client_pump(c);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Fixture */

static int port;

static int setup(void **state)
{
    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(rl_node_init(&loop, "t1"), 0);
    rl_config_defaults(&cfg);
    port = free_port();
    cfg.listen_port = port;
    cfg.auth_mode = RL_AUTH_INSECURE;
    memset(&fake, 0, sizeof fake);
    assert_int_equal(rl_proc_start(&fake.proc, &fake_ops, 0, NULL), 0);
    rl_gateway_set_central(fake.proc.pid);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    rl_gateway_stop();
    rl_proc_exit(&fake.proc, NULL);
    for (size_t i = 0; i < fake.nhubs; i++)
        rl_proc_exit(&fake.hubs[i], NULL);
    rl_node_close();
    uv_run(&loop, UV_RUN_DEFAULT);
    rl_gateway_free();
    rl_gateway_set_central(NULL);
    rl_gateway_set_ready_fn(NULL);
    assert_int_equal(uv_loop_close(&loop), 0);
    rl_config_free(&cfg);
    return 0;
}

static void start(void)
{
    char err[128];
    assert_int_equal(rl_gateway_start(&loop, &cfg, err, sizeof err), 0);
}

/* ---------------------------------------------------------------------------------------------
 * Tests */

static void test_http_routes(void **state)
{
    (void)state;
    cfg.console = 1;
    start();
    client c;
    http_get(&c, port, "/healthz");
    assert_memory_equal(c.buf, "HTTP/1.1 200", 12);
    assert_string_equal(http_body(&c), "{\"status\":\"ok\"}");
    client_close(&c);

    http_get(&c, port, "/readyz");
    assert_memory_equal(c.buf, "HTTP/1.1 200", 12);
    assert_string_equal(http_body(&c), "{\"status\":\"ready\"}");
    client_close(&c);

    rl_gateway_set_accepting(0);
    http_get(&c, port, "/readyz");
    assert_memory_equal(c.buf, "HTTP/1.1 503", 12);
    client_close(&c);
    rl_gateway_set_accepting(1);

    http_get(&c, port, "/metrics");
    assert_memory_equal(c.buf, "HTTP/1.1 200", 12);
    assert_non_null(strcasestr(c.buf, "content-type: text/plain; version=0.0.4"));
    assert_non_null(strstr(http_body(&c), "relay_connections_accepted_total"));
    client_close(&c);

    http_get(&c, port, "/");
    assert_memory_equal(c.buf, "HTTP/1.1 200", 12);
    assert_non_null(strstr(http_body(&c), "var WS_PATH=\"/ws\""));
    client_close(&c);

    http_get(&c, port, "/nope");
    assert_memory_equal(c.buf, "HTTP/1.1 404", 12);
    assert_non_null(strstr(http_body(&c), "\"error\":\"not_found\""));
    client_close(&c);
}

static void test_console_off(void **state)
{
    (void)state;
    cfg.console = 0;
    start();
    client c;
    http_get(&c, port, "/");
    assert_memory_equal(c.buf, "HTTP/1.1 404", 12);
    client_close(&c);
}

static void test_bind_in_use(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 1), 0);
    char err[128], want[64];
    assert_int_equal(rl_gateway_start(&loop, &cfg, err, sizeof err), -EADDRINUSE);
    snprintf(want, sizeof want, "cannot listen on %s:%d: ", cfg.listen_host, port);
    assert_memory_equal(err, want, strlen(want));
    assert_non_null(strstr(err, "in use"));
    close(fd);
    /* teardown runs stop (a no-op now), the loop, and free */
}

static void test_ws_path_and_auth_refused(void **state)
{
    (void)state;
    free(cfg.jwt_secret);
    cfg.jwt_secret = strdup("k");
    cfg.auth_mode = RL_AUTH_JWT;
    start();
    uint64_t rejected = rl_metric_values[RL_M_CONNS_REJECTED];
    client c;
    ws_connect(&c, port, "/ws?user_id=alice", NULL); /* jwt mode: user_id is no identity */
    wait_http(&c);
    assert_memory_equal(c.buf, "HTTP/1.1 401", 12);
    assert_string_equal(http_body(&c), "{\"error\":\"unauthorized\",\"message\":\"missing token\"}");
    client_close(&c);

    ws_connect(&c, port, "/elsewhere", NULL);
    wait_http(&c);
    assert_memory_equal(c.buf, "HTTP/1.1 404", 12);
    client_close(&c);
    assert_int_equal(rl_metric_values[RL_M_CONNS_REJECTED], rejected + 2);
    assert_int_equal(fake.joins, 0);
}

static void test_origin_refused(void **state)
{
    (void)state;
    cfg.allowed_origins = calloc(1, sizeof *cfg.allowed_origins); /* rl_config_free frees it */
    cfg.allowed_origins[0] = strdup("http://ok.example");
    cfg.norigins = 1;
    start();
    client c;
    ws_connect(&c, port, "/ws?user_id=a", "Origin: http://evil.example\r\n");
    wait_http(&c);
    assert_memory_equal(c.buf, "HTTP/1.1 403", 12);
    client_close(&c);
    ws_connect(&c, port, "/ws?user_id=a", "Origin: http://ok.example\r\n");
    ws_upgraded(&c);
    client_close(&c);
}

static void test_ws_roundtrip(void **state)
{
    (void)state;
    start();
    client c;
    char out[4096];
    ws_connect(&c, port, "/ws?user_id=al%69ce", NULL);
    ws_upgraded(&c);
    WAIT_UNTIL(fake.joins == 1);
    assert_int_equal(rl_gateway_conn_count(), 1);
    rl_proc *conn = rl_proc_find(fake.last_conn);
    assert_non_null(conn);

    ws_text(&c, "{\"type\":\"echo\",\"n\":1}");
    assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
    assert_string_equal(out, "{\"type\":\"echo\",\"n\":1}");
    ws_send(&c, 2, "{\"type\":\"bin\"}", 14); /* binary frames are JSON text too */
    assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
    assert_string_equal(out, "{\"type\":\"bin\"}");

    /* application topics are wrapped; a ws.message body is the frame itself */
    rl_msg *m = rl_msg_new_data(RL_T_APP, "note", 4, "{\"a\":1}", 7);
    assert_int_equal(rl_send(NULL, conn->pid, m), 0);
    assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
    assert_string_equal(out, "{\"topic\":\"note\",\"data\":{\"a\":1}}");
    m = rl_msg_new_data(RL_T_WS_MESSAGE, NULL, 0, "plain \"x\"", 9);
    assert_int_equal(rl_send(NULL, conn->pid, m), 0);
    assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
    assert_string_equal(out, "plain \"x\"");

    /* a process of another user may not write to the connection */
    rl_owner *mallory = rl_owner_get("mallory", 7);
    rl_proc *mh = fake_hub(mallory);
    rl_owner_unref(mallory);
    m = rl_msg_new_data(RL_T_WS_MESSAGE, NULL, 0, "forged", 6);
    assert_int_equal(rl_send(mh, conn->pid, m), -EPERM);
    rl_msg_free(m);

    /* ws.close with a code and reason */
    m = rl_msg_new(RL_T_WS_CLOSE);
    m->ctl.close.code = 4000;
    snprintf(m->ctl.close.reason, sizeof m->ctl.close.reason, "bye");
    assert_int_equal(rl_send(NULL, conn->pid, m), 0);
    size_t len;
    assert_int_equal(ws_read(&c, out, sizeof out, &len), 8);
    assert_int_equal(len, 5);
    assert_int_equal(((unsigned char)out[0] << 8) | (unsigned char)out[1], 4000);
    assert_memory_equal(out + 2, "bye", 3);
    ws_send(&c, 8, out, 2); /* answer the close */
    WAIT_UNTIL(fake.leaves == 1); /* to the central (which tells the hub) */
    assert_int_equal(rl_gateway_conn_count(), 0);
    client_close(&c);
}

static void test_frames_before_join(void **state)
{
    (void)state;
    fake.hold = 1;
    start();
    client c;
    char out[4096], msg[64];
    ws_connect(&c, port, "/ws?user_id=bob", NULL);
    ws_upgraded(&c);
    for (int i = 0; i < 18; i++) {
        snprintf(msg, sizeof msg, "{\"type\":\"t\",\"request_id\":%d}", i);
        ws_text(&c, msg);
    }
    /* 16 are kept; the 17th and 18th are answered overloaded with their request_id */
    for (int i = 16; i < 18; i++) {
        assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
        cJSON *o = cJSON_Parse(out);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "data");
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(o, "topic")->valuestring, "error");
        assert_string_equal(cJSON_GetObjectItemCaseSensitive(d, "error")->valuestring,
                            "overloaded");
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(d, "request_id")->valueint, i);
        cJSON_Delete(o);
    }
    assert_int_equal(fake.messages, 0);
    fake_control(fake.held, fake.held_owner);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
        snprintf(msg, sizeof msg, "{\"type\":\"t\",\"request_id\":%d}", i);
        assert_string_equal(out, msg);
    }
    client_close(&c);
}

static void test_message_too_large(void **state)
{
    (void)state;
    cfg.max_message_bytes = 4096;
    start();
    client c;
    char out[4096];
    ws_connect(&c, port, "/ws?user_id=carol", NULL);
    ws_upgraded(&c);
    char *big = malloc(3000);
    memset(big, 'x', 3000);
    memcpy(big, "{\"type\":\"t\",\"d\":\"", 17);
    memcpy(big + 2998, "\"}", 2);
    ws_send(&c, 1, big, 3000); /* under the limit, over rx_buffer_size: reassembled */
    size_t len;
    assert_int_equal(ws_read(&c, out, sizeof out, &len), 1);
    assert_int_equal(len, 3000);
    free(big);
    big = malloc(5000);
    memset(big, 'y', 5000);
    ws_send(&c, 1, big, 5000);
    free(big);
    assert_int_equal(ws_read(&c, out, sizeof out, NULL), 1);
    assert_non_null(strstr(out, "\"error\":\"message_too_large\""));
    assert_int_equal(ws_read(&c, out, sizeof out, &len), 8);
    assert_int_equal(((unsigned char)out[0] << 8) | (unsigned char)out[1], 1009);
    assert_memory_equal(out + 2, "message_too_large", len - 2);
    client_close(&c);
}

static void test_not_accepting(void **state)
{
    (void)state;
    start();
    client c1, c2;
    char out[4096];
    size_t len;
    ws_connect(&c1, port, "/ws?user_id=dan", NULL);
    ws_upgraded(&c1);
    WAIT_UNTIL(fake.joins == 1);
    rl_gateway_close_all(1001, "going away");
    assert_int_equal(ws_read(&c1, out, sizeof out, &len), 8);
    assert_int_equal(((unsigned char)out[0] << 8) | (unsigned char)out[1], 1001);

    ws_connect(&c2, port, "/ws?user_id=dan", NULL);
    ws_upgraded(&c2);
    assert_int_equal(ws_read(&c2, out, sizeof out, NULL), 1);
    assert_non_null(strstr(out, "\"error\":\"unavailable\""));
    assert_int_equal(ws_read(&c2, out, sizeof out, &len), 8);
    assert_int_equal(((unsigned char)out[0] << 8) | (unsigned char)out[1], 1013);
    assert_memory_equal(out + 2, "unavailable", len - 2);
    assert_int_equal(fake.joins, 1);
    client_close(&c1);
    client_close(&c2);
}

static void test_stop_with_open_connections(void **state)
{
    (void)state;
    start();
    client c[3];
    for (int i = 0; i < 3; i++) {
        ws_connect(&c[i], port, "/ws?user_id=eve", NULL);
        ws_upgraded(&c[i]);
    }
    WAIT_UNTIL(fake.joins == 3);
    assert_int_equal(rl_gateway_conn_count(), 3);
    /* teardown stops with the three still open; the loop must still close clean */
    for (int i = 0; i < 3; i++)
        client_close(&c[i]);
}

static void test_cookie_find(void **state)
{
    (void)state;
    char out[32];
    const char *h = "a=1; x-auth-token=tok ; evil-x-auth-token=no;z";
    assert_int_equal(rl_gateway_cookie_find(h, strlen(h), "x-auth-token", out, sizeof out), 3);
    assert_string_equal(out, "tok");
    const char *q = "x-auth-token=\"quoted\"";
    assert_int_equal(rl_gateway_cookie_find(q, strlen(q), "x-auth-token", out, sizeof out), 6);
    assert_string_equal(out, "quoted");
    const char *s = "evil-x-auth-token=no";
    assert_int_equal(rl_gateway_cookie_find(s, strlen(s), "x-auth-token", out, sizeof out), -1);
    assert_int_equal(rl_gateway_cookie_find(h, strlen(h), "a", out, 2), 1);
    assert_int_equal(rl_gateway_cookie_find("a=12", 4, "a", out, 2), -1); /* does not fit */
    /* every truncated prefix parses without reading past its length */
    for (size_t n = 0; n <= strlen(h); n++) {
        char *copy = malloc(n ? n : 1);
        memcpy(copy, h, n);
        int r = rl_gateway_cookie_find(copy, n, "x-auth-token", out, sizeof out);
        assert_true(r >= -1 && r <= 3);
        free(copy);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_http_routes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_console_off, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_in_use, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ws_path_and_auth_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_origin_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ws_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frames_before_join, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_accepting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_open_connections, setup, teardown),
        cmocka_unit_test(test_cookie_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
