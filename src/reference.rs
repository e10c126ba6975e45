//! The reference model: a deliberately simple, sequential statement of a shard's rules.
//!
//! Plain `std` collections, one `if` per rule, no tricks and no attention to speed. It
//! exists to be obviously correct, so that machines can check the fast [`ShardCore`]
//! against it: the property tests and the `shard_vs_model` fuzzer demand that both give
//! the same outcome for every command, and the concurrent tests replay each shard's
//! applied order through it. `Mutex<Model>` is also the "obvious implementation" baseline
//! that the benchmarks and `flashsale compare` measure the engine against.
//!
//! Behind the `reference` feature (not default for library users; the simulator's `cli`
//! feature turns it on).
//!
//! The rules, in order, for a [`Command::Buy`] on a shard:
//! 1. the SKU is not one of this shard's: [`RejectReason::UnknownSku`];
//! 2. quantity 0: [`RejectReason::InvalidQuantity`];
//! 3. arrival before the window opens: [`RejectReason::NotOpenYet`]; at or after it
//!    closes: [`RejectReason::Closed`];
//! 4. the buyer's `(user, client_key)` already made an order for this product (the SKU's
//!    limit group, or the SKU if it has none): [`RejectReason::Duplicate`] with that
//!    order's id;
//! 5. the buyer's units of this SKU, or of its limit group, plus the quantity would pass
//!    the limit: [`RejectReason::UserLimit`];
//! 6. nothing left: [`RejectReason::SoldOut`]; less than asked:
//!    [`RejectReason::InsufficientStock`];
//! 7. otherwise confirmed: order id `(shard, n)` for the shard's `n`-th order.
//!
//! Every command, accepted or not, takes the shard's next sequence number.
//!
//! [`ShardCore`]: crate::ShardCore

use std::collections::HashMap;

use crate::catalog::{Catalog, Placement};
use crate::core::{Command, SkuLevels};
use crate::types::{
    GroupId, Intent, Order, OrderId, Outcome, RejectReason, ShardId, SkuId, UserId,
};

/// What an idempotency key is scoped to: a limit group, or an ungrouped SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Product {
    Group(GroupId),
    Sku(SkuId),
}

/// One SKU as the model keeps it.
#[derive(Debug, Clone)]
struct ModelSku {
    stock: u32,
    available: u32,
    limit_per_buyer: u32,
    opens_at_ns: u64,
    closes_at_ns: u64,
    group: Option<GroupId>,
}

/// The reference model of one shard (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Model {
    shard: ShardId,
    /// The SKUs this shard owns, in catalog order (for [`levels`](Self::levels)).
    order: Vec<SkuId>,
    skus: HashMap<SkuId, ModelSku>,
    group_limits: HashMap<GroupId, u32>,
    orders: HashMap<(UserId, u64, Product), OrderId>,
    held_of_sku: HashMap<(UserId, SkuId), u32>,
    held_of_group: HashMap<(UserId, GroupId), u32>,
    next_sequence: u64,
    orders_confirmed: u64,
}

impl Model {
    /// The model of a single shard owning the whole catalog (as [`ShardCore::whole`]).
    ///
    /// [`ShardCore::whole`]: crate::ShardCore::whole
    pub fn whole(catalog: &Catalog) -> Self {
        Self::with_skus(catalog, ShardId(0), 0..catalog.skus().len())
    }

    /// The model of shard `shard` under `placement`: it owns the SKUs placed there and
    /// answers [`RejectReason::UnknownSku`] for the rest.
    pub fn for_shard(catalog: &Catalog, placement: &Placement, shard: ShardId) -> Self {
        let owned = placement.skus_of(shard).iter().map(|&index| index as usize);
        Self::with_skus(catalog, shard, owned)
    }

    fn with_skus(catalog: &Catalog, shard: ShardId, owned: impl Iterator<Item = usize>) -> Self {
        let mut order = Vec::new();
        let mut skus = HashMap::new();
        for index in owned {
            let spec = &catalog.skus()[index];
            order.push(spec.id);
            skus.insert(
                spec.id,
                ModelSku {
                    stock: spec.stock,
                    available: spec.stock,
                    limit_per_buyer: spec.limit_per_buyer,
                    opens_at_ns: spec.window.opens_at_ns,
                    closes_at_ns: spec.window.closes_at_ns,
                    group: spec.group,
                },
            );
        }
        let group_limits = catalog
            .groups()
            .iter()
            .map(|group| (group.id, group.limit_per_buyer))
            .collect();
        Self {
            shard,
            order,
            skus,
            group_limits,
            orders: HashMap::new(),
            held_of_sku: HashMap::new(),
            held_of_group: HashMap::new(),
            next_sequence: 0,
            orders_confirmed: 0,
        }
    }

