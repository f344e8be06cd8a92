/* Channels of the Lua plugin host: channel.new/select, ch:send/receive/close/case_*, plus the
 * host-fed channels (inbox of messages, events, timer ticks) and message objects.
 *
 * A blocked operation links one waiter per case into the channels and yields the instance's
 * coroutine (lua_yieldk); any change to a channel wakes its waiters, which retry the whole
 * operation from their continuation. Retrying instead of handing values over keeps every value
 * inside Lua (the buffer is the channel's uservalue table) and is cheap because a channel is
 * in practice used by one instance only (channels cannot be sent across processes). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_lua_int.h"

#define CHAN_MT "rl.channel"
#define MSG_MT "rl.message"
#define COUNT_MT "rl.count"

/* The classes' metatables, set by rl_lua_chan_open (one Lua state at a time). */
static const void *chan_mt, *msg_mt;
static int chan_ref = LUA_NOREF, msg_ref = LUA_NOREF;

/* Field names set or read for every message, interned once per state and kept in the
   registry's array part: pushing one is an array read, where lua_setfield and lua_getfield
   with a C string look its address up in Lua's string cache and strcmp it each call. */
enum { K_OK, K_VALUE, K_CHANNEL, K_DEFAULT, K_CONN_PID, K_COUNT };
static const char *const key_names[K_COUNT] = {"ok", "value", "channel", "default", "conn_pid"};
static int key_ref[K_COUNT];

static inline void push_key(lua_State *L, int k) { lua_rawgeti(L, LUA_REGISTRYINDEX, key_ref[k]); }

enum { OP_RECV = 0, OP_SEND = 1 };
enum { MODE_SELECT = 0, MODE_RECV = 1, MODE_SEND = 2 };

/* Kept small (an idle instance holds two): the kinds share one union, and only a Lua channel
   has a uservalue (its ring buffer). A receive case is the channel itself. */
struct rl_lua_chan {
    unsigned char kind, closed;
    unsigned char data_only; /* an inbox-kind channel of process.listen(t, {message = false}):
                                a receive gives the payload's data, not the message */
    rl_lua_waiter *waiters;
    union {
        struct {
            size_t cap, head, count; /* RL_CH_LUA: ring of max(cap,1) slots in uservalue 1 */
        };
        struct {
            rl_msg *mhead, *mtail; /* RL_CH_INBOX */
            rl_proc *owner;        /* whose mailbox count a receive gives back; cleared when
                                      the instance is torn down */
        };
        struct {
            rl_lua_event *ehead, *etail; /* RL_CH_EVENTS */
        };
        struct {
            int fired;       /* RL_CH_TIMER: a tick is pending (capacity one) */
            int64_t fire_ns;
        };
    };
};

/* A message as Lua holds it: what msg:topic(), from() and data() read, taken out of the rl_msg
   (272 bytes, freed when it reaches Lua) into the userdata itself. A plugin blocked in its loop
   keeps the last message it read alive in a stack slot, so this is per idle instance. */
typedef struct msg_ud {
    uint64_t canary; /* msg_canary ^ its address (rl_lua_msg_freeing) */
    rl_body *body;   /* a reference; NULL = none (control topics) */
    rl_owner *owner; /* the sender's owner (a reference); NULL = the system */
    uint16_t flags;  /* RL_MSG_* */
    uint16_t from_len;
    uint32_t name_len;
    uint32_t acct;   /* the memory account its body is charged to (0: none) */
    char s[]; /* the sender's pid (from_len bytes, NUL), then the topic name (name_len, NUL) */
} msg_ud;

static uint64_t msg_canary; /* drawn once per process, never seen by Lua (rl_lua_msg_freeing) */

/* Bytes of m's body an instance is charged for holding it. */
static size_t body_bytes(const rl_msg *m) { return m && m->body ? m->body->len : 0; }

/* The memory account of the instance owning an inbox (0 once it is torn down). */
static uint32_t inbox_acct(const rl_lua_chan *ch)
{
    return ch->owner ? ((const rl_lua_inst *)ch->owner)->mem_acct : 0;
}

