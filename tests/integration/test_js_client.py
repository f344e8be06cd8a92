"""The JavaScript client (clients/js/relay.js) under Node against real nodes: its unit tests
(node --test, a fake socket), then request/response, error rejection, timeout and topic events
with the `ws` package and with Node's own WebSocket, reconnect across a node restart, no retry on
1008, and a re-welcome on the same socket when the user's hub moves to another cluster node.

The scenarios live in tests/js/client_scenarios.mjs; this file owns the nodes and prints what the
scenario printed when it fails. `ws` is installed with npm into build/js (tests/js/jsdeps.py);
without node or npm these tests say so and pass without running (SKIP lines).
"""
import asyncio
import os
import signal
import subprocess
import sys
import time

import harness
from harness import Config, Node, Plugin, TestFailure, check

ROOT = os.path.dirname(os.path.dirname(harness.HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "js"))
import jsdeps  # noqa: E402

SCENARIOS = os.path.join(ROOT, "tests", "js", "client_scenarios.mjs")

SILENT_LUA = """-- takes every message and never answers (for request timeouts)
local function run(args)
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok or (r.channel == events and r.value.kind == process.event.CANCEL) then break end
    end
end
return { run = run }
"""

PUSH_LUA = """-- sends topic "news" with the message's data to the connection (a topic event, no request_id)
local function run(args)
    local inbox, events = process.inbox(), process.events()
    while true do
        local r = channel.select({ inbox:case_receive(), events:case_receive() })
        if not r.ok then break end
        if r.channel == inbox then
            local p = r.value:payload():data()
            if type(p) == "table" and p.conn_pid then process.send(p.conn_pid, "news", p.data) end
        elseif r.value.kind == process.event.CANCEL then break end
    end
end
return { run = run }
"""


def js_plugins():
    with open(os.path.join(ROOT, "plugins", "lua", "echo.lua")) as f:
        echo = f.read()  # the shipped echo: answers with the request_id
    return [
        Plugin("echo_plugin", "echo_", "echo_shipped.lua", text=echo),
        Plugin("silent_plugin", "silent_", "silent.lua", text=SILENT_LUA),
        Plugin("push_plugin", "push_", "push.lua", text=PUSH_LUA),
    ]


def skip(why):
    print(f"      SKIP: {why}", flush=True)


def ws_module():
    """The directory holding node_modules/ws, or None (after a SKIP line)."""
    try:
        return jsdeps.ensure("ws")
    except jsdeps.Missing as e:
        skip(f"JavaScript client tests with ws not run: {e}")
        return None


