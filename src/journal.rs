//! The journal's on-disk format: an append-only file per shard of self-checking records,
//! one per command the shard applied, in its order.
//!
//! This module is the format and its reader and writer; the engine journals through it when
//! built with [`EngineBuilder::journal`](crate::EngineBuilder::journal).
//!
//! # Format, version 4
//!
//! All fixed-width integers little-endian.
//!
//! ```text
//! header (16 bytes):  magic "FLASHJNL" | version u32 = 4 | shard u16 | reserved u16 = 0
//! record:             frame (16 bytes) | payload (length bytes)
//! frame:              frame_crc u32 | payload_crc u32 | length u32 | unsynced u32
//! payload:            sequence u64 | kind u8 | body
//! ```
//!
//! `frame_crc` is CRC-32 (IEEE, as zlib) of the frame's other 12 bytes, `payload_crc` that
//! of the payload, so a damaged length is caught before it is trusted. `unsynced` is how
//! many bytes of the file before this record were not yet known to be on the disk
//! (`fdatasync`ed) when it was written: the writer's proof, carried forward, of what was
//! durable (saturating at `u32::MAX`, which only ever claims less). `sequence` is the
//! shard's sequence number of the command: the first record has the sequence the journal
//! starts at, and each next record the one after. Bodies by `kind`:
//!
//! | kind | command | body |
//! |---|---|---|
//! | 0 | *seal*: no command; everything before it was synced | none (`sequence` is the next command's) |
//! | 1 | `Buy` | user u64, client_key u64, sku u32, quantity u32, arrival_ns u64 |
//! | 2 | `BuyOrWait` | as `Buy` |
//! | 3 | `Pay` | order u64, at_ns u64 |
//! | 4 | `Cancel` | order u64, at_ns u64 |
//! | 5 | `Tick` | now_ns u64 |
//! | 6 | `Restock` | sku u32, units u32, at_ns u64 |
//! | 7 | `Reduce` | sku u32, units u32, at_ns u64 |
//! | 8 | `SetWindow` | sku u32, opens_at_ns u64, closes_at_ns u64, at_ns u64 |
//! | 9 | `CloseSale` | sku u32, at_ns u64 |
//! | 10 | *batch*: consecutive `Buy` and `BuyOrWait` commands, `sequence` the first one's | one or more buys, each: wait u8 (0: `Buy`, 1: `BuyOrWait`), then as LEB128 varints (seven bits a byte, low bits first) user, client_key, sku, quantity, and arrival_ns as its zigzagged step from the batch's buy before (from 0 for the first) |
//!
//! A payload is at most 255 bytes (a batch holds as many buys as fit: 12 to 30), so
//! every length field has three zero bytes. The engine writes every buy in a batch: about
//! 8 bytes a buy with small ids (the simulator's `steady` sale), 20 with random 64-bit
//! idempotency keys, against 57 as a record of its own, with two checksums per batch
//! rather than per buy; a batch is whole or not there, like any record, and never spans
//! two group commits. Kinds 1 and 2 remain valid.
//!
//! Version 4 adds the batch to version 3, which this code still reads; a version-3 journal
//! opened for appending is appended to without batches, so that it stays version 3.
//! Version 3 differs from version 2 in what a command means, not in its bytes: a `Tick`
//! serves one slice of a pool being served (version 2 served a pool in full when it fell
//! due), so a version-2 journal is refused rather than replayed to other outcomes.
//!
//! # Reading: torn tails and damage
//!
//! A crash can only spoil bytes that were written after the last sync: a record cut short,
//! zeros where the file was extended before its data reached the disk, or a hole inside the
//! last group with later records of the same group whole. Everything before a sync is
//! settled, and every record written after that sync says so in its `unsynced` field.
//!
//! So when [`scan`] meets a record that does not check out at offset `h`, it searches the
//! rest of the file for a whole record (both checksums and the encoding valid) that proves
//! `h` was synced: its own offset minus its `unsynced` lies past `h`. If one exists, the
//! bytes at `h` were damaged after they were durable, which is [`JournalError::Corrupt`]
//! naming the file and `h`, never a truncation. If none does, the spoiled bytes were never
//! synced, so no outcome decided by them was ever released: the valid prefix is kept and
//! [`Tail::Torn`] reported, and the writer truncates the file there before appending. A
//! record that checks out but whose sequence skips or repeats is `Corrupt` too.
//!
//! The one case no reader can settle: damage at rest inside the *last* group written before
//! a crash looks exactly like a torn write of that group. A clean close writes and syncs a
//! seal after the last group ([`JournalWriter::seal`]), so after a clean shutdown every
//! record is covered; after a crash, the last group (at most one group commit) is.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::catalog::SaleWindow;
use crate::core::Command;
use crate::storage::{FileStorage, Storage, StorageFile};
use crate::types::{Intent, OrderId, ShardId, SkuId, UserId};
use crate::varint;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"FLASHJNL";
/// The format version this code writes (it reads [`VERSION_OLDEST`] to this).
pub const VERSION: u32 = 4;
/// Header length in bytes.
pub const HEADER_LEN: usize = 16;
/// Record framing (two checksums, length, unsynced bytes) in bytes.
pub const FRAME_LEN: usize = 16;
/// The largest payload: a `Buy` (8 + 1 + 8 + 8 + 4 + 4 + 8 bytes).
const PAYLOAD_MAX: usize = 41;
/// The smallest payload: a seal (sequence and kind).
const PAYLOAD_MIN: usize = 9;
/// The largest payload of a batch of buys. Below 256, so that every record's length field
/// has three zero bytes, which the resynchronising scan relies on.
const BATCH_PAYLOAD_MAX: usize = 255;
/// The most bytes one buy of a batch takes (flag, three 64-bit and two 32-bit varints).
const BUY_ITEM_MAX: usize = 1 + 10 + 10 + 5 + 5 + 10;
// A batch's first buy always fits after its sequence and kind.
const _: () = assert!(PAYLOAD_MIN + BUY_ITEM_MAX <= BATCH_PAYLOAD_MAX);
/// The kind byte of a seal.
const KIND_SEAL: u8 = 0;
/// The kind byte of a batch of buys (version 4).
const KIND_BUYS: u8 = 10;
/// The oldest format version this code reads (version 3 is version 4 without batches).
pub const VERSION_OLDEST: u32 = 3;

