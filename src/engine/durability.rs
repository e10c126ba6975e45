//! Durability: where and how shards journal what they apply ([`JournalConfig`]), recovery
//! at start-up (snapshot, then the journal after it), and each worker's journal: group
//! commit state, the outputs held until a commit, snapshots written behind it, and the seal
//! at a clean shutdown. The journal's format is [`crate::journal`]; the disk is reached
//! through [`crate::storage`].

use super::error::EngineError;
use super::gate::SoldOutGate;
use super::journal_thread::Pipe;
use super::lane::{DeferredQueue, Reply, ReplySlot};
use super::shared::Answer;
use crate::catalog::{Catalog, Placement};
use crate::core::{Command, OrderEvent, ShardCore};
use crate::journal::JournalWriter;
use crate::sync::Arc;
use crate::types::{Completion, ControlError, Order, ShardId};

/// Where and how the shards journal the commands they apply (see
/// [`EngineBuilder::journal`](crate::EngineBuilder::journal)).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory of the journals: `shard-00000.fsj`, one per shard.
    pub dir: std::path::PathBuf,
    /// Whether each group commit waits for the disk (`fdatasync`): survives a power loss.
    /// Without it a commit is a `write` to the OS, which survives the process, not the
    /// machine.
    pub sync: bool,
    /// The most commands in one group commit (1: every command is committed on its own; at
    /// most [`EngineBuilder::GROUP_COMMANDS_MAX`](crate::EngineBuilder::GROUP_COMMANDS_MAX)).
    pub group_commands: usize,
    /// How long the first command of a group may wait for others before the commit. A
    /// shard with nothing more to do commits at once. At most
    /// [`EngineBuilder::GROUP_DELAY_MAX`](crate::EngineBuilder::GROUP_DELAY_MAX).
    pub group_delay: core::time::Duration,
    /// Write a snapshot of each shard after this many commands (none: recovery replays
    /// the whole journal). A snapshot is written (and synced) by the shard's thread, which
    /// decides nothing meanwhile; its size grows with the orders confirmed (about 100 bytes
    /// each), the waiting intents and the buyer filter (up to 512 KiB). The two newest are
    /// kept. `Some(0)` is refused.
    pub snapshot_every: Option<u64>,
    /// What the journals are written through: plain files ([`FileStorage`]) unless a test
    /// puts an observing or faulty disk there. Snapshots are plain files either way.
    ///
    /// [`FileStorage`]: crate::storage::FileStorage
    pub storage: std::sync::Arc<dyn crate::storage::Storage>,
}

/// Equal when every setting is, and both write through the same storage object.
impl PartialEq for JournalConfig {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir
            && self.sync == other.sync
            && self.group_commands == other.group_commands
            && self.group_delay == other.group_delay
            && self.snapshot_every == other.snapshot_every
            && std::ptr::addr_eq(
                std::sync::Arc::as_ptr(&self.storage),
                std::sync::Arc::as_ptr(&other.storage),
            )
    }
}

impl Eq for JournalConfig {}

