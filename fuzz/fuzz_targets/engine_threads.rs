//! Small multi-threaded engine runs shaped by the input: the catalog (stocks, limits, a
//! limit group, holds, a waitlist, an opening draw), the shard count, ring size, wait
//! strategy, gate, a journal (group size, synced or not, snapshots) on the fault simulator's
//! disk (with no faults), and what each of up to three threads does: buys, buys that wait, payments and
//! cancellations of the orders it was given, restocks, reductions and early closes.
//!
//! Afterwards:
//! - every intent was answered exactly once (buys still waiting at the end are answered
//!   `Closed` by the shutdown), and every operator call got an answer (never `ShutDown` or
//!   `ShardFailed`: nothing failed);
//! - each SKU conserves its units (available + held + sold = stock + restocked - reduced);
//! - with a journal, each shard's journal replays, through the reference model, to the
//!   levels the engine reported, and every order a buyer was given is one the replay
//!   confirms, with the same buyer, SKU, quantity and sequence (nothing confirmed that is
//!   not in the journal, nothing decided differently); recovery from the journal and the
//!   snapshots gives the same levels.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/sim/mod.rs"]
mod sim;

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use flashsale::reference::Model;
use flashsale::{
    Catalog, Completion, Control, ControlError, Engine, GroupId, Intent, JournalConfig, Order,
    OrderId, Outcome, Policy, Producer, ShardId, SkuId, SkuSpec, UserId, WaitStrategy,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, Arbitrary)]
struct Press {
    user: u8,
    client_key: u8,
    sku: u8,
    quantity: u8,
}