typedef struct sel_case {
    rl_lua_chan *ch;
    int op;
    int idx; /* MODE_SELECT: index in the cases table */
} sel_case;

void rl_lua_event_free(rl_lua_event *e)
{
    if (!e)
        return;
    free(e->error);
    free(e->reason);
    rl_body_unref(e->value);
    free(e);
}

static void notify(rl_lua_chan *ch)
{
    while (ch->waiters)
        rl_lua_wake(ch->waiters->inst);
}

void rl_lua_unwait(rl_lua_inst *I)
{
    for (size_t i = 0; i < I->nwaits; i++) {
        rl_lua_waiter *w = &I->waits[i];
        if (!w->pprev)
            continue;
        *w->pprev = w->next;
        if (w->next)
            w->next->pprev = w->pprev;
        w->pprev = NULL;
        w->next = NULL;
    }
    I->nwaits = 0;
}

rl_lua_chan *rl_lua_chan_new(lua_State *L, int kind, size_t cap)
{
    /* Host channels (inbox, events, timers) carry no uservalue; a Lua channel has its ring
       buffer (1) and, when a plugin made it, its maker's count token (2). */
    rl_lua_chan *ch = lua_newuserdatauv(L, sizeof *ch, kind == RL_CH_LUA ? 2 : 0);
    memset(ch, 0, sizeof *ch);
    ch->kind = (unsigned char)kind;
    if (kind == RL_CH_LUA)
        ch->cap = cap;
    rl_lua_set_class(L, chan_ref);
    if (kind == RL_CH_LUA) {
        lua_createtable(L, cap ? (int)(cap < 64 ? cap : 64) : 1, 0);
        lua_setiuservalue(L, -2, 1);
    }
    return ch;
}

void rl_lua_chan_set_owner(rl_lua_chan *ch, rl_proc *p)
{
    if (!p && ch->owner) /* torn down: what is still queued is nobody's any more */
        for (rl_msg *m = ch->mhead; m; m = m->next)
            rl_lua_mem_hold(inbox_acct(ch), 0, body_bytes(m));
    ch->owner = p;
}

rl_msg *rl_lua_chan_take(rl_lua_chan *ch)
{
    rl_msg *m = ch->kind == RL_CH_INBOX ? ch->mhead : NULL;
    if (!m)
        return NULL;
    if (ch->owner)
        rl_lua_mem_hold(inbox_acct(ch), 0, body_bytes(m));
    ch->mhead = m->next;
    if (!ch->mhead)
        ch->mtail = NULL;
    m->next = NULL;
    return m;
}

void rl_lua_chan_set_data_only(rl_lua_chan *ch, int on) { ch->data_only = on ? 1 : 0; }

void rl_lua_chan_detach(rl_lua_chan *ch)
{
    size_t queued = 0;
    for (rl_msg *m = ch->mhead; m; m = m->next)
        queued++;
    if (ch->owner) /* what it still holds leaves the mailbox bound and the memory account */
        ch->owner->qlen = ch->owner->qlen > queued ? ch->owner->qlen - (uint32_t)queued : 0;
    rl_lua_chan_set_owner(ch, NULL);
    ch->closed = 1;
    notify(ch);
}

void rl_lua_chan_push_msg(rl_lua_chan *ch, rl_msg *m)
{
    rl_lua_mem_hold(inbox_acct(ch), body_bytes(m), 0); /* a body the instance holds */
    m->next = NULL;
    if (ch->mtail)
        ch->mtail->next = m;
    else
        ch->mhead = m;
    ch->mtail = m;
    notify(ch);
}

void rl_lua_chan_push_event(rl_lua_chan *ch, rl_lua_event *e)
{
    e->next = NULL;
    if (ch->etail)
        ch->etail->next = e;
    else
        ch->ehead = e;
    ch->etail = e;
    notify(ch);
}

void rl_lua_chan_fire(rl_lua_chan *ch, int64_t unix_ns)
{
    if (ch->closed || ch->fired)
        return; /* a tick nobody took yet: this one is dropped (Go tickers do the same) */
    ch->fired = 1;
    ch->fire_ns = unix_ns;
    notify(ch);
}

