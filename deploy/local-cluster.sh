#!/usr/bin/env bash
# Starts a local Relay cluster without containers: redis-server + N nodes + haproxy, all on
# loopback, from the Debian packages and build/relay-node. State (pids, ports, logs, generated
# haproxy.cfg) goes to a state directory; `stop` ends exactly the processes recorded there.
#
#   deploy/local-cluster.sh [start] [-n N] [--lb-port P] [--redis-port P] [--node-port P]
#                           [--state DIR] [--config FILE]
#   deploy/local-cluster.sh status [--state DIR]
#   deploy/local-cluster.sh stop   [--state DIR]
#
# Ports are free ones picked at start unless given (--node-port P gives nodes P, P+1, ...).
# Auth: RELAY_AUTH_MODE defaults to insecure here (connect with ?user_id=alice); set
# RELAY_AUTH_MODE=jwt RELAY_JWT_SECRET=... to run with tokens.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${RELAY_CLUSTER_DIR:-/tmp/relay-cluster}"
N=3
LB_PORT="" REDIS_PORT="" NODE_PORT=""
CONFIG="$ROOT/deploy/cluster.yaml"
NODE_BIN="${RELAY_NODE_BIN:-$ROOT/build/relay-node}"
CMD=start

die() { echo "local-cluster: $*" >&2; exit 1; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_status() { # port path -> status code or nothing
    local line
    line=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 \
             && head -1 <&3) 2>/dev/null) || return 0
    echo "$line" | awk '{print $2}'
}

wait_for() { # seconds description command...
    local t=$1; shift 2 # $2 names what we wait for (for the reader)
    local end=$((SECONDS + t))
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}

# pid file line: "<name> <pid> <exe>"; we only ever signal a recorded pid that still runs that
# program (its executable, or its command line for a script), never a recycled pid
alive_as() { # pid exe
    [ -d "/proc/$1" ] || return 1
    [ "$(readlink "/proc/$1/exe" 2>/dev/null)" = "$2" ] && return 0
    local cmd
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ "$cmd" == *"$2"* ]]
}

while [ $# -gt 0 ]; do
    case "$1" in
        start|stop|status) CMD=$1 ;;
        -n) N=$2; shift ;;
        --lb-port) LB_PORT=$2; shift ;;
        --redis-port) REDIS_PORT=$2; shift ;;
        --node-port) NODE_PORT=$2; shift ;;
        --state) STATE=$2; shift ;;
        --config) CONFIG=$2; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done

do_stop() {
    [ -f "$STATE/pids" ] || { echo "local-cluster: nothing recorded in $STATE"; return 0; }
    # nodes first (SIGTERM drains: leases released, clients closed with 1001), then haproxy, redis
    local order=(node haproxy redis) kind name pid exe
    for kind in "${order[@]}"; do
        local pids=()
        while read -r name pid exe; do
            case "$name" in "$kind"*) ;; *) continue ;; esac
            if alive_as "$pid" "$exe"; then kill -TERM "$pid" 2>/dev/null && pids+=("$pid:$exe"); fi
        done <"$STATE/pids"
        local end=$((SECONDS + 15)) p
        for p in "${pids[@]}"; do
            while alive_as "${p%%:*}" "${p#*:}" && [ $SECONDS -lt $end ]; do sleep 0.1; done
            if alive_as "${p%%:*}" "${p#*:}"; then
                echo "local-cluster: ${p%%:*} did not exit in time, killing" >&2
                kill -KILL "${p%%:*}" 2>/dev/null || true
            fi
        done
    done
    rm -f "$STATE/pids"
    echo "local-cluster: stopped (logs kept in $STATE)"
}

do_status() {
    [ -f "$STATE/pids" ] || { echo "local-cluster: not running ($STATE)"; return 1; }
    # shellcheck disable=SC1091
    . "$STATE/env"
    local name pid exe
    while read -r name pid exe; do
        if alive_as "$pid" "$exe"; then echo "$name pid $pid running"; else echo "$name pid $pid GONE"; fi
    done <"$STATE/pids"
    echo "lb: ws://127.0.0.1:$LB_PORT$WS_PATH   redis: redis-cli -p $REDIS_PORT"
    local i=1 p
    # shellcheck disable=SC2153 # NODE_PORTS comes from $STATE/env
    for p in $NODE_PORTS; do
        echo "n$i: 127.0.0.1:$p readyz=$(http_status "$p" /readyz)"
        i=$((i + 1))
    done
}

