//! Drives an engine with a plan's schedules, open or closed loop, and collects what a
//! capacity planner needs: outcomes, latency from the intended send time, a timeline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use flashsale::{
    Catalog, Completion, Control, ControlError, Engine, Intent, Order, OrderId, Outcome, Producer,
    RejectReason, Report, SkuLevels, SubmitError, Submitted, Ticket,
};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::plan::{Plan, Press, Rng};
use crate::scenario::{Mode, Scenario};

/// Timeline resolution.
pub const BUCKET_NS: u64 = 10_000_000;

/// The intended send time of a press that is not timed (see [`Sampler`]).
pub const UNTIMED: u64 = u64::MAX;

/// Which presses of a closed loop are timed: the first, then one in `every`.
pub struct Sampler {
    every: u32,
    left: u32,
}

impl Sampler {
    /// One press in `every` (at least 1: every press).
    pub fn new(every: u32) -> Self {
        Self {
            every: every.max(1),
            left: 0,
        }
    }

    /// Whether the next press is timed.
    #[inline]
    pub fn next_timed(&mut self) -> bool {
        if self.left == 0 {
            self.left = self.every - 1;
            true
        } else {
            self.left -= 1;
            false
        }
    }
}

/// What one producer thread saw.
pub struct ProducerTally {
    /// Latency of every press decided at once, from its intended send time (open loop) or
    /// its submit (closed loop) to its outcome.
    pub latency_ns: Histogram<u64>,
    /// The same for presses that waited (pooled for a draw, or on a waitlist).
    pub wait_latency_ns: Histogram<u64>,
    /// Outcomes, and confirmations among them, per `BUCKET_NS` of run time.
    timeline: Vec<u64>,
    confirmed_timeline: Vec<u64>,
    /// Confirmed units and the latest confirmation (run ns), per catalog index.
    confirmed_units: Vec<u64>,
    last_confirmed_ns: Vec<u64>,
    /// Per catalog index: the earliest shard sequence of a SoldOut rejection, and of an
    /// InsufficientStock or WaitlistFull one (with the quantity it asked for).
    sold_out_first: Vec<Option<u64>>,
    insufficient_first: Vec<Option<(u64, u32)>>,
    /// Every confirmation's (catalog index, shard sequence, units), for the undersell check.
    confirmed_at: Vec<(u32, u64, u32)>,
    /// Every confirmed order's (user, product group, units, order id), to check limits
    /// after the run. An append-only list rather than a map: a map's rehash, or the page
    /// faults of a large pre-sized one, stalled the producer for tens of ms, which an open
    /// loop then reports as engine latency (the list's pages are touched before the run).
    orders: Vec<(u64, u32, u32, u64)>,
    /// Answers to buys the cluster's gateway published again (their first answer lost):
    /// `Duplicate` naming an order, with the buy's intent, the answer's sequence and its
    /// instant. Counted by [`settle_recovered`] once every direct confirmation is in.
    recovered: Vec<(flashsale::Intent, flashsale::OrderId, Option<u64>, u64)>,
    pub confirmed_orders: u64,
    pub rejections: [u64; RejectReason::ALL.len()],
    pub submitted: u64,
    pub outcomes: u64,
    pub refused: u64,
    /// The latest clock reading, ns: the instant an untimed outcome is counted at (in
    /// the timeline and as a SKU's last confirmation), at most a sample's presses old.
    pub last_ns: u64,
}

