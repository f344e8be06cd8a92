"""Gateway: HTTP endpoints, identity (jwt / insecure), origins, listen override."""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import time

import websockets
import websockets.exceptions

import harness
from harness import (Config, Node, RawWS, check, connect, connect_welcomed, expect_close,
                     expect_error, http_get, http_status_of_upgrade, jwt_claims, jwt_sign,
                     metric_sum, recv_json, send_json)

SECRET = "integration-secret-0123456789abcdef"


def jwt_config(**kw):
    return Config(auth={"mode": "jwt", "secret": SECRET}, **kw)


async def test_healthz_readyz_metrics():
    with Node() as n:
        for path in ("/healthz", "/readyz"):
            st, _, _ = http_get(n.port, path)
            check(st == 200, f"{path} answered {st}")
        st, hdrs, body = http_get(n.port, "/metrics")
        check(st == 200, f"/metrics answered {st}")
        check(hdrs.get("content-type", "").startswith("text/plain"),
              f"/metrics content-type {hdrs.get('content-type')!r}")
        text = body.decode()
        for name in ("relay_connections", "relay_messages_in_total"):
            check(metric_sum(text, name) is not None, f"/metrics has no {name}:\n{text[:1500]}")
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "echo_x"})
        await recv_json(ws)
        text = n.metrics()
        check(metric_sum(text, "relay_connections") == 1,
              f"relay_connections = {metric_sum(text, 'relay_connections')} with one client open")
        check(metric_sum(text, "relay_messages_in_total") >= 1,
              f"relay_messages_in_total = {metric_sum(text, 'relay_messages_in_total')} after one message")
        await ws.close()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and metric_sum(n.metrics(), "relay_connections") != 0:
            time.sleep(0.05)
        check(metric_sum(n.metrics(), "relay_connections") == 0, "relay_connections did not return to 0")


async def test_unknown_http_path_is_404():
    with Node() as n:
        st, _, _ = http_get(n.port, "/no-such-page")
        check(st == 404, f"/no-such-page answered {st}")


async def test_jwt_bearer_header_accepted_with_meta():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims("alice", meta={"plan": "pro", "n": 3}), SECRET)
        ws, d = await connect_welcomed(n, token=tok)
        check(d["user_id"] == "alice", f"welcome user_id {d['user_id']!r}, token sub alice")
        await send_json(ws, {"type": "echo_whoami"})
        f = await recv_json(ws)
        check(f.get("type") == "whoami", f"whoami reply {f!r}")
        check(f.get("user_id") == "alice", f"plugin args.user_id {f.get('user_id')!r}")
        check(f.get("user_metadata") == {"plan": "pro", "n": 3},
              f"plugin args.user_metadata {f.get('user_metadata')!r}, token meta {{'plan':'pro','n':3}}")
        check(f.get("has_hub_pid") is True, "plugin args.user_hub_pid missing")
        await ws.close()


async def test_jwt_query_param_accepted():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims("qalice"), SECRET)
        ws, d = await connect_welcomed(n, user=None, query="x-auth-token=" + tok)
        check(d["user_id"] == "qalice", f"welcome user_id {d['user_id']!r}")
        await ws.close()


async def test_jwt_cookie_accepted():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims("calice"), SECRET)
        ws, d = await connect_welcomed(n, user=None, cookie=f"theme=dark; x-auth-token={tok}; other=1")
        check(d["user_id"] == "calice", f"welcome user_id {d['user_id']!r}")
        await ws.close()


async def test_jwt_mode_ignores_user_id_query():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims("alice"), SECRET)
        ws, d = await connect_welcomed(n, user="mallory", token=tok)
        check(d["user_id"] == "alice", f"?user_id=mallory overrode the token's sub: {d['user_id']!r}")
        await ws.close()
        st = await http_status_of_upgrade(n, user="bob")
        check(st == 401, f"jwt mode, ?user_id=bob and no token: status {st} (None = upgraded), expected 401")


