/* The server API through Redis: a consumer group on <prefix>api, each entry one rl_api_call.
 *
 * An entry is XADDed by a backend (or redis-cli) with the fields op, user and body (the HTTP
 * API's JSON body). Every node with api.stream reads the stream in the group "relay" under its
 * node id (XREADGROUP ... >), so each entry goes to one node. The node runs it through
 * rl_api_call, the HTTP API's own code, and then one script writes the outcome and acks the entry
 * at once: the hash <prefix>api:result:<entry id> (status, body, node, op, at; expires after
 * stream_result_ttl), an entry on <prefix>api:results (id, status, body, node), and for a status
 * of 400 and above an entry on <prefix>api:dead with the error and the entry's fields. Streams are
 * trimmed with MAXLEN ~ stream_maxlen, the input stream too, on each claim pass.
 *
 * Entries a node took and never acked (it died, or lost Redis before the script ran) stay pending
 * in the group; every node claims pending entries idle for stream_claim_after (XAUTOCLAIM, Redis
 * 6.2+). A claimed entry whose result hash exists already (its node ran it, the ack was lost) is
 * only acked; otherwise it runs again: an operation runs at least once, once unless a node dies
 * between the hub's answer and the script.
 *
 * Reading pauses while RL_API_STREAM_INFLIGHT entries are running here, so a backlog waits in
 * Redis rather than in this node's memory. */
#include "rl_api_stream.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "rl_cluster.h"
#include "rl_log.h"
#include "rl_proc.h"
#include "rl_redis.h"

#define ST_KEY_MAX 256
#define ST_ID_MAX 48       /* a stream id: two 64-bit numbers and a dash */
#define ST_TICK_MS 1000    /* claim pass, trim, retries */

/* KEYS: input stream, result hash, results stream, dead stream. ARGV: group, id, status, body,
   node, ttl ms, maxlen, op, user, entry body, error code, error message, at (ms). */
static const char finish_src[] =
    "redis.call('HSET', KEYS[2], 'status', ARGV[3], 'body', ARGV[4], 'node', ARGV[5], "
    "'op', ARGV[8], 'at', ARGV[13])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[6])\n"
    "redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'id', ARGV[2], 'status', ARGV[3], "
    "'body', ARGV[4], 'node', ARGV[5])\n"
    "if tonumber(ARGV[3]) >= 400 then\n"
    "  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'id', ARGV[2], 'status', ARGV[3], "
    "'error', ARGV[11], 'message', ARGV[12], 'node', ARGV[5], 'op', ARGV[8], 'user', ARGV[9], "
    "'body', ARGV[10])\n"
    "end\n"
    "return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])\n";

/* Outcomes counted in relay_api_stream_entries_total. */
#define ST_OUTCOMES(X) X(OK, "ok") X(FAILED, "failed") X(ACKED, "already_done") X(LOST, "unacked")
enum {
#define ST_ENUM(id, name) ST_##id,
    ST_OUTCOMES(ST_ENUM)
#undef ST_ENUM
    ST_NOUTCOMES
};
static const char *const st_outcome_names[] = {
#define ST_NAME(id, name) name,
    ST_OUTCOMES(ST_NAME)
#undef ST_NAME
};

/* One entry taken from the stream, until its script answered. */
typedef struct st_entry {
    struct st_entry *prev, *next; /* st.entries */
    char id[ST_ID_MAX];
    char op[RL_API_STREAM_OP_MAX + 1];
    char *user, *body;            /* NULL when absent */
    size_t blen;
    const char *bad;              /* set: the entry is malformed, this is why */
} st_entry;

static struct {
    const rl_config *cfg;
    rl_redis *cmd, *blk;
    int started, stopping;
    int reading;                  /* an XREADGROUP is outstanding */
    int group_ok;                 /* the group exists as far as we know */
    int creating;                 /* an XGROUP CREATE is outstanding */
    uv_timer_t tick;
    unsigned ticks;
    char key[ST_KEY_MAX], results[ST_KEY_MAX], dead[ST_KEY_MAX];
    char claim_from[ST_ID_MAX];   /* XAUTOCLAIM's cursor */
    st_entry *entries;
    size_t inflight;
    rl_redis_script_def finish;
    uint64_t outcomes[ST_NOUTCOMES], claimed;
    int claim_warned;
} st;

static void read_next(void);

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static void entry_free(st_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        st.entries = e->next;
    if (e->next)
        e->next->prev = e->prev;
    free(e->user);
    free(e->body);
    free(e);
    st.inflight--;
    read_next(); /* a place is free: reading may resume */
}

