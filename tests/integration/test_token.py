"""`relay-node token`: the node in jwt mode accepts what it mints, and refuses it once expired."""
import asyncio
import base64
import json
import os
import subprocess
import time

import harness
from harness import Config, Node, check, recv_json, send_json

SECRET = "token-test-secret"
LEEWAY = 30  # RL_GW_JWT_LEEWAY_S: exp is checked with this much clock skew allowed


def mint(path, *args, env=None):
    p = subprocess.run([os.path.abspath(harness.NODE_BIN), "token", *args, "-c", path],
                       env=harness.clean_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=10)
    return p.returncode, p.stdout.decode().strip(), p.stderr.decode()


def claims_of(tok):
    body = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_token_refuses_bad_arguments():
    cfg = Config(auth={"mode": "jwt", "secret": SECRET})
    path = cfg.write()
    for args, why in ((("--ttl", "1h"), "usage"), (("--sub", "a", "--ttl", "soon"), "--ttl"),
                      (("--sub", "a", "--meta", "[1]"), "--meta"), (("--sub", "a", "--ttl", "0s"), "--ttl")):
        rc, out, err = mint(path, *args)
        check(rc == 2 and out == "" and why in err, f"token {args}: rc {rc}, out {out!r}, err {err!r}")
    nosecret = Config(auth={"mode": "jwt"}).write()
    rc, out, err = mint(nosecret, "--sub", "a")
    check(rc == 1 and "secret" in err, f"token without a secret: rc {rc}, err {err!r}")
    rc, out, err = mint(nosecret, "--sub", "a", env={"RELAY_JWT_SECRET": SECRET})
    check(rc == 0 and out.count(".") == 2, f"token with RELAY_JWT_SECRET: rc {rc}, err {err!r}")


async def test_token_accepted_then_refused_after_expiry():
    cfg = Config(auth={"mode": "jwt", "secret": SECRET, "issuer": "relay-it", "audience": "app"})
    with Node(cfg) as n:
        rc, tok, err = mint(cfg.path, "--sub", "alice", "--meta", '{"plan":"pro"}')
        check(rc == 0, f"token exited {rc}: {err}")
        c = claims_of(tok)
        check(c["sub"] == "alice" and c["meta"] == {"plan": "pro"} and c["exp"] - c["iat"] == 3600
              and c["iss"] == "relay-it" and c["aud"] == "app", f"default token claims {c}")
        ws, d = await harness.connect_welcomed(n, token=tok)
        check(d["user_id"] == "alice", f"welcome for {d['user_id']!r}")
        await send_json(ws, {"type": "echo_x", "request_id": 1})
        f = await recv_json(ws)
        check(isinstance(f, dict) and f.get("topic") != "error", f"echo through a minted token: {f}")
        await ws.close()

        rc, short, err = mint(cfg.path, "--sub", "bob", "--ttl", "1s")
        check(rc == 0, f"token --ttl 1s exited {rc}: {err}")
        exp = claims_of(short)["exp"]
        check(exp - claims_of(short)["iat"] == 1, f"--ttl 1s claims {claims_of(short)}")
        ws, d = await harness.connect_welcomed(n, token=short)
        check(d["user_id"] == "bob", f"welcome for {d['user_id']!r}")
        await ws.close()
        # expired once exp + the gateway's leeway has passed
        await asyncio.sleep(max(0.0, exp + LEEWAY + 1 - time.time()))
        st = await harness.http_status_of_upgrade(n, token=short)
        check(st == 401, f"an expired minted token got {st} (want 401)")
        st = await harness.http_status_of_upgrade(n, token=tok)
        check(st is None, f"the 1h token was refused ({st}) after the short one expired")


test_token_accepted_then_refused_after_expiry.timeout = 60
