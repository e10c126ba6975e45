//! The life of a unit after its confirmation, and time: payments, cancellations, restocks
//! and reductions, moved windows and early closes (the control commands), holds that
//! expire, and what falls due when the shard's clock advances.

use super::*;

impl ShardCore {
    /// Applies a command other than a buy.
    #[cold]
    #[inline(never)]
    pub(super) fn control(&mut self, command: &Command) -> Applied {
        let sequence = self.next_sequence();
        self.advance(command.time_ns(), sequence);
        if !self.serving.is_empty() && self.touches_serving_pool(command) {
            self.drain_pools(sequence);
        }
        let result = match *command {
            Command::Buy { .. } | Command::BuyOrWait { .. } => {
                unreachable!("buys are applied by buy_at")
            }
            Command::Tick { .. } => {
                if !self.serving.is_empty() {
                    self.serve_slice(sequence);
                }
                Ok(())
            }
            Command::Pay { order, .. } => self.pay(order, sequence),
            Command::Cancel { order, .. } => self.cancel(order, sequence),
            Command::Restock { sku, units, .. } => self.restock(sku, units, sequence),
            Command::Reduce { sku, units, .. } => self.reduce(sku, units),
            Command::SetWindow { sku, window, .. } => self.set_window(sku, window),
            Command::CloseSale { sku, .. } => self.close_sale(sku, sequence),
        };
        // A moved window may have made something due already.
        self.next_due_ns = self.compute_next_due();
        if self.now_ns >= self.next_due_ns {
            self.run_due(sequence);
        }
        match result {
            Ok(()) => Applied::Done { sequence },
            Err(error) => Applied::Refused { error, sequence },
        }
    }

    /// Whether an operator command (or a cancellation) changes a SKU whose pool is being
    /// served. A payment changes no stock and no limit, so it never waits for a pool.
    fn touches_serving_pool(&self, command: &Command) -> bool {
        let local = match *command {
            Command::Restock { sku, .. }
            | Command::Reduce { sku, .. }
            | Command::SetWindow { sku, .. }
            | Command::CloseSale { sku, .. } => self.local_index(sku),
            Command::Cancel { order, .. } => (order.shard() == self.shard)
                .then(|| self.orders.get(order.number() as usize))
                .flatten()
                .map(|record| record.sku_local),
            _ => None,
        };
        local.is_some_and(|local| self.in_serving_pool(local))
    }

    pub(super) fn record(&self, order: OrderId) -> Result<(usize, OrderRecord), ControlError> {
        let number = order.number() as usize;
        if order.shard() != self.shard || number >= self.orders.len() {
            return Err(ControlError::UnknownOrder(order));
        }
        let record = self.orders[number];
        match record.state {
            OrderState::Held => Ok((number, record)),
            OrderState::Sold => Err(ControlError::AlreadyPaid),
            OrderState::Cancelled => Err(ControlError::Cancelled),
            OrderState::Expired => Err(ControlError::HoldExpired),
        }
    }

    pub(super) fn pay(&mut self, order: OrderId, sequence: u64) -> Result<(), ControlError> {
        let (number, record) = self.record(order)?;
        self.orders[number].state = OrderState::Sold;
        self.orders[number].pay_by_ns = u64::MAX;
        self.event(OrderEventKind::Paid, number, sequence);
        let sku = &mut self.skus[record.sku_local as usize];
        sku.held -= record.units;
        sku.cold.sold += record.units;
        Ok(())
    }

    pub(super) fn cancel(&mut self, order: OrderId, sequence: u64) -> Result<(), ControlError> {
        let (number, _) = self.record(order)?;
        self.release(number, OrderState::Cancelled, sequence);
        Ok(())
    }

    /// Puts an unpaid order's units back on sale (offered to the waitlist first).
    pub(super) fn release(&mut self, number: usize, state: OrderState, sequence: u64) {
        let record = self.orders[number];
        debug_assert_eq!(record.state, OrderState::Held);
        self.orders[number].state = state;
        self.orders[number].pay_by_ns = u64::MAX;
        let kind = match state {
            OrderState::Cancelled => OrderEventKind::Cancelled,
            _ => OrderEventKind::Expired,
        };
        self.event(kind, number, sequence);
        let local = record.sku_local;
        let limit_key = self.limit_key(local);
        self.book
            .release(record.user, local, limit_key, record.units);
        let sku = &mut self.skus[local as usize];
        sku.held -= record.units;
        sku.available += record.units;
        match state {
            OrderState::Cancelled => sku.cold.cancelled += u64::from(record.units),
            _ => sku.cold.expired += u64::from(record.units),
        }
        self.levels_version += 1;
        self.serve_waitlist(local, sequence);
    }

    pub(super) fn owned(&self, sku: SkuId) -> Result<u32, ControlError> {
        self.local_index(sku).ok_or(ControlError::UnknownSku(sku))
    }

