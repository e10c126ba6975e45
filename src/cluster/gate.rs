//! The cluster's sold-out gate: what lets a gateway answer a buy of a sold-out SKU without
//! logging it, without breaking idempotency, as the in-process engine's gate does.
//!
//! Every replica keeps a [`KeyFilter`] of the `(user, client_key)` of every order its
//! partition confirmed (a blocked Bloom filter; deterministic, so every replica's is the
//! same at the same position). The leader publishes, every few milliseconds while
//! anything changed, a [`GateUpdate`]: the SKUs sold out after entry `to`, and the keys
//! confirmed by the entries in `(from, to]`. A gateway that has applied every update up to
//! `from` (or fetched the whole filter at a position in `from..=to`) applies it; one that
//! missed one (a lost message, a restart, another leader whose updates are cut at other
//! positions) turns the gate off for the partition and fetches the whole filter again.
//!
//! A gateway turns a buy away as sold out only if its SKU is flagged *and* its key is
//! certainly not in the filter; a possible match (a retry of a confirmed buy, or a false
//! positive) goes to the log, which answers `Duplicate` naming the order.

use super::view::{open, seal};
use super::wire::WireError;

/// Bits per unit of a partition's stock: about 2% false positives once every unit is
/// sold (a false positive only costs a log entry).
const BITS_PER_UNIT: u64 = 16;
const BITS_MIN: u64 = 1 << 12;
/// 512 KiB at most, so that the whole filter fits one NATS message (1 MiB by default); a
/// larger partition sees more false positives, never a wrong answer.
const BITS_MAX: u64 = 1 << 22;

/// A gate update's magic.
pub const GATE_MAGIC: [u8; 4] = *b"FSG1";
/// A whole filter's magic.
pub const FILTER_MAGIC: [u8; 4] = *b"FSF1";

/// The keys of confirmed orders, as a blocked Bloom filter (both probes in one word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFilter {
    words: Vec<u64>,
}

impl KeyFilter {
    /// An empty filter sized for `stock` confirmations.
    pub fn for_stock(stock: u64) -> Self {
        Self {
            words: vec![0; crate::hash::bloom_words(stock, BITS_PER_UNIT, BITS_MIN, BITS_MAX)],
        }
    }

    fn probe(&self, user: u64, client_key: u64) -> (usize, u64) {
        crate::hash::bloom_probe(
            crate::hash::mix64(user, client_key),
            self.words.len() as u64 - 1,
        )
    }

    /// Adds a key.
    pub fn insert(&mut self, user: u64, client_key: u64) {
        let (word, bits) = self.probe(user, client_key);
        self.words[word] |= bits;
    }

    /// Starts loading the word that [`insert`](Self::insert) of this key would change (a
    /// hint: nothing observable changes).
    pub fn prefetch(&self, user: u64, client_key: u64) {
        let (word, _) = self.probe(user, client_key);
        crate::prefetch::prefetch_read(&self.words[word]);
    }

    /// Whether the key may have been added (false: certainly not).
    pub fn may_contain(&self, user: u64, client_key: u64) -> bool {
        let (word, bits) = self.probe(user, client_key);
        self.words[word] & bits == bits
    }

    /// The filter with its position, as bytes (for a gateway that fetches it).
    pub fn encode(&self, partition: u16, applied: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 2 + 8 + 4 + self.words.len() * 8 + 4);
        out.extend_from_slice(&FILTER_MAGIC);
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&applied.to_le_bytes());
        out.extend_from_slice(&(self.words.len() as u32).to_le_bytes());
        for word in &self.words {
            out.extend_from_slice(&word.to_le_bytes());
        }
        seal(&mut out);
        out
    }

    /// A filter from [`encode`](Self::encode)'s bytes: the partition, the position, the
    /// filter.
    ///
    /// # Errors
    /// The [`WireError`] naming what is wrong (a word count that is not a power of two is
    /// [`WireError::Count`]).
    pub fn decode(bytes: &[u8]) -> Result<(u16, u64, Self), WireError> {
        let mut body = open(bytes, FILTER_MAGIC, 4 + 2 + 8 + 4 + 4)?;
        let partition = u16::from_le_bytes(take(&mut body));
        let applied = u64::from_le_bytes(take(&mut body));
        let count = u32::from_le_bytes(take(&mut body)) as usize;
        if !count.is_power_of_two() || body.len() != count.saturating_mul(8) {
            return Err(WireError::Count(count));
        }
        let words = body
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((partition, applied, Self { words }))
    }
}

