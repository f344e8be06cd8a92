"""TLS: relay.node tls {cert, key} (and RELAY_TLS_CERT / RELAY_TLS_KEY) serve https:// and wss://
on the listen port; a bad cert or key stops the node instead of letting it run without TLS."""
import asyncio
import http.client
import json
import os
import ssl
import subprocess
import time

import websockets
import websockets.exceptions

import harness
from harness import Config, Node, NodeStartError, Plugin, check, run_check


def make_cert(d, cert="c.pem", key="k.pem", cn="127.0.0.1"):
    """A self-signed RSA cert for 127.0.0.1 (CN and SAN) and its key, written into d."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=" + cn, "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", os.path.join(d, key), "-out", os.path.join(d, cert)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    return os.path.join(d, cert), os.path.join(d, key)


def client_ctx(cafile):
    """Trusts exactly cafile; the hostname (IP SAN 127.0.0.1) is checked."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    return ctx


def https_get(port, path, ctx, timeout=2.0):
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=ctx)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


class TLSNode(Node):
    """A node whose port speaks TLS: start() waits for https://.../healthz, trusting cafile."""

    def __init__(self, config, cafile, **kw):
        super().__init__(config, **kw)
        self.ctx = client_ctx(cafile)

    def start(self, timeout=harness.START_TIMEOUT):
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.rc = self.proc.returncode
                raise NodeStartError(f"{self.name} exited with {self.rc} during start-up "
                                     "(log below)")
            try:
                st, _, _ = https_get(self.port, "/healthz", self.ctx, timeout=0.5)
                if st == 200:
                    return self
            except (OSError, ssl.SSLError, http.client.HTTPException):
                pass
            time.sleep(0.03)
        raise NodeStartError(f"{self.name}: https /healthz on port {self.port} did not answer 200 "
                             f"within {timeout}s (log below)")

    async def connect(self, user, scheme="wss"):
        return await websockets.connect(
            f"{scheme}://127.0.0.1:{self.port}/ws?user_id={user}",
            ssl=self.ctx if scheme == "wss" else None, open_timeout=3, close_timeout=2,
            ping_interval=None, max_size=8 * 1024 * 1024)


def echo_config(node=None):
    return Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua")], node=node)


async def _welcome_and_echo(n):
    ws = await n.connect("alice")
    d = await harness.welcome(ws)
    check(d["user_id"] == "alice", f"welcome user_id {d['user_id']!r}")
    await harness.send_json(ws, {"type": "echo_ping", "request_id": "r1"})
    f = await harness.recv_json(ws)
    check(f.get("topic") == "ping" and f.get("payload", {}).get("request_id") == "r1",
          f"echo over wss: {json.dumps(f)[:300]}")
    return ws


async def test_tls_wss_and_https():
    cfg = echo_config({"console": True})
    cert, key = make_cert(cfg.dir)
    cfg.node["tls"] = {"cert": "c.pem", "key": "k.pem"}  # relative to the config's directory
    with TLSNode(cfg, cert) as n:
        ws = await _welcome_and_echo(n)
        # Messages larger than the gateway's 1 KB rx chunk and than one TLS record (16 KB) arrive
        # whole, one at a time and back to back (TLS-buffered rx needs lws's forced service).
        big = "z" * 60000
        await harness.send_json(ws, {"type": "echo_big", "data": big})
        f = await harness.recv_json(ws)
        check(f.get("payload", {}).get("data") == big, "60 KB echo over wss came back wrong")
        for i in range(20):
            await harness.send_json(ws, {"type": "echo_burst", "i": i, "data": "b" * 5000})
        got = [(await harness.recv_json(ws))["payload"]["i"] for _ in range(20)]
        check(got == list(range(20)), f"burst over wss came back as {got}")
        await ws.close()

        st, _, body = https_get(n.port, "/healthz", n.ctx)
        check(st == 200 and json.loads(body) == {"status": "ok"}, f"https /healthz: {st} {body!r}")
        st, hdrs, body = https_get(n.port, "/", n.ctx)
        check(st == 200 and hdrs.get("content-type", "").startswith("text/html"),
              f"https console page: {st} {hdrs.get('content-type')!r}")
        check(b"location.protocol==='https:'?'wss://'" in body,
              "the console page does not pick wss:// when it is served over https")

        # The port speaks TLS only: a plain WebSocket and plain HTTP both fail.
        try:
            plain = await n.connect("bob", scheme="ws")
        except (OSError, asyncio.TimeoutError, websockets.exceptions.InvalidHandshake,
                websockets.exceptions.ConnectionClosed):
            pass
        else:
            await plain.close()
            raise harness.TestFailure("a plain ws:// connection to the TLS port was upgraded")
        try:
            st, _, _ = harness.http_get(n.port, "/healthz", timeout=2)
        except (OSError, http.client.HTTPException):
            st = None
        check(st is None, f"plain http:// /healthz on the TLS port answered {st}")

        # The node is still fine after the plain attempts.
        ws = await _welcome_and_echo(n)
        await ws.close()
        log = n.log_text()
        check("TLS on" in log and cert in log, "the start log does not say TLS is on with the cert")


