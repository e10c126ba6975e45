//! What a snapshot of a full shard costs: `ShardCore::snapshot` of a core whose buyers hold
//! a million orders (the engine takes it on the shard's thread, a cluster leader on its
//! partition's task, so the shard decides nothing else meanwhile), and restoring one. And
//! what reading a journal of a million buys costs recovery (`journal::scan`), written one
//! record a buy (as version 3 did) and in batches (as the engine writes version 4), in the
//! same run.
//!
//! Run: `cargo bench --bench snapshot`.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale::journal::{self, Encoder};
use flashsale::{Catalog, Command, Intent, Placement, ShardCore, ShardId, SkuId, SkuSpec, UserId};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: u64 = 1_000_000;

fn snapshot(c: &mut Criterion) {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), ORDERS as u32).limit(1))
        .build()
        .unwrap();
    let placement = Placement::new(&catalog, 1).unwrap();
    let mut core = ShardCore::new(&catalog, &placement, ShardId(0));
    for user in 0..ORDERS {
        let intent = Intent {
            user: UserId(user),
            client_key: user,
            sku: SkuId(1),
            quantity: 1,
        };
        assert!(matches!(
            core.buy(&intent, user),
            flashsale::Applied::Decided(flashsale::Outcome::Confirmed(_))
        ));
    }
    let bytes = core.snapshot().len() as u64;
    let mut group = c.benchmark_group("snapshot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(bytes));
    group.bench_function("1M_orders", |b| b.iter(|| black_box(core.snapshot())));
    // What a restart pays before replaying the journal's tail: the core rebuilt from it.
    let taken = core.snapshot();
    group.bench_function("restore_1M_orders", |b| {
        b.iter(|| {
            black_box(ShardCore::restore(&catalog, &placement, ShardId(0), None, &taken).unwrap())
        })
    });
    group.finish();
}

/// A million buys as a sale's shard journals them: buyers among ten million, idempotency
/// keys of 64 random bits (the largest they take as varints), stamps 100-600 ns apart.
fn buys() -> Vec<Command> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut arrival_ns = 1_000_000_000;
    (0..ORDERS)
        .map(|_| {
            arrival_ns += 100 + next() % 500;
            Command::Buy {
                intent: Intent {
                    user: UserId(next() % 10_000_000),
                    client_key: next(),
                    sku: SkuId(1 + (next() % 100) as u32),
                    quantity: 1,
                },
                arrival_ns,
            }
        })
        .collect()
}

fn journal_scan(c: &mut Criterion) {
    let buys = buys();
    let mut one_each = journal::header(ShardId(0)).to_vec();
    for (sequence, buy) in buys.iter().enumerate() {
        journal::encode(sequence as u64, 0, buy, &mut one_each);
    }
    let mut batched = journal::header(ShardId(0)).to_vec();
    let mut encoder = Encoder::new(true);
    for (sequence, buy) in buys.iter().enumerate() {
        encoder.push(sequence as u64, buy, &mut batched, |_| 0);
    }
    encoder.finish(&mut batched);
    println!(
        "journal of {ORDERS} buys: {} bytes one record each ({:.1} a buy), {} in batches ({:.1} a buy)",
        one_each.len(),
        one_each.len() as f64 / ORDERS as f64,
        batched.len(),
        batched.len() as f64 / ORDERS as f64
    );
    let path = std::path::Path::new("bench");
    let mut group = c.benchmark_group("journal_scan");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(ORDERS));
    group.bench_function("1M_buys_one_record_each", |b| {
        b.iter(|| black_box(journal::scan(&one_each, path).unwrap().records.len()))
    });
    group.bench_function("1M_buys_in_batches", |b| {
        b.iter(|| black_box(journal::scan(&batched, path).unwrap().records.len()))
    });
    group.finish();
}

criterion_group!(benches, snapshot, journal_scan);
criterion_main!(benches);
