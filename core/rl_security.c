/* Security scopes and policies: evaluation, the router's policy rule, cross-user sends. */
#include "rl_security.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_glob.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"

#define MOD "security"

typedef struct sec_scope {
    const char *id; /* into the config */
    const rl_sec_policy **pols;
    size_t n;
} sec_scope;

/* A cross-user send waiting for the hub look-up. */
typedef struct sec_pending {
    uint64_t call;
    rl_msg *m;
    int inside; /* the look-up runs inside rl_send_user: its result is returned, not told */
    int rc;     /* with inside: 1 until the callback ran */
    char user[RL_SEC_USER_MAX + 1];
} sec_pending;

static struct {
    const rl_config *cfg;
    sec_scope *scopes;
    size_t nscopes;
    rl_sec_locate_fn locate;
    rl_map pending; /* call number (decimal) -> sec_pending */
    size_t npending;
    uint64_t next_call;
    int ready;
    int user_meta; /* the user scope has conditions on actor.meta.* */
} sec;

/* ---- matching and evaluation ---------------------------------------------------------- */

int rl_sec_match(const char *p, const char *s, size_t len) { return rl_glob_match(p, s, len); }

static int any_match(char *const *pats, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (rl_sec_match(pats[i], s, len))
            return 1;
    return 0;
}

/* A string field that reads fully as a number (for comparisons with a numeric value). */
static int field_number(const rl_sec_field *f, double *out)
{
    if (f->kind == RL_SEC_VNUM) {
        *out = f->num;
        return 1;
    }
    if (f->kind != RL_SEC_VSTR || f->len == 0 || f->len > 64)
        return 0;
    char buf[65], *end;
    memcpy(buf, f->s, f->len);
    buf[f->len] = '\0';
    *out = strtod(buf, &end);
    return *end == '\0';
}

static int value_eq(const rl_sec_field *f, const rl_sec_value *v)
{
    double d;
    switch (v->kind) {
    case RL_SEC_VSTR:
        return f->kind == RL_SEC_VSTR && f->len == strlen(v->s) && memcmp(f->s, v->s, f->len) == 0;
    case RL_SEC_VNUM:
        return field_number(f, &d) && d == v->num;
    case RL_SEC_VBOOL:
        return f->kind == RL_SEC_VBOOL && f->num == v->num;
    }
    return 0;
}

static void field_of(const rl_sec_cond *c, const rl_sec_req *r, rl_sec_field *f)
{
    memset(f, 0, sizeof *f);
    const char *s = NULL;
    size_t len = 0;
    if (strcmp(c->field, "actor.id") == 0) {
        if (r->actor_id) {
            s = r->actor_id;
            len = strlen(s);
        }
    } else if (strcmp(c->field, "action") == 0) {
        s = r->action;
        len = r->action_len;
    } else if (strcmp(c->field, "resource") == 0) {
        s = r->resource;
        len = r->resource_len;
    } else if (r->lookup) {
        int actor = strncmp(c->field, "actor.", 6) == 0;
        r->lookup(r->ud, actor, c->field + (actor ? 11 : 5), f);
        return;
    }
    if (s) {
        f->kind = RL_SEC_VSTR;
        f->s = s;
        f->len = len;
    }
}

static int cond_holds(const rl_sec_cond *c, const rl_sec_req *r)
{
    rl_sec_field f;
    field_of(c, r, &f);
    double d;
    int any = 0;
    switch (c->op) {
    case RL_SEC_OP_EXISTS:
        return f.kind != 0;
    case RL_SEC_OP_NEXISTS:
        return f.kind == 0;
    case RL_SEC_OP_EQ:
        return value_eq(&f, &c->values[0]);
    case RL_SEC_OP_NE:
        return !value_eq(&f, &c->values[0]);
    case RL_SEC_OP_IN:
    case RL_SEC_OP_NIN:
        for (size_t i = 0; i < c->nvalues; i++)
            any |= value_eq(&f, &c->values[i]);
        return c->op == RL_SEC_OP_IN ? any : !any;
    case RL_SEC_OP_LT:
        return field_number(&f, &d) && d < c->values[0].num;
    case RL_SEC_OP_GT:
        return field_number(&f, &d) && d > c->values[0].num;
    case RL_SEC_OP_LTE:
        return field_number(&f, &d) && d <= c->values[0].num;
    case RL_SEC_OP_GTE:
        return field_number(&f, &d) && d >= c->values[0].num;
    case RL_SEC_OP_CONTAINS:
    case RL_SEC_OP_NCONTAINS:
        any = f.kind == RL_SEC_VSTR &&
              memmem(f.s, f.len, c->values[0].s, strlen(c->values[0].s)) != NULL;
        return c->op == RL_SEC_OP_CONTAINS ? any : !any;
    case RL_SEC_OP_COUNT:
        break;
    }
    return 0;
}

