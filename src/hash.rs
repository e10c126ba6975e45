//! The one hash the crate's tables and filters use.

/// Mixes two words into one with splitmix64's finaliser, so that sequential ids (user ids
/// usually are) spread over a table. Fixed and unseeded: decisions never depend on it, only
/// where entries sit.
#[inline]
pub(crate) fn mix64(first: u64, second: u64) -> u64 {
    let mut hash = first ^ second.rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15;
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    hash ^ (hash >> 31)
}

/// A word index below `word_mask + 1` and two bits within that word, from one hash: the
/// probe of a blocked Bloom filter (both bits in one cache line, one load to test).
#[inline]
pub(crate) fn bloom_probe(hash: u64, word_mask: u64) -> (usize, u64) {
    let word = (hash & word_mask) as usize;
    let bits = 1 << ((hash >> 52) & 63) | 1 << ((hash >> 58) & 63);
    (word, bits)
}

/// The 64-bit word count of a blocked Bloom filter for `stock` entries at `bits_per_unit`
/// bits each, clamped to `bits_min..=bits_max` bits and rounded up to a power of two
/// (so that [`bloom_probe`]'s mask is `words - 1`). `bits_min` is at least 64.
pub(crate) fn bloom_words(stock: u64, bits_per_unit: u64, bits_min: u64, bits_max: u64) -> usize {
    debug_assert!(bits_min >= 64 && bits_min <= bits_max);
    let bits = stock
        .saturating_mul(bits_per_unit)
        .clamp(bits_min, bits_max)
        .next_power_of_two();
    (bits / 64) as usize
}
