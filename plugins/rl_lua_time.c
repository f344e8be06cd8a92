/* The time module of the Lua plugin host: now/sleep/after/timer/ticker/parse_duration and the
 * loop timers behind them.
 *
 * Durations are integers of nanoseconds, as on the platform: time.NANOSECOND == 1,
 * time.SECOND == 1e9, so `2 * time.SECOND` and `time.sleep(500000000)` mean what they say.
 * Every duration argument also takes a Go duration string ("5s", "150ms", "1h30m").
 * parse_duration, Time:sub and since return the same plain integers; numbers get the
 * platform's Duration accessors (:seconds(), :milliseconds(), ... in the prelude), so
 * time.parse_duration("90s"):seconds() == 90. The loop's timers run at millisecond
 * resolution: a timer waits for its duration rounded up to the next millisecond. Timers
 * belong to the instance that made them and are closed when it exits. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rl_lua_int.h"

#define TIME_MT "rl.time"
#define TIMER_MT "rl.timer"

struct rl_lua_timer {
    uv_timer_t h; /* freed in the close callback */
    rl_lua_timer *prev, *next;
    rl_lua_inst *inst;
    int kind, chan_ref, closing;
    rl_lua_timer **slot; /* the Lua timer object pointing at us, cleared when we close */
};

typedef struct timer_ud {
    rl_lua_timer *t;
    int ticker;
} timer_ud;

int64_t rl_lua_unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- durations ------------------------------------------------------------------------- */

int rl_lua_duration_parse(const char *s, double *ns)
{
    static const struct {
        const char *u;
        double ns;
    } units[] = {{"ns", 1},   {"us", 1e3},  {"\xc2\xb5s", 1e3}, {"ms", 1e6},
                 {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    double sign = 1, total = 0;
    if (*s == '-' || *s == '+')
        sign = *s++ == '-' ? -1 : 1;
    if (strcmp(s, "0") == 0) {
        *ns = 0;
        return 0;
    }
    if (!*s)
        return -1;
    while (*s) {
        if (!isdigit((unsigned char)*s) && *s != '.')
            return -1;
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno)
            return -1;
        s = end;
        size_t best = 0;
        double mult = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t n = strlen(units[i].u);
            if (strncmp(s, units[i].u, n) == 0 && n > best) {
                best = n;
                mult = units[i].ns;
            }
        }
        if (!best)
            return -1; /* a unit is required, as in Go */
        s += best;
        total += v * mult;
    }
    if (!(total <= RL_LUA_DURATION_MAX))
        return -1; /* Go: "invalid duration" past int64 nanoseconds */
    *ns = sign * total;
    return 0;
}

double rl_lua_duration_arg(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double ns = (double)lua_tonumber(L, idx);
        if (ns != ns)
            luaL_argerror(L, idx, "invalid duration (NaN)");
        return ns;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        double ns;
        if (rl_lua_duration_parse(lua_tostring(L, idx), &ns) == 0)
            return ns;
        luaL_argerror(L, idx, lua_pushfstring(L, "invalid duration '%s'", lua_tostring(L, idx)));
    }
    luaL_argerror(L, idx, "duration expected (nanoseconds or a string like \"5s\")");
    return 0;
}

/* Nanoseconds to loop milliseconds, rounded up. */
static uint64_t to_timeout(double ns)
{
    if (!(ns > 0))
        return 0;
    if (ns > 1e21)
        return (uint64_t)1e15;
    return (uint64_t)ceil(ns / 1e6);
}

/* ---- loop timers ----------------------------------------------------------------------- */

static void timer_closed(uv_handle_t *h) { free(h->data); }

