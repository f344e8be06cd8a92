"""Integration harness: real relay-node processes, real WebSocket clients, HS256 JWTs.

Everything here uses the standard library plus python3-websockets 10.4 (legacy asyncio API).
A test builds a config with `Config`, starts a `Node` (a context manager), then drives it with
`connect()` (websockets) or `RawWS` (a tiny hand-rolled client for what websockets cannot do:
refusing to read, reading a 401 body, sending malformed frames).
"""
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import websockets
import websockets.exceptions

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_DIR = os.path.join(HERE, "plugins")

# Set by run.py from --node.
NODE_BIN = os.environ.get("RELAY_NODE_BIN", "build/relay-node")
# Nodes started during the current test (run.py prints their logs on failure and stops leftovers).
LIVE_NODES = []
# Every node started during the current test, stopped or not (for the failure report).
STARTED_NODES = []
# Temp dirs made during the current test (run.py removes them after a passing test).
TEMP_DIRS = []
KEEP_TEMP = False

START_TIMEOUT = 5.0
STOP_TIMEOUT = 12.0


class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


# --------------------------------------------------------------------------------------------
# Ports, temp dirs

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def temp_dir(prefix="relay-it-"):
    d = tempfile.mkdtemp(prefix=prefix)
    TEMP_DIRS.append(d)
    return d


# --------------------------------------------------------------------------------------------
# Minimal YAML emitter (block mappings, flow lists of scalars, block lists of mappings)

_PLAIN = re.compile(r"^[A-Za-z_/.][A-Za-z0-9_./:@-]*$")


_FLOW_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _scalar(v, flow=False):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if (_FLOW_PLAIN if flow else _PLAIN).match(s) and s.lower() not in ("true", "false", "null", "yes", "no", "on", "off", "~") \
            and not s.endswith(":"):
        return s
    return json.dumps(s)


def yaml_dump(obj, indent=0):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict):
                if not v:
                    out.append(f"{pad}{k}: {{}}")
                else:
                    out.append(f"{pad}{k}:")
                    out.append(yaml_dump(v, indent + 2))
            elif isinstance(v, (list, tuple)):
                if all(not isinstance(x, (dict, list, tuple)) for x in v):
                    out.append(f"{pad}{k}: [" + ", ".join(_scalar(x, flow=True) for x in v) + "]")
                else:
                    out.append(f"{pad}{k}:")
                    out.append(yaml_dump(list(v), indent + 2))
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if isinstance(item, dict):
                sub = yaml_dump(item, indent + 2).split("\n")
                sub[0] = pad + "- " + sub[0][indent + 2:]
                out.extend(sub)
            else:
                out.append(f"{pad}- {_scalar(item)}")
    else:
        out.append(pad + _scalar(obj))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Config

class Plugin:
    """A relay.plugin process.lua entry. `source` is a file in tests/integration/plugins/ (copied
    next to the config) unless `text` is given (written as `source`)."""

    def __init__(self, name, prefix, source, auto_start=True, text=None,
                 modules=("json", "time", "logger"), meta_extra=None, extra=None):
        self.name, self.prefix, self.source = name, prefix, source
        self.auto_start, self.text, self.modules = auto_start, text, list(modules)
        self.meta_extra, self.extra = meta_extra or {}, extra or {}

    def entry(self):
        meta = {"type": "relay.plugin", "command_prefix": self.prefix, "auto_start": self.auto_start}
        meta.update(self.meta_extra)
        e = {"name": self.name, "kind": "process.lua", "meta": meta,
             "source": "file://" + self.source, "modules": self.modules, "method": "run"}
        e.update(self.extra)
        return e


# The standard plugin set used by most hub tests.
def std_plugins():
    return [
        Plugin("session_plugin", "session_", "session_rec.lua"),
        Plugin("echo_plugin", "echo_", "echo.lua"),
        Plugin("crash_plugin", "crash_", "crasher.lua"),
        Plugin("lazy_plugin", "lazy_", "lazy.lua", auto_start=False),
        # a_ declared before a_b_ on purpose: the longest prefix must win, not the first.
        Plugin("a_plugin", "a_", "prefix_a.lua"),
        Plugin("ab_plugin", "a_b_", "prefix_ab.lua"),
        Plugin("bc_plugin", "bc_", "broadcaster.lua"),
        Plugin("counter_plugin", "counter_", "counter.lua"),
    ]


