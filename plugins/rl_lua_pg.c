/* The pg module of the Lua plugin host: the platform's process groups (core/rl_pg.h).
 * pg.open(scope_id) gives a scope handle with join/leave, get_members/get_local_members,
 * which_groups/which_local_groups, broadcast/broadcast_local and release. Every call is checked
 * against the user scope's policies (pg.open on the scope id, pg.<method> on the group name)
 * and bounded (pg_max_scopes, pg_max_groups, pg_max_members). */
#include <errno.h>
#include <string.h>

#include "rl_lua_int.h"
#include "rl_pg.h"

#define SCOPE_MT "relay.pg.scope"
#define BATCH_MAX 256 /* group names in one join/leave table */

typedef struct pg_ud {
    char pid[RL_PID_MAX]; /* the instance that opened it (its count of handles) */
    int released;
    size_t len;
    char id[RL_PG_NAME_MAX + 1];
} pg_ud;

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static const rl_config *cfg(void) { return rl_lua_g.cfg; }

/* pg.open(id) -> scope, or nil and why */
static int l_open(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    size_t len;
    const char *id = luaL_checklstring(L, 1, &len);
    if (!rl_pg_name_ok(id, len))
        return fail(L, len ? "invalid scope id" : "scope id is required");
    if (!rl_lua_can(L, I, "pg.open", id, len))
        return fail(L, "permission denied");
    if (rl_pg_scopes_of(I->proc.pid) >= cfg()->pg_max_scopes) {
        rl_lua_refused(I, RL_LIMIT_PG_SCOPES);
        lua_pushnil(L);
        lua_pushfstring(L, "too many pg scopes (pg_max_scopes is %d)", (int)cfg()->pg_max_scopes);
        return 2;
    }
    pg_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    if (rl_pg_scope_open(I->proc.pid) < 0)
        return luaL_error(L, "not enough memory");
    snprintf(u->pid, sizeof u->pid, "%s", I->proc.pid);
    memcpy(u->id, id, len);
    u->len = len;
    luaL_setmetatable(L, SCOPE_MT);
    return 1;
}

static void release(pg_ud *u)
{
    if (!u->released)
        rl_pg_scope_close(u->pid);
    u->released = 1;
}

/* The scope at 1, the running instance in *I; NULL (with nil, why pushed) once released. */
static pg_ud *ready(lua_State *L, rl_lua_inst **I)
{
    pg_ud *u = luaL_checkudata(L, 1, SCOPE_MT);
    *I = rl_lua_current(L);
    if (u->released) {
        fail(L, "pg instance is released");
        return NULL;
    }
    return u;
}

/* The group name at idx: NULL with nil, why pushed when it is not usable. */
static const char *group_arg(lua_State *L, int idx, size_t *len)
{
    const char *g = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, len) : NULL;
    if (!g || !rl_pg_name_ok(g, *len)) {
        fail(L, g && *len ? "invalid group name" : "group name is required");
        return NULL;
    }
    return g;
}

/* The groups of join/leave (a name or a list of names) as the strings at the top of the stack:
   returns how many it pushed, or -1 with nil, why pushed. Checks action on each. */
static int groups_arg(lua_State *L, rl_lua_inst *I, const char *action)
{
    int n = 0;
    if (lua_type(L, 2) == LUA_TTABLE) {
        for (lua_Integer i = 1;; i++) {
            if (lua_rawgeti(L, 2, i) == LUA_TNIL) {
                lua_pop(L, 1);
                break;
            }
            if (lua_type(L, -1) != LUA_TSTRING || n >= BATCH_MAX) {
                lua_pop(L, n + 1);
                fail(L, n >= BATCH_MAX ? "too many groups in one call" : "group names must be strings");
                return -1;
            }
            n++;
        }
        if (n == 0) {
            fail(L, "groups table must not be empty");
            return -1;
        }
    } else if (lua_type(L, 2) == LUA_TSTRING) {
        lua_pushvalue(L, 2);
        n = 1;
    } else {
        fail(L, "group name (string) or groups table required");
        return -1;
    }
    int top = lua_gettop(L);
    for (int i = top - n + 1; i <= top; i++) {
        size_t len;
        const char *g = lua_tolstring(L, i, &len);
        const char *why = !rl_pg_name_ok(g, len) ? (len ? "invalid group name" : "group name is required")
                          : !rl_lua_can(L, I, action, g, len) ? "permission denied"
                                                              : NULL;
        if (why) {
            lua_settop(L, top - n);
            fail(L, why);
            return -1;
        }
    }
    return n;
}