void rl_lua_timer_close(rl_lua_timer *t)
{
    if (t->closing)
        return;
    t->closing = 1;
    rl_lua_inst *I = t->inst;
    if (I) {
        if (t->prev)
            t->prev->next = t->next;
        else
            I->timers = t->next;
        if (t->next)
            t->next->prev = t->prev;
        if (I->aux && I->aux->deadline == t)
            I->aux->deadline = NULL;
        I->ntimers--;
        rl_owner_use *u = rl_owner_use_of(I->proc.owner);
        if (u)
            u->timers--;
    }
    t->inst = NULL;
    if (t->slot)
        *t->slot = NULL;
    t->slot = NULL;
    if (t->chan_ref >= 0 && rl_lua_g.L)
        luaL_unref(rl_lua_g.L, LUA_REGISTRYINDEX, t->chan_ref);
    t->chan_ref = LUA_NOREF;
    uv_timer_stop(&t->h);
    uv_close((uv_handle_t *)&t->h, timer_closed);
}

static void timer_cb(uv_timer_t *h)
{
    rl_lua_timer *t = h->data;
    rl_lua_inst *I = t->inst;
    if (!I || t->closing)
        return;
    switch (t->kind) {
    case RL_TIMER_SLEEP:
        rl_lua_timer_close(t);
        rl_lua_wake(I);
        break;
    case RL_TIMER_DEADLINE:
        rl_lua_timer_close(t);
        rl_lua_kill(I, "cancelled");
        break;
    default: {
        rl_lua_chan *ch = rl_lua_ref_udata(t->chan_ref);
        if (t->kind == RL_TIMER_ONCE)
            rl_lua_timer_close(t); /* keeps ch alive: the unref only lets the collector in */
        if (ch)
            rl_lua_chan_fire(ch, rl_lua_unix_ns());
        break;
    }
    }
}

rl_lua_timer *rl_lua_timer_start(rl_lua_inst *I, int kind, uint64_t ms, uint64_t period_ms,
                                 int chan_ref)
{
    rl_lua_timer *t = calloc(1, sizeof *t);
    if (!t) {
        if (chan_ref >= 0 && rl_lua_g.L)
            luaL_unref(rl_lua_g.L, LUA_REGISTRYINDEX, chan_ref);
        return NULL;
    }
    t->inst = I;
    t->kind = kind;
    t->chan_ref = chan_ref;
    rl_owner_use *u = rl_owner_use_of(I->proc.owner);
    if (u) {
        /* A ticker started as the user's n-th live timer ticks every n - 1 ms at the most (as Go
           allows: a ticker drops ticks a slow receiver cannot take): the user's tickers together
           tick about 1000 * ln(n) times a second at the most, however many 1 ms tickers its
           instances ask for. One-shot timers and sleeps keep their durations (their order is
           what plugins rely on); the count bounds them. */
        u->timers++;
        uint64_t floor_ms = (uint64_t)(u->timers - 1) * RL_LUA_USER_TIMER_STEP_MS;
        if (period_ms && period_ms < floor_ms) {
            period_ms = floor_ms;
            if (ms < floor_ms)
                ms = floor_ms;
        }
    }
    uv_timer_init(rl_node_loop(), &t->h);
    t->h.data = t;
    uv_timer_start(&t->h, timer_cb, ms, period_ms);
    t->next = I->timers;
    if (t->next)
        t->next->prev = t;
    I->timers = t;
    I->ntimers++;
    return t;
}

/* Raises when I may not start another timer (plugin_max_timers): a plugin's timers, tickers
   and sleeps all run on the node's loop. */
static void timer_room(lua_State *L, rl_lua_inst *I)
{
    size_t max = rl_lua_g.cfg->plugin_max_timers;
    if (I->ntimers >= max) {
        rl_lua_refused(I, RL_LIMIT_TIMERS);
        luaL_error(L, "too many timers (plugin_max_timers is %d)", (int)max);
    }
    if (!rl_lua_user_room(I, RL_LIMIT_USER_TIMERS)) /* all of the user's instances together */
        luaL_error(L, "too many timers for the user (plugin_user_max_timers is %d)",
                   (int)rl_lua_g.cfg->plugin_user_max_timers);
}

/* ---- Lua functions --------------------------------------------------------------------- */

static int sleep_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)L;
    (void)status;
    (void)ctx;
    return 0;
}

