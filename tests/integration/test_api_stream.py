"""The server API through Redis (relay.node api: stream: true): a real redis-server, real nodes,
real WebSocket clients, entries written with redis-cli as a person would.

Covers: an entry reaches a user whose hub is on another node; with two readers every entry is
run once (one result each, one frame each); bad entries (bad JSON, unknown op, unknown user,
missing op, unknown field, a body over max_body) land in the dead-letter stream with their error
and the node keeps running; results readable with HGET and XRANGE and expiring; an entry a dead
consumer held is claimed after stream_claim_after, and one whose result exists is only acked;
the streams stay bounded by stream_maxlen; api.stream needs redis; off unless configured.
"""
import asyncio
import json
import subprocess
import time

import harness
from harness import Node, check, connect_welcomed, expect_silence, recv_json, run_check
from test_api import ENV, api_config
from test_cluster import RedisServer, wait_ready

CLAIM = 6  # stream_claim_after in the tests (its minimum), seconds


def rj(redis, *args, stdin=None):
    """redis-cli --json: the reply as Python values."""
    p = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(redis.port), "--json"] +
                       [str(a) for a in args], input=stdin, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=5, text=True)
    out = p.stdout.strip()
    if stdin is not None:
        return [json.loads(line) for line in out.splitlines() if line]
    return json.loads(out) if out else None


def xadd(redis, *fields):
    return rj(redis, "XADD", "relay:api", "*", *fields)


def stream_node(redis, node_id, stream=True, api=None):
    a = {"stream": stream, "stream_claim_after": f"{CLAIM}s"}
    a.update(api or {})
    cfg = api_config(api=a, node={"node_ttl": "2s", "lease_ttl": "2s"},
                     params={"max_connections_per_user": "10"})
    return Node(cfg, env=ENV, args=["--node-id", node_id, "--redis", redis.url], name=node_id), cfg


