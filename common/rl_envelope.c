/* One-pass envelope scanner for client text frames: UTF-8, strict JSON, the top-level keys. */
#include "rl_envelope.h"
#include "rl_swar.h"

#include <stdint.h>
#include <string.h>

/* The open containers are a bit stack (1 = object) of two words, not a recursion: a frame of
   a million '[' costs 100 bits and stops at the 101st. */
_Static_assert(RL_ENV_MAX_DEPTH >= 1 && RL_ENV_MAX_DEPTH <= 128, "the container stack is 128 bits");

/* ---------------------------------------------------------------------------------------------
 * Byte classes: one table serves string content and UTF-8 lead bytes. */

enum {
    C_PLAIN,  /* printable ASCII (0x20-0x7F) other than '"' and '\\' */
    C_QUOTE,  /* '"' */
    C_BSLASH, /* '\\' */
    C_CTRL,   /* 0x00-0x1F: never raw in a string */
    C_BAD,    /* 0x80-0xC1 (a continuation, or the lead of an overlong pair), 0xF5-0xFF */
    C_U2,     /* C2-DF: one continuation */
    C_E0,     /* E0: A0-BF then one continuation (no overlongs) */
    C_U3,     /* E1-EC, EE-EF: two continuations */
    C_ED,     /* ED: 80-9F then one continuation (no surrogates) */
    C_F0,     /* F0: 90-BF then two continuations (no overlongs) */
    C_U4,     /* F1-F3: three continuations */
    C_F4,     /* F4: 80-8F then two continuations (nothing past U+10FFFF) */
};

#define X2(c) c, c
#define X4(c) X2(c), X2(c)
#define X16(c) X4(c), X4(c), X4(c), X4(c)
static const uint8_t cls[] = {
    X16(C_CTRL), X16(C_CTRL),                                                 /* 00-1F */
    X2(C_PLAIN), C_QUOTE, C_PLAIN, X4(C_PLAIN), X4(C_PLAIN), X4(C_PLAIN),     /* 20-2F */
    X16(C_PLAIN), X16(C_PLAIN),                                               /* 30-4F */
    X4(C_PLAIN), X4(C_PLAIN), X4(C_PLAIN), C_BSLASH, C_PLAIN, X2(C_PLAIN),    /* 50-5F */
    X16(C_PLAIN), X16(C_PLAIN),                                               /* 60-7F */
    X16(C_BAD), X16(C_BAD), X16(C_BAD), X16(C_BAD),                           /* 80-BF */
    X2(C_BAD), X2(C_U2), X4(C_U2), X4(C_U2), X4(C_U2), X16(C_U2),             /* C0-DF */
    C_E0, X4(C_U3), X4(C_U3), X4(C_U3), C_ED, X2(C_U3),                       /* E0-EF */
    C_F0, X2(C_U4), C_U4, C_F4, C_BAD, X2(C_BAD), X4(C_BAD), X4(C_BAD),       /* F0-FF */
};
_Static_assert(sizeof cls == 256, "one class per byte");

/* Per lead class (from C_U2): continuations after the lead, and the range of the first one
   (Unicode 15, table 3-7). */
static const struct {
    uint8_t n, lo, hi;
} seqs[] = {
    {1, 0x80, 0xBF}, {2, 0xA0, 0xBF}, {2, 0x80, 0xBF}, {2, 0x80, 0x9F},
    {3, 0x90, 0xBF}, {3, 0x80, 0xBF}, {3, 0x80, 0x8F},
};
_Static_assert(sizeof seqs / sizeof seqs[0] == C_F4 - C_U2 + 1, "one entry per lead class");

/* The UTF-8 sequence at p (p < end, *p >= 0x80, c = cls[*p]): its length (2-4), 0 when it is
   invalid, -1 when it is valid as far as it goes but end cuts it. */
static inline int u8_seq(const uint8_t *p, const uint8_t *end, unsigned c)
{
    if (c < C_U2)
        return 0;
    unsigned k = c - C_U2, n = seqs[k].n;
    if (end - p > 3) { /* the usual case: end cannot cut it */
        if ((uint8_t)(p[1] - seqs[k].lo) > (uint8_t)(seqs[k].hi - seqs[k].lo))
            return 0;
        if (n == 1)
            return 2;
        if ((p[2] & 0xC0) != 0x80)
            return 0;
        if (n == 2)
            return 3;
        return (p[3] & 0xC0) == 0x80 ? 4 : 0;
    }
    size_t avail = (size_t)(end - p) - 1;
    if (avail == 0)
        return -1;
    if (p[1] < seqs[k].lo || p[1] > seqs[k].hi)
        return 0;
    for (unsigned i = 2; i <= n; i++) {
        if (i > avail)
            return -1;
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    }
    return (int)n + 1;
}

