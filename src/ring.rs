//! A bounded, lock-free single-producer single-consumer ring that the reader can close.
//!
//! This is the transport between a producer handle and a shard worker, one ring per
//! direction and pair. Its contract is carried by types, as in `rtrb`: [`channel`] hands
//! out one [`Writer`] and one [`Reader`]; both take `&mut self` and neither is `Clone`, so a
//! ring can only ever have one thread on each side.
//!
//! Two things set it apart from a plain SPSC ring:
//! - **Batched publish and consume.** [`Writer::write`] fills slots without telling the
//!   reader; [`Writer::publish`] makes everything written visible with one atomic operation.
//!   [`Reader::read_batch`] takes everything visible with one load and frees it with one
//!   store. Each side caches the other's index and refreshes it only when it looks full or
//!   empty, so the cache line of the opposite index is touched once per batch, not per item.
//! - **Close, linearizable against publish.** The reader can [`close`](Reader::close) the
//!   ring by setting a bit in the tail index; the writer publishes with a compare-exchange on
//!   the same word. Exactly one of the two comes first: either the reader's close returns a
//!   tail that includes the items (and it must read them), or the publish fails and the
//!   writer takes its items back. This is what lets engine shutdown race with submits
//!   without losing or double-answering an intent.

use core::fmt;
use core::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::sync::Arc;
use crate::sync::UnsafeCell;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The bit of the tail word that marks the ring closed; indices stay below it (2^63 items
/// would take centuries at a billion per second).
const CLOSED_BIT: u64 = 1 << 63;

/// The largest capacity [`channel`] accepts: 2^31 slots.
pub const CAPACITY_MAX: usize = 1 << 31;

/// Why [`channel`] refused to build a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    /// A ring must hold at least one item.
    #[error("ring capacity must be at least 1")]
    Zero,
    /// The capacity, rounded up to a power of two, would exceed [`CAPACITY_MAX`].
    #[error("ring capacity {0} is above the maximum of 2^31")]
    TooLarge(usize),
}

/// Why [`Writer::push`] could not hand the value over; the value comes back to the caller.
#[derive(PartialEq, Eq)]
pub enum PushError<T> {
    /// Every slot holds an item the reader has not taken yet.
    Full(T),
    /// The reader closed the ring; nothing will ever be read from it again.
    Closed(T),
}

impl<T> PushError<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(value) | Self::Closed(value) => value,
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

/// The reader closed the ring: the items written since the last publish were not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

struct Shared<T> {
    /// Index of the next slot the reader will take. Written by the reader only; in
    /// `published_tail - capacity ..= published_tail`.
    head: CachePadded<AtomicU64>,
    /// Index one past the last published item, plus [`CLOSED_BIT`] once the reader closed the
    /// ring. The index part is written by the writer only, the bit by the reader only.
    tail: CachePadded<AtomicU64>,
    /// Set when the writer half is dropped; published items may still wait to be read.
    writer_dropped: AtomicBool,
    /// Set when the reader half is dropped; nothing will be read any more.
    reader_dropped: AtomicBool,
    /// `capacity` slots, a power of two; slot `i % capacity` holds item `i`.
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// `capacity - 1`.
    mask: u64,
}

impl<T> Shared<T> {
    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Moves item `index` out of its slot.
    ///
    /// # Safety
    /// Item `index` was written and not yet moved out, and no other thread accesses its slot
    /// until this returns.
    unsafe fn take(&self, index: u64) -> T {
        let slot = (index & self.mask) as usize;
        debug_assert!(slot < self.slots.len());
        // SAFETY: `slot <= mask < slots.len()` by construction of `mask`.
        let cell = unsafe { self.slots.get_unchecked(slot) };
        // SAFETY: the caller guarantees the slot holds an initialised item that nobody else
        // touches now; reading it out leaves the slot logically empty.
        cell.with_mut(|pointer| unsafe { (*pointer).assume_init_read() })
    }

