"""Sender authority and the exact message model, tried as an attacker would: a plugin of one
user forging every kind of send at another user's processes (it is handed their pids), a client
forging conn_pid, and client data that must reach the plugin and come back byte-exact."""
import json

from harness import (Config, Node, Plugin, check, connect_welcomed, expect_error, expect_silence,
                     metric_sum, recv_json, recv_raw, send_json)


def _cfg():
    return Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                           Plugin("forge_plugin", "forge_", "forger.lua"),
                           Plugin("session_plugin", "session_", "session_plugin.lua")])


async def _whoami(ws, **extra):
    await send_json(ws, dict({"type": "forge_whoami"}, **extra))
    f = await recv_json(ws)
    check(f.get("type") == "me", f"whoami: {f}")
    return f


async def test_plugin_cannot_act_on_another_user():
    with Node(_cfg()) as n:
        alice, _ = await connect_welcomed(n, "alice")
        bob, _ = await connect_welcomed(n, "bob")
        b = await _whoami(bob)
        a = await _whoami(alice)
        check(len({a["conn"], b["conn"], a["hub"], b["hub"], a["plugin"], b["plugin"]}) == 6,
              f"pids: {a} {b}")
        await send_json(alice, {"type": "forge_attack",
                                "data": {"conn": b["conn"], "hub": b["hub"], "plugin": b["plugin"]}})
        f = await recv_json(alice)
        check(f.get("type") == "attacked", f"attack report: {f}")
        res = f["results"]
        check(len(res) == 16, f"every forgery reported: {sorted(res)}")
        for name, r in res.items():
            check(r["ok"] is False and r.get("err") == "permission denied",
                  f"{name}: {r} (expected false, 'permission denied')")
        # bob saw nothing, and all of bob's processes still work
        await expect_silence(bob, 0.5)
        again = await _whoami(bob)
        check(again["plugin"] == b["plugin"] and again["hub"] == b["hub"],
              f"bob's plugin or hub changed after the attack: {b} -> {again}")
        await send_json(bob, {"type": "session_get_state"})
        f = await recv_json(bob)
        check(f == {"type": "session_state", "data": {"status": "active"}}, f"bob's session: {f}")
        refused = metric_sum(n.metrics(), "relay_messages_refused_total")
        check(refused is not None and refused >= 10, f"refusals counted: {refused}")
        await alice.close()
        await bob.close()


async def test_client_cannot_choose_conn_pid():
    with Node(_cfg()) as n:
        alice, _ = await connect_welcomed(n, "alice")
        bob, _ = await connect_welcomed(n, "bob")
        b = await _whoami(bob)
        # one conn_pid naming bob's connection: the plugin sees the sender, never the client's field
        f = await _whoami(alice, conn_pid=b["conn"])
        check(f["conn"] == f["from"] and f["conn"] != b["conn"],
              f"conn_pid came from the client: {f} (bob's conn {b['conn']})")
        # two conn_pid members: refused before any plugin reads them
        await alice.send('{"type":"session_get_state","conn_pid":"x","conn_pid":"%s"}' % b["conn"])
        await expect_error(alice, "invalid_json", request_id=None)
        await expect_silence(bob, 0.5)
        await alice.close()
        await bob.close()


async def test_client_values_come_back_exactly():
    """The client's bytes reach the plugin as sent and its reply is encoded once: {} stays an
    object, 64-bit integers and floats keep every digit, strings every byte."""
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        raw = ('{"type":"echo_x","data":{"e":{},"a":[],"big":9007199254740993,'
               '"min":-9223372036854775808,"f":0.30000000000000004,"one":1.0,"tiny":5e-324,'
               '"nested":[{},[{}]],"s":"\\u00e9\\u2028/\\"","u":"żółw 🐢"}}')
        await ws.send(raw)
        out = await recv_raw(ws)
        for part in ('"e":{}', '"a":[]', '"big":9007199254740993', '"min":-9223372036854775808',
                     '"f":0.30000000000000004', '"one":1.0', '"tiny":5e-324', '"nested":[{},[{}]]',
                     '"u":"żółw 🐢"'):
            check(part in out, f"{part} not in the echo: {out}")
        got = json.loads(out)["payload"]["data"]
        want = json.loads(raw)["data"]
        check(got == want, f"echo differs: {got} vs {want}")
        await ws.close()


async def test_plugin_frame_must_be_utf8():
    """A plugin's string frame goes out as a text frame: one that is not UTF-8 is refused with a
    reason (the client would have to fail the connection), and nothing is sent."""
    with Node(_cfg()) as n:
        ws, _ = await connect_welcomed(n, "alice")
        await send_json(ws, {"type": "forge_badutf8"})
        f = await recv_json(ws)
        check(f.get("type") == "badutf8" and f.get("ok") is False and "UTF-8" in (f.get("err") or ""),
              f"a non-UTF-8 frame: {f}")
        await ws.close()