static int result_key(char *out, size_t cap, const char *id)
{
    int n = snprintf(out, cap, "%sapi:result:%s", st.cfg->redis_prefix, id);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* ---- the outcome ------------------------------------------------------------------------- */

static void on_finished(const redisReply *r, void *ud)
{
    st_entry *e = ud;
    if (!r || r->type == REDIS_REPLY_ERROR) {
        st.outcomes[ST_LOST]++;
        rl_warn("api", "stream entry %s: the outcome was not written (%s); it stays pending and "
                "will be claimed again", e->id, r ? r->str : "no answer from Redis");
    }
    entry_free(e);
}

/* Writes the outcome of e and acks it (one script), then frees e. */
static void finish(st_entry *e, unsigned status, const char *body, size_t len)
{
    char code[64] = "", msg[512] = "";
    if (status >= 400) {
        cJSON *o = cJSON_ParseWithLength(body, len);
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(err, "code");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        snprintf(code, sizeof code, "%s", cJSON_IsString(c) ? c->valuestring : "internal");
        snprintf(msg, sizeof msg, "%s", cJSON_IsString(m) ? m->valuestring : "");
        cJSON_Delete(o);
    }
    st.outcomes[status >= 400 ? ST_FAILED : ST_OK]++;
    char rkey[ST_KEY_MAX], st_s[8], ttl[24], maxlen[24], at[24];
    snprintf(st_s, sizeof st_s, "%u", status);
    snprintf(ttl, sizeof ttl, "%" PRIu64, st.cfg->api_stream_result_ttl_ms);
    snprintf(maxlen, sizeof maxlen, "%" PRIu64, st.cfg->api_stream_maxlen);
    snprintf(at, sizeof at, "%" PRIu64, wall_ms());
    if (result_key(rkey, sizeof rkey, e->id) < 0) {
        entry_free(e);
        return;
    }
    const char *args[] = {st.key, rkey, st.results, st.dead, RL_API_STREAM_GROUP, e->id, st_s,
                          body, rl_node_id(), ttl, maxlen, e->op, e->user ? e->user : "",
                          e->body ? e->body : "", code, msg, at};
    size_t lens[17];
    for (int i = 0; i < 17; i++)
        lens[i] = strlen(args[i]);
    lens[7] = len;
    lens[13] = e->body ? e->blen : 0;
    if (rl_redis_script(st.cmd, &st.finish, on_finished, e, 4, 17, args, lens) < 0) {
        st.outcomes[ST_LOST]++;
        rl_warn("api", "stream entry %s: Redis is not connected, the outcome is not written; it "
                "stays pending", e->id);
        entry_free(e);
    }
}

/* An answer of rl_api_call. */
static void on_result(unsigned status, const char *body, size_t len, void *ud)
{
    st_entry *e = ud;
    if (st.stopping) { /* the node is going: the entry stays pending for another node */
        entry_free(e);
        return;
    }
    finish(e, status, body, len);
}

static void fail_entry(st_entry *e, const char *code, const char *msg)
{
    cJSON *o = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(err, "code", code);
    cJSON_AddStringToObject(err, "message", msg);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) {
        entry_free(e);
        return;
    }
    finish(e, 400, s, strlen(s));
    free(s);
}

static void run(st_entry *e)
{
    if (e->bad) {
        fail_entry(e, "bad_entry", e->bad);
        return;
    }
    int rc = rl_api_call(e->op, e->user, e->body ? e->body : "", e->body ? e->blen : 0, on_result, e);
    if (rc < 0) /* the API is stopping, or no memory: leave it pending */
        entry_free(e);
}

/* ---- taking entries ---------------------------------------------------------------------- */

static int field_is(const redisReply *f, const char *name)
{
    return f->type == REDIS_REPLY_STRING && f->len == strlen(name) && memcmp(f->str, name, f->len) == 0;
}

/* An entry [id, [field, value, ...]] into a new st_entry (malformed ones get e->bad), linked
   into st.entries. NULL when it is not an entry at all or on OOM. */
