/* Unit tests for rl_config: the spec's YAML, defaults, every error class, RELAY_*, durations. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rl_config.h"
#include "rl_log.h"

/* The temp dir every fixture is written into (made by the group setup, removed by teardown). */
static char tmpdir[PATH_MAX];
static char cfgpath[PATH_MAX + 32];

static void write_file(const char *name, const char *text)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "%s/rl_cfg_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(cfgpath, sizeof cfgpath, "%s/relay.yaml", tmpdir);
    write_file("session_plugin.lua", "return { run = function(args) end }\n");
    write_file("p.lua", "return { run = function(args) end }\n");
    write_file("m.lua", "local function main(args) end\nreturn { main = main }\n");
    /* names run only in comments and strings: it defines no run */
    write_file("norun.lua", "-- run(args)\n--[==[ run ]==]\nlocal s = 'run' .. [[run]]\n"
                            "local function main(args) end\nreturn { main = main }\n");
    char d[PATH_MAX + 16];
    snprintf(d, sizeof d, "%s/adir", tmpdir);
    return mkdir(d, 0755);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int group_teardown(void **state)
{
    (void)state;
    return nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* The spec's Setup YAML and its plugin entry, as the spec writes them (indented as YAML). */
static const char spec_yaml[] =
    "version: \"1.0\"\n"
    "namespace: app\n"
    "entries:\n"
    "- name: os_env\n"
    "  kind: env.storage.os\n"
    "- name: processes\n"
    "  kind: process.host\n"
    "  lifecycle:\n"
    "    auto_start: true\n"
    "- name: dep.relay\n"
    "  kind: ns.dependency\n"
    "  component: wippy/relay\n"
    "  version: \"*\"\n"
    "  parameters:\n"
    "  - name: application_host\n"
    "    value: app:processes\n"
    "  - name: env_storage\n"
    "    value: app:os_env\n"
    "  - name: user_security_scope\n"
    "    value: app.security:user_scope\n"
    "- name: session_plugin\n"
    "  kind: process.lua\n"
    "  meta:\n"
    "    type: relay.plugin\n"
    "    command_prefix: session_\n"
    "    auto_start: true\n"
    "  source: file://session_plugin.lua\n"
    "  modules: [json, time, logger]\n"
    "  method: run\n";

#define HEAD                                                                                       \
    "version: \"1.0\"\n"                                                                           \
    "namespace: app\n"                                                                             \
    "entries:\n"                                                                                   \
    "  - name: os_env\n"                                                                           \
    "    kind: env.storage.os\n"                                                                   \
    "  - name: processes\n"                                                                        \
    "    kind: process.host\n"                                                                     \
    "  - name: dep.relay\n"                                                                        \
    "    kind: ns.dependency\n"                                                                    \
    "    component: wippy/relay\n"                                                                 \
    "    version: \"*\"\n"                                                                         \
    "    parameters:\n"

#define P_HOST  "      - name: application_host\n        value: app:processes\n"
#define P_SCOPE "      - name: user_security_scope\n        value: app.security:user_scope\n"
#define P_REQ   P_HOST P_SCOPE
#define PARAM(n, v) "      - name: " n "\n        value: " v "\n"

#define PLUGIN(name, prefix, src)                                                                  \
    "  - name: " name "\n    kind: process.lua\n    meta:\n      type: relay.plugin\n"            \
    "      command_prefix: " prefix "\n    source: file://" src "\n"

#define NODE(body) "  - name: node\n    kind: relay.node\n" body

static int load(const char *yaml, rl_config *c, char *err, size_t errlen)
{
    write_file("relay.yaml", yaml);
    rl_config_defaults(c);
    err[0] = '\0';
    return rl_config_load(c, cfgpath, err, errlen);
}

/* Loads yaml, expects failure with "FILE: entry ENTRY: ...REASON..." (or "FILE: " when entry is
   NULL), then frees. */
static void expect_error(const char *yaml, const char *entry, const char *reason)
{
    rl_config c;
    char err[512], want[PATH_MAX + 128];
    int rc = load(yaml, &c, err, sizeof err);
    if (rc >= 0)
        fail_msg("loaded a bad config (wanted '%s')", reason);
    if (entry)
        snprintf(want, sizeof want, "%s: entry %s: ", cfgpath, entry);
    else
        snprintf(want, sizeof want, "%s: ", cfgpath);
    if (strncmp(err, want, strlen(want)) != 0 || !strstr(err, reason))
        fail_msg("error '%s' does not start with '%s' and name '%s'", err, want, reason);
    rl_config_free(&c);
}

static void test_defaults(void **state)
{
    (void)state;
    rl_config c;
    rl_config_defaults(&c);
    assert_int_equal(c.max_connections_per_user, 5);
    assert_int_equal(c.plugin_memory_limit, 16u << 20);
    assert_int_equal(c.plugin_user_max_processes, 256);
    assert_int_equal(c.plugin_user_max_timers, 512);
    assert_int_equal(c.plugin_user_max_channels, 20000);
    assert_int_equal(c.queue_multiplier, 100);
    assert_int_equal(c.user_hub_inactivity_timeout_ms, 7200000);
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_int_equal(c.listen_port, 8080);
    assert_string_equal(c.ws_path, "/ws");
    assert_string_equal(c.node_id, "n1");
    assert_string_equal(c.redis_prefix, "relay:");
    assert_null(c.redis_url);
    assert_int_equal(c.auth_mode, RL_AUTH_JWT);
    assert_null(c.jwt_secret);
    assert_int_equal(c.norigins, 0);
    assert_int_equal(c.max_message_bytes, 65536);
    assert_int_equal(c.max_outbound_bytes, 1 << 20);
    assert_int_equal(c.ping_interval_ms, 30000);
    assert_int_equal(c.ping_timeout_ms, 60000);
    assert_int_equal(c.handshake_timeout_ms, 10000);
    assert_int_equal(c.drain_timeout_ms, 10000);
    assert_int_equal(c.node_ttl_ms, 5000);
    assert_int_equal(c.lease_ttl_ms, 5000);
    assert_int_equal(c.console, 0);
    assert_int_equal(c.lua_instruction_budget, 10000000);
    assert_int_equal(c.lua_memory_limit, 256u << 20);
    assert_int_equal(c.plugin_queue, 1024);
    assert_null(c.tls_cert);
    assert_null(c.tls_key);
    assert_int_equal(c.nplugins, 0);
    rl_config_free(&c);
    rl_config_free(&c); /* free leaves c empty: a second free is harmless */
}

static void test_spec_setup_loads(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    assert_int_equal(load(spec_yaml, &c, err, sizeof err), 0);
    assert_string_equal(c.path, cfgpath);
    assert_string_equal(c.namespace_, "app");
    assert_string_equal(c.application_host, "app:processes");
    assert_string_equal(c.env_storage, "app:os_env");
    assert_string_equal(c.user_security_scope, "app.security:user_scope");
    assert_int_equal(c.max_connections_per_user, 5);
    assert_int_equal(c.queue_multiplier, 100);
    assert_int_equal(c.user_hub_inactivity_timeout_ms, 7200000);
    assert_int_equal(c.nplugins, 1);
    rl_plugin_def *p = &c.plugins[0];
    assert_string_equal(p->name, "session_plugin");
    assert_string_equal(p->id, "app:session_plugin");
    assert_string_equal(p->prefix, "session_");
    assert_int_equal(p->auto_start, 1);
    assert_null(p->default_host);
    assert_string_equal(p->method, "run");
    assert_int_equal(p->nmodules, 3);
    assert_string_equal(p->modules[0], "json");
    assert_string_equal(p->modules[1], "time");
    assert_string_equal(p->modules[2], "logger");
    /* resolved against the config's directory, so it opens from any working directory */
    assert_int_equal(p->source_path[0], '/');
    assert_non_null(strstr(p->source_path, "/session_plugin.lua"));
    assert_int_equal(access(p->source_path, R_OK), 0);
    /* no relay.node entry: node settings keep their defaults */
    assert_int_equal(c.auth_mode, RL_AUTH_JWT);
    assert_int_equal(c.listen_port, 8080);
    rl_config_free(&c);
}

/* The other Lua entries (spawnable processes, libraries, functions), imports and env.variable. */
static void test_lua_entries_imports_env(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    const char *yaml = HEAD P_REQ
        "  - name: lib\n    kind: library.lua\n    source: file://p.lua\n    modules: [json, fancy]\n"
        "  - name: lib2\n    kind: library.lua\n    source: file://p.lua\n"
        "    imports: {lib: app:lib}\n"
        "  - name: worker\n    kind: process.lua\n    source: file://m.lua\n    method: main\n"
        "    imports: {helpers: app:lib2}\n"
        "  - name: fn\n    kind: function.lua\n    source: file://m.lua\n    method: main\n"
        "  - name: foreign\n    kind: process.lua\n    source: file://nowhere.lua\n"
        "  - name: v1\n    kind: env.variable\n    variable: API_URL\n    storage: app:os_env\n"
        "    default: http://x\n"
        "  - name: v2\n    kind: env.variable\n    storage: app:os_env\n"
        PLUGIN("p1", "p1_", "p.lua")
        "    imports:\n      lib: app:lib\n      other: app:lib2\n";
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.nplugins, 1);
    assert_int_equal(c.plugins[0].nimports, 2);
    assert_string_equal(c.plugins[0].import_names[1], "other");
    assert_string_equal(c.plugins[0].import_ids[1], "app:lib2");
    /* foreign (no readable source) is left out, not refused */
    assert_int_equal(c.nlua_entries, 4);
    assert_int_equal(c.lua_entries[0].lua_kind, RL_LUA_ENTRY_LIBRARY);
    assert_string_equal(c.lua_entries[1].import_ids[0], "app:lib");
    assert_int_equal(c.lua_entries[2].lua_kind, RL_LUA_ENTRY_PROCESS);
    assert_string_equal(c.lua_entries[2].id, "app:worker");
    assert_string_equal(c.lua_entries[2].method, "main");
    assert_int_equal(c.lua_entries[3].lua_kind, RL_LUA_ENTRY_FUNCTION);
    assert_int_equal(c.nenv_vars, 2);
    assert_string_equal(c.env_vars[0].name, "API_URL");
    assert_string_equal(c.env_vars[0].key, "API_URL");
    assert_string_equal(c.env_vars[0].deflt, "http://x");
    assert_true(c.env_vars[0].os);
    assert_null(c.env_vars[1].name);
    assert_string_equal(c.env_vars[1].key, "v2");
    assert_string_equal(c.env_vars[1].id, "app:v2");
    rl_config_free(&c);

    /* an import must name a library.lua entry of this file */
    expect_error(HEAD P_REQ "  - name: fn\n    kind: function.lua\n    source: file://m.lua\n"
                 "    method: main\n" PLUGIN("p1", "p1_", "p.lua") "    imports: {x: app:fn}\n",
                 "p1", "imports.x: app:fn is not a library.lua entry of this file");
    expect_error(HEAD P_REQ PLUGIN("p1", "p1_", "p.lua") "    imports: {x: other:lib}\n", "p1",
                 "imports.x: other:lib is not a library.lua entry");
    expect_error(HEAD P_REQ PLUGIN("p1", "p1_", "p.lua") "    imports: {json: app:lib}\n", "p1",
                 "imports: 'json' is the name of a built-in module");
    expect_error(HEAD P_REQ PLUGIN("p1", "p1_", "p.lua") "    imports: [a, b]\n", "p1",
                 "imports must be a map");
    expect_error(HEAD P_REQ PLUGIN("p1", "p1_", "p.lua") "    imports: {x: 'nocolon'}\n", "p1",
                 "imports.x");
    /* libraries and functions are strict: a missing source or method stops the load */
    expect_error(HEAD P_REQ "  - name: lib\n    kind: library.lua\n    source: file://nowhere.lua\n",
                 "lib", "source");
    expect_error(HEAD P_REQ "  - name: lib\n    kind: library.lua\n    source: file://p.lua\n"
                 "    method: run\n", "lib", "unknown key 'method'");
    expect_error(HEAD P_REQ "  - name: fn\n    kind: function.lua\n    source: file://m.lua\n",
                 "fn", "defines no 'run'");
    /* env.variable */
    expect_error(HEAD P_REQ "  - name: v\n    kind: env.variable\n    variable: A\n", "v",
                 "missing storage");
    expect_error(HEAD P_REQ "  - name: v\n    kind: env.variable\n    variable: A-B\n"
                 "    storage: app:os_env\n", "v", "not letters, digits and _");
    expect_error(HEAD P_REQ "  - name: v\n    kind: env.variable\n    variable: A\n"
                 "    storage: app:nope\n", "v", "storage app:nope names no entry");
}

