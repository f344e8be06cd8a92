"""Cluster accounting under Redis faults: a node's Redis traffic goes through a FaultProxy
(faultproxy.py), which drops, resets, holds and late-delivers it.

The Redis-fault scenarios check the accounting invariant of DESIGN.md §5: within node_ttl + 2 s
after the fault heals, HLEN relay:{user}:conns equals the user's open connections on live nodes,
and the limit admits exactly what fits. The node-fault scenarios (kill -9, SIGSTOP, SIGTERM of
the hub's node, its command connection lost alone) run clients sending requests and check, over
the "accepted" debug lines of every hub and what every client got (check_invariants): never two
hubs of a user accepting in overlapping time, at most once, each sender's order, and an answer
for every request. Short TTLs keep every scenario to a few seconds.
"""
import asyncio
import contextlib
import json
import signal
import time

import websockets
import websockets.exceptions

from faultproxy import FaultProxy
from harness import Config, Node, TestFailure, check, connect, recv_json
from test_cluster import (Cluster, closed_quietly, cluster_plugins, echo_ok, exits_0, is_welcome,
                          join, kill9, note, wait_for)


class FaultCluster(Cluster):
    """A Cluster whose nodes named in `proxied` reach Redis through their own FaultProxy."""

    def __init__(self, n, proxied=(), **kw):
        super().__init__(n, **kw)
        self.proxied = set(proxied)
        self.proxies = {}

    def make_node(self, node_id):
        url = self.redis.url
        if node_id in self.proxied:
            px = self.proxies.get(node_id) or FaultProxy(self.redis.port)
            self.proxies[node_id] = px
            url = px.url
        cfg = Config(plugins=cluster_plugins(), params=dict(self.params), node=dict(self.node_opts))
        # debug: the hubs log every client message they accept ("accepted"), for the invariants
        return Node(cfg, env={"RELAY_LOG_LEVEL": "debug"},
                    args=["--node-id", node_id, "--redis", url], name=node_id)

    def proxy(self, node_id):
        return self.proxies[node_id]

    async def shut(self, check_exit=False):
        try:
            await super().shut(check_exit=check_exit)
        finally:
            for px in self.proxies.values():
                px.close()
            self.proxies = {}


@contextlib.asynccontextmanager
async def fault_cluster(n, **kw):
    cl = FaultCluster(n, **kw).start()
    try:
        yield cl
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


async def attempt(node, user):
    """('welcome', ws) | ('limit', None) (refused 1008) | ('unavailable', code) (HTTP 5xx or 1013)."""
    try:
        ws = await connect(node, user=user, open_timeout=5)
    except websockets.exceptions.InvalidStatusCode as e:
        return "unavailable", e.status_code
    try:
        f = await recv_json(ws, timeout=8)
    except TestFailure:
        return "unavailable", ws.close_code
    if is_welcome(f):
        return "welcome", ws
    err = f.get("data", {}).get("error") if isinstance(f, dict) else None
    await closed_quietly(ws)
    if err == "max_connections_reached":
        return "limit", None
    return "unavailable", err


async def converged(cl, user, n_open, since, what):
    """HLEN of the user's conns must reach n_open within node_ttl + 2 s of `since` and stay there
    (0.5 s later). Returns the seconds it took from `since`."""
    limit = cl.node_ttl + 2.0
    await wait_for(lambda: cl.hlen(user) == n_open, max(0.1, since + limit - time.monotonic()),
                   f"{what}: HLEN relay:{{{user}}}:conns == {n_open} open connections "
                   f"(entries: {cl.conns(user)})")
    took = time.monotonic() - since
    await asyncio.sleep(0.5)
    check(cl.hlen(user) == n_open, f"{what}: HLEN {cl.hlen(user)} 0.5 s after it matched {n_open} "
                                   f"open connections: {cl.conns(user)}")
    return took


