//! The seam between the journal and the disk.
//!
//! The journal writer and recovery reach their files only through [`Storage`], so that a
//! test can put an observing or faulty disk under the real journaling code (one that
//! blocks a sync to check that nothing is released before it returns, or fails one).
//! [`FileStorage`], the default, is plain files: a commit is one `write` and, when synced,
//! one `fdatasync`, as before the seam; the trait object costs one indirect call per
//! commit, not per command.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Opens the files durability writes through.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens the file at `path` for reading and appending, creating it empty if missing.
    ///
    /// # Errors
    /// The OS error.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
}

/// One open file: read whole, appended to, synced, cut short.
pub trait StorageFile: Send + fmt::Debug {
    /// Every byte of the file; the next append goes after them.
    ///
    /// # Errors
    /// The OS error.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;

    /// Appends `bytes` at the end of the file (all of them, or an error).
    ///
    /// # Errors
    /// The OS error; how much of `bytes` reached the file is then unknown.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Returns once the disk holds every byte appended so far (`fdatasync`).
    ///
    /// # Errors
    /// The OS error. After a failed sync, the appended bytes may or may not be on the
    /// disk, and syncing again proves nothing: the caller must not count them as durable.
    fn sync(&mut self) -> io::Result<()>;

    /// Cuts the file to `len` bytes, and syncs that; the next append goes at `len`.
    ///
    /// # Errors
    /// The OS error.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// Plain files on the local file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

impl Storage for FileStorage {
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(DiskFile { file }))
    }
}

/// A file of [`FileStorage`]; its cursor is always at the end.
#[derive(Debug)]
struct DiskFile {
    file: File,
}

impl StorageFile for DiskFile {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()?;
        self.file.seek(SeekFrom::Start(len))?;
        Ok(())
    }
}
