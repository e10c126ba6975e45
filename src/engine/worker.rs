//! The shard worker: one thread per shard, the single writer of its core.
//!
//! Its loop: pick up newly registered producer lanes, take a batch from each lane's request
//! ring, decide each intent with the core, write the completions and publish them once per
//! batch, record latencies; when idle, wait by the configured strategy. On shutdown it
//! closes every request ring (linearizable against publishes, see [`crate::ring`]), drains
//! them and returns its report.
//!
//! Park protocol (no lost wake-up), used only with [`WaitStrategy::Park`]: the worker stores
//! `sleeping = true`, issues a SeqCst fence, then reads every lane's tail, the registry
//! generation and the shutdown flag; it parks only if all are unchanged. A producer
//! publishes its intent with a SeqCst compare-exchange on the ring's tail, then loads
//! `sleeping` (SeqCst) and unparks the worker if it is set. The worker's fence and the
//! producer's two SeqCst operations are ordered one way or the other in the single total
//! order of SeqCst operations and fences, so either the worker sees the intent or the
//! producer sees the flag (a store-buffering litmus test). loom does not model SeqCst
//! loads and stores beyond AcqRel, so under loom the producer issues a SeqCst fence
//! between the two (`sync::after_seqcst_rmw`), and the models check that form.

use std::panic::{AssertUnwindSafe, catch_unwind};

use hdrhistogram::Histogram;

use rustc_hash::FxHashMap;

use super::durability::Durability;
use super::error::ShardFailure;
use super::lane::{ControlRequest, DeferredQueue, Reply, Request, WorkerLane};
use super::shared::{EngineShared, OrderSink, Query, WaitStrategy};
use crate::core::{Applied, Command, Deferred, Effects, OrderEvent, PREFETCH_AHEAD, ShardCore};
use crate::report::ShardReport;
use crate::report::{CONFIRMED_ORDERS, CONFIRMED_UNITS, COUNTER_SLOTS};
use crate::sync::Arc;
use crate::sync::atomic::{Ordering, fence};
use crate::types::{
    Completion, ControlError, Intent, Order, Outcome, RejectReason, ShardId, Ticket,
};

/// Where the outcome of a buy that waits goes.
struct Pending {
    deferred: Arc<DeferredQueue>,
    ticket: Ticket,
    intent: Intent,
}

/// Everything a worker thread owns.
pub(crate) struct Worker {
    shared: Arc<EngineShared>,
    shard: ShardId,
    core: ShardCore,
    sink: Option<Box<dyn OrderSink>>,
    /// The number of the last order confirmed (debug builds check the shard's order).
    #[cfg(debug_assertions)]
    last_order_number: Option<u64>,
    wait: WaitStrategy,
    batch_max: usize,
    lanes: Vec<WorkerLane>,
    registry_generation_seen: u64,
    /// Per local SKU index: its catalog index (for the gate).
    catalog_index_of: Vec<usize>,
    failed: bool,
    counts: [u64; COUNTER_SLOTS],
    /// Submit-to-outcome latency, ns: from the producer's arrival stamp to the moment the
    /// batch holding the outcome was published to its producer. Made (about 270 KB) on the
    /// shard's own thread as it starts, so that its memory is first touched there (on the
    /// shard's NUMA node) and the thread starting the engine does not clear it.
    latency_ns: Histogram<u64>,
    /// The batch being decided, copied out of its ring so that its order-book slots can be
    /// prefetched ahead of the decisions; capacity `batch_max`, allocated once.
    batch: Vec<Request>,
    /// Buys that wait (pooled, or on a waitlist), by the sequence number of their command.
    pending: FxHashMap<u64, Pending>,
    /// The core's levels version last published to the gate and the live levels.
    levels_version_seen: u64,
    deferred: Vec<Deferred>,
    /// In memory or journaled: whether outputs go out at once or once durable.
    durability: Durability,
}

/// Starts loading what deciding `request` reads and writes: its order book slots and, if
/// it may be confirmed, its word of the sold-out gate's filter. A hint only.
#[inline]
fn prefetch(core: &ShardCore, shared: &EngineShared, shard: ShardId, request: &Request) {
    core.prefetch_at(request.local, &request.intent);
    if core.available_local(request.local) > 0 {
        shared.gate.prefetch(
            usize::from(shard.0),
            request.intent.user.0,
            request.intent.client_key,
        );
    }
}

