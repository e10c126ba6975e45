//! A gateway: the cluster's counterpart of [`AsyncClient`](crate::AsyncClient). It
//! gathers buys per partition into batches (one log entry each), publishes them with a
//! message id (JetStream drops a repeat within its duplicate window), and resolves each
//! buy when its reply comes back from the partition's leader.
//!
//! A buy with no answer after [`GatewayConfig::resubmit_after`] is published again in a
//! later batch: its leader may have died between deciding it and answering. The
//! idempotency key makes that safe: a buy that was confirmed comes back as
//! [`RejectReason::Duplicate`] naming the same order ([`Decided::order`] gives it).
//!
//! A buy that waits (pooled or on a waitlist) is not resubmitted while it waits; if its
//! leader dies, its deferred answer comes from the next leader (which republishes the
//! replies of the last entries it applied while standing by), unless it was decided
//! further back in the gap, in which case the buy ends [`GatewayError::Unanswered`]
//! after [`GatewayConfig::wait_at_most`].

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, oneshot};

use super::Answer;
use super::gate::{GateUpdate, KeyFilter};
use super::nats::{NatsError, Opened, SaleOnNats};
use super::view::{Query, SALES_AT_MAX, decode_order, decode_pools, decode_view, encode_query};
use super::wire::{self, BatchWriter, Buy};
use crate::catalog::{Catalog, Placement};
use crate::core::{Applied, LiveSale, OrderView, PoolLevels};
use crate::hash::SequentialMap;
use crate::types::{Intent, OrderId, Outcome, RejectReason, ShardId, SkuId};

/// How a gateway batches and retries.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a batch waits for more buys after its first (a batch is published at
    /// once when it holds [`wire::BATCH_MAX`]).
    pub linger: Duration,
    /// A buy not answered for this long is published again.
    pub resubmit_after: Duration,
    /// A buy not answered for this long ends [`GatewayError::Unanswered`] (one that waits,
    /// pooled or on a waitlist, has [`wait_at_most`](Self::wait_at_most) instead).
    pub give_up_after: Duration,
    /// A buy answered "waiting" ends [`GatewayError::Unanswered`] if its outcome has not
    /// come this long after it was published: set it above the longest pool window or
    /// waitlist wait of the sale.
    pub wait_at_most: Duration,
    /// The largest quantity one intent may ask for (as the nodes').
    pub max_quantity: u32,
    /// How long a read ([`Gateway::sales`], [`Gateway::order`]) waits for a partition's
    /// leader (no leader answers during a failover).
    pub read_timeout: Duration,
    /// Answer buys of a SKU the leaders published as sold out here, without logging them
    /// (unless their key may have been confirmed: see [`super::gate`]).
    pub sold_out_gate: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_micros(500),
            resubmit_after: Duration::from_millis(1_500),
            give_up_after: Duration::from_secs(30),
            wait_at_most: Duration::from_secs(3_600),
            max_quantity: 16,
            read_timeout: Duration::from_secs(3),
            sold_out_gate: true,
        }
    }
}

impl GatewayConfig {
    /// The longest [`linger`](Self::linger): a batch that waits longer than this for more
    /// buys is a delay no buyer should see.
    pub const LINGER_MAX: Duration = Duration::from_secs(1);
    /// The shortest [`resubmit_after`](Self::resubmit_after) (the gateway looks for buys to
    /// publish again four times as often).
    pub const RESUBMIT_MIN: Duration = Duration::from_millis(1);
    /// The longest of the gateway's other times (a year: any longer is "never").
    pub const TIME_MAX: Duration = Duration::from_secs(365 * 24 * 3_600);

