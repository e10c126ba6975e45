//! Fairness, measured: the opening draw gives every pooled buyer the same chance whatever
//! the seed (chi-square over many seeds), pressing more often does not help, one-each-first
//! gives everyone a unit before anyone gets a second, and first come never rejects an
//! intent for stock while a later one for as much is confirmed. Seeds are fixed, so these
//! are deterministic: a failure is a real bias, not bad luck.

use flashsale::{
    Applied, Catalog, Command, Intent, Outcome, Placement, Policy, RejectReason, SaleWindow,
    ShardCore, ShardId, SkuId, SkuSpec, UserId,
};

const OPENS_NS: u64 = 1_000;
const WINDOW_NS: u64 = 500;

fn intent(user: u64, key: u64, quantity: u32) -> Intent {
    Intent {
        user: UserId(user),
        client_key: key,
        sku: SkuId(1),
        quantity,
    }
}

fn pooled_sku(stock: u32, policy: Policy) -> Catalog {
    Catalog::builder()
        .sku(
            SkuSpec::new(SkuId(1), stock)
                .limit(2)
                .policy(policy)
                .window(SaleWindow {
                    opens_at_ns: OPENS_NS,
                    closes_at_ns: u64::MAX,
                }),
        )
        .build()
        .unwrap()
}

/// Runs the presses (`(user, key, quantity, arrival)`) and a tick after the window; returns
/// each user's confirmed units.
fn serve(catalog: &Catalog, presses: &[(u64, u64, u32, u64)]) -> (Vec<u32>, Vec<Outcome>) {
    let mut core = ShardCore::whole(catalog);
    let mut immediate = Vec::new();
    for &(user, key, quantity, arrival_ns) in presses {
        match core.buy(&intent(user, key, quantity), arrival_ns) {
            Applied::Decided(outcome) => immediate.push(outcome),
            Applied::Waiting { .. } => {}
            other => panic!("a buy is decided or waits: {other:?}"),
        }
    }
    core.apply(&Command::Tick {
        now_ns: OPENS_NS + WINDOW_NS,
    });
    let users = presses.iter().map(|p| p.0).max().unwrap_or(0) as usize + 1;
    let mut units = vec![0u32; users];
    for deferred in core.take_deferred() {
        if let Outcome::Confirmed(order) = deferred.outcome {
            units[order.user.0 as usize] += order.quantity;
        }
    }
    let levels = core.levels_of(SkuId(1)).unwrap();
    assert_eq!(levels.available + levels.held, levels.stock, "conservation");
    (units, immediate)
}

/// Chi-square statistic of observed counts against a uniform expectation.
fn chi_square(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&count| (count as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn every_pooled_buyer_has_the_same_chance_across_seeds() {
    const BUYERS: u64 = 10;
    const SEEDS: u64 = 4_000;
    let mut wins = vec![0u64; BUYERS as usize];
    for seed in 0..SEEDS {
        let catalog = pooled_sku(
            1,
            Policy::OpeningDraw {
                window_ns: WINDOW_NS,
                seed,
            },
        );
        // Arrival order is the same every time: early birds first.
        let presses: Vec<_> = (0..BUYERS).map(|user| (user, 0, 1, user * 10)).collect();
        let (units, _) = serve(&catalog, &presses);
        assert_eq!(units.iter().sum::<u32>(), 1, "exactly the stock is sold");
        for (user, &got) in units.iter().enumerate() {
            wins[user] += u64::from(got);
        }
    }
    // 9 degrees of freedom: 27.88 is the 0.1% critical value.
    let statistic = chi_square(&wins);
    assert!(
        statistic < 27.88,
        "wins {wins:?} are not uniform (chi-square {statistic:.1})"
    );
}

#[test]
fn pressing_fifty_times_does_not_raise_a_buyers_chance() {
    const BUYERS: u64 = 10;
    const SEEDS: u64 = 4_000;
    let mut eager_wins = 0u64;
    let mut others_wins = 0u64;
    for seed in 0..SEEDS {
        let catalog = pooled_sku(
            1,
            Policy::OpeningDraw {
                window_ns: WINDOW_NS,
                seed,
            },
        );
        // User 0 presses 50 times (new key each time), from before the others.
        let mut presses: Vec<_> = (0..50).map(|key| (0, key, 1, key)).collect();
        presses.extend((1..BUYERS).map(|user| (user, 0, 1, 100 + user)));
        let (units, immediate) = serve(&catalog, &presses);
        assert_eq!(immediate.len(), 49, "only the first press is a ticket");
        assert!(
            immediate
                .iter()
                .all(|o| o.reason() == Some(RejectReason::AlreadyPooled))
        );
        eager_wins += u64::from(units[0]);
        others_wins += units[1..].iter().map(|&u| u64::from(u)).sum::<u64>();
    }
    // A fair draw gives the eager buyer 1 in 10: 400 of 4,000, sd 19. Allow 4 sd.
    let expected = SEEDS / BUYERS;
    assert!(
        eager_wins <= expected + 76,
        "the 50-press buyer won {eager_wins} of {SEEDS} draws (others {others_wins})"
    );
    assert!(
        eager_wins + 76 >= expected,
        "the 50-press buyer won only {eager_wins}"
    );
}

#[test]
fn one_each_first_gives_everyone_a_unit_before_anyone_a_second() {
    let policy = Policy::OneEachFirst {
        window_ns: WINDOW_NS,
    };
    // 10 buyers want 2 each; 10 units: one each.
    let presses: Vec<_> = (0..10).map(|user| (user, 0, 2, user)).collect();
    let (units, _) = serve(&pooled_sku(10, policy), &presses);
    assert_eq!(units, vec![1; 10]);
    // 15 units: everyone gets one, then the first five in arrival order a second.
    let (units, _) = serve(&pooled_sku(15, policy), &presses);
    assert_eq!(units, [vec![2; 5], vec![1; 5]].concat());
    // 4 units: the first four arrivals get one each; nobody gets two.
    let (units, _) = serve(&pooled_sku(4, policy), &presses);
    assert_eq!(units, [vec![1; 4], vec![0; 6]].concat());
    // Under first come the same presses give the first five two each.
    let first_come = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 10).limit(2))
        .build()
        .unwrap();
    let mut core = ShardCore::whole(&first_come);
    let got: Vec<u32> = presses
        .iter()
        .map(|&(user, key, quantity, at)| {
            core.buy(&intent(user, key, quantity), at)
                .order()
                .map_or(0, |order| order.quantity)
        })
        .collect();
    assert_eq!(got, [vec![2; 5], vec![0; 5]].concat());
}

