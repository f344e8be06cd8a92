"""User hubs: welcome, connection limit, routing, error codes, broadcast isolation."""
import asyncio
import json
import time

import websockets.exceptions

import harness
from harness import (Config, Node, Plugin, check, connect, connect_welcomed, expect_close,
                     expect_error, expect_silence, metric_code_count, recv_json, recv_raw,
                     recv_topic, send_json, welcome)

STD_PREFIXES = {"session_": "session_plugin", "echo_": "echo_plugin", "crash_": "crash_plugin",
                "lazy_": "lazy_plugin", "a_": "a_plugin", "a_b_": "ab_plugin", "bc_": "bc_plugin",
                "counter_": "counter_plugin"}


async def test_welcome_is_first_frame_with_plugins():
    with Node() as n:
        ws = await connect(n, user="alice")
        d = await welcome(ws)
        check(set(d.keys()) == {"user_id", "client_count", "plugins"}, f"welcome data keys {sorted(d)}")
        check(d["user_id"] == "alice", f"user_id {d['user_id']!r}")
        check(d["client_count"] == 1, f"client_count {d['client_count']}")
        check(set(d["plugins"]) == set(STD_PREFIXES), f"plugins {sorted(d['plugins'])}, expected {sorted(STD_PREFIXES)}")
        for pfx, name in STD_PREFIXES.items():
            st = d["plugins"][pfx]
            check(st["process_id"] == "app:" + name, f"plugins[{pfx}].process_id {st['process_id']!r}")
            want = "pending" if pfx == "lazy_" else "running"
            check(st["status"] == want, f"plugins[{pfx}].status {st['status']!r}, expected {want!r}")
        await ws.close()


async def test_client_count_per_user():
    with Node() as n:
        a1, d1 = await connect_welcomed(n, "alice")
        a2, d2 = await connect_welcomed(n, "alice")
        b1, e1 = await connect_welcomed(n, "bob")
        a3, d3 = await connect_welcomed(n, "alice")
        check([d1["client_count"], d2["client_count"], d3["client_count"]] == [1, 2, 3],
              f"alice client_count sequence {[d1['client_count'], d2['client_count'], d3['client_count']]}")
        check(e1["client_count"] == 1 and e1["user_id"] == "bob", f"bob welcome {e1}")
        # existing connections get no second welcome when others join
        await expect_silence(a1, 0.3)
        for w in (a1, a2, a3, b1):
            await w.close()


async def test_max_connections_exact_and_freed_slot():
    with Node() as n:  # max_connections_per_user "3"
        conns = [(await connect_welcomed(n, "alice"))[0] for _ in range(3)]
        extra = await connect(n, user="alice")
        f = await recv_json(extra)
        check(f.get("topic") == "error" and f["data"].get("error") == "max_connections_reached",
              f"4th connection's first frame: {json.dumps(f)[:300]}")
        await expect_close(extra, 1008, "max_connections_reached")
        # other users are not affected
        b, _ = await connect_welcomed(n, "bob")
        # the 3 admitted connections still work
        for i, c in enumerate(conns):
            await send_json(c, {"type": "echo_still", "request_id": i})
            r = await recv_json(c)
            check(r.get("payload", {}).get("request_id") == i, f"connection {i} after refusal: {r}")
        # free a slot: a new connection is admitted again (allow the leave to be processed)
        await conns[0].close()
        deadline = time.monotonic() + 3
        while True:
            ws = await connect(n, user="alice")
            f = await recv_json(ws)
            if f.get("topic") == "welcome":
                check(f["data"]["client_count"] == 3, f"client_count after re-admission {f['data']['client_count']}")
                break
            check(f.get("topic") == "error" and f["data"].get("error") == "max_connections_reached",
                  f"unexpected first frame {f}")
            await harness.drain_until_closed(ws)
            check(time.monotonic() < deadline, "a freed slot was not re-admitted within 3 s")
            await asyncio.sleep(0.1)
        # and the limit holds again
        extra = await connect(n, user="alice")
        await expect_error(extra, "max_connections_reached", request_id=None)
        await expect_close(extra, 1008, "max_connections_reached")
        for c in conns[1:] + [ws, b]:
            await c.close()


async def test_max_connections_concurrent_burst():
    """10 simultaneous connects for one user with limit 3: exactly 3 admitted."""
    with Node() as n:
        async def one():
            ws = await connect(n, user="burst")
            f = await recv_json(ws)
            return ws, f
        res = await asyncio.gather(*[one() for _ in range(10)])
        admitted = [ws for ws, f in res if f.get("topic") == "welcome"]
        refused = [f for ws, f in res if f.get("topic") == "error"
                   and f["data"].get("error") == "max_connections_reached"]
        check(len(admitted) == 3 and len(refused) == 7,
              f"burst of 10 with limit 3: {len(admitted)} admitted, {len(refused)} refused")
        counts = sorted(f["data"]["client_count"] for ws, f in res if f.get("topic") == "welcome")
        check(counts == [1, 2, 3], f"client_counts of the admitted: {counts}")
        for ws, _ in res:
            await ws.close()


