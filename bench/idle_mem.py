#!/usr/bin/python3
"""Idle bytes per user only (bench.py's idle_memory, without the round trips around it).

    ulimit -n 20000; /usr/bin/python3 bench/idle_mem.py [runs] [session|noauto ...]

For each run and set-up: a fresh node (build/relay-node, or RELAY_NODE_BIN), the 100 active
users warmed up, then BENCH_IDLE (15,000) idle users from BENCH_IDLE_PROCS client processes;
prints (VmRSS after - VmRSS before) / users per line and the median per set-up at the end. A
quick tool for working on memory; `make bench` (section idle) is the figure of record.
"""
import os
import resource
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

CONFIGS = {"session": bench.CONFIG_SESSION, "noauto": bench.CONFIG_NOAUTO}


def one(kind):
    s = bench.Server("relay", "idlemem-" + kind, config=CONFIGS[kind]).start()
    idle = None
    try:
        bench.warm(s)
        idle, rec = bench.idle_memory(s, bench.IDLE, "idle-", "idle_mem", config=kind)
        return rec.get("bytes_per_user")
    finally:
        if idle:
            idle.close()
        s.stop()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    kinds = sys.argv[2:] or ["session", "noauto"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < bench.IDLE + 200:
        sys.exit("idle_mem: RLIMIT_NOFILE %d is too low for %d idle users" % (hard, bench.IDLE))
    bench.TMP = tempfile.mkdtemp(prefix="relay-idlemem.")
    got = {k: [] for k in kinds}
    try:
        for r in range(runs):
            for k in kinds:  # interleaved, so drift of the machine hits both alike
                got[k].append(one(k))
                print("run %d %s: %s B/user" % (r + 1, k, got[k][-1]), flush=True)
    finally:
        bench.PROCS.stop_all()
        shutil.rmtree(bench.TMP, ignore_errors=True)
    for k in kinds:
        vals = [v for v in got[k] if v]
        print("%s: median %s B/user over %d runs %s" % (
            k, statistics.median(vals) if vals else None, len(vals), vals))


if __name__ == "__main__":
    main()
