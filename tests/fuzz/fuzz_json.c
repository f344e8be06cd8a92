/* libFuzzer target for rl_json: rl_json_parse and rl_json_depth_ok on arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rl_json.h"

/* Independent of rl_json_depth_ok: how many levels of non-empty containers nest below v (a
   scalar or an empty container: 0; [1]: 0; [[1]]: 1), the measure rl_json_depth_ok bounds. */
static int depth_below(const cJSON *v)
{
    int d = -1;
    for (const cJSON *c = v->child; c; c = c->next) {
        int k = c->child ? depth_below(c) : -1;
        if (k > d)
            d = k;
    }
    return d + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy (no NUL after it), so reading past len is an ASan error, at least in
       the project's code; cJSON itself is the system library and not instrumented. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    cJSON *v = rl_json_parse(buf, size);
    if (v) {
        int d = depth_below(v);
        static const int maxes[] = {-1, 0, 1, 2, 3, RL_JSON_MAX_DEPTH - 1, RL_JSON_MAX_DEPTH};
        for (size_t i = 0; i < sizeof maxes / sizeof maxes[0]; i++)
            FUZZ_CHECK(rl_json_depth_ok(v, maxes[i]) == (maxes[i] >= 0 && d <= maxes[i]));

        /* What the node prints from a parsed message parses again. */
        char *txt = cJSON_PrintUnformatted(v);
        if (txt) {
            cJSON *again = rl_json_parse(txt, strlen(txt));
            FUZZ_CHECK(again != NULL);
            FUZZ_CHECK(depth_below(again) == d);
            cJSON_Delete(again);
            cJSON_free(txt);
        }
        cJSON_Delete(v);
    }
    free(buf);
    return 0;
}
