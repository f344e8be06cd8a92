/* Processes, messages, the router and the scheduler: the only way parts of a node talk.
 *
 * Everything that receives messages is a process with a pid "<node>.<incarnation>.<kind><serial>.
 * <random>", e.g. "n1.7f3a9c.c42.9b1e0d4a": knowing one pid tells nothing about the next. Every
 * process has an owner: the system (NULL) or one user (an interned, refcounted rl_owner).
 *
 * A message is a topic from one table (RL_TOPICS), its sender (pid and owner, filled in by the
 * router, never by the sender), and an immutable body: bytes in a reference-counted rl_body
 * (the client's frame as received, or data encoded once by its sender), or, for internal topics,
 * a C struct inside the message. Handing a message to a local process copies no payload bytes;
 * the cluster transport is the only place that serialises one.
 *
 * rl_send() checks the sender's authority for the topic against the target (rl_topic_allowed),
 * then puts the message into the target's bounded mailbox, or gives it to the process's deliver
 * hook, or hands it to the cluster transport when the pid names another node. The scheduler runs
 * from the end of the loop turn (rl_turn_*): handle() never runs inside rl_send(), and per
 * sender->receiver pair messages arrive in order. */
#ifndef RL_PROC_H
#define RL_PROC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define RL_PID_MAX 64
#define RL_NODE_ID_MAX 32
#define RL_BODY_HEADROOM 16 /* writable bytes before every body's data (a frame header, LWS_PRE) */
#define RL_CLOSE_REASON_MAX 123 /* RFC 6455: a 125-byte close payload minus the code */

/* ---- owners ------------------------------------------------------------------------------ */

typedef struct rl_owner rl_owner; /* NULL = the system */

/* The owner for user (len bytes, any bytes but NUL), interned: the same user gives the same
   pointer while a reference lives. Returns a new reference, or NULL on OOM. */
rl_owner *rl_owner_get(const char *user, size_t len);
rl_owner *rl_owner_ref(rl_owner *o); /* NULL-safe */
void rl_owner_unref(rl_owner *o);    /* NULL-safe */
/* The user's id (NUL-terminated, valid while o is), or NULL for the system. */
const char *rl_owner_user(const rl_owner *o);

/* What one user's plugin processes on this node hold, for the per-user bounds of the plugin
   host (plugin_user_max_*): zero when the owner is made, kept by plugins/ (each count is given
   back by whoever took it, while it holds a reference). Fits the owner's header padding, so an
   idle user costs nothing more. */
typedef struct rl_owner_use {
    uint16_t procs;  /* live plugin instances (plugin_user_max_processes, at most 30,000, plus
                        the hub's own plugins) */
    uint16_t timers; /* live timers, tickers and sleeps (plugin_user_max_timers, at most 30,000,
                        plus one cancel deadline per instance) */
    uint32_t chans;  /* live channels made with channel.new (plugin_user_max_channels) */
} rl_owner_use;
/* o's counts, or NULL for the system (no per-user bounds). */
rl_owner_use *rl_owner_use_of(rl_owner *o);

/* ---- bodies ------------------------------------------------------------------------------ */

/* Immutable bytes shared by reference. data[-RL_BODY_HEADROOM .. -1] may be scribbled on by the
   one who writes the body to a socket (single-threaded, before the write returns); data[len] is
   a NUL. */
typedef struct rl_body {
    uint32_t refs; /* UINT32_MAX: static, never freed */
    uint32_t flags;
    size_t len;
    char *data;
} rl_body;

/* A body with a copy of len bytes of data (data may be NULL: zeroed, to be filled before the
   body is shared). Returns it with one reference, or NULL on OOM. */
rl_body *rl_body_new(const void *data, size_t len);
rl_body *rl_body_ref(rl_body *b); /* NULL-safe */
void rl_body_unref(rl_body *b);   /* NULL-safe */
/* The static body "{}". */
rl_body *rl_body_empty_object(void);

/* ---- topics and authority ------------------------------------------------------------------ */

/* X(ID, name, rule). The rule says who may send the topic to whom (rl_topic_allowed):
     SAME_USER  the system, or a process of the target's own user
     SYSTEM     the system only
     OWN_CONN   a connection of the target's own user (the hub then checks it is one of its own)
     CONN_SELF  to the system: a connection about itself; to a user's process: the system only
     HUB_LOCAL  a user hub of this node, to the system
     HUB_ANSWER a user hub (of any node) or the system, to a system process
   New topics go at the end: the cluster transport names a topic by its number. */
