//! The concurrent shell around the decision cores: shard worker threads, producer handles,
//! the rings between them, the sold-out gate, shutdown and reports.
//!
//! Arrows point one way: this module depends on [`crate::core`], never the reverse.

mod control;
pub(crate) mod gate;
mod producer;
pub(crate) mod worker;

use core::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_utils::CachePadded;

use crate::catalog::{Catalog, Placement, PlacementError};
use crate::clock::EngineClock;
use crate::core::ShardCore;
use crate::report::{Report, ShardReport};
use crate::ring;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
use crate::sync::thread::{JoinHandle, Thread};
use crate::sync::{Arc, Mutex};
use crate::types::{Order, ShardId, SkuId};

pub use control::Control;
pub(crate) use producer::Route;
pub use producer::{Producer, SubmitError, Submitted};

use gate::SoldOutGate;
pub(crate) use worker::Notify;
pub(crate) use worker::{CONFIRMED_ORDERS, CONFIRMED_UNITS};
use worker::{Counters, WorkerLane};

pub use crate::report::PRODUCER_SLOTS;
pub(crate) use crate::report::{REFUSED_BUSY, REFUSED_SHARD_FAILED, REFUSED_SHUT_DOWN};

/// One producer's counts of what it answered or refused itself. Single writer (its
/// producer), so a Relaxed load and store count without a locked instruction; padded so
/// that producers on different cores do not share a line.
#[derive(Debug, Default)]
pub struct ProducerCounters {
    slots: CachePadded<[AtomicU64; PRODUCER_SLOTS]>,
}

