//! The life of a unit through the real engine: payments, cancellations and expired holds
//! through [`Control`](flashsale::Control), waitlists served by releases and restocks, the
//! sold-out flag lowered when units come back, opening draws decided when their window
//! closes, and every waiting intent answered when the sale or the engine closes.

use std::time::{Duration, Instant};

mod common;

use common::intent;
use flashsale::{
    Catalog, Completion, ControlError, Engine, ManualClock, Outcome, Policy, RejectReason,
    SaleWindow, SkuId, SkuSpec, Submitted,
};

fn confirmed(outcome: Outcome) -> flashsale::Order {
    *outcome
        .order()
        .unwrap_or_else(|| panic!("expected an order, got {outcome:?}"))
}

/// Polls `producer` until `count` completions arrived (or 10 s passed, which fails).
fn wait_for(producer: &mut flashsale::Producer, count: usize) -> Vec<Completion> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < count {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {got:?} arrived"
        );
        if producer.poll(|completion| got.push(completion)) == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

#[test]
fn pay_cancel_and_their_refusals() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 2).limit(2))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).start().unwrap();
    let control = engine.control();
    let mut producer = engine.producer();
    let first = confirmed(producer.buy(intent(1, 1, 1, 1)).unwrap());
    let second = confirmed(producer.buy(intent(2, 1, 1, 1)).unwrap());
    assert_eq!(control.pay(first.id), Ok(()));
    assert_eq!(control.pay(first.id), Err(ControlError::AlreadyPaid));
    assert_eq!(control.cancel(first.id), Err(ControlError::AlreadyPaid));
    assert_eq!(engine.available(SkuId(1)), Some(0));
    assert_eq!(control.cancel(second.id), Ok(()));
    assert_eq!(
        engine.available(SkuId(1)),
        Some(1),
        "the unit is back on sale"
    );
    assert_eq!(control.pay(second.id), Err(ControlError::Cancelled));
    let unknown = flashsale::OrderId::new(flashsale::ShardId(0), 99);
    assert_eq!(
        control.pay(unknown),
        Err(ControlError::UnknownOrder(unknown))
    );
    let elsewhere = flashsale::OrderId::new(flashsale::ShardId(7), 0);
    assert_eq!(
        control.cancel(elsewhere),
        Err(ControlError::UnknownOrder(elsewhere))
    );
    assert_eq!(
        control.restock(SkuId(9), 1),
        Err(ControlError::UnknownSku(SkuId(9)))
    );
    assert_eq!(
        control.reduce(SkuId(1), 2),
        Err(ControlError::NotEnoughAvailable { available: 1 })
    );
    // The buyer whose order was cancelled may buy again: cancelled units do not count.
    assert!(producer.buy(intent(2, 2, 1, 1)).unwrap().order().is_some());
    let report = engine.shutdown();
    let sku = &report.skus[0];
    assert_eq!(
        (sku.sold, sku.held, sku.cancelled, sku.available),
        (1, 1, 1, 0)
    );
    assert_eq!(control.pay(second.id), Err(ControlError::ShutDown));
}

/// On a manual clock: nothing expires until the clock passes the deadline, so the test
/// races no real time (a second order's 20 ms hold survives however slow the machine).
#[test]
fn an_unpaid_hold_expires_and_its_payment_is_refused() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1).hold(20_000_000))
        .build()
        .unwrap();
    let clock = ManualClock::new(1_000);
    let engine = Engine::builder(catalog)
        .manual_clock(clock.clone())
        .start()
        .unwrap();
    let control = engine.control();
    let mut producer = engine.producer();
    let order = confirmed(producer.buy(intent(1, 1, 1, 1)).unwrap());
    assert_eq!(order.sequence, 0);
    // One ns before the deadline: still held, whatever the wall clock did meanwhile.
    clock.advance(20_000_000 - 1);
    assert_eq!(
        producer.buy(intent(9, 1, 1, 1)).unwrap().reason(),
        Some(RejectReason::SoldOut)
    );
    // At the deadline the shard expires it by itself (woken by the clock, it ticks).
    clock.advance(1);
    let start = Instant::now();
    while engine.available(SkuId(1)) != Some(1) {
        assert!(start.elapsed() < Duration::from_secs(10), "never expired");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(control.pay(order.id), Err(ControlError::HoldExpired));
    // The unit went back on sale once, to one new buyer: no second sale of it.
    let again = confirmed(producer.buy(intent(2, 1, 1, 1)).unwrap());
    assert_eq!(control.pay(again.id), Ok(()));
    assert_eq!(
        producer.buy(intent(3, 1, 1, 1)).unwrap().reason(),
        Some(RejectReason::SoldOut)
    );
    let report = engine.shutdown();
    let sku = &report.skus[0];
    assert_eq!((sku.sold, sku.expired, sku.held), (1, 1, 0));
}

