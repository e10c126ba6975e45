//! What goes into a shard core and what comes out: the commands it applies, what applying
//! one did, and the outcomes of buys that waited.

use crate::catalog::SaleWindow;
use crate::types::{ControlError, Intent, Order, OrderId, Outcome, RejectReason, SkuId};

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
    /// be confirmed (unless pooled, see [`Policy`](crate::Policy)).
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

/// What a command left for its driver besides its [`Applied`]: whether outcomes of waiting
/// buys are ready ([`ShardCore::take_deferred`](super::ShardCore::take_deferred)), the
/// levels version (it changes when units came back on sale or were taken off it other than
/// by a confirmation), and, for a buy, the units its SKU has left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effects {
    pub(crate) deferred: bool,
    pub(crate) levels_version: u64,
    pub(crate) available: u32,
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
