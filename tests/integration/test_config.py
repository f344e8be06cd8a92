"""Configuration: `relay-node --check`, and refusal to start on a bad config."""
import os

import harness
from harness import Config, Node, Plugin, check, run_check

SPEC_SETUP_YAML = """version: "1.0"
namespace: app
entries:
  - name: os_env
    kind: env.storage.os
  - name: processes
    kind: process.host
    lifecycle:
      auto_start: true
  - name: dep.relay
    kind: ns.dependency
    component: wippy/relay
    version: "*"
    parameters:
      - name: application_host
        value: app:processes
      - name: env_storage
        value: app:os_env
      - name: user_security_scope
        value: app.security:user_scope
  - name: session_plugin
    kind: process.lua
    meta:
      type: relay.plugin
      command_prefix: session_
      auto_start: true
    source: file://session_plugin.lua
    modules: [json, time, logger]
    method: run
"""


def _write_spec_setup():
    d = harness.temp_dir()
    with open(os.path.join(harness.PLUGIN_DIR, "session_plugin.lua")) as f:
        src = f.read()
    with open(os.path.join(d, "session_plugin.lua"), "w") as f:
        f.write(src)
    path = os.path.join(d, "relay.yaml")
    with open(path, "w") as f:
        f.write(SPEC_SETUP_YAML)
    return path


def test_check_accepts_spec_setup_yaml():
    """The spec's Setup YAML plus the spec's plugin validates. It has no relay.node entry, so the
    node defaults to jwt mode; the secret comes from RELAY_JWT_SECRET (the documented override)."""
    path = _write_spec_setup()
    rc, out = run_check(path, env={"RELAY_JWT_SECRET": "s3cret-for-check"})
    check(rc == 0, f"--check on the spec's Setup YAML exited {rc}:\n{out}")


def test_check_accepts_standard_test_config():
    cfg = Config()
    cfg.write()
    rc, out = run_check(cfg.path)
    check(rc == 0, f"--check on the suite's standard config exited {rc}:\n{out}")


def _assert_rejected(cfg, entry, reasons, also_start=True, name_file=True):
    """--check exits non-zero naming the file, the entry and one of `reasons`; so does a start."""
    path = cfg.write() if isinstance(cfg, Config) else cfg
    rc, out = run_check(path)
    check(rc != 0, f"--check accepted a bad config (rc 0):\n{out}")
    low = out.lower()
    if name_file:
        check(path in out or os.path.basename(path) in out, f"--check output does not name the file {path}:\n{out}")
    if entry:
        check(entry.lower() in low, f"--check output does not name the entry {entry!r}:\n{out}")
    check(any(r.lower() in low for r in reasons), f"--check output gives none of the reasons {reasons}:\n{out}")
    if also_start:
        n = Node(cfg, write=False) if isinstance(cfg, Config) else None
        if n is not None:
            n.spawn()
            rc2 = n.wait_exit(5)
            if rc2 is None:
                n.stop(timeout=3)
                raise harness.TestFailure("the node started with a config that --check rejects\n" + n.log_tail())
            n.stop()
            check(rc2 != 0, f"the node exited 0 on a bad config\n" + n.log_tail())
            text = n.log_text().lower()
            check(entry is None or entry.lower() in text, "the start-up error does not name the entry\n" + n.log_tail())


def test_check_rejects_unknown_kind():
    cfg = Config(extra_entries=[{"name": "mystery", "kind": "relay.bogus"}])
    _assert_rejected(cfg, "mystery", ["relay.bogus", "kind"])


def test_check_rejects_unknown_parameter():
    cfg = Config(params={"bogus_param": "1"})
    _assert_rejected(cfg, "dep.relay", ["bogus_param"])


def test_check_rejects_missing_application_host():
    cfg = Config(omit_params=["application_host"])
    _assert_rejected(cfg, "dep.relay", ["application_host"])


def test_check_rejects_missing_user_security_scope():
    cfg = Config(omit_params=["user_security_scope"])
    _assert_rejected(cfg, "dep.relay", ["user_security_scope"])


def test_check_rejects_bad_duration():
    cfg = Config(params={"user_hub_inactivity_timeout": "soon"})
    _assert_rejected(cfg, "dep.relay", ["user_hub_inactivity_timeout"], also_start=False)


def test_check_rejects_non_numeric_max_connections():
    cfg = Config(params={"max_connections_per_user": "many"})
    _assert_rejected(cfg, "dep.relay", ["max_connections_per_user"], also_start=False)


def test_check_rejects_missing_source():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("ghost_plugin", "ghost_", "nope_missing.lua")])
    _assert_rejected(cfg, "ghost_plugin", ["nope_missing.lua"])


def test_check_rejects_directory_source():
    cfg = Config(plugins=[Plugin("dir_plugin", "dir_", "adir")])
    os.mkdir(os.path.join(cfg.dir, "adir"))
    _assert_rejected(cfg, "dir_plugin", ["adir"], also_start=False)


