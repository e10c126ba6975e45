//! Workloads and baselines shared by the benches.
#![allow(dead_code)]

use std::sync::Mutex;

use flashsale::reference::Model;
use flashsale::{Catalog, Intent, Outcome, SkuId, SkuSpec, UserId};

pub use flashsale::workload::Rng;

/// The core workload: 1 hot SKU (id 0, 10,000 units) and 999 cold SKUs (ids
/// 1..=999, 100 units each), per-buyer limit 2 on all.
pub fn hot_and_cold_catalog() -> Catalog {
    Catalog::builder()
        .sku(SkuSpec::new(SkuId(0), 10_000).limit(2))
        .skus((1..1000).map(|id| SkuSpec::new(SkuId(id), 100).limit(2)))
        .build()
        .expect("valid catalog")
}

/// `count` intents from `count` distinct users, 90% for the hot SKU and 10% spread over
/// the cold ones, quantity 1.
pub fn hot_and_cold_intents(count: u64) -> Vec<Intent> {
    let mut rng = Rng::new(42);
    (0..count)
        .map(|user| {
            let random = rng.next_u64();
            let sku = if random.is_multiple_of(10) {
                1 + (random >> 8) as u32 % 999
            } else {
                0
            };
            Intent {
                user: UserId(user),
                client_key: user,
                sku: SkuId(sku),
                quantity: 1,
            }
        })
        .collect()
}

/// One SKU with `stock` units, no limit: the end-to-end burst (10,000 units) and, with a
/// stock above the intent count, the all-confirmed workload.
pub fn single_sku_catalog(stock: u32) -> Catalog {
    Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), stock).limit(2))
        .build()
        .expect("valid catalog")
}

/// Intent `index` of the single-SKU workloads: distinct users.
#[inline]
pub fn single_sku_intent(index: u64) -> Intent {
    Intent {
        user: UserId(index),
        client_key: index,
        sku: SkuId(1),
        quantity: 1,
    }
}

/// The obvious baseline: the reference model (the same rules as the engine, stated
/// simply, on Fx hash maps) behind one `Mutex`, with room for `orders` orders made up front
/// (outside any timing), called straight from the submitting threads.
pub fn mutex_model(catalog: &Catalog, orders: usize) -> Mutex<Model> {
    Mutex::new(Model::whole_with_capacity(catalog, orders))
}

/// One buy through the Mutex baseline.
#[inline]
pub fn mutex_buy(model: &Mutex<Model>, intent: &Intent) -> Outcome {
    model
        .lock()
        .expect("no panics while held")
        .buy(intent, 0)
        .outcome()
        .expect("first-come: decided at once")
}
