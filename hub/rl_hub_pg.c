/* pg.subscribe / pg.unsubscribe for the user hub (rl_hub_pg.h). The group's sends themselves
 * need nothing here: rl_hub.c writes RL_MSG_PG messages to its connections. The hub leaves
 * every group when it exits (rl_pg watches it). */
#include "rl_hub_pg.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <string.h>

#include "rl_json.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_pg.h"
#include "rl_security.h"

#define MOD "hub"

static int topic_is(const rl_msg *m, const char *t)
{
    return m->name_len == strlen(t) && memcmp(m->name, t, m->name_len) == 0;
}

/* actor.meta.<path> from the user's metadata (a cJSON object). */
static void meta_lookup(void *ud, int actor, const char *path, rl_sec_field *out)
{
    const cJSON *v = ud;
    if (!actor || !v)
        return;
    char part[128];
    while (*path && v) {
        const char *dot = strchr(path, '.');
        size_t n = dot ? (size_t)(dot - path) : strlen(path);
        if (n >= sizeof part || !cJSON_IsObject(v))
            return;
        memcpy(part, path, n);
        part[n] = '\0';
        v = cJSON_GetObjectItemCaseSensitive(v, part);
        path += n + (dot ? 1 : 0);
    }
    if (!v)
        return;
    if (cJSON_IsString(v)) {
        out->kind = RL_SEC_VSTR;
        out->s = v->valuestring;
        out->len = strlen(v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        out->kind = RL_SEC_VNUM;
        out->num = v->valuedouble;
    } else if (cJSON_IsBool(v)) {
        out->kind = RL_SEC_VBOOL;
        out->num = cJSON_IsTrue(v) ? 1 : 0;
    } else {
        out->kind = RL_SEC_VOTHER;
    }
}

/* 1 when the user's scope allows action on resource for the hub's user. */
static int hub_can(const rl_proc *hub, const cJSON *meta, const char *action, const char *res,
                   size_t rlen)
{
    const rl_sec_policy *const *pols;
    size_t n;
    if (rl_sec_scope_get(rl_sec_user_scope(), &pols, &n) < 0)
        return 0;
    rl_sec_req r = {rl_owner_user(hub->owner), action, strlen(action), res, rlen,
                    meta_lookup, (void *)meta};
    return rl_sec_eval(pols, n, &r) == RL_SEC_ALLOW;
}

/* A string field of obj, NULL when absent or not a string. */
static const char *field(const cJSON *obj, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *join_error(int rc)
{
    switch (rc) {
    case -ENOSPC: return "too many groups (pg_max_groups)";
    case -EMLINK: return "group is full (pg_max_members)";
    case -EINVAL: return "invalid scope or group name";
    default: return "not enough memory";
    }
}

static void subscribe(rl_proc *hub, const cJSON *req, const cJSON *meta)
{
    const char *user = rl_owner_user(hub->owner);
    const char *scope = field(req, "scope"), *group = field(req, "group");
    if (!scope || !group || !rl_pg_name_ok(scope, strlen(scope)) ||
        !rl_pg_name_ok(group, strlen(group))) {
        rl_warn(MOD, "user %s: pg.subscribe needs a scope and a group (strings of 1..%d bytes)",
                user, RL_PG_NAME_MAX);
        return;
    }
    size_t slen = strlen(scope), glen = strlen(group), have;
    if (rl_pg_scope_of(hub->pid, group, glen, &have))
        return; /* already subscribed to that group (in some scope), as the original */
    if (!hub_can(hub, meta, "pg.open", scope, slen) || !hub_can(hub, meta, "pg.join", group, glen)) {
        rl_metric_inc(RL_M_MSGS_REFUSED);
        rl_warn(MOD, "user %s: pg.subscribe to %s in %s: permission denied", user, group, scope);
        return;
    }
    int rc = rl_pg_join(hub->pid, scope, slen, group, glen);
    if (rc < 0)
        rl_warn(MOD, "user %s: pg.subscribe to %s in %s failed: %s", user, group, scope,
                join_error(rc));
    else
        rl_info(MOD, "user %s: subscribed to pg group %s in %s", user, group, scope);
}

static void unsubscribe(rl_proc *hub, const cJSON *req)
{
    const char *group = field(req, "group");
    size_t slen;
    const char *scope = group ? rl_pg_scope_of(hub->pid, group, strlen(group), &slen) : NULL;
    if (!scope)
        return; /* not subscribed: nothing to do */
    char s[RL_PG_NAME_MAX + 1];
    memcpy(s, scope, slen); /* the membership (and its key) ends with the leave */
    s[slen] = '\0';
    while (rl_pg_leave(hub->pid, s, slen, group, strlen(group)) == 0) {
    }
    rl_info(MOD, "user %s: unsubscribed from pg group %s in %s", rl_owner_user(hub->owner),
            group, s);
}

int rl_hub_pg_control(rl_proc *hub, const rl_body *user_meta, rl_msg *m)
{
    if (m->topic != RL_T_APP || (m->flags & RL_MSG_PG))
        return 0;
    int sub = topic_is(m, "pg.subscribe");
    if (!sub && !topic_is(m, "pg.unsubscribe"))
        return 0;
    if (m->owner && m->owner != hub->owner) { /* only the hub's own user steers it */
        rl_metric_inc(RL_M_MSGS_REFUSED);
        rl_warn(MOD, "user %s: refused %s from %s (%s): permission denied",
                rl_owner_user(hub->owner), sub ? "pg.subscribe" : "pg.unsubscribe", m->from,
                rl_owner_user(m->owner));
        rl_msg_free(m);
        return 1;
    }
    cJSON *req = m->body ? rl_json_parse(m->body->data, m->body->len) : NULL;
    if (!cJSON_IsObject(req)) {
        rl_warn(MOD, "user %s: %s needs an object", rl_owner_user(hub->owner),
                sub ? "pg.subscribe" : "pg.unsubscribe");
    } else if (sub) {
        cJSON *meta = user_meta && rl_sec_user_scope_reads_actor_meta()
                          ? rl_json_parse(user_meta->data, user_meta->len)
                          : NULL;
        subscribe(hub, req, meta);
        cJSON_Delete(meta);
    } else {
        unsubscribe(hub, req);
    }
    cJSON_Delete(req);
    rl_msg_free(m);
    return 1;
}
