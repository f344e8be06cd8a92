"""Cluster mode: several real nodes sharing one real redis-server (started here on a free port).

Covers cross-node routing both ways, broadcast across nodes, per-sender ordering over the Redis
stream transport, the exact cluster-wide connection limit, the conns hash, failover after kill -9
of the hub's node, SIGTERM handover, a Redis outage, lease epochs (Redis and the nodes' logs) and
one user spread over three nodes behind haproxy.

Every test starts its own redis-server and nodes (short node_ttl / lease_ttl so failover is fast).
redis-server and haproxy are registered with the harness like nodes, so run.py stops them and
prints their logs when a test fails.
"""
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import websockets
import websockets.exceptions

import harness
from harness import (Config, Node, Plugin, TestFailure, check, connect, drain_until_closed, expect_close,
                     free_port, http_get, recv_json, send_json, temp_dir, welcome)

NODE_TTL = 2.0   # seconds; node_ttl and lease_ttl of most tests
LEASE_TTL = 2.0
READY_TIMEOUT = 6.0
VERBOSE = bool(os.environ.get("RELAY_IT_VERBOSE"))


def note(msg):
    """Measurements worth seeing when RELAY_IT_VERBOSE is set (failover times, throughput)."""
    if VERBOSE:
        print(f"      note: {msg}", flush=True)

# --------------------------------------------------------------------------------------------
# Redis and haproxy processes (duck-typed like harness.Node: stop(timeout=), log_tail(), name)


class HelperProcess:
    """redis-server or haproxy: its output goes to log_path, and it is registered with the harness
    (LIVE_NODES, STARTED_NODES) from spawn until stopped. Subclasses set name, dir, log_path."""
    proc = None
    _log = None

    def _spawn(self, cmd):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.dir)
        harness.LIVE_NODES.append(self)
        harness.STARTED_NODES.append(self)

    def _wait_up(self, probe, timeout, what):
        """Polls probe() until true (it may raise OSError or SubprocessError meanwhile); returns self."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TestFailure(f"{self.name} exited with {self.proc.returncode} at start\n" + self.log_tail())
            try:
                if probe():
                    return self
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.05)
        raise TestFailure(f"{self.name} did not {what} within {timeout}s\n" + self.log_tail())

    def stop(self, sig=signal.SIGTERM, timeout=5):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()
        return 0

    def _close(self):
        if self._log:
            self._log.close()
            self._log = None
        if self in harness.LIVE_NODES:
            harness.LIVE_NODES.remove(self)

    def log_tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return f"--- {self.name}: no log"
        return f"--- {self.name} log tail ({self.log_path}):\n" + "\n".join("    " + l for l in lines[-n:])


class RedisServer(HelperProcess):
    def __init__(self, port=None, directory=None):
        self.port = port or free_port()
        self.dir = directory or temp_dir("relay-redis-")
        self.name = f"redis-server:{self.port}"
        self.log_path = os.path.join(self.dir, "redis.log")

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout=5.0):
        self._spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"])
        return self._wait_up(lambda: self.cli("PING", timeout=1) == "PONG", timeout, "answer PING")

    def cli(self, *args, timeout=3):
        p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--raw"] + [str(a) for a in args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        out = p.stdout.decode("utf-8", "replace")
        if out.endswith("\n"):
            out = out[:-1]
        return out

    def kill(self):
        """SIGKILL (no goodbye): the nodes see their connections reset."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()


class HAProxy(HelperProcess):
    def __init__(self, backends):
        self.port = free_port()
        self.dir = temp_dir("relay-haproxy-")
        self.name = f"haproxy:{self.port}"
        self.cfg_path = os.path.join(self.dir, "haproxy.cfg")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        servers = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
        with open(self.cfg_path, "w") as f:
            f.write(f"""global
    maxconn 2000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
frontend relay
    bind 127.0.0.1:{self.port}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
""")

    def start(self, timeout=5.0):
        self._spawn(["haproxy", "-db", "-f", self.cfg_path])
        return self._wait_up(lambda: http_get(self.port, "/healthz", timeout=0.5)[0] == 200, timeout,
                             "proxy /healthz")

    # a Node look-alike for harness.connect()
    def ws_url(self, user=None, query=None, path="/ws"):
        q = (["user_id=" + user] if user is not None else []) + ([query] if query else [])
        return f"ws://127.0.0.1:{self.port}{path}" + ("?" + "&".join(q) if q else "")


# --------------------------------------------------------------------------------------------
# A cluster: one redis-server and N nodes n1..nN


def cluster_plugins():
    return [
        Plugin("session_plugin", "session_", "session_rec.lua"),
        Plugin("echo_plugin", "echo_", "echo.lua"),
        Plugin("bc_plugin", "bc_", "broadcaster.lua"),
        Plugin("cl_plugin", "cl_", "cluster_probe.lua"),
    ]


