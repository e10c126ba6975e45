//! The producer handle: one per submitting thread.

use core::fmt;
use std::collections::VecDeque;

use super::lane::{DeferredQueue, Notify, Reply, Request, WorkerLane};
use super::shared::{EngineShared, ProducerCounters};
use crate::report::{REFUSED_BUSY, REFUSED_SHARD_FAILED, REFUSED_SHUT_DOWN};
use crate::ring::{self, PushError};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;
use crate::types::{Completion, Intent, Outcome, RejectReason, ShardId, Ticket};

/// What became of a submit that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The intent is on its way to its shard; its [`Completion`], carrying this ticket,
    /// will come out of [`Producer::poll`] (or [`Producer::drain`]).
    Queued(Ticket),
    /// The producer decided at once, without queueing: a malformed intent, an unknown SKU,
    /// or a SKU its shard has published as sold out. No completion will follow.
    Answered(Outcome),
}

/// A submit that was refused: the intent was not accepted and comes back to the caller.
/// Nothing about it was counted as decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// This producer already has `ring_capacity` intents in flight to the SKU's shard. Take
    /// outcomes with [`Producer::poll`], then try again.
    #[error("busy: too many intents in flight to this shard; poll outcomes and retry")]
    Busy(Intent),
    /// The engine is shutting down or shut down.
    #[error("the engine is shut down")]
    ShutDown(Intent),
    /// The SKU's shard stopped deciding after its order sink panicked.
    #[error("the SKU's shard has failed")]
    ShardFailed(Intent),
}

impl SubmitError {
    /// The intent that was refused.
    pub fn into_intent(self) -> Intent {
        match self {
            Self::Busy(intent) | Self::ShutDown(intent) | Self::ShardFailed(intent) => intent,
        }
    }
}

/// Where a screened intent is queued: its shard, and its local index there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    shard: usize,
    local: u32,
}

impl EngineShared {
    /// The checks a submit makes before it queues, in order: refused if the engine is shut
    /// down or the SKU's shard failed; answered at once if the quantity is not in
    /// `1..=max_quantity`, the SKU is unknown, or the sold-out gate turns it away. Reads
    /// shared state only, so any thread may screen. Uncounted.
    #[inline]
    pub(crate) fn screen(&self, intent: &Intent, wait: bool) -> Screened {
        if self.shutdown.load(Ordering::Acquire) {
            return Screened::Refused(SubmitError::ShutDown(*intent));
        }
        let catalog_index = match self.catalog.admit(intent, self.max_quantity) {
            Ok(index) => index,
            Err(reason) => return Screened::Answered(Outcome::rejected_by_producer(reason)),
        };
        let (ShardId(shard), local) = self.placement.route(catalog_index);
        let shard = usize::from(shard);
        if self.shards[shard].failed.load(Ordering::Acquire) {
            return Screened::Refused(SubmitError::ShardFailed(*intent));
        }
        if self.gate_enabled
            && !wait
            && self
                .gate
                .turns_away(catalog_index, shard, intent.user.0, intent.client_key)
        {
            return Screened::Answered(Outcome::rejected_by_producer(RejectReason::SoldOut));
        }
        Screened::Queue(Route { shard, local })
    }
}

/// What screening made of an intent.
#[derive(Debug)]
pub(crate) enum Screened {
    /// It passed: queue it on this route.
    Queue(Route),
    /// Answered at once: malformed, an unknown SKU, or turned away by the sold-out gate.
    Answered(Outcome),
    /// Refused: the engine is shut down, or the SKU's shard failed.
    Refused(SubmitError),
}

/// Why a lane's record of what it sent always has the reply's request: one entry is
/// pushed per queued request and popped per reply, and replies come in request order.
const SENT: &str = "a reply answers a request this lane sent";

/// What one look at a lane's completion ring found.
#[derive(Debug, PartialEq)]
enum Taken {
    /// The completion asked for.
    Mine(Completion),
    /// Another one (now in the stash), or a note that an intent waits at the shard.
    Other,
    /// Nothing had arrived.
    Nothing,
}

