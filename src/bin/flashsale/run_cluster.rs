//! `flashsale simulate --nats URLS`: the scenario through a sale on NATS JetStream (an
//! engine node and a gateway in this process, on a throwaway sale), with the same report
//! as a run through the in-process engine: open or closed loop, latency from the intended
//! send (or the submit) to the gateway's answer, the timeline, waitlists, the payment desk (each
//! confirmed order paid, cancelled or left to expire through the gateway), and every
//! invariant checked against the levels the partitions' leaders report.

#[cfg(not(all(feature = "cluster", not(loom))))]
pub use absent::run;
#[cfg(all(feature = "cluster", not(loom)))]
pub use real::run;

#[cfg(all(feature = "cluster", not(loom)))]
mod real {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime};

    use flashsale::cluster::{Decided, Gateway, GatewayError, NodeLatency, wire};
    use flashsale::report::{LatencySummary, Refusals, Report, SkuReport};
    use flashsale::{
        Applied, Catalog, Intent, OrderId, Outcome, Placement, RejectReason, SkuLevels,
    };
    use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

    use crate::compare::cluster_peer::{ClusterKnobs, levels_of, on_throwaway_sale};
    use crate::plan::{Plan, Press, Rng};
    use crate::run::{
        self, BUCKET_NS, DeskPlan, DeskTally, DeskTask, ProducerTally, RunResult, Sampler, UNTIMED,
    };
    use crate::scenario::{Mode, Scenario};

    /// From the sale clock's zero to the first scheduled press: the node must lead every
    /// partition by then (a new sale's streams elect their leaders first).
    const LEAD_NS: u64 = 10_000_000_000;

    /// A press's intent, when it was meant to go (or [`UNTIMED`]), the gateway's answer and
    /// when it came (sale clock).
    type Answered = (Intent, u64, Result<Decided, GatewayError>, u64);

    /// Runs the scenario on the cluster. `on_progress(outcomes)` is called every 50 ms.
    pub fn run(
        scenario: &Scenario,
        knobs: &ClusterKnobs,
        on_progress: impl FnMut(u64),
    ) -> Result<RunResult, String> {
        let plan = Plan::with_lead(scenario, LEAD_NS)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| format!("nats: cannot start the runtime: {error}"))?;
        let catalog = plan.catalog.clone();
        runtime.block_on(on_throwaway_sale(
            "simulate",
            scenario,
            &catalog,
            knobs,
            |gateway, epoch, node_latency| {
                drive(
                    gateway,
                    epoch,
                    node_latency,
                    scenario,
                    plan,
                    knobs,
                    on_progress,
                )
            },
        ))
    }

    async fn drive(
        gateway: Gateway,
        epoch: SystemTime,
        node_latency: NodeLatency,
        scenario: &Scenario,
        mut plan: Plan,
        knobs: &ClusterKnobs,
        mut on_progress: impl FnMut(u64),
    ) -> Result<RunResult, String> {
        let sale_now = move || {
            SystemTime::now()
                .duration_since(epoch)
                .map_or(0, |since| since.as_nanos() as u64)
        };
        let ready_at = sale_now();
        if ready_at + 500_000_000 > plan.start_ns {
            return Err(format!(
                "nats: the sale's node took {:.1} s to lead every partition, past the run's \
                 {} s lead",
                ready_at as f64 / 1e9,
                LEAD_NS / 1_000_000_000
            ));
        }
        let schedules = std::mem::take(&mut plan.schedules);
        let share = (knobs.in_flight as usize / schedules.len().max(1)).max(1);
        let catalog = Arc::new(plan.catalog.clone());
        let buckets = (plan.last_press_ns / BUCKET_NS + 2) as usize;
        let stock = catalog.total_stock();
        let tallies =
            ProducerTally::for_schedules(&schedules, catalog.skus().len(), buckets, stock);
        tokio::time::sleep(Duration::from_nanos(
            plan.start_ns.saturating_sub(sale_now()),
        ))
        .await;
        let progress = Arc::new(AtomicU64::new(0));
        let wall_start = Instant::now();
        // The payment desk: pays, cancels or pays late every confirmed order, as the
        // scenario says; only when orders have a life after confirmation.
        let (desk_tx, desk_rx) = unbounded_channel::<DeskTask>();
        let desk = scenario
            .has_lifecycle()
            .then(|| tokio::spawn(desk(gateway.clone(), desk_rx, sale_now)));
        let desk_tx = desk.is_some().then_some(desk_tx);
        let mut running = tokio::task::JoinSet::new();
        for (index, (schedule, tally)) in schedules.into_iter().zip(tallies).enumerate() {
            let (gateway, catalog, progress) = (gateway.clone(), catalog.clone(), progress.clone());
            let desk = desk_tx.clone().map(|sender| Desk {
                sender,
                plan: DeskPlan::of(scenario),
                rng: Rng::new(scenario.seed ^ (index as u64 + 1).wrapping_mul(0xA24B_AED4)),
                called: HashSet::new(),
            });
            let how = Producing {
                open: scenario.mode == Mode::Open,
                sample: scenario.latency_sample,
                start_ns: plan.start_ns,
                share,
                wait: scenario.waitlist > 0,
            };
            running.spawn(async move {
                let tally = produce(
                    &gateway,
                    &catalog,
                    schedule,
                    tally,
                    how,
                    sale_now,
                    Outlets {
                        progress: &progress,
                        desk,
                    },
                );
                (tally.await, Instant::now())
            });
        }
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let mut tally = ProducerTally::new(catalog.skus().len(), buckets, 0);
        let mut last = wall_start;
        loop {
            tokio::select! {
                joined = running.join_next() => match joined {
                    Some(joined) => {
                        let (other, done) =
                            joined.map_err(|_| "a buying task panicked".to_string())?;
                        last = last.max(done);
                        tally.merge(other);
                    }
                    None => break,
                },
                _ = ticker.tick() => on_progress(progress.load(Ordering::Relaxed)),
            }
        }
        on_progress(tally.outcomes);
        run::settle_recovered(&mut tally, &catalog, plan.start_ns);
        // The buying tasks held the desk's only senders: it stops once its calls are done.
        drop(desk_tx);
        let desk = match desk {
            Some(desk) => desk
                .await
                .map_err(|_| "the payment desk panicked".to_string())?,
            None => DeskTally::new(),
        };
        let levels = levels_of(&gateway, &catalog).await?;
        let stats = gateway.stats();
        let turned_away = stats.turned_away;
        let node_latency = node_latency.lock().clone();
        let report = report_of(
            &catalog,
            scenario,
            &levels,
            &tally,
            turned_away,
            node_latency,
        );
        let opens_ns = plan.opens_ns.clone();
        Ok(RunResult {
            offered: (scenario.mode == Mode::Open).then_some(plan.offered),
            gateway: Some(stats),
            ..run::summarize(
                scenario,
                &opens_ns,
                tally,
                report,
                last.saturating_duration_since(wall_start),
                plan.presses,
                desk,
            )
        })
    }

    /// A buying task's line to the payment desk.
    struct Desk {
        sender: UnboundedSender<DeskTask>,
        plan: DeskPlan,
        rng: Rng,
        /// The orders sent to the desk so far.
        called: HashSet<u64>,
    }

    /// Where a buying task reports besides its tally.
    struct Outlets<'a> {
        /// Outcomes so far, for the progress bar.
        progress: &'a AtomicU64,
        /// The payment desk, when orders have a life after confirmation.
        desk: Option<Desk>,
    }

    /// The payment desk: each order's payment or cancellation sent through the gateway
    /// when it falls due (a task of its own, so that calls overlap), until the buying tasks
    /// are done and every call is answered.
    async fn desk(
        gateway: Gateway,
        mut tasks: UnboundedReceiver<DeskTask>,
        sale_now: impl Fn() -> u64 + Copy + Send + 'static,
    ) -> DeskTally {
        type Called = (DeskTask, Result<Applied, GatewayError>, u64);
        let mut tally = DeskTally::new();
        let mut calls = tokio::task::JoinSet::<Called>::new();
        let settle = |tally: &mut DeskTally, (task, answer, latency_ns): Called| match answer {
            Ok(Applied::Done { .. }) => tally.settle(task, Ok(()), latency_ns),
            Ok(Applied::Refused { error, .. }) => tally.settle(task, Err(error), latency_ns),
            // Not an answer a payment or cancellation can have, or none came.
            Ok(_) | Err(_) => {
                tally.call_latency_ns.saturating_record(latency_ns);
                tally.unexpected += 1;
            }
        };
        let mut open = true;
        while open || !calls.is_empty() {
            tokio::select! {
                task = tasks.recv(), if open => match task {
                    Some(task) => {
                        let gateway = gateway.clone();
                        calls.spawn(async move {
                            let now = sale_now();
                            if task.due_ns > now {
                                tokio::time::sleep(Duration::from_nanos(task.due_ns - now)).await;
                            }
                            let order = OrderId(task.order);
                            let control = if task.cancel {
                                wire::Control::Cancel(order)
                            } else {
                                wire::Control::Pay(order)
                            };
                            let started = Instant::now();
                            let answer = gateway.control(control).await;
                            (task, answer, started.elapsed().as_nanos() as u64)
                        });
                    }
                    None => open = false,
                },
                Some(called) = calls.join_next() => {
                    if let Ok(called) = called {
                        settle(&mut tally, called);
                    } else {
                        tally.unexpected += 1;
                    }
                }
            }
        }
        tally
    }

    /// How one buying task sends its presses.
    #[derive(Clone, Copy)]
    struct Producing {
        open: bool,
        /// Closed loop: one press in this many is timed.
        sample: u32,
        /// Sale-clock instant the schedule counts from.
        start_ns: u64,
        /// Closed loop: buys of this task awaiting their answers at most.
        share: usize,
        /// Presses ask to wait on the SKU's waitlist rather than be rejected as sold out.
        wait: bool,
    }

    /// One producer's schedule through the gateway, in order: each press at its time
    /// (open loop, however many await their answers) or as soon as fewer than `share` buys
    /// await their answers (closed). Each buy is a task of its own that sends its answer
    /// back: a set of futures polled here slowed to a crawl with a million in it.
    async fn produce(
        gateway: &Gateway,
        catalog: &Catalog,
        schedule: Vec<Press>,
        mut tally: ProducerTally,
        how: Producing,
        sale_now: impl Fn() -> u64 + Copy + Send + 'static,
        outlets: Outlets<'_>,
    ) -> ProducerTally {
        let Outlets { progress, mut desk } = outlets;
        let mut sampler = Sampler::new(how.sample);
        let (answers, mut answered) = unbounded_channel::<Answered>();
        let mut record = |tally: &mut ProducerTally, (intent, sent, decided, at): Answered| {
            progress.fetch_add(1, Ordering::Relaxed);
            tally.last_ns = tally.last_ns.max(at);
            let Ok(decided) = decided else {
                tally.refused += 1;
                return;
            };
            if let Some(desk) = &mut desk {
                // One call per order: a resubmitted buy answered `Duplicate` may name its
                // own order, confirmed by its first publication (whose answer was lost),
                // or the order of the press it retries (answered here already).
                let order = match decided.outcome {
                    Outcome::Confirmed(order) => Some(order),
                    Outcome::Rejected {
                        reason: RejectReason::Duplicate(id),
                        ..
                    } if decided.attempts > 1 => Some(run::recovered_order(id, intent)),
                    Outcome::Rejected { .. } => None,
                };
                if let Some(order) = order
                    && desk.called.insert(order.id.0)
                {
                    let _ = desk.sender.send(desk.plan.task(&mut desk.rng, &order, at));
                }
            }
            // A pooled press's latency is mostly its wait: recorded apart, as in a run on
            // the engine.
            let timed = if decided.waited {
                if sent != UNTIMED {
                    tally
                        .wait_latency_ns
                        .saturating_record(at.saturating_sub(sent).max(1));
                }
                UNTIMED
            } else {
                sent
            };
            run::record_published(
                tally,
                catalog,
                how.start_ns,
                intent,
                decided.outcome,
                decided.attempts,
                timed,
                at,
            );
        };
        for press in schedule {
            while let Ok(answer) = answered.try_recv() {
                record(&mut tally, answer);
            }
            let sent = if how.open {
                let due = how.start_ns + press.at_ns;
                // Take answers while waiting for the press's time.
                loop {
                    let now = sale_now();
                    if now >= due {
                        break;
                    }
                    let sleep = tokio::time::sleep(Duration::from_nanos(due - now));
                    tokio::select! {
                        Some(answer) = answered.recv() => record(&mut tally, answer),
                        () = sleep => {}
                    }
                }
                due
            } else {
                while tally.submitted - tally.outcomes - tally.refused >= how.share as u64 {
                    if let Some(answer) = answered.recv().await {
                        record(&mut tally, answer);
                    }
                }
                tally.sent_at(&mut sampler, sale_now)
            };
            tally.submitted += 1;
            // Queued here, in the schedule's order; only its answer is awaited apart.
            let (intent, answers) = (press.intent, answers.clone());
            let answer = gateway.buy(intent, how.wait);
            tokio::spawn(async move {
                let decided = answer.await;
                let _ = answers.send((intent, sent, decided, sale_now()));
            });
        }
        drop(answers);
        while let Some(answer) = answered.recv().await {
            record(&mut tally, answer);
        }
        tally
    }

    /// What a run on the engine reports, from what the cluster can tell: the levels its
    /// partitions' leaders report, the outcomes the gateway gave, and in place of the
    /// engine's latency (a shard's stamp to outcome) the node's: from an entry's stamp in
    /// the log to its answers' hand-off.
    fn report_of(
        catalog: &Catalog,
        scenario: &Scenario,
        levels: &[SkuLevels],
        tally: &ProducerTally,
        turned_away: u64,
        node_latency: hdrhistogram::Histogram<u64>,
    ) -> Report {
        let partitions = scenario.shards as usize;
        let placement = Placement::new(catalog, partitions).expect("the sale's placement");
        let skus = catalog
            .skus()
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                SkuReport::of(spec, placement.route(index).0, Some(&levels[index]))
            })
            .collect();
        let histogram = node_latency;
        Report {
            shards: partitions,
            confirmed_orders: tally.confirmed_orders,
            confirmed_units: tally.units_confirmed(),
            rejections: tally.rejections,
            answered_at_submit: turned_away
                + tally.rejections[RejectReason::InvalidQuantity.index()]
                + tally.rejections[RejectReason::UnknownSku.index()],
            refusals: Refusals::default(),
            commands_applied: 0,
            recovered_commands: 0,
            journal_commits: 0,
            snapshots: 0,
            snapshots_failed: 0,
            snapshot_failures: Vec::new(),
            skus,
            pools: Vec::new(),
            failed_shards: Vec::new(),
            failures: Vec::new(),
            latency: LatencySummary::from_histogram(&histogram),
            latency_histogram: histogram,
        }
    }
}

#[cfg(not(all(feature = "cluster", not(loom))))]
mod absent {
    //! Without the `cluster` feature, `--nats` explains how to get it.

    use crate::compare::cluster_peer::ClusterKnobs;
    use crate::run::RunResult;
    use crate::scenario::Scenario;

    pub fn run(_: &Scenario, _: &ClusterKnobs, _: impl FnMut(u64)) -> Result<RunResult, String> {
        Err(
            "nats: this build cannot run a sale on a cluster; build with `--features cluster`"
                .into(),
        )
    }
}
