//! The sold-out gate: lets producers answer intents for a sold-out SKU without queueing
//! them, without breaking idempotency.
//!
//! Each shard publishes, per SKU it owns, a sold-out flag, and keeps a small Bloom filter
//! of the `(user, client_key)` of every order it confirmed. A producer rejects an intent at
//! once only if its SKU is flagged *and* its key is certainly not in the filter; a possible
//! match (a retry of a confirmed intent, or a false positive) goes through to the shard,
//! which answers `Duplicate` with the order id (or decides it normally).
//!
//! Ordering: the shard sets a key's bits before the Release store of any flag that follows
//! that confirmation; a producer loads the flag with Acquire before testing the bits. So a
//! producer that sees a SKU flagged also sees every key confirmed before the flag was
//! raised, in particular the first copy of any retry of an intent for that SKU.

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Filter bits per unit of stock: with two probes in one 64-bit block, about 2% false
/// positives once every unit is sold (and each false positive only costs a trip to the
/// shard).
const FILTER_BITS_PER_UNIT: u64 = 16;
const FILTER_BITS_MIN: u64 = 1 << 12;
/// 8 MiB per shard at most; a larger sale sees more false positives, never a wrong answer.
const FILTER_BITS_MAX: u64 = 1 << 26;

/// A blocked Bloom filter with one writer (the shard) and many readers (producers): both
/// probes of a key fall in one 64-bit word, so remembering a key costs the shard one cache
/// miss at most, and the worker can prefetch that word with the rest of a batch.
#[derive(Debug)]
struct KeyFilter {
    /// `bits / 64` words; `bits` is a power of two.
    words: Box<[AtomicU64]>,
    /// `words.len() - 1`.
    word_mask: u64,
}

impl KeyFilter {
    fn for_stock(stock: u64) -> Self {
        let words = crate::hash::bloom_words(
            stock,
            FILTER_BITS_PER_UNIT,
            FILTER_BITS_MIN,
            FILTER_BITS_MAX,
        );
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            word_mask: words as u64 - 1,
        }
    }

    /// The word of a key and the two bits in it.
    #[inline]
    fn probe(&self, user: u64, client_key: u64) -> (&AtomicU64, u64) {
        let (word, bits) =
            crate::hash::bloom_probe(crate::hash::fold64(user, client_key), self.word_mask);
        debug_assert!(word < self.words.len());
        (&self.words[word], bits)
    }

    /// Adds a key. Only the owning shard's worker calls this, so a load and a store do the
    /// work of a `fetch_or` without a locked instruction.
    fn insert(&self, user: u64, client_key: u64) {
        let (word, bits) = self.probe(user, client_key);
        let value = word.load(Ordering::Relaxed);
        word.store(value | bits, Ordering::Relaxed);
    }

    #[inline]
    fn may_contain(&self, user: u64, client_key: u64) -> bool {
        let (word, bits) = self.probe(user, client_key);
        word.load(Ordering::Relaxed) & bits == bits
    }

    fn prefetch(&self, user: u64, client_key: u64) {
        let (word, _) = self.probe(user, client_key);
        crate::prefetch::prefetch_read(word);
    }
}

/// Per-SKU sold-out flags and per-shard confirmed-key filters. (Crate-internal; public
/// only to the loom models, through `loom_internals`.)
#[derive(Debug)]
pub struct SoldOutGate {
    /// Per catalog index. Raised once by the owning shard; read by every producer.
    sold_out: Box<[AtomicBool]>,
    /// Per shard.
    filters: Box<[KeyFilter]>,
}

impl SoldOutGate {
    /// `stock_of_shard[s]` sizes shard `s`'s filter; `skus` is the catalog's SKU count.
    pub fn new(skus: usize, stock_of_shard: impl IntoIterator<Item = u64>) -> Self {
        Self {
            sold_out: (0..skus).map(|_| AtomicBool::new(false)).collect(),
            filters: stock_of_shard
                .into_iter()
                .map(KeyFilter::for_stock)
                .collect(),
        }
    }

    /// Shard side: remember a confirmed key. Call before [`raise`](Self::raise) for any
    /// SKU that sells out after this confirmation.
    pub fn remember(&self, shard: usize, user: u64, client_key: u64) {
        self.filters[shard].insert(user, client_key);
    }

    /// Shard side: start loading the filter word [`remember`](Self::remember) will write.
    pub fn prefetch(&self, shard: usize, user: u64, client_key: u64) {
        self.filters[shard].prefetch(user, client_key);
    }

    /// Shard side: publish a SKU (catalog index) as sold out.
    pub fn raise(&self, catalog_index: usize) {
        self.sold_out[catalog_index].store(true, Ordering::Release);
    }

    /// Shard side: units of a SKU (catalog index) came back on sale (a cancellation, an
    /// expired hold, a restock). Producers that still see the flag raised answer sold out
    /// for a moment longer, as if they had decided just before the units came back.
    pub fn lower(&self, catalog_index: usize) {
        if self.sold_out[catalog_index].load(Ordering::Relaxed) {
            self.sold_out[catalog_index].store(false, Ordering::Release);
        }
    }

    /// Producer side: whether an intent may be rejected as sold out without asking the
    /// shard: the SKU is flagged and the key was certainly never confirmed.
    #[inline]
    pub fn turns_away(
        &self,
        catalog_index: usize,
        shard: usize,
        user: u64,
        client_key: u64,
    ) -> bool {
        self.sold_out[catalog_index].load(Ordering::Acquire)
            && !self.filters[shard].may_contain(user, client_key)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn remembered_keys_pass_and_the_rest_are_turned_away() {
        let gate = SoldOutGate::new(2, [10]);
        assert!(!gate.turns_away(0, 0, 1, 1), "not sold out yet");
        for user in 0..10 {
            gate.remember(0, user, user * 7);
        }
        gate.raise(0);
        for user in 0..10 {
            assert!(
                !gate.turns_away(0, 0, user, user * 7),
                "a retry must reach the shard"
            );
        }
        let tried = if cfg!(miri) { 500 } else { 10_000 };
        let turned_away = (100..100 + tried)
            .filter(|&u| gate.turns_away(0, 0, u, 0))
            .count() as u64;
        assert!(
            turned_away >= tried * 99 / 100,
            "false positives: {}",
            tried - turned_away
        );
        assert!(
            !gate.turns_away(1, 0, 5000, 0),
            "the other SKU is not sold out"
        );
    }

    #[test]
    fn a_filter_full_to_its_stock_passes_few_strangers() {
        // Sequential users, one user's sequential keys, and keys that follow the user: the
        // shapes ids come in. A filter holding as many keys as its stock lets at most 2%
        // of keys it never held through to the shard (about 0.5% expected).
        let stock = if cfg!(miri) { 200 } else { 5_000 };
        let shapes: [fn(u64) -> (u64, u64); 3] =
            [|n| (n, 0), |n| (42, n), |n| (n, n.wrapping_mul(7) + 1)];
        for (shape, key) in shapes.iter().enumerate() {
            let gate = SoldOutGate::new(1, [stock]);
            for n in 0..stock {
                let (user, client_key) = key(n);
                gate.remember(0, user, client_key);
            }
            gate.raise(0);
            let tried = stock * 4;
            let passed = (stock..stock + tried)
                .filter(|&n| {
                    let (user, client_key) = key(n);
                    !gate.turns_away(0, 0, user, client_key)
                })
                .count() as u64;
            assert!(
                passed * 50 <= tried,
                "shape {shape}: {passed} of {tried} passed"
            );
        }
    }
}