async def test_tls_from_environment():
    """RELAY_TLS_CERT / RELAY_TLS_KEY turn TLS on for a config without tls."""
    cfg = echo_config()
    cert, key = make_cert(cfg.dir)
    with TLSNode(cfg, cert, env={"RELAY_TLS_CERT": cert, "RELAY_TLS_KEY": key}) as n:
        ws = await _welcome_and_echo(n)
        await ws.close()


async def test_plain_node_logs_tls_off():
    with Node(echo_config()) as n:
        ws, _ = await harness.connect_welcomed(n, "alice")
        await ws.close()
        check("TLS off" in n.log_text(), "a node without tls does not log that TLS is off")


def test_tls_config_errors_fail_check():
    """Missing or unreadable files and half a pair fail --check naming the file, the entry and
    the reason."""
    cases = [
        ({"cert": "c.pem", "key": "missing-key.pem"}, ["tls.key", "missing-key.pem",
                                                        "no such file"]),
        ({"cert": "nope.pem", "key": "k.pem"}, ["tls.cert", "nope.pem", "no such file"]),
        ({"cert": "c.pem", "key": "."}, ["tls.key", "not a regular file"]),
        ({"cert": "c.pem"}, ["tls.cert and tls.key must be given together"]),
        ({"key": "k.pem"}, ["tls.cert and tls.key must be given together"]),
        ({"cert": "c.pem", "key": "k.pem", "ca": "c.pem"}, ["unknown key 'ca'"]),
    ]
    d = None
    for tls, reasons in cases:
        cfg = echo_config({"tls": tls})
        if d is None:
            d = cfg.dir
            make_cert(d)
        else:
            for f in ("c.pem", "k.pem"):
                os.link(os.path.join(d, f), os.path.join(cfg.dir, f))
        cfg.write()
        rc, out = run_check(cfg.path)
        check(rc != 0, f"--check accepted tls {tls}:\n{out}")
        low = out.lower()
        check(cfg.path in out and "entry node" in low, f"--check does not name the file and the "
              f"entry node for tls {tls}:\n{out}")
        for r in reasons:
            check(r.lower() in low, f"--check for tls {tls} does not say {r!r}:\n{out}")
    # the same files as absolute paths pass
    cfg = echo_config({"tls": {"cert": os.path.join(d, "c.pem"), "key": os.path.join(d, "k.pem")}})
    cfg.write()
    rc, out = run_check(cfg.path)
    check(rc == 0, f"--check refused a good absolute tls pair:\n{out}")
    rc, out = run_check(cfg.path, env={"RELAY_TLS_KEY": os.path.join(d, "gone.pem")})
    check(rc != 0 and "RELAY_TLS_KEY" in out and "gone.pem" in out,
          f"--check with RELAY_TLS_KEY naming a missing file: rc {rc}:\n{out}")


def test_tls_bad_pem_stops_the_node():
    """A key that is not the cert's (also of another type), garbage PEM, or an encrypted key: the
    node exits non-zero at start with a message naming the file, and never serves."""
    cfg0 = echo_config()
    d = cfg0.dir
    make_cert(d)
    make_cert(d, cert="c2.pem", key="k2.pem")
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                    os.path.join(d, "ec.pem")], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=30)
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-aes256", "-pass", "pass:secret", "-out", os.path.join(d, "enc.pem")],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    with open(os.path.join(d, "junk.pem"), "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cases = [
        ("c.pem", "k2.pem", "does not match"),
        ("c.pem", "ec.pem", "does not match"),  # lws itself would start and fail every handshake
        ("junk.pem", "k.pem", "not a PEM certificate"),
        ("c.pem", "junk.pem", "not a PEM private key"),
        ("k.pem", "k.pem", "not a PEM certificate"),
        ("c.pem", "enc.pem", "encrypted keys are not supported"),
    ]
    for cert, key, reason in cases:
        cfg = echo_config({"tls": {"cert": os.path.join(d, cert), "key": os.path.join(d, key)}})
        n = Node(cfg)
        n.spawn()
        rc = n.wait_exit(5)
        n.stop()
        log = n.log_text()
        check(rc is not None and rc != 0, f"tls {cert}/{key}: node exit {rc} (want non-zero):\n"
              + n.log_tail())
        check(reason in log and (cert in log or key in log),
              f"tls {cert}/{key}: the log does not say {reason!r} naming the file:\n"
              + n.log_tail())
        check("listening on" not in log, f"tls {cert}/{key}: the node said it was listening")
        rc, out = run_check(cfg.write())
        check(rc != 0 and reason in out, f"tls {cert}/{key}: --check did not refuse the pair "
                                         f"(rc {rc}): {out}")
