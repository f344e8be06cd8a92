/* Process groups on this node (rl_pg.h): groups keyed by scope and name, members keyed by pid,
 * each membership linked both ways so that a leave or an exit costs the member's own joins, not
 * the group's size. */
#include "rl_pg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"

#define MOD "pg"

typedef struct pg_member pg_member;

typedef struct pg_slot { /* one member of a group */
    pg_member *m;
    uint32_t joins; /* times it joined this group */
} pg_slot;

typedef struct pg_group {
    char *key;   /* "<scope>\x1f<group>", the map's (borrowed) key */
    size_t slen; /* the scope is key[0..slen), the group key[slen + 1 ..] */
    pg_slot *slots;
    uint32_t n, cap;
    size_t joins; /* over all slots (max_members counts these) */
} pg_group;

typedef struct pg_link { /* one group of a member */
    pg_group *g;
    uint32_t slot; /* its index in g->slots */
} pg_link;

struct pg_member {
    char pid[RL_PID_MAX]; /* the map's (borrowed) key */
    pg_link *links;
    uint32_t n, cap;
    size_t joins;   /* over all its groups (max_joins counts these) */
    size_t scopes;  /* scope handles it holds open (the Lua module's count) */
};

static struct {
    rl_proc proc;
    int started;
    size_t max_joins, max_members;
    rl_map groups;  /* key -> pg_group */
    rl_map members; /* pid -> pg_member (kept until the process exits: one monitor each) */
    const rl_pg_remote *remote; /* NULL standalone */
} pg;

/* ---- names ---------------------------------------------------------------------------------- */

int rl_pg_name_ok(const char *s, size_t len)
{
    return s && len > 0 && len <= RL_PG_NAME_MAX && !memchr(s, '\0', len) && !memchr(s, '\x1f', len);
}

static int has_prefix(const char *s, size_t len, const char *p)
{
    size_t n = strlen(p);
    return len >= n && memcmp(s, p, n) == 0;
}

static int is(const char *s, size_t len, const char *w) { return len == strlen(w) && memcmp(s, w, len) == 0; }

int rl_pg_topic_ok(const char *name, size_t len)
{
    static const char *const reserved[] = {"pg.", "ws.", "pid.", "hub.", "api.", "user.", "@"};
    if (!name || len == 0 || len > RL_PG_TOPIC_MAX || memchr(name, '\0', len))
        return 0;
    if (rl_topic_find(name, len) != RL_T_APP || is(name, len, "welcome") || is(name, len, "error"))
        return 0;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (has_prefix(name, len, reserved[i]))
            return 0;
    return 1;
}

/* The map key of a group: scope, a unit separator (no name holds one), group. NULL on OOM. */
static char *group_key(const char *scope, size_t slen, const char *group, size_t glen)
{
    char *k = malloc(slen + glen + 2);
    if (!k)
        return NULL;
    memcpy(k, scope, slen);
    k[slen] = '\x1f';
    memcpy(k + slen + 1, group, glen);
    k[slen + 1 + glen] = '\0';
    return k;
}

static pg_group *group_find(const char *scope, size_t slen, const char *group, size_t glen)
{
    char buf[2 * RL_PG_NAME_MAX + 2];
    if (slen > RL_PG_NAME_MAX || glen > RL_PG_NAME_MAX)
        return NULL;
    memcpy(buf, scope, slen);
    buf[slen] = '\x1f';
    memcpy(buf + slen + 1, group, glen);
    buf[slen + 1 + glen] = '\0';
    return pg.started ? rl_map_get(&pg.groups, buf) : NULL;
}

/* ---- members ------------------------------------------------------------------------------- */

static pg_member *member_find(const char *pid)
{
    return pg.started && pid ? rl_map_get(&pg.members, pid) : NULL;
}

/* The record of pid, made (and pid watched) on first use. NULL: -ENOENT / -ENOMEM in *rc. */
static pg_member *member_get(const char *pid, int *rc)
{
    pg_member *m = member_find(pid);
    if (m)
        return m;
    *rc = -ENOENT;
    if (!pg.started || !rl_pid_is_local(pid) || !rl_proc_find(pid))
        return NULL;
    *rc = -ENOMEM;
    if (!(m = calloc(1, sizeof *m)))
        return NULL;
    snprintf(m->pid, sizeof m->pid, "%s", pid);
    if (rl_map_set(&pg.members, m->pid, m) < 0) {
        free(m);
        return NULL;
    }
    if ((*rc = rl_monitor(&pg.proc, pid)) < 0) {
        rl_map_del(&pg.members, m->pid);
        free(m);
        return NULL;
    }
    return m;
}