class Cluster:
    def __init__(self, n=3, params=None, node=None, node_ttl=NODE_TTL, lease_ttl=LEASE_TTL):
        self.redis = RedisServer()
        self.params = {"max_connections_per_user": "10"}
        self.params.update(params or {})
        self.node_opts = {"node_ttl": f"{node_ttl:g}s", "lease_ttl": f"{lease_ttl:g}s"}
        self.node_opts.update(node or {})
        self.node_ttl, self.lease_ttl = node_ttl, lease_ttl
        self.nodes = []
        self.n = n
        self.socks = []    # client sockets, closed quietly by shut()
        self.extras = []   # other processes (haproxy): stopped by shut() after the sockets, before the nodes

    def make_node(self, node_id):
        cfg = Config(plugins=cluster_plugins(), params=dict(self.params), node=dict(self.node_opts))
        return Node(cfg, args=["--node-id", node_id, "--redis", self.redis.url], name=node_id)

    def start(self):
        self.redis.start()
        self.nodes = [self.make_node(f"n{i + 1}") for i in range(self.n)]
        for nd in self.nodes:
            nd.start()
        for nd in self.nodes:
            wait_ready(nd)
        return self

    def node(self, node_id):
        for nd in self.nodes:
            if nd.name == node_id:
                return nd
        raise TestFailure(f"no node {node_id!r} in this cluster")

    def lease(self, user):
        """(node, incarnation, epoch, hub_pid) of the user's lease, or None."""
        v = self.redis.cli("GET", f"relay:{{{user}}}:lease")
        if not v:
            return None
        parts = v.split("|")
        check(len(parts) == 4, f"lease value {v!r} is not node|incarnation|epoch|hub_pid")
        node, inc, epoch, hub = parts
        check(epoch.isdigit(), f"lease epoch {epoch!r} in {v!r}")
        return node, inc, int(epoch), hub

    def epoch(self, user):
        v = self.redis.cli("GET", f"relay:{{{user}}}:epoch")
        return int(v) if v.strip().isdigit() else 0

    def hlen(self, user):
        return int(self.redis.cli("HLEN", f"relay:{{{user}}}:conns"))

    def conns(self, user):
        out = self.redis.cli("HGETALL", f"relay:{{{user}}}:conns").split("\n")
        out = [x for x in out if x != ""]
        return dict(zip(out[0::2], out[1::2]))

    def track(self, ws):
        """Adds a client socket to the ones shut() closes; returns it."""
        self.socks.append(ws)
        return ws

    def attach(self, proc):
        """Adds a process (duck-typed stop()) for shut() to stop; returns it."""
        self.extras.append(proc)
        return proc

    def lease_on(self, user, node_id):
        """The user's lease, which must be held by node_id."""
        lease = self.lease(user)
        check(lease is not None and lease[0] == node_id, f"{user}: lease {lease}, expected one held by {node_id}")
        return lease

    async def wait_lease(self, user, pred, timeout, what):
        """Polls the user's lease until there is one and pred(lease) holds; returns it."""
        return await wait_for(lambda: (lambda l: l if l and pred(l) else None)(self.lease(user)), timeout, what)

    async def wait_hlen(self, user, n, what, timeout=3):
        """Polls until the user's conns hash counts n connections."""
        await wait_for(lambda: self.hlen(user) == n, timeout, what)

    def restart_redis(self, ready_timeout=8):
        """A new, empty redis-server on the port and in the directory of the (killed) one; then
        every node must answer /readyz 200 again within ready_timeout."""
        self.redis = RedisServer(port=self.redis.port, directory=self.redis.dir).start()
        for nd in self.nodes:
            wait_ready(nd, timeout=ready_timeout)

    async def shut(self, check_exit=False):
        """Closes the tracked sockets quietly, stops the attached processes, then close(check_exit)."""
        await closed_quietly(*self.socks)
        for proc in self.extras:
            proc.stop()
        self.close(check_exit=check_exit)

    def close(self, check_exit=False):
        """Stops every node (SIGTERM, in parallel), then Redis. With check_exit, nodes must exit 0."""
        live = [nd for nd in self.nodes if nd.alive()]
        for nd in live:
            nd.proc.send_signal(signal.SIGTERM)
        bad = []
        for nd in live:
            nd.wait_exit(harness.STOP_TIMEOUT)  # one SIGTERM only: stop() signals again if still running
            rc = nd.stop(timeout=3)
            if rc != 0:
                bad.append(f"{nd.name} exited {rc} on SIGTERM\n" + nd.log_tail())
        for nd in self.nodes:
            if nd.proc is not None and not nd.alive():
                nd.stop()
        self.redis.stop()
        if check_exit and bad:
            raise TestFailure("\n".join(bad))


@contextlib.asynccontextmanager
async def running_cluster(*args, **kw):
    """`async with running_cluster(n, ...) as cl`: a started Cluster(n, ...). On the way out the
    sockets in cl.socks are closed quietly and cl.extras stopped; after a normal exit the nodes must
    exit 0 on SIGTERM (close(check_exit=True)), after an exception the cluster is just stopped."""
    cl = Cluster(*args, **kw).start()
    try:
        yield cl
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


def wait_ready(node, timeout=READY_TIMEOUT, want=200):
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        try:
            st, _, _ = http_get(node.port, "/readyz", timeout=0.5)
            if st == want:
                return
        except OSError:
            st = "no answer"
        time.sleep(0.05)
    raise TestFailure(f"{node.name}: /readyz did not answer {want} within {timeout}s (last: {st})\n"
                      + node.log_tail())


