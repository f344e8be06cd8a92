#!/usr/bin/python3
"""Idle users on a local cluster (issue 9 item 5): one redis-server and six nodes on this machine,
N idle users connect, stay for H seconds, and then the machine is overloaded while more users join.

    make bench-cluster-idle                      (or: /usr/bin/python3 bench/cluster_idle.py)
    IDLE_USERS=100000 IDLE_HOLD=300 IDLE_NODES=6 IDLE_OVERLOAD_USERS=6000 IDLE_OVERLOAD_S=60
    IDLE_BUSY=2 IDLE_OUT=path.json BUILD=build

Set-up: bench/relay-bench-session.yaml (the spec's set-up, every user hub auto-starts the session
plugin), defaults for node_ttl / lease_ttl. Users are spread evenly: one build/relay-bench --idle
process per node (each at most ~19,000 fds), each from its own source address in 127.0.0.2-9.

Reports (one JSON object on stdout, a summary on stderr):
  connect: seconds until every user was welcomed, rate, errors
  idle: Redis commands/s over the hold (INFO commandstats deltas, per command), per node, closes
        during the hold (must be 0), per-node RSS
  overload: IDLE_BUSY busy loops (one per core) run while IDLE_OVERLOAD_USERS more users join:
        their connect rate against the unloaded one, how many were refused (1013, retried by
        nobody: counted), and closes of the established users (must be 0)
Not part of `make test`. Everything it starts is on loopback ports it picked and is stopped at the
end; the run is bounded by its own timeouts.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("BUILD", "build")
NODE_BIN = os.path.join(ROOT, BUILD, "relay-node")
BENCH_BIN = os.path.join(ROOT, BUILD, "relay-bench")
CONFIG = os.path.join(ROOT, "bench", "relay-bench-session.yaml")
REDIS_SERVER = os.environ.get("REDIS_SERVER_BIN", "redis-server")

USERS = int(os.environ.get("IDLE_USERS", "100000"))
HOLD = float(os.environ.get("IDLE_HOLD", "300"))
NODES = int(os.environ.get("IDLE_NODES", "6"))
OVER_USERS = int(os.environ.get("IDLE_OVERLOAD_USERS", "6000"))
OVER_S = float(os.environ.get("IDLE_OVERLOAD_S", "60"))
BUSY = int(os.environ.get("IDLE_BUSY", "2"))
OUT = os.environ.get("IDLE_OUT")
SETTLE = float(os.environ.get("IDLE_SETTLE", "15"))
SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]
PER_PROC_MAX = 19000

TMP = tempfile.mkdtemp(prefix="relay-cluster-idle-")
STARTED = []  # Popen objects this script started (stopped by pid at the end)


def log(msg):
    sys.stderr.write("[cluster-idle %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, name, **kw):
    logf = open(os.path.join(TMP, name + ".log"), "wb")
    p = subprocess.Popen(argv, stdout=kw.pop("stdout", logf), stderr=kw.pop("stderr", logf),
                         stdin=subprocess.DEVNULL, **kw)
    p.name = name
    STARTED.append(p)
    return p


def stop(p, timeout=20.0):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def redis_cmd(port, *args):
    """One command over a fresh connection (RESP), the reply as text."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(out)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.startswith(b"$"):
                n = int(buf[1:buf.index(b"\r\n")])
                if n < 0 or len(buf) >= buf.index(b"\r\n") + 2 + n + 2:
                    break
            elif buf.endswith(b"\r\n"):
                break
    if buf.startswith(b"$"):
        i = buf.index(b"\r\n")
        return buf[i + 2:i + 2 + int(buf[1:i])].decode()
    return buf.decode().strip()


