//! The order book of one shard: what every buyer holds, and every confirmed order's
//! idempotency key, in one open-addressing table where a buyer's first order of a SKU is
//! one slot.
//!
//! - **Holdings** (one slot per `(buyer, SKU)` with an order): `[user, client_key, number,
//!   sku_local << 32 | units]`, homed at a hash of `(user, limit key)`, where the limit key
//!   is the SKU's limit group (or the SKU itself outside any group). The slot carries the
//!   key and number of the buyer's first order of the SKU, and the units the buyer holds
//!   of it. A buyer's holdings in one group share a home, so one short scan finds the
//!   intent's key if it repeats one of them, sums the group's units and finds the SKU's;
//!   a buyer with orders in many groups has them spread over the table, so no scan grows
//!   with a buyer's total orders.
//! - **Further keys** (a buyer's second and later orders of the same SKU): `[user,
//!   client_key, number, KEY | limit key]`, homed at a hash of `(user, client_key)`, and
//!   looked at only when one of the buyer's holdings in the group is marked as having
//!   them. A buyer with many orders of one SKU (a high limit) therefore costs a second
//!   look-up, not a longer scan.
//!
//! A key names one purchase attempt of one product, so it is scoped to the SKU's limit
//! key: a retry finds its order whichever variant of the product it names, and the answer
//! does not depend on how products are placed on shards.
//!
//! So deciding an intent reads one run of slots (one cache miss at scale, where the book
//! used to keep keys and holdings in two tables and miss in both), and an order takes one
//! 32-byte slot: 64 bytes of room at the table's most (half) full. The `number` word is
//! the order's number on its shard plus one (never 0: a free slot is all zero bits), with
//! two flags in its top bits, which numbers (48 bits) never reach.
//!
//! The table uses linear probing, never removes entries (an order's key stays known for
//! idempotency; holdings only change in place), so there are no tombstones, and doubles
//! when half full (about 2.5 slots per unsuccessful scan at the maximum load). At scale
//! every look-up is a cache and TLB miss (200-400 ns here, in a VM), so the shard worker
//! calls [`OrderBook::prefetch`] for a whole batch before deciding it, and the table lives
//! on huge pages (see [`super::table`]).

use super::table::{Slot, SlotTable};
use crate::hash::mix64 as mix;
use crate::types::{OrderId, ShardId};

/// The bit that marks a limit key as an ungrouped SKU's local index rather than a group's.
pub(super) const SKU_LIMIT_KEY: u64 = 1 << 63;

/// In a slot's number word: the slot holds a further key, not a holding.
const KEY: u64 = 1 << 63;
/// In a holding's number word: the buyer has further keys for this SKU.
const MORE_KEYS: u64 = 1 << 62;
const FLAGS: u64 = KEY | MORE_KEYS;
/// The most a number word holds besides its flags: an order number (48 bits) plus one.
const NUMBER_MAX: u64 = 1 << 48;

/// The words of a slot.
const USER: usize = 0;
const CLIENT_KEY: usize = 1;
/// Never 0 in a used slot.
const NUMBER: usize = 2;
/// A holding's `sku_local << 32 | units`, a further key's limit key.
const HELD: usize = 3;

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
    /// The buyer's holding of the SKU if they hold some already, else the free slot that
    /// ends the group's run, where the holding goes.
    holding: usize,
    /// With a holding: the free slot that ends the run of the order's key, where the key
    /// goes.
    key: usize,
}

/// What one scan of a buyer's holdings in a limit group found.
struct Holdings {
    of_sku: u32,
    of_group: u32,
    /// The SKU's holding, if the buyer has one.
    sku_slot: Option<usize>,
    /// The free slot that ends the run.
    end: usize,
    /// Some holding in the group has further keys.
    more_keys: bool,
}

/// Sums that compare a restored book's entries with the orders as multisets: each
/// order's number, buyer and limit key, and each buyer's units of each SKU (a held or paid
/// order's on one side, a holding's on the other). Both sums wrap; two sides that differ
/// give the same sums by chance once in about 2^64.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Marks {
    orders: u64,
    units: u64,
}

