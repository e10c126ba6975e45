//! A sale on a replicated log: the pieces that let a partition's state be rebuilt, on any
//! machine, from an ordered log of messages alone.
//!
//! The log (one per partition; a partition is the SKUs one shard owns) is the journal:
//! gateways append batches of buys, operators append commands, and whoever leads the
//! partition appends ticks when holds or draws fall due. The log gives each entry its
//! position and its instant. A [`Replica`] applies entries in position order to a
//! [`ShardCore`](crate::ShardCore) and answers each request; since the core is
//! deterministic, every replica that applies the same entries holds the same state and
//! gives the same answers. That is what makes a standby hot, a snapshot plus the log's tail
//! equal to the whole log, and two leaders for a moment harmless: they can only say the
//! same thing twice.
//!
//! - [`wire`]: the messages, checksummed, with a named error for every way one can be
//!   wrong.
//! - [`Replica`]: the state machine, its snapshot and its restore.
//! - [`gate`]: the sold-out gate gateways keep from what the leaders publish.
//! - [`view`]: reads of a partition (its sales, an order) answered by its leader.
//!
//! With the `cluster` feature, on NATS JetStream:
//! - `nats`: the sale's streams, buckets and epoch;
//! - `run_node`: an engine node, leading some partitions and standing by for the rest;
//! - `follow`: a follower of every partition's log that leads nothing, for the order
//!   events (what `serve --nats --feed` serves as its order event feed);
//! - `Gateway`: buys through the cluster, batched per partition.

pub mod gate;
#[cfg(all(feature = "cluster", not(loom)))]
mod gateway;
#[cfg(all(feature = "cluster", not(loom)))]
pub mod nats;
#[cfg(all(feature = "cluster", not(loom)))]
mod node;
mod replica;
pub mod view;
pub mod wire;

#[cfg(all(feature = "cluster", not(loom)))]
pub use gateway::{Decided, Gateway, GatewayConfig, GatewayError, GatewayStats};
#[cfg(all(feature = "cluster", not(loom)))]
pub use node::{EventSink, NodeConfig, NodeLatency, PartitionStatus, follow, run_node};

pub use replica::{Answer, Gap, Replica, ReplicaSnapshotError, Reply, Step};

/// The version of what a sale's processes say to each other and of how its replicas
/// decide: the log's messages and the replies ([`wire`]), the reads and their answers
/// ([`view`]), the gate's updates and filters ([`gate`]), a replica's snapshot, and the
/// answer a replica gives to each entry of a log (replicas of two builds that decide one
/// entry differently would part ways at a failover). Raised with any change to one of
/// them; tests tie it to the formats' magics and to the digest of what replicas decide
/// on fixed logs.
///
/// A sale's shape (checked by every node and gateway before it applies or publishes
/// anything) includes it, so every process of a sale runs one protocol for the sale's
/// whole life: a process of another is refused at its start, by name, rather than
/// meeting messages it cannot read mid-sale. Upgrade between sales, not during one.
pub const PROTOCOL: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    /// A tripwire: a format's magic changed (a new format) while [`PROTOCOL`] did not.
    /// Change both together, and this list with them.
    #[test]
    fn a_new_format_comes_with_a_new_protocol() {
        let magics = [
            wire::MAGIC,
            wire::REPLIES_MAGIC,
            view::QUERY_MAGIC,
            view::VIEW_MAGIC,
            view::ORDER_MAGIC,
            view::POOLS_MAGIC,
            gate::GATE_MAGIC,
            gate::FILTER_MAGIC,
        ];
        assert_eq!(
            (PROTOCOL, magics.concat(), replica::SNAPSHOT_MAGIC),
            (
                1,
                b"FSC2FSR2FSQ1FSV1FSO1FSP1FSG1FSF1".to_vec(),
                *b"FSREPL02"
            )
        );
    }
}
