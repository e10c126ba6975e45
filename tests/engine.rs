//! End-to-end tests of the engine through its public API: one per rejection reason and
//! engine error, shutdown, idempotency across the sold-out gate, sink failure, and a
//! many-thread stress test that checks the invariants (no oversell, no undersell, one outcome
//! per accepted intent, buyer limits, idempotency) on every outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;

use common::{check_invariants, intent, submit_one};
use flashsale::{
    Catalog, Completion, Engine, EngineError, GroupId, Intent, Outcome, PlacementError,
    RejectReason, SaleWindow, ShardFailure, ShardId, SkuId, SkuSpec, SubmitError, Submitted,
    WaitStrategy,
};

/// Miri runs the tests that race threads through the rings and the park protocol (see
/// `.ci/run`), about a thousand times slower: their sizes shrink by this much under it.
const MIRI_SHRINK: u64 = if cfg!(miri) { 50 } else { 1 };

fn one_sku(stock: u32, limit: u32) -> Catalog {
    Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), stock).limit(limit))
        .build()
        .unwrap()
}

fn reason(outcome: Outcome) -> RejectReason {
    outcome
        .reason()
        .unwrap_or_else(|| panic!("expected a rejection, got {outcome:?}"))
}

#[test]
fn producer_answers_malformed_and_unknown_at_once() {
    let engine = Engine::builder(one_sku(10, 5))
        .max_quantity(3)
        .start()
        .unwrap();
    let mut producer = engine.producer();
    for bad in [intent(1, 1, 1, 0), intent(1, 2, 1, 4)] {
        assert_eq!(
            producer.submit(bad).unwrap(),
            Submitted::Answered(Outcome::Rejected {
                reason: RejectReason::InvalidQuantity,
                sequence: None
            })
        );
    }
    assert_eq!(
        reason(producer.buy(intent(1, 3, 77, 1)).unwrap()),
        RejectReason::UnknownSku
    );
    assert_eq!(producer.in_flight(), 0);
    let report = engine.shutdown();
    assert_eq!(report.rejected(RejectReason::InvalidQuantity), 2);
    assert_eq!(report.rejected(RejectReason::UnknownSku), 1);
    assert_eq!(report.answered_at_submit, 3);
    assert_eq!(report.commands_applied, 0, "nothing reached a shard");
}

#[test]
fn sale_window_rejections() {
    let far_future = u64::MAX - 1;
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 10).window(SaleWindow {
            opens_at_ns: far_future,
            closes_at_ns: u64::MAX,
        }))
        .sku(SkuSpec::new(SkuId(2), 10).window(SaleWindow {
            opens_at_ns: 0,
            closes_at_ns: 1,
        }))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).start().unwrap();
    let mut producer = engine.producer();
    assert_eq!(
        reason(producer.buy(intent(1, 1, 1, 1)).unwrap()),
        RejectReason::NotOpenYet
    );
    // The engine clock is past 1 ns by the time anything is submitted.
    assert_eq!(
        reason(producer.buy(intent(1, 2, 2, 1)).unwrap()),
        RejectReason::Closed
    );
}

#[test]
fn stock_limit_and_duplicate_rejections() {
    let catalog = Catalog::builder()
        .group(GroupId(9), 3)
        .sku(SkuSpec::new(SkuId(1), 4).limit(2).group(GroupId(9)))
        .sku(SkuSpec::new(SkuId(2), 4).limit(2).group(GroupId(9)))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).start().unwrap();
    let mut producer = engine.producer();
    let first = *producer.buy(intent(1, 10, 1, 2)).unwrap().order().unwrap();
    assert_eq!(first.quantity, 2);
    assert_eq!(
        reason(producer.buy(intent(1, 10, 1, 2)).unwrap()),
        RejectReason::Duplicate(first.id)
    );
    assert_eq!(
        reason(producer.buy(intent(1, 11, 1, 1)).unwrap()),
        RejectReason::UserLimit,
        "per-SKU limit"
    );
    assert!(producer.buy(intent(1, 12, 2, 1)).unwrap().order().is_some());
    assert_eq!(
        reason(producer.buy(intent(1, 13, 2, 1)).unwrap()),
        RejectReason::UserLimit,
        "group limit of 3 across both SKUs"
    );
    assert!(producer.buy(intent(2, 1, 1, 1)).unwrap().order().is_some());
    assert_eq!(
        reason(producer.buy(intent(3, 1, 1, 2)).unwrap()),
        RejectReason::InsufficientStock
    );
    assert!(producer.buy(intent(3, 2, 1, 1)).unwrap().order().is_some());
    // SKU 1 is sold out now; whether the gate or the shard answers, the reason is SoldOut.
    assert_eq!(
        reason(producer.buy(intent(4, 1, 1, 1)).unwrap()),
        RejectReason::SoldOut
    );
    assert_eq!(engine.available(SkuId(1)), Some(0));
    let report = engine.shutdown();
    assert_eq!(report.confirmed_orders, 4);
    assert_eq!(report.confirmed_units, 5);
    let sku1 = &report.skus[0];
    assert_eq!((sku1.stock, sku1.held, sku1.available), (4, 4, 0));
}

