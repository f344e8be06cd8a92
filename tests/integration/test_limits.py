"""Limits and abuse: message_too_large, slow_consumer, overloaded, garbage the node must survive."""
import asyncio
import json
import socket
import struct
import time

import harness
from harness import (Config, Node, Plugin, RawWS, check, connect, connect_welcomed, drain_until_closed,
                     expect_close, expect_error, metric_code_count, parse_close, recv_json, send_json,
                     still_works)


def _msg_of_size(size, typ="echo_big"):
    base = json.dumps({"type": typ, "data": ""})
    pad = size - len(base)
    s = json.dumps({"type": typ, "data": "x" * pad})
    assert len(s) == size
    return s


async def test_message_at_limit_is_routed():
    with Node() as n:  # max_message_bytes 65536
        ws, _ = await connect_welcomed(n, "alice")
        for size in (60000, 65536):
            m = _msg_of_size(size)
            await ws.send(m)
            f = await recv_json(ws, timeout=5)
            check(f.get("topic") == "big" and len(f["payload"]["data"]) == len(json.loads(m)["data"]),
                  f"{size}-byte message not echoed intact")
        await ws.close()


async def test_message_too_large_closes_1009():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        other, _ = await connect_welcomed(n, "alice")
        await ws.send(_msg_of_size(65537))
        frames = await expect_close(ws, 1009, "message_too_large", timeout=5)
        for raw in frames:
            f = json.loads(raw)
            check(f.get("topic") == "error" and f["data"].get("error") == "message_too_large",
                  f"frame before the 1009 close: {raw[:200]!r}")
        # the user's other connection and the node are fine
        await send_json(other, {"type": "echo_ok"})
        f = await recv_json(other)
        check(f.get("topic") == "ok", f"other connection after 1009: {f}")
        c = metric_code_count(n.metrics(), "message_too_large")
        check(c is not None and c >= 1, f"message_too_large not counted in /metrics (got {c})")
        await other.close()
        await still_works(n)


async def test_message_too_large_much_larger():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await ws.send(_msg_of_size(3 * 1024 * 1024))
        await expect_close(ws, 1009, "message_too_large", timeout=5)
        await still_works(n)


def _raw_welcome(r):
    op, data = r.recv_message()
    check(op == 1, f"first raw frame opcode {op}")
    f = json.loads(data)
    check(f.get("topic") == "welcome", f"raw first frame {f}")


def _raw_until_close(r, timeout=5.0):
    """Reads until a close frame or EOF; returns (close_code, reason, data_frames)."""
    r.sock.settimeout(timeout)
    frames = []
    try:
        while True:
            op, data = r.recv_message()
            if op == 8:
                code, reason = parse_close(data)
                return code, reason, frames
            if op in (1, 2):
                frames.append(data)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return None, "EOF", frames
    except socket.timeout:
        return "timeout", "", frames


async def test_message_too_large_fragmented():
    """The limit applies to the whole message, not to each fragment."""
    with Node() as n:
        r = RawWS(n.port, "/ws?user_id=alice")
        try:
            check(r.status == 101, f"handshake {r.status_line}")
            _raw_welcome(r)
            chunk = b"x" * 20000
            r.send_frame(0x1, b'{"type":"echo_big","data":"' + chunk, fin=False)
            try:
                for _ in range(4):
                    r.send_frame(0x0, chunk, fin=False)
                r.send_frame(0x0, b'"}', fin=True)
            except (BrokenPipeError, ConnectionResetError):
                pass
            code, reason, frames = _raw_until_close(r)
            check(code == 1009 and "message_too_large" in reason,
                  f"102 KB message in 20 KB fragments: close {code} {reason!r}")
        finally:
            r.close()
        await still_works(n)


