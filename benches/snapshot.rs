//! What a snapshot of a full shard costs: `ShardCore::snapshot` of a core whose buyers hold
//! a million orders (the engine takes it on the shard's thread, a cluster leader on its
//! partition's task, so the shard decides nothing else meanwhile).
//!
//! Run: `cargo bench --bench snapshot`.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale::{Catalog, Intent, Placement, ShardCore, ShardId, SkuId, SkuSpec, UserId};

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
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