impl ProducerCounters {
    /// Adds one to `slot` (its producer only).
    #[inline]
    pub fn bump(&self, slot: usize) {
        let counter = &self.slots[slot];
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Counts what became of one submit (nothing for one queued: its shard counts it).
    /// `shared`: whether other threads may count here at the same time (they may not,
    /// for a producer's own counters).
    #[inline]
    pub(crate) fn count(&self, result: &Result<Submitted, SubmitError>, shared: bool) {
        let slot = match result {
            Ok(Submitted::Queued(_)) => return,
            Ok(Submitted::Answered(outcome)) => match outcome.reason() {
                Some(reason) => reason.index(),
                None => return,
            },
            Err(SubmitError::Busy(_)) => REFUSED_BUSY,
            Err(SubmitError::ShutDown(_)) => REFUSED_SHUT_DOWN,
            Err(SubmitError::ShardFailed(_)) => REFUSED_SHARD_FAILED,
        };
        if shared {
            self.slots[slot].fetch_add(1, Ordering::Relaxed);
        } else {
            self.bump(slot);
        }
    }

    /// Adds the counts, as last stored, to `totals`.
    pub fn add_to(&self, totals: &mut [u64; PRODUCER_SLOTS]) {
        for (total, counter) in totals.iter_mut().zip(self.slots.iter()) {
            *total += counter.load(Ordering::Relaxed);
        }
    }
}

/// Receives every confirmed order on its shard's thread, right after the decision, e.g. to
/// create the payment order. One instance per shard (see [`EngineBuilder::order_sink`]).
///
/// A sink that panics marks its shard failed: the order it was given is still confirmed to
/// its producer, but the shard decides nothing more; every later intent for it is answered
/// [`RejectReason::ShardFailed`](crate::RejectReason::ShardFailed) (or refused at submit
/// with [`SubmitError::ShardFailed`]). The other shards go on.
pub trait OrderSink: Send {
    /// Called once per confirmed order, in the shard's order. Keep it short: the shard
    /// decides nothing else meanwhile.
    fn on_confirmed(&mut self, order: &Order);
}

impl<F: FnMut(&Order) + Send> OrderSink for F {
    fn on_confirmed(&mut self, order: &Order) {
        self(order);
    }
}

/// How an idle shard worker waits for intents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Busy-spin: lowest latency, burns a core per shard. Use with one shard per core and
    /// nothing else on those cores.
    Spin,
    /// Spin briefly, then `yield` to the OS scheduler in a loop: low latency, shares a core
    /// politely, but never sleeps.
    Yield,
    /// Spin, then yield, then park the thread until a producer publishes (the default). A
    /// producer wakes a parked shard with one unpark; the cost on the submit path while the
    /// shard is awake is one load of a flag.
    #[default]
    Park,
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SKUs cannot be spread over the requested shards.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The ring capacity is 0 or too large.
    #[error("ring capacity: {0}")]
    RingCapacity(#[from] ring::CapacityError),
    /// `max_quantity` is 0, so every intent would be malformed.
    #[error("max_quantity must be at least 1")]
    ZeroMaxQuantity,
    /// `batch_max` is 0, so a shard could never take an intent.
    #[error("batch_max must be at least 1")]
    ZeroBatch,
    /// The OS refused a shard thread.
    #[error("could not spawn a shard thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// A journal could not be opened, read or replayed.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// A journal's records do not continue its shard's sequence (another catalog's, or
    /// another shard count's, journal directory).
    #[error("journal of shard {shard}: record {found} where {expected} was due")]
    JournalSequence {
        /// The shard.
        shard: u16,
        /// The sequence number found.
        found: u64,
        /// The one due.
        expected: u64,
    },
}

/// Where and how the shards journal the commands they apply (see
/// [`EngineBuilder::journal`]).
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The directory of the journals: `shard-00000.fsj`, one per shard.
    pub dir: std::path::PathBuf,
    /// Whether each group commit waits for the disk (`fdatasync`): survives a power loss.
    /// Without it a commit is a `write` to the OS, which survives the process, not the
    /// machine.
    pub sync: bool,
    /// The most commands in one group commit (1: every command is committed on its own).
    pub group_commands: usize,
    /// How long the first command of a group may wait for others before the commit. A
    /// shard with nothing more to do commits at once.
    pub group_delay: core::time::Duration,
    /// Write a snapshot of each shard after this many commands (none: recovery replays
    /// the whole journal). A snapshot is written (and synced) by the shard's thread, which
    /// decides nothing meanwhile; its size grows with the orders confirmed (about 100 bytes
    /// each), the waiting intents and the buyer filter (up to 512 KiB). The two newest are
    /// kept.
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
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let sequence = name
                    .strip_prefix(&prefix)?
                    .strip_suffix(".fss")?
                    .parse()
                    .ok()?;
                Some((sequence, entry.path()))
            })
            .collect()
    }
}

type SinkFactory = Box<dyn FnMut(ShardId) -> Box<dyn OrderSink>>;

/// Configures and starts an [`Engine`].
pub struct EngineBuilder {
    catalog: Catalog,
    shards: usize,
    ring_capacity: usize,
    batch_max: usize,
    max_quantity: u32,
    wait: WaitStrategy,
    gate: bool,
    order_capacity: Option<usize>,
    sink_factory: Option<SinkFactory>,
    journal: Option<JournalConfig>,
    manual_clock: Option<crate::clock::ManualClock>,
}

impl fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("skus", &self.catalog.skus().len())
            .field("shards", &self.shards)
            .field("ring_capacity", &self.ring_capacity)
            .field("batch_max", &self.batch_max)
            .field("max_quantity", &self.max_quantity)
            .field("wait", &self.wait)
            .field("gate", &self.gate)
            .field("order_capacity", &self.order_capacity)
            .field("order_sink", &self.sink_factory.is_some())
            .field("journal", &self.journal)
            .field("manual_clock", &self.manual_clock)
            .finish()
    }
}

