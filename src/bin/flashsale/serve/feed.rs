//! The order event feed: every order event (confirmed, paid, cancelled, expired) of every
//! shard, in each shard's journal order, for downstream systems that must see each exactly
//! once (`GET /orders/events?after=CURSOR`).
//!
//! A position in the feed is a cursor: how many events of each shard come before it,
//! written `n` for one shard and `n0,n1,...` for several. Each shard's events are the
//! events a replay of its journal records, so at start-up the feed is rebuilt by replaying
//! the journals (before the engine opens them), and a cursor taken before a restart means
//! the same position after it. Live events arrive through the engine's order sink, once
//! durable; a long poll waits for them.

use std::time::Duration;

use flashsale::{
    Catalog, JournalConfig, OrderEvent, OrderEventKind, OrderSink, Placement, ShardCore, ShardId,
};
use parking_lot::RwLock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Every event so far, per shard, and a signal when more arrive.
#[derive(Debug)]
pub struct Feed {
    shards: Vec<RwLock<Vec<OrderEvent>>>,
    /// Bumped after events are added (long polls wait on it).
    added: watch::Sender<u64>,
    /// How many of the events are confirmations (orders confirmed in the whole sale).
    confirmed: AtomicU64,
}

/// How many of `events` are confirmations.
fn confirmations(events: &[OrderEvent]) -> u64 {
    events
        .iter()
        .filter(|event| event.kind == OrderEventKind::Confirmed)
        .count() as u64
}

/// Why a cursor was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CursorError {
    /// Not `n` or `n0,n1,...` with one canonical number per shard.
    Malformed,
    /// Past the events this feed holds (another data directory's cursor, or, on a
    /// cluster's gateways, one from a gateway whose follower is a little further on):
    /// the positions it names.
    Ahead(Vec<usize>),
}