    pub(super) fn restock(
        &mut self,
        sku: SkuId,
        units: u32,
        sequence: u64,
    ) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        let state = &mut self.skus[local as usize];
        let stock = state
            .cold
            .stock
            .checked_add(units)
            .ok_or(ControlError::StockOverflow)?;
        state.cold.stock = stock;
        state.available += units;
        state.cold.restocked += u64::from(units);
        self.levels_version += 1;
        self.serve_waitlist(local, sequence);
        Ok(())
    }

    pub(super) fn reduce(&mut self, sku: SkuId, units: u32) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        let state = &mut self.skus[local as usize];
        if units > state.available {
            return Err(ControlError::NotEnoughAvailable {
                available: state.available,
            });
        }
        state.cold.stock -= units;
        state.available -= units;
        state.cold.reduced += u64::from(units);
        self.levels_version += 1;
        Ok(())
    }

    pub(super) fn set_window(
        &mut self,
        sku: SkuId,
        window: SaleWindow,
    ) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        if window.closes_at_ns <= window.opens_at_ns {
            return Err(ControlError::WindowInverted);
        }
        let state = &mut self.skus[local as usize];
        state.opens_at_ns = window.opens_at_ns;
        state.closes_at_ns = window.closes_at_ns;
        state.closed = false;
        if let Some(pool) = state.pool {
            let pool = &self.pools[pool as usize];
            if !pool.served {
                let window_ns = pool.policy.window_ns().unwrap_or(0);
                let serve_at_ns = pool
                    .skus
                    .iter()
                    .map(|&l| self.skus[l as usize].opens_at_ns)
                    .min()
                    .unwrap_or(window.opens_at_ns)
                    .saturating_add(window_ns);
                self.pools[state_pool(&self.skus[local as usize])].serve_at_ns = serve_at_ns;
            }
        }
        Ok(())
    }

    pub(super) fn close_sale(&mut self, sku: SkuId, sequence: u64) -> Result<(), ControlError> {
        let local = self.owned(sku)?;
        self.skus[local as usize].closed = true;
        self.close_waitlist(local, sequence);
        if let Some(pool) = self.skus[local as usize].pool {
            let pool = &mut self.pools[pool as usize];
            if !pool.served {
                let (closed, kept): (Vec<PoolTicket>, Vec<PoolTicket>) =
                    std::mem::take(&mut pool.tickets)
                        .into_iter()
                        .partition(|ticket| ticket.local == local);
                pool.tickets = kept;
                for ticket in &closed {
                    pool.buyers.remove(&ticket.intent.user.0);
                }
                for ticket in closed {
                    self.deferred.push(Deferred {
                        origin: ticket.origin,
                        intent: ticket.intent,
                        outcome: rejected(RejectReason::Closed, sequence),
                    });
                }
            }
        }
        Ok(())
    }

    /// Rejects every intent on a SKU's waitlist as `Closed`.
    pub(super) fn close_waitlist(&mut self, local: u32, sequence: u64) {
        let waiters = std::mem::take(&mut self.skus[local as usize].cold.waiters);
        for waiter in waiters {
            self.deferred.push(Deferred {
                origin: waiter.origin,
                intent: waiter.intent,
                outcome: rejected(RejectReason::Closed, sequence),
            });
        }
    }

    /// Moves the shard's clock to `time_ns` (never back) and runs what fell due.
    #[inline(always)]
    pub(super) fn advance(&mut self, time_ns: u64, sequence: u64) {
        if time_ns > self.now_ns {
            self.now_ns = time_ns;
        }
        if self.now_ns >= self.next_due_ns {
            self.run_due(sequence);
        }
    }

    /// Runs everything due at the shard's clock, in the documented order (see
    /// [`Command`]), as part of the command numbered `sequence`.
    #[cold]
    pub(super) fn run_due(&mut self, sequence: u64) {
        let now = self.now_ns;
        // What falls due on a SKU whose pool is being served waits for the pool to be
        // served in full, as it would have had the pool been served at once.
        for local in 0..self.skus.len() as u32 {
            let sku = &self.skus[local as usize];
            if !sku.cold.waiters.is_empty() && sku.closed_at(now) {
                if self.in_serving_pool(local) {
                    self.drain_pools(sequence);
                }
                self.close_waitlist(local, sequence);
            }
        }
        while let Some(&Reverse((deadline, number))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let record = self.orders[number as usize];
            if record.state == OrderState::Held {
                if self.in_serving_pool(record.sku_local) {
                    self.drain_pools(sequence);
                }
                self.release(number as usize, OrderState::Expired, sequence);
            }
        }
        let mut started = false;
        for pool in 0..self.pools.len() {
            let due = &self.pools[pool];
            if !due.served && due.serve_at_ns <= now {
                self.start_pool(pool);
                started = true;
            }
        }
        // A pool that fell due gets its first slice from the command that saw it fall due
        // (a pool no larger than a slice is served in full there).
        if started {
            self.serve_slice(sequence);
        }
        self.next_due_ns = self.compute_next_due();
    }

    pub(super) fn compute_next_due(&self) -> u64 {
        let deadline = self
            .deadlines
            .peek()
            .map_or(u64::MAX, |Reverse((deadline, _))| *deadline);
        let pool = self
            .pools
            .iter()
            .filter(|pool| !pool.served)
            .map(|pool| pool.serve_at_ns)
            .min()
            .unwrap_or(u64::MAX);
        let close = self
            .skus
            .iter()
            .filter(|sku| !sku.cold.waiters.is_empty())
            .map(|sku| if sku.closed { 0 } else { sku.closes_at_ns })
            .min()
            .unwrap_or(u64::MAX);
        deadline.min(pool).min(close)
    }
}
