//! An engine node: for every partition of a sale it tails the partition's log into a
//! [`Replica`], and where it holds the partition's lease it also publishes the replies,
//! logs ticks when something falls due, and stores snapshots.
//!
//! Every node applies every entry (a standby is as current as the leader, a few
//! milliseconds behind), so failing over is taking the lease: no state moves. A node that
//! still believes it leads after losing its lease (paused, cut off) can only publish
//! replies that the new leader publishes too, computed from the same log: gateways take
//! the first and ignore the second. Its ticks carry the instant they are due as their
//! message id, so JetStream keeps one of each.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{MissedTickBehavior, interval};

use super::nats::{NatsError, Opened, SaleOnNats};
use super::wire;
use super::{Gap, Replica, Reply, Step};
use crate::OrderEvent;
use crate::catalog::{Catalog, Placement};
use crate::types::ShardId;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name in leases (unique among the sale's nodes).
    pub id: String,
    /// How long a lease lasts unless renewed; the leader renews it three times per lease,
    /// and a standby takes over at most this long after the leader stopped renewing.
    pub lease: Duration,
    /// A leader stores a snapshot of a partition after this many entries since the last.
    pub snapshot_every: u64,
    /// The largest quantity one intent may ask for (as the engine's `max_quantity`).
    pub max_quantity: u32,
    /// Orders each partition's replica makes room for (as the engine's
    /// `order_capacity`; `None`: its stock, up to 4,194,304). Past its room a replica's
    /// order book grows mid-sale, a pause of the partition (see
    /// [`ShardCore::order_room`](crate::ShardCore::order_room)).
    pub order_capacity: Option<usize>,
    /// Where a leader records, for each answer it publishes, the time from its entry's
    /// stamp in the log to the answer's hand-off to the NATS client (ns): the log's and
    /// the node's share of a buy's latency. The stamp is the stream leader's clock, the
    /// hand-off this node's: across machines the figure includes their clocks' offset.
    /// `None`: not recorded.
    pub latency: Option<NodeLatency>,
}

/// A histogram of answer latencies (ns) that a node's partitions record into.
pub type NodeLatency = Arc<parking_lot::Mutex<hdrhistogram::Histogram<u64>>>;

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: default_id(),
            lease: Duration::from_secs(2),
            snapshot_every: 100_000,
            max_quantity: 16,
            order_capacity: None,
            latency: None,
        }
    }
}

/// `node-<host>-<pid>`, or `node-<pid>` where the host's name cannot be read: the process
/// id alone repeats across machines (and is 1 in every container), and a leader whose
/// renewal failed takes an entry holding its own id as its lease, so after a failover a
/// paused leader and its successor of the same id would both lead from then on
/// (harmless, each publishing the same replies, but twice the traffic).
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        format!("node-{}", std::process::id())
    } else {
        format!("node-{host}-{}", std::process::id())
    }
}

impl NodeConfig {
    /// The longest node id, in bytes.
    pub const ID_MAX: usize = 256;
    /// The shortest lease: renewed three times per lease, a shorter one would have the
    /// leader writing to the lease bucket more often than every 33 ms.
    pub const LEASE_MIN: Duration = Duration::from_millis(100);
    /// The longest lease: a partition whose leader died waits up to this long for a
    /// standby to take over.
    pub const LEASE_MAX: Duration = Duration::from_secs(3_600);

