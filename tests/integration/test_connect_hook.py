"""The connect hook (relay.node connect_hook) against a local HTTP server the test starts: the
backend accepts (with metadata the plugin sees), denies (1008), is down or slow (the configured
on_failure: 1013 or accept), and the WebSocket waits for the answer without holding up others."""
import asyncio
import json
import time

from harness import (Config, Node, Plugin, check, connect, connect_welcomed, expect_close,
                     free_port, jwt_claims, jwt_sign, metric_sum, recv_json, send_json, welcome)
from httpstub import Stub

SECRET = "hook-test-secret-0123456789"


def config(stub, url=None, **hook):
    h = {"url": url or stub.url("/hook"), "timeout": "2s", "pass_headers": ["Cookie", "X-Trace"]}
    h.update(hook)
    plugins = [Plugin("echo_plugin", "echo_", "echo.lua")]
    return Config(plugins=plugins, auth={"mode": "jwt", "secret": SECRET},
                  node={"connect_hook": h})


def token(sub="alice", **extra):
    return jwt_sign(jwt_claims(sub=sub, **extra), SECRET)


async def whoami(ws):
    await send_json(ws, {"type": "echo_whoami"})
    f = await recv_json(ws)
    check(f.get("type") == "whoami", f"whoami: {f!r}")
    return f


async def test_hook_accepts_with_metadata():
    with Stub() as stub, Node(config(stub)) as node:
        stub.set_hook(body={"result": "accept",
                            "meta": {"plan": "pro", "big": 1234567890123456789, "tags": ["a"]}})
        tok = token(meta={"name": "Alice", "plan": "free"}, role="admin")
        ws = await connect(node, token=tok, cookie="sid=42",
                           headers={"X-Trace": "t-1", "X-Other": "no"})
        d = await welcome(ws)
        check(d["user_id"] == "alice", f"welcome: {d!r}")
        f = await whoami(ws)
        check(f["user_metadata"] == {"name": "Alice", "plan": "pro", "big": 1234567890123456789,
                                     "tags": ["a"]},
              f"user_metadata (token meta with the hook's laid over): {f['user_metadata']!r}")
        reqs = stub.hook_requests()
        check(len(reqs) == 1 and reqs[0]["method"] == "POST", f"hook calls: {reqs!r}")
        check(reqs[0]["headers"].get("Content-Type") == "application/json", "content type")
        body = json.loads(reqs[0]["body"])
        check(body["user_id"] == "alice" and body["meta"] == {"name": "Alice", "plan": "free"},
              f"hook request: {body!r}")
        check(body["claims"]["sub"] == "alice" and body["claims"]["role"] == "admin",
              f"claims: {body['claims']!r}")
        check(body["headers"] == {"cookie": "sid=42", "x-trace": "t-1"},
              f"passed headers (only those configured): {body['headers']!r}")
        check(body["client"]["ip"] == "127.0.0.1" and body["node"] == "n1", f"{body!r}")
        # an accept without meta keeps the token's
        stub.set_hook(body={"result": "accept"})
        ws2 = await connect(node, token=token(sub="bob", meta={"k": 1}))
        await welcome(ws2)
        f = await whoami(ws2)
        check(f["user_metadata"] == {"k": 1}, f"meta unchanged: {f['user_metadata']!r}")
        m = node.metrics()
        check(metric_sum(m, "relay_connect_hook_accepted_total") == 2, "accepted counter")
        check(metric_sum(m, "relay_http_requests_total", 'client="connect_hook"') == 2,
              "hook requests counter")
        await ws.close()
        await ws2.close()


async def test_hook_deny_closes_1008():
    with Stub() as stub, Node(config(stub)) as node:
        stub.set_hook(body={"result": "deny", "reason": "account suspended"})
        ws = await connect(node, token=token())
        f = await recv_json(ws)
        check(f.get("topic") == "error" and f["data"]["error"] == "connect_denied" and
              f["data"]["message"] == "account suspended", f"deny frame: {f!r}")
        await expect_close(ws, 1008, "connect_denied")
        stub.set_hook(status=403, body={"whatever": 1})
        ws = await connect(node, token=token())
        f = await recv_json(ws)
        check(f["data"]["error"] == "connect_denied", f"403: {f!r}")
        await expect_close(ws, 1008, "connect_denied")
        # a reason that is not UTF-8 is not put in a text frame; a long one is cut
        stub.set_hook(body=b'{"result":"deny","reason":"bad \xff byte"}')
        ws = await connect(node, token=token())
        f = await recv_json(ws)
        check(f["data"]["message"] == "Refused by the application", f"non-UTF-8 reason: {f!r}")
        await expect_close(ws, 1008, "connect_denied")
        stub.set_hook(body={"result": "deny", "reason": "\u00e9" * 100})
        ws = await connect(node, token=token())
        f = await recv_json(ws)
        check(f["data"]["message"] == "\u00e9" * 60, f"long reason: {f['data']['message']!r}")
        await expect_close(ws, 1008, "connect_denied")
        m = node.metrics()
        check(metric_sum(m, "relay_connect_hook_denied_total") == 4, "denied counter")
        # the node still serves others once the backend accepts again
        stub.set_hook(body={"result": "accept"})
        ws = await connect(node, token=token("carol"))
        await welcome(ws)
        await ws.close()


