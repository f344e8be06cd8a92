/* This process's resource use from /proc: CPU time, memory, start time, file descriptors. */
#include "rl_selfstat.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define SELFSTAT_MAX 4096 /* a stat line is about 300 bytes; comm is at most 16 */

/* Reads up to cap - 1 bytes of path into buf (NUL-terminated); the length or a negative errno. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t k = read(fd, buf + n, cap - 1 - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    close(fd);
    buf[n] = '\0';
    return (ssize_t)n;
}

/* Field numbers of proc(5), counted from 1 ("pid" is 1, "comm" 2, "state" 3). */
enum { F_UTIME = 14, F_STIME = 15, F_STARTTIME = 22, F_VSIZE = 23, F_RSS = 24 };

int rl_selfstat_parse(const char *buf, size_t len, rl_selfstat_raw *out)
{
    /* comm may hold spaces and parentheses: the fields start after the last ')'. */
    const char *end = buf + len, *p = NULL;
    for (const char *q = buf; q < end; q++)
        if (*q == ')')
            p = q + 1;
    if (!p)
        return -EINVAL;
    memset(out, 0, sizeof *out);
    int field = 2, got = 0;
    while (p < end && field < F_RSS) {
        while (p < end && *p == ' ')
            p++;
        if (p >= end || *p == '\n')
            break;
        field++;
        uint64_t v = 0;
        int digits = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++, digits++)
            v = v * 10 + (uint64_t)(*p - '0');
        while (p < end && *p != ' ' && *p != '\n') /* state letter, negative numbers */
            p++;
        uint64_t *slot = field == F_UTIME       ? &out->utime
                         : field == F_STIME     ? &out->stime
                         : field == F_STARTTIME ? &out->starttime
                         : field == F_VSIZE     ? &out->vsize
                         : field == F_RSS       ? &out->rss
                                                : NULL;
        if (slot) {
            if (!digits)
                return -EINVAL;
            *slot = v;
            got++;
        }
    }
    return got == 5 ? 0 : -EINVAL;
}

/* Seconds since the epoch at boot ("btime" of /proc/stat), or 0. */
static uint64_t boot_time(void)
{
    static uint64_t cached;
    if (cached)
        return cached;
    char *buf = malloc(1 << 16); /* /proc/stat lists every CPU before btime */
    if (!buf)
        return 0;
    if (slurp("/proc/stat", buf, 1 << 16) > 0) {
        const char *b = strstr(buf, "\nbtime ");
        if (b)
            cached = strtoull(b + 7, NULL, 10);
    }
    free(buf);
    return cached;
}

static uint64_t count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n ? n - 1 : 0; /* the directory's own descriptor */
}

int rl_selfstat_read(rl_selfstat *out)
{
    char buf[SELFSTAT_MAX];
    rl_selfstat_raw raw;
    memset(out, 0, sizeof *out);
    ssize_t n = slurp("/proc/self/stat", buf, sizeof buf);
    if (n < 0)
        return (int)n;
    if (rl_selfstat_parse(buf, (size_t)n, &raw) < 0)
        return -EINVAL;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    if (tick <= 0)
        tick = 100;
    if (page <= 0)
        page = 4096;
    out->cpu_seconds = (double)(raw.utime + raw.stime) / (double)tick;
    out->resident_bytes = raw.rss * (uint64_t)page;
    out->virtual_bytes = raw.vsize;
    out->start_time_seconds = (double)boot_time() + (double)raw.starttime / (double)tick;
    out->open_fds = count_fds();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        out->max_fds = rl.rlim_cur == RLIM_INFINITY ? 0 : (uint64_t)rl.rlim_cur;
    return 0;
}