    /// Applies one command, as [`ShardCore::apply`](crate::ShardCore::apply).
    pub fn apply(&mut self, command: &Command) -> Outcome {
        match *command {
            Command::Buy { intent, arrival_ns } => self.buy(&intent, arrival_ns),
        }
    }

    /// Decides a buy intent that arrived at `arrival_ns`.
    pub fn buy(&mut self, intent: &Intent, arrival_ns: u64) -> Outcome {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        match self.decide(intent, arrival_ns, sequence) {
            Ok(order) => Outcome::Confirmed(order),
            Err(reason) => Outcome::Rejected {
                reason,
                sequence: Some(sequence),
            },
        }
    }

    fn decide(
        &mut self,
        intent: &Intent,
        arrival_ns: u64,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        let Some(sku) = self.skus.get(&intent.sku) else {
            return Err(RejectReason::UnknownSku);
        };
        let quantity = intent.quantity;
        if quantity == 0 {
            return Err(RejectReason::InvalidQuantity);
        }
        if arrival_ns < sku.opens_at_ns {
            return Err(RejectReason::NotOpenYet);
        }
        if arrival_ns >= sku.closes_at_ns {
            return Err(RejectReason::Closed);
        }
        let product = sku.group.map_or(Product::Sku(intent.sku), Product::Group);
        let key = (intent.user, intent.client_key, product);
        if let Some(&id) = self.orders.get(&key) {
            return Err(RejectReason::Duplicate(id));
        }
        let held_of_sku = self
            .held_of_sku
            .get(&(intent.user, intent.sku))
            .copied()
            .unwrap_or(0);
        if u64::from(held_of_sku) + u64::from(quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        if let Some(group) = sku.group {
            let held_of_group = self
                .held_of_group
                .get(&(intent.user, group))
                .copied()
                .unwrap_or(0);
            let limit = self.group_limits[&group];
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
        let group = sku.group;
        self.skus
            .get_mut(&intent.sku)
            .expect("looked up above")
            .available -= quantity;
        *self
            .held_of_sku
            .entry((intent.user, intent.sku))
            .or_default() += quantity;
        if let Some(group) = group {
            *self.held_of_group.entry((intent.user, group)).or_default() += quantity;
        }
        let id = OrderId::new(self.shard, self.orders_confirmed);
        self.orders_confirmed += 1;
        self.orders.insert(key, id);
        Ok(Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity,
            sequence,
        })
    }

    /// Commands applied so far.
    pub fn commands_applied(&self) -> u64 {
        self.next_sequence
    }

    /// Orders confirmed so far.
    pub fn orders_confirmed(&self) -> u64 {
        self.orders_confirmed
    }

    /// Every owned SKU's counters, in catalog order (as [`ShardCore::levels`]).
    ///
    /// [`ShardCore::levels`]: crate::ShardCore::levels
    pub fn levels(&self) -> Vec<SkuLevels> {
        self.order
            .iter()
            .map(|id| {
                let sku = &self.skus[id];
                SkuLevels {
                    id: *id,
                    stock: sku.stock,
                    available: sku.available,
                    held: sku.stock - sku.available,
                }
            })
            .collect()
    }

    /// The order made for `(user, client_key)` for the product of `sku`, if any and if
    /// this shard owns `sku`.
    pub fn order_for_key(&self, user: UserId, client_key: u64, sku: SkuId) -> Option<OrderId> {
        let group = self.skus.get(&sku)?.group;
        let product = group.map_or(Product::Sku(sku), Product::Group);
        self.orders.get(&(user, client_key, product)).copied()
    }

    /// Units of `sku` that `user` holds.
    pub fn held_by(&self, user: UserId, sku: SkuId) -> u32 {
        self.held_of_sku.get(&(user, sku)).copied().unwrap_or(0)
    }
}
