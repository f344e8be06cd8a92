/* Unit tests for processes, the router and the scheduler (rl_proc). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_proc.h"

typedef struct rec {
    rl_proc proc;
    char log[4096];
    int handled;
    int exit_after; /* exit after handling this many */
    int freed;
} rec;

static void rec_handle(rl_proc *p, rl_msg *m)
{
    rec *r = (rec *)p;
    strncat(r->log, m->topic, sizeof r->log - strlen(r->log) - 2);
    strcat(r->log, ":");
    strncat(r->log, m->payload, sizeof r->log - strlen(r->log) - 2);
    strcat(r->log, ";");
    rl_msg_free(m);
    if (++r->handled == r->exit_after)
        rl_proc_exit(p, "done \"quoted\"");
}

static void rec_free(rl_proc *p) { ((rec *)p)->freed = 1; }

static const rl_proc_ops rec_ops = {.kind = "rec", .letter = 'r', .handle = rec_handle, .free = rec_free};

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

static void test_pids(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 4), 0);
    assert_true(rl_pid_is_local(a.proc.pid));
    assert_true(strncmp(a.proc.pid, "t1.", 3) == 0);
    assert_non_null(strstr(a.proc.pid, ".r"));
    char nid[RL_NODE_ID_MAX];
    assert_int_equal(rl_pid_node(a.proc.pid, nid), 0);
    assert_string_equal(nid, "t1");
    assert_int_equal(rl_pid_node("garbage", nid), -EINVAL);
    assert_false(rl_pid_is_local("n2.abcdef.h1"));
    assert_int_equal(rl_send(NULL, "n2.abcdef.h1", "x", "1", 1), -EHOSTUNREACH);
    assert_int_equal(rl_send(NULL, "nonsense", "x", "1", 1), -EINVAL);
    assert_int_equal(rl_proc_count('r'), 1);
    assert_ptr_equal(rl_proc_find(a.proc.pid), &a.proc);
    rl_proc_exit(&a.proc, NULL);
    assert_null(rl_proc_find(a.proc.pid));
    assert_int_equal(rl_send(NULL, a.proc.pid, "x", "1", 1), -ENOENT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(a.freed);
}

static void test_order_and_bound(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 3), 0);
    assert_int_equal(rl_send("s", a.proc.pid, "t", "1", 1), 0);
    assert_int_equal(rl_send("s", a.proc.pid, "t", "2", 1), 0);
    assert_int_equal(rl_send("s", a.proc.pid, "t", "3", 1), 0);
    assert_int_equal(rl_send("s", a.proc.pid, "t", "4", 1), -EAGAIN);
    assert_string_equal(a.log, ""); /* never handled inside rl_send */
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(a.log, "t:1;t:2;t:3;");
    rl_proc_exit(&a.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_monitor_exit(void **state)
{
    (void)state;
    rec a = {0}, w = {0};
    a.exit_after = 1;
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 0), 0);
    assert_int_equal(rl_proc_start(&w.proc, &rec_ops, 0), 0);
    assert_int_equal(rl_monitor(w.proc.pid, a.proc.pid), 0);
    /* two queued: the second is dropped when the first makes it exit */
    rl_send(NULL, a.proc.pid, "go", "1", 1);
    rl_send(NULL, a.proc.pid, "go", "2", 1);
    for (int i = 0; i < 5; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_string_equal(a.log, "go:1;");
    assert_true(a.freed);
    char want[256];
    snprintf(want, sizeof want, "pid.exit:{\"pid\":\"%s\",\"error\":\"done \\\"quoted\\\"\"};", a.proc.pid);
    assert_string_equal(w.log, want);
    /* monitoring a gone pid answers at once */
    w.log[0] = '\0';
    assert_int_equal(rl_monitor(w.proc.pid, a.proc.pid), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_non_null(strstr(w.log, "noproc"));
    rl_proc_exit(&w.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
}

static void test_cancel_without_op_exits(void **state)
{
    (void)state;
    rec a = {0};
    assert_int_equal(rl_proc_start(&a.proc, &rec_ops, 0), 0);
    assert_int_equal(rl_cancel(a.proc.pid, 10), 0);
    assert_null(rl_proc_find(a.proc.pid));
    assert_int_equal(rl_cancel(a.proc.pid, 10), -ENOENT);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_true(a.freed);
}

static int remote_calls;
static int fake_remote(const char *to, rl_msg *m, void *ud)
{
    (void)ud;
    assert_string_equal(to, "n9.000000.h1");
    assert_string_equal(m->topic, "t");
    remote_calls++;
    rl_msg_free(m);
    return 0;
}

static void test_remote_hook(void **state)
{
    (void)state;
    rl_router_set_remote(fake_remote, NULL);
    assert_int_equal(rl_send(NULL, "n9.000000.h1", "t", "{}", 2), 0);
    assert_int_equal(remote_calls, 1);
    rl_router_set_remote(NULL, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_and_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_monitor_exit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_without_op_exits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_remote_hook, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
