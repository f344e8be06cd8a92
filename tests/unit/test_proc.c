/* Unit tests for processes, messages, authority, the router and the scheduler (rl_proc). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_proc.h"

typedef struct rec {
    rl_proc proc;
    char log[4096];
    int handled, runs, orphans;
    int exit_after; /* exit after handling this many */
    int freed;
    rl_body *last_body;
} rec;

/* "topic:payload;" per message: the body, or the control struct in short. */
static void rec_log(rec *r, const rl_msg *m)
{
    size_t n;
    const char *t = rl_msg_topic_name(m, &n);
    char line[600];
    if (m->topic == RL_T_PID_EXIT)
        snprintf(line, sizeof line, "pid.exit:%s=%s;", m->ctl.exit.pid,
                 m->ctl.exit.error ? m->ctl.exit.error->data : "null");
    else
        snprintf(line, sizeof line, "%.*s:%s;", (int)n, t, m->body ? m->body->data : "");
    strncat(r->log, line, sizeof r->log - strlen(r->log) - 1);
}

static void rec_handle(rl_proc *p, rl_msg *m)
{
    rec *r = (rec *)p;
    rec_log(r, m);
    rl_body_unref(r->last_body);
    r->last_body = rl_body_ref(m->body);
    rl_msg_free(m);
    if (++r->handled == r->exit_after)
        rl_proc_exit(p, "done \"quoted\"");
}

static void rec_run(rl_proc *p) { ((rec *)p)->runs++; }

static void rec_orphan(rl_proc *p, rl_msg *m)
{
    ((rec *)p)->orphans++;
    rl_msg_free(m);
}

static void rec_free(rl_proc *p)
{
    rec *r = (rec *)p;
    rl_body_unref(r->last_body);
    r->last_body = NULL;
    r->freed = 1;
}

static const rl_proc_ops rec_ops = {.kind = "rec", .letter = 'r', .handle = rec_handle, .free = rec_free};
static const rl_proc_ops conn_ops = {.kind = "conn", .letter = 'c', .handle = rec_handle, .free = rec_free};
static const rl_proc_ops hub_ops = {.kind = "hub", .letter = 'h', .handle = rec_handle, .free = rec_free};
static const rl_proc_ops plugin_ops = {.kind = "plugin", .letter = 'p', .handle = rec_handle,
                                       .run = rec_run, .orphan = rec_orphan, .free = rec_free};

static uv_loop_t loop;

static int setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    return rl_node_init(&loop, "t1");
}

static int teardown(void **state)
{
    (void)state;
    rl_node_close();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static rl_msg *app(const char *topic, const char *body)
{
    rl_msg *m = rl_msg_new_data(RL_T_APP, topic, strlen(topic), body, strlen(body));
    assert_non_null(m);
    return m;
}

/* rl_send that must succeed or fail with rc (the message is freed either way). */
static void send_expect(rl_proc *from, const char *to, rl_msg *m, int rc)
{
    int got = rl_send(from, to, m);
    if (got < 0)
        rl_msg_free(m);
    assert_int_equal(got, rc);
}

static void test_pids(void **state)
{
    (void)state;
    rec a = {0}, b = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 4, NULL), 0);
    assert_int_equal(rl_proc_start(&b.proc, &rec_ops, 4, NULL), 0);
    assert_true(rl_pid_is_local(a.proc.pid));
    assert_true(strncmp(a.proc.pid, "t1.", 3) == 0);
    assert_non_null(strstr(a.proc.pid, ".r"));
    assert_int_equal(rl_pid_kind(a.proc.pid), 'r');
    assert_int_equal(rl_pid_kind("garbage"), 0);
    /* an unguessable part: the pids of two processes started one after the other differ in
       more than their serial, and knowing a's tells nothing about b's */
    const char *ra = strrchr(a.proc.pid, '.'), *rb = strrchr(b.proc.pid, '.');
    assert_int_equal(strlen(ra), 9);
    assert_string_not_equal(ra, rb);
    char guess[RL_PID_MAX];
    snprintf(guess, sizeof guess, "%.*s%s", (int)(strrchr(b.proc.pid, '.') - b.proc.pid),
             b.proc.pid, ra);
    assert_null(rl_proc_find(guess));
    char nid[RL_NODE_ID_MAX];
    assert_int_equal(rl_pid_node(a.proc.pid, nid), 0);
    assert_string_equal(nid, "t1");
    assert_int_equal(rl_pid_node("garbage", nid), -EINVAL);
    assert_false(rl_pid_is_local("n2.abcdef.h1.00000000"));
    send_expect(NULL, "n2.abcdef.h1.00000000", app("x", "1"), -EHOSTUNREACH);
    send_expect(NULL, "nonsense", app("x", "1"), -EINVAL);
    assert_int_equal(rl_proc_count('r'), 2);
    assert_ptr_equal(rl_proc_find(a.proc.pid), &a.proc);
    rl_proc_exit(&a.proc, NULL);
    rl_proc_exit(&b.proc, NULL);
    assert_null(rl_proc_find(a.proc.pid));
    send_expect(NULL, a.proc.pid, app("x", "1"), -ENOENT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(a.freed);
}

