#!/usr/bin/env bash
# HTTP load test: `flashsale serve` driven by wrk, with the journal on and off, and the
# HTTP-only baseline in the same run.
#
#   bash benches/http/load.sh
#   DURATION=5 CONNECTIONS=128 SERVER_THREADS=2 bash benches/http/load.sh
#
# Installs Debian's wrk and openssl if missing (apt-get; needs root or sudo), builds the binary,
# then runs five scenarios, each on a fresh server bound to 127.0.0.1 on a free port, for
# DURATION seconds (default 10), stopping the server after each (also on failure or
# Ctrl-C):
#   http-only  GET /healthz: the cost of HTTP and JSON alone, the baseline for the others.
#   selling    POST /sales/1/buy, stock for every request, in memory (--in-memory).
#   journaled  the same with the journal on (a data directory, each group commit synced).
#   sold-out   POST /sales/1/buy, 1,000 units, in memory: sold out at once; then the
#              sold-out gate answers 409 without queueing.
#   rs256      as selling, but each buyer identified by an RS256 token (`--auth jwt
#              --jwt-key`, the test key pair under tests/fixtures/jwt): 1,000 buyers'
#              tokens, signed here with openssl, taken in turn, so after its first use
#              each token is one the server remembers; buyers may buy without limit.
# With CLUSTER=1 (builds with the feature `cluster`), two more in the same run, through
# `flashsale serve --nats` (a gateway) in front of one `flashsale node` and a 3-server
# NATS JetStream cluster (scripts/nats.sh, R3 logs), all on this machine:
#   cluster-selling   as selling, each buy through the replicated log.
#   cluster-sold-out  as sold-out: after the sell-out the gateway's gate answers.
# For each it prints wrk's requests/s (and its ratio to http-only) and latency percentiles
# (the whole HTTP round trip) next to the server's own figure for the engine's part of
# each buy (submit to outcome, from GET /metrics), and the answers by status, then checks
# the run (see `check`): any failed check, or a wrk that cannot be installed, exits 1.
# Buyers are random among 10 million, so the per-buyer rate limit is set out of the way.
#
# wrk and the server share this machine's cores: with 2 vCPUs, wrk's thread, the runtime
# threads, the client pump and the shard thread oversubscribe them; the figures say so.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-1}"
SERVER_THREADS="${SERVER_THREADS:-1}"

bash scripts/apt-install.sh wrk wrk || exit 1
bash scripts/apt-install.sh openssl openssl || exit 1

CLUSTER="${CLUSTER:-0}"
if [ "$CLUSTER" = 1 ]; then
    cargo build --release --quiet --bin flashsale --features cluster
else
    cargo build --release --quiet --bin flashsale
fi
server_bin="target/release/flashsale"

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

