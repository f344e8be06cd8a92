"""Security scopes and policies from the config, the Lua security module, and cross-user sends
(process.send to "user.<id>"): a real node, real WebSocket clients, a probe plugin (sec_probe.lua)
that asks what its client tells it to."""
import asyncio
import signal
import json
import os

import harness
from harness import (Config, Node, Plugin, check, connect_welcomed, expect_silence, metric_sum,
                     recv_json, run_check, send_json)

SECRET = "security-test-secret-0123456789"

# The user scope: sends to users allowed, but never by mallory and never to carol; documents
# readable when public; admins may do anything that nothing denies; nobody deletes.
POLICIES = [
    {"name": "user_scope", "kind": "security.scope"},
    {"name": "send_users", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": ["user.*"], "effect": "allow"}},
    {"name": "no_mallory", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.*", "resources": "*", "effect": "deny",
                "conditions": [{"field": "actor.id", "operator": "eq", "value": "mallory"}]}},
    {"name": "carol_private", "kind": "security.policy", "groups": ["app:user_scope"],
     "policy": {"actions": "*", "resources": "user.carol", "effect": "deny"}},
    {"name": "public_docs", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": ["read", "*.read"], "resources": "doc:*", "effect": "allow",
                "conditions": [{"field": "meta.public", "operator": "eq", "value": True}]}},
    {"name": "admins", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "*", "resources": "*", "effect": "allow",
                "conditions": [{"field": "actor.meta.role", "operator": "in",
                                "value": ["admin", "owner"]}]}},
    {"name": "no_delete", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "delete", "resources": "*", "effect": "deny"}},
    {"name": "other_scope", "kind": "security.scope", "policies": ["no_delete"]},
    {"name": "muted", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": "*", "effect": "deny",
                "conditions": [{"field": "actor.meta.muted", "operator": "eq", "value": True}]}},
    {"name": "vip_only", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": "user.vip", "effect": "deny",
                "conditions": [{"field": "actor.meta.role", "operator": "nin",
                                "value": ["admin"]}]}},
]
USER_POLICY_IDS = sorted("app:" + p["name"] for p in POLICIES if p["kind"] == "security.policy")


def sec_config(jwt=False, plugins=None, node=None):
    return Config(plugins=plugins or [Plugin("sec_plugin", "sec_", "sec_probe.lua",
                                             modules=("json", "time", "logger", "security"))],
                  params={"user_security_scope": "app:user_scope"}, extra_entries=POLICIES,
                  auth={"mode": "jwt", "secret": SECRET} if jwt else None, node=node)


async def user(node, name, meta=None):
    tok = harness.jwt_sign(harness.jwt_claims(sub=name, meta=meta or {}), SECRET)
    ws, _ = await connect_welcomed(node, name, token=tok)
    return ws


async def ask(ws, cmd, **data):
    await send_json(ws, {"type": "sec_" + cmd, "request_id": cmd, "data": data})
    while True:
        f = await recv_json(ws)
        if f.get("request_id") == cmd:
            return f


async def can(ws, action, resource, meta=None):
    d = {"action": action, "resource": resource}
    if meta is not None:
        d["meta"] = meta
    return (await ask(ws, "can", **d))["allowed"]


async def test_can_answers_from_the_policies():
    """security.can(action, resource, meta): wildcards in actions and resources, conditions on
    meta and on the actor's metadata (the token's meta claim), deny over allow, nothing matched
    = false."""
    with Node(sec_config(jwt=True)) as n:
        alice = await user(n, "alice")
        boss = await user(n, "boss", {"role": "admin"})
        mallory = await user(n, "mallory")
        cases = [
            (alice, "read", "doc:1", {"public": True}, True),
            (alice, "docs.read", "doc:1", {"public": True}, True),  # "*.read"
            (alice, "read", "doc:1", {"public": False}, False),     # condition fails
            (alice, "read", "doc:1", None, False),                  # meta.public absent
            (alice, "write", "doc:1", {"public": True}, False),     # no policy: undefined
            (alice, "read", "docs:1", {"public": True}, False),     # "doc:*" needs the colon
            (alice, "process.send", "user.bob", None, True),        # "user.*"
            (alice, "process.send", "user.", None, True),           # '*' matches nothing too
            (alice, "process.send", "user.carol", None, False),     # deny beats allow
            (alice, "process.send", "users.bob", None, False),
            (boss, "write", "anything", None, True),                # actor.meta.role in [...]
            (boss, "delete", "anything", None, False),              # deny beats the admin allow
            (boss, "process.send", "user.carol", None, False),
            (mallory, "process.send", "user.bob", None, False),     # actor.id eq mallory: deny
            (mallory, "read", "doc:1", {"public": True}, True),     # only process.* is denied
        ]
        for ws, action, resource, meta, want in cases:
            got = await can(ws, action, resource, meta)
            check(got is want, f"can({action!r}, {resource!r}, {meta}) = {got}, want {want}")
        for ws in (alice, boss, mallory):
            await ws.close()


