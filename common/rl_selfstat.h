/* This process's resource use as the kernel reports it in /proc (for the process_* metrics). */
#ifndef RL_SELFSTAT_H
#define RL_SELFSTAT_H

#include <stddef.h>
#include <stdint.h>

typedef struct rl_selfstat {
    double cpu_seconds;        /* user + system CPU time */
    uint64_t resident_bytes;   /* resident set size */
    uint64_t virtual_bytes;    /* virtual memory size */
    double start_time_seconds; /* unix time the process started */
    uint64_t open_fds;         /* open file descriptors */
    uint64_t max_fds;          /* the soft RLIMIT_NOFILE */
} rl_selfstat;

/* The fields of a /proc/<pid>/stat line (buf[0..len), no I/O): utime and stime and starttime in
   clock ticks, vsize in bytes, rss in pages. 0, or -EINVAL when the line is truncated or bad. */
typedef struct rl_selfstat_raw {
    uint64_t utime, stime, starttime, vsize, rss;
} rl_selfstat_raw;
int rl_selfstat_parse(const char *buf, size_t len, rl_selfstat_raw *out);

/* Reads /proc/self/stat, /proc/stat (boot time) and /proc/self/fd into out. Returns 0, or a
   negative errno when /proc/self/stat cannot be read (out is then zeroed). */
int rl_selfstat_read(rl_selfstat *out);

#endif
