"""Plugin runtime and connection hygiene: normal exit (stopped), instruction budget, memory limit,
sandbox and isolation between users, dead peers, handshake timeout, JWT iss/aud."""
import asyncio
import re
import json
import socket
import struct
import time

import harness
from harness import (Config, Node, Plugin, RawWS, check, connect, connect_welcomed, expect_close,
                     expect_error, http_get, jwt_claims, jwt_sign, metric_sum, recv_json, send_json,
                     still_works)


def _cfg(*extra, **kw):
    return Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua")] + list(extra), **kw)


async def test_plugin_normal_exit_is_stopped_then_restarts():
    with Node(_cfg(Plugin("once_plugin", "once_", "once.lua"))) as n:
        ws, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["once_"]["status"] == "running", f"{d['plugins']['once_']}")
        await send_json(ws, {"type": "once_x"})
        check((await recv_json(ws)) == {"type": "once_reply", "n": 1}, "first reply")
        await send_json(ws, {"type": "once_quit"})
        check((await recv_json(ws)) == {"type": "once_bye"}, "quit reply")
        await asyncio.sleep(0.2)
        w2, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["once_"]["status"] == "stopped",
              f"plugin that returned from run: status {d['plugins']['once_']['status']!r}, expected 'stopped'")
        await send_json(ws, {"type": "once_x", "request_id": "again"})
        f = await recv_json(ws)
        check(f == {"type": "once_reply", "n": 1}, f"message after a normal exit: {f} (expected a restart)")
        w3, d = await connect_welcomed(n, "alice")
        check(d["plugins"]["once_"]["status"] == "running", f"after restart: {d['plugins']['once_']}")
        # normal exits are not crashes: quitting again and again never makes it 'failed'
        for _ in range(3):
            await send_json(ws, {"type": "once_quit"})
            check((await recv_json(ws)) == {"type": "once_bye"}, "quit reply")
            await asyncio.sleep(0.1)
            await send_json(ws, {"type": "once_x"})
            f = await recv_json(ws)
            check(f.get("type") == "once_reply", f"after repeated normal exits: {f}")
        for w in (ws, w2, w3):
            await w.close()


async def test_runaway_loop_stopped_by_instruction_budget():
    with Node(_cfg(Plugin("run_plugin", "run_", "runaway.lua"))) as n:
        ws, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        t0 = time.monotonic()
        await send_json(ws, {"type": "run_spin"})
        # the node keeps serving everyone meanwhile
        await send_json(b, {"type": "echo_hi"})
        f = await recv_json(b, timeout=5)
        check(f.get("topic") == "hi", f"bob while alice's plugin spins: {f}")
        st, _, _ = http_get(n.port, "/healthz")
        check(st == 200, f"/healthz {st}")
        # the spinning instance is stopped (crash) and restarted once: a fresh instance answers.
        # It runs in preempted slices until its budget is out, so a ping may reach it and go
        # with it: ask again.
        deadline = time.monotonic() + 5
        while True:
            await send_json(ws, {"type": "run_ping"})
            try:
                f = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except asyncio.TimeoutError:
                f = {}
            if f.get("type") == "pong":
                check(f["n"] == 1, f"pong from the spinning instance? {f}")
                break
            check(time.monotonic() < deadline, f"no pong after the spin: {f}")
        check(time.monotonic() - t0 < 5, "the runaway loop took over 5 s to stop")
        c = metric_sum(n.metrics(), "relay_plugins_crashed_total")
        check(c is not None and c >= 1, f"relay_plugins_crashed_total {c}")
        await ws.close()
        await b.close()


