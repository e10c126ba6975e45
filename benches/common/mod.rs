//! Workloads and baselines shared by the benches.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Mutex;

use flashsale::{Catalog, Intent, OrderId, Outcome, RejectReason, ShardId, SkuId, SkuSpec, UserId};

/// xorshift64*: a tiny deterministic generator for workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

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
            let random = rng.next();
            let sku = if random % 10 == 0 {
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

/// The obvious baseline: the same rules (idempotency, per-SKU limit, stock) on std
/// collections behind one `Mutex`, called straight from the submitting threads.
pub struct MutexAllocator {
    inner: Mutex<MutexAllocatorState>,
}

struct MutexAllocatorState {
    index: HashMap<SkuId, usize>,
    available: Vec<u32>,
    limits: Vec<u32>,
    orders: HashMap<(UserId, u64), OrderId>,
    held: HashMap<(UserId, SkuId), u32>,
    orders_confirmed: u64,
}

impl MutexAllocator {
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            inner: Mutex::new(MutexAllocatorState {
                index: catalog
                    .skus()
                    .iter()
                    .enumerate()
                    .map(|(index, sku)| (sku.id, index))
                    .collect(),
                available: catalog.skus().iter().map(|sku| sku.stock).collect(),
                limits: catalog
                    .skus()
                    .iter()
                    .map(|sku| sku.limit_per_buyer)
                    .collect(),
                orders: HashMap::new(),
                held: HashMap::new(),
                orders_confirmed: 0,
            }),
        }
    }

    pub fn buy(&self, intent: &Intent) -> Outcome {
        let mut state = self.inner.lock().expect("no panics while held");
        let rejected = |reason| Outcome::Rejected {
            reason,
            sequence: None,
        };
        let Some(&index) = state.index.get(&intent.sku) else {
            return rejected(RejectReason::UnknownSku);
        };
        if let Some(&id) = state.orders.get(&(intent.user, intent.client_key)) {
            return rejected(RejectReason::Duplicate(id));
        }
        let held = state
            .held
            .get(&(intent.user, intent.sku))
            .copied()
            .unwrap_or(0);
        if held + intent.quantity > state.limits[index] {
            return rejected(RejectReason::UserLimit);
        }
        if state.available[index] < intent.quantity {
            return rejected(RejectReason::SoldOut);
        }
        state.available[index] -= intent.quantity;
        *state.held.entry((intent.user, intent.sku)).or_insert(0) += intent.quantity;
        let id = OrderId::new(ShardId(0), state.orders_confirmed);
        state.orders_confirmed += 1;
        state.orders.insert((intent.user, intent.client_key), id);
        Outcome::Confirmed(flashsale::Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity: intent.quantity,
            sequence: 0,
        })
    }
}
