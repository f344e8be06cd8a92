/* The http module of the Lua plugin host (require("http_client"), also require("http")): the
 * platform's HTTP client names on core's rl_http_client, to destinations on the node's allow
 * list only.
 *
 *   http.request(method, url, opts?)  or  http.request{method=, url=, headers=, body=, timeout=}
 *   http.get/post/put/patch/delete/head(url, opts?)
 *   http.request_batch({{method, url, opts?}, ...})  -> responses, errors (nil when none failed)
 *
 * A call blocks the calling coroutine (it yields to the node's loop, like time.sleep) and returns
 * a response {status_code, body, body_size, headers, url} or nil, err. opts: headers (table),
 * body (string), query (table, appended to the URL), timeout (seconds, or a duration string like
 * "500ms"; at most http.timeout), max_response_body (bytes; at most http.max_response_bytes).
 *
 * Ownership: a call's C state (http_call) lives on the module's list from its start until its
 * continuation has built the results, and is freed there; an instance that ends first (crash,
 * limit, cancel, shutdown) has its calls cancelled and freed by rl_lua_http_release, so no
 * callback reaches a freed instance. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rl_http_client.h"
#include "rl_lua_int.h"
#include "rl_urlmatch.h"

#define HTTP_HEADER_LINE_MAX 8192 /* bytes of one request header line */

typedef struct http_one {
    struct http_call *call;
    rl_hc_req *req; /* NULL once finished (or never started) */
    int status;
    char *error; /* NULL on success */
    char *body, *headers, *url;
    size_t body_len, headers_len;
} http_one;

typedef struct http_call {
    struct http_call *prev, *next; /* calls */
    rl_lua_inst *inst;
    size_t n, left;
    int batch;
    http_one one[];
} http_call;

/* One request as read from Lua: every pointer is into a Lua string anchored on the stack. */
typedef struct http_spec {
    const char *method, *url, *body;
    size_t body_len;
    const char **hdrs; /* "Name: value" */
    size_t nhdrs;
    uint64_t timeout_ms;
    size_t max_response;
} http_spec;

static http_call *calls;

static void call_unlink(http_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void call_free(http_call *c)
{
    call_unlink(c);
    for (size_t i = 0; i < c->n; i++) {
        http_one *o = &c->one[i];
        rl_hc_cancel(o->req);
        free(o->error);
        free(o->body);
        free(o->headers);
        free(o->url);
    }
    free(c);
}

void rl_lua_http_release(rl_lua_inst *I)
{
    for (http_call *c = calls, *next; c; c = next) {
        next = c->next;
        if (c->inst == I)
            call_free(c);
    }
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static void one_fail(http_one *o, const char *fmt, const char *arg)
{
    char buf[512];
    snprintf(buf, sizeof buf, fmt, arg);
    free(o->error);
    o->error = strdup(buf); /* NULL (OOM) is answered as "out of memory" */
}

static void one_done(http_one *o)
{
    http_call *c = o->call;
    o->req = NULL;
    if (--c->left == 0 && c->inst)
        rl_lua_wake(c->inst);
}

/* rl_hc callback: keeps what the continuation needs in C memory (the Lua state is not ours to
   allocate in outside the instance's resume). */
static void on_result(void *ud, const rl_hc_result *r)
{
    http_one *o = ud;
    if (r->status) {
        o->status = r->status;
        o->body = dup_n(r->body, r->body_len);
        o->headers = dup_n(r->headers, r->headers_len);
        o->body_len = r->body_len;
        o->headers_len = r->headers_len;
        if (!o->body || !o->headers)
            one_fail(o, "%s", "out of memory");
    } else {
        one_fail(o, r->fail == RL_HC_F_TIMEOUT     ? "timeout%s"
                    : r->fail == RL_HC_F_TOO_LARGE ? "response too large%s"
                                                   : "request failed: %s",
                 r->fail == RL_HC_F_TIMEOUT || r->fail == RL_HC_F_TOO_LARGE ? "" : r->error);
    }
    one_done(o);
}

/* ---- reading a request from Lua -------------------------------------------------------------- */

/* 1 when ch is one of set's characters (never for NUL, which strchr would find). */
static int in_set(unsigned char ch, const char *set) { return ch && strchr(set, ch) != NULL; }

static int token_ok(const char *s, size_t n)
{
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !in_set((unsigned char)s[i], "!#$%&'*+-.^_`|~"))
            return 0;
    return 1;
}

/* Headers curl manages itself, or that would change what the request means to the server. */
static int header_reserved(const char *name)
{
    static const char *const names[] = {"host", "content-length", "transfer-encoding",
                                        "connection", "expect", "upgrade", "te", NULL};
    for (int i = 0; names[i]; i++)
        if (strcasecmp(names[i], name) == 0)
            return 1;
    return 0;
}

/* Timeout option: seconds (a number, as on the platform) or a duration string. */
static uint64_t timeout_arg(lua_State *L, int idx, uint64_t max_ms)
{
    double ms;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        ms = (double)lua_tonumber(L, idx) * 1000.0;
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        double ns;
        if (rl_lua_duration_parse(lua_tostring(L, idx), &ns) < 0)
            luaL_error(L, "http: invalid timeout '%s'", lua_tostring(L, idx));
        ms = ns / 1e6;
    } else {
        luaL_error(L, "http: timeout must be seconds or a duration string");
        return 0;
    }
    if (!(ms > 0))
        luaL_error(L, "http: timeout must be positive");
    ms = ceil(ms);
    return ms >= (double)max_ms ? max_ms : (uint64_t)ms;
}

