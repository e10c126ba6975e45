//! loom models of every place where threads meet. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`.
//!
//! | model | covers |
//! |---|---|
//! | `ring_wraps_around_full_and_empty` | ring `head`/`tail` publish and consume across wrap-around, full and empty |
//! | `ring_close_races_publish` | ring `CLOSED_BIT`: close vs compare-exchange publish, nothing lost or doubled |
//! | `ring_abandonment_is_seen_after_last_item` | ring `writer_dropped`: items published before the drop are read |
//! | `ring_reader_drop_is_seen_by_the_writer` | ring `reader_dropped`: the writer sees the drop; every value dropped exactly once |
//! | `gate_sees_confirmed_keys_with_the_flag` | gate flag (Release/Acquire) and filter bits |
//! | `engine_hands_an_outcome_back` | producer → worker → completion hand-off, lane registration, park/unpark |
//! | `engine_shutdown_races_submits` | shutdown vs submits: each accepted intent answered once, others refused |
//! | `engine_retry_after_sold_out_reaches_the_shard` | gate + filter across two producers and the worker |
//! | `counters_publish_while_read` | shard `Counters` and `ProducerCounters` (Relaxed, single writer) read while published: exact after join |
//! | `engine_available_while_deciding` | the live `available` levels a worker stores and `Engine::available` reads: stored before the outcome is published, so a buyer holding its order reads the new level |
//! | `engine_sink_panic_fails_the_shard` | shard `failed` flag (Release/Acquire): a racing submit is answered `ShardFailed` or refused, never lost or decided |
//! | `engine_control_races_shutdown` | control plane: command posted under the registry lock, generation bump, worker wake-up, reply slot and caller park/unpark, vs shutdown closing the registry |
//! | `engine_cancel_serves_a_waiting_buy` | a waiting buy's outcome delivered to its producer's lane by another thread's cancel; gate flag lowered (Release) when the unit comes back |
//! | `client_buy_resolves_through_the_pump` | the `AsyncClient` itself, under a runtime-free executor: its pump's start-up hand-over, lane lock and slot, the pump's `sleeping` flag (store, SeqCst fence, check / publish, SeqCst fence, load) woken by the worker's completion on the ring, and the future's waker |
//! | `client_future_polled_without_a_wake_takes_its_outcome_from_its_cell` | the client's outcome cells: a future polled without waiting for its wake takes the outcome the pump wrote, ordered only by the cell's Release store and Acquire load |
//! | `client_wait_is_served_by_a_cancel` | the same for the deferred queue: a queued `buy_or_wait` served by a cancel wakes the pump, which wakes the future (its waker replaced on the second poll) |
//! | `a_clock_advance_wakes_the_worker_to_expire_a_hold` | a `ManualClock` advance unparks a worker parked with a deadline ahead; the hold expires and the waiting buy is served |
#![cfg(loom)]

use flashsale::loom_internals::{
    COUNTER_SLOTS, Counters, PRODUCER_SLOTS, ProducerCounters, SoldOutGate,
};
use flashsale::ring::{self, PushError};
use flashsale::{
    AsyncClient, Catalog, ControlError, Engine, Intent, ManualClock, Order, RejectReason, ShardId,
    SkuId, SkuSpec, SubmitError, Submitted, UserId, WaitStrategy,
};
use std::future::Future;

use loom::thread;

fn intent(user: u64, key: u64) -> Intent {
    Intent {
        user: UserId(user),
        client_key: key,
        sku: SkuId(1),
        quantity: 1,
    }
}

