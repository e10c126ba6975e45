//! The reference model: a deliberately simple, sequential statement of a shard's rules.
//!
//! Plain collections (hash maps with the fast Fx hasher, so that it is an honest baseline),
//! one `if` per rule, no tricks. It exists to be obviously correct, so that machines can
//! check the fast [`ShardCore`] against it: the property tests and the `shard_vs_model` fuzzer demand that both give
//! the same result for every command (and the same deferred outcomes), and the concurrent
//! tests replay each shard's applied order through it. `Mutex<Model>` is also the "obvious
//! implementation" baseline that the benchmarks and `flashsale compare` measure the engine
//! against.
//!
//! Behind the `reference` feature (not default for library users; the simulator's `cli`
//! feature turns it on).
//!
//! Every command takes the shard's next sequence number, moves the shard's clock to its
//! instant (never back) and first runs what fell due by then:
//! 1. waitlists of SKUs whose sale closed: every waiting intent is rejected `Closed`;
//! 2. unpaid holds whose deadline passed, earliest `(deadline, order number)` first: the
//!    order expires, its units go back on sale and are offered to the SKU's waitlist;
//! 3. pools whose window closed, in order of their first SKU: they start being served by
//!    their policy, in slices (below).
//!
//! The rules for a buy on a shard, in order:
//! 1. the SKU is not one of this shard's: [`RejectReason::UnknownSku`];
//! 2. its product's pool is still open: it is pooled (see below);
//! 3. quantity 0: [`RejectReason::InvalidQuantity`];
//! 4. arrival before the window opens: [`RejectReason::NotOpenYet`]; at or after it
//!    closes, or after the sale was closed early: [`RejectReason::Closed`];
//! 5. the buyer's `(user, client_key)` already made an order for this product (the SKU's
//!    limit group, or the SKU if it has none): [`RejectReason::Duplicate`] with that
//!    order's id;
//! 6. the buyer's units (held and sold) of this SKU, or of its limit group, plus the
//!    quantity would pass the limit: [`RejectReason::UserLimit`];
//! 7. nothing left: [`RejectReason::SoldOut`]; less than asked:
//!    [`RejectReason::InsufficientStock`] (a buy that asked to wait goes on the SKU's
//!    waitlist instead, if it has one: [`RejectReason::WaitlistFull`] if it is full);
//! 8. otherwise confirmed: order id `(shard, n)` for the shard's `n`-th order, holding
//!    its units until paid, cancelled or expired.
//!
//! Pooling: quantity 0 is rejected, then a closed sale, then a buyer already in the pool
//! ([`RejectReason::AlreadyPooled`]), then a full pool ([`RejectReason::PoolFull`]); else
//! the intent is the buyer's ticket. When served, a ticket is judged on the window at that
//! moment (not open yet, closed), then as a buy from rule 5 on: an opening draw takes the
//! tickets in its draw order (see [`draw_order`]), each for its full quantity;
//! one-each-first takes them in arrival order, grants units one per ticket per round
//! while stock lasts, and confirms each ticket for what it was granted.
//!
//! Slices: serving a pool of `n` tickets takes steps, first its preparation (a draw's
//! shuffle, `n - 1` steps; one-each-first's check of each ticket's window and rules 5 and
//! 6, `n` steps, a ticket refused there answered at its step; then the grants, worked out
//! at once), then one step per ticket taken. The command that sees pools fall due does one
//! slice of steps (the catalog's pool slice) of the pools being served, oldest first, and
//! so does each tick. Before anything else touches a product being served (a buy of it,
//! waiting until the pools being served are served; a restock, reduction, moved window,
//! early close or cancellation on it; an expiry or closing falling due on it) every pool
//! being served is served in full. A payment touches nothing a pool decides. A buy that
//! waited is decided when its pool was served in full, first come, by its arrival.
//!
//! A waitlist is served whenever units come back (cancel, expiry, restock): in order,
//! each waiting intent that fits is confirmed, one now refused by rule 5 or 6 is rejected,
//! one asking for more than is left keeps its place.
//!
//! The draw order is stated here on its own, from the documented algorithm, not taken from
//! the core: a change to the core's shuffle or its generator makes the two disagree.
//!
//! [`ShardCore`]: crate::ShardCore

use rustc_hash::FxHashMap as HashMap;

use crate::catalog::{Catalog, Placement, Policy, SaleWindow};
use crate::core::{Applied, Command, Deferred, SkuLevels};
use crate::types::{
    ControlError, GroupId, Intent, Order, OrderId, Outcome, RejectReason, ShardId, SkuId, UserId,
};

