"""Process groups (the pg module and the user hub's pg.subscribe / pg.unsubscribe): a real node,
real WebSocket clients, a probe plugin (pg_probe.lua) that does what its client tells it to."""
import asyncio

from harness import (Config, Node, Plugin, check, connect_welcomed, expect_silence, metric_sum,
                     recv_json, send_json)

# The user scope: pg.open on app:pg only; the group methods on room.* only; mallory no pg at all;
# eve may join but not send; process.send to other users allowed (so that a refused pg.subscribe
# from another user is the hub's refusal, not the sender's).
POLICIES = [
    {"name": "user_scope", "kind": "security.scope"},
    {"name": "pg_open", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "pg.open", "resources": "app:pg", "effect": "allow"}},
    {"name": "pg_rooms", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": ["pg.join", "pg.leave", "pg.get_members", "pg.get_local_members",
                            "pg.broadcast", "pg.broadcast_local"],
                "resources": "room.*", "effect": "allow"}},
    {"name": "pg_list", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "pg.which_*", "resources": "*", "effect": "allow"}},
    {"name": "no_mallory", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "pg.*", "resources": "*", "effect": "deny",
                "conditions": [{"field": "actor.id", "operator": "eq", "value": "mallory"}]}},
    {"name": "eve_quiet", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "pg.broadcast*", "resources": "*", "effect": "deny",
                "conditions": [{"field": "actor.id", "operator": "eq", "value": "eve"}]}},
    {"name": "send_users", "kind": "security.policy", "groups": ["user_scope"],
     "policy": {"actions": "process.send", "resources": "user.*", "effect": "allow"}},
]


def pg_config(node=None):
    return Config(plugins=[Plugin("pg_plugin", "pg_", "pg_probe.lua",
                                  modules=("json", "time", "logger", "pg"))],
                  params={"user_security_scope": "app:user_scope"}, extra_entries=POLICIES,
                  node=node)


async def ask(ws, cmd, **data):
    await send_json(ws, {"type": "pg_" + cmd, "request_id": cmd, "data": data})
    while True:
        f = await recv_json(ws)
        if f.get("request_id") == cmd:
            return f


async def got(ws, timeout=3.0):
    """The next probe.got frame (a group's send that reached this user's plugin)."""
    f = await recv_json(ws, timeout)
    check(f.get("topic") == "probe.got", f"expected a probe.got frame, got {f}")
    return f["data"]


async def users(n, *names):
    out = []
    for name in names:
        ws, _ = await connect_welcomed(n, name)
        out.append(ws)
    return out


