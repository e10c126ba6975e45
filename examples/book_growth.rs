//! The longest decision of a shard whose order book outgrows its room mid-sale.
//!
//! The decision core alone on one thread (no engine, no other threads) confirms one order
//! for each of `orders` buyers of one product, prefetching each intent's memory 16 intents
//! ahead as the shard worker does, and times every decision. The book starts with the
//! default room (as many orders as the shard's stock, at most 4,194,304), so past that it
//! doubles: the decisions that matter are the longest ones, and where they fall. A second
//! argument sets the room instead (what `order_capacity` sets for an engine).
//!
//! ```text
//! cargo run --release --example book_growth                       # 10,000,000 orders
//! cargo run --release --example book_growth -- 5000000           # fewer
//! cargo run --release --example book_growth -- 10000000 10000000  # room for all of them
//! ```

use std::time::Instant;

use flashsale::{
    Catalog, EngineBuilder, Intent, Placement, ShardCore, ShardId, SkuId, SkuSpec, UserId,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AHEAD: usize = 16;
const BATCH: usize = 256;

fn main() {
    let usage = || -> ! {
        eprintln!(
            "usage: book_growth [ORDERS [ROOM]]  (orders 1 to {}, room 1 to {})",
            u32::MAX / 2,
            EngineBuilder::ORDER_CAPACITY_MAX
        );
        std::process::exit(2);
    };
    let mut args = std::env::args().skip(1);
    let orders: u64 = match args.next().map(|arg| arg.parse()) {
        None => 10_000_000,
        Some(Ok(orders)) if orders > 0 && orders <= u64::from(u32::MAX / 2) => orders,
        Some(_) => usage(),
    };
    let room: Option<usize> = match args.next().map(|arg| arg.parse()) {
        None => None,
        Some(Ok(room)) if room > 0 && room <= EngineBuilder::ORDER_CAPACITY_MAX => Some(room),
        Some(_) => usage(),
    };
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 2 * orders as u32).limit(2))
        .build()
        .expect("a valid catalog");
    let placement = Placement::new(&catalog, 1).expect("one shard");
    let mut core = ShardCore::with_order_capacity(&catalog, &placement, ShardId(0), room);
    println!(
        "{orders} orders, room for {} at the start",
        core.order_room()
    );
    let intent = |index: u64| Intent {
        user: UserId(index),
        client_key: index,
        sku: SkuId(1),
        quantity: 1,
    };
    let local = core.local_index(SkuId(1)).expect("the SKU is on the shard");
    // (decision time, orders before it), the longest few.
    let mut longest: Vec<(u64, u64)> = Vec::new();
    let mut over_1ms = 0u64;
    let start = Instant::now();
    for first in (0..orders).step_by(BATCH) {
        let end = (first + BATCH as u64).min(orders);
        for index in first..(first + AHEAD as u64).min(end) {
            core.prefetch_at(local, &intent(index));
        }
        for index in first..end {
            if index + (AHEAD as u64) < end {
                core.prefetch_at(local, &intent(index + AHEAD as u64));
            }
            let began = Instant::now();
            let confirmed = core
                .buy_at(local, &intent(index), 0, false)
                .order()
                .is_some();
            let took = began.elapsed().as_nanos() as u64;
            assert!(confirmed, "every intent is confirmed");
            if took > 1_000_000 {
                over_1ms += 1;
            }
            if longest.len() < 3 || took > longest[longest.len() - 1].0 {
                longest.push((took, index));
                longest.sort_by_key(|entry| std::cmp::Reverse(entry.0));
                longest.truncate(3);
            }
        }
    }
    let elapsed = start.elapsed();
    println!(
        "{:.2}M orders/s over {:.2} s; {over_1ms} decisions over 1 ms; room at the end {}",
        orders as f64 / elapsed.as_secs_f64() / 1e6,
        elapsed.as_secs_f64(),
        core.order_room()
    );
    for (took, index) in longest {
        println!(
            "  {:>10.3} ms  deciding the order after {index}",
            took as f64 / 1e6
        );
    }
}
