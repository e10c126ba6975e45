//! Drives an engine with a plan's schedules, open or closed loop, and collects what a
//! capacity planner needs: outcomes, latency from the intended send time, a timeline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flashsale::{
    Catalog, Completion, Engine, Outcome, Placement, Producer, RejectReason, Report, SkuLevels,
    SubmitError, Submitted,
};
use hdrhistogram::Histogram;

use crate::plan::{Plan, Press};
use crate::scenario::{Mode, Scenario};

/// Timeline resolution.
pub const BUCKET_NS: u64 = 10_000_000;

/// What one producer thread saw.
pub struct ProducerTally {
    /// Latency of every press, from its intended send time (open loop) or its submit
    /// (closed loop) to its outcome.
    pub latency_ns: Histogram<u64>,
    /// Outcomes per `BUCKET_NS` of run time.
    timeline: Vec<u64>,
    /// Confirmed units and the latest confirmation (run ns), per catalog index.
    confirmed_units: Vec<u64>,
    last_confirmed_ns: Vec<u64>,
    /// Per catalog index: saw a SoldOut / InsufficientStock rejection.
    sold_out_seen: Vec<bool>,
    insufficient_seen: Vec<bool>,
    /// Every confirmed order's (user, product group, units), to check limits after the
    /// run. An append-only list rather than a map: a map's rehash, or the page faults of a
    /// large pre-sized one, stalled the producer for tens of ms, which an open loop then
    /// reports as engine latency.
    orders: Vec<(u64, u32, u32)>,
    pub confirmed_orders: u64,
    pub rejections: [u64; RejectReason::ALL.len()],
    pub submitted: u64,
    pub outcomes: u64,
    pub refused: u64,
}

impl ProducerTally {
    /// `orders_max` bounds the orders this producer can see confirmed; the list reserves
    /// for them up front (faulted in page by page as it fills, in order).
    pub fn new(skus: usize, buckets: usize, orders_max: usize) -> Self {
        Self {
            latency_ns: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("constant bounds"),
            timeline: vec![0; buckets],
            confirmed_units: vec![0; skus],
            last_confirmed_ns: vec![0; skus],
            sold_out_seen: vec![false; skus],
            insufficient_seen: vec![false; skus],
            orders: Vec::with_capacity(orders_max),
            confirmed_orders: 0,
            rejections: [0; RejectReason::ALL.len()],
            submitted: 0,
            outcomes: 0,
            refused: 0,
        }
    }

    pub fn merge(&mut self, other: Self) {
        let _ = self.latency_ns.add(&other.latency_ns);
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            *mine += theirs;
        }
        for index in 0..self.confirmed_units.len() {
            self.confirmed_units[index] += other.confirmed_units[index];
            self.last_confirmed_ns[index] =
                self.last_confirmed_ns[index].max(other.last_confirmed_ns[index]);
            self.sold_out_seen[index] |= other.sold_out_seen[index];
            self.insufficient_seen[index] |= other.insufficient_seen[index];
        }
        self.orders.extend(other.orders);
        self.confirmed_orders += other.confirmed_orders;
        for (mine, theirs) in self.rejections.iter_mut().zip(other.rejections) {
            *mine += theirs;
        }
        self.submitted += other.submitted;
        self.outcomes += other.outcomes;
        self.refused += other.refused;
    }
}

/// Per-SKU results.
pub struct SkuResult {
    pub id: u32,
    pub stock: u32,
    pub sold: u32,
    pub remaining: u32,
    /// When its last unit was confirmed, ms after its sale opened (if it sold out).
    pub sold_out_after_open_ms: Option<f64>,
}

/// Invariants checked on the run's outcomes.
pub struct Invariants {
    pub one_outcome_per_intent: bool,
    pub no_oversell: bool,
    pub no_undersell: bool,
    pub limits_held: bool,
}

/// Everything a run produced.
pub struct RunResult {
    pub elapsed: Duration,
    pub presses: u64,
    pub outcomes: u64,
    pub confirmed_orders: u64,
    pub rejections: [u64; RejectReason::ALL.len()],
    pub latency_ns: Histogram<u64>,
    pub timeline: Vec<u64>,
    pub skus: Vec<SkuResult>,
    pub invariants: Invariants,
    pub engine: Report,
}

struct Shared {
    catalog: Catalog,
    placement: Placement,
    mode: Mode,
    start_ns: u64,
    /// Outcomes so far, for the progress bar (bumped in batches).
    progress: AtomicU64,
}

