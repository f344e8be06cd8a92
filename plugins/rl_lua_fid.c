/* The platform's modules the relay's own API does not need but its plugins use: `errors`
 * (global, structured errors), `env` (env.variable entries of the config), `ctx` (values of
 * process.with_context), `funcs` (function.lua entries run in the caller), imports of
 * library.lua entries (require(name)), process.with_context spawners, and the exit values
 * monitors see in result.value. The Lua parts run once at start-up, trusted, like the prelude;
 * the C parts are the host.fid_* helpers they call. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_log.h"
#include "rl_lua_int.h"

#define H rl_lua_g

/* ---- per-instance state ---------------------------------------------------------------- */

rl_lua_aux *rl_lua_aux_of(rl_lua_inst *I)
{
    if (!I->aux && (I->aux = calloc(1, sizeof *I->aux)))
        I->aux->imports_ref = LUA_NOREF;
    return I->aux;
}

void rl_lua_aux_free(rl_lua_inst *I)
{
    rl_lua_aux *A = I->aux;
    if (!A)
        return;
    I->aux = NULL;
    if (A->main && A->main->aux) { /* a task: off its instance's list */
        rl_lua_aux *M = A->main->aux;
        for (uint32_t i = 0; i < M->ntasks; i++)
            if (M->tasks[i] == I) {
                M->tasks[i] = M->tasks[--M->ntasks];
                break;
            }
    }
    free(A->tasks); /* an instance's tasks were ended before (inst_finish) */
    for (uint32_t i = 0; i < A->nlistens; i++) {
        rl_lua_chan *ch = rl_lua_ref_udata(A->listens[i].chan_ref);
        if (ch)
            rl_lua_chan_detach(ch); /* the channel may outlive the process */
        if (H.L)
            luaL_unref(H.L, LUA_REGISTRYINDEX, A->listens[i].chan_ref);
        free(A->listens[i].topic);
    }
    free(A->listens);
    for (uint32_t i = 0; i < A->nexecs; i++) {
        if (H.L)
            luaL_unref(H.L, LUA_REGISTRYINDEX, A->execs[i].chan_ref);
        free(A->execs[i].topic);
    }
    free(A->execs);
    while (A->exitvals) {
        rl_lua_exitval *v = A->exitvals;
        A->exitvals = v->next;
        rl_body_unref(v->value);
        free(v);
    }
    rl_body_unref(A->ctx);
    if (H.L && A->imports_ref != LUA_NOREF)
        luaL_unref(H.L, LUA_REGISTRYINDEX, A->imports_ref);
    free(A->exit_pending);
    free(A->unmon);
    for (uint32_t i = 0; i < A->nlinks; i++)
        free(A->links[i]);
    free(A->links);
    for (uint32_t i = 0; i < A->nchildren; i++)
        free(A->children[i]);
    free(A->children);
    if (A->chans && --A->chans->refs == 0) { /* its channels may outlive it */
        rl_owner_unref(A->chans->owner);
        free(A->chans);
    }
    free(A); /* (A->deadline: a timer of I->timers, closed before) */
}

rl_body *rl_lua_exitval_take(rl_lua_inst *I, const char *pid)
{
    for (rl_lua_exitval **pp = I->aux ? &I->aux->exitvals : NULL; pp && *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->pid, pid) == 0) {
            rl_lua_exitval *v = *pp;
            rl_body *b = v->value;
            *pp = v->next;
            free(v);
            return b;
        }
    }
    return NULL;
}