/// The producer's end of the two rings it shares with one shard.
struct ProducerLane {
    requests: ring::Writer<Request>,
    completions: ring::Reader<Reply>,
    /// Outcomes of this producer's intents that waited at the shard.
    deferred: Arc<DeferredQueue>,
    /// The intent and ticket of each request whose reply has not been taken from
    /// `completions` yet, in submit order (the shard answers a lane's requests in order):
    /// a reply carries only the outcome, and the completion is rebuilt from these. Its
    /// length is the lane's intents in flight, `0..=ring_capacity`; bounding it by the ring
    /// capacity is what guarantees that neither ring of the pair can overflow.
    sent: VecDeque<(Intent, Ticket)>,
    /// Intents the shard parked (pooled, or on a waitlist) whose outcome has not been
    /// taken from `deferred` yet. Signed: an outcome may be taken before its park notice.
    waiting: i64,
}

/// A handle for submitting intents from one thread.
///
/// `Send` but not `Clone`: each thread that submits takes its own from
/// [`Engine::producer`](super::Engine::producer). It owns one ring to every shard and one
/// back, so submitting never contends with other producers. Each producer's intents reach a
/// shard in the order it submitted them.
pub struct Producer {
    shared: Arc<EngineShared>,
    lanes: Box<[ProducerLane]>,
    /// Completions taken off a ring by [`buy`](Self::buy) while it waited for its own,
    /// handed out by the next [`poll`](Self::poll). At most the number in flight.
    stash: VecDeque<Completion>,
    counters: Arc<ProducerCounters>,
    /// The number the next submit gets (to find its completion in [`buy`](Self::buy)).
    ticket_next: u32,
    /// Whether the last [`poll`](Self::poll) took replies that handed nothing out:
    /// intents that went to wait at a shard, giving their ring slot back (see
    /// [`wait_for_arrivals`](Self::wait_for_arrivals)).
    freed_room: bool,
    /// A parking producer's sleeper, which its lanes wake (see
    /// [`Engine::parking_producer`](super::Engine::parking_producer)).
    parking: Option<Arc<Notify>>,
}

/// A wait for an arrival so far: its steps, and when it began yielding.
#[derive(Default)]
struct Idle {
    steps: u32,
    since: Option<std::time::Instant>,
}

/// How long a parking producer yields before it sleeps: hand-offs shorter than this
/// (an in-memory shard answering) never pay a wake-up; waits longer (a group commit's
/// `fdatasync`) give the core away after it. Chosen by alternated runs of the simulator's
/// journaled closed loop: 20, 50 and 100 µs did alike, parking at once cost the in-memory
/// run up to a fifth.
const YIELD_FOR: core::time::Duration = core::time::Duration::from_micros(50);