class Scenario:
    """node tests/js/client_scenarios.mjs NAME, its stdout read line by line."""

    def __init__(self, name, url, ws="global", node_args=()):
        self.name, self.lines = name, []
        self.proc = subprocess.Popen(
            [jsdeps.node_bin(), *node_args, SCENARIOS, name], cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(os.environ, RELAY_URL=url, RELAY_WS=ws))
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def _read(self):
        try:
            chunk = self.proc.stdout.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            self._buf += chunk
            *done, self._buf = self._buf.split(b"\n")
            self.lines += [l.decode("utf-8", "replace") for l in done]

    def output(self):
        return "\n".join("        | " + l for l in self.lines + [self._buf.decode("utf-8", "replace")] if l)

    async def wait_line(self, line, timeout):
        deadline = time.monotonic() + timeout
        while line not in self.lines:
            self._read()
            if self.proc.poll() is not None and line not in self.lines:
                self._read()
                if line not in self.lines:
                    raise TestFailure(f"scenario {self.name} exited {self.proc.returncode} before {line!r}:\n"
                                      + self.output())
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TestFailure(f"scenario {self.name}: no {line!r} within {timeout}s:\n" + self.output())
            await asyncio.sleep(0.02)

    async def passed(self, timeout=20):
        try:
            await self.wait_line("PASS " + self.name, timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
        if harness.KEEP_TEMP or os.environ.get("RELAY_IT_VERBOSE"):
            print(self.output(), flush=True)


def url(node):
    return f"ws://127.0.0.1:{node.port}/ws"


def test_js_client_unit():
    """The client's own unit tests: close-code policy, backoff, matching (no node, no package)."""
    try:
        node = jsdeps.node_bin()
    except jsdeps.Missing as e:
        return skip(str(e))
    p = subprocess.run([node, "--test", os.path.join(ROOT, "tests", "js", "client_unit.test.mjs")], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = p.stdout.decode("utf-8", "replace")
    check(p.returncode == 0, "node --test tests/js/client_unit.test.mjs failed:\n" + out[-4000:])


async def test_js_client_requests_errors_timeout_events():
    d = ws_module()
    if d is None:
        return
    with Node(Config(plugins=js_plugins())) as n:
        await Scenario("basic", url(n), ws=d).passed()


test_js_client_requests_errors_timeout_events.timeout = 270  # the first run installs ws


async def test_js_client_node_global_websocket():
    """The same scenario with Node's own WebSocket (no package at all)."""
    try:
        node = jsdeps.node_bin()
    except jsdeps.Missing as e:
        return skip(str(e))
    flags = []
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    if subprocess.run([node, "-e", probe]).returncode != 0:
        flags = ["--experimental-websocket"]
        if subprocess.run([node, *flags, "-e", probe], stderr=subprocess.DEVNULL).returncode != 0:
            return skip("this node has no global WebSocket")
    with Node(Config(plugins=js_plugins())) as n:
        await Scenario("basic", url(n), ws="global", node_args=flags).passed()


async def test_js_client_reconnects_after_node_restart():
    d = ws_module()
    if d is None:
        return
    cfg = Config(plugins=js_plugins())
    n = Node(cfg).start()
    s = Scenario("restart", url(n), ws=d)
    await s.wait_line("step welcomed", 10)
    await asyncio.sleep(0.2)  # the pending request is on its way
    rc = n.stop()
    check(rc == 0, f"node exited {rc} on SIGTERM\n" + n.log_tail())
    await asyncio.sleep(0.5)  # the client meets a refused connection or two
    with Node(cfg, name="node2", write=False):
        await s.passed()


test_js_client_reconnects_after_node_restart.timeout = 40


async def test_js_client_no_retry_on_1008():
    d = ws_module()
    if d is None:
        return
    with Node(Config(plugins=js_plugins())) as n:
        await Scenario("policy", url(n), ws=d).passed()
        refused = harness.metric_code_count(n.metrics(), "missing_user_id")
        check(refused == 1, f"{refused} missing_user_id refusals counted: the client retried after 1008")


async def test_js_client_rewelcome_after_failover():
    d = ws_module()
    if d is None:
        return
    from test_cluster import Cluster, join  # the cluster helpers: redis-server and nodes
    cl = Cluster(2, params={"max_connections_per_user": "10"})
    cl.make_node = lambda node_id: Node(Config(plugins=js_plugins(), params=dict(cl.params),
                                               node=dict(cl.node_opts)),
                                        args=["--node-id", node_id, "--redis", cl.redis.url], name=node_id)
    cl.start()
    try:
        a, b = cl.nodes
        wa, _ = await join(a, "alice", want_count=1)  # alice's hub on n1
        cl.track(wa)
        s = Scenario("failover", url(b), ws=d)      # the JS client on n2
        await s.wait_line("step welcomed", 10)
        a.proc.send_signal(signal.SIGTERM)           # n1 leaves and hands the hub over
        await s.passed()
        await cl.shut(check_exit=True)
    finally:
        await cl.shut()


test_js_client_rewelcome_after_failover.timeout = 45


def test_console_serves_the_client():
    """With console: true the node serves the page at / and this very client at /relay.js (the
    page imports it); with the console off, neither."""
    with open(os.path.join(ROOT, "clients", "js", "relay.js"), "rb") as f:
        src = f.read()
    with Node(Config(plugins=js_plugins(), node={"console": True})) as n:
        st, hdrs, body = harness.http_get(n.port, "/relay.js")
        check(st == 200 and hdrs.get("content-type", "").startswith("text/javascript"),
              f"/relay.js: {st} {hdrs.get('content-type')!r}")
        check(body == src, "/relay.js is not clients/js/relay.js (stale build?)")
        st, _, page = harness.http_get(n.port, "/")
        check(st == 200 and b"from './relay.js'" in page and b'var WS_PATH="/ws"' in page,
              f"console page: {st} {page[:200]!r}")
    with Node(Config(plugins=js_plugins())) as n:
        for path in ("/", "/relay.js"):
            st, _, _ = harness.http_get(n.port, path)
            check(st == 404, f"{path} with the console off: {st}")