async def wait_for(fn, timeout, what, interval=0.1):
    """Polls fn() (plain) until truthy; returns its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        await asyncio.sleep(interval)
    raise TestFailure(f"{what}: not true within {timeout}s (last value {last!r})")


async def until_frame(ws, pred, timeout, what):
    """Reads frames until pred(frame) (frame parsed from JSON); returns (frame, frames skipped)."""
    skipped = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestFailure(f"{what}: nothing matching within {timeout}s; frames seen: "
                              f"{[json.dumps(f)[:200] for f in skipped]}")
        try:
            raw = await asyncio.wait_for(ws.recv(), left)
        except asyncio.TimeoutError:
            continue
        except websockets.exceptions.ConnectionClosed:
            raise TestFailure(f"{what}: connection closed (code={ws.close_code} reason={ws.close_reason!r}); "
                              f"frames seen: {[json.dumps(f)[:200] for f in skipped]}")
        try:
            f = json.loads(raw)
        except ValueError:
            f = raw
        if pred(f):
            return f, skipped
        skipped.append(f)


def is_welcome(f):
    return isinstance(f, dict) and f.get("topic") == "welcome"


async def join(node, user, want_count=None):
    ws = await connect(node, user=user)
    d = await welcome(ws, timeout=5)
    check(d["user_id"] == user, f"welcome for {d['user_id']!r}, expected {user!r}")
    if want_count is not None:
        check(d["client_count"] == want_count,
              f"{node.name}: welcome client_count {d['client_count']}, expected {want_count}")
    return ws, d


async def where(ws, rid="w"):
    """Asks the probe plugin where it runs. While the user's hub moves the node answers
    plugin_failed ("try again"): retried, as a client would."""
    deadline = time.monotonic() + 10
    while True:
        await send_json(ws, {"type": "cl_where", "request_id": rid})
        f, _ = await until_frame(ws, lambda f: isinstance(f, dict) and f.get("request_id") == rid
                                 and (f.get("type") == "where" or f.get("topic") == "error") or
                                 (isinstance(f, dict) and f.get("topic") == "error"
                                  and f.get("data", {}).get("request_id") == rid),
                                 5, "cl_where reply")
        if f.get("type") == "where":
            return f
        err = f.get("data", {}).get("error")
        check(err == "plugin_failed", f"cl_where answered {f}")
        check(time.monotonic() < deadline, f"cl_where still failing after 10 s: {f}")
        await asyncio.sleep(0.2)


async def echo_ok(ws, tag="ping"):
    await send_json(ws, {"type": "echo_" + tag, "request_id": tag})
    f, skipped = await until_frame(ws, lambda f: isinstance(f, dict) and f.get("topic") == tag, 5,
                                   f"echo of {tag!r}")
    errs = [s for s in skipped if isinstance(s, dict) and s.get("topic") == "error"]
    check(not errs, f"errors before the echo of {tag!r}: {errs}")
    check(f.get("payload", {}).get("type") == "echo_" + tag, f"echo reply {f}")


async def session_events(ws, rid="ev"):
    await send_json(ws, {"type": "session_events", "request_id": rid})
    f, _ = await until_frame(ws, lambda f: isinstance(f, dict) and f.get("type") == "session_events", 5,
                             "session_events reply")
    return f["events"]


def node_of_pid(pid):
    return pid.split(".")[0]


async def closed_quietly(*wss):
    for ws in wss:
        try:
            await ws.close()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


async def join_each(nodes, user):
    """Joins user on each node in turn: the i-th welcome must count i connections. Returns the sockets."""
    wss = []
    for nd in nodes:
        ws, _ = await join(nd, user, want_count=len(wss) + 1)
        wss.append(ws)
    return wss


def kill9(node):
    """kill -9 of a node (no goodbye), reaped."""
    node.proc.kill()
    node.proc.wait()


async def exits_0(node, timeout=8):
    """Waits (off the event loop) for a signalled node to exit: it must exit 0 within timeout."""
    rc = await asyncio.get_running_loop().run_in_executor(None, node.wait_exit, timeout)
    check(rc == 0, f"{node.name} exited {rc} after SIGTERM\n" + node.log_tail())


async def broadcast_reaches(sender, wss, data, what):
    """bc_send of data from sender: each of wss gets a news frame with that data within 5 s."""
    await send_json(sender, {"type": "bc_send", "data": data})
    for ws in wss:
        f, _ = await until_frame(ws, lambda f: isinstance(f, dict) and f.get("topic") == "news", 5, what)
        check(f["data"] == data, f"broadcast {f}")


WIN_RE = re.compile(r"user (\S+): hub (\S+) here, lease epoch (\d+)")


def log_matches(nodes, regex, user):
    """(ts, node name, match) of each JSON log line of the nodes whose msg matches regex, the
    regex's first group being user; node by node, in log order."""
    for nd in nodes:
        for line in nd.log_text().splitlines():
            try:
                o = json.loads(line)
            except ValueError:
                continue
            m = regex.search(str(o.get("msg", "")))
            if m and m.group(1) == user:
                yield o.get("ts", ""), nd.name, m


def hub_wins(nodes, user):
    """[(ts, node, hub, epoch)] of every 'hub H here, lease epoch E' log line for user, by time."""
    wins = [(ts, name, m.group(2), int(m.group(3))) for ts, name, m in log_matches(nodes, WIN_RE, user)]
    wins.sort(key=lambda w: (w[0], w[3]))
    return wins


def describe_wins(wins):
    return "\n".join(f"  {w[0]} {w[1]} hub {w[2]} epoch {w[3]}" for w in wins)


def check_epochs_ordered(nodes, user, expect_wins=None, final_epoch=None):
    wins = hub_wins(nodes, user)
    desc = describe_wins(wins)
    epochs = [w[3] for w in wins]
    check(len(set(epochs)) == len(epochs), f"two hubs of {user} won the same lease epoch:\n{desc}")
    check(all(a < b for a, b in zip(epochs, epochs[1:])),
          f"lease epochs of {user} not strictly increasing over time:\n{desc}")
    if expect_wins is not None:
        check(len(wins) == expect_wins, f"{len(wins)} hub wins logged for {user}, expected {expect_wins}:\n{desc}")
    if final_epoch is not None and wins:
        check(epochs[-1] == final_epoch, f"last logged epoch {epochs[-1]} != relay:{{{user}}}:epoch "
                                         f"{final_epoch}:\n{desc}")
    return wins


