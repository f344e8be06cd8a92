"""The server API (relay.node api): real nodes, real WebSocket clients receiving what the API
sends, HTTP from http.client. Standalone first, then a 2-node cluster on a real redis-server
where every request goes to the node that does not hold the user's hub.

Covers the five endpoints, bearer keys (two keys, wrong and missing ones), bodies (bad JSON,
wrong fields, over max_body, chunked), the per-key rate limit, Idempotency-Key (replay, reuse
with another body, per key), exact data bytes (a 64-bit integer), and that a plugin can send
none of the API's internal topics.
"""
import asyncio
import http.client
import json

import harness
from harness import (Config, Node, Plugin, TestFailure, check, connect_welcomed, expect_close,
                     expect_silence, free_port, recv_json, run_check, send_json)

KEY = "test-api-key-0123456789"
KEY2 = "second-api-key-abcdefghij"
ENV = {"RELAY_API_KEY": KEY, "RELAY_API_KEY2": KEY2}


def api_plugins():
    return [
        Plugin("echo_plugin", "echo_", "echo.lua"),
        Plugin("probe_plugin", "probe_", "api_probe.lua"),
    ]


def api_config(api=None, node=None, **kw):
    port = free_port()
    a = {"listen": f"127.0.0.1:{port}", "keys": ["${RELAY_API_KEY}", "${RELAY_API_KEY2}"]}
    a.update(api or {})
    n = {"api": a}
    n.update(node or {})
    cfg = Config(plugins=api_plugins(), node=n, **kw)
    cfg.api_port = port
    return cfg


class Api:
    """HTTP client of one node's API listener."""

    def __init__(self, port, key=KEY):
        self.port, self.key = port, key

    def call(self, method, path, body=None, key=..., headers=None, raw=None, timeout=8.0):
        h = {}
        key = self.key if key is ... else key
        if key is not None:
            h["Authorization"] = "Bearer " + key
        h.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            text = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            c.close()
        try:
            j = json.loads(text) if text else None
        except ValueError:
            raise TestFailure(f"{method} {path}: answer is not JSON: {text[:200]!r}")
        return r.status, hdrs, j

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def get(self, path, **kw):
        return self.call("GET", path, **kw)


def expect_err(res, status, code):
    st, _, j = res
    check(st == status, f"expected HTTP {status} {code}, got {st} {j}")
    check(isinstance(j, dict) and isinstance(j.get("error"), dict), f"error shape: {j}")
    check(j["error"].get("code") == code, f"expected error code {code}, got {j}")
    check(isinstance(j["error"].get("message"), str) and j["error"]["message"], f"no message: {j}")


async def recv_topic(ws, topic, timeout=3.0):
    f = await recv_json(ws, timeout)
    check(isinstance(f, dict) and f.get("topic") == topic, f"expected {topic!r}, got {f!r}")
    return f


def in_thread(fn, *a, **kw):
    """Blocking HTTP from async tests without stalling the clients' loop."""
    return asyncio.get_running_loop().run_in_executor(None, lambda: fn(*a, **kw))


# --------------------------------------------------------------------------------------------
# Configuration

def test_api_config_rules():
    cfg = api_config(api={"keys": []})
    cfg.write()
    rc, out = run_check(cfg.path, env=ENV)
    check(rc != 0 and "api.keys is empty" in out, f"api without keys accepted: {rc} {out}")
    cfg = api_config(api={"keys": ["short"]})
    cfg.write()
    rc, out = run_check(cfg.path, env=ENV)
    check(rc != 0 and "shorter than 16" in out, f"short key accepted: {rc} {out}")
    cfg = api_config()
    cfg.write()
    rc, out = run_check(cfg.path, env={})
    check(rc != 0 and "RELAY_API_KEY" in out, f"undefined key variable accepted: {rc} {out}")
    rc, out = run_check(cfg.path, env=ENV)
    check(rc == 0, f"good api config refused: {out}")


def test_api_off_by_default():
    cfg = Config(plugins=api_plugins())
    with Node(cfg) as node:
        check("server API" not in node.log_text(), "API started without relay.node api")


# --------------------------------------------------------------------------------------------
# Standalone

