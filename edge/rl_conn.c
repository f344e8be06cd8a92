/* The connection process: one per WebSocket. Client frames are scanned once (rl_envelope) and
 * go to the user hub as they came; frames for the client are queued on the connection and
 * written at the end of the loop turn (RL_TURN_FRAMES), once per connection per turn. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_edge.h"
#include "rl_envelope.h"
#include "rl_errors.h"
#include "rl_json.h"
#include "rl_log.h"
#include "rl_metrics.h"

/* ---------------------------------------------------------------------------------------------
 * Writing frames */

static int tx_reserve(size_t len)
{
    if (LWS_PRE + len <= gw.txcap)
        return 0;
    size_t ncap = gw.txcap ? gw.txcap : 4096;
    while (ncap < LWS_PRE + len)
        ncap *= 2;
    unsigned char *n = realloc(gw.tx, ncap);
    if (!n)
        return -ENOMEM;
    gw.tx = n;
    gw.txcap = ncap;
    return 0;
}

static void conn_drop_queue(rl_conn *c)
{
    while (c->out_head) {
        rl_msg *m = c->out_head;
        c->out_head = m->next;
        rl_msg_free(m);
    }
    c->out_tail = NULL;
    c->out_bytes = 0;
}

static int conn_writable_state(const rl_conn *c)
{
    return c->wsi && (c->state == RL_CONN_JOINING || c->state == RL_CONN_ROUTED);
}

/* Bytes a queued message puts on the wire (for the outbound bound). */
static size_t frame_size(const rl_msg *m)
{
    size_t n = m->body ? m->body->len : 4;
    return m->topic == RL_T_APP ? n + m->name_len + 32 : n;
}

static void want_write(rl_conn *c)
{
    if (c->pending_write)
        return;
    c->pending_write = 1;
    c->write_next = NULL;
    *gw.writes_tail = c;
    gw.writes_tail = &c->write_next;
    rl_turn_request();
}

/* The client does not read: our queue is dropped, and the close frame follows whatever lws
   already holds. Starting the close while lws still buffers part of a frame would lose the
   frame: lws 4.1 then only flushes and cuts the socket (LRS_FLUSHING_BEFORE_CLOSE ends in a
   kill), so the flush path of rl_conn_close waits for WRITEABLE with nothing buffered, for at
   most RL_GW_CLOSE_FLUSH_S. */
static void conn_slow_consumer(rl_conn *c)
{
    rl_warn("gateway", "%s: outbound queue over %zu bytes: closing", c->proc.pid,
            gw.cfg->max_outbound_bytes);
    rl_metric_error(RL_E_SLOW_CONSUMER);
    conn_drop_queue(c);
    rl_conn_close(c, rl_err_close_code(RL_E_SLOW_CONSUMER), rl_err_name(RL_E_SLOW_CONSUMER), 1);
}

/* Queues m (WS_MESSAGE: the body is the frame; APP: {"topic":NAME,"data":BODY}) for the end of
   the turn. Takes m on 0; -ENOENT when the connection no longer takes frames; -EAGAIN when the
   queue is full (the connection is then closed as a slow consumer). */
static int conn_queue(rl_conn *c, rl_msg *m)
{
    if (!conn_writable_state(c))
        return -ENOENT;
    size_t n = frame_size(m);
    if (c->out_bytes + n > gw.cfg->max_outbound_bytes) {
        conn_slow_consumer(c);
        return -EAGAIN;
    }
    m->next = NULL;
    if (c->out_tail)
        c->out_tail->next = m;
    else
        c->out_head = m;
    c->out_tail = m;
    c->out_bytes += n;
    want_write(c);
    return 0;
}

/* Writes one queued frame. The body of a WS_MESSAGE is written in place (its headroom takes
   lws's frame header); an APP message is wrapped in the scratch buffer. Returns lws_write's. */
static int write_frame(struct lws *wsi, const rl_msg *m)
{
    if (m->topic == RL_T_WS_MESSAGE)
        return lws_write(wsi, (unsigned char *)m->body->data, m->body->len, LWS_WRITE_TEXT);
    const char *data = m->body ? m->body->data : "null";
    size_t dlen = m->body ? m->body->len : 4;
    size_t need = rl_json_escape(NULL, 0, m->name, m->name_len) + dlen + 20;
    if (tx_reserve(need) < 0)
        return -1;
    char *start = (char *)gw.tx + LWS_PRE, *p = start;
    memcpy(p, "{\"topic\":", 9);
    p += 9;
    p += rl_json_escape(p, need, m->name, m->name_len);
    memcpy(p, ",\"data\":", 8);
    p += 8;
    memcpy(p, data, dlen);
    p += dlen;
    *p++ = '}';
    return lws_write(wsi, (unsigned char *)start, (size_t)(p - start), LWS_WRITE_TEXT);
}

