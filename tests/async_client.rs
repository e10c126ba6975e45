//! The async client: 10,000 concurrent tokio tasks buying through one cloned handle, every
//! outcome checked against the invariants; futures dropped after their first poll are
//! still decided exactly once and sunk; and a hand-written executor (no tokio) drives it.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

mod common;

use common::{check_invariants, intent};
use flashsale::{AsyncClient, Catalog, Completion, Engine, GroupId, Order, SkuId, SkuSpec, Ticket};

fn catalog() -> Catalog {
    Catalog::builder()
        .group(GroupId(1), 2)
        .sku(SkuSpec::new(SkuId(1), 3_000).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(2), 1_000).limit(2).group(GroupId(1)))
        .sku(SkuSpec::new(SkuId(3), 500).limit(1))
        .build()
        .unwrap()
}

#[test]
fn ten_thousand_tasks_buy_through_one_client() {
    let catalog = catalog();
    let engine = Engine::builder(catalog.clone())
        .shards(2)
        .ring_capacity(256)
        .start()
        .unwrap();
    let client = AsyncClient::new(&engine, 4).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let completions: Vec<Completion> = runtime.block_on(async {
        let tasks: Vec<_> = (0..10_000u64)
            .map(|task| {
                let client = client.clone();
                tokio::spawn(async move {
                    let wanted = intent(task % 4_000, task / 4_000, 1 + (task % 3) as u32, 1);
                    let outcome = client.buy(wanted).await.expect("not refused");
                    Completion {
                        intent: wanted,
                        outcome,
                        ticket: Ticket(0),
                        waited: false,
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for task in tasks {
            all.push(task.await.unwrap());
        }
        all
    });
    drop(client);
    let report = engine.shutdown();
    assert_eq!(completions.len(), 10_000);
    assert_eq!(report.outcomes(), 10_000);
    check_invariants(&catalog, &completions, &report);
}

/// Wakes nobody: for polling a future once by hand.
struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

#[test]
fn a_dropped_future_is_still_decided_once_and_sunk() {
    let sunk = Arc::new(AtomicU64::new(0));
    let counter = sunk.clone();
    // Room for every submit in flight at once, so no first poll is left waiting (`Busy`).
    let engine = Engine::builder(catalog())
        .ring_capacity(4096)
        .order_sink(move |_| {
            let counter = counter.clone();
            move |_: &Order| {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .start()
        .unwrap();
    let client = AsyncClient::new(&engine, 2).unwrap();
    let waker = Waker::from(Arc::new(Noop));
    let mut context = Context::from_waker(&waker);
    let mut submitted = 0;
    for user in 0..2_000 {
        let mut buy = client.buy(intent(user, 0, 1, 1));
        // One poll submits it; then the future is dropped before its outcome.
        match std::pin::Pin::new(&mut buy).poll(&mut context) {
            Poll::Pending => submitted += 1,
            Poll::Ready(outcome) => {
                outcome.unwrap();
                submitted += 1;
            }
        }
        drop(buy);
    }
    drop(client);
    let report = engine.shutdown();
    assert_eq!(report.outcomes(), submitted);
    assert_eq!(report.confirmed_orders, 2_000);
    assert_eq!(sunk.load(Ordering::Relaxed), report.confirmed_orders);
}

/// Parks the thread until woken: an executor in ten lines, so nothing here needs tokio.
struct Unpark(std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[test]
fn any_executor_drives_it() {
    let engine = Engine::builder(catalog()).start().unwrap();
    let client = AsyncClient::new(&engine, 1).unwrap();
    for user in 0..500 {
        let outcome = block_on(client.buy(intent(user, 0, 3, 1))).unwrap();
        assert!(outcome.order().is_some(), "{outcome:?}");
    }
    let sold_out = block_on(client.buy(intent(9_999, 0, 3, 1))).unwrap();
    assert_eq!(sold_out.reason(), Some(flashsale::RejectReason::SoldOut));
    drop(client);
    engine.shutdown();
}

use std::future::Future as _;

/// A lane count past the limit is refused by name rather than allocated (each lane is a
/// producer with a ring to every shard); 0 lanes means 1.
#[test]
fn lanes_past_the_limit_are_refused() {
    let engine = Engine::builder(catalog()).start().unwrap();
    let error = AsyncClient::new(&engine, AsyncClient::LANES_MAX + 1).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("lanes"), "{error}");
    let client = AsyncClient::new(&engine, 0).unwrap();
    let outcome = block_on(client.buy(intent(1, 0, 3, 1))).unwrap();
    assert!(outcome.order().is_some(), "{outcome:?}");
    drop(client);
    engine.shutdown();
}

/// Records that it was woken: for waiting by hand until an outcome has arrived.
#[derive(Default)]
struct Woken(std::sync::atomic::AtomicBool);
impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// A future polled once (submitted), and the flag its waker sets.
struct Polled<'a> {
    buy: std::pin::Pin<Box<flashsale::Buy<'a>>>,
    woken: Arc<Woken>,
}

impl<'a> Polled<'a> {
    fn submit(mut buy: flashsale::Buy<'a>) -> Self {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let poll = std::pin::Pin::new(&mut buy).poll(&mut Context::from_waker(&waker));
        assert!(poll.is_pending(), "queued, not answered at once: {poll:?}");
        Self {
            buy: Box::pin(buy),
            woken,
        }
    }

    /// Waits until the pump has handed the outcome over (not for an instant: a hang guard).
    fn wait_arrived(&self) {
        let start = std::time::Instant::now();
        while !self.woken.0.load(Ordering::Acquire) {
            assert!(start.elapsed().as_secs() < 60, "the outcome never arrived");
            std::thread::yield_now();
        }
    }

    /// Polls the arrived outcome: `user`'s confirmed order.
    fn confirmed_to(mut self, user: u64) {
        let waker = Waker::from(self.woken.clone());
        match self.buy.as_mut().poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(Ok(outcome)) => {
                let order = outcome.order().expect("confirmed");
                assert_eq!(order.user, flashsale::UserId(user), "{outcome:?}");
            }
            other => panic!("user {user}'s outcome: {other:?}"),
        }
    }
}

/// A lane hands outcomes over in cells by ticket (as many as the intents that can be in
/// flight): a ticket whose cell still holds an earlier one's outcome, not yet taken, goes
/// through the lane's map instead, and each future gets its own outcome either way; futures
/// dropped with their outcome waiting, in a cell or in the map, free it for later tickets.
#[test]
fn outcomes_reach_their_own_futures_when_tickets_share_a_cell() {
    // One shard with rings of 2: two cells a lane, so tickets 0, 2, 4 share one.
    let engine = Engine::builder(catalog()).ring_capacity(2).start().unwrap();
    let client = AsyncClient::new(&engine, 1).unwrap();
    let buy = |user| Polled::submit(client.buy(intent(user, 0, 1, 1)));
    let (first, second) = (buy(0), buy(1));
    first.wait_arrived();
    second.wait_arrived();
    // Both cells hold an outcome nobody has taken: these two go through the map.
    let (third, fourth) = (buy(2), buy(3));
    third.wait_arrived();
    third.confirmed_to(2);
    drop(fourth); // its outcome, arrived or not, is nobody's
    first.confirmed_to(0);
    // The first's cell is free again; dropping a future whose cell holds its outcome frees
    // that one too.
    let fifth = buy(4);
    fifth.wait_arrived();
    drop(fifth);
    second.confirmed_to(1);
    for user in 5..50 {
        let next = buy(user);
        next.wait_arrived();
        next.confirmed_to(user);
    }
    drop(client);
    let report = engine.shutdown();
    assert_eq!(report.outcomes(), 50);
    assert_eq!(report.confirmed_orders, 50);
}
