#!/usr/bin/python3
"""Drives the compose cluster from outside, as a user would: clients through the load balancer,
the cluster's state read with redis-cli inside the redis container, the node holding a hub killed.

usage: drive.py LB_PORT PROJECT"""
import asyncio
import json
import subprocess
import sys
import time

import websockets

PORT, PROJECT = int(sys.argv[1]), sys.argv[2]
URL = f"ws://127.0.0.1:{PORT}/ws?user_id=alice"


def log(msg):
    print(f"compose-test: {msg}", flush=True)


def fail(msg):
    log("FAIL: " + msg)
    sys.exit(1)


def redis(*args):
    out = subprocess.run(["podman", "exec", f"{PROJECT}_redis_1", "redis-cli", *args],
                         capture_output=True, text=True, timeout=20)
    return out.stdout.strip()


async def frame(ws, timeout=10.0):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def welcomed(timeout=30.0):
    """A client through the load balancer, once welcomed (nodes may still be starting)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            ws = await websockets.connect(URL, open_timeout=5)
            f = await frame(ws)
            if f.get("topic") == "welcome":
                return ws, f
            last = f
            await ws.close()
        except Exception as e:  # noqa: BLE001 - nodes not ready yet: retry
            last = e
        await asyncio.sleep(0.5)
    fail(f"no welcome through the load balancer within {timeout:.0f} s: {last}")


async def main():
    ws, w = await welcomed()
    log(f"welcome through haproxy: {json.dumps(w)[:160]}")
    await ws.send(json.dumps({"type": "session_get_state", "request_id": "r1"}))
    f = await frame(ws)
    if f.get("type") != "session_state":
        fail(f"session_get_state answered {f}")
    log(f"reply: {json.dumps(f)}")

    # Four more connections: leastconn spreads them over the three nodes.
    clients = [ws] + [(await welcomed())[0] for _ in range(4)]
    n = redis("HLEN", "relay:{alice}:conns")
    if n != "5":
        fail(f"HLEN relay:{{alice}}:conns is {n!r} with 5 connections open")
    nodes = sorted(set(redis("HGETALL", "relay:{alice}:conns").split()[1::2]))
    lease = redis("GET", "relay:{alice}:lease")
    log(f"redis-cli: HLEN relay:{{alice}}:conns = {n}, on nodes {nodes}; lease {lease}")
    holder = lease.split("|")[0]
    if not holder.startswith("node"):
        fail(f"lease {lease!r} names no node")
    over = await websockets.connect(URL, open_timeout=5)
    try:
        f = await frame(over)
        await asyncio.wait_for(over.wait_closed(), 10)
        if over.close_code != 1008:
            fail(f"a sixth connection (limit 5) got {f} and close {over.close_code}")
        log("a sixth connection is refused with 1008 (limit 5, counted in Redis)")
    finally:
        await over.close()

    # Kill the node holding alice's hub; the clients on the other nodes get a new welcome.
    t0 = time.monotonic()
    subprocess.run(["podman", "kill", "--signal", "KILL", f"{PROJECT}_{holder}_1"], check=True,
                   capture_output=True, timeout=30)
    log(f"killed {holder} (it held alice's hub)")

    async def rewelcome(c):
        try:
            while True:
                f = await frame(c, timeout=30)
                if f.get("topic") == "welcome":
                    return time.monotonic() - t0
        except websockets.ConnectionClosed:
            return None  # it was connected through the killed node
    waits = await asyncio.gather(*(rewelcome(c) for c in clients))
    survived = [t for t in waits if t is not None]
    if not survived:
        fail("no client kept its connection (all were on the killed node?)")
    log(f"{len(survived)} surviving clients got a new welcome after "
        f"{', '.join('%.1f s' % t for t in survived)}; {len(waits) - len(survived)} were on {holder}")
    new = redis("GET", "relay:{alice}:lease").split("|")[0]
    if new == holder or not new:
        fail(f"the lease is still {new!r} after the failover")
    for c in clients:
        if c.close_code is None:
            await c.send(json.dumps({"type": "session_get_state", "request_id": "r2"}))
            f = await frame(c)
            if f.get("type") != "session_state":
                fail(f"after the failover session_get_state answered {f}")
            break
    log(f"the hub moved to {new}; the survivors are served by it")
    for c in clients:
        await c.close()


asyncio.run(main())
log("PASS")