    /// Whether a gateway can run with these settings: [`linger`](Self::linger) at most
    /// [`LINGER_MAX`](Self::LINGER_MAX), [`resubmit_after`](Self::resubmit_after) from
    /// [`RESUBMIT_MIN`](Self::RESUBMIT_MIN), the other times above 0, every time at most
    /// [`TIME_MAX`](Self::TIME_MAX), and quantities of at least 1.
    /// [`Gateway::connect`] checks it before it connects.
    ///
    /// # Errors
    /// [`NatsError`] naming the setting and its range.
    pub fn check(&self) -> Result<(), NatsError> {
        let refuse = |why: String| Err(NatsError::new("gateway settings", why));
        if self.linger > Self::LINGER_MAX {
            return refuse(format!(
                "linger: {:?} is above {:?}",
                self.linger,
                Self::LINGER_MAX
            ));
        }
        for (name, time, least) in [
            ("resubmit_after", self.resubmit_after, Self::RESUBMIT_MIN),
            ("give_up_after", self.give_up_after, Duration::from_nanos(1)),
            ("wait_at_most", self.wait_at_most, Duration::from_nanos(1)),
            ("read_timeout", self.read_timeout, Duration::from_nanos(1)),
        ] {
            if !(least..=Self::TIME_MAX).contains(&time) {
                return refuse(format!(
                    "{name}: {time:?} is outside {least:?} to {:?}",
                    Self::TIME_MAX
                ));
            }
        }
        if self.max_quantity == 0 {
            return refuse("max_quantity: must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// Reads of a partition's SKUs a gateway has in flight at once for one
/// [`Gateway::sales`] or [`Gateway::sales_page`] (each answer up to 324 KiB).
const READS_AT_ONCE: usize = 8;

/// Why a buy has no outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer came within [`GatewayConfig::give_up_after`] (the cluster is down, or a
    /// waiting buy's answer was lost in a failover). The buy may still have been decided:
    /// retrying it with the same key is safe.
    #[error("no answer from the cluster in time")]
    Unanswered,
    /// The gateway is shutting down.
    #[error("the gateway is shut down")]
    ShutDown,
}

/// A buy's outcome through the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// The outcome. A resubmitted buy whose first publication had been confirmed comes
    /// back [`RejectReason::Duplicate`] naming that order (see [`order`](Self::order)).
    pub outcome: Outcome,
    /// Times it was published (more than 1 after a failover).
    pub attempts: u32,
    /// Whether it waited for its outcome (pooled for a draw, or on a waitlist): the node
    /// answered "waiting" first, or the outcome came from a later entry than the buy's.
    pub waited: bool,
}

impl Decided {
    /// The order the buy holds: the one confirmed now or, for a resubmitted buy, the one
    /// its earlier publication confirmed.
    pub fn order(&self) -> Option<OrderId> {
        match self.outcome {
            Outcome::Confirmed(order) => Some(order.id),
            Outcome::Rejected {
                reason: RejectReason::Duplicate(id),
                ..
            } if self.attempts > 1 => Some(id),
            Outcome::Rejected { .. } => None,
        }
    }
}

struct Pending {
    buy: Buy,
    partition: u16,
    first_sent: Instant,
    last_sent: Instant,
    attempts: u32,
    waiting: bool,
    answer: oneshot::Sender<Result<Decided, GatewayError>>,
}

struct Inner {
    id: u64,
    client: async_nats::Client,
    sale: SaleOnNats,
    catalog: Catalog,
    placement: Placement,
    config: GatewayConfig,
    /// Buys awaiting their answer, by request number (sequential: see `SequentialMap`).
    pending: Mutex<SequentialMap<u64, Pending>>,
    /// Operator commands awaiting their answer, by request.
    controls: Mutex<FxHashMap<u64, oneshot::Sender<Applied>>>,
    opened: Opened,
    batchers: Vec<mpsc::UnboundedSender<Buy>>,
    next_request: AtomicU64,
    stats: Counters,
    gate: RwLock<Gate>,
}

/// The gate as this gateway has it (see [`super::gate`]).
struct Gate {
    /// Per catalog index: sold out, as its partition's leader last published.
    sold_out: Vec<bool>,
    partitions: Vec<PartitionGate>,
}

#[derive(Default)]
struct PartitionGate {
    /// The position every update has been applied up to; `None`: the gate is off for the
    /// partition (never synced, or an update was missed) until its filter is fetched.
    synced: Option<u64>,
    filter: Option<KeyFilter>,
    fetching: bool,
}

impl Gate {
    fn turns_away(&self, catalog_index: usize, partition: u16, intent: &Intent) -> bool {
        let Some(gate) = self.partitions.get(usize::from(partition)) else {
            return false;
        };
        self.sold_out.get(catalog_index).copied().unwrap_or(false)
            && gate.synced.is_some()
            && gate
                .filter
                .as_ref()
                .is_some_and(|filter| !filter.may_contain(intent.user.0, intent.client_key))
    }
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    acked: AtomicU64,
    unacked: AtomicU64,
    resubmitted: AtomicU64,
    turned_away: AtomicU64,
    gate_fetches: AtomicU64,
}

/// What a gateway did so far (its `Display` is a one-line summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GatewayStats {
    /// Batches published.
    pub batches: u64,
    /// Of those, acknowledged by JetStream.
    pub acked: u64,
    /// Of those, not acknowledged in time (their buys are resubmitted if unanswered).
    pub unacked: u64,
    /// Buys published again for want of an answer.
    pub resubmitted: u64,
    /// Buys answered sold out by the gate, without the log.
    pub turned_away: u64,
    /// Times a partition's whole key filter was fetched (at the start, and after a missed
    /// update or a change of leader).
    pub gate_fetches: u64,
}

impl std::fmt::Display for GatewayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batches ({} acked, {} not in time), {} buys published again, {} turned away \
             by its gate, {} key filter fetches",
            self.batches,
            self.acked,
            self.unacked,
            self.resubmitted,
            self.turned_away,
            self.gate_fetches
        )
    }
}

