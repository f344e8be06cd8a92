#!/usr/bin/python3
"""The hostile user of bench/bench.py's hostile section: keeps one misbehaving plugin instance
(bench/hostile.lua) busy on a Relay node until SIGTERM, then prints one JSON line of counts.

    hostile_client.py --url ws://127.0.0.1:PORT/ws --kind loop|bomb|memory|swarm|flood

The hub restarts a crashed plugin once, then marks it failed for that user ("restart once, then
failed"); so, to keep the pressure on for the whole window, the client is a succession of users
(PREFIX-KIND-1, -2, ...), one connection at a time: it sends hostile_KIND every RESEND seconds
(the instance that was sent the first one may be busy dying; the restarted one needs its own)
and, once the hub answers plugin_failed, closes and comes back as the next user. For swarm the
instance is never ended (its bounds refuse, they do not kill): one user, one message, and
hostile_stop before leaving (its tickers would go on after the user has gone).
Frames the node sends (the flood's broadcasts) are read and counted."""
import argparse
import asyncio
import json
import signal
import sys
import time

import websockets

RESEND = 0.02


async def main(a):
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    st = {"kind": a.kind, "users": 0, "sent": 0, "frames": 0, "failed_replies": 0, "errors": 0,
          "first_error": None}
    n = 0
    while not stop.is_set():
        n += 1
        url = "%s?user_id=%s%s-%d" % (a.url, a.prefix, a.kind, n)
        try:
            async with websockets.connect(url, max_size=None, ping_interval=None,
                                          close_timeout=1) as ws:
                await asyncio.wait_for(ws.recv(), 10)  # the welcome
                st["users"] += 1
                last = 0.0
                while not stop.is_set():
                    now = time.monotonic()
                    if now - last >= RESEND and (a.kind != "swarm" or last == 0.0):
                        await ws.send(json.dumps({"type": "hostile_" + a.kind}))
                        st["sent"] += 1
                        last = now
                    try:
                        raw = await asyncio.wait_for(ws.recv(), max(0.001, RESEND - (time.monotonic() - last)))
                    except asyncio.TimeoutError:
                        continue
                    st["frames"] += 1
                    if isinstance(raw, str) and '"plugin_failed"' in raw:
                        st["failed_replies"] += 1
                        break
                if stop.is_set() and a.kind == "swarm":  # its instance outlives the connection
                    await ws.send(json.dumps({"type": "hostile_stop"}))
                    await asyncio.sleep(0.2)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
            st["errors"] += 1
            st["first_error"] = st["first_error"] or repr(e)[:200]
            await asyncio.sleep(0.05)
    print(json.dumps(st), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--kind", required=True, choices=["loop", "bomb", "memory", "swarm", "flood"])
    p.add_argument("--prefix", default="hostile-")
    sys.exit(asyncio.run(main(p.parse_args())))
