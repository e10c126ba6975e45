//! A deterministic fault simulator for durability, in the manner of TigerBeetle's VOPR:
//! the real shard core, journal writer, snapshot writer and recovery (the engine's own,
//! `JournalConfig::recover_shard` and `write_snapshot`) run single-threaded against a
//! simulated disk that fails as disks do, every fault drawn from one seed, so that any
//! failure replays exactly from its seed.
//!
//! The disk: writes that fail after writing part of their bytes, a full disk, syncs that
//! fail (after which the unsynced bytes may or may not be on the disk), slow syncs (the
//! shard's clock moves on meanwhile, so holds fall due), snapshot writes and renames that
//! fail, crashes that keep what was synced plus a random prefix of the unsynced bytes with
//! some of its sectors never written (torn), and bit flips in synced data (bit rot at rest,
//! in the journal and in snapshot files).
//!
//! The shard: commands from a generator (buys, retries, buys that wait, presses pooled for
//! an opening draw, payments, cancellations, restocks, ticks) applied to a `ShardCore` and
//! appended to the journal; committed (and synced) in groups as the engine's group commit
//! does, with a snapshot now and then after a commit; each command's outcomes released
//! only once its group's commit returned. A failed commit is retried once, as a naive
//! caller would (the writer must refuse the retry), then stops the shard (as the engine
//! fails it); a crash comes then, or at any other point.
//!
//! After every crash, recovery must:
//! - refuse with `Corrupt`, naming the offset, when bits flipped in journal data a later
//!   record vouches was synced, and never otherwise (a rotten snapshot is passed over); or
//!   else
//! - keep exactly a prefix of the commands that were applied, in order and unaltered;
//! - hold every command whose outcomes were released (nothing was released that was not
//!   durable), and give each of them, replayed, exactly the outcomes that were released;
//! - agree, command by command, with the reference model replaying the same commands;
//! - equal, byte for byte, a from-scratch replay (whether it started from a snapshot);
//! - conserve units (available + held + sold = stock + restocked) and keep every limit.
//!
//! `tests/fault_sim.rs` runs it over thousands of seeds; the `fault_sim` fuzz target runs
//! it with the seed and the fault rates drawn by the fuzzer; the `engine_threads` fuzz
//! target journals a live engine to its disk.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flashsale::core::SnapshotError;
use flashsale::journal::{HEADER_LEN, JournalError};
use flashsale::reference::Model;
use flashsale::storage::{Storage, StorageFile};
use flashsale::workload::Rng;
use flashsale::{
    Catalog, Command, EngineError, GroupId, GroupSpec, Intent, JournalConfig, OrderId, Placement,
    Policy, ShardCore, ShardId, SkuId, SkuSpec, SnapshotPassedOver, UserId,
};

/// Buyers in the simulation (few, so that limits and retries bite).
pub const USERS: u64 = 25;

/// A sector: the unit a crash keeps or loses of unsynced data.
pub const SECTOR: usize = 512;

/// How often each fault strikes (per operation, or per crash), drawn per seed.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Per write: it fails after writing part of its bytes.
    pub write_error: f64,
    /// Per sync: it fails, leaving the unsynced bytes where a crash may or may not keep them.
    pub sync_error: f64,
    /// The disk is full past this many bytes (freed again at each restart).
    pub capacity: usize,
    /// Per crash: a bit flips in synced data that a later record vouches for, and (apart)
    /// one in a snapshot file.
    pub rot: f64,
    /// Most simulated ns a sync takes (the shard's clock moves on meanwhile).
    pub slow_sync_ns: u64,
}

impl Faults {
    /// A disk that never fails and never fills.
    pub const NONE: Self = Self {
        write_error: 0.0,
        sync_error: 0.0,
        capacity: usize::MAX,
        rot: 0.0,
        slow_sync_ns: 0,
    };

    /// The rates a seed runs under, drawn from its generator.
    pub fn draw(rng: &mut Rng) -> Self {
        Self {
            write_error: [0.0, 0.01, 0.05][rng.below(3) as usize],
            sync_error: [0.0, 0.01, 0.05][rng.below(3) as usize],
            capacity: 4_096 + rng.below(64 << 10) as usize,
            rot: [0.0, 0.2][rng.below(2) as usize],
            slow_sync_ns: [0, 5_000, 50_000][rng.below(3) as usize],
        }
    }
}

