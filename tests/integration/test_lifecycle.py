"""Plugin and hub lifecycle: resume/shutdown, lazy start, restart-then-failed, idle hub GC."""
import asyncio
import time

import harness
from harness import (Config, Node, Plugin, check, connect, connect_welcomed, expect_error,
                     expect_silence, metric_sum, recv_json, send_json, welcome)


async def _session_events(ws):
    await send_json(ws, {"type": "session_events"})
    f = await recv_json(ws)
    check(f.get("type") == "session_events", f"session_events reply {f}")
    return f["events"] if isinstance(f.get("events"), list) else []  # an empty Lua table may encode as {}


async def test_session_resume_and_shutdown():
    with Node() as n:
        c1, _ = await connect_welcomed(n, "alice")
        ev = await _session_events(c1)
        check(ev == ["resume"], f"after the first join: {ev}, expected ['resume']")
        c2, _ = await connect_welcomed(n, "alice")
        ev = await _session_events(c2)
        check(ev == ["resume"], f"a second join sent another lifecycle topic: {ev}")
        await c1.close()
        await asyncio.sleep(0.2)
        ev = await _session_events(c2)
        check(ev == ["resume"], f"shutdown sent while a client is still connected: {ev}")
        await c2.close()
        await asyncio.sleep(0.3)
        c3, d = await connect_welcomed(n, "alice")
        check(d["client_count"] == 1, f"client_count after everyone left {d['client_count']}")
        ev = await _session_events(c3)
        check(ev == ["resume", "shutdown", "resume"],
              f"lifecycle after leave-all and rejoin: {ev}, expected resume, shutdown, resume")
        # bob's session plugin is his own
        b, _ = await connect_welcomed(n, "bob")
        ev = await _session_events(b)
        check(ev == ["resume"], f"bob's session events {ev}")
        await c3.close()
        await b.close()


async def test_lazy_plugin_pending_then_running():
    with Node() as n:
        c1, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["lazy_"]["status"] == "pending", f"lazy_ before use: {d['plugins']['lazy_']}")
        c2, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["lazy_"]["status"] == "pending", f"lazy_ still unused: {d['plugins']['lazy_']}")
        await send_json(c1, {"type": "lazy_hello"})
        f = await recv_json(c1)
        check(f == {"type": "lazy_reply", "topic": "hello"}, f"first message to the lazy plugin: {f}")
        c3, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["lazy_"]["status"] == "running", f"lazy_ after first use: {d['plugins']['lazy_']}")
        # bob's hub starts with its own pending lazy plugin
        b, d = await connect_welcomed(n, "bob")
        check(d["plugins"]["lazy_"]["status"] == "pending", f"bob's lazy_: {d['plugins']['lazy_']}")
        for w in (c1, c2, c3, b):
            await w.close()


async def _ping(ws, rid):
    await send_json(ws, {"type": "crash_ping", "request_id": rid})
    return await recv_json(ws)


async def test_crash_restart_once_then_failed():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        f = await _ping(ws, "p1")
        check(f == {"type": "pong", "n": 1, "request_id": "p1"}, f"ping before any crash: {f}")
        f = await _ping(ws, "p2")
        check(f.get("n") == 2, f"second ping {f}")
        # first crash: restarted once (fresh state)
        await send_json(ws, {"type": "crash_crash"})
        await asyncio.sleep(0.3)
        f = await _ping(ws, "p3")
        check(f.get("type") == "pong" and f.get("n") == 1,
              f"ping after the first crash: {f}, expected a pong from a fresh instance (n=1)")
        w2, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["crash_"]["status"] == "running", f"crash_ after one crash: {d['plugins']['crash_']}")
        await w2.close()
        # second crash: failed for good
        await send_json(ws, {"type": "crash_crash"})
        await asyncio.sleep(0.3)
        await send_json(ws, {"type": "crash_ping", "request_id": "p4"})
        await expect_error(ws, "plugin_failed", request_id="p4")
        await send_json(ws, {"type": "crash_ping"})
        await expect_error(ws, "plugin_failed", request_id=None)
        w3, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["crash_"]["status"] == "failed", f"crash_ after two crashes: {d['plugins']['crash_']}")
        # the connection and the other plugins are fine
        await send_json(ws, {"type": "echo_still_here"})
        f = await recv_json(ws)
        check(f.get("topic") == "still_here", f"echo after plugin failure: {f}")
        # another user's crash_ plugin is unaffected
        b, d = await connect_welcomed(n, "bob")
        check(d["plugins"]["crash_"]["status"] == "running", f"bob's crash_: {d['plugins']['crash_']}")
        f = await _ping(b, "b1")
        check(f.get("type") == "pong", f"bob's ping {f}")
        text = n.metrics()
        c = metric_sum(text, "relay_plugins_crashed_total")
        check(c is not None and c >= 2, f"relay_plugins_crashed_total = {c}")
        c = harness.metric_code_count(text, "plugin_failed")
        check(c is not None and c >= 2, f"plugin_failed not counted in /metrics (got {c})")
        for w in (ws, w3, b):
            await w.close()


