//! The order book when every intent is confirmed: the decision core alone on one thread,
//! in batches of 256 intents, each intent's misses started 16 intents before it is
//! decided, as the engine's shard worker does, with room for all 10M orders made up front
//! (outside the timing).
//!
//! - `one_order_per_buyer`: 10M buyers, one order each (one SKU, limit 2).
//! - `hundred_orders_one_sku`: 100,000 buyers, 100 orders each of one SKU (limit 100),
//!   each under its own key, the buyers taking turns.
//! - `hundred_orders_hundred_skus`: 100,000 buyers, one order of each of 100 SKUs (limit
//!   1 each), the buyers taking turns.
//!
//! Run: `cargo bench --bench book` (about 3 minutes). Every intent must be confirmed, or
//! the run panics: a rejection would measure something else.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flashsale::{Catalog, Intent, Placement, ShardCore, ShardId, SkuId, SkuSpec, UserId};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ORDERS: u64 = 10_000_000;
const BUYERS_OF_MANY: u64 = 100_000;
const BATCH: usize = 256;
/// How far ahead of the decision the shard worker prefetches within a batch.
const AHEAD: usize = 16;

/// A sale shape: its catalog and intent `index` (with the SKU's local index).
struct Shape {
    catalog: Catalog,
    intent: fn(u64) -> Intent,
}

fn one_order_per_buyer() -> Shape {
    Shape {
        catalog: Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), 2 * ORDERS as u32).limit(2))
            .build()
            .expect("valid catalog"),
        intent: |index| Intent {
            user: UserId(index),
            client_key: index,
            sku: SkuId(1),
            quantity: 1,
        },
    }
}

fn hundred_orders_one_sku() -> Shape {
    Shape {
        catalog: Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), 2 * ORDERS as u32).limit(100))
            .build()
            .expect("valid catalog"),
        intent: |index| Intent {
            user: UserId(index % BUYERS_OF_MANY),
            client_key: index,
            sku: SkuId(1),
            quantity: 1,
        },
    }
}

fn hundred_orders_hundred_skus() -> Shape {
    let mut catalog = Catalog::builder();
    for sku in 1..=100 {
        catalog = catalog.sku(SkuSpec::new(SkuId(sku), BUYERS_OF_MANY as u32).limit(1));
    }
    Shape {
        catalog: catalog.build().expect("valid catalog"),
        intent: |index| Intent {
            user: UserId(index % BUYERS_OF_MANY),
            client_key: index,
            sku: SkuId(1 + (index / BUYERS_OF_MANY) as u32),
            quantity: 1,
        },
    }
}

/// Decides every intent of the shape on a fresh core, timing only the decisions.
fn run(shape: &Shape) -> Duration {
    let placement = Placement::new(&shape.catalog, 1).expect("one shard");
    let mut core = ShardCore::with_order_capacity(
        &shape.catalog,
        &placement,
        ShardId(0),
        Some(ORDERS as usize),
    );
    let intents: Vec<(u32, Intent)> = (0..ORDERS)
        .map(|index| {
            let intent = (shape.intent)(index);
            (core.local_index(intent.sku).expect("known SKU"), intent)
        })
        .collect();
    let start = Instant::now();
    let mut confirmed = 0u64;
    for batch in intents.chunks(BATCH) {
        for (local, intent) in batch.iter().take(AHEAD) {
            core.prefetch_at(*local, intent);
        }
        for (position, (local, intent)) in batch.iter().enumerate() {
            if let Some((ahead_local, ahead)) = batch.get(position + AHEAD) {
                core.prefetch_at(*ahead_local, ahead);
            }
            if core.buy_at(*local, intent, 0, false).order().is_some() {
                confirmed += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(confirmed, ORDERS, "every intent is confirmed");
    black_box(core);
    elapsed
}

fn book(c: &mut Criterion) {
    let mut group = c.benchmark_group("book");
    group.throughput(Throughput::Elements(ORDERS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(30));
    for (name, shape) in [
        ("one_order_per_buyer", one_order_per_buyer as fn() -> Shape),
        ("hundred_orders_one_sku", hundred_orders_one_sku),
        ("hundred_orders_hundred_skus", hundred_orders_hundred_skus),
    ] {
        let shape = shape();
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| (0..iterations).map(|_| run(&shape)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, book);
criterion_main!(benches);