/// What an idempotency key, a limit group's count and a pool are scoped to.
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
    held: u32,
    sold: u32,
    expired: u64,
    cancelled: u64,
    restocked: u64,
    reduced: u64,
    waitlist_filled: u64,
    limit_per_buyer: u32,
    opens_at_ns: u64,
    closes_at_ns: u64,
    closed_early: bool,
    group: Option<GroupId>,
    hold_ns: Option<u64>,
    waitlist_capacity: usize,
    /// `(origin, intent)` in arrival order.
    waiters: Vec<(u64, Intent)>,
}

impl ModelSku {
    /// A SKU as its spec starts it: all its stock available, nothing held or sold.
    fn new(spec: &crate::catalog::SkuSpec) -> Self {
        Self {
            stock: spec.stock,
            available: spec.stock,
            held: 0,
            sold: 0,
            expired: 0,
            cancelled: 0,
            restocked: 0,
            reduced: 0,
            waitlist_filled: 0,
            limit_per_buyer: spec.limit_per_buyer,
            opens_at_ns: spec.window.opens_at_ns,
            closes_at_ns: spec.window.closes_at_ns,
            closed_early: false,
            group: spec.group,
            hold_ns: spec.hold_ns,
            waitlist_capacity: spec.waitlist as usize,
            waiters: Vec::new(),
        }
    }
}

impl ModelSku {
    fn is_closed(&self, now_ns: u64) -> bool {
        self.closed_early || now_ns >= self.closes_at_ns
    }
}

#[derive(Debug, Clone)]
struct ModelPool {
    policy: Policy,
    skus: Vec<SkuId>,
    served: bool,
    /// `(origin, intent, wait)` in arrival order.
    tickets: Vec<(u64, Intent, bool)>,
    seed: u64,
    serving: Option<ModelServing>,
}

/// A pool being served, in slices (see the module docs).
#[derive(Debug, Clone)]
struct ModelServing {
    /// The instant its window closed, as seen when it started: its window rule's instant.
    at_ns: u64,
    /// Steps done.
    done: u64,
    /// Its tickets, in the order they are taken.
    order: Vec<(u64, Intent, bool)>,
    /// One-each-first: each checked ticket's want, or the reason it was refused.
    wants: Vec<Result<u32, RejectReason>>,
    granted: Option<Vec<u32>>,
    /// Buys of its product that came while it was served: `(origin, intent, arrival, wait)`.
    after: Vec<(u64, Intent, u64, bool)>,
}

