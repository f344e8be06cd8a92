/* The gateway: HTTP and WebSocket on libwebsockets (on the node's libuv loop); one connection
 * process per WebSocket (rl_conn.c). This file: the lws callback, TLS check, start and stop. */
#include "rl_gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libwebsockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h> /* SSL_OP_* only: lws owns the SSL_CTX */
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rl_edge.h"
#include "rl_log.h"
#include "rl_metrics.h"
#include "rl_proc.h"

rl_gw gw = {.accepting = 1, .writes_tail = &gw.writes};

const char *rl_gw_central_pid(void) { return gw.central; }

int rl_gw_ready(void) { return gw.accepting && (!gw.ready || gw.ready()); }

/* ---------------------------------------------------------------------------------------------
 * The lws protocol callback: a thin switch. */

static int gw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    (void)user;
    rl_conn *c;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return rl_http_on_request(wsi, in ? (const char *)in : "");
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return rl_auth_handshake(wsi, (const char *)in);
    case LWS_CALLBACK_ESTABLISHED:
        rl_conn_on_established(wsi);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if ((c = lws_get_opaque_user_data(wsi)))
            rl_conn_on_receive(c, wsi, (const char *)in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if ((c = lws_get_opaque_user_data(wsi)))
            return rl_conn_on_writable(c, wsi);
        return -1;
    case LWS_CALLBACK_RECEIVE_PONG:
        if ((c = lws_get_opaque_user_data(wsi)))
            rl_conn_on_pong(c);
        return 0;
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        return rl_conn_on_peer_close(lws_get_opaque_user_data(wsi), wsi,
                                     (const unsigned char *)in, len);
    case LWS_CALLBACK_CLOSED:
        rl_conn_on_closed(wsi);
        return 0;
    case LWS_CALLBACK_WSI_DESTROY: /* a connection whose handshake never completed */
        rl_conn_on_closed(wsi);
        return 0;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
}

static const struct lws_protocols gw_protocols[] = {
    {"relay", gw_callback, 0, RL_GW_RX_BUFFER, 0, NULL, RL_GW_TX_PACKET},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* ---------------------------------------------------------------------------------------------
 * Start and stop */

static void lws_log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    rl_log(level & LLL_ERR ? RL_LOG_ERROR : RL_LOG_WARN, "lws", "%.*s", (int)n, line);
    if (gw.starting && (level & LLL_ERR) && !gw.lws_err[0])
        snprintf(gw.lws_err, sizeof gw.lws_err, "%.*s", (int)n, line);
}

/* ---------------------------------------------------------------------------------------------
 * TLS: the cert and key are checked here before lws sees them. lws 4.1.6 reports a bad pair
   only as log lines and a NULL vhost, and with OpenSSL 3 it never calls SSL_CTX_check_private_key:
   a key of another type than the cert (an EC key with an RSA cert) is accepted and every
   handshake then fails. */

/* Refuses to decrypt, so an encrypted key fails the start instead of OpenSSL prompting on a
   terminal from inside the event loop. */
static int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* The reason of OpenSSL's last queued error (or "no PEM data"), and clears the queue. */
static const char *tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : "no PEM data");
    ERR_clear_error();
    return buf;
}

/* Reads c->tls_cert and c->tls_key (PEM) and checks the key is the cert's. Returns 0, or
   -EINVAL with "tls.cert PATH: reason" / "tls.key PATH: reason" in err. */
