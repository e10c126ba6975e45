//! # flashsale
//!
//! An in-process, high-throughput flash-sale order matcher. Commerce servers hand it every
//! buy intent; it answers each, within microseconds, with a confirmed order (units held for
//! the buyer) or a named rejection, selling exactly the stock there is.
//!
//! ## Architecture
//!
//! ```text
//! request threads ──submit──▶ Producer ──SPSC ring──▶ shard worker (1 thread, owns its SKUs)
//!        ▲                     │ validate, stamp,          │ ShardCore::apply: window,
//!        │                     │ sold-out gate             │ idempotency, limits, stock
//!        └──── poll ◀──────── completion ring ◀────────────┤
//!                                                          ├─▶ OrderSink (confirmed orders)
//!                                                          └─▶ counters, HDR histogram
//! ```
//!
//! - [`core`]: the **decision core**, [`ShardCore`], a plain deterministic state machine
//!   (`(state, command) -> outcome`) with no threads, atomics or clock. Model tests, fuzzers
//!   and replay drive it directly.
//! - [`ring`]: the bounded lock-free SPSC ring, closable by its reader, that carries intents
//!   to shards and completions back.
//! - [`Engine`] / [`Producer`]: the **concurrent shell**. One worker thread per shard is the
//!   single writer of that shard's core; each [`Producer`] (one per submitting thread) owns
//!   a ring to every shard and one back. The producer rejects malformed intents and, via
//!   the sold-out gate, intents for SKUs already sold out, before they touch a ring.
//! - `sync`: the one facade through which concurrent code reaches atomics, cells, locks and
//!   threads, so that `--cfg loom` model-checks the production code.
//! - [`report`]: counts, per-SKU levels, latency percentiles.
//! - `reference` (feature `reference`): the reference model, a plain sequential statement
//!   of the shard rules that tests and fuzzers check [`ShardCore`] against; and
//!   `workload`, the one seeded generator behind the simulator's presses, the benches'
//!   intents and the tests' random command mixes.
//!
//! - [`journal`], [`storage`]: the journal's format, and the seam between it and the disk;
//!   the engine's durability (group commit, snapshots, recovery) sits in the shell.
//! - [`client`]: [`AsyncClient`], a cloneable handle whose `buy` is a future.
//! - [`cluster`]: a partition's state rebuilt from a replicated log ([`cluster::Replica`])
//!   and the log's message format, for running a sale past one machine.
//!
//! Dependencies point one way: the shell depends on the core, never the reverse; no module
//! imports from one that imports it.
//!
//! ## Glossary: what happened to an intent
//!
//! | type | who makes it | what it says |
//! |---|---|---|
//! | [`Outcome`] | the core (or the producer, for what it answers at once) | the decision: [`Outcome::Confirmed`] with its [`Order`], or [`Outcome::Rejected`] with its [`RejectReason`] |
//! | [`Applied`] | [`ShardCore::apply`] | what one command did: a buy decided (its `Outcome`), a buy that waits (pooled or on a waitlist), a control command done or refused |
//! | [`Deferred`] | [`ShardCore::take_deferred`] | the outcome of a buy that waited, decided later by another command, with the sequence of the command that brought it |
//! | [`Submitted`] | [`Producer::submit`] | the intent was queued (its [`Ticket`]) or answered at once (its `Outcome`) |
//! | [`Completion`] | [`Producer::poll`] | a queued intent's outcome, with the intent and its `Ticket` |
//! | `Reply` (internal) | a shard worker, on a completion ring | a `Completion`, or a note that the intent waits and its outcome will come on the lane's deferred queue |
//!
//! ## Example
//!
//! ```
//! use flashsale::{Catalog, Engine, Intent, Outcome, SkuId, SkuSpec, UserId};
//!
//! let catalog = Catalog::builder()
//!     .sku(SkuSpec::new(SkuId(1), 2).limit(1).labels("trainer", "42 black"))
//!     .build()?;
//! let engine = Engine::builder(catalog).start()?;
//! let mut producer = engine.producer();
//! let mut confirmed = 0;
//! for user in 0..5 {
//!     let intent = Intent { user: UserId(user), client_key: 1, sku: SkuId(1), quantity: 1 };
//!     if let Outcome::Confirmed(_) = producer.buy(intent)? {
//!         confirmed += 1;
//!     }
//! }
//! assert_eq!(confirmed, 2); // exactly the stock, never more
//! let report = engine.shutdown();
//! assert_eq!(report.confirmed_units, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

pub mod catalog;
pub mod clock;
pub mod cluster;
pub mod core;
mod engine;
mod hash;
pub mod journal;
mod prefetch;
#[cfg(feature = "reference")]
pub mod reference;
pub mod report;
pub mod ring;
pub mod storage;
mod sync;
mod types;
mod varint;
#[cfg(feature = "reference")]
pub mod workload;

pub use catalog::{
    Catalog, CatalogBuilder, CatalogError, GroupSpec, POOL_CAPACITY_DEFAULT, POOL_SLICE_DEFAULT,
    Placement, PlacementError, Policy, SaleWindow, SkuSpec,
};
pub use clock::ManualClock;
pub use core::{
    Applied, Command, Deferred, LiveSale, OrderEvent, OrderEventKind, OrderStatus, OrderView,
    PoolLevels, ShardCore, SkuLevels,
};
pub use engine::client::{self, AsyncClient, Buy};
pub use engine::{
    Control, Engine, EngineBuilder, EngineError, JournalConfig, LiveCounts, OrderSink,
    PassedOverSnapshot, Producer, RecoveredShard, ShardFailure, SnapshotPassedOver, SubmitError,
    Submitted, WaitStrategy,
};
pub use report::{LatencySummary, Report};
pub use types::{
    Completion, ControlError, GroupId, Intent, Order, OrderId, Outcome, RejectReason, ShardId,
    SkuId, Ticket, UserId,
};

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The code blocks of the book in `docs/`, compiled and run as doc tests too.
#[cfg(doctest)]
pub mod docs_doctests {
    #[doc = include_str!("../docs/async.md")]
    pub struct Async;
    #[doc = include_str!("../docs/fairness.md")]
    pub struct Fairness;
    #[doc = include_str!("../docs/durability.md")]
    pub struct Durability;
    #[doc = include_str!("../docs/http.md")]
    pub struct Http;
    #[doc = include_str!("../docs/simulator.md")]
    pub struct Simulator;
    #[doc = include_str!("../docs/architecture.md")]
    pub struct Architecture;
    #[doc = include_str!("../docs/verification.md")]
    pub struct Verification;
    #[doc = include_str!("../docs/benchmarks.md")]
    pub struct Benchmarks;
}

/// Internals the loom models in `tests/loom.rs` drive directly. Only built under
/// `--cfg loom`; not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_internals {
    pub use crate::engine::PRODUCER_SLOTS;
    pub use crate::engine::gate::SoldOutGate;
    pub use crate::engine::shared::Counters;
    pub use crate::engine::shared::ProducerCounters;
    pub use crate::report::COUNTER_SLOTS;
}
