"""The sandbox against a hostile plugin on a real node: the instruction budget is final whoever
catches its error, pattern matching is bounded, and the node and other users keep serving."""
import time

from harness import (Config, Node, Plugin, TestFailure, check, connect_welcomed, http_get, metric_sum,
                     recv_json, send_json, still_works)


def _cfg(**kw):
    return Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                           Plugin("hostile_plugin", "hostile_", "hostile.lua")], **kw)


async def _restarted(ws):
    """The hostile instance crashed and its restart answers: the first pong of a fresh one. A
    ping that reached the dying instance (it runs on in preempted slices until the budget ends
    it) is lost with it, so the ping is sent again until one is answered."""
    deadline = time.monotonic() + 5
    while True:
        await send_json(ws, {"type": "hostile_ping"})
        try:
            f = await recv_json(ws, timeout=1)
        except TestFailure:
            check(time.monotonic() < deadline, "no pong after the attack")
            continue
        if f.get("type") == "hostile_pong":
            check(f["n"] == 1, f"pong from the instance that should have died: {f}")
            return
        check(time.monotonic() < deadline, f"no pong after the attack: {f}")


async def _bob_meanwhile(n, b):
    t0 = time.monotonic()
    await send_json(b, {"type": "echo_hi"})
    f = await recv_json(b, timeout=5)
    check(f.get("topic") == "hi", f"bob while alice's plugin attacks: {f}")
    st, _, _ = http_get(n.port, "/healthz")
    check(st == 200, f"/healthz {st}")
    return time.monotonic() - t0


async def test_budget_is_final_whoever_catches_it():
    for attack in ("bomb", "catch"):
        with Node(_cfg()) as n:
            ws, _ = await connect_welcomed(n, "alice")
            b, _ = await connect_welcomed(n, "bob")
            await send_json(ws, {"type": "hostile_" + attack})
            took = await _bob_meanwhile(n, b)
            check(took < 1.0, f"{attack}: bob's echo took {took:.2f} s")
            await _restarted(ws)
            m = n.metrics()
            kills = metric_sum(m, "relay_plugin_kills_total", 'limit="instructions"')
            check(kills is not None and kills >= 1, f"{attack}: kills by the budget {kills}")
            crashed = metric_sum(m, "relay_plugins_crashed_total")
            check(crashed is not None and crashed >= 1, f"{attack}: relay_plugins_crashed_total {crashed}")
            check("instruction budget exceeded" in n.log_text(), f"{attack}: the crash is not logged")
            await still_works(n)
            await ws.close()
            await b.close()


async def test_trim_idiom_on_a_large_message_is_fast():
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        data = " x" + " " * 30000 + "y "
        await send_json(ws, {"type": "hostile_trim", "data": data})
        f = await recv_json(ws, timeout=5)
        check(f.get("len") == 30002, f"trimmed length {f}")
        check(f.get("ms", 1e9) < 200, f"the trim idiom took {f.get('ms')} ms on 30 KB")
        await ws.close()


async def test_children_and_timers_are_bounded_per_instance():
    with Node(_cfg(node={"plugin_max_children": 20, "plugin_max_timers": 30})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        await send_json(ws, {"type": "hostile_swarm"})
        f = await recv_json(ws, timeout=10)
        check(f.get("children") == 20 and "too many children" in (f.get("cerr") or ""),
              f"children: {f}")
        check(f.get("tickers") == 30 and "too many timers" in (f.get("terr") or ""), f"tickers: {f}")
        m = n.metrics()
        for limit in ("children", "timers"):
            r = metric_sum(m, "relay_plugin_refusals_total", f'limit="{limit}"')
            check(r is not None and r >= 1, f"refusals at {limit}: {r}")
        took = await _bob_meanwhile(n, b)
        check(took < 1.0, f"bob's echo took {took:.2f} s next to 30 tickers of 1 ms")
        await still_works(n)
        await ws.close()
        await b.close()


async def test_memory_is_capped_per_instance():
    """One user's plugin allocating past plugin_memory_limit (or hoarding message bodies) is ended
    with that reason, counted under limit="memory", restarted; another user's plugin, sharing the
    node's Lua state, keeps working meanwhile."""
    for attack in ("hog", "hoard"):
        with Node(_cfg(node={"plugin_memory_limit": "4MiB", "lua_memory_limit": "64MiB"})) as n:
            ws, _ = await connect_welcomed(n, "alice")
            b, _ = await connect_welcomed(n, "bob")
            await send_json(ws, {"type": "hostile_" + attack})
            if attack == "hoard":
                blob = "y" * 60000
                for i in range(120):  # 7 MB of bodies; the mailbox and the cap are far apart
                    try:
                        await send_json(ws, {"type": "hostile_x", "data": blob})
                    except Exception:
                        break
            deadline = time.monotonic() + 10
            while "memory limit of the instance exceeded" not in n.log_text():
                check(time.monotonic() < deadline, f"{attack}: the instance was not ended")
                await _bob_meanwhile(n, b)
                time.sleep(0.05)
            took = await _bob_meanwhile(n, b)
            check(took < 1.0, f"{attack}: bob's echo took {took:.2f} s")
            await _restarted(ws)
            m = n.metrics()
            kills = metric_sum(m, "relay_plugin_kills_total", 'limit="memory"')
            check(kills is not None and kills >= 1, f"{attack}: kills by memory {kills}")
            await still_works(n)
            await ws.close()
            await b.close()


async def test_garbage_is_not_held_against_the_cap():
    """An instance that goes over plugin_memory_limit only with garbage (64 MiB of 64 KiB strings
    it drops, a 4 MiB cap) is not ended: the host collects before it decides, and without the
    full collection of every user's objects that a refused allocation would make Lua run."""
    with Node(_cfg(node={"plugin_memory_limit": "4MiB", "lua_memory_limit": "256MiB"})) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "hostile_churn", "mb": 64})
        f = await _frame(ws, "hostile_churned")
        check(f.get("len", 0) > 65520, f"the churn's answer: {f}")
        check("memory limit of the instance exceeded" not in n.log_text(), "garbage ended the instance")
        kills = metric_sum(n.metrics(), "relay_plugin_kills_total", 'limit="memory"')
        check(not kills, f"kills by memory {kills}")
        await ws.close()


