/* Processes, mailboxes, the router and the scheduler: the only way parts of a node talk. */
#include "rl_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"

/* Messages handled per process per turn, and per wake-up in all: bounds work per loop turn so
   sockets and timers are served while mailboxes are busy. */
#define RL_SCHED_BATCH 64
#define RL_SCHED_BUDGET 4096

static struct {
    uv_loop_t *loop;
    char node_id[RL_NODE_ID_MAX];
    char incarnation[16];
    char prefix[RL_NODE_ID_MAX + 18]; /* "<node>.<incarnation>." */
    size_t prefix_len;
    uint64_t serial;
    rl_map procs;
    rl_proc *ready_head, *ready_tail;
    rl_proc *dead; /* exited, waiting for free after the current turn */
    rl_proc *running; /* the process whose handle() runs now */
    uv_check_t check;
    uv_idle_t idle;
    int started;
    size_t counts[128];
    rl_remote_send_fn remote;
    void *remote_ud;
} node;

rl_msg *rl_msg_new(const char *from, const char *topic, const char *payload, size_t len)
{
    if (!from)
        from = "";
    size_t tl = strlen(topic), fl = strlen(from);
    rl_msg *m = malloc(sizeof *m + tl + fl + len + 3);
    if (!m)
        return NULL;
    m->next = NULL;
    m->epoch = 0;
    m->len = len;
    m->topic = m->buf;
    memcpy(m->topic, topic, tl + 1);
    m->from = m->topic + tl + 1;
    memcpy(m->from, from, fl + 1);
    m->payload = m->from + fl + 1;
    memcpy(m->payload, payload, len);
    m->payload[len] = '\0';
    return m;
}

void rl_msg_free(rl_msg *m) { free(m); }

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

static void draw_incarnation(char *out)
{
    unsigned char b[3] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
        uint64_t t = uv_hrtime() ^ (uint64_t)getpid();
        memcpy(b, &t, sizeof b);
    }
    if (fd >= 0)
        close(fd);
    snprintf(out, 16, "%02x%02x%02x", b[0], b[1], b[2]);
}

static void run_ready(uv_check_t *h);
static void idle_cb(uv_idle_t *h) { (void)h; }

int rl_node_init(uv_loop_t *loop, const char *node_id)
{
    if (!valid_node_id(node_id))
        return -EINVAL;
    memset(&node, 0, sizeof node);
    node.loop = loop;
    snprintf(node.node_id, sizeof node.node_id, "%s", node_id);
    draw_incarnation(node.incarnation);
    node.prefix_len = (size_t)snprintf(node.prefix, sizeof node.prefix, "%s.%s.", node.node_id,
                                       node.incarnation);
    rl_map_init(&node.procs);
    uv_check_init(loop, &node.check);
    uv_idle_init(loop, &node.idle);
    uv_check_start(&node.check, run_ready);
    uv_unref((uv_handle_t *)&node.check);
    node.started = 1;
    return 0;
}

static void free_dead(void)
{
    while (node.dead) {
        rl_proc *p = node.dead;
        node.dead = p->next_ready;
        for (size_t i = 0; i < p->nmonitors; i++)
            free(p->monitors[i]);
        free(p->monitors);
        if (p->ops->free)
            p->ops->free(p);
    }
}

void rl_node_close(void)
{
    if (!node.started)
        return;
    /* Exit whatever is still registered so owners free their objects. */
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&node.procs, &it, &k, &v);)
        rl_proc_exit(v, "node shutdown");
    while (node.ready_head) { /* every one has exited: move them to the dead list */
        rl_proc *p = node.ready_head;
        node.ready_head = p->next_ready;
        p->next_ready = node.dead;
        node.dead = p;
    }
    node.ready_tail = NULL;
    free_dead();
    rl_map_close(&node.procs);
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
    return strncmp(pid, node.prefix, node.prefix_len) == 0;
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

int rl_proc_start(rl_proc *p, const rl_proc_ops *ops, size_t qcap)
{
    p->ops = ops;
    p->qcap = qcap;
    p->head = p->tail = NULL;
    p->qlen = 0;
    p->scheduled = p->exited = 0;
    p->next_ready = NULL;
    p->monitors = NULL;
    p->nmonitors = 0;
    snprintf(p->pid, sizeof p->pid, "%s%c%llu", node.prefix, ops->letter,
             (unsigned long long)++node.serial);
    if (rl_map_set(&node.procs, p->pid, p) < 0)
        return -ENOMEM;
    node.counts[(unsigned char)ops->letter & 127]++;
    return 0;
}

rl_proc *rl_proc_find(const char *pid) { return rl_map_get(&node.procs, pid); }

size_t rl_proc_count(char letter) { return node.counts[(unsigned char)letter & 127]; }

static void schedule(rl_proc *p)
{
    if (p->scheduled)
        return;
    p->scheduled = 1;
    p->next_ready = NULL;
    if (node.ready_tail)
        node.ready_tail->next_ready = p;
    else
        node.ready_head = p;
    node.ready_tail = p;
    uv_idle_start(&node.idle, idle_cb); /* keep the loop from blocking in poll */
}