#[test]
fn ring_wraps_around_full_and_empty() {
    loom::model(|| {
        let (mut writer, mut reader) = ring::channel::<u32>(2).unwrap();
        let producer = thread::spawn(move || {
            for value in 0..3 {
                let mut value = value;
                loop {
                    match writer.push(value) {
                        Ok(()) => break,
                        Err(PushError::Full(back)) => {
                            value = back;
                            thread::yield_now();
                        }
                        Err(PushError::Closed(_)) => unreachable!(),
                    }
                }
            }
        });
        let mut expected = 0;
        while expected < 3 {
            let taken = reader.read_batch(usize::MAX, |value| {
                assert_eq!(value, expected);
                expected += 1;
            });
            if taken == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert!(reader.is_empty());
    });
}

#[test]
fn ring_close_races_publish() {
    loom::model(|| {
        let (mut writer, mut reader) = ring::channel::<u32>(2).unwrap();
        let producer = thread::spawn(move || match writer.push(7) {
            Ok(()) => true,
            Err(PushError::Closed(back)) => {
                assert_eq!(back, 7);
                false
            }
            Err(PushError::Full(_)) => unreachable!(),
        });
        let waiting = reader.close();
        let mut read = Vec::new();
        reader.read_batch(usize::MAX, |value| read.push(value));
        let accepted = producer.join().unwrap();
        // Accepted exactly when the reader finds it after the close; never both or neither.
        assert_eq!(accepted, read == [7]);
        assert_eq!(waiting, read.len());
        assert!(reader.is_empty());
    });
}

#[test]
fn ring_abandonment_is_seen_after_last_item() {
    loom::model(|| {
        let (mut writer, mut reader) = ring::channel::<u32>(2).unwrap();
        let producer = thread::spawn(move || {
            writer.push(1).unwrap();
            drop(writer);
        });
        loop {
            if reader.is_abandoned() {
                // Everything published before the drop is visible now.
                assert_eq!(reader.pop(), Some(1));
                break;
            }
            thread::yield_now();
        }
        producer.join().unwrap();
    });
}

#[test]
fn ring_reader_drop_is_seen_by_the_writer() {
    loom::model(|| {
        let token = std::sync::Arc::new(());
        let (mut writer, mut reader) = ring::channel::<std::sync::Arc<()>>(2).unwrap();
        writer.push(token.clone()).unwrap();
        let consumer = thread::spawn(move || {
            let _ = reader.pop();
            drop(reader);
        });
        // Publishing into an abandoned ring is harmless; the writer learns of the drop.
        let _ = writer.push(token.clone());
        while !writer.is_abandoned() {
            thread::yield_now();
        }
        consumer.join().unwrap();
        drop(writer);
        // Every value was dropped exactly once: by the reader, or with the ring.
        assert_eq!(std::sync::Arc::strong_count(&token), 1);
    });
}

#[test]
fn gate_sees_confirmed_keys_with_the_flag() {
    loom::model(|| {
        let gate = loom::sync::Arc::new(SoldOutGate::new(1, [1]));
        let shard_gate = gate.clone();
        let shard = thread::spawn(move || {
            shard_gate.remember(0, 5, 55);
            shard_gate.raise(0);
        });
        // A retry of the confirmed key must never be turned away, whenever it looks.
        assert!(!gate.turns_away(0, 0, 5, 55));
        shard.join().unwrap();
        assert!(!gate.turns_away(0, 0, 5, 55));
    });
}

fn one_unit_engine(gate: bool) -> Engine {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1))
        .build()
        .unwrap();
    Engine::builder(catalog)
        .ring_capacity(2)
        .wait_strategy(WaitStrategy::Park)
        .sold_out_gate(gate)
        .start()
        .unwrap()
}

#[test]
fn engine_hands_an_outcome_back() {
    loom::model(|| {
        let engine = one_unit_engine(true);
        let mut producer = engine.producer();
        let outcome = producer.buy(intent(1, 1)).unwrap();
        assert!(outcome.order().is_some());
        let report = engine.shutdown();
        assert_eq!(report.confirmed_orders, 1);
    });
}

