/* The Lua plugin host: one lua_State per node; every plugin instance is a coroutine with its own
 * _ENV running the plugin's chunk (compiled once per source), scheduled from the node's loop.
 *
 * Shape of an instance: an rl_proc (mailbox, pid) + a coroutine anchored by a registry ref.
 * The coroutine first runs the shared chunk with the instance's env as its only argument
 * ("local _ENV = ...;" is prepended to every source, on the first line so line numbers stay),
 * then the prelude's boot(mod, env, method, args), which calls method(args) (boot_method).
 * Resumes happen only from the node's scheduler (ops->run after rl_proc_wake), never nested
 * inside another instance: blocking calls (channel receive/select/send, time.sleep) yield with a continuation
 * and are woken by the channel or timer they wait on. A count hook enforces the instruction
 * budget per resume; the allocator enforces the state's memory cap. */
#include "rl_errors.h"
#include "rl_lua.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_lua_int.h"
#include "rl_lua_types.h"
#include "rl_metrics.h"

rl_lua_host rl_lua_g;
#define H rl_lua_g

/* jemalloc's options, read at its start (the node links it; glibc and the sanitizers ignore
   the symbol; MALLOC_CONF in the environment still adds to it): pages freed in bulk (a dead
   instance's heap, tens of MiB) are handed back to the kernel by jemalloc's own thread, not in
   madvise bursts inside the loop turn that freed them (docs/performance.md, "A misbehaving
   plugin"). */
extern const char *malloc_conf;
const char *malloc_conf = "background_thread:true,max_background_threads:1";

static uint64_t hook_step;

static const char *const limit_names[RL_REFUSAL_COUNT] = {
#define RL_LIMIT_NAME(id, name) name,
    RL_LUA_LIMITS(RL_LIMIT_NAME) RL_LUA_USER_LIMITS(RL_LIMIT_NAME)
#undef RL_LIMIT_NAME
};

/* Trusted setup code, run once with the full standard library: builds the sandbox (safe
   globals, read-only library proxies, require, logger, security) and boot(). */
static const char prelude[] =
    "local host, G, json, time, process, channel = ...\n"
    "local type, pairs, next, error, rawset, rawget, tostring, select =\n"
    "  G.type, G.pairs, G.next, G.error, G.rawset, G.rawget, G.tostring, G.select\n"
    "local setmetatable, getmetatable = G.setmetatable, G.getmetatable\n"
    /* A library table is shared by every instance: plugins get an empty proxy whose metatable
       is locked, and ro maps each proxy to its table. No path hands out the table itself:
       __pairs iterates it through ronext, and next/rawget/rawlen/rawset below read through or
       refuse. Table fields become proxies too, so nested tables are covered. */
    "local ro = setmetatable({}, {__mode = 'k'})\n"
    "local made = setmetatable({}, {__mode = 'k'})\n"
    "local function deny() error('attempt to modify a read-only table', 2) end\n"
    "local function ronext(p, k) return next(ro[p], k) end\n"
    "local function readonly(t)\n"
    "  if ro[t] then return t end\n"
    "  if made[t] then return made[t] end\n"
    "  local p = setmetatable({}, {__index = t, __newindex = deny,\n"
    "    __len = function() return #t end,\n"
    "    __pairs = function(q) return ronext, q, nil end, __metatable = false})\n"
    "  ro[p] = t\n"
    "  made[t] = p\n"
    "  for k, v in next, t do\n"
    "    if type(v) == 'table' then rawset(t, k, readonly(v)) end\n"
    "  end\n"
    "  return p\n"
    "end\n"
    "local function copy(t, skip)\n"
    "  local c = {}\n"
    "  for k, v in pairs(t) do if not (skip and skip[k]) then c[k] = v end end\n"
    "  return c\n"
    "end\n"
    "local safe = {}\n"
    "for _, k in G.ipairs({'assert', 'error', 'ipairs', 'next', 'pairs', 'pcall', 'rawequal',\n"
    "    'rawget', 'rawlen', 'select', 'tonumber', 'tostring', 'type', 'xpcall',\n"
    "    'getmetatable', '_VERSION'}) do safe[k] = G[k] end\n"
    /* A hub plugin's run(args) makes user_metadata and user_hub_pid on first use (rl_lua.c,
       push_hub_args): every way to look at the table without indexing it makes them first. */
    "local args_fill = host.args_fill\n"
    "safe.setmetatable = function(t, mt)\n"
    "  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then\n"
    "    error('__gc metamethods are not allowed', 2) end\n"
    "  if getmetatable(t) == false then args_fill(t) end\n"
    "  return setmetatable(t, mt)\n"
    "end\n"
    "safe.getmetatable = function(t)\n"
    "  local m = getmetatable(t)\n"
    "  if m == false and args_fill(t) then return getmetatable(t) end\n"
    "  return m\n"
    "end\n"
    "safe.rawset = function(t, k, v)\n"
    "  if ro[t] then error('attempt to modify a read-only table', 2) end\n"
    "  return rawset(t, k, v)\n"
    "end\n"
    "local rawlen = G.rawlen\n"
    "safe.next = function(t, k)\n"
    "  if k == nil then args_fill(t) end\n"
    "  return next(ro[t] or t, k)\n"
    "end\n"
    "safe.rawget = function(t, k)\n"
    "  if k == 'user_metadata' or k == 'user_hub_pid' then args_fill(t) end\n"
    "  return rawget(ro[t] or t, k)\n"
    "end\n"
    "safe.rawlen = function(t) return rawlen(ro[t] or t) end\n"
    /* The instruction budget is final: once the running instance is doomed (budget, memory,
       terminate), every function that catches errors raises again instead of returning, so
       no pcall, xpcall or coroutine.resume/close loop outlives it. */
    "local doomed = host.doomed\n"
    "local function pass(ok, ...)\n"
    "  local d = doomed()\n"
    "  if d then error(d, 0) end\n"
    "  return ok, ...\n"
    "end\n"
    "local pcall, xpcall = G.pcall, G.xpcall\n"
    "safe.pcall = function(f, ...) return pass(pcall(f, ...)) end\n"
    "safe.xpcall = function(f, h, ...) return pass(xpcall(f, h, ...)) end\n"
    "safe.load = function(chunk, name, mode, env)\n"
    "  if type(chunk) ~= 'string' then return nil, 'load: only text chunks (strings) are accepted' end\n"
    "  if mode ~= nil and mode ~= 't' then return nil, 'load: binary chunks are not allowed' end\n"
    "  if env == nil then env = host.env() end\n"
    "  return G.load(chunk, name or '=(load)', 't', env)\n"
    "end\n"
    "safe.print = function(...)\n"
    "  local parts = {}\n"
    "  for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end\n"
    "  host.log('info', 'print', G.table.concat(parts, '\\t'))\n"
    "end\n"
    "safe.collectgarbage = function(opt)\n"
    "  if opt == 'count' then return G.collectgarbage('count') end\n"
    "  return 0\n"
    "end\n"
    "local strlib = copy(G.string, {dump = true})\n"
    "safe.string = readonly(strlib)\n"
    "local smt = getmetatable('')\n"
    "smt.__index = safe.string\n"
    "smt.__metatable = false\n"
    "safe.table = readonly(copy(G.table))\n"
    "safe.math = readonly(copy(G.math, {randomseed = true}))\n"
    "safe.utf8 = readonly(copy(G.utf8))\n"
    "local colib = copy(G.coroutine)\n"
    "colib.spawn = host.co_spawn\n" /* scheduler-run coroutines (rl_lua.c tasks) */
    "colib.create = host.co_create\n" /* always counted (see counting long runs) */
    "local resume, coclose, cocreate = colib.resume, colib.close, colib.create\n"
    /* A blocking call inside a coroutine the plugin made yields host.block (rl_lua_block):
       the resume that sees it blocks its own coroutine in turn, up to the instance's, and once
       woken resumes the inner one again, which retries the call. So blocking works at any
       depth; only a resume inside a C call (a sort comparator) cannot, and says so. */
    "local BLOCK, unblock, coyield = host.block, host.unblock, G.coroutine.yield\n"
    "local function relay(co, ok, ...)\n"
    "  if ok and select('#', ...) == 1 and ... == BLOCK then\n"
    "    if not pcall(coyield, BLOCK) then\n"
    "      unblock()\n"
    "      error('attempt to block across a C-call boundary (a coroutine resumed inside a '\n"
    "        .. 'metamethod, an iterator or a callback of a C function)', 0)\n"
    "    end\n"
    "    return relay(co, resume(co))\n"
    "  end\n"
    "  return ok, ...\n"
    "end\n"
    "colib.resume = function(co, ...) return pass(relay(co, resume(co, ...))) end\n"
    "colib.close = function(co) return pass(coclose(co)) end\n"
    "local coresume = colib.resume\n"
    "local function unwrap(ok, ...)\n"
    "  if ok then return ... end\n"
    "  local e = ...\n"
    "  if type(e) == 'string' then error(e, 2) end\n"
    "  error(e, 0)\n"
    "end\n"
    "colib.wrap = function(f)\n"
    "  local co = cocreate(f)\n"
    "  return function(...) return unwrap(coresume(co, ...)) end\n"
    "end\n"
    "safe.coroutine = readonly(colib)\n"
    "safe.os = readonly({time = G.os.time, clock = G.os.clock, date = G.os.date,\n"
    "  difftime = G.os.difftime})\n"
    /* durations are integers of nanoseconds; give them the platform's Duration accessors
       (hours/minutes/seconds as floats, the smaller units as integers truncated toward 0) */
    "local function trunc(x) if x < 0 then return -G.math.floor(-x) end return G.math.floor(x) end\n"
    "G.debug.setmetatable(0, {__metatable = false, __index = readonly({\n"
    "  hours = function(d) return d / 3.6e12 end, minutes = function(d) return d / 6e10 end,\n"
    "  seconds = function(d) return d / 1e9 end,\n"
    "  milliseconds = function(d) return trunc(d / 1e6) end,\n"
    "  microseconds = function(d) return trunc(d / 1e3) end,\n"
    "  nanoseconds = function(d) return trunc(d) end})})\n"
    "process.event = readonly({CANCEL = 'pid.cancel', EXIT = 'pid.exit',\n"
    "  LINK_DOWN = 'pid.link.down', OUTDATED = 'pid.outdated'})\n"
    "process.registry = readonly(process.registry)\n"
    "safe.process = readonly(process)\n"
    "safe.channel = readonly(channel)\n"
    "local Logger = {}\n"
    "local LMT = {__index = Logger, __metatable = false}\n"
    "local function mklogger(name, fields)\n"
    "  return setmetatable({name = name, fields = fields}, LMT)\n"
    "end\n"
    "local function merge(a, b)\n"
    "  if type(b) ~= 'table' then return a end\n"
    "  local r = {}\n"
    "  if a then for k, v in pairs(a) do r[k] = v end end\n"
    "  for k, v in pairs(b) do r[k] = v end\n"
    "  return r\n"
    "end\n"
    "function Logger:named(n)\n"
    "  n = tostring(n)\n"
    "  return mklogger(self.name and (self.name .. '.' .. n) or n, self.fields)\n"
    "end\n"
    "function Logger:with(f) return mklogger(self.name, merge(self.fields, f)) end\n"
    "for _, lvl in G.ipairs({'debug', 'info', 'warn', 'error'}) do\n"
    "  Logger[lvl] = function(self, msg, f)\n"
    "    host.log(lvl, self.name, tostring(msg), merge(self.fields, f))\n"
    "  end\n"
    "end\n"
    "local Actor = {}\n"
    "local AMT = {__index = Actor, __metatable = false}\n"
    "function Actor:id() return self.id_ end\n"
    "function Actor:meta() return self.meta_ end\n"
    "local function mkactor(id, meta) return setmetatable({id_ = id, meta_ = meta or {}}, AMT) end\n"
    "local security = {\n"
    "  actor = function() local id, meta = host.actor(); if id == nil then return nil end\n"
    "    return mkactor(id, meta) end,\n"
    "  new_actor = function(id, meta) return mkactor(id, meta) end,\n"
    "  scope = host.security.scope, named_scope = host.security.named_scope,\n"
    "  policy = host.security.policy, new_scope = host.security.new_scope,\n"
    "  can = host.security.can,\n"
    "}\n"
    "local modules = {json = readonly(json), time = readonly(time), uuid = readonly(host.uuid),\n"
    "  logger = readonly(mklogger(nil, nil)), security = readonly(security)}\n"
    "modules.http_client = readonly(host.http)\n"
    "modules.http = modules.http_client\n"
    "modules.pg = readonly(host.pg)\n"
    /* errors, env, ctx, funcs, process.with_context and imports: rl_lua_fid.c */
    "local import = host.extend(modules, safe, process, readonly, G)\n"
    "safe.require = function(name)\n"
    "  local m = modules[name]\n"
    "  if m == nil and type(name) == 'string' then m = import(name) end\n"
    "  if m == nil then error(\"module '\" .. tostring(name) .. \"' not found\", 2) end\n"
    "  return m\n"
    "end\n"
    /* boot(mod, env, method, ...): the second half of an instance's start (inst_resume). */
    "local function boot(mod, env, method, ...)\n"
    "  local f\n"
    "  if type(mod) == 'table' then f = mod[method] end\n"
    "  if f == nil then f = rawget(env, method) end\n"
    "  if type(f) ~= 'function' then\n"
    "    error(\"plugin has no function '\" .. method .. \"'\", 0) end\n"
    "  return f(...)\n"
    "end\n"
    "return safe, {__index = safe, __metatable = false}, boot, readonly\n";