/// One file on the simulated disk.
#[derive(Debug, Default, Clone)]
pub struct FileState {
    /// On the disk for sure.
    durable: Vec<u8>,
    /// Written, not synced: may or may not survive a crash, in part.
    volatile: Vec<u8>,
    /// Where each group of records that a sync made durable starts and ends.
    groups: Vec<(usize, usize)>,
}

#[derive(Debug)]
pub struct Disk {
    /// Files appended to (the journal).
    /// (Ordered maps: a crash draws from the seed file by file, so the order files are
    /// visited in must not change from run to run.)
    files: Mutex<BTreeMap<PathBuf, FileState>>,
    /// Files written whole (snapshots): durable once written and synced; one whose write
    /// failed holds part of its bytes, and a crash keeps a random prefix of those.
    whole: Mutex<BTreeMap<PathBuf, (Vec<u8>, bool)>>,
    /// Whole files a bit of which flipped at rest (each must be passed over, and said so,
    /// if recovery reaches it).
    rotten: Mutex<std::collections::BTreeSet<PathBuf>>,
    rng: Mutex<Rng>,
    faults: Mutex<Faults>,
    /// Simulated ns spent in syncs since the shard last looked.
    sync_ns: Mutex<u64>,
}

impl Disk {
    /// An empty disk whose faults are drawn from `seed` at the rates of `faults`.
    pub fn new(seed: u64, faults: Faults) -> Arc<Self> {
        Arc::new(Self {
            files: Mutex::default(),
            whole: Mutex::default(),
            rotten: Mutex::default(),
            rng: Mutex::new(Rng::new(seed ^ 0xD15C)),
            faults: Mutex::new(faults),
            sync_ns: Mutex::new(0),
        })
    }

    fn roll(&self, p: f64) -> bool {
        self.rng.lock().unwrap().unit() < p
    }

    fn below(&self, bound: u64) -> u64 {
        self.rng.lock().unwrap().below(bound)
    }

    /// The machine stops: each file keeps its synced bytes and a random prefix of its
    /// unsynced ones, some sectors of which were never written (zeros); with the seed's
    /// probability a bit of synced, vouched-for data flips. Returns where a bit flipped.
    fn crash(&self) -> Option<usize> {
        let mut files = self.files.lock().unwrap();
        let faults = *self.faults.lock().unwrap();
        let mut flipped = None;
        for state in files.values_mut() {
            let kept = self.below(state.volatile.len() as u64 + 1) as usize;
            let mut survived = state.volatile[..kept].to_vec();
            for sector in survived.chunks_mut(SECTOR) {
                if self.roll(0.3) {
                    sector.fill(0);
                }
            }
            // Bit rot only where later records vouch for it: before the start of the last
            // synced group of records, whose frames prove all before them was synced
            // (damage inside the last group is the one case no reader can tell from a
            // torn write; see the journal's docs).
            let vouched_end = state.groups.last().map_or(0, |&(start, _)| start);
            if vouched_end > HEADER_LEN && self.roll(faults.rot) {
                let at = HEADER_LEN + self.below((vouched_end - HEADER_LEN) as u64) as usize;
                state.durable[at] ^= 1 << self.below(8);
                flipped = Some(at);
            }
            state.durable.extend_from_slice(&survived);
            state.volatile.clear();
        }
        let mut whole = self.whole.lock().unwrap();
        for (path, (bytes, durable)) in whole.iter_mut() {
            if !*durable {
                let kept = self.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(kept);
                *durable = true;
            } else if !bytes.is_empty() && self.roll(faults.rot) {
                // Rot in a snapshot: recovery must pass over it, and say so (the journal
                // still holds every command).
                let at = self.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << self.below(8);
                self.rotten.lock().unwrap().insert(path.clone());
            }
        }
        // An operator freed some space before the restart.
        let mut faults = self.faults.lock().unwrap();
        faults.capacity = faults.capacity.saturating_add(64 << 10);
        flipped
    }

    /// The bytes of an appended file that are on the disk for sure.
    pub fn durable(&self, path: &Path) -> Vec<u8> {
        self.files
            .lock()
            .unwrap()
            .get(path)
            .map(|state| state.durable.clone())
            .unwrap_or_default()
    }

