//! The journal thread: a shard's synced group commits written and synced off the shard's
//! thread, so that the shard decides the next group while the disk holds the previous one.
//!
//! The shard encodes each command itself (into [`Pipe::append`]'s buffer, consecutive buys
//! into batch records), and when a group is due hands the bytes to this thread
//! ([`Pipe::hand_off`]) together with the outputs the group decided, which it keeps back
//! until the thread reports the group durable ([`Pipe::completed`]). One group is in
//! flight at a time; the next one gathers meanwhile, so a slow sync makes the next group
//! larger rather than the shard idle.
//! Records encoded while a group is in flight count its bytes as unsynced (the conservative
//! reading), and a group is only ever handed off after the one before it is durable, so
//! the file reads exactly as if the shard had written it itself.
//!
//! A write or sync that fails fails its group and every later one: the thread writes
//! nothing more, and the shard answers what they decided `ShardFailed`, as with the inline
//! commit.

use std::collections::VecDeque;

use super::durability::Outbox;
use crate::core::Command;
use crate::journal::{Encoder, JournalWriter};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::thread::{Task, Thread};
use crate::sync::{Arc, Mutex};
use crate::types::ShardId;

/// What the shard asks of the journal thread.
enum Job {
    /// Write these records (`records` of them) and sync.
    Write { bytes: Vec<u8>, records: u64 },
    /// Hand the writer back and end.
    Stop,
}

/// What the shard and its journal thread share.
struct Shared {
    jobs: Mutex<VecDeque<Job>>,
    /// Groups written and synced (or failed), in order.
    done: AtomicU64,
    /// A write or sync failed: that group and every later one are not durable.
    failed: AtomicBool,
    /// The first failure's error, set before `failed` is raised.
    failure: Mutex<Option<String>>,
    /// The shard's thread, woken when a group is done.
    shard: Thread,
    /// The journal thread, woken when a job arrives.
    thread: Mutex<Option<Thread>>,
    /// The writer, until the thread takes it (given back if the thread cannot start).
    writer: Mutex<Option<JournalWriter>>,
    /// A written group's buffer, cleared, for the shard's next group (two buffers take
    /// turns, so handing off allocates nothing once both have grown).
    spare: Mutex<Option<Vec<u8>>>,
}

/// A group handed off and not yet reported durable.
struct InFlight {
    /// Its number (groups are numbered from 1).
    group: u64,
    /// What it decided, held until it is durable.
    outbox: Outbox,
    /// The file's length once it is written.
    end: u64,
}

/// The shard's side of its journal thread.
pub(crate) struct Pipe {
    buffer: Vec<u8>,
    /// Gathers consecutive buys into the journal's batches.
    encoder: Encoder,
    /// Commands encoded into `buffer`.
    records: u64,
    next_sequence: u64,
    /// The file's length once every group handed off is written.
    handed_len: u64,
    /// Bytes known to be synced.
    synced_len: u64,
    handed: u64,
    in_flight: Option<InFlight>,
    shared: Arc<Shared>,
    thread: Option<Task<Option<JournalWriter>>>,
}

impl Pipe {
    /// Moves `writer` to a journal thread for `shard` (a new one, or with `reuse_thread` one
    /// kept from an engine that stopped), which wakes `shard_thread` when a group is durable.
    /// If the thread cannot be spawned, the writer comes back (boxed: that rare path should
    /// not make every start move a large result).
    pub(crate) fn start(
        writer: JournalWriter,
        shard: ShardId,
        shard_thread: Thread,
        reuse_thread: bool,
    ) -> Result<Self, Box<JournalWriter>> {
        let (written, synced) = writer.lengths();
        let next_sequence = writer.next_sequence();
        let encoder = Encoder::new(writer.batches());
        let shared = Arc::new(Shared {
            jobs: Mutex::new(VecDeque::new()),
            done: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            shard: shard_thread,
            thread: Mutex::new(None),
            writer: Mutex::new(Some(writer)),
            spare: Mutex::new(None),
        });
        let spawned = {
            let shared = shared.clone();
            crate::sync::thread::spawn_task(
                format!("flashsale-journal-{}", shard.0),
                reuse_thread,
                move || {
                    let writer = shared.writer.lock().take();
                    writer.map(|writer| serve(writer, &shared))
                },
            )
        };
        let thread = match spawned {
            Ok(thread) => thread,
            Err(_) => {
                let writer = shared.writer.lock().take();
                return Err(Box::new(
                    writer.expect("the thread never ran, so the writer is still here"),
                ));
            }
        };
        *shared.thread.lock() = Some(thread.thread().clone());
        Ok(Self {
            buffer: Vec::with_capacity(64 << 10),
            encoder,
            records: 0,
            next_sequence,
            handed_len: written,
            synced_len: synced,
            handed: 0,
            in_flight: None,
            shared,
            thread: Some(thread),
        })
    }

