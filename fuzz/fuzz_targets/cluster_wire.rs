//! Every message a cluster's processes read off the network, as arbitrary bytes: a log
//! entry (batch of buys, operator command, tick), a batch of replies, a read's query, a
//! partition's view, an order's answer, a pools answer, a confirmed-key filter and a gate
//! update. Each decoder gives a named error or a value, never a panic, and a value it
//! gives encodes back to bytes that decode to the same value.
//!
//! The input picks the kind and the bytes: either its own (with the kind's magic put in
//! front if it asks, so that the fuzzer need not find it), or a real message of that kind,
//! from a replica fed a log of `tests/replica_log`, with bytes changed and perhaps cut
//! short. Either way it may ask for the checksum to be written over the last four bytes,
//! so that changes reach the fields behind it rather than stopping at the checksum.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use arbitrary::Arbitrary;
use common::{change_byte, replies_round_trip, reseal};
use flashsale::cluster::gate::{FILTER_MAGIC, GATE_MAGIC, GateUpdate, KeyFilter};
use flashsale::cluster::view::Query;
use flashsale::cluster::view::{self, ORDER_MAGIC, POOLS_MAGIC, QUERY_MAGIC, VIEW_MAGIC};
use flashsale::cluster::wire::{self, BatchWriter, Body, MAGIC, REPLIES_MAGIC};
use flashsale::cluster::{Replica, Reply};
use flashsale::{OrderId, Placement, ShardId};
use libfuzzer_sys::fuzz_target;

mod common;

#[allow(
    dead_code,
    reason = "the reference model's answers are replica_log's part"
)]
#[path = "../../tests/replica_log/mod.rs"]
mod replica_log;

#[derive(Debug, Arbitrary)]
struct Input {
    kind: u8,
    reseal: bool,
    source: Source,
}

#[derive(Debug, Arbitrary)]
enum Source {
    /// The input's own bytes, behind the kind's magic if `framed`.
    Raw { framed: bool, bytes: Vec<u8> },
    /// A real message: from a replica fed the first `entries` of the log of `seed`, the
    /// one `pick` chooses, with bytes changed (offset, how, by) and cut to `cut` bytes.
    Real {
        seed: u64,
        entries: u8,
        pick: u16,
        changes: Vec<(u16, u8, u8)>,
        cut: Option<u16>,
    },
}

/// Log entries a real message's replica applies, at most.
const ENTRIES: usize = 24;

/// A real message of `kind` from a replica fed a short log.
fn real(kind: u8, seed: u64, entries: u8, pick: u16) -> Vec<u8> {
    let catalog = replica_log::catalog();
    let placement = Placement::new(&catalog, 1).expect("one shard");
    let log = replica_log::log(seed, 1 + usize::from(entries) % ENTRIES);
    let mut replica = Replica::new(&catalog, &placement, ShardId(0), replica_log::MAX_QUANTITY);
    let mut replies: Vec<(u64, Vec<Reply>)> = Vec::new();
    for (index, entry) in log.iter().enumerate() {
        let mut answered = Vec::new();
        let position = index as u64 + 1;
        let _ = replica.apply(position, entry.stamp_ns, &entry.payload, &mut answered);
        if !answered.is_empty() {
            replies.push((position, answered));
        }
    }
    let pick = usize::from(pick);
    let order = OrderId::new(ShardId(0), (pick % 8) as u64);
    match kind {
        0 => log[pick % log.len()].payload.clone(),
        1 => {
            let mut bytes = Vec::new();
            let (position, answered) = replies
                .get(pick % replies.len().max(1))
                .map_or((0, &[][..]), |(position, answered)| {
                    (*position, &answered[..])
                });
            let gateway = answered.first().map_or(0, |reply| reply.gateway);
            wire::encode_replies(
                0,
                position,
                answered
                    .iter()
                    .filter(|reply| reply.gateway == gateway)
                    .map(|reply| (reply.request, reply.answer))
                    .collect::<Vec<_>>()
                    .into_iter(),
                &mut bytes,
            );
            bytes
        }
        2 => view::encode_query(match pick % 5 {
            0 => Query::Sales,
            1 => Query::Order(order),
            2 => Query::Filter,
            3 => Query::Pools,
            _ => Query::SalesAt {
                first: (pick / 5 % 4) as u32,
                count: (pick / 20) as u32,
            },
        }),
        3 if pick % 2 == 0 => replica.answer(0, Query::Sales),
        3 => replica.answer(
            0,
            Query::SalesAt {
                first: (pick / 2 % 4) as u32,
                count: (pick / 8 % 5) as u32,
            },
        ),
        4 => replica.answer(0, Query::Order(order)),
        5 => replica.answer(0, Query::Pools),
        6 => replica.answer(0, Query::Filter),
        _ => replica.take_gate().encode(),
    }
}