impl ProducerTally {
    /// Units of every confirmed order counted so far.
    #[cfg_attr(
        not(all(feature = "cluster", not(loom))),
        allow(dead_code, reason = "read by the run on a cluster")
    )]
    pub fn units_confirmed(&self) -> u64 {
        self.confirmed_units.iter().sum()
    }

    /// `orders_max` bounds the orders this producer can see confirmed; the lists reserve
    /// for them up front and touch every page they reserved, so that a run does not
    /// fault them in while it is measured (a 2 MiB page zeroed in the producer's thread
    /// is a stall an open loop reports as engine latency). Make it before the run starts.
    pub fn new(skus: usize, buckets: usize, orders_max: usize) -> Self {
        /// An empty list with room for `len`, every page of it written once (by
        /// `resize`: `vec![zero; len]` may take fresh zeroed pages and touch none).
        fn touched<T: Clone + Default>(len: usize) -> Vec<T> {
            let mut list = Vec::with_capacity(len);
            list.resize(len, T::default());
            list.clear();
            list
        }
        Self {
            latency_ns: flashsale::report::latency_histogram(),
            wait_latency_ns: flashsale::report::latency_histogram(),
            timeline: vec![0; buckets],
            confirmed_timeline: vec![0; buckets],
            confirmed_units: vec![0; skus],
            last_confirmed_ns: vec![0; skus],
            sold_out_first: vec![None; skus],
            insufficient_first: vec![None; skus],
            confirmed_at: touched(orders_max),
            orders: touched(orders_max),
            recovered: Vec::new(),
            confirmed_orders: 0,
            rejections: [0; RejectReason::ALL.len()],
            submitted: 0,
            outcomes: 0,
            refused: 0,
            last_ns: 0,
        }
    }

    /// One tally per producer's schedule, each with room for the orders it can see
    /// confirmed (its presses, at most the sale's `stock`). Made before the run starts.
    pub fn for_schedules(
        schedules: &[Vec<Press>],
        skus: usize,
        buckets: usize,
        stock: u64,
    ) -> Vec<Self> {
        schedules
            .iter()
            .map(|schedule| {
                let orders_max = (schedule.len() as u64).min(stock) as usize;
                Self::new(skus, buckets, orders_max)
            })
            .collect()
    }

    /// A press's send instant: the clock's reading if `sampler` times it, else
    /// [`UNTIMED`] (no clock read).
    #[inline]
    pub fn sent_at(&mut self, sampler: &mut Sampler, clock: impl FnOnce() -> u64) -> u64 {
        if sampler.next_timed() {
            self.last_ns = clock();
            self.last_ns
        } else {
            UNTIMED
        }
    }

    /// The instant the outcome of a press sent at `sent` is counted at: the clock's reading
    /// if the press was timed, else the latest reading (no clock read).
    #[inline]
    pub fn answered_at(&mut self, sent: u64, clock: impl FnOnce() -> u64) -> u64 {
        if sent != UNTIMED {
            self.last_ns = clock();
        }
        self.last_ns
    }

    pub fn merge(&mut self, other: Self) {
        let _ = self.latency_ns.add(&other.latency_ns);
        let _ = self.wait_latency_ns.add(&other.wait_latency_ns);
        for (mine, theirs) in [
            (&mut self.timeline, &other.timeline),
            (&mut self.confirmed_timeline, &other.confirmed_timeline),
        ] {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (mine, theirs) in mine.iter_mut().zip(theirs) {
                *mine += theirs;
            }
        }
        for index in 0..self.confirmed_units.len() {
            self.confirmed_units[index] += other.confirmed_units[index];
            self.last_confirmed_ns[index] =
                self.last_confirmed_ns[index].max(other.last_confirmed_ns[index]);
            self.sold_out_first[index] = earliest(
                self.sold_out_first[index],
                other.sold_out_first[index],
                |&sequence| sequence,
            );
            self.insufficient_first[index] = earliest(
                self.insufficient_first[index],
                other.insufficient_first[index],
                |&(sequence, _)| sequence,
            );
        }
        self.confirmed_at.extend(other.confirmed_at);
        self.orders.extend(other.orders);
        self.recovered.extend(other.recovered);
        self.confirmed_orders += other.confirmed_orders;
        for (mine, theirs) in self.rejections.iter_mut().zip(other.rejections) {
            *mine += theirs;
        }
        self.submitted += other.submitted;
        self.outcomes += other.outcomes;
        self.refused += other.refused;
        self.last_ns = self.last_ns.max(other.last_ns);
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
    /// The same instant in run time, ms (for the plot).
    pub sold_out_at_run_ms: Option<f64>,
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
    /// What the schedule offered (an open loop's; a closed loop sends as fast as taken).
    pub offered: Option<crate::plan::Offered>,
    pub presses: u64,
    pub outcomes: u64,
    pub confirmed_orders: u64,
    pub rejections: [u64; RejectReason::ALL.len()],
    pub latency_ns: Histogram<u64>,
    pub timeline: Vec<u64>,
    pub confirmed_timeline: Vec<u64>,
    /// When each product's sale opened, ns of run time.
    pub opens_ns: Vec<u64>,
    pub skus: Vec<SkuResult>,
    pub invariants: Invariants,
    pub engine: Report,
    pub wait_latency_ns: Histogram<u64>,
    pub desk: DeskTally,
    /// Through a cluster: what its gateway did.
    pub gateway: Option<crate::output::GatewayJson>,
}

/// What the payment desk did.
pub struct DeskTally {
    pub paid_orders: u64,
    pub paid_units: u64,
    pub cancelled_orders: u64,
    pub cancelled_units: u64,
    /// Payments refused because the order's hold had expired.
    pub refused_hold_expired: u64,
    /// Calls answered with any other error (each order gets one call, so none should be).
    pub unexpected: u64,
    /// Orders whose units went back on sale (cancelled, or found expired).
    pub released: HashSet<u64>,
    /// Round trip of each pay or cancel call, ns.
    pub call_latency_ns: Histogram<u64>,
}

