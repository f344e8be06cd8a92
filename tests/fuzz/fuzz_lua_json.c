/* libFuzzer target for the Lua host's json module: rl_lua_json_decode on arbitrary bytes in a
   bare lua_State (no host, no loop), then encode/decode round trips compared value by value. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rl_json.h"
#include "rl_lua_int.h"

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    L = luaL_newstate();
    FUZZ_CHECK(L != NULL);
    rl_lua_json_open(L); /* registers the object marker decode and encode use */
    lua_pop(L, 1);
    return 0;
}

typedef struct fuzz_round {
    const char *s; /* exactly len bytes: no NUL after them, so an overread is caught */
    size_t len;
    int decoded; /* rl_lua_json_decode(s) succeeded */
} fuzz_round;

static int is_marked(lua_State *l, int idx)
{
    if (!lua_getmetatable(l, idx))
        return 0;
    luaL_getmetatable(l, "json.object");
    int r = lua_rawequal(l, -1, -2);
    lua_pop(l, 2);
    return r;
}

/* 1 when b is what decoding the encoding of a gives: the same types, integers, float bits and
   string bytes, the same keys, except that a non-finite float (written as null) is absent in b.
   *lossy is set when a held one. Both values are on the stack at a and b. */
static int same(lua_State *l, int a, int b, int depth, int *lossy)
{
    FUZZ_CHECK(depth <= RL_LUA_JSON_DEPTH + 1);
    FUZZ_CHECK(lua_checkstack(l, 4));
    int ta = lua_type(l, a);
    if (ta == LUA_TNUMBER && !lua_isinteger(l, a) && !isfinite((double)lua_tonumber(l, a))) {
        *lossy = 1;
        return lua_isnil(l, b);
    }
    if (ta != lua_type(l, b))
        return 0;
    switch (ta) {
    case LUA_TNIL: return 1;
    case LUA_TBOOLEAN: return lua_toboolean(l, a) == lua_toboolean(l, b);
    case LUA_TNUMBER: {
        if (lua_isinteger(l, a) != lua_isinteger(l, b))
            return 0;
        if (lua_isinteger(l, a))
            return lua_tointeger(l, a) == lua_tointeger(l, b);
        double x = (double)lua_tonumber(l, a), y = (double)lua_tonumber(l, b);
        return memcmp(&x, &y, sizeof x) == 0;
    }
    case LUA_TSTRING: {
        size_t na, nb;
        const char *sa = lua_tolstring(l, a, &na), *sb = lua_tolstring(l, b, &nb);
        return na == nb && memcmp(sa, sb, na) == 0;
    }
    case LUA_TTABLE: break;
    default: return 0; /* decoding makes nothing else */
    }
    int ok = 1;
    size_t na = 0;
    lua_pushnil(l);
    while (ok && lua_next(l, a)) { /* every key of a is in b with the same value */
        na++;
        lua_pushvalue(l, -2);
        lua_rawget(l, b);
        ok = same(l, lua_gettop(l) - 1, lua_gettop(l), depth + 1, lossy);
        lua_pop(l, 2);
    }
    if (!ok) {
        lua_pop(l, 1);
        return 0;
    }
    lua_pushnil(l);
    while (ok && lua_next(l, b)) { /* and b has no key a lacks */
        lua_pushvalue(l, -2);
        ok = lua_rawget(l, a) != LUA_TNIL;
        lua_pop(l, 2);
    }
    if (!ok) {
        lua_pop(l, 1);
        return 0;
    }
    /* an empty object stays an object: {} comes back as {}, [] as [] */
    return na != 0 || is_marked(l, a) == is_marked(l, b);
}

/* Decodes r->s; when that works, encoding fails only for arrays with holes (null items), and
   otherwise the text decodes again to the same value, and (without non-finite floats, which
   become null) encodes again to the same text. Runs under lua_pcall, so the only raise allowed
   (out of memory) is caught. */
static int run(lua_State *l)
{
    fuzz_round *r = lua_touserdata(l, 1);
    lua_settop(l, 0);
    r->decoded = rl_lua_json_decode(l, r->s, r->len);
    FUZZ_CHECK(lua_gettop(l) == 1);
    if (!r->decoded) {
        FUZZ_CHECK(lua_type(l, 1) == LUA_TSTRING); /* the error message */
        FUZZ_CHECK(strncmp(lua_tostring(l, 1), "json: ", 6) == 0);
        return 0;
    }
    if (!rl_lua_json_encode(l, 1)) {
        FUZZ_CHECK(lua_gettop(l) == 2 && lua_type(l, 2) == LUA_TSTRING);
        FUZZ_CHECK(strstr(lua_tostring(l, 2), "sparse array") != NULL);
        return 0;
    }
    size_t n1, n2;
    const char *t1 = lua_tolstring(l, 2, &n1);
    FUZZ_CHECK(rl_lua_json_decode(l, t1, n1)); /* 3 */
    int lossy = 0;
    FUZZ_CHECK(same(l, 1, 3, 0, &lossy));
    /* The scratch entry point writes the same text. */
    const char *ts;
    size_t ns;
    FUZZ_CHECK(rl_lua_json_encode_scratch(l, 1, &ts, &ns));
    FUZZ_CHECK(ns == n1 && memcmp(ts, t1, n1) == 0);
    if (!lossy) {
        FUZZ_CHECK(rl_lua_json_encode(l, 3)); /* 4 */
        const char *t2 = lua_tolstring(l, 4, &n2);
        FUZZ_CHECK(n1 == n2 && memcmp(t1, t2, n1) == 0);
    }
    /* What the encoder writes is also what the node accepts from a client. */
    cJSON *v = rl_json_parse(t1, n1);
    FUZZ_CHECK(v != NULL);
    cJSON_Delete(v);
    return 0;
}

/* When the hub's parser accepts the input too, both read the same "type" (the first one). */
static void check_type_agrees(const char *s, size_t size)
{
    cJSON *v = rl_json_parse(s, size);
    const cJSON *type = cJSON_IsObject(v) ? cJSON_GetObjectItemCaseSensitive(v, "type") : NULL;
    if (cJSON_IsString(type) && lua_type(L, 1) == LUA_TTABLE) {
        lua_getfield(L, 1, "type");
        FUZZ_CHECK(lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), type->valuestring) == 0);
        lua_pop(L, 1);
    }
    cJSON_Delete(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    fuzz_round r = {s, size, 0};
    lua_pushcfunction(L, run);
    lua_pushlightuserdata(L, &r);
    int rc = lua_pcall(L, 1, 0, 0);
    FUZZ_CHECK(rc == LUA_OK);
    if (r.decoded) {
        FUZZ_CHECK(rl_lua_json_decode(L, s, size)); /* at 1 */
        check_type_agrees(s, size);
    }
    lua_settop(L, 0);
    free(s);
    return 0;
}
