/* The central hub: admission (exact per-user limit), user hub placement, idle hub collection.
 *
 * One per node. It keeps a record per user with connections on this node or a hub here: the
 * admitted local connections and where the user's hub is (pid and placement token). Admission and
 * placement go through the placement interface (rl_placement.h): local (in-process counts) or
 * Redis (an atomic script, exact across nodes; the hub lives where the user's lease is), one code
 * path for both. A new hub starts deferred and bids for its place: if it wins, it starts its
 * plugins; otherwise the connections attach to the user's hub elsewhere (through the transport).
 * On every placement tick (cluster: 1 s) it renews the places of its hubs, notices dead holders
 * and re-places those users, so their connections stay open. */
#include "rl_central.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rl_errors.h"
#include "rl_hub.h"
#include "rl_log.h"
#include "rl_map.h"
#include "rl_metrics.h"
#include "rl_placement.h"
#include "rl_proc.h"

#define RL_HUB_CANCEL_MS 10000

/* An admitted connection: always of this node, so its pid is packed (rl_pid_local's fields; a
   pid string would take 72 bytes). 16 bytes: the 16 class. */
typedef struct local_conn {
    uint64_t serial;
    uint32_t rnd;
    char kind;
    uint8_t attached; /* attached to the placement of central_user.attached_key */
} local_conn;

/* 96 bytes (the 96 class). The hub's pid is packed inline when it is of this node (a malloc'd
   copy took the 32 class more), the user id is the owner's, and valid_until and place_at share
   one field (each means something only in a state the other is 0 in). */
typedef struct central_user {
    rl_owner *owner;        /* the user (a reference); its id is the key in central.users */
    local_conn *conns;      /* admitted connections on this node */
    uint32_t nconns, capconns;
    uint32_t admitting;     /* admissions in flight */
    uint32_t hub_clients;   /* the hub's client count on all nodes (local hub only; a uint32_t there) */
    /* The user's hub (set_hub): a pid of this node packed (hub_kind != 0: rl_pid_local's fields),
       another node's a malloc'd string (hub_kind == 0), none (hub_kind == 0, hub_remote NULL). */
    union {
        uint64_t hub_serial;
        char *hub_remote;
    };
    uint32_t hub_rnd;
    char hub_kind;
    unsigned hub_local : 1;    /* the hub is ours (we hold its place) */
    unsigned placing : 1;      /* an acquisition is in flight */
    unsigned reassert : 2;     /* REASSERT_*: re-asserting its connections after a lapse */
    unsigned reassert_bad : 1; /* a chunk of the round in flight failed: due again */
    unsigned place_fails : 2;  /* placements in a row the placement did not answer, up to 3 (the
                                  backoff tells 0, 1 and more apart) */
    uint16_t reassert_out;     /* chunks in flight */
    uint64_t epoch;         /* its placement token (the lease epoch; 0 standalone), on messages to it */
    union {
        uint64_t valid_until; /* local hub: its place is certainly ours until then */
        uint64_t place_at;    /* no hub: loop ms before which it is not placed again (jittered
                                 backoff); 0 otherwise (a remote hub's) */
    };
    uint64_t idle_since;    /* loop ms when the last client left */
    uint64_t attached_key;  /* placement_key() that the connections' attached flags refer to */
    rl_body *metadata;      /* user_metadata of the latest join (JSON) for hub creation */
    rl_body *scope;
} central_user;

_Static_assert(sizeof(local_conn) <= 16, "local_conn: the 16 class");
_Static_assert(sizeof(central_user) <= 96, "central_user: the 96 class");

enum { REASSERT_NONE, REASSERT_DUE, REASSERT_SENT };

static const rl_placement *placement; /* rl_central_set_placement; local by default */

static struct {
    rl_proc proc;
    const rl_config *cfg;
    const rl_placement *pl;
    rl_map users;      /* user_id -> central_user; a connection's is found from its owner */
    rl_map cancelling; /* hub pid -> (void *)1, cancelled and not yet exited */
    uv_timer_t gc;
    int started;
    int draining;
    /* Re-assertion after a lapse: users still to confirm, the next retry, the round's totals. */
    size_t reassert_left;
    uint64_t reassert_at;
    unsigned reassert_attempts;
    uint64_t reassert_t0;
    size_t reassert_added, reassert_failed;
} central;

const char *rl_central_pid(void) { return central.proc.pid; }
size_t rl_central_user_count(void) { return central.users.len; }

void rl_central_metrics(rl_metrics_out *out)
{
    rl_metrics_gauge(out, "relay_users", "Users with admitted connections or a hub on this node",
                     central.users.len);
}

void rl_central_set_placement(const rl_placement *p) { placement = p; }

