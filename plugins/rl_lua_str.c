/* Bounded string and table functions for plugins: string.find/match/gmatch/gsub run on our own
 * pattern matcher, which counts its steps against the running instance's instruction budget;
 * string.rep, table.concat and gsub results are capped at lua_result_max; table.sort, insert,
 * remove and move are charged for the work they do in C.
 *
 * Why our own matcher: Lua's backtracks without any bound (`("a*"):rep(40) .. "b"` on 40 a's
 * never ends) and runs inside one instruction, out of reach of the count hook. The semantics are
 * Lua 5.4's pattern language exactly (classes, sets, %b, %f, captures, back-references, anchors,
 * the same errors), checked against the stock functions by tests/unit/test_lua.c. One addition
 * keeps the trim idiom `^%s*(.-)%s*$` linear: a greedy single-item repetition that ends the
 * pattern before `$` matches only if its run reaches the end, so it is not backtracked, and the
 * end of the last run scanned for an item is remembered (runs do not depend on captures).
 *
 * The functions replace the ones in the main state's `string` and `table` tables before the
 * prelude copies them into the sandbox; the host's own code uses them too (outside an instance
 * nothing is charged). */
#include <ctype.h>
#include <limits.h>
#include <string.h>

#include "rl_lua_int.h"

#define PAT_ESC '%'
#define PAT_SPECIALS "^$*+?.([%-"
#define PAT_MAXCAPTURES 32   /* as Lua: "too many captures" */
#define PAT_MAXDEPTH 200     /* nested matcher calls, as Lua's MAXCCALLS: "pattern too complex" */
#define PAT_CHARGE_EVERY 4096 /* steps between two charges to the budget */
/* Steps one call may take (find, match, one gmatch step, a whole gsub): PAT_CALL_STEPS plus
   PAT_STEPS_PER_BYTE per byte of the subject, at most a quarter of lua_instruction_budget. A C
   call cannot be preempted, so this is how long one call can keep every other user waiting (250k
   steps: about 1 ms here); linear patterns take a few steps a byte and stay far below it,
   backtracking bombs get "pattern too complex" (an error the plugin may catch; each call's steps
   are charged to its budget as well). */
#define PAT_CALL_STEPS 250000
#define PAT_STEPS_PER_BYTE 32
#define BYTES_PER_STEP 16    /* bytes of output that cost one instruction */

#define CAP_OPEN (-1) /* a capture still being matched */
#define CAP_POS (-2)  /* a position capture "()" */

typedef struct pat_state {
    lua_State *L;
    const char *s0, *send; /* the subject */
    const char *pend;      /* end of the pattern */
    int depth;             /* remaining nesting */
    int ncap;
    uint64_t steps; /* not yet charged */
    uint64_t total, step_cap; /* steps taken in this call; at most step_cap */
    struct {
        const char *at;
        ptrdiff_t len;
    } cap[PAT_MAXCAPTURES];
    /* the last run scanned by a greedy item: from run_lo, item run_p matches up to run_hi */
    const char *run_p, *run_lo, *run_hi;
} pat_state;

static void step(pat_state *ps)
{
    if (++ps->steps >= PAT_CHARGE_EVERY) {
        uint64_t n = ps->steps;
        ps->steps = 0;
        rl_lua_charge(ps->L, n);
        ps->total += n;
        if (ps->total > ps->step_cap)
            luaL_error(ps->L, "pattern too complex (over %d steps in one call)", (int)ps->step_cap);
    }
}

static void pat_begin(pat_state *ps, lua_State *L, const char *s, size_t ls, const char *p,
                      size_t lp)
{
    ps->L = L;
    ps->s0 = s;
    ps->send = s + ls;
    ps->pend = p + lp;
    ps->depth = PAT_MAXDEPTH;
    ps->ncap = 0;
    ps->steps = 0;
    ps->total = 0;
    ps->step_cap = PAT_CALL_STEPS + (uint64_t)ls * PAT_STEPS_PER_BYTE;
    uint64_t budget = rl_lua_g.cfg ? rl_lua_g.cfg->lua_instruction_budget : 0;
    if (budget && ps->step_cap > budget / 4)
        ps->step_cap = budget / 4; /* and never more than a quarter of a run's budget */
    if (ps->step_cap > INT_MAX)
        ps->step_cap = INT_MAX;
    ps->run_p = NULL;
}

