/* Unit tests for rl_redis (async client, adapter, timeouts, reconnect) and rl_cluster_scripts,
 * against a real redis-server started here on a free loopback port in a temp dir. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rl_cluster_scripts.h"
#include "rl_metrics.h"
#include "rl_redis.h"

/* ---------------------------------------------------------------------------------------- */
/* redis-server process */

static char redis_bin[512];
static char redis_dir[256];
static int redis_port;
static pid_t redis_pid = -1;
static char redis_url[64];

/* RL_TEST_REDIS_SERVER names the binary to use (a missing one makes the Redis tests skip). */
static int find_redis_server(void)
{
    const char *forced = getenv("RL_TEST_REDIS_SERVER");
    if (forced && *forced) {
        snprintf(redis_bin, sizeof redis_bin, "%s", forced);
        if (access(redis_bin, X_OK) == 0)
            return 0;
        redis_bin[0] = 0;
        return -1;
    }
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s:/usr/bin:/usr/sbin:/usr/local/bin", path ? path : "");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(redis_bin, sizeof redis_bin, "%s/redis-server", d);
        if (access(redis_bin, X_OK) == 0)
            return 0;
    }
    redis_bin[0] = 0;
    return -1;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &l) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int port_accepts(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int redis_start(void)
{
    char port[16], log[300];
    snprintf(port, sizeof port, "%d", redis_port);
    snprintf(log, sizeof log, "%s/redis.log", redis_dir);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execl(redis_bin, redis_bin, "--port", port, "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", redis_dir, "--logfile", log, "--daemonize", "no",
              (char *)NULL);
        _exit(127);
    }
    redis_pid = pid;
    for (int i = 0; i < 500; i++) {
        if (port_accepts(redis_port))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            redis_pid = -1;
            return -1;
        }
        sleep_ms(10);
    }
    return -1;
}

static void redis_kill(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = -1;
    }
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (find_redis_server() < 0) {
        fprintf(stderr, "test_redis: redis-server is not installed (apt-get install redis-server); "
                        "skipping the Redis tests\n");
        return 0;
    }
    snprintf(redis_dir, sizeof redis_dir, "/tmp/rl_test_redis.XXXXXX");
    if (mkdtemp(redis_dir) == NULL)
        return -1;
    redis_port = free_port();
    snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d", redis_port);
    if (redis_port < 0 || redis_start() < 0) {
        fprintf(stderr, "test_redis: cannot start %s\n", redis_bin);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    redis_kill();
    if (redis_dir[0]) {
        char p[300];
        snprintf(p, sizeof p, "%s/redis.log", redis_dir);
        unlink(p);
        snprintf(p, sizeof p, "%s/dump.rdb", redis_dir);
        unlink(p);
        rmdir(redis_dir);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* loop fixture and reply capture */

typedef struct fx {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps run_until waking up */
} fx;

static void on_tick(uv_timer_t *t) { (void)t; }

static int setup(void **state)
{
    if (!redis_bin[0]) {
        *state = NULL;
        return 0;
    }
    fx *f = calloc(1, sizeof *f);
    uv_loop_init(&f->loop);
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 5, 5);
    *state = f;
    return 0;
}

static void walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "left-over handle type %d active %d\n", (int)h->type, uv_is_active(h));
}

static int teardown(void **state)
{
    fx *f = *state;
    if (f == NULL)
        return 0;
    uv_close((uv_handle_t *)&f->tick, NULL);
    /* bounded, so a failed test that leaked a client cannot hang the run */
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + 2000;
    while (uv_loop_alive(&f->loop) && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&f->loop);
    if (rc != 0)
        uv_walk(&f->loop, walk_cb, NULL);
    free(f);
    assert_int_equal(rc, 0);
    return 0;
}

#define NEED_REDIS()                                                                              \
    do {                                                                                          \
        if (*state == NULL) {                                                                     \
            skip();                                                                               \
            return;                                                                               \
        }                                                                                         \
    } while (0)

