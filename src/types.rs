//! The plain data that crosses the engine: ids, intents, orders, outcomes and reasons.

use core::fmt;

/// A buyer, as the commerce server identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(pub u64);

/// A stock-keeping unit: one variant of one product (e.g. "trainer, size 42, black").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SkuId(pub u32);

/// A limit group: SKUs whose units count together against one per-buyer limit (e.g. "at
/// most 2 pairs of these trainers, whatever the size").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

/// The index of a shard: a worker thread and the SKUs it alone decides for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// A confirmed order: the shard that decided it in the top 16 bits, that shard's count of
/// confirmed orders before it in the low 48. Unique across an engine, and deterministic: the
/// same catalog and command order give the same ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderId(pub u64);

impl OrderId {
    const NUMBER_BITS: u32 = 48;

    /// The id of the `number`th order (from 0) confirmed by `shard`.
    pub const fn new(shard: ShardId, number: u64) -> Self {
        Self(((shard.0 as u64) << Self::NUMBER_BITS) | (number & ((1 << Self::NUMBER_BITS) - 1)))
    }

    /// The shard that confirmed the order.
    pub const fn shard(self) -> ShardId {
        ShardId((self.0 >> Self::NUMBER_BITS) as u16)
    }

    /// How many orders that shard had confirmed before this one.
    pub const fn number(self) -> u64 {
        self.0 & ((1 << Self::NUMBER_BITS) - 1)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.shard().0, self.number())
    }
}

/// A buyer pressing "buy": `quantity` units of `sku` for `user`.
///
/// `client_key` makes the press idempotent: a retry with the same `(user, client_key)` for
/// the same product (the SKU's limit group, or the SKU if it has none) gets the first order
/// back (as [`RejectReason::Duplicate`]) instead of a second one, whichever of the
/// product's variants it names. The same key for another product is another purchase
/// attempt. A client that does not retry can use any unique value per press.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Intent {
    /// The buyer.
    pub user: UserId,
    /// The buyer's idempotency key for this press (unique per purchase attempt).
    pub client_key: u64,
    /// What they want to buy.
    pub sku: SkuId,
    /// How many units; `1..=max_quantity` (see the engine builder), else rejected as
    /// [`RejectReason::InvalidQuantity`].
    pub quantity: u32,
}

/// A confirmed order: the units are held for the buyer, who pays for them next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Order {
    /// The order's id, unique in the engine.
    pub id: OrderId,
    /// The buyer.
    pub user: UserId,
    /// The SKU bought.
    pub sku: SkuId,
    /// Units held for the buyer.
    pub quantity: u32,
    /// The deciding shard's sequence number of the command that created it.
    pub sequence: u64,
}

/// Why an intent was not confirmed. Each variant names one rule; the shard checks them in
/// the order listed for shard decisions (window, idempotency, limit, stock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The quantity was 0 or above the engine's `max_quantity`. Decided by the producer
    /// (a shard core fed directly checks quantity 0 before any other rule of a known SKU).
    InvalidQuantity,
    /// No SKU with that id is in the catalog. Decided by the producer (or a shard core fed
    /// directly with a SKU it does not own).
    UnknownSku,
    /// The intent arrived before the SKU's sale window opened.
    NotOpenYet,
    /// The intent arrived at or after the SKU's sale window closed.
    Closed,
    /// The same `(user, client_key)` already has this order for this product (the SKU's
    /// limit group, or the SKU); no second order was made.
    Duplicate(OrderId),
    /// Confirming would take the buyer over their limit for this SKU or its limit group.
    UserLimit,
    /// No unit of the SKU is left. Also answered by the producer, without queueing, once the
    /// shard has published the SKU as sold out (its `sequence` is then `None`).
    SoldOut,
    /// Some units are left, but fewer than the intent asked for.
    InsufficientStock,
    /// The shard stopped deciding after its order sink panicked; the intent was not
    /// decided.
    ShardFailed,
    /// The buyer already has a ticket in this product's pool (an opening draw or
    /// one-each-first): one ticket per buyer, however many times they press buy.
    AlreadyPooled,
    /// The product's pool already holds the catalog's pool capacity of tickets.
    PoolFull,
    /// The intent asked to wait for a unit, but the SKU's waitlist is full.
    WaitlistFull,
}

impl RejectReason {
    /// Every reason, in declaration order (the `Duplicate` entry carries a placeholder id).
    pub const ALL: [RejectReason; 12] = [
        Self::InvalidQuantity,
        Self::UnknownSku,
        Self::NotOpenYet,
        Self::Closed,
        Self::Duplicate(OrderId(0)),
        Self::UserLimit,
        Self::SoldOut,
        Self::InsufficientStock,
        Self::ShardFailed,
        Self::AlreadyPooled,
        Self::PoolFull,
        Self::WaitlistFull,
    ];