#[test]
fn sold_out_gate_answers_at_submit_but_lets_retries_through() {
    let engine = Engine::builder(one_sku(3, 1)).start().unwrap();
    let mut producer = engine.producer();
    let mut orders = Vec::new();
    for user in 0..3 {
        orders.push(producer.buy(intent(user, 100 + user, 1, 1)).unwrap());
    }
    // The shard raised the sold-out flag when it confirmed the last unit, before it
    // published that outcome, so this submit must be answered by the gate.
    match producer.submit(intent(50, 1, 1, 1)).unwrap() {
        Submitted::Answered(outcome) => {
            assert_eq!(outcome.reason(), Some(RejectReason::SoldOut));
            assert_eq!(outcome.sequence(), None, "decided by the producer");
        }
        Submitted::Queued(_) => panic!("a sold-out SKU must be answered at submit"),
    }
    // Retries of confirmed intents reach the shard and learn their order.
    for (user, outcome) in orders.iter().enumerate() {
        let user = user as u64;
        let retry = producer.buy(intent(user, 100 + user, 1, 1)).unwrap();
        assert_eq!(
            retry.reason(),
            Some(RejectReason::Duplicate(outcome.order().unwrap().id))
        );
        assert!(retry.sequence().is_some(), "decided by the shard");
    }
}

#[test]
fn gate_off_sends_everything_to_the_shard() {
    let engine = Engine::builder(one_sku(1, 1))
        .sold_out_gate(false)
        .start()
        .unwrap();
    let mut producer = engine.producer();
    producer.buy(intent(1, 1, 1, 1)).unwrap();
    let outcome = producer.buy(intent(2, 1, 1, 1)).unwrap();
    assert_eq!(outcome.reason(), Some(RejectReason::SoldOut));
    assert!(outcome.sequence().is_some());
}

#[test]
fn engine_errors_are_named() {
    let err = |builder: flashsale::EngineBuilder| builder.start().unwrap_err();
    assert!(matches!(
        err(Engine::builder(one_sku(1, 1)).shards(2)),
        EngineError::Placement(PlacementError::MoreShardsThanUnits {
            shards: 2,
            units: 1
        })
    ));
    // Every size is range-checked by one rule (see tests/limits.rs for the whole table).
    for (builder, named) in [
        (Engine::builder(one_sku(1, 1)).shards(0), "shards"),
        (
            Engine::builder(one_sku(1, 1)).ring_capacity(0),
            "ring_capacity",
        ),
        (
            Engine::builder(one_sku(1, 1)).max_quantity(0),
            "max_quantity",
        ),
        (Engine::builder(one_sku(1, 1)).batch_max(0), "batch_max"),
    ] {
        assert!(matches!(
            err(builder),
            EngineError::OutOfRange { setting, .. } if setting == named
        ));
    }
}

