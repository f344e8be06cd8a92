# Sourced by tests/compose/*.sh (from the repository root, with WORK and log set): podman and
# a debian:12 base image made from the Debian mirror, as the notes on containers describe.
pkgs="podman podman-compose mmdebstrap uidmap slirp4netns fuse-overlayfs runc python3-websockets"
missing=""
for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    [ "$(id -u)" = 0 ] || { log "not root: cannot install$missing"; exit 1; }
    log "installing:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# podman's default rlimits ask for more open files than the hard limit here, and crun refuses
# the hybrid cgroups: runc with explicit limits, in a config of our own (the system's is left).
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

if ! podman image exists docker.io/library/debian:12; then
    log "making the debian:12 base image from the Debian mirror (mmdebstrap)"
    mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$WORK/bookworm.tar" \
        http://deb.debian.org/debian
    podman import -q "$WORK/bookworm.tar" docker.io/library/debian:12 >/dev/null
    rm -f "$WORK/bookworm.tar"
fi
podman tag docker.io/library/debian:12 docker.io/library/debian:12-slim
