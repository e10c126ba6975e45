//! The seam between the journal and the disk.
//!
//! The journal writer, the snapshot writer and recovery reach their files only through
//! [`Storage`], so that a test can put an observing or faulty disk under the real
//! durability code (one that blocks a sync to check that nothing is released before it
//! returns, or the fault simulator's, which fails, tears and rots what it holds).
//! [`FileStorage`], the default, is plain files: a commit is one `write` and, when synced,
//! one `fdatasync`, as before the seam; the trait object costs one indirect call per
//! commit, not per command.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Opens the files durability writes through: the journals (appended to) and the
/// snapshots (written whole, renamed into place, listed, read back, removed). Every method
/// but [`open`](Self::open) defaults to plain files, so a storage that only watches the
/// journal need not say more.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Opens the file at `path` for reading and appending, creating it empty if missing.
    ///
    /// # Errors
    /// The OS error.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;

    /// Writes `bytes` as the whole file at `path` (created, or replaced) and syncs it.
    ///
    /// # Errors
    /// The OS error; the file may then hold any part of `bytes`.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// Every byte of the file at `path`.
    ///
    /// # Errors
    /// The OS error (`NotFound` if there is none).
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    /// Renames `from` to `to` (replacing it) and syncs the directory, so that the rename
    /// survives a crash.
    ///
    /// # Errors
    /// The OS error; the rename may then have happened or not.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        match to.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
            _ => Ok(()),
        }
    }

    /// The paths of the files in `dir` (none if it does not exist).
    ///
    /// # Errors
    /// The OS error.
    fn list(&self, dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|entry| entry.map(|entry| entry.path()))
                .collect(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }

    /// Removes the file at `path`.
    ///
    /// # Errors
    /// The OS error.
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    /// Creates the directory `dir` and its parents where missing (the engine's journal
    /// directory, before anything in it is opened).
    ///
    /// # Errors
    /// The OS error.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    /// Takes the directory's lock for as long as the returned guard lives, so that one
    /// engine at a time appends to its journals: an exclusive `flock` on
    /// [`DirLock::FILE`] in `dir` (created if missing), which the OS releases when the
    /// guard is dropped or the process dies. Another engine holding it, in this process or
    /// another, is `WouldBlock`. A storage without directories returns [`DirLock::none`].
    ///
    /// # Errors
    /// `WouldBlock` while another holds the lock; the OS error otherwise.
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(DirLock::FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _held: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(error)) => Err(error),
        }
    }
}

/// A journal directory's lock (see [`Storage::lock_dir`]); released when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The locked file; closing it releases the lock.
    _held: Option<File>,
}

impl DirLock {
    /// The lock file's name in the directory.
    pub const FILE: &'static str = "flashsale.lock";

    /// No lock: for a storage that has no directories to share (a simulated disk).
    pub fn none() -> Self {
        Self { _held: None }
    }
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