async def limit_admits_exactly(cl, user, n_open, limit, nodes):
    """With n_open connections open, joins admit exactly limit - n_open more, then refuse."""
    fits = max(0, limit - n_open)
    admitted = []
    for i in range(fits + 1):
        kind, ws = await attempt(nodes[i % len(nodes)], user)
        if kind == "welcome":
            admitted.append(cl.track(ws))
        elif i < fits:
            raise TestFailure(f"join {i + 1} of {fits} that fit ({n_open} open, limit {limit}): {kind} {ws}")
        else:
            check(kind == "limit", f"join over the limit answered {kind} {ws}")
    check(len(admitted) == fits, f"{n_open} open under limit {limit}: {len(admitted)} more admitted, "
                                 f"expected {fits}")
    check(cl.hlen(user) == n_open + fits, f"HLEN {cl.hlen(user)} with {n_open + fits} open")


def metric(node, name):
    from harness import metric_sum
    return metric_sum(node.metrics(), name) or 0


# --------------------------------------------------------------------------------------------


async def test_fault_blip_while_a_client_closes():
    """A 1.5 s drop of n1's Redis connections while one of its clients closes: the release fails
    (not connected) and must be retried until Redis confirms it."""
    async with fault_cluster(2, proxied=("n1",), node_ttl=3.0, lease_ttl=3.0,
                             params={"max_connections_per_user": "3"}) as cl:
        a, b = cl.nodes
        w1, _ = await join(a, "ann")
        w2, _ = await join(a, "ann")
        w3, _ = await join(b, "ann")
        cl.socks += [w2, w3]
        check(cl.hlen("ann") == 3, f"HLEN {cl.hlen('ann')} before the blip")
        cl.proxy("n1").drop(1.5)
        await asyncio.sleep(0.2)
        await w1.close()                       # its release cannot reach Redis now
        await asyncio.sleep(1.3)
        healed = time.monotonic()
        took = await converged(cl, "ann", 2, healed, "after a 1.5 s blip")
        note(f"blip: HLEN exact {took:.2f}s after the blip healed; "
             f"retries {metric(a, 'relay_redis_retries_total'):.0f}")
        await limit_admits_exactly(cl, "ann", 2, 3, [b, a])


test_fault_blip_while_a_client_closes.timeout = 40


async def test_fault_admission_times_out_then_executes_late():
    """n1's Redis traffic is held past the command timeout while a client joins there: the node
    refuses it (1013). Then the held bytes reach Redis late, after the node reconnected: the
    admission that executes then must not leave an entry for a connection that never existed."""
    async with fault_cluster(2, proxied=("n1",), params={"max_connections_per_user": "2"}) as cl:
        a, b = cl.nodes
        wb, _ = await join(b, "bea")
        cl.track(wb)
        px = cl.proxy("n1")
        px.hold()
        t0 = time.monotonic()
        kind, info = await attempt(a, "bea")
        check(kind == "unavailable", f"join on n1 while its Redis is held: {kind} {info}")
        note(f"timed-out admission refused after {time.monotonic() - t0:.2f}s ({info})")
        while time.monotonic() - t0 < 2.6:
            await asyncio.sleep(0.1)
        px.heal(stale_after=1.0)                # n1 reconnects first; the old socket's bytes 1 s later
        await wait_for(lambda: px.stale_pending() == 0, 3, "held bytes delivered")
        healed = time.monotonic()
        check(px.stale_bytes > 0, "the proxy delivered no late bytes")
        took = await converged(cl, "bea", 1, healed, "after a late admission")
        note(f"late admission: HLEN exact {took:.2f}s after the late bytes reached Redis "
             f"({px.stale_conns} closed sockets, {px.stale_bytes} bytes); n1 reconciled "
             f"{metric(a, 'relay_reconciled_entries_total'):.0f}, pending releases "
             f"{metric(a, 'relay_pending_releases'):.0f}")
        await limit_admits_exactly(cl, "bea", 1, 2, [a, b])


test_fault_admission_times_out_then_executes_late.timeout = 40


