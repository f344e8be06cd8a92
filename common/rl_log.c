/* Structured logging: one JSON object per line on stderr. */
#include "rl_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static rl_log_level min_level = RL_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void rl_log_set_level(rl_log_level level) { min_level = level; }
rl_log_level rl_log_get_level(void) { return min_level; }

int rl_log_level_parse(const char *s, rl_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (rl_log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Appends `s` JSON-escaped to buf[*n..cap). */
static void put_escaped(char *buf, size_t *n, size_t cap, const char *s)
{
    for (; *s && *n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*n)++] = '\\';
            buf[(*n)++] = (char)c;
        } else if (c < 0x20) {
            *n += (size_t)snprintf(buf + *n, cap - *n, "\\u%04x", c);
        } else {
            buf[(*n)++] = (char)c;
        }
    }
}

static void vlog(rl_log_level level, const char *mod, const rl_log_field *f, size_t nf,
                 const char *fmt, va_list ap)
{
    char msg[2048], line[4608];
    vsnprintf(msg, sizeof msg, fmt, ap);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = (size_t)snprintf(line, sizeof line,
                                "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\",\"mod\":\"",
                                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                                tm.tm_sec, ts.tv_nsec / 1000000, level_names[level]);
    put_escaped(line, &n, sizeof line, mod);
    memcpy(line + n, "\",\"msg\":\"", 9);
    n += 9;
    put_escaped(line, &n, sizeof line - 4, msg);
    line[n++] = '"';
    for (size_t i = 0; i < nf && n + 64 < sizeof line; i++) {
        line[n++] = ',';
        line[n++] = '"';
        put_escaped(line, &n, sizeof line - 32, f[i].key);
        line[n++] = '"';
        line[n++] = ':';
        if (f[i].s) {
            line[n++] = '"';
            put_escaped(line, &n, sizeof line - 8, f[i].s);
            line[n++] = '"';
        } else {
            n += (size_t)snprintf(line + n, sizeof line - n, "%lld", f[i].n);
        }
    }
    memcpy(line + n, "}\n", 2);
    n += 2;
    fwrite(line, 1, n, stderr);
}

void rl_log(rl_log_level level, const char *mod, const char *fmt, ...)
{
    if (level < min_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, mod, NULL, 0, fmt, ap);
    va_end(ap);
}

void rl_log_fields(rl_log_level level, const char *mod, const rl_log_field *f, size_t nf,
                   const char *fmt, ...)
{
    if (level < min_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    vlog(level, mod, f, nf, fmt, ap);
    va_end(ap);
}

void rl_panic(const char *file, int line, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rl_log(RL_LOG_ERROR, "panic", "%s:%d: %s", file, line, msg);
    abort();
}