/* The instance a coroutine.spawn task belongs to, or I itself. */
static rl_lua_inst *main_of(const rl_lua_inst *I)
{
    return I && I->aux && I->aux->main ? I->aux->main : (rl_lua_inst *)I;
}

static const char *doomed_self(const rl_lua_inst *I);

/* ---- memory ---------------------------------------------------------------------------- */

/* Small blocks: Lua makes and drops the same few sizes for every message (tables, their node
   arrays, short strings, userdata). Blocks up to RL_LUA_POOL_MAX bytes are kept on free lists
   per 16-byte class and handed out again, so a routed message rarely reaches the general
   allocator. What the lists hold is bounded in bytes (the live Lua heap, at least RL_LUA_POOL_MIN,
   at most RL_LUA_POOL_CAP): 1,024 blocks a class sent each collection's surplus to free() and
   the next cycle's blocks back to malloc() (12.6 calls a round trip at 1,000 connections; 5.2
   with 4 MiB), while 32 MiB of free blocks made every allocation a cache miss on a cold block
   with 15,000 idle users (100 active users' rate 0.64x of a node without them; 0.88x+ at 4 MiB).
   The lists are emptied when the node goes quiet (gc_quiet_tick). Sanitized builds skip the lists so that ASan sees every
   block's life. Lua always tells the size of a block it frees or resizes, which picks the list. */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_ON 0
#else
#define POOL_ON 1
#endif
#define POOL_CLASS 16
#define POOL_CLASSES (RL_LUA_POOL_MAX / POOL_CLASS)

typedef struct pool_block {
    struct pool_block *next;
} pool_block;

static struct {
    pool_block *head;
    size_t n;
} pool[POOL_CLASSES + 1];
static size_t pool_bytes; /* held by every list */

static int pooled(size_t n) { return POOL_ON && n > 0 && n <= RL_LUA_POOL_MAX; }
static size_t pool_class(size_t n) { return (n + POOL_CLASS - 1) / POOL_CLASS; }

/* The first block of list c, NULL when it is empty. */
static inline pool_block *pool_pop(size_t c)
{
    pool_block *b = pool[c].head;
    if (b) {
        pool[c].head = b->next;
        /* the list's blocks were freed by a sweep long ago and are out of the cache: fetch
           the next one now, while Lua fills this one */
        __builtin_prefetch(b->next, 1, 3);
        pool[c].n--;
        pool_bytes -= c * POOL_CLASS;
    }
    return b;
}

static void *pool_get(size_t n)
{
    size_t c = pool_class(n);
    pool_block *b = pool_pop(c);
    return b ? b : malloc(c * POOL_CLASS);
}

static inline void pool_put(void *p, size_t n)
{
    size_t c = pool_class(n);
    size_t bound = H.bytes < RL_LUA_POOL_MIN ? RL_LUA_POOL_MIN : H.bytes;
    if (bound > RL_LUA_POOL_CAP)
        bound = RL_LUA_POOL_CAP;
    if (pool_bytes + c * POOL_CLASS > bound) {
        free(p);
        return;
    }
    pool_block *b = p;
    b->next = pool[c].head;
    pool[c].head = b;
    pool[c].n++;
    pool_bytes += c * POOL_CLASS;
}

size_t rl_lua_pool_bytes(void) { return pool_bytes; }

static void pool_drain(void)
{
    for (size_t c = 0; c <= POOL_CLASSES; c++) {
        while (pool[c].head) {
            pool_block *b = pool[c].head;
            pool[c].head = b->next;
            free(b);
        }
        pool[c].n = 0;
    }
    pool_bytes = 0;
}

static void *block_alloc(size_t n) { return pooled(n) ? pool_get(n) : malloc(n); }

static void block_free(void *p, size_t n)
{
    if (pooled(n))
        pool_put(p, n);
    else
        free(p);
}

/* realloc() for Lua's blocks: a block of a pooled size came from pool_get. */
static void *block_realloc(void *p, size_t osize, size_t nsize)
{
    if (!p)
        return block_alloc(nsize);
    if (!pooled(osize) && !pooled(nsize))
        return realloc(p, nsize);
    if (pooled(osize) && pooled(nsize) && pool_class(osize) == pool_class(nsize))
        return p; /* the same class: the block already has room */
    void *np = block_alloc(nsize);
    if (!np)
        return NULL;
    memcpy(np, p, osize < nsize ? osize : nsize);
    block_free(p, osize);
    return np;
}

/* Memory per instance. Every block carries a header with the account it is charged to: the
   instance that was running when it was made (a task's is its instance's), 0 for the host. A
   block is charged to that account until it is freed, whoever frees it (the collector runs
   during any resume), so an account is what the instance made and is still alive, plus the
   message bodies it holds (rl_lua_mem_hold). An account outlives its instance until its last
   byte is gone (strings and tables another instance still uses). */
#define BLK_HDR_SIZE 8 /* keeps Lua's 8-byte alignment (LUAI_MAXALIGN on 64-bit) */
/* The header's size: BLK_HDR_SIZE, or 0 when plugin_memory_limit is 0 at start (no accounts:
   an idle instance's 21 blocks cost 144 bytes less). Fixed for the state's life. */
static size_t blk_hdr = BLK_HDR_SIZE;
#define BLK_HDR blk_hdr

typedef struct mem_acct {
    size_t bytes;
    uint32_t live;      /* 1 while its instance exists */
    uint32_t next_free; /* free list, when neither live nor holding bytes */
} mem_acct;

static mem_acct *accts;
static uint32_t nacct, acct_free;

static uint32_t current_acct(void) { return H.current ? main_of(H.current)->mem_acct : 0; }

static void acct_put(uint32_t a)
{
    accts[a].next_free = acct_free;
    acct_free = a;
}

static inline void acct_charge(uint32_t a, size_t add, size_t sub)
{
    if (!a || a >= nacct)
        return;
    accts[a].bytes = accts[a].bytes + add - sub;
    if (__builtin_expect(!accts[a].live, 0) && accts[a].bytes == 0 && sub)
        acct_put(a);
}

/* A new account (0 when none can be had: the instance is then only under the node's cap). */
static uint32_t acct_new(void)
{
    if (!BLK_HDR)
        return 0;
    if (!acct_free) {
        uint32_t n = nacct ? nacct * 2 : 64;
        mem_acct *na = realloc(accts, n * sizeof *na);
        if (!na)
            return 0;
        accts = na;
        for (uint32_t i = n; i-- > (nacct ? nacct : 1);) {
            memset(&accts[i], 0, sizeof accts[i]);
            acct_put(i);
        }
        if (!nacct)
            memset(&accts[0], 0, sizeof accts[0]);
        nacct = n;
    }
    uint32_t a = acct_free;
    acct_free = accts[a].next_free;
    accts[a].bytes = 0;
    accts[a].live = 1;
    return a;
}

static void acct_release(uint32_t a)
{
    if (!a || a >= nacct || !accts[a].live)
        return;
    accts[a].live = 0;
    if (accts[a].bytes == 0)
        acct_put(a);
}

void rl_lua_mem_hold(uint32_t acct, size_t add, size_t sub)
{
    acct_charge(acct, add, sub);
    H.bytes = H.bytes + add - sub;
    rl_metric_set(RL_M_LUA_BYTES, H.bytes);
}

size_t rl_lua_mem_of(const rl_lua_inst *I)
{
    return I->mem_acct && I->mem_acct < nacct ? accts[I->mem_acct].bytes : 0;
}

/* A refused allocation of the running instance: Lua collects and retries once, so a second
   refusal in a row means it really is over (the node's cap: out of memory; its own cap: the
   per-instance limit, a limit violation). */
static void refused(int own_cap)
{
    rl_lua_inst *I = H.current;
    if (!I || ++I->oom_refusals < 2)
        return;
    if (!own_cap) {
        I->oom = 1;
        return;
    }
    rl_lua_inst *M = main_of(I);
    if (!doomed_self(M)) {
        M->limit_kind = RL_LIMIT_MEMORY;
        M->limit_hit = "memory limit of the instance exceeded (plugin_memory_limit)";
    }
}

static void count_hook(lua_State *L, lua_Debug *ar);

/* The hook of the running instance's own coroutine at its next instruction (the thread the
   allocator runs in may be a coroutine of the plugin: its own hook comes within hook_step).
   lua_sethook may be called at any time, from the allocator too. */
static void hook_soon(rl_lua_inst *I)
{
    if (hook_step && I->co)
        lua_sethook(I->co, count_hook, LUA_MASKCOUNT, 1);
}

/* Allocation is work the instruction count does not see (one string.rep of 1 MiB is one
   instruction): every RL_LUA_ALLOC_INSN bytes allocated count as one instruction, for the
   budget and for the slices, so that an instance that allocates fast is preempted as soon as
   one that computes (8 MiB a run were 2-4 ms without a slice). */
static void charge_alloc(rl_lua_inst *I, size_t grown)
{
    if (!hook_step || grown < RL_LUA_ALLOC_INSN) /* most blocks: nothing to count */
        return;
    uint64_t before = I->used;
    I->used += grown / RL_LUA_ALLOC_INSN;
    if (before / RL_LUA_PREEMPT != I->used / RL_LUA_PREEMPT && !I->preempt_due) {
        I->preempt_due = 1;
        hook_soon(I);
    }
}

/* The running instance would go over plugin_memory_limit. Refusing the block makes Lua
   collect the whole state, every user's objects, before it retries: a median 9 ms each with
   100 users in the hostile bench, once or more for each life of a plugin that goes back to its
   cap. So the block is granted instead when the instance stays within a quarter of its cap
   over it, and the instance's next hook decides (cap_check): a young collection, and the end
   of the instance if that leaves it over. Returns 0 to refuse (past the slack, or no hook to
   decide: the old way, Lua's full collection then the end of the instance). */
static int over_own_cap(size_t would)
{
    size_t cap = H.cfg->plugin_memory_limit;
    if (!hook_step || would > cap + cap / 4)
        return 0;
    rl_lua_inst *M = main_of(H.current);
    if (!M->mem_over) {
        M->mem_over = 1;
        hook_soon(H.current);
    }
    return 1;
}

/* The books of block np, now nsize bytes for Lua (old before), charged to acct: its header,
   the host's and the account's bytes, and what the running instance allocated. Returns what
   Lua gets. */
static inline void *granted(void *np, uint32_t acct, size_t old, size_t nsize)
{
    if (BLK_HDR)
        *(uint32_t *)np = acct;
    H.bytes = H.bytes - old + nsize;
    acct_charge(acct, nsize, old);
    if (nsize > old) {
        H.allocated += nsize - old;
        if (H.current) {
            H.current->oom_refusals = 0;
            charge_alloc(H.current, nsize - old);
        }
    }
    rl_metric_set(RL_M_LUA_BYTES, H.bytes);
    return (char *)np + BLK_HDR;
}

/* An allocation that makes, grows or shrinks a block: the caps, then the bookkeeping. Kept out
   of host_alloc so that the frees (more than half the calls) run without its register saves. */