impl DeskTally {
    /// Nothing done yet.
    pub fn new() -> Self {
        Self {
            paid_orders: 0,
            paid_units: 0,
            cancelled_orders: 0,
            cancelled_units: 0,
            refused_hold_expired: 0,
            unexpected: 0,
            released: HashSet::new(),
            call_latency_ns: flashsale::report::latency_histogram(),
        }
    }
}

impl DeskTally {
    /// Counts what the desk's call for `task` came back with, after `latency_ns`.
    pub fn settle(&mut self, task: DeskTask, result: Result<(), ControlError>, latency_ns: u64) {
        self.call_latency_ns.saturating_record(latency_ns);
        match result {
            Ok(()) if task.cancel => {
                self.cancelled_orders += 1;
                self.cancelled_units += u64::from(task.units);
                self.released.insert(task.order);
            }
            Ok(()) => {
                self.paid_orders += 1;
                self.paid_units += u64::from(task.units);
            }
            Err(ControlError::HoldExpired) => {
                self.refused_hold_expired += 1;
                self.released.insert(task.order);
            }
            // Each order gets one call, so nothing else should come back.
            Err(_) => self.unexpected += 1,
        }
    }
}

/// What the desk does with an order, and when (engine ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeskTask {
    pub due_ns: u64,
    pub order: u64,
    pub units: u32,
    pub cancel: bool,
}

/// The scenario's payment desk: how orders are paid, cancelled or left to expire, in
/// engine ns.
#[derive(Debug, Clone, Copy)]
pub struct DeskPlan {
    pay_rate: f64,
    cancel_rate: f64,
    pay_delay_ns: u64,
    hold_ns: u64,
}

impl DeskPlan {
    /// The scenario's desk, its delays scaled by its speed.
    pub fn of(scenario: &Scenario) -> Self {
        let scaled = |ms: u64| (ms as f64 * 1e6 / scenario.speed) as u64;
        Self {
            pay_rate: scenario.pay_rate,
            cancel_rate: scenario.cancel_rate,
            pay_delay_ns: scaled(scenario.pay_delay_ms),
            hold_ns: scenario.hold_ms.map_or(0, scaled),
        }
    }

    /// What the desk does with `order`, confirmed at `now_ns`: pay it, cancel it, or pay
    /// it after its hold ran out (refused, its units long back on sale).
    pub fn task(&self, rng: &mut Rng, order: &Order, now_ns: u64) -> DeskTask {
        let roll = rng.unit();
        let (cancel, delay_ns) = if roll < self.pay_rate {
            (false, self.pay_delay_ns)
        } else if roll < self.pay_rate + self.cancel_rate {
            (true, self.pay_delay_ns)
        } else {
            (false, self.hold_ns + self.pay_delay_ns)
        };
        DeskTask {
            due_ns: now_ns + delay_ns,
            order: order.id.0,
            units: order.quantity,
            cancel,
        }
    }
}

struct Shared {
    catalog: Catalog,
    mode: Mode,
    start_ns: u64,
    /// Outcomes so far, for the progress bar (bumped in batches).
    progress: AtomicU64,
    /// The scenario's payment desk.
    desk: DeskPlan,
    /// Closed loop: one press in this many is timed.
    latency_sample: u32,
}