async def test_fault_partition_past_node_ttl_with_late_delivery():
    """n1 is cut off from Redis longer than node_ttl; meanwhile a join on n2 reclaims n1's entries
    (n1 looks dead). The held bytes then reach Redis first (a stale heartbeat re-creates n1's key),
    so n1's next heartbeat finds its key present: it must still know from its own clock that its
    registration lapsed, and re-assert its connections."""
    async with fault_cluster(2, proxied=("n1",), params={"max_connections_per_user": "3"}) as cl:
        a, b = cl.nodes
        wa1, _ = await join(a, "cat")
        wa2, _ = await join(a, "cat")
        cl.socks += [wa1, wa2]
        px = cl.proxy("n1")
        px.hold()
        t0 = time.monotonic()
        await wait_for(lambda: cl.redis.cli("EXISTS", "relay:node:n1") == "0", cl.node_ttl + 1.5,
                       "n1's key expired during the partition")
        kind, wb = await attempt(b, "cat")
        check(kind == "welcome", f"join on n2 while n1 looks dead: {kind} {wb}")
        cl.track(wb)
        while time.monotonic() - t0 < cl.node_ttl + 1.5:
            await asyncio.sleep(0.1)
        px.heal(stale_after=0.0)                # the stale heartbeat first
        healed = time.monotonic()
        took = await converged(cl, "cat", 3, healed, "after a partition past node_ttl")
        note(f"partition: HLEN exact {took:.2f}s after it healed "
             f"(reconciled {metric(a, 'relay_reconciled_entries_total'):.0f} on n1)")
        for ws in (wa1, wa2):
            check(ws.open, f"an established connection on n1 was closed ({ws.close_code})")
        await limit_admits_exactly(cl, "cat", 3, 3, [b, a])


test_fault_partition_past_node_ttl_with_late_delivery.timeout = 40


async def test_fault_redis_restarted_empty_under_joins():
    """Redis restarts empty while the user is at the limit and newcomers keep knocking; n2 finds
    Redis again before n1 does. The established connections are registered again before any
    newcomer is admitted, and none of them is closed to make room."""
    async with fault_cluster(2, proxied=("n1",), params={"max_connections_per_user": "3"}) as cl:
        a, b = cl.nodes
        est = [(await join(nd, "dan"))[0] for nd in (a, a, b)]
        cl.socks += est
        check(cl.hlen("dan") == 3, f"HLEN {cl.hlen('dan')} before the restart")
        cl.redis.kill()
        cl.proxy("n1").drop(1.5)                # n1 comes back later than n2
        await asyncio.sleep(0.3)
        from test_cluster import RedisServer
        cl.redis = RedisServer(port=cl.redis.port, directory=cl.redis.dir).start()
        restarted = time.monotonic()
        outcomes, exact_at = [], None
        while time.monotonic() - restarted < cl.node_ttl + 2.0:
            kind, ws = await attempt(b, "dan")
            outcomes.append(kind)
            if kind == "welcome":
                cl.track(ws)
            if exact_at is None and cl.hlen("dan") == 3:
                exact_at = time.monotonic() - restarted
            await asyncio.sleep(0.1)
        await converged(cl, "dan", 3, restarted, "after Redis restarted empty")
        note(f"restart: HLEN exact {exact_at}s after Redis came back (n1 {cl.proxy('n1').accepted} "
             f"proxied connects); newcomers: { {k: outcomes.count(k) for k in set(outcomes)} }")
        closed = [f"{i}: {ws.close_code} {ws.close_reason!r}" for i, ws in enumerate(est) if not ws.open]
        check("welcome" not in outcomes and not closed,
              f"newcomers {outcomes}; established connections closed: {closed}")
        await limit_admits_exactly(cl, "dan", 3, 3, [a, b])


test_fault_redis_restarted_empty_under_joins.timeout = 40


