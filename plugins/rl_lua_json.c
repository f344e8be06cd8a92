/* The json module of the Lua plugin host: Lua values <-> JSON text.
 *
 * Encoding (own writer, so the rules are ours): nil -> null; an empty table -> []; a table
 * whose keys are exactly 1..n -> array; a table with only string keys -> object with keys in
 * byte order (deterministic output); mixed or sparse keys, NaN/inf, functions, userdata and
 * nesting deeper than RL_LUA_JSON_DEPTH (which also catches cycles) are errors. Invalid UTF-8
 * in strings becomes U+FFFD, as Go's encoder does. Decoding uses cJSON; JSON null decodes to
 * nil, integral numbers to Lua integers. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_lua_int.h"

#define JBUF_MT "rl.jsonbuf"
#define JTREE_MT "rl.jsontree"

typedef struct jbuf {
    char *p;
    size_t len, cap;
} jbuf;

static void jb_free(lua_State *L, jbuf *b)
{
    if (b->p) {
        void *ud;
        lua_Alloc f = lua_getallocf(L, &ud);
        f(ud, b->p, b->cap, 0);
        b->p = NULL;
        b->cap = b->len = 0;
    }
}

static int jbuf_gc(lua_State *L)
{
    jb_free(L, lua_touserdata(L, 1));
    return 0;
}

/* The buffer lives in Lua memory (counted against the cap) and is freed by the collector if an
   error interrupts encoding. */
static void jb_reserve(lua_State *L, jbuf *b, size_t more)
{
    if (b->len + more <= b->cap)
        return;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + more)
        ncap *= 2;
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    char *np = f(ud, b->p, b->p ? b->cap : 0, ncap);
    if (!np)
        luaL_error(L, "not enough memory");
    b->p = np;
    b->cap = ncap;
}

