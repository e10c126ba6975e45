//! The concurrent shell around the decision cores: shard worker threads, producer handles,
//! the rings between them, the sold-out gate, shutdown and reports.
//!
//! Arrows point one way: this module depends on [`crate::core`], never the reverse, and
//! inside it every file depends only on those below it:
//!
//! | file | what | depends on |
//! |---|---|---|
//! | `client.rs` | [`AsyncClient`](client::AsyncClient): lanes of producers, a pump, futures | mod.rs, producer, shared, lane |
//! | `mod.rs` | [`Engine`], [`EngineBuilder`]: start-up, shutdown, reports | all below |
//! | `worker.rs` | the shard thread: batches, decisions, releases, parking | durability, shared, lane |
//! | `producer.rs` | [`Producer`]: screening, submit, poll | shared, lane |
//! | `control.rs` | [`Control`]: pay, cancel, stock and window changes | shared, lane |
//! | `durability.rs` | [`JournalConfig`], recovery, a worker's journal and snapshots | error, gate, lane |
//! | `shared.rs` | what the threads share; counters, [`OrderSink`], [`WaitStrategy`] | gate, lane |
//! | `lane.rs` | the hand-offs: ring items, deferred queues, `Notify`, control replies | nothing of the engine |
//! | `gate.rs` | the sold-out gate and its key filter | nothing of the engine |
//! | `error.rs` | [`EngineError`] | nothing of the engine |

pub mod client;
mod control;
mod durability;
mod error;
pub(crate) mod gate;
mod journal_thread;
pub(crate) mod lane;
mod producer;
pub(crate) mod shared;
pub(crate) mod worker;

use core::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_utils::CachePadded;

use crate::catalog::{Catalog, Placement};
use crate::clock::EngineClock;
use crate::core::ShardCore;
use crate::report::{CONFIRMED_ORDERS, CONFIRMED_UNITS, Report, ShardReport};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::thread::Task;
use crate::sync::{Arc, Mutex};
use crate::types::{ShardId, SkuId};

pub use control::Control;
pub use durability::{JournalConfig, PassedOverSnapshot, RecoveredShard, SnapshotPassedOver};
pub use error::{EngineError, ShardFailure};
pub(crate) use lane::Notify;
pub use producer::{Producer, SubmitError, Submitted};
pub(crate) use shared::{EngineShared, ShardShared};
pub use shared::{OrderSink, WaitStrategy};

use gate::SoldOutGate;

pub use crate::report::PRODUCER_SLOTS;

type SinkFactory = Box<dyn FnMut(ShardId) -> Box<dyn OrderSink>>;

/// The memory this process may have: the machine's physical memory (`MemTotal`), or its
/// control group's limit where that is lower (a container's, cgroup v2 `memory.max` or v1
/// `memory.limit_in_bytes`: where the kernel's out-of-memory killer acts), on Linux;
/// `None` elsewhere and under Miri. Read once per process: a process that starts many
/// small engines (a test suite, a fuzzer) does not read the files for each.
fn physical_memory_bytes() -> Option<u64> {
    static BYTES: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        if cfg!(miri) || !cfg!(target_os = "linux") {
            return None;
        }
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let total = read("/proc/meminfo").and_then(|text| mem_total(&text))?;
        let cgroups = read("/proc/self/cgroup").unwrap_or_default();
        let limit = memory_limit_files(&cgroups)
            .iter()
            .filter_map(|path| read(path).and_then(|text| cgroup_limit(&text)))
            .min();
        Some(limit.map_or(total, |limit| limit.min(total)))
    })
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The files that may hold this process's memory limit, given `/proc/self/cgroup`: the
/// cgroup v2 group's `memory.max` (line `0::PATH`), the v1 memory controller's
/// `memory.limit_in_bytes` (line `N:...memory...:PATH`), each also at the mount's root
/// (what a container with its own cgroup namespace sees as its group).
fn memory_limit_files(cgroups: &str) -> Vec<String> {
    let mut files = vec![
        "/sys/fs/cgroup/memory.max".to_owned(),
        "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_owned(),
    ];
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            files.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|name| name == "memory") {
            files.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    files
}