async def test_fault_forward_lost_with_redis_is_answered():
    """A client message forwarded while its node's Redis traffic is held (the XADD times out,
    the connection is dropped with it unanswered) is answered to the client with its
    request_id, not dropped with only a counter."""
    async with fault_cluster(2, proxied=("n1",)) as cl:
        a, b = cl.nodes
        wb, _ = await join(b, "dan")            # dan's hub lives on n2
        cl.track(wb)
        wa, _ = await join(a, "dan")            # n1 forwards dan's messages to it
        cl.track(wa)
        px = cl.proxy("n1")
        px.hold()
        t0 = time.monotonic()
        await wa.send('{"type":"cl_where","request_id":"lost-1"}')
        got = None
        while time.monotonic() - t0 < 6 and got is None:
            try:
                f = await recv_json(wa, timeout=6 - (time.monotonic() - t0))
            except TestFailure:
                break
            if isinstance(f, dict) and f.get("topic") == "error" and \
                    f.get("data", {}).get("request_id") == "lost-1":
                got = f
        px.heal()
        check(got is not None, "the forwarded message lost with n1's Redis connection got no answer")
        note(f"lost forward answered after {time.monotonic() - t0:.2f}s: {got['data']['error']}")


test_fault_forward_lost_with_redis_is_answered.timeout = 40


async def test_fault_unreachable_hub_answers_each_message_and_logs_once_a_second():
    """While a node cannot reach Redis, each client message for a hub on another node is
    answered at once ("try again", with its request_id) and asks for a re-homing; the log says so
    at most once a second, with how many it stood for (one busy client logged 50 lines a second
    in a failover before)."""
    async with fault_cluster(2, proxied=("n1",)) as cl:
        a, b = cl.nodes
        wb, _ = await join(b, "rhm")            # rhm's hub lives on n2
        cl.track(wb)
        wa, _ = await join(a, "rhm")            # n1 forwards rhm's messages to it
        cl.track(wa)
        before = a.log_text().count("re-homing")
        cl.proxy("n1").drop(4)
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        rids = ["rh-%d" % i for i in range(40)]
        answered = set()
        for rid in rids:
            await wa.send('{"type":"cl_where","request_id":"%s"}' % rid)
            await asyncio.sleep(0.03)
        while time.monotonic() - t0 < 6 and len(answered) < len(rids):
            try:
                f = await recv_json(wa, timeout=0.5)
            except TestFailure:
                continue
            if isinstance(f, dict) and f.get("topic") == "error":
                answered.add(f.get("data", {}).get("request_id"))
        spent = time.monotonic() - t0
        lines = [ln for ln in a.log_text().splitlines() if "re-homing" in ln][before:]
        check(answered >= set(rids), f"unanswered while unreachable: {sorted(set(rids) - answered)}")
        check(1 <= len(lines) <= int(spent) + 2, f"{len(lines)} re-homing lines in {spent:.1f}s")
        check("more since the last such line" in lines[0], f"{lines[0]}")
        note(f"{len(rids)} messages while unreachable: {len(lines)} log lines in {spent:.1f}s")


test_fault_unreachable_hub_answers_each_message_and_logs_once_a_second.timeout = 40



# --------------------------------------------------------------------------------------------
# Node faults under traffic, and the invariants over what every hub accepted


