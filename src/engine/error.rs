//! Why an engine could not start.

use crate::catalog::PlacementError;

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SKUs cannot be spread over the requested shards.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// A setting is outside the range the engine supports (see the bounds on
    /// [`EngineBuilder`](crate::EngineBuilder)): refused before anything is allocated.
    #[error("{setting} = {value} is outside the supported range {min}..={max}")]
    OutOfRange {
        /// The setting, as the builder (or [`JournalConfig`](crate::JournalConfig)) names it.
        setting: &'static str,
        /// The value given (durations in nanoseconds).
        value: u128,
        /// The smallest value accepted.
        min: u128,
        /// The largest value accepted.
        max: u128,
    },
    /// The OS refused a shard thread.
    #[error("could not spawn a shard thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// A journal could not be opened, read or replayed.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// A journal's records do not continue its shard's sequence (another catalog's, or
    /// another shard count's, journal directory).
    #[error("journal of shard {shard}: record {found} where {expected} was due")]
    JournalSequence {
        /// The shard.
        shard: u16,
        /// The sequence number found.
        found: u64,
        /// The one due.
        expected: u64,
    },
    /// The journal directory was written under another catalog or shard count (its
    /// manifest says so): replaying it here would decide differently, so it is refused.
    #[error(
        "the journal directory {dir} was written for {what} {found}, not this engine's {expected}"
    )]
    JournalMismatch {
        /// The directory.
        dir: std::path::PathBuf,
        /// `"catalog fingerprint"` or `"shard count"`.
        what: &'static str,
        /// What the manifest records.
        found: String,
        /// What this engine has.
        expected: String,
    },
    /// Another engine, in this process or another, has the journal directory: two appending
    /// to the same journals would each sell the whole stock, and their records would
    /// interleave into a journal neither could recover.
    #[error(
        "the journal directory {dir} is in use by another engine (it holds the lock on {lock})"
    )]
    DirectoryInUse {
        /// The directory.
        dir: std::path::PathBuf,
        /// Its lock file.
        lock: std::path::PathBuf,
    },
    /// The journal directory holds a shard's journal or snapshot but no manifest: which
    /// catalog and shard count wrote them is not known, and replaying them under another
    /// would decide differently, so they are not replayed.
    #[error(
        "the journal directory {dir} holds {found} but no manifest ({manifest}): which catalog and \
         shard count wrote it is not known; write the manifest back (three lines: \"flashsale journal \
         directory\", \"catalog <fingerprint>\", \"shards <count>\") or move the journals and \
         snapshots away"
    )]
    ManifestMissing {
        /// The directory.
        dir: std::path::PathBuf,
        /// The first journal or snapshot file found in it.
        found: std::path::PathBuf,
        /// Where the manifest belongs.
        manifest: std::path::PathBuf,
    },
    /// The room for orders the shards would make at start (their order books and order
    /// records, written up front) is more than the memory this process may have (the
    /// machine's, or its control group's limit where lower): starting would end in the
    /// kernel's out-of-memory killer, not in a sale.
    #[error(
        "the room for orders of {shards} shard(s) needs {:.1} GiB, more than the {:.1} GiB of \
         memory this process may have (the machine's, or its control group's limit): lower \
         order_capacity (--order-capacity), or run fewer shards",
        *needs_bytes as f64 / f64::from(1u32 << 30),
        *has_bytes as f64 / f64::from(1u32 << 30)
    )]
    NotEnoughMemory {
        /// Bytes the room would take, all shards together.
        needs_bytes: u64,
        /// The machine's physical memory (`MemTotal` in `/proc/meminfo`), or its control
        /// group's memory limit where that is lower.
        has_bytes: u64,
        /// Shards.
        shards: usize,
    },
    /// The journal directory's manifest does not read exactly as a start writes it: damaged
    /// (a flipped bit anywhere in it, its title's too) or not a manifest at all. Which
    /// catalog and shard count wrote the journals is then not known, so nothing is replayed.
    #[error(
        "the journal directory's manifest {manifest} is damaged or not a flashsale manifest: it \
         must read exactly as a start writes it (three lines: \"flashsale journal directory\", \
         \"catalog <16 hex digits>\", \"shards <count>\"); write it back or move the journals and \
         snapshots away"
    )]
    ManifestDamaged {
        /// The manifest.
        manifest: std::path::PathBuf,
    },
}

/// Why a shard failed. A failed shard decides nothing more: what it had decided but not
/// yet made durable is answered `ShardFailed` (never released as decided), and so is every
/// later submit and operator call to it, until the engine is started again (which recovers
/// what its journal holds). From [`Control::failures`](crate::Control::failures) while the
/// engine runs, and [`Report::failures`](crate::Report::failures) after.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardFailure {
    /// Its journal could not be written or synced (a full disk, an I/O error): the
    /// writer's error, naming the file.
    #[error("its journal could not be written: {0}")]
    Journal(String),
    /// The [`OrderSink`](crate::OrderSink) panicked, with this message (empty when the
    /// panic's payload was not text).
    #[error("the order sink panicked: {0}")]
    SinkPanicked(String),
    /// The shard's own loop panicked, with this message: a bug in the engine.
    #[error("the shard panicked (a bug): {0}")]
    Panicked(String),
}

impl ShardFailure {
    /// The text of a panic's payload (`&str` or `String`), or an empty string.
    pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
        payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    }
}