impl JournalConfig {
    /// Durable group commit in `dir`: synced, up to 4,096 commands or 200 µs per group.
    pub fn durable(dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sync: true,
            group_commands: 4096,
            group_delay: core::time::Duration::from_micros(200),
            snapshot_every: None,
            storage: std::sync::Arc::new(crate::storage::FileStorage),
        }
    }

    /// The directory's manifest: which catalog (its [`Catalog::fingerprint`]) and how many
    /// shards wrote the journals in it.
    pub fn manifest_path(&self) -> std::path::PathBuf {
        self.dir.join("flashsale.manifest")
    }

    /// Takes the directory's lock (see [`Storage::lock_dir`](crate::storage::Storage::lock_dir))
    /// for as long as the guard lives: one engine at a time appends to its journals.
    ///
    /// # Errors
    /// [`EngineError::DirectoryInUse`] while another engine holds it;
    /// [`EngineError::Journal`] if the lock file cannot be opened or locked.
    pub fn lock(&self) -> Result<crate::storage::DirLock, EngineError> {
        let lock = self.dir.join(crate::storage::DirLock::FILE);
        self.storage.lock_dir(&self.dir).map_err(|source| {
            if source.kind() == std::io::ErrorKind::WouldBlock {
                EngineError::DirectoryInUse {
                    dir: self.dir.clone(),
                    lock,
                }
            } else {
                crate::journal::JournalError::Io { path: lock, source }.into()
            }
        })
    }

    /// A shard's journal or snapshot in the directory, if there is one (a journal first,
    /// then by name).
    ///
    /// # Errors
    /// [`EngineError::Journal`] if the directory cannot be listed.
    pub fn first_shard_file(&self) -> Result<Option<std::path::PathBuf>, EngineError> {
        let files =
            self.storage
                .list(&self.dir)
                .map_err(|source| crate::journal::JournalError::Io {
                    path: self.dir.clone(),
                    source,
                })?;
        Ok(files
            .into_iter()
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| {
                        name.starts_with("shard-")
                            && (name.ends_with(".fsj") || name.ends_with(".fss"))
                    })
            })
            .min_by_key(|path| {
                let journal = path.extension().is_some_and(|extension| extension == "fsj");
                (!journal, path.clone())
            }))
    }

    /// Checks the directory's manifest against `catalog` and `shards`, or writes it if the
    /// directory has none yet and holds no journal or snapshot (a new directory). A
    /// manifest is written before any journal, so journals without one are another
    /// process's doing (a manifest deleted or lost): they are refused, not adopted.
    ///
    /// # Errors
    /// [`EngineError::JournalMismatch`] if the manifest names another catalog or shard
    /// count; [`EngineError::ManifestDamaged`] if it does not read exactly as written (any
    /// damage, or not a manifest); [`EngineError::ManifestMissing`] if there is
    /// none but a shard's journal or snapshot is there; [`EngineError::Journal`] if the
    /// directory cannot be listed or the manifest cannot be written.
    pub fn check_manifest(&self, catalog: &Catalog, shards: usize) -> Result<(), EngineError> {
        let fingerprint = format!("{:016x}", catalog.fingerprint());
        let path = self.manifest_path();
        let mismatch = |what, found: String, expected: String| EngineError::JournalMismatch {
            dir: self.dir.clone(),
            what,
            found,
            expected,
        };
        let manifest = manifest_text(&fingerprint, shards);
        match self.storage.read_file(&path) {
            // Byte for byte what this catalog and shard count write: so any damage to the
            // file (a flipped bit in its title too) is refused, not read past.
            Ok(bytes) if bytes == manifest.as_bytes() => Ok(()),
            Ok(bytes) => {
                // Another sale's manifest, whole, names what differs; anything else is
                // damaged or not a manifest.
                let found = std::str::from_utf8(&bytes).ok().and_then(|text| {
                    let mut lines = text.strip_suffix('\n')?.split('\n');
                    let _title = lines.next()?;
                    let catalog = lines.next()?.strip_prefix("catalog ")?;
                    let shards = lines.next()?.strip_prefix("shards ")?;
                    let hex = catalog.len() == 16
                        && catalog
                            .bytes()
                            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
                    // The title and the numbers' form, as written.
                    let whole = hex
                        && lines.next().is_none()
                        && manifest_text(catalog, shards.parse().ok()?) == text;
                    whole.then_some((catalog, shards))
                });
                let Some((found_catalog, found_shards)) = found else {
                    return Err(EngineError::ManifestDamaged { manifest: path });
                };
                if found_catalog != fingerprint {
                    return Err(mismatch(
                        "catalog fingerprint",
                        found_catalog.into(),
                        fingerprint,
                    ));
                }
                Err(mismatch(
                    "shard count",
                    found_shards.into(),
                    shards.to_string(),
                ))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if let Some(found) = self.first_shard_file()? {
                    return Err(EngineError::ManifestMissing {
                        dir: self.dir.clone(),
                        found,
                        manifest: path,
                    });
                }
                let temporary = path.with_extension("tmp");
                self.storage
                    .write_file(&temporary, manifest.as_bytes())
                    .and_then(|()| self.storage.rename(&temporary, &path))
                    .map_err(|source| crate::journal::JournalError::Io { path, source })?;
                Ok(())
            }
            Err(source) => Err(crate::journal::JournalError::Io { path, source }.into()),
        }
    }

    /// The journal file of one shard.
    pub fn path_of(&self, shard: ShardId) -> std::path::PathBuf {
        self.dir.join(format!("shard-{:05}.fsj", shard.0))
    }

    /// The snapshot file of one shard taken at `sequence`.
    pub fn snapshot_path(&self, shard: ShardId, sequence: u64) -> std::path::PathBuf {
        self.dir
            .join(format!("shard-{:05}-{sequence:020}.fss", shard.0))
    }

    /// A shard's snapshot files in the directory, with the sequence each was taken at.
    pub fn snapshots_of(&self, shard: ShardId) -> Vec<(u64, std::path::PathBuf)> {
        let prefix = format!("shard-{:05}-", shard.0);
        self.storage
            .list(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|path| {
                let name = path.file_name()?.to_str()?;
                let sequence = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".fss")?
                    .parse()
                    .ok()?;
                Some((sequence, path))
            })
            .collect()
    }

    /// Removes the temporary files of a shard's snapshots whose writing a crash cut short:
    /// never a whole snapshot (a whole one was renamed into place), and each as large as
    /// the shard's state, so that crashes during snapshots would otherwise fill the disk.
    fn remove_cut_short_snapshots(&self, shard: ShardId) {
        let prefix = format!("shard-{:05}-", shard.0);
        for path in self.storage.list(&self.dir).unwrap_or_default() {
            let cut_short = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".tmp"));
            if cut_short {
                let _ = self.storage.remove(&path);
            }
        }
    }

    /// Recovers one shard from this directory, as the engine does at start-up: opens its
    /// journal (truncating a torn tail, see [`JournalWriter::open_in`]), restores the
    /// newest snapshot that checks out and that the journal reaches, and replays the
    /// journal after it. The writer continues the journal. The core makes its room for
    /// `orders` once: from the snapshot restored, or where none restores, fresh. The
    /// temporary files of snapshots a crash cut short are removed.
    ///
    /// # Errors
    /// [`EngineError::Journal`] for a journal that cannot be read or is corrupt;
    /// [`EngineError::JournalSequence`] for one that does not continue its sequence.
    pub fn recover_shard(
        &self,
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
    ) -> Result<RecoveredShard, EngineError> {
        let (writer, scanned) =
            JournalWriter::open_in(&*self.storage, &self.path_of(shard), shard)?;
        self.remove_cut_short_snapshots(shard);
        let journaled = scanned.records.len() as u64;
        let (restored, passed_over) =
            self.restore_newest_snapshot(catalog, placement, shard, orders, journaled);
        let (from, mut core) = restored.unwrap_or_else(|| {
            let fresh = ShardCore::with_order_capacity(catalog, placement, shard, orders);
            (0, fresh)
        });
        for &(sequence, ref command) in &scanned.records[from as usize..] {
            let expected = core.commands_applied();
            if sequence != expected {
                return Err(EngineError::JournalSequence {
                    shard: shard.0,
                    found: sequence,
                    expected,
                });
            }
            core.apply(command);
            core.take_deferred().for_each(drop);
        }
        Ok(RecoveredShard {
            core,
            writer,
            replayed: journaled - from,
            snapshot_at: from,
            passed_over,
        })
    }

    /// The newest of a shard's snapshots that restores and that a journal of `journaled`
    /// commands reaches, as recovery picks it: its sequence and the core restored from it
    /// (none: recovery replays the whole journal); and the newer snapshots it passed over,
    /// newest first, each with the reason. Reads the snapshot files and changes nothing
    /// (for a check of a directory, e.g. `flashsale check`).
    pub fn restore_newest_snapshot(
        &self,
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
        journaled: u64,
    ) -> (Option<(u64, ShardCore)>, Vec<PassedOverSnapshot>) {
        let mut snapshots = self.snapshots_of(shard);
        snapshots.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        let mut passed_over = Vec::new();
        for (sequence, path) in snapshots {
            let restored = if sequence > journaled {
                Err(SnapshotPassedOver::AheadOfJournal { journaled })
            } else {
                match self.storage.read_file(&path) {
                    Err(error) => Err(SnapshotPassedOver::Unreadable(error.kind())),
                    Ok(bytes) => ShardCore::restore(catalog, placement, shard, orders, &bytes)
                        .map_err(SnapshotPassedOver::Refused),
                }
            };
            match restored {
                Ok(core) => return (Some((sequence, core)), passed_over),
                Err(why) => passed_over.push(PassedOverSnapshot {
                    shard,
                    path,
                    sequence,
                    why,
                }),
            }
        }
        (None, passed_over)
    }

    /// Writes a snapshot of `core` as the engine does: to a temporary file, synced, then
    /// renamed into place (the rename synced); then removes all but the two newest of the
    /// shard's snapshots. A snapshot is only ever read whole and checksummed, so one cut
    /// short by a crash is passed over at recovery.
    ///
    /// # Errors
    /// The storage's error; the temporary file is removed, and older snapshots stay.
    pub fn write_snapshot(&self, core: &ShardCore) -> std::io::Result<()> {
        let shard = core.shard();
        let path = self.snapshot_path(shard, core.commands_applied());
        let temporary = path.with_extension("tmp");
        let written = self
            .storage
            .write_file(&temporary, &core.snapshot())
            .and_then(|()| self.storage.rename(&temporary, &path));
        if let Err(error) = written {
            let _ = self.storage.remove(&temporary);
            return Err(error);
        }
        let mut older = self.snapshots_of(shard);
        older.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
        for (_, stale) in older.into_iter().skip(2) {
            let _ = self.storage.remove(&stale);
        }
        Ok(())
    }
}