class Client:
    """One client of a user sending echo requests ("<name>-<seq>") every `every` s, and reading
    everything: replies and error frames (by request_id), welcomes, the close."""

    def __init__(self, name, ws, every=0.02):
        self.name, self.ws, self.every = name, ws, every
        self.sent = {}        # rid -> monotonic time sent
        self.answers = {}     # rid -> (kind: "reply" or the error name, time)
        self.dups = []        # rids answered twice
        self.replies = []     # seqs of replies in arrival order
        self.welcomes = []    # times of welcomes after the first
        self.closed = None    # (code, time)
        self.stopping = False
        self.tasks = []

    def start(self):
        self.tasks = [asyncio.ensure_future(self._send()), asyncio.ensure_future(self._read())]
        return self

    async def _send(self):
        seq = 0
        while not self.stopping and self.closed is None:
            rid = f"{self.name}-{seq}"
            self.sent[rid] = time.monotonic()
            try:
                await self.ws.send(json.dumps({"type": "echo_t", "request_id": rid}))
            except websockets.exceptions.ConnectionClosed:
                del self.sent[rid]
                break
            seq += 1
            await asyncio.sleep(self.every)

    def _answer(self, rid, kind):
        if rid in self.answers:
            self.dups.append(f"{rid} ({self.answers[rid][0]}, then {kind})")
        self.answers[rid] = (kind, time.monotonic())

    async def _read(self):
        while True:
            try:
                raw = await self.ws.recv()
            except websockets.exceptions.ConnectionClosed:
                self.closed = (self.ws.close_code, time.monotonic())
                return
            try:
                f = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(f, dict):
                continue
            if f.get("topic") == "welcome":
                self.welcomes.append(time.monotonic())
            elif f.get("topic") == "error":
                rid = (f.get("data") or {}).get("request_id")
                if isinstance(rid, str) and rid.startswith(self.name + "-"):
                    self._answer(rid, f["data"].get("error"))
            elif f.get("topic") == "t":
                rid = (f.get("payload") or {}).get("request_id", "")
                if rid.startswith(self.name + "-"):
                    self._answer(rid, "reply")
                    self.replies.append(int(rid.rsplit("-", 1)[1]))

    async def stop(self, settle=1.5):
        """Stops sending, then reads `settle` s longer for the last answers."""
        self.stopping = True
        await asyncio.gather(self.tasks[0], return_exceptions=True)
        await asyncio.sleep(settle)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def unanswered(self):
        return sorted((t, rid) for rid, t in self.sent.items() if rid not in self.answers)

    def errors(self):
        out = {}
        for kind, _ in self.answers.values():
            if kind != "reply":
                out[kind] = out.get(kind, 0) + 1
        return out

    def first_reply_after(self, t0):
        ts = [t for kind, t in self.answers.values() if kind == "reply" and t > t0]
        return min(ts) if ts else None


async def stop_all(clients, settle=1.5):
    await asyncio.gather(*(c.stop(settle) for c in clients))


def accepted_lines(nodes, user):
    """[(at_us, node, hub pid, sender, rid)] of every "accepted" line of the user's hubs, by time."""
    out = []
    for nd in nodes:
        for line in nd.log_text().splitlines():
            if '"accepted"' not in line:
                continue
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("msg") == "accepted" and o.get("user") == user:
                out.append((int(o["at_us"]), nd.name, o["hub"], o["from"], o["rid"]))
    out.sort()
    return out


def check_invariants(nodes, user, clients, what):
    """Over what every hub of the user accepted, and what every client got:
    - never two hubs of the user accepting in overlapping time (each hub's first..last accept);
    - at most once: no request accepted twice (by one hub or two);
    - per-sender order: each client's requests accepted, and replied, in the order it sent them;
    - nothing lost without an answer: a client that stayed open has a reply or an error frame for
      every request it sent (a client whose own node went away is told by its close).
    Returns figures for the notes."""
    acc = accepted_lines(nodes, user)
    check(acc, f"{what}: no accepted lines logged for {user}")
    spans = {}
    for at, node, hub, _, _ in acc:
        first, last, nd = spans.get(hub, (at, at, node))
        spans[hub] = (min(first, at), max(last, at), nd)
    ordered = sorted(spans.items(), key=lambda kv: kv[1][0])
    for (h1, (f1, l1, n1)), (h2, (f2, l2, n2)) in zip(ordered, ordered[1:]):
        check(f2 > l1, f"{what}: hubs of {user} accepted in overlapping time: {h1} on {n1} "
                       f"[{f1}..{l1}] and {h2} on {n2} [{f2}..{l2}] (us)")
    rids = [a[4] for a in acc]
    twice = sorted({r for r in rids if rids.count(r) > 1}) if len(set(rids)) != len(rids) else []
    check(not twice, f"{what}: requests accepted twice: {twice[:10]}")
    for c in clients:
        seqs = [int(r.rsplit("-", 1)[1]) for r in rids if r.startswith(c.name + "-")]
        check(seqs == sorted(seqs), f"{what}: {c.name}'s requests accepted out of order: {seqs[:40]}")
        check(c.replies == sorted(c.replies), f"{what}: {c.name}'s replies out of order")
        check(not c.dups, f"{what}: {c.name}: requests answered twice: {c.dups[:10]}")
    figures = {}
    for c in clients:
        lost = c.unanswered()
        if c.closed is None:
            check(not lost, f"{what}: {c.name} (open) got no answer to {len(lost)} requests: "
                            f"{[rid for _, rid in lost][:10]}")
        figures[c.name] = {"sent": len(c.sent), "errors": c.errors(),
                           "unanswered": len(lost), "welcomes": len(c.welcomes),
                           "closed": c.closed[0] if c.closed else None}
    figures["hubs"] = [f"{nd}:{h.split('.')[2]}" for h, (_, _, nd) in ordered]
    return figures