    /// Writes item `index` into its slot.
    ///
    /// # Safety
    /// The slot of item `index` is empty (never written, or its previous item was moved out
    /// and the reader released it) and no other thread accesses it until this returns.
    unsafe fn put(&self, index: u64, value: T) {
        let slot = (index & self.mask) as usize;
        debug_assert!(slot < self.slots.len());
        // SAFETY: `slot <= mask < slots.len()` by construction of `mask`.
        let cell = unsafe { self.slots.get_unchecked(slot) };
        // SAFETY: the caller guarantees exclusive access to an empty slot.
        cell.with_mut(|pointer| unsafe { (*pointer).write(value) });
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both halves are gone: drop the published items the reader never took. Items
        // written but never published were dropped by the writer half.
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire) & !CLOSED_BIT;
        for index in head..tail {
            // SAFETY: items head..tail were published and not taken, and no half is left
            // to touch them.
            drop(unsafe { self.take(index) });
        }
    }
}

/// Builds a ring of at least `capacity` slots (rounded up to a power of two) and returns its
/// two halves.
///
/// # Errors
/// [`CapacityError::Zero`] for a capacity of 0, [`CapacityError::TooLarge`] above
/// [`CAPACITY_MAX`].
pub fn channel<T>(capacity: usize) -> Result<(Writer<T>, Reader<T>), CapacityError> {
    if capacity == 0 {
        return Err(CapacityError::Zero);
    }
    if capacity > CAPACITY_MAX {
        return Err(CapacityError::TooLarge(capacity));
    }
    let capacity = capacity.next_power_of_two();
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicU64::new(0)),
        tail: CachePadded::new(AtomicU64::new(0)),
        writer_dropped: AtomicBool::new(false),
        reader_dropped: AtomicBool::new(false),
        slots,
        mask: capacity as u64 - 1,
    });
    let writer = Writer {
        shared: shared.clone(),
        tail: 0,
        published: 0,
        cached_head: 0,
    };
    let reader = Reader {
        shared,
        head: 0,
        cached_tail: 0,
    };
    Ok((writer, reader))
}

/// The writing half of a ring; see the [module docs](self).
pub struct Writer<T> {
    shared: Arc<Shared<T>>,
    /// Index of the next slot to write; `published ..= cached_head + capacity`.
    tail: u64,
    /// Index one past the last item made visible to the reader; `<= tail`.
    published: u64,
    /// The reader's head as last seen; never ahead of the real one.
    cached_head: u64,
}

// SAFETY: the writer only moves `T` values into slots that the reader will move out on its
// own thread, so sending the half to another thread needs only `T: Send`.
unsafe impl<T: Send> Send for Writer<T> {}

impl<T> Writer<T> {
    /// The number of slots (a power of two).
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Writes `value` into the next free slot without publishing it; it becomes visible to
    /// the reader at the next [`publish`](Self::publish). Hands the value back when every
    /// slot is taken.
    #[inline]
    pub fn write(&mut self, value: T) -> Result<(), T> {
        if self.tail - self.cached_head == self.shared.capacity() {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail - self.cached_head == self.shared.capacity() {
                return Err(value);
            }
        }
        // SAFETY: `tail - head < capacity`, so the slot of `tail` is empty (the reader
        // released its previous item with the Release store of `head` we acquired), and
        // only this writer writes slots at or beyond the published tail.
        unsafe { self.shared.put(self.tail, value) };
        self.tail += 1;
        Ok(())
    }

    /// Makes every written item visible to the reader with one atomic operation.
    ///
    /// # Errors
    /// [`Closed`] when the reader closed the ring: the unpublished items stay with the
    /// writer; take them back with [`take_back`](Self::take_back).
    #[inline]
    pub fn publish(&mut self) -> Result<(), Closed> {
        if self.tail == self.published {
            return Ok(());
        }
        // Release: the slots written before are visible to a reader that acquires the tail.
        // SeqCst, not only Release: the engine's park protocol follows a publish with a
        // SeqCst load of the worker's `sleeping` flag and no fence between (see
        // `ShardShared::wake_if_sleeping`). It costs nothing more where a locked
        // compare-exchange is already a full barrier (x86-64).
        match self.shared.tail.compare_exchange(
            self.published,
            self.tail,
            Ordering::SeqCst,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                self.published = self.tail;
                Ok(())
            }
            Err(current) => {
                // Only the reader changes the tail word besides us, and it only sets the bit.
                debug_assert_eq!(current, self.published | CLOSED_BIT);
                Err(Closed)
            }
        }
    }

    /// Removes the most recently written, still unpublished item, if there is one.
    pub fn take_back(&mut self) -> Option<T> {
        if self.tail == self.published {
            return None;
        }
        self.tail -= 1;
        // SAFETY: item `tail` was written by us and never published, so the reader cannot
        // have seen it.
        Some(unsafe { self.shared.take(self.tail) })
    }

    /// Writes and publishes one value.
    ///
    /// # Errors
    /// [`PushError::Full`] or [`PushError::Closed`], with the value handed back; nothing
    /// else written before stays unpublished by this call's failure.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), PushError<T>> {
        self.write(value).map_err(PushError::Full)?;
        match self.publish() {
            Ok(()) => Ok(()),
            Err(Closed) => match self.take_back() {
                Some(value) => Err(PushError::Closed(value)),
                None => unreachable!("the value was written just before"),
            },
        }
    }

    /// Whether the reader has closed the ring (a later publish will fail).
    pub fn is_closed(&self) -> bool {
        self.shared.tail.load(Ordering::Acquire) & CLOSED_BIT != 0
    }

    /// Whether the reader half has been dropped (nothing published will be read).
    pub fn is_abandoned(&self) -> bool {
        self.shared.reader_dropped.load(Ordering::Acquire)
    }
}