    /// A dense index, `0..ALL.len()`, for counting by reason.
    pub const fn index(self) -> usize {
        match self {
            Self::InvalidQuantity => 0,
            Self::UnknownSku => 1,
            Self::NotOpenYet => 2,
            Self::Closed => 3,
            Self::Duplicate(_) => 4,
            Self::UserLimit => 5,
            Self::SoldOut => 6,
            Self::InsufficientStock => 7,
            Self::ShardFailed => 8,
            Self::AlreadyPooled => 9,
            Self::PoolFull => 10,
            Self::WaitlistFull => 11,
        }
    }

    /// A stable snake_case name, for reports and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::InvalidQuantity => "invalid_quantity",
            Self::UnknownSku => "unknown_sku",
            Self::NotOpenYet => "not_open_yet",
            Self::Closed => "closed",
            Self::Duplicate(_) => "duplicate",
            Self::UserLimit => "user_limit",
            Self::SoldOut => "sold_out",
            Self::InsufficientStock => "insufficient_stock",
            Self::ShardFailed => "shard_failed",
            Self::AlreadyPooled => "already_pooled",
            Self::PoolFull => "pool_full",
            Self::WaitlistFull => "waitlist_full",
        }
    }
}

/// What became of one intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The units are held for the buyer.
    Confirmed(Order),
    /// Nothing was reserved.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// The deciding shard's sequence number, or `None` when the producer answered at
        /// once (malformed intent, unknown SKU, or the sold-out gate) or the shard had failed.
        sequence: Option<u64>,
    },
}

impl Outcome {
    /// The order, if confirmed.
    pub fn order(&self) -> Option<&Order> {
        match self {
            Self::Confirmed(order) => Some(order),
            Self::Rejected { .. } => None,
        }
    }

    /// The rejection reason, if rejected.
    pub fn reason(&self) -> Option<RejectReason> {
        match self {
            Self::Confirmed(_) => None,
            Self::Rejected { reason, .. } => Some(*reason),
        }
    }

    /// The deciding shard's sequence number, if a shard decided it.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Self::Confirmed(order) => Some(order.sequence),
            Self::Rejected { sequence, .. } => *sequence,
        }
    }

    pub(crate) const fn rejected_by_producer(reason: RejectReason) -> Self {
        Self::Rejected {
            reason,
            sequence: None,
        }
    }
}

/// A producer's number for one queued submit, returned by
/// [`Producer::submit`](crate::Producer::submit) and carried by its [`Completion`], to match
/// the two when outcomes arrive out of submit order (a pooled or waiting intent is
/// answered after later ones). Counts up per producer and wraps after 2^32 submits; the
/// intents one producer has in flight (at most its ring capacity per shard) never share
/// one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u32);

/// An intent together with what became of it, as the producer that submitted it receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Completion {
    /// The intent as submitted.
    pub intent: Intent,
    /// What became of it.
    pub outcome: Outcome,
    /// The ticket its submit returned.
    pub ticket: Ticket,
    /// Whether the intent waited before it was decided: pooled for an opening draw or
    /// one-each-first, or on a waitlist (its outcome came with a later command).
    pub waited: bool,
}

/// Why a payment, cancellation or stock change was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ControlError {
    /// No order with this id was confirmed by its shard.
    #[error("no order {0} was confirmed")]
    UnknownOrder(OrderId),
    /// The order is already paid (a paid order cannot be paid again or cancelled).
    #[error("the order is already paid")]
    AlreadyPaid,
    /// The order was cancelled; its units went back on sale.
    #[error("the order was cancelled")]
    Cancelled,
    /// The order's payment deadline passed before this command; its units went back on
    /// sale (possibly to another buyer), so it can no longer be paid.
    #[error("the order's hold expired before payment")]
    HoldExpired,
    /// No SKU with this id is in the catalog (or on the shard the command reached).
    #[error("unknown SKU {0:?}")]
    UnknownSku(SkuId),
    /// A reduction asked for more units than are available: held and sold units are never
    /// taken back.
    #[error("only {available} units are available to remove")]
    NotEnoughAvailable {
        /// Units available when the command was applied.
        available: u32,
    },
    /// A restock would take the SKU's stock past `u32::MAX` units.
    #[error("the restock would overflow the SKU's stock")]
    StockOverflow,
    /// A new sale window closes at or before it opens.
    #[error("the sale window closes at or before it opens")]
    WindowInverted,
    /// The engine is shutting down or shut down; the command was not applied.
    #[error("the engine is shut down")]
    ShutDown,
    /// The shard stopped deciding after its order sink panicked; the command was not
    /// applied.
    #[error("the shard has failed")]
    ShardFailed,
}