static void jb_add(lua_State *L, jbuf *b, const char *s, size_t n)
{
    jb_reserve(L, b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void jb_addc(lua_State *L, jbuf *b, char c)
{
    jb_reserve(L, b, 1);
    b->p[b->len++] = c;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t k;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    unsigned cp = c & (0x3f >> (k - 1));
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

static void put_string(lua_State *L, jbuf *b, const char *s, size_t n)
{
    jb_reserve(L, b, n + 2);
    jb_addc(L, b, '"');
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            jb_add(L, b, e, 2);
            i++;
        } else if (c < 0x20) {
            char e[8];
            const char *m = c == '\n' ? "\\n" : c == '\r' ? "\\r" : c == '\t' ? "\\t" : NULL;
            if (m)
                jb_add(L, b, m, 2);
            else
                jb_add(L, b, e, (size_t)snprintf(e, sizeof e, "\\u%04x", c));
            i++;
        } else {
            size_t k = utf8_len(u + i, n - i);
            if (k == 0) {
                jb_add(L, b, "\\ufffd", 6);
                i++;
            } else {
                jb_add(L, b, s + i, k);
                i += k;
            }
        }
    }
    jb_addc(L, b, '"');
}

typedef struct skey {
    const char *s;
    size_t n;
} skey;

/* Lua tables keep no key order, so objects come out in a fixed one: the keys that say what a
   message is ("type", then "topic") first, as people write them, then the rest sorted by bytes.
   So the spec's example plugin sends exactly {"type":"session_state","data":{...}}. */
static int skey_rank(const skey *k)
{
    if (k->n == 4 && memcmp(k->s, "type", 4) == 0)
        return 0;
    if (k->n == 5 && memcmp(k->s, "topic", 5) == 0)
        return 1;
    return 2;
}

static int skey_cmp(const void *a, const void *b)
{
    const skey *x = a, *y = b;
    int rx = skey_rank(x), ry = skey_rank(y);
    if (rx != ry)
        return rx - ry;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static const char *encode(lua_State *L, jbuf *b, int idx, int depth);

static const char *encode_table(lua_State *L, jbuf *b, int idx, int depth)
{
    if (depth >= RL_LUA_JSON_DEPTH)
        return "nested too deep (or a cycle)";
    if (!lua_checkstack(L, 6))
        return "nested too deep";
    size_t n = 0, nint = 0, nstr = 0;
    lua_Integer maxk = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n++;
        if (lua_type(L, -2) == LUA_TSTRING) {
            nstr++;
        } else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1) {
            nint++;
            if (lua_tointeger(L, -2) > maxk)
                maxk = lua_tointeger(L, -2);
        } else {
            lua_pop(L, 2);
            return "table keys must be strings or a sequence 1..n";
        }
        lua_pop(L, 1);
    }
    if (n == 0) {
        jb_add(L, b, "[]", 2);
        return NULL;
    }
    if (nint == n) {
        if ((size_t)maxk != n)
            return "sparse array";
        jb_addc(L, b, '[');
        for (size_t i = 1; i <= n; i++) {
            if (i > 1)
                jb_addc(L, b, ',');
            lua_rawgeti(L, idx, (lua_Integer)i);
            const char *e = encode(L, b, lua_gettop(L), depth + 1);
            lua_pop(L, 1);
            if (e)
                return e;
        }
        jb_addc(L, b, ']');
        return NULL;
    }
    if (nstr != n)
        return "table mixes string keys and array items";
    skey *keys = lua_newuserdatauv(L, n * sizeof *keys, 0); /* collected if we raise */
    size_t k = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        keys[k].s = lua_tolstring(L, -2, &keys[k].n); /* a string key: no conversion */
        k++;
        lua_pop(L, 1);
    }
    qsort(keys, n, sizeof *keys, skey_cmp);
    jb_addc(L, b, '{');
    for (size_t i = 0; i < n; i++) {
        if (i)
            jb_addc(L, b, ',');
        put_string(L, b, keys[i].s, keys[i].n);
        jb_addc(L, b, ':');
        lua_pushlstring(L, keys[i].s, keys[i].n);
        lua_rawget(L, idx);
        const char *e = encode(L, b, lua_gettop(L), depth + 1);
        lua_pop(L, 1);
        if (e) {
            lua_pop(L, 1);
            return e;
        }
    }
    lua_pop(L, 1);
    jb_addc(L, b, '}');
    return NULL;
}

static const char *encode(lua_State *L, jbuf *b, int idx, int depth)
{
    char num[64];
    switch (lua_type(L, idx)) {
    case LUA_TNIL: jb_add(L, b, "null", 4); return NULL;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            jb_add(L, b, "true", 4);
        else
            jb_add(L, b, "false", 5);
        return NULL;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            jb_add(L, b, num, (size_t)snprintf(num, sizeof num, "%lld",
                                               (long long)lua_tointeger(L, idx)));
        } else {
            double d = (double)lua_tonumber(L, idx);
            if (!isfinite(d))
                return "cannot encode NaN or infinity";
            int n = snprintf(num, sizeof num, "%.15g", d);
            if (strtod(num, NULL) != d)
                n = snprintf(num, sizeof num, "%.17g", d);
            jb_add(L, b, num, (size_t)n);
        }
        return NULL;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        put_string(L, b, s, n);
        return NULL;
    }
    case LUA_TTABLE: return encode_table(L, b, idx, depth);
    default: return lua_typename(L, lua_type(L, idx));
    }
}

int rl_lua_json_encode(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    jbuf *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    luaL_setmetatable(L, JBUF_MT);
    int top = lua_gettop(L);
    const char *e = encode(L, b, idx, 0);
    lua_settop(L, top);
    if (e) {
        if (strchr(e, ' '))
            lua_pushfstring(L, "json: %s", e);
        else
            lua_pushfstring(L, "json: cannot encode a %s value", e);
    } else {
        lua_pushlstring(L, b->p ? b->p : "", b->len);
    }
    jb_free(L, b); /* at once, rather than when the collector gets to the userdata */
    lua_remove(L, top);
    return e == NULL;
}