async def test_hook_backend_down_refuses_1013():
    with Stub() as stub, Node(config(stub, url=f"http://127.0.0.1:{free_port()}/hook")) as node:
        t0 = time.monotonic()
        ws = await connect(node, token=token())
        f = await recv_json(ws)
        check(f.get("topic") == "error" and f["data"]["error"] == "unavailable", f"{f!r}")
        await expect_close(ws, 1013, "unavailable")
        check(time.monotonic() - t0 < 1.5, "a refused connection took long to answer")
        check(metric_sum(node.metrics(), "relay_connect_hook_failed_total") == 1, "failed counter")
    # 5xx and an answer that is not the protocol count as failures too
    with Stub() as stub, Node(config(stub)) as node:
        for status, body in [(500, {"result": "accept"}), (200, b"not json"),
                             (200, {"result": "maybe"}), (200, {"result": "accept", "meta": 5}),
                             (200, b'{"result":"accept","meta":{"k":"\xff"}}'),
                             (404, b"")]:
            stub.set_hook(status=status, body=body)
            ws = await connect(node, token=token())
            f = await recv_json(ws)
            check(f["data"]["error"] == "unavailable", f"{status} {body!r}: {f!r}")
            await expect_close(ws, 1013)


async def test_hook_backend_down_accept_policy():
    with Node(config(None, url=f"http://127.0.0.1:{free_port()}/hook", on_failure="accept")) as node:
        ws = await connect(node, token=token(meta={"plan": "free"}))
        d = await welcome(ws)
        check(d["user_id"] == "alice", f"{d!r}")
        f = await whoami(ws)
        check(f["user_metadata"] == {"plan": "free"}, f"the token's meta: {f['user_metadata']!r}")
        check(metric_sum(node.metrics(), "relay_connect_hook_failed_total") == 1, "failed counter")
        await ws.close()


async def test_hook_slow_backend_times_out():
    with Stub() as stub, Node(config(stub, timeout="300ms")) as node:
        stub.set_hook(delay=3.0)
        t0 = time.monotonic()
        ws = await connect(node, token=token())
        f = await recv_json(ws, 3)
        dt = time.monotonic() - t0
        check(f["data"]["error"] == "unavailable", f"{f!r}")
        check(0.25 < dt < 1.5, f"answered after {dt:.2f}s, the hook timeout is 0.3s")
        await expect_close(ws, 1013)
    # the handshake timeout bounds the wait too
    with Stub() as stub:
        cfg = config(stub, timeout="30s")
        cfg.node["handshake_timeout"] = "1s"
        with Node(cfg) as node:
            stub.set_hook(delay=4.0)
            t0 = time.monotonic()
            ws = await connect(node, token=token())
            f = await recv_json(ws, 4)
            dt = time.monotonic() - t0
            check(f["data"]["error"] == "unavailable" and 0.9 < dt < 2.5,
                  f"handshake_timeout 1s: {f!r} after {dt:.2f}s")
            await expect_close(ws, 1013)
test_hook_slow_backend_times_out.timeout = 40


async def test_hook_wait_holds_frames_and_others():
    with Stub() as stub, Node(config(stub)) as node:
        stub.set_hook(delay=0.6)
        # frames sent before the answer are read once the user is accepted
        ws = await connect(node, token=token())
        await send_json(ws, {"type": "echo_ping", "request_id": "early"})
        # while alice waits for the backend, an insecure-free path still answers: /healthz
        from harness import http_get
        t0 = time.monotonic()
        st, _, _ = http_get(node.port, "/healthz")
        check(st == 200 and time.monotonic() - t0 < 0.3, "the loop was held by the hook")
        d = await welcome(ws, timeout=3)
        check(d["user_id"] == "alice", f"{d!r}")
        f = await recv_json(ws)
        check(f.get("topic") == "ping" and f["payload"]["request_id"] == "early",
              f"the early frame: {f!r}")
        # a client that leaves while its hook is out: the node stays well
        ws2 = await connect(node, token=token("dave"))
        await ws2.close()
        await asyncio.sleep(0.8)
        stub.set_hook()
        ws3, _ = await connect_welcomed(node, "x", token=token("erin"))
        await ws3.close()
        await ws.close()


def test_hook_config_errors():
    from harness import run_check
    for hook, why in [({"url": "ftp://x/"}, "connect_hook.url"),
                      ({"url": "http://u@x/"}, "connect_hook.url"),
                      ({"url": "http://x/", "on_failure": "maybe"}, "connect_hook.on_failure"),
                      ({"url": "http://x/", "pass_headers": ["Bad Header"]}, "pass_headers")]:
        cfg = Config(plugins=[], node={"connect_hook": hook})
        rc, out = run_check(cfg.write())
        check(rc != 0 and why in out, f"{hook}: rc {rc}, {out!r}")


async def test_hook_pending_at_shutdown():
    with Stub() as stub:
        node = Node(config(stub, timeout="10s"))
        node.start()
        stub.set_hook(delay=4.0)
        ws = await connect(node, token=token())
        deadline = time.monotonic() + 2
        while not stub.hook_requests() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        check(stub.hook_requests(), "the hook request did not reach the backend")
        t0 = time.monotonic()
        node.proc.send_signal(__import__("signal").SIGTERM)
        await expect_close(ws, 1001, timeout=3)
        rc = node.wait_exit(5)
        check(rc == 0, f"exit code {rc} with a hook in flight")
        check(time.monotonic() - t0 < 3, "shutdown waited for the hook")
        node.stop()
        text = node.log_text()
        for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            check(mark not in text, f"sanitizer report: {mark}")
test_hook_pending_at_shutdown.timeout = 30
