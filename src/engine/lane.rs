//! The hand-offs between the engine's threads: what a producer sends a shard worker and
//! what comes back (the request and completion rings' items, a lane's deferred queue and
//! the sleeper it wakes), and a control command with the slot its answer comes back in.
//! Plain data and their small synchronisation; every thread-facing module depends on it,
//! and it on none of them.

use crate::core::Command;
use crate::ring;
use crate::sync::atomic::{AtomicBool, Ordering, fence};
use crate::sync::thread::Thread;
use crate::sync::{Arc, Mutex};
use crate::types::{
    Completion, ControlError, Intent, Order, OrderId, Outcome, RejectReason, Ticket,
};

/// An intent on its way to a shard: stamped, and with its SKU resolved to the shard's
/// local index so the shard skips the id lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub(crate) intent: Intent,
    pub(crate) arrival_ns: u64,
    pub(crate) local: u32,
    /// [`Command::BuyOrWait`] rather than [`Command::Buy`].
    pub(crate) wait: bool,
    /// The producer's number for this submit, handed back with its completion.
    pub(crate) ticket: Ticket,
}

/// What the worker sends back on a completion ring, in the order of the requests it
/// answers: only what the producer does not know already. The producer keeps each
/// in-flight request's intent and ticket and rebuilds the [`Completion`] from them
/// ([`Reply::complete`]), so a reply is 24 bytes, not the 80 of a whole completion: the
/// cache lines the producer takes from the shard's core per outcome shrink with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Confirmed: the order is the intent's buyer and SKU with these.
    Confirmed {
        id: OrderId,
        sequence: u64,
        quantity: u32,
    },
    /// Rejected for the reason at `reason` in [`RejectReason::ALL`] (a duplicate's first
    /// order is `duplicate_of`); `sequence` is [`NO_SEQUENCE`] where the outcome has
    /// none. The reason is kept as its index so that the reply stays 24 bytes.
    Rejected {
        reason: u8,
        sequence: u64,
        duplicate_of: OrderId,
    },
    /// The intent waits (pooled, or on a waitlist): its ring slot is free again, and its
    /// outcome will come through the lane's [`Deferred`](DeferredQueue) queue.
    Parked,
}

/// A rejection's sequence when it has none (a failed shard's answer). Sequences count
/// commands from 0 and never reach it.
const NO_SEQUENCE: u64 = u64::MAX;

const _: () = assert!(core::mem::size_of::<Reply>() <= 24);

impl Reply {
    /// The reply for a decided intent.
    #[inline]
    pub(crate) fn decided(intent: &Intent, outcome: Outcome) -> Self {
        match outcome {
            Outcome::Confirmed(order) => {
                debug_assert_eq!((order.user, order.sku), (intent.user, intent.sku));
                Self::Confirmed {
                    id: order.id,
                    sequence: order.sequence,
                    quantity: order.quantity,
                }
            }
            Outcome::Rejected { reason, sequence } => Self::Rejected {
                reason: reason.index() as u8,
                sequence: sequence.unwrap_or(NO_SEQUENCE),
                duplicate_of: match reason {
                    RejectReason::Duplicate(first) => first,
                    _ => OrderId(0),
                },
            },
        }
    }

    /// The answer to an intent whose group the journal could not commit.
    pub(crate) const fn failed() -> Self {
        Self::Rejected {
            reason: RejectReason::ShardFailed.index() as u8,
            sequence: NO_SEQUENCE,
            duplicate_of: OrderId(0),
        }
    }

    /// The completion of `intent`, submitted as `ticket`, that this reply answers;
    /// `None` if it waits.
    #[inline]
    pub(crate) fn complete(self, intent: Intent, ticket: Ticket) -> Option<Completion> {
        let outcome = match self {
            Self::Confirmed {
                id,
                sequence,
                quantity,
            } => Outcome::Confirmed(Order {
                id,
                user: intent.user,
                sku: intent.sku,
                quantity,
                sequence,
            }),
            Self::Rejected {
                reason,
                sequence,
                duplicate_of,
            } => Outcome::Rejected {
                reason: match RejectReason::ALL[usize::from(reason)] {
                    RejectReason::Duplicate(_) => RejectReason::Duplicate(duplicate_of),
                    other => other,
                },
                sequence: (sequence != NO_SEQUENCE).then_some(sequence),
            },
            Self::Parked => return None,
        };
        Some(Completion {
            intent,
            outcome,
            ticket,
            waited: false,
        })
    }
}

/// Outcomes of a lane's waiting intents, decided later. Unbounded, but its length is
/// bounded by the pools' and waitlists' capacities: it holds only intents that waited.
#[derive(Default)]
pub(crate) struct DeferredQueue {
    completions: Mutex<Vec<Completion>>,
    /// Raised (Release) by the worker after it pushed; lowered by the producer before it
    /// takes them all, so that a push it misses raises it again.
    ready: AtomicBool,
    /// Who to wake when outcomes arrive for this lane (an async client's pump), if anyone.
    pub(crate) notify: Option<Arc<Notify>>,
}

/// A thread that sleeps until outcomes arrive on its lanes: the worker wakes it after it
/// publishes to one (the same store-buffering protocol as a shard's own parking: the
/// sleeper raises `sleeping`, fences, then looks for arrivals; the worker publishes,
/// fences, then looks at `sleeping`).
///
/// A movable one's sleeper is the thread that last slept (a parking producer may move
/// between threads): written under its lock before `sleeping` is raised (Release), and
/// read under that lock only by a waker that saw `sleeping` (Acquire), so a waker always
/// unparks the thread that is about to sleep.
#[derive(Debug)]
pub struct Notify {
    sleeping: AtomicBool,
    thread: Mutex<Thread>,
    /// Whether the sleeper may be another thread than the one given.
    movable: bool,
}