static void test_plugin_defaults_and_ignored_kinds(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    const char *yaml = HEAD P_REQ
        "  - name: user_scope\n    kind: security.scope\n    policies: [pol]\n"
        "  - name: pol\n    kind: security.policy\n"
        "    policy: {actions: '*', resources: '*', effect: allow}\n"
        "  - name: helper\n    kind: process.lua\n    source: file://nowhere.lua\n    anything: 1\n"
        "  - name: other\n    kind: process.lua\n    meta: {type: something.else}\n"
        PLUGIN("p1", "p1_", "p.lua")
        "    meta_is_not_here: 0\n";
    /* an unknown key in a plugin entry is refused ... */
    expect_error(yaml, "p1", "meta_is_not_here");
    /* ... and without it, defaults apply: method run, auto_start false, no modules */
    yaml = HEAD P_REQ
        "  - name: helper\n    kind: process.lua\n    source: file://nowhere.lua\n"
        "  - name: other\n    kind: process.lua\n    meta: {type: something.else}\n"
        PLUGIN("p1", "p1_", "p.lua")
        "    lifecycle: {auto_start: true}\n";
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.nplugins, 1);
    assert_string_equal(c.plugins[0].method, "run");
    assert_int_equal(c.plugins[0].auto_start, 0);
    assert_int_equal(c.plugins[0].nmodules, 0);
    assert_null(c.env_storage);
    rl_config_free(&c);
}