/// A shard recovered from its journal directory (see [`JournalConfig::recover_shard`]).
#[derive(Debug)]
pub struct RecoveredShard {
    /// The shard's state after every journaled command.
    pub core: ShardCore,
    /// The shard's journal, open for the commands that come next.
    pub writer: JournalWriter,
    /// Commands replayed from the journal (after the snapshot, if one was restored).
    pub replayed: u64,
    /// The sequence of the snapshot restored (0: none, the whole journal was replayed).
    pub snapshot_at: u64,
    /// The snapshots newer than the one restored that were tried and not used, newest
    /// first, each with the reason; empty when the newest snapshot restored (or there was
    /// none).
    pub passed_over: Vec<PassedOverSnapshot>,
}

/// A snapshot recovery did not use although it was newer than the one it restored (or
/// than the whole journal): the shard then replays more of its journal, which is correct
/// but slower, and the file deserves a look. See [`Engine::snapshots_passed_over`].
///
/// [`Engine::snapshots_passed_over`]: crate::Engine::snapshots_passed_over
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedOverSnapshot {
    /// The shard whose snapshot it is.
    pub shard: ShardId,
    /// The snapshot file.
    pub path: std::path::PathBuf,
    /// The command sequence it was taken at (from its name).
    pub sequence: u64,
    /// Why it was not used.
    pub why: SnapshotPassedOver,
}