#[test]
fn the_waitlist_gets_released_and_restocked_units_in_order() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1).limit(1).waitlist(2))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).start().unwrap();
    let control = engine.control();
    let mut buyer = engine.producer();
    let mut waiting = engine.producer();
    let taken = confirmed(buyer.buy(intent(1, 1, 1, 1)).unwrap());
    // Sold out: a plain press is turned away at once by the sold-out flag.
    assert_eq!(
        buyer.submit(intent(9, 1, 1, 1)).unwrap(),
        Submitted::Answered(Outcome::Rejected {
            reason: RejectReason::SoldOut,
            sequence: None
        })
    );
    // Two wait (they pass the flag), a third finds the waitlist full. (One producer, so
    // the shard applies them in this order.)
    for (ticket, user) in [2, 3, 4].into_iter().enumerate() {
        assert_eq!(
            waiting.submit_or_wait(intent(user, 1, 1, 1)).unwrap(),
            Submitted::Queued(flashsale::Ticket(ticket as u32))
        );
    }
    let full = wait_for(&mut waiting, 1);
    assert_eq!(
        full[0].ticket,
        flashsale::Ticket(2),
        "the ticket names the submit"
    );
    assert_eq!(full[0].intent.user.0, 4);
    assert_eq!(full[0].outcome.reason(), Some(RejectReason::WaitlistFull));
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(waiting.poll(|_| {}), 0, "nothing released yet");
    // A cancellation goes to the first in line.
    control.cancel(taken.id).unwrap();
    let first = wait_for(&mut waiting, 1);
    assert_eq!(confirmed(first[0].outcome).user.0, 2);
    // A restock of 1 to the second.
    control.restock(SkuId(1), 1).unwrap();
    let second = wait_for(&mut waiting, 1);
    assert_eq!(confirmed(second[0].outcome).user.0, 3);
    // A restock with nobody waiting goes on sale, and lowers the sold-out flag.
    control.restock(SkuId(1), 1).unwrap();
    assert_eq!(engine.available(SkuId(1)), Some(1));
    assert!(buyer.buy(intent(9, 2, 1, 1)).unwrap().order().is_some());
    let report = engine.shutdown();
    assert_eq!(report.skus[0].waitlist_filled, 2);
    assert_eq!(report.skus[0].restocked, 2);
    assert_eq!(report.rejected(RejectReason::WaitlistFull), 1);
}

#[test]
fn closing_the_sale_or_the_engine_answers_everyone_waiting() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1).waitlist(10))
        .sku(SkuSpec::new(SkuId(2), 1).waitlist(10))
        .build()
        .unwrap();
    let engine = Engine::builder(catalog).start().unwrap();
    let control = engine.control();
    let mut producer = engine.producer();
    for sku in [1, 2] {
        confirmed(producer.buy(intent(1, u64::from(sku), sku, 1)).unwrap());
    }
    for user in 2..5 {
        for sku in [1, 2] {
            producer
                .submit_or_wait(intent(user, u64::from(sku), sku, 1))
                .unwrap();
        }
    }
    control.close_sale(SkuId(1)).unwrap();
    let closed = wait_for(&mut producer, 3);
    assert!(
        closed
            .iter()
            .all(|c| c.intent.sku == SkuId(1) && c.outcome.reason() == Some(RejectReason::Closed))
    );
    assert_eq!(
        producer.buy_or_wait(intent(9, 9, 1, 1)).unwrap().reason(),
        Some(RejectReason::Closed)
    );
    // Three still wait for SKU 2; shutting down answers them.
    assert_eq!(producer.in_flight(), 3);
    let report = engine.shutdown();
    let mut last = Vec::new();
    producer.drain(|completion| last.push(completion));
    assert_eq!(last.len(), 3);
    assert!(
        last.iter()
            .all(|c| c.outcome.reason() == Some(RejectReason::Closed))
    );
    assert_eq!(report.rejected(RejectReason::Closed), 7);
}

