"""A session plugin in the platform's own shape (original-module.md section 6), written as a plugin
for the platform would be (type annotations, imports of library.lua entries, session processes
spawned linked and monitored with a context, uuid, the registry, env), runs unchanged: open,
message, command, close, eviction past MAX_SESSIONS_PER_USER, a crashed session, the plugin's
return when no session remains, shutdown when the last client leaves."""
import os
import shutil
import time

from harness import (PLUGIN_DIR, Config, Node, Plugin, check, connect_welcomed, metric_sum,
                     recv_json, send_json, still_works)

ENTRIES = [
    {"name": "psess_consts", "kind": "library.lua", "source": "file://psess_consts.lua"},
    {"name": "psess_registry", "kind": "library.lua", "source": "file://psess_registry.lua",
     "imports": {"consts": "app:psess_consts"}},
    {"name": "psess_session", "kind": "process.lua", "source": "file://psess_session.lua",
     "method": "run", "modules": ["ctx", "uuid"]},
    {"name": "psess_token", "kind": "env.variable", "variable": "PSESS_START_TOKEN",
     "storage": "app:os_env"},
]


def _cfg():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("session_plugin", "session_", "psess_plugin.lua",
                                 modules=("time", "uuid", "logger", "env"),
                                 extra={"imports": {"consts": "app:psess_consts",
                                                    "sessions": "app:psess_registry"}})],
                 extra_entries=ENTRIES)
    for f in ("psess_consts.lua", "psess_registry.lua", "psess_session.lua"):
        shutil.copy(os.path.join(PLUGIN_DIR, f), os.path.join(cfg.dir, f))
    return cfg