class Config:
    """Builds the spec-format YAML for one node in its own temp dir."""

    def __init__(self, plugins=None, params=None, node=None, auth=None, omit_params=(),
                 extra_entries=None, namespace="app", port=None, node_entry=True):
        self.dir = temp_dir()
        self.port = port or free_port()
        self.plugins = std_plugins() if plugins is None else plugins
        self.params = {
            "application_host": "app:processes",
            "env_storage": "app:os_env",
            "user_security_scope": "app.security:user_scope",
            "max_connections_per_user": "3",
            "user_hub_inactivity_timeout": "60s",
        }
        self.params.update(params or {})
        for p in omit_params:
            self.params.pop(p, None)
        self.auth = auth if auth is not None else {"mode": "insecure"}
        self.node = {"max_message_bytes": 65536}
        self.node.update(node or {})
        self.extra_entries = extra_entries or []
        self.namespace = namespace
        self.node_entry = node_entry
        self.path = os.path.join(self.dir, "relay.yaml")

    def entries(self):
        ents = [
            {"name": "os_env", "kind": "env.storage.os"},
            {"name": "processes", "kind": "process.host", "lifecycle": {"auto_start": True}},
            {"name": "dep.relay", "kind": "ns.dependency", "component": "wippy/relay", "version": "*",
             "parameters": [{"name": k, "value": v} for k, v in self.params.items()]},
        ]
        ents += [p.entry() for p in self.plugins]
        ents += self.extra_entries
        if self.node_entry:
            n = {"name": "node", "kind": "relay.node", "listen": f"127.0.0.1:{self.port}"}
            if self.auth is not False:
                n["auth"] = self.auth
            n.update(self.node)
            ents.append(n)
        return ents

    def text(self):
        return yaml_dump({"version": "1.0", "namespace": self.namespace, "entries": self.entries()}) + "\n"

    def write(self):
        for p in self.plugins:
            dst = os.path.join(self.dir, p.source)
            if p.text is not None:
                with open(dst, "w") as f:
                    f.write(p.text)
            else:
                src = os.path.join(PLUGIN_DIR, p.source)
                if os.path.exists(src):
                    shutil.copy(src, dst)
        with open(self.path, "w") as f:
            f.write(self.text())
        return self.path


# --------------------------------------------------------------------------------------------
# Node process

def clean_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(extra or {})
    return env


def run_check(path, env=None, timeout=10):
    """`relay-node --check -c path`; returns (rc, combined output)."""
    p = subprocess.run([os.path.abspath(NODE_BIN), "--check", "-c", path], env=clean_env(env),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       cwd=os.path.dirname(os.path.dirname(HERE)))
    return p.returncode, p.stdout.decode("utf-8", "replace")


class NodeStartError(TestFailure):
    pass


class Node:
    def __init__(self, config=None, env=None, args=(), name="node", port=None, write=True):
        self.config = config if config is not None else Config()
        self.env = env or {}
        self.args = list(args)
        self.name = name
        self.port = port or self.config.port
        self.proc = None
        self.rc = None
        self.log_path = os.path.join(self.config.dir, f"{name}.log")
        self._log = None
        if write:
            self.config.write()

    # -- lifecycle
    def spawn(self):
        self._log = open(self.log_path, "ab")
        cmd = [os.path.abspath(NODE_BIN), "-c", self.config.path] + self.args
        self.proc = subprocess.Popen(cmd, env=clean_env(self.env), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=os.path.dirname(os.path.dirname(HERE)))
        LIVE_NODES.append(self)
        STARTED_NODES.append(self)
        return self

    def start(self, timeout=START_TIMEOUT):
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.rc = self.proc.returncode
                raise NodeStartError(f"{self.name} exited with {self.rc} during start-up (log below)")
            try:
                st, _, _ = http_get(self.port, "/healthz", timeout=0.3)
                if st == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.03)
        raise NodeStartError(f"{self.name}: /healthz on port {self.port} did not answer 200 within "
                             f"{timeout}s (log below)")

    def wait_exit(self, timeout):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Sends sig, waits; SIGKILL after timeout. Returns the exit code (None if killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.rc = None
        else:
            self.rc = self.proc.returncode
        if self._log:
            self._log.close()
            self._log = None
        if self in LIVE_NODES:
            LIVE_NODES.remove(self)
        return self.rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, et, ev, tb):
        rc = self.stop()
        if et is None:
            text = self.log_text()
            for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
                if mark in text:
                    raise TestFailure(f"{self.name}: sanitizer report in its log ({mark})\n"
                                      + self.log_tail(80))
        if et is None and rc is not None and rc != 0:
            raise TestFailure(f"{self.name} exited with {rc} on SIGTERM\n" + self.log_tail())
        if et is None and rc is None:
            raise TestFailure(f"{self.name} did not exit within {STOP_TIMEOUT}s of SIGTERM (killed)\n"
                              + self.log_tail())
        return False

    # -- helpers
    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return f"--- {self.name}: no log"
        tail = lines[-n:]
        return f"--- {self.name} log tail ({self.log_path}, {len(lines)} lines):\n" + \
            "\n".join("    " + l for l in tail)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def ws_url(self, user=None, query=None, path="/ws"):
        q = []
        if user is not None:
            q.append("user_id=" + user)
        if query:
            q.append(query)
        return f"ws://127.0.0.1:{self.port}{path}" + ("?" + "&".join(q) if q else "")

    def metrics(self):
        st, _, body = http_get(self.port, "/metrics")
        check(st == 200, f"/metrics answered {st}")
        return body.decode()