static int l_sleep(lua_State *L)
{
    rl_lua_inst *I = rl_lua_running(L); /* the instance, or its coroutine.spawn task */
    uint64_t ms = to_timeout(rl_lua_duration_arg(L, 1));
    rl_lua_check_block(L, I);
    timer_room(L, I);
    if (!rl_lua_timer_start(I, RL_TIMER_SLEEP, ms, 0, LUA_NOREF))
        return luaL_error(L, "not enough memory");
    return rl_lua_block(L, I, 0, sleep_k);
}

/* Pushes a timer channel fed by a new timer; returns the timer (NULL raises). */
static rl_lua_timer *start_chan_timer(lua_State *L, rl_lua_inst *I, double ns, int ticker)
{
    timer_room(L, I);
    rl_lua_chan_new(L, RL_CH_TIMER, 1);
    lua_pushvalue(L, -1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uint64_t t0 = to_timeout(ns);
    rl_lua_timer *t = rl_lua_timer_start(I, ticker ? RL_TIMER_TICKER : RL_TIMER_ONCE, t0,
                                         ticker ? t0 : 0, ref);
    if (!t)
        luaL_error(L, "not enough memory");
    return t;
}

static int l_after(lua_State *L)
{
    rl_lua_inst *I = rl_lua_current(L);
    start_chan_timer(L, I, rl_lua_duration_arg(L, 1), 0);
    return 1;
}

static int new_timer_obj(lua_State *L, int ticker)
{
    rl_lua_inst *I = rl_lua_current(L);
    double ns = rl_lua_duration_arg(L, 1);
    if (ticker && !(ns >= RL_LUA_TICK_MIN_NS))
        return luaL_argerror(L, 1, "ticker period must be at least 1ms");
    timer_ud *u = lua_newuserdatauv(L, sizeof *u, 1);
    u->t = NULL;
    u->ticker = ticker;
    luaL_setmetatable(L, TIMER_MT);
    rl_lua_timer *t = start_chan_timer(L, I, ns, ticker);
    lua_setiuservalue(L, -2, 1); /* the channel */
    u->t = t;
    t->slot = &u->t;
    return 1;
}

static int l_timer(lua_State *L) { return new_timer_obj(L, 0); }
static int l_ticker(lua_State *L) { return new_timer_obj(L, 1); }

static int l_timer_channel(lua_State *L)
{
    luaL_checkudata(L, 1, TIMER_MT);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int l_timer_stop(lua_State *L)
{
    timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    int active = u->t != NULL;
    if (u->t)
        rl_lua_timer_close(u->t);
    lua_pushboolean(L, active);
    return 1;
}

static int l_timer_reset(lua_State *L)
{
    timer_ud *u = luaL_checkudata(L, 1, TIMER_MT);
    rl_lua_inst *I = rl_lua_current(L);
    double ns = rl_lua_duration_arg(L, 2);
    if (u->ticker && !(ns >= RL_LUA_TICK_MIN_NS))
        return luaL_argerror(L, 2, "ticker period must be at least 1ms");
    int active = u->t != NULL;
    if (u->t)
        rl_lua_timer_close(u->t);
    lua_getiuservalue(L, 1, 1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    uint64_t t0 = to_timeout(ns);
    rl_lua_timer *t = rl_lua_timer_start(I, u->ticker ? RL_TIMER_TICKER : RL_TIMER_ONCE, t0,
                                         u->ticker ? t0 : 0, ref);
    if (!t)
        return luaL_error(L, "not enough memory");
    u->t = t;
    t->slot = &u->t;
    lua_pushboolean(L, active);
    return 1;
}

static int l_timer_gc(lua_State *L)
{
    timer_ud *u = lua_touserdata(L, 1);
    if (u->t)
        u->t->slot = NULL; /* the timer runs on (owned by the instance) */
    u->t = NULL;
    return 0;
}

/* Pushes a duration of ns nanoseconds: an integer, as every duration the module returns. */
static void push_duration(lua_State *L, double ns)
{
    if (ns >= -RL_LUA_DURATION_MAX && ns <= RL_LUA_DURATION_MAX)
        lua_pushinteger(L, (lua_Integer)llround(ns));
    else
        lua_pushinteger(L, ns < 0 ? LUA_MININTEGER : LUA_MAXINTEGER);
}

/* time.parse_duration(v): a duration string or a number of nanoseconds -> integer ns. */
static int l_parse_duration(lua_State *L)
{
    double ns;
    if (lua_type(L, 1) == LUA_TNUMBER) {
        ns = (double)lua_tonumber(L, 1);
        if (ns != ns) {
            lua_pushnil(L);
            lua_pushliteral(L, "time: invalid duration (NaN)");
            return 2;
        }
    } else {
        const char *s = luaL_checkstring(L, 1);
        if (rl_lua_duration_parse(s, &ns) < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "time: invalid duration \"%s\"", s);
            return 2;
        }
    }
    push_duration(L, ns);
    return 1;
}

/* ---- time values ----------------------------------------------------------------------- */

void rl_lua_time_push(lua_State *L, int64_t unix_ns)
{
    int64_t *p = lua_newuserdatauv(L, sizeof *p, 0);
    *p = unix_ns;
    luaL_setmetatable(L, TIME_MT);
}

static int64_t check_time(lua_State *L, int idx)
{
    return *(int64_t *)luaL_checkudata(L, idx, TIME_MT);
}

static void format_rfc3339(int64_t ns, char *out, size_t n, int nano)
{
    time_t sec = (time_t)(ns >= 0 ? ns / 1000000000 : (ns - 999999999) / 1000000000);
    long frac = (long)(ns - (int64_t)sec * 1000000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t k = strftime(out, n, "%Y-%m-%dT%H:%M:%S", &tm);
    if (nano && frac) {
        char f[16];
        snprintf(f, sizeof f, ".%09ld", frac);
        size_t fl = strlen(f);
        while (f[fl - 1] == '0')
            f[--fl] = '\0';
        snprintf(out + k, n - k, "%sZ", f);
    } else {
        snprintf(out + k, n - k, "Z");
    }
}

static int l_now(lua_State *L)
{
    rl_lua_time_push(L, rl_lua_unix_ns());
    return 1;
}

static int l_unix(lua_State *L)
{
    lua_Integer sec = luaL_checkinteger(L, 1);
    lua_Integer nsec = luaL_optinteger(L, 2, 0);
    rl_lua_time_push(L, (int64_t)sec * 1000000000 + nsec);
    return 1;
}

/* time.parse(layout, s): RFC 3339 text only (the layout is accepted for compatibility). */
static int l_parse(lua_State *L)
{
    const char *s = luaL_checkstring(L, lua_gettop(L) >= 2 ? 2 : 1);
    int y, mo, d, h, mi, sec, consumed = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &consumed) != 6)
        goto bad;
    const char *p = s + consumed;
    int64_t frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; isdigit((unsigned char)*p); p++, digits++)
            if (digits < 9)
                frac = frac * 10 + (*p - '0');
        if (!digits)
            goto bad;
        for (; digits < 9; digits++)
            frac *= 10;
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om, n2 = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n2) != 2)
            goto bad;
        off = (oh * 3600L + om * 60L) * (*p == '-' ? -1 : 1);
        p += 1 + n2;
    } else {
        goto bad;
    }
    if (*p)
        goto bad;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                    .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    rl_lua_time_push(L, ((int64_t)t - off) * 1000000000 + frac);
    return 1;