def wait_result(redis, entry_id, timeout=8.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = rj(redis, "HGETALL", f"relay:api:result:{entry_id}")
        if h:
            return h
        time.sleep(0.05)
    raise harness.TestFailure(f"no result for {entry_id} within {timeout}s")


def fields(flat):
    return dict(zip(flat[::2], flat[1::2]))


def pending(redis):
    return rj(redis, "XPENDING", "relay:api", "relay")[0]


async def test_api_stream_reaches_other_node():
    """Only n2 reads the stream; alice's hub is on n1: the entry's message crosses nodes."""
    redis = RedisServer().start()
    n1, _ = stream_node(redis, "n1", stream=False)
    n2, _ = stream_node(redis, "n2")
    with n1, n2:
        wait_ready(n1)
        wait_ready(n2)
        a, _ = await connect_welcomed(n1, "alice")
        eid = xadd(redis, "op", "message", "user", "alice",
                   "body", '{"topic":"order.shipped","data":{"id":9007199254740993}}')
        f = await harness.recv_raw(a, timeout=5)
        check(f == '{"topic":"order.shipped","data":{"id":9007199254740993}}', f"frame {f!r}")
        h = wait_result(redis, eid)
        check(h["status"] == "200" and h["node"] == "n2" and h["op"] == "message", f"result {h}")
        check(json.loads(h["body"]) == {"target": "connections", "delivered": 1}, f"{h}")
        ttl = rj(redis, "PTTL", f"relay:api:result:{eid}")
        check(0 < ttl <= 3600 * 1000, f"result hash ttl {ttl}")
        res = rj(redis, "XRANGE", "relay:api:results", "-", "+")
        check([fields(e[1])["id"] for e in res] == [eid], f"results stream {res}")
        check(fields(res[0][1])["status"] == "200", f"{res}")
        # the user op: the same answer as GET /api/v1/users/alice
        eid = xadd(redis, "op", "user", "user", "alice")
        j = json.loads(wait_result(redis, eid)["body"])
        check(j["online"] and j["hub"]["node"] == "n1" and j["connections"] == {"n1": 1}, f"{j}")
        # to alice's hub (a plugin) and a disconnect, through the stream
        eid = xadd(redis, "op", "disconnect", "user", "alice", "body", '{"code":4001,"reason":"bye"}')
        await harness.expect_close(a, 4001, "bye", timeout=5)
        check(json.loads(wait_result(redis, eid)["body"]) == {"disconnected": 1}, "disconnect")
        check(pending(redis) == 0, "entries left pending")
        # n1 reads nothing: it is no consumer of the group
        cons = rj(redis, "XINFO", "CONSUMERS", "relay:api", "relay")
        names = sorted(fields(c)["name"] if isinstance(c, list) else c["name"] for c in cons)
        check(names == ["n2"], f"consumers {cons}")
    redis.stop()
test_api_stream_reaches_other_node.timeout = 60


async def test_api_stream_exactly_once_two_nodes():
    redis = RedisServer().start()
    n1, _ = stream_node(redis, "n1")
    n2, _ = stream_node(redis, "n2")
    with n1, n2:
        wait_ready(n1)
        wait_ready(n2)
        a, _ = await connect_welcomed(n1, "alice")
        b, _ = await connect_welcomed(n2, "alice")
        # 60 entries in bursts, with a broadcast among them
        script = "".join(f"XADD relay:api * op message user alice body '{{\"topic\":\"t\",\"data\":{i}}}'\n"
                         for i in range(60))
        ids = rj(redis, stdin=script)
        check(len(ids) == 60 and len(set(ids)) == 60, f"xadd ids {ids[:3]}")
        for ws in (a, b):
            got = []
            while len(got) < 60:
                f = await recv_json(ws, timeout=8)
                check(f.get("topic") == "t", f"frame {f}")
                got.append(f["data"])
            check(sorted(got) == list(range(60)), f"each message once per connection: {sorted(got)}")
            await expect_silence(ws, 0.5)
        nodes = {}
        for eid in ids:
            h = wait_result(redis, eid)
            check(h["status"] == "200" and json.loads(h["body"])["delivered"] == 2, f"{eid}: {h}")
            nodes[h["node"]] = nodes.get(h["node"], 0) + 1
        res = [fields(e[1])["id"] for e in rj(redis, "XRANGE", "relay:api:results", "-", "+")]
        check(sorted(res) == sorted(ids), f"one result per entry: {len(res)} for 60")
        check(pending(redis) == 0 and rj(redis, "XLEN", "relay:api:dead") == 0, "pending or dead")
        print(f"entries run per node: {nodes}")
        m = n1.metrics() + n2.metrics()
        check(harness.metric_sum(m, "relay_api_stream_entries_total", 'outcome="ok"') == 60, m[-400:])
        for ws in (a, b):
            await ws.close()
    redis.stop()
test_api_stream_exactly_once_two_nodes.timeout = 90


async def test_api_stream_dead_letters():
    redis = RedisServer().start()
    node, _ = stream_node(redis, "n1", api={"max_body": 1024})
    with node:
        wait_ready(node)
        cases = [
            (["op", "message", "user", "alice", "body", "{not json"], 400, "bad_request", "not valid JSON"),
            (["op", "zap"], 400, "unknown_op", "Unknown op"),
            (["op", "message", "user", "ghost", "body", '{"topic":"x"}'], 404, "user_offline", "no hub"),
            (["user", "alice", "body", "{}"], 400, "bad_entry", "no op"),
            (["op", "nodes", "colour", "red"], 400, "bad_entry", "unknown field"),
            (["op", "message", "user", "alice", "body", '{"topic":"x","data":"' + "y" * 2000 + '"}'],
             400, "bad_entry", "max_body"),
            (["op", "message", "body", '{"topic":"x"}'], 400, "bad_request", "needs a user"),
            (["op", "broadcast", "body", '{"users":[],"topic":"x"}'], 400, "bad_request", "users"),
            (["op", "m" * 17], 400, "bad_entry", "op must be"),
            (["op", "user", "user", "u" * 257], 400, "bad_entry", "user must be"),
        ]
        ids = [xadd(redis, *c[0]) for c in cases]
        for eid, (flds, status, code, text) in zip(ids, cases):
            h = wait_result(redis, eid)
            check(h["status"] == str(status), f"{flds[:2]}: {h}")
            check(json.loads(h["body"])["error"]["code"] == code, f"{flds[:2]}: {h}")
        dead = {fields(e[1])["id"]: fields(e[1]) for e in rj(redis, "XRANGE", "relay:api:dead", "-", "+")}
        check(sorted(dead) == sorted(ids), f"dead letters {list(dead)}")
        for eid, (flds, status, code, text) in zip(ids, cases):
            d = dead[eid]
            check(d["error"] == code and text in d["message"] and d["status"] == str(status),
                  f"{flds[:2]}: {d}")
            want = fields(flds)
            if text in ("op must be", "user must be"):  # the refused field itself is not kept
                want[text.split()[0]] = ""
            check(d["op"] == want.get("op", "") and d["user"] == want.get("user", ""), f"{d}")
            if "body" in want and len(want["body"]) < 1024:
                check(d["body"] == want["body"], f"body kept: {d}")
        check(pending(redis) == 0, "bad entries left pending")
        # the node is fine: a good entry still runs
        eid = xadd(redis, "op", "nodes")
        check(wait_result(redis, eid)["status"] == "200", "after bad entries")
        check(node.alive(), "node died")
    redis.stop()
test_api_stream_dead_letters.timeout = 60


async def test_api_stream_claims_dead_consumers():
    """A consumer that took entries and vanished (here: redis-cli as consumer 'ghost')."""
    redis = RedisServer().start()
    node, _ = stream_node(redis, "n1")
    with node:
        wait_ready(node)
        a, _ = await connect_welcomed(node, "alice")
        # XADD and the ghost's read in one transaction: the node's blocked read never sees them
        out = rj(redis, stdin="MULTI\n"
                 "XADD relay:api * op message user alice body '{\"topic\":\"late\",\"data\":1}'\n"
                 "XADD relay:api * op message user alice body '{\"topic\":\"done\",\"data\":2}'\n"
                 "XREADGROUP GROUP relay ghost COUNT 10 STREAMS relay:api >\nEXEC\n")
        ids = out[-1][:2]
        check(len(out[-1]) == 3 and "relay:api" in out[-1][2], f"multi: {out}")
        run_id, done_id = ids
        # the second one's consumer ran it and wrote its result, but did not ack
        rj(redis, "HSET", f"relay:api:result:{done_id}", "status", "200", "body", "{}", "node", "ghost")
        check(pending(redis) == 2, "ghost holds both")
        await expect_silence(a, CLAIM - 1.5)  # not before stream_claim_after
        f = await recv_json(a, timeout=5)
        check(f == {"topic": "late", "data": 1}, f"claimed entry ran: {f}")
        h = wait_result(redis, run_id)
        check(h["status"] == "200" and h["node"] == "n1", f"{h}")
        await expect_silence(a, 1.0)  # the one already done is not run again
        deadline = time.monotonic() + 3
        while pending(redis) and time.monotonic() < deadline:
            time.sleep(0.05)
        check(pending(redis) == 0, "claimed entries not acked")
        check(rj(redis, "HGET", f"relay:api:result:{done_id}", "node") == "ghost", "result rewritten")
        m = node.metrics()
        check(harness.metric_sum(m, "relay_api_stream_claimed_total") == 2, m)
        check(harness.metric_sum(m, "relay_api_stream_entries_total", "already_done") == 1, m)
        check("claimed after" in node.log_text(), "claim not logged")
        await a.close()
    redis.stop()
test_api_stream_claims_dead_consumers.timeout = 60


async def test_api_stream_bounded():
    redis = RedisServer().start()
    node, _ = stream_node(redis, "n1", api={"stream_maxlen": 100, "stream_result_ttl": "2s"})
    with node:
        wait_ready(node)
        ids = rj(redis, stdin="".join("XADD relay:api * op zap\n" for _ in range(600)))
        wait_result(redis, ids[-1], timeout=15)
        for s in ("relay:api:results", "relay:api:dead"):
            n = rj(redis, "XLEN", s)
            check(n <= 300, f"{s} has {n} entries (stream_maxlen 100, ~)")
        # the input stream is trimmed by the claim pass (every 10 s)
        deadline = time.monotonic() + 15
        while rj(redis, "XLEN", "relay:api") > 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        check(rj(redis, "XLEN", "relay:api") <= 300, "input stream not trimmed")
        time.sleep(2.2)
        check(rj(redis, "EXISTS", f"relay:api:result:{ids[-1]}") == 0, "result hash did not expire")
        check(node.alive(), "node died")
    redis.stop()
test_api_stream_bounded.timeout = 60


async def test_api_stream_inflight_bound():
    """alice's hub is on n1, which is stopped (SIGSTOP): n2's calls wait for their 5 s timeout,
    and n2 takes no more than RL_API_STREAM_INFLIGHT (256) entries meanwhile."""
    import signal
    redis = RedisServer().start()
    n1, _ = stream_node(redis, "n1", stream=False)
    n2, _ = stream_node(redis, "n2")
    with n1, n2:
        wait_ready(n1)
        wait_ready(n2)
        a, _ = await connect_welcomed(n1, "alice")
        n1.proc.send_signal(signal.SIGSTOP)
        try:
            ids = rj(redis, stdin="".join(
                "XADD relay:api * op message user alice body '{\"topic\":\"t\"}'\n" for _ in range(400)))
            check(len(ids) == 400, "xadd")
            deadline = time.monotonic() + 3
            while pending(redis) < 256 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
            check(pending(redis) == 256, f"n2 took {pending(redis)} entries, not 256")
            m = n2.metrics()
            check(harness.metric_sum(m, "relay_api_stream_inflight") == 256, m[-300:])
        finally:
            n1.proc.send_signal(signal.SIGCONT)
        wait_result(redis, ids[-1], timeout=30)  # every entry is answered in the end
        st = {}
        for eid in (ids[0], ids[-1]):
            st[eid] = wait_result(redis, eid)["status"]
        check(st[ids[0]] in ("504", "200"), f"first entries: {st}")
        check(pending(redis) == 0, "entries left pending")
        await a.close()
    redis.stop()
test_api_stream_inflight_bound.timeout = 90


async def test_api_stream_survives_redis_restart():
    """Redis is killed and comes back empty: the node makes the group again and reads on."""
    redis = RedisServer().start()
    node, _ = stream_node(redis, "n1")
    with node:
        wait_ready(node)
        eid = xadd(redis, "op", "nodes")
        check(wait_result(redis, eid)["status"] == "200", "before")
        redis.kill()
        time.sleep(1.0)
        check(node.alive(), "node died with Redis")
        redis = RedisServer(port=redis.port, directory=redis.dir).start()
        wait_ready(node, timeout=15)
        deadline, h = time.monotonic() + 10, None
        eid = xadd(redis, "op", "nodes")
        h = wait_result(redis, eid, timeout=10)
        check(h["status"] == "200" and time.monotonic() < deadline, f"after the restart: {h}")
        check(rj(redis, "XPENDING", "relay:api", "relay")[0] == 0, "pending after the restart")
    redis.stop()
test_api_stream_survives_redis_restart.timeout = 60


class RedisWithoutXautoclaim(RedisServer):
    """A Redis without XAUTOCLAIM, as before 6.2 (the command renamed away)."""

    def start(self, timeout=5.0):
        self._spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                     "--rename-command", "XAUTOCLAIM", ""])
        return self._wait_up(lambda: self.cli("PING", timeout=1) == "PONG", timeout, "answer PING")


