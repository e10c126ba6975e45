//! A partition's log with entries the fuzzer damaged, fed to a cluster replica: whatever
//! the bytes of an entry (changed, cut short, replaced, each with its checksum written
//! again or not) and whatever its stamp, the replica never panics, refuses a message it
//! cannot decode whole, and answers exactly what the reference model answers to the same
//! log. A snapshot taken part way and restored answers the rest as the whole replica does
//! and ends in the same state; redelivered entries change nothing and a hole is refused.
//! Every entry's replies, encoded as the leader publishes them, decode to the same answers,
//! and replies the fuzzer changed decode to a named error or to answers that encode and
//! decode again unchanged.
//!
//! The log (`tests/replica_log`): the seed picks its entries (batches of buys, operator
//! commands, ticks, damaged ticks), then each change the input lists is applied to one
//! entry.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
#[path = "../../tests/replica_log/mod.rs"]
mod replica_log;

use arbitrary::Arbitrary;
use common::{change_byte, replies_round_trip, reseal};
use flashsale::cluster::wire::{self, MAGIC};
use flashsale::cluster::{Gap, Replica, Reply, Step};
use flashsale::{Placement, ShardCore, ShardId};
use libfuzzer_sys::fuzz_target;
use replica_log::{Entry, MAX_QUANTITY, catalog, expected, log};