async def test_fragmented_message_routed():
    with Node() as n:
        r = RawWS(n.port, "/ws?user_id=alice")
        try:
            _raw_welcome(r)
            msg = json.dumps({"type": "echo_frag", "data": "z" * 5000, "request_id": "f1"}).encode()
            parts = [msg[:10], msg[10:3000], msg[3000:]]
            r.send_frame(0x1, parts[0], fin=False)
            r.send_frame(0x9, b"ping-in-between")  # control frames may interleave
            r.send_frame(0x0, parts[1], fin=False)
            r.send_frame(0x0, parts[2], fin=True)
            got_pong = False
            while True:
                op, data = r.recv_message()
                if op == 0xA:
                    got_pong = data == b"ping-in-between"
                    continue
                f = json.loads(data)
                check(f.get("topic") == "frag" and f["payload"]["request_id"] == "f1"
                      and len(f["payload"]["data"]) == 5000, f"fragmented message reply {str(f)[:200]}")
                break
            if not got_pong:
                r.sock.settimeout(1)
                try:
                    op, data = r.recv_message()
                    got_pong = op == 0xA and data == b"ping-in-between"
                except socket.timeout:
                    pass
            check(got_pong, "no pong for a client ping")
        finally:
            r.close()


async def test_slow_consumer_closed_node_survives():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("flood_plugin", "flood_", "flood.lua")],
                 node={"max_outbound_bytes": 65536})
    with Node(cfg) as n:
        r = RawWS(n.port, "/ws?user_id=slowpoke", rcvbuf=4096)
        try:
            check(r.status == 101, f"handshake {r.status_line}")
            _raw_welcome(r)
            N, SIZE = 300, 60000
            r.send_text(json.dumps({"type": "flood_go", "data": {"n": N, "size": SIZE}}))
            # stop reading; the node must cut this client off and stay healthy meanwhile
            deadline = time.monotonic() + 8
            counted = None
            while time.monotonic() < deadline:
                st, _, _ = harness.http_get(n.port, "/healthz")
                check(st == 200, f"/healthz {st} while a client does not read")
                counted = metric_code_count(n.metrics(), "slow_consumer")
                if counted:
                    break
                await asyncio.sleep(0.2)
            # now read what is there
            received = 0
            r.sock.settimeout(5)
            code, reason = "timeout", ""
            try:
                while True:
                    op, data = r.recv_message()
                    if op == 8:
                        code, reason = parse_close(data)
                        break
                    received += len(data)
            except (EOFError, ConnectionResetError):
                code, reason = None, "EOF"
            except socket.timeout:
                pass
            check(code != "timeout", f"slow client still connected after the flood "
                                     f"({received} bytes read, slow_consumer metric {counted})")
            check(received < N * SIZE, f"the whole flood ({received} bytes) was delivered: "
                                       "no slow_consumer cut-off with max_outbound_bytes 65536")
            check(code == 1008 and "slow_consumer" in reason,
                  f"slow client closed with {code} {reason!r}, expected 1008 slow_consumer "
                  f"(read {received} bytes; slow_consumer metric {counted})")
        finally:
            r.close()
        check(counted, "slow_consumer not counted in /metrics")
        await still_works(n)
        ws, d = await connect_welcomed(n, "slowpoke")
        check(d["client_count"] == 1, f"slowpoke's connection still counted after the cut-off: {d}")
        await ws.close()
test_slow_consumer_closed_node_survives.timeout = 40


async def test_slow_consumer_close_frame_follows_a_partly_sent_frame():
    """The cut comes while lws still holds part of a frame (the socket's buffers are full): the
    client that reads again within RL_GW_CLOSE_FLUSH_S gets the rest of that frame and then the
    slow_consumer close frame, not a bare TCP close."""
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("flood_plugin", "flood_", "flood.lua")],
                 node={"max_outbound_bytes": 1048576})  # > one turn of the flood (8 x 60000)
    with Node(cfg) as n:
        r = RawWS(n.port, "/ws?user_id=slowpoke", rcvbuf=4096)
        try:
            _raw_welcome(r)
            r.send_text(json.dumps({"type": "flood_go", "data": {"n": 400, "size": 60000}}))
            deadline = time.monotonic() + 8
            while not metric_code_count(n.metrics(), "slow_consumer"):
                check(time.monotonic() < deadline, "no slow_consumer cut while the client reads nothing")
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            code, reason, frames = _raw_until_close(r, timeout=5)
            check(frames and all(len(f) == 60000 for f in frames),
                  f"frames before the close: {[len(f) for f in frames][:10]}")
            check(code == 1008 and reason == "slow_consumer",
                  f"after {len(frames)} whole frames: close {code} {reason!r}, expected 1008 "
                  "'slow_consumer'")
        finally:
            r.close()
        await still_works(n)
