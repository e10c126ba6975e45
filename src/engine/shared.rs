//! What the engine's threads share: the engine-wide state every producer, worker and
//! control caller reads, each shard's control-plane side, the counters, and the two
//! settings the threads act on (how an idle worker waits, where confirmed orders go).

use crossbeam_utils::CachePadded;

use super::gate::SoldOutGate;
use super::lane::{ControlRequest, WorkerLane};
use crate::catalog::{Catalog, Placement};
use crate::clock::EngineClock;
use crate::core::OrderEvent;
use crate::report::{COUNTER_SLOTS, PRODUCER_SLOTS};
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::thread::Thread;
use crate::sync::{Arc, Mutex};
use crate::types::{Order, ShardId};

/// One producer's counts of what it answered or refused itself. Single writer (its
/// producer), so a Relaxed load and store count without a locked instruction; padded so
/// that producers on different cores do not share a line.
#[derive(Debug, Default)]
pub struct ProducerCounters {
    pub(crate) slots: CachePadded<[AtomicU64; PRODUCER_SLOTS]>,
}

impl ProducerCounters {
    /// Adds one to `slot` (its producer only).
    #[inline]
    pub fn bump(&self, slot: usize) {
        let counter = &self.slots[slot];
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Adds the counts, as last stored, to `totals`.
    pub fn add_to(&self, totals: &mut [u64; PRODUCER_SLOTS]) {
        for (total, counter) in totals.iter_mut().zip(self.slots.iter()) {
            *total += counter.load(Ordering::Relaxed);
        }
    }
}

/// Receives every confirmed order on its shard's thread, right after the decision, e.g. to
/// create the payment order. One instance per shard (see [`EngineBuilder::order_sink`](crate::EngineBuilder::order_sink)).
///
/// A sink that panics marks its shard failed: the order it was given is still confirmed to
/// its producer, but the shard decides nothing more; every later intent for it is answered
/// [`RejectReason::ShardFailed`](crate::RejectReason::ShardFailed) (or refused at submit
/// with [`SubmitError::ShardFailed`](crate::SubmitError::ShardFailed)). The other shards go on.
pub trait OrderSink: Send {
    /// Called once per confirmed order, in the shard's order. Keep it short: the shard
    /// decides nothing else meanwhile.
    fn on_confirmed(&mut self, order: &Order);

    /// Whether the sink wants every [`OrderEvent`] (asked once, at start-up; default no).
    /// The shard then records them as it decides, which costs a little on each
    /// confirmation.
    fn wants_events(&self) -> bool {
        false
    }

    /// Called once per order event (confirmed, paid, cancelled, expired) in the shard's
    /// command order, if [`wants_events`](Self::wants_events) said so; with a journal,
    /// once the journal holds the command it happened in. The events of a journaled
    /// shard are the same as a replay of its journal through a [`ShardCore`] recording
    /// events produces, so a consumer can rebuild them after a restart.
    ///
    /// [`ShardCore`]: crate::ShardCore
    fn on_event(&mut self, event: &OrderEvent) {
        let _ = event;
    }
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

/// Live counters a worker publishes after each batch (single writer, Relaxed stores).
#[derive(Debug, Default)]
pub struct Counters {
    slots: [AtomicU64; COUNTER_SLOTS],
}

impl Counters {
    /// Stores the worker's counts (its worker only).
    pub fn publish(&self, local: &[u64; COUNTER_SLOTS]) {
        for (slot, &value) in self.slots.iter().zip(local) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// The counts as last published.
    pub fn read(&self) -> [u64; COUNTER_SLOTS] {
        core::array::from_fn(|index| self.slots[index].load(Ordering::Relaxed))
    }
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
    /// Whether shard and journal threads run on kept threads ([`crate::EngineBuilder::reuse_threads`]).
    pub(crate) reuse_threads: bool,
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
    /// Raised by the worker when the shard failed (see [`ShardFailure`]); producers
    /// refuse submits to it.
    pub(crate) failed: CachePadded<AtomicBool>,
    /// Why, set by the worker before it raises `failed`.
    pub(crate) failure: Mutex<Option<super::ShardFailure>>,
    /// Snapshots that could not be written, and the last one's error (set first).
    pub(crate) snapshot_failures: AtomicU64,
    pub(crate) snapshot_error: Mutex<Option<String>>,
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
    /// The stock of the shard's SKUs and the orders its book had room for at start.
    pub(crate) stock_at_start: u64,
    pub(crate) order_room_at_start: usize,
}

impl ShardShared {
    pub(crate) fn new(core: &crate::core::ShardCore) -> Self {
        let skus = core.levels().len();
        Self {
            stock_at_start: core.levels().map(|sku| u64::from(sku.stock)).sum(),
            order_room_at_start: core.order_room(),
            failed: CachePadded::new(AtomicBool::new(false)),
            failure: Mutex::new(None),
            snapshot_failures: AtomicU64::new(0),
            snapshot_error: Mutex::new(None),
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
    ///
    /// Called only right after a successful publish, a SeqCst compare-exchange on the
    /// ring's tail; with the SeqCst load of the flag after it, the two take the place of
    /// a fence here (one here made the gate-off burst, where each intent crosses to the
    /// shard, 3.5x slower at the vCPUs' slow placement).
    #[inline]
    pub(crate) fn wake_if_sleeping(&self) {
        crate::sync::after_seqcst_rmw();
        if self.sleeping.load(Ordering::SeqCst) {
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
    pub(crate) controls: Vec<ControlRequest>,
    /// Read-only questions posted since the worker last looked (see [`Query`]).
    pub(crate) queries: Vec<Query>,
    /// Set by the worker when it stops: lanes registered after it are born closed.
    pub(crate) closed: bool,
}

/// A read-only question for a shard's worker: asked of its core when the worker takes it,
/// and answered (the [`Answer`] delivered) once everything the shard decided before it is
/// durable. Dropped unanswered if the shard stops first.
pub(crate) type Query = Box<dyn FnOnce(&crate::core::ShardCore) -> Answer + Send>;

/// A question's answer, delivered with `true`, or with `false` if what it saw could not
/// be made durable (the shard failed).
pub(crate) type Answer = Box<dyn FnOnce(bool) + Send>;
