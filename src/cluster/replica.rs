//! A partition's state, built by applying its log in order: a [`ShardCore`] plus what
//! answering gateways needs (who asked for each buy that waits) and the log position.

use rustc_hash::FxHashMap;

use super::gate::{GateUpdate, KeyFilter};
use super::wire::{self, Body, WireError};
use crate::catalog::{Catalog, Placement};
use crate::core::{Applied, Command, PREFETCH_AHEAD, ShardCore, SnapshotError};
use crate::types::{Outcome, RejectReason, ShardId};

/// What became of a request, for the gateway that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// What the core did with it (a buy decided now or waiting, an operator command done
    /// or refused).
    Applied(Applied),
    /// A buy refused before the core saw it (its quantity is out of range or its SKU is
    /// not in the catalog), as an in-process engine's producer refuses it.
    Screened(RejectReason),
    /// The outcome of a buy that waited, decided by a later entry.
    Deferred(Outcome),
}

/// An answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The gateway that sent the request.
    pub gateway: u64,
    /// The gateway's number for it.
    pub request: u64,
    /// What became of it.
    pub answer: Answer,
}

/// What applying one log entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Applied: this many commands reached the core.
    Applied {
        /// Commands applied (buys screened out are not counted).
        commands: u32,
    },
    /// At or before the last entry applied (a redelivery): nothing changed.
    AlreadyApplied,
    /// Not a valid message: nothing of it was applied, but the log position moved past it
    /// (every replica refuses it alike, so replicas stay identical).
    Refused(WireError),
}

/// The log skipped an entry: applying past a hole would decide on a different history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("log entry {got} arrived after {applied}: entries between are missing")]
pub struct Gap {
    /// The last entry applied.
    pub applied: u64,
    /// The entry offered.
    pub got: u64,
}

/// Why a replica snapshot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaSnapshotError {
    /// Not a replica snapshot, cut short, or damaged.
    #[error("not a whole replica snapshot")]
    Damaged,
    /// Taken of another partition.
    #[error("snapshot of partition {0}")]
    WrongPartition(u16),
    /// The core inside it was refused.
    #[error("its core: {0}")]
    Core(SnapshotError),
}

pub(super) const SNAPSHOT_MAGIC: [u8; 8] = *b"FSREPL02";

/// One partition's state machine on a replicated log. Every replica that applies the same
/// entries (position, instant, bytes) ends in the same state and gives the same replies:
/// nothing here reads a clock or depends on when it runs.
///
/// An entry's instant is the log's stamp on the sale's clock (ns since the sale's epoch),
/// clamped so that it never goes back: a log whose leader moves may stamp a later entry
/// earlier than the one before.
#[derive(Debug, Clone)]
pub struct Replica {
    core: ShardCore,
    /// The last log position applied (0: none; logs number entries from 1).
    applied: u64,
    /// The largest instant applied.
    clock_ns: u64,
    max_quantity: u32,
    /// Per core sequence of a buy that waits: the gateway and request to answer, and the
    /// buy's client key (for the gate, if it is confirmed).
    waiting: FxHashMap<u64, (u64, u64, u64)>,
    /// The keys of every order confirmed (rebuilt from the core on restore).
    filter: KeyFilter,
    /// Keys confirmed since the last [`take_gate`](Self::take_gate), and where that was.
    fresh: Vec<(u64, u64)>,
    fresh_from: u64,
    /// The buys of the entry being applied (kept for its room).
    batch: Vec<wire::Buy>,
}

impl Replica {
    /// An empty replica of partition `partition` (shard `partition` of `placement`).
    /// `max_quantity` screens buys as an engine's producers do.
    ///
    /// # Panics
    /// As [`ShardCore::new`].
    pub fn new(
        catalog: &Catalog,
        placement: &Placement,
        partition: ShardId,
        max_quantity: u32,
    ) -> Self {
        Self::with_order_capacity(catalog, placement, partition, max_quantity, None)
    }