    /// Whether a bit of this whole file flipped at rest.
    pub fn rotten(&self, path: &Path) -> bool {
        self.rotten.lock().unwrap().contains(path)
    }

    /// Simulated time spent in syncs since the last call.
    fn take_sync_ns(&self) -> u64 {
        std::mem::take(&mut *self.sync_ns.lock().unwrap())
    }
}

/// The journal's view of the disk.
#[derive(Debug)]
pub struct SimStorage(pub Arc<Disk>);

impl Storage for SimStorage {
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.0
            .files
            .lock()
            .unwrap()
            .entry(path.to_path_buf())
            .or_default();
        Ok(Box::new(SimFile {
            disk: self.0.clone(),
            path: path.to_path_buf(),
        }))
    }

    /// The simulated disk has no directories: every path is a file of its own.
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    /// Nor a lock: one engine at a time uses a simulated disk.
    fn lock_dir(&self, _dir: &Path) -> io::Result<flashsale::storage::DirLock> {
        Ok(flashsale::storage::DirLock::none())
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let faults = *self.0.faults.lock().unwrap();
        let failed = self.0.roll(faults.write_error) || self.0.roll(faults.sync_error);
        let kept = if failed {
            self.0.below(bytes.len() as u64) as usize
        } else {
            bytes.len()
        };
        self.0
            .whole
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), (bytes[..kept].to_vec(), !failed));
        self.0.rotten.lock().unwrap().remove(path);
        if failed {
            return Err(io::Error::from_raw_os_error(5));
        }
        *self.0.sync_ns.lock().unwrap() += self.0.below(faults.slow_sync_ns + 1);
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.0
            .whole
            .lock()
            .unwrap()
            .get(path)
            .map(|(bytes, _)| bytes.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let faults = *self.0.faults.lock().unwrap();
        if self.0.roll(faults.write_error) {
            return Err(io::Error::from_raw_os_error(5));
        }
        let mut whole = self.0.whole.lock().unwrap();
        let file = whole
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        whole.insert(to.to_path_buf(), file);
        let mut rotten = self.0.rotten.lock().unwrap();
        if rotten.remove(from) {
            rotten.insert(to.to_path_buf());
        } else {
            rotten.remove(to);
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let whole = self.0.whole.lock().unwrap();
        let files = self.0.files.lock().unwrap();
        Ok(whole
            .keys()
            .chain(files.keys())
            .filter(|path| path.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.0.whole.lock().unwrap().remove(path);
        self.0.rotten.lock().unwrap().remove(path);
        Ok(())
    }
}

#[derive(Debug)]
pub struct SimFile {
    disk: Arc<Disk>,
    path: PathBuf,
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut FileState) -> T) -> T {
        f(self.disk.files.lock().unwrap().get_mut(&self.path).unwrap())
    }
}

impl StorageFile for SimFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.with(|state| [state.durable.as_slice(), &state.volatile].concat()))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let faults = *self.disk.faults.lock().unwrap();
        let len = self.with(|state| state.durable.len() + state.volatile.len());
        let room = faults.capacity.saturating_sub(len);
        if room < bytes.len() {
            // A full disk takes what fits, then refuses.
            self.with(|state| state.volatile.extend_from_slice(&bytes[..room]));
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        if self.disk.roll(faults.write_error) {
            let part = self.disk.below(bytes.len() as u64) as usize;
            self.with(|state| state.volatile.extend_from_slice(&bytes[..part]));
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.with(|state| state.volatile.extend_from_slice(bytes));
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let faults = *self.disk.faults.lock().unwrap();
        if self.disk.roll(faults.sync_error) {
            // The unsynced bytes stay where a crash may or may not keep them.
            return Err(io::Error::from_raw_os_error(5));
        }
        *self.disk.sync_ns.lock().unwrap() += self.disk.below(faults.slow_sync_ns + 1);
        self.with(|state| {
            let volatile = std::mem::take(&mut state.volatile);
            if !volatile.is_empty() {
                let start = state.durable.len();
                state.durable.extend_from_slice(&volatile);
                state.groups.push((start, state.durable.len()));
            }
        });
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.with(|state| {
            let mut all = [state.durable.as_slice(), &state.volatile].concat();
            all.truncate(len as usize);
            state.durable = all;
            state.volatile.clear();
            state.groups.retain(|&(_, end)| end <= len as usize);
        });
        Ok(())
    }
}

