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
//! - `Redis + Lua` (with `--redis HOST:PORT`, feature `redis-peer`): the industry's usual
//!   flash-sale path: a Lua script checks the key, the buyer's units and the stock, and
//!   records the order, called with pipelined `EVALSHA` over several connections.

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
    /// Peers to leave out, by name: engine, mutex, crossbeam.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
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
    let mut scenario = crate::scenario_of(&args.knobs)?;
    scenario.mode = Mode::Closed;
    scenario.rate = None;
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
    if args.redis_connections == 0 {
        return Err("redis-connections: must be at least 1".into());
    }
    if args.redis_pipeline == 0 {
        return Err("redis-pipeline: must be at least 1".into());
    }
    for name in &args.skip {
        if !["engine", "mutex", "crossbeam"].contains(&name.as_str()) {
            return Err(format!(
                "skip: unknown peer '{name}' (one of: engine, mutex, crossbeam)"
            ));
        }
    }
    let skipped = |name: &str| args.skip.iter().any(|skip| skip == name);
    let say = |line: &str| {
        if !args.knobs.quiet {
            eprintln!("{line}");
        }
    };
    let threads = format!(
        "{} producers, {} shards",
        scenario.producers, scenario.shards
    );
    let mut peers = Vec::new();
    if !skipped("engine") {
        say("running flashsale engine ...");
        let plan = Plan::new(&scenario)?;
        let presses = plan.presses;
        let result = run::run(&scenario, plan, None, |_| {})?;
        peers.push(PeerJson::new(
            "engine",
            format!("flashsale engine ({:?} wait)", scenario.wait).to_lowercase(),
            threads.clone(),
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
        ));
    }
    if !skipped("mutex") {
        say("running Mutex<model> ...");
        peers.push(mutex_peer(&scenario)?);
    }
    if !skipped("crossbeam") {
        say("running crossbeam-channel ...");
        peers.push(crossbeam_peer(&scenario)?);
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
         latency: submit (or pipeline send) to outcome",
        report
            .peers
            .first()
            .map_or("", |peer| peer.threads.as_str())
    );
    out
}

/// A peer's verdict on one intent, before counting.
fn validate(intent: &Intent, catalog: &Catalog, max_quantity: u32) -> Option<Outcome> {
    let rejected = |reason| Outcome::Rejected {
        reason,
        sequence: None,
    };
    if intent.quantity == 0 || intent.quantity > max_quantity {
        return Some(rejected(RejectReason::InvalidQuantity));
    }
    if catalog.index_of(intent.sku).is_none() {
        return Some(rejected(RejectReason::UnknownSku));
    }
    None
}

/// The engine's `max_quantity` as `run` sets it.
fn max_quantity(scenario: &Scenario) -> u32 {
    scenario.limit_per_buyer.max(2)
}

