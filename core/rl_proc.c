/* Processes, messages, the router and the scheduler: the only way parts of a node talk. */
#include "rl_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"
#include "rl_security.h"
#include "rl_spawn.h"

/* Messages handled per process per turn, and per turn in all: bounds work per loop turn so
   sockets and timers are served while mailboxes are busy. A run (a Lua resume) counts as one. */
#define RL_SCHED_BATCH 64
#define RL_SCHED_BUDGET 4096
#define RL_RAND_POOL 512 /* random bytes drawn at once for pids */

struct rl_owner { /* 16 bytes before the id, as when len was a size_t after refs */
    uint32_t refs;
    uint32_t len;
    rl_owner_use use;
    char user[];
};
_Static_assert(offsetof(struct rl_owner, user) == 16, "an idle user's owner keeps its size");

static struct {
    uv_loop_t *loop;
    char node_id[RL_NODE_ID_MAX];
    char incarnation[16];
    char prefix[RL_NODE_ID_MAX + 18]; /* "<node>.<incarnation>." */
    size_t prefix_len;
    uint64_t serial;
    struct {
        rl_proc **slots; /* by serial: open addressing, linear probing, no tombstones; filled up
                            to 3/4 (a successful probe reads 2.5 slots on average at the most,
                            and with tens of thousands of processes 1/2 cost 8 B a slot more) */
        size_t cap, len;
    } procs;
    rl_map owners; /* user -> rl_owner (interned) */
    rl_proc *ready_head, *ready_tail;
    rl_proc *later_head, *later_tail; /* scheduled by themselves while running: next turn */
    rl_proc *dead;    /* exited, waiting for free after the current turn */
    rl_proc *running; /* the process whose handle() or run() runs now */
    uv_check_t check;
    uv_idle_t idle;
    int started, requested;
    size_t counts[128];
    rl_remote_send_fn remote;
    void *remote_ud;
    struct {
        rl_turn_fn fn;
        void *ud;
    } steps[RL_TURN_STEPS];
    unsigned char rand[RL_RAND_POOL];
    size_t rand_left;
} node;

/* ---- owners ------------------------------------------------------------------------------ */

rl_owner *rl_owner_get(const char *user, size_t len)
{
    if (len > UINT32_MAX - 1 || memchr(user, '\0', len))
        return NULL;
    char key[256], *k = len < sizeof key ? key : malloc(len + 1);
    if (!k)
        return NULL;
    memcpy(k, user, len);
    k[len] = '\0';
    rl_owner *o = rl_map_get(&node.owners, k);
    if (o) {
        o->refs++;
    } else if ((o = malloc(sizeof *o + len + 1))) {
        o->refs = 1;
        o->len = (uint32_t)len;
        memset(&o->use, 0, sizeof o->use);
        memcpy(o->user, k, len + 1);
        if (rl_map_set(&node.owners, o->user, o) < 0) {
            free(o);
            o = NULL;
        }
    }
    if (k != key)
        free(k);
    return o;
}

rl_owner *rl_owner_ref(rl_owner *o)
{
    if (o)
        o->refs++;
    return o;
}

void rl_owner_unref(rl_owner *o)
{
    if (!o || --o->refs)
        return;
    rl_map_del(&node.owners, o->user);
    free(o);
}

const char *rl_owner_user(const rl_owner *o) { return o ? o->user : NULL; }

rl_owner_use *rl_owner_use_of(rl_owner *o) { return o ? &o->use : NULL; }

/* ---- bodies ------------------------------------------------------------------------------ */

enum { BODY_IN_MSG = 1 }; /* the body shares its message's block (rl_msg_new_data) */

rl_body *rl_body_new(const void *data, size_t len)
{
    rl_body *b = malloc(sizeof *b + RL_BODY_HEADROOM + len + 1);
    if (!b)
        return NULL;
    b->refs = 1;
    b->flags = 0;
    b->len = len;
    b->data = (char *)(b + 1) + RL_BODY_HEADROOM;
    if (data)
        memcpy(b->data, data, len);
    else
        memset(b->data, 0, len);
    b->data[len] = '\0';
    return b;
}

rl_body *rl_body_ref(rl_body *b)
{
    if (b && b->refs != UINT32_MAX)
        b->refs++;
    return b;
}

