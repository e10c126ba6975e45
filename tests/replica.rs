//! A partition replica fed a log: its answers against the reference model fed the same
//! commands, its snapshot plus the log's tail against the whole log, and every way an
//! entry or a snapshot can be wrong.

mod replica_log;

use flashsale::cluster::wire::{BatchWriter, Buy};
use flashsale::cluster::{Answer, Gap, Replica, ReplicaSnapshotError, Reply, Step};
use flashsale::workload::Rng;
use flashsale::{Applied, Intent, Placement, ShardId, SkuId, UserId};
use replica_log::{Entry, MAX_QUANTITY, catalog, expected, log};

fn replay(replica: &mut Replica, log: &[Entry], from: usize, replies: &mut Vec<Reply>) {
    for (index, entry) in log.iter().enumerate().skip(from) {
        let step = replica
            .apply(index as u64 + 1, entry.stamp_ns, &entry.payload, replies)
            .unwrap();
        assert_ne!(step, Step::AlreadyApplied);
    }
}

#[test]
fn a_replica_answers_what_the_reference_model_decides() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let seeds = if cfg!(miri) { 2 } else { 300 };
    let (mut deferred, mut refused) = (0, 0);
    for seed in 0..seeds {
        let log = log(seed, 400);
        let mut replica = Replica::new(&catalog, &placement, ShardId(0), MAX_QUANTITY);
        let mut replies = Vec::new();
        for (index, entry) in log.iter().enumerate() {
            let step = replica
                .apply(
                    index as u64 + 1,
                    entry.stamp_ns,
                    &entry.payload,
                    &mut replies,
                )
                .unwrap();
            refused += usize::from(matches!(step, Step::Refused(_)));
        }
        deferred += replies
            .iter()
            .filter(|reply| matches!(reply.answer, Answer::Deferred(_)))
            .count();
        assert_eq!(replies, expected(&catalog, &log), "seed {seed}");
        assert_eq!(replica.applied(), log.len() as u64);
        // The gate heard of every confirmation, waited-for ones too, and its filter holds
        // every key the core would answer `Duplicate` for.
        let confirmations = replies
            .iter()
            .filter(|reply| {
                matches!(
                    reply.answer,
                    Answer::Applied(Applied::Decided(flashsale::Outcome::Confirmed(_)))
                        | Answer::Deferred(flashsale::Outcome::Confirmed(_))
                )
            })
            .count();
        let gate = replica.take_gate();
        assert_eq!((gate.from, gate.to), (0, log.len() as u64));
        assert_eq!(gate.keys.len(), confirmations, "seed {seed}");
        let heard: std::collections::HashSet<_> = gate.keys.iter().copied().collect();
        for (user, key) in replica.core().confirmed_keys() {
            assert!(
                heard.contains(&(user, key)),
                "seed {seed}: key {user}/{key}"
            );
            assert!(replica.filter().may_contain(user, key));
        }
        let next = replica.take_gate();
        assert_eq!((next.from, next.keys.len()), (log.len() as u64, 0));
    }
    // The logs reach what they are for.
    assert!(deferred > seeds as usize, "{deferred} deferred answers");
    assert!(refused > seeds as usize, "{refused} damaged entries");
}

#[test]
fn a_snapshot_plus_the_tail_is_the_whole_log() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let seeds = if cfg!(miri) { 1 } else { 60 };
    for seed in 0..seeds {
        let log = log(1_000 + seed, 300);
        // Every other seed with room for 8 orders only (16 slots), so that the order book
        // grows, before and after the snapshot.
        let room = (seed % 2 == 1).then_some(8);
        let replica =
            || Replica::with_order_capacity(&catalog, &placement, ShardId(0), MAX_QUANTITY, room);
        let mut whole = replica();
        let mut replies_whole = Vec::new();
        replay(&mut whole, &log, 0, &mut replies_whole);

        let cut = (seed as usize * 37) % log.len();
        let mut first = replica();
        let mut replies = Vec::new();
        replay(&mut first, &log[..cut], 0, &mut replies);
        let snapshot = first.snapshot();
        assert_eq!(Replica::snapshot_position(&snapshot), Some(cut as u64));
        let mut resumed =
            Replica::restore_with_order_capacity(&catalog, &placement, ShardId(0), room, &snapshot)
                .unwrap();
        assert_eq!(resumed.snapshot(), snapshot);
        replay(&mut resumed, &log, cut, &mut replies);
        assert_eq!(replies, replies_whole, "seed {seed}, cut at {cut}");
        assert_eq!(resumed.snapshot(), whole.snapshot(), "seed {seed}");
        assert_eq!(resumed.waiting(), whole.waiting());
        if room.is_some() {
            let orders = whole.core().orders_confirmed() as usize;
            assert!(
                orders > 8,
                "seed {seed}: {orders} orders do not outgrow the room"
            );
            assert!(whole.core().order_room() >= orders);
        }
        // The restored filter is rebuilt from the order book.
        for (user, key) in whole.core().confirmed_keys() {
            assert!(resumed.filter().may_contain(user, key), "seed {seed}");
        }
    }
}

#[test]
fn redeliveries_are_ignored_and_holes_refused() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let log = log(5, 20);
    let mut replica = Replica::new(&catalog, &placement, ShardId(0), MAX_QUANTITY);
    let mut replies = Vec::new();
    assert_eq!(
        replica.apply(2, 0, &log[1].payload, &mut replies),
        Err(Gap { applied: 0, got: 2 })
    );
    replay(&mut replica, &log[..10], 0, &mut replies);
    let before = (replica.snapshot(), replies.len());
    for position in 1..=10 {
        let entry = &log[position as usize - 1];
        assert_eq!(
            replica.apply(position, entry.stamp_ns, &entry.payload, &mut replies),
            Ok(Step::AlreadyApplied)
        );
    }
    assert_eq!(
        replica.apply(12, 0, &log[11].payload, &mut replies),
        Err(Gap {
            applied: 10,
            got: 12
        })
    );
    assert_eq!((replica.snapshot(), replies.len()), before);
}

