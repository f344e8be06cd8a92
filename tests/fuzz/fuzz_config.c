/* libFuzzer target for rl_config: rl_config_load on arbitrary YAML written to one temp file. */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"
#include "rl_config.h"
#include "rl_log.h"

/* DIR/cfg/relay.yaml is the file loaded. DIR/plugins/lua/{session,echo}.lua and DIR/cfg/p.lua
   exist, so deploy/dev.yaml and the small seeds load and the fuzzer reaches the code after the
   sources are resolved; any other source does not exist and must fail cleanly. */
static char dir[PATH_MAX];
static char cfg_path[PATH_MAX + 32];

static void put(const char *rel, const char *text)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    FILE *f = fopen(p, "w");
    FUZZ_CHECK(f != NULL);
    FUZZ_CHECK(fputs(text, f) >= 0);
    FUZZ_CHECK(fclose(f) == 0);
}

static void rm(const char *rel)
{
    char p[PATH_MAX + 64];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    remove(p);
}

static void cleanup(void)
{
    static const char *const files[] = {"cfg/relay.yaml", "cfg/p.lua", "plugins/lua/session.lua",
                                        "plugins/lua/echo.lua", "plugins/lua", "plugins", "cfg",
                                        ""};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        rm(files[i]);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rl_log_set_level(RL_LOG_ERROR); /* the loader warns about unchecked references */
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/relay-fuzz-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(dir) != NULL);
    char p[PATH_MAX + 64];
    static const char *const dirs[] = {"cfg", "plugins", "plugins/lua"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, dirs[i]);
        FUZZ_CHECK(mkdir(p, 0700) == 0);
    }
    put("cfg/p.lua", "return function() end\n");
    put("plugins/lua/session.lua", "return function() end\n");
    put("plugins/lua/echo.lua", "return function() end\n");
    snprintf(cfg_path, sizeof cfg_path, "%s/cfg/relay.yaml", dir);
    atexit(cleanup);
    return 0;
}

/* What a successful load promises its callers (node/, plugins/). */
static void check_loaded(const rl_config *c)
{
    FUZZ_CHECK(c->path && strcmp(c->path, cfg_path) == 0);
    FUZZ_CHECK(c->namespace_ && c->namespace_[0]);
    FUZZ_CHECK(c->application_host && c->user_security_scope);
    FUZZ_CHECK(c->listen_host && c->ws_path && c->node_id && c->redis_prefix);
    FUZZ_CHECK(c->nplugins == 0 || c->plugins);
    for (size_t i = 0; i < c->nplugins; i++) {
        const rl_plugin_def *p = &c->plugins[i];
        FUZZ_CHECK(p->name && p->id && p->prefix && p->prefix[0] && p->source_path && p->method);
        FUZZ_CHECK(p->nmodules == 0 || p->modules);
        for (size_t k = 0; k < p->nmodules; k++)
            FUZZ_CHECK(p->modules[k] != NULL);
        if (i > 0) /* longest prefix first */
            FUZZ_CHECK(strlen(c->plugins[i - 1].prefix) >= strlen(p->prefix));
        for (size_t k = 0; k < i; k++)
            FUZZ_CHECK(strcmp(c->plugins[k].prefix, p->prefix) != 0);
    }
    FUZZ_CHECK(c->norigins == 0 || c->allowed_origins);
    for (size_t k = 0; k < c->norigins; k++)
        FUZZ_CHECK(c->allowed_origins[k] != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FILE *f = fopen(cfg_path, "wb");
    FUZZ_CHECK(f != NULL);
    FUZZ_CHECK(fwrite(data, 1, size, f) == size);
    FUZZ_CHECK(fclose(f) == 0);

    rl_config c;
    char err[1024];
    err[0] = '\0';
    rl_config_defaults(&c);
    int rc = rl_config_load(&c, cfg_path, err, sizeof err);
    if (rc < 0) /* every failure says which file, and why */
        FUZZ_CHECK(strncmp(err, cfg_path, strlen(cfg_path)) == 0 && err[strlen(cfg_path)] == ':');
    else
        check_loaded(&c);
    rl_config_free(&c);
    return 0;
}
