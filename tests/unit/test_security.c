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
#include "rl_proc.h"
#include "rl_security.h"

static uv_loop_t loop;
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
    uv_loop_init(&loop);
    if (rl_node_init(&loop, "t1") < 0)
        return -1;
    return rl_sec_init(&cfg);
}

static int teardown(void **state)
{
    (void)state;
    rl_sec_close();
    rl_node_close();
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
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

/* ---- rl_send_user and the router's rule, with real processes on a node ---- */

typedef struct box {
    rl_proc proc;
    int got;
    char topic[64], from[RL_PID_MAX], from_user[64];
    uint16_t flags;
} box;

static void box_handle(rl_proc *p, rl_msg *m)
{
    box *b = (box *)p;
    size_t n;
    const char *t = rl_msg_topic_name(m, &n);
    snprintf(b->topic, sizeof b->topic, "%.*s", (int)n, t);
    snprintf(b->from, sizeof b->from, "%s", m->from);
    snprintf(b->from_user, sizeof b->from_user, "%s",
             m->owner ? rl_owner_user(m->owner) : "(system)");
    b->flags = m->flags;
    b->got++;
    rl_msg_free(m);
}

static void box_free(rl_proc *p) { (void)p; }

static const rl_proc_ops hub_box = {.kind = "hub", .letter = 'h', .handle = box_handle,
                                    .free = box_free};
static const rl_proc_ops plug_box = {.kind = "plugin", .letter = 'p', .handle = box_handle,
                                     .free = box_free};

static box bob_hub, alice_plugin, carol_hub;
static int lookups, async_mode;
static rl_sec_located_cb saved_cb;
static void *saved_ud;

/* The look-up main registers (rl_central_locate): bob and carol have hubs here. */
static int locate(const char *user, rl_sec_located_cb cb, void *ud)
{
    lookups++;
    const char *pid = strcmp(user, "bob") == 0 ? bob_hub.proc.pid
                      : strcmp(user, "carol") == 0 ? carol_hub.proc.pid : NULL;
    if (async_mode) {
        saved_cb = cb;
        saved_ud = ud;
        return 0;
    }
    cb(pid ? 0 : -ENOENT, pid, 9, ud);
    return 0;
}

static rl_msg *app(const char *topic)
{
    return rl_msg_new_data(RL_T_APP, topic, strlen(topic), "{}", 2);
}

static void start_box(box *b, const rl_proc_ops *ops, const char *user)
{
    memset(b, 0, sizeof *b);
    rl_owner *o = rl_owner_get(user, strlen(user));
    assert_int_equal(rl_proc_start(&b->proc, ops, 16, o), 0);
    rl_owner_unref(o);
}

static void test_send_user(void **state)
{
    (void)state;
    start_box(&bob_hub, &hub_box, "bob");
    start_box(&carol_hub, &hub_box, "carol");
    start_box(&alice_plugin, &plug_box, "alice");
    rl_sec_set_locate(locate);
    /* allowed: located, stamped with the epoch, granted, from alice's plugin */
    rl_msg *m = app("news");
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, m, NULL, NULL), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(bob_hub.got, 1);
    assert_string_equal(bob_hub.topic, "news");
    assert_string_equal(bob_hub.from, alice_plugin.proc.pid);
    assert_string_equal(bob_hub.from_user, "alice");
    assert_true(bob_hub.flags & RL_MSG_GRANTED);
    /* denied by the policy (user.carol): nothing looked up, nothing delivered, m kept */
    int before = lookups;
    m = app("news");
    assert_int_equal(rl_send_user(&alice_plugin.proc, "carol", 5, m, NULL, NULL), -EPERM);
    assert_int_equal(lookups, before);
    assert_false(m->flags & RL_MSG_GRANTED);
    rl_msg_free(m);
    /* a hub's own frames and internal topics: refused whatever the policy */
    m = app("welcome");
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, m, NULL, NULL), -EPERM);
    rl_msg_free(m);
    m = rl_msg_new(RL_T_WS_CLOSE);
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, m, NULL, NULL), -EPERM);
    rl_msg_free(m);
    /* no hub: -ENOENT at once, the caller keeps m; bad ids */
    m = app("news");
    assert_int_equal(rl_send_user(&alice_plugin.proc, "dave", 4, m, NULL, NULL), -ENOENT);
    assert_null(m->owner);
    rl_msg_free(m);
    m = app("news");
    assert_int_equal(rl_send_user(&alice_plugin.proc, "", 0, m, NULL, NULL), -EINVAL);
    assert_int_equal(rl_send_user(&alice_plugin.proc, "a\0b", 3, m, NULL, NULL), -EINVAL);
    rl_msg_free(m);
    /* without the grant the router refuses a send into another user's hub (a pid send) */
    m = app("news");
    assert_int_equal(rl_send(&alice_plugin.proc, bob_hub.proc.pid, m), -EPERM);
    rl_msg_free(m);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(bob_hub.got, 1);
    assert_int_equal(carol_hub.got, 0);
    /* asynchronous: taken now, a failure later is told to the sender as user.undelivered */
    async_mode = 1;
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, app("later"), NULL, NULL), 0);
    saved_cb(-ENOENT, NULL, 0, saved_ud);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(alice_plugin.got, 1);
    assert_string_equal(alice_plugin.topic, "user.undelivered");
    assert_string_equal(alice_plugin.from_user, "(system)");
    /* ... and a success later is delivered */
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, app("later"), NULL, NULL), 0);
    saved_cb(0, bob_hub.proc.pid, 9, saved_ud);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(bob_hub.got, 2);
    assert_string_equal(bob_hub.topic, "later");
    /* one still waiting when the module closes is dropped; its late answer finds nothing */
    assert_int_equal(rl_send_user(&alice_plugin.proc, "bob", 3, app("never"), NULL, NULL), 0);
    rl_sec_close();
    saved_cb(0, bob_hub.proc.pid, 9, saved_ud);
    assert_int_equal(rl_sec_init(&cfg), 0);
    async_mode = 0;
    rl_sec_set_locate(NULL);
    rl_proc_exit(&bob_hub.proc, NULL);
    rl_proc_exit(&carol_hub.proc, NULL);
    rl_proc_exit(&alice_plugin.proc, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(bob_hub.got, 2);
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
        cmocka_unit_test(test_send_user),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