void rl_body_unref(rl_body *b)
{
    if (!b || b->refs == UINT32_MAX || --b->refs)
        return;
    if (b->flags & BODY_IN_MSG)
        free((char *)b - sizeof(rl_msg)); /* the message went first; the block is its */
    else
        free(b);
}

static char empty_object_bytes[RL_BODY_HEADROOM + 3] = {[RL_BODY_HEADROOM] = '{', '}', '\0'};
static rl_body empty_object = {UINT32_MAX, 0, 2, empty_object_bytes + RL_BODY_HEADROOM};

rl_body *rl_body_empty_object(void) { return &empty_object; }

/* ---- topics -------------------------------------------------------------------------------- */

typedef enum {
    RULE_SAME_USER,
    RULE_SYSTEM,
    RULE_OWN_CONN,
    RULE_CONN_SELF,
    RULE_HUB_LOCAL,
    RULE_HUB_ANSWER
} rule;

static const struct {
    const char *name;
    rule rule;
} topics[] = {
#define RL_TOPIC_ROW(id, name, r) {name, RULE_##r},
    RL_TOPICS(RL_TOPIC_ROW)
#undef RL_TOPIC_ROW
};

const char *rl_topic_name(rl_topic t) { return t < RL_T_COUNT ? topics[t].name : ""; }

rl_topic rl_topic_find(const char *name, size_t len)
{
    for (int t = 1; t < RL_T_COUNT; t++)
        if (strlen(topics[t].name) == len && memcmp(topics[t].name, name, len) == 0)
            return (rl_topic)t;
    return RL_T_APP;
}

int rl_topic_allowed(rl_topic t, const rl_owner *sender, const char *sender_pid,
                     const rl_proc *target)
{
    if (t >= RL_T_COUNT)
        return 0;
    /* the sender's kind is read only by the rules that use it (not on most messages) */
    switch (topics[t].rule) {
    case RULE_SAME_USER:
        return !sender || sender == target->owner;
    case RULE_SYSTEM:
        return !sender;
    case RULE_OWN_CONN:
        return sender && sender == target->owner && rl_pid_kind(sender_pid) == 'c';
    case RULE_CONN_SELF:
        if (!target->owner) /* to the central: a connection speaks for itself only */
            return sender && rl_pid_kind(sender_pid) == 'c';
        return !sender || (t == RL_T_WS_REHOME && sender == target->owner && rl_pid_kind(sender_pid) == 'h');
    case RULE_HUB_LOCAL:
        return sender && !target->owner && rl_pid_kind(sender_pid) == 'h' && rl_pid_is_local(sender_pid);
    case RULE_HUB_ANSWER:
        return !target->owner && (!sender || rl_pid_kind(sender_pid) == 'h');
    }
    return 0;
}

int rl_may_control(const rl_proc *caller, const rl_proc *target)
{
    return !caller || !caller->owner || caller->owner == target->owner;
}

/* ---- messages ------------------------------------------------------------------------------ */

static rl_msg *msg_alloc(rl_topic t, size_t extra)
{
    rl_msg *m = malloc(sizeof *m + extra);
    if (!m)
        return NULL;
    memset(m, 0, sizeof *m);
    m->topic = (uint16_t)t;
    return m;
}

rl_msg *rl_msg_new(rl_topic t) { return msg_alloc(t, 0); }

/* Copies an APP topic name into the message's own block at n. */
static void set_name(rl_msg *m, char *n, const char *name, size_t nlen)
{
    if (!nlen)
        return;
    memcpy(n, name, nlen);
    m->name = n;
    m->name_len = (uint32_t)nlen;
}

/* Block layout: [rl_msg][rl_body][headroom][data][NUL][name]. */
rl_msg *rl_msg_new_data(rl_topic t, const char *name, size_t nlen, const void *data, size_t len)
{
    if (t != RL_T_APP)
        nlen = 0;
    rl_msg *m = msg_alloc(t, sizeof(rl_body) + RL_BODY_HEADROOM + len + 1 + nlen);
    if (!m)
        return NULL;
    rl_body *b = (rl_body *)(m + 1);
    b->refs = 1;
    b->flags = BODY_IN_MSG;
    b->len = len;
    b->data = (char *)(b + 1) + RL_BODY_HEADROOM;
    if (data)
        memcpy(b->data, data, len);
    b->data[len] = '\0';
    m->body = b;
    set_name(m, b->data + len + 1, name, nlen);
    return m;
}

