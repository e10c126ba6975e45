//! The decision core: a plain, single-threaded, deterministic state machine per shard.
//!
//! `(state, command) -> (state, outcome)`, nothing else: no threads, no atomics, no clock
//! (time arrives as the arrival stamp on each intent). Its outcomes depend only on the
//! catalog, the placement and the order of the commands it applied, which is what lets the
//! model tests, the fuzzers and (later) the journal drive it directly and replay it exactly.
//! The engine's worker threads wrap it; nothing here knows about them.

mod book;
mod table;

use rustc_hash::FxHashMap;

use book::{Confirmed, OrderBook, SKU_LIMIT_KEY, Standing};

use crate::catalog::{Catalog, Placement};
use crate::types::{Intent, Order, OrderId, Outcome, RejectReason, ShardId, SkuId};

/// A command a shard applies. Later commands (payments, clock ticks, stock changes) join
/// this enum; each is applied in the shard's order and numbered by its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// A buy intent, stamped with its arrival on the engine clock.
    Buy {
        /// The intent.
        intent: Intent,
        /// Arrival, in ns on the engine clock; the sale window is judged on it.
        arrival_ns: u64,
    },
}

/// A SKU's counters as the shard sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SkuLevels {
    /// The SKU.
    pub id: SkuId,
    /// Units for sale at the start.
    pub stock: u32,
    /// Units still available.
    pub available: u32,
    /// Units held by confirmed orders.
    pub held: u32,
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
    #[inline]
    fn probe(&self, user: u64) -> (usize, u64) {
        crate::hash::bloom_probe(crate::hash::mix64(user, 0), self.word_mask)
    }

    #[inline]
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

#[derive(Debug, Clone)]
struct SkuState {
    id: SkuId,
    stock: u32,
    /// `0..=stock`; `available + held == stock` after every command.
    available: u32,
    held: u32,
    limit_per_buyer: u32,
    opens_at_ns: u64,
    closes_at_ns: u64,
    /// Index into `ShardCore::group_limits`, if the SKU is in a limit group.
    group: Option<u32>,
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
    /// the order book doubles on the hot path (one slow decision). Costs 128 bytes per order
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
        for &catalog_index in placement.skus_of(shard) {
            let spec = &catalog.skus()[catalog_index as usize];
            let group = spec.group.map(|group_id| {
                let group_index = catalog
                    .group_index_of(group_id)
                    .expect("a validated catalog knows its groups")
                    as u32;
                *group_local.entry(group_index).or_insert_with(|| {
                    group_limits.push(catalog.groups()[group_index as usize].limit_per_buyer);
                    (group_limits.len() - 1) as u32
                })
            });
            local_index.insert(spec.id, skus.len() as u32);
            stock_total += u64::from(spec.stock);
            skus.push(SkuState {
                id: spec.id,
                stock: spec.stock,
                available: spec.stock,
                held: 0,
                limit_per_buyer: spec.limit_per_buyer,
                opens_at_ns: spec.window.opens_at_ns,
                closes_at_ns: spec.window.closes_at_ns,
                group,
            });
        }
        let orders_max =
            orders.unwrap_or(stock_total.min(ORDER_CAPACITY_DEFAULT_MAX as u64) as usize);
        Self {
            shard,
            skus,
            local_index,
            group_limits,
            buyers: BuyerFilter::for_stock(stock_total),
            book: OrderBook::with_room_for(orders_max),
            sequence_next: 0,
            orders_confirmed: 0,
        }
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