/* Pushes s[0..n) percent-encoded (RFC 3986 unreserved characters stay). */
static void push_encoded(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (isalnum(ch) || in_set(ch, "-._~")) {
            luaL_addchar(&b, (char)ch);
        } else {
            char hex[4];
            snprintf(hex, sizeof hex, "%%%02X", ch);
            luaL_addlstring(&b, hex, 3);
        }
    }
    luaL_pushresult(&b);
}

/* Appends opts.query (table at qidx) to the URL at uidx: pushes the new URL string. */
static void push_query_url(lua_State *L, int uidx, int qidx)
{
    int first = !strchr(lua_tostring(L, uidx), '?');
    lua_pushvalue(L, uidx);
    int acc = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, qidx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
            luaL_error(L, "http: query keys and values must be strings");
        size_t kl, vl;
        const char *k = lua_tolstring(L, -2, &kl), *v = lua_tolstring(L, -1, &vl);
        lua_pushvalue(L, acc);
        lua_pushstring(L, first ? "?" : "&");
        push_encoded(L, k, kl);
        lua_pushliteral(L, "=");
        push_encoded(L, v, vl);
        lua_concat(L, 5);
        lua_replace(L, acc);
        lua_pop(L, 1);
        first = 0;
    }
}

/* Reads the request (method at midx, url at uidx, options table at oidx or 0) into sp. Values
   it makes are anchored in the table at aidx. Raises on a bad argument. */
