#!/usr/bin/python3
"""Runs the integration suite: /usr/bin/python3 tests/integration/run.py --node build/relay-node [-k pattern]

Discovers tests/integration/test_*.py and, in each, the functions named test_* (in file order;
async or plain). Each test runs with a timeout (`fn.timeout` seconds, default --timeout). Prints
one line per test, the failures with the logs of the nodes the test started, and a summary; exits
1 if anything failed, 2 if the node binary is missing.
"""
import argparse
import asyncio
import fnmatch
import importlib.util
import inspect
import os
import shutil
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402


class TestTimeout(Exception):
    pass


def discover(names_only=False):
    tests = []
    for fn in sorted(os.listdir(HERE)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        spec = importlib.util.spec_from_file_location(modname, os.path.join(HERE, fn))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        funcs = [(n, f) for n, f in vars(mod).items()
                 if n.startswith("test_") and callable(f) and getattr(f, "__module__", None) == modname]
        funcs.sort(key=lambda nf: nf[1].__code__.co_firstlineno)
        for n, f in funcs:
            tests.append((f"{modname}::{n}", f))
    return tests


def matches(name, patterns):
    if not patterns:
        return True
    for p in patterns:
        if any(c in p for c in "*?["):
            if fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.split("::")[1], p):
                return True
        elif p in name:
            return True
    return False


def run_one(fn, timeout):
    if inspect.iscoroutinefunction(fn):
        async def guarded():
            try:
                return await asyncio.wait_for(fn(), timeout)
            except asyncio.TimeoutError:
                raise TestTimeout(f"timed out after {timeout}s")
        asyncio.run(guarded())
    else:
        def on_alarm(signum, frame):
            raise TestTimeout(f"timed out after {timeout}s")
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def cleanup(failed):
    logs = []
    for n in list(harness.LIVE_NODES):
        try:
            n.stop(timeout=3)
        except Exception:
            pass
    if failed:
        logs = [n.log_tail() for n in harness.STARTED_NODES]
    harness.LIVE_NODES.clear()
    harness.STARTED_NODES.clear()
    if not failed and not harness.KEEP_TEMP:
        for d in harness.TEMP_DIRS:
            shutil.rmtree(d, ignore_errors=True)
    kept = list(harness.TEMP_DIRS) if (failed or harness.KEEP_TEMP) else []
    harness.TEMP_DIRS.clear()
    return logs, kept


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--node", default="build/relay-node", help="path to the relay-node binary")
    ap.add_argument("-k", action="append", default=[], metavar="PATTERN",
                    help="run tests whose module::name contains PATTERN (or matches a glob); repeatable")
    ap.add_argument("--timeout", type=float, default=30.0, help="default per-test timeout (s)")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    ap.add_argument("-x", "--exitfirst", action="store_true", help="stop at the first failure")
    ap.add_argument("--keep", action="store_true", help="keep temp dirs (configs, node logs)")
    args = ap.parse_args()

    tests = [(n, f) for n, f in discover() if matches(n, args.k)]
    if args.list:
        for n, _ in tests:
            print(n)
        return 0
    node = os.path.abspath(args.node)
    if not (os.path.isfile(node) and os.access(node, os.X_OK)):
        print(f"integration: relay-node binary not found or not executable: {node}\n"
              f"integration: build it first (make {args.node}) or pass --node PATH", file=sys.stderr)
        return 2
    harness.NODE_BIN = node
    harness.KEEP_TEMP = args.keep
    if not tests:
        print("integration: no test matched", file=sys.stderr)
        return 1

    print(f"integration: {len(tests)} tests against {node}", flush=True)
    t_all = time.monotonic()
    failures = []
    passed = 0
    for name, fn in tests:
        timeout = getattr(fn, "timeout", args.timeout)
        t0 = time.monotonic()
        err = None
        try:
            run_one(fn, timeout)
        except KeyboardInterrupt:
            cleanup(True)
            raise
        except BaseException as e:  # noqa: BLE001 - a test may raise anything
            if isinstance(e, harness.TestFailure) or isinstance(e, (AssertionError, TestTimeout)):
                err = f"{type(e).__name__}: {e}"
                tb = traceback.extract_tb(e.__traceback__)
                where = [f for f in tb if os.path.basename(f.filename).startswith("test_")]
                if where:
                    err = f"{os.path.basename(where[-1].filename)}:{where[-1].lineno}: " + err
            else:
                err = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        dt = time.monotonic() - t0
        logs, kept = cleanup(err is not None)
        if err is None:
            passed += 1
            print(f"PASS  {name}  ({dt:.2f}s)", flush=True)
        else:
            print(f"FAIL  {name}  ({dt:.2f}s)", flush=True)
            for line in err.rstrip().splitlines():
                print("      " + line)
            for l in logs:
                print("\n".join("      " + x for x in l.splitlines()))
            if kept:
                print("      temp dirs kept: " + " ".join(kept))
            failures.append(name)
            if args.exitfirst:
                break
        sys.stdout.flush()

    total = time.monotonic() - t_all
    print(f"\nintegration: {passed} passed, {len(failures)} failed, {len(tests)} total in {total:.1f}s")
    for n in failures:
        print(f"  FAILED {n}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
