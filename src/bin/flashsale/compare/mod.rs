//! `flashsale compare`: one scenario, closed loop, through the engine and its peers, side
//! by side.
//!
//! Every peer gets the same plan (the same intents, split over the same producer threads
//! by buyer), answers every intent with the same rules, and is checked with the same
//! invariants as the engine. Peers run one after another in one process, so the ratios
//! compare figures taken minutes apart on the same machine.
//!
//! - `flashsale engine`: the engine, as `simulate --mode closed` runs it.
//! - `Mutex<model>`: the obvious implementation: the reference model (the same rules on Fx
//!   hash maps, sized for every order up front) behind one `Mutex`, called straight from
//!   the producer threads.
//! - `crossbeam-channel`: the engine's shard cores, fed through bounded crossbeam
//!   channels (one MPSC request channel per shard, one reply channel per producer) instead
//!   of the engine's SPSC rings: the transport baseline.
//! - `cluster` (with `--nats URLS`, feature `cluster`): the sale on NATS JetStream, an
//!   engine node and a gateway in this process, buys batched into the replicated log.
//! - `Redis + Lua` (with `--redis HOST:PORT`, feature `redis-peer`): the industry's usual
//!   flash-sale path: a Lua script checks the key, the buyer's units and the stock, and
//!   records the order, called with pipelined `EVALSHA` over several connections.

pub mod cluster_peer;
mod crossbeam;
mod mutex;
mod redis_peer;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Args;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use flashsale::clock::EngineClock;
use flashsale::reference::Model;
use flashsale::report::Nanos;
use flashsale::{
    Catalog, Intent, LatencySummary, Outcome, Placement, RejectReason, ShardCore, ShardId,
    SkuLevels,
};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::Knobs;
use crate::output::{InvariantsJson, LatencyJson};
use crate::plan::{Plan, Press};
use crate::run::{self, Invariants, ProducerTally, SkuResult};
use crate::scenario::{Mode, Scenario};
use crossbeam::crossbeam_peer;
use mutex::mutex_peer;

/// `flashsale compare` arguments.
#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    knobs: Knobs,
    /// A Redis server (HOST:PORT) to run the Redis + Lua peer against; it should be a
    /// throwaway one (`benches/peers/redis.sh` starts one). Needs the `redis-peer` feature.
    #[arg(long)]
    redis: Option<String>,
    /// Redis connections, one client thread each.
    #[arg(long, default_value_t = 8)]
    redis_connections: u32,
    /// `EVALSHA` calls per Redis pipeline.
    #[arg(long, default_value_t = 64)]
    redis_pipeline: u32,
    #[command(flatten)]
    nats: cluster_peer::NatsArgs,
    /// Peers to leave out, by name: engine, mutex, crossbeam.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Time one press in this many, in every peer (1: every press). Two clock reads and a
    /// histogram record per press cost more than the engine's decision on its fastest
    /// paths; timing every press measures the harness as much as the peer.
    #[arg(long, default_value_t = 64)]
    latency_sample: u32,
}

/// One peer's run.
#[derive(Debug, Serialize)]
pub struct PeerJson {
    /// Short name: engine, mutex, crossbeam, redis.
    pub peer: &'static str,
    /// What ran, in words.
    pub detail: String,
    pub threads: String,
    pub elapsed_s: f64,
    pub intents: u64,
    pub intents_per_s: f64,
    /// The engine's intents/s over this peer's (1 for the engine itself).
    pub engine_speedup: Option<f64>,
    pub confirmed_orders: u64,
    pub confirmed_units: u64,
    pub rejections: std::collections::BTreeMap<&'static str, u64>,
    pub invariants: InvariantsJson,
    /// Per intent, from its submit (or its pipeline's send) to its outcome.
    pub latency_ns: LatencyJson,
}

/// The whole comparison, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct CompareJson {
    pub scenario: Scenario,
    pub cpus: usize,
    pub peers: Vec<PeerJson>,
}

/// What one peer's run counted: from a baseline's tally and checks, or the engine's run.
struct Counted<'a> {
    outcomes: u64,
    confirmed_orders: u64,
    rejections: &'a [u64; RejectReason::ALL.len()],
    latency_ns: &'a Histogram<u64>,
    skus: &'a [SkuResult],
    invariants: &'a Invariants,
}