impl EngineBuilder {
    /// Number of shard threads (default 1). Each limit group and each ungrouped SKU goes
    /// whole to one shard (see [`Placement`]).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Slots per ring (default 1024, rounded up to a power of two). Each producer has one
    /// ring to each shard and one back; it may have at most this many intents in flight
    /// per shard before [`SubmitError::Busy`].
    pub fn ring_capacity(mut self, ring_capacity: usize) -> Self {
        self.ring_capacity = ring_capacity;
        self
    }

    /// Most intents a shard takes from one ring before looking at the next (default 256):
    /// a bound on how long one busy producer delays the others.
    pub fn batch_max(mut self, batch_max: usize) -> Self {
        self.batch_max = batch_max;
        self
    }

    /// Largest quantity one intent may ask for (default 100); more is rejected at submit as
    /// [`RejectReason::InvalidQuantity`](crate::RejectReason::InvalidQuantity).
    pub fn max_quantity(mut self, max_quantity: u32) -> Self {
        self.max_quantity = max_quantity;
        self
    }

    /// How idle shards wait (default [`WaitStrategy::Park`]).
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Whether producers answer intents for sold-out SKUs themselves (default on). Off, every
    /// well-formed intent travels to its shard: for measuring the transport.
    pub fn sold_out_gate(mut self, enabled: bool) -> Self {
        self.gate = enabled;
        self
    }

    /// Orders each shard makes room for at start-up (default: its stock, capped at
    /// [`ORDER_CAPACITY_DEFAULT_MAX`](crate::core::ORDER_CAPACITY_DEFAULT_MAX)); see
    /// [`ShardCore::with_order_capacity`]. Raise it for sales of more than 4M units per
    /// shard, so that the order book never grows mid-sale.
    pub fn order_capacity(mut self, orders_per_shard: usize) -> Self {
        self.order_capacity = Some(orders_per_shard);
        self
    }

    /// Makes one order sink per shard, called on that shard's thread at start-up.
    pub fn order_sink<S, F>(mut self, mut factory: F) -> Self
    where
        S: OrderSink + 'static,
        F: FnMut(ShardId) -> S + 'static,
    {
        self.sink_factory = Some(Box::new(move |shard| Box::new(factory(shard))));
        self
    }

    /// Journals every command each shard applies, and releases nothing a shard decided
    /// (to a producer, the order sink or a [`Control`] caller) before the journal holds it.
    ///
    /// At start-up, journals already in `config.dir` are replayed into the shards first
    /// (a torn last record, from a crash mid-write, is truncated away), so the engine
    /// carries on exactly where the journaled one stopped, and its clock resumes at the
    /// last instant journaled. The directory must have been written by an engine with the
    /// same catalog and shard count.
    pub fn journal(mut self, config: JournalConfig) -> Self {
        self.journal = Some(config);
        self
    }

    /// Runs the engine on a clock that moves only when advanced (arrival stamps, holds,
    /// sale windows and draws all read it), for tests and replays that must not race real
    /// time. A journaled engine that resumes moves it on to just after the last journaled
    /// instant, as it does its own clock.
    pub fn manual_clock(mut self, clock: crate::clock::ManualClock) -> Self {
        self.manual_clock = Some(clock);
        self
    }

