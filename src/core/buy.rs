//! The buy rules, in the order a buy meets them: a pooled product's window, quantity, the
//! sale window, the buyer's key, the limits, then the stock; and the confirmation that
//! records an order.

use super::*;

impl ShardCore {
    /// Applies a buy intent whose SKU the caller already resolved to this shard's local
    /// index (the engine's producers do, so that the shard skips the id lookup). An index
    /// that is out of range or names another SKU than `intent.sku` is rejected as
    /// [`RejectReason::UnknownSku`], like an unknown id. `wait`: as
    /// [`buy_or_wait`](Self::buy_or_wait).
    #[inline]
    pub fn buy_at(&mut self, local: u32, intent: &Intent, arrival_ns: u64, wait: bool) -> Applied {
        let sequence = self.next_sequence();
        self.advance(arrival_ns, sequence);
        let owned = self
            .skus
            .get(local as usize)
            .is_some_and(|sku| sku.id == intent.sku);
        if !owned {
            return Applied::Decided(rejected(RejectReason::UnknownSku, sequence));
        }
        if wait || self.skus[local as usize].pool.is_some() {
            return self.buy_pooled_or_waiting(local, intent, arrival_ns, wait, sequence);
        }
        Applied::Decided(outcome_of(
            self.decide(local, intent, arrival_ns, sequence),
            sequence,
        ))
    }

    /// [`buy_at`](Self::buy_at) for an intent that may wait: it asked to, or its product
    /// has a pool. Out of line, so that the plain first-come path stays short.
    #[cold]
    #[inline(never)]
    pub(super) fn buy_pooled_or_waiting(
        &mut self,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        if let Some(pool) = self.skus[local as usize].pool {
            let entry = &self.pools[pool as usize];
            if !entry.served {
                return self.enter_pool(pool, local, intent, arrival_ns, wait, sequence);
            }
            if entry.serving.is_some() {
                return self.after_pool(pool, local, intent, arrival_ns, wait, sequence);
            }
        }
        match self.decide(local, intent, arrival_ns, sequence) {
            Ok(order) => Applied::Decided(Outcome::Confirmed(order)),
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if wait && self.skus[local as usize].waitlist_capacity > 0 =>
            {
                self.wait_or_refuse(local, sequence, intent, sequence)
            }
            Err(reason) => Applied::Decided(rejected(reason, sequence)),
        }
    }

    /// Puts a buy on its SKU's waitlist, or rejects it as `WaitlistFull`; the outcome is
    /// the command's own (`origin == sequence`) or deferred.
    #[cold]
    #[inline(never)]
    pub(super) fn wait_or_refuse(
        &mut self,
        local: u32,
        origin: u64,
        intent: &Intent,
        sequence: u64,
    ) -> Applied {
        let sku = &mut self.skus[local as usize];
        if sku.cold.waiters.len() >= sku.waitlist_capacity as usize {
            let outcome = rejected(RejectReason::WaitlistFull, sequence);
            return self.answer(origin, intent, outcome, sequence);
        }
        sku.cold.waiters.push_back(Waiter {
            origin,
            intent: *intent,
        });
        self.next_due_ns = self.next_due_ns.min(sku.closes_at_ns);
        Applied::Waiting { sequence }
    }

    /// The outcome of the buy `origin`: returned if it is the command being applied,
    /// else deferred.
    pub(super) fn answer(
        &mut self,
        origin: u64,
        intent: &Intent,
        outcome: Outcome,
        sequence: u64,
    ) -> Applied {
        if origin == sequence {
            Applied::Decided(outcome)
        } else {
            self.deferred.push(Deferred {
                origin,
                intent: *intent,
                outcome,
            });
            Applied::Waiting { sequence }
        }
    }

    /// The key a SKU's per-buyer units are counted under: its limit group, or itself.
    #[inline(always)]
    pub(super) fn limit_key(&self, local: u32) -> u64 {
        limit_key_of(&self.skus, local)
    }

    /// The rules, in their documented order: quantity, window, then
    /// [`allocate`](Self::allocate).
    #[inline(always)]
    pub(super) fn decide(
        &mut self,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        // The producer rejects it first; a core fed directly must not confirm 0 units.
        if intent.quantity == 0 {
            return Err(RejectReason::InvalidQuantity);
        }
        let sku = &self.skus[local as usize];
        if arrival_ns < sku.opens_at_ns {
            return Err(RejectReason::NotOpenYet);
        }
        if sku.closed_at(arrival_ns) {
            return Err(RejectReason::Closed);
        }
        self.allocate(local, intent, intent.quantity, sequence)
    }