/* ---- decoding -------------------------------------------------------------------------- */

static int push_json(lua_State *L, const cJSON *j, int depth)
{
    if (depth >= RL_LUA_JSON_DEPTH)
        return -1;
    luaL_checkstack(L, 4, "json");
    if (cJSON_IsNull(j) || cJSON_IsInvalid(j)) {
        lua_pushnil(L);
    } else if (cJSON_IsBool(j)) {
        lua_pushboolean(L, cJSON_IsTrue(j));
    } else if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        if (d == floor(d) && fabs(d) < 9.2e18)
            lua_pushinteger(L, (lua_Integer)d);
        else
            lua_pushnumber(L, d);
    } else if (cJSON_IsString(j)) {
        lua_pushstring(L, j->valuestring);
    } else if (cJSON_IsArray(j)) {
        lua_createtable(L, cJSON_GetArraySize(j), 0);
        lua_Integer i = 1;
        for (const cJSON *c = j->child; c; c = c->next, i++) {
            if (push_json(L, c, depth + 1) < 0)
                return -1;
            lua_rawseti(L, -2, i);
        }
    } else if (cJSON_IsObject(j)) {
        lua_createtable(L, 0, 4);
        for (const cJSON *c = j->child; c; c = c->next) {
            lua_pushstring(L, c->string ? c->string : "");
            lua_pushvalue(L, -1);
            if (lua_rawget(L, -3) != LUA_TNIL) { /* a repeated key: the first value wins, as */
                lua_pop(L, 2);                   /* in the hub, which routes on the first "type" */
                continue;
            }
            lua_pop(L, 1);
            if (push_json(L, c, depth + 1) < 0)
                return -1;
            lua_rawset(L, -3);
        }
    } else {
        lua_pushnil(L);
    }
    return 0;
}

static int jtree_gc(lua_State *L)
{
    cJSON **t = lua_touserdata(L, 1);
    cJSON_Delete(*t);
    *t = NULL;
    return 0;
}

int rl_lua_json_decode(lua_State *L, const char *s, size_t len)
{
    /* The tree is held by a userdata so that an error raised while building Lua values (out of
       memory) does not leak it. */
    cJSON **t = lua_newuserdatauv(L, sizeof *t, 0);
    *t = NULL;
    luaL_setmetatable(L, JTREE_MT);
    int top = lua_gettop(L);
    const char *end = NULL;
    *t = cJSON_ParseWithLengthOpts(s, len + 1, &end, 1); /* s[len] is the NUL */
    if (!*t || end != s + len) {
        size_t off = *t ? (size_t)(end - s) : (end ? (size_t)(end - s) : 0);
        cJSON_Delete(*t);
        *t = NULL;
        lua_pop(L, 1);
        lua_pushfstring(L, "json: invalid JSON near byte %d", (int)off);
        return 0;
    }
    if (push_json(L, *t, 0) < 0) {
        cJSON_Delete(*t);
        *t = NULL;
        lua_settop(L, top - 1);
        lua_pushstring(L, "json: nested too deep");
        return 0;
    }
    cJSON_Delete(*t);
    *t = NULL;
    lua_remove(L, top);
    return 1;
}

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    if (rl_lua_json_encode(L, 1))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (rl_lua_json_decode(L, s, len))
        return 1;
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

void rl_lua_json_open(lua_State *L)
{
    static const luaL_Reg jbuf_meta[] = {{"__gc", jbuf_gc}, {NULL, NULL}};
    static const luaL_Reg jtree_meta[] = {{"__gc", jtree_gc}, {NULL, NULL}};
    rl_lua_new_class(L, JBUF_MT, NULL, jbuf_meta);
    rl_lua_new_class(L, JTREE_MT, NULL, jtree_meta);
    static const luaL_Reg fns[] = {{"encode", l_encode}, {"decode", l_decode}, {NULL, NULL}};
    luaL_newlib(L, fns);
}