impl PeerJson {
    fn new(
        peer: &'static str,
        detail: String,
        threads: String,
        counted: Counted<'_>,
        elapsed: Duration,
        presses: u64,
    ) -> Self {
        let elapsed_s = elapsed.as_secs_f64();
        Self {
            peer,
            detail,
            threads,
            elapsed_s,
            intents: presses,
            intents_per_s: counted.outcomes as f64 / elapsed_s,
            engine_speedup: None,
            confirmed_orders: counted.confirmed_orders,
            confirmed_units: counted.skus.iter().map(|sku| u64::from(sku.sold)).sum(),
            rejections: RejectReason::ALL
                .iter()
                .map(|reason| (reason.name(), counted.rejections[reason.index()]))
                .collect(),
            invariants: InvariantsJson {
                one_outcome_per_intent: counted.invariants.one_outcome_per_intent,
                no_oversell: counted.invariants.no_oversell,
                no_undersell: counted.invariants.no_undersell,
                limits_held: counted.invariants.limits_held,
            },
            latency_ns: LatencySummary::from_histogram(counted.latency_ns).into(),
        }
    }

    fn holds(&self) -> bool {
        let checks = &self.invariants;
        checks.one_outcome_per_intent
            && checks.no_oversell
            && checks.no_undersell
            && checks.limits_held
    }
}

/// Runs the comparison; `Ok(false)` if a peer broke an invariant.
pub fn compare(args: &CompareArgs) -> Result<bool, String> {
    let scenario = checked_scenario(args)?;
    // The peers on servers are checked first: a server that cannot be reached is refused
    // before the in-process rows run, not after them (whose figures would be lost).
    let cluster = args.nats.knobs()?;
    if let Some(knobs) = &cluster {
        cluster_peer::check(knobs)?;
    }
    if let Some(address) = &args.redis {
        redis_peer::check(address)?;
    }
    let say = |line: &str| {
        if !args.knobs.quiet {
            note!("{line}");
        }
    };
    let mut peers = Vec::new();
    if !args.skipped("engine") {
        say("running flashsale engine ...");
        peers.push(engine_peer(&scenario)?);
    }
    if !args.skipped("mutex") {
        say("running Mutex<model> ...");
        peers.push(mutex_peer(&scenario)?);
    }
    if !args.skipped("crossbeam") {
        say("running crossbeam-channel ...");
        peers.push(crossbeam_peer(&scenario)?);
    }
    if let Some(knobs) = &cluster {
        say(&format!(
            "running the cluster on NATS at {} ...",
            cluster_peer::without_credentials(&knobs.urls)
        ));
        peers.push(cluster_peer::run(&scenario, knobs)?);
    }
    if let Some(address) = &args.redis {
        say(&format!("running Redis + Lua at {address} ..."));
        peers.push(redis_peer::run(
            &scenario,
            address,
            args.redis_connections,
            args.redis_pipeline,
        )?);
    }
    if let Some(engine_rate) = peers
        .iter()
        .find(|peer| peer.peer == "engine")
        .map(|peer| peer.intents_per_s)
    {
        for peer in &mut peers {
            peer.engine_speedup = Some(engine_rate / peer.intents_per_s);
        }
    }
    let all_hold = peers.iter().all(PeerJson::holds);
    let report = CompareJson {
        scenario,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        peers,
    };
    if args.knobs.json {
        let text = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
        println!("{text}");
    } else {
        print!("{}", table(&report));
    }
    Ok(all_hold)
}

impl CompareArgs {
    fn skipped(&self, name: &str) -> bool {
        self.skip.iter().any(|skip| skip == name)
    }
}

/// The scenario as compare runs it (closed loop, no pacing), refused where the peers
/// cannot run it, with the peer knobs checked.
fn checked_scenario(args: &CompareArgs) -> Result<Scenario, String> {
    let mut scenario = crate::scenario_of(&args.knobs)?;
    scenario.mode = Mode::Closed;
    scenario.rate = None;
    scenario.latency_sample = args.latency_sample;
    scenario.validate()?;
    if scenario.policy != crate::scenario::PolicyKind::FirstCome
        || scenario.has_lifecycle()
        || scenario.waitlist > 0
    {
        return Err(
            "policy: compare runs first-come sales without payments or waitlists (the peers \
             implement only those); use simulate for the rest"
                .into(),
        );
    }
    if !(1..=1_024).contains(&args.redis_connections) {
        return Err(format!(
            "redis-connections: must be 1..=1024, got {}",
            args.redis_connections
        ));
    }
    args.nats.knobs()?;
    if !(1..=65_536).contains(&args.redis_pipeline) {
        return Err(format!(
            "redis-pipeline: must be 1..=65536, got {}",
            args.redis_pipeline
        ));
    }
    for name in &args.skip {
        if !["engine", "mutex", "crossbeam"].contains(&name.as_str()) {
            return Err(format!(
                "skip: unknown peer '{name}' (one of: engine, mutex, crossbeam)"
            ));
        }
    }
    if args.redis.is_none()
        && args.nats.nats.is_none()
        && ["engine", "mutex", "crossbeam"]
            .iter()
            .all(|name| args.skipped(name))
    {
        return Err("skip: every peer is skipped, so there is nothing to compare".into());
    }
    Ok(scenario)
}