static int run_until(fx *f, const int *flag, uint64_t ms)
{
    uv_update_time(&f->loop);
    uint64_t end = uv_now(&f->loop) + ms;
    while (!*flag && uv_now(&f->loop) < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    return *flag;
}

static void run_for(fx *f, uint64_t ms)
{
    int never = 0;
    run_until(f, &never, ms);
}

typedef struct cap {
    int done, null, type;
    long long integer;
    char str[512];
    size_t n;
    struct {
        int type;
        long long integer;
        char str[256];
    } el[8];
} cap;

static void cap_cb(const redisReply *r, void *ud)
{
    cap *c = ud;
    c->done++;
    if (r == NULL) {
        c->null = 1;
        return;
    }
    c->type = r->type;
    c->integer = r->integer;
    if (r->str)
        snprintf(c->str, sizeof c->str, "%.*s", (int)r->len, r->str);
    if (r->type == REDIS_REPLY_ARRAY) {
        c->n = r->elements;
        for (size_t i = 0; i < r->elements && i < 8; i++) {
            c->el[i].type = r->element[i]->type;
            c->el[i].integer = r->element[i]->integer;
            if (r->element[i]->str)
                snprintf(c->el[i].str, sizeof c->el[i].str, "%.*s", (int)r->element[i]->len,
                         r->element[i]->str);
        }
    }
}

typedef struct state_rec {
    int ups, downs, last;
} state_rec;

static void on_state(rl_redis *r, int connected, void *ud)
{
    (void)r;
    state_rec *s = ud;
    if (connected)
        s->ups++;
    else
        s->downs++;
    s->last = connected;
}

static rl_redis *connect_ok(fx *f, state_rec *st)
{
    char err[128];
    rl_redis *r = rl_redis_new(&f->loop, redis_url, "test", err, sizeof err);
    assert_non_null(r);
    rl_redis_set_state_cb(r, on_state, st);
    rl_redis_set_backoff(r, 10, 100);
    int ups = st->ups, never = 0;
    for (int i = 0; i < 100 && st->ups == ups; i++)
        run_until(f, &never, 20);
    assert_true(rl_redis_connected(r));
    return r;
}

static cap sync_cmd(fx *f, rl_redis *r, const char *fmt, ...)
{
    cap c;
    memset(&c, 0, sizeof c);
    va_list ap;
    va_start(ap, fmt);
    int rc = rl_redis_vcommand(r, 0, cap_cb, &c, fmt, ap);
    va_end(ap);
    assert_int_equal(rc, 0);
    assert_true(run_until(f, &c.done, 3000));
    assert_int_equal(c.done, 1);
    return c;
}

/* ---------------------------------------------------------------------------------------- */

static void test_parse_url(void **state)
{
    (void)state;
    rl_redis_url u;
    char err[128];
    assert_int_equal(rl_redis_parse_url("redis://127.0.0.1:6390", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 0);
    assert_int_equal(rl_redis_parse_url("redis://localhost/3", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 3);
    assert_int_equal(rl_redis_parse_url("redis://:s3cret@10.0.0.5:7000/1", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "s3cret");
    assert_string_equal(u.user, "");
    assert_string_equal(u.host, "10.0.0.5");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 1);
    assert_int_equal(rl_redis_parse_url("redis://bob:pw@redis:6379", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "bob");
    assert_string_equal(u.host, "redis");
    assert_int_equal(rl_redis_parse_url("redis://[::1]:6380/", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6380);
    const char *bad[] = {"http://x", "redis://", "redis://:6379", "redis://h:0", "redis://h:70000",
                         "redis://h:12x", "redis://h/db", "redis://[::1", "redis://[zz]:1",
                         "redis://h:", "redis://pw@h", "redis://a b", NULL};
    for (int i = 0; bad[i]; i++) {
        err[0] = 0;
        assert_int_equal(rl_redis_parse_url(bad[i], &u, err, sizeof err), -EINVAL);
        assert_true(err[0] != 0);
    }
    assert_null(rl_redis_new(NULL, "nope://", "x", err, sizeof err));
}

static void test_parse_sentinel_url(void **state)
{
    (void)state;
    rl_redis_url u;
    char err[128];
    assert_int_equal(rl_redis_parse_url("redis+sentinel://10.0.0.1:26380,sent2,[::1]:5/mymaster",
                                        &u, err, sizeof err), 0);
    assert_true(u.sentinel);
    assert_int_equal(u.nsentinels, 3);
    assert_string_equal(u.sentinels[0].host, "10.0.0.1");
    assert_int_equal(u.sentinels[0].port, 26380);
    assert_string_equal(u.sentinels[1].host, "sent2");
    assert_int_equal(u.sentinels[1].port, 26379);
    assert_string_equal(u.sentinels[2].host, "::1");
    assert_int_equal(u.sentinels[2].port, 5);
    assert_string_equal(u.master, "mymaster");
    assert_int_equal(u.db, 0);
    assert_string_equal(u.host, "10.0.0.1"); /* the first target: a sentinel */
    assert_int_equal(u.port, 26380);
    assert_int_equal(rl_redis_parse_url("redis+sentinel://:pw@localhost/m/2", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.sentinels[0].host, "127.0.0.1");
    assert_string_equal(u.master, "m");
    assert_int_equal(u.db, 2);
    const char *bad[] = {"redis+sentinel://h1,h2", "redis+sentinel://h1/", "redis+sentinel:///m",
                         "redis+sentinel://h1,/m", "redis+sentinel://h1:0/m",
                         "redis+sentinel://a,b,c,d,e,f,g,h,i/m", "redis+sentinel://h/m/x",
                         "redis+sentinel://h//m", "redis+sentinel://h/m m", NULL};
    for (int i = 0; bad[i]; i++) {
        err[0] = 0;
        assert_int_equal(rl_redis_parse_url(bad[i], &u, err, sizeof err), -EINVAL);
        assert_true(err[0] != 0);
    }
}

static void test_connect_and_command(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    assert_int_equal(st.ups, 1);
    assert_int_equal(rl_redis_connects(r), 1);

    cap c = sync_cmd(f, r, "SET %s %s", "rl:test:k", "v1");
    assert_int_equal(c.type, REDIS_REPLY_STATUS);
    c = sync_cmd(f, r, "GET %s", "rl:test:k");
    assert_int_equal(c.type, REDIS_REPLY_STRING);
    assert_string_equal(c.str, "v1");

    /* binary-safe argv */
    const char *argv[] = {"SET", "rl:test:bin", "a\0b\r\nc"};
    size_t lens[] = {3, 11, 7};
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_commandargv(r, 0, cap_cb, &c, 3, argv, lens), 0);
    assert_true(run_until(f, &c.done, 2000));
    c = sync_cmd(f, r, "STRLEN %s", "rl:test:bin");
    assert_int_equal(c.integer, 7);

    /* pipelined commands complete in order */
    cap many[20];
    memset(many, 0, sizeof many);
    for (int i = 0; i < 20; i++)
        assert_int_equal(rl_redis_command(r, cap_cb, &many[i], "INCR %s", "rl:test:ctr"), 0);
    assert_int_equal(rl_redis_pending(r), 20);
    assert_true(run_until(f, &many[19].done, 2000));
    for (int i = 0; i < 20; i++)
        assert_int_equal(many[i].integer, i + 1);
    assert_int_equal(rl_redis_pending(r), 0);

    /* ping sets the RTT gauge */
    rl_metric_values[RL_M_REDIS_RTT_US] = 0;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_ping(r, cap_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_string_equal(c.str, "PONG");
    assert_true(rl_metric_values[RL_M_REDIS_RTT_US] > 0);

    /* an error reply is a reply, counted */
    uint64_t errs = rl_metric_values[RL_M_REDIS_ERRORS];
    c = sync_cmd(f, r, "NOSUCHCOMMAND");
    assert_int_equal(c.type, REDIS_REPLY_ERROR);
    assert_int_equal(rl_metric_values[RL_M_REDIS_ERRORS], errs + 1);

    sync_cmd(f, r, "DEL rl:test:k rl:test:bin rl:test:ctr");
    rl_redis_free(r);
    assert_int_equal(st.downs, 0); /* freeing is not reported as a state change */
}

static void test_select_db(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    char url[96], err[128];
    snprintf(url, sizeof url, "%s/2", redis_url);
    rl_redis *r = rl_redis_new(&f->loop, url, "db2", err, sizeof err);
    assert_non_null(r);
    /* queued while connecting: goes after the handshake's SELECT */
    cap c;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "CLIENT INFO"), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.type, REDIS_REPLY_STRING);
    assert_non_null(strstr(c.str, " db=2 "));
    rl_redis_free(r);
}

static void test_refused_is_reported(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", free_port());
    uint64_t errs = rl_metric_values[RL_M_REDIS_ERRORS];
    state_rec st = {0};
    rl_redis *r = rl_redis_new(&f->loop, url, "refused", err, sizeof err);
    assert_non_null(r);
    rl_redis_set_state_cb(r, on_state, &st);
    rl_redis_set_backoff(r, 5000, 5000); /* stay down after the first failure */
    cap c;
    memset(&c, 0, sizeof c);
    int rc = rl_redis_command(r, cap_cb, &c, "PING");
    if (rc == 0) { /* connect in progress: must fail, not hang */
        assert_true(run_until(f, &c.done, 1000));
        assert_int_equal(c.done, 1);
        assert_true(c.null);
    } else {
        assert_int_equal(rc, -ENOTCONN); /* refused synchronously */
    }
    run_for(f, 20);
    assert_true(rl_metric_values[RL_M_REDIS_ERRORS] > errs);
    assert_false(rl_redis_connected(r));
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "PING"), -ENOTCONN);
    assert_int_equal(st.ups, 0);
    assert_int_equal(st.downs, 0);
    rl_redis_free(r);
}

static void test_connect_timeout(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    /* a listener that never accepts: TCP completes in the backlog, the PING is never answered */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &l), 0);
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ntohs(a.sin_port));
    rl_redis *r = rl_redis_new(&f->loop, url, "blackhole", err, sizeof err);
    assert_non_null(r);
    rl_redis_set_timeouts(r, 200, 5000);
    rl_redis_set_backoff(r, 5000, 5000);
    cap c;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "PING"), 0);
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    assert_true(run_until(f, &c.done, 2000));
    uint64_t dt = uv_now(&f->loop) - t0;
    assert_true(c.null);
    assert_true(dt >= 150 && dt < 1500);
    assert_false(rl_redis_connected(r));
    rl_redis_free(r);
    close(lfd);
}