static int link_index(const pg_member *m, const pg_group *g)
{
    for (uint32_t i = 0; i < m->n; i++)
        if (m->links[i].g == g)
            return (int)i;
    return -1;
}

static void group_free(pg_group *g)
{
    if (pg.remote)
        pg.remote->left(g->key, g->slen, g->key + g->slen + 1, strlen(g->key + g->slen + 1));
    rl_map_del(&pg.groups, g->key);
    free(g->slots);
    free(g->key);
    free(g);
}

/* Removes link li of m and its slot in the group (swap-remove on both sides). */
static void unlink_at(pg_member *m, uint32_t li)
{
    pg_group *g = m->links[li].g;
    uint32_t s = m->links[li].slot;
    g->joins -= g->slots[s].joins;
    m->joins -= g->slots[s].joins;
    g->slots[s] = g->slots[--g->n];
    if (s < g->n) { /* the moved member's link now points at slot s */
        pg_member *o = g->slots[s].m;
        o->links[link_index(o, g)].slot = s;
    }
    m->links[li] = m->links[--m->n];
    if (g->n == 0)
        group_free(g);
}

static void member_drop(pg_member *m)
{
    while (m->n)
        unlink_at(m, m->n - 1);
    rl_map_del(&pg.members, m->pid);
    free(m->links);
    free(m);
}

static int grow(void **arr, uint32_t *cap, size_t size)
{
    uint32_t nc = *cap ? *cap * 2 : 4;
    void *na = realloc(*arr, (size_t)nc * size);
    if (!na)
        return -ENOMEM;
    *arr = na;
    *cap = nc;
    return 0;
}

static pg_group *group_get(const char *scope, size_t slen, const char *group, size_t glen)
{
    pg_group *g = group_find(scope, slen, group, glen);
    if (g)
        return g;
    if (!(g = calloc(1, sizeof *g)) || !(g->key = group_key(scope, slen, group, glen))) {
        free(g);
        return NULL;
    }
    g->slen = slen;
    if (rl_map_set(&pg.groups, g->key, g) < 0) {
        free(g->key);
        free(g);
        return NULL;
    }
    return g;
}

int rl_pg_join(const char *pid, const char *scope, size_t slen, const char *group, size_t glen)
{
    if (!rl_pg_name_ok(scope, slen) || !rl_pg_name_ok(group, glen))
        return -EINVAL;
    int rc;
    pg_member *m = member_get(pid, &rc);
    if (!m)
        return rc;
    if (m->joins >= pg.max_joins)
        return -ENOSPC;
    pg_group *g = group_find(scope, slen, group, glen);
    if (g && g->joins >= pg.max_members)
        return -EMLINK;
    if (pg.max_members == 0)
        return -EMLINK;
    int li = g ? link_index(m, g) : -1;
    if (li >= 0) {
        g->slots[m->links[li].slot].joins++;
    } else {
        if ((m->n == m->cap && grow((void **)&m->links, &m->cap, sizeof *m->links) < 0) ||
            !(g = group_get(scope, slen, group, glen)))
            return -ENOMEM;
        if (g->n == g->cap && grow((void **)&g->slots, &g->cap, sizeof *g->slots) < 0) {
            if (g->n == 0)
                group_free(g);
            return -ENOMEM;
        }
        g->slots[g->n] = (pg_slot){m, 1};
        m->links[m->n++] = (pg_link){g, g->n++};
        if (g->n == 1 && pg.remote)
            pg.remote->joined(scope, slen, group, glen);
    }
    g->joins++;
    m->joins++;
    return 0;
}

int rl_pg_leave(const char *pid, const char *scope, size_t slen, const char *group, size_t glen)
{
    pg_member *m = member_find(pid);
    pg_group *g = m ? group_find(scope, slen, group, glen) : NULL;
    int li = g ? link_index(m, g) : -1;
    if (li < 0)
        return -ENOENT;
    pg_slot *s = &g->slots[m->links[li].slot];
    if (s->joins > 1) {
        s->joins--;
        g->joins--;
        m->joins--;
    } else {
        unlink_at(m, (uint32_t)li);
    }
    return 0;
}

uint32_t rl_pg_joins(const char *pid, const char *scope, size_t slen, const char *group,
                     size_t glen)
{
    pg_member *m = member_find(pid);
    pg_group *g = m ? group_find(scope, slen, group, glen) : NULL;
    int li = g ? link_index(m, g) : -1;
    return li < 0 ? 0 : g->slots[m->links[li].slot].joins;
}