static st_entry *take(const redisReply *ent)
{
    if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
        ent->element[0]->type != REDIS_REPLY_STRING || ent->element[0]->len >= ST_ID_MAX)
        return NULL;
    st_entry *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    memcpy(e->id, ent->element[0]->str, ent->element[0]->len);
    e->next = st.entries;
    if (st.entries)
        st.entries->prev = e;
    st.entries = e;
    st.inflight++;
    const redisReply *f = ent->element[1];
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2) {
        e->bad = "the entry has no fields (it was trimmed or deleted)";
        return e;
    }
    int has_op = 0;
    for (size_t i = 0; i < f->elements && !e->bad; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (v->type != REDIS_REPLY_STRING)
            e->bad = "a field value is not a string";
        else if (field_is(k, "op")) {
            if (v->len == 0 || v->len > RL_API_STREAM_OP_MAX || memchr(v->str, 0, v->len))
                e->bad = "op must be message, broadcast, disconnect, user or nodes";
            else
                memcpy(e->op, v->str, v->len);
            has_op = 1;
        } else if (field_is(k, "user")) {
            if (v->len > RL_API_USER_MAX || memchr(v->str, 0, v->len))
                e->bad = "user must be 1 to 256 bytes";
            else if (!(e->user = strndup(v->str, v->len)))
                e->bad = "out of memory";
        } else if (field_is(k, "body")) {
            if (v->len > st.cfg->api_max_body)
                e->bad = "body exceeds api.max_body";
            else if (!(e->body = malloc(v->len + 1)))
                e->bad = "out of memory";
            else {
                memcpy(e->body, v->str, v->len);
                e->body[v->len] = '\0';
                e->blen = v->len;
            }
        } else {
            e->bad = "unknown field (an entry has op, user and body)";
        }
    }
    if (!e->bad && !has_op)
        e->bad = "the entry has no op field";
    return e;
}

static int in_flight(const char *id, size_t len)
{
    for (st_entry *e = st.entries; e; e = e->next)
        if (strlen(e->id) == len && memcmp(e->id, id, len) == 0)
            return 1;
    return 0;
}

static void on_group(const redisReply *r, void *ud)
{
    (void)ud;
    st.creating = 0;
    if (r && (r->type != REDIS_REPLY_ERROR || strncmp(r->str, "BUSYGROUP", 9) == 0)) {
        st.group_ok = 1;
        read_next();
    } else if (r) {
        rl_error("api", "stream %s: XGROUP CREATE failed: %s", st.key, r->str);
    }
}

static void ensure_group(void)
{
    if (st.creating || st.stopping)
        return;
    if (rl_redis_command(st.cmd, on_group, NULL, "XGROUP CREATE %s %s 0 MKSTREAM", st.key,
                         RL_API_STREAM_GROUP) == 0)
        st.creating = 1;
}

static void on_read(const redisReply *r, void *ud)
{
    (void)ud;
    st.reading = 0;
    if (st.stopping)
        return;
    if (!r)
        return; /* the connection went; its state callback reads again */
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOGROUP", 7) != 0)
            rl_warn("api", "stream %s: XREADGROUP: %s", st.key, r->str);
        st.group_ok = 0; /* the tick creates it and reads again */
        ensure_group();
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t s = 0; s < r->elements; s++) {
            const redisReply *sr = r->element[s];
            if (sr->type != REDIS_REPLY_ARRAY || sr->elements != 2 ||
                sr->element[1]->type != REDIS_REPLY_ARRAY)
                continue;
            for (size_t i = 0; i < sr->element[1]->elements; i++) {
                st_entry *e = take(sr->element[1]->element[i]);
                if (e)
                    run(e);
            }
        }
    read_next();
}

static void read_next(void)
{
    if (!st.started || st.stopping || st.reading || !st.group_ok || !rl_redis_connected(st.blk) ||
        st.inflight >= RL_API_STREAM_INFLIGHT)
        return;
    size_t room = RL_API_STREAM_INFLIGHT - st.inflight;
    char count[16], block[16];
    snprintf(count, sizeof count, "%zu", room < RL_API_STREAM_BATCH ? room : RL_API_STREAM_BATCH);
    snprintf(block, sizeof block, "%d", RL_API_STREAM_BLOCK_MS);
    const char *argv[] = {"XREADGROUP", "GROUP", RL_API_STREAM_GROUP, rl_node_id(), "COUNT",
                          count, "BLOCK", block, "STREAMS", st.key, ">"};
    if (rl_redis_commandargv(st.blk, RL_API_STREAM_BLOCK_MS + 3000, on_read, NULL, 11, argv,
                             NULL) == 0)
        st.reading = 1;
}

static void on_blk_state(rl_redis *r, int connected, void *ud)
{
    (void)r;
    (void)ud;
    if (connected)
        read_next();
}

static void on_cmd_state(rl_redis *r, int connected, void *ud)
{
    (void)r;
    (void)ud;
    if (connected)
        ensure_group();
}

