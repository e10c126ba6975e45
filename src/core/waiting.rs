//! Buys that wait: entering a pooled product's pool, serving a pool by its policy (the
//! opening draw, one each first), and serving a SKU's waitlist when units come back.

use super::pool::{REFUSED, Serving, SplitMix64, shuffle_steps};
use super::*;

/// The window rule for a pool's ticket, judged at the instant its pool's window closed.
fn window_at(at_ns: u64, sku: &SkuState) -> Result<(), RejectReason> {
    if at_ns < sku.opens_at_ns {
        Err(RejectReason::NotOpenYet)
    } else if sku.closed_at(at_ns) {
        Err(RejectReason::Closed)
    } else {
        Ok(())
    }
}

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

    /// Queues a buy of a product whose pool is being served, to be decided first come
    /// once it is served in full.
    pub(super) fn after_pool(
        &mut self,
        pool: u32,
        local: u32,
        intent: &Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        let serving = self.pools[pool as usize]
            .serving
            .as_mut()
            .expect("a pool being served");
        let ticket = PoolTicket {
            origin: sequence,
            intent: *intent,
            local,
            wait,
        };
        serving.after.push((ticket, arrival_ns));
        Applied::Waiting { sequence }
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

    /// Starts serving a pool whose window closed: no ticket is taken after this, and its
    /// tickets are served in slices ([`serve_slice`](Self::serve_slice)) after those of
    /// the pools started before it.
    pub(super) fn start_pool(&mut self, pool: usize) {
        let now = self.now_ns;
        let entry = &mut self.pools[pool];
        entry.served = true;
        entry.buyers = Default::default();
        let wants = match entry.policy {
            Policy::OneEachFirst { .. } => Vec::with_capacity(entry.tickets.len()),
            _ => Vec::new(),
        };
        entry.serving = Some(Box::new(Serving {
            at_ns: now,
            done: 0,
            rng: SplitMix64::new(entry.shuffle_seed),
            wants,
            granted: Vec::new(),
            after: Vec::new(),
        }));
        self.serving.push_back(pool as u32);
    }

    /// Whether the SKU at `local` belongs to a pool being served.
    #[inline]
    pub(super) fn in_serving_pool(&self, local: u32) -> bool {
        self.skus
            .get(local as usize)
            .and_then(|sku| sku.pool)
            .is_some_and(|pool| self.pools[pool as usize].serving.is_some())
    }

    /// Serves one slice (the catalog's pool slice, in steps) of the pools being served,
    /// oldest first; at most once per command.
    pub(super) fn serve_slice(&mut self, sequence: u64) {
        if self.sliced_at == sequence {
            return;
        }
        self.sliced_at = sequence;
        let mut budget = u64::from(self.pool_slice);
        while budget > 0
            && let Some(&pool) = self.serving.front()
        {
            budget -= self.serve_steps(pool as usize, budget, sequence);
        }
    }

    /// Serves every pool being served to its end: before a command or a due event that
    /// touches a product being served, so that the pool's outcomes are those it would
    /// have had served at once.
    #[cold]
    pub(super) fn drain_pools(&mut self, sequence: u64) {
        while let Some(&pool) = self.serving.front() {
            self.serve_steps(pool as usize, u64::MAX, sequence);
        }
    }

    /// Does up to `budget` steps of a pool being served (see [`Serving`]); finishes it if
    /// they were its last, deciding the buys that waited for it. Returns the steps done.
    fn serve_steps(&mut self, pool: usize, budget: u64, sequence: u64) -> u64 {
        let mut serving = self.pools[pool]
            .serving
            .take()
            .expect("a pool being served");
        let mut tickets = std::mem::take(&mut self.pools[pool].tickets);
        let policy = self.pools[pool].policy;
        let count = tickets.len() as u64;
        let preparation = match policy {
            Policy::OneEachFirst { .. } => count,
            _ => count.saturating_sub(1),
        };
        let at = serving.at_ns;
        let mut used = 0;
        if serving.done < preparation {
            let to = serving.done.saturating_add(budget).min(preparation);
            match policy {
                Policy::OneEachFirst { .. } => {
                    for index in serving.done..to {
                        let ticket = tickets[index as usize];
                        let want = window_at(at, &self.skus[ticket.local as usize])
                            .and_then(|()| self.admissible(ticket.local, &ticket.intent));
                        match want {
                            Ok(()) => serving.wants.push(ticket.intent.quantity),
                            Err(reason) => {
                                serving.wants.push(REFUSED);
                                self.settle_ticket(&ticket, Err(reason), sequence);
                            }
                        }
                    }
                }
                _ => shuffle_steps(&mut tickets, &mut serving.rng, serving.done, to),
            }
            used = to - serving.done;
            serving.done = to;
        }
        if serving.done >= preparation {
            if matches!(policy, Policy::OneEachFirst { .. })
                && serving.granted.len() != tickets.len()
            {
                serving.granted = self.one_each_first(&tickets, &serving.wants);
            }
            let from = serving.done - preparation;
            let to = from.saturating_add(budget - used).min(count);
            for (index, &ticket) in tickets
                .iter()
                .enumerate()
                .take(to as usize)
                .skip(from as usize)
            {
                let result = match policy {
                    Policy::OneEachFirst { .. } => match serving.wants[index] {
                        REFUSED => continue,
                        _ if serving.granted[index] == 0 => Err(RejectReason::SoldOut),
                        _ => self.allocate(
                            ticket.local,
                            &ticket.intent,
                            serving.granted[index],
                            sequence,
                        ),
                    },
                    _ => window_at(at, &self.skus[ticket.local as usize]).and_then(|()| {
                        self.allocate(
                            ticket.local,
                            &ticket.intent,
                            ticket.intent.quantity,
                            sequence,
                        )
                    }),
                };
                self.settle_ticket(&ticket, result, sequence);
            }
            used += to - from;
            serving.done += to - from;
        }
        if serving.done < preparation + count {
            self.pools[pool].tickets = tickets;
            self.pools[pool].serving = Some(serving);
            return used;
        }
        // Served in full: the buys of its product that came meanwhile, first come.
        self.serving.pop_front();
        for (ticket, arrival_ns) in serving.after {
            let result = self.decide(ticket.local, &ticket.intent, arrival_ns, sequence);
            self.settle_ticket(&ticket, result, sequence);
        }
        used
    }

    /// One-each-first rounds: every ticket that may take units gets one per round, in
    /// ticket order, while its SKU has units left and it wants more. Returns the units
    /// each ticket gets.
    fn one_each_first(&self, tickets: &[PoolTicket], wants: &[u32]) -> Vec<u32> {
        let mut left: Vec<u32> = self.skus.iter().map(|sku| sku.available).collect();
        let mut granted = vec![0u32; tickets.len()];
        loop {
            let mut progress = false;
            for (index, ticket) in tickets.iter().enumerate() {
                let local = ticket.local as usize;
                let want = wants[index];
                if want != REFUSED && granted[index] < want && left[local] > 0 {
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

    /// Delivers a served ticket's outcome (or that of a buy that waited for its pool), or
    /// puts it on its waitlist if it asked to wait and got no unit.
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
