//! Replay from the journal: every command a shard core applies is journaled in its order;
//! reading the file back and applying it to a fresh core gives the same result for every
//! command, the same deferred outcomes and the same final state (the determinism
//! invariant, checked through the on-disk format).

use std::path::PathBuf;

use flashsale::core::SnapshotError;
use flashsale::journal::{self, JournalWriter, Tail};
use flashsale::{
    Applied, Catalog, Command, Deferred, GroupId, GroupSpec, Intent, OrderId, Outcome, Placement,
    Policy, SaleWindow, ShardCore, ShardId, SkuId, SkuSpec, UserId,
};

fn catalog() -> Catalog {
    Catalog::builder()
        .group_spec(GroupSpec::new(GroupId(1), 2).policy(Policy::OpeningDraw {
            window_ns: 5_000,
            seed: 11,
        }))
        .sku(
            SkuSpec::new(SkuId(1), 30)
                .group(GroupId(1))
                .hold(20_000)
                .waitlist(8)
                .window(SaleWindow {
                    opens_at_ns: 1_000,
                    closes_at_ns: 400_000,
                }),
        )
        .sku(SkuSpec::new(SkuId(2), 20).group(GroupId(1)).hold(50_000))
        .sku(SkuSpec::new(SkuId(3), 10).limit(1).waitlist(4))
        .build()
        .unwrap()
}

/// A deterministic mix of every command (the workload generator), with payments and cancellations of
/// orders confirmed so far.
fn commands(
    core: &mut ShardCore,
    count: usize,
    path: &std::path::Path,
) -> Vec<(Applied, Vec<Deferred>)> {
    let (mut writer, _) = JournalWriter::open(path, ShardId(0)).unwrap();
    let mut rng = flashsale::workload::Rng::new(1);
    let mut next = move || rng.next_u64();
    let mut orders: Vec<OrderId> = Vec::new();
    let mut results = Vec::new();
    for step in 0..count {
        let now = step as u64 * 97;
        let roll = next() % 100;
        let sku = SkuId(1 + (next() % 3) as u32);
        let intent = Intent {
            user: UserId(next() % 200),
            client_key: next() % 3,
            sku,
            quantity: 1 + (next() % 2) as u32,
        };
        let mut order = || orders.get(next() as usize % orders.len().max(1)).copied();
        let command = match roll {
            0..=54 => Command::Buy {
                intent,
                arrival_ns: now,
            },
            55..=69 => Command::BuyOrWait {
                intent,
                arrival_ns: now,
            },
            70..=79 => Command::Pay {
                order: order().unwrap_or(OrderId(9)),
                at_ns: now,
            },
            80..=85 => Command::Cancel {
                order: order().unwrap_or(OrderId(9)),
                at_ns: now,
            },
            86..=91 => Command::Tick { now_ns: now },
            92..=95 => Command::Restock {
                sku,
                units: 2,
                at_ns: now,
            },
            96..=97 => Command::Reduce {
                sku,
                units: 1,
                at_ns: now,
            },
            98 => Command::SetWindow {
                sku,
                window: SaleWindow {
                    opens_at_ns: now,
                    closes_at_ns: now + 100_000,
                },
                at_ns: now,
            },
            _ => Command::CloseSale { sku, at_ns: now },
        };
        writer.append(core.commands_applied(), &command);
        let applied = core.apply(&command);
        let deferred: Vec<Deferred> = core.take_deferred().collect();
        for outcome in deferred.iter().map(|d| d.outcome).chain(applied.outcome()) {
            if let Outcome::Confirmed(order) = outcome {
                orders.push(order.id);
            }
        }
        results.push((applied, deferred));
        // Group commit every 64 commands, as a shard would per batch.
        if step % 64 == 63 {
            writer.commit(false).unwrap();
        }
    }
    writer.commit(true).unwrap();
    results
}

/// Applies journaled commands to `core`, dropping their deferred outcomes.
fn apply_all(core: &mut ShardCore, records: &[(u64, Command)]) {
    for (_, command) in records {
        core.apply(command);
        core.take_deferred().for_each(drop);
    }
}