/* Sends m (NULL = out of memory: counted) from the central hub. */
static void send_ctl(const char *to, rl_msg *m, uint64_t epoch)
{
    if (m)
        m->epoch = epoch;
    rl_send_or_free(&central.proc, to, m);
}

static void refuse(const char *conn, rl_err_code e, const char *msg)
{
    rl_err_send(&central.proc, conn, e, msg, NULL, 0);
    rl_msg *m = rl_msg_new(RL_T_WS_CLOSE);
    if (m) {
        m->ctl.close.code = rl_err_close_code(e);
        snprintf(m->ctl.close.reason, sizeof m->ctl.close.reason, "%s", rl_err_name(e));
    }
    send_ctl(conn, m, 0);
}

/* ---- user records ---- */

static const char *user_of(const central_user *u) { return rl_owner_user(u->owner); }

/* The connection's pid, written to buf. */
static const char *lconn_pid(const local_conn *c, char buf[RL_PID_MAX])
{
    rl_pid_local p = {.serial = c->serial, .rnd = c->rnd, .kind = c->kind};
    rl_pid_unpack(&p, buf);
    return buf;
}

static int lconn_is(const local_conn *c, const char *pid)
{
    rl_pid_local p = {.serial = c->serial, .rnd = c->rnd, .kind = c->kind};
    return rl_pid_local_is(&p, pid);
}

static int has_hub(const central_user *u) { return u->hub_kind || u->hub_remote; }

/* The user's hub pid ("" = not placed): its string, or buf filled in. Valid until set_hub. */
static const char *hub_pid(const central_user *u, char buf[RL_PID_MAX])
{
    if (!u->hub_kind)
        return u->hub_remote ? u->hub_remote : "";
    rl_pid_local p = {.serial = u->hub_serial, .rnd = u->hub_rnd, .kind = u->hub_kind};
    rl_pid_unpack(&p, buf);
    return buf;
}

/* 1 when pid is the user's hub ("" matches a user not placed). */
static int hub_is(const central_user *u, const char *pid)
{
    if (!u->hub_kind)
        return strcmp(u->hub_remote ? u->hub_remote : "", pid) == 0;
    rl_pid_local p = {.serial = u->hub_serial, .rnd = u->hub_rnd, .kind = u->hub_kind};
    return rl_pid_local_is(&p, pid);
}

static central_user *user_find(const char *id) { return rl_map_get(&central.users, id); }

static central_user *user_get(rl_owner *owner)
{
    const char *id = rl_owner_user(owner);
    central_user *u = user_find(id);
    if (u)
        return u;
    u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->owner = rl_owner_ref(owner); /* the key below stays valid while u is in the map */
    if (rl_map_set(&central.users, user_of(u), u) < 0) {
        rl_owner_unref(u->owner);
        free(u);
        return NULL;
    }
    u->idle_since = rl_now_ms();
    return u;
}

static void user_free(central_user *u)
{
    if (!u->hub_kind)
        free(u->hub_remote);
    free(u->conns);
    rl_body_unref(u->metadata);
    rl_body_unref(u->scope);
    rl_owner_unref(u->owner);
    free(u);
}

static void reassert_round_done(void);

/* Drops the record when nothing refers to it any more. */
static void user_maybe_drop(central_user *u)
{
    if (u->nconns || u->admitting || u->placing || (has_hub(u) && u->hub_local) ||
        u->reassert == REASSERT_SENT)
        return;
    if (u->reassert == REASSERT_DUE && --central.reassert_left == 0) /* nothing left to re-assert */
        reassert_round_done();
    rl_map_del(&central.users, user_of(u));
    user_free(u);
}

static void set_body(rl_body **dst, rl_body *src)
{
    rl_body *old = *dst;
    *dst = rl_body_ref(src);
    rl_body_unref(old);
}

/* ---- attaching connections to the hub ---- */

/* A fingerprint of the user's placement (hub pid and epoch), so the user records where its
   connections were attached in 8 bytes instead of a pid copy; never 0. */