/// A handle to the cluster for buys; cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("id", &format_args!("{:016x}", self.inner.id))
            .field("sale", &self.inner.sale)
            .finish_non_exhaustive()
    }
}

/// The gateway's background tasks, stopped when the last handle goes.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Gateway {
    /// Connects a gateway to `sale` (creating its streams and buckets if this is the first
    /// to come). Its id is random; its replies come on its own subject.
    ///
    /// # Errors
    /// Settings that [`GatewayConfig::check`] refuses, NATS refused a step, or the catalog
    /// does not fit the sale's partitions.
    pub async fn connect(
        client: async_nats::Client,
        sale: SaleOnNats,
        catalog: Catalog,
        config: GatewayConfig,
    ) -> Result<Self, NatsError> {
        config.check()?;
        let opened = sale.open(client.clone(), Duration::from_secs(2)).await?;
        Self::connect_opened(client, sale, opened, catalog, config).await
    }

    /// As [`connect`](Self::connect), on a sale already opened (whose epoch the catalog's
    /// instants were read against).
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_opened(
        client: async_nats::Client,
        sale: SaleOnNats,
        opened: Opened,
        catalog: Catalog,
        config: GatewayConfig,
    ) -> Result<Self, NatsError> {
        config.check()?;
        let placement = Placement::new(&catalog, usize::from(sale.partitions()))
            .map_err(|error| NatsError::new("place the catalog", error.to_string()))?;
        opened.check_shape(&catalog, config.max_quantity).await?;
        let id = random_id();
        let replies = client
            .subscribe(sale.subject_out(id))
            .await
            .map_err(|error| NatsError::new("subscribe to replies", error.to_string()))?;
        let gate_updates = client
            .subscribe(sale.subject_gate_all())
            .await
            .map_err(|error| NatsError::new("subscribe to the gate", error.to_string()))?;
        let gate = Gate {
            sold_out: vec![false; catalog.skus().len()],
            partitions: (0..sale.partitions())
                .map(|_| PartitionGate::default())
                .collect(),
        };
        let mut batchers = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..sale.partitions() {
            let (sender, receiver) = mpsc::unbounded_channel();
            batchers.push(sender);
            receivers.push(receiver);
        }
        let inner = Arc::new(Inner {
            id,
            client: client.clone(),
            sale,
            catalog,
            placement,
            config,
            pending: Mutex::new(SequentialMap::default()),
            controls: Mutex::new(FxHashMap::default()),
            opened: opened.clone(),
            batchers,
            next_request: AtomicU64::new(1),
            stats: Counters::default(),
            gate: RwLock::new(gate),
        });
        let mut tasks = Vec::new();
        for (partition, receiver) in receivers.into_iter().enumerate() {
            tasks.push(tokio::spawn(batch_loop(
                inner.clone(),
                opened.clone(),
                partition as u16,
                receiver,
            )));
        }
        tasks.push(tokio::spawn(reply_loop(inner.clone(), replies)));
        if inner.config.sold_out_gate {
            tasks.push(tokio::spawn(gate_loop(inner.clone(), gate_updates)));
        }
        tasks.push(tokio::spawn(resubmit_loop(inner.clone())));
        Ok(Self {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        })
    }

    /// The gateway's id (its replies' subject ends with it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// What the gateway did so far.
    pub fn stats(&self) -> GatewayStats {
        let stats = &self.inner.stats;
        GatewayStats {
            batches: stats.batches.load(Ordering::Relaxed),
            acked: stats.acked.load(Ordering::Relaxed),
            unacked: stats.unacked.load(Ordering::Relaxed),
            resubmitted: stats.resubmitted.load(Ordering::Relaxed),
            turned_away: stats.turned_away.load(Ordering::Relaxed),
            gate_fetches: stats.gate_fetches.load(Ordering::Relaxed),
        }
    }

    /// Buys not answered yet.
    pub fn pending(&self) -> usize {
        self.inner.pending.lock().len()
    }

    /// Buys `intent`; `wait`: wait for units rather than be rejected as sold out (as
    /// [`Command::BuyOrWait`](crate::Command::BuyOrWait)). Malformed intents are answered
    /// here, without the cluster.
    ///
    /// The buy is queued for its partition's log when `buy` is called, not when the
    /// future is first polled: a gateway's buys reach each partition's log in the order
    /// of their calls, however their futures are spawned or polled. Dropping the future
    /// does not take the buy back; its answer is then dropped.
    ///
    /// # Errors
    /// [`GatewayError`]: no answer in time, or the gateway is shutting down.
    pub fn buy(
        &self,
        intent: Intent,
        wait: bool,
    ) -> impl Future<Output = Result<Decided, GatewayError>> + Send + 'static {
        let queued = self.queue(intent, wait);
        async move {
            match queued {
                Queued::Sent(answered) => answered.await.unwrap_or(Err(GatewayError::ShutDown)),
                Queued::Answered(answer) => answer,
            }
        }
    }

    /// Queues a buy for its partition's batch: the receiver of its answer, or the answer
    /// itself where the gateway gives it (malformed, turned away by the gate, shut down).
    fn queue(&self, intent: Intent, wait: bool) -> Queued {
        let inner = &self.inner;
        let partition = match inner.catalog.admit(&intent, inner.config.max_quantity) {
            Ok(index) => {
                let partition = inner.placement.route(index).0.0;
                if !wait && inner.gate.read().turns_away(index, partition, &intent) {
                    inner.stats.turned_away.fetch_add(1, Ordering::Relaxed);
                    return Queued::Answered(Ok(Decided {
                        outcome: Outcome::Rejected {
                            reason: RejectReason::SoldOut,
                            sequence: None,
                        },
                        attempts: 0,
                        waited: false,
                    }));
                }
                partition
            }
            Err(reason) => {
                return Queued::Answered(Ok(Decided {
                    outcome: Outcome::Rejected {
                        reason,
                        sequence: None,
                    },
                    attempts: 0,
                    waited: false,
                }));
            }
        };
        let request = inner.next_request.fetch_add(1, Ordering::Relaxed);
        let buy = Buy {
            request,
            intent,
            wait,
        };
        let (answer, answered) = oneshot::channel();
        let now = Instant::now();
        inner.pending.lock().insert(
            request,
            Pending {
                buy,
                partition,
                first_sent: now,
                last_sent: now,
                attempts: 1,
                waiting: false,
                answer,
            },
        );
        if inner.batchers[usize::from(partition)].send(buy).is_err() {
            inner.pending.lock().remove(&request);
            return Queued::Answered(Err(GatewayError::ShutDown));
        }
        Queued::Sent(answered)
    }
}

