//! A cache prefetch hint, for code that knows which memory it will touch next.

/// Asks the CPU to start loading the cache line holding `value`. A hint only: it never
/// faults and changes nothing observable; a no-op off x86_64.
#[inline(always)]
pub(crate) fn prefetch_read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no visible effect on memory (the pointer comes
    // from a reference anyway); `_mm_prefetch` needs SSE, which every x86_64 CPU has.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
