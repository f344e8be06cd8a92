"""The shipped plugins (plugins/lua/) and the README's example session, run against a real node."""
import json
import os
import re

import harness
from harness import Config, Node, Plugin, check, recv_json, recv_raw, send_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(ROOT, "plugins", "lua")


def _shipped(name, prefix, file, auto_start=True):
    with open(os.path.join(SHIPPED, file)) as f:
        return Plugin(name, prefix, file, auto_start=auto_start, text=f.read())


def _config():
    return Config(plugins=[_shipped("session_plugin", "session_", "session.lua"),
                           _shipped("echo_plugin", "echo_", "echo.lua", auto_start=False)])


def _readme_session():
    """The README's example: the lines after the websockets command, as (direction, text)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"\n    \$ /usr/bin/python3 -m websockets [^\n]*\n((?:    [<>] [^\n]*\n)+)", text)
    check(m is not None, "README has no example session after the websockets command")
    return [(ln[4], ln[6:]) for ln in m.group(1).splitlines()]


async def test_readme_example_is_what_the_node_sends():
    """Each client line of the README's example is sent to a node running the shipped plugins
    (as deploy/dev.yaml does); each server line after it must be the frame that comes back, byte
    for byte (the welcome's plugins map is elided as {...} in the README)."""
    lines = _readme_session()
    check(lines and lines[0][0] == "<", f"the example does not start with the welcome: {lines}")
    with Node(_config()) as n:
        ws = await harness.connect(n, user="alice")
        for direction, text in lines:
            if direction == ">":
                await ws.send(text)
                continue
            got = await recv_raw(ws)
            if '{...}' in text:
                head, tail = text.split("{...}")
                ok = got.startswith(head) and got.endswith(tail)
            else:
                ok = got == text
            check(ok, f"README shows\n  {text}\nthe node sent\n  {got}")
        await ws.close()


async def test_session_plugin_answers_every_request():
    with Node(_config()) as n:
        ws, _ = await harness.connect_welcomed(n, "bob")
        # a reply carries the request_id, whatever its JSON type
        for rid in ("r1", 42, {"k": [1, 2]}):
            await send_json(ws, {"type": "session_get_state", "request_id": rid})
            f = await recv_json(ws)
            check(f == {"type": "session_state", "data": {"status": "active"}, "request_id": rid},
                  f"session_get_state with request_id {rid!r}: {f}")
        await send_json(ws, {"type": "session_get_state"})
        f = await recv_json(ws)
        check(f == {"type": "session_state", "data": {"status": "active"}}, f"without request_id: {f}")
        # unknown topics, the lifecycle names included, are answered with unknown_command
        for t in ("session_hello", "session_resume", "session_shutdown"):
            await send_json(ws, {"type": t, "request_id": "q-" + t})
            f = await recv_json(ws)
            check(f.get("topic") == "error" and isinstance(f.get("data"), dict), f"{t}: {f}")
            d = f["data"]
            check(d.get("error") == "unknown_command" and d.get("request_id") == "q-" + t
                  and t in d.get("message", ""), f"{t}: error data {d}")
        await send_json(ws, {"type": "session_nothing"})
        d = await harness.recv_topic(ws, "error")
        check(d.get("error") == "unknown_command" and "request_id" not in d, f"without request_id: {d}")
        # the connection stays usable
        await send_json(ws, {"type": "echo_ping", "request_id": "e1", "data": {"x": 1}})
        f = await recv_json(ws)
        check(f == {"type": "echo_pong", "request_id": "e1", "data": {"x": 1}}, f"echo: {f}")
        await ws.close()
