/* Structured logging: one JSON object per line on stderr. */
#ifndef RL_LOG_H
#define RL_LOG_H

#include <stddef.h>

typedef enum { RL_LOG_DEBUG, RL_LOG_INFO, RL_LOG_WARN, RL_LOG_ERROR } rl_log_level;

/* Sets the lowest level written (default INFO; RELAY_LOG_LEVEL=debug|info|warn|error). */
void rl_log_set_level(rl_log_level level);
rl_log_level rl_log_get_level(void);
int rl_log_level_parse(const char *s, rl_log_level *out);

/* Writes {"ts":...,"level":...,"mod":mod,"msg":formatted}. `mod` names the module. */
void rl_log(rl_log_level level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A field of a structured line: the string s, or the number n when s is NULL. */
typedef struct rl_log_field {
    const char *key;
    const char *s;
    long long n;
} rl_log_field;

/* rl_log with fields after "msg" ({...,"msg":...,"user":"alice","code":1000}), for what
   operators filter on: connects, closes, refusals. */
void rl_log_fields(rl_log_level level, const char *mod, const rl_log_field *f, size_t nf,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define rl_debug(mod, ...) rl_log(RL_LOG_DEBUG, mod, __VA_ARGS__)
#define rl_info(mod, ...)  rl_log(RL_LOG_INFO, mod, __VA_ARGS__)
#define rl_warn(mod, ...)  rl_log(RL_LOG_WARN, mod, __VA_ARGS__)
#define rl_error(mod, ...) rl_log(RL_LOG_ERROR, mod, __VA_ARGS__)

/* Always-on assertion for bugs: logs file and line, then aborts. */
#define RL_PANIC(...) rl_panic(__FILE__, __LINE__, __VA_ARGS__)
void rl_panic(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#endif