impl Feed {
    /// An empty feed over `shards` shards.
    pub fn new(shards: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards).map(|_| RwLock::new(Vec::new())).collect(),
            added: watch::channel(0).0,
            confirmed: AtomicU64::new(0),
        })
    }

    /// Rebuilds the events of the journals in `config.dir` (nothing if there are none):
    /// replays each shard's journal through a core recording events.
    pub fn rebuild(
        &self,
        config: &JournalConfig,
        catalog: &Catalog,
        placement: &Placement,
    ) -> Result<u64, flashsale::journal::JournalError> {
        let mut commands = 0;
        for (shard, events) in self.shards.iter().enumerate() {
            let shard = ShardId(shard as u16);
            let path = config.path_of(shard);
            if !path.exists() {
                continue;
            }
            let journal = flashsale::journal::read(&path)?;
            let mut core = ShardCore::with_order_capacity(catalog, placement, shard, Some(0));
            core.record_events(true);
            let mut events = events.write();
            let before = events.len();
            for (_, command) in &journal.records {
                core.apply(command);
                events.extend(core.take_events());
                core.take_deferred().for_each(drop);
            }
            self.confirmed
                .fetch_add(confirmations(&events[before..]), Ordering::Relaxed);
            commands += journal.records.len() as u64;
        }
        Ok(commands)
    }

    /// Saves every event to the data directory's checkpoint (`feed.checkpoint`), with the
    /// length and CRC-32 of each shard's journal, which the events are exactly those of:
    /// written after a clean shutdown, when every journaled command's events are in the
    /// feed. Written to a temporary file, synced, renamed over the old one, and the
    /// directory synced. Returns the bytes written.
    pub fn save_checkpoint(&self, config: &JournalConfig) -> std::io::Result<u64> {
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        bytes.extend_from_slice(&(self.shards.len() as u32).to_le_bytes());
        let shards: Vec<_> = self.shards.iter().map(|events| events.read()).collect();
        for (shard, events) in shards.iter().enumerate() {
            let (length, crc) = journal_print(config, ShardId(shard as u16))?;
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(&crc.to_le_bytes());
            bytes.extend_from_slice(&(events.len() as u64).to_le_bytes());
        }
        bytes.reserve(shards.iter().map(|events| events.len()).sum::<usize>() * EVENT_LEN + 4);
        for event in shards.iter().flat_map(|events| events.iter()) {
            bytes.extend_from_slice(&event.sequence.to_le_bytes());
            bytes.extend_from_slice(&event.order.0.to_le_bytes());
            bytes.extend_from_slice(&event.user.0.to_le_bytes());
            bytes.extend_from_slice(&event.sku.0.to_le_bytes());
            bytes.extend_from_slice(&event.quantity.to_le_bytes());
            bytes.push(kind_index(event.kind));
            bytes.extend_from_slice(&[0; 7]);
        }
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let path = config.dir.join(CHECKPOINT);
        let temporary = path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(&config.dir)?.sync_all()?;
        Ok(bytes.len() as u64)
    }

    /// Fills the (empty) feed from the data directory's checkpoint instead of replaying
    /// the journals, if there is one and every shard's journal is, byte for byte, the one
    /// it was written from (its length and CRC-32): the events are a function of the
    /// journals (the manifest has already fixed the catalog and the shard count), so they
    /// are the events a replay would give. `Ok(false)`: there is no checkpoint. `Err`: why
    /// it cannot be used (damaged, or the journals moved on since: a start after a crash);
    /// the feed is left empty then.
    pub fn load_checkpoint(&self, config: &JournalConfig) -> Result<bool, String> {
        let path = config.dir.join(CHECKPOINT);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let events = self.check_checkpoint(config, &bytes)?;
        for (shard, events) in self.shards.iter().zip(events) {
            self.confirmed
                .fetch_add(confirmations(&events), Ordering::Relaxed);
            *shard.write() = events;
        }
        Ok(true)
    }

    /// Reads a checkpoint's events, per shard, if it is whole and matches the journals.
    fn check_checkpoint(
        &self,
        config: &JournalConfig,
        bytes: &[u8],
    ) -> Result<Vec<Vec<OrderEvent>>, String> {
        let shards = self.shards.len();
        let head = CHECKPOINT_MAGIC.len() + 4 + shards * 20;
        let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
            return Err("the checkpoint is cut short".to_owned());
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err("the checkpoint's checksum does not match: it is damaged".to_owned());
        }
        if body.len() < head || !body.starts_with(CHECKPOINT_MAGIC) {
            return Err("the checkpoint is not one this version writes".to_owned());
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
        if u32_at(CHECKPOINT_MAGIC.len()) as usize != shards {
            return Err("the checkpoint is of another shard count".to_owned());
        }
        let mut counts = Vec::with_capacity(shards);
        for shard in 0..shards {
            let at = CHECKPOINT_MAGIC.len() + 4 + shard * 20;
            let written = (u64_at(at), u32_at(at + 8));
            let now = journal_print(config, ShardId(shard as u16))
                .map_err(|error| format!("cannot read shard {shard}'s journal: {error}"))?;
            if written != now {
                return Err(format!(
                    "shard {shard}'s journal is not the one the checkpoint was written from \
                     ({} bytes then, {} now)",
                    written.0, now.0
                ));
            }
            counts.push(u64_at(at + 12));
        }
        let total = counts
            .iter()
            .try_fold(0u64, |sum, &count| sum.checked_add(count));
        if total.and_then(|total| total.checked_mul(EVENT_LEN as u64))
            != Some((body.len() - head) as u64)
        {
            return Err("the checkpoint's event counts do not match its length".to_owned());
        }
        let mut records = body[head..].chunks_exact(EVENT_LEN);
        let mut all = Vec::with_capacity(shards);
        for count in counts {
            let mut events = Vec::with_capacity(count as usize);
            for record in records.by_ref().take(count as usize) {
                let field = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap());
                let small = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap());
                let kind = match record[32] {
                    0 => OrderEventKind::Confirmed,
                    1 => OrderEventKind::Paid,
                    2 => OrderEventKind::Cancelled,
                    3 => OrderEventKind::Expired,
                    other => return Err(format!("the checkpoint names an event kind {other}")),
                };
                events.push(OrderEvent {
                    sequence: field(0),
                    kind,
                    order: flashsale::OrderId(field(8)),
                    user: flashsale::UserId(field(16)),
                    sku: flashsale::SkuId(small(24)),
                    quantity: small(28),
                });
            }
            all.push(events);
        }
        Ok(all)
    }

    /// The order sink that feeds shard `shard`'s live events in.
    pub fn sink(self: &Arc<Self>, shard: ShardId) -> FeedSink {
        FeedSink {
            feed: self.clone(),
            shard: usize::from(shard.0),
        }
    }

    /// How many of the events are confirmations: the orders the sale has confirmed.
    #[cfg_attr(
        not(feature = "cluster"),
        allow(
            dead_code,
            reason = "a cluster gateway's live page uses it; tested alone"
        )
    )]
    pub fn confirmed(&self) -> u64 {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Events in the feed, per shard.
    pub fn lengths(&self) -> Vec<usize> {
        self.shards
            .iter()
            .map(|events| events.read().len())
            .collect()
    }

    /// Reads a cursor (`None`: the start).
    pub fn cursor(&self, text: Option<&str>) -> Result<Vec<usize>, CursorError> {
        let Some(text) = text else {
            return Ok(vec![0; self.shards.len()]);
        };
        let positions: Vec<usize> = text
            .split(',')
            .map(|part| {
                let canonical = !part.is_empty()
                    && part.bytes().all(|byte| byte.is_ascii_digit())
                    && (part == "0" || !part.starts_with('0'));
                canonical.then(|| part.parse().ok()).flatten()
            })
            .collect::<Option<_>>()
            .ok_or(CursorError::Malformed)?;
        if positions.len() != self.shards.len() {
            return Err(CursorError::Malformed);
        }
        if self.is_ahead(&positions) {
            return Err(CursorError::Ahead(positions));
        }
        Ok(positions)
    }

    /// Whether `positions` is past the events this feed holds.
    fn is_ahead(&self, positions: &[usize]) -> bool {
        positions
            .iter()
            .zip(self.lengths())
            .any(|(&at, len)| at > len)
    }

    /// Waits up to `within` for the feed to reach `positions`; true if it did.
    pub async fn reach(&self, positions: &[usize], within: Duration) -> bool {
        let mut added = self.added.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            added.borrow_and_update();
            if !self.is_ahead(positions) {
                return true;
            }
            tokio::select! {
                changed = added.changed() => if changed.is_err() { return false },
                () = tokio::time::sleep_until(deadline) => return !self.is_ahead(positions),
            }
        }
    }

    /// Adds shard `shard`'s next event and wakes the long polls.
    pub fn push(&self, shard: usize, event: &OrderEvent) {
        self.shards[shard].write().push(*event);
        if event.kind == OrderEventKind::Confirmed {
            self.confirmed.fetch_add(1, Ordering::Relaxed);
        }
        self.added.send_modify(|count| *count += 1);
    }

    /// A sink for shard `shard`'s events from a source that hands them over from the
    /// first one again each time it starts (a cluster's follower, after a failure): the
    /// n-th event it is handed is added only if the feed does not hold n events of that
    /// shard yet, so a start again adds no event twice.
    #[cfg_attr(
        not(feature = "cluster"),
        allow(dead_code, reason = "the cluster's follower uses it; tested alone")
    )]
    pub fn resuming_sink(
        self: &Arc<Self>,
        shard: usize,
    ) -> impl FnMut(&OrderEvent) + Send + Sync + 'static {
        let feed = self.clone();
        let mut handed = 0;
        move |event| {
            if handed >= feed.shards[shard].read().len() {
                feed.push(shard, event);
            }
            handed += 1;
        }
    }

    /// Writes a cursor.
    pub fn cursor_text(positions: &[usize]) -> String {
        positions
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Up to `limit` events after `positions` (shard by shard) and the cursor after them;
    /// if there are none, waits up to `wait` (or until `stop` resolves) for some.
    pub async fn after(
        &self,
        mut positions: Vec<usize>,
        limit: usize,
        wait: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> (Vec<(u16, OrderEvent)>, Vec<usize>) {
        let mut added = self.added.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        tokio::pin!(stop);
        loop {
            added.borrow_and_update();
            let mut page = Vec::new();
            for (shard, events) in self.shards.iter().enumerate() {
                let events = events.read();
                let from = positions[shard];
                let take = (limit - page.len()).min(events.len() - from);
                page.extend(
                    events[from..from + take]
                        .iter()
                        .map(|event| (shard as u16, *event)),
                );
                positions[shard] += take;
            }
            if !page.is_empty() {
                return (page, positions);
            }
            tokio::select! {
                changed = added.changed() => if changed.is_err() { return (page, positions) },
                () = tokio::time::sleep_until(deadline) => return (page, positions),
                () = &mut stop => return (page, positions),
            }
        }
    }
}

/// The feed's checkpoint in the data directory.
const CHECKPOINT: &str = "feed.checkpoint";

/// What a checkpoint starts with (its format's version in the last two bytes).
const CHECKPOINT_MAGIC: &[u8; 8] = b"FSFEED01";

/// One event in a checkpoint: its sequence, order, user, SKU, quantity, kind, 7 zeros.
const EVENT_LEN: usize = 40;

fn kind_index(kind: OrderEventKind) -> u8 {
    match kind {
        OrderEventKind::Confirmed => 0,
        OrderEventKind::Paid => 1,
        OrderEventKind::Cancelled => 2,
        OrderEventKind::Expired => 3,
    }
}

/// A shard's journal as its length and CRC-32 (0 and 0 if it has none).
fn journal_print(config: &JournalConfig, shard: ShardId) -> std::io::Result<(u64, u32)> {
    match std::fs::read(config.path_of(shard)) {
        Ok(bytes) => Ok((bytes.len() as u64, crc32fast::hash(&bytes))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok((0, 0)),
        Err(error) => Err(error),
    }
}

/// Feeds one shard's events into the [`Feed`].
pub struct FeedSink {
    feed: Arc<Feed>,
    shard: usize,
}

impl OrderSink for FeedSink {
    fn on_confirmed(&mut self, _: &flashsale::Order) {}

    fn wants_events(&self) -> bool {
        true
    }

    fn on_event(&mut self, event: &OrderEvent) {
        self.feed.push(self.shard, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale::{OrderId, SkuId, UserId};

    fn event(sequence: u64) -> OrderEvent {
        OrderEvent {
            sequence,
            kind: OrderEventKind::Confirmed,
            order: OrderId(sequence),
            user: UserId(sequence),
            sku: SkuId(1),
            quantity: 1,
        }
    }

    #[test]
    fn a_resuming_sink_started_again_adds_no_event_twice() {
        let feed = Feed::new(2);
        let mut first = feed.resuming_sink(1);
        (0..3).map(event).for_each(|e| first(&e));
        // Started again from the first event, it goes further this time.
        let mut again = feed.resuming_sink(1);
        (0..5).map(event).for_each(|e| again(&e));
        assert_eq!(feed.lengths(), [0, 5]);
        let sequences: Vec<u64> = feed.shards[1].read().iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [0, 1, 2, 3, 4]);
        assert_eq!(feed.confirmed(), 5, "each confirmation counted once");
        let paid = OrderEvent {
            kind: OrderEventKind::Paid,
            ..event(5)
        };
        again(&paid);
        assert_eq!((feed.lengths(), feed.confirmed()), (vec![0, 6], 5));
    }
}