rl_sec_result rl_sec_policy_eval(const rl_sec_policy *p, const rl_sec_req *r)
{
    if (!any_match(p->actions, p->nactions, r->action, r->action_len) ||
        !any_match(p->resources, p->nresources, r->resource, r->resource_len))
        return RL_SEC_UNDEFINED;
    for (size_t i = 0; i < p->nconds; i++)
        if (!cond_holds(&p->conds[i], r))
            return RL_SEC_UNDEFINED;
    return p->deny ? RL_SEC_DENY : RL_SEC_ALLOW;
}

rl_sec_result rl_sec_eval(const rl_sec_policy *const *pols, size_t n, const rl_sec_req *r)
{
    rl_sec_result res = RL_SEC_UNDEFINED;
    for (size_t i = 0; i < n; i++) {
        rl_sec_result x = rl_sec_policy_eval(pols[i], r);
        if (x == RL_SEC_DENY)
            return RL_SEC_DENY;
        if (x == RL_SEC_ALLOW)
            res = RL_SEC_ALLOW;
    }
    return res;
}

/* ---- scopes ---------------------------------------------------------------------------- */

static sec_scope *scope_find(const char *id)
{
    for (size_t i = 0; i < sec.nscopes; i++)
        if (strcmp(sec.scopes[i].id, id) == 0)
            return &sec.scopes[i];
    return NULL;
}

static int scope_add_id(const char *id)
{
    if (scope_find(id))
        return 0;
    sec_scope *ns = realloc(sec.scopes, (sec.nscopes + 1) * sizeof *ns);
    if (!ns)
        return -ENOMEM;
    sec.scopes = ns;
    ns[sec.nscopes++] = (sec_scope){id, NULL, 0};
    return 0;
}

static int scope_add_policy(sec_scope *s, const rl_sec_policy *p)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->pols[i] == p)
            return 0;
    const rl_sec_policy **np = realloc(s->pols, (s->n + 1) * sizeof *np);
    if (!np)
        return -ENOMEM;
    s->pols = np;
    np[s->n++] = p;
    return 0;
}

const rl_sec_policy *rl_sec_policy_find(const char *id)
{
    for (size_t i = 0; sec.cfg && i < sec.cfg->npolicies; i++)
        if (strcmp(sec.cfg->policies[i].id, id) == 0)
            return &sec.cfg->policies[i];
    return NULL;
}

size_t rl_sec_policy_count(void) { return sec.cfg ? sec.cfg->npolicies : 0; }

static int reads_actor_meta(const char *scope);

int rl_sec_init(const rl_config *c)
{
    rl_sec_close();
    sec.cfg = c;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < c->nscopes; i++)
        rc = scope_add_id(c->scopes[i].id);
    for (size_t i = 0; rc == 0 && i < c->npolicies; i++)
        for (size_t j = 0; rc == 0 && j < c->policies[i].ngroups; j++)
            rc = scope_add_id(c->policies[i].groups[j]);
    for (size_t i = 0; rc == 0 && i < c->nscopes; i++)
        for (size_t j = 0; rc == 0 && j < c->scopes[i].npolicies; j++) {
            const rl_sec_policy *p = rl_sec_policy_find(c->scopes[i].policies[j]);
            if (p) /* one of another namespace is not in this file: nothing to add */
                rc = scope_add_policy(scope_find(c->scopes[i].id), p);
        }
    for (size_t i = 0; rc == 0 && i < c->npolicies; i++)
        for (size_t j = 0; rc == 0 && j < c->policies[i].ngroups; j++)
            rc = scope_add_policy(scope_find(c->policies[i].groups[j]), &c->policies[i]);
    if (rc < 0) {
        rl_sec_close();
        return rc;
    }
    rl_map_init(&sec.pending);
    sec.ready = 1;
    sec.user_meta = reads_actor_meta(c->user_security_scope);
    return 0;
}

void rl_sec_close(void)
{
    for (size_t i = 0; i < sec.nscopes; i++)
        free(sec.scopes[i].pols);
    free(sec.scopes);
    sec.scopes = NULL;
    sec.nscopes = 0;
    if (sec.ready) {
        const char *k;
        void *v;
        for (size_t it = 0; rl_map_next(&sec.pending, &it, &k, &v);) {
            sec_pending *p = v;
            rl_msg_free(p->m);
            rl_metric_inc(RL_M_MSGS_DROPPED);
            free(p);
        }
        rl_map_close(&sec.pending);
        sec.npending = 0;
        sec.ready = 0;
    }
    sec.cfg = NULL;
    sec.user_meta = 0;
}