async def test_max_connections_env_override():
    with Node(env={"RELAY_MAX_CONNECTIONS_PER_USER": "1"}) as n:
        a, _ = await connect_welcomed(n, "alice")
        extra = await connect(n, user="alice")
        await expect_error(extra, "max_connections_reached", request_id=None)
        await expect_close(extra, 1008, "max_connections_reached")
        await a.close()


async def test_routing_payload():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        msg = {"type": "echo_do_thing", "data": {"k": "v", "list": [1, 2, 3], "nested": {"b": False}},
               "request_id": "r-1", "session_id": "s-9", "extra": {"deep": True}, "flag": 7}
        await send_json(ws, msg)
        f = await recv_json(ws)
        check(f.get("topic") == "do_thing", f"plugin topic {f.get('topic')!r}, expected 'do_thing' (frame {f})")
        p = f.get("payload") or {}
        for k, v in msg.items():
            check(p.get(k) == v, f"payload[{k!r}] = {p.get(k)!r}, expected {v!r}")
        cp = p.get("conn_pid")
        check(isinstance(cp, str) and cp != "", f"conn_pid {cp!r}")
        # stable per connection, distinct between connections
        await send_json(ws, {"type": "echo_again"})
        f2 = await recv_json(ws)
        check(f2["payload"]["conn_pid"] == cp, "conn_pid changed between two messages of one connection")
        ws2, _ = await connect_welcomed(n, "alice")
        await send_json(ws2, {"type": "echo_again"})
        f3 = await recv_json(ws2)
        check(f3["payload"]["conn_pid"] != cp, "two connections share a conn_pid")
        # the reply went to the sender only
        await expect_silence(ws, 0.3)
        await ws.close()
        await ws2.close()


async def test_routing_minimal_message():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "echo_bare"})
        f = await recv_json(ws)
        p = f.get("payload") or {}
        check(f.get("topic") == "bare" and p.get("type") == "echo_bare" and isinstance(p.get("conn_pid"), str),
              f"reply {f}")
        check("request_id" not in p or p["request_id"] is None, f"request_id invented: {p}")
        await ws.close()


async def test_ws_message_string_goes_out_as_is():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "echo_raw"})
        raw = await recv_raw(ws)
        check(raw == "hello raw", f"ws.message string frame {raw!r}, expected 'hello raw'")
        await ws.close()


async def test_other_topic_to_connection_is_wrapped():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "echo_custom"})
        f = await recv_json(ws)
        check(f == {"topic": "custom_topic", "data": {"x": 1, "s": "two"}}, f"frame {f}")
        await ws.close()


async def test_ws_close_from_plugin():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "echo_bye"})
        await harness.drain_until_closed(ws)
        check("bye now" in (ws.close_reason or ""), f"close reason {ws.close_reason!r} (code {ws.close_code})")


async def test_spec_example_plugin_exact_frame():
    cfg = Config(plugins=[Plugin("session_plugin", "session_", "session_plugin.lua")])
    with Node(cfg) as n:
        ws, d = await connect_welcomed(n, "alice")
        check(d["plugins"] == {"session_": {"status": "running", "process_id": "app:session_plugin"}},
              f"welcome plugins {d['plugins']}")
        await send_json(ws, {"type": "session_get_state", "data": {"key": "value"}, "request_id": "q1"})
        raw = await recv_raw(ws)
        check(raw == '{"type":"session_state","data":{"status":"active"}}',
              f"session_get_state frame {raw!r}: the spec's frame, byte for byte")
        # unknown topics are ignored by the example plugin: no frame
        await send_json(ws, {"type": "session_other"})
        await expect_silence(ws, 0.3)
        await ws.close()


async def test_invalid_json_stays_open():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        for bad in ("{not json", "", '{"type":"echo_x"', '{"type":"echo_x"} trailing', "nul", "[1,2"):
            await ws.send(bad)
            await expect_error(ws, "invalid_json", request_id=None)
        await send_json(ws, {"type": "echo_after"})
        f = await recv_json(ws)
        check(f.get("topic") == "after", f"echo after invalid_json: {f}")
        text = n.metrics()
        c = metric_code_count(text, "invalid_json")
        check(c is not None and c >= 6, f"invalid_json not counted in /metrics (got {c})")
        await ws.close()