impl ModelPool {
    fn serve_at(&self, skus: &HashMap<SkuId, ModelSku>) -> u64 {
        let opens = self.skus.iter().map(|id| skus[id].opens_at_ns).min();
        opens
            .unwrap_or(0)
            .saturating_add(self.policy.window_ns().unwrap_or(0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Held,
    Sold,
    Cancelled,
    Expired,
}

#[derive(Debug, Clone, Copy)]
struct ModelOrder {
    user: UserId,
    sku: SkuId,
    units: u32,
    state: State,
}

/// The reference model of one shard (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Model {
    shard: ShardId,
    /// The SKUs this shard owns, in catalog order (for [`levels`](Self::levels)).
    order: Vec<SkuId>,
    skus: HashMap<SkuId, ModelSku>,
    group_limits: HashMap<GroupId, u32>,
    keys: HashMap<(UserId, u64, Product), OrderId>,
    held_of_sku: HashMap<(UserId, SkuId), u32>,
    held_of_group: HashMap<(UserId, GroupId), u32>,
    orders: Vec<ModelOrder>,
    /// `(deadline, order number)` of holds not yet expired or settled.
    deadlines: Vec<(u64, u64)>,
    pools: Vec<ModelPool>,
    pool_of: HashMap<Product, usize>,
    pool_capacity: usize,
    pool_slice: u64,
    /// Pools being served, oldest first.
    serving: std::collections::VecDeque<usize>,
    /// The last command that did a slice.
    sliced_at: Option<u64>,
    now_ns: u64,
    deferred: Vec<Deferred>,
    next_sequence: u64,
    /// False only when no SKU has a waiting buy.
    may_have_waiters: bool,
}

fn product_of(sku: SkuId, group: Option<GroupId>) -> Product {
    group.map_or(Product::Sku(sku), Product::Group)
}

fn rejected(reason: RejectReason, sequence: u64) -> Outcome {
    Outcome::Rejected {
        reason,
        sequence: Some(sequence),
    }
}

impl Model {
    /// The model of a single shard owning the whole catalog (as [`ShardCore::whole`]).
    ///
    /// [`ShardCore::whole`]: crate::ShardCore::whole
    pub fn whole(catalog: &Catalog) -> Self {
        Self::with_skus(catalog, ShardId(0), 0..catalog.skus().len())
    }

    /// As [`whole`](Self::whole), with room made up front for `orders` orders (and as many
    /// buyers and keys, of SKUs and of limit groups), so that a baseline run never
    /// rehashes mid-sale, and every page of that room written once, as the engine's cores
    /// write theirs at start-up: otherwise the kernel zeroes each page at its first
    /// write, mid-sale, and a baseline timed against the engine pays for it.
    pub fn whole_with_capacity(catalog: &Catalog, orders: usize) -> Self {
        let mut model = Self::whole(catalog);
        model.keys.reserve(orders);
        model.held_of_sku.reserve(orders);
        model.held_of_group.reserve(orders);
        model.orders.reserve(orders);
        // Distinct entries spread over each whole table, then cleared: `clear` keeps the
        // allocation, and with it the pages written.
        for number in 0..orders as u64 {
            let user = UserId(number);
            model
                .keys
                .insert((user, number, Product::Sku(SkuId(0))), OrderId(0));
            model.held_of_sku.insert((user, SkuId(0)), 0);
            model.held_of_group.insert((user, GroupId(0)), 0);
        }
        model.keys.clear();
        model.held_of_sku.clear();
        model.held_of_group.clear();
        let blank = ModelOrder {
            user: UserId(0),
            sku: SkuId(0),
            units: 0,
            state: State::Held,
        };
        model.orders.resize(orders, blank);
        model.orders.clear();
        model
    }

    /// The model of shard `shard` under `placement`: it owns the SKUs placed there and
    /// answers [`RejectReason::UnknownSku`] for the rest.
    pub fn for_shard(catalog: &Catalog, placement: &Placement, shard: ShardId) -> Self {
        let owned = placement.skus_of(shard).iter().map(|&index| index as usize);
        Self::with_skus(catalog, shard, owned)
    }

    fn with_skus(catalog: &Catalog, shard: ShardId, owned: impl Iterator<Item = usize>) -> Self {
        let mut order = Vec::new();
        let mut skus = HashMap::default();
        let mut pools: Vec<ModelPool> = Vec::new();
        let mut pool_of = HashMap::default();
        for index in owned {
            let spec = &catalog.skus()[index];
            order.push(spec.id);
            skus.insert(spec.id, ModelSku::new(spec));
            let policy = catalog.policy_of(spec);
            if policy != Policy::FirstCome {
                let product = product_of(spec.id, spec.group);
                let pool = *pool_of.entry(product).or_insert_with(|| {
                    let id = match product {
                        Product::Group(group) => u64::from(group.0),
                        Product::Sku(sku) => 1 << 32 | u64::from(sku.0),
                    };
                    let seed = match policy {
                        Policy::OpeningDraw { seed, .. } => draw_seed(seed, id),
                        _ => 0,
                    };
                    pools.push(ModelPool {
                        policy,
                        skus: Vec::new(),
                        served: false,
                        tickets: Vec::new(),
                        seed,
                        serving: None,
                    });
                    pools.len() - 1
                });
                pools[pool].skus.push(spec.id);
            }
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
            keys: HashMap::default(),
            held_of_sku: HashMap::default(),
            held_of_group: HashMap::default(),
            orders: Vec::new(),
            deadlines: Vec::new(),
            pools,
            pool_of,
            pool_capacity: catalog.pool_capacity() as usize,
            pool_slice: u64::from(catalog.pool_slice()),
            serving: Default::default(),
            sliced_at: None,
            now_ns: 0,
            deferred: Vec::new(),
            next_sequence: 0,
            may_have_waiters: false,
        }
    }

    /// Applies one command, as [`ShardCore::apply`](crate::ShardCore::apply).
    pub fn apply(&mut self, command: &Command) -> Applied {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.now_ns = self.now_ns.max(command.time_ns());
        self.run_due(sequence);
        let touched = match *command {
            Command::Restock { sku, .. }
            | Command::Reduce { sku, .. }
            | Command::SetWindow { sku, .. }
            | Command::CloseSale { sku, .. } => Some(sku),
            Command::Cancel { order, .. } if order.shard() == self.shard => self
                .orders
                .get(order.number() as usize)
                .map(|order| order.sku),
            _ => None,
        };
        if touched.is_some_and(|sku| self.in_serving_pool(sku)) {
            self.drain_pools(sequence);
        }
        let result = match *command {
            Command::Buy { intent, arrival_ns } => {
                return self.decide_buy(intent, arrival_ns, false, sequence);
            }
            Command::BuyOrWait { intent, arrival_ns } => {
                return self.decide_buy(intent, arrival_ns, true, sequence);
            }
            Command::Tick { .. } => {
                self.serve_slice(sequence);
                Ok(())
            }
            Command::Pay { order, .. } => self.pay(order),
            Command::Cancel { order, .. } => self.cancel(order, sequence),
            Command::Restock { sku, units, .. } => self.restock(sku, units, sequence),
            Command::Reduce { sku, units, .. } => self.reduce(sku, units),
            Command::SetWindow { sku, window, .. } => self.set_window(sku, window),
            Command::CloseSale { sku, .. } => self.close_sale(sku, sequence),
        };
        self.run_due(sequence);
        match result {
            Ok(()) => Applied::Done { sequence },
            Err(error) => Applied::Refused { error, sequence },
        }
    }

    /// Applies a [`Command::Buy`].
    pub fn buy(&mut self, intent: &Intent, arrival_ns: u64) -> Applied {
        self.apply(&Command::Buy {
            intent: *intent,
            arrival_ns,
        })
    }

    /// Outcomes of waiting buys decided since the last call, as
    /// [`ShardCore::take_deferred`](crate::ShardCore::take_deferred).
    pub fn take_deferred(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.deferred)
    }

    fn run_due(&mut self, sequence: u64) {
        let now = self.now_ns;
        // Only a waiting buy can be due here; with none anywhere, skip the walk over every
        // SKU (the flag is raised whenever a buy starts waiting).
        if self.may_have_waiters {
            for index in 0..self.order.len() {
                let id = self.order[index];
                let sku = &self.skus[&id];
                if !sku.waiters.is_empty() && sku.is_closed(now) {
                    if self.in_serving_pool(id) {
                        self.drain_pools(sequence);
                    }
                    self.close_waitlist(id, sequence);
                }
            }
            self.may_have_waiters = self.skus.values().any(|sku| !sku.waiters.is_empty());
        }
        loop {
            let due = self
                .deadlines
                .iter()
                .copied()
                .filter(|&(deadline, _)| deadline <= now)
                .min();
            let Some(entry) = due else { break };
            self.deadlines.retain(|&other| other != entry);
            let order = self.orders[entry.1 as usize];
            if order.state == State::Held {
                if self.in_serving_pool(order.sku) {
                    self.drain_pools(sequence);
                }
                self.release(entry.1 as usize, State::Expired, sequence);
            }
        }
        let mut started = false;
        for pool in 0..self.pools.len() {
            if !self.pools[pool].served && self.pools[pool].serve_at(&self.skus) <= now {
                self.start_pool(pool);
                started = true;
            }
        }
        if started {
            self.serve_slice(sequence);
        }
    }

    fn in_serving_pool(&self, sku: SkuId) -> bool {
        let Some(model) = self.skus.get(&sku) else {
            return false;
        };
        self.pool_of
            .get(&product_of(sku, model.group))
            .is_some_and(|&pool| self.pools[pool].serving.is_some())
    }

    fn start_pool(&mut self, pool: usize) {
        let entry = &mut self.pools[pool];
        entry.served = true;
        let tickets = std::mem::take(&mut entry.tickets);
        let order = match entry.policy {
            Policy::OpeningDraw { .. } => draw_order(tickets.len(), entry.seed)
                .into_iter()
                .map(|index| tickets[index])
                .collect(),
            _ => tickets,
        };
        entry.serving = Some(ModelServing {
            at_ns: self.now_ns,
            done: 0,
            order,
            wants: Vec::new(),
            granted: None,
            after: Vec::new(),
        });
        self.serving.push_back(pool);
    }

    fn serve_slice(&mut self, sequence: u64) {
        if self.sliced_at == Some(sequence) {
            return;
        }
        self.sliced_at = Some(sequence);
        let mut budget = self.pool_slice;
        while budget > 0
            && let Some(&pool) = self.serving.front()
        {
            budget -= self.serve_steps(pool, budget, sequence);
        }
    }

    fn drain_pools(&mut self, sequence: u64) {
        while let Some(&pool) = self.serving.front() {
            self.serve_steps(pool, u64::MAX, sequence);
        }
    }

    /// Up to `budget` steps of the pool; returns the steps done.
    fn serve_steps(&mut self, pool: usize, budget: u64, sequence: u64) -> u64 {
        let mut serving = self.pools[pool].serving.take().expect("being served");
        let one_each = matches!(self.pools[pool].policy, Policy::OneEachFirst { .. });
        let count = serving.order.len() as u64;
        let preparation = if one_each {
            count
        } else {
            count.saturating_sub(1)
        };
        let at = serving.at_ns;
        let window = |sku: &ModelSku| {
            if at < sku.opens_at_ns {
                Err(RejectReason::NotOpenYet)
            } else if sku.is_closed(at) {
                Err(RejectReason::Closed)
            } else {
                Ok(())
            }
        };
        let mut used = 0;
        while used < budget && serving.done < preparation + count {
            if serving.done < preparation {
                if one_each {
                    let (origin, intent, wait) = serving.order[serving.done as usize];
                    let want = window(&self.skus[&intent.sku])
                        .and_then(|()| self.admissible(&intent))
                        .map(|()| intent.quantity);
                    if let Err(reason) = want {
                        self.settle(origin, intent, wait, Err(reason), sequence);
                    }
                    serving.wants.push(want);
                }
            } else {
                if one_each && serving.granted.is_none() {
                    serving.granted = Some(self.grants(&serving.order, &serving.wants));
                }
                let index = (serving.done - preparation) as usize;
                let (origin, intent, wait) = serving.order[index];
                let result = if one_each {
                    let granted = serving.granted.as_ref().expect("worked out")[index];
                    match serving.wants[index] {
                        Err(_) => None,
                        Ok(_) if granted == 0 => Some(Err(RejectReason::SoldOut)),
                        Ok(_) => Some(self.take(intent, granted, sequence)),
                    }
                } else {
                    Some(
                        window(&self.skus[&intent.sku])
                            .and_then(|()| self.take(intent, intent.quantity, sequence)),
                    )
                };
                if let Some(result) = result {
                    self.settle(origin, intent, wait, result, sequence);
                }
            }
            serving.done += 1;
            used += 1;
        }
        if one_each && serving.done >= preparation && serving.granted.is_none() {
            serving.granted = Some(self.grants(&serving.order, &serving.wants));
        }
        if serving.done < preparation + count {
            self.pools[pool].serving = Some(serving);
            return used;
        }
        self.serving.pop_front();
        for (origin, intent, arrival_ns, wait) in serving.after {
            let result = self.first_come(intent, arrival_ns, sequence);
            self.settle(origin, intent, wait, result, sequence);
        }
        used
    }

    /// One-each-first's rounds: one unit per ticket per round while it wants more and its
    /// SKU has units left.
    fn grants(
        &self,
        tickets: &[(u64, Intent, bool)],
        wanted: &[Result<u32, RejectReason>],
    ) -> Vec<u32> {
        let mut left: HashMap<SkuId, u32> = self
            .skus
            .iter()
            .map(|(id, sku)| (*id, sku.available))
            .collect();
        let mut granted = vec![0u32; tickets.len()];
        let mut progress = true;
        while progress {
            progress = false;
            for (index, (_, intent, _)) in tickets.iter().enumerate() {
                let left = left.get_mut(&intent.sku).expect("owned");
                if wanted[index].is_ok_and(|want| granted[index] < want) && *left > 0 {
                    granted[index] += 1;
                    *left -= 1;
                    progress = true;
                }
            }
        }
        granted
    }

    fn close_waitlist(&mut self, id: SkuId, sequence: u64) {
        let waiters = std::mem::take(&mut self.skus.get_mut(&id).expect("owned").waiters);
        for (origin, intent) in waiters {
            self.defer(origin, intent, rejected(RejectReason::Closed, sequence));
        }
    }

    fn defer(&mut self, origin: u64, intent: Intent, outcome: Outcome) {
        self.deferred.push(Deferred {
            origin,
            intent,
            outcome,
        });
    }

    fn decide_buy(
        &mut self,
        intent: Intent,
        arrival_ns: u64,
        wait: bool,
        sequence: u64,
    ) -> Applied {
        let Some(sku) = self.skus.get(&intent.sku) else {
            return Applied::Decided(rejected(RejectReason::UnknownSku, sequence));
        };
        let product = product_of(intent.sku, sku.group);
        if let Some(&pool) = self.pool_of.get(&product)
            && !self.pools[pool].served
        {
            let reason = if intent.quantity == 0 {
                Some(RejectReason::InvalidQuantity)
            } else if sku.is_closed(arrival_ns) {
                Some(RejectReason::Closed)
            } else if self.pools[pool]
                .tickets
                .iter()
                .any(|(_, ticket, _)| ticket.user == intent.user)
            {
                Some(RejectReason::AlreadyPooled)
            } else if self.pools[pool].tickets.len() >= self.pool_capacity {
                Some(RejectReason::PoolFull)
            } else {
                self.pools[pool].tickets.push((sequence, intent, wait));
                None
            };
            return match reason {
                Some(reason) => Applied::Decided(rejected(reason, sequence)),
                None => Applied::Waiting { sequence },
            };
        }
        if let Some(&pool) = self.pool_of.get(&product)
            && let Some(serving) = self.pools[pool].serving.as_mut()
        {
            serving.after.push((sequence, intent, arrival_ns, wait));
            return Applied::Waiting { sequence };
        }
        let result = self.first_come(intent, arrival_ns, sequence);
        match result {
            Ok(order) => Applied::Decided(Outcome::Confirmed(order)),
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if wait && self.skus[&intent.sku].waitlist_capacity > 0 =>
            {
                self.enqueue(sequence, intent, sequence)
            }
            Err(reason) => Applied::Decided(rejected(reason, sequence)),
        }
    }

    /// Rules 3 to 8 for a buy of a known SKU, decided now.
    fn first_come(
        &mut self,
        intent: Intent,
        arrival_ns: u64,
        sequence: u64,
    ) -> Result<Order, RejectReason> {
        let sku = &self.skus[&intent.sku];
        if intent.quantity == 0 {
            Err(RejectReason::InvalidQuantity)
        } else if arrival_ns < sku.opens_at_ns {
            Err(RejectReason::NotOpenYet)
        } else if sku.is_closed(arrival_ns) {
            Err(RejectReason::Closed)
        } else {
            self.take(intent, intent.quantity, sequence)
        }
    }

    /// Puts a buy on its SKU's waitlist (or rejects it, waitlist full).
    fn enqueue(&mut self, origin: u64, intent: Intent, sequence: u64) -> Applied {
        let sku = self.skus.get_mut(&intent.sku).expect("owned");
        if sku.waiters.len() >= sku.waitlist_capacity {
            let outcome = rejected(RejectReason::WaitlistFull, sequence);
            if origin == sequence {
                return Applied::Decided(outcome);
            }
            self.defer(origin, intent, outcome);
        } else {
            sku.waiters.push((origin, intent));
            self.may_have_waiters = true;
        }
        Applied::Waiting { sequence }
    }

    /// Rules 5 and 6 for the intent's quantity: `Ok` if it could be confirmed were the
    /// units there.
    fn admissible(&self, intent: &Intent) -> Result<(), RejectReason> {
        let sku = &self.skus[&intent.sku];
        let product = product_of(intent.sku, sku.group);
        if let Some(&id) = self.keys.get(&(intent.user, intent.client_key, product)) {
            return Err(RejectReason::Duplicate(id));
        }
        let of_sku = self
            .held_of_sku
            .get(&(intent.user, intent.sku))
            .copied()
            .unwrap_or(0);
        if u64::from(of_sku) + u64::from(intent.quantity) > u64::from(sku.limit_per_buyer) {
            return Err(RejectReason::UserLimit);
        }
        if let Some(group) = sku.group {
            let of_group = self
                .held_of_group
                .get(&(intent.user, group))
                .copied()
                .unwrap_or(0);
            if u64::from(of_group) + u64::from(intent.quantity)
                > u64::from(self.group_limits[&group])
            {
                return Err(RejectReason::UserLimit);
            }
        }
        Ok(())
    }

    /// Rules 5 to 8, confirming `units` (the intent's quantity, or a one-each-first grant).
    fn take(&mut self, intent: Intent, units: u32, sequence: u64) -> Result<Order, RejectReason> {
        self.admissible(&intent)?;
        let now = self.now_ns;
        let sku = self.skus.get_mut(&intent.sku).expect("owned");
        if sku.available == 0 {
            return Err(RejectReason::SoldOut);
        }
        if sku.available < units {
            return Err(RejectReason::InsufficientStock);
        }
        sku.available -= units;
        sku.held += units;
        let group = sku.group;
        let number = self.orders.len() as u64;
        if let Some(hold_ns) = sku.hold_ns {
            // Past the clock's end: its last instant but one (as the shard keeps it).
            let deadline = now.saturating_add(hold_ns).min(u64::MAX - 1);
            self.deadlines.push((deadline, number));
        }
        let id = OrderId::new(self.shard, number);
        self.orders.push(ModelOrder {
            user: intent.user,
            sku: intent.sku,
            units,
            state: State::Held,
        });
        *self
            .held_of_sku
            .entry((intent.user, intent.sku))
            .or_default() += units;
        if let Some(group) = group {
            *self.held_of_group.entry((intent.user, group)).or_default() += units;
        }
        self.keys.insert(
            (
                intent.user,
                intent.client_key,
                product_of(intent.sku, group),
            ),
            id,
        );
        Ok(Order {
            id,
            user: intent.user,
            sku: intent.sku,
            quantity: units,
            sequence,
        })
    }

    fn settle(
        &mut self,
        origin: u64,
        intent: Intent,
        wait: bool,
        result: Result<Order, RejectReason>,
        sequence: u64,
    ) {
        match result {
            Err(RejectReason::SoldOut | RejectReason::InsufficientStock)
                if wait && self.skus[&intent.sku].waitlist_capacity > 0 =>
            {
                self.enqueue(origin, intent, sequence);
            }
            Ok(order) => self.defer(origin, intent, Outcome::Confirmed(order)),
            Err(reason) => self.defer(origin, intent, rejected(reason, sequence)),
        }
    }

    /// The order by id, if this shard confirmed it and it is still held.
    fn held_order(&self, order: OrderId) -> Result<usize, ControlError> {
        let number = order.number() as usize;
        if order.shard() != self.shard || number >= self.orders.len() {
            return Err(ControlError::UnknownOrder(order));
        }
        match self.orders[number].state {
            State::Held => Ok(number),
            State::Sold => Err(ControlError::AlreadyPaid),
            State::Cancelled => Err(ControlError::Cancelled),
            State::Expired => Err(ControlError::HoldExpired),
        }
    }

    fn pay(&mut self, order: OrderId) -> Result<(), ControlError> {
        let number = self.held_order(order)?;
        let record = &mut self.orders[number];
        record.state = State::Sold;
        let sku = self.skus.get_mut(&record.sku).expect("owned");
        sku.held -= record.units;
        sku.sold += record.units;
        Ok(())
    }

    fn cancel(&mut self, order: OrderId, sequence: u64) -> Result<(), ControlError> {
        let number = self.held_order(order)?;
        self.release(number, State::Cancelled, sequence);
        Ok(())
    }

    fn release(&mut self, number: usize, state: State, sequence: u64) {
        let record = self.orders[number];
        self.orders[number].state = state;
        let sku = self.skus.get_mut(&record.sku).expect("owned");
        sku.held -= record.units;
        sku.available += record.units;
        if state == State::Cancelled {
            sku.cancelled += u64::from(record.units);
        } else {
            sku.expired += u64::from(record.units);
        }
        let group = sku.group;
        *self
            .held_of_sku
            .get_mut(&(record.user, record.sku))
            .expect("the buyer holds it") -= record.units;
        if let Some(group) = group {
            *self
                .held_of_group
                .get_mut(&(record.user, group))
                .expect("the buyer holds it") -= record.units;
        }
        self.serve_waitlist(record.sku, sequence);
    }

    fn serve_waitlist(&mut self, id: SkuId, sequence: u64) {
        let now = self.now_ns;
        if self.skus[&id].is_closed(now) {
            return;
        }
        let waiters = std::mem::take(&mut self.skus.get_mut(&id).expect("owned").waiters);
        let mut kept = Vec::new();
        for (origin, intent) in waiters {
            if self.skus[&id].available == 0 {
                kept.push((origin, intent));
                continue;
            }
            match self.take(intent, intent.quantity, sequence) {
                Err(RejectReason::SoldOut | RejectReason::InsufficientStock) => {
                    kept.push((origin, intent));
                }
                Ok(order) => {
                    self.skus.get_mut(&id).expect("owned").waitlist_filled += 1;
                    self.defer(origin, intent, Outcome::Confirmed(order));
                }
                Err(reason) => self.defer(origin, intent, rejected(reason, sequence)),
            }
        }
        self.skus.get_mut(&id).expect("owned").waiters = kept;
    }

    fn sku_mut(&mut self, sku: SkuId) -> Result<&mut ModelSku, ControlError> {
        self.skus.get_mut(&sku).ok_or(ControlError::UnknownSku(sku))
    }

    fn restock(&mut self, id: SkuId, units: u32, sequence: u64) -> Result<(), ControlError> {
        let sku = self.sku_mut(id)?;
        sku.stock = sku
            .stock
            .checked_add(units)
            .ok_or(ControlError::StockOverflow)?;
        sku.available += units;
        sku.restocked += u64::from(units);
        self.serve_waitlist(id, sequence);
        Ok(())
    }

    fn reduce(&mut self, id: SkuId, units: u32) -> Result<(), ControlError> {
        let sku = self.sku_mut(id)?;
        if units > sku.available {
            return Err(ControlError::NotEnoughAvailable {
                available: sku.available,
            });
        }
        sku.stock -= units;
        sku.available -= units;
        sku.reduced += u64::from(units);
        Ok(())
    }

    fn set_window(&mut self, id: SkuId, window: SaleWindow) -> Result<(), ControlError> {
        let sku = self.sku_mut(id)?;
        if window.closes_at_ns <= window.opens_at_ns {
            return Err(ControlError::WindowInverted);
        }
        sku.opens_at_ns = window.opens_at_ns;
        sku.closes_at_ns = window.closes_at_ns;
        sku.closed_early = false;
        Ok(())
    }

    fn close_sale(&mut self, id: SkuId, sequence: u64) -> Result<(), ControlError> {
        let sku = self.sku_mut(id)?;
        sku.closed_early = true;
        let group = sku.group;
        self.close_waitlist(id, sequence);
        if let Some(&pool) = self.pool_of.get(&product_of(id, group))
            && !self.pools[pool].served
        {
            let tickets = std::mem::take(&mut self.pools[pool].tickets);
            for (origin, intent, wait) in tickets {
                if intent.sku == id {
                    self.defer(origin, intent, rejected(RejectReason::Closed, sequence));
                } else {
                    self.pools[pool].tickets.push((origin, intent, wait));
                }
            }
        }
        Ok(())
    }

    /// Commands applied so far.
    pub fn commands_applied(&self) -> u64 {
        self.next_sequence
    }

    /// Orders confirmed so far.
    pub fn orders_confirmed(&self) -> u64 {
        self.orders.len() as u64
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
                    held: sku.held,
                    sold: sku.sold,
                    expired: sku.expired,
                    cancelled: sku.cancelled,
                    restocked: sku.restocked,
                    reduced: sku.reduced,
                    waiting: sku.waiters.len() as u32,
                    waitlist_filled: sku.waitlist_filled,
                }
            })
            .collect()
    }

    /// The order made for `(user, client_key)` for the product of `sku`, if any and if
    /// this shard owns `sku`.
    pub fn order_for_key(&self, user: UserId, client_key: u64, sku: SkuId) -> Option<OrderId> {
        let group = self.skus.get(&sku)?.group;
        self.keys
            .get(&(user, client_key, product_of(sku, group)))
            .copied()
    }

    /// Units of `sku` that `user` holds or bought (what counts against limits).
    pub fn held_by(&self, user: UserId, sku: SkuId) -> u32 {
        self.held_of_sku.get(&(user, sku)).copied().unwrap_or(0)
    }

    /// Units `user` holds or bought across a limit group.
    pub fn held_of_group(&self, user: UserId, group: GroupId) -> u32 {
        self.held_of_group.get(&(user, group)).copied().unwrap_or(0)
    }
}

