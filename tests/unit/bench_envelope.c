/* Throughput of rl_env_scan (and, for scale, rl_json_parse on cJSON) on typical and 64 KiB frames.
   Not a test (make does not build it): after `make all`,
     cc -O2 -Icommon tests/unit/bench_envelope.c build/librelay.a -lcjson -o /tmp/bench_envelope
   The best of 15 runs is printed; on a shared machine the spread is wide. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rl_envelope.h"
#include "rl_json.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile int sink;

static void run(const char *name, const char *f, size_t n, int want)
{
    rl_envelope env;
    if (rl_env_scan(f, n, &env) != want) {
        fprintf(stderr, "%s: %d (%s at %zu)\n", name, rl_env_scan(f, n, &env), env.why, env.err_off);
        exit(1);
    }
    long iters = (long)(4e8 / (n + 50));
    if (iters < 20)
        iters = 20;
    double best = 1e9;
    for (int rep = 0; rep < 15; rep++) {
        double t0 = now();
        for (long i = 0; i < iters; i++)
            sink += rl_env_scan(f, n, &env) + (int)env.type.len;
        double dt = (now() - t0) / iters;
        if (dt < best)
            best = dt;
    }
    long citers = iters / 10 + 1;
    double t0 = now();
    for (long i = 0; i < citers; i++) {
        cJSON *v = rl_json_parse(f, n);
        sink += v != NULL;
        cJSON_Delete(v);
    }
    double cj = (now() - t0) / citers;
    printf("%-26s %7zu B  scan %9.1f ns/frame %7.0f MB/s   (rl_json_parse %9.1f ns, %5.0f MB/s)\n", name, n,
           best * 1e9, n / best / 1e6, cj * 1e9, n / cj / 1e6);
}

int main(void)
{
    const char *typ = "{\"type\":\"echo_hello\",\"request_id\":\"r2\",\"data\":{\"text\":\"hi\",\"n\":[1,2,3.5e2,true,null]}}";
    run("typical", typ, strlen(typ), RL_ENV_OK);

    size_t cap = 70000, n = 0;
    char *f = malloc(cap);
    n += (size_t)sprintf(f + n, "{\"type\":\"bulk\",\"request_id\":7,\"items\":[");
    for (int i = 0; n < 65400; i++)
        n += (size_t)sprintf(f + n, "%s{\"id\":%d,\"name\":\"user%d\",\"ok\":true,\"v\":[1.5,-2,3e4],\"note\":\"a short note\"}", i ? "," : "", i, i);
    n += (size_t)sprintf(f + n, "]}");
    run("64K mixed objects", f, n, RL_ENV_OK);

    n = (size_t)sprintf(f, "{\"type\":\"blob\",\"data\":\"");
    while (n < 65530)
        n += (size_t)sprintf(f + n, "lorem ipsum dolor sit amet ");
    n += (size_t)sprintf(f + n, "\"}");
    run("64K one ASCII string", f, n, RL_ENV_OK);

    n = (size_t)sprintf(f, "{\"type\":\"text\",\"data\":\"");
    while (n < 65530)
        n += (size_t)sprintf(f + n, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x98\x80 ");
    n += (size_t)sprintf(f + n, "\"}");
    run("64K UTF-8 text string", f, n, RL_ENV_OK);

    n = (size_t)sprintf(f, "{\"type\":\"nums\",\"data\":[");
    for (int i = 0; n < 65500; i++)
        n += (size_t)sprintf(f + n, "%s%d.%d", i ? "," : "", i, i % 97);
    n += (size_t)sprintf(f + n, "]}");
    run("64K numbers", f, n, RL_ENV_OK);
    free(f);
    return 0;
}
