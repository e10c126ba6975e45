//! The decision core: a plain, single-threaded, deterministic state machine per shard.
//!
//! `(state, command) -> (state, outcome)`, nothing else: no threads, no atomics, no clock
//! (time arrives as the arrival stamp on each intent). Its outcomes depend only on the
//! catalog, the placement and the order of the commands it applied, which is what lets the
//! model tests, the fuzzers and the journal drive it directly and replay it exactly.
//! The engine's worker threads wrap it; nothing here knows about them.
//!
//! One file per concern; every file but `mod.rs` extends [`ShardCore`] or holds a piece of
//! its state, and each reads top to bottom:
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`ShardCore`]: construction, `apply`, and what it reports |
//! | `command.rs` | [`Command`], [`Applied`], [`Deferred`]: what goes in and comes out |
//! | `state.rs` | per-SKU state and levels, the buyer filter, the log of confirmed orders |
//! | `buy.rs` | the buy rules, in the order a buy meets them, and the confirmation |
//! | `events.rs` | order events, and an order's state on request |
//! | `lifecycle.rs` | payments, cancellations, stock and window changes, expiry, due times |
//! | `waiting.rs` | pools (the opening draw, one each first) and waitlists |
//! | `pool.rs` | a pool's state and the draw's shuffle |
//! | `book.rs`, `table.rs` | the order book: holdings and keys by buyer, in one open-addressing table |
//! | `snapshot.rs` | a core's state as checksummed bytes, and back |

mod book;
mod buy;
mod command;
mod events;
mod lifecycle;
mod pool;
mod snapshot;
mod state;
mod table;
mod waiting;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rustc_hash::FxHashMap;

use book::{Confirmed, OrderBook, SKU_LIMIT_KEY, Standing};
pub(crate) use command::Effects;
pub use command::{Applied, Command, Deferred};
pub use events::{LiveSale, OrderEvent, OrderEventKind, OrderStatus, OrderView};
use pool::{Pool, PoolTicket};
pub use pool::{PoolLevels, pool_seed, shuffle};
pub use snapshot::{SNAPSHOT_MAGIC, SnapshotError};
use state::{BuyerFilter, OrderLog, OrderRecord, OrderState, SkuState, Waiter};
pub use state::{ORDER_CAPACITY_DEFAULT_MAX, SkuLevels};

use crate::catalog::{Catalog, Placement, Policy, SaleWindow};
use crate::types::{ControlError, Intent, Order, OrderId, Outcome, RejectReason, ShardId, SkuId};