static rl_lua_chan *check_chan(lua_State *L, int idx)
{
    return rl_lua_checkudata(L, idx, chan_mt, CHAN_MT);
}

static int has_recv_waiter(const rl_lua_chan *ch)
{
    for (const rl_lua_waiter *w = ch->waiters; w; w = w->next)
        if (w->op == OP_RECV)
            return 1;
    return 0;
}

static int can_recv(const rl_lua_chan *ch)
{
    if (ch->closed)
        return 1;
    switch (ch->kind) {
    case RL_CH_LUA: return ch->count > 0;
    case RL_CH_INBOX: return ch->mhead != NULL;
    case RL_CH_EVENTS: return ch->ehead != NULL;
    default: return ch->fired;
    }
}

static int can_send(const rl_lua_chan *ch)
{
    if (ch->closed)
        return 1; /* the send raises */
    if (ch->cap)
        return ch->count < ch->cap;
    return ch->count == 0 && has_recv_waiter(ch);
}

/* Pushes a message object holding what Lua reads of m (m itself stays the caller's). */
static void push_msg(lua_State *L, const rl_msg *m)
{
    size_t nlen, flen = strnlen(m->from, sizeof m->from - 1);
    const char *name = rl_msg_topic_name(m, &nlen);
    msg_ud *u = lua_newuserdatauv(L, sizeof *u + flen + nlen + 2, 0);
    u->canary = msg_canary ^ (uint64_t)(uintptr_t)u;
    memcpy(u->s, m->from, flen);
    u->s[flen] = 0;
    memcpy(u->s + flen + 1, name, nlen);
    u->s[flen + 1 + nlen] = 0;
    u->from_len = (uint16_t)flen;
    u->name_len = (uint32_t)nlen;
    u->flags = m->flags;
    u->body = rl_body_ref(m->body);
    u->owner = rl_owner_ref(m->owner);
    u->acct = 0;
    rl_lua_set_class(L, msg_ref);
}

static void push_event(lua_State *L, const rl_lua_event *e)
{
    static const char *const kinds[] = {"pid.cancel", "pid.exit", "pid.link.down",
                                         "pid.outdated"};
    lua_createtable(L, 0, 4);
    lua_pushstring(L, kinds[e->kind]);
    lua_setfield(L, -2, "kind");
    if (e->from[0]) {
        lua_pushstring(L, e->from);
        lua_setfield(L, -2, "from");
    }
    if (e->kind == RL_EV_CANCEL) {
        lua_pushinteger(L, (lua_Integer)e->deadline_ms * 1000000); /* a duration: ns */
        lua_setfield(L, -2, "deadline");
        lua_pushstring(L, e->reason ? e->reason : "cancelled");
        lua_setfield(L, -2, "reason");
    } else if (e->kind == RL_EV_OUTDATED) {
        if (!e->value)
            lua_newtable(L);
        else if (!rl_lua_json_decode(L, e->value->data, e->value->len))
            lua_pop(L, 1), lua_newtable(L);
        lua_setfield(L, -2, "sources"); /* the entry ids whose source changed */
    } else {
        lua_createtable(L, 0, 2);
        if (e->error) {
            lua_pushstring(L, e->error);
            lua_setfield(L, -2, "error");
        }
        if (e->value) { /* the process's return value, as it went through JSON */
            if (rl_lua_json_decode(L, e->value->data, e->value->len))
                lua_setfield(L, -2, "value");
            else
                lua_pop(L, 1);
        }
        lua_setfield(L, -2, "result");
    }
}

/* Receives from ch (userdata at chidx), known ready: pushes the value, returns ok. */
static int push_data(lua_State *L, const msg_ud *m);