rl_msg *rl_msg_new_body(rl_topic t, const char *name, size_t nlen, rl_body *b)
{
    if (t != RL_T_APP)
        nlen = 0;
    rl_msg *m = msg_alloc(t, nlen);
    if (!m)
        return NULL;
    m->body = rl_body_ref(b);
    set_name(m, (char *)(m + 1), name, nlen);
    return m;
}

rl_msg *rl_msg_rehome(const char *conn, const char *hub)
{
    rl_msg *m = rl_msg_new(RL_T_WS_REHOME);
    if (!m)
        return NULL;
    snprintf(m->ctl.rehome.conn, sizeof m->ctl.rehome.conn, "%s", conn ? conn : "");
    snprintf(m->ctl.rehome.hub, sizeof m->ctl.rehome.hub, "%s", hub);
    return m;
}

const char *rl_msg_request_id(const rl_msg *m, size_t *len)
{
    *len = m->body ? m->env.rid_len : 0;
    return *len ? m->body->data + m->env.rid_off : NULL;
}

void rl_msg_free(rl_msg *m)
{
    if (!m)
        return;
    rl_owner_unref(m->owner);
    if (m->topic == RL_T_WS_JOIN) {
        rl_body_unref(m->ctl.join.meta);
        rl_body_unref(m->ctl.join.scope);
    } else if (m->topic == RL_T_PID_EXIT) {
        rl_body_unref(m->ctl.exit.error);
    } else if (m->topic >= RL_T_API_PUSH && m->topic <= RL_T_API_REPLY) {
        rl_body_unref(m->ctl.api.topic);
        rl_body_unref(m->ctl.api.data);
    }
    rl_body *b = m->body;
    if (b && (b->flags & BODY_IN_MSG) && b == (rl_body *)(m + 1)) {
        rl_body_unref(b); /* frees the block with the last reference */
        return;
    }
    rl_body_unref(b);
    free(m);
}

rl_msg *rl_msg_api_reply(uint64_t req, int code, uint32_t count, rl_body *data)
{
    rl_msg *m = rl_msg_new(RL_T_API_REPLY);
    if (!m)
        return NULL;
    m->ctl.api.req = req;
    m->ctl.api.code = code;
    m->ctl.api.count = count;
    m->ctl.api.data = rl_body_ref(data);
    return m;
}

const char *rl_msg_topic_name(const rl_msg *m, size_t *len)
{
    if (m->topic == RL_T_APP) {
        *len = m->name_len;
        return m->name ? m->name : "";
    }
    const char *n = rl_topic_name((rl_topic)m->topic);
    *len = strlen(n);
    return n;
}

/* ---- node and pids ------------------------------------------------------------------------- */

