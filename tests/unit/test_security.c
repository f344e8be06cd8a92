/* Unit tests for rl_security: patterns, conditions, deny over allow, scopes resolved from a real
   config file (security.policy / security.scope entries read by rl_config). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_config.h"
#include "rl_log.h"
#include "rl_security.h"

static char tmpdir[PATH_MAX];
static char cfgpath[PATH_MAX + 32];
static rl_config cfg;

static const char yaml[] =
    "version: \"1.0\"\n"
    "namespace: app\n"
    "entries:\n"
    "  - name: processes\n"
    "    kind: process.host\n"
    "  - name: dep\n"
    "    kind: ns.dependency\n"
    "    component: wippy/relay\n"
    "    parameters:\n"
    "      - {name: application_host, value: app:processes}\n"
    "      - {name: user_security_scope, value: app:users}\n"
    "  - name: users\n"
    "    kind: security.scope\n"
    "    policies: [listed]\n"
    "  - name: send\n"
    "    kind: security.policy\n"
    "    groups: [users, other:group]\n"
    "    policy: {actions: process.send, resources: 'user.*', effect: allow}\n"
    "  - name: listed\n"
    "    kind: security.policy\n"
    "    policy: {actions: [read, '*.get'], resources: 'doc:*', effect: allow}\n"
    "  - name: no_carol\n"
    "    kind: security.policy\n"
    "    groups: [app:users]\n"
    "    policy: {actions: '*', resources: user.carol, effect: deny}\n"
    "  - name: conds\n"
    "    kind: security.policy\n"
    "    groups: [users]\n"
    "    policy:\n"
    "      actions: write\n"
    "      resources: '*'\n"
    "      effect: allow\n"
    "      conditions:\n"
    "        - {field: actor.meta.level, operator: gte, value: 3}\n"
    "        - {field: meta.tags, operator: nexists}\n"
    "        - {field: resource, operator: ncontains, value: secret}\n"
    "        - {field: actor.id, operator: nin, value: [mallory, eve]}\n"
    "        - {field: meta.owner, operator: ne, value: \"42\"}\n"
    "        - {field: actor.meta.admin, operator: exists, value: false}\n";

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/rl_sec_XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(cfgpath, sizeof cfgpath, "%s/relay.yaml", tmpdir);
    FILE *f = fopen(cfgpath, "w");
    if (!f || fputs(yaml, f) < 0 || fclose(f) != 0)
        return -1;
    char err[512];
    rl_config_defaults(&cfg);
    if (rl_config_load(&cfg, cfgpath, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return rl_sec_init(&cfg);
}

static int teardown(void **state)
{
    (void)state;
    rl_sec_close();
    rl_config_free(&cfg);
    unlink(cfgpath);
    return rmdir(tmpdir);
}

static int m(const char *p, const char *s) { return rl_sec_match(p, s, strlen(s)); }

static void test_patterns(void **state)
{
    (void)state;
    assert_true(m("*", ""));
    assert_true(m("*", "anything.at:all"));
    assert_true(m("user.*", "user."));
    assert_true(m("user.*", "user.bob.x"));
    assert_false(m("user.*", "user"));
    assert_false(m("user.*", "users.bob"));
    assert_true(m("*.read", "docs.read"));
    assert_false(m("*.read", "docs.reads"));
    assert_true(m("a*b*c", "aXbYbZc"));
    assert_false(m("a*b*c", "aXbYbZ"));
    assert_true(m("**", "x"));
    assert_true(m("exact", "exact"));
    assert_false(m("exact", "exac"));
    assert_false(m("exac", "exact"));
    assert_false(m("", "x"));
    assert_true(m("", ""));
    /* bytes are compared as they are (no case folding, NUL-free lengths) */
    assert_false(m("User.*", "user.bob"));
    assert_true(rl_sec_match("a*", "a\0b", 3));
}

/* Fields for the conditions: actor.meta.level, actor.meta.admin, meta.tags, meta.owner. */
typedef struct fields {
    double level;
    int has_level, admin, tags;
    const char *owner;
} fields;

static void lookup(void *ud, int actor, const char *path, rl_sec_field *out)
{
    fields *f = ud;
    if (actor && strcmp(path, "level") == 0 && f->has_level) {
        out->kind = RL_SEC_VNUM;
        out->num = f->level;
    } else if (actor && strcmp(path, "admin") == 0 && f->admin) {
        out->kind = RL_SEC_VBOOL;
        out->num = 1;
    } else if (!actor && strcmp(path, "tags") == 0 && f->tags) {
        out->kind = RL_SEC_VOTHER;
    } else if (!actor && strcmp(path, "owner") == 0 && f->owner) {
        out->kind = RL_SEC_VSTR;
        out->s = f->owner;
        out->len = strlen(f->owner);
    }
}

static rl_sec_result user_eval(const char *actor, const char *action, const char *res, fields *f)
{
    const rl_sec_policy *const *p;
    size_t n;
    assert_int_equal(rl_sec_scope_get("app:users", &p, &n), 0);
    rl_sec_req r = {actor, action, strlen(action), res, strlen(res), lookup, f};
    return rl_sec_eval(p, n, &r);
}

