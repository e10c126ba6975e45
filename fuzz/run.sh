#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60), starting from the
# committed seeds (fuzz/seeds/TARGET) and the local corpus (fuzz/corpus/TARGET, kept
# between runs, not committed). A crash, a leak or a timeout fails the script; libFuzzer
# leaves the input in fuzz/artifacts/TARGET.
#
#   bash fuzz/run.sh          # 60 s per target
#   bash fuzz/run.sh 1800     # a longer local run
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(shard_vs_model catalog engine_threads journal_reader)
cargo +nightly fuzz build
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    log="$(mktemp)"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target ok, $runs executions in ${seconds}s, corpus $(ls "fuzz/corpus/$target" | wc -l) inputs"
    rm -f "$log"
done