#[test]
fn busy_hands_the_intent_back_and_nothing_is_lost() {
    let engine = Engine::builder(one_sku(1_000, u32::MAX))
        .ring_capacity(4)
        .start()
        .unwrap();
    let mut producer = engine.producer();
    let mut queued = 0;
    let mut busy = 0;
    for key in 0..100 {
        match producer.submit(intent(key, key, 1, 1)) {
            Ok(Submitted::Queued(_)) => queued += 1,
            Err(SubmitError::Busy(back)) => {
                assert_eq!(back, intent(key, key, 1, 1));
                busy += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(queued, 4, "at most ring_capacity in flight until polled");
    assert_eq!(busy, 96);
    let mut completions = 0;
    producer.drain(|_| completions += 1);
    assert_eq!(completions, 4);
    assert!(producer.submit(intent(500, 500, 1, 1)).is_ok());
    let report = engine.shutdown();
    assert_eq!(report.refusals.busy, 96);
}

/// A parking producer, made on one thread and used on another, sells through full lanes
/// by waiting for its outcomes (its thread parked, woken by the workers), and its waits
/// return at once when nothing is in flight; with the shards parking too (nothing spins).
#[test]
fn a_parking_producer_moved_to_another_thread_waits_for_every_outcome() {
    const INTENTS: u64 = 20_000 / MIRI_SHRINK;
    // Each SKU's stock is a quarter of the intents: both sell out.
    const STOCK: u32 = (INTENTS / 4) as u32;
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), STOCK))
        .sku(SkuSpec::new(SkuId(2), STOCK))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog)
        .shards(2)
        .ring_capacity(8)
        .wait_strategy(WaitStrategy::Park)
        .start()
        .unwrap();
    let mut producer = engine.parking_producer();
    // Nothing in flight: returns at once.
    producer.wait_for_arrivals();
    let seller = std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        let mut busy = 0u64;
        for key in 0..INTENTS {
            let mut intent = intent(key, key, 1 + (key % 2) as u32, 1);
            loop {
                match producer.submit(intent) {
                    Ok(Submitted::Queued(_)) => break,
                    Ok(Submitted::Answered(outcome)) => {
                        outcomes.push(outcome);
                        break;
                    }
                    Err(SubmitError::Busy(back)) => {
                        intent = back;
                        busy += 1;
                        if producer.poll(|done| outcomes.push(done.outcome)) == 0 {
                            producer.wait_for_arrivals();
                            assert!(producer.has_arrivals(), "woken with outcomes to take");
                        }
                    }
                    Err(refused) => panic!("refused: {refused}"),
                }
            }
        }
        while producer.in_flight() > 0 {
            producer.wait_for_arrivals();
            producer.poll(|done| outcomes.push(done.outcome));
        }
        producer.wait_for_arrivals();
        // `buy` waits the same way for its own outcome.
        let last = producer.buy(intent(INTENTS, INTENTS, 1, 1)).unwrap();
        (outcomes, busy, last)
    });
    let (outcomes, busy, last) = seller.join().unwrap();
    assert_eq!(outcomes.len() as u64, INTENTS, "one outcome per intent");
    assert!(busy > 0, "the lanes were full at times");
    let confirmed = outcomes.iter().filter(|o| o.order().is_some()).count();
    assert_eq!(confirmed, 2 * STOCK as usize, "both SKUs sold out exactly");
    assert_eq!(reason(last), RejectReason::SoldOut);
    let report = engine.shutdown();
    assert_eq!(report.confirmed_orders, 2 * u64::from(STOCK));
}