#define RL_TOPICS(X)                                                                              \
    X(APP, "", SAME_USER)              /* application topic, named in the message; data body */  \
    X(WS_CLIENT, "ws.client", OWN_CONN) /* a client frame (body) + its envelope, conn -> hub */   \
    X(WS_MESSAGE, "ws.message", SAME_USER) /* a frame to write as is (body), -> conn */           \
    X(WS_CLOSE, "ws.close", SAME_USER) /* close with code and reason, -> conn */                 \
    X(WS_CONTROL, "ws.control", SYSTEM) /* route client frames to this hub, -> conn */           \
    X(WS_REHOME, "ws.rehome", CONN_SELF) /* the hub moved: hub -> conn, conn -> central */        \
    X(WS_JOIN, "ws.join", CONN_SELF)   /* conn -> central (its own join), central -> hub */      \
    X(WS_LEAVE, "ws.leave", CONN_SELF) /* conn -> central, central -> hub */                     \
    X(PID_EXIT, "pid.exit", SYSTEM)    /* a monitored process ended (the runtime) */             \
    X(HUB_ACTIVITY, "hub.activity", HUB_LOCAL) /* hub -> central: its client count */           \
    X(HUB_HANDOVER, "hub.handover", SYSTEM) /* central -> hub: re-home everyone and stop */      \
    X(NODE_DOWN, "node.down", SYSTEM)  /* central -> hub: forget that node's connections */   \
    X(API_PUSH, "api.push", SYSTEM)    /* server API -> hub: a frame to every connection */     \
    X(API_MESSAGE, "api.message", SYSTEM) /* server API -> hub: a message for its plugins */    \
    X(API_DISCONNECT, "api.disconnect", SYSTEM) /* server API -> hub: close every connection */ \
    X(API_QUERY, "api.query", SYSTEM)  /* server API -> hub: connections and plugin states */  \
    X(API_REPLY, "api.reply", HUB_ANSWER) /* hub (or a node's runtime) -> server API */

typedef enum {
#define RL_TOPIC_ENUM(id, name, rule) RL_T_##id,
    RL_TOPICS(RL_TOPIC_ENUM)
#undef RL_TOPIC_ENUM
    RL_T_COUNT
} rl_topic;

/* The topic's name ("" for RL_T_APP). */
const char *rl_topic_name(rl_topic t);
/* The internal topic named name[0..len), or RL_T_APP when it is not one. */
rl_topic rl_topic_find(const char *name, size_t len);

/* ---- messages ------------------------------------------------------------------------------ */

enum {
    RL_MSG_CLIENT = 1, /* the body is a client's frame (WS_CLIENT, or APP routed to a plugin) */
    RL_MSG_RAW = 2,    /* the body is not JSON (a raw frame text) */
    RL_MSG_GRANTED = 4, /* a send to another user that the sender's policy allowed (set only by
                           rl_send_user; rl_security.h) */
    RL_MSG_PG = 8,      /* a process group's send (rl_pg.h): a user hub writes it to its
                           connections, whatever its topic */
};

/* Control structs carried by internal topics (rl_msg_ctl). */
typedef struct rl_ctl_join {   /* WS_JOIN */
    char conn[RL_PID_MAX];
    rl_body *meta;             /* user_metadata JSON object, or NULL */
    rl_body *scope;            /* security scope text, or NULL */
} rl_ctl_join;
typedef struct rl_ctl_conn {   /* WS_LEAVE */
    char conn[RL_PID_MAX];
} rl_ctl_conn;
typedef struct rl_ctl_control { /* WS_CONTROL */
    char target[RL_PID_MAX];
    uint64_t epoch;
} rl_ctl_control;
typedef struct rl_ctl_close {  /* WS_CLOSE */
    int code;
    char reason[RL_CLOSE_REASON_MAX + 1];
} rl_ctl_close;
typedef struct rl_ctl_rehome { /* WS_REHOME */
    char conn[RL_PID_MAX];     /* to the central: the connection (its sender) */
    char hub[RL_PID_MAX];      /* the hub that moved */
} rl_ctl_rehome;
typedef struct rl_ctl_exit {   /* PID_EXIT */
    char pid[RL_PID_MAX];
    rl_body *error;            /* NUL-terminated reason; NULL = a normal exit */
} rl_ctl_exit;
typedef struct rl_ctl_activity { /* HUB_ACTIVITY (the user is the sender's owner) */
    uint64_t clients;
} rl_ctl_activity;
typedef struct rl_ctl_node {   /* NODE_DOWN */
    char node[RL_PID_MAX];     /* "<node>.<incarnation>" */
} rl_ctl_node;
typedef struct rl_ctl_api {    /* API_PUSH, API_MESSAGE, API_DISCONNECT, API_QUERY, API_REPLY */
    uint64_t req;              /* the API's call number; API_REPLY echoes it */
    int code;                  /* API_DISCONNECT: the close code; API_REPLY: 0 or -errno */
    uint32_t count;            /* API_REPLY: connections reached */
    rl_body *topic;            /* PUSH, MESSAGE: the topic name; DISCONNECT: the close reason */
    rl_body *data;             /* PUSH, MESSAGE: the data (JSON); REPLY: a JSON detail or NULL */
} rl_ctl_api;

