//! `flashsale`: the load simulator. `flashsale simulate` runs a live-stream flash sale
//! against the engine and prints a report a capacity planner can act on.

/// Writes a line to standard error as `eprintln!` does, but a failed write is ignored:
/// `serve` and `node` keep SIGPIPE ignored (a client that goes away must not end them), so
/// with their log's reader gone (a log shipper that died, a `| head`) `eprintln!` would
/// panic, mid-sale or mid-stop. Their log lines are lost then, not their sale.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod compare;
mod fsync;
mod hiccups;
mod input;
#[cfg(all(feature = "cluster", not(loom)))]
mod node;
mod output;
mod plan;
mod plot;
mod run;
mod run_cluster;
mod scenario;
#[cfg(all(feature = "serve", not(loom)))]
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use output::{RateJson, RunJson};
use plan::Plan;
use scenario::{Mode, PRESETS, PolicyKind, Scenario, Wait};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The build's version, with the protocol of its cluster messages: every node and gateway
/// of a sale must be of one protocol (see `flashsale::cluster::PROTOCOL`).
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (cluster protocol {})",
        env!("CARGO_PKG_VERSION"),
        flashsale::cluster::PROTOCOL
    )
});

#[derive(Parser)]
#[command(
    name = "flashsale",
    version = VERSION.as_str(),
    propagate_version = true,
    about = "Simulate live-stream flash sales against the flashsale engine"
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run a scenario (default: sneaker-drop) and print its report.
    Simulate(SimulateArgs),
    /// Run one scenario, closed loop, through the engine and its peers (Mutex<HashMap>,
    /// crossbeam-channel, and with `--redis` Redis + Lua); print them side by side.
    Compare(compare::CompareArgs),
    /// Measure how long this machine pauses a spinning thread (the floor under any tail).
    Hiccups(hiccups::HiccupArgs),
    /// Measure how long this machine's disk takes to make an append durable.
    Fsync(fsync::FsyncArgs),
    /// Serve a sale over HTTP: buys, payments, the order event feed, operator routes.
    #[cfg(all(feature = "serve", not(loom)))]
    Serve(serve::ServeArgs),
    /// Check a `serve` data directory without changing it: whether a restart recovers
    /// every shard, from which snapshot, and with the state its whole journal gives.
    #[cfg(all(feature = "serve", not(loom)))]
    Check(serve::check::CheckArgs),
    /// Run an engine node of a sale on NATS JetStream (feature `cluster`).
    #[cfg(all(feature = "cluster", not(loom)))]
    Node(node::NodeArgs),
}

/// Scenario knobs shared by `simulate` and `compare`.
#[derive(Args)]
struct Knobs {
    /// Preset: sneaker-drop, lipstick-live, micro-shows, steady.
    #[arg(long, default_value = "sneaker-drop")]
    scenario: String,
    /// A TOML scenario file (fields as in the presets; missing ones take sneaker-drop's).
    #[arg(long, conflicts_with = "scenario")]
    file: Option<PathBuf>,
    /// Request threads.
    #[arg(long)]
    producers: Option<u32>,
    /// Shard threads.
    #[arg(long)]
    shards: Option<u32>,
    /// Ring slots per producer and shard.
    #[arg(long)]
    ring_capacity: Option<u32>,
    /// Orders each shard makes room for at start-up (default: its stock, up to 4,194,304;
    /// past its room a shard's order book grows mid-sale).
    #[arg(long)]
    order_capacity: Option<u64>,
    /// Cap on the number of intents.
    #[arg(long)]
    intents: Option<u64>,
    /// Viewers per seller.
    #[arg(long)]
    viewers: Option<u64>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Shard idle strategy.
    #[arg(long, value_enum)]
    wait: Option<Wait>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct SimulateArgs {
    #[command(flatten)]
    knobs: Knobs,
    /// Constant offered rate, e.g. 1M or 250k (intents/s); replaces the burst shape.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Sweep offered rates, e.g. 1M,2M,5M: one open-loop run per rate, a latency table.
    /// (Open loop and in memory: not with --mode, --journal, --plot or --rate.)
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_rate,
        conflicts_with_all = ["rate", "mode", "journal", "plot"]
    )]
    rates: Option<Vec<f64>>,
    /// Open loop (scheduled sends, latency from the schedule) or closed (as fast as taken).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Scenario time runs this many times faster than wall time.
    #[arg(long)]
    speed: Option<f64>,
    /// Draw the latency percentile curve and intents/s over time to this SVG file (the
    /// name must end in .svg).
    #[arg(long, value_parser = parse_svg_path)]
    plot: Option<PathBuf>,
    /// Allocation policy of every product.
    #[arg(long, value_enum)]
    policy: Option<PolicyKind>,
    /// Pooled policies: how long (scenario ms) after the opening the pool stays open.
    #[arg(long)]
    draw_window_ms: Option<u64>,
    /// Fraction of orders paid `--pay-delay-ms` after confirmation.
    #[arg(long)]
    pay_rate: Option<f64>,
    /// Fraction of orders cancelled `--pay-delay-ms` after confirmation (the rest pay after
    /// their hold expired, and are refused).
    #[arg(long)]
    cancel_rate: Option<f64>,
    /// Scenario ms between an order's confirmation and its payment or cancellation.
    #[arg(long)]
    pay_delay_ms: Option<u64>,
    /// Payment window, scenario ms: unpaid units go back on sale after it.
    #[arg(long)]
    hold_ms: Option<u64>,
    /// Waitlist places per SKU; presses then wait for units rather than be rejected as
    /// sold out.
    #[arg(long)]
    waitlist: Option<u32>,
    /// Scenario ms after each opening at which the sale closes (answers everyone waiting).
    #[arg(long)]
    close_after_ms: Option<u64>,
    /// Closed loop: time one press in this many (default 1, every press).
    #[arg(long)]
    latency_sample: Option<u32>,
    /// Run the scenario twice, in memory and with a durable journal in this (new or empty)
    /// directory, and print them side by side (no --plot: there are two runs).
    #[arg(long, conflicts_with = "plot")]
    journal: Option<PathBuf>,
    /// With `--journal`: write each group commit without waiting for the disk.
    #[arg(long, requires = "journal")]
    no_fsync: bool,
    /// Run the scenario through a sale on a NATS JetStream cluster instead of the
    /// in-process engine (not with --journal or --rates).
    #[command(flatten)]
    nats: compare::cluster_peer::NatsArgs,
    /// Check the knobs and print the run's estimated presses, memory and wall time, then
    /// exit without running (every run checks the same estimates before it starts).
    #[arg(long)]
    estimate: bool,
}

