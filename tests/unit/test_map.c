/* Unit tests for rl_map. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "rl_map.h"

static void test_set_get_del(void **state)
{
    (void)state;
    rl_map m;
    rl_map_init(&m);
    assert_null(rl_map_get(&m, "a"));
    assert_int_equal(rl_map_set(&m, "a", (void *)1), 0);
    assert_int_equal(rl_map_set(&m, "b", (void *)2), 0);
    assert_ptr_equal(rl_map_get(&m, "a"), (void *)1);
    assert_int_equal(rl_map_set(&m, "a", (void *)3), 0);
    assert_ptr_equal(rl_map_get(&m, "a"), (void *)3);
    assert_int_equal(m.len, 2);
    assert_ptr_equal(rl_map_del(&m, "a"), (void *)3);
    assert_null(rl_map_get(&m, "a"));
    assert_null(rl_map_del(&m, "a"));
    assert_int_equal(m.len, 1);
    rl_map_close(&m);
}

static void test_many_and_iterate(void **state)
{
    (void)state;
    rl_map m;
    rl_map_init(&m);
    char k[32];
    for (uintptr_t i = 1; i <= 10000; i++) {
        snprintf(k, sizeof k, "key%lu", (unsigned long)i);
        assert_int_equal(rl_map_set(&m, k, (void *)i), 0);
    }
    /* delete every other while iterating */
    const char *key;
    void *val;
    size_t seen = 0;
    for (size_t it = 0; rl_map_next(&m, &it, &key, &val);) {
        seen++;
        if ((uintptr_t)val % 2 == 0)
            rl_map_del(&m, key);
    }
    assert_int_equal(seen, 10000);
    assert_int_equal(m.len, 5000);
    for (uintptr_t i = 1; i <= 10000; i++) {
        snprintf(k, sizeof k, "key%lu", (unsigned long)i);
        if (i % 2)
            assert_ptr_equal(rl_map_get(&m, k), (void *)i);
        else
            assert_null(rl_map_get(&m, k));
    }
    /* churn: tombstones must not fill the table */
    for (int r = 0; r < 20000; r++) {
        snprintf(k, sizeof k, "churn%d", r);
        assert_int_equal(rl_map_set(&m, k, (void *)1), 0);
        rl_map_del(&m, k);
    }
    assert_int_equal(m.len, 5000);
    rl_map_close(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_get_del),
        cmocka_unit_test(test_many_and_iterate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