/* 0: p[0..end) is valid UTF-8. -1: it is not, *at is the first byte of the bad sequence. 1:
   valid, but the last sequence is cut by end at *at. */
static int utf8_scan(const uint8_t *p, const uint8_t *end, const uint8_t **at)
{
    for (;;) {
        while (end - p >= 16 && !((rl_load8(p) | rl_load8(p + 8)) & RL_SWAR_HIGH))
            p += 16;
        while (p < end && *p < 0x80)
            p++;
        if (p == end)
            return 0;
        int n = u8_seq(p, end, cls[*p]);
        if (n <= 0) {
            *at = p;
            return n == 0 ? -1 : 1;
        }
        p += n;
    }
}

int rl_env_utf8_valid(const char *s, size_t len)
{
    const uint8_t *at;
    return len == 0 || utf8_scan((const uint8_t *)s, (const uint8_t *)s + len, &at) == 0;
}

/* ---------------------------------------------------------------------------------------------
 * Strings */

static inline int hexdig(uint8_t c)
{
    if ((unsigned)(c - '0') < 10u)
        return c - '0';
    c |= 0x20;
    if ((unsigned)(c - 'a') < 6u)
        return c - 'a' + 10;
    return -1;
}

/* Up to 4 hex digits from p (stopping at end or a non-digit): how many, their value in *v. */
static unsigned hex_prefix(const uint8_t *p, const uint8_t *end, unsigned *v)
{
    unsigned n = 0, x = 0;
    for (; n < 4 && p + n < end; n++) {
        int d = hexdig(p[n]);
        if (d < 0)
            break;
        x = x << 4 | (unsigned)d;
    }
    *v = x;
    return n;
}

/* What the n hex digits x of a \u escape can still become: [lo, hi]. */
#define HEX_LO(x, n) ((x) << (4 * (4 - (n))))
#define HEX_HI(x, n) (HEX_LO(x, n) | ((1u << (4 * (4 - (n)))) - 1))

enum { S_OK, S_MORE, S_CUT, S_BAD, S_UTF8 };

typedef struct scan_err {
    const char *why;
    const uint8_t *at;
} scan_err;

/* A \u escape at p (p[0..2) == "\\u"). On S_OK *pp is past it (and past the low surrogate
   escape that a high one needs); on S_BAD *pp stays at p. Kept apart from scan_str: rare. */
static int scan_u_escape(const uint8_t **pp, const uint8_t *end, scan_err *e)
{
    const uint8_t *p = *pp;
    unsigned v, n = hex_prefix(p + 2, end, &v);
    if (n < 4) {
        if (p + 2 + n < end) {
            e->why = "bad escape";
        } else if (HEX_LO(v, n) >= 0xDC00 && HEX_HI(v, n) <= 0xDFFF) {
            e->why = "unpaired surrogate";
        } else {
            return S_MORE;
        }
        e->at = p;
        return S_BAD;
    }
    if (v == 0) {
        e->why = "\\u0000 in string";
        e->at = p;
        return S_BAD;
    }
    if (v >= 0xDC00 && v <= 0xDFFF) {
        e->why = "unpaired surrogate";
        e->at = p;
        return S_BAD;
    }
    if (v < 0xD800 || v > 0xDBFF) {
        *pp = p + 6;
        return S_OK;
    }
    const uint8_t *q = p + 6; /* a high surrogate: a low one must follow */
    if (q == end || (q[0] == '\\' && q + 1 == end))
        return S_MORE;
    if (q[0] != '\\' || q[1] != 'u')
        goto unpaired;
    n = hex_prefix(q + 2, end, &v);
    if (n == 4) {
        if (v < 0xDC00 || v > 0xDFFF)
            goto unpaired;
        *pp = q + 6;
        return S_OK;
    }
    if (q + 2 + n < end) {
        e->why = "bad escape";
        e->at = q;
        return S_BAD;
    }
    if (HEX_HI(v, n) >= 0xDC00 && HEX_LO(v, n) <= 0xDFFF)
        return S_MORE;
unpaired:
    e->why = "unpaired surrogate";
    e->at = p;
    return S_BAD;
}