impl core::fmt::Display for PassedOverSnapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "shard {}: snapshot {} (taken at command {}) passed over: {}",
            self.shard.0,
            self.path.display(),
            self.sequence,
            self.why
        )
    }
}

/// Why recovery passed over a snapshot (see [`PassedOverSnapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotPassedOver {
    /// Taken after more commands than the journal holds (a journal cut short behind
    /// it, e.g. by a crash of a shard that journals without syncing): restoring it would
    /// skip commands the journal does not have.
    #[error("the journal holds only {journaled} commands")]
    AheadOfJournal {
        /// Commands in the journal.
        journaled: u64,
    },
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Unreadable(std::io::ErrorKind),
    /// Read, and refused by [`ShardCore::restore`]: damaged, cut short, of another shard,
    /// or with contents that do not add up (the check named).
    #[error("{0}")]
    Refused(crate::core::SnapshotError),
}

/// Opens a shard's journal and replays it into its core; remembers the keys of the orders it
/// confirmed in the gate, so that their retries still reach the shard. Also gives the
/// snapshots it passed over.
pub(crate) fn recover(
    core: &mut ShardCore,
    config: &JournalConfig,
    catalog: &Catalog,
    placement: &Placement,
    orders: Option<usize>,
    gate: &SoldOutGate,
) -> Result<(Journaling, Vec<PassedOverSnapshot>), EngineError> {
    let shard = core.shard();
    let recovered = config.recover_shard(catalog, placement, shard, orders)?;
    *core = recovered.core;
    // Retries of every order confirmed before must still reach the shard.
    for (user, client_key) in core.confirmed_keys() {
        gate.remember(usize::from(shard.0), user, client_key);
    }
    let journaling = Journaling::new(
        recovered.writer,
        config,
        recovered.replayed,
        recovered.snapshot_at,
    );
    Ok((journaling, recovered.passed_over))
}

