#!/usr/bin/env bash
# make compose-test: builds the images with podman from deploy/Dockerfile (and stand-ins for
# redis:7 and haproxy:2.6 from Debian's packages: no registry is reachable), brings
# docker-compose.yml up with podman-compose, drives it from outside (drive.py), tears it down.
# Recipe and traps: the project's notes on containers (podman on these machines).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$ROOT/build/compose
PROJECT=relaytest
mkdir -p "$WORK"
log() { echo "compose-test: $*"; }

. tests/compose/podman-setup.sh
log "building the stand-ins for redis:7 and haproxy:2.6"
podman build -q -f tests/compose/redis.Dockerfile -t docker.io/library/redis:7 tests/compose >/dev/null
podman build -q -f tests/compose/haproxy.Dockerfile -t docker.io/library/haproxy:2.6 tests/compose >/dev/null

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export RELAY_LB_PORT=${RELAY_LB_PORT:-$(free_port)} RELAY_STATS_PORT=${RELAY_STATS_PORT:-$(free_port)}
compose() { podman-compose -p "$PROJECT" -f docker-compose.yml "$@"; }
down() { compose down -t 5 >"$WORK/down.log" 2>&1 || true; }
trap 'rc=$?; if [ $rc != 0 ]; then for s in node1 node2 node3 haproxy redis; do
        echo "--- ${PROJECT}_${s}_1 (last lines)"; podman logs --tail 15 "${PROJECT}_${s}_1" 2>&1 || true; done; fi
      down; exit $rc' EXIT
down
log "building the node image and bringing the cluster up (load balancer on 127.0.0.1:$RELAY_LB_PORT)"
t0=$(date +%s)
compose build >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
compose up -d >"$WORK/up.log" 2>&1 || { tail -30 "$WORK/up.log"; exit 1; }
log "up after $(( $(date +%s) - t0 )) s"
/usr/bin/python3 tests/compose/drive.py "$RELAY_LB_PORT" "$PROJECT"