    /// As [`new`](Self::new), its core making room for `orders` confirmed orders (see
    /// [`ShardCore::with_order_capacity`]; `None`: the default).
    ///
    /// # Panics
    /// As [`ShardCore::new`].
    pub fn with_order_capacity(
        catalog: &Catalog,
        placement: &Placement,
        partition: ShardId,
        max_quantity: u32,
        orders: Option<usize>,
    ) -> Self {
        let core = ShardCore::with_order_capacity(catalog, placement, partition, orders);
        let filter = filter_of(&core);
        Self {
            core,
            applied: 0,
            clock_ns: 0,
            max_quantity,
            waiting: FxHashMap::default(),
            filter,
            fresh: Vec::new(),
            fresh_from: 0,
            batch: Vec::new(),
        }
    }

    /// The keys of every order the partition confirmed.
    pub fn filter(&self) -> &KeyFilter {
        &self.filter
    }

    /// The gate's news since the last call: which SKUs are sold out now, and the keys
    /// confirmed since (see [`super::gate`]).
    pub fn take_gate(&mut self) -> GateUpdate {
        let update = GateUpdate {
            partition: self.core.shard().0,
            from: self.fresh_from,
            to: self.applied,
            sold_out: self.core.levels().map(|sku| sku.available == 0).collect(),
            keys: std::mem::take(&mut self.fresh),
        };
        self.fresh_from = self.applied;
        update
    }

    /// Remembers a confirmed key (fields, not `self`: callers hold the core borrowed).
    fn confirmed(filter: &mut KeyFilter, fresh: &mut Vec<(u64, u64)>, user: u64, client_key: u64) {
        filter.insert(user, client_key);
        fresh.push((user, client_key));
    }

    /// The last log position applied (0 before the first).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The partition's clock: the largest instant applied.
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    /// The core, for reads (levels, orders).
    pub fn core(&self) -> &ShardCore {
        &self.core
    }

    /// Starts or stops recording order events as entries are applied (see
    /// [`ShardCore::record_events`]); off by default.
    pub fn record_events(&mut self, on: bool) {
        self.core.record_events(on);
    }