const char *rl_pg_scope_of(const char *pid, const char *group, size_t glen, size_t *slen)
{
    pg_member *m = member_find(pid);
    for (uint32_t i = 0; m && i < m->n; i++) {
        const pg_group *g = m->links[i].g;
        if (strlen(g->key + g->slen + 1) == glen && memcmp(g->key + g->slen + 1, group, glen) == 0) {
            *slen = g->slen;
            return g->key;
        }
    }
    return NULL;
}

size_t rl_pg_joins_of(const char *pid)
{
    pg_member *m = member_find(pid);
    return m ? m->joins : 0;
}

int rl_pg_scope_open(const char *pid)
{
    int rc;
    pg_member *m = member_get(pid, &rc);
    if (!m)
        return rc;
    m->scopes++;
    return 0;
}

void rl_pg_scope_close(const char *pid)
{
    pg_member *m = member_find(pid);
    if (m && m->scopes)
        m->scopes--;
}

size_t rl_pg_scopes_of(const char *pid)
{
    pg_member *m = member_find(pid);
    return m ? m->scopes : 0;
}

/* ---- listing and sending ------------------------------------------------------------------- */

size_t rl_pg_members(const char *scope, size_t slen, const char *group, size_t glen,
                     rl_pg_each_fn fn, void *ud)
{
    pg_group *g = group_find(scope, slen, group, glen);
    for (uint32_t i = 0; g && fn && i < g->n; i++)
        fn(ud, g->slots[i].m->pid, strlen(g->slots[i].m->pid));
    return g ? g->n : 0;
}

size_t rl_pg_groups(const char *scope, size_t slen, rl_pg_each_fn fn, void *ud)
{
    size_t n = 0;
    const char *k;
    void *v;
    for (size_t it = 0; pg.started && rl_map_next(&pg.groups, &it, &k, &v);) {
        const pg_group *g = v;
        if (g->slen != slen || memcmp(g->key, scope, slen) != 0)
            continue;
        n++;
        if (fn)
            fn(ud, g->key + slen + 1, strlen(g->key + slen + 1));
    }
    return n;
}

/* The local members' part of a group send, from pid `from` ("" = none) and owner. */
static size_t fan_out(const char *from, rl_owner *owner, const char *scope, size_t slen,
                      const char *group, size_t glen, const char *name, size_t nlen, rl_body *body)
{
    pg_group *g = group_find(scope, slen, group, glen);
    size_t sent = 0;
    for (uint32_t i = 0; g && i < g->n; i++) {
        const char *to = g->slots[i].m->pid;
        rl_proc *t = rl_proc_find(to);
        rl_msg *m = t ? rl_msg_new_body(RL_T_APP, name, nlen, body) : NULL;
        if (!m) {
            rl_metric_inc(RL_M_MSGS_DROPPED);
            continue;
        }
        snprintf(m->from, sizeof m->from, "%s", from);
        m->owner = rl_owner_ref(owner);
        m->flags = RL_MSG_PG;
        if (m->owner && m->owner != t->owner)
            m->flags |= RL_MSG_GRANTED; /* the caller checked the sender's pg.broadcast */
        if (rl_send_as(to, m) < 0) {
            rl_msg_free(m);
            rl_metric_inc(RL_M_MSGS_DROPPED);
            continue;
        }
        sent++;
    }
    return sent;
}

size_t rl_pg_send_local(rl_proc *from, const char *scope, size_t slen, const char *group,
                        size_t glen, const char *name, size_t nlen, rl_body *body)
{
    return fan_out(from ? from->pid : "", from ? from->owner : NULL, scope, slen, group, glen,
                   name, nlen, body);
}

size_t rl_pg_send(rl_proc *from, const char *scope, size_t slen, const char *group, size_t glen,
                  const char *name, size_t nlen, rl_body *body)
{
    if (pg.remote)
        pg.remote->send(from ? from->pid : "", from ? from->owner : NULL, scope, slen, group,
                        glen, name, nlen, body);
    return rl_pg_send_local(from, scope, slen, group, glen, name, nlen, body);
}

void rl_pg_set_remote(const rl_pg_remote *r) { pg.remote = r; }

const char *rl_pg_pid(void) { return pg.started ? pg.proc.pid : NULL; }

void rl_pg_each_local_group(void (*fn)(const char *scope, size_t slen, const char *group,
                                       size_t glen, void *ud), void *ud)
{
    const char *k;
    void *v;
    for (size_t it = 0; pg.started && rl_map_next(&pg.groups, &it, &k, &v);) {
        const pg_group *g = v;
        fn(g->key, g->slen, g->key + g->slen + 1, strlen(g->key + g->slen + 1), ud);
    }
}