/// Why a journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file does not start with a flashsale journal header.
    #[error("{path}: not a flashsale journal (bad header)")]
    BadHeader {
        /// The file.
        path: PathBuf,
    },
    /// The file is a flashsale journal of another format version.
    #[error(
        "{path}: journal format version {found}; this build reads versions {VERSION_OLDEST} to {VERSION}"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        found: u32,
    },
    /// The journal is for another shard than the one asked for.
    #[error("{path}: journal of shard {found}, expected shard {expected}")]
    WrongShard {
        /// The file.
        path: PathBuf,
        /// The shard in its header.
        found: u16,
        /// The shard asked for.
        expected: u16,
    },
    /// An earlier write or sync of this writer failed, so what the file holds past its
    /// last successful sync is unknown (and after a failed `fdatasync` a retry proves
    /// nothing): the writer refuses every later commit. Reopen the journal (recovery) to
    /// go on from what is on the disk.
    #[error("{path}: an earlier write or sync failed; reopen the journal to recover")]
    Failed {
        /// The file.
        path: PathBuf,
    },
    /// A record that was already durable is damaged, or the sequence skips or repeats;
    /// nothing from `offset` on was read. Recovery refuses to go on: truncating here would
    /// drop orders that were confirmed.
    #[error("{path}: corrupt record at byte {offset}: {what}")]
    Corrupt {
        /// The file (empty when scanning bytes in memory).
        path: PathBuf,
        /// Byte offset of the record.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// How a journal ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last record is whole.
    Clean,
    /// Bytes written after the last sync were spoiled by a crash (and no later record
    /// proves them synced); the valid data ends at `valid_len` and the `torn_bytes` after
    /// it are to be discarded.
    Torn {
        /// Length of the valid prefix, bytes.
        valid_len: u64,
        /// Bytes after it.
        torn_bytes: u64,
    },
}

/// A journal read back: its header's shard, its records, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The shard the journal belongs to.
    pub shard: ShardId,
    /// Every valid record: `(sequence, command)`, in order (seals are not commands).
    pub records: Vec<(u64, Command)>,
    /// Whether the journal ends in spoiled, never-synced bytes.
    pub tail: Tail,
    /// Whether the last entry is a seal: the journal was closed cleanly.
    pub sealed: bool,
}

