/* Unit tests for rl_http_client: curl multi on the node's loop, against a tiny HTTP server on the
 * same loop (uv_tcp). Each test closes every handle and checks the loop closes clean. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "rl_http_client.h"
#include "rl_proc.h"

static uv_loop_t loop;

/* ---- the server: answers `answer` to every request, or nothing while silent -------------- */

typedef struct peer {
    uv_tcp_t h;
    uv_write_t w;
    int answered;
} peer;

static struct {
    uv_tcp_t listen;
    int port;
    const char *answer; /* NULL: never answer */
    int accepted, eof;
    peer *last;
} srv;

static void peer_closed(uv_handle_t *h) { free(h->data); }

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char buf[4096];
    *b = uv_buf_init(buf, sizeof buf);
}

static void on_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    peer *p = s->data;
    if (n < 0) {
        srv.eof++;
        if (srv.last == p)
            srv.last = NULL;
        uv_close((uv_handle_t *)s, peer_closed);
        return;
    }
    if (n > 0 && srv.answer && !p->answered) {
        p->answered = 1;
        uv_buf_t out = uv_buf_init((char *)srv.answer, (unsigned)strlen(srv.answer));
        uv_write(&p->w, s, &out, 1, on_written);
    }
}

static void on_conn(uv_stream_t *l, int status)
{
    assert_int_equal(status, 0);
    peer *p = calloc(1, sizeof *p);
    assert_non_null(p);
    uv_tcp_init(&loop, &p->h);
    p->h.data = p;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&p->h), 0);
    srv.accepted++;
    srv.last = p;
    uv_read_start((uv_stream_t *)&p->h, on_alloc, on_read);
}

static void server_start(const char *answer)
{
    memset(&srv, 0, sizeof srv);
    srv.answer = answer;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&loop, &srv.listen);
    assert_int_equal(uv_tcp_bind(&srv.listen, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv.listen, 16, on_conn), 0);
    struct sockaddr_in got;
    int len = sizeof got;
    uv_tcp_getsockname(&srv.listen, (struct sockaddr *)&got, &len);
    srv.port = ntohs(got.sin_port);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, h->data && h != (uv_handle_t *)&srv.listen ? peer_closed : NULL);
}

/* ---- fixture ------------------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    return rl_node_init(&loop, "t1");
}

static int teardown(void **state)
{
    (void)state;
    rl_hc_stop();
    rl_node_close();
    uv_walk(&loop, close_any, NULL); /* the test server's handles */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

typedef struct got {
    int calls, status;
    rl_hc_fail fail;
    char body[256], headers[1024];
} got;

static void on_done(void *ud, const rl_hc_result *r)
{
    got *g = ud;
    g->calls++;
    g->status = r->status;
    g->fail = r->fail;
    snprintf(g->body, sizeof g->body, "%.*s", (int)r->body_len, r->body);
    snprintf(g->headers, sizeof g->headers, "%.*s", (int)r->headers_len, r->headers);
}

static void run_until(got *g, int calls, uint64_t max_ms)
{
    uint64_t end = uv_now(&loop) + max_ms;
    while (g->calls < calls && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
}

static rl_hc_opts opts(const char *url, uint64_t timeout_ms, size_t max)
{
    rl_hc_opts o = {.kind = RL_HC_PLUGIN, .method = "GET", .url = url, .timeout_ms = timeout_ms,
                    .max_response = max};
    return o;
}

/* ---- tests -------------------------------------------------------------------------------- */

static void test_answer(void **state)
{
    (void)state;
    server_start("HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello");
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", srv.port);
    got g = {0};
    rl_hc_opts o = opts(url, 2000, 1024);
    rl_hc_req *r;
    assert_int_equal(rl_hc_start(&o, on_done, &g, &r), 0);
    assert_int_equal(g.calls, 0); /* never from inside start */
    assert_int_equal(rl_hc_in_flight(RL_HC_PLUGIN), 1);
    run_until(&g, 1, 3000);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.status, 201);
    assert_string_equal(g.body, "hello");
    assert_non_null(strstr(g.headers, "X-A: b\r\n"));
    assert_int_equal(rl_hc_in_flight(RL_HC_PLUGIN), 0);
}

static void test_too_large_and_timeout(void **state)
{
    (void)state;
    server_start("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", srv.port);
    got g = {0};
    rl_hc_opts o = opts(url, 2000, 4);
    rl_hc_req *r;
    assert_int_equal(rl_hc_start(&o, on_done, &g, &r), 0);
    run_until(&g, 1, 3000);
    assert_int_equal(g.status, 0);
    assert_int_equal(g.fail, RL_HC_F_TOO_LARGE);
    srv.answer = NULL; /* silent from now on */
    got t = {0};
    o = opts(url, 150, 1024);
    uint64_t t0 = uv_now(&loop);
    assert_int_equal(rl_hc_start(&o, on_done, &t, &r), 0);
    run_until(&t, 1, 3000);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.fail, RL_HC_F_TIMEOUT);
    assert_true(uv_now(&loop) - t0 >= 140);
}

static void test_refused(void **state)
{
    (void)state;
    server_start(NULL);
    int port = srv.port;
    uv_close((uv_handle_t *)&srv.listen, NULL); /* nobody listens there any more */
    uv_run(&loop, UV_RUN_NOWAIT);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    got g = {0};
    rl_hc_opts o = opts(url, 2000, 1024);
    rl_hc_req *r;
    assert_int_equal(rl_hc_start(&o, on_done, &g, &r), 0);
    run_until(&g, 1, 3000);
    assert_int_equal(g.calls, 1);
    assert_int_equal(g.status, 0);
    assert_int_equal(g.fail, RL_HC_F_CONNECT);
}

static void test_cancel_and_limit(void **state)
{
    (void)state;
    server_start(NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", srv.port);
    rl_hc_set_limit(1);
    got g = {0}, h = {0}, k = {0};
    rl_hc_opts o = opts(url, 5000, 1024);
    rl_hc_req *r, *r2, *r3;
    assert_int_equal(rl_hc_start(&o, on_done, &g, &r), 0);
    assert_int_equal(rl_hc_start(&o, on_done, &h, &r2), -EAGAIN); /* the node-wide bound */
    o.kind = RL_HC_HOOK; /* the connect hook is not counted against it */
    assert_int_equal(rl_hc_start(&o, on_done, &k, &r3), 0);
    uint64_t end = uv_now(&loop) + 2000;
    while (srv.accepted < 2 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(srv.accepted, 2);
    rl_hc_cancel(r);
    rl_hc_cancel(r3);
    end = uv_now(&loop) + 2000;
    while (srv.eof < 2 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    assert_int_equal(srv.eof, 2); /* the sockets were closed */
    assert_int_equal(g.calls + h.calls + k.calls, 0); /* and no callback ran */
    assert_int_equal(rl_hc_in_flight(RL_HC_PLUGIN) + rl_hc_in_flight(RL_HC_HOOK), 0);
    rl_hc_set_limit(64);
}

static void test_stop_with_requests_in_flight(void **state)
{
    (void)state;
    server_start(NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", srv.port);
    got g = {0};
    rl_hc_opts o = opts(url, 5000, 1024);
    rl_hc_req *r;
    assert_int_equal(rl_hc_start(&o, on_done, &g, &r), 0);
    uint64_t end = uv_now(&loop) + 2000;
    while (srv.accepted < 1 && uv_now(&loop) < end)
        uv_run(&loop, UV_RUN_ONCE);
    rl_hc_stop(); /* teardown checks the loop then closes clean */
    assert_int_equal(g.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_large_and_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_requests_in_flight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