async def clients_on(cl, user, nodes, every=0.02):
    """One welcomed Client per node (the first node's join places the hub there), started."""
    out = []
    for i, nd in enumerate(nodes):
        ws, _ = await join(nd, user)
        cl.track(ws)
        out.append(Client(f"c{i + 1}{nd.name}", ws, every=every))
    for c in out:
        c.start()
    return out


async def test_fault_kill9_of_hub_node_under_traffic():
    """kill -9 of the node holding the user's hub while clients on every node send: the clients
    on surviving nodes are welcomed again by a hub on a survivor, whose answers resume; what they
    sent to the dead node and it never read is answered from its inbox (plugin_failed); no two
    hubs ever accepted at once, nothing was accepted twice or out of order."""
    async with fault_cluster(3) as cl:
        a, b, c = cl.nodes
        cs = await clients_on(cl, "kim", [a, b, c])
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        kill9(a)
        await wait_for(lambda: all(x.welcomes and x.first_reply_after(x.welcomes[-1])
                                   for x in cs[1:]), cl.node_ttl + 4, "answers again on n2 and n3")
        healed = max(x.first_reply_after(x.welcomes[-1]) for x in cs[1:]) - t0
        await asyncio.sleep(0.5)
        await stop_all(cs)
        figs = check_invariants(cl.nodes, "kim", cs, "kill -9 under traffic")
        check(cs[0].closed is not None, "n1's client still open after kill -9 of n1")
        note(f"kill -9 under traffic: answers again {healed:.2f}s after the kill "
             f"(node_ttl {cl.node_ttl:g}s); {figs}")


test_fault_kill9_of_hub_node_under_traffic.timeout = 40


async def test_fault_sigstop_of_hub_node_past_node_ttl(stop_for=None):
    """SIGSTOP of the hub's node for longer than node_ttl, then SIGCONT: meanwhile the user's
    hub moves to the other node; once awake, the stopped node's hub must not accept anything
    (its place lapsed by its own clock): its client's queued requests are answered with errors,
    then the client is re-homed to the new hub."""
    async with fault_cluster(2) as cl:
        stop_for = stop_for or cl.node_ttl + 1.5
        a, b = cl.nodes
        cs = await clients_on(cl, "sid", [a, b])
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGSTOP)
        try:
            await wait_for(lambda: cs[1].welcomes and cs[1].first_reply_after(cs[1].welcomes[-1]),
                           cl.node_ttl + 4, "n2's client answered by a new hub while n1 is stopped")
            moved = cs[1].first_reply_after(cs[1].welcomes[-1]) - t0
            while time.monotonic() - t0 < stop_for:
                await asyncio.sleep(0.1)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        await wait_for(lambda: cs[0].welcomes and cs[0].first_reply_after(cs[0].welcomes[-1]),
                       cl.node_ttl + 4, "n1's client answered by the new hub after SIGCONT")
        rehomed = cs[0].first_reply_after(cs[0].welcomes[-1]) - woke
        await asyncio.sleep(0.5)
        await stop_all(cs)
        figs = check_invariants(cl.nodes, "sid", cs, "SIGSTOP past node_ttl")
        lease = cl.lease("sid")
        check(lease and lease[0] == "n2", f"lease after SIGCONT: {lease}")
        for x in cs:
            check(x.closed is None, f"{x.name} closed ({x.closed}) by a SIGSTOP of n1")
        note(f"SIGSTOP {stop_for:g}s: n2's client answered by the new hub {moved:.2f}s "
             f"after the stop; n1's client {rehomed:.2f}s after SIGCONT; {figs}")


