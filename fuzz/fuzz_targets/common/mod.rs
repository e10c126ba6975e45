//! Helpers the cluster targets share: changing a byte as an input asks, writing a
//! message's checksum again, and the round trip of a batch of replies.

use flashsale::cluster::wire;

/// Changes `byte` as `how` picks: one bit flipped, set to `by`, or `by` added.
pub fn change_byte(byte: &mut u8, how: u8, by: u8) {
    *byte = match how % 3 {
        0 => *byte ^ 1 << (by % 8),
        1 => by,
        _ => byte.wrapping_add(by),
    };
}

/// Writes a message's checksum again over its last four bytes, so that changes reach the
/// fields behind it rather than stopping at the checksum.
pub fn reseal(bytes: &mut [u8]) {
    if let Some(covered) = bytes.len().checked_sub(4) {
        let crc = crc32fast::hash(&bytes[..covered]);
        bytes[covered..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Bytes that decode as a batch of replies encode back to bytes that decode the same.
pub fn replies_round_trip(bytes: &[u8]) {
    if let Ok(replies) = wire::decode_replies(bytes) {
        let mut again = Vec::new();
        wire::encode_replies(
            replies.partition,
            replies.position,
            replies.answers.iter().copied(),
            &mut again,
        );
        assert_eq!(wire::decode_replies(&again), Ok(replies));
    }
}
