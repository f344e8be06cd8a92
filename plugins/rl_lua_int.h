/* Internals shared by the modules of the Lua plugin host (rl_lua*.c); nothing outside plugins/
 * includes this. */
#ifndef RL_LUA_INT_H
#define RL_LUA_INT_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rl_lua.h"
#include "rl_proc.h"

/* Bounds on what a plugin controls (STYLE: named constants in one place). */
#define RL_LUA_JSON_DEPTH 128     /* json.encode / decode nesting (containers) */
#define RL_LUA_JSON_SCRATCH_KEEP (1u << 20) /* encode scratch kept between calls, bytes */
#define RL_LUA_SELECT_MAX 64      /* cases in one channel.select */
#define RL_LUA_HOOK_STEP 1000     /* instructions between two count-hook calls */
#define RL_LUA_ALLOC_INSN 64      /* bytes allocated that count as one instruction */
#define RL_LUA_SLICE_MAX 200000   /* instructions after which a blocking-capable call yields */
#define RL_LUA_PREEMPT 50000      /* instructions (C work included) of one slice of a long run */
#define RL_LUA_SEND_COST 64       /* instructions charged per message process.send makes */
#define RL_LUA_CHAN_MAX 1000000   /* channel.new(size) upper bound */
#define RL_LUA_POOL_MAX 256       /* Lua blocks up to this size are recycled per size class */
#define RL_LUA_POOL_MIN (2u << 20)  /* free blocks kept: up to the live heap, at least this */
#define RL_LUA_POOL_CAP (4u << 20) /* ... and at most this (rl_lua.c: why) */
#define RL_LUA_DURATION_MAX 9.2e18 /* |duration| in ns (int64, as Go's time.Duration) */
#define RL_LUA_TICK_MIN_NS 1e6     /* shortest ticker period: the loop's timer resolution */
#define RL_LUA_USER_TIMER_STEP_MS 1 /* a ticker started as a user's n-th live timer: period >= (n - 1) x this */
#define RL_LUA_UNMON_MAX 256       /* processes one instance has unmonitored (pending exits) */
#define RL_LUA_TASKS_MAX 1024      /* live coroutine.spawn tasks of one instance */

/* What the sandbox bounds per instance: the label of its kill and refusal counters. */
#define RL_LUA_LIMITS(X)                                                                          \
    X(INSTRUCTIONS, "instructions") /* lua_instruction_budget, C work included */              \
    X(MEMORY, "memory")                                                                          \
    X(RESULT, "result_size")        /* string.rep, table.concat, gsub results */               \
    X(CHILDREN, "children")                                                                      \
    X(TIMERS, "timers")                                                                          \
    X(CHANNELS, "channels")

typedef enum {
#define RL_LIMIT_ENUM(id, name) RL_LIMIT_##id,
    RL_LUA_LIMITS(RL_LIMIT_ENUM)
#undef RL_LIMIT_ENUM
    RL_LIMIT_COUNT
} rl_lua_limit;
_Static_assert(RL_LIMIT_COUNT <= 8, "rl_lua_inst.limit_kind is a 3-bit field");

/* What is bounded per user (the whole tree of one user's instances on this node, counted on
   its rl_owner): these refuse, they never kill, so they have refusal counters only. */
#define RL_LUA_USER_LIMITS(X)                                                                     \
    X(USER_PROCESSES, "user_processes") /* plugin_user_max_processes */                        \
    X(USER_TIMERS, "user_timers")       /* plugin_user_max_timers */                           \
    X(USER_CHANNELS, "user_channels")   /* plugin_user_max_channels */                        \
    X(PG_SCOPES, "pg_scopes")           /* pg_max_scopes: scope handles one instance holds */    \
    X(PG_GROUPS, "pg_groups")           /* pg_max_groups: joins one process holds */             \
    X(PG_MEMBERS, "pg_members")         /* pg_max_members: joins one group holds */

enum {
    RL_LIMIT_USER_FIRST_ = RL_LIMIT_COUNT - 1,
#define RL_LIMIT_ENUM(id, name) RL_LIMIT_##id,
    RL_LUA_USER_LIMITS(RL_LIMIT_ENUM)
#undef RL_LIMIT_ENUM
    RL_REFUSAL_COUNT
};