/// A cgroup memory limit file's value in bytes; `None` for no limit (`max`, or v1's
/// "unlimited", a number near `i64::MAX`).
fn cgroup_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    (bytes < 1 << 60).then_some(bytes)
}

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
    clock_from_ns: u64,
    reuse_threads: bool,
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
            .field("reuse_threads", &self.reuse_threads)
            .finish()
    }
}

impl EngineBuilder {
    /// Number of shard threads (default 1). Each limit group and each ungrouped SKU goes
    /// whole to one shard (see [`Placement`]). At most [`SHARDS_MAX`](Self::SHARDS_MAX).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards;
        self
    }

    /// Slots per ring (default 1024, rounded up to a power of two). Each producer has one
    /// ring to each shard and one back; it may have at most this many intents in flight
    /// per shard before [`SubmitError::Busy`]. At most
    /// [`RING_CAPACITY_MAX`](Self::RING_CAPACITY_MAX).
    pub fn ring_capacity(mut self, ring_capacity: usize) -> Self {
        self.ring_capacity = ring_capacity;
        self
    }

    /// Most intents a shard takes from one ring before looking at the next (default 256):
    /// a bound on how long one busy producer delays the others. At most
    /// [`BATCH_MAX_MAX`](Self::BATCH_MAX_MAX).
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
    /// shard, so that the order book never grows mid-sale. At most
    /// [`ORDER_CAPACITY_MAX`](Self::ORDER_CAPACITY_MAX) (0: no room made, the book grows
    /// as orders come).
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

    /// Starts the engine clock at `now_ns` rather than 0 (or just after the last journaled
    /// instant, if that is later): for a service whose sale windows are set on a clock of
    /// its own (e.g. nanoseconds since the sale's first start), so that its windows and
    /// holds keep their meaning across restarts and downtime. Ignored with a
    /// [`manual_clock`](Self::manual_clock).
    pub fn clock_starts_at(mut self, now_ns: u64) -> Self {
        self.clock_from_ns = now_ns;
        self
    }

    /// Runs the shards (and their journal threads) on threads kept from engines that have
    /// stopped, rather than starting new ones (default off). For a process that starts and
    /// stops many small engines (a test suite, a fuzzer), where creating and ending the
    /// threads can be most of an engine's start and stop; a sale's engine, started once,
    /// gains nothing. A kept thread watches 100 µs for its next engine, then sleeps, and
    /// ends after two seconds with none; it keeps the name of the first shard or journal it
    /// ran (`flashsale-shard-N`, `flashsale-journal-N`).
    pub fn reuse_threads(mut self, reuse: bool) -> Self {
        self.reuse_threads = reuse;
        self
    }

    /// Most shard threads an engine runs.
    pub const SHARDS_MAX: usize = 1024;
    /// Largest [`ring_capacity`](Self::ring_capacity): 2^20 slots (a ring of intents is
    /// then about 64 MiB, and a producer has one to each shard).
    pub const RING_CAPACITY_MAX: usize = 1 << 20;
    /// Largest [`batch_max`](Self::batch_max) (a shard reserves room for one batch).
    pub const BATCH_MAX_MAX: usize = 1 << 16;
    /// Largest [`order_capacity`](Self::order_capacity): 2^26 orders a shard, about
    /// 6 GiB of order book room and order records (96 bytes an order), allocated at
    /// start-up.
    pub const ORDER_CAPACITY_MAX: usize = 1 << 26;
    /// Largest [`JournalConfig::group_commands`].
    pub const GROUP_COMMANDS_MAX: usize = 1 << 24;
    /// Longest [`JournalConfig::group_delay`]: one second.
    pub const GROUP_DELAY_MAX: core::time::Duration = core::time::Duration::from_secs(1);

    /// Checks every setting against its supported range (the bounds above; a shard
    /// count also against the catalog, see [`Placement`]; the room for orders against the
    /// machine's memory) without making any room or starting anything.
    /// [`start`](Self::start) does this first.
    ///
    /// # Errors
    /// [`EngineError::OutOfRange`] naming the first setting out of range,
    /// [`EngineError::Placement`], or [`EngineError::NotEnoughMemory`] where the room for
    /// orders the shards would make at start (see
    /// [`ShardCore::order_room_bytes`](crate::ShardCore::order_room_bytes)) is more than
    /// the memory this process may have (see [`check_order_room`](Self::check_order_room)).
    pub fn validate(&self) -> Result<(), EngineError> {
        fn within(
            setting: &'static str,
            value: u128,
            min: u128,
            max: u128,
        ) -> Result<(), EngineError> {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(EngineError::OutOfRange {
                    setting,
                    value,
                    min,
                    max,
                })
            }
        }
        let size = |n: usize| n as u128;
        within("shards", size(self.shards), 1, size(Self::SHARDS_MAX))?;
        within(
            "ring_capacity",
            size(self.ring_capacity),
            1,
            size(Self::RING_CAPACITY_MAX),
        )?;
        within(
            "batch_max",
            size(self.batch_max),
            1,
            size(Self::BATCH_MAX_MAX),
        )?;
        within(
            "max_quantity",
            u128::from(self.max_quantity),
            1,
            u128::from(u32::MAX),
        )?;
        if let Some(orders) = self.order_capacity {
            within(
                "order_capacity",
                size(orders),
                0,
                size(Self::ORDER_CAPACITY_MAX),
            )?;
        }
        if let Some(journal) = &self.journal {
            within(
                "group_commands",
                size(journal.group_commands),
                1,
                size(Self::GROUP_COMMANDS_MAX),
            )?;
            within(
                "group_delay",
                journal.group_delay.as_nanos(),
                0,
                Self::GROUP_DELAY_MAX.as_nanos(),
            )?;
            if let Some(every) = journal.snapshot_every {
                within("snapshot_every", u128::from(every), 1, u128::from(u64::MAX))?;
            }
        }
        let placement = Placement::new(&self.catalog, self.shards)?;
        Self::check_order_room(&self.catalog, &placement, self.order_capacity)
    }

    /// Whether the room for orders that a core per shard of `placement` makes with room
    /// for `orders` (see [`ShardCore::order_room_bytes`]) fits this machine's physical
    /// memory: [`validate`](Self::validate) checks it, and so can a caller that makes
    /// shard cores itself (a cluster node, one per partition). Room past the memory would
    /// be written at start until the kernel's out-of-memory killer ended the process (or
    /// another one). The memory is the machine's (`MemTotal`), or the process's control
    /// group's limit where lower (a container's); not checked where it cannot be read
    /// (other than Linux).
    ///
    /// # Errors
    /// [`EngineError::NotEnoughMemory`].
    pub fn check_order_room(
        catalog: &Catalog,
        placement: &Placement,
        orders: Option<usize>,
    ) -> Result<(), EngineError> {
        let Some(has_bytes) = physical_memory_bytes() else {
            return Ok(());
        };
        let needs_bytes: u64 = (0..placement.shards())
            .map(|shard| {
                ShardCore::order_room_bytes(catalog, placement, ShardId(shard as u16), orders)
            })
            .sum();
        if needs_bytes > has_bytes {
            return Err(EngineError::NotEnoughMemory {
                needs_bytes,
                has_bytes,
                shards: placement.shards(),
            });
        }
        Ok(())
    }

    /// Validates the configuration (see [`validate`](Self::validate)) and starts the
    /// shard threads.
    ///
    /// # Errors
    /// See [`EngineError`].
    pub fn start(self) -> Result<Engine, EngineError> {
        self.validate()?;
        let placement = Placement::new(&self.catalog, self.shards)?;
        // A journaled shard's core comes from recovery, which makes its room for orders
        // (or restores a snapshot that has it): these stand in meanwhile, with none.
        let room = match self.journal {
            Some(_) => Some(0),
            None => self.order_capacity,
        };
        let mut cores: Vec<ShardCore> = (0..placement.shards())
            .map(|shard| {
                ShardCore::with_order_capacity(
                    &self.catalog,
                    &placement,
                    ShardId(shard as u16),
                    room,
                )
            })
            .collect();
        let gate = SoldOutGate::new(
            self.catalog.skus().len(),
            cores
                .iter()
                .map(|core| core.levels().map(|sku| u64::from(sku.stock)).sum()),
        );
        let (journals, passed_over) = self.recover(&mut cores, &placement, &gate)?;
        let resume_ns = cores.iter().map(ShardCore::now_ns).max().unwrap_or(0);
        let shards = cores.iter().map(ShardShared::new).collect();
        let shared = Arc::new(EngineShared {
            catalog: self.catalog,
            placement,
            ring_capacity: self.ring_capacity,
            max_quantity: self.max_quantity,
            gate_enabled: self.gate,
            parking: self.wait == WaitStrategy::Park,
            reuse_threads: self.reuse_threads,
            gate,
            clock: match (self.manual_clock, resume_ns) {
                (Some(manual), 0) => EngineClock::manual(manual, 0),
                (Some(manual), resume_ns) => EngineClock::manual(manual, resume_ns + 1),
                (None, 0) if self.clock_from_ns == 0 => EngineClock::start(),
                (None, 0) => EngineClock::start_at(self.clock_from_ns),
                (None, resume_ns) => EngineClock::start_at((resume_ns + 1).max(self.clock_from_ns)),
            },
            shutdown: CachePadded::new(AtomicBool::new(false)),
            shards,
            producers: Mutex::new(Vec::new()),
        });
        let (wait, batch_max) = (self.wait, self.batch_max);
        let mut engine =
            spawn_workers(shared, cores, journals, self.sink_factory, wait, batch_max)?;
        engine.passed_over = passed_over;
        Ok(engine)
    }

    /// With a journal: recovers every shard from its directory into `cores` (see
    /// [`JournalConfig::recover_shard`]); one journal per shard, or none without; and the
    /// snapshots passed over, shard by shard.
    fn recover(
        &self,
        cores: &mut [ShardCore],
        placement: &Placement,
        gate: &SoldOutGate,
    ) -> Result<(Vec<durability::Journaling>, Vec<PassedOverSnapshot>), EngineError> {
        let Some(config) = &self.journal else {
            return Ok((Vec::new(), Vec::new()));
        };
        config
            .storage
            .create_dir_all(&config.dir)
            .map_err(|source| crate::journal::JournalError::Io {
                path: config.dir.clone(),
                source,
            })?;
        // Before anything in the directory is read or written: one engine at a time.
        let lock = std::sync::Arc::new(config.lock()?);
        config.check_manifest(&self.catalog, placement.shards())?;
        let mut journals = Vec::with_capacity(cores.len());
        let mut passed_over = Vec::new();
        for core in cores.iter_mut() {
            let (journal, passed) = durability::recover(
                core,
                config,
                &self.catalog,
                placement,
                self.order_capacity,
                gate,
            )?;
            let mut journal = journal;
            journal.lock = Some(lock.clone());
            journals.push(journal);
            passed_over.extend(passed);
        }
        Ok((journals, passed_over))
    }
}