    /// Validates the configuration and starts the shard threads.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub fn start(mut self) -> Result<Engine, EngineError> {
        let placement = Placement::new(&self.catalog, self.shards)?;
        // Validate the capacity once here, so that producer() cannot fail later.
        drop(ring::channel::<u8>(self.ring_capacity)?);
        if self.max_quantity == 0 {
            return Err(EngineError::ZeroMaxQuantity);
        }
        if self.batch_max == 0 {
            return Err(EngineError::ZeroBatch);
        }
        let mut cores: Vec<ShardCore> = (0..placement.shards())
            .map(|shard| {
                ShardCore::with_order_capacity(
                    &self.catalog,
                    &placement,
                    ShardId(shard as u16),
                    self.order_capacity,
                )
            })
            .collect();
        let gate = SoldOutGate::new(
            self.catalog.skus().len(),
            cores
                .iter()
                .map(|core| core.levels().map(|sku| u64::from(sku.stock)).sum()),
        );
        let mut journals = Vec::new();
        if let Some(config) = &self.journal {
            std::fs::create_dir_all(&config.dir).map_err(|source| {
                crate::journal::JournalError::Io {
                    path: config.dir.clone(),
                    source,
                }
            })?;
            for core in &mut cores {
                journals.push(Some(recover(
                    core,
                    config,
                    &self.catalog,
                    &placement,
                    self.order_capacity,
                    &gate,
                )?));
            }
        }
        let resume_ns = cores.iter().map(ShardCore::now_ns).max().unwrap_or(0);
        let shards = cores
            .iter()
            .map(|core| ShardShared::new(core.levels().len()))
            .collect();
        let shared = Arc::new(EngineShared {
            catalog: self.catalog,
            placement,
            ring_capacity: self.ring_capacity,
            max_quantity: self.max_quantity,
            gate_enabled: self.gate,
            parking: self.wait == WaitStrategy::Park,
            gate,
            clock: match (self.manual_clock, resume_ns) {
                (Some(manual), 0) => EngineClock::manual(manual, 0),
                (Some(manual), resume_ns) => EngineClock::manual(manual, resume_ns + 1),
                (None, 0) => EngineClock::start(),
                (None, resume_ns) => EngineClock::start_at(resume_ns + 1),
            },
            shutdown: CachePadded::new(AtomicBool::new(false)),
            shards,
            producers: Mutex::new(Vec::new()),
        });
        let mut engine = Engine {
            shared: shared.clone(),
            workers: Vec::with_capacity(cores.len()),
        };
        let mut journals = journals.into_iter();
        for core in cores {
            let shard = core.shard();
            let sink = self.sink_factory.as_mut().map(|factory| factory(shard));
            let journal = journals.next().flatten();
            let context = worker::Context::new(
                shared.clone(),
                core,
                sink,
                self.wait,
                self.batch_max,
                journal,
            );
            // On error, `engine` drops here and stops the shards already started.
            let handle = crate::sync::thread::spawn_named(
                format!("flashsale-shard-{}", shard.0),
                move || context.run(),
            )?;
            *shared.shard(shard).thread.lock() = Some(handle.thread().clone());
            engine.workers.push(handle);
        }
        Ok(engine)
    }
}

/// Opens a shard's journal and replays it into its core; remembers the keys of the orders it
/// confirmed in the gate, so that their retries still reach the shard.
fn recover(
    core: &mut ShardCore,
    config: &JournalConfig,
    catalog: &Catalog,
    placement: &Placement,
    orders: Option<usize>,
    gate: &SoldOutGate,
) -> Result<worker::Journaling, EngineError> {
    let shard = core.shard();
    let (writer, scanned) =
        crate::journal::JournalWriter::open_in(&*config.storage, &config.path_of(shard), shard)?;
    let journaled = scanned.records.len() as u64;
    // The newest snapshot that restores and that the journal reaches, if any.
    let mut snapshots = config.snapshots_of(shard);
    snapshots.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut from = 0;
    for (sequence, path) in snapshots {
        if sequence > journaled {
            continue;
        }
        let restored = std::fs::read(&path)
            .ok()
            .and_then(|bytes| ShardCore::restore(catalog, placement, shard, orders, &bytes).ok());
        if let Some(restored) = restored {
            *core = restored;
            from = sequence;
            break;
        }
    }
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
    // Retries of every order confirmed before must still reach the shard.
    for (user, client_key) in core.confirmed_keys() {
        gate.remember(usize::from(shard.0), user, client_key);
    }
    Ok(worker::Journaling::new(
        writer,
        config,
        journaled - from,
        from,
    ))
}