/* Prepares the close frame and has lws send it (see rl_conn_close for why this way). */
static void send_close(rl_conn *c, struct lws *wsi)
{
    lws_close_reason(wsi, (enum lws_close_status)c->close_code,
                     (unsigned char *)(c->close_reason ? c->close_reason : ""),
                     c->close_reason ? strlen(c->close_reason) : 0);
    lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE, LWS_TO_KILL_ASYNC);
    c->close_sent = 1;
}

/* Writes queued frames while lws holds nothing back (no poll(): lws_partial_buffered is a flag).
   When lws buffered part of a frame, the rest waits for WRITEABLE. Returns 0 or -1 (fatal). */
static int conn_flush(rl_conn *c, int in_writable)
{
    struct lws *wsi = c->wsi;
    if (!wsi)
        return 0;
    if (c->ping_pending && !lws_partial_buffered(wsi) && conn_writable_state(c)) {
        /* With a payload: lws 4.1 does not tell the protocol about an empty pong. */
        unsigned char ping[LWS_PRE + 1] = {[LWS_PRE] = 'r'};
        c->ping_pending = 0;
        if (lws_write(wsi, ping + LWS_PRE, 1, LWS_WRITE_PING) < 0)
            return -1;
    }
    while (c->out_head && !lws_partial_buffered(wsi)) {
        rl_msg *m = c->out_head;
        c->out_head = m->next;
        if (!c->out_head)
            c->out_tail = NULL;
        c->out_bytes -= frame_size(m);
        int w = write_frame(wsi, m);
        rl_msg_free(m);
        if (w < 0)
            return -1;
        rl_metric_inc(RL_M_MSGS_OUT);
    }
    if (c->state == RL_CONN_CLOSING && !c->close_sent && !c->out_head &&
        !lws_partial_buffered(wsi) && in_writable) {
        send_close(c, wsi); /* from inside lws's service, so that lws arms the kill at once */
        return 0;
    }
    if (c->out_head || c->ping_pending || (c->state == RL_CONN_CLOSING && !c->close_sent))
        lws_callback_on_writable(wsi);
    return 0;
}

void rl_conn_flush_all(void *ud)
{
    (void)ud;
    while (gw.writes) {
        rl_conn *c = gw.writes;
        gw.writes = c->write_next;
        if (!gw.writes)
            gw.writes_tail = &gw.writes;
        c->write_next = NULL;
        c->pending_write = 0;
        if (conn_flush(c, 0) < 0 && c->wsi) {
            c->state = RL_CONN_CLOSING;
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        }
    }
}

/* Answers the client with error e; rid[0..rid_len) is the raw JSON of its request_id. */
static void conn_send_error(rl_conn *c, rl_err_code e, const char *msg, const char *rid,
                            size_t rid_len)
{
    rl_msg *m = rl_err_msg(e, msg, rid, rid_len);
    if (!m || conn_queue(c, m) < 0) {
        rl_msg_free(m);
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
}

/* Starts lws's close handshake with our code and reason (close frame, then up to 5 s for the
 * client's answer).
 *
 * Why not the documented lws_close_reason() + return -1: the Debian lws 4.1.6 is a _DEBUG build,
 * and on the libuv backend its service loop closes a wsi twice ("close_and_handled uv repeat
 * test", core-net/service.c); the second call finds the polite close pending and kills the
 * socket, so the client never sees the close frame (it reports 1006). An async-kill timeout
 * with the reason PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE is the one public path that reaches
 * __lws_close_free_wsi once and without marking the socket unusable, so lws sends the close
 * frame we prepared. (Writing the close frame ourselves needs LWS_WRITE_CLOSE, which 4.1 keeps
 * private.) With output still buffered in lws (or a socket that never drains), lws flushes for
 * up to 5 s and then cuts the socket without a close frame.
 *
 * With flush, frames already queued go out first (for at most RL_GW_CLOSE_FLUSH_S, then the
 * socket is cut); without, the close starts at once. Works from any context. The first close
 * wins. */
void rl_conn_close(rl_conn *c, int code, const char *reason, int flush)
{
    if (!c->wsi || c->state == RL_CONN_CLOSING || c->state == RL_CONN_CLOSED)
        return;
    if (c->state == RL_CONN_HOOK) /* read again: the client's answer to our close frame */
        lws_rx_flow_control(c->wsi, 1);
    c->state = RL_CONN_CLOSING;
    c->close_code = code;
    free(c->close_reason);
    c->close_reason = reason ? strndup(reason, RL_CLOSE_REASON_MAX) : NULL; /* NULL: no reason */
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
    if (!flush) {
        conn_drop_queue(c);
        send_close(c, c->wsi);
        return;
    }
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, RL_GW_CLOSE_FLUSH_S);
    want_write(c);
}