__attribute__((noinline)) static void *host_resize(char *real, size_t old, size_t nsize)
{
    uint32_t cur = BLK_HDR ? current_acct() : 0, acct = real && BLK_HDR ? *(uint32_t *)real : cur;
    if (nsize > old && H.limit) {
        /* Host work (spawning) gets a little headroom so a plugin at the cap fails first. */
        size_t cap = H.limit + (H.current ? 0 : H.headroom);
        if (H.bytes - old + nsize > cap) {
            refused(0);
            return NULL;
        }
    }
    if (nsize > old && acct && acct == cur && H.cfg->plugin_memory_limit &&
        accts[acct].bytes - old + nsize > H.cfg->plugin_memory_limit &&
        !over_own_cap(accts[acct].bytes - old + nsize)) {
        refused(1);
        return NULL;
    }
    void *np = block_realloc(real, real ? old + BLK_HDR : 0, nsize + BLK_HDR);
    return np ? granted(np, acct, old, nsize) : NULL;
}


/* A new block of a pooled size, taken off its free list when every cap has room for it: most
   of the allocations a message makes. 0 when the general path must decide. */
static inline void *pool_take(size_t nsize)
{
    if (!POOL_ON || nsize > RL_LUA_POOL_MAX - BLK_HDR)
        return NULL;
    size_t c = pool_class(nsize + BLK_HDR);
    if (!pool[c].head || (H.limit && H.bytes + nsize > H.limit))
        return NULL;
    uint32_t a = BLK_HDR ? current_acct() : 0;
    size_t own = H.cfg->plugin_memory_limit;
    if (a && (a >= nacct || (own && accts[a].bytes + nsize > own)))
        return NULL;
    return granted(pool_pop(c), a, 0, nsize);
}

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (nsize) {
        void *p = ptr ? NULL : pool_take(nsize);
        return p ? p : host_resize(ptr ? (char *)ptr - BLK_HDR : NULL, ptr ? osize : 0, nsize);
    }
    if (ptr) {
        rl_lua_block_freeing(ptr, osize);
        char *real = (char *)ptr - BLK_HDR;
        acct_charge(BLK_HDR ? *(uint32_t *)real : 0, 0, osize);
        block_free(real, osize + BLK_HDR);
        H.bytes -= osize;
        rl_metric_set(RL_M_LUA_BYTES, H.bytes);
    }
    return NULL;
}

static int host_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    RL_PANIC("unprotected Lua error: %s", msg ? msg : "?");
}

size_t rl_lua_memory(void) { return H.bytes; }

/* ---- helpers shared with the other modules --------------------------------------------- */

rl_lua_inst *rl_lua_current(lua_State *L)
{
    if (!H.current)
        luaL_error(L, "not inside a plugin process");
    return main_of(H.current);
}

rl_lua_inst *rl_lua_running(lua_State *L)
{
    if (!H.current)
        luaL_error(L, "not inside a plugin process");
    return H.current;
}

void rl_lua_check_block(lua_State *L, rl_lua_inst *I)
{
    (void)I; /* its own coroutine, or one of the plugin's below it (rl_lua_block) */
    if (!lua_isyieldable(L))
        luaL_error(L, "attempt to block across a C-call boundary (inside a metamethod, an "
                      "iterator or a callback of a C function)");
}

/* The value a blocking call inside a plugin's own coroutine yields to the prelude's resume. */
static char block_token;

int rl_lua_block(lua_State *L, rl_lua_inst *I, lua_KContext ctx, lua_KFunction k)
{
    I->state = RL_INST_BLOCKED;
    if (L == I->co)
        return lua_yieldk(L, 0, ctx, k);
    lua_pushlightuserdata(L, &block_token);
    return lua_yieldk(L, 1, ctx, k);
}

static int h_block_unblock(lua_State *L)
{
    rl_lua_inst *I = rl_lua_running(L); /* the block could not reach the instance: undo it */
    rl_lua_unwait(I);
    I->state = RL_INST_RUNNING;
    return 0;
}

void *rl_lua_ref_udata(int ref)
{
    if (!H.L || ref < 0)
        return NULL;
    lua_rawgeti(H.L, LUA_REGISTRYINDEX, ref);
    void *p = lua_touserdata(H.L, -1);
    lua_pop(H.L, 1);
    return p;
}

uint64_t rl_lua_rand(void)
{
    uint64_t x = H.rng ? H.rng : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return H.rng = x;
}

size_t rl_lua_ndefs(void) { return H.cfg ? H.cfg->nplugins + H.cfg->nlua_entries : 0; }

const rl_plugin_def *rl_lua_def_at(size_t i)
{
    return i < H.cfg->nplugins ? &H.cfg->plugins[i] : &H.cfg->lua_entries[i - H.cfg->nplugins];
}

const rl_plugin_def *rl_lua_find_def(const char *s)
{
    if (!H.cfg)
        return NULL;
    for (size_t i = 0; i < rl_lua_ndefs(); i++) {
        const rl_plugin_def *d = rl_lua_def_at(i);
        if ((d->id && strcmp(d->id, s) == 0) || (d->name && strcmp(d->name, s) == 0))
            return d;
    }
    return NULL;
}

static ssize_t def_index(const rl_plugin_def *def)
{
    for (size_t i = 0; i < rl_lua_ndefs(); i++)
        if (rl_lua_def_at(i) == def)
            return (ssize_t)i;
    for (size_t i = 0; i < rl_lua_ndefs(); i++) {
        const rl_plugin_def *d = rl_lua_def_at(i);
        if (def->id && d->id && strcmp(d->id, def->id) == 0 && d->lua_kind == def->lua_kind)
            return (ssize_t)i;
    }
    return -1;
}

int rl_lua_chunk_of(const rl_plugin_def *def)
{
    ssize_t i = def_index(def);
    return i < 0 ? LUA_NOREF : H.chunk_refs[i];
}

/* ---- scheduling: instances are processes in the node's one run queue ---------------------- */

/* A long run yields its slice to the run queue, and its next slice waits until
   RL_LUA_SLOW_FACTOR times the last one has passed, as long as other instances start runs in
   between: a plugin that computes takes at most about a quarter of a busy node (one slice per
   loop turn took half of it next to 100 busy users, and their p99 went 2-3x), and all of an
   idle one. The instance stays in the run queue meanwhile (the loop polls without blocking). */
#define RL_LUA_SLOW_FACTOR 3


static void runq_push(rl_lua_inst *I)
{
    if (!I->torn)
        rl_proc_wake(&I->proc);
}

void rl_lua_wake(rl_lua_inst *I)
{
    rl_lua_unwait(I);
    if (I->state != RL_INST_BLOCKED)
        return;
    I->state = RL_INST_READY;
    runq_push(I);
}

/* ---- instance life --------------------------------------------------------------------- */

static void list_remove(rl_lua_inst *I)
{
    if (!I->listed)
        return;
    if (I->prev)
        I->prev->next = I->next;
    else
        H.insts = I->next;
    if (I->next)
        I->next->prev = I->prev;
    I->listed = 0;
}

/* A message the instance ends without reading (still in its mailbox or its inbox channel): a
   client's request is answered plugin_failed with its request_id, as the hub answers the ones
   that come after; anything else is counted as dropped. Takes m. */