async def test_join_members_and_broadcast():
    """Two users' plugins join room.1; get_members lists both pids; a broadcast reaches every
    member (the sender too) with the sender's pid and user; a non-member sees nothing;
    which_groups lists the group; multi-join needs as many leaves; a batch join works."""
    with Node(pg_config()) as n:
        alice, bob, carol = await users(n, "alice", "bob", "carol")
        apid = (await ask(alice, "whoami"))["pid"]
        bpid = (await ask(bob, "whoami"))["pid"]
        f = await ask(alice, "open")
        check(f["ok"] is True and f["str"] == "pg.Instance{app:pg}", f"open: {f}")
        for ws in (alice, bob):
            f = await ask(ws, "join", group="room.1")
            check(f["ok"] is True and "err" not in f, f"join: {f}")
        f = await ask(carol, "members", group="room.1")
        check(sorted(f["members"]) == sorted([apid, bpid]), f"members seen by carol: {f}")
        f = await ask(carol, "members", group="room.1", **{"local": True})
        check(sorted(f["members"]) == sorted([apid, bpid]), f"local members: {f}")
        f = await ask(carol, "members", group="room.none")
        check(f["members"] == [], f"members of an unknown group: {f}")
        f = await ask(carol, "groups")
        check(f["groups"] == ["room.1"], f"which_groups: {f}")
        f = await ask(alice, "bcast", group="room.1", topic="chat", data={"text": "hi", "n": 2 ** 60})
        check(f["ok"] is True, f"broadcast: {f}")
        for ws in (alice, bob):
            d = await got(ws)
            check(d == {"topic": "chat", "from": apid, "from_user": "alice",
                        "data": {"text": "hi", "n": 2 ** 60}}, f"member got: {d}")
        await expect_silence(carol, 0.3)
        # several payloads: one message each, in order
        f = await ask(bob, "bcast", group="room.1", topic="count", n=3)
        check(f["ok"] is True, f"broadcast of 3 payloads: {f}")
        seen = [(await got(alice))["data"] for _ in range(3)]
        check(seen == [1, 2, 3], f"alice got {seen}")
        for _ in range(3):
            await got(bob)
        # multi-join: two joins, two leaves
        await ask(alice, "join", group="room.1")
        await ask(alice, "leave", group="room.1")
        f = await ask(carol, "members", group="room.1")
        check(apid in f["members"], f"alice is still a member after one of two leaves: {f}")
        f = await ask(alice, "leave", group="room.1")
        check(f["ok"] is True, f"second leave: {f}")
        f = await ask(alice, "leave", group="room.1")
        check(f["ok"] is False and f["err"] == "not a member of group: room.1", f"third leave: {f}")
        f = await ask(carol, "members", group="room.1")
        check(f["members"] == [bpid], f"members after alice left: {f}")
        f = await ask(carol, "join", groups=["room.2", "room.3"])
        check(f["ok"] is True, f"batch join: {f}")
        f = await ask(carol, "groups")
        check(f["groups"] == ["room.1", "room.2", "room.3"], f"which_groups: {f}")
        f = await ask(carol, "leave", groups=["room.2", "room.9"])
        check(f["ok"] is True, f"batch leave, one a member: {f}")
        f = await ask(carol, "groups", **{"local": True})
        check(f["groups"] == ["room.1", "room.3"], f"which_local_groups: {f}")
        for ws in (alice, bob, carol):
            await ws.close()


async def test_permission_denied_and_nothing_delivered():
    """Without the grant: pg.open of another scope, mallory's open, a join outside room.*, eve's
    broadcast: nil, 'permission denied', and the members see nothing."""
    with Node(pg_config()) as n:
        alice, bob, mallory, eve = await users(n, "alice", "bob", "mallory", "eve")
        f = await ask(alice, "open", scope="app:secret")
        check(f["ok"] is False and f["err"] == "permission denied", f"open app:secret: {f}")
        f = await ask(mallory, "open")
        check(f["ok"] is False and f["err"] == "permission denied", f"mallory's open: {f}")
        f = await ask(alice, "join", group="lobby")
        check(f["ok"] is False and f["err"] == "permission denied", f"join lobby: {f}")
        f = await ask(alice, "join", groups=["room.1", "lobby"])
        check(f["ok"] is False and f["err"] == "permission denied", f"batch with lobby: {f}")
        f = await ask(bob, "members", group="room.1")
        check(f["members"] == [], f"a refused batch joins nothing: {f}")
        await ask(bob, "join", group="room.1")
        f = await ask(eve, "join", group="room.1")
        check(f["ok"] is True, f"eve may join: {f}")
        for topic in ("chat",):
            f = await ask(eve, "bcast", group="room.1", topic=topic, data={"text": "pwned"})
            check(f["ok"] is False and f["err"] == "permission denied", f"eve's broadcast: {f}")
        f = await ask(eve, "bcast", group="room.1", topic="chat", data={}, **{"local": True})
        check(f["ok"] is False and f["err"] == "permission denied", f"eve's broadcast_local: {f}")
        f = await ask(alice, "bcast", group="lobby", topic="chat", data={})
        check(f["ok"] is False and f["err"] == "permission denied", f"broadcast to lobby: {f}")
        await expect_silence(bob, 0.3)
        await expect_silence(eve, 0.1)
        # topics a group's send may not carry: the hub's own frames, internal and pg.* topics
        for topic in ("welcome", "error", "pg.subscribe", "ws.close", "pid.exit", "api.push",
                      "user.undelivered", "@x", ""):
            f = await ask(alice, "bcast", group="room.1", topic=topic, data={})
            check(f["ok"] is False and f["err"] in ("topic reserved or invalid", "topic is required"),
                  f"broadcast with topic {topic!r}: {f}")
        await expect_silence(bob, 0.3)
        for ws in (alice, bob, mallory, eve):
            await ws.close()


