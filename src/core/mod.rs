//! The decision core: a plain, single-threaded, deterministic state machine per shard.
//!
//! `(state, command) -> (state, outcome)`, nothing else: no threads, no atomics, no clock
//! (time arrives as the arrival stamp on each intent). Its outcomes depend only on the
//! catalog, the placement and the order of the commands it applied, which is what lets the
//! model tests, the fuzzers and (later) the journal drive it directly and replay it exactly.
//! The engine's worker threads wrap it; nothing here knows about them.

mod book;
mod table;

mod pool;
mod snapshot;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use book::{Confirmed, OrderBook, SKU_LIMIT_KEY, Standing};
use pool::{Pool, PoolTicket};
pub use pool::{PoolLevels, pool_seed, shuffle};
pub use snapshot::{SNAPSHOT_MAGIC, SnapshotError};

use crate::catalog::{Catalog, Placement, Policy, SaleWindow};
use crate::types::{ControlError, Intent, Order, OrderId, Outcome, RejectReason, ShardId, SkuId};

/// A command a shard applies, in the shard's order; each takes the next sequence number.
///
/// Every command carries an instant on the engine clock. The shard's clock is the largest
/// instant it has applied; before each command it runs what fell due by then, in this
/// order: waitlists of SKUs whose sale closed are answered `Closed`; unpaid holds past
/// their deadline go back on sale (earliest deadline first, each release offered to the
/// SKU's waitlist at once); pools whose window closed are served (in local SKU order).
/// Nothing else reads a clock, so replaying the same commands gives the same outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// A buy intent, stamped with its arrival on the engine clock; rejected if it cannot
    /// be confirmed (unless pooled, see [`Policy`]).
    Buy {
        /// The intent.
        intent: Intent,
        /// Arrival, in ns on the engine clock; the sale window is judged on it.
        arrival_ns: u64,
    },
    /// A buy intent that, rather than be rejected as sold out (or for insufficient
    /// stock), waits on the SKU's waitlist for units to come back (if the SKU has one).
    BuyOrWait {
        /// The intent.
        intent: Intent,
        /// Arrival, in ns on the engine clock.
        arrival_ns: u64,
    },
    /// The buyer paid: the order's units go from held to sold.
    Pay {
        /// The order.
        order: OrderId,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
    /// The buyer (or the shop) cancelled an unpaid order: its units go back on sale.
    Cancel {
        /// The order.
        order: OrderId,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
    /// Time passed: runs whatever fell due (hold deadlines, pool windows, closings).
    Tick {
        /// Now, ns on the engine clock.
        now_ns: u64,
    },
    /// More units arrived: they go to the waitlist first, then on sale.
    Restock {
        /// The SKU.
        sku: SkuId,
        /// Units added.
        units: u32,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
    /// Units taken off sale (only available ones: held and sold units stay).
    Reduce {
        /// The SKU.
        sku: SkuId,
        /// Units removed.
        units: u32,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
    /// Moves a SKU's sale window (and reopens it if it was closed early). A pooled
    /// product not yet served is then served at the new earliest opening plus its window.
    SetWindow {
        /// The SKU.
        sku: SkuId,
        /// The new window.
        window: SaleWindow,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
    /// Closes a SKU's sale now: later intents are rejected `Closed`, and so is every
    /// intent waiting for it (on its waitlist or in its pool).
    CloseSale {
        /// The SKU.
        sku: SkuId,
        /// When, ns on the engine clock.
        at_ns: u64,
    },
}

impl Command {
    /// The instant the command carries, ns on the engine clock.
    pub const fn time_ns(&self) -> u64 {
        match *self {
            Self::Buy { arrival_ns, .. } | Self::BuyOrWait { arrival_ns, .. } => arrival_ns,
            Self::Tick { now_ns } => now_ns,
            Self::Pay { at_ns, .. }
            | Self::Cancel { at_ns, .. }
            | Self::Restock { at_ns, .. }
            | Self::Reduce { at_ns, .. }
            | Self::SetWindow { at_ns, .. }
            | Self::CloseSale { at_ns, .. } => at_ns,
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    /// A buy decided now.
    Decided(Outcome),
    /// A buy that waits: pooled until its product's pool is served, or on its SKU's
    /// waitlist. Its outcome comes out later as a [`Deferred`] whose `origin` is this
    /// command's sequence number.
    Waiting {
        /// The command's sequence number.
        sequence: u64,
    },
    /// A payment, cancellation, stock change or tick that took effect.
    Done {
        /// The command's sequence number.
        sequence: u64,
    },
    /// A payment, cancellation or stock change that was refused; nothing changed.
    Refused {
        /// Why.
        error: ControlError,
        /// The command's sequence number.
        sequence: u64,
    },
}

impl Applied {
    /// The outcome, for a buy decided now.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Self::Decided(outcome) => Some(*outcome),
            _ => None,
        }
    }

    /// The order, for a buy confirmed now.
    pub fn order(&self) -> Option<&Order> {
        match self {
            Self::Decided(outcome) => outcome.order(),
            _ => None,
        }
    }

    /// The rejection reason, for a buy rejected now.
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            Self::Decided(outcome) => outcome.reason(),
            _ => None,
        }
    }

    /// The command's sequence number (`None` only for a buy the shard did not decide).
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Self::Decided(outcome) => outcome.sequence(),
            Self::Waiting { sequence }
            | Self::Done { sequence }
            | Self::Refused { sequence, .. } => Some(*sequence),
        }
    }
}

/// The outcome of a buy that waited, decided by a later command (whose sequence number the
/// outcome carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deferred {
    /// The sequence number of the buy command that waited.
    pub origin: u64,
    /// Its intent.
    pub intent: Intent,
    /// What became of it.
    pub outcome: Outcome,
}

/// A SKU's counters as the shard sees them. After every command,
/// `available + held + sold == stock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SkuLevels {
    /// The SKU.
    pub id: SkuId,
    /// Units received: the catalog's stock, plus restocks, minus reductions.
    pub stock: u32,
    /// Units on sale now.
    pub available: u32,
    /// Units held by confirmed orders awaiting payment.
    pub held: u32,
    /// Units paid for.
    pub sold: u32,
    /// Units whose hold expired unpaid (they went back on sale).
    pub expired: u64,
    /// Units of cancelled orders (they went back on sale).
    pub cancelled: u64,
    /// Units restocked.
    pub restocked: u64,
    /// Units taken off sale by reductions.
    pub reduced: u64,
    /// Intents on the waitlist now.
    pub waiting: u32,
    /// Intents confirmed from the waitlist.
    pub waitlist_filled: u64,
}