static void test_reset_is_reported(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    /* a fake server that accepts, reads the handshake, then resets the connection (RST): the
       stock hiredis libuv adapter would never report this */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &l), 0);
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ntohs(a.sin_port));
    rl_redis *r = rl_redis_new(&f->loop, url, "rst", err, sizeof err);
    assert_non_null(r);
    rl_redis_set_timeouts(r, 10000, 10000);
    rl_redis_set_backoff(r, 5000, 5000);
    cap c;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "PING"), 0);
    run_for(f, 50); /* hiredis connects and writes its handshake */
    int cfd = accept(lfd, NULL, NULL);
    assert_true(cfd >= 0);
    char buf[256];
    assert_true(read(cfd, buf, sizeof buf) > 0);
    struct linger lg = {1, 0};
    setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(cfd);
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    assert_true(run_until(f, &c.done, 3000));
    assert_true(c.null);
    assert_true(uv_now(&f->loop) - t0 < 1000);
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "PING"), -ENOTCONN);
    rl_redis_free(r);
    close(lfd);
}

static void test_command_timeout(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    rl_redis_set_timeouts(r, 0, 200);
    cap c, after;
    memset(&c, 0, sizeof c);
    memset(&after, 0, sizeof after);
    uint64_t errs = rl_metric_values[RL_M_REDIS_ERRORS];
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "BLPOP %s %d", "rl:test:nolist", 5), 0);
    assert_int_equal(rl_redis_command(r, cap_cb, &after, "PING"), 0); /* stuck behind it */
    uv_update_time(&f->loop);
    uint64_t t0 = uv_now(&f->loop);
    assert_true(run_until(f, &after.done, 2000));
    uint64_t dt = uv_now(&f->loop) - t0;
    assert_int_equal(c.done, 1);
    assert_true(c.null);
    assert_true(after.null);
    assert_true(dt >= 150 && dt < 1500);
    assert_true(rl_metric_values[RL_M_REDIS_ERRORS] > errs);
    assert_int_equal(st.downs, 1);
    /* reconnects by itself */
    run_until(f, &st.last, 2000);
    assert_int_equal(st.ups, 2);
    assert_true(rl_redis_connected(r));
    /* a per-command timeout longer than the BLOCK: a nil reply, not a timeout */
    memset(&c, 0, sizeof c);
    const char *argv[] = {"BLPOP", "rl:test:nolist", "0.3"};
    assert_int_equal(rl_redis_commandargv(r, 3000, cap_cb, &c, 3, argv, NULL), 0);
    assert_true(run_until(f, &c.done, 3000));
    assert_false(c.null);
    assert_int_equal(c.type, REDIS_REPLY_NIL);
    assert_true(rl_redis_connected(r));
    rl_redis_free(r);
}

/* A slow server is not a dead connection: commands past their deadline are answered NULL one by
   one while replies keep coming, the connection stays and the others get their replies. */
