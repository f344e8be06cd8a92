/* The process module of the Lua plugin host (pid, send, inbox, events, spawn*, cancel,
 * terminate, monitor, link, registry) and the host helpers the prelude uses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_log.h"
#include "rl_lua_int.h"
#include "rl_map.h"

#define CANCEL_DEFAULT_MS 10000

/* process.registry: names per user ("<user>\x1f<name>" -> entry), released when the process
   that registered them exits. */
typedef struct name_entry {
    char pid[RL_PID_MAX];
    char owner[RL_PID_MAX];
} name_entry;

static rl_map names;
static int names_ready;

static int fail(lua_State *L, const char *msg)
{
    lua_pushnil(L);
    lua_pushstring(L, msg);
    return 2;
}

static const char *send_error(int rc)
{
    switch (rc) {
    case -EINVAL: return "invalid pid";
    case -ENOENT: return "process not found";
    case -EAGAIN: return "mailbox full";
    case -ENOMEM: return "not enough memory";
    case -EHOSTUNREACH: return "node unreachable";
    default: return "send failed";
    }
}

static void name_key(char *out, size_t n, const rl_lua_inst *I, const char *name)
{
    snprintf(out, n, "%s\x1f%s", I->user_id ? I->user_id : "", name);
}

/* The pid a name or pid string designates for I (a registered name wins). */
static const char *resolve(const rl_lua_inst *I, const char *dest)
{
    if (!names_ready)
        return dest;
    char key[512];
    name_key(key, sizeof key, I, dest);
    name_entry *e = rl_map_get(&names, key);
    return e ? e->pid : dest;
}

static int l_pid(lua_State *L)
{
    lua_pushstring(L, rl_lua_current(L)->proc.pid);
    return 1;
}

/* process.send(dest, topic, payload...): one message per payload (none = null). A payload is
   JSON-encoded: a Lua string becomes a JSON string, which a connection writes as the frame. */