/// Runs the plan. `on_progress(outcomes)` is called from this thread every 50 ms.
pub fn run(
    scenario: &Scenario,
    plan: Plan,
    mut on_progress: impl FnMut(u64),
) -> Result<RunResult, String> {
    let engine = Engine::builder(plan.catalog.clone())
        .shards(scenario.shards as usize)
        .ring_capacity(scenario.ring_capacity as usize)
        .wait_strategy(scenario.wait.into())
        .max_quantity(scenario.limit_per_buyer.max(2))
        .start()
        .map_err(|error| format!("shards: {error}"))?;
    let shared = Arc::new(Shared {
        catalog: plan.catalog.clone(),
        placement: engine.placement().clone(),
        mode: scenario.mode,
        start_ns: plan.start_ns,
        progress: AtomicU64::new(0),
    });
    let buckets = (plan.last_press_ns / BUCKET_NS + 2) as usize;
    let stock = plan.catalog.total_stock();
    let wall_start = Instant::now();
    let threads: Vec<_> = plan
        .schedules
        .into_iter()
        .map(|schedule| {
            let producer = engine.producer();
            let shared = shared.clone();
            let orders_max = (schedule.len() as u64).min(stock) as usize;
            std::thread::spawn(move || drive(producer, &schedule, &shared, buckets, orders_max))
        })
        .collect();
    let mut tally = ProducerTally::new(plan.catalog.skus().len(), buckets, 0);
    let mut finished = Vec::new();
    for thread in threads {
        while !thread.is_finished() {
            on_progress(shared.progress.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(50));
        }
        finished.push(
            thread
                .join()
                .map_err(|_| "a producer thread panicked".to_string())?,
        );
    }
    let elapsed = wall_start.elapsed();
    for other in finished {
        tally.merge(other);
    }
    on_progress(tally.outcomes);
    let report = engine.shutdown();
    Ok(summarize(
        scenario,
        &plan.opens_ns,
        tally,
        report,
        elapsed,
        plan.presses,
    ))
}

/// One producer thread: send each press at its time (open loop) or at once (closed).
fn drive(
    mut producer: Producer,
    schedule: &[Press],
    shared: &Shared,
    buckets: usize,
    orders_max: usize,
) -> ProducerTally {
    let mut tally = ProducerTally::new(shared.catalog.skus().len(), buckets, orders_max);
    // Intended send times of queued presses, per shard: each lane answers in order.
    let mut queued: Vec<VecDeque<u64>> = (0..shared.placement.shards())
        .map(|_| VecDeque::with_capacity(1024))
        .collect();
    let mut reported = 0u64;
    let open = shared.mode == Mode::Open;
    for press in schedule {
        let due_ns = shared.start_ns + press.at_ns;
        if open {
            while producer.now_ns() < due_ns {
                take_completions(&mut producer, &mut queued, &mut tally, shared);
                std::hint::spin_loop();
            }
        }
        let intended_ns = if open { due_ns } else { producer.now_ns() };
        tally.submitted += 1;
        let mut intent = press.intent;
        loop {
            match producer.submit(intent) {
                Ok(Submitted::Queued(_)) => {
                    let index = shared.catalog.index_of(intent.sku).expect("queued: known");
                    let (shard, _) = shared.placement.route(index);
                    queued[usize::from(shard.0)].push_back(intended_ns);
                    break;
                }
                Ok(Submitted::Answered(outcome)) => {
                    let now = producer.now_ns();
                    record(
                        &mut tally,
                        &shared.catalog,
                        shared.start_ns,
                        intent,
                        outcome,
                        intended_ns,
                        now,
                    );
                    break;
                }
                Err(SubmitError::Busy(back)) => {
                    intent = back;
                    if take_completions(&mut producer, &mut queued, &mut tally, shared) == 0 {
                        std::thread::yield_now();
                    }
                }
                Err(_) => {
                    tally.refused += 1;
                    break;
                }
            }
        }
        if tally.outcomes - reported >= 4096 {
            shared
                .progress
                .fetch_add(tally.outcomes - reported, Ordering::Relaxed);
            reported = tally.outcomes;
        }
    }
    while producer.in_flight() > 0 {
        if take_completions(&mut producer, &mut queued, &mut tally, shared) == 0 {
            std::thread::yield_now();
        }
    }
    shared
        .progress
        .fetch_add(tally.outcomes - reported, Ordering::Relaxed);
    tally
}

fn take_completions(
    producer: &mut Producer,
    queued: &mut [VecDeque<u64>],
    tally: &mut ProducerTally,
    shared: &Shared,
) -> usize {
    let now = producer.now_ns();
    producer.poll(|completion: Completion| {
        let index = shared
            .catalog
            .index_of(completion.intent.sku)
            .expect("queued: known");
        let (shard, _) = shared.placement.route(index);
        let intended_ns = queued[usize::from(shard.0)]
            .pop_front()
            .expect("a completion answers a queued press");
        record(
            tally,
            &shared.catalog,
            shared.start_ns,
            completion.intent,
            completion.outcome,
            intended_ns,
            now,
        );
    })
}

