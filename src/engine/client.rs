//! The async client: a cloneable `Send + Sync` handle that any task can `buy` through,
//! without a producer of its own.
//!
//! Inside: a fixed set of producer lanes (each a [`Producer`] behind a lock) and one *pump*
//! thread. Each thread has a home lane (threads are spread over the lanes as they first
//! buy) and moves to another only when its home is locked by another thread. An intent the
//! engine answers without queueing (malformed, unknown SKU, turned away by the sold-out
//! gate) is answered at the first poll without taking any lock. A task submits on a lane and parks its future with its
//! ticket; the pump takes the lanes' completions and wakes each future through its
//! [`Waker`]. The pump sleeps (parks) when nothing has arrived, and the shard workers wake
//! it after they publish to one of its lanes (the store-buffering protocol the workers
//! themselves park with), so no code spins: not the futures, not the pump. Runtime-agnostic:
//! it needs no executor of its own, and works under tokio, async-std or a hand-written one.
//!
//! Dropping a `buy` future early is safe: the intent was submitted (or not) atomically at
//! its first poll; once submitted, the engine decides it exactly once, counts it, and a
//! confirmed order reaches the order sink; the outcome is then dropped by the pump.

use core::fmt;
use core::future::Future;
use core::mem::MaybeUninit;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::cell::{Cell, RefCell};

use rustc_hash::FxHashMap;

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::thread::{self, JoinHandle, ThreadId};
use crate::sync::{Arc, Mutex, UnsafeCell};

use super::lane::Notify;
use super::producer::{Route, Screened};
use super::shared::{EngineShared, ProducerCounters};
use super::{Engine, Producer, SubmitError, Submitted};
use crate::hash::SequentialMap;
use crate::types::{Intent, Outcome, Ticket};

/// An outcome not yet taken by its future, and who to wake: where a ticket's cell was
/// taken by another ticket still (see [`Cells`]).
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// The most cells a lane keeps (see [`Cells`]): 4,096 of 48 bytes.
const CELLS_MAX: usize = 4_096;

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<OutcomeCell>() == 48);

/// A cell's state: no ticket holds it.
const FREE: u64 = 0;

/// A cell's state while `ticket`'s future waits for its outcome.
#[inline]
fn waiting(ticket: Ticket) -> u64 {
    (u64::from(ticket.0) + 1) << 1
}

/// A cell's state once `ticket`'s outcome is in it.
#[inline]
fn ready(ticket: Ticket) -> u64 {
    waiting(ticket) | 1
}

/// One ticket's outcome on its way from the pump to its future.
struct OutcomeCell {
    /// [`FREE`], [`waiting`] or [`ready`] for the ticket that holds it.
    state: AtomicU64,
    /// Written by the pump (under the lane's lock) while the state is `waiting`, before it
    /// stores `ready` (Release); read by the future, without the lock, after it loads
    /// `ready` (Acquire), before it stores `FREE` (Release).
    outcome: UnsafeCell<MaybeUninit<Outcome>>,
}

/// Where a lane's outcomes wait for their futures, by ticket: a ticket's cell is its number
/// modulo the cells' count. A future takes its outcome out of its cell without the lane's
/// lock (an Acquire load of the state, a read, a Release store), so that a buy takes the
/// lock once (to submit), not twice. Tickets are numbered in sequence, so the tickets in
/// flight hold distinct cells unless one waits for longer than the cells' count of later
/// submits (a waiting buy, or a future not polled for a while): a ticket whose cell is
/// held goes to the lane's [`SequentialMap`] of [`Slot`]s instead, under the lock.
///
/// Who touches what: a cell is taken (`FREE` to `waiting`) by the submitting future and
/// filled (`waiting` to `ready`) by the pump, both under the lane's lock; emptied (`ready`
/// to `FREE`) by its future, with or without the lock, or by its dropped future (`waiting`
/// or `ready` to `FREE`) under the lock. Only the emptying without the lock meets another
/// thread unguarded, and it touches only a `ready` cell, which nobody else writes.
struct Cells {
    cells: Box<[OutcomeCell]>,
    mask: usize,
}

// SAFETY: a cell's outcome is written only by the pump while the cell is `waiting` (under
// the lane's lock, which every other writer of a `waiting` cell also holds) and read only
// by its own future once the cell is `ready`, with the Release/Acquire pair on `state`
// ordering the write before the read, and the read before the next taking of the cell
// (see `Cells`). `Outcome` is `Copy + Send`.
unsafe impl Sync for Cells {}