static int l_send(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *dest = luaL_checkstring(L, 1);
    const char *topic = luaL_checkstring(L, 2);
    if (topic[0] == '@')
        return fail(L, "cannot send to @ topics");
    if (strncmp(topic, "pid.", 4) == 0)
        return fail(L, "cannot send to pid.* topics (reserved for the runtime)");
    char to[RL_PID_MAX];
    snprintf(to, sizeof to, "%s", resolve(I, dest));
    int n = lua_gettop(L);
    if (n < 3) {
        lua_settop(L, 3);
        n = 3;
    }
    for (int i = 3; i <= n; i++) {
        if (!rl_lua_json_encode(L, i)) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int rc = rl_send(I->proc.pid, to, topic, s, len);
        lua_pop(L, 1);
        if (rc < 0)
            return fail(L, send_error(rc));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int push_ref(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    return 1;
}

static int l_inbox(lua_State *L) { return push_ref(L, rl_lua_current(L)->inbox_ref); }
static int l_events(lua_State *L) { return push_ref(L, rl_lua_current(L)->events_ref); }

static int l_cancel(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *dest = luaL_checkstring(L, 1);
    double ms = CANCEL_DEFAULT_MS;
    if (lua_type(L, 2) == LUA_TNUMBER)
        ms = lua_tonumber(L, 2);
    else if (lua_type(L, 2) == LUA_TSTRING && rl_lua_duration_parse(lua_tostring(L, 2), &ms) < 0)
        ms = CANCEL_DEFAULT_MS; /* a reason string (the other reading of the original API) */
    int rc = rl_cancel(resolve(I, dest), ms > 0 ? (uint64_t)ms : 0);
    if (rc < 0)
        return fail(L, send_error(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_terminate(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *dest = resolve(I, luaL_checkstring(L, 1));
    rl_lua_inst *T = rl_lua_inst_of(dest);
    if (T) {
        rl_lua_kill(T, "terminated");
        if (T == I)
            return luaL_error(L, "terminated");
    } else {
        int rc = rl_cancel(dest, 0);
        if (rc < 0)
            return fail(L, send_error(rc));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_monitor(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    int rc = rl_monitor(I->proc.pid, resolve(I, luaL_checkstring(L, 1)));
    if (rc < 0)
        return fail(L, send_error(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int add_link(rl_lua_inst *I, const char *pid)
{
    char **nl = realloc(I->links, (I->nlinks + 1) * sizeof *nl);
    if (!nl)
        return -ENOMEM;
    I->links = nl;
    if (!(nl[I->nlinks] = strdup(pid)))
        return -ENOMEM;
    I->nlinks++;
    return 0;
}

/* Links are one-way here: the linking process gets LINK_DOWN (and EXIT) when the other one
   fails, as with trap_links; it is not killed. */
static int l_link(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    int rc = add_link(I, pid);
    if (rc == 0)
        rc = rl_monitor(I->proc.pid, pid);
    if (rc < 0)
        return fail(L, send_error(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_unlink(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    for (size_t i = 0; i < I->nlinks; i++) {
        if (strcmp(I->links[i], pid) == 0) {
            free(I->links[i]);
            I->links[i] = I->links[--I->nlinks];
            break;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int do_spawn(lua_State *L, int monitored, int linked)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *id = luaL_checkstring(L, 1);
    const rl_plugin_def *def = rl_lua_find_def(id);
    if (!def)
        return fail(L, "unknown process id");
    const char *args = "{}";
    if (!lua_isnoneornil(L, 3)) {
        if (!rl_lua_json_encode(L, 3)) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        args = lua_tostring(L, -1);
    }
    char pid[RL_PID_MAX], err[256];
    int rc = rl_lua_spawn_from(L, def, args, monitored || linked ? I->proc.pid : NULL, pid, err,
                               sizeof err);
    if (rc < 0)
        return fail(L, err);
    rl_lua_inst *C = rl_lua_inst_of(pid);
    if (C && !C->user_id && I->user_id) /* a child acts for the same user */
        C->user_id = strdup(I->user_id);
    if (linked && add_link(I, pid) < 0)
        return luaL_error(L, "not enough memory");
    lua_pushstring(L, pid);
    return 1;
}

static int l_spawn(lua_State *L) { return do_spawn(L, 0, 0); }
static int l_spawn_monitored(lua_State *L) { return do_spawn(L, 1, 0); }
static int l_spawn_linked(lua_State *L) { return do_spawn(L, 0, 1); }
static int l_spawn_linked_monitored(lua_State *L) { return do_spawn(L, 1, 1); }

static int l_set_options(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE); /* trap_links is always on; upgrades do not exist */
    lua_pushboolean(L, 1);
    return 1;
}

static int l_get_options(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "trap_links");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "upgradable");
    return 1;
}

/* ---- registry -------------------------------------------------------------------------- */

static int l_reg_register(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *name = luaL_checkstring(L, 1);
    const char *pid = luaL_optstring(L, 2, I->proc.pid);
    if (!names_ready) {
        rl_map_init(&names);
        names_ready = 1;
    }
    char key[512];
    name_key(key, sizeof key, I, name);
    name_entry *e = rl_map_get(&names, key);
    if (e && strcmp(e->owner, I->proc.pid) != 0 && rl_proc_find(e->owner))
        return fail(L, "name already registered");
    if (!e) {
        if (!(e = calloc(1, sizeof *e)) || rl_map_set(&names, key, e) < 0) {
            free(e);
            return luaL_error(L, "not enough memory");
        }
    }
    snprintf(e->pid, sizeof e->pid, "%s", pid);
    snprintf(e->owner, sizeof e->owner, "%s", I->proc.pid);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_reg_lookup(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *name = luaL_checkstring(L, 1);
    char key[512];
    name_key(key, sizeof key, I, name);
    name_entry *e = names_ready ? rl_map_get(&names, key) : NULL;
    if (!e)
        return fail(L, "not found");
    lua_pushstring(L, e->pid);
    return 1;
}

static int l_reg_unregister(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *name = luaL_checkstring(L, 1);
    char key[512];
    name_key(key, sizeof key, I, name);
    free(names_ready ? rl_map_del(&names, key) : NULL);
    lua_pushboolean(L, 1);
    return 1;
}

void rl_lua_names_release(const char *pid)
{
    if (!names_ready || names.len == 0)
        return;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&names, &it, &k, &v);) {
        name_entry *e = v;
        if (strcmp(e->owner, pid) == 0)
            free(rl_map_del(&names, k));
    }
}

void rl_lua_names_close(void)
{
    if (!names_ready)
        return;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&names, &it, &k, &v);)
        free(v);
    rl_map_close(&names);
    names_ready = 0;
}

void rl_lua_proc_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"pid", l_pid},
        {"send", l_send},
        {"inbox", l_inbox},
        {"events", l_events},
        {"cancel", l_cancel},
        {"terminate", l_terminate},
        {"monitor", l_monitor},
        {"link", l_link},
        {"unlink", l_unlink},
        {"spawn", l_spawn},
        {"spawn_monitored", l_spawn_monitored},
        {"spawn_linked", l_spawn_linked},
        {"spawn_linked_monitored", l_spawn_linked_monitored},
        {"set_options", l_set_options},
        {"get_options", l_get_options},
        {NULL, NULL},
    };
    static const luaL_Reg reg[] = {
        {"register", l_reg_register},
        {"lookup", l_reg_lookup},
        {"unregister", l_reg_unregister},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
    luaL_newlib(L, reg);
    lua_setfield(L, -2, "registry");
}

/* ---- host helpers for the prelude ------------------------------------------------------ */

/* host.log(level, name, msg, fields) */
static int h_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int lvl = luaL_checkoption(L, 1, "info", levels);
    if ((rl_log_level)lvl < rl_log_get_level())
        return 0;
    const char *name = luaL_optstring(L, 2, "plugin");
    const char *msg = luaL_optstring(L, 3, "");
    const char *fields = "";
    if (lua_type(L, 4) == LUA_TTABLE) {
        if (rl_lua_json_encode(L, 4))
            fields = lua_tostring(L, -1);
        else
            fields = "{}";
    }
    rl_lua_inst *I = rl_lua_g.current;
    rl_log((rl_log_level)lvl, "plugin", "%s [%s %s]%s%s", msg, name,
           I ? I->proc.pid : "-", fields[0] ? " " : "", fields);
    return 0;
}

static int h_env(lua_State *L) { return push_ref(L, rl_lua_current(L)->env_ref); }

static int h_actor(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    if (!I->user_id)
        return 0;
    lua_pushstring(L, I->user_id);
    if (!I->user_meta || !rl_lua_json_decode(L, I->user_meta, strlen(I->user_meta))) {
        lua_settop(L, 1);
        lua_newtable(L);
    }
    return 2;
}

static int h_decode_args(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (!rl_lua_json_decode(L, s, len))
        return luaL_error(L, "bad spawn arguments: %s", lua_tostring(L, -1));
    return 1;
}

void rl_lua_host_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"log", h_log},
        {"env", h_env},
        {"actor", h_actor},
        {"decode_args", h_decode_args},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
}