/// Encodes a command's record (framing included) onto `out`. `unsynced` is how many bytes
/// of the file before this record were not known to be synced when it was written.
pub fn encode(sequence: u64, unsynced: u32, command: &Command, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_MAX];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        payload[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&sequence.to_le_bytes());
    let buy = |put: &mut dyn FnMut(&[u8]), intent: &Intent, arrival_ns: u64| {
        put(&intent.user.0.to_le_bytes());
        put(&intent.client_key.to_le_bytes());
        put(&intent.sku.0.to_le_bytes());
        put(&intent.quantity.to_le_bytes());
        put(&arrival_ns.to_le_bytes());
    };
    match *command {
        Command::Buy { intent, arrival_ns } => {
            put(&[1]);
            buy(&mut put, &intent, arrival_ns);
        }
        Command::BuyOrWait { intent, arrival_ns } => {
            put(&[2]);
            buy(&mut put, &intent, arrival_ns);
        }
        Command::Pay { order, at_ns } => {
            put(&[3]);
            put(&order.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Cancel { order, at_ns } => {
            put(&[4]);
            put(&order.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Tick { now_ns } => {
            put(&[5]);
            put(&now_ns.to_le_bytes());
        }
        Command::Restock { sku, units, at_ns } => {
            put(&[6]);
            put(&sku.0.to_le_bytes());
            put(&units.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::Reduce { sku, units, at_ns } => {
            put(&[7]);
            put(&sku.0.to_le_bytes());
            put(&units.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::SetWindow { sku, window, at_ns } => {
            put(&[8]);
            put(&sku.0.to_le_bytes());
            put(&window.opens_at_ns.to_le_bytes());
            put(&window.closes_at_ns.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
        Command::CloseSale { sku, at_ns } => {
            put(&[9]);
            put(&sku.0.to_le_bytes());
            put(&at_ns.to_le_bytes());
        }
    }
    frame(&payload[..at], unsynced, out);
}

/// Encodes a seal (framing included) onto `out`: no command, written right after a sync,
/// so it vouches for every byte before it. `next_sequence` is the sequence of the command
/// after it.
pub fn encode_seal(next_sequence: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_MIN];
    payload[..8].copy_from_slice(&next_sequence.to_le_bytes());
    payload[8] = KIND_SEAL;
    frame(&payload, 0, out);
}

/// Appends the frame and the payload.
fn frame(payload: &[u8], unsynced: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&frame_of(payload, unsynced));
    out.extend_from_slice(payload);
}

/// The frame of a record with this payload.
fn frame_of(payload: &[u8], unsynced: u32) -> [u8; FRAME_LEN] {
    let mut frame = [0u8; FRAME_LEN];
    frame[4..8].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    frame[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    frame[12..].copy_from_slice(&unsynced.to_le_bytes());
    let frame_crc = crc32fast::hash(&frame[4..]);
    frame[..4].copy_from_slice(&frame_crc.to_le_bytes());
    frame
}

/// Encodes commands into records as [`encode`] does, except that consecutive buys go
/// into batch records (kind 10, see the [module docs](self)) of up to 255 bytes: 8 to 20
/// bytes a buy instead of 57, and two checksums per batch instead of per buy. A batch
/// stays open in the buffer until a command that is not a buy, a full batch, or
/// [`finish`](Self::finish), which the buffer must have before it is written: a record is
/// whole only once finished.
#[derive(Debug)]
pub struct Encoder {
    /// Whether buys go into batches (the file is version 4).
    batches: bool,
    /// The open batch: where its frame starts in the buffer, what its frame will say of
    /// the bytes before it, and the arrival stamp of its last buy.
    open: Option<OpenBatch>,
}

#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    start: usize,
    unsynced: u32,
    arrival_ns: u64,
}

impl Encoder {
    /// An encoder for a journal of this format: batches when `batches` (version 4), one
    /// record per command otherwise (a version-3 journal appended to stays version 3).
    pub fn new(batches: bool) -> Self {
        Self {
            batches,
            open: None,
        }
    }

    /// Encodes `command` as `sequence` onto `out`, into the open batch if it is a buy
    /// that fits. `unsynced(at)` is how many bytes before a record starting at `out[at]`
    /// are not known to be synced. Sequences must follow on one after another.
    pub fn push(
        &mut self,
        sequence: u64,
        command: &Command,
        out: &mut Vec<u8>,
        unsynced: impl FnOnce(usize) -> u32,
    ) {
        let (intent, arrival_ns, wait) = match *command {
            Command::Buy { intent, arrival_ns } if self.batches => (intent, arrival_ns, false),
            Command::BuyOrWait { intent, arrival_ns } if self.batches => (intent, arrival_ns, true),
            _ => {
                self.finish(out);
                let at = out.len();
                encode(sequence, unsynced(at), command, out);
                return;
            }
        };
        if let Some(open) = &mut self.open {
            let mark = out.len();
            buy_item(out, &intent, arrival_ns, wait, open.arrival_ns);
            if out.len() - open.start - FRAME_LEN <= BATCH_PAYLOAD_MAX {
                open.arrival_ns = arrival_ns;
                return;
            }
            // Full: the buy opens the next batch instead.
            out.truncate(mark);
            self.finish(out);
        }
        let start = out.len();
        self.open = Some(OpenBatch {
            start,
            unsynced: unsynced(start),
            arrival_ns,
        });
        out.extend_from_slice(&[0; FRAME_LEN]);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.push(KIND_BUYS);
        // A batch's first stamp steps from zero.
        buy_item(out, &intent, arrival_ns, wait, 0);
    }

    /// Closes the open batch, if any: fills in its frame.
    pub fn finish(&mut self, out: &mut [u8]) {
        if let Some(open) = self.open.take() {
            let (head, payload) = out[open.start..].split_at_mut(FRAME_LEN);
            head.copy_from_slice(&frame_of(payload, open.unsynced));
        }
    }
}

/// Appends one buy of a batch: its wait flag (0 or 1), its user, key, SKU and quantity as
/// varints, and its arrival stamp's zigzagged step from the batch's buy before.
fn buy_item(item: &mut Vec<u8>, intent: &Intent, arrival_ns: u64, wait: bool, previous: u64) {
    item.push(u8::from(wait));
    varint::write(item, intent.user.0);
    varint::write(item, intent.client_key);
    varint::write(item, u64::from(intent.sku.0));
    varint::write(item, u64::from(intent.quantity));
    varint::write_step(item, previous, arrival_ns);
}

/// Reads little-endian fields off a payload.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<8>()?;
        self.0 = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*head))
    }

    fn u8(&mut self) -> Option<u8> {
        let (&head, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(head)
    }
}

/// Decodes one payload onto `out` (each command with its sequence): its first sequence
/// and how many commands it held (none for a seal); `None`, with `out` as it was, if it is
/// not a valid payload (a batch only where `batches`).
fn decode(payload: &[u8], batches: bool, out: &mut Vec<(u64, Command)>) -> Option<(u64, u64)> {
    let mut fields = Fields(payload);
    let sequence = fields.u64()?;
    let kind = fields.u8()?;
    if kind == KIND_BUYS {
        if !batches {
            return None;
        }
        let before = out.len();
        let decoded = decode_buys(sequence, fields.0, out);
        if decoded.is_none() {
            out.truncate(before);
        }
        return decoded.map(|count| (sequence, count));
    }
    if payload.len() > PAYLOAD_MAX {
        return None;
    }
    let intent = |fields: &mut Fields<'_>| -> Option<(Intent, u64)> {
        let user = fields.u64()?;
        let client_key = fields.u64()?;
        let sku = fields.u32()?;
        let quantity = fields.u32()?;
        let arrival_ns = fields.u64()?;
        Some((
            Intent {
                user: UserId(user),
                client_key,
                sku: SkuId(sku),
                quantity,
            },
            arrival_ns,
        ))
    };
    let command = match kind {
        KIND_SEAL => None,
        1 => {
            let (intent, arrival_ns) = intent(&mut fields)?;
            Some(Command::Buy { intent, arrival_ns })
        }
        2 => {
            let (intent, arrival_ns) = intent(&mut fields)?;
            Some(Command::BuyOrWait { intent, arrival_ns })
        }
        3 => Some(Command::Pay {
            order: OrderId(fields.u64()?),
            at_ns: fields.u64()?,
        }),
        4 => Some(Command::Cancel {
            order: OrderId(fields.u64()?),
            at_ns: fields.u64()?,
        }),
        5 => Some(Command::Tick {
            now_ns: fields.u64()?,
        }),
        6 => Some(Command::Restock {
            sku: SkuId(fields.u32()?),
            units: fields.u32()?,
            at_ns: fields.u64()?,
        }),
        7 => Some(Command::Reduce {
            sku: SkuId(fields.u32()?),
            units: fields.u32()?,
            at_ns: fields.u64()?,
        }),
        8 => Some(Command::SetWindow {
            sku: SkuId(fields.u32()?),
            window: SaleWindow {
                opens_at_ns: fields.u64()?,
                closes_at_ns: fields.u64()?,
            },
            at_ns: fields.u64()?,
        }),
        9 => Some(Command::CloseSale {
            sku: SkuId(fields.u32()?),
            at_ns: fields.u64()?,
        }),
        _ => return None,
    };
    // Trailing bytes make it invalid: one payload, one encoding.
    if !fields.0.is_empty() {
        return None;
    }
    Some(match command {
        Some(command) => {
            out.push((sequence, command));
            (sequence, 1)
        }
        None => (sequence, 0),
    })
}

/// Decodes a batch's buys (at least one) onto `out`, numbered from `sequence`; how many.
fn decode_buys(sequence: u64, mut bytes: &[u8], out: &mut Vec<(u64, Command)>) -> Option<u64> {
    let mut count = 0u64;
    let mut arrival_ns = 0u64;
    while !bytes.is_empty() {
        let (&wait, rest) = bytes.split_first()?;
        bytes = rest;
        let user = varint::read(&mut bytes)?;
        let client_key = varint::read(&mut bytes)?;
        let sku = u32::try_from(varint::read(&mut bytes)?).ok()?;
        let quantity = u32::try_from(varint::read(&mut bytes)?).ok()?;
        arrival_ns = varint::read_step(&mut bytes, arrival_ns)?;
        let intent = Intent {
            user: UserId(user),
            client_key,
            sku: SkuId(sku),
            quantity,
        };
        let command = match wait {
            0 => Command::Buy { intent, arrival_ns },
            1 => Command::BuyOrWait { intent, arrival_ns },
            _ => return None,
        };
        out.push((sequence.wrapping_add(count), command));
        count += 1;
    }
    (count > 0).then_some(count)
}

/// One whole entry read at an offset.
struct Entry {
    /// The sequence of its first command (for a seal, of the command after it).
    sequence: u64,
    /// How many commands it holds: none for a seal, more than one for a batch of buys.
    count: u64,
    /// Where the entry ends.
    end: usize,
    /// Where the synced prefix ended when it was written (its offset minus `unsynced`).
    synced_before: usize,
}

/// The entry at `at`, if both checksums and the encoding check out; its commands are
/// pushed onto `out` (nothing is, if it does not check out).
fn entry_at(
    bytes: &[u8],
    at: usize,
    batches: bool,
    out: &mut Vec<(u64, Command)>,
) -> Option<Entry> {
    let frame = bytes.get(at..at.checked_add(FRAME_LEN)?)?;
    let word = |index: usize| {
        let start = index * 4;
        u32::from_le_bytes([
            frame[start],
            frame[start + 1],
            frame[start + 2],
            frame[start + 3],
        ])
    };
    // The cheap checks first: a resynchronising scan tries every offset of a damaged
    // tail, and almost none has a plausible length or fits in the file.
    let length = word(2) as usize;
    let most = if batches {
        BATCH_PAYLOAD_MAX
    } else {
        PAYLOAD_MAX
    };
    if !(PAYLOAD_MIN..=most).contains(&length) {
        return None;
    }
    let end = at + FRAME_LEN + length;
    let payload = bytes.get(at + FRAME_LEN..end)?;
    if crc32fast::hash(&frame[4..]) != word(0) {
        return None;
    }
    if crc32fast::hash(payload) != word(1) {
        return None;
    }
    let (sequence, count) = decode(payload, batches, out)?;
    Some(Entry {
        sequence,
        count,
        end,
        synced_before: at.saturating_sub(word(3) as usize),
    })
}

/// Whether some whole entry after `hole` proves the bytes at `hole` were synced before it
/// was written. Runs only on a damaged or torn journal: at most one pass over the rest of
/// the file, trying each offset where an entry could start.
///
/// An entry's length field (bytes 8..12 of its frame, little-endian) is at most
/// `BATCH_PAYLOAD_MAX` (255), so its top three bytes are zero: eight offsets at a time, one word
/// operation finds the offsets whose three bytes are all zero, and only those are tried
/// (almost none, in damaged bytes). The same answer as trying every offset, which a test
/// checks; a damaged tail is read several times faster.
fn proven_durable(bytes: &[u8], hole: usize, batches: bool) -> bool {
    let end = bytes.len().saturating_sub(FRAME_LEN + PAYLOAD_MIN - 1);
    let mut scratch = Vec::new();
    let mut proves = |at: usize| {
        let proof = entry_at(bytes, at, batches, &mut scratch)
            .is_some_and(|entry| entry.synced_before > hole);
        scratch.clear();
        proof
    };
    let mut at = hole + 1;
    // Offsets `at..at + 8` need the zero flags of bytes `at + 9 .. at + 19`: 16 are read.
    while at + 8 <= end {
        let Some(window) = bytes
            .get(at + 9..)
            .and_then(|rest| rest.first_chunk::<16>())
        else {
            break;
        };
        let word = u128::from_le_bytes(*window);
        // 0x80 in each byte of `word` that is zero, exactly (no borrow between bytes).
        const LOW7: u128 = u128::from_le_bytes([0x7f; 16]);
        let zero = !(((word & LOW7) + LOW7) | word | LOW7);
        // Byte k set: bytes k, k + 1 and k + 2 are zero, i.e. offset `at + k` may start
        // an entry. Only k < 8 is this window's.
        let mut candidates = zero & (zero >> 8) & (zero >> 16) & 0x8080_8080_8080_8080;
        while candidates != 0 {
            if proves(at + (candidates.trailing_zeros() / 8) as usize) {
                return true;
            }
            candidates &= candidates - 1;
        }
        at += 8;
    }
    (at..end).any(proves)
}

/// The header of a journal for `shard`.
pub fn header(shard: ShardId) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..14].copy_from_slice(&shard.0.to_le_bytes());
    header
}

/// Reads a whole journal held in memory (`path` only names it in errors).
///
/// # Errors
/// [`JournalError::BadHeader`], [`JournalError::UnsupportedVersion`] or
/// [`JournalError::Corrupt`]; spoiled bytes that were never synced are not an error (see
/// [`Tail`] and the [module docs](self)).
pub fn scan(bytes: &[u8], path: &Path) -> Result<Scanned, JournalError> {
    let header = bytes
        .get(..HEADER_LEN)
        .filter(|header| header[..8] == MAGIC && header[14..16] == [0, 0])
        .ok_or_else(|| JournalError::BadHeader {
            path: path.to_path_buf(),
        })?;
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if !(VERSION_OLDEST..=VERSION).contains(&version) {
        return Err(JournalError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let batches = version >= 4;
    let shard = ShardId(u16::from_le_bytes([header[12], header[13]]));
    let corrupt = |offset: usize, what| JournalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    let mut records: Vec<(u64, Command)> = Vec::new();
    // The sequence the next entry must carry, once the first has set it.
    let mut next: Option<u64> = None;
    let mut sealed = false;
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let Some(entry) = entry_at(bytes, at, batches, &mut records) else {
            if proven_durable(bytes, at, batches) {
                return Err(corrupt(
                    at,
                    "damaged record in data that a later record shows was synced",
                ));
            }
            let tail = Tail::Torn {
                valid_len: at as u64,
                torn_bytes: (bytes.len() - at) as u64,
            };
            return Ok(Scanned {
                shard,
                records,
                tail,
                sealed: false,
            });
        };
        if next.is_some_and(|next| next != entry.sequence) {
            return Err(corrupt(at, "sequence number skips or repeats"));
        }
        sealed = entry.count == 0;
        next = Some(
            entry
                .sequence
                .checked_add(entry.count)
                .ok_or_else(|| corrupt(at, "sequence number at its maximum"))?,
        );
        at = entry.end;
    }
    Ok(Scanned {
        shard,
        records,
        tail: Tail::Clean,
        sealed,
    })
}

/// Reads a journal file.
///
/// # Errors
/// As [`scan`], plus [`JournalError::Io`].
pub fn read(path: &Path) -> Result<Scanned, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(io)?;
    scan(&bytes, path)
}

/// Appends records to a shard's journal file, one `write` and (when asked) one data sync
/// per [`commit`](Self::commit): the unit of group commit.
#[derive(Debug)]
pub struct JournalWriter {
    file: Box<dyn StorageFile>,
    path: PathBuf,
    buffer: Vec<u8>,
    next_sequence: u64,
    /// Bytes in the file (written, not necessarily synced).
    written_len: u64,
    /// Bytes of the file known to be on the disk: `HEADER_LEN ..= written_len`.
    synced_len: u64,
    /// A write or sync failed: every later commit is refused ([`JournalError::Failed`]).
    failed: bool,
    /// Gathers consecutive buys into batches (version 4 files).
    encoder: Encoder,
}

impl JournalWriter {
    /// Opens `path` for appending, creating it with a header for `shard` if it does not
    /// exist. An existing journal is read first: a torn tail is truncated away, the file is
    /// synced (so everything kept is durable from here on), and appends continue after its
    /// last sequence number.
    ///
    /// # Errors
    /// [`JournalError`]: unreadable, corrupt, or another shard's journal.
    pub fn open(path: &Path, shard: ShardId) -> Result<(Self, Scanned), JournalError> {
        Self::open_in(&FileStorage, path, shard)
    }

    /// As [`open`](Self::open), through `storage` rather than plain files.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_in(
        storage: &dyn Storage,
        path: &Path,
        shard: ShardId,
    ) -> Result<(Self, Scanned), JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = storage.open(path).map_err(io)?;
        let mut bytes = file.read_all().map_err(io)?;
        // A journal is born by writing its header and syncing it, before any record. A
        // file no longer than a header that is not one is a birth cut short by a crash (a
        // torn or partly written header): it holds no record, so nothing decided from it
        // was ever released, and it starts again.
        let unborn = bytes.len() < HEADER_LEN
            || (bytes.len() == HEADER_LEN
                && matches!(scan(&bytes, path), Err(JournalError::BadHeader { .. })));
        if unborn {
            if !bytes.is_empty() {
                file.truncate(0).map_err(io)?;
            }
            file.append(&header(shard)).map_err(io)?;
            bytes = header(shard).to_vec();
        }
        let scanned = scan(&bytes, path)?;
        if scanned.shard != shard {
            return Err(JournalError::WrongShard {
                path: path.to_path_buf(),
                found: scanned.shard.0,
                expected: shard.0,
            });
        }
        let end = match scanned.tail {
            Tail::Clean => bytes.len() as u64,
            Tail::Torn { valid_len, .. } => {
                file.truncate(valid_len).map_err(io)?;
                valid_len
            }
        };
        // What survived a crash may still sit in the page cache only: make it durable, so
        // that the records written next can vouch for it.
        file.sync().map_err(io)?;
        let next_sequence = scanned.records.last().map_or(0, |&(last, _)| last + 1);
        // A version-3 journal (which `scan` accepted) is appended to as version 3.
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                buffer: Vec::with_capacity(64 << 10),
                next_sequence,
                written_len: end,
                synced_len: end,
                failed: false,
                encoder: Encoder::new(version >= 4),
            },
            scanned,
        ))
    }

    /// The sequence number the next appended command must carry.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Whether this journal takes batches of buys (it is version 4; a version-3 journal
    /// opened for appending stays version 3). See [`Encoder`].
    pub fn batches(&self) -> bool {
        self.encoder.batches
    }

    /// Buffers a command's record. Commands must come in sequence order: the first with
    /// [`next_sequence`](Self::next_sequence), then one more each time.
    ///
    /// # Panics
    /// If `sequence` is not the next one (a bug in the caller, which would make the
    /// journal unreadable).
    pub fn append(&mut self, sequence: u64, command: &Command) {
        assert_eq!(
            sequence, self.next_sequence,
            "journal records must come in sequence order"
        );
        let (written, synced) = (self.written_len, self.synced_len);
        self.encoder
            .push(sequence, command, &mut self.buffer, |at| {
                u32::try_from(written + at as u64 - synced).unwrap_or(u32::MAX)
            });
        self.next_sequence += 1;
    }

    /// Bytes in the file (written, not necessarily synced), and bytes known to be on the
    /// disk, for a caller that encodes records itself (see
    /// [`commit_encoded`](Self::commit_encoded)).
    pub fn lengths(&self) -> (u64, u64) {
        (self.written_len, self.synced_len)
    }

    /// Writes records encoded elsewhere (with [`encode`] or an [`Encoder`] of
    /// [`batches`](Self::batches)' format, finished; the sequence numbers following
    /// [`next_sequence`](Self::next_sequence), and each record's unsynced count no smaller
    /// than the bytes before it not known to be synced), `records` of them, and syncs if
    /// asked: a commit whose encoding was done on another thread; `records` counts
    /// commands. Nothing may be buffered by [`append`](Self::append) meanwhile.
    ///
    /// # Errors
    /// As [`commit`](Self::commit).
    pub fn commit_encoded(
        &mut self,
        bytes: &[u8],
        records: u64,
        sync: bool,
    ) -> Result<(), JournalError> {
        debug_assert!(
            self.buffer.is_empty(),
            "records appended and encoded at once"
        );
        if self.failed {
            return Err(JournalError::Failed {
                path: self.path.clone(),
            });
        }
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        let written = self.file.append(bytes).map_err(io).and_then(|()| {
            self.written_len += bytes.len() as u64;
            self.next_sequence += records;
            if sync {
                self.file.sync().map_err(io)?;
                self.synced_len = self.written_len;
            }
            Ok(())
        });
        self.failed = written.is_err();
        written
    }

    /// Bytes buffered since the last commit.
    pub fn pending_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Writes the buffered records and, if `sync`, waits until the disk holds them
    /// (`fdatasync`). Returns whether anything was written.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the write or the sync fails; from then on every commit
    /// is refused with [`JournalError::Failed`], since how much of the file reached the
    /// disk is unknown (a partial write, or dirty pages dropped by a failed sync). What
    /// was committed before stays committed; recover by reopening.
    pub fn commit(&mut self, sync: bool) -> Result<bool, JournalError> {
        if self.failed {
            return Err(JournalError::Failed {
                path: self.path.clone(),
            });
        }
        self.encoder.finish(&mut self.buffer);
        if self.buffer.is_empty() {
            return Ok(false);
        }
        let result = self.write_buffer(sync);
        self.failed = result.is_err();
        result.map(|()| true)
    }

    /// Appends the buffer and syncs if asked.
    fn write_buffer(&mut self, sync: bool) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.append(&self.buffer).map_err(io)?;
        self.written_len += self.buffer.len() as u64;
        self.buffer.clear();
        if sync {
            self.file.sync().map_err(io)?;
            self.synced_len = self.written_len;
        }
        Ok(())
    }

    /// Closes the journal cleanly: commits what is buffered, syncs, and appends a synced
    /// seal that vouches for every record before it (see the [module docs](self)).
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn seal(&mut self) -> Result<(), JournalError> {
        self.commit(true)?;
        if self.synced_len < self.written_len {
            let synced = self.file.sync();
            if let Err(source) = synced {
                self.failed = true;
                return Err(JournalError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            self.synced_len = self.written_len;
        }
        encode_seal(self.next_sequence, &mut self.buffer);
        self.commit(true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// [`super::proven_durable`] as it was first written: every offset tried.
    fn proven_durable_every_offset(bytes: &[u8], hole: usize) -> bool {
        (hole + 1..bytes.len().saturating_sub(FRAME_LEN + PAYLOAD_MIN - 1))
            .filter_map(|at| entry_at(bytes, at, true, &mut Vec::new()))
            .any(|entry| entry.synced_before > hole)
    }

    /// The word-at-a-time scan finds the same proof as trying every offset: damaged bytes
    /// (random, zero runs, and whole entries with any claim of what was synced before them)
    /// at every length, from every hole.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "plain arithmetic on slices, no unsafe; a quarter hour under Miri"
    )]
    fn the_fast_scan_proves_what_every_offset_proves() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut proved = 0;
        let journals = 4_000;
        for _ in 0..journals {
            let mut bytes = Vec::new();
            let parts = next() % 9;
            for _ in 0..parts {
                match next() % 6 {
                    0 => bytes.extend((0..next() % 40).map(|_| next() as u8)),
                    1 => bytes.extend(std::iter::repeat_n(0, (next() % 30) as usize)),
                    // A few zeros just before an entry: candidates in the same word.
                    2 => bytes.extend(std::iter::repeat_n(0, (next() % 8) as usize)),
                    3 => encode(
                        next() % 5,
                        (next() % 64) as u32,
                        &Command::Tick {
                            now_ns: next() % 1_000,
                        },
                        &mut bytes,
                    ),
                    // A batch of a few buys (each scan below is quadratic in the
                    // journal's length: long batches would make the test slow).
                    4 => {
                        let mut encoder = Encoder::new(true);
                        let unsynced = (next() % 64) as u32;
                        for index in 0..1 + next() % 4 {
                            let intent = Intent {
                                user: UserId(next() >> (next() % 64)),
                                client_key: next() >> (next() % 64),
                                sku: SkuId(next() as u32),
                                quantity: 1 + next() as u32 % 3,
                            };
                            let arrival_ns = next() >> (next() % 64);
                            let buy = Command::Buy { intent, arrival_ns };
                            encoder.push(index, &buy, &mut bytes, |_| unsynced);
                        }
                        encoder.finish(&mut bytes);
                    }
                    _ => encode_seal(next() % 5, &mut bytes),
                }
            }
            for hole in 0..bytes.len() {
                let fast = proven_durable(&bytes, hole, true);
                assert_eq!(
                    fast,
                    proven_durable_every_offset(&bytes, hole),
                    "hole {hole} in {bytes:?}"
                );
                proved += usize::from(fast);
            }
        }
        assert!(
            proved > journals,
            "the inputs prove something often enough ({proved})"
        );
    }

    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn every_kind() -> Vec<Command> {
        let intent = Intent {
            user: UserId(u64::MAX - 3),
            client_key: 77,
            sku: SkuId(9),
            quantity: 2,
        };
        vec![
            Command::Buy {
                intent,
                arrival_ns: 1,
            },
            Command::BuyOrWait {
                intent,
                arrival_ns: 2,
            },
            Command::Pay {
                order: OrderId::new(ShardId(3), 5),
                at_ns: 3,
            },
            Command::Cancel {
                order: OrderId(u64::MAX),
                at_ns: 4,
            },
            Command::Tick { now_ns: 5 },
            Command::Restock {
                sku: SkuId(1),
                units: 10,
                at_ns: 6,
            },
            Command::Reduce {
                sku: SkuId(2),
                units: 3,
                at_ns: 7,
            },
            Command::SetWindow {
                sku: SkuId(4),
                window: SaleWindow {
                    opens_at_ns: 8,
                    closes_at_ns: 9,
                },
                at_ns: 10,
            },
            Command::CloseSale {
                sku: SkuId(5),
                at_ns: 11,
            },
        ]
    }

    /// A journal written as the writer would, in groups of `group` records, each group
    /// synced before the next is written; also returns each record's offset.
    fn journal_in_groups(commands: &[Command], first: u64, group: usize) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = header(ShardId(3)).to_vec();
        let mut offsets = Vec::new();
        let mut synced = bytes.len();
        for (index, command) in commands.iter().enumerate() {
            if index % group == 0 {
                synced = bytes.len();
            }
            offsets.push(bytes.len());
            let unsynced = (bytes.len() - synced) as u32;
            encode(first + index as u64, unsynced, command, &mut bytes);
        }
        (bytes, offsets)
    }

    fn journal(commands: &[Command], first: u64) -> Vec<u8> {
        journal_in_groups(commands, first, 1).0
    }

    #[test]
    fn every_command_round_trips() {
        let commands = every_kind();
        let bytes = journal(&commands, 40);
        let scanned = scan(&bytes, Path::new("")).unwrap();
        assert_eq!(scanned.shard, ShardId(3));
        assert_eq!(scanned.tail, Tail::Clean);
        assert!(!scanned.sealed);
        let expected: Vec<(u64, Command)> = (40..).zip(commands).collect();
        assert_eq!(scanned.records, expected);
    }

    #[test]
    fn a_cut_anywhere_in_the_last_record_is_a_torn_tail() {
        let commands = every_kind();
        let whole = journal(&commands, 0);
        let before_last = journal(&commands[..commands.len() - 1], 0).len();
        for cut in before_last + 1..whole.len() {
            let scanned = scan(&whole[..cut], Path::new("")).unwrap();
            assert_eq!(scanned.records.len(), commands.len() - 1, "cut at {cut}");
            assert_eq!(
                scanned.tail,
                Tail::Torn {
                    valid_len: before_last as u64,
                    torn_bytes: (cut - before_last) as u64
                }
            );
        }
        // A last record of the right length but zeros (extended, never written): torn.
        let mut zeroed = whole.clone();
        zeroed[before_last..].fill(0);
        let scanned = scan(&zeroed, Path::new("")).unwrap();
        assert!(matches!(scanned.tail, Tail::Torn { .. }));
    }

    /// Flips every bit of every record: before the last group, each flip is an error
    /// naming the damaged record's offset (never a truncation); inside the last group,
    /// which no later record vouches for, it is a torn tail at the damaged record, with
    /// every record before it kept.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "about 9,000 scans with a proof search each; cargo test runs it, and Miri runs the single-flip tests"
    )]
    fn every_flipped_bit_before_the_tail_is_an_error_naming_the_offset() {
        let commands: Vec<Command> = every_kind().into_iter().cycle().take(20).collect();
        let group = 3;
        let (bytes, offsets) = journal_in_groups(&commands, 0, group);
        let last_group = (commands.len() - 1) / group * group;
        for (index, &start) in offsets.iter().enumerate() {
            let end = offsets.get(index + 1).copied().unwrap_or(bytes.len());
            for position in start..end {
                for bit in 0..8 {
                    let mut damaged = bytes.clone();
                    damaged[position] ^= 1 << bit;
                    let result = scan(&damaged, Path::new("j"));
                    if index < last_group {
                        match result {
                            Err(JournalError::Corrupt { offset, .. }) => {
                                assert_eq!(offset, start as u64, "record {index} byte {position}");
                            }
                            other => {
                                panic!("record {index}, byte {position}, bit {bit}: {other:?}")
                            }
                        }
                    } else {
                        let scanned = result.unwrap();
                        assert_eq!(scanned.records.len(), index, "record {index}");
                        assert_eq!(
                            scanned.tail,
                            Tail::Torn {
                                valid_len: start as u64,
                                torn_bytes: (bytes.len() - start) as u64
                            }
                        );
                    }
                }
            }
        }
        // A hole inside the last group, with later records of that group whole: torn at
        // the hole (a crash that wrote the group's pages out of order).
        let mut holed = bytes.clone();
        holed[offsets[last_group]..offsets[last_group + 1]].fill(0);
        let scanned = scan(&holed, Path::new("j")).unwrap();
        assert_eq!(scanned.records.len(), last_group);
        // A sequence that skips is corruption too.
        let mut skipping = journal(&commands[..1], 0);
        encode(5, 0, &commands[1], &mut skipping);
        encode(6, 0, &commands[2], &mut skipping);
        assert!(matches!(
            scan(&skipping, Path::new("j")),
            Err(JournalError::Corrupt { .. })
        ));
        assert!(matches!(
            scan(b"NOTAJOURNAL-----", Path::new("j")),
            Err(JournalError::BadHeader { .. })
        ));
        let mut old = header(ShardId(3));
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            scan(&old, Path::new("j")),
            Err(JournalError::UnsupportedVersion { found: 1, .. })
        ));
    }

    #[test]
    fn a_seal_vouches_for_the_last_group() {
        let commands = every_kind();
        // One group, never synced before the seal.
        let (mut bytes, offsets) = journal_in_groups(&commands, 0, commands.len());
        encode_seal(commands.len() as u64, &mut bytes);
        let scanned = scan(&bytes, Path::new("j")).unwrap();
        assert!(scanned.sealed);
        assert_eq!(scanned.records.len(), commands.len());
        let mut damaged = bytes.clone();
        damaged[offsets[4] + 9] ^= 0x80;
        assert!(matches!(
            scan(&damaged, Path::new("j")),
            Err(JournalError::Corrupt { offset, .. }) if offset == offsets[4] as u64
        ));
        // A seal that repeats the sequence of a command before it is corrupt.
        let mut wrong = journal(&commands[..2], 0);
        encode_seal(1, &mut wrong);
        assert!(matches!(
            scan(&wrong, Path::new("j")),
            Err(JournalError::Corrupt { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "file syncs; the format itself is covered above")]
    fn the_writer_truncates_a_torn_tail_and_appends_after_it() {
        let dir = std::env::temp_dir().join(format!("flashsale-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard-00003.fsj");
        let _ = std::fs::remove_file(&path);
        let commands = every_kind();
        let (mut writer, scanned) = JournalWriter::open(&path, ShardId(3)).unwrap();
        assert!(scanned.records.is_empty());
        for (sequence, command) in commands.iter().enumerate() {
            writer.append(sequence as u64, command);
        }
        assert!(writer.commit(true).unwrap());
        drop(writer);
        // A crash mid-append: half a record at the end.
        let mut half = Vec::new();
        encode(commands.len() as u64, 0, &commands[0], &mut half);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&half[..half.len() / 2]).unwrap();
        drop(file);
        let (mut writer, scanned) = JournalWriter::open(&path, ShardId(3)).unwrap();
        assert_eq!(scanned.records.len(), commands.len());
        assert!(matches!(scanned.tail, Tail::Torn { .. }));
        assert_eq!(writer.next_sequence(), commands.len() as u64);
        writer.append(commands.len() as u64, &commands[4]);
        writer.commit(true).unwrap();
        writer.seal().unwrap();
        let reread = read(&path).unwrap();
        assert_eq!(reread.tail, Tail::Clean);
        assert!(reread.sealed);
        assert_eq!(reread.records.len(), commands.len() + 1);
        // Appends after a seal go on from the sequence it names.
        let (mut writer, _) = JournalWriter::open(&path, ShardId(3)).unwrap();
        writer.append(commands.len() as u64 + 1, &commands[5]);
        writer.commit(false).unwrap();
        let reread = read(&path).unwrap();
        assert!(!reread.sealed);
        assert_eq!(reread.records.len(), commands.len() + 2);
        assert!(matches!(
            JournalWriter::open(&path, ShardId(4)),
            Err(JournalError::WrongShard { found: 3, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A sale's buys as the shard sees them: users and keys spread out, stamps climbing.
    fn buys(count: u64, seed: u64) -> Vec<Command> {
        (0..count)
            .map(|index| {
                let mixed = (index + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let intent = Intent {
                    user: UserId(mixed >> 40),
                    client_key: mixed >> 52,
                    sku: SkuId((mixed >> 20) as u32 % 100),
                    quantity: 1 + (mixed % 2) as u32,
                };
                let arrival_ns = 1_000_000_000 + index * 350 + mixed % 64;
                if index % 7 == 3 {
                    Command::BuyOrWait { intent, arrival_ns }
                } else {
                    Command::Buy { intent, arrival_ns }
                }
            })
            .collect()
    }

    /// A version-4 journal written through an [`Encoder`] in synced groups of `group`
    /// commands, as the engine's journal thread writes it; also the offset of every
    /// record and how many commands came before it.
    fn batched_journal(commands: &[Command], group: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut bytes = header(ShardId(3)).to_vec();
        let mut encoder = Encoder::new(true);
        let mut synced = bytes.len();
        for (index, command) in commands.iter().enumerate() {
            if index % group == 0 {
                encoder.finish(&mut bytes);
                synced = bytes.len();
            }
            encoder.push(index as u64, command, &mut bytes, |at| (at - synced) as u32);
        }
        encoder.finish(&mut bytes);
        let mut records = Vec::new();
        let mut before = 0;
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            records.push((at, before));
            let entry = entry_at(&bytes, at, true, &mut Vec::new()).expect("a whole record");
            before += entry.count as usize;
            at = entry.end;
        }
        (bytes, records)
    }

    /// Buys go into batches that read back as the same commands, in a fraction of the
    /// bytes, with every other kind of command between them; no batch is longer than its
    /// bound, even of buys with the largest numbers.
    #[test]
    fn batches_of_buys_round_trip_in_a_fraction_of_the_bytes() {
        let mut commands = buys(1_000, 0);
        for (index, command) in every_kind().into_iter().enumerate() {
            commands.insert(index * 97 + 5, command);
        }
        let largest = Intent {
            user: UserId(u64::MAX),
            client_key: u64::MAX,
            sku: SkuId(u32::MAX),
            quantity: u32::MAX,
        };
        for arrival_ns in [u64::MAX, 0, u64::MAX, 1] {
            commands.push(Command::BuyOrWait {
                intent: largest,
                arrival_ns,
            });
        }
        let (bytes, records) = batched_journal(&commands, 64);
        let scanned = scan(&bytes, Path::new("")).unwrap();
        assert_eq!(scanned.tail, Tail::Clean);
        let expected: Vec<(u64, Command)> = (0..).zip(commands.iter().copied()).collect();
        assert_eq!(scanned.records, expected);
        for &(at, _) in &records {
            let length = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert!(length as usize <= BATCH_PAYLOAD_MAX);
        }
        // One record a command, as version 3 wrote them.
        let singles = journal(&commands, 0);
        assert!(
            bytes.len() * 3 < singles.len(),
            "{} bytes in batches against {} one by one",
            bytes.len(),
            singles.len()
        );
        assert!(
            records.len() * 8 < commands.len(),
            "{} records",
            records.len()
        );
    }

    /// The flipped-bit rule holds for batches: damage in a batch that a later group's
    /// record vouches for is an error naming the batch; in the last group, a torn tail at
    /// the batch, with the commands of every record before it kept.
    #[test]
    #[cfg_attr(miri, ignore = "thousands of scans with a proof search each")]
    fn a_flipped_bit_in_a_batch_is_an_error_or_a_torn_tail() {
        let commands = buys(120, 7);
        let (bytes, records) = batched_journal(&commands, 40);
        let last_group_starts = records
            .iter()
            .position(|&(_, before)| before >= 80)
            .unwrap();
        for (index, &(start, before)) in records.iter().enumerate() {
            let end = records.get(index + 1).map_or(bytes.len(), |&(at, _)| at);
            for position in start..end {
                for bit in 0..8 {
                    let mut damaged = bytes.clone();
                    damaged[position] ^= 1 << bit;
                    let result = scan(&damaged, Path::new("j"));
                    let start = start as u64;
                    if index < last_group_starts {
                        let named = match &result {
                            Err(JournalError::Corrupt { offset, .. }) => Some(*offset),
                            _ => None,
                        };
                        assert_eq!(
                            named,
                            Some(start),
                            "record {index}, byte {position}, bit {bit}: {result:?}"
                        );
                    } else {
                        let scanned = result.unwrap();
                        assert_eq!(scanned.records.len(), before, "record {index}");
                        let torn_at = match scanned.tail {
                            Tail::Torn { valid_len, .. } => Some(valid_len),
                            Tail::Clean => None,
                        };
                        assert_eq!(torn_at, Some(start), "record {index}");
                    }
                }
            }
        }
    }

    /// A version-3 journal still reads, and is appended to one record a command (its
    /// readers know no batches); a batch in it is not a valid record.
    #[test]
    #[cfg_attr(miri, ignore = "file syncs; the format itself is covered above")]
    fn a_version_3_journal_reads_and_stays_version_3() {
        let commands = buys(10, 3);
        let mut old = journal(&commands[..5], 0);
        old[8..12].copy_from_slice(&3u32.to_le_bytes());
        let scanned = scan(&old, Path::new("j")).unwrap();
        assert_eq!(scanned.records.len(), 5);
        let mut with_batch = old.clone();
        let mut encoder = Encoder::new(true);
        encoder.push(5, &commands[5], &mut with_batch, |_| 0);
        encoder.finish(&mut with_batch);
        let scanned = scan(&with_batch, Path::new("j")).unwrap();
        assert_eq!(scanned.records.len(), 5);
        assert!(matches!(scanned.tail, Tail::Torn { .. }));

        let dir = std::env::temp_dir().join(format!("flashsale-journal-v3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard-00003.fsj");
        std::fs::write(&path, &old).unwrap();
        let (mut writer, _) = JournalWriter::open(&path, ShardId(3)).unwrap();
        assert!(!writer.batches());
        for (sequence, command) in commands.iter().enumerate().skip(5) {
            writer.append(sequence as u64, command);
        }
        writer.seal().unwrap();
        let reread = read(&path).unwrap();
        let expected: Vec<(u64, Command)> = (0..).zip(commands.iter().copied()).collect();
        assert_eq!(reread.records, expected);
        assert!(reread.sealed);
        // A new journal is version 4 and batches.
        let new = dir.join("shard-00004.fsj");
        let (writer, _) = JournalWriter::open(&new, ShardId(4)).unwrap();
        assert!(writer.batches());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A disk in memory whose next sync fails once.
    #[derive(Debug, Default)]
    struct FailingSync {
        bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        fail_next_sync: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::storage::Storage for FailingSync {
        fn open(&self, _: &Path) -> io::Result<Box<dyn crate::storage::StorageFile>> {
            Ok(Box::new(FailingSyncFile {
                bytes: self.bytes.clone(),
                fail_next_sync: self.fail_next_sync.clone(),
            }))
        }
    }

    #[derive(Debug)]
    struct FailingSyncFile {
        bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
        fail_next_sync: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl crate::storage::StorageFile for FailingSyncFile {
        fn read_all(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.bytes.lock().unwrap().clone())
        }
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.bytes.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            if self
                .fail_next_sync
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                return Err(io::Error::from_raw_os_error(5));
            }
            Ok(())
        }
        fn truncate(&mut self, len: u64) -> io::Result<()> {
            self.bytes.lock().unwrap().truncate(len as usize);
            Ok(())
        }
    }

    /// After a failed sync a retry would prove nothing (the kernel may have dropped the
    /// dirty pages): the writer refuses every later commit and seal, until reopened.
    #[test]
    fn a_failed_sync_ends_the_writer_until_it_is_reopened() {
        let storage = FailingSync::default();
        let path = Path::new("shard-00000.fsj");
        let (mut writer, _) = JournalWriter::open_in(&storage, path, ShardId(0)).unwrap();
        let commands = every_kind();
        writer.append(0, &commands[0]);
        assert!(writer.commit(true).unwrap());
        writer.append(1, &commands[1]);
        storage
            .fail_next_sync
            .store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(matches!(writer.commit(true), Err(JournalError::Io { .. })));
        // The sync would succeed now; the writer still refuses, with or without records.
        assert!(matches!(
            writer.commit(true),
            Err(JournalError::Failed { .. })
        ));
        writer.append(2, &commands[2]);
        assert!(matches!(
            writer.commit(true),
            Err(JournalError::Failed { .. })
        ));
        assert!(matches!(writer.seal(), Err(JournalError::Failed { .. })));
        // Reopened, it goes on from what is on the disk.
        let (mut reopened, scanned) = JournalWriter::open_in(&storage, path, ShardId(0)).unwrap();
        assert_eq!(scanned.records.len(), 2);
        reopened.append(2, &commands[2]);
        assert!(reopened.commit(true).unwrap());
    }
}