do_start() {
    if [ -f "$STATE/pids" ]; then
        local name pid exe
        while read -r name pid exe; do
            alive_as "$pid" "$exe" && die "already running ($name pid $pid); '$0 stop --state $STATE' first"
        done <"$STATE/pids"
    fi
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    command -v haproxy >/dev/null || die "haproxy not found (apt-get install haproxy)"
    command -v python3 >/dev/null || die "python3 not found"
    [ -x "$NODE_BIN" ] || die "$NODE_BIN not built (make build/relay-node)"
    [ -f "$CONFIG" ] || die "no config $CONFIG"
    [[ "$N" =~ ^[1-9][0-9]?$ ]] || die "-n wants 1..99"
    mkdir -p "$STATE"
    : >"$STATE/pids"
    # any failure from here on (die, set -e) stops whatever was started
    # shellcheck disable=SC2154
    trap 'rc=$?; if [ $rc -ne 0 ]; then echo "local-cluster: start failed, stopping what was started (logs in $STATE)" >&2; do_stop; fi' EXIT

    REDIS_PORT=${REDIS_PORT:-$(free_port)}
    LB_PORT=${LB_PORT:-$(free_port)}
    STATS_PORT=$(free_port)
    local ports=() i
    for ((i = 0; i < N; i++)); do
        if [ -n "$NODE_PORT" ]; then ports+=($((NODE_PORT + i))); else ports+=("$(free_port)"); fi
    done
    for p in "$REDIS_PORT" "$LB_PORT" "${ports[@]}"; do
        port_open "$p" && die "port $p is in use"
    done

    local redis_bin haproxy_bin node_exe
    redis_bin=$(readlink -f "$(command -v redis-server)")
    haproxy_bin=$(readlink -f "$(command -v haproxy)")
    node_exe=$(readlink -f "$NODE_BIN")

    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$STATE" --daemonize no >"$STATE/redis.log" 2>&1 &
    echo "redis $! $redis_bin" >>"$STATE/pids"
    wait_for 10 redis port_open "$REDIS_PORT" || die "redis-server did not start (see $STATE/redis.log)"

    export RELAY_AUTH_MODE="${RELAY_AUTH_MODE:-insecure}"
    for ((i = 0; i < N; i++)); do
        local id="n$((i + 1))"
        "$NODE_BIN" -c "$CONFIG" --listen "127.0.0.1:${ports[$i]}" --node-id "$id" \
            --redis "redis://127.0.0.1:$REDIS_PORT" >"$STATE/$id.log" 2>&1 &
        echo "node-$id $! $node_exe" >>"$STATE/pids"
    done
    local npids=() name pid exe
    while read -r name pid exe; do
        case "$name" in node-*) npids+=("$pid") ;; esac
    done <"$STATE/pids"
    for ((i = 0; i < N; i++)); do
        # until ready, or until the process is gone (no point waiting for a dead node)
        if ! wait_for 15 "n$((i + 1))" eval '[ ! -d /proc/'"${npids[$i]}"' ] || [ "$(http_status '"${ports[$i]}"' /readyz)" = 200 ]' ||
            [ ! -d "/proc/${npids[$i]}" ]; then
            die "node n$((i + 1)) not ready on port ${ports[$i]} (see $STATE/n$((i + 1)).log)"
        fi
    done

    # haproxy.cfg from the template: our binds, no docker resolver, one server per node
    {
        local skip=0 line
        while IFS= read -r line; do
            case "$line" in
                "# BEGIN DOCKER"|*"    # BEGIN SERVERS") skip=1
                    if [[ "$line" == *SERVERS* ]]; then
                        for ((i = 0; i < N; i++)); do
                            echo "    server n$((i + 1)) 127.0.0.1:${ports[$i]} check"
                        done
                    fi
                    continue ;;
                "# END DOCKER"|*"    # END SERVERS") skip=0; continue ;;
                *"bind "*"# @LB_BIND@"*) echo "    bind 127.0.0.1:$LB_PORT"; continue ;;
                *"bind "*"# @STATS_BIND@"*) echo "    bind 127.0.0.1:$STATS_PORT"; continue ;;
            esac
            [ $skip = 1 ] || echo "${line//init-addr last,libc,none/}"
        done <"$ROOT/deploy/haproxy.cfg"
    } >"$STATE/haproxy.cfg"
    haproxy -c -q -f "$STATE/haproxy.cfg" >"$STATE/haproxy.log" 2>&1 || die "bad $STATE/haproxy.cfg (see $STATE/haproxy.log)"
    haproxy -db -f "$STATE/haproxy.cfg" >>"$STATE/haproxy.log" 2>&1 &
    echo "haproxy $! $haproxy_bin" >>"$STATE/pids"
    wait_for 10 haproxy eval '[ "$(http_status '"$LB_PORT"' /readyz)" = 200 ]' ||
        die "haproxy not serving on $LB_PORT (see $STATE/haproxy.log)"
    trap - EXIT

    cat >"$STATE/env" <<EOT
REDIS_PORT=$REDIS_PORT
LB_PORT=$LB_PORT
STATS_PORT=$STATS_PORT
NODE_PORTS="${ports[*]}"
WS_PATH=/ws
EOT
    echo "local-cluster: $N nodes up (state in $STATE, auth $RELAY_AUTH_MODE)"
    echo "  load balancer  ws://127.0.0.1:$LB_PORT/ws?user_id=alice    stats http://127.0.0.1:$STATS_PORT/"
    for ((i = 0; i < N; i++)); do
        echo "  n$((i + 1))             ws://127.0.0.1:${ports[$i]}/ws   log $STATE/n$((i + 1)).log"
    done
    echo "  redis          redis-cli -p $REDIS_PORT"
    echo "  stop with      $0 stop --state $STATE"
}

case "$CMD" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
esac