typedef struct rl_lua_inst rl_lua_inst;
typedef struct rl_lua_timer rl_lua_timer;
typedef struct rl_lua_chan rl_lua_chan;

/* One case of a blocked select: links the instance into the channel's waiter list. 32 bytes
   (an idle instance blocked in a select over its inbox and events holds two). */
typedef struct rl_lua_waiter {
    struct rl_lua_waiter *next;
    /* The pointer that points to this waiter (the channel's head, or the previous waiter's
       next), NULL while unlinked: unlinking needs no channel pointer (as BSD queue.h's LIST).
       The channel is anchored by the blocked coroutine's stack (the select arguments). */
    struct rl_lua_waiter **pprev;
    rl_lua_inst *inst;
    int op; /* 0 receive, 1 send */
} rl_lua_waiter;
_Static_assert(sizeof(rl_lua_waiter) <= 32, "two rl_lua_waiter fit the 64-byte class");

typedef enum {
    RL_INST_READY,   /* in the run queue or about to be */
    RL_INST_RUNNING, /* inside lua_resume */
    RL_INST_BLOCKED, /* waiting on channels or a sleep timer */
    RL_INST_DEAD     /* torn down; waiting for rl_proc to free it */
} rl_lua_inst_state;

/* Events of the events channel (C side until received). */
typedef enum { RL_EV_CANCEL, RL_EV_EXIT, RL_EV_LINK_DOWN, RL_EV_OUTDATED } rl_lua_ev_kind;
typedef struct rl_lua_event {
    struct rl_lua_event *next;
    rl_lua_ev_kind kind;
    uint64_t deadline_ms; /* CANCEL */
    rl_body *value;       /* EXIT: the process's return value (JSON), NULL if none;
                             OUTDATED: the changed entry ids (JSON array) */
    char *error;          /* EXIT / LINK_DOWN: NULL = normal exit */
    char *reason;         /* CANCEL: why (NULL: none given) */
    char from[RL_PID_MAX];
} rl_lua_event;

/* Pids an instance unmonitored: their PID_EXIT gives no EXIT event (the core keeps the
   monitor; the host drops its report). */
typedef struct rl_lua_unmon {
    uint32_t n;
    char pid[][RL_PID_MAX];
} rl_lua_unmon;

/* 256 bytes: one jemalloc class per idle instance, keep it there. What an idle instance of a
   typical plugin (one that receives and sends) never uses lives in its aux (rl_lua_fid.c). */
struct rl_lua_inst {
    rl_proc proc; /* first member: (rl_lua_inst *)p */
    const rl_plugin_def *def;
    lua_State *co; /* the instance's coroutine, anchored by co_ref */
    uint64_t used; /* instructions counted in the current run (preempted slices included) */
    const char *limit_hit; /* static reason text, NULL while within every limit */
    rl_lua_inst *prev, *next; /* host list of instances not yet freed */
    rl_lua_waiter *waits;     /* nwaits linked while BLOCKED */
    rl_lua_timer *timers;     /* every live timer this instance owns */
    rl_body *user_meta; /* args.user_metadata (JSON object), NULL if none; the user is the owner */
    struct rl_lua_aux *aux; /* what few instances use (rl_lua_fid.c), NULL until then */
    uint64_t parent; /* serial of the instance that spawned it, 0 for a hub's plugin (here, not
                        in aux: every child has one, and most children need nothing else) */
    int co_ref, env_ref, inbox_ref, events_ref;
    int nargs; /* values on co's stack for the next resume */
    unsigned budget_hit : 1, oom : 1, torn : 1, listed : 1;
    unsigned exit_pending_set : 1; /* process.terminate(self): exit (with aux->exit_pending)
                                      once the resume returns */
    unsigned oom_refusals : 2; /* consecutive refused allocations while running */
    unsigned state : 2;        /* rl_lua_inst_state */
    unsigned limit_kind : 3;   /* rl_lua_limit: with limit_hit, the limit that doomed it */
    unsigned preempt_due : 1, preempted : 1; /* a slice is over / the run yielded for it */
    unsigned user_counted : 1; /* counted in its user's rl_owner_use.procs until torn down */
    unsigned mem_over : 1;     /* went over plugin_memory_limit: its next hook decides (rl_lua.c) */
    unsigned upgradable : 1;   /* process.set_options({upgradable = true}): gets OUTDATED */
    unsigned booting : 1;      /* its coroutine runs the plugin's chunk (rl_lua.c: boot_method) */
    unsigned nwaits : 7, wcap : 7; /* waits linked / allocated (at most RL_LUA_SELECT_MAX) */
    uint32_t ntimers;  /* live timers it owns */
    uint32_t mem_acct; /* its memory account (rl_lua.c), 0 = none */
};
_Static_assert(sizeof(rl_lua_inst) <= 256, "rl_lua_inst is in the 256-byte class");
_Static_assert(RL_LUA_SELECT_MAX < 128, "rl_lua_inst.nwaits and wcap are 7-bit fields");