    /// The order events recorded since the last call, oldest first (see
    /// [`ShardCore::take_events`]).
    pub fn take_events(&mut self) -> impl Iterator<Item = crate::OrderEvent> + '_ {
        self.core.take_events()
    }

    /// Buys waiting for an outcome (pooled or on a waitlist).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// When a tick should next be logged: the earliest instant at which something falls
    /// due, if anything is pending.
    pub fn next_due_ns(&self) -> Option<u64> {
        self.core.next_due_ns()
    }

    /// Applies log entry `position`, stamped `stamp_ns` on the sale's clock, appending the
    /// answers it produced to `replies` (in the order the core produced them).
    ///
    /// # Errors
    /// [`Gap`] if `position` is past the next one; nothing changes then.
    pub fn apply(
        &mut self,
        position: u64,
        stamp_ns: u64,
        payload: &[u8],
        replies: &mut Vec<Reply>,
    ) -> Result<Step, Gap> {
        if position <= self.applied {
            return Ok(Step::AlreadyApplied);
        }
        if position != self.applied + 1 {
            return Err(Gap {
                applied: self.applied,
                got: position,
            });
        }
        self.applied = position;
        self.clock_ns = self.clock_ns.max(stamp_ns);
        let now = self.clock_ns;
        let message = match wire::decode(payload) {
            Ok(message) => message,
            Err(error) => return Ok(Step::Refused(error)),
        };
        let gateway = message.sender;
        let mut commands = 0u32;
        match message.body {
            Body::Buys(buys) => {
                // Decoded once into a list kept between entries: the prefetching below reads
                // ahead of the buy being decided.
                let mut batch = std::mem::take(&mut self.batch);
                batch.clear();
                batch.extend(buys.iter());
                // The order book and the key filter of a large sale miss the cache on
                // almost every buy: start loading what the buy `PREFETCH_AHEAD` places on
                // will read, so that those misses overlap instead of queueing. Two stages:
                // the buyers' filter word (which says whether the buyer may hold an order)
                // twice as far ahead, then what that word says the buy will read.
                for buy in batch.iter().take(2 * PREFETCH_AHEAD) {
                    self.core.prefetch_buyer(buy.intent.user);
                }
                for buy in batch.iter().take(PREFETCH_AHEAD) {
                    self.prefetch(&buy.intent);
                }
                for (index, buy) in batch.iter().enumerate() {
                    if let Some(far) = batch.get(index + 2 * PREFETCH_AHEAD) {
                        self.core.prefetch_buyer(far.intent.user);
                    }
                    if let Some(near) = batch.get(index + PREFETCH_AHEAD) {
                        self.prefetch(&near.intent);
                    }
                    if let Err(reason) = self.screen(&buy.intent) {
                        replies.push(Reply {
                            gateway,
                            request: buy.request,
                            answer: Answer::Screened(reason),
                        });
                        continue;
                    }
                    let command = if buy.wait {
                        Command::BuyOrWait {
                            intent: buy.intent,
                            arrival_ns: now,
                        }
                    } else {
                        Command::Buy {
                            intent: buy.intent,
                            arrival_ns: now,
                        }
                    };
                    self.run(
                        &command,
                        gateway,
                        buy.request,
                        buy.intent.client_key,
                        replies,
                    );
                    commands += 1;
                }
                self.batch = batch;
            }
            Body::Control { request, control } => {
                self.run(&control.at(now), gateway, request, 0, replies);
                commands = 1;
            }
            Body::Tick => {
                // A tick answers no one but may decide buys that waited.
                self.core.apply(&Command::Tick { now_ns: now });
                self.deliver_deferred(replies);
                commands = 1;
            }
        }
        Ok(Step::Applied { commands })
    }

    /// Starts loading the memory that deciding `intent` will read (a hint only).
    fn prefetch(&self, intent: &crate::Intent) {
        if let Some(local) = self.core.local_index(intent.sku) {
            self.core.prefetch_at(local, intent);
            self.filter.prefetch(intent.user.0, intent.client_key);
        }
    }

    /// The engine producer's screen: quantity in range, SKU in the catalog. A SKU of
    /// another partition reaches the core, which rejects it as unknown.
    fn screen(&self, intent: &crate::Intent) -> Result<(), RejectReason> {
        if intent.quantity == 0 || intent.quantity > self.max_quantity {
            return Err(RejectReason::InvalidQuantity);
        }
        Ok(())
    }

    /// Applies one command for a request and answers it (and any buy it decided that
    /// waited).
    /// (`client_key`: a buy's, else unused.)
    fn run(
        &mut self,
        command: &Command,
        gateway: u64,
        request: u64,
        client_key: u64,
        replies: &mut Vec<Reply>,
    ) {
        let applied = self.core.apply(command);
        match applied {
            Applied::Waiting { sequence } => {
                self.waiting
                    .insert(sequence, (gateway, request, client_key));
            }
            Applied::Decided(Outcome::Confirmed(order)) => {
                Self::confirmed(&mut self.filter, &mut self.fresh, order.user.0, client_key);
            }
            _ => {}
        }
        replies.push(Reply {
            gateway,
            request,
            answer: Answer::Applied(applied),
        });
        self.deliver_deferred(replies);
    }

    fn deliver_deferred(&mut self, replies: &mut Vec<Reply>) {
        if !self.core.has_deferred() {
            return;
        }
        for deferred in self.core.take_deferred() {
            // A deferred outcome is always of a buy that was answered `Waiting` (the core
            // decides a waiting buy's own outcome in its `Applied` otherwise).
            if let Some((gateway, request, client_key)) = self.waiting.remove(&deferred.origin) {
                if let Outcome::Confirmed(order) = deferred.outcome {
                    Self::confirmed(&mut self.filter, &mut self.fresh, order.user.0, client_key);
                }
                replies.push(Reply {
                    gateway,
                    request,
                    answer: Answer::Deferred(deferred.outcome),
                });
            }
        }
    }

    /// The replica's state as checksummed bytes: log position, clock, the waiting buys'
    /// gateways, and the core's own snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&self.core.shard().0.to_le_bytes());
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&self.clock_ns.to_le_bytes());
        out.extend_from_slice(&self.max_quantity.to_le_bytes());
        // In sequence order, so that equal replicas give equal bytes.
        let mut waiting: Vec<_> = self.waiting.iter().collect();
        waiting.sort_unstable_by_key(|(sequence, _)| **sequence);
        out.extend_from_slice(&(waiting.len() as u64).to_le_bytes());
        for (sequence, (gateway, request, client_key)) in waiting {
            out.extend_from_slice(&sequence.to_le_bytes());
            out.extend_from_slice(&gateway.to_le_bytes());
            out.extend_from_slice(&request.to_le_bytes());
            out.extend_from_slice(&client_key.to_le_bytes());
        }
        // The core's snapshot goes straight in behind its length (filled in after), rather
        // than being built apart and copied: it is nearly all of the bytes.
        let length_at = out.len();
        out.extend_from_slice(&0u64.to_le_bytes());
        self.core.snapshot_into(&mut out);
        let core_len = (out.len() - length_at - 8) as u64;
        out[length_at..length_at + 8].copy_from_slice(&core_len.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The log position a snapshot was taken at, if its header is whole (to choose where
    /// to resume reading before restoring).
    pub fn snapshot_position(bytes: &[u8]) -> Option<u64> {
        (bytes.get(..8)? == SNAPSHOT_MAGIC)
            .then(|| bytes.get(10..18))
            .flatten()
            .map(|position| u64::from_le_bytes(position.try_into().expect("8 bytes")))
    }

    /// Rebuilds partition `partition`'s replica from a [`snapshot`](Self::snapshot).
    ///
    /// # Errors
    /// [`ReplicaSnapshotError`]: damaged, another partition's, or taken under another
    /// catalog.
    pub fn restore(
        catalog: &Catalog,
        placement: &Placement,
        partition: ShardId,
        bytes: &[u8],
    ) -> Result<Self, ReplicaSnapshotError> {
        Self::restore_with_order_capacity(catalog, placement, partition, None, bytes)
    }

    /// As [`restore`](Self::restore), its core restored with room for `orders` confirmed
    /// orders (see [`ShardCore::restore`]; `None`: the default), as the replica that took
    /// the snapshot was made.
    ///
    /// # Errors
    /// As [`restore`](Self::restore).
    pub fn restore_with_order_capacity(
        catalog: &Catalog,
        placement: &Placement,
        partition: ShardId,
        orders: Option<usize>,
        bytes: &[u8],
    ) -> Result<Self, ReplicaSnapshotError> {
        use ReplicaSnapshotError::Damaged;
        let (covered, crc) = bytes.split_last_chunk::<4>().ok_or(Damaged)?;
        if crc32fast::hash(covered).to_le_bytes() != *crc
            || covered.get(..8) != Some(&SNAPSHOT_MAGIC[..])
        {
            return Err(Damaged);
        }
        let mut input = Input(&covered[8..]);
        let shard = u16::from_le_bytes(input.take()?);
        if shard != partition.0 {
            return Err(ReplicaSnapshotError::WrongPartition(shard));
        }
        let applied = input.u64()?;
        let clock_ns = input.u64()?;
        let max_quantity = u32::from_le_bytes(input.take()?);
        let count = input.u64()?;
        let mut waiting = FxHashMap::default();
        for _ in 0..count {
            let sequence = input.u64()?;
            let gateway = input.u64()?;
            let request = input.u64()?;
            let client_key = input.u64()?;
            waiting.insert(sequence, (gateway, request, client_key));
        }
        let core_len = usize::try_from(input.u64()?).map_err(|_| Damaged)?;
        if input.0.len() != core_len {
            return Err(Damaged);
        }
        let core_bytes = input.0;
        let core = ShardCore::restore(catalog, placement, partition, orders, core_bytes)
            .map_err(ReplicaSnapshotError::Core)?;
        let filter = filter_of(&core);
        Ok(Self {
            core,
            applied,
            clock_ns,
            max_quantity,
            waiting,
            filter,
            fresh: Vec::new(),
            fresh_from: applied,
            batch: Vec::new(),
        })
    }
}

/// A filter of the keys of every order `core` confirmed, sized for its stock.
fn filter_of(core: &ShardCore) -> KeyFilter {
    let stock = core.levels().map(|sku| u64::from(sku.stock)).sum();
    let mut filter = KeyFilter::for_stock(stock);
    for (user, client_key) in core.confirmed_keys() {
        filter.insert(user, client_key);
    }
    filter
}

/// Reads a snapshot's fields; running out is [`ReplicaSnapshotError::Damaged`].
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], ReplicaSnapshotError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(ReplicaSnapshotError::Damaged)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u64(&mut self) -> Result<u64, ReplicaSnapshotError> {
        self.take().map(u64::from_le_bytes)
    }
}