static uint64_t placement_key(const central_user *u)
{
    char buf[RL_PID_MAX];
    uint64_t h = 1469598103934665603ULL ^ u->epoch;
    for (const char *p = hub_pid(u, buf); *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h ? h : 1;
}

static void attach(central_user *u, const char *hub, local_conn *lc)
{
    char conn[RL_PID_MAX];
    lconn_pid(lc, conn);
    rl_msg *join = rl_msg_new(RL_T_WS_JOIN);
    if (join) {
        memcpy(join->ctl.join.conn, conn, RL_PID_MAX);
        join->ctl.join.meta = rl_body_ref(u->metadata);
        join->ctl.join.scope = rl_body_ref(u->scope);
    }
    /* The hub learns of the connection before the connection learns of the hub: the join is
       queued (or streamed) ahead of the connection's first message. */
    send_ctl(hub, join, u->epoch);
    rl_msg *ctl = rl_msg_new(RL_T_WS_CONTROL);
    if (ctl) {
        snprintf(ctl->ctl.control.target, sizeof ctl->ctl.control.target, "%s", hub);
        ctl->ctl.control.epoch = u->epoch;
    }
    send_ctl(conn, ctl, 0);
    lc->attached = 1;
}

/* Attaches every connection not attached to the current placement yet. Only here do connections
   get attached, all at once, so a flag per connection and the user's last key say as much as a
   key per connection would. */
static void attach_all(central_user *u)
{
    if (!has_hub(u))
        return;
    uint64_t key = placement_key(u);
    if (key != u->attached_key) { /* a new placement: no connection is attached to it yet */
        for (size_t i = 0; i < u->nconns; i++)
            u->conns[i].attached = 0;
        u->attached_key = key;
    }
    char buf[RL_PID_MAX];
    const char *hub = hub_pid(u, buf);
    for (size_t i = 0; i < u->nconns; i++)
        if (!u->conns[i].attached)
            attach(u, hub, &u->conns[i]);
}

static void place(central_user *u);

/* Sets the user's hub pid ("" = none): packed when of this node, else copied. Returns 0, or
   -ENOMEM (the hub is then none). */
static int set_hub(central_user *u, const char *pid)
{
    if (!u->hub_kind)
        free(u->hub_remote);
    u->hub_remote = NULL;
    u->hub_kind = 0;
    rl_pid_local p;
    if (rl_pid_pack(pid, &p) == 0) {
        u->hub_serial = p.serial;
        u->hub_rnd = p.rnd;
        u->hub_kind = p.kind;
    } else if (pid[0] && !(u->hub_remote = strdup(pid))) {
        return -ENOMEM;
    }
    return 0;
}

static void clear_placement(central_user *u)
{
    set_hub(u, "");
    u->epoch = 0;
    u->hub_local = 0;
    u->hub_clients = 0;
    u->valid_until = 0;
}

/* ---- placement ---- */

/* The placement did not answer (Redis slow or away, or too much in flight): the first retry
   comes at the next tick, the second after 0.5-1 s, the later ones after 1-2 s (equal jitter),
   so a node with many users spreads its retries instead of sending all of them at every tick
   (or at every re-home). A re-registration (Redis back) ends every backoff. One line per 5 s
   tells how many failed. */
static void place_backoff(central_user *u)
{
    static uint64_t logged_at, failed;
    uint64_t now = rl_now_ms(), wait = u->place_fails == 0 ? 0 : u->place_fails == 1 ? 1000 : 2000;
    if (u->place_fails < 3)
        u->place_fails++;
    u->place_at = now + wait / 2 + uv_hrtime() % (wait / 2 + 1);
    failed++;
    if (now - logged_at >= 5000 || !logged_at) {
        rl_warn("central", "user %s: placement unavailable; retrying with backoff (%llu failed "
                           "placements so far)", user_of(u), (unsigned long long)failed);
        logged_at = now;
    }
}

typedef struct place_req {
    char *user;
    char hub[RL_PID_MAX];
} place_req;

static void refuse_all(central_user *u, rl_err_code e)
{
    while (u->nconns) {
        char conn[RL_PID_MAX];
        lconn_pid(&u->conns[u->nconns - 1], conn);
        central.pl->release(user_of(u), conn);
        refuse(conn, e, NULL);
        u->nconns--;
    }
    u->idle_since = rl_now_ms();
}

static void on_place(const rl_place *l, void *ud)
{
    place_req *r = ud;
    central_user *u = central.started ? user_find(r->user) : NULL;
    int keep = 0;
    if (u)
        u->placing = 0;
    if (!u || central.draining) {
        if (l->status == RL_PLACE_WON)
            central.pl->give_up(r->user, r->hub, l->token, 1);
    } else if (l->status == RL_PLACE_WON) {
        u->place_fails = 0;
        u->place_at = 0;
        keep = set_hub(u, r->hub) == 0 && rl_hub_activate(r->hub, l->valid_until) == 0;
        if (!keep)
            set_hub(u, "");
        if (keep) {
            rl_map_del(&central.cancelling, r->hub);
            u->epoch = l->token;
            u->hub_local = 1;
            u->valid_until = l->valid_until;
            if (u->epoch)
                rl_info("central", "user %s: hub %s here, lease epoch %llu", user_of(u), r->hub,
                        (unsigned long long)u->epoch);
            if (central.pl->hub_info)
                central.pl->hub_info(user_of(u), r->hub, u->epoch, 0, 1);
            if (central.pl->purge)
                central.pl->purge(user_of(u)); /* a previous holder may have died with clients */
            attach_all(u);
        } else {
            central.pl->give_up(r->user, r->hub, l->token, 1);
        }
    } else if (l->status == RL_PLACE_OTHER || l->status == RL_PLACE_MINE) {
        u->place_fails = 0;
        u->place_at = 0;
        rl_proc *old = l->status == RL_PLACE_MINE && !rl_map_get(&central.cancelling, l->hub_pid)
                           ? rl_proc_find(l->hub_pid)
                           : NULL;
        if (l->status == RL_PLACE_MINE && !old) {
            /* Our place names a hub that is gone: give it up and place again next tick. */
            central.pl->give_up(user_of(u), l->hub_pid, l->token, 1);
        } else if (l->hub_pid[0] && set_hub(u, l->hub_pid) < 0) {
            place_backoff(u); /* out of memory: placed again later */
        } else if (l->hub_pid[0]) {
            if (l->status == RL_PLACE_OTHER)
                rl_info("central", "user %s: hub %s on node %s, lease epoch %llu", user_of(u),
                        l->hub_pid, l->holder, (unsigned long long)l->token);
            u->epoch = l->token;
            u->hub_local = old != NULL;
            u->valid_until = old ? l->valid_until : 0;
            if (old) /* the acquisition refreshed our place: so is the hub's validity */
                rl_hub_set_valid_until(l->hub_pid, u->valid_until);
            attach_all(u);
        }
    } else if (u) {
        place_backoff(u);
    }
    if (!keep)
        rl_cancel(NULL, r->hub, 0); /* the deferred hub has no plugins: it exits at once */
    if (u)
        user_maybe_drop(u);
    free(r->user);
    free(r);
}

/* Finds or creates the user's hub and attaches every local connection to it. A hub that only
   has a pid bids for the user's place; it starts its plugins if it wins. */
static void place(central_user *u)
{
    if (u->placing || central.draining)
        return;
    if (has_hub(u)) {
        attach_all(u);
        return;
    }
    if (u->place_at && rl_now_ms() < u->place_at)
        return; /* backing off; the tick places it later */
    if (central.pl->busy && central.pl->busy()) {
        place_backoff(u); /* no hub started for nothing; the tick places it later */
        return;
    }
    place_req *r = calloc(1, sizeof *r);
    if (!r || !(r->user = strdup(user_of(u)))) {
        free(r);
        rl_error("central", "user %s: hub creation failed", user_of(u));
        refuse_all(u, RL_E_HUB_CREATION_FAILED);
        return;
    }
    if (rl_hub_start(central.cfg, u->owner, u->metadata, 1, r->hub) < 0 ||
        rl_monitor(&central.proc, r->hub) < 0) {
        if (r->hub[0])
            rl_cancel(NULL, r->hub, 0);
        free(r->user);
        free(r);
        rl_error("central", "user %s: hub creation failed", user_of(u));
        refuse_all(u, RL_E_HUB_CREATION_FAILED);
        return;
    }
    rl_map_set(&central.cancelling, r->hub, (void *)1); /* until it wins, its exit is expected */
    u->placing = 1; /* before the call: the local placement answers inside it */
    if (central.pl->acquire(user_of(u), r->hub, on_place, r) < 0) {
        u->placing = 0;
        place_backoff(u);
        rl_cancel(NULL, r->hub, 0);
        free(r->user);
        free(r);
    }
}

/* ---- joins and leaves ---- */

static int add_conn(central_user *u, const char *conn, rl_body *meta, rl_body *scope)
{
    rl_pid_local pid;
    if (rl_pid_pack(conn, &pid) < 0)
        return -EINVAL; /* joins come from this node's connections only */
    if (u->nconns == u->capconns) {
        uint32_t ncap = u->capconns ? u->capconns * 2 : 1; /* most users hold one */
        local_conn *nc = realloc(u->conns, ncap * sizeof *nc);
        if (!nc)
            return -ENOMEM;
        u->conns = nc;
        u->capconns = ncap;
    }
    u->conns[u->nconns] = (local_conn){.serial = pid.serial, .rnd = pid.rnd, .kind = pid.kind};
    u->nconns++;
    if (meta)
        set_body(&u->metadata, meta);
    if (scope)
        set_body(&u->scope, scope);
    return 0;
}

static void remove_conn(central_user *u, const char *conn)
{
    for (size_t i = 0; i < u->nconns; i++) {
        if (!lconn_is(&u->conns[i], conn))
            continue;
        u->conns[i] = u->conns[--u->nconns];
        break;
    }
    if (u->nconns == 0)
        u->idle_since = rl_now_ms();
}

typedef struct admit_req {
    char *user;
    char conn[RL_PID_MAX];
    rl_body *meta, *scope;
} admit_req;

static void admit_req_free(admit_req *r)
{
    free(r->user);
    rl_body_unref(r->meta);
    rl_body_unref(r->scope);
    free(r);
}

static void admit_done(central_user *u, const char *conn, rl_body *meta, rl_body *scope)
{
    int rc = add_conn(u, conn, meta, scope);
    if (rc < 0) {
        central.pl->release(user_of(u), conn);
        refuse(conn, RL_E_HUB_CREATION_FAILED, NULL);
        return;
    }
    place(u);
}

static void on_admit(int result, void *ud)
{
    admit_req *r = ud;
    central_user *u = central.started ? user_find(r->user) : NULL;
    if (u)
        u->admitting--;
    if (!u) {
        if (result == 1 && central.started)
            central.pl->release(r->user, r->conn);
    } else if (!rl_proc_find(r->conn)) {
        if (result == 1) /* the connection left while the placement answered */
            central.pl->release(r->user, r->conn);
    } else if (result == 1) {
        admit_done(u, r->conn, r->meta, r->scope);
    } else if (result == 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "Maximum connection limit reached (%d connections)",
                 central.cfg->max_connections_per_user);
        refuse(r->conn, RL_E_MAX_CONNECTIONS, msg);
    } else {
        refuse(r->conn, RL_E_UNAVAILABLE, "Cluster registry unavailable");
    }
    if (u)
        user_maybe_drop(u);
    admit_req_free(r);
}

