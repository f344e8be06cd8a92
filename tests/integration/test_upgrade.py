"""process.upgrade and the OUTDATED event: after a SIGHUP reload an instance that set upgradable
gets OUTDATED and upgrades to its new code keeping its pid and the state it passes; one that did
not gets nothing and keeps its code; upgrade's refusals are nil, err; upgrading in a loop ends at
the instruction budget."""
import asyncio
import os
import signal

from harness import PLUGIN_DIR, Config, Node, Plugin, check, connect_welcomed, recv_json, send_json


def source(version, opt_in):
    with open(os.path.join(PLUGIN_DIR, "upgrader.lua")) as f:
        lines = f.read().split("\n")
    lines[0] = f"local VERSION = {version}"
    lines[1] = f"local OPT_IN = {'true' if opt_in else 'false'}"
    return "\n".join(lines)


def _cfg():
    return Config(plugins=[Plugin("upg_plugin", "upg_", "upg.lua", text=source(1, True)),
                           Plugin("npg_plugin", "npg_", "npg.lua", text=source(1, False))])


async def ask(ws, kind):
    await send_json(ws, {"type": kind})
    f = await recv_json(ws)
    check(f.get("type") == kind.split("_", 1)[1], f"{kind} reply {f}")
    return f


async def wait_log(node, text, timeout=5.0):
    for _ in range(int(timeout / 0.05)):
        if text in node.log_text():
            return
        await asyncio.sleep(0.05)
    check(False, f"node log never said {text!r}\n" + node.log_tail())


async def test_outdated_upgrade_keeps_pid_and_state():
    cfg = _cfg()
    with Node(cfg) as n:
        ws, _ = await connect_welcomed(n, "alice")
        a1 = await ask(ws, "upg_count")
        a2 = await ask(ws, "upg_count")
        check(a1["v"] == 1 and a2["n"] == 2 and a2["upgradable"] is True, f"before: {a1} {a2}")
        b1 = await ask(ws, "npg_count")
        check(b1["v"] == 1 and b1["upgradable"] is False, f"not opted in: {b1}")
        for name, opt in (("upg.lua", True), ("npg.lua", False)):
            with open(os.path.join(cfg.dir, name), "w") as f:
                f.write(source(2, opt))
        n.proc.send_signal(signal.SIGHUP)
        await wait_log(n, "plugin sources reloaded")
        a3 = await ask(ws, "upg_count")  # may queue in the inbox while the upgrade runs
        check(a3["v"] == 2, f"the next answer comes from the new code: {a3}")
        check(a3["n"] == 3, f"with the old state: {a3}")
        check(a3["pid"] == a1["pid"], f"and the same pid: {a1['pid']} -> {a3['pid']}")
        check(a3["upgrades"] == 1, f"one upgrade: {a3}")
        check(isinstance(a3["sources"], list) and any("upg_plugin" in s for s in a3["sources"]),
              f"OUTDATED names the changed entries: {a3}")
        b2 = await ask(ws, "npg_count")
        check(b2["v"] == 1 and b2["outdated"] is False and b2["n"] == 2,
              f"a plugin that did not opt in gets no OUTDATED and keeps its code: {b2}")
        await ws.close()


async def test_upgrade_refusals_are_nil_err():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        f = await ask(ws, "upg_bad_id")
        check(f["a"] is True and f["err"] == "unknown process id", f"unknown id: {f}")
        f = await ask(ws, "upg_bad_arg")
        check(f["a"] is True and f["err"].startswith("upgrade argument 1:"), f"a function argument: {f}")
        f = await ask(ws, "upg_in_task")
        check(f["a"] is True and "coroutine" in f["err"], f"from a coroutine.spawn task: {f}")
        f = await ask(ws, "upg_count")
        check(f["n"] == 1 and f["upgrades"] == 0, f"the instance runs on after the refusals: {f}")
        await ws.close()


async def test_upgrading_in_a_loop_ends_at_the_instruction_budget():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        pid = (await ask(ws, "upg_count"))["pid"]
        await send_json(ws, {"type": "upg_loop"})
        await wait_log(n, "instruction budget exceeded")
        check("crashed" in n.log_text(), "the looping instance ends as a crash\n" + n.log_tail())
        # the hub restarts it: a fresh instance (new pid, fresh state) answers
        for _ in range(50):
            await send_json(ws, {"type": "upg_count"})
            try:
                f = await recv_json(ws, timeout=0.5)
            except Exception:
                continue
            if f.get("pid") != pid:
                check(f["n"] == 1, f"a fresh instance: {f}")
                break
        else:
            check(False, "no fresh instance after the loop")
        await ws.close()


async def test_upgrade_to_a_named_entry_keeps_pid_inbox_and_monitors():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "upg_watch", "to": "npg_plugin"})
        got = [await recv_json(ws) for _ in range(3)]
        by = {f["type"]: f for f in got}
        check(set(by) == {"watch", "child_up", "exit"}, f"replies {got}")
        child = by["watch"]["child"]
        up = by["child_up"]
        check(up["pid"] == child, f"the upgraded child keeps its pid: {child} -> {up}")
        check(up["opt_in"] is False, f"it runs the named entry's code (npg, OPT_IN false): {up}")
        check(up["queued"] == "queued", f"a message queued before the upgrade stays: {up}")
        ex = by["exit"]
        check(ex["from"] == child and ex["value"] == "done" and ex.get("error") is None,
              f"the monitor gets one EXIT, of the new run: {ex}")
        await send_json(ws, {"type": "upg_count"})
        f = await recv_json(ws)
        check(f.get("type") == "count", f"no second EXIT from the first run: {f}")
        await ws.close()