def test_api_auth():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        expect_err(api.get("/api/v1/nodes", key=None), 401, "unauthorized")
        expect_err(api.get("/api/v1/nodes", key="wrong-key-0123456789"), 401, "unauthorized")
        expect_err(api.get("/api/v1/nodes", key=KEY + "x"), 401, "unauthorized")
        expect_err(api.get("/api/v1/nodes", key=KEY[:-1]), 401, "unauthorized")
        expect_err(api.get("/api/v1/nodes", key=None, headers={"Authorization": "Basic " + KEY}),
                   401, "unauthorized")
        expect_err(api.post("/api/v1/users/alice/messages", {"topic": "t"}, key=None), 401,
                   "unauthorized")
        for k in (KEY, KEY2):
            st, _, j = api.get("/api/v1/nodes", key=k)
            check(st == 200, f"key {k}: {st} {j}")
        # the gateway's port does not serve the API, the API's port no WebSockets
        st, _, _ = harness.http_get(cfg.port, "/api/v1/nodes", headers={"Authorization": "Bearer " + KEY})
        check(st == 404, f"gateway port answered the API: {st}")


async def test_api_messages_to_connections():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        a1, _ = await connect_welcomed_node(cfg, "alice")
        a2, _ = await connect_welcomed_node(cfg, "alice")
        b1, _ = await connect_welcomed_node(cfg, "bob")
        raw = b'{"topic":"news","data":{"id":12345678901234567890,"s":"caf\\u00e9 \xe2\x82\xac","x":[1.5,{}]}}'
        st, _, j = await in_thread(api.post, "/api/v1/users/alice/messages", raw=raw)
        check(st == 200 and j == {"target": "connections", "delivered": 2}, f"publish: {st} {j}")
        for ws in (a1, a2):
            f = await harness.recv_raw(ws)
            check(f == '{"topic":"news","data":{"id":12345678901234567890,"s":"caf\\u00e9 \u20ac","x":[1.5,{}]}}',
                  f"frame bytes: {f!r}")
        await expect_silence(b1, 0.3)
        # data may be any JSON value, and absent (null)
        st, _, j = await in_thread(api.post, "/api/v1/users/bob/messages", {"topic": "n", "data": 7})
        check(st == 200 and j["delivered"] == 1, f"{st} {j}")
        check((await recv_topic(b1, "n"))["data"] == 7, "data 7")
        st, _, j = await in_thread(api.post, "/api/v1/users/bob/messages", {"topic": "z"})
        check(st == 200, f"{st} {j}")
        check((await recv_topic(b1, "z"))["data"] is None, "absent data is null")
        expect_err(await in_thread(api.post, "/api/v1/users/nobody/messages", {"topic": "t"}), 404,
                   "user_offline")
        for ws in (a1, a2, b1):
            await ws.close()


async def connect_welcomed_node(cfg, user):
    class N:  # the node's WebSocket address for harness.connect
        port = cfg.port

        def ws_url(self, u=None, q=None, path="/ws"):
            return f"ws://127.0.0.1:{cfg.port}{path}?user_id={u}"
    return await connect_welcomed(N(), user)


async def test_api_message_to_hub_plugins():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        ws, _ = await connect_welcomed_node(cfg, "carol")
        st, _, j = await in_thread(api.post, "/api/v1/users/carol/messages",
                                   {"topic": "probe_notify", "data": {"n": 1}, "target": "hub"})
        check(st == 200 and j == {"target": "hub", "delivered": 1}, f"to hub: {st} {j}")
        f = await recv_topic(ws, "probe_got")
        d = f["data"]
        check(d["topic"] == "notify" and d["data"] == {"n": 1}, f"plugin got {d}")
        check(d["has_conn_pid"] is False, f"an API message carries no conn_pid: {d}")
        check(d["from"].split(".")[2].startswith("a"), f"sender is not the API process: {d['from']}")
        expect_err(await in_thread(api.post, "/api/v1/users/carol/messages",
                                   {"topic": "nope_x", "data": 1, "target": "hub"}),
                   404, "plugin_not_found")
        await expect_silence(ws, 0.3)
        await ws.close()


