"""/metrics: the Prometheus text format (promtool when installed, and a parser here), base units,
build and process info, and Redis gauges that tell a down Redis from a fast one."""
import asyncio
import json
import os
import re
import shutil
import subprocess
import time

import harness
from harness import Config, Node, check, http_get

import test_cluster

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? (\S+)$')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_exposition(text):
    """Checks text against the Prometheus text format 0.0.4 and returns {name: (type, [(labels,
    value)])}: every sample follows its family's HELP and TYPE, a family appears once, values are
    floats (NaN, +Inf, -Inf allowed), counters end in _total, the text ends with a newline. A
    histogram's _bucket, _sum and _count samples are kept under its family with the suffix
    prefixed to their labels ('_bucket{le="0.5"}', '_sum', '_count')."""
    check(text.endswith("\n"), "the exposition does not end with a newline")
    fams, current, seen_help = {}, None, set()
    for ln in text.split("\n")[:-1]:
        check(ln.strip() != "" or ln == "", f"blank-ish line {ln!r}")
        if ln == "":
            continue
        if ln.startswith("# HELP "):
            name = ln.split(" ", 3)[2]
            check(NAME.match(name), f"bad metric name in {ln!r}")
            check(name not in seen_help, f"HELP for {name} twice")
            seen_help.add(name)
            current = name
            continue
        if ln.startswith("# TYPE "):
            parts = ln.split(" ")
            check(len(parts) == 4 and parts[3] in TYPES, f"bad TYPE line {ln!r}")
            name = parts[2]
            check(name == current, f"TYPE {name} does not follow its HELP (last HELP {current})")
            check(name not in fams, f"family {name} appears twice")
            fams[name] = (parts[3], [])
            continue
        check(not ln.startswith("#"), f"unexpected comment {ln!r}")
        m = SAMPLE.match(ln)
        check(m is not None, f"not a sample line: {ln!r}")
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        suffix = ""
        if current in fams and fams[current][0] == "histogram":
            for sfx in ("_bucket", "_sum", "_count"):
                if name == current + sfx:
                    suffix = sfx
            check(suffix, f"sample {name} in histogram {current} is not _bucket, _sum or _count")
            check((suffix == "_bucket") == ("le=" in labels), f"le label on {name}{labels}")
        else:
            check(name == current and name in fams, f"sample {name} outside its family ({current})")
        try:
            float(value)
        except ValueError:
            raise harness.TestFailure(f"value {value!r} of {name} is not a float")
        # a histogram's samples are kept as (suffix + labels, value): '_bucket{le="0.001"}', '_sum'
        fams[current][1].append((suffix + labels, value))
    for name, (typ, samples) in fams.items():
        check(samples, f"family {name} has no samples")
        if typ == "counter":
            check(name.endswith("_total"), f"counter {name} does not end in _total")
        check(not re.search(r"_(micro|milli|nano)seconds|_(kilo|mega)bytes|_ms$|_us$", name),
              f"{name} is not in base units")
    return fams


def promtool(text):
    """`promtool check metrics` when promtool is installed (Debian's prometheus package)."""
    tool = shutil.which("promtool")
    if not tool:
        test_cluster.note("promtool not installed: the exposition was checked by the parser only")
        return
    p = subprocess.run([tool, "check", "metrics"], input=text.encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=20)
    check(p.returncode == 0, f"promtool check metrics:\n{p.stdout.decode()}")


def value(fams, name, labels=""):
    check(name in fams, f"no {name} in /metrics")
    for lb, v in fams[name][1]:
        if lb == labels:
            return v
    raise harness.TestFailure(f"no {name}{labels} sample: {fams[name][1]}")


def histogram(fams, name):
    """A histogram family's buckets [(le, cumulative count)], sum and count, checked: the buckets
    are cumulative (never decreasing, le increasing), +Inf is last and equals _count."""
    check(name in fams and fams[name][0] == "histogram", f"{name} missing or not a histogram")
    buckets, total, count = [], None, None
    for lb, v in fams[name][1]:
        if lb.startswith("_bucket"):
            le = re.fullmatch(r'_bucket\{le="([^"]+)"\}', lb)
            check(le is not None, f"{name} bucket labels {lb}")
            buckets.append((float(le.group(1)), float(v)))
        elif lb == "_sum":
            total = float(v)
        elif lb == "_count":
            count = float(v)
    check(total is not None and count is not None, f"{name} without _sum or _count")
    check(len(buckets) >= 2 and buckets[-1][0] == float("inf"), f"{name}: +Inf is not the last bucket")
    for (le0, c0), (le1, c1) in zip(buckets, buckets[1:]):
        check(le0 < le1 and c0 <= c1, f"{name} buckets not cumulative: le {le0} {c0}, le {le1} {c1}")
    check(buckets[-1][1] == count, f"{name}: +Inf bucket {buckets[-1][1]} != _count {count}")
    check(total >= 0, f"{name}_sum {total}")
    return {"buckets": buckets, "sum": total, "count": count}


