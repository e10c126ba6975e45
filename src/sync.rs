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

    /// Under loom every task is a thread of the model's own.
    pub(crate) type Task<T> = JoinHandle<T>;

    /// Under loom there are no threads to reuse: a task is always a new model thread.
    pub(crate) fn spawn_task<F, T>(name: String, _reuse: bool, f: F) -> std::io::Result<Task<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        spawn_named(name, f)
    }
}
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// Between a SeqCst read-modify-write and a later SeqCst load of another atomic, where the
/// pair is one side of a store-buffering protocol: nothing, as both operations are in the
/// single total order of SeqCst operations and fences (C++20 \[atomics.order\]), which the
/// other side joins with a SeqCst fence; a fence here would cost an `mfence` on x86-64 after
/// a locked instruction that already orders everything. Under loom, which models SeqCst
/// accesses as AcqRel only, a SeqCst fence, so that the models see the same order.
#[inline(always)]
pub(crate) fn after_seqcst_rmw() {
    #[cfg(loom)]
    atomic::fence(atomic::Ordering::SeqCst);
}

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

    pub(crate) use super::reuse::{Task, spawn_task};
}

/// Threads kept after an engine stops, for the next engine to start its shards and journal
/// threads on ([`crate::EngineBuilder::reuse_threads`]): a process that starts and stops
/// many small engines (a fuzzer, a test suite) otherwise spends much of each start and stop
/// creating and ending threads (a fifth of the `engine_threads` fuzzer's time). An idle
/// thread waits for a task for [`reuse::KEEP_IDLE`] and then ends.
#[cfg(not(loom))]
pub(crate) mod reuse {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::sync::Arc;
    use std::thread::{JoinHandle, Thread};
    use std::time::{Duration, Instant};

    /// How long a thread with nothing to run waits for a task before it ends.
    pub(crate) const KEEP_IDLE: Duration = Duration::from_secs(2);

    /// How long a thread that has just finished a task watches for the next (spinning and
    /// yielding) before it sleeps: an engine started right after one stopped then finds its
    /// threads awake, rather than waking each (a wake-up, here, cost the starting thread
    /// about three times the start's other work).
    const SPIN: Duration = Duration::from_micros(100);

    /// How many times [`Task::join`] looks for the result, yielding between looks, before
    /// it sleeps until the result is handed over.
    const JOIN_WATCHES: u32 = 64;

    /// A task's body: runs the task and gives back what hands its result over.
    type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

    /// A kept thread: where the next task is put, and the thread to wake for it.
    struct Idle {
        job: parking_lot::Mutex<Option<Job>>,
        thread: Thread,
    }

    /// Threads waiting for a task, the most recently idle last (its caches are warmest).
    static IDLE: parking_lot::Mutex<Vec<Arc<Idle>>> = parking_lot::Mutex::new(Vec::new());

    /// Where a reused thread leaves its task's result for [`Task::join`].
    pub(crate) struct Handoff<T> {
        result: parking_lot::Mutex<Option<std::thread::Result<T>>>,
        ready: parking_lot::Condvar,
    }

    /// One task on a thread of its own or on a reused one; joined like a thread.
    pub(crate) enum Task<T> {
        /// A thread started for this task alone, ending with it.
        Own(JoinHandle<T>),
        /// A kept thread, which goes back to waiting for a task after this one.
        Reused {
            thread: Thread,
            handoff: Arc<Handoff<T>>,
        },
    }

    impl<T> Task<T> {
        /// The thread running the task (to unpark it).
        pub(crate) fn thread(&self) -> &Thread {
            match self {
                Task::Own(handle) => handle.thread(),
                Task::Reused { thread, .. } => thread,
            }
        }

        /// Waits for the task to end: its result, or the payload it panicked with.
        pub(crate) fn join(self) -> std::thread::Result<T> {
            match self {
                Task::Own(handle) => handle.join(),
                Task::Reused { handoff, .. } => {
                    // A task being joined is usually ending (a shard told to stop drains
                    // and returns): watch for its result a little before sleeping, which
                    // spares the wake-up when it comes soon.
                    for _ in 0..JOIN_WATCHES {
                        if let Some(result) = handoff.result.lock().take() {
                            return result;
                        }
                        std::thread::yield_now();
                    }
                    let mut result = handoff.result.lock();
                    loop {
                        if let Some(result) = result.take() {
                            return result;
                        }
                        handoff.ready.wait(&mut result);
                    }
                }
            }
        }
    }