impl Gateway {
    /// Asks partition `partition`'s leader.
    async fn ask(&self, partition: u16, query: Query) -> Result<bytes::Bytes, GatewayError> {
        let inner = &self.inner;
        let asked = inner.client.request(
            inner.sale.subject_ask(partition),
            encode_query(query).into(),
        );
        match tokio::time::timeout(inner.config.read_timeout, asked).await {
            Ok(Ok(message)) => Ok(message.payload),
            _ => Err(GatewayError::Unanswered),
        }
    }

    /// Every SKU's sale, in catalog order, each as its partition's leader has it now
    /// (questions of at most [`SALES_AT_MAX`] SKUs to each partition's leader, a few at a
    /// time: a partition's whole answer would pass NATS's largest message).
    ///
    /// # Errors
    /// [`GatewayError::Unanswered`]: a partition's leader did not answer within
    /// [`GatewayConfig::read_timeout`], or its answer was not a view.
    pub async fn sales(&self) -> Result<Vec<LiveSale>, GatewayError> {
        self.sales_in(0..self.inner.catalog.skus().len()).await
    }

    /// Up to `limit` SKUs' sales in catalog order, from the SKU after `after` (from the
    /// first when `None`), each as its partition's leader has it now: only the page's SKUs
    /// are asked for. `None` if the catalog has no SKU `after`.
    ///
    /// # Errors
    /// As [`sales`](Self::sales).
    pub async fn sales_page(
        &self,
        after: Option<SkuId>,
        limit: usize,
    ) -> Result<Option<Vec<LiveSale>>, GatewayError> {
        match self.inner.catalog.page(after, limit) {
            Ok(page) => self.sales_in(page).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The sales of the SKUs at catalog indices `indices`. A placement lists each
    /// partition's SKUs in catalog order, so those of a range are consecutive on each
    /// partition: one question per partition per [`SALES_AT_MAX`] SKUs, up to
    /// [`READS_AT_ONCE`] of them in flight.
    async fn sales_in(&self, indices: Range<usize>) -> Result<Vec<LiveSale>, GatewayError> {
        let partitions = usize::from(self.inner.sale.partitions());
        let mut ranges: Vec<Option<(u32, u32)>> = vec![None; partitions];
        let len = indices.len();
        for index in indices {
            let (ShardId(partition), local) = self.inner.placement.route(index);
            match &mut ranges[usize::from(partition)] {
                Some((_, count)) => *count += 1,
                none => *none = Some((local, 1)),
            }
        }
        let questions = ranges
            .into_iter()
            .enumerate()
            .filter_map(|(partition, range)| Some((partition as u16, range?)))
            .flat_map(|(partition, (first, count))| {
                (0..count.div_ceil(SALES_AT_MAX)).map(move |page| {
                    let skipped = page * SALES_AT_MAX;
                    let query = Query::SalesAt {
                        first: first + skipped,
                        count: (count - skipped).min(SALES_AT_MAX),
                    };
                    (partition, query)
                })
            });
        let views: Vec<Result<_, GatewayError>> = futures_util::stream::iter(questions)
            .map(|(partition, query)| async move {
                let bytes = self.ask(partition, query).await?;
                decode_view(&bytes).map_err(|_| GatewayError::Unanswered)
            })
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        let mut sales = Vec::with_capacity(len);
        for view in views {
            sales.extend(view?.sales);
        }
        let catalog = &self.inner.catalog;
        sales.sort_by_key(|sale| catalog.index_of(sale.levels.id));
        Ok(sales)
    }

    /// Whether every partition's leader answers: asks each for none of its SKUs, at once
    /// (a readiness probe whose answers are a few dozen bytes).
    ///
    /// # Errors
    /// As [`sales`](Self::sales).
    pub async fn answering(&self) -> Result<(), GatewayError> {
        let asked = (0..self.inner.sale.partitions()).map(|partition| async move {
            let bytes = self
                .ask(partition, Query::SalesAt { first: 0, count: 0 })
                .await?;
            decode_view(&bytes).map_err(|_| GatewayError::Unanswered)
        });
        for answer in futures_util::future::join_all(asked).await {
            answer?;
        }
        Ok(())
    }

    /// One SKU's sale, from its partition's leader; `None` if the catalog has no such SKU.
    ///
    /// # Errors
    /// As [`sales`](Self::sales).
    pub async fn sale(&self, sku: SkuId) -> Result<Option<LiveSale>, GatewayError> {
        let Some(index) = self.inner.catalog.index_of(sku) else {
            return Ok(None);
        };
        let (ShardId(partition), local) = self.inner.placement.route(index);
        let query = Query::SalesAt {
            first: local,
            count: 1,
        };
        let bytes = self.ask(partition, query).await?;
        let view = decode_view(&bytes).map_err(|_| GatewayError::Unanswered)?;
        Ok(view.sales.into_iter().find(|sale| sale.levels.id == sku))
    }

    /// Every pool (opening draws, one each first) in catalog order, each as its partition's
    /// leader has it now, with its policy from the catalog (one question to each
    /// partition's leader, asked at once).
    ///
    /// # Errors
    /// As [`sales`](Self::sales); also [`GatewayError::Unanswered`] for a pool whose SKU
    /// this gateway's catalog does not have (a leader of another catalog).
    pub async fn pools(&self) -> Result<Vec<PoolLevels>, GatewayError> {
        let asked = (0..self.inner.sale.partitions()).map(|partition| async move {
            let bytes = self.ask(partition, Query::Pools).await?;
            decode_pools(&bytes).map_err(|_| GatewayError::Unanswered)
        });
        let catalog = &self.inner.catalog;
        let mut pools = Vec::new();
        for answer in futures_util::future::join_all(asked).await {
            for pool in answer?.pools {
                let spec = catalog
                    .sku(pool.first_sku)
                    .ok_or(GatewayError::Unanswered)?;
                pools.push(PoolLevels {
                    policy: catalog.policy_of(spec),
                    first_sku: pool.first_sku,
                    serve_at_ns: pool.serve_at_ns,
                    served: pool.served,
                    tickets: pool.tickets,
                });
            }
        }
        pools.sort_by_key(|pool| catalog.index_of(pool.first_sku));
        Ok(pools)
    }

    /// An order and where it stands, from its partition's leader; `None` if no partition
    /// confirmed it.
    ///
    /// # Errors
    /// As [`sales`](Self::sales).
    pub async fn order(&self, id: OrderId) -> Result<Option<OrderView>, GatewayError> {
        let shard = id.shard().0;
        if shard >= self.inner.sale.partitions() {
            return Ok(None);
        }
        let bytes = self.ask(shard, Query::Order(id)).await?;
        let answer = decode_order(&bytes).map_err(|_| GatewayError::Unanswered)?;
        Ok(answer.order)
    }

    /// The sale's clock now (ns since its epoch), as the nodes stamp entries.
    pub fn now_ns(&self) -> u64 {
        self.inner.opened.now_ns()
    }

    /// The wall-clock instant of the sale clock's 0.
    pub fn epoch(&self) -> std::time::SystemTime {
        self.inner.opened.epoch()
    }

    /// Applies an operator command (a payment, a cancellation, a stock or window change, a
    /// close) on the partition that owns its order or SKU, and returns what it did:
    /// [`Applied::Done`] or [`Applied::Refused`] with the reason. The command is logged
    /// once: its publication is retried under one message id (JetStream keeps one copy
    /// within its two-minute duplicate window), never resubmitted as a new entry, since a
    /// restock applied twice would add its units twice.
    ///
    /// # Errors
    /// [`GatewayError::Unanswered`] if no answer came within
    /// [`GatewayConfig::give_up_after`] (the command may have been applied: read the
    /// order or the sale before repeating it).
    pub async fn control(&self, control: wire::Control) -> Result<Applied, GatewayError> {
        use crate::types::ControlError;
        use wire::Control;
        let inner = &self.inner;
        let partitions = usize::from(inner.sale.partitions());
        let partition = match control {
            Control::Pay(order) | Control::Cancel(order) => {
                let shard = usize::from(order.shard().0);
                if shard >= partitions {
                    return Ok(Applied::Refused {
                        error: ControlError::UnknownOrder(order),
                        sequence: 0,
                    });
                }
                shard as u16
            }
            Control::Restock { sku, .. }
            | Control::Reduce { sku, .. }
            | Control::SetWindow { sku, .. }
            | Control::Close(sku) => match inner.catalog.index_of(sku) {
                Some(index) => inner.placement.route(index).0.0,
                None => {
                    return Ok(Applied::Refused {
                        error: ControlError::UnknownSku(sku),
                        sequence: 0,
                    });
                }
            },
        };
        let request = inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        inner.controls.lock().insert(request, answer);
        let payload: bytes::Bytes = wire::encode_control(inner.id, request, &control).into();
        let message_id = format!("{:016x}-c{request}", inner.id);
        let subject = inner.sale.subject_in(partition);
        let deadline = tokio::time::Instant::now() + inner.config.give_up_after;
        let publish = async {
            loop {
                let message = PublishMessage::build()
                    .payload(payload.clone())
                    .message_id(&message_id);
                if let Ok(ack) = inner.opened.js.send_publish(subject.clone(), message).await
                    && ack.await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let result = tokio::time::timeout_at(deadline, async {
            publish.await;
            answered.await
        })
        .await;
        inner.controls.lock().remove(&request);
        match result {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(GatewayError::ShutDown),
            Err(_) => Err(GatewayError::Unanswered),
        }
    }
}

fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// What became of a buy handed to [`Gateway::buy`].
enum Queued {
    /// Queued for its partition's log; its answer arrives here.
    Sent(oneshot::Receiver<Result<Decided, GatewayError>>),
    /// Answered by the gateway itself (malformed, turned away by the gate, shut down).
    Answered(Result<Decided, GatewayError>),
}

/// Gathers a partition's buys into batches and publishes each until JetStream acks it.
async fn batch_loop(
    inner: Arc<Inner>,
    opened: Opened,
    partition: u16,
    mut buys: mpsc::UnboundedReceiver<Buy>,
) {
    let subject = inner.sale.subject_in(partition);
    let mut js = opened.js.clone();
    // Acks normally take a millisecond; past this, the buys' resubmission takes over.
    js.set_timeout(inner.config.resubmit_after);
    let mut writer = BatchWriter::new(inner.id);
    let mut batch_number = 0u64;
    // Acks awaited in the background, at most this many at once.
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    while let Some(first) = buys.recv().await {
        writer.push(&first);
        let deadline = tokio::time::Instant::now() + inner.config.linger;
        while !writer.is_full() {
            match buys.try_recv() {
                Ok(buy) => writer.push(&buy),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, buys.recv()).await {
                        Ok(Some(buy)) => writer.push(&buy),
                        Ok(None) | Err(_) => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let payload: bytes::Bytes = writer.finish().into();
        batch_number += 1;
        let message_id = format!("{:016x}-{partition}-{batch_number}", inner.id);
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        inner.stats.batches.fetch_add(1, Ordering::Relaxed);
        // Handed to the connection here, in the order the buys came, so that the log
        // has a gateway's batches in that order; only the acks are awaited in the
        // background (a task per publish would let the runtime send them in any order).
        // One attempt: a batch that is not acked (no stream leader for a moment,
        // a server gone) is covered by its buys' resubmission, which keeps the gateway
        // from piling retries onto a cluster that is electing.
        let publish = PublishMessage::build()
            .payload(payload)
            .message_id(&message_id);
        let sent = js.send_publish(subject.clone(), publish).await;
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let acked = match sent {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            let counter = if acked {
                &inner.stats.acked
            } else {
                &inner.stats.unacked
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Applies the leaders' gate updates; fetches a partition's whole filter when one was
/// missed.
async fn gate_loop(inner: Arc<Inner>, mut updates: async_nats::Subscriber) {
    while let Some(message) = updates.next().await {
        let Ok(update) = GateUpdate::decode(&message.payload) else {
            continue;
        };
        let partition = update.partition;
        if usize::from(partition) >= inner.placement.shards() {
            continue;
        }
        let skus = inner.placement.skus_of(ShardId(partition));
        let fetch = {
            let mut gate = inner.gate.write();
            let Gate {
                sold_out,
                partitions,
            } = &mut *gate;
            let Some(state) = partitions.get_mut(usize::from(partition)) else {
                continue;
            };
            match state.synced {
                Some(synced) if update.from <= synced && synced <= update.to => {
                    if let Some(filter) = &mut state.filter {
                        for &(user, client_key) in &update.keys {
                            filter.insert(user, client_key);
                        }
                    }
                    state.synced = Some(update.to);
                    for (&index, &flag) in skus.iter().zip(&update.sold_out) {
                        if let Some(slot) = sold_out.get_mut(index as usize) {
                            *slot = flag;
                        }
                    }
                    false
                }
                // Older than what is applied (a late message): nothing new.
                Some(synced) if update.to < synced => false,
                _ => {
                    // A gap: off until the whole filter is here.
                    state.synced = None;
                    for &index in skus {
                        if let Some(slot) = sold_out.get_mut(index as usize) {
                            *slot = false;
                        }
                    }
                    !std::mem::replace(&mut state.fetching, true)
                }
            }
        };
        if fetch {
            inner.stats.gate_fetches.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(fetch_filter(inner.clone(), partition));
        }
    }
}

/// Fetches a partition's whole key filter from its leader.
async fn fetch_filter(inner: Arc<Inner>, partition: u16) {
    let asked = inner.client.request(
        inner.sale.subject_ask(partition),
        encode_query(Query::Filter).into(),
    );
    let fetched = match tokio::time::timeout(inner.config.read_timeout, asked).await {
        Ok(Ok(message)) => KeyFilter::decode(&message.payload).ok(),
        _ => None,
    };
    let mut gate = inner.gate.write();
    let Some(state) = gate.partitions.get_mut(usize::from(partition)) else {
        return;
    };
    state.fetching = false;
    if let Some((from, applied, filter)) = fetched
        && from == partition
    {
        state.filter = Some(filter);
        state.synced = Some(applied);
    }
}

/// Resolves buys as their replies arrive.
async fn reply_loop(inner: Arc<Inner>, mut replies: async_nats::Subscriber) {
    while let Some(message) = replies.next().await {
        let Ok(replies) = wire::decode_replies(&message.payload) else {
            continue;
        };
        let mut pending = inner.pending.lock();
        for (request, answer) in replies.answers {
            // A deferred outcome is always of a buy that waited, even if the reply that
            // said so was lost (core NATS delivers at most once: a reply published while
            // this gateway's connection is down never arrives).
            let deferred = matches!(answer, Answer::Deferred(_));
            let outcome = match answer {
                Answer::Applied(Applied::Waiting { .. }) => {
                    if let Some(buy) = pending.get_mut(&request) {
                        buy.waiting = true;
                    }
                    continue;
                }
                Answer::Applied(Applied::Decided(outcome)) | Answer::Deferred(outcome) => outcome,
                Answer::Screened(reason) => Outcome::Rejected {
                    reason,
                    sequence: None,
                },
                Answer::Applied(applied @ (Applied::Done { .. } | Applied::Refused { .. })) => {
                    if let Some(answer) = inner.controls.lock().remove(&request) {
                        let _ = answer.send(applied);
                    }
                    continue;
                }
            };
            let Some(buy) = pending.remove(&request) else {
                // Answered already (a second leader, or a resubmission).
                continue;
            };
            let _ = buy.answer.send(Ok(Decided {
                outcome,
                attempts: buy.attempts,
                waited: buy.waiting || deferred,
            }));
        }
    }
}

/// Publishes again the buys left unanswered too long; ends those past the deadline.
async fn resubmit_loop(inner: Arc<Inner>) {
    let mut timer = tokio::time::interval(inner.config.resubmit_after / 4);
    loop {
        timer.tick().await;
        let now = Instant::now();
        let mut again = Vec::new();
        let mut expired = Vec::new();
        {
            let mut pending = inner.pending.lock();
            for (request, buy) in pending.iter_mut() {
                let limit = if buy.waiting {
                    inner.config.wait_at_most
                } else {
                    inner.config.give_up_after
                };
                if now.duration_since(buy.first_sent) >= limit {
                    expired.push(*request);
                } else if !buy.waiting
                    && now.duration_since(buy.last_sent) >= inner.config.resubmit_after
                {
                    buy.last_sent = now;
                    buy.attempts += 1;
                    again.push((buy.partition, buy.buy));
                }
            }
            for request in expired {
                if let Some(buy) = pending.remove(&request) {
                    let _ = buy.answer.send(Err(GatewayError::Unanswered));
                }
            }
        }
        inner
            .stats
            .resubmitted
            .fetch_add(again.len() as u64, Ordering::Relaxed);
        for (partition, buy) in again {
            let _ = inner.batchers[usize::from(partition)].send(buy);
        }
    }
}
