/* libFuzzer target for the Lua host's json module: rl_lua_json_decode on arbitrary bytes in a
   bare lua_State (no host, no loop), then encode/decode round trips. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
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
    rl_lua_json_open(L); /* registers the userdata classes decode and encode use */
    lua_pop(L, 1);
    return 0;
}

typedef struct round {
    const char *s; /* NUL at s[len] */
    size_t len;
    int decoded;   /* rl_lua_json_decode(s) succeeded */
} round;

/* Decodes r->s; when that works and the value encodes, decoding the text and encoding again
   must work too and reach a fixed point by the second round (the first may differ: invalid UTF-8
   is written as the escape \ufffd, then U+FFFD comes back as its UTF-8 bytes). Runs under
   lua_pcall, so the only raise allowed (out of memory) is caught. */
static int run(lua_State *l)
{
    round *r = lua_touserdata(l, 1);
    lua_settop(l, 0);
    r->decoded = rl_lua_json_decode(l, r->s, r->len);
    FUZZ_CHECK(lua_gettop(l) == 1);
    if (!r->decoded) {
        FUZZ_CHECK(lua_type(l, 1) == LUA_TSTRING); /* the error message */
        return 0;
    }
    if (!rl_lua_json_encode(l, 1)) {
        FUZZ_CHECK(lua_gettop(l) == 2 && lua_type(l, 2) == LUA_TSTRING);
        return 0;
    }
    const char *t[3];
    size_t n[3];
    t[0] = lua_tolstring(l, 2, &n[0]);
    for (int i = 1; i < 3; i++) {
        FUZZ_CHECK(rl_lua_json_decode(l, t[i - 1], n[i - 1]));
        FUZZ_CHECK(rl_lua_json_encode(l, -1));
        t[i] = lua_tolstring(l, -1, &n[i]);
    }
    FUZZ_CHECK(n[1] == n[2] && memcmp(t[1], t[2], n[1]) == 0);
    /* What the encoder writes is also what the node accepts from a client. */
    for (int i = 0; i < 3; i++) {
        cJSON *v = rl_json_parse(t[i], n[i]);
        FUZZ_CHECK(v != NULL);
        cJSON_Delete(v);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    round r = {s, size, 0};
    lua_pushcfunction(L, run);
    lua_pushlightuserdata(L, &r);
    int rc = lua_pcall(L, 1, 0, 0);
    FUZZ_CHECK(rc == LUA_OK);

    /* The hub refuses messages nested deeper than RL_JSON_MAX_DEPTH so that plugins can always
       decode what it passes on (rl_json.h): anything it accepts must decode here. */
    cJSON *v = rl_json_parse(s, size);
    if (v && rl_json_depth_ok(v, RL_JSON_MAX_DEPTH))
        FUZZ_CHECK(r.decoded);
    cJSON_Delete(v);
    lua_settop(L, 0);
    free(s);
    return 0;
}