#[derive(Debug, Clone, Arbitrary)]
enum Step {
    Buy(Press),
    BuyOrWait(Press),
    /// Pays the n-th order this thread was given (modulo how many it has).
    Pay(u8),
    Cancel(u8),
    Restock {
        sku: u8,
        units: u8,
    },
    Reduce {
        sku: u8,
        units: u8,
    },
    Close {
        sku: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    stocks: [u8; 4],
    limits: [u8; 4],
    group_limit: u8,
    /// SKU 1's and SKU 3's payment holds, in units of 20 µs.
    holds: [Option<u8>; 2],
    waitlist: u8,
    /// SKU 4 sold by an opening draw over its first `draw * 20` µs.
    draw: Option<u8>,
    two_shards: bool,
    ring_capacity: u8,
    wait: u8,
    gate: bool,
    /// Commands per group commit (and, in the top bit, an unsynced journal), and a
    /// snapshot every so many commands.
    journal: Option<(u8, Option<u8>)>,
    threads: Vec<Vec<Step>>,
}

fn catalog(input: &Input) -> Catalog {
    // SKUs 1 and 2 share a limit group (one product in two variants), 3 and 4 are loose.
    Catalog::builder()
        // The draw is served two steps per tick: the shard ticks through it between buys.
        .pool_slice(2)
        .group(GroupId(1), u32::from(input.group_limit % 4).max(1))
        .skus((0..4u32).map(|index| {
            let mut spec = SkuSpec::new(
                SkuId(index + 1),
                u32::from(input.stocks[index as usize] % 32),
            )
            .limit(u32::from(input.limits[index as usize] % 4).max(1));
            if index < 2 {
                spec = spec.group(GroupId(1));
            }
            if index == 0 {
                spec = spec.waitlist(u32::from(input.waitlist % 4));
            }
            if let Some(hold) = input.holds.get(index as usize / 2).copied().flatten()
                && index % 2 == 0
            {
                spec = spec.hold(u64::from(hold % 16 + 1) * 20_000);
            }
            if let (3, Some(draw)) = (index, input.draw) {
                spec = spec.policy(Policy::OpeningDraw {
                    window_ns: u64::from(draw % 16 + 1) * 20_000,
                    seed: u64::from(draw),
                });
            }
            spec
        }))
        .build()
        .expect("valid catalog")
}

fn intent(press: &Press) -> Intent {
    Intent {
        user: UserId(u64::from(press.user % 8)),
        client_key: u64::from(press.client_key % 3),
        // 0 and 5 are SKUs nobody sells.
        sku: SkuId(u32::from(press.sku % 6)),
        quantity: u32::from(press.quantity % 5),
    }
}

/// A control call's answer: any named refusal, but never one saying the engine failed.
fn answered(result: Result<(), ControlError>) {
    if let Err(error @ (ControlError::ShutDown | ControlError::ShardFailed)) = result {
        panic!("an operator call was refused with {error:?} while the engine ran");
    }
}

/// What one of the input's threads ends with: its producer (buys that wait may still be
/// waiting: a waitlist is served only when units come back, or answered `Closed` at
/// shutdown), the completions taken so far and how many buys it submitted.
type Ran = (Producer, Vec<Completion>, usize);

/// A thread of the input's: its producer and operator handle, and its steps.
type Job = (Producer, Control, Vec<Step>);

/// Three threads kept for the whole fuzzing run, each running one of an input's threads
/// at a time. Spawning them afresh for every input cost more than a tenth of the run (the
/// engines' own shard and journal threads are kept by the engine: `reuse_threads`).
fn pool() -> &'static [(Mutex<Sender<Job>>, Mutex<Receiver<Ran>>)] {
    static POOL: OnceLock<Vec<(Mutex<Sender<Job>>, Mutex<Receiver<Ran>>)>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..3)
            .map(|index| {
                let (jobs, job) = channel::<Job>();
                let (done, ran) = channel::<Ran>();
                std::thread::Builder::new()
                    .name(format!("fuzz-producer-{index}"))
                    .spawn(move || {
                        for (producer, control, steps) in job {
                            if done.send(run_thread(producer, control, &steps)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("a producer thread starts");
                (Mutex::new(jobs), Mutex::new(ran))
            })
            .collect()
    })
}

/// One thread's steps; see [`Ran`].
fn run_thread(mut producer: Producer, control: Control, steps: &[Step]) -> Ran {
    let mut seen: Vec<Completion> = Vec::new();
    let mut submitted = 0;
    let nth_order = |seen: &[Completion], n: u8| {
        let orders: Vec<OrderId> = seen
            .iter()
            .filter_map(|completion| match completion.outcome {
                Outcome::Confirmed(order) => Some(order.id),
                _ => None,
            })
            .collect();
        (!orders.is_empty()).then(|| orders[usize::from(n) % orders.len()])
    };
    for step in steps {
        match step {
            Step::Buy(press) | Step::BuyOrWait(press) => {
                let wait = matches!(step, Step::BuyOrWait(_));
                common::submit_one_with(&mut producer, intent(press), wait, &mut seen);
                submitted += 1;
            }
            Step::Pay(n) | Step::Cancel(n) => {
                producer.poll(|completion| seen.push(completion));
                if let Some(order) = nth_order(&seen, *n) {
                    answered(if matches!(step, Step::Pay(_)) {
                        control.pay(order)
                    } else {
                        control.cancel(order)
                    });
                }
            }
            Step::Restock { sku, units } => {
                answered(control.restock(SkuId(u32::from(sku % 6)), u32::from(units % 4)));
            }
            Step::Reduce { sku, units } => {
                answered(control.reduce(SkuId(u32::from(sku % 6)), u32::from(units % 4)));
            }
            Step::Close { sku } => answered(control.close_sale(SkuId(u32::from(sku % 6)))),
        }
    }
    producer.poll(|completion| seen.push(completion));
    (producer, seen, submitted)
}

fuzz_target!(|input: Input| {
    let catalog = catalog(&input);
    // Mostly parking workers. A parking worker spins 64 times and yields 64 times before
    // it parks, so it runs the spinning and yielding strategies' code too, plus the park
    // protocol; the strategies differ only in how long an idle worker keeps its core (the
    // loom models and the engine tests cover each). A worker that never parks is costly
    // here: with up to three producer threads and two shards on a two-core machine, a
    // spinning run costs about seven times a parking one and a yielding run about five
    // times. So one run in 256 spins and one in 16 yields; the bytes libFuzzer favours (0
    // and 255; every byte past a short input's end reads as 0) park.
    let wait = match input.wait {
        37 => WaitStrategy::Spin,
        40..=55 => WaitStrategy::Yield,
        _ => WaitStrategy::Park,
    };
    let disk = sim::Disk::new(0, sim::Faults::NONE);
    let journal = input.journal.map(|(group, snapshots)| JournalConfig {
        storage: Arc::new(sim::SimStorage(disk.clone())),
        group_commands: usize::from(group % 16).max(1),
        // Mostly synced (the shard hands each group to its journal thread); with the
        // group's top bit set, unsynced (the shard writes each group itself).
        sync: group & 0x80 == 0,
        snapshot_every: snapshots.map(|every| u64::from(every % 64).max(1) * 4),
        ..JournalConfig::durable("fuzz")
    });
    let mut builder = Engine::builder(catalog.clone())
        .shards(if input.two_shards { 2 } else { 1 })
        .ring_capacity(usize::from(input.ring_capacity % 8).max(1))
        .max_quantity(3)
        .sold_out_gate(input.gate)
        .wait_strategy(wait)
        // Room for a few orders: the book grows as it must, and no run pays for faulting in
        // room for its whole stock.
        .order_capacity(8)
        // The shards and journal threads run on threads kept from the engines before: one
        // engine per input, and waking a kept thread costs a fraction of starting one.
        .reuse_threads(true);
    if let Some(config) = &journal {
        builder = builder.journal(config.clone());
    }
    let engine = builder.start().expect("engine starts");
    let placement = engine.placement().clone();
    let threads = &input.threads[..input.threads.len().min(3)];
    let pool = pool();
    for (index, (steps, (jobs, _))) in threads.iter().zip(pool).enumerate() {
        let job = (
            // The first thread's producer parks when it waits (woken by the shards on the
            // pool's thread it moved to); the others yield. (All three parking ran fewer
            // executions a second than none; the first alone, as many or more.)
            if index == 0 {
                engine.parking_producer()
            } else {
                engine.producer()
            },
            engine.control(),
            steps[..steps.len().min(128)].to_vec(),
        );
        jobs.lock()
            .unwrap()
            .send(job)
            .expect("the producer thread runs");
    }
    // A failed check on a pool thread aborts the process (libfuzzer-sys's panic hook), and
    // libFuzzer reports the input as it would one from this thread.
    let ran: Vec<Ran> = pool[..threads.len()]
        .iter()
        .map(|(_, ran)| {
            ran.lock()
                .unwrap()
                .recv()
                .expect("the producer thread answered")
        })
        .collect();
    // Shutdown answers every buy still waiting (`Closed`); the producers then take the
    // last completions.
    let report = engine.shutdown();
    let mut completions = Vec::new();
    let mut submitted = 0;
    for (mut producer, seen, count) in ran {
        completions.extend(seen);
        producer.drain(|completion| completions.push(completion));
        submitted += count;
    }
    assert_eq!(completions.len(), submitted, "one outcome per intent");
    assert_eq!(report.outcomes(), submitted as u64);
    assert!(report.failed_shards.is_empty(), "no shard failed");
    for sku in &report.skus {
        assert_eq!(
            u64::from(sku.available) + u64::from(sku.held) + u64::from(sku.sold),
            u64::from(sku.stock) + sku.restocked - sku.reduced,
            "units of {sku:?}"
        );
    }
    let Some(config) = journal else {
        return;
    };
    // Each shard's journal, replayed through the reference model.
    let mut confirmed: HashMap<OrderId, Order> = HashMap::new();
    for shard in (0..placement.shards()).map(|shard| ShardId(shard as u16)) {
        let path = config.path_of(shard);
        let bytes = disk.durable(&path);
        let records = flashsale::journal::scan(&bytes, &path)
            .expect("the journal reads back")
            .records;
        let mut model = Model::for_shard(&catalog, &placement, shard);
        for (index, (sequence, command)) in records.iter().enumerate() {
            assert_eq!(
                *sequence, index as u64,
                "journal sequences run 0, 1, 2, ..."
            );
            let own = model.apply(command).outcome();
            for outcome in own
                .into_iter()
                .chain(model.take_deferred().into_iter().map(|d| d.outcome))
            {
                if let Outcome::Confirmed(order) = outcome {
                    confirmed.insert(order.id, order);
                }
            }
        }
        let recovered = config
            .recover_shard(&catalog, &placement, shard, None)
            .expect("the journal recovers");
        let levels = model.levels();
        assert_eq!(recovered.core.levels().collect::<Vec<_>>(), levels);
        for level in &levels {
            let sku = report.skus.iter().find(|sku| sku.id == level.id).unwrap();
            assert_eq!(
                (sku.available, sku.held, sku.sold),
                (level.available, level.held, level.sold),
                "{:?}: the engine's report against the journal's replay",
                level.id
            );
        }
    }
    for completion in &completions {
        if let Outcome::Confirmed(order) = completion.outcome {
            assert_eq!(
                confirmed.get(&order.id),
                Some(&order),
                "an order given to a buyer is the journal's"
            );
        }
    }
});