async def _until(ws, pred, what, timeout=5.0):
    """Reads frames until pred(frame) holds; returns it and the frames read before."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"no {what}; got {seen}")
        f = await recv_json(ws, timeout=left)
        if pred(f):
            return f, seen
        seen.append(f)


def _topic(t):
    return lambda f: f.get("topic") == t


async def test_platform_shaped_session_plugin():
    with Node(_cfg(), env={"PSESS_START_TOKEN": "tok-1"}) as n:
        ws, welcome = await connect_welcomed(n, "sally")
        # a new session needs the start token (read through the env module)
        await send_json(ws, {"type": "session_open", "request_id": "r0", "data": {"start_token": "x"}})
        f, _ = await _until(ws, _topic("error"), "token error")
        check(f["data"]["error"] == "token_invalid" and f["data"]["request_id"] == "r0", f"{f}")
        await send_json(ws, {"type": "session_open", "request_id": "r1", "data": {"start_token": "tok-1"}})
        opened, _ = await _until(ws, _topic("session.opened"), "session.opened")
        s1 = opened["data"]["session_id"]
        check(len(s1) == 36 and opened["data"]["active_session_ids"] == [s1]
              and opened["data"]["request_id"] == "r1", f"{opened}")
        # the session announces itself upstream; the plugin forwards session:<id> to the hub
        up, _ = await _until(ws, _topic("session:" + s1), "session update")
        check(up["data"]["status"] == "active" and up["data"]["user_id"] == "sally", f"{up}")
        # a message without session_id goes to the most recent session, which answers
        await send_json(ws, {"type": "session_message", "request_id": "r2", "data": {"text": "hi"}})
        m, _ = await _until(ws, lambda f: f.get("topic", "").startswith(f"session:{s1}:message:"),
                            "session message")
        check(m["data"]["text"] == "echo: hi" and m["data"]["request_id"] == "r2", f"{m}")
        # close: the id is required, must be known, and the last session is kept
        await send_json(ws, {"type": "session_close", "request_id": "r3", "data": {}})
        f, _ = await _until(ws, _topic("error"), "close error")
        check(f["data"]["error"] == "invalid_session_id", f"{f}")
        await send_json(ws, {"type": "session_close", "request_id": "r4", "data": {"session_id": "nope"}})
        f, _ = await _until(ws, _topic("error"), "close error")
        check(f["data"]["error"] == "session_not_found", f"{f}")
        await send_json(ws, {"type": "session_close", "request_id": "r5", "data": {"session_id": s1}})
        f, _ = await _until(ws, _topic("error"), "close error")
        check(f["data"]["error"] == "last_session", f"{f}")
        # three more sessions: past MAX_SESSIONS_PER_USER (3) the least recently active goes
        ids = [s1]
        for i in range(3):
            await send_json(ws, {"type": "session_open", "request_id": f"o{i}",
                                 "data": {"start_token": "tok-1"}})
            o, _ = await _until(ws, _topic("session.opened"), "session.opened")
            ids.append(o["data"]["session_id"])
        closed, _ = await _until(ws, _topic("session.closed"), "eviction")
        check(closed["data"]["session_id"] == s1 and closed["data"]["reason"] == "evicted"
              and s1 not in closed["data"]["active_session_ids"], f"{closed}")
        # a command to a named session; a crash of a session: status failed
        await send_json(ws, {"type": "session_command", "request_id": "c1",
                             "data": {"session_id": ids[1], "op": "ping"}})
        c, _ = await _until(ws, lambda f: f.get("topic") == "session:" + ids[1]
                            and f["data"].get("type") == "command", "command echo")
        check(c["data"]["op"] == "ping" and c["data"]["request_id"] == "c1", f"{c}")
        await send_json(ws, {"type": "session_command", "data": {"session_id": ids[1], "op": "crash"}})
        u, _ = await _until(ws, lambda f: f.get("topic") == "session:" + ids[1]
                            and f["data"].get("status") == "failed", "failed update")
        closed, _ = await _until(ws, _topic("session.closed"), "crash close")
        check(closed["data"]["session_id"] == ids[1]
              and "session crashed on command" in closed["data"]["reason"], f"{closed}")
        # close the others: when none remains the plugin returns normally (stopped), and the next
        # session_* command starts it again
        await send_json(ws, {"type": "session_close", "data": {"session_id": ids[2]}})
        await _until(ws, lambda f: f.get("topic") == "session.closed"
                     and f["data"]["session_id"] == ids[2], "close 2")
        await send_json(ws, {"type": "session_command", "data": {"session_id": ids[3], "op": "crash"}})
        await _until(ws, lambda f: f.get("topic") == "session.closed"
                     and f["data"]["session_id"] == ids[3], "close 3")
        time.sleep(0.2)
        await send_json(ws, {"type": "session_message", "request_id": "again", "data": {"text": "back"}})
        o, _ = await _until(ws, _topic("session.opened"), "a new session on demand")
        m, _ = await _until(ws, lambda f: f.get("topic", "").startswith("session:")
                            and f["data"].get("type") == "message", "message after restart")
        check(m["data"]["text"] == "echo: back", f"{m}")
        # another user does not see sally's sessions
        b, _ = await connect_welcomed(n, "bobby")
        await send_json(b, {"type": "session_message", "data": {"session_id": o["data"]["session_id"],
                                                                 "text": "x"}})
        f, _ = await _until(b, _topic("error"), "isolation")
        check(f["data"]["error"] == "session_not_found", f"{f}")
        await b.close()
        await still_works(n)
        # the last client leaves: the hub sends shutdown, the plugin finishes its session and,
        # none left, returns: two processes fewer (the others are the other users' plugins)
        before = metric_sum(n.metrics(), "relay_plugin_processes")
        await ws.close()
        deadline = time.monotonic() + 5
        while metric_sum(n.metrics(), "relay_plugin_processes") > before - 2:
            check(time.monotonic() < deadline, "sally's sessions did not finish at shutdown: "
                  f"{metric_sum(n.metrics(), 'relay_plugin_processes')} plugin processes")
            time.sleep(0.05)
        check("crashed: Missing required" not in n.log_text(), "the plugin did not get user_id")
