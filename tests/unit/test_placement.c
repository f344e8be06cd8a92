/* Unit tests for the local placement (hub/rl_placement_local.c): the per-user count, and that
   its callbacks run inside the call (the central hub relies on either being safe). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "rl_placement.h"

static int last_admit = -9, admit_calls;

static void on_admit(int result, void *ud)
{
    (void)ud;
    last_admit = result;
    admit_calls++;
}

static int admit(const rl_placement *pl, const char *user, int limit)
{
    int before = admit_calls;
    assert_int_equal(pl->admit(user, "conn", limit, on_admit, NULL), 0);
    assert_int_equal(admit_calls, before + 1); /* inside the call, exactly once */
    return last_admit;
}

static void test_local_admission_counts_per_user(void **state)
{
    (void)state;
    const rl_placement *pl = rl_placement_local();
    assert_string_equal(pl->name, "local");
    assert_int_equal(admit(pl, "ann", 2), 1);
    assert_int_equal(admit(pl, "ann", 2), 1);
    assert_int_equal(admit(pl, "ann", 2), 0); /* at the limit */
    assert_int_equal(admit(pl, "bob", 2), 1); /* another user's count */
    pl->release("ann", "conn");
    assert_int_equal(admit(pl, "ann", 2), 1);
    assert_int_equal(admit(pl, "ann", 2), 0);
    pl->release("ann", "conn");
    pl->release("ann", "conn");
    pl->release("ann", "conn"); /* more releases than admissions: the count stays at 0 */
    assert_int_equal(admit(pl, "ann", 1), 1);
    assert_int_equal(admit(pl, "ann", 1), 0);
    assert_int_equal(admit(pl, "cat", 0), 0); /* a limit of 0 admits nobody */
    pl->release("ann", "conn");
    pl->release("bob", "conn");
    pl->release("nobody", "conn");
}

static rl_place last;
static int place_calls;

static void on_place(const rl_place *p, void *ud)
{
    (void)ud;
    last = *p;
    place_calls++;
}

static void test_local_places_every_hub_here_for_good(void **state)
{
    (void)state;
    const rl_placement *pl = rl_placement_local();
    assert_int_equal(pl->acquire("ann", "n1.abc.h3.0011", on_place, NULL), 0);
    assert_int_equal(place_calls, 1);
    assert_int_equal(last.status, RL_PLACE_WON);
    assert_string_equal(last.hub_pid, "n1.abc.h3.0011");
    assert_true(last.valid_until == UINT64_MAX);
    assert_int_equal(last.token, 0);
    assert_int_equal(pl->renew("ann", "n1.abc.h3.0011", 0, on_place, NULL), 0);
    assert_int_equal(last.status, RL_PLACE_WON);
    assert_int_equal(pl->locate("ann", on_place, NULL), 0);
    assert_int_equal(last.status, RL_PLACE_NONE); /* the central knows its own hubs */
    assert_int_equal(place_calls, 3);
    assert_true(pl->pid_alive("n2.def.h1.0022"));
    assert_true(pl->node_valid_until() == UINT64_MAX);
    assert_null(pl->set_tick); /* nothing expires: no tick */
    pl->give_up("ann", "n1.abc.h3.0011", 0, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_admission_counts_per_user),
        cmocka_unit_test(test_local_places_every_hub_here_for_good),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