bad:
    lua_pushnil(L);
    lua_pushfstring(L, "time: cannot parse \"%s\" as RFC 3339", s);
    return 2;
}

static int t_unix(lua_State *L)
{
    int64_t ns = check_time(L, 1);
    lua_pushinteger(L, (lua_Integer)(ns >= 0 ? ns / 1000000000 : (ns - 999999999) / 1000000000));
    return 1;
}
static int t_unix_nano(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_time(L, 1));
    return 1;
}
static int t_unix_milli(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)(check_time(L, 1) / 1000000));
    return 1;
}
static int t_format_rfc3339(lua_State *L)
{
    char buf[64];
    format_rfc3339(check_time(L, 1), buf, sizeof buf, 0);
    lua_pushstring(L, buf);
    return 1;
}
static int t_tostring(lua_State *L)
{
    char buf[64];
    format_rfc3339(check_time(L, 1), buf, sizeof buf, 1);
    lua_pushstring(L, buf);
    return 1;
}
static int t_sub(lua_State *L) /* -> duration in ns */
{
    lua_pushinteger(L, (lua_Integer)(check_time(L, 1) - check_time(L, 2)));
    return 1;
}
static int t_add(lua_State *L)
{
    int64_t ns = check_time(L, 1);
    double d = rl_lua_duration_arg(L, 2);
    if (!(d >= -RL_LUA_DURATION_MAX && d <= RL_LUA_DURATION_MAX))
        return luaL_argerror(L, 2, "duration out of range");
    rl_lua_time_push(L, (int64_t)((uint64_t)ns + (uint64_t)llround(d)));
    return 1;
}
static int t_before(lua_State *L)
{
    lua_pushboolean(L, check_time(L, 1) < check_time(L, 2));
    return 1;
}
static int t_after(lua_State *L)
{
    lua_pushboolean(L, check_time(L, 1) > check_time(L, 2));
    return 1;
}
static int t_equal(lua_State *L)
{
    lua_pushboolean(L, check_time(L, 1) == check_time(L, 2));
    return 1;
}
static int t_le(lua_State *L)
{
    lua_pushboolean(L, check_time(L, 1) <= check_time(L, 2));
    return 1;
}