static void test_node_entry_all_keys(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    const char *yaml = HEAD P_REQ
        PARAM("max_connections_per_user", "7")
        PARAM("queue_multiplier", "\"3\"")
        PARAM("user_hub_inactivity_timeout", "90")
        PLUGIN("p1", "p1_", "p.lua")
        "    meta:\n      type: relay.plugin\n      command_prefix: p1_\n      auto_start: yes\n"
        "      default_host: app:processes\n      description: free-form\n"
        NODE("    listen: \"0.0.0.0:9001\"\n"
             "    ws_path: /socket\n"
             "    node_id: node-7\n"
             "    redis: redis://127.0.0.1:6390/2\n"
             "    redis_prefix: \"r:\"\n"
             "    auth:\n      mode: jwt\n      secret: s3\n      issuer: iss\n      audience: aud\n"
             "    allowed_origins: [\"http://a.example\", \"https://b.example\"]\n"
             "    max_message_bytes: 4096\n"
             "    max_outbound_bytes: 2MiB\n"
             "    ping_interval: 5s\n"
             "    ping_timeout: 1m30s\n"
             "    handshake_timeout: 1500ms\n"
             "    drain_timeout: 0\n"
             "    node_ttl: 3s\n"
             "    lease_ttl: 2.5s\n"
             "    console: true\n"
             "    lua_instruction_budget: 5000\n"
             "    lua_memory_limit: 64M\n"
             "    plugin_queue: 16\n");
    /* the meta map appears twice in this text (the macro's and ours): refused, naming the entry */
    expect_error(yaml, "p1", "key 'meta' twice");
    yaml = HEAD P_REQ
        PARAM("max_connections_per_user", "7")
        PARAM("queue_multiplier", "\"3\"")
        PARAM("user_hub_inactivity_timeout", "90")
        "  - name: p1\n    kind: process.lua\n"
        "    meta:\n      type: relay.plugin\n      command_prefix: p1_\n      auto_start: yes\n"
        "      default_host: app:processes\n      description: free-form\n"
        "    source: file://m.lua\n    method: main\n    modules: [json]\n"
        NODE("    listen: \"0.0.0.0:9001\"\n"
             "    ws_path: /socket\n"
             "    node_id: node-7\n"
             "    redis: redis://127.0.0.1:6390/2\n"
             "    redis_prefix: \"r:\"\n"
             "    auth:\n      mode: jwt\n      secret: s3\n      issuer: iss\n      audience: aud\n"
             "    allowed_origins: [\"http://a.example\", \"https://b.example\"]\n"
             "    max_message_bytes: 4096\n"
             "    max_outbound_bytes: 2MiB\n"
             "    ping_interval: 5s\n"
             "    ping_timeout: 1m30s\n"
             "    handshake_timeout: 1500ms\n"
             "    drain_timeout: 0\n"
             "    node_ttl: 3s\n"
             "    lease_ttl: 2.5s\n"
             "    console: true\n"
             "    lua_instruction_budget: 5000\n"
             "    lua_memory_limit: 64M\n"
             "    plugin_queue: 16\n");
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.max_connections_per_user, 7);
    assert_int_equal(c.queue_multiplier, 3);
    assert_int_equal(c.user_hub_inactivity_timeout_ms, 90000);
    assert_int_equal(c.plugins[0].auto_start, 1);
    assert_string_equal(c.plugins[0].default_host, "app:processes");
    assert_string_equal(c.plugins[0].method, "main");
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 9001);
    assert_string_equal(c.ws_path, "/socket");
    assert_string_equal(c.node_id, "node-7");
    assert_string_equal(c.redis_url, "redis://127.0.0.1:6390/2");
    assert_string_equal(c.redis_prefix, "r:");
    assert_int_equal(c.auth_mode, RL_AUTH_JWT);
    assert_string_equal(c.jwt_secret, "s3");
    assert_string_equal(c.jwt_issuer, "iss");
    assert_string_equal(c.jwt_audience, "aud");
    assert_int_equal(c.norigins, 2);
    assert_string_equal(c.allowed_origins[1], "https://b.example");
    assert_int_equal(c.max_message_bytes, 4096);
    assert_int_equal(c.max_outbound_bytes, 2u << 20);
    assert_int_equal(c.ping_interval_ms, 5000);
    assert_int_equal(c.ping_timeout_ms, 90000);
    assert_int_equal(c.handshake_timeout_ms, 1500);
    assert_int_equal(c.drain_timeout_ms, 0);
    assert_int_equal(c.node_ttl_ms, 3000);
    assert_int_equal(c.lease_ttl_ms, 2500);
    assert_int_equal(c.console, 1);
    assert_int_equal(c.lua_instruction_budget, 5000);
    assert_int_equal(c.lua_memory_limit, 64u << 20);
    assert_int_equal(c.plugin_queue, 16);
    rl_config_free(&c);

    /* YAML numbers and strings read the same; insecure mode */
    yaml = HEAD P_REQ PARAM("max_connections_per_user", "9")
        NODE("    listen: \"[::1]:7000\"\n    auth: {mode: insecure}\n    redis: \"\"\n");
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.max_connections_per_user, 9);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 7000);
    assert_int_equal(c.auth_mode, RL_AUTH_INSECURE);
    assert_null(c.redis_url);
    rl_config_free(&c);
}