/// What changed in a partition's gate over the log entries `(from, to]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateUpdate {
    /// The partition.
    pub partition: u16,
    /// The position the previous update of this replica ended at.
    pub from: u64,
    /// The last position applied.
    pub to: u64,
    /// Per SKU of the partition (in its order): sold out after `to`.
    pub sold_out: Vec<bool>,
    /// `(user, client_key)` of the orders confirmed by the entries in `(from, to]`.
    pub keys: Vec<(u64, u64)>,
}

impl GateUpdate {
    /// As bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + 2 + 16 + 8 + self.sold_out.len().div_ceil(8) + self.keys.len() * 16 + 4,
        );
        out.extend_from_slice(&GATE_MAGIC);
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        out.extend_from_slice(&(self.sold_out.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for chunk in self.sold_out.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |byte, (bit, &set)| byte | u8::from(set) << bit);
            out.push(byte);
        }
        for &(user, key) in &self.keys {
            out.extend_from_slice(&user.to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
        }
        seal(&mut out);
        out
    }

    /// From bytes.
    ///
    /// # Errors
    /// The [`WireError`] naming what is wrong (counts that do not match the length are
    /// [`WireError::Count`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut body = open(bytes, GATE_MAGIC, 4 + 2 + 16 + 8 + 4)?;
        let partition = u16::from_le_bytes(take(&mut body));
        let from = u64::from_le_bytes(take(&mut body));
        let to = u64::from_le_bytes(take(&mut body));
        let skus = u32::from_le_bytes(take(&mut body)) as usize;
        let keys = u32::from_le_bytes(take(&mut body)) as usize;
        if body.len() != skus.div_ceil(8) + keys.saturating_mul(16) {
            return Err(WireError::Count(keys));
        }
        let (flags, mut rest) = body.split_at(skus.div_ceil(8));
        let sold_out = (0..skus)
            .map(|sku| flags[sku / 8] & (1 << (sku % 8)) != 0)
            .collect();
        let keys = (0..keys)
            .map(|_| {
                let user = u64::from_le_bytes(take(&mut rest));
                (user, u64::from_le_bytes(take(&mut rest)))
            })
            .collect();
        Ok(Self {
            partition,
            from,
            to,
            sold_out,
            keys,
        })
    }
}

/// The next `N` bytes; the caller checked the length.
fn take<const N: usize>(bytes: &mut &[u8]) -> [u8; N] {
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    head.try_into().unwrap_or([0; N])
}

#[cfg(all(test, not(miri)))]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_kept_and_most_others_are_not() {
        let mut filter = KeyFilter::for_stock(1_000);
        for user in 0..1_000 {
            filter.insert(user, 7);
        }
        assert!((0..1_000).all(|user| filter.may_contain(user, 7)));
        let false_positives = (0..10_000)
            .filter(|&user| filter.may_contain(user, 8))
            .count();
        assert!(false_positives < 500, "{false_positives} false positives");
        let (partition, applied, back) = KeyFilter::decode(&filter.encode(3, 99)).unwrap();
        assert_eq!((partition, applied, back), (3, 99, filter));
    }

    #[test]
    fn updates_come_back_as_they_went_and_damage_is_named() {
        let update = GateUpdate {
            partition: 1,
            from: 10,
            to: 20,
            sold_out: vec![true, false, false, true, true, false, true, false, true],
            keys: vec![(1, 2), (u64::MAX, 0)],
        };
        let bytes = update.encode();
        assert_eq!(GateUpdate::decode(&bytes), Ok(update));
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(GateUpdate::decode(&damaged).is_err(), "byte {index}");
        }
        for cut in 0..bytes.len() {
            assert!(GateUpdate::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let filter = KeyFilter::for_stock(1).encode(0, 0);
        assert_eq!(
            KeyFilter::decode(&filter[..filter.len() - 1]),
            Err(WireError::Checksum)
        );
    }
}
