"""Redis Sentinel: `--redis redis+sentinel://host:port/name` and a failover under traffic.

Two redis-servers (a master and its replica) and one Sentinel (redis-server --sentinel, quorum 1,
down-after 1 s) on free loopback ports; two nodes find the master through the Sentinel. The
master is killed with SIGKILL while clients send: the Sentinel promotes the replica, the nodes
find it through the Sentinel, and the cluster serves again: the established connections answer
(each client's requests get a reply or an error frame, never silence), new users are admitted,
lease epochs stay strictly increasing (fencing), and the conns hash on the new master counts
exactly the open connections.
"""
import asyncio
import os
import subprocess
import time

from harness import Config, Node, TestFailure, check, connect, free_port, recv_json, send_json, temp_dir
from test_cluster import (Cluster, HelperProcess, RedisServer, check_epochs_ordered, closed_quietly,
                          cluster_plugins, echo_ok, is_welcome, join, note, wait_for, wait_ready)

MASTER = "relaymaster"
DOWN_AFTER_MS = 1000


class Replica(RedisServer):
    def __init__(self, master_port):
        super().__init__()
        self.master_port = master_port
        self.name = f"redis-replica:{self.port}"

    def start(self, timeout=5.0):
        self._spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                     "--replicaof", "127.0.0.1", str(self.master_port)])
        return self._wait_up(lambda: "master_link_status:up" in self.cli("INFO", "replication", timeout=1),
                             timeout, "replicate from its master")


class Sentinel(HelperProcess):
    def __init__(self, master_port):
        self.port = free_port()
        self.dir = temp_dir("relay-sentinel-")
        self.name = f"redis-sentinel:{self.port}"
        self.log_path = os.path.join(self.dir, "sentinel.log")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:  # Sentinel rewrites its file: it must be its own
            f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {MASTER} 10000\n"
                    f"sentinel parallel-syncs {MASTER} 1\n")

    @property
    def url(self):
        return f"redis+sentinel://127.0.0.1:{self.port}/{MASTER}"

    def cli(self, *args, timeout=3):
        p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--raw"] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        return p.stdout.decode("utf-8", "replace").strip()

    def master_port(self):
        out = self.cli("SENTINEL", "get-master-addr-by-name", MASTER, timeout=1).split("\n")
        return int(out[1]) if len(out) == 2 and out[1].isdigit() else None

    def start(self, replica_port, timeout=10.0):
        self._spawn(["redis-server", self.conf, "--sentinel"])
        # it must know the replica before a failover can promote it
        return self._wait_up(lambda: str(replica_port) in self.cli("SENTINEL", "replicas", MASTER, timeout=1),
                             timeout, "see the replica")


class SentinelCluster(Cluster):
    """A Cluster whose nodes reach Redis through a Sentinel; self.redis is the current master."""

    def __init__(self, n, **kw):
        super().__init__(n, **kw)
        self.replica = None
        self.sentinel = None

    def make_node(self, node_id):
        cfg = Config(plugins=cluster_plugins(), params=dict(self.params), node=dict(self.node_opts))
        return Node(cfg, args=["--node-id", node_id, "--redis", self.sentinel.url], name=node_id)

    def start(self):
        self.redis.start()
        self.redis.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")  # the replica syncs at once
        self.replica = self.attach_helper(Replica(self.redis.port).start())
        self.sentinel = self.attach_helper(Sentinel(self.redis.port))
        self.sentinel.start(self.replica.port)
        self.nodes = [self.make_node(f"n{i + 1}") for i in range(self.n)]
        for nd in self.nodes:
            nd.start()
        for nd in self.nodes:
            wait_ready(nd)
        return self

    def attach_helper(self, proc):
        self.helpers = getattr(self, "helpers", []) + [proc]
        return proc

    def close(self, check_exit=False):
        try:
            super().close(check_exit=check_exit)
        finally:
            for h in getattr(self, "helpers", []):
                h.stop()