/// A buy that goes to wait on a waitlist gives its ring slot back: the poll that takes
/// its reply hands out nothing, and `wait_for_arrivals` then returns at once, so a `Busy`
/// submit goes through instead of waiting for the waiting buy's outcome (which comes only
/// when a unit does, or the sale closes).
#[test]
fn wait_for_arrivals_returns_when_a_waiting_buy_freed_the_lane() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1).waitlist(10))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog)
        .ring_capacity(1)
        .wait_strategy(WaitStrategy::Park)
        .start()
        .unwrap();
    let mut producer = engine.parking_producer();
    assert!(producer.buy(intent(1, 1, 1, 1)).unwrap().order().is_some());
    let (done, finished) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut handed_out = 0;
        for user in 2..6 {
            let mut next = intent(user, user, 1, 1);
            loop {
                match producer.submit_or_wait(next) {
                    Ok(Submitted::Queued(_)) => break,
                    Err(SubmitError::Busy(back)) => {
                        next = back;
                        let polled = producer.poll(|_| handed_out += 1);
                        if polled == 0 {
                            producer.wait_for_arrivals();
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        done.send(()).unwrap();
        (producer, handed_out)
    });
    // A hang detector, not a timing: the buys queue in microseconds.
    finished
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("every buy queued while the earlier ones waited");
    let (mut producer, handed_out) = waiter.join().unwrap();
    assert_eq!(handed_out, 0, "the waiting buys are not decided yet");
    let report = engine.shutdown();
    let mut closed = 0;
    producer.drain(|completion| {
        assert_eq!(reason(completion.outcome), RejectReason::Closed);
        closed += 1;
    });
    assert_eq!(closed, 4, "shutdown answers the waiting buys");
    assert_eq!(report.confirmed_orders, 1);
}

#[test]
fn shutdown_drains_accepted_intents_and_refuses_later_ones() {
    const INTENTS: u64 = 1000 / MIRI_SHRINK;
    const STOCK: u64 = INTENTS / 10;
    for wait in [WaitStrategy::Spin, WaitStrategy::Yield, WaitStrategy::Park] {
        let engine = Engine::builder(one_sku(STOCK as u32, u32::MAX))
            .ring_capacity(1024)
            .wait_strategy(wait)
            .sold_out_gate(false)
            .start()
            .unwrap();
        let mut producer = engine.producer();
        for key in 0..INTENTS {
            assert_eq!(
                producer.submit(intent(key, key, 1, 1)).unwrap(),
                Submitted::Queued(flashsale::Ticket(key as u32))
            );
        }
        let report = engine.shutdown();
        let mut completions = Vec::new();
        producer.poll(|completion| completions.push(completion));
        assert_eq!(
            completions.len() as u64,
            INTENTS,
            "{wait:?}: every accepted intent answered"
        );
        assert_eq!(producer.in_flight(), 0);
        assert_eq!(report.confirmed_orders, STOCK);
        assert_eq!(report.rejected(RejectReason::SoldOut), INTENTS - STOCK);
        assert_eq!(
            producer.submit(intent(1, 5000, 1, 1)),
            Err(SubmitError::ShutDown(intent(1, 5000, 1, 1)))
        );
        assert_eq!(
            producer.buy(intent(1, 5001, 1, 1)),
            Err(SubmitError::ShutDown(intent(1, 5001, 1, 1)))
        );
    }
}

#[test]
fn shutdown_racing_many_submitters_loses_nothing() {
    let engine = Engine::builder(one_sku((1_000_000 / MIRI_SHRINK) as u32, u32::MAX))
        .sold_out_gate(false)
        .ring_capacity(64)
        .start()
        .unwrap();
    let producers: Vec<_> = (0..3).map(|_| engine.producer()).collect();
    // Every submitter has had intents accepted before the shutdown starts (a count, not a
    // sleep): the race is with submitters in full flow. A submitter that panics is seen
    // by the wait below (its thread finished), so the test fails rather than hangs.
    const ACCEPTED_BEFORE_SHUTDOWN: u64 = 1_000 / MIRI_SHRINK;
    let under_way = std::sync::Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(thread, mut producer)| {
            let under_way = under_way.clone();
            std::thread::spawn(move || {
                let mut accepted = 0u64;
                let mut answered = 0u64;
                let mut key = 0u64;
                let mut last_progress = std::time::Instant::now();
                let mut reached = false;
                loop {
                    let next = intent(thread as u64, key, 1, 1);
                    match producer.submit(next) {
                        Ok(Submitted::Queued(_)) => {
                            accepted += 1;
                            last_progress = std::time::Instant::now();
                        }
                        Ok(Submitted::Answered(_)) => unreachable!("gate is off"),
                        Err(SubmitError::Busy(_)) => {
                            // On 2 shared cores the shard may be descheduled for a while;
                            // only a shard that takes nothing for 30 s is stuck.
                            assert!(
                                last_progress.elapsed() < std::time::Duration::from_secs(30),
                                "{accepted} accepted, then nothing for 30 s: the shard is stuck"
                            );
                        }
                        Err(SubmitError::ShutDown(back)) => {
                            assert_eq!(back, next);
                            break;
                        }
                        Err(SubmitError::ShardFailed(_)) => unreachable!(),
                    }
                    key += 1;
                    answered += producer.poll(|_| {}) as u64;
                    if accepted >= ACCEPTED_BEFORE_SHUTDOWN && !reached {
                        reached = true;
                        under_way.fetch_add(1, Ordering::Release);
                    }
                }
                answered += producer.drain(|_| {}) as u64;
                assert_eq!(
                    accepted, answered,
                    "exactly one outcome per accepted intent"
                );
                accepted
            })
        })
        .collect();
    while under_way.load(Ordering::Acquire) < threads.len() {
        assert!(
            !threads.iter().any(|t| t.is_finished()),
            "a submitter stopped before the shutdown"
        );
        std::thread::yield_now();
    }
    let report = engine.shutdown();
    let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(accepted >= 3 * ACCEPTED_BEFORE_SHUTDOWN, "{accepted}");
    assert_eq!(report.commands_applied, accepted);
    assert_eq!(report.confirmed_orders, accepted);
}

#[test]
fn dropping_the_engine_stops_its_threads_and_refuses_submits() {
    let engine = Engine::builder(one_sku(10, 1)).start().unwrap();
    let mut producer = engine.producer();
    producer.buy(intent(1, 1, 1, 1)).unwrap();
    drop(engine); // joins the shard threads; must not hang
    assert!(matches!(
        producer.submit(intent(2, 1, 1, 1)),
        Err(SubmitError::ShutDown(_))
    ));
}

#[test]
fn panicking_sink_fails_its_shard_only() {
    // Two ungrouped SKUs on two shards; shard 0's sink panics on its second order.
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 100))
        .sku(SkuSpec::new(SkuId(2), 100))
        .build()
        .unwrap();
    let sunk = Arc::new(AtomicUsize::new(0));
    let sunk_by_sink = sunk.clone();
    let engine = Engine::builder(catalog)
        .shards(2)
        .sold_out_gate(false)
        .order_sink(move |shard: ShardId| {
            let sunk = sunk_by_sink.clone();
            let mut seen = 0;
            move |_order: &flashsale::Order| {
                seen += 1;
                if shard == ShardId(0) && seen == 2 {
                    panic!("payment service down");
                }
                sunk.fetch_add(1, Ordering::Relaxed);
            }
        })
        .start()
        .unwrap();
    let mut producer = engine.producer();
    // Queue many intents on shard 0 at once: the ones behind the panicking order must be
    // answered ShardFailed, not left hanging.
    for key in 0..20 {
        producer.submit(intent(key, key, 1, 1)).unwrap();
    }
    let mut outcomes = Vec::new();
    producer.drain(|completion| outcomes.push(completion.outcome));
    assert_eq!(outcomes.len(), 20);
    assert!(outcomes[0].order().is_some());
    assert!(
        outcomes[1].order().is_some(),
        "the order the sink failed on is still confirmed"
    );
    assert!(
        outcomes[2..]
            .iter()
            .all(|outcome| outcome.reason() == Some(RejectReason::ShardFailed)),
        "{outcomes:?}"
    );
    assert!(matches!(
        producer.submit(intent(99, 99, 1, 1)),
        Err(SubmitError::ShardFailed(_))
    ));
    assert!(matches!(
        producer.buy(intent(99, 99, 1, 1)),
        Err(SubmitError::ShardFailed(_))
    ));
    // The other shard goes on.
    assert!(producer.buy(intent(1, 1, 2, 1)).unwrap().order().is_some());
    // Why is named, with the sink's own message, while the engine runs and after.
    let why = vec![(
        ShardId(0),
        ShardFailure::SinkPanicked("payment service down".into()),
    )];
    assert_eq!(engine.control().failures(), why);
    let report = engine.shutdown();
    assert_eq!(report.failed_shards, vec![ShardId(0)]);
    assert_eq!(report.failures, why);
    assert!(
        report
            .to_string()
            .contains("FAILED shard 0: the order sink panicked: payment service down"),
        "{report}"
    );
    assert_eq!(report.rejected(RejectReason::ShardFailed), 18);
    assert_eq!(report.refusals.shard_failed, 2);
    assert_eq!(
        sunk.load(Ordering::Relaxed),
        2,
        "one on shard 0, one on shard 1"
    );
}

