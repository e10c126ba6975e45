//! Small multi-threaded engine runs shaped by the input: the catalog's stocks, the shard
//! count, ring size, wait strategy, gate, and what each of up to three producer threads
//! submits. Every outcome is checked against DESIGN.md's invariants afterwards (the same
//! checks as `tests/common`), and every intent must be answered exactly once.
#![no_main]

#[path = "../../tests/common/mod.rs"]
mod common;

use arbitrary::Arbitrary;
use flashsale::{
    Catalog, Completion, Engine, GroupId, Intent, SkuId, SkuSpec, UserId, WaitStrategy,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Press {
    user: u8,
    client_key: u8,
    sku: u8,
    quantity: u8,
}

#[derive(Debug, Arbitrary)]
struct Input {
    stocks: [u8; 4],
    limits: [u8; 4],
    group_limit: u8,
    two_shards: bool,
    ring_capacity: u8,
    wait: u8,
    gate: bool,
    producers: Vec<Vec<Press>>,
}

fuzz_target!(|input: Input| {
    // SKUs 1 and 2 share a limit group (one product in two variants), 3 and 4 are loose.
    let catalog = Catalog::builder()
        .group(GroupId(1), u32::from(input.group_limit.max(1)))
        .skus((0..4u32).map(|index| {
            let spec = SkuSpec::new(SkuId(index + 1), u32::from(input.stocks[index as usize] % 32))
                .limit(u32::from(input.limits[index as usize] % 4).max(1));
            if index < 2 { spec.group(GroupId(1)) } else { spec }
        }))
        .build()
        .expect("valid catalog");
    let wait = match input.wait % 3 {
        0 => WaitStrategy::Park,
        1 => WaitStrategy::Yield,
        _ => WaitStrategy::Spin,
    };
    let engine = Engine::builder(catalog.clone())
        .shards(if input.two_shards { 2 } else { 1 })
        .ring_capacity(usize::from(input.ring_capacity % 8).max(1))
        .max_quantity(3)
        .sold_out_gate(input.gate)
        .wait_strategy(wait)
        .start()
        .expect("engine starts");
    let lists: Vec<Vec<Intent>> = input
        .producers
        .iter()
        .take(3)
        .map(|presses| {
            presses
                .iter()
                .take(256)
                .map(|press| Intent {
                    user: UserId(u64::from(press.user % 8)),
                    client_key: u64::from(press.client_key % 3),
                    // 0 and 5 are SKUs nobody sells.
                    sku: SkuId(u32::from(press.sku % 6)),
                    quantity: u32::from(press.quantity % 5),
                })
                .collect()
        })
        .collect();
    let submitted: usize = lists.iter().map(Vec::len).sum();
    let completions: Vec<Completion> = std::thread::scope(|scope| {
        let handles: Vec<_> = lists
            .iter()
            .map(|list| {
                let mut producer = engine.producer();
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    for &intent in list {
                        common::submit_one(&mut producer, intent, &mut seen);
                    }
                    producer.drain(|completion| seen.push(completion));
                    seen
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("producer thread"))
            .collect()
    });
    let report = engine.shutdown();
    assert_eq!(completions.len(), submitted, "one outcome per intent");
    assert_eq!(report.outcomes(), submitted as u64);
    common::check_invariants(&catalog, &completions, &report);
});
