"""The shipped chat plugin (plugins/lua/chat.lua): rooms of users whose hubs live on different
nodes of a cluster sharing a real redis-server, talking through process.send("user.<id>", ...)
as the security policies allow; and the example config deploy/chat.yaml on one node."""
import asyncio
import os

import harness
from harness import Config, Node, Plugin, check, connect_welcomed, expect_silence, recv_json, send_json
from test_cluster import RedisServer, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "chat-test-secret-0123456789abcdef"

POLICIES = [
    {"name": "user_scope", "kind": "security.scope"},
    {"name": "message_users", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": ["user.*"], "effect": "allow"}},
    {"name": "muted_users", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": "*", "effect": "deny",
                "conditions": [{"field": "actor.meta.muted", "operator": "eq", "value": True}]}},
]


def _chat_plugin():
    with open(os.path.join(ROOT, "plugins", "lua", "chat.lua")) as f:
        return Plugin("chat_plugin", "chat_", "chat.lua", text=f.read(),
                      modules=("json", "time", "logger", "security"))


async def _user(node, name, meta=None):
    tok = harness.jwt_sign(harness.jwt_claims(sub=name, meta=meta or {}), SECRET)
    ws, _ = await connect_welcomed(node, name, token=tok)
    return ws


async def _frames(ws, n, timeout=3.0):
    """The next n frames (in arrival order)."""
    return [await recv_json(ws, timeout) for _ in range(n)]


async def _cmd(ws, op, rid, **data):
    await send_json(ws, {"type": "chat_" + op, "request_id": rid, "data": data})


def _ev(topic, **data):
    return {"topic": topic, "data": data}


async def _expect(ws, want, what, timeout=3.0):
    """Reads frames until every one of `want` came (any order; nothing else may come)."""
    want = list(want)
    got = []
    while want:
        f = await recv_json(ws, timeout)
        got.append(f)
        check(f in want, f"{what}: unexpected frame {f} (still waiting for {want}; got {got})")
        want.remove(f)


async def test_chat_across_two_nodes():
    redis = RedisServer()
    redis.start()
    nodes = []
    try:
        for nid in ("n1", "n2"):
            cfg = Config(plugins=[_chat_plugin()], extra_entries=POLICIES,
                         params={"user_security_scope": "app:user_scope",
                                 "max_connections_per_user": "10"},
                         auth={"mode": "jwt", "secret": SECRET},
                         node={"node_ttl": "2s", "lease_ttl": "2s"})
            nodes.append(Node(cfg, args=["--node-id", nid, "--redis", redis.url], name=nid))
        for nd in nodes:
            nd.start()
        for nd in nodes:
            wait_ready(nd)
        n1, n2 = nodes
        # each node must know the other is alive, or a lease held there reads as "no hub"
        for nd, other in ((n1, "n2."), (n2, "n1.")):
            for _ in range(100):
                if f'"node {other}' in nd.log_text():
                    break
                await asyncio.sleep(0.05)
            check(f'"node {other}' in nd.log_text(), f"{nd.name} never saw {other} up")
        alice = await _user(n1, "alice")
        bob = await _user(n2, "bob")
        carol = await _user(n2, "carol")
        mallory = await _user(n2, "mallory", {"muted": True})

        await _cmd(alice, "join", "a1", room="lobby")
        await _expect(alice, [{"type": "chat_ok", "request_id": "a1"},
                              _ev("chat.joined", room="lobby", host="alice", user="alice",
                                  members=["alice"])], "alice opens lobby")
        # bob (on n2) joins alice's room (on n1): his plugin forwards to user.alice
        await _cmd(bob, "join", "b1", room="lobby", host="alice")
        await _expect(bob, [{"type": "chat_ok", "request_id": "b1"},
                            _ev("chat.joined", room="lobby", host="alice", user="bob",
                                members=["alice", "bob"])], "bob joins")
        await _expect(alice, [_ev("chat.joined", room="lobby", host="alice", user="bob")],
                      "alice sees bob join")
        await _cmd(bob, "say", "b2", room="lobby", host="alice", text="hi from n2")
        said = _ev("chat.message", room="lobby", host="alice", user="bob", text="hi from n2")
        await _expect(bob, [{"type": "chat_ok", "request_id": "b2"}, said], "bob says")
        await _expect(alice, [said], "alice hears bob")
        await _cmd(alice, "say", "a2", room="lobby", text="hello n2")
        said = _ev("chat.message", room="lobby", host="alice", user="alice", text="hello n2")
        await _expect(alice, [{"type": "chat_ok", "request_id": "a2"}, said], "alice says")
        await _expect(bob, [said], "bob hears alice")

        # mallory is muted by policy: refused at her plugin, nothing reaches the room
        await _cmd(mallory, "join", "m1", room="lobby", host="alice")
        await _expect(mallory, [{"type": "chat_error", "request_id": "m1",
                                 "error": "permission denied"}], "mallory refused")
        await _cmd(mallory, "say", "m2", room="lobby", host="alice", text="spam")
        await _expect(mallory, [{"type": "chat_error", "request_id": "m2",
                                 "error": "permission denied"}], "mallory's say refused")
        # carol may send but is no member: the host answers her (through her hub on n2)
        await _cmd(carol, "say", "c1", room="lobby", host="alice", text="let me in")
        await _expect(carol, [{"type": "chat_ok", "request_id": "c1"},
                              _ev("chat.error", room="lobby", host="alice", error="not a member")],
                      "carol is no member")
        await expect_silence(alice, 0.4)
        await expect_silence(bob, 0.1)

        # a host nobody is: the look-up in Redis finds no hub after the send returned
        await _cmd(bob, "join", "b3", room="x", host="nobody")
        await _expect(bob, [{"type": "chat_ok", "request_id": "b3"},
                            _ev("chat.error", host="nobody", error="user offline")],
                      "a host without a hub")

        await _cmd(bob, "leave", "b4", room="lobby", host="alice")
        left = _ev("chat.left", room="lobby", host="alice", user="bob")
        await _expect(bob, [{"type": "chat_ok", "request_id": "b4"}, left], "bob leaves")
        await _expect(alice, [left], "alice sees bob leave")
        for ws in (alice, bob, carol, mallory):
            await ws.close()
    finally:
        for nd in nodes:
            nd.stop()
        redis.stop()


