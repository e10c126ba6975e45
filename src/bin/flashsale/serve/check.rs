//! `flashsale check`: reads a `serve` data directory, changes nothing, and says whether a
//! restart would recover it and from where. Per shard: the journal (commands, how it ends,
//! or where it is damaged), every snapshot (restores, or why not), what a restart would do
//! (the snapshot it would restore and the commands it would replay after it), and whether
//! that state is the one a replay of the whole journal gives; then the order feed's
//! checkpoint. Exit status 0 when a restart recovers every shard (notes such as a torn
//! tail or a snapshot passed over are printed), 1 when one would fail or the two states
//! differ, 2 for bad arguments or a directory of another sale.

use std::path::PathBuf;
use std::time::SystemTime;

use clap::Args;
use flashsale::journal::{Scanned, Tail};
use flashsale::{Catalog, JournalConfig, OrderId, Placement, ShardCore, ShardId};

use super::catalog_file;
use super::feed::Feed;

/// `flashsale check`'s options: the data directory, and the catalog and shard count it was
/// served with (as given to `serve`).
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The data directory `serve` ran on.
    #[arg(long, default_value = "./flashsale-data")]
    data: PathBuf,
    /// The sale's catalog, a TOML file (default: the built-in demo sale), as given to
    /// `serve`.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Engine shards, as given to `serve`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    shards: u32,
    /// Orders each shard makes room for, as given to `serve` (what a restart would make).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=flashsale::EngineBuilder::ORDER_CAPACITY_MAX as u64))]
    order_capacity: Option<u64>,
}

/// Runs the check; the exit status.
pub fn run(args: CheckArgs) -> u8 {
    match check(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err((code, message)) => {
            note!("flashsale check: {message}");
            code
        }
    }
}

/// The sale's epoch, read from the directory (never written: a directory `serve` has not
/// started on is refused).
fn epoch_of(args: &CheckArgs) -> Result<SystemTime, (u8, String)> {
    if let Some(epoch) = super::read_epoch(&args.data)? {
        return Ok(epoch);
    }
    let found = JournalConfig::durable(&args.data)
        .first_shard_file()
        .map_err(|error| (1, error.to_string()))?;
    Err(match found {
        Some(found) => (
            1,
            format!(
                "{}: no sale.epoch beside {}: a restart refuses the directory (the journal's \
                 instants count from its epoch; write it back, or move the journals away)",
                args.data.display(),
                found.display()
            ),
        ),
        None => (
            2,
            format!(
                "{}: no sale.epoch: not a data directory `flashsale serve` has run on",
                args.data.display()
            ),
        ),
    })
}