# --------------------------------------------------------------------------------------------
# Routing


async def test_cluster_cross_node_routing_both_ways():
    async with running_cluster(2) as cl:
        a, b = cl.nodes
        # alice's hub on n1 (first join there), bob's on n2; each also has a connection on the other node
        for user, home, away in (("alice", a, b), ("bob", b, a)):
            h, dh = await join(home, user, want_count=1)
            cl.track(h)
            lease = cl.lease_on(user, home.name)
            r, dr = await join(away, user, want_count=2)
            cl.track(r)
            check(dr["plugins"].keys() == dh["plugins"].keys(),
                  f"remote welcome plugins {dr['plugins']} vs {dh['plugins']}")
            # remote connection -> hub -> plugin -> back to the remote connection
            w = await where(r, "w-" + user)
            check(w["hub"] == lease[3], f"{user}: plugin's user_hub_pid {w['hub']} vs lease hub {lease[3]}")
            check(node_of_pid(w["hub"]) == home.name and node_of_pid(w["pid"]) == home.name,
                  f"{user}: hub/plugin not on {home.name}: {w}")
            check(node_of_pid(w["conn"]) == away.name, f"{user}: conn_pid {w['conn']} not on {away.name}")
            check(w["user_id"] == user, f"plugin user_id {w['user_id']}")
            await echo_ok(r, "hello")
            await echo_ok(h, "local")
            # an error from the remote hub comes back with the request id
            await send_json(r, {"type": "nope_x", "request_id": "e1"})
            f = await recv_json(r, timeout=5)
            check(f.get("topic") == "error" and f["data"].get("error") == "plugin_not_found"
                  and f["data"].get("request_id") == "e1", f"remote unknown prefix: {f}")
            # broadcast via the hub reaches both nodes' connections, from either side
            for sender, tag in ((r, "from-remote"), (h, "from-home")):
                await send_json(sender, {"type": "bc_send", "data": {"tag": tag, "user": user}})
                for ws in (h, r):
                    f = await recv_json(ws, timeout=5)
                    check(f == {"topic": "news", "data": {"tag": tag, "user": user}},
                          f"{user}: broadcast {tag} got {f}")
            # the user's messages stay the user's: the two users' hubs differ
        la, lb = cl.lease("alice"), cl.lease("bob")
        check(la[3] != lb[3], "alice and bob share a hub")


async def test_cluster_remote_ordering_10000():
    """10,000 pipelined messages from a connection on another node than the hub: each reaches the
    plugin once, in order, and each reply comes back once, in order."""
    N = 10000
    # queues large enough that nothing is legitimately refused (hub inbox 5 * 4000)
    async with running_cluster(2, params={"max_connections_per_user": "5", "queue_multiplier": "4000"}) as cl:
        h, r = await join_each(cl.nodes, "alice")
        cl.socks += [h, r]
        cl.lease_on("alice", "n1")

        got, errors = [], []

        async def reader():
            while len(got) < N:
                raw = await r.recv()
                f = json.loads(raw)
                if isinstance(f, dict) and f.get("t") == "n":
                    got.append((f["n"], f["k"]))
                else:
                    errors.append(f)
                    if len(errors) > 20:
                        return

        rt = asyncio.ensure_future(reader())
        t0 = time.monotonic()
        for i in range(1, N + 1):
            await r.send('{"type":"cl_n","n":%d}' % i)
        try:
            await asyncio.wait_for(asyncio.shield(rt), 60)
        except asyncio.TimeoutError:
            rt.cancel()
        dt = time.monotonic() - t0
        note(f"{len(got)} sequenced replies over the stream transport in {dt:.2f}s")
        check(not errors, f"{len(errors)} unexpected frames (first: {errors[:3]}); {len(got)} replies")
        check(len(got) == N, f"{len(got)} of {N} replies within 60 s (last {got[-1:]})")
        bad = [(i + 1, g) for i, g in enumerate(got) if g != (i + 1, i + 1)]
        check(not bad, f"{len(bad)} replies out of order or duplicated; first: {bad[:5]}")

        # and the plugin saw them in order (second run without replies, then a report)
        for i in range(1, N + 1):
            await r.send('{"type":"cl_rec","n":%d}' % i)
        await send_json(r, {"type": "cl_report", "request_id": "rep"})
        f, skipped = await until_frame(r, lambda f: isinstance(f, dict) and f.get("type") == "report", 60,
                                       "cl_report")
        check(not skipped, f"frames before the report: {skipped[:3]}")
        check(f["count"] == N and f["ooo"] == 0 and f["first"] == 1 and f["last"] == N,
              f"plugin saw {f} for {N} in-order messages")
        check(dt < 60, f"took {dt:.1f}s")


test_cluster_remote_ordering_10000.timeout = 150