# --------------------------------------------------------------------------------------------
# HTTP

def http_get(port, path, headers=None, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), r.read()
    finally:
        c.close()


def metric_sum(text, name, label_substr=None):
    """Sum of samples of metric `name` (exact name, any labels; optional substring filter on the
    label set). Returns None when no sample matched."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        if label_substr and label_substr not in (m.group(2) or ""):
            continue
        try:
            total += float(m.group(3))
            seen = True
        except ValueError:
            pass
    return total if seen else None


def metric_code_count(text, code):
    """Count of an error code in the metrics, found loosely: any sample whose name mentions
    'error' and whose labels or name mention the code."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if not line or line.startswith("#") or "error" not in line:
            continue
        if code not in line:
            continue
        try:
            total += float(line.split()[-1])
            seen = True
        except ValueError:
            pass
    return total if seen else None


# --------------------------------------------------------------------------------------------
# JWT (HS256 and friends, by hand)

def b64url(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt_sign(claims, secret, alg="HS256", header=None):
    h = {"alg": alg, "typ": "JWT"}
    h.update(header or {})
    signing = b64url(json.dumps(h, separators=(",", ":"))) + "." + \
        b64url(json.dumps(claims, separators=(",", ":")))
    if alg == "none":
        return signing + "."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret.encode(), signing.encode(), digest).digest()
    return signing + "." + b64url(sig)


def jwt_claims(sub="alice", ttl=3600, **extra):
    now = int(time.time())
    c = {"iat": now, "exp": now + ttl}
    if sub is not None:
        c["sub"] = sub
    c.update(extra)
    return c


# --------------------------------------------------------------------------------------------
# WebSocket clients (websockets 10.4 legacy API)

async def connect(node, user=None, query=None, headers=None, token=None, cookie=None, origin=None,
                  path="/ws", compression=None, **kw):
    hdrs = list((headers or {}).items())
    if token is not None:
        hdrs.append(("Authorization", "Bearer " + token))
    if cookie is not None:
        hdrs.append(("Cookie", cookie))
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 2)
    kw.setdefault("ping_interval", None)
    kw.setdefault("max_size", 8 * 1024 * 1024)
    return await websockets.connect(node.ws_url(user, query, path), extra_headers=hdrs,
                                    origin=origin, compression=compression, **kw)


async def recv_raw(ws, timeout=3.0):
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        raise TestFailure(f"no frame within {timeout}s")
    except websockets.exceptions.ConnectionClosed as e:
        raise TestFailure(f"connection closed while waiting for a frame: code={ws.close_code} "
                          f"reason={ws.close_reason!r} ({e})")


async def recv_json(ws, timeout=3.0):
    raw = await recv_raw(ws, timeout)
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        raise TestFailure(f"frame is not JSON: {raw!r:.300}")


async def recv_topic(ws, topic, timeout=3.0):
    """Next frame, which must have the given topic."""
    f = await recv_json(ws, timeout)
    check(isinstance(f, dict) and f.get("topic") == topic,
          f"expected a {topic!r} frame, got {json.dumps(f)[:400]}")
    return f["data"]


async def expect_silence(ws, seconds=0.5):
    try:
        raw = await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:
        return
    except websockets.exceptions.ConnectionClosed:
        raise TestFailure(f"connection closed (code={ws.close_code} reason={ws.close_reason!r}) "
                          "where silence was expected")
    raise TestFailure(f"expected no frame, got {raw!r:.300}")


VALID_STATUSES = {"pending", "running", "stopped", "failed"}


async def welcome(ws, timeout=3.0):
    """The first frame must be a welcome; checks its shape and returns its data."""
    f = await recv_json(ws, timeout)
    check(isinstance(f, dict) and f.get("topic") == "welcome",
          f"first frame is not a welcome: {json.dumps(f)[:400]}")
    check(set(f.keys()) == {"topic", "data"}, f"welcome frame keys {sorted(f.keys())}")
    d = f["data"]
    check(isinstance(d, dict), "welcome data is not an object")
    check(isinstance(d.get("user_id"), str), f"welcome user_id: {d.get('user_id')!r}")
    check(isinstance(d.get("client_count"), int) and not isinstance(d.get("client_count"), bool),
          f"welcome client_count: {d.get('client_count')!r}")
    check(isinstance(d.get("plugins"), dict), f"welcome plugins: {d.get('plugins')!r}")
    for pfx, st in d["plugins"].items():
        check(isinstance(st, dict) and st.get("status") in VALID_STATUSES,
              f"welcome plugins[{pfx!r}] = {st!r}")
        check(isinstance(st.get("process_id"), str), f"welcome plugins[{pfx!r}] has no process_id: {st!r}")
    return d


