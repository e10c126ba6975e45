//! A shard core's state, piece by piece: each SKU's levels and cold counters, the buyer
//! filter in front of the order book, waiting intents, and the log of confirmed orders.

use super::*;

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
pub(super) const BUYER_FILTER_BITS_PER_UNIT: u64 = 16;
pub(super) const BUYER_FILTER_BITS_MIN: u64 = 1 << 16;
/// 512 KiB at most, so that it stays in L2: the filter only pays while it is cheaper to
/// read than the order book. A larger sale sees more false positives, never a wrong decision.
pub(super) const BUYER_FILTER_BITS_MAX: u64 = 1 << 22;

/// A one-probe Bloom filter of the buyers who hold an order on this shard.
///
/// During a rush almost every intent comes from a buyer with no order yet. Their
/// look-up in the order book would touch a slot of a table that outgrows the cache; one
/// bit, in a bitset sized to stay in L2, answers "certainly no order" first. Bits are set on
/// every confirmation and never cleared, so a clear bit is exact; set bits (own order or
/// false positive, about 1.5% once a 16-bits-per-unit filter's stock is sold) fall through
/// to the book. Decisions are identical with or without it.
#[derive(Debug, Clone)]
pub(super) struct BuyerFilter {
    /// `bits / 64` words; `bits` is a power of two.
    pub(super) words: Box<[u64]>,
    /// `words.len() - 1`.
    pub(super) word_mask: u64,
}

impl BuyerFilter {
    pub(super) fn for_stock(stock: u64) -> Self {
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
    pub(super) fn probe(&self, user: u64) -> (usize, u64) {
        crate::hash::bloom_probe(crate::hash::mix64(user, 0), self.word_mask)
    }

    #[inline(always)]
    pub(super) fn may_hold(&self, user: u64) -> bool {
        let (word, bits) = self.probe(user);
        debug_assert!(word < self.words.len());
        self.words[word] & bits == bits
    }

    /// Starts loading the word [`may_hold`](Self::may_hold) reads for `user` (a hint).
    #[inline(always)]
    pub(super) fn prefetch(&self, user: u64) {
        let (word, _) = self.probe(user);
        if let Some(word) = self.words.get(word) {
            crate::prefetch::prefetch_read(word);
        }
    }

    pub(super) fn insert(&mut self, user: u64) {
        let (word, bits) = self.probe(user);
        self.words[word] |= bits;
    }
}

/// A SKU's state. `repr(C)` keeps what every decision reads in its first 64 bytes; the
/// counters and the waitlist, touched only when units move other than by a confirmation,
/// live behind a box.
#[derive(Debug, Clone)]
#[repr(C)]
pub(super) struct SkuState {
    pub(super) id: SkuId,
    /// `available + held + sold == stock` after every command.
    pub(super) available: u32,
    pub(super) limit_per_buyer: u32,
    pub(super) waitlist_capacity: u32,
    pub(super) opens_at_ns: u64,
    pub(super) closes_at_ns: u64,
    /// Index into `ShardCore::group_limits`, if the SKU is in a limit group.
    pub(super) group: Option<u32>,
    /// Index into `ShardCore::pools`, under a pooled policy.
    pub(super) pool: Option<u32>,
    /// Closed early by [`Command::CloseSale`].
    pub(super) closed: bool,
    pub(super) held: u32,
    pub(super) cold: Box<SkuCold>,
}

/// The part of a SKU's state that decisions other than confirmations do not read.
#[derive(Debug, Clone, Default)]
pub(super) struct SkuCold {
    pub(super) stock: u32,
    pub(super) sold: u32,
    pub(super) hold_ns: Option<u64>,
    pub(super) expired: u64,
    pub(super) cancelled: u64,
    pub(super) restocked: u64,
    pub(super) reduced: u64,
    pub(super) waitlist_filled: u64,
    pub(super) waiters: VecDeque<Waiter>,
}

impl SkuState {
    /// A SKU as its spec starts it: all its stock available, its window as set, in limit
    /// group `group` and pool `pool` (local indexes) if it has them.
    pub(super) fn new(
        spec: &crate::catalog::SkuSpec,
        group: Option<u32>,
        pool: Option<u32>,
    ) -> Self {
        Self {
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
        }
    }

    /// Whether the sale is over at `now_ns`.
    pub(super) fn closed_at(&self, now_ns: u64) -> bool {
        self.closed || now_ns >= self.closes_at_ns
    }
}

/// An intent on a waitlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiter {
    pub(super) origin: u64,
    pub(super) intent: Intent,
}

/// What became of a confirmed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OrderState {
    Held,
    Sold,
    Cancelled,
    Expired,
}

/// Every confirmed order, by number. The room is made and written once up front (as the
/// order book's table is), so that no confirmation on the hot path reallocates or takes a
/// page fault: the first write to each fresh page made the shard fault it in and zero it
/// there (2 MiB at a time where the allocator uses huge pages), which was 30% of a
/// journaled shard thread's samples in a profile. A clone keeps the room.
#[derive(Debug)]
pub(super) struct OrderLog(pub(super) Vec<OrderRecord>);

impl OrderLog {
    /// An empty log with room for `orders`, its memory already written.
    pub(super) fn with_room_for(orders: usize) -> Self {
        let mut log = Vec::with_capacity(orders);
        prefault(&mut log);
        Self(log)
    }
}

/// Writes zeros over a vector's spare room, so that its pages are faulted in now (not
/// under Miri, which has no pages to fault and would interpret every write).
fn prefault<T: Copy>(vector: &mut Vec<T>) {
    if cfg!(miri) {
        return;
    }
    vector
        .spare_capacity_mut()
        .fill(core::mem::MaybeUninit::zeroed());
}

impl Clone for OrderLog {
    fn clone(&self) -> Self {
        let mut orders = Vec::with_capacity(self.0.capacity());
        orders.extend_from_slice(&self.0);
        prefault(&mut orders);
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
pub(super) struct OrderRecord {
    pub(super) user: u64,
    pub(super) sku_local: u32,
    pub(super) units: u32,
    pub(super) state: OrderState,
    /// The payment deadline on the engine clock (`u64::MAX`: none).
    pub(super) pay_by_ns: u64,
}