#[test]
fn same_commands_give_identical_outcomes() {
    let run = || {
        let catalog = Catalog::builder()
            .group(GroupId(1), 2)
            .sku(SkuSpec::new(SkuId(1), 30).limit(2).group(GroupId(1)))
            .sku(SkuSpec::new(SkuId(2), 30).limit(1).group(GroupId(1)))
            .sku(SkuSpec::new(SkuId(3), 5))
            .build()
            .unwrap();
        let engine = Engine::builder(catalog)
            .shards(2)
            .sold_out_gate(false)
            .start()
            .unwrap();
        let mut producer = engine.producer();
        let mut outcomes = Vec::new();
        let mut state = 7u64;
        for _ in 0..2_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let user = (state >> 33) % 50;
            let key = (state >> 20) % 4;
            let sku = 1 + ((state >> 40) % 3) as u32;
            let quantity = 1 + ((state >> 50) % 2) as u32;
            outcomes.push(producer.buy(intent(user, key, sku, quantity)).unwrap());
        }
        outcomes
    };
    assert_eq!(run(), run());
}

/// The invariants (no oversell, one outcome per accepted intent, limits, idempotency),
/// checked on every outcome of a many-thread run.
#[test]
fn stress_many_producers_tiny_stock_invariants_hold() {
    const PRODUCERS: u64 = 4;
    let intents_per_producer: u64 = if cfg!(miri) { 500 } else { 250_000 };
    const USERS: u64 = 3_000;
    let catalog = Catalog::builder()
        .group(GroupId(1), 3)
        .sku(SkuSpec::new(SkuId(1), 40).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(2), 25).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(3), 60).limit(1))
        .build()
        .unwrap();
    for gate in [true, false] {
        let engine = Engine::builder(catalog.clone())
            .shards(2)
            .ring_capacity(256)
            .max_quantity(3)
            .sold_out_gate(gate)
            .start()
            .unwrap();
        let threads: Vec<_> = (0..PRODUCERS)
            .map(|thread| {
                let mut producer = engine.producer();
                std::thread::spawn(move || {
                    let mut state = thread.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut next = || {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state
                    };
                    let mut completions: Vec<Completion> = Vec::new();
                    let mut submitted = Vec::new();
                    for index in 0..intents_per_producer {
                        let random = next();
                        let user = random % USERS;
                        // One key in eight is a retry of this user's key 0.
                        let key = if random >> 60 == 0 {
                            0
                        } else {
                            (thread << 40) | index
                        };
                        let sku = 1 + ((random >> 20) % 3) as u32;
                        let quantity = ((random >> 30) % 4) as u32; // 0 is malformed
                        let intent = intent(user, key, sku, quantity);
                        submit_one(&mut producer, intent, &mut completions);
                        submitted.push(intent);
                        if index % 64 == 0 {
                            producer.poll(|c| completions.push(c));
                        }
                    }
                    producer.drain(|c| completions.push(c));
                    (submitted, completions)
                })
            })
            .collect();
        let mut all = Vec::new();
        for thread in threads {
            let (submitted, completions) = thread.join().unwrap();
            // Invariant 3: exactly one outcome per intent (each producer's completions are
            // the same multiset as its submissions).
            assert_eq!(submitted.len(), completions.len());
            let mut expected: HashMap<Intent, i64> = HashMap::new();
            for intent in &submitted {
                *expected.entry(*intent).or_default() += 1;
            }
            for completion in &completions {
                *expected.entry(completion.intent).or_default() -= 1;
            }
            assert!(expected.values().all(|&count| count == 0));
            all.extend(completions);
        }
        let report = engine.shutdown();
        assert_eq!(report.outcomes(), PRODUCERS * intents_per_producer);
        check_invariants(&catalog, &all, &report);
    }
}