async def test_api_broadcast():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        a, _ = await connect_welcomed_node(cfg, "alice")
        b, _ = await connect_welcomed_node(cfg, "bob")
        st, _, j = await in_thread(api.post, "/api/v1/broadcast",
                                   {"users": ["alice", "bob", "ghost"], "topic": "all", "data": {"v": 2}})
        check(st == 200 and j["delivered"] == 2 and j["target"] == "connections", f"{st} {j}")
        res = {r["user_id"]: r for r in j["results"]}
        check(res["alice"].get("delivered") == 1 and res["bob"].get("delivered") == 1, f"{j}")
        check(res["ghost"]["error"]["code"] == "user_offline", f"{j}")
        for ws in (a, b):
            check((await recv_topic(ws, "all"))["data"] == {"v": 2}, "broadcast data")
        st, _, j = await in_thread(api.post, "/api/v1/broadcast",
                                   {"users": ["alice"], "topic": "probe_b", "data": 3, "target": "hub"})
        check(st == 200 and j["delivered"] == 1, f"{st} {j}")
        check((await recv_topic(a, "probe_got"))["data"]["topic"] == "b", "hub broadcast")
        expect_err(await in_thread(api.post, "/api/v1/broadcast", {"users": [], "topic": "t"}), 400, "bad_request")
        expect_err(await in_thread(api.post, "/api/v1/broadcast", {"users": ["a", "a"], "topic": "t"}), 400,
                   "bad_request")
        expect_err(await in_thread(api.post, "/api/v1/broadcast",
                                   {"users": ["u%d" % i for i in range(1001)], "topic": "t"}), 400, "bad_request")
        expect_err(await in_thread(api.post, "/api/v1/broadcast", {"users": [1], "topic": "t"}), 400, "bad_request")
        await a.close()
        await b.close()


async def test_api_user_nodes_and_disconnect():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        st, _, j = await in_thread(api.get, "/api/v1/users/dave")
        check(st == 200 and j["online"] is False and j["connection_count"] == 0 and j["hub"] is None,
              f"offline user: {st} {j}")
        w1, _ = await connect_welcomed_node(cfg, "dave")
        w2, _ = await connect_welcomed_node(cfg, "dave")
        st, _, j = await in_thread(api.get, "/api/v1/users/dave")
        check(st == 200 and j["online"] is True and j["connection_count"] == 2, f"{st} {j}")
        check(j["connections"] == {"n1": 2} and j["hub"]["node"] == "n1", f"{j}")
        check(j["plugins"]["probe_"]["status"] == "running" and j["plugins"]["echo_"]["id"] == "app:echo_plugin",
              f"plugins: {j}")
        st, _, j = await in_thread(api.get, "/api/v1/nodes")
        check(st == 200 and j["cluster"] is False and len(j["nodes"]) == 1, f"nodes: {j}")
        n = j["nodes"][0]
        check(n["id"] == "n1" and n["self"] is True and n["connections"] == 2 and n["alive"] is True, f"{n}")
        expect_err(await in_thread(api.post, "/api/v1/users/dave/disconnect", {"code": 1006}), 400, "bad_request")
        expect_err(await in_thread(api.post, "/api/v1/users/dave/disconnect", {"reason": "x" * 124}), 400,
                   "bad_request")
        st, _, j = await in_thread(api.post, "/api/v1/users/dave/disconnect", {"code": 4001, "reason": "bye"})
        check(st == 200 and j == {"disconnected": 2}, f"{st} {j}")
        for ws in (w1, w2):
            await expect_close(ws, 4001, "bye")
        # an empty body takes the defaults
        w3, _ = await connect_welcomed_node(cfg, "dave")
        st, _, j = await in_thread(api.post, "/api/v1/users/dave/disconnect", raw=b"")
        check(st == 200 and j == {"disconnected": 1}, f"{st} {j}")
        await expect_close(w3, 4000, "disconnected")


