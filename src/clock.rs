//! The engine clock: nanoseconds since the engine started, read on every submit.
//!
//! Stamping sits on the hot path, so the clock is the cheaper of the two correct choices we
//! measured (`benches/clock.rs`): quanta's TSC reading, scaled to nanoseconds, where the CPU
//! has an invariant TSC (quanta checks at start-up), and the OS monotonic clock otherwise
//! (quanta falls back by itself). Both are monotonic per thread; the TSC is also synchronised
//! across cores on the machines quanta accepts it on, so a stamp taken on a producer thread
//! can be compared with a reading on a shard thread.

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
}

impl EngineClock {
    /// A clock whose zero is now.
    pub fn start() -> Self {
        #[cfg(not(miri))]
        {
            let clock = quanta::Clock::new();
            let start_raw = clock.raw();
            Self {
                clock,
                start_raw,
                offset_ns: 0,
            }
        }
        #[cfg(miri)]
        Self {
            start: std::time::Instant::now(),
            offset_ns: 0,
        }
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
        #[cfg(not(miri))]
        let elapsed = self.clock.delta_as_nanos(self.start_raw, self.clock.raw());
        #[cfg(miri)]
        let elapsed = self.start.elapsed().as_nanos() as u64;
        elapsed.saturating_add(self.offset_ns)
    }
}