/// The longest a parking producer sleeps before it looks again: a safety net only (the
/// workers wake it when its outcomes arrive), so that nothing it was not told of, such
/// as a worker gone, can keep it asleep.
const PARK_AT_MOST: core::time::Duration = core::time::Duration::from_millis(1);

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("shards", &self.lanes.len())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Producer {
    pub(super) fn new(shared: Arc<EngineShared>) -> Self {
        Self::with_notify(shared, None)
    }

    /// A producer whose waits park the waiting thread until its lanes' workers wake it.
    pub(super) fn parking(shared: Arc<EngineShared>) -> Self {
        let notify = Arc::new(Notify::movable());
        Self {
            parking: Some(notify.clone()),
            ..Self::with_notify(shared, Some(notify))
        }
    }

    /// A producer whose lanes wake `notify` when outcomes arrive.
    pub(crate) fn with_notify(shared: Arc<EngineShared>, notify: Option<Arc<Notify>>) -> Self {
        let lanes = shared
            .shards
            .iter()
            .map(|shard| {
                let (requests, worker_requests) = ring::channel(shared.ring_capacity)
                    .expect("the capacity was validated when the engine started");
                let (worker_completions, completions) = ring::channel(shared.ring_capacity)
                    .expect("the capacity was validated when the engine started");
                let deferred = Arc::new(DeferredQueue::with_notify(notify.clone()));
                let mut worker_lane = WorkerLane {
                    requests: worker_requests,
                    completions: worker_completions,
                    deferred: deferred.clone(),
                };
                let mut registry = shard.registry.lock();
                if registry.closed {
                    // The shard has stopped: the lane is born closed, so every submit on it
                    // is refused, and the worker never needs to see it.
                    worker_lane.requests.close();
                } else {
                    registry.new_lanes.push(worker_lane);
                    shard.registry_generation.fetch_add(1, Ordering::Release);
                }
                drop(registry);
                ProducerLane {
                    requests,
                    completions,
                    deferred,
                    sent: VecDeque::with_capacity(shared.ring_capacity),
                    waiting: 0,
                }
            })
            .collect();
        let counters = shared.new_counters();
        Self {
            shared,
            lanes,
            stash: VecDeque::new(),
            counters,
            ticket_next: 0,
            freed_room: false,
            parking: None,
        }
    }

    /// Submits an intent without blocking.
    ///
    /// In order: refused if the engine is shut down or the SKU's shard failed; answered at
    /// once if the quantity is not in `1..=max_quantity`, the SKU is unknown, or the sold-out
    /// gate turns it away; refused [`Busy`](SubmitError::Busy) if this producer has
    /// `ring_capacity` intents in flight to the shard; otherwise stamped with its arrival
    /// time and queued.
    ///
    /// # Errors
    /// [`SubmitError`], with the intent handed back.
    #[inline]
    pub fn submit(&mut self, intent: Intent) -> Result<Submitted, SubmitError> {
        self.submit_with(intent, false)
    }

    /// Like [`submit`](Self::submit), for an intent that would rather wait for a unit to
    /// come back (a cancellation, an expired hold, a restock) than be rejected as sold out:
    /// if its SKU has a waitlist with room, the intent waits there, in flight, until it is
    /// confirmed, rejected (when the sale closes, or with
    /// [`RejectReason::WaitlistFull`]) or the engine shuts down (rejected `Closed`). The
    /// sold-out gate lets it through.
    ///
    /// A waiting intent gives its ring slot back as soon as the shard parks it, so
    /// waiting intents do not make a producer `Busy`; they count in
    /// [`in_flight`](Self::in_flight) until their outcome is handed out. The same holds
    /// for intents pooled for an opening draw.
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    #[inline]
    pub fn submit_or_wait(&mut self, intent: Intent) -> Result<Submitted, SubmitError> {
        self.submit_with(intent, true)
    }

    #[inline]
    fn submit_with(&mut self, intent: Intent, wait: bool) -> Result<Submitted, SubmitError> {
        let result = match self.shared.screen(&intent, wait) {
            Screened::Queue(route) => self.queue(intent, wait, route),
            Screened::Answered(outcome) => Ok(Submitted::Answered(outcome)),
            Screened::Refused(refused) => Err(refused),
        };
        self.counters.count(&result, false);
        result
    }

    /// Queues a screened intent on its shard's ring, unless this producer has
    /// `ring_capacity` in flight there. Uncounted.
    #[inline]
    pub(crate) fn queue(
        &mut self,
        intent: Intent,
        wait: bool,
        route: Route,
    ) -> Result<Submitted, SubmitError> {
        let shared = &*self.shared;
        let lane = &mut self.lanes[route.shard];
        if lane.sent.len() == shared.ring_capacity {
            return Err(SubmitError::Busy(intent));
        }
        let request = Request {
            intent,
            arrival_ns: shared.clock.now_ns(),
            local: route.local,
            wait,
            ticket: Ticket(self.ticket_next),
        };
        match lane.requests.push(request) {
            Ok(()) => {
                self.ticket_next = self.ticket_next.wrapping_add(1);
                lane.sent.push_back((intent, request.ticket));
                if shared.parking {
                    shared.shards[route.shard].wake_if_sleeping();
                }
                Ok(Submitted::Queued(request.ticket))
            }
            Err(PushError::Closed(_)) => Err(SubmitError::ShutDown(intent)),
            // Unreachable while `sent.len() <= capacity`; refused rather than trusted.
            Err(PushError::Full(_)) => Err(SubmitError::Busy(intent)),
        }
    }

    /// The counters this producer's submits are counted in.
    pub(crate) fn counters(&self) -> &Arc<ProducerCounters> {
        &self.counters
    }

    /// Hands every completion that has arrived to `f`, without blocking (or allocating,
    /// unless intents that waited were decided). Returns how many it handed out.
    pub fn poll(&mut self, mut f: impl FnMut(Completion)) -> usize {
        let mut count = self.stash.len();
        for completion in self.stash.drain(..) {
            f(completion);
        }
        let mut parked = false;
        for lane in self.lanes.iter_mut() {
            let (waiting, sent) = (&mut lane.waiting, &mut lane.sent);
            let mut done = 0;
            let taken = lane.completions.read_batch(usize::MAX, |reply| {
                let (intent, ticket) = sent.pop_front().expect(SENT);
                match reply.complete(intent, ticket) {
                    Some(completion) => {
                        done += 1;
                        f(completion);
                    }
                    None => *waiting += 1,
                }
            });
            parked |= taken > done;
            count += done;
            let decided = lane.deferred.take(&mut f);
            lane.waiting -= decided as i64;
            count += decided;
        }
        self.freed_room = parked;
        count
    }

    /// Like [`poll`](Self::poll), but waits until every intent in flight has its
    /// completion. Returns how many it handed out.
    pub fn drain(&mut self, mut f: impl FnMut(Completion)) -> usize {
        let mut count = 0;
        let mut idle = Idle::default();
        loop {
            let taken = self.poll(&mut f);
            count += taken;
            if self.in_flight() == 0 {
                return count;
            }
            if taken == 0 {
                self.idle(&mut idle);
            } else {
                idle = Idle::default();
            }
        }
    }

    /// Submits an intent and waits for its outcome; for simple callers with one intent at a
    /// time. Completions of earlier submits that arrive meanwhile are kept for the next
    /// [`poll`](Self::poll); if the shard's lane is full, this waits for room instead of
    /// answering `Busy`. An intent pooled for an opening draw waits for the draw.
    ///
    /// # Errors
    /// [`SubmitError::ShutDown`] or [`SubmitError::ShardFailed`] when refused.
    pub fn buy(&mut self, intent: Intent) -> Result<Outcome, SubmitError> {
        self.buy_with(intent, false)
    }

    /// [`buy`](Self::buy) for an intent that waits for a unit rather than be rejected as
    /// sold out (see [`submit_or_wait`](Self::submit_or_wait)): returns when it is
    /// confirmed or finally rejected.
    ///
    /// # Errors
    /// As [`buy`](Self::buy).
    pub fn buy_or_wait(&mut self, intent: Intent) -> Result<Outcome, SubmitError> {
        self.buy_with(intent, true)
    }

    fn buy_with(&mut self, intent: Intent, wait: bool) -> Result<Outcome, SubmitError> {
        let mut idle = Idle::default();
        let ticket = loop {
            match self.submit_with(intent, wait) {
                Ok(Submitted::Answered(outcome)) => return Ok(outcome),
                Ok(Submitted::Queued(ticket)) => break ticket,
                Err(SubmitError::Busy(_)) => {
                    let shard = self.shard_of(&intent);
                    if self.stash_one(shard, None) != Taken::Nothing {
                        idle = Idle::default();
                    } else {
                        self.idle(&mut idle);
                    }
                }
                Err(refused) => return Err(refused),
            }
        };
        // Everything else that comes back meanwhile goes to the stash.
        let shard = self.shard_of(&intent);
        idle = Idle::default();
        loop {
            match self.stash_one(shard, Some(ticket)) {
                Taken::Mine(completion) => {
                    debug_assert_eq!(completion.intent, intent);
                    return Ok(completion.outcome);
                }
                Taken::Other => idle = Idle::default(),
                Taken::Nothing => {
                    // Parked at the shard: its outcome comes on the lane's deferred queue.
                    let lane = &mut self.lanes[shard];
                    let before = self.stash.len();
                    let decided = lane
                        .deferred
                        .take(|completion| self.stash.push_back(completion));
                    lane.waiting -= decided as i64;
                    if let Some(position) = self
                        .stash
                        .iter()
                        .skip(before)
                        .position(|c| c.ticket == ticket)
                    {
                        let completion = self
                            .stash
                            .remove(before + position)
                            .expect("the position is in the stash");
                        return Ok(completion.outcome);
                    }
                    if decided > 0 {
                        idle = Idle::default();
                    } else {
                        self.idle(&mut idle);
                    }
                }
            }
        }
    }

    /// Waits until [`poll`](Self::poll) would hand something out. For a caller whose
    /// submit came back [`SubmitError::Busy`] and whose poll handed out nothing: a
    /// producer made by [`Engine::parking_producer`](super::Engine::parking_producer)
    /// spins briefly, yields, and then parks its thread until the shard publishes to it;
    /// any other spins, then yields.
    ///
    /// Returns at once if a poll would hand something out, if nothing is in flight, or if
    /// the last poll made room without handing anything out (intents that went to wait at
    /// a shard, pooled or on a waitlist, give their ring slot back: the `Busy` submit may
    /// go through now). Otherwise intents waiting at a shard count as in flight: with only
    /// those, this waits for one to be decided.
    pub fn wait_for_arrivals(&mut self) {
        if std::mem::take(&mut self.freed_room) {
            return;
        }
        let mut idle = Idle::default();
        while self.in_flight() > 0 && !self.has_arrivals() {
            self.idle(&mut idle);
        }
    }

    /// One more step of waiting for an arrival: a spin for the first 64 in a row, then a
    /// yield; a parking producer yields for at most [`YIELD_FOR`] and then sleeps until
    /// its lanes' workers wake it.
    fn idle(&mut self, idle: &mut Idle) {
        idle.steps = idle.steps.saturating_add(1);
        // Under loom a spin or a yield is only more states: it parks at once.
        let sleep = self.parking.is_some()
            && (cfg!(loom)
                || (idle.steps > 64
                    && idle
                        .since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        >= YIELD_FOR));
        if sleep && let Some(notify) = self.parking.take() {
            // Taken out while it sleeps (the workers wake it through their own handles):
            // the arrivals check below needs the producer mutably.
            // Arrivals on a lane this wait is not for (`buy` takes from its own shard's
            // lane only) keep it from parking: it yields instead.
            let slept = notify.sleep_unless(Some(PARK_AT_MOST), || self.has_new_arrivals());
            self.parking = Some(notify);
            if slept {
                return;
            }
        }
        pause(idle.steps - 1);
    }

    /// Takes one completion from a shard's lane, if one has arrived: returned if it is
    /// the submit numbered `mine`, else moved to the stash.
    fn stash_one(&mut self, shard: usize, mine: Option<Ticket>) -> Taken {
        let lane = &mut self.lanes[shard];
        let Some(reply) = lane.completions.pop() else {
            return Taken::Nothing;
        };
        let (intent, ticket) = lane.sent.pop_front().expect(SENT);
        match reply.complete(intent, ticket) {
            Some(completion) if Some(ticket) == mine => Taken::Mine(completion),
            Some(completion) => {
                self.stash.push_back(completion);
                Taken::Other
            }
            None => {
                lane.waiting += 1;
                Taken::Other
            }
        }
    }

    fn shard_of(&self, intent: &Intent) -> usize {
        let index = self
            .shared
            .catalog
            .index_of(intent.sku)
            .expect("only queued intents, whose SKU is known, get here");
        let (ShardId(shard), _) = self.shared.placement.route(index);
        usize::from(shard)
    }

    /// Whether a [`poll`](Self::poll) would hand something out now.
    pub fn has_arrivals(&mut self) -> bool {
        !self.stash.is_empty() || self.has_new_arrivals()
    }

    /// Whether a shard published to this producer's lanes since they were last read.
    fn has_new_arrivals(&mut self) -> bool {
        self.lanes
            .iter_mut()
            .any(|lane| lane.completions.has_published() || lane.deferred.is_ready())
    }

    /// Intents submitted and queued whose completion has not been handed out yet
    /// (including those waiting at a shard).
    pub fn in_flight(&self) -> usize {
        let lanes: i64 = self
            .lanes
            .iter()
            .map(|lane| lane.sent.len() as i64 + lane.waiting)
            .sum();
        lanes as usize + self.stash.len()
    }

    /// Nanoseconds on the engine clock.
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }
}