/// Runs the plan. `on_progress(outcomes)` is called from this thread every 50 ms.
pub fn run(
    scenario: &Scenario,
    plan: Plan,
    journal: Option<flashsale::JournalConfig>,
    mut on_progress: impl FnMut(u64),
) -> Result<RunResult, String> {
    // Everything the run needs is made before the engine starts, so that the engine's
    // clock (which the schedules count from) does not run while this thread allocates:
    // the tallies touch every page they reserve, a fifth of a second for millions of
    // orders, which once ate the schedules' whole lead.
    let shared = Arc::new(Shared::new(scenario, &plan));
    let wait = scenario.waitlist > 0;
    let buckets = (plan.last_press_ns / BUCKET_NS + 2) as usize;
    let stock = plan.catalog.total_stock();
    let offered = (scenario.mode == Mode::Open).then_some(plan.offered);
    let tallies =
        ProducerTally::for_schedules(&plan.schedules, plan.catalog.skus().len(), buckets, stock);
    let engine = start_engine(scenario, &plan.catalog, journal)?;
    for passed in engine.snapshots_passed_over() {
        note!("{passed}; replayed the journal from an older point instead");
    }
    for short in engine.order_room_short() {
        if scenario.presses_sent() > short.2 as f64 {
            note!("{}", crate::order_room_note("shard", short));
        }
    }
    // The payment desk: pays, cancels or pays late every confirmed order, as the
    // scenario says; only when orders have a life after confirmation.
    let (desk_tx, desk_rx) = crossbeam_channel::unbounded::<DeskTask>();
    let desk = scenario.has_lifecycle().then(|| {
        let control = engine.control();
        std::thread::spawn(move || desk_loop(&control, &desk_rx))
    });
    let desk_tx = desk.is_some().then_some(desk_tx);
    // The schedules count from `start_ns` on the engine's clock, and so do the sale's
    // windows, the timeline and the run's time: a closed loop starts there too (as an
    // open loop's first press is due there), so that rates and timelines are of the run
    // alone.
    let lead_left_ns = plan.start_ns.saturating_sub(engine.now_ns());
    let mut wall_start = Instant::now() + Duration::from_nanos(lead_left_ns);
    if lead_left_ns == 0 {
        note!(
            "note: the engine took {:.1} ms to start, past the schedule's lead of {:.0} ms: \
             the first presses are sent late, and an open loop counts their lateness as \
             latency",
            engine.now_ns() as f64 / 1e6,
            plan.start_ns as f64 / 1e6
        );
    } else if scenario.mode == Mode::Closed {
        std::thread::sleep(Duration::from_nanos(lead_left_ns));
        while engine.now_ns() < plan.start_ns {
            std::hint::spin_loop();
        }
        wall_start = Instant::now();
    }
    let threads: Vec<_> = plan
        .schedules
        .into_iter()
        .zip(tallies)
        .enumerate()
        .map(|(index, (schedule, tally))| {
            // A closed loop's producer has nothing to do while its lanes are full: it
            // parks, leaving the cores to the shards and the journal. An open loop's
            // spins to send each press on time.
            let producer = if scenario.mode == Mode::Closed {
                engine.parking_producer()
            } else {
                engine.producer()
            };
            let shared = shared.clone();
            let mut driver = Driver {
                desk: desk_tx.clone(),
                rng: Rng::new(scenario.seed ^ (index as u64 + 1).wrapping_mul(0xA24B_AED4)),
                wait,
            };
            std::thread::spawn(move || {
                let tally = drive(producer, &schedule, &shared, tally, &mut driver);
                (tally, Instant::now())
            })
        })
        .collect();
    // The producers hold the desk's only senders now: it stops once they are done.
    drop(desk_tx);
    let mut tally = ProducerTally::new(plan.catalog.skus().len(), buckets, 0);
    let finished = join_producers(threads, &shared, &mut on_progress)?;
    // Until the last producer took its last outcome (not until this thread noticed, at
    // its next progress tick).
    let elapsed = finished
        .iter()
        .map(|(_, done)| done.saturating_duration_since(wall_start))
        .max()
        .unwrap_or_default();
    for (other, _) in finished {
        tally.merge(other);
    }
    on_progress(tally.outcomes);
    let desk = match desk {
        Some(thread) => thread
            .join()
            .map_err(|_| "the payment desk panicked".to_string())?,
        None => DeskTally::new(),
    };
    let report = engine.shutdown();
    Ok(RunResult {
        offered,
        ..summarize(
            scenario,
            &plan.opens_ns,
            tally,
            report,
            elapsed,
            plan.presses,
            desk,
        )
    })
}

/// The engine the scenario describes, journaled when `journal` is set.
fn start_engine(
    scenario: &Scenario,
    catalog: &flashsale::Catalog,
    journal: Option<flashsale::JournalConfig>,
) -> Result<Engine, String> {
    let mut builder = Engine::builder(catalog.clone())
        .shards(scenario.shards as usize)
        .ring_capacity(scenario.ring_capacity as usize)
        .wait_strategy(scenario.wait.into())
        .max_quantity(scenario.limit_per_buyer.max(2));
    if let Some(orders) = scenario.order_capacity {
        builder = builder.order_capacity(usize::try_from(orders).unwrap_or(usize::MAX));
    }
    if let Some(config) = journal {
        builder = builder.journal(config);
    }
    builder.start().map_err(|error| match error {
        flashsale::EngineError::Journal(error) => format!("journal: {error}"),
        other => format!("shards: {other}"),
    })
}

impl Shared {
    fn new(scenario: &Scenario, plan: &Plan) -> Self {
        Self {
            catalog: plan.catalog.clone(),
            mode: scenario.mode,
            start_ns: plan.start_ns,
            progress: AtomicU64::new(0),
            desk: DeskPlan::of(scenario),
            latency_sample: scenario.latency_sample,
        }
    }
}

/// Waits for every producer thread, reporting the outcomes so far every 50 ms; each
/// thread's tally comes with the instant it finished.
fn join_producers(
    threads: Vec<std::thread::JoinHandle<(ProducerTally, Instant)>>,
    shared: &Shared,
    on_progress: &mut impl FnMut(u64),
) -> Result<Vec<(ProducerTally, Instant)>, String> {
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
    Ok(finished)
}

