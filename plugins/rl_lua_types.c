/* The platform's type annotations, stripped before a source is compiled (plain Lua 5.4 is left
 * exactly as it is). A lexer-level pass: strings, long strings and comments are skipped whole,
 * and every byte of an annotation becomes a space (newlines stay), so line and column numbers
 * of the compiled chunk are those of the file.
 *
 * Stripped: `local x: T, y: U = ...`, `local function f<T>(a: T, ...: U): R`, `function
 * m.f(a: T): (R, E?)`, anonymous `function(a: T): R`, `for k: K, v: V in ...`, `type T = ...`
 * and `export type T<A> = ...` (as the first token of a line), casts `v :: T` and `v as T`, and
 * the non-nil assertion `x!`. Types are skipped by their shape: names (dotted, generic
 * arguments `<...>`), `nil`/`true`/`false`, string and number literals, `{...}`, `(...)` with an
 * optional `-> T`, postfix `?` and validators `@name(...)`, joined by `|` and `&`.
 *
 * Refused (the error names the line): a type where none can be read, and a declared type used
 * as a value (`T(x)`, `T:is(x)`, `typeof(x)`): the platform's runtime types do not exist here. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_lua_types.h"

#define MAX_TYPE_NAMES 256 /* distinct `type` declarations remembered for the value check */
#define MAX_TYPE_DEPTH 64  /* nesting of types inside types */

enum { T_EOF, T_NAME, T_NUM, T_STR, T_SYM };

typedef struct tok {
    int kind;
    size_t at, end; /* [at, end) in the source */
} tok;

typedef struct lx {
    char *s; /* the copy being blanked */
    size_t len;
    char *err;
    size_t errlen;
    int failed;
    char names[MAX_TYPE_NAMES][64];
    size_t nnames;
} lx;