/* Answers with error e (its default message unless msg) and closes with e's close code and
   its name as the reason. */
static void conn_fail(rl_conn *c, rl_err_code e, const char *msg)
{
    conn_send_error(c, e, msg, NULL, 0);
    rl_conn_close(c, rl_err_close_code(e), rl_err_name(e), 1);
}

/* ---------------------------------------------------------------------------------------------
 * Client frames */

/* Asks the central hub to place the user again: the target is gone or unreachable. */
static void conn_rehome(rl_conn *c)
{
    rl_send_or_free(&c->proc, rl_gw_central_pid(),
                    rl_msg_rehome(c->proc.pid, c->route ? c->route->hub : ""));
}

/* The "unreachable: re-homing" line, at most once a second for the node: while a hub's node
   is gone every message of its users' connections comes here (50 lines a second from one
   busy connection were seen in a failover), so the next line says how many it stood for. */
static void rehome_log(const rl_conn *c, int rc)
{
    static uint64_t next_ms;
    static unsigned long quiet;
    uint64_t now = rl_now_ms();
    if (now < next_ms) {
        quiet++;
        return;
    }
    rl_warn("gateway", "%s: hub %s unreachable (%d): re-homing (%lu more since the last such line)",
            c->proc.pid, c->route ? c->route->hub : "none", rc, quiet);
    quiet = 0;
    next_ms = now + 1000;
}

/* Sends a client message to the user hub, tagged with its lease epoch. Takes m. */
static void conn_forward(rl_conn *c, rl_msg *m)
{
    m->epoch = c->route ? c->route->epoch : 0;
    int rc = c->route ? rl_send(&c->proc, c->route->hub, m) : -ENOENT;
    if (rc == 0)
        return;
    size_t rl;
    const char *rid = rl_msg_request_id(m, &rl);
    if (rc == -EAGAIN || rc == -ENOMEM) {
        conn_send_error(c, RL_E_OVERLOADED, rc == -EAGAIN ? NULL : "Out of memory", rid, rl);
    } else {
        /* -ENOENT, -EHOSTUNREACH, -EINVAL, -EPERM: the hub is gone or unreachable. The
           connection stays: the central hub places the user again and sends a new WS_CONTROL
           and welcome. */
        rehome_log(c, rc);
        conn_send_error(c, RL_E_PLUGIN_FAILED, "User hub unavailable, try again", rid, rl);
        conn_rehome(c);
    }
    rl_msg_free(m);
}

/* One whole client frame: scanned once; answered here when it cannot be routed (not UTF-8,
   not JSON, not an object with a string type); else the same bytes go to the hub. */
static void conn_on_frame(rl_conn *c, const char *data, size_t len)
{
    rl_metric_inc(RL_M_MSGS_IN);
    if (c->state != RL_CONN_JOINING && c->state != RL_CONN_ROUTED) {
        rl_metric_inc(RL_M_MSGS_DROPPED); /* closing: the client is told by the close */
        return;
    }
    rl_envelope env;
    int st = rl_env_scan(data, len, &env);
    if (st == RL_ENV_BAD_UTF8 || ((st == RL_ENV_INCOMPLETE || st == RL_ENV_INVALID) && env.utf8_cut)) {
        rl_debug("gateway", "%s: invalid UTF-8 in a text frame: closing", c->proc.pid);
        rl_conn_close(c, 1007, "invalid UTF-8", 0);
        return;
    }
    if (st < 0) {
        char why[96];
        snprintf(why, sizeof why, "Failed to decode JSON message: %s at byte %zu",
                 env.why ? env.why : "invalid", env.err_off);
        conn_send_error(c, RL_E_INVALID_JSON, why, NULL, 0);
        return;
    }
    const char *rid = env.has_request_id ? data + env.request_id.off : NULL;
    size_t rlen = env.has_request_id ? env.request_id.len : 0;
    if (st == RL_ENV_NOT_OBJECT) {
        conn_send_error(c, RL_E_UNKNOWN_COMMAND, "Message must be a JSON object", NULL, 0);
        return;
    }
    if (!env.has_type || !env.type_is_string || env.type.len == 0) {
        conn_send_error(c, RL_E_UNKNOWN_COMMAND, NULL, rid, rlen);
        return;
    }
    rl_msg *m = rl_msg_new_data(RL_T_WS_CLIENT, NULL, 0, data, len);
    if (!m) {
        conn_send_error(c, RL_E_OVERLOADED, "Out of memory", rid, rlen);
        return;
    }
    m->flags = RL_MSG_CLIENT;
    m->arrived_ns = uv_hrtime(); /* relay_routing_seconds counts from here */
    m->env.type_off = (uint32_t)env.type.off;
    m->env.type_len = (uint32_t)env.type.len;
    m->env.type_escaped = env.type_escaped;
    m->env.rid_off = (uint32_t)env.request_id.off;
    m->env.rid_len = (uint32_t)rlen;
    if (c->state == RL_CONN_ROUTED) {
        conn_forward(c, m);
        return;
    }
    if (c->npend >= RL_GW_PENDING_MAX) {
        conn_send_error(c, RL_E_OVERLOADED, "Connection not joined yet, message not accepted",
                        rid, rlen);
        rl_msg_free(m);
        return;
    }
    if (c->pend_tail)
        c->pend_tail->next = m;
    else
        c->pend_head = m;
    c->pend_tail = m;
    c->npend++;
}

