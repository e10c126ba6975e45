//! The order book of one shard: every confirmed order's `(user, client_key)`, SKU and
//! units, in one open-addressing table keyed by user.
//!
//! One table instead of two hash maps (idempotency keys, and units per buyer and SKU)
//! because at scale both are cache- and TLB-missing tables: a confirmation paid two misses
//! in each. Here a buyer's orders sit in one linear-probing run that starts at the buyer's
//! hash, so one scan (usually one cache line) answers "is this key a retry?" and "how many
//! units does this buyer hold of this SKU and of its group?", and the confirmation writes
//! into the empty slot the scan stopped at.
//!
//! Entries are never removed (an order's key must stay known for idempotency), so there are
//! no tombstones. The table doubles when it passes half full, which keeps runs short
//! (about 2.5 slots on average for a miss at the maximum load). A free slot is all zero
//! bits; see [`super::table`] for how the memory is obtained (pre-faulted, and on huge
//! pages when large).
//!
//! At scale every look-up is a cache and TLB miss (here, in a VM, 200-400 ns), so the shard
//! worker calls [`OrderBook::prefetch`] for a whole batch before deciding it: the misses
//! overlap instead of queueing one behind the other.

use crate::types::OrderId;

/// One confirmed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Holding {
    pub(super) user: u64,
    pub(super) client_key: u64,
    pub(super) order: OrderId,
    /// The SKU's local index on the shard.
    pub(super) sku_local: u32,
    pub(super) units: u32,
}

// A slot: `[user, client_key, order id + 1, sku_local << 32 | units]`; 32 bytes, two per
// cache line. Word 2 is 0 in a free slot (an order id of `u64::MAX` would need 2^48 orders
// on shard 65,535).
use super::table::{Slot, SlotTable};

const ORDER_WORD: usize = 2;

fn pack(holding: &Holding) -> Slot {
    [
        holding.user,
        holding.client_key,
        holding.order.0 + 1,
        (u64::from(holding.sku_local) << 32) | u64::from(holding.units),
    ]
}

/// `capacity` free slots.
fn free_slots(capacity: usize) -> SlotTable {
    SlotTable::zeroed(capacity)
}

#[inline]
fn is_free(slot: &Slot) -> bool {
    slot[ORDER_WORD] == 0
}

#[inline]
fn sku_local_of(slot: &Slot) -> u32 {
    (slot[3] >> 32) as u32
}

#[inline]
fn units_of(slot: &Slot) -> u32 {
    slot[3] as u32
}

/// What a buyer already has, as far as one intent is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// The same `(user, client_key)` already has this order.
    Duplicate(OrderId),
    /// Units the buyer holds of the intent's SKU and of the SKU's group; `slot` is the free
    /// slot where a confirmation of this intent goes.
    Holds {
        of_sku: u32,
        of_group: u32,
        slot: usize,
    },
}

#[derive(Debug, Clone)]
pub(super) struct OrderBook {
    /// `capacity` slots, a power of two.
    slots: SlotTable,
    /// `capacity - 1`.
    mask: usize,
    /// Occupied slots; at most `capacity / 2`.
    len: usize,
}

impl OrderBook {
    /// A book with room for `orders` orders before it first grows.
    pub(super) fn with_room_for(orders: usize) -> Self {
        let capacity = (orders.max(8) * 2).next_power_of_two();
        Self {
            slots: free_slots(capacity),
            mask: capacity - 1,
            len: 0,
        }
    }

    /// Asks the CPU to start loading the slot where `user`'s run begins, so that a later
    /// [`standing`](Self::standing) finds it in cache.
    #[inline]
    pub(super) fn prefetch(&self, user: u64) {
        crate::prefetch::prefetch_read(&self.slots[self.home(user)]);
    }

    /// splitmix64's finaliser: sequential user ids spread over the table.
    #[inline]
    fn home(&self, user: u64) -> usize {
        let mut hash = user.wrapping_add(0x9E37_79B9_7F4A_7C15);
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (hash ^ (hash >> 31)) as usize & self.mask
    }