async def request(ws, i, timeout=8):
    """One echo request: 'ok' (its reply) or the error code of an error frame for it."""
    await send_json(ws, {"type": "echo_s", "request_id": f"s{i}", "n": i})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = await recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
        if not isinstance(f, dict):
            continue
        if f.get("topic") == "s" and f.get("payload", {}).get("request_id") == f"s{i}":
            return "ok"
        if f.get("topic") == "error" and f.get("data", {}).get("request_id") == f"s{i}":
            return f["data"].get("error")
    raise TestFailure(f"request s{i}: neither a reply nor an error within {timeout}s")


async def test_sentinel_failover_under_traffic():
    cl = SentinelCluster(2)
    try:
        cl.start()
        n1, n2 = cl.nodes
        a1, _ = await join(n1, "alice")
        a2, _ = await join(n2, "alice", want_count=2)
        b2, _ = await join(n2, "bob")
        cl.socks += [a1, a2, b2]
        for ws in (a1, a2, b2):
            await echo_ok(ws)
        epoch0 = cl.epoch("alice")

        # traffic from alice on both nodes while the master dies
        answers = {"ok": 0}
        stop = asyncio.Event()

        async def traffic(ws, base):
            i = base
            while not stop.is_set():
                r = await request(ws, i)
                answers[r] = answers.get(r, 0) + 1
                i += 1
                await asyncio.sleep(0.02)

        tasks = [asyncio.create_task(traffic(a1, 0)), asyncio.create_task(traffic(a2, 100000))]
        await asyncio.sleep(0.5)
        old_port = cl.redis.port
        t_kill = time.monotonic()
        cl.redis.kill()
        promoted = await wait_for(lambda: (lambda p: p if p and p != old_port else None)(cl.sentinel.master_port()),
                                  20, "the Sentinel to promote the replica")
        t_promoted = time.monotonic() - t_kill
        check(promoted == cl.replica.port, f"promoted {promoted}, expected the replica {cl.replica.port}")
        cl.redis = cl.replica  # the cluster's Redis from now on

        async def serves():
            ws = await connect(n1, user="carol", open_timeout=3)
            try:
                f = await recv_json(ws, timeout=3)
                return is_welcome(f)
            finally:
                await closed_quietly(ws)

        deadline = time.monotonic() + cl.lease_ttl + 15
        served = False
        while time.monotonic() < deadline and not served:
            try:
                served = await serves()
            except (TestFailure, OSError, asyncio.TimeoutError, Exception):  # noqa: BLE001
                served = False
            if not served:
                await asyncio.sleep(0.2)
        t_served = time.monotonic() - t_kill
        check(served, "a new user was not admitted after the failover")
        # within lease_ttl of the promotion (plus the reconnect backoff and this machine's slack)
        check(t_served <= t_promoted + cl.lease_ttl + 4,
              f"serving again {t_served:.1f} s after the kill, promoted at {t_promoted:.1f} s")
        await asyncio.sleep(1.0)  # traffic keeps going on the new master
        stop.set()
        await asyncio.gather(*tasks)
        note(f"sentinel failover: promoted after {t_promoted:.1f} s, serving after {t_served:.1f} s; "
             f"answers {answers}; logs {n1.log_path} {n2.log_path}")
        check(answers.get("ok", 0) > 10, f"too few replies: {answers}")

        # the established connections work on the new master. A connection whose hub is being
        # re-homed (the new master lacked the old hub's lease) answers "User hub unavailable,
        # try again" meanwhile, then re-welcomes: a client retries, and so does this test, once.
        for ws in (a1, a2, b2):
            try:
                await echo_ok(ws, "after")
            except TestFailure as e:
                check("try again" in str(e), f"after the failover: {e}")
                await echo_ok(ws, "after2")
        # counts exact on the new master, fencing intact
        await cl.wait_hlen("alice", 2, "alice's 2 connections counted on the new master",
                           timeout=cl.node_ttl + 4)
        await cl.wait_hlen("bob", 1, "bob's connection counted on the new master", timeout=cl.node_ttl + 4)
        check(cl.epoch("alice") >= epoch0, f"alice's epoch went back: {epoch0} -> {cl.epoch('alice')}")
        check_epochs_ordered(cl.nodes, "alice")
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


test_sentinel_failover_under_traffic.timeout = 60
