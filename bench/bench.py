#!/usr/bin/python3
"""Relay benchmark (`make bench`, via bench/run.sh): Relay measured the way a user meets it, next
to two peers run side by side in the same run with the same load generator (build/relay-bench):

  relay  build/relay-node with bench/relay-bench.yaml: every user's hub auto-starts the session
         plugin and the echo plugin; client -> gateway -> user hub -> Lua plugin -> client
  echo   build/lws-echo (bench/lws_echo.c): bare lws 4.1 + libuv echo written the fast way; the
         ceiling for anything built on lws
  node   bench/node-relay/server.js: a Node.js `ws` relay speaking the same protocol (per-user
         hub, longest-prefix routing, echo handler answering like plugins/lua/echo.lua)
  (node-echo, optional: bench/node-relay/echo.js, a plain Node.js ws echo)

Sections (the letters follow the issue that asked for them):
  a  round trips at BENCH_CONNS connections, rounds interleaved relay, echo, node, relay, ...;
     unpinned, then pinned (server on CPU 0, load generator on CPU 1)
  d  connect rate: BENCH_CONNECT connections from connect() to the welcome frame
  b  100 connections with and without BENCH_IDLE idle users on the server
  c  idle bytes per user (server VmRSS delta / users); Relay also without auto-started plugins
  f  Relay with glibc malloc, jemalloc and mimalloc (LD_PRELOAD): 100-connection round trips
     and idle bytes per user
  e  allocator calls (build/malloc_count.so) and JSON decodes/encodes (/metrics) per round trip
  -  profile of Relay (perf) at 100 connections, without and with idle users
  -  cluster: same-node vs cross-node round trips on two nodes and a private redis-server
  hostile  100 connections of ordinary users next to one user whose plugin misbehaves
     (bench/hostile.lua, bench/hostile_client.py, bench/relay-bench-hostile.yaml): rounds
     alternate quiet / hostile, one kind of misbehaviour per server (BENCH_HOSTILE)
Sections b-f, hostile and the profile use the pinned layout when the machine has two CPUs.

Writes bench/REPORT.md; a full run (not BENCH_QUICK) also rewrites the generated part of
docs/performance.md (between its BEGIN/END markers). Everything started runs in its own process
group and is stopped on exit, on error and on SIGINT/SIGTERM; ports are picked free at run time.

Environment (all optional):
  BENCH_SECTIONS=all       or some of: rt connect idle alloc allocs profile cluster hostile
                           (e.g. BENCH_SECTIONS=hostile: that section alone, about 3 minutes);
                           a partial run writes bench/REPORT-<sections>.md (those sections only)
                           and leaves docs/performance.md and bench/REPORT.md alone
  BENCH_HOSTILE="loop bomb memory swarm flood"   kinds of the hostile section
  BENCH_QUICK=1            smoke run (~2 min): 1 round, short runs, 2,000 idle users, no cluster
  BENCH_ROUNDS=3           rounds per figure (medians are over rounds)
  BENCH_RT_ROUNDS=5        rounds of sections a and b (BENCH_ROUNDS when that is set)
  BENCH_DURATION=4         measured seconds per round-trip run (after BENCH_WARMUP=0.5)
  BENCH_CONNS="1 100 1000" connection counts of section a (and e)
  BENCH_SIZE=100           bytes per client frame
  BENCH_IDLE=15000         idle users of sections b, c, f
  BENCH_IDLE_PROCS=4       client processes holding them (each from its own source addresses)
  BENCH_CONNECT=5000       connections of section d, BENCH_CONNECT_CONCURRENCY=256 in flight
  BENCH_PEERS="relay echo node"   add node-echo for the plain Node.js ws echo
  BENCH_PIN=auto           1: pinned layout (needs 2 CPUs and taskset), 0: never pin
  BENCH_ALLOCATORS="glibc jemalloc mimalloc"
  BENCH_PROFILE=auto       1/0: profile with perf (auto: when perf works)
  BENCH_CLUSTER=1          0 skips the cluster section (default 0 with BENCH_QUICK)
  BENCH_REPORT=bench/REPORT.md, BENCH_DOCS=1 (0: leave docs/performance.md alone)
  BENCH_KEEP=1             keep the temp dir (configs, server logs, raw results)
  BUILD=build              where relay-node, relay-bench, lws-echo, malloc_count.so are
  NODEJS_BIN=node NPM_BIN=npm REDIS_SERVER_BIN=redis-server PERF_BIN=perf
"""
import contextlib
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(name, default):
    v = os.environ.get(name, "")
    return v if v != "" else str(default)


QUICK = env("BENCH_QUICK", "0") == "1"
ROUNDS = int(env("BENCH_ROUNDS", 1 if QUICK else 3))
# Section a's rounds: more than the others, since one server's rounds span up to 2x on a shared VM
RT_ROUNDS = int(env("BENCH_RT_ROUNDS", ROUNDS if QUICK or "BENCH_ROUNDS" in os.environ else 5))
DURATION = float(env("BENCH_DURATION", 1.5 if QUICK else 4))
WARMUP = float(env("BENCH_WARMUP", 0.3 if QUICK else 0.5))
CONNS = [int(x) for x in env("BENCH_CONNS", "1 100 1000").split()]
SIZE = int(env("BENCH_SIZE", 100))
IDLE = int(env("BENCH_IDLE", 2000 if QUICK else 15000))
IDLE_PROCS = int(env("BENCH_IDLE_PROCS", 2 if QUICK else 4))
CONNECT_N = int(env("BENCH_CONNECT", 1000 if QUICK else 5000))
CONNECT_CONC = int(env("BENCH_CONNECT_CONCURRENCY", 256))
PEERS = env("BENCH_PEERS", "relay echo node").split()
PIN = env("BENCH_PIN", "auto")
ALLOCATORS = env("BENCH_ALLOCATORS", "glibc jemalloc mimalloc").split()
PROFILE = env("BENCH_PROFILE", "auto")
ALL_SECTIONS = ("rt", "connect", "idle", "alloc", "allocs", "profile", "cluster", "hostile")
SECTIONS = env("BENCH_SECTIONS", "all").replace(",", " ").split()
SECTIONS = list(ALL_SECTIONS) if SECTIONS == ["all"] else SECTIONS
PARTIAL = set(SECTIONS) != set(ALL_SECTIONS)
HOSTILE_KINDS = env("BENCH_HOSTILE", "loop bomb memory swarm flood").split()
CLUSTER = env("BENCH_CLUSTER", "0" if QUICK else "1") == "1"
REPORT = env("BENCH_REPORT", os.path.join(ROOT, "bench", "REPORT%s.md" % (
    "-" + "-".join(SECTIONS) if PARTIAL else "")))
DOCS = env("BENCH_DOCS", "0" if QUICK or PARTIAL else "1") == "1"
KEEP = env("BENCH_KEEP", "0") == "1"
BUILD = env("BUILD", "build")
BUILD = BUILD if os.path.isabs(BUILD) else os.path.join(ROOT, BUILD)
RELAY_NODE = env("RELAY_NODE_BIN", os.path.join(BUILD, "relay-node"))
# relay-node links jemalloc (ALLOCATOR in the Makefile); the glibc figure runs the same code
# built with ALLOCATOR=glibc (`make bench` builds it into build-glibc/).
RELAY_NODE_GLIBC = env("RELAY_NODE_GLIBC_BIN", os.path.join(ROOT, "build-glibc", "relay-node"))
RELAY_BENCH = env("RELAY_BENCH_BIN", os.path.join(BUILD, "relay-bench"))
LWS_ECHO = env("LWS_ECHO_BIN", os.path.join(BUILD, "lws-echo"))
MALLOC_COUNT = env("MALLOC_COUNT_SO", os.path.join(BUILD, "malloc_count.so"))
NODEJS = env("NODEJS_BIN", "node")
NPM = env("NPM_BIN", "npm")
REDIS_SERVER = env("REDIS_SERVER_BIN", "redis-server")
PERF = env("PERF_BIN", "perf")
NODE_DIR = os.path.join(ROOT, "bench", "node-relay")
CONFIG = os.path.join(ROOT, "bench", "relay-bench.yaml")
CONFIG_NOAUTO = os.path.join(ROOT, "bench", "relay-bench-noauto.yaml")
# The spec's set-up for idle users: every user's hub auto-starts the session_ plugin only (the
# echo plugin starts on the first echo message, before any measured run: see warm()).
CONFIG_SESSION = os.path.join(ROOT, "bench", "relay-bench-session.yaml")
# relay-bench.yaml plus bench/hostile.lua (prefix hostile_, not auto-started)
CONFIG_HOSTILE = os.path.join(ROOT, "bench", "relay-bench-hostile.yaml")
HOSTILE_CLIENT = os.path.join(ROOT, "bench", "hostile_client.py")
HOSTILE_TARGET_P99 = 2.0  # issue 7: another user's p99 stays within 2x while one plugin misbehaves
HOSTILE_WHAT = {
    "loop": "endless loop behind pcall (instruction budget)",
    "bomb": "backtracking pattern in a pcall loop (matcher steps on the budget)",
    "memory": "1 MiB strings, 8 MiB a resume, up to the Lua memory cap",
    "swarm": "children up to plugin_max_children, each (and the parent) with 1 ms tickers up to plugin_max_timers",
    "flood": "process.send to its own user hub in an endless loop (instruction budget)",
}
DOC = os.path.join(ROOT, "docs", "performance.md")
SOURCES = ["127.0.0.%d" % i for i in range(2, 10)]  # idle and connect-rate clients bind these
ACTIVE = 100  # connections of the idle-user, allocator and allocation figures
HZ = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = 0, 1

PEER_NAMES = {"relay": "Relay", "echo": "lws echo", "node": "Node relay", "node-echo": "Node ws echo"}
TARGETS = {  # the targets for Relay
    "idle_rate": 0.85, "idle_p99": 2.0, "bytes_session": 5 * 1024, "bytes_noauto": 3 * 1024,
    "connect": 8000,
}
ALLOC_LIBS = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
}

ROWS = []  # every measurement, also written to results.jsonl and listed raw in the report
NOTES = []  # what was skipped or went wrong, for the report
T_START = time.monotonic()


class BenchError(Exception):
    pass


def log(msg):
    print("bench [%4.0fs]: %s" % (time.monotonic() - T_START, msg), file=sys.stderr, flush=True)


def note(msg):
    NOTES.append(msg)
    log("note: " + msg)


def record(kind, **kw):
    kw["kind"] = kind
    ROWS.append(kw)
    with open(os.path.join(TMP, "results.jsonl"), "a") as f:
        f.write(json.dumps(kw, sort_keys=True) + "\n")
    return kw


# ---- processes -------------------------------------------------------------------------------