impl Marks {
    /// Adds an order: its number, buyer and the limit key of its SKU.
    pub(super) fn add_order(&mut self, number: u64, user: u64, limit_key: u64) {
        self.orders = (self.orders).wrapping_add(mix(mix(number, user), limit_key));
    }

    /// Adds `units` of a buyer's SKU (local index). The mark of a `(buyer, SKU)` is odd, so
    /// that a difference in one buyer's units never sums to zero.
    pub(super) fn add_units(&mut self, user: u64, sku_local: u32, units: u32) {
        let mark = mix(user, u64::from(sku_local)) | 1;
        self.units = (self.units).wrapping_add(mark.wrapping_mul(u64::from(units)));
    }
}

#[derive(Debug, Clone)]
pub(super) struct OrderBook {
    /// `capacity` slots (a power of two), at most half of them used.
    slots: SlotTable,
    /// `capacity - 1`.
    mask: usize,
    len: usize,
    /// Further keys among the `len` entries.
    further_keys: usize,
    /// The shard's bits of its order ids (an id is these over the order's number).
    shard_bits: u64,
    /// Each SKU's limit key, by local index.
    limit_keys: Box<[u64]>,
}

impl OrderBook {
    /// A book with room for `orders` orders before it first grows, for the shard `shard`
    /// whose SKUs (by local index) count their units under `limit_keys`.
    pub(super) fn with_room_for(orders: usize, shard: ShardId, limit_keys: Box<[u64]>) -> Self {
        let capacity = Self::slots_for(orders);
        Self {
            slots: SlotTable::zeroed(capacity),
            mask: capacity - 1,
            len: 0,
            further_keys: 0,
            shard_bits: OrderId::new(shard, 0).0,
            limit_keys,
        }
    }

    /// Starts loading the slots where a look-up for an intent of this buyer for a SKU of
    /// `limit_key` begins, and, for a buyer who may hold orders already (`may_hold`) in a
    /// sale where further keys are common (a sixteenth of the orders or more: buyers buy
    /// the same SKU again and again), where its key would be if it is a further key. In a
    /// sale where they are rare that second load would mostly be wasted, and it would cost
    /// every repeat buyer a second miss's worth of the memory system's parallelism.
    #[inline]
    pub(super) fn prefetch(&self, user: u64, client_key: u64, limit_key: u64, may_hold: bool) {
        let home = mix(user, limit_key) as usize & self.mask;
        crate::prefetch::prefetch_read(&self.slots[home]);
        if may_hold && self.further_keys_common() {
            let key = mix(user, client_key) as usize & self.mask;
            crate::prefetch::prefetch_read(&self.slots[key]);
        }
    }

    /// Whether further keys are common enough (a sixteenth of the orders or more) for
    /// [`prefetch`](Self::prefetch) to load where a repeat buyer's key would be.
    #[inline]
    pub(super) fn further_keys_common(&self) -> bool {
        self.further_keys > 0 && self.further_keys * 16 >= self.len
    }

    /// Looks up an intent: the buyer's holdings in the SKU's limit group (which carry the
    /// keys of their first orders), then, if the buyer has more orders there than
    /// holdings, the intent's key among the further keys.
    #[inline(always)]
    pub(super) fn standing(
        &self,
        user: u64,
        client_key: u64,
        sku_local: u32,
        limit_key: u64,
    ) -> Standing {
        let held = match self.holdings(user, Some(client_key), sku_local, limit_key) {
            Ok(held) => held,
            Err(order) => return Standing::Duplicate(order),
        };
        let mut places = Places {
            holding: held.end,
            key: held.end,
        };
        if let Some(slot) = held.sku_slot {
            places.holding = slot;
            // A second order of the SKU keeps its key apart: find it, or where it goes.
            match self.find_key(user, client_key, limit_key) {
                Ok(order) => return Standing::Duplicate(order),
                Err(free) => places.key = free,
            }
        } else if held.more_keys
            && let Ok(order) = self.find_key(user, client_key, limit_key)
        {
            return Standing::Duplicate(order);
        }
        Standing::Holds {
            of_sku: held.of_sku,
            of_group: held.of_group,
            places,
        }
    }

