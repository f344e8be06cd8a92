/* The cluster's atomic Redis scripts, key names and reply parsers (see rl_cluster_scripts.h). */
#include "rl_cluster_scripts.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* alive(prefix, node, inc): the node key exists and, when inc is given, holds that incarnation.
   Values that are not our JSON count as alive (never reclaim what we cannot read). */
#define LUA_ALIVE                                                                                 \
    "local function alive(prefix, node, inc)\n"                                                   \
    "  local v = redis.call('GET', prefix .. node)\n"                                            \
    "  if not v then return false end\n"                                                          \
    "  if not inc or inc == '' then return true end\n"                                            \
    "  local ok, t = pcall(cjson.decode, v)\n"                                                    \
    "  if ok and type(t) == 'table' and type(t.incarnation) == 'string' then\n"                   \
    "    return t.incarnation == inc\n"                                                           \
    "  end\n"                                                                                     \
    "  return true\n"                                                                             \
    "end\n"

static const char src_admit[] =
    LUA_ALIVE
    "local conns, pid, node, limit, prefix = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]\n"
    "local deadline, registry, grace = tonumber(ARGV[5] or '0') or 0, ARGV[6] or '', tonumber(ARGV[7] or '0') or 0\n"
    "local now = 0\n"
    "if deadline > 0 or grace > 0 then\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "  if deadline > 0 and now > deadline then return {-2, 0} end\n"
    "end\n"
    "local all = redis.call('HGETALL', conns)\n"
    "local cache, n, present = {}, 0, false\n"
    "for i = 1, #all, 2 do\n"
    "  local p, nd = all[i], all[i + 1]\n"
    "  local inc = string.match(p, '^[^.]+%.([^.]+)%.') or ''\n"
    "  local k = nd .. '|' .. inc\n"
    "  local ok = cache[k]\n"
    "  if ok == nil then ok = alive(prefix, nd, inc); cache[k] = ok end\n"
    "  if ok then\n"
    "    n = n + 1\n"
    "    if p == pid then present = true end\n"
    "  else\n"
    "    redis.call('HDEL', conns, p)\n"
    "  end\n"
    "end\n"
    "if pid == '' then return {0, n} end\n"
    "if present then return {1, n} end\n"
    "if grace > 0 and registry ~= '' then\n"
    "  local reg = tonumber(redis.call('GET', registry) or '0') or 0\n"
    "  if reg > 0 and now - reg < grace then return {-1, n} end\n"
    "end\n"
    "if limit == nil or limit <= 0 or n < limit then\n"
    "  redis.call('HSET', conns, pid, node)\n"
    "  return {1, n + 1}\n"
    "end\n"
    "return {0, n}\n";

