//! The engine clock: nanoseconds since the engine started, read on every submit.
//!
//! Stamping sits on the hot path, so the clock is the cheaper of the two correct choices we
//! measured (`benches/clock.rs`): quanta's TSC reading, scaled to nanoseconds, where the CPU
//! has an invariant TSC (quanta checks at start-up), and the OS monotonic clock otherwise
//! (quanta falls back by itself). Both are monotonic per thread; the TSC is also synchronised
//! across cores on the machines quanta accepts it on, so a stamp taken on a producer thread
//! can be compared with a reading on a shard thread.
//!
//! Tests and replays that must not race real time run the engine on a [`ManualClock`]
//! instead ([`EngineBuilder::manual_clock`](crate::EngineBuilder::manual_clock)): it moves
//! only when told to, so a hold never expires and a draw window never closes behind a
//! slow machine's back.

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::thread::Thread;
use crate::sync::{Arc, Mutex};

/// A clock that moves only when advanced: every reading is the instant it was last set to.
/// Clones share one clock. Advancing wakes the shard workers of an engine running on it,
/// so that holds and draws falling due are served at once.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now_ns: AtomicU64,
    /// Threads that sleep until something falls due on this clock (shard workers).
    sleepers: Mutex<Vec<Thread>>,
}

impl ManualClock {
    /// A clock that reads `now_ns` until advanced.
    pub fn new(now_ns: u64) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                now_ns: AtomicU64::new(now_ns),
                sleepers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The instant it reads, ns.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.inner.now_ns.load(Ordering::Acquire)
    }

    /// Moves the clock on by `by_ns` (saturating) and returns the new instant.
    pub fn advance(&self, by_ns: u64) -> u64 {
        let mut now_ns = self.now_ns();
        while let Err(seen) = self.inner.now_ns.compare_exchange_weak(
            now_ns,
            now_ns.saturating_add(by_ns),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            now_ns = seen;
        }
        self.wake();
        now_ns.saturating_add(by_ns)
    }

    /// Moves the clock to `now_ns` if it reads less (it never goes back).
    pub fn advance_to(&self, now_ns: u64) {
        self.inner.now_ns.fetch_max(now_ns, Ordering::AcqRel);
        self.wake();
    }

    fn wake(&self) {
        for thread in self.inner.sleepers.lock().iter() {
            thread.unpark();
        }
    }

    /// Registers a thread to unpark whenever the clock moves.
    pub(crate) fn wake_on_advance(&self, thread: Thread) {
        self.inner.sleepers.lock().push(thread);
    }
}

/// Nanoseconds since a fixed start, from quanta's fastest correct source.
#[derive(Debug, Clone)]
pub struct EngineClock {
    #[cfg(not(miri))]
    clock: quanta::Clock,
    #[cfg(not(miri))]
    start_raw: u64,
    /// Miri cannot run quanta's CPU probing (inline assembly); it gets the OS clock.
    #[cfg(miri)]
    start: std::time::Instant,
    /// Added to every reading: where a recovered engine's clock resumes.
    offset_ns: u64,
    /// When set, every reading is this clock's instead.
    manual: Option<ManualClock>,
}

impl EngineClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        #[cfg(not(miri))]
        {
            // quanta probes the CPU (cpuid) on every `Clock::new`; the answer cannot change
            // while the process runs, so one probed clock serves every engine (tests and
            // fuzzers start thousands).
            static PROBED: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
            let clock = PROBED.get_or_init(quanta::Clock::new).clone();
            let start_raw = clock.raw();
            Self {
                clock,
                start_raw,
                offset_ns: 0,
                manual: None,
            }
        }
        #[cfg(miri)]
        Self {
            start: std::time::Instant::now(),
            offset_ns: 0,
            manual: None,
        }
    }

    /// A clock that reads `manual` (moved on to `resume_ns` first if it reads less).
    pub fn manual(manual: ManualClock, resume_ns: u64) -> Self {
        manual.advance_to(resume_ns);
        Self {
            manual: Some(manual),
            ..Self::start()
        }
    }

    /// The manual clock it reads, if any.
    pub fn manual_clock(&self) -> Option<&ManualClock> {
        self.manual.as_ref()
    }

    /// A clock that reads `offset_ns` now and counts on from there (a recovered engine's
    /// clock resumes after the last instant its journal holds).
    pub fn start_at(offset_ns: u64) -> Self {
        Self {
            offset_ns,
            ..Self::start()
        }
    }

    /// Nanoseconds since [`start`](Self::start); never goes backwards on one thread.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        if let Some(manual) = &self.manual {
            return manual.now_ns();
        }
        #[cfg(not(miri))]
        let elapsed = self.clock.delta_as_nanos(self.start_raw, self.clock.raw());
        #[cfg(miri)]
        let elapsed = self.start.elapsed().as_nanos() as u64;
        elapsed.saturating_add(self.offset_ns)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_forward_and_only_when_told() {
        let manual = ManualClock::new(5);
        let clock = EngineClock::manual(manual.clone(), 3);
        assert_eq!(clock.now_ns(), 5, "never moved back to resume");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(clock.now_ns(), 5, "real time does not move it");
        assert_eq!(manual.advance(10), 15);
        assert_eq!(clock.now_ns(), 15);
        manual.advance_to(7);
        assert_eq!(clock.now_ns(), 15, "never goes back");
        manual.advance_to(100);
        assert_eq!(manual.advance(u64::MAX), u64::MAX, "saturates");
        let resumed = EngineClock::manual(ManualClock::new(0), 42);
        assert_eq!(resumed.now_ns(), 42);
    }
}