/// The longest log a run makes.
const ENTRIES: usize = 160;

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    entries: u8,
    cut: u8,
    changes: Vec<Change>,
    /// Changes to the first entry's encoded replies: offset, how, by.
    reply_changes: Vec<(u16, u8, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Change {
    /// A byte of the entry changed (flipped, set, or added to).
    Byte {
        entry: u8,
        offset: u16,
        how: u8,
        by: u8,
        reseal: bool,
    },
    /// The entry cut to `len` bytes.
    Cut { entry: u8, len: u16, reseal: bool },
    /// The entry replaced by the magic (if `framed`), these bytes and a checksum (if
    /// `reseal`).
    Replace {
        entry: u8,
        bytes: Vec<u8>,
        framed: bool,
        reseal: bool,
    },
    /// The entry's stamp.
    Stamp { entry: u8, stamp_ns: u64 },
}

impl Change {
    fn apply(&self, log: &mut [Entry]) {
        let pick = |entry: u8| usize::from(entry) % log.len();
        match self {
            &Change::Byte {
                entry,
                offset,
                how,
                by,
                reseal: again,
            } => {
                let payload = &mut log[pick(entry)].payload;
                if payload.is_empty() {
                    return;
                }
                let at = usize::from(offset) % payload.len();
                change_byte(&mut payload[at], how, by);
                if again {
                    reseal(payload);
                }
            }
            &Change::Cut {
                entry,
                len,
                reseal: again,
            } => {
                let payload = &mut log[pick(entry)].payload;
                payload.truncate(usize::from(len) % (payload.len() + 1));
                if again {
                    reseal(payload);
                }
            }
            Change::Replace {
                entry,
                bytes,
                framed,
                reseal: again,
            } => {
                let payload = &mut log[pick(*entry)].payload;
                payload.clear();
                if *framed {
                    payload.extend_from_slice(&MAGIC);
                }
                payload.extend_from_slice(bytes);
                if *again {
                    payload.extend_from_slice(&[0; 4]);
                    reseal(payload);
                }
            }
            &Change::Stamp { entry, stamp_ns } => log[pick(entry)].stamp_ns = stamp_ns,
        }
    }
}

/// Units conserved per SKU.
fn conserved(core: &ShardCore, catalog: &flashsale::Catalog) {
    for (spec, level) in catalog.skus().iter().zip(core.levels()) {
        let total = u64::from(level.available) + u64::from(level.held) + u64::from(level.sold);
        let stock = u64::from(spec.stock) + level.restocked - level.reduced;
        assert_eq!(total, stock, "{:?}", spec.id);
    }
}

/// The replies of one entry, grouped by gateway as the leader publishes them: each
/// gateway's encoded message must decode to its answers. Returns the first message.
fn publish(position: u64, replies: &[Reply]) -> Option<Vec<u8>> {
    let mut first = None;
    let mut gateways: Vec<u64> = replies.iter().map(|reply| reply.gateway).collect();
    gateways.sort_unstable();
    gateways.dedup();
    for gateway in gateways {
        let answers: Vec<_> = replies
            .iter()
            .filter(|reply| reply.gateway == gateway)
            .map(|reply| (reply.request, reply.answer))
            .collect();
        let mut bytes = Vec::new();
        wire::encode_replies(0, position, answers.iter().copied(), &mut bytes);
        let decoded = wire::decode_replies(&bytes).expect("replies as published decode");
        assert_eq!(
            (decoded.partition, decoded.position, &decoded.answers),
            (0, position, &answers)
        );
        first.get_or_insert(bytes);
    }
    first
}

fuzz_target!(|input: Input| {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).expect("one shard");
    let mut log = log(input.seed, 1 + usize::from(input.entries) % ENTRIES);
    for change in &input.changes {
        change.apply(&mut log);
    }
    let expected = expected(&catalog, &log);

    // The whole log, entry by entry, each entry's replies published.
    let mut whole = Replica::new(&catalog, &placement, ShardId(0), MAX_QUANTITY);
    let mut replies = Vec::new();
    let mut first_published = None;
    let cut = usize::from(input.cut) % (log.len() + 1);
    let mut at_cut = None;
    for (index, entry) in log.iter().enumerate() {
        if index == cut {
            at_cut = Some((whole.snapshot(), replies.len()));
        }
        let position = index as u64 + 1;
        let before = replies.len();
        let step = whole
            .apply(position, entry.stamp_ns, &entry.payload, &mut replies)
            .expect("the next position is no gap");
        if let Step::Refused(_) = step {
            assert_eq!(replies.len(), before, "a refused entry answers no one");
        }
        let published = publish(position, &replies[before..]);
        if first_published.is_none() {
            first_published = published;
        }
    }
    assert_eq!(
        replies, expected,
        "the replica answers as the reference model"
    );
    conserved(whole.core(), &catalog);
    let end = whole.snapshot();

    // Redelivered entries change nothing; a hole is refused.
    let mut again = Vec::new();
    for (index, entry) in log.iter().enumerate().take(4) {
        assert_eq!(
            whole.apply(index as u64 + 1, entry.stamp_ns, &entry.payload, &mut again),
            Ok(Step::AlreadyApplied)
        );
    }
    let past = log.len() as u64 + 2;
    assert_eq!(
        whole.apply(past, 0, &log[0].payload, &mut again),
        Err(Gap {
            applied: log.len() as u64,
            got: past
        })
    );
    assert!(again.is_empty());
    assert_eq!(whole.snapshot(), end);

    // From the snapshot at the cut: the rest answered the same, the same end state.
    let (snapshot, answered) = at_cut.unwrap_or_else(|| (end.clone(), replies.len()));
    let mut resumed = Replica::restore(&catalog, &placement, ShardId(0), &snapshot)
        .expect("a replica's own snapshot restores");
    let mut rest = replies[..answered].to_vec();
    for (index, entry) in log.iter().enumerate().skip(cut) {
        resumed
            .apply(index as u64 + 1, entry.stamp_ns, &entry.payload, &mut rest)
            .expect("the next position is no gap");
    }
    assert_eq!(rest, replies, "resumed from the snapshot at {cut}");
    assert_eq!(resumed.snapshot(), end);

    // Replies changed after they were published: a named error, or answers that encode and
    // decode again unchanged.
    if let Some(mut bytes) = first_published
        && !input.reply_changes.is_empty()
    {
        for &(offset, how, by) in &input.reply_changes {
            let at = usize::from(offset) % bytes.len();
            change_byte(&mut bytes[at], how, by);
        }
        reseal(&mut bytes);
        replies_round_trip(&bytes);
    }
});