/// Everything a shard decided and holds back until the journal holds the commands that
/// decided it: completions for the producers' lanes, outcomes of buys that waited, answers
/// to control calls, and orders for the sink.
#[derive(Default)]
pub(crate) struct Outbox {
    /// Replies to write to their lane's completion ring, with the request's arrival stamp.
    pub(crate) completions: Vec<(usize, Reply, u64)>,
    pub(crate) deferred: Vec<(Arc<DeferredQueue>, Completion)>,
    pub(crate) replies: Vec<(Arc<ReplySlot>, Result<(), ControlError>)>,
    pub(crate) orders: Vec<Order>,
    pub(crate) events: Vec<OrderEvent>,
    /// Answers to read-only questions, delivered once what came before them is durable.
    pub(crate) answers: Vec<Answer>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.completions.is_empty()
            && self.deferred.is_empty()
            && self.replies.is_empty()
            && self.orders.is_empty()
            && self.events.is_empty()
            && self.answers.is_empty()
    }

    /// Empties every list and keeps its room.
    fn clear(&mut self) {
        self.completions.clear();
        self.deferred.clear();
        self.replies.clear();
        self.orders.clear();
        self.events.clear();
        self.answers.clear();
    }

    /// Appends `later`'s outputs after these.
    fn extend(&mut self, later: Self) {
        self.completions.extend(later.completions);
        self.deferred.extend(later.deferred);
        self.replies.extend(later.replies);
        self.orders.extend(later.orders);
        self.events.extend(later.events);
        self.answers.extend(later.answers);
    }
}

/// A manifest's first line.
const MANIFEST_TITLE: &str = "flashsale journal directory";

/// The whole text of the manifest for a catalog's fingerprint (16 hex digits) and a shard
/// count.
fn manifest_text(fingerprint: &str, shards: usize) -> String {
    format!("{MANIFEST_TITLE}\ncatalog {fingerprint}\nshards {shards}\n")
}

/// How a shard keeps what it decides: in memory, where every output goes out as soon as it
/// is decided, or journaled, where outputs are held until the journal holds the commands
/// that decided them. The worker hands every output to [`hold`](Self::hold_completion)
/// and releases what it gets back at once; what was held comes back from
/// [`commit_if_due`](Self::commit_if_due).
pub(crate) enum Durability {
    /// No journal: nothing is held.
    Memory,
    /// A journal, and what is held behind it.
    Journal(Box<Journaling>),
}

impl Durability {
    /// Appends the command the core is about to apply as `sequence` (journaled only; the
    /// command is built only then). `now_ns` is read for the group's first command.
    #[inline]
    pub(crate) fn append(
        &mut self,
        sequence: u64,
        command: impl FnOnce() -> Command,
        now_ns: impl FnOnce() -> u64,
    ) {
        if let Self::Journal(journal) = self {
            match (&mut journal.pipe, &mut journal.writer) {
                (Some(pipe), _) => pipe.append(sequence, &command()),
                (None, Some(writer)) => writer.append(sequence, &command()),
                (None, None) => {}
            }
            journal.uncommitted += 1;
            if journal.uncommitted == 1 {
                journal.first_uncommitted_ns = now_ns();
            }
        }
    }

    /// A producer's completion: held (`None`), or given back to be written now.
    #[inline]
    pub(crate) fn hold_completion(
        &mut self,
        completion: (usize, Reply, u64),
    ) -> Option<(usize, Reply, u64)> {
        match self {
            Self::Memory => Some(completion),
            Self::Journal(journal) => {
                journal.held.completions.push(completion);
                None
            }
        }
    }

