//! The async client: a cloneable `Send + Sync` handle that any task can `buy` through,
//! without a producer of its own.
//!
//! Inside: a fixed set of producer lanes (each a [`Producer`] behind a lock), taken round
//! robin, and one *pump* thread. A task submits on a lane and parks its future with its
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
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use crate::engine::{Engine, Notify, Producer, SubmitError, Submitted};
use crate::types::{Intent, Outcome, Ticket};

/// An outcome not yet taken by its future, and who to wake.
struct Slot {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
}

/// One producer lane and the futures waiting on it.
struct LaneState {
    producer: Producer,
    slots: FxHashMap<Ticket, Slot>,
    /// Futures refused `Busy`, to wake when this lane's outcomes free room.
    room: Vec<Waker>,
}

impl LaneState {
    /// Takes every arrived completion into its slot; returns how many, and collects the
    /// wakers to call (outside the lock).
    fn take_arrivals(&mut self, wake: &mut Vec<Waker>) -> usize {
        let slots = &mut self.slots;
        let taken = self.producer.poll(|completion| {
            // No slot: its future was dropped; the outcome has nobody to go to.
            if let Some(slot) = slots.get_mut(&completion.ticket) {
                slot.outcome = Some(completion.outcome);
                wake.extend(slot.waker.take());
            }
        });
        if taken > 0 {
            wake.append(&mut self.room);
        }
        taken
    }
}

struct Inner {
    lanes: Box<[Mutex<LaneState>]>,
    next: AtomicUsize,
    notify: Arc<Notify>,
    stop: AtomicBool,
}

/// Stops the pump when the last client handle goes.
struct Owner {
    inner: Arc<Inner>,
    pump: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.notify.thread.unpark();
        if let Some(pump) = self.pump.lock().take() {
            // An executor may drop the last handle inside a `wake()` the pump called: the
            // pump cannot join itself, and stops on its own once this returns.
            if pump.thread().id() != std::thread::current().id() {
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
    /// A client with `lanes` producer lanes (at least 1; a few per core is plenty: each
    /// lane holds up to the engine's ring capacity in flight per shard) and its pump
    /// thread.
    ///
    /// # Errors
    /// The OS refused the pump thread.
    pub fn new(engine: &Engine, lanes: usize) -> std::io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Weak<Inner>>();
        // The pump's thread handle goes into the lanes' notify, so it starts first and
        // waits for its lanes.
        let pump = std::thread::Builder::new()
            .name("flashsale-client-pump".into())
            .spawn(move || {
                if let Ok(inner) = ready_rx.recv()
                    && let Some(inner) = inner.upgrade()
                {
                    pump(&inner);
                }
            })?;
        let notify = Arc::new(Notify {
            sleeping: crate::sync::atomic::AtomicBool::new(false),
            thread: pump.thread().clone(),
        });
        let lanes = (0..lanes.max(1))
            .map(|_| {
                Mutex::new(LaneState {
                    producer: engine.producer_notifying(notify.clone()),
                    slots: FxHashMap::default(),
                    room: Vec::new(),
                })
            })
            .collect();
        let inner = Arc::new(Inner {
            lanes,
            next: AtomicUsize::new(0),
            notify,
            stop: AtomicBool::new(false),
        });
        let _ = ready_tx.send(Arc::downgrade(&inner));
        Ok(Self {
            owner: Arc::new(Owner {
                inner,
                pump: Mutex::new(Some(pump)),
            }),
        })
    }

    /// Buys: resolves to the intent's outcome, or the refusal (`ShutDown`,
    /// `ShardFailed`; a lane that is `Busy` makes the future wait for room instead).
    pub fn buy(&self, intent: Intent) -> Buy {
        self.buy_with(intent, false)
    }

    /// As [`buy`](Self::buy), for an intent that would rather wait for a unit than be
    /// rejected as sold out (see [`Producer::submit_or_wait`]).
    pub fn buy_or_wait(&self, intent: Intent) -> Buy {
        self.buy_with(intent, true)
    }

    fn buy_with(&self, intent: Intent, wait: bool) -> Buy {
        let inner = &self.owner.inner;
        let lane = inner.next.fetch_add(1, Ordering::Relaxed) % inner.lanes.len();
        Buy {
            client: self.clone(),
            intent,
            wait,
            lane,
            ticket: None,
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
            taken += lane.lock().take_arrivals(&mut wake);
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
        inner.notify.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let arrived = inner
            .lanes
            .iter()
            .any(|lane| lane.lock().producer.has_arrivals());
        if !arrived && !inner.stop.load(Ordering::SeqCst) {
            std::thread::park();
        }
        inner.notify.sleeping.store(false, Ordering::Relaxed);
    }
}

/// The future of one [`AsyncClient::buy`].
pub struct Buy {
    client: AsyncClient,
    intent: Intent,
    wait: bool,
    lane: usize,
    /// Set once submitted and queued.
    ticket: Option<Ticket>,
    done: bool,
}

impl fmt::Debug for Buy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buy")
            .field("intent", &self.intent)
            .field("ticket", &self.ticket)
            .finish()
    }
}

impl Future for Buy {
    type Output = Result<Outcome, SubmitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let inner = &this.client.owner.inner;
        let mut lane = inner.lanes[this.lane].lock();
        let Some(ticket) = this.ticket else {
            let submitted = if this.wait {
                lane.producer.submit_or_wait(this.intent)
            } else {
                lane.producer.submit(this.intent)
            };
            return match submitted {
                Ok(Submitted::Answered(outcome)) => {
                    this.done = true;
                    Poll::Ready(Ok(outcome))
                }
                Ok(Submitted::Queued(ticket)) => {
                    this.ticket = Some(ticket);
                    lane.slots.insert(
                        ticket,
                        Slot {
                            outcome: None,
                            waker: Some(cx.waker().clone()),
                        },
                    );
                    Poll::Pending
                }
                Err(SubmitError::Busy(_)) => {
                    lane.room.push(cx.waker().clone());
                    Poll::Pending
                }
                Err(refused) => {
                    this.done = true;
                    Poll::Ready(Err(refused))
                }
            };
        };
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

impl Drop for Buy {
    fn drop(&mut self) {
        if let (Some(ticket), false) = (self.ticket, self.done) {
            // Decided anyway (and counted, and sunk if confirmed); nobody takes it.
            self.client.owner.inner.lanes[self.lane]
                .lock()
                .slots
                .remove(&ticket);
        }
    }
}