impl<T> Drop for Writer<T> {
    fn drop(&mut self) {
        while self.take_back().is_some() {}
        self.shared.writer_dropped.store(true, Ordering::Release);
    }
}

impl<T> fmt::Debug for Writer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail)
            .field("published", &self.published)
            .finish()
    }
}

/// The reading half of a ring; see the [module docs](self).
pub struct Reader<T> {
    shared: Arc<Shared<T>>,
    /// Index of the next item to read; `<= cached_tail`.
    head: u64,
    /// The writer's published tail as last seen (without the closed bit).
    cached_tail: u64,
}

// SAFETY: the reader only moves `T` values out of slots written on the writer's thread, so
// sending the half to another thread needs only `T: Send`.
unsafe impl<T: Send> Send for Reader<T> {}

impl<T> Reader<T> {
    /// The number of slots (a power of two).
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    fn refresh_tail(&mut self) -> u64 {
        self.cached_tail = self.shared.tail.load(Ordering::Acquire) & !CLOSED_BIT;
        self.cached_tail
    }

    /// Takes up to `max` published items, oldest first, handing each to `f`, and frees their
    /// slots with one store at the end. Returns how many it took.
    #[inline]
    pub fn read_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        if self.head == self.cached_tail && self.head == self.refresh_tail() {
            return 0;
        }
        let end = self
            .cached_tail
            .min(self.head.saturating_add(max.try_into().unwrap_or(u64::MAX)));
        let start = self.head;
        while self.head < end {
            // SAFETY: `head < cached_tail`, and the Acquire load of the tail made the
            // writer's write of item `head` visible; the writer does not touch it until we
            // release it by storing `head` past it.
            let value = unsafe { self.shared.take(self.head) };
            self.head += 1;
            f(value);
        }
        self.shared.head.store(self.head, Ordering::Release);
        (end - start) as usize
    }

    /// Takes the oldest published item.
    pub fn pop(&mut self) -> Option<T> {
        let mut taken = None;
        self.read_batch(1, |value| taken = Some(value));
        taken
    }

    /// Whether no published item is waiting (reads the writer's index).
    pub fn is_empty(&mut self) -> bool {
        self.head == self.cached_tail && self.head == self.refresh_tail()
    }

    /// The number of published items waiting (reads the writer's index).
    pub fn len(&mut self) -> usize {
        (self.refresh_tail() - self.head) as usize
    }

    /// Closes the ring: every later publish fails. Items published before the close stay
    /// readable; the returned count says how many wait now (none can be added after it).
    pub fn close(&mut self) -> usize {
        let tail = self.shared.tail.fetch_or(CLOSED_BIT, Ordering::AcqRel);
        self.cached_tail = tail & !CLOSED_BIT;
        (self.cached_tail - self.head) as usize
    }

    /// Whether the ring has been closed.
    pub fn is_closed(&self) -> bool {
        self.shared.tail.load(Ordering::Acquire) & CLOSED_BIT != 0
    }

    /// Whether the writer half has been dropped. Items it published before may still wait:
    /// check [`is_empty`](Self::is_empty) after this returns `true`.
    pub fn is_abandoned(&self) -> bool {
        self.shared.writer_dropped.load(Ordering::Acquire)
    }

    /// Whether anything published waits to be read, refreshing the cached tail (for the
    /// engine's park protocol, which orders this load with a SeqCst fence before it).
    pub(crate) fn has_published(&mut self) -> bool {
        self.head != self.refresh_tail()
    }
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        self.shared.reader_dropped.store(true, Ordering::Release);
    }
}

