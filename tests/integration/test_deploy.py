"""What a fresh machine and the deploy files need: the packages `make deps` installs, the load
balancer's policy, the container's listen address. These read the files (no container engine
runs here) and run the node the way the image does."""
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time

import harness
from harness import check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def _make_var(text, name):
    m = re.search(r"^" + name + r"\s*[:?]?=\s*((?:.*\\\n)*.*)$", text, re.M)
    check(m, f"Makefile has no {name}")
    return m.group(1).replace("\\\n", " ").split()


def test_deps_names_what_a_bare_debian_lacks():
    """A bare Debian 12 with only make: the compiler, pkg-config and the test tools are named,
    not left to arrive as other packages' dependencies."""
    pkgs = set(_make_var(_read("Makefile"), "DEB_PKGS"))
    missing = {"build-essential", "pkg-config", "python3", "python3-websockets", "openssl",
               "redis-server", "redis-tools", "haproxy"} - pkgs
    check(not missing, f"DEB_PKGS does not name {sorted(missing)}")


def _haproxy_backend(text):
    m = re.search(r"^backend nodes\n((?:[ \t].*\n|\n)*)", text, re.M)
    check(m, "deploy/haproxy.cfg has no backend nodes")
    return m.group(1)


def test_haproxy_balances_leastconn():
    """WebSockets live long: a node that restarted (or joined) must get the new connections,
    which round-robin does not do."""
    cfg = _read("deploy/haproxy.cfg")
    balance = re.findall(r"^\s*balance\s+(\S+)", _haproxy_backend(cfg), re.M)
    check(balance == ["leastconn"], f"backend nodes balances {balance}, expected leastconn")
    if shutil.which("haproxy"):
        d = harness.temp_dir()
        path = os.path.join(d, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(cfg)
        p = subprocess.run(["haproxy", "-c", "-f", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=10)
        check(p.returncode == 0, f"haproxy -c: {p.stdout.decode()[-400:]}")


def _dockerfile():
    text = _read("deploy/Dockerfile").replace("\\\n", " ")
    env = dict(re.findall(r"^ENV\s+(\w+)=(\S+)", text, re.M))
    ep = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    hc = re.search(r"^HEALTHCHECK\s.*?CMD\s+(\[.*\])\s*$", text, re.M)
    check(ep and hc, "deploy/Dockerfile: no exec-form ENTRYPOINT or HEALTHCHECK CMD")
    return env, json.loads(ep.group(1)), json.loads(hc.group(1))


async def test_container_listens_where_relay_listen_says():
    """The image's entrypoint, run as the container runs it: RELAY_LISTEN (docker run -e, or the
    compose file) decides the address, and the health check follows it. A --listen flag in the
    entrypoint would override the variable (flags win over the environment)."""
    env, ep, hc = _dockerfile()
    check("--listen" not in ep, f"the ENTRYPOINT passes --listen, which overrides RELAY_LISTEN: {ep}")
    check(env.get("RELAY_LISTEN") == "0.0.0.0:8080", f"Dockerfile ENV RELAY_LISTEN: {env}")
    compose = _read("docker-compose.yml")
    m = re.search(r"^\s+RELAY_LISTEN:\s*\"?([^\s\"]+)", compose, re.M)
    check(m, "docker-compose.yml sets no RELAY_LISTEN for the nodes")
    port = m.group(1).rsplit(":", 1)[1]
    servers = re.findall(r"^\s*server\s+\S+\s+\S+:(\d+)", _haproxy_backend(_read("deploy/haproxy.cfg")), re.M)
    check(servers and set(servers) == {port},
          f"compose nodes listen on port {port}, haproxy.cfg's servers use {servers}")
    check(re.search(r'expose:\s*\["' + port + r'"\]', compose), f"compose does not expose {port}")

    listen = f"127.0.0.1:{harness.free_port()}"
    args = [a.replace("/etc/relay/", os.path.join(ROOT, "deploy") + "/") for a in ep[1:]]
    penv = harness.clean_env({"RELAY_LISTEN": listen, "RELAY_NODE_ID": "node1",
                              "RELAY_AUTH_MODE": "insecure",
                              "RELAY_REDIS_URL": f"redis://127.0.0.1:{harness.free_port()}"})
    log = open(os.path.join(harness.temp_dir(), "node.log"), "wb")
    p = subprocess.Popen([os.path.abspath(harness.NODE_BIN)] + args, env=penv, stdout=log,
                         stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        port = int(listen.rsplit(":", 1)[1])
        deadline = time.monotonic() + 5
        while True:
            check(p.poll() is None, f"the node exited with {p.returncode}")
            try:
                if harness.http_get(port, "/healthz", timeout=0.3)[0] == 200:
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline, f"nothing answers /healthz on RELAY_LISTEN {listen}")
            await asyncio.sleep(0.05)
        check(hc[0].startswith("/") and shutil.which(os.path.basename(hc[0])),
              f"health check runs {hc[0]}")
        h = subprocess.run([shutil.which(os.path.basename(hc[0]))] + hc[1:], env=penv, timeout=5)
        check(h.returncode == 0, f"the health check fails against RELAY_LISTEN {listen}: {hc}")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