/// The seed of a product's draw: the policy's seed, XOR the product's id (`group id`, or
/// `1 << 32 | sku id` for an ungrouped SKU) times `0xD6E8_FEB8_6659_FD93`, modulo 2^64.
pub fn draw_seed(policy_seed: u64, product: u64) -> u64 {
    let mixed = (u128::from(product) * 0xD6E8_FEB8_6659_FD93) % (1u128 << 64);
    policy_seed ^ mixed as u64
}

/// The outputs of SplitMix64 started at `seed` (Steele, Lea and Flood's generator): the
/// state advances by the golden gamma `0x9E37_79B9_7F4A_7C15`; each output is the state
/// through the "variant 13" mix (shifts 30, 27, 31; multipliers `0xBF58_476D_1CE4_E5B9`
/// and `0x94D0_49BB_1331_11EB`).
fn splitmix64(seed: u64) -> impl Iterator<Item = u64> {
    (1u64..).map(move |step| {
        let state = seed.wrapping_add(step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let a = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let b = (a ^ (a >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        b ^ (b >> 31)
    })
}

/// The draw order of `tickets` tickets (indexes into the pool's arrival order): a
/// Fisher-Yates shuffle from the back. For each position `i` from the last down to 1, the
/// next SplitMix64 output `x` picks position `j = floor(x * (i + 1) / 2^64)` in `0..=i`,
/// and the tickets at `i` and `j` trade places.
pub fn draw_order(tickets: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tickets).collect();
    let positions = (1..tickets).rev();
    for (i, x) in positions.zip(splitmix64(seed)) {
        let j = (u128::from(x) * (i as u128 + 1)) >> 64;
        order.swap(i, j as usize);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_gives_its_published_outputs() {
        // The reference implementation's outputs for seed 1234567.
        let first: Vec<u64> = splitmix64(1_234_567).take(5).collect();
        assert_eq!(
            first,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    /// The model's draw and the core's, written apart, agree on every size and seed tried
    /// (the model tests then compare whole sales through them).
    #[test]
    fn the_model_draws_as_the_core_does() {
        let largest = if cfg!(miri) { 300 } else { 5_000 };
        for tickets in [0, 1, 2, 3, 10, 257, largest] {
            for seed in [0, 1, 7, u64::MAX, 0x1234_5678_9ABC_DEF0] {
                let mut core: Vec<usize> = (0..tickets).collect();
                crate::core::shuffle(&mut core, seed);
                assert_eq!(
                    draw_order(tickets, seed),
                    core,
                    "{tickets} tickets, seed {seed}"
                );
                let mut sorted = core.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..tickets).collect::<Vec<_>>());
            }
        }
        for product in [1, 2, 1 << 32 | 9, u64::MAX] {
            assert_eq!(draw_seed(42, product), crate::core::pool_seed(42, product));
        }
    }
}