/* Ready for a match at another start: the charge and the run memo carry over. */
static void pat_again(pat_state *ps)
{
    ps->depth = PAT_MAXDEPTH;
    ps->ncap = 0;
}

static void pat_end(pat_state *ps)
{
    if (ps->steps)
        rl_lua_charge(ps->L, ps->steps);
    ps->steps = 0;
}

/* Is c in class letter cl (%a, %d, ...; upper case for the complement)? */
static int in_class(int c, int cl)
{
    int r;
    switch (tolower(cl)) {
    case 'a': r = isalpha(c); break;
    case 'c': r = iscntrl(c); break;
    case 'd': r = isdigit(c); break;
    case 'g': r = isgraph(c); break;
    case 'l': r = islower(c); break;
    case 'p': r = ispunct(c); break;
    case 's': r = isspace(c); break;
    case 'u': r = isupper(c); break;
    case 'w': r = isalnum(c); break;
    case 'x': r = isxdigit(c); break;
    case 'z': r = c == 0; break; /* deprecated in Lua 5.2, still understood by 5.4 */
    default: return cl == c;
    }
    if (isupper(cl))
        r = !r;
    return r;
}

/* The end of the single item at p: one char, %x, or a [set]. */
static const char *item_end(pat_state *ps, const char *p)
{
    char c = *p++;
    if (c == PAT_ESC) {
        if (p == ps->pend)
            luaL_error(ps->L, "malformed pattern (ends with '%%')");
        return p + 1;
    }
    if (c == '[') {
        if (*p == '^')
            p++;
        do { /* the first char of a set is never its end: "[]]" holds ']' */
            if (p == ps->pend)
                luaL_error(ps->L, "malformed pattern (missing ']')");
            if (*p++ == PAT_ESC && p < ps->pend)
                p++;
        } while (*p != ']');
        return p + 1;
    }
    return p;
}

/* Is c in the set [ ... ] from p (at '[') to close (at ']')? */
static int in_set(int c, const char *p, const char *close)
{
    int want = 1;
    if (p[1] == '^') {
        want = 0;
        p++;
    }
    while (++p < close) {
        if (*p == PAT_ESC) {
            p++;
            if (in_class(c, (unsigned char)*p))
                return want;
        } else if (p[1] == '-' && p + 2 < close) {
            if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
                return want;
            p += 2;
        } else if ((unsigned char)*p == c) {
            return want;
        }
    }
    return !want;
}