async def test_release():
    """release() is idempotent and true; after it every method answers nil, 'pg instance is
    released'; tostring says so."""
    with Node(pg_config()) as n:
        (alice,) = await users(n, "alice")
        f = await ask(alice, "release")
        check(f["ok"] is True and "joined" not in f and f["err2"] == "pg instance is released" and
              f["str"] == "pg.Instance{app:pg, released}", f"release: {f}")
        await alice.close()


async def test_bounds():
    """pg_max_scopes, pg_max_groups and pg_max_members refuse with a clear error, are counted in
    relay_plugin_refusals_total{limit}, and the instance goes on."""
    node = {"pg_max_scopes": 3, "pg_max_groups": 4, "pg_max_members": 2}
    with Node(pg_config(node=node)) as n:
        alice, bob, carol = await users(n, "alice", "bob", "carol")
        f = await ask(alice, "opens", n=5)
        check(f["count"] == 3 and f["err"] == "too many pg scopes (pg_max_scopes is 3)",
              f"opens: {f}")
        f = await ask(bob, "joins", prefix="room.", n=6)
        check(f["count"] == 4 and f["err"] == "too many groups (pg_max_groups is 4)", f"joins: {f}")
        f = await ask(bob, "join", groups=["room.1"])  # a multi-join counts too
        check(f["ok"] is False and "pg_max_groups" in f["err"], f"a fifth join: {f}")
        await ask(carol, "join", group="room.1")
        f = await ask(alice, "join", group="room.1")
        check(f["ok"] is False and f["err"] == "group is full (pg_max_members is 2)",
              f"a third member: {f}")
        f = await ask(alice, "join", groups=["room.9", "room.1"])
        check(f["ok"] is False and "pg_max_members" in f["err"], f"batch into a full group: {f}")
        f = await ask(alice, "members", group="room.9")
        check(f["members"] == [], f"the batch's first join was undone: {f}")
        m = n.metrics()
        for limit in ("pg_scopes", "pg_groups", "pg_members"):
            v = metric_sum(m, "relay_plugin_refusals_total", f'limit="{limit}"') or 0
            check(v >= 1, f"relay_plugin_refusals_total{{limit={limit}}} = {v}")
        f = await ask(alice, "whoami")
        check(f.get("pid"), f"alice's plugin goes on: {f}")
        for ws in (alice, bob, carol):
            await ws.close()


async def test_members_leave_when_they_exit():
    """A member that exits (here: crashes; the hub restarts it) is no longer listed, and the next
    broadcast reaches only the living."""
    with Node(pg_config()) as n:
        alice, bob = await users(n, "alice", "bob")
        apid = (await ask(alice, "whoami"))["pid"]
        await ask(alice, "join", group="room.1")
        await ask(bob, "join", group="room.1")
        await send_json(alice, {"type": "pg_die", "request_id": "die", "data": {}})
        loop = asyncio.get_running_loop()
        end = loop.time() + 3
        while True:
            f = await ask(bob, "members", group="room.1")
            if apid not in f["members"]:
                break
            check(loop.time() < end, f"the dead member is still listed: {f}")
            await asyncio.sleep(0.05)
        check(len(f["members"]) == 1, f"only bob is left: {f}")
        f = await ask(bob, "bcast", group="room.1", topic="chat", data={"x": 1})
        check(f["ok"] is True, f"broadcast: {f}")
        d = await got(bob)
        check(d["data"] == {"x": 1}, f"bob got his own: {d}")
        await alice.close()
        await bob.close()