static void spec_read(lua_State *L, int midx, int uidx, int oidx, int aidx, http_spec *sp)
{
    const rl_config *cfg = rl_lua_g.cfg;
    memset(sp, 0, sizeof *sp);
    sp->timeout_ms = cfg->http_timeout_ms;
    sp->max_response = cfg->http_max_response;
    size_t mlen;
    const char *m = luaL_checklstring(L, midx, &mlen);
    if (!token_ok(m, mlen) || mlen > 32)
        luaL_error(L, "http: bad method");
    char up[33];
    for (size_t i = 0; i < mlen; i++)
        up[i] = (char)toupper((unsigned char)m[i]);
    up[mlen] = '\0';
    lua_pushstring(L, up);
    sp->method = lua_tostring(L, -1);
    luaL_ref(L, aidx); /* anchored */
    luaL_checkstring(L, uidx);
    if (oidx) {
        lua_pushnil(L);
        while (lua_next(L, oidx)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "http: option names must be strings");
            const char *k = lua_tostring(L, -2);
            if (strcmp(k, "method") && strcmp(k, "url") && strcmp(k, "headers") &&
                strcmp(k, "body") && strcmp(k, "timeout") && strcmp(k, "query") &&
                strcmp(k, "max_response_body"))
                luaL_error(L, "http: option '%s' is not supported", k);
            lua_pop(L, 1);
        }
        if (lua_getfield(L, oidx, "query") != LUA_TNIL) {
            luaL_checktype(L, -1, LUA_TTABLE);
            push_query_url(L, uidx, lua_gettop(L));
            lua_remove(L, -2);
        } else {
            lua_pop(L, 1);
            lua_pushvalue(L, uidx);
        }
    } else {
        lua_pushvalue(L, uidx);
    }
    size_t ulen;
    sp->url = lua_tolstring(L, -1, &ulen);
    if (memchr(sp->url, '\0', ulen))
        luaL_error(L, "http: the URL holds a NUL byte");
    luaL_ref(L, aidx);
    if (!oidx)
        return;
    if (lua_getfield(L, oidx, "body") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "http: body must be a string");
        sp->body = lua_tolstring(L, -1, &sp->body_len);
        if (sp->body_len > cfg->http_max_request)
            luaL_error(L, "http: body over http.max_request_bytes (%d)", (int)cfg->http_max_request);
        luaL_ref(L, aidx);
    } else {
        lua_pop(L, 1);
    }
    if (lua_getfield(L, oidx, "timeout") != LUA_TNIL)
        sp->timeout_ms = timeout_arg(L, -1, cfg->http_timeout_ms);
    lua_pop(L, 1);
    if (lua_getfield(L, oidx, "max_response_body") != LUA_TNIL) {
        lua_Integer v = luaL_checkinteger(L, -1);
        if (v < 0)
            luaL_error(L, "http: max_response_body must not be negative");
        if (v > 0 && (uint64_t)v < sp->max_response)
            sp->max_response = (size_t)v;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, oidx, "headers") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        int h = lua_gettop(L);
        size_t cnt = 0;
        lua_pushnil(L);
        while (lua_next(L, h)) {
            cnt++;
            lua_pop(L, 1);
        }
        if (cnt > RL_HC_REQ_HEADERS_MAX)
            luaL_error(L, "http: more than %d headers", RL_HC_REQ_HEADERS_MAX);
        sp->hdrs = lua_newuserdatauv(L, (cnt ? cnt : 1) * sizeof *sp->hdrs, 0);
        luaL_ref(L, aidx);
        lua_pushnil(L);
        while (lua_next(L, h)) {
            size_t nl, vl;
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
                luaL_error(L, "http: header names and values must be strings");
            const char *name = lua_tolstring(L, -2, &nl);
            const char *val = lua_tolstring(L, -1, &vl);
            if (!token_ok(name, nl))
                luaL_error(L, "http: bad header name");
            if (header_reserved(name))
                luaL_error(L, "http: header '%s' is set by the node", name);
            for (size_t i = 0; i < vl; i++)
                if (val[i] == '\r' || val[i] == '\n' || val[i] == '\0')
                    luaL_error(L, "http: header '%s' has a line break or NUL", name);
            if (nl + vl + 2 > HTTP_HEADER_LINE_MAX)
                luaL_error(L, "http: header '%s' too long", name);
            /* an empty value is sent as "Name;" (curl's way) */
            lua_pushfstring(L, vl ? "%s: %s" : "%s;", name, val);
            sp->hdrs[sp->nhdrs++] = lua_tostring(L, -1);
            luaL_ref(L, aidx);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

/* Starts sp as o (never raises): a refused destination or a busy node finishes o at once. */
static void one_start(http_one *o, const http_spec *sp)
{
    const rl_config *cfg = rl_lua_g.cfg;
    char why[256];
    char *canon = NULL;
    int rc = rl_url_check((const char *const *)cfg->http_allow, cfg->nhttp_allow, sp->url, &canon,
                          why, sizeof why);
    if (rc < 0) {
        if (rc == -EACCES)
            rl_hc_count_refused(RL_HC_PLUGIN, RL_HC_F_NOT_ALLOWED);
        one_fail(o, rc == -EACCES ? "not allowed: %s" : "invalid URL: %s", why);
        one_done(o);
        return;
    }
    rl_hc_opts ho = {
        .kind = RL_HC_PLUGIN,
        .method = sp->method,
        .url = canon,
        .headers = sp->hdrs,
        .nheaders = sp->nhdrs,
        .body = sp->body,
        .body_len = sp->body_len,
        .timeout_ms = sp->timeout_ms,
        .max_response = sp->max_response,
    };
    o->url = canon;
    rc = rl_hc_start(&ho, on_result, o, &o->req);
    if (rc < 0) {
        one_fail(o, rc == -EAGAIN ? "busy: %s" : "request failed: %s",
                 rc == -EAGAIN ? "too many requests in flight on this node "
                                 "(http.max_concurrent_node)"
                 : rc == -ENOMEM ? "out of memory"
                                 : "invalid request");
        one_done(o);
    }
}

/* ---- results ------------------------------------------------------------------------------ */

/* Go's canonical header key: "content-type" -> "Content-Type". */
static void push_canon_name(lua_State *L, const char *s, size_t n)
{
    char buf[256];
    if (n >= sizeof buf)
        n = sizeof buf - 1;
    int up = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = (char)(up ? toupper(ch) : tolower(ch));
        up = ch == '-';
    }
    lua_pushlstring(L, buf, n);
}

