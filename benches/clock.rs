//! Which clock to stamp intents with: `std::time::Instant::now()` against quanta's TSC
//! reading, raw and scaled to nanoseconds as the engine uses it (`EngineClock::now_ns`).
//!
//! Run: `cargo bench --bench clock`.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use flashsale::clock::EngineClock;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    let start = Instant::now();
    group.bench_function("std_instant_now_elapsed_ns", |b| {
        b.iter(|| black_box(start.elapsed().as_nanos() as u64))
    });
    let quanta = quanta::Clock::new();
    group.bench_function("quanta_raw", |b| b.iter(|| black_box(quanta.raw())));
    let engine_clock = EngineClock::start();
    group.bench_function("engine_clock_now_ns", |b| {
        b.iter(|| black_box(engine_clock.now_ns()))
    });
    group.finish();
}

criterion_group!(benches, clocks);
criterion_main!(benches);
