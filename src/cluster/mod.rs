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
