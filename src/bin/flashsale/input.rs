//! Reading the files a command is pointed at (catalogs, scenarios, token keys): plain
//! files, read up to a bound, so that a wrong path (a directory, a device that never ends
//! such as `/dev/zero`, a pipe nobody writes, a huge file) is refused with a reason rather
//! than read for ever or into all of memory.

use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// The most a catalog or scenario file may hold: 64 MiB (a catalog of a hundred thousand
/// SKUs is about 15 MiB).
pub const DESCRIPTION_MAX: u64 = 64 << 20;

/// The contents of the plain file at `path`, at most `limit` bytes.
///
/// # Errors
/// It cannot be opened or read, is not a plain file (after symlinks), or holds more than
/// `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a file"));
    }
    let mut contents = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut contents)?;
    if contents.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("over {limit} bytes, not a file of this kind"),
        ));
    }
    Ok(contents)
}

/// [`read_bounded`], as UTF-8 text.
///
/// # Errors
/// As [`read_bounded`], and text that is not UTF-8.
pub fn read_bounded_text(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}
