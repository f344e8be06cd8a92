#!/usr/bin/env bash
# make fresh-test: the committed tree (git archive HEAD) in a bare Debian 12 container with only
# `make` added runs `make test`, as on a new machine: what `deps` does not install shows here.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=$ROOT/build/compose
mkdir -p "$WORK"
log() { echo "fresh-test: $*"; }
. tests/compose/podman-setup.sh
git archive --format=tar -o "$WORK/tree.tar" HEAD
log "make test of $(git rev-parse --short HEAD) in a bare debian:12"
podman run --rm -v "$WORK/tree.tar":/tree.tar:ro docker.io/library/debian:12 bash -c '
    set -e
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make >/dev/null
    mkdir /relay && tar -xf /tree.tar -C /relay && cd /relay && make test' >"$WORK/fresh.log" 2>&1 \
    && rc=0 || rc=$?
grep -E "^(integration:|installing|FAIL|\[  FAILED)" "$WORK/fresh.log" || true
[ "$rc" = 0 ] || tail -40 "$WORK/fresh.log"
log "$( [ "$rc" = 0 ] && echo PASS || echo "FAIL (status $rc)")"
exit "$rc"
