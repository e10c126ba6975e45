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
# Which sanitizer: the targets run without one and with mimalloc as the allocator (memory
# an input frees is reused by the next instead of going back to the kernel), which makes
# them six to ten times faster per execution than under AddressSanitizer. The crate's
# `unsafe` code (the ring's cells) runs under threads only in `engine_threads`, so that one
# also runs under AddressSanitizer, for half the time; Miri checks the rest in CI.
#
# Comparison tracing: libFuzzer records the operands of every comparison, which is what
# lets it forge a checksum or a magic number. Two targets are built without it (in a target
# directory of their own): `engine_threads` has none to forge (each of its input bytes
# picks among a few choices) and the tracing of its workers' idle loops took a third of
# its time; `journal_reader` fills in its records' checksums itself when its first byte
# asks, which reached almost three times the coverage that forging them had.
#
# Needs the nightly toolchain and cargo-fuzz; installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
only="${2:-}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(shard_vs_model:none catalog:none engine_threads:none engine_threads:address
    journal_reader:none fault_sim:none snapshot:none replica_log:none cluster_wire:none
    operator_files:none)
for entry in "${targets[@]}"; do
    target="${entry%%:*}"
    sanitizer="${entry##*:}"
    if [ -n "$only" ] && [ "$only" != "$target" ]; then
        continue
    fi
    # One target directory per sanitizer, so the two builds do not undo each other.
    build=(-s "$sanitizer" --target-dir "fuzz/target/$sanitizer")
    name="$target"
    time="$seconds"
    if [ "$sanitizer" = none ] && { [ "$target" = engine_threads ] || [ "$target" = journal_reader ]; }; then
        build=(-s none --no-trace-compares --target-dir fuzz/target/none-no-trace-compares
            --features mimalloc)
    elif [ "$sanitizer" = none ]; then
        build+=(--features mimalloc)
    else
        name="$target+asan"
        time=$(( (seconds + 1) / 2 ))
    fi
    cargo +nightly fuzz build "${build[@]}" "$target"
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    log="$(mktemp)"
    echo "fuzz: $name for ${time}s"
    if ! cargo +nightly fuzz run "${build[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$time" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $name FAILED (input in fuzz/artifacts/$target)" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    echo "fuzz: $name ok, $runs executions in ${time}s ($((runs / time))/s), corpus $(ls "fuzz/corpus/$target" | wc -l) inputs"
    rm -f "$log"
done