static void inst_orphan(rl_proc *p, rl_msg *m)
{
    if (m->topic == RL_T_APP && (m->flags & RL_MSG_CLIENT) && m->from[0]) {
        size_t len;
        const char *rid = rl_msg_request_id(m, &len);
        rl_err_send(p, m->from, RL_E_PLUGIN_FAILED, "Plugin ended before it read the message",
                    rid, len);
    } else {
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
    rl_msg_free(m);
}

/* process.upgrade of the running instance, done when its resume returns (rl_lua_upgrade_request):
   one at a time, as only one instance runs. */
static struct {
    rl_lua_inst *I;
    const rl_plugin_def *def;
    char *args; /* JSON array of nargs run() arguments */
    int nargs;
} upgrade;

static void upgrade_drop(void)
{
    free(upgrade.args);
    memset(&upgrade, 0, sizeof upgrade);
}

/* Releases everything Lua-side and on the loop; the struct stays until ops->free. */
static void inst_teardown(rl_lua_inst *I)
{
    if (I->torn)
        return;
    I->torn = 1;
    I->state = RL_INST_DEAD;
    if (upgrade.I == I)
        upgrade_drop();
    rl_owner_use *u = I->user_counted ? rl_owner_use_of(I->proc.owner) : NULL;
    if (u)
        u->procs--;
    I->user_counted = 0;
    rl_lua_unwait(I);
    while (I->timers) /* (the cancel deadline among them) */
        rl_lua_timer_close(I->timers);
    rl_lua_http_release(I);
    rl_lua_names_release(I->proc.pid);
    rl_lua_chan *in = rl_lua_ref_udata(I->inbox_ref);
    if (in) {
        rl_msg *m;
        while ((m = rl_lua_chan_take(in))) /* what it never read is answered, not dropped */
            inst_orphan(&I->proc, m);
        rl_lua_chan_set_owner(in, NULL); /* the channel may outlive the process */
    }
    if (H.L) {
        /* The coroutine is left to the collector: lua_resetthread would run pending __close
           handlers outside any budget. */
        luaL_unref(H.L, LUA_REGISTRYINDEX, I->co_ref);
        luaL_unref(H.L, LUA_REGISTRYINDEX, I->env_ref);
        luaL_unref(H.L, LUA_REGISTRYINDEX, I->inbox_ref);
        luaL_unref(H.L, LUA_REGISTRYINDEX, I->events_ref);
    }
    I->co_ref = I->env_ref = I->inbox_ref = I->events_ref = LUA_NOREF;
    I->co = NULL;
    rl_lua_aux_free(I);
}

int rl_lua_child_add(rl_lua_inst *I, const char *pid)
{
    rl_lua_aux *A = rl_lua_aux_of(I);
    char **nc = A ? realloc(A->children, (A->nchildren + 1) * sizeof *nc) : NULL;
    if (!nc)
        return -ENOMEM;
    A->children = nc;
    if (!(nc[A->nchildren] = strdup(pid)))
        return -ENOMEM;
    A->nchildren++;
    rl_lua_inst *C = rl_lua_inst_of(pid);
    if (C)
        C->parent = I->proc.serial;
    return 0;
}

/* I ends: its parent forgets it, its children end too (children die with their plugin, and so
   with their user, whose hub cancels the plugin). */
static void family_release(rl_lua_inst *I)
{
    rl_proc *pp = I->parent ? rl_proc_by_serial(I->parent) : NULL;
    rl_lua_inst *P = pp ? rl_lua_inst_of(pp->pid) : NULL;
    rl_lua_aux *PA = P ? P->aux : NULL;
    for (uint32_t i = 0; PA && i < PA->nchildren; i++) {
        if (strcmp(PA->children[i], I->proc.pid) == 0) {
            free(PA->children[i]);
            PA->children[i] = PA->children[--PA->nchildren];
            break;
        }
    }
    I->parent = 0;
    while (I->aux && I->aux->nchildren) {
        char *pid = I->aux->children[--I->aux->nchildren];
        rl_lua_inst *C = rl_lua_inst_of(pid);
        free(pid);
        if (C) {
            C->parent = 0;
            if (H.open)
                rl_lua_kill(C, "parent exited");
        }
    }
}

/* Ends I: tears it down and exits its process (monitors get "pid.exit" with error). */
static void tasks_end(rl_lua_inst *I);

static void inst_finish(rl_lua_inst *I, const char *error, int quiet)
{
    if (I->torn)
        return;
    tasks_end(I);
    family_release(I);
    if (error && !quiet)
        rl_warn("lua", "plugin %s (%s) crashed: %s", I->def && I->def->id ? I->def->id : "?",
                I->proc.pid, error);
    else
        rl_debug("lua", "plugin %s (%s) exited%s%s", I->def && I->def->id ? I->def->id : "?",
                 I->proc.pid, error ? ": " : "", error ? error : "");
    inst_teardown(I);
    rl_proc_exit(&I->proc, error);
}

/* Takes I's pending exit error (NULL: none, or "terminated"); the caller frees it. */
static char *exit_pending_take(rl_lua_inst *I)
{
    char *why = I->aux ? I->aux->exit_pending : NULL;
    if (why)
        I->aux->exit_pending = NULL;
    return why;
}

void rl_lua_upgrade_request(rl_lua_inst *I, const rl_plugin_def *def, char *args_json, int nargs)
{
    upgrade_drop();
    if (I->exit_pending_set) { /* already ending */
        free(args_json);
        return;
    }
    upgrade.I = I;
    upgrade.def = def;
    upgrade.args = args_json;
    upgrade.nargs = nargs;
    I->exit_pending_set = 1; /* unwinds as a terminate(self) does; no EXIT, no exit value */
    free(exit_pending_take(I));
}

void rl_lua_kill(rl_lua_inst *I, const char *error)
{
    if (I->torn)
        return;
    if (I == H.current || (H.current && main_of(H.current) == I)) { /* exits when its resume
                                                                       (or its task's) returns */
        if (upgrade.I == I) { /* ends instead of upgrading */
            upgrade_drop();
            I->exit_pending_set = 0;
        }
        if (!I->exit_pending_set) {
            rl_lua_aux *A = error ? rl_lua_aux_of(I) : NULL;
            I->exit_pending_set = 1;
            if (A) /* out of memory: it exits with "terminated" */
                A->exit_pending = strdup(error);
        }
        return;
    }
    inst_finish(I, error, 0);
}

/* Copies the error object on top of co into buf without allocating in Lua. */
static const char *error_text(lua_State *co, char *buf, size_t n)
{
    int t = lua_type(co, -1);
    if (t == LUA_TSTRING)
        snprintf(buf, n, "%s", lua_tostring(co, -1));
    else if (t == LUA_TNUMBER && lua_isinteger(co, -1))
        snprintf(buf, n, "%lld", (long long)lua_tointeger(co, -1));
    else if (t == LUA_TNUMBER)
        snprintf(buf, n, "%.14g", (double)lua_tonumber(co, -1));
    else
        snprintf(buf, n, "(error object is a %s value)", lua_typename(co, t));
    return buf;
}

static const char *doomed_self(const rl_lua_inst *I)
{
    if (I->exit_pending_set)
        return I->aux && I->aux->exit_pending ? I->aux->exit_pending : "terminated";
    if (I->oom)
        return "not enough memory";
    if (I->budget_hit)
        return "instruction budget exceeded";
    return I->limit_hit;
}

const char *rl_lua_doomed(const rl_lua_inst *I)
{
    if (!I)
        return NULL;
    const char *d = doomed_self(I);
    return d || main_of(I) == I ? d : doomed_self(main_of(I)); /* a task dies with its instance */
}

static void doom(lua_State *L, rl_lua_inst *I);

/* A long run is cut into slices of RL_LUA_PREEMPT instructions: at the end of one the instance
   yields to the run queue (from its own coroutine, where a yield cannot be caught; inside a
   coroutine of the plugin or a C call it yields once back out) and runs on in the next loop
   turn, so sockets, timers and the other instances are served between its slices. The count
   goes on across them: the budget bounds a run from wake-up to wait, not a slice. */
static void preempt(lua_State *L, rl_lua_inst *I, uint64_t before)
{
    if (before / RL_LUA_PREEMPT != I->used / RL_LUA_PREEMPT)
        I->preempt_due = 1;
    if (!I->preempt_due)
        return;
    if (hook_step)
        lua_sethook(L, count_hook, LUA_MASKCOUNT, (int)hook_step); /* rl_lua_charge set it to 1 */
    if (L == I->co && lua_isyieldable(L)) {
        I->preempt_due = 0;
        I->preempted = 1;
        lua_yield(L, 0);
    }
}

/* Collections for instances at their cap: at most one per this long, and never more than a
   twentieth of the time (the young collection walks every instance's thread). */
#define RL_LUA_CAP_GC_GAP_NS 10000000ull

/* An instance went over its cap (over_own_cap). A young collection returns what it allocated
   and no longer uses; if it is still over, it ends (plugin_memory_limit). Until the next
   collection may run, the instance waits in the run queue as a preempted one does, or ends
   where it cannot yield (a coroutine of the plugin, a C call). Returns 1 when it yielded. */
static int cap_check(lua_State *L, rl_lua_inst *I)
{
    rl_lua_inst *M = main_of(I);
    uint64_t now = uv_hrtime();
    if (now < H.cap_gc_next) {
        if (L == I->co && lua_isyieldable(L)) {
            I->preempted = 1; /* the budget counts on; the hook stays at every instruction */
            lua_yield(L, 0);
            return 1;
        }
    } else {
        H.current = NULL; /* what the collection's finalizers allocate is the host's */
        lua_gc(L, LUA_GCSTEP, 0);
        H.current = I;
        H.cap_gcs++;
        uint64_t took = uv_hrtime() - now;
        H.cap_gc_next = uv_hrtime() + (took * 20 > RL_LUA_CAP_GC_GAP_NS ? took * 20 : RL_LUA_CAP_GC_GAP_NS);
        if (rl_lua_mem_of(M) <= H.cfg->plugin_memory_limit) {
            M->mem_over = 0;
            lua_sethook(L, count_hook, LUA_MASKCOUNT, (int)hook_step);
            return 0;
        }
    }
    if (!doomed_self(M)) {
        M->limit_kind = RL_LIMIT_MEMORY;
        M->limit_hit = "memory limit of the instance exceeded (plugin_memory_limit)";
    }
    return 0;
}

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    rl_lua_inst *I = H.current;
    if (!I)
        return;
    if (main_of(I)->mem_over && !rl_lua_doomed(I) && cap_check(L, I))
        return;
    if (!rl_lua_doomed(I)) {
        uint64_t before = I->used;
        I->used += hook_step;
        if (I->used < H.cfg->lua_instruction_budget) {
            preempt(L, I, before);
            return;
        }
        I->budget_hit = 1;
    }
    doom(L, I);
}

static void doom(lua_State *L, rl_lua_inst *I)
{
    /* From here on the hook runs at every instruction of this thread; the other threads of the
       instance are caught by their next hook or by the catching functions of the prelude. */
    if (hook_step)
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    /* Yielding cannot be caught by a pcall in the plugin; raising can, so raise only where a
       yield is impossible (a coroutine of the plugin, inside a C call): the prelude's pcall,
       xpcall and coroutine.resume/close raise again until the error reaches the instance's
       own coroutine. */
    if (L == I->co && lua_isyieldable(L)) {
        lua_yield(L, 0);
        return;
    }
    luaL_error(L, "%s", rl_lua_doomed(I));
}

/* Raises from a C function of the running instance: the doomed thread gets a hook at every
   instruction, so the error can only be caught by the prelude's functions, which raise it
   again (see doom). */
static void doom_raise(lua_State *L, rl_lua_inst *I)
{
    if (hook_step)
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "%s", rl_lua_doomed(I));
}

/* ---- counting long runs only -----------------------------------------------------------
 * A count hook makes Lua stop in its debug machinery at every instruction of the hooked thread
 * (luaG_traceexec and rethook: 1,900 of the 30,000 instructions a routed message costs with
 * the echo plugin, whose run is some 40 VM instructions). So with a budget of at least
 * RL_LUA_LAZY_BUDGET an instance's own coroutine (and a task's) runs without a hook, and a
 * watchdog thread has the node's thread give it one once a single run has gone on for
 * RL_LUA_WATCH_NS (two of its periods at most; RL_LUA_WATCH_IDLE_NS after 100 ms without any
 * run). From there the run is counted, preempted and ended as before, so the budget bounds
 * what a run does after its first milliseconds. A run that was preempted, is doomed or is over
 * its memory cap keeps its hook into the next resume. Coroutines the plugin makes always have
 * the hook (host.co_create): they run under plugin code, where the watchdog does not look.
 * The watchdog only signals the node's thread (SIGRTMIN, to that thread), whose handler sets
 * the hook of the coroutine being resumed: lua_sethook may be called from a signal handler
 * (lua.c stops a script on SIGINT the same way). */
#define RL_LUA_LAZY_BUDGET 1000000
#define RL_LUA_WATCH_NS 1000000
#define RL_LUA_WATCH_IDLE_NS 20000000

static int lazy_hook;                 /* instances' own coroutines run without a hook */
static _Atomic uint64_t watch_seq;    /* odd while a resume runs; written by the node's thread */
static lua_State *volatile watch_co;  /* the coroutine being resumed, for the handler */
static pthread_t watch_node;          /* the node's thread, the only one the signal goes to */
static int watch_started;

static void watch_signal(int sig)
{
    (void)sig;
    lua_State *co = watch_co;
    /* counted from here, a hook_step at a time (count_hook adds a whole step each call); a run
       already hooked (a later slice of a long one) keeps its count */
    if (co && !lua_gethookmask(co))
        lua_sethook(co, count_hook, LUA_MASKCOUNT, (int)hook_step);
}

static void *watch_loop(void *arg)
{
    (void)arg;
    uint64_t last = 0, signalled = 0;
    unsigned quiet = 0;
    for (;;) {
        struct timespec ts = {0, quiet > 100 ? RL_LUA_WATCH_IDLE_NS : RL_LUA_WATCH_NS};
        nanosleep(&ts, NULL);
        uint64_t s = atomic_load_explicit(&watch_seq, memory_order_relaxed);
        if ((s & 1) && s == last && s != signalled) { /* the same run, still going */
            signalled = s;
            pthread_kill(watch_node, SIGRTMIN);
        }
        quiet = s == last ? quiet + 1 : 0;
        last = s;
    }
    return NULL;
}

/* Starts the watchdog once per process; 0 when it runs (else every run is counted). */
static int watch_start(void)
{
    if (watch_started)
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = watch_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGRTMIN, &sa, NULL) < 0)
        return -1;
    watch_node = pthread_self();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the watchdog takes no signal */
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 64 * 1024);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &at, watch_loop, NULL);
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -1;
    watch_started = 1;
    return 0;
}