static void test_scopes_resolved(void **state)
{
    (void)state;
    const rl_sec_policy *const *p;
    size_t n;
    assert_int_equal(rl_sec_scope_get("app:users", &p, &n), 0);
    assert_int_equal(n, 4); /* listed (by the scope), send, no_carol, conds (by their groups) */
    assert_int_equal(rl_sec_scope_get("other:group", &p, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(p[0]->id, "app:send");
    assert_int_equal(rl_sec_scope_get("app:nothing", &p, &n), -ENOENT);
    assert_int_equal(rl_sec_scope_get(NULL, &p, &n), -ENOENT);
    assert_non_null(rl_sec_policy_find("app:conds"));
    assert_null(rl_sec_policy_find("app:none"));
    assert_int_equal(rl_sec_policy_count(), 4);
    assert_string_equal(rl_sec_user_scope(), "app:users");
    const rl_sec_policy *c = rl_sec_policy_find("app:conds");
    assert_int_equal(c->nconds, 6);
    assert_int_equal(c->conds[0].op, RL_SEC_OP_GTE);
    assert_int_equal(c->conds[0].values[0].kind, RL_SEC_VNUM);
    assert_int_equal(c->conds[4].values[0].kind, RL_SEC_VSTR); /* "42" quoted: a string */
    assert_int_equal(c->conds[5].op, RL_SEC_OP_NEXISTS);       /* exists: false */
}

static void test_deny_over_allow_and_undefined(void **state)
{
    (void)state;
    fields f = {0};
    assert_int_equal(user_eval("alice", "process.send", "user.bob", &f), RL_SEC_ALLOW);
    assert_int_equal(user_eval("alice", "process.send", "user.carol", &f), RL_SEC_DENY);
    assert_int_equal(user_eval("alice", "anything", "user.carol", &f), RL_SEC_DENY);
    assert_int_equal(user_eval("alice", "process.send", "room.1", &f), RL_SEC_UNDEFINED);
    assert_int_equal(user_eval("alice", "read", "doc:1", &f), RL_SEC_ALLOW);
    assert_int_equal(user_eval("alice", "doc.get", "doc:1", &f), RL_SEC_ALLOW);
    assert_int_equal(user_eval(NULL, "read", "doc:1", &f), RL_SEC_ALLOW);
    assert_true(rl_sec_user_can("alice", "process.send", "user.bob"));
    assert_false(rl_sec_user_can("alice", "process.send", "user.carol"));
    assert_false(rl_sec_user_can("alice", "write", "x")); /* actor.meta.level absent */
}

static void test_conditions(void **state)
{
    (void)state;
    fields f = {.level = 3, .has_level = 1};
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_ALLOW);
    f.level = 2.5; /* gte 3 */
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_UNDEFINED);
    f.level = 4;
    assert_int_equal(user_eval("mallory", "write", "doc", &f), RL_SEC_UNDEFINED); /* nin */
    assert_int_equal(user_eval(NULL, "write", "doc", &f), RL_SEC_ALLOW); /* absent: nin holds */
    assert_int_equal(user_eval("alice", "write", "my-secret-doc", &f), RL_SEC_UNDEFINED);
    f.tags = 1; /* nexists: present (even a table) fails */
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_UNDEFINED);
    f.tags = 0;
    f.owner = "42"; /* ne "42" */
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_UNDEFINED);
    f.owner = "43";
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_ALLOW);
    f.admin = 1; /* exists false */
    assert_int_equal(user_eval("alice", "write", "doc", &f), RL_SEC_UNDEFINED);
}

/* A numeric condition value against a string field that reads as that number. */
static void test_string_numbers(void **state)
{
    (void)state;
    rl_sec_value v = {RL_SEC_VNUM, (char *)"3", 3};
    rl_sec_cond c = {(char *)"meta.n", RL_SEC_OP_EQ, &v, 1};
    char *acts[] = {(char *)"*"}, *res[] = {(char *)"*"};
    rl_sec_policy p = {(char *)"t:p", 0, acts, 1, res, 1, &c, 1, NULL, 0};
    rl_sec_req r = {"a", "x", 1, "y", 1, NULL, NULL};
    assert_int_equal(rl_sec_policy_eval(&p, &r), RL_SEC_UNDEFINED); /* no lookup: absent */
    c.field = (char *)"resource";
    r.resource = "3.0";
    r.resource_len = 3;
    assert_int_equal(rl_sec_policy_eval(&p, &r), RL_SEC_ALLOW);
    r.resource = "3x";
    r.resource_len = 2;
    assert_int_equal(rl_sec_policy_eval(&p, &r), RL_SEC_UNDEFINED);
    p.deny = 1;
    r.resource = "3";
    r.resource_len = 1;
    assert_int_equal(rl_sec_policy_eval(&p, &r), RL_SEC_DENY);
}

int main(void)
{
    rl_log_set_level(RL_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),
        cmocka_unit_test(test_scopes_resolved),
        cmocka_unit_test(test_deny_over_allow_and_undefined),
        cmocka_unit_test(test_conditions),
        cmocka_unit_test(test_string_numbers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