def test_api_bad_requests():
    cfg = api_config(api={"max_body": "1KiB"})
    with Node(cfg, env=ENV) as node:
        api = Api(cfg.api_port)
        p = "/api/v1/users/alice/messages"
        expect_err(api.post(p, raw=b"{not json"), 400, "bad_request")
        expect_err(api.post(p, raw=b"[1,2]"), 400, "bad_request")
        expect_err(api.post(p, raw=b'{"topic":"a"} x'), 400, "bad_request")
        expect_err(api.post(p, raw=b'{"topic":"\xff"}'), 400, "bad_request")
        expect_err(api.post(p, {"data": 1}), 400, "bad_request")
        expect_err(api.post(p, {"topic": ""}), 400, "bad_request")
        expect_err(api.post(p, {"topic": "t" * 129}), 400, "bad_request")
        expect_err(api.post(p, {"topic": 5}), 400, "bad_request")
        expect_err(api.post(p, {"topic": "t", "target": "elsewhere"}), 400, "bad_request")
        expect_err(api.post(p, raw=b""), 400, "bad_request")
        expect_err(api.post(p, {"topic": "t", "data": "x" * 2000}), 413, "payload_too_large")
        expect_err(api.post(p, raw=b"x" * 100000), 413, "payload_too_large")
        expect_err(api.get(p), 405, "method_not_allowed")
        expect_err(api.post("/api/v1/users/alice"), 405, "method_not_allowed")
        expect_err(api.call("DELETE", "/api/v1/users/alice"), 405, "method_not_allowed")
        expect_err(api.get("/api/v1/nothing"), 404, "not_found")
        expect_err(api.get("/api/v1/users/a/b"), 404, "not_found")
        expect_err(api.post(p, {"topic": "t"}, headers={"Idempotency-Key": "k" * 129}), 400, "bad_request")
        # a chunked body (no Content-Length) is refused
        c = http.client.HTTPConnection("127.0.0.1", cfg.api_port, timeout=5)
        c.putrequest("POST", p)
        c.putheader("Authorization", "Bearer " + KEY)
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        c.send(b'5\r\n{"a":\r\n0\r\n\r\n')
        r = c.getresponse()
        check(r.status == 411, f"chunked: {r.status}")
        c.close()
        # still serving, and keep-alive works over several requests on one connection
        c = http.client.HTTPConnection("127.0.0.1", cfg.api_port, timeout=5)
        for _ in range(3):
            c.request("GET", "/api/v1/nodes", headers={"Authorization": "Bearer " + KEY})
            r = c.getresponse()
            r.read()
            check(r.status == 200, f"keep-alive: {r.status}")
        c.close()
        check("AddressSanitizer" not in node.log_text(), "sanitizer")


def test_api_rate_limit():
    cfg = api_config(api={"rate": 1, "burst": 3})
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        for i in range(3):
            st, _, j = api.get("/api/v1/nodes")
            check(st == 200, f"request {i} within the burst: {st} {j}")
        res = api.get("/api/v1/nodes")
        expect_err(res, 429, "rate_limited")
        check(res[1].get("retry-after", "").isdigit(), f"no Retry-After: {res[1]}")
        expect_err(api.post("/api/v1/users/a/messages", {"topic": "t"}), 429, "rate_limited")
        st, _, _ = api.get("/api/v1/nodes", key=KEY2)  # a bucket per key
        check(st == 200, f"the other key was limited too: {st}")


async def test_api_idempotency():
    cfg = api_config()
    with Node(cfg, env=ENV):
        api = Api(cfg.api_port)
        ws, _ = await connect_welcomed_node(cfg, "erin")
        p, body = "/api/v1/users/erin/messages", {"topic": "once", "data": 1}
        hk = {"Idempotency-Key": "order-42"}
        st, h1, j1 = await in_thread(api.post, p, body, headers=hk)
        check(st == 200 and j1["delivered"] == 1, f"first: {st} {j1}")
        st, h2, j2 = await in_thread(api.post, p, body, headers=hk)
        check(st == 200 and j2 == j1 and h2.get("idempotent-replayed") == "true", f"replay: {st} {j2} {h2}")
        check((await recv_topic(ws, "once"))["data"] == 1, "delivered once")
        await expect_silence(ws, 0.4)
        expect_err(await in_thread(api.post, p, {"topic": "once", "data": 2}, headers=hk), 422,
                   "idempotency_key_reused")
        # another key's Idempotency-Key space is its own
        st, _, j = await in_thread(api.post, p, body, headers=hk, key=KEY2)
        check(st == 200 and j["delivered"] == 1, f"other key: {st} {j}")
        await recv_topic(ws, "once")
        # an offline user's 404 is remembered too: the same answer, nothing delivered later
        q = "/api/v1/users/later/messages"
        expect_err(await in_thread(api.post, q, body, headers={"Idempotency-Key": "k2"}), 404, "user_offline")
        w2, _ = await connect_welcomed_node(cfg, "later")
        res = await in_thread(api.post, q, body, headers={"Idempotency-Key": "k2"})
        expect_err(res, 404, "user_offline")
        check(res[1].get("idempotent-replayed") == "true", "404 replayed")
        await expect_silence(w2, 0.3)
        await ws.close()
        await w2.close()