int rl_gateway_check_tls(const rl_config *c, char *err, size_t errlen)
{
    if (!c->tls_cert && !c->tls_key)
        return 0; /* TLS off */
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    char why[160];
    int rc = -EINVAL;
    FILE *f = fopen(c->tls_cert, "r");
    if (!f) {
        snprintf(err, errlen, "tls.cert %s: %s", c->tls_cert, strerror(errno));
        return -EINVAL;
    }
    x = PEM_read_X509(f, NULL, tls_no_passphrase, NULL);
    fclose(f);
    if (!x) {
        snprintf(err, errlen, "tls.cert %s: not a PEM certificate (%s)", c->tls_cert,
                 tls_reason(why, sizeof why));
        goto out;
    }
    if (!(f = fopen(c->tls_key, "r"))) {
        snprintf(err, errlen, "tls.key %s: %s", c->tls_key, strerror(errno));
        goto out;
    }
    k = PEM_read_PrivateKey(f, NULL, tls_no_passphrase, NULL);
    fclose(f);
    if (!k) {
        unsigned long e = ERR_peek_last_error();
        int encrypted =
            ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ;
        snprintf(err, errlen, "tls.key %s: %s (%s)", c->tls_key,
                 encrypted ? "encrypted keys are not supported" : "not a PEM private key",
                 tls_reason(why, sizeof why));
        goto out;
    }
    if (X509_check_private_key(x, k) != 1) {
        snprintf(err, errlen, "tls.key %s does not match tls.cert %s (%s)", c->tls_key,
                 c->tls_cert, tls_reason(why, sizeof why));
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        rl_warn("gateway", "tls.cert %s has expired: clients will refuse it", c->tls_cert);
    rc = 0;
out:
    ERR_clear_error();
    EVP_PKEY_free(k);
    X509_free(x);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The listen address. lws 4.1 binds only an IPv4 address or an interface name given as iface;
 * for anything else (a host name, an address not on this machine) it logs "DOESN'T EXIST",
 * retries now and then, and lws_create_vhost still succeeds: the node would run holding no
 * socket. So the host is resolved here and lws gets the numeric address. */

/* Resolves host to an IPv4 address (port set). 0, or -EINVAL with the reason. */
static int listen_resolve(const char *host, int port, struct sockaddr_in *sa, char *err,
                          size_t errlen)
{
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strchr(host, ':')) { /* lws would bind 0.0.0.0 instead (DISABLE_IPV6) */
        snprintf(err, errlen, "listen: %s: IPv6 addresses are not supported (use an IPv4 one)",
                 host);
        return -EINVAL;
    }
    if (inet_pton(AF_INET, host, &sa->sin_addr) == 1)
        return 0;
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "listen: cannot resolve host '%s' to an IPv4 address: %s",
                 host, rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
        if (res)
            freeaddrinfo(res);
        return -EINVAL;
    }
    sa->sin_addr = ((const struct sockaddr_in *)res->ai_addr)->sin_addr;
    freeaddrinfo(res);
    return 0;
}

int rl_gateway_check_listen(const rl_config *c, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    return listen_resolve(c->listen_host, c->listen_port, &sa, err, errlen);
}

/* Binds a throwaway socket where the vhost will listen, for errors lws would not report: an
   address that is not this machine's (EADDRNOTAVAIL), a port below 1024 (EACCES), one in use. */
static int listen_probe(const char *host, int port, const struct sockaddr_in *sa, char *err,
                        size_t errlen)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1, e = 0;
    if (fd < 0)
        e = errno;
    else if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
             bind(fd, (const struct sockaddr *)sa, sizeof *sa) < 0)
        e = errno;
    if (fd >= 0)
        close(fd);
    if (!e)
        return 0;
    snprintf(err, errlen, "cannot listen on %s:%d: %s%s", host, port, strerror(e),
             e == EADDRNOTAVAIL ? " (not an address of this machine)" : "");
    return -e;
}

static unsigned int fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur > RL_GW_FD_LIMIT_MAX)
        return RL_GW_FD_LIMIT_MAX;
    return rl.rlim_cur < 64 ? 64 : (unsigned int)rl.rlim_cur;
}

static const lws_retry_bo_t no_validity = {.secs_since_valid_ping = 0, .secs_since_valid_hangup = 0};

static uint16_t secs16(uint64_t ms)
{
    uint64_t s = (ms + 999) / 1000;
    return (uint16_t)(s > 65535 ? 65535 : s);
}

