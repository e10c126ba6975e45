//! The engine against its baselines, in the same run.
//!
//! - `core`: the decision core alone on one thread: 1 hot SKU + 999 cold SKUs, 10M distinct
//!   users, per-buyer limit on. Baseline: the reference model (the same rules, on Fx hash
//!   maps, pre-sized) behind a `Mutex`; like for like against `shard_core_by_sku_id`, which
//!   also looks each SKU up by id (`shard_core_by_local_index` is the engine worker's path,
//!   whose lookup the producer already did).
//! - `e2e_1p1s`: one producer thread submitting to one shard thread and taking every
//!   outcome back. Workloads: `burst` (10,000 units, 10M intents from distinct users) with
//!   the sold-out gate on and off, and `all_confirmed` (stock never runs out). Baselines:
//!   the same `ShardCore` fed through `crossbeam-channel` (bounded, both directions; its
//!   shard thread takes up to 256 requests at a time and decides them with
//!   `ShardCore::buy_many`, prefetching as the engine's worker does), and
//!   the `Mutex<Model>` baseline called straight from the producer thread. Every peer makes
//!   room up front, outside the timing, for the orders the sale can confirm (10,000 in
//!   `burst`, 10M in `all_confirmed`; the engine with `order_capacity`), so none grows
//!   mid-run.
//!   The async client runs `burst` from 4,096 tokio tasks; `floor_async_remote_wake` is
//!   the same tasks awaiting futures another thread wakes, with no engine: the floor under
//!   any client that completes a task's buy from another thread.
//!
//! Run: `cargo bench --bench engine` (about 5 minutes), then
//! `cargo run --release --example bench_ratios` for the like-for-like ratios of that run,
//! computed from criterion's estimates. Figures swing with where the host puts the two
//! vCPUs; compare rows of the same run, not runs.
// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{TryRecvError, TrySendError, bounded};
use flashsale::{
    Completion, Engine, Intent, Outcome, Placement, ShardCore, ShardId, SubmitError, Submitted,
    WaitStrategy,
};

