//! What the core tells about its confirmed orders: each order's life as events (confirmed,
//! paid, cancelled, expired) in the shard's command order, and an order's state on request.
//!
//! Events are recorded only when asked for ([`ShardCore::record_events`]): the core a
//! model or a benchmark drives keeps nothing it is not asked to. A core replaying the same
//! commands records the same events, so a journal is also the log of its events.

use super::*;
use crate::types::UserId;

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderEventKind {
    /// Units held for the buyer (a buy, a waitlist filled, a draw served).
    Confirmed,
    /// The buyer paid: the units are sold.
    Paid,
    /// Cancelled unpaid: the units went back on sale.
    Cancelled,
    /// The payment deadline passed unpaid: the units went back on sale.
    Expired,
}

impl OrderEventKind {
    /// A stable lower-case name (`confirmed`, `paid`, `cancelled`, `expired`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Confirmed => "confirmed",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// One event in an order's life, as its shard recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderEvent {
    /// The sequence number of the command during which it happened (an expiry happens
    /// during the first command at or after its deadline).
    pub sequence: u64,
    /// What happened.
    pub kind: OrderEventKind,
    /// The order.
    pub order: OrderId,
    /// Its buyer.
    pub user: UserId,
    /// Its SKU.
    pub sku: SkuId,
    /// Its units.
    pub quantity: u32,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Units held, waiting for payment; `pay_by_ns` is the deadline on the engine clock
    /// (none: the SKU has no hold, the order never expires).
    Held {
        /// The payment deadline, ns on the engine clock.
        pay_by_ns: Option<u64>,
    },
    /// Paid: the units are sold.
    Paid,
    /// Cancelled unpaid.
    Cancelled,
    /// Expired unpaid.
    Expired,
}

impl OrderStatus {
    /// A stable lower-case name (`held`, `paid`, `cancelled`, `expired`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Held { .. } => "held",
            Self::Paid => "paid",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// An order and where it stands (see [`ShardCore::order`] and
/// [`Control::order`](crate::Control::order)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderView {
    /// The order.
    pub id: OrderId,
    /// Its buyer.
    pub user: UserId,
    /// Its SKU.
    pub sku: SkuId,
    /// Its units.
    pub quantity: u32,
    /// Where it stands.
    pub status: OrderStatus,
}

/// A SKU's sale as its shard has it now: levels, the window (as moved by operators), and
/// whether it was closed early (see [`ShardCore::live_sale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveSale {
    /// Stock, available, held, sold and the rest.
    pub levels: SkuLevels,
    /// The sale window now.
    pub window: crate::catalog::SaleWindow,
    /// Closed before its window's end (by an operator).
    pub closed_early: bool,
}

impl LiveSale {
    /// `upcoming`, `open`, `sold_out` or `closed`, at `now_ns` on the engine clock.
    pub fn state(&self, now_ns: u64) -> &'static str {
        if self.closed_early || now_ns >= self.window.closes_at_ns {
            "closed"
        } else if now_ns < self.window.opens_at_ns {
            "upcoming"
        } else if self.levels.available == 0 {
            "sold_out"
        } else {
            "open"
        }
    }
}

impl ShardCore {
    /// A SKU's sale now, if this shard owns it.
    pub fn live_sale(&self, sku: SkuId) -> Option<LiveSale> {
        let &local = self.local_index.get(&sku)?;
        let state = &self.skus[local as usize];
        Some(LiveSale {
            levels: self.levels_of(sku)?,
            window: crate::catalog::SaleWindow {
                opens_at_ns: state.opens_at_ns,
                closes_at_ns: state.closes_at_ns,
            },
            closed_early: state.closed,
        })
    }

    /// Starts (or stops) recording [`OrderEvent`]s for [`take_events`](Self::take_events).
    /// Off by default.
    pub fn record_events(&mut self, on: bool) {
        self.events = on.then(Vec::new);
    }

    /// The events recorded since the last call, oldest first.
    pub fn take_events(&mut self) -> impl Iterator<Item = OrderEvent> + '_ {
        self.events.iter_mut().flat_map(|events| events.drain(..))
    }

    /// Whether events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|events| !events.is_empty())
    }

    /// Records an event for order `number` if recording.
    #[inline]
    pub(super) fn event(&mut self, kind: OrderEventKind, number: usize, sequence: u64) {
        if let Some(events) = &mut self.events {
            let record = self.orders[number];
            events.push(OrderEvent {
                sequence,
                kind,
                order: OrderId::new(self.shard, number as u64),
                user: UserId(record.user),
                sku: self.skus[record.sku_local as usize].id,
                quantity: record.units,
            });
        }
    }

    /// An order this shard confirmed, and where it stands (`None`: not one of its orders).
    pub fn order(&self, id: OrderId) -> Option<OrderView> {
        let number = id.number() as usize;
        if id.shard() != self.shard {
            return None;
        }
        let record = self.orders.get(number)?;
        let status = match record.state {
            OrderState::Held => OrderStatus::Held {
                pay_by_ns: (record.pay_by_ns != u64::MAX).then_some(record.pay_by_ns),
            },
            OrderState::Sold => OrderStatus::Paid,
            OrderState::Cancelled => OrderStatus::Cancelled,
            OrderState::Expired => OrderStatus::Expired,
        };
        Some(OrderView {
            id,
            user: UserId(record.user),
            sku: self.skus[record.sku_local as usize].id,
            quantity: record.units,
            status,
        })
    }
}
