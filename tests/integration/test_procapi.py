"""The platform's process API beyond spawn (issue 7): process.exec and a spawner's :exec."""
import os
import shutil

import time

from harness import (PLUGIN_DIR, Config, Node, Plugin, check, connect_welcomed, metric_sum,
                     recv_json, send_json, still_works)

ENTRIES = [
    {"name": "child", "kind": "process.lua", "source": "file://fid_child.lua", "method": "run",
     "modules": ["ctx"]},
    {"name": "slow", "kind": "function.lua", "source": "file://pa_slow.lua", "method": "main",
     "modules": ["time"]},
]


def _cfg(**kw):
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("procapi_plugin", "pa_", "procapi.lua", modules=("time",))],
                 extra_entries=ENTRIES, **kw)
    for f in ("fid_child.lua", "pa_slow.lua"):
        shutil.copy(os.path.join(PLUGIN_DIR, f), os.path.join(cfg.dir, f))
    return cfg


async def _recv_topic(ws, topic):
    f = await recv_json(ws, timeout=10)
    check(f.get("topic") == topic, f"expected {topic}: {f}")
    return f.get("data")


async def test_exec_returns_the_childs_result():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "execer")
        await send_json(ws, {"type": "pa_go"})
        d = await _recv_topic(ws, "pa")
        # every argument reached the child (the nil in the middle too); its return is exec's
        check(d["value"] == {"sum": 5, "d_nil": True, "e": "e"}, f"value {d.get('value')}")
        # `return nil, err` and a raise are nil, err
        check(d["fail"] == [True, "child failed: 7"], f"fail {d.get('fail')}")
        check(d["crash"] == [True, "boom"], f"crash {d.get('crash')}")
        check(d["unknown"] == [True, "unknown process id"], f"unknown {d.get('unknown')}")
        # a spawner's :exec: its context and messages reach the child
        check(d["ctx"] == {"request_id": "req-9", "all": {"request_id": "req-9"},
                           "topic": "hello", "payload": {"a": 2}, "missing": "NOT_FOUND"},
              f"ctx {d.get('ctx')}")
        check(d["events"] == [], f"no EXIT event for an exec'd child: {d.get('events')}")
        await ws.close()


async def test_exec_blocks_the_caller_only():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "blocker")
        await send_json(ws, {"type": "pa_gated"})
        await _recv_topic(ws, "pa_wait")
        # the caller is blocked in exec: the node and other users go on
        await still_works(n)
        await send_json(ws, {"type": "pa_release"})
        d = await _recv_topic(ws, "pa_done")
        check(d == {"value": "woke"}, f"{d}")
        await ws.close()


async def test_exec_is_bounded_like_spawn():
    with Node(_cfg(node={"plugin_max_children": 2})) as n:
        ws, _ = await connect_welcomed(n, "limited")
        await send_json(ws, {"type": "pa_limit"})
        d = await _recv_topic(ws, "pa_limit")
        check(d == [True, "too many children (plugin_max_children is 2)"], f"{d}")
        refused = metric_sum(n.metrics(), "relay_plugin_refusals_total", 'limit="children"')
        check(refused and refused >= 1, f"refusals {refused}")
        await ws.close()


def _processes(n):
    return metric_sum(n.metrics(), "relay_plugin_processes")


async def test_the_child_of_exec_ends_with_its_caller():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "doomed")
        await send_json(ws, {"type": "pa_ping"})
        await _recv_topic(ws, "pa_pong")
        before = _processes(n)  # echo and procapi
        await send_json(ws, {"type": "pa_gated"})
        await _recv_topic(ws, "pa_wait")
        check(_processes(n) > before, "the exec'd child runs")
        await send_json(ws, {"type": "pa_kill"})  # a task of the caller raises: it ends
        pong = None
        for _ in range(50):  # the hub restarts the crashed instance
            await send_json(ws, {"type": "pa_ping"})
            try:
                pong = await recv_json(ws, timeout=0.5)
            except Exception:
                continue
            if pong.get("topic") == "pa_pong":
                break
        check(pong and pong.get("topic") == "pa_pong", f"restarted: {pong}")
        deadline = time.monotonic() + 10
        while _processes(n) != before and time.monotonic() < deadline:
            time.sleep(0.05)
        check(_processes(n) == before, f"{_processes(n)} plugin processes, {before} before")
        await ws.close()


async def test_funcs_async_futures():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "futures")
        await send_json(ws, {"type": "pa_async"})
        d = await _recv_topic(ws, "pa_async")
        check("failed" not in d, f"{d}")
        # the call runs in a task of the caller: not complete when async returns
        check(d["pending"] == [False, True], f"pending {d.get('pending')}")
        check(d["a1"] == [42, True, True, 42, True], f"a1 {d.get('a1')}")
        check(d["a2"] == 2, f"a2 {d.get('a2')}")
        # an error return: the channel closes empty, result() and error() carry it
        check(d["fe"] == [True, False, "INVALID", "negative", True, True], f"fe {d.get('fe')}")
        check(d["fr"] == ["INTERNAL", "unlucky"], f"fr {d.get('fr')}")
        check(d["fc"] == [True, False, True, "CANCELED", True, False], f"fc {d.get('fc')}")
        check(d["errs"] == ["NOT_FOUND", "INVALID"], f"errs {d.get('errs')}")
        check(d["call_blocks"] == [8], f"funcs.call of a blocking function: {d.get('call_blocks')}")
        await still_works(n)
        await ws.close()