void rl_lua_exitval_post(lua_State *co, rl_lua_inst *I, int idx)
{
    if (I->proc.nmonitors == 0)
        return;
    const char *text;
    size_t len;
    idx = lua_absindex(co, idx);
    /* encoding cannot raise here but on OOM, and co is not running: guard the stack */
    if (!lua_checkstack(co, 4) || !rl_lua_json_encode_scratch(co, idx, &text, &len)) {
        if (lua_gettop(co) > idx)
            lua_settop(co, idx + (lua_gettop(co) - idx) - 1); /* the error message */
        return; /* a value JSON cannot carry is not reported (the exit itself is) */
    }
    rl_body *b = rl_body_new(text, len);
    if (!b)
        return;
    for (uint32_t i = 0; i < I->proc.nmonitors; i++) {
        rl_proc *w = rl_proc_by_serial(I->proc.monitors[i]);
        rl_lua_inst *W = w ? rl_lua_inst_of(w->pid) : NULL;
        rl_lua_aux *A = W && !W->torn ? rl_lua_aux_of(W) : NULL;
        rl_lua_exitval *v = A ? calloc(1, sizeof *v) : NULL;
        if (!v)
            continue;
        snprintf(v->pid, sizeof v->pid, "%s", I->proc.pid);
        v->value = rl_body_ref(b);
        v->next = A->exitvals;
        A->exitvals = v;
    }
    rl_body_unref(b);
}

/* ---- process.listen ------------------------------------------------------------------------ */

rl_lua_chan *rl_lua_listen_chan(const rl_lua_inst *I, const rl_msg *m)
{
    if (!I->aux || !I->aux->nlistens)
        return NULL;
    size_t n;
    const char *name = rl_msg_topic_name(m, &n);
    for (uint32_t i = 0; i < I->aux->nlistens; i++) {
        const char *t = I->aux->listens[i].topic;
        if (strlen(t) == n && memcmp(t, name, n) == 0)
            return rl_lua_ref_udata(I->aux->listens[i].chan_ref);
    }
    return NULL;
}

/* process.listen(topic[, {message = bool}]): a channel that gets the messages of that topic
   instead of the inbox: their data (the default), or the message objects with message = true. */
static int h_listen(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    size_t n;
    const char *topic = luaL_checklstring(L, 1, &n);
    if (n == 0 || topic[0] == '@' || n > 255 || memchr(topic, '\0', n))
        return luaL_error(L, "process.listen: the topic must be 1..255 bytes, not starting with @");
    int message = 0;
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_getfield(L, 2, "message");
        message = lua_toboolean(L, -1);
        lua_pop(L, 1);
    } else if (!lua_isnoneornil(L, 2)) {
        return luaL_typeerror(L, 2, "table of options");
    }
    rl_lua_aux *A = rl_lua_aux_of(I);
    if (!A)
        return luaL_error(L, "not enough memory");
    for (uint32_t i = 0; i < A->nlistens; i++)
        if (strcmp(A->listens[i].topic, topic) == 0)
            return luaL_error(L, "process.listen: already listening to %s", topic);
    if (A->nlistens >= RL_LUA_LISTEN_MAX)
        return luaL_error(L, "process.listen: at most %d topics", RL_LUA_LISTEN_MAX);
    rl_lua_listen *nl = realloc(A->listens, (A->nlistens + 1) * sizeof *nl);
    if (!nl)
        return luaL_error(L, "not enough memory");
    A->listens = nl;
    char *t = strdup(topic);
    if (!t)
        return luaL_error(L, "not enough memory");
    rl_lua_chan *ch = rl_lua_chan_new(L, RL_CH_INBOX, 0); /* may raise: t is not kept yet */
    rl_lua_chan_set_owner(ch, &I->proc);
    rl_lua_chan_set_data_only(ch, !message);
    lua_pushvalue(L, -1);
    nl[A->nlistens].chan_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    nl[A->nlistens].topic = t;
    A->nlistens++;
    return 1;
}

/* process.unlisten(ch): the topic goes to the inbox again; ch is closed (what it holds can
   still be received). true, or false when ch is no subscription of this instance. */
