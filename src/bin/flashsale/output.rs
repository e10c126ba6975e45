//! The simulator's report: a table for people, stable JSON for machines.

use std::fmt::Write as _;

use flashsale::report::Nanos;
use flashsale::{LatencySummary, RejectReason};
use serde::Serialize;

use crate::run::{BUCKET_NS, RunResult};
use crate::scenario::Scenario;

/// Latency percentiles in ns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencyJson {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
    pub mean: u64,
}

impl From<LatencySummary> for LatencyJson {
    fn from(summary: LatencySummary) -> Self {
        Self {
            samples: summary.samples,
            p50: summary.p50_ns,
            p90: summary.p90_ns,
            p99: summary.p99_ns,
            p99_9: summary.p999_ns,
            p99_99: summary.p9999_ns,
            max: summary.max_ns,
            mean: summary.mean_ns,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SkuJson {
    pub id: u32,
    pub stock: u32,
    pub sold: u32,
    pub remaining: u32,
    /// Scenario ms after the sale opened when the last unit went; null if not sold out.
    pub sold_out_after_open_ms: Option<f64>,
    /// The same instant in run time (ms since the run's start), as the timeline counts.
    pub sold_out_at_run_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct InvariantsJson {
    pub one_outcome_per_intent: bool,
    pub no_oversell: bool,
    pub no_undersell: bool,
    pub limits_held: bool,
}

/// What happened to units after their confirmation, and what the payment desk did.
#[derive(Debug, Serialize)]
pub struct LifecycleJson {
    /// Units still held (confirmed, unpaid) at the end.
    pub held_units: u64,
    /// Units paid for.
    pub sold_units: u64,
    /// Units whose hold expired unpaid (back on sale).
    pub expired_units: u64,
    /// Units of cancelled orders (back on sale).
    pub cancelled_units: u64,
    /// Intents confirmed from a waitlist.
    pub waitlist_filled: u64,
    pub paid_orders: u64,
    pub cancelled_orders: u64,
    /// Payments refused because the hold had expired.
    pub payments_refused_hold_expired: u64,
    /// Pay or cancel calls refused for any other reason (none expected).
    pub control_calls_refused_otherwise: u64,
    /// Round trip of the desk's pay and cancel calls.
    pub control_call_ns: LatencyJson,
}

/// One pooled product's draw.
#[derive(Debug, Serialize)]
pub struct PoolJson {
    pub first_sku: u32,
    pub policy: &'static str,
    /// The seed the draw was run with (opening draws), to audit or replay it.
    pub seed: Option<u64>,
    pub pooled_buyers: u64,
    pub served: bool,
}

#[derive(Debug, Serialize)]
pub struct TimelinePoint {
    /// Run time, ms.
    pub t_ms: u64,
    /// Outcomes per second in this 10 ms, and the confirmed and rejected among them.
    pub intents_per_s: f64,
    pub confirmed_per_s: f64,
    pub rejected_per_s: f64,
}

/// What a cluster's gateway did in a run (its counters at the end).
#[cfg(all(feature = "cluster", not(loom)))]
pub use flashsale::cluster::GatewayStats as GatewayJson;

/// Without the cluster there is no gateway: a run never has one.
#[cfg(not(all(feature = "cluster", not(loom))))]
#[derive(Debug, Clone, Copy, Serialize)]
pub enum GatewayJson {}

#[cfg(not(all(feature = "cluster", not(loom))))]
impl std::fmt::Display for GatewayJson {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

/// One run, as `--json` prints it. Keys are stable: tests read them back.
#[derive(Debug, Serialize)]
pub struct RunJson {
    /// One line: what the engine sustained against what was offered, and at what tail.
    pub headline: String,
    pub scenario: Scenario,
    pub elapsed_s: f64,
    pub intents: u64,
    /// Outcomes over the whole run's wall time (thread start-up and the wait for the first
    /// press included).
    pub intents_per_s: f64,
    /// Open loop: presses per second the schedule offered, on average and in its busiest
    /// 10 ms (null in a closed loop, which offers as fast as the engine takes).
    pub offered_per_s: Option<f64>,
    pub peak_offered_per_s: Option<f64>,
    /// Outcomes per second from the run's start to its last outcome, on average and in
    /// the busiest 10 ms.
    pub achieved_per_s: f64,
    pub peak_achieved_per_s: f64,
    /// Open loop: whether the engine fell behind (achieved below 95% of offered).
    pub saturated: Option<bool>,
    pub confirmed_orders: u64,
    pub confirmed_units: u64,
    /// Rejections by reason name.
    pub rejections: std::collections::BTreeMap<&'static str, u64>,
    pub answered_at_submit: u64,
    pub invariants: InvariantsJson,
    /// Shards that failed and why (`shard 0: its journal could not be written: ...`);
    /// empty when every shard ran to the end. A failed shard answers `shard_failed` from
    /// then on, so the invariants that need its stock sold do not hold.
    pub failed_shards: Vec<String>,
    /// From the intended send time (open loop) or submit (closed) to the outcome; a
    /// closed loop times one press in `scenario.latency_sample`.
    pub latency_ns: LatencyJson,
    /// The engine's own: arrival stamp to outcome published, queued intents only (empty
    /// through a cluster, where it is not measured).
    pub engine_latency_ns: LatencyJson,
    /// What the scenario ran through, when not the in-process engine (a cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
    /// Through a cluster: what its gateway did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayJson>,
    /// Like `latency_ns`, for presses that waited (pooled for a draw, or on a waitlist)
    /// before their outcome; their wait is most of it.
    pub wait_latency_ns: LatencyJson,
    pub lifecycle: LifecycleJson,
    pub pools: Vec<PoolJson>,
    /// Group commits of the journal (0 in memory).
    pub journal_commits: u64,
    pub peak_memory_bytes: Option<u64>,
    pub skus: Vec<SkuJson>,
    /// When each product's sale opened, ms since the run's start (distinct instants).
    pub opens_at_run_ms: Vec<f64>,
    pub timeline: Vec<TimelinePoint>,
}

/// The process's peak resident memory (VmHWM), where the OS tells it.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// An open loop whose answers fall below this share of the offered rate fell behind.
pub const SATURATED_BELOW: f64 = 0.95;

/// Millions, for a headline.
fn millions(per_s: f64) -> String {
    if per_s >= 1e5 {
        format!("{:.2}M", per_s / 1e6)
    } else {
        format!("{:.1}k", per_s / 1e3)
    }
}

/// The run in one line: what was sustained, against what was offered, at what tail.
fn headline(
    scenario: &Scenario,
    achieved_per_s: f64,
    offered_per_s: Option<f64>,
    saturated: Option<bool>,
    p99_ns: u64,
) -> String {
    match (offered_per_s, saturated) {
        (Some(offered), Some(saturated)) => format!(
            "sustained {} intents/s of {} offered; p99 {} from intended send{}",
            millions(achieved_per_s),
            millions(offered),
            Nanos(p99_ns),
            if saturated {
                " (SATURATED: fell behind the offered load)"
            } else {
                ""
            }
        ),
        _ => format!(
            "sustained {} intents/s in a closed loop ({} sending as fast as answered); p99 \
             {} from submit",
            millions(achieved_per_s),
            counted(scenario.producers.into(), "producer"),
            Nanos(p99_ns)
        ),
    }
}

impl RunJson {
    pub fn new(scenario: &Scenario, result: &RunResult) -> Self {
        let elapsed_s = result.elapsed.as_secs_f64();
        let rejections = RejectReason::ALL
            .iter()
            .map(|reason| (reason.name(), result.rejections[reason.index()]))
            .collect();
        let (timeline, active_buckets) = timeline_of(result);
        let per_bucket = 1e9 / BUCKET_NS as f64;
        let mut opens_at_run_ms: Vec<f64> =
            result.opens_ns.iter().map(|&ns| ns as f64 / 1e6).collect();
        opens_at_run_ms.dedup();
        // An open loop's rate is over the buckets from its first press's due time to its
        // last answer, against the rate offered over the same time; a closed loop's is
        // over the run's own time, not rounded up to whole buckets (a run of 60 ms would
        // read a sixth low).
        let achieved_per_s = if result.offered.is_some() {
            result.outcomes as f64 / active_buckets as f64 * per_bucket
        } else {
            result.outcomes as f64 / elapsed_s.max(1e-9)
        };
        let peak_achieved_per_s =
            result.timeline.iter().copied().max().unwrap_or(0) as f64 * per_bucket;
        let saturated = result
            .offered
            .map(|offered| achieved_per_s < SATURATED_BELOW * offered.mean_per_s);
        let latency: LatencyJson = LatencySummary::from_histogram(&result.latency_ns).into();
        let headline = headline(
            scenario,
            achieved_per_s,
            result.offered.map(|offered| offered.mean_per_s),
            saturated,
            latency.p99,
        );
        Self {
            headline,
            scenario: scenario.clone(),
            elapsed_s,
            intents: result.presses,
            intents_per_s: result.outcomes as f64 / elapsed_s,
            offered_per_s: result.offered.map(|offered| offered.mean_per_s),
            peak_offered_per_s: result.offered.map(|offered| offered.peak_per_s),
            achieved_per_s,
            peak_achieved_per_s,
            saturated,
            confirmed_orders: result.confirmed_orders,
            confirmed_units: result.engine.confirmed_units,
            rejections,
            answered_at_submit: result.engine.answered_at_submit,
            invariants: InvariantsJson {
                one_outcome_per_intent: result.invariants.one_outcome_per_intent,
                no_oversell: result.invariants.no_oversell,
                no_undersell: result.invariants.no_undersell,
                limits_held: result.invariants.limits_held,
            },
            failed_shards: result
                .engine
                .failures
                .iter()
                .map(|(shard, why)| format!("shard {}: {why}", shard.0))
                .collect(),
            latency_ns: latency,
            engine_latency_ns: result.engine.latency.into(),
            through: None,
            gateway: result.gateway,
            journal_commits: result.engine.journal_commits,
            wait_latency_ns: LatencySummary::from_histogram(&result.wait_latency_ns).into(),
            lifecycle: LifecycleJson::of(result),
            pools: result.engine.pools.iter().map(PoolJson::of).collect(),
            peak_memory_bytes: peak_memory_bytes(),
            skus: result
                .skus
                .iter()
                .map(|sku| SkuJson {
                    id: sku.id,
                    stock: sku.stock,
                    sold: sku.sold,
                    remaining: sku.remaining,
                    sold_out_after_open_ms: sku.sold_out_after_open_ms,
                    sold_out_at_run_ms: sku.sold_out_at_run_ms,
                })
                .collect(),
            opens_at_run_ms,
            timeline,
        }
    }

    pub fn all_invariants_hold(&self) -> bool {
        let checks = &self.invariants;
        self.lifecycle.control_calls_refused_otherwise == 0
            && checks.one_outcome_per_intent
            && checks.no_oversell
            && checks.no_undersell
            && checks.limits_held
    }

    /// The human report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out);
        self.write_latencies(&mut out);
        self.write_lifecycle(&mut out);
        self.write_checks(&mut out);
        self.write_skus(&mut out);
        out
    }

    /// The scenario, the headline, the totals and the rejections.
    fn write_summary(&self, out: &mut String) {
        let s = &self.scenario;
        let _ = writeln!(
            out,
            "scenario {} ({} loop, seed {}): {} x {} x {}, {} units, {}, {}",
            s.name,
            match s.mode {
                crate::scenario::Mode::Open => "open",
                crate::scenario::Mode::Closed => "closed",
            },
            s.seed,
            counted(s.sellers.into(), "seller"),
            counted(s.products_per_seller.into(), "product"),
            counted(s.variants_per_product.into(), "variant"),
            u64::from(s.sellers)
                * u64::from(s.products_per_seller)
                * u64::from(s.stock_per_product),
            counted(s.producers.into(), "producer"),
            counted(s.shards.into(), "shard")
        );
        if let Some(through) = &self.through {
            let _ = writeln!(out, "through {through}");
        }
        if let Some(gateway) = &self.gateway {
            let _ = writeln!(out, "gateway: {gateway}");
        }
        let _ = writeln!(out, "{}", self.headline);
        let _ = writeln!(
            out,
            "{} intents in {:.2} s: {:.2} M intents/s; {} orders, {} units",
            self.intents,
            self.elapsed_s,
            self.intents_per_s / 1e6,
            self.confirmed_orders,
            self.confirmed_units
        );
        let _ = writeln!(
            out,
            "rejections (answered at submit: {}):",
            self.answered_at_submit
        );
        for (reason, count) in &self.rejections {
            if *count > 0 {
                let _ = writeln!(out, "  {reason:<20}{count:>12}");
            }
        }
        for failed in &self.failed_shards {
            let _ = writeln!(out, "FAILED {failed}");
        }
    }

    /// Latency from the send (or submit), in the engine, and of buys that waited.
    fn write_latencies(&self, out: &mut String) {
        let latency = &self.latency_ns;
        let _ = writeln!(
            out,
            "latency (from {}): p50 {} | p90 {} | p99 {} | p99.9 {} | p99.99 {} | max {}",
            match (self.scenario.mode, self.scenario.latency_sample) {
                (crate::scenario::Mode::Open, _) => "intended send".to_string(),
                (crate::scenario::Mode::Closed, 1) => "submit".to_string(),
                (crate::scenario::Mode::Closed, n) => format!("submit, one press in {n}"),
            },
            Nanos(latency.p50),
            Nanos(latency.p90),
            Nanos(latency.p99),
            Nanos(latency.p99_9),
            Nanos(latency.p99_99),
            Nanos(latency.max)
        );
        let engine = &self.engine_latency_ns;
        if self.through.is_some() {
            let _ = writeln!(
                out,
                "node (entry's stamp in the log to its answers' hand-off): p50 {} | p99 {} | \
                 p99.99 {} | max {}",
                Nanos(engine.p50),
                Nanos(engine.p99),
                Nanos(engine.p99_99),
                Nanos(engine.max)
            );
        } else {
            let _ = writeln!(
                out,
                "engine (stamp to outcome, queued only): p50 {} | p99 {} | p99.99 {} | max {}",
                Nanos(engine.p50),
                Nanos(engine.p99),
                Nanos(engine.p99_99),
                Nanos(engine.max)
            );
        }
        let waited = &self.wait_latency_ns;
        if waited.samples > 0 {
            let _ = writeln!(
                out,
                "waited ({} presses pooled or on a waitlist): p50 {} | p99 {} | max {}",
                waited.samples,
                Nanos(waited.p50),
                Nanos(waited.p99),
                Nanos(waited.max)
            );
        }
    }

    /// Payments, expiries, cancellations and waitlists, and the pools (when any).
    fn write_lifecycle(&self, out: &mut String) {
        let life = &self.lifecycle;
        if life.sold_units + life.expired_units + life.cancelled_units + life.waitlist_filled > 0 {
            let _ = writeln!(
                out,
                "units: {} held, {} sold, {} expired, {} cancelled; {} filled from waitlists; \
                 payments refused (hold expired) {}; pay/cancel call p50 {} p99 {}",
                life.held_units,
                life.sold_units,
                life.expired_units,
                life.cancelled_units,
                life.waitlist_filled,
                life.payments_refused_hold_expired,
                Nanos(life.control_call_ns.p50),
                Nanos(life.control_call_ns.p99)
            );
        }
        if life.control_calls_refused_otherwise > 0 {
            let _ = writeln!(
                out,
                "VIOLATED: {} pay or cancel calls refused for a reason other than an expired hold",
                life.control_calls_refused_otherwise
            );
        }
        for pool in self.pools.iter().take(4) {
            let _ = writeln!(
                out,
                "pool of sku {} ({}{}): {} buyers pooled{}",
                pool.first_sku,
                pool.policy,
                pool.seed
                    .map_or(String::new(), |seed| format!(", seed {seed}")),
                pool.pooled_buyers,
                if pool.served { "" } else { ", not served" }
            );
        }
        if self.pools.len() > 4 {
            let _ = writeln!(out, "  ... {} pools in all", self.pools.len());
        }
    }

    /// The invariants and the peak memory.
    fn write_checks(&self, out: &mut String) {
        let check = |ok: bool| if ok { "ok" } else { "VIOLATED" };
        let _ = writeln!(
            out,
            "invariants: one outcome per intent {}, no oversell {}, no undersell {}, limits {}",
            check(self.invariants.one_outcome_per_intent),
            check(self.invariants.no_oversell),
            check(self.invariants.no_undersell),
            check(self.invariants.limits_held)
        );
        if let Some(bytes) = self.peak_memory_bytes {
            let _ = writeln!(
                out,
                "peak memory: {:.1} MiB",
                bytes as f64 / (1 << 20) as f64
            );
        }
    }

    /// The first SKUs' stock, units taken and sell-out times.
    fn write_skus(&self, out: &mut String) {
        let shown = self.skus.len().min(12);
        let _ = writeln!(
            out,
            "{:>8}{:>10}{:>10}{:>10}  sold out after open",
            "sku", "stock", "taken", "left"
        );
        for sku in &self.skus[..shown] {
            let sold_out = sku
                .sold_out_after_open_ms
                .map_or("-".to_string(), |ms| format!("{ms:.0} ms"));
            let _ = writeln!(
                out,
                "{:>8}{:>10}{:>10}{:>10}  {sold_out}",
                sku.id, sku.stock, sku.sold, sku.remaining
            );
        }
        if self.skus.len() > shown {
            let sold_out = self.skus.iter().filter(|sku| sku.remaining == 0).count();
            let _ = writeln!(
                out,
                "  ... {} SKUs in all, {sold_out} sold out",
                self.skus.len()
            );
        }
    }
}

/// Outcomes per second in 10 ms buckets, up to the run's last outcome (buckets sized for
/// the schedule beyond it, as a closed loop finishes long before its schedule would have,
/// are left out), and how many buckets that is.
fn timeline_of(result: &RunResult) -> (Vec<TimelinePoint>, usize) {
    let active_buckets = result
        .timeline
        .iter()
        .rposition(|&count| count > 0)
        .map_or(1, |last| last + 1);
    let per_bucket = 1e9 / BUCKET_NS as f64;
    let timeline = result
        .timeline
        .iter()
        .zip(&result.confirmed_timeline)
        .take(active_buckets)
        .enumerate()
        .map(|(bucket, (&count, &confirmed))| TimelinePoint {
            t_ms: bucket as u64 * BUCKET_NS / 1_000_000,
            intents_per_s: count as f64 * per_bucket,
            confirmed_per_s: confirmed as f64 * per_bucket,
            rejected_per_s: (count - confirmed) as f64 * per_bucket,
        })
        .collect();
    (timeline, active_buckets)
}

impl LifecycleJson {
    /// Units by state, and the payment desk's calls.
    fn of(result: &RunResult) -> Self {
        let skus = &result.engine.skus;
        Self {
            held_units: skus.iter().map(|s| u64::from(s.held)).sum(),
            sold_units: skus.iter().map(|s| u64::from(s.sold)).sum(),
            expired_units: skus.iter().map(|s| s.expired).sum(),
            cancelled_units: skus.iter().map(|s| s.cancelled).sum(),
            waitlist_filled: skus.iter().map(|s| s.waitlist_filled).sum(),
            paid_orders: result.desk.paid_orders,
            cancelled_orders: result.desk.cancelled_orders,
            payments_refused_hold_expired: result.desk.refused_hold_expired,
            control_calls_refused_otherwise: result.desk.unexpected,
            control_call_ns: LatencySummary::from_histogram(&result.desk.call_latency_ns).into(),
        }
    }
}

impl PoolJson {
    fn of(pool: &flashsale::PoolLevels) -> Self {
        Self {
            first_sku: pool.first_sku.0,
            policy: pool.policy.name(),
            seed: match pool.policy {
                flashsale::Policy::OpeningDraw { seed, .. } => Some(seed),
                _ => None,
            },
            pooled_buyers: pool.tickets,
            served: pool.served,
        }
    }
}

/// One line of a rate sweep.
#[derive(Debug, Serialize)]
pub struct RateJson {
    pub offered_per_s: f64,
    pub achieved_per_s: f64,
    /// Achieved below 95% of offered: the engine fell behind at this rate.
    pub saturated: bool,
    pub latency_ns: LatencyJson,
    pub invariants_hold: bool,
}

impl RateJson {
    /// The sweep's line for one open-loop run at `offered_per_s`.
    pub fn of(offered_per_s: f64, run: &RunJson) -> Self {
        Self {
            offered_per_s,
            achieved_per_s: run.achieved_per_s,
            saturated: run.achieved_per_s < SATURATED_BELOW * offered_per_s,
            invariants_hold: run.all_invariants_hold(),
            latency_ns: run.latency_ns,
        }
    }
}

pub fn rate_table(rates: &[RateJson]) -> String {
    let mut out = String::from(
        "offered/s   achieved/s        p50        p90        p99      p99.9     p99.99        max\n",
    );
    for rate in rates {
        let l = &rate.latency_ns;
        let _ = writeln!(
            out,
            "{:>9.2}M {:>11.2}M {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}{}{}",
            rate.offered_per_s / 1e6,
            rate.achieved_per_s / 1e6,
            Nanos(l.p50).to_string(),
            Nanos(l.p90).to_string(),
            Nanos(l.p99).to_string(),
            Nanos(l.p99_9).to_string(),
            Nanos(l.p99_99).to_string(),
            Nanos(l.max).to_string(),
            if rate.saturated { "  saturated" } else { "" },
            if rate.invariants_hold {
                ""
            } else {
                "  INVARIANTS VIOLATED"
            }
        );
    }
    let violated: Vec<String> = rates
        .iter()
        .filter(|rate| !rate.invariants_hold)
        .map(|rate| format!("{:.2}M/s", rate.offered_per_s / 1e6))
        .collect();
    if violated.is_empty() {
        let _ = writeln!(
            out,
            "invariants (one outcome per intent, no oversell, no undersell, limits): held at \
             every rate"
        );
    } else {
        let _ = writeln!(out, "invariants VIOLATED at {}", violated.join(", "));
    }
    out
}

/// `simulate --journal`: the in-memory and the journaled run of one scenario.
pub fn durability_table(memory: &RunJson, journaled: &RunJson) -> String {
    let mut out = String::from(
        "run           intents/s  engine p50  engine p99  p99.9     max        commits/s  invariants\n",
    );
    for (name, run) in [("in memory", memory), ("journaled", journaled)] {
        let l = &run.engine_latency_ns;
        let _ = writeln!(
            out,
            "{name:<12}{:>10.2}M {:>11} {:>11} {:>9} {:>9} {:>12.0}  {}",
            run.intents_per_s / 1e6,
            Nanos(l.p50).to_string(),
            Nanos(l.p99).to_string(),
            Nanos(l.p99_9).to_string(),
            Nanos(l.max).to_string(),
            run.journal_commits as f64 / run.elapsed_s,
            if run.all_invariants_hold() {
                "ok"
            } else {
                "VIOLATED"
            }
        );
    }
    let _ = writeln!(
        out,
        "journaled/in-memory throughput: {:.2}; shard-side latency (stamp to outcome published)",
        journaled.intents_per_s / memory.intents_per_s
    );
    for (name, run) in [("in memory", memory), ("journaled", journaled)] {
        for failed in &run.failed_shards {
            let _ = writeln!(out, "FAILED ({name}) {failed}");
        }
    }
    out
}

/// `count` and `noun`, in the plural unless the count is one ("1 shard", "2 shards").
pub fn counted(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
