/* Unit tests for process groups on one node (rl_pg): joins and multi-joins, leaves, the two
   bounds, listing, sends (each member once, the flags a member of another user gets), exits,
   scope handles, names and topics, and the forwarded form another node's pg process takes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_pg.h"
#include "rl_proc.h"

typedef struct rec {
    rl_proc proc;
    int got;
    uint16_t flags;
    char from[RL_PID_MAX];
    char topic[64];
} rec;

static void rec_handle(rl_proc *p, rl_msg *m)
{
    rec *r = (rec *)p;
    r->got++;
    r->flags = m->flags;
    snprintf(r->from, sizeof r->from, "%s", m->from);
    snprintf(r->topic, sizeof r->topic, "%.*s", (int)m->name_len, m->name ? m->name : "");
    rl_msg_free(m);
}

static void rec_free(rl_proc *p) { (void)p; }

static const rl_proc_ops plugin_ops = {.kind = "plugin", .letter = 'p', .handle = rec_handle,
                                       .free = rec_free};

static uv_loop_t loop;

static int setup(void **state)
{
    (void)state;
    uv_loop_init(&loop);
    assert_int_equal(rl_node_init(&loop, "t1"), 0);
    return rl_pg_start(3, 2);
}

static int teardown(void **state)
{
    (void)state;
    rl_pg_stop();
    rl_node_close();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static void start(rec *r, const char *user)
{
    memset(r, 0, sizeof *r);
    rl_owner *o = user ? rl_owner_get(user, strlen(user)) : NULL;
    assert_int_equal(rl_proc_start(&r->proc, &plugin_ops, 0, o), 0);
    rl_owner_unref(o);
}

#define S "app:pg", 6
#define G(g) g, strlen(g)

static void collect(void *ud, const char *s, size_t len)
{
    char *out = ud;
    strncat(out, s, len);
    strcat(out, ";");
}

static void test_join_leave_and_bounds(void **state)
{
    (void)state;
    rec a, b, c;
    start(&a, "alice");
    start(&b, "bob");
    start(&c, "carol");
    assert_int_equal(rl_pg_join(a.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_join(a.proc.pid, S, G("room")), 0); /* multi-join */
    assert_int_equal(rl_pg_joins(a.proc.pid, S, G("room")), 2);
    assert_int_equal(rl_pg_join(b.proc.pid, S, G("room")), -EMLINK); /* 2 joins: full */
    assert_int_equal(rl_pg_leave(a.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_join(b.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_members(S, G("room"), NULL, NULL), 2);
    /* max_joins 3 per process, multi-joins counted */
    assert_int_equal(rl_pg_join(c.proc.pid, S, G("g1")), 0);
    assert_int_equal(rl_pg_join(c.proc.pid, S, G("g1")), 0);
    assert_int_equal(rl_pg_join(c.proc.pid, S, G("g2")), 0);
    assert_int_equal(rl_pg_join(c.proc.pid, S, G("g3")), -ENOSPC);
    assert_int_equal(rl_pg_joins_of(c.proc.pid), 3);
    char list[512] = "";
    assert_int_equal(rl_pg_groups(S, collect, list), 3);
    assert_non_null(strstr(list, "g1;"));
    assert_int_equal(rl_pg_groups("other", 5, NULL, NULL), 0); /* scopes are apart */
    size_t slen;
    const char *sc = rl_pg_scope_of(c.proc.pid, G("g2"), &slen);
    assert_non_null(sc);
    assert_int_equal(slen, 6);
    assert_memory_equal(sc, "app:pg", 6);
    assert_int_equal(rl_pg_leave(c.proc.pid, S, G("nope")), -ENOENT);
    assert_int_equal(rl_pg_leave(c.proc.pid, "other", 5, G("g2")), -ENOENT);
    /* a leave of the only member frees the group; swap-remove keeps the others' links right */
    assert_int_equal(rl_pg_leave(a.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_joins(a.proc.pid, S, G("room")), 0);
    list[0] = '\0';
    assert_int_equal(rl_pg_members(S, G("room"), collect, list), 1);
    assert_non_null(strstr(list, b.proc.pid));
    assert_int_equal(rl_pg_leave(b.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_members(S, G("room"), NULL, NULL), 0);
    assert_int_equal(rl_pg_join("t1.x.p99.00000000", S, G("room")), -ENOENT);
    assert_int_equal(rl_pg_join(a.proc.pid, S, "", 0), -EINVAL);
    rl_proc_exit(&a.proc, NULL);
    rl_proc_exit(&b.proc, NULL);
    rl_proc_exit(&c.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_send_and_exit(void **state)
{
    (void)state;
    rec a, b, c;
    start(&a, "alice");
    start(&b, "bob");
    start(&c, "alice");
    assert_int_equal(rl_pg_join(a.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_join(b.proc.pid, S, G("room")), 0);
    assert_int_equal(rl_pg_join(b.proc.pid, S, G("x")), 0);
    rl_body *body = rl_body_new("{\"t\":1}", 7);
    assert_int_equal(rl_pg_send(&c.proc, S, G("room"), G("chat"), body), 2);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(a.got, 1);
    assert_int_equal(b.got, 1);
    assert_int_equal(c.got, 0);
    assert_string_equal(b.from, c.proc.pid);
    assert_string_equal(b.topic, "chat");
    assert_true(b.flags & RL_MSG_PG);
    assert_true(b.flags & RL_MSG_GRANTED); /* another user's member */
    assert_false(a.flags & RL_MSG_GRANTED); /* the sender's own user */
    /* a member that exits leaves every group once its PID_EXIT is handled */
    rl_proc_exit(&b.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(rl_pg_members(S, G("room"), NULL, NULL), 1);
    assert_int_equal(rl_pg_members(S, G("x"), NULL, NULL), 0);
    assert_int_equal(rl_pg_send(NULL, S, G("room"), G("sys"), body), 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(a.got, 2);
    assert_string_equal(a.from, "");
    /* another node's part: the packed form, taken only from the system, to the local members */
    rl_msg *f = rl_pg_forward_msg(c.proc.pid, c.proc.owner, S, G("room"), G("fwd"), body);
    assert_non_null(f);
    assert_int_equal(rl_send_as(rl_pg_pid(), f), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(a.got, 3);
    assert_string_equal(a.topic, "fwd");
    assert_string_equal(a.from, c.proc.pid);
    /* a user's process may not send to the pg process */
    rl_msg *forged = rl_pg_forward_msg(c.proc.pid, NULL, S, G("room"), G("forged"), body);
    assert_int_equal(rl_send(&c.proc, rl_pg_pid(), forged), -EPERM);
    rl_msg_free(forged);
    rl_body_unref(body);
    rl_proc_exit(&a.proc, NULL);
    rl_proc_exit(&c.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_scopes_names_topics(void **state)
{
    (void)state;
    rec a;
    start(&a, "alice");
    assert_int_equal(rl_pg_scope_open(a.proc.pid), 0);
    assert_int_equal(rl_pg_scope_open(a.proc.pid), 0);
    assert_int_equal(rl_pg_scopes_of(a.proc.pid), 2);
    rl_pg_scope_close(a.proc.pid);
    assert_int_equal(rl_pg_scopes_of(a.proc.pid), 1);
    char big[RL_PG_NAME_MAX + 1];
    memset(big, 'g', sizeof big);
    assert_true(rl_pg_name_ok(big, RL_PG_NAME_MAX));
    assert_false(rl_pg_name_ok(big, RL_PG_NAME_MAX + 1));
    assert_false(rl_pg_name_ok("a\x1f" "b", 3));
    assert_false(rl_pg_name_ok("", 0));
    const char *bad[] = {"welcome", "error", "pg.subscribe", "ws.message", "ws.close", "pid.exit",
                         "api.push", "hub.activity", "user.undelivered", "@x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(rl_pg_topic_ok(bad[i], strlen(bad[i])));
    assert_true(rl_pg_topic_ok("chat", 4));
    assert_true(rl_pg_topic_ok("welcome2", 8));
    rl_proc_exit(&a.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(rl_pg_scopes_of(a.proc.pid), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_join_leave_and_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_send_and_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scopes_names_topics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