/* The exit value of a process one of its monitors has not handled yet (result.value). */
typedef struct rl_lua_exitval {
    struct rl_lua_exitval *next;
    char pid[RL_PID_MAX];
    rl_body *value; /* JSON */
} rl_lua_exitval;

/* process.listen(topic): messages of that topic go to its channel, not the inbox. */
typedef struct rl_lua_listen {
    char *topic;
    int chan_ref;
} rl_lua_listen;
#define RL_LUA_LISTEN_MAX 64 /* subscriptions of one instance */

/* Per-instance state few instances need (made by rl_lua_aux_of on first use, freed when the
   instance is torn down): the platform-fidelity parts (rl_lua_fid.c), tasks, and what a
   plugin that only receives and sends never uses. A missing aux reads as all fields zero.
   120 bytes (the 128 class). */
typedef struct rl_lua_aux {
    rl_lua_exitval *exitvals;
    rl_body *ctx;     /* process.with_context values it was spawned with (JSON object) */
    struct rl_lua_listen *listens; /* process.listen subscriptions */
    struct rl_lua_listen *execs;   /* process.exec waits: topic = the child's pid */
    struct rl_lua_inst *main;   /* a coroutine.spawn task: the instance it belongs to */
    struct rl_lua_inst **tasks; /* an instance: its live tasks */
    char *exit_pending; /* with exit_pending_set: the error to exit with, NULL = "terminated" */
    rl_lua_timer *deadline;     /* the cancel deadline (a timer of timers), NULL if none */
    struct rl_lua_count *chans; /* live channels it made (plugin_max_channels), NULL if none */
    rl_lua_unmon *unmon;        /* processes it unmonitored, NULL if none */
    char **links;    /* children started linked: their error exits also give LINK_DOWN */
    char **children; /* live children it spawned: they end with it (plugin_max_children) */
    int imports_ref; /* table: library id -> the module this instance imported */
    uint64_t next_slice_ns; /* a long run: its next slice not before this while others work */
    uint64_t fresh_seen;    /* H.fresh_runs when it last ran or waited for its turn */
    uint32_t nlistens, nexecs, ntasks;
    uint32_t nlinks, nchildren;
} rl_lua_aux;

/* A count shared by an instance and the objects it made, freed by whichever goes last. */
typedef struct rl_lua_count {
    size_t live;
    int refs;
    rl_owner *owner; /* a reference: the user whose count (rl_owner_use.chans) it adds to */
} rl_lua_count;

typedef struct rl_lua_host {
    lua_State *L;
    uint64_t fresh_runs; /* runs started from a wait (not the next slice of a long one) */
    const rl_config *cfg;
    size_t bytes, limit, headroom;
    int *chunk_refs;  /* per cfg->plugins[i]: the compiled chunk */
    int *config_refs; /* per cfg->plugins[i]: its shared read-only args.config (lazily) */
    int safe_ref, env_mt_ref, boot_ref, readonly_ref;
    rl_lua_inst *current; /* the instance inside lua_resume */
    const char *cancel_from, *cancel_reason; /* set around rl_cancel by process.cancel */
    rl_lua_inst *insts;
    int open;
    uint64_t rng;
    uint64_t resumes, resumes_seen;     /* quiet-time collection (rl_lua.c) */
    uint64_t allocated, allocated_at_gc; /* bytes ever allocated; at the last full collection */
    uint64_t cap_gc_next; /* uv_hrtime() before which no instance at its cap gets a collection */
    uint64_t cap_gcs;     /* young collections run for instances at their cap (tests) */
    uv_timer_t *gc_timer; /* its own block: a closing handle outlives rl_lua_close */
    uint64_t kills[RL_LIMIT_COUNT];    /* instances ended by a limit */
    uint64_t refusals[RL_REFUSAL_COUNT]; /* requests refused at a limit (per user too) */
} rl_lua_host;