#[test]
fn an_opening_draw_runs_inside_the_engine() {
    const STOCK: u32 = 5;
    const BUYERS: u64 = 40;
    let catalog = Catalog::builder()
        .sku(
            SkuSpec::new(SkuId(1), STOCK)
                .limit(1)
                .policy(Policy::OpeningDraw {
                    window_ns: 200_000_000,
                    seed: 42,
                })
                .window(SaleWindow {
                    opens_at_ns: 0,
                    closes_at_ns: u64::MAX,
                }),
        )
        .build()
        .unwrap();
    // Four ring slots per producer: pooled intents give theirs back while they wait. On a
    // manual clock the window stays open until every press is in, however slow they are.
    let clock = ManualClock::new(0);
    let engine = Engine::builder(catalog)
        .ring_capacity(4)
        .manual_clock(clock.clone())
        .start()
        .unwrap();
    let mut producers: Vec<_> = (0..2).map(|_| engine.producer()).collect();
    let mut answered_at_once = Vec::new();
    for user in 0..BUYERS {
        let producer = &mut producers[(user % 2) as usize];
        // Everyone presses twice; the second press is no second ticket.
        for key in 0..2 {
            common::submit_one(producer, intent(user, key, 1, 1), &mut answered_at_once);
        }
    }
    for producer in &mut producers {
        producer.poll(|completion| answered_at_once.push(completion));
        assert!(
            producer.in_flight() as u64 >= BUYERS / 2,
            "{} tickets wait per producer, more than its 4 ring slots",
            producer.in_flight()
        );
    }
    // The window closes: the pool is drawn.
    clock.advance(200_000_000);
    let mut all = answered_at_once;
    for producer in &mut producers {
        producer.drain(|completion| all.push(completion));
    }
    assert_eq!(all.len() as u64, BUYERS * 2);
    let wins = all.iter().filter(|c| c.outcome.order().is_some()).count();
    assert_eq!(wins, STOCK as usize, "exactly the stock is sold");
    let pooled_twice = all
        .iter()
        .filter(|c| c.outcome.reason() == Some(RejectReason::AlreadyPooled))
        .count();
    assert_eq!(pooled_twice as u64, BUYERS);
    let report = engine.shutdown();
    assert_eq!(report.pools.len(), 1);
    assert_eq!(report.pools[0].tickets, BUYERS);
    assert!(report.pools[0].served);
    assert_eq!(
        report.pools[0].policy,
        Policy::OpeningDraw {
            window_ns: 200_000_000,
            seed: 42
        }
    );
}