/* The packed name of a forwarded send: "<ulen>:<user><scope>\x1f<group>\x1f<topic>" (ulen -1
   for the system). */
rl_msg *rl_pg_forward_msg(const char *from, const rl_owner *owner, const char *scope, size_t slen,
                          const char *group, size_t glen, const char *name, size_t nlen,
                          rl_body *body)
{
    const char *user = rl_owner_user(owner);
    size_t ulen = user ? strlen(user) : 0;
    size_t cap = 24 + ulen + slen + glen + nlen;
    char *packed = malloc(cap);
    if (!packed)
        return NULL;
    int h = user ? snprintf(packed, cap, "%zu:", ulen) : snprintf(packed, cap, "-1:");
    size_t n = (size_t)h;
    memcpy(packed + n, user ? user : "", ulen), n += ulen;
    memcpy(packed + n, scope, slen), n += slen;
    packed[n++] = '\x1f';
    memcpy(packed + n, group, glen), n += glen;
    packed[n++] = '\x1f';
    memcpy(packed + n, name, nlen), n += nlen;
    rl_msg *m = rl_msg_new_body(RL_T_APP, packed, n, body);
    free(packed);
    if (!m)
        return NULL;
    snprintf(m->from, sizeof m->from, "%s", from);
    m->flags = RL_MSG_PG;
    return m;
}

/* Another node's part of a group send (rl_pg_forward_msg), to the local members. */
static void on_forwarded(const rl_msg *m)
{
    const char *p = m->name, *e = m->name + m->name_len;
    const char *colon = memchr(p, ':', (size_t)(e - p));
    if (!colon || !m->body) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    long ulen = -1;
    if (!(colon - p == 2 && p[0] == '-' && p[1] == '1')) {
        ulen = 0;
        for (const char *q = p; q < colon; q++) {
            if (*q < '0' || *q > '9' || ulen > RL_PG_NAME_MAX * 64) {
                rl_metric_inc(RL_M_MSGS_DROPPED);
                return;
            }
            ulen = ulen * 10 + (*q - '0');
        }
    }
    const char *user = colon + 1, *scope = user + (ulen > 0 ? ulen : 0);
    const char *s1 = scope <= e ? memchr(scope, '\x1f', (size_t)(e - scope)) : NULL;
    const char *s2 = s1 ? memchr(s1 + 1, '\x1f', (size_t)(e - s1 - 1)) : NULL;
    if (!s2) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    rl_owner *o = ulen >= 0 ? rl_owner_get(user, (size_t)ulen) : NULL;
    if (ulen >= 0 && !o) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return;
    }
    fan_out(m->from, o, scope, (size_t)(s1 - scope), s1 + 1, (size_t)(s2 - s1 - 1), s2 + 1,
            (size_t)(e - s2 - 1), m->body);
    rl_owner_unref(o);
}

/* ---- the pg process ------------------------------------------------------------------------ */

static void pg_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    if (m->topic == RL_T_PID_EXIT) {
        pg_member *mb = member_find(m->ctl.exit.pid);
        if (mb)
            member_drop(mb);
    } else if (m->topic == RL_T_APP && (m->flags & RL_MSG_PG) && !m->owner) {
        on_forwarded(m); /* only the system (another node's pg process) sends these */
    }
    rl_msg_free(m);
}

static void pg_free(rl_proc *p) { (void)p; }

static const rl_proc_ops pg_ops = {
    .kind = "pg", .letter = 'g', .handle = pg_handle, .free = pg_free,
};

int rl_pg_start(size_t max_joins, size_t max_members)
{
    if (pg.started)
        return 0;
    memset(&pg, 0, sizeof pg);
    pg.max_joins = max_joins;
    pg.max_members = max_members;
    rl_map_init_borrowed(&pg.groups);
    rl_map_init_borrowed(&pg.members);
    int rc = rl_proc_start(&pg.proc, &pg_ops, 0, NULL);
    if (rc < 0)
        return rc;
    pg.started = 1;
    return 0;
}

void rl_pg_stop(void)
{
    if (!pg.started)
        return;
    const char *k;
    void *v;
    pg.remote = NULL; /* the cluster is gone already: nothing to tell it */
    for (size_t it = 0; rl_map_next(&pg.members, &it, &k, &v);)
        member_drop(v);
    rl_map_close(&pg.members);
    rl_map_close(&pg.groups);
    pg.started = 0;
    rl_proc_exit(&pg.proc, NULL);
}