async def test_scopes_and_policies_in_lua():
    """security.scope() is the user scope (every policy whose groups name it), named_scope and
    policy find the config's entries, Scope:with/without/contains/evaluate and
    Policy:evaluate give allow / deny / undefined."""
    with Node(sec_config(jwt=True)) as n:
        alice = await user(n, "alice")
        f = await ask(alice, "scope", named="app:other_scope", policy="app:no_delete",
                      action="delete", resource="doc:1")
        check(f["ids"] == USER_POLICY_IDS, f"scope() policies: {f['ids']}")
        check(f["actor_id"] == "alice", f"security.actor():id() = {f['actor_id']}")
        check(f["named_ids"] == ["app:no_delete"], f"named_scope: {f}")
        check(f["eval"] == "deny" and f["policy_eval"] == "deny" and f["with_eval"] == "deny",
              f"delete evaluates to deny: {f}")
        check(f["contains"] is True and f["without_eval"] == "undefined" and
              f["custom_eval"] == "deny", f"with/without/contains/new_scope: {f}")
        f = await ask(alice, "scope", named="app:nope", policy="app:nope", action="read",
                      resource="doc:1", meta={"public": True})
        check(f["eval"] == "allow", f"read of a public doc: {f}")
        check("named_ids" not in f and "app:nope" in f["named_err"], f"unknown scope: {f}")
        check("app:nope" in f["policy_err"], f"unknown policy: {f}")
        f = await ask(alice, "scope", action="write", resource="doc:1", actor_id="root",
                      actor_meta={"role": "owner"})
        check(f["eval"] == "allow", f"a new_actor with role owner may write: {f}")
        f = await ask(alice, "scope", action="write", resource="doc:1")
        check(f["eval"] == "undefined", f"nothing matches: undefined: {f}")
        await alice.close()


async def recv_until(ws, pred, what, timeout=3.0):
    seen = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        f = await recv_json(ws, max(0.05, end - loop.time()))
        seen.append(f)
        if pred(f):
            return f, seen
        check(loop.time() < end, f"{what}: not seen in {seen}")


async def test_cross_user_send_allowed_by_policy():
    """alice's plugin sends to user.bob: a topic that is no plugin prefix reaches bob's
    connections as a frame; one that matches bob's sec_ prefix reaches bob's plugin, which sees
    alice's plugin as msg:from() and alice as msg:from_user(). A send to oneself is a plain
    broadcast; a user without a hub is 'user offline'."""
    with Node(sec_config()) as n:
        alice, _ = await connect_welcomed(n, "alice")
        bob, _ = await connect_welcomed(n, "bob")
        f = await ask(alice, "send", user="bob", topic="news", data={"n": 1, "big": 2 ** 60})
        check(f["ok"] is True and "err" not in f, f"send to bob: {f}")
        f = await recv_json(bob)
        check(f == {"topic": "news", "data": {"n": 1, "big": 2 ** 60}}, f"bob's frame: {f}")
        # the platform's way: the registry's user.<id> name is the hub's address
        f = await ask(alice, "lookup_send", user="bob", topic="news", data={"n": 2})
        check(f["ok"] is True and f["to"] == "user.bob", f"lookup and send to bob: {f}")
        f = await recv_json(bob)
        check(f == {"topic": "news", "data": {"n": 2}}, f"bob's frame after a lookup: {f}")
        f = await ask(alice, "send", user="bob", topic="sec_note", data={"x": "y"})
        check(f["ok"] is True, f"send to bob's plugin: {f}")
        f = await recv_json(bob)
        d = f.get("data", {})
        check(f.get("topic") == "sec.got" and d.get("topic") == "note" and
              d.get("from_user") == "alice" and d.get("data") == {"x": "y"} and
              d.get("from", "").count(".") == 3, f"bob's plugin got: {f}")
        # to oneself: the own hub broadcasts it
        await send_json(alice, {"type": "sec_send", "request_id": "self",
                                "data": {"user": "alice", "topic": "memo", "data": [1]}})
        got = [await recv_json(alice), await recv_json(alice)]
        check({"topic": "memo", "data": [1]} in got and
              any(g.get("request_id") == "self" and g.get("ok") is True for g in got),
              f"send to oneself: {got}")
        f = await ask(alice, "send", user="dave", topic="news", data={})
        check(f["ok"] is False and f["err"] == "user offline", f"send to a user without hub: {f}")
        f = await ask(alice, "send", user="", topic="news", data={})
        check(f["ok"] is False and f["err"] == "invalid user id", f"empty user id: {f}")
        f = await ask(alice, "send", user="b" * 257, topic="news", data={})
        check(f["ok"] is False and f["err"] == "invalid user id", f"user id too long: {f}")
        f = await ask(alice, "register", name="user.bob")
        check(f["ok"] is False and "reserved" in f["err"], f"registering user.bob: {f}")
        await expect_silence(bob, 0.3)
        await alice.close()
        await bob.close()