/* Client envelope spans (offsets into the body), from the gateway's scan. */
typedef struct rl_msg_env {
    uint32_t type_off, type_len;
    uint32_t rid_off, rid_len; /* raw JSON value of request_id; rid_len 0 = none */
    uint8_t type_escaped;
} rl_msg_env;

typedef struct rl_msg {
    struct rl_msg *next; /* mailbox or queue link of the current holder */
    rl_body *body;       /* NULL for control topics */
    rl_owner *owner;     /* the sender's owner (a reference); NULL = the system */
    uint64_t epoch;      /* lease epoch of a message to a user hub (cluster); 0 = none */
    uint64_t arrived_ns; /* uv_hrtime() when a client frame reached this node (the gateway, or
                            the cluster transport for a forwarded one); 0 = not stamped */
    uint16_t topic;      /* rl_topic */
    uint16_t flags;      /* RL_MSG_* */
    uint32_t name_len;
    const char *name;    /* RL_T_APP: the topic name (name_len bytes, not NUL-terminated);
                            inside this message's own block or inside its body */
    rl_msg_env env;      /* RL_MSG_CLIENT */
    char from[RL_PID_MAX]; /* the sender's pid ("" = none); set by the router */
    union {
        rl_ctl_join join;
        rl_ctl_conn conn;
        rl_ctl_control control;
        rl_ctl_close close;
        rl_ctl_rehome rehome;
        rl_ctl_exit exit;
        rl_ctl_activity activity;
        rl_ctl_node node;
        rl_ctl_api api;
    } ctl;
} rl_msg;

/* A control message (body NULL, ctl zeroed). NULL on OOM. */
rl_msg *rl_msg_new(rl_topic t);
/* A data message: topic t (name/nlen for RL_T_APP, copied into the message) with a new body
   holding a copy of len bytes of data, in the same allocation. data may be NULL: the body is
   then left for the caller to fill (rl_msg_data) before sending. NULL on OOM. */
rl_msg *rl_msg_new_data(rl_topic t, const char *name, size_t nlen, const void *data, size_t len);
/* A data message sharing body b (a reference is taken). NULL on OOM. */
rl_msg *rl_msg_new_body(rl_topic t, const char *name, size_t nlen, rl_body *b);
/* Writable bytes of a body made by rl_msg_new_data (before the message is sent). */
static inline char *rl_msg_data(rl_msg *m) { return m->body->data; }
/* WS_REHOME naming the hub that moved (and, to the central, the connection; NULL: none).
   NULL on OOM. */
rl_msg *rl_msg_rehome(const char *conn, const char *hub);
/* The raw JSON of a client message's request_id (into its body), *len set; NULL when none. */
const char *rl_msg_request_id(const rl_msg *m, size_t *len);
/* 1 for the server API's requests to a user hub (API_PUSH .. API_QUERY). */
static inline int rl_topic_is_api_request(rl_topic t)
{
    return t == RL_T_API_PUSH || t == RL_T_API_MESSAGE || t == RL_T_API_DISCONNECT ||
           t == RL_T_API_QUERY;
}
/* An API_REPLY to the API's call req (data: a reference is taken, may be NULL). NULL on OOM. */
rl_msg *rl_msg_api_reply(uint64_t req, int code, uint32_t count, rl_body *data);
/* Releases m, its body and owner references and the bodies a control struct holds. NULL-safe. */
void rl_msg_free(rl_msg *m);
/* The message's topic name: the APP name, else the internal topic's name. */
const char *rl_msg_topic_name(const rl_msg *m, size_t *len);