async def test_cluster_remote_overload_is_answered():
    """With the default (small) hub inbox, a flood from a remote connection may be refused, but
    every message is answered: a reply or an `overloaded` error, never silence."""
    N = 3000
    async with running_cluster(2, params={"max_connections_per_user": "3"}) as cl:  # hub inbox 3 * 100
        a, b = cl.nodes
        h, r = await join_each(cl.nodes, "alice")
        cl.socks += [h, r]
        replies, overloaded, other = set(), set(), []
        for i in range(1, N + 1):
            await r.send('{"type":"cl_n","n":%d,"request_id":%d}' % (i, i))
        # read until everything is answered or nothing came for 3 s
        while len(replies) + len(overloaded) < N:
            try:
                raw = await asyncio.wait_for(r.recv(), 3)
            except asyncio.TimeoutError:
                break
            f = json.loads(raw)
            if isinstance(f, dict) and f.get("t") == "n":
                replies.add(f["n"])
            elif isinstance(f, dict) and f.get("topic") == "error" and f["data"].get("error") == "overloaded":
                overloaded.add(f["data"].get("request_id"))
            else:
                other.append(f)
        answered = len(replies) + len(overloaded)
        metrics = b.metrics() + a.metrics()
        dropped = harness.metric_sum(metrics, "relay_messages_dropped_total")
        check(answered == N, f"{N - answered} of {N} messages from a remote connection got no answer "
                             f"({len(replies)} replies, {len(overloaded)} overloaded, {len(other)} other: "
                             f"{other[:3]}; dropped counter on both nodes: {dropped})")


test_cluster_remote_overload_is_answered.timeout = 60


# --------------------------------------------------------------------------------------------
# Admission


async def _attempt(node, user):
    """Connects and reads the first frame: ('welcome', ws) or ('refused', code) or ('other', info)."""
    try:
        ws = await connect(node, user=user, open_timeout=10)
    except Exception as e:  # noqa: BLE001
        return "other", f"connect failed: {e!r}"
    try:
        f = await recv_json(ws, timeout=10)
    except TestFailure as e:
        return "other", str(e)
    if is_welcome(f):
        return "welcome", (ws, f["data"])
    if isinstance(f, dict) and f.get("topic") == "error" and f["data"].get("error") == "max_connections_reached":
        try:
            await drain_until_closed(ws, timeout=5)
        except TestFailure as e:
            return "other", f"refused but not closed: {e}"
        if ws.close_code != 1008:
            return "other", f"refused with close {ws.close_code} {ws.close_reason!r}"
        return "refused", ws.close_code
    await ws.close()
    return "other", f"first frame {json.dumps(f)[:200]}"


async def test_cluster_exact_limit_50_connects_3_nodes():
    async with running_cluster(3, params={"max_connections_per_user": "5"}) as cl:
        welcomed = cl.socks   # the admitted connections: closed on the way out
        res = await asyncio.gather(*[_attempt(cl.nodes[i % 3], "carol") for i in range(50)])
        welcomed += [v[0] for k, v in res if k == "welcome"]
        refused = [v for k, v in res if k == "refused"]
        other = [v for k, v in res if k == "other"]
        check(not other, f"{len(other)} attempts neither welcomed nor refused: {other[:3]}")
        check(len(welcomed) == 5 and len(refused) == 45,
              f"max_connections_per_user 5 over 3 nodes: {len(welcomed)} welcomed, {len(refused)} refused")
        counts = [v[1]["client_count"] for k, v in res if k == "welcome"]
        check(max(counts) <= 5, f"welcome client_count over the limit: {counts}")
        check(cl.hlen("carol") == 5, f"HLEN conns {cl.hlen('carol')} with 5 open connections")
        # the 5 admitted ones work
        for i, ws in enumerate(welcomed):
            await echo_ok(ws, f"ok{i}")
        # one leaves: exactly one more is admitted, on any node
        await welcomed.pop().close()
        await cl.wait_hlen("carol", 4, "HLEN back to 4 after a close")
        res = await asyncio.gather(*[_attempt(cl.nodes[i % 3], "carol") for i in range(6)])
        more = [v[0] for k, v in res if k == "welcome"]
        welcomed += more
        check(len(more) == 1 and sum(1 for k, _ in res if k == "refused") == 5,
              f"after one close, 6 attempts: {[k for k, _ in res]}")
        check(cl.hlen("carol") == 5, f"HLEN {cl.hlen('carol')}")
        await closed_quietly(*welcomed)
        await cl.wait_hlen("carol", 0, "HLEN 0 after every connection closed")


test_cluster_exact_limit_50_connects_3_nodes.timeout = 60


async def test_cluster_conns_hash_tracks_open_connections():
    async with running_cluster(2, params={"max_connections_per_user": "10"}) as cl:
        a, b = cl.nodes
        for nd in (a, b, a, b):
            ws, _ = await join(nd, "dave")
            cl.track(ws)
        check(cl.hlen("dave") == 4, f"HLEN {cl.hlen('dave')} with 4 open connections")
        conns = cl.conns("dave")
        for pid, node in conns.items():
            check(node_of_pid(pid) == node and node in ("n1", "n2"), f"conns entry {pid} -> {node}")
        check(sorted(conns.values()) == ["n1", "n1", "n2", "n2"], f"conns {conns}")
        # closes on each node are reflected
        await cl.socks.pop().close()           # on n2
        await cl.wait_hlen("dave", 3, "HLEN 3 after a close on n2")
        await cl.socks.pop().close()           # on n1
        await cl.wait_hlen("dave", 2, "HLEN 2 after a close on n1")
        # a client that vanishes without a close frame is removed too
        raw = harness.RawWS(b.port, path="/ws?user_id=dave")
        check(raw.status == 101, f"raw upgrade {raw.status}")
        raw.recv_message()  # welcome
        await cl.wait_hlen("dave", 3, "HLEN 3 with the raw client")
        raw.close()
        await cl.wait_hlen("dave", 2, "HLEN 2 after the raw client vanished", timeout=5)
        await closed_quietly(*cl.socks)
        await cl.wait_hlen("dave", 0, "HLEN 0 after every close")


# --------------------------------------------------------------------------------------------
# Failover, handover, Redis outage


