/* JSON helpers on cJSON shared by the node's modules. */
#include "rl_json.h"

int rl_json_depth_ok(const cJSON *v, int max)
{
    if (max < 0)
        return 0;
    for (const cJSON *c = v->child; c; c = c->next)
        if (c->child && !rl_json_depth_ok(c, max - 1))
            return 0;
    return 1;
}

cJSON *rl_json_parse(const char *buf, size_t len)
{
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!v)
        return NULL;
    for (const char *p = end; p < buf + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(v);
            return NULL;
        }
    }
    return v;
}