/// Two sizes of a trainer sharing a limit of 2 (short holds, a waitlist), a lipstick, and
/// a drop sold by an opening draw.
pub fn catalog() -> Catalog {
    Catalog::builder()
        // The draw's pool is served two steps per tick, so crashes and snapshots land in
        // the middle of serving it.
        .pool_slice(2)
        .group(GroupId(1), 2)
        .sku(
            SkuSpec::new(SkuId(1), 6)
                .group(GroupId(1))
                .hold(4_000)
                .waitlist(4),
        )
        .sku(SkuSpec::new(SkuId(2), 4).group(GroupId(1)).hold(9_000))
        .sku(SkuSpec::new(SkuId(3), 30).limit(3))
        // A drop decided by an opening draw: presses in its first 20 µs are pooled.
        .group_spec(GroupSpec::new(GroupId(2), 1).policy(Policy::OpeningDraw {
            window_ns: 20_000,
            seed: 7,
        }))
        .sku(SkuSpec::new(SkuId(4), 5).group(GroupId(2)))
        .build()
        .unwrap()
}

/// What applying one command released: its own result and the waiting buys it decided.
pub fn applied_summary(core: &mut ShardCore, command: &Command) -> String {
    let applied = core.apply(command);
    let deferred: Vec<_> = core.take_deferred().collect();
    format!("{applied:?} {deferred:?}")
}

/// The next command: mostly buys (a fifth of them retries, a third waiting), payments
/// and cancellations of orders seen, restocks and ticks; time moves on 0-999 ns a step.
pub fn next_command(
    rng: &mut Rng,
    now: &mut u64,
    orders: &[OrderId],
    last: &mut Option<Intent>,
) -> Command {
    *now += rng.below(1_000);
    let at_ns = *now;
    let roll = rng.below(100);
    match roll {
        0..=59 => {
            let intent = match last {
                Some(intent) if rng.below(5) == 0 => *intent,
                _ => Intent {
                    user: UserId(rng.below(USERS)),
                    client_key: rng.below(4),
                    sku: SkuId(1 + rng.below(4) as u32),
                    quantity: 1 + rng.below(2) as u32,
                },
            };
            *last = Some(intent);
            if rng.below(3) == 0 {
                Command::BuyOrWait {
                    intent,
                    arrival_ns: at_ns,
                }
            } else {
                Command::Buy {
                    intent,
                    arrival_ns: at_ns,
                }
            }
        }
        60..=74 if !orders.is_empty() => Command::Pay {
            order: orders[rng.below(orders.len() as u64) as usize],
            at_ns,
        },
        75..=84 if !orders.is_empty() => Command::Cancel {
            order: orders[rng.below(orders.len() as u64) as usize],
            at_ns,
        },
        85..=89 => Command::Restock {
            sku: SkuId(1 + rng.below(3) as u32),
            units: 1 + rng.below(3) as u32,
            at_ns,
        },
        _ => Command::Tick { now_ns: at_ns },
    }
}

/// How one seed's run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Every crash recovered with every check holding (some from a snapshot).
    Recovered {
        crashes: u32,
        released: usize,
        from_snapshots: u64,
        /// Rotten snapshots recovery passed over (each reported with its file).
        passed_over: u64,
    },
    /// Recovery refused the journal as damaged at rest (where the bit flipped).
    ReportedRot,
}

/// Runs one seed at the fault rates it draws; `Err` says which check failed.
pub fn run_seed(seed: u64) -> Result<Ended, String> {
    run(seed, None)
}