class Procs:
    """Every process this script starts, each in its own process group (killed as a group)."""

    def __init__(self):
        self.live = []
        self.lock = threading.Lock()

    def spawn(self, argv, cpu=None, env_extra=None, stdout=None, stderr=None, logpath=None):
        if cpu is not None and PINNING:
            argv = ["taskset", "-c", str(cpu)] + argv
        e = dict(os.environ)
        e.update(env_extra or {})
        out = stdout
        if logpath:
            out = open(logpath, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT if logpath and stderr is None else stderr,
                             env=e, start_new_session=True, cwd=ROOT)
        if logpath:
            out.close()
        with self.lock:
            self.live.append(p)
        return p

    def stop(self, p, timeout=15.0, sig=signal.SIGTERM):
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:  # the leader is gone; anything left in its group goes too
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.forget(p)

    def forget(self, p):
        with self.lock:
            if p in self.live:
                self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p, timeout=5)


PROCS = Procs()


class Lines:
    """Reads a pipe in a thread; keeps its lines; calls on_line for each."""

    def __init__(self, pipe, on_line=None):
        self.lines = []
        self.cond = threading.Condition()
        self.done = False
        self.on_line = on_line
        self.t = threading.Thread(target=self.run, args=(pipe,), daemon=True)
        self.t.start()

    def run(self, pipe):
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.on_line:
                try:
                    self.on_line(line)
                except Exception as e:  # a failing sampler must not lose the output
                    log("line handler: %r" % e)
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def wait_first(self, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while not self.lines and not self.done:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.lines[0] if self.lines else None

    def join(self, timeout=5):
        self.t.join(timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def http_get(port, path, timeout=3.0):
    """(status, body) or (None, None) when nothing answered."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None, None


# ---- servers ---------------------------------------------------------------------------------


class Server:
    """One server under test on a free loopback port."""

    def __init__(self, kind, tag, cpu=SERVER_CPU, config=CONFIG, preload=None, env_extra=None,
                 extra_args=None, ready_path=None, binary=None):
        self.kind, self.tag, self.cpu, self.config = kind, tag, cpu, config
        self.binary = binary
        self.preload, self.env_extra = preload, dict(env_extra or {})
        self.extra_args = extra_args or []
        self.ready_path = ready_path
        self.proc = None
        self.port = None
        self.logpath = os.path.join(TMP, "server-%s.log" % tag)

    @property
    def pid(self):
        return self.proc.pid

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ws" % self.port

    def argv(self):
        if self.kind == "relay":
            return [self.binary or RELAY_NODE, "-c", self.config, "--listen", "127.0.0.1:%d" % self.port] + self.extra_args
        if self.kind == "echo":
            return [LWS_ECHO, "--listen", "127.0.0.1:%d" % self.port]
        if self.kind == "node":
            return [NODEJS, os.path.join(NODE_DIR, "server.js"), str(self.port)]
        if self.kind == "node-echo":
            return [NODEJS, os.path.join(NODE_DIR, "echo.js"), str(self.port)]
        raise BenchError("unknown server kind " + self.kind)

    def start(self):
        for attempt in range(3):
            self.port = free_port()
            e = dict(self.env_extra)
            if self.preload:
                e["LD_PRELOAD"] = self.preload
            self.proc = PROCS.spawn(self.argv(), cpu=self.cpu, env_extra=e, logpath=self.logpath)
            if self.wait_ready(30):
                return self
            PROCS.stop(self.proc)
            log("%s did not start on port %d (attempt %d)" % (self.tag, self.port, attempt + 1))
        raise BenchError("%s did not start; log %s:\n%s" % (self.tag, self.logpath, tail(self.logpath)))

    def wait_ready(self, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if self.ready_path or self.kind in ("relay", "node"):
                status, _ = http_get(self.port, self.ready_path or "/healthz", 1.0)
                if status == 200:
                    return True
            else:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                        return True
                except OSError:
                    pass
            time.sleep(0.05)
        return False

    def stop(self):
        if self.proc:
            PROCS.stop(self.proc)
            self.proc = None

    def rss_kb(self):
        return rss_kb(self.pid)

    def ticks(self):
        return cpu_ticks(self.pid)

    def metrics(self):
        """Unlabelled metrics from GET /metrics (Relay); {} when unavailable."""
        status, body = http_get(self.port, "/metrics")
        out = {}
        if status == 200:
            for line in body.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                parts = line.split()
                if len(parts) >= 2 and "{" not in parts[0]:
                    try:
                        out[parts[0]] = float(parts[1])
                    except ValueError:
                        pass
        return out

    def preload_loaded(self):
        """Whether the LD_PRELOAD library really is mapped into the server."""
        if not self.preload:
            return True
        try:
            with open("/proc/%d/maps" % self.pid) as f:
                return os.path.basename(self.preload) in f.read()
        except OSError:
            return False

    def wait_quiet(self, max_s=15.0):
        """Until the server uses no CPU for 0.3 s (closing connections of the last run, GC)."""
        end = time.monotonic() + max_s
        last = self.ticks()
        quiet = 0
        while time.monotonic() < end and last is not None:
            time.sleep(0.15)
            t = self.ticks()
            quiet = quiet + 1 if t == last else 0
            last = t
            if quiet >= 2:
                return

    def settle_rss(self, max_s):
        """VmRSS (kB) once it moves less than 0.5% over 1.25 s, or after max_s."""
        end = time.monotonic() + max_s
        samples = []
        while True:
            samples.append(self.rss_kb())
            recent = samples[-6:]
            if len(recent) == 6 and None not in recent and max(recent) - min(recent) <= 0.005 * max(recent):
                return recent[-1]
            if time.monotonic() >= end:
                return samples[-1]
            time.sleep(0.25)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def start_servers(kinds, tag, **kw):
    """{kind: started Server} for the available kinds; a peer that fails is noted and left out."""
    out = {}
    for k in kinds:
        try:
            out[k] = Server(k, "%s-%s" % (tag, k), **kw).start()
        except BenchError as e:
            note("%s: %s not started: %s" % (tag, PEER_NAMES.get(k, k), str(e).splitlines()[0]))
    return out


def stop_servers(servers):
    for s in servers.values():
        s.stop()


# ---- the load generator ----------------------------------------------------------------------


def machine_ticks():
    """CPU ticks spent by processes on the whole machine (all CPUs): user, nice, system, steal.
    Interrupt and softirq time (where the kernel accounts part of loopback TCP) is left out."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)
    except (OSError, ValueError, IndexError):
        return None


def run_client(args, cpu=CLIENT_CPU, server=None, on_mark=None, timeout=120.0):
    """Runs relay-bench with --marks; returns (its JSON result or None, info). info holds, at
    each mark, the time and the CPU ticks of the server, of the client and of the machine; and
    the client's CPU seconds and wall time over its whole run."""
    marks = {}
    me = {}

    def on_line(line):
        if line.startswith("relay-bench: mark "):
            name = line.split()[-1]
            marks[name] = (time.monotonic(), server.ticks() if server else None,
                           cpu_ticks(me["pid"]) if "pid" in me else None, machine_ticks())
            if on_mark:
                on_mark(name)

    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = PROCS.spawn([RELAY_BENCH] + args + ["--marks"], cpu=cpu, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
    me["pid"] = p.pid
    out = Lines(p.stdout)
    err = Lines(p.stderr, on_line)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        log("relay-bench %s: no result after %.0f s, stopping it" % (" ".join(args), timeout))
        PROCS.stop(p, timeout=5)
    PROCS.forget(p)
    out.join()
    err.join()
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    for line in reversed(out.lines):
        if line.startswith("{"):
            try:
                res = json.loads(line)
                break
            except ValueError:
                pass
    other = [l for l in err.lines if not l.startswith("relay-bench: mark ")]
    if res is None:
        log("relay-bench printed no result: %s" % " | ".join(other[-5:]))
    info = {"marks": marks, "wall": wall,
            "client_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "stderr": other[-5:]}
    return res, info


def window(info, a, b):
    """(seconds, server CPU seconds) between marks a and b, or (None, None)."""
    m = info["marks"]
    if a not in m or b not in m or m[a][1] is None or m[b][1] is None:
        return None, None
    return m[b][0] - m[a][0], (m[b][1] - m[a][1]) / HZ


def other_load(info, a, b):
    """CPU used by other processes on the machine between marks a and b (percent of one core):
    machine ticks minus the server's and the client's. The VM is shared; this says how much."""
    m = info["marks"]
    if a not in m or b not in m or None in m[a] or None in m[b]:
        return None
    secs = m[b][0] - m[a][0]
    if secs <= 0:
        return None
    other = (m[b][3] - m[a][3]) - (m[b][1] - m[a][1]) - (m[b][2] - m[a][2])
    return round(max(0.0, 100.0 * other / HZ / secs), 1)


def echo_run(server, conns, kind, users_prefix="bench", duration=None, on_mark=None, **extra):
    """One round-trip run; records and returns its row. on_mark(name) is called at each of the
    client's marks (open_start, open_end, measure_start, measure_end)."""
    duration = DURATION if duration is None else duration
    args = ["--url", server.url, "--conns", str(conns), "--users", str(conns),
            "--duration", str(duration), "--warmup", str(WARMUP), "--size", str(SIZE),
            "--type", "echo_ping", "--user-prefix", users_prefix, "--timeout", "30"]
    res, info = run_client(args, server=server, on_mark=on_mark,
                           timeout=60 + conns * 0.01 + duration + WARMUP)
    secs, cpu_s = window(info, "measure_start", "measure_end")
    row = dict(extra, peer=server.kind, server=server.tag, conns=conns)
    if res is None:
        row.update(errors=1, first_error="no result: " + " | ".join(info["stderr"]),
                   msgs_per_sec=None, p50_us=None, p99_us=None)
    else:
        row.update({k: res.get(k) for k in ("msgs", "msgs_per_sec", "p50_us", "p90_us", "p99_us",
                                             "errors", "error_replies", "open_per_sec")})
        if res.get("first_error"):
            row["first_error"] = res["first_error"]
    row["other_load_pct"] = other_load(info, "measure_start", "measure_end")
    if secs and cpu_s is not None and res and res.get("msgs"):
        row["server_cpu_pct"] = round(100.0 * cpu_s / secs, 1)
        row["server_us_per_rt"] = round(cpu_s * 1e6 / (res["msgs_per_sec"] * secs), 2)
    row["client_cpu_pct"] = round(100.0 * info["client_cpu_s"] / info["wall"], 1) if info["wall"] else None
    server.wait_quiet()
    rec = record(kind, **row)
    log("%s %s conns=%d: %s rt/s p50 %s p99 %s us, server cpu %s%%, errors %s" % (
        kind, server.tag, conns, rec.get("msgs_per_sec"), rec.get("p50_us"), rec.get("p99_us"),
        rec.get("server_cpu_pct"), rec.get("errors")))
    return rec


class IdleUsers:
    """n idle users (one connection each, prefix<i>) held open by several relay-bench processes,
    each connecting from its own share of 127.0.0.2-9 (ports and the per-process fd limit)."""

    def __init__(self, server, n, prefix, procs=IDLE_PROCS):
        self.server, self.n, self.prefix = server, n, prefix
        self.nprocs = max(1, min(procs, n))
        self.procs = []
        self.ready = []

    def open(self, timeout=180.0):
        per = [self.n // self.nprocs + (1 if i < self.n % self.nprocs else 0) for i in range(self.nprocs)]
        offset = 0
        for i, k in enumerate(per):
            src = [a for j, a in enumerate(SOURCES) if j % self.nprocs == i % len(SOURCES)] or \
                [SOURCES[i % len(SOURCES)]]
            args = ["--url", self.server.url, "--idle", str(k), "--users", str(k),
                    "--user-prefix", self.prefix, "--user-offset", str(offset),
                    "--source", ",".join(src), "--hold", "inf", "--timeout", "60"]
            offset += k
            p = PROCS.spawn([RELAY_BENCH] + args, cpu=CLIENT_CPU, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
            self.procs.append((p, Lines(p.stdout), Lines(p.stderr)))
        t0 = time.monotonic()
        for p, out, _ in self.procs:
            first = out.wait_first(max(1.0, timeout - (time.monotonic() - t0)))
            try:
                self.ready.append(json.loads(first) if first else None)
            except ValueError:
                self.ready.append(None)
        wall = time.monotonic() - t0
        ok = [r for r in self.ready if r]
        opened = sum(r["open"] for r in ok)
        errors = sum(r["errors"] for r in ok) + (len(self.ready) - len(ok))
        secs = max([r["open_seconds"] for r in ok] or [0])
        firsts = [self.procs[i][2].lines[-1] for i, r in enumerate(self.ready) if not r and self.procs[i][2].lines]
        return {"open": opened, "errors": errors, "open_seconds": round(secs, 3),
                "open_per_sec": round(opened / secs) if secs else None, "wall": round(wall, 3),
                "first_error": (firsts[0] if firsts else
                                next((r.get("first_error") for r in ok if r.get("first_error")), None))}

    def close(self):
        for p, out, err in self.procs:
            PROCS.stop(p, timeout=20)
            out.join()
            err.join()
        self.procs = []


def idle_memory(server, n, prefix, kind, **extra):
    """Idle bytes per user: server VmRSS settled before and after n idle users connect."""
    before = server.settle_rss(3 if QUICK else 5)
    idle = IdleUsers(server, n, prefix)
    st = idle.open()
    server.wait_quiet()
    after = server.settle_rss(4 if QUICK else 8)
    per = (after - before) * 1024.0 / st["open"] if st["open"] and before and after else None
    rec = record(kind, peer=server.kind, server=server.tag, users=n, rss_before_kb=before,
                 rss_after_kb=after, bytes_per_user=round(per) if per else None,
                 fds=len(os.listdir("/proc/%d/fd" % server.pid)), **dict(extra, **{
                     "idle_" + k: v for k, v in st.items() if k != "first_error"}),
                 first_error=st["first_error"])
    log("%s %s: %d/%d idle users in %.1f s, rss %s -> %s kB: %s B/user" % (
        kind, server.tag, st["open"], n, st["open_seconds"], before, after, rec["bytes_per_user"]))
    return idle, rec


# ---- sections --------------------------------------------------------------------------------


@contextlib.contextmanager
def pinning(on):
    """Within it, processes are pinned only if pinning is on for the run and on is true."""
    global PINNING
    saved = PINNING
    PINNING = saved and on
    try:
        yield
    finally:
        PINNING = saved


def section_roundtrips(pinned):
    """a: at each connection count, fresh servers (so that no server carries the users of an
    earlier count: Relay keeps a user's hub and plugins long after the user leaves), then rounds
    interleaved relay, echo, node, relay, ..."""
    with pinning(pinned):
        for conns in CONNS:
            servers = start_servers(PEERS, "rt-%s-%d" % ("pinned" if pinned else "unpinned", conns))
            try:
                for r in range(1, RT_ROUNDS + 1):
                    for k in PEERS:
                        if k in servers:
                            echo_run(servers[k], conns, "rt", pinned=pinned, round=r)
            finally:
                stop_servers(servers)


def section_connect(servers):
    """d: connect rate, fresh users each round (for Relay: hub and plugin start included)."""
    for r in range(1, ROUNDS + 1):
        for k in PEERS:
            s = servers.get(k)
            if not s:
                continue
            args = ["--url", s.url, "--idle", str(CONNECT_N), "--users", str(CONNECT_N),
                    "--user-prefix", "c%d-" % r, "--hold", "0", "--timeout", "60",
                    "--concurrency", str(CONNECT_CONC), "--source", ",".join(SOURCES)]
            res, info = run_client(args, server=s, timeout=120)
            secs, cpu_s = window(info, "open_start", "open_end")
            row = {"peer": k, "server": s.tag, "round": r, "conns": CONNECT_N,
                   "concurrency": CONNECT_CONC, "other_load_pct": other_load(info, "open_start", "open_end")}
            if res:
                row.update({x: res.get(x) for x in ("open", "open_seconds", "open_per_sec",
                                                    "open_p50_us", "open_p99_us", "errors",
                                                    "first_error")})
                if cpu_s is not None and res.get("open"):
                    row["server_cpu_pct"] = round(100.0 * cpu_s / secs, 1) if secs else None
                    row["server_us_per_conn"] = round(cpu_s * 1e6 / res["open"], 1)
            else:
                row.update(errors=1, first_error="no result")
            s.wait_quiet()
            rec = record("connect", **row)
            log("connect %s round %d: %s conns/s (p50 %s us, p99 %s us), errors %s" % (
                k, r, rec.get("open_per_sec"), rec.get("open_p50_us"), rec.get("open_p99_us"),
                rec.get("errors")))


def warm(server):
    """Opens and exercises the ACTIVE users once, so hub creation is not in the idle delta."""
    echo_run_quiet(server, ACTIVE, 1.0)


def echo_run_quiet(server, conns, duration):
    args = ["--url", server.url, "--conns", str(conns), "--users", str(conns), "--duration",
            str(duration), "--warmup", "0.2", "--size", str(SIZE), "--timeout", "30"]
    run_client(args, server=server, timeout=90)
    server.wait_quiet()


def section_idle(profile):
    """b and c: 100 connections on a server with IDLE idle users vs one without (rounds
    alternate between the two servers), and the idle bytes per user on the loaded one."""
    for k in PEERS:
        try:
            cfg = CONFIG_SESSION if k == "relay" else CONFIG
            base = Server(k, "idle-base-" + k, config=cfg).start()
            loaded = Server(k, "idle-loaded-" + k, config=cfg).start()
        except BenchError as e:
            note("idle users: %s not started: %s" % (PEER_NAMES[k], str(e).splitlines()[0]))
            continue
        idle = None
        try:
            warm(base)
            warm(loaded)
            idle, mem = idle_memory(loaded, IDLE, "idle-", "idle_mem", config="session" if k == "relay" else None)
            for r in range(1, RT_ROUNDS + 1):  # a ratio of two medians: as many rounds as a
                echo_run(base, ACTIVE, "idle_rt", idle_users=0, round=r)
                echo_run(loaded, ACTIVE, "idle_rt", idle_users=mem["idle_open"], round=r)
            if k == "relay" and profile:
                run_profile(loaded, "relay, %d connections, %d idle users" % (ACTIVE, mem["idle_open"]))
        finally:
            if idle:
                idle.close()
            base.stop()
            loaded.stop()
    if "relay" in PEERS:  # c: Relay without auto-started plugins
        s = None
        idle = None
        try:
            s = Server("relay", "idle-noauto-relay", config=CONFIG_NOAUTO).start()
            warm(s)
            idle, _ = idle_memory(s, IDLE, "idle-", "idle_mem", config="noauto")
        except BenchError as e:
            note("idle users, Relay without auto-started plugins: %s" % str(e).splitlines()[0])
        finally:
            if idle:
                idle.close()
            if s:
                s.stop()


def find_lib(name):
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    hits = glob.glob("/usr/lib/*/" + name)
    return hits[0] if hits else None


def section_allocators():
    """f: Relay with each allocator: interleaved 100-connection rounds, then idle bytes/user."""
    servers = {}
    for a in ALLOCATORS:
        preload = binary = None
        if a == "glibc":
            if not os.path.exists(RELAY_NODE_GLIBC):
                note("allocator glibc skipped: %s not built (make ALLOCATOR=glibc)" % RELAY_NODE_GLIBC)
                continue
            binary = RELAY_NODE_GLIBC
        else:
            lib, pkg = ALLOC_LIBS.get(a, (None, None))
            preload = find_lib(lib) if lib else None
            if not preload:
                note("allocator %s skipped: %s not found (Debian package %s; `make bench` installs it as root)" % (
                    a, lib or a, pkg or "?"))
                continue
        try:
            s = Server("relay", "alloc-" + a, preload=preload, binary=binary,
                       config=CONFIG_SESSION).start()
        except BenchError as e:
            note("allocator %s: Relay did not start: %s" % (a, str(e).splitlines()[0]))
            continue
        if not s.preload_loaded():
            note("allocator %s: %s is not mapped into relay-node; skipped" % (a, preload))
            s.stop()
            continue
        s.allocator, s.lib = a, preload
        servers[a] = s
    try:
        for s in servers.values():
            warm(s)
        for r in range(1, ROUNDS + 1):
            for a, s in servers.items():
                echo_run(s, ACTIVE, "alloc_rt", allocator=a, round=r)
        for a, s in servers.items():
            idle, _ = idle_memory(s, IDLE, "idle-", "alloc_mem", allocator=a)
            idle.close()
            s.stop()
    finally:
        stop_servers(servers)


def read_counts(path):
    """malloc_count.so's counters (see bench/malloc_count.c), or None."""
    names = ["malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc", "memalign", "bytes"]
    try:
        with open(path, "rb") as f:
            d = f.read(8 + 8 * len(names))
    except OSError:
        return None
    if len(d) < 8 + 8 * len(names) or not d.startswith(b"mcount1"):
        return None
    return dict(zip(names, struct.unpack("<%dQ" % len(names), d[8:])))


JSON_METRICS = ("relay_json_decodes_total", "relay_json_encodes_total")
MSG_METRICS = ("relay_messages_in_total", "relay_messages_out_total", "relay_messages_routed_total")


def section_allocs():
    """e: allocator calls, JSON decodes/encodes and routed messages per round trip in Relay."""
    if not os.path.exists(MALLOC_COUNT):
        note("allocation counts skipped: no %s (built by `make bench`)" % MALLOC_COUNT)
        return
    counts = os.path.join(TMP, "malloc-count")
    s = Server("relay", "allocs-relay", preload=MALLOC_COUNT, env_extra={"MALLOC_COUNT_FILE": counts}).start()
    try:
        if read_counts(counts) is None:
            note("allocation counts skipped: the shim wrote no counters to %s" % counts)
            return

        def snap():
            a = read_counts(counts)
            m = s.metrics()
            b = read_counts(counts)
            return {k: (a[k] + b[k]) / 2.0 for k in a}, m

        # what one /metrics scrape costs in allocations (subtracted: one scrape lies inside the window)
        scrape = []
        for _ in range(3):
            a = read_counts(counts)
            s.metrics()
            b = read_counts(counts)
            scrape.append({k: b[k] - a[k] for k in a})
        scrape = min(scrape, key=lambda d: d["malloc"] + d["calloc"] + d["realloc"])
        for conns in CONNS:
            snaps = {}

            def on_mark(name, snaps=snaps):
                if name in ("measure_start", "measure_end"):
                    snaps[name] = snap()

            args = ["--url", s.url, "--conns", str(conns), "--users", str(conns), "--duration",
                    str(DURATION), "--warmup", str(max(WARMUP, 1.0)), "--size", str(SIZE),
                    "--timeout", "30"]
            res, _ = run_client(args, server=s, on_mark=on_mark, timeout=90 + DURATION)
            s.wait_quiet()
            if "measure_start" not in snaps or "measure_end" not in snaps or not res:
                note("allocation counts at %d connections: the run did not complete" % conns)
                continue
            (c0, m0), (c1, m1) = snaps["measure_start"], snaps["measure_end"]
            rts = m1.get("relay_messages_in_total", 0) - m0.get("relay_messages_in_total", 0)
            if rts <= 0:
                note("allocation counts at %d connections: relay_messages_in_total did not grow" % conns)
                continue
            per = {k: (c1[k] - c0[k] - scrape[k]) / rts for k in c0}
            row = {"conns": conns, "round_trips": int(rts), "client_msgs_per_sec": res.get("msgs_per_sec"),
                   "errors": res.get("errors")}
            row.update({"%s_per_rt" % k: round(v, 2) for k, v in per.items()})
            row["allocs_per_rt"] = round(sum(per[k] for k in ("malloc", "calloc", "realloc", "posix_memalign",
                                                               "aligned_alloc", "memalign")), 2)
            for name in MSG_METRICS + JSON_METRICS:
                key = name.replace("relay_", "").replace("_total", "") + "_per_rt"
                row[key] = round((m1[name] - m0[name]) / rts, 3) if name in m0 and name in m1 else None
            rec = record("allocs", **row)
            log("allocs conns=%d: %.1f allocator calls, %.1f frees, %.0f bytes per round trip; json %s/%s" % (
                conns, rec["allocs_per_rt"], rec["free_per_rt"], rec["bytes_per_rt"],
                rec["json_decodes_per_rt"], rec["json_encodes_per_rt"]))
    finally:
        s.stop()


PROFILES = []


def perf_works():
    if PROFILE == "0":
        return False
    if not shutil.which(PERF):
        if PROFILE == "1":
            note("profile skipped: no `%s` (Debian package linux-perf)" % PERF)
        return False
    r = subprocess.run([PERF, "record", "-e", "cpu-clock", "-o", os.path.join(TMP, "perf-probe.data"),
                        "--", "true"], capture_output=True)
    if r.returncode != 0:
        note("profile skipped: `perf record` fails here: %s" % r.stderr.decode(errors="replace").strip()[:200])
        return False
    return True


def run_profile(server, what):
    """perf samples the server (cpu-clock, 999 Hz) during a 100-connection run; top by self time."""
    data = os.path.join(TMP, "perf-%d.data" % len(PROFILES))
    holder = {}

    def on_mark(name):
        if name == "measure_start":
            holder["p"] = PROCS.spawn([PERF, "record", "-e", "cpu-clock", "-F", "999", "-p", str(server.pid),
                                       "-o", data, "--", "sleep", str(DURATION)], cpu=CLIENT_CPU,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    args = ["--url", server.url, "--conns", str(ACTIVE), "--users", str(ACTIVE), "--duration",
            str(DURATION + 0.5), "--warmup", str(WARMUP), "--size", str(SIZE), "--timeout", "30"]
    res, _ = run_client(args, server=server, on_mark=on_mark, timeout=90 + DURATION)
    p = holder.get("p")
    if p:
        try:
            p.wait(DURATION + 30)
        except subprocess.TimeoutExpired:
            pass
        PROCS.stop(p)
    server.wait_quiet()
    rows, dsos = [], []
    if os.path.exists(data):
        for sort, dest in (("dso,symbol", rows), ("dso", dsos)):
            r = subprocess.run([PERF, "report", "-i", data, "--no-children", "--sort", sort, "--stdio",
                                "-g", "none", "--percent-limit", "0.3"], capture_output=True)
            for line in r.stdout.decode(errors="replace").splitlines():
                line = re.sub(r"(\s+-)+\s*$", "", line)  # empty source-line columns
                m = re.match(r"\s*([\d.]+)%\s+(\S+)(?:\s+\[(.)\]\s+(.*\S))?\s*$", line)
                if m:
                    dest.append((float(m.group(1)), m.group(2), (m.group(4) or "").strip()))
    PROFILES.append({"what": what, "rt_per_s": res.get("msgs_per_sec") if res else None,
                     "rows": rows[:25], "dsos": dsos[:10], "data": data})
    log("profile (%s): %d entries" % (what, len(rows)))


def section_profile():
    s = Server("relay", "profile-relay").start()
    try:
        warm(s)
        run_profile(s, "relay, %d connections" % ACTIVE)
    finally:
        s.stop()


def section_cluster():
    """Two nodes on a private redis-server; same-node vs cross-node echo round trips (unpinned).
    Only n1 admits a user first, so every hub lives on n1; a holder on n1 keeps one connection
    per user open while the measured clients use n2: client -> n2 -> Redis -> hub and plugin on
    n1 -> Redis -> n2 -> client. relay_forwarded_out_total (both nodes) checks which way it went."""
    if not shutil.which(REDIS_SERVER):
        note("cluster section skipped: no `%s`" % REDIS_SERVER)
        return
    with pinning(False):
        cluster_runs()


def cluster_runs():
    redis = None
    nodes = []
    try:
        rport = free_port()
        rdir = os.path.join(TMP, "redis")
        os.makedirs(rdir, exist_ok=True)
        redis = PROCS.spawn([REDIS_SERVER, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", rdir], logpath=os.path.join(TMP, "redis.log"))
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", rport), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise BenchError("redis-server did not answer")
        for nid in ("n1", "n2"):
            nodes.append(Server("relay", "cluster-" + nid, cpu=None, ready_path="/readyz",
                                extra_args=["--node-id", nid, "--redis", "redis://127.0.0.1:%d" % rport]).start())
        n1, n2 = nodes

        def forwarded():
            return sum(n.metrics().get("relay_forwarded_out_total", 0) for n in nodes)

        def crun(kind, node, conns, r):
            at = {}  # forwarded messages and CPU ticks of n1, n2, redis at the measure marks

            def on_mark(name):
                if name in ("measure_start", "measure_end"):
                    at[name] = (forwarded(), [n.ticks() for n in nodes] + [cpu_ticks(redis.pid)])

            rec = echo_run(node, conns, kind, round=r, on_mark=on_mark)
            if "measure_start" in at and "measure_end" in at and rec.get("msgs"):
                (f0, t0), (f1, t1) = at["measure_start"], at["measure_end"]
                rec["forwarded_per_rt"] = round((f1 - f0) / rec["msgs"], 2)
                secs = rec["msgs"] / rec["msgs_per_sec"] if rec.get("msgs_per_sec") else DURATION
                rec["cpu_pct_n1_n2_redis"] = [round(100.0 * (b - a) / HZ / secs) for a, b in zip(t0, t1)]
            rec["hubs_n2"] = n2.metrics().get("relay_hubs")

        cconns = [c for c in CONNS if c <= 100] or CONNS[:1]
        for conns in cconns:
            for r in range(1, ROUNDS + 1):
                crun("cluster_same", n1, conns, r)
            hold = IdleUsers(n1, conns, "bench", procs=1)
            st = hold.open(60)
            if st["open"] != conns:
                hold.close()
                raise BenchError("holder on n1 opened %d of %d" % (st["open"], conns))
            try:
                for r in range(1, ROUNDS + 1):
                    crun("cluster_cross", n2, conns, r)
            finally:
                hold.close()
    except BenchError as e:
        note("cluster section: %s" % str(e).splitlines()[0])
    finally:
        for n in nodes:
            n.stop()
        PROCS.stop(redis)


def labelled(server, name):
    """{label text: value} of one labelled counter from GET /metrics ({} when unavailable)."""
    status, body = http_get(server.port, "/metrics")
    out = {}
    if status == 200:
        for line in body.splitlines():
            m = re.match(r"%s\{([^}]*)\}\s+(\S+)$" % re.escape(name), line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def section_hostile():
    """100 connections of ordinary users (echo round trips, as in a and b) on a Relay node with
    bench/relay-bench-hostile.yaml; rounds alternate quiet (nobody else) and hostile (one more
    user, bench/hostile_client.py, whose plugin misbehaves in one way the whole window). One
    fresh server per kind, so that no kind inherits another's garbage or hubs."""
    if subprocess.run(["/usr/bin/python3", "-c", "import websockets"], capture_output=True).returncode != 0:
        note("hostile section skipped: /usr/bin/python3 has no `websockets` (Debian python3-websockets)")
        return
    for kind in HOSTILE_KINDS:
        if kind not in HOSTILE_WHAT:
            note("hostile: unknown kind %r skipped" % kind)
            continue
        try:
            s = Server("relay", "hostile-" + kind, config=CONFIG_HOSTILE).start()
        except BenchError as e:
            note("hostile %s: Relay did not start: %s" % (kind, str(e).splitlines()[0]))
            continue
        try:
            warm(s)
            for r in range(1, ROUNDS + 1):
                hostile_run(s, kind, False, r)
                hostile_run(s, kind, True, r)
        finally:
            s.stop()


def hostile_run(server, kind, attack, r):
    """One 100-connection run, with the hostile client going for the whole of it when attack.
    Kills (relay_plugin_kills_total by limit), crashes and the Lua heap are read at the measure
    marks, refusals from before the hostile user arrives to measure_end; the hostile client is stopped at measure_end, before the server quiets."""
    client = None
    out = None
    pre = labelled(server, "relay_plugin_refusals_total")  # refusals come when the user arrives
    if attack:
        client = PROCS.spawn(["/usr/bin/python3", HOSTILE_CLIENT, "--url", server.url, "--kind", kind,
                              "--prefix", "h%d-" % r], cpu=CLIENT_CPU, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        out = Lines(client.stdout)
        time.sleep(0.3)  # it connects and starts misbehaving before the warm-up starts
    at = {}

    def snap():
        return {"kills": labelled(server, "relay_plugin_kills_total"),
                "refusals": labelled(server, "relay_plugin_refusals_total"),
                "m": server.metrics(), "client_ticks": cpu_ticks(client.pid) if client else None,
                "t": time.monotonic()}

    def on_mark(name):
        if name in ("measure_start", "measure_end"):
            at[name] = snap()
        if name == "measure_end" and client:
            PROCS.stop(client, timeout=10)

    rec = echo_run(server, ACTIVE, "hostile_rt", on_mark=on_mark, hostile=kind, attack=attack, round=r)
    if client:
        PROCS.stop(client, timeout=10)
        out.join()
        for line in reversed(out.lines):
            if line.startswith("{"):
                try:
                    rec["hostile_client"] = json.loads(line)
                except ValueError:
                    pass
                break
    if "measure_start" in at and "measure_end" in at:
        a, b = at["measure_start"], at["measure_end"]
        rec["kills"] = {k.split('"')[1]: int(v - a["kills"].get(k, 0)) for k, v in b["kills"].items()
                        if v - a["kills"].get(k, 0) > 0}
        rec["kills_total"] = sum(rec["kills"].values())
        rec["refusals"] = {k.split('"')[1]: int(v - pre.get(k, 0)) for k, v in b["refusals"].items()
                           if v - pre.get(k, 0) > 0}
        rec["crashed"] = int(b["m"].get("relay_plugins_crashed_total", 0) - a["m"].get("relay_plugins_crashed_total", 0))
        rec["lua_heap_mb"] = [round(x["m"].get("relay_lua_memory_bytes", 0) / 1048576.0, 1) for x in (a, b)]
        if client and a["client_ticks"] is not None and b["client_ticks"] is not None and b["t"] > a["t"]:
            rec["hostile_client_cpu_pct"] = round(100.0 * (b["client_ticks"] - a["client_ticks"]) / HZ / (b["t"] - a["t"]), 1)
    st, _ = http_get(server.port, "/healthz")
    rec["healthz_after"] = st
    if server.proc.poll() is not None:
        raise BenchError("relay-node exited during the %s run (log %s)" % (kind, server.logpath))
    with open(os.path.join(TMP, "results.jsonl"), "a") as f:
        f.write(json.dumps(dict(rec, kind="hostile_detail"), sort_keys=True) + "\n")
    log("hostile %s %s round %d: kills %s, crashed %s, refusals %s, client %s" % (
        kind, "attack" if attack else "quiet", r, rec.get("kills"), rec.get("crashed"), rec.get("refusals"),
        rec.get("hostile_client")))
    return rec


# ---- preparation -----------------------------------------------------------------------------


def prepare_node():
    """Installs the pinned `ws` into bench/node-relay when missing; drops the Node peers if that
    is impossible. Returns (node version, ws version)."""
    node_peers = [k for k in PEERS if k.startswith("node")]
    if not node_peers:
        return None, None
    if not shutil.which(NODEJS):
        note("Node.js peers skipped: no `%s` on this machine" % NODEJS)
        drop_peers(node_peers)
        return None, None
    ver = subprocess.run([NODEJS, "--version"], capture_output=True, text=True).stdout.strip()
    want = json.load(open(os.path.join(NODE_DIR, "package.json")))["dependencies"]["ws"]

    def have():
        try:
            return json.load(open(os.path.join(NODE_DIR, "node_modules", "ws", "package.json")))["version"]
        except (OSError, ValueError, KeyError):
            return None

    if have() != want:
        if not shutil.which(NPM):
            note("Node.js peers skipped: ws %s not installed in bench/node-relay and no `%s`" % (want, NPM))
            drop_peers(node_peers)
            return ver, None
        log("installing ws %s into bench/node-relay/node_modules (npm ci)" % want)
        r = subprocess.run([NPM, "ci", "--no-audit", "--no-fund", "--prefix", NODE_DIR],
                           capture_output=True, text=True)
        if r.returncode != 0 or have() != want:
            note("Node.js peers skipped: `npm ci` in bench/node-relay failed: %s" % r.stderr.strip()[-300:])
            drop_peers(node_peers)
            return ver, None
    return ver, have()


def drop_peers(kinds):
    for k in kinds:
        if k in PEERS:
            PEERS.remove(k)


def sh(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def machine():
    info = {"nproc": len(os.sched_getaffinity(0)), "kernel": platform.release()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem"] = "%.1f GiB" % (int(line.split()[1]) / 1048576.0)
    except OSError:
        pass
    info["commit"] = sh("git", "rev-parse", "--short", "HEAD") or "unknown"
    try:
        porcelain = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                   cwd=ROOT).stdout
    except OSError:
        porcelain = ""
    changed = [l[3:].split(" -> ")[-1] for l in porcelain.splitlines() if l.strip()]
    outputs = {os.path.relpath(REPORT, ROOT), os.path.relpath(DOC, ROOT)}
    info["dirty"] = [c for c in changed if c not in outputs]
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = {}
    for pkg in ("libwebsockets17", "libuv1", "liblua5.4-0", "libjemalloc2", "libmimalloc2.0"):
        v = sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", pkg)
        vers[pkg] = v.split()[-1] if v.startswith("ii") else "not installed"
    info["versions"] = vers
    info["ulimit_n"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return info


# ---- report ----------------------------------------------------------------------------------


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fnum(v, unit="", digits=0):
    if v is None:
        return "n/a"
    return ("{:,.%df}" % digits).format(v) + unit


def fmb(kb):
    return "n/a" if kb is None else "%.1f MB" % (kb / 1024.0)


def fus(v):
    if v is None:
        return "n/a"
    return "%.0f us" % v if v < 10000 else "%.1f ms" % (v / 1000.0)


def ratio(a, b):
    return a / b if a is not None and b else None


def fx(v, digits=2):
    return "n/a" if v is None else ("%." + str(digits) + "fx") % v


def rng(vals, digits=2):
    vals = [v for v in vals if v is not None]
    if len(vals) < 2:
        return ""
    return (" (%." + str(digits) + "f-%." + str(digits) + "f)") % (min(vals), max(vals))


def rows(kind, **match):
    return [r for r in ROWS if r["kind"] == kind and all(r.get(k) == v for k, v in match.items())]


def load_note(rs):
    """One sentence on what else ran on the (shared) machine during the runs rs."""
    vals = [r.get("other_load_pct") for r in rs if r.get("other_load_pct") is not None]
    if not vals:
        return "Other load on the machine: not measured."
    m, hi = statistics.median(vals), max(vals)
    busy = sum(1 for v in vals if v > 25)
    s = ("Other load: processes other than the servers and the load generator used a median %.0f%% "
         "of a core during these runs (max %.0f%%)." % (m, hi))
    if m > 10:
        s += " **The machine was busy with other work: compare within a round, not across runs.**"
    elif busy:
        s += (" %d of %d runs shared the machine with other work (over 25%%; see other_load_pct in"
              " the raw runs)." % (busy, len(vals)))
    return s


def verdict(ok):
    return "" if ok is None else (" (meets)" if ok else " (**misses**)")


def rt_tables(pinned):
    out = []
    w = out.append
    rs_all = rows("rt", pinned=pinned)
    if not rs_all:
        return ["No runs."]
    w("| connections | server | round trips/s | p50 | p99 | server CPU | server CPU per round trip | client CPU | other load | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for conns in CONNS:
        for k in PEERS:
            rs = [r for r in rs_all if r["conns"] == conns and r["peer"] == k]
            if not rs:
                continue
            w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
                conns, PEER_NAMES[k], fnum(med(r["msgs_per_sec"] for r in rs)),
                fus(med(r["p50_us"] for r in rs)), fus(med(r["p99_us"] for r in rs)),
                fnum(med(r.get("server_cpu_pct") for r in rs), "%"),
                fnum(med(r.get("server_us_per_rt") for r in rs), " us", 1),
                fnum(med(r.get("client_cpu_pct") for r in rs), "%"),
                fnum(med(r.get("other_load_pct") for r in rs), "%"),
                sum(r.get("errors") or 0 for r in rs)))
    w("")
    w(load_note(rs_all))
    w("")
    others = [k for k in PEERS if k != "relay"]
    if "relay" in PEERS and others:
        head = "| connections |"
        for k in others:
            head += " rt/s relay/%s | p50 relay/%s | p99 relay/%s |" % (k, k, k)
        w(head)
        w("|---|" + "---|---|---|" * len(others))
        for conns in CONNS:
            line = "| %d |" % conns
            rel = [r for r in rs_all if r["conns"] == conns and r["peer"] == "relay"]
            for k in others:
                oth = [r for r in rs_all if r["conns"] == conns and r["peer"] == k]
                for key in ("msgs_per_sec", "p50_us", "p99_us"):
                    per_round = [ratio(a.get(key), b.get(key)) for a in rel for b in oth if a["round"] == b["round"]]
                    line += " **%s**%s |" % (fx(ratio(med(r.get(key) for r in rel), med(r.get(key) for r in oth))),
                                             rng(per_round))
            w(line)
        w("")
        w("Ratios are of the medians; in brackets the range of the same ratio taken round by round")
        w("(each round runs the servers one after the other). Round trips/s above 1 and latency below 1")
        w("favour Relay.")
    return out


def report(info, node_ver, ws_ver, pin_note):
    out = []
    w = out.append
    a_rounds = RT_ROUNDS
    w("# Relay benchmark report")
    w("")
    if QUICK:
        w("**BENCH_QUICK=1 smoke run**: one round, short runs, %d idle users. Not for comparison;" % IDLE)
        w("run `make bench` for figures.")
        w("")
    w("Generated by `make bench` (bench/run.sh -> bench/bench.py) on %s." % info["date"])
    w("")
    w("| machine | |")
    w("|---|---|")
    w("| CPUs (nproc) | %s |" % info["nproc"])
    w("| CPU model | %s |" % info.get("cpu", "unknown"))
    w("| memory | %s |" % info.get("mem", "unknown"))
    w("| kernel | %s |" % info["kernel"])
    w("| commit | `%s`%s |" % (info["commit"], (" + uncommitted changes (%s)" % ", ".join(info["dirty"][:8])) if info["dirty"] else " (clean tree)"))
    w("| packages | libwebsockets %s, libuv %s, Lua %s, jemalloc %s, mimalloc %s |" % tuple(
        info["versions"][p] for p in ("libwebsockets17", "libuv1", "liblua5.4-0", "libjemalloc2", "libmimalloc2.0")))
    w("| Node.js | %s, ws %s |" % (node_ver or "n/a", ws_ver or "n/a"))
    w("| fd limit per process | %s |" % info["ulimit_n"])
    w("| whole run | %.0f s |" % (time.monotonic() - T_START))
    w("")
    out.extend(summary())
    w("## Method")
    w("")
    w("One load generator for every server: `build/relay-bench` (C, epoll, one thread). Each connection")
    w("is its own user (`?user_id=benchK`, insecure auth), waits for the welcome frame, then keeps one")
    w("%d-byte `{\"type\":\"echo_ping\",\"request_id\":..,\"data\":..}` in flight; latency is per round trip" % SIZE)
    w("(monotonic clock, 1 us histogram buckets). %.1f s measured after %.1f s of warm-up; **%d round%s**" % (
        DURATION, WARMUP, a_rounds, "" if a_rounds == 1 else "s"))
    w("on freshly started servers for each connection count, the servers interleaved within each")
    w("round (%s, %s, ...); every figure is the **median over rounds** and every ratio is taken" % (
        ", ".join(PEERS), PEERS[0]))
    w("from the same run. Server CPU is the server's user+system time")
    w("between the client's measure_start and measure_end marks (100% is one core), client CPU the")
    w("generator's over its whole run. %s" % pin_note)
    w("")
    w("Servers: **Relay** = `build/relay-node -c bench/relay-bench.yaml` (every user's hub auto-starts")
    w("the `session_` plugin and the `echo_` plugin; a message goes client -> gateway -> user hub ->")
    w("Lua echo plugin -> client). **lws echo** = `build/lws-echo` (bench/lws_echo.c: lws 4.1 on a")
    w("foreign libuv loop, rx_buffer_size 512, the hybrid direct write; sends Relay's welcome frame and")
    w("echoes every frame: the ceiling). **Node relay** = `bench/node-relay/server.js` (Node.js `ws`,")
    w("per-user hub objects, longest-prefix routing to an echo handler answering like the plugin).")
    w("Where Relay holds idle users (idle users, idle bytes, allocators) it runs")
    w("`bench/relay-bench-session.yaml`: the spec's set-up, only the `session_` plugin auto-started.")
    if "node-echo" in PEERS:
        w("**Node ws echo** = `bench/node-relay/echo.js` (no hub, no routing).")
    w("Client and servers share this machine, so the figures compare servers; they are not capacity")
    w("figures. At 1 connection a round trip waits on wake-ups: on an otherwise idle VM each")
    w("wake-up of a vCPU costs tens of microseconds, so the 1-connection figures are mostly that and")
    w("rise several-fold when other work keeps the CPUs busy (see the other load column).")
    w("")
    for pinned, title in ((False, "unpinned"), (True, "pinned: server on CPU 0, load generator on CPU 1")):
        w("## Round trips, %s" % title)
        w("")
        if pinned and not PINNING:
            w(pin_note)
        else:
            out.extend(rt_tables(pinned))
        w("")

    # b
    w("## With %s idle users (100 connections)" % fnum(IDLE))
    w("")
    w("Two servers of each kind run side by side; one also holds %s idle users (each its own user," % fnum(IDLE))
    w("for Relay each with its hub and its auto-started session plugin) opened by %d client processes from" % IDLE_PROCS)
    w("127.0.0.2-9; %d rounds alternate between the two (medians). Targets for Relay: rate at least" % RT_ROUNDS)
    w("%.2fx, p99 at most %.0fx." % (TARGETS["idle_rate"], TARGETS["idle_p99"]))
    w("")
    w("| server | without: rt/s | p99 | with idle users: rt/s | p99 | rate with/without | p99 with/without |")
    w("|---|---|---|---|---|---|---|")
    for k in PEERS:
        without = rows("idle_rt", peer=k, idle_users=0)
        with_ = [r for r in rows("idle_rt", peer=k) if r.get("idle_users")]
        if not without or not with_:
            continue
        r_rate = ratio(med(r["msgs_per_sec"] for r in with_), med(r["msgs_per_sec"] for r in without))
        r_p99 = ratio(med(r["p99_us"] for r in with_), med(r["p99_us"] for r in without))
        w("| %s | %s | %s | %s | %s | **%s**%s | **%s**%s |" % (
            PEER_NAMES[k], fnum(med(r["msgs_per_sec"] for r in without)), fus(med(r["p99_us"] for r in without)),
            fnum(med(r["msgs_per_sec"] for r in with_)), fus(med(r["p99_us"] for r in with_)),
            fx(r_rate), verdict(r_rate >= TARGETS["idle_rate"] if k == "relay" and r_rate else None),
            fx(r_p99), verdict(r_p99 <= TARGETS["idle_p99"] if k == "relay" and r_p99 else None)))
    w("")
    w(load_note(rows("idle_rt")))
    w("")
    w("Server CPU per round trip (median): " + "; ".join(
        "%s %s without, %s with" % (PEER_NAMES[k], fnum(med(r.get("server_us_per_rt") for r in rows("idle_rt", peer=k, idle_users=0)), " us", 1),
                                     fnum(med(r.get("server_us_per_rt") for r in rows("idle_rt", peer=k) if r.get("idle_users")), " us", 1))
        for k in PEERS if rows("idle_rt", peer=k)) + ".")
    w("")

    # c
    w("## Idle bytes per user")
    w("")
    w("Server VmRSS (from /proc/PID/status, read once it moves less than 0.5% over 1.25 s) before and")
    w("after %s idle users connect (after the 100 active users of the section above were served)," % fnum(IDLE))
    w("divided by the users welcomed. Targets for Relay: at most 5 KiB with the session plugin")
    w("auto-started, under 3 KiB without auto-started plugins.")
    w("")
    w("| server | set-up | users welcomed | RSS before | RSS after | bytes per user | open fds | errors |")
    w("|---|---|---|---|---|---|---|---|")
    for k in PEERS:
        for cfg, label, target in (("session", "session plugin auto-started", TARGETS["bytes_session"]),
                                   ("noauto", "no auto-started plugins", TARGETS["bytes_noauto"]), (None, "", None)):
            rs = [r for r in rows("idle_mem", peer=k) if r.get("config") == cfg]
            if not rs:
                continue
            b = med(r["bytes_per_user"] for r in rs)
            ok = None
            if k == "relay" and b is not None and target:
                ok = b <= target if cfg == "session" else b < target
            w("| %s | %s | %s | %s | %s | **%s**%s | %s | %d |" % (
                PEER_NAMES[k], label or "as above", fnum(med(r["idle_open"] for r in rs)),
                fmb(med(r["rss_before_kb"] for r in rs)), fmb(med(r["rss_after_kb"] for r in rs)),
                fnum(b, " B"), verdict(ok),
                fnum(med(r.get("fds") for r in rs)), sum(r.get("idle_errors") or 0 for r in rs)))
    w("")

    # d
    w("## Connect rate with welcome")
    w("")
    w("%s connections opened by one client process with %d handshakes in flight, each a new user" % (
        fnum(CONNECT_N), CONNECT_CONC))
    w("(for Relay: a new hub and its two plugins), from 127.0.0.2-9; rate = connections welcomed /")
    w("seconds from the first connect() to the last welcome frame. Servers pinned as in the pinned")
    w("table when pinning is on. Target for Relay: at least %s/s." % fnum(TARGETS["connect"]))
    w("")
    w("| server | connections/s | connect -> welcome p50 | p99 | server CPU per connection | errors |")
    w("|---|---|---|---|---|---|")
    for k in PEERS:
        rs = rows("connect", peer=k)
        if not rs:
            continue
        rate = med(r.get("open_per_sec") for r in rs)
        w("| %s | **%s**%s | %s | %s | %s | %d |" % (
            PEER_NAMES[k], fnum(rate), verdict(rate >= TARGETS["connect"] if k == "relay" and rate else None),
            fus(med(r.get("open_p50_us") for r in rs)), fus(med(r.get("open_p99_us") for r in rs)),
            fnum(med(r.get("server_us_per_conn") for r in rs), " us", 1), sum(r.get("errors") or 0 for r in rs)))
    w("")
    w(load_note(rows("connect")))
    idle_rates = [(r["peer"], r.get("idle_open_per_sec")) for r in rows("idle_mem") if r.get("config") != "noauto"]
    if idle_rates:
        w("")
        w("For comparison, opening the %s idle users above (%d processes, up to %d handshakes in flight" % (
            fnum(IDLE), IDLE_PROCS, 256 * IDLE_PROCS))
        w("in all): " + "; ".join("%s %s/s" % (PEER_NAMES[p], fnum(v)) for p, v in idle_rates) + ".")
    w("")

    # e
    w("## Per routed message in Relay")
    w("")
    w("Relay with `build/malloc_count.so` preloaded (bench/malloc_count.c: counts malloc, calloc,")
    w("realloc, free, posix_memalign, aligned_alloc, memalign in a shared file; Lua's allocator calls")
    w("realloc/free and is included). Counters and `GET /metrics` are read at the client's")
    w("measure_start and measure_end marks; differences are divided by the increase of")
    w("`relay_messages_in_total` (one client frame per round trip), after subtracting what one")
    w("/metrics scrape allocates. JSON figures come from `relay_json_decodes_total` and")
    w("`relay_json_encodes_total` when the node exports them (n/a otherwise).")
    w("")
    w("| connections | round trips counted | allocator calls | malloc | calloc | realloc | free | bytes asked | routed | msgs out | JSON decodes | JSON encodes |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows("allocs"):
        w("| %d | %s | **%s** | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["conns"], fnum(r["round_trips"]), fnum(r["allocs_per_rt"], "", 1), fnum(r["malloc_per_rt"], "", 1),
            fnum(r["calloc_per_rt"], "", 1), fnum(r["realloc_per_rt"], "", 1), fnum(r["free_per_rt"], "", 1),
            fnum(r["bytes_per_rt"], " B"), fnum(r.get("messages_routed_per_rt"), "", 2),
            fnum(r.get("messages_out_per_rt"), "", 2), fnum(r.get("json_decodes_per_rt"), "", 2),
            fnum(r.get("json_encodes_per_rt"), "", 2)))
    if not rows("allocs"):
        w("| n/a | | | | | | | | | | | |")
    w("")
    w("All per round trip. posix_memalign/aligned_alloc/memalign are counted in \"allocator calls\"")
    w("(they were %s)." % ("0" if all((r.get("posix_memalign_per_rt") or 0) + (r.get("aligned_alloc_per_rt") or 0)
                                     + (r.get("memalign_per_rt") or 0) < 0.01 for r in rows("allocs")) else "not 0; see raw runs"))
    w("")

    # f
    w("## Allocators (Relay)")
    w("")
    w("The same Relay code: glibc malloc is `make ALLOCATOR=glibc` (build-glibc/relay-node, no")
    w("jemalloc linked); jemalloc and mimalloc are preloaded (`LD_PRELOAD`, checked in")
    w("/proc/PID/maps; jemalloc is also what relay-node links by default); %d connections, rounds" % ACTIVE)
    w("interleaved across allocators; idle bytes per user")
    w("as above with %s users, each allocator on its own fresh server." % fnum(IDLE))
    w("")
    w("| allocator | library | round trips/s | p50 | p99 | rt/s vs glibc | idle bytes per user | vs glibc |")
    w("|---|---|---|---|---|---|---|---|")
    g_rate = med(r["msgs_per_sec"] for r in rows("alloc_rt", allocator="glibc"))
    g_mem = med(r["bytes_per_user"] for r in rows("alloc_mem", allocator="glibc"))
    for a in ALLOCATORS:
        rs = rows("alloc_rt", allocator=a)
        ms = rows("alloc_mem", allocator=a)
        if not rs and not ms:
            continue
        rate = med(r["msgs_per_sec"] for r in rs)
        mem = med(r["bytes_per_user"] for r in ms)
        lib = ALLOC_LIBS.get(a, ("(libc)", ""))[0]
        w("| %s | %s | **%s** | %s | %s | %s | **%s** | %s |" % (
            a, lib, fnum(rate), fus(med(r["p50_us"] for r in rs)), fus(med(r["p99_us"] for r in rs)),
            fx(ratio(rate, g_rate)), fnum(mem, " B"), fx(ratio(mem, g_mem))))
    w("")
    w(load_note(rows("alloc_rt")))
    w("")

    # profile
    w("## Profile")
    w("")
    if PROFILES:
        w("`perf record -e cpu-clock -F 999 -p PID` on Relay for %.1f s of a %d-connection run (no call" % (DURATION, ACTIVE))
        w("graphs: self time only), then `perf report --no-children --sort dso,symbol`. Libraries")
        w("without symbols (Debian's liblua5.4 and libwebsockets are stripped) show as addresses; their")
        w("share by library is the second table.")
        for p in PROFILES:
            w("")
            w("**%s** (%s round trips/s while sampled)" % (p["what"], fnum(p["rt_per_s"])))
            w("")
            w("| self | library | symbol |")
            w("|---|---|---|")
            for pct, dso, sym in p["rows"][:15]:
                w("| %.1f%% | %s | %s |" % (pct, dso, ("`%s`" % sym) if sym else ""))
            w("")
            w("By library: " + ", ".join("%s %.1f%%" % (d, pct) for pct, d, _ in p["dsos"][:8]) + ".")
    else:
        w("Not produced in this run (%s). It comes from `perf record -e cpu-clock -F 999 -p $(pidof" %
          ("BENCH_PROFILE=0" if PROFILE == "0" else "perf missing or not permitted"))
        w("relay-node) -- sleep 5` during a 100-connection run, then `perf report --no-children --sort")
        w("dso,symbol --stdio` (Debian package linux-perf; `make bench` does this when perf works).")
    w("")

    # cluster
    if rows("cluster_same") or rows("cluster_cross"):
        w("## Cluster: cross-node vs same-node")
        w("")
        w("Two nodes on a private redis-server, unpinned; all hubs on n1. Same-node: clients on n1.")
        w("Cross-node: a holder on n1 keeps the users' hubs there, measured clients on n2 (client -> n2 ->")
        w("Redis stream -> hub and plugin on n1 -> Redis stream -> n2 -> client). Forwarded messages are")
        w("the increase of `relay_forwarded_out_total` on both nodes in the measured window per round")
        w("trip (2 expected cross-node, 0 same-node); CPU is each process's over the same window.")
        w("")
        w("| connections | path | round trips/s | p50 | p99 | forwarded msgs per round trip | CPU n1 / n2 / redis | hubs on n2 |")
        w("|---|---|---|---|---|---|---|---|")
        for conns in sorted({r["conns"] for r in rows("cluster_same") + rows("cluster_cross")}):
            for kind, label in (("cluster_same", "same-node"), ("cluster_cross", "cross-node")):
                rs = rows(kind, conns=conns)
                if rs:
                    cpus = [r["cpu_pct_n1_n2_redis"] for r in rs if r.get("cpu_pct_n1_n2_redis")]
                    w("| %d | %s | %s | %s | %s | %s | %s | %s |" % (
                        conns, label, fnum(med(r["msgs_per_sec"] for r in rs)), fus(med(r["p50_us"] for r in rs)),
                        fus(med(r["p99_us"] for r in rs)), fnum(med(r.get("forwarded_per_rt") for r in rs), "", 2),
                        " / ".join(fnum(med(c[i] for c in cpus), "%") for i in range(3)) if cpus else "n/a",
                        fnum(med(r.get("hubs_n2") for r in rs))))
        w("")
    elif not QUICK:
        w("## Cluster")
        w("")
        w("Not run (%s)." % ("BENCH_CLUSTER=0" if not CLUSTER else "see notes"))
        w("")

    out.extend(hostile_report())

    if NOTES:
        w("## Notes from this run")
        w("")
        for n in NOTES:
            w("- " + n)
        w("")
    w("## Raw runs")
    w("")
    w("Every measurement as recorded (kinds: rt = round trips, connect, idle_rt / idle_mem = idle")
    w("users, alloc_rt / alloc_mem = allocators, allocs = per-message counts, cluster_*,")
    w("hostile_rt = a misbehaving plugin next to other users).")
    w("")
    w("```")
    for r in ROWS:
        w(json.dumps(r, sort_keys=True))
    w("```")
    w("")
    w("Reproduce: `make bench` (full, about 15 minutes) or `BENCH_QUICK=1 make bench` (smoke);")
    w("the knobs are listed at the top of bench/bench.py.")
    return out


def hostile_report():
    """## A misbehaving plugin next to other users: per kind, quiet vs hostile."""
    out = []
    w = out.append
    if not rows("hostile_rt"):
        return out
    w("## A misbehaving plugin next to other users")
    w("")
    w("%d connections of ordinary users (each its own user, echo round trips as above) on Relay with" % ACTIVE)
    w("`bench/relay-bench-hostile.yaml` (the bench config plus `bench/hostile.lua` under `hostile_`, not")
    w("auto-started; sandbox limits at their defaults). Rounds alternate **quiet** (nobody else) and")
    w("**hostile** (one more user, `bench/hostile_client.py`, whose plugin misbehaves in one way for the")
    w("whole window), one fresh server per kind. The hub restarts a crashed plugin once, then marks it")
    w("failed, so the hostile client comes back as a new user after each `plugin_failed` answer (two")
    w("kills per user) and re-sends its message every 20 ms (a restarted instance needs its own).")
    w("Kills are the increase of `relay_plugin_kills_total` (by limit) over the measured window;")
    w("refusals (`relay_plugin_refusals_total`) are counted from the hostile user's arrival.")
    w("Target (issue 7): another user's p99 within %.0fx of quiet." % HOSTILE_TARGET_P99)
    w("")
    w("| kind | the hostile plugin | quiet rt/s | hostile rt/s | rate hostile/quiet | quiet p99 | hostile p99 | p99 hostile/quiet | kills in window | hostile users | others' errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in HOSTILE_KINDS:
        q = rows("hostile_rt", hostile=kind, attack=False)
        h = rows("hostile_rt", hostile=kind, attack=True)
        if not q or not h:
            continue
        rate = ratio(med(r["msgs_per_sec"] for r in h), med(r["msgs_per_sec"] for r in q))
        p99 = ratio(med(r["p99_us"] for r in h), med(r["p99_us"] for r in q))
        per_round = [ratio(a.get("p99_us"), b.get("p99_us")) for a in h for b in q if a["round"] == b["round"]]
        limits = sorted({k for r in h for k in (r.get("kills") or {})})
        kills = ", ".join("%s %s" % (fnum(med((r.get("kills") or {}).get(k, 0) for r in h)), k) for k in limits) or "0"
        refs = sorted({k for r in h for k in (r.get("refusals") or {})})
        if refs:
            kills += " (refusals: %s)" % ", ".join("%s %s" % (fnum(med((r.get("refusals") or {}).get(k, 0) for r in h)), k)
                                                 for k in refs)
        users = med((r.get("hostile_client") or {}).get("users") for r in h)
        errs = sum((r.get("errors") or 0) + (r.get("error_replies") or 0) for r in h)
        w("| %s | %s | %s | %s | **%s** | %s | %s | **%s**%s%s | %s | %s | %d |" % (
            kind, HOSTILE_WHAT[kind], fnum(med(r["msgs_per_sec"] for r in q)), fnum(med(r["msgs_per_sec"] for r in h)),
            fx(rate), fus(med(r["p99_us"] for r in q)), fus(med(r["p99_us"] for r in h)), fx(p99), rng(per_round),
            verdict(p99 <= HOSTILE_TARGET_P99 if p99 else None), kills, fnum(users), errs))
    w("")
    w("Medians over %d round%s; in brackets the p99 ratio round by round. Kills and hostile users are" % (
        ROUNDS, "" if ROUNDS == 1 else "s"))
    w("per measured window (%.1f s). Others' errors: the ordinary users' failed or error-answered" % DURATION)
    w("round trips in the hostile windows. The hostile client's CPU (same CPU as the load generator")
    w("when pinned): median %s of a core." % fnum(med(r.get("hostile_client_cpu_pct") for r in rows("hostile_rt")), "%"))
    w("")
    w(load_note(rows("hostile_rt")))
    w("")
    return out


SECTION_HEADINGS = (  # report headings -> BENCH_SECTIONS names (a partial run keeps only its own)
    ("## Summary", ("rt", "idle", "connect")), ("## Round trips", ("rt",)), ("## With ", ("idle",)),
    ("## Idle bytes", ("idle",)), ("## Connect rate", ("connect",)), ("## Per routed message", ("allocs",)),
    ("## Allocators", ("alloc",)), ("## Profile", ("profile", "idle")), ("## Cluster", ("cluster",)),
    ("## A misbehaving plugin", ("hostile",)))


def only_sections(lines):
    """The report without the sections a partial run (BENCH_SECTIONS) did not run."""
    if not PARTIAL:
        return lines
    out, keep = [], True
    for line in lines:
        if line.startswith("## "):
            keep = True
            for head, names in SECTION_HEADINGS:
                if line.startswith(head):
                    keep = any(n in SECTIONS for n in names)
        if keep:
            out.append(line)
    return out


def idle_ratios(k):
    without = rows("idle_rt", peer=k, idle_users=0)
    with_ = [r for r in rows("idle_rt", peer=k) if r.get("idle_users")]
    return (ratio(med(r["msgs_per_sec"] for r in with_), med(r["msgs_per_sec"] for r in without)),
            ratio(med(r["p99_us"] for r in with_), med(r["p99_us"] for r in without)))


def summary():
    """The figures the issue set targets for, and the headline ratios, in one table."""
    out = []
    w = out.append
    w("## Summary")
    w("")
    w("| figure | Relay | target | |")
    w("|---|---|---|---|")
    rate, p99 = idle_ratios("relay")
    mem = {cfg: med(r["bytes_per_user"] for r in rows("idle_mem", peer="relay", config=cfg))
           for cfg in ("session", "noauto")}
    conn = med(r.get("open_per_sec") for r in rows("connect", peer="relay"))
    for label, v, shown, target, ok in (
            ("rate at 100 connections with %s idle users / without" % fnum(IDLE), rate, fx(rate),
             ">= %.2fx" % TARGETS["idle_rate"], rate is not None and rate >= TARGETS["idle_rate"]),
            ("p99 with idle users / without", p99, fx(p99), "<= %.0fx" % TARGETS["idle_p99"],
             p99 is not None and p99 <= TARGETS["idle_p99"]),
            ("idle bytes per user, session plugin auto-started", mem["session"], fnum(mem["session"], " B"),
             "<= 5 KiB (5,120 B)", mem["session"] is not None and mem["session"] <= TARGETS["bytes_session"]),
            ("idle bytes per user, no auto-started plugins", mem["noauto"], fnum(mem["noauto"], " B"),
             "< 3 KiB (3,072 B)", mem["noauto"] is not None and mem["noauto"] < TARGETS["bytes_noauto"]),
            ("connections/s to the welcome frame", conn, fnum(conn, "/s"), ">= %s/s" % fnum(TARGETS["connect"]),
             conn is not None and conn >= TARGETS["connect"])):
        w("| %s | **%s** | %s | %s |" % (label, shown, target, "n/a" if v is None else ("meets" if ok else "**misses**")))
    a = rows("allocs", conns=ACTIVE) or rows("allocs")
    if a:
        w("| allocator calls per routed round trip (%d connections) | **%s** | | |" % (
            a[0]["conns"], fnum(a[0]["allocs_per_rt"], "", 1)))
    w("")
    pinned = bool(rows("rt", pinned=True))
    w("Round trips/s at each connection count, Relay / peer (medians, %s layout):" % (
        "pinned" if pinned else "unpinned"))
    w("")
    others = [k for k in PEERS if k != "relay"]
    w("| connections |" + "".join(" Relay / %s |" % PEER_NAMES[k] for k in others))
    w("|---|" + "---|" * len(others))
    for conns in CONNS:
        rel = med(r["msgs_per_sec"] for r in rows("rt", pinned=pinned, conns=conns, peer="relay"))
        w("| %d |" % conns + "".join(" %s |" % fx(ratio(rel, med(
            r["msgs_per_sec"] for r in rows("rt", pinned=pinned, conns=conns, peer=k)))) for k in others))
    w("")
    return out


def growth_section():
    """docs/performance.md: "How cost grows" from this run's figures."""
    out = []
    w = out.append
    w("### How cost grows")
    w("")
    w("Server CPU per round trip (median over rounds, pinned layout when available, else unpinned;")
    w("when the server is at 100% of a core this is 1 / its rate), allocator calls per round trip")
    w("(Relay) and idle memory per connection, against the number of connections:")
    w("")
    pinned = bool(rows("rt", pinned=True))
    head = "| connections |" + "".join(" %s CPU/rt |" % PEER_NAMES[k] for k in PEERS) + " Relay allocator calls/rt |"
    w(head)
    w("|---|" + "---|" * (len(PEERS) + 1))
    for conns in CONNS:
        line = "| %d |" % conns
        for k in PEERS:
            line += " %s |" % fnum(med(r.get("server_us_per_rt") for r in rows("rt", pinned=pinned, conns=conns, peer=k)), " us", 1)
        a = rows("allocs", conns=conns)
        line += " %s |" % (fnum(a[0]["allocs_per_rt"], "", 1) if a else "n/a")
        w(line)
    for label, sel in (("%d, idle-user section, without" % ACTIVE, lambda r: not r.get("idle_users")),
                       ("%d + %s idle users, same section" % (ACTIVE, fnum(IDLE)), lambda r: r.get("idle_users"))):
        line = "| %s |" % label
        for k in PEERS:
            line += " %s |" % fnum(med(r.get("server_us_per_rt") for r in rows("idle_rt", peer=k) if sel(r)), " us", 1)
        w(line + " n/a |")
    w("")
    w("The last two rows come from one section (two servers side by side, rounds alternating), so")
    w("they compare with each other; figures from different sections also differ by the drift of a")
    w("shared VM over the run.")
    w("")
    w("| per connection | " + " | ".join(PEER_NAMES[k] for k in PEERS) + " |")
    w("|---|" + "---|" * len(PEERS))
    w("| idle memory (bytes per user) | " + " | ".join(
        fnum(med(r["bytes_per_user"] for r in rows("idle_mem", peer=k) if r.get("config") != "noauto"), " B")
        for k in PEERS) + " |")
    w("| server CPU to connect and welcome | " + " | ".join(
        fnum(med(r.get("server_us_per_conn") for r in rows("connect", peer=k)), " us", 1) for k in PEERS) + " |")
    rel = {c: med(r.get("server_us_per_rt") for r in rows("rt", pinned=pinned, conns=c, peer="relay")) for c in CONNS}
    ech = {c: med(r.get("server_us_per_rt") for r in rows("rt", pinned=pinned, conns=c, peer="echo")) for c in CONNS}
    nod = {c: med(r.get("server_us_per_rt") for r in rows("rt", pinned=pinned, conns=c, peer="node")) for c in CONNS}
    lo = min((c for c in CONNS if c > 1), default=None)  # 1 connection is wake-up bound (see Caveats)
    hi = max(CONNS)
    w("")
    if lo and hi > lo and rel.get(lo) and rel.get(hi):
        w("From %d to %d connections the CPU per round trip changes %s for Relay, %s for lws echo" % (
            lo, hi, fx(ratio(rel[hi], rel[lo])), fx(ratio(ech.get(hi), ech.get(lo)))))
        w("and %s for the Node relay." % fx(ratio(nod.get(hi), nod.get(lo))))
    r_base = med(r.get("server_us_per_rt") for r in rows("idle_rt", peer="relay", idle_users=0))
    r_loaded = med(r.get("server_us_per_rt") for r in rows("idle_rt", peer="relay") if r.get("idle_users"))
    if r_base and r_loaded:
        w("With %s idle users Relay's CPU per round trip at %d connections changes %s." % (
            fnum(IDLE), ACTIVE, fx(ratio(r_loaded, r_base))))
    w("At 1 connection no server is saturated (the round trip waits on wake-ups), so the CPU per")
    w("round trip there includes the cost of going idle and waking up.")
    return out


DOC_BLOCK = "<!-- %s generated by bench/bench.py: %s -->"


def update_docs(report_lines):
    """Rewrites the generated blocks of docs/performance.md (between its BEGIN/END markers):
    tables (the report without raw runs and profile), growth, profile."""
    try:
        text = open(DOC).read()
    except OSError:
        note("docs/performance.md not found; not updated")
        return
    tables, profile = [], []
    dest = None
    for line in report_lines:
        if line.startswith("| machine |"):
            dest = tables
        if line.startswith("## Profile"):
            dest = profile
            continue
        if line.startswith("## ") and dest is profile:
            dest = tables
        if line.startswith("## Raw runs"):
            break
        if dest is not None:
            dest.append("#" + line if line.startswith("## ") else line)
    head = ["Latest full run: %s, commit `%s` (generated by `make bench`; also in bench/REPORT.md," % (
        MACHINE["date"], MACHINE["commit"]), "with the raw runs).", ""]
    blocks = {"tables": head + tables, "growth": growth_section()[2:], "profile": profile}
    for name, lines in blocks.items():
        begin, end = DOC_BLOCK % ("BEGIN", name), DOC_BLOCK % ("END", name)
        if begin not in text or end not in text:
            note("docs/performance.md has no %s block markers; that block was not updated" % name)
            continue
        while lines and not lines[-1].strip():
            lines = lines[:-1]
        pre, rest = text.split(begin, 1)
        post = rest.split(end, 1)[1]
        text = pre + begin + "\n" + "\n".join(lines).strip("\n") + "\n" + end + post
    with open(DOC, "w") as f:
        f.write(text)
    log("updated %s" % DOC)


# ---- main ------------------------------------------------------------------------------------


def on_signal(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    global TMP, PINNING, MACHINE
    for path, what in ((RELAY_NODE, "relay-node"), (RELAY_BENCH, "relay-bench")):
        if not os.access(path, os.X_OK):
            sys.exit("bench: no %s at %s (run `make bench`)" % (what, path))
    unknown = [x for x in SECTIONS if x not in ALL_SECTIONS]
    if unknown:
        sys.exit("bench: unknown BENCH_SECTIONS %s (known: %s)" % (" ".join(unknown), " ".join(ALL_SECTIONS)))
    peers_needed = any(x in SECTIONS for x in ("rt", "connect", "idle"))
    if not peers_needed:
        PEERS[:] = ["relay"]
    if "echo" in PEERS and not os.access(LWS_ECHO, os.X_OK):
        sys.exit("bench: no lws-echo at %s (run `make bench`)" % LWS_ECHO)
    if "relay" not in PEERS:
        sys.exit("bench: BENCH_PEERS must include relay")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it
    per_proc = IDLE // max(1, IDLE_PROCS) + 100
    if any(x in SECTIONS for x in ("idle", "alloc", "connect")) and hard != resource.RLIM_INFINITY and (
            hard < IDLE + 200 or hard < per_proc or hard < CONNECT_N + 100):
        sys.exit("bench: RLIMIT_NOFILE %d is too low for %d idle users (the server holds all of them)" % (hard, IDLE))

    TMP = tempfile.mkdtemp(prefix="relay-bench.")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)
    PINNING = False
    ok = False
    try:
        MACHINE = machine()
        can_pin = MACHINE["nproc"] >= 2 and shutil.which("taskset") is not None
        if PIN == "1" and not can_pin:
            sys.exit("bench: BENCH_PIN=1 needs 2 CPUs and taskset")
        PINNING = can_pin and PIN != "0"
        pin_note = ("Pinned runs: `taskset -c 0` for servers, `taskset -c 1` for the load generator and the"
                    " idle-user clients." if PINNING else
                    "No pinned runs (%s)." % ("BENCH_PIN=0" if PIN == "0" else "fewer than 2 CPUs or no taskset"))
        node_ver, ws_ver = prepare_node()
        profile = perf_works() if any(x in SECTIONS for x in ("idle", "profile")) else False
        log("sections %s; peers %s; %d round(s) x %.1f s; conns %s; %d idle users; pinning %s; profile %s; cluster %s; tmp %s" % (
            " ".join(SECTIONS), " ".join(PEERS), ROUNDS, DURATION, CONNS, IDLE, PINNING, profile, CLUSTER, TMP))

        if "rt" in SECTIONS:
            log("== a: round trips, unpinned")
            section_roundtrips(False)
            if PINNING:
                log("== a: round trips, pinned")
                section_roundtrips(True)
        if "connect" in SECTIONS:
            servers = start_servers(PEERS, "connect")
            try:
                log("== d: connect rate")
                section_connect(servers)
            finally:
                stop_servers(servers)
        if "idle" in SECTIONS:
            log("== b, c: idle users")
            section_idle(profile)
        if "alloc" in SECTIONS:
            log("== f: allocators")
            section_allocators()
        if "allocs" in SECTIONS:
            log("== e: allocations per message")
            try:
                section_allocs()
            except BenchError as e:
                note("allocation counts: %s" % str(e).splitlines()[0])
        if profile and "profile" in SECTIONS:
            log("== profile")
            try:
                section_profile()
            except BenchError as e:
                note("profile: %s" % str(e).splitlines()[0])
        if "hostile" in SECTIONS:
            log("== hostile: a misbehaving plugin next to other users")
            try:
                section_hostile()
            except BenchError as e:
                note("hostile: %s" % str(e).splitlines()[0])
        if CLUSTER and "cluster" in SECTIONS:
            log("== cluster")
            section_cluster()
        lines = only_sections(report(MACHINE, node_ver, ws_ver, pin_note))
        with open(REPORT, "w") as f:
            f.write("\n".join(lines) + "\n")
        log("wrote %s" % REPORT)
        if DOCS:
            update_docs(lines)
        ok = True
    except KeyboardInterrupt as e:
        log("interrupted (%s); stopping everything" % e)
    finally:
        PROCS.stop_all()
        if KEEP or not ok:
            log("kept %s" % TMP)
        else:
            shutil.rmtree(TMP, ignore_errors=True)
    log("done in %.0f s" % (time.monotonic() - T_START))
    return 0 if ok else 1


TMP = None
PINNING = False
MACHINE = {}

if __name__ == "__main__":
    sys.exit(main())
