/* Internals shared by the gateway's modules (rl_gateway.c: the lws callback, start and stop;
 * rl_http.c: HTTP routes; rl_auth.c: the handshake's identity checks; rl_conn.c: the connection
 * process). Nothing outside edge/ includes this. */
#ifndef RL_EDGE_H
#define RL_EDGE_H

#include <libwebsockets.h>
#include <stddef.h>
#include <stdint.h>

#include "rl_config.h"
#include "rl_proc.h"

/* Bounds (all peer-controlled sizes are capped here or by rl_config). */
#define RL_GW_RX_BUFFER 236 /* lws rx chunk per connection (+ LWS_PRE + 4 = one 256-byte block); longer messages are reassembled (stack.md §3) */
#define RL_GW_TX_PACKET 65536         /* largest single send(); the rest is buffered by lws */
#define RL_GW_HEADER_DATA 16384       /* request header bytes per handshake (JWT in the URL) */
#define RL_GW_FD_LIMIT_MAX (1u << 20) /* cap for fd_limit_per_thread */
#define RL_GW_PENDING_MAX 16          /* client frames kept until the hub is known */
#define RL_GW_JWT_LEEWAY_S 30         /* clock skew allowed for exp/nbf */
#define RL_GW_HTTP_HEADROOM 512       /* response header bytes */
#define RL_GW_CLOSE_FLUSH_S 5         /* a closing client gets this long to take queued frames */
#define RL_GW_LWS_ERR_MAX 256         /* the first lws error line kept during start */
#define RL_GW_EXTRA_MAX 4             /* listeners added with rl_gateway_add_listener */

_Static_assert(LWS_PRE <= RL_BODY_HEADROOM, "message bodies must leave room for lws's header");

typedef enum {
    RL_CONN_UPGRADING, /* handshake accepted; WebSocket not established yet; no process */
    RL_CONN_JOINING,   /* established; ws.join sent; client frames wait for the target */
    RL_CONN_ROUTED,    /* target known; client frames go to it */
    RL_CONN_CLOSING,   /* close requested: queued frames flushed (or dropped), then close frame */
    RL_CONN_CLOSED,    /* wsi gone; process exited; freed by the scheduler (ops->free) */
    RL_CONN_HOOK,      /* established; waiting for the connect hook's answer (rl_hook.c); no
                          process, nothing read from the client (rx flow off) */
} rl_conn_state;

typedef struct rl_hook rl_hook;

/* Where a connection's client messages go: the user hub and its lease epoch (cluster mode; 0
   standalone), from WS_CONTROL. One malloc'd block, so that rl_conn keeps to 256 bytes. */
typedef struct rl_conn_route {
    uint64_t epoch;
    char hub[]; /* its pid */
} rl_conn_route;

typedef struct rl_conn { /* 256 bytes: one jemalloc class per idle connection, keep it there */
    rl_proc proc; /* first member: rl_proc * <-> rl_conn *; owner: the user */
    struct lws *wsi; /* NULL once lws closed it (or we detached) */
    union {
        struct { /* while hs: from the handshake, until the process runs */
            char *user_id, *meta_json, *scope;
        };
        struct { /* after: client messages before the target is known */
            rl_msg *pend_head, *pend_tail;
            size_t npend;
        };
        rl_hook *hook; /* while hooked (RL_CONN_HOOK): the identity waits in the hook */
    };
    rl_conn_route *route;          /* the user hub (NULL until the first WS_CONTROL) */
    char *rx; /* message being reassembled; while UPGRADING, the connect hook's request body
                 (rxlen bytes), built at the handshake because lws drops the headers after it */
    rl_msg *out_head, *out_tail;   /* frames to write (WS_MESSAGE bodies, or APP to wrap) */
    size_t out_bytes;
    char *close_reason; /* malloc'd at the close (NULL: none); idle connections carry no buffer */
    struct rl_conn *prev, *next;   /* gw.conns: established connections */
    struct rl_conn *write_next;    /* gw.writes: connections with frames to write this turn */
    uint32_t rxlen;                /* bytes in rx (max_message_bytes is at most 1 GiB) */
    uint32_t last_rx_ms;           /* loop ms (mod 2^32) of the last frame or pong: keepalive */
    uint32_t opened_ms;            /* loop ms (mod 2^32) when established: the close log's duration */
    unsigned close_code : 16;      /* ours, or the client's when it started the close (0: none) */
    unsigned peer_closed : 1;      /* the client started the close */
    unsigned state : 3;            /* rl_conn_state */
    unsigned hs : 1;               /* the union holds the handshake strings */
    unsigned has_proc : 1, listed : 1, close_sent : 1, pending_write : 1;
    unsigned ping_out : 1, ping_pending : 1, dead : 1; /* a ping unanswered / to write; cut */
    unsigned hooked : 1;           /* the union holds hook */
} rl_conn;