static int join_failed(lua_State *L, rl_lua_inst *I, int rc)
{
    if (rc == -ENOSPC) {
        rl_lua_refused(I, RL_LIMIT_PG_GROUPS);
        lua_pushnil(L);
        lua_pushfstring(L, "too many groups (pg_max_groups is %d)", (int)cfg()->pg_max_groups);
        return 2;
    }
    if (rc == -EMLINK) {
        rl_lua_refused(I, RL_LIMIT_PG_MEMBERS);
        lua_pushnil(L);
        lua_pushfstring(L, "group is full (pg_max_members is %d)", (int)cfg()->pg_max_members);
        return 2;
    }
    return fail(L, rc == -ENOMEM ? "not enough memory" : "join failed");
}

/* scope:join(group | {groups}) -> true, or nil and why (nothing joined) */
static int s_join(lua_State *L)
{
    rl_lua_inst *I;
    pg_ud *u = ready(L, &I);
    if (!u)
        return 2;
    int n = groups_arg(L, I, "pg.join");
    if (n < 0)
        return 2;
    int top = lua_gettop(L);
    for (int i = top - n + 1; i <= top; i++) {
        size_t len;
        const char *g = lua_tolstring(L, i, &len);
        int rc = rl_pg_join(I->proc.pid, u->id, u->len, g, len);
        if (rc < 0) {
            for (int j = top - n + 1; j < i; j++) { /* undo this call's joins */
                const char *d = lua_tolstring(L, j, &len);
                rl_pg_leave(I->proc.pid, u->id, u->len, d, len);
            }
            return join_failed(L, I, rc);
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* scope:leave(group | {groups}) -> true, or nil and why when it was a member of none of them */
static int s_leave(lua_State *L)
{
    rl_lua_inst *I;
    pg_ud *u = ready(L, &I);
    if (!u)
        return 2;
    int n = groups_arg(L, I, "pg.leave");
    if (n < 0)
        return 2;
    int top = lua_gettop(L), left = 0;
    for (int i = top - n + 1; i <= top; i++) {
        size_t len;
        const char *g = lua_tolstring(L, i, &len);
        left += rl_pg_leave(I->proc.pid, u->id, u->len, g, len) == 0;
    }
    if (!left) {
        lua_pushnil(L);
        lua_pushfstring(L, "not a member of group: %s", lua_tostring(L, top - n + 1));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct list_ctx {
    lua_State *L;
    lua_Integer n;
} list_ctx;

static void add_item(void *ud, const char *s, size_t len)
{
    list_ctx *c = ud;
    lua_pushlstring(c->L, s, len);
    lua_rawseti(c->L, -2, ++c->n);
}

/* get_members / get_local_members: this node's members (in a cluster no other node is asked:
   docs/plugins.md). */
static int members(lua_State *L, const char *action)
{
    rl_lua_inst *I;
    pg_ud *u = ready(L, &I);
    if (!u)
        return 2;
    size_t glen;
    const char *g = group_arg(L, 2, &glen);
    if (!g)
        return 2;
    if (!rl_lua_can(L, I, action, g, glen))
        return fail(L, "permission denied");
    size_t n = rl_pg_members(u->id, u->len, g, glen, NULL, NULL);
    rl_lua_charge(L, 8 * (uint64_t)n);
    lua_createtable(L, n < 1u << 20 ? (int)n : 0, 0);
    list_ctx c = {L, 0};
    rl_pg_members(u->id, u->len, g, glen, add_item, &c);
    return 1;
}

static int s_get_members(lua_State *L) { return members(L, "pg.get_members"); }
static int s_get_local_members(lua_State *L) { return members(L, "pg.get_local_members"); }

static int groups(lua_State *L, const char *action)
{
    rl_lua_inst *I;
    pg_ud *u = ready(L, &I);
    if (!u)
        return 2;
    if (!rl_lua_can(L, I, action, "", 0))
        return fail(L, "permission denied");
    size_t n = rl_pg_groups(u->id, u->len, NULL, NULL);
    rl_lua_charge(L, 8 * (uint64_t)n);
    lua_createtable(L, n < 1u << 20 ? (int)n : 0, 0);
    list_ctx c = {L, 0};
    rl_pg_groups(u->id, u->len, add_item, &c);
    return 1;
}

static int s_which_groups(lua_State *L) { return groups(L, "pg.which_groups"); }
static int s_which_local_groups(lua_State *L) { return groups(L, "pg.which_local_groups"); }

/* broadcast / broadcast_local(group, topic, payload...): one message per payload (none = null)
   to every member, each charged RL_LUA_SEND_COST per member. */
static int send_group(lua_State *L, const char *action, int local_only)
{
    rl_lua_inst *I;
    pg_ud *u = ready(L, &I);
    if (!u)
        return 2;
    size_t glen, tlen = 0;
    const char *g = group_arg(L, 2, &glen);
    if (!g)
        return 2;
    const char *topic = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &tlen) : NULL;
    if (!topic || tlen == 0)
        return fail(L, "topic is required");
    if (!rl_pg_topic_ok(topic, tlen))
        return fail(L, "topic reserved or invalid");
    if (!rl_lua_can(L, I, action, g, glen))
        return fail(L, "permission denied");
    int n = lua_gettop(L);
    if (n < 4) {
        lua_settop(L, 4);
        n = 4;
    }
    size_t members_n = rl_pg_members(u->id, u->len, g, glen, NULL, NULL);
    for (int i = 4; i <= n; i++) {
        rl_lua_charge(L, RL_LUA_SEND_COST * (uint64_t)(members_n ? members_n : 1));
        const char *data;
        size_t len;
        if (!rl_lua_json_encode_scratch(L, i, &data, &len)) {
            lua_pushnil(L);
            lua_insert(L, -2);
            return 2;
        }
        rl_body *b = rl_body_new(data, len);
        if (!b)
            return luaL_error(L, "not enough memory");
        if (local_only)
            rl_pg_send_local(&I->proc, u->id, u->len, g, glen, topic, tlen, b);
        else
            rl_pg_send(&I->proc, u->id, u->len, g, glen, topic, tlen, b);
        rl_body_unref(b);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int s_broadcast(lua_State *L) { return send_group(L, "pg.broadcast", 0); }
static int s_broadcast_local(lua_State *L) { return send_group(L, "pg.broadcast_local", 1); }

/* monitor / events: membership events are not built here; the call says so. */
static int s_monitor(lua_State *L)
{
    luaL_checkudata(L, 1, SCOPE_MT);
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushliteral(L, "pg monitor/events are not supported by this runtime");
    return 3;
}

static int s_release(lua_State *L)
{
    release(luaL_checkudata(L, 1, SCOPE_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int s_gc(lua_State *L)
{
    release(luaL_checkudata(L, 1, SCOPE_MT));
    return 0;
}

static int s_tostring(lua_State *L)
{
    pg_ud *u = luaL_checkudata(L, 1, SCOPE_MT);
    lua_pushfstring(L, "pg.Instance{%s%s}", u->id, u->released ? ", released" : "");
    return 1;
}

void rl_lua_pg_push(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"join", s_join},
        {"leave", s_leave},
        {"get_members", s_get_members},
        {"get_local_members", s_get_local_members},
        {"which_groups", s_which_groups},
        {"which_local_groups", s_which_local_groups},
        {"broadcast", s_broadcast},
        {"broadcast_local", s_broadcast_local},
        {"monitor", s_monitor},
        {"events", s_monitor},
        {"release", s_release},
        {NULL, NULL},
    };
    static const luaL_Reg meta[] = {{"__gc", s_gc}, {"__tostring", s_tostring}, {NULL, NULL}};
    rl_lua_new_class(L, SCOPE_MT, methods, meta, NULL);
    lua_newtable(L);
    lua_pushcfunction(L, l_open);
    lua_setfield(L, -2, "open");
}