static const char src_reassert[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local deadline = tonumber(ARGV[2]) or 0\n"
    "if deadline > 0 and now > deadline then return {-2, 0} end\n"
    "local added = 0\n"
    "for i = 3, #ARGV do added = added + redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end\n"
    "return {1, added}\n";

static const char src_release_conn[] =
    "local removed = redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "return {removed, redis.call('HLEN', KEYS[1])}\n";

static const char src_lease_acquire[] =
    LUA_ALIVE
    "local lease, epoch, registry = KEYS[1], KEYS[2], KEYS[3]\n"
    "local node, inc, hub, ttl, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if not alive(prefix, node, inc) then return {0, 0, '', '', ''} end\n"
    "local v = redis.call('GET', lease)\n"
    "if v then\n"
    "  local hn, hi, he, hp = string.match(v, '^([^|]*)|([^|]*)|([^|]*)|(.*)$')\n"
    "  if hn == node and hi == inc then\n"
    "    redis.call('PERSIST', lease)\n"
    "    return {2, tonumber(he) or 0, hp, hn, hi}\n"
    "  end\n"
    "  if hn and alive(prefix, hn, hi) then\n"
    "    return {0, tonumber(he) or 0, hp, hn, hi}\n"
    "  end\n"
    "end\n"
    "local reg = tonumber(redis.call('GET', registry) or '0') or 0\n"
    "if now - reg < tonumber(ttl) then return {0, 0, '', '', ''} end\n"
    "local e = redis.call('INCR', epoch)\n"
    "if e < now then e = now; redis.call('SET', epoch, e) end\n"
    "redis.call('SET', lease, node .. '|' .. inc .. '|' .. e .. '|' .. hub)\n"
    "return {1, e, hub, node, inc}\n";

static const char src_lease_renew[] =
    "local out = {}\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local want = ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3 + i] .. '|'\n"
    "  local v = redis.call('GET', key)\n"
    "  if v and string.sub(v, 1, #want) == want then\n"
    "    redis.call('PERSIST', key)\n"
    "    out[i] = 1\n"
    "  else\n"
    "    out[i] = 0\n"
    "  end\n"
    "end\n"
    "return out\n";

static const char src_lease_release[] =
    "local want = ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3] .. '|'\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "if v and string.sub(v, 1, #want) == want then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  if redis.call('HGET', KEYS[2], 'epoch') == ARGV[3] then redis.call('DEL', KEYS[2]) end\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

static const char src_heartbeat[] =
    "local key, nodes = KEYS[1], KEYS[2]\n"
    "local node, inc = ARGV[1], ARGV[2]\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  redis.call('SET', KEYS[3], ARGV[7] == '1' and now or 0)\n"
    "end\n"
    "local res = 2\n"
    "local old = redis.call('GET', key)\n"
    "if old then\n"
    "  res = 1\n"
    "  local ok, o = pcall(cjson.decode, old)\n"
    "  if not ok or type(o) ~= 'table' or o.incarnation ~= inc then res = 3 end\n"
    "end\n"
    "local info = cjson.encode({addr = ARGV[3], incarnation = inc,\n"
    "                           started_at = tonumber(ARGV[4]), version = ARGV[5]})\n"
    "redis.call('SET', key, info, 'PX', ARGV[6])\n"
    "redis.call('ZADD', nodes, now, node)\n"
    "redis.call('ZREMRANGEBYSCORE', nodes, '-inf', now - 3600000)\n"
    "return res\n";

static const char src_node_leave[] =
    "local old = redis.call('GET', KEYS[1])\n"
    "if old then\n"
    "  local ok, o = pcall(cjson.decode, old)\n"
    "  if ok and type(o) == 'table' and o.incarnation ~= ARGV[2] then return 0 end\n"
    "  redis.call('DEL', KEYS[1])\n"
    "end\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "return 1\n";

static const struct {
    const char *name, *src;
    int nkeys;
} defs[RL_CS_COUNT] = {
#define RL_CS_ROW(id, name, nkeys) [RL_CS_##id] = {#name, src_##name, nkeys},
    RL_CLUSTER_SCRIPTS(RL_CS_ROW)
#undef RL_CS_ROW
};

static rl_redis_script_def scripts[RL_CS_COUNT];
static int scripts_ready;

void rl_cluster_scripts_init(void)
{
    if (scripts_ready)
        return;
    for (int i = 0; i < RL_CS_COUNT; i++)
        rl_redis_script_init(&scripts[i], defs[i].name, defs[i].src);
    scripts_ready = 1;
}

const rl_redis_script_def *rl_cluster_script(rl_cs_id id)
{
    rl_cluster_scripts_init();
    return (unsigned)id < RL_CS_COUNT ? &scripts[id] : NULL;
}

int rl_cluster_script_nkeys(rl_cs_id id) { return (unsigned)id < RL_CS_COUNT ? defs[id].nkeys : -1; }

/* ------------------------------------------------------------------------------------------ */

static int fmt_key(char *out, size_t n, int len)
{
    if (len < 0 || (size_t)len >= n) {
        if (n)
            out[0] = 0;
        return -ENAMETOOLONG;
    }
    return len;
}

int rl_ckey_user(char *out, size_t n, const char *prefix, const char *user, const char *what)
{
    return fmt_key(out, n, snprintf(out, n, "%s{%s}:%s", prefix, user, what));
}

int rl_ckey_node(char *out, size_t n, const char *prefix, const char *node)
{
    return fmt_key(out, n, snprintf(out, n, "%snode:%s", prefix, node));
}

int rl_ckey_nodes(char *out, size_t n, const char *prefix)
{
    return fmt_key(out, n, snprintf(out, n, "%snodes", prefix));
}

int rl_ckey_registry(char *out, size_t n, const char *prefix)
{
    return fmt_key(out, n, snprintf(out, n, "%sregistry", prefix));
}

int rl_ckey_inbox(char *out, size_t n, const char *prefix, const char *node)
{
    return fmt_key(out, n, snprintf(out, n, "%sinbox:%s", prefix, node));
}

static int run(rl_redis *r, rl_cs_id id, rl_redis_cb cb, void *ud, int nargs, const char **args)
{
    return rl_redis_script(r, rl_cluster_script(id), cb, ud, defs[id].nkeys, nargs, args, NULL);
}

int rl_cs_admit(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                const char *node, int limit, rl_redis_cb cb, void *ud)
{
    return rl_cs_admit_until(r, prefix, user, conn_pid, node, limit, 0, 0, cb, ud);
}

int rl_cs_admit_until(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                      const char *node, int limit, uint64_t deadline_ms, uint64_t grace_ms,
                      rl_redis_cb cb, void *ud)
{
    char conns[RL_CKEY_MAX], np[RL_CKEY_MAX], reg[RL_CKEY_MAX], lim[16], dl[24], gr[24];
    if (rl_ckey_user(conns, sizeof conns, prefix, user, "conns") < 0 ||
        rl_ckey_node(np, sizeof np, prefix, "") < 0 || rl_ckey_registry(reg, sizeof reg, prefix) < 0)
        return -ENAMETOOLONG;
    snprintf(lim, sizeof lim, "%d", limit);
    snprintf(dl, sizeof dl, "%" PRIu64, deadline_ms);
    snprintf(gr, sizeof gr, "%" PRIu64, grace_ms);
    const char *a[] = {conns, conn_pid, node, lim, np, dl, reg, gr};
    return run(r, RL_CS_ADMIT, cb, ud, 8, a);
}

int rl_cs_reassert(rl_redis *r, const char *prefix, const char *user, const char *node, size_t n,
                   const char *const *conn_pids, uint64_t deadline_ms, rl_redis_cb cb, void *ud)
{
    char conns[RL_CKEY_MAX], dl[24];
    if (n == 0 || n > RL_CS_REASSERT_MAX)
        return -EINVAL;
    if (rl_ckey_user(conns, sizeof conns, prefix, user, "conns") < 0)
        return -ENAMETOOLONG;
    snprintf(dl, sizeof dl, "%" PRIu64, deadline_ms);
    const char *a[RL_CS_REASSERT_MAX + 3] = {conns, node, dl};
    for (size_t i = 0; i < n; i++)
        a[3 + i] = conn_pids[i];
    return run(r, RL_CS_REASSERT, cb, ud, (int)n + 3, a);
}

int rl_cs_purge_conns(rl_redis *r, const char *prefix, const char *user, rl_redis_cb cb, void *ud)
{
    return rl_cs_admit(r, prefix, user, "", "", 0, cb, ud);
}

int rl_cs_release_conn(rl_redis *r, const char *prefix, const char *user, const char *conn_pid,
                       rl_redis_cb cb, void *ud)
{
    char conns[RL_CKEY_MAX];
    if (rl_ckey_user(conns, sizeof conns, prefix, user, "conns") < 0)
        return -ENAMETOOLONG;
    const char *a[] = {conns, conn_pid};
    return run(r, RL_CS_RELEASE_CONN, cb, ud, 2, a);
}

int rl_cs_lease_acquire(rl_redis *r, const char *prefix, const char *user, const char *node,
                        const char *incarnation, const char *hub_pid, uint64_t ttl_ms,
                        rl_redis_cb cb, void *ud)
{
    char lease[RL_CKEY_MAX], epoch[RL_CKEY_MAX], reg[RL_CKEY_MAX], np[RL_CKEY_MAX], ttl[24];
    if (rl_ckey_user(lease, sizeof lease, prefix, user, "lease") < 0 ||
        rl_ckey_user(epoch, sizeof epoch, prefix, user, "epoch") < 0 ||
        rl_ckey_registry(reg, sizeof reg, prefix) < 0 || rl_ckey_node(np, sizeof np, prefix, "") < 0)
        return -ENAMETOOLONG;
    snprintf(ttl, sizeof ttl, "%" PRIu64, ttl_ms ? ttl_ms : 1);
    const char *a[] = {lease, epoch, reg, node, incarnation, hub_pid, ttl, np};
    return run(r, RL_CS_LEASE_ACQUIRE, cb, ud, 8, a);
}

int rl_cs_lease_renew(rl_redis *r, const char *prefix, const char *user, const char *node,
                      const char *incarnation, uint64_t epoch, uint64_t ttl_ms, rl_redis_cb cb,
                      void *ud)
{
    return rl_cs_lease_renew_many(r, prefix, 1, &user, &epoch, node, incarnation, ttl_ms, cb, ud);
}

int rl_cs_lease_renew_many(rl_redis *r, const char *prefix, size_t n, const char *const *users,
                           const uint64_t *epochs, const char *node, const char *incarnation,
                           uint64_t ttl_ms, rl_redis_cb cb, void *ud)
{
    if (n == 0 || n > RL_CS_RENEW_MAX)
        return -EINVAL;
    char keys[RL_CS_RENEW_MAX][RL_CKEY_MAX], eps[RL_CS_RENEW_MAX][24], ttl[24];
    const char *a[2 * RL_CS_RENEW_MAX + 3];
    for (size_t i = 0; i < n; i++) {
        if (rl_ckey_user(keys[i], sizeof keys[i], prefix, users[i], "lease") < 0)
            return -ENAMETOOLONG;
        snprintf(eps[i], sizeof eps[i], "%" PRIu64, epochs[i]);
        a[i] = keys[i];
        a[n + 3 + i] = eps[i];
    }
    snprintf(ttl, sizeof ttl, "%" PRIu64, ttl_ms ? ttl_ms : 1);
    a[n] = node;
    a[n + 1] = incarnation;
    a[n + 2] = ttl;
    return rl_redis_script(r, rl_cluster_script(RL_CS_LEASE_RENEW), cb, ud, (int)n, (int)(2 * n + 3),
                           a, NULL);
}

int rl_cs_lease_release(rl_redis *r, const char *prefix, const char *user, const char *node,
                        const char *incarnation, uint64_t epoch, rl_redis_cb cb, void *ud)
{
    char lease[RL_CKEY_MAX], hub[RL_CKEY_MAX], ep[24];
    if (rl_ckey_user(lease, sizeof lease, prefix, user, "lease") < 0 ||
        rl_ckey_user(hub, sizeof hub, prefix, user, "hub") < 0)
        return -ENAMETOOLONG;
    snprintf(ep, sizeof ep, "%" PRIu64, epoch);
    const char *a[] = {lease, hub, node, incarnation, ep};
    return run(r, RL_CS_LEASE_RELEASE, cb, ud, 5, a);
}

int rl_cs_heartbeat(rl_redis *r, const char *prefix, const char *node, const char *incarnation,
                    const char *addr, uint64_t started_at_ms, const char *version, uint64_t ttl_ms,
                    int was_registered, rl_redis_cb cb, void *ud)
{
    char key[RL_CKEY_MAX], nodes[RL_CKEY_MAX], reg[RL_CKEY_MAX], st[24], ttl[24];
    if (rl_ckey_node(key, sizeof key, prefix, node) < 0 || rl_ckey_nodes(nodes, sizeof nodes, prefix) < 0 ||
        rl_ckey_registry(reg, sizeof reg, prefix) < 0)
        return -ENAMETOOLONG;
    snprintf(st, sizeof st, "%" PRIu64, started_at_ms);
    snprintf(ttl, sizeof ttl, "%" PRIu64, ttl_ms ? ttl_ms : 1);
    const char *a[] = {key, nodes, reg, node, incarnation, addr ? addr : "", st,
                       version ? version : "", ttl, was_registered ? "1" : "0"};
    return run(r, RL_CS_HEARTBEAT, cb, ud, 10, a);
}

int rl_cs_node_leave(rl_redis *r, const char *prefix, const char *node, const char *incarnation,
                     rl_redis_cb cb, void *ud)
{
    char key[RL_CKEY_MAX], nodes[RL_CKEY_MAX];
    if (rl_ckey_node(key, sizeof key, prefix, node) < 0 || rl_ckey_nodes(nodes, sizeof nodes, prefix) < 0)
        return -ENAMETOOLONG;
    const char *a[] = {key, nodes, node, incarnation};
    return run(r, RL_CS_NODE_LEAVE, cb, ud, 4, a);
}

/* ------------------------------------------------------------------------------------------ */

int rl_cs_parse_int(const redisReply *reply, long long *out)
{
    if (reply == NULL)
        return -EIO;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 1)
        reply = reply->element[0];
    if (reply->type != REDIS_REPLY_INTEGER)
        return -EPROTO;
    *out = reply->integer;
    return 0;
}

int rl_cs_parse_pair(const redisReply *reply, int *flag, long long *count)
{
    if (reply == NULL)
        return -EIO;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_INTEGER)
        return -EPROTO;
    *flag = (int)reply->element[0]->integer;
    *count = reply->element[1]->integer;
    return 0;
}

