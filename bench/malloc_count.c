/* malloc_count.so: an LD_PRELOAD shim that counts allocator calls, for bench/run.sh's "allocator
 * calls per round trip". Each call goes on to the next allocator in the chain (RTLD_NEXT).
 *
 * The counters live in a file mapped MAP_SHARED, named by MALLOC_COUNT_FILE, so that the bench
 * reads them at any moment from outside (before and after N round trips) without a signal the
 * process may not handle (SIGUSR2 would kill relay-node) and without allocating to report.
 * Layout: MC_NCOUNTERS little-endian uint64 after an 8-byte magic "mcount1\0", in the order of
 * MC_COUNTERS below. Without MALLOC_COUNT_FILE the process runs as usual and nothing is written.
 *
 * Counting is one relaxed atomic add per call (the node has libuv worker threads too); that
 * slows allocation a little, so figures other than the counts are not measured with the shim. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* X(name): one counter each; "bytes" is the sum of the sizes asked for. */
#define MC_COUNTERS(X) \
    X(malloc)          \
    X(calloc)          \
    X(realloc)         \
    X(free)            \
    X(posix_memalign)  \
    X(aligned_alloc)   \
    X(memalign)        \
    X(bytes)

enum {
#define MC_ENUM(n) MC_##n,
    MC_COUNTERS(MC_ENUM)
#undef MC_ENUM
    MC_NCOUNTERS
};

#define MC_MAGIC "mcount1"
#define MC_BOOT_ARENA 65536 /* allocations made while dlsym itself allocates */

typedef struct mc_file {
    char magic[8];
    uint64_t c[MC_NCOUNTERS];
} mc_file;

static mc_file mc_static; /* until (or without) the mapped file */
static mc_file *mc = &mc_static;

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

/* dlsym may call calloc/malloc before the real ones are known: those come from this arena and
   are never freed (free ignores pointers into it). */
static _Alignas(16) unsigned char boot_arena[MC_BOOT_ARENA];
static size_t boot_used;
static int resolving;

static void *boot_alloc(size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (boot_used + need > sizeof boot_arena)
        return NULL;
    void *p = boot_arena + boot_used;
    boot_used += need;
    return p; /* static storage: already zero */
}

static int in_boot(const void *p)
{
    return (const unsigned char *)p >= boot_arena &&
           (const unsigned char *)p < boot_arena + sizeof boot_arena;
}

static void count(int which, size_t bytes)
{
    __atomic_fetch_add(&mc->c[which], 1, __ATOMIC_RELAXED);
    if (bytes)
        __atomic_fetch_add(&mc->c[MC_bytes], bytes, __ATOMIC_RELAXED);
}

static void resolve(void)
{
    if (real_malloc || resolving)
        return;
    resolving = 1;
    real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
    real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
    real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
    real_posix_memalign = (int (*)(void **, size_t, size_t))dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "memalign");
    real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc"); /* last: it ends bootstrapping */
    resolving = 0;
    if (!real_malloc || !real_calloc || !real_realloc || !real_free)
        abort();
}

/* Maps MALLOC_COUNT_FILE and carries over what was counted before. No allocation here. */
__attribute__((constructor)) static void mc_init(void)
{
    resolve();
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path || !*path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (ftruncate(fd, (off_t)sizeof(mc_file)) == 0) {
        void *m = mmap(NULL, sizeof(mc_file), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            mc_file *f = m;
            for (int i = 0; i < MC_NCOUNTERS; i++)
                f->c[i] = __atomic_load_n(&mc_static.c[i], __ATOMIC_RELAXED);
            memcpy(f->magic, MC_MAGIC, sizeof MC_MAGIC);
            __atomic_store_n(&mc, f, __ATOMIC_RELEASE);
        }
    }
    close(fd);
}

void *malloc(size_t n)
{
    if (!real_malloc) {
        resolve();
        if (!real_malloc)
            return boot_alloc(n);
    }
    count(MC_malloc, n);
    return real_malloc(n);
}

void *calloc(size_t nmemb, size_t size)
{
    if (!real_malloc) {
        resolve();
        if (!real_malloc) {
            if (size && nmemb > SIZE_MAX / size)
                return NULL;
            return boot_alloc(nmemb * size);
        }
    }
    count(MC_calloc, nmemb * size);
    return real_calloc(nmemb, size);
}

void *realloc(void *p, size_t n)
{
    if (!real_malloc)
        resolve();
    if (in_boot(p)) { /* moves out of the arena; its old size is unknown, copy what fits */
        void *q = malloc(n);
        if (q) {
            size_t left = (size_t)(boot_arena + sizeof boot_arena - (unsigned char *)p);
            memcpy(q, p, n < left ? n : left);
        }
        return q;
    }
    count(MC_realloc, n);
    return real_realloc(p, n);
}

void free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (!real_free)
        resolve();
    count(MC_free, 0);
    real_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (!real_malloc)
        resolve();
    if (!real_posix_memalign)
        return ENOMEM;
    count(MC_posix_memalign, n);
    return real_posix_memalign(out, align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    if (!real_malloc)
        resolve();
    if (!real_aligned_alloc)
        return NULL;
    count(MC_aligned_alloc, n);
    return real_aligned_alloc(align, n);
}

void *memalign(size_t align, size_t n)
{
    if (!real_malloc)
        resolve();
    if (!real_memalign)
        return NULL;
    count(MC_memalign, n);
    return real_memalign(align, n);
}
