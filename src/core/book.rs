//! The order book of one shard: what every buyer holds, and every confirmed order's
//! idempotency key, in two open-addressing tables.
//!
//! - **Keys**: one slot per confirmed order, `[user, client_key, order id + 1, limit key]`,
//!   homed at a hash of `(user, client_key)`. A key names one purchase attempt of one
//!   product, so it is scoped to the SKU's limit key (its product's group, or the SKU
//!   itself): a retry finds its order whichever variant of the product it names, and the
//!   answer does not depend on how products are placed on shards.
//! - **Holdings**: one slot per `(buyer, SKU)` with units held, `[user, limit key,
//!   sku_local << 32 | units, 1]`, homed at a hash of `(user, limit key)`, where the limit
//!   key is the SKU's limit group (or the SKU itself outside any group). A buyer's holdings
//!   in one group share a home, so one short scan sums the group's units and finds the
//!   SKU's; a buyer with orders in many groups has them spread over the table, so no scan
//!   grows with a buyer's total orders.
//!
//! Both use linear probing, never remove entries (an order's key stays known for
//! idempotency; holdings only change in place), so there are no tombstones, and double
//! when half full (about 2.5 slots per unsuccessful scan at the maximum load). A free slot
//! is all zero bits. At scale every look-up is a cache and TLB miss (200-400 ns here, in a
//! VM), so the shard worker calls [`OrderBook::prefetch`] for a whole batch before deciding
//! it, and the tables live on huge pages (see [`super::table`]).

use super::table::{Slot, SlotTable};
use crate::types::OrderId;

/// The bit that marks a limit key as an ungrouped SKU's local index rather than a group's.
pub(super) const SKU_LIMIT_KEY: u64 = 1 << 63;

/// What a buyer already has, as far as one intent is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// The same `(user, client_key)` already has this order for this product.
    Duplicate(OrderId),
    /// Units the buyer holds of the intent's SKU and of its limit group (equal for an
    /// ungrouped SKU), and where a confirmation goes.
    Holds {
        of_sku: u32,
        of_group: u32,
        places: Places,
    },
}

/// An order to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Confirmed {
    pub(super) id: OrderId,
    pub(super) user: u64,
    pub(super) client_key: u64,
    pub(super) sku_local: u32,
    pub(super) limit_key: u64,
    pub(super) units: u32,
}

/// Where a confirmation of a looked-up intent is written: valid until the book changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Places {
    /// The free slot for its key.
    key: usize,
    /// The buyer's slot for the SKU if they hold some already, else the free slot for it.
    holding: usize,
}

/// One table: `capacity` slots (a power of two), at most half of them used.
#[derive(Debug, Clone)]
struct Table {
    slots: SlotTable,
    /// `capacity - 1`.
    mask: usize,
    len: usize,
}

/// Which word of a slot is never 0 in a used slot.
const USED_WORD_KEYS: usize = 2;
const USED_WORD_HOLDINGS: usize = 3;

impl Table {
    fn with_room_for(entries: usize) -> Self {
        let capacity = (entries.max(8) * 2).next_power_of_two();
        Self {
            slots: SlotTable::zeroed(capacity),
            mask: capacity - 1,
            len: 0,
        }
    }

    #[inline]
    fn next(&self, slot: usize) -> usize {
        (slot + 1) & self.mask
    }

    /// Writes `value` into the free `slot` and grows past half full. `home` re-homes the
    /// entries when the table grows; `used` is the word that is non-zero in a used slot.
    fn insert_at(&mut self, slot: usize, value: Slot, used: usize, home: fn(&Slot) -> u64) {
        debug_assert_eq!(self.slots[slot][used], 0);
        debug_assert_ne!(value[used], 0);
        self.slots[slot] = value;
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            let capacity = self.slots.len() * 2;
            let old = std::mem::replace(&mut self.slots, SlotTable::zeroed(capacity));
            self.mask = capacity - 1;
            // Old run order is kept per home, so scans see entries in the same order.
            for entry in old.iter().filter(|entry| entry[used] != 0) {
                let mut slot = home(entry) as usize & self.mask;
                while self.slots[slot][used] != 0 {
                    slot = self.next(slot);
                }
                self.slots[slot] = *entry;
            }
        }
    }
}