extern rl_lua_host rl_lua_g;

/* Bytes on the small-block free lists (tests). */
size_t rl_lua_pool_bytes(void);

/* rl_lua_security.c: pushes the security module's C functions (the prelude adds actor). */
void rl_lua_security_push(lua_State *L);
/* rl_send_user (rl_security.h) for the running instance I, its user's metadata as actor.meta. */
int rl_lua_send_user(lua_State *L, rl_lua_inst *I, const char *user, size_t len, rl_msg *m);

/* 1 when the user scope allows action on res[0..rlen) for the running instance I (its user,
   with the user's metadata as actor.meta); charged to I. */
int rl_lua_can(lua_State *L, rl_lua_inst *I, const char *action, const char *res, size_t rlen);

/* rl_lua_pg.c: pushes the pg module's table (pg.open). */
void rl_lua_pg_push(lua_State *L);

/* rl_lua_uuid.c: pushes the uuid module's table. */
void rl_lua_uuid_push(lua_State *L);

/* rl_lua_http.c: pushes the http module's table; cancels and frees the requests of an ending
   instance (from inst_teardown: no callback reaches it afterwards). */
void rl_lua_http_push(lua_State *L);
void rl_lua_http_release(rl_lua_inst *I);

/* rl_lua.c */
/* The running instance (the one a running coroutine.spawn task belongs to); raises a Lua
   error when called outside one. */
rl_lua_inst *rl_lua_current(lua_State *L);
/* What is inside lua_resume: the instance or one of its tasks (what blocks, and is woken, is
   this one); raises outside. */
rl_lua_inst *rl_lua_running(lua_State *L);
/* Raises unless L may block: it must be yieldable (not inside a C call such as a table.sort
   comparator); it may be a coroutine the plugin made (rl_lua_block). */
/* Registers the metatable `name` for a userdata class: methods (may be NULL) as __index, the
   metamethods meta (may be NULL, e.g. __gc, __tostring), and a locked __metatable so plugins
   cannot read or replace it. Leaves the stack as it was. Returns the metatable's identity (a
   table never moves) for rl_lua_toudata and, in *ref when not NULL, a registry reference to it
   for rl_lua_set_class. */
const void *rl_lua_new_class(lua_State *L, const char *name, const luaL_Reg *methods,
                             const luaL_Reg *meta, int *ref);
/* The userdata at idx when its metatable is mt (rl_lua_new_class), else NULL: what
   luaL_testudata answers, without looking the class name up in the registry on each call. */
static inline void *rl_lua_toudata(lua_State *L, int idx, const void *mt)
{
    if (lua_type(L, idx) != LUA_TUSERDATA || !lua_getmetatable(L, idx))
        return NULL;
    const void *m = lua_topointer(L, -1);
    lua_pop(L, 1);
    return m == mt ? lua_touserdata(L, idx) : NULL;
}
/* rl_lua_toudata, raising luaL_checkudata's error ("<tname> expected, got ...") otherwise. */
static inline void *rl_lua_checkudata(lua_State *L, int idx, const void *mt, const char *tname)
{
    void *u = rl_lua_toudata(L, idx, mt);
    if (!u)
        luaL_typeerror(L, idx, tname);
    return u;
}
/* Every collectable object of Lua 5.4 starts with its GC list pointer, then its tag byte: where
   the host's layout checks (the JSON module's table mark, the message blocks below) read it. */
#define RL_LUA_GC_TAG_OFF 8

/* Messages give back what they hold (body, owner, the body's charge) when Lua frees their
   block, not in a __gc (plugins/rl_lua_chan.c, "Messages without a finalizer"): the host's
   allocator calls rl_lua_msg_freeing for a freed block that is a full userdata of the message
   class. rl_lua_msg_freed_mt is that class's metatable while this holds (set by
   rl_lua_chan_open once it has checked the header layout below on the Lua loaded), else NULL
   and the class has a __gc. The layout is Lua 5.4's Udata with no user values: the GC list
   pointer, the tag byte (RL_LUA_GC_TAG_OFF), ..., the metatable, then the memory. */
