"""Cluster accounting under Redis faults: a node's Redis traffic goes through a FaultProxy
(faultproxy.py), which drops, resets, holds and late-delivers it.

Each scenario checks the invariant of DESIGN.md §5: within node_ttl + 2 s after the fault heals,
HLEN relay:{user}:conns equals the user's open connections on live nodes, and the limit admits
exactly what fits. Short TTLs keep every scenario to a few seconds.
"""
import asyncio
import contextlib
import time

import websockets
import websockets.exceptions

from faultproxy import FaultProxy
from harness import Config, Node, TestFailure, check, connect, recv_json
from test_cluster import (Cluster, closed_quietly, cluster_plugins, is_welcome, join, note,
                          wait_for)


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
        return Node(cfg, args=["--node-id", node_id, "--redis", url], name=node_id)

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