async def _frame(ws, type_, timeout=10):
    """The next frame of type type_ (others, e.g. echoes, are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        f = await recv_json(ws, timeout=max(0.1, deadline - time.monotonic()))
        if f.get("type") == type_:
            return f


async def test_a_users_whole_tree_is_bounded():
    """Children spawning children (nothing bounds the depth per instance) stop at the user's
    process bound; timers and channels are bounded over all of the user's instances; another
    user's room is its own; every refusal is counted under its per-user label."""
    node = {"plugin_user_max_processes": 10, "plugin_user_max_timers": 20,
            "plugin_user_max_channels": 30, "plugin_max_children": 3}
    with Node(_cfg(node=node)) as n:
        ws, _ = await connect_welcomed(n, "alice")
        b, _ = await connect_welcomed(n, "bob")
        await send_json(ws, {"type": "hostile_deep"})
        f = await _frame(ws, "hostile_deep")
        # alice has 2 instances from her hub (echo, hostile): the chain holds the other 8
        check(f.get("depth") == 8, f"the chain's depth: {f}")
        check("too many processes for the user (plugin_user_max_processes is 10)" in (f.get("err") or ""),
              f"the chain's refusal: {f}")
        check("limit reached" in n.log_text() and "user_processes" in n.log_text(),
              "the per-user refusal is not logged")

        # bob is not alice: a root that takes 12 tickers and 20 channels, then a child that
        # takes what is left of the user's 20 and 30
        await send_json(b, {"type": "hostile_take", "tickers": 12, "chans": 20})
        root = await _frame(b, "hostile_take")
        check(root.get("who") == "root" and root.get("tickers") == 12 and root.get("chans") == 20,
              f"bob's root: {root}")
        child = await _frame(b, "hostile_take")
        check(child.get("who") == "child" and child.get("tickers") == 8 and child.get("chans") == 10,
              f"bob's child: {child}")
        check("too many timers for the user (plugin_user_max_timers is 20)" in (child.get("terr") or ""),
              f"bob's child timers: {child}")
        check("too many channels for the user (plugin_user_max_channels is 30)" in (child.get("cerr") or ""),
              f"bob's child channels: {child}")
        m = n.metrics()
        for limit in ("user_processes", "user_timers", "user_channels"):
            r = metric_sum(m, "relay_plugin_refusals_total", f'limit="{limit}"')
            check(r is not None and r >= 1, f"refusals at {limit}: {r}")
        await still_works(n)

        # alice's chain is gone with her connection (children die with their user); her
        # next session has the whole room again
        await ws.close()
        deadline = time.monotonic() + 10
        while True:
            ws, _ = await connect_welcomed(n, "alice")
            await send_json(ws, {"type": "hostile_take", "tickers": 20, "chans": 30})
            f = await _frame(ws, "hostile_take")
            if f.get("tickers") == 20 and f.get("chans") == 30 or time.monotonic() > deadline:
                break
            await ws.close()
            time.sleep(0.2)
        check(f.get("who") == "root" and f.get("tickers") == 20 and f.get("chans") == 30,
              f"alice's room after her tree ended: {f}")
        await ws.close()
        await b.close()


async def test_a_users_many_timers_fire_slower():
    """A ticker started as a user's n-th live timer ticks every n - 1 ms at the most: a 1 ms
    ticker alone ticks about every millisecond, next to 49 other timers of the same user every
    49 ms (the 300 ms deadline, a one-shot timer, keeps its duration)."""
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "hostile_stretch", "hold": 0})
        alone = (await _frame(ws, "hostile_stretch"))["ticks"]
        await send_json(ws, {"type": "hostile_stretch", "hold": 49})
        crowded = (await _frame(ws, "hostile_stretch"))["ticks"]
        check(alone >= 50, f"a 1 ms ticker alone ticked {alone} times in 300 ms")
        check(1 <= crowded <= 8, f"a 1 ms ticker next to 49 timers ticked {crowded} times in 300 ms")
        await ws.close()
