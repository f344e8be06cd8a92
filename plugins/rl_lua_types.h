/* The platform's type annotations, stripped from a Lua source before it is compiled. */
#ifndef RL_LUA_TYPES_H
#define RL_LUA_TYPES_H

#include <stddef.h>

/* Blanks every type annotation in src[0..len) in place (each byte becomes a space, newlines
   stay, so line and column numbers are kept); plain Lua is left byte for byte. Returns 0, or -1
   with "line N: reason" in err for what cannot be stripped (a malformed type, a declared type
   used as a value, typeof()). */
int rl_lua_strip_types(char *src, size_t len, char *err, size_t errlen);

#endif