async def test_cluster_failover_kill9_of_hub_node():
    async with running_cluster(3) as cl:
        a, b, c = cl.nodes
        wa, wb, wc = await join_each(cl.nodes, "alice")
        cl.socks += [wb, wc]
        old = cl.lease_on("alice", "n1")
        check(await session_events(wb) == ["resume"], "session plugin did not get resume at first join")

        t0 = time.monotonic()
        kill9(a)                             # the hub's node
        limit = cl.node_ttl + 3.0
        times, counts = [], []
        for ws in (wb, wc):
            f, skipped = await until_frame(ws, is_welcome, limit - (time.monotonic() - t0),
                                           "new welcome after kill -9 of the hub's node")
            times.append(time.monotonic() - t0)
            counts.append(f["data"]["client_count"])
            check(f["data"]["user_id"] == "alice", f"welcome {f}")
        note(f"kill -9: remote connections re-welcomed after {[round(t, 2) for t in times]} s")
        check(max(times) <= cl.node_ttl + 2.5,
              f"re-welcomed after {max(times):.2f}s (node_ttl {cl.node_ttl}s)")
        # the new hub lives on a surviving node, under a newer epoch, and both connections use it
        new = await cl.wait_lease("alice", lambda l: l[0] in ("n2", "n3"), 2, "lease on a surviving node")
        check(new[2] > old[2], f"epoch {old[2]} -> {new[2]}")
        check(cl.epoch("alice") == new[2], f"epoch key {cl.epoch('alice')} vs lease {new}")
        wwb, wwc = await where(wb, "b"), await where(wc, "c")
        check(wwb["hub"] == wwc["hub"] == new[3], f"hubs after failover: {wwb['hub']} {wwc['hub']} lease {new}")
        await echo_ok(wb, "after-b")
        await echo_ok(wc, "after-c")
        await broadcast_reaches(wb, (wb, wc), "back", "broadcast after failover")
        check(max(counts) == 2, f"welcome client_count after failover: {counts}, expected the last to be 2")
        check("resume" in await session_events(wb), "new hub's session plugin did not get resume")
        # the dead node's connection no longer counts once someone joins (admission prunes it)
        wd, d = await join(c, "alice")
        cl.track(wd)
        check(d["client_count"] == 3, f"client_count {d['client_count']} with 3 live connections")
        check(cl.hlen("alice") == 3, f"HLEN {cl.hlen('alice')} with 3 live connections")
        check_epochs_ordered(cl.nodes, "alice", expect_wins=2, final_epoch=cl.epoch("alice"))


test_cluster_failover_kill9_of_hub_node.timeout = 45


async def test_cluster_sigterm_hands_over_at_once():
    # long TTLs: a handover that waited for expiry instead of the release would be seen
    async with running_cluster(2, node_ttl=5.0, lease_ttl=5.0, node={"drain_timeout": "5s"}) as cl:
        a, b = cl.nodes
        wa, wb = await join_each(cl.nodes, "alice")
        wbob, _ = await join(a, "bob", want_count=1)
        cl.socks += [wa, wb, wbob]
        old = cl.lease_on("alice", "n1")

        t0 = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        f, skipped = await until_frame(wb, is_welcome, 4, "new welcome on n2 after SIGTERM of n1")
        dt = time.monotonic() - t0
        note(f"SIGTERM: remote connection re-welcomed after {dt:.2f}s")
        check(dt < 2.0, f"remote connection re-welcomed {dt:.2f}s after SIGTERM (node_ttl 5 s): "
                        "the lease was not released at once")
        check(f["data"]["client_count"] == 1, f"welcome after handover {f}")
        for ws in (wa, wbob):   # n1's own clients
            await expect_close(ws, 1001, timeout=6)
        await exits_0(a, 8)
        a.stop()
        new = cl.lease("alice")
        check(new and new[0] == "n2" and new[2] > old[2], f"lease {old} -> {new}")
        w = await where(wb)
        check(w["hub"] == new[3] and node_of_pid(w["pid"]) == "n2", f"after handover: {w}, lease {new}")
        await echo_ok(wb, "after")
        check(await session_events(wb) == ["resume"], "new hub's session plugin: no resume")
        # n1 left: its node key is gone and its leases too
        check(cl.redis.cli("EXISTS", "relay:node:n1") == "0", "relay:node:n1 still there after exit")
        check(cl.lease("bob") is None, f"bob's lease survived n1's exit: {cl.lease('bob')}")
        check(cl.hlen("alice") == 1, f"HLEN {cl.hlen('alice')} with one connection left")
        check_epochs_ordered(cl.nodes, "alice", expect_wins=2, final_epoch=cl.epoch("alice"))


test_cluster_sigterm_hands_over_at_once.timeout = 45


async def _refused_while_not_ready(node, user):
    """A new WebSocket is refused: HTTP 503 (or another non-101), or upgraded then closed 1013."""
    try:
        ws = await connect(node, user=user, open_timeout=3)
    except websockets.exceptions.InvalidStatusCode as e:
        check(e.status_code >= 500, f"{node.name}: upgrade refused with {e.status_code}")
        return
    frames = await drain_until_closed(ws, timeout=5)
    check(not any('"welcome"' in str(f) for f in frames), f"{node.name}: welcome while Redis is down: {frames}")
    check(ws.close_code == 1013, f"{node.name}: closed {ws.close_code} {ws.close_reason!r} while Redis is down, "
                                 "expected 1013")