    /// Runs `f` on a thread named `name` or, with `reuse`, on a kept idle thread if there
    /// is one (a new kept thread otherwise, which keeps the name of its first task).
    pub(crate) fn spawn_task<F, T>(name: String, reuse: bool, f: F) -> std::io::Result<Task<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if !reuse {
            return super::thread::spawn_named(name, f).map(Task::Own);
        }
        let handoff = Arc::new(Handoff {
            result: parking_lot::Mutex::new(None),
            ready: parking_lot::Condvar::new(),
        });
        let job: Job = {
            let handoff = handoff.clone();
            Box::new(move || {
                let result = catch_unwind(AssertUnwindSafe(f));
                Box::new(move || {
                    *handoff.result.lock() = Some(result);
                    handoff.ready.notify_all();
                })
            })
        };
        let idle = IDLE.lock().pop();
        let thread = match idle {
            Some(idle) => {
                *idle.job.lock() = Some(job);
                idle.thread.unpark();
                idle.thread.clone()
            }
            None => std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(job))?
                .thread()
                .clone(),
        };
        Ok(Task::Reused { thread, handoff })
    }

    /// A kept thread's life: its first task, then each task it is given, until it has
    /// waited [`KEEP_IDLE`] with none.
    fn serve(first: Job) {
        let me = Arc::new(Idle {
            job: parking_lot::Mutex::new(None),
            thread: std::thread::current(),
        });
        let mut job = first;
        loop {
            let hand_over = job();
            // Idle before the result is handed over, so that whoever joins this task and
            // starts the next finds this thread waiting.
            IDLE.lock().push(me.clone());
            hand_over();
            watch_for_task(&me.job);
            let mut deadline = Some(Instant::now() + KEEP_IDLE);
            job = loop {
                if let Some(next) = me.job.lock().take() {
                    break next;
                }
                match deadline {
                    Some(at) if Instant::now() >= at => {
                        let mut idle = IDLE.lock();
                        match idle.iter().position(|kept| Arc::ptr_eq(kept, &me)) {
                            Some(index) => {
                                idle.swap_remove(index);
                                return;
                            }
                            // Taken off the list just now: its task is on the way.
                            None => deadline = None,
                        }
                    }
                    Some(at) => {
                        std::thread::park_timeout(at.saturating_duration_since(Instant::now()))
                    }
                    None => std::thread::park(),
                }
            };
        }
    }

    /// Spins (yielding now and then) until `job` holds a task or [`SPIN`] has passed.
    fn watch_for_task(job: &parking_lot::Mutex<Option<Job>>) {
        let until = Instant::now() + SPIN;
        let mut spins = 0u32;
        while job.lock().is_none() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(16) {
                if Instant::now() >= until {
                    return;
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn idle_threads() -> usize {
            IDLE.lock().len()
        }

        /// One test, so that nothing else in this process takes the kept threads between
        /// its steps.
        #[test]
        fn tasks_run_on_kept_threads_and_the_threads_end_when_left_idle() {
            let id = || std::thread::current().id();
            let first = spawn_task("first".into(), true, id).unwrap();
            let first_thread = first.thread().id();
            assert_eq!(first.join().unwrap(), first_thread);
            // The thread that ran the first task runs the next.
            let second = spawn_task("second".into(), true, id).unwrap();
            assert_eq!(second.thread().id(), first_thread);
            assert_eq!(second.join().unwrap(), first_thread);

            // A task that panics is joined as an error, and its thread lives on.
            let panics = spawn_task("panics".into(), true, || -> u32 { panic!("planted") });
            assert!(panics.unwrap().join().is_err());
            let after = spawn_task("after".into(), true, id).unwrap();
            assert_eq!(after.join().unwrap(), first_thread);

            // Tasks at the same time run on threads of their own, each result to its task.
            let (sender, receiver) = std::sync::mpsc::channel::<()>();
            let waits = spawn_task("waits".into(), true, move || {
                receiver.recv().unwrap();
                (id(), 7)
            })
            .unwrap();
            let runs = spawn_task("runs".into(), true, move || (id(), 8)).unwrap();
            let (runs_on, eight) = runs.join().unwrap();
            sender.send(()).unwrap();
            let (waits_on, seven) = waits.join().unwrap();
            assert_ne!(runs_on, waits_on);
            assert_eq!((seven, eight), (7, 8));

            // Without reuse, a task gets a thread of its own, named as asked.
            let own = spawn_task("flashsale-own".into(), false, || {
                std::thread::current().name().map(str::to_owned)
            })
            .unwrap();
            assert!(matches!(own, Task::Own(_)));
            assert_eq!(own.join().unwrap().as_deref(), Some("flashsale-own"));

            // Left idle, the kept threads end (after KEEP_IDLE; a bounded wait, not a
            // timing asserted).
            let give_up = Instant::now() + KEEP_IDLE * 30;
            while idle_threads() > 0 && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(idle_threads(), 0, "kept threads outlived their idle wait");
        }
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
