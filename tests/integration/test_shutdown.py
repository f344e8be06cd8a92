"""Shutdown: SIGTERM / SIGINT close clients with 1001 and the node exits 0 within the drain timeout."""
import asyncio
import signal
import time

import harness
from harness import Node, check, connect_welcomed, drain_until_closed

DRAIN_TIMEOUT = 10.0  # the default drain_timeout


async def _signal_closes_clients(sig):
    n = Node().start()
    clients = [(await connect_welcomed(n, u))[0] for u in ("alice", "alice", "bob")]
    t0 = time.monotonic()
    n.proc.send_signal(sig)
    for ws in clients:
        await drain_until_closed(ws, timeout=DRAIN_TIMEOUT)
        check(ws.close_code == 1001, f"client closed with {ws.close_code} {ws.close_reason!r} on {sig.name}, "
                                     "expected 1001")
    rc = await asyncio.get_running_loop().run_in_executor(None, n.wait_exit, DRAIN_TIMEOUT + 1)
    dt = time.monotonic() - t0
    check(rc is not None, f"node still running {DRAIN_TIMEOUT + 1:.0f}s after {sig.name}\n" + n.log_tail())
    check(rc == 0, f"node exited {rc} on {sig.name}\n" + n.log_tail())
    check(dt < DRAIN_TIMEOUT, f"exit took {dt:.1f}s")
    n.stop()
    return dt


async def test_sigterm_closes_clients_1001_and_exits_0():
    await _signal_closes_clients(signal.SIGTERM)


async def test_sigint_closes_clients_1001_and_exits_0():
    await _signal_closes_clients(signal.SIGINT)


async def test_sigterm_idle_node_exits_quickly():
    n = Node().start()
    t0 = time.monotonic()
    n.proc.send_signal(signal.SIGTERM)
    rc = n.wait_exit(DRAIN_TIMEOUT)
    dt = time.monotonic() - t0
    check(rc == 0, f"idle node exited {rc} on SIGTERM\n" + n.log_tail())
    check(dt < 3, f"idle node took {dt:.1f}s to exit")
    n.stop()


async def test_sigterm_after_hubs_with_plugins_busy():
    """Hubs with plugins (including a lazily started one and a crashed one) shut down cleanly."""
    n = Node().start()
    ws, _ = await connect_welcomed(n, "alice")
    await harness.send_json(ws, {"type": "lazy_hi"})
    await harness.recv_json(ws)
    await harness.send_json(ws, {"type": "crash_crash"})
    await asyncio.sleep(0.2)
    ws2, _ = await connect_welcomed(n, "bob")
    await ws2.close()
    n.proc.send_signal(signal.SIGTERM)
    await drain_until_closed(ws, timeout=DRAIN_TIMEOUT)
    check(ws.close_code == 1001, f"close {ws.close_code}")
    rc = await asyncio.get_running_loop().run_in_executor(None, n.wait_exit, DRAIN_TIMEOUT + 1)
    check(rc == 0, f"node exited {rc}\n" + n.log_tail())
    n.stop()


async def test_new_connections_refused_while_draining():
    """After SIGTERM the node takes no new WebSockets (refused, or upgraded and closed 1001/1013)."""
    n = Node().start()
    ws, _ = await connect_welcomed(n, "alice")
    n.proc.send_signal(signal.SIGTERM)
    await drain_until_closed(ws, timeout=DRAIN_TIMEOUT)
    try:
        late = await harness.connect(n, user="late", open_timeout=1)
    except Exception:  # noqa: BLE001 - refused, reset or HTTP error: all fine
        late = None
    if late is not None:
        frames = await drain_until_closed(late, timeout=3)
        check(late.close_code in (1001, 1013), f"late connection during drain: close {late.close_code}")
        check(not any('"welcome"' in str(f) for f in frames), "a welcome was sent during drain")
    rc = await asyncio.get_running_loop().run_in_executor(None, n.wait_exit, DRAIN_TIMEOUT + 1)
    check(rc == 0, f"node exited {rc}\n" + n.log_tail())
    n.stop()