async def test_cluster_redis_outage_and_restart():
    async with running_cluster(2) as cl:
        a, b = cl.nodes
        wa, wb = await join_each(cl.nodes, "alice")
        cl.socks += [wa, wb]
        t0 = time.monotonic()
        cl.redis.kill()
        for nd in (a, b):
            wait_ready(nd, timeout=cl.node_ttl + 1.5, want=503)
        for nd in (a, b):
            await _refused_while_not_ready(nd, "newbie")
        while time.monotonic() - t0 < 6.0:
            await asyncio.sleep(0.2)
        for nd in (a, b):
            check(nd.alive(), f"{nd.name} died while Redis was down (rc {nd.proc.poll()})\n" + nd.log_tail())
            st, _, _ = http_get(nd.port, "/healthz")
            check(st == 200, f"{nd.name}: /healthz {st} while Redis is down")
            st, _, _ = http_get(nd.port, "/readyz")
            check(st == 503, f"{nd.name}: /readyz {st} while Redis is down")
        await _refused_while_not_ready(a, "newbie2")

        cl.restart_redis(ready_timeout=8)
        # new connections are served, messages route (also across nodes)
        we, _ = await join(a, "erin", want_count=1)
        cl.track(we)
        await echo_ok(we, "erin")
        we2, _ = await join(b, "erin", want_count=2)
        cl.track(we2)
        await echo_ok(we2, "erin-remote")
        w1, w2 = await where(we), await where(we2)
        check(w1["hub"] == w2["hub"], f"erin's connections on two hubs: {w1['hub']} {w2['hub']}")

        # the connections opened before the outage stayed open and work again (new welcome, echo)
        for ws, name in ((wa, "n1"), (wb, "n2")):
            check(ws.open, f"alice's connection on {name} was closed ({ws.close_code}) by the outage")
            await until_frame(ws, is_welcome, 8, f"alice on {name}: new welcome after Redis came back")
        for ws, name in ((wa, "n1"), (wb, "n2")):
            await echo_ok(ws, "alice-" + name)
        wwa, wwb = await where(wa, "a"), await where(wb, "b")
        check(wwa["hub"] == wwb["hub"], f"alice's connections on two hubs after the outage: {wwa} {wwb}")
        # and they count again toward the cluster-wide limit (Redis lost its data)
        await cl.wait_hlen("alice", 2, "HLEN of alice's conns == her 2 open connections after Redis restarted empty")
        # alice's hub moved (or was re-created) after the outage: a new lease, a new epoch, even
        # though Redis came back empty (epochs are fencing tokens: never reused)
        check_epochs_ordered([a, b], "alice")


test_cluster_redis_outage_and_restart.timeout = 60


async def test_cluster_epochs_never_overlap_across_takeovers():
    """kill -9 of the hub's node, then SIGTERM of the next one: the epoch key increases at each
    takeover, and the nodes' logs show distinct, strictly increasing epochs over time."""
    async with running_cluster(3) as cl:
        named = []   # (node name, socket)
        for nd in cl.nodes:
            ws, _ = await join(nd, "alice")
            named.append((nd.name, cl.track(ws)))
        e1 = cl.epoch("alice")
        l1 = cl.lease("alice")
        check(l1[0] == "n1" and e1 == l1[2] and e1 >= 1, f"lease {l1}, epoch {e1}")

        kill9(cl.node("n1"))
        for name, ws in named[1:]:
            await until_frame(ws, is_welcome, cl.node_ttl + 3, f"welcome on {name} after kill -9 of n1")
        l2 = await cl.wait_lease("alice", lambda l: l[0] != "n1", 2, "lease moved off n1")
        e2 = cl.epoch("alice")
        check(e2 > e1 and l2[2] == e2, f"after kill -9: epoch {e1} -> {e2}, lease {l2}")

        holder = l2[0]
        survivor = "n3" if holder == "n2" else "n2"
        sws = dict(named)[survivor]
        cl.node(holder).proc.send_signal(signal.SIGTERM)
        await until_frame(sws, is_welcome, 3, f"welcome on {survivor} after SIGTERM of {holder}")
        await exits_0(cl.node(holder), 8)
        l3 = cl.lease("alice")
        e3 = cl.epoch("alice")
        check(l3 and l3[0] == survivor and e3 > e2 and l3[2] == e3, f"after SIGTERM: epoch {e2} -> {e3}, lease {l3}")
        await echo_ok(sws, "last")
        wins = check_epochs_ordered(cl.nodes, "alice", expect_wins=3, final_epoch=e3)
        note("hub wins: " + ", ".join(f"{w[1]}@{w[3]}" for w in wins))


test_cluster_epochs_never_overlap_across_takeovers.timeout = 45


STOP_RE = re.compile(r"user (\S+): lease of hub (\S+) (lost|expired)")


def hub_stops(nodes, user):
    """{hub_pid: ts} of the first 'lease of hub H lost|expired' log line per hub of user."""
    out = {}
    for ts, _, m in log_matches(nodes, STOP_RE, user):
        out.setdefault(m.group(2), ts)
    return out


