//! `flashsale simulate --nats URLS`: the scenario through a sale on NATS JetStream (an
//! engine node and a gateway in this process, on a throwaway sale), with the same report
//! as a run through the in-process engine: open or closed loop, latency from the intended
//! send (or the submit) to the gateway's answer, the timeline, and every invariant checked
//! against the levels the partitions' leaders report.

#[cfg(not(all(feature = "cluster", not(loom))))]
pub use absent::run;
#[cfg(all(feature = "cluster", not(loom)))]
pub use real::run;

#[cfg(all(feature = "cluster", not(loom)))]
mod real {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant, SystemTime};

    use flashsale::cluster::{Decided, Gateway, GatewayError};
    use flashsale::report::{LatencySummary, Refusals, Report, SkuReport};
    use flashsale::{Catalog, Intent, Placement, RejectReason, SkuLevels};

    use crate::compare::cluster_peer::{ClusterKnobs, levels_of, on_throwaway_sale};
    use crate::plan::{Plan, Press};
    use crate::run::{self, BUCKET_NS, DeskTally, ProducerTally, RunResult, Sampler, UNTIMED};
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
        if scenario.has_lifecycle() || scenario.waitlist > 0 {
            return Err(
                "nats: a run on the cluster has no payment desk and no waitlists yet: leave \
                 pay_rate, cancel_rate, hold_ms and waitlist at 0"
                    .into(),
            );
        }
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
            |gateway, epoch| drive(gateway, epoch, scenario, plan, knobs, on_progress),
        ))
    }

    async fn drive(
        gateway: Gateway,
        epoch: SystemTime,
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
        tokio::time::sleep(Duration::from_nanos(plan.start_ns - ready_at)).await;
        let schedules = std::mem::take(&mut plan.schedules);
        let share = (knobs.in_flight as usize / schedules.len().max(1)).max(1);
        let catalog = Arc::new(plan.catalog.clone());
        let buckets = (plan.last_press_ns / BUCKET_NS + 2) as usize;
        let stock = catalog.total_stock();
        let progress = Arc::new(AtomicU64::new(0));
        let wall_start = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for schedule in schedules {
            let (gateway, catalog, progress) = (gateway.clone(), catalog.clone(), progress.clone());
            let orders_max = (schedule.len() as u64).min(stock) as usize;
            let tally = ProducerTally::new(catalog.skus().len(), buckets, orders_max);
            let how = Producing {
                open: scenario.mode == Mode::Open,
                sample: scenario.latency_sample,
                start_ns: plan.start_ns,
                share,
            };
            running.spawn(async move {
                let tally = produce(
                    &gateway, &catalog, schedule, tally, how, sale_now, &progress,
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
        let levels = levels_of(&gateway, &catalog).await?;
        let turned_away = gateway.stats().turned_away;
        let report = report_of(&catalog, scenario, &levels, &tally, turned_away);
        let opens_ns = plan.opens_ns.clone();
        Ok(RunResult {
            offered: (scenario.mode == Mode::Open).then_some(plan.offered),
            ..run::summarize(
                scenario,
                &opens_ns,
                tally,
                report,
                last.saturating_duration_since(wall_start),
                plan.presses,
                DeskTally::new(),
            )
        })
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
        progress: &AtomicU64,
    ) -> ProducerTally {
        let mut sampler = Sampler::new(how.sample);
        let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Answered>();
        let record = |tally: &mut ProducerTally, (intent, sent, decided, at): Answered| {
            progress.fetch_add(1, Ordering::Relaxed);
            tally.last_ns = tally.last_ns.max(at);
            let Ok(decided) = decided else {
                tally.refused += 1;
                return;
            };
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
            run::record(
                tally,
                catalog,
                how.start_ns,
                intent,
                decided.outcome,
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
            let (intent, gateway, answers) = (press.intent, gateway.clone(), answers.clone());
            tokio::spawn(async move {
                let decided = gateway.buy(intent, false).await;
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
    /// partitions' leaders report and the outcomes the gateway gave. The engine's own
    /// latency (a shard's stamp to outcome) is not measured here: it stays empty.
    fn report_of(
        catalog: &Catalog,
        scenario: &Scenario,
        levels: &[SkuLevels],
        tally: &ProducerTally,
        turned_away: u64,
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
        let histogram = flashsale::report::latency_histogram();
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
            skus,
            pools: Vec::new(),
            failed_shards: Vec::new(),
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
