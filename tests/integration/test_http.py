"""The plugins' http module (require("http_client")) against a local HTTP server the test starts:
requests and answers, the allow-list, the bounds (time, size, concurrency), the loop staying free
while a request hangs, and requests of an instance that dies being cancelled."""
import asyncio
import json
import time

from harness import (Config, Node, Plugin, check, connect_welcomed, metric_sum, recv_json,
                     run_check, send_json)
from httpstub import Stub

MODS = ("json", "time", "logger", "http_client")


def plugins():
    return [
        Plugin("http_plugin", "http_", "http_probe.lua", modules=MODS),
        Plugin("http_child_plugin", "httpchild_", "http_child.lua", auto_start=False, modules=MODS),
        Plugin("echo_plugin", "echo_", "echo.lua"),
    ]


def config(stub, **http):
    h = {"allow": [f"http://127.0.0.1:{stub.port}/*"], "timeout": "3s",
         "max_response_bytes": 4096, "max_concurrent": 2, "max_concurrent_node": 8}
    h.update(http)
    return Config(plugins=plugins(), node={"http": h})


async def call(ws, rid, timeout=8.0, **p):
    await send_json(ws, dict(type="http_call", request_id=rid, **p))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"no http_result for {rid!r} within {timeout}s")
        f = await recv_json(ws, left)
        if isinstance(f, dict) and f.get("type") == "http_result" and f.get("request_id") == rid:
            return f.get("resp"), f.get("err")


