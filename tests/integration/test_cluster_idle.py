"""Cluster under load (DESIGN.md section 5, issue 9 item 5): idle users cost no Redis work per
user (a lease lives as long as its holder's registration; only the node key is renewed), and
the work a node puts on Redis at once is bounded (redis_inflight_max), past which joins are
refused at once with 1013 and placements back off with jitter, without closing anything
established. The benchmark of the same at 100,000 users is bench/cluster_idle.py.
"""
import asyncio
import time

from harness import check
from test_cluster import note, running_cluster, wait_for
from test_cluster_faults import attempt, fault_cluster, metric


def commands_total(redis):
    """Commands Redis has executed so far (INFO stats total_commands_processed)."""
    for line in redis.cli("INFO", "stats").splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    raise AssertionError("no total_commands_processed in INFO stats")


async def idle_rate(cl, seconds):
    c0, t0 = commands_total(cl.redis), time.monotonic()
    await asyncio.sleep(seconds)
    return (commands_total(cl.redis) - c0 - 1) / (time.monotonic() - t0)


async def test_cluster_idle_users_cost_no_redis_work():
    """Redis commands per second of an idle cluster do not grow with its users: 2 users and then
    120 users (each holding its hub's lease) give about the same rate, and the leases carry no
    TTL (nothing renews them)."""
    async with running_cluster(2, node_ttl=3.0, lease_ttl=3.0) as cl:
        a, b = cl.nodes
        for i, u in enumerate(("ida0", "ida1")):
            ws, _ = await attempt_welcome((a, b)[i % 2], u)
            cl.track(ws)
        await asyncio.sleep(2.5)  # placements and their look-ups are over
        few = await idle_rate(cl, 4.0)
        for i in range(2, 120):
            ws, _ = await attempt_welcome((a, b)[i % 2], f"ida{i}")
            cl.track(ws)
        await asyncio.sleep(2.5)
        many = await idle_rate(cl, 4.0)
        note(f"idle redis commands/s: {few:.1f} with 2 users, {many:.1f} with 120 users on 2 nodes")
        check(many < few + 4, f"idle redis work grows with users: {few:.1f}/s with 2 users, "
                              f"{many:.1f}/s with 120")
        ttl = int(cl.redis.cli("PTTL", "relay:{ida7}:lease"))
        check(ttl == -1, f"a lease has a TTL ({ttl} ms): it would need renewing")
        check(cl.redis.cli("GET", "relay:{ida7}:lease").startswith(("n1|", "n2|")),
              "relay:{ida7}:lease is held by a node")
        for nd in (a, b):
            check(metric(nd, "relay_lease_checks_total") == 0,
                  f"{nd.name} checked leases in redis without a lapse")


test_cluster_idle_users_cost_no_redis_work.timeout = 60


async def attempt_welcome(node, user):
    kind, ws = await attempt(node, user)
    check(kind == "welcome", f"join of {user} on {node.name}: {kind} {ws}")
    return ws, None


async def test_cluster_inflight_bounds_refuse_and_defer():
    """Every Redis command of n1 takes 1.2 s (0.6 s each way: a slow Redis) and redis_inflight_max is 4: of 10 joins
    at once, at most 4 wait for Redis; the rest are refused at once (1013, counted); the placements
    of the admitted ones (2 at a time) are deferred and retried with backoff until all are
    welcomed. Nothing established is closed, and once Redis is fast again every join fits."""
    async with fault_cluster(1, proxied=("n1",), node_ttl=5.0, lease_ttl=5.0,
                             node={"redis_inflight_max": "4"}) as cl:
        (a,) = cl.nodes
        ws0, _ = await attempt_welcome(a, "old0")
        cl.track(ws0)
        px = cl.proxy("n1")
        px.delay(0.6)
        await asyncio.sleep(1.5)  # what was in flight before the delay is answered
        t0 = time.monotonic()
        results = await asyncio.gather(*(attempt(a, f"burst{i}") for i in range(10)))
        took = time.monotonic() - t0
        kinds = [k for k, _ in results]
        for k, ws in results:
            if k == "welcome":
                cl.track(ws)
        shed = metric(a, "relay_admissions_shed_total")
        deferred = metric(a, "relay_acquisitions_deferred_total")
        note(f"slow redis (1.2 s per command), redis_inflight_max 4: {kinds.count('welcome')} of 10 "
             f"welcomed in {took:.1f}s, {kinds.count('unavailable')} refused at once; "
             f"{shed:.0f} admissions shed, {deferred:.0f} placements deferred")
        check(kinds.count("welcome") <= 4, f"more than 4 admissions went through at once: {kinds}")
        check(kinds.count("welcome") >= 1, f"no join was admitted: {kinds}")
        check(kinds.count("unavailable") >= 6 and shed >= 6,
              f"joins past the bound were not refused at once: {kinds}, shed {shed}")
        refused = [info for k, info in results if k == "unavailable"]
        check(all(i in (1013, "unavailable") for i in refused), f"refused how: {refused}")
        check(deferred >= 1, "no placement was deferred with 4 admitted and 2 acquisitions allowed")
        check(ws0.open, f"an established connection was closed ({ws0.close_code})")
        px.delay(0)
        await wait_for(lambda: metric(a, "relay_pending_releases") == 0, 10, "releases confirmed")
        for i in range(10):
            if kinds[i] != "welcome":
                ws, _ = await attempt_welcome(a, f"burst{i}")
                cl.track(ws)
        check(ws0.open, f"an established connection was closed ({ws0.close_code})")

        # A lapse past node_ttl while the entries are lost (as if reclaimed): n1 re-asserts its 11
        # users, at most 4 at once (the rest refused -EAGAIN and sent at later ticks), until
        # every entry is back; nothing established is closed.
        users = ["old0"] + [f"burst{i}" for i in range(10)]
        px.hold()
        await asyncio.sleep(cl.node_ttl + 1.0)
        for u in users:
            cl.redis.cli("DEL", f"relay:{{{u}}}:conns")
        px.heal()
        healed = time.monotonic()
        await wait_for(lambda: all(cl.hlen(u) == 1 for u in users), cl.node_ttl + 6,
                       "every user's entry re-asserted")
        note(f"re-assertion of {len(users)} users 4 at a time: {time.monotonic() - healed:.1f}s "
             f"after the heal")
        check(ws0.open, f"an established connection was closed ({ws0.close_code})")


test_cluster_inflight_bounds_refuse_and_defer.timeout = 90
