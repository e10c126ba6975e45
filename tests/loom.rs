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
//! | `pump_sleeps_until_its_outcome_is_published` | async-client pump `sleeping` flag (store, SeqCst fence, check / publish, SeqCst fence, load): the worker's completion on the ring wakes a pump that parked |
//! | `pump_wakes_for_a_deferred_outcome` | the same flag for the deferred queue: a waiting buy served by another thread's cancel wakes the pump |
#![cfg(loom)]

use flashsale::loom_internals::{
    COUNTER_SLOTS, Counters, Notify, PRODUCER_SLOTS, ProducerCounters, SoldOutGate, has_arrivals,
    producer_notifying,
};
use flashsale::ring::{self, PushError};
use flashsale::{
    Catalog, ControlError, Engine, Intent, Order, RejectReason, ShardId, SkuId, SkuSpec,
    SubmitError, Submitted, UserId, WaitStrategy,
};
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

/// The async client's pump, as `client.rs` runs it, on a thread of its own (as in the
/// client; also, loom's `join` does not tolerate the stray unparks a pump may receive):
/// submits with `submit`, then takes what arrived; if nothing, sleeps unless a check after
/// raising the flag finds something. A lost wake-up leaves the pump parked for ever,
/// which loom reports as a deadlock. Returns the engine and the completion.
fn pump_thread(
    engine: Engine,
    submit: fn(&mut flashsale::Producer) -> Result<Submitted, SubmitError>,
) -> thread::JoinHandle<(Engine, flashsale::Completion)> {
    thread::spawn(move || {
        let notify = loom::sync::Arc::new(Notify::new(thread::current()));
        let mut producer = producer_notifying(&engine, notify.clone());
        let Ok(Submitted::Queued(ticket)) = submit(&mut producer) else {
            panic!("queued");
        };
        loop {
            let mut mine = None;
            producer.poll(|completion| {
                if completion.ticket == ticket {
                    mine = Some(completion);
                }
            });
            if let Some(completion) = mine {
                drop(producer);
                return (engine, completion);
            }
            notify.sleep_unless(|| has_arrivals(&mut producer));
        }
    })
}

#[test]
fn pump_sleeps_until_its_outcome_is_published() {
    loom::model(|| {
        let pump = pump_thread(one_unit_engine(true), |producer| {
            producer.submit(intent(1, 1))
        });
        let (engine, completion) = pump.join().unwrap();
        assert!(completion.outcome.order().is_some());
        assert_eq!(engine.shutdown().confirmed_orders, 1);
    });
}

#[test]
fn pump_wakes_for_a_deferred_outcome() {
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
        let pump = pump_thread(engine, |producer| producer.submit_or_wait(intent(2, 2)));
        assert_eq!(control.cancel(order), Ok(()));
        let (engine, completion) = pump.join().unwrap();
        // Whether the cancel was applied before the buy reached the waitlist (the unit
        // was back on sale) or after (it waited, and was served), the buyer ends with it.
        assert_eq!(
            completion.outcome.order().map(|order| order.user),
            Some(UserId(2))
        );
        assert_eq!(engine.shutdown().confirmed_orders, 2);
    });
}
