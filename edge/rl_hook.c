/* The connect hook (relay.node connect_hook): before a user joins, the node POSTs who it is to
 * the backend and waits for "accept" (with metadata merged into user_metadata) or "deny", like
 * Centrifugo's connect proxy. The request is built at the handshake (lws drops the request
 * headers at the upgrade) and sent once the WebSocket is established; the connection waits in
 * RL_CONN_HOOK, reading nothing, until the answer or the timeout (core/rl_http_client: nothing
 * blocks the loop). What the client sees is in docs/protocol.md. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rl_edge.h"
#include "rl_envelope.h"
#include "rl_http_client.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_metrics.h"

#define HOOK_ANSWER_MAX (64u << 10) /* bytes of the backend's answer */
#define HOOK_HEADER_MAX 8192        /* bytes of one header value passed on */
#define HOOK_REASON_MAX 120         /* bytes of a deny reason shown to the client */

struct rl_hook {
    rl_conn *c;
    rl_hc_req *req;
    char *user_id, *meta_json, *scope; /* the handshake's identity, until the answer */
};

/* ---- the request, at the handshake -------------------------------------------------------- */

static int b64url_val(int ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    return ch == '-' ? 62 : ch == '_' ? 63 : -1;
}

char *rl_hook_claims(const char *token)
{
    const char *p = token ? strchr(token, '.') : NULL;
    const char *e = p ? strchr(p + 1, '.') : NULL;
    if (!e)
        return NULL;
    p++;
    size_t n = (size_t)(e - p);
    char *out = malloc(n * 3 / 4 + 4);
    if (!out)
        return NULL;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)p[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    out[o] = '\0';
    return out; /* verified by rl_jwt_verify: one JSON object */
}

/* A growing JSON text; on OOM it stops growing and fails at the end. */
typedef struct jbuf {
    char *s;
    size_t len, cap;
    int oom;
} jbuf;

static void jb_add(jbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 512;
        while (nc < b->len + n + 1)
            nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void jb_str(jbuf *b, const char *s, size_t n)
{
    size_t need = rl_json_escape(NULL, 0, s, n);
    char *t = malloc(need + 1);
    if (!t) {
        b->oom = 1;
        return;
    }
    rl_json_escape(t, need + 1, s, n);
    jb_add(b, t, need);
    free(t);
}

static void jb_lit(jbuf *b, const char *s) { jb_add(b, s, strlen(s)); }

/* Copies header name (as configured) of the request into out; its length or -1 if absent. */
static int header_get(struct lws *wsi, const char *name, char *out, int cap)
{
    char lname[128];
    size_t n = strlen(name);
    if (n + 2 > sizeof lname)
        return -1;
    for (size_t i = 0; i < n; i++)
        lname[i] = (char)tolower((unsigned char)name[i]);
    lname[n] = ':';
    lname[n + 1] = '\0';
    for (int t = 0; t < WSI_TOKEN_COUNT; t++) {
        const unsigned char *ts = lws_token_to_string((enum lws_token_indexes)t);
        if (ts && strcmp((const char *)ts, lname) == 0) {
            if (lws_hdr_total_length(wsi, (enum lws_token_indexes)t) <= 0)
                return -1;
            return lws_hdr_copy(wsi, out, cap, (enum lws_token_indexes)t);
        }
    }
    return lws_hdr_custom_copy(wsi, out, cap, lname, (int)n + 1);
}

char *rl_hook_body(struct lws *wsi, const char *user_id, const char *meta_json,
                   const char *scope, const char *claims, size_t *len)
{
    jbuf b = {0};
    jb_lit(&b, "{\"user_id\":");
    jb_str(&b, user_id, strlen(user_id));
    jb_lit(&b, ",\"meta\":");
    jb_lit(&b, meta_json ? meta_json : "null");
    jb_lit(&b, ",\"scope\":");
    if (scope)
        jb_str(&b, scope, strlen(scope));
    else
        jb_lit(&b, "null");
    jb_lit(&b, ",\"claims\":");
    jb_lit(&b, claims ? claims : "null");
    jb_lit(&b, ",\"headers\":{");
    char *val = malloc(HOOK_HEADER_MAX);
    if (!val)
        b.oom = 1;
    int first = 1;
    for (size_t i = 0; val && i < gw.cfg->nhook_headers; i++) {
        const char *name = gw.cfg->hook_headers[i];
        int n = header_get(wsi, name, val, HOOK_HEADER_MAX);
        if (n < 0)
            continue;
        if (!first)
            jb_lit(&b, ",");
        first = 0;
        char lname[128];
        snprintf(lname, sizeof lname, "%s", name);
        for (char *q = lname; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        jb_str(&b, lname, strlen(lname));
        jb_lit(&b, ":");
        jb_str(&b, val, (size_t)n);
    }
    free(val);
    char peer[64] = "";
    lws_get_peer_simple(wsi, peer, sizeof peer);
    jb_lit(&b, "},\"client\":{\"ip\":");
    jb_str(&b, peer, strlen(peer));
    jb_lit(&b, "},\"node\":");
    jb_str(&b, rl_node_id(), strlen(rl_node_id()));
    jb_lit(&b, ",\"transport\":\"websocket\"}");
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    *len = b.len;
    return b.s;
}

/* ---- the answer --------------------------------------------------------------------------- */

/* End of the JSON value starting at s[i] (text already validated as JSON); i at a non-blank. */
static size_t value_end(const char *s, size_t len, size_t i)
{
    int depth = 0;
    while (i < len) {
        char ch = s[i];
        if (ch == '"') {
            for (i++; i < len && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            i++;
            if (depth == 0)
                return i;
            continue;
        }
        if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (--depth == 0)
                return i + 1;
            if (depth < 0)
                return i;
        } else if (depth == 0 && (ch == ',' || ch == ' ' || ch == '\t' || ch == '\r' ||
                                  ch == '\n')) {
            return i;
        }
        i++;
    }
    return i;
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return i;
}

typedef struct member {
    const char *key;  /* unescaped, malloc'd */
    const char *text; /* "key":value as written */
    size_t len;
    const char *val; /* the value as written */
    size_t vlen;
} member;

/* Splits a JSON object's text (validated) into its top-level members. Returns the count, or -1
   on OOM; *out is malloc'd (free the keys and it). */
static int members(const char *s, size_t len, member **out)
{
    size_t cap = 8, n = 0;
    member *m = malloc(cap * sizeof *m);
    if (!m)
        return -1;
    size_t i = skip_ws(s, len, 0) + 1; /* past '{' */
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len || s[i] == '}')
            break;
        if (s[i] == ',') {
            i++;
            continue;
        }
        size_t ks = i, ke = value_end(s, len, i); /* the key string, quotes included */
        i = skip_ws(s, len, ke);
        i = skip_ws(s, len, i + 1); /* past ':' */
        size_t ve = value_end(s, len, i);
        if (n == cap) {
            member *nm = realloc(m, (cap *= 2) * sizeof *m);
            if (!nm)
                goto oom;
            m = nm;
        }
        char *key = malloc(ke - ks);
        if (!key || rl_env_unescape(s + ks + 1, ke - ks - 2, key, ke - ks) < 0) {
            free(key);
            goto oom;
        }
        m[n++] = (member){key, s + ks, ve - ks, s + i, ve - i};
        i = ve;
    }
    *out = m;
    return (int)n;
oom:
    for (size_t k = 0; k < n; k++)
        free((char *)m[k].key);
    free(m);
    return -1;
}