#define RL_LUA_UDATA_MT_OFF 24
#define RL_LUA_UDATA_MEM_OFF 32
#define RL_LUA_UDATA_VTAG 7 /* LUA_VUSERDATA: LUA_TUSERDATA, variant 0 */
extern const void *rl_lua_msg_freed_mt;
/* Releases the message in block (a candidate by its tag and metatable) when its canary proves
   it one: blocks that are not objects (arrays, buffers) hold bytes a plugin may choose, and a
   freed block's old bytes stay in its next use, so the tag and the metatable alone are not
   proof. The canary is a secret of the process mixed with the block's address; a released
   message's metatable field and canary are wiped. */
void rl_lua_msg_freeing(void *block, size_t osize);
static inline void rl_lua_block_freeing(void *ptr, size_t osize)
{
    const unsigned char *b = ptr;
    if (rl_lua_msg_freed_mt && osize > RL_LUA_UDATA_MEM_OFF &&
        b[RL_LUA_GC_TAG_OFF] == RL_LUA_UDATA_VTAG &&
        *(const void *const *)(b + RL_LUA_UDATA_MT_OFF) == rl_lua_msg_freed_mt)
        rl_lua_msg_freeing(ptr, osize);
}
/* Sets the metatable held at registry reference ref on the value at the top. */
static inline void rl_lua_set_class(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_setmetatable(L, -2);
}
void rl_lua_check_block(lua_State *L, rl_lua_inst *I);
/* Blocks I (the running unit, rl_lua_running) in a blocking call of L: yields with k as the
   continuation (k retries the call). L is I's coroutine or one the plugin made and resumed
   below it: then the prelude's resume blocks the coroutines above in turn. Call after
   rl_lua_check_block and after linking I's waiters or timer. */
int rl_lua_block(lua_State *L, rl_lua_inst *I, lua_KContext ctx, lua_KFunction k);
/* Why I must end now (budget, memory, another limit, terminate), or NULL while it may run. */
const char *rl_lua_doomed(const rl_lua_inst *I);
/* Counts n steps of C work of the running instance against its instruction budget; raises
   (and dooms it) when the budget is spent. No-op outside an instance. */
void rl_lua_charge(lua_State *L, uint64_t n);
/* Charges (add) or gives back (sub) bytes the instance of account acct holds outside Lua
   (message bodies) to its account and to the node's count. */
void rl_lua_mem_hold(uint32_t acct, size_t add, size_t sub);
/* Bytes charged to I's account. */
size_t rl_lua_mem_of(const rl_lua_inst *I);
/* Dooms the running instance for exceeding `kind` (reason: static text) and raises. */
void rl_lua_violation(lua_State *L, rl_lua_limit kind, const char *reason);
/* Logs and counts a request of I refused at limit `kind` (an rl_lua_limit or one of
   RL_LUA_USER_LIMITS; the caller answers the error). */
void rl_lua_refused(rl_lua_inst *I, int kind);
/* Per-user bounds: 1 when I's user may have one more of what `kind` (RL_LIMIT_USER_*) counts,
   else counts and logs the refusal and returns 0. Always 1 for the system's instances. */
int rl_lua_user_room(rl_lua_inst *I, int kind);
/* Records pid as a live child of I (it is killed when I ends). Returns 0 or -ENOMEM. */
int rl_lua_child_add(rl_lua_inst *I, const char *pid);
/* Makes a blocked instance runnable (unlinks its waiters). */
void rl_lua_wake(rl_lua_inst *I);
/* Ends I with error (NULL = normal) from outside its resume; safe to call for the running
   instance too (the exit happens when its resume returns). */
void rl_lua_kill(rl_lua_inst *I, const char *error);
/* Value of a registry ref pushed and its userdata returned (no allocation, no error). */
void *rl_lua_ref_udata(int ref);
/* Random 64-bit number (xorshift). */
uint64_t rl_lua_rand(void);
/* The instance with that pid, or NULL (not local, gone, or not a plugin). */
rl_lua_inst *rl_lua_inst_of(const char *pid);
/* Starts an instance of def from inside Lua (L is the calling coroutine, `parent` its instance):
   the child acts for the parent's user; args_json (may be NULL) is the run() argument as JSON;
   with monitored the parent gets PID_EXIT. Writes the pid. Returns 0, or negative with err. */