def test_check_rejects_lua_syntax_error():
    bad = "local function run(args\n    return 1\nend\nreturn { run = run }\n"
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua"),
                          Plugin("broken_plugin", "broken_", "broken.lua", text=bad)])
    # The file named may be the YAML or the Lua source; the entry must be named.
    path = cfg.write()
    rc, out = run_check(path)
    check(rc != 0, f"--check accepted a Lua syntax error:\n{out}")
    check("broken_plugin" in out, f"--check output does not name the entry broken_plugin:\n{out}")
    check("relay.yaml" in out or "broken.lua" in out, f"--check output names no file:\n{out}")
    check(any(w in out.lower() for w in ("syntax", "expected", "near", "unexpected", "broken.lua:")),
          f"--check output gives no Lua error:\n{out}")
    n = Node(cfg, write=False)
    n.spawn()
    rc2 = n.wait_exit(5)
    if rc2 is None:
        n.stop(timeout=3)
        raise harness.TestFailure("the node started with a plugin that has a syntax error\n" + n.log_tail())
    n.stop()
    check(rc2 != 0, "the node exited 0 on a Lua syntax error")


def _plugin_entry(name, prefix, source, **extra):
    e = {"name": name, "kind": "process.lua",
         "meta": {"type": "relay.plugin", "command_prefix": prefix, "auto_start": False},
         "source": "file://" + source}
    e.update(extra)
    return e


def test_check_rejects_plugin_without_its_method():
    """No `method:` means run; a source that defines no run is refused, naming the entry."""
    src = "local function main(args) end\n-- run is only a comment here\nreturn { main = main }\n"
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua")],
                 extra_entries=[_plugin_entry("main_plugin", "main_", "main.lua")])
    with open(os.path.join(cfg.dir, "main.lua"), "w") as f:
        f.write(src)
    _assert_rejected(cfg, "main_plugin", ["defines no 'run'"])
    # ... and with the method named, the same source passes
    cfg.extra_entries = [_plugin_entry("main_plugin", "main_", "main.lua", method="main")]
    rc, out = run_check(cfg.write())
    check(rc == 0, f"--check refused a plugin whose method is given and defined:\n{out}")


def test_check_rejects_unknown_method():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua", extra={"method": "serve"})])
    _assert_rejected(cfg, "echo_plugin", ["method 'serve'"])


def test_check_rejects_unknown_module():
    cfg = Config(plugins=[Plugin("echo_plugin", "echo_", "echo.lua", modules=("json", "sql"))])
    _assert_rejected(cfg, "echo_plugin", ["unknown module 'sql'"])


def test_check_rejects_unsupported_versions():
    cfg = Config()
    path = cfg.write()
    with open(path) as f:
        text = f.read()
    check(text.startswith('version: "1.0"\n') or text.startswith("version: '1.0'\n")
          or text.startswith("version: 1.0\n"), "the config does not start with its version:\n" + text[:80])
    first, rest = text.split("\n", 1)
    with open(path, "w") as f:
        f.write('version: "2.0"\n' + rest)
    _assert_rejected(path, None, ["version '2.0' is not supported"])
    dep = 'version: "*"'
    check(dep in rest or "version: '*'" in rest, "no dependency version in the config:\n" + rest)
    with open(path, "w") as f:
        f.write(first + "\n" + rest.replace(dep, 'version: "^3.0"').replace("version: '*'", 'version: "^3.0"'))
    _assert_rejected(path, "dep.relay", ["version '^3.0'"])


def test_check_rejects_yaml_syntax_error():
    d = harness.temp_dir()
    path = os.path.join(d, "relay.yaml")
    with open(path, "w") as f:
        f.write('version: "1.0"\nnamespace: app\nentries:\n  - name: [unclosed\n    kind: x\n')
    rc, out = run_check(path)
    check(rc != 0, f"--check accepted broken YAML:\n{out}")
    check("relay.yaml" in out, f"--check output does not name the file:\n{out}")


def test_check_rejects_missing_file():
    path = os.path.join(harness.temp_dir(), "does-not-exist.yaml")
    rc, out = run_check(path)
    check(rc != 0, f"--check accepted a missing file:\n{out}")
    check("does-not-exist.yaml" in out, f"--check output does not name the file:\n{out}")


def _assert_refuses_for_secret(cfg, env=None):
    n = Node(cfg, env=env)
    n.spawn()
    rc = n.wait_exit(5)
    if rc is None:
        n.stop(timeout=3)
        raise harness.TestFailure("the node started in jwt mode without a secret\n" + n.log_tail())
    n.stop()
    check(rc != 0, "the node exited 0 in jwt mode without a secret")
    check("secret" in n.log_text().lower(), "the refusal does not mention the secret\n" + n.log_tail())


def test_jwt_mode_without_secret_refuses_to_start():
    _assert_refuses_for_secret(Config(auth={"mode": "jwt"}))


def test_default_auth_is_jwt_and_needs_secret():
    """A relay.node entry without `auth` is jwt mode (the default), which needs a secret."""
    _assert_refuses_for_secret(Config(auth=False))


async def test_env_auth_mode_insecure_overrides_jwt():
    """RELAY_AUTH_MODE=insecure turns a jwt config (without secret) into insecure mode."""
    cfg = Config(auth={"mode": "jwt"})
    with Node(cfg, env={"RELAY_AUTH_MODE": "insecure"}) as n:
        ws, d = await harness.connect_welcomed(n, "alice")
        check(d["user_id"] == "alice", f"welcome user_id {d['user_id']!r}")
        await ws.close()


def test_insecure_mode_logs_a_warning():
    with Node(Config()) as n:
        import time
        time.sleep(0.2)
        text = n.log_text().lower()
        check("insecure" in text, "insecure mode started without a warning naming it\n" + n.log_tail())