/* ---- claiming what dead consumers held ------------------------------------------------------ */

static void on_claim_check(const redisReply *r, void *ud)
{
    st_entry *e = ud;
    if (st.stopping || !r || r->type != REDIS_REPLY_INTEGER) {
        entry_free(e); /* still pending: the next pass tries again */
        return;
    }
    if (r->integer == 0) {
        run(e);
        return;
    }
    /* its node ran it and wrote the outcome; only the ack was lost */
    st.outcomes[ST_ACKED]++;
    rl_redis_command(st.cmd, NULL, NULL, "XACK %s %s %s", st.key, RL_API_STREAM_GROUP, e->id);
    entry_free(e);
}

static void on_claim(const redisReply *r, void *ud)
{
    (void)ud;
    if (st.stopping || !r || r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOGROUP", 7) == 0) {
            st.group_ok = 0;
            ensure_group();
        } else if (r && r->type == REDIS_REPLY_ERROR && !st.claim_warned) {
            /* once: before Redis 6.2 there is no XAUTOCLAIM, and this would repeat every tick */
            st.claim_warned = 1;
            rl_warn("api", "stream %s: XAUTOCLAIM failed, entries of dead consumers are not "
                    "claimed (Redis 6.2 or later is needed): %s", st.key, r->str);
        }
        return;
    }
    snprintf(st.claim_from, sizeof st.claim_from, "%.*s", (int)r->element[0]->len,
             r->element[0]->str);
    const redisReply *list = r->element[1];
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *ent = list->element[i];
        if (ent->type != REDIS_REPLY_ARRAY || ent->elements != 2 ||
            ent->element[0]->type != REDIS_REPLY_STRING ||
            in_flight(ent->element[0]->str, ent->element[0]->len))
            continue; /* running here already (it went idle while its hub was slow) */
        st_entry *e = take(ent);
        if (!e)
            continue;
        st.claimed++;
        rl_info("api", "stream entry %s: claimed after %" PRIu64 " ms idle", e->id,
                st.cfg->api_stream_claim_after_ms);
        char rkey[ST_KEY_MAX];
        if (result_key(rkey, sizeof rkey, e->id) < 0 ||
            rl_redis_command(st.cmd, on_claim_check, e, "EXISTS %s", rkey) < 0)
            entry_free(e);
    }
}

static void tick(uv_timer_t *t)
{
    (void)t;
    if (st.stopping || !rl_redis_connected(st.cmd))
        return;
    if (!st.group_ok) {
        ensure_group();
        return;
    }
    read_next(); /* after an error reply, reading resumes here */
    st.ticks++;
    if (st.ticks % 10 == 0) {
        char maxlen[24];
        snprintf(maxlen, sizeof maxlen, "%" PRIu64, st.cfg->api_stream_maxlen);
        rl_redis_command(st.cmd, NULL, NULL, "XTRIM %s MAXLEN ~ %s", st.key, maxlen);
    }
    if (st.inflight + RL_API_STREAM_BATCH > RL_API_STREAM_INFLIGHT)
        return;
    char idle[24], count[16];
    snprintf(idle, sizeof idle, "%" PRIu64, st.cfg->api_stream_claim_after_ms);
    snprintf(count, sizeof count, "%d", RL_API_STREAM_BATCH);
    const char *argv[] = {"XAUTOCLAIM", st.key, RL_API_STREAM_GROUP, rl_node_id(), idle,
                          st.claim_from, "COUNT", count};
    rl_redis_commandargv(st.cmd, 0, on_claim, NULL, 8, argv, NULL);
}

/* ---- start, stop, metrics ---------------------------------------------------------------- */

int rl_api_stream_start(const rl_config *c, char *err, size_t errlen)
{
    if (st.started)
        return -EINVAL;
    if (!c->redis_url) {
        snprintf(err, errlen, "api.stream needs redis (relay.node redis or --redis)");
        return -EINVAL;
    }
    memset(&st, 0, sizeof st);
    st.cfg = c;
    snprintf(st.key, sizeof st.key, "%sapi", c->redis_prefix);
    snprintf(st.results, sizeof st.results, "%sapi:results", c->redis_prefix);
    snprintf(st.dead, sizeof st.dead, "%sapi:dead", c->redis_prefix);
    snprintf(st.claim_from, sizeof st.claim_from, "0-0");
    rl_redis_script_init(&st.finish, "api_stream_finish", finish_src);
    if (!(st.cmd = rl_redis_new(rl_node_loop(), c->redis_url, "api", err, errlen)))
        return -EINVAL;
    if (!(st.blk = rl_redis_new(rl_node_loop(), c->redis_url, "api-block", err, errlen))) {
        rl_redis_free(st.cmd);
        st.cmd = NULL;
        return -EINVAL;
    }
    rl_redis_set_state_cb(st.cmd, on_cmd_state, NULL);
    rl_redis_set_state_cb(st.blk, on_blk_state, NULL);
    uv_timer_init(rl_node_loop(), &st.tick);
    uv_timer_start(&st.tick, tick, ST_TICK_MS, ST_TICK_MS);
    st.started = 1;
    return 0;
}