void rl_proc_exit(rl_proc *p, const char *error)
{
    if (p->exited)
        return;
    p->exited = 1;
    rl_map_del(&node.procs, p->pid);
    node.counts[(unsigned char)p->ops->letter & 127]--;
    size_t dropped = 0;
    while (p->head) {
        rl_msg *m = p->head;
        p->head = m->next;
        rl_msg_free(m);
        dropped++;
    }
    p->tail = NULL;
    p->qlen = 0;
    if (dropped)
        rl_metric_add(RL_M_MSGS_DROPPED, dropped);
    if (p->nmonitors) {
        char payload[512];
        int n;
        if (error) {
            char esc[300];
            size_t j = 0;
            for (const char *s = error; *s && j + 7 < sizeof esc; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\') {
                    esc[j++] = '\\';
                    esc[j++] = (char)c;
                } else if (c < 0x20) {
                    j += (size_t)snprintf(esc + j, sizeof esc - j, "\\u%04x", c);
                } else {
                    esc[j++] = (char)c;
                }
            }
            esc[j] = '\0';
            n = snprintf(payload, sizeof payload, "{\"pid\":\"%s\",\"error\":\"%s\"}", p->pid, esc);
        } else {
            n = snprintf(payload, sizeof payload, "{\"pid\":\"%s\",\"error\":null}", p->pid);
        }
        for (size_t i = 0; i < p->nmonitors; i++)
            rl_send(p->pid, p->monitors[i], "pid.exit", payload, (size_t)n);
    }
    /* If it sits in the ready list the scheduler skips it; freeing waits until the turn ends. */
    if (!p->scheduled && p != node.running) {
        p->next_ready = node.dead;
        node.dead = p;
        uv_idle_start(&node.idle, idle_cb);
    }
}

int rl_send_msg(const char *to, rl_msg *m)
{
    if (!rl_pid_is_local(to)) {
        char nid[RL_NODE_ID_MAX];
        if (rl_pid_node(to, nid) < 0)
            return -EINVAL;
        if (!node.remote)
            return -EHOSTUNREACH;
        return node.remote(to, m, node.remote_ud);
    }
    rl_proc *p = rl_map_get(&node.procs, to);
    if (!p)
        return -ENOENT;
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

int rl_send(const char *from, const char *to, const char *topic, const char *payload, size_t len)
{
    rl_msg *m = rl_msg_new(from, topic, payload, len);
    if (!m)
        return -ENOMEM;
    int rc = rl_send_msg(to, m);
    if (rc < 0)
        rl_msg_free(m);
    return rc;
}

int rl_monitor(const char *watcher, const char *target)
{
    rl_proc *p = rl_map_get(&node.procs, target);
    if (!p) {
        char payload[160];
        int n = snprintf(payload, sizeof payload, "{\"pid\":\"%s\",\"error\":\"noproc\"}", target);
        return rl_send(target, watcher, "pid.exit", payload, (size_t)n);
    }
    char **nm = realloc(p->monitors, (p->nmonitors + 1) * sizeof *nm);
    if (!nm)
        return -ENOMEM;
    p->monitors = nm;
    if (!(nm[p->nmonitors] = strdup(watcher)))
        return -ENOMEM;
    p->nmonitors++;
    return 0;
}

int rl_cancel(const char *target, uint64_t deadline_ms)
{
    rl_proc *p = rl_map_get(&node.procs, target);
    if (!p)
        return -ENOENT;
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

/* One scheduler turn: each ready process handles up to RL_SCHED_BATCH messages, in ready order,
   until RL_SCHED_BUDGET messages in all; what is left waits for the next turn (the idle handle
   keeps the loop from blocking meanwhile). */
static void run_ready(uv_check_t *h)
{
    (void)h;
    size_t budget = RL_SCHED_BUDGET;
    rl_proc *stop = node.ready_tail; /* processes scheduled during this turn wait for the next */
    while (node.ready_head && budget > 0) {
        rl_proc *p = node.ready_head;
        node.ready_head = p->next_ready;
        if (!node.ready_head)
            node.ready_tail = NULL;
        p->scheduled = 0;
        p->next_ready = NULL;
        for (int i = 0; i < RL_SCHED_BATCH && p->head && !p->exited && budget > 0; i++, budget--) {
            rl_msg *m = p->head;
            p->head = m->next;
            if (!p->head)
                p->tail = NULL;
            p->qlen--;
            m->next = NULL;
            node.running = p;
            p->ops->handle(p, m);
            node.running = NULL;
        }
        if (p->exited) {
            if (!p->scheduled) {
                p->next_ready = node.dead;
                node.dead = p;
            }
        } else if (p->head) {
            schedule(p);
        }
        if (p == stop)
            break;
    }
    free_dead();
    if (!node.ready_head)
        uv_idle_stop(&node.idle);
}