int rl_lua_spawn_child(lua_State *L, rl_lua_inst *parent, const rl_plugin_def *def,
                       const char *args_json, int monitored, char pid_out[RL_PID_MAX], char *err,
                       size_t errlen);
/* The same with every run() argument: args_json is a JSON array of nargs values (holes are
   nil), ctx a JSON object for the child's ctx module (may be NULL). */
int rl_lua_spawn_child_n(lua_State *L, rl_lua_inst *parent, const rl_plugin_def *def,
                         const char *args_json, int nargs, const char *ctx, int monitored,
                         char pid_out[RL_PID_MAX], char *err, size_t errlen);
/* Index of pid in I's unmonitored set, or -1. */
int rl_lua_unmon_find(const rl_lua_inst *I, const char *pid);
/* Takes entry u (an index rl_lua_unmon_find gave) out of I's unmonitored set. */
void rl_lua_unmon_remove(rl_lua_inst *I, int u);
/* The plugin def whose id or name is s, or NULL. */
const rl_plugin_def *rl_lua_find_def(const char *s);

/* rl_lua_chan.c */
enum { RL_CH_LUA, RL_CH_INBOX, RL_CH_EVENTS, RL_CH_TIMER };
/* Pushes a new channel userdata; raises on OOM. */
rl_lua_chan *rl_lua_chan_new(lua_State *L, int kind, size_t cap);
/* Pushes channel.* functions and methods into the table on top. */
void rl_lua_chan_open(lua_State *L);
/* Host-fed channels (they never block the feeder). */
void rl_lua_chan_push_msg(rl_lua_chan *ch, rl_msg *m);
void rl_lua_chan_push_event(rl_lua_chan *ch, rl_lua_event *e);
void rl_lua_chan_fire(rl_lua_chan *ch, int64_t unix_ns);
/* Stores the process whose mailbox count an inbox channel gives back on receive (NULL: none). */
void rl_lua_chan_set_owner(rl_lua_chan *ch, rl_proc *p);
/* Takes the first message still queued in an inbox channel (NULL: none), out of its owner's
   memory account. */
rl_msg *rl_lua_chan_take(rl_lua_chan *ch);
/* An inbox-kind channel whose receive gives the payload's data instead of the message. */
void rl_lua_chan_set_data_only(rl_lua_chan *ch, int on);
/* Ends a host-fed inbox-kind channel: what it holds leaves its owner's mailbox count and memory
   account, it is closed (receivers get what is left, then nil, false) and has no owner. */
void rl_lua_chan_detach(rl_lua_chan *ch);
/* Unlinks every waiter of I. */
void rl_lua_unwait(rl_lua_inst *I);
/* process.upgrade: once the running resume of I unwinds, I runs def's current chunk with the
   nargs run() arguments of args_json (a JSON array, taken over) instead of ending. */
void rl_lua_upgrade_request(rl_lua_inst *I, const rl_plugin_def *def, char *args_json, int nargs);
void rl_lua_event_free(rl_lua_event *e);

/* rl_lua_json.c */
/* Encodes the value at idx: pushes the JSON text and returns 1, or pushes an error message
   and returns 0. Raises only on OOM. */
int rl_lua_json_encode(lua_State *L, int idx);
/* Like rl_lua_json_encode, but the text is left in the module's C scratch buffer instead of a
   Lua string: returns 1 with *text / *len set (no NUL; valid until the next encode call of
   either kind, owned by the module), or pushes an error message and returns 0. The stack is
   otherwise as it was. Raises only on OOM. */
int rl_lua_json_encode_scratch(lua_State *L, int idx, const char **text, size_t *len);
/* Decodes s[0..len) (nothing is read at or past s[len]): pushes the value and returns 1, or
   pushes an error message and returns 0. Raises only on OOM. */
int rl_lua_json_decode(lua_State *L, const char *s, size_t len);
/* t is a hub plugin's run() argument whose user_metadata and user_hub_pid are not made yet
   (rl_lua.c, push_hub_args): makes them, drops its metatable and returns 1; else 0. */
int rl_lua_args_fill(lua_State *L, int t);
/* Pushes I's user_metadata as a table ({} when it has none or it does not decode). */
void rl_lua_push_user_meta(lua_State *L, const rl_lua_inst *I);
/* Pushes the json module table; the first call checks whether known objects can be marked in
   the table's header (else they go to a weak set in each state's registry). */
