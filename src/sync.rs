//! The one door between the crate's concurrent code and its atomics, cells and threads.
//!
//! Every module that threads meet in (the rings, the sold-out gate, the engine's hand-offs
//! and shutdown) imports these names from here, never from `std` directly. Built with
//! `RUSTFLAGS="--cfg loom"`, the same names resolve to loom's model-checked versions, so
//! the loom tests exercise the production code itself, not a copy (tokio's `src/loom`
//! module is the pattern).

#[cfg(loom)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) mod atomic {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
}
#[cfg(loom)]
pub(crate) mod thread {
    pub(crate) use loom::thread::{JoinHandle, Thread, ThreadId, current, park, spawn, yield_now};

    /// loom has no timed park; the models set no timers, so a plain park is the same.
    pub(crate) fn park_timeout(_timeout: core::time::Duration) {
        park();
    }

    /// loom has no named builder; the name is only a debugging aid, so it is dropped.
    pub(crate) fn spawn_named<F, T>(_name: String, f: F) -> std::io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(spawn(f))
    }
}
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) mod atomic {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering, fence};
}
#[cfg(not(loom))]
pub(crate) mod thread {
    pub(crate) use std::thread::{
        JoinHandle, Thread, ThreadId, current, park, park_timeout, yield_now,
    };

    /// Spawns a named thread (the name shows in debuggers and `top -H`).
    pub(crate) fn spawn_named<F, T>(name: String, f: F) -> std::io::Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::thread::Builder::new().name(name).spawn(f)
    }
}

/// A control-plane lock (parking_lot in production, loom's under loom). Never poisoned:
/// under loom a panicking model thread fails the model anyway.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(
    #[cfg(not(loom))] parking_lot::Mutex<T>,
    #[cfg(loom)] loom::sync::Mutex<T>,
);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(loom))]
        return Self(parking_lot::Mutex::new(value));
        #[cfg(loom)]
        return Self(loom::sync::Mutex::new(value));
    }

    #[cfg(not(loom))]
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, T> {
        self.0.lock()
    }

    #[cfg(loom)]
    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The lock if no one holds it now.
    #[cfg(not(loom))]
    pub(crate) fn try_lock(&self) -> Option<parking_lot::MutexGuard<'_, T>> {
        self.0.try_lock()
    }

    /// The lock if no one holds it now.
    #[cfg(loom)]
    pub(crate) fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

/// `std::cell::UnsafeCell` behind loom's closure-based API, so that loom can track every
/// access to a ring slot.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