/* ---- processes ----------------------------------------------------------------------------- */

typedef struct rl_proc rl_proc;

typedef struct rl_proc_ops {
    const char *kind; /* "conn", "central", "hub", "plugin", ... for logs and metrics */
    char letter;      /* pid kind letter: 'c' conn, 'x' central, 'h' hub, 'p' plugin */
    /* Handles one message taken from the mailbox and owns it (rl_msg_free, or pass it on).
       Called by the scheduler only. May call rl_send, rl_proc_exit(p) and anything else. */
    void (*handle)(rl_proc *p, rl_msg *m);
    /* Optional fast path: when set, rl_send hands the message over at once instead of queueing
       (connections queue frames for the end of the turn). Returns 0 when it took m, else a
       negative errno (-EAGAIN: full) and the caller keeps m. Must not call rl_send on p. */
    int (*deliver)(rl_proc *p, rl_msg *m);
    /* Optional: runs once in the scheduler's turn after rl_proc_wake(p) (a Lua instance
       resumes its coroutine here). */
    void (*run)(rl_proc *p);
    /* Optional: a CANCEL request. The process should stop within deadline_ms and then call
       rl_proc_exit. Without it, rl_cancel exits the process at once. */
    void (*cancel)(rl_proc *p, uint64_t deadline_ms);
    /* Optional: exit with messages still in the mailbox; takes m (e.g. answers its sender).
       Without it such messages are counted as dropped. */
    void (*orphan)(rl_proc *p, rl_msg *m);
    /* Frees the object; called after rl_proc_exit once the scheduler no longer holds it. */
    void (*free)(rl_proc *p);
} rl_proc_ops;

struct rl_proc {
    const rl_proc_ops *ops;
    rl_owner *owner; /* NULL = the system; a reference, released at exit */
    char pid[RL_PID_MAX];
    rl_msg *head, *tail;
    uint32_t qlen, qcap; /* qcap 0 = unbounded (only for trusted internal processes). A process
                            that keeps taken messages in a queue of its own (the Lua host's
                            inbox) counts them in qlen too, so the bound covers what it has not
                            consumed; rl_proc_exit sets qlen to 0. */
    rl_proc *next_ready;
    uint64_t serial; /* the number in the pid (the process table's key) */
    unsigned scheduled : 1, exited : 1, woken : 1;
    uint32_t nmonitors;
    uint64_t *monitors; /* serials of the local processes to tell with PID_EXIT at its exit
                           (a watcher is always local; one that exited first is skipped) */
};

/* Node identity and scheduler. node_id: [A-Za-z0-9_-]{1,31}; a random incarnation is drawn.
   Returns 0 or -EINVAL. Starts the end-of-turn handles on loop (closed by rl_node_close). */
int rl_node_init(uv_loop_t *loop, const char *node_id);
void rl_node_close(void);
const char *rl_node_id(void);
const char *rl_node_incarnation(void);
uv_loop_t *rl_node_loop(void);
/* Milliseconds of the loop's clock (uv_now). */
uint64_t rl_now_ms(void);

/* n bytes from the kernel's CSPRNG (pids' random parts, the uuid module). */
void rl_random_bytes(unsigned char *out, size_t n);

/* 1 when pid names a process of this node incarnation. */
int rl_pid_is_local(const char *pid);
/* Writes the node id part of pid into out (size RL_NODE_ID_MAX); -EINVAL when malformed. */
int rl_pid_node(const char *pid, char *out);
/* The kind letter of a well-formed pid, or 0. */
char rl_pid_kind(const char *pid);

/* A pid of this node incarnation in 16 bytes instead of a string (the tables that keep one per
   connection: the central hub's admitted connections). The node prefix is implied. */
typedef struct rl_pid_local {
    uint64_t serial;
    uint32_t rnd; /* the random part */
    char kind;    /* the kind letter */
} rl_pid_local;
/* Packs pid; -EINVAL when it is not a pid of this node incarnation in rl_proc_start's form. */
int rl_pid_pack(const char *pid, rl_pid_local *out);
/* The pid string of p (as rl_proc_start wrote it). */
void rl_pid_unpack(const rl_pid_local *p, char out[RL_PID_MAX]);
/* 1 when pid is the one p packs. */
int rl_pid_local_is(const rl_pid_local *p, const char *pid);

/* Registers p (zeroed by the caller except its own fields) with a fresh pid, a mailbox of qcap
   messages and owner (a reference is taken; NULL = system). Returns 0 or -ENOMEM. */