/// The payment desk's thread: acts on each order when it falls due.
fn desk_loop(control: &Control, tasks: &Receiver<DeskTask>) -> DeskTally {
    let mut tally = DeskTally::new();
    let mut due: BinaryHeap<Reverse<DeskTask>> = BinaryHeap::new();
    let mut producers_done = false;
    loop {
        loop {
            match tasks.try_recv() {
                Ok(task) => due.push(Reverse(task)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    producers_done = true;
                    break;
                }
            }
        }
        let now = control.now_ns();
        while let Some(&Reverse(task)) = due.peek() {
            if task.due_ns > now {
                break;
            }
            due.pop();
            let order = OrderId(task.order);
            let started = Instant::now();
            let result = if task.cancel {
                control.cancel(order)
            } else {
                control.pay(order)
            };
            tally.settle(task, result, started.elapsed().as_nanos() as u64);
        }
        if producers_done && due.is_empty() {
            return tally;
        }
        let wait_ns = due
            .peek()
            .map_or(1_000_000, |Reverse(task)| task.due_ns.saturating_sub(now))
            .clamp(10_000, 1_000_000);
        std::thread::sleep(Duration::from_nanos(wait_ns));
    }
}

/// A producer thread's share of the scenario beyond the schedule.
struct Driver {
    /// Where confirmed orders go to be paid or cancelled (none: they stay held).
    desk: Option<Sender<DeskTask>>,
    rng: Rng,
    /// Every press asks to wait rather than be rejected as sold out.
    wait: bool,
}

/// One producer thread: send each press at its time (open loop) or at once (closed).
fn drive(
    mut producer: Producer,
    schedule: &[Press],
    shared: &Shared,
    mut tally: ProducerTally,
    driver: &mut Driver,
) -> ProducerTally {
    // Intended send times of queued presses, by ticket (waiting ones are answered out of
    // order). At most ring capacity x shards entries, so it never grows past its start.
    let mut queued: FxHashMap<Ticket, u64> = FxHashMap::default();
    queued.reserve(4096);
    let mut reported = 0u64;
    let open = shared.mode == Mode::Open;
    let mut sampler = Sampler::new(shared.latency_sample);
    for press in schedule {
        let due_ns = shared.start_ns + press.at_ns;
        if open {
            while producer.now_ns() < due_ns {
                take_completions(&mut producer, &mut queued, &mut tally, shared, driver);
                std::hint::spin_loop();
            }
        }
        let intended_ns = if open {
            due_ns
        } else {
            tally.sent_at(&mut sampler, || producer.now_ns())
        };
        tally.submitted += 1;
        submit_press(
            &mut producer,
            (press.intent, intended_ns),
            &mut queued,
            &mut tally,
            shared,
            driver,
        );
        if tally.outcomes - reported >= 4096 {
            shared
                .progress
                .fetch_add(tally.outcomes - reported, Ordering::Relaxed);
            reported = tally.outcomes;
        }
    }
    while producer.in_flight() > 0 {
        if take_completions(&mut producer, &mut queued, &mut tally, shared, driver) == 0 {
            producer.wait_for_arrivals();
        }
    }
    shared
        .progress
        .fetch_add(tally.outcomes - reported, Ordering::Relaxed);
    tally
}

