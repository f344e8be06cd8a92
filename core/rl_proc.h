/* Processes, mailboxes, the router and the scheduler: the only way parts of a node talk.
 *
 * Everything that receives messages is a process with a pid "<node>.<incarnation>.<kind><serial>",
 * e.g. "n1.7f3a9c.c42". rl_send() puts a message into the target's bounded mailbox (or hands it to
 * the cluster transport when the pid names another node); the scheduler, run from the node's libuv
 * loop, later calls the target's handle() for each message. So handle() never runs inside
 * rl_send(), and per sender->receiver pair messages arrive in order.
 *
 * Payload convention: JSON text, NUL-terminated. One exception: topic "ws.message" sent by a
 * connection to its hub carries the client's raw frame text (validated by the hub). */
#ifndef RL_PROC_H
#define RL_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RL_PID_MAX 64
#define RL_NODE_ID_MAX 32

typedef struct rl_msg {
    struct rl_msg *next;
    uint64_t epoch; /* lease epoch of a message to a user hub (cluster); 0 = none */
    size_t len;     /* payload length, without the NUL */
    char *topic;    /* all three point into buf */
    char *from;     /* "" when there is no sender process */
    char *payload;
    char buf[];
} rl_msg;

/* One allocation holding copies of the three strings; NULL on OOM. from may be NULL. */
rl_msg *rl_msg_new(const char *from, const char *topic, const char *payload, size_t len);
void rl_msg_free(rl_msg *m);

typedef struct rl_proc rl_proc;

typedef struct rl_proc_ops {
    const char *kind; /* "conn", "central", "hub", "plugin", ... for logs and metrics */
    char letter;      /* pid kind letter: 'c' conn, 'x' central, 'h' hub, 'p' plugin */
    /* Handles one message taken from the mailbox and owns it (rl_msg_free). Called by the
       scheduler only. May call rl_send, rl_proc_exit(p) and anything else. */
    void (*handle)(rl_proc *p, rl_msg *m);
    /* Optional fast path: when set, rl_send hands the message over at once instead of queueing
       (connections write frames directly). Returns 0 when it took m, else a negative errno
       (-EAGAIN: full) and the caller keeps m. Must not call rl_send re-entrantly on p. */
    int (*deliver)(rl_proc *p, rl_msg *m);
    /* Optional: a CANCEL request. The process should stop within deadline_ms and then call
       rl_proc_exit. Without it, rl_cancel exits the process at once. */
    void (*cancel)(rl_proc *p, uint64_t deadline_ms);
    /* Frees the object; called after rl_proc_exit once the scheduler no longer holds it. */
    void (*free)(rl_proc *p);
} rl_proc_ops;

struct rl_proc {
    const rl_proc_ops *ops;
    char pid[RL_PID_MAX];
    rl_msg *head, *tail;
    size_t qlen, qcap; /* qcap 0 = unbounded (only for trusted internal processes). A process
                          that keeps taken messages in a queue of its own (the Lua host's
                          inbox) counts them in qlen too, so the bound covers what it has not
                          consumed; rl_proc_exit sets qlen to 0. */
    rl_proc *next_ready;
    unsigned scheduled : 1, exited : 1;
    char **monitors; /* pids to tell with "pid.exit" when this one exits */
    size_t nmonitors;
};

/* Node identity and scheduler. node_id: [A-Za-z0-9_-]{1,31}; a random incarnation is drawn.
   Returns 0 or -EINVAL. Starts a uv_check and a uv_idle on loop (closed by rl_node_close). */
int rl_node_init(uv_loop_t *loop, const char *node_id);
void rl_node_close(void);
const char *rl_node_id(void);
const char *rl_node_incarnation(void);
uv_loop_t *rl_node_loop(void);
/* Milliseconds of the loop's clock (uv_now). */
uint64_t rl_now_ms(void);

/* 1 when pid names a process of this node incarnation. */
int rl_pid_is_local(const char *pid);
/* Writes the node id part of pid into out (size RL_NODE_ID_MAX); -EINVAL when malformed. */
int rl_pid_node(const char *pid, char *out);

/* Registers p (zeroed by the caller except its own fields) with a fresh pid and a mailbox of
   qcap messages. Returns 0 or -ENOMEM. */
int rl_proc_start(rl_proc *p, const rl_proc_ops *ops, size_t qcap);
/* Ends p: unregisters it, drops its queued messages (counted), sends "pid.exit" with payload
   {"pid":P,"error":null|"reason"} to each monitor, and frees p later through ops->free.
   Safe to call from p's own handle(); idempotent. */
void rl_proc_exit(rl_proc *p, const char *error);
rl_proc *rl_proc_find(const char *pid);
/* Number of live local processes of a kind letter. */
size_t rl_proc_count(char letter);

/* Sends a copy of payload. Returns 0; -EINVAL malformed pid; -ENOENT no such process;
   -EAGAIN mailbox full (message not taken); -ENOMEM; -EHOSTUNREACH no transport to that node. */
int rl_send(const char *from, const char *to, const char *topic, const char *payload, size_t len);
/* Same, taking ownership of m when it returns 0 (on error the caller keeps m). */
int rl_send_msg(const char *to, rl_msg *m);
/* After target exits, watcher gets "pid.exit" (at once with error "noproc" if it is gone). */
int rl_monitor(const char *watcher, const char *target);
/* Asks target to stop within deadline_ms (ops->cancel), or exits it at once. */
int rl_cancel(const char *target, uint64_t deadline_ms);

/* Cluster transport for pids of other nodes; the default returns -EHOSTUNREACH. On 0 the
   transport owns m. */
typedef int (*rl_remote_send_fn)(const char *to, rl_msg *m, void *ud);
void rl_router_set_remote(rl_remote_send_fn fn, void *ud);

#endif