int rl_sec_scope_get(const char *id, const rl_sec_policy *const **pols, size_t *n)
{
    sec_scope *s = id ? scope_find(id) : NULL;
    if (!s)
        return -ENOENT;
    *pols = s->pols;
    *n = s->n;
    return 0;
}

int rl_sec_user_scope_reads_actor_meta(void) { return sec.user_meta; }

static int reads_actor_meta(const char *scope)
{
    const rl_sec_policy *const *pols;
    size_t n;
    if (rl_sec_scope_get(scope, &pols, &n) < 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < pols[i]->nconds; j++)
            if (strncmp(pols[i]->conds[j].field, "actor.meta.", 11) == 0)
                return 1;
    return 0;
}

const char *rl_sec_user_scope(void) { return sec.cfg ? sec.cfg->user_security_scope : NULL; }

int rl_sec_user_can(const char *user, const char *action, const char *resource)
{
    const rl_sec_policy *const *pols;
    size_t n;
    if (rl_sec_scope_get(rl_sec_user_scope(), &pols, &n) < 0)
        return 0;
    rl_sec_req r = {user, action, strlen(action), resource, strlen(resource), NULL, NULL};
    return rl_sec_eval(pols, n, &r) == RL_SEC_ALLOW;
}

/* ---- the router's rule and cross-user sends --------------------------------------------- */

static int may_send_to(const char *sender, const char *user, size_t len, rl_sec_lookup_fn look,
                       void *ud)
{
    const rl_sec_policy *const *pols;
    size_t n;
    char res[5 + RL_SEC_USER_MAX + 1];
    if (len > RL_SEC_USER_MAX || rl_sec_scope_get(rl_sec_user_scope(), &pols, &n) < 0)
        return 0;
    int rl = snprintf(res, sizeof res, "user.%.*s", (int)len, user);
    /* meta.* stays absent: the lookup answers actor.meta.* only */
    rl_sec_req r = {sender, "process.send", 12, res, (size_t)rl, look, ud};
    return rl_sec_eval(pols, n, &r) == RL_SEC_ALLOW;
}

int rl_sec_send_allowed(const rl_msg *m, const rl_proc *target)
{
    if (m->topic != RL_T_APP || !(m->flags & RL_MSG_GRANTED) || !m->owner || !target->owner ||
        m->owner == target->owner)
        return 0;
    char k = rl_pid_kind(target->pid);
    return k == 'h' || k == 'p';
}

/* Only actor.meta.* (the caller's lookup); meta.* is absent for a send. */
typedef struct actor_only {
    rl_sec_lookup_fn fn;
    void *ud;
} actor_only;

static void actor_lookup(void *ud, int actor, const char *path, rl_sec_field *out)
{
    actor_only *a = ud;
    if (actor && a->fn)
        a->fn(a->ud, actor, path, out);
}

void rl_sec_set_locate(rl_sec_locate_fn fn) { sec.locate = fn; }

static const char *why(int rc)
{
    switch (rc) {
    case -ENOENT: return "user offline";
    case -EAGAIN: return "mailbox full";
    case -EPERM: return "permission denied";
    case -ENOMEM: return "not enough memory";
    case -ESTALE:
    case -EBUSY: return "hub moving";
    case -EPIPE: return "plugin failed";
    default: return "node unreachable";
    }
}

/* A send that failed after rl_send_user returned: the sender hears of it (if it still lives,
   on whichever node) as "user.undelivered" {"user", "topic", "error"}, from the system. */