/// How many intents of a batch ahead of the one being decided have their cache misses
/// started ([`ShardCore::prefetch_at`]): enough to keep the core's miss buffers busy while
/// it decides. With the whole batch prefetched before the first decision, those
/// prefetches waited for the miss buffers with nothing to overlap (the order book bench
/// confirmed about 1.15x faster, by medians, this way). The shard worker, the cluster's
/// replica and [`ShardCore::buy_many`] all use it.
pub(crate) const PREFETCH_AHEAD: usize = 16;

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
    /// Steps per slice of a pool being served.
    pool_slice: u32,
    /// Pools being served, in the order they started (each is served to its end before
    /// the next gets a step).
    serving: VecDeque<u32>,
    /// The sequence of the last command that served a slice (`u64::MAX`: none yet).
    sliced_at: u64,
    /// Order events since the last [`take_events`](Self::take_events), when recording.
    events: Option<Vec<OrderEvent>>,
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
    /// the order book doubles on the hot path (one slow decision). Costs at least 96 bytes
    /// per order of room (64 of order book, kept at most half full, and a 32-byte record;
    /// the book's slots round up to a power of two), allocated and faulted in here.
    ///
    /// # Panics
    /// As [`new`](Self::new).
    pub fn with_order_capacity(
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
    ) -> Self {
        Self::made(catalog, placement, shard, orders, true)
    }

    /// [`with_order_capacity`](Self::with_order_capacity), with the order book's room
    /// made only if `book_room` (a restore replaces the book with the snapshot's, whose
    /// room was made when it was taken: making it here too would allocate and fault in a
    /// table only to drop it).
    fn made(
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
        book_room: bool,
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
                join_pool(
                    &mut pools,
                    &mut pool_of_group,
                    spec,
                    (policy, window_ns),
                    group_index,
                    local,
                )
            });
            local_index.insert(spec.id, local);
            stock_total += u64::from(spec.stock);
            skus.push(SkuState::new(spec, group, pool));
        }
        let orders_max = Self::orders_to_make_room_for(stock_total, orders);
        let limit_keys = (0..skus.len() as u32)
            .map(|local| limit_key_of(&skus, local))
            .collect();
        let mut core = Self {
            shard,
            skus,
            local_index,
            group_limits,
            buyers: BuyerFilter::for_stock(stock_total),
            book: OrderBook::with_room_for(
                if book_room { orders_max } else { 0 },
                shard,
                limit_keys,
            ),
            sequence_next: 0,
            orders_confirmed: 0,
            orders: OrderLog::with_room_for(orders_max),
            now_ns: 0,
            next_due_ns: u64::MAX,
            deadlines: BinaryHeap::new(),
            pools,
            deferred: Vec::new(),
            levels_version: 0,
            pool_capacity: catalog.pool_capacity(),
            pool_slice: catalog.pool_slice(),
            serving: VecDeque::new(),
            sliced_at: u64::MAX,
            events: None,
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
    /// intents prefetch each some way ahead of deciding it (the shard worker, 16 intents),
    /// so that the cache misses of a large order book overlap with each other and with the
    /// decisions. A hint only: outcomes are the same without it.
    #[inline]
    pub fn prefetch_at(&self, local: u32, intent: &Intent) {
        // The book is read when the buyer may hold an order, or when the intent may be
        // confirmed (its free slot is written); a sold-out SKU and an unknown buyer need
        // neither.
        let may_confirm = self
            .skus
            .get(local as usize)
            .is_some_and(|sku| sku.available > 0);
        // The buyers' filter is read here only when its answer decides what to load: for
        // an intent that may be confirmed, only where a repeat buyer's further key is
        // worth loading too. Otherwise its word is only prefetched, for the decision to
        // read: a read here would wait for its miss before the next intent's prefetches
        // are issued (a filter sized for a large stock outgrows L2).
        let may_hold = if may_confirm && !self.book.further_keys_common() {
            self.buyers.prefetch(intent.user.0);
            false
        } else {
            self.buyers.may_hold(intent.user.0)
        };
        if may_confirm || may_hold {
            let limit_key = self.limit_key(local.min(self.skus.len().saturating_sub(1) as u32));
            self.book
                .prefetch(intent.user.0, intent.client_key, limit_key, may_hold);
        }
    }

    /// The first of two prefetch stages, for callers that can look further ahead than one
    /// batch: starts loading the word of the buyers' filter that
    /// [`prefetch_at`](Self::prefetch_at) reads to decide what else to load. Called some
    /// intents before `prefetch_at` for the same buyer, it spares that call its own miss.
    /// A hint only.
    #[inline]
    pub fn prefetch_buyer(&self, user: crate::types::UserId) {
        self.buyers.prefetch(user.0);
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

    /// [`buy_at`](Self::buy_at), with what its driver needs next (see [`Effects`]), so
    /// that the engine's worker does not ask the core again after each decision.
    #[inline]
    pub(crate) fn buy_noting(
        &mut self,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
    ) -> (Applied, Effects) {
        let applied = self.buy_at(local, intent, arrival_ns, wait);
        let effects = Effects {
            deferred: !self.deferred.is_empty(),
            levels_version: self.levels_version,
            available: self.skus.get(local as usize).map_or(0, |sku| sku.available),
        };
        (applied, effects)
    }

    /// [`apply`](Self::apply), with what its driver needs next (see [`Effects`];
    /// `available` is 0: a control command or a tick names no one SKU).
    pub(crate) fn apply_noting(&mut self, command: &Command) -> (Applied, Effects) {
        let applied = self.apply(command);
        let effects = Effects {
            deferred: !self.deferred.is_empty(),
            levels_version: self.levels_version,
            available: 0,
        };
        (applied, effects)
    }

    /// Applies a buy intent naming its SKU by id ([`Command::Buy`]). A SKU this shard does
    /// not own is rejected as [`RejectReason::UnknownSku`] (and still takes a sequence
    /// number).
    #[inline]
    pub fn buy(&mut self, intent: &Intent, arrival_ns: u64) -> Applied {
        let local = self.local_index(intent.sku).unwrap_or(u32::MAX);
        self.buy_at(local, intent, arrival_ns, false)
    }

    /// Applies `intents` in order, each exactly as [`buy`](Self::buy) at `arrival_ns`
    /// would, handing `each` its index and result. What deciding an intent reads and
    /// writes (its order book slot, its word of the buyers' filter) starts loading
    /// sixteen intents before it is decided, as the engine's shard worker does
    /// with its batches, so that a batch's cache misses overlap with deciding instead of
    /// being waited for one by one. For callers that feed the core from a transport of
    /// their own (a channel, a log) a batch at a time.
    pub fn buy_many(
        &mut self,
        intents: &[Intent],
        arrival_ns: u64,
        mut each: impl FnMut(usize, Applied),
    ) {
        // The local index of each intent from the one being decided to the furthest one
        // prefetched, by position modulo `PREFETCH_AHEAD`.
        let mut locals = [0u32; PREFETCH_AHEAD];
        for (position, intent) in intents.iter().enumerate().take(PREFETCH_AHEAD) {
            locals[position] = self.local_index(intent.sku).unwrap_or(u32::MAX);
            self.prefetch_at(locals[position], intent);
        }
        for (position, intent) in intents.iter().enumerate() {
            let local = locals[position % PREFETCH_AHEAD];
            if let Some(ahead) = intents.get(position + PREFETCH_AHEAD) {
                let ahead_local = self.local_index(ahead.sku).unwrap_or(u32::MAX);
                locals[position % PREFETCH_AHEAD] = ahead_local;
                self.prefetch_at(ahead_local, ahead);
            }
            each(position, self.buy_at(local, intent, arrival_ns, false));
        }
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
    /// While a pool is being served, that is the shard's clock: each tick serves it one
    /// more slice.
    pub fn next_due_ns(&self) -> Option<u64> {
        if !self.serving.is_empty() {
            return Some(self.now_ns);
        }
        (self.next_due_ns != u64::MAX).then_some(self.next_due_ns)
    }

    /// Whether a pool is being served, slice by slice (see
    /// [`CatalogBuilder::pool_slice`](crate::CatalogBuilder::pool_slice)): a driver
    /// applies a [`Command::Tick`] for each next slice.
    pub fn serving_pool(&self) -> bool {
        !self.serving.is_empty()
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

    fn next_sequence(&mut self) -> u64 {
        let sequence = self.sequence_next;
        self.sequence_next += 1;
        sequence
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

    /// Orders the order book holds in all (those recorded so far included) before it
    /// next doubles. Every order takes one; past the room made (see
    /// [`with_order_capacity`](Self::with_order_capacity)) the decision that fills it
    /// also allocates a table twice the size, writes it and moves every entry over, which
    /// pauses the shard for about a second per 4M orders on a small VM (mostly the kernel
    /// handing out and zeroing the new table's memory).
    pub fn order_room(&self) -> usize {
        self.book.room()
    }

    /// The [`order_room`](Self::order_room) of a fresh core whose SKUs hold `stock` units
    /// in all, made with room for `orders` (see
    /// [`with_order_capacity`](Self::with_order_capacity)), without making one.
    pub fn order_room_for(stock: u64, orders: Option<usize>) -> usize {
        OrderBook::slots_for(Self::orders_to_make_room_for(stock, orders)) / 2
    }

    /// The memory a fresh core of `placement`'s `shard` makes up front for its orders
    /// with room for `orders` (see [`with_order_capacity`](Self::with_order_capacity)):
    /// its order book's table and its order records, written at start (so resident), in
    /// bytes. The rest of a core (its SKUs, its buyer filter) is small beside it.
    pub fn order_room_bytes(
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
    ) -> u64 {
        let room = Self::orders_to_make_room_for(shard_stock(catalog, placement, shard), orders);
        OrderBook::bytes_for(room) + room as u64 * size_of::<OrderRecord>() as u64
    }

    /// The shards of `placement` whose stock is more than a fresh core makes room for with
    /// `orders` (see [`order_room_for`](Self::order_room_for)): `(shard, stock, room)`, as
    /// [`Engine::order_room_short`](crate::Engine::order_room_short) gives them for a
    /// started engine, without making a core.
    pub fn order_room_short(
        catalog: &Catalog,
        placement: &Placement,
        orders: Option<usize>,
    ) -> Vec<(ShardId, u64, usize)> {
        (0..placement.shards())
            .filter_map(|index| {
                let shard = ShardId(index as u16);
                let stock = shard_stock(catalog, placement, shard);
                let room = Self::order_room_for(stock, orders);
                (stock > room as u64).then_some((shard, stock, room))
            })
            .collect()
    }

    /// The room [`with_order_capacity`](Self::with_order_capacity) makes: `orders`, or the
    /// stock up to [`ORDER_CAPACITY_DEFAULT_MAX`].
    fn orders_to_make_room_for(stock: u64, orders: Option<usize>) -> usize {
        orders.unwrap_or(stock.min(ORDER_CAPACITY_DEFAULT_MAX as u64) as usize)
    }

    /// Units still available of the SKU at a local index.
    #[inline]
    pub(crate) fn available_local(&self, local: u32) -> u32 {
        self.skus[local as usize].available
    }

    /// The SKUs this shard owns, with their counters, in local-index order.
    pub fn levels(&self) -> impl ExactSizeIterator<Item = SkuLevels> + '_ {
        self.skus.iter().map(levels_of_state)
    }

    /// The SKUs at local indices `first..first + count` (fewer at the end of the shard's
    /// list), with their counters.
    pub fn levels_in(&self, first: usize, count: usize) -> impl Iterator<Item = SkuLevels> + '_ {
        let from = first.min(self.skus.len());
        let until = from.saturating_add(count).min(self.skus.len());
        self.skus[from..until].iter().map(levels_of_state)
    }

    /// One SKU's counters, if this shard owns it.
    pub fn levels_of(&self, sku: SkuId) -> Option<SkuLevels> {
        let local = *self.local_index.get(&sku)?;
        // Indexed, not `levels().nth(local)`: that walks every SKU before it (a read of
        // every SKU went quadratic, 4 s for 20,000 in a debug build).
        self.skus.get(local as usize).map(levels_of_state)
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

/// Puts a pooled SKU (at local index `local`, under `policy` with its window) in its
/// product's pool: the pool of its limit group if the group has one on this shard already
/// (served at the group's earliest opening plus the window), else a new one, seeded for
/// its product. Returns the pool's index.
fn join_pool(
    pools: &mut Vec<Pool>,
    pool_of_group: &mut FxHashMap<u32, u32>,
    spec: &crate::catalog::SkuSpec,
    (policy, window_ns): (Policy, u64),
    group_index: Option<u32>,
    local: u32,
) -> u32 {
    let serve_at_ns = spec.window.opens_at_ns.saturating_add(window_ns);
    if let Some(index) = group_index.and_then(|g| pool_of_group.get(&g).copied()) {
        let pool = &mut pools[index as usize];
        pool.skus.push(local);
        pool.serve_at_ns = pool.serve_at_ns.min(serve_at_ns);
        return index;
    }
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
        serving: None,
    });
    let index = (pools.len() - 1) as u32;
    if let Some(g) = group_index {
        pool_of_group.insert(g, index);
    }
    index
}

/// The key SKU `local`'s per-buyer units are counted under: its limit group, or itself.
#[inline(always)]
fn limit_key_of(skus: &[SkuState], local: u32) -> u64 {
    match skus[local as usize].group {
        Some(group) => u64::from(group),
        None => SKU_LIMIT_KEY | u64::from(local),
    }
}

/// The units of `placement`'s `shard`, all its SKUs together.
fn shard_stock(catalog: &Catalog, placement: &Placement, shard: ShardId) -> u64 {
    placement
        .skus_of(shard)
        .iter()
        .map(|&sku| u64::from(catalog.skus()[sku as usize].stock))
        .sum()
}

/// A SKU's counters as [`ShardCore::levels`] reports them.
fn levels_of_state(sku: &SkuState) -> SkuLevels {
    SkuLevels {
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
