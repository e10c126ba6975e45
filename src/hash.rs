//! The hashes the crate's tables and filters use.

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

/// Mixes two words into one with a single 64 x 64 -> 128-bit multiply, its halves folded
/// (the mixing step of foldhash and wyhash): about a third of [`mix64`]'s latency, for the
/// sold-out gate's filter, which a producer probes for nearly every intent of a sold-out
/// sale. A filter full to its stock passes about as few strangers with it as with `mix64`
/// (the gate's tests measure three shapes of ids: sequential users, one user's sequential
/// keys, keys that follow the user). One value of `first` (and one of `second`) makes a
/// factor zero, and every key with it the same hash: a false positive for those keys,
/// which the shard then answers.
#[inline]
pub(crate) fn fold64(first: u64, second: u64) -> u64 {
    let product =
        u128::from(first ^ 0x9E37_79B9_7F4A_7C15) * u128::from(second ^ 0xBF58_476D_1CE4_E5B9);
    (product as u64) ^ ((product >> 64) as u64)
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

/// A hasher for tables keyed by numbers handed out in sequence (request numbers, tickets)
/// and mostly removed in that order: consecutive numbers land in consecutive buckets (the
/// hash's low bits are the number's own), with the high bits, which a `hashbrown` table
/// compares before the key, mixed. Such a table is written and read in a sweep that the
/// hardware prefetcher follows, where a mixing hash would miss the cache on nearly every
/// insert and removal of a large table.
#[derive(Default)]
pub(crate) struct SequentialHasher(u64);

impl core::hash::Hasher for SequentialHasher {
    fn finish(&self) -> u64 {
        const HIGH: u64 = 0x7f << 57;
        self.0 ^ (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) & HIGH)
    }

    /// The fallback for keys that are not one `u64` (none of the crate's tables).
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u32(&mut self, value: u32) {
        self.0 = u64::from(value);
    }
}

/// A hash map keyed by numbers handed out in sequence (see [`SequentialHasher`]).
pub(crate) type SequentialMap<K, V> =
    std::collections::HashMap<K, V, core::hash::BuildHasherDefault<SequentialHasher>>;

#[cfg(test)]
mod tests {
    use core::hash::Hasher;

    use super::*;

    fn hash(number: u64) -> u64 {
        let mut hasher = SequentialHasher::default();
        hasher.write_u64(number);
        hasher.finish()
    }

    #[test]
    fn consecutive_numbers_land_in_consecutive_buckets_with_mixed_tags() {
        let mut tags = std::collections::HashSet::new();
        for number in 1..=4096u64 {
            // The table's bucket is the hash's low bits: the number's own.
            assert_eq!(hash(number) & ((1 << 57) - 1), number);
            // The table's tag (its top 7 bits) still tells neighbours apart.
            tags.insert(hash(number) >> 57);
        }
        assert_eq!(tags.len(), 128, "every tag is used");
        // A 32-bit number (a ticket) hashes as the same number.
        let mut hasher = SequentialHasher::default();
        core::hash::Hash::hash(&crate::types::Ticket(4095), &mut hasher);
        assert_eq!(hasher.finish(), hash(4095));
    }
}
