#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60), starting from the
# committed corpus (fuzz/seeds/TARGET) and the local one (fuzz/corpus/TARGET, kept between
# runs, not committed). A crash, a leak or a timeout fails the script; libFuzzer leaves the
# input in fuzz/artifacts/TARGET. Prints each target's executions and executions per second.
#
#   bash fuzz/run.sh                       # 60 s per target
#   bash fuzz/run.sh 1800                  # a longer local run
#   bash fuzz/run.sh 60 shard_vs_model     # one target
#
# Which sanitizer: `engine_threads` is the one target that runs the crate's `unsafe` code
# (the ring's cells, under real threads), so it is built with AddressSanitizer. The others
# check logic in safe code (the shard core against the model, catalogs, the journal reader,
# the fault simulator) and are built without a sanitizer, which makes them about six times
# faster per execution; the core's one `unsafe` allocation is checked by Miri in CI.
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
only="${2:-}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(shard_vs_model:none catalog:none engine_threads:address journal_reader:none fault_sim:none)
for entry in "${targets[@]}"; do
    target="${entry%%:*}"
    sanitizer="${entry##*:}"
    if [ -n "$only" ] && [ "$only" != "$target" ]; then
        continue
    fi
    # One target directory per sanitizer, so the two builds do not undo each other.
    build=(-s "$sanitizer" --target-dir "fuzz/target/$sanitizer")
    cargo +nightly fuzz build "${build[@]}" "$target"
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    log="$(mktemp)"
    echo "fuzz: $target for ${seconds}s ($sanitizer sanitizer)"
    if ! cargo +nightly fuzz run "${build[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    echo "fuzz: $target ok, $runs executions in ${seconds}s ($((runs / seconds))/s), corpus $(ls "fuzz/corpus/$target" | wc -l) inputs"
    rm -f "$log"
done
