/* Structured logging: one JSON object per line on stderr. */
#ifndef RL_LOG_H
#define RL_LOG_H

typedef enum { RL_LOG_DEBUG, RL_LOG_INFO, RL_LOG_WARN, RL_LOG_ERROR } rl_log_level;

/* Sets the lowest level written (default INFO; RELAY_LOG_LEVEL=debug|info|warn|error). */
void rl_log_set_level(rl_log_level level);
rl_log_level rl_log_get_level(void);
int rl_log_level_parse(const char *s, rl_log_level *out);

/* Writes {"ts":...,"level":...,"mod":mod,"msg":formatted}. `mod` names the module. */
void rl_log(rl_log_level level, const char *mod, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define rl_debug(mod, ...) rl_log(RL_LOG_DEBUG, mod, __VA_ARGS__)
#define rl_info(mod, ...)  rl_log(RL_LOG_INFO, mod, __VA_ARGS__)
#define rl_warn(mod, ...)  rl_log(RL_LOG_WARN, mod, __VA_ARGS__)
#define rl_error(mod, ...) rl_log(RL_LOG_ERROR, mod, __VA_ARGS__)

/* Always-on assertion for bugs: logs file and line, then aborts. */
#define RL_PANIC(...) rl_panic(__FILE__, __LINE__, __VA_ARGS__)
void rl_panic(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));

#endif