def _refusal_cases():
    now = int(time.time())
    good = jwt_sign(jwt_claims("alice"), SECRET)
    h, p, s = good.split(".")
    tampered_payload = harness.b64url(json.dumps({"sub": "root", "exp": now + 3600}))
    return [
        ("no token", None),
        ("malformed", "not-a-jwt"),
        ("three garbage segments", "aaa.bbb.ccc"),
        ("expired (1h ago)", jwt_sign({"sub": "alice", "exp": now - 3600}, SECRET)),
        ("nbf in 1h", jwt_sign({"sub": "alice", "exp": now + 7200, "nbf": now + 3600}, SECRET)),
        ("alg none", jwt_sign({"sub": "alice", "exp": now + 3600}, SECRET, alg="none")),
        ("alg NONE upper", jwt_sign({"sub": "alice", "exp": now + 3600}, SECRET, alg="none",
                                    header={"alg": "NONE"})),
        ("HS256 header, empty signature", f"{h}.{p}."),
        ("HS256 header, two segments", f"{h}.{p}"),
        ("wrong secret", jwt_sign(jwt_claims("alice"), SECRET + "x")),
        ("HS512 with the right secret", jwt_sign(jwt_claims("alice"), SECRET, alg="HS512")),
        ("tampered payload", f"{h}.{tampered_payload}.{s}"),
        ("signature of another token", f"{h}.{p}.{jwt_sign(jwt_claims('bob'), SECRET).split('.')[2]}"),
    ]


async def test_jwt_refusals_are_401():
    with Node(jwt_config()) as n:
        bad = []
        for label, tok in _refusal_cases():
            for via in ("header", "query"):
                if tok is None and via == "query":
                    continue
                kw = {"token": tok} if via == "header" else {"query": "x-auth-token=" + tok}
                try:
                    st = await http_status_of_upgrade(n, **kw)
                except Exception as e:  # noqa: BLE001
                    st = f"{type(e).__name__}: {e}"
                if st != 401:
                    bad.append(f"{label} via {via}: {st if st is not None else 'UPGRADED'}")
        check(not bad, "tokens not refused with 401:\n  " + "\n  ".join(bad))
        # the node is fine afterwards
        tok = jwt_sign(jwt_claims("alice"), SECRET)
        ws, _ = await connect_welcomed(n, token=tok)
        await ws.close()


async def test_jwt_cookie_refusal_is_401():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims("alice"), SECRET + "wrong")
        st = await http_status_of_upgrade(n, cookie=f"x-auth-token={tok}")
        check(st == 401, f"badly signed cookie token: status {st}")


async def test_401_has_json_body_and_no_upgrade():
    with Node(jwt_config()) as n:
        for label, headers in (("no token", {}),
                               ("expired", {"Authorization": "Bearer " + jwt_sign(
                                   {"sub": "a", "exp": int(time.time()) - 3600}, SECRET)})):
            r = RawWS(n.port, "/ws", headers=headers, timeout=3)
            try:
                check(r.status == 401, f"{label}: status line {r.status_line!r}")
                check("upgrade" not in r.headers.get("connection", "").lower(),
                      f"{label}: 401 with Connection: {r.headers.get('connection')}")
                try:
                    body = json.loads(r.body.decode())
                except ValueError:
                    raise harness.TestFailure(f"{label}: 401 body is not JSON: {r.body[:300]!r}")
                check(isinstance(body, dict), f"{label}: 401 body is not an object: {body!r}")
                check("json" in r.headers.get("content-type", ""),
                      f"{label}: 401 content-type {r.headers.get('content-type')!r}")
            finally:
                r.close()