#[test]
fn a_damaged_snapshot_or_another_partitions_is_refused() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 2).unwrap();
    let mut replica = Replica::new(&catalog, &placement, ShardId(1), MAX_QUANTITY);
    let mut batch = BatchWriter::new(1);
    for sku in 1..=5 {
        batch.push(&Buy {
            request: u64::from(sku),
            intent: Intent {
                user: UserId(1),
                client_key: u64::from(sku),
                sku: SkuId(sku),
                quantity: 1,
            },
            wait: true,
        });
    }
    let mut replies = Vec::new();
    replica.apply(1, 10, &batch.finish(), &mut replies).unwrap();
    // The SKUs of partition 0 reach this core and are refused by it as unknown.
    let unknown = replies
        .iter()
        .filter(|reply| {
            matches!(reply.answer, Answer::Applied(Applied::Decided(outcome))
                if outcome.reason() == Some(flashsale::RejectReason::UnknownSku))
        })
        .count();
    assert_eq!(unknown, placement.skus_of(ShardId(0)).len(), "{replies:?}");
    let snapshot = replica.snapshot();
    assert_eq!(
        Replica::restore(&catalog, &placement, ShardId(0), &snapshot).unwrap_err(),
        ReplicaSnapshotError::WrongPartition(1)
    );
    for cut in (0..snapshot.len()).step_by(7) {
        assert!(Replica::restore(&catalog, &placement, ShardId(1), &snapshot[..cut]).is_err());
    }
    let mut rng = Rng::new(3);
    for _ in 0..if cfg!(miri) { 3 } else { 300 } {
        let mut damaged = snapshot.clone();
        let at = rng.below(damaged.len() as u64) as usize;
        damaged[at] ^= 1 << rng.below(8);
        assert!(Replica::restore(&catalog, &placement, ShardId(1), &damaged).is_err());
    }
}

#[test]
fn a_page_of_skus_is_at_most_what_one_message_can_carry() {
    use flashsale::cluster::view::{Query, SALES_AT_MAX, decode_view};
    use flashsale::{Catalog, SkuSpec};
    let many = SALES_AT_MAX + 10;
    let catalog = Catalog::builder()
        .skus((1..=many).map(|id| SkuSpec::new(SkuId(id), 5)))
        .build()
        .unwrap();
    let placement = Placement::new(&catalog, 1).unwrap();
    let replica = Replica::new(&catalog, &placement, ShardId(0), MAX_QUANTITY);
    let page = |first, count| {
        let view = decode_view(&replica.answer(0, Query::SalesAt { first, count })).unwrap();
        view.sales
            .iter()
            .map(|sale| sale.levels.id.0)
            .collect::<Vec<_>>()
    };
    // Whoever asks for more, a leader answers one message's worth.
    assert_eq!(page(0, u32::MAX), (1..=SALES_AT_MAX).collect::<Vec<_>>());
    assert_eq!(page(3, SALES_AT_MAX + 1).len(), SALES_AT_MAX as usize);
    // The rest of the list, then nothing past its end.
    assert_eq!(
        page(SALES_AT_MAX, u32::MAX),
        (SALES_AT_MAX + 1..=many).collect::<Vec<_>>()
    );
    assert_eq!(page(many, 1), Vec::<u32>::new());
    assert_eq!(page(u32::MAX, u32::MAX), Vec::<u32>::new());
}

/// A tripwire for replicas of two builds in one sale. Every node of a sale applies the
/// same log and must decide it the same way: a build that decides any entry otherwise
/// (a changed rule, a fix), or answers or snapshots it in other bytes, may not join a sale
/// of the builds before it, so it must raise `cluster::PROTOCOL`, which the sale's shape
/// check compares. This replays fixed logs and digests every reply as the leader
/// publishes it, and each final snapshot. When the digest changes: if the decisions or
/// formats changed, raise the protocol and record both here; if only this test's log
/// generator changed, record the new digest alone.
#[test]
fn what_a_replica_decides_is_fixed_by_the_protocol() {
    use flashsale::cluster::{PROTOCOL, wire};
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    // FNV-1a, 64 bits: stable across builds and platforms.
    let mut digest = 0xcbf2_9ce4_8422_2325u64;
    let mut fold = |bytes: &[u8]| {
        for &byte in bytes {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut published = Vec::new();
    for seed in 0..40 {
        let log = log(seed, 400);
        let mut replica = Replica::new(&catalog, &placement, ShardId(0), MAX_QUANTITY);
        for (index, entry) in log.iter().enumerate() {
            let position = index as u64 + 1;
            let mut replies = Vec::new();
            replica
                .apply(position, entry.stamp_ns, &entry.payload, &mut replies)
                .unwrap();
            for reply in &replies {
                fold(&reply.gateway.to_le_bytes());
            }
            let answers = replies.iter().map(|reply| (reply.request, reply.answer));
            wire::encode_replies(0, position, answers, &mut published);
            fold(&published);
        }
        fold(&replica.snapshot());
    }
    assert_eq!(
        (PROTOCOL, digest),
        (1, 0x73d2_ad07_8a65_1d28),
        "digest {digest:#018x}"
    );
}