static int do_recv(lua_State *L, rl_lua_chan *ch, int chidx)
{
    switch (ch->kind) {
    case RL_CH_LUA:
        if (ch->count == 0)
            break;
        lua_getiuservalue(L, chidx, 1);
        lua_rawgeti(L, -1, (lua_Integer)ch->head + 1);
        lua_pushnil(L);
        lua_rawseti(L, -3, (lua_Integer)ch->head + 1);
        lua_remove(L, -2);
        ch->head = (ch->head + 1) % (ch->cap ? ch->cap : 1);
        ch->count--;
        notify(ch); /* senders waiting for room */
        return 1;
    case RL_CH_INBOX:
        if (!ch->mhead)
            break;
        push_msg(L, ch->mhead); /* first: a raised OOM must not lose the message */
        {
            rl_msg *m = ch->mhead;
            ch->mhead = m->next;
            if (!ch->mhead)
                ch->mtail = NULL;
            msg_ud *u = lua_touserdata(L, -1);
            u->acct = inbox_acct(ch); /* the charge moves with the message */
            rl_proc *p = ch->owner;
            if (p && p->qlen)
                p->qlen--; /* the message leaves the mailbox bound (see rl_lua.c handle) */
            rl_msg_free(m);
            if (ch->data_only) { /* the data instead of the message (collected soon) */
                int ud = lua_gettop(L);
                if (!push_data(L, u))
                    lua_pushnil(L);
                lua_remove(L, ud);
            }
        }
        return 1;
    case RL_CH_EVENTS:
        if (!ch->ehead)
            break;
        push_event(L, ch->ehead);
        {
            rl_lua_event *e = ch->ehead;
            ch->ehead = e->next;
            if (!ch->ehead)
                ch->etail = NULL;
            rl_lua_event_free(e);
        }
        return 1;
    default:
        if (!ch->fired)
            break;
        rl_lua_time_push(L, ch->fire_ns);
        ch->fired = 0;
        return 1;
    }
    lua_pushnil(L); /* closed and drained */
    return 0;
}

/* Sends the value at vidx into ch (userdata at chidx), known ready. */
static void do_send(lua_State *L, rl_lua_chan *ch, int chidx, int vidx)
{
    if (ch->closed)
        luaL_error(L, "send on closed channel");
    size_t ring = ch->cap ? ch->cap : 1;
    lua_getiuservalue(L, chidx, 1);
    lua_pushvalue(L, vidx);
    lua_rawseti(L, -2, (lua_Integer)((ch->head + ch->count) % ring) + 1);
    lua_pop(L, 1);
    ch->count++;
    notify(ch); /* receivers */
}

static int chan_do(lua_State *L, int mode);

static int chan_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    return chan_do(L, (int)ctx);
}

/* Reads the cases of a select (table at 1) into cs; returns their number. */
static int parse_cases(lua_State *L, sel_case *cs, int *dflt)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    push_key(L, K_DEFAULT);
    lua_gettable(L, 1);
    *dflt = lua_toboolean(L, -1);
    lua_pop(L, 1);
    int n = (int)lua_rawlen(L, 1);
    if (n > RL_LUA_SELECT_MAX)
        luaL_error(L, "select: more than %d cases", RL_LUA_SELECT_MAX);
    for (int i = 0; i < n; i++) {
        int t = lua_rawgeti(L, 1, i + 1);
        rl_lua_chan *rc = t == LUA_TUSERDATA ? rl_lua_toudata(L, -1, chan_mt) : NULL;
        if (rc) { /* a receive case (ch:case_receive() is the channel) */
            lua_pop(L, 1);
            cs[i].ch = rc;
            cs[i].op = OP_RECV;
            cs[i].idx = i + 1;
            continue;
        }
        if (t != LUA_TTABLE)
            luaL_error(L, "select: case %d is not a case (use ch:case_receive() or ch:case_send(v))",
                       i + 1);
        lua_rawgeti(L, -1, 1);
        rl_lua_chan *ch = rl_lua_toudata(L, -1, chan_mt);
        lua_rawgeti(L, -2, 2);
        int op = (int)lua_tointeger(L, -1);
        lua_pop(L, 3);
        if (!ch || op != OP_SEND)
            luaL_error(L, "select: case %d is not a case", i + 1);
        if (op == OP_SEND && ch->kind != RL_CH_LUA)
            luaL_error(L, "select: case %d sends on a receive-only channel", i + 1);
        cs[i].ch = ch;
        cs[i].op = op;
        cs[i].idx = i + 1;
    }
    return n;
}