static int is_name0(char c) { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
static int is_name1(char c) { return is_name0(c) || (c >= '0' && c <= '9'); }

static int line_of(const lx *L, size_t at)
{
    int line = 1;
    for (size_t i = 0; i < at && i < L->len; i++)
        line += L->s[i] == '\n';
    return line;
}

static void fail(lx *L, size_t at, const char *why)
{
    if (L->failed)
        return;
    L->failed = 1;
    snprintf(L->err, L->errlen, "line %d: %s", line_of(L, at), why);
}

/* Level of a long bracket opening at p ("[[", "[==["), or -1. */
static int long_open(const lx *L, size_t p)
{
    if (p >= L->len || L->s[p] != '[')
        return -1;
    size_t q = p + 1;
    int level = 0;
    while (q < L->len && L->s[q] == '=') {
        level++;
        q++;
    }
    return q < L->len && L->s[q] == '[' ? level : -1;
}

/* End (one past) of the long bracket of `level` whose opening starts at p. */
static size_t long_skip(const lx *L, size_t p, int level)
{
    size_t q = p + (size_t)level + 2;
    for (; q < L->len; q++) {
        if (L->s[q] != ']')
            continue;
        size_t r = q + 1;
        int n = 0;
        while (r < L->len && L->s[r] == '=') {
            n++;
            r++;
        }
        if (n == level && r < L->len && L->s[r] == ']')
            return r + 1;
    }
    return L->len;
}

/* Skips blanks and comments from p. */
static size_t skip_space(const lx *L, size_t p)
{
    for (;;) {
        while (p < L->len && (L->s[p] == ' ' || L->s[p] == '\t' || L->s[p] == '\n' ||
                              L->s[p] == '\r' || L->s[p] == '\f' || L->s[p] == '\v'))
            p++;
        if (p + 1 < L->len && L->s[p] == '-' && L->s[p + 1] == '-') {
            int level = long_open(L, p + 2);
            if (level >= 0) {
                p = long_skip(L, p + 2, level);
            } else {
                while (p < L->len && L->s[p] != '\n')
                    p++;
            }
            continue;
        }
        return p;
    }
}

static tok lex_at(const lx *L, size_t p)
{
    tok t = {T_EOF, 0, 0};
    p = skip_space(L, p);
    t.at = t.end = p;
    if (p >= L->len)
        return t;
    const char *s = L->s;
    char c = s[p];
    if (is_name0(c)) {
        while (p < L->len && is_name1(s[p]))
            p++;
        t.kind = T_NAME;
    } else if ((c >= '0' && c <= '9') || (c == '.' && p + 1 < L->len && s[p + 1] >= '0' &&
                                          s[p + 1] <= '9')) {
        while (p < L->len && (is_name1(s[p]) || s[p] == '.' ||
                              ((s[p] == '+' || s[p] == '-') &&
                               (s[p - 1] == 'e' || s[p - 1] == 'E' || s[p - 1] == 'p' ||
                                s[p - 1] == 'P'))))
            p++;
        t.kind = T_NUM;
    } else if (c == '"' || c == '\'') {
        p++;
        while (p < L->len && s[p] != c && s[p] != '\n')
            p += (s[p] == '\\' && p + 1 < L->len) ? 2 : 1;
        if (p < L->len && s[p] == c)
            p++;
        t.kind = T_STR;
    } else if (long_open(L, p) >= 0) {
        p = long_skip(L, p, long_open(L, p));
        t.kind = T_STR;
    } else {
        static const char *const multi[] = {"...", "::", "->", "..", "==", "~=", "<=", ">=",
                                            "//", "<<", ">>", NULL};
        size_t n = 1;
        for (size_t i = 0; multi[i]; i++) {
            size_t m = strlen(multi[i]);
            if (p + m <= L->len && memcmp(s + p, multi[i], m) == 0) {
                n = m;
                break;
            }
        }
        p += n;
        t.kind = T_SYM;
    }
    t.end = p;
    return t;
}

static int is(const lx *L, tok t, const char *text)
{
    size_t n = strlen(text);
    return t.kind != T_EOF && t.end - t.at == n && memcmp(L->s + t.at, text, n) == 0;
}

static void blank(lx *L, size_t from, size_t to)
{
    for (size_t i = from; i < to && i < L->len; i++)
        if (L->s[i] != '\n' && L->s[i] != '\r')
            L->s[i] = ' ';
}

/* End of the balanced group that opens at p (one of ( { [ <), strings and comments skipped
   whole; in < > an arrow "->" is not a closing bracket. */
static size_t skip_group(lx *L, size_t p)
{
    char stack[MAX_TYPE_DEPTH];
    int depth = 0;
    tok t = lex_at(L, p);
    for (;;) {
        if (t.kind == T_EOF) {
            fail(L, p, "unbalanced brackets in a type annotation");
            return L->len;
        }
        if (t.kind == T_SYM && t.end - t.at == 1) {
            char c = L->s[t.at];
            if (c == '(' || c == '{' || c == '[' || c == '<') {
                if (depth >= MAX_TYPE_DEPTH) {
                    fail(L, t.at, "type annotation nested too deeply");
                    return L->len;
                }
                stack[depth++] = c == '(' ? ')' : c == '{' ? '}' : c == '[' ? ']' : '>';
            } else if (c == ')' || c == '}' || c == ']' || c == '>') {
                if (depth == 0 || stack[depth - 1] != c) {
                    fail(L, t.at, "unbalanced brackets in a type annotation");
                    return L->len;
                }
                if (--depth == 0)
                    return t.end;
            }
        } else if (t.kind == T_SYM && is(L, t, ">>") && depth >= 2 && stack[depth - 1] == '>' &&
                   stack[depth - 2] == '>') {
            depth -= 2; /* Map<K, List<V>> */
            if (depth == 0)
                return t.end;
        }
        t = lex_at(L, t.end);
    }
}

static size_t skip_type(lx *L, size_t p, int depth);

/* One type without | and &: returns its end, or fails. */
static size_t skip_primary(lx *L, size_t p, int depth)
{
    tok t = lex_at(L, p);
    size_t end;
    if (t.kind == T_NAME) {
        end = t.end;
        for (;;) { /* dotted names: errors.Error */
            tok d = lex_at(L, end);
            tok n = lex_at(L, d.end);
            if (is(L, d, ".") && n.kind == T_NAME)
                end = n.end;
            else
                break;
        }
        tok g = lex_at(L, end);
        if (is(L, g, "<"))
            end = skip_group(L, g.at);
        if (is(L, t, "function")) { /* function(a: T): R as a type */
            tok o = lex_at(L, end);
            if (is(L, o, "(")) {
                end = skip_group(L, o.at);
                tok c = lex_at(L, end);
                if (is(L, c, ":"))
                    end = skip_type(L, c.end, depth + 1);
            }
        }
    } else if (t.kind == T_STR || t.kind == T_NUM) {
        end = t.end;
    } else if (is(L, t, "-")) {
        tok n = lex_at(L, t.end);
        if (n.kind != T_NUM) {
            fail(L, t.at, "expected a type");
            return L->len;
        }
        end = n.end;
    } else if (is(L, t, "{") || is(L, t, "(")) {
        end = skip_group(L, t.at);
        tok a = lex_at(L, end);
        if (is(L, t, "(") && is(L, a, "->"))
            end = skip_type(L, a.end, depth + 1);
    } else if (is(L, t, "...")) {
        end = t.end;
        tok n = lex_at(L, end); /* ...T in a tuple */
        if (n.kind == T_NAME)
            end = skip_primary(L, n.at, depth + 1);
    } else {
        fail(L, t.at, "expected a type");
        return L->len;
    }
    /* postfix: T? and validators @min(0) */
    for (;;) {
        tok q = lex_at(L, end);
        if (is(L, q, "?")) {
            end = q.end;
        } else if (is(L, q, "@")) {
            tok n = lex_at(L, q.end);
            if (n.kind != T_NAME) {
                fail(L, q.at, "expected a validator name after @");
                return L->len;
            }
            end = n.end;
            tok o = lex_at(L, end);
            if (is(L, o, "("))
                end = skip_group(L, o.at);
        } else {
            return end;
        }
    }
}

static size_t skip_type(lx *L, size_t p, int depth)
{
    if (depth > MAX_TYPE_DEPTH) {
        fail(L, p, "type annotation nested too deeply");
        return L->len;
    }
    tok t = lex_at(L, p);
    if (is(L, t, "|") || is(L, t, "&"))
        p = t.end; /* a leading | before the first member */
    size_t end = skip_primary(L, p, depth);
    while (!L->failed) {
        tok op = lex_at(L, end);
        if (!is(L, op, "|") && !is(L, op, "&"))
            break;
        end = skip_primary(L, op.end, depth);
    }
    return end;
}

/* Blanks ": T" if the token at p is a colon; returns where scanning goes on. */
static size_t strip_colon_type(lx *L, size_t p)
{
    tok c = lex_at(L, p);
    if (!is(L, c, ":"))
        return p;
    size_t end = skip_type(L, c.end, 0);
    if (!L->failed)
        blank(L, c.at, end);
    return end;
}

/* Blanks a generic parameter list "<T, U: X>" if one opens at p. */
static size_t strip_generics(lx *L, size_t p)
{
    tok g = lex_at(L, p);
    if (!is(L, g, "<"))
        return p;
    size_t end = skip_group(L, g.at);
    if (!L->failed)
        blank(L, g.at, end);
    return end;
}

/* From just after `function` (and its name, if any): generics, typed parameters, return type.
   Returns where scanning goes on (the body). */
static size_t strip_funcbody(lx *L, size_t p)
{
    p = strip_generics(L, p);
    tok o = lex_at(L, p);
    if (!is(L, o, "("))
        return p; /* not a function definition we know: Lua will say */
    p = o.end;
    for (;;) {
        tok t = lex_at(L, p);
        if (t.kind == T_NAME || is(L, t, "...")) {
            p = strip_colon_type(L, t.end);
            if (L->failed)
                return L->len;
            tok sep = lex_at(L, p);
            if (is(L, sep, ",")) {
                p = sep.end;
                continue;
            }
            t = sep;
        }
        if (!is(L, t, ")"))
            return p; /* Lua reports the syntax error */
        p = t.end;
        break;
    }
    return strip_colon_type(L, p); /* return type */
}

/* After `local`: `function` or a list of names with attribs and types. */
static size_t strip_local(lx *L, size_t p)
{
    tok t = lex_at(L, p);
    if (is(L, t, "function")) {
        tok n = lex_at(L, t.end);
        return n.kind == T_NAME ? strip_funcbody(L, n.end) : t.end;
    }
    while (t.kind == T_NAME) {
        p = t.end;
        tok a = lex_at(L, p);
        if (is(L, a, "<")) { /* <const> / <close> */
            tok an = lex_at(L, a.end), ac = lex_at(L, an.end);
            if (an.kind == T_NAME && is(L, ac, ">"))
                p = ac.end;
        }
        p = strip_colon_type(L, p);
        if (L->failed)
            return L->len;
        tok sep = lex_at(L, p);
        if (!is(L, sep, ","))
            return p;
        t = lex_at(L, sep.end);
    }
    return p;
}

/* After `function` in a statement or expression. */
static size_t strip_function(lx *L, size_t p)
{
    tok t = lex_at(L, p);
    if (t.kind == T_NAME) { /* funcname: Name {'.' Name} [':' Name] */
        p = t.end;
        for (;;) {
            tok d = lex_at(L, p), n = lex_at(L, d.end);
            if ((is(L, d, ".") || is(L, d, ":")) && n.kind == T_NAME) {
                p = n.end;
                if (is(L, d, ":"))
                    break;
            } else {
                break;
            }
        }
    }
    return strip_funcbody(L, p);
}

/* After `for`: names with types up to `=` or `in`. */
static size_t strip_for(lx *L, size_t p)
{
    for (;;) {
        tok t = lex_at(L, p);
        if (t.kind != T_NAME)
            return p;
        p = strip_colon_type(L, t.end);
        if (L->failed)
            return L->len;
        tok sep = lex_at(L, p);
        if (!is(L, sep, ","))
            return p;
        p = sep.end;
    }
}

static int first_on_line(const lx *L, size_t at)
{
    while (at > 0 && (L->s[at - 1] == ' ' || L->s[at - 1] == '\t'))
        at--;
    return at == 0 || L->s[at - 1] == '\n' || L->s[at - 1] == ';';
}

static void remember(lx *L, tok name)
{
    size_t n = name.end - name.at;
    if (L->nnames >= MAX_TYPE_NAMES || n >= sizeof L->names[0])
        return;
    memcpy(L->names[L->nnames], L->s + name.at, n);
    L->names[L->nnames++][n] = '\0';
}

static int declared(const lx *L, tok name)
{
    size_t n = name.end - name.at;
    for (size_t i = 0; i < L->nnames; i++)
        if (strlen(L->names[i]) == n && memcmp(L->names[i], L->s + name.at, n) == 0)
            return 1;
    return 0;
}

/* `type Name<G> = T` at t (t is `type` or `export`); returns the end, or 0 when it is not a
   type declaration (then it is ordinary Lua: `type(x)`, `type = 1`). */
static size_t strip_typedecl(lx *L, tok t)
{
    size_t start = t.at;
    if (is(L, t, "export")) {
        t = lex_at(L, t.end);
        if (!is(L, t, "type"))
            return 0;
    }
    tok name = lex_at(L, t.end);
    if (name.kind != T_NAME)
        return 0;
    tok nx = lex_at(L, name.end);
    if (!is(L, nx, "=") && !is(L, nx, "<"))
        return 0;
    size_t p = name.end;
    if (is(L, nx, "<")) {
        p = skip_group(L, nx.at);
        nx = lex_at(L, p);
        if (L->failed || !is(L, nx, "="))
            return 0;
    }
    size_t end = skip_type(L, nx.end, 0);
    if (L->failed)
        return L->len;
    remember(L, name); /* before its bytes are blanked */
    blank(L, start, end);
    return end;
}

static int expr_end(const lx *L, tok t)
{
    if (t.kind == T_NUM || t.kind == T_STR)
        return 1;
    if (t.kind == T_NAME) {
        static const char *const kw[] = {"and", "or", "not", "local", "return", "then", "do",
                                         "else", "elseif", "if", "while", "until", "in", "for",
                                         "function", "repeat", "goto", NULL};
        for (size_t i = 0; kw[i]; i++)
            if (is(L, t, kw[i]))
                return 0;
        return 1;
    }
    return is(L, t, ")") || is(L, t, "]") || is(L, t, "}");
}

static int same_line(const lx *L, size_t a, size_t b)
{
    for (size_t i = a; i < b; i++)
        if (L->s[i] == '\n')
            return 0;
    return 1;
}

int rl_lua_strip_types(char *src, size_t len, char *err, size_t errlen)
{
    lx *L = calloc(1, sizeof *L);
    if (!L) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    L->s = src;
    L->len = len;
    L->err = err;
    L->errlen = errlen;
    tok prev = {T_EOF, 0, 0};
    size_t p = 0;
    while (!L->failed) {
        tok t = lex_at(L, p);
        if (t.kind == T_EOF)
            break;
        p = t.end;
        int dot_before = is(L, prev, ".") || is(L, prev, ":");
        if (t.kind == T_NAME && !dot_before) {
            if (is(L, t, "local")) {
                p = strip_local(L, t.end);
            } else if (is(L, t, "function")) {
                p = strip_function(L, t.end);
            } else if (is(L, t, "for")) {
                p = strip_for(L, t.end);
            } else if ((is(L, t, "type") || is(L, t, "export")) && first_on_line(L, t.at)) {
                size_t e = strip_typedecl(L, t);
                if (e)
                    p = e;
            } else if (is(L, t, "as") && expr_end(L, prev) && same_line(L, prev.end, t.at)) {
                tok n = lex_at(L, t.end);
                if ((n.kind == T_NAME || is(L, n, "{")) && same_line(L, t.end, n.at)) {
                    size_t e = skip_type(L, n.at, 0);
                    if (!L->failed)
                        blank(L, t.at, e);
                    p = e;
                }
            } else if (is(L, t, "typeof") && is(L, lex_at(L, t.end), "(")) {
                fail(L, t.at, "typeof() needs the platform's runtime types, which this host "
                              "does not have");
            } else if (declared(L, t)) {
                tok n = lex_at(L, t.end);
                if (is(L, n, "(") || is(L, n, ":"))
                    fail(L, t.at, "a declared type is used as a value (a runtime type check or "
                                  "cast); this host strips types and has no runtime types");
            }
        } else if (is(L, t, "::")) {
            tok n = lex_at(L, t.end), c = lex_at(L, n.end);
            if (n.kind == T_NAME && is(L, c, "::")) {
                p = c.end; /* a goto label */
            } else {
                size_t e = skip_type(L, t.end, 0);
                if (!L->failed)
                    blank(L, t.at, e);
                p = e;
            }
        } else if (is(L, t, "!") && !is(L, lex_at(L, t.end), "=")) {
            blank(L, t.at, t.end); /* x! : the non-nil assertion */
        }
        prev = lex_at(L, t.at);
        if (p > t.end) /* something was stripped: the last token before p is what precedes */
            prev = (tok){T_SYM, p, p};
    }
    int rc = L->failed ? -1 : 0;
    free(L);
    return rc;
}