static void test_slow_server_keeps_connection(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    rl_redis_set_timeouts(r, 0, 300);
    /* each BLPOP answers nil after 150 ms, and this client's next command waits for it: replies
       come every 150 ms, the later ones past their 300 ms deadline */
    enum { N = 6 };
    cap c[N], last;
    memset(c, 0, sizeof c);
    memset(&last, 0, sizeof last);
    for (int i = 0; i < N; i++)
        assert_int_equal(rl_redis_command(r, cap_cb, &c[i], "BLPOP %s %s", "rl:test:nolist", "0.15"), 0);
    assert_true(run_until(f, &c[N - 1].done, 3000));
    assert_false(c[0].null);
    assert_int_equal(c[0].type, REDIS_REPLY_NIL);
    assert_true(c[N - 1].null); /* gave up on at its deadline */
    assert_int_equal(rl_redis_pending(r) > 0, 1); /* its reply is still owed: kept in flight */
    const char *ping[] = {"PING"}; /* behind the rest: a timeout that waits for them */
    assert_int_equal(rl_redis_commandargv(r, 3000, cap_cb, &last, 1, ping, NULL), 0);
    assert_true(run_until(f, &last.done, 3000));
    assert_false(last.null);
    assert_string_equal(last.str, "PONG");
    assert_int_equal(st.downs, 0); /* never dropped */
    assert_true(rl_redis_connected(r));
    for (int i = 0; i < N; i++)
        assert_int_equal(c[i].done, 1); /* each answered once */
    rl_redis_free(r);
}

/* This process was starved (the loop did not run for longer than the command timeout) while the
   reply waited in the socket: the connection is not declared dead before the loop has read it. */
static void test_starved_client_keeps_connection(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    rl_redis_set_timeouts(r, 0, 300);
    cap c;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_redis_command(r, cap_cb, &c, "PING"), 0);
    run_for(f, 5); /* written */
    uv_sleep(700); /* the loop does not run: the PONG waits unread past 2x the timeout */
    assert_true(run_until(f, &c.done, 2000));
    assert_false(c.null);
    assert_string_equal(c.str, "PONG");
    assert_int_equal(st.downs, 0);
    assert_true(rl_redis_connected(r));
    rl_redis_free(r);
}

static void test_reconnect_after_restart(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    cap c = sync_cmd(f, r, "PING");
    assert_string_equal(c.str, "PONG");

    redis_kill();
    int never = 0;
    for (int i = 0; i < 100 && !st.downs; i++)
        run_until(f, &never, 20);
    assert_int_equal(st.downs, 1);
    assert_false(rl_redis_connected(r));
    memset(&c, 0, sizeof c);
    int rc = rl_redis_command(r, cap_cb, &c, "PING");
    if (rc == 0) {
        assert_true(run_until(f, &c.done, 2000));
        assert_true(c.null);
    } else {
        assert_int_equal(rc, -ENOTCONN);
    }
    run_for(f, 300); /* several refused attempts while it is down */
    assert_int_equal(st.ups, 1);

    assert_int_equal(redis_start(), 0);
    for (int i = 0; i < 200 && st.ups < 2; i++)
        run_until(f, &never, 20);
    assert_int_equal(st.ups, 2);
    assert_int_equal(rl_redis_connects(r), 2);
    c = sync_cmd(f, r, "PING");
    assert_string_equal(c.str, "PONG");
    rl_redis_free(r);
}

typedef struct free_ctx {
    rl_redis *r;
    int calls;
} free_ctx;

static void free_in_cb(const redisReply *reply, void *ud)
{
    free_ctx *fc = ud;
    fc->calls++;
    assert_non_null(reply);
    rl_redis_free(fc->r);
    rl_redis_free(fc->r); /* idempotent */
}

static void test_free_inside_callback(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    free_ctx fc = {r, 0};
    cap rest[5];
    memset(rest, 0, sizeof rest);
    assert_int_equal(rl_redis_command(r, free_in_cb, &fc, "PING"), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(rl_redis_command(r, cap_cb, &rest[i], "PING"), 0);
    assert_true(run_until(f, &rest[4].done, 2000));
    assert_int_equal(fc.calls, 1);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(rest[i].done, 1);
        /* pipelined replies already read may still be delivered before the free takes effect */
    }
    assert_int_equal(st.downs, 0);
}

static void test_free_with_pending_blocking(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    cap c;
    memset(&c, 0, sizeof c);
    const char *argv[] = {"BLPOP", "rl:test:nolist", "0"};
    assert_int_equal(rl_redis_commandargv(r, 60000, cap_cb, &c, 3, argv, NULL), 0);
    run_for(f, 50);
    assert_int_equal(c.done, 0);
    rl_redis_free(r); /* blocked reader: freed at once, callback failed */
    assert_int_equal(c.done, 1);
    assert_true(c.null);
}

static const char setter_src[] = "return redis.call('SET', KEYS[1], ARGV[1])";

static void test_graceful_close(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0}, st2 = {0};
    rl_redis *r = connect_ok(f, &st);
    rl_redis *check = connect_ok(f, &st2);
    sync_cmd(f, check, "SCRIPT FLUSH");
    sync_cmd(f, check, "DEL rl:test:last1 rl:test:last2");
    rl_redis_script_def s;
    rl_redis_script_init(&s, "setter", setter_src);
    cap c1, c2, c3;
    memset(&c1, 0, sizeof c1);
    memset(&c2, 0, sizeof c2);
    memset(&c3, 0, sizeof c3);
    const char *args[] = {"rl:test:last2", "bye"};
    /* queued, not yet written, when close is called; the script goes through NOSCRIPT + EVAL */
    assert_int_equal(rl_redis_command(r, cap_cb, &c1, "SET rl:test:last1 %s", "bye"), 0);
    assert_int_equal(rl_redis_script(r, &s, cap_cb, &c2, 1, 2, args, NULL), 0);
    rl_redis_close(r, 2000);
    assert_int_equal(rl_redis_command(r, cap_cb, &c3, "PING"), -ENOTCONN);
    assert_true(run_until(f, &c2.done, 2000));
    assert_false(c1.null);
    assert_false(c2.null);
    assert_int_equal(c2.type, REDIS_REPLY_STATUS);
    cap c = sync_cmd(f, check, "MGET rl:test:last1 rl:test:last2");
    assert_string_equal(c.el[0].str, "bye");
    assert_string_equal(c.el[1].str, "bye");
    /* nothing pending: frees at once */
    rl_redis_close(check, 2000);
    assert_int_equal(rl_redis_command(check, cap_cb, &c3, "PING"), -ENOTCONN);
    assert_int_equal(st.downs + st2.downs, 0);
}