async def test_runaway_allocation_stopped_by_memory_limit():
    with Node(_cfg(Plugin("run_plugin", "run_", "runaway.lua"),
                   node={"lua_memory_limit": 64 * 1024 * 1024})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        await send_json(ws, {"type": "run_eat"})
        # queued behind the eating run, never read: answered when the instance ends, not dropped
        await send_json(ws, {"type": "run_ping", "request_id": "queued"})
        f = await recv_json(ws, timeout=8)
        check(f.get("topic") == "error" and f["data"].get("error") == "plugin_failed" and
              f["data"].get("request_id") == "queued", f"the ping queued at the dying plugin: {f}")
        st, _, _ = http_get(n.port, "/healthz")
        check(st == 200 and n.alive(), "node down after a plugin ate memory")
        await send_json(b, {"type": "run_ping"})
        f = await recv_json(b, timeout=5)
        check(f.get("type") == "pong", f"bob's plugin after alice's ate memory: {f}")
        # the eating instance dies when it reaches the cap; a ping that reached it before is
        # answered plugin_failed ("ended before it read the message"): ask until a fresh one answers
        deadline = time.monotonic() + 5
        while True:
            await send_json(ws, {"type": "run_ping", "request_id": "p"})
            f = await recv_json(ws, timeout=5)
            if f.get("type") == "pong":
                check(f.get("n") == 1, f"alice's plugin after the memory crash: {f}")
                break
            check(f.get("topic") == "error" and f["data"].get("error") == "plugin_failed" and
                  f["data"].get("request_id") == "p", f"alice's ping while her plugin died: {f}")
            check(time.monotonic() < deadline, f"no pong after the memory crash: {f}")
            await asyncio.sleep(0.1)
        await still_works(n)
        await ws.close()
        await b.close()


async def test_sandbox_has_no_dangerous_functions():
    with Node(_cfg(Plugin("sb_plugin", "sb_", "sandbox.lua"))) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "sb_probe"})
        f = await recv_json(ws)
        bad = {k: v for k, v in f.items() if k in ("io", "os_execute", "debug", "loadlib") and v != "nil"}
        check(not bad, f"sandbox exposes {bad}")
        check(f.get("binary_load") is False, f"binary chunks load in the sandbox: {f}")
        await ws.close()


async def test_globals_are_per_user():
    with Node(_cfg(Plugin("sb_plugin", "sb_", "sandbox.lua"))) as n:
        a, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        for i in (1, 2, 3):
            await send_json(a, {"type": "sb_glob"})
            f = await recv_json(a)
            check(f.get("n") == i, f"alice's global counter {f}")
        await send_json(b, {"type": "sb_glob"})
        f = await recv_json(b)
        check(f.get("n") == 1, f"bob sees alice's global: {f}")
        await a.close()
        await b.close()


async def test_shared_libraries_cannot_be_poisoned():
    with Node(_cfg(Plugin("sb_plugin", "sb_", "sandbox.lua"))) as n:
        a, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        await send_json(a, {"type": "sb_poison"})
        attempts = await recv_json(a)
        await send_json(b, {"type": "sb_check"})
        f = await recv_json(b)
        check(f == {"type": "sb_check", "upper1": "A", "upper2": "A", "enc": "[1]"},
              f"bob's libraries after alice's poisoning attempts {attempts}: {f}")
        # a new user's hub too
        c, _ = await connect_welcomed(n, "carol")
        await send_json(c, {"type": "sb_check"})
        f = await recv_json(c)
        check(f == {"type": "sb_check", "upper1": "A", "upper2": "A", "enc": "[1]"},
              f"carol's libraries after alice's poisoning attempts {attempts}: {f}")
        for w in (a, b, c):
            await w.close()


async def test_abrupt_disconnects_free_slots():
    with Node() as n:  # limit 3
        raws = []
        for _ in range(3):
            r = RawWS(n.port, "/ws?user_id=alice")
            op, data = r.recv_message()
            check(json.loads(data)["topic"] == "welcome", "welcome")
            raws.append(r)
        for r in raws:  # RST, no close frame
            r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            r.close()
        deadline = time.monotonic() + 3
        while True:
            ws = await connect(n, user="alice")
            f = await recv_json(ws)
            if f.get("topic") == "welcome":
                check(f["data"]["client_count"] == 1, f"client_count after 3 resets: {f['data']['client_count']}")
                break
            await harness.drain_until_closed(ws)
            check(time.monotonic() < deadline, "slots of reset connections not freed within 3 s")
            await asyncio.sleep(0.1)
        await ws.close()
        deadline = time.monotonic() + 2
        while metric_sum(n.metrics(), "relay_connections") != 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        check(metric_sum(n.metrics(), "relay_connections") == 0, "relay_connections not back to 0")


