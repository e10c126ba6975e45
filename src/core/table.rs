//! Memory for the order book: a boxed slice of zeroed `[u64; 4]` slots that, when large,
//! lives on transparent huge pages.
//!
//! A large book is probed at random, one slot per intent. With 4 KiB pages each probe is
//! also a TLB miss, and under virtualisation a page walk costs several memory round trips:
//! measured here, it, not the cache miss, bounded the shard at under 2M confirmations/s
//! with 10M orders. On Linux a table of 2 MiB or more is therefore allocated 2 MiB-aligned
//! and advised `MADV_HUGEPAGE` before it is first written (the kernel's THP mode here is
//! `madvise`). Without huge pages (another OS, THP off, Miri) it is ordinary memory.

use core::ops::{Deref, DerefMut};
use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::ptr::NonNull;

pub(super) type Slot = [u64; 4];

const HUGE_PAGE_BYTES: usize = 2 << 20;

/// `len` zeroed slots, each page written once up front.
pub(super) struct SlotTable {
    /// Points to `len` initialised slots, allocated with `layout` (or dangling when
    /// `len == 0`, never the case for the book, which has at least 16 slots).
    pointer: NonNull<Slot>,
    len: usize,
    layout: Layout,
}

// SAFETY: the table owns its slots exclusively, like a `Box<[Slot]>`.
unsafe impl Send for SlotTable {}
// SAFETY: shared access only reads `u64`s, like a `&[Slot]`.
unsafe impl Sync for SlotTable {}

impl SlotTable {
    /// A table of `len` free (all-zero) slots.
    pub(super) fn zeroed(len: usize) -> Self {
        let bytes = len
            .checked_mul(size_of::<Slot>())
            .expect("order book size overflows usize");
        let huge = bytes >= HUGE_PAGE_BYTES && cfg!(target_os = "linux") && !cfg!(miri);
        let align = if huge {
            HUGE_PAGE_BYTES
        } else {
            align_of::<Slot>()
        };
        let size = if huge {
            bytes.next_multiple_of(HUGE_PAGE_BYTES)
        } else {
            bytes.max(size_of::<Slot>())
        };
        let layout = Layout::from_size_align(size, align).expect("valid order book layout");
        // Not `alloc_zeroed`: for this alignment it zeroes by writing, which would fault the
        // pages in as small pages before the advice below.
        // SAFETY: `layout` has a non-zero size (at least one slot).
        let raw = unsafe { alloc(layout) };
        let Some(pointer) = NonNull::new(raw.cast::<Slot>()) else {
            handle_alloc_error(layout);
        };
        if huge {
            advise_huge_pages(raw, size);
        }
        // Zero by writing, which also faults every page in now, so that no look-up maps the
        // shared zero page (whose first write would cost a copy-on-write fault and a TLB
        // shoot-down on every core running the process).
        // SAFETY: `raw` is valid for `size` bytes of writes, and zero bits are a valid
        // `[u64; 4]`.
        unsafe { raw.write_bytes(0, size) };
        Self {
            pointer,
            len,
            layout,
        }
    }
}

#[cfg(all(target_os = "linux", not(miri)))]
fn advise_huge_pages(start: *mut u8, size: usize) {
    // SAFETY: `start..start + size` is one live allocation of ours, 2 MiB-aligned;
    // MADV_HUGEPAGE only changes how the kernel backs it and cannot invalidate it. The
    // result is ignored: without THP the memory is simply backed by small pages.
    unsafe {
        libc::madvise(start.cast(), size, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(all(target_os = "linux", not(miri))))]
fn advise_huge_pages(_start: *mut u8, _size: usize) {}

impl Deref for SlotTable {
    type Target = [Slot];

    fn deref(&self) -> &[Slot] {
        // SAFETY: `pointer` holds `len` initialised (zeroed or written) slots that live as
        // long as `self`.
        unsafe { core::slice::from_raw_parts(self.pointer.as_ptr(), self.len) }
    }
}

impl DerefMut for SlotTable {
    fn deref_mut(&mut self) -> &mut [Slot] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.pointer.as_ptr(), self.len) }
    }
}

impl Clone for SlotTable {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl Drop for SlotTable {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout, and freed only here.
        unsafe { dealloc(self.pointer.as_ptr().cast(), self.layout) };
    }
}

impl core::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotTable")
            .field("len", &self.len)
            .field("bytes", &self.layout.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_huge_tables_are_zeroed_writable_and_cloneable() {
        // Under Miri the huge-page path is off anyway; keep its table small.
        let large = if cfg!(miri) {
            1_000
        } else {
            (4 << 20) / 32 + 3
        };
        for len in [16, large] {
            let mut table = SlotTable::zeroed(len);
            assert_eq!(table.len(), len);
            assert!(table.iter().all(|slot| *slot == [0; 4]));
            table[len - 1] = [1, 2, 3, 4];
            let copy = table.clone();
            assert_eq!(copy[len - 1], [1, 2, 3, 4]);
            assert_eq!(copy[0], [0; 4]);
        }
    }
}