dir="$(mktemp -d)"
pid=""
node_pid=""
nats_urls=""
stop_server() {
    local p
    for p in "$pid" "$node_pid"; do
        if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
            kill -TERM "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    pid=""
    node_pid=""
}
cleanup() {
    stop_server
    if [ -n "$nats_urls" ]; then
        bash scripts/nats.sh stop "$dir/nats" >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM

# start_server STOCK MODE: starts a server (MODE: memory, journal, cluster, or rs256: in
# memory with RS256 buyer tokens) selling STOCK units of SKU 1 on a free port; sets $pid
# and $port.
start_server() {
    printf '[[sku]]\nid = 1\nproduct = "Load"\nstock = %s\n' "$1" >"$dir/sale.toml"
    local storage=(--in-memory)
    if [ "$2" = rs256 ]; then
        printf 'limit = 1000000000\n' >>"$dir/sale.toml"
        storage=(--in-memory --auth jwt --jwt-key tests/fixtures/jwt/rsa-public.pem)
    fi
    if [ "$2" = journal ]; then
        rm -rf "$dir/data"
        storage=(--data "$dir/data")
    fi
    if [ "$2" = cluster ]; then
        if [ -z "$nats_urls" ]; then
            nats_urls=$(NATS_PORT=24222 bash scripts/nats.sh start "$dir/nats" 3 | tail -1)
        fi
        sale="load$RANDOM"
        storage=(--nats "$nats_urls" --sale "$sale")
        "$server_bin" node --nats "$nats_urls" --sale "$sale" --catalog "$dir/sale.toml" \
            --id "load" 2>"$dir/node.log" &
        node_pid=$!
    fi
    for _ in $(seq 1 20); do
        port=$((20000 + RANDOM % 20000))
        port_is_free "$port" || continue
        "$server_bin" serve --addr "127.0.0.1:$port" --catalog "$dir/sale.toml" "${storage[@]}" \
            --threads "$SERVER_THREADS" --rate-per-buyer 1000000 --burst-per-buyer 1000000 \
            --max-connections 100000 2>"$dir/server.log" &
        pid=$!
        for _ in $(seq 1 400); do
            if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        stop_server
    done
    echo "load.sh: could not start flashsale serve on a free port" >&2
    cat "$dir/server.log" >&2
    exit 1
}

# make_tokens N FILE: N RS256 tokens, for buyers 1..N, valid for a day, one per line,
# signed with the test key.
make_tokens() {
    local b64url='openssl base64 -A | tr "+/" "-_" | tr -d "="'
    local header payload signature exp
    exp=$(($(date +%s) + 86400))
    header=$(printf '{"alg":"RS256","typ":"JWT"}' | eval "$b64url")
    for buyer in $(seq 1 "$1"); do
        payload=$(printf '{"sub":"%d","exp":%d}' "$buyer" "$exp" | eval "$b64url")
        signature=$(printf '%s.%s' "$header" "$payload" |
            openssl dgst -sha256 -sign tests/fixtures/jwt/rsa-private.pem -binary | eval "$b64url")
        printf '%s.%s.%s\n' "$header" "$payload" "$signature"
    done >"$2"
}

# The engine's part of each buy, from the server's metrics: p50 / p90 / p99 in µs.
engine_percentiles() {
    awk -F'[{}" ]+' '
        /^flashsale_engine_buy_seconds\{quantile=/ { q[$3] = $4 * 1e6 }
        END { printf "p50 %.1f µs | p90 %.1f µs | p99 %.1f µs", q["0.5"], q["0.9"], q["0.99"] }
    ' "$1"
}

# Answers by status during the run, from the server's metrics: the counts after it (the
# second page) less those before (the first: the readiness polls while it recovered).
answers() {
    awk -F'[{}" ,]+' '
        FILENAME == ARGV[1] && /^flashsale_http_answers_total\{/ && $5 != "ok" { n[$3] -= $NF; next }
        /^flashsale_http_answers_total\{/ && $5 != "ok" { n[$3] += $NF }
        END { for (s in n) if (n[s] > 0) printf "%s: %d  ", s, n[s] }
    ' "$1" "$2"
}

# Buy answers (every answer but "ok") and 5xx answers in a metrics page.
buy_answers() {
    awk -F'[{}" ,=]+' '/^flashsale_http_answers_total\{/ && $5 != "ok" { n += $NF } END { print n + 0 }' "$1"
}
server_errors() {
    awk -F'[{}" ,=]+' '/^flashsale_http_answers_total\{/ && $3 ~ /^5/ { n += $NF } END { print n + 0 }' "$1"
}

# check NAME STOCK: asserts what a scenario must show, from wrk's output and the server's
# metrics: wrk completed requests; the server answered every one; no 5xx; no SKU sold past
# its stock; when it sold out, every unit was sold (no undersell). Exits 1 naming the
# failed check.
check() {
    local name="$1" stock="$2"
    fail() {
        echo "load.sh: $name: $*" >&2
        exit 1
    }
    local requests answered server_errors confirmed available sold
    requests=$(awk '/ requests in / { print $1 }' "$dir/wrk.txt")
    [ "${requests:-0}" -gt 0 ] || fail "wrk completed no request"
    if [ "$name" = "http-only" ]; then
        ! grep -q 'Non-2xx' "$dir/wrk.txt" || fail "non-2xx answers to GET /sales/1"
        printf '           checked: %s requests, all 2xx\n' "$requests"
        return
    fi
    # Answers during the run: the counts after it less those before (the readiness polls).
    answered=$(( $(buy_answers "$dir/metrics.txt") - $(buy_answers "$dir/before.txt") ))
    server_errors=$(( $(server_errors "$dir/metrics.txt") - $(server_errors "$dir/before.txt") ))
    if [[ "$name" == cluster-* ]]; then
        # A gateway keeps no engine counters: the orders it answered, and the SKU's
        # levels as its leader has them (read before the gateway stopped).
        confirmed=$(awk -F'[{}" ,=]+' '/^flashsale_http_answers_total\{status="200",reason="confirmed"\}/ { print $NF }' "$dir/metrics.txt")
        available=$(sed -n 's/.*"available":\([0-9]*\).*/\1/p' "$dir/sale.json")
        sold=$(sed -n 's/.*"held":\([0-9]*\).*"sold":\([0-9]*\).*/\1 \2/p' "$dir/sale.json" | awk '{ print $1 + $2 }')
        # Buys in flight when wrk stopped were decided but their answers went to closed
        # connections: at most one per connection.
        [ "$sold" -ge "$confirmed" ] && [ $((sold - confirmed)) -le "$CONNECTIONS" ] ||
            fail "the gateway answered $confirmed orders confirmed, the log holds $sold"
        confirmed="$sold"
    else
        confirmed=$(awk '/^flashsale_confirmed_orders_total / { print $2 }' "$dir/metrics.txt")
        available=$(awk -F'[{}" =]+' '/^flashsale_sku_available\{sku="1"\}/ { print $NF }' "$dir/metrics.txt")
    fi
    [ "$answered" -ge "$requests" ] || fail "the server answered $answered of $requests requests"
    [ "$server_errors" -eq 0 ] ||
        fail "$server_errors answers with a 5xx status: $(grep -E '^flashsale_http_answers_total\{status="5' "$dir/metrics.txt" | grep -v ' 0$' | paste -sd ' ' -) (before the run: $(server_errors "$dir/before.txt"))"
    [ "${confirmed:-0}" -gt 0 ] || fail "no order confirmed"
    [ "$confirmed" -le "$stock" ] || fail "oversold: $confirmed orders of 1 unit for $stock units"
    if [ "${available:-1}" -eq 0 ] && [ "$confirmed" -ne "$stock" ]; then
        fail "sold out with $confirmed of $stock units sold"
    fi
    printf '           checked: %s requests, %s answered, no 5xx, %s of %s units confirmed%s\n' \
        "$requests" "$answered" "$confirmed" "$stock" \
        "$([ "${available:-1}" -eq 0 ] && echo ', sold out exactly')"
}

# scenario NAME STOCK MODE PATH [wrk args...]
baseline=""
scenario() {
    local name="$1" stock="$2" mode="$3" path="$4"
    shift 4
    start_server "$stock" "$mode"
    timeout 10 curl -sf "http://127.0.0.1:$port/metrics" >"$dir/before.txt"
    timeout $((DURATION + 30)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        "$@" "http://127.0.0.1:$port$path" >"$dir/wrk.txt"
    timeout 10 curl -sf "http://127.0.0.1:$port/metrics" >"$dir/metrics.txt"
    timeout 10 curl -sf "http://127.0.0.1:$port/sales/1" >"$dir/sale.json" || true
    stop_server
    local rps p50 p90 p99 errors ratio=""
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$dir/wrk.txt")
    p50=$(awk '$1 == "50%" { print $2 }' "$dir/wrk.txt")
    p90=$(awk '$1 == "90%" { print $2 }' "$dir/wrk.txt")
    p99=$(awk '$1 == "99%" { print $2 }' "$dir/wrk.txt")
    errors=$(awk '/Socket errors|Non-2xx/ { $1 = $1; print }' "$dir/wrk.txt" | paste -sd ';' -)
    if [ "$name" = "http-only" ]; then
        baseline="$rps"
    elif [ -n "$baseline" ]; then
        ratio=$(awk -v a="$rps" -v b="$baseline" 'BEGIN { printf " (%.2f of http-only)", a / b }')
    fi
    printf '\n%-10s HTTP %10s req/s%s   round trip p50 %s | p90 %s | p99 %s\n' \
        "$name" "$rps" "$ratio" "$p50" "$p90" "$p99"
    if [ "$name" != "http-only" ]; then
        printf '           engine part of each buy (server-side): %s\n' \
            "$(engine_percentiles "$dir/metrics.txt")"
        printf '           answers during the run: %s\n' "$(answers "$dir/before.txt" "$dir/metrics.txt")"
        grep -E '^submit-to-outcome' "$dir/server.log" |
            sed 's/^submit-to-outcome latency:/           shard part (engine report, arrival to outcome of the buys queued):/' || true
    fi
    if [ -n "$errors" ]; then
        printf '           wrk: %s\n' "$errors"
    fi
    check "$name" "$stock"
}

echo "load.sh: wrk $WRK_THREADS thread(s), $CONNECTIONS connections, ${DURATION} s per scenario;" \
    "server: $SERVER_THREADS runtime thread(s) + client pump + 1 shard thread; $(nproc) CPUs"
scenario http-only 1000 memory /healthz
scenario selling 1000000000 memory "" -s benches/http/buy.lua
scenario journaled 1000000000 journal "" -s benches/http/buy.lua
scenario sold-out 1000 memory "" -s benches/http/buy.lua
make_tokens 1000 "$dir/tokens.txt"
TOKENS="$dir/tokens.txt" scenario rs256 1000000000 rs256 "" -s benches/http/buy.lua
if [ "$CLUSTER" = 1 ]; then
    scenario cluster-selling 1000000000 cluster "" -s benches/http/buy.lua
    scenario cluster-sold-out 1000 cluster "" -s benches/http/buy.lua
fi