async def test_example_config_runs_the_chat():
    """deploy/chat.yaml as shipped (its own policies and source path), on a free port."""
    cfg = Config(plugins=[])
    cfg.path = os.path.join(ROOT, "deploy", "chat.yaml")
    with Node(cfg, args=["--listen", f"127.0.0.1:{cfg.port}"], write=False) as n:
        alice, w = await connect_welcomed(n, "alice")
        check("chat_" in w["plugins"], f"welcome plugins: {w['plugins']}")
        bob, _ = await connect_welcomed(n, "bob")
        await _cmd(alice, "join", "a", room="r")
        await _frames(alice, 2)
        await _cmd(bob, "join", "b", room="r", host="alice")
        await _frames(bob, 2)
        await _frames(alice, 1)
        await _cmd(bob, "say", "s", room="r", host="alice", text="yo")
        said = _ev("chat.message", room="r", host="alice", user="bob", text="yo")
        await _expect(alice, [said], "alice hears bob")
        await _expect(bob, [{"type": "chat_ok", "request_id": "s"}, said], "bob says")
        await _cmd(bob, "join", "x", room="r", host="system")  # no_system_user denies it
        await _expect(bob, [{"type": "chat_error", "request_id": "x",
                             "error": "permission denied"}], "user.system is denied")
        await alice.close()
        await bob.close()


async def test_chat_bounds_and_bad_requests():
    """100 rooms per host, 4096-byte messages, 64-byte names; malformed requests get an error
    and change nothing."""
    cfg = Config(plugins=[_chat_plugin()], extra_entries=POLICIES,
                 params={"user_security_scope": "app:user_scope"})
    with Node(cfg) as n:
        alice, _ = await connect_welcomed(n, "alice")
        for i in range(100):
            await _cmd(alice, "join", f"j{i}", room=f"r{i}")
        got = await _frames(alice, 200)
        check(sum(1 for f in got if f.get("type") == "chat_ok") == 100 and
              sum(1 for f in got if f.get("topic") == "chat.joined") == 100, "100 rooms opened")
        await _cmd(alice, "join", "full", room="r100")
        await _expect(alice, [{"type": "chat_ok", "request_id": "full"},
                              _ev("chat.error", room="r100", host="alice", error="too many rooms")],
                      "the 101st room")
        await _cmd(alice, "say", "t1", room="r0", text="x" * 4096)
        f = [await recv_json(alice), await recv_json(alice)]
        check({"type": "chat_ok", "request_id": "t1"} in f, f"4096 bytes of text: {f}")
        bad = [("say", dict(room="r0", text="x" * 4097), "text must be"),
               ("say", dict(room="r0", text=5), "text must be"),
               ("join", dict(room="r" * 65), "room and host"),
               ("join", dict(room="r0", host=""), "room and host"),
               ("join", dict(room=7), "room and host"),
               ("leave", dict(room="nope"), None)]
        for op, data, err in bad:
            await _cmd(alice, op, "bad", **data)
            if err is None:  # a leave of a room one is not in: the host says so
                await _expect(alice, [{"type": "chat_ok", "request_id": "bad"},
                                      _ev("chat.error", room="nope", host="alice",
                                          error="not a member")], "leave of no room")
                continue
            f = await recv_json(alice)
            check(f.get("type") == "chat_error" and err in f.get("error", ""),
                  f"{op} {str(data)[:60]}: {f}")
        await send_json(alice, {"type": "chat_dance", "request_id": "d"})
        f = await recv_json(alice)
        check(f == {"type": "chat_error", "request_id": "d", "error": "unknown command"}, f"{f}")
        # a client cannot pose as another user's forward: chat_member_* from a client is refused
        await send_json(alice, {"type": "chat_member_join", "room": "r0"})
        f = await recv_json(alice)
        check(f == {"type": "chat_error", "error": "unknown command"}, f"member_join by a client: {f}")
        await expect_silence(alice, 0.3)
        await alice.close()

