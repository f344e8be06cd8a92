/* Unit tests for the type-annotation stripper (plugins/rl_lua_types.c): every stripped source
 * compiles with real Lua 5.4 and keeps its length and line breaks; plain Lua is untouched;
 * what cannot be stripped is refused with its line. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "rl_lua_types.h"

/* Strips src; returns the result (malloc'd) or NULL with err set. */
static char *strip(const char *src, char *err, size_t errlen)
{
    size_t n = strlen(src);
    char *s = malloc(n + 1);
    memcpy(s, src, n + 1);
    if (rl_lua_strip_types(s, n, err, errlen) < 0) {
        free(s);
        return NULL;
    }
    assert_int_equal(strlen(s), n);
    for (size_t i = 0; i < n; i++) /* newlines stay where they were */
        assert_int_equal(s[i] == '\n', src[i] == '\n');
    return s;
}

/* Strips src, runs it with real Lua and returns the global `r` as a string. */
static char *run(const char *src)
{
    char err[256] = "";
    char *s = strip(src, err, sizeof err);
    if (!s)
        fail_msg("refused: %s\n%s", err, src);
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadstring(L, s) != LUA_OK || lua_pcall(L, 0, 0, 0) != LUA_OK)
        fail_msg("lua: %s\n--- stripped:\n%s", lua_tostring(L, -1), s);
    lua_getglobal(L, "r");
    char *out = strdup(luaL_tolstring(L, -1, NULL));
    lua_close(L);
    free(s);
    return out;
}

static void expect(const char *src, const char *want)
{
    char *got = run(src);
    assert_string_equal(got, want);
    free(got);
}

static void test_plain_lua_untouched(void **state)
{
    (void)state;
    static const char *const srcs[] = {
        "local t = {type = 'x', [1] = 2}; r = type(t) .. t.type\n",
        "local s = 'a: string' .. \"b :: c\" .. [[local x: y]] -- local z: w\nr = s\n",
        "local o = {}; function o:m(a) return a end; r = o:m(5)\n",
        "goto done\n::done::\nr = 1 | 2 & 3\n",
        "local x <const> = 5; local y <close> = nil; r = x ~= 4 and x >= 5\n",
        "--[==[ type T = number\n]==] r = #'x!' + 0x1p4\n",
        "local type = type; r = type(1)\n",
    };
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) {
        char err[128];
        char *s = strip(srcs[i], err, sizeof err);
        assert_non_null(s);
        assert_string_equal(s, srcs[i]);
        free(s);
    }
    expect("goto done\n::done::\nr = 1 | 2 & 3\n", "3");
}

static void test_locals_and_functions(void **state)
{
    (void)state;
    expect("local x: string = 'a'\nlocal n: number?, m: integer = nil, 2\nr = x .. m\n", "a2");
    expect("local function add(a: number, b: number): number\n  return a + b\nend\nr = add(1, 2)\n",
           "3");
    expect("local function dm(a: number, b: number): (number, number)\n"
           "  return a // b, a % b\nend\nlocal q, m = dm(7, 2)\nr = q * 10 + m\n",
           "31");
    expect("local function f(x: number?): (string?, error?)\n  return nil, 'e'\nend\n"
           "local _, e = f()\nr = e\n",
           "e");
    expect("local M = {}\nfunction M.go(a: {[string]: number}): {string}\n  return {a.k}\nend\n"
           "function M:me(s: string): string return s end\n"
           "r = M.go({k = 'v'})[1] .. M:me('w')\n",
           "vw");
    expect("local double: (number) -> number = function(x: number): number return x * 2 end\n"
           "r = double(4)\n",
           "8");
    expect("local function sum(...: number): number\n  local t: number = 0\n"
           "  for _, v in ipairs({...}) do t = t + v end\n  return t\nend\nr = sum(1, 2, 3)\n",
           "6");
    expect("local function id<T>(x: T): T return x end\n"
           "local function g<T: {name: string}>(o: T): string return o.name end\n"
           "r = id('a') .. g({name = 'b'})\n",
           "ab");
    expect("local t = {}\nfor k: string, v: number in pairs({a = 1}) do t[#t + 1] = k .. v end\n"
           "for i: integer = 1, 2 do t[#t + 1] = i end\nr = table.concat(t, ',')\n",
           "a1,1,2");
    expect("local cb = function(a: string, b: Map<string, List<number>>): boolean return true end\n"
           "r = tostring(cb('x'))\n",
           "true");
}

static void test_type_declarations_and_casts(void **state)
{
    (void)state;
    expect("type User = {name: string, age: number}\n"
           "export type Status = \"pending\" | \"active\" | \"done\"\n"
           "type Result<T, E> =\n    {ok: true, value: T}\n  | {ok: false, error: E}\n"
           "type Config = {\n  host: string, -- the host\n  timeout?: number,\n}\n"
           "local u: User = {name = 'a', age = 1}\nr = u.name\n",
           "a");
    expect("local data = {name = 'n'}\nlocal u = data :: User\nlocal v = (data :: any).name\n"
           "r = u.name .. v\n",
           "nn");
    expect("local data = {x = 1}\nlocal p = data as Point\nr = p.x\n", "1");
    expect("local u = {name = 'z'}\nlocal name = (u!).name\nr = name\n", "z");
    expect("local x: number @min(0) @max(100) = 50\n"
           "type V = {age: number @min(0) @max(150)}\nr = x\n",
           "50");
    expect("local id: number @min(1) | string @min_len(1) = 1\nr = id\n", "1");
    /* line numbers stay: an error on line 4 is reported on line 4 */
    char err[128];
    char *s = strip("type T = {\n  a: number,\n}\nerror('x')\n", err, sizeof err);
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    assert_int_equal(luaL_loadbuffer(L, s, strlen(s), "=src"), LUA_OK);
    assert_int_not_equal(lua_pcall(L, 0, 0, 0), LUA_OK);
    assert_string_equal(lua_tostring(L, -1), "src:4: x");
    lua_close(L);
    free(s);
}

static void test_refused(void **state)
{
    (void)state;
    char err[256];
    assert_null(strip("local a = 1\ntype Point = {x: number}\nlocal p = Point(data)\n", err,
                      sizeof err));
    assert_non_null(strstr(err, "line 3"));
    assert_non_null(strstr(err, "runtime"));
    assert_null(strip("type P = {x: number}\nif P:is(d) then end\n", err, sizeof err));
    assert_non_null(strstr(err, "line 2"));
    assert_null(strip("local t = typeof(x)\n", err, sizeof err));
    assert_non_null(strstr(err, "typeof"));
    assert_null(strip("local x: = 5\n", err, sizeof err));
    assert_non_null(strstr(err, "line 1: expected a type"));
    assert_null(strip("\nlocal f = function(a: {number): number end\n", err, sizeof err));
    assert_non_null(strstr(err, "line 2"));
    /* deep nesting is refused, not a crash */
    char deep[400];
    size_t n = 0;
    n += (size_t)snprintf(deep + n, sizeof deep - n, "local x: ");
    for (int i = 0; i < 100; i++)
        deep[n++] = '{';
    deep[n] = '\0';
    assert_null(strip(deep, err, sizeof err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_lua_untouched),
        cmocka_unit_test(test_locals_and_functions),
        cmocka_unit_test(test_type_declarations_and_casts),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