use crate::hash::mix64 as mix;

fn key_home(entry: &Slot) -> u64 {
    mix(entry[0], entry[1])
}

fn holding_home(entry: &Slot) -> u64 {
    mix(entry[0], entry[1])
}

#[derive(Debug, Clone)]
pub(super) struct OrderBook {
    keys: Table,
    holdings: Table,
}

impl OrderBook {
    /// A book with room for `orders` orders (and as many holdings) before it first grows.
    pub(super) fn with_room_for(orders: usize) -> Self {
        Self {
            keys: Table::with_room_for(orders),
            holdings: Table::with_room_for(orders),
        }
    }

    /// Starts loading the slots where a look-up for this intent begins.
    #[inline]
    pub(super) fn prefetch(&self, user: u64, client_key: u64, limit_key: u64) {
        let key = mix(user, client_key) as usize & self.keys.mask;
        crate::prefetch::prefetch_read(&self.keys.slots[key]);
        let holding = mix(user, limit_key) as usize & self.holdings.mask;
        crate::prefetch::prefetch_read(&self.holdings.slots[holding]);
    }

    /// Looks up an intent: its key, then the buyer's holdings in the SKU's limit group.
    #[inline(always)]
    pub(super) fn standing(
        &self,
        user: u64,
        client_key: u64,
        sku_local: u32,
        limit_key: u64,
    ) -> Standing {
        let key = match self.find_key(user, client_key, limit_key) {
            Ok(order) => return Standing::Duplicate(order),
            Err(free) => free,
        };
        let (of_sku, of_group, holding) = self.scan_holdings(user, sku_local, limit_key);
        Standing::Holds {
            of_sku,
            of_group,
            places: Places { key, holding },
        }
    }

    /// The order of `(user, client_key)` for the product of `limit_key`, or the free slot
    /// that ends its run.
    #[inline(always)]
    fn find_key(&self, user: u64, client_key: u64, limit_key: u64) -> Result<OrderId, usize> {
        let keys = &self.keys;
        let mut slot = mix(user, client_key) as usize & keys.mask;
        // Bounded: at most half the slots are used, so a free slot ends every run.
        loop {
            let entry = &keys.slots[slot];
            if entry[USED_WORD_KEYS] == 0 {
                return Err(slot);
            }
            if entry[0] == user && entry[1] == client_key && entry[3] == limit_key {
                return Ok(OrderId(entry[USED_WORD_KEYS] - 1));
            }
            slot = keys.next(slot);
        }
    }

    /// Units the buyer holds of the SKU and of its limit group, and the SKU's slot (its
    /// holding, or the free slot that ends the run).
    #[inline(always)]
    fn scan_holdings(&self, user: u64, sku_local: u32, limit_key: u64) -> (u32, u32, usize) {
        let holdings = &self.holdings;
        let mut slot = mix(user, limit_key) as usize & holdings.mask;
        let mut of_sku = 0;
        let mut of_group = 0;
        let mut sku_slot = None;
        loop {
            let entry = &holdings.slots[slot];
            if entry[USED_WORD_HOLDINGS] == 0 {
                return (of_sku, of_group, sku_slot.unwrap_or(slot));
            }
            if entry[0] == user && entry[1] == limit_key {
                let units = entry[2] as u32;
                of_group += units;
                if (entry[2] >> 32) as u32 == sku_local {
                    of_sku = units;
                    sku_slot = Some(slot);
                }
            }
            slot = holdings.next(slot);
        }
    }