/* Every error class names the file, the entry (when there is one) and the reason. */
static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *yaml, *entry, *reason;
    } cases[] = {
        {HEAD P_REQ "  - name: mystery\n    kind: relay.bogus\n", "mystery", "unknown kind 'relay.bogus'"},
        {HEAD P_REQ PARAM("bogus_param", "1"), "dep.relay", "unknown parameter 'bogus_param'"},
        {HEAD P_SCOPE, "dep.relay", "missing required parameter application_host"},
        {HEAD P_HOST, "dep.relay", "missing required parameter user_security_scope"},
        {HEAD P_HOST PARAM("user_security_scope", "\"\""), "dep.relay", "user_security_scope"},
        {HEAD P_REQ PARAM("application_host", "app:other"), "dep.relay", "application_host given twice"},
        {HEAD P_REQ PARAM("user_hub_inactivity_timeout", "soon"), "dep.relay",
         "user_hub_inactivity_timeout: 'soon' is not a duration"},
        {HEAD P_REQ PARAM("user_hub_inactivity_timeout", "0s"), "dep.relay", "user_hub_inactivity_timeout"},
        {HEAD P_REQ PARAM("max_connections_per_user", "many"), "dep.relay",
         "max_connections_per_user: 'many' is not"},
        {HEAD P_REQ PARAM("max_connections_per_user", "0"), "dep.relay",
         "max_connections_per_user: 0 is out of range"},
        {HEAD P_REQ PARAM("max_connections_per_user", "-3"), "dep.relay", "max_connections_per_user"},
        {HEAD P_REQ PARAM("max_connections_per_user", "99999999999999999999999"), "dep.relay",
         "max_connections_per_user"},
        {HEAD P_REQ PARAM("queue_multiplier", "0"), "dep.relay", "queue_multiplier: 0 is out of range"},
        {HEAD P_REQ PARAM("queue_multiplier", "[1]"), "dep.relay", "queue_multiplier must be a single value"},
        {HEAD P_REQ PARAM("max_connections_per_user", "100000") PARAM("queue_multiplier", "100000"), NULL,
         "max_connections_per_user * queue_multiplier"},
        {HEAD P_REQ "  - name: dep2\n    kind: ns.dependency\n    component: wippy/relay\n", "dep2",
         "a second ns.dependency"},
        {HEAD P_REQ "  - name: other\n    kind: ns.dependency\n    component: wippy/views\n", "other",
         "wippy/views"},
        {HEAD P_REQ "  - name: processes\n    kind: process.host\n", "processes", "second entry"},
        {HEAD PARAM("application_host", "app:nothing") P_SCOPE, "dep.relay", "app:nothing names no entry"},
        {HEAD PARAM("application_host", "app:os_env") P_SCOPE, "dep.relay", "is of kind env.storage.os, not process.host"},
        {HEAD PARAM("application_host", "processes") P_SCOPE, "dep.relay", "not namespace:name"},
        {HEAD P_REQ PLUGIN("a", "x_", "p.lua") PLUGIN("b", "x_", "p.lua"), "b", "duplicate command_prefix 'x_'"},
        {HEAD P_REQ PLUGIN("ghost_plugin", "g_", "nope_missing.lua"), "ghost_plugin", "nope_missing.lua"},
        {HEAD P_REQ PLUGIN("dir_plugin", "d_", "adir"), "dir_plugin", "adir: not a regular file"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin, command_prefix: n_}\n"
                    "    source: p.lua\n", "np", "not file://PATH"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin, command_prefix: n_}\n",
         "np", "missing source"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin}\n    source: file://p.lua\n",
         "np", "missing meta.command_prefix"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin, command_prefix: \"\"}\n"
                    "    source: file://p.lua\n", "np", "command_prefix must not be empty"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin, command_prefix: n_, "
                    "auto_start: maybe}\n    source: file://p.lua\n", "np", "auto_start: 'maybe'"},
        {HEAD P_REQ "  - name: np\n    kind: process.lua\n    meta: {type: relay.plugin, command_prefix: n_, "
                    "default_host: app:nohost}\n    source: file://p.lua\n", "np", "app:nohost"},
        {HEAD P_REQ PLUGIN("np", "n_", "p.lua") "    method: \"not a name\"\n", "np", "method"},
        {HEAD P_REQ PLUGIN("np", "n_", "p.lua") "    modules: [json, json]\n", "np", "'json' twice"},
        {HEAD P_REQ PLUGIN("np", "n_", "p.lua") "    modules: [json, sql]\n", "np",
         "modules: unknown module 'sql'"},
        {HEAD P_REQ PLUGIN("np", "n_", "norun.lua"), "np", "defines no 'run' (the default)"},
        {HEAD P_REQ PLUGIN("np", "n_", "p.lua") "    method: main\n", "np",
         "method 'main': source"},
        {HEAD P_REQ NODE("    bogus_key: 1\n"), "node", "unknown key 'bogus_key'"},
        {HEAD P_REQ NODE("    plugin_user_max_processes: 0\n"), "node", "plugin_user_max_processes"},
        {HEAD P_REQ NODE("    plugin_user_max_timers: 30001\n"), "node", "plugin_user_max_timers"},
        {HEAD P_REQ NODE("    plugin_user_max_channels: 100000001\n"), "node", "plugin_user_max_channels"},
        {HEAD P_REQ NODE("    listen: 127.0.0.1:70000\n"), "node", "port must be 1..65535"},
        {HEAD P_REQ NODE("    listen: 127.0.0.1:0\n"), "node", "port must be 1..65535"},
        {HEAD P_REQ NODE("    listen: 127.0.0.1\n"), "node", "listen"},
        {HEAD P_REQ NODE("    auth: {mode: none}\n"), "node", "auth.mode: 'none' is not jwt or insecure"},
        {HEAD P_REQ NODE("    auth: {mode: jwt, algo: HS256}\n"), "node", "unknown key 'algo' in auth"},
        {HEAD P_REQ NODE("    auth: insecure\n"), "node", "auth must be a map"},
        {HEAD P_REQ NODE("    ping_interval: fast\n"), "node", "ping_interval"},
        {HEAD P_REQ NODE("    max_message_bytes: 10x\n"), "node", "max_message_bytes"},
        {HEAD P_REQ NODE("    console: sure\n"), "node", "console"},
        {HEAD P_REQ NODE("    ws_path: ws\n"), "node", "ws_path"},
        {HEAD P_REQ NODE("    redis: http://x\n"), "node", "redis"},
        {HEAD P_REQ NODE("    node_id: \"\"\n"), "node", "node_id"},
        {HEAD P_REQ NODE("    console: true\n    console: false\n"), "node", "key 'console' twice"},
        {HEAD P_REQ NODE("") "  - name: node2\n    kind: relay.node\n", "node2", "a second relay.node"},
        {HEAD P_REQ NODE("    node_id: ${RL_TEST_SURELY_UNDEFINED}\n"), "node",
         "RL_TEST_SURELY_UNDEFINED is not defined"},
        {HEAD P_REQ NODE("    node_id: ${RL_TEST_X\n"), "node", "unterminated"},
        {HEAD P_REQ NODE("    node_id: ${1bad}\n"), "node", "bad variable reference"},
        {HEAD P_REQ "  - kind: process.host\n", NULL, "entry #4: missing name"},
        {HEAD P_REQ "  - name: nokind\n", "nokind", "kind"},
        {HEAD P_REQ "  - name: \"bad name\"\n    kind: process.host\n", NULL, "bad name"},
        {"version: \"1.0\"\nnamespace: app\nentries:\n  - name: os_env\n    kind: env.storage.os\n", NULL,
         "no ns.dependency"},
        {"version: \"1.0\"\nentries: []\n", NULL, "namespace"},
        {"version: \"2.0\"\nnamespace: app\nentries: []\n", NULL, "version '2.0' is not supported"},
        {"version: 1\nnamespace: app\nentries: []\n", NULL, "version '1' is not supported"},
        {"version: \"1.0\"\nnamespace: app\n", NULL, "entries must be a list"},
        {"version: \"1.0\"\nnamespace: app\nextra: 1\nentries: []\n", NULL, "unknown top-level key 'extra'"},
        {"version: \"1.0\"\nnamespace: app\nentries:\n  - name: [unclosed\n    kind: x\n", NULL, "YAML error"},
        {"", NULL, "empty file"},
        {"- just\n- a list\n", NULL, "the top level must be a map"},
        {"namespace: a\n---\nnamespace: b\n", NULL, "more than one YAML document"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_error(cases[i].yaml, cases[i].entry, cases[i].reason);
}