async def test_plugins_cannot_send_api_topics():
    cfg = api_config()
    with Node(cfg, env=ENV) as node:
        ws, _ = await connect_welcomed_node(cfg, "mallory")
        await send_json(ws, {"type": "probe_forge"})
        f = await recv_topic(ws, "probe_forged")
        for t, res in f["data"].items():
            check(res == "permission denied", f"a plugin sent {t}: {res}")
        await expect_silence(ws, 0.3)
        await ws.close()
        check("refused to send api.push" in node.log_text(), "refusal not logged")


# --------------------------------------------------------------------------------------------
# A 2-node cluster: every request goes to the node that does not hold the hub

from test_cluster import RedisServer, wait_ready  # noqa: E402


def cluster_node(redis, node_id):
    cfg = api_config(node={"node_ttl": "2s", "lease_ttl": "2s"},
                     params={"max_connections_per_user": "10"})
    return Node(cfg, env=ENV, args=["--node-id", node_id, "--redis", redis.url], name=node_id), cfg


async def test_api_cluster_two_nodes():
    redis = RedisServer().start()
    n1, c1 = cluster_node(redis, "n1")
    n2, c2 = cluster_node(redis, "n2")
    with n1, n2:
        wait_ready(n1)
        wait_ready(n2)
        api1, api2 = Api(c1.api_port), Api(c2.api_port)
        a, _ = await connect_welcomed_node(c1, "alice")      # alice's hub: n1
        b, _ = await connect_welcomed_node(c2, "alice")      # and a connection on n2
        st, _, j = await in_thread(api2.get, "/api/v1/users/alice")
        check(st == 200 and j["online"] and j["hub"]["node"] == "n1", f"user via n2: {st} {j}")
        check(j["connections"] == {"n1": 1, "n2": 1} and j["connection_count"] == 2, f"{j}")
        # n2 knows alice (a connection here): it forwards to the hub on n1
        st, _, j = await in_thread(api2.post, "/api/v1/users/alice/messages",
                                   raw=b'{"topic":"x","data":{"big":9007199254740993}}')
        check(st == 200 and j["delivered"] == 2, f"publish via n2: {st} {j}")
        for ws in (a, b):
            f = await harness.recv_raw(ws)
            check(f == '{"topic":"x","data":{"big":9007199254740993}}', f"frame {f!r}")
        # zoe has a connection on n1 only: n2 finds her hub through the lease in Redis
        z, _ = await connect_welcomed_node(c1, "zoe")
        st, _, j = await in_thread(api2.post, "/api/v1/users/zoe/messages",
                                   {"topic": "probe_ping", "data": [1], "target": "hub"})
        check(st == 200 and j["delivered"] == 1, f"to a remote hub's plugin: {st} {j}")
        d = (await recv_topic(z, "probe_got"))["data"]
        check(d["topic"] == "ping" and d["data"] == [1] and d["from"].startswith("n2."), f"{d}")
        st, _, j = await in_thread(api2.post, "/api/v1/broadcast",
                                   {"users": ["zoe", "alice", "ghost"], "topic": "bc", "data": 0})
        check(st == 200 and j["delivered"] == 3, f"broadcast via n2: {st} {j}")
        for ws in (z, a, b):
            await recv_topic(ws, "bc")
        st, _, j = await in_thread(api2.get, "/api/v1/users/zoe")
        check(st == 200 and j["hub"]["node"] == "n1" and j["connections"] == {"n1": 1}, f"{j}")
        st, _, j = await in_thread(api1.get, "/api/v1/nodes")
        check(st == 200 and j["cluster"] is True, f"nodes: {j}")
        ids = sorted(n["id"] for n in j["nodes"])
        check(ids == ["n1", "n2"] and all(n["alive"] for n in j["nodes"]), f"nodes: {j}")
        check([n["id"] for n in j["nodes"] if n.get("self")] == ["n1"], f"self flag: {j}")
        st, _, j = await in_thread(api2.post, "/api/v1/users/zoe/disconnect", {"code": 4002, "reason": "kick"})
        check(st == 200 and j["disconnected"] == 1, f"disconnect via n2: {st} {j}")
        await expect_close(z, 4002, "kick")
        expect_err(await in_thread(api2.post, "/api/v1/users/ghost/messages", {"topic": "t"}), 404,
                   "user_offline")
        for ws in (a, b):
            await ws.close()
    redis.stop()
test_api_cluster_two_nodes.timeout = 60