use common::{
    hot_and_cold_catalog, hot_and_cold_intents, mutex_buy, mutex_model, single_sku_catalog,
    single_sku_intent,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CORE_INTENTS: u64 = 10_000_000;
/// The hot-and-cold catalog's stock: at most this many orders.
const CORE_ORDERS_MAX: usize = 10_000 + 999 * 100;
const E2E_INTENTS: u64 = 10_000_000;
const BURST_STOCK: u32 = 10_000;
/// Above the intent count: every intent is confirmed.
const ALL_CONFIRMED_STOCK: u32 = 20_000_000;

fn core(c: &mut Criterion) {
    let catalog = hot_and_cold_catalog();
    let intents = hot_and_cold_intents(CORE_INTENTS);
    let pristine = ShardCore::whole(&catalog);
    let locals: Vec<u32> = intents
        .iter()
        .map(|intent| pristine.local_index(intent.sku).expect("known SKU"))
        .collect();
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(CORE_INTENTS));
    group.sample_size(10);
    group.bench_function("shard_core_by_local_index", |b| {
        b.iter_batched(
            || pristine.clone(),
            |mut core| {
                for (intent, &local) in intents.iter().zip(&locals) {
                    black_box(core.buy_at(local, intent, 0, false));
                }
                core
            },
            BatchSize::PerIteration,
        )
    });
    // As the engine's worker uses it: every outcome looked at, none kept.
    group.bench_function("shard_core_counting", |b| {
        b.iter_batched(
            || pristine.clone(),
            |mut core| {
                let mut confirmed = 0u64;
                for (intent, &local) in intents.iter().zip(&locals) {
                    if core.buy_at(local, intent, 0, false).order().is_some() {
                        confirmed += 1;
                    }
                }
                black_box(confirmed);
                core
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("shard_core_by_sku_id", |b| {
        b.iter_batched(
            || pristine.clone(),
            |mut core| {
                for intent in &intents {
                    black_box(core.buy(intent, 0));
                }
                core
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("baseline_mutex_model", |b| {
        b.iter_batched(
            || mutex_model(&catalog, CORE_ORDERS_MAX),
            |model| {
                for intent in &intents {
                    black_box(mutex_buy(&model, intent));
                }
                model
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The most orders a single-SKU run can confirm: every peer is sized for exactly that, up
/// front (a table sized for all 10M intents when 10,000 can sell makes every lookup miss).
fn orders_max(stock: u32) -> usize {
    (stock as usize).min(E2E_INTENTS as usize)
}

/// One producer submits `count` intents, polling outcomes as it goes; returns the time
/// from the first submit to the last outcome.
fn run_engine(engine: &Engine, count: u64) -> Duration {
    let mut producer = engine.producer();
    let mut outcomes = 0u64;
    let mut count_outcome = |_: Completion| outcomes += 1;
    let start = Instant::now();
    for index in 0..count {
        let mut intent = single_sku_intent(index);
        loop {
            match producer.submit(intent) {
                Ok(Submitted::Queued(_)) => break,
                Ok(Submitted::Answered(outcome)) => {
                    black_box(outcome);
                    break;
                }
                Err(SubmitError::Busy(back)) => {
                    intent = back;
                    producer.poll(&mut count_outcome);
                }
                Err(other) => panic!("benchmark engine refused: {other}"),
            }
        }
        if index % 256 == 0 {
            producer.poll(&mut count_outcome);
        }
    }
    producer.drain(&mut count_outcome);
    start.elapsed()
}

fn engine_case(stock: u32, gate: bool, wait: WaitStrategy) -> impl FnMut(u64) -> Duration {
    move |iterations| {
        let mut total = Duration::ZERO;
        for _ in 0..iterations {
            let engine = Engine::builder(single_sku_catalog(stock))
                .sold_out_gate(gate)
                .wait_strategy(wait)
                .ring_capacity(4096)
                // Room for every order the sale can make, up front, as the docs advise for
                // big sales (the default caps the room at 4M orders, and growing mid-run
                // costs a rehash).
                .order_capacity(orders_max(stock))
                .start()
                .expect("valid engine");
            total += run_engine(&engine, E2E_INTENTS);
            let report = engine.shutdown();
            assert_eq!(report.outcomes(), E2E_INTENTS);
        }
        total
    }
}

/// The same core behind bounded crossbeam channels, one shard thread.
fn crossbeam_case(stock: u32) -> impl FnMut(u64) -> Duration {
    move |iterations| {
        let mut total = Duration::ZERO;
        for _ in 0..iterations {
            let catalog = single_sku_catalog(stock);
            let (request_tx, request_rx) = bounded::<Intent>(4096);
            let (outcome_tx, outcome_rx) = bounded::<Completion>(4096);
            // Sized as the engine's cores are, outside the timing.
            let placement = Placement::new(&catalog, 1).expect("one shard");
            let mut core = ShardCore::with_order_capacity(
                &catalog,
                &placement,
                ShardId(0),
                Some(orders_max(stock)),
            );
            let shard = std::thread::spawn(move || {
                // As the engine's shard worker does: take what has arrived, up to 256, and
                // decide it with each buy's cache misses started ahead of it.
                let mut batch: Vec<Intent> = Vec::with_capacity(256);
                let mut outcomes: Vec<Outcome> = Vec::with_capacity(256);
                while let Ok(first) = request_rx.recv() {
                    batch.push(first);
                    batch.extend(request_rx.try_iter().take(255));
                    core.buy_many(&batch, 0, |_, applied| {
                        outcomes.push(applied.outcome().expect("first come"));
                    });
                    for (intent, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
                        let completion = Completion {
                            intent,
                            outcome,
                            ticket: flashsale::Ticket(0),
                            waited: false,
                        };
                        if outcome_tx.send(completion).is_err() {
                            return;
                        }
                    }
                }
            });
            let start = Instant::now();
            let mut outcomes = 0u64;
            for index in 0..E2E_INTENTS {
                let mut intent = single_sku_intent(index);
                loop {
                    match request_tx.try_send(intent) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            intent = back;
                            while let Ok(completion) = outcome_rx.try_recv() {
                                black_box(completion);
                                outcomes += 1;
                            }
                        }
                        Err(TrySendError::Disconnected(_)) => panic!("shard thread died"),
                    }
                }
                if index % 256 == 0 {
                    loop {
                        match outcome_rx.try_recv() {
                            Ok(completion) => {
                                black_box(completion);
                                outcomes += 1;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => panic!("shard thread died"),
                        }
                    }
                }
            }
            while outcomes < E2E_INTENTS {
                black_box(outcome_rx.recv().expect("shard thread alive"));
                outcomes += 1;
            }
            total += start.elapsed();
            drop(request_tx);
            shard.join().expect("shard thread");
        }
        total
    }
}

/// Tasks on the async benches' runtime: as many as the producer bench keeps in flight.
const TASKS: u64 = 4096;

/// Times `TASKS` tokio tasks on a one-thread runtime, task `t` running `$each` for the
/// indexes `t, t + TASKS, ...` below `E2E_INTENTS`, each with its own clone of `$state`.
macro_rules! time_tasks {
    ($state:expr, |$name:ident, $index:ident| $each:block) => {{
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let start = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let $name = $state.clone();
                    tokio::spawn(async move {
                        let mut $index = task;
                        while $index < E2E_INTENTS {
                            $each
                            $index += TASKS;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("bench task");
            }
        });
        start.elapsed()
    }};
}

/// The async client on a one-thread tokio runtime (as one request thread): `TASKS` tasks,
/// each awaiting its buys one after another, `E2E_INTENTS` in all. Runs with the runtime
/// thread, the client's pump and the shard thread: 3 threads on this 2-vCPU machine.
fn async_case(stock: u32, gate: bool) -> impl FnMut(u64) -> Duration {
    move |iterations| {
        let mut total = Duration::ZERO;
        for _ in 0..iterations {
            let engine = Engine::builder(single_sku_catalog(stock))
                .sold_out_gate(gate)
                .ring_capacity(4096)
                .start()
                .expect("benchmark engine starts");
            let client = flashsale::AsyncClient::new(&engine, 1).expect("pump thread");
            total += time_tasks!(client, |client, index| {
                // As the producer bench: the outcome to black_box, a refusal a failed
                // benchmark.
                match client.buy(single_sku_intent(index)).await {
                    Ok(outcome) => black_box(outcome),
                    Err(refused) => panic!("benchmark engine refused: {refused}"),
                };
            });
            drop(client);
            drop(engine);
        }
        total
    }
}

/// What any async client pays before it does any work: the same runtime and tasks as
/// `async_case`, each awaiting `E2E_INTENTS / TASKS` futures that another thread completes
/// (wakes) in batches, the way the client's pump does, with no engine at all. The waking
/// thread parks when it has nothing to wake, and a future that registers unparks it.
fn wake_floor_case() -> impl FnMut(u64) -> Duration {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    #[derive(Default)]
    struct Waiting {
        wakers: Vec<Waker>,
        sleeping: bool,
        stop: bool,
    }
    struct Shared {
        waiting: Mutex<Waiting>,
        waker_thread: std::thread::Thread,
    }
    /// Pending once (registering its waker with the waking thread), then ready.
    struct Remote<'a> {
        shared: &'a Shared,
        registered: bool,
    }
    impl Future for Remote<'_> {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.registered {
                return Poll::Ready(());
            }
            self.registered = true;
            let mut waiting = self.shared.waiting.lock().expect("not poisoned");
            waiting.wakers.push(cx.waker().clone());
            let sleeping = std::mem::take(&mut waiting.sleeping);
            drop(waiting);
            if sleeping {
                self.shared.waker_thread.unpark();
            }
            Poll::Pending
        }
    }

    move |iterations| {
        let mut total = Duration::ZERO;
        for _ in 0..iterations {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Arc<Shared>>();
            let waker = std::thread::spawn(move || {
                let shared = ready_rx.recv().expect("shared state");
                let mut batch = Vec::new();
                loop {
                    let mut waiting = shared.waiting.lock().expect("not poisoned");
                    std::mem::swap(&mut batch, &mut waiting.wakers);
                    if batch.is_empty() {
                        if waiting.stop {
                            return;
                        }
                        waiting.sleeping = true;
                        drop(waiting);
                        std::thread::park();
                        continue;
                    }
                    drop(waiting);
                    for waker in batch.drain(..) {
                        waker.wake();
                    }
                }
            });
            let shared = Arc::new(Shared {
                waiting: Mutex::new(Waiting::default()),
                waker_thread: waker.thread().clone(),
            });
            ready_tx.send(shared.clone()).expect("waking thread");
            total += time_tasks!(shared, |shared, _index| {
                Remote {
                    shared: &shared,
                    registered: false,
                }
                .await;
            });
            shared.waiting.lock().expect("not poisoned").stop = true;
            waker.thread().unpark();
            waker.join().expect("waking thread");
        }
        total
    }
}

fn mutex_case(stock: u32) -> impl FnMut(u64) -> Duration {
    move |iterations| {
        let mut total = Duration::ZERO;
        for _ in 0..iterations {
            let model = mutex_model(&single_sku_catalog(stock), orders_max(stock));
            let start = Instant::now();
            for index in 0..E2E_INTENTS {
                black_box(mutex_buy(&model, &single_sku_intent(index)));
            }
            total += start.elapsed();
        }
        total
    }
}

fn end_to_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("e2e_1p1s");
    group.throughput(Throughput::Elements(E2E_INTENTS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("burst/engine_gate_on_spin", |b| {
        b.iter_custom(engine_case(BURST_STOCK, true, WaitStrategy::Spin))
    });
    group.bench_function("burst/engine_gate_off_spin", |b| {
        b.iter_custom(engine_case(BURST_STOCK, false, WaitStrategy::Spin))
    });
    group.bench_function("burst/engine_gate_off_park", |b| {
        b.iter_custom(engine_case(BURST_STOCK, false, WaitStrategy::Park))
    });
    group.bench_function("burst/async_client_gate_on", |b| {
        b.iter_custom(async_case(BURST_STOCK, true))
    });
    group.bench_function("burst/async_client_gate_off", |b| {
        b.iter_custom(async_case(BURST_STOCK, false))
    });
    group.bench_function("burst/floor_async_remote_wake", |b| {
        b.iter_custom(wake_floor_case())
    });
    group.bench_function("burst/baseline_crossbeam_channel", |b| {
        b.iter_custom(crossbeam_case(BURST_STOCK))
    });
    group.bench_function("burst/baseline_mutex_model", |b| {
        b.iter_custom(mutex_case(BURST_STOCK))
    });
    group.bench_function("all_confirmed/engine_spin", |b| {
        b.iter_custom(engine_case(ALL_CONFIRMED_STOCK, true, WaitStrategy::Spin))
    });
    group.bench_function("all_confirmed/engine_park", |b| {
        b.iter_custom(engine_case(ALL_CONFIRMED_STOCK, true, WaitStrategy::Park))
    });
    group.bench_function("all_confirmed/baseline_crossbeam_channel", |b| {
        b.iter_custom(crossbeam_case(ALL_CONFIRMED_STOCK))
    });
    group.bench_function("all_confirmed/baseline_mutex_model", |b| {
        b.iter_custom(mutex_case(ALL_CONFIRMED_STOCK))
    });
    group.finish();
}

criterion_group!(benches, core, end_to_end);
criterion_main!(benches);
