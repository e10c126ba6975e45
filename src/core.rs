//! The decision core: a plain, single-threaded, deterministic state machine per shard.
//!
//! `(state, command) -> (state, outcome)`, nothing else: no threads, no atomics, no clock
//! (time arrives as the arrival stamp on each intent). Its outcomes depend only on the
//! catalog, the placement and the order of the commands it applied, which is what lets the
//! model tests, the fuzzers and (later) the journal drive it directly and replay it exactly.
//! The engine's worker threads wrap it; nothing here knows about them.

use rustc_hash::FxHashMap;

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

/// The bit that marks a limit key as a group's rather than a SKU's.
const GROUP_KEY_BIT: u32 = 1 << 31;

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
    /// `(user, client_key)` of every confirmed order, to its id.
    orders_by_key: FxHashMap<(u64, u64), OrderId>,
    /// `(user, limit key)` to units held: the key is the SKU's local index, or the group's
    /// local index with `GROUP_KEY_BIT` set.
    units_by_buyer: FxHashMap<(u64, u32), u32>,
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
        // Every confirmed order takes at least one unit, so the stock bounds the orders:
        // reserve up front (capped, so a huge catalog does not pay for it at start-up) so
        // that the hot path rarely rehashes.
        let orders_max = stock_total.min(1 << 20) as usize;
        let mut orders_by_key = FxHashMap::default();
        orders_by_key.reserve(orders_max);
        let mut units_by_buyer = FxHashMap::default();
        units_by_buyer.reserve(orders_max);
        Self {
            shard,
            skus,
            local_index,
            group_limits,
            orders_by_key,
            units_by_buyer,
            sequence_next: 0,
            orders_confirmed: 0,
        }
    }

    /// A single shard owning the whole catalog (for tests, models and tools).
    pub fn whole(catalog: &Catalog) -> Self {
        let placement = Placement::new(catalog, 1).expect("one shard always fits");
        Self::new(catalog, &placement, ShardId(0))
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
        match self.local_index.get(&intent.sku) {
            Some(&local) => self.buy_local(local, intent, arrival_ns),
            None => {
                let sequence = self.next_sequence();
                Outcome::Rejected {
                    reason: RejectReason::UnknownSku,
                    sequence: Some(sequence),
                }
            }
        }
    }

    /// Applies a buy intent whose SKU the caller already resolved to this shard's local
    /// index (the engine's producers do, so that the shard skips the id lookup).
    #[inline]
    pub(crate) fn buy_local(&mut self, local: u32, intent: &Intent, arrival_ns: u64) -> Outcome {
        debug_assert_eq!(self.skus[local as usize].id, intent.sku);
        let sequence = self.next_sequence();
        match self.decide(local, intent, arrival_ns, sequence) {
            Ok(order) => Outcome::Confirmed(order),
            Err(reason) => Outcome::Rejected {
                reason,
                sequence: Some(sequence),
            },
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
        let sku = &self.skus[local as usize];
        if arrival_ns < sku.opens_at_ns {
            return Err(RejectReason::NotOpenYet);
        }
        if arrival_ns >= sku.closes_at_ns {
            return Err(RejectReason::Closed);
        }
        let key = (intent.user.0, intent.client_key);
        if let Some(&order) = self.orders_by_key.get(&key) {
            return Err(RejectReason::Duplicate(order));
        }
        let quantity = intent.quantity;
        let sku_key = (intent.user.0, local);
        let held_of_sku = self.units_by_buyer.get(&sku_key).copied().unwrap_or(0);
        if u64::from(held_of_sku) + u64::from(quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        let group_key = sku
            .group
            .map(|group| (intent.user.0, group | GROUP_KEY_BIT));
        if let (Some(group_key), Some(group)) = (group_key, sku.group) {
            let held_of_group = self.units_by_buyer.get(&group_key).copied().unwrap_or(0);
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
        *self.units_by_buyer.entry(sku_key).or_insert(0) += quantity;
        if let Some(group_key) = group_key {
            *self.units_by_buyer.entry(group_key).or_insert(0) += quantity;
        }
        let id = OrderId::new(self.shard, self.orders_confirmed);
        self.orders_confirmed += 1;
        let previous = self.orders_by_key.insert(key, id);
        debug_assert!(previous.is_none());
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

    /// The order confirmed for `(user, client_key)`, if any.
    pub fn order_for_key(&self, user: u64, client_key: u64) -> Option<OrderId> {
        self.orders_by_key.get(&(user, client_key)).copied()
    }

    /// Units a buyer holds of a SKU on this shard.
    pub fn held_by(&self, user: u64, sku: SkuId) -> u32 {
        self.local_index
            .get(&sku)
            .and_then(|&local| self.units_by_buyer.get(&(user, local)))
            .copied()
            .unwrap_or(0)
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
    fn unknown_sku_takes_a_sequence_number() {
        let mut core = core();
        let outcome = core.buy(&intent(1, 1, 99, 1), 0);
        assert_eq!(outcome.reason(), Some(RejectReason::UnknownSku));
        assert_eq!(outcome.sequence(), Some(0));
    }
}