async def test_metrics_routing_histogram():
    with Node(Config()) as n:
        fams = parse_exposition(n.metrics())
        h = histogram(fams, "relay_routing_seconds")
        check(h["count"] == 0 and h["sum"] == 0, f"relay_routing_seconds before any message: {h}")
        ws, _ = await harness.connect_welcomed(n, "alice")
        for i in range(25):
            await harness.send_json(ws, {"type": "echo_hist", "request_id": i})
            r = await harness.recv_json(ws)
            check(r.get("payload", {}).get("request_id") == i, f"echo {i}: {r}")
        await harness.send_json(ws, {"type": "nosuch_plugin_topic"})  # answered, not routed
        await harness.recv_json(ws)
        text = n.metrics()
        fams = parse_exposition(text)
        promtool(text)
        routed = float(value(fams, "relay_messages_routed_total"))
        h = histogram(fams, "relay_routing_seconds")
        check(routed >= 25, f"relay_messages_routed_total {routed} after 25 echoes")
        check(h["count"] == routed, f"relay_routing_seconds_count {h['count']} != routed {routed}")
        check(0 < h["sum"] < routed, f"relay_routing_seconds_sum {h['sum']} for {routed} messages")
        # an in-process hand-over takes well under a second
        under_1s = [c for le, c in h["buckets"] if le == 1.0]
        check(under_1s == [routed], f"routing slower than 1 s: {h['buckets']}")
        await ws.close()


async def test_metrics_standalone_format_build_and_process():
    with Node(Config()) as n:
        ws, _ = await harness.connect_welcomed(n, "alice")
        text = n.metrics()
        fams = parse_exposition(text)
        promtool(text)
        check(fams["relay_build_info"][0] == "gauge", "relay_build_info is not a gauge")
        out = subprocess.run([os.path.abspath(harness.NODE_BIN), "--version"], stdout=subprocess.PIPE)
        version = out.stdout.decode().split()[-1]
        check(value(fams, "relay_build_info", '{version="%s"}' % version) == "1",
              f"relay_build_info for {version}: {fams['relay_build_info']}")
        for name, typ in (("process_resident_memory_bytes", "gauge"), ("process_cpu_seconds_total", "counter"),
                          ("process_open_fds", "gauge"), ("process_start_time_seconds", "gauge")):
            check(name in fams and fams[name][0] == typ, f"{name} missing or not a {typ}")
        rss = float(value(fams, "process_resident_memory_bytes"))
        check(rss > 1 << 20, f"process_resident_memory_bytes {rss}")
        fds = float(value(fams, "process_open_fds"))
        check(fds >= 4, f"process_open_fds {fds} with a listener and a client open")
        start = float(value(fams, "process_start_time_seconds"))
        check(time.time() - 60 < start <= time.time() + 1,
              f"process_start_time_seconds {start}, now {time.time()}")
        # standalone: no Redis, so no Redis gauges at all (not a 0 that reads as fast)
        check(not any(k.startswith("relay_redis_rtt") or k in ("relay_redis_up", "relay_redis_heartbeat_seconds")
                      for k in fams),
              "standalone node shows Redis gauges: " + ", ".join(k for k in fams if "redis" in k))
        await ws.close()