/// Starts one named worker thread per core; on error the shards already started are
/// stopped (the engine built so far drops).
fn spawn_workers(
    shared: Arc<EngineShared>,
    cores: Vec<ShardCore>,
    journals: Vec<durability::Journaling>,
    mut sink_factory: Option<SinkFactory>,
    wait: WaitStrategy,
    batch_max: usize,
) -> Result<Engine, EngineError> {
    let mut engine = Engine {
        shared: shared.clone(),
        workers: Vec::with_capacity(cores.len()),
        passed_over: Vec::new(),
    };
    let mut journals = journals.into_iter();
    for core in cores {
        let shard = core.shard();
        let sink = sink_factory.as_mut().map(|factory| factory(shard));
        let context = worker::Worker::new(
            shared.clone(),
            core,
            sink,
            wait,
            batch_max,
            journals
                .next()
                .map_or(durability::Durability::Memory, |journal| {
                    durability::Durability::Journal(Box::new(journal))
                }),
        );
        let handle = crate::sync::thread::spawn_task(
            format!("flashsale-shard-{}", shard.0),
            shared.reuse_threads,
            move || context.run(),
        )?;
        *shared.shard(shard).thread.lock() = Some(handle.thread().clone());
        engine.workers.push(handle);
    }
    Ok(engine)
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
    workers: Vec<Task<ShardReport>>,
    /// The snapshots recovery passed over (see [`Engine::snapshots_passed_over`]).
    passed_over: Vec<PassedOverSnapshot>,
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
            clock_from_ns: 0,
            reuse_threads: false,
        }
    }

    /// A new producer handle, for one submitting thread. After shutdown, its submits are
    /// refused with [`SubmitError::ShutDown`].
    pub fn producer(&self) -> Producer {
        Producer::new(self.shared.clone())
    }

    /// A producer whose waits park the thread instead of yielding: for a thread that has
    /// nothing else to do while its lanes are full or its outcomes are not back (a
    /// closed-loop load generator, a server thread per connection, journaled sales whose
    /// groups wait for the disk). [`Producer::wait_for_arrivals`], and the waits inside
    /// [`Producer::buy`] and [`Producer::drain`], spin for a few dozen steps and then park
    /// the waiting thread until the shard workers publish to this producer's lanes (they
    /// wake it as they wake the async client's pump), or for at most a millisecond.
    ///
    /// The cost is the workers': a fence after each publish to this producer's lanes, and
    /// a wake-up (a system call) when it sleeps. A producer whose thread always has work
    /// (an open loop, a thread serving many connections) is better made with
    /// [`producer`](Self::producer). It may move between threads: it wakes whichever last
    /// slept.
    pub fn parking_producer(&self) -> Producer {
        Producer::parking(self.shared.clone())
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

    /// Shards whose stock at start was more than their order books had room for (see
    /// [`EngineBuilder::order_capacity`]): `(shard, stock, room)`. Each may have to grow
    /// its book mid-sale, a pause of its decisions (see [`ShardCore::order_room`]); empty
    /// when no shard can (restocks aside).
    pub fn order_room_short(&self) -> Vec<(ShardId, u64, usize)> {
        self.shared
            .shards
            .iter()
            .enumerate()
            .filter(|(_, shard)| shard.stock_at_start > shard.order_room_at_start as u64)
            .map(|(index, shard)| {
                (
                    ShardId(index as u16),
                    shard.stock_at_start,
                    shard.order_room_at_start,
                )
            })
            .collect()
    }

    /// The snapshots that recovery at start-up tried and did not use, shard by shard,
    /// newest first, each with its file and the reason: damaged, unreadable, refused by a
    /// restore check (named), or ahead of a journal cut short. Each shard then restored an
    /// older snapshot or replayed its whole journal: the state is the same, the start
    /// slower. Empty without a journal, and when every shard restored its newest snapshot
    /// (or had none). Worth logging at start-up: `flashsale serve` prints each.
    pub fn snapshots_passed_over(&self) -> &[PassedOverSnapshot] {
        &self.passed_over
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_read_from_meminfo_and_the_control_groups() {
        assert_eq!(
            mem_total("MemTotal:       24641944 kB\nMemFree: 1 kB\n"),
            Some(24_641_944 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        // cgroup v2 (one line `0::PATH`) and v1 (the memory controller's line).
        let v2 = memory_limit_files("0::/kubepods/pod1/app\n");
        assert!(v2.contains(&"/sys/fs/cgroup/kubepods/pod1/app/memory.max".to_owned()));
        let v1 = memory_limit_files("5:devices:/\n4:memory:/docker/abc\n0::/\n");
        assert!(v1.contains(&"/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes".to_owned()));
        assert!(v1.contains(&"/sys/fs/cgroup/memory.max".to_owned()));
        let joined = memory_limit_files("3:cpu,memory:/a\n");
        assert!(joined.contains(&"/sys/fs/cgroup/memory/a/memory.limit_in_bytes".to_owned()));
        assert_eq!(memory_limit_files("garbage\n").len(), 2);
        // Limits: a number, or none.
        assert_eq!(cgroup_limit("2147483648\n"), Some(1 << 31));
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("9223372036854771712\n"), None);
        // This machine: at most its MemTotal (not read under Miri, which says `None`).
        if cfg!(target_os = "linux") && !cfg!(miri) {
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|text| mem_total(&text));
            let has = physical_memory_bytes();
            assert!(has.is_some() && has <= total, "{has:?} {total:?}");
        }
    }
}