/* String content from *pp (just past the opening quote). S_OK: *pp is past the closing quote,
   *esc tells whether the content holds a backslash. S_MORE / S_CUT: end came first (S_CUT:
   inside a UTF-8 sequence starting at e->at). S_BAD: invalid JSON, e set, *pp at a character
   boundary before which all is valid UTF-8. S_UTF8: invalid UTF-8 at e->at. */
static inline int scan_str(const uint8_t **pp, const uint8_t *end, unsigned *esc, scan_err *e)
{
    const uint8_t *p = *pp;
    *esc = 0;
    for (;;) {
        p = rl_skip_plain8(p, end);
        while (p < end && cls[*p] == C_PLAIN)
            p++;
        if (p == end) {
            *pp = p;
            return S_MORE;
        }
        unsigned c = cls[*p];
        if (c == C_QUOTE) {
            *pp = p + 1;
            return S_OK;
        }
        if (c == C_BSLASH) {
            *esc = 1;
            if (end - p < 2) {
                *pp = p;
                return S_MORE;
            }
            switch (p[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                p += 2;
                continue;
            case 'u': {
                int r = scan_u_escape(&p, end, e);
                if (r == S_OK)
                    continue;
                *pp = p;
                return r;
            }
            default:
                e->why = "bad escape";
                e->at = p;
                *pp = p;
                return S_BAD;
            }
        }
        if (c == C_CTRL) {
            e->why = "control character in string";
            e->at = p;
            *pp = p;
            return S_BAD;
        }
        for (;;) { /* non-ASCII text comes in runs */
            int n = u8_seq(p, end, c);
            if (n <= 0) {
                e->why = n == 0 ? "invalid UTF-8" : "truncated UTF-8";
                e->at = p;
                *pp = end;
                return n == 0 ? S_UTF8 : S_CUT;
            }
            p += n;
            if (p == end || *p < 0x80)
                break;
            c = cls[*p];
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Unescaping */

ssize_t rl_env_unescape(const char *s, size_t len, char *out, size_t cap)
{
    size_t i = 0, o = 0;
    if (cap == 0)
        return -1;
    while (i < len) { /* (s may be NULL when len is 0) */
        /* Copy up to the next backslash, looking no further than what can still fit. */
        size_t room = cap - 1 - o, w = len - i < room + 1 ? len - i : room + 1;
        const char *bs = memchr(s + i, '\\', w);
        size_t run = bs ? (size_t)(bs - (s + i)) : w;
        if (run > room)
            return -1;
        memcpy(out + o, s + i, run);
        o += run;
        i += run;
        if (!bs)
            break;
        if (len - i < 2)
            return -1;
        unsigned cp, lo, k;
        const uint8_t *u = (const uint8_t *)s + i;
        switch (u[1]) {
        case '"': case '\\': case '/': cp = u[1]; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (len - i < 6 || hex_prefix(u + 2, u + 6, &cp) != 4 || cp == 0 ||
                (cp >= 0xDC00 && cp <= 0xDFFF))
                return -1;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (len - i < 12 || u[6] != '\\' || u[7] != 'u' ||
                    hex_prefix(u + 8, u + 12, &lo) != 4 || lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                i += 6;
            }
            i += 4;
            break;
        default:
            return -1;
        }
        i += 2;
        k = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (k > cap - 1 - o)
            return -1;
        uint8_t *d = (uint8_t *)out + o;
        switch (k) {
        case 1: d[0] = (uint8_t)cp; break;
        case 2: d[0] = (uint8_t)(0xC0 | cp >> 6); d[1] = (uint8_t)(0x80 | (cp & 0x3F)); break;
        case 3:
            d[0] = (uint8_t)(0xE0 | cp >> 12);
            d[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            d[2] = (uint8_t)(0x80 | (cp & 0x3F));
            break;
        default:
            d[0] = (uint8_t)(0xF0 | cp >> 18);
            d[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            d[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            d[3] = (uint8_t)(0x80 | (cp & 0x3F));
            break;
        }
        o += k;
    }
    out[o] = '\0';
    return (ssize_t)o;
}

/* ---------------------------------------------------------------------------------------------
 * The scanner */

/* Top-level keys the hub reads; a bit each. */
enum { K_TYPE = 1, K_REQUEST_ID = 2, K_CONN_PID = 4 };

/* Which of the K_ keys the content s[0..n) of a member name is, unescaped, or 0. Only names
   of at most 10 bytes unescaped can be one, so decoding stops there (into the stack). */
static unsigned key_id(const uint8_t *s, size_t n, unsigned esc)
{
    char tmp[sizeof "request_id"];
    if (esc) {
        ssize_t m = rl_env_unescape((const char *)s, n, tmp, sizeof tmp);
        if (m < 0)
            return 0;
        s = (const uint8_t *)tmp;
        n = (size_t)m;
    }
    switch (n) {
    case 4: return memcmp(s, "type", 4) ? 0 : K_TYPE;
    case 8: return memcmp(s, "conn_pid", 8) ? 0 : K_CONN_PID;
    case 10: return memcmp(s, "request_id", 10) ? 0 : K_REQUEST_ID;
    default: return 0;
    }
}

/* JSON whitespace: ' ', '\t', '\n', '\r'. */
#define WS_MASK ((1ull << ' ') | (1ull << '\t') | (1ull << '\n') | (1ull << '\r'))
#define IS_WS(c) ((c) <= ' ' && (WS_MASK >> (c) & 1))
#define IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)
#define SKIP_WS()                                                                          \
    while (p < end && IS_WS(*p))                                                           \
    p++
/* A JSON error at `where`; the UTF-8 check goes on from p, a character boundary before which
   everything has been checked. */
#define FAIL(w, where)                                                                     \
    do {                                                                                   \
        e.why = (w);                                                                       \
        e.at = (where);                                                                    \
        goto invalid;                                                                      \
    } while (0)
#define PUSH(obj)                                                                          \
    do {                                                                                   \
        if (depth == RL_ENV_MAX_DEPTH)                                                     \
            FAIL("depth", p);                                                              \
        stack[depth >> 6] = (stack[depth >> 6] & ~(1ull << (depth & 63))) |                \
                            ((uint64_t)(obj) << (depth & 63));                             \
        depth++;                                                                           \
        in_obj = (obj);                                                                    \
        p++;                                                                               \
    } while (0)
#define POP()                                                                              \
    do {                                                                                   \
        p++;                                                                               \
        depth--;                                                                           \
        in_obj = depth ? (unsigned)(stack[(depth - 1) >> 6] >> ((depth - 1) & 63) & 1) : 0; \
    } while (0)

/* Written as one function with labels for the grammar's states (value, after a value, member
   name), the way picohttpparser reads: a loop over a state variable would cost a dispatch per
   token, and recursion would put the depth bound on the C stack. */
int rl_env_scan(const char *buf, size_t len, rl_envelope *env)
{
    memset(env, 0, sizeof *env);
    if (len == 0) { /* buf may be NULL then: no arithmetic on it */
        env->why = "truncated";
        return RL_ENV_INCOMPLETE;
    }
    const uint8_t *const start = (const uint8_t *)buf, *const end = start + len;
    const uint8_t *p = start, *key = start, *vstart = start, *lit;
    uint64_t stack[2] = {0, 0};
    unsigned depth = 0, in_obj = 0, top_obj = 0, esc = 0, seen = 0, want = 0, n;
    scan_err e = {NULL, NULL};
    int r;

value:
    SKIP_WS();
    if (p == end)
        goto more;
    switch (*p) {
    case '{':
        top_obj |= depth == 0;
        PUSH(1);
        SKIP_WS();
        if (p == end)
            goto more;
        if (*p == '}') {
            POP();
            goto done;
        }
        goto member;
    case '[':
        PUSH(0);
        SKIP_WS();
        if (p == end)
            goto more;
        if (*p == ']') {
            POP();
            goto done;
        }
        goto value;
    case '"':
        p++;
        r = scan_str(&p, end, &esc, &e);
        if (r != S_OK)
            goto string_fail;
        goto done;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
        if (*p == '-' && ++p == end)
            goto more;
        if (*p == '0') {
            if (++p < end && IS_DIGIT(*p))
                FAIL("bad number", p);
        } else if (IS_DIGIT(*p)) {
            do
                p++;
            while (p < end && IS_DIGIT(*p));
        } else {
            FAIL("bad number", p);
        }
        if (p < end && *p == '.') {
            if (++p == end)
                goto more;
            if (!IS_DIGIT(*p))
                FAIL("bad number", p);
            do
                p++;
            while (p < end && IS_DIGIT(*p));
        }
        if (p < end && (*p | 0x20) == 'e') {
            if (++p == end)
                goto more;
            if ((*p == '+' || *p == '-') && ++p == end)
                goto more;
            if (!IS_DIGIT(*p))
                FAIL("bad number", p);
            do
                p++;
            while (p < end && IS_DIGIT(*p));
        }
        goto done; /* at the end of buf: whole at the top, else `done` asks for more */
    case 't': lit = (const uint8_t *)"true", n = 4; goto literal;
    case 'f': lit = (const uint8_t *)"false", n = 5; goto literal;
    case 'n': lit = (const uint8_t *)"null", n = 4; goto literal;
    default:
        FAIL("unexpected byte", p);
    }

literal:
    if ((size_t)(end - p) >= n && memcmp(p, lit, n) == 0) {
        p += n;
        goto done;
    }
    for (unsigned i = 1; i < n; i++) {
        if (p + i == end)
            goto more;
        if (p[i] != lit[i]) {
            const uint8_t *at = p;
            p += i;
            FAIL("bad literal", at);
        }
    }
    goto more; /* not reached: the memcmp above matched */

done: /* p is just past a whole value */
    if (depth <= 1) {
        if (depth == 0)
            goto trailer;
        if (want == K_TYPE) {
            env->has_type = 1;
            if (*vstart == '"') {
                env->type_is_string = 1;
                env->type_escaped = esc;
                env->type = (rl_env_span){(size_t)(vstart + 1 - start), (size_t)(p - vstart - 2)};
            } else {
                env->type = (rl_env_span){(size_t)(vstart - start), (size_t)(p - vstart)};
            }
        } else if (want == K_REQUEST_ID) {
            env->has_request_id = 1;
            env->request_id = (rl_env_span){(size_t)(vstart - start), (size_t)(p - vstart)};
        }
        want = 0;
    }
    SKIP_WS();
    if (p == end)
        goto more;
    if (*p == ',') {
        p++;
        if (!in_obj)
            goto value;
        SKIP_WS();
        if (p == end)
            goto more;
        goto member;
    }
    if (*p == (in_obj ? '}' : ']')) {
        POP();
        goto done;
    }
    FAIL("unexpected byte", p);

member: /* p < end, at what must open a member name */
    if (*p != '"')
        FAIL("unexpected byte", p);
    key = ++p;
    r = scan_str(&p, end, &esc, &e);
    if (r != S_OK)
        goto string_fail;
    if (depth == 1) {
        unsigned k = key_id(key, (size_t)(p - 1 - key), esc);
        if (seen & k & (K_TYPE | K_CONN_PID))
            FAIL("duplicate key", key - 1);
        want = k & ~seen & (K_TYPE | K_REQUEST_ID); /* the first request_id wins */
        seen |= k;
    }
    SKIP_WS();
    if (p == end)
        goto more;
    if (*p != ':')
        FAIL("unexpected byte", p);
    p++;
    SKIP_WS();
    if (depth == 1)
        vstart = p; /* where the member's value starts, for the spans */
    goto value;

trailer:
    SKIP_WS();
    if (p != end)
        FAIL("trailing data", p);
    return top_obj ? RL_ENV_OK : RL_ENV_NOT_OBJECT;

string_fail:
    switch (r) {
    case S_MORE:
        goto more;
    case S_CUT:
        memset(env, 0, sizeof *env);
        env->utf8_cut = 1;
        env->why = e.why;
        env->err_off = (size_t)(e.at - start);
        return RL_ENV_INCOMPLETE;
    case S_BAD:
        goto invalid;
    default:
        memset(env, 0, sizeof *env);
        env->why = e.why;
        env->err_off = (size_t)(e.at - start);
        return RL_ENV_BAD_UTF8;
    }

more:
    memset(env, 0, sizeof *env);
    env->why = "truncated";
    env->err_off = len;
    return RL_ENV_INCOMPLETE;

invalid: {
    const uint8_t *at;
    memset(env, 0, sizeof *env);
    r = utf8_scan(p, end, &at);
    if (r < 0) {
        env->why = "invalid UTF-8";
        env->err_off = (size_t)(at - start);
        return RL_ENV_BAD_UTF8;
    }
    env->utf8_cut = r > 0;
    env->why = e.why;
    env->err_off = (size_t)(e.at - start);
    return RL_ENV_INVALID;
}
}
