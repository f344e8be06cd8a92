/* The uuid module (the platform's names and returns): v1, v3, v4, v5, v7, validate, version,
 * variant, parse, format. Every function returns its value, or nil and a reason. */
#include <lauxlib.h>
#include <lua.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "rl_lua_int.h"

typedef unsigned char uuid_t16[16];

static int fail(lua_State *L, const char *why)
{
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Reads the standard form (8-4-4-4-12 hex), the simple one (32 hex), "urn:uuid:" + standard
   or the standard one in braces. Returns 0 or -1. */
static int uuid_read(const char *s, size_t len, uuid_t16 out)
{
    if (len == 45 && strncasecmp(s, "urn:uuid:", 9) == 0)
        s += 9, len -= 9;
    else if (len == 38 && s[0] == '{' && s[37] == '}')
        s += 1, len -= 2;
    int dashes = len == 36;
    if (!dashes && len != 32)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (dashes && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (s[i] != '-')
                return -1;
            continue;
        }
        int h = hexval(s[i]), l = i + 1 < len ? hexval(s[i + 1]) : -1;
        if (h < 0 || l < 0)
            return -1;
        out[k++] = (unsigned char)(h << 4 | l);
        i++;
    }
    return k == 16 ? 0 : -1;
}

static void uuid_write(const uuid_t16 u, char *out, int dashes)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (int i = 0; i < 16; i++) {
        if (dashes && (i == 4 || i == 6 || i == 8 || i == 10))
            out[n++] = '-';
        out[n++] = hex[u[i] >> 4];
        out[n++] = hex[u[i] & 15];
    }
    out[n] = '\0';
}

static void set_version(uuid_t16 u, int v)
{
    u[6] = (unsigned char)((u[6] & 0x0f) | (v << 4));
    u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* the RFC 4122 variant */
}

static int push_uuid(lua_State *L, const uuid_t16 u)
{
    char s[37];
    uuid_write(u, s, 1);
    lua_pushstring(L, s);
    return 1;
}

static uint64_t unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static int u_v4(lua_State *L)
{
    uuid_t16 u;
    rl_random_bytes(u, sizeof u);
    set_version(u, 4);
    return push_uuid(L, u);
}

/* v7: 48 bits of Unix milliseconds, then random bits. */
static int u_v7(lua_State *L)
{
    uuid_t16 u;
    rl_random_bytes(u, sizeof u);
    uint64_t ms = unix_ns() / 1000000ULL;
    for (int i = 0; i < 6; i++)
        u[i] = (unsigned char)(ms >> (40 - 8 * i));
    set_version(u, 7);
    return push_uuid(L, u);
}

/* v1: 100 ns intervals since 1582-10-15, a random clock sequence, a random node id with the
   multicast bit set (RFC 4122 4.5: not a real MAC address). */
#define GREGORIAN_OFFSET 0x01B21DD213814000ULL

static int u_v1(lua_State *L)
{
    uuid_t16 u;
    rl_random_bytes(u + 8, 8);
    uint64_t t = unix_ns() / 100 + GREGORIAN_OFFSET;
    uint32_t low = (uint32_t)t;
    uint16_t mid = (uint16_t)(t >> 32), hi = (uint16_t)((t >> 48) & 0x0fff);
    u[0] = (unsigned char)(low >> 24), u[1] = (unsigned char)(low >> 16);
    u[2] = (unsigned char)(low >> 8), u[3] = (unsigned char)low;
    u[4] = (unsigned char)(mid >> 8), u[5] = (unsigned char)mid;
    u[6] = (unsigned char)(hi >> 8), u[7] = (unsigned char)hi;
    u[10] |= 0x01; /* multicast bit of the node id */
    set_version(u, 1);
    return push_uuid(L, u);
}

/* v3 (MD5) and v5 (SHA-1) of a namespace uuid and a name. */
static int hashed(lua_State *L, const EVP_MD *md, int version)
{
    size_t nl, ml;
    const char *ns = luaL_checklstring(L, 1, &nl);
    const char *name = luaL_checklstring(L, 2, &ml);
    uuid_t16 nsu;
    if (uuid_read(ns, nl, nsu) < 0)
        return fail(L, "invalid namespace uuid");
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int ok = c && EVP_DigestInit_ex(c, md, NULL) && EVP_DigestUpdate(c, nsu, sizeof nsu) &&
             EVP_DigestUpdate(c, name, ml) && EVP_DigestFinal_ex(c, d, &dl) && dl >= 16;
    EVP_MD_CTX_free(c);
    if (!ok)
        return fail(L, "hash failed");
    uuid_t16 u;
    memcpy(u, d, 16);
    set_version(u, version);
    return push_uuid(L, u);
}