impl Notify {
    /// Wakes `thread`, which sleeps with [`sleep_unless`](Self::sleep_unless).
    pub fn new(thread: Thread) -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            thread: Mutex::new(thread),
            movable: false,
        }
    }

    /// Wakes whichever thread last slept with [`sleep_unless`](Self::sleep_unless) (the
    /// calling thread until one does).
    pub fn movable() -> Self {
        Self {
            movable: true,
            ..Self::new(crate::sync::thread::current())
        }
    }

    /// Worker side, after publishing: wakes the sleeper if it sleeps or is about to.
    pub fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Acquire) {
            self.thread.lock().unpark();
        }
    }

    /// Sleeper side (on the thread to wake): raises `sleeping`, fences, then parks unless
    /// `arrived()` finds something. A publish the check missed is followed by a
    /// [`wake`](Self::wake) that sees the flag, so no arrival is slept through; parking
    /// may also return spuriously, and returns after `at_most` if given, so callers loop.
    /// Returns whether it parked (`arrived()` found nothing).
    pub fn sleep_unless(
        &self,
        at_most: Option<core::time::Duration>,
        arrived: impl FnOnce() -> bool,
    ) -> bool {
        if self.movable {
            let mut thread = self.thread.lock();
            let current = crate::sync::thread::current();
            if thread.id() != current.id() {
                *thread = current;
            }
        }
        self.sleeping.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        let park = !arrived();
        if park {
            match at_most {
                Some(timeout) => crate::sync::thread::park_timeout(timeout),
                None => crate::sync::thread::park(),
            }
        }
        self.sleeping.store(false, Ordering::Relaxed);
        park
    }

    /// Unparks the sleeping thread whatever it is doing (e.g. to make it see a stop flag).
    pub fn unpark(&self) {
        self.thread.lock().unpark();
    }
}

impl DeferredQueue {
    /// An empty queue that wakes `notify` when outcomes arrive.
    pub(crate) fn with_notify(notify: Option<Arc<Notify>>) -> Self {
        Self {
            notify,
            ..Self::default()
        }
    }

    /// Worker side.
    pub(crate) fn push(&self, completion: Completion) {
        self.completions.lock().push(completion);
        self.ready.store(true, Ordering::Release);
        self.signal();
    }

    /// Worker side: outcomes were published for this lane.
    #[inline]
    pub(crate) fn signal(&self) {
        if let Some(notify) = &self.notify {
            notify.wake();
        }
    }

    /// Producer side: whether outcomes are waiting to be taken.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Producer side: hands every completion that has arrived to `f`; returns how many.
    pub(crate) fn take(&self, mut f: impl FnMut(Completion)) -> usize {
        if !self.ready.load(Ordering::Acquire) {
            return 0;
        }
        self.ready.store(false, Ordering::Relaxed);
        let taken = std::mem::take(&mut *self.completions.lock());
        let count = taken.len();
        for completion in taken {
            f(completion);
        }
        count
    }
}

/// The worker's end of the two rings it shares with one producer.
pub(crate) struct WorkerLane {
    pub(crate) requests: ring::Reader<Request>,
    pub(crate) completions: ring::Writer<Reply>,
    pub(crate) deferred: Arc<DeferredQueue>,
}

/// Where the worker writes one command's answer.
pub(crate) struct ReplySlot {
    result: Mutex<Option<Result<(), ControlError>>>,
    waiter: Thread,
}

impl ReplySlot {
    /// An empty slot whose answer wakes `waiter`.
    pub(crate) fn new(waiter: Thread) -> Self {
        Self {
            result: Mutex::new(None),
            waiter,
        }
    }

    /// Worker side: answers and wakes the caller.
    pub(crate) fn fulfil(&self, result: Result<(), ControlError>) {
        *self.result.lock() = Some(result);
        self.waiter.unpark();
    }

    /// Caller side: waits for the answer.
    pub(crate) fn wait(&self) -> Result<(), ControlError> {
        loop {
            if let Some(result) = self.result.lock().take() {
                return result;
            }
            crate::sync::thread::park();
        }
    }
}

/// A command waiting for its shard's worker.
pub(crate) struct ControlRequest {
    pub(crate) command: Command,
    pub(crate) reply: Arc<ReplySlot>,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::types::{SkuId, UserId};

    #[test]
    fn every_outcome_comes_back_whole_from_its_reply() {
        let intent = Intent {
            user: UserId(7),
            client_key: 9,
            sku: SkuId(3),
            quantity: 2,
        };
        let mut outcomes = vec![Outcome::Confirmed(Order {
            id: OrderId(0x1234_5678_9abc),
            user: intent.user,
            sku: intent.sku,
            quantity: 1,
            sequence: 41,
        })];
        for reason in RejectReason::ALL
            .into_iter()
            .chain([RejectReason::Duplicate(OrderId(u64::MAX - 1))])
        {
            for sequence in [None, Some(0), Some(u64::MAX - 1)] {
                outcomes.push(Outcome::Rejected { reason, sequence });
            }
        }
        for outcome in outcomes {
            let completion = Reply::decided(&intent, outcome)
                .complete(intent, Ticket(5))
                .expect("a decided intent completes");
            assert_eq!(
                completion,
                Completion {
                    intent,
                    outcome,
                    ticket: Ticket(5),
                    waited: false,
                }
            );
        }
        assert_eq!(Reply::Parked.complete(intent, Ticket(5)), None);
        assert_eq!(
            Reply::failed()
                .complete(intent, Ticket(5))
                .map(|c| c.outcome),
            Some(Outcome::Rejected {
                reason: RejectReason::ShardFailed,
                sequence: None
            })
        );
    }
}