#[test]
fn engine_shutdown_races_submits() {
    loom::model(|| {
        let engine = one_unit_engine(false);
        let mut producer = engine.producer();
        let submitter = thread::spawn(move || {
            let mut accepted = 0;
            for key in 0..2 {
                match producer.submit(intent(key, key)) {
                    Ok(Submitted::Queued(_)) => accepted += 1,
                    Err(SubmitError::ShutDown(back)) => assert_eq!(back, intent(key, key)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let answered = producer.drain(|_| {});
            assert_eq!(answered, accepted, "one outcome per accepted intent");
            accepted
        });
        let report = engine.shutdown();
        let accepted = submitter.join().unwrap();
        assert_eq!(report.commands_applied, accepted as u64);
    });
}

#[test]
fn engine_retry_after_sold_out_reaches_the_shard() {
    loom::model(|| {
        let engine = one_unit_engine(true);
        let mut first = engine.producer();
        let mut second = engine.producer();
        let order = first.buy(intent(1, 1)).unwrap();
        let id = order.order().unwrap().id;
        let retrier = thread::spawn(move || second.buy(intent(1, 1)).unwrap());
        let stranger = first.buy(intent(2, 2)).unwrap();
        assert_eq!(stranger.reason(), Some(RejectReason::SoldOut));
        assert_eq!(
            retrier.join().unwrap().reason(),
            Some(RejectReason::Duplicate(id))
        );
        drop(engine);
    });
}

#[test]
fn counters_publish_while_read() {
    loom::model(|| {
        let shard = loom::sync::Arc::new(Counters::default());
        let producer = loom::sync::Arc::new(ProducerCounters::default());
        let (shard_writer, producer_writer) = (shard.clone(), producer.clone());
        let mut counts = [0u64; COUNTER_SLOTS];
        counts[0] = 3;
        counts[COUNTER_SLOTS - 1] = 5;
        let writer = thread::spawn(move || {
            shard_writer.publish(&counts);
            producer_writer.bump(1);
        });
        // Read while published (what the live counters do); no value is promised here.
        std::hint::black_box(shard.read());
        writer.join().unwrap();
        // Exact once the writer is joined (as the report reads them after shutdown).
        assert_eq!(shard.read(), counts);
        let mut totals = [0u64; PRODUCER_SLOTS];
        producer.add_to(&mut totals);
        assert_eq!(totals[1], 1);
    });
}

#[test]
fn engine_available_while_deciding() {
    loom::model(|| {
        let engine = one_unit_engine(true);
        let mut producer = engine.producer();
        let buyer = thread::spawn(move || producer.buy(intent(1, 1)).unwrap());
        // The live level, read while the shard decides (either value may be seen)...
        std::hint::black_box(engine.available(SkuId(1)));
        assert!(buyer.join().unwrap().order().is_some());
        // ...but once the buyer has its order, the level it took is already published:
        // the worker stores it before it publishes the outcome.
        assert_eq!(engine.available(SkuId(1)), Some(0));
        let report = engine.shutdown();
        assert_eq!(report.skus[0].available, 0);
        assert_eq!(report.confirmed_orders, 1);
    });
}

#[test]
fn engine_sink_panic_fails_the_shard() {
    // Keep loom's many executions from printing the sink's panic each time.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"sink down") {
            default_hook(info);
        }
    }));
    loom::model(|| {
        let catalog = Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), 2))
            .build()
            .unwrap();
        let engine = Engine::builder(catalog)
            .ring_capacity(2)
            .wait_strategy(WaitStrategy::Park)
            .sold_out_gate(false)
            .order_sink(|_| |_: &Order| panic!("sink down"))
            .start()
            .unwrap();
        let mut first = engine.producer();
        let mut second = engine.producer();
        // The racer only submits: two threads spin-waiting at once is a livelock to loom
        // (it may schedule only the spinners), so the main thread does all the waiting.
        let racer = thread::spawn(move || {
            let submitted = second.submit(intent(2, 2));
            (second, submitted)
        });
        let mine = first.buy(intent(1, 1));
        let (mut second, submitted) = racer.join().unwrap();
        let theirs = match submitted {
            Ok(Submitted::Queued(_)) => {
                let mut outcome = None;
                second.drain(|completion| outcome = Some(completion.outcome));
                Ok(outcome.expect("a queued intent is answered"))
            }
            Ok(Submitted::Answered(outcome)) => Ok(outcome),
            Err(refused) => Err(refused),
        };
        // The first decided is confirmed (the sink failed after the decision); the other is
        // answered ShardFailed or refused at submit. Nothing is lost or decided twice.
        let mut confirmed = 0;
        let mut refused = 0;
        for answer in [mine, theirs] {
            match answer {
                Ok(outcome) if outcome.order().is_some() => confirmed += 1,
                Ok(outcome) => assert_eq!(outcome.reason(), Some(RejectReason::ShardFailed)),
                Err(SubmitError::ShardFailed(_)) => refused += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(confirmed, 1);
        let report = engine.shutdown();
        assert_eq!(report.failed_shards, vec![ShardId(0)]);
        assert_eq!(report.confirmed_orders, 1);
        assert_eq!(report.outcomes() + refused, 2);
    });
}