async def connect_welcomed(node, user="alice", **kw):
    ws = await connect(node, user=user, **kw)
    d = await welcome(ws)
    return ws, d


async def send_json(ws, obj):
    await ws.send(json.dumps(obj))


async def expect_error(ws, code, request_id=..., timeout=3.0):
    d = await recv_topic(ws, "error", timeout)
    check(isinstance(d, dict), f"error data is not an object: {d!r}")
    check(d.get("error") == code, f"expected error {code!r}, got {json.dumps(d)[:300]}")
    check(isinstance(d.get("message"), str), f"error without a message: {d!r}")
    if request_id is None:
        check("request_id" not in d or d["request_id"] is None,
              f"error carries a request_id although the message had none: {d!r}")
    elif request_id is not ...:
        check(d.get("request_id") == request_id,
              f"error request_id {d.get('request_id')!r}, expected {request_id!r}")
    return d


async def drain_until_closed(ws, timeout=3.0):
    """Reads until the connection closes; returns the frames read. Fails if still open."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestFailure(f"connection still open after {timeout}s (frames read: "
                              f"{[str(f)[:120] for f in frames]})")
        try:
            frames.append(await asyncio.wait_for(ws.recv(), left))
        except asyncio.TimeoutError:
            continue
        except websockets.exceptions.ConnectionClosed:
            return frames


async def expect_close(ws, code, reason_contains=None, timeout=3.0):
    frames = await drain_until_closed(ws, timeout)
    check(ws.close_code == code, f"close code {ws.close_code} (reason {ws.close_reason!r}), expected {code}")
    if reason_contains:
        check(reason_contains in (ws.close_reason or ""),
              f"close reason {ws.close_reason!r} does not name {reason_contains!r}")
    return frames


async def still_works(node, user="zed-probe"):
    """The node is up: /healthz 200 and a fresh client gets a welcome and an echo."""
    st, _, _ = http_get(node.port, "/healthz")
    check(st == 200, f"/healthz answered {st}")
    ws, _ = await connect_welcomed(node, user)
    await send_json(ws, {"type": "echo_ping", "request_id": "probe"})
    f = await recv_json(ws)
    check(isinstance(f, dict) and f.get("topic") == "ping", f"echo after abuse: {f!r}")
    await ws.close()


async def http_status_of_upgrade(node, **kw):
    """Tries a WebSocket upgrade; returns the HTTP status when it is refused, or None if upgraded."""
    try:
        ws = await connect(node, **kw)
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code
    await ws.close()
    return None


# --------------------------------------------------------------------------------------------
# Raw WebSocket client over a blocking socket

class RawWS:
    def __init__(self, port, path="/ws?user_id=alice", headers=None, rcvbuf=None, timeout=5.0,
                 host="127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        hl = head.decode("latin-1").split("\r\n")
        self.status_line = hl[0] if hl else ""
        try:
            self.status = int(self.status_line.split()[1])
        except (IndexError, ValueError):
            self.status = 0
        self.headers = {}
        for l in hl[1:]:
            k, _, v = l.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.body = b""
        if self.status != 101:
            n = int(self.headers.get("content-length", "-1") or -1)
            self.body = self.buf
            try:
                while n < 0 or len(self.body) < n:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    self.body += chunk
            except socket.timeout:
                pass
            if n >= 0:
                self.body = self.body[:n]
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                self.body = _dechunk(self.body)

    def send_frame(self, opcode, payload=b"", fin=True, mask=True, rsv=0):
        if isinstance(payload, str):
            payload = payload.encode()
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            hdr = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload)) if n < 4096 else \
                _xor_fast(payload, key)
            hdr += key
        self.sock.sendall(hdr + payload)

    def send_text(self, s):
        self.send_frame(0x1, s)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(262144)
            if not chunk:
                raise EOFError("connection closed by peer")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        """One frame: (opcode, fin, payload)."""
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        key = self._read(4) if b1 & 0x80 else None
        payload = self._read(n)
        if key:
            payload = _xor_fast(payload, key)
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def recv_message(self):
        """A whole message (continuations joined); control frames returned as they come."""
        op, fin, data = self.recv_frame()
        if op >= 0x8:
            return op, data
        while not fin:
            op2, fin, more = self.recv_frame()
            if op2 >= 0x8:
                continue
            data += more
        return op, data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_close(payload):
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return None, ""


def _xor_fast(data, key):
    if not data:
        return b""
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def _dechunk(b):
    out = b""
    while b:
        line, _, rest = b.partition(b"\r\n")
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2:]
    return out