/// Spins before the first yield, and yields before the first park, when idle. Under loom
/// each is a scheduling point to explore, so the worker parks almost at once there.
const IDLE_SPINS: u32 = if cfg!(loom) { 1 } else { 64 };
const IDLE_YIELDS: u32 = if cfg!(loom) { 1 } else { 64 };

impl Worker {
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        core: ShardCore,
        sink: Option<Box<dyn OrderSink>>,
        wait: WaitStrategy,
        batch_max: usize,
        durability: Durability,
    ) -> Self {
        let shard = core.shard();
        let catalog_index_of: Vec<usize> = shared
            .placement
            .skus_of(shard)
            .iter()
            .map(|&index| index as usize)
            .collect();
        let levels = &shared.shard(shard).available;
        for (local, sku) in core.levels().enumerate() {
            levels[local].store(sku.available, Ordering::Relaxed);
            if sku.available == 0 {
                shared.gate.raise(catalog_index_of[local]);
            }
        }
        let mut core = core;
        core.record_events(sink.as_ref().is_some_and(|sink| sink.wants_events()));
        Self {
            shard,
            core,
            sink,
            #[cfg(debug_assertions)]
            last_order_number: None,
            wait,
            batch_max,
            lanes: Vec::new(),
            registry_generation_seen: 0,
            catalog_index_of,
            failed: false,
            counts: [0; COUNTER_SLOTS],
            // A placeholder of a few bytes until `run` makes the real one.
            latency_ns: Histogram::new(1).expect("one significant digit is valid"),
            batch: Vec::with_capacity(batch_max),
            pending: FxHashMap::default(),
            levels_version_seen: 0,
            deferred: Vec::new(),
            durability,
            shared,
        }
    }

    /// The thread's body. Never unwinds: a panic in the loop (a bug, since sink panics are
    /// caught where the sink is called) marks the shard failed and the loop resumes in
    /// failed mode, so every intent still gets an outcome.
    pub(crate) fn run(mut self) -> ShardReport {
        self.latency_ns = crate::report::latency_histogram();
        if let Some(manual) = self.shared.clock.manual_clock() {
            manual.wake_on_advance(crate::sync::thread::current());
        }
        self.durability.start_journal_thread(
            self.shard,
            crate::sync::thread::current(),
            self.shared.reuse_threads,
        );
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve_until_stopped())) {
                Ok(()) => break,
                Err(payload) => {
                    self.mark_failed(ShardFailure::Panicked(ShardFailure::panic_text(&*payload)));
                }
            }
        }
        self.counts_publish();
        let (recovered_commands, journal_commits, snapshots) = self.durability.counts();
        ShardReport {
            shard: self.shard,
            failed: self.failed,
            failure: self.shared.shard(self.shard).failure.lock().clone(),
            snapshot_failures: self
                .shared
                .shard(self.shard)
                .snapshot_failures
                .load(Ordering::Acquire),
            snapshot_error: self.shared.shard(self.shard).snapshot_error.lock().clone(),
            counts: self.counts,
            levels: self.core.levels().collect(),
            pools: self.core.pools().collect(),
            commands_applied: self.core.commands_applied(),
            recovered_commands,
            journal_commits,
            snapshots,
            latency_ns: self.latency_ns,
        }
    }

    fn serve_until_stopped(&mut self) {
        let mut closed = false;
        let mut idle_steps = 0u32;
        loop {
            let stopping = self.shared.shutdown.load(Ordering::Acquire);
            if stopping && !closed {
                self.close_lanes();
                closed = true;
            } else if !closed {
                self.adopt_new_lanes();
            }
            let mut work = 0;
            for index in 0..self.lanes.len() {
                work += self.serve_lane(index);
            }
            work += self.tick_if_due();
            self.commit_if_due(work == 0);
            if work > 0 {
                self.counts_publish();
                idle_steps = 0;
                continue;
            }
            if closed {
                // Every ring was closed before this pass, which found them all empty:
                // every accepted intent was applied. Those still waiting (pooled or on a
                // waitlist) are answered `Closed`, as the sale ends with the engine.
                self.close_every_sale();
                self.commit_all();
                self.seal_journal();
                self.counts_publish();
                return;
            }
            self.lanes
                .retain_mut(|lane| !(lane.requests.is_abandoned() && lane.requests.is_empty()));
            idle_steps = self.idle(idle_steps);
        }
    }

    /// Journals a command the core is about to apply (with the sequence it will get);
    /// nothing in memory.
    #[inline]
    fn journal(&mut self, command: impl FnOnce() -> Command) {
        let clock = &self.shared.clock;
        self.durability
            .append(self.core.commands_applied(), command, || clock.now_ns());
    }

    /// Commits the journal when its group is due (see [`Durability::commit_if_due`]), then
    /// releases the outputs held behind it. If the journal cannot be written, nothing it
    /// should have held is released as decided: the held outcomes are answered
    /// `ShardFailed` and the shard fails (it cannot promise durability).
    fn commit_if_due(&mut self, idle: bool) {
        let clock = &self.shared.clock;
        let Some((committed, mut outbox)) = self.durability.commit_if_due(idle, || clock.now_ns())
        else {
            return;
        };
        self.release_completions(&mut outbox.completions, committed);
        for (queue, completion) in outbox.deferred.drain(..) {
            if committed {
                queue.push(completion);
            } else {
                queue.push(self.failed_instead(completion));
            }
        }
        for (reply, result) in outbox.replies.drain(..) {
            reply.fulfil(if committed {
                result
            } else {
                Err(ControlError::ShardFailed)
            });
        }
        if committed {
            for order in outbox.orders.drain(..) {
                self.sink_order(&order);
            }
            for event in outbox.events.drain(..) {
                self.sink_event(&event);
            }
            for answer in outbox.answers.drain(..) {
                answer(true);
            }
            self.durability.recycle(outbox);
            if let Some(error) = self.durability.snapshot_if_due(&self.core) {
                let shared = self.shared.shard(self.shard);
                *shared.snapshot_error.lock() = Some(error);
                shared.snapshot_failures.fetch_add(1, Ordering::Release);
            }
        } else {
            for answer in outbox.answers.drain(..) {
                answer(false);
            }
            if !self.failed {
                let why = self.durability.failure().unwrap_or_default();
                self.mark_failed(ShardFailure::Journal(why));
            }
        }
    }

    /// Commits and releases everything gathered, held or in flight (at shutdown).
    fn commit_all(&mut self) {
        loop {
            self.commit_if_due(true);
            if !self.durability.pending() {
                return;
            }
            // The journal thread wakes this one when its group is done.
            crate::sync::thread::park_timeout(core::time::Duration::from_millis(1));
        }
    }

    /// Writes held completions to their lanes (answered `ShardFailed` if the journal did
    /// not commit them) and publishes each lane touched once; records their latency.
    fn release_completions(&mut self, held: &mut Vec<(usize, Reply, u64)>, committed: bool) {
        let now_ns = self.shared.clock.now_ns();
        let mut touched: Vec<usize> = Vec::new();
        for (lane, reply, arrival_ns) in held.drain(..) {
            let reply = if committed {
                reply
            } else {
                self.failed_reply(reply)
            };
            let written = self.lanes[lane].completions.write(reply);
            assert!(
                written.is_ok(),
                "completion ring overflow: in-flight bound broken"
            );
            if !touched.contains(&lane) {
                touched.push(lane);
            }
            self.latency_ns
                .saturating_record(now_ns.saturating_sub(arrival_ns).max(1));
        }
        for lane in touched {
            // Completion rings are never closed, so publishing cannot fail.
            let _ = self.lanes[lane].completions.publish();
            self.lanes[lane].deferred.signal();
        }
    }

    /// A held reply the journal did not commit: answered `ShardFailed` (see
    /// [`uncommitted`](Self::uncommitted)). A note that the intent waits stays one: its
    /// outcome is held with the deferred ones.
    fn failed_reply(&mut self, reply: Reply) -> Reply {
        match reply {
            Reply::Parked => reply,
            Reply::Confirmed { quantity, .. } => {
                self.uncommitted(Some(quantity));
                Reply::failed()
            }
            Reply::Rejected { .. } => Reply::failed(),
        }
    }

    /// A held completion the journal did not commit: answered `ShardFailed`.
    fn failed_instead(&mut self, completion: Completion) -> Completion {
        self.uncommitted(completion.outcome.order().map(|order| order.quantity));
        Completion {
            outcome: Outcome::Rejected {
                reason: RejectReason::ShardFailed,
                sequence: None,
            },
            ..completion
        }
    }

    /// Takes a confirmation of `quantity` units the journal did not commit back out of
    /// the counts, as a `ShardFailed` rejection.
    fn uncommitted(&mut self, quantity: Option<u32>) {
        if let Some(quantity) = quantity {
            self.counts[CONFIRMED_ORDERS] -= 1;
            self.counts[CONFIRMED_UNITS] -= u64::from(quantity);
            self.counts[RejectReason::ShardFailed.index()] += 1;
        }
    }

    /// Seals the journal at a clean shutdown (see [`Journaling::seal`]). A failed shard's
    /// journal is left as it is: what it holds is all that was committed.
    fn seal_journal(&mut self) {
        if !self.failed {
            self.durability.seal();
        }
    }

    fn adopt_new_lanes(&mut self) {
        let shard = self.shared.shard(self.shard);
        let generation = shard.registry_generation.load(Ordering::Acquire);
        if generation != self.registry_generation_seen {
            let mut registry = shard.registry.lock();
            let mut lanes = std::mem::take(&mut registry.new_lanes);
            let controls = std::mem::take(&mut registry.controls);
            let queries = std::mem::take(&mut registry.queries);
            self.registry_generation_seen = generation;
            drop(registry);
            self.adopt(&mut lanes);
            self.apply_controls(controls);
            self.answer_queries(queries);
        }
    }

    fn adopt(&mut self, lanes: &mut Vec<WorkerLane>) {
        self.lanes.append(lanes);
    }

    /// Stops new lanes and commands from registering, adopts the last ones and closes
    /// every request ring: from here on no intent can be accepted, and every one accepted
    /// is in a ring.
    fn close_lanes(&mut self) {
        let shard = self.shared.shard(self.shard);
        let mut registry = shard.registry.lock();
        registry.closed = true;
        let mut lanes = std::mem::take(&mut registry.new_lanes);
        let controls = std::mem::take(&mut registry.controls);
        let queries = std::mem::take(&mut registry.queries);
        drop(registry);
        self.adopt(&mut lanes);
        self.apply_controls(controls);
        self.answer_queries(queries);
        for lane in &mut self.lanes {
            lane.requests.close();
        }
    }

    /// Answers read-only questions: now, or once the commands applied so far are durable
    /// (so that no answer shows what a crash could still take back).
    fn answer_queries(&mut self, queries: Vec<Query>) {
        for query in queries {
            let answer = query(&self.core);
            if self.failed {
                answer(false);
            } else if let Some(answer) = self.durability.hold_answer(answer) {
                answer(true);
            }
        }
    }

    /// Applies payments, cancellations and stock changes, in the order they were posted,
    /// and answers each caller.
    fn apply_controls(&mut self, controls: Vec<ControlRequest>) {
        for request in controls {
            let result = if self.failed {
                Err(ControlError::ShardFailed)
            } else {
                self.journal(|| request.command);
                let (applied, effects) = self.core.apply_noting(&request.command);
                // Outcomes and levels first, so that the caller sees the command's effects.
                self.after_apply(effects);
                match applied {
                    Applied::Refused { error, .. } => Err(error),
                    _ => Ok(()),
                }
            };
            if let Some((reply, result)) = self.durability.hold_reply((request.reply, result)) {
                reply.fulfil(result);
            }
        }
    }

    /// Applies a clock tick if something fell due (a hold deadline, a pool window, a
    /// closing with intents waiting). Requests already in the rings were stamped before
    /// the clock was read, so they are decided first: a press stamped inside a draw's
    /// window joins its pool even if the window ended while it sat in its ring. Returns
    /// the requests decided, plus 1 for the tick.
    fn tick_if_due(&mut self) -> usize {
        if self.failed {
            return 0;
        }
        match self.core.next_due_ns() {
            Some(due) => {
                let now_ns = self.shared.clock.now_ns();
                if due > now_ns {
                    return 0;
                }
                // Only what each lane had published when the clock was read (at most its
                // ring), so that a steady stream of new requests cannot hold the tick off.
                let mut decided = 0;
                for index in 0..self.lanes.len() {
                    let mut waiting = self.lanes[index].requests.len();
                    while waiting > 0 {
                        let served = self.serve_lane(index);
                        if served == 0 {
                            break;
                        }
                        decided += served;
                        waiting = waiting.saturating_sub(served);
                    }
                }
                if self.failed {
                    return decided;
                }
                let tick = Command::Tick { now_ns };
                self.journal(|| tick);
                let (_, effects) = self.core.apply_noting(&tick);
                self.after_apply(effects);
                decided + 1
            }
            None => 0,
        }
    }

    /// Closes every sale of the shard (at shutdown) if buys are waiting, so that each gets
    /// its outcome.
    fn close_every_sale(&mut self) {
        if !self.failed && !self.pending.is_empty() {
            let at_ns = self.shared.clock.now_ns();
            let skus: Vec<_> = self.core.levels().map(|sku| sku.id).collect();
            for sku in skus {
                let close = Command::CloseSale { sku, at_ns };
                self.journal(|| close);
                let (_, effects) = self.core.apply_noting(&close);
                self.after_apply(effects);
            }
        }
        self.answer_pending(RejectReason::ShardFailed);
    }

    /// Delivers the outcomes the last command decided for buys that waited, and
    /// republishes the levels if units came back or left other than by a confirmation.
    fn after_apply(&mut self, effects: Effects) {
        if self.core.has_events() {
            self.forward_events();
        }
        if effects.deferred {
            let mut deferred = std::mem::take(&mut self.deferred);
            deferred.extend(self.core.take_deferred());
            for decided in deferred.drain(..) {
                self.deliver(decided);
            }
            self.deferred = deferred;
        }
        if effects.levels_version != self.levels_version_seen {
            self.levels_version_seen = effects.levels_version;
            self.publish_levels();
        }
    }

    /// Sends a waiting buy's outcome to its producer (if it is still there).
    fn deliver(&mut self, decided: Deferred) {
        // Counted, and a confirmation sunk, even when nobody waits for it any more (its
        // producer is gone, or it waited before a recovery).
        match &decided.outcome {
            Outcome::Confirmed(order) => {
                self.counts[CONFIRMED_ORDERS] += 1;
                self.counts[CONFIRMED_UNITS] += u64::from(order.quantity);
                // A waiting buy's confirmation (off the hot path): its SKU's place and
                // units left come from the core.
                let local = self.core.local_index(order.sku).unwrap_or(0);
                let available = self.core.available_local(local);
                self.on_confirmed((local, decided.intent.client_key, available), order);
            }
            Outcome::Rejected { reason, .. } => self.counts[reason.index()] += 1,
        }
        if let Some(pending) = self.pending.remove(&decided.origin) {
            self.send(pending, decided.outcome);
        }
    }

    fn send(&mut self, pending: Pending, outcome: Outcome) {
        // A producer that is gone drops its end; the outcome then has nobody to go to.
        let completion = Completion {
            intent: pending.intent,
            outcome,
            ticket: pending.ticket,
            waited: true,
        };
        if let Some((queue, completion)) = self
            .durability
            .hold_deferred((pending.deferred, completion))
        {
            queue.push(completion);
        }
    }

    /// Answers every buy still waiting with `reason` (a failed shard, or one whose sales
    /// were closed, where none should be left).
    fn answer_pending(&mut self, reason: RejectReason) {
        let mut pending: Vec<(u64, Pending)> = self.pending.drain().collect();
        pending.sort_unstable_by_key(|(origin, _)| *origin);
        for (_, waiting) in pending {
            self.counts[reason.index()] += 1;
            self.send(
                waiting,
                Outcome::Rejected {
                    reason,
                    sequence: None,
                },
            );
        }
    }

    /// Stores every SKU's available units and raises or lowers its sold-out flag.
    fn publish_levels(&self) {
        let shard = self.shared.shard(self.shard);
        for (local, sku) in self.core.levels().enumerate() {
            shard.available[local].store(sku.available, Ordering::Relaxed);
            let catalog_index = self.catalog_index_of[local];
            if sku.available == 0 {
                self.shared.gate.raise(catalog_index);
            } else {
                self.shared.gate.lower(catalog_index);
            }
        }
    }

    /// Decides one batch from one lane and publishes its completions. Returns its size.
    fn serve_lane(&mut self, index: usize) -> usize {
        let Self {
            lanes,
            core,
            batch,
            batch_max,
            shared,
            shard,
            ..
        } = self;
        batch.clear();
        let taken = lanes[index].requests.read_batch(*batch_max, |request| {
            // The first decisions' cache misses start as the batch is copied out.
            if batch.len() < PREFETCH_AHEAD {
                prefetch(core, shared, *shard, &request);
            }
            batch.push(request);
        });
        if taken == 0 {
            return 0;
        }
        let mut written = false;
        for position in 0..taken {
            // Each decision starts the misses of the one `PREFETCH_AHEAD` later, so that
            // they overlap with deciding rather than all being waited for up front.
            if let Some(ahead) = self.batch.get(position + PREFETCH_AHEAD) {
                prefetch(&self.core, &self.shared, self.shard, ahead);
            }
            let request = self.batch[position];
            let reply = match self.decide(index, &request) {
                Some(outcome) => Reply::decided(&request.intent, outcome),
                None => Reply::Parked,
            };
            // Held when journaled: published, and its latency recorded, at the commit.
            let Some((_, reply, _)) =
                self.durability
                    .hold_completion((index, reply, request.arrival_ns))
            else {
                continue;
            };
            let room = self.lanes[index].completions.write(reply);
            // The producer keeps at most `capacity` intents in flight per lane, counting
            // those whose completion it has not taken yet, so there is always a free slot.
            assert!(
                room.is_ok(),
                "completion ring overflow: in-flight bound broken"
            );
            written = true;
        }
        if !written {
            return taken;
        }
        // Completion rings are never closed, so publishing cannot fail.
        let _ = self.lanes[index].completions.publish();
        self.lanes[index].deferred.signal();
        let now_ns = self.shared.clock.now_ns();
        for request in self.batch.iter() {
            self.latency_ns
                .saturating_record(now_ns.saturating_sub(request.arrival_ns).max(1));
        }
        taken
    }

    /// Decides one request from lane `lane` (or answers it `ShardFailed`), counts it,
    /// feeds the gate and the order sink. `None`: the buy waits (its outcome is delivered
    /// when decided).
    #[inline]
    fn decide(&mut self, lane: usize, request: &Request) -> Option<Outcome> {
        if self.failed {
            self.counts[RejectReason::ShardFailed.index()] += 1;
            return Some(Outcome::Rejected {
                reason: RejectReason::ShardFailed,
                sequence: None,
            });
        }
        let (intent, arrival_ns) = (request.intent, request.arrival_ns);
        self.journal(|| {
            if request.wait {
                Command::BuyOrWait { intent, arrival_ns }
            } else {
                Command::Buy { intent, arrival_ns }
            }
        });
        let (applied, effects) = self.core.buy_noting(
            request.local,
            &request.intent,
            request.arrival_ns,
            request.wait,
        );
        let outcome = match applied {
            Applied::Decided(outcome) => Some(outcome),
            Applied::Waiting { sequence } => {
                self.pending.insert(
                    sequence,
                    Pending {
                        deferred: self.lanes[lane].deferred.clone(),
                        ticket: request.ticket,
                        intent: request.intent,
                    },
                );
                None
            }
            Applied::Done { .. } | Applied::Refused { .. } => {
                unreachable!("a buy is decided or waits")
            }
        };
        // Rare: the buy's command first ran something that fell due (an expired hold whose
        // units filled a waitlist, a pool's window). What that decided was numbered before
        // the buy's own order, so it goes out first: the sink sees the shard's order.
        if effects.deferred
            || effects.levels_version != self.levels_version_seen
            || self.core.has_events()
        {
            self.after_apply(effects);
        }
        match &outcome {
            Some(Outcome::Confirmed(order)) => {
                self.counts[CONFIRMED_ORDERS] += 1;
                self.counts[CONFIRMED_UNITS] += u64::from(order.quantity);
                let confirmed = (request.local, request.intent.client_key, effects.available);
                self.on_confirmed(confirmed, order);
            }
            Some(Outcome::Rejected { reason, .. }) => self.counts[reason.index()] += 1,
            None => {}
        }
        outcome
    }

    /// Every confirmed order passes here, in the order the core numbered them (the sink's
    /// promise rests on it), with its SKU's local index, its client key and the units its
    /// SKU has left.
    fn on_confirmed(&mut self, (local, client_key, available): (u32, u64, u32), order: &Order) {
        #[cfg(debug_assertions)]
        {
            assert!(
                self.last_order_number
                    .is_none_or(|last| order.id.number() > last),
                "order {} confirmed out of the shard's order (after number {:?})",
                order.id,
                self.last_order_number
            );
            self.last_order_number = Some(order.id.number());
        }
        let shard = self.shared.shard(self.shard);
        let gate = &self.shared.gate;
        gate.remember(usize::from(self.shard.0), order.user.0, client_key);
        shard.available[local as usize].store(available, Ordering::Relaxed);
        if available == 0 {
            gate.raise(self.catalog_index_of[local as usize]);
        }
        // Without a sink there is nobody to hand the order to, now or at the commit.
        if self.sink.is_some()
            && let Some(order) = self.durability.hold_order(*order)
        {
            self.sink_order(&order);
        }
    }

    /// Hands the core's order events to the sink, now or once durable.
    #[cold]
    fn forward_events(&mut self) {
        let events: Vec<OrderEvent> = self.core.take_events().collect();
        for event in events {
            if let Some(event) = self.durability.hold_event(event) {
                self.sink_event(&event);
            }
        }
    }

    /// Hands an order event to the sink; a panic there fails the shard.
    fn sink_event(&mut self, event: &OrderEvent) {
        if let Some(sink) = self.sink.as_mut()
            && let Err(payload) = catch_unwind(AssertUnwindSafe(|| sink.on_event(event)))
        {
            if let Some(sink) = self.sink.take() {
                std::mem::forget(sink);
            }
            self.mark_failed(ShardFailure::SinkPanicked(ShardFailure::panic_text(
                &*payload,
            )));
        }
    }

    /// Hands a confirmed order to the sink; a panic there fails the shard.
    fn sink_order(&mut self, order: &Order) {
        if let Some(sink) = self.sink.as_mut()
            && let Err(payload) = catch_unwind(AssertUnwindSafe(|| sink.on_confirmed(order)))
        {
            // The sink may be in any state after a panic; dropping it could panic again,
            // so it is leaked rather than dropped.
            if let Some(sink) = self.sink.take() {
                std::mem::forget(sink);
            }
            self.mark_failed(ShardFailure::SinkPanicked(ShardFailure::panic_text(
                &*payload,
            )));
        }
    }

    fn mark_failed(&mut self, why: ShardFailure) {
        self.failed = true;
        let shared = self.shared.shard(self.shard);
        shared.failure.lock().get_or_insert(why);
        shared.failed.store(true, Ordering::Release);
        // The core decides nothing more, so nothing waiting in it will be decided.
        self.answer_pending(RejectReason::ShardFailed);
    }

    fn counts_publish(&self) {
        self.shared.shard(self.shard).counters.publish(&self.counts);
    }

    /// One idle step by the wait strategy; returns the next step number.
    fn idle(&mut self, step: u32) -> u32 {
        let spin = |step: u32| {
            if cfg!(loom) {
                crate::sync::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
            step.saturating_add(1)
        };
        match self.wait {
            WaitStrategy::Spin => spin(step),
            WaitStrategy::Yield if step < IDLE_SPINS => spin(step),
            WaitStrategy::Yield => {
                crate::sync::thread::yield_now();
                step.saturating_add(1)
            }
            WaitStrategy::Park if step < IDLE_SPINS => spin(step),
            WaitStrategy::Park if step < IDLE_SPINS + IDLE_YIELDS => {
                crate::sync::thread::yield_now();
                step + 1
            }
            WaitStrategy::Park => {
                self.park();
                0
            }
        }
    }

    /// Parks unless there is work; see the park protocol in the module docs.
    fn park(&mut self) {
        let shard = self.shared.shard(self.shard);
        shard.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let work_waiting = self
            .lanes
            .iter_mut()
            .any(|lane| lane.requests.has_published())
            || self.shared.shutdown.load(Ordering::Acquire)
            || shard.registry_generation.load(Ordering::Acquire) != self.registry_generation_seen
            || self.durability.report_waiting();
        if !work_waiting {
            match self.core.next_due_ns() {
                // Something falls due: sleep until then at most.
                // A manual clock moves only when advanced, and wakes this thread then.
                Some(_) if self.shared.clock.manual_clock().is_some() => {
                    crate::sync::thread::park();
                }
                Some(due) => {
                    let wait_ns = due.saturating_sub(self.shared.clock.now_ns());
                    crate::sync::thread::park_timeout(core::time::Duration::from_nanos(wait_ns));
                }
                None => crate::sync::thread::park(),
            }
        }
        shard.sleeping.store(false, Ordering::Relaxed);
    }
}