/// Three producers press (half of them asking to wait) while a payment desk pays, cancels
/// or ignores every order as the sink reports it, and restocks now and then; holds expire
/// on two SKUs. Afterwards: one outcome per intent, units conserved per SKU, and every
/// confirmed unit accounted for exactly once as held, sold, expired or cancelled.
#[test]
fn buyers_and_a_payment_desk_at_once() {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, Ordering};
    const PRESSES: u64 = if cfg!(miri) { 100 } else { 3_000 };
    let catalog = Catalog::builder()
        .group(flashsale::GroupId(1), 3)
        .skus((1..=4u32).map(|id| {
            let spec = SkuSpec::new(SkuId(id), 40).limit(2).waitlist(16);
            let spec = if id <= 2 {
                spec.group(flashsale::GroupId(1))
            } else {
                spec
            };
            if id % 2 == 0 {
                spec.hold(2_000_000)
            } else {
                spec
            }
        }))
        .build()
        .unwrap();
    let (order_tx, order_rx) = crossbeam_channel::unbounded::<flashsale::Order>();
    let engine = Engine::builder(catalog.clone())
        .shards(2)
        .ring_capacity(64)
        .order_sink(move |_| {
            let order_tx = order_tx.clone();
            move |order: &flashsale::Order| {
                let _ = order_tx.send(*order);
            }
        })
        .start()
        .unwrap();
    let control = engine.control();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let desk = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut paid: HashMap<SkuId, u64> = HashMap::new();
            let mut cancelled: HashMap<SkuId, u64> = HashMap::new();
            let mut restocked: HashMap<SkuId, u64> = HashMap::new();
            let mut paid_ids = HashSet::new();
            let mut seen = 0u64;
            while !stop.load(Ordering::Acquire) {
                let Ok(order) = order_rx.recv_timeout(Duration::from_millis(1)) else {
                    continue;
                };
                seen += 1;
                match seen % 5 {
                    0..=2 => match control.pay(order.id) {
                        Ok(()) => {
                            assert!(paid_ids.insert(order.id), "paid twice");
                            *paid.entry(order.sku).or_default() += u64::from(order.quantity);
                        }
                        Err(ControlError::HoldExpired) => {}
                        Err(other) => panic!("pay: {other:?}"),
                    },
                    3 => match control.cancel(order.id) {
                        Ok(()) => {
                            *cancelled.entry(order.sku).or_default() += u64::from(order.quantity)
                        }
                        Err(ControlError::HoldExpired) => {}
                        Err(other) => panic!("cancel: {other:?}"),
                    },
                    _ => {}
                }
                if seen.is_multiple_of(25) {
                    let sku = SkuId(1 + (seen / 25 % 4) as u32);
                    control.restock(sku, 1).unwrap();
                    *restocked.entry(sku).or_default() += 1;
                }
            }
            (paid, cancelled, restocked)
        })
    };
    let producers: Vec<_> = (0..3u64)
        .map(|thread| {
            let mut producer = engine.producer();
            std::thread::spawn(move || {
                let mut completions = Vec::new();
                let mut submitted = 0u64;
                for press in 0..PRESSES {
                    let user = (press * 7 + thread * 13) % 500;
                    let intent =
                        intent(user, press, 1 + (press % 4) as u32, 1 + (press % 2) as u32);
                    common::submit_one_with(
                        &mut producer,
                        intent,
                        press % 2 == 0,
                        &mut completions,
                    );
                    submitted += 1;
                    producer.poll(|c| completions.push(c));
                }
                (producer, completions, submitted)
            })
        })
        .collect();
    let mut finished: Vec<_> = producers.into_iter().map(|t| t.join().unwrap()).collect();
    // Let the desk catch up with the last orders, then stop it.
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Release);
    let (paid, cancelled, restocked) = desk.join().unwrap();
    let report = engine.shutdown();
    let mut all = Vec::new();
    let mut submitted = 0;
    for (producer, completions, count) in &mut finished {
        all.append(completions);
        producer.drain(|c| all.push(c));
        submitted += *count;
    }
    assert_eq!(all.len() as u64, submitted, "one outcome per intent");
    assert_eq!(report.outcomes(), submitted);
    let mut confirmed: HashMap<SkuId, u64> = HashMap::new();
    for completion in &all {
        if let Some(order) = completion.outcome.order() {
            *confirmed.entry(order.sku).or_default() += u64::from(order.quantity);
        }
    }
    for (spec, sku) in catalog.skus().iter().zip(&report.skus) {
        let id = spec.id;
        assert_eq!(
            u64::from(sku.available) + u64::from(sku.held) + u64::from(sku.sold),
            u64::from(spec.stock) + sku.restocked - sku.reduced,
            "conservation of {id:?}"
        );
        assert_eq!(
            confirmed.get(&id).copied().unwrap_or(0),
            u64::from(sku.held) + u64::from(sku.sold) + sku.expired + sku.cancelled,
            "every confirmed unit of {id:?} is held, sold, expired or cancelled"
        );
        assert_eq!(u64::from(sku.sold), paid.get(&id).copied().unwrap_or(0));
        assert_eq!(sku.cancelled, cancelled.get(&id).copied().unwrap_or(0));
        assert_eq!(sku.restocked, restocked.get(&id).copied().unwrap_or(0));
        if spec.hold_ns.is_none() {
            assert_eq!(sku.expired, 0);
        }
    }
    let total =
        |f: fn(&flashsale::report::SkuReport) -> u64| report.skus.iter().map(f).sum::<u64>();
    eprintln!(
        "sold {}, cancelled {}, expired {}, restocked {}, from the waitlist {}",
        total(|s| u64::from(s.sold)),
        total(|s| s.cancelled),
        total(|s| s.expired),
        total(|s| s.restocked),
        total(|s| s.waitlist_filled)
    );
    assert!(total(|s| u64::from(s.sold)) > 0 && total(|s| s.cancelled) > 0);
}