static int item_match(pat_state *ps, const char *s, const char *p, const char *ep)
{
    step(ps);
    if (s >= ps->send)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case PAT_ESC: return in_class(c, (unsigned char)p[1]);
    case '[': return in_set(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* How far item p..ep matches from s, using the memo of the last run of the same item. */
static const char *run_end(pat_state *ps, const char *s, const char *p, const char *ep)
{
    if (ps->run_p == p && ps->run_lo <= s && s <= ps->run_hi)
        return ps->run_hi;
    const char *e = s;
    while (item_match(ps, e, p, ep))
        e++;
    ps->run_p = p;
    ps->run_lo = s;
    ps->run_hi = e;
    return e;
}

static const char *do_match(pat_state *ps, const char *s, const char *p);

static const char *greedy(pat_state *ps, const char *s, const char *p, const char *ep)
{
    const char *e = run_end(ps, s, p, ep);
    const char *rest = ep + 1;
    if (rest + 1 == ps->pend && *rest == '$') /* only the longest run can reach the end */
        return e == ps->send ? e : NULL;
    for (;;) {
        const char *r = do_match(ps, e, rest);
        if (r)
            return r;
        if (e == s)
            return NULL;
        e--;
    }
}

static const char *lazy(pat_state *ps, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *r = do_match(ps, s, ep + 1);
        if (r)
            return r;
        if (!item_match(ps, s, p, ep))
            return NULL;
        s++;
    }
}

static const char *open_capture(pat_state *ps, const char *s, const char *p, ptrdiff_t what)
{
    if (ps->ncap >= PAT_MAXCAPTURES)
        luaL_error(ps->L, "too many captures");
    ps->cap[ps->ncap].at = s;
    ps->cap[ps->ncap].len = what;
    ps->ncap++;
    const char *r = do_match(ps, s, p);
    if (!r)
        ps->ncap--;
    return r;
}

static const char *close_capture(pat_state *ps, const char *s, const char *p)
{
    int i = ps->ncap - 1;
    while (i >= 0 && ps->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0)
        luaL_error(ps->L, "invalid pattern capture");
    ps->cap[i].len = s - ps->cap[i].at;
    const char *r = do_match(ps, s, p);
    if (!r)
        ps->cap[i].len = CAP_OPEN;
    return r;
}

static const char *balanced(pat_state *ps, const char *s, const char *p)
{
    if (p >= ps->pend - 1)
        luaL_error(ps->L, "malformed pattern (missing arguments to '%%b')");
    if (*s != *p) /* at the end *s is the terminating NUL */
        return NULL;
    char open = p[0], close = p[1];
    int depth = 1;
    while (++s < ps->send) {
        step(ps);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

static const char *backref(pat_state *ps, const char *s, int digit)
{
    int i = digit - '1';
    if (i < 0 || i >= ps->ncap || ps->cap[i].len == CAP_OPEN)
        luaL_error(ps->L, "invalid capture index %%%d", i + 1);
    ptrdiff_t len = ps->cap[i].len;
    ps->steps += (uint64_t)(len > 0 ? len : 0) / BYTES_PER_STEP;
    if (len >= 0 && ps->send - s >= len && memcmp(ps->cap[i].at, s, (size_t)len) == 0)
        return s + len;
    return NULL; /* a position capture never matches as a back-reference */
}

/* Matches pattern p..pend at s: the end of the match, or NULL. */
static const char *do_match(pat_state *ps, const char *s, const char *p)
{
    if (ps->depth-- == 0)
        luaL_error(ps->L, "pattern too complex");
    for (;;) {
        step(ps);
        if (p == ps->pend)
            break;
        if (*p == '(') {
            s = p[1] == ')' ? open_capture(ps, s, p + 2, CAP_POS) : open_capture(ps, s, p + 1, CAP_OPEN);
            break;
        }
        if (*p == ')') {
            s = close_capture(ps, s, p + 1);
            break;
        }
        if (*p == '$' && p + 1 == ps->pend) {
            s = s == ps->send ? s : NULL;
            break;
        }
        if (*p == PAT_ESC && p + 1 < ps->pend && p[1] == 'b') {
            if (!(s = balanced(ps, s, p + 2)))
                break;
            p += 4;
            continue;
        }
        if (*p == PAT_ESC && p + 1 < ps->pend && p[1] == 'f') {
            p += 2;
            if (*p != '[')
                luaL_error(ps->L, "missing '[' after '%%f' in pattern");
            const char *ep = item_end(ps, p);
            int before = s == ps->s0 ? '\0' : (unsigned char)s[-1];
            int here = (unsigned char)*s; /* NUL at the end */
            if (in_set(before, p, ep - 1) || !in_set(here, p, ep - 1)) {
                s = NULL;
                break;
            }
            p = ep;
            continue;
        }
        if (*p == PAT_ESC && p + 1 < ps->pend && isdigit((unsigned char)p[1])) {
            if (!(s = backref(ps, s, (unsigned char)p[1])))
                break;
            p += 2;
            continue;
        }
        const char *ep = item_end(ps, p);
        char q = ep < ps->pend ? *ep : '\0';
        if (!item_match(ps, s, p, ep)) {
            if (q == '*' || q == '?' || q == '-') { /* zero repetitions are fine */
                p = ep + 1;
                continue;
            }
            s = NULL;
            break;
        }
        if (q == '?') {
            const char *r = do_match(ps, s + 1, ep + 1);
            if (r) {
                s = r;
                break;
            }
            p = ep + 1;
            continue;
        }
        if (q == '+') {
            s = greedy(ps, s + 1, p, ep);
            break;
        }
        if (q == '*') {
            s = greedy(ps, s, p, ep);
            break;
        }
        if (q == '-') {
            s = lazy(ps, s, p, ep);
            break;
        }
        s++;
        p = ep;
    }
    ps->depth++;
    return s;
}

/* Pushes capture i of the match s..e (the whole match when there are no captures). */
static void push_capture(pat_state *ps, int i, const char *s, const char *e)
{
    if (i >= ps->ncap) {
        if (i != 0)
            luaL_error(ps->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(ps->L, s, (size_t)(e - s));
        return;
    }
    ptrdiff_t len = ps->cap[i].len;
    if (len == CAP_OPEN)
        luaL_error(ps->L, "unfinished capture");
    if (len == CAP_POS)
        lua_pushinteger(ps->L, (lua_Integer)(ps->cap[i].at - ps->s0) + 1);
    else
        lua_pushlstring(ps->L, ps->cap[i].at, (size_t)len);
}

/* Pushes every capture (s == NULL: none when the pattern has none); returns how many. */
static int push_captures(pat_state *ps, const char *s, const char *e)
{
    int n = ps->ncap == 0 && s ? 1 : ps->ncap;
    luaL_checkstack(ps->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(ps, i, s, e);
    return n;
}

/* A relative string position (negative counts from the end) made absolute, 0 if before. */
static size_t abs_pos(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0)
        return 1;
    if (pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

/* No pattern specials in p[0..l) (which may hold NULs, hence the walk over its parts). */
static int no_specials(const char *p, size_t l)
{
    for (size_t at = 0; at <= l; at += strlen(p + at) + 1)
        if (strpbrk(p + at, PAT_SPECIALS))
            return 0;
    return 1;
}

static int find_or_match(lua_State *L, int find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = abs_pos(luaL_optinteger(L, 3, 1), ls);
    if (init > ls + 1) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || no_specials(p, lp))) {
        /* a plain search: glibc's memmem is linear in both lengths */
        rl_lua_charge(L, (ls - init + 1 + lp) / BYTES_PER_STEP);
        const char *hit = lp == 0 ? s + init - 1 : memmem(s + init - 1, ls - init + 1, p, lp);
        if (hit) {
            lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
            lua_pushinteger(L, (lua_Integer)(hit - s) + (lua_Integer)lp);
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    pat_state ps;
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    pat_begin(&ps, L, s, ls, p, lp);
    const char *s1 = s + init - 1;
    do {
        pat_again(&ps);
        const char *e = do_match(&ps, s1, p);
        if (e) {
            pat_end(&ps);
            if (find) {
                lua_pushinteger(L, (lua_Integer)(s1 - s) + 1);
                lua_pushinteger(L, (lua_Integer)(e - s));
                return push_captures(&ps, NULL, NULL) + 2;
            }
            return push_captures(&ps, s1, e);
        }
    } while (s1++ < ps.send && !anchor);
    pat_end(&ps);
    luaL_pushfail(L);
    return 1;
}

static int s_find(lua_State *L) { return find_or_match(L, 1); }
static int s_match(lua_State *L) { return find_or_match(L, 0); }

typedef struct gmatch_state {
    size_t at;        /* offset where the next search starts; past the end: done */
    const char *last; /* end of the last match: an empty match there does not count */
    pat_state ps;
} gmatch_state;

static int gmatch_next(lua_State *L)
{
    gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
    g->ps.L = L;
    g->ps.total = 0; /* each step of the iterator is a call of its own */
    const char *p = lua_tostring(L, lua_upvalueindex(2));
    size_t ls = (size_t)(g->ps.send - g->ps.s0);
    for (; g->at <= ls; g->at++) {
        const char *s = g->ps.s0 + g->at;
        pat_again(&g->ps);
        const char *e = do_match(&g->ps, s, p);
        if (e && e != g->last) {
            g->at = (size_t)(e - g->ps.s0);
            g->last = e;
            pat_end(&g->ps);
            return push_captures(&g->ps, s, e);
        }
    }
    pat_end(&g->ps);
    return 0;
}

static int s_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = abs_pos(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls)
        init = ls + 1; /* no match, not even an empty one at the end */
    lua_settop(L, 2);
    gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
    pat_begin(&g->ps, L, s, ls, p, lp); /* s and p stay alive as upvalues of the iterator */
    g->at = init;
    g->last = NULL;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

static void check_result(lua_State *L, size_t n, const char *what)
{
    if (n > rl_lua_g.cfg->lua_result_max) {
        if (rl_lua_g.current)
            rl_lua_violation(L, RL_LIMIT_RESULT, what);
        luaL_error(L, "%s", what);
    }
}

/* Appends the replacement for the match s..e to b (the gsub repl is at index 3). */
static void add_repl(pat_state *ps, luaL_Buffer *b, const char *s, const char *e, int type)
{
    lua_State *L = ps->L;
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = push_captures(ps, s, e);
        lua_call(L, n, 1);
    } else if (type == LUA_TTABLE) {
        push_capture(ps, 0, s, e);
        lua_gettable(L, 3);
    } else {
        size_t l;
        const char *r = lua_tolstring(L, 3, &l), *rend = r + l;
        const char *pc;
        while ((pc = memchr(r, PAT_ESC, (size_t)(rend - r))) != NULL) {
            luaL_addlstring(b, r, (size_t)(pc - r));
            pc++; /* at the end: the string's NUL, an invalid use like any other char */
            if (*pc == PAT_ESC) {
                luaL_addchar(b, PAT_ESC);
            } else if (*pc == '0') {
                luaL_addlstring(b, s, (size_t)(e - s));
            } else if (isdigit((unsigned char)*pc)) {
                push_capture(ps, *pc - '1', s, e);
                luaL_tolstring(L, -1, NULL);
                lua_remove(L, -2);
                luaL_addvalue(b);
            } else {
                luaL_error(L, "invalid use of '%c' in replacement string", PAT_ESC);
            }
            r = pc + 1;
        }
        luaL_addlstring(b, r, (size_t)(rend - r));
        return;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the match */
        lua_pop(L, 1);
        luaL_addlstring(b, s, (size_t)(e - s));
    } else if (!lua_isstring(L, -1)) {
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    } else {
        luaL_addvalue(b);
    }
}

static int s_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *src = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L, type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                            type == LUA_TTABLE,
                     3, "string/function/table");
    int anchor = lp > 0 && *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    pat_state ps;
    pat_begin(&ps, L, src, ls, p, lp);
    const char *last = NULL;
    lua_Integer n = 0;
    while (n < max) {
        pat_again(&ps);
        const char *e = do_match(&ps, src, p);
        if (e && e != last) {
            n++;
            add_repl(&ps, &b, src, e, type);
            src = last = e;
        } else if (src < ps.send) {
            luaL_addchar(&b, *src++);
        } else {
            break;
        }
        check_result(L, luaL_bufflen(&b), "string.gsub: result too large");
        if (anchor)
            break;
    }
    pat_end(&ps);
    luaL_addlstring(&b, src, (size_t)(ps.send - src));
    check_result(L, luaL_bufflen(&b), "string.gsub: result too large");
    rl_lua_charge(L, luaL_bufflen(&b) / BYTES_PER_STEP);
    luaL_pushresult(&b);
    lua_pushinteger(L, n);
    return 2;
}

/* ---- size and work bounds around the stock functions ------------------------------------- */

/* Calls the stock function (upvalue 1) with the arguments as given. */
static int call_stock(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int s_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) { /* the stock one loops n times to make "" */
        lua_pushliteral(L, "");
        return 1;
    }
    if ((uint64_t)n > (rl_lua_g.cfg->lua_result_max + lsep) / (l + lsep) + 1)
        check_result(L, SIZE_MAX, "string.rep: result too large");
    check_result(L, (size_t)n * l + (size_t)(n - 1) * lsep, "string.rep: result too large");
    rl_lua_charge(L, ((size_t)n * (l + lsep)) / BYTES_PER_STEP);
    /* What the stock one makes, by doubling: it copies once per repetition (a million calls of
       memcpy for ("m"):rep(1 << 20)), which this charge would not pay for. */
    size_t unit = l + lsep, total = (size_t)n * l + (size_t)(n - 1) * lsep;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, total);
    memcpy(p, s, l);
    if (lsep)
        memcpy(p + l, sep, lsep < total - l ? lsep : total - l);
    for (size_t done = unit < total ? unit : total; done < total;) {
        size_t k = done < total - done ? done : total - done;
        memcpy(p + done, p, k);
        done += k;
    }
    luaL_pushresultsize(&b, total);
    return 1;
}

static int t_concat(lua_State *L)
{
    size_t lsep;
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    lua_Integer last = lua_isnoneornil(L, 4) ? luaL_len(L, 1) : luaL_checkinteger(L, 4);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (; i <= last; i++) {
        lua_geti(L, 1, i);
        if (!lua_isstring(L, -1))
            return luaL_error(L, "invalid value (at index %I) in table for 'concat'",
                              (LUAI_UACINT)i);
        luaL_addvalue(&b);
        if (i != last)
            luaL_addlstring(&b, sep, lsep);
        check_result(L, luaL_bufflen(&b), "table.concat: result too large");
        rl_lua_charge(L, 1);
        if (i == LUA_MAXINTEGER)
            break;
    }
    rl_lua_charge(L, luaL_bufflen(&b) / BYTES_PER_STEP);
    luaL_pushresult(&b);
    return 1;
}

/* n*log2(n) comparisons for table.sort, charged before the stock sort runs; a Lua comparator
   is counted by the hook as well. */
static int t_sort(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE) {
        uint64_t n = lua_rawlen(L, 1), lg = 1;
        while ((1ull << lg) < n && lg < 63)
            lg++;
        rl_lua_charge(L, n * lg);
    }
    return call_stock(L);
}