/* WS_JOIN from a connection of this node (the router lets only connections send it here, each
   about itself): the user is the connection's owner, set by the gateway from its handshake. */
static void on_join(const rl_msg *m)
{
    const char *conn = m->from;
    const char *user = rl_owner_user(m->owner);
    if (!rl_pid_is_local(conn) || strcmp(m->ctl.join.conn, conn) != 0 || !user)
        return;
    if (!user[0]) {
        refuse(conn, RL_E_MISSING_USER_ID, NULL);
        return;
    }
    if (central.draining) {
        refuse(conn, RL_E_UNAVAILABLE, NULL);
        return;
    }
    central_user *u = user_get(m->owner);
    if (!u) {
        refuse(conn, RL_E_HUB_CREATION_FAILED, NULL);
        return;
    }
    admit_req *r = calloc(1, sizeof *r);
    if (!r || !(r->user = strdup(user_of(u)))) {
        free(r);
        refuse(conn, RL_E_HUB_CREATION_FAILED, NULL);
        user_maybe_drop(u);
        return;
    }
    snprintf(r->conn, sizeof r->conn, "%s", conn);
    r->meta = rl_body_ref(m->ctl.join.meta);
    r->scope = rl_body_ref(m->ctl.join.scope);
    /* Counted before the call: the local placement answers inside it (and u may be gone after). */
    u->admitting++;
    int rc = central.pl->admit(user_of(u), conn, central.cfg->max_connections_per_user, on_admit, r);
    if (rc < 0) {
        u->admitting--;
        admit_req_free(r);
        refuse(conn, RL_E_UNAVAILABLE, rc == -EAGAIN ? "Too many admissions in flight, try again"
                                                     : "Cluster registry unavailable");
        user_maybe_drop(u);
    }
}