/// Whether a restart recovers every shard; `Err` for arguments or a directory that do not
/// fit together.
fn check(args: &CheckArgs) -> Result<bool, (u8, String)> {
    let epoch = epoch_of(args)?;
    let catalog = match &args.catalog {
        Some(path) => catalog_file::load(path, epoch).map_err(|error| (2, error.0))?,
        None => catalog_file::parse("the demo sale", super::DEMO_SALE, epoch)
            .map_err(|error| (2, error.0))?,
    };
    let shards = args.shards as usize;
    let placement = Placement::new(&catalog, shards)
        .map_err(|error| (2, format!("--shards {shards}: {error}")))?;
    let config = JournalConfig::durable(&args.data);
    // (`check_manifest` writes a manifest where there is none: only a present one is
    // checked, so that nothing here writes.)
    let manifest = config.manifest_path().exists();
    if manifest {
        // Another sale's manifest is bad input (exit 2); a damaged one is damage found.
        config
            .check_manifest(&catalog, shards)
            .map_err(super::engine_failure)?;
    }
    let unmanifested = if manifest {
        None
    } else {
        config
            .first_shard_file()
            .map_err(|error| (1, error.to_string()))?
    };
    let orders = args
        .order_capacity
        .map(|orders| usize::try_from(orders).unwrap_or(usize::MAX));
    println!(
        "{}: catalog {:016x}, {shards} shard{}",
        args.data.display(),
        catalog.fingerprint(),
        if shards == 1 { "" } else { "s" }
    );
    // A look at the lock (released at once; only where its file is, so that nothing is
    // created): `check` reads, and may run beside `serve`.
    if args.data.join(flashsale::storage::DirLock::FILE).exists()
        && matches!(
            config.lock(),
            Err(flashsale::EngineError::DirectoryInUse { .. })
        )
    {
        println!(
            "note: an engine is serving from this directory now: what follows is what its \
             files held as they were read, and a journal's last group may be mid-write"
        );
    }
    let mut sound = true;
    if let Some(found) = &unmanifested {
        println!(
            "no manifest beside {}: nothing says which catalog and shard count wrote the \
             journals, and a restart refuses them (write the manifest back, or move them away)",
            found.display()
        );
        sound = false;
    } else if !manifest {
        println!("no manifest and no journal yet: a start writes one");
    }
    for shard in 0..shards {
        sound &= check_shard(&config, &catalog, &placement, ShardId(shard as u16), orders);
    }
    let feed = Feed::new(shards);
    match feed.load_checkpoint(&config) {
        Ok(true) => println!(
            "order feed: its checkpoint matches the journals ({}): a restart reads it",
            crate::output::counted(feed.lengths().iter().sum::<usize>() as u64, "event")
        ),
        Ok(false) => println!("order feed: no checkpoint: a restart replays the journals"),
        Err(why) => println!(
            "order feed: the checkpoint is not used ({why}): a restart replays the journals"
        ),
    }
    println!(
        "{}",
        if sound {
            "verdict: a restart recovers every shard"
        } else {
            "verdict: a restart would fail, or would not give the journals' state (see above)"
        }
    );
    Ok(sound)
}