/* One attempt of a channel operation; blocks (yields with chan_k as continuation) when no case
   is ready. MODE_SELECT: select(cases); MODE_RECV: ch:receive(); MODE_SEND: ch:send(v). */
static int chan_do(lua_State *L, int mode)
{
    rl_lua_inst *I = rl_lua_running(L); /* the instance, or its coroutine.spawn task */
    sel_case cs[RL_LUA_SELECT_MAX];
    int n, dflt = 0;
    if (mode == MODE_SELECT) {
        n = parse_cases(L, cs, &dflt);
    } else {
        cs[0].ch = check_chan(L, 1);
        cs[0].op = mode == MODE_RECV ? OP_RECV : OP_SEND;
        cs[0].idx = 0;
        if (mode == MODE_SEND && cs[0].ch->kind != RL_CH_LUA)
            return luaL_error(L, "send on a receive-only channel");
        if (mode == MODE_SEND)
            lua_settop(L, 2);
        n = 1;
    }
    if (I->used >= RL_LUA_SLICE_MAX && L == I->co && lua_isyieldable(L))
        return lua_yieldk(L, 0, mode, chan_k); /* long slice: let others run first */
    int ready[RL_LUA_SELECT_MAX], nready = 0;
    for (int i = 0; i < n; i++)
        if (cs[i].op == OP_RECV ? can_recv(cs[i].ch) : can_send(cs[i].ch))
            ready[nready++] = i;
    if (nready > 0) {
        int i = ready[nready > 1 ? rl_lua_rand() % (uint64_t)nready : 0];
        sel_case *c = &cs[i];
        if (mode != MODE_SELECT) {
            if (c->op == OP_RECV) {
                lua_pushboolean(L, do_recv(L, c->ch, 1));
                return 2;
            }
            do_send(L, c->ch, 1, 2);
            lua_pushboolean(L, 1); /* ch:send(v) -> true, as on the platform */
            return 1;
        }
        lua_createtable(L, 0, 3);
        int res = lua_gettop(L);
        if (lua_rawgeti(L, 1, c->idx) == LUA_TTABLE) /* a send case: {channel, op, value} */
            lua_rawgeti(L, -1, 1);
        else
            lua_pushvalue(L, -1); /* a receive case: the channel (again, as slot layout) */
        int chidx = lua_gettop(L), ok = 1;
        push_key(L, K_VALUE);
        if (c->op == OP_RECV) {
            ok = do_recv(L, c->ch, chidx);
        } else {
            lua_rawgeti(L, chidx - 1, 3); /* a send case's result carries what it sent */
            do_send(L, c->ch, chidx, lua_gettop(L));
        }
        lua_rawset(L, res);
        push_key(L, K_OK);
        lua_pushboolean(L, ok);
        lua_rawset(L, res);
        push_key(L, K_CHANNEL);
        lua_pushvalue(L, chidx);
        lua_rawset(L, res);
        lua_settop(L, res);
        return 1;
    }
    if (dflt) {
        lua_createtable(L, 0, 2);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "default");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "ok");
        return 1;
    }
    rl_lua_check_block(L, I);
    if (I->wcap < (size_t)n) {
        rl_lua_waiter *w = realloc(I->waits, (size_t)n * sizeof *w);
        if (!w)
            return luaL_error(L, "not enough memory");
        I->waits = w;
        I->wcap = (size_t)n;
    }
    /* Receive cases make an unbuffered channel writable (rendezvous); send cases are woken
       when a receive makes room. */
    I->nwaits = 0;
    for (int i = 0; i < n; i++) {
        rl_lua_waiter *w = &I->waits[I->nwaits++];
        w->inst = I;
        w->op = cs[i].op;
        w->next = cs[i].ch->waiters;
        if (w->next)
            w->next->pprev = &w->next;
        w->pprev = &cs[i].ch->waiters;
        cs[i].ch->waiters = w;
    }
    /* A receiver now waits on an unbuffered channel: a sender already blocked on it (another
       task of the instance) can complete the rendezvous, so it tries again. */
    for (int i = 0; i < n; i++) {
        if (cs[i].op != OP_RECV || cs[i].ch->kind != RL_CH_LUA || cs[i].ch->cap)
            continue;
        for (rl_lua_waiter *w = cs[i].ch->waiters; w;) {
            if (w->op == OP_SEND && w->inst != I) {
                rl_lua_wake(w->inst); /* unlinks its waiters: start over */
                w = cs[i].ch->waiters;
            } else {
                w = w->next;
            }
        }
    }
    return rl_lua_block(L, I, mode, chan_k);
}