    /// Applies one command and returns its outcome.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match *command {
            Command::Buy { intent, arrival_ns } => self.buy(&intent, arrival_ns),
        }
    }

    /// Applies a buy intent naming its SKU by id. A SKU this shard does not own is rejected
    /// as [`RejectReason::UnknownSku`] (and still takes a sequence number).
    pub fn buy(&mut self, intent: &Intent, arrival_ns: u64) -> Outcome {
        let local = self.local_index(intent.sku).unwrap_or(u32::MAX);
        self.buy_at(local, intent, arrival_ns)
    }

    /// The local index of a SKU on this shard (its position in [`levels`](Self::levels)),
    /// for callers that resolve SKU ids once and then use [`buy_at`](Self::buy_at).
    pub fn local_index(&self, sku: SkuId) -> Option<u32> {
        self.local_index.get(&sku).copied()
    }

    /// Applies a buy intent whose SKU the caller already resolved to this shard's local
    /// index (the engine's producers do, so that the shard skips the id lookup). An index
    /// that is out of range or names another SKU than `intent.sku` is rejected as
    /// [`RejectReason::UnknownSku`], like an unknown id.
    #[inline]
    pub fn buy_at(&mut self, local: u32, intent: &Intent, arrival_ns: u64) -> Outcome {
        let sequence = self.next_sequence();
        let owned = self
            .skus
            .get(local as usize)
            .is_some_and(|sku| sku.id == intent.sku);
        let decision = if owned {
            self.decide(local, intent, arrival_ns, sequence)
        } else {
            Err(RejectReason::UnknownSku)
        };
        match decision {
            Ok(order) => Outcome::Confirmed(order),
            Err(reason) => Outcome::Rejected {
                reason,
                sequence: Some(sequence),
            },
        }
    }

    /// The key a SKU's per-buyer units are counted under: its limit group, or itself.
    #[inline]
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

    /// The rules, in their documented order: window, idempotency, limits, stock.
    #[inline]
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
        if arrival_ns >= sku.closes_at_ns {
            return Err(RejectReason::Closed);
        }
        let quantity = intent.quantity;
        let group = sku.group;
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
        if u64::from(held_of_sku) + u64::from(quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        if let Some(group) = group {
            let limit = self.group_limits[group as usize];
            if u64::from(held_of_group) + u64::from(quantity) > u64::from(limit) {
                return Err(RejectReason::UserLimit);
            }
        }
        if sku.available == 0 {
            return Err(RejectReason::SoldOut);
        }
        if sku.available < quantity {
            return Err(RejectReason::InsufficientStock);
        }
        // Confirm. Limits are at least 1 and quantities fit the limit checked above, so the
        // counters below cannot overflow.
        let sku = &mut self.skus[local as usize];
        sku.available -= quantity;
        sku.held += quantity;
        debug_assert_eq!(sku.available + sku.held, sku.stock);
        let id = OrderId::new(self.shard, self.orders_confirmed);
        self.orders_confirmed += 1;
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
                units: quantity,
            },
        );
        self.buyers.insert(intent.user.0);
        Ok(Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity,
            sequence,
        })
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
            stock: sku.stock,
            available: sku.available,
            held: sku.held,
        })
    }

    /// One SKU's counters, if this shard owns it.
    pub fn levels_of(&self, sku: SkuId) -> Option<SkuLevels> {
        let local = *self.local_index.get(&sku)?;
        self.levels().nth(local as usize)
    }

    /// The order confirmed for `(user, client_key)` for the product of `sku` (its limit
    /// group, or the SKU itself), if any and if this shard owns `sku`.
    pub fn order_for_key(&self, user: u64, client_key: u64, sku: SkuId) -> Option<OrderId> {
        let &local = self.local_index.get(&sku)?;
        self.book.order_for(user, client_key, self.limit_key(local))
    }

    /// Units a buyer holds of a SKU on this shard.
    pub fn held_by(&self, user: u64, sku: SkuId) -> u32 {
        self.local_index.get(&sku).map_or(0, |&local| {
            self.book.units_of(user, local, self.limit_key(local))
        })
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

    fn reason(outcome: Outcome) -> RejectReason {
        outcome.reason().expect("rejected")
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
        let outcome = core.buy_at(1, &intent(1, 1, 1, 1), 0); // local 1 is SKU 2
        assert_eq!(outcome.reason(), Some(RejectReason::UnknownSku));
        let outcome = core.buy_at(99, &intent(1, 1, 1, 1), 0);
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
            let outcomes: Vec<Outcome> = commands.iter().map(|c| core.apply(c)).collect();
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