impl<T> fmt::Debug for Reader<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("capacity", &self.capacity())
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn capacity_is_checked_and_rounded() {
        assert_eq!(channel::<u8>(0).unwrap_err(), CapacityError::Zero);
        assert_eq!(
            channel::<u8>(CAPACITY_MAX + 1).unwrap_err(),
            CapacityError::TooLarge(CAPACITY_MAX + 1)
        );
        let (writer, reader) = channel::<u8>(5).unwrap();
        assert_eq!(writer.capacity(), 8);
        assert_eq!(reader.capacity(), 8);
    }

    #[test]
    fn full_empty_and_wrap_around() {
        let (mut writer, mut reader) = channel::<u32>(4).unwrap();
        assert_eq!(reader.pop(), None);
        for round in 0..10u32 {
            for i in 0..4 {
                writer.push(round * 4 + i).unwrap();
            }
            assert_eq!(writer.push(99), Err(PushError::Full(99)));
            let mut seen = Vec::new();
            assert_eq!(reader.read_batch(usize::MAX, |v| seen.push(v)), 4);
            assert_eq!(seen, (round * 4..round * 4 + 4).collect::<Vec<_>>());
            assert!(reader.is_empty());
        }
    }

    #[test]
    fn unpublished_items_are_invisible_then_visible() {
        let (mut writer, mut reader) = channel::<u32>(8).unwrap();
        writer.write(1).unwrap();
        writer.write(2).unwrap();
        assert_eq!(reader.pop(), None);
        writer.publish().unwrap();
        assert_eq!(reader.len(), 2);
        assert_eq!(reader.read_batch(1, |v| assert_eq!(v, 1)), 1);
        assert_eq!(reader.pop(), Some(2));
    }

    #[test]
    fn close_refuses_later_publish_and_keeps_earlier_items() {
        let (mut writer, mut reader) = channel::<u32>(8).unwrap();
        writer.push(1).unwrap();
        assert_eq!(reader.close(), 1);
        assert!(writer.is_closed());
        assert_eq!(writer.push(2), Err(PushError::Closed(2)));
        writer.write(3).unwrap();
        assert_eq!(writer.publish(), Err(Closed));
        assert_eq!(writer.take_back(), Some(3));
        assert_eq!(reader.pop(), Some(1));
        assert_eq!(reader.pop(), None);
    }

    #[derive(Debug)]
    struct Counted<'a>(&'a AtomicUsize);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn every_value_is_dropped_exactly_once() {
        let drops = AtomicUsize::new(0);
        {
            let (mut writer, mut reader) = channel(4).unwrap();
            writer.push(Counted(&drops)).unwrap();
            writer.push(Counted(&drops)).unwrap();
            writer.write(Counted(&drops)).unwrap(); // never published
            drop(reader.pop()); // taken and dropped by us
            // one published item is left in the ring, one unpublished with the writer
        }
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn abandonment_is_seen_from_both_sides() {
        let (writer, reader) = channel::<u8>(2).unwrap();
        assert!(!reader.is_abandoned());
        drop(writer);
        assert!(reader.is_abandoned());
        let (writer, reader) = channel::<u8>(2).unwrap();
        drop(reader);
        assert!(writer.is_abandoned());
    }

    #[test]
    fn spsc_threads_preserve_order() {
        let count: u64 = if cfg!(miri) { 200 } else { 200_000 };
        let (mut writer, mut reader) = channel::<u64>(64).unwrap();
        let handle = std::thread::spawn(move || {
            let mut next = 0;
            while next < count {
                match writer.push(next) {
                    Ok(()) => next += 1,
                    Err(PushError::Full(_)) => std::hint::spin_loop(),
                    Err(PushError::Closed(_)) => unreachable!(),
                }
            }
        });
        let mut expected = 0;
        while expected < count {
            reader.read_batch(usize::MAX, |value| {
                assert_eq!(value, expected);
                expected += 1;
            });
        }
        handle.join().unwrap();
    }
}