/// The engine's row: the simulator's own run of the scenario.
fn engine_peer(scenario: &Scenario) -> Result<PeerJson, String> {
    let threads = format!(
        "{} producers, {} shards",
        scenario.producers, scenario.shards
    );
    let plan = Plan::new(scenario)?;
    let presses = plan.presses;
    let result = run::run(scenario, plan, None, |_| {})?;
    Ok(PeerJson::new(
        "engine",
        format!("flashsale engine ({:?} wait)", scenario.wait).to_lowercase(),
        threads,
        Counted {
            outcomes: result.outcomes,
            confirmed_orders: result.confirmed_orders,
            rejections: &result.rejections,
            latency_ns: &result.latency_ns,
            skus: &result.skus,
            invariants: &result.invariants,
        },
        result.elapsed,
        presses,
    ))
}

fn table(report: &CompareJson) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let s = &report.scenario;
    let intents = report.peers.first().map_or(0, |peer| peer.intents);
    let _ = writeln!(
        out,
        "compare: scenario {} (closed loop, seed {}), {intents} intents, {} CPUs",
        s.name, s.seed, report.cpus
    );
    let _ = writeln!(
        out,
        "{:<60} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  invariants",
        "peer", "intents/s", "engine x", "p50", "p99", "p99.9", "max", "units"
    );
    for peer in &report.peers {
        let latency = &peer.latency_ns;
        let _ = writeln!(
            out,
            "{:<60} {:>9.3}M {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  {}",
            peer.detail,
            peer.intents_per_s / 1e6,
            peer.engine_speedup
                .map_or("-".to_string(), |ratio| format!("{ratio:.1}")),
            Nanos(latency.p50).to_string(),
            Nanos(latency.p99).to_string(),
            Nanos(latency.p99_9).to_string(),
            Nanos(latency.max).to_string(),
            peer.confirmed_units,
            if peer.holds() { "hold" } else { "VIOLATED" }
        );
    }
    let _ = writeln!(
        out,
        "threads: {} (Redis: one client thread per connection); \
         latency: submit (or pipeline send) to outcome, {}",
        report
            .peers
            .first()
            .map_or("", |peer| peer.threads.as_str()),
        match s.latency_sample {
            1 => "every intent timed".to_string(),
            n => format!("one intent in {n} timed (Redis: every one, by its pipeline)"),
        }
    );
    out
}

/// A peer's verdict on a malformed intent, by the engine's own rule ([`Catalog::admit`]).
fn validate(intent: &Intent, catalog: &Catalog, max_quantity: u32) -> Option<Outcome> {
    let reason = catalog.admit(intent, max_quantity).err()?;
    Some(Outcome::Rejected {
        reason,
        sequence: None,
    })
}

/// The engine's `max_quantity` as `run` sets it.
fn max_quantity(scenario: &Scenario) -> u32 {
    scenario.limit_per_buyer.max(2)
}

/// Runs `drive` on one thread per schedule, each with its own tally, and merges what
/// they counted. The tallies are made before the clock starts, as the engine's run makes
/// them before its engine starts: they touch every page they reserve (tens of ms for a
/// million orders), which would otherwise count against the peer.
fn on_threads<F>(plan: Plan, drive: F) -> Result<(ProducerTally, Duration, Plan), String>
where
    F: Fn(usize, &[Press], &Catalog, ProducerTally) -> ProducerTally + Sync,
{
    let catalog = &plan.catalog;
    let ready = ProducerTally::for_schedules(
        &plan.schedules,
        catalog.skus().len(),
        1,
        catalog.total_stock(),
    );
    let start = Instant::now();
    let tallies = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .schedules
            .iter()
            .zip(ready)
            .enumerate()
            .map(|(index, (schedule, tally))| {
                let drive = &drive;
                scope.spawn(move || drive(index, schedule, catalog, tally))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| "a peer thread panicked".to_string())
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let elapsed = start.elapsed();
    let mut total = ProducerTally::new(catalog.skus().len(), 1, 0);
    for tally in tallies {
        total.merge(tally);
    }
    Ok((total, elapsed, plan))
}

fn finish(
    peer: &'static str,
    detail: String,
    threads: String,
    scenario: &Scenario,
    (mut tally, elapsed, plan): (ProducerTally, Duration, Plan),
    levels: &[SkuLevels],
    decided: u64,
) -> PeerJson {
    let checked = run::check(
        scenario,
        &plan.opens_ns,
        &mut tally,
        levels,
        decided,
        plan.presses,
        &std::collections::HashSet::new(),
    );
    PeerJson::new(
        peer,
        detail,
        threads,
        Counted {
            outcomes: tally.outcomes,
            confirmed_orders: tally.confirmed_orders,
            rejections: &tally.rejections,
            latency_ns: &tally.latency_ns,
            skus: &checked.skus,
            invariants: &checked.invariants,
        },
        elapsed,
        plan.presses,
    )
}