int rl_gateway_start(uv_loop_t *loop, const rl_config *c, char *err, size_t errlen)
{
    if (gw.ctx) {
        snprintf(err, errlen, "gateway already started");
        return -EALREADY;
    }
    gw.cfg = c;
    gw.destroying = 0;
    gw.accepting = 1;
    gw.conns = NULL;
    gw.nconns = 0;
    gw.writes = NULL;
    gw.writes_tail = &gw.writes;
    int rc;
    struct sockaddr_in sa;
    if ((rc = listen_resolve(c->listen_host, c->listen_port, &sa, err, errlen)) < 0 ||
        (rc = listen_probe(c->listen_host, c->listen_port, &sa, err, errlen)) < 0)
        return rc;
    inet_ntop(AF_INET, &sa.sin_addr, gw.listen_ip, sizeof gw.listen_ip);
    if (c->tls_cert && (rc = rl_gateway_check_tls(c, err, errlen)) < 0)
        return rc;
    if (c->console && rl_http_console_build(c->ws_path) < 0) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_emit);

    void *foreign[1] = {loop};
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6 |
                   LWS_SERVER_OPTION_EXPLICIT_VHOSTS; /* UTF-8: the envelope scan checks it */
    info.foreign_loops = foreign;
    info.pcontext = &gw.ctx;
    info.port = c->listen_port;
    info.iface = gw.listen_ip; /* lws keeps the pointer */
    info.protocols = gw_protocols;
    info.vhost_name = "relay";
    info.max_http_header_data = RL_GW_HEADER_DATA;
    info.fd_limit_per_thread = fd_limit();
    /* The handshake timeout: while a request's headers are awaited lws holds a header table
       under timeout_secs_ah_idle (10 s by default); timeout_secs covers its other round trips. */
    info.timeout_secs = secs16(c->handshake_timeout_ms ? c->handshake_timeout_ms : 1000);
    info.timeout_secs_ah_idle = info.timeout_secs;
    /* The gateway pings by itself (rl_conn_keepalive_start). Without a policy of its own lws
       applies its default one (ping after 300 s) and keeps a validity timer per connection in
       its sorted timer list, re-inserted with a walk over the whole list at every connect and
       pong; a zero hangup tells lws 4.1 not to keep one. */
    info.retry_and_idle_policy = &no_validity;
    info.gid = -1;
    info.uid = -1;
    /* No info.extensions: permessage-deflate stalls on this lws build's uv backend (stack.md). */
    if (c->tls_cert) {
        /* Without DO_SSL_GLOBAL_INIT lws ignores the cert and serves plain ("SSL disabled").
           A TLS port takes TLS only (no ALLOW_NON_SSL_ON_SSL_PORT). ALPN offers http/1.1 alone:
           lws's default "h2,http/1.1" would put browsers on HTTP/2 (and WebSockets over h2),
           which the handshake refusals here (raw HTTP/1.1) do not speak. */
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = c->tls_cert;
        info.ssl_private_key_filepath = c->tls_key;
        info.ssl_options_set = (long)(SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
        info.alpn = "http/1.1";
    }

    gw.lws_err[0] = '\0';
    gw.starting = 1;
    gw.ctx = lws_create_context(&info);
    if (!gw.ctx) {
        gw.starting = 0;
        snprintf(err, errlen, "cannot create the lws context (is libwebsockets-evlib-uv installed?)");
        free(gw.console);
        gw.console = NULL;
        return -EIO;
    }
    if (!lws_create_vhost(gw.ctx, &info)) {
        gw.starting = 0;
        /* lws sets up TLS before it binds: a TLS failure leaves an lws error line naming it */
        if (c->tls_cert && (strstr(gw.lws_err, "cert") || strstr(gw.lws_err, "key") ||
                            strstr(gw.lws_err, "ssl") || strstr(gw.lws_err, "SSL"))) {
            snprintf(err, errlen, "cannot set up TLS with tls.cert %s and tls.key %s (lws: %s)",
                     c->tls_cert, c->tls_key, gw.lws_err);
            rc = -EINVAL;
        } else {
            snprintf(err, errlen, "cannot listen on %s:%d", c->listen_host, c->listen_port);
            rc = -EADDRINUSE;
        }
        lws_context_destroy(gw.ctx); /* destroy #1; rl_gateway_free does #2 */
        gw.destroying = 1;
        return rc;
    }
    gw.starting = 0;
    rl_turn_set(RL_TURN_FRAMES, rl_conn_flush_all, NULL);
    rl_conn_keepalive_start(loop, c);
    if (c->tls_cert)
        rl_info("gateway", "TLS on (https, wss): cert %s, key %s", c->tls_cert, c->tls_key);
    else
        rl_info("gateway", "TLS off (plain http, ws)");
    return 0;
}

