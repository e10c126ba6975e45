//! The fault simulator (`tests/sim`) with its seed and its fault rates chosen by the
//! fuzzer instead of drawn: write and sync error rates up to 20%, a disk that fills
//! anywhere from 1 KiB to 256 KiB, bit rot up to one crash in two, syncs up to 100 µs
//! slow. Every check the simulator makes after a crash holds, or the run fails with the
//! check's message. `cargo test --test fault_sim` runs the same simulator over fixed seeds.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../tests/sim/mod.rs"]
mod sim;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    write_error: u8,
    sync_error: u8,
    capacity: u16,
    rot: u8,
    slow_sync: u8,
}

fuzz_target!(|input: Input| {
    let faults = sim::Faults {
        write_error: f64::from(input.write_error % 21) / 100.0,
        sync_error: f64::from(input.sync_error % 21) / 100.0,
        capacity: 1_024 + usize::from(input.capacity) * 4,
        rot: f64::from(input.rot % 11) / 20.0,
        slow_sync_ns: u64::from(input.slow_sync) * 400,
    };
    if let Err(failure) = sim::run(input.seed, Some(faults)) {
        panic!("seed {} under {faults:?}: {failure}", input.seed);
    }
});