impl Cells {
    /// Cells for a lane with `in_flight` tickets at most in flight at once (rounded up to a
    /// power of two, at most [`CELLS_MAX`]).
    fn new(in_flight: usize) -> Self {
        let count = in_flight.clamp(1, CELLS_MAX).next_power_of_two();
        Self {
            cells: (0..count)
                .map(|_| OutcomeCell {
                    state: AtomicU64::new(FREE),
                    outcome: UnsafeCell::new(MaybeUninit::uninit()),
                })
                .collect(),
            mask: count - 1,
        }
    }

    #[inline]
    fn index(&self, ticket: Ticket) -> usize {
        ticket.0 as usize & self.mask
    }

    /// Takes `ticket`'s cell if it is free (the lane's lock held); its index if so.
    #[inline]
    fn take(&self, ticket: Ticket) -> Option<usize> {
        let index = self.index(ticket);
        let cell = &self.cells[index];
        // Acquire: a future that emptied the cell without the lock has read its outcome.
        (cell.state.load(Ordering::Acquire) == FREE).then(|| {
            cell.state.store(waiting(ticket), Ordering::Relaxed);
            index
        })
    }

    /// The pump, the lane's lock held: puts `outcome` in `ticket`'s cell if the ticket
    /// holds it and waits; false otherwise.
    #[inline]
    fn fill(&self, ticket: Ticket, outcome: Outcome) -> bool {
        let cell = &self.cells[self.index(ticket)];
        if cell.state.load(Ordering::Relaxed) != waiting(ticket) {
            return false;
        }
        // SAFETY: the cell is `waiting` for this ticket, and only the pump writes a waiting
        // cell's outcome, under the lane's lock, which it holds; its future reads the
        // outcome only after the Release store below (see `Cells`).
        cell.outcome
            .with_mut(|pointer| unsafe { (*pointer).write(outcome) });
        cell.state.store(ready(ticket), Ordering::Release);
        true
    }

    /// The future of `ticket`, which holds the cell at `index`: its outcome, emptying the
    /// cell, if it has arrived (with or without the lane's lock).
    #[inline]
    fn take_outcome(&self, index: usize, ticket: Ticket) -> Option<Outcome> {
        let cell = &self.cells[index];
        if cell.state.load(Ordering::Acquire) != ready(ticket) {
            return None;
        }
        // SAFETY: the Acquire load saw `ready` for this ticket, so the pump's write of the
        // outcome happened before, and nobody writes a `ready` cell but its own future
        // (this one, which is not polled and dropped at once); the cell is freed below only
        // after the read.
        let outcome = cell
            .outcome
            .with_mut(|pointer| unsafe { (*pointer).assume_init_read() });
        cell.state.store(FREE, Ordering::Release);
        Some(outcome)
    }

    /// A dropped future's cell, emptied (the lane's lock held): an outcome in it is
    /// `Copy`, so dropping it needs nothing.
    fn abandon(&self, index: usize) {
        self.cells[index].state.store(FREE, Ordering::Release);
    }
}

/// One producer lane and the futures waiting on it.
struct LaneState {
    producer: Producer,
    /// The waker of each cell's future, by the cell's index (see [`Cells`]).
    wakers: Box<[Option<Waker>]>,
    /// By ticket, those whose cell was held: a producer numbers its submits in sequence
    /// (see `SequentialMap`).
    slots: SequentialMap<Ticket, Slot>,
    /// Futures refused `Busy`, to wake when this lane's outcomes free room.
    room: Vec<Waker>,
}

impl LaneState {
    /// Takes every arrived completion into its cell or slot; returns how many, and collects
    /// the wakers to call (outside the lock).
    fn take_arrivals(&mut self, cells: &Cells, wake: &mut Vec<Waker>) -> usize {
        let slots = &mut self.slots;
        let wakers = &mut self.wakers;
        let taken = self.producer.poll(|completion| {
            if cells.fill(completion.ticket, completion.outcome) {
                wake.extend(wakers[cells.index(completion.ticket)].take());
            } else if let Some(slot) = slots.get_mut(&completion.ticket) {
                slot.outcome = Some(completion.outcome);
                wake.extend(slot.waker.take());
            }
            // Neither: its future was dropped; the outcome has nobody to go to.
        });
        if taken > 0 {
            wake.append(&mut self.room);
        }
        taken
    }
}

/// A lane: its state, the cells its outcomes wait in, and the counters every submit
/// through it is counted in (by any thread, so with atomic adds; the lane's producer
/// itself never counts).
struct ClientLane {
    state: Mutex<LaneState>,
    cells: Cells,
    counters: Arc<ProducerCounters>,
}

