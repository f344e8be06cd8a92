#!/usr/bin/env bash
# Relay benchmark entry point (`make bench` builds, then runs this): bench/bench.py with Debian's
# python3 (standard library only). It starts and stops everything itself and writes
# bench/REPORT.md; its docstring lists the knobs (BENCH_QUICK=1 for a ~2-minute smoke run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Servers hold one fd per connection (15,000 idle users by default): take the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec /usr/bin/python3 "$ROOT/bench/bench.py" "$@"