/* The record of the user that admitted connection conn here (NULL: not admitted). */
static central_user *conn_user(const char *user, const char *conn)
{
    central_user *u = user ? user_find(user) : NULL;
    for (uint32_t i = 0; u && i < u->nconns; i++)
        if (lconn_is(&u->conns[i], conn))
            return u;
    return NULL;
}

/* WS_LEAVE from a connection about itself: forget it here and tell its hub. */
static void on_leave(const rl_msg *m)
{
    const char *conn = m->from;
    central_user *u = conn_user(rl_owner_user(m->owner), conn);
    if (!u)
        return; /* never admitted */
    if (has_hub(u)) {
        rl_msg *l = rl_msg_new(RL_T_WS_LEAVE);
        if (l)
            memcpy(l->ctl.conn.conn, conn, RL_PID_MAX);
        char buf[RL_PID_MAX];
        send_ctl(hub_pid(u, buf), l, u->epoch);
    }
    central.pl->release(user_of(u), conn);
    remove_conn(u, conn);
    user_maybe_drop(u);
}

/* WS_REHOME from a connection: its hub (ctl.rehome.hub) is gone or handed over. */
static void on_rehome(const rl_msg *m)
{
    const char *conn = m->from;
    central_user *u = conn_user(rl_owner_user(m->owner), conn);
    if (!u)
        return;
    if (hub_is(u, m->ctl.rehome.hub)) {
        rl_info("central", "user %s: hub %s gone, placing again", user_of(u), m->ctl.rehome.hub);
        if (u->hub_local)
            rl_cancel(NULL, m->ctl.rehome.hub, RL_HUB_CANCEL_MS);
        clear_placement(u);
    }
    for (size_t i = 0; i < u->nconns; i++)
        if (lconn_is(&u->conns[i], conn))
            u->conns[i].attached = 0;
    place(u);
}