struct Inner {
    /// Tells this client's counters from another's in a thread's cache.
    id: u64,
    shared: Arc<EngineShared>,
    lanes: Box<[ClientLane]>,
    /// Each thread's counters for the answers given at screening (see `count_early`).
    threads: Mutex<FxHashMap<ThreadId, Arc<ProducerCounters>>>,
    notify: Arc<Notify>,
    stop: AtomicBool,
}

/// Hands out home lanes: each thread takes the next number the first time it buys. A
/// plain `std` atomic, also under loom: it only numbers, and orders nothing (loom's atomics
/// cannot be statics).
static NEXT_HOME: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Numbers clients (a `std` atomic for the same reason).
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The counters a thread last counted early answers in, and their client's id.
type Mine = RefCell<Option<(u64, Arc<ProducerCounters>)>>;

#[cfg(not(loom))]
std::thread_local! {
    static HOME: Cell<usize> = const { Cell::new(usize::MAX) };
    static MINE: Mine = const { RefCell::new(None) };
}

#[cfg(loom)]
loom::thread_local! {
    static HOME: Cell<usize> = Cell::new(usize::MAX);
    static MINE: Mine = RefCell::new(None);
}

impl Inner {
    /// Counts an answer given at screening (no lane, no lock) in this thread's own counters
    /// for this client: one writer per counters, so no locked instruction, and the report
    /// sums them with every producer's. A thread's counters are made the first time it
    /// buys through this client, and last as long as the engine.
    #[inline]
    fn count_early(&self, early: &Result<Submitted, SubmitError>) {
        let counted = MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some((id, counters)) = &*mine
                && *id == self.id
            {
                counters.count(early, false);
                return;
            }
            let counters = self
                .threads
                .lock()
                .entry(thread::current().id())
                .or_insert_with(|| self.shared.new_counters())
                .clone();
            counters.count(early, false);
            *mine = Some((self.id, counters));
        });
        if counted.is_err() {
            // This thread is being torn down: count in a lane's, with an atomic add.
            self.lanes[0].counters.count(early, true);
        }
    }
}

/// This thread's home lane number (before `% lanes`).
#[inline]
fn home() -> usize {
    HOME.with(|home| {
        let mut number = home.get();
        if number == usize::MAX {
            number = NEXT_HOME.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            home.set(number);
        }
        number
    })
}

/// Stops the pump when the last client handle goes.
struct Owner {
    inner: Arc<Inner>,
    pump: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.notify.unpark();
        if let Some(pump) = self.pump.lock().take() {
            // An executor may drop the last handle inside a `wake()` the pump called: the
            // pump cannot join itself, and stops on its own once this returns.
            if pump.thread().id() != thread::current().id() {
                let _ = pump.join();
            }
        }
    }
}

/// A cloneable, `Send + Sync` handle for buying from async tasks (see the
/// [module docs](self)). Make one with [`AsyncClient::new`]; clone it into every task.
#[derive(Clone)]
pub struct AsyncClient {
    owner: Arc<Owner>,
}

impl fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("lanes", &self.owner.inner.lanes.len())
            .finish()
    }
}

impl AsyncClient {
    /// The most lanes a client takes (each is a producer, with a ring to every shard).
    pub const LANES_MAX: usize = 4_096;