void rl_lua_json_open(lua_State *L);
/* How known objects are kept: 1 the header bit, 0 the registry set, -1 not decided yet. With
   on >= 0 sets it first (tests run both ways; 1 only where the probe passed). */
int rl_lua_json_header_bit(int on);
/* Frees the encode scratch (any state may encode again afterwards: it is allocated anew). */
void rl_lua_json_close(void);

/* rl_lua_time.c */
enum { RL_TIMER_SLEEP, RL_TIMER_DEADLINE, RL_TIMER_ONCE, RL_TIMER_TICKER };
/* Starts a timer owned by I firing after ms (every period_ms when > 0). chan_ref (taken over,
   may be LUA_NOREF) is the channel it feeds. NULL on OOM (chan_ref released). */
rl_lua_timer *rl_lua_timer_start(rl_lua_inst *I, int kind, uint64_t ms, uint64_t period_ms,
                                 int chan_ref);
/* Stops and closes t (freed in the close callback); releases its channel ref. */
void rl_lua_timer_close(rl_lua_timer *t);
void rl_lua_time_open(lua_State *L); /* pushes the time module table */
/* Duration argument in ns: a number (nanoseconds) or a Go duration string. Raises if bad. */
double rl_lua_duration_arg(lua_State *L, int idx);
/* Go-style duration "1h2m3.5s", "150ms", "10us", "5ns" -> ns; -1 if malformed. */
int rl_lua_duration_parse(const char *s, double *ns);
int64_t rl_lua_unix_ns(void);
void rl_lua_time_push(lua_State *L, int64_t unix_ns);

/* rl_lua_str.c */
/* Replaces string.find/match/gmatch/gsub/rep and table.concat/sort/insert/remove/move in the
   state's global tables with bounded ones (before the prelude copies them). */
void rl_lua_str_open(lua_State *L);

/* rl_lua_fid.c: the platform's errors, env, ctx, funcs modules, imports of library.lua
   entries, process.with_context, exit values. */
/* The aux state of I, made on first use; NULL on OOM. */
rl_lua_aux *rl_lua_aux_of(rl_lua_inst *I);
/* Frees I's aux state (teardown). */
void rl_lua_aux_free(rl_lua_inst *I);
/* The process.listen channel m goes to instead of I's inbox, or NULL. */
rl_lua_chan *rl_lua_listen_chan(const rl_lua_inst *I, const rl_msg *m);
/* Takes the pending exit value of pid for I (NULL if none); the caller owns the reference. */
rl_body *rl_lua_exitval_take(rl_lua_inst *I, const char *pid);
/* When I waits on pid in process.exec: its exit (error, value: taken over) goes to that
   wait's channel instead of an EXIT event. Returns 1 if so, else 0 (value untouched). */
int rl_lua_exec_done(rl_lua_inst *I, const char *pid, const char *error, rl_body *value);
/* Hands the exit value at idx of the ending instance I to every Lua instance monitoring it. */
void rl_lua_exitval_post(lua_State *co, rl_lua_inst *I, int idx);
/* Adds host.extend (run by the prelude: errors, env, ctx, funcs, process.with_context, and
   the import function require falls back to) and its host.fid_* helpers to the table on top. */
void rl_lua_fid_host(lua_State *L);
/* The def at index i of the host's list (plugins, then the other Lua entries), count. */
const rl_plugin_def *rl_lua_def_at(size_t i);
size_t rl_lua_ndefs(void);
/* The compiled chunk of def (LUA_NOREF if none). */
int rl_lua_chunk_of(const rl_plugin_def *def);
/* Pushes a fresh environment table for a library or function run (the instance's globals
   table is not shared with it; it sees the same sandbox). */
void rl_lua_push_env(lua_State *L);

/* rl_lua_proc.c */
void rl_lua_proc_open(lua_State *L); /* pushes the process module table */
/* process.spawn* with (id, host, args...) from stack index first; ctx: with_context values
   (JSON object) or NULL. Returns the Lua results (pid, or nil and the reason). */
int rl_lua_proc_spawn(lua_State *L, int first, int monitored, int linked, const char *ctx);
/* Pushes the host helper table used by the prelude (log, env, actor). */
void rl_lua_host_open(lua_State *L);
/* Drops every registry name owned by pid. */
void rl_lua_names_release(const char *pid);
void rl_lua_names_close(void);

#endif