static int h_unlisten(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    void *ud = lua_touserdata(L, 1);
    for (uint32_t i = 0; ud && I->aux && i < I->aux->nlistens; i++) {
        rl_lua_listen *l = &I->aux->listens[i];
        if (rl_lua_ref_udata(l->chan_ref) != ud)
            continue;
        rl_lua_chan_detach(ud);
        luaL_unref(L, LUA_REGISTRYINDEX, l->chan_ref);
        free(l->topic);
        *l = I->aux->listens[--I->aux->nlistens];
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    return 1;
}

/* ---- host helpers ------------------------------------------------------------------------ */

void rl_lua_push_env(lua_State *L)
{
    lua_createtable(L, 0, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
    lua_rawgeti(L, LUA_REGISTRYINDEX, H.env_mt_ref);
    lua_setmetatable(L, -2);
}

/* The import `name` of def, or NULL. */
static const char *import_of(const rl_plugin_def *def, const char *name)
{
    for (size_t i = 0; def && i < def->nimports; i++)
        if (strcmp(def->import_names[i], name) == 0)
            return def->import_ids[i];
    return NULL;
}

/* host.fid_import(name): the library.lua entry the running instance imports as `name`, run
   once per instance (its module-level state is the instance's own) and kept. A name is looked
   up in the plugin's imports, then in those of the libraries it has loaded. Returns the
   module, or nothing when no import has that name. */
static int h_import(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    const char *name = luaL_checkstring(L, 1);
    rl_lua_aux *A = rl_lua_aux_of(I);
    if (!A)
        return luaL_error(L, "not enough memory");
    if (A->imports_ref == LUA_NOREF) {
        lua_newtable(L);
        A->imports_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_settop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, A->imports_ref); /* 2 */
    const char *id = import_of(I->def, name);
    if (!id) { /* a library's own import */
        lua_pushnil(L);
        while (!id && lua_next(L, 2)) {
            lua_pop(L, 1);
            if (lua_type(L, -1) == LUA_TSTRING)
                id = import_of(rl_lua_find_def(lua_tostring(L, -1)), name);
            if (id)
                lua_pop(L, 1);
        }
    }
    if (!id)
        return 0;
    const rl_plugin_def *def = rl_lua_find_def(id);
    if (!def || def->lua_kind != RL_LUA_ENTRY_LIBRARY)
        return 0;
    int t = lua_getfield(L, 2, def->id);
    if (t == LUA_TBOOLEAN && !lua_toboolean(L, -1))
        return luaL_error(L, "import cycle: library %s requires itself", def->id);
    if (t != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    int chunk = rl_lua_chunk_of(def);
    if (chunk == LUA_NOREF)
        return luaL_error(L, "library %s was not loaded", def->id);
    lua_pushboolean(L, 0); /* loading */
    lua_setfield(L, 2, def->id);
    lua_rawgeti(L, LUA_REGISTRYINDEX, chunk);
    rl_lua_push_env(L);
    lua_pushvalue(L, -1);
    lua_insert(L, -3); /* env, chunk, env */
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) { /* a library that sets globals: its environment is the module */
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, 2, def->id);
    return 1;
}

/* host.fid_env_get(name): the value of the env.variable named (public name or entry id):
   value, or nil and why ("not found"). */
static int h_env_get(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    const rl_config *c = H.cfg;
    for (size_t i = 0; c && i < c->nenv_vars; i++) {
        const rl_env_var *v = &c->env_vars[i];
        if (!(v->name && strcmp(v->name, name) == 0) && strcmp(v->id, name) != 0)
            continue;
        const char *val = v->os ? getenv(v->key) : NULL;
        if (!val)
            val = v->deflt;
        if (!val)
            break;
        lua_pushstring(L, val);
        return 1;
    }
    lua_pushnil(L);
    lua_pushfstring(L, "environment variable %s not found", name);
    return 2;
}

/* host.fid_env_all(): {public name = value} of every variable that has a value. */
static int h_env_all(lua_State *L)
{
    const rl_config *c = H.cfg;
    lua_newtable(L);
    for (size_t i = 0; c && i < c->nenv_vars; i++) {
        const rl_env_var *v = &c->env_vars[i];
        const char *val = v->os ? getenv(v->key) : NULL;
        if (!val)
            val = v->deflt;
        if (!v->name || !val)
            continue;
        lua_pushstring(L, val);
        lua_setfield(L, -2, v->name);
    }
    return 1;
}

/* host.fid_ctx(): the with_context values the instance was spawned with, a fresh table. */
static int h_ctx(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    if (!I->aux || !I->aux->ctx) {
        lua_newtable(L);
        return 1;
    }
    if (!rl_lua_json_decode(L, I->aux->ctx->data, I->aux->ctx->len))
        return luaL_error(L, "bad context: %s", lua_tostring(L, -1));
    return 1;
}

/* host.fid_spawn(mode, ctx_json|nil, id, host, ...): mode 0 spawn, 1 monitored, 2 linked,
   3 linked and monitored. */
int rl_lua_exec_done(rl_lua_inst *I, const char *pid, const char *error, rl_body *value)
{
    rl_lua_aux *A = I->aux;
    for (uint32_t i = 0; A && i < A->nexecs; i++) {
        rl_lua_listen *x = &A->execs[i];
        if (strcmp(x->topic, pid) != 0)
            continue;
        rl_lua_chan *ch = rl_lua_ref_udata(x->chan_ref);
        rl_lua_event *e = calloc(1, sizeof *e);
        if (e && (!error || (e->error = strdup(error)))) {
            e->kind = RL_EV_EXIT;
            e->value = value;
            snprintf(e->from, sizeof e->from, "%s", pid);
            rl_lua_chan_push_event(ch, e);
        } else { /* the caller still wakes: a closed channel answers its receive */
            rl_error("lua", "plugin %s: out of memory, exec result of %s dropped", I->proc.pid,
                     pid);
            rl_lua_event_free(e);
            rl_body_unref(value);
            rl_lua_chan_detach(ch);
        }
        luaL_unref(H.L, LUA_REGISTRYINDEX, x->chan_ref); /* the waiting caller holds it */
        free(x->topic);
        *x = A->execs[--A->nexecs];
        return 1;
    }
    return 0;
}

/* process.exec's start: the spawned child's pid is waited on; pushes the channel its exit
   comes to after the pid (the Lua half receives from it). */
static int exec_wait_on(lua_State *L, rl_lua_inst *I)
{
    const char *pid = lua_tostring(L, -1);
    rl_lua_aux *A = rl_lua_aux_of(I);
    rl_lua_listen *nx = A ? realloc(A->execs, (A->nexecs + 1) * sizeof *nx) : NULL;
    char *t = nx ? strdup(pid) : NULL;
    if (nx)
        A->execs = nx;
    if (!t) {
        rl_lua_inst *C = rl_lua_inst_of(pid);
        if (C)
            rl_lua_kill(C, "not enough memory");
        return luaL_error(L, "not enough memory");
    }
    rl_lua_chan *ch = rl_lua_chan_new(L, RL_CH_EVENTS, 0); /* a raise here: the child still
                                                              ends with this instance */
    rl_lua_chan_set_owner(ch, &I->proc);
    lua_pushvalue(L, -1);
    nx[A->nexecs].chan_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    nx[A->nexecs].topic = t;
    A->nexecs++;
    return 2;
}

/* host.fid_spawn(mode, ctx, id, host, ...): mode bit 1 monitored, bit 2 linked; mode 4 is
   process.exec (monitored; pushes pid and the channel its exit comes to). */
static int h_spawn(lua_State *L)
{
    int mode = (int)luaL_checkinteger(L, 1);
    const char *ctx = lua_isnil(L, 2) ? NULL : luaL_checkstring(L, 2);
    if (mode != 4)
        return rl_lua_proc_spawn(L, 3, mode & 1, mode & 2, ctx);
    int n = rl_lua_proc_spawn(L, 3, 1, 0, ctx);
    if (n != 1 || lua_type(L, -1) != LUA_TSTRING)
        return n;
    return exec_wait_on(L, rl_lua_current(L));
}

/* host.fid_func(id): a function that runs the function.lua entry id afresh (a new
   environment, its chunk, then its method) with the arguments it is given; or nil, why. */
static int run_func_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    return lua_gettop(L); /* what the method returned, after it blocked */
}

static int run_func(lua_State *L)
{
    int chunk = (int)lua_tointeger(L, lua_upvalueindex(1));
    const char *method = lua_tostring(L, lua_upvalueindex(2));
    int n = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, chunk);
    rl_lua_push_env(L);
    lua_pushvalue(L, -1);
    lua_insert(L, -3); /* env, chunk, env */
    lua_call(L, 1, 1);
    if (lua_istable(L, -1) && lua_getfield(L, -1, method) == LUA_TFUNCTION) {
        lua_remove(L, -2);
    } else {
        lua_settop(L, n + 1);
        if (lua_getfield(L, n + 1, method) != LUA_TFUNCTION)
            return luaL_error(L, "function entry has no function '%s'", method);
    }
    lua_replace(L, n + 1); /* the method in the env's place */
    lua_insert(L, 1);
    lua_callk(L, n, LUA_MULTRET, 0, run_func_k); /* yieldable: the method may block */
    return lua_gettop(L);
}