async def test_api_stream_without_xautoclaim():
    redis = RedisWithoutXautoclaim().start()
    check("unknown command" in redis.cli("XAUTOCLAIM", "k", "g", "c", "1", "0").lower(), "renamed")
    node, _ = stream_node(redis, "n1")
    with node:
        wait_ready(node)
        time.sleep(2.5)  # two claim passes
        eid = xadd(redis, "op", "nodes")
        check(wait_result(redis, eid)["status"] == "200", "entries still run")
        log = node.log_text()
        check(log.count("XAUTOCLAIM failed") == 1, "the missing command is not logged once: "
              + str(log.count("XAUTOCLAIM failed")))
    redis.stop()
test_api_stream_without_xautoclaim.timeout = 30


def test_api_stream_config():
    cfg = api_config(api={"stream": True, "stream_claim_after": "1s"})
    cfg.write()
    rc, out = run_check(cfg.path, env=ENV)
    check(rc != 0 and "stream_claim_after" in out, f"claim_after 1s accepted: {rc} {out}")
    cfg = api_config(api={"stream": True})
    node = Node(cfg, env=ENV)
    try:
        node.start()
        raise harness.TestFailure("a node with api.stream and no redis started")
    except harness.NodeStartError:
        pass
    check("api.stream needs redis" in node.log_text(), node.log_tail())
    node.stop()
    # off unless configured: a cluster node without api.stream makes no relay:api
    redis = RedisServer().start()
    n1, _ = stream_node(redis, "n1", stream=False)
    with n1:
        wait_ready(n1)
        time.sleep(1.2)
        check(rj(redis, "EXISTS", "relay:api") == 0, "relay:api made without api.stream")
        check("Redis stream" not in n1.log_text(), "stream started")
    redis.stop()
test_api_stream_config.timeout = 40
