/* The process module of the Lua plugin host (pid, send, inbox, events, spawn*, cancel,
 * terminate, monitor, link, registry) and the host helpers the prelude uses. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_envelope.h"
#include "rl_log.h"
#include "rl_lua_int.h"
#include "rl_map.h"
#include "rl_metrics.h"
#include "rl_security.h"

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

/* false, msg: the platform's answer of a refused or failed operation. */
static int refuse(lua_State *L, const char *msg)
{
    lua_pushboolean(L, 0);
    lua_pushstring(L, msg);
    return 2;
}

static const char *send_error(int rc)
{
    switch (rc) {
    case -EPERM: return "permission denied";
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
    const char *user = rl_owner_user(I->proc.owner);
    snprintf(out, n, "%s\x1f%s", user ? user : "", name);
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

/* process.id(): the platform's frame id; an instance is one frame here, so its pid. */
static int l_id(lua_State *L) { return l_pid(L); }

/* The message for one payload of process.send: ws.message writes a string as the frame itself
   and a table JSON-encoded; ws.close takes a reason string or {code=, reason=}; any other
   topic carries the payload JSON-encoded (nil as null). Encoded once, straight into the
   message. Pushes an error message and returns NULL when the value cannot be sent. */
static rl_msg *make_msg(lua_State *L, rl_topic t, const char *name, size_t nlen, int idx)
{
    if (t == RL_T_WS_CLOSE) {
        rl_msg *m = rl_msg_new(RL_T_WS_CLOSE);
        if (!m)
            luaL_error(L, "not enough memory");
        m->ctl.close.code = 1000;
        const char *reason = NULL;
        if (lua_type(L, idx) == LUA_TSTRING) {
            reason = lua_tostring(L, idx);
        } else if (lua_type(L, idx) == LUA_TTABLE) {
            if (lua_getfield(L, idx, "code") == LUA_TNUMBER)
                m->ctl.close.code = (int)lua_tointeger(L, -1);
            if (lua_getfield(L, idx, "reason") == LUA_TSTRING)
                reason = lua_tostring(L, -1);
            lua_pop(L, 2); /* reason stays valid: the table still holds the string */
        }
        snprintf(m->ctl.close.reason, sizeof m->ctl.close.reason, "%s", reason ? reason : "");
        return m;
    }
    const char *data;
    size_t len;
    int raw = 0;
    if (t == RL_T_WS_MESSAGE && lua_type(L, idx) == LUA_TSTRING) {
        data = lua_tolstring(L, idx, &len);
        if (!rl_env_utf8_valid(data, len)) { /* it goes out as a text frame */
            lua_pushliteral(L, "ws.message: the string is not valid UTF-8");
            return NULL;
        }
        raw = 1;
    } else if (!rl_lua_json_encode_scratch(L, idx, &data, &len)) {
        return NULL;
    }
    rl_msg *m = rl_msg_new_data(t, name, nlen, data, len);
    if (!m)
        luaL_error(L, "not enough memory");
    if (raw)
        m->flags |= RL_MSG_RAW;
    return m;
}

/* A deliverer for send_each: sends m to `to`, NULL on success, else the reason (m stays the
   caller's). */
typedef const char *(*deliver_fn)(lua_State *L, rl_lua_inst *I, rl_msg *m, const char *to);

/* process.send("user.<id>", ...): the sender's scope must allow process.send on user.<id>
   for another user. */
static const char *deliver_user(lua_State *L, rl_lua_inst *I, rl_msg *m, const char *user)
{
    int rc = rl_lua_send_user(L, I, user, strlen(user), m);
    if (rc == 0)
        return NULL;
    return rc == -ENOENT ? "user offline" : rc == -EINVAL ? "invalid user id" : send_error(rc);
}

static const char *deliver_pid(lua_State *L, rl_lua_inst *I, rl_msg *m, const char *to)
{
    (void)L;
    int rc = rl_send(&I->proc, to, m);
    return rc == 0 ? NULL : send_error(rc);
}

/* One message per payload at 3.. (none = null), each charged and delivered; true, or false and
   the reason of the first that fails. */
static int send_each(lua_State *L, rl_lua_inst *I, rl_topic t, const char *topic, size_t nlen,
                     deliver_fn deliver, const char *to)
{
    int n = lua_gettop(L);
    if (n < 3) {
        lua_settop(L, 3);
        n = 3;
    }
    for (int i = 3; i <= n; i++) {
        rl_lua_charge(L, RL_LUA_SEND_COST); /* the encode and the send are C work */
        rl_msg *m = make_msg(L, t, topic, nlen, i);
        if (!m) {
            lua_pushboolean(L, 0);
            lua_insert(L, -2);
            return 2;
        }
        const char *why = deliver(L, I, m, to);
        if (why) {
            rl_msg_free(m);
            return refuse(L, why);
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* process.send(dest, topic, payload...): one message per payload (none = null). Returns true,
   or false and the reason (permission denied, process not found, mailbox full, ...). */
static int l_send(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *dest = luaL_checkstring(L, 1);
    size_t nlen;
    const char *topic = luaL_checklstring(L, 2, &nlen);
    if (topic[0] == '@')
        return refuse(L, "cannot send to @ topics");
    rl_topic t = rl_topic_find(topic, nlen);
    if ((t != RL_T_APP && t != RL_T_WS_MESSAGE && t != RL_T_WS_CLOSE) ||
        strncmp(topic, "pid.", 4) == 0) {
        /* internal topics carry the runtime's own structs; no plugin may forge one */
        rl_metric_inc(RL_M_MSGS_REFUSED);
        rl_warn("lua", "%s: refused to send %s to %s: permission denied", I->proc.pid, topic, dest);
        return refuse(L, "permission denied");
    }
    if (strncmp(dest, "user.", 5) == 0) /* a user's hub, wherever it lives (rl_security.h) */
        return send_each(L, I, t, topic, nlen, deliver_user, dest + 5);
    char to[RL_PID_MAX]; /* a copy: resolve's answer may not outlive the sends */
    const char *r = resolve(I, dest);
    size_t rl = strnlen(r, sizeof to - 1);
    memcpy(to, r, rl);
    to[rl] = '\0';
    return send_each(L, I, t, topic, nlen, deliver_pid, to);
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
    double ns = CANCEL_DEFAULT_MS * 1e6;
    const char *reason = NULL;
    if (lua_type(L, 2) == LUA_TNUMBER) {
        ns = lua_tonumber(L, 2);
    } else if (lua_type(L, 2) == LUA_TSTRING &&
               rl_lua_duration_parse(lua_tostring(L, 2), &ns) < 0) {
        ns = CANCEL_DEFAULT_MS * 1e6; /* a reason string (the other reading of the original API) */
        reason = lua_tostring(L, 2);
    }
    double ms = ns > 0 ? ceil(ns / 1e6) : 0;
    rl_lua_g.cancel_from = I->proc.pid; /* the target's CANCEL event says who and why */
    rl_lua_g.cancel_reason = reason;
    int rc = rl_cancel(&I->proc, resolve(I, dest), ms < 1e15 ? (uint64_t)ms : (uint64_t)1e15);
    rl_lua_g.cancel_from = rl_lua_g.cancel_reason = NULL;
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
    if (T && !rl_may_control(&I->proc, &T->proc))
        return fail(L, send_error(-EPERM));
    if (T) {
        rl_lua_kill(T, "terminated");
        if (T == I)
            return luaL_error(L, "terminated");
    } else {
        int rc = rl_cancel(&I->proc, dest, 0);
        if (rc < 0)
            return fail(L, send_error(rc));
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_monitor(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    int u = rl_lua_unmon_find(I, pid);
    if (u >= 0) { /* monitored again: its report counts once more */
        rl_lua_unmon_remove(I, u);
        if (rl_proc_find(pid)) {
            lua_pushboolean(L, 1);
            return 1;
        }
    }
    int rc = rl_monitor(&I->proc, pid);
    if (rc < 0)
        return fail(L, send_error(rc));
    lua_pushboolean(L, 1);
    return 1;
}

/* process.unmonitor(dest): no EXIT event for dest any more (until monitored again). */
static int l_unmonitor(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    rl_proc *T = rl_proc_find(pid);
    if (T && !rl_may_control(&I->proc, T))
        return fail(L, send_error(-EPERM));
    if (rl_lua_unmon_find(I, pid) >= 0 || !T) { /* a gone process reports no more */
        lua_pushboolean(L, 1);
        return 1;
    }
    rl_lua_aux *A = rl_lua_aux_of(I);
    uint32_t n = A && A->unmon ? A->unmon->n : 0;
    if (n >= RL_LUA_UNMON_MAX)
        return fail(L, "too many unmonitored processes");
    rl_lua_unmon *nu = A ? realloc(A->unmon, sizeof *nu + (n + 1) * sizeof nu->pid[0]) : NULL;
    if (!nu)
        return luaL_error(L, "not enough memory");
    A->unmon = nu;
    nu->n = n + 1;
    snprintf(nu->pid[n], RL_PID_MAX, "%s", pid);
    lua_pushboolean(L, 1);
    return 1;
}

static int monitors(const rl_lua_inst *I, const char *pid);
static int unmon_add(rl_lua_inst *I, const char *pid);

static int is_linked_pid(const rl_lua_inst *I, const char *pid)
{
    for (uint32_t i = 0; I->aux && i < I->aux->nlinks; i++)
        if (strcmp(I->aux->links[i], pid) == 0)
            return 1;
    return 0;
}

static int add_link(rl_lua_inst *I, const char *pid)
{
    rl_lua_aux *A = rl_lua_aux_of(I);
    char **nl = A ? realloc(A->links, (A->nlinks + 1) * sizeof *nl) : NULL;
    if (!nl)
        return -ENOMEM;
    A->links = nl;
    if (!(nl[A->nlinks] = strdup(pid)))
        return -ENOMEM;
    A->nlinks++;
    return 0;
}

/* Links are one-way here: the linking process gets LINK_DOWN (and EXIT) when the other one
   fails, as with trap_links; it is not killed. */
static int l_link(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    rl_proc *T = rl_proc_find(pid);
    if (T && !rl_may_control(&I->proc, T))
        return fail(L, send_error(-EPERM));
    if (is_linked_pid(I, pid)) {
        lua_pushboolean(L, 1);
        return 1;
    }
    /* a link alone gives LINK_DOWN, not EXIT: unless I monitors pid already, its exit report
       is taken for the link only */
    int was = monitors(I, pid);
    int rc = add_link(I, pid);
    if (rc == 0 && !was) /* (a process already gone reports "noproc" at once: LINK_DOWN) */
        rc = unmon_add(I, pid) == 0 ? rl_monitor(&I->proc, pid) : -ENOMEM;
    if (rc < 0)
        return fail(L, send_error(rc));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_unlink(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *pid = resolve(I, luaL_checkstring(L, 1));
    rl_lua_aux *A = I->aux;
    for (uint32_t i = 0; A && i < A->nlinks; i++) {
        if (strcmp(A->links[i], pid) == 0) {
            free(A->links[i]);
            A->links[i] = A->links[--A->nlinks];
            break;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Whether I already monitors the process pid (by process.monitor or a monitored spawn). */
static int monitors(const rl_lua_inst *I, const char *pid)
{
    rl_proc *T = rl_proc_find(pid);
    for (size_t i = 0; T && i < T->nmonitors; i++)
        if (T->monitors[i] == I->proc.serial)
            return 1;
    return 0;
}

/* Adds pid to I's unmonitored set (no EXIT event for it). Returns 0 or -ENOMEM / -ENOSPC. */
static int unmon_add(rl_lua_inst *I, const char *pid)
{
    if (rl_lua_unmon_find(I, pid) >= 0)
        return 0;
    rl_lua_aux *A = rl_lua_aux_of(I);
    uint32_t n = A && A->unmon ? A->unmon->n : 0;
    if (n >= RL_LUA_UNMON_MAX)
        return -ENOSPC;
    rl_lua_unmon *nu = A ? realloc(A->unmon, sizeof *nu + (n + 1) * sizeof nu->pid[0]) : NULL;
    if (!nu)
        return -ENOMEM;
    A->unmon = nu;
    nu->n = n + 1;
    snprintf(nu->pid[n], RL_PID_MAX, "%s", pid);
    return 0;
}

#define SPAWN_ARGS_MAX 64 /* run() arguments of one spawn */

/* Pushes the nargs values from index from as a JSON array (nil as null) and returns 1, or
   pushes nil and "<what> argument N: <why>" and returns 0. */
static int push_args_json(lua_State *L, int from, int nargs, const char *what)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b); /* the buffer sits on the stack above the arguments */
    luaL_addchar(&b, '[');
    for (int i = 0; i < nargs; i++) {
        int idx = from + i;
        if (i)
            luaL_addchar(&b, ',');
        if (lua_isnil(L, idx)) {
            luaL_addstring(&b, "null");
            continue;
        }
        if (!rl_lua_json_encode(L, idx)) {
            lua_pushfstring(L, "%s argument %d: %s", what, i + 1, lua_tostring(L, -1));
            lua_pushnil(L);
            lua_insert(L, -2);
            return 0;
        }
        luaL_addvalue(&b);
    }
    luaL_addchar(&b, ']');
    luaL_pushresult(&b);
    return 1;
}

/* process.spawn*(id, host, ...) with the arguments from index `first` (id, host, args...):
   every argument reaches the child's run(...) (as JSON: what json.encode takes, nil as nil).
   id names a relay plugin or a plain process.lua entry. ctx: with_context values (JSON) or
   NULL. Pushes the pid, or nil and the reason. */
int rl_lua_proc_spawn(lua_State *L, int first, int monitored, int linked, const char *ctx)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *id = luaL_checkstring(L, first);
    const rl_plugin_def *def = rl_lua_find_def(id);
    if (!def || (def->lua_kind != RL_LUA_ENTRY_PLUGIN && def->lua_kind != RL_LUA_ENTRY_PROCESS))
        return fail(L, "unknown process id");
    if ((I->aux ? I->aux->nchildren : 0) >= rl_lua_g.cfg->plugin_max_children) {
        rl_lua_refused(I, RL_LIMIT_CHILDREN);
        lua_pushnil(L);
        lua_pushfstring(L, "too many children (plugin_max_children is %d)",
                        (int)rl_lua_g.cfg->plugin_max_children);
        return 2;
    }
    if (!rl_lua_user_room(I, RL_LIMIT_USER_PROCESSES)) { /* the user's whole tree */
        lua_pushnil(L);
        lua_pushfstring(L, "too many processes for the user (plugin_user_max_processes is %d)",
                        (int)rl_lua_g.cfg->plugin_user_max_processes);
        return 2;
    }
    int top = lua_gettop(L), nargs = top > first + 1 ? top - (first + 1) : 0;
    if (nargs > SPAWN_ARGS_MAX)
        return fail(L, "too many spawn arguments (at most 64)");
    if (!push_args_json(L, first + 2, nargs, "spawn"))
        return 2;
    const char *args = lua_tostring(L, -1);
    char pid[RL_PID_MAX], err[256];
    /* a child acts for the same user (its owner is the parent's); linked-only children are
       monitored by the core too (LINK_DOWN comes from the exit report) but give no EXIT */
    int rc = rl_lua_spawn_child_n(L, I, def, args, nargs, ctx, monitored || linked, pid, err,
                                  sizeof err);
    if (rc < 0)
        return fail(L, err);
    if (rl_lua_child_add(I, pid) < 0 || (linked && add_link(I, pid) < 0) ||
        (linked && !monitored && unmon_add(I, pid) < 0)) {
        rl_lua_inst *C = rl_lua_inst_of(pid);
        if (C) /* a child nobody would end: not started at all */
            rl_lua_kill(C, "not enough memory");
        return luaL_error(L, "not enough memory");
    }
    lua_pushstring(L, pid);
    return 1;
}

static int do_spawn(lua_State *L, int monitored, int linked)
{
    return rl_lua_proc_spawn(L, 1, monitored, linked, NULL);
}

static int l_spawn(lua_State *L) { return do_spawn(L, 0, 0); }
static int l_spawn_monitored(lua_State *L) { return do_spawn(L, 1, 0); }
static int l_spawn_linked(lua_State *L) { return do_spawn(L, 0, 1); }
static int l_spawn_linked_monitored(lua_State *L) { return do_spawn(L, 1, 1); }

/* process.set_options({trap_links = bool, upgradable = bool}): trap_links is always on;
   upgradable (kept per instance) opts into OUTDATED events after a reload. */
static int l_set_options(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lua_getfield(L, 1, "upgradable") != LUA_TNIL)
        I->upgradable = lua_toboolean(L, -1) ? 1 : 0;
    lua_pushboolean(L, 1);
    return 1;
}

static int l_get_options(lua_State *L)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "trap_links");
    lua_pushboolean(L, rl_lua_current(L)->upgradable);
    lua_setfield(L, -2, "upgradable");
    return 1;
}

/* process.upgrade(id_or_empty, ...): the instance's current run ends (no EXIT, no restart) and
   the current code of id ("" or nil: its own entry) runs run(...) with these arguments (as
   JSON, as spawn's) in the same process. Does not return; nil, err when it cannot upgrade. */
static int l_upgrade(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const rl_plugin_def *def = I->def;
    if (!lua_isnoneornil(L, 1) && !(lua_type(L, 1) == LUA_TSTRING && lua_rawlen(L, 1) == 0)) {
        def = rl_lua_find_def(luaL_checkstring(L, 1));
        if (!def || (def->lua_kind != RL_LUA_ENTRY_PLUGIN && def->lua_kind != RL_LUA_ENTRY_PROCESS))
            return fail(L, "unknown process id");
    }
    if (rl_lua_running(L) != I || L != I->co)
        return fail(L, "process.upgrade runs from the process's own code, not a coroutine");
    if (I->aux && I->aux->deadline)
        return fail(L, "the process is being cancelled");
    int nargs = lua_gettop(L) > 1 ? lua_gettop(L) - 1 : 0;
    if (nargs > SPAWN_ARGS_MAX)
        return fail(L, "too many upgrade arguments (at most 64)");
    if (!push_args_json(L, 2, nargs, "upgrade"))
        return 2;
    char *args = strdup(lua_tostring(L, -1));
    if (!args)
        return luaL_error(L, "not enough memory");
    rl_lua_upgrade_request(I, def, args, nargs);
    return luaL_error(L, "%s", rl_lua_doomed(I) ? rl_lua_doomed(I) : "upgrading");
}

/* ---- registry -------------------------------------------------------------------------- */

static int l_reg_register(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *name = luaL_checkstring(L, 1);
    const char *pid = luaL_optstring(L, 2, I->proc.pid);
    if (strncmp(name, "user.", 5) == 0) /* the users' hubs' names (process.send to user.<id>) */
        return fail(L, "name reserved: user.* names the users' hubs");
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
    size_t nlen;
    const char *name = luaL_checklstring(L, 1, &nlen);
    /* A user's hub is named user.<id> on every node (the platform's registry name): the name
       itself is its address, resolved at each send to wherever the hub lives then (a pid would
       go stale with a failover); whether a send there is allowed is the policy's answer. */
    if (strncmp(name, "user.", 5) == 0 && nlen > 5 && nlen - 5 <= RL_SEC_USER_MAX &&
        memchr(name, '\0', nlen) == NULL) {
        lua_pushvalue(L, 1);
        return 1;
    }
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
        {"id", l_id},
        {"send", l_send},
        {"inbox", l_inbox},
        {"events", l_events},
        {"cancel", l_cancel},
        {"terminate", l_terminate},
        {"monitor", l_monitor},
        {"unmonitor", l_unmonitor},
        {"link", l_link},
        {"unlink", l_unlink},
        {"spawn", l_spawn},
        {"spawn_monitored", l_spawn_monitored},
        {"spawn_linked", l_spawn_linked},
        {"spawn_linked_monitored", l_spawn_linked_monitored},
        {"set_options", l_set_options},
        {"get_options", l_get_options},
        {"upgrade", l_upgrade},
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

/* host.log(level, name, msg, fields): one line, the logger's fields as fields of the line
   ({"msg":...,"plugin":"app.name","pid":...,"order":42}); numbers that are integers stay
   numbers, anything else is written as its string. A field named like one of the line's own
   keys is written as "field.<key>"; at most RL_LUA_LOG_FIELDS, the rest dropped. */
#define RL_LUA_LOG_FIELDS 32

static int reserved_key(const char *k)
{
    static const char *const own[] = {"ts", "level", "mod", "msg", "plugin", "pid", NULL};
    for (size_t i = 0; own[i]; i++)
        if (strcmp(k, own[i]) == 0)
            return 1;
    return 0;
}

static int h_log(lua_State *L)
{
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    int lvl = luaL_checkoption(L, 1, "info", levels);
    if ((rl_log_level)lvl < rl_log_get_level())
        return 0;
    const char *name = luaL_optstring(L, 2, "plugin");
    const char *msg = luaL_optstring(L, 3, "");
    rl_lua_inst *I = rl_lua_g.current ? rl_lua_current(L) : NULL;
    rl_log_field f[2 + RL_LUA_LOG_FIELDS];
    size_t nf = 0;
    f[nf++] = (rl_log_field){"plugin", name, 0};
    f[nf++] = (rl_log_field){"pid", I ? I->proc.pid : "-", 0};
    lua_settop(L, 4);
    lua_newtable(L); /* 5: keeps the strings made here alive until the line is written */
    int held = 0;
    if (lua_type(L, 4) == LUA_TTABLE) {
        lua_pushnil(L);
        while (nf < sizeof f / sizeof f[0] && lua_next(L, 4)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 1);
                continue;
            }
            const char *k = lua_tostring(L, -2); /* the table keeps its keys alive */
            if (reserved_key(k)) {
                lua_pushfstring(L, "field.%s", k);
                k = lua_tostring(L, -1);
                lua_rawseti(L, 5, ++held);
            }
            if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1)) {
                f[nf++] = (rl_log_field){k, NULL, (long long)lua_tointeger(L, -1)};
            } else {
                const char *v = luaL_tolstring(L, -1, NULL); /* pushes the string */
                lua_rawseti(L, 5, ++held);
                f[nf++] = (rl_log_field){k, v, 0};
            }
            lua_pop(L, 1);
        }
    }
    rl_log_fields((rl_log_level)lvl, "plugin", f, nf, "%s", msg);
    return 0;
}

static int h_env(lua_State *L) { return push_ref(L, rl_lua_current(L)->env_ref); }

static int h_actor(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *user = rl_owner_user(I->proc.owner);
    if (!user)
        return 0;
    lua_pushstring(L, user);
    rl_lua_push_user_meta(L, I);
    return 2;
}

/* host.doomed(): why the running instance must end, or nothing (the prelude's catching
   functions raise it again). */
static int h_doomed(lua_State *L)
{
    const char *why = rl_lua_doomed(rl_lua_g.current);
    if (!why)
        return 0;
    lua_pushstring(L, why);
    return 1;
}

void rl_lua_host_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"log", h_log},
        {"doomed", h_doomed},
        {"env", h_env},
        {"actor", h_actor},
        {NULL, NULL},
    };
    luaL_newlib(L, fns);
}