/// What the engine's threads share. Read-mostly; the hot fields are padded apart.
pub(crate) struct EngineShared {
    pub(crate) catalog: Catalog,
    pub(crate) placement: Placement,
    pub(crate) ring_capacity: usize,
    pub(crate) max_quantity: u32,
    pub(crate) gate_enabled: bool,
    /// Whether workers may park, so producers must run their side of the park protocol.
    pub(crate) parking: bool,
    pub(crate) gate: SoldOutGate,
    pub(crate) clock: EngineClock,
    /// Raised once by [`Engine::shutdown`]; producers refuse submits from then on, workers
    /// close their rings and drain them.
    pub(crate) shutdown: CachePadded<AtomicBool>,
    pub(crate) shards: Box<[ShardShared]>,
    /// Every producer's counters, for reports (control plane).
    pub(crate) producers: Mutex<Vec<Arc<ProducerCounters>>>,
}

impl EngineShared {
    pub(crate) fn shard(&self, shard: ShardId) -> &ShardShared {
        &self.shards[usize::from(shard.0)]
    }

    /// New counters, summed into the report with every producer's.
    pub(crate) fn new_counters(&self) -> Arc<ProducerCounters> {
        let counters = Arc::new(ProducerCounters::default());
        self.producers.lock().push(counters.clone());
        counters
    }
}

/// The control-plane side of one shard: registration of new producers, its status flags
/// and its published counters.
pub(crate) struct ShardShared {
    /// Raised by the worker when its order sink panicked; producers refuse submits to it.
    pub(crate) failed: CachePadded<AtomicBool>,
    /// Raised by the worker just before it parks (see the park protocol in `worker`).
    pub(crate) sleeping: CachePadded<AtomicBool>,
    /// The worker thread, for unparking it.
    pub(crate) thread: Mutex<Option<Thread>>,
    /// Lanes of producers created since the worker last looked.
    pub(crate) registry: Mutex<Registry>,
    /// Bumped (Release) after each registration; the worker compares it once per pass, and
    /// before parking.
    pub(crate) registry_generation: AtomicU64,
    /// Live per-SKU available units (local index), stored by the worker after each change.
    pub(crate) available: Box<[AtomicU32]>,
    /// Live outcome counters, stored by the worker after each batch.
    pub(crate) counters: Counters,
}

impl ShardShared {
    fn new(skus: usize) -> Self {
        Self {
            failed: CachePadded::new(AtomicBool::new(false)),
            sleeping: CachePadded::new(AtomicBool::new(false)),
            thread: Mutex::new(None),
            registry: Mutex::new(Registry::default()),
            registry_generation: AtomicU64::new(0),
            available: (0..skus).map(|_| AtomicU32::new(0)).collect(),
            counters: Counters::default(),
        }
    }

    /// Producer side of the park protocol (see `worker`): after publishing, wakes the
    /// worker if it is parked or about to park.
    #[inline]
    pub(crate) fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.unpark();
        }
    }

    pub(crate) fn unpark(&self) {
        if let Some(thread) = self.thread.lock().as_ref() {
            thread.unpark();
        }
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) new_lanes: Vec<WorkerLane>,
    /// Payments, cancellations and stock changes posted since the worker last looked.
    pub(crate) controls: Vec<control::ControlRequest>,
    /// Set by the worker when it stops: lanes registered after it are born closed.
    pub(crate) closed: bool,
}

/// Counts read from a running engine (see [`Engine::live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LiveCounts {
    /// Orders confirmed so far.
    pub confirmed_orders: u64,
    /// Units held by them.
    pub confirmed_units: u64,
    /// Intents the shards have decided (confirmed or rejected).
    pub decided_by_shards: u64,
}

/// A running engine: shard threads deciding intents. Hand out [`Producer`]s with
/// [`producer`](Self::producer); stop with [`shutdown`](Self::shutdown) (or drop it).
pub struct Engine {
    shared: Arc<EngineShared>,
    workers: Vec<JoinHandle<ShardReport>>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.shared.shards.len())
            .field("skus", &self.shared.catalog.skus().len())
            .field("shut_down", &self.shared.shutdown.load(Ordering::Relaxed))
            .finish()
    }
}