/// A plot's path: SVG is what is written, so the name must say so.
fn parse_svg_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match path.extension().and_then(|ext| ext.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => Ok(path),
        _ => Err(format!("'{text}': the plot is SVG; name the file .svg")),
    }
}

/// Parses `1M`, `2.5m`, `250k`, `1000`.
fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.chars().last() {
        Some('k' | 'K') => (&text[..text.len() - 1], 1e3),
        Some('m' | 'M') => (&text[..text.len() - 1], 1e6),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a rate like 1M, 250k or 1000"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("'{text}': a rate must be above 0"));
    }
    Ok(value * scale)
}

/// The preset or file named by `knobs`, with the knobs' overrides (not yet validated).
fn scenario_of(knobs: &Knobs) -> Result<Scenario, String> {
    let mut scenario = match &knobs.file {
        Some(path) => {
            let text = input::read_bounded_text(path, input::DESCRIPTION_MAX)
                .map_err(|error| format!("file: {}: {error}", path.display()))?;
            Scenario::from_toml(&text)
                .map_err(|error| format!("file {}: {error}", path.display()))?
        }
        None => Scenario::preset(&knobs.scenario).ok_or_else(|| {
            format!(
                "scenario: unknown preset '{}' (one of: {})",
                knobs.scenario,
                PRESETS.join(", ")
            )
        })?,
    };
    let set = |field: &mut u32, value: Option<u32>| {
        if let Some(value) = value {
            *field = value;
        }
    };
    set(&mut scenario.producers, knobs.producers);
    set(&mut scenario.shards, knobs.shards);
    set(&mut scenario.ring_capacity, knobs.ring_capacity);
    if let Some(orders) = knobs.order_capacity {
        scenario.order_capacity = Some(orders);
    }
    if let Some(intents) = knobs.intents {
        scenario.intents = Some(intents);
    }
    if let Some(viewers) = knobs.viewers {
        scenario.viewers_min = viewers;
        scenario.viewers_max = viewers;
    }
    if let Some(seed) = knobs.seed {
        scenario.seed = seed;
    }
    if let Some(wait) = knobs.wait {
        scenario.wait = wait;
    }
    Ok(scenario)
}