/* Pushes the header table of a raw block: a repeated name gets its values joined with ", ". */
static void push_headers(lua_State *L, const char *h, size_t len)
{
    lua_newtable(L);
    int t = lua_gettop(L);
    size_t i = 0;
    while (i < len) {
        size_t ls = i, le = i; /* the line [ls, le), without its CR LF */
        while (le < len && h[le] != '\n')
            le++;
        i = le < len ? le + 1 : len;
        if (le > ls && h[le - 1] == '\r')
            le--;
        size_t colon = ls;
        while (colon < le && h[colon] != ':')
            colon++;
        if (colon == le || colon == ls || (le - ls >= 5 && memcmp(h + ls, "HTTP/", 5) == 0))
            continue; /* the status line, a blank line, or not a header */
        size_t v = colon + 1, ve = le;
        while (v < ve && (h[v] == ' ' || h[v] == '\t'))
            v++;
        while (ve > v && (h[ve - 1] == ' ' || h[ve - 1] == '\t'))
            ve--;
        push_canon_name(L, h + ls, colon - ls);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, t) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h + v, ve - v);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h + v, ve - v);
        }
        lua_rawset(L, t);
    }
}

/* Pushes o's response table, or nil and the error; returns 2. */
static int push_one(lua_State *L, const http_one *o)
{
    if (o->error || !o->status) {
        lua_pushnil(L);
        lua_pushstring(L, o->error ? o->error : "out of memory");
        return 2;
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, o->status);
    lua_setfield(L, -2, "status_code");
    lua_pushlstring(L, o->body, o->body_len);
    lua_setfield(L, -2, "body");
    lua_pushinteger(L, (lua_Integer)o->body_len);
    lua_setfield(L, -2, "body_size");
    push_headers(L, o->headers, o->headers_len);
    lua_setfield(L, -2, "headers");
    lua_pushstring(L, o->url ? o->url : "");
    lua_setfield(L, -2, "url");
    lua_pushnil(L);
    return 2;
}

static int call_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    http_call *c = (http_call *)ctx;
    if (c->left) /* woken by something else: keep waiting */
        return rl_lua_block(L, c->inst, ctx, call_k);
    if (!c->batch) {
        push_one(L, &c->one[0]);
        call_free(c);
        return 2;
    }
    int failed = 0;
    lua_createtable(L, (int)c->n, 0);
    lua_createtable(L, (int)c->n, 0);
    for (size_t i = 0; i < c->n; i++) {
        push_one(L, &c->one[i]); /* response|nil, nil|err */
        if (!lua_isnil(L, -1)) {
            failed = 1;
            lua_rawseti(L, -3, (lua_Integer)i + 1);
            lua_pop(L, 1);
        } else {
            lua_pop(L, 1);
            lua_rawseti(L, -3, (lua_Integer)i + 1);
        }
    }
    call_free(c);
    if (!failed) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
    return 2;
}

/* Reads n specs (already in sp), starts them and blocks until all are done. */
static int call_run(lua_State *L, rl_lua_inst *I, const http_spec *sp, size_t n, int batch)
{
    http_call *c = calloc(1, sizeof *c + n * sizeof c->one[0]);
    if (!c)
        return luaL_error(L, "not enough memory");
    c->inst = I;
    c->n = c->left = n;
    c->batch = batch;
    c->next = calls;
    if (c->next)
        c->next->prev = c;
    calls = c;
    for (size_t i = 0; i < n; i++) {
        c->one[i].call = c;
        one_start(&c->one[i], &sp[i]);
    }
    if (!c->left)
        return call_k(L, LUA_OK, (lua_KContext)c);
    return rl_lua_block(L, I, (lua_KContext)c, call_k);
}

/* ---- Lua functions ------------------------------------------------------------------------ */

/* Checks L may block; leaves exactly nargs arguments and the anchor table (of every string the
   specs point into) above them, at nargs + 1. */
static rl_lua_inst *http_enter(lua_State *L, int nargs)
{
    rl_lua_inst *I = rl_lua_running(L); /* the instance, or its coroutine.spawn task */
    rl_lua_check_block(L, I);
    lua_settop(L, nargs);
    lua_newtable(L);
    return I;
}

/* request(method, url, opts?) or request{method=, url=, ...} */
static int l_request(lua_State *L)
{
    rl_lua_inst *I = http_enter(L, 3);
    int a = lua_gettop(L);
    http_spec sp;
    if (lua_type(L, 1) == LUA_TTABLE) {
        lua_getfield(L, 1, "method");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushliteral(L, "GET");
        }
        int m = lua_gettop(L);
        lua_getfield(L, 1, "url");
        spec_read(L, m, m + 1, 1, a, &sp);
    } else {
        if (!lua_isnoneornil(L, 3))
            luaL_checktype(L, 3, LUA_TTABLE);
        spec_read(L, 1, 2, lua_istable(L, 3) ? 3 : 0, a, &sp);
    }
    return call_run(L, I, &sp, 1, 0);
}