test_slow_consumer_close_frame_follows_a_partly_sent_frame.timeout = 30


async def test_overloaded_plugin_queue_answers_everything():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("slow_plugin", "slow_", "slow.lua")],
                 params={"queue_multiplier": "1"}, node={"plugin_queue": 2})
    with Node(cfg) as n:
        ws, _ = await connect_welcomed(n, "alice")
        N = 12
        for i in range(N):
            await send_json(ws, {"type": "slow_work", "request_id": f"w{i}"})
        answers = {}
        deadline = time.monotonic() + 10
        while len(answers) < N and time.monotonic() < deadline:
            f = await recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
            if f.get("type") == "slow_done":
                rid, kind = f.get("request_id"), "done"
            elif f.get("topic") == "error":
                rid, kind = f["data"].get("request_id"), f["data"].get("error")
            else:
                raise harness.TestFailure(f"unexpected frame {f}")
            check(rid not in answers, f"{rid} answered twice ({answers.get(rid)}, {kind})")
            answers[rid] = kind
        check(len(answers) == N, f"only {len(answers)} of {N} answered: {answers}")
        kinds = set(answers.values())
        check(kinds <= {"done", "overloaded"}, f"answers {answers}")
        check("overloaded" in kinds, f"no overloaded with plugin_queue 2 and 12 queued messages: {answers}")
        check("done" in kinds, f"nothing processed: {answers}")
        await send_json(ws, {"type": "echo_after"})
        f = await recv_json(ws)
        check(f.get("topic") == "after", f"connection after overloaded: {f}")
        c = metric_code_count(n.metrics(), "overloaded")
        check(c is not None and c >= 1, f"overloaded not counted in /metrics (got {c})")
        await ws.close()


async def test_pipelined_burst_every_message_answered():
    """2000 messages sent without waiting: every one is echoed or refused with overloaded."""
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        N = 2000
        for i in range(N):
            await send_json(ws, {"type": "echo_b", "request_id": i})
        seen = {}
        deadline = time.monotonic() + 15
        while len(seen) < N and time.monotonic() < deadline:
            f = await recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
            if f.get("topic") == "error":
                check(f["data"].get("error") == "overloaded", f"unexpected error {f}")
                rid = f["data"].get("request_id")
            else:
                rid = f["payload"]["request_id"]
            check(rid not in seen, f"request {rid} answered twice")
            seen[rid] = f.get("topic")
        check(len(seen) == N, f"{N - len(seen)} of {N} pipelined messages never answered")
        echoed = [i for i in range(N) if seen.get(i) == "b"]
        check(echoed == sorted(echoed), "echo order")
        await ws.close()
test_pipelined_burst_every_message_answered.timeout = 40


def _tcp_garbage(port, data, read=True):
    s = socket.socket()
    s.settimeout(2)
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(data)
        if read:
            try:
                s.recv(4096)
            except (socket.timeout, ConnectionResetError):
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        s.close()