/// Runs one seed, at the given fault rates instead of the drawn ones when `faults` is
/// set (the rest of the run is still drawn from the seed).
pub fn run(seed: u64, faults: Option<Faults>) -> Result<Ended, String> {
    let mut rng = Rng::new(seed);
    let drawn = Faults::draw(&mut rng);
    let faults = faults.unwrap_or(drawn);
    let disk = Disk::new(seed, faults);
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let config = JournalConfig {
        storage: Arc::new(SimStorage(disk.clone())),
        ..JournalConfig::durable("sim")
    };
    let path = config.path_of(ShardId(0));
    // Every command applied, in order, since the start (the truth a recovery is held to),
    // and the summary of every command whose outcomes were released, by sequence.
    let mut applied: Vec<Command> = Vec::new();
    let mut released: HashMap<u64, String> = HashMap::new();
    let mut now = 0u64;
    let mut crashes = 0;
    let mut flipped: Option<usize> = None;
    let mut from_snapshots = 0;
    let mut passed_over = 0;
    for _life in 0..1 + rng.below(6) {
        // Restart: recover as the engine does (the newest snapshot that checks out, then
        // the journal after it).
        let mut attempts = 0;
        let recovered = loop {
            attempts += 1;
            match config.recover_shard(&catalog, &placement, ShardId(0), None) {
                Ok(recovered) => break recovered,
                // The disk failed the restart itself (its header write or its sync): the
                // process stops, and is started again.
                Err(EngineError::Journal(JournalError::Io { .. })) if attempts < 100 => {
                    flipped = flipped.or(disk.crash());
                }
                Err(EngineError::Journal(JournalError::Corrupt { offset, .. })) => {
                    let Some(at) = flipped else {
                        return Err(format!("Corrupt at {offset} with no bit flipped"));
                    };
                    // The record reported starts at or before the flipped byte.
                    if offset as usize > at {
                        return Err(format!("bit flipped at {at}, Corrupt reported at {offset}"));
                    }
                    return Ok(Ended::ReportedRot);
                }
                Err(other) => return Err(format!("recovery failed: {other}")),
            }
        };
        if flipped.is_some() {
            return Err(format!(
                "a bit flipped at {flipped:?} in vouched-for data, and recovery read past it"
            ));
        }
        from_snapshots += u64::from(recovered.snapshot_at > 0);
        // Every snapshot passed over is one the disk rotted, refused by its checksum or
        // header (a restore check refusing one the shard wrote would be a writer's bug; one
        // ahead of the journal, a snapshot written before its commands were durable); and
        // every rotten one newer than the snapshot restored was passed over and said so.
        for passed in &recovered.passed_over {
            let by_checksum = matches!(
                passed.why,
                SnapshotPassedOver::Refused(
                    SnapshotError::Checksum
                        | SnapshotError::BadHeader
                        | SnapshotError::WrongShard(_)
                )
            );
            if !disk.rotten(&passed.path) || !by_checksum {
                return Err(format!("{passed}, and the disk did not rot it"));
            }
        }
        for (sequence, path) in config.snapshots_of(ShardId(0)) {
            let reported = recovered
                .passed_over
                .iter()
                .any(|passed| passed.path == path && passed.sequence == sequence);
            if sequence > recovered.snapshot_at && disk.rotten(&path) && !reported {
                return Err(format!(
                    "the rotten snapshot {} was passed over without a word",
                    path.display()
                ));
            }
        }
        passed_over += recovered.passed_over.len() as u64;
        // What the journal holds now (its torn tail cut away), read back from the disk.
        let bytes = disk.durable(&path);
        let records = flashsale::journal::scan(&bytes, &path)
            .map_err(|error| format!("the recovered journal does not read back: {error}"))?
            .records;
        let survived = records.len();
        if survived > applied.len() {
            return Err(format!(
                "{survived} records but only {} applied",
                applied.len()
            ));
        }
        // From scratch: every surviving command replayed, each released one checked, and
        // the reference model (the rules stated plainly) agreeing on every one.
        let mut scratch = ShardCore::whole(&catalog);
        let mut model = Model::whole(&catalog);
        let mut orders = Vec::new();
        for (index, (sequence, command)) in records.iter().enumerate() {
            if *sequence != index as u64 || *command != applied[index] {
                return Err(format!("record {index} is not the command applied there"));
            }
            let summary = applied_summary(&mut scratch, command);
            let by_model = format!("{:?} {:?}", model.apply(command), model.take_deferred());
            if by_model != summary {
                return Err(format!(
                    "sequence {sequence}: core {summary}, model {by_model}"
                ));
            }
            if let Some(was) = released.get(sequence)
                && *was != summary
            {
                return Err(format!(
                    "sequence {sequence}: released {was}, replayed {summary}"
                ));
            }
            orders.extend(summary_orders(&summary));
        }
        if let Some(lost) = released.keys().filter(|&&s| s >= survived as u64).min() {
            return Err(format!(
                "sequence {lost} was released but only {survived} commands survived"
            ));
        }
        // The recovered core (snapshot plus tail) is the from-scratch one, byte for byte.
        let mut core = recovered.core;
        if core.snapshot() != scratch.snapshot() {
            return Err(format!(
                "the core recovered from the snapshot at {} differs from a replay of the \
                 {survived} surviving commands",
                recovered.snapshot_at
            ));
        }
        check_levels(&core, &catalog)?;
        check_limits(&model)?;
        applied.truncate(survived);
        now = now.max(core.now_ns());
        let mut writer = recovered.writer;
        // Live: apply and journal commands, commit in groups, release what committed.
        let mut held: Vec<(u64, String)> = Vec::new();
        let mut last = None;
        let steps = rng.below(400);
        let mut group = 1 + rng.below(8);
        for _ in 0..steps {
            let command = next_command(&mut rng, &mut now, &orders, &mut last);
            let sequence = core.commands_applied();
            writer.append(sequence, &command);
            applied.push(command);
            let summary = applied_summary(&mut core, &command);
            orders.extend(summary_orders(&summary));
            held.push((sequence, summary));
            group -= 1;
            if group == 0 {
                group = 1 + rng.below(8);
                // A caller that retries a failed commit once, and releases if the retry
                // succeeds: the writer must refuse it (after a failed write or sync, what
                // reached the disk is unknown). The engine fails the shard instead; either
                // way nothing held goes out, and a restart follows.
                let committed = writer.commit(true).is_ok() || writer.commit(true).is_ok();
                now += disk.take_sync_ns();
                if !committed {
                    break;
                }
                released.extend(held.drain(..));
                // Now and then a snapshot, after a commit as the engine takes them; one
                // that fails is skipped.
                if rng.below(10) == 0 {
                    let _ = config.write_snapshot(&core);
                    now += disk.take_sync_ns();
                }
            }
        }
        // The crash comes wherever the loop stopped (mid-group, or after a failure).
        drop(writer);
        flipped = disk.crash();
        crashes += 1;
    }
    Ok(Ended::Recovered {
        crashes,
        released: released.len(),
        from_snapshots,
        passed_over,
    })
}

