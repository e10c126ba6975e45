#!/usr/bin/env bash
# Runs `flashsale compare` with the Redis + Lua peer.
#
#   bash benches/peers/redis.sh [compare flags...]
#   e.g. bash benches/peers/redis.sh --scenario sneaker-drop --redis-connections 8
#
# Installs Debian's redis-server if it is missing (apt-get; needs root or sudo), starts a
# throwaway server bound to 127.0.0.1 on a free port with persistence off, runs the
# comparison against it, and stops the server when done (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v redis-server >/dev/null; then
    echo "redis.sh: installing redis-server from Debian packages" >&2
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    # Installing must not start a system-wide server on 6379 where services can start.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq redis-server >/dev/null
fi

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

dir="$(mktemp -d)"
pid=""
stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap stop EXIT INT TERM

started=""
for _ in $(seq 1 20); do
    port=$(( 20000 + RANDOM % 20000 ))
    port_is_free "$port" || continue
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --protected-mode yes --dir "$dir" --logfile "$dir/redis.log" &
    pid=$!
    for _ in $(seq 1 50); do
        if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            started=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$started" ] && break
    stop
    pid=""
    dir="$(mktemp -d)"
done
if [ -z "$started" ]; then
    echo "redis.sh: could not start redis-server on a free port" >&2
    exit 1
fi
echo "redis.sh: redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port" >&2

cargo run --release --features redis-peer -- compare --redis "127.0.0.1:$port" "$@"