/* The ns.dependency version is a constraint this node's version (RL_VERSION, 0.1.0) must meet. */
static void test_dependency_version(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        int ok;
    } cases[] = {
        {"\"*\"", 1},      {"0.1.0", 1},       {"\"0.1\"", 1},    {"\"^0.1\"", 1},  {"\">=0.0.9\"", 1},
        {"\"~0.1.0\"", 1}, {"v0.1.0", 1},      {"~", 1},          {"\"^0.2\"", 0},  {"\"1.0\"", 0},
        {"\">=0.2\"", 0},  {"\"^0.1.1\"", 0},  {"latest", 0},     {"\"0.1.x\"", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml,
                 "version: \"1.0\"\nnamespace: app\nentries:\n"
                 "  - name: processes\n    kind: process.host\n"
                 "  - name: dep.relay\n    kind: ns.dependency\n    component: wippy/relay\n"
                 "    version: %s\n    parameters:\n" P_REQ, cases[i].v);
        if (cases[i].ok) {
            rl_config c;
            char err[512];
            if (load(yaml, &c, err, sizeof err) != 0)
                fail_msg("version %s refused: %s", cases[i].v, err);
            rl_config_free(&c);
        } else {
            expect_error(yaml, "dep.relay", "this node is wippy/relay");
        }
    }
}

