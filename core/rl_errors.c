/* The client-visible error codes: one table, used by hubs, the gateway and metrics. */
#include "rl_errors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_json.h"
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

size_t rl_err_format(char *out, size_t cap, rl_err_code e, const char *msg, const char *rid,
                     size_t rid_len)
{
    if (!msg)
        msg = table[e].msg;
    int n = snprintf(out, cap, "{\"error\":\"%s\",\"message\":", table[e].name);
    size_t len = n > 0 ? (size_t)n : 0;
    len += rl_json_escape(len < cap ? out + len : NULL, len < cap ? cap - len : 0, msg, strlen(msg));
    if (rid_len) {
        static const char key[] = ",\"request_id\":";
        if (len + sizeof key - 1 + rid_len < cap) {
            memcpy(out + len, key, sizeof key - 1);
            memcpy(out + len + sizeof key - 1, rid, rid_len);
        }
        len += sizeof key - 1 + rid_len;
    }
    if (len + 1 < cap) {
        out[len] = '}';
        out[len + 1] = '\0';
    }
    return len + 1;
}

rl_msg *rl_err_msg(rl_err_code e, const char *msg, const char *rid, size_t rid_len)
{
    rl_metric_error(e);
    size_t need = rl_err_format(NULL, 0, e, msg, rid, rid_len);
    rl_msg *m = rl_msg_new_data(RL_T_APP, "error", 5, NULL, need);
    if (m)
        rl_err_format(rl_msg_data(m), need + 1, e, msg, rid, rid_len);
    return m;
}

void rl_err_send(rl_proc *from, const char *to, rl_err_code e, const char *msg, const char *rid,
                 size_t rid_len)
{
    rl_send_or_free(from, to, rl_err_msg(e, msg, rid, rid_len));
}