/* A second vhost on the gateway's context rather than a second context: one evlib plugin load,
   one two-stage destroy, and every wsi of both listeners closes in rl_gateway_stop. lws 4.1
   binds each vhost's own port (EXPLICIT_VHOSTS) and gives it its own protocol list, so the
   listeners share nothing but the loop. */
int rl_gateway_add_listener(const char *name, const char *host, int port,
                            const struct lws_protocols *protocols, char *err, size_t errlen)
{
    static char ips[RL_GW_EXTRA_MAX][16]; /* lws keeps the iface pointer */
    static int nips;
    if (!gw.ctx || gw.destroying || nips == RL_GW_EXTRA_MAX) {
        snprintf(err, errlen, "%s: the gateway is not running", name);
        return -EINVAL;
    }
    struct sockaddr_in sa;
    int rc;
    if ((rc = listen_resolve(host, port, &sa, err, errlen)) < 0 ||
        (rc = listen_probe(host, port, &sa, err, errlen)) < 0)
        return rc;
    inet_ntop(AF_INET, &sa.sin_addr, ips[nips], sizeof ips[nips]);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DISABLE_IPV6 |
                   LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
    info.port = port;
    info.iface = ips[nips];
    info.protocols = protocols;
    info.vhost_name = name;
    info.max_http_header_data = RL_GW_HEADER_DATA;
    info.timeout_secs = 10;
    info.timeout_secs_ah_idle = 10;
    info.retry_and_idle_policy = &no_validity;
    if (gw.cfg->tls_cert) { /* the same certificate as the gateway: no plain text beside TLS */
        info.ssl_cert_filepath = gw.cfg->tls_cert;
        info.ssl_private_key_filepath = gw.cfg->tls_key;
        info.ssl_options_set = (long)(SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
        info.alpn = "http/1.1";
    }
    if (!lws_create_vhost(gw.ctx, &info)) {
        snprintf(err, errlen, "%s: cannot listen on %s:%d", name, host, port);
        return -EADDRINUSE;
    }
    nips++;
    return 0;
}

void rl_gateway_set_ready_fn(int (*ready)(void)) { gw.ready = ready; }

void rl_gateway_set_accepting(int accepting) { gw.accepting = accepting != 0; }

void rl_gateway_close_all(int code, const char *reason)
{
    gw.accepting = 0;
    for (rl_conn *c = gw.conns; c; c = c->next)
        rl_conn_close(c, code, reason, 1);
}

size_t rl_gateway_conn_count(void) { return gw.nconns; }

void rl_gateway_set_central(const char *pid)
{
    snprintf(gw.central, sizeof gw.central, "%s", pid ? pid : "");
}

void rl_gateway_stop(void)
{
    if (!gw.ctx || gw.destroying)
        return;
    gw.destroying = 1;
    gw.accepting = 0;
    rl_conn_keepalive_stop();
    lws_context_destroy(gw.ctx); /* closes every wsi (CLOSED runs), then lws's uv handles */
}

void rl_gateway_free(void)
{
    if (gw.ctx) {
        /* destroy #2 right after #1, without the loop running between, is a use-after-free */
        if (!gw.destroying)
            RL_PANIC("rl_gateway_free before rl_gateway_stop");
        lws_context_destroy(gw.ctx); /* destroy #2: frees the context; lws NULLs gw.ctx */
        gw.ctx = NULL;
    }
    gw.destroying = 0;
    free(gw.console);
    gw.console = NULL;
    gw.console_len = 0;
    free(gw.tx);
    gw.tx = NULL;
    gw.txcap = 0;
}
