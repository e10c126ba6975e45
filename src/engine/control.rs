//! The control plane: payments, cancellations and stock changes, applied by the owning
//! shard's worker in its command order (the single writer), with the caller waiting for
//! the answer.
//!
//! A caller posts its command to the shard's registry (the lock new producer lanes use),
//! bumps the registry generation the worker checks once per pass and before parking, and
//! unparks the worker; then it parks until the worker has written the answer into its
//! reply slot and unparked it. These are rare next to buys (at most one payment per order),
//! so a lock and two wake-ups (some microseconds) are the right price for keeping the buy
//! path untouched.

use core::fmt;

use super::error::ShardFailure;
use super::lane::{ControlRequest, ReplySlot};
use super::shared::EngineShared;
use crate::catalog::SaleWindow;
use crate::core::{Command, LiveSale, OrderView, PoolLevels, ShardCore};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::types::{ControlError, OrderId, ShardId, SkuId};

/// A handle for payments, cancellations and stock changes; from
/// [`Engine::control`](super::Engine::control). `Clone`, `Send` and `Sync`: share it with
/// every thread that needs it.
///
/// Each call is applied by the owning shard in its command order, between two batches of
/// buys, and returns once applied (a few microseconds when the shard is busy; a parked
/// shard is woken). Changes that put units back on sale (a cancellation, a restock, an
/// expired hold) first serve the SKU's waitlist, and lower the sold-out flag producers
/// check.
#[derive(Clone)]
pub struct Control {
    shared: Arc<EngineShared>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("shards", &self.shared.shards.len())
            .finish()
    }
}

impl Control {
    pub(super) fn new(shared: Arc<EngineShared>) -> Self {
        Self { shared }
    }

    /// The shards that have failed and why, in shard order; empty while every shard
    /// runs. A failed shard answers `ShardFailed` to every buy and call from then on, so
    /// a service polls this to say why (a full disk names its journal file) rather than
    /// only count the refusals. Reads each shard's flag, and only a failed shard's lock.
    pub fn failures(&self) -> Vec<(ShardId, ShardFailure)> {
        self.shared
            .shards
            .iter()
            .enumerate()
            .filter(|(_, shard)| shard.failed.load(Ordering::Acquire))
            .filter_map(|(index, shard)| {
                let why = shard.failure.lock().clone()?;
                Some((ShardId(index as u16), why))
            })
            .collect()
    }

    /// The shards whose snapshots could not be written: how many times, and the last
    /// error (the file and the system's error), in shard order; empty while every snapshot
    /// due was written. Such a shard goes on deciding (its journal alone still recovers
    /// it, only replaying more), and tries again `snapshot_every` commands later.
    pub fn snapshot_failures(&self) -> Vec<(ShardId, u64, String)> {
        self.shared
            .shards
            .iter()
            .enumerate()
            .filter_map(|(index, shard)| {
                let count = shard.snapshot_failures.load(Ordering::Acquire);
                let why = shard.snapshot_error.lock().clone();
                (count > 0).then(|| (ShardId(index as u16), count, why.unwrap_or_default()))
            })
            .collect()
    }