    /// Scans the buyer's holdings in the group of `limit_key`: the order whose first key
    /// is `client_key` (if given) as `Err`, else what they hold.
    #[inline(always)]
    fn holdings(
        &self,
        user: u64,
        client_key: Option<u64>,
        sku_local: u32,
        limit_key: u64,
    ) -> Result<Holdings, OrderId> {
        let mut slot = mix(user, limit_key) as usize & self.mask;
        let mut held = Holdings {
            of_sku: 0,
            of_group: 0,
            sku_slot: None,
            end: 0,
            more_keys: false,
        };
        // Bounded: at most half the slots are used, so a free slot ends every run.
        loop {
            let entry = &self.slots[slot];
            if entry[NUMBER] == 0 {
                held.end = slot;
                return Ok(held);
            }
            if entry[USER] == user && entry[NUMBER] & KEY == 0 {
                let sku = (entry[HELD] >> 32) as u32;
                if self.limit_keys.get(sku as usize) == Some(&limit_key) {
                    if client_key == Some(entry[CLIENT_KEY]) {
                        return Err(self.id(entry[NUMBER]));
                    }
                    let units = entry[HELD] as u32;
                    held.of_group += units;
                    held.more_keys |= entry[NUMBER] & MORE_KEYS != 0;
                    if sku == sku_local {
                        held.of_sku = units;
                        held.sku_slot = Some(slot);
                    }
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// The order of a further key `(user, client_key)` for the product of `limit_key`, or
    /// the free slot that ends its run.
    fn find_key(&self, user: u64, client_key: u64, limit_key: u64) -> Result<OrderId, usize> {
        let mut slot = mix(user, client_key) as usize & self.mask;
        loop {
            let entry = &self.slots[slot];
            if entry[NUMBER] == 0 {
                return Err(slot);
            }
            if entry[NUMBER] & KEY != 0
                && entry[USER] == user
                && entry[CLIENT_KEY] == client_key
                && entry[HELD] == limit_key
            {
                return Ok(self.id(entry[NUMBER]));
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// The order id in a used slot's number word.
    #[inline]
    fn id(&self, number_word: u64) -> OrderId {
        OrderId(self.shard_bits | ((number_word & !FLAGS) - 1))
    }

    /// Records a confirmed order at the places [`standing`](Self::standing) returned for
    /// the same intent, with no change to the book in between.
    #[inline]
    pub(super) fn confirm(&mut self, places: Places, order: &Confirmed) {
        let number = (order.id.0 & (NUMBER_MAX - 1)) + 1;
        let holding = &mut self.slots[places.holding];
        if holding[NUMBER] != 0 {
            debug_assert!(
                holding[USER] == order.user
                    && holding[NUMBER] & KEY == 0
                    && (holding[HELD] >> 32) as u32 == order.sku_local
            );
            holding[HELD] += u64::from(order.units);
            holding[NUMBER] |= MORE_KEYS;
            let key = [order.user, order.client_key, number | KEY, order.limit_key];
            self.insert_at(places.key, key);
            self.further_keys += 1;
        } else {
            let holding = [
                order.user,
                order.client_key,
                number,
                (u64::from(order.sku_local) << 32) | u64::from(order.units),
            ];
            self.insert_at(places.holding, holding);
        }
    }

    /// Writes `value` into the free `slot` and grows past half full.
    fn insert_at(&mut self, slot: usize, value: Slot) {
        debug_assert_eq!(self.slots[slot][NUMBER], 0);
        debug_assert_ne!(value[NUMBER], 0);
        self.slots[slot] = value;
        self.len += 1;
        if self.len * 2 > self.slots.len() {
            let capacity = self.slots.len() * 2;
            let old = std::mem::replace(&mut self.slots, SlotTable::zeroed(capacity));
            self.mask = capacity - 1;
            for entry in old.iter().filter(|entry| entry[NUMBER] != 0) {
                let mut slot = home(entry, &self.limit_keys) as usize & self.mask;
                while self.slots[slot][NUMBER] != 0 {
                    slot = (slot + 1) & self.mask;
                }
                self.slots[slot] = *entry;
            }
        }
    }

    /// Takes `units` back from a buyer's holding of a SKU (a cancelled or expired order).
    /// The holding's slot stays (with fewer units): entries are never removed.
    pub(super) fn release(&mut self, user: u64, sku_local: u32, limit_key: u64, units: u32) {
        let Ok(held) = self.holdings(user, None, sku_local, limit_key) else {
            unreachable!("a scan without a key finds no duplicate");
        };
        debug_assert!(held.of_sku >= units, "releasing more than the buyer holds");
        if let Some(slot) = held.sku_slot {
            self.slots[slot][HELD] -= u64::from(units.min(held.of_sku));
        }
    }

    /// The order of `(user, client_key)` for the product of `limit_key`, if any.
    pub(super) fn order_for(&self, user: u64, client_key: u64, limit_key: u64) -> Option<OrderId> {
        match self.holdings(user, Some(client_key), u32::MAX, limit_key) {
            Err(order) => Some(order),
            Ok(held) if held.more_keys => self.find_key(user, client_key, limit_key).ok(),
            Ok(_) => None,
        }
    }

    /// The slots of a book made with room for `orders`: at most half of them are used.
    pub(super) fn slots_for(orders: usize) -> usize {
        (orders.max(8) * 2).next_power_of_two()
    }

    /// The bytes of the table of a book made with room for `orders`.
    pub(super) fn bytes_for(orders: usize) -> u64 {
        Self::slots_for(orders) as u64 * size_of::<Slot>() as u64
    }

    /// Entries (orders) the book holds before it next doubles: half its slots.
    pub(super) fn room(&self) -> usize {
        self.slots.len() / 2
    }

    /// Units a buyer holds of a SKU (local index) whose limit key is `limit_key`.
    pub(super) fn units_of(&self, user: u64, sku_local: u32, limit_key: u64) -> u32 {
        self.holdings(user, None, sku_local, limit_key)
            .map_or(0, |held| held.of_sku)
    }

    /// How many bytes [`write_to`](Self::write_to) writes (eight per word).
    pub(super) fn written_len(&self) -> usize {
        (2 + self.len * (1 + size_of::<Slot>() / 8)) * 8
    }

    /// The table, for a snapshot: capacity, entry count, then each used slot's index and
    /// words (the table is mostly free slots; their positions are kept, so probing finds
    /// every entry where it was).
    pub(super) fn write_to(&self, out: &mut dyn FnMut(u64)) {
        out(self.slots.len() as u64);
        out(self.len as u64);
        for (index, slot) in self.slots.iter().enumerate() {
            if slot[NUMBER] != 0 {
                out(index as u64);
                slot.iter().for_each(|&word| out(word));
            }
        }
    }

    /// A book for the same shard and SKUs as this one, from
    /// [`write_to`](Self::write_to)'s words; `None` if they do not make one. `room` is the
    /// room for orders the restoring shard makes, `words_left` how many words the input
    /// has left.
    ///
    /// The table keeps the snapshot's size, and its entries their places, where that size
    /// could have come of this shard's room: at least the room, and at most the room or
    /// twice what the entries need (a table grows only when half full). Otherwise the
    /// snapshot was taken with another room (or is damaged) and the entries move into a
    /// table of this shard's room (or of what they need, if more): a shard restarted with
    /// more room has it, and a damaged size never makes one allocate more than that.
    pub(super) fn read_from(
        &self,
        room: usize,
        words_left: usize,
        input: &mut dyn FnMut() -> Option<u64>,
    ) -> Option<Self> {
        let capacity = usize::try_from(input()?).ok()?;
        let len = usize::try_from(input()?).ok()?;
        // Five words an entry: a count past what the input holds is refused before any
        // memory is made for it.
        let words_per_entry = 1 + size_of::<Slot>() / 8;
        if !capacity.is_power_of_two()
            || capacity < 16
            || len > capacity / 2
            || len > words_left.saturating_sub(2) / words_per_entry
        {
            return None;
        }
        let made = Self::slots_for(room.max(len));
        let keep = (made..=made.max(2 * Self::slots_for(len))).contains(&capacity);
        let size = if keep { capacity } else { made };
        let mut slots = SlotTable::zeroed(size);
        let mask = size - 1;
        let mut further_keys = 0;
        for _ in 0..len {
            let index = usize::try_from(input()?).ok().filter(|&i| i < capacity)?;
            let mut entry: Slot = [0; 4];
            for word in entry.iter_mut() {
                *word = input()?;
            }
            let number = entry[NUMBER] & !FLAGS;
            let holding = entry[NUMBER] & KEY == 0;
            let known_sku = ((entry[HELD] >> 32) as usize) < self.limit_keys.len();
            if number == 0 || number > NUMBER_MAX || (holding && !known_sku) {
                return None;
            }
            if !holding && entry[NUMBER] & MORE_KEYS != 0 {
                return None;
            }
            let slot = if keep {
                index
            } else {
                let mut slot = home(&entry, &self.limit_keys) as usize & mask;
                while slots[slot][NUMBER] != 0 {
                    slot = (slot + 1) & mask;
                }
                slot
            };
            if slots[slot][NUMBER] != 0 {
                return None;
            }
            slots[slot] = entry;
            further_keys += usize::from(!holding);
        }
        Some(Self {
            slots,
            mask,
            len,
            further_keys,
            shard_bits: self.shard_bits,
            limit_keys: self.limit_keys.clone(),
        })
    }

    /// Checks a restored book against the shard's `orders` orders, whose
    /// [`Marks`] are `expected`: one entry per order, of its buyer and product; each
    /// buyer's units of each SKU those of their held and paid orders of it; every entry
    /// where a look-up finds it, no key or holding twice, and every further key behind a
    /// marked holding; every buyer `filtered` (in the buyers' filter). The reason it fails,
    /// if it does.
    ///
    /// The entries are compared with the orders by sums of their marks rather than one by
    /// one: both sides are read in their own order (the table's and the log's), where
    /// looking up each entry's order took restoring a million orders from 30 to 210 ms.
    pub(super) fn check_against(
        &self,
        orders: u64,
        expected: Marks,
        filtered: impl Fn(u64) -> bool,
    ) -> Result<(), &'static str> {
        if self.len as u64 != orders {
            return Err("order book entries against orders");
        }
        let mut seen = vec![0u64; self.len.div_ceil(64)];
        let mut marks = Marks::default();
        for (index, entry) in self.slots.iter().enumerate() {
            if entry[NUMBER] == 0 {
                continue;
            }
            let number = (entry[NUMBER] & !FLAGS) - 1;
            let (word, bit) = ((number / 64) as usize, 1 << (number % 64));
            if number >= orders || seen[word] & bit != 0 {
                return Err("order book entries against orders");
            }
            seen[word] |= bit;
            let (user, client_key) = (entry[USER], entry[CLIENT_KEY]);
            if !filtered(user) {
                return Err("a buyer the buyers' filter does not have");
            }
            if entry[NUMBER] & KEY != 0 {
                let limit_key = entry[HELD];
                if self.find_key(user, client_key, limit_key) != Ok(self.id(entry[NUMBER])) {
                    return Err("a further key out of place or twice");
                }
                // A decision looks for further keys behind a marked holding in the group,
                // and finds none where a holding has the same key.
                match self.holdings(user, Some(client_key), u32::MAX, limit_key) {
                    Ok(held) if held.more_keys => {}
                    Ok(_) => return Err("a further key without its buyer's marked holding"),
                    Err(_) => return Err("a key twice"),
                }
                marks.add_order(number, user, limit_key);
                continue;
            }
            let sku = (entry[HELD] >> 32) as u32;
            let limit_key = self.limit_keys[sku as usize];
            if !self.holding_in_place(index, limit_key) {
                return Err("a holding out of place or twice");
            }
            marks.add_order(number, user, limit_key);
            marks.add_units(user, sku, entry[HELD] as u32);
        }
        if marks.orders != expected.orders {
            return Err("order book entries against orders");
        }
        if marks.units != expected.units {
            return Err("a holding's units against its orders");
        }
        Ok(())
    }

    /// Whether the holding at `index` (of a SKU of `limit_key`) is where a decision's scan
    /// of its buyer's holdings in the group finds it: in the run from their home, with no
    /// holding of the same key before it and none of the same SKU anywhere in the run.
    fn holding_in_place(&self, index: usize, limit_key: u64) -> bool {
        let entry = &self.slots[index];
        let (user, client_key, sku) = (entry[USER], entry[CLIENT_KEY], entry[HELD] >> 32);
        let mut slot = mix(user, limit_key) as usize & self.mask;
        let mut reached = false;
        loop {
            let other = &self.slots[slot];
            if other[NUMBER] == 0 {
                return reached;
            }
            if slot == index {
                reached = true;
            } else if other[USER] == user
                && other[NUMBER] & KEY == 0
                && self.limit_keys.get((other[HELD] >> 32) as usize) == Some(&limit_key)
                && ((!reached && other[CLIENT_KEY] == client_key) || other[HELD] >> 32 == sku)
            {
                return false;
            }
            slot = (slot + 1) & self.mask;
        }
    }

    /// `(user, client_key)` of every order recorded.
    pub(super) fn keys(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .filter(|slot| slot[NUMBER] != 0)
            .map(|slot| (slot[USER], slot[CLIENT_KEY]))
    }

    /// Orders recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// Where an entry is homed: a holding by buyer and limit key, a further key by buyer and
/// client key.
fn home(entry: &Slot, limit_keys: &[u64]) -> u64 {
    if entry[NUMBER] & KEY != 0 {
        mix(entry[USER], entry[CLIENT_KEY])
    } else {
        mix(entry[USER], limit_keys[(entry[HELD] >> 32) as usize])
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

    /// A book for shard 0 whose SKU `local` counts under `limit_keys[local]`.
    fn book(orders: usize, limit_keys: &[u64]) -> OrderBook {
        OrderBook::with_room_for(orders, ShardId(0), limit_keys.into())
    }

    /// Loop sizes: Miri runs these about a thousand times slower.
    const USERS: u64 = if cfg!(miri) { 40 } else { 1000 };
    const GROUPS: u64 = if cfg!(miri) { 100 } else { 10_000 };

    #[test]
    fn counts_units_and_finds_keys_across_growth() {
        let mut book = book(1, &[7, 7, 7, SKU_LIMIT_KEY | 3]);
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
        let mut book = book(4, &[0, 0, 5]);
        confirm(&mut book, 9, u64::MAX, 0, 2, 5, 2);
        assert_eq!(book.units_of(9, 2, 5), 2);
        assert_eq!(book.order_for(9, u64::MAX, 5), Some(OrderId(0)));
    }

    #[test]
    fn a_buyer_with_many_groups_keeps_short_scans() {
        // One buyer, 10,000 groups: holdings spread over the table, so each scan is short
        // (a multimap keyed by buyer alone would scan all 10,000 every time).
        let groups: Vec<u64> = (0..GROUPS).collect();
        let mut book = book(16, &groups);
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

    #[test]
    fn many_orders_of_one_sku_keep_their_keys_apart() {
        // One buyer, one SKU with a high limit, many orders under distinct keys: one
        // holding carries the first key and all the units, the others are further keys.
        let mut book = book(4, &[SKU_LIMIT_KEY, 9, 9]);
        let orders = if cfg!(miri) { 50 } else { 2_000 };
        for key in 0..orders {
            confirm(&mut book, 1, 100 + key, key, 0, SKU_LIMIT_KEY, 2);
        }
        // A variant of another product, and another buyer, hold apart.
        confirm(&mut book, 1, 100, orders, 1, 9, 1);
        confirm(&mut book, 2, 100, orders + 1, 0, SKU_LIMIT_KEY, 1);
        assert_eq!(book.len(), orders as usize + 2);
        for key in 0..orders {
            assert_eq!(
                book.order_for(1, 100 + key, SKU_LIMIT_KEY),
                Some(OrderId(key))
            );
            assert_eq!(
                book.standing(1, 100 + key, 0, SKU_LIMIT_KEY),
                Standing::Duplicate(OrderId(key))
            );
        }
        assert_eq!(book.units_of(1, 0, SKU_LIMIT_KEY), 2 * orders as u32);
        assert_eq!(book.order_for(1, 100, 9), Some(OrderId(orders)));
        // The other variant of group 9 finds the key and the group's units.
        assert_eq!(
            book.standing(1, 100, 2, 9),
            Standing::Duplicate(OrderId(orders))
        );
        match book.standing(1, 7, 2, 9) {
            Standing::Holds {
                of_sku, of_group, ..
            } => assert_eq!((of_sku, of_group), (0, 1)),
            Standing::Duplicate(_) => panic!(),
        }
        book.release(1, 0, SKU_LIMIT_KEY, 3);
        assert_eq!(book.units_of(1, 0, SKU_LIMIT_KEY), 2 * orders as u32 - 3);
        // A released holding keeps its keys.
        assert_eq!(book.order_for(1, 100, SKU_LIMIT_KEY), Some(OrderId(0)));
        assert_eq!(book.units_of(2, 0, SKU_LIMIT_KEY), 1);
        // Every order's key, once (buyer 1's key 100 names two orders, of two products).
        assert_eq!(book.keys().count(), orders as usize + 2);
        assert_eq!(book.keys().filter(|&key| key == (1, 100)).count(), 2);
    }

    #[test]
    fn order_ids_carry_the_shard_and_a_snapshot_reads_back() {
        let limit_keys: Box<[u64]> = [SKU_LIMIT_KEY, SKU_LIMIT_KEY | 1].into();
        let shard = ShardId(513);
        let mut book = OrderBook::with_room_for(2, shard, limit_keys);
        let number = |n| OrderId::new(shard, n).0;
        for (n, (user, key, sku)) in [(5, 1, 0), (5, 2, 0), (6, 1, 1), (5, 3, 1)]
            .into_iter()
            .enumerate()
        {
            confirm(
                &mut book,
                user,
                key,
                number(n as u64),
                sku,
                SKU_LIMIT_KEY | u64::from(sku),
                1,
            );
        }
        let mut words = Vec::new();
        book.write_to(&mut |word| words.push(word));
        assert_eq!(words.len() * 8, book.written_len());
        let mut input = words.iter().copied();
        let read = book
            .read_from(0, words.len(), &mut || input.next())
            .expect("reads back");
        for table in [&book, &read] {
            assert_eq!(
                table.order_for(5, 2, SKU_LIMIT_KEY),
                Some(OrderId(number(1)))
            );
            assert_eq!(
                table.order_for(6, 1, SKU_LIMIT_KEY | 1),
                Some(OrderId(number(2)))
            );
            assert_eq!(table.units_of(5, 0, SKU_LIMIT_KEY), 2);
        }
        // A holding of a SKU the shard does not have, or a number of 0, is refused.
        let holding = words.iter().position(|&w| w == 6).expect("user 6's slot");
        let mut bad = words.clone();
        bad[holding + 3] = 7 << 32 | 1;
        let mut input = bad.iter().copied();
        assert!(
            book.read_from(0, words.len(), &mut || input.next())
                .is_none()
        );
        let mut bad = words.clone();
        bad[holding + 2] = 0;
        let mut input = bad.iter().copied();
        assert!(
            book.read_from(0, words.len(), &mut || input.next())
                .is_none()
        );
    }
}