    /// The outcome of a buy that waited: held, or given back to be delivered now.
    #[inline]
    pub(crate) fn hold_deferred(
        &mut self,
        deferred: (Arc<DeferredQueue>, Completion),
    ) -> Option<(Arc<DeferredQueue>, Completion)> {
        match self {
            Self::Memory => Some(deferred),
            Self::Journal(journal) => {
                journal.held.deferred.push(deferred);
                None
            }
        }
    }

    /// A control caller's answer: held, or given back to be answered now.
    #[inline]
    pub(crate) fn hold_reply(
        &mut self,
        reply: (Arc<ReplySlot>, Result<(), ControlError>),
    ) -> Option<(Arc<ReplySlot>, Result<(), ControlError>)> {
        match self {
            Self::Memory => Some(reply),
            Self::Journal(journal) => {
                journal.held.replies.push(reply);
                None
            }
        }
    }

    /// An order for the sink: held, or given back to be sunk now.
    #[inline]
    pub(crate) fn hold_order(&mut self, order: Order) -> Option<Order> {
        match self {
            Self::Memory => Some(order),
            Self::Journal(journal) => {
                journal.held.orders.push(order);
                None
            }
        }
    }

    /// An order event for the sink: held, or given back to be sunk now.
    #[inline]
    pub(crate) fn hold_event(&mut self, event: OrderEvent) -> Option<OrderEvent> {
        match self {
            Self::Memory => Some(event),
            Self::Journal(journal) => {
                journal.held.events.push(event);
                None
            }
        }
    }

    /// The answer to a read-only question: held until the commands applied so far are
    /// durable (with the group gathering, or the one in flight), or given back to be
    /// delivered now (in memory, or when nothing is waiting for the disk).
    pub(crate) fn hold_answer(&mut self, answer: Answer) -> Option<Answer> {
        match self {
            Self::Journal(journal) if journal.uncommitted > 0 => {
                journal.held.answers.push(answer);
                None
            }
            Self::Journal(journal) => {
                match journal.pipe.as_mut().and_then(Pipe::in_flight_outbox) {
                    Some(outbox) => {
                        outbox.answers.push(answer);
                        None
                    }
                    None => Some(answer),
                }
            }
            Self::Memory => Some(answer),
        }
    }

    /// On the shard's thread, before its first command: a synced journal moves its writes
    /// and syncs to a journal thread of its own (see [`Pipe`]), which wakes `shard_thread`
    /// when a group is durable. If that thread cannot be started, the shard writes and
    /// syncs itself, as an unsynced journal always does.
    pub(crate) fn start_journal_thread(
        &mut self,
        shard: crate::types::ShardId,
        shard_thread: crate::sync::thread::Thread,
        reuse_thread: bool,
    ) {
        let Self::Journal(journal) = self else {
            return;
        };
        if !journal.sync {
            return;
        }
        if let Some(writer) = journal.writer.take() {
            match Pipe::start(writer, shard, shard_thread, reuse_thread) {
                Ok(pipe) => journal.pipe = Some(pipe),
                Err(writer) => journal.writer = Some(*writer),
            }
        }
    }

    /// Whether the journal thread has reported a group the shard has not yet released (the
    /// shard must not sleep then).
    pub(crate) fn report_waiting(&self) -> bool {
        match self {
            Self::Journal(journal) => journal.pipe.as_ref().is_some_and(Pipe::report_waiting),
            Self::Memory => false,
        }
    }

    /// Whether anything is gathered, held or in flight.
    pub(crate) fn pending(&self) -> bool {
        match self {
            Self::Journal(journal) => {
                journal.uncommitted > 0
                    || !journal.held.is_empty()
                    || journal.pipe.as_ref().is_some_and(Pipe::in_flight)
            }
            Self::Memory => false,
        }
    }

    /// Commits the journal if its group is due (see [`Journaling::commit_due`]): whether
    /// it now holds the group, and what was held behind it. `None` when nothing is due
    /// (always, in memory).
    #[inline]
    pub(crate) fn commit_if_due(
        &mut self,
        idle: bool,
        now_ns: impl FnOnce() -> u64,
    ) -> Option<(bool, Outbox)> {
        match self {
            Self::Journal(journal) if journal.pipe.is_some() => journal.pipe_step(idle, now_ns),
            Self::Journal(journal) if journal.commit_due(idle, now_ns) => Some(journal.commit()),
            _ => None,
        }
    }

