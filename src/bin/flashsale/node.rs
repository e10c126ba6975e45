//! `flashsale node`: an engine node of a sale on NATS JetStream.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use flashsale::cluster::nats::{JETSTREAM_WITHIN, SaleOnNats, check_jetstream, connect};
use flashsale::cluster::{NodeConfig, PartitionStatus, run_node};
use tokio::sync::watch;

use crate::serve::catalog_file;

/// Run an engine node: it applies every partition's log and leads the partitions whose
/// lease it holds.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The NATS servers, comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222", env = "FLASHSALE_NATS")]
    nats: String,
    /// The sale's name (its streams and buckets are named after it).
    #[arg(long, default_value = "sale")]
    sale: String,
    /// The catalog file (TOML, as for `serve`); the demo sale if none.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Partitions (shards) the sale is spread over; every node and gateway must agree.
    #[arg(long, default_value_t = 1)]
    partitions: u16,
    /// Copies JetStream keeps of each log (3 on a 3-server cluster).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// This node's name in leases (unique per node); the host and process id if none.
    #[arg(long)]
    id: Option<String>,
    /// How long a partition's lease lasts unless renewed (a standby takes over at most
    /// this long after its leader died).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Entries between the snapshots a leader stores.
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// The largest quantity one intent may ask for (the same on every node and gateway).
    #[arg(long, default_value_t = 16)]
    max_quantity: u32,
    /// Orders each partition makes room for at start-up (default: its stock, up to
    /// 4,194,304). A partition that confirms more grows its order book mid-sale, which
    /// pauses it: about a second per 4M orders on a small VM.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=flashsale::EngineBuilder::ORDER_CAPACITY_MAX as u64))]
    order_capacity: Option<u64>,
    /// Print every partition's status (position applied, leading, reader restarts) this
    /// often.
    #[arg(long, value_parser = humantime::parse_duration)]
    status_every: Option<Duration>,
}

/// The checks of a sale on NATS that need no connection, made before one creates the
/// sale's streams: the catalog file (or the demo sale if none) reads, and its products
/// spread over `partitions`. The sale's epoch is not known yet, so instants are read
/// against the Unix epoch: the same checks pass as against the sale's own, except for
/// instants past the year 2554.
pub fn check_catalog_before_opening(
    path: Option<&Path>,
    partitions: u16,
) -> Result<(flashsale::Catalog, flashsale::Placement), String> {
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    let catalog = match path {
        Some(path) => catalog_file::load(path, epoch),
        None => catalog_file::parse("the demo sale", crate::serve::DEMO_SALE, epoch),
    }
    .map_err(|error| error.0)?;
    let placement = flashsale::Placement::new(&catalog, usize::from(partitions))
        .map_err(|error| format!("place the catalog: {error}"))?;
    Ok((catalog, placement))
}

/// Runs the node until SIGTERM or SIGINT; the exit code: 0 after a clean stop, 2 for bad
/// input found before it connects (settings, the catalog file, a catalog that does not
/// fit the partitions) or in the catalog once it has the sale's epoch, 1 when it cannot
/// run (the NATS servers, the sale's streams, a catalog of another shape than the sale
/// recorded), as `flashsale serve` answers.
pub fn run(args: NodeArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            note!("flashsale node: cannot start the runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(node(args)) {
        Ok(()) => 0,
        Err((code, error)) => {
            note!("flashsale node: {error}");
            code
        }
    }
}

/// Bad input: exit 2.
fn bad_input(error: impl ToString) -> (u8, String) {
    (2, error.to_string())
}

/// Cannot run: exit 1.
fn cannot_run(error: impl ToString) -> (u8, String) {
    (1, error.to_string())
}

