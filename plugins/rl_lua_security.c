/* The security module of the Lua plugin host: scopes and policies from the config (core's
 * rl_security evaluates them): scope, named_scope, policy, new_scope, can; Scope:with/without/
 * contains/policies/evaluate and Policy:id/evaluate. actor and new_actor live in the prelude. */
#include <errno.h>
#include <string.h>

#include "rl_lua_int.h"
#include "rl_security.h"

#define SCOPE_MT "relay.security.scope"
#define POLICY_MT "relay.security.policy"

typedef struct sec_scope_ud {
    size_t n;
    const rl_sec_policy *p[]; /* the config's policies (they outlive the state) */
} sec_scope_ud;

typedef struct sec_policy_ud {
    const rl_sec_policy *p;
} sec_policy_ud;

static sec_scope_ud *push_scope(lua_State *L, const rl_sec_policy *const *p, size_t n)
{
    sec_scope_ud *s = lua_newuserdatauv(L, sizeof *s + n * sizeof s->p[0], 0);
    s->n = n;
    if (n)
        memcpy(s->p, p, n * sizeof s->p[0]);
    luaL_setmetatable(L, SCOPE_MT);
    return s;
}

static void push_policy(lua_State *L, const rl_sec_policy *p)
{
    sec_policy_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->p = p;
    luaL_setmetatable(L, POLICY_MT);
}

/* Lua tables as condition fields: idx_actor / idx_meta are stack slots (0 = none). Values are
   read raw (no metamethods run) and left on the stack until the caller resets it. */
typedef struct lua_look {
    lua_State *L;
    int actor_meta, meta;
} lua_look;

static void look(void *ud, int actor, const char *path, rl_sec_field *out)
{
    lua_look *k = ud;
    lua_State *L = k->L;
    int t = actor ? k->actor_meta : k->meta;
    if (!t)
        return;
    luaL_checkstack(L, 4, "security: condition");
    lua_pushvalue(L, t);
    while (*path) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (lua_type(L, -1) != LUA_TTABLE)
            return;
        lua_pushlstring(L, path, n);
        lua_rawget(L, -2);
        lua_remove(L, -2);
        path += n + (dot ? 1 : 0);
    }
    switch (lua_type(L, -1)) {
    case LUA_TNIL:
        break;
    case LUA_TSTRING:
        out->kind = RL_SEC_VSTR;
        out->s = lua_tolstring(L, -1, &out->len);
        break;
    case LUA_TNUMBER:
        out->kind = RL_SEC_VNUM;
        out->num = lua_tonumber(L, -1);
        break;
    case LUA_TBOOLEAN:
        out->kind = RL_SEC_VBOOL;
        out->num = lua_toboolean(L, -1);
        break;
    default:
        out->kind = RL_SEC_VOTHER;
        break;
    }
}

/* action, resource at a, a+1 and meta (optional table) at a+2; actor id and its meta table
   slot given. Charges the work to the instance. */
static rl_sec_result eval_at(lua_State *L, const rl_sec_policy *const *p, size_t n, int a,
                             const char *actor_id, int actor_meta)
{
    rl_sec_req r = {0};
    r.actor_id = actor_id;
    r.action = luaL_checklstring(L, a, &r.action_len);
    r.resource = luaL_checklstring(L, a + 1, &r.resource_len);
    if (r.action_len > RL_SEC_ARG_MAX || r.resource_len > RL_SEC_ARG_MAX)
        luaL_error(L, "security: action and resource are at most %d bytes", RL_SEC_ARG_MAX);
    if (!lua_isnoneornil(L, a + 2))
        luaL_checktype(L, a + 2, LUA_TTABLE);
    lua_look k = {L, actor_meta, lua_istable(L, a + 2) ? a + 2 : 0};
    r.lookup = look;
    r.ud = &k;
    rl_lua_charge(L, (uint64_t)n * (16 + r.action_len + r.resource_len));
    int top = lua_gettop(L);
    rl_sec_result res = rl_sec_eval(p, n, &r);
    lua_settop(L, top);
    return res;
}

static int push_result(lua_State *L, rl_sec_result r)
{
    lua_pushstring(L, r == RL_SEC_ALLOW ? "allow" : r == RL_SEC_DENY ? "deny" : "undefined");
    return 1;
}

/* The actor argument at idx (a table from security.actor/new_actor, or nil): pushes nothing,
   returns its id (valid while the table lives) and sets *meta to the slot of its meta table. */
