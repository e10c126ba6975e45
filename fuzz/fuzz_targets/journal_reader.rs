//! Arbitrary bytes as a journal: the reader never panics, and what it accepts is exactly
//! what the writer would have written: re-encoding the records it returns gives back the
//! valid prefix byte for byte (a torn tail after it is reported, not misread).
#![no_main]

use std::path::Path;

use flashsale::journal::{self, Tail};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // Half the inputs get a valid header, so that the records behind it are explored.
    let mut input = Vec::with_capacity(bytes.len() + journal::HEADER_LEN);
    if bytes.first().is_some_and(|b| b % 2 == 0) {
        input.extend_from_slice(&journal::header(flashsale::ShardId(u16::from(bytes[0]))));
        input.extend_from_slice(&bytes[1..]);
    } else {
        input.extend_from_slice(bytes);
    }
    let Ok(scanned) = journal::scan(&input, Path::new("fuzz")) else {
        return;
    };
    let mut again = journal::header(scanned.shard).to_vec();
    for (sequence, command) in &scanned.records {
        journal::encode(*sequence, command, &mut again);
    }
    let valid_len = match scanned.tail {
        Tail::Clean => input.len(),
        Tail::Torn {
            valid_len,
            torn_bytes,
        } => {
            assert_eq!(valid_len + torn_bytes, input.len() as u64);
            valid_len as usize
        }
    };
    assert_eq!(&input[..valid_len], &again[..], "the valid prefix re-encodes exactly");
});