async def test_frames_sent_before_welcome_are_answered_after_it():
    with Node() as n:
        r = RawWS(n.port, "/ws?user_id=alice")
        try:
            check(r.status == 101, r.status_line)
            r.send_text(json.dumps({"type": "echo_early", "request_id": "e1"}))
            op, data = r.recv_message()
            check(json.loads(data).get("topic") == "welcome", f"first frame {data[:200]!r}")
            op, data = r.recv_message()
            f = json.loads(data)
            check(f.get("topic") == "early" and f["payload"]["request_id"] == "e1", f"second frame {f}")
        finally:
            r.close()


async def test_small_max_message_bytes():
    with Node(Config(node={"max_message_bytes": 1024})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        m = json.dumps({"type": "echo_s", "data": ""})
        ok = json.dumps({"type": "echo_s", "data": "x" * (1024 - len(m))})
        await ws.send(ok)
        f = await recv_json(ws)
        check(f.get("topic") == "s", f"1024-byte message: {str(f)[:200]}")
        await ws.send(ok[:-2] + 'x"}')
        await expect_close(ws, 1009, "message_too_large")


async def test_dead_peer_closed_after_ping_timeout():
    with Node(Config(node={"ping_interval": "1s", "ping_timeout": "2s"})) as n:
        live, _ = await connect_welcomed(n, "alive")  # websockets answers pings by itself
        r = RawWS(n.port, "/ws?user_id=dead")
        try:
            r.recv_message()  # welcome; from now on no pong is ever sent
            t0 = time.monotonic()
            r.sock.settimeout(8)

            def read_until_end():  # in a thread: the event loop must keep answering `live`'s pings
                pings = 0
                try:
                    while True:
                        op, data = r.recv_message()
                        if op == 0x9:
                            pings += 1
                        elif op == 0x8:
                            return pings, "close"
                except (EOFError, ConnectionResetError):
                    return pings, "eof"
                except socket.timeout:
                    return pings, None
            pings, ended = await asyncio.get_running_loop().run_in_executor(None, read_until_end)
            dt = time.monotonic() - t0
            check(pings >= 1, "the node sent no WebSocket ping within the ping interval")
            check(ended is not None, f"a peer that never answers pings is still connected after {dt:.1f}s "
                                     "(ping_interval 1s, ping_timeout 2s)")
            check(dt < 6, f"dead peer closed only after {dt:.1f}s")
            cut = re.search(r"^relay_ping_timeouts_total (\d+)$", n.metrics(), re.M)
            cut = int(cut.group(1)) if cut else None
            check(cut == 1, f"relay_ping_timeouts_total is {cut} after one dead peer was cut")
        finally:
            r.close()
        await send_json(live, {"type": "echo_still"})
        f = await recv_json(live)
        check(f.get("topic") == "still", f"a live client answering pings was dropped: {f}")
        await live.close()
test_dead_peer_closed_after_ping_timeout.timeout = 20


async def test_subsecond_ping_interval_keeps_live_clients():
    """ping_interval 300ms / ping_timeout 1s: a client that answers pings stays connected (or the
    config is refused at start); it must not be cut off for want of pings the node never sent."""
    cfg = Config(node={"ping_interval": "300ms", "ping_timeout": "1s"})
    cfg.write()
    rc, out = harness.run_check(cfg.path)
    if rc != 0:
        return  # refusing a sub-second interval is a valid answer
    with Node(cfg, write=False) as n:
        live, _ = await connect_welcomed(n, "alive")  # websockets answers pings by itself
        await asyncio.sleep(2.5)
        try:
            await send_json(live, {"type": "echo_still"})
            f = await recv_json(live)
        except Exception as e:  # noqa: BLE001
            raise harness.TestFailure(f"a live client (answering pings) was dropped within 2.5 s: {e}")
        check(f.get("topic") == "still", f"{f}")
        await live.close()


async def test_silent_tcp_client_closed_after_handshake_timeout():
    with Node(Config(node={"handshake_timeout": "1s"})) as n:
        socks = []
        s1 = socket.create_connection(("127.0.0.1", n.port))  # says nothing
        s2 = socket.create_connection(("127.0.0.1", n.port))  # half a request
        s2.sendall(b"GET /ws?user_id=alice HTTP/1.1\r\nHost: x\r\n")
        socks = [s1, s2]
        t0 = time.monotonic()
        try:
            for i, s in enumerate(socks):
                s.settimeout(max(0.1, 5 - (time.monotonic() - t0)))
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
                except socket.timeout:
                    raise harness.TestFailure(f"silent client {i} still connected {time.monotonic() - t0:.1f}s "
                                              "after connecting (handshake_timeout 1s)")
        finally:
            for s in socks:
                s.close()
        await still_works(n)
test_silent_tcp_client_closed_after_handshake_timeout.timeout = 20


async def test_jwt_issuer_and_audience_checked():
    secret = "iss-aud-secret"
    cfg = Config(auth={"mode": "jwt", "secret": secret, "issuer": "relay-it", "audience": "relay-clients"})
    with Node(cfg) as n:
        ok = jwt_sign(jwt_claims("alice", iss="relay-it", aud="relay-clients"), secret)
        ws, d = await connect_welcomed(n, token=ok)
        check(d["user_id"] == "alice", f"{d}")
        await ws.close()
        ok_list = jwt_sign(jwt_claims("alice", iss="relay-it", aud=["other", "relay-clients"]), secret)
        st = await harness.http_status_of_upgrade(n, token=ok_list)
        check(st is None, f"aud as a list containing the audience: status {st}")
        bad = []
        for label, claims in (("wrong iss", jwt_claims("a", iss="evil", aud="relay-clients")),
                              ("no iss", jwt_claims("a", aud="relay-clients")),
                              ("wrong aud", jwt_claims("a", iss="relay-it", aud="others")),
                              ("no aud", jwt_claims("a", iss="relay-it")),
                              ("aud list without ours", jwt_claims("a", iss="relay-it", aud=["x", "y"]))):
            st = await harness.http_status_of_upgrade(n, token=jwt_sign(claims, secret))
            if st != 401:
                bad.append(f"{label}: {st if st is not None else 'UPGRADED'}")
        check(not bad, "iss/aud not enforced: " + "; ".join(bad))


async def test_jwt_small_clock_skew_tolerated():
    """exp a moment ago / nbf a moment ahead are accepted (small leeway); far off is refused."""
    secret = "skew-secret"
    with Node(Config(auth={"mode": "jwt", "secret": secret})) as n:
        now = int(time.time())
        st = await harness.http_status_of_upgrade(n, token=jwt_sign({"sub": "a", "exp": now - 2}, secret))
        check(st is None, f"exp 2 s ago refused ({st}); small leeway expected")
        st = await harness.http_status_of_upgrade(n, token=jwt_sign({"sub": "a", "exp": now + 60, "nbf": now + 2},
                                                                    secret))
        check(st is None, f"nbf 2 s ahead refused ({st}); small leeway expected")
        st = await harness.http_status_of_upgrade(n, token=jwt_sign({"sub": "a", "exp": now - 600}, secret))
        check(st == 401, f"exp 10 min ago: {st}")


LOGGER_PLUGIN = """
local log = require("logger"):named("shop"):with({order = 42, tier = "gold"})
local function run(args)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        log:info("paid", {amount = 9.5, msg = "shadowed", ok = true})
    end
end
return { run = run }
"""


async def test_plugin_logger_fields_are_fields_of_the_line():
    """logger:with{...} and a call's own fields are JSON fields of the log line (integers as
    numbers, the rest as strings), not text appended to the message; a field named like one of
    the line's own keys is renamed, so no line has a key twice."""
    with Node(_cfg(Plugin("log_plugin", "log_", "log.lua", text=LOGGER_PLUGIN))) as n:
        ws, _ = await connect_welcomed(n, "logger")
        await send_json(ws, {"type": "log_it"})
        deadline = time.monotonic() + 5
        while True:
            lines = [l for l in n.log_text().splitlines() if '"msg":"paid"' in l]
            if lines:
                break
            check(time.monotonic() < deadline, "no 'paid' line in the node log")
            await asyncio.sleep(0.05)
        raw = lines[0]
        d = json.loads(raw)
        check(d["msg"] == "paid" and d["plugin"] == "shop" and d["pid"].count(".") == 3, f"{raw}")
        check(d["order"] == 42 and d["tier"] == "gold" and d["amount"] == "9.5" and d["ok"] == "true",
              f"fields: {raw}")
        check(d["field.msg"] == "shadowed" and raw.count('"msg"') == 1, f"renamed: {raw}")
        await ws.close()


UUID_PLUGIN = """
local json = require("json")
local uuid = require("uuid")
local function run(args)
    local inbox = process.inbox()
    while true do
        local msg = inbox:receive()
        local p = msg:payload():data()
        local v4, v7, v1 = uuid.v4(), uuid.v7(), uuid.v1()
        local NS_URL = "6ba7b811-9dad-11d1-80b4-00c04fd430c8"
        local bad, err = uuid.version("nope")
        local r = {
            v4 = v4, v4ver = uuid.version(v4), v7ver = uuid.version(v7), v1ver = uuid.version(v1),
            variant = uuid.variant(v4), v7ts = uuid.parse(v7).timestamp,
            v1ts = uuid.parse(v1).timestamp, v1node = uuid.parse(v1).node,
            v5 = uuid.v5(NS_URL, "https://example.com/resource"),
            v3 = uuid.v3(NS_URL, "https://example.com/resource"),
            ok = uuid.validate(v4), notok = uuid.validate("x"), nonstr = uuid.validate(42),
            simple = uuid.format(v4, "simple"), urn = uuid.format(v4, "urn"),
            back = uuid.format(uuid.format(v4, "urn")), bad = bad == nil and err,
        }
        process.send(p.conn_pid, "uuid", r)
    end
end
return { run = run }
"""


async def test_uuid_module():
    """require("uuid") as on the platform: v1/v4/v7 with their versions and timestamps, v3/v5
    deterministic (the RFC 4122 example namespace), validate/version/variant/parse/format, and
    (nil, reason) for a bad input."""
    import uuid as pyuuid
    with Node(_cfg(Plugin("uuid_plugin", "uuid_", "uuid.lua",
                          modules=("json", "time", "logger", "uuid"), text=UUID_PLUGIN))) as n:
        ws, _ = await connect_welcomed(n, "uuidy")
        await send_json(ws, {"type": "uuid_go"})
        f = await recv_json(ws)
        d = f.get("data", {})
        check(f.get("topic") == "uuid", f"{f}")
        check(pyuuid.UUID(d["v4"]).version == 4 and d["v4ver"] == 4 and d["v7ver"] == 7
              and d["v1ver"] == 1 and d["variant"] == "RFC4122", f"{d}")
        now = time.time()
        check(abs(d["v7ts"] - now) < 10 and abs(d["v1ts"] - now) < 10 and len(d["v1node"]) == 12, f"{d}")
        ns = pyuuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
        check(d["v5"] == str(pyuuid.uuid5(ns, "https://example.com/resource")), f"v5 {d['v5']}")
        check(d["v3"] == str(pyuuid.uuid3(ns, "https://example.com/resource")), f"v3 {d['v3']}")
        check(d["ok"] is True and d["notok"] is False and d["nonstr"] is False, f"{d}")
        check(d["simple"] == d["v4"].replace("-", "") and d["urn"] == "urn:uuid:" + d["v4"]
              and d["back"] == d["v4"] and d["bad"] == "invalid uuid format", f"{d}")
        await ws.close()