/// Submits one press, taking completions while its lane is busy, and records it when it
/// was answered at once.
fn submit_press(
    producer: &mut Producer,
    (mut intent, intended_ns): (Intent, u64),
    queued: &mut FxHashMap<Ticket, u64>,
    tally: &mut ProducerTally,
    shared: &Shared,
    driver: &mut Driver,
) {
    loop {
        let submitted = if driver.wait {
            producer.submit_or_wait(intent)
        } else {
            producer.submit(intent)
        };
        match submitted {
            Ok(Submitted::Queued(ticket)) => {
                queued.insert(ticket, intended_ns);
                break;
            }
            Ok(Submitted::Answered(outcome)) => {
                let now = tally.answered_at(intended_ns, || producer.now_ns());
                record(
                    tally,
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
                if take_completions(producer, queued, tally, shared, driver) == 0 {
                    producer.wait_for_arrivals();
                }
            }
            Err(_) => {
                tally.refused += 1;
                break;
            }
        }
    }
}

fn take_completions(
    producer: &mut Producer,
    queued: &mut FxHashMap<Ticket, u64>,
    tally: &mut ProducerTally,
    shared: &Shared,
    driver: &mut Driver,
) -> usize {
    let now = producer.now_ns();
    tally.last_ns = now;
    producer.poll(|completion: Completion| {
        let intended_ns = queued
            .remove(&completion.ticket)
            .expect("a completion answers a queued press");
        if completion.waited {
            // Recorded apart: a pooled or waiting press's latency is mostly its wait.
            if intended_ns != UNTIMED {
                tally
                    .wait_latency_ns
                    .saturating_record(now.saturating_sub(intended_ns).max(1));
            }
            record_outcome(
                tally,
                &shared.catalog,
                shared.start_ns,
                completion.intent,
                completion.outcome,
                now,
            );
        } else {
            record(
                tally,
                &shared.catalog,
                shared.start_ns,
                completion.intent,
                completion.outcome,
                intended_ns,
                now,
            );
        }
        if let (Some(desk), Outcome::Confirmed(order)) = (&driver.desk, completion.outcome) {
            let _ = desk.send(shared.desk.task(&mut driver.rng, &order, now));
        }
    })
}

/// Counts one outcome: latency from `intended_ns` (none if [`UNTIMED`]), the timeline,
/// units, rejections.
pub fn record(
    tally: &mut ProducerTally,
    catalog: &Catalog,
    start_ns: u64,
    intent: flashsale::Intent,
    outcome: Outcome,
    intended_ns: u64,
    now_ns: u64,
) {
    if intended_ns != UNTIMED {
        tally
            .latency_ns
            .saturating_record(now_ns.saturating_sub(intended_ns).max(1));
    }
    record_outcome(tally, catalog, start_ns, intent, outcome, now_ns);
}

/// Records the answer to a buy the cluster's gateway published `attempts` times, as
/// [`record`] does; but a resubmitted buy answered `Duplicate` (its first answer was lost,
/// and the log holds it twice) names either its own order or, for a retry of a confirmed
/// press, that press's order. Which one is known once the run's direct confirmations are
/// all in: such an answer is counted as an outcome now and settled by
/// [`settle_recovered`].
#[cfg_attr(
    not(all(feature = "cluster", not(loom))),
    allow(dead_code, reason = "used by runs on a cluster")
)]
#[allow(
    clippy::too_many_arguments,
    reason = "record's arguments and the attempts"
)]
pub fn record_published(
    tally: &mut ProducerTally,
    catalog: &Catalog,
    start_ns: u64,
    intent: flashsale::Intent,
    outcome: Outcome,
    attempts: u32,
    intended_ns: u64,
    now_ns: u64,
) {
    match outcome {
        Outcome::Rejected {
            reason: RejectReason::Duplicate(order),
            sequence,
        } if attempts > 1 => {
            if intended_ns != UNTIMED {
                tally
                    .latency_ns
                    .saturating_record(now_ns.saturating_sub(intended_ns).max(1));
            }
            tally.outcomes += 1;
            tally.recovered.push((intent, order, sequence, now_ns));
        }
        _ => record(
            tally,
            catalog,
            start_ns,
            intent,
            outcome,
            intended_ns,
            now_ns,
        ),
    }
}

/// Counts the answers [`record_published`] set aside, once `tally` holds every
/// producer's direct confirmations: the first answer naming an order no other outcome
/// holds is that order's confirmation (the buy's units, as it asked); any other is a
/// `Duplicate` rejection. The Duplicate answer does not carry the sequence that
/// confirmed the order: such a confirmation counts as decided before every rejection,
/// which can only make the undersell check more lenient (by that order's units), never
/// fail it.
#[cfg_attr(
    not(all(feature = "cluster", not(loom))),
    allow(dead_code, reason = "used by runs on a cluster")
)]
pub fn settle_recovered(tally: &mut ProducerTally, catalog: &Catalog, start_ns: u64) {
    let recovered = std::mem::take(&mut tally.recovered);
    if recovered.is_empty() {
        return;
    }
    let mut held: HashSet<u64> = tally.orders.iter().map(|order| order.3).collect();
    for (intent, order, sequence, now_ns) in recovered {
        let outcome = if held.insert(order.0) {
            Outcome::Confirmed(recovered_order(order, intent))
        } else {
            Outcome::Rejected {
                reason: RejectReason::Duplicate(order),
                sequence,
            }
        };
        count_outcome(tally, catalog, start_ns, intent, outcome, now_ns);
    }
}

/// The order a resubmitted buy answered `Duplicate(id)` holds if `id` is its own (its
/// first answer was lost): the buy's buyer, SKU and units, with no deciding sequence (the
/// answer does not carry it; see [`settle_recovered`]).
#[cfg_attr(
    not(all(feature = "cluster", not(loom))),
    allow(dead_code, reason = "used by runs on a cluster")
)]
pub fn recovered_order(id: OrderId, intent: Intent) -> Order {
    Order {
        id,
        user: intent.user,
        sku: intent.sku,
        quantity: intent.quantity,
        sequence: 0,
    }
}

/// Counts one outcome without its latency: the timeline, units, rejections.
fn record_outcome(
    tally: &mut ProducerTally,
    catalog: &Catalog,
    start_ns: u64,
    intent: flashsale::Intent,
    outcome: Outcome,
    now_ns: u64,
) {
    tally.outcomes += 1;
    count_outcome(tally, catalog, start_ns, intent, outcome, now_ns);
}