impl Engine {
    /// Starts configuring an engine for `catalog`.
    pub fn builder(catalog: Catalog) -> EngineBuilder {
        EngineBuilder {
            catalog,
            shards: 1,
            ring_capacity: 1024,
            batch_max: 256,
            max_quantity: 100,
            wait: WaitStrategy::default(),
            gate: true,
            order_capacity: None,
            sink_factory: None,
            journal: None,
            manual_clock: None,
        }
    }

    /// A new producer handle, for one submitting thread. After shutdown, its submits are
    /// refused with [`SubmitError::ShutDown`].
    pub fn producer(&self) -> Producer {
        Producer::new(self.shared.clone())
    }

    /// What every producer shares (the async client screens intents against it).
    pub(crate) fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    /// A producer whose lanes wake `notify` when outcomes arrive (the async client's).
    pub(crate) fn producer_notifying(&self, notify: Arc<Notify>) -> Producer {
        Producer::with_notify(self.shared.clone(), Some(notify))
    }

    /// A handle for payments, cancellations and stock changes (see [`Control`]).
    pub fn control(&self) -> Control {
        Control::new(self.shared.clone())
    }

    /// The catalog the engine sells.
    pub fn catalog(&self) -> &Catalog {
        &self.shared.catalog
    }

    /// The placement of SKUs on shards.
    pub fn placement(&self) -> &Placement {
        &self.shared.placement
    }

    /// Nanoseconds on the engine clock (the clock of arrival stamps and sale windows).
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Units of a SKU still available, as its shard last published (live, may lag the
    /// shard by one batch).
    pub fn available(&self, sku: SkuId) -> Option<u32> {
        let index = self.shared.catalog.index_of(sku)?;
        let (shard, local) = self.shared.placement.route(index);
        Some(self.shared.shard(shard).available[local as usize].load(Ordering::Relaxed))
    }

    /// Live counts, as the shards last published them (after each batch).
    pub fn live(&self) -> LiveCounts {
        let mut live = LiveCounts::default();
        for shard in self.shared.shards.iter() {
            let counts = shard.counters.read();
            live.confirmed_orders += counts[CONFIRMED_ORDERS];
            live.confirmed_units += counts[CONFIRMED_UNITS];
            live.decided_by_shards += counts[CONFIRMED_ORDERS]
                + counts[..crate::RejectReason::ALL.len()].iter().sum::<u64>();
        }
        live
    }

    /// Stops accepting intents, lets every shard decide every intent accepted before, joins
    /// the shard threads and returns the final report. Submits racing with it are either
    /// accepted and decided, or refused with [`SubmitError::ShutDown`]; never lost.
    pub fn shutdown(mut self) -> Report {
        self.stop()
    }

    fn stop(&mut self) -> Report {
        self.shared.shutdown.store(true, Ordering::Release);
        for shard in self.shared.shards.iter() {
            shard.unpark();
        }
        let shard_reports = self
            .workers
            .drain(..)
            .enumerate()
            .map(|(index, handle)| {
                // A worker returns normally even when its sink panicked; a panic escaping it
                // would be a bug in the engine, reported as a failed shard.
                handle
                    .join()
                    .unwrap_or_else(|_| ShardReport::lost(ShardId(index as u16)))
            })
            .collect();
        let mut producer_counts = [0; PRODUCER_SLOTS];
        for counters in self.shared.producers.lock().iter() {
            counters.add_to(&mut producer_counts);
        }
        Report::new(
            &self.shared.catalog,
            &self.shared.placement,
            shard_reports,
            &producer_counts,
        )
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            // Dropping must not panic; a report that cannot be built is simply discarded.
            let _ = catch_unwind(AssertUnwindSafe(|| self.stop()));
        }
    }
}