static int valid_node_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n >= RL_NODE_ID_MAX)
        return 0;
    for (const char *s = id; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* n bytes from the kernel's CSPRNG, drawn RL_RAND_POOL at a time. */
void rl_random_bytes(unsigned char *out, size_t n)
{
    while (n) {
        if (node.rand_left == 0) {
            size_t got = 0;
            while (got < sizeof node.rand) {
                ssize_t r = getrandom(node.rand + got, sizeof node.rand - got, 0);
                if (r < 0 && errno != EINTR)
                    RL_PANIC("getrandom: %s", strerror(errno));
                if (r > 0)
                    got += (size_t)r;
            }
            node.rand_left = sizeof node.rand;
        }
        size_t k = n < node.rand_left ? n : node.rand_left;
        memcpy(out, node.rand + sizeof node.rand - node.rand_left, k);
        memset(node.rand + sizeof node.rand - node.rand_left, 0, k);
        node.rand_left -= k;
        out += k;
        n -= k;
    }
}

static void end_of_turn(uv_check_t *h);
static void idle_cb(uv_idle_t *h) { (void)h; }
static void splice_later(void);

int rl_node_init(uv_loop_t *loop, const char *node_id)
{
    if (!valid_node_id(node_id))
        return -EINVAL;
    memset(&node, 0, sizeof node);
    node.loop = loop;
    snprintf(node.node_id, sizeof node.node_id, "%s", node_id);
    unsigned char b[3];
    rl_random_bytes(b, sizeof b);
    snprintf(node.incarnation, sizeof node.incarnation, "%02x%02x%02x", b[0], b[1], b[2]);
    node.prefix_len = (size_t)snprintf(node.prefix, sizeof node.prefix, "%s.%s.", node.node_id,
                                       node.incarnation);
    rl_map_init_borrowed(&node.owners); /* key: the owner's own user id */
    uv_check_init(loop, &node.check);
    uv_idle_init(loop, &node.idle);
    uv_check_start(&node.check, end_of_turn);
    uv_unref((uv_handle_t *)&node.check);
    node.started = 1;
    return 0;
}

static void free_dead(void)
{
    while (node.dead) {
        rl_proc *p = node.dead;
        node.dead = p->next_ready;
        free(p->monitors);
        p->monitors = NULL;
        p->nmonitors = 0;
        rl_owner *o = p->owner;
        p->owner = NULL;
        if (p->ops->free)
            p->ops->free(p);
        rl_owner_unref(o);
    }
}

void rl_node_close(void)
{
    if (!node.started)
        return;
    /* Exit whatever is still registered so owners free their objects (an exit moves other
       entries back into the freed slot, so a slot is looked at until it is empty). */
    for (int pass = 0; pass < 3 && node.procs.len; pass++)
        for (size_t i = 0; i < node.procs.cap;) {
            if (node.procs.slots[i])
                rl_proc_exit(node.procs.slots[i], "node shutdown");
            else
                i++;
        }
    splice_later();
    while (node.ready_head) { /* every one has exited: move them to the dead list */
        rl_proc *p = node.ready_head;
        node.ready_head = p->next_ready;
        p->next_ready = node.dead;
        node.dead = p;
    }
    node.ready_tail = NULL;
    free_dead();
    free(node.procs.slots);
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&node.owners, &it, &k, &v);)
        free(v); /* leaked references (a bug elsewhere) must not outlive the node */
    rl_map_close(&node.owners);
    uv_close((uv_handle_t *)&node.check, NULL);
    uv_close((uv_handle_t *)&node.idle, NULL);
    node.started = 0;
}

const char *rl_node_id(void) { return node.node_id; }
const char *rl_node_incarnation(void) { return node.incarnation; }
uv_loop_t *rl_node_loop(void) { return node.loop; }
uint64_t rl_now_ms(void) { return node.loop ? uv_now(node.loop) : 0; }

int rl_pid_is_local(const char *pid)
{
    return node.prefix_len && strncmp(pid, node.prefix, node.prefix_len) == 0;
}

/* A pid's random part: 8 lowercase hex digits. */
static void put_hex8(char out[8], uint32_t rnd)
{
    for (int i = 7; i >= 0; i--)
        *out++ = "0123456789abcdef"[rnd >> (4 * i) & 15];
}

/* "<prefix><kind><serial>.<rnd as 8 hex digits>", cut to RL_PID_MAX - 1 bytes as snprintf would
   (written by hand: the hub formats a pid for each message it routes, and printf costs 1,500
   instructions a call). */