/// The most orders a shard makes room for at start-up by default (4M orders, 512 MiB);
/// see [`ShardCore::with_order_capacity`].
pub const ORDER_CAPACITY_DEFAULT_MAX: usize = 1 << 22;

/// Buyer-filter bits per unit of stock (see [`BuyerFilter`]).
const BUYER_FILTER_BITS_PER_UNIT: u64 = 16;
const BUYER_FILTER_BITS_MIN: u64 = 1 << 16;
/// 512 KiB at most, so that it stays in L2: the filter only pays while it is cheaper to
/// read than the order book. A larger sale sees more false positives, never a wrong decision.
const BUYER_FILTER_BITS_MAX: u64 = 1 << 22;

/// A one-probe Bloom filter of the buyers who hold an order on this shard.
///
/// During a rush almost every intent comes from a buyer with no order yet. Their
/// look-up in the order book would touch a slot of a table that outgrows the cache; one
/// bit, in a bitset sized to stay in L2, answers "certainly no order" first. Bits are set on
/// every confirmation and never cleared, so a clear bit is exact; set bits (own order or
/// false positive, about 1.5% once a 16-bits-per-unit filter's stock is sold) fall through
/// to the book. Decisions are identical with or without it.
#[derive(Debug, Clone)]
struct BuyerFilter {
    /// `bits / 64` words; `bits` is a power of two.
    words: Box<[u64]>,
    /// `words.len() - 1`.
    word_mask: u64,
}

impl BuyerFilter {
    fn for_stock(stock: u64) -> Self {
        let words = crate::hash::bloom_words(
            stock,
            BUYER_FILTER_BITS_PER_UNIT,
            BUYER_FILTER_BITS_MIN,
            BUYER_FILTER_BITS_MAX,
        );
        Self {
            words: vec![0; words].into_boxed_slice(),
            word_mask: words as u64 - 1,
        }
    }

    /// The word of a buyer and the two bits in it (a blocked Bloom filter: one load, about
    /// 1.5% false positives at 16 bits per buyer rather than 6% with one bit).
    #[inline(always)]
    fn probe(&self, user: u64) -> (usize, u64) {
        crate::hash::bloom_probe(crate::hash::mix64(user, 0), self.word_mask)
    }

    #[inline(always)]
    fn may_hold(&self, user: u64) -> bool {
        let (word, bits) = self.probe(user);
        debug_assert!(word < self.words.len());
        self.words[word] & bits == bits
    }

    fn insert(&mut self, user: u64) {
        let (word, bits) = self.probe(user);
        self.words[word] |= bits;
    }
}

/// A SKU's state. `repr(C)` keeps what every decision reads in its first 64 bytes; the
/// counters and the waitlist, touched only when units move other than by a confirmation,
/// live behind a box.
#[derive(Debug, Clone)]
#[repr(C)]
struct SkuState {
    id: SkuId,
    /// `available + held + sold == stock` after every command.
    available: u32,
    limit_per_buyer: u32,
    waitlist_capacity: u32,
    opens_at_ns: u64,
    closes_at_ns: u64,
    /// Index into `ShardCore::group_limits`, if the SKU is in a limit group.
    group: Option<u32>,
    /// Index into `ShardCore::pools`, under a pooled policy.
    pool: Option<u32>,
    /// Closed early by [`Command::CloseSale`].
    closed: bool,
    held: u32,
    cold: Box<SkuCold>,
}

/// The part of a SKU's state that decisions other than confirmations do not read.
#[derive(Debug, Clone, Default)]
struct SkuCold {
    stock: u32,
    sold: u32,
    hold_ns: Option<u64>,
    expired: u64,
    cancelled: u64,
    restocked: u64,
    reduced: u64,
    waitlist_filled: u64,
    waiters: VecDeque<Waiter>,
}

impl SkuState {
    /// Whether the sale is over at `now_ns`.
    fn closed_at(&self, now_ns: u64) -> bool {
        self.closed || now_ns >= self.closes_at_ns
    }
}

/// An intent on a waitlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Waiter {
    origin: u64,
    intent: Intent,
}

/// What became of a confirmed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrderState {
    Held,
    Sold,
    Cancelled,
    Expired,
}

/// Every confirmed order, by number. A clone keeps the room made up front (as the order
/// book's tables do), so that a cloned core does not reallocate on the hot path.
#[derive(Debug)]
struct OrderLog(Vec<OrderRecord>);

impl Clone for OrderLog {
    fn clone(&self) -> Self {
        let mut orders = Vec::with_capacity(self.0.capacity());
        orders.extend_from_slice(&self.0);
        Self(orders)
    }
}

impl core::ops::Deref for OrderLog {
    type Target = Vec<OrderRecord>;

    fn deref(&self) -> &Vec<OrderRecord> {
        &self.0
    }
}

impl core::ops::DerefMut for OrderLog {
    fn deref_mut(&mut self) -> &mut Vec<OrderRecord> {
        &mut self.0
    }
}

/// A confirmed order, by its number, for payments, cancellations and expiry.
#[derive(Debug, Clone, Copy)]
struct OrderRecord {
    user: u64,
    sku_local: u32,
    units: u32,
    state: OrderState,
}

/// One shard's decision state: the stock of its SKUs, the orders it confirmed (by
/// idempotency key) and each buyer's units per SKU and per limit group.
///
/// Memory grows with the SKUs and the confirmed orders only: a rejected intent leaves
/// nothing behind.
#[derive(Debug, Clone)]
pub struct ShardCore {
    shard: ShardId,
    skus: Vec<SkuState>,
    /// SKU id to local index, for commands that name a SKU by id.
    local_index: FxHashMap<SkuId, u32>,
    /// Per-buyer limit of each limit group on this shard (local group index).
    group_limits: Vec<u32>,
    /// Buyers holding an order here (a filter in front of the book).
    buyers: BuyerFilter,
    /// Every confirmed order: its key, SKU and units, by buyer.
    book: OrderBook,
    /// Sequence number the next command will get.
    sequence_next: u64,
    /// Orders confirmed so far (the next order's number).
    orders_confirmed: u64,
    /// Every confirmed order, by number.
    orders: OrderLog,
    /// The shard's clock: the largest instant applied so far.
    now_ns: u64,
    /// The earliest instant at which something falls due (`u64::MAX`: nothing pending).
    next_due_ns: u64,
    /// Unpaid holds with a deadline: `(deadline, order number)`, earliest first. Entries
    /// of orders paid or cancelled since are skipped when they come up.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    pools: Vec<Pool>,
    /// Outcomes of waiting buys decided by the commands applied since the last
    /// [`take_deferred`](Self::take_deferred).
    deferred: Vec<Deferred>,
    /// Bumped whenever units come back on sale or leave it other than by a confirmation
    /// (for the engine, which republishes its sold-out flags then).
    levels_version: u64,
    pool_capacity: u32,
}