def commandstats(port):
    """{command: calls} and total_commands_processed."""
    stats = {}
    for line in redis_cmd(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            stats[name] = int(fields["calls"])
    total = 0
    for line in redis_cmd(port, "INFO", "stats").splitlines():
        if line.startswith("total_commands_processed:"):
            total = int(line.split(":")[1])
    return stats, total


def metrics(port):
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            parts = line.split()
            name = parts[0].split("{")[0]
            try:
                out[name] = out.get(name, 0) + float(parts[-1])
            except ValueError:
                pass
    return out


class Lines:
    """Reads a pipe's lines on a thread."""

    def __init__(self, pipe):
        self.lines = []
        self.cv = threading.Condition()
        self.t = threading.Thread(target=self.run, args=(pipe,), daemon=True)
        self.t.start()

    def run(self, pipe):
        for raw in pipe:
            with self.cv:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cv.notify_all()

    def wait(self, n, timeout):
        end = time.monotonic() + timeout
        with self.cv:
            while len(self.lines) < n and time.monotonic() < end:
                self.cv.wait(max(0.05, end - time.monotonic()))
            return self.lines[n - 1] if len(self.lines) >= n else None


def start_clients(nodes, n, prefix, tag, timeout_s):
    """n idle users spread evenly over nodes, one relay-bench per node (or more past 19,000)."""
    per_node = [n // len(nodes) + (1 if i < n % len(nodes) else 0) for i in range(len(nodes))]
    procs, offset, k = [], 0, 0
    for i, (port, count) in enumerate(zip(nodes, per_node)):
        chunks = max(1, -(-count // PER_PROC_MAX))
        for c in range(chunks):
            m = count // chunks + (1 if c < count % chunks else 0)
            src = SOURCES[k % len(SOURCES)]
            k += 1
            argv = [BENCH_BIN, "--url", "ws://127.0.0.1:%d/ws" % port, "--idle", str(m),
                    "--users", str(m), "--user-prefix", prefix, "--user-offset", str(offset),
                    "--source", src, "--hold", "inf", "--timeout", str(timeout_s),
                    "--concurrency", "128"]
            offset += m
            p = spawn(argv, "%s-%d-%d" % (tag, i, c), stdout=subprocess.PIPE)
            procs.append((p, Lines(p.stdout), m))
    return procs


def wait_ready(procs, timeout):
    """Each client's first line (every connection welcomed or failed)."""
    t0 = time.monotonic()
    ready = []
    for p, out, m in procs:
        line = out.wait(1, max(1.0, timeout - (time.monotonic() - t0)))
        try:
            ready.append(json.loads(line) if line else None)
        except ValueError:
            ready.append(None)
    ok = [r for r in ready if r]
    return {"users": sum(m for _, _, m in procs), "open": sum(r["open"] for r in ok),
            "errors": sum(r["errors"] for r in ok) + len(ready) - len(ok),
            "open_seconds": round(max([r["open_seconds"] for r in ok] or [0]), 2),
            "first_error": next((r.get("first_error") for r in ok if r.get("first_error")), None)}


def finish(procs):
    """SIGTERM to each client: its final line says how many of its connections were still open."""
    res = {"open": 0, "open_at_end": 0, "errors": 0}
    for p, out, _ in procs:
        stop(p)
        line = out.wait(2, 10)
        try:
            d = json.loads(line) if line else {}
        except ValueError:
            d = {}
        res["open"] += d.get("open", 0)
        res["open_at_end"] += d.get("open_at_end", 0)
        res["errors"] += d.get("errors", 0)
    res["closed"] = res["open"] - res["open_at_end"]
    return res


def conns_gauge(ports):
    return int(sum(metrics(p).get("relay_connections", 0) for p in ports))


def closes_logged(nodes, prefix="idle"):
    """Connections of users prefix* the nodes logged as closed so far ("closed" info lines), by
    close code."""
    tag = ('"user":"%s' % prefix).encode()
    codes = {}
    for p in nodes:
        try:
            with open(os.path.join(TMP, p.name + ".log"), "rb") as f:
                for line in f:
                    if b'"msg":"closed"' in line and tag in line:
                        try:
                            c = json.loads(line).get("code")
                        except ValueError:
                            c = None
                        codes[c] = codes.get(c, 0) + 1
        except OSError:
            pass
    return codes


def main():
    for b in (NODE_BIN, BENCH_BIN):
        if not os.access(b, os.X_OK):
            sys.exit("cluster-idle: %s missing: make all build/relay-bench" % b)
    result = {"users": USERS, "hold_s": HOLD, "nodes": NODES, "tmp": TMP}
    busy = []
    try:
        rport = free_port()
        redis = spawn([REDIS_SERVER, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--dir", TMP], "redis")
        for _ in range(100):
            try:
                if redis_cmd(rport, "PING") == "+PONG":
                    break
            except OSError:
                time.sleep(0.1)
        url = "redis://127.0.0.1:%d" % rport
        ports, nodes = [], []
        for i in range(NODES):
            port = free_port()
            ports.append(port)
            nodes.append(spawn([NODE_BIN, "-c", CONFIG, "--listen", "127.0.0.1:%d" % port,
                                "--node-id", "n%d" % (i + 1), "--redis", url],
                               "node-n%d" % (i + 1), env=dict(os.environ, RELAY_LOG_LEVEL="info")))
        import urllib.request
        for port in ports:
            for _ in range(300):
                try:
                    with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)
        base = {p.name: rss_kb(p.pid) for p in nodes}
        _, t_idle0 = commandstats(rport)
        time.sleep(5)
        _, t_idle1 = commandstats(rport)
        result["redis_cmds_per_s_no_users"] = round((t_idle1 - t_idle0) / 5.0, 1)

        log("connecting %d users to %d nodes" % (USERS, NODES))
        t0 = time.monotonic()
        clients = start_clients(ports, USERS, "idle", "idle", 120)
        conn = wait_ready(clients, 900)
        conn["wall_s"] = round(time.monotonic() - t0, 2)
        conn["per_s"] = round(conn["open"] / conn["open_seconds"]) if conn["open_seconds"] else None
        result["connect"] = conn
        log("connect: %s" % conn)
        time.sleep(SETTLE)  # placements, hub info and look-ups of the joins are over
        open0 = conns_gauge(ports)
        cl0 = closes_logged(nodes)
        s0, c0 = commandstats(rport)
        t_h0 = time.monotonic()
        log("holding %d connections for %.0f s" % (open0, HOLD))
        samples = []
        while time.monotonic() - t_h0 < HOLD:
            time.sleep(min(30.0, HOLD - (time.monotonic() - t_h0)) if HOLD > 0 else 0)
            samples.append(conns_gauge(ports))
        s1, c1 = commandstats(rport)
        secs = time.monotonic() - t_h0
        m1 = [metrics(p) for p in ports]
        per_cmd = {k: round((s1.get(k, 0) - s0.get(k, 0)) / secs, 2) for k in s1
                   if s1.get(k, 0) != s0.get(k, 0)}
        open1 = conns_gauge(ports)
        cl1 = closes_logged(nodes)
        closed_hold = sum(cl1.values()) - sum(cl0.values())
        result["idle"] = {
            "seconds": round(secs, 1), "open_start": open0, "open_end": open1,
            "open_min": min(samples + [open1]), "closes": closed_hold,
            "redis_cmds_per_s": round((c1 - c0 - 2) / secs, 1),
            "redis_cmds_per_s_per_node": round((c1 - c0 - 2) / secs / NODES, 1),
            "per_command": per_cmd,
            "rss_kb": {p.name: rss_kb(p.pid) for p in nodes}, "rss_kb_before": base,
            "redis_rss_kb": rss_kb(redis.pid),
            "lease_checks": int(sum(m.get("relay_lease_checks_total", 0) for m in m1)),
        }
        log("idle: %s" % json.dumps(result["idle"]))

        if OVER_USERS > 0 and OVER_S > 0:
            log("overload: %d busy loops, %d more users join" % (BUSY, OVER_USERS))
            for i in range(BUSY):
                busy.append(spawn(["/bin/sh", "-c", "while :; do :; done"], "busy-%d" % i))
            time.sleep(2)
            mo0 = [metrics(p) for p in ports]
            co0 = closes_logged(nodes)
            t_o0 = time.monotonic()
            late = start_clients(ports, OVER_USERS, "late", "late", 60)
            lconn = wait_ready(late, OVER_S + 120)
            lconn["per_s"] = round(lconn["open"] / lconn["open_seconds"]) if lconn["open_seconds"] else None
            while time.monotonic() - t_o0 < OVER_S:
                time.sleep(1)
            mo1 = [metrics(p) for p in ports]
            co1 = closes_logged(nodes)
            for b in busy:
                stop(b, 5)
            busy = []
            open_after = conns_gauge(ports)  # established + late ones, before the late ones go
            late_end = finish(late)

            def delta(name):
                return int(sum(b.get(name, 0) - a.get(name, 0) for a, b in zip(mo0, mo1)))
            result["overload"] = {
                "busy_loops": BUSY, "seconds": round(time.monotonic() - t_o0, 1), "joins": lconn,
                "unloaded_per_s": conn["per_s"],
                "shed": delta("relay_admissions_shed_total"),
                "placements_deferred": delta("relay_acquisitions_deferred_total"),
                "established_open_after": open_after - late_end["open_at_end"] if open_after else None,
                "established_closes_logged": {str(k): v - co0.get(k, 0) for k, v in co1.items()
                                              if v != co0.get(k, 0)},
            }
            log("overload: %s" % json.dumps(result["overload"]))
        end = finish(clients)
        result["idle"]["clients_closed_total"] = end["closed"]
        result["idle"]["clients_errors_total"] = end["errors"]
        if "overload" in result:
            result["overload"]["established_closed"] = end["closed"]
        log("established users: %s" % end)
    finally:
        for p in busy:
            stop(p, 5)
        for p in reversed(STARTED):
            stop(p)
    text = json.dumps(result, indent=1, sort_keys=True)
    print(text)
    if OUT:
        with open(OUT, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
