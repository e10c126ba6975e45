//! loom models of every place where threads meet. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --test loom`.
//!
//! | model | covers |
//! |---|---|
//! | `ring_wraps_around_full_and_empty` | ring `head`/`tail` publish and consume across wrap-around, full and empty |
//! | `ring_close_races_publish` | ring `CLOSED_BIT`: close vs compare-exchange publish, nothing lost or doubled |
//! | `ring_abandonment_is_seen_after_last_item` | ring `writer_dropped`: items published before the drop are read |
//! | `gate_sees_confirmed_keys_with_the_flag` | gate flag (Release/Acquire) and filter bits |
//! | `engine_hands_an_outcome_back` | producer → worker → completion hand-off, lane registration, park/unpark |
//! | `engine_shutdown_races_submits` | shutdown vs submits: each accepted intent answered once, others refused |
//! | `engine_retry_after_sold_out_reaches_the_shard` | gate + filter across two producers and the worker |
#![cfg(loom)]

use flashsale::loom_internals::SoldOutGate;
use flashsale::ring::{self, PushError};
use flashsale::{
    Catalog, Engine, Intent, RejectReason, SkuId, SkuSpec, SubmitError, Submitted, UserId,
    WaitStrategy,
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
                    Ok(Submitted::Queued) => accepted += 1,
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
