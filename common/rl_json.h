/* JSON helpers: the string escaper the node writes with, and a strict reader on cJSON that the
   tests and fuzz targets use as a reference for the node's own readers. */
#ifndef RL_JSON_H
#define RL_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

/* Levels below the top that rl_json_depth_ok allows in the tests' reference reading (the node's
   own bound is RL_ENV_MAX_DEPTH, counted in open containers). */
#define RL_JSON_MAX_DEPTH 100

/* Parses exactly one JSON value from buf[0..len): only whitespace may follow it (cJSON bounds
   nesting at CJSON_NESTING_LIMIT), and no string holds a raw control byte, a \u0000 escape or a
   \u escape without four hex digits (cJSON would cut the string there). Returns the tree
   (cJSON_Delete) or NULL. */
cJSON *rl_json_parse(const char *buf, size_t len);
/* 1 when no container nests more than max levels below v. */
int rl_json_depth_ok(const cJSON *v, int max);
/* Writes s[0..len) as a JSON string (quotes included) into out (cap bytes, NUL-terminated when
   cap > 0): `"` `\` and bytes below 0x20 escaped, everything else as is (s should be UTF-8).
   Returns the length it needs (without the NUL), like snprintf. */
size_t rl_json_escape(char *out, size_t cap, const char *s, size_t len);


#endif
