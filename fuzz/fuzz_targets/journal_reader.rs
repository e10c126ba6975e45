//! Arbitrary bytes as a journal: the reader never panics; what it accepts reads back the
//! same on its own (the valid prefix scans clean, with the same records); and a torn tail
//! is only ever reported where no whole record after it proves the bytes were synced.
//!
//! The first byte picks how the rest is read (each bit independently):
//! - bit 0 clear: a valid header goes first;
//! - bit 1 set: the bytes are laid out as records whose length (from the kind byte; a
//!   batch of buys keeps the length the bytes give), sequence (consecutive, a batch taking
//!   one per buy it holds) and both checksums the harness fills in, so mutations of the
//!   fields and payloads reach the decoder without the fuzzer having to forge a CRC;
//! - bit 2 set (with bit 1): then one bit is flipped, at an offset the next two bytes
//!   pick: damage inside or after whole records, which the reader must report or, where
//!   nothing proves it was synced, cut off as a torn tail.
//!
//! Without bit 1 the bytes are read as they are. The target is built without libFuzzer's
//! comparison tracing (which is what lets it forge checksums otherwise): with the
//! checksums filled in, that tracing cost more than half of each execution and bought no
//! coverage.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;

use flashsale::journal::{self, FRAME_LEN, HEADER_LEN, Tail};
use libfuzzer_sys::fuzz_target;

/// A payload's length for its kind byte (sequence, kind, body), as the format defines it;
/// kinds it does not define keep the length the bytes give.
fn payload_len(kind: u8) -> Option<usize> {
    Some(
        9 + match kind {
            0 => 0,
            1 | 2 => 32,
            3 | 4 | 6 | 7 => 16,
            5 => 8,
            8 => 28,
            9 => 12,
            _ => return None,
        },
    )
}

/// How many buys a batch's body (after its sequence and kind) holds, if it reads as one:
/// each buy is a flag byte and five LEB128 varints.
fn batch_count(mut body: &[u8]) -> u64 {
    let mut count = 0;
    while let Some((_, rest)) = body.split_first() {
        body = rest;
        for _ in 0..5 {
            let Some(end) = body.iter().position(|byte| byte & 0x80 == 0) else {
                return count.max(1);
            };
            body = &body[end + 1..];
        }
        count += 1;
    }
    count.max(1)
}

/// Fills in each record's length, sequence (from the first one's on, a batch of buys
/// taking as many as it holds) and checksums, from `at` until the bytes cannot hold the
/// next record's frame and kind.
fn fill_in_records(bytes: &mut [u8], mut at: usize) {
    let mut sequence = None;
    while at + FRAME_LEN + 9 <= bytes.len() {
        let payload = at + FRAME_LEN;
        let given = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let length = match bytes[payload + 8] {
            // A batch: the bytes' length, within a batch's bound.
            10 => 9 + given % 247,
            kind => payload_len(kind).unwrap_or(given),
        };
        if length < 9 || payload + length > bytes.len() {
            return;
        }
        bytes[at + 8..at + 12].copy_from_slice(&(length as u32).to_le_bytes());
        let first = u64::from_le_bytes(bytes[payload..payload + 8].try_into().unwrap());
        let this = *sequence.get_or_insert(first);
        bytes[payload..payload + 8].copy_from_slice(&this.to_le_bytes());
        // A seal carries the next command's sequence and takes none itself.
        match bytes[payload + 8] {
            0 => {}
            10 => {
                let count = batch_count(&bytes[payload + 9..payload + length]);
                sequence = Some(this.wrapping_add(count));
            }
            _ => sequence = Some(this.wrapping_add(1)),
        }
        let payload_crc = crc32fast::hash(&bytes[payload..payload + length]);
        bytes[at + 4..at + 8].copy_from_slice(&payload_crc.to_le_bytes());
        let frame_crc = crc32fast::hash(&bytes[at + 4..at + FRAME_LEN]);
        bytes[at..at + 4].copy_from_slice(&frame_crc.to_le_bytes());
        at = payload + length;
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some(&how) = bytes.first() else {
        return;
    };
    let mut input = Vec::with_capacity(bytes.len() + HEADER_LEN);
    if how % 2 == 0 {
        input.extend_from_slice(&journal::header(flashsale::ShardId(u16::from(how))));
        input.extend_from_slice(&bytes[1..]);
    } else {
        input.extend_from_slice(bytes);
    }
    if how & 2 != 0 {
        let flip = (how & 4 != 0 && input.len() > HEADER_LEN + 2).then(|| {
            let at = usize::from(u16::from_le_bytes([
                input[HEADER_LEN],
                input[HEADER_LEN + 1],
            ]));
            (
                HEADER_LEN + 2 + at % (input.len() - HEADER_LEN - 2),
                1u8 << (at % 8),
            )
        });
        let records = if flip.is_some() {
            HEADER_LEN + 2
        } else {
            HEADER_LEN
        };
        fill_in_records(&mut input, records);
        if let Some((at, bit)) = flip {
            input[at] ^= bit;
        }
    }
    let Ok(scanned) = journal::scan(&input, Path::new("fuzz")) else {
        return;
    };
    // A torn tail cut off, the valid prefix reads the same on its own. (A clean read's
    // prefix is the whole input, which the reader, a pure function of its bytes, has read.)
    if let Tail::Torn {
        valid_len,
        torn_bytes,
    } = scanned.tail
    {
        assert_eq!(valid_len + torn_bytes, input.len() as u64);
        let again = journal::scan(&input[..valid_len as usize], Path::new("fuzz"))
            .expect("the valid prefix reads");
        assert_eq!(again.tail, Tail::Clean);
        assert_eq!(
            again.records, scanned.records,
            "the valid prefix reads the same"
        );
    }
    // Re-encoding the records (each claiming everything before it synced) reads the same.
    let mut encoded = journal::header(scanned.shard).to_vec();
    for (sequence, command) in &scanned.records {
        journal::encode(*sequence, 0, command, &mut encoded);
    }
    let reread = journal::scan(&encoded, Path::new("fuzz")).expect("re-encoded records read");
    assert_eq!(reread.records, scanned.records);
});