async def test_refused_cross_user_send_delivers_nothing():
    """mallory (denied process.* by a condition on actor.id) and anyone writing to carol (denied
    by resource) get false, 'permission denied'; the receiver sees nothing, the refusal is
    counted and logged, and internal topics (and the hub's own welcome and error frames) stay
    refused whatever the policy says."""
    with Node(sec_config()) as n:
        mallory, _ = await connect_welcomed(n, "mallory")
        alice, _ = await connect_welcomed(n, "alice")
        bob, _ = await connect_welcomed(n, "bob")
        carol, _ = await connect_welcomed(n, "carol")
        before = metric_sum(n.metrics(), "relay_messages_refused_total") or 0
        for ws, to, topic in [(mallory, "bob", "news"), (mallory, "bob", "sec_note"),
                              (alice, "carol", "news"), (bob, "carol", "sec_note"),
                              (alice, "bob", "ws.close"), (alice, "bob", "ws.message"),
                              (alice, "bob", "api.push"), (alice, "bob", "pid.exit"),
                              (alice, "bob", "welcome"), (alice, "bob", "error")]:
            f = await ask(ws, "send", user=to, topic=topic, data={"text": "pwned"})
            check(f["ok"] is False and f["err"] == "permission denied",
                  f"send {topic} to {to}: {f} (expected false, 'permission denied')")
        await expect_silence(bob, 0.3)
        await expect_silence(carol, 0.3)
        after = metric_sum(n.metrics(), "relay_messages_refused_total") or 0
        check(after - before >= 8, f"refusals counted: {before} -> {after}")
        check("permission denied" in n.log_text() and "user.carol" in n.log_text(),
              "refusals logged")
        await ask(bob, "send", user="alice", topic="hello", data={})  # the policy still works
        f = await recv_json(alice)
        check(f == {"topic": "hello", "data": {}}, f"bob -> alice after the refusals: {f}")
        for ws in (mallory, alice, bob, carol):
            await ws.close()


async def test_without_policies_every_cross_user_send_is_refused():
    """A user scope with no policies (the default test config names none): can() is false and a
    send to another user is refused, as before policies existed."""
    cfg = Config(plugins=[Plugin("sec_plugin", "sec_", "sec_probe.lua",
                                 modules=("json", "time", "logger", "security"))])
    with Node(cfg) as n:
        alice, _ = await connect_welcomed(n, "alice")
        bob, _ = await connect_welcomed(n, "bob")
        check(await can(alice, "process.send", "user.bob") is False, "can() without policies")
        f = await ask(alice, "send", user="bob", topic="news", data={})
        check(f["ok"] is False and f["err"] == "permission denied", f"send without policies: {f}")
        await expect_silence(bob, 0.3)
        await alice.close()
        await bob.close()


def _check_refused(entries, entry, reason):
    cfg = Config(plugins=[], params={"user_security_scope": "app:user_scope"},
                 extra_entries=entries)
    path = cfg.write()
    rc, err = run_check(path)
    want = f"{path}: entry {entry}: "
    check(rc == 1 and want in err and reason in err,
          f"--check of a bad policy: rc {rc}, stderr {err!r} (wanted {want!r} ... {reason!r})")