static void test_missing_file(void **state)
{
    (void)state;
    rl_config c;
    char err[512], path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/does-not-exist.yaml", tmpdir);
    rl_config_defaults(&c);
    assert_true(rl_config_load(&c, path, err, sizeof err) < 0);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "No such file"));
    rl_config_free(&c);
}

static void test_var_expansion(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    setenv("RL_TEST_SECRET", "from-env", 1);
    setenv("RL_TEST_MAXC", "4", 1);
    setenv("RL_TEST_PORT", "9123", 1);
    setenv("RL_TEST_PREFIX", "env_", 1);
    const char *yaml = HEAD P_REQ PARAM("max_connections_per_user", "${RL_TEST_MAXC}")
        PLUGIN("p1", "${RL_TEST_PREFIX}", "p.lua")
        NODE("    listen: 127.0.0.1:${RL_TEST_PORT}\n"
             "    auth: {mode: jwt, secret: \"${RL_TEST_SECRET}\"}\n"
             "    node_id: n-${RL_TEST_UNSET_VAR:-dflt}-x\n"
             "    redis_prefix: \"$literal:\"\n");
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.max_connections_per_user, 4);
    assert_int_equal(c.listen_port, 9123);
    assert_string_equal(c.jwt_secret, "from-env");
    assert_string_equal(c.node_id, "n-dflt-x");
    assert_string_equal(c.redis_prefix, "$literal:");
    assert_string_equal(c.plugins[0].prefix, "env_");
    rl_config_free(&c);
    /* values from the environment are not expanded again */
    setenv("RL_TEST_SECRET", "${RL_TEST_SURELY_UNDEFINED}", 1);
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_string_equal(c.jwt_secret, "${RL_TEST_SURELY_UNDEFINED}");
    rl_config_free(&c);
    unsetenv("RL_TEST_SECRET");
    expect_error(yaml, "node", "auth.secret: environment variable RL_TEST_SECRET is not defined");
    unsetenv("RL_TEST_MAXC");
    unsetenv("RL_TEST_PORT");
    unsetenv("RL_TEST_PREFIX");
}

static void test_plugins_sorted_longest_prefix_first(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    const char *yaml = HEAD P_REQ PLUGIN("a", "a_", "p.lua") PLUGIN("ab", "a_b_", "p.lua")
        PLUGIN("x", "x_", "p.lua") PLUGIN("abc", "a_b_c_", "p.lua") PLUGIN("y", "y_", "p.lua")
        PLUGIN("cd", "cd__", "p.lua");
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(c.nplugins, 6);
    static const char *const want[] = {"a_b_c_", "a_b_", "cd__", "a_", "x_", "y_"};
    for (size_t i = 0; i < 6; i++)
        assert_string_equal(c.plugins[i].prefix, want[i]);
    assert_string_equal(c.plugins[2].id, "app:cd");
    rl_config_free(&c);
}

static const char *const relay_vars[] = {
    "RELAY_LISTEN", "RELAY_NODE_ID", "RELAY_REDIS_URL", "RELAY_AUTH_MODE", "RELAY_JWT_SECRET",
    "RELAY_MAX_CONNECTIONS_PER_USER", "RELAY_QUEUE_MULTIPLIER", "RELAY_USER_HUB_INACTIVITY_TIMEOUT",
    "RELAY_TLS_CERT", "RELAY_TLS_KEY",
};

static void clear_relay_env(void)
{
    for (size_t i = 0; i < sizeof relay_vars / sizeof relay_vars[0]; i++)
        unsetenv(relay_vars[i]);
}

static void test_env_overrides(void **state)
{
    (void)state;
    rl_config c;
    char err[512];
    clear_relay_env();
    const char *yaml = HEAD P_REQ NODE("    auth: {mode: insecure}\n    redis: redis://h:1\n");
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    assert_int_equal(rl_config_apply_env(&c, err, sizeof err), 0); /* nothing set: no change */
    assert_int_equal(c.auth_mode, RL_AUTH_INSECURE);
    setenv("RELAY_LISTEN", "10.1.2.3:4567", 1);
    setenv("RELAY_NODE_ID", "n9", 1);
    setenv("RELAY_REDIS_URL", "redis://127.0.0.1:7777", 1);
    setenv("RELAY_AUTH_MODE", "jwt", 1);
    setenv("RELAY_JWT_SECRET", "sekrit", 1);
    setenv("RELAY_MAX_CONNECTIONS_PER_USER", "2", 1);
    setenv("RELAY_QUEUE_MULTIPLIER", "7", 1);
    setenv("RELAY_USER_HUB_INACTIVITY_TIMEOUT", "2s", 1);
    assert_int_equal(rl_config_apply_env(&c, err, sizeof err), 0);
    assert_string_equal(c.listen_host, "10.1.2.3");
    assert_int_equal(c.listen_port, 4567);
    assert_string_equal(c.node_id, "n9");
    assert_string_equal(c.redis_url, "redis://127.0.0.1:7777");
    assert_int_equal(c.auth_mode, RL_AUTH_JWT);
    assert_string_equal(c.jwt_secret, "sekrit");
    assert_int_equal(c.max_connections_per_user, 2);
    assert_int_equal(c.queue_multiplier, 7);
    assert_int_equal(c.user_hub_inactivity_timeout_ms, 2000);
    /* RELAY_REDIS_URL="" forces standalone; other empty variables are ignored */
    setenv("RELAY_REDIS_URL", "", 1);
    setenv("RELAY_NODE_ID", "", 1);
    setenv("RELAY_AUTH_MODE", "insecure", 1);
    assert_int_equal(rl_config_apply_env(&c, err, sizeof err), 0);
    assert_null(c.redis_url);
    assert_string_equal(c.node_id, "n9");
    assert_int_equal(c.auth_mode, RL_AUTH_INSECURE);
    clear_relay_env();

    static const struct {
        const char *var, *value;
    } bad[] = {
        {"RELAY_LISTEN", "nohostport"},
        {"RELAY_LISTEN", "h:99999"},
        {"RELAY_REDIS_URL", "tcp://x"},
        {"RELAY_AUTH_MODE", "open"},
        {"RELAY_MAX_CONNECTIONS_PER_USER", "0"},
        {"RELAY_MAX_CONNECTIONS_PER_USER", "lots"},
        {"RELAY_QUEUE_MULTIPLIER", "-1"},
        {"RELAY_USER_HUB_INACTIVITY_TIMEOUT", "2 s"},
        {"RELAY_USER_HUB_INACTIVITY_TIMEOUT", "forever"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv(bad[i].var, bad[i].value, 1);
        err[0] = '\0';
        assert_true(rl_config_apply_env(&c, err, sizeof err) < 0);
        if (!strstr(err, bad[i].var))
            fail_msg("error '%s' does not name %s", err, bad[i].var);
        unsetenv(bad[i].var);
    }
    /* limits involving two settings are checked after the environment too */
    setenv("RELAY_MAX_CONNECTIONS_PER_USER", "100000", 1);
    setenv("RELAY_QUEUE_MULTIPLIER", "100000", 1);
    assert_true(rl_config_apply_env(&c, err, sizeof err) < 0);
    assert_non_null(strstr(err, "queue_multiplier"));
    clear_relay_env();
    rl_config_free(&c);
}

/* tmpdir/name made absolute the way the loader does it (tmpdir may sit behind a symlink). */
static void real(const char *name, char *out)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    assert_non_null(realpath(p, out));
}