static int l_since(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)(rl_lua_unix_ns() - check_time(L, 1)));
    return 1;
}

void rl_lua_time_open(lua_State *L)
{
    static const luaL_Reg time_methods[] = {
        {"unix", t_unix},
        {"unix_nano", t_unix_nano},
        {"unix_milli", t_unix_milli},
        {"format_rfc3339", t_format_rfc3339},
        {"sub", t_sub},
        {"add", t_add},
        {"before", t_before},
        {"after", t_after},
        {"equal", t_equal},
        {NULL, NULL},
    };
    static const luaL_Reg timer_methods[] = {
        {"channel", l_timer_channel},
        {"response", l_timer_channel},
        {"stop", l_timer_stop},
        {"reset", l_timer_reset},
        {NULL, NULL},
    };
    static const luaL_Reg fns[] = {
        {"now", l_now},
        {"unix", l_unix},
        {"parse", l_parse},
        {"since", l_since},
        {"sleep", l_sleep},
        {"after", l_after},
        {"timer", l_timer},
        {"ticker", l_ticker},
        {"parse_duration", l_parse_duration},
        {NULL, NULL},
    };
    static const luaL_Reg time_meta[] = {
        {"__tostring", t_tostring}, {"__eq", t_equal}, {"__lt", t_before},
        {"__le", t_le},             {"__sub", t_sub},  {NULL, NULL},
    };
    static const luaL_Reg timer_meta[] = {{"__gc", l_timer_gc}, {NULL, NULL}};
    rl_lua_new_class(L, TIME_MT, time_methods, time_meta, NULL);
    rl_lua_new_class(L, TIMER_MT, timer_methods, timer_meta, NULL);

    luaL_newlib(L, fns);
    static const struct {
        const char *name;
        lua_Integer ns;
    } consts[] = {{"NANOSECOND", 1},          {"MICROSECOND", 1000},
                  {"MILLISECOND", 1000000},   {"SECOND", 1000000000},
                  {"MINUTE", 60000000000LL}, {"HOUR", 3600000000000LL}};
    for (size_t i = 0; i < sizeof consts / sizeof consts[0]; i++) {
        lua_pushinteger(L, consts[i].ns);
        lua_setfield(L, -2, consts[i].name);
    }
    lua_pushstring(L, "2006-01-02T15:04:05Z07:00");
    lua_setfield(L, -2, "RFC3339");
}