async def test_metrics_redis_up_and_down():
    async with test_cluster.running_cluster(1) as cl:
        nd = cl.nodes[0]
        text = nd.metrics()
        fams = parse_exposition(text)
        promtool(text)
        check(value(fams, "relay_redis_up") == "1", "relay_redis_up is not 1 with Redis up")
        rtt = float(value(fams, "relay_redis_rtt_seconds"))
        check(rtt == rtt and 0 <= rtt < 1, f"relay_redis_rtt_seconds {rtt} with Redis up")
        check("relay_redis_rtt_microseconds" not in fams, "the old microseconds gauge is still there")
        hb = histogram(fams, "relay_redis_heartbeat_seconds")
        check(hb["count"] >= 1, f"relay_redis_heartbeat_seconds counted no heartbeat: {hb}")
        cl.redis.kill()
        test_cluster.wait_ready(nd, timeout=cl.node_ttl + 1.5, want=503)
        fams = parse_exposition(nd.metrics())
        check(value(fams, "relay_redis_up") == "0", "relay_redis_up is not 0 with Redis down")
        rtt = value(fams, "relay_redis_rtt_seconds")
        check(rtt == "NaN", f"relay_redis_rtt_seconds {rtt!r} while Redis is down (want NaN)")
        cl.restart_redis()
        # /readyz may answer 200 just before the node finds that Redis came back empty; it then
        # holds newcomers (and relay_redis_up with them) for the recovery window, max(lease_ttl,
        # node_ttl): 1 must come within that window after Redis is back
        deadline = time.monotonic() + max(cl.node_ttl, cl.lease_ttl) + 3
        while True:
            fams = parse_exposition(nd.metrics())
            if value(fams, "relay_redis_up") == "1" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        check(value(fams, "relay_redis_up") == "1", "relay_redis_up is not 1 after Redis came back")


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROM_NAME = re.compile(r"\b(?:relay|process)_[a-zA-Z0-9_:]*")


def _dashboard_exprs():
    with open(os.path.join(ROOT, "deploy/grafana-relay.json")) as f:
        dash = json.load(f)  # parses, or the test fails here
    exprs = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            exprs.append((p.get("title"), t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if isinstance(v.get("query"), dict):
            exprs.append(("variable " + v["name"], v["query"]["query"]))
    check(len(exprs) >= 10, f"deploy/grafana-relay.json has {len(exprs)} queries")
    return dash, exprs


def test_prometheus_yml_scrapes_the_compose_nodes():
    """deploy/prometheus.yml scrapes node1..node3 of docker-compose.yml on their RELAY_LISTEN
    port (promtool check config when installed)."""
    path = os.path.join(ROOT, "deploy/prometheus.yml")
    with open(path) as f:
        text = f.read()
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        compose = f.read()
    port = re.search(r"^\s+RELAY_LISTEN:\s*\"?[^\s\":]*:(\d+)", compose, re.M).group(1)
    nodes = sorted(set(re.findall(r"^  (node\d+):", compose, re.M)))
    check(nodes == ["node1", "node2", "node3"], f"compose nodes {nodes}")
    targets = re.findall(r'"([^"]+:\d+)"', text)
    check(sorted(targets) == [f"{n}:{port}" for n in nodes], f"prometheus.yml targets {targets}")
    check(re.search(r"^\s+metrics_path:\s*/metrics\s*$", text, re.M), "metrics_path is not /metrics")
    tool = shutil.which("promtool")
    if tool:
        p = subprocess.run([tool, "check", "config", "--syntax-only", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=20)
        check(p.returncode == 0, f"promtool check config:\n{p.stdout.decode()}")


async def test_grafana_dashboard_uses_live_metric_names():
    """deploy/grafana-relay.json parses, and every metric its queries name is in a live cluster
    node's /metrics (a histogram's _bucket/_sum/_count count as its family); with promtool, every
    query is valid PromQL (as a recording rule, Grafana's variables filled in)."""
    dash, exprs = _dashboard_exprs()
    async with test_cluster.running_cluster(1) as cl:
        fams = parse_exposition(cl.nodes[0].metrics())
    used = set()
    for title, e in exprs:
        for name in PROM_NAME.findall(e):
            fam = name
            for sfx in ("_bucket", "_sum", "_count"):
                base = name[:-len(sfx)]
                if name.endswith(sfx) and fams.get(base, ("",))[0] == "histogram":
                    fam = base
            check(fam in fams, f"panel {title!r} uses {name}, not in a live node's /metrics")
            used.add(fam)
    for want in ("relay_connections", "relay_messages_routed_total", "relay_errors_total",
                 "relay_routing_seconds", "relay_redis_up", "relay_plugin_kills_total",
                 "relay_plugin_refusals_total", "process_resident_memory_bytes", "process_cpu_seconds_total"):
        check(want in used, f"the dashboard has no panel on {want}")
    tool = shutil.which("promtool")
    if not tool:
        test_cluster.note("promtool not installed: dashboard queries not checked as PromQL")
        return
    d = harness.temp_dir()
    rules = os.path.join(d, "rules.yml")
    with open(rules, "w") as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, (_, e) in enumerate(exprs):
            if e.startswith("label_values("):
                continue  # a Grafana function, not PromQL
            e = e.replace("$__rate_interval", "5m").replace("$instance", ".*")
            f.write(f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n")
    p = subprocess.run([tool, "check", "rules", rules], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=20)
    check(p.returncode == 0, f"promtool check rules (dashboard queries):\n{p.stdout.decode()}")