    /// Records a confirmed order at the places [`standing`](Self::standing) returned for
    /// the same intent, with no change to the book in between.
    #[inline]
    pub(super) fn confirm(&mut self, places: Places, order: &Confirmed) {
        debug_assert_ne!(order.id.0, u64::MAX);
        let holding = &mut self.holdings.slots[places.holding];
        if holding[USED_WORD_HOLDINGS] != 0 {
            debug_assert!(holding[0] == order.user && (holding[2] >> 32) as u32 == order.sku_local);
            holding[2] += u64::from(order.units);
        } else {
            let value = [
                order.user,
                order.limit_key,
                (u64::from(order.sku_local) << 32) | u64::from(order.units),
                1,
            ];
            self.holdings
                .insert_at(places.holding, value, USED_WORD_HOLDINGS, holding_home);
        }
        let value = [
            order.user,
            order.client_key,
            order.id.0 + 1,
            order.limit_key,
        ];
        self.keys
            .insert_at(places.key, value, USED_WORD_KEYS, key_home);
    }

    /// Takes `units` back from a buyer's holding of a SKU (a cancelled or expired order).
    /// The holding's slot stays (with fewer units): entries are never removed.
    pub(super) fn release(&mut self, user: u64, sku_local: u32, limit_key: u64, units: u32) {
        let (of_sku, _, slot) = self.scan_holdings(user, sku_local, limit_key);
        debug_assert!(of_sku >= units, "releasing more than the buyer holds");
        let holding = &mut self.holdings.slots[slot];
        if holding[USED_WORD_HOLDINGS] != 0 {
            holding[2] -= u64::from(units.min(of_sku));
        }
    }

    /// The order of `(user, client_key)` for the product of `limit_key`, if any.
    pub(super) fn order_for(&self, user: u64, client_key: u64, limit_key: u64) -> Option<OrderId> {
        self.find_key(user, client_key, limit_key).ok()
    }

    /// Units a buyer holds of a SKU (local index) whose limit key is `limit_key`.
    pub(super) fn units_of(&self, user: u64, sku_local: u32, limit_key: u64) -> u32 {
        self.scan_holdings(user, sku_local, limit_key).0
    }

    /// How many bytes [`write_to`](Self::write_to) writes (eight per word).
    pub(super) fn written_len(&self) -> usize {
        [&self.keys, &self.holdings]
            .iter()
            .map(|table| (2 + table.len * (1 + size_of::<Slot>() / 8)) * 8)
            .sum()
    }

    /// Both tables, for a snapshot: capacity, entry count, then each used slot's index and
    /// words (a table is mostly free slots; their positions are kept, so probing finds
    /// every entry where it was).
    pub(super) fn write_to(&self, out: &mut dyn FnMut(u64)) {
        for (table, used) in [
            (&self.keys, USED_WORD_KEYS),
            (&self.holdings, USED_WORD_HOLDINGS),
        ] {
            out(table.slots.len() as u64);
            out(table.len as u64);
            for (index, slot) in table.slots.iter().enumerate() {
                if slot[used] != 0 {
                    out(index as u64);
                    slot.iter().for_each(|&word| out(word));
                }
            }
        }
    }

    /// A book from [`write_to`](Self::write_to)'s words; `None` if they do not make one.
    pub(super) fn read_from(input: &mut dyn FnMut() -> Option<u64>) -> Option<Self> {
        let mut read_table = |used: usize| -> Option<Table> {
            let capacity = usize::try_from(input()?).ok()?;
            let len = usize::try_from(input()?).ok()?;
            if !capacity.is_power_of_two() || capacity < 16 || len * 2 > capacity {
                return None;
            }
            let mut slots = SlotTable::zeroed(capacity);
            for _ in 0..len {
                let index = usize::try_from(input()?).ok().filter(|&i| i < capacity)?;
                let slot = &mut slots[index];
                if slot[used] != 0 {
                    return None;
                }
                for word in slot.iter_mut() {
                    *word = input()?;
                }
                if slot[used] == 0 {
                    return None;
                }
            }
            Some(Table {
                slots,
                mask: capacity - 1,
                len,
            })
        };
        let keys = read_table(USED_WORD_KEYS)?;
        let holdings = read_table(USED_WORD_HOLDINGS)?;
        Some(Self { keys, holdings })
    }

