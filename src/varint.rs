//! LEB128 varints (seven bits a byte, low bits first, the high bit set on every byte but
//! the last) and zigzagged steps between numbers that mostly climb: the compact integers of
//! the cluster's wire formats and of the journal's batches of buys.

/// Appends `value` as a LEB128 varint (1 to 10 bytes).
#[inline]
pub(crate) fn write(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a LEB128 varint off the front of `bytes`; `None` if the bytes end first or the
/// number does not fit 64 bits.
#[inline]
pub(crate) fn read(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        // The tenth byte holds the top bit only.
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends `value` as its zigzagged step from `previous` (even: forward, odd: back), so
/// that a number close to the one before takes a byte or two whichever way it went.
#[inline]
pub(crate) fn write_step(out: &mut Vec<u8>, previous: u64, value: u64) {
    let step = value.wrapping_sub(previous) as i64;
    write(out, ((step << 1) ^ (step >> 63)) as u64);
}

/// Reads a number written by [`write_step`] after `previous`.
#[inline]
pub(crate) fn read_step(bytes: &mut &[u8], previous: u64) -> Option<u64> {
    let step = read(bytes)?;
    Some(previous.wrapping_add((step >> 1) ^ (step & 1).wrapping_neg()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_steps_read_back() {
        let values = [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ];
        for &value in &values {
            let mut out = Vec::new();
            write(&mut out, value);
            assert!(out.len() <= 10);
            let mut bytes = &out[..];
            assert_eq!(read(&mut bytes), Some(value));
            assert!(bytes.is_empty());
            for &previous in &values {
                let mut out = Vec::new();
                write_step(&mut out, previous, value);
                let mut bytes = &out[..];
                assert_eq!(read_step(&mut bytes, previous), Some(value));
            }
        }
        // A step of one either way is one byte.
        let mut out = Vec::new();
        write_step(&mut out, 10, 11);
        write_step(&mut out, 10, 9);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn cut_short_or_too_long_is_refused() {
        assert_eq!(read(&mut &[0x80u8][..]), None);
        assert_eq!(read(&mut &[][..]), None);
        // Ten bytes whose last carries more than the 64th bit.
        let mut long = [0xffu8; 10];
        long[9] = 0x02;
        assert_eq!(read(&mut &long[..]), None);
        // Eleven bytes.
        assert_eq!(read(&mut &[0xffu8; 11][..]), None);
    }
}