async def expect_frame(ws, typ, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        f = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        if isinstance(f, dict) and f.get("type") == typ:
            return f


async def test_http_get_post_and_headers():
    with Stub() as stub, Node(config(stub)) as node:
        ws, _ = await connect_welcomed(node, "alice")
        resp, err = await call(ws, "g", form="get", url=stub.url("/echo"),
                               opts={"headers": {"X-Custom": "v1", "Accept": "application/json"},
                                     "query": {"q": "a b&c", "n": "1"}})
        check(err is None and resp, f"GET failed: {err!r}")
        check(resp["status_code"] == 200, f"status {resp['status_code']}")
        echo = json.loads(resp["body"])
        check(echo["method"] == "GET", f"method {echo['method']}")
        check(echo["headers"].get("x-custom") == "v1", f"headers sent: {echo['headers']}")
        check("q=a%20b%26c" in echo["path"] and "n=1" in echo["path"], f"query: {echo['path']}")
        check(resp["headers"].get("X-Stub") == "yes", f"response headers: {resp['headers']}")
        check(resp["headers"].get("Set-Thing") == "a, b", f"repeated header: {resp['headers']}")
        check(resp["headers"].get("Content-Type") == "application/json", f"{resp['headers']}")
        check(resp["body_size"] == len(resp["body"]), "body_size")

        resp, err = await call(ws, "p", form="post", url=stub.url("/echo"),
                               opts={"body": '{"x":1}',
                                     "headers": {"Content-Type": "application/json"}})
        check(err is None and resp["status_code"] == 200, f"POST: {err!r}")
        echo = json.loads(resp["body"])
        check(echo["method"] == "POST" and echo["body"] == '{"x":1}', f"POST echo: {echo}")
        check(echo["headers"].get("content-type") == "application/json", f"{echo['headers']}")
        check("expect" not in echo["headers"], "curl's Expect: 100-continue was sent")

        # the table form of the brief, and the platform's request(method, url, opts)
        resp, err = await call(ws, "t", form="table", method="PUT", url=stub.url("/echo"),
                               opts={"body": "put-body"})
        check(err is None and json.loads(resp["body"])["method"] == "PUT", f"PUT: {err!r}")
        resp, err = await call(ws, "d", form="request", method="delete", url=stub.url("/echo"))
        check(err is None and json.loads(resp["body"])["method"] == "DELETE", f"DELETE: {err!r}")
        resp, err = await call(ws, "h", form="head", url=stub.url("/echo"))
        check(err is None and resp["status_code"] == 200 and resp["body"] == "", f"HEAD: {resp!r} {err!r}")
        resp, err = await call(ws, "s", form="get", url=stub.url("/status/503"))
        check(err is None and resp["status_code"] == 503, "a 5xx is an answer, not an error")

        # header injection and reserved headers are refused before anything is sent
        n = len(stub.requests)
        _, err = await call(ws, "i", form="get", url=stub.url("/echo"),
                            opts={"headers": {"X-A": "v\r\nX-Injected: 1"}})
        check(err and "line break" in err, f"CRLF in a header value: {err!r}")
        _, err = await call(ws, "i2", form="get", url=stub.url("/echo"), opts={"headers": {"Host": "evil"}})
        check(err and "set by the node" in err, f"Host header: {err!r}")
        _, err = await call(ws, "i3", form="get", url=stub.url("/echo"), opts={"stream": True})
        check(err and "not supported" in err, f"unsupported option: {err!r}")
        check(len(stub.requests) == n, "a refused request reached the server")

        # NUL bytes: encoded in a query, refused in a header name or the URL
        resp, err = await call(ws, "n", form="nul", url=stub.url("/echo"))
        check(err is None and "q=a%00b" in (resp["path"] or ""), f"NUL in a query: {resp!r}")
        check("bad header name" in resp["e2"] and "NUL" in resp["e3"], f"NUL: {resp!r}")
        # the platform's URL helpers
        resp, err = await call(ws, "u1", form="encode_uri", url="hello world&x=1/\u00e9~")
        check(resp == "hello+world%26x%3D1%2F%C3%A9~", f"encode_uri: {resp!r}")
        resp, err = await call(ws, "u2", form="decode_uri", url="hello+world%26%C3%A9")
        check(resp == "hello world&\u00e9", f"decode_uri: {resp!r}")
        resp, err = await call(ws, "u3", form="decode_uri", url="bad%zz")
        check(resp is None and "invalid URL escape" in (err or ""), f"decode_uri bad: {resp!r} {err!r}")

        m = node.metrics()
        check(metric_sum(m, "relay_http_requests_total", 'client="plugin"') >= 6,
              "relay_http_requests_total{client=plugin}")
        await ws.close()


async def test_http_refused_destinations():
    with Stub() as stub, Node(config(stub)) as node:
        ws, _ = await connect_welcomed(node, "alice")
        p = stub.port
        bad = [
            (f"http://127.0.0.1:{p + 1 if p < 65535 else p - 1}/echo", "not allowed"),  # other port
            (f"https://127.0.0.1:{p}/echo", "not allowed"),            # other scheme
            (f"http://localhost:{p}/echo", "not allowed"),             # a name is not the address
            (f"http://127.0.0.1:{p}@evil.example/echo", "not allowed"),  # port part, then host evil
            (f"http://127.0.0.1:{p}:x@127.0.0.1:{p}/echo", "credentials"),
            (f"http://user@127.0.0.1:{p}/echo", "credentials"),
            # other spellings of 127.0.0.2 (curl reads them as that address, or we refuse them)
            (f"http://2130706434:{p}/echo", ""),
            (f"http://0x7f.0.0.2:{p}/echo", ""),
            (f"http://0177.0.0.2:{p}/echo", ""),
            (f"http://127.2:{p}/echo", ""),
            (f"http://127.0.0.2.:{p}/echo", "not allowed"),
            (f"http://[::ffff:127.0.0.1]:{p}/echo", "not allowed"),
            (f"http://127.0.0.1:{p}/a/%2e%2e/echo", "encoded"),
            (f"http://127.0.0.1:{p}/a/..%2fecho", "encoded"),
            ("file:///etc/passwd", "invalid URL"),
            ("ftp://127.0.0.1/x", "invalid URL"),
            ("gopher://127.0.0.1:70/x", "invalid URL"),
            ("not a url", "invalid URL"),
        ]
        for i, (url, why) in enumerate(bad):
            resp, err = await call(ws, f"b{i}", form="get", url=url)
            check(resp is None and err and why in err, f"{url}: expected an error naming {why!r}, "
                  f"got {resp!r} {err!r}")
        check(not stub.requests, f"refused URLs reached the server: {stub.requests}")
        # other spellings of the allowed address fetch exactly that address
        for i, url in enumerate([f"http://2130706433:{p}/echo", f"http://0x7f.1:{p}/echo",
                                 f"http://127.1:{p}/echo", f"http://127.0.0.1.:{p}/echo",
                                 f"HTTP://127.0.0.1:{p}/a/../echo", f"http://%31%32%37.0.0.1:{p}/echo"]):
            resp, err = await call(ws, f"s{i}", form="get", url=url)
            check((resp is None and err) or resp["url"] == stub.url("/echo"),
                  f"{url}: {resp!r} {err!r}")
        stub.requests.clear()

        # a redirect is answered as it is, never followed
        resp, err = await call(ws, "r", form="get", url=stub.url("/redirect"))
        check(err is None and resp["status_code"] == 302, f"redirect: {resp!r} {err!r}")
        check(resp["headers"].get("Location", "").startswith("http://127.0.0.2:"), "Location")
        check(len(stub.requests) == 1, f"the redirect was followed: {stub.requests}")

        m = node.metrics()
        check(metric_sum(m, "relay_http_failures_total", 'reason="not_allowed"') >= 4,
              "relay_http_failures_total{reason=not_allowed}")
        await ws.close()

    # nothing is allowed by default
    with Stub() as stub, Node(Config(plugins=plugins())) as node:
        ws, _ = await connect_welcomed(node, "alice")
        resp, err = await call(ws, "x", form="get", url=stub.url("/echo"))
        check(resp is None and "not allowed" in (err or ""), f"default allow-list: {resp!r} {err!r}")
        check(not stub.requests, "a request got out without an allow-list")
        await ws.close()


async def test_http_timeout():
    with Stub() as stub, Node(config(stub, timeout="1500ms")) as node:
        ws, _ = await connect_welcomed(node, "alice")
        t0 = time.monotonic()
        resp, err = await call(ws, "t1", form="get", url=stub.url("/slow?ms=3000"),
                               opts={"timeout": "300ms"})
        dt = time.monotonic() - t0
        check(resp is None and err == "timeout", f"per-request timeout: {resp!r} {err!r}")
        check(0.25 <= dt < 1.2, f"timed out after {dt:.2f}s, expected ~0.3s")
        # a longer timeout than http.timeout is cut to it (seconds, as on the platform)
        t0 = time.monotonic()
        resp, err = await call(ws, "t2", form="get", url=stub.url("/slow?ms=4000"),
                               opts={"timeout": 100})
        dt = time.monotonic() - t0
        check(err == "timeout" and 1.3 <= dt < 2.8, f"http.timeout bound: {err!r} after {dt:.2f}s")
        resp, err = await call(ws, "t3", form="get", url=stub.url("/slow?ms=100"), opts={"timeout": 2})
        check(err is None and resp["body"] == "slow done", f"within the timeout: {err!r}")
        m = node.metrics()
        check(metric_sum(m, "relay_http_failures_total", 'reason="timeout"') >= 2, "timeout counter")
        await ws.close()


async def test_http_oversized_response():
    with Stub() as stub, Node(config(stub, max_response_bytes=4096)) as node:
        ws, _ = await connect_welcomed(node, "alice")
        resp, err = await call(ws, "ok", form="get", url=stub.url("/big?n=4096"))
        check(err is None and resp["body_size"] == 4096, f"at the bound: {err!r}")
        resp, err = await call(ws, "big", form="get", url=stub.url("/big?n=4097"))
        check(resp is None and err == "response too large", f"Content-Length over: {resp!r} {err!r}")
        resp, err = await call(ws, "chunk", form="get", url=stub.url("/bigchunked?n=300000"))
        check(resp is None and err == "response too large", f"chunked over: {err!r}")
        resp, err = await call(ws, "own", form="get", url=stub.url("/big?n=200"),
                               opts={"max_response_body": 100})
        check(resp is None and err == "response too large", f"max_response_body: {err!r}")
        big = "y" * 5000
        resp, err = await call(ws, "req", form="post", url=stub.url("/status/201"),
                               opts={"body": big})
        check(err is None and resp["status_code"] == 201,
              f"a 5000-byte body under max_request_bytes (1 MiB): {err!r}")
        check(stub.requests[-1]["body"] == big, "the request body arrived whole")
        m = node.metrics()
        check(metric_sum(m, "relay_http_failures_total", 'reason="too_large"') >= 3, "too_large counter")
        await ws.close()


async def test_http_concurrency_bounds():
    with Stub() as stub, Node(config(stub, max_concurrent=2, max_concurrent_node=3)) as node:
        ws, _ = await connect_welcomed(node, "alice")
        reqs = [["GET", stub.url("/echo")], ["POST", stub.url("/echo"), {"body": "b"}]]
        resp, err = await call(ws, "b2", form="batch", requests=reqs)
        check(err is None and len(resp) == 2 and resp["2"]["status_code"] == 200,
              f"batch: {resp!r} {err!r}")
        check(json.loads(resp["2"]["body"])["method"] == "POST", "batch order")
        resp, err = await call(ws, "b3", form="batch", requests=reqs + [["GET", stub.url("/echo")]])
        check(resp is None and "max_concurrent" in (err or ""), f"over max_concurrent: {err!r}")
        # one refused item of a batch fails alone
        resp, err = await call(ws, "b4", form="batch",
                               requests=[["GET", stub.url("/echo")], ["GET", "http://10.0.0.1/"]])
        check(resp["1"]["status_code"] == 200 and "2" not in resp, f"mixed batch: {resp!r}")
        check("not allowed" in err.get("2", "") and "1" not in err, f"mixed batch: {err!r}")

        # node-wide: alice holds 2 hanging requests, bob one more; carol is refused
        await send_json(ws, {"type": "http_call", "request_id": "hang", "form": "batch",
                             "requests": [["GET", stub.url("/hang")], ["GET", stub.url("/hang")]]})
        wb, _ = await connect_welcomed(node, "bob")
        await send_json(wb, {"type": "http_call", "request_id": "hang", "form": "get",
                             "url": stub.url("/hang")})
        deadline = time.monotonic() + 3
        while stub.hangs_started < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        check(stub.hangs_started == 3, f"{stub.hangs_started} hanging requests reached the server")
        check(metric_sum(node.metrics(), "relay_http_in_flight") == 3, "relay_http_in_flight")
        wc, _ = await connect_welcomed(node, "carol")
        resp, err = await call(wc, "c", form="get", url=stub.url("/echo"))
        check(resp is None and "max_concurrent_node" in (err or ""), f"node-wide bound: {err!r}")
        check(metric_sum(node.metrics(), "relay_http_failures_total", 'reason="busy"') >= 2,
              "busy counter")
        # the hanging ones end at http.timeout (3 s) and the node takes requests again
        f = await expect_frame(wb, "http_result", timeout=6)
        check(f["err"] == "timeout", f"bob's hanging request: {f!r}")
        resp, err = await call(wc, "c2", form="get", url=stub.url("/echo"))
        check(err is None, f"after the hangs ended: {err!r}")
        for w in (ws, wb, wc):
            await w.close()
test_http_concurrency_bounds.timeout = 40


async def test_http_hang_does_not_block_others():
    with Stub() as stub, Node(config(stub, timeout="10s")) as node:
        wa, _ = await connect_welcomed(node, "alice")
        await send_json(wa, {"type": "http_call", "request_id": "hang", "form": "get",
                             "url": stub.url("/hang")})
        deadline = time.monotonic() + 3
        while stub.hangs_started < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        check(stub.hangs_started == 1, "the hanging request did not reach the server")
        wb, _ = await connect_welcomed(node, "bob")
        for i in range(5):
            t0 = time.monotonic()
            await send_json(wb, {"type": "echo_ping", "request_id": i})
            f = await recv_json(wb, 2)
            check(f.get("topic") == "ping", f"bob's echo: {f!r}")
            check(time.monotonic() - t0 < 0.5, "bob was kept waiting by alice's request")
            resp, err = await call(wb, f"e{i}", form="get", url=stub.url("/echo"))
            check(err is None and resp["status_code"] == 200, f"bob's own request: {err!r}")
        # alice's other plugins answer too: only her http instance waits
        await send_json(wa, {"type": "echo_ping"})
        f = await recv_json(wa, 2)
        check(f.get("topic") == "ping", f"alice's echo while her http plugin waits: {f!r}")
        await wa.close()
        await wb.close()
test_http_hang_does_not_block_others.timeout = 40


async def test_http_instance_killed_mid_request():
    with Stub() as stub:
        await killed_mid_request(stub)
        deadline = time.monotonic() + 3
        while stub.hangs_closed < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        check(stub.hangs_closed == 2, f"{stub.hangs_closed} of 2 hanging requests were closed")
test_http_instance_killed_mid_request.timeout = 40


async def killed_mid_request(stub):
    with Node(config(stub, timeout="30s")) as node:
        ws, _ = await connect_welcomed(node, "alice")
        await send_json(ws, {"type": "http_spawn_hang", "url": stub.url("/hang")})
        f = await expect_frame(ws, "spawned")
        check(f.get("pid"), f"spawn: {f!r}")
        deadline = time.monotonic() + 3
        while stub.hangs_started < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        check(stub.hangs_started == 1, "the child's request did not reach the server")
        await send_json(ws, {"type": "http_kill", "pid": f["pid"]})
        k = await expect_frame(ws, "killed")
        check(k.get("ok") is True, f"terminate: {k!r}")
        check(stub.hang_closed.wait(2), "the dead instance's request was not cancelled (socket open)")
        check(metric_sum(node.metrics(), "relay_http_in_flight") == 0, "a request is still in flight")
        # the node is fine and the plugin makes new requests
        resp, err = await call(ws, "after", form="get", url=stub.url("/echo"))
        check(err is None and resp["status_code"] == 200, f"after the kill: {err!r}")

        # shutdown with a request in flight: the node exits cleanly (checked by Node.__exit__)
        await send_json(ws, {"type": "http_call", "request_id": "hang2", "form": "get",
                             "url": stub.url("/hang")})
        deadline = time.monotonic() + 3
        while stub.hangs_started < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        check(stub.hangs_started == 2, "the second hanging request did not reach the server")
        await ws.close()


def test_http_bad_allow_pattern_fails_check():
    for pat, why in [("ftp://x/", "http:// or https://"), ("http://a@b/", "@"),
                     ("http://2130706433/", "canonical IPv4"), ("http://a.*.org/", "wildcard")]:
        cfg = Config(plugins=plugins(), node={"http": {"allow": [pat]}})
        rc, out = run_check(cfg.write())
        check(rc != 0 and "http.allow" in out and why in out, f"{pat}: rc {rc}, {out!r}")
