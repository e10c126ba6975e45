//! Snapshots of a shard core: its whole mutable state as bytes, to bound replay at
//! recovery (restore the newest snapshot, then replay only the journal after it).
//!
//! Format (little-endian): magic `FLASHSNP`, version u32 = 3, shard u16, 2 reserved bytes,
//! the sequence number the snapshot was taken at (u64: the next command's), the payload
//! length (u64) and its CRC-32, then the payload: the core's counters, every SKU's state
//! and waitlist, the buyer filter, the order book, the order log, the hold
//! deadlines and the pools (with how far each pool being served got). The catalog-derived
//! parts (SKU ids, limits, groups, policies) are not stored: a snapshot restores into a
//! core built from the same catalog and placement, and a mismatch is refused.

use std::collections::BinaryHeap;

use super::book::Marks;
use super::pool::{PoolTicket, Serving, SplitMix64};
use super::{OrderRecord, OrderState, ShardCore, Waiter};
use crate::catalog::{Catalog, Placement};
use crate::types::{Intent, ShardId, SkuId, UserId};

/// The file's first 8 bytes.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"FLASHSNP";
const VERSION: u32 = 3;
const HEADER_LEN: usize = 8 + 4 + 2 + 2 + 8 + 8 + 4;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Not a version-3 snapshot, or cut short.
    #[error("not a complete version-3 snapshot")]
    BadHeader,
    /// The payload does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// Taken of another shard.
    #[error("snapshot of shard {0}")]
    WrongShard(u16),
    /// The payload does not fit this catalog and placement (or is damaged consistently
    /// with its checksum, which the checksum makes unlikely).
    #[error("the snapshot does not fit this catalog: {0}")]
    Mismatch(&'static str),
}

struct Out(Vec<u8>);

impl Out {
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }
    fn intent(&mut self, intent: &Intent) {
        self.u64(intent.user.0);
        self.u64(intent.client_key);
        self.u32(intent.sku.0);
        self.u32(intent.quantity);
    }
}

/// The checked payload of a snapshot file of `shard`: its header's magic, version and
/// shard, its length within the file, and its checksum.
fn payload_of(bytes: &[u8], shard: ShardId) -> Result<&[u8], SnapshotError> {
    let header = bytes.get(..HEADER_LEN).ok_or(SnapshotError::BadHeader)?;
    if header[..8] != SNAPSHOT_MAGIC || header[8..12] != VERSION.to_le_bytes() {
        return Err(SnapshotError::BadHeader);
    }
    let found = u16::from_le_bytes([header[12], header[13]]);
    if found != shard.0 {
        return Err(SnapshotError::WrongShard(found));
    }
    let length = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
    let checksum = u32::from_le_bytes(header[32..36].try_into().expect("4 bytes"));
    let payload = usize::try_from(length)
        .ok()
        .and_then(|length| bytes.get(HEADER_LEN..HEADER_LEN.checked_add(length)?))
        .ok_or(SnapshotError::BadHeader)?;
    if crc32fast::hash(payload) != checksum {
        return Err(SnapshotError::Checksum);
    }
    Ok(payload)
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(SnapshotError::Mismatch("cut short"))?;
        self.0 = rest;
        Ok(*head)
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        self.take::<1>().map(|[byte]| byte)
    }
    fn len(&mut self, max: usize) -> Result<usize, SnapshotError> {
        let len = self.u64()?;
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= max)
            .ok_or(SnapshotError::Mismatch("a length is out of range"))
    }
    fn intent(&mut self) -> Result<Intent, SnapshotError> {
        Ok(Intent {
            user: UserId(self.u64()?),
            client_key: self.u64()?,
            sku: SkuId(self.u32()?),
            quantity: self.u32()?,
        })
    }
}