async def test_hub_subscribe_delivers_to_every_connection():
    """A plugin asks its hub to join room.1 (pg.subscribe {scope, group}); a group send then
    reaches every connection of the user as {"topic": T, "data": D}, and the pg.subscribe itself
    is no frame. pg.unsubscribe {group} ends it. Another user's pg.subscribe to this hub (allowed
    process.send on user.*) is refused by the hub; so is a subscribe the user's own policy does
    not allow (mallory)."""
    with Node(pg_config()) as n:
        alice1, alice2, bob, carol, mallory = await users(n, "alice", "alice", "bob", "carol",
                                                          "mallory")
        f = await ask(alice1, "subscribe", scope="app:pg", group="room.1")
        check(f["ok"] is True, f"pg.subscribe sent: {f}")
        f = await ask(alice1, "subscribe", scope="app:pg", group="room.1")  # once is enough
        await asyncio.sleep(0.2)
        await expect_silence(alice2, 0.2)  # not a frame
        bpid = (await ask(bob, "whoami"))["pid"]
        f = await ask(bob, "members", group="room.1")
        check(len(f["members"]) == 1 and f["members"][0].split(".")[2].startswith("h"),
              f"the hub is the member: {f}")
        f = await ask(bob, "bcast", group="room.1", topic="chat", data={"text": "hello"})
        check(f["ok"] is True, f"bob's broadcast: {f}")
        for ws in (alice1, alice2):
            f = await recv_json(ws)
            check(f == {"topic": "chat", "data": {"text": "hello"}}, f"alice's frame: {f}")
        await expect_silence(carol, 0.2)
        # carol subscribes alice's hub to room.2: refused by alice's hub
        before = metric_sum(n.metrics(), "relay_messages_refused_total") or 0
        f = await ask(carol, "subscribe", scope="app:pg", group="room.2", user="alice")
        check(f["ok"] is True, f"carol's send to user.alice is allowed by process.send: {f}")
        await asyncio.sleep(0.2)
        f = await ask(bob, "members", group="room.2")
        check(f["members"] == [], f"alice's hub did not join room.2: {f}")
        after = metric_sum(n.metrics(), "relay_messages_refused_total") or 0
        check(after > before, f"the refusal is counted: {before} -> {after}")
        # mallory's own hub may not join (her policy denies pg.*)
        await ask(mallory, "subscribe", scope="app:pg", group="room.1")
        await asyncio.sleep(0.2)
        f = await ask(bob, "members", group="room.1")
        check(len(f["members"]) == 1, f"mallory's hub did not join: {f}")
        await expect_silence(mallory, 0.2)
        # unsubscribe
        await ask(alice1, "unsubscribe", group="room.1")
        await asyncio.sleep(0.2)
        f = await ask(bob, "members", group="room.1")
        check(f["members"] == [], f"after pg.unsubscribe: {f}")
        await ask(bob, "bcast", group="room.1", topic="chat", data={"text": "gone"})
        await expect_silence(alice1, 0.3)
        await expect_silence(alice2, 0.1)
        check(bpid, "bob's pid")
        for ws in (alice1, alice2, bob, carol, mallory):
            await ws.close()


async def test_hub_leaves_its_groups_when_it_exits():
    """A subscribed hub that is collected (no clients for user_hub_inactivity_timeout) is no
    longer a member."""
    cfg = pg_config()
    cfg.params["user_hub_inactivity_timeout"] = "1s"
    with Node(cfg) as n:
        alice, bob = await users(n, "alice", "bob")
        await ask(alice, "subscribe", scope="app:pg", group="room.1")
        await asyncio.sleep(0.2)
        f = await ask(bob, "members", group="room.1")
        check(len(f["members"]) == 1, f"alice's hub joined: {f}")
        await alice.close()
        loop = asyncio.get_running_loop()
        end = loop.time() + 8
        while True:
            f = await ask(bob, "members", group="room.1")
            if not f["members"]:
                break
            check(loop.time() < end, f"the collected hub is still a member: {f}")
            await asyncio.sleep(0.2)
        await bob.close()


test_hub_leaves_its_groups_when_it_exits.timeout = 30