    /// Idempotency and limits for `intent`, without stock: `Ok` if `intent.quantity`
    /// units could be confirmed were they available.
    pub(super) fn admissible(&self, local: u32, intent: &Intent) -> Result<(), RejectReason> {
        let (user, client_key) = (intent.user.0, intent.client_key);
        let (of_sku, of_group) =
            match self
                .book
                .standing(user, client_key, local, self.limit_key(local))
            {
                Standing::Duplicate(order) => return Err(RejectReason::Duplicate(order)),
                Standing::Holds {
                    of_sku, of_group, ..
                } => (of_sku, of_group),
            };
        self.limits(local, intent.quantity, of_sku, of_group)
    }

    #[inline(always)]
    pub(super) fn limits(
        &self,
        local: u32,
        quantity: u32,
        of_sku: u32,
        of_group: u32,
    ) -> Result<(), RejectReason> {
        let sku = &self.skus[local as usize];
        if u64::from(of_sku) + u64::from(quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        if let Some(group) = sku.group {
            let limit = self.group_limits[group as usize];
            if u64::from(of_group) + u64::from(quantity) > u64::from(limit) {
                return Err(RejectReason::UserLimit);
            }
        }
        Ok(())
    }

    /// Idempotency, limits (for the intent's quantity) and stock (for `units`, which is
    /// the intent's quantity except for a one-each-first partial grant); confirms `units`.
    #[inline(always)]
    pub(super) fn allocate(
        &mut self,
        local: u32,
        intent: &Intent,
        units: u32,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        let sku = &self.skus[local as usize];
        let limit_key = self.limit_key(local);
        let (user, client_key) = (intent.user.0, intent.client_key);
        // A buyer with no order here has no key to repeat and holds no units.
        let (held_of_sku, held_of_group, places) = if self.buyers.may_hold(user) {
            match self.book.standing(user, client_key, local, limit_key) {
                Standing::Duplicate(order) => return Err(RejectReason::Duplicate(order)),
                Standing::Holds {
                    of_sku,
                    of_group,
                    places,
                } => (of_sku, of_group, Some(places)),
            }
        } else {
            (0, 0, None)
        };
        self.limits(local, intent.quantity, held_of_sku, held_of_group)?;
        if sku.available == 0 {
            return Err(RejectReason::SoldOut);
        }
        if sku.available < units {
            return Err(RejectReason::InsufficientStock);
        }
        Ok(self.confirm(local, intent, units, sequence, places))
    }

    /// Records a confirmation that [`allocate`](Self::allocate) checked. Out of line: the
    /// rush is mostly rejections, which then stay a short loop.
    #[inline(never)]
    pub(super) fn confirm(
        &mut self,
        local: u32,
        intent: &Intent,
        units: u32,
        sequence: u64,
        places: Option<book::Places>,
    ) -> Order {
        let limit_key = self.limit_key(local);
        let (user, client_key) = (intent.user.0, intent.client_key);
        // Limits are at least 1 and quantities fit the limit checked before, so the
        // counters below cannot overflow.
        let now_ns = self.now_ns;
        let sku = &mut self.skus[local as usize];
        sku.available -= units;
        sku.held += units;
        debug_assert_eq!(sku.available + sku.held + sku.cold.sold, sku.cold.stock);
        let number = self.orders_confirmed;
        let id = OrderId::new(self.shard, number);
        self.orders_confirmed += 1;
        let mut pay_by_ns = u64::MAX;
        if let Some(hold_ns) = sku.cold.hold_ns {
            // A deadline past the clock's end is its last instant but one: `u64::MAX`
            // means "no deadline" in the order's record, and a held order of a SKU with
            // a hold always has one.
            let deadline = now_ns.saturating_add(hold_ns).min(u64::MAX - 1);
            pay_by_ns = deadline;
            self.deadlines.push(Reverse((deadline, number)));
            self.next_due_ns = self.next_due_ns.min(deadline);
        }
        self.orders.push(OrderRecord {
            user,
            sku_local: local,
            units,
            state: OrderState::Held,
            pay_by_ns,
        });
        self.event(OrderEventKind::Confirmed, number as usize, sequence);
        let places = match places {
            Some(places) => places,
            // The filter said "no order", so the look-up was skipped; find the places now.
            None => match self.book.standing(user, client_key, local, limit_key) {
                Standing::Holds { places, .. } => places,
                Standing::Duplicate(_) => unreachable!("the buyer filter has no false negatives"),
            },
        };
        self.book.confirm(
            places,
            &Confirmed {
                id,
                user,
                client_key,
                sku_local: local,
                limit_key,
                units,
            },
        );
        self.buyers.insert(intent.user.0);
        Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity: units,
            sequence,
        }
    }
}