/// The order sink gets every confirmed order of its shard once, in the shard's order
/// (order numbers 0, 1, 2, ... with no gap), also when a buy's command first runs expired
/// holds whose units fill waitlisted intents: those were numbered before the buy's own
/// order, so they reach the sink before it. Two SKUs with short holds and waitlists and
/// one with plenty of stock, two producers on one shard, ten runs (the interleaving that exposed the old order is timing-dependent).
#[test]
fn the_sink_gets_each_shards_orders_in_their_order() {
    use std::sync::{Arc, Mutex};
    const RUNS: u64 = if cfg!(miri) { 1 } else { 10 };
    const PRESSES: u64 = if cfg!(miri) { 60 } else { 2_000 };
    let mut filled = 0;
    for run in 0..RUNS {
        let catalog = Catalog::builder()
            .skus((1..=2u32).map(|id| {
                SkuSpec::new(SkuId(id), 6)
                    .limit(3)
                    .waitlist(32)
                    .hold(50_000 + 25_000 * u64::from(id))
            }))
            // Plenty of stock and no waitlist: most of its buys are confirmed at once.
            .sku(SkuSpec::new(SkuId(3), 1_000_000))
            .build()
            .unwrap();
        let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let sink_seen = seen.clone();
        let engine = Engine::builder(catalog)
            .shards(1)
            .ring_capacity(32)
            .order_sink(move |_| {
                let seen = sink_seen.clone();
                move |order: &flashsale::Order| {
                    seen.lock()
                        .unwrap()
                        .push((order.id.number(), order.sequence));
                }
            })
            .start()
            .unwrap();
        let producers: Vec<_> = (0..2u64)
            .map(|thread| {
                let mut producer = engine.producer();
                std::thread::spawn(move || {
                    let mut completions = Vec::new();
                    for press in 0..PRESSES {
                        let user = (press * 11 + thread * 5 + run) % 300;
                        let sku = 1 + ((press + thread) % 3) as u32;
                        let key = press * 2 + thread;
                        common::submit_one_with(
                            &mut producer,
                            intent(user, key, sku, 1),
                            press % 3 != 0,
                            &mut completions,
                        );
                        producer.poll(|c| completions.push(c));
                    }
                    producer.drain(|c| completions.push(c));
                    completions
                })
            })
            .collect();
        let confirmed: usize = producers
            .into_iter()
            .map(|t| {
                let completions = t.join().unwrap();
                completions
                    .iter()
                    .filter(|c| c.outcome.order().is_some())
                    .count()
            })
            .sum();
        let report = engine.shutdown();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            confirmed,
            "run {run}: the sink saw every order once"
        );
        for (expected, (number, sequence)) in seen.iter().enumerate() {
            assert_eq!(
                *number, expected as u64,
                "run {run}: order 0-{number} (sequence {sequence}) reached the sink in \
                 place of 0-{expected}"
            );
        }
        // Whether expired holds filled waitlists in a run depends on its timing (under
        // ThreadSanitizer a run can be too slow for any SKU to sell out before its first
        // holds expire); across the runs they must have.
        filled += report.skus.iter().map(|s| s.waitlist_filled).sum::<u64>();
    }
    assert!(
        filled > 0,
        "waitlists were filled by expired holds in some run"
    );
}
