//! Why an engine could not start.

use crate::catalog::PlacementError;
use crate::ring;

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The SKUs cannot be spread over the requested shards.
    #[error(transparent)]
    Placement(#[from] PlacementError),
    /// The ring capacity is 0 or too large.
    #[error("ring capacity: {0}")]
    RingCapacity(#[from] ring::CapacityError),
    /// `max_quantity` is 0, so every intent would be malformed.
    #[error("max_quantity must be at least 1")]
    ZeroMaxQuantity,
    /// `batch_max` is 0, so a shard could never take an intent.
    #[error("batch_max must be at least 1")]
    ZeroBatch,
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
}