fn state(core: &ShardCore) -> String {
    let mut out = format!(
        "{:?}\n{:?}\n{} {} {}\n",
        core.levels().collect::<Vec<_>>(),
        core.pools().collect::<Vec<_>>(),
        core.commands_applied(),
        core.orders_confirmed(),
        core.now_ns()
    );
    for user in 0..200 {
        for sku in 1..=3 {
            out += &format!(
                "{} {:?}",
                core.held_by(user, SkuId(sku)),
                (0..3)
                    .map(|key| core.order_for_key(user, key, SkuId(sku)))
                    .collect::<Vec<_>>()
            );
        }
    }
    out
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flashsale-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("shard-00000.fsj")
}

#[test]
fn replaying_the_journal_rebuilds_the_shard_exactly() {
    let catalog = catalog();
    let path = scratch("replay");
    let mut original = ShardCore::whole(&catalog);
    let results = commands(&mut original, 5_000, &path);
    let scanned = journal::read(&path).unwrap();
    assert_eq!(scanned.tail, Tail::Clean);
    assert_eq!(scanned.records.len(), 5_000);
    let mut replayed = ShardCore::whole(&catalog);
    for ((sequence, command), (applied, deferred)) in scanned.records.iter().zip(&results) {
        assert_eq!(*sequence, replayed.commands_applied());
        assert_eq!(&replayed.apply(command), applied, "command {sequence}");
        let again: Vec<Deferred> = replayed.take_deferred().collect();
        assert_eq!(&again, deferred, "deferred outcomes of command {sequence}");
    }
    assert_eq!(state(&replayed), state(&original));
    // The mix exercised what it is meant to.
    let levels: Vec<_> = original.levels().collect();
    assert!(
        levels
            .iter()
            .any(|l| l.sold > 0 && l.expired > 0 && l.cancelled > 0)
    );
    assert!(original.pools().all(|pool| pool.served && pool.tickets > 0));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A snapshot restores the core exactly: taken at several points of a run, each restored
/// core then gives the same results as the original for the rest of the commands, and the
/// same final state. A damaged or foreign snapshot is refused, never misread.
#[test]
fn a_snapshot_restores_the_core_exactly() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let path = scratch("snapshot");
    let mut original = ShardCore::whole(&catalog);
    commands(&mut original, 3_000, &path);
    let records = journal::read(&path).unwrap().records;
    for cut in [0, 1, 150, 1_234, 2_999, 3_000] {
        let mut before = ShardCore::whole(&catalog);
        apply_all(&mut before, &records[..cut]);
        let bytes = before.snapshot();
        assert_eq!(ShardCore::snapshot_sequence(&bytes), Some(cut as u64));
        let mut restored =
            ShardCore::restore(&catalog, &placement, ShardId(0), None, &bytes).unwrap();
        assert_eq!(state(&restored), state(&before), "restored at {cut}");
        assert_eq!(
            restored.snapshot(),
            bytes,
            "a snapshot of the restored core is the same bytes"
        );
        for (sequence, command) in &records[cut..] {
            assert_eq!(
                restored.apply(command),
                before.apply(command),
                "command {sequence}"
            );
            assert_eq!(
                restored.take_deferred().collect::<Vec<_>>(),
                before.take_deferred().collect::<Vec<_>>()
            );
        }
        assert_eq!(state(&restored), state(&original));
        // Damage anywhere is caught by the checksum (or the header).
        let mut damaged = bytes.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        assert!(ShardCore::restore(&catalog, &placement, ShardId(0), None, &damaged).is_err());
        assert!(
            ShardCore::restore(
                &catalog,
                &placement,
                ShardId(0),
                None,
                &bytes[..bytes.len() - 1]
            )
            .is_err()
        );
    }
    let other = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 5))
        .build()
        .unwrap();
    let bytes = original.snapshot();
    assert!(
        ShardCore::restore(
            &other,
            &Placement::new(&other, 1).unwrap(),
            ShardId(0),
            None,
            &bytes
        )
        .is_err()
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A snapshot whose checksum holds but whose contents were changed (a writer's bug, or
/// damage the checksum missed) is refused with the reason named, or restores a core that
/// agrees with itself: the rest of the commands then run on it without a panic (these
/// tests build with debug assertions and overflow checks), its units conserved after each.
/// The changes: one to three bytes of the payload flipped, set to 0 or 0xff, or one more,
/// and the checksum written again over them.
#[test]
fn a_sealed_snapshot_with_changed_contents_is_refused_by_name_or_runs() {
    // The header's 36 bytes end with the payload's checksum.
    const HEADER: usize = 36;
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let path = scratch("sealed");
    let mut original = ShardCore::whole(&catalog);
    commands(&mut original, 2_000, &path);
    let records = journal::read(&path).unwrap().records;
    let mut rng = flashsale::workload::Rng::new(7);
    let mut refused = std::collections::BTreeMap::new();
    let mut ran = 0;
    for cut in [300, 1_500] {
        let mut before = ShardCore::whole(&catalog);
        apply_all(&mut before, &records[..cut]);
        let bytes = before.snapshot();
        for _ in 0..1_500 {
            let mut changed = bytes.clone();
            for _ in 0..1 + rng.next_u64() % 3 {
                let at = HEADER + rng.next_u64() as usize % (bytes.len() - HEADER);
                changed[at] = match rng.next_u64() % 4 {
                    0 => changed[at] ^ 1 << (rng.next_u64() % 8),
                    1 => 0,
                    2 => 0xff,
                    _ => changed[at].wrapping_add(1),
                };
            }
            let checksum = crc32fast::hash(&changed[HEADER..]);
            changed[HEADER - 4..HEADER].copy_from_slice(&checksum.to_le_bytes());
            match ShardCore::restore(&catalog, &placement, ShardId(0), None, &changed) {
                Err(SnapshotError::Mismatch(reason)) => *refused.entry(reason).or_insert(0) += 1,
                Err(other) => panic!("a sealed payload refused for its header: {other}"),
                Ok(mut core) => {
                    ran += 1;
                    for (_, command) in &records[cut..] {
                        core.apply(command);
                        core.take_deferred().for_each(drop);
                        for level in core.levels() {
                            assert_eq!(level.available + level.held + level.sold, level.stock);
                        }
                    }
                }
            }
        }
    }
    // Each check caught changes (the reasons as the errors name them), and changes to what
    // no check can judge (a window, a clock, a key) restored.
    for reason in [
        "a SKU's units",
        "a SKU's units against its orders",
        "a held order without its deadline",
        "a further key without its buyer's marked holding",
        "a holding's units against its orders",
        "a holding out of place or twice",
        "a further key out of place or twice",
        "order book entries against orders",
        "a buyer the buyers' filter does not have",
    ] {
        assert!(refused.contains_key(reason), "{reason}: {refused:?}");
    }
    assert!(ran > 0);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// A snapshot taken with another room for orders than the restoring shard makes restores
/// into a table of the restoring shard's room (a larger book is not allocated because the
/// snapshot says so; a smaller one does not keep a shard restarted with more room short of
/// it), and runs on as the original does.
#[test]
fn a_snapshot_with_another_room_restores_into_the_room_made() {
    let catalog = catalog();
    let placement = Placement::new(&catalog, 1).unwrap();
    let path = scratch("room");
    let mut original = ShardCore::whole(&catalog);
    commands(&mut original, 2_000, &path);
    let records = journal::read(&path).unwrap().records;
    let mut roomy = ShardCore::with_order_capacity(&catalog, &placement, ShardId(0), Some(1 << 16));
    let cut = 1_000;
    apply_all(&mut roomy, &records[..cut]);
    let bytes = roomy.snapshot();
    assert_eq!(roomy.order_room(), 1 << 16);
    // Restored with the default room (the stock, 60 orders), it has the room a core made
    // with the default room has after the same commands (grown for its orders); and a
    // snapshot of that core, restored with the larger room, the larger room.
    let mut default = ShardCore::whole(&catalog);
    apply_all(&mut default, &records[..cut]);
    let mut restored = ShardCore::restore(&catalog, &placement, ShardId(0), None, &bytes).unwrap();
    assert_eq!(restored.order_room(), default.order_room());
    assert!(restored.order_room() < 1 << 16);
    let again = ShardCore::restore(
        &catalog,
        &placement,
        ShardId(0),
        Some(1 << 16),
        &restored.snapshot(),
    )
    .unwrap();
    assert_eq!(again.order_room(), 1 << 16);
    assert_eq!(state(&again), state(&roomy));
    assert_eq!(state(&restored), state(&roomy));
    // Its table is the smaller one: a snapshot of it holds as many bytes (the same
    // entries) but not the same ones (the table's size, and where the entries sit).
    assert_eq!(restored.snapshot().len(), bytes.len());
    assert_ne!(restored.snapshot(), bytes);
    for (sequence, command) in &records[cut..] {
        assert_eq!(
            restored.apply(command),
            roomy.apply(command),
            "command {sequence}"
        );
        assert_eq!(
            restored.take_deferred().collect::<Vec<_>>(),
            roomy.take_deferred().collect::<Vec<_>>()
        );
    }
    assert_eq!(state(&restored), state(&original));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// An order confirmed so near the end of the engine clock that its hold would run past
/// it keeps a deadline (the clock's last instant but one), so its snapshot restores, and it
/// expires there as the reference model has it.
#[test]
fn a_hold_past_the_end_of_the_clock_keeps_a_deadline() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 5).hold(1_000))
        .build()
        .unwrap();
    let placement = Placement::new(&catalog, 1).unwrap();
    let mut core = ShardCore::whole(&catalog);
    let mut model = flashsale::reference::Model::whole(&catalog);
    let late = u64::MAX - 10;
    let intent = Intent {
        user: UserId(1),
        client_key: 1,
        sku: SkuId(1),
        quantity: 1,
    };
    let buy = Command::Buy {
        intent,
        arrival_ns: late,
    };
    let Applied::Decided(Outcome::Confirmed(order)) = core.apply(&buy) else {
        panic!("confirmed");
    };
    assert_eq!(
        model.apply(&buy),
        Applied::Decided(Outcome::Confirmed(order))
    );
    let view = core.order(order.id).unwrap();
    assert_eq!(
        view.status,
        flashsale::OrderStatus::Held {
            pay_by_ns: Some(u64::MAX - 1)
        }
    );
    let mut restored =
        ShardCore::restore(&catalog, &placement, ShardId(0), None, &core.snapshot()).unwrap();
    assert_eq!(restored.snapshot(), core.snapshot());
    for now_ns in [u64::MAX - 2, u64::MAX - 1] {
        let tick = Command::Tick { now_ns };
        let applied = core.apply(&tick);
        assert_eq!(restored.apply(&tick), applied);
        assert_eq!(model.apply(&tick), applied);
        assert_eq!(restored.levels_of(SkuId(1)), core.levels_of(SkuId(1)));
        assert_eq!(
            core.levels_of(SkuId(1)).unwrap().held,
            u32::from(now_ns < u64::MAX - 1),
            "expired at the clock's last instant but one"
        );
    }
}

#[test]
fn a_torn_tail_loses_only_the_commands_never_committed() {
    let catalog = catalog();
    let path = scratch("torn");
    let mut original = ShardCore::whole(&catalog);
    commands(&mut original, 1_000, &path);
    let whole = journal::read(&path).unwrap();
    // A crash mid-append: the file ends inside the last record, which holds one command
    // or (a batch) the last run of buys.
    let length = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - 3).unwrap();
    drop(file);
    let (writer, scanned) = JournalWriter::open(&path, ShardId(0)).unwrap();
    assert!(matches!(scanned.tail, Tail::Torn { .. }));
    let kept = scanned.records.len();
    // A batch's 255 bytes hold at most 41 buys (6 bytes each at the least).
    assert!((1_000 - 41..1_000).contains(&kept), "{kept} commands kept");
    assert_eq!(scanned.records[..], whole.records[..kept]);
    assert_eq!(writer.next_sequence(), kept as u64);
    let mut replayed = ShardCore::whole(&catalog);
    for (_, command) in &scanned.records {
        replayed.apply(command);
    }
    assert_eq!(replayed.commands_applied(), kept as u64);
    assert_eq!(
        journal::read(&path).unwrap().tail,
        Tail::Clean,
        "truncated on open"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