    /// Takes back an outbox whose outputs were released, to hold the group after next
    /// (two outboxes take turns, so holding allocates nothing once both have grown: fresh
    /// memory for every group cost the shard a quarter of its time in page faults).
    pub(crate) fn recycle(&mut self, mut outbox: Outbox) {
        if let Self::Journal(journal) = self {
            outbox.clear();
            if outbox.completions.capacity() > journal.spare.completions.capacity() {
                journal.spare = outbox;
            }
        }
    }

    /// After a commit that held: a snapshot, if one is due; the error of one that could
    /// not be written.
    pub(crate) fn snapshot_if_due(&mut self, core: &ShardCore) -> Option<String> {
        match self {
            Self::Journal(journal) => journal.snapshot_if_due(core),
            Self::Memory => None,
        }
    }

    /// Seals the journal at a clean shutdown (see [`Journaling::seal`]).
    pub(crate) fn seal(&mut self) {
        if let Self::Journal(journal) = self {
            journal.seal();
        }
    }

    /// The error of the journal's write or sync that failed, if one has.
    pub(crate) fn failure(&self) -> Option<String> {
        match self {
            Self::Memory => None,
            Self::Journal(journal) => journal
                .failure
                .clone()
                .or_else(|| journal.pipe.as_ref().and_then(Pipe::failure)),
        }
    }

    /// Commands recovered at start, groups committed, snapshots written.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        match self {
            Self::Memory => (0, 0, 0),
            Self::Journal(journal) => (journal.recovered, journal.commits, journal.snapshots),
        }
    }
}

/// A shard's journal and the outputs held back until it is committed: nothing the shard
/// decided reaches a producer, the order sink or a control caller before the journal holds
/// the commands that decided it (written, and synced if so configured).
pub(crate) struct Journaling {
    /// The writer, when the shard writes and syncs itself (unsynced journals, or before
    /// the journal thread starts).
    pub(crate) writer: Option<JournalWriter>,
    /// The journal thread, for a synced journal.
    pub(crate) pipe: Option<Pipe>,
    pub(crate) sync: bool,
    pub(crate) group_commands: usize,
    pub(crate) group_delay_ns: u64,
    /// Commands appended since the last commit, and when the first of them was.
    pub(crate) uncommitted: usize,
    pub(crate) first_uncommitted_ns: u64,
    /// What the shard decided since the last commit, held until the next one.
    pub(crate) held: Outbox,
    /// An empty outbox with room, to hold the next group (see [`Durability::recycle`]).
    spare: Outbox,
    pub(crate) commits: u64,
    pub(crate) recovered: u64,
    /// Where its journal and snapshots live, and when snapshots are due.
    config: JournalConfig,
    /// The sequence of the newest snapshot (or where recovery started).
    pub(crate) snapshot_at: u64,
    pub(crate) snapshots: u64,
    /// The error of the first commit that failed, when the shard writes itself.
    pub(crate) failure: Option<String>,
    /// The directory's lock, shared by the engine's shards; the last field, so that it
    /// is released only after the writer and the journal thread (joined as the pipe
    /// drops) are done with the journal. (A `std` Arc under loom too: it orders nothing.)
    pub(crate) lock: Option<std::sync::Arc<crate::storage::DirLock>>,
}

impl Journaling {
    pub(crate) fn new(
        writer: JournalWriter,
        config: &JournalConfig,
        recovered: u64,
        snapshot_at: u64,
    ) -> Self {
        Self {
            writer: Some(writer),
            pipe: None,
            sync: config.sync,
            group_commands: config.group_commands,
            group_delay_ns: u64::try_from(config.group_delay.as_nanos()).unwrap_or(u64::MAX),
            uncommitted: 0,
            first_uncommitted_ns: 0,
            held: Outbox::default(),
            spare: Outbox::default(),
            commits: 0,
            recovered,
            config: config.clone(),
            snapshot_at,
            snapshots: 0,
            failure: None,
            lock: None,
        }
    }
}