static int l_select(lua_State *L) { return chan_do(L, MODE_SELECT); }
static int l_receive(lua_State *L) { return chan_do(L, MODE_RECV); }
static int l_send(lua_State *L)
{
    luaL_checkany(L, 2);
    return chan_do(L, MODE_SEND);
}

/* The token a channel made by a plugin holds: when the channel is collected, the token goes with
   it and gives its place back to the instance's count (which may have ended meanwhile). */
static int l_count_gc(lua_State *L)
{
    rl_lua_count **c = lua_touserdata(L, 1);
    if (*c) {
        (*c)->live--;
        rl_owner_use *u = rl_owner_use_of((*c)->owner);
        if (u)
            u->chans--;
        if (--(*c)->refs == 0) {
            rl_owner_unref((*c)->owner);
            free(*c);
        }
        *c = NULL;
    }
    return 0;
}

static int l_new(lua_State *L)
{
    lua_Integer n = luaL_optinteger(L, 1, 0);
    luaL_argcheck(L, n >= 0 && n <= RL_LUA_CHAN_MAX, 1, "size out of range");
    rl_lua_inst *I = rl_lua_g.current ? rl_lua_current(L) : NULL; /* a task's count is its instance's */
    rl_lua_aux *A = I ? rl_lua_aux_of(I) : NULL;
    if (I && !A)
        return luaL_error(L, "not enough memory");
    if (A && !A->chans) {
        if (!(A->chans = calloc(1, sizeof *A->chans)))
            return luaL_error(L, "not enough memory");
        A->chans->refs = 1;
        A->chans->owner = rl_owner_ref(I->proc.owner);
    }
    if (A && A->chans->live >= rl_lua_g.cfg->plugin_max_channels) {
        rl_lua_refused(I, RL_LIMIT_CHANNELS);
        return luaL_error(L, "too many channels (plugin_max_channels is %d)",
                          (int)rl_lua_g.cfg->plugin_max_channels);
    }
    if (I && !rl_lua_user_room(I, RL_LIMIT_USER_CHANNELS))
        return luaL_error(L, "too many channels for the user (plugin_user_max_channels is %d)",
                          (int)rl_lua_g.cfg->plugin_user_max_channels);
    rl_lua_chan_new(L, RL_CH_LUA, (size_t)n);
    if (A) {
        rl_lua_count **tok = lua_newuserdatauv(L, sizeof *tok, 0);
        *tok = NULL;
        luaL_setmetatable(L, COUNT_MT);
        *tok = A->chans;
        A->chans->live++;
        A->chans->refs++;
        rl_owner_use *u = rl_owner_use_of(A->chans->owner);
        if (u)
            u->chans++;
        lua_setiuservalue(L, -2, 2);
    }
    return 1;
}

static int l_close(lua_State *L)
{
    rl_lua_chan *ch = check_chan(L, 1);
    if (ch->kind != RL_CH_LUA)
        return luaL_error(L, "cannot close a receive-only channel");
    if (ch->closed)
        return 0; /* closing a closed channel is a no-op, as on the platform */
    ch->closed = 1;
    notify(ch);
    return 0;
}

/* A send case is a table {channel, op, value}. A receive case carries nothing but its channel,
   so it is the channel itself: a select loop allocates no cases and an idle instance keeps
   none. */
static int l_case_receive(lua_State *L)
{
    check_chan(L, 1);
    lua_settop(L, 1);
    return 1;
}

static int l_case_send(lua_State *L)
{
    luaL_checkany(L, 2);
    rl_lua_chan *ch = check_chan(L, 1);
    if (ch->kind != RL_CH_LUA)
        return luaL_error(L, "send on a receive-only channel");
    lua_createtable(L, 3, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, OP_SEND);
    lua_rawseti(L, -2, 2);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 3);
    return 1;
}

