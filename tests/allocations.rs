//! The hot path allocates nothing, and retained memory does not grow with rejected
//! intents: a counting global allocator watches a whole engine (producer and shard threads)
//! while it confirms and rejects intents. Its own binary, so no other test allocates
//! meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use flashsale::{Catalog, Engine, Intent, SkuId, SkuSpec, Submitted, UserId};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static LIVE_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn run(producer: &mut flashsale::Producer, users: std::ops::Range<u64>) {
    for user in users {
        let intent = Intent {
            user: UserId(user),
            client_key: user,
            sku: SkuId(1 + (user % 2) as u32),
            quantity: 1,
        };
        loop {
            match producer.submit(intent) {
                Ok(Submitted::Queued(_) | Submitted::Answered(_)) => break,
                Err(_) => {
                    producer.poll(|_| {});
                }
            }
        }
    }
    producer.drain(|_| {});
}

#[test]
fn no_allocation_per_intent_and_no_growth_with_rejections() {
    let count: u64 = if cfg!(miri) { 2_000 } else { 400_000 };
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 5_000).limit(1))
        .sku(SkuSpec::new(SkuId(2), 5_000).limit(1))
        .build()
        .unwrap();
    // Gate off: every intent travels the rings and is decided by the shard.
    let engine = Engine::builder(catalog)
        .sold_out_gate(false)
        .start()
        .unwrap();
    let mut producer = engine.producer();
    // Warm-up: the first submit makes the shard adopt the producer's lanes.
    run(&mut producer, 1_000_000_000..1_000_000_001);

    // Confirm all 10,000 units: the shard's maps were reserved for the stock up front.
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    run(&mut producer, 0..10_000);
    let allocations_confirming = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    assert_eq!(engine.available(SkuId(1)), Some(0));

    // Now reject `count` intents from new users (SoldOut): no allocation, no growth.
    let bytes_before = LIVE_BYTES.load(Ordering::Relaxed);
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    run(&mut producer, 10_000..10_000 + count);
    let allocations_rejecting = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let bytes_after = LIVE_BYTES.load(Ordering::Relaxed);

    let report = engine.shutdown();
    // The warm-up user took one unit of SKU 1, so one of the 10,000 found it sold out.
    assert_eq!(report.confirmed_orders, 10_000);
    assert_eq!(
        allocations_confirming, 0,
        "confirming within the reserved stock allocates nothing"
    );
    assert_eq!(allocations_rejecting, 0, "rejections allocate nothing");
    assert_eq!(bytes_after, bytes_before, "retained memory did not grow");
}