fn simulate_scenario(args: &SimulateArgs) -> Result<Scenario, String> {
    let mut scenario = scenario_of(&args.knobs)?;
    if let Some(rate) = args.rate {
        scenario.rate = Some(rate);
    }
    if let Some(mode) = args.mode {
        scenario.mode = mode;
    }
    if let Some(speed) = args.speed {
        scenario.speed = speed;
    }
    if let Some(policy) = args.policy {
        scenario.policy = policy;
    }
    if let Some(ms) = args.draw_window_ms {
        scenario.draw_window_ms = ms;
    }
    if let Some(rate) = args.pay_rate {
        scenario.pay_rate = rate;
    }
    if let Some(rate) = args.cancel_rate {
        scenario.cancel_rate = rate;
    }
    if let Some(ms) = args.pay_delay_ms {
        scenario.pay_delay_ms = ms;
    }
    if args.hold_ms.is_some() {
        scenario.hold_ms = args.hold_ms;
    }
    if let Some(places) = args.waitlist {
        scenario.waitlist = places;
    }
    if args.close_after_ms.is_some() {
        scenario.close_after_ms = args.close_after_ms;
    }
    if let Some(sample) = args.latency_sample {
        scenario.latency_sample = sample;
    }
    scenario.validate()?;
    Ok(scenario)
}

fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} outcomes {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn run_once(scenario: &Scenario, quiet: bool) -> Result<(RunJson, Histogram<u64>), String> {
    run_with(scenario, quiet, None)
}

fn run_with(
    scenario: &Scenario,
    quiet: bool,
    journal: Option<flashsale::JournalConfig>,
) -> Result<(RunJson, Histogram<u64>), String> {
    let plan = Plan::new(scenario)?;
    let bar = progress_bar(plan.presses, quiet);
    let result = run::run(scenario, plan, journal, |outcomes| {
        bar.set_position(outcomes)
    })?;
    bar.finish_and_clear();
    Ok((RunJson::new(scenario, &result), result.latency_ns))
}

/// The scenario through a sale on the cluster (see `run_cluster`).
fn run_on_cluster(
    scenario: &Scenario,
    knobs: &compare::cluster_peer::ClusterKnobs,
    quiet: bool,
) -> Result<(RunJson, Histogram<u64>), String> {
    let bar = progress_bar(Plan::new(scenario)?.presses, quiet);
    let result = run_cluster::run(scenario, knobs, |outcomes| bar.set_position(outcomes))?;
    bar.finish_and_clear();
    let mut run = RunJson::new(scenario, &result);
    run.through = Some(format!(
        "a sale on NATS JetStream (R{} logs, {} buys in flight), an engine node and a \
         gateway in this process",
        knobs.replicas, knobs.in_flight
    ));
    Ok((run, result.latency_ns))
}

fn simulate(args: &SimulateArgs) -> Result<bool, String> {
    let scenario = simulate_scenario(args)?;
    if args.estimate {
        let memory: f64 = scenario.memory_bytes().iter().map(|(_, bytes)| bytes).sum();
        let text = serde_json::json!({
            "presses": scenario.presses_sent().round(),
            "presses_generated": scenario.presses_generated().round(),
            "memory_bytes_at_most": memory.round(),
            "wall_seconds_at_most": scenario.wall_seconds(),
        });
        if args.knobs.json {
            println!("{text:#}");
        } else {
            println!(
                "scenario {}: about {:.0} presses, at most {:.1} MiB of memory, {:.1} s of \
                 schedule and timers (a closed loop adds the time to send them); knobs ok",
                scenario.name,
                scenario.presses_sent(),
                memory / f64::from(1u32 << 20),
                scenario.wall_seconds()
            );
        }
        return Ok(true);
    }
    if args.rates.is_some() && args.nats.nats.is_some() {
        return Err("nats: --rates runs the in-process engine only; not with --nats".into());
    }
    if let Some(rates) = &args.rates {
        // Every rate is checked before the first runs, so that a rate out of range is
        // refused before the sweep rather than after the runs before it.
        let sweep = rates
            .iter()
            .map(|&rate| {
                let mut at_rate = scenario.clone();
                at_rate.rate = Some(rate);
                at_rate.mode = Mode::Open;
                at_rate.validate().map(|()| (rate, at_rate))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut lines = Vec::new();
        let mut all_hold = true;
        for (rate, at_rate) in &sweep {
            let (run, _) = run_once(at_rate, args.knobs.quiet)?;
            all_hold &= run.all_invariants_hold();
            lines.push(RateJson::of(*rate, &run));
        }
        if args.knobs.json {
            let text = serde_json::to_string_pretty(&lines).map_err(|error| error.to_string())?;
            println!("{text}");
        } else {
            println!(
                "scenario {} (open loop, latency from intended send time)",
                scenario.name
            );
            print!("{}", output::rate_table(&lines));
        }
        return Ok(all_hold);
    }
    let cluster = args.nats.knobs()?;
    // A plot that cannot be written is refused before the run, not after it.
    if let Some(path) = &args.plot {
        plot::check_writable(path).map_err(|error| format!("plot: {}: {error}", path.display()))?;
    }
    if let Some(dir) = &args.journal {
        if cluster.is_some() {
            return Err(
                "nats: a run on the cluster is journaled by the cluster; not with --journal".into(),
            );
        }
        return simulate_journaled(args, &scenario, dir);
    }
    let (run, latency_ns) = match &cluster {
        Some(knobs) => run_on_cluster(&scenario, knobs, args.knobs.quiet)?,
        None => run_once(&scenario, args.knobs.quiet)?,
    };
    // The report first: a plot that fails to draw must not take the run's figures with it.
    if args.knobs.json {
        let text = serde_json::to_string_pretty(&run).map_err(|error| error.to_string())?;
        println!("{text}");
    } else {
        print!("{}", run.table());
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &run, &latency_ns)
            .map_err(|error| format!("plot: {}: {error}", path.display()))?;
        if !args.knobs.json {
            println!("plot written to {}", path.display());
        }
    }
    Ok(run.all_invariants_hold())
}

/// `simulate --journal DIR`: the scenario in memory, then with a journal, side by side.
fn simulate_journaled(
    args: &SimulateArgs,
    scenario: &Scenario,
    dir: &std::path::Path,
) -> Result<bool, String> {
    let not_empty = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if not_empty {
        return Err(format!(
            "journal: {} is not empty (a journal there would be recovered into this run)",
            dir.display()
        ));
    }
    // Made before the in-memory run, so that a directory that cannot be made is refused
    // before either run rather than after the first.
    std::fs::create_dir_all(dir).map_err(|error| format!("journal: {}: {error}", dir.display()))?;
    if let Some(kind) = fsync::in_memory_filesystem(dir) {
        note!(
            "note: {} is on {kind}, in memory: its syncs reach no disk, so the journaled run \
             is not a disk's",
            dir.display()
        );
    }
    let config = flashsale::JournalConfig {
        sync: !args.no_fsync,
        ..flashsale::JournalConfig::durable(dir)
    };
    let (memory, _) = run_once(scenario, args.knobs.quiet)?;
    let (journaled, _) = run_with(scenario, args.knobs.quiet, Some(config.clone()))?;
    let all_hold = memory.all_invariants_hold() && journaled.all_invariants_hold();
    if args.knobs.json {
        let both = serde_json::json!({ "in_memory": memory, "journaled": journaled });
        let text = serde_json::to_string_pretty(&both).map_err(|error| error.to_string())?;
        println!("{text}");
        return Ok(all_hold);
    }
    println!(
        "scenario {}: in memory, then journaled to {} ({}; groups of up to {} commands or {} µs)",
        scenario.name,
        dir.display(),
        if config.sync {
            "fdatasync per group"
        } else {
            "written, not synced"
        },
        config.group_commands,
        config.group_delay.as_micros()
    );
    print!("{}", output::durability_table(&memory, &journaled));
    Ok(all_hold)
}

/// The start-up note for a shard (or partition) whose stock is past its room for orders.
fn order_room_note(part: &str, (shard, stock, room): (flashsale::ShardId, u64, usize)) -> String {
    format!(
        "note: {part} {} sells {stock} units with room for {room} orders: past that its order \
         book grows mid-sale, which pauses its decisions (raise --order-capacity)",
        shard.0
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(all(feature = "cluster", not(loom)))]
    if let CliCommand::Node(args) = cli.command {
        return ExitCode::from(node::run(args));
    }
    #[cfg(all(feature = "serve", not(loom)))]
    if let CliCommand::Serve(args) = cli.command {
        // A server keeps SIGPIPE ignored: a client that goes away must not end it.
        return ExitCode::from(serve::run(args));
    }
    // Output piped into `head` and the like: end quietly when the reader goes away, as
    // other command-line tools do, rather than panic on the failed write.
    #[cfg(target_os = "linux")]
    // SAFETY: restoring a signal's default action has no preconditions; it runs before
    // any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(all(feature = "serve", not(loom)))]
    if let CliCommand::Check(args) = cli.command {
        return ExitCode::from(serve::check::run(args));
    }
    let result = match &cli.command {
        CliCommand::Simulate(args) => simulate(args),
        CliCommand::Compare(args) => compare::compare(args),
        CliCommand::Hiccups(args) => hiccups::hiccups(args),
        CliCommand::Fsync(args) => fsync::fsync(args),
        #[cfg(all(feature = "serve", not(loom)))]
        CliCommand::Serve(_) => unreachable!("served above"),
        #[cfg(all(feature = "serve", not(loom)))]
        CliCommand::Check(_) => unreachable!("checked above"),
        #[cfg(all(feature = "cluster", not(loom)))]
        CliCommand::Node(_) => unreachable!("run above"),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            note!("error: an invariant was violated or a shard failed (see the report)");
            ExitCode::from(1)
        }
        Err(message) => {
            note!("error: {message}");
            ExitCode::from(2)
        }
    }
}
