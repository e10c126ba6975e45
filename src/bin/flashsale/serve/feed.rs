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

use flashsale::{Catalog, JournalConfig, OrderEvent, OrderSink, Placement, ShardCore, ShardId};
use parking_lot::RwLock;
use std::sync::Arc;
use tokio::sync::watch;

/// Every event so far, per shard, and a signal when more arrive.
#[derive(Debug)]
pub struct Feed {
    shards: Vec<RwLock<Vec<OrderEvent>>>,
    /// Bumped after events are added (long polls wait on it).
    added: watch::Sender<u64>,
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
            for (_, command) in &journal.records {
                core.apply(command);
                events.extend(core.take_events());
                core.take_deferred().for_each(drop);
            }
            commands += journal.records.len() as u64;
        }
        Ok(commands)
    }

    /// The order sink that feeds shard `shard`'s live events in.
    pub fn sink(self: &Arc<Self>, shard: ShardId) -> FeedSink {
        FeedSink {
            feed: self.clone(),
            shard: usize::from(shard.0),
        }
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
        self.added.send_modify(|count| *count += 1);
    }

    /// Events shard `shard` holds.
    pub fn len_of(&self, shard: usize) -> usize {
        self.shards[shard].read().len()
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