/// [`record_outcome`] but for the count of outcomes.
fn count_outcome(
    tally: &mut ProducerTally,
    catalog: &Catalog,
    start_ns: u64,
    intent: flashsale::Intent,
    outcome: Outcome,
    now_ns: u64,
) {
    let run_ns = now_ns.saturating_sub(start_ns);
    let bucket = (run_ns / BUCKET_NS) as usize;
    if bucket >= tally.timeline.len() {
        tally.timeline.resize(bucket + 1, 0);
        tally.confirmed_timeline.resize(bucket + 1, 0);
    }
    tally.timeline[bucket] += 1;
    match outcome {
        Outcome::Confirmed(order) => {
            tally.confirmed_orders += 1;
            tally.confirmed_timeline[bucket] += 1;
            let index = catalog.index_of(order.sku).expect("confirmed: known");
            tally.confirmed_units[index] += u64::from(order.quantity);
            tally.last_confirmed_ns[index] = tally.last_confirmed_ns[index].max(run_ns);
            let group = catalog.skus()[index].group.map_or(0, |group| group.0);
            tally
                .orders
                .push((order.user.0, group, order.quantity, order.id.0));
            tally
                .confirmed_at
                .push((index as u32, order.sequence, order.quantity));
        }
        Outcome::Rejected { reason, sequence } => {
            tally.rejections[reason.index()] += 1;
            // Only a shard's rejections carry a sequence (not the gate's, nor the
            // producer's screen): the SKU is looked up for those alone.
            if let Some(sequence) = sequence
                && let Some(index) = catalog.index_of(intent.sku)
            {
                match reason {
                    RejectReason::SoldOut => {
                        tally.sold_out_first[index] =
                            earliest(tally.sold_out_first[index], Some(sequence), |&s| s);
                    }
                    // A full waitlist is only met by a buy the stock rule refused.
                    RejectReason::InsufficientStock | RejectReason::WaitlistFull => {
                        tally.insufficient_first[index] = earliest(
                            tally.insufficient_first[index],
                            Some((sequence, intent.quantity)),
                            |&(s, _)| s,
                        );
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The run's result from its producers' merged tally and the engine's report: the
/// invariants checked against the report's levels.
pub fn summarize(
    scenario: &Scenario,
    opens_ns: &[u64],
    mut tally: ProducerTally,
    engine: Report,
    elapsed: Duration,
    presses: u64,
    desk: DeskTally,
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
        &desk.released,
    );
    RunResult {
        offered: None,
        wait_latency_ns: tally.wait_latency_ns.clone(),
        desk,
        gateway: None,
        elapsed,
        presses,
        outcomes: tally.outcomes,
        confirmed_orders: tally.confirmed_orders,
        rejections: tally.rejections,
        latency_ns: tally.latency_ns,
        timeline: tally.timeline,
        confirmed_timeline: tally.confirmed_timeline,
        opens_ns: opens_ns.to_vec(),
        skus: checked.skus,
        invariants: checked.invariants,
        engine,
    }
}

/// The one of two optional records with the smaller key.
fn earliest<T: Copy>(a: Option<T>, b: Option<T>, key: impl Fn(&T) -> u64) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if key(&b) < key(&a) { b } else { a }),
        (a, b) => a.or(b),
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
    released: &HashSet<u64>,
) -> Checked {
    let variants = scenario.variants_per_product as usize;
    let products = scenario.products_per_seller as usize;
    let mut no_oversell = true;
    let mut no_undersell = true;
    tally.confirmed_at.sort_unstable();
    let skus = levels
        .iter()
        .enumerate()
        .map(|(index, sku)| {
            // Every confirmed unit is held, paid for, or went back on sale (expired or
            // cancelled), and units are conserved.
            let confirmed = tally.confirmed_units[index];
            let taken = u64::from(sku.held) + u64::from(sku.sold);
            no_oversell &= taken <= u64::from(sku.stock)
                && confirmed == taken + sku.expired + sku.cancelled
                && sku.held + sku.sold + sku.available == sku.stock;
            no_undersell &= undersell_checked(tally, index, sku);
            let product = (index / variants) % products;
            let sold_out_after_open_ms = (sku.available == 0).then(|| {
                tally.last_confirmed_ns[index].saturating_sub(opens_ns[product]) as f64 / 1e6
                    * scenario.speed
            });
            SkuResult {
                id: sku.id.0,
                stock: sku.stock,
                sold: sku.held + sku.sold,
                remaining: sku.available,
                sold_out_after_open_ms,
                sold_out_at_run_ms: (sku.available == 0)
                    .then(|| tally.last_confirmed_ns[index] as f64 / 1e6),
            }
        })
        .collect();
    let limits_held = limits_held(tally, released, scenario.limit_per_buyer);
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

/// No undersell for SKU `index`: its first `SoldOut` and first `InsufficientStock` came
/// only once enough units were confirmed (`confirmed_at` sorted).
fn undersell_checked(tally: &ProducerTally, index: usize, sku: &SkuLevels) -> bool {
    // A SoldOut decided at sequence s means nothing was available at s. Available
    // at s = initial + restocked − reduced + returned − confirmed (all up to s), so
    // confirmed up to s ≥ initial − reduced = stock − restocked, whatever came back
    // (InsufficientStock or WaitlistFull for q units: available < q, so confirmed
    // > that − q).
    let floor = i128::from(sku.stock) - i128::from(sku.restocked);
    let confirmed_by = |sequence: u64| -> i128 {
        let mine = tally
            .confirmed_at
            .partition_point(|&(i, _, _)| (i as usize) < index);
        tally.confirmed_at[mine..]
            .iter()
            .take_while(|&&(i, s, _)| i as usize == index && s <= sequence)
            .map(|&(_, _, units)| i128::from(units))
            .sum()
    };
    let sold_out_holds =
        tally.sold_out_first[index].is_none_or(|sequence| confirmed_by(sequence) >= floor);
    let insufficient_holds = tally.insufficient_first[index]
        .is_none_or(|(sequence, quantity)| confirmed_by(sequence) > floor - i128::from(quantity));
    sold_out_holds && insufficient_holds
}

/// No buyer keeps more units of a product than the limit.
fn limits_held(tally: &mut ProducerTally, released: &HashSet<u64>, limit: u32) -> bool {
    // Limits count the units a buyer keeps: orders whose units went back on sale do not.
    tally.orders.sort_unstable();
    tally
        .orders
        .chunk_by(|a, b| (a.0, a.1) == (b.0, b.1))
        .all(|orders| {
            orders
                .iter()
                .filter(|order| !released.contains(&order.3))
                .map(|order| order.2)
                .sum::<u32>()
                <= limit
        })
}

#[cfg(test)]
mod tests {
    use flashsale::{Intent, Order, OrderId, SkuId, SkuSpec, UserId};

    use super::*;

    fn intent(user: u64, quantity: u32) -> Intent {
        Intent {
            user: UserId(user),
            client_key: user,
            sku: SkuId(1),
            quantity,
        }
    }

    fn duplicate(order: u64) -> Outcome {
        Outcome::Rejected {
            reason: RejectReason::Duplicate(OrderId(order)),
            sequence: Some(50),
        }
    }

    /// A resubmitted buy's `Duplicate` is its own confirmation once, and only where no
    /// other outcome holds the order; a first publication's `Duplicate` is a rejection.
    #[test]
    fn answers_recovered_by_resubmission_count_each_order_once() {
        let catalog = Catalog::builder()
            .sku(SkuSpec::new(SkuId(1), 10))
            .build()
            .unwrap();
        let mut tally = ProducerTally::new(1, 1, 8);
        let confirmed = Outcome::Confirmed(Order {
            id: OrderId(7),
            user: UserId(1),
            sku: SkuId(1),
            quantity: 2,
            sequence: 3,
        });
        let answers = [
            // A retry of user 1's press, itself resubmitted: names the order confirmed
            // directly (and answered after it).
            (intent(1, 2), duplicate(7), 2),
            (intent(1, 2), confirmed, 1),
            // A plain retry of user 1's press.
            (intent(1, 2), duplicate(7), 1),
            // User 2's press and its retry, both answers lost: one order.
            (intent(2, 3), duplicate(9), 3),
            (intent(2, 3), duplicate(9), 2),
        ];
        for (intent, outcome, attempts) in answers {
            record_published(&mut tally, &catalog, 0, intent, outcome, attempts, 10, 20);
        }
        assert_eq!(tally.outcomes, 5);
        assert_eq!(
            tally.confirmed_orders, 1,
            "recovered answers wait to be settled"
        );
        settle_recovered(&mut tally, &catalog, 0);
        assert_eq!(tally.outcomes, 5);
        assert_eq!(tally.confirmed_orders, 2);
        assert_eq!(tally.units_confirmed(), 5);
        let duplicates = tally.rejections[RejectReason::Duplicate(OrderId(0)).index()];
        assert_eq!(duplicates, 3);
        let mut ids: Vec<u64> = tally.orders.iter().map(|order| order.3).collect();
        ids.sort_unstable();
        assert_eq!(ids, [7, 9]);
        assert_eq!(tally.latency_ns.len(), 5);
        // Settled once: a second call changes nothing.
        settle_recovered(&mut tally, &catalog, 0);
        assert_eq!(tally.confirmed_orders, 2);
    }
}