def test_check_refuses_bad_policies():
    """relay-node --check names the file, the entry and the reason of a bad policy or scope."""
    pol = lambda **p: {"name": "p", "kind": "security.policy", "policy": p}
    ok = {"actions": "a", "resources": "r", "effect": "allow"}
    cases = [
        ([pol(actions="a", resources="r")], "p", "policy.effect"),
        ([pol(actions="a", resources="r", effect="permit")], "p", "is not allow or deny"),
        ([pol(actions="a", effect="allow")], "p", "missing policy.resources"),
        ([pol(**ok, extra=1)], "p", "unknown key 'extra' in policy"),
        ([pol(**ok, conditions=[{"field": "actor.id", "operator": "matches", "value": "x"}])],
         "p", "operator 'matches' is not supported"),
        ([pol(**ok, conditions=[{"field": "actor.id", "operator": "eq", "value_from": "meta.x"}])],
         "p", "value_from is not supported"),
        ([pol(**ok, conditions=[{"field": "actor.name", "operator": "eq", "value": "x"}])],
         "p", "field 'actor.name' is not"),
        ([pol(**ok, conditions=[{"field": "meta.n", "operator": "in", "value": "x"}])],
         "p", "must be a list"),
        ([pol(**ok, conditions=[{"field": "meta.n", "operator": "lt", "value": "x"}])],
         "p", "must be a number"),
        ([pol(**ok, conditions=[{"field": "meta.n", "operator": "eq"}])], "p", "needs a value"),
        ([{"name": "p", "kind": "security.policy", "policy": ok, "groups": ["a:b:c d"]}],
         "p", "is not namespace:name"),
        ([{"name": "user_scope", "kind": "security.scope", "policies": ["processes"]}],
         "user_scope", "is of kind process.host, not security.policy"),
        ([{"name": "user_scope", "kind": "security.scope", "policies": ["nowhere"]}],
         "user_scope", "names no entry"),
        ([{"name": "p", "kind": "security.policy", "policy": ok, "groups": ["processes"]}],
         "p", "is of kind process.host, not security.scope"),
    ]
    for entries, entry, reason in cases:
        _check_refused(entries, entry, reason)
    path = sec_config().write()
    rc, err = run_check(path)
    check(rc == 0, f"the test policies pass --check: rc {rc} {err!r}")


async def test_send_policies_see_the_actors_metadata():
    """The send check runs on the sender's node with the sender's metadata (the token's meta
    claim): a muted user is refused everywhere, only an admin reaches user.vip. A send to
    another user's hub or plugin by pid stays refused whatever the policy allows: only
    user.<id> sends are granted."""
    with Node(sec_config(jwt=True)) as n:
        alice = await user(n, "alice")
        boss = await user(n, "boss", {"role": "admin"})
        shh = await user(n, "shh", {"muted": True})
        vip = await user(n, "vip")
        f = await ask(shh, "send", user="alice", topic="news", data={})
        check(f["ok"] is False and f["err"] == "permission denied", f"muted user: {f}")
        f = await ask(alice, "send", user="vip", topic="news", data={})
        check(f["ok"] is False and f["err"] == "permission denied", f"alice -> vip: {f}")
        await expect_silence(vip, 0.3)
        f = await ask(boss, "send", user="vip", topic="news", data={"from": "boss"})
        check(f["ok"] is True, f"admin -> vip: {f}")
        f = await recv_json(vip)
        check(f == {"topic": "news", "data": {"from": "boss"}}, f"vip got: {f}")
        me = await ask(vip, "whoami")
        for pid in (me["hub"], me["plugin"]):
            for topic in ("news", "note"):
                f = await ask(boss, "sendpid", pid=pid, topic=topic, data={})
                check(f["ok"] is False and f["err"] == "permission denied",
                      f"boss -> vip's pid {pid} {topic}: {f}")
        await expect_silence(vip, 0.3)
        await expect_silence(alice, 0.1)
        for ws in (alice, boss, shh, vip):
            await ws.close()


async def test_can_bounds_its_arguments():
    """An action or resource over 4096 bytes raises (the plugin may catch it); 4096 is fine."""
    with Node(sec_config()) as n:
        alice, _ = await connect_welcomed(n, "alice")
        f = await ask(alice, "cansize", n=4096)
        check(f["ok"] is True, f"4096 bytes: {f}")
        f = await ask(alice, "cansize", n=4097)
        check(f["ok"] is False and "at most 4096 bytes" in f["err"], f"4097 bytes: {f}")
        await alice.close()