/// Counts one outcome: latency from `intended_ns`, the timeline, units, rejections.
pub fn record(
    tally: &mut ProducerTally,
    catalog: &Catalog,
    start_ns: u64,
    intent: flashsale::Intent,
    outcome: Outcome,
    intended_ns: u64,
    now_ns: u64,
) {
    tally.outcomes += 1;
    tally
        .latency_ns
        .saturating_record(now_ns.saturating_sub(intended_ns).max(1));
    let run_ns = now_ns.saturating_sub(start_ns);
    let bucket = (run_ns / BUCKET_NS) as usize;
    if bucket >= tally.timeline.len() {
        tally.timeline.resize(bucket + 1, 0);
    }
    tally.timeline[bucket] += 1;
    match outcome {
        Outcome::Confirmed(order) => {
            tally.confirmed_orders += 1;
            let index = catalog.index_of(order.sku).expect("confirmed: known");
            tally.confirmed_units[index] += u64::from(order.quantity);
            tally.last_confirmed_ns[index] = tally.last_confirmed_ns[index].max(run_ns);
            let group = catalog.skus()[index].group.map_or(0, |group| group.0);
            tally.orders.push((order.user.0, group, order.quantity));
        }
        Outcome::Rejected { reason, .. } => {
            tally.rejections[reason.index()] += 1;
            if let Some(index) = catalog.index_of(intent.sku) {
                match reason {
                    RejectReason::SoldOut => tally.sold_out_seen[index] = true,
                    RejectReason::InsufficientStock => tally.insufficient_seen[index] = true,
                    _ => {}
                }
            }
        }
    }
}

fn summarize(
    scenario: &Scenario,
    opens_ns: &[u64],
    mut tally: ProducerTally,
    engine: Report,
    elapsed: Duration,
    presses: u64,
) -> RunResult {
    let levels: Vec<SkuLevels> = engine
        .skus
        .iter()
        .map(|sku| SkuLevels {
            id: sku.id,
            stock: (u64::from(sku.stock) + sku.restocked - sku.reduced) as u32,
            available: sku.available,
            held: sku.held,
            sold: sku.sold,
            expired: sku.expired,
            cancelled: sku.cancelled,
            restocked: sku.restocked,
            reduced: sku.reduced,
            waiting: 0,
            waitlist_filled: sku.waitlist_filled,
        })
        .collect();
    let checked = check(
        scenario,
        opens_ns,
        &mut tally,
        &levels,
        engine.outcomes(),
        presses,
    );
    RunResult {
        elapsed,
        presses,
        outcomes: tally.outcomes,
        confirmed_orders: tally.confirmed_orders,
        rejections: tally.rejections,
        latency_ns: tally.latency_ns,
        timeline: tally.timeline,
        skus: checked.skus,
        invariants: checked.invariants,
        engine,
    }
}

/// What [`check`] found.
pub struct Checked {
    pub skus: Vec<SkuResult>,
    pub invariants: Invariants,
}

/// Checks a run's outcomes (`tally`) against the allocator's final levels, one per catalog
/// SKU in catalog order; `decided` is how many intents the allocator says it answered.
pub fn check(
    scenario: &Scenario,
    opens_ns: &[u64],
    tally: &mut ProducerTally,
    levels: &[SkuLevels],
    decided: u64,
    presses: u64,
) -> Checked {
    let variants = scenario.variants_per_product as usize;
    let products = scenario.products_per_seller as usize;
    let mut no_oversell = true;
    let mut no_undersell = true;
    let skus = levels
        .iter()
        .enumerate()
        .map(|(index, sku)| {
            let sold = tally.confirmed_units[index];
            no_oversell &= sold <= u64::from(sku.stock)
                && sold == u64::from(sku.held)
                && sku.held + sku.available == sku.stock;
            // First come: a SoldOut answer means nothing was left when it was decided, and
            // stock only falls, so nothing may be left now (InsufficientStock: fewer than
            // the largest quantity asked).
            if tally.sold_out_seen[index] {
                no_undersell &= sku.available == 0;
            }
            if tally.insufficient_seen[index] {
                no_undersell &= sku.available < scenario.limit_per_buyer.max(2);
            }
            let product = (index / variants) % products;
            let sold_out_after_open_ms = (sku.available == 0).then(|| {
                tally.last_confirmed_ns[index].saturating_sub(opens_ns[product]) as f64 / 1e6
                    * scenario.speed
            });
            SkuResult {
                id: sku.id.0,
                stock: sku.stock,
                sold: sku.held,
                remaining: sku.available,
                sold_out_after_open_ms,
            }
        })
        .collect();
    tally.orders.sort_unstable();
    let limits_held = tally
        .orders
        .chunk_by(|a, b| (a.0, a.1) == (b.0, b.1))
        .all(|orders| {
            orders.iter().map(|&(_, _, units)| units).sum::<u32>() <= scenario.limit_per_buyer
        });
    Checked {
        skus,
        invariants: Invariants {
            one_outcome_per_intent: tally.outcomes == presses
                && tally.submitted == presses
                && tally.refused == 0
                && decided == presses,
            no_oversell,
            no_undersell,
            limits_held,
        },
    }
}