static int l_len(lua_State *L)
{
    rl_lua_chan *ch = check_chan(L, 1);
    lua_Integer n = 0;
    switch (ch->kind) {
    case RL_CH_LUA: n = (lua_Integer)ch->count; break;
    case RL_CH_INBOX:
        for (rl_msg *m = ch->mhead; m; m = m->next)
            n++;
        break;
    case RL_CH_EVENTS:
        for (rl_lua_event *e = ch->ehead; e; e = e->next)
            n++;
        break;
    default: n = ch->fired; break;
    }
    lua_pushinteger(L, n);
    return 1;
}

static int l_chan_gc(lua_State *L)
{
    rl_lua_chan *ch = lua_touserdata(L, 1);
    while (ch->kind == RL_CH_INBOX && ch->mhead) {
        rl_msg *m = ch->mhead;
        ch->mhead = m->next;
        rl_msg_free(m);
    }
    while (ch->kind == RL_CH_EVENTS && ch->ehead) {
        rl_lua_event *e = ch->ehead;
        ch->ehead = e->next;
        rl_lua_event_free(e);
    }
    if (ch->kind == RL_CH_INBOX)
        ch->mtail = NULL;
    if (ch->kind == RL_CH_EVENTS)
        ch->etail = NULL;
    while (ch->waiters) /* only at lua_close: instances were torn down first */
        rl_lua_unwait(ch->waiters->inst);
    return 0;
}

static int l_chan_tostring(lua_State *L)
{
    lua_pushfstring(L, "channel: %p", lua_touserdata(L, 1));
    return 1;
}

/* Messages: msg:topic(), msg:from(), msg:payload():data(). */
static msg_ud *check_msg(lua_State *L) { return rl_lua_checkudata(L, 1, msg_mt, MSG_MT); }

static int l_msg_topic(lua_State *L)
{
    msg_ud *u = check_msg(L);
    lua_pushlstring(L, u->s + u->from_len + 1, u->name_len);
    return 1;
}

static int l_msg_from(lua_State *L)
{
    msg_ud *u = check_msg(L);
    if (u->from_len)
        lua_pushlstring(L, u->s, u->from_len);
    else
        lua_pushnil(L);
    return 1;
}

/* msg:from_user(): the user whose process sent it (another user's, for a cross-user send the
   policy allowed), or nil for the system. */
static int l_msg_from_user(lua_State *L)
{
    const char *u = rl_owner_user(check_msg(L)->owner);
    if (u)
        lua_pushstring(L, u);
    else
        lua_pushnil(L);
    return 1;
}

/* msg:payload() is the message itself (it has data()): one object less per message. */
static int l_msg_payload(lua_State *L)
{
    check_msg(L);
    lua_settop(L, 1);
    return 1;
}

/* Messages without a finalizer. A message's block is given back by Lua's sweep like any
   garbage, and the host's allocator releases what the message holds as it frees the block
   (rl_lua_block_freeing in rl_lua_int.h). With a __gc every message went on Lua's list of
   objects to finalize, was moved to the list to call, had its metamethod called through a Lua
   call frame and its block kept for one more collection: with 15,000 idle users 1.5% of the
   busy users' CPU (separatetobefnz, GCTM), on memory that had gone cold. probe_msg_layout
   checks on the Lua loaded that a userdata's tag and metatable are where that test reads
   them; where they are not, the class gets the __gc back (l_msg_gc). What proves a block a
   message is its canary (rl_lua_int.h); the tag and the metatable only pick candidates. */
const void *rl_lua_msg_freed_mt;

static void msg_release(msg_ud *u)
{
    if (u->acct)
        rl_lua_mem_hold(u->acct, 0, u->body ? u->body->len : 0);
    u->acct = 0;
    rl_body_unref(u->body);
    rl_owner_unref(u->owner);
    u->body = NULL;
    u->owner = NULL;
}