void rl_api_stream_stop(void)
{
    if (!st.started || st.stopping)
        return;
    st.stopping = 1;
    uv_timer_stop(&st.tick);
    uv_close((uv_handle_t *)&st.tick, NULL);
    rl_redis_free(st.blk); /* blocked in XREADGROUP: free, not close (rl_redis.h) */
    st.blk = NULL;
    rl_redis_close(st.cmd, 1000); /* outcomes on the wire are still written */
    st.cmd = NULL;
}

void rl_api_stream_metrics(rl_metrics_out *out)
{
    rl_metrics_put(out, "# HELP relay_api_stream_entries_total Server API stream entries, by "
                        "outcome\n# TYPE relay_api_stream_entries_total counter\n");
    for (int i = 0; i < ST_NOUTCOMES; i++)
        rl_metrics_put(out, "relay_api_stream_entries_total{outcome=\"%s\"} %" PRIu64 "\n",
                       st_outcome_names[i], st.outcomes[i]);
    rl_metrics_put(out, "# HELP relay_api_stream_claimed_total Stream entries claimed from "
                        "another consumer\n# TYPE relay_api_stream_claimed_total counter\n"
                        "relay_api_stream_claimed_total %" PRIu64 "\n", st.claimed);
    rl_metrics_gauge(out, "relay_api_stream_inflight", "Stream entries running on this node",
                     st.inflight);
}

/* ---- the cluster's user list ------------------------------------------------------------ */

typedef struct users_call {
    rl_api_users_cb cb;
    void *ud;
    size_t plen; /* length of "<prefix>{" */
} users_call;

static void on_scan(const redisReply *r, void *ud)
{
    users_call *c = ud;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
        c->cb(NULL, 0, c->ud);
        free(c);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(o, "users");
    const redisReply *keys = r->element[1];
    static const char tail[] = "}:lease";
    for (size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];
        size_t tl = sizeof tail - 1;
        if (k->type != REDIS_REPLY_STRING || k->len <= c->plen + tl)
            continue;
        char *u = strndup(k->str + c->plen, k->len - c->plen - tl);
        if (u)
            cJSON_AddItemToArray(list, cJSON_CreateString(u));
        free(u);
    }
    char cur[40];
    snprintf(cur, sizeof cur, "%.*s", (int)r->element[0]->len, r->element[0]->str);
    cJSON_AddStringToObject(o, "cursor", cur);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    c->cb(s, s ? strlen(s) : 0, c->ud);
    free(s);
    free(c);
}

int rl_api_cluster_users(const char *cursor, unsigned count, rl_api_users_cb cb, void *ud)
{
    const rl_config *cfg = rl_api_config();
    rl_redis *r = rl_cluster_redis();
    if (!cfg || !r)
        return -EHOSTUNREACH;
    /* the prefix as a glob: its special characters escaped */
    char pattern[ST_KEY_MAX], *p = pattern;
    for (const char *s = cfg->redis_prefix; *s && p < pattern + sizeof pattern - 16; s++) {
        if (strchr("*?[]\\", *s))
            *p++ = '\\';
        *p++ = *s;
    }
    snprintf(p, (size_t)(pattern + sizeof pattern - p), "{*}:lease");
    users_call *c = calloc(1, sizeof *c);
    if (!c)
        return -ENOMEM;
    c->cb = cb;
    c->ud = ud;
    c->plen = strlen(cfg->redis_prefix) + 1;
    char cnt[16];
    snprintf(cnt, sizeof cnt, "%u", count * 10); /* COUNT counts keys looked at, not matches */
    const char *argv[] = {"SCAN", cursor[0] ? cursor : "0", "MATCH", pattern, "COUNT", cnt};
    int rc = rl_redis_commandargv(r, 0, on_scan, c, 6, argv, NULL);
    if (rc < 0)
        free(c);
    return rc;
}
