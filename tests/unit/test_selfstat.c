/* Unit tests for rl_selfstat: the /proc/<pid>/stat parser, every truncated prefix, and a read. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rl_selfstat.h"

/* A real line of proc(5) with a comm holding spaces and parentheses. */
static const char line[] =
    "4242 (relay (node) x) S 1 4242 4242 0 -1 4194560 1375 0 0 0 37 12 0 0 20 0 1 0 987654 "
    "30998528 1946 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";

static void test_parse_line(void **state)
{
    (void)state;
    rl_selfstat_raw r;
    assert_int_equal(rl_selfstat_parse(line, strlen(line), &r), 0);
    assert_int_equal(r.utime, 37);
    assert_int_equal(r.stime, 12);
    assert_int_equal(r.starttime, 987654);
    assert_int_equal(r.vsize, 30998528);
    assert_int_equal(r.rss, 1946);
}

/* Every prefix that stops before the rss field (24) begins is refused; none reads out of bounds
   (a prefix cut inside a number reads a shorter number: /proc hands the line out whole). */
static void test_truncated_prefixes(void **state)
{
    (void)state;
    const char *rss = strstr(line, " 1946 ");
    assert_non_null(rss);
    size_t need = (size_t)(rss - line) + 1; /* through the space before rss */
    for (size_t n = 0; n < need; n++) {
        char *copy = malloc(n ? n : 1);
        assert_non_null(copy);
        memcpy(copy, line, n);
        rl_selfstat_raw r;
        assert_int_equal(rl_selfstat_parse(copy, n, &r), -EINVAL);
        free(copy);
    }
}

static void test_bad_lines(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "", "4242 no parens S 1 2 3", "4242 (x) S 1 2 3 4 5 6 7 8 9 10 x 12 13\n",
    };
    rl_selfstat_raw r;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(rl_selfstat_parse(bad[i], strlen(bad[i]), &r), -EINVAL);
}

static void test_read_self(void **state)
{
    (void)state;
    rl_selfstat st;
    assert_int_equal(rl_selfstat_read(&st), 0);
    assert_true(st.resident_bytes > 0);
    assert_true(st.virtual_bytes >= st.resident_bytes);
    assert_true(st.open_fds >= 3); /* stdin, stdout, stderr */
    double now = (double)time(NULL);
    assert_true(st.start_time_seconds > now - 3600 && st.start_time_seconds <= now + 1);
    assert_true(st.cpu_seconds >= 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_line),
        cmocka_unit_test(test_truncated_prefixes),
        cmocka_unit_test(test_bad_lines),
        cmocka_unit_test(test_read_self),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