/* relay.node tls: paths against the config's directory (or absolute, or from ${VAR}), both or
   neither, files readable; RELAY_TLS_CERT / RELAY_TLS_KEY. The contents are the gateway's. */
static void test_tls_keys(void **state)
{
    (void)state;
    rl_config c;
    char err[512], cert[PATH_MAX], key[PATH_MAX], yaml[PATH_MAX * 2 + 1024];
    write_file("c.pem", "not checked here\n");
    write_file("adir/k.pem", "not checked here\n");
    real("c.pem", cert);
    real("adir/k.pem", key);

    assert_int_equal(load(HEAD P_REQ NODE("    tls:\n      cert: c.pem\n      key: adir/k.pem\n"),
                          &c, err, sizeof err), 0);
    assert_string_equal(c.tls_cert, cert);
    assert_string_equal(c.tls_key, key);
    rl_config_free(&c);

    snprintf(yaml, sizeof yaml, HEAD P_REQ NODE("    tls: {cert: \"%s\", key: \"${RL_T_KEY}\"}\n"),
             cert);
    setenv("RL_T_KEY", key, 1);
    assert_int_equal(load(yaml, &c, err, sizeof err), 0);
    unsetenv("RL_T_KEY");
    assert_string_equal(c.tls_cert, cert);
    assert_string_equal(c.tls_key, key);
    rl_config_free(&c);

    /* empty values (e.g. ${VAR:-}) mean plain, as for other strings */
    assert_int_equal(load(HEAD P_REQ NODE("    tls: {cert: \"\", key: \"\"}\n"), &c, err,
                          sizeof err), 0);
    assert_null(c.tls_cert);
    assert_null(c.tls_key);
    rl_config_free(&c);

    static const struct {
        const char *node, *reason;
    } bad[] = {
        {"    tls: {cert: c.pem, key: nope.pem}\n", "tls.key: "},
        {"    tls: {cert: c.pem, key: nope.pem}\n", "/nope.pem: No such file or directory"},
        {"    tls: {cert: missing/c.pem, key: adir/k.pem}\n", "tls.cert: "},
        {"    tls: {cert: c.pem, key: adir}\n", "adir: not a regular file"},
        {"    tls: {cert: c.pem}\n", "must be given together (only tls.cert"},
        {"    tls: {key: adir/k.pem}\n", "must be given together (only tls.key"},
        {"    tls: {cert: c.pem, key: \"\"}\n", "must be given together"},
        {"    tls: {cert: c.pem, key: adir/k.pem, ca: c.pem}\n", "unknown key 'ca' in tls"},
        {"    tls: [c.pem, adir/k.pem]\n", "tls must be a map"},
        {"    tls: {cert: [c.pem], key: adir/k.pem}\n", "tls.cert must be a single value"},
        {"    tls: {cert: c.pem, key: \"${RL_T_UNSET}\"}\n", "RL_T_UNSET is not defined"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(yaml, sizeof yaml, "%s%s", HEAD P_REQ NODE(""), bad[i].node);
        expect_error(yaml, "node", bad[i].reason);
    }
    if (geteuid() != 0) { /* root opens anything */
        write_file("locked.pem", "x\n");
        char p[PATH_MAX + 64];
        snprintf(p, sizeof p, "%s/locked.pem", tmpdir);
        assert_int_equal(chmod(p, 0), 0);
        expect_error(HEAD P_REQ NODE("    tls: {cert: c.pem, key: locked.pem}\n"), "node",
                     "locked.pem: Permission denied");
    }

    /* RELAY_TLS_*: paths as given (the working directory for relative ones), both or neither */
    clear_relay_env();
    assert_int_equal(load(HEAD P_REQ NODE(""), &c, err, sizeof err), 0);
    setenv("RELAY_TLS_CERT", cert, 1);
    setenv("RELAY_TLS_KEY", key, 1);
    assert_int_equal(rl_config_apply_env(&c, err, sizeof err), 0);
    assert_string_equal(c.tls_cert, cert);
    assert_string_equal(c.tls_key, key);
    setenv("RELAY_TLS_KEY", "/nonexistent/k.pem", 1);
    assert_true(rl_config_apply_env(&c, err, sizeof err) < 0);
    assert_non_null(strstr(err, "RELAY_TLS_KEY"));
    assert_non_null(strstr(err, "/nonexistent/k.pem: No such file"));
    assert_string_equal(c.tls_key, key); /* a refused value changes nothing */
    rl_config_free(&c);
    clear_relay_env();
    assert_int_equal(load(HEAD P_REQ NODE(""), &c, err, sizeof err), 0);
    setenv("RELAY_TLS_CERT", cert, 1);
    assert_true(rl_config_apply_env(&c, err, sizeof err) < 0);
    assert_non_null(strstr(err, "tls.cert and tls.key must be given together"));
    clear_relay_env();
    rl_config_free(&c);
}

static void test_set_listen(void **state)
{
    (void)state;
    rl_config c;
    char err[256];
    rl_config_defaults(&c);
    assert_int_equal(rl_config_set_listen(&c, "[::1]:9000", err, sizeof err), 0);
    assert_string_equal(c.listen_host, "::1");
    assert_int_equal(c.listen_port, 9000);
    assert_int_equal(rl_config_set_listen(&c, ":9001", err, sizeof err), 0);
    assert_string_equal(c.listen_host, "0.0.0.0");
    assert_int_equal(c.listen_port, 9001);
    assert_int_equal(rl_config_set_listen(&c, "localhost:1", err, sizeof err), 0);
    assert_int_equal(rl_config_set_listen(&c, "localhost:65535", err, sizeof err), 0);
    static const char *const bad[] = {"", "host", "host:", "host:abc", "host:0", "host:65536",
                                      "::1:80", "[::1]80", "[::1", "h:+80", "h:80 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        if (rl_config_set_listen(&c, bad[i], err, sizeof err) >= 0)
            fail_msg("accepted listen '%s'", bad[i]);
        assert_non_null(strstr(err, "listen"));
    }
    assert_string_equal(c.listen_host, "localhost"); /* a refused value changes nothing */
    assert_int_equal(c.listen_port, 65535);
    rl_config_free(&c);
}

static void test_durations(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } good[] = {
        {"150ms", 150}, {"2s", 2000}, {"1.5s", 1500}, {"1m", 60000}, {"1h30m", 5400000},
        {"7200s", 7200000}, {"7200", 7200000}, {"0", 0}, {"0s", 0}, {"1h", 3600000},
        {"2h45m30.5s", 9930500}, {"500us", 1}, {"1500000ns", 1}, {"0.25", 250}, {".5s", 500},
        {"1.s", 1000}, {"10\xc2\xb5s", 1}, {"1m0.001s", 60001}, {"100ms100ms", 200},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        uint64_t ms = 12345;
        if (rl_duration_parse(good[i].s, &ms) != 0 || ms != good[i].ms)
            fail_msg("'%s' -> %llu, want %llu", good[i].s, (unsigned long long)ms,
                     (unsigned long long)good[i].ms);
    }
    static const char *const bad[] = {
        "", "s", "ms", ".", "-1s", "+1s", "1x", "1 s", " 1s", "1s ", "soon", "1.5.5s", "1h-30m",
        "1s30", "30 ", "99999999999999999999s", "18446744073709551615h", "5000000000h", "1e3s", "0x10",
        "1d",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint64_t ms = 777;
        if (rl_duration_parse(bad[i], &ms) != -EINVAL)
            fail_msg("accepted duration '%s'", bad[i]);
        assert_int_equal(ms, 777);
    }
    uint64_t ms;
    assert_int_equal(rl_duration_parse(NULL, &ms), -EINVAL);
}

