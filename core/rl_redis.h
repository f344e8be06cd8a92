/* Async Redis client on the node's libuv loop: our own hiredis<->libuv adapter, reconnect forever
 * with jittered backoff, connect and command timeouts, EVALSHA scripts with EVAL fallback.
 *
 * One rl_redis is one TCP connection (re-created after every failure). Replies arrive in the order
 * the commands were sent. Use a second rl_redis for blocking reads (XREADGROUP/XREAD BLOCK) so they
 * never delay other commands, and give those commands a timeout longer than their BLOCK.
 *
 * Why not hiredis' adapters/libuv.h: in 0.14.1 it drops poll errors, so a refused or reset
 * connection is never reported and its commands never complete (notes/stack.md §2).
 *
 * hiredis 0.14 limits that callers must respect: RESP2 only (never HELLO 3), replies nested at most
 * 7 deep (deeper is a fatal connection error), no pub/sub or MONITOR on this wrapper. Replies are
 * freed when the callback returns: copy out what you keep. */
#ifndef RL_REDIS_H
#define RL_REDIS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <hiredis/hiredis.h>

typedef struct rl_redis rl_redis;

/* Reply callback. reply is NULL when the command failed without an answer: connection refused,
   lost, timed out (connect or command), or the client was freed. A Redis error reply is a non-NULL
   reply of type REDIS_REPLY_ERROR. */
typedef void (*rl_redis_cb)(const redisReply *reply, void *ud);

/* State change: connected = 1 once a connection answered its handshake (AUTH/SELECT/PING),
   connected = 0 when that connection is lost. Failed attempts that never reached "connected"
   are not reported (they are counted and logged). May call any rl_redis function, including
   rl_redis_free. */
typedef void (*rl_redis_state_cb)(rl_redis *r, int connected, void *ud);

#define RL_REDIS_HOST_MAX 64
#define RL_REDIS_SENTINELS_MAX 8

typedef struct rl_redis_sentinel {
    char host[RL_REDIS_HOST_MAX];
    int port; /* default 26379 */
} rl_redis_sentinel;

typedef struct rl_redis_url {
    char host[RL_REDIS_HOST_MAX]; /* numeric IPv4/IPv6 (no brackets) or a DNS name resolved
                                     asynchronously; with Sentinel: the current target */
    int port;                     /* default 6379 */
    int db;                       /* default 0; SELECTed on every connect when non-zero */
    char user[64];                /* ACL user ("" = none) */
    char password[128];           /* "" = no AUTH (the master's; sentinels get none) */
    int sentinel;                 /* redis+sentinel:// */
    int nsentinels;
    rl_redis_sentinel sentinels[RL_REDIS_SENTINELS_MAX];
    char master[64]; /* the name the sentinels monitor */
} rl_redis_url;

/* Parses redis://[[user]:password@]host[:port][/db] and
   redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]. host: IPv4,
   [IPv6], "localhost" (-> 127.0.0.1) or a DNS name (resolved with uv_getaddrinfo, never blocking
   the loop). Returns 0 or -EINVAL with a reason in err.

   With Sentinel, every connection attempt asks the sentinels in turn (SENTINEL
   get-master-addr-by-name) for the master's address, connects there and checks ROLE is master
   before it counts as connected; a connection lost, or a READONLY error (the master was demoted),
   starts over at the sentinels. */
int rl_redis_parse_url(const char *url, rl_redis_url *out, char *err, size_t errlen);

/* Defaults, overridable per client with the setters below. A new connect timeout also re-arms the
   attempt in progress (counted from the call); a new command timeout applies to later commands. */
#define RL_REDIS_CONNECT_TIMEOUT_MS 2000 /* TCP connect + handshake reply */
#define RL_REDIS_COMMAND_TIMEOUT_MS 2000 /* per command, from the call until its reply */
#define RL_REDIS_BACKOFF_MIN_MS 100
#define RL_REDIS_BACKOFF_MAX_MS 2000

/* Creates a client and starts connecting at once. While a connection attempt is in progress,
   commands are queued on it and sent after the handshake (they fail with NULL if the attempt
   fails); before that (DNS lookup of a host name, a connect refused synchronously) and between
   attempts they are refused with -ENOTCONN. name labels logs ("main", "block"). Returns NULL with
   a reason in err on a bad URL or OOM. */
rl_redis *rl_redis_new(uv_loop_t *loop, const char *url, const char *name, char *err, size_t errlen);