    /// Scans the buyer's run once. `in_group(sku_local)` says whether another SKU of the
    /// buyer's counts against the intent's group (always false for an ungrouped SKU).
    #[inline]
    pub(super) fn standing(
        &self,
        user: u64,
        client_key: u64,
        sku_local: u32,
        in_group: impl Fn(u32) -> bool,
    ) -> Standing {
        let mut slot = self.home(user);
        let mut of_sku = 0u32;
        let mut of_group = 0u32;
        // Bounded: at most half the slots are occupied, so a free slot ends every run.
        loop {
            debug_assert!(slot < self.slots.len());
            let held = &self.slots[slot];
            if is_free(held) {
                return Standing::Holds {
                    of_sku,
                    of_group,
                    slot,
                };
            }
            if held[0] == user {
                if held[1] == client_key {
                    return Standing::Duplicate(OrderId(held[ORDER_WORD] - 1));
                }
                if sku_local_of(held) == sku_local {
                    of_sku += units_of(held);
                }
                if in_group(sku_local_of(held)) {
                    of_group += units_of(held);
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// Records a confirmed order in the free `slot` that [`standing`](Self::standing)
    /// returned for the same intent, with no insert in between.
    #[inline]
    pub(super) fn insert_at(&mut self, slot: usize, holding: Holding) {
        debug_assert!(is_free(&self.slots[slot]));
        debug_assert_ne!(holding.order.0, u64::MAX);
        self.slots[slot] = pack(&holding);
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            self.grow();
        }
    }

    /// Doubles the table. Each buyer's orders are re-inserted in their old run order, so
    /// scans see them in the same order as before.
    fn grow(&mut self) {
        let capacity = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, free_slots(capacity));
        self.mask = self.slots.len() - 1;
        for held in old.iter().filter(|held| !is_free(held)) {
            let mut slot = self.home(held[0]);
            while !is_free(&self.slots[slot]) {
                slot = (slot + 1) & self.mask;
            }
            self.slots[slot] = *held;
        }
    }

    /// The order of `(user, client_key)`, if any.
    pub(super) fn order_for(&self, user: u64, client_key: u64) -> Option<OrderId> {
        match self.standing(user, client_key, u32::MAX, |_| false) {
            Standing::Duplicate(order) => Some(order),
            Standing::Holds { .. } => None,
        }
    }

    /// Units a buyer holds of a SKU (local index).
    pub(super) fn units_of(&self, user: u64, sku_local: u32) -> u32 {
        let mut slot = self.home(user);
        let mut units = 0;
        while !is_free(&self.slots[slot]) {
            let held = &self.slots[slot];
            if held[0] == user && sku_local_of(held) == sku_local {
                units += units_of(held);
            }
            slot = (slot + 1) & self.mask;
        }
        units
    }

    /// Orders recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(user: u64, key: u64, order: u64, sku: u32, units: u32) -> Holding {
        Holding {
            user,
            client_key: key,
            order: OrderId(order),
            sku_local: sku,
            units,
        }
    }

    fn confirm(book: &mut OrderBook, h: Holding) {
        match book.standing(h.user, h.client_key, h.sku_local, |_| false) {
            Standing::Holds { slot, .. } => book.insert_at(slot, h),
            Standing::Duplicate(_) => panic!("unexpected duplicate"),
        }
    }

    #[test]
    fn counts_units_and_finds_keys_across_growth() {
        let mut book = OrderBook::with_room_for(1);
        for user in 0..1000u64 {
            confirm(&mut book, holding(user, 1, user * 2, (user % 3) as u32, 1));
            confirm(&mut book, holding(user, 2, user * 2 + 1, 0, 2));
        }
        assert_eq!(book.len(), 2000);
        for user in 0..1000u64 {
            assert_eq!(book.order_for(user, 1), Some(OrderId(user * 2)));
            assert_eq!(book.order_for(user, 2), Some(OrderId(user * 2 + 1)));
            assert_eq!(book.order_for(user, 3), None);
            let expected_sku0 = 2 + u32::from(user % 3 == 0);
            assert_eq!(book.units_of(user, 0), expected_sku0);
            match book.standing(user, 9, 1, |sku| sku <= 2) {
                Standing::Holds {
                    of_sku, of_group, ..
                } => {
                    assert_eq!(of_sku, u32::from(user % 3 == 1));
                    assert_eq!(of_group, 3);
                }
                Standing::Duplicate(_) => panic!(),
            }
        }
        assert_eq!(book.units_of(5000, 0), 0);
    }
}
