/* Unit tests for rl_urlmatch: the outbound-HTTP allow-list. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_urlmatch.h"

static const char *const allow[] = {
    "http://127.0.0.1:*/*",
    "https://api.example.com/v1/*",
    "https://*.svc.example.org",
    "http://[::1]:8080/health",
    "http://plain.example.net",
};
#define NALLOW (sizeof allow / sizeof allow[0])

/* rc of the check, and (on 0) the URL to fetch compared with want (NULL: not compared). */
static int check(const char *url, const char *want)
{
    char *canon = NULL, why[256] = "";
    int rc = rl_url_check(allow, NALLOW, url, &canon, why, sizeof why);
    if (rc == 0) {
        assert_non_null(canon);
        if (want)
            assert_string_equal(canon, want);
    } else {
        assert_null(canon);
        assert_true(why[0] != '\0'); /* every refusal says why */
    }
    free(canon);
    return rc;
}

static void test_allowed(void **state)
{
    (void)state;
    assert_int_equal(check("http://127.0.0.1:8080/x?y=1", "http://127.0.0.1:8080/x?y=1"), 0);
    assert_int_equal(check("http://127.0.0.1/x", NULL), 0); /* port 80 under :* */
    assert_int_equal(check("https://api.example.com/v1/users/7", NULL), 0);
    assert_int_equal(check("https://API.Example.COM/v1/users", NULL), 0); /* names without case */
    assert_int_equal(check("https://api.example.com./v1/x", NULL), 0);    /* one trailing dot */
    assert_int_equal(check("https://api.example.com:443/v1/x", NULL), 0); /* the default port */
    assert_int_equal(check("https://a.svc.example.org/anything", NULL), 0);
    assert_int_equal(check("https://a.b.svc.example.org/", NULL), 0);
    assert_int_equal(check("http://[::1]:8080/health", NULL), 0);
    assert_int_equal(check("http://[0:0:0:0:0:0:0:1]:8080/health", NULL), 0);
    assert_int_equal(check("http://plain.example.net/any/path", NULL), 0);
    /* dot segments are resolved before matching: what is fetched is what was matched */
    assert_int_equal(check("http://127.0.0.1:1/a/../b", "http://127.0.0.1:1/b"), 0);
}

static void test_not_on_the_list(void **state)
{
    (void)state;
    assert_int_equal(check("http://127.0.0.2/x", NULL), -EACCES);
    assert_int_equal(check("https://127.0.0.1/x", NULL), -EACCES);      /* scheme is part of it */
    assert_int_equal(check("http://api.example.com/v1/x", NULL), -EACCES);
    assert_int_equal(check("https://api.example.com/v2/x", NULL), -EACCES); /* path */
    assert_int_equal(check("https://api.example.com/v1", NULL), -EACCES); /* needs /v1/ and more */
    assert_int_equal(check("https://api.example.com/v1/../admin", NULL), -EACCES);
    assert_int_equal(check("https://api.example.com:8443/v1/x", NULL), -EACCES); /* port */
    assert_int_equal(check("https://api.example.com.evil.com/v1/x", NULL), -EACCES);
    assert_int_equal(check("https://evilapi.example.com/v1/x", NULL), -EACCES);
    assert_int_equal(check("https://svc.example.org/", NULL), -EACCES); /* *.x is not x */
    assert_int_equal(check("https://evilsvc.example.org/", NULL), -EACCES);
    assert_int_equal(check("http://[::1]:8080/health/x", NULL), -EACCES);
    assert_int_equal(check("http://[::ffff:127.0.0.1]/x", NULL), -EACCES); /* mapped: not v4 */
    assert_int_equal(check("http://localhost/x", NULL), -EACCES);
    assert_int_equal(check("http://plain.example.net:8080/", NULL), -EACCES);
    /* the userinfo trick: the host is what follows the last @, and credentials are refused */
    assert_int_equal(check("http://127.0.0.1:80@evil.com/x", NULL) < 0, 1);
    assert_int_equal(check("https://api.example.com@evil.com/v1/x", NULL), -EINVAL);
    /* spellings of a not-allowed address stay not allowed */
    assert_true(check("http://2130706434/x", NULL) < 0);
    assert_true(check("http://0x7f.0.0.2/x", NULL) < 0);
    assert_true(check("http://0177.0.0.2/x", NULL) < 0);
    assert_true(check("http://127.2/x", NULL) < 0);
    /* nothing is allowed by an empty list */
    char *canon = NULL, why[128];
    assert_int_equal(rl_url_check(NULL, 0, "http://127.0.0.1/", &canon, why, sizeof why), -EACCES);
    assert_null(canon);
}

static void test_refused_urls(void **state)
{
    (void)state;
    assert_int_equal(check("http://user@127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("http://user:pw@127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("http://:pw@127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("file:///etc/passwd", NULL), -EINVAL);
    assert_int_equal(check("ftp://127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("gopher://127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("dict://127.0.0.1:11211/x", NULL), -EINVAL);
    assert_int_equal(check("//127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("127.0.0.1/x", NULL), -EINVAL);
    assert_int_equal(check("", NULL), -EINVAL);
    assert_true(check("http:///x", NULL) < 0); /* curl reads host "x" */
    assert_int_equal(check("http://127.0.0.1/a/%2e%2e/b", NULL), -EINVAL);
    assert_int_equal(check("http://127.0.0.1/a/%2E./b", NULL), -EINVAL);
    assert_int_equal(check("http://127.0.0.1/a/..%2Fb", NULL), -EINVAL);
    assert_int_equal(check("http://127.0.0.1/a/..%5cb", NULL), -EINVAL);
    assert_int_equal(check("http://[fe80::1%25eth0]/x", NULL), -EINVAL); /* zone id */
    char *canon = NULL, why[64];
    assert_int_equal(rl_url_check(allow, NALLOW, NULL, &canon, why, sizeof why), -EINVAL);
    char *longurl = malloc(RL_URL_MAX + 32);
    assert_non_null(longurl);
    memcpy(longurl, "http://127.0.0.1/", 17);
    memset(longurl + 17, 'a', RL_URL_MAX);
    longurl[RL_URL_MAX + 10] = '\0';
    assert_int_equal(check(longurl, NULL), -EINVAL);
    free(longurl);
}

static void test_patterns(void **state)
{
    (void)state;
    char why[256];
    const char *good[] = {"http://127.0.0.1:*/*", "https://api.example.com", "https://*.x.org/p/*",
                          "http://[::1]:8080/", "https://*", "http://h:65535/a*b"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_int_equal(rl_url_pattern_check(good[i], why, sizeof why), 0);
    const char *bad[] = {"ftp://x/", "api.example.com", "http://", "http://a@b/", "http://h:0/",
                         "http://h:70000/", "http://h:x/", "http://*x.org/", "http://a.*.org/",
                         "http://h /", "http://2130706433/", "http://[zz]/", "http://h?q/",
                         "http://127.01.0.1/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        assert_int_equal(rl_url_pattern_check(bad[i], why, sizeof why), -EINVAL);
        assert_true(why[0] != '\0');
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed),
        cmocka_unit_test(test_not_on_the_list),
        cmocka_unit_test(test_refused_urls),
        cmocka_unit_test(test_patterns),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
