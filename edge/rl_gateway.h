/* The gateway: HTTP and WebSocket on libwebsockets (on the node's libuv loop); one connection
 * process per WebSocket. With tls_cert/tls_key set the port serves only https and wss. */
#ifndef RL_GATEWAY_H
#define RL_GATEWAY_H

#include <stddef.h>
#include <uv.h>

#include "rl_config.h"

/* Creates the lws context and vhost on loop, listening on c->listen_host:listen_port.
   c must outlive the gateway. Returns 0, or negative with a reason in err (a host that does not
   resolve, an address not on this machine, a port in use).
   Also on failure the caller runs the loop dry and then calls rl_gateway_free() (lws has already
   begun tearing the half-made context down; rl_gateway_stop() is then a no-op). */
int rl_gateway_start(uv_loop_t *loop, const rl_config *c, char *err, size_t errlen);
/* Checks c's TLS pair without starting anything: both PEMs readable, the key unencrypted and
   the certificate's (lws itself lets an EC key with an RSA certificate through on OpenSSL 3 and
   then fails every handshake). 0 when TLS is off or the pair is good; else negative with the
   reason in err. rl_gateway_start runs it too; --check calls it. */
int rl_gateway_check_tls(const rl_config *c, char *err, size_t errlen);
/* Checks c's listen host without binding: an IPv4 address, or a name that resolves to one (the
   gateway listens on IPv4 only). 0, or -EINVAL with the reason in err. rl_gateway_start runs it
   too, and then binds once to see that the address is this machine's and the port free;
   --check calls it. */
int rl_gateway_check_listen(const rl_config *c, char *err, size_t errlen);
/* Another listener on host:port (an lws vhost on the gateway's context, plain or TLS like the
   gateway) whose HTTP requests go to protocols[0]'s callback (the list must outlive the
   gateway). After rl_gateway_start; its connections close in rl_gateway_stop. 0, or negative
   with the reason in err (a host that does not resolve, a port in use). */
struct lws_protocols;
int rl_gateway_add_listener(const char *name, const char *host, int port,
                            const struct lws_protocols *protocols, char *err, size_t errlen);
/* Readiness hook for /readyz and admission (cluster mode: Redis round trip ok). NULL = ready.
   While it returns 0, new WebSockets are refused like rl_gateway_set_accepting(0). */
void rl_gateway_set_ready_fn(int (*ready)(void));
/* While not accepting, new WebSockets are upgraded and closed at once with 1013 "unavailable". */
void rl_gateway_set_accepting(int accepting);
/* Closes every WebSocket with code/reason and stops accepting (drain). Frames already queued to
   a client are flushed before its close frame. */
void rl_gateway_close_all(int code, const char *reason);
size_t rl_gateway_conn_count(void);
/* Shutdown step 1 (lws_context_destroy #1); then the loop must run until it returns. */
void rl_gateway_stop(void);
/* Shutdown step 2 (lws_context_destroy #2), after the loop ran dry. Safe without a start. */
void rl_gateway_free(void);

/* The pid connections send WS_JOIN / WS_LEAVE / WS_REHOME to (the central hub; main sets it,
   tests may stand in a process of their own). The string is copied. */
void rl_gateway_set_central(const char *pid);

/* Finds the value of cookie name in a Cookie header value (cookies separated by ';', spaces
   around names and values ignored). Copies it NUL-terminated into out and returns its length,
   or -1 when absent or longer than outlen - 1. Pure parser, no I/O. */
int rl_gateway_cookie_find(const char *hdr, size_t len, const char *name, char *out,
                           size_t outlen);

#endif