async fn node(args: NodeArgs) -> Result<(), (u8, String)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(cannot_run)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(cannot_run)?;
    // SIGHUP (a closed terminal, a log rotation's signal to every daemon) would end the
    // process by default: a node has nothing to read again, so it says so and goes on.
    let mut hangup = signal(SignalKind::hangup()).map_err(cannot_run)?;
    let sale = SaleOnNats::new(&args.sale, args.partitions, args.replicas).map_err(bad_input)?;
    let id = args.id.unwrap_or_else(|| NodeConfig::default().id);
    // Within its range (clap checked it), so it fits a usize.
    let order_capacity = args.order_capacity.map(|orders| orders as usize);
    let config = NodeConfig {
        id: id.clone(),
        lease: args.lease,
        snapshot_every: args.snapshot_every,
        max_quantity: args.max_quantity,
        order_capacity,
        latency: None,
    };
    // Settings the node would refuse, and a catalog that does not fit the partitions,
    // before anything connects (opening the sale creates a stream per partition).
    config.check().map_err(bad_input)?;
    let (catalog, placement) =
        check_catalog_before_opening(args.catalog.as_deref(), args.partitions)
            .map_err(bad_input)?;
    // Its room for orders (a core per partition) within the machine's memory.
    flashsale::EngineBuilder::check_order_room(&catalog, &placement, order_capacity)
        .map_err(bad_input)?;
    let client = connect(&args.nats, &id).await.map_err(cannot_run)?;
    check_jetstream(&client, JETSTREAM_WITHIN)
        .await
        .map_err(cannot_run)?;
    // A cluster that is still electing its leaders times requests out: retry for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let opened = loop {
        match sale.open(client.clone(), args.lease).await {
            Ok(opened) => break opened,
            Err(error) if tokio::time::Instant::now() < deadline => {
                note!("{} flashsale node {id}: {error}; retrying", stamp());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(cannot_run(error)),
        }
    };
    let catalog = match &args.catalog {
        Some(path) => catalog_file::load(path, opened.epoch()).map_err(|e| bad_input(e.0))?,
        None => catalog_file::parse("demo sale", crate::serve::DEMO_SALE, opened.epoch())
            .map_err(|e| bad_input(e.0))?,
    };
    if let Ok(placement) = flashsale::Placement::new(&catalog, usize::from(args.partitions)) {
        for short in flashsale::ShardCore::order_room_short(&catalog, &placement, order_capacity) {
            let note = crate::order_room_note("partition", short);
            note!("{} flashsale node {id}: {note}", stamp());
        }
    }
    let (status, mut watching) = watch::channel(Vec::<PartitionStatus>::new());
    let (stop, stopping) = watch::channel(false);
    let mut running = tokio::spawn(run_node(
        client,
        sale,
        opened,
        catalog,
        config,
        Some(status),
        stopping,
    ));
    // "ready" once every partition is built (its order book's room made, its snapshot
    // restored) and reading its log: building takes seconds for a large stock.
    let mut announced = false;
    let mut leading: Vec<bool> = Vec::new();
    let mut snapshots_failed_said: Vec<u64> = Vec::new();
    let mut status_timer =
        tokio::time::interval(args.status_every.unwrap_or(Duration::from_secs(3_600)));
    let printing = args.status_every.is_some();
    loop {
        tokio::select! {
            _ = status_timer.tick(), if printing => {
                for (partition, status) in watching.borrow().iter().enumerate() {
                    note!(
                        "{} flashsale node {id}: partition {partition}: applied {}, {}, \
                         {} refused, {} reader restarts, {} snapshots stored, {} failed{}",
                        stamp(),
                        status.applied,
                        if status.leading { "leading" } else { "standing by" },
                        status.refused,
                        status.reader_restarts,
                        status.snapshots_stored,
                        status.snapshots_failed,
                        status
                            .restored_from
                            .map(|at| format!(", started from a snapshot at {at}"))
                            .unwrap_or_default()
                    );
                }
            }
            _ = terminate.recv() => {
                note!("{} flashsale node {id}: SIGTERM: stopping", stamp());
                break;
            }
            _ = interrupt.recv() => {
                note!("{} flashsale node {id}: SIGINT: stopping", stamp());
                break;
            }
            _ = hangup.recv() => {
                note!("{} flashsale node {id}: SIGHUP: nothing to read again; going on", stamp());
            }
            ended = &mut running => {
                return match ended {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(cannot_run(error)),
                    Err(error) => Err(cannot_run(error)),
                };
            }
            changed = watching.changed() => {
                if changed.is_err() {
                    continue;
                }
                // A snapshot that could not be stored: said when first seen, then as the
                // count doubles.
                for (partition, status) in watching.borrow().iter().enumerate() {
                    if snapshots_failed_said.len() <= partition {
                        snapshots_failed_said.resize(partition + 1, 0);
                    }
                    let before = snapshots_failed_said[partition];
                    let count = status.snapshots_failed;
                    if count > before && (before == 0 || count.ilog2() > before.ilog2()) {
                        snapshots_failed_said[partition] = count;
                        note!(
                            "{} flashsale node {id}: partition {partition}: {count} snapshot(s) \
                             could not be stored, the last: {}; the partition goes on, and a \
                             restart replays more of its log",
                            stamp(),
                            status.snapshot_error.as_deref().unwrap_or("")
                        );
                    }
                }
                let now: Vec<bool> = watching.borrow().iter().map(|p| p.leading).collect();
                let reading = watching.borrow().iter().all(|p| p.reader_restarts > 0);
                if reading && !announced {
                    announced = true;
                    note!(
                        "{} flashsale node {id}: ready, sale {:?}, {} partitions",
                        stamp(),
                        args.sale,
                        args.partitions
                    );
                    for (partition, status) in watching.borrow().iter().enumerate() {
                        if let Some(why) = status.snapshot_refused {
                            note!(
                                "{} flashsale node {id}: partition {partition}: the stored \
                                 snapshot was not used ({why}): replayed the log from its \
                                 first entry instead",
                                stamp()
                            );
                        }
                    }
                }

                for (partition, (&was, &is)) in leading.iter().chain(std::iter::repeat(&false)).zip(&now).enumerate() {
                    if was != is {
                        let role = if is { "leading" } else { "standing by for" };
                        note!("{} flashsale node {id}: {role} partition {partition}", stamp());
                    }
                }
                leading = now;
            }
        }
    }
    let _ = stop.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(5), running).await;
    if matches!(stopped, Ok(Ok(Ok(())))) {
        let applied: Vec<String> = watching
            .borrow()
            .iter()
            .enumerate()
            .map(|(partition, status)| format!("partition {partition} at entry {}", status.applied))
            .collect();
        note!(
            "{} flashsale node {id}: stopped ({}); the partitions it led were handed over \
             (their leases let go, for a standby to take at once)",
            stamp(),
            applied.join(", ")
        );
    }
    match stopped {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(error))) => Err(cannot_run(error)),
        Ok(Err(error)) => Err(cannot_run(error)),
        Err(_) => Err(cannot_run("the partitions did not stop within 5 s")),
    }
}

/// Now, RFC 3339 with milliseconds, for log lines.
fn stamp() -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_millis(std::time::SystemTime::now())
}
