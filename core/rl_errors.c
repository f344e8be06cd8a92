/* The client-visible error codes: one table, used by hubs, the gateway and metrics. */
#include "rl_errors.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "rl_metrics.h"
#include "rl_proc.h"

static const struct {
    const char *name;
    int close;
    const char *msg;
} table[] = {
#define RL_ERR_ROW(n, code, close, msg) {code, close, msg},
    RL_ERRORS(RL_ERR_ROW)
#undef RL_ERR_ROW
};

const char *rl_err_name(rl_err_code e) { return table[e].name; }
int rl_err_close_code(rl_err_code e) { return table[e].close; }
const char *rl_err_default_message(rl_err_code e) { return table[e].msg; }

char *rl_err_payload(rl_err_code e, const char *msg, const char *rid_json)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddStringToObject(o, "error", table[e].name);
    cJSON_AddStringToObject(o, "message", msg ? msg : table[e].msg);
    if (rid_json) {
        cJSON *rid = cJSON_Parse(rid_json);
        if (rid)
            cJSON_AddItemToObject(o, "request_id", rid);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

void rl_err_send(const char *from, const char *to, rl_err_code e, const char *msg, const cJSON *req)
{
    const cJSON *r = cJSON_IsObject(req) ? cJSON_GetObjectItemCaseSensitive(req, "request_id") : NULL;
    char *rid = r ? cJSON_PrintUnformatted(r) : NULL;
    char *payload = rl_err_payload(e, msg, rid);
    free(rid);
    rl_metric_error(e);
    if (!payload || rl_send(from, to, "error", payload, strlen(payload)) < 0)
        rl_metric_inc(RL_M_MSGS_DROPPED);
    free(payload);
}