static const char *actor_arg(lua_State *L, int idx, int *meta)
{
    *meta = 0;
    if (lua_isnoneornil(L, idx))
        return NULL;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_getfield(L, idx, "meta_");
    lua_getfield(L, idx, "id_");
    const char *id = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!id)
        luaL_argerror(L, idx, "not an actor");
    /* both stay on the stack (the id string is anchored there) */
    if (lua_istable(L, -2))
        *meta = lua_gettop(L) - 1;
    return id;
}

/* ---- module functions ---------------------------------------------------------------------- */

static void push_named(lua_State *L, const char *id)
{
    const rl_sec_policy *const *p = NULL;
    size_t n = 0;
    rl_sec_scope_get(id, &p, &n); /* a scope no entry names is empty */
    push_scope(L, p, n);
}

/* security.scope(): the scope the instance runs under (user_security_scope). */
static int l_scope(lua_State *L)
{
    rl_lua_current(L);
    push_named(L, rl_sec_user_scope());
    return 1;
}

static int l_named_scope(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    const rl_sec_policy *const *p;
    size_t n;
    if (rl_sec_scope_get(id, &p, &n) < 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "security scope not found: %s", id);
        return 2;
    }
    push_scope(L, p, n);
    return 1;
}

static int l_policy(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    const rl_sec_policy *p = rl_sec_policy_find(id);
    if (!p) {
        lua_pushnil(L);
        lua_pushfstring(L, "security policy not found: %s", id);
        return 2;
    }
    push_policy(L, p);
    return 1;
}

/* new_scope([policies]) */
static int l_new_scope(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        push_scope(L, NULL, 0);
        return 1;
    }
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t max = rl_sec_policy_count(), n = 0;
    const rl_sec_policy **tmp = lua_newuserdatauv(L, (max ? max : 1) * sizeof *tmp, 0);
    for (lua_Integer i = 1;; i++) {
        if (lua_rawgeti(L, 1, i) == LUA_TNIL)
            break;
        sec_policy_ud *u = luaL_testudata(L, -1, POLICY_MT);
        if (!u)
            return luaL_error(L, "security.new_scope: item %d is not a policy", (int)i);
        int dup = 0;
        rl_lua_charge(L, 1 + n); /* the repeat check: C work on plugin input */
        for (size_t j = 0; j < n; j++)
            dup |= tmp[j] == u->p;
        if (!dup && n < max)
            tmp[n++] = u->p;
        lua_pop(L, 1);
    }
    push_scope(L, tmp, n);
    return 1;
}

/* security.can(action, resource[, meta]): the instance's scope and actor (its user, with the
   user's metadata as actor.meta). */
static int l_can(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const rl_sec_policy *const *p = NULL;
    size_t n = 0;
    rl_sec_scope_get(rl_sec_user_scope(), &p, &n);
    lua_settop(L, 3);
    int meta = 0;
    if (I->user_meta && rl_lua_json_decode(L, I->user_meta->data, I->user_meta->len))
        meta = lua_gettop(L);
    lua_pushboolean(L, eval_at(L, p, n, 1, rl_owner_user(I->proc.owner), meta) == RL_SEC_ALLOW);
    return 1;
}

int rl_lua_can(lua_State *L, rl_lua_inst *I, const char *action, const char *res, size_t rlen)
{
    const rl_sec_policy *const *p = NULL;
    size_t n = 0;
    rl_sec_scope_get(rl_sec_user_scope(), &p, &n);
    int top = lua_gettop(L);
    lua_look k = {L, 0, 0};
    if (I->user_meta && rl_sec_user_scope_reads_actor_meta() &&
        rl_lua_json_decode(L, I->user_meta->data, I->user_meta->len))
        k.actor_meta = lua_gettop(L);
    rl_lua_charge(L, (uint64_t)n * (16 + strlen(action) + rlen));
    rl_sec_req r = {rl_owner_user(I->proc.owner), action, strlen(action), res, rlen, look, &k};
    int ok = rl_sec_eval(p, n, &r) == RL_SEC_ALLOW;
    lua_settop(L, top);
    return ok;
}

int rl_lua_send_user(lua_State *L, rl_lua_inst *I, const char *user, size_t len, rl_msg *m)
{
    int top = lua_gettop(L);
    lua_look k = {L, 0, 0};
    const char *self = rl_owner_user(I->proc.owner);
    int other = !self || strlen(self) != len || memcmp(self, user, len) != 0;
    if (other && I->user_meta && rl_sec_user_scope_reads_actor_meta() &&
        rl_lua_json_decode(L, I->user_meta->data, I->user_meta->len))
        k.actor_meta = lua_gettop(L);
    rl_lua_charge(L, rl_sec_policy_count() * (32 + len));
    int rc = rl_send_user(&I->proc, user, len, m, look, &k);
    lua_settop(L, top);
    return rc;
}