def _upgrade_with(port, lines, path="/ws?user_id=alice"):
    """Sends an upgrade request with exactly these extra header lines (no key or version of its
    own); returns (status, headers, body bytes) of the answer, (0, {}, b"") for none."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        req = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
               "Connection: Upgrade"] + lines
        s.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep and head.startswith(b"HTTP/1.1 101"):
                    break
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if sep and m and len(body) >= int(m.group(1)):
                    break
        except socket.timeout:
            pass
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    hl = head.decode("latin-1").split("\r\n")
    try:
        status = int(hl[0].split()[1])
    except (IndexError, ValueError):
        return 0, {}, b""
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in hl[1:])}
    return status, hdrs, body


async def test_bad_websocket_handshake_is_400():
    """RFC 6455 4.2.1: Sec-WebSocket-Version 13 and a Sec-WebSocket-Key of 16 bytes in base64,
    or HTTP 400 with a JSON body (and, for the version, the version the node speaks)."""
    key = "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode()
    v13 = "Sec-WebSocket-Version: 13"
    cases = [
        ("no version", [key], "Sec-WebSocket-Version"),
        ("version 8", [key, "Sec-WebSocket-Version: 8"], "Sec-WebSocket-Version"),
        ("version 14", [key, "Sec-WebSocket-Version: 14"], "Sec-WebSocket-Version"),
        ("3-byte key", ["Sec-WebSocket-Key: " + base64.b64encode(b"abc").decode(), v13],
         "Sec-WebSocket-Key"),
        ("17-byte key", ["Sec-WebSocket-Key: " + base64.b64encode(os.urandom(17)).decode(), v13],
         "Sec-WebSocket-Key"),
        ("key not base64", ["Sec-WebSocket-Key: " + "!" * 22 + "==", v13], "Sec-WebSocket-Key"),
        ("no key", [v13], "Sec-WebSocket-Key"),
    ]
    with Node() as n:
        wrong = []
        for label, lines, names in cases:
            st, hdrs, body = _upgrade_with(n.port, lines)
            try:
                b = json.loads(body.decode())
            except ValueError:
                b = None
            if st != 400 or not isinstance(b, dict) or b.get("error") != "bad_request" or \
                    names not in b.get("message", ""):
                wrong.append(f"{label}: {st} {body[:120]!r}")
            elif "Version" in names and hdrs.get("sec-websocket-version") != "13":
                wrong.append(f"{label}: 400 without Sec-WebSocket-Version: 13 ({hdrs})")
        check(not wrong, "; ".join(wrong))
        st, _, _ = _upgrade_with(n.port, [key, v13])
        check(st == 101, f"a good handshake answered {st}")
        rejected = metric_sum(n.metrics(), "relay_connections_rejected_total")
        check(rejected is not None and rejected >= len(cases), f"rejected handshakes counted: {rejected}")


def _jwt_raw(payload, secret=SECRET):
    """An HS256 token over these exact payload bytes (json.dumps cannot write invalid UTF-8)."""
    signing = harness.b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + harness.b64url(payload)
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + harness.b64url(sig)


def _refusal(port, path, headers, status, code):
    r = RawWS(port, path, headers=headers, timeout=3)
    try:
        try:
            body = json.loads(r.body.decode())
        except ValueError:
            body = None
        if r.status != status or not isinstance(body, dict) or body.get("error") != code or \
                "UTF-8" not in body.get("message", ""):
            return f"{path}: {r.status_line!r} {r.body[:160]!r}"
        return None
    finally:
        r.close()


async def test_user_id_not_utf8_refused_at_handshake():
    """A user id goes into the welcome frame, logs and Redis keys: one that is not valid UTF-8
    or holds control characters is refused before the upgrade (insecure: 400; jwt sub: 401)."""
    with Node() as n:
        wrong = [w for w in (_refusal(n.port, "/ws?user_id=" + q, None, 400, "bad_request")
                             for q in ("%ff%fe", "ab%c3", "%ed%a0%80", "a%01b", "a%7f", "%c2%85x"))
                 if w]
        check(not wrong, "; ".join(wrong))
        ws, d = await connect_welcomed(n, "%C5%BC%C3%B3%C5%82w")
        check(d["user_id"] == "żółw", f"a UTF-8 user id: welcome {d}")
        await ws.close()
    with Node(jwt_config()) as n:
        exp = int(time.time()) + 3600
        wrong = []
        for sub in (b'"\xff\xfe"', b'"ok\xc3"', b'"a\\u0001b"', b'"\\u0085x"', b'"a\x7f"'):
            tok = _jwt_raw(b'{"sub":' + sub + b',"exp":' + str(exp).encode() + b'}')
            w = _refusal(n.port, "/ws", {"Authorization": "Bearer " + tok}, 401, "unauthorized")
            if w:
                wrong.append(f"sub {sub!r}: {w}")
        check(not wrong, "; ".join(wrong))
        ws, d = await connect_welcomed(n, None, token=_jwt_raw(
            b'{"sub":"\xc5\xbc\xc3\xb3\xc5\x82w","exp":' + str(exp).encode() + b'}'))
        check(d["user_id"] == "żółw", f"a UTF-8 sub: welcome {d}")
        await ws.close()


async def test_jwt_without_sub_gets_missing_user_id():
    with Node(jwt_config()) as n:
        tok = jwt_sign(jwt_claims(None, meta={"x": 1}), SECRET)
        ws = await connect(n, token=tok)
        await expect_error(ws, "missing_user_id", request_id=None)
        await expect_close(ws, 1008, "missing_user_id")


async def test_insecure_without_user_id_gets_missing_user_id():
    with Node() as n:
        ws = await connect(n)
        await expect_error(ws, "missing_user_id", request_id=None)
        await expect_close(ws, 1008, "missing_user_id")
        ws = await connect(n, query="user_id=")
        await expect_error(ws, "missing_user_id", request_id=None)
        await expect_close(ws, 1008, "missing_user_id")


async def test_allowed_origins_enforced():
    with Node(Config(node={"allowed_origins": ["http://good.example", "https://app.example"]})) as n:
        ws, d = await connect_welcomed(n, "alice", origin="http://good.example")
        await ws.close()
        ws, d = await connect_welcomed(n, "alice", origin="https://app.example")
        await ws.close()
        for origin in ("http://evil.example", "http://good.example.evil.com", "null"):
            st = await http_status_of_upgrade(n, user="alice", origin=origin)
            check(st is not None and 400 <= st < 500,
                  f"Origin {origin} not refused: status {st if st is not None else 'UPGRADED'}")


async def test_no_allowed_origins_accepts_any_origin():
    with Node() as n:
        ws, _ = await connect_welcomed(n, "alice", origin="http://anything.example")
        await ws.close()


async def test_env_jwt_secret_override():
    cfg = Config(auth={"mode": "jwt"})
    with Node(cfg, env={"RELAY_JWT_SECRET": "from-env-secret"}) as n:
        ws, d = await connect_welcomed(n, token=jwt_sign(jwt_claims("envy"), "from-env-secret"))
        check(d["user_id"] == "envy", f"welcome user_id {d['user_id']!r}")
        await ws.close()
        st = await http_status_of_upgrade(n, token=jwt_sign(jwt_claims("envy"), SECRET))
        check(st == 401, f"token signed with another secret: status {st}")


async def test_listen_flag_overrides_config():
    cfg = Config()
    other = harness.free_port()
    with Node(cfg, args=["--listen", f"127.0.0.1:{other}"], port=other) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await ws.close()
        s = socket.socket()
        s.settimeout(0.5)
        try:
            refused = s.connect_ex(("127.0.0.1", cfg.port)) != 0
        finally:
            s.close()
        check(refused, f"the node still listens on the config's port {cfg.port} despite --listen")


def test_listen_address_that_cannot_be_bound_stops_the_node():
    """An unresolvable host or an address not on this machine stops the node with a clear error
    and exit 1 (lws 4.1 would log and run without a socket); --check catches what needs no
    bind. A port in use stops it too."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = [  # listen, fails --check, words in the error
        ("nosuchhost.invalid:8080", True, "cannot resolve host 'nosuchhost.invalid'"),
        ("999.1.2.3:8080", True, "cannot resolve host '999.1.2.3'"),
        ("[::1]:8080", True, "IPv6"),
        ("10.255.255.1:8080", False, "not an address of this machine"),
        (f"127.0.0.1:{busy.getsockname()[1]}", False, "in use"),
    ]
    wrong = []
    try:
        for listen, check_fails, words in cases:
            cfg = Config()
            cfg.node["listen"] = listen
            path = cfg.write()
            rc, out = harness.run_check(path)
            if check_fails and (rc == 0 or words not in out):
                wrong.append(f"--check with {listen}: rc {rc}: {out.strip()[-200:]}")
            if not check_fails and rc != 0:
                wrong.append(f"--check with {listen} should pass (it binds nothing): {out[-200:]}")
            p = subprocess.run([os.path.abspath(harness.NODE_BIN), "-c", path], env=harness.clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            out = p.stdout.decode("utf-8", "replace")
            if p.returncode != 1 or words not in out or "listening" in out:
                wrong.append(f"start with {listen}: rc {p.returncode}: {out.strip()[-300:]}")
    except subprocess.TimeoutExpired as e:
        wrong.append(f"a node kept running: {e}")
    finally:
        busy.close()
    check(not wrong, "\n".join(wrong))


async def test_listen_host_name_is_resolved():
    """A host name that resolves (localhost) is listened on at its address."""
    cfg = Config()
    cfg.node["listen"] = f"localhost:{cfg.port}"
    with Node(cfg) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await ws.close()


async def test_client_offering_permessage_deflate():
    """A client offering permessage-deflate (browsers do) still works (the node may decline it)."""
    with Node() as n:
        ws = await connect(n, user="alice", compression="deflate")
        await harness.welcome(ws)
        big = "y" * 30000
        await send_json(ws, {"type": "echo_big", "data": big})
        f = await recv_json(ws)
        check(f.get("payload", {}).get("data") == big, "30 KB echo through a deflate-offering client failed")
        await ws.close()


async def test_ws_path_other_than_ws_is_not_upgraded():
    with Node() as n:
        st = await http_status_of_upgrade(n, user="alice", path="/not-ws")
        check(st is not None and st >= 400, f"upgrade on /not-ws: status {st if st is not None else 'UPGRADED'}")


async def test_info_log_records_connects_closes_and_refusals():
    """At info level each connect, close and refusal is one JSON line with fields to filter on:
    the connection, user, node and peer; the close code, who closed and how long it lasted; the
    refusal's status or close code."""
    with Node(Config()) as n:
        ws, _ = await connect_welcomed(n, "loggy")
        await ws.close(code=4000, reason="bye")
        bare = await connect(n)  # no user_id: upgraded, then closed with missing_user_id
        await bare.wait_closed()
        try:
            await connect(n, "loggy", path="/nope")
        except Exception:  # noqa: BLE001 - refused with 404, as asserted from the log below
            pass
        deadline = time.monotonic() + 5
        while True:
            lines = [json.loads(l) for l in n.log_text().splitlines() if l.startswith("{")]
            by = {}
            for l in lines:
                by.setdefault(l.get("msg"), []).append(l)
            if "closed" in by and "refused" in by and "handshake refused" in by:
                break
            check(time.monotonic() < deadline, f"log lines missing: {sorted(by)}")
            await asyncio.sleep(0.05)
        c = [l for l in by.get("connected", []) if l.get("user") == "loggy"]
        check(c and c[0]["node"] and c[0]["peer"] == "127.0.0.1" and c[0]["conn"], f"connect: {c}")
        d = [l for l in by["closed"] if l.get("user") == "loggy"]
        check(d and d[0]["code"] == 4000 and d[0]["by"] == "client" and
              isinstance(d[0]["duration_ms"], int) and d[0]["conn"] == c[0]["conn"], f"close: {d}")
        r = by["refused"][0]
        check(r["code"] == 1008 and r["reason"] == "missing_user_id", f"refusal: {r}")
        h = by["handshake refused"][0]
        check(h["status"] == 404 and h["code"] == "not_found" and h["peer"] == "127.0.0.1", f"{h}")