/* insert and remove at a position shift the elements after it; appending and removing the
   last element (no position) cost nothing extra. */
static int t_shift(lua_State *L, int pos_arg)
{
    if (lua_type(L, 1) == LUA_TTABLE && lua_gettop(L) >= pos_arg && lua_isinteger(L, pos_arg)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, 1), pos = lua_tointeger(L, pos_arg);
        if (pos >= 1 && pos <= n)
            rl_lua_charge(L, (uint64_t)(n - pos + 1));
    }
    return call_stock(L);
}

static int t_insert(lua_State *L) { return t_shift(L, lua_gettop(L) == 3 ? 2 : INT_MAX); }
static int t_remove(lua_State *L) { return t_shift(L, 2); }

static int t_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    if (e >= f)
        rl_lua_charge(L, (uint64_t)e - (uint64_t)f + 1);
    return call_stock(L);
}

/* Replaces fields of the table at idx: fn (stock function as upvalue when wrap). */
static void replace(lua_State *L, int idx, const char *name, lua_CFunction fn, int wrap)
{
    if (wrap) {
        lua_getfield(L, idx, name);
        lua_pushcclosure(L, fn, 1);
    } else {
        lua_pushcfunction(L, fn);
    }
    lua_setfield(L, idx, name);
}

void rl_lua_str_open(lua_State *L)
{
    lua_getglobal(L, "string");
    int t = lua_gettop(L);
    replace(L, t, "find", s_find, 0);
    replace(L, t, "match", s_match, 0);
    replace(L, t, "gmatch", s_gmatch, 0);
    replace(L, t, "gsub", s_gsub, 0);
    replace(L, t, "rep", s_rep, 1);
    lua_getglobal(L, "table");
    t = lua_gettop(L);
    replace(L, t, "concat", t_concat, 0);
    replace(L, t, "sort", t_sort, 1);
    replace(L, t, "insert", t_insert, 1);
    replace(L, t, "remove", t_remove, 1);
    replace(L, t, "move", t_move, 1);
    lua_pop(L, 2);
}