async def test_unknown_command_stays_open():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        cases = [
            ({"request_id": "r1"}, "r1"),
            ({"type": "", "request_id": "r2"}, "r2"),
            ({"type": 5, "request_id": 7}, 7),
            ({"type": None, "request_id": "r4"}, "r4"),
            ({"type": {"a": 1}, "request_id": "r5"}, "r5"),
            ({"type": ["echo_x"]}, None),
            ({"data": {"x": 1}}, None),
        ]
        for msg, rid in cases:
            await send_json(ws, msg)
            await expect_error(ws, "unknown_command", request_id=rid)
        for raw in ("[1,2]", '"echo_x"', "42", "null", "true"):
            await ws.send(raw)
            await expect_error(ws, "unknown_command", request_id=None)
        await send_json(ws, {"type": "echo_after"})
        f = await recv_json(ws)
        check(f.get("topic") == "after", f"echo after unknown_command: {f}")
        c = metric_code_count(n.metrics(), "unknown_command")
        check(c is not None and c >= len(cases) + 5, f"unknown_command not counted in /metrics (got {c})")
        await ws.close()


async def test_plugin_not_found_stays_open():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "nope_x", "request_id": "r2"})
        await expect_error(ws, "plugin_not_found", request_id="r2")
        await send_json(ws, {"type": "echo"})  # "echo" lacks the prefix's underscore
        await expect_error(ws, "plugin_not_found", request_id=None)
        await send_json(ws, {"type": "ECHO_x", "request_id": {"complex": [1]}})  # case-sensitive
        await expect_error(ws, "plugin_not_found", request_id={"complex": [1]})
        await send_json(ws, {"type": "echo_ok"})
        f = await recv_json(ws)
        check(f.get("topic") == "ok", f"echo after plugin_not_found: {f}")
        c = metric_code_count(n.metrics(), "plugin_not_found")
        check(c is not None and c >= 3, f"plugin_not_found not counted in /metrics (got {c})")
        await ws.close()


async def test_longest_prefix_wins():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        for typ, plugin, topic in (("a_b_x", "a_b_", "x"), ("a_x", "a_", "x"), ("a_bx", "a_", "bx"),
                                   ("a_b_c_d", "a_b_", "c_d")):
            await send_json(ws, {"type": typ})
            f = await recv_json(ws)
            check(f.get("plugin") == plugin and f.get("topic") == topic and f.get("type") == typ,
                  f"type {typ!r} -> {f}, expected plugin {plugin!r} topic {topic!r}")
        await ws.close()


async def test_broadcast_isolated_per_user():
    with Node() as n:
        a1, _ = await connect_welcomed(n, "alice")
        a2, _ = await connect_welcomed(n, "alice")
        b1, _ = await connect_welcomed(n, "bob")
        await send_json(a1, {"type": "bc_send", "data": {"n": 1, "s": "hi"}})
        for w in (a1, a2):
            f = await recv_json(w)
            check(f == {"topic": "news", "data": {"n": 1, "s": "hi"}}, f"alice broadcast frame {f}")
        await expect_silence(b1, 0.5)
        await send_json(b1, {"type": "bc_send", "data": "for bob"})
        f = await recv_json(b1)
        check(f == {"topic": "news", "data": "for bob"}, f"bob broadcast frame {f}")
        await expect_silence(a1, 0.3)
        await expect_silence(a2, 0.1)
        for w in (a1, a2, b1):
            await w.close()


async def test_plugin_state_is_per_user():
    with Node() as n:
        a, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        for i in range(1, 4):
            await send_json(a, {"type": "counter_inc"})
            f = await recv_json(a)
            check(f.get("n") == i and f.get("user_id") == "alice", f"alice count {f}")
        await send_json(b, {"type": "counter_inc"})
        f = await recv_json(b)
        check(f.get("n") == 1 and f.get("user_id") == "bob", f"bob's counter shares alice's state: {f}")
        # a second connection of alice reaches the same plugin instance
        a2, _ = await connect_welcomed(n, "alice")
        await send_json(a2, {"type": "counter_inc"})
        f = await recv_json(a2)
        check(f.get("n") == 4, f"alice's second connection got a different instance: {f}")
        for w in (a, a2, b):
            await w.close()


async def test_many_users_at_once():
    with Node() as n:
        async def one(i):
            ws, d = await connect_welcomed(n, f"user{i}")
            check(d["user_id"] == f"user{i}" and d["client_count"] == 1, f"welcome {d}")
            await send_json(ws, {"type": "echo_hi", "request_id": i})
            f = await recv_json(ws, timeout=5)
            check(f["payload"]["request_id"] == i, f"reply {f}")
            return ws
        socks = await asyncio.gather(*[one(i) for i in range(60)])
        for w in socks:
            await w.close()
        await harness.still_works(n)