/* Stops everything: the connection is freed at once (commands not yet written are dropped) (every pending callback runs with NULL, possibly
   before this returns; when called from inside a reply callback the rest run right after that
   callback returns), timers and any DNS lookup are closed. The loop must run once more before
   uv_loop_close. Safe from any callback of this client, with NULL, and at shutdown. No callback
   of this client runs after the pending ones have been failed. */
void rl_redis_free(rl_redis *r);

/* Graceful close for shutdown: what is queued is still sent and pending commands still get their
   replies (callbacks run as usual) for at most timeout_ms, then rl_redis_free. From this call on,
   commands are refused (-ENOTCONN), nothing reconnects and the state callback is off; a lost
   connection frees at once. Use it for last words (node_leave, lease releases, queued XADDs):
   rl_redis_free drops hiredis' unsent output buffer. Not for a connection blocked in
   XREAD(GROUP) BLOCK: free that one. The loop must keep running until it is done. */
void rl_redis_close(rl_redis *r, uint64_t timeout_ms);

void rl_redis_set_state_cb(rl_redis *r, rl_redis_state_cb cb, void *ud);
void rl_redis_set_timeouts(rl_redis *r, uint64_t connect_ms, uint64_t command_ms);
void rl_redis_set_backoff(rl_redis *r, uint64_t min_ms, uint64_t max_ms);

/* 1 when the current connection answered its handshake. */
int rl_redis_connected(const rl_redis *r);
/* Number of commands sent and not yet answered. */
size_t rl_redis_pending(const rl_redis *r);
/* Number of connections that completed their handshake so far (1 after the first connect). */
uint64_t rl_redis_connects(const rl_redis *r);

/* Sends a command. Returns 0: cb (may be NULL) will run exactly once, never inside this call.
   Returns -ENOTCONN while there is no connection (backing off after a failure; nothing is queued
   then, the caller decides), -EINVAL when the command cannot be formatted, -ENOMEM; on any error
   cb is never called. The format is hiredis' (%s, %b with a size_t length, %d, %lld...).
   Timeout: the client's command timeout. On expiry cb gets NULL (the command may still execute:
   its reply, if any, is dropped) and the connection stays while replies keep coming (a slow
   server is not a dead one; what else is in flight still gets its replies). Only when nothing at
   all was answered for a whole command timeout and the oldest command is past its deadline is
   the connection stuck (replies are ordered): then it is dropped, every pending command fails
   with NULL and a reconnect follows. */
int rl_redis_command(rl_redis *r, rl_redis_cb cb, void *ud, const char *fmt, ...);
int rl_redis_vcommand(rl_redis *r, uint64_t timeout_ms, rl_redis_cb cb, void *ud, const char *fmt,
                      va_list ap);
/* argvlen may be NULL (then every argv[i] is a NUL-terminated string). timeout_ms 0 = the
   client's command timeout; use it for blocking commands (BLOCK ms + margin). */
int rl_redis_commandargv(rl_redis *r, uint64_t timeout_ms, rl_redis_cb cb, void *ud, int argc,
                         const char **argv, const size_t *argvlen);

/* PING that also sets the REDIS_RTT_US gauge on success (round trip measured with uv_hrtime). */
int rl_redis_ping(rl_redis *r, rl_redis_cb cb, void *ud);

/* A Lua script sent with EVALSHA; on NOSCRIPT it is re-sent once with EVAL (which also caches it
   in Redis), so a restarted or flushed Redis needs no extra step. sha is computed by
   rl_redis_script_init (SHA1 of src). Scripts must be deterministic in their keys. */
typedef struct rl_redis_script_def {
    const char *name; /* for logs */
    const char *src;
    char sha[41];     /* lowercase hex */
} rl_redis_script_def;

/* Fills s (sha = SHA1 of src). name and src must outlive s. */
void rl_redis_script_init(rl_redis_script_def *s, const char *name, const char *src);

/* Runs s with nkeys keys followed by the other arguments: args[0..nkeys) are KEYS, the rest ARGV.
   argvlen may be NULL. Same return/callback contract as rl_redis_command; if the connection is
   lost between the EVALSHA and the EVAL fallback, cb gets NULL. s must outlive the call. */
int rl_redis_script(rl_redis *r, const rl_redis_script_def *s, rl_redis_cb cb, void *ud, int nkeys,
                    int nargs, const char **args, const size_t *argvlen);

#endif