/// Order ids confirmed in a command's summary (its own and its waiting buys').
pub fn summary_orders(summary: &str) -> Vec<OrderId> {
    summary
        .match_indices("id: OrderId(")
        .filter_map(|(at, _)| {
            let rest = &summary[at + "id: OrderId(".len()..];
            rest[..rest.find(')')?].parse().ok().map(OrderId)
        })
        .collect()
}

/// Units conserved per SKU.
pub fn check_levels(core: &ShardCore, catalog: &Catalog) -> Result<(), String> {
    for (spec, level) in catalog.skus().iter().zip(core.levels()) {
        let total = u64::from(level.available) + u64::from(level.held) + u64::from(level.sold);
        let stock = u64::from(spec.stock) + level.restocked - level.reduced;
        if total != stock {
            return Err(format!(
                "{:?}: {total} units where {stock} are owed",
                spec.id
            ));
        }
    }
    Ok(())
}

/// No buyer holds more than a limit allows: 2 across the trainer's sizes, 3 lipsticks,
/// 1 of the drawn drop (as the model counts what each buyer holds and bought).
pub fn check_limits(model: &Model) -> Result<(), String> {
    for user in (0..USERS).map(UserId) {
        let trainer = model.held_of_group(user, GroupId(1));
        let lipstick = model.held_by(user, SkuId(3));
        let drop = model.held_of_group(user, GroupId(2));
        if trainer > 2 || lipstick > 3 || drop > 1 {
            return Err(format!(
                "{user:?} holds {trainer} trainers, {lipstick} lipsticks, {drop} drops"
            ));
        }
    }
    Ok(())
}

pub fn check(seed: u64) -> Ended {
    run_seed(seed).unwrap_or_else(|failure| {
        panic!(
            "seed {seed}: {failure}\nreplay it: FLASHSALE_SIM_SEED={seed} cargo test --release \
             --test fault_sim one_seed -- --nocapture"
        )
    })
}