/* LWS_CALLBACK_RECEIVE: one chunk of at most RL_GW_RX_BUFFER bytes. Messages are reassembled
   up to max_message_bytes; a larger one is refused as soon as its announced length shows it,
   without buffering it. */
void rl_conn_on_receive(rl_conn *c, struct lws *wsi, const char *in, size_t len)
{
    c->last_rx_ms = (uint32_t)rl_now_ms();
    c->ping_out = 0;
    if (c->state != RL_CONN_JOINING && c->state != RL_CONN_ROUTED)
        return;
    size_t remaining = lws_remaining_packet_payload(wsi);
    int final = lws_is_final_fragment(wsi);
    size_t max = gw.cfg->max_message_bytes;
    if (c->rxlen + len > max || remaining > max - c->rxlen - len) {
        rl_debug("gateway", "%s: message over %zu bytes", c->proc.pid, max);
        free(c->rx);
        c->rx = NULL;
        c->rxlen = 0;
        conn_fail(c, RL_E_MESSAGE_TOO_LARGE, NULL);
        return;
    }
    if (final && c->rxlen == 0) {
        conn_on_frame(c, in, len);
        return;
    }
    char *n = realloc(c->rx, c->rxlen + len + remaining + 1);
    if (!n) {
        conn_fail(c, RL_E_OVERLOADED, "Out of memory");
        return;
    }
    c->rx = n;
    memcpy(c->rx + c->rxlen, in, len);
    c->rxlen += len;
    if (final) {
        char *msg = c->rx;
        size_t mlen = c->rxlen;
        c->rx = NULL;
        c->rxlen = 0;
        conn_on_frame(c, msg, mlen);
        free(msg);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Keepalive: a connection that sent nothing for ping_interval gets a ping; one that then sends
 * nothing (no pong, no frame) until gw.hang_ms after its last frame is cut. One timer walks the
 * connection list a slice per tick, so every connection is looked at once per sweep period
 * (half the interval, 100 ms to 1 s) at a cost per tick proportional to connections / ticks
 * and none per message beyond a timestamp. */

#define KEEPALIVE_TICKS 10 /* ticks per sweep */
/* Times are kept modulo 2^32 ms per connection; longer settings are taken as this (24 days). */
#define KEEPALIVE_MAX_MS ((uint64_t)INT32_MAX)

static uint64_t sweep_period_ms(uint64_t interval)
{
    uint64_t s = interval / 2;
    return s < 100 ? 100 : s > 1000 ? 1000 : s;
}

void rl_conn_on_pong(rl_conn *c)
{
    c->last_rx_ms = (uint32_t)rl_now_ms();
    c->ping_out = 0;
}

static void keepalive_look(rl_conn *c, uint64_t now, uint64_t interval)
{
    if (!c->wsi || (c->state != RL_CONN_JOINING && c->state != RL_CONN_ROUTED))
        return;
    uint32_t quiet = (uint32_t)now - c->last_rx_ms; /* modulo 2^32: intervals are shorter */
    if (c->ping_out && quiet >= gw.hang_ms) {
        rl_info("gateway", "%s: no pong or frame for %llu ms: closing the dead connection",
                c->proc.pid, (unsigned long long)quiet);
        rl_metric_inc(RL_M_PING_TIMEOUTS);
        /* Cut from WRITEABLE (a dead peer's socket usually still takes writes): an lws
           timeout set from this timer waits for lws's next service of something else, so it
           is only the fallback for a socket whose send buffer is full. */
        c->state = RL_CONN_CLOSING;
        c->dead = 1;
        lws_callback_on_writable(c->wsi);
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, RL_GW_CLOSE_FLUSH_S);
    } else if (!c->ping_out && quiet >= interval) {
        c->ping_out = 1;
        c->ping_pending = 1;
        want_write(c);
    }
}

static void keepalive_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = rl_now_ms(), interval = gw.cfg->ping_interval_ms;
    if (interval > KEEPALIVE_MAX_MS)
        interval = KEEPALIVE_MAX_MS;
    size_t n = gw.nconns / KEEPALIVE_TICKS + 1;
    rl_conn *c = gw.sweep ? gw.sweep : gw.conns;
    while (c && n--) {
        rl_conn *next = c->next; /* keepalive_look never unlists c */
        keepalive_look(c, now, interval);
        c = next;
    }
    gw.sweep = c; /* NULL: the next tick starts from the head again */
}