    /// A client with `lanes` producer lanes (at least 1; a few per core is plenty: each
    /// lane holds up to the engine's ring capacity in flight per shard) and its pump
    /// thread. Besides its producer's rings, each lane keeps a cell for each intent it can
    /// have in flight, up to 4,096 (64 bytes each with its waker), where the pump leaves
    /// outcomes for their futures.
    ///
    /// # Errors
    /// [`InvalidInput`](std::io::ErrorKind::InvalidInput) for more than
    /// [`LANES_MAX`](Self::LANES_MAX) lanes, or the OS refused the pump thread.
    pub fn new(engine: &Engine, lanes: usize) -> std::io::Result<Self> {
        if lanes > Self::LANES_MAX {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{lanes} lanes: at most {}", Self::LANES_MAX),
            ));
        }
        // The pump's thread handle goes into the lanes' notify, so it starts first and
        // waits (parked) until its client is handed over in `slot`.
        let slot: Arc<Mutex<Option<Arc<Inner>>>> = Arc::new(Mutex::new(None));
        let pump = {
            let slot = slot.clone();
            thread::spawn_named("flashsale-client-pump".into(), move || {
                loop {
                    let handed = slot.lock().take();
                    if let Some(inner) = handed {
                        drop(slot);
                        return pump(&inner);
                    }
                    thread::park();
                }
            })?
        };
        let notify = Arc::new(Notify::new(pump.thread().clone()));
        let shared = engine.shared();
        let in_flight = shared.ring_capacity.saturating_mul(shared.shards.len());
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let producer = engine.producer_notifying(notify.clone());
                let cells = Cells::new(in_flight);
                ClientLane {
                    counters: producer.counters().clone(),
                    state: Mutex::new(LaneState {
                        producer,
                        wakers: (0..cells.cells.len()).map(|_| None).collect(),
                        slots: SequentialMap::default(),
                        room: Vec::new(),
                    }),
                    cells,
                }
            })
            .collect();
        let inner = Arc::new(Inner {
            id: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            shared: engine.shared().clone(),
            lanes,
            threads: Mutex::new(FxHashMap::default()),
            notify,
            stop: AtomicBool::new(false),
        });
        // Nothing from the spawn on can fail, so the pump always gets its client.
        *slot.lock() = Some(inner.clone());
        pump.thread().unpark();
        Ok(Self {
            owner: Arc::new(Owner {
                inner,
                pump: Mutex::new(Some(pump)),
            }),
        })
    }

    /// Buys: resolves to the intent's outcome, or the refusal (`ShutDown`,
    /// `ShardFailed`; a lane that is `Busy` makes the future wait for room instead).
    ///
    /// The future borrows the client; to spawn it, move a clone into the task:
    /// `let client = client.clone(); tokio::spawn(async move { client.buy(intent).await })`.
    #[inline]
    pub fn buy(&self, intent: Intent) -> Buy<'_> {
        self.buy_with(intent, false)
    }

    /// As [`buy`](Self::buy), for an intent that would rather wait for a unit than be
    /// rejected as sold out (see [`Producer::submit_or_wait`]).
    pub fn buy_or_wait(&self, intent: Intent) -> Buy<'_> {
        self.buy_with(intent, true)
    }

    /// As [`buy`](Self::buy), but where every lane is full (`ring_capacity` intents in
    /// flight to the SKU's shard on each), resolves to [`SubmitError::Busy`] at once instead
    /// of waiting for room: for servers that shed load (e.g. answer HTTP 429).
    #[inline]
    pub fn try_buy(&self, intent: Intent) -> Buy<'_> {
        Buy {
            refuse_busy: true,
            ..self.buy_with(intent, false)
        }
    }

    /// Intents in flight on each lane: submitted, not yet handed to their future (those
    /// waiting at a shard included). Each lane's is at most `ring_capacity` per shard, plus
    /// its waiting intents.
    pub fn in_flight(&self) -> Vec<usize> {
        self.owner
            .inner
            .lanes
            .iter()
            .map(|lane| lane.state.lock().producer.in_flight())
            .collect()
    }

    #[inline]
    fn buy_with(&self, intent: Intent, wait: bool) -> Buy<'_> {
        Buy {
            inner: &self.owner.inner,
            intent,
            wait,
            refuse_busy: false,
            lane: 0,
            ticket: None,
            cell: None,
            done: false,
        }
    }
}

/// The pump: takes arrivals and wakes their futures; parks when there are none.
fn pump(inner: &Inner) {
    let mut wake = Vec::new();
    loop {
        let mut taken = 0;
        for lane in inner.lanes.iter() {
            taken += lane.state.lock().take_arrivals(&lane.cells, &mut wake);
        }
        for waker in wake.drain(..) {
            waker.wake();
        }
        if taken > 0 {
            continue;
        }
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        inner.notify.sleep_unless(None, || {
            inner.stop.load(Ordering::SeqCst)
                || inner
                    .lanes
                    .iter()
                    .any(|lane| lane.state.lock().producer.has_arrivals())
        });
    }
}

/// The future of one [`AsyncClient::buy`]; it borrows the client.
pub struct Buy<'a> {
    inner: &'a Inner,
    intent: Intent,
    wait: bool,
    /// Resolve to `Busy` rather than wait for room.
    refuse_busy: bool,
    /// The lane it was queued on (once `ticket` is set).
    lane: usize,
    /// Set once submitted and queued.
    ticket: Option<Ticket>,
    /// The index of its outcome's cell on the lane, if it took one (its slot otherwise).
    cell: Option<usize>,
    done: bool,
}