/* A packed local pid gives back the same string; pids of another node, altered ones and ones
   not in rl_proc_start's form (leading zeros, upper-case hex, trailing bytes) do not pack. */
static void test_pid_pack(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 4, NULL), 0);
    rl_pid_local p;
    assert_int_equal(rl_pid_pack(a.proc.pid, &p), 0);
    assert_int_equal(p.kind, 'r');
    assert_int_equal(p.serial, a.proc.serial);
    char back[RL_PID_MAX];
    rl_pid_unpack(&p, back);
    assert_string_equal(back, a.proc.pid);
    assert_true(rl_pid_local_is(&p, a.proc.pid));
    char bad[RL_PID_MAX + 8];
    const char *dot = strrchr(a.proc.pid, '.');
    size_t head = (size_t)(dot - a.proc.pid);
    snprintf(bad, sizeof bad, "%s0", a.proc.pid); /* trailing byte */
    assert_int_equal(rl_pid_pack(bad, &p), -EINVAL);
    snprintf(bad, sizeof bad, "%.*s.%s", (int)head, a.proc.pid, "ABCDEF01"); /* upper-case hex */
    assert_int_equal(rl_pid_pack(bad, &p), -EINVAL);
    snprintf(bad, sizeof bad, "%.*s.%s", (int)head, a.proc.pid, "abcdef0"); /* short */
    assert_int_equal(rl_pid_pack(bad, &p), -EINVAL);
    snprintf(bad, sizeof bad, "t1.%s", "xx"); /* another incarnation's prefix, or none */
    assert_int_equal(rl_pid_pack(bad, &p), -EINVAL);
    assert_int_equal(rl_pid_pack("n2.abcdef.h1.00000000", &p), -EINVAL);
    char zero[RL_PID_MAX + 8];
    const char *serial = a.proc.pid + (strstr(a.proc.pid, ".r") - a.proc.pid) + 2;
    snprintf(zero, sizeof zero, "%.*s0%s", (int)(serial - a.proc.pid), a.proc.pid, serial);
    assert_int_equal(rl_pid_pack(zero, &p), -EINVAL); /* a leading zero: not the same pid */
    assert_int_equal(rl_pid_pack(a.proc.pid, &p), 0);
    char other[RL_PID_MAX];
    snprintf(other, sizeof other, "%.*s.%08x", (int)head, a.proc.pid, p.rnd ^ 1u);
    assert_false(rl_pid_local_is(&p, other));
    rl_proc_exit(&a.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* rl_send_as_local: a packed pid reaches its process only when serial, kind and random part
   are all its own, and the authority check still applies. */
static void test_send_as_local(void **state)
{
    (void)state;
    rl_owner *alice = rl_owner_get("alice", 5), *bob = rl_owner_get("bob", 3);
    rec ap = {0};
    assert_int_equal(rl_proc_start(&ap.proc, &plugin_ops, 0, alice), 0);
    rl_pid_local p;
    assert_int_equal(rl_pid_pack(ap.proc.pid, &p), 0);
    rl_pid_local wrong[3] = {p, p, p};
    wrong[0].rnd ^= 0x10000000u; /* the random part's first digit */
    wrong[1].kind = 'c';
    wrong[2].serial += 1000;
    for (int i = 0; i < 3; i++) {
        rl_msg *m = app("x", "forged");
        assert_int_equal(rl_send_as_local(&wrong[i], m), -ENOENT);
        rl_msg_free(m);
    }
    rl_msg *m = app("x", "from bob");
    m->owner = rl_owner_ref(bob); /* another user's message: refused, as by rl_send_as */
    assert_int_equal(rl_send_as_local(&p, m), -EPERM);
    rl_msg_free(m);
    m = app("x", "from alice");
    m->owner = rl_owner_ref(alice);
    assert_int_equal(rl_send_as_local(&p, m), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(ap.log, "x:from alice;");
    rl_proc_exit(&ap.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    m = app("x", "late");
    assert_int_equal(rl_send_as_local(&p, m), -ENOENT);
    rl_msg_free(m);
    rl_owner_unref(alice);
    rl_owner_unref(bob);
}

/* The process table under churn: starts and exits in a shuffled order across several growths;
   every live pid is found, every exited one and every altered one is not. */
static void test_process_table_churn(void **state)
{
    (void)state;
    enum { N = 3000 };
    static rec r[N];
    static char pids[N][RL_PID_MAX];
    memset(r, 0, sizeof r);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) {
        assert_int_equal(rl_proc_start(&r[i].proc, &rec_ops, 0, NULL), 0);
        memcpy(pids[i], r[i].proc.pid, RL_PID_MAX);
        x = x * 1103515245u + 12345u;
        if (i > 10 && (x >> 16) % 3 == 0) { /* exit an earlier one now and then */
            int k = (int)((x >> 8) % (uint32_t)i);
            rl_proc_exit(&r[k].proc, NULL);
        }
    }
    for (int i = 0; i < N; i++) {
        rl_proc *f = rl_proc_find(pids[i]);
        if (r[i].proc.exited)
            assert_null(f);
        else
            assert_ptr_equal(f, &r[i].proc);
        char forged[RL_PID_MAX];
        memcpy(forged, pids[i], RL_PID_MAX);
        char *last = forged + strlen(forged) - 1;
        *last = *last == '0' ? '1' : '0'; /* the random part differs */
        assert_null(rl_proc_find(forged));
    }
    char bad[RL_PID_MAX];
    snprintf(bad, sizeof bad, "%.*sr.00000000", (int)(strchr(pids[0] + 3, '.') - pids[0] + 1), pids[0]);
    assert_null(rl_proc_find(bad)); /* no serial */
    for (int i = 0; i < N; i++)
        rl_proc_exit(&r[i].proc, NULL);
    for (int i = 0; i < N; i++)
        assert_null(rl_proc_find(pids[i]));
    assert_int_equal(rl_proc_count('r'), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* rl_proc_next lists the live processes of one kind, each once, and skips exited ones. */
static void test_proc_next(void **state)
{
    (void)state;
    static rec hubs[40], others[10];
    memset(hubs, 0, sizeof hubs);
    memset(others, 0, sizeof others);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(rl_proc_start(&hubs[i].proc, &hub_ops, 0, NULL), 0);
        if (i < 10)
            assert_int_equal(rl_proc_start(&others[i].proc, &rec_ops, 0, NULL), 0);
    }
    rl_proc_exit(&hubs[7].proc, NULL);
    size_t cursor = 0, n = 0;
    int seen[40] = {0};
    rl_proc *p;
    while ((p = rl_proc_next('h', &cursor))) {
        rec *r = (rec *)p;
        assert_true(r >= hubs && r < hubs + 40);
        assert_int_equal(seen[r - hubs]++, 0);
        n++;
    }
    assert_int_equal(n, 39);
    assert_int_equal(seen[7], 0);
    assert_null(rl_proc_next('h', &cursor)); /* at the end it stays at the end */
    cursor = 0;
    assert_null(rl_proc_next('z', &cursor));
    for (int i = 0; i < 40; i++) {
        rl_proc_exit(&hubs[i].proc, NULL);
        if (i < 10)
            rl_proc_exit(&others[i].proc, NULL);
    }
    cursor = 0;
    assert_null(rl_proc_next('h', &cursor));
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_owners_interned(void **state)
{
    (void)state;
    rl_owner *a1 = rl_owner_get("alice", 5), *a2 = rl_owner_get("alice", 5);
    rl_owner *b = rl_owner_get("bob", 3);
    assert_ptr_equal(a1, a2);
    assert_ptr_not_equal(a1, b);
    assert_string_equal(rl_owner_user(a1), "alice");
    assert_null(rl_owner_user(NULL));
    assert_null(rl_owner_get("a\0b", 3)); /* NUL cannot be part of a user id */
    rl_owner_unref(a1);
    rl_owner_unref(a2);
    rl_owner_unref(b);
}

static void test_order_and_bound(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 3, NULL), 0);
    send_expect(NULL, a.proc.pid, app("t", "1"), 0);
    send_expect(NULL, a.proc.pid, app("t", "2"), 0);
    send_expect(NULL, a.proc.pid, app("t", "3"), 0);
    send_expect(NULL, a.proc.pid, app("t", "4"), -EAGAIN);
    assert_string_equal(a.log, ""); /* never handled inside rl_send */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(a.log, "t:1;t:2;t:3;");
    rl_proc_exit(&a.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Handing a message on copies no payload bytes: the receiver sees the sender's body. */
static void test_bodies_shared(void **state)
{
    (void)state;
    rec a = {0}, b = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 0, NULL), 0);
    assert_int_equal(rl_proc_start(&b.proc, &rec_ops, 0, NULL), 0);
    rl_body *body = rl_body_new("{\"big\":1}", 9);
    rl_msg *m1 = rl_msg_new_body(RL_T_APP, "x", 1, body);
    rl_msg *m2 = rl_msg_new_body(RL_T_APP, "y", 1, body);
    send_expect(NULL, a.proc.pid, m1, 0);
    send_expect(NULL, b.proc.pid, m2, 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_ptr_equal(a.last_body, body);
    assert_ptr_equal(b.last_body, body);
    assert_ptr_equal(a.last_body->data, body->data);
    assert_int_equal(body->refs, 3); /* ours and the two receivers' */
    rl_body_unref(body);
    /* a body made together with its message outlives the message while referenced */
    rl_msg *m3 = rl_msg_new_data(RL_T_APP, "z", 1, "kept", 4);
    send_expect(NULL, a.proc.pid, m3, 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(a.last_body->data, "kept");
    assert_int_equal(a.last_body->data[-RL_BODY_HEADROOM] == a.last_body->data[-RL_BODY_HEADROOM], 1);
    rl_proc_exit(&a.proc, NULL);
    rl_proc_exit(&b.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Every rule of the topic table: a forged topic from a sender not entitled to it is refused
   and delivers nothing. */
static void test_authority(void **state)
{
    (void)state;
    rl_owner *alice = rl_owner_get("alice", 5), *bob = rl_owner_get("bob", 3);
    rec central = {0}, ac = {0}, ah = {0}, ap = {0}, bc = {0}, bh = {0}, bp = {0};
    assert_int_equal(rl_proc_start(&central.proc, &rec_ops, 0, NULL), 0);
    assert_int_equal(rl_proc_start(&ac.proc, &conn_ops, 0, alice), 0);
    assert_int_equal(rl_proc_start(&ah.proc, &hub_ops, 0, alice), 0);
    assert_int_equal(rl_proc_start(&ap.proc, &plugin_ops, 0, alice), 0);
    assert_int_equal(rl_proc_start(&bc.proc, &conn_ops, 0, bob), 0);
    assert_int_equal(rl_proc_start(&bh.proc, &hub_ops, 0, bob), 0);
    assert_int_equal(rl_proc_start(&bp.proc, &plugin_ops, 0, bob), 0);

    /* application topics and frames: the system or the target's own user */
    send_expect(&ap.proc, ac.proc.pid, app("x", "1"), 0);
    send_expect(&ah.proc, ac.proc.pid, rl_msg_new_data(RL_T_WS_MESSAGE, NULL, 0, "f", 1), 0);
    send_expect(NULL, ac.proc.pid, app("error", "{}"), 0);
    send_expect(&bp.proc, ac.proc.pid, app("x", "1"), -EPERM);
    send_expect(&bp.proc, ac.proc.pid, rl_msg_new_data(RL_T_WS_MESSAGE, NULL, 0, "f", 1), -EPERM);
    send_expect(&bp.proc, ah.proc.pid, app("broadcast", "1"), -EPERM);
    send_expect(&bp.proc, ap.proc.pid, app("x", "1"), -EPERM);
    send_expect(&ap.proc, central.proc.pid, app("x", "1"), -EPERM); /* users never reach the system */
    send_expect(&bp.proc, ac.proc.pid, rl_msg_new(RL_T_WS_CLOSE), -EPERM);
    send_expect(&ap.proc, ac.proc.pid, rl_msg_new(RL_T_WS_CLOSE), 0);

    /* WS_CONTROL, PID_EXIT, HUB_HANDOVER, NODE_DOWN: the system only */
    static const rl_topic sys[] = {RL_T_WS_CONTROL, RL_T_PID_EXIT, RL_T_HUB_HANDOVER, RL_T_NODE_DOWN};
    for (size_t i = 0; i < sizeof sys / sizeof sys[0]; i++) {
        send_expect(&ap.proc, ac.proc.pid, rl_msg_new(sys[i]), -EPERM);
        send_expect(&ah.proc, ah.proc.pid, rl_msg_new(sys[i]), -EPERM);
        send_expect(&bh.proc, ah.proc.pid, rl_msg_new(sys[i]), -EPERM);
        send_expect(NULL, ah.proc.pid, rl_msg_new(sys[i]), 0);
    }

    /* the server API's requests: the system only (a plugin or hub of any user is refused) */
    static const rl_topic apis[] = {RL_T_API_PUSH, RL_T_API_MESSAGE, RL_T_API_DISCONNECT,
                                    RL_T_API_QUERY};
    for (size_t i = 0; i < sizeof apis / sizeof apis[0]; i++) {
        send_expect(&ap.proc, ah.proc.pid, rl_msg_new(apis[i]), -EPERM);
        send_expect(&ah.proc, ah.proc.pid, rl_msg_new(apis[i]), -EPERM);
        send_expect(&ac.proc, ah.proc.pid, rl_msg_new(apis[i]), -EPERM);
        send_expect(&bp.proc, ah.proc.pid, rl_msg_new(apis[i]), -EPERM);
        send_expect(NULL, ah.proc.pid, rl_msg_new(apis[i]), 0);
    }
    /* ... and their answers: a hub (or the system) to a system process, never to a user's */
    send_expect(&ah.proc, central.proc.pid, rl_msg_api_reply(1, 0, 0, NULL), 0);
    send_expect(&ap.proc, central.proc.pid, rl_msg_api_reply(1, 0, 0, NULL), -EPERM);
    send_expect(&ac.proc, central.proc.pid, rl_msg_api_reply(1, 0, 0, NULL), -EPERM);
    send_expect(&ah.proc, ap.proc.pid, rl_msg_api_reply(1, 0, 0, NULL), -EPERM);
    send_expect(NULL, central.proc.pid, rl_msg_api_reply(1, 0, 0, NULL), 0);

    /* a client message reaches a hub only from a connection of the hub's own user */
    rl_msg *cm = rl_msg_new_data(RL_T_WS_CLIENT, NULL, 0, "{\"type\":\"a\"}", 12);
    send_expect(&ac.proc, ah.proc.pid, cm, 0);
    send_expect(&bc.proc, ah.proc.pid, rl_msg_new_data(RL_T_WS_CLIENT, NULL, 0, "{}", 2), -EPERM);
    send_expect(&ap.proc, ah.proc.pid, rl_msg_new_data(RL_T_WS_CLIENT, NULL, 0, "{}", 2), -EPERM);
    send_expect(NULL, ah.proc.pid, rl_msg_new_data(RL_T_WS_CLIENT, NULL, 0, "{}", 2), -EPERM);

    /* joins and leaves: a connection about itself to the system; the system to a hub */
    send_expect(&ac.proc, central.proc.pid, rl_msg_new(RL_T_WS_JOIN), 0);
    send_expect(&ap.proc, central.proc.pid, rl_msg_new(RL_T_WS_JOIN), -EPERM);
    send_expect(&ah.proc, central.proc.pid, rl_msg_new(RL_T_WS_JOIN), -EPERM);
    send_expect(&ac.proc, ah.proc.pid, rl_msg_new(RL_T_WS_JOIN), -EPERM);
    send_expect(&bp.proc, ah.proc.pid, rl_msg_new(RL_T_WS_JOIN), -EPERM);
    send_expect(NULL, ah.proc.pid, rl_msg_new(RL_T_WS_JOIN), 0);
    send_expect(&ac.proc, ah.proc.pid, rl_msg_new(RL_T_WS_LEAVE), -EPERM);
    send_expect(NULL, ah.proc.pid, rl_msg_new(RL_T_WS_LEAVE), 0);

    /* re-homing: the hub of the same user to its connection; a connection to the system */
    send_expect(&ah.proc, ac.proc.pid, rl_msg_new(RL_T_WS_REHOME), 0);
    send_expect(&bh.proc, ac.proc.pid, rl_msg_new(RL_T_WS_REHOME), -EPERM);
    send_expect(&ap.proc, ac.proc.pid, rl_msg_new(RL_T_WS_REHOME), -EPERM);
    send_expect(&ac.proc, central.proc.pid, rl_msg_new(RL_T_WS_REHOME), 0);
    send_expect(&ap.proc, central.proc.pid, rl_msg_new(RL_T_WS_REHOME), -EPERM);

    /* activity reports: a hub of this node to the system */
    send_expect(&ah.proc, central.proc.pid, rl_msg_new(RL_T_HUB_ACTIVITY), 0);
    send_expect(&ap.proc, central.proc.pid, rl_msg_new(RL_T_HUB_ACTIVITY), -EPERM);

    /* control of processes: the system or the same user */
    assert_int_equal(rl_cancel(&bp.proc, ap.proc.pid, 0), -EPERM);
    assert_int_equal(rl_monitor(&bp.proc, ap.proc.pid), -EPERM);
    assert_non_null(rl_proc_find(ap.proc.pid));
    assert_int_equal(rl_monitor(&ah.proc, ap.proc.pid), 0);
    assert_int_equal(rl_monitor(&central.proc, ap.proc.pid), 0);

    for (int i = 0; i < 3; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    /* the refused messages delivered nothing: bob's processes saw nothing either way */
    assert_string_equal(bc.log, "");
    assert_string_equal(bp.log, "");
    assert_non_null(strstr(ah.log, "ws.client:{\"type\":\"a\"};"));
    assert_null(strstr(ac.log, "broadcast"));
    rec *all[] = {&central, &ac, &ah, &ap, &bc, &bh, &bp};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        rl_proc_exit(&all[i]->proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    rl_owner_unref(alice);
    rl_owner_unref(bob);
}

static void test_monitor_exit(void **state)
{
    (void)state;
    rec a = {0}, w = {0};
    a.exit_after = 1;
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 0, NULL), 0);
    assert_int_equal(rl_proc_start(&w.proc, &rec_ops, 0, NULL), 0);
    assert_int_equal(rl_monitor(&w.proc, a.proc.pid), 0);
    /* two queued: the second is dropped when the first makes it exit */
    send_expect(NULL, a.proc.pid, app("go", "1"), 0);
    send_expect(NULL, a.proc.pid, app("go", "2"), 0);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(a.log, "go:1;");
    assert_true(a.freed);
    char want[256];
    snprintf(want, sizeof want, "pid.exit:%s=done \"quoted\";", a.proc.pid);
    assert_string_equal(w.log, want);
    /* monitoring a gone pid answers at once */
    w.log[0] = '\0';
    assert_int_equal(rl_monitor(&w.proc, a.proc.pid), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_non_null(strstr(w.log, "noproc"));
    rl_proc_exit(&w.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* An exiting process with an orphan op gets what is still queued (nothing dropped silently). */
static void test_orphans_answered(void **state)
{
    (void)state;
    rec p = {0};
    assert_int_equal(rl_proc_start(&p.proc, &plugin_ops, 0, NULL), 0);
    send_expect(NULL, p.proc.pid, app("a", "1"), 0);
    send_expect(NULL, p.proc.pid, app("b", "2"), 0);
    rl_proc_exit(&p.proc, NULL);
    assert_int_equal(p.orphans, 2);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(p.freed);
}

static void test_cancel_without_op_exits(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 0, NULL), 0);
    assert_int_equal(rl_cancel(NULL, a.proc.pid, 10), 0);
    assert_null(rl_proc_find(a.proc.pid));
    assert_int_equal(rl_cancel(NULL, a.proc.pid, 10), -ENOENT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(a.freed);
}

/* The end of a turn: processes run first (messages, then one run of a woken process), then the
   registered steps in their order; what a process sent is flushed in the same turn. */
static char order[256];
static void step_frames(void *ud)
{
    (void)ud;
    strcat(order, "frames;");
}
static void step_outbox(void *ud)
{
    (void)ud;
    strcat(order, "outbox;");
}
static void order_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    strcat(order, "handle;");
    rl_msg_free(m);
}
static void order_run(rl_proc *p)
{
    (void)p;
    strcat(order, "run;");
}
static const rl_proc_ops order_ops = {.kind = "o", .letter = 'o', .handle = order_handle, .run = order_run};

static void test_turn_order(void **state)
{
    (void)state;
    rec p = {0};
    rl_turn_set(RL_TURN_OUTBOX, step_outbox, NULL);
    rl_turn_set(RL_TURN_FRAMES, step_frames, NULL);
    assert_int_equal(rl_proc_start(&p.proc, &order_ops, 0, NULL), 0);
    order[0] = '\0';
    send_expect(NULL, p.proc.pid, app("x", "1"), 0);
    rl_proc_wake(&p.proc);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(order, "handle;run;frames;outbox;");
    order[0] = '\0';
    rl_turn_request(); /* a step with work asks for a turn: nothing else runs */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(order, "frames;outbox;");
    rl_turn_set(RL_TURN_OUTBOX, NULL, NULL);
    rl_turn_set(RL_TURN_FRAMES, NULL, NULL);
    rl_proc_exit(&p.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Made ready by another process: runs in the same turn. Making itself ready again (a Lua
   instance yielding): the next turn, so one process cannot keep the loop from its sockets. */
static int self_runs;
static void self_run(rl_proc *p)
{
    self_runs++;
    rl_proc_wake(p); /* again and again */
}
static const rl_proc_ops self_ops = {.kind = "s", .letter = 's', .handle = order_handle, .run = self_run};
static rl_proc *relay_target;
static void relay_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    rl_msg_free(m);
    rl_proc_wake(relay_target);
}
static const rl_proc_ops relay_ops = {.kind = "r", .letter = 'r', .handle = relay_handle};

static void test_same_turn_and_self_rescheduling(void **state)
{
    (void)state;
    rec s = {0}, r = {0};
    assert_int_equal(rl_proc_start(&s.proc, &self_ops, 0, NULL), 0);
    assert_int_equal(rl_proc_start(&r.proc, &relay_ops, 0, NULL), 0);
    relay_target = &s.proc;
    self_runs = 0;
    send_expect(NULL, r.proc.pid, app("x", "1"), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(self_runs, 1); /* woken by r in this turn, ran in it, once */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(self_runs, 2);
    rl_proc_exit(&s.proc, NULL);
    rl_proc_exit(&r.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static int remote_calls;
static int fake_remote(const char *to, rl_msg *m, void *ud)
{
    (void)ud;
    assert_string_equal(to, "n9.000000.h1.00000000");
    size_t n;
    assert_memory_equal(rl_msg_topic_name(m, &n), "t", 1);
    remote_calls++;
    rl_msg_free(m);
    return 0;
}

static void test_remote_hook(void **state)
{
    (void)state;
    rl_router_set_remote(fake_remote, NULL);
    send_expect(NULL, "n9.000000.h1.00000000", app("t", "{}"), 0);
    assert_int_equal(remote_calls, 1);
    rl_router_set_remote(NULL, NULL);
}

static void test_topic_table(void **state)
{
    (void)state;
    assert_int_equal(rl_topic_find("ws.join", 7), RL_T_WS_JOIN);
    assert_int_equal(rl_topic_find("ws.joinx", 8), RL_T_APP);
    assert_int_equal(rl_topic_find("ws.message", 10), RL_T_WS_MESSAGE);
    assert_int_equal(rl_topic_find("", 0), RL_T_APP);
    assert_string_equal(rl_topic_name(RL_T_PID_EXIT), "pid.exit");
    assert_int_equal(rl_topic_find("api.push", 8), RL_T_API_PUSH);
    /* the wire names topics by number: the API's are appended after the older ones */
    assert_true(RL_T_API_PUSH > RL_T_NODE_DOWN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pid_pack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_as_local, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_table_churn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_proc_next, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owners_interned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_and_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bodies_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authority, setup, teardown),
        cmocka_unit_test_setup_teardown(test_monitor_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphans_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_without_op_exits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_turn_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_turn_and_self_rescheduling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topic_table, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