#[test]
fn a_draw_is_replayable_from_its_seed() {
    let policy = Policy::OpeningDraw {
        window_ns: WINDOW_NS,
        seed: 0xC0FFEE,
    };
    let presses: Vec<_> = (0..100).map(|user| (user, 0, 1, user)).collect();
    let first = serve(&pooled_sku(7, policy), &presses);
    let again = serve(&pooled_sku(7, policy), &presses);
    assert_eq!(first, again);
    let other_seed = serve(
        &pooled_sku(
            7,
            Policy::OpeningDraw {
                window_ns: WINDOW_NS,
                seed: 1,
            },
        ),
        &presses,
    );
    assert_ne!(first.0, other_seed.0, "another seed draws other winners");
}

/// Under first come, with only buys: whenever an intent is rejected for stock, no later
/// intent for the same SKU asking as much or more is confirmed (units never come back
/// without a cancel, an expiry or a restock).
#[test]
fn first_come_never_skips_an_intent_for_a_later_one() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 37).limit(3))
        .sku(SkuSpec::new(SkuId(2), 5).limit(3))
        .build()
        .unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _round in 0..200 {
        let mut core = ShardCore::whole(&catalog);
        let mut refused_for_stock: [Option<u32>; 2] = [None, None];
        for press in 0..100u64 {
            let sku = 1 + (next() % 2) as u32;
            let quantity = 1 + (next() % 3) as u32;
            let intent = Intent {
                user: UserId(next() % 60),
                client_key: press,
                sku: SkuId(sku),
                quantity,
            };
            let applied = core.buy(&intent, press);
            let slot = &mut refused_for_stock[sku as usize - 1];
            match applied.outcome().expect("first come decides at once") {
                Outcome::Confirmed(order) => {
                    if let Some(refused) = *slot {
                        assert!(
                            order.quantity < refused,
                            "{} units confirmed after {refused} were refused for stock",
                            order.quantity
                        );
                    }
                }
                Outcome::Rejected {
                    reason: RejectReason::SoldOut | RejectReason::InsufficientStock,
                    ..
                } => *slot = Some(slot.map_or(quantity, |q| q.min(quantity))),
                Outcome::Rejected { .. } => {}
            }
        }
    }
}

/// A draw or one-each-first pool of `tickets` buyers (SKU 1, stock 700, limit 2, each
/// asking 1 or 2 units) beside a first-come SKU 2 on the same shard.
fn pooled_beside_first_come(policy: Policy, slice: u32) -> Catalog {
    let window = SaleWindow {
        opens_at_ns: OPENS_NS,
        closes_at_ns: u64::MAX,
    };
    Catalog::builder()
        .pool_slice(slice)
        .sku(
            SkuSpec::new(SkuId(1), 700)
                .limit(2)
                .policy(policy)
                .window(window),
        )
        .sku(SkuSpec::new(SkuId(2), 1_000_000).window(window))
        .build()
        .unwrap()
}

/// What a pool's buyers got: each user's outcome, by user.
fn outcomes_by_user(deferred: impl Iterator<Item = flashsale::Deferred>) -> Vec<(u64, String)> {
    let mut outcomes: Vec<(u64, String)> = deferred
        .map(|deferred| {
            let what = match deferred.outcome {
                Outcome::Confirmed(order) => format!("{} units", order.quantity),
                Outcome::Rejected { reason, .. } => format!("{reason:?}"),
            };
            (deferred.intent.user.0, what)
        })
        .collect();
    outcomes.sort();
    outcomes
}

