#!/usr/bin/env bash
# Runs `flashsale compare` with the Redis + Lua peer.
#
#   bash benches/peers/redis.sh [compare flags...]
#   e.g. bash benches/peers/redis.sh --scenario sneaker-drop --redis-connections 8
#
#   bash benches/peers/redis.sh --sweep [compare flags...]
#   e.g. bash benches/peers/redis.sh --sweep --file benches/peers/all-confirmed.toml
#
# `--sweep` gives Redis its best chance: the scenario through Redis at every connection
# count in REDIS_CONNECTIONS (default "1 2 4 8 16") and pipeline depth in REDIS_PIPELINES
# (default "16 64 256 1024"), one row each with the server's own time per script call,
# and the engine alone ENGINE_RUNS times (default 3) both before and after the sweep at
# each ring capacity in ENGINE_RINGS (default "1024 4096": the scenario's default, and as
# many intents in flight as the 4 x 1,024 of Redis's usual best row), all against the same
# server in one run. It ends with the best Redis row and, for each ring capacity, the
# engine's rate over it run by run and by the median. (One engine run of a few hundred
# thousand intents lasts tens of milliseconds, so a single descheduling of its producer or
# shard moves it by a third; hence several.)
#
#   NATS=1 bash benches/peers/redis.sh [compare flags...]
#
# `NATS=1` also runs the cluster peer in the same run: a 3-server NATS JetStream cluster
# on 127.0.0.1 (`scripts/nats.sh`, which installs the pinned server), the binary built with
# the `cluster` feature as well, `--nats` pointed at it (not with `--sweep`).
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
nats_dir=""
stop() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
stop_all() {
    stop
    if [ -n "$nats_dir" ]; then
        bash scripts/nats.sh stop "$nats_dir" || true
        rm -rf "$nats_dir"
    fi
}
trap stop_all EXIT INT TERM

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

if [ "${1:-}" != "--sweep" ]; then
    features=redis-peer
    if [ -n "${NATS:-}" ]; then
        nats_dir="$(mktemp -d)"
        nats_urls=$(bash scripts/nats.sh start "$nats_dir")
        features=redis-peer,cluster
        set -- --nats "$nats_urls" "$@"
    fi
    cargo run --release --features "$features" -- compare --redis "127.0.0.1:$port" "$@"
    exit 0
elif [ -n "${NATS:-}" ]; then
    echo "redis.sh: NATS=1 runs the cluster peer once, not in a --sweep" >&2
    exit 2
fi
shift
cargo build --release --features redis-peer
flashsale=target/release/flashsale
# The rate column of a peer's row: the first field after its label that ends in M.
rate_of() { grep -E "^$1" | grep -oE '[0-9]+\.[0-9]+M' | head -1 | tr -d M; }
engine_rings=(${ENGINE_RINGS:-1024 4096})
# Each run's rate, as "RING RATE" lines.
engine_rates=()
engines() {
    local ring rate
    for _ in $(seq 1 "${ENGINE_RUNS:-3}"); do
        for ring in "${engine_rings[@]}"; do
            rate=$("$flashsale" compare --quiet --skip mutex --skip crossbeam \
                --ring-capacity "$ring" "$@" | rate_of "flashsale engine")
            echo "engine, ring capacity $ring: ${rate}M intents/s" >&2
            engine_rates+=("$ring $rate")
        done
    done
}
engines "$@"
best=""
best_row=""
for connections in ${REDIS_CONNECTIONS:-1 2 4 8 16}; do
    for pipeline in ${REDIS_PIPELINES:-16 64 256 1024}; do
        row=$("$flashsale" compare --quiet --skip engine --skip mutex --skip crossbeam \
            --redis "127.0.0.1:$port" --redis-connections "$connections" \
            --redis-pipeline "$pipeline" "$@" | grep -E '^Redis')
        rate=$(echo "$row" | rate_of Redis)
        echo "redis: $connections connections, pipeline $pipeline: ${rate}M intents/s ($(echo "$row" | grep -oE 'server [0-9.]+ µs/call'))" >&2
        if [ -z "$best" ] || awk -v a="$rate" -v b="$best" 'BEGIN { exit !(a > b) }'; then
            best="$rate"
            best_row="$connections connections, pipeline $pipeline"
        fi
    done
done
engines "$@"
# The server's ceiling for any Lua script on this machine, from Redis's own C client
# (50 connections, pipeline 64): a script that does nothing, and one that only reads four
# keys and answers sold out. No client and no script with the sale's rules beats these.
if command -v redis-benchmark >/dev/null; then
    for script in "return 1" "local v = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4]) return {3, 0}"; do
        keys=0
        [ "$script" = "return 1" ] || keys="4 ceiling:__rand_int__ ceiling:b ceiling:c ceiling:d"
        # shellcheck disable=SC2086
        rps=$(redis-benchmark -h 127.0.0.1 -p "$port" -c 50 -P 64 -n 500000 -q eval "$script" $keys \
            | tr '\r' '\n' | grep -oE '[0-9.]+ requests per second' | tail -1)
        echo "ceiling (redis-benchmark, 50 connections, pipeline 64): EVAL \"$script\": $rps"
    done
fi
echo "best Redis row: $best_row, ${best}M intents/s"
for ring in "${engine_rings[@]}"; do
    rates=$(printf '%s\n' "${engine_rates[@]}" | awk -v r="$ring" '$1 == r { print $2 }')
    for rate in $rates; do
        awk -v e="$rate" -v r="$best" -v g="$ring" \
            'BEGIN { printf "engine, ring capacity %d, %.3fM intents/s: %.1fx the best Redis row\n", g, e, e / r }'
    done
    median=$(echo "$rates" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    awk -v e="$median" -v r="$best" -v n="$(echo "$rates" | wc -l)" -v g="$ring" \
        'BEGIN { printf "engine, ring capacity %d, median of %d runs, %.3fM intents/s: %.1fx the best Redis row\n", g, n, e, e / r }'
done
