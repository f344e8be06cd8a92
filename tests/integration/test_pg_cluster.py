"""Process groups across the nodes of a cluster: real nodes sharing one real redis-server, the
pg_probe plugin (test_pg.py) on each. Members on different nodes get a group's sends; a hub
subscribed on one node gets what is sent on another; broadcast_local stays on its node; a node
that dies drops out of the group's node set at the next send."""
import asyncio

from harness import Config, Node, Plugin, check, expect_silence, recv_json
from test_cluster import Cluster, join, kill9, node_of_pid
from test_pg import POLICIES, ask, got

KEY = "relay:pg:6:app:pg:room.1"  # <prefix>pg:<len(scope)>:<scope>:<group>


class PgCluster(Cluster):
    def make_node(self, node_id):
        params = dict(self.params)
        params["user_security_scope"] = "app:user_scope"
        cfg = Config(plugins=[Plugin("pg_plugin", "pg_", "pg_probe.lua",
                                     modules=("json", "time", "logger", "pg"))],
                     params=params, extra_entries=POLICIES, node=dict(self.node_opts))
        return Node(cfg, args=["--node-id", node_id, "--redis", self.redis.url], name=node_id)


async def wait_until(fn, timeout, what):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        check(loop.time() < end, f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)


async def test_pg_cluster_members_on_two_nodes():
    cl = PgCluster(2).start()
    try:
        n1, n2 = cl.nodes
        alice, _ = await join(n1, "alice")
        bob, _ = await join(n2, "bob")
        carol, _ = await join(n2, "carol")
        dave, _ = await join(n2, "dave")
        for ws in (alice, bob, carol, dave):
            cl.track(ws)
        apid = (await ask(alice, "whoami"))["pid"]
        bpid = (await ask(bob, "whoami"))["pid"]
        check(node_of_pid(apid) == "n1" and node_of_pid(bpid) == "n2", f"plugins: {apid} {bpid}")
        for ws in (alice, bob):
            f = await ask(ws, "join", group="room.1")
            check(f["ok"] is True, f"join: {f}")
        nodes = await wait_until(lambda: (lambda s: s if len(s) == 2 else None)(
            [x for x in cl.redis.cli("ZRANGE", KEY, 0, -1).split("\n") if x]), 3, "both nodes in the set")
        check(sorted(node_of_pid(p) for p in nodes) == ["n1", "n2"], f"node set: {nodes}")
        # a send on n1 reaches the member on n2 (and the sender), with the sender's pid and user
        f = await ask(alice, "bcast", group="room.1", topic="chat", data={"text": "hi", "n": 2 ** 60})
        check(f["ok"] is True, f"broadcast: {f}")
        for ws in (bob, alice):
            d = await got(ws, timeout=5)
            check(d == {"topic": "chat", "from": apid, "from_user": "alice",
                        "data": {"text": "hi", "n": 2 ** 60}}, f"member got: {d}")
        await expect_silence(carol, 0.3)
        # and back, several payloads in order
        await ask(bob, "bcast", group="room.1", topic="count", n=3)
        seen = [(await got(alice, timeout=5))["data"] for _ in range(3)]
        check(seen == [1, 2, 3], f"alice got {seen}")
        for _ in range(3):
            await got(bob)
        # broadcast_local stays on its node
        f = await ask(alice, "bcast", group="room.1", topic="chat", data={"x": 1}, **{"local": True})
        check(f["ok"] is True, f"broadcast_local: {f}")
        await got(alice)
        await expect_silence(bob, 0.5)
        # dave's hub (n2) subscribes; a send from n1 reaches dave's connection as a frame
        await ask(dave, "subscribe", scope="app:pg", group="room.1")
        await asyncio.sleep(0.3)
        await ask(alice, "bcast", group="room.1", topic="chat", data={"text": "to hubs too"})
        f = await recv_json(dave, timeout=5)
        check(f == {"topic": "chat", "data": {"text": "to hubs too"}}, f"dave's frame: {f}")
        await got(alice)
        await got(bob)
        # a refused send reaches no node
        eve, _ = await join(n1, "eve")
        cl.track(eve)
        await ask(eve, "join", group="room.1")
        f = await ask(eve, "bcast", group="room.1", topic="chat", data={})
        check(f["ok"] is False and f["err"] == "permission denied", f"eve's broadcast: {f}")
        await expect_silence(bob, 0.3)
        await expect_silence(dave, 0.1)
        # the last member on n2 leaves: n2 leaves the set
        await ask(bob, "leave", group="room.1")
        await ask(dave, "unsubscribe", group="room.1")
        await wait_until(lambda: [x for x in cl.redis.cli("ZRANGE", KEY, 0, -1).split("\n") if x and
                                  node_of_pid(x) == "n2"] == [], 3, "n2 out of the set")
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


async def test_pg_cluster_dead_node_drops_out():
    """kill -9 of a node with members: its entry in the group's node set is not written again,
    and a send after RL_PG_STALE_MS (15 s) removes it; sends go on for the living meanwhile."""
    cl = PgCluster(2).start()
    try:
        n1, n2 = cl.nodes
        alice, _ = await join(n1, "alice")
        bob, _ = await join(n2, "bob")
        cl.track(alice)
        await ask(alice, "join", group="room.1")
        await ask(bob, "join", group="room.1")
        await wait_until(lambda: len([x for x in cl.redis.cli("ZRANGE", KEY, 0, -1).split("\n") if x]) == 2,
                         3, "both nodes in the set")
        kill9(n2)

        async def gone():
            await ask(alice, "bcast", group="room.1", topic="chat", data={})
            await got(alice)
            return [x for x in cl.redis.cli("ZRANGE", KEY, 0, -1).split("\n") if x and
                    node_of_pid(x) == "n2"] == []
        loop = asyncio.get_running_loop()
        end = loop.time() + 25
        while not await gone():
            check(loop.time() < end, "the dead node is still in the group's node set")
            await asyncio.sleep(1)
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


test_pg_cluster_members_on_two_nodes.timeout = 60
test_pg_cluster_dead_node_drops_out.timeout = 60