/// Runs `drive` on one thread per schedule and merges what they counted.
fn on_threads<F>(plan: Plan, drive: F) -> Result<(ProducerTally, Duration, Plan), String>
where
    F: Fn(usize, &[Press], &Catalog) -> ProducerTally + Sync,
{
    let catalog = &plan.catalog;
    let start = Instant::now();
    let tallies = std::thread::scope(|scope| {
        let handles: Vec<_> = plan
            .schedules
            .iter()
            .enumerate()
            .map(|(index, schedule)| {
                let drive = &drive;
                scope.spawn(move || drive(index, schedule, catalog))
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

fn tally_for(catalog: &Catalog, schedule: &[Press]) -> ProducerTally {
    let stock = catalog.total_stock();
    ProducerTally::new(
        catalog.skus().len(),
        1,
        (schedule.len() as u64).min(stock) as usize,
    )
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

fn mutex_peer(scenario: &Scenario) -> Result<PeerJson, String> {
    let plan = Plan::new(scenario)?;
    // Room for every order the sale can make, up front, as the engine's cores have.
    let stock: usize = plan
        .catalog
        .skus()
        .iter()
        .map(|sku| sku.stock as usize)
        .sum();
    let model = Mutex::new(Model::whole_with_capacity(&plan.catalog, stock));
    let clock = EngineClock::start();
    let max_quantity = max_quantity(scenario);
    let ran = on_threads(plan, |_, schedule, catalog| {
        let mut tally = tally_for(catalog, schedule);
        for press in schedule {
            let sent = clock.now_ns();
            tally.submitted += 1;
            let outcome = validate(&press.intent, catalog, max_quantity).unwrap_or_else(|| {
                model
                    .lock()
                    .expect("no panics while held")
                    .buy(&press.intent, 0)
                    .outcome()
                    .expect("compare runs first-come sales: every buy is decided at once")
            });
            let now = clock.now_ns();
            run::record(&mut tally, catalog, 0, press.intent, outcome, sent, now);
        }
        tally
    })?;
    let model = model.into_inner().expect("no panics while held");
    let decided = ran.0.outcomes;
    Ok(finish(
        "mutex",
        "Mutex<reference model>".into(),
        format!("{} producers", scenario.producers),
        scenario,
        ran,
        &model.levels(),
        decided,
    ))
}

/// A shard's answer to a request, on the crossbeam peer.
type PeerReply = (PeerRequest, Outcome);

/// A request on the crossbeam peer: who sent it, what, and when.
struct PeerRequest {
    producer: u16,
    intent: Intent,
    sent_ns: u64,
}

fn crossbeam_peer(scenario: &Scenario) -> Result<PeerJson, String> {
    let plan = Plan::new(scenario)?;
    let shards = scenario.shards as usize;
    let producers = scenario.producers as usize;
    let capacity = scenario.ring_capacity as usize;
    let placement =
        Placement::new(&plan.catalog, shards).map_err(|error| format!("shards: {error}"))?;
    let clock = EngineClock::start();
    let max_quantity = max_quantity(scenario);
    // Per shard: one MPSC request channel, as deep as the engine's rings into that shard.
    let (request_tx, request_rx): (Vec<Sender<PeerRequest>>, Vec<Receiver<PeerRequest>>) =
        (0..shards).map(|_| bounded(capacity * producers)).unzip();
    // Per producer: one reply channel, as deep as the engine's rings back.
    let (reply_tx, reply_rx): (Vec<Sender<PeerReply>>, Vec<Receiver<PeerReply>>) =
        (0..producers).map(|_| bounded(capacity * shards)).unzip();
    let workers: Vec<_> = request_rx
        .into_iter()
        .enumerate()
        .map(|(shard, requests)| {
            let mut core = ShardCore::new(&plan.catalog, &placement, ShardId(shard as u16));
            let replies = reply_tx.clone();
            let clock = clock.clone();
            std::thread::spawn(move || {
                for request in requests {
                    let outcome = core
                        .buy(&request.intent, clock.now_ns())
                        .outcome()
                        .expect("compare runs first-come sales: every buy is decided at once");
                    let producer = usize::from(request.producer);
                    if replies[producer].send((request, outcome)).is_err() {
                        break;
                    }
                }
                core
            })
        })
        .collect();
    drop(reply_tx);
    let ran = on_threads(plan, |index, schedule, catalog| {
        let replies = &reply_rx[index];
        let senders = request_tx.clone();
        let mut tally = tally_for(catalog, schedule);
        let mut in_flight = 0u64;
        let take = |tally: &mut ProducerTally, (request, outcome): PeerReply| {
            let now = clock.now_ns();
            run::record(
                tally,
                catalog,
                0,
                request.intent,
                outcome,
                request.sent_ns,
                now,
            );
        };
        for press in schedule {
            tally.submitted += 1;
            let sent_ns = clock.now_ns();
            if let Some(outcome) = validate(&press.intent, catalog, max_quantity) {
                take(
                    &mut tally,
                    (
                        PeerRequest {
                            producer: index as u16,
                            intent: press.intent,
                            sent_ns,
                        },
                        outcome,
                    ),
                );
                continue;
            }
            let catalog_index = catalog.index_of(press.intent.sku).expect("validated");
            let (shard, _) = placement.route(catalog_index);
            let mut request = PeerRequest {
                producer: index as u16,
                intent: press.intent,
                sent_ns,
            };
            loop {
                match senders[usize::from(shard.0)].try_send(request) {
                    Ok(()) => {
                        in_flight += 1;
                        break;
                    }
                    Err(TrySendError::Full(back)) => {
                        request = back;
                        // Full: take the answers waiting for us (a shard may be blocked
                        // sending one), or wait for one.
                        match replies.try_recv() {
                            Ok(reply) => {
                                in_flight -= 1;
                                take(&mut tally, reply);
                            }
                            Err(_) => std::thread::yield_now(),
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        tally.refused += 1;
                        break;
                    }
                }
            }
            while let Ok(reply) = replies.try_recv() {
                in_flight -= 1;
                take(&mut tally, reply);
            }
        }
        while in_flight > 0 {
            let Ok(reply) = replies.recv() else { break };
            in_flight -= 1;
            take(&mut tally, reply);
        }
        tally
    })?;
    drop(request_tx);
    let cores = workers
        .into_iter()
        .map(|worker| worker.join())
        .collect::<Result<Vec<ShardCore>, _>>()
        .map_err(|_| "a crossbeam shard thread panicked".to_string())?;
    let decided = cores.iter().map(ShardCore::commands_applied).sum::<u64>()
        + ran.0.rejections[RejectReason::InvalidQuantity.index()]
        + ran.0.rejections[RejectReason::UnknownSku.index()];
    let catalog = &ran.2.catalog;
    let levels: Vec<SkuLevels> = catalog
        .skus()
        .iter()
        .enumerate()
        .map(|(index, sku)| {
            let (shard, _) = placement.route(index);
            cores[usize::from(shard.0)]
                .levels_of(sku.id)
                .expect("placed on that shard")
        })
        .collect();
    Ok(finish(
        "crossbeam",
        "crossbeam-channel + shard cores".into(),
        format!(
            "{} producers, {} shards",
            scenario.producers, scenario.shards
        ),
        scenario,
        ran,
        &levels,
        decided,
    ))
}

#[cfg(feature = "redis-peer")]
mod redis_peer {
    //! The Redis + Lua peer.

    use super::*;

    /// Check the key, then the buyer's units of the SKU and of its group, then the stock
    /// (all four read with one `MGET`: a `redis.call` costs more than a key read);
    /// confirm by taking the units and recording the order. Replies `{code, order}`:
    /// 0 confirmed, 1 duplicate, 2 over the limit, 3 sold out, 4 insufficient stock.
    const SCRIPT: &str = r#"
local now = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
if now[1] then return {1, tonumber(now[1])} end
local quantity = tonumber(ARGV[1])
if tonumber(now[2] or '0') + quantity > tonumber(ARGV[2]) then return {2, 0} end
local group_limit = tonumber(ARGV[3])
if group_limit > 0 and tonumber(now[3] or '0') + quantity > group_limit then return {2, 0} end
local stock = tonumber(now[4] or '0')
if stock == 0 then return {3, 0} end
if stock < quantity then return {4, 0} end
redis.call('DECRBY', KEYS[4], quantity)
redis.call('INCRBY', KEYS[2], quantity)
if group_limit > 0 then redis.call('INCRBY', KEYS[3], quantity) end
local order = redis.call('INCR', KEYS[5])
redis.call('SET', KEYS[1], order)
return {0, order}
"#;

    fn connect(address: &str) -> Result<redis::Connection, String> {
        let client = redis::Client::open(format!("redis://{address}/"))
            .map_err(|error| format!("redis: {address}: {error}"))?;
        client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|error| format!("redis: {address}: {error}"))
    }

    pub fn run(
        scenario: &Scenario,
        address: &str,
        connections: u32,
        pipeline: u32,
    ) -> Result<PeerJson, String> {
        let mut scenario = scenario.clone();
        // One client thread per connection; the plan splits buyers over them.
        scenario.producers = connections;
        let plan = Plan::new(&scenario)?;
        let mut setup = connect(address)?;
        let failed = |error: redis::RedisError| format!("redis: {error}");
        let version: String = redis::cmd("INFO")
            .arg("server")
            .query::<String>(&mut setup)
            .map_err(failed)?
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut setup)
            .map_err(failed)?;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut setup)
            .map_err(failed)?;
        // A fresh namespace per run, so runs never see each other's keys.
        let prefix = format!(
            "flashsale:{}:{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos())
        );
        let catalog = &plan.catalog;
        let mut stock_setup = redis::pipe();
        for sku in catalog.skus() {
            stock_setup
                .cmd("SET")
                .arg(format!("{prefix}:stock:{}", sku.id.0))
                .arg(sku.stock)
                .ignore();
        }
        stock_setup.query::<()>(&mut setup).map_err(failed)?;
        let clock = EngineClock::start();
        let max_quantity = max_quantity(&scenario);
        let errors = Mutex::new(Vec::new());
        let ran = on_threads(plan, |_, schedule, catalog| {
            let mut tally = tally_for(catalog, schedule);
            let mut connection = match connect(address) {
                Ok(connection) => connection,
                Err(error) => {
                    errors.lock().expect("no panics while held").push(error);
                    return tally;
                }
            };
            let mut batch: Vec<Intent> = Vec::with_capacity(pipeline as usize);
            for chunk in schedule.chunks(pipeline as usize) {
                let sent = clock.now_ns();
                let mut pipe = redis::pipe();
                batch.clear();
                for press in chunk {
                    tally.submitted += 1;
                    let intent = press.intent;
                    if let Some(outcome) = validate(&intent, catalog, max_quantity) {
                        run::record(&mut tally, catalog, 0, intent, outcome, sent, sent);
                        continue;
                    }
                    let sku = &catalog.skus()[catalog.index_of(intent.sku).expect("validated")];
                    let group = sku.group.map_or(0, |group| group.0);
                    // Keys are scoped to a product, as the engine's are.
                    let product = sku.group.map_or(format!("sku{}", intent.sku.0), |group| {
                        format!("g{}", group.0)
                    });
                    let group_limit = sku
                        .group
                        .and_then(|group| catalog.group(group))
                        .map_or(0, |group| group.limit_per_buyer);
                    let user = intent.user.0;
                    pipe.cmd("EVALSHA")
                        .arg(&sha)
                        .arg(5)
                        .arg(format!(
                            "{prefix}:order:{user}:{}:{product}",
                            intent.client_key
                        ))
                        .arg(format!("{prefix}:held:{user}:sku:{}", intent.sku.0))
                        .arg(format!("{prefix}:held:{user}:group:{group}"))
                        .arg(format!("{prefix}:stock:{}", intent.sku.0))
                        .arg(format!("{prefix}:orders"))
                        .arg(intent.quantity)
                        .arg(sku.limit_per_buyer)
                        .arg(group_limit);
                    batch.push(intent);
                }
                if batch.is_empty() {
                    continue;
                }
                let replies: Vec<(i64, i64)> = match pipe.query(&mut connection) {
                    Ok(replies) => replies,
                    Err(error) => {
                        errors
                            .lock()
                            .expect("no panics while held")
                            .push(format!("redis: {error}"));
                        return tally;
                    }
                };
                let now = clock.now_ns();
                for (intent, (code, order)) in batch.iter().zip(replies) {
                    let rejected = |reason| Outcome::Rejected {
                        reason,
                        sequence: None,
                    };
                    let outcome = match code {
                        0 => Outcome::Confirmed(flashsale::Order {
                            id: flashsale::OrderId(order as u64),
                            user: intent.user,
                            sku: intent.sku,
                            quantity: intent.quantity,
                            sequence: 0,
                        }),
                        1 => rejected(RejectReason::Duplicate(flashsale::OrderId(order as u64))),
                        2 => rejected(RejectReason::UserLimit),
                        3 => rejected(RejectReason::SoldOut),
                        _ => rejected(RejectReason::InsufficientStock),
                    };
                    run::record(&mut tally, catalog, 0, *intent, outcome, sent, now);
                }
            }
            tally
        })?;
        if let Some(error) = errors.into_inner().expect("no panics while held").pop() {
            return Err(error);
        }
        let catalog = &ran.2.catalog;
        let mut read_back = redis::pipe();
        for sku in catalog.skus() {
            read_back
                .cmd("GET")
                .arg(format!("{prefix}:stock:{}", sku.id.0));
        }
        let left: Vec<i64> = read_back.query(&mut setup).map_err(failed)?;
        let levels: Vec<SkuLevels> = catalog
            .skus()
            .iter()
            .zip(left)
            .map(|(sku, left)| {
                // A negative count would be an oversell; it fails the check as a level
                // that does not add up.
                let available = u32::try_from(left).unwrap_or(u32::MAX);
                SkuLevels {
                    id: sku.id,
                    stock: sku.stock,
                    available,
                    held: sku.stock.saturating_sub(available),
                    sold: 0,
                    expired: 0,
                    cancelled: 0,
                    restocked: 0,
                    reduced: 0,
                    waiting: 0,
                    waitlist_filled: 0,
                }
            })
            .collect();
        let decided = ran.0.outcomes;
        // The server's own time per script call, to tell a slow client from a slow server.
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut setup)
            .map_err(failed)?;
        let per_call = stats
            .lines()
            .find(|line| line.starts_with("cmdstat_evalsha:"))
            .and_then(|line| line.split("usec_per_call=").nth(1))
            .and_then(|rest| rest.split(',').next())
            .map_or(String::new(), |usec| format!(", server {usec} µs/call"));
        Ok(finish(
            "redis",
            format!("Redis {version} + Lua ({connections} conns, pipeline {pipeline}{per_call})"),
            format!("{connections} client threads"),
            &scenario,
            ran,
            &levels,
            decided,
        ))
    }
}

#[cfg(not(feature = "redis-peer"))]
mod redis_peer {
    //! Without the `redis-peer` feature, `--redis` explains how to get it.

    use super::*;

    pub fn run(_: &Scenario, _: &str, _: u32, _: u32) -> Result<PeerJson, String> {
        Err(
            "redis: this build has no Redis peer; build with `--features redis-peer` \
             (benches/peers/redis.sh does)"
                .into(),
        )
    }
}