impl fmt::Debug for Buy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buy")
            .field("intent", &self.intent)
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Buy<'_> {
    /// The first poll (and any after every lane was `Busy`): queues on the home lane, or
    /// on the first other lane that is neither locked nor full right now; failing those,
    /// waits for the home lane's lock, and for room there if it is full.
    fn submit(&mut self, route: Route, cx: &Context<'_>) -> Poll<Result<Outcome, SubmitError>> {
        let inner = self.inner;
        let count = inner.lanes.len();
        let home = home() % count;
        for step in 0..count {
            let index = (home + step) % count;
            if let Some(mut lane) = inner.lanes[index].state.try_lock() {
                match lane.producer.queue(self.intent, self.wait, route) {
                    Err(SubmitError::Busy(_)) => continue,
                    queued => return self.queued(index, &mut lane, queued, cx),
                }
            }
        }
        let mut lane = inner.lanes[home].state.lock();
        let queued = lane.producer.queue(self.intent, self.wait, route);
        self.queued(home, &mut lane, queued, cx)
    }

    /// Records what became of a queue attempt on lane `index` (whose lock is held).
    fn queued(
        &mut self,
        index: usize,
        lane: &mut LaneState,
        queued: Result<Submitted, SubmitError>,
        cx: &Context<'_>,
    ) -> Poll<Result<Outcome, SubmitError>> {
        self.inner.lanes[index].counters.count(&queued, true);
        match queued {
            Ok(Submitted::Queued(ticket)) => {
                self.lane = index;
                self.ticket = Some(ticket);
                let waker = Some(cx.waker().clone());
                self.cell = self.inner.lanes[index].cells.take(ticket);
                match self.cell {
                    Some(cell) => lane.wakers[cell] = waker,
                    None => {
                        lane.slots.insert(
                            ticket,
                            Slot {
                                outcome: None,
                                waker,
                            },
                        );
                    }
                }
                Poll::Pending
            }
            Ok(Submitted::Answered(outcome)) => {
                self.done = true;
                Poll::Ready(Ok(outcome))
            }
            Err(SubmitError::Busy(intent)) if self.refuse_busy => {
                self.done = true;
                Poll::Ready(Err(SubmitError::Busy(intent)))
            }
            Err(SubmitError::Busy(_)) => {
                // Under the lane's lock: the pump's next take from this lane wakes it.
                lane.room.push(cx.waker().clone());
                Poll::Pending
            }
            Err(refused) => {
                self.done = true;
                Poll::Ready(Err(refused))
            }
        }
    }
}

impl Future for Buy<'_> {
    type Output = Result<Outcome, SubmitError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = this.inner;
        let Some(ticket) = this.ticket else {
            let early = match inner.shared.screen(&this.intent, this.wait) {
                Screened::Queue(route) => return this.submit(route, cx),
                Screened::Answered(outcome) => Ok(outcome),
                Screened::Refused(refused) => Err(refused),
            };
            inner.count_early(&early.map(Submitted::Answered));
            this.done = true;
            return Poll::Ready(early);
        };
        let client_lane = &inner.lanes[this.lane];
        if let Some(cell) = this.cell {
            // Without the lock: the pump has filled the cell.
            if let Some(outcome) = client_lane.cells.take_outcome(cell, ticket) {
                this.done = true;
                return Poll::Ready(Ok(outcome));
            }
            // Not yet: the waker is the lane's to change (the pump takes it under the lock).
            let mut lane = client_lane.state.lock();
            if let Some(outcome) = client_lane.cells.take_outcome(cell, ticket) {
                this.done = true;
                return Poll::Ready(Ok(outcome));
            }
            let waker = &mut lane.wakers[cell];
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let mut lane = client_lane.state.lock();
        let slot = lane
            .slots
            .get_mut(&ticket)
            .expect("a queued future keeps its slot until it completes");
        match slot.outcome.take() {
            Some(outcome) => {
                lane.slots.remove(&ticket);
                this.done = true;
                Poll::Ready(Ok(outcome))
            }
            None => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Buy<'_> {
    #[inline]
    fn drop(&mut self) {
        if let (Some(ticket), false) = (self.ticket, self.done) {
            // Decided anyway (and counted, and sunk if confirmed); nobody takes it.
            let lane = &self.inner.lanes[self.lane];
            let mut state = lane.state.lock();
            match self.cell {
                Some(cell) => {
                    state.wakers[cell] = None;
                    lane.cells.abandon(cell);
                }
                None => {
                    state.slots.remove(&ticket);
                }
            }
        }
    }
}