async def test_cluster_short_redis_restart_never_two_hubs():
    """Redis restarts empty after a blip shorter than lease_ttl. The hub of before still believes
    in its lease until it fails to renew it, so no other node may win a lease for the user (and
    no epoch may be reused) before that hub has stopped."""
    async with running_cluster(2, node_ttl=4.0, lease_ttl=4.0) as cl:
        a, b = cl.nodes
        wa, wb = await join_each(cl.nodes, "alice")
        cl.socks += [wa, wb]
        cl.lease_on("alice", "n1")
        cl.redis.kill()
        await asyncio.sleep(0.3)
        cl.restart_redis(ready_timeout=8)
        # both connections end up on one hub again and work
        deadline = time.monotonic() + 10
        while True:
            wwa, wwb = await where(wa, "a"), await where(wb, "b")
            if wwa["hub"] == wwb["hub"]:
                break
            check(time.monotonic() < deadline, f"alice's connections on two hubs 10 s after the blip: {wwa} {wwb}")
            await asyncio.sleep(0.3)
        await echo_ok(wa, "a")
        await echo_ok(wb, "b")
        wins = hub_wins([a, b], "alice")
        stops = hub_stops([a, b], "alice")
        desc = describe_wins(wins) + "\n  stops: " + json.dumps(stops)
        for prev, nxt in zip(wins, wins[1:]):
            end = stops.get(prev[2])
            check(end is not None and end <= nxt[0],
                  f"hub {nxt[2]} won alice's lease at {nxt[0]} while hub {prev[2]} had not stopped "
                  f"(stopped at {end}): two hubs accepted messages at once\n{desc}")
        check_epochs_ordered([a, b], "alice")


test_cluster_short_redis_restart_never_two_hubs.timeout = 45


async def test_cluster_idle_hub_collected_and_lease_released():
    async with running_cluster(2, params={"user_hub_inactivity_timeout": "1s"}) as cl:
        a, b = cl.nodes
        wa, wb = await join_each(cl.nodes, "gina")
        first = cl.lease_on("gina", "n1")
        # the hub hash for people: created_at and last_active in wall-clock ms, as documented
        now_ms = time.time() * 1000
        hub = {}
        for _ in range(50):
            f = cl.redis.cli("HGETALL", "relay:{gina}:hub").split("\n")
            hub = dict(zip(f[0::2], f[1::2]))
            if "created_at" in hub and "last_active" in hub:
                break
            await asyncio.sleep(0.05)
        for k in ("created_at", "last_active"):
            check(k in hub and abs(int(hub[k]) - now_ms) < 10000, f"relay:{{gina}}:hub {k}: {hub}")
        await wa.close()
        await wb.close()
        await cl.wait_hlen("gina", 0, "HLEN 0 after both closed")
        # collected after the inactivity timeout (checked every 0.4 s): lease and hub hash released
        await wait_for(lambda: cl.lease("gina") is None, 4, "gina's lease released after the idle timeout")
        check(cl.redis.cli("EXISTS", "relay:{gina}:hub") == "0", "relay:{gina}:hub left after collection")
        # a later join gets a fresh hub where it lands, under a newer epoch
        w2, d = await join(b, "gina", want_count=1)
        cl.track(w2)
        second = cl.lease("gina")
        check(second and second[0] == "n2" and second[2] > first[2], f"lease {first} -> {second}")
        await echo_ok(w2, "again")


async def test_cluster_non_hub_node_leaving_frees_its_connections():
    """SIGTERM, then kill -9, of nodes that only hold connections: the hub forgets them and the
    conns hash no longer counts them."""
    async with running_cluster(3, params={"max_connections_per_user": "3"}) as cl:
        a, b, c = cl.nodes
        wa, wb, wc = await join_each(cl.nodes, "hank")
        cl.socks += [wa, wb, wc]
        b.proc.send_signal(signal.SIGTERM)
        await expect_close(wb, 1001, timeout=6)   # n2's client
        await exits_0(b, 8)
        b.stop()
        await cl.wait_hlen("hank", 2, "HLEN 2 after n2 (one connection) exited")
        w1, d = await join(a, "hank")        # at the limit (3) again: n2's slot must be free
        cl.track(w1)
        check(d["client_count"] == 3, f"client_count {d['client_count']} after n2 left, expected 3")
        kill9(c)
        await asyncio.sleep(cl.node_ttl + 1.5)  # n3's key expires; the hub hears node.down
        w2, d = await join(a, "hank")        # admission prunes n3's dead entry
        cl.track(w2)
        check(d["client_count"] == 3, f"client_count {d['client_count']} after n3 died, expected 3")
        check(cl.hlen("hank") == 3, f"HLEN {cl.hlen('hank')} with 3 live connections")


test_cluster_non_hub_node_leaving_frees_its_connections.timeout = 45


# --------------------------------------------------------------------------------------------
# Behind haproxy


async def test_cluster_haproxy_one_hub_per_user():
    check(shutil.which("haproxy") is not None, "haproxy is not installed")
    async with running_cluster(3) as cl:
        hp = cl.attach(HAProxy([nd.port for nd in cl.nodes]))   # stopped after the sockets, before the nodes
        hp.start()
        for i in range(6):
            ws = await connect(hp, user="frank")
            d = await welcome(ws, timeout=5)
            cl.track(ws)
            check(d["client_count"] == i + 1, f"connection {i + 1} through haproxy: client_count {d['client_count']}")
        ws_where = [await where(ws, f"f{i}") for i, ws in enumerate(cl.socks)]
        hubs = {w["hub"] for w in ws_where}
        nodes = {node_of_pid(w["conn"]) for w in ws_where}
        check(len(hubs) == 1, f"frank's connections see {len(hubs)} hubs: {hubs}")
        check(len(nodes) == 3, f"haproxy roundrobin spread frank over {sorted(nodes)}, expected 3 nodes")
        lease = cl.lease("frank")
        check(lease and lease[3] in hubs, f"lease {lease} vs hub {hubs}")
        check(cl.hlen("frank") == 6, f"HLEN {cl.hlen('frank')}")
        await broadcast_reaches(cl.socks[-1], cl.socks, "all", "broadcast through haproxy")