/// Serves a pool in slices: after the window, ticks until it is served, buying the
/// first-come SKU between ticks (each decided at once), and buying the pooled SKU once
/// (it waits for the pool). A snapshot taken part way restores into a core that goes on
/// to the same end. Returns the pool's outcomes by user, the ticks it took, and the
/// pooled SKU's levels.
fn serve_in_slices(
    catalog: &Catalog,
    tickets: u64,
) -> (Vec<(u64, String)>, usize, flashsale::SkuLevels) {
    let mut core = ShardCore::whole(catalog);
    for user in 0..tickets {
        let press = intent(user, 0, 1 + (user % 2) as u32);
        assert!(matches!(
            core.buy(&press, OPENS_NS + user % WINDOW_NS),
            Applied::Waiting { .. }
        ));
    }
    let mut deferred = Vec::new();
    let mut ticks = 0;
    let mut now = OPENS_NS + WINDOW_NS;
    let mut restored: Option<ShardCore> = None;
    loop {
        let tick = Command::Tick { now_ns: now };
        core.apply(&tick);
        deferred.extend(core.take_deferred());
        if let Some(copy) = restored.as_mut() {
            copy.apply(&tick);
            copy.take_deferred().for_each(drop);
        }
        ticks += 1;
        if !core.serving_pool() {
            break;
        }
        // Another product is decided between slices, not after the pool.
        let other = Intent {
            sku: SkuId(2),
            ..intent(1_000_000 + ticks as u64, 0, 1)
        };
        let applied = core.buy(&other, now);
        assert!(
            matches!(applied, Applied::Decided(Outcome::Confirmed(_))),
            "{applied:?}"
        );
        if let Some(copy) = restored.as_mut() {
            copy.buy(&other, now);
        }
        if ticks == 2 {
            // A late press for the pooled SKU waits until the pool is served.
            let late = intent(tickets, 0, 1);
            assert!(matches!(core.buy(&late, now), Applied::Waiting { .. }));
            let placement = Placement::new(catalog, 1).unwrap();
            let mut copy =
                ShardCore::restore(catalog, &placement, ShardId(0), None, &core.snapshot())
                    .expect("restores");
            assert_eq!(
                copy.snapshot(),
                core.snapshot(),
                "a snapshot part way restores"
            );
            assert!(copy.serving_pool());
            restored = Some({
                copy.take_deferred().for_each(drop);
                copy
            });
        }
        now += 1_000;
    }
    let copy = restored.expect("served over more than two ticks");
    assert_eq!(
        copy.snapshot(),
        core.snapshot(),
        "the restored core went on the same"
    );
    (
        outcomes_by_user(deferred.into_iter()),
        ticks,
        core.levels_of(SkuId(1)).unwrap(),
    )
}

#[test]
fn a_pool_served_in_slices_decides_what_it_would_at_once() {
    const TICKETS: u64 = 3_000;
    for policy in [
        Policy::OpeningDraw {
            window_ns: WINDOW_NS,
            seed: 11,
        },
        Policy::OneEachFirst {
            window_ns: WINDOW_NS,
        },
    ] {
        // At once: the whole pool in the tick after its window, then the late press.
        let whole = pooled_beside_first_come(policy, u32::MAX);
        let mut core = ShardCore::whole(&whole);
        for user in 0..TICKETS {
            core.buy(
                &intent(user, 0, 1 + (user % 2) as u32),
                OPENS_NS + user % WINDOW_NS,
            );
        }
        core.apply(&Command::Tick {
            now_ns: OPENS_NS + WINDOW_NS,
        });
        assert!(!core.serving_pool());
        let late = core.buy(&intent(TICKETS, 0, 1), OPENS_NS + WINDOW_NS);
        let mut at_once = outcomes_by_user(core.take_deferred());
        if let Applied::Decided(outcome) = late {
            at_once.extend(outcomes_by_user(std::iter::once(flashsale::Deferred {
                origin: 0,
                intent: intent(TICKETS, 0, 1),
                outcome,
            })));
            at_once.sort();
        }
        let levels_at_once = core.levels_of(SkuId(1)).unwrap();
        for slice in [1, 7, 1_000] {
            let (sliced, ticks, levels) =
                serve_in_slices(&pooled_beside_first_come(policy, slice), TICKETS);
            assert_eq!(sliced, at_once, "{policy:?} in slices of {slice}");
            assert_eq!(
                (levels.available, levels.held),
                (levels_at_once.available, levels_at_once.held)
            );
            // Preparation (a shuffle or a check per ticket) and a decision per ticket.
            let steps = 2 * TICKETS as usize;
            assert!(ticks >= steps.div_ceil(slice as usize) - 1, "{ticks} ticks");
        }
    }
}