/* HUB_ACTIVITY from a hub of this node: the user is its owner. */
static void on_activity(const rl_msg *m)
{
    central_user *u = user_find(rl_owner_user(m->owner));
    if (!u || !u->hub_local || !hub_is(u, m->from))
        return;
    u->hub_clients = (uint32_t)m->ctl.activity.clients; /* a hub's nconns */
    if (u->hub_clients == 0)
        u->idle_since = rl_now_ms();
    if (central.pl->hub_info)
        central.pl->hub_info(user_of(u), m->from, u->epoch, u->hub_clients, 0);
}

static void on_hub_exit(const char *pid)
{
    if (rl_map_del(&central.cancelling, pid))
        return;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (hub_is(u, pid)) {
            rl_warn("central", "user %s: hub %s exited unexpectedly", k, pid);
            central.pl->give_up(user_of(u), pid, u->epoch, 1);
            clear_placement(u);
            if (u->nconns)
                place(u);
            else
                user_maybe_drop(u);
            break;
        }
    }
}

static void central_handle(rl_proc *p, rl_msg *m)
{
    (void)p;
    switch (m->topic) {
    case RL_T_WS_JOIN:
        on_join(m);
        break;
    case RL_T_WS_LEAVE:
        on_leave(m);
        break;
    case RL_T_WS_REHOME:
        on_rehome(m);
        break;
    case RL_T_HUB_ACTIVITY:
        on_activity(m);
        break;
    case RL_T_PID_EXIT:
        on_hub_exit(m->ctl.exit.pid);
        break;
    default:
        rl_debug("central", "ignoring %s from %s", rl_topic_name((rl_topic)m->topic), m->from);
        break;
    }
    rl_msg_free(m);
}

/* ---- collection of idle hubs ---- */

/* Cancels a local hub (10 s grace for its plugins); a join meanwhile gets a fresh hub. */
static void retire_hub(central_user *u, const char *why)
{
    char buf[RL_PID_MAX];
    const char *hub = hub_pid(u, buf);
    rl_info("central", "user %s: %s hub %s", user_of(u), why, hub);
    rl_map_set(&central.cancelling, hub, (void *)1);
    central.pl->give_up(user_of(u), hub, u->epoch, 1);
    rl_cancel(NULL, hub, RL_HUB_CANCEL_MS);
    clear_placement(u);
}

/* The user's local hub may no longer (or soon not) hold its place: it tells every connection
   to re-home ("hub.handover") and stops; the user is placed again from scratch. release: free
   the place at once (drain), else it is lost or expired already. */
static void hand_over_hub(central_user *u, int release)
{
    char buf[RL_PID_MAX];
    const char *hub = hub_pid(u, buf);
    central.pl->give_up(user_of(u), hub, u->epoch, release);
    rl_map_set(&central.cancelling, hub, (void *)1);
    send_ctl(hub, rl_msg_new(RL_T_HUB_HANDOVER), 0);
    clear_placement(u);
}

static void gc_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = rl_now_ms(), timeout = central.cfg->user_hub_inactivity_timeout_ms;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (u->nconns > 0 || u->hub_clients > 0 || u->placing || u->admitting ||
            now - u->idle_since <= timeout)
            continue;
        if (has_hub(u) && u->hub_local) {
            rl_metric_inc(RL_M_HUBS_COLLECTED);
            retire_hub(u, "collecting idle");
        }
        user_maybe_drop(u);
    }
}

/* ---- reconciliation, every placement tick ---- */

typedef struct renew_req {
    char *user;
    char hub[RL_PID_MAX];
} renew_req;

static void on_renew(const rl_place *l, void *ud)
{
    renew_req *r = ud;
    central_user *u = central.started ? user_find(r->user) : NULL;
    if (u && hub_is(u, r->hub) && u->hub_local) {
        if (l->status == RL_PLACE_WON) {
            u->valid_until = l->valid_until;
            rl_hub_set_valid_until(r->hub, u->valid_until);
        } else if (l->status == RL_PLACE_OTHER) {
            rl_warn("central", "user %s: lease of hub %s lost", user_of(u), r->hub);
            hand_over_hub(u, 0);
            place(u);
        }
    }
    free(r->user);
    free(r);
}

/* After our registration may have lapsed (or Redis lost its data), other nodes may have
   reclaimed our entries: every established connection is added back, whatever the limit. Closing
   some to fit the limit was rejected: they are open and working, and the count then says so; the
   limit refuses newcomers until enough leave. Retried with backoff until each user is done. */
static void reassert_round_done(void)
{
    rl_info("central", "re-assertion done after %llu ms: %zu connection entries were missing "
                       "and added back (%zu failed attempts)",
            (unsigned long long)(rl_now_ms() - central.reassert_t0), central.reassert_added,
            central.reassert_failed);
}