int rl_proc_start(rl_proc *p, const rl_proc_ops *ops, size_t qcap, rl_owner *owner);
/* Ends p: unregisters it, gives its queued messages to ops->orphan (or counts them dropped),
   sends PID_EXIT (error NULL = normal) to each monitor, and frees p later through ops->free.
   Safe to call from p's own handle(); idempotent. */
void rl_proc_exit(rl_proc *p, const char *error);
rl_proc *rl_proc_find(const char *pid);
/* The live local process with this serial, or NULL. */
rl_proc *rl_proc_by_serial(uint64_t serial);
/* Number of live local processes of a kind letter. */
size_t rl_proc_count(char letter);
/* For listings (the server API's user list): the next live local process of kind letter at or
   after table slot *cursor, with *cursor moved past it; NULL at the end. Processes that start or
   exit between calls may be missed or seen twice, never invalid. Start with *cursor = 0. */
rl_proc *rl_proc_next(char letter, size_t *cursor);
/* Schedules p's ops->run for this turn (or the next, when the scheduler runs already). */
void rl_proc_wake(rl_proc *p);

/* Sends m from process `from` (NULL: the system, no sender pid) to pid `to`. The router sets
   m->from and m->owner from `from`. Returns 0 when m was taken; on error the caller keeps m:
   -EINVAL malformed pid; -ENOENT no such process; -EPERM the sender may not send this topic
   to that process (counted and logged); -EAGAIN mailbox full; -ENOMEM; -EHOSTUNREACH no
   transport to that node. */
int rl_send(rl_proc *from, const char *to, rl_msg *m);
/* rl_send that frees m on error (the error is still returned). */
int rl_send_or_free(rl_proc *from, const char *to, rl_msg *m);
/* Sends a message whose sender fields (from, owner) are already set, by a trusted forwarder:
   the cluster transport (messages of other nodes), a user hub passing a client's message on to
   a plugin, the runtime (PID_EXIT). The authority check still applies. Same returns as
   rl_send; on error the caller keeps m. */
int rl_send_as(const char *to, rl_msg *m);
/* rl_send_as to a process of this node named by its packed pid (no pid string made and parsed
   again): -ENOENT unless serial, kind and random part are a live process's. */
int rl_send_as_local(const rl_pid_local *to, rl_msg *m);
/* 1 when a sender with this owner and pid may send topic t to target (see RL_TOPICS). */
int rl_topic_allowed(rl_topic t, const rl_owner *sender, const char *sender_pid,
                     const rl_proc *target);
/* 1 when the caller (NULL = system) may act on target (cancel, terminate, monitor, link):
   the system, or a process of the target's own user. */
int rl_may_control(const rl_proc *caller, const rl_proc *target);
/* After target exits, watcher gets PID_EXIT (at once with error "noproc" if it is gone).
   -EPERM when watcher may not control target. */
int rl_monitor(rl_proc *watcher, const char *target);
/* Asks target to stop within deadline_ms (ops->cancel), or exits it at once. caller NULL =
   the system. -ENOENT, -EPERM. */
int rl_cancel(rl_proc *caller, const char *target, uint64_t deadline_ms);

/* Cluster transport for pids of other nodes; the default returns -EHOSTUNREACH. On 0 the
   transport owns m. */
typedef int (*rl_remote_send_fn)(const char *to, rl_msg *m, void *ud);
void rl_router_set_remote(rl_remote_send_fn fn, void *ud);

/* ---- the end of a loop turn ---------------------------------------------------------------- */

/* Steps run at the end of every loop turn, in this order (rl_turn_add says which step a
   function belongs to). Ready processes run first (bounded work), so what they sent this turn
   is written by the later steps in the same turn. */
typedef enum {
    RL_TURN_PROCS = 0, /* the scheduler (built in) */
    RL_TURN_FRAMES,    /* write each connection's pending frames, once per connection */
    RL_TURN_OUTBOX,    /* flush the cluster outbox (one pipelined batch to Redis) */
    RL_TURN_STEPS
} rl_turn_step;
typedef void (*rl_turn_fn)(void *ud);
/* Registers fn as step `step` (one function per step). */
void rl_turn_set(rl_turn_step step, rl_turn_fn fn, void *ud);
/* Makes sure the end of this turn runs and that the loop does not block in poll before it
   (a step has work). */
void rl_turn_request(void);

#endif