/* A failed load leaves c safe to free (ASan checks nothing leaks), and errors fit small buffers. */
static void test_failed_load_frees_and_truncates(void **state)
{
    (void)state;
    rl_config c;
    char err[24];
    const char *yaml = HEAD P_REQ PLUGIN("a", "a_", "p.lua") PLUGIN("b", "b_", "nope.lua");
    assert_true(load(yaml, &c, err, sizeof err) < 0);
    assert_int_equal(strlen(err), sizeof err - 1);
    rl_config_free(&c);
}

/* Every truncated prefix of a full config either loads or fails naming the file; never crashes. */
static void test_truncated_prefixes(void **state)
{
    (void)state;
    static const char full[] = HEAD P_REQ PARAM("queue_multiplier", "3")
        PLUGIN("p1", "p1_", "p.lua") "    modules: [json, time]\n"
        NODE("    listen: 127.0.0.1:9000\n    auth: {mode: jwt, secret: x}\n"
             "    allowed_origins: [\"http://a\"]\n    ping_interval: 1s\n");
    char buf[sizeof full];
    size_t ok = 0;
    for (size_t n = 0; n < sizeof full; n++) {
        rl_config c;
        char err[512];
        memcpy(buf, full, n);
        buf[n] = '\0';
        if (load(buf, &c, err, sizeof err) == 0)
            ok++;
        else if (strncmp(err, cfgpath, strlen(cfgpath)) != 0)
            fail_msg("prefix %zu: error '%s' does not name the file", n, err);
        rl_config_free(&c);
    }
    assert_true(ok > 0); /* at least the whole text loads */
}

int main(void)
{
    rl_log_set_level(RL_LOG_ERROR); /* the "scope not defined" warnings are expected here */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_spec_setup_loads),
        cmocka_unit_test(test_plugin_defaults_and_ignored_kinds),
        cmocka_unit_test(test_node_entry_all_keys),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_dependency_version),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_var_expansion),
        cmocka_unit_test(test_plugins_sorted_longest_prefix_first),
        cmocka_unit_test(test_env_overrides),
        cmocka_unit_test(test_tls_keys),
        cmocka_unit_test(test_set_listen),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_lua_entries_imports_env),
        cmocka_unit_test(test_failed_load_frees_and_truncates),
        cmocka_unit_test(test_truncated_prefixes),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