    /// Encodes a command's record into the group gathering now.
    #[inline]
    pub(crate) fn append(&mut self, sequence: u64, command: &Command) {
        assert_eq!(
            sequence, self.next_sequence,
            "journal records must come in sequence order"
        );
        let (handed, synced) = (self.handed_len, self.synced_len);
        self.encoder
            .push(sequence, command, &mut self.buffer, |at| {
                u32::try_from(handed + at as u64 - synced).unwrap_or(u32::MAX)
            });
        self.records += 1;
        self.next_sequence += 1;
    }

    /// Whether a group is in flight.
    pub(crate) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the group in flight has been reported (the shard should not sleep).
    pub(crate) fn report_waiting(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|flight| self.shared.done.load(Ordering::Acquire) >= flight.group)
    }

    /// Whether a write or sync has failed.
    pub(crate) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// The error of the write or sync that failed, if one has.
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.failure.lock().clone()
    }

    /// The outbox of the group in flight (for an output that depends only on commands
    /// already handed off).
    pub(crate) fn in_flight_outbox(&mut self) -> Option<&mut Outbox> {
        self.in_flight.as_mut().map(|flight| &mut flight.outbox)
    }

    /// The group in flight, if the thread has reported it: whether it is durable, and what
    /// it decided.
    pub(crate) fn completed(&mut self) -> Option<(bool, Outbox)> {
        if !self.report_waiting() {
            return None;
        }
        let flight = self.in_flight.take()?;
        let durable = !self.failed();
        if durable {
            self.synced_len = flight.end;
        }
        Some((durable, flight.outbox))
    }

    /// Hands the group gathered so far to the thread, with what it decided; only when no
    /// group is in flight. A group with no record needs no write: it comes back at once
    /// as durable (its outputs depend only on groups already durable).
    pub(crate) fn hand_off(&mut self, outbox: Outbox) -> Option<(bool, Outbox)> {
        debug_assert!(self.in_flight.is_none());
        if self.failed() {
            return Some((false, outbox));
        }
        if self.records == 0 {
            return Some((true, outbox));
        }
        self.encoder.finish(&mut self.buffer);
        let next = self
            .shared
            .spare
            .lock()
            .take()
            .unwrap_or_else(|| Vec::with_capacity(64 << 10));
        let bytes = std::mem::replace(&mut self.buffer, next);
        self.handed_len += bytes.len() as u64;
        self.handed += 1;
        self.in_flight = Some(InFlight {
            group: self.handed,
            outbox,
            end: self.handed_len,
        });
        let records = std::mem::take(&mut self.records);
        self.shared
            .jobs
            .lock()
            .push_back(Job::Write { bytes, records });
        self.wake_thread();
        None
    }

    fn wake_thread(&self) {
        if let Some(thread) = self.shared.thread.lock().as_ref() {
            thread.unpark();
        }
    }

    /// Stops the thread and takes the writer back (nothing in flight, nothing gathered).
    pub(crate) fn stop(&mut self) -> Option<JournalWriter> {
        let thread = self.thread.take()?;
        self.shared.jobs.lock().push_back(Job::Stop);
        self.wake_thread();
        thread.join().ok().flatten()
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // A shard that stops without sealing (a failed one) still ends its thread.
        let _ = self.stop();
    }
}

/// The journal thread's loop: writes and syncs each group in order, reports it, and wakes
/// the shard; after a failure, reports the rest failed without writing them.
fn serve(mut writer: JournalWriter, shared: &Shared) -> JournalWriter {
    loop {
        let job = shared.jobs.lock().pop_front();
        match job {
            Some(Job::Write { mut bytes, records }) => {
                if !shared.failed.load(Ordering::Acquire)
                    && let Err(error) = writer.commit_encoded(&bytes, records, true)
                {
                    *shared.failure.lock() = Some(error.to_string());
                    shared.failed.store(true, Ordering::Release);
                }
                bytes.clear();
                *shared.spare.lock() = Some(bytes);
                shared.done.fetch_add(1, Ordering::Release);
                shared.shard.unpark();
            }
            Some(Job::Stop) => return writer,
            None => crate::sync::thread::park(),
        }
    }
}