    /// Nanoseconds on the engine clock (the clock of holds and sale windows).
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// The buyer paid: the order's units go from held to sold.
    ///
    /// # Errors
    /// [`ControlError::HoldExpired`] if its payment deadline passed first (its units may
    /// already be another buyer's), [`ControlError::AlreadyPaid`],
    /// [`ControlError::Cancelled`], [`ControlError::UnknownOrder`], or the engine's state
    /// ([`ControlError::ShutDown`], [`ControlError::ShardFailed`]).
    pub fn pay(&self, order: OrderId) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_order(order, Command::Pay { order, at_ns })
    }

    /// Cancels an unpaid order: its units go back on sale (to the waitlist first).
    ///
    /// # Errors
    /// As [`pay`](Self::pay); a paid order cannot be cancelled ([`ControlError::AlreadyPaid`]).
    pub fn cancel(&self, order: OrderId) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_order(order, Command::Cancel { order, at_ns })
    }

    /// Adds units of a SKU (to its waitlist first, then on sale).
    ///
    /// # Errors
    /// [`ControlError::UnknownSku`], [`ControlError::StockOverflow`], or the engine's state.
    pub fn restock(&self, sku: SkuId, units: u32) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_sku(sku, Command::Restock { sku, units, at_ns })
    }

    /// Takes units of a SKU off sale; only available units can go.
    ///
    /// # Errors
    /// [`ControlError::NotEnoughAvailable`], [`ControlError::UnknownSku`], or the engine's
    /// state.
    pub fn reduce(&self, sku: SkuId, units: u32) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_sku(sku, Command::Reduce { sku, units, at_ns })
    }

    /// Moves a SKU's sale window (reopening it if it was closed early).
    ///
    /// # Errors
    /// [`ControlError::WindowInverted`], [`ControlError::UnknownSku`], or the engine's state.
    pub fn set_window(&self, sku: SkuId, window: SaleWindow) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_sku(sku, Command::SetWindow { sku, window, at_ns })
    }

    /// Closes a SKU's sale now; every intent waiting for it is rejected `Closed`.
    ///
    /// # Errors
    /// [`ControlError::UnknownSku`], or the engine's state.
    pub fn close_sale(&self, sku: SkuId) -> Result<(), ControlError> {
        let at_ns = self.shared.clock.now_ns();
        self.post_to_sku(sku, Command::CloseSale { sku, at_ns })
    }

    /// An order and where it stands (held with its payment deadline, paid, cancelled,
    /// expired), as of the shard's last durable command: asks the owning shard, changes
    /// nothing. Blocks like the other calls (a few microseconds; with a journal, up to one
    /// group commit).
    ///
    /// # Errors
    /// [`ControlError::UnknownOrder`], or the engine's state.
    pub fn order(&self, order: OrderId) -> Result<OrderView, ControlError> {
        let ShardId(shard) = order.shard();
        if usize::from(shard) >= self.shared.shards.len() {
            return Err(ControlError::UnknownOrder(order));
        }
        self.query(usize::from(shard), move |core| core.order(order))?
            .ok_or(ControlError::UnknownOrder(order))
    }

    /// A SKU's sale now, from its shard, as of its last durable command: its levels
    /// (stock, available, held, sold, waiting, and what came back or left), its window as
    /// moved by operators, and whether it was closed early.
    ///
    /// # Errors
    /// [`ControlError::UnknownSku`], or the engine's state.
    pub fn sale(&self, sku: SkuId) -> Result<LiveSale, ControlError> {
        let shard = self.shard_of(sku)?;
        self.query(shard, move |core| core.live_sale(sku))?
            .ok_or(ControlError::UnknownSku(sku))
    }

    /// The shard that owns `sku`.
    fn shard_of(&self, sku: SkuId) -> Result<usize, ControlError> {
        let index = self
            .shared
            .catalog
            .index_of(sku)
            .ok_or(ControlError::UnknownSku(sku))?;
        let (ShardId(shard), _) = self.shared.placement.route(index);
        Ok(usize::from(shard))
    }

    /// Every SKU's sale now, in catalog order (one question to each shard, about all its
    /// SKUs: with a large catalog, read a page at a time with
    /// [`sales_page`](Self::sales_page)).
    ///
    /// # Errors
    /// The engine's state (the first shard that failed or stopped).
    pub fn sales(&self) -> Result<Vec<LiveSale>, ControlError> {
        let mut sales = Vec::with_capacity(self.shared.catalog.skus().len());
        for shard in 0..self.shared.shards.len() {
            sales.extend(self.query(shard, |core| {
                let ids: Vec<SkuId> = core.levels().map(|sku| sku.id).collect();
                ids.into_iter()
                    .filter_map(|sku| core.live_sale(sku))
                    .collect::<Vec<_>>()
            })?);
        }
        let catalog = &self.shared.catalog;
        sales.sort_by_key(|sale| catalog.index_of(sale.levels.id));
        Ok(sales)
    }

    /// Up to `limit` SKUs' sales in catalog order, from the SKU after `after` (from the
    /// first when `None`): one question to each shard that owns a SKU of the page, about
    /// those SKUs only. [`sales`](Self::sales) reads every SKU of every shard, which with a
    /// large catalog holds each shard's decisions for as long as that takes (all 200,000 SKUs
    /// of a two-shard sale took 12-34 ms here, a page of 1,000 0.24-0.35 ms); a page bounds
    /// it. The page is shorter than `limit` only
    /// at the catalog's end.
    ///
    /// # Errors
    /// [`ControlError::UnknownSku`] for an `after` the catalog does not have, or the
    /// engine's state (the first shard that failed or stopped).
    pub fn sales_page(
        &self,
        after: Option<SkuId>,
        limit: usize,
    ) -> Result<Vec<LiveSale>, ControlError> {
        let catalog = &self.shared.catalog;
        let page = catalog
            .page(after, limit)
            .map_err(ControlError::UnknownSku)?;
        let mut owned: Vec<Vec<SkuId>> = vec![Vec::new(); self.shared.shards.len()];
        let mut sales = Vec::with_capacity(page.len());
        for index in page {
            let (ShardId(shard), _) = self.shared.placement.route(index);
            owned[usize::from(shard)].push(catalog.skus()[index].id);
        }
        for (shard, skus) in owned.into_iter().enumerate() {
            if skus.is_empty() {
                continue;
            }
            sales.extend(self.query(shard, move |core| {
                skus.iter()
                    .filter_map(|&sku| core.live_sale(sku))
                    .collect::<Vec<_>>()
            })?);
        }
        sales.sort_by_key(|sale| catalog.index_of(sale.levels.id));
        Ok(sales)
    }

    /// Whether every shard answers: asks each a question that reads nothing (a readiness
    /// probe that costs the shards no more than a control call).
    ///
    /// # Errors
    /// The engine's state (the first shard that failed or stopped).
    pub fn answering(&self) -> Result<(), ControlError> {
        for shard in 0..self.shared.shards.len() {
            self.query(shard, |_| ())?;
        }
        Ok(())
    }

    /// Every pool (opening draws, one-each-first rounds): its product, when it is served,
    /// whether it was, and the buyers in it (one question to each shard).
    ///
    /// # Errors
    /// The engine's state (the first shard that failed or stopped).
    pub fn pools(&self) -> Result<Vec<PoolLevels>, ControlError> {
        let mut pools = Vec::new();
        for shard in 0..self.shared.shards.len() {
            pools.extend(self.query(shard, |core| core.pools().collect::<Vec<_>>())?);
        }
        Ok(pools)
    }

    /// Asks shard `shard` a read-only question and waits for the answer.
    fn query<T: Send + 'static>(
        &self,
        shard: usize,
        question: impl FnOnce(&ShardCore) -> T + Send + 'static,
    ) -> Result<T, ControlError> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.register(shard, |registry| {
            registry.queries.push(Box::new(move |core| {
                let seen = question(core);
                Box::new(move |durable: bool| {
                    let _ = answer.send(durable.then_some(seen));
                })
            }));
        })?;
        match answered.recv() {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(ControlError::ShardFailed),
            // Dropped unanswered: the shard stopped first.
            Err(_) => Err(ControlError::ShutDown),
        }
    }

    fn post_to_order(&self, order: OrderId, command: Command) -> Result<(), ControlError> {
        let ShardId(shard) = order.shard();
        if usize::from(shard) >= self.shared.shards.len() {
            return Err(ControlError::UnknownOrder(order));
        }
        self.post(usize::from(shard), command)
    }

    fn post_to_sku(&self, sku: SkuId, command: Command) -> Result<(), ControlError> {
        self.post(self.shard_of(sku)?, command)
    }

    fn post(&self, shard: usize, command: Command) -> Result<(), ControlError> {
        let reply = Arc::new(ReplySlot::new(crate::sync::thread::current()));
        self.register(shard, |registry| {
            registry.controls.push(ControlRequest {
                command,
                reply: reply.clone(),
            });
        })?;
        reply.wait()
    }

    /// Puts a request in shard `shard`'s registry (unless the engine or the shard has
    /// stopped), bumps the generation the worker checks, and wakes it.
    fn register(
        &self,
        shard: usize,
        push: impl FnOnce(&mut super::shared::Registry),
    ) -> Result<(), ControlError> {
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(ControlError::ShutDown);
        }
        let shard = &self.shared.shards[shard];
        if shard.failed.load(Ordering::Acquire) {
            return Err(ControlError::ShardFailed);
        }
        {
            let mut registry = shard.registry.lock();
            if registry.closed {
                return Err(ControlError::ShutDown);
            }
            push(&mut registry);
            shard.registry_generation.fetch_add(1, Ordering::Release);
        }
        shard.unpark();
        Ok(())
    }
}