static void pid_format(char out[RL_PID_MAX], char kind, uint64_t serial, uint32_t rnd)
{
    char buf[sizeof node.prefix + 32], dig[20];
    size_t n = node.prefix_len, nd = 0;
    memcpy(buf, node.prefix, n);
    buf[n++] = kind;
    do
        dig[nd++] = (char)('0' + serial % 10);
    while ((serial /= 10) != 0);
    while (nd)
        buf[n++] = dig[--nd];
    buf[n++] = '.';
    put_hex8(buf + n, rnd);
    n += 8;
    if (n > RL_PID_MAX - 1)
        n = RL_PID_MAX - 1;
    memcpy(out, buf, n);
    out[n] = '\0';
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int rl_pid_pack(const char *pid, rl_pid_local *out)
{
    if (!rl_pid_is_local(pid))
        return -EINVAL;
    const char *s = pid + node.prefix_len;
    if (*s < 'a' || *s > 'z')
        return -EINVAL;
    char kind = *s++;
    if (s[0] == '0' && s[1] != '.') /* a leading zero: not one we made */
        return -EINVAL;
    uint64_t serial = 0;
    int digits = 0;
    for (; *s >= '0' && *s <= '9' && digits < 19; s++, digits++)
        serial = serial * 10 + (uint64_t)(*s - '0');
    if (!digits || *s++ != '.')
        return -EINVAL;
    uint32_t rnd = 0;
    for (int i = 0; i < 8; i++, s++) {
        int d = hex_digit(*s);
        if (d < 0)
            return -EINVAL;
        rnd = rnd << 4 | (uint32_t)d;
    }
    if (*s) /* longer than a pid: not one we made (the digits are pid_format's, lowercase hex) */
        return -EINVAL;
    *out = (rl_pid_local){.serial = serial, .rnd = rnd, .kind = kind};
    return 0;
}

void rl_pid_unpack(const rl_pid_local *p, char out[RL_PID_MAX]) { pid_format(out, p->kind, p->serial, p->rnd); }

int rl_pid_local_is(const rl_pid_local *p, const char *pid)
{
    rl_pid_local q;
    return rl_pid_pack(pid, &q) == 0 && q.serial == p->serial && q.rnd == p->rnd && q.kind == p->kind;
}

int rl_pid_node(const char *pid, char *out)
{
    const char *dot = strchr(pid, '.');
    if (!dot || dot == pid || (size_t)(dot - pid) >= RL_NODE_ID_MAX || !strchr(dot + 1, '.'))
        return -EINVAL;
    memcpy(out, pid, (size_t)(dot - pid));
    out[dot - pid] = '\0';
    return 0;
}

char rl_pid_kind(const char *pid)
{
    if (!pid)
        return 0;
    const char *d = strchr(pid, '.');
    d = d ? strchr(d + 1, '.') : NULL;
    return d && d[1] >= 'a' && d[1] <= 'z' ? d[1] : 0;
}

/* ---- the local process table -------------------------------------------------------------
 * Keyed by the serial in each pid (serials are consecutive, so the slot is the serial masked):
 * a lookup parses the serial, probes, and compares the whole pid (its random part included) of
 * the one process it finds; no hashing of strings and no key copies. */

static int procs_put(rl_proc *p)
{
    if ((node.procs.len + 1) * 4 > node.procs.cap * 3) {
        size_t ncap = node.procs.cap ? node.procs.cap * 2 : 64;
        rl_proc **ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return -ENOMEM;
        for (size_t i = 0; i < node.procs.cap; i++) {
            rl_proc *q = node.procs.slots[i];
            if (!q)
                continue;
            size_t j = (size_t)q->serial & (ncap - 1);
            while (ns[j])
                j = (j + 1) & (ncap - 1);
            ns[j] = q;
        }
        free(node.procs.slots);
        node.procs.slots = ns;
        node.procs.cap = ncap;
    }
    size_t mask = node.procs.cap - 1, i = (size_t)p->serial & mask;
    while (node.procs.slots[i])
        i = (i + 1) & mask;
    node.procs.slots[i] = p;
    node.procs.len++;
    return 0;
}

static size_t procs_slot(uint64_t serial)
{
    if (!node.procs.cap)
        return SIZE_MAX;
    size_t mask = node.procs.cap - 1;
    for (size_t i = (size_t)serial & mask; node.procs.slots[i]; i = (i + 1) & mask)
        if (node.procs.slots[i]->serial == serial)
            return i;
    return SIZE_MAX;
}

/* Removes slot i and moves the entries after it back so that no probe sequence has a hole. */
static void procs_remove(size_t i)
{
    size_t mask = node.procs.cap - 1;
    node.procs.slots[i] = NULL;
    node.procs.len--;
    for (size_t j = (i + 1) & mask; node.procs.slots[j]; j = (j + 1) & mask) {
        size_t home = (size_t)node.procs.slots[j]->serial & mask;
        /* j's entry may fill the hole at i unless its home lies cyclically in (i, j] */
        int stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays)
            continue;
        node.procs.slots[i] = node.procs.slots[j];
        node.procs.slots[j] = NULL;
        i = j;
    }
}

/* The local process named by pid, or NULL: "<prefix><kind><serial>.<random>"; pid is known
   to start with this node's prefix (rl_pid_is_local). */
static rl_proc *procs_find_local(const char *pid)
{
    const char *s = pid + node.prefix_len;
    if (*s < 'a' || *s > 'z')
        return NULL;
    uint64_t serial = 0;
    int digits = 0;
    for (s++; *s >= '0' && *s <= '9' && digits < 20; s++, digits++)
        serial = serial * 10 + (uint64_t)(*s - '0');
    if (!digits || *s != '.')
        return NULL;
    size_t i = procs_slot(serial);
    if (i == SIZE_MAX)
        return NULL;
    rl_proc *p = node.procs.slots[i];
    return strcmp(p->pid, pid) == 0 ? p : NULL;
}