/// One step of a producer's wait for completions: spin a little, then yield. Producers do
/// not park: the shard would have to wake them, which would cost every completion a check.
fn pause(step: u32) -> u32 {
    if cfg!(loom) || step >= 64 {
        crate::sync::thread::yield_now();
    } else {
        core::hint::spin_loop();
    }
    step.saturating_add(1)
}

impl ProducerCounters {
    /// Counts what became of one submit (nothing for one queued: its shard counts it).
    /// `shared`: whether other threads may count here at the same time (they may not,
    /// for a producer's own counters).
    #[inline]
    pub(crate) fn count(&self, result: &Result<Submitted, SubmitError>, shared: bool) {
        let slot = match result {
            Ok(Submitted::Queued(_)) => return,
            Ok(Submitted::Answered(outcome)) => match outcome.reason() {
                Some(reason) => reason.index(),
                None => return,
            },
            Err(SubmitError::Busy(_)) => REFUSED_BUSY,
            Err(SubmitError::ShutDown(_)) => REFUSED_SHUT_DOWN,
            Err(SubmitError::ShardFailed(_)) => REFUSED_SHARD_FAILED,
        };
        if shared {
            self.slots[slot].fetch_add(1, Ordering::Relaxed);
        } else {
            self.bump(slot);
        }
    }
}