impl ShardCore {
    /// The core of shard `shard` under `placement`.
    ///
    /// # Panics
    /// If `shard` is not below `placement.shards()` or the placement was made for another
    /// catalog (both programming errors: the engine derives them together).
    pub fn new(catalog: &Catalog, placement: &Placement, shard: ShardId) -> Self {
        Self::with_order_capacity(catalog, placement, shard, None)
    }

    /// Like [`new`](Self::new), making room for `orders` confirmed orders up front instead
    /// of the default: the shard's stock, capped at [`ORDER_CAPACITY_DEFAULT_MAX`]. Every
    /// order takes at least one unit, so the stock bounds the orders; past the room made,
    /// the order book doubles on the hot path (one slow decision). Costs 152 bytes per order
    /// of room, allocated and faulted in here.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub fn with_order_capacity(
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
    ) -> Self {
        let mut group_local: FxHashMap<u32, u32> = FxHashMap::default();
        let mut group_limits = Vec::new();
        let mut skus = Vec::new();
        let mut local_index = FxHashMap::default();
        let mut stock_total: u64 = 0;
        // Pool per product: by catalog group index, or by SKU for an ungrouped one.
        let mut pools: Vec<Pool> = Vec::new();
        let mut pool_of_group: FxHashMap<u32, u32> = FxHashMap::default();
        for &catalog_index in placement.skus_of(shard) {
            let spec = &catalog.skus()[catalog_index as usize];
            let local = skus.len() as u32;
            let group_index = spec.group.map(|group_id| {
                catalog
                    .group_index_of(group_id)
                    .expect("a validated catalog knows its groups") as u32
            });
            let group = group_index.map(|group_index| {
                *group_local.entry(group_index).or_insert_with(|| {
                    group_limits.push(catalog.groups()[group_index as usize].limit_per_buyer);
                    (group_limits.len() - 1) as u32
                })
            });
            let policy = catalog.policy_of(spec);
            let pool = policy.window_ns().map(|window_ns| {
                let serve_at_ns = spec.window.opens_at_ns.saturating_add(window_ns);
                let existing = group_index.and_then(|g| pool_of_group.get(&g).copied());
                match existing {
                    Some(index) => {
                        let pool = &mut pools[index as usize];
                        pool.skus.push(local);
                        pool.serve_at_ns = pool.serve_at_ns.min(serve_at_ns);
                        index
                    }
                    None => {
                        let product = match spec.group {
                            Some(group) => u64::from(group.0),
                            None => 1 << 32 | u64::from(spec.id.0),
                        };
                        let seed = match policy {
                            Policy::OpeningDraw { seed, .. } => pool_seed(seed, product),
                            _ => 0,
                        };
                        pools.push(Pool {
                            policy,
                            shuffle_seed: seed,
                            skus: vec![local],
                            serve_at_ns,
                            served: false,
                            tickets: Vec::new(),
                            buyers: Default::default(),
                            tickets_taken: 0,
                        });
                        let index = (pools.len() - 1) as u32;
                        if let Some(g) = group_index {
                            pool_of_group.insert(g, index);
                        }
                        index
                    }
                }
            });
            local_index.insert(spec.id, local);
            stock_total += u64::from(spec.stock);
            skus.push(SkuState {
                id: spec.id,
                available: spec.stock,
                held: 0,
                limit_per_buyer: spec.limit_per_buyer,
                opens_at_ns: spec.window.opens_at_ns,
                closes_at_ns: spec.window.closes_at_ns,
                closed: false,
                group,
                pool,
                waitlist_capacity: spec.waitlist,
                cold: Box::new(SkuCold {
                    stock: spec.stock,
                    hold_ns: spec.hold_ns,
                    ..SkuCold::default()
                }),
            });
        }
        let orders_max =
            orders.unwrap_or(stock_total.min(ORDER_CAPACITY_DEFAULT_MAX as u64) as usize);
        let mut core = Self {
            shard,
            skus,
            local_index,
            group_limits,
            buyers: BuyerFilter::for_stock(stock_total),
            book: OrderBook::with_room_for(orders_max),
            sequence_next: 0,
            orders_confirmed: 0,
            orders: OrderLog(Vec::with_capacity(orders_max)),
            now_ns: 0,
            next_due_ns: u64::MAX,
            deadlines: BinaryHeap::new(),
            pools,
            deferred: Vec::new(),
            levels_version: 0,
            pool_capacity: catalog.pool_capacity(),
        };
        core.next_due_ns = core.compute_next_due();
        core
    }

    /// A single shard owning the whole catalog (for tests, models and tools).
    pub fn whole(catalog: &Catalog) -> Self {
        let placement = Placement::new(catalog, 1).expect("one shard always fits");
        Self::new(catalog, &placement, ShardId(0))
    }

    /// Starts loading the memory that deciding `intent` (for the SKU at local index
    /// `local`, as in [`buy_at`](Self::buy_at)) will read. Callers holding a batch of
    /// intents prefetch them all, then decide them, so that the cache misses of a large
    /// order book overlap instead of queueing. A hint only: outcomes are the same without it.
    #[inline]
    pub fn prefetch_at(&self, local: u32, intent: &Intent) {
        // The book is read when the buyer may hold an order, or when the intent may be
        // confirmed (its free slot is written); a sold-out SKU and an unknown buyer need
        // neither.
        let may_confirm = self
            .skus
            .get(local as usize)
            .is_some_and(|sku| sku.available > 0);
        if may_confirm || self.buyers.may_hold(intent.user.0) {
            let limit_key = self.limit_key(local.min(self.skus.len().saturating_sub(1) as u32));
            self.book
                .prefetch(intent.user.0, intent.client_key, limit_key);
        }
    }

    /// Applies one command and returns what it did. Outcomes of earlier buys that it
    /// decided are collected for [`take_deferred`](Self::take_deferred).
    pub fn apply(&mut self, command: &Command) -> Applied {
        match *command {
            Command::Buy { intent, arrival_ns } => self.buy(&intent, arrival_ns),
            Command::BuyOrWait { intent, arrival_ns } => self.buy_or_wait(&intent, arrival_ns),
            ref control => self.control(control),
        }
    }

    /// Applies a buy intent naming its SKU by id ([`Command::Buy`]). A SKU this shard does
    /// not own is rejected as [`RejectReason::UnknownSku`] (and still takes a sequence
    /// number).
    #[inline]
    pub fn buy(&mut self, intent: &Intent, arrival_ns: u64) -> Applied {
        let local = self.local_index(intent.sku).unwrap_or(u32::MAX);
        self.buy_at(local, intent, arrival_ns, false)
    }

    /// Applies a buy intent that would rather wait than be rejected as sold out
    /// ([`Command::BuyOrWait`]).
    pub fn buy_or_wait(&mut self, intent: &Intent, arrival_ns: u64) -> Applied {
        let local = self.local_index(intent.sku).unwrap_or(u32::MAX);
        self.buy_at(local, intent, arrival_ns, true)
    }

    /// The local index of a SKU on this shard (its position in [`levels`](Self::levels)),
    /// for callers that resolve SKU ids once and then use [`buy_at`](Self::buy_at).
    pub fn local_index(&self, sku: SkuId) -> Option<u32> {
        self.local_index.get(&sku).copied()
    }

    /// Applies a buy intent whose SKU the caller already resolved to this shard's local
    /// index (the engine's producers do, so that the shard skips the id lookup). An index
    /// that is out of range or names another SKU than `intent.sku` is rejected as
    /// [`RejectReason::UnknownSku`], like an unknown id. `wait`: as
    /// [`buy_or_wait`](Self::buy_or_wait).
    #[inline]
    pub fn buy_at(&mut self, local: u32, intent: &Intent, arrival_ns: u64, wait: bool) -> Applied {
        let sequence = self.next_sequence();
        self.advance(arrival_ns, sequence);
        let owned = self
            .skus
            .get(local as usize)
            .is_some_and(|sku| sku.id == intent.sku);
        if !owned {
            return Applied::Decided(rejected(RejectReason::UnknownSku, sequence));
        }
        if wait || self.skus[local as usize].pool.is_some() {
            return self.buy_pooled_or_waiting(local, intent, arrival_ns, wait, sequence);
        }
        Applied::Decided(outcome_of(
            self.decide(local, intent, arrival_ns, sequence),
            sequence,
        ))
    }

    /// [`buy_at`](Self::buy_at) for an intent that may wait: it asked to, or its product
    /// has a pool. Out of line, so that the plain first-come path stays short.
    #[cold]
    #[inline(never)]
    fn buy_pooled_or_waiting(
        &mut self,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        if let Some(pool) = self.skus[local as usize].pool
            && !self.pools[pool as usize].served
        {
            return self.enter_pool(pool, local, intent, arrival_ns, wait, sequence);
        }
        match self.decide(local, intent, arrival_ns, sequence) {
            Ok(order) => Applied::Decided(Outcome::Confirmed(order)),
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if wait && self.skus[local as usize].waitlist_capacity > 0 =>
            {
                self.wait_or_refuse(local, sequence, intent, sequence)
            }
            Err(reason) => Applied::Decided(rejected(reason, sequence)),
        }
    }

    /// Puts a buy on its SKU's waitlist, or rejects it as `WaitlistFull`; the outcome is
    /// the command's own (`origin == sequence`) or deferred.
    #[cold]
    #[inline(never)]
    fn wait_or_refuse(
        &mut self,
        local: u32,
        origin: u64,
        intent: &Intent,
        sequence: u64,
    ) -> Applied {
        let sku = &mut self.skus[local as usize];
        if sku.cold.waiters.len() >= sku.waitlist_capacity as usize {
            let outcome = rejected(RejectReason::WaitlistFull, sequence);
            return self.answer(origin, intent, outcome, sequence);
        }
        sku.cold.waiters.push_back(Waiter {
            origin,
            intent: *intent,
        });
        self.next_due_ns = self.next_due_ns.min(sku.closes_at_ns);
        Applied::Waiting { sequence }
    }

    /// The outcome of the buy `origin`: returned if it is the command being applied,
    /// else deferred.
    fn answer(&mut self, origin: u64, intent: &Intent, outcome: Outcome, sequence: u64) -> Applied {
        if origin == sequence {
            Applied::Decided(outcome)
        } else {
            self.deferred.push(Deferred {
                origin,
                intent: *intent,
                outcome,
            });
            Applied::Waiting { sequence }
        }
    }

    #[cold]
    #[inline(never)]
    fn enter_pool(
        &mut self,
        pool: u32,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        let reason = if intent.quantity == 0 {
            Some(RejectReason::InvalidQuantity)
        } else if self.skus[local as usize].closed_at(arrival_ns) {
            Some(RejectReason::Closed)
        } else {
            let capacity = self.pool_capacity as usize;
            let pool = &mut self.pools[pool as usize];
            if pool.buyers.contains(&intent.user.0) {
                Some(RejectReason::AlreadyPooled)
            } else if pool.tickets.len() >= capacity {
                Some(RejectReason::PoolFull)
            } else {
                pool.buyers.insert(intent.user.0);
                pool.tickets_taken += 1;
                pool.tickets.push(PoolTicket {
                    origin: sequence,
                    intent: *intent,
                    local,
                    wait,
                });
                None
            }
        };
        match reason {
            Some(reason) => Applied::Decided(rejected(reason, sequence)),
            None => Applied::Waiting { sequence },
        }
    }

    /// Applies a command other than a buy.
    #[cold]
    #[inline(never)]
    fn control(&mut self, command: &Command) -> Applied {
        let sequence = self.next_sequence();
        self.advance(command.time_ns(), sequence);
        let result = match *command {
            Command::Buy { .. } | Command::BuyOrWait { .. } => {
                unreachable!("buys are applied by buy_at")
            }
            Command::Tick { .. } => Ok(()),
            Command::Pay { order, .. } => self.pay(order),
            Command::Cancel { order, .. } => self.cancel(order, sequence),
            Command::Restock { sku, units, .. } => self.restock(sku, units, sequence),
            Command::Reduce { sku, units, .. } => self.reduce(sku, units),
            Command::SetWindow { sku, window, .. } => self.set_window(sku, window),
            Command::CloseSale { sku, .. } => self.close_sale(sku, sequence),
        };
        // A moved window may have made something due already.
        self.next_due_ns = self.compute_next_due();
        if self.now_ns >= self.next_due_ns {
            self.run_due(sequence);
        }
        match result {
            Ok(()) => Applied::Done { sequence },
            Err(error) => Applied::Refused { error, sequence },
        }
    }

    fn record(&self, order: OrderId) -> Result<(usize, OrderRecord), ControlError> {
        let number = order.number() as usize;
        if order.shard() != self.shard || number >= self.orders.len() {
            return Err(ControlError::UnknownOrder(order));
        }
        let record = self.orders[number];
        match record.state {
            OrderState::Held => Ok((number, record)),
            OrderState::Sold => Err(ControlError::AlreadyPaid),
            OrderState::Cancelled => Err(ControlError::Cancelled),
            OrderState::Expired => Err(ControlError::HoldExpired),
        }
    }

    fn pay(&mut self, order: OrderId) -> Result<(), ControlError> {
        let (number, record) = self.record(order)?;
        self.orders[number].state = OrderState::Sold;
        let sku = &mut self.skus[record.sku_local as usize];
        sku.held -= record.units;
        sku.cold.sold += record.units;
        Ok(())
    }

    fn cancel(&mut self, order: OrderId, sequence: u64) -> Result<(), ControlError> {
        let (number, _) = self.record(order)?;
        self.release(number, OrderState::Cancelled, sequence);
        Ok(())
    }

    /// Puts an unpaid order's units back on sale (offered to the waitlist first).
    fn release(&mut self, number: usize, state: OrderState, sequence: u64) {
        let record = self.orders[number];
        debug_assert_eq!(record.state, OrderState::Held);
        self.orders[number].state = state;
        let local = record.sku_local;
        let limit_key = self.limit_key(local);
        self.book
            .release(record.user, local, limit_key, record.units);
        let sku = &mut self.skus[local as usize];
        sku.held -= record.units;
        sku.available += record.units;
        match state {
            OrderState::Cancelled => sku.cold.cancelled += u64::from(record.units),
            _ => sku.cold.expired += u64::from(record.units),
        }
        self.levels_version += 1;
        self.serve_waitlist(local, sequence);
    }

    fn owned(&self, sku: SkuId) -> Result<u32, ControlError> {
        self.local_index(sku).ok_or(ControlError::UnknownSku(sku))
    }

    fn restock(&mut self, sku: SkuId, units: u32, sequence: u64) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        let state = &mut self.skus[local as usize];
        let stock = state
            .cold
            .stock
            .checked_add(units)
            .ok_or(ControlError::StockOverflow)?;
        state.cold.stock = stock;
        state.available += units;
        state.cold.restocked += u64::from(units);
        self.levels_version += 1;
        self.serve_waitlist(local, sequence);
        Ok(())
    }

    fn reduce(&mut self, sku: SkuId, units: u32) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        let state = &mut self.skus[local as usize];
        if units > state.available {
            return Err(ControlError::NotEnoughAvailable {
                available: state.available,
            });
        }
        state.cold.stock -= units;
        state.available -= units;
        state.cold.reduced += u64::from(units);
        self.levels_version += 1;
        Ok(())
    }

    fn set_window(&mut self, sku: SkuId, window: SaleWindow) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        if window.closes_at_ns <= window.opens_at_ns {
            return Err(ControlError::WindowInverted);
        }
        let state = &mut self.skus[local as usize];
        state.opens_at_ns = window.opens_at_ns;
        state.closes_at_ns = window.closes_at_ns;
        state.closed = false;
        if let Some(pool) = state.pool {
            let pool = &self.pools[pool as usize];
            if !pool.served {
                let window_ns = pool.policy.window_ns().unwrap_or(0);
                let serve_at_ns = pool
                    .skus
                    .iter()
                    .map(|&l| self.skus[l as usize].opens_at_ns)
                    .min()
                    .unwrap_or(window.opens_at_ns)
                    .saturating_add(window_ns);
                self.pools[state_pool(&self.skus[local as usize])].serve_at_ns = serve_at_ns;
            }
        }
        Ok(())
    }

    fn close_sale(&mut self, sku: SkuId, sequence: u64) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        self.skus[local as usize].closed = true;
        self.close_waitlist(local, sequence);
        if let Some(pool) = self.skus[local as usize].pool {
            let pool = &mut self.pools[pool as usize];
            if !pool.served {
                let (closed, kept): (Vec<PoolTicket>, Vec<PoolTicket>) =
                    std::mem::take(&mut pool.tickets)
                        .into_iter()
                        .partition(|ticket| ticket.local == local);
                pool.tickets = kept;
                for ticket in &closed {
                    pool.buyers.remove(&ticket.intent.user.0);
                }
                for ticket in closed {
                    self.deferred.push(Deferred {
                        origin: ticket.origin,
                        intent: ticket.intent,
                        outcome: rejected(RejectReason::Closed, sequence),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rejects every intent on a SKU's waitlist as `Closed`.
    fn close_waitlist(&mut self, local: u32, sequence: u64) {
        let waiters = std::mem::take(&mut self.skus[local as usize].cold.waiters);
        for waiter in waiters {
            self.deferred.push(Deferred {
                origin: waiter.origin,
                intent: waiter.intent,
                outcome: rejected(RejectReason::Closed, sequence),
            });
        }
    }

    /// Moves the shard's clock to `time_ns` (never back) and runs what fell due.
    #[inline(always)]
    fn advance(&mut self, time_ns: u64, sequence: u64) {
        if time_ns > self.now_ns {
            self.now_ns = time_ns;
        }
        if self.now_ns >= self.next_due_ns {
            self.run_due(sequence);
        }
    }

    /// Runs everything due at the shard's clock, in the documented order (see
    /// [`Command`]), as part of the command numbered `sequence`.
    #[cold]
    fn run_due(&mut self, sequence: u64) {
        let now = self.now_ns;
        for local in 0..self.skus.len() as u32 {
            let sku = &self.skus[local as usize];
            if !sku.cold.waiters.is_empty() && sku.closed_at(now) {
                self.close_waitlist(local, sequence);
            }
        }
        while let Some(&Reverse((deadline, number))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if self.orders[number as usize].state == OrderState::Held {
                self.release(number as usize, OrderState::Expired, sequence);
            }
        }
        for pool in 0..self.pools.len() {
            let due = &self.pools[pool];
            if !due.served && due.serve_at_ns <= now {
                self.serve_pool(pool, sequence);
            }
        }
        self.next_due_ns = self.compute_next_due();
    }

    fn compute_next_due(&self) -> u64 {
        let deadline = self
            .deadlines
            .peek()
            .map_or(u64::MAX, |Reverse((deadline, _))| *deadline);
        let pool = self
            .pools
            .iter()
            .filter(|pool| !pool.served)
            .map(|pool| pool.serve_at_ns)
            .min()
            .unwrap_or(u64::MAX);
        let close = self
            .skus
            .iter()
            .filter(|sku| !sku.cold.waiters.is_empty())
            .map(|sku| if sku.closed { 0 } else { sku.closes_at_ns })
            .min()
            .unwrap_or(u64::MAX);
        deadline.min(pool).min(close)
    }

    /// Offers a SKU's available units to its waitlist, in order: each waiting intent that
    /// fits is confirmed, one that no longer can be (limit, duplicate) is rejected, one
    /// that asks for more than is left keeps its place.
    fn serve_waitlist(&mut self, local: u32, sequence: u64) {
        let sku = &self.skus[local as usize];
        if sku.cold.waiters.is_empty() || sku.available == 0 || sku.closed_at(self.now_ns) {
            return;
        }
        let mut waiters = std::mem::take(&mut self.skus[local as usize].cold.waiters);
        let mut kept = VecDeque::with_capacity(waiters.len());
        while let Some(waiter) = waiters.pop_front() {
            if self.skus[local as usize].available == 0 {
                kept.push_back(waiter);
                kept.extend(waiters.drain(..));
                break;
            }
            match self.allocate(local, &waiter.intent, waiter.intent.quantity, sequence) {
                Err(RejectReason::SoldOut | RejectReason::InsufficientStock) => {
                    kept.push_back(waiter);
                }
                result => {
                    if result.is_ok() {
                        self.skus[local as usize].cold.waitlist_filled += 1;
                    }
                    self.deferred.push(Deferred {
                        origin: waiter.origin,
                        intent: waiter.intent,
                        outcome: outcome_of(result, sequence),
                    });
                }
            }
        }
        self.skus[local as usize].cold.waiters = kept;
    }

    /// Serves a pool whose window closed: by its policy, every ticket gets its outcome (or
    /// a place on its SKU's waitlist).
    fn serve_pool(&mut self, pool: usize, sequence: u64) {
        let policy = self.pools[pool].policy;
        self.pools[pool].served = true;
        let mut tickets = std::mem::take(&mut self.pools[pool].tickets);
        self.pools[pool].buyers = Default::default();
        let now = self.now_ns;
        // The window rule, judged when the pool is served.
        let window = |sku: &SkuState| {
            if now < sku.opens_at_ns {
                Err(RejectReason::NotOpenYet)
            } else if sku.closed_at(now) {
                Err(RejectReason::Closed)
            } else {
                Ok(())
            }
        };
        match policy {
            Policy::FirstCome => unreachable!("first-come products have no pool"),
            Policy::OpeningDraw { .. } => {
                shuffle(&mut tickets, self.pools[pool].shuffle_seed);
                for ticket in tickets {
                    let result = window(&self.skus[ticket.local as usize]).and_then(|()| {
                        self.allocate(
                            ticket.local,
                            &ticket.intent,
                            ticket.intent.quantity,
                            sequence,
                        )
                    });
                    self.settle_ticket(&ticket, result, sequence);
                }
            }
            Policy::OneEachFirst { .. } => {
                // What each ticket may take (its quantity, if it passes every rule but
                // stock), then one unit per ticket per round while units last.
                let mut wanted: Vec<Result<u32, RejectReason>> = tickets
                    .iter()
                    .map(|ticket| {
                        window(&self.skus[ticket.local as usize])?;
                        self.admissible(ticket.local, &ticket.intent)?;
                        Ok(ticket.intent.quantity)
                    })
                    .collect();
                let mut left: Vec<u32> = self.skus.iter().map(|sku| sku.available).collect();
                let mut granted = vec![0u32; tickets.len()];
                loop {
                    let mut progress = false;
                    for (index, ticket) in tickets.iter().enumerate() {
                        let local = ticket.local as usize;
                        if let Ok(want) = wanted[index]
                            && granted[index] < want
                            && left[local] > 0
                        {
                            granted[index] += 1;
                            left[local] -= 1;
                            progress = true;
                        }
                    }
                    if !progress {
                        break;
                    }
                }
                for (index, ticket) in tickets.iter().enumerate() {
                    let result = match std::mem::replace(&mut wanted[index], Ok(0)) {
                        Err(reason) => Err(reason),
                        Ok(_) if granted[index] == 0 => Err(RejectReason::SoldOut),
                        Ok(_) => {
                            self.allocate(ticket.local, &ticket.intent, granted[index], sequence)
                        }
                    };
                    self.settle_ticket(ticket, result, sequence);
                }
            }
        }
    }

    /// Delivers a served ticket's outcome, or puts it on its waitlist if it asked to wait
    /// and got no unit.
    fn settle_ticket(
        &mut self,
        ticket: &PoolTicket,
        result: Result<Order, RejectReason>,
        sequence: u64,
    ) {
        match result {
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if ticket.wait && self.skus[ticket.local as usize].waitlist_capacity > 0 =>
            {
                self.wait_or_refuse(ticket.local, ticket.origin, &ticket.intent, sequence);
            }
            result => self.deferred.push(Deferred {
                origin: ticket.origin,
                intent: ticket.intent,
                outcome: outcome_of(result, sequence),
            }),
        }
    }

    /// Outcomes of waiting buys decided since the last call, in the order they were
    /// decided. Callers deliver them to their buyers; the core forgets them.
    pub fn take_deferred(&mut self) -> std::vec::Drain<'_, Deferred> {
        self.deferred.drain(..)
    }

    /// Whether outcomes of waiting buys are ready for [`take_deferred`](Self::take_deferred).
    #[inline]
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// The earliest engine-clock instant at which something falls due (a hold deadline, a
    /// pool window, the closing of a SKU with a waitlist), if anything is pending: a
    /// driver applies a [`Command::Tick`] then.
    pub fn next_due_ns(&self) -> Option<u64> {
        (self.next_due_ns != u64::MAX).then_some(self.next_due_ns)
    }

    /// Changes whenever units came back on sale or were taken off it other than by a
    /// confirmation.
    pub fn levels_version(&self) -> u64 {
        self.levels_version
    }

    /// The shard's clock: the largest instant applied so far.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The key a SKU's per-buyer units are counted under: its limit group, or itself.
    #[inline(always)]
    fn limit_key(&self, local: u32) -> u64 {
        match self.skus[local as usize].group {
            Some(group) => u64::from(group),
            None => SKU_LIMIT_KEY | u64::from(local),
        }
    }

    fn next_sequence(&mut self) -> u64 {
        let sequence = self.sequence_next;
        self.sequence_next += 1;
        sequence
    }

    /// The rules, in their documented order: quantity, window, then
    /// [`allocate`](Self::allocate).
    #[inline(always)]
    fn decide(
        &mut self,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        // The producer rejects it first; a core fed directly must not confirm 0 units.
        if intent.quantity == 0 {
            return Err(RejectReason::InvalidQuantity);
        }
        let sku = &self.skus[local as usize];
        if arrival_ns < sku.opens_at_ns {
            return Err(RejectReason::NotOpenYet);
        }
        if sku.closed_at(arrival_ns) {
            return Err(RejectReason::Closed);
        }
        self.allocate(local, intent, intent.quantity, sequence)
    }

    /// Idempotency and limits for `intent`, without stock: `Ok` if `intent.quantity`
    /// units could be confirmed were they available.
    fn admissible(&self, local: u32, intent: &Intent) -> Result<(), RejectReason> {
        let (user, client_key) = (intent.user.0, intent.client_key);
        let (of_sku, of_group) =
            match self
                .book
                .standing(user, client_key, local, self.limit_key(local))
            {
                Standing::Duplicate(order) => return Err(RejectReason::Duplicate(order)),
                Standing::Holds {
                    of_sku, of_group, ..
                } => (of_sku, of_group),
            };
        self.limits(local, intent.quantity, of_sku, of_group)
    }

    #[inline(always)]
    fn limits(
        &self,
        local: u32,
        quantity: u32,
        of_sku: u32,
        of_group: u32,
    ) -> Result<(), RejectReason> {
        let sku = &self.skus[local as usize];
        if u64::from(of_sku) + u64::from(quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        if let Some(group) = sku.group {
            let limit = self.group_limits[group as usize];
            if u64::from(of_group) + u64::from(quantity) > u64::from(limit) {
                return Err(RejectReason::UserLimit);
            }
        }
        Ok(())
    }

    /// Idempotency, limits (for the intent's quantity) and stock (for `units`, which is
    /// the intent's quantity except for a one-each-first partial grant); confirms `units`.
    #[inline(always)]
    fn allocate(
        &mut self,
        local: u32,
        intent: &Intent,
        units: u32,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        let sku = &self.skus[local as usize];
        let limit_key = self.limit_key(local);
        let (user, client_key) = (intent.user.0, intent.client_key);
        // A buyer with no order here has no key to repeat and holds no units.
        let (held_of_sku, held_of_group, places) = if self.buyers.may_hold(user) {
            match self.book.standing(user, client_key, local, limit_key) {
                Standing::Duplicate(order) => return Err(RejectReason::Duplicate(order)),
                Standing::Holds {
                    of_sku,
                    of_group,
                    places,
                } => (of_sku, of_group, Some(places)),
            }
        } else {
            (0, 0, None)
        };
        self.limits(local, intent.quantity, held_of_sku, held_of_group)?;
        if sku.available == 0 {
            return Err(RejectReason::SoldOut);
        }
        if sku.available < units {
            return Err(RejectReason::InsufficientStock);
        }
        Ok(self.confirm(local, intent, units, sequence, places))
    }

    /// Records a confirmation that [`allocate`](Self::allocate) checked. Out of line: the
    /// rush is mostly rejections, which then stay a short loop.
    #[inline(never)]
    fn confirm(
        &mut self,
        local: u32,
        intent: &Intent,
        units: u32,
        sequence: u64,
        places: Option<book::Places>,
    ) -> Order {
        let limit_key = self.limit_key(local);
        let (user, client_key) = (intent.user.0, intent.client_key);
        // Limits are at least 1 and quantities fit the limit checked before, so the
        // counters below cannot overflow.
        let now_ns = self.now_ns;
        let sku = &mut self.skus[local as usize];
        sku.available -= units;
        sku.held += units;
        debug_assert_eq!(sku.available + sku.held + sku.cold.sold, sku.cold.stock);
        let number = self.orders_confirmed;
        let id = OrderId::new(self.shard, number);
        self.orders_confirmed += 1;
        if let Some(hold_ns) = sku.cold.hold_ns {
            let deadline = now_ns.saturating_add(hold_ns);
            self.deadlines.push(Reverse((deadline, number)));
            self.next_due_ns = self.next_due_ns.min(deadline);
        }
        self.orders.push(OrderRecord {
            user,
            sku_local: local,
            units,
            state: OrderState::Held,
        });
        let places = match places {
            Some(places) => places,
            // The filter said "no order", so the look-up was skipped; find the places now.
            None => match self.book.standing(user, client_key, local, limit_key) {
                Standing::Holds { places, .. } => places,
                Standing::Duplicate(_) => unreachable!("the buyer filter has no false negatives"),
            },
        };
        self.book.confirm(
            places,
            &Confirmed {
                id,
                user,
                client_key,
                sku_local: local,
                limit_key,
                units,
            },
        );
        self.buyers.insert(intent.user.0);
        Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity: units,
            sequence,
        }
    }

    /// The shard this core decides for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The sequence number the next command will get (= commands applied so far).
    pub fn commands_applied(&self) -> u64 {
        self.sequence_next
    }

    /// Orders confirmed so far.
    pub fn orders_confirmed(&self) -> u64 {
        self.orders_confirmed
    }

    /// Units still available of the SKU at a local index.
    #[inline]
    pub(crate) fn available_local(&self, local: u32) -> u32 {
        self.skus[local as usize].available
    }

    /// The SKUs this shard owns, with their counters, in local-index order.
    pub fn levels(&self) -> impl ExactSizeIterator<Item = SkuLevels> + '_ {
        self.skus.iter().map(|sku| SkuLevels {
            id: sku.id,
            stock: sku.cold.stock,
            available: sku.available,
            held: sku.held,
            sold: sku.cold.sold,
            expired: sku.cold.expired,
            cancelled: sku.cold.cancelled,
            restocked: sku.cold.restocked,
            reduced: sku.cold.reduced,
            waiting: sku.cold.waiters.len() as u32,
            waitlist_filled: sku.cold.waitlist_filled,
        })
    }

    /// One SKU's counters, if this shard owns it.
    pub fn levels_of(&self, sku: SkuId) -> Option<SkuLevels> {
        let local = *self.local_index.get(&sku)?;
        self.levels().nth(local as usize)
    }

    /// The pools of this shard's pooled products, in order of their first SKU.
    pub fn pools(&self) -> impl ExactSizeIterator<Item = PoolLevels> + '_ {
        self.pools.iter().map(|pool| PoolLevels {
            policy: pool.policy,
            first_sku: self.skus[pool.skus[0] as usize].id,
            serve_at_ns: pool.serve_at_ns,
            served: pool.served,
            tickets: pool.tickets_taken,
        })
    }

    /// The order confirmed for `(user, client_key)` for the product of `sku` (its limit
    /// group, or the SKU itself), if any and if this shard owns `sku`.
    pub fn order_for_key(&self, user: u64, client_key: u64, sku: SkuId) -> Option<OrderId> {
        let &local = self.local_index.get(&sku)?;
        self.book.order_for(user, client_key, self.limit_key(local))
    }

    /// Units a buyer holds or bought of a SKU on this shard (what counts against limits).
    pub fn held_by(&self, user: u64, sku: SkuId) -> u32 {
        self.local_index.get(&sku).map_or(0, |&local| {
            self.book.units_of(user, local, self.limit_key(local))
        })
    }
}

fn state_pool(sku: &SkuState) -> usize {
    sku.pool.expect("called for a pooled SKU") as usize
}

fn rejected(reason: RejectReason, sequence: u64) -> Outcome {
    Outcome::Rejected {
        reason,
        sequence: Some(sequence),
    }
}

fn outcome_of(result: Result<Order, RejectReason>, sequence: u64) -> Outcome {
    match result {
        Ok(order) => Outcome::Confirmed(order),
        Err(reason) => rejected(reason, sequence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{SaleWindow, SkuSpec};
    use crate::types::{GroupId, UserId};

    fn intent(user: u64, key: u64, sku: u32, quantity: u32) -> Intent {
        Intent {
            user: UserId(user),
            client_key: key,
            sku: SkuId(sku),
            quantity,
        }
    }

    fn core() -> ShardCore {
        let catalog = Catalog::builder()
            .group(GroupId(1), 3)
            .sku(SkuSpec::new(SkuId(1), 5).limit(2).group(GroupId(1)))
            .sku(SkuSpec::new(SkuId(2), 5).limit(2).group(GroupId(1)))
            .sku(SkuSpec::new(SkuId(3), 1).window(SaleWindow {
                opens_at_ns: 100,
                closes_at_ns: 200,
            }))
            .build()
            .unwrap();
        ShardCore::whole(&catalog)
    }

    fn reason(applied: Applied) -> RejectReason {
        applied.reason().expect("rejected")
    }

    #[test]
    fn window_rules_use_the_arrival_stamp() {
        let mut core = core();
        assert_eq!(
            reason(core.buy(&intent(1, 1, 3, 1), 99)),
            RejectReason::NotOpenYet
        );
        assert_eq!(
            reason(core.buy(&intent(1, 1, 3, 1), 200)),
            RejectReason::Closed
        );
        assert!(core.buy(&intent(1, 1, 3, 1), 100).order().is_some());
    }

    #[test]
    fn retry_gets_its_first_order_back() {
        let mut core = core();
        let first = *core.buy(&intent(7, 42, 1, 1), 0).order().unwrap();
        assert_eq!(
            reason(core.buy(&intent(7, 42, 1, 1), 0)),
            RejectReason::Duplicate(first.id)
        );
        assert_eq!(core.levels_of(SkuId(1)).unwrap().held, 1);
    }

    #[test]
    fn limits_hold_per_sku_and_per_group() {
        let mut core = core();
        assert!(core.buy(&intent(1, 1, 1, 2), 0).order().is_some());
        assert_eq!(
            reason(core.buy(&intent(1, 2, 1, 1), 0)),
            RejectReason::UserLimit
        );
        assert!(core.buy(&intent(1, 3, 2, 1), 0).order().is_some());
        // 3 units in group 1 now: the group limit stops a fourth on either SKU.
        assert_eq!(
            reason(core.buy(&intent(1, 4, 2, 1), 0)),
            RejectReason::UserLimit
        );
        assert!(core.buy(&intent(2, 1, 2, 2), 0).order().is_some());
    }

    #[test]
    fn stock_rules_and_sequence_numbers() {
        let mut core = core();
        for user in 0..2 {
            assert!(core.buy(&intent(user, 0, 1, 2), 0).order().is_some());
        }
        assert_eq!(
            reason(core.buy(&intent(9, 0, 1, 2), 0)),
            RejectReason::InsufficientStock
        );
        assert!(core.buy(&intent(9, 1, 1, 1), 0).order().is_some());
        let sold_out = core.buy(&intent(10, 0, 1, 1), 0);
        assert_eq!(reason(sold_out), RejectReason::SoldOut);
        assert_eq!(sold_out.sequence(), Some(4));
        assert_eq!(core.commands_applied(), 5);
        assert_eq!(core.orders_confirmed(), 3);
        let levels = core.levels_of(SkuId(1)).unwrap();
        assert_eq!((levels.available, levels.held), (0, 5));
    }

    #[test]
    fn buy_at_refuses_an_index_that_names_another_sku() {
        let mut core = core();
        let outcome = core.buy_at(1, &intent(1, 1, 1, 1), 0, false); // local 1 is SKU 2
        assert_eq!(outcome.reason(), Some(RejectReason::UnknownSku));
        let outcome = core.buy_at(99, &intent(1, 1, 1, 1), 0, false);
        assert_eq!(outcome.reason(), Some(RejectReason::UnknownSku));
        assert_eq!(core.levels_of(SkuId(1)).unwrap().held, 0);
    }

    #[test]
    fn same_commands_give_identical_outcomes_and_state() {
        let count = if cfg!(miri) { 300 } else { 5_000u64 };
        let commands: Vec<Command> = (0..count)
            .map(|i| Command::Buy {
                intent: intent(
                    i * 7919 % 300,
                    i % 5,
                    1 + (i % 3) as u32,
                    1 + (i % 2) as u32,
                ),
                arrival_ns: i * 100 % 250,
            })
            .collect();
        let run = || {
            let mut core = core();
            let outcomes: Vec<Applied> = commands.iter().map(|c| core.apply(c)).collect();
            (outcomes, core.levels().collect::<Vec<_>>())
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn unknown_sku_takes_a_sequence_number() {
        let mut core = core();
        let outcome = core.buy(&intent(1, 1, 99, 1), 0);
        assert_eq!(outcome.reason(), Some(RejectReason::UnknownSku));
        assert_eq!(outcome.sequence(), Some(0));
    }
}