/// A log entry decodes to the same sender and body after it is encoded again.
fn log_entry(bytes: &[u8]) {
    let Ok(message) = wire::decode(bytes) else {
        return;
    };
    let again = match message.body {
        Body::Buys(buys) => {
            let mut batch = BatchWriter::new(message.sender);
            for buy in buys.iter() {
                batch.push(&buy);
            }
            let again = batch.finish();
            let Body::Buys(decoded) = wire::decode(&again).expect("re-encoded").body else {
                panic!("a batch re-encoded is not a batch");
            };
            assert!(decoded.iter().eq(buys.iter()));
            again
        }
        Body::Control { request, control } => {
            wire::encode_control(message.sender, request, &control)
        }
        Body::Tick => wire::encode_tick(message.sender),
    };
    let decoded = wire::decode(&again).expect("re-encoded");
    assert_eq!(decoded.sender, message.sender);
    match (decoded.body, message.body) {
        (Body::Buys(a), Body::Buys(b)) => assert!(a.iter().eq(b.iter())),
        (a, b) => assert_eq!(a, b),
    }
}

fuzz_target!(|input: Input| {
    let magic = match input.kind % 8 {
        0 => MAGIC,
        1 => REPLIES_MAGIC,
        2 => QUERY_MAGIC,
        3 => VIEW_MAGIC,
        4 => ORDER_MAGIC,
        5 => POOLS_MAGIC,
        6 => FILTER_MAGIC,
        _ => GATE_MAGIC,
    };
    let kind = input.kind % 8;
    let mut bytes = match input.source {
        Source::Raw { framed, bytes } => {
            let mut framed_bytes = Vec::with_capacity(bytes.len() + 4);
            if framed {
                framed_bytes.extend_from_slice(&magic);
            }
            framed_bytes.extend_from_slice(&bytes);
            framed_bytes
        }
        Source::Real {
            seed,
            entries,
            pick,
            changes,
            cut,
        } => {
            let mut bytes = real(kind, seed, entries, pick);
            let unchanged = bytes.clone();
            for (offset, how, by) in changes {
                let at = usize::from(offset) % bytes.len();
                change_byte(&mut bytes[at], how, by);
            }
            if let Some(cut) = cut {
                bytes.truncate(usize::from(cut) % (bytes.len() + 1));
            }
            if bytes == unchanged {
                // A real message, unchanged, decodes.
                let decoded = match kind {
                    0 => wire::decode(&bytes).map(drop),
                    1 => wire::decode_replies(&bytes).map(drop),
                    2 => view::decode_query(&bytes).map(drop),
                    3 => view::decode_view(&bytes).map(drop),
                    4 => view::decode_order(&bytes).map(drop),
                    5 => view::decode_pools(&bytes).map(drop),
                    6 => KeyFilter::decode(&bytes).map(drop),
                    _ => GateUpdate::decode(&bytes).map(drop),
                };
                // (The log's own damaged entries aside: it writes some on purpose.)
                assert!(decoded.is_ok() || kind == 0, "kind {kind}: {decoded:?}");
            }
            bytes
        }
    };
    if input.reseal {
        reseal(&mut bytes);
    }
    match kind {
        0 => log_entry(&bytes),
        1 => replies_round_trip(&bytes),
        2 => {
            if let Ok(query) = view::decode_query(&bytes) {
                assert_eq!(view::decode_query(&view::encode_query(query)), Ok(query));
            }
        }
        3 => {
            if let Ok(decoded) = view::decode_view(&bytes) {
                assert_eq!(view::decode_view(&view::encode_view(&decoded)), Ok(decoded));
            }
        }
        4 => {
            if let Ok(answer) = view::decode_order(&bytes) {
                assert_eq!(view::decode_order(&view::encode_order(&answer)), Ok(answer));
            }
        }
        5 => {
            if let Ok(answer) = view::decode_pools(&bytes) {
                assert_eq!(view::decode_pools(&view::encode_pools(&answer)), Ok(answer));
            }
        }
        6 => {
            if let Ok((partition, applied, filter)) = KeyFilter::decode(&bytes) {
                // The filter answers for any key without reading out of its words.
                let _ = filter.may_contain(bytes.len() as u64, 7);
                assert_eq!(
                    KeyFilter::decode(&filter.encode(partition, applied)),
                    Ok((partition, applied, filter))
                );
            }
        }
        _ => {
            if let Ok(update) = GateUpdate::decode(&bytes) {
                assert_eq!(GateUpdate::decode(&update.encode()), Ok(update));
            }
        }
    }
});