/// Checks one shard's files and prints what it found; whether a restart recovers it.
fn check_shard(
    config: &JournalConfig,
    catalog: &Catalog,
    placement: &Placement,
    shard: ShardId,
    orders: Option<usize>,
) -> bool {
    let say = |text: String| println!("shard {}: {text}", shard.0);
    let path = config.path_of(shard);
    let exists = path.exists();
    let scanned = match std::fs::read(&path) {
        Ok(bytes) => flashsale::journal::scan(&bytes, &path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Scanned {
            shard,
            records: Vec::new(),
            tail: Tail::Clean,
            sealed: false,
        }),
        Err(error) => {
            say(format!(
                "journal {}: cannot be read: {error}",
                path.display()
            ));
            return false;
        }
    };
    let scanned = match scanned {
        Ok(scanned) => scanned,
        Err(error) => {
            say(format!("journal: {error}: a restart refuses it"));
            return false;
        }
    };
    if scanned.shard != shard {
        say(format!(
            "journal {}: of shard {}: a restart refuses it",
            path.display(),
            scanned.shard.0
        ));
        return false;
    }
    // Temporary files of snapshots a crash cut short: a restart removes them.
    let prefix = format!("shard-{:05}-", shard.0);
    for entry in std::fs::read_dir(&config.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            say(format!(
                "{}: a snapshot a crash cut short ({} bytes); a restart removes it",
                entry.path().display(),
                entry.metadata().map_or(0, |meta| meta.len())
            ));
        }
    }
    let journaled = scanned.records.len() as u64;
    say(format!(
        "journal {}: {}, {}",
        path.display(),
        crate::output::counted(journaled, "command"),
        match scanned.tail {
            Tail::Clean if !exists => "none yet (a restart starts it)".to_owned(),
            Tail::Clean if scanned.sealed => "closed cleanly".to_owned(),
            Tail::Clean => "not closed cleanly (a crash or a kill), whole".to_owned(),
            Tail::Torn { torn_bytes, .. } =>
                format!("ends in {torn_bytes} torn bytes never synced (a restart cuts them off)"),
        }
    ));
    // The whole journal replayed, as a check of the state a restart gives.
    let mut whole = ShardCore::with_order_capacity(catalog, placement, shard, orders);
    for (sequence, command) in &scanned.records {
        if *sequence != whole.commands_applied() {
            say(format!(
                "journal: command {sequence} where {} was due: a restart refuses it",
                whole.commands_applied()
            ));
            return false;
        }
        whole.apply(command);
        whole.take_deferred().for_each(drop);
    }
    // Every snapshot; then what a restart would restore.
    let mut snapshots = config.snapshots_of(shard);
    snapshots.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
    let (restored, passed_over) =
        config.restore_newest_snapshot(catalog, placement, shard, orders, journaled);
    let restored_at = restored.as_ref().map(|(sequence, _)| *sequence);
    for (sequence, path) in &snapshots {
        let status = if let Some(passed) = passed_over.iter().find(|passed| &passed.path == path) {
            format!("passed over: {}", passed.why)
        } else if Some(*sequence) == restored_at {
            "restores (a restart starts from it)".to_owned()
        } else {
            match std::fs::read(path).map(|bytes| {
                ShardCore::restore(catalog, placement, shard, orders, &bytes).map(drop)
            }) {
                Ok(Ok(())) => "restores (older: a fallback)".to_owned(),
                Ok(Err(why)) => format!("damaged ({why}): older, not needed"),
                Err(error) => format!("cannot be read ({error}): older, not needed"),
            }
        };
        say(format!(
            "snapshot {} (at command {sequence}): {status}",
            path.display()
        ));
    }
    let (from, mut core) = restored.unwrap_or_else(|| {
        let fresh = ShardCore::with_order_capacity(catalog, placement, shard, orders);
        (0, fresh)
    });
    for (_, command) in &scanned.records[from as usize..] {
        core.apply(command);
        core.take_deferred().for_each(drop);
    }
    let replayed = journaled - from;
    say(format!(
        "a restart {} and replays {replayed} command{}",
        if from == 0 {
            "restores no snapshot".to_owned()
        } else {
            format!("restores the snapshot at command {from}")
        },
        if replayed == 1 { "" } else { "s" }
    ));
    if let Some(difference) = difference(&core, &whole) {
        say(format!(
            "the snapshot at command {from} plus the journal after it does not give the \
             state of the whole journal replayed: {difference}"
        ));
        return false;
    }
    say(format!(
        "that state is the whole journal's: {}, {} held, {} sold",
        crate::output::counted(whole.orders_confirmed(), "order"),
        crate::output::counted(
            whole.levels().map(|sku| u64::from(sku.held)).sum::<u64>(),
            "unit"
        ),
        whole.levels().map(|sku| u64::from(sku.sold)).sum::<u64>()
    ));
    true
}

/// Where two cores' states differ, if they do: as a restart reads them (each SKU's levels
/// and sale, each order, each pool, the clock and what is due), not their tables' layout.
fn difference(a: &ShardCore, b: &ShardCore) -> Option<String> {
    if a.commands_applied() != b.commands_applied() {
        return Some(format!(
            "{} commands against {}",
            a.commands_applied(),
            b.commands_applied()
        ));
    }
    if a.orders_confirmed() != b.orders_confirmed() {
        return Some(format!(
            "{} orders against {}",
            a.orders_confirmed(),
            b.orders_confirmed()
        ));
    }
    if (a.now_ns(), a.next_due_ns()) != (b.now_ns(), b.next_due_ns()) {
        return Some("the clock or what falls due next".to_owned());
    }
    for (x, y) in a.levels().zip(b.levels()) {
        if x != y || a.live_sale(x.id) != b.live_sale(y.id) {
            return Some(format!("SKU {}", x.id.0));
        }
    }
    if !a.pools().eq(b.pools()) {
        return Some("a pool".to_owned());
    }
    let shard = a.shard();
    for number in 0..a.orders_confirmed() {
        let id = OrderId::new(shard, number);
        if a.order(id) != b.order(id) {
            return Some(format!("order {number}"));
        }
    }
    let mut keys_a: Vec<_> = a.confirmed_keys().collect();
    let mut keys_b: Vec<_> = b.confirmed_keys().collect();
    keys_a.sort_unstable();
    keys_b.sort_unstable();
    (keys_a != keys_b).then(|| "the buyers' keys".to_owned())
}