    /// Whether a node can run with these settings: an id of 1 to [`ID_MAX`](Self::ID_MAX)
    /// bytes without control characters, a lease from [`LEASE_MIN`](Self::LEASE_MIN)
    /// to [`LEASE_MAX`](Self::LEASE_MAX), snapshots and quantities of at least 1.
    /// [`run_node`] and [`follow`] check it before they start.
    ///
    /// # Errors
    /// [`NatsError`] naming the setting and its range.
    pub fn check(&self) -> Result<(), NatsError> {
        if self.id.is_empty()
            || self.id.len() > Self::ID_MAX
            || self.id.chars().any(char::is_control)
        {
            return Err(NatsError::new(
                "node settings",
                format!(
                    "id: {:?}: 1 to {} bytes of text without control characters",
                    self.id,
                    Self::ID_MAX
                ),
            ));
        }
        check_lease(self.lease)?;
        if self.snapshot_every == 0 {
            return Err(NatsError::new(
                "node settings",
                "snapshot_every: must be at least 1 entry",
            ));
        }
        if self.max_quantity == 0 {
            return Err(NatsError::new(
                "node settings",
                "max_quantity: must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A lease within [`NodeConfig::LEASE_MIN`] ..= [`NodeConfig::LEASE_MAX`] (a lease of 0
/// would be a lease bucket whose entries never expire, and no standby would ever take
/// over).
pub(super) fn check_lease(lease: Duration) -> Result<(), NatsError> {
    if (NodeConfig::LEASE_MIN..=NodeConfig::LEASE_MAX).contains(&lease) {
        return Ok(());
    }
    Err(NatsError::new(
        "node settings",
        format!(
            "lease: {lease:?} is outside {:?} to {:?}",
            NodeConfig::LEASE_MIN,
            NodeConfig::LEASE_MAX
        ),
    ))
}

/// What one partition's task saw, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The last log position applied.
    pub applied: u64,
    /// Whether this node holds the partition's lease.
    pub leading: bool,
    /// Entries refused as malformed.
    pub refused: u64,
    /// The log position of the snapshot the partition started from, if it did.
    pub restored_from: Option<u64>,
    /// Why the stored snapshot was not used, if one was fetched and refused: the
    /// partition then started from the log's first entry (the same state, a longer
    /// replay), and the snapshot store deserves a look.
    pub snapshot_refused: Option<crate::cluster::ReplicaSnapshotError>,
    /// Consumers the partition's reader set out to make: the first, and one each time the
    /// last was gone (its NATS server died) or failed; more than 0 once reading began.
    pub reader_restarts: u64,
    /// Snapshots this node stored while leading the partition.
    pub snapshots_stored: u64,
    /// Snapshots it could not store (each is skipped: the next is tried
    /// `snapshot_every` entries later, and a restart replays more of the log meanwhile),
    /// and the last one's error.
    pub snapshots_failed: u64,
    /// The error of the last snapshot that could not be stored.
    pub snapshot_error: Option<String>,
}

/// Runs a node of `sale` (opened with [`SaleOnNats::open`]) until `stop` turns true: one
/// task per partition. Returns when every task
/// ended; a task ends early only when NATS fails in a way it cannot retry.
///
/// # Errors
/// Settings that [`NodeConfig::check`] refuses, or the first partition task's failure.
pub async fn run_node(
    client: async_nats::Client,
    sale: SaleOnNats,
    opened: Opened,
    catalog: Catalog,
    config: NodeConfig,
    status: Option<watch::Sender<Vec<PartitionStatus>>>,
    stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    run_partitions(client, sale, opened, catalog, config, None, status, stop).await
}

/// Receives one partition's order events, in log order, as [`follow`] applies the log.
pub type EventSink = Box<dyn FnMut(&OrderEvent) + Send + Sync>;

/// Follows every partition's log from its first entry without ever leading, handing each
/// partition's order events (confirmed, paid, cancelled, expired) to its sink in
/// `sinks` (one per partition, in partition order) until `stop` turns true.
///
/// A follower reads the logs as an engine node does (the same consumers, the same checks
/// for silent readers and for entries a pull lost) and applies every entry to a replica
/// of its own, but never takes a lease, answers nothing, logs no ticks and stores no
/// snapshots. Its events are therefore the same on every follower, counted from the
/// log's first entry, whenever and wherever it starts: a position in them means the same
/// thing on another follower or after a restart. An entry reaches a follower only once
/// JetStream has stored it on a quorum of the stream's servers, so an event is never
/// handed over that a failover could take back. Starting from the first entry, a
/// follower holds every partition's state, as a node does (see
/// [`NodeConfig::order_capacity`]).
///
/// # Errors
/// [`NatsError`] if `sinks` does not hold one sink per partition, or as
/// [`run_node`].
#[allow(
    clippy::too_many_arguments,
    reason = "the same arguments as run_node, and the sinks"
)]
pub async fn follow(
    client: async_nats::Client,
    sale: SaleOnNats,
    opened: Opened,
    catalog: Catalog,
    config: NodeConfig,
    sinks: Vec<EventSink>,
    status: Option<watch::Sender<Vec<PartitionStatus>>>,
    stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    if sinks.len() != usize::from(sale.partitions()) {
        return Err(NatsError::new(
            "follow the sale's logs",
            format!(
                "{} event sinks for {} partitions",
                sinks.len(),
                sale.partitions()
            ),
        ));
    }
    run_partitions(
        client,
        sale,
        opened,
        catalog,
        config,
        Some(sinks),
        status,
        stop,
    )
    .await
}

/// One task per partition, leading where it can (`sinks` `None`) or only following.
#[allow(
    clippy::too_many_arguments,
    reason = "run_node's and follow's arguments, passed through"
)]
async fn run_partitions(
    client: async_nats::Client,
    sale: SaleOnNats,
    opened: Opened,
    catalog: Catalog,
    config: NodeConfig,
    sinks: Option<Vec<EventSink>>,
    status: Option<watch::Sender<Vec<PartitionStatus>>>,
    stop: watch::Receiver<bool>,
) -> Result<(), NatsError> {
    config.check()?;
    let placement = Placement::new(&catalog, usize::from(sale.partitions()))
        .map_err(|error| NatsError::new("place the catalog", error.to_string()))?;
    crate::EngineBuilder::check_order_room(&catalog, &placement, config.order_capacity)
        .map_err(|error| NatsError::new("node settings", error.to_string()))?;
    opened.check_shape(&catalog, config.max_quantity).await?;
    let status = status.unwrap_or_else(|| watch::channel(Vec::new()).0);
    status.send_replace(vec![
        PartitionStatus::default();
        usize::from(sale.partitions())
    ]);
    let mut sinks = sinks.map(Vec::into_iter);
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..sale.partitions() {
        let events = sinks.as_mut().and_then(Iterator::next);
        let mut replica = Replica::with_order_capacity(
            &catalog,
            &placement,
            ShardId(partition),
            config.max_quantity,
            config.order_capacity,
        );
        replica.record_events(events.is_some());
        let task = PartitionTask {
            client: client.clone(),
            outbox: outbox(client.clone()),
            sale: sale.clone(),
            opened: opened.clone(),
            replica,
            catalog: catalog.clone(),
            placement: placement.clone(),
            config: config.clone(),
            partition,
            status: status.clone(),
            lease_revision: None,
            last_tick_due: None,
            since_snapshot: 0,
            storing: None,
            gate_published: (0, tokio::time::Instant::now()),
            recent: std::collections::VecDeque::new(),
            reader: None,
            repulled: false,
            events,
        };
        tasks.spawn(task.run(stop.clone()));
    }
    let mut first_error = None;
    while let Some(ended) = tasks.join_next().await {
        let result =
            ended.map_err(|error| NatsError::new("a partition task", error.to_string()))?;
        if let Err(error) = result {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

struct PartitionTask {
    client: async_nats::Client,
    /// Replies and gate updates, published in the order they are queued (see [`outbox`]).
    outbox: mpsc::UnboundedSender<(String, bytes::Bytes)>,
    sale: SaleOnNats,
    opened: Opened,
    replica: Replica,
    catalog: Catalog,
    placement: Placement,
    config: NodeConfig,
    partition: u16,
    status: watch::Sender<Vec<PartitionStatus>>,
    /// The lease's revision while this node holds it.
    lease_revision: Option<u64>,
    /// The due instant of the last tick published (one per due instant).
    last_tick_due: Option<(u64, u64)>,
    since_snapshot: u64,
    /// The snapshot being stored, if one is.
    storing: Option<tokio::task::JoinHandle<()>>,
    /// The position and time of the last gate update published (or dropped).
    gate_published: (u64, tokio::time::Instant),
    /// Replies of the entries applied while standing by (the newest [`RECENT_MAX`]): the
    /// old leader may have died before publishing them, so a new leader publishes them at
    /// once rather than wait for gateways to resubmit.
    recent: std::collections::VecDeque<(u64, Vec<Reply>)>,
    /// The partition's consumer, while it is believed to work.
    reader: Option<PullConsumer>,
    /// Whether the reader was pulled again for silence since its last new entry.
    repulled: bool,
    /// A follower's sink for the partition's order events (see [`follow`]); `None` on an
    /// engine node.
    events: Option<EventSink>,
}

/// A partition's publisher: one task that publishes what is queued, in queue order, so
/// that a gateway hears an entry's replies after those of the entries before it (a buy's
/// `Waiting` before the outcome a later entry decides for it) and the gate's updates in
/// order (a task per message would let the runtime publish them in any order). Queuing
/// never waits, so the partition's entries never wait for the connection; the task ends
/// once the partition's sender is dropped and what was queued is published.
fn outbox(client: async_nats::Client) -> mpsc::UnboundedSender<(String, bytes::Bytes)> {
    let (outbox, mut queued) = mpsc::unbounded_channel::<(String, bytes::Bytes)>();
    tokio::spawn(async move {
        while let Some((subject, payload)) = queued.recv().await {
            // Core NATS publishes are buffered by the client; this only queues there.
            let _ = client.publish(subject, payload).await;
        }
    });
    outbox
}

/// How long a partition's reader may stay silent before the node asks the log whether it
/// missed entries.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long making a partition's consumer may take before it is tried again. While
/// JetStream elects a meta leader no consumer can be made, and a request sent then would
/// otherwise wait out the client's 5 s timeout after the new leader was there.
const MAKE_READER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a reader without a consumer waits before asking for an entry not yet written.
const POLL_PAUSE: Duration = Duration::from_millis(10);

/// Entries a reader asks for in one pull (as an ordered consumer does).
const READ_BATCH: usize = 500;

/// How long one pull waits on the server for entries.
const READ_EXPIRES: Duration = Duration::from_secs(10);

/// The server says it is still there this often when it has no entries; two missed and the
/// reader pulls again (a pull sent through a connection that died is lost with it).
const READ_HEARTBEAT: Duration = Duration::from_millis(500);

/// The longest run of entries a reader reads one by one to fill a gap; past it, a new
/// consumer is made from the first missing one.
const GAP_FILL_MAX: u64 = 4_096;

/// What a lease renewal found.
enum Renewal {
    /// The lease is this node's, at this revision.
    Held(u64),
    /// Another node holds it.
    Lost,
    /// The lease bucket did not answer.
    Unreachable,
}

/// Renews the lease `key` at `revision`, or takes it if `revision` is `None`; each request
/// bounded by `bound`.
async fn renew(
    leases: &kv::Store,
    key: &str,
    id: &[u8],
    revision: Option<u64>,
    bound: Duration,
) -> Renewal {
    let create = || async {
        match tokio::time::timeout(bound, leases.create(key, id.to_vec().into())).await {
            Ok(Ok(revision)) => Renewal::Held(revision),
            Ok(Err(error)) if error.kind() == kv::CreateErrorKind::AlreadyExists => Renewal::Lost,
            _ => Renewal::Unreachable,
        }
    };
    let Some(revision) = revision else {
        return create().await;
    };
    let update = leases.update(key, id.to_vec().into(), revision);
    match tokio::time::timeout(bound, update).await {
        Ok(Ok(revision)) => Renewal::Held(revision),
        // Refused, or no answer (a write that timed out may still have landed): the entry
        // says whose the lease is.
        _ => match tokio::time::timeout(bound, leases.entry(key)).await {
            Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put && entry.value == id => {
                Renewal::Held(entry.revision)
            }
            Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => Renewal::Lost,
            // Expired while the bucket could not be reached: take it again at once rather
            // than stand by for a round.
            Ok(Ok(_)) => create().await,
            _ => Renewal::Unreachable,
        },
    }
}

/// How often a leader publishes its gate's news (when there is any).
const GATE_EVERY: Duration = Duration::from_millis(5);

/// A leader publishes its gate at least this often, news or not, so that a gateway that
/// missed an update learns it soon.
const GATE_HEARTBEAT: Duration = Duration::from_millis(500);

/// Entries whose replies a standby keeps for when it takes over.
const RECENT_MAX: usize = 4_096;

/// How long one fetch of a partition's snapshot may take. A fetch can stall for good (its
/// object's chunks stop arriving when the server delivering them dies), and a partition
/// that waited on it would never start; a stalled fetch is tried again.
const SNAPSHOT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches of a snapshot tried before the partition replays its log from the start instead
/// (always correct, only slower).
const SNAPSHOT_FETCH_ATTEMPTS: u32 = 3;

/// What a partition's reader delivered.
enum Read {
    /// The log's entry at a position, stored at an instant (Unix ns).
    Entry(u64, i128, bytes::Bytes),
    /// Silence: pull again from the same consumer.
    Silent,
    /// The reader failed: make a new consumer.
    Failed,
}

type Entries = std::pin::Pin<Box<dyn futures_util::Stream<Item = Read> + Send>>;

/// A consumer's pulled messages as entries.
fn pulled_entries(messages: pull::Stream) -> Entries {
    Box::pin(
        messages
            .filter_map(|message| async move {
                match message {
                    Ok(message) => {
                        let info = message.info().ok()?;
                        Some(Read::Entry(
                            info.stream_sequence,
                            info.published.unix_timestamp_nanos(),
                            message.payload.clone(),
                        ))
                    }
                    Err(error) if error.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                        Some(Read::Silent)
                    }
                    Err(_) => Some(Read::Failed),
                }
            })
            .chain(futures_util::stream::once(async { Read::Failed })),
    )
}

/// The log's entries from `next` on, each read on its own from the stream's leader (no
/// consumer needed): slower than pulling, but it goes on while no consumer can be made.
fn polled_entries(stream: async_nats::jetstream::stream::Stream, next: u64) -> Entries {
    Box::pin(futures_util::stream::unfold(
        (stream, next),
        |(stream, next)| async move {
            loop {
                match tokio::time::timeout(STALL_CHECK, stream.get_raw_message(next)).await {
                    Ok(Ok(entry)) => {
                        let published = entry.time.unix_timestamp_nanos();
                        return Some((
                            Read::Entry(next, published, entry.payload),
                            (stream, next + 1),
                        ));
                    }
                    // Not written yet, or no leader to ask for a moment.
                    _ => tokio::time::sleep(POLL_PAUSE).await,
                }
            }
        },
    ))
}

impl PartitionTask {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), NatsError> {
        // A follower starts from the log's first entry (its events are counted from
        // there) and answers no reads.
        let following = self.events.is_some();
        let mut asks: std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>> = if following {
            Box::pin(futures_util::stream::pending())
        } else {
            self.restore_snapshot().await;
            Box::pin(
                self.client
                    .subscribe(self.sale.subject_ask(self.partition))
                    .await
                    .map_err(|error| NatsError::new("subscribe to reads", error.to_string()))?,
            )
        };
        let mut lease_timer = interval(self.config.lease / 3);
        lease_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (renewed_tx, mut renewed_rx) = mpsc::channel(1);
        let mut renewing = false;
        let mut tick_timer = interval(Duration::from_millis(5));
        tick_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut gate_timer = interval(GATE_EVERY);
        gate_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut replies = Vec::new();
        let mut out = Vec::new();
        let (made_tx, mut made_rx) = mpsc::channel(1);
        let mut making = false;
        'consume: loop {
            // Entries come from the partition's consumer. Making one is a request to
            // JetStream's meta leader, which may be on the server that just died, so it is
            // made in a task of its own, and until it is there the entries are read one by
            // one from the stream's leader. A consumer that exists is pulled from again
            // after silence rather than made anew: its own server answers that.
            if self.reader.is_none() && !making {
                making = true;
                self.start_making_reader(&made_tx);
            }
            let mut entries = match self.reader.clone() {
                Some(consumer) => {
                    let pulled = consumer
                        .stream()
                        .max_messages_per_batch(READ_BATCH)
                        .expires(READ_EXPIRES)
                        .heartbeat(READ_HEARTBEAT)
                        .messages()
                        .await;
                    match pulled {
                        Ok(messages) => pulled_entries(messages),
                        Err(_) => {
                            self.reader = None;
                            if self.pause_or_stop(&mut stop).await {
                                break 'consume;
                            }
                            continue 'consume;
                        }
                    }
                }
                None => polled_entries(
                    self.opened.streams[usize::from(self.partition)].clone(),
                    self.replica.applied() + 1,
                ),
            };
            let mut last_message = tokio::time::Instant::now();
            let mut watchdog = interval(STALL_CHECK);
            watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break 'consume,
                    _ = lease_timer.tick(), if !renewing && !following => {
                        renewing = true;
                        self.start_renewal(&renewed_tx);
                    }
                    Some(renewal) = renewed_rx.recv() => {
                        renewing = false;
                        self.renewed(renewal);
                    }
                    Some(made) = made_rx.recv() => {
                        making = false;
                        self.repulled = false;
                        self.reader = made;
                        continue 'consume;
                    }
                    _ = tick_timer.tick() => self.tick_if_due().await,
                    Some(ask) = asks.next() => self.answer(ask),
                    _ = gate_timer.tick() => self.publish_gate(),
                    _ = watchdog.tick(), if last_message.elapsed() >= STALL_CHECK => {
                        // A reader whose server died, or whose connection moved to another
                        // server, can stay silent rather than fail: when the log has entries
                        // it has not delivered, pull again from the same consumer, and if
                        // that was already tried since the last entry, make a new one.
                        let mut stream = self.opened.streams[usize::from(self.partition)].clone();
                        let info = tokio::time::timeout(STALL_CHECK / 2, stream.info()).await;
                        if let Ok(Ok(info)) = info
                            && info.state.last_sequence > self.replica.applied()
                        {
                            if std::mem::replace(&mut self.repulled, true) {
                                self.reader = None;
                            }
                            continue 'consume;
                        }
                    }
                    read = entries.next() => {
                        let (position, published, payload) = match read {
                            Some(Read::Entry(position, published, payload)) => {
                                (position, published, payload)
                            }
                            // Silence (this node's connection moved, or the consumer's
                            // server is electing): pull again.
                            Some(Read::Silent) => continue 'consume,
                            // Gone, refused or ended: make a new consumer.
                            Some(Read::Failed) | None => {
                                self.reader = None;
                                continue 'consume;
                            }
                        };
                        // Entries a pull lost on the way (sent to a connection that died)
                        // are read one by one from the stream's leader.
                        if position > self.replica.applied() + 1
                            && !self.fill_gap(position, &mut replies, &mut out).await
                        {
                            self.reader = None;
                            continue 'consume;
                        }
                        match self.take_entry(position, published, &payload, &mut replies, &mut out).await {
                            Ok(true) => {
                                last_message = tokio::time::Instant::now();
                                self.repulled = false;
                            }
                            // A redelivery is not progress: the watchdog judges by new
                            // entries.
                            Ok(false) => {}
                            Err(_gap) => {
                                self.reader = None;
                                continue 'consume;
                            }
                        }
                    }
                }
            }
        }
        if renewing {
            // A renewal still under way could take the lease after it is handed over.
            if let Ok(Some(renewal)) =
                tokio::time::timeout(self.config.lease, renewed_rx.recv()).await
            {
                self.renewed(renewal);
            }
        }
        if self.lease_revision.take().is_some() {
            // Hand the partition over at once rather than after the lease runs out.
            let _ = self
                .opened
                .leases
                .delete(format!("p{}", self.partition))
                .await;
        }
        Ok(())
    }

    /// Makes the partition's consumer in a task of its own, which reports on `made`:
    /// ephemeral, in memory, without acks, delivering from the entry after the last applied
    /// one (entries applied meanwhile are delivered again and skipped). `None` if
    /// JetStream did not make it in time, reported after a pause.
    fn start_making_reader(&self, made: &mpsc::Sender<Option<PullConsumer>>) {
        self.update_status(|status| status.reader_restarts += 1);
        let stream = self.opened.streams[usize::from(self.partition)].clone();
        let config = pull::Config::from(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: self.replica.applied() + 1,
            },
            ..Default::default()
        });
        let made = made.clone();
        tokio::spawn(async move {
            let consumer =
                match tokio::time::timeout(MAKE_READER_TIMEOUT, stream.create_consumer(config))
                    .await
                {
                    Ok(Ok(consumer)) => Some(consumer),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        None
                    }
                };
            let _ = made.send(consumer).await;
        });
    }

    /// Reads the entries before `position` that the reader has not delivered, one by one
    /// from the stream (each a request its leader answers), and applies them. False if one
    /// could not be read, or the gap is too long to read this way.
    async fn fill_gap(
        &mut self,
        position: u64,
        replies: &mut Vec<Reply>,
        out: &mut Vec<u8>,
    ) -> bool {
        if position - self.replica.applied() > GAP_FILL_MAX {
            return false;
        }
        let stream = self.opened.streams[usize::from(self.partition)].clone();
        while self.replica.applied() + 1 < position {
            let next = self.replica.applied() + 1;
            let Ok(Ok(entry)) =
                tokio::time::timeout(STALL_CHECK, stream.get_raw_message(next)).await
            else {
                return false;
            };
            let published = entry.time.unix_timestamp_nanos();
            if self
                .take_entry(next, published, &entry.payload, replies, out)
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// Applies the log's entry at `position` (stored at `published`, Unix ns): publishes
    /// its replies when leading, keeps them when standing by, stores a snapshot when one is
    /// due. True if it was new, false if already applied.
    async fn take_entry(
        &mut self,
        position: u64,
        published: i128,
        payload: &[u8],
        replies: &mut Vec<Reply>,
        out: &mut Vec<u8>,
    ) -> Result<bool, Gap> {
        let stamp = self.opened.sale_ns(published);
        replies.clear();
        match self.replica.apply(position, stamp, payload, replies)? {
            Step::Refused(_) => self.update_status(|status| status.refused += 1),
            Step::Applied { .. } => {}
            Step::AlreadyApplied => return Ok(false),
        }
        if let Some(sink) = &mut self.events {
            self.replica.take_events().for_each(|event| sink(&event));
        }
        if self.lease_revision.is_some() {
            self.publish_replies(position, replies, out);
            if let Some(latency) = &self.config.latency
                && !replies.is_empty()
            {
                let now = self.opened.now_ns();
                latency
                    .lock()
                    .saturating_record_n(now.saturating_sub(stamp).max(1), replies.len() as u64);
            }
        } else if !replies.is_empty() && self.events.is_none() {
            if self.recent.len() == RECENT_MAX {
                self.recent.pop_front();
            }
            self.recent.push_back((position, replies.clone()));
        }
        self.since_snapshot += 1;
        if self.lease_revision.is_some() && self.since_snapshot >= self.config.snapshot_every {
            self.store_snapshot();
        }
        let applied = self.replica.applied();
        self.update_status(|status| status.applied = applied);
        // A pool being served gets its next slice as soon as the last is applied, not at
        // the next tick of the timer.
        if self.replica.core().serving_pool() {
            self.tick_if_due().await;
        }
        Ok(true)
    }

    /// Waits a little before retrying NATS; true if told to stop meanwhile.
    async fn pause_or_stop(&self, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = stop.changed() => true,
            _ = tokio::time::sleep(Duration::from_millis(200)) => *stop.borrow(),
        }
    }

    fn update_status(&self, change: impl FnOnce(&mut PartitionStatus)) {
        self.status.send_modify(|all| {
            if let Some(status) = all.get_mut(usize::from(self.partition)) {
                change(status);
            }
        });
    }

    /// Starts renewing the lease (if held) or taking it (if free) in a task of its own,
    /// which reports on `renewed`: while the lease bucket elects a leader its requests time
    /// out, and the partition's entries must not wait for them.
    fn start_renewal(&self, renewed: &mpsc::Sender<Renewal>) {
        let leases = self.opened.leases.clone();
        let key = format!("p{}", self.partition);
        let id = self.config.id.clone().into_bytes();
        let revision = self.lease_revision;
        let bound = self.config.lease / 3;
        let renewed = renewed.clone();
        tokio::spawn(async move {
            let renewal = renew(&leases, &key, &id, revision, bound).await;
            let _ = renewed.send(renewal).await;
        });
    }

    /// Takes what a renewal found.
    fn renewed(&mut self, renewal: Renewal) {
        self.lease_revision = match renewal {
            Renewal::Held(revision) => Some(revision),
            Renewal::Lost => None,
            // The bucket has no leader (its server died and it is electing): nobody can
            // take the lease meanwhile, so the holder goes on leading and the standbys
            // go on standing by. A second leader would be harmless (see the module docs:
            // both publish the same replies), but the bucket cannot make one until it
            // answers again, and then the holder's next renewal settles who leads.
            Renewal::Unreachable => self.lease_revision,
        };
        let leading = self.lease_revision.is_some();
        if leading {
            let mut out = Vec::new();
            while let Some((position, mut replies)) = self.recent.pop_front() {
                self.publish_replies(position, &mut replies, &mut out);
            }
        }
        self.update_status(|status| status.leading = leading);
    }

    /// Publishes each gateway's replies from one entry as one message.
    fn publish_replies(&self, position: u64, replies: &mut [Reply], out: &mut Vec<u8>) {
        if replies.is_empty() {
            return;
        }
        // Stable: each gateway's replies keep the order they were decided in.
        replies.sort_by_key(|reply| reply.gateway);
        for group in replies.chunk_by(|a, b| a.gateway == b.gateway) {
            wire::encode_replies(
                self.partition,
                position,
                group.iter().map(|reply| (reply.request, reply.answer)),
                out,
            );
            let subject = self.sale.subject_out(group[0].gateway);
            let _ = self.outbox.send((subject, out.clone().into()));
        }
    }

    /// Answers a read while leading (a standby stays silent: the reader hears the leader
    /// only, which has published every answer it read). A malformed query is answered
    /// with an empty message, which no reader takes for an answer.
    fn answer(&self, ask: async_nats::Message) {
        let Some(reply) = ask.reply else { return };
        if self.lease_revision.is_none() {
            return;
        }
        let payload = match super::view::decode_query(&ask.payload) {
            Ok(query) => self.replica.answer(self.partition, query),
            Err(_) => Vec::new(),
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let _ = client.publish(reply, payload.into()).await;
        });
    }

    /// Publishes the gate's news while leading (a standby only drops it: its updates
    /// would be cut at other positions than the leader's, which gateways would take for
    /// a gap).
    fn publish_gate(&mut self) {
        let applied = self.replica.applied();
        let quiet =
            applied == self.gate_published.0 && self.gate_published.1.elapsed() < GATE_HEARTBEAT;
        if quiet {
            return;
        }
        let update = self.replica.take_gate();
        if self.lease_revision.is_none() {
            return;
        }
        self.gate_published = (applied, tokio::time::Instant::now());
        let subject = self.sale.subject_gate(self.partition);
        let _ = self.outbox.send((subject, update.encode().into()));
    }

    /// Logs a tick when something fell due (once per due instant), or, while a pool is
    /// being served, once per entry applied (each tick serves it one more slice).
    async fn tick_if_due(&mut self) {
        if self.lease_revision.is_none() {
            return;
        }
        let Some(due) = self.replica.next_due_ns() else {
            return;
        };
        let after = if self.replica.core().serving_pool() {
            self.replica.applied()
        } else {
            0
        };
        if due > self.opened.now_ns() || self.last_tick_due == Some((due, after)) {
            return;
        }
        let publish = PublishMessage::build()
            .payload(wire::encode_tick(0).into())
            .message_id(format!("tick-{}-{due}-{after}", self.partition));
        let sent = self
            .opened
            .js
            .send_publish(self.sale.subject_in(self.partition), publish)
            .await;
        if sent.is_ok() {
            self.last_tick_due = Some((due, after));
        }
    }

    /// Takes a snapshot and stores it in the background: storing tens of megabytes takes
    /// a second or more, and the partition's entries must not wait for it. One store at a
    /// time (a later one must not be overtaken by an earlier one); while one is under way
    /// the next waits for the following entry.
    fn store_snapshot(&mut self) {
        if self
            .storing
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let bytes = self.replica.snapshot();
        let name = format!("p{}", self.partition);
        let snapshots = self.opened.snapshots.clone();
        let status = self.status.clone();
        let partition = usize::from(self.partition);
        self.since_snapshot = 0;
        self.storing = Some(tokio::spawn(async move {
            let mut reader = std::io::Cursor::new(bytes);
            // A store that fails is counted and named; the next snapshot tries again.
            let stored = snapshots.put(name.as_str(), &mut reader).await;
            status.send_modify(|all| {
                if let Some(status) = all.get_mut(partition) {
                    match stored {
                        Ok(_) => status.snapshots_stored += 1,
                        Err(error) => {
                            status.snapshots_failed += 1;
                            status.snapshot_error = Some(error.to_string());
                        }
                    }
                }
            });
        }));
    }

    /// Starts from the newest stored snapshot, if there is one that fits and it can be
    /// fetched (each fetch bounded by [`SNAPSHOT_FETCH_TIMEOUT`], tried
    /// [`SNAPSHOT_FETCH_ATTEMPTS`] times); else from the log's first entry.
    async fn restore_snapshot(&mut self) {
        let name = format!("p{}", self.partition);
        let mut fetched = None;
        for _ in 0..SNAPSHOT_FETCH_ATTEMPTS {
            match tokio::time::timeout(SNAPSHOT_FETCH_TIMEOUT, self.fetch_snapshot(&name)).await {
                Ok(Some(bytes)) => {
                    fetched = Some(bytes);
                    break;
                }
                // None stored (or none readable): the log's first entry it is.
                Ok(None) => return,
                Err(_stalled) => {}
            }
        }
        let Some(bytes) = fetched else {
            return;
        };
        match Replica::restore_with_order_capacity(
            &self.catalog,
            &self.placement,
            ShardId(self.partition),
            self.config.order_capacity,
            &bytes,
        ) {
            Ok(replica) => {
                let position = replica.applied();
                self.replica = replica;
                self.update_status(|status| {
                    status.restored_from = Some(position);
                    status.applied = position;
                });
            }
            Err(why) => self.update_status(|status| status.snapshot_refused = Some(why)),
        }
    }

    /// The stored snapshot's bytes, or `None` if there is none or it cannot be read.
    async fn fetch_snapshot(&self, name: &str) -> Option<Vec<u8>> {
        let mut object = self.opened.snapshots.get(name).await.ok()?;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .ok()?;
        Some(bytes)
    }
}