test_fault_sigstop_of_hub_node_past_node_ttl.timeout = 40


async def test_fault_sigstop_shorter_than_the_read_timeout():
    """The same with a stop of 2.5 s: past node_ttl (2 s), but short of the reading connection's
    timeout (3 s), so a reply to its blocked read, with entries the other node meanwhile
    answered from the stopped node's inbox, waits in the socket when it wakes: it must not
    deliver those (each would be answered twice)."""
    await test_fault_sigstop_of_hub_node_past_node_ttl(stop_for=2.5)


test_fault_sigstop_shorter_than_the_read_timeout.timeout = 40


async def test_fault_sigterm_of_hub_node_under_traffic():
    """SIGTERM (drain) of the hub's node while clients on both nodes send: the other node's
    client is welcomed by a new hub at once and loses nothing unanswered; the draining node's
    client is closed 1001."""
    async with fault_cluster(2, node_ttl=5.0, lease_ttl=5.0, node={"drain_timeout": "5s"}) as cl:
        a, b = cl.nodes
        cs = await clients_on(cl, "tia", [a, b])
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: cs[1].welcomes and cs[1].first_reply_after(cs[1].welcomes[-1]),
                       3, "n2's client answered by a new hub after SIGTERM of n1")
        healed = cs[1].first_reply_after(cs[1].welcomes[-1]) - t0
        await exits_0(a, 8)
        await asyncio.sleep(0.5)
        await stop_all(cs)
        figs = check_invariants(cl.nodes, "tia", cs, "SIGTERM under traffic")
        check(cs[0].closed and cs[0].closed[0] == 1001, f"n1's client closed {cs[0].closed}, expected 1001")
        lost = cs[1].unanswered()
        check(not lost, f"drain: n2's client got no answer to {len(lost)} requests: {lost[:10]}")
        note(f"SIGTERM under traffic: n2's client answered by the new hub {healed:.2f}s after "
             f"the signal; {figs}")


test_fault_sigterm_of_hub_node_under_traffic.timeout = 40


async def test_fault_command_connection_down_while_reading_is_up():
    """The hub's node loses only its command connection for 1.2 s (its reading connection stays
    up): what it would read then could not be answered (replies and bounces to other nodes leave
    through the command connection). It must wait in the stream and be answered once the command
    connection is back: the other node's client gets an answer to every request."""
    async with fault_cluster(2, proxied=("n1",), node_ttl=3.0, lease_ttl=3.0) as cl:
        a, b = cl.nodes
        cs = await clients_on(cl, "rae", [a, b])
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        cl.proxy("n1").drop_commands(1.2)
        await asyncio.sleep(1.2)
        await wait_for(lambda: cs[1].first_reply_after(time.monotonic() - 0.2), 4,
                       "n2's client answered again")
        healed = cs[1].first_reply_after(t0 + 1.2) - t0
        await asyncio.sleep(0.5)
        await stop_all(cs)
        figs = check_invariants(cl.nodes, "rae", cs, "command connection down")
        lost = cs[1].unanswered()
        check(not lost, f"n2's client got no answer to {len(lost)} requests while n1 read without "
                        f"its command connection: {lost[:10]}")
        note(f"command connection down 1.2s: n2's client answered again {healed:.2f}s after the "
             f"drop; {figs}")


test_fault_command_connection_down_while_reading_is_up.timeout = 40


