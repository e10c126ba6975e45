//! The pools of the pooled policies (opening draw, one each first), and the draw's
//! shuffle.
//!
//! The shuffle is part of the decision rules, so it is written out here rather than taken
//! from a crate whose output could change between versions: Fisher-Yates driven by
//! SplitMix64, each index chosen by a 64x64→128-bit multiply (bias below `n / 2^64`). The
//! same seed and ticket order give the same permutation on every machine and version.

use rustc_hash::FxHashSet;

use crate::catalog::Policy;
use crate::types::Intent;

/// One buyer's ticket: their first intent in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PoolTicket {
    /// Sequence number of the command that brought it.
    pub(super) origin: u64,
    pub(super) intent: Intent,
    pub(super) local: u32,
    /// Whether it asked to wait for a unit if the pool leaves it none.
    pub(super) wait: bool,
}

/// The pool of one product (a limit group, or an ungrouped SKU).
#[derive(Debug, Clone)]
pub(super) struct Pool {
    pub(super) policy: Policy,
    /// The seed of the shuffle: the policy's seed mixed with the product's id.
    pub(super) shuffle_seed: u64,
    /// Local indexes of its SKUs.
    pub(super) skus: Vec<u32>,
    /// When it is served: the earliest opening of its SKUs plus the policy's window.
    pub(super) serve_at_ns: u64,
    pub(super) served: bool,
    pub(super) tickets: Vec<PoolTicket>,
    pub(super) buyers: FxHashSet<u64>,
    /// Tickets taken in all (kept after serving, for reports).
    pub(super) tickets_taken: u64,
    /// While its window has closed and it is not yet served in full: how far it got.
    pub(super) serving: Option<Box<Serving>>,
}

/// A pool being served, slice by slice. Its work is a number of steps: first the
/// preparation (a draw shuffles its tickets, one Fisher-Yates step each, `n - 1` steps;
/// one-each-first checks each ticket's window, key and limits, `n` steps, then works out
/// the grants at once), then one step per ticket decided, in ticket order.
#[derive(Debug, Clone)]
pub(super) struct Serving {
    /// The instant its window closed, as the command that started serving it saw it: the
    /// window rule is judged at this instant for every slice.
    pub(super) at_ns: u64,
    /// Steps done.
    pub(super) done: u64,
    /// The draw's shuffle, as far as it got.
    pub(super) rng: SplitMix64,
    /// One-each-first: what each ticket may take ([`REFUSED`] once answered at its check).
    pub(super) wants: Vec<u32>,
    /// One-each-first: the units each ticket gets (empty until every ticket was checked).
    pub(super) granted: Vec<u32>,
    /// Buys of the pool's product that arrived while it was being served, with their
    /// arrival instants: decided first come in arrival order once it is (as they would
    /// have been had it been served at once), and settled as its tickets are.
    pub(super) after: Vec<(PoolTicket, u64)>,
}

/// A ticket answered at its check (one-each-first).
pub(super) const REFUSED: u32 = u32::MAX;

/// A pool as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLevels {
    /// Its policy (with the draw's seed, for an opening draw).
    pub policy: Policy,
    /// The first SKU of the product (its limit group's first SKU on the shard, or the SKU).
    pub first_sku: crate::types::SkuId,
    /// When it is (or was) served, ns on the engine clock.
    pub serve_at_ns: u64,
    /// Whether it has been served.
    pub served: bool,
    /// Distinct buyers who got a ticket.
    pub tickets: u64,
}

/// SplitMix64: the generator behind the draw.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Its state (what [`new`](Self::new) takes back, for a snapshot).
    pub(crate) const fn state(&self) -> u64 {
        self.0
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound >= 1`).
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Shuffles `items` in place: the draw's permutation for `seed` (Fisher-Yates, from the
/// back).
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    shuffle_steps(items, &mut rng, 0, items.len().saturating_sub(1) as u64);
}

/// Fisher-Yates steps `from..to` of [`shuffle`] (step `k` puts the item at position
/// `len - 1 - k` in place), with the generator where step `from` left it.
pub(super) fn shuffle_steps<T>(items: &mut [T], rng: &mut SplitMix64, from: u64, to: u64) {
    let len = items.len() as u64;
    for step in from..to {
        let last = len - 1 - step;
        let pick = rng.below(last + 1) as usize;
        items.swap(last as usize, pick);
    }
}

/// The shuffle seed of a product's pool: the policy's seed mixed with the product's id
/// (`group id` for a limit group, `1 << 32 | sku id` for an ungrouped SKU).
pub fn pool_seed(seed: u64, product: u64) -> u64 {
    seed ^ product.wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b, "same seed, same order");
        let mut c: Vec<u32> = (0..100).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c, "another seed, another order");
        a.sort_unstable();
        assert_eq!(a, (0..100).collect::<Vec<_>>());
    }
}