static void on_reassert(int result, size_t added, void *ud)
{
    char *user = ud;
    central_user *u = central.started ? user_find(user) : NULL;
    free(user);
    if (!u || u->reassert != REASSERT_SENT)
        return;
    if (result != 1)
        u->reassert_bad = 1;
    if (--u->reassert_out > 0)
        return; /* the user's other chunks are still on the wire */
    if (!u->reassert_bad) {
        u->reassert = REASSERT_NONE;
        central.reassert_added += added;
        if (--central.reassert_left == 0)
            reassert_round_done();
        user_maybe_drop(u);
        return;
    }
    u->reassert = REASSERT_DUE; /* the next placement tick past reassert_at sends it again */
    u->reassert_bad = 0;
    central.reassert_failed++;
    if (central.reassert_at <= rl_now_ms()) {
        unsigned sh = central.reassert_attempts < 3 ? central.reassert_attempts : 3;
        uint64_t wait = 1000ULL << sh; /* ticks are 1 s: 1, 2, 4, 8 s, with jitter below */
        central.reassert_at = rl_now_ms() + wait / 2 + uv_hrtime() % (wait / 2 + 1);
        central.reassert_attempts++;
    }
}

/* Sends the user's connections as they are now (a chunk per RL_CLUSTER_REASSERT_MAX). */
static void reassert_send(central_user *u, int retry)
{
    if (u->nconns == 0) { /* every connection left meanwhile: nothing to assert */
        u->reassert = REASSERT_NONE;
        if (--central.reassert_left == 0)
            reassert_round_done();
        return;
    }
    for (uint32_t at = 0; at < u->nconns && u->reassert_out < UINT16_MAX; at += RL_PLACE_REASSERT_MAX) {
        static char bufs[RL_PLACE_REASSERT_MAX][RL_PID_MAX]; /* the placement copies them */
        const char *pids[RL_PLACE_REASSERT_MAX];
        size_t n = u->nconns - at < RL_PLACE_REASSERT_MAX ? u->nconns - at : RL_PLACE_REASSERT_MAX;
        for (size_t i = 0; i < n; i++) {
            pids[i] = lconn_pid(&u->conns[at + i], bufs[i]);
        }
        char *user = strdup(user_of(u));
        if (!user || central.pl->reassert(user_of(u), pids, n, retry, on_reassert, user) < 0) {
            free(user);
            u->reassert_bad = 1; /* due again once the chunks sent (if any) are answered */
            break;
        }
        u->reassert = REASSERT_SENT;
        u->reassert_out++;
    }
    if (u->reassert_out == 0) { /* nothing went out: stays due */
        u->reassert = REASSERT_DUE;
        u->reassert_bad = 0;
    }
}

static void reassert_all(void)
{
    const char *k;
    void *v;
    size_t users = 0, conns = 0;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (!u->nconns || u->reassert != REASSERT_NONE)
            continue;
        u->reassert = REASSERT_DUE;
        central.reassert_left++;
        users++;
        conns += u->nconns;
        reassert_send(u, 0);
    }
    central.reassert_t0 = rl_now_ms();
    central.reassert_added = central.reassert_failed = 0;
    central.reassert_attempts = 0;
    central.reassert_at = 0;
    rl_info("central", "re-asserting %zu connections of %zu users", conns, users);
    if (users == 0 && central.reassert_left == 0)
        reassert_round_done();
}

static void reassert_retry(void)
{
    /* only right after an acknowledged heartbeat: Redis answers again */
    uint64_t now = rl_now_ms();
    if (!central.reassert_left || now < central.reassert_at || now >= central.pl->node_valid_until())
        return;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (u->reassert == REASSERT_DUE)
            reassert_send(u, 1);
    }
}