typedef struct rl_gw {
    struct lws_context *ctx;
    const rl_config *cfg;
    int destroying; /* destroy #1 done (stop, or a failed start) */
    int (*ready)(void);
    int accepting;
    rl_conn *conns;
    size_t nconns;
    /* Connections with frames to write this turn, flushed once per turn in the order they
       got them: the one whose message came first is answered first. */
    rl_conn *writes, **writes_tail;
    char central[RL_PID_MAX]; /* "" = rl_central_pid() */
    char *console;            /* the console page with the WS path filled in */
    size_t console_len;
    unsigned char *tx; /* frame scratch: LWS_PRE headroom + frame, reused for every frame */
    size_t txcap;
    uv_timer_t keepalive;   /* the ping sweep (rl_conn.c), started when ping_interval > 0 */
    int keepalive_on;
    rl_conn *sweep;         /* the next connection the sweep looks at (NULL: from the head) */
    uint64_t hang_ms;       /* no frame or pong for this long after a ping: the peer is dead */
    char listen_ip[16];              /* listen_host resolved, for lws (INET_ADDRSTRLEN) */
    int starting;                    /* inside rl_gateway_start: keep the first lws error */
    char lws_err[RL_GW_LWS_ERR_MAX]; /* that error ("" = none), for start's own message */
} rl_gw;

extern rl_gw gw;

/* rl_conn.c: keepalive. lws's own validity timers are not used: lws 4.1 keeps every timer of
   every connection in one sorted list, and each ping or pong re-inserts one with a walk over
   all of them (with 15,000 idle users that walk took a quarter of the CPU). */
void rl_conn_keepalive_start(uv_loop_t *loop, const rl_config *c);
void rl_conn_keepalive_stop(void);
void rl_conn_on_pong(rl_conn *c);

/* rl_gateway.c */
int rl_gw_ready(void);
const char *rl_gw_central_pid(void);

/* rl_http.c */
/* LWS_CALLBACK_HTTP: uri is the decoded path without the query. */
int rl_http_on_request(struct lws *wsi, const char *uri);
/* Refuses an upgrade with status and {"error":code,"message":why} (raw HTTP/1.1); extra is
   more header lines, each ending in CRLF, or NULL. 0 or -1. */
int rl_http_refuse_upgrade(struct lws *wsi, unsigned int status, const char *extra,
                           const char *code, const char *why);
int rl_http_console_build(const char *ws_path);

/* rl_auth.c */
/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: path, origin, identity. Returns 0 to upgrade (a new
   rl_conn hangs on the wsi's opaque user data), 1 when a refusal was written, -1 to hang up. */
int rl_auth_handshake(struct lws *wsi, const char *upgrade);

/* rl_hook.c: the connect hook (relay.node connect_hook). */
typedef enum { RL_HOOK_ACCEPT, RL_HOOK_DENY, RL_HOOK_FAIL } rl_hook_outcome;
/* The JSON claims of a verified JWT (its payload decoded), malloc'd; NULL if not decodable. */
char *rl_hook_claims(const char *token);
/* At CONFIRM_UPGRADE: the hook's request body (user, token meta and claims, the headers the
   config passes, the peer address), malloc'd with its length in *len; NULL on OOM. */
char *rl_hook_body(struct lws *wsi, const char *user_id, const char *meta_json,
                   const char *scope, const char *claims, size_t *len);
/* At ESTABLISHED: sends body (always freed) and puts c in RL_CONN_HOOK; on 0 the identity
   strings belong to the hook and rl_conn_hook_done runs exactly once with the answer, unless
   rl_hook_free comes first. Negative: nothing started, the strings are still the caller's. */
int rl_hook_start(rl_conn *c, char *user_id, char *meta_json, char *scope, char *body,
                  size_t len);
/* Hands the identity strings back (the hook keeps NULLs). */
void rl_hook_take(rl_hook *h, char **user_id, char **meta_json, char **scope);
/* Cancels a hook still waiting and frees it (and any identity it still holds). */
void rl_hook_free(rl_hook *h);

/* rl_conn.c */
/* The hook's answer for c: meta (may be NULL: the token's) is the merged metadata on ACCEPT,
   reason the backend's (DENY) or the failure's (FAIL). Frees the hook; copies what it keeps. */
void rl_conn_hook_done(rl_conn *c, rl_hook_outcome o, const char *meta, const char *reason);
void rl_conn_on_established(struct lws *wsi);
void rl_conn_on_receive(rl_conn *c, struct lws *wsi, const char *in, size_t len);
int rl_conn_on_writable(rl_conn *c, struct lws *wsi);
int rl_conn_on_peer_close(rl_conn *c, struct lws *wsi, const unsigned char *in, size_t len);
void rl_conn_on_closed(struct lws *wsi);
/* Frees a connection that never got a process (a refused or dead handshake). */
void rl_conn_free_mem(rl_conn *c);
/* Requests a close with code/reason; with flush, queued frames go out first. */
void rl_conn_close(rl_conn *c, int code, const char *reason, int flush);
/* End-of-turn step RL_TURN_FRAMES: writes every pending connection's frames. */
void rl_conn_flush_all(void *ud);

#endif