def resp(*args):
    """One command in RESP (for redis-cli --pipe)."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def test_fault_dead_inbox_sweep_is_bounded():
    """The sweep of a dead node's inbox answers at most 64 pages of 64 entries: 5,000 entries
    (one client message each, from a connection of n2) put into a killed n1's inbox before n2
    notices its death get exactly 4,096 error frames; n2 stays up and serves."""
    import subprocess
    async with fault_cluster(2) as cl:
        a, b = cl.nodes
        wa, _ = await join(a, "uma")            # the hub on n1
        wb, _ = await join(b, "uma")
        cl.socks += [wa, wb]
        conn = next(pid for pid, node in cl.conns("uma").items() if node == "n2")
        hub = cl.lease_on("uma", "n1")[3]
        kill9(a)
        cmds = []
        for i in range(5000):
            body = ('{"type":"echo_t","request_id":"f-%d"}' % i).encode()
            rid = f"f-{i}"
            # spans: type's value without its quotes, request_id's raw JSON value with them
            hdr = f"RL1 1 0 1 9 6 30 {len(rid) + 2} 0\n{len(hub)}:{hub}{len(conn)}:{conn}0:3:uma".encode()
            cmds.append(resp("XADD", "relay:inbox:n1", "*", hdr, body))
        p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(cl.redis.port), "--pipe"],
                           input=b"".join(cmds), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        check(p.returncode == 0, f"redis-cli --pipe: {p.stdout!r} {p.stderr!r}")
        got = set()
        deadline = time.monotonic() + cl.node_ttl + 6
        while time.monotonic() < deadline:
            try:
                f = await recv_json(wb, timeout=max(0.1, min(1.5, deadline - time.monotonic())))
            except TestFailure:
                if len(got) >= 4096:
                    break
                continue
            rid = (f.get("data") or {}).get("request_id") if isinstance(f, dict) else None
            if f.get("topic") == "error" and isinstance(rid, str) and rid.startswith("f-"):
                check(f["data"]["error"] == "plugin_failed", f"sweep answer {f}")
                got.add(rid)
        check(len(got) == 4096, f"{len(got)} of 5000 injected messages answered, expected the bound 4096")
        check(got == {f"f-{i}" for i in range(4096)}, "the sweep did not answer the oldest 4096")
        await echo_ok(wb, "after-sweep")
        note(f"dead inbox sweep: {len(got)} of 5000 answered (bound 64 x 64 entries)")


test_fault_dead_inbox_sweep_is_bounded.timeout = 40


async def test_fault_kill9_and_instant_restart_of_hub_node():
    """kill -9 of the hub's node and its restart under the same node id at once (a supervisor's
    restart, quicker than node_ttl): the new life overwrites the node key, so the others see the
    old incarnation gone at their next tick; what they sent it and it never read is still
    answered (its read position is kept per incarnation). Then eight more restarts: the
    positions kept are bounded (8)."""
    async with fault_cluster(2) as cl:
        a, b = cl.nodes
        cs = await clients_on(cl, "ivy", [a, b])
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        kill9(a)
        a.start()
        restarted = time.monotonic() - t0
        await wait_for(lambda: cs[1].welcomes and cs[1].first_reply_after(cs[1].welcomes[-1]),
                       cl.node_ttl + 4, "n2's client answered by a new hub")
        healed = cs[1].first_reply_after(cs[1].welcomes[-1]) - t0
        await asyncio.sleep(0.5)
        await stop_all(cs)
        figs = check_invariants(cl.nodes, "ivy", cs, "kill -9 and instant restart")
        for _ in range(8):
            kill9(a)
            a.start()
        key = "relay:inbox:n1:read"
        check(int(cl.redis.cli("HLEN", key)) == 8,
              f"{key} keeps {cl.redis.cli('HLEN', key)} positions after 10 lives of n1, expected 8")
        note(f"kill -9 and restart in {restarted:.2f}s: n2's client answered by the new hub "
             f"{healed:.2f}s after the kill; {figs}")


test_fault_kill9_and_instant_restart_of_hub_node.timeout = 40