static void placement_tick(const rl_place_tick *t)
{
    if (!central.started)
        return;
    if (t->lapsed) {
        const char *k0;
        void *v0;
        for (size_t it = 0; rl_map_next(&central.users, &it, &k0, &v0);) {
            central_user *u = v0;
            if (!has_hub(u)) /* (with a hub the field is valid_until) */
                u->place_at = 0; /* Redis answers again: no more waiting */
        }
        reassert_all();
        /* Notices sent during the outage may be lost: look every remote hub up again. */
        const char *k2;
        void *v2;
        for (size_t it = 0; rl_map_next(&central.users, &it, &k2, &v2);) {
            central_user *u = v2;
            if (has_hub(u) && !u->hub_local && !u->placing)
                clear_placement(u);
        }
    }
    reassert_retry();
    uint64_t now = rl_now_ms();
    const char *const *dead = t->dead;
    size_t ndead = t->ndead;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (u->placing)
            continue;
        char buf[RL_PID_MAX];
        const char *hub = hub_pid(u, buf); /* "" = none; stale once the placement is cleared */
        if (hub[0] && u->hub_local) {
            if (now >= u->valid_until) { /* not renewed in time: it may be someone else's now */
                rl_warn("central", "user %s: lease of hub %s expired", user_of(u), hub);
                hand_over_hub(u, 0);
            } else {
                for (size_t i = 0; i < ndead; i++) {
                    rl_msg *nd = rl_msg_new(RL_T_NODE_DOWN);
                    if (nd)
                        snprintf(nd->ctl.node.node, sizeof nd->ctl.node.node, "%s", dead[i]);
                    send_ctl(hub, nd, 0);
                }
                if (ndead && central.pl->purge)
                    central.pl->purge(user_of(u));
                renew_req *r = calloc(1, sizeof *r);
                if (r && (r->user = strdup(user_of(u)))) {
                    snprintf(r->hub, sizeof r->hub, "%s", hub);
                    if (central.pl->renew(user_of(u), hub, u->epoch, on_renew, r) < 0) {
                        free(r->user);
                        free(r);
                    }
                } else {
                    free(r);
                }
            }
        } else if (hub[0] && !central.pl->pid_alive(hub)) {
            rl_warn("central", "user %s: hub %s's node is gone, placing again", user_of(u), hub);
            clear_placement(u);
        }
        if (!has_hub(u) && u->nconns > 0)
            place(u);
        else if (!has_hub(u))
            user_maybe_drop(u);
    }
}

/* ---- the server API's look-ups ---- */

typedef struct locate_req {
    rl_central_locate_cb cb;
    void *ud;
} locate_req;

static void on_locate(const rl_place *l, void *ud)
{
    locate_req *r = ud;
    if (l->status == RL_PLACE_OTHER || l->status == RL_PLACE_MINE)
        r->cb(0, l->hub_pid, l->token, r->ud);
    else
        r->cb(l->status == RL_PLACE_NONE ? -ENOENT : -EHOSTUNREACH, NULL, 0, r->ud);
    free(r);
}

int rl_central_locate(const char *user, rl_central_locate_cb cb, void *ud)
{
    if (!central.started)
        return -ESHUTDOWN;
    central_user *u = user_find(user);
    if (u && has_hub(u) && !u->placing) {
        char buf[RL_PID_MAX];
        cb(0, hub_pid(u, buf), u->epoch, ud);
        return 0;
    }
    /* Only the placement says where a user without connections here has a hub. */
    locate_req *r = malloc(sizeof *r);
    if (!r)
        return -ENOMEM;
    r->cb = cb;
    r->ud = ud;
    int rc = central.pl->locate(user, on_locate, r);
    if (rc < 0)
        free(r);
    return rc;
}

/* ---- start, drain, stop ---- */

static void central_free(rl_proc *p) { (void)p; }

static const rl_proc_ops central_ops = {
    .kind = "central", .letter = 'x', .handle = central_handle, .free = central_free,
};

int rl_central_start(const rl_config *c)
{
    memset(&central, 0, sizeof central);
    central.cfg = c;
    central.pl = placement ? placement : rl_placement_local();
    rl_map_init_borrowed(&central.users);
    rl_map_init(&central.cancelling);
    int rc = rl_proc_start(&central.proc, &central_ops, 0, NULL);
    if (rc < 0)
        return rc;
    uint64_t every = c->user_hub_inactivity_timeout_ms * 2 / 5;
    if (every < 100)
        every = 100;
    uv_timer_init(rl_node_loop(), &central.gc);
    uv_timer_start(&central.gc, gc_tick, every, every);
    central.started = 1;
    if (central.pl->set_tick)
        central.pl->set_tick(placement_tick);
    return 0;
}

void rl_central_drain(void)
{
    if (!central.started || central.draining)
        return;
    central.draining = 1;
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        if (!has_hub(u) || !u->hub_local)
            continue;
        /* Release first, so the connections the hub sends away find the place free. */
        hand_over_hub(u, 1);
    }
}

void rl_central_stop(void)
{
    if (!central.started)
        return;
    central.started = 0;
    if (central.pl->set_tick)
        central.pl->set_tick(NULL);
    uv_timer_stop(&central.gc);
    uv_close((uv_handle_t *)&central.gc, NULL);
    const char *k;
    void *v;
    for (size_t it = 0; rl_map_next(&central.users, &it, &k, &v);) {
        central_user *u = v;
        char buf[RL_PID_MAX];
        if (has_hub(u) && u->hub_local)
            rl_cancel(NULL, hub_pid(u, buf), RL_HUB_CANCEL_MS);
        user_free(u);
    }
    rl_map_close(&central.users);
    rl_map_close(&central.cancelling);
    rl_proc_exit(&central.proc, NULL);
}
