/* The gateway's HTTP side: /healthz, /readyz, /metrics, the console and its client (one table
 * of routes), and the JSON refusals of an upgrade. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_console.h"
#include "rl_edge.h"
#include "rl_metrics.h"

/* Writes a whole response (headers and body in one write; lws buffers what the socket does not
   take and defers transaction completion until it is sent). Returns 0 or -1. */
static int http_reply(struct lws *wsi, unsigned int status, const char *ctype, const char *body,
                      size_t len)
{
    size_t cap = LWS_PRE + RL_GW_HTTP_HEADROOM + len;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + cap - len;
    static const char nocache[] = "no-store";
    if (lws_add_http_common_headers(wsi, status, ctype, len, &p, end) ||
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL,
                                     (const unsigned char *)nocache, (int)sizeof nocache - 1, &p,
                                     end) ||
        lws_finalize_http_header(wsi, &p, end)) {
        free(buf);
        return -1;
    }
    memcpy(p, body, len);
    p += len;
    int n = lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_FINAL);
    free(buf);
    return n < 0 ? -1 : 0;
}

static int http_json(struct lws *wsi, unsigned int status, const char *body)
{
    return http_reply(wsi, status, "application/json", body, strlen(body));
}

/* {"error":code,"message":why} with status. */
static int http_error(struct lws *wsi, unsigned int status, const char *code, const char *why)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return -1;
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", why);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s)
        return -1;
    int rc = http_json(wsi, status, s);
    free(s);
    return rc;
}

static int http_healthz(struct lws *wsi) { return http_json(wsi, 200, "{\"status\":\"ok\"}"); }

static int http_readyz(struct lws *wsi)
{
    if (rl_gw_ready())
        return http_json(wsi, 200, "{\"status\":\"ready\"}");
    return http_json(wsi, 503, "{\"status\":\"not_ready\"}");
}

static int http_metrics(struct lws *wsi)
{
    size_t len = 0;
    char *s = rl_metrics_render(&len);
    if (!s)
        return http_error(wsi, 500, "internal", "cannot render metrics");
    int rc = http_reply(wsi, 200, "text/plain; version=0.0.4", s, len);
    free(s);
    return rc;
}

static int http_console(struct lws *wsi)
{
    if (!gw.console)
        return http_error(wsi, 404, "not_found", "No such path");
    return http_reply(wsi, 200, "text/html; charset=utf-8", gw.console, gw.console_len);
}

/* The client the console imports; served only with the console (a development aid). */
static int http_console_js(struct lws *wsi)
{
    if (!gw.console)
        return http_error(wsi, 404, "not_found", "No such path");
    return http_reply(wsi, 200, "text/javascript; charset=utf-8", rl_console_js,
                      sizeof rl_console_js - 1);
}

static const struct {
    const char *path;
    int (*fn)(struct lws *wsi);
} http_routes[] = {
    {"/healthz", http_healthz},
    {"/readyz", http_readyz},
    {"/metrics", http_metrics},
    {"/", http_console},
    {"/relay.js", http_console_js},
};

/* LWS_CALLBACK_HTTP: uri is the decoded path without the query. */
int rl_http_on_request(struct lws *wsi, const char *uri)
{
    int rc = -2;
    for (size_t i = 0; i < sizeof http_routes / sizeof http_routes[0]; i++)
        if (strcmp(uri, http_routes[i].path) == 0) {
            rc = http_routes[i].fn(wsi);
            break;
        }
    if (rc == -2) {
        if (strcmp(uri, gw.cfg->ws_path) == 0)
            rc = http_error(wsi, 400, "bad_request", "WebSocket upgrade required");
        else
            rc = http_error(wsi, 404, "not_found", "No such path");
    }
    if (rc < 0)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Refuses an upgrade with status and a JSON body {"error":code,"message":why}, then the
   connection closes. The response is written raw: at CONFIRM_UPGRADE lws has not recorded the
   request's HTTP version yet, so its header helpers would answer "HTTP/1.0", which strict
   WebSocket clients (python websockets) reject as an invalid response. */
int rl_http_refuse_upgrade(struct lws *wsi, unsigned int status, const char *extra,
                           const char *code, const char *why)
{
    static const struct {
        unsigned int status;
        const char *text;
    } texts[] = {{400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
                 {404, "Not Found"}, {503, "Service Unavailable"}};
    const char *text = "Error";
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (texts[i].status == status)
            text = texts[i].text;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", code);
    cJSON_AddStringToObject(o, "message", why);
    char *body = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!body)
        return -1;
    size_t blen = strlen(body), cap = LWS_PRE + RL_GW_HTTP_HEADROOM + blen;
    char *buf = malloc(cap);
    if (!buf) {
        free(body);
        return -1;
    }
    char *start = buf + LWS_PRE;
    int n = snprintf(start, RL_GW_HTTP_HEADROOM,
                     "HTTP/1.1 %u %s\r\ncontent-type: application/json\r\n"
                     "content-length: %zu\r\ncache-control: no-store\r\n%s"
                     "connection: close\r\n\r\n",
                     status, text, blen, extra ? extra : "");
    memcpy(start + n, body, blen);
    int w = lws_write(wsi, (unsigned char *)start, (size_t)n + blen, LWS_WRITE_HTTP);
    free(buf);
    free(body);
    return w < 0 ? -1 : 0;
}

/* The console page with the WS path as a JavaScript string body (", \ and < escaped). */
int rl_http_console_build(const char *ws_path)
{
    const char *mark = strstr(rl_console_html, RL_CONSOLE_PATH_MARK);
    if (!mark)
        return -EINVAL;
    size_t head = (size_t)(mark - rl_console_html), marklen = strlen(RL_CONSOLE_PATH_MARK);
    size_t tail = strlen(mark + marklen), plen = strlen(ws_path);
    char *s = malloc(head + 6 * plen + tail + 1), *p = s;
    if (!s)
        return -ENOMEM;
    memcpy(p, rl_console_html, head);
    p += head;
    for (const char *q = ws_path; *q; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"' || ch == '\\' || ch == '<' || ch < 0x20)
            p += sprintf(p, "\\u%04x", ch);
        else
            *p++ = (char)ch;
    }
    memcpy(p, mark + marklen, tail + 1);
    p += tail;
    gw.console = s;
    gw.console_len = (size_t)(p - s);
    return 0;
}