async def test_cross_user_lookups_in_flight_are_bounded():
    """In a cluster a send to a user with no connections here waits for the lease look-up in
    Redis; at most 10,000 wait node-wide, the next send is refused at once ('mailbox full').
    Each one that finds no hub is told to its sender as user.undelivered, and counted."""
    from test_cluster import RedisServer, wait_ready
    redis = RedisServer()
    redis.start()
    try:
        # a mailbox big enough for every notice (past plugin_queue they are dropped, counted)
        nd = Node(sec_config(node={"plugin_queue": 20000}),
                  args=["--node-id", "n1", "--redis", redis.url], name="n1")
        nd.start()
        wait_ready(nd)
        alice, _ = await connect_welcomed(nd, "alice")
        # Redis paused (under the node's 2 s command timeout) while the plugin sends: every
        # look-up stays in flight, however the plugin's run is sliced by preemption
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            f = await ask(alice, "flood", user="ghost", n=10001)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        check(f["sent"] == 10000 and f["errs"] == {"mailbox full": 1},
              f"10,001 sends to a user without hub: {f}")
        count = 0
        for _ in range(100):
            count = (await ask(alice, "undelivered"))["count"]
            if count == 10000:
                break
            await asyncio.sleep(0.05)
        check(count == 10000, f"user.undelivered told {count} times, expected 10000")
        dropped = metric_sum(nd.metrics(), "relay_messages_dropped_total") or 0
        check(dropped >= 10000, f"the undelivered sends counted as dropped: {dropped}")
        lines = nd.log_text().count("not delivered")
        check(1 <= lines <= 20, f"{lines} log lines for 10,000 undelivered sends")
        f = await ask(alice, "flood", user="ghost", n=10)
        check(f["sent"] == 10, f"the bound is free again: {f}")
        await alice.close()
        nd.stop()
    finally:
        redis.stop()


def test_check_bounds_policies():
    """At most 32 conditions per policy, 1024 policies, 256 scopes."""
    cond = {"field": "actor.id", "operator": "eq", "value": "x"}
    ok = {"actions": "a", "resources": "r", "effect": "allow"}
    _check_refused([{"name": "p", "kind": "security.policy",
                     "policy": dict(ok, conditions=[cond] * 33)}], "p", "more than 32")
    _check_refused([{"name": f"p{i}", "kind": "security.policy", "policy": ok}
                    for i in range(1025)], "p1024", "more than 1024 security policies")
    _check_refused([{"name": f"s{i}", "kind": "security.scope"} for i in range(257)],
                   "s256", "more than 256 security scopes")
    cfg = Config(plugins=[], params={"user_security_scope": "app:s0"},
                 extra_entries=[{"name": "p", "kind": "security.policy",
                                 "policy": dict(ok, conditions=[cond] * 32)}] +
                               [{"name": f"s{i}", "kind": "security.scope"} for i in range(256)])
    rc, err = run_check(cfg.write())
    check(rc == 0, f"32 conditions and 256 scopes pass: {err!r}")


async def test_undelivered_on_another_node_is_told_to_the_sender():
    """A granted send whose hub is not there when it arrives on the hub's node (the lease names
    a hub that is gone) is answered across the cluster: the sender's plugin gets
    user.undelivered, the receiving node counts the drop."""
    from test_cluster import RedisServer, wait_ready
    redis = RedisServer()
    redis.start()
    nodes = []
    try:
        for nid in ("n1", "n2"):
            nodes.append(Node(sec_config(), args=["--node-id", nid, "--redis", redis.url], name=nid))
        for nd in nodes:
            nd.start()
        for nd in nodes:
            wait_ready(nd)
        n1, n2 = nodes
        for nd, other in ((n1, "n2."), (n2, "n1.")):
            for _ in range(100):
                if f'"node {other}' in nd.log_text():
                    break
                await asyncio.sleep(0.05)
        alice, _ = await connect_welcomed(n1, "alice")
        bob, _ = await connect_welcomed(n2, "bob")
        hub = (await ask(bob, "whoami"))["hub"]  # n2.<incarnation>.h<serial>.<random>
        node, inc = hub.split(".")[:2]
        ghost_hub = f"{node}.{inc}.h999999.deadbeef"
        redis.cli("SET", "relay:{ghost}:lease", f"{node}|{inc}|7|{ghost_hub}", "PX", "20000")
        before = metric_sum(n2.metrics(), "relay_messages_dropped_total") or 0
        f = await ask(alice, "send", user="ghost", topic="news", data={})
        check(f["ok"] is True, f"send to ghost (a lease, no hub): {f}")
        count = 0
        for _ in range(60):
            count = (await ask(alice, "undelivered"))["count"]
            if count:
                break
            await asyncio.sleep(0.05)
        check(count == 1, f"alice told of the undelivered send {count} times")
        after = metric_sum(n2.metrics(), "relay_messages_dropped_total") or 0
        check(after > before, f"n2 counted the drop: {before} -> {after}")
        check("not delivered" in n2.log_text(), "n2 logged it")
        # a real cross-node send still arrives
        f = await ask(alice, "send", user="bob", topic="news", data={"ok": 1})
        check(f["ok"] is True, f"{f}")
        f = await recv_json(bob)
        check(f == {"topic": "news", "data": {"ok": 1}}, f"bob on n2 got {f}")
        await alice.close()
        await bob.close()
    finally:
        for nd in nodes:
            nd.stop()
        redis.stop()