async def test_node_survives_http_garbage():
    with Node() as n:
        _tcp_garbage(n.port, b"\x00\xff\xfe garbage \x01\x02\r\n\r\n")
        _tcp_garbage(n.port, b"GET /ws HTTP/1.1\r\n", read=False)  # incomplete, then gone
        _tcp_garbage(n.port, b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100000 + b"\r\n\r\n")
        _tcp_garbage(n.port, b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\nabc")
        _tcp_garbage(n.port, b"GET /ws?user_id=%ZZ%00 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")  # no key
        _tcp_garbage(n.port, b"GET /ws?user_id=alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 99\r\n\r\n")
        for _ in range(20):  # connect-and-drop
            s = socket.socket()
            s.connect(("127.0.0.1", n.port))
            s.close()
        await still_works(n)


async def test_node_survives_websocket_garbage():
    with Node() as n:
        cases = [
            ("binary frame", lambda r: r.send_frame(0x2, b'{"type":"echo_x"}')),
            ("invalid utf-8 text", lambda r: r.send_frame(0x1, b'{"type":"echo_\xff\xfe"}')),
            ("unmasked frame", lambda r: r.send_frame(0x1, b'{"type":"echo_x"}', mask=False)),
            ("reserved opcode", lambda r: r.send_frame(0x3, b"abc")),
            ("rsv bits", lambda r: r.send_frame(0x1, b'{"type":"echo_x"}', rsv=7)),
            ("huge declared length", lambda r: r.sock.sendall(
                struct.pack("!BBQ", 0x81, 0xFF, 1 << 62) + b"\x00\x00\x00\x00" + b"x" * 100)),
            ("continuation without start", lambda r: r.send_frame(0x0, b"abc")),
            ("fragmented control frame", lambda r: r.send_frame(0x9, b"abc", fin=False)),
            ("control frame > 125", lambda r: r.send_frame(0x9, b"p" * 200)),
            ("half a header then gone", lambda r: r.sock.sendall(b"\x81")),
        ]
        outcomes = []
        for i, (label, act) in enumerate(cases):
            r = RawWS(n.port, f"/ws?user_id=garbage{i}")
            try:
                check(r.status == 101, f"{label}: handshake {r.status_line}")
                _raw_welcome(r)
                try:
                    act(r)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                code, reason, frames = _raw_until_close(r, timeout=1.0) if label != "half a header then gone" \
                    else (None, "", [])
                outcomes.append(f"{label}: close {code} {reason!r} frames {[f[:80] for f in frames]}")
            finally:
                r.close()
            st, _, _ = harness.http_get(n.port, "/healthz")
            check(st == 200 and n.alive(), f"node down after {label}\n" + "\n".join(outcomes))
        # protocol violations must not leave the connection open forever: we waited 1 s each
        await still_works(n)
        # the abused users' hubs are in a sane state: their connections were all released
        await asyncio.sleep(0.3)
        for i in range(len(cases)):
            ws, d = await connect_welcomed(n, f"garbage{i}")
            check(d["client_count"] == 1, f"garbage{i}: a dead connection is still counted: {d}")
            await ws.close()


async def test_node_survives_json_garbage():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        await ws.send("[" * 30000 + "]" * 30000)
        f = await recv_json(ws)
        check(f.get("topic") == "error" and f["data"].get("error") in ("invalid_json", "unknown_command"),
              f"30000-deep array: {str(f)[:200]}")
        # Nested data, valid JSON far below cJSON's limit: each message is either echoed intact
        # or refused with an error carrying its request_id; never lost without a word.
        lost = []
        for depth in (50, 120, 126, 130, 200, 500):
            deep = {"v": 1}
            for _ in range(depth):
                deep = {"d": deep}
            await send_json(ws, {"type": "echo_deep", "data": deep, "request_id": depth})
            try:
                f = await recv_json(ws, timeout=2)
            except harness.TestFailure:
                lost.append(depth)
                continue
            if f.get("topic") == "error":
                # too deep may be refused as invalid_json (then the request_id cannot be read)
                check(f["data"].get("request_id") == depth or
                      (f["data"].get("error") == "invalid_json" and "request_id" not in f["data"]),
                      f"depth {depth}: error without its request_id {f}")
            else:
                check(f.get("payload", {}).get("data") == deep, f"depth {depth}: echo not intact")
        check(not lost, f"messages with data nested {lost} levels deep got no answer at all "
                        "(neither echo nor error)")
        for raw in ('{"type":"echo_x","type":"echo_y"}', '{"type":"echo_\\u0000nul"}',
                    '{"type":"echo_x","data":1e999}', '{"type":"echo_x","data":"\\ud800"}',
                    '{"type":"echo_x","n":-0,"big":123456789012345678901234567890}',
                    json.dumps({"type": "echo_unicode", "data": "żółw 🐢 \u2028"})):
            await ws.send(raw)
            f = await recv_json(ws, timeout=5)
            check(isinstance(f, dict), f"reply to {raw!r}: {f!r}")
        await send_json(ws, {"type": "echo_unicode2", "data": "żółw 🐢"})
        f = await recv_json(ws)
        check(f.get("payload", {}).get("data") == "żółw 🐢", f"unicode round trip: {f}")
        await ws.close()
        await still_works(n)


async def test_rfc6455_violations_fail_the_connection():
    """RFC 6455: invalid UTF-8 in a text frame -> close 1007 (5.6, 8.1).
    Not asserted: an unmasked client frame should fail the connection (5.1), but lws 4.1.6's
    server-side parser does not check the mask bit (only its client side does); see the node's
    known limitations. The node must at least survive it (test_node_survives_websocket_garbage)."""
    with Node() as n:
        results = []
        for i, (label, act, codes) in enumerate((
                ("invalid utf-8 text", lambda r: r.send_frame(0x1, b'{"type":"echo_\xff\xfe"}'), (1007,)),)):
            r = RawWS(n.port, f"/ws?user_id=rfc{i}")
            try:
                _raw_welcome(r)
                act(r)
                code, reason, frames = _raw_until_close(r, timeout=2.0)
                if code not in codes:
                    results.append(f"{label}: close {code} {reason!r}, frames {[f[:70] for f in frames]}; "
                                   f"expected close {codes[0]}")
            finally:
                r.close()
        check(not results, "; ".join(results))
        await still_works(n)


async def test_malformed_close_payload_is_failed():
    """RFC 6455 5.5.1 / 7.4: a close payload of one byte, a code no endpoint may send, or a
    reason that is not UTF-8 is answered with 1002 / 1007, not echoed; a good close is echoed
    as it came."""
    cases = [
        ("one byte", b"\x03", 1002),
        ("code 999", struct.pack("!H", 999), 1002),
        ("code 1005", struct.pack("!H", 1005), 1002),
        ("code 2999", struct.pack("!H", 2999), 1002),
        ("code 5000", struct.pack("!H", 5000), 1002),
        ("code 65535", struct.pack("!H", 65535), 1002),
        ("reason not UTF-8", struct.pack("!H", 1000) + b"bye \xff\xfe", 1007),
        ("reason cut in a sequence", struct.pack("!H", 1000) + "żół".encode()[:-1], 1007),
        ("good close", struct.pack("!H", 1000) + "bye żółw".encode(), 1000),
        ("code 4000", struct.pack("!H", 4000), 4000),
    ]
    with Node() as n:
        wrong = []
        for i, (label, payload, want) in enumerate(cases):
            r = RawWS(n.port, f"/ws?user_id=closer{i}")
            try:
                _raw_welcome(r)
                r.send_frame(0x8, payload)
                code, reason, _ = _raw_until_close(r, timeout=2.0)
                if code != want:
                    wrong.append(f"{label}: close {code} {reason!r}, expected {want}")
            finally:
                r.close()
        check(not wrong, "; ".join(wrong))
        await still_works(n)
        await asyncio.sleep(0.2)
        for i in range(len(cases)):
            ws, d = await connect_welcomed(n, f"closer{i}")
            check(d["client_count"] == 1, f"closer{i}: the closed connection is still counted: {d}")
            await ws.close()


async def test_hub_and_plugin_read_a_message_one_way():
    """What a C reader would cut short or RFC 8259 forbids is refused at the gateway (a \\u0000
    escape or a raw control byte inside a string); a repeated top-level "type" (or "conn_pid")
    is invalid JSON, since the hub routes on it; any other repeated key is read the same way by
    the hub and the plugin: the first value wins."""
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice")
        for raw in ('{"type":"echo_x","data":"a\\u0000b","request_id":"n1"}',
                    '{"type":"echo_x","k\\u0000x":1,"request_id":"n2"}',
                    '{"type":"echo_x","data":"tab\there","request_id":"n3"}'):
            await ws.send(raw)
            await expect_error(ws, "invalid_json", request_id=None)
        for raw in ('{"type":"echo_first","type":"echo_second"}',
                    '{"type":"echo_x","conn_pid":"a","conn_pid":"b","request_id":"c1"}',
                    '{"typ\\u0065":"echo_x","type":"echo_y"}'):
            await ws.send(raw)
            await expect_error(ws, "invalid_json", request_id=None)
        await ws.send('{"type":"echo_first","data":{"k":1,"k":2},"request_id":"r1","request_id":"r2"}')
        f = await recv_json(ws)
        check(f.get("topic") == "first", f"routed: {f}")
        p = f.get("payload", {})
        check(p.get("type") == "echo_first", f"the plugin reads the type: {p}")
        check(p.get("data") == {"k": 1}, f"the plugin reads the first of a repeated key: {p}")
        check(p.get("request_id") == "r1", f"the plugin reads the first request_id: {p}")
        await ws.close()
        await still_works(n)
