//! Arbitrary bytes as a journal: the reader never panics; what it accepts reads back the
//! same on its own (the valid prefix scans clean, with the same records); and a torn tail
//! is only ever reported where no whole record after it proves the bytes were synced.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let again =
        journal::scan(&input[..valid_len], Path::new("fuzz")).expect("the valid prefix reads");
    assert_eq!(again.tail, Tail::Clean);
    assert_eq!(
        again.records, scanned.records,
        "the valid prefix reads the same"
    );
    // Re-encoding the records (each claiming everything before it synced) reads the same.
    let mut encoded = journal::header(scanned.shard).to_vec();
    for (sequence, command) in &scanned.records {
        journal::encode(*sequence, 0, command, &mut encoded);
    }
    let reread = journal::scan(&encoded, Path::new("fuzz")).expect("re-encoded records read");
    assert_eq!(reread.records, scanned.records);
});