#[test]
fn engine_control_races_shutdown() {
    loom::model(|| {
        let engine = one_unit_engine(true);
        let control = engine.control();
        let mut producer = engine.producer();
        let order = producer.buy(intent(1, 1)).unwrap().order().unwrap().id;
        // The canceller parks until answered; shutdown must answer it or refuse it.
        let canceller = thread::spawn(move || control.cancel(order));
        let report = engine.shutdown();
        let cancelled = canceller.join().unwrap();
        match cancelled {
            Ok(()) => assert_eq!(report.skus[0].cancelled, 1),
            Err(ControlError::ShutDown) => assert_eq!(report.skus[0].cancelled, 0),
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert_eq!(report.confirmed_orders, 1);
    });
}

/// One unit with a waitlist of one; the shard parks.
fn waitlist_engine() -> Engine {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 1).waitlist(1))
        .build()
        .unwrap();
    Engine::builder(catalog)
        .ring_capacity(2)
        .wait_strategy(WaitStrategy::Park)
        .start()
        .unwrap()
}

#[test]
fn engine_cancel_serves_a_waiting_buy() {
    loom::model(|| {
        let engine = waitlist_engine();
        let control = engine.control();
        let mut first = engine.producer();
        let mut second = engine.producer();
        let order = first.buy(intent(1, 1)).unwrap().order().unwrap().id;
        // The waiter spins for its outcome; the main thread only parks (in cancel).
        let waiter = thread::spawn(move || second.buy_or_wait(intent(2, 2)).unwrap());
        let cancelled = control.cancel(order);
        assert_eq!(cancelled, Ok(()));
        let outcome = waiter.join().unwrap();
        // The cancel was applied before or after the waiter reached the waitlist: either
        // way it ends with the unit.
        assert_eq!(outcome.order().map(|order| order.user), Some(UserId(2)));
        assert_eq!(engine.available(SkuId(1)), Some(0));
        let report = engine.shutdown();
        assert_eq!(report.confirmed_orders, 2);
        assert_eq!(report.skus[0].cancelled, 1);
    });
}

/// A runtime-free executor on the current (loom) thread: polls the future, and parks
/// between polls; its waker unparks the thread. Stray unparks only cause another poll.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(thread::current())));
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}

/// The async client itself (its lanes, its pump thread and its `Notify`), not a copy:
/// a buy's future resolves once the pump takes the worker's completion and wakes it. A
/// lost wake-up anywhere on the way (worker → pump, pump → future) leaves a thread parked
/// for ever, which loom reports as a deadlock.
#[test]
fn client_buy_resolves_through_the_pump() {
    loom::model(|| {
        let engine = one_unit_engine(false);
        let client = AsyncClient::new(&engine, 1).unwrap();
        let outcome = block_on(client.buy(intent(1, 1))).unwrap();
        assert!(outcome.order().is_some());
        drop(client); // stops and joins the pump
        assert_eq!(engine.shutdown().confirmed_orders, 1);
    });
}