/* watch_seq + 1 (only the node's thread writes it), after watch_co is set. */
static void watch_bump(void)
{
    atomic_signal_fence(memory_order_seq_cst);
    atomic_store_explicit(&watch_seq, atomic_load_explicit(&watch_seq, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* Around one resume of I's coroutine co. */
static void watch_begin(lua_State *co)
{
    if (!lazy_hook)
        return;
    watch_co = co;
    watch_bump();
}

static void watch_end(rl_lua_inst *I, lua_State *co, int st)
{
    if (!lazy_hook)
        return;
    watch_co = NULL; /* first: a late signal then sets nothing */
    watch_bump();
    if (lua_gethookmask(co) && !(st == LUA_YIELD && I->preempted) && !rl_lua_doomed(I) &&
        !main_of(I)->mem_over)
        lua_sethook(co, NULL, 0, 0);
}

/* The hook a new coroutine of the instance starts with: none when runs are watched. */
static void hook_new_thread(lua_State *co)
{
    if (hook_step && !lazy_hook)
        lua_sethook(co, count_hook, LUA_MASKCOUNT, (int)hook_step);
}

/* host.co_create(f): coroutine.create for plugins, with the count hook whatever the creating
   thread has (Lua copies the creator's; an unwatched instance's coroutine has none). */
static int l_co_create(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    if (hook_step)
        lua_sethook(co, count_hook, LUA_MASKCOUNT, (int)hook_step);
    return 1;
}

void rl_lua_charge(lua_State *L, uint64_t n)
{
    rl_lua_inst *I = H.current;
    if (!I || !H.cfg->lua_instruction_budget)
        return;
    if ((I->used + n) / RL_LUA_PREEMPT != I->used / RL_LUA_PREEMPT && hook_step) {
        I->preempt_due = 1; /* the hook after the next instruction yields */
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    }
    I->used += n;
    if (I->used < H.cfg->lua_instruction_budget && !rl_lua_doomed(I))
        return;
    if (!rl_lua_doomed(I))
        I->budget_hit = 1;
    doom_raise(L, I);
}

void rl_lua_violation(lua_State *L, rl_lua_limit kind, const char *reason)
{
    rl_lua_inst *I = rl_lua_current(L);
    if (!rl_lua_doomed(I)) {
        I->limit_kind = kind;
        I->limit_hit = reason;
    }
    doom_raise(L, I);
}

void rl_lua_refused(rl_lua_inst *I, int kind)
{
    H.refusals[kind]++;
    rl_warn("lua", "plugin %s (%s): %s limit reached, refused", I->def && I->def->id ? I->def->id : "?",
            I->proc.pid, limit_names[kind]);
}

int rl_lua_user_room(rl_lua_inst *I, int kind)
{
    const rl_owner_use *u = rl_owner_use_of(I->proc.owner);
    if (!u)
        return 1;
    size_t have = kind == RL_LIMIT_USER_PROCESSES ? u->procs
                  : kind == RL_LIMIT_USER_TIMERS  ? u->timers
                                                  : u->chans;
    size_t max = kind == RL_LIMIT_USER_PROCESSES ? H.cfg->plugin_user_max_processes
                 : kind == RL_LIMIT_USER_TIMERS  ? H.cfg->plugin_user_max_timers
                                                 : H.cfg->plugin_user_max_channels;
    if (have < max)
        return 1;
    rl_lua_refused(I, kind);
    return 0;
}

void rl_lua_metrics(rl_metrics_out *out)
{
    rl_metrics_put(out, "# HELP relay_plugin_kills_total Plugin instances ended by the sandbox, by limit\n"
                        "# TYPE relay_plugin_kills_total counter\n");
    for (int k = 0; k < RL_LIMIT_COUNT; k++)
        rl_metrics_put(out, "relay_plugin_kills_total{limit=\"%s\"} %llu\n", limit_names[k],
                       (unsigned long long)H.kills[k]);
    rl_metrics_put(out, "# HELP relay_plugin_refusals_total Plugin requests refused at a per-instance or per-user limit\n"
                        "# TYPE relay_plugin_refusals_total counter\n");
    for (int k = 0; k < RL_REFUSAL_COUNT; k++)
        rl_metrics_put(out, "relay_plugin_refusals_total{limit=\"%s\"} %llu\n", limit_names[k],
                       (unsigned long long)H.refusals[k]);
}

static void task_after_resume(rl_lua_inst *T, int st, int nres);
static int inst_upgrade(rl_lua_inst *I);
static rl_lua_limit limit_of(const rl_lua_inst *I, int st);

/* An instance starts in two halves in its own coroutine, each its bottom frame: the chunk
   (chunk(env), with their count, boot, env, method and the arguments waiting on the stack below
   it), then, once the chunk returned, boot(mod, env, method, ...), which calls method(...) as
   a tail call.
   Called as one function, boot would have run the chunk one frame deeper than the plugin's
   loop ever goes, and Lua keeps a call frame of a coroutine's deepest call for its life (80 B
   of every idle instance). The chunk's first result is mod; the rest are dropped. */
static int boot_method(rl_lua_inst *I, lua_State *co, int *nres)
{
    I->booting = 0;
    int below = (int)lua_tointeger(co, 1); /* the count, boot, env, method, the arguments */
    lua_remove(co, 1);
    int got = lua_gettop(co) - (below - 1); /* lua_resume counts the whole stack as results */
    if (got == 0)
        lua_pushnil(co);
    else
        lua_pop(co, got - 1);
    lua_rotate(co, 2, 1); /* boot, mod, env, method, arguments */
    *nres = 0;
    return lua_resume(co, H.L, lua_gettop(co) - 1, nres);
}

static void inst_resume(rl_lua_inst *I)
{
    lua_State *co = I->co;
    int nres = 0;
    H.current = I;
    I->state = RL_INST_RUNNING;
    if (!I->preempted) {
        I->used = 0;
        H.fresh_runs++;
    }
    uint64_t t0 = uv_hrtime();
    I->preempted = I->preempt_due = 0;
    I->oom_refusals = 0;
    H.resumes++;
    watch_begin(co);
    int st = lua_resume(co, H.L, I->nargs, &nres);
    if (st == LUA_OK && I->booting && !I->torn && !I->exit_pending_set && !rl_lua_doomed(I))
        st = boot_method(I, co, &nres);
    watch_end(I, co, st);
    H.current = NULL;
    if (st == LUA_YIELD && I->preempted && !I->torn && rl_lua_aux_of(I)) {
        uint64_t now = uv_hrtime();
        I->aux->next_slice_ns = now + RL_LUA_SLOW_FACTOR * (now - t0);
        I->aux->fresh_seen = H.fresh_runs;
    }
    I->nargs = 0;
    if (I->torn)
        return;
    if (main_of(I) != I) {
        task_after_resume(I, st, nres);
        return;
    }
    char buf[512];
    const char *err = NULL;
    int done = 1;
    /* `return nil, err` from run() is an error exit, as on the platform */
    const char *ret_err = NULL;
    if (st == LUA_OK && nres >= 2 && lua_isnil(co, -nres) && !lua_isnil(co, -nres + 1)) {
        lua_pushvalue(co, -nres + 1);
        ret_err = error_text(co, buf, sizeof buf);
        lua_pop(co, 1);
    }
    if (st == LUA_OK && !ret_err && nres >= 1 && !lua_isnil(co, -nres) && !I->exit_pending_set &&
        !rl_lua_doomed(I))
        rl_lua_exitval_post(co, I, -nres); /* result.value of its monitors' EXIT events */
    if (st == LUA_YIELD || st == LUA_OK)
        lua_pop(co, nres);
    if (I->exit_pending_set) {
        err = I->aux ? I->aux->exit_pending : NULL;
    } else if (st == LUA_ERRMEM || rl_lua_doomed(I)) {
        /* a sandbox limit ended it, whatever the plugin made of the error */
        rl_lua_limit k = st == LUA_ERRMEM || I->oom ? RL_LIMIT_MEMORY
                         : I->budget_hit            ? RL_LIMIT_INSTRUCTIONS
                                                    : I->limit_kind;
        err = rl_lua_doomed(I) ? rl_lua_doomed(I) : "not enough memory";
        H.kills[k]++;
    } else if (st == LUA_YIELD) {
        done = 0;
    } else if (st != LUA_OK) {
        err = error_text(co, buf, sizeof buf);
    } else if (ret_err) {
        err = ret_err;
    }
    if (done && upgrade.I == I) {
        int limited = st == LUA_ERRMEM || I->oom || I->budget_hit || I->limit_hit;
        if (!limited && inst_upgrade(I) == 0)
            return;
        upgrade_drop();
        I->exit_pending_set = 0; /* ends as a crash, with the limit that stopped it */
        if (limited)
            H.kills[limit_of(I, st)]++;
        if (!limited && !I->budget_hit)
            err = "upgrade failed: not enough memory";
        else
            err = doomed_self(I) ? doomed_self(I) : "not enough memory";
    }
    if (done) {
        int quiet = I->exit_pending_set;
        if (err && err != buf) {
            snprintf(buf, sizeof buf, "%s", err);
            err = buf;
        }
        free(exit_pending_take(I));
        inst_finish(I, err, quiet);
        return;
    }
    if (I->state == RL_INST_RUNNING) { /* coroutine.yield() or a long slice: run again later */
        I->state = RL_INST_READY;
        runq_push(I);
    }
}

/* ---- coroutine.spawn: tasks ---------------------------------------------------------------
 * A task is a coroutine of an instance that the node's scheduler runs: an rl_lua_inst of its
 * own (its coroutine, waits, sleep timer, budget per resume, a hidden rl_proc for the run
 * queue) whose aux->main is the instance. Every API call inside it acts for the instance
 * (rl_lua_current: pid, inbox, sends, children, limits); only blocking and waking are the
 * task's (rl_lua_running). An uncaught error or a limit in a task ends the instance with that
 * error; the instance's end ends its tasks; a task's return values are dropped. */

static void task_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    rl_msg_free(m); /* nobody knows its pid */
}

static void task_cancel(rl_proc *p, uint64_t deadline_ms)
{
    (void)p;
    (void)deadline_ms; /* ends with its instance, not on its own */
}

static void inst_run(rl_proc *p);
static void inst_free(rl_proc *p);

static const rl_proc_ops task_ops = {
    .kind = "plugin task",
    .letter = 'k',
    .handle = task_handle,
    .run = inst_run,
    .cancel = task_cancel,
    .free = inst_free,
};

static void tasks_end(rl_lua_inst *I)
{
    while (I->aux && I->aux->ntasks) {
        rl_lua_inst *T = I->aux->tasks[I->aux->ntasks - 1];
        inst_finish(T, NULL, 1); /* its teardown takes it off the list */
        if (I->aux && I->aux->ntasks && I->aux->tasks[I->aux->ntasks - 1] == T)
            I->aux->ntasks--; /* (out of memory for its aux: taken off here) */
    }
}

static rl_lua_limit limit_of(const rl_lua_inst *I, int st)
{
    if (st == LUA_ERRMEM || I->oom)
        return RL_LIMIT_MEMORY;
    if (I->budget_hit)
        return RL_LIMIT_INSTRUCTIONS;
    return I->limit_kind;
}

static void task_after_resume(rl_lua_inst *T, int st, int nres)
{
    rl_lua_inst *M = main_of(T);
    if (st == LUA_YIELD && !rl_lua_doomed(T)) {
        lua_pop(T->co, nres);
        if (T->state == RL_INST_RUNNING) { /* coroutine.yield() or a long slice */
            T->state = RL_INST_READY;
            runq_push(T);
        }
        return;
    }
    char buf[512];
    const char *err = NULL;
    if (M->exit_pending_set) {
        err = NULL; /* the instance ends below with its own reason */
    } else if (doomed_self(T)) {
        err = doomed_self(T);
        H.kills[limit_of(T, st)]++;
    } else if (doomed_self(M)) {
        err = doomed_self(M);
        H.kills[limit_of(M, st)]++;
    } else if (st == LUA_ERRMEM) {
        err = "not enough memory";
        H.kills[RL_LIMIT_MEMORY]++;
    } else if (st != LUA_OK) {
        err = error_text(T->co, buf, sizeof buf);
    }
    if (err && err != buf) {
        snprintf(buf, sizeof buf, "%s", err);
        err = buf;
    }
    inst_finish(T, NULL, 1);
    if (M->torn)
        return;
    if (M->exit_pending_set) { /* process.terminate of the instance from the task */
        char *why = exit_pending_take(M);
        inst_finish(M, why, 1);
        free(why);
    } else if (err) {
        inst_finish(M, err, 0);
    }
}

/* coroutine.spawn(fn, ...): runs fn(...) as a task of the calling instance; returns true. */
static int l_co_spawn(lua_State *L)
{
    rl_lua_inst *M = rl_lua_current(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    rl_lua_aux *A = rl_lua_aux_of(M);
    if (!A)
        return luaL_error(L, "not enough memory");
    if (A->ntasks >= RL_LUA_TASKS_MAX) {
        rl_lua_refused(M, RL_LIMIT_CHILDREN);
        return luaL_error(L, "too many spawned coroutines (at most %d)", RL_LUA_TASKS_MAX);
    }
    rl_lua_inst **nt = realloc(A->tasks, (A->ntasks + 1) * sizeof *nt);
    if (!nt)
        return luaL_error(L, "not enough memory");
    A->tasks = nt;
    int n = lua_gettop(L);
    rl_lua_inst *T = calloc(1, sizeof *T);
    if (!T)
        return luaL_error(L, "not enough memory");
    T->def = M->def;
    T->co_ref = T->env_ref = T->inbox_ref = T->events_ref = LUA_NOREF;
    T->state = RL_INST_READY;
    if (!rl_lua_aux_of(T) || rl_proc_start(&T->proc, &task_ops, 1, M->proc.owner) < 0) {
        free(T->aux);
        free(T);
        return luaL_error(L, "not enough memory");
    }
    T->aux->main = M;
    A->tasks[A->ntasks++] = T;
    T->listed = 1;
    T->next = H.insts;
    if (H.insts)
        H.insts->prev = T;
    H.insts = T;
    lua_State *co = lua_newthread(L); /* may raise: T is on every list and is ended with M */
    T->co = co;
    T->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_checkstack(co, n, "too many arguments");
    for (int i = 1; i <= n; i++)
        lua_pushvalue(L, i);
    lua_xmove(L, co, n);
    T->nargs = n - 1;
    hook_new_thread(co);
    runq_push(T);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- rl_proc operations ---------------------------------------------------------------- */

static int is_linked(rl_lua_inst *I, const char *pid)
{
    for (uint32_t i = 0; I->aux && i < I->aux->nlinks; i++)
        if (strcmp(I->aux->links[i], pid) == 0)
            return 1;
    return 0;
}

int rl_lua_unmon_find(const rl_lua_inst *I, const char *pid)
{
    const rl_lua_unmon *u = I->aux ? I->aux->unmon : NULL;
    for (uint32_t i = 0; u && i < u->n; i++)
        if (strcmp(u->pid[i], pid) == 0)
            return (int)i;
    return -1;
}

void rl_lua_unmon_remove(rl_lua_inst *I, int u)
{
    rl_lua_unmon *un = I->aux->unmon;
    memmove(un->pid[u], un->pid[--un->n], RL_PID_MAX);
}

static void push_event(rl_lua_inst *I, rl_lua_ev_kind kind, const char *from, const char *error,
                       uint64_t deadline, const char *reason, rl_body *value)
{
    rl_lua_event *e = calloc(1, sizeof *e);
    if (e)
        e->value = value; /* taken over */
    else
        rl_body_unref(value);
    if (!e || (error && !(e->error = strdup(error))) || (reason && !(e->reason = strdup(reason)))) {
        rl_error("lua", "plugin %s: out of memory, event dropped", I->proc.pid);
        rl_lua_event_free(e);
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    e->kind = kind;
    e->deadline_ms = deadline;
    snprintf(e->from, sizeof e->from, "%s", from ? from : "");
    rl_lua_chan_push_event(rl_lua_ref_udata(I->events_ref), e);
}

static void inst_handle(rl_proc *p, rl_msg *m)
{
    rl_lua_inst *I = (rl_lua_inst *)p;
    if (I->torn) {
        rl_msg_free(m);
        return;
    }
    if (m->topic == RL_T_PID_EXIT) {
        const char *from = m->ctl.exit.pid;
        const char *error = m->ctl.exit.error ? m->ctl.exit.error->data : NULL;
        int u = rl_lua_unmon_find(I, from);
        rl_body *value = rl_lua_exitval_take(I, from);
        if (rl_lua_exec_done(I, from, error, value)) { /* process.exec: its caller's result */
            if (u >= 0)
                rl_lua_unmon_remove(I, u);
        } else if (u >= 0) { /* process.unmonitor(from): no EXIT; the report was its last word */
            rl_lua_unmon_remove(I, u);
            rl_body_unref(value);
        } else {
            push_event(I, RL_EV_EXIT, from, error, 0, NULL, value);
        }
        if (error && is_linked(I, from))
            push_event(I, RL_EV_LINK_DOWN, from, error, 0, NULL, NULL);
        rl_msg_free(m);
        return;
    }
    rl_lua_chan *to = rl_lua_listen_chan(I, m); /* process.listen(topic), else the inbox */
    rl_lua_chan_push_msg(to ? to : rl_lua_ref_udata(I->inbox_ref), m);
    /* The scheduler took m out of the mailbox count; until the plugin receives it, it still
       counts against the mailbox bound, so a plugin that does not keep up makes senders see
       -EAGAIN (overloaded) instead of growing the inbox without limit. */
    p->qlen++;
}

static void inst_cancel(rl_proc *p, uint64_t deadline_ms)
{
    rl_lua_inst *I = (rl_lua_inst *)p;
    if (I->torn)
        return;
    push_event(I, RL_EV_CANCEL, H.cancel_from, NULL, deadline_ms, H.cancel_reason, NULL);
    if (!I->aux || !I->aux->deadline) {
        rl_lua_aux *A = rl_lua_aux_of(I);
        if (!A || !(A->deadline = rl_lua_timer_start(I, RL_TIMER_DEADLINE, deadline_ms, 0,
                                                     LUA_NOREF)))
            rl_lua_kill(I, "cancelled");
    }
}

static void inst_free(rl_proc *p)
{
    rl_lua_inst *I = (rl_lua_inst *)p;
    inst_teardown(I);
    acct_release(I->mem_acct);
    list_remove(I);
    free(I->waits);
    rl_body_unref(I->user_meta);
    free(I);
}

/* ops->run: the scheduler's turn for a woken instance. */
static int slice_deferred(rl_lua_inst *I)
{
    if (!I->preempted || !I->aux)
        return 0;
    rl_lua_aux *A = I->aux;
    int others = A->fresh_seen != H.fresh_runs;
    A->fresh_seen = H.fresh_runs;
    return others && uv_hrtime() < A->next_slice_ns;
}

static void inst_run(rl_proc *p)
{
    rl_lua_inst *I = (rl_lua_inst *)p;
    if (I->torn || I->state != RL_INST_READY)
        return;
    if (slice_deferred(I)) {
        runq_push(I);
        return;
    }
    inst_resume(I);
}

static const rl_proc_ops inst_ops = {
    .kind = "plugin",
    .letter = 'p',
    .handle = inst_handle,
    .run = inst_run,
    .cancel = inst_cancel,
    .orphan = inst_orphan,
    .free = inst_free,
};

rl_lua_inst *rl_lua_inst_of(const char *pid)
{
    rl_proc *p = rl_proc_find(pid);
    return p && p->ops == &inst_ops ? (rl_lua_inst *)p : NULL;
}

/* ---- spawning -------------------------------------------------------------------------- */

typedef struct spawn_ctx {
    rl_lua_inst *I;
    int chunk_ref;
    const char *args_json;    /* a child's run() argument (JSON), or NULL */
    const rl_spawn_args *hub; /* or the hub's arguments */
    int nargs;                /* >= 0: args_json is an array of nargs run() arguments */
    const char *ctx;          /* process.with_context values (JSON object) or NULL */
} spawn_ctx;

/* Pushes args.config: the relay's parameters and the plugin's identity. The same for every
   instance of a plugin, so one read-only table per plugin is shared by all of them (a plugin
   cannot change what another user's instance reads). */
static void push_config(lua_State *L, const rl_config *c, const rl_plugin_def *def)
{
    ssize_t idx = def_index(def);
    if (idx >= 0 && H.config_refs[idx] != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, H.config_refs[idx]);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, H.readonly_ref);
    lua_createtable(L, 0, 10);
    lua_pushinteger(L, c->max_connections_per_user);
    lua_setfield(L, -2, "max_connections_per_user");
    lua_pushinteger(L, c->queue_multiplier);
    lua_setfield(L, -2, "queue_multiplier");
    lua_pushfstring(L, "%Is", (lua_Integer)(c->user_hub_inactivity_timeout_ms / 1000));
    lua_setfield(L, -2, "user_hub_inactivity_timeout");
    /* the platform's derived fields (consts.get_config): seconds as "Ns" duration strings */
    lua_pushinteger(L, (lua_Integer)c->max_connections_per_user * c->queue_multiplier);
    lua_setfield(L, -2, "message_queue_size");
    lua_pushfstring(L, "%Is", (lua_Integer)(c->user_hub_inactivity_timeout_ms / 2500));
    lua_setfield(L, -2, "gc_check_interval");
    lua_pushfstring(L, "%Is", (lua_Integer)(c->user_hub_inactivity_timeout_ms / 5000));
    lua_setfield(L, -2, "heartbeat_interval");
    if (c->application_host) {
        lua_pushstring(L, c->application_host);
        lua_setfield(L, -2, "user_hub_host");
    }
    if (c->user_security_scope) {
        lua_pushstring(L, c->user_security_scope);
        lua_setfield(L, -2, "user_security_scope");
    }
    lua_pushstring(L, def->prefix ? def->prefix : "");
    lua_setfield(L, -2, "prefix");
    lua_pushstring(L, def->id ? def->id : "");
    lua_setfield(L, -2, "process_id");
    lua_call(L, 1, 1); /* readonly(config) */
    if (idx >= 0) {
        lua_pushvalue(L, -1);
        H.config_refs[idx] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
}

/* The run() argument of a plugin started by its hub: {user_id, user_metadata, user_hub_pid,
   config}. An idle plugin that never reads the middle two would keep them for its life (a
   table, a string and two hash slots: 176 bytes of an idle user's 5 KiB), so they are made
   on first use: the table starts with user_id and config and a shared metatable whose
   __index makes both (rl_lua_args_fill) and then drops itself, leaving the plain table the
   platform gives. Every other way to look at the table makes them first: pairs (__pairs),
   next, rawget, getmetatable and setmetatable (the prelude's safe versions), json.encode.
   They come from the instance itself: its user_meta (the hub's user_metadata, kept anyway)
   and its first monitor, which is its hub (spawn monitors it before anything can, and the
   hub outlives its plugins: it exits after the last one). */
static int args_mt_ref = LUA_NOREF;

static void push_hub_args(lua_State *L, const rl_spawn_args *a)
{
    lua_createtable(L, 0, 2);
    lua_pushstring(L, rl_owner_user(a->owner));
    lua_setfield(L, -2, "user_id");
    push_config(L, a->cfg, a->def);
    lua_setfield(L, -2, "config");
    lua_rawgeti(L, LUA_REGISTRYINDEX, args_mt_ref);
    lua_setmetatable(L, -2);
}

/* The pid of I's hub (its first monitor, while it lives), or NULL. */
static const char *hub_pid_of(const rl_lua_inst *I)
{
    rl_proc *hp = I->proc.nmonitors ? rl_proc_by_serial(I->proc.monitors[0]) : NULL;
    return hp && hp->owner == I->proc.owner && !rl_lua_inst_of(hp->pid) ? hp->pid : NULL;
}

/* Sets field k of table t (absolute) to the value on top (popped), unless the plugin set one. */
static void set_missing(lua_State *L, int t, const char *k)
{
    lua_pushstring(L, k);
    if (lua_rawget(L, t) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushstring(L, k);
        lua_insert(L, -2);
        lua_rawset(L, t);
    } else {
        lua_pop(L, 2);
    }
}

void rl_lua_push_user_meta(lua_State *L, const rl_lua_inst *I)
{
    if (!I->user_meta || !rl_lua_json_decode(L, I->user_meta->data, I->user_meta->len)) {
        if (I->user_meta)
            lua_pop(L, 1); /* the error message */
        lua_newtable(L);
    }
}

int rl_lua_args_fill(lua_State *L, int t)
{
    if (args_mt_ref == LUA_NOREF || lua_type(L, t) != LUA_TTABLE || !lua_getmetatable(L, t))
        return 0;
    t = lua_absindex(L, t);
    lua_rawgeti(L, LUA_REGISTRYINDEX, args_mt_ref);
    int ours = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    rl_lua_inst *I = H.current ? main_of(H.current) : NULL;
    if (!ours || !I)
        return 0;
    lua_pushnil(L); /* plain from here on: the sets below must not come back to __index */
    lua_setmetatable(L, t);
    rl_lua_push_user_meta(L, I);
    set_missing(L, t, "user_metadata");
    const char *hub = hub_pid_of(I);
    if (hub) {
        lua_pushstring(L, hub);
        set_missing(L, t, "user_hub_pid");
    }
    return 1;
}

static int h_args_fill(lua_State *L)
{
    lua_pushboolean(L, rl_lua_args_fill(L, 1));
    return 1;
}

static int args_index(lua_State *L)
{
    if (!rl_lua_args_fill(L, 1))
        return 0;
    lua_settop(L, 2);
    lua_rawget(L, 1);
    return 1;
}

static int args_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int args_pairs(lua_State *L)
{
    rl_lua_args_fill(L, 1);
    lua_pushcfunction(L, args_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

static void args_mt_make(lua_State *L)
{
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, args_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, args_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    args_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static int spawn_p(lua_State *L)
{
    spawn_ctx *s = lua_touserdata(L, 1);
    rl_lua_inst *I = s->I;
    lua_State *co = lua_newthread(L);
    I->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    I->co = co;

    lua_createtable(L, 0, 1); /* grows if the plugin sets globals */
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
    lua_rawgeti(L, LUA_REGISTRYINDEX, H.env_mt_ref);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    I->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);

    if (I->inbox_ref == LUA_NOREF) { /* (an upgrade keeps the inbox and the events) */
        rl_lua_chan *in = rl_lua_chan_new(L, RL_CH_INBOX, 0);
        rl_lua_chan_set_owner(in, &I->proc);
        I->inbox_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        rl_lua_chan_new(L, RL_CH_EVENTS, 0);
        I->events_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }

    int env = lua_gettop(L);
    lua_pushinteger(L, 0); /* how many wait below the chunk: set below */
    int below = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, H.boot_ref);
    lua_pushvalue(L, env);
    lua_pushstring(L, I->def->method && I->def->method[0] ? I->def->method : "run");
    int nvals = 1;
    if (s->hub) {
        push_hub_args(L, s->hub);
    } else if (s->nargs >= 0 && s->args_json) { /* every argument of process.spawn*(id, host, ...) */
        if (!rl_lua_json_decode(L, s->args_json, strlen(s->args_json)) || !lua_istable(L, -1))
            return luaL_error(L, "bad spawn arguments: %s", lua_tostring(L, -1));
        luaL_checkstack(L, s->nargs + 8, "too many spawn arguments");
        int t = lua_gettop(L);
        for (int i = 1; i <= s->nargs; i++)
            lua_rawgeti(L, t, i);
        lua_remove(L, t);
        nvals = s->nargs;
    } else if (s->nargs >= 0) {
        nvals = 0;
    } else if (!s->args_json) {
        lua_newtable(L);
    } else if (!rl_lua_json_decode(L, s->args_json, strlen(s->args_json))) {
        return luaL_error(L, "bad spawn arguments: %s", lua_tostring(L, -1));
    }
    if (s->ctx) {
        rl_lua_aux *A = rl_lua_aux_of(I);
        if (!A || !(A->ctx = rl_body_new(s->ctx, strlen(s->ctx))))
            return luaL_error(L, "not enough memory");
    }
    lua_pushinteger(L, 4 + nvals);
    lua_replace(L, below);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->chunk_ref);
    lua_pushvalue(L, env);
    if (!lua_checkstack(co, 6 + nvals))
        return luaL_error(L, "not enough memory");
    lua_xmove(L, co, 6 + nvals);
    I->nargs = 1; /* chunk(env); boot, env, method and the arguments wait below it */
    I->booting = 1;
    hook_new_thread(co);
    return 0;
}

/* What one process.upgrade costs against the instruction budget: the new run goes on counting
   the run that upgraded (as a preempted one), so a plugin that upgrades in a loop without ever
   waiting ends at its budget. */
#define RL_LUA_UPGRADE_COST 10000

/* Runs upgrade.def's current chunk in I (same pid, inbox, events, names, monitors, links,
   children): the old run's tasks, timers, waits and requests end; a fresh coroutine and _ENV
   get run(...) with upgrade.args. 0, or -1: out of memory, or the budget (budget_hit set);
   I then ends. */
static int inst_upgrade(rl_lua_inst *I)
{
    ssize_t idx = def_index(upgrade.def);
    if (idx < 0 || H.chunk_refs[idx] == LUA_NOREF)
        return -1;
    tasks_end(I);
    rl_lua_unwait(I);
    while (I->timers) /* (no cancel deadline: process.upgrade refuses while one runs) */
        rl_lua_timer_close(I->timers);
    rl_lua_http_release(I);
    luaL_unref(H.L, LUA_REGISTRYINDEX, I->co_ref);
    luaL_unref(H.L, LUA_REGISTRYINDEX, I->env_ref);
    I->co_ref = I->env_ref = LUA_NOREF;
    I->co = NULL;
    I->def = upgrade.def;
    free(exit_pending_take(I));
    I->exit_pending_set = 0;
    spawn_ctx s = {I, H.chunk_refs[idx], upgrade.args, NULL, upgrade.nargs, NULL};
    H.current = I; /* what the new run's setup allocates is the instance's */
    lua_pushcfunction(H.L, spawn_p);
    lua_pushlightuserdata(H.L, &s);
    int st = lua_pcall(H.L, 1, 0, 0);
    H.current = NULL;
    upgrade_drop();
    if (st != LUA_OK) {
        lua_pop(H.L, 1);
        return -1;
    }
    I->used += RL_LUA_UPGRADE_COST;
    if (H.cfg->lua_instruction_budget && I->used >= H.cfg->lua_instruction_budget) {
        I->budget_hit = 1;
        H.kills[RL_LIMIT_INSTRUCTIONS]++;
        return -1;
    }
    I->preempted = 1; /* the budget counts on across the upgrade */
    I->state = RL_INST_READY;
    runq_push(I);
    return 0;
}

/* Creates and starts an instance; L is the calling coroutine or the main state. */
static int spawn(lua_State *L, const rl_plugin_def *def, rl_owner *owner, rl_body *user_meta,
                 spawn_ctx *s, rl_proc *parent, char pid_out[RL_PID_MAX], char *err, size_t errlen)
{
    if (!H.open) {
        snprintf(err, errlen, "the plugin host is closed");
        return -ESHUTDOWN;
    }
    ssize_t idx = def_index(def);
    if (idx < 0) {
        snprintf(err, errlen, "plugin %s was not loaded", def->id ? def->id : "?");
        return -ENOENT;
    }
    rl_lua_inst *I = calloc(1, sizeof *I);
    if (!I) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    I->def = rl_lua_def_at((size_t)idx);
    I->mem_acct = acct_new();
    I->co_ref = I->env_ref = I->inbox_ref = I->events_ref = LUA_NOREF;
    I->state = RL_INST_READY;
    if (rl_proc_start(&I->proc, &inst_ops, H.cfg->plugin_queue, owner) < 0) {
        free(I);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    rl_owner_use *u = rl_owner_use_of(owner); /* plugin_user_max_processes (rl_lua_proc.c) */
    if (u) {
        u->procs++;
        I->user_counted = 1;
    }
    I->listed = 1;
    I->next = H.insts;
    if (H.insts)
        H.insts->prev = I;
    H.insts = I;
    I->user_meta = rl_body_ref(user_meta);

    s->I = I;
    s->chunk_ref = H.chunk_refs[idx];
    lua_pushcfunction(L, spawn_p);
    lua_pushlightuserdata(L, s);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "cannot create the instance: %s",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
        lua_pop(L, 1);
        inst_finish(I, err, 1);
        return -ENOMEM;
    }
    if (parent && rl_monitor(parent, I->proc.pid) < 0) {
        snprintf(err, errlen, "cannot monitor the instance: out of memory");
        inst_finish(I, err, 1);
        return -ENOMEM;
    }
    snprintf(pid_out, RL_PID_MAX, "%s", I->proc.pid);
    runq_push(I);
    return 0;
}

int rl_lua_spawn_child(lua_State *L, rl_lua_inst *parent, const rl_plugin_def *def,
                       const char *args_json, int monitored, char pid_out[RL_PID_MAX], char *err,
                       size_t errlen)
{
    spawn_ctx s = {NULL, LUA_NOREF, args_json, NULL, -1, NULL};
    return spawn(L, def, parent->proc.owner, parent->user_meta, &s,
                 monitored ? &parent->proc : NULL, pid_out, err, errlen);
}

int rl_lua_spawn_child_n(lua_State *L, rl_lua_inst *parent, const rl_plugin_def *def,
                         const char *args_json, int nargs, const char *ctx, int monitored,
                         char pid_out[RL_PID_MAX], char *err, size_t errlen)
{
    spawn_ctx s = {NULL, LUA_NOREF, args_json, NULL, nargs < 0 ? 0 : nargs, ctx};
    return spawn(L, def, parent->proc.owner, parent->user_meta, &s,
                 monitored ? &parent->proc : NULL, pid_out, err, errlen);
}

int rl_lua_spawn(const rl_spawn_args *a, char pid_out[RL_PID_MAX], char *err, size_t errlen)
{
    if (!H.L) {
        snprintf(err, errlen, "the plugin host is closed");
        return -ESHUTDOWN;
    }
    spawn_ctx s = {NULL, LUA_NOREF, NULL, a, -1, NULL};
    return spawn(H.L, a->def, a->owner, a->user_metadata, &s, a->parent, pid_out, err, errlen);
}

/* ---- init / close ---------------------------------------------------------------------- */

typedef struct init_ctx {
    char *err;
    size_t errlen;
} init_ctx;

/* Reads a regular file whole (a FIFO or device put in a source's place is refused, not waited
   on: SIGHUP re-reads sources while the node serves). */
static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd < 0)
        return NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = realloc(buf, cap *= 2);
        if (!nb) {
            free(buf);
            buf = NULL;
        }
        buf = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* The hash of each entry's source as compiled (src_hash), and the array compile_plugin fills
   (src_hash itself at start, the fresh one during a reload): a reload tells the upgradable
   instances whose entry's hash changed (OUTDATED). */
static uint64_t *src_hash, *src_hash_fill;

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

/* Compiles plugin i (or reuses the chunk of an earlier plugin with the same source). */
static int compile_plugin(lua_State *L, size_t i, init_ctx *c)
{
    const rl_plugin_def *d = rl_lua_def_at(i);
    const char *file = H.cfg->path ? H.cfg->path : (d->source_path ? d->source_path : "?");
    for (size_t j = 0; j < i; j++) {
        if (d->source_path && rl_lua_def_at(j)->source_path &&
            strcmp(d->source_path, rl_lua_def_at(j)->source_path) == 0) {
            H.chunk_refs[i] = H.chunk_refs[j];
            src_hash_fill[i] = src_hash_fill[j];
            return 0;
        }
    }
    size_t len = 0;
    char *src = d->source_path ? read_file(d->source_path, &len) : NULL;
    if (!src) {
        snprintf(c->err, c->errlen, "%s: entry %s: cannot read source %s: %s", file,
                 d->name ? d->name : "?", d->source_path ? d->source_path : "(none)",
                 strerror(errno ? errno : ENOENT));
        return -1;
    }
    char why[256];
    if (rl_lua_strip_types(src, len, why, sizeof why) < 0) { /* the platform's annotations */
        snprintf(c->err, c->errlen, "%s: entry %s: %s: %s", file, d->name ? d->name : "?",
                 d->source_path, why);
        free(src);
        return -1;
    }
    /* On the first line, so error line numbers match the file; a "#!" line becomes a comment. */
    static const char pre[] = "local _ENV = ...; ";
    static const char pre_hash[] = "local _ENV = ...; --";
    const char *p = src[0] == '#' ? pre_hash : pre;
    size_t plen = strlen(p);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, p, plen);
    luaL_addlstring(&b, src, len);
    free(src); /* no error can be raised between read_file and here except by the buffer */
    luaL_pushresult(&b);
    size_t total;
    const char *all = lua_tolstring(L, -1, &total);
    src_hash_fill[i] = fnv1a(all, total);
    char name[512];
    snprintf(name, sizeof name, "@%s", d->source_path);
    if (luaL_loadbufferx(L, all, total, name, "t") != LUA_OK) {
        snprintf(c->err, c->errlen, "%s: entry %s: %s", file, d->name ? d->name : "?",
                 lua_tostring(L, -1));
        lua_pop(L, 2);
        return -1;
    }
    lua_remove(L, -2);
    lua_newtable(L); /* the chunk's own _ENV upvalue is never used: make sure it is harmless */
    lua_setupvalue(L, -2, 1);
    H.chunk_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

static int init_p(lua_State *L)
{
    init_ctx *c = lua_touserdata(L, 1);
    luaL_openlibs(L);
    rl_lua_str_open(L);

    rl_lua_host_open(L); /* 2: host helpers */
    rl_lua_fid_host(L);
    lua_pushcfunction(L, l_co_spawn);
    lua_setfield(L, -2, "co_spawn");
    lua_pushcfunction(L, l_co_create);
    lua_setfield(L, -2, "co_create");
    lua_pushlightuserdata(L, &block_token);
    lua_setfield(L, -2, "block");
    lua_pushcfunction(L, h_block_unblock);
    lua_setfield(L, -2, "unblock");
    lua_pushcfunction(L, h_args_fill);
    lua_setfield(L, -2, "args_fill");
    rl_lua_uuid_push(L);
    lua_setfield(L, -2, "uuid");
    rl_lua_pg_push(L);
    lua_setfield(L, -2, "pg");
    rl_lua_http_push(L);
    lua_setfield(L, -2, "http");
    rl_lua_security_push(L);
    lua_setfield(L, -2, "security");
    lua_pushglobaltable(L);
    rl_lua_json_open(L);
    rl_lua_time_open(L);
    rl_lua_proc_open(L);
    lua_newtable(L);
    rl_lua_chan_open(L);
    if (luaL_loadbufferx(L, prelude, sizeof prelude - 1, "=relay-prelude", "t") != LUA_OK)
        return lua_error(L);
    lua_insert(L, 2);
    lua_call(L, 6, 4);
    H.readonly_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    H.boot_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    H.env_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    H.safe_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    args_mt_make(L);

    for (size_t i = 0; i < rl_lua_ndefs(); i++)
        H.chunk_refs[i] = H.config_refs[i] = LUA_NOREF;
    for (size_t i = 0; i < rl_lua_ndefs(); i++)
        if (compile_plugin(L, i, c) < 0) {
            lua_pushinteger(L, -1);
            return 1;
        }
    lua_pushinteger(L, 0);
    return 1;
}

/* Drops the registry refs of refs[0..n), each once (plugins sharing a source share a ref). */
static void unref_chunks(lua_State *L, int *refs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int dup = 0;
        for (size_t j = 0; j < i && !dup; j++)
            dup = refs[j] == refs[i];
        if (!dup && refs[i] != LUA_NOREF)
            luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
    }
}

static int reload_p(lua_State *L)
{
    init_ctx *c = lua_touserdata(L, 1);
    for (size_t i = 0; i < rl_lua_ndefs(); i++)
        if (compile_plugin(L, i, c) < 0) {
            lua_pushinteger(L, -1);
            return 1;
        }
    lua_pushinteger(L, 0);
    return 1;
}

/* Appends "id" (JSON) to b; ids with characters JSON would escape are left out. */
static void json_id(char *b, size_t cap, size_t *len, const char *id)
{
    size_t n = strlen(id);
    for (size_t i = 0; i < n; i++)
        if (id[i] == '"' || id[i] == '\\' || (unsigned char)id[i] < 0x20)
            return;
    int w = snprintf(b + *len, cap - *len, "%s\"%s\"", *len > 1 ? "," : "", id);
    if (w > 0 && (size_t)w < cap - *len)
        *len += (size_t)w;
}

/* After a reload: every live instance that set upgradable and whose entry's source changed
   gets OUTDATED with the ids of every changed entry. */
static void tell_outdated(const uint64_t *fresh, size_t n)
{
    char ids[4096] = "[";
    size_t len = 1, changed = 0;
    for (size_t i = 0; i < n; i++) {
        if (fresh[i] == src_hash[i] || !rl_lua_def_at(i)->id)
            continue;
        changed++;
        json_id(ids, sizeof ids - 1, &len, rl_lua_def_at(i)->id);
    }
    ids[len++] = ']';
    for (rl_lua_inst *I = H.insts; changed && I; I = I->next) {
        ssize_t idx = I->torn || !I->upgradable || main_of(I) != I ? -1 : def_index(I->def);
        if (idx < 0 || fresh[idx] == src_hash[idx])
            continue;
        rl_body *b = rl_body_new(ids, len);
        if (b)
            push_event(I, RL_EV_OUTDATED, NULL, NULL, 0, NULL, b);
    }
}

int rl_lua_reload(char *err, size_t errlen)
{
    if (!H.L || !H.open)
        return -ESHUTDOWN;
    size_t n = rl_lua_ndefs();
    int *old = H.chunk_refs, *fresh = malloc((n ? n : 1) * sizeof *fresh);
    if (!fresh) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uint64_t *hashes = calloc(n ? n : 1, sizeof *hashes);
    if (!hashes) {
        free(fresh);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        fresh[i] = LUA_NOREF;
    H.chunk_refs = fresh; /* compile_plugin fills H.chunk_refs */
    src_hash_fill = hashes;
    init_ctx ictx = {err, errlen};
    lua_pushcfunction(H.L, reload_p);
    lua_pushlightuserdata(H.L, &ictx);
    int st = lua_pcall(H.L, 1, 1, 0);
    int ok = st == LUA_OK && lua_tointeger(H.L, -1) == 0;
    if (st != LUA_OK)
        snprintf(err, errlen, "%s", lua_type(H.L, -1) == LUA_TSTRING ? lua_tostring(H.L, -1) : "error");
    lua_pop(H.L, 1);
    /* Running instances hold their chunk themselves: only new ones see the swap. */
    H.chunk_refs = ok ? fresh : old;
    unref_chunks(H.L, ok ? old : fresh, n);
    free(ok ? old : fresh);
    src_hash_fill = src_hash;
    if (!ok) {
        free(hashes);
        return -EINVAL;
    }
    tell_outdated(hashes, n);
    free(src_hash);
    src_hash = src_hash_fill = hashes;
    return 0;
}

/* ---- garbage collection ---------------------------------------------------------------------
 * Generational. What idle users hold (tables, channels, closures) grows old and the minor
 * collections that take each message's garbage skip it; but Lua 5.4 keeps threads gray, so
 * every minor collection still walks every thread, one per plugin instance. So minor
 * collections come after the heap grew by half of what it holds (genminormul 50 instead of
 * 20): fewer walks of the threads. Measured with 15,000 idle users and 100 busy connections:
 * 20 put p99 at 4-12 ms, 50 and 100 at 2-3.5 ms; without idle users 50 beat 100 in rate and
 * p99 in most interleaved runs (docs/performance.md). The major threshold must stay well above
 * that: Lua 5.4 does a major collection instead of a minor one when the heap has grown by
 * genmajormul since the last major, and with 100 and 100 both came due at the same size, so
 * every collection was a full one (atomic2gen and sweep2old: 2,400 instructions a round trip
 * at 1 connection instead of 1,800; a full mark of every idle user's objects each cycle). At
 * 300 the old generation may grow to four times what the last major collection left before
 * the next one. The price of both is garbage of up to half the live heap between minor
 * collections, and more between major ones, so a quiet host (no resume for
 * RL_LUA_GC_QUIET_MS) that allocated since its last collection does a full one: what idle
 * users leave behind while they connect is returned. */
#ifndef RL_LUA_GC_MINORMUL
#define RL_LUA_GC_MINORMUL 50
#endif
#define RL_LUA_GC_MAJORMUL 300
#define RL_LUA_GC_QUIET_MS 1000
#define RL_LUA_GC_QUIET_MIN 65536 /* bytes allocated since the last collection worth one */

static void gc_timer_closed(uv_handle_t *h) { free(h); }

/* jemalloc, when the node is linked with it (weak: absent with glibc or a sanitizer), keeps
   freed pages for ten seconds before it returns them; a quiet host returns them at once. */
int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
    __attribute__((weak));

static void return_free_memory(void)
{
    if (mallctl)
        mallctl("arena.4096.purge", NULL, NULL, NULL, 0); /* 4096: MALLCTL_ARENAS_ALL */
}

static void gc_quiet_tick(uv_timer_t *t)
{
    (void)t;
    if (!H.L || H.resumes != H.resumes_seen) {
        H.resumes_seen = H.resumes;
        return;
    }
    if (H.allocated - H.allocated_at_gc < RL_LUA_GC_QUIET_MIN)
        return;
    uint64_t t0 = uv_hrtime();
    size_t before = H.bytes;
    lua_gc(H.L, LUA_GCCOLLECT);
    H.allocated_at_gc = H.allocated;
    pool_drain(); /* the free lists hold up to RL_LUA_POOL_CAP: give it back while nothing runs */
    return_free_memory();
    rl_debug("lua", "quiet: full collection %zu -> %zu bytes in %.1f ms", before, H.bytes,
             (double)(uv_hrtime() - t0) / 1e6);
}

static void gc_setup(void)
{
    lua_gc(H.L, LUA_GCGEN, RL_LUA_GC_MINORMUL, RL_LUA_GC_MAJORMUL);
    H.allocated_at_gc = H.allocated;
    uv_loop_t *loop = rl_node_loop();
    if (!loop || H.gc_timer || !(H.gc_timer = malloc(sizeof *H.gc_timer)))
        return; /* without the timer only the quiet-time collection is missing */
    uv_timer_init(loop, H.gc_timer);
    uv_timer_start(H.gc_timer, gc_quiet_tick, RL_LUA_GC_QUIET_MS, RL_LUA_GC_QUIET_MS);
    uv_unref((uv_handle_t *)H.gc_timer); /* never what keeps the loop running */
}

int rl_lua_init(const rl_config *c, char *err, size_t errlen)
{
    if (H.L)
        rl_lua_close();
    memset(&H, 0, sizeof H);
    args_mt_ref = LUA_NOREF;
    H.cfg = c;
    H.limit = c->lua_memory_limit;
    H.headroom = H.limit / 16;
    H.rng = uv_hrtime() | 1;
    uint64_t budget = c->lua_instruction_budget;
    hook_step = budget == 0 ? 0 : (budget < RL_LUA_HOOK_STEP ? budget : RL_LUA_HOOK_STEP);
    lazy_hook = budget >= RL_LUA_LAZY_BUDGET && watch_start() == 0;
    size_t ndefs = c->nplugins + c->nlua_entries;
    blk_hdr = c->plugin_memory_limit ? BLK_HDR_SIZE : 0; /* before the state's first block */
    H.chunk_refs = calloc(ndefs ? ndefs : 1, sizeof *H.chunk_refs);
    H.config_refs = calloc(ndefs ? ndefs : 1, sizeof *H.config_refs);
    free(src_hash);
    src_hash = src_hash_fill = calloc(ndefs ? ndefs : 1, sizeof *src_hash);
    if (!H.chunk_refs || !H.config_refs || !src_hash || !(H.L = lua_newstate(host_alloc, NULL))) {
        snprintf(err, errlen, "%s: cannot create the Lua state: out of memory",
                 c->path ? c->path : "config");
        free(H.chunk_refs);
        free(H.config_refs);
        free(src_hash);
        src_hash = src_hash_fill = NULL;
        H.chunk_refs = H.config_refs = NULL;
        return -ENOMEM;
    }
    lua_atpanic(H.L, host_panic);
    H.open = 1;
    init_ctx ictx = {err, errlen};
    lua_pushcfunction(H.L, init_p);
    lua_pushlightuserdata(H.L, &ictx);
    int st = lua_pcall(H.L, 1, 1, 0);
    int rc = 0;
    if (st != LUA_OK) {
        snprintf(err, errlen, "%s: plugin host setup failed: %s", c->path ? c->path : "config",
                 lua_type(H.L, -1) == LUA_TSTRING ? lua_tostring(H.L, -1) : "error");
        rc = st == LUA_ERRMEM ? -ENOMEM : -EINVAL;
    } else if (lua_tointeger(H.L, -1) < 0) {
        rc = -EINVAL;
    }
    lua_pop(H.L, 1);
    if (rc < 0) {
        rl_lua_close();
        return rc;
    }
    lua_gc(H.L, LUA_GCCOLLECT);
    gc_setup();
    rl_info("lua", "plugin host ready: %zu plugins, %zu bytes", c->nplugins, H.bytes);
    return 0;
}

void rl_lua_close(void)
{
    if (!H.L)
        return;
    H.open = 0;
    if (H.gc_timer) {
        uv_close((uv_handle_t *)H.gc_timer, gc_timer_closed);
        H.gc_timer = NULL;
    }
    for (rl_lua_inst *I = H.insts; I; I = I->next)
        inst_finish(I, "node shutdown", 1);
    rl_lua_names_close();
    lua_close(H.L);
    H.L = NULL;
    rl_lua_msg_freed_mt = NULL; /* the next state's class is checked again */
    free(accts);
    accts = NULL;
    nacct = acct_free = 0;
    pool_drain();
    rl_lua_json_close();
    free(H.chunk_refs);
    free(H.config_refs);
    H.chunk_refs = H.config_refs = NULL;
    free(src_hash);
    src_hash = src_hash_fill = NULL;
    rl_metric_set(RL_M_LUA_BYTES, 0);
    H.bytes = 0;
}

const void *rl_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                             const luaL_Reg *meta, int *ref)
{
    luaL_newmetatable(L, name);
    if (methods) {
        lua_newtable(L);
        luaL_setfuncs(L, methods, 0);
        lua_setfield(L, -2, "__index");
    }
    if (meta)
        luaL_setfuncs(L, meta, 0);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    const void *mt = lua_topointer(L, -1);
    if (ref) {
        lua_pushvalue(L, -1);
        *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pop(L, 1);
    return mt;
}