static int h_func(lua_State *L)
{
    const char *id = luaL_checkstring(L, 1);
    const rl_plugin_def *def = rl_lua_find_def(id);
    if (!def || def->lua_kind != RL_LUA_ENTRY_FUNCTION || strchr(id, ':') == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "function %s not found", id);
        return 2;
    }
    lua_pushinteger(L, rl_lua_chunk_of(def));
    lua_pushstring(L, def->method && def->method[0] ? def->method : "run");
    lua_pushcclosure(L, run_func, 2);
    return 1;
}

/* The Lua half, run once with (modules, safe, process, readonly, G, host); returns the import
   function require falls back to. */
static const char fid_lua[] =
    "local modules, safe, process, readonly, G, host = ...\n"
    "local type, tostring, pairs, select, error = G.type, G.tostring, G.pairs, G.select, G.error\n"
    "local setmetatable, traceback = G.setmetatable, G.debug.traceback\n"
    "local json = modules.json\n"
    /* errors: structured errors with a kind, retryable, details and the stack where made */
    "local KINDS = {'UNKNOWN', 'INVALID', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',\n"
    "  'UNAVAILABLE', 'INTERNAL', 'CANCELED', 'CONFLICT', 'TIMEOUT', 'RATE_LIMITED'}\n"
    "local E = {}\n"
    "local EMT = {__index = E, __metatable = false,\n"
    "  __tostring = function(e) return e.message_ end}\n"
    "local made = setmetatable({}, {__mode = 'k'})\n"
    "local function mkerr(msg, kind, retryable, details)\n"
    "  local e = setmetatable({message_ = msg, kind_ = kind or 'UNKNOWN', retryable_ = retryable,\n"
    "    details_ = details, stack_ = traceback('', 3)}, EMT)\n"
    "  made[e] = true\n"
    "  return e\n"
    "end\n"
    "function E:kind() return self.kind_ end\n"
    "function E:message() return self.message_ end\n"
    "function E:retryable() return self.retryable_ end\n"
    "function E:details() return self.details_ end\n"
    "function E:stack() return self.stack_ end\n"
    "local errors = {}\n"
    "for _, k in G.ipairs(KINDS) do errors[k] = k end\n"
    "function errors.new(x)\n"
    "  if type(x) == 'string' then return mkerr(x, 'UNKNOWN') end\n"
    "  if type(x) ~= 'table' or type(x.message) ~= 'string' then\n"
    "    error('errors.new: expected a message string or a table with a message', 2) end\n"
    "  if x.kind ~= nil and type(x.kind) ~= 'string' then\n"
    "    error('errors.new: kind must be a string', 2) end\n"
    "  if x.details ~= nil and type(x.details) ~= 'table' then\n"
    "    error('errors.new: details must be a table', 2) end\n"
    "  local r = x.retryable\n"
    "  if r ~= nil then r = not not r end\n"
    "  return mkerr(x.message, x.kind, r, x.details)\n"
    "end\n"
    "function errors.wrap(err, msg)\n"
    "  if err == nil then return nil end\n"
    "  msg = tostring(msg)\n"
    "  if made[err] then\n"
    "    local e = mkerr(msg .. ': ' .. err.message_, err.kind_, err.retryable_, err.details_)\n"
    "    e.stack_ = err.stack_\n"
    "    return e\n"
    "  end\n"
    "  return mkerr(msg .. ': ' .. tostring(err), 'UNKNOWN')\n"
    "end\n"
    "function errors.is(err, kind)\n"
    "  if made[err] then return err.kind_ == kind end\n"
    "  return err ~= nil and err ~= false and kind == 'UNKNOWN'\n"
    "end\n"
    "function errors.call_stack(err)\n"
    "  if not made[err] or not err.stack_ then return nil end\n"
    "  local frames = {}\n"
    "  for src, line, name in err.stack_:gmatch('\\n%s*([^\\n:]+):(%d+): in ([^\\n]*)') do\n"
    "    frames[#frames + 1] = {source = src, line = G.math.tointeger(G.tonumber(line)),\n"
    "      name = name}\n"
    "  end\n"
    "  return {thread = 'main', frames = frames}\n"
    "end\n"
    "safe.errors = readonly(errors)\n"
    "modules.errors = safe.errors\n"
    "local function as_err(x, kind)\n"
    "  if x == nil or made[x] then return x end\n"
    "  return mkerr(tostring(x), kind or 'UNKNOWN')\n"
    "end\n"
    /* env: env.variable entries; read-only storages */
    "local env = {}\n"
    "function env.get(name)\n"
    "  if type(name) ~= 'string' or name == '' then\n"
    "    return nil, mkerr('env.get: empty key', 'INVALID', false) end\n"
    "  local v, why = host.fid_env_get(name)\n"
    "  if v == nil then return nil, mkerr(why, 'NOT_FOUND', false) end\n"
    "  return v\n"
    "end\n"
    "function env.set(name, value)\n"
    "  return false, mkerr('env.set: the storages of this host are read-only',\n"
    "    'PERMISSION_DENIED', false)\n"
    "end\n"
    "function env.get_all() return host.fid_env_all() end\n"
    "modules.env = readonly(env)\n"
    /* ctx: the values of process.with_context the instance was spawned with */
    "local ctx = {}\n"
    "function ctx.get(key)\n"
    "  if type(key) ~= 'string' or key == '' then\n"
    "    return nil, mkerr('ctx.get: empty key', 'INVALID', false) end\n"
    "  local v = host.fid_ctx()[key]\n"
    "  if v == nil then return nil, mkerr('context key ' .. key .. ' not found', 'NOT_FOUND', false) end\n"
    "  return v\n"
    "end\n"
    "function ctx.all() return host.fid_ctx() end\n"
    "modules.ctx = readonly(ctx)\n"
    /* process.with_context: an immutable spawner */
    "local S = {}\n"
    "local SMT = {__index = S, __metatable = false}\n"
    "local function mksp(c, name, msgs) return setmetatable({ctx_ = c, name_ = name, msgs_ = msgs}, SMT) end\n"
    "local function merged(a, b)\n"
    "  if type(b) ~= 'table' then error('with_context: expected a table of values', 3) end\n"
    "  local r = {}\n"
    "  for k, v in pairs(a) do r[k] = v end\n"
    "  for k, v in pairs(b) do\n"
    "    if type(k) ~= 'string' then error('with_context: keys must be strings', 3) end\n"
    "    r[k] = v\n"
    "  end\n"
    "  return r\n"
    "end\n"
    "function S:with_context(v) return mksp(merged(self.ctx_, v), self.name_, self.msgs_) end\n"
    "function S:with_actor(a) return self end\n"
    "function S:with_scope(s) return self end\n"
    "function S:with_options(o) return self end\n"
    "function S:with_name(n)\n"
    "  if type(n) ~= 'string' or n == '' then error('with_name: expected a name', 2) end\n"
    "  return mksp(self.ctx_, n, self.msgs_)\n"
    "end\n"
    "function S:with_message(topic, ...)\n"
    "  local m = {}\n"
    "  for i, x in G.ipairs(self.msgs_) do m[i] = x end\n"
    "  m[#m + 1] = {topic, select('#', ...), ...}\n"
    "  return mksp(self.ctx_, self.name_, m)\n"
    "end\n"
    "local function spawner(mode)\n"
    "  return function(self, id, hst, ...)\n"
    "    local text, err = json.encode(self.ctx_)\n"
    "    if text == nil then return nil, 'with_context: ' .. tostring(err) end\n"
    "    if text == '[]' then text = '{}' end\n"
    "    local pid, wait = host.fid_spawn(mode, text, id, hst, ...)\n"
    "    if pid == nil then return nil, wait end\n"
    "    if self.name_ then\n"
    "      local ok, e = process.registry.register(self.name_, pid)\n"
    "      if not ok then process.terminate(pid); return nil, e end\n"
    "    end\n"
    "    for _, m in G.ipairs(self.msgs_) do process.send(pid, m[1], G.table.unpack(m, 3, m[2] + 2)) end\n"
    "    return pid, wait\n"
    "  end\n"
    "end\n"
    /* process.exec: spawn, then block until the child ends: its value, or nil and its error */
    "local function exec_result(pid, wait)\n"
    "  if pid == nil then return nil, wait end\n"
    "  local ev = wait:receive()\n"
    "  local r = type(ev) == 'table' and ev.result or {error = 'exec: result lost'}\n"
    "  if r.error ~= nil then return nil, r.error end\n"
    "  return r.value\n"
    "end\n"
    "local spawn_exec = spawner(4)\n"
    "function S:exec(id, hst, ...) return exec_result(spawn_exec(self, id, hst, ...)) end\n"
    "function process.exec(id, hst, ...) return exec_result(host.fid_spawn(4, nil, id, hst, ...)) end\n"
    "S.spawn = spawner(0)\n"
    "S.spawn_monitored = spawner(1)\n"
    "S.spawn_linked = spawner(2)\n"
    "S.spawn_linked_monitored = spawner(3)\n"
    "function process.with_context(values) return mksp(merged({}, values), nil, {}) end\n"
    "process.listen, process.unlisten = host.fid_listen, host.fid_unlisten\n"
    /* funcs: function.lua entries, run synchronously in the caller's instance */
    "local pcall = safe.pcall\n"
    "local function fcall(id, ...)\n"
    "  if type(id) ~= 'string' or id == '' then\n"
    "    return nil, mkerr('funcs.call: target is empty', 'INVALID', false) end\n"
    "  if not id:find(':', 1, true) then\n"
    "    return nil, mkerr('funcs.call: namespace missing in ' .. id, 'INVALID', false) end\n"
    "  local f, why = host.fid_func(id)\n"
    "  if f == nil then return nil, mkerr(why, 'NOT_FOUND', false) end\n"
    "  local r = G.table.pack(pcall(f, ...))\n"
    "  if not r[1] then return nil, as_err(r[2], 'INTERNAL') end\n"
    "  if r[2] == nil and r[3] ~= nil then return nil, as_err(r[3]) end\n"
    "  return r[2]\n"
    "end\n"
    "local X = {}\n"
    "local XMT = {__index = X, __metatable = false}\n"
    "local function mkx() return setmetatable({}, XMT) end\n"
    "function X:with_context(v) return self end\n"
    "function X:with_actor(a) return self end\n"
    "function X:with_scope(s) return self end\n"
    "function X:with_options(o) return self end\n"
    "function X:call(id, ...) return fcall(id, ...) end\n"
    /* funcs.async: the call runs in a coroutine.spawn task of the caller; a Future */
    "local PL = {}\n"
    "local PLMT = {__index = PL, __metatable = false}\n"
    "function PL:data() return self.v_ end\n"
    "local F = {}\n"
    "local FMT = {__index = F, __metatable = false}\n"
    "function F:response() return self.ch_ end\n"
    "F.channel = F.response\n"
    "function F:is_complete() return self.done_ == true end\n"
    "function F:is_canceled() return self.canceled_ == true end\n"
    "function F:result()\n"
    "  if self.err_ ~= nil then return nil, self.err_ end\n"
    "  return self.value_\n"
    "end\n"
    "function F:error() return self.err_, self.err_ ~= nil end\n"
    "function F:cancel()\n"
    "  if self.done_ then return false, mkerr('funcs: the call already completed', 'INVALID', false) end\n"
    "  self.canceled_, self.done_ = true, true\n"
    "  self.err_ = mkerr('funcs: the call was canceled', 'CANCELED', false)\n"
    "  self.ch_:close()\n"
    "  return true\n"
    "end\n"
    "local unpack, pack = G.table.unpack, G.table.pack\n"
    "local function fasync(id, ...)\n"
    "  if type(id) ~= 'string' or id == '' then\n"
    "    return nil, mkerr('funcs.async: target is empty', 'INVALID', false) end\n"
    "  if not id:find(':', 1, true) then\n"
    "    return nil, mkerr('funcs.async: namespace missing in ' .. id, 'INVALID', false) end\n"
    "  local f, why = host.fid_func(id)\n"
    "  if f == nil then return nil, mkerr(why, 'NOT_FOUND', false) end\n"
    "  local fut = setmetatable({ch_ = safe.channel.new(1)}, FMT)\n"
    "  local args = pack(...)\n"
    "  safe.coroutine.spawn(function()\n"
    /* in a coroutine of its own, not pcall: blocking calls work there and a raise is caught */
    "    local co = safe.coroutine.create(f)\n"
    "    local r = pack(safe.coroutine.resume(co, unpack(args, 1, args.n)))\n"
    "    if fut.canceled_ then return end\n"
    "    fut.done_ = true\n"
    "    if not r[1] then fut.err_ = as_err(r[2], 'INTERNAL')\n"
    "    elseif r[2] == nil and r[3] ~= nil then fut.err_ = as_err(r[3]) end\n"
    "    if fut.err_ ~= nil then fut.ch_:close(); return end\n"
    "    fut.value_ = setmetatable({v_ = r[2]}, PLMT)\n"
    "    fut.ch_:send(fut.value_)\n"
    "  end)\n"
    "  return fut\n"
    "end\n"
    "X.async = function(self, id, ...) return fasync(id, ...) end\n"
    "modules.funcs = readonly({call = fcall, async = fasync, new = mkx})\n"
    "return host.fid_import\n";

/* host.extend(modules, safe, process, readonly, G): runs fid_lua; returns the import
   function. */
static int h_extend(lua_State *L)
{
    lua_settop(L, 5);
    if (luaL_loadbufferx(L, fid_lua, sizeof fid_lua - 1, "=relay-fidelity", "t") != LUA_OK)
        return lua_error(L);
    lua_insert(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1)); /* host */
    lua_call(L, 6, 1);
    return 1;
}

void rl_lua_fid_host(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"fid_import", h_import}, {"fid_env_get", h_env_get}, {"fid_env_all", h_env_all},
        {"fid_ctx", h_ctx},       {"fid_spawn", h_spawn},     {"fid_func", h_func},
        {"fid_listen", h_listen}, {"fid_unlisten", h_unlisten},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, h_extend, 1);
    lua_setfield(L, -2, "extend");
}