static const char probe_src[] = "return {KEYS[1], ARGV[1], #KEYS, #ARGV}";

static void test_script_noscript_fallback(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    rl_redis_script_def s;
    rl_redis_script_init(&s, "probe", probe_src);
    assert_int_equal(strlen(s.sha), 40);
    cap c = sync_cmd(f, r, "SCRIPT FLUSH");
    for (int round = 0; round < 2; round++) { /* EVAL fallback, then EVALSHA */
        memset(&c, 0, sizeof c);
        const char *args[] = {"k1", "a\0b", "x"};
        size_t lens[] = {2, 3, 1};
        uint64_t errs = rl_metric_values[RL_M_REDIS_ERRORS];
        assert_int_equal(rl_redis_script(r, &s, cap_cb, &c, 1, 3, args, lens), 0);
        assert_true(run_until(f, &c.done, 2000));
        assert_int_equal(c.done, 1);
        assert_int_equal(c.type, REDIS_REPLY_ARRAY);
        assert_int_equal(c.n, 4);
        assert_string_equal(c.el[0].str, "k1");
        assert_int_equal(c.el[2].integer, 1);
        assert_int_equal(c.el[3].integer, 2);
        assert_int_equal(rl_metric_values[RL_M_REDIS_ERRORS], errs); /* NOSCRIPT is not an error */
        c = sync_cmd(f, r, "SCRIPT EXISTS %s", s.sha);
        assert_int_equal(c.el[0].integer, 1);
    }
    rl_redis_free(r);
}

/* ---------------------------------------------------------------------------------------- */
/* cluster scripts */

#define P "t:"

typedef struct lease_cap {
    int done, rc;
    rl_lease_reply l;
} lease_cap;

static void lease_cb(const redisReply *reply, void *ud)
{
    lease_cap *c = ud;
    c->done++;
    c->rc = rl_cs_parse_lease(reply, &c->l);
}

typedef struct int_cap {
    int done, rc, flag;
    long long v;
} int_cap;

static void int_cb(const redisReply *reply, void *ud)
{
    int_cap *c = ud;
    c->done++;
    c->rc = rl_cs_parse_int(reply, &c->v);
}

static void pair_cb(const redisReply *reply, void *ud)
{
    int_cap *c = ud;
    c->done++;
    c->rc = rl_cs_parse_pair(reply, &c->flag, &c->v);
}

static long long heartbeat(fx *f, rl_redis *r, const char *node, const char *inc, uint64_t ttl)
{
    int_cap c = {0};
    assert_int_equal(rl_cs_heartbeat(r, P, node, inc, "127.0.0.1:8080", 1764000000000ULL, "0.1",
                                     ttl, 0, int_cb, &c),
                     0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.rc, 0);
    return c.v;
}

/* A connected client on an empty Redis where nodes n1 (incarnation i1) and n2 (i2) are alive. */
static rl_redis *two_live_nodes(fx *f, state_rec *st)
{
    rl_redis *r = connect_ok(f, st);
    sync_cmd(f, r, "FLUSHALL");
    heartbeat(f, r, "n1", "i1", 10000);
    heartbeat(f, r, "n2", "i2", 10000);
    return r;
}