static int method_call(lua_State *L, const char *method)
{
    rl_lua_inst *I = http_enter(L, 2);
    int a = lua_gettop(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushstring(L, method);
    http_spec sp;
    spec_read(L, a + 1, 1, lua_istable(L, 2) ? 2 : 0, a, &sp);
    return call_run(L, I, &sp, 1, 0);
}

static int l_get(lua_State *L) { return method_call(L, "GET"); }
static int l_post(lua_State *L) { return method_call(L, "POST"); }
static int l_put(lua_State *L) { return method_call(L, "PUT"); }
static int l_patch(lua_State *L) { return method_call(L, "PATCH"); }
static int l_delete(lua_State *L) { return method_call(L, "DELETE"); }
static int l_head(lua_State *L) { return method_call(L, "HEAD"); }

/* request_batch({{method, url, opts?}, ...}): concurrently, at most http.max_concurrent. */
static int l_request_batch(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    rl_lua_inst *I = http_enter(L, 1);
    int a = lua_gettop(L);
    size_t n = (size_t)lua_rawlen(L, 1), max = rl_lua_g.cfg->http_max_per_instance;
    if (n == 0)
        return luaL_error(L, "http: request_batch needs at least one request");
    if (n > max) {
        rl_hc_count_refused(RL_HC_PLUGIN, RL_HC_F_BUSY);
        lua_pushnil(L);
        lua_pushfstring(L, "busy: %d requests at once, over http.max_concurrent (%d)", (int)n,
                        (int)max);
        return 2;
    }
    http_spec *sp = lua_newuserdatauv(L, n * sizeof *sp, 0);
    luaL_ref(L, a);
    for (size_t i = 0; i < n; i++) {
        if (lua_rawgeti(L, 1, (lua_Integer)i + 1) != LUA_TTABLE)
            return luaL_error(L, "http: request %d is not a table {method, url, opts?}", (int)i + 1);
        int t = lua_gettop(L);
        lua_rawgeti(L, t, 1);
        lua_rawgeti(L, t, 2);
        lua_rawgeti(L, t, 3);
        if (!lua_isnil(L, -1))
            luaL_checktype(L, -1, LUA_TTABLE);
        spec_read(L, t + 1, t + 2, lua_istable(L, t + 3) ? t + 3 : 0, a, &sp[i]);
        lua_settop(L, a);
    }
    return call_run(L, I, sp, n, 1);
}

/* encode_uri(s): query escaping as Go's url.QueryEscape (space -> "+", RFC 3986 unreserved kept,
   the rest %XX), as on the platform. Charged one instruction per 16 bytes. */
static int l_encode_uri(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    rl_lua_charge(L, n / 16);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (isalnum(ch) || in_set(ch, "-._~")) {
            luaL_addchar(&b, (char)ch);
        } else if (ch == ' ') {
            luaL_addchar(&b, '+');
        } else {
            char hex[4];
            snprintf(hex, sizeof hex, "%%%02X", ch);
            luaL_addlstring(&b, hex, 3);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                      : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* decode_uri(s): the reverse ("+" -> space); nil, "invalid URL escape" on a bad %. */
static int l_decode_uri(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    rl_lua_charge(L, n / 16);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            luaL_addchar(&b, ' ');
        } else if (s[i] == '%') {
            int hi = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int lo = hi >= 0 ? hexval((unsigned char)s[i + 2]) : -1;
            if (lo < 0) {
                luaL_pushresult(&b);
                lua_pop(L, 1);
                lua_pushnil(L);
                const char *bad = lua_pushlstring(L, s + i, n - i < 3 ? n - i : 3);
                lua_pushfstring(L, "invalid URL escape \"%s\"", bad);
                lua_remove(L, -2);
                return 2;
            }
            luaL_addchar(&b, (char)(hi * 16 + lo));
            i += 2;
        } else {
            luaL_addchar(&b, s[i]);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

void rl_lua_http_push(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"request", l_request}, {"request_batch", l_request_batch},
        {"get", l_get},         {"post", l_post},
        {"put", l_put},         {"patch", l_patch},
        {"delete", l_delete},   {"head", l_head},
        {"encode_uri", l_encode_uri}, {"decode_uri", l_decode_uri},
        {NULL, NULL},
    };
    rl_hc_set_limit(rl_lua_g.cfg->http_max_node);
    luaL_newlib(L, fns);
}
