//! Failure injection, each with the invariants checked afterwards: a producer thread that
//! panics between submits, a shard slowed down until its rings fill, a burst of malformed
//! intents mixed with good ones. (A panicking order sink and shutdown while producers keep
//! submitting are in `tests/engine.rs`: `panicking_sink_fails_its_shard_only`,
//! `shutdown_racing_many_submitters_loses_nothing`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{check_invariants, intent, submit_one};
use flashsale::{
    Catalog, Completion, Engine, GroupId, Intent, Order, Producer, RejectReason, SkuId, SkuSpec,
    Submitted,
};

/// The unit of work: Miri runs these tests about a thousand times slower.
const N: u32 = if cfg!(miri) { 40 } else { 1_000 };

/// Submits every intent, polling while Busy; returns all completions, the most intents it
/// ever had in flight, and how often it was pushed back.
fn submit_all(producer: &mut Producer, intents: &[Intent]) -> (Vec<Completion>, usize, u64) {
    let mut completions = Vec::new();
    let mut most_in_flight = 0;
    let mut busy = 0;
    for &intent in intents {
        busy += submit_one(producer, intent, &mut completions);
        most_in_flight = most_in_flight.max(producer.in_flight());
    }
    producer.drain(|completion| completions.push(completion));
    (completions, most_in_flight, busy)
}

#[test]
fn a_producer_thread_panicking_between_submits_loses_nothing_else() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 3 * N).limit(1))
        .build()
        .unwrap();
    let sunk_units = Arc::new(AtomicU64::new(0));
    let sunk = sunk_units.clone();
    let engine = Engine::builder(catalog.clone())
        .sold_out_gate(false)
        .order_sink(move |_| {
            let sunk = sunk.clone();
            move |order: &Order| {
                sunk.fetch_add(u64::from(order.quantity), Ordering::Relaxed);
            }
        })
        .start()
        .unwrap();
    // The doomed thread queues 40 intents and dies without ever polling its answers.
    let mut doomed = engine.producer();
    let dead = std::thread::spawn(move || {
        for user in 0..40 {
            assert!(matches!(
                doomed.submit(intent(user, 1, 1, 1)),
                Ok(Submitted::Queued(_))
            ));
        }
        panic!("request handler crashed mid-request");
    });
    let mut survivor = engine.producer();
    let intents: Vec<Intent> = (N..3 * N)
        .map(|user| intent(u64::from(user) + 100, 1, 1, 1))
        .collect();
    let (completions, _, _) = submit_all(&mut survivor, &intents);
    assert!(dead.join().is_err(), "the thread did panic");
    drop(survivor);
    let report = engine.shutdown();
    // The dead producer's intents were still decided (their orders reached the sink); the
    // survivor got every answer; units add up.
    let all = 2 * u64::from(N) + 40;
    assert_eq!(report.outcomes(), all);
    assert_eq!(completions.len() as u64, 2 * u64::from(N));
    assert!(completions.iter().all(|c| c.outcome.order().is_some()));
    assert_eq!(report.confirmed_units, all);
    assert_eq!(sunk_units.load(Ordering::Relaxed), all);
    assert_eq!(u64::from(report.skus[0].available), 3 * u64::from(N) - all);
    // The survivor's answers and the dead thread's 40 fill the shard's sequence numbers
    // exactly: no decision lost, none made twice.
    let mut sequences: Vec<u64> = completions
        .iter()
        .filter_map(|c| c.outcome.sequence())
        .collect();
    sequences.sort_unstable();
    sequences.dedup();
    assert_eq!(sequences.len() as u64, 2 * u64::from(N));
    assert!(sequences.iter().all(|&sequence| sequence < all));
}

#[test]
fn a_slow_shard_fills_its_rings_and_producers_get_busy_but_nothing_is_lost() {
    const RING: usize = 8;
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 3 * N / 2).limit(1))
        .build()
        .unwrap();
    // 20 µs per confirmed order: far slower than producers submit.
    let engine = Engine::builder(catalog.clone())
        .ring_capacity(RING)
        .sold_out_gate(false)
        .order_sink(|_| |_: &Order| std::thread::sleep(Duration::from_micros(20)))
        .start()
        .unwrap();
    let results: Vec<(Vec<Completion>, usize, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|index| {
                let mut producer = engine.producer();
                scope.spawn(move || {
                    let intents: Vec<Intent> = (0..u64::from(N))
                        .map(|n| intent(index * 10_000 + n, 1, 1, 1))
                        .collect();
                    submit_all(&mut producer, &intents)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let report = engine.shutdown();
    let mut all = Vec::new();
    for (completions, most_in_flight, busy) in results {
        // Memory stays bounded: never more in flight than the ring holds.
        assert!(most_in_flight <= RING, "{most_in_flight} in flight");
        assert!(busy > 0, "the slow shard pushed back");
        all.extend(completions);
    }
    assert_eq!(
        all.len() as u64,
        2 * u64::from(N),
        "every intent answered once"
    );
    assert_eq!(report.outcomes(), 2 * u64::from(N));
    assert!(report.refusals.busy > 0);
    assert_eq!(report.confirmed_units, 3 * u64::from(N) / 2);
    assert_eq!(report.rejected(RejectReason::SoldOut), u64::from(N) / 2);
    check_invariants(&catalog, &all, &report);
}

#[test]
fn a_burst_of_malformed_intents_among_good_ones() {
    let catalog = Catalog::builder()
        .group(GroupId(1), 2)
        .skus((1..=4).map(|id| {
            SkuSpec::new(SkuId(id), 3 * N / 10)
                .limit(2)
                .group(GroupId(1))
        }))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog.clone())
        .shards(1)
        .max_quantity(2)
        .start()
        .unwrap();
    let mut malformed_sent = 0u64;
    let per_thread: Vec<Vec<Intent>> = (0..3u64)
        .map(|thread| {
            (0..20 * u64::from(N))
                .map(|n| {
                    let user = thread * 1_000_000 + n / 2;
                    let sku = 1 + (n % 4) as u32;
                    match n % 10 {
                        0 => intent(user, n, sku, 0),
                        1 => intent(user, n, sku, 3),
                        2 => intent(user, n, 77, 1),
                        3 => intent(user, n, sku, u32::MAX),
                        4 => intent(user, n, 0, 0),
                        _ => intent(user, n, sku, 1),
                    }
                })
                .collect()
        })
        .collect();
    for intents in &per_thread {
        malformed_sent += intents
            .iter()
            .filter(|i| i.quantity == 0 || i.quantity > 2 || !(1..=4).contains(&i.sku.0))
            .count() as u64;
    }
    let completions: Vec<Completion> = std::thread::scope(|scope| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|intents| {
                let mut producer = engine.producer();
                scope.spawn(move || submit_all(&mut producer, intents).0)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let report = engine.shutdown();
    assert_eq!(completions.len() as u64, 60 * u64::from(N));
    let malformed_answered = completions
        .iter()
        .filter(|c| {
            matches!(
                c.outcome.reason(),
                Some(RejectReason::InvalidQuantity | RejectReason::UnknownSku)
            )
        })
        .count() as u64;
    assert_eq!(malformed_answered, malformed_sent);
    assert_eq!(
        report.confirmed_units,
        u64::from(12 * N / 10),
        "the good ones still sell it all"
    );
    check_invariants(&catalog, &completions, &report);
}