static lease_cap acquire(fx *f, rl_redis *r, const char *user, const char *node, const char *inc,
                         const char *hub, uint64_t ttl)
{
    lease_cap c;
    memset(&c, 0, sizeof c);
    assert_int_equal(rl_cs_lease_acquire(r, P, user, node, inc, hub, ttl, lease_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.done, 1);
    assert_int_equal(c.rc, 0);
    return c;
}

static long long renew(fx *f, rl_redis *r, const char *user, const char *node, const char *inc,
                       uint64_t epoch)
{
    int_cap c = {0};
    assert_int_equal(rl_cs_lease_renew(r, P, user, node, inc, epoch, 5000, int_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.rc, 0);
    return c.v;
}

static long long release_lease(fx *f, rl_redis *r, const char *user, const char *node,
                               const char *inc, uint64_t epoch)
{
    int_cap c = {0};
    assert_int_equal(rl_cs_lease_release(r, P, user, node, inc, epoch, int_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.rc, 0);
    return c.v;
}

static int_cap admit(fx *f, rl_redis *r, const char *user, const char *pid, const char *node, int limit)
{
    int_cap c = {0};
    assert_int_equal(rl_cs_admit(r, P, user, pid, node, limit, pair_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.rc, 0);
    return c;
}

static void test_keys(void **state)
{
    (void)state;
    char k[RL_CKEY_MAX];
    assert_int_equal(rl_ckey_user(k, sizeof k, "relay:", "alice", "lease"), 19);
    assert_string_equal(k, "relay:{alice}:lease");
    rl_ckey_node(k, sizeof k, "relay:", "n1");
    assert_string_equal(k, "relay:node:n1");
    rl_ckey_nodes(k, sizeof k, "relay:");
    assert_string_equal(k, "relay:nodes");
    rl_ckey_inbox(k, sizeof k, "relay:", "n2");
    assert_string_equal(k, "relay:inbox:n2");
    char small[8];
    assert_int_equal(rl_ckey_user(small, sizeof small, "relay:", "alice", "lease"), -ENAMETOOLONG);
    for (int i = 0; i < RL_CS_COUNT; i++) {
        assert_non_null(rl_cluster_script((rl_cs_id)i));
        assert_int_equal(strlen(rl_cluster_script((rl_cs_id)i)->sha), 40);
        assert_true(rl_cluster_script_nkeys((rl_cs_id)i) >= 1);
    }
    /* parsers reject NULL and error replies */
    long long v;
    int flag;
    rl_lease_reply l;
    assert_int_equal(rl_cs_parse_int(NULL, &v), -EIO);
    assert_int_equal(rl_cs_parse_pair(NULL, &flag, &v), -EIO);
    assert_int_equal(rl_cs_parse_lease(NULL, &l), -EIO);
    redisReply e = {.type = REDIS_REPLY_ERROR, .str = (char *)"ERR x", .len = 5};
    assert_int_equal(rl_cs_parse_int(&e, &v), -EPROTO);
    assert_int_equal(rl_cs_parse_lease(&e, &l), -EPROTO);
}

static void test_heartbeat_and_leave(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    sync_cmd(f, r, "FLUSHALL");
    assert_int_equal(heartbeat(f, r, "n1", "aa01", 5000), 2); /* created */
    assert_int_equal(heartbeat(f, r, "n1", "aa01", 5000), 1); /* refreshed */
    cap c = sync_cmd(f, r, "PTTL " P "node:n1");
    assert_true(c.integer > 4000 && c.integer <= 5000);
    c = sync_cmd(f, r, "GET " P "node:n1");
    assert_non_null(strstr(c.str, "\"incarnation\":\"aa01\""));
    assert_non_null(strstr(c.str, "\"addr\":\"127.0.0.1:8080\""));
    assert_non_null(strstr(c.str, "\"started_at\":1764000000000"));
    c = sync_cmd(f, r, "ZSCORE " P "nodes n1");
    assert_int_equal(c.type, REDIS_REPLY_STRING);
    assert_true(atoll(c.str) > 1700000000000LL);
    assert_int_equal(heartbeat(f, r, "n1", "bb02", 5000), 3); /* another incarnation replaced */

    int_cap ic = {0};
    assert_int_equal(rl_cs_node_leave(r, P, "n1", "aa01", int_cb, &ic), 0);
    assert_true(run_until(f, &ic.done, 2000));
    assert_int_equal(ic.v, 0); /* not ours any more */
    memset(&ic, 0, sizeof ic);
    assert_int_equal(rl_cs_node_leave(r, P, "n1", "bb02", int_cb, &ic), 0);
    assert_true(run_until(f, &ic.done, 2000));
    assert_int_equal(ic.v, 1);
    c = sync_cmd(f, r, "EXISTS " P "node:n1");
    assert_int_equal(c.integer, 0);
    c = sync_cmd(f, r, "ZSCORE " P "nodes n1");
    assert_int_equal(c.type, REDIS_REPLY_NIL);
    rl_redis_free(r);
}

typedef struct race {
    int done, admitted, rejected, errors;
} race;

static void race_cb(const redisReply *reply, void *ud)
{
    race *rc = ud;
    int flag;
    long long n;
    rc->done++;
    if (rl_cs_parse_pair(reply, &flag, &n) < 0)
        rc->errors++;
    else if (flag)
        rc->admitted++;
    else
        rc->rejected++;
}

static void test_admit_race(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st[5] = {{0}};
    rl_redis *rs[5];
    for (int i = 0; i < 5; i++)
        rs[i] = connect_ok(f, &st[i]);
    sync_cmd(f, rs[0], "FLUSHALL");
    heartbeat(f, rs[0], "n1", "i1", 10000);
    heartbeat(f, rs[0], "n2", "i2", 10000);
    race rc = {0};
    char pid[64];
    /* 50 admits over 5 connections, interleaved, all in flight at once */
    for (int k = 0; k < 10; k++)
        for (int i = 0; i < 5; i++) {
            const char *node = i % 2 ? "n2" : "n1";
            snprintf(pid, sizeof pid, "%s.%s.c%d", node, i % 2 ? "i2" : "i1", k * 5 + i);
            assert_int_equal(rl_cs_admit(rs[i], P, "racer", pid, node, 5, race_cb, &rc), 0);
        }
    for (int i = 0; i < 100 && rc.done < 50; i++) {
        int never = 0;
        run_until(f, &never, 20);
    }
    assert_int_equal(rc.done, 50);
    assert_int_equal(rc.errors, 0);
    assert_int_equal(rc.admitted, 5);
    assert_int_equal(rc.rejected, 45);
    cap c = sync_cmd(f, rs[0], "HLEN " P "{racer}:conns");
    assert_int_equal(c.integer, 5);

    /* re-admitting a present conn is idempotent; release frees a slot */
    c = sync_cmd(f, rs[0], "HKEYS " P "{racer}:conns");
    char first[256];
    snprintf(first, sizeof first, "%s", c.el[0].str);
    int_cap a = admit(f, rs[0], "racer", first, "n1", 5);
    assert_int_equal(a.flag, 1);
    assert_int_equal(a.v, 5);
    a = admit(f, rs[0], "racer", "n1.i1.c999", "n1", 5);
    assert_int_equal(a.flag, 0);
    assert_int_equal(a.v, 5);
    int_cap rel = {0};
    assert_int_equal(rl_cs_release_conn(rs[1], P, "racer", first, pair_cb, &rel), 0);
    assert_true(run_until(f, &rel.done, 2000));
    assert_int_equal(rel.flag, 1);
    assert_int_equal(rel.v, 4);
    a = admit(f, rs[0], "racer", "n1.i1.c999", "n1", 5);
    assert_int_equal(a.flag, 1);
    assert_int_equal(a.v, 5);
    /* limit <= 0: no limit */
    a = admit(f, rs[0], "racer", "n1.i1.c1000", "n1", 0);
    assert_int_equal(a.flag, 1);
    assert_int_equal(a.v, 6);
    for (int i = 0; i < 5; i++)
        rl_redis_free(rs[i]);
}

static void test_dead_node_reclaim(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    sync_cmd(f, r, "FLUSHALL");
    heartbeat(f, r, "n1", "i1", 10000);
    heartbeat(f, r, "n3", "i3", 10000);
    /* ghosts: n9 has no node key; n1.old is a previous incarnation of the live n1 */
    sync_cmd(f, r, "HSET " P "{bob}:conns n9.x.c1 n9 n9.x.c2 n9 n1.old.c3 n1 n3.i3.c4 n3");
    int_cap a = admit(f, r, "bob", "n1.i1.c10", "n1", 2);
    assert_int_equal(a.flag, 1);
    assert_int_equal(a.v, 2); /* n3's live conn + the new one */
    cap c = sync_cmd(f, r, "HLEN " P "{bob}:conns");
    assert_int_equal(c.integer, 2);
    c = sync_cmd(f, r, "HEXISTS " P "{bob}:conns n9.x.c1");
    assert_int_equal(c.integer, 0);
    a = admit(f, r, "bob", "n1.i1.c11", "n1", 2);
    assert_int_equal(a.flag, 0);
    /* n3 dies (node key expires): its conn is reclaimed by the next admit */
    sync_cmd(f, r, "PEXPIRE " P "node:n3 50");
    run_for(f, 120);
    a = admit(f, r, "bob", "n1.i1.c11", "n1", 2);
    assert_int_equal(a.flag, 1);
    assert_int_equal(a.v, 2);
    c = sync_cmd(f, r, "HEXISTS " P "{bob}:conns n3.i3.c4");
    assert_int_equal(c.integer, 0);
    rl_redis_free(r);
}

/* lease_renew renews several leases in one run and says, per lease, whether it was still ours. */
static void test_lease_renew_many(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = two_live_nodes(f, &st);
    lease_cap a = acquire(f, r, "u1", "n1", "i1", "n1.i1.h1", 5000);
    lease_cap b = acquire(f, r, "u2", "n1", "i1", "n1.i1.h2", 5000);
    lease_cap o = acquire(f, r, "u3", "n2", "i2", "n2.i2.h1", 5000); /* not ours */
    const char *users[] = {"u1", "u2", "u3"};
    uint64_t epochs[] = {a.l.epoch, b.l.epoch, o.l.epoch};
    cap c;
    memset(&c, 0, sizeof c);
    sync_cmd(f, r, "PEXPIRE " P "{u1}:lease 1000");
    assert_int_equal(rl_cs_lease_renew_many(r, P, 3, users, epochs, "n1", "i1", 7000, cap_cb, &c), 0);
    assert_true(run_until(f, &c.done, 2000));
    assert_int_equal(c.type, REDIS_REPLY_ARRAY);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.el[0].integer, 1);
    assert_int_equal(c.el[1].integer, 1);
    assert_int_equal(c.el[2].integer, 0);
    c = sync_cmd(f, r, "PTTL " P "{u1}:lease");
    assert_int_equal(c.integer, -1); /* a TTL of an older version is gone: it lives with n1's key */
    assert_int_equal(rl_cs_lease_renew_many(r, P, 0, users, epochs, "n1", "i1", 7000, cap_cb, &c), -EINVAL);
    rl_redis_free(r);
}

/* Redis lost its data: a node that was registered before re-creates the registry key with the
   time, and no lease is granted for lease_ttl after it; epochs still grow past the old ones. */
static void test_lease_grace_after_data_loss(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = connect_ok(f, &st);
    sync_cmd(f, r, "FLUSHALL");
    heartbeat(f, r, "n1", "i1", 10000); /* fresh cluster: registry 0, no grace */
    lease_cap l = acquire(f, r, "dora", "n1", "i1", "n1.i1.h1", 800);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    uint64_t e1 = l.l.epoch;
    sync_cmd(f, r, "FLUSHALL"); /* Redis restarted empty */
    int_cap c = {0};
    assert_int_equal(rl_cs_heartbeat(r, P, "n2", "i2", "127.0.0.1:8081", 1, "0.1", 10000, 1,
                                     int_cb, &c), 0); /* n2 was registered before */
    assert_true(run_until(f, &c.done, 2000));
    l = acquire(f, r, "dora", "n2", "i2", "n2.i2.h1", 800);
    assert_int_equal(l.l.code, RL_LEASE_BUSY); /* within the grace: refused, no holder */
    assert_string_equal(l.l.hub_pid, "");
    uv_sleep(900);
    l = acquire(f, r, "dora", "n2", "i2", "n2.i2.h1", 800);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    assert_true(l.l.epoch > e1); /* never reused, though the counter was lost */
    rl_redis_free(r);
}

static void test_lease_lifecycle(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st = {0};
    rl_redis *r = two_live_nodes(f, &st);

    lease_cap l = acquire(f, r, "carol", "n1", "i1", "n1.i1.h1", 5000);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    uint64_t e1 = l.l.epoch;
    assert_true(e1 >= 1);
    assert_string_equal(l.l.hub_pid, "n1.i1.h1");
    cap c = sync_cmd(f, r, "GET " P "{carol}:lease");
    char want[128];
    snprintf(want, sizeof want, "n1|i1|%llu|n1.i1.h1", (unsigned long long)e1);
    assert_string_equal(c.str, want);
    c = sync_cmd(f, r, "PTTL " P "{carol}:lease");
    assert_int_equal(c.integer, -1); /* no TTL: valid while n1's registration lives */

    l = acquire(f, r, "carol", "n1", "i1", "n1.i1.h9", 5000); /* already ours */
    assert_int_equal(l.l.code, RL_LEASE_OURS);
    assert_int_equal(l.l.epoch, e1);
    assert_string_equal(l.l.hub_pid, "n1.i1.h1");

    l = acquire(f, r, "carol", "n2", "i2", "n2.i2.h1", 5000); /* held by a live node */
    assert_int_equal(l.l.code, RL_LEASE_BUSY);
    assert_int_equal(l.l.epoch, e1);
    assert_string_equal(l.l.node, "n1");
    assert_string_equal(l.l.incarnation, "i1");
    assert_string_equal(l.l.hub_pid, "n1.i1.h1");

    assert_int_equal(renew(f, r, "carol", "n1", "i1", e1), 1);
    assert_int_equal(renew(f, r, "carol", "n2", "i2", e1), 0);
    assert_int_equal(renew(f, r, "carol", "n1", "i1", e1 + 1), 0);
    assert_int_equal(renew(f, r, "carol", "n1", "i0", e1), 0);

    assert_int_equal(release_lease(f, r, "carol", "n2", "i2", e1), 0);
    snprintf(want, sizeof want, "HSET " P "{carol}:hub node n1 epoch %llu", (unsigned long long)e1);
    sync_cmd(f, r, want);
    assert_int_equal(release_lease(f, r, "carol", "n1", "i1", e1), 1);
    c = sync_cmd(f, r, "EXISTS " P "{carol}:lease " P "{carol}:hub");
    assert_int_equal(c.integer, 0);
    assert_int_equal(release_lease(f, r, "carol", "n1", "i1", e1), 0);

    l = acquire(f, r, "carol", "n2", "i2", "n2.i2.h1", 5000);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    uint64_t e2 = l.l.epoch;
    assert_true(e2 > e1);

    /* n2 dies: its node key expires, the lease (still there) is taken at once */
    sync_cmd(f, r, "PEXPIRE " P "node:n2 50");
    run_for(f, 120);
    c = sync_cmd(f, r, "EXISTS " P "{carol}:lease");
    assert_int_equal(c.integer, 1);
    l = acquire(f, r, "carol", "n1", "i1", "n1.i1.h2", 5000);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    uint64_t e3 = l.l.epoch;
    assert_true(e3 > e2);
    assert_int_equal(renew(f, r, "carol", "n2", "i2", e2), 0); /* fenced */
    assert_int_equal(release_lease(f, r, "carol", "n2", "i2", e2), 0);

    /* n1 restarts under the same id: the old incarnation's lease is dead */
    assert_int_equal(heartbeat(f, r, "n1", "i1b", 10000), 3);
    l = acquire(f, r, "carol", "n1", "i1b", "n1.i1b.h1", 5000);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    uint64_t e4 = l.l.epoch;
    assert_true(e4 > e3);
    assert_int_equal(renew(f, r, "carol", "n1", "i1", e3), 0);

    /* a lease that simply expires is free again */
    heartbeat(f, r, "n2", "i2", 10000);
    assert_int_equal(renew(f, r, "carol", "n1", "i1b", e4), 1);
    sync_cmd(f, r, "PEXPIRE " P "{carol}:lease 30");
    run_for(f, 80);
    l = acquire(f, r, "carol", "n2", "i2", "n2.i2.h2", 5000);
    assert_int_equal(l.l.code, RL_LEASE_NEW);
    assert_true(l.l.epoch > e4);

    /* a node whose registration is not there (or of another incarnation) gets no lease: a
       lease lives only as long as its holder's node key */
    l = acquire(f, r, "erin", "n7", "i7", "n7.i7.h1", 5000);
    assert_int_equal(l.l.code, RL_LEASE_BUSY);
    assert_string_equal(l.l.hub_pid, "");
    l = acquire(f, r, "erin", "n1", "i1", "n1.i1.h3", 5000); /* n1 is i1b now */
    assert_int_equal(l.l.code, RL_LEASE_BUSY);
    assert_string_equal(l.l.hub_pid, "");
    c = sync_cmd(f, r, "EXISTS " P "{erin}:lease");
    assert_int_equal(c.integer, 0);
    rl_redis_free(r);
}

static void test_lease_race(void **state)
{
    NEED_REDIS();
    fx *f = *state;
    state_rec st[4] = {{0}};
    rl_redis *rs[4];
    const char *nodes[4] = {"n1", "n2", "n3", "n4"};
    const char *incs[4] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        rs[i] = connect_ok(f, &st[i]);
    sync_cmd(f, rs[0], "FLUSHALL");
    for (int i = 0; i < 4; i++)
        heartbeat(f, rs[0], nodes[i], incs[i], 10000);
    lease_cap lc[4][5];
    memset(lc, 0, sizeof lc);
    char hub[64];
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 4; i++) {
            snprintf(hub, sizeof hub, "%s.%s.h%d", nodes[i], incs[i], k);
            assert_int_equal(rl_cs_lease_acquire(rs[i], P, "dave", nodes[i], incs[i], hub, 5000,
                                                 lease_cb, &lc[i][k]),
                             0);
        }
    for (int i = 0; i < 100 && !lc[3][4].done; i++) {
        int never = 0;
        run_until(f, &never, 20);
    }
    int winners = 0, news = 0;
    uint64_t epoch = 0;
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 5; k++) {
            assert_int_equal(lc[i][k].done, 1);
            assert_int_equal(lc[i][k].rc, 0);
            if (lc[i][k].l.code == RL_LEASE_NEW) {
                news++;
                winners |= 1 << i;
                epoch = lc[i][k].l.epoch;
            }
        }
    assert_int_equal(news, 1); /* exactly one new lease, one epoch, one holder */
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 5; k++)
            assert_int_equal(lc[i][k].l.epoch, epoch);
    assert_true(winners == 1 || winners == 2 || winners == 4 || winners == 8);
    for (int i = 0; i < 4; i++)
        rl_redis_free(rs[i]);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    rl_cluster_scripts_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
        cmocka_unit_test(test_parse_sentinel_url),
        cmocka_unit_test(test_keys),
        cmocka_unit_test_setup_teardown(test_connect_and_command, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_server_keeps_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_starved_client_keeps_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_inside_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending_blocking, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script_noscript_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_graceful_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_and_leave, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admit_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_node_reclaim, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_renew_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_grace_after_data_loss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnect_after_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