/* The token's meta with the hook's members laid over it (top-level keys; the hook wins), as
   JSON text written from the two texts as they are (numbers keep their digits). malloc'd, or
   NULL on OOM. */
static char *meta_merge(const char *base, const char *over, size_t over_len)
{
    member *bm = NULL, *om = NULL;
    int nb = base ? members(base, strlen(base), &bm) : 0;
    int no = members(over, over_len, &om);
    jbuf b = {0};
    if (nb < 0 || no < 0)
        b.oom = 1;
    jb_lit(&b, "{");
    int first = 1;
    for (int i = 0; !b.oom && i < nb; i++) {
        int replaced = 0;
        for (int j = 0; j < no && !replaced; j++)
            replaced = strcmp(bm[i].key, om[j].key) == 0;
        if (replaced)
            continue;
        if (!first)
            jb_lit(&b, ",");
        first = 0;
        jb_add(&b, bm[i].text, bm[i].len);
    }
    for (int j = 0; !b.oom && j < no; j++) {
        if (!first)
            jb_lit(&b, ",");
        first = 0;
        jb_add(&b, om[j].text, om[j].len);
    }
    jb_lit(&b, "}");
    for (int i = 0; i < nb; i++)
        free((char *)bm[i].key);
    for (int j = 0; j < no; j++)
        free((char *)om[j].key);
    free(bm);
    free(om);
    if (b.oom) {
        free(b.s);
        return NULL;
    }
    return b.s;
}

/* Reads the backend's answer: the outcome, the merged metadata (ACCEPT, malloc'd or NULL for
   "unchanged") and the reason (static or in why). */