/// The same buy, its future polled again and again (yielding between polls) without
/// waiting to be woken, as a future inside a `select!` may be: it takes its outcome out of
/// its cell without the lane's lock the moment the pump has filled it, so only the cell's
/// Release/Acquire pair orders the pump's write of the outcome before the future's read;
/// loom reports the read as a data race without it.
#[test]
fn client_future_polled_without_a_wake_takes_its_outcome_from_its_cell() {
    loom::model(|| {
        let engine = one_unit_engine(false);
        let client = AsyncClient::new(&engine, 1).unwrap();
        let outcome = {
            let mut buy = std::pin::pin!(client.buy(intent(1, 1)));
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            loop {
                if let std::task::Poll::Ready(outcome) = buy.as_mut().poll(&mut context) {
                    break outcome.unwrap();
                }
                thread::yield_now();
            }
        };
        assert!(outcome.order().is_some());
        drop(client);
        assert_eq!(engine.shutdown().confirmed_orders, 1);
    });
}

/// A parking producer made on this thread and used on another: its `buy` parks that
/// thread (the `Notify` takes the sleeper's handle as it sleeps) until the worker's
/// publish wakes it. A wake-up sent to the thread that made the producer, or lost, leaves
/// the buyer parked for ever, which loom reports as a deadlock.
#[test]
fn a_moved_parking_producer_is_woken_on_its_new_thread() {
    loom::model(|| {
        let engine = one_unit_engine(false);
        let mut producer = engine.parking_producer();
        let buyer = thread::spawn(move || producer.buy(intent(1, 1)).unwrap());
        assert!(buyer.join().unwrap().order().is_some());
        assert_eq!(engine.shutdown().confirmed_orders, 1);
    });
}

/// A hold expiry on a manual clock: the worker, parked with a deadline ahead, is woken by
/// the clock's advance, ticks, and serves the waiting buyer the unit that came back. (On
/// the real clock the worker sleeps with a timeout, which loom cannot model; the manual
/// clock's wake-up is the part that can be lost, and is checked here.)
#[test]
fn a_clock_advance_wakes_the_worker_to_expire_a_hold() {
    loom::model(|| {
        let catalog = Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), 1).hold(10).waitlist(1))
            .build()
            .unwrap();
        let clock = ManualClock::new(0);
        let engine = Engine::builder(catalog)
            .ring_capacity(2)
            .wait_strategy(WaitStrategy::Park)
            .manual_clock(clock.clone())
            .start()
            .unwrap();
        let mut first = engine.producer();
        let mut second = engine.producer();
        assert!(first.buy(intent(1, 1)).unwrap().order().is_some());
        let waiter = thread::spawn(move || second.buy_or_wait(intent(2, 2)).unwrap());
        clock.advance(10);
        let served = waiter.join().unwrap();
        assert_eq!(served.order().map(|order| order.user), Some(UserId(2)));
        let report = engine.shutdown();
        assert_eq!((report.skus[0].expired, report.confirmed_orders), (1, 2));
    });
}

/// The real client's pump woken for a deferred outcome: a `buy_or_wait` is queued (first
/// poll), then this thread cancels the only order, whose unit goes to the waiting buy (or
/// back on sale, if the buy had not reached the waitlist yet), and the future resolves.
#[test]
fn client_wait_is_served_by_a_cancel() {
    loom::model(|| {
        let engine = waitlist_engine();
        let control = engine.control();
        let order = engine
            .producer()
            .buy(intent(1, 1))
            .unwrap()
            .order()
            .unwrap()
            .id;
        let client = AsyncClient::new(&engine, 1).unwrap();
        let outcome = {
            let mut buy = std::pin::pin!(client.buy_or_wait(intent(2, 2)));
            let noop = std::task::Waker::noop();
            let first = buy.as_mut().poll(&mut std::task::Context::from_waker(noop));
            assert!(first.is_pending(), "queued, not answered at once");
            assert_eq!(control.cancel(order), Ok(()));
            block_on(buy).unwrap()
        };
        assert_eq!(outcome.order().map(|order| order.user), Some(UserId(2)));
        drop(client);
        assert_eq!(engine.shutdown().confirmed_orders, 2);
    });
}