static rl_proc *procs_find(const char *pid)
{
    return rl_pid_is_local(pid) ? procs_find_local(pid) : NULL;
}

int rl_proc_start(rl_proc *p, const rl_proc_ops *ops, size_t qcap, rl_owner *owner)
{
    p->ops = ops;
    p->qcap = qcap > UINT32_MAX ? UINT32_MAX : (uint32_t)qcap;
    p->head = p->tail = NULL;
    p->qlen = 0;
    p->scheduled = p->exited = p->woken = 0;
    p->next_ready = NULL;
    p->monitors = NULL;
    p->nmonitors = 0;
    unsigned char r[4];
    rl_random_bytes(r, sizeof r);
    p->serial = ++node.serial;
    pid_format(p->pid, ops->letter, p->serial,
               (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 | r[3]);
    if (procs_put(p) < 0)
        return -ENOMEM;
    p->owner = rl_owner_ref(owner);
    node.counts[(unsigned char)ops->letter & 127]++;
    return 0;
}

rl_proc *rl_proc_find(const char *pid) { return procs_find(pid); }

rl_proc *rl_proc_by_serial(uint64_t serial)
{
    size_t i = procs_slot(serial);
    return i == SIZE_MAX ? NULL : node.procs.slots[i];
}

size_t rl_proc_count(char letter) { return node.counts[(unsigned char)letter & 127]; }

rl_proc *rl_proc_next(char letter, size_t *cursor)
{
    for (size_t i = *cursor; i < node.procs.cap; i++) {
        rl_proc *p = node.procs.slots[i];
        if (p && !p->exited && p->ops->letter == letter) {
            *cursor = i + 1;
            return p;
        }
    }
    *cursor = node.procs.cap;
    return NULL;
}

void rl_turn_request(void)
{
    node.requested = 1;
    uv_idle_start(&node.idle, idle_cb);
}

/* Moves what rescheduled itself behind what is ready (for the next turn). */
static void splice_later(void)
{
    if (!node.later_head)
        return;
    if (node.ready_tail)
        node.ready_tail->next_ready = node.later_head;
    else
        node.ready_head = node.later_head;
    node.ready_tail = node.later_tail;
    node.later_head = node.later_tail = NULL;
}

static void append(rl_proc **head, rl_proc **tail, rl_proc *p)
{
    p->scheduled = 1;
    p->next_ready = NULL;
    if (*tail)
        (*tail)->next_ready = p;
    else
        *head = p;
    *tail = p;
}

/* A process made ready by another one runs in this turn; one that makes itself ready again
   (more mail than a batch, a Lua instance yielding after a long slice) waits for the next, so
   no process can keep the loop from sockets and timers. */
static void schedule(rl_proc *p)
{
    if (p->scheduled)
        return;
    if (p == node.running)
        append(&node.later_head, &node.later_tail, p);
    else
        append(&node.ready_head, &node.ready_tail, p);
    rl_turn_request(); /* keep the loop from blocking in poll */
}

void rl_proc_wake(rl_proc *p)
{
    if (p->exited)
        return;
    p->woken = 1;
    schedule(p);
}

/* PID_EXIT for pid: from the exiting pid, with the system's authority (no owner). */
static rl_msg *exit_msg(const char *pid, const char *error)
{
    rl_msg *m = rl_msg_new(RL_T_PID_EXIT);
    if (!m)
        return NULL;
    snprintf(m->ctl.exit.pid, sizeof m->ctl.exit.pid, "%s", pid);
    memcpy(m->from, m->ctl.exit.pid, RL_PID_MAX);
    if (error && !(m->ctl.exit.error = rl_body_new(error, strlen(error)))) {
        rl_msg_free(m);
        return NULL;
    }
    return m;
}

void rl_proc_exit(rl_proc *p, const char *error)
{
    if (p->exited)
        return;
    p->exited = 1;
    size_t slot = procs_slot(p->serial);
    if (slot != SIZE_MAX && node.procs.slots[slot] == p)
        procs_remove(slot);
    node.counts[(unsigned char)p->ops->letter & 127]--;
    size_t dropped = 0;
    while (p->head) {
        rl_msg *m = p->head;
        p->head = m->next;
        m->next = NULL;
        if (p->ops->orphan) {
            p->ops->orphan(p, m);
        } else {
            rl_msg_free(m);
            dropped++;
        }
    }
    p->tail = NULL;
    p->qlen = 0;
    if (dropped)
        rl_metric_add(RL_M_MSGS_DROPPED, dropped);
    for (size_t i = 0; i < p->nmonitors; i++) {
        size_t w = procs_slot(p->monitors[i]);
        if (w == SIZE_MAX)
            continue; /* the watcher exited first */
        rl_msg *m = exit_msg(p->pid, error);
        /* The runtime tells the monitors: a system message, whoever the exiting process is. */
        if (!m || rl_send_as(node.procs.slots[w]->pid, m) < 0) {
            rl_msg_free(m);
            rl_metric_inc(RL_M_MSGS_DROPPED);
        }
    }
    /* If it sits in the ready list the scheduler skips it; freeing waits until the turn ends. */
    if (!p->scheduled && p != node.running) {
        p->next_ready = node.dead;
        node.dead = p;
        rl_turn_request();
    }
}

static int refuse(const char *to, const rl_msg *m, const rl_proc *target)
{
    size_t nl;
    const char *name = rl_msg_topic_name(m, &nl);
    rl_metric_inc(RL_M_MSGS_REFUSED);
    rl_warn("router", "refused %.*s from %s (%s) to %s (%s): permission denied", (int)nl, name,
            m->from[0] ? m->from : "-", m->owner ? rl_owner_user(m->owner) : "system", to,
            target->owner ? rl_owner_user(target->owner) : "system");
    return -EPERM;
}

static int deliver_to(rl_proc *p, const char *to, rl_msg *m);

/* Local delivery (or the transport) of a message whose sender fields are set. */
static int route(const char *to, rl_msg *m)
{
    if (!rl_pid_is_local(to)) {
        char nid[RL_NODE_ID_MAX];
        if (rl_pid_node(to, nid) < 0)
            return -EINVAL;
        if (!node.remote)
            return -EHOSTUNREACH;
        return node.remote(to, m, node.remote_ud);
    }
    rl_proc *p = procs_find_local(to);
    return p ? deliver_to(p, to, m) : -ENOENT;
}

/* The authority check, then p's mailbox (to: p's pid, for the log). */
static int deliver_to(rl_proc *p, const char *to, rl_msg *m)
{
    if (!rl_topic_allowed((rl_topic)m->topic, m->owner, m->from, p) &&
        !rl_sec_send_allowed(m, p)) /* another user's hub or plugin: the sender's policy */
        return refuse(to, m, p);
    if (p->ops->deliver)
        return p->ops->deliver(p, m);
    if (p->qcap && p->qlen >= p->qcap)
        return -EAGAIN;
    m->next = NULL;
    if (p->tail)
        p->tail->next = m;
    else
        p->head = m;
    p->tail = m;
    p->qlen++;
    schedule(p);
    return 0;
}

int rl_send(rl_proc *from, const char *to, rl_msg *m)
{
    rl_owner *prev = m->owner;
    if (from) {
        memcpy(m->from, from->pid, RL_PID_MAX);
        m->owner = rl_owner_ref(from->owner);
    } else {
        m->from[0] = '\0';
        m->owner = NULL;
    }
    int rc = route(to, m);
    if (rc < 0) { /* the caller keeps m as it was */
        rl_owner_unref(m->owner);
        m->owner = prev;
    } else {
        rl_owner_unref(prev);
    }
    return rc;
}

int rl_send_or_free(rl_proc *from, const char *to, rl_msg *m)
{
    if (!m) {
        rl_metric_inc(RL_M_MSGS_DROPPED);
        return -ENOMEM;
    }
    int rc = rl_send(from, to, m);
    if (rc < 0) {
        rl_msg_free(m);
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
    return rc;
}

int rl_send_as(const char *to, rl_msg *m) { return route(to, m); }

int rl_send_as_local(const rl_pid_local *to, rl_msg *m)
{
    size_t i = procs_slot(to->serial);
    if (i == SIZE_MAX)
        return -ENOENT;
    rl_proc *p = node.procs.slots[i];
    /* the serial found it; the kind and the random part (the pid's last 8 digits) must be this
       process's too. Otherwise, or when the pid was cut to RL_PID_MAX, the string decides. */
    const char *pid = p->pid + node.prefix_len;
    size_t n = strlen(pid);
    char rnd[8];
    put_hex8(rnd, to->rnd);
    if (pid[0] == to->kind && n >= 10 && pid[n - 9] == '.' && memcmp(pid + n - 8, rnd, 8) == 0)
        return deliver_to(p, p->pid, m);
    char full[RL_PID_MAX];
    rl_pid_unpack(to, full);
    return route(full, m);
}

int rl_monitor(rl_proc *watcher, const char *target)
{
    rl_proc *p = procs_find(target);
    if (!p) {
        rl_msg *m = exit_msg(target, "noproc");
        if (!m)
            return -ENOMEM;
        int rc = rl_send_as(watcher->pid, m);
        if (rc < 0)
            rl_msg_free(m);
        return rc;
    }
    if (!rl_may_control(watcher, p))
        return -EPERM;
    uint64_t *nm = realloc(p->monitors, (p->nmonitors + 1) * sizeof *nm);
    if (!nm)
        return -ENOMEM;
    p->monitors = nm;
    nm[p->nmonitors++] = watcher->serial;
    return 0;
}

int rl_cancel(rl_proc *caller, const char *target, uint64_t deadline_ms)
{
    rl_proc *p = procs_find(target);
    if (!p)
        return -ENOENT;
    if (!rl_may_control(caller, p))
        return -EPERM;
    if (p->ops->cancel)
        p->ops->cancel(p, deadline_ms);
    else
        rl_proc_exit(p, "cancelled");
    return 0;
}

void rl_router_set_remote(rl_remote_send_fn fn, void *ud)
{
    node.remote = fn;
    node.remote_ud = ud;
}

/* ---- the end of a loop turn ---------------------------------------------------------------- */

void rl_turn_set(rl_turn_step step, rl_turn_fn fn, void *ud)
{
    node.steps[step].fn = fn;
    node.steps[step].ud = ud;
}

/* The scheduler: each ready process handles up to RL_SCHED_BATCH messages and then runs once
   if it was woken, in ready order (those made ready meanwhile by others too), until
   RL_SCHED_BUDGET units in all; what is left, and what rescheduled itself, waits for
   the next turn (the idle handle keeps the loop from blocking meanwhile). */
static void run_procs(void)
{
    size_t budget = RL_SCHED_BUDGET;
    /* Processes scheduled during this turn run in it too (a client's message reaches its
       plugin and the reply its socket in one turn); the budget bounds a ping-pong. */
    while (node.ready_head && budget > 0) {
        rl_proc *p = node.ready_head;
        node.ready_head = p->next_ready;
        if (!node.ready_head)
            node.ready_tail = NULL;
        p->scheduled = 0;
        p->next_ready = NULL;
        node.running = p;
        for (int i = 0; i < RL_SCHED_BATCH && p->head && !p->exited && budget > 0; i++, budget--) {
            rl_msg *m = p->head;
            p->head = m->next;
            if (!p->head)
                p->tail = NULL;
            p->qlen--;
            m->next = NULL;
            p->ops->handle(p, m);
        }
        if (p->woken && !p->exited && p->ops->run && budget > 0) {
            p->woken = 0;
            budget--;
            p->ops->run(p);
        }
        if (!p->exited && (p->head || p->woken))
            schedule(p); /* still p == node.running: the next turn */
        node.running = NULL;
        if (p->exited && !p->scheduled) {
            p->next_ready = node.dead;
            node.dead = p;
        }
    }
    splice_later();
    free_dead();
}

/* uv_check: after the loop's I/O callbacks, every turn. The steps in their documented order. */
static void end_of_turn(uv_check_t *h)
{
    (void)h;
    run_procs();
    node.requested = 0; /* a step that leaves work for the next turn asks again */
    for (int s = RL_TURN_FRAMES; s < RL_TURN_STEPS; s++)
        if (node.steps[s].fn)
            node.steps[s].fn(node.steps[s].ud);
    if (!node.ready_head && !node.dead && !node.requested)
        uv_idle_stop(&node.idle);
}

/* ---- the spawner (rl_spawn.h) -------------------------------------------------------------- */

static rl_spawn_fn spawner;

void rl_spawner_set(rl_spawn_fn fn) { spawner = fn; }

int rl_spawn(const rl_spawn_args *a, char pid_out[RL_PID_MAX], char *err, size_t errlen)
{
    if (!spawner) {
        snprintf(err, errlen, "no plugin host");
        return -ENOSYS;
    }
    return spawner(a, pid_out, err, errlen);
}