static rl_hook_outcome read_answer(const rl_hook *h, const rl_hc_result *r, char **meta,
                                   char *why, size_t whylen)
{
    *meta = NULL;
    if (!r->status) {
        snprintf(why, whylen, "%s", r->error);
        return RL_HOOK_FAIL;
    }
    if (r->status == 401 || r->status == 403) {
        snprintf(why, whylen, "Refused by the application");
        return RL_HOOK_DENY;
    }
    if (r->status < 200 || r->status > 299) {
        snprintf(why, whylen, "backend answered %d", r->status);
        return RL_HOOK_FAIL;
    }
    cJSON *j = rl_json_parse(r->body, r->body_len);
    const cJSON *res = j ? cJSON_GetObjectItemCaseSensitive(j, "result") : NULL;
    rl_hook_outcome o = RL_HOOK_FAIL;
    if (!cJSON_IsObject(j) || !cJSON_IsString(res)) {
        snprintf(why, whylen, "backend answer is not {\"result\": \"accept\"|\"deny\"}");
    } else if (strcmp(res->valuestring, "deny") == 0) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(j, "reason");
        const char *reason = cJSON_IsString(rs) ? rs->valuestring : "";
        size_t n = strlen(reason);
        if (n > HOOK_REASON_MAX) { /* cut at a character boundary */
            n = HOOK_REASON_MAX;
            while (n && ((unsigned char)reason[n] & 0xc0) == 0x80)
                n--;
        }
        if (!n || !rl_env_utf8_valid(reason, n)) /* it goes into a text frame */
            reason = "Refused by the application", n = strlen(reason);
        snprintf(why, whylen, "%.*s", (int)n, reason);
        o = RL_HOOK_DENY;
    } else if (strcmp(res->valuestring, "accept") == 0) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "meta");
        o = RL_HOOK_ACCEPT;
        if (m && !cJSON_IsNull(m)) {
            if (!cJSON_IsObject(m)) {
                snprintf(why, whylen, "backend answer: meta is not an object");
                o = RL_HOOK_FAIL;
            } else {
                /* the member's own text (numbers keep their digits), found with the splitter */
                member *am = NULL;
                int na = members(r->body, r->body_len, &am);
                const char *mt = NULL;
                size_t ml = 0;
                for (int i = 0; i < na && !mt; i++)
                    if (strcmp(am[i].key, "meta") == 0)
                        mt = am[i].val, ml = am[i].vlen;
                *meta = mt ? meta_merge(h->meta_json, mt, ml) : NULL;
                for (int i = 0; i < na; i++)
                    free((char *)am[i].key);
                free(am);
                rl_envelope env;
                if (!*meta) {
                    snprintf(why, whylen, "out of memory");
                    o = RL_HOOK_FAIL;
                } else if (rl_env_scan(*meta, strlen(*meta), &env) != RL_ENV_OK) {
                    /* what the plugins decode: UTF-8, the node's JSON, its depth bound */
                    snprintf(why, whylen, "backend answer: meta is not valid (%s)",
                             env.why ? env.why : "not an object");
                    free(*meta);
                    *meta = NULL;
                    o = RL_HOOK_FAIL;
                }
            }
        }
    } else {
        snprintf(why, whylen, "backend answer: result '%.40s' is not accept or deny",
                 res->valuestring);
    }
    cJSON_Delete(j);
    return o;
}

static void on_answer(void *ud, const rl_hc_result *r)
{
    rl_hook *h = ud;
    h->req = NULL;
    char why[160], *meta = NULL;
    rl_hook_outcome o = read_answer(h, r, &meta, why, sizeof why);
    rl_conn_hook_done(h->c, o, meta, why); /* frees h */
    free(meta);
}

int rl_hook_start(rl_conn *c, char *user_id, char *meta_json, char *scope, char *body,
                  size_t len)
{
    rl_hook *h = calloc(1, sizeof *h);
    if (!h) {
        free(body);
        return -ENOMEM;
    }
    const rl_config *cfg = gw.cfg;
    uint64_t t = cfg->hook_timeout_ms;
    if (cfg->handshake_timeout_ms && cfg->handshake_timeout_ms < t)
        t = cfg->handshake_timeout_ms;
    static const char *const hdrs[] = {"Content-Type: application/json",
                                       "Accept: application/json"};
    rl_hc_opts o = {
        .kind = RL_HC_HOOK,
        .method = "POST",
        .url = cfg->hook_url,
        .headers = hdrs,
        .nheaders = 2,
        .body = body,
        .body_len = len,
        .timeout_ms = t,
        .max_response = HOOK_ANSWER_MAX,
    };
    h->c = c;
    int rc = rl_hc_start(&o, on_answer, h, &h->req);
    free(body);
    if (rc < 0) {
        free(h);
        return rc;
    }
    h->user_id = user_id;
    h->meta_json = meta_json;
    h->scope = scope;
    c->hook = h;
    c->hooked = 1;
    c->state = RL_CONN_HOOK;
    lws_rx_flow_control(c->wsi, 0); /* the client's frames wait in the socket until the answer */
    return 0;
}

void rl_hook_take(rl_hook *h, char **user_id, char **meta_json, char **scope)
{
    *user_id = h->user_id;
    *meta_json = h->meta_json;
    *scope = h->scope;
    h->user_id = h->meta_json = h->scope = NULL;
}

void rl_hook_free(rl_hook *h)
{
    if (!h)
        return;
    rl_hc_cancel(h->req);
    free(h->user_id);
    free(h->meta_json);
    free(h->scope);
    free(h);
}