void rl_lua_msg_freeing(void *block, size_t osize)
{
    msg_ud *u = (msg_ud *)((char *)block + RL_LUA_UDATA_MEM_OFF);
    if (osize < RL_LUA_UDATA_MEM_OFF + sizeof *u || u->canary != (msg_canary ^ (uint64_t)(uintptr_t)u))
        return;
    msg_release(u);
    u->canary = 0;
    memset((char *)block + RL_LUA_UDATA_MT_OFF, 0, sizeof(void *));
}

static int l_msg_gc(lua_State *L)
{
    msg_release(lua_touserdata(L, 1));
    return 0;
}

static int probe_msg_layout(lua_State *L)
{
#if LUA_VERSION_NUM != 504
    (void)L;
    return 0;
#else
    msg_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u); /* freed as a message later: nothing to release */
    rl_lua_set_class(L, msg_ref);
    const unsigned char *b = (const unsigned char *)u - RL_LUA_UDATA_MEM_OFF;
    int ok = b[RL_LUA_GC_TAG_OFF] == RL_LUA_UDATA_VTAG &&
             *(const void *const *)(b + RL_LUA_UDATA_MT_OFF) == msg_mt;
    lua_pop(L, 1);
    return ok;
#endif
}

/* payload:data(): the body decoded, on each call, from the bytes as they arrived (a client's
   frame is decoded here, once, and nowhere else). A client message gets conn_pid: its sender,
   the connection, never what the client wrote. A raw frame comes back as a string; no body as
   nil. */
static int l_payload_data(lua_State *L) { return push_data(L, check_msg(L)); }

static int push_data(lua_State *L, const msg_ud *m)
{
    if (!m->body)
        return 0;
    if (m->flags & RL_MSG_RAW) {
        lua_pushlstring(L, m->body->data, m->body->len);
        return 1;
    }
    if (!rl_lua_json_decode(L, m->body->data, m->body->len)) {
        lua_pop(L, 1);
        lua_pushlstring(L, m->body->data, m->body->len);
        return 1;
    }
    if ((m->flags & RL_MSG_CLIENT) && lua_type(L, -1) == LUA_TTABLE) {
        push_key(L, K_CONN_PID);
        lua_pushlstring(L, m->s, m->from_len);
        lua_rawset(L, -3); /* a table the decoder just made: no metatable */
    }
    return 1;
}

void rl_lua_chan_open(lua_State *L)
{
    static const luaL_Reg chan_methods[] = {
        {"send", l_send},
        {"receive", l_receive},
        {"close", l_close},
        {"case_receive", l_case_receive},
        {"case_send", l_case_send},
        {"len", l_len},
        {NULL, NULL},
    };
    static const luaL_Reg msg_methods[] = {
        {"topic", l_msg_topic},
        {"from", l_msg_from},
        {"from_user", l_msg_from_user},
        {"payload", l_msg_payload},
        {"data", l_payload_data},
        {NULL, NULL},
    };
    int t = lua_gettop(L);
    for (int k = 0; k < K_COUNT; k++) {
        lua_pushstring(L, key_names[k]);
        key_ref[k] = luaL_ref(L, LUA_REGISTRYINDEX);
    }

    static const luaL_Reg chan_meta[] = {{"__gc", l_chan_gc}, {"__tostring", l_chan_tostring}, {NULL, NULL}};
    chan_mt = rl_lua_new_class(L, CHAN_MT, chan_methods, chan_meta, &chan_ref);
    while (!msg_canary)
        rl_random_bytes((unsigned char *)&msg_canary, sizeof msg_canary);
    msg_mt = rl_lua_new_class(L, MSG_MT, msg_methods, NULL, &msg_ref);
    rl_lua_msg_freed_mt = probe_msg_layout(L) ? msg_mt : NULL;
    if (!rl_lua_msg_freed_mt) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, msg_ref);
        lua_pushcfunction(L, l_msg_gc);
        lua_setfield(L, -2, "__gc");
        lua_pop(L, 1);
    }
    static const luaL_Reg count_meta[] = {{"__gc", l_count_gc}, {NULL, NULL}};
    rl_lua_new_class(L, COUNT_MT, NULL, count_meta, NULL);

    lua_pushcfunction(L, l_new);
    lua_setfield(L, t, "new");
    lua_pushcfunction(L, l_select);
    lua_setfield(L, t, "select");
}
