//! Buys that wait: entering a pooled product's pool, serving a pool by its policy (the
//! opening draw, one each first), and serving a SKU's waitlist when units come back.

use super::*;

impl ShardCore {
    #[cold]
    #[inline(never)]
    pub(super) fn enter_pool(
        &mut self,
        pool: u32,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        let reason = if intent.quantity == 0 {
            Some(RejectReason::InvalidQuantity)
        } else if self.skus[local as usize].closed_at(arrival_ns) {
            Some(RejectReason::Closed)
        } else {
            let capacity = self.pool_capacity as usize;
            let pool = &mut self.pools[pool as usize];
            if pool.buyers.contains(&intent.user.0) {
                Some(RejectReason::AlreadyPooled)
            } else if pool.tickets.len() >= capacity {
                Some(RejectReason::PoolFull)
            } else {
                pool.buyers.insert(intent.user.0);
                pool.tickets_taken += 1;
                pool.tickets.push(PoolTicket {
                    origin: sequence,
                    intent: *intent,
                    local,
                    wait,
                });
                None
            }
        };
        match reason {
            Some(reason) => Applied::Decided(rejected(reason, sequence)),
            None => Applied::Waiting { sequence },
        }
    }

    /// Offers a SKU's available units to its waitlist, in order: each waiting intent that
    /// fits is confirmed, one that no longer can be (limit, duplicate) is rejected, one
    /// that asks for more than is left keeps its place.
    pub(super) fn serve_waitlist(&mut self, local: u32, sequence: u64) {
        let sku = &self.skus[local as usize];
        if sku.cold.waiters.is_empty() || sku.available == 0 || sku.closed_at(self.now_ns) {
            return;
        }
        let mut waiters = std::mem::take(&mut self.skus[local as usize].cold.waiters);
        let mut kept = VecDeque::with_capacity(waiters.len());
        while let Some(waiter) = waiters.pop_front() {
            if self.skus[local as usize].available == 0 {
                kept.push_back(waiter);
                kept.extend(waiters.drain(..));
                break;
            }
            match self.allocate(local, &waiter.intent, waiter.intent.quantity, sequence) {
                Err(RejectReason::SoldOut | RejectReason::InsufficientStock) => {
                    kept.push_back(waiter);
                }
                result => {
                    if result.is_ok() {
                        self.skus[local as usize].cold.waitlist_filled += 1;
                    }
                    self.deferred.push(Deferred {
                        origin: waiter.origin,
                        intent: waiter.intent,
                        outcome: outcome_of(result, sequence),
                    });
                }
            }
        }
        self.skus[local as usize].cold.waiters = kept;
    }

    /// Serves a pool whose window closed: by its policy, every ticket gets its outcome (or
    /// a place on its SKU's waitlist).
    pub(super) fn serve_pool(&mut self, pool: usize, sequence: u64) {
        let policy = self.pools[pool].policy;
        self.pools[pool].served = true;
        let mut tickets = std::mem::take(&mut self.pools[pool].tickets);
        self.pools[pool].buyers = Default::default();
        let now = self.now_ns;
        // The window rule, judged when the pool is served.
        let window = |sku: &SkuState| {
            if now < sku.opens_at_ns {
                Err(RejectReason::NotOpenYet)
            } else if sku.closed_at(now) {
                Err(RejectReason::Closed)
            } else {
                Ok(())
            }
        };
        match policy {
            Policy::FirstCome => unreachable!("first-come products have no pool"),
            Policy::OpeningDraw { .. } => {
                shuffle(&mut tickets, self.pools[pool].shuffle_seed);
                for ticket in tickets {
                    let result = window(&self.skus[ticket.local as usize]).and_then(|()| {
                        self.allocate(
                            ticket.local,
                            &ticket.intent,
                            ticket.intent.quantity,
                            sequence,
                        )
                    });
                    self.settle_ticket(&ticket, result, sequence);
                }
            }
            Policy::OneEachFirst { .. } => {
                // What each ticket may take (its quantity, if it passes every rule but
                // stock), then one unit per ticket per round while units last.
                let mut wanted: Vec<Result<u32, RejectReason>> = tickets
                    .iter()
                    .map(|ticket| {
                        window(&self.skus[ticket.local as usize])?;
                        self.admissible(ticket.local, &ticket.intent)?;
                        Ok(ticket.intent.quantity)
                    })
                    .collect();
                let granted = self.one_each_first(&tickets, &wanted);
                for (index, ticket) in tickets.iter().enumerate() {
                    let result = match std::mem::replace(&mut wanted[index], Ok(0)) {
                        Err(reason) => Err(reason),
                        Ok(_) if granted[index] == 0 => Err(RejectReason::SoldOut),
                        Ok(_) => {
                            self.allocate(ticket.local, &ticket.intent, granted[index], sequence)
                        }
                    };
                    self.settle_ticket(ticket, result, sequence);
                }
            }
        }
    }

    /// One-each-first rounds: every ticket that may take units gets one per round, in
    /// ticket order, while its SKU has units left and it wants more. Returns the units
    /// each ticket gets.
    fn one_each_first(
        &self,
        tickets: &[PoolTicket],
        wanted: &[Result<u32, RejectReason>],
    ) -> Vec<u32> {
        let mut left: Vec<u32> = self.skus.iter().map(|sku| sku.available).collect();
        let mut granted = vec![0u32; tickets.len()];
        loop {
            let mut progress = false;
            for (index, ticket) in tickets.iter().enumerate() {
                let local = ticket.local as usize;
                if let Ok(want) = wanted[index]
                    && granted[index] < want
                    && left[local] > 0
                {
                    granted[index] += 1;
                    left[local] -= 1;
                    progress = true;
                }
            }
            if !progress {
                return granted;
            }
        }
    }

    /// Delivers a served ticket's outcome, or puts it on its waitlist if it asked to wait
    /// and got no unit.
    pub(super) fn settle_ticket(
        &mut self,
        ticket: &PoolTicket,
        result: Result<Order, RejectReason>,
        sequence: u64,
    ) {
        match result {
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if ticket.wait && self.skus[ticket.local as usize].waitlist_capacity > 0 =>
            {
                self.wait_or_refuse(ticket.local, ticket.origin, &ticket.intent, sequence);
            }
            result => self.deferred.push(Deferred {
                origin: ticket.origin,
                intent: ticket.intent,
                outcome: outcome_of(result, sequence),
            }),
        }
    }
}