    /// `(user, client_key)` of every order recorded.
    pub(super) fn keys(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.keys
            .slots
            .iter()
            .filter(|slot| slot[USED_WORD_KEYS] != 0)
            .map(|slot| (slot[0], slot[1]))
    }

    /// Orders recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.keys.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirm(
        book: &mut OrderBook,
        user: u64,
        key: u64,
        order: u64,
        sku: u32,
        group: u64,
        units: u32,
    ) {
        match book.standing(user, key, sku, group) {
            Standing::Holds { places, .. } => book.confirm(
                places,
                &Confirmed {
                    id: OrderId(order),
                    user,
                    client_key: key,
                    sku_local: sku,
                    limit_key: group,
                    units,
                },
            ),
            Standing::Duplicate(_) => panic!("unexpected duplicate"),
        }
    }

    /// Loop sizes: Miri runs these about a thousand times slower.
    const USERS: u64 = if cfg!(miri) { 40 } else { 1000 };
    const GROUPS: u64 = if cfg!(miri) { 100 } else { 10_000 };

    #[test]
    fn counts_units_and_finds_keys_across_growth() {
        let mut book = OrderBook::with_room_for(1);
        for user in 0..USERS {
            // SKUs 0..=2 are in group 7; SKU 3 is ungrouped.
            confirm(&mut book, user, 1, user * 3, (user % 3) as u32, 7, 1);
            confirm(&mut book, user, 2, user * 3 + 1, 0, 7, 2);
            confirm(&mut book, user, 3, user * 3 + 2, 3, SKU_LIMIT_KEY | 3, 1);
        }
        assert_eq!(book.len(), 3 * USERS as usize);
        for user in 0..USERS {
            assert_eq!(book.order_for(user, 1, 7), Some(OrderId(user * 3)));
            assert_eq!(book.order_for(user, 2, 7), Some(OrderId(user * 3 + 1)));
            assert_eq!(book.order_for(user, 9, 7), None);
            // The same key for another product is another attempt.
            assert_eq!(book.order_for(user, 1, SKU_LIMIT_KEY | 3), None);
            assert_eq!(
                book.order_for(user, 3, SKU_LIMIT_KEY | 3),
                Some(OrderId(user * 3 + 2))
            );
            let expected_sku0 = 2 + u32::from(user % 3 == 0);
            assert_eq!(book.units_of(user, 0, 7), expected_sku0);
            assert_eq!(book.units_of(user, 3, SKU_LIMIT_KEY | 3), 1);
            match book.standing(user, 9, 1, 7) {
                Standing::Holds {
                    of_sku, of_group, ..
                } => {
                    assert_eq!(of_sku, u32::from(user % 3 == 1));
                    assert_eq!(of_group, 3);
                }
                Standing::Duplicate(_) => panic!(),
            }
        }
        assert_eq!(book.units_of(5000, 0, 7), 0);
    }

    #[test]
    fn units_are_counted_whatever_client_keys_the_buyer_used() {
        let mut book = OrderBook::with_room_for(4);
        confirm(&mut book, 9, u64::MAX, 0, 2, 5, 2);
        assert_eq!(book.units_of(9, 2, 5), 2);
        assert_eq!(book.order_for(9, u64::MAX, 5), Some(OrderId(0)));
    }

    #[test]
    fn a_buyer_with_many_groups_keeps_short_scans() {
        // One buyer, 10,000 groups: holdings spread over the table, so each scan is short
        // (a multimap keyed by buyer alone would scan all 10,000 every time).
        let mut book = OrderBook::with_room_for(16);
        for group in 0..GROUPS {
            confirm(&mut book, 1, group, group, group as u32, group, 1);
        }
        for group in 0..GROUPS {
            match book.standing(1, 1_000_000, group as u32, group) {
                Standing::Holds {
                    of_sku, of_group, ..
                } => assert_eq!((of_sku, of_group), (1, 1)),
                Standing::Duplicate(_) => panic!(),
            }
        }
    }
}