impl ShardCore {
    /// The core's state as a snapshot file's bytes (header included). Take it between
    /// commands, after [`take_deferred`](Self::take_deferred).
    ///
    /// # Panics
    /// If deferred outcomes are still waiting to be taken (a caller bug: they would be
    /// lost).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut file = Vec::new();
        self.snapshot_into(&mut file);
        file
    }

    /// [`snapshot`](Self::snapshot), appended to `file`. The bytes are written once, into
    /// room reserved for all of them up front: a book of millions of orders is hundreds of
    /// megabytes, and growing a buffer by doubling would copy it again and again (and
    /// fault in fresh pages each time) while the shard waits.
    ///
    /// # Panics
    /// As [`snapshot`](Self::snapshot).
    pub fn snapshot_into(&self, file: &mut Vec<u8>) {
        assert!(
            self.deferred.is_empty(),
            "take the deferred outcomes before a snapshot"
        );
        let start = file.len();
        file.reserve(HEADER_LEN + self.snapshot_len_estimate());
        file.extend_from_slice(&SNAPSHOT_MAGIC);
        file.extend_from_slice(&VERSION.to_le_bytes());
        file.extend_from_slice(&self.shard.0.to_le_bytes());
        file.extend_from_slice(&[0, 0]);
        file.extend_from_slice(&self.sequence_next.to_le_bytes());
        // Payload length and checksum, filled in below.
        file.extend_from_slice(&[0; 12]);
        debug_assert_eq!(file.len() - start, HEADER_LEN);
        let mut out = Out(std::mem::take(file));
        out.u64(self.sequence_next);
        out.u64(self.orders_confirmed);
        out.u64(self.now_ns);
        out.u64(self.levels_version);
        self.write_skus(&mut out);
        out.u64(self.buyers.words.len() as u64);
        for &word in self.buyers.words.iter() {
            out.u64(word);
        }
        self.book.write_to(&mut |word| out.u64(word));
        self.write_orders(&mut out);
        self.write_pools(&mut out);
        *file = out.0;
        let payload = start + HEADER_LEN;
        let len = (file.len() - payload) as u64;
        let crc = crc32fast::hash(&file[payload..]);
        file[payload - 12..payload - 4].copy_from_slice(&len.to_le_bytes());
        file[payload - 4..payload].copy_from_slice(&crc.to_le_bytes());
    }

    /// About how many payload bytes a snapshot takes: exact for the book, the buyer
    /// filter and the orders, which are nearly all of it; room for the rest.
    fn snapshot_len_estimate(&self) -> usize {
        let deadlines = self.deadlines.len() * 16;
        let tickets: usize = self.pools.iter().map(|pool| pool.tickets.len() * 45).sum();
        (1 << 16)
            + self.buyers.words.len() * 8
            + self.book.written_len()
            + self.orders.len() * 17
            + deadlines
            + tickets
    }

    /// Each SKU's levels, window, counters and waitlist.
    fn write_skus(&self, out: &mut Out) {
        out.u64(self.skus.len() as u64);
        for sku in &self.skus {
            out.u32(sku.id.0);
            out.u32(sku.available);
            out.u32(sku.held);
            out.u64(sku.opens_at_ns);
            out.u64(sku.closes_at_ns);
            out.u8(u8::from(sku.closed));
            let cold = &sku.cold;
            out.u32(cold.stock);
            out.u32(cold.sold);
            for counter in [
                cold.expired,
                cold.cancelled,
                cold.restocked,
                cold.reduced,
                cold.waitlist_filled,
            ] {
                out.u64(counter);
            }
            out.u64(cold.waiters.len() as u64);
            for waiter in &cold.waiters {
                out.u64(waiter.origin);
                out.intent(&waiter.intent);
            }
        }
    }

    /// The order log, then the payment deadlines (sorted, so that equal cores write equal
    /// bytes).
    fn write_orders(&self, out: &mut Out) {
        out.u64(self.orders.len() as u64);
        for order in self.orders.iter() {
            out.u64(order.user);
            out.u32(order.sku_local);
            out.u32(order.units);
            out.u8(order.state as u8);
        }
        let deadlines = self.deadlines.clone().into_sorted_vec();
        out.u64(deadlines.len() as u64);
        for std::cmp::Reverse((deadline, number)) in deadlines {
            out.u64(deadline);
            out.u64(number);
        }
    }

    /// Each pool and its tickets.
    fn write_pools(&self, out: &mut Out) {
        out.u64(self.pools.len() as u64);
        for pool in &self.pools {
            out.u64(pool.serve_at_ns);
            out.u8(u8::from(pool.served));
            out.u64(pool.tickets_taken);
            out.u64(pool.tickets.len() as u64);
            for ticket in &pool.tickets {
                out.u64(ticket.origin);
                out.intent(&ticket.intent);
                out.u32(ticket.local);
                out.u8(u8::from(ticket.wait));
            }
            match &pool.serving {
                None => out.u8(0),
                Some(serving) => {
                    out.u8(1);
                    out.u64(serving.at_ns);
                    out.u64(serving.done);
                    out.u64(serving.rng.state());
                    for list in [&serving.wants, &serving.granted] {
                        out.u64(list.len() as u64);
                        for &value in list {
                            out.u32(value);
                        }
                    }
                    out.u64(serving.after.len() as u64);
                    for (ticket, arrival_ns) in &serving.after {
                        out.u64(ticket.origin);
                        out.intent(&ticket.intent);
                        out.u32(ticket.local);
                        out.u64(*arrival_ns);
                        out.u8(u8::from(ticket.wait));
                    }
                }
            }
        }
        out.u64(self.serving.len() as u64);
        for &pool in &self.serving {
            out.u32(pool);
        }
        out.u64(self.sliced_at);
    }

    /// The sequence number a snapshot file was taken at (the next command's), if its
    /// header is whole.
    pub fn snapshot_sequence(bytes: &[u8]) -> Option<u64> {
        let header = bytes.get(..HEADER_LEN)?;
        (header[..8] == SNAPSHOT_MAGIC && header[8..12] == VERSION.to_le_bytes())
            .then(|| u64::from_le_bytes(header[16..24].try_into().expect("8 bytes")))
    }

    /// Rebuilds shard `shard`'s core from a [`snapshot`](Self::snapshot).
    ///
    /// # Errors
    /// [`SnapshotError`]: damaged, another shard's, or taken under another catalog.
    pub fn restore(
        catalog: &Catalog,
        placement: &Placement,
        shard: ShardId,
        orders: Option<usize>,
        bytes: &[u8],
    ) -> Result<Self, SnapshotError> {
        let payload = payload_of(bytes, shard)?;
        let mut core = Self::made(catalog, placement, shard, orders, false);
        let stock: u64 = core.skus.iter().map(|sku| u64::from(sku.cold.stock)).sum();
        let room = Self::orders_to_make_room_for(stock, orders);
        let mut input = In(payload);
        core.sequence_next = input.u64()?;
        core.orders_confirmed = input.u64()?;
        core.now_ns = input.u64()?;
        core.levels_version = input.u64()?;
        core.read_skus(&mut input)?;
        if input.len(usize::MAX)? != core.buyers.words.len() {
            return Err(SnapshotError::Mismatch("buyer filter size"));
        }
        for word in core.buyers.words.iter_mut() {
            *word = input.u64()?;
        }
        let words_left = input.0.len() / 8;
        core.book = (core.book)
            .read_from(room, words_left, &mut || input.u64().ok())
            .ok_or(SnapshotError::Mismatch("order book"))?;
        core.read_orders(&mut input)?;
        core.read_pools(&mut input)?;
        if !input.0.is_empty() {
            return Err(SnapshotError::Mismatch("trailing bytes"));
        }
        core.check_restored()?;
        core.next_due_ns = core.compute_next_due();
        Ok(core)
    }

    /// Reads what [`write_skus`](Self::write_skus) wrote into this core's SKUs.
    fn read_skus(&mut self, input: &mut In<'_>) -> Result<(), SnapshotError> {
        if input.len(usize::MAX)? != self.skus.len() {
            return Err(SnapshotError::Mismatch("SKU count"));
        }
        for sku in self.skus.iter_mut() {
            if input.u32()? != sku.id.0 {
                return Err(SnapshotError::Mismatch("SKU ids"));
            }
            let catalog_stock = u64::from(sku.cold.stock);
            sku.available = input.u32()?;
            sku.held = input.u32()?;
            sku.opens_at_ns = input.u64()?;
            sku.closes_at_ns = input.u64()?;
            sku.closed = input.u8()? != 0;
            let cold = &mut sku.cold;
            cold.stock = input.u32()?;
            cold.sold = input.u32()?;
            cold.expired = input.u64()?;
            cold.cancelled = input.u64()?;
            cold.restocked = input.u64()?;
            cold.reduced = input.u64()?;
            cold.waitlist_filled = input.u64()?;
            // Units are conserved, and the stock is the catalog's with the restocks and
            // reductions since.
            let units = u64::from(sku.available) + u64::from(sku.held) + u64::from(cold.sold);
            if units != u64::from(cold.stock)
                || u128::from(catalog_stock) + u128::from(cold.restocked)
                    != u128::from(cold.stock) + u128::from(cold.reduced)
            {
                return Err(SnapshotError::Mismatch("a SKU's units"));
            }
            let waiters = input.len(sku.waitlist_capacity as usize)?;
            for _ in 0..waiters {
                let origin = input.u64()?;
                let intent = input.intent()?;
                if intent.sku != sku.id {
                    return Err(SnapshotError::Mismatch("a waiter's SKU"));
                }
                cold.waiters.push_back(Waiter { origin, intent });
            }
        }
        Ok(())
    }

    /// Reads what [`write_orders`](Self::write_orders) wrote: the order log (as many
    /// orders as the shard confirmed) and the payment deadlines.
    fn read_orders(&mut self, input: &mut In<'_>) -> Result<(), SnapshotError> {
        let orders = input.len(self.orders_confirmed as usize)?;
        if orders as u64 != self.orders_confirmed {
            return Err(SnapshotError::Mismatch("order count"));
        }
        for _ in 0..orders {
            let user = input.u64()?;
            let sku_local = input.u32()?;
            let units = input.u32()?;
            let state = match input.u8()? {
                0 => OrderState::Held,
                1 => OrderState::Sold,
                2 => OrderState::Cancelled,
                3 => OrderState::Expired,
                _ => return Err(SnapshotError::Mismatch("order state")),
            };
            if sku_local as usize >= self.skus.len() {
                return Err(SnapshotError::Mismatch("order SKU"));
            }
            self.orders.push(OrderRecord {
                user,
                sku_local,
                units,
                state,
                pay_by_ns: u64::MAX,
            });
        }
        let deadlines = input.len(orders)?;
        let mut heap = Vec::with_capacity(deadlines);
        for _ in 0..deadlines {
            let deadline = input.u64()?;
            let number = input.u64()?;
            if number >= self.orders_confirmed {
                return Err(SnapshotError::Mismatch("deadline order"));
            }
            heap.push(std::cmp::Reverse((deadline, number)));
            // A held order's deadline is its entry here (entries of orders no longer
            // held stay until they come up, and are not deadlines any more).
            let record = &mut self.orders[number as usize];
            if record.state == OrderState::Held {
                record.pay_by_ns = deadline;
            }
        }
        self.deadlines = BinaryHeap::from(heap);
        Ok(())
    }

    /// Checks that what a snapshot restored agrees with itself, so that a snapshot whose
    /// checksum holds but whose contents do not (a writer's bug, or damage the checksum
    /// missed) is refused by name rather than run: each SKU's held, sold, cancelled and
    /// expired units are those of its orders; every held order of a SKU with a payment
    /// deadline has one; the order book has each order's key and holds each buyer's units
    /// of its orders, where its look-ups find them; and the buyers' filter has every buyer
    /// of the book (a bit set beyond them only makes a decision look in the book). (Each
    /// SKU's own units were checked as it was read.)
    fn check_restored(&self) -> Result<(), SnapshotError> {
        // Held, sold, cancelled and expired units of each SKU's orders, and the orders'
        // marks for the book's check.
        let mut units = vec![[0u64; 4]; self.skus.len()];
        let mut marks = Marks::default();
        for (number, order) in self.orders.0.iter().enumerate() {
            let local = order.sku_local;
            let state = match order.state {
                OrderState::Held => 0,
                OrderState::Sold => 1,
                OrderState::Cancelled => 2,
                OrderState::Expired => 3,
            };
            units[local as usize][state] += u64::from(order.units);
            marks.add_order(number as u64, order.user, self.limit_key(local));
            if state < 2 {
                marks.add_units(order.user, local, order.units);
            }
            let hold = self.skus[local as usize].cold.hold_ns;
            if state == 0 && hold.is_some() && order.pay_by_ns == u64::MAX {
                return Err(SnapshotError::Mismatch("a held order without its deadline"));
            }
        }
        for (sku, units) in self.skus.iter().zip(&units) {
            let counted = [
                u64::from(sku.held),
                u64::from(sku.cold.sold),
                sku.cold.cancelled,
                sku.cold.expired,
            ];
            if *units != counted {
                return Err(SnapshotError::Mismatch("a SKU's units against its orders"));
            }
        }
        (self.book)
            .check_against(self.orders_confirmed, marks, |user| {
                self.buyers.may_hold(user)
            })
            .map_err(SnapshotError::Mismatch)
    }

    /// Reads what [`write_pools`](Self::write_pools) wrote into this core's pools.
    fn read_pools(&mut self, input: &mut In<'_>) -> Result<(), SnapshotError> {
        if input.len(usize::MAX)? != self.pools.len() {
            return Err(SnapshotError::Mismatch("pool count"));
        }
        let capacity = self.pool_capacity as usize;
        for pool in self.pools.iter_mut() {
            pool.serve_at_ns = input.u64()?;
            pool.served = input.u8()? != 0;
            pool.tickets_taken = input.u64()?;
            let tickets = input.len(capacity)?;
            for _ in 0..tickets {
                let origin = input.u64()?;
                let intent = input.intent()?;
                let local = input.u32()?;
                let wait = input.u8()? != 0;
                if !pool.skus.contains(&local) || self.skus[local as usize].id != intent.sku {
                    return Err(SnapshotError::Mismatch("a pool's ticket"));
                }
                // Who holds a ticket matters only while the pool takes tickets.
                if !pool.served {
                    pool.buyers.insert(intent.user.0);
                }
                pool.tickets.push(PoolTicket {
                    origin,
                    intent,
                    local,
                    wait,
                });
            }
            pool.serving = match input.u8()? {
                0 => None,
                _ => {
                    let at_ns = input.u64()?;
                    let done = input.u64()?;
                    let rng = SplitMix64::new(input.u64()?);
                    let mut lists = [Vec::new(), Vec::new()];
                    for list in &mut lists {
                        let len = input.len(tickets)?;
                        for _ in 0..len {
                            list.push(input.u32()?);
                        }
                    }
                    let [wants, granted] = lists;
                    let checked =
                        matches!(pool.policy, crate::catalog::Policy::OneEachFirst { .. });
                    let steps = if checked {
                        tickets as u64 * 2
                    } else {
                        (tickets as u64 * 2).saturating_sub(1)
                    };
                    // Only a pool marked served is served (one not marked would be
                    // started again).
                    if !pool.served
                        || done > steps
                        || (checked && wants.len() as u64 != done.min(tickets as u64))
                        || !(granted.is_empty() || granted.len() == tickets)
                    {
                        return Err(SnapshotError::Mismatch("a pool being served"));
                    }
                    let mut after = Vec::new();
                    for _ in 0..input.len(usize::MAX)? {
                        let (origin, intent, local) = (input.u64()?, input.intent()?, input.u32()?);
                        let arrival_ns = input.u64()?;
                        let wait = input.u8()? != 0;
                        if !pool.skus.contains(&local) || self.skus[local as usize].id != intent.sku
                        {
                            return Err(SnapshotError::Mismatch("a buy waiting for a pool"));
                        }
                        let ticket = PoolTicket {
                            origin,
                            intent,
                            local,
                            wait,
                        };
                        after.push((ticket, arrival_ns));
                    }
                    Some(Box::new(Serving {
                        at_ns,
                        done,
                        rng,
                        wants,
                        granted,
                        after,
                    }))
                }
            };
        }
        // The pools being served, in the order they started: each of them once, and no
        // other.
        let pools = self.pools.len();
        self.serving.clear();
        for _ in 0..input.len(pools)? {
            let pool = input.u32()?;
            if pool as usize >= pools
                || self.pools[pool as usize].serving.is_none()
                || self.serving.contains(&pool)
            {
                return Err(SnapshotError::Mismatch("a pool being served"));
            }
            self.serving.push_back(pool);
        }
        if self
            .pools
            .iter()
            .filter(|pool| pool.serving.is_some())
            .count()
            != self.serving.len()
        {
            return Err(SnapshotError::Mismatch("a pool being served"));
        }
        self.sliced_at = input.u64()?;
        Ok(())
    }

    /// `(user, client_key)` of every order confirmed (to rebuild the gate's key filter
    /// after a recovery).
    pub fn confirmed_keys(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.book.keys()
    }
}