async def test_plugin_that_fails_at_start_is_failed():
    """A plugin whose chunk raises when run is reported failed; its messages get plugin_failed."""
    bad = 'error("cannot start")\nreturn { run = function() end }\n'
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("dead_plugin", "dead_", "dead.lua", text=bad)])
    with Node(cfg) as n:
        ws, d = await connect_welcomed(n, "alice")
        st = d["plugins"]["dead_"]["status"]
        check(st in ("failed", "running", "pending"), f"dead_ status {st}")
        await send_json(ws, {"type": "dead_x", "request_id": "d1"})
        await expect_error(ws, "plugin_failed", request_id="d1")
        await asyncio.sleep(0.2)
        w2, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["dead_"]["status"] == "failed", f"dead_ after failing: {d['plugins']['dead_']}")
        await harness.still_works(n)
        await ws.close()
        await w2.close()


async def _inc(ws):
    await send_json(ws, {"type": "counter_inc"})
    f = await recv_json(ws)
    check(f.get("type") == "count", f"counter reply {f}")
    return f["n"]


async def _wait_collected(n, at_least, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = metric_sum(n.metrics(), "relay_hubs_collected_total")
        if v is not None and v >= at_least:
            return time.monotonic()
        await asyncio.sleep(0.1)
    raise harness.TestFailure(f"relay_hubs_collected_total still "
                              f"{metric_sum(n.metrics(), 'relay_hubs_collected_total')} after {timeout}s")


async def test_idle_hub_collected_after_timeout():
    with Node(Config(params={"user_hub_inactivity_timeout": "2s"})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        check([await _inc(ws) for _ in range(3)] == [1, 2, 3], "counter 1..3")
        await ws.close()
        # a quick reconnect finds the same hub (state kept)
        await asyncio.sleep(0.3)
        ws, _ = await connect_welcomed(n, "alice")
        v = await _inc(ws)
        check(v == 4, f"reconnect after 0.3 s: counter {v}, expected 4 (same hub)")
        await ws.close()
        t_left = time.monotonic()
        v0 = metric_sum(n.metrics(), "relay_hubs_collected_total")
        check(v0 in (None, 0), f"relay_hubs_collected_total = {v0} before the timeout")
        # timeout 2 s, checked every 0.8 s: collected between ~2 s and ~3 s after the leave
        t = await _wait_collected(n, 1, 6)
        check(t - t_left >= 1.7, f"hub collected {t - t_left:.2f}s after the last leave (timeout 2 s)")
        ws, d = await connect_welcomed(n, "alice")
        check(d["client_count"] == 1, f"welcome after GC {d}")
        v = await _inc(ws)
        check(v == 1, f"counter after GC {v}, expected 1 (fresh hub and plugin)")
        await ws.close()


async def test_hub_with_clients_not_collected():
    with Node(Config(params={"user_hub_inactivity_timeout": "2s"})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        check(await _inc(ws) == 1, "counter 1")
        await asyncio.sleep(3.5)
        v = await _inc(ws)
        check(v == 2, f"counter after 3.5 s connected: {v}, expected 2 (hub must not be collected)")
        c = metric_sum(n.metrics(), "relay_hubs_collected_total")
        check(c in (None, 0), f"relay_hubs_collected_total = {c} while the only hub has a client")
        await ws.close()


async def test_gc_timeout_env_override():
    with Node(env={"RELAY_USER_HUB_INACTIVITY_TIMEOUT": "2s"}) as n:  # config says 60s
        ws, _ = await connect_welcomed(n, "alice")
        await _inc(ws)
        await ws.close()
        await _wait_collected(n, 1, 6)
        ws, _ = await connect_welcomed(n, "alice")
        check(await _inc(ws) == 1, "counter after GC (env override) is not fresh")
        await ws.close()


async def test_session_shutdown_then_gc_then_fresh_resume():
    with Node(Config(params={"user_hub_inactivity_timeout": "2s"})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await ws.close()
        await _wait_collected(n, 1, 6)
        ws, _ = await connect_welcomed(n, "alice")
        ev = await _session_events(ws)
        check(ev == ["resume"], f"session events on a fresh hub after GC: {ev}")
        await ws.close()
