"""The platform's API beyond the relay's own (issue 7): plain process.lua entries spawned with every
argument, exit values, links without monitors, with_context spawners, errors, env, funcs,
library.lua imports with per-instance state, type annotations, args.config's derived fields."""
import os
import shutil

from harness import (PLUGIN_DIR, Config, Node, Plugin, check, connect_welcomed, recv_json,
                     run_check, send_json, still_works)

FID_ENTRIES = [
    {"name": "child", "kind": "process.lua", "source": "file://fid_child.lua", "method": "run",
     "modules": ["ctx"]},
    {"name": "counter_lib", "kind": "library.lua", "source": "file://fid_counter.lua"},
    {"name": "double", "kind": "function.lua", "source": "file://fid_double.lua", "method": "main"},
    {"name": "fid_var", "kind": "env.variable", "variable": "FID_VAR", "storage": "app:os_env"},
    {"name": "fid_default", "kind": "env.variable", "variable": "FID_DEFAULT",
     "storage": "app:os_env", "default": "dflt"},
]


def _copy(cfg, *names):
    for n in names:
        shutil.copy(os.path.join(PLUGIN_DIR, n), os.path.join(cfg.dir, n))


def _fid_cfg():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("fid_plugin", "fid_", "fid.lua",
                                 modules=("json", "time", "env", "funcs"),
                                 extra={"imports": {"counter": "app:counter_lib"}})],
                 extra_entries=FID_ENTRIES, params={"max_connections_per_user": "3",
                                                    "queue_multiplier": "7",
                                                    "user_hub_inactivity_timeout": "100s"})
    _copy(cfg, "fid_child.lua", "fid_counter.lua", "fid_double.lua")
    return cfg


async def _go(n, user):
    ws, _ = await connect_welcomed(n, user)
    await send_json(ws, {"type": "fid_go"})
    f = await recv_json(ws, timeout=10)
    check(f.get("topic") == "fid", f"{f}")
    return ws, f["data"]


async def test_platform_api_beyond_the_relay():
    with Node(_fid_cfg(), env={"FID_VAR": "v1"}) as n:
        ws, d = await _go(n, "fidelio")
        check(d["cfg"] == {"mqs": 21, "gc": "40s", "hb": "20s", "host": "app:processes"}, f"{d['cfg']}")
        # spawn: every argument reached the child (a nil in the middle stays nil), its return
        # value is the EXIT's result.value; `return nil, err` is an error exit
        check(d["value"] == {"sum": 5, "d_nil": True, "e": "e"}, f"value {d.get('value')}")
        check(d["fail_err"] == "child failed: 7", f"{d.get('fail_err')}")
        # linked without a monitor: LINK_DOWN on a crash, no EXIT; nothing on a normal exit;
        # nothing after unlink
        check(d["linked_crash"] == ["pid.link.down"] and d["linked_crash_err"] == "boom", f"{d}")
        check(d["linked_ok"] == [] and d["unlinked"] == [], f"{d}")
        # with_context values reach ctx, with_message is delivered after the spawn
        check(d["ctx"] == {"request_id": "req-1", "all": {"request_id": "req-1", "tenant": "t"},
                           "topic": "hello", "payload": {"a": 1}, "missing": "NOT_FOUND"},
              f"ctx {d.get('ctx')}")
        check(d["err"] == {"kind": "NOT_FOUND", "msg": "nope", "retry": False, "id": 1, "is": True,
                           "isnt": False, "str": "nope", "wrapped": "loading: nope",
                           "wkind": "NOT_FOUND", "simple": "UNKNOWN", "stack": True}, f"{d['err']}")
        # env reads env.variable entries only: HOME is set on the node but not declared
        check(d["env"] == "v1" and d["env_home"] == "NOT_FOUND" and d["env_default"] == "dflt"
              and d["env_set"] == "PERMISSION_DENIED", f"{d}")
        check(d["f"] == 42 and d["f_err"] == "INVALID" and d["f_missing"] == "NOT_FOUND", f"{d}")
        check(d["cast"] == "cast", f"{d}")
        # the library's state is the instance's: bumped twice here, once more on the next go
        check(d["bump1"] == 1 and d["bump2"] == 2, f"{d}")
        ws2, d2 = await _go(n, "other_user")
        check(d2["bump1"] == 1 and d2["bump2"] == 2, f"another user's instance: {d2}")
        await send_json(ws, {"type": "fid_go"})
        f = await recv_json(ws, timeout=10)
        check(f["data"]["bump1"] == 3, f"{f}")
        await still_works(n)
        await ws.close()
        await ws2.close()


def test_imports_and_annotations_refused_clearly():
    # an import that names no library.lua entry of the file
    cfg = _fid_cfg()
    cfg.plugins[1].extra = {"imports": {"counter": "app:double"}}
    cfg.write()
    rc, out = run_check(cfg.path)
    check(rc != 0 and "imports.counter: app:double is not a library.lua entry" in out, out)
    # a runtime type used as a value: refused with its file and line
    cfg = _fid_cfg()
    cfg.plugins[1] = Plugin("fid_plugin", "fid_", "bad_types.lua",
                            text="type P = {x: number}\nlocal function run(a)\n"
                                 "  local p = P(a)\nend\nreturn {run = run}\n")
    cfg.write()
    rc, out = run_check(cfg.path)
    check(rc != 0 and "bad_types.lua: line 3: a declared type is used as a value" in out, out)


async def test_hub_plugin_args_look_the_same_every_way():
    """run(args) of a hub's plugin: user_metadata and user_hub_pid are made on first use (an idle
    plugin does not keep them), so each way of looking at the table is tried first, in an
    instance of its own: each sees all four fields, and the plugin's own values win."""
    from harness import jwt_claims, jwt_sign
    secret = "args-secret-0123456789abcdef0123"
    cfg = Config(auth={"mode": "jwt", "secret": secret},
                 plugins=[Plugin("args_plugin", "args_", "args_probe.lua")])
    every = ["config", "user_hub_pid", "user_id", "user_metadata"]
    meta = {"plan": "pro", "n": 3}
    with Node(cfg) as n:
        async def look(how, user):
            tok = jwt_sign(jwt_claims(user, meta=meta), secret)
            ws, _ = await connect_welcomed(n, token=tok)
            await send_json(ws, {"type": how})
            f = await recv_json(ws, timeout=10)
            await ws.close()
            check(f.get("type") == "seen" and f.get("ok") is True and "args_" + f.get("how", "") == how, f"{how}: {f}")
            return f["seen"]

        s = await look("args_index", "a1")
        check(s == {"meta": meta, "hub": "string", "id": "a1", "again": True, "keys": every}, f"index {s}")
        s = await look("args_pairs", "a2")
        check(s["keys"] == every, f"pairs {s}")
        s = await look("args_next", "a3")
        check(s["keys"] == every, f"next {s}")
        s = await look("args_rawget", "a4")
        check(s == {"meta": meta, "hub": "string"}, f"rawget {s}")
        s = await look("args_json", "a5")
        check(s["keys"] == every and s["meta"] == meta and s["hub"] == "string", f"json.encode {s}")
        s = await look("args_getmetatable", "a6")
        check(s == {"mt": True, "meta": meta}, f"getmetatable {s}")
        s = await look("args_setmetatable", "a7")
        check(s == {"meta": meta, "other": "dflt", "keys": every}, f"setmetatable {s}")
        s = await look("args_own_first", "a8")
        check(s == {"meta": "mine", "hub": "string"}, f"the plugin's own value {s}")
