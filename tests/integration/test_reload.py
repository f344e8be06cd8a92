"""SIGHUP reloads plugin sources: new plugin processes run the new code, running ones keep theirs,
and a source that no longer compiles leaves everything as it was."""
import asyncio
import os
import signal

from harness import Config, Node, Plugin, check, connect_welcomed, recv_json, send_json

VERSIONED = """
local function run(args)
  local inbox = process.inbox()
  local events = process.events()
  while true do
    local r = channel.select({inbox:case_receive(), events:case_receive()})
    if not r.ok then break end
    if r.channel == events then
      if r.value.kind == process.event.CANCEL then break end
    else
      local p = r.value:payload():data()
      process.send(p.conn_pid, "ws.message", {type = "version", v = VERSION, request_id = p.request_id})
    end
  end
end
return { run = run }
"""


def source(version):
    return f"local VERSION = {version}\n" + VERSIONED


async def version_of(ws, rid):
    await send_json(ws, {"type": "ver_get", "request_id": rid})
    f = await recv_json(ws)
    check(f.get("type") == "version" and f.get("request_id") == rid, f"version reply {f}")
    return f["v"]


async def wait_log(node, text, timeout=3.0):
    for _ in range(int(timeout / 0.05)):
        if text in node.log_text():
            return
        await asyncio.sleep(0.05)
    check(False, f"node log never said {text!r}\n" + node.log_tail())


async def test_sighup_new_processes_run_new_code():
    cfg = Config(plugins=[Plugin("ver_plugin", "ver_", "ver.lua", text=source(1))])
    with Node(cfg) as n:
        alice, _ = await connect_welcomed(n, "alice")
        check(await version_of(alice, "a1") == 1, "alice runs version 1")
        with open(os.path.join(cfg.dir, "ver.lua"), "w") as f:
            f.write(source(2))
        n.proc.send_signal(signal.SIGHUP)
        await wait_log(n, "plugin sources reloaded")
        bob, _ = await connect_welcomed(n, "bob")
        check(await version_of(bob, "b1") == 2, "a new user's plugin runs version 2")
        check(await version_of(alice, "a2") == 1, "alice's running plugin keeps version 1")
        await alice.close()
        await bob.close()


async def test_sighup_with_a_broken_source_keeps_the_old_code():
    cfg = Config(plugins=[Plugin("ver_plugin", "ver_", "ver.lua", text=source(1))])
    with Node(cfg) as n:
        with open(os.path.join(cfg.dir, "ver.lua"), "w") as f:
            f.write("local function run( -- syntax error\n")
        n.proc.send_signal(signal.SIGHUP)
        await wait_log(n, "reload failed")
        log = n.log_text()
        check("ver_plugin" in log and "ver.lua" in log, "the failure names the entry and the file\n" + n.log_tail())
        carol, _ = await connect_welcomed(n, "carol")
        check(await version_of(carol, "c1") == 1, "the old code still runs after a failed reload")
        await carol.close()