/// Regression (found by the `engine_threads` fuzzer): one key used for two products on two
/// shards made an order on each, while on one shard the second was a Duplicate. Keys are
/// now scoped to a product, so the answers are the same at any shard count.
#[test]
fn a_key_is_scoped_to_its_product_at_any_shard_count() {
    let catalog = Catalog::builder()
        .group(GroupId(1), 2)
        .sku(SkuSpec::new(SkuId(1), 10).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(2), 10).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(3), 10).limit(2))
        .build()
        .unwrap();
    let mut answers = Vec::new();
    for shards in [1, 2] {
        let engine = Engine::builder(catalog.clone())
            .shards(shards)
            .start()
            .unwrap();
        let mut producer = engine.producer();
        let first = producer.buy(intent(7, 1, 1, 1)).unwrap();
        let id = first.order().expect("confirmed").id;
        // Another variant of the same product, same key: the same order.
        assert_eq!(
            producer.buy(intent(7, 1, 2, 1)).unwrap().reason(),
            Some(RejectReason::Duplicate(id))
        );
        // Another product, same key: another attempt.
        let other = producer.buy(intent(7, 1, 3, 1)).unwrap();
        assert!(other.order().is_some(), "{shards} shards: {other:?}");
        answers.push((
            first.order().unwrap().quantity,
            other.order().unwrap().quantity,
        ));
        let report = engine.shutdown();
        assert_eq!(report.confirmed_units, 2);
    }
    assert_eq!(answers[0], answers[1]);
}