void rl_sec_undelivered(const rl_msg *m, const char *user, int rc)
{
    static uint64_t last_ms, quiet; /* one line a second at most: a flood must not flood logs */
    rl_metric_inc(RL_M_MSGS_DROPPED);
    uint64_t now = rl_now_ms();
    if (last_ms && now - last_ms < 1000) {
        quiet++;
    } else {
        rl_info(MOD, "message %.*s from %s to user.%s not delivered: %s (and %" PRIu64 " more "
                     "since the last line)", (int)m->name_len, m->name, m->from,
                user ? user : "?", why(rc), quiet);
        last_ms = now;
        quiet = 0;
    }
    if (!m->from[0] || (rl_pid_is_local(m->from) && !rl_proc_find(m->from)))
        return;
    char u[RL_SEC_USER_MAX * 6 + 3], topic[128 * 6 + 3];
    size_t ulen = user ? strnlen(user, RL_SEC_USER_MAX) : 0;
    if (user)
        rl_json_escape(u, sizeof u, user, ulen);
    else
        snprintf(u, sizeof u, "null");
    rl_json_escape(topic, sizeof topic, m->name, m->name_len > 128 ? 128 : m->name_len);
    char body[sizeof u + sizeof topic + 64];
    int n = snprintf(body, sizeof body, "{\"user\":%s,\"topic\":%s,\"error\":\"%s\"}", u, topic,
                     why(rc));
    if (n < 0 || (size_t)n >= sizeof body)
        return;
    rl_send_or_free(NULL, m->from,
                    rl_msg_new_data(RL_T_APP, "user.undelivered", 16, body, (size_t)n));
}

static void tell_undelivered(sec_pending *p, int rc) { rl_sec_undelivered(p->m, p->user, rc); }

static void call_key(char *out, size_t cap, uint64_t call) { snprintf(out, cap, "%" PRIu64, call); }

static void on_located(int rc, const char *hub, uint64_t epoch, void *ud)
{
    char k[24];
    call_key(k, sizeof k, (uint64_t)(uintptr_t)ud);
    sec_pending *p = sec.ready ? rl_map_del(&sec.pending, k) : NULL;
    if (!p)
        return; /* closed meanwhile */
    sec.npending--;
    if (rc == 0) {
        p->m->epoch = epoch;
        rc = rl_send_as(hub, p->m);
    }
    if (p->inside) { /* rl_send_user answers; on error its caller keeps m */
        p->rc = rc;
        return;
    }
    if (rc < 0) {
        tell_undelivered(p, rc);
        rl_msg_free(p->m);
    }
    free(p);
}

/* The frames a hub itself sends its clients: another user must not make them up. */
static int hub_topic(const rl_msg *m)
{
    return (m->name_len == 7 && memcmp(m->name, "welcome", 7) == 0) ||
           (m->name_len == 5 && memcmp(m->name, "error", 5) == 0);
}

int rl_send_user(rl_proc *from, const char *user, size_t len, rl_msg *m,
                 rl_sec_lookup_fn actor_meta, void *ud)
{
    if (len == 0 || len > RL_SEC_USER_MAX || memchr(user, '\0', len))
        return -EINVAL;
    const char *self = rl_owner_user(from->owner);
    int same = self && strlen(self) == len && memcmp(self, user, len) == 0;
    actor_only ao = {actor_meta, ud};
    m->flags &= (uint16_t)~RL_MSG_GRANTED;
    if (!same && (m->topic != RL_T_APP || !self || hub_topic(m) ||
                  !may_send_to(self, user, len, actor_lookup, &ao))) {
        size_t nl;
        const char *name = rl_msg_topic_name(m, &nl);
        rl_metric_inc(RL_M_MSGS_REFUSED);
        rl_warn(MOD, "refused %.*s from %s (%s) to user.%.*s: permission denied", (int)nl, name,
                from->pid, self ? self : "system", (int)len, user);
        return -EPERM;
    }
    if (!sec.locate || !sec.ready)
        return -EHOSTUNREACH;
    if (sec.npending >= RL_SEC_INFLIGHT_MAX)
        return -EAGAIN;
    sec_pending *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    char k[24];
    p->call = ++sec.next_call;
    p->m = m;
    p->inside = 1;
    p->rc = 1;
    memcpy(p->user, user, len);
    call_key(k, sizeof k, p->call);
    if (rl_map_set(&sec.pending, k, p) < 0) {
        free(p);
        return -ENOMEM;
    }
    sec.npending++;
    if (!same)
        m->flags |= RL_MSG_GRANTED;
    rl_owner *prev = m->owner;
    memcpy(m->from, from->pid, RL_PID_MAX);
    m->owner = rl_owner_ref(from->owner);
    int rc = sec.locate(p->user, on_located, (void *)(uintptr_t)p->call);
    if (rc < 0 && rl_map_del(&sec.pending, k)) { /* the callback will not run */
        sec.npending--;
        p->rc = rc;
    }
    if (p->rc != 1) { /* answered inside the call */
        rc = p->rc;
        free(p);
        if (rc < 0) {
            rl_owner_unref(m->owner);
            m->owner = prev;
            m->flags &= (uint16_t)~RL_MSG_GRANTED;
            return rc;
        }
        rl_owner_unref(prev);
        return 0;
    }
    p->inside = 0;
    rl_owner_unref(prev);
    return 0;
}
