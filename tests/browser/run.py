#!/usr/bin/python3
"""The console in headless Chromium: /usr/bin/python3 tests/browser/run.py --node build/relay-node [--out DIR]

Starts a node with the console on (the shipped session and echo plugins, as deploy/dev.yaml),
drives the page with playwright-core (tests/browser/console.mjs): the automatic first connection
and its plugin table, a request answered and pretty-printed, an error frame highlighted, three
connections at once, the node's read-only view, then a node restart that every connection
survives by reconnecting; then the cluster view on a 2-node cluster (a real redis-server, each
node with the server API and its console's origin in api.cors_origins): nodes, users, hubs,
plugin states and connections per node, read with the API key typed into the page. Screenshots
go to --out (default build/test-browser).

Installs what it lacks: Debian's chromium (apt-get, as root) and playwright-core (npm, into
build/js; it downloads no browser). Exits 0 with a SKIP line when either cannot be had, 1 on a
failure (with the page's output and the node's log), 2 when the node binary is missing.
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "js"))
import harness  # noqa: E402
import jsdeps  # noqa: E402
from harness import Config, Node, Plugin, free_port  # noqa: E402
from test_cluster import RedisServer, wait_ready  # noqa: E402

API_KEY = "browser-test-api-key-0123456789"


def chromium():
    """Debian's chromium, installed when missing (as root); None when it cannot be."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    if os.geteuid() != 0:
        return None
    print("test-browser: installing chromium (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env,
                        stdout=subprocess.DEVNULL).returncode == 0
    if not ok:
        subprocess.run(["apt-get", "update", "-qq"], env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, stdout=subprocess.DEVNULL)
    return shutil.which("chromium")


def shipped(name):
    with open(os.path.join(ROOT, "plugins", "lua", name)) as f:
        return f.read()


def plugins():
    return [
        Plugin("session_plugin", "session_", "session.lua", text=shipped("session.lua")),
        Plugin("echo_plugin", "echo_", "echo.lua", text=shipped("echo.lua"), auto_start=False),
    ]


def start_cluster():
    """redis + n1 + n2, each with the console, the API and its own console's origin for CORS."""
    redis = RedisServer().start()
    nodes, info = [], {}
    for nid in ("n1", "n2"):
        port, api_port = free_port(), free_port()
        cfg = Config(plugins=plugins(), port=port, params={"max_connections_per_user": "10"}, node={
            "console": True, "node_ttl": "2s", "lease_ttl": "2s",
            "api": {"listen": f"127.0.0.1:{api_port}", "keys": ["${RELAY_API_KEY}"],
                    "cors_origins": [f"http://127.0.0.1:{port}"]}})
        node = Node(cfg, env={"RELAY_API_KEY": API_KEY}, name=nid,
                    args=["--node-id", nid, "--redis", redis.url])
        nodes.append(node.start())
        info[nid] = {"base": f"http://127.0.0.1:{port}", "api": f"http://127.0.0.1:{api_port}"}
    for n in nodes:
        wait_ready(n)
    info["key"] = API_KEY
    return redis, nodes, info


async def run(out_dir, timeout):
    exe = chromium()
    if not exe:
        print("test-browser: SKIP: chromium is not installed and cannot be (apt-get install chromium as root)")
        return 0
    try:
        deps = jsdeps.ensure("playwright-core")
    except jsdeps.Missing as e:
        print(f"test-browser: SKIP: {e}")
        return 0
    os.makedirs(out_dir, exist_ok=True)
    cfg = Config(plugins=plugins(), node={"console": True})
    node = Node(cfg).start()
    env = dict(os.environ, RELAY_BASE=f"http://127.0.0.1:{node.port}", RELAY_JS_DEPS=deps,
               CHROMIUM=exe, OUT_DIR=os.path.abspath(out_dir))
    proc = await asyncio.create_subprocess_exec(
        jsdeps.node_bin(), os.path.join(HERE, "console.mjs"), cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines, node2, failed = [], None, None
    redis, cluster = None, []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                failed = f"no result within {timeout}s"
                break
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                continue
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            lines.append(line)
            print("  " + line, flush=True)
            if line == "step restart":
                node.stop()
                time.sleep(0.5)
                node2 = Node(cfg, name="node2", write=False).start()
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            elif line == "step cluster":
                redis, cluster, info = start_cluster()
                proc.stdin.write((json.dumps(info) + "\n").encode())
                await proc.stdin.drain()
        rc = await asyncio.wait_for(proc.wait(), 15) if failed is None else None
        if failed is None and (rc != 0 or "PASS console" not in lines):
            failed = f"console.mjs exited {rc}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for n in [node, node2] + cluster:
            if n:
                n.stop()
        if redis:
            redis.stop()
    if failed:
        print(f"test-browser: FAIL: {failed}")
        for n in [node, node2] + cluster:
            if n:
                print(n.log_tail())
        print(f"test-browser: node config and logs kept in {cfg.dir}")
        return 1
    shutil.rmtree(cfg.dir, ignore_errors=True)
    print(f"test-browser: PASS (screenshots in {os.path.abspath(out_dir)})")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", default="build/relay-node")
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "test-browser"))
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    node = os.path.abspath(args.node)
    if not (os.path.isfile(node) and os.access(node, os.X_OK)):
        print(f"test-browser: relay-node binary not found: {node}", file=sys.stderr)
        return 2
    harness.NODE_BIN = node
    return asyncio.run(run(args.out, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