impl Journaling {
    /// Whether the group is due for its commit: something is held, and the shard is idle,
    /// or the group is full, or its first command has waited the configured delay (the
    /// clock, `now_ns`, is read only when that is the question left).
    #[inline]
    pub(crate) fn commit_due(&self, idle: bool, now_ns: impl FnOnce() -> u64) -> bool {
        let holding = self.uncommitted > 0 || !self.held.is_empty();
        holding
            && (idle
                || self.uncommitted >= self.group_commands
                || now_ns().saturating_sub(self.first_uncommitted_ns) >= self.group_delay_ns)
    }

    /// What was held, with the spare outbox in its place.
    fn take_held(&mut self) -> Outbox {
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.held, spare)
    }

    /// Commits the group: returns whether the journal now holds it (written, and synced if
    /// so configured), and everything that was held behind it, for the caller to release
    /// as decided if it does, or as failed if it does not.
    pub(crate) fn commit(&mut self) -> (bool, Outbox) {
        let committed = match self.writer.as_mut().map(|writer| writer.commit(self.sync)) {
            Some(Ok(_)) => true,
            Some(Err(error)) => {
                self.failure.get_or_insert_with(|| error.to_string());
                false
            }
            None => {
                self.failure
                    .get_or_insert_with(|| "the journal's writer is gone".to_owned());
                false
            }
        };
        if committed {
            self.commits += 1;
        }
        self.uncommitted = 0;
        (committed, self.take_held())
    }

    /// Writes a snapshot of `core` when enough commands were applied since the last: to a
    /// temporary file, synced, then renamed into place; the two newest are kept. A
    /// snapshot that cannot be written is skipped (the journal alone still recovers) and
    /// its error returned; the next try waits for another `snapshot_every` commands, as
    /// after one written (trying again at every group commit would write the whole state
    /// again and again on a disk with room for appends but not for a snapshot).
    pub(crate) fn snapshot_if_due(&mut self, core: &ShardCore) -> Option<String> {
        let at = core.commands_applied();
        let every = self.config.snapshot_every?;
        if at < self.snapshot_at.saturating_add(every.max(1)) || core.has_deferred() {
            return None;
        }
        self.snapshot_at = at;
        match self.config.write_snapshot(core) {
            Ok(()) => {
                self.snapshots += 1;
                None
            }
            Err(error) => Some(format!(
                "{}: {error}",
                self.config.snapshot_path(core.shard(), at).display()
            )),
        }
    }

    /// Seals the journal at a clean shutdown, so that recovery can tell damage in its last
    /// group from a torn write. Nothing is held any more; a seal that cannot be written
    /// only leaves the last group unvouched for, as after a crash.
    pub(crate) fn seal(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            if pipe.failed() {
                return;
            }
            self.writer = pipe.stop();
        }
        if let Some(writer) = &mut self.writer {
            let _ = writer.seal();
        }
    }

    /// With a journal thread: takes in the group it reports, and hands it the next group
    /// if one is due. Returns what became durable (or failed): the reported group's
    /// outputs, followed by those of a next group that needed no write.
    fn pipe_step(&mut self, idle: bool, now_ns: impl FnOnce() -> u64) -> Option<(bool, Outbox)> {
        let pipe = self.pipe.as_mut()?;
        let completed = pipe.completed();
        if matches!(completed, Some((true, _))) {
            self.commits += 1;
        }
        let busy = self.pipe.as_ref().is_some_and(Pipe::in_flight);
        let mut handed = None;
        if !busy && self.commit_due(idle, now_ns) {
            self.uncommitted = 0;
            let held = self.take_held();
            handed = self.pipe.as_mut().and_then(|pipe| pipe.hand_off(held));
        }
        match (completed, handed) {
            (Some((durable, mut outbox)), Some((later_durable, later))) => {
                // A next group that needed no write is durable exactly when the reported
                // one is (a failure fails every later group).
                debug_assert_eq!(durable, later_durable);
                outbox.extend(later);
                Some((durable && later_durable, outbox))
            }
            (Some(completed), None) => Some(completed),
            (None, handed) => handed,
        }
    }
}