static int u_v3(lua_State *L) { return hashed(L, EVP_md5(), 3); }
static int u_v5(lua_State *L) { return hashed(L, EVP_sha1(), 5); }

/* The uuid at index 1, or a Lua error return (nil, reason) already pushed: returns -1 then. */
static int arg_uuid(lua_State *L, uuid_t16 u)
{
    size_t len;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    if (!s || uuid_read(s, len, u) < 0) {
        lua_pushnil(L);
        lua_pushstring(L, s ? "invalid uuid format" : "uuid must be a string");
        return -1;
    }
    return 0;
}

static const char *variant_name(const uuid_t16 u)
{
    unsigned v = u[8];
    if (!(v & 0x80))
        return "NCS";
    if (!(v & 0x40))
        return "RFC4122";
    if (!(v & 0x20))
        return "Microsoft";
    return "Future";
}

static int u_validate(lua_State *L)
{
    uuid_t16 u;
    size_t len;
    const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &len) : NULL;
    lua_pushboolean(L, s && uuid_read(s, len, u) == 0);
    return 1;
}

static int u_version(lua_State *L)
{
    uuid_t16 u;
    if (arg_uuid(L, u) < 0)
        return 2;
    lua_pushinteger(L, u[6] >> 4);
    return 1;
}

static int u_variant(lua_State *L)
{
    uuid_t16 u;
    if (arg_uuid(L, u) < 0)
        return 2;
    lua_pushstring(L, variant_name(u));
    return 1;
}

/* {version, variant, timestamp (Unix seconds, v1 and v7), node (hex, v1)} */
static int u_parse(lua_State *L)
{
    uuid_t16 u;
    if (arg_uuid(L, u) < 0)
        return 2;
    int v = u[6] >> 4;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, v);
    lua_setfield(L, -2, "version");
    lua_pushstring(L, variant_name(u));
    lua_setfield(L, -2, "variant");
    if (v == 7) {
        uint64_t ms = 0;
        for (int i = 0; i < 6; i++)
            ms = ms << 8 | u[i];
        lua_pushinteger(L, (lua_Integer)(ms / 1000));
        lua_setfield(L, -2, "timestamp");
    } else if (v == 1) {
        uint64_t t = ((uint64_t)(u[6] & 0x0f) << 56) | ((uint64_t)u[7] << 48) |
                     ((uint64_t)u[4] << 40) | ((uint64_t)u[5] << 32) | ((uint64_t)u[0] << 24) |
                     ((uint64_t)u[1] << 16) | ((uint64_t)u[2] << 8) | u[3];
        lua_pushinteger(L, t >= GREGORIAN_OFFSET ? (lua_Integer)((t - GREGORIAN_OFFSET) / 10000000ULL) : 0);
        lua_setfield(L, -2, "timestamp");
        char node[13];
        for (int i = 0; i < 6; i++)
            snprintf(node + 2 * i, 3, "%02x", u[10 + i]);
        lua_pushstring(L, node);
        lua_setfield(L, -2, "node");
    }
    return 1;
}

static int u_format(lua_State *L)
{
    uuid_t16 u;
    if (arg_uuid(L, u) < 0)
        return 2;
    const char *how = luaL_optstring(L, 2, "standard");
    char s[46];
    if (strcmp(how, "standard") == 0) {
        uuid_write(u, s, 1);
    } else if (strcmp(how, "simple") == 0) {
        uuid_write(u, s, 0);
    } else if (strcmp(how, "urn") == 0) {
        memcpy(s, "urn:uuid:", 9);
        uuid_write(u, s + 9, 1);
    } else {
        return fail(L, "unsupported format (standard, simple or urn)");
    }
    lua_pushstring(L, s);
    return 1;
}

void rl_lua_uuid_push(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"v1", u_v1},           {"v3", u_v3},           {"v4", u_v4},
        {"v5", u_v5},           {"v7", u_v7},           {"validate", u_validate},
        {"version", u_version}, {"variant", u_variant}, {"parse", u_parse},
        {"format", u_format},   {NULL, NULL},
    };
    luaL_newlib(L, fns);
}