/* ---- Scope and Policy methods ---------------------------------------------------------------- */

static sec_scope_ud *check_scope(lua_State *L, int i) { return luaL_checkudata(L, i, SCOPE_MT); }

static int s_with(lua_State *L)
{
    sec_scope_ud *s = check_scope(L, 1);
    sec_policy_ud *u = luaL_checkudata(L, 2, POLICY_MT);
    for (size_t i = 0; i < s->n; i++)
        if (s->p[i] == u->p) {
            lua_settop(L, 1); /* scopes are immutable: the same one */
            return 1;
        }
    sec_scope_ud *t = lua_newuserdatauv(L, sizeof *t + (s->n + 1) * sizeof t->p[0], 0);
    t->n = s->n + 1;
    memcpy(t->p, s->p, s->n * sizeof t->p[0]);
    t->p[s->n] = u->p;
    luaL_setmetatable(L, SCOPE_MT);
    return 1;
}

static int s_without(lua_State *L)
{
    sec_scope_ud *s = check_scope(L, 1);
    const char *id = luaL_checkstring(L, 2);
    sec_scope_ud *t = push_scope(L, s->p, s->n);
    size_t k = 0;
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->p[i]->id, id) != 0)
            t->p[k++] = s->p[i];
    t->n = k;
    return 1;
}

static int s_contains(lua_State *L)
{
    sec_scope_ud *s = check_scope(L, 1);
    const char *id = luaL_checkstring(L, 2);
    int found = 0;
    for (size_t i = 0; i < s->n; i++)
        found |= strcmp(s->p[i]->id, id) == 0;
    lua_pushboolean(L, found);
    return 1;
}

static int s_policies(lua_State *L)
{
    sec_scope_ud *s = check_scope(L, 1);
    lua_createtable(L, (int)s->n, 0);
    for (size_t i = 0; i < s->n; i++) {
        push_policy(L, s->p[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

/* scope:evaluate(actor, action, resource[, meta]) -> "allow" | "deny" | "undefined" */
static int s_evaluate(lua_State *L)
{
    sec_scope_ud *s = check_scope(L, 1);
    lua_settop(L, 5);
    int meta;
    const char *id = actor_arg(L, 2, &meta);
    return push_result(L, eval_at(L, s->p, s->n, 3, id, meta));
}

static int s_tostring(lua_State *L)
{
    lua_pushfstring(L, "security.scope (%d policies)", (int)check_scope(L, 1)->n);
    return 1;
}

static int p_id(lua_State *L)
{
    lua_pushstring(L, ((sec_policy_ud *)luaL_checkudata(L, 1, POLICY_MT))->p->id);
    return 1;
}

static int p_evaluate(lua_State *L)
{
    sec_policy_ud *u = luaL_checkudata(L, 1, POLICY_MT);
    lua_settop(L, 5);
    int meta;
    const char *id = actor_arg(L, 2, &meta);
    const rl_sec_policy *one[1] = {u->p};
    return push_result(L, eval_at(L, one, 1, 3, id, meta));
}

static int p_tostring(lua_State *L)
{
    lua_pushfstring(L, "security.policy %s",
                    ((sec_policy_ud *)luaL_checkudata(L, 1, POLICY_MT))->p->id);
    return 1;
}

void rl_lua_security_push(lua_State *L)
{
    static const luaL_Reg scope_methods[] = {
        {"with", s_with},         {"without", s_without},   {"contains", s_contains},
        {"policies", s_policies}, {"evaluate", s_evaluate}, {NULL, NULL},
    };
    static const luaL_Reg scope_meta[] = {{"__tostring", s_tostring}, {NULL, NULL}};
    static const luaL_Reg policy_methods[] = {{"id", p_id}, {"evaluate", p_evaluate}, {NULL, NULL}};
    static const luaL_Reg policy_meta[] = {{"__tostring", p_tostring}, {NULL, NULL}};
    static const luaL_Reg fns[] = {
        {"scope", l_scope},         {"named_scope", l_named_scope}, {"policy", l_policy},
        {"new_scope", l_new_scope}, {"can", l_can},                 {NULL, NULL},
    };
    rl_lua_new_class(L, SCOPE_MT, scope_methods, scope_meta, NULL);
    rl_lua_new_class(L, POLICY_MT, policy_methods, policy_meta, NULL);
    luaL_newlib(L, fns);
}