static int copy_str(char *dst, size_t n, const redisReply *e)
{
    if (e->type == REDIS_REPLY_NIL) {
        dst[0] = 0;
        return 0;
    }
    if (e->type != REDIS_REPLY_STRING || e->len >= n)
        return -EPROTO;
    memcpy(dst, e->str, e->len);
    dst[e->len] = 0;
    return 0;
}

int rl_cs_parse_lease(const redisReply *reply, rl_lease_reply *out)
{
    memset(out, 0, sizeof *out);
    if (reply == NULL)
        return -EIO;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 5 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER)
        return -EPROTO;
    long long code = reply->element[0]->integer;
    if (code < 0 || code > 2)
        return -EPROTO;
    out->code = (rl_lease_code)code;
    /* epoch: integer; nil if a foreign lease value had a non-numeric epoch (then 0) */
    const redisReply *e = reply->element[1];
    if (e->type == REDIS_REPLY_INTEGER && e->integer >= 0)
        out->epoch = (uint64_t)e->integer;
    else if (e->type != REDIS_REPLY_NIL)
        return -EPROTO;
    if (copy_str(out->hub_pid, sizeof out->hub_pid, reply->element[2]) < 0 ||
        copy_str(out->node, sizeof out->node, reply->element[3]) < 0 ||
        copy_str(out->incarnation, sizeof out->incarnation, reply->element[4]) < 0)
        return -EPROTO;
    return 0;
}