void rl_conn_keepalive_start(uv_loop_t *loop, const rl_config *cfg)
{
    gw.sweep = NULL;
    if (!cfg->ping_interval_ms)
        return;
    /* The dead-peer timeout counts from the last frame and must exceed the interval, else a
       timeout shorter than the interval would cut every idle client before its ping. */
    gw.hang_ms = cfg->ping_timeout_ms > cfg->ping_interval_ms
                     ? cfg->ping_timeout_ms
                     : cfg->ping_interval_ms + cfg->ping_timeout_ms;
    if (gw.hang_ms > KEEPALIVE_MAX_MS)
        gw.hang_ms = KEEPALIVE_MAX_MS;
    uint64_t tick = sweep_period_ms(cfg->ping_interval_ms) / KEEPALIVE_TICKS;
    uv_timer_init(loop, &gw.keepalive);
    uv_timer_start(&gw.keepalive, keepalive_tick, tick, tick);
    gw.keepalive_on = 1;
}

void rl_conn_keepalive_stop(void)
{
    if (!gw.keepalive_on)
        return;
    gw.keepalive_on = 0;
    uv_timer_stop(&gw.keepalive);
    uv_close((uv_handle_t *)&gw.keepalive, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Messages from processes (the router checked the sender's authority for each topic) */

/* WS_CONTROL: route to the hub and forward what the client sent meanwhile. */
static int conn_on_control(rl_conn *c, rl_msg *m)
{
    if (!m->ctl.control.target[0]) {
        rl_warn("gateway", "%s: ws.control without a target", c->proc.pid);
        rl_msg_free(m);
        return 0;
    }
    size_t len = strnlen(m->ctl.control.target, RL_PID_MAX - 1);
    rl_conn_route *r = malloc(sizeof *r + len + 1);
    if (!r) {
        rl_msg_free(m);
        conn_fail(c, RL_E_OVERLOADED, "Out of memory");
        return 0;
    }
    r->epoch = m->ctl.control.epoch;
    memcpy(r->hub, m->ctl.control.target, len);
    r->hub[len] = '\0';
    free(c->route);
    c->route = r;
    rl_msg_free(m);
    if (c->state == RL_CONN_JOINING)
        c->state = RL_CONN_ROUTED;
    while (c->pend_head) {
        rl_msg *f = c->pend_head;
        c->pend_head = f->next;
        f->next = NULL;
        c->npend--;
        if (c->state == RL_CONN_ROUTED) {
            conn_forward(c, f);
        } else {
            rl_msg_free(f);
            rl_metric_inc(RL_M_MSGS_DROPPED);
        }
    }
    c->pend_tail = NULL;
    return 0;
}

/* Codes an endpoint may put in a close frame (RFC 6455 7.4; 1004-1006 and 1015 are reserved). */
static int close_code_sendable(int code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

static int conn_on_close_msg(rl_conn *c, rl_msg *m)
{
    int code = close_code_sendable(m->ctl.close.code) ? m->ctl.close.code : 1000;
    rl_conn_close(c, code, m->ctl.close.reason, 1);
    rl_msg_free(m);
    return 0;
}

/* WS_REHOME from hub H: when H is still this connection's hub, ask the central for the new one
   (a late notice from an old hub is ignored). */
static int conn_on_rehome(rl_conn *c, rl_msg *m)
{
    if (c->route && strcmp(m->ctl.rehome.hub, c->route->hub) == 0)
        conn_rehome(c);
    rl_msg_free(m);
    return 0;
}

/* rl_proc fast path: every message to a connection is taken at once, in the sender's turn;
   frames are queued for the end of the turn. */
static int conn_deliver(rl_proc *p, rl_msg *m)
{
    rl_conn *c = (rl_conn *)p;
    if (!c->wsi || c->state == RL_CONN_CLOSING || c->state == RL_CONN_CLOSED)
        return -ENOENT;
    switch (m->topic) {
    case RL_T_WS_CONTROL:
        return conn_on_control(c, m);
    case RL_T_WS_CLOSE:
        return conn_on_close_msg(c, m);
    case RL_T_WS_REHOME:
        return conn_on_rehome(c, m);
    case RL_T_WS_MESSAGE:
        if (!m->body)
            return -EINVAL;
        return conn_queue(c, m);
    case RL_T_APP:
        return conn_queue(c, m);
    default:
        return -EINVAL;
    }
}

/* Only reached if a message was ever queued in the mailbox (deliver normally takes them all). */
static void conn_handle(rl_proc *p, rl_msg *m)
{
    if (conn_deliver(p, m) < 0) {
        rl_msg_free(m);
        rl_metric_inc(RL_M_MSGS_DROPPED);
    }
}

static void conn_cancel(rl_proc *p, uint64_t deadline_ms)
{
    (void)deadline_ms;
    rl_conn_close((rl_conn *)p, 1001, "going away", 1);
}

static void conn_unlist(rl_conn *c)
{
    if (!c->listed)
        return;
    if (gw.sweep == c)
        gw.sweep = c->next;
    if (c->prev)
        c->prev->next = c->next;
    else
        gw.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    c->listed = 0;
    gw.nconns--;
    rl_metric_dec(RL_M_CONNS_OPEN);
    if (c->pending_write) {
        for (rl_conn **pp = &gw.writes; *pp; pp = &(*pp)->write_next)
            if (*pp == c) {
                *pp = c->write_next;
                if (gw.writes_tail == &c->write_next)
                    gw.writes_tail = pp;
                break;
            }
        c->pending_write = 0;
    }
}

void rl_conn_free_mem(rl_conn *c)
{
    conn_drop_queue(c);
    if (c->hooked) {
        rl_hook_free(c->hook); /* cancels its request: no answer reaches c */
    } else if (c->hs) {
        free(c->user_id);
        free(c->meta_json);
        free(c->scope);
    } else {
        while (c->pend_head) {
            rl_msg *f = c->pend_head;
            c->pend_head = f->next;
            rl_msg_free(f);
        }
    }
    free(c->rx);
    free(c->close_reason);
    free(c->route);
    free(c);
}

/* ops->free: after rl_proc_exit, outside any lws callback. If lws still has the socket (the
   process was ended from outside, e.g. rl_node_close), detach and let lws kill it. */
static void conn_proc_free(rl_proc *p)
{
    rl_conn *c = (rl_conn *)p;
    if (c->wsi) {
        lws_set_opaque_user_data(c->wsi, NULL);
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        c->wsi = NULL;
    }
    conn_unlist(c);
    rl_conn_free_mem(c);
}

static const rl_proc_ops conn_ops = {
    .kind = "conn",
    .letter = 'c',
    .handle = conn_handle,
    .deliver = conn_deliver,
    .cancel = conn_cancel,
    .free = conn_proc_free,
};

/* ---------------------------------------------------------------------------------------------
 * Lifecycle */

static rl_body *body_of(const char *s)
{
    return s ? rl_body_new(s, strlen(s)) : NULL;
}

/* Starts c's process and sends its ws.join (user_id known; meta_json and scope may be NULL).
   The strings stay the caller's. */
static void conn_join(rl_conn *c, const char *user_id, const char *meta_json, const char *scope)
{
    /* The connection's owner is its user, from the handshake: no message can change it. */
    rl_owner *owner = rl_owner_get(user_id, strlen(user_id));
    rl_msg *join = rl_msg_new(RL_T_WS_JOIN);
    int rc = owner && join ? rl_proc_start(&c->proc, &conn_ops, 0, owner) : -ENOMEM;
    rl_owner_unref(owner);
    if (rc < 0) {
        rl_metric_inc(RL_M_CONNS_REJECTED);
        conn_fail(c, RL_E_UNAVAILABLE, "Out of memory");
        rl_msg_free(join);
        return;
    }
    c->has_proc = 1;
    rl_metric_inc(RL_M_CONNS_ACCEPTED);
    memcpy(join->ctl.join.conn, c->proc.pid, RL_PID_MAX);
    join->ctl.join.meta = body_of(meta_json);
    join->ctl.join.scope = body_of(scope);
    rc = rl_send(&c->proc, rl_gw_central_pid(), join);
    if (rc == 0) {
        char peer[64] = "";
        lws_get_peer_simple(c->wsi, peer, sizeof peer);
        rl_log_field f[] = {{"conn", c->proc.pid, 0}, {"user", user_id, 0},
                            {"node", rl_node_id(), 0}, {"peer", peer, 0}};
        rl_log_fields(RL_LOG_INFO, "gateway", f, sizeof f / sizeof f[0], "connected");
    } else {
        rl_error("gateway", "%s: ws.join to the central hub failed (%d)", c->proc.pid, rc);
        conn_fail(c, RL_E_HUB_CREATION_FAILED, NULL);
        rl_msg_free(join);
    }
}

/* The connect hook could not answer: refuse with 1013 (unavailable), or accept as if there
   were no hook (connect_hook.on_failure). */
static void conn_hook_failed(rl_conn *c, const char *user_id, const char *meta_json,
                             const char *scope, const char *why)
{
    rl_metric_inc(RL_M_HOOK_FAILED);
    int accept = gw.cfg->hook_on_failure && strcmp(gw.cfg->hook_on_failure, "accept") == 0;
    rl_warn("gateway", "connect hook failed for user %s (%s): %s", user_id, why,
            accept ? "accepting (on_failure: accept)" : "refusing with 1013");
    if (accept) {
        conn_join(c, user_id, meta_json, scope);
        return;
    }
    rl_metric_inc(RL_M_CONNS_REJECTED);
    conn_fail(c, RL_E_UNAVAILABLE, "Cannot check the connection with the application, try again");
}

void rl_conn_hook_done(rl_conn *c, rl_hook_outcome o, const char *meta, const char *reason)
{
    char *user_id, *meta_json, *scope;
    rl_hook *h = c->hook;
    rl_hook_take(h, &user_id, &meta_json, &scope);
    c->hooked = 0;
    c->pend_head = c->pend_tail = NULL; /* the union holds the pending messages again */
    c->npend = 0;
    rl_hook_free(h);
    if (c->state == RL_CONN_HOOK && c->wsi) {
        c->state = RL_CONN_JOINING;
        lws_rx_flow_control(c->wsi, 1);
        if (o == RL_HOOK_ACCEPT) {
            rl_metric_inc(RL_M_HOOK_ACCEPTED);
            conn_join(c, user_id, meta ? meta : meta_json, scope);
        } else if (o == RL_HOOK_DENY) {
            rl_metric_inc(RL_M_HOOK_DENIED);
            rl_metric_inc(RL_M_CONNS_REJECTED);
            rl_info("gateway", "connect hook denied user %s: %s", user_id, reason);
            conn_fail(c, RL_E_CONNECT_DENIED, reason);
        } else {
            conn_hook_failed(c, user_id, meta_json, scope, reason);
        }
    } /* else the connection closed meanwhile */
    free(user_id);
    free(meta_json);
    free(scope);
}

void rl_conn_on_established(struct lws *wsi)
{
    rl_conn *c = lws_get_opaque_user_data(wsi);
    if (!c) { /* cannot happen: CONFIRM_UPGRADE attached it */
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    /* The handshake's strings leave the union, which holds the pending messages from now on. */
    char *user_id = c->user_id, *meta_json = c->meta_json, *scope = c->scope;
    c->user_id = c->meta_json = c->scope = NULL;
    c->hs = 0;
    c->wsi = wsi;
    c->state = RL_CONN_JOINING;
    c->last_rx_ms = c->opened_ms = (uint32_t)rl_now_ms();
    c->listed = 1;
    c->next = gw.conns;
    if (gw.conns)
        gw.conns->prev = c;
    gw.conns = c;
    gw.nconns++;
    rl_metric_inc(RL_M_CONNS_OPEN);
    char *hook_body = c->rx; /* the connect hook's request, from the handshake (or NULL) */
    size_t hook_len = c->rxlen;
    c->rx = NULL;
    c->rxlen = 0;
    if (!rl_gw_ready()) {
        rl_metric_inc(RL_M_CONNS_REJECTED);
        conn_fail(c, RL_E_UNAVAILABLE, NULL);
    } else if (!user_id) {
        rl_metric_inc(RL_M_CONNS_REJECTED);
        conn_fail(c, RL_E_MISSING_USER_ID, NULL);
    } else if (hook_body) {
        int rc = rl_hook_start(c, user_id, meta_json, scope, hook_body, hook_len);
        hook_body = NULL; /* freed by rl_hook_start */
        if (rc == 0)
            return; /* the identity waits in the hook */
        conn_hook_failed(c, user_id, meta_json, scope,
                         rc == -EAGAIN ? "busy" : rc == -ENOMEM ? "out of memory" : "bad request");
    } else {
        conn_join(c, user_id, meta_json, scope);
    }
    free(hook_body);
    free(user_id);
    free(meta_json);
    free(scope);
}

/* LWS_CALLBACK_SERVER_WRITEABLE: lws's own buffer is empty again; go on with the queue. */
int rl_conn_on_writable(rl_conn *c, struct lws *wsi)
{
    (void)wsi;
    if (c->dead)
        return -1; /* lws closes the socket */
    return conn_flush(c, 1);
}

/* What RFC 6455 (5.5.1, 7.1.5, 7.4) forbids in a close payload that lws 4.1 lets through: one
   byte (a code needs two), a code of 5000 or more, a reason that is not UTF-8. lws itself
   turns the codes no endpoint may send (below 1000, 1004-1006, 1012-1015, 1016-2999) into 1002
   in the payload it echoes. Returns 0, or the code to fail the connection with and its reason. */
static int close_payload_fault(const unsigned char *p, size_t len, const char **why)
{
    if (len == 1) {
        *why = "close payload of one byte";
        return 1002;
    }
    if (len >= 2 && ((unsigned)p[0] << 8 | p[1]) >= 5000) {
        *why = "close code not allowed";
        return 1002;
    }
    if (len > 2 && !rl_env_utf8_valid((const char *)p + 2, len - 2)) {
        *why = "invalid UTF-8 in close reason";
        return 1007;
    }
    return 0;
}

/* LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: the client starts the close (lws answers it; the
   answer to a close we started never gets here). Stop writing to it. A malformed close is
   answered with our code instead of the echo: lws sends the reason set here when the callback
   fails (as for its own protocol errors). c may be NULL (detached). */
int rl_conn_on_peer_close(rl_conn *c, struct lws *wsi, const unsigned char *in, size_t len)
{
    if (c) {
        if (c->state == RL_CONN_JOINING || c->state == RL_CONN_ROUTED) {
            c->state = RL_CONN_CLOSING;
            c->peer_closed = 1;
            c->close_code = len >= 2 ? (unsigned)(in[0] << 8 | in[1]) : 1005; /* 1005: no code */
        }
        c->close_sent = 1;
    }
    const char *why = NULL;
    int code = close_payload_fault(in, len, &why);
    if (!code)
        return 0;
    rl_debug("gateway", "%s: %s: closing with %d", c ? c->proc.pid : "-", why, code);
    lws_close_reason(wsi, (enum lws_close_status)code, (unsigned char *)why, strlen(why));
    return -1;
}

/* The WebSocket is gone (LWS_CALLBACK_CLOSED, or WSI_DESTROY without it). The process ends
   here; its memory is freed later by the scheduler, outside any lws callback. */
void rl_conn_on_closed(struct lws *wsi)
{
    rl_conn *c = lws_get_opaque_user_data(wsi);
    if (!c)
        return;
    lws_set_opaque_user_data(wsi, NULL);
    c->wsi = NULL;
    c->state = RL_CONN_CLOSED;
    conn_unlist(c);
    if (!c->has_proc) {
        if (c->close_code) { /* established, refused before its process ran (missing_user_id) */
            rl_log_field f[] = {{"code", NULL, (long long)c->close_code},
                                {"reason", c->close_reason ? c->close_reason : "", 0}};
            rl_log_fields(RL_LOG_INFO, "gateway", f, sizeof f / sizeof f[0], "refused");
        }
        rl_conn_free_mem(c);
        return;
    }
    rl_log_field f[] = {
        {"conn", c->proc.pid, 0},
        {"user", rl_owner_user(c->proc.owner), 0},
        {"code", NULL, c->close_code ? (long long)c->close_code : 1006}, /* 1006: no close frame */
        {"reason", c->peer_closed ? "" : c->close_reason ? c->close_reason : "", 0},
        {"by", c->peer_closed ? "client" : c->close_code ? "server" : "network", 0},
        {"duration_ms", NULL, (long long)(uint32_t)((uint32_t)rl_now_ms() - c->opened_ms)},
    };
    rl_log_fields(RL_LOG_INFO, "gateway", f, sizeof f / sizeof f[0], "closed");
    rl_msg *leave = rl_msg_new(RL_T_WS_LEAVE);
    if (leave)
        memcpy(leave->ctl.conn.conn, c->proc.pid, RL_PID_MAX);
    rl_send_or_free(&c->proc, rl_gw_central_pid(), leave);
    rl_proc_exit(&c->proc, NULL);
}