/// An engine names the shards whose stock is more than their order books made room for;
/// such a shard's book grows mid-sale and keeps every order, idempotency included.
#[test]
fn a_shard_short_of_order_room_is_named_and_its_book_grows_without_loss() {
    let roomy = Engine::builder(one_sku(5_000, 1)).start().unwrap();
    assert!(roomy.order_room_short().is_empty(), "room for the stock");
    drop(roomy);
    // Room for 100 orders rounds up to 128 (the book's table is a power of two).
    let engine = Engine::builder(one_sku(5_000, 1))
        .order_capacity(100)
        .start()
        .unwrap();
    assert_eq!(engine.order_room_short(), vec![(ShardId(0), 5_000, 128)]);
    let catalog = one_sku(5_000, 1);
    let placement = flashsale::Placement::new(&catalog, 1).unwrap();
    // Without an engine (as a cluster node asks), the same answer.
    assert_eq!(
        flashsale::ShardCore::order_room_short(&catalog, &placement, Some(100)),
        engine.order_room_short()
    );
    assert!(flashsale::ShardCore::order_room_short(&catalog, &placement, None).is_empty());
    for room in [None, Some(0), Some(100), Some(4_096)] {
        let core =
            flashsale::ShardCore::with_order_capacity(&catalog, &placement, ShardId(0), room);
        assert_eq!(
            flashsale::ShardCore::order_room_for(5_000, room),
            core.order_room(),
            "{room:?}"
        );
    }
    assert_eq!(flashsale::ShardCore::order_room_for(5_000, None), 8_192);
    assert_eq!(
        flashsale::ShardCore::order_room_for(u64::MAX, None),
        1 << 22
    );
    let mut producer = engine.producer();
    let mut completions = Vec::new();
    let mut orders = HashMap::new();
    // Past 128, 256, 512 and 1,024 orders the book doubles; then every buyer retries.
    for retry in [false, true] {
        for user in 0..2_000 {
            submit_one(&mut producer, intent(user, user, 1, 1), &mut completions);
        }
        producer.drain(|completion| completions.push(completion));
        assert_eq!(completions.len(), 2_000);
        for completion in completions.drain(..) {
            let user = completion.intent.user.0;
            match (retry, completion.outcome) {
                (false, Outcome::Confirmed(order)) => {
                    assert!(orders.insert(user, order.id).is_none(), "one order each");
                }
                (
                    true,
                    Outcome::Rejected {
                        reason: RejectReason::Duplicate(id),
                        ..
                    },
                ) => assert_eq!(orders.get(&user), Some(&id), "the retry finds its order"),
                other => panic!("retry {retry}: {other:?}"),
            }
        }
    }
    let report = engine.shutdown();
    assert_eq!(report.confirmed_orders, 2_000);
}
