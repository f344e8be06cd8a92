"""What the console's cluster view reads from the server API: GET /api/v1/users (paged, bounded;
standalone and across a 2-node cluster on a real redis-server) and CORS on the API listener for
the origins in api.cors_origins only."""
import http.client

from harness import Node, check, connect_welcomed, run_check
from test_api import ENV, KEY, Api, api_config, expect_err, in_thread
from test_cluster import RedisServer, wait_ready

ORIGIN = "http://127.0.0.1:8080"


def page_all(api, count):
    users, cursor, pages = [], "0", 0
    while True:
        st, _, j = api.get(f"/api/v1/users?cursor={cursor}&count={count}")
        check(st == 200 and isinstance(j["users"], list), f"users page: {st} {j}")
        check(len(j["users"]) <= 10 * count, f"page over 10 x count: {j}")
        users += j["users"]
        cursor, pages = j["cursor"], pages + 1
        check(pages < 200, "paging does not end")
        if cursor == "0":
            return users, pages, j["cluster"]


async def test_api_users_standalone_paged():
    cfg = api_config()
    with Node(cfg, env=ENV) as node:
        api = Api(cfg.api_port)
        names = [f"u{i:02d}" for i in range(12)]
        socks = [(await connect_welcomed(node, n))[0] for n in names]
        users, pages, cluster = await in_thread(page_all, api, 5)
        check(sorted(users) == names and pages >= 3 and cluster is False, f"{pages} {users}")
        more = [(await connect_welcomed(node, f"v{i:03d}"))[0] for i in range(100)]
        st, _, j = await in_thread(api.get, "/api/v1/users?count=500")
        check(st == 200 and len(j["users"]) == 100 and j["cursor"] != "0", f"count over 100 is 100: {j}")
        users, _, _ = await in_thread(page_all, api, 100)
        check(len(set(users)) == 112, f"all pages: {len(users)}")
        expect_err(await in_thread(api.get, "/api/v1/users?cursor=abc"), 400, "bad_request")
        expect_err(await in_thread(api.get, "/api/v1/users?cursor=" + "1" * 33), 400, "bad_request")
        socks += more
        expect_err(await in_thread(api.get, "/api/v1/users", key=None), 401, "unauthorized")
        for ws in socks:
            await ws.close()


async def test_api_users_cluster():
    redis = RedisServer().start()
    nodes = []
    for nid in ("n1", "n2"):
        cfg = api_config(node={"node_ttl": "2s", "lease_ttl": "2s"})
        nodes.append((Node(cfg, env=ENV, args=["--node-id", nid, "--redis", redis.url], name=nid), cfg))
    (n1, c1), (n2, c2) = nodes
    with n1, n2:
        wait_ready(n1)
        wait_ready(n2)
        socks = [(await connect_welcomed(n1, f"a{i}"))[0] for i in range(4)]
        socks += [(await connect_welcomed(n2, f"b{i}"))[0] for i in range(3)]
        for c in (c1, c2):  # either node lists every user of the cluster
            users, _, cluster = await in_thread(page_all, Api(c.api_port), 2)
            check(cluster is True and sorted(set(users)) == ["a0", "a1", "a2", "a3", "b0", "b1", "b2"],
                  f"cluster users via {c.api_port}: {users}")
        for ws in socks:
            await ws.close()
    redis.stop()
test_api_users_cluster.timeout = 60


def raw(port, method, path, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, headers=headers)
        r = c.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        c.close()


def test_api_cors_only_configured_origins():
    cfg = api_config(api={"cors_origins": [ORIGIN]})
    with Node(cfg, env=ENV):
        pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization"}
        st, h = raw(cfg.api_port, "OPTIONS", "/api/v1/nodes", pre)
        check(st == 204 and h.get("access-control-allow-origin") == ORIGIN, f"preflight {st} {h}")
        check("authorization" in h.get("access-control-allow-headers", ""), f"{h}")
        check("GET" in h.get("access-control-allow-methods", ""), f"{h}")
        st, h = raw(cfg.api_port, "GET", "/api/v1/nodes", {"Origin": ORIGIN, "Authorization": "Bearer " + KEY})
        check(st == 200 and h.get("access-control-allow-origin") == ORIGIN and h.get("vary") == "Origin",
              f"GET with origin {st} {h}")
        # an error answer carries it too (the page can read why)
        st, h = raw(cfg.api_port, "GET", "/api/v1/nodes", {"Origin": ORIGIN})
        check(st == 401 and h.get("access-control-allow-origin") == ORIGIN, f"401 {st} {h}")
        # any other origin: no CORS headers; its OPTIONS is a plain request (no key: 401)
        for o in ("http://evil.example", ORIGIN + "0", "null"):
            st, h = raw(cfg.api_port, "OPTIONS", "/api/v1/nodes", dict(pre, Origin=o))
            check(st == 401 and "access-control-allow-origin" not in h, f"preflight from {o}: {st} {h}")
            st, h = raw(cfg.api_port, "GET", "/api/v1/nodes", {"Origin": o, "Authorization": "Bearer " + KEY})
            check(st == 200 and "access-control-allow-origin" not in h, f"GET from {o}: {h}")
    # without cors_origins nothing is allowed
    cfg = api_config()
    with Node(cfg, env=ENV):
        st, h = raw(cfg.api_port, "OPTIONS", "/api/v1/nodes", {"Origin": ORIGIN})
        check(st == 401 and "access-control-allow-origin" not in h, f"default: {st} {h}")
    # origins are checked at load
    for bad in ("*", "127.0.0.1:8080", "http://h/path", "ftp://h", "http://" + "h" * 194):
        cfg = api_config(api={"cors_origins": [bad]})
        cfg.write()
        rc, out = run_check(cfg.path, env=ENV)
        check(rc != 0 and "cors_origins" in out, f"origin {bad!r} accepted: {rc} {out}")
