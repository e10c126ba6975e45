//! The shard core against the reference model: random catalogs (limits, groups, windows,
//! payment deadlines, waitlists, opening draws and one-each-first pools) and command
//! sequences (buys, buys that wait, retries with the same key, malformed intents, intents
//! outside the sale window, SKUs the shard does not own, payments, cancellations, clock
//! ticks, restocks, reductions, moved windows, early closes) must get the same result and
//! the same deferred outcomes from both, command for command, and leave the same state.
//! After every command the core's levels must conserve units
//! (`available + held + sold == stock`) and no buyer may hold more than a limit. `PROPTEST_CASES=20000 cargo test --release --test model` runs
//! a longer search; failures shrink to a minimal catalog and sequence, and proptest keeps
//! them in `tests/model.proptest-regressions` so they are re-run first.
#![cfg(feature = "reference")]

use flashsale::reference::Model;
use flashsale::{
    Applied, Catalog, Command, GroupId, GroupSpec, Intent, OrderId, Outcome, Placement, Policy,
    RejectReason, SaleWindow, ShardCore, ShardId, SkuId, SkuSpec, UserId,
};
use proptest::prelude::*;

/// One SKU of a drawn catalog.
#[derive(Debug, Clone)]
struct SkuDraw {
    stock: u32,
    limit: u32,
    /// Index into the drawn groups (modulo their count), if any.
    group: Option<usize>,
    opens_at_ns: u64,
    /// Window length; `None` never closes.
    open_for_ns: Option<u64>,
    hold_ns: Option<u64>,
    waitlist: u32,
    /// Used if the SKU is not in a group.
    policy: Policy,
}

#[derive(Debug, Clone)]
struct CatalogDraw {
    skus: Vec<SkuDraw>,
    groups: Vec<(u32, Policy)>,
    shards: usize,
    pool_capacity: u32,
    /// Steps per slice of a pool being served: 1 and 2 slice every pool.
    pool_slice: u32,
}

/// One step of a drawn sequence.
#[derive(Debug, Clone)]
enum Step {
    /// A fresh press; `sku` indexes the catalog, one past its end is an unknown SKU.
    Buy {
        user: u64,
        client_key: u64,
        sku: usize,
        quantity: u32,
        arrival_ns: u64,
    },
    /// The impatient retry: an earlier press again, same key, at a later moment.
    Retry {
        of: usize,
        later_ns: u64,
    },
    /// A press that waits rather than be rejected as sold out.
    BuyOrWait {
        user: u64,
        client_key: u64,
        sku: usize,
        quantity: u32,
        arrival_ns: u64,
    },
    /// Pays the `of`-th order confirmed so far (modulo their count), or an unknown one.
    Pay {
        of: usize,
        at_ns: u64,
    },
    /// Cancels the `of`-th order confirmed so far.
    Cancel {
        of: usize,
        at_ns: u64,
    },
    Tick {
        now_ns: u64,
    },
    Restock {
        sku: usize,
        units: u32,
        at_ns: u64,
    },
    Reduce {
        sku: usize,
        units: u32,
        at_ns: u64,
    },
    SetWindow {
        sku: usize,
        opens_at_ns: u64,
        open_for_ns: u64,
        at_ns: u64,
    },
    Close {
        sku: usize,
        at_ns: u64,
    },
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        3 => Just(Policy::FirstCome),
        1 => (0u64..150, any::<u64>()).prop_map(|(window_ns, seed)| Policy::OpeningDraw { window_ns, seed }),
        1 => (0u64..150).prop_map(|window_ns| Policy::OneEachFirst { window_ns }),
    ]
}

fn sku_draw() -> impl Strategy<Value = SkuDraw> {
    (
        prop_oneof![Just(0u32), 1u32..4, 4u32..30],
        1u32..4,
        proptest::option::of(0usize..3),
        prop_oneof![Just(0u64), 0u64..200],
        proptest::option::of(1u64..300),
        proptest::option::of(1u64..200),
        prop_oneof![Just(0u32), 1u32..4],
        policy(),
    )
        .prop_map(
            |(stock, limit, group, opens_at_ns, open_for_ns, hold_ns, waitlist, policy)| SkuDraw {
                stock,
                limit,
                group,
                opens_at_ns,
                open_for_ns,
                hold_ns,
                waitlist,
                policy,
            },
        )
}

fn catalog_draw() -> impl Strategy<Value = CatalogDraw> {
    (
        proptest::collection::vec(sku_draw(), 1..7),
        proptest::collection::vec((1u32..5, policy()), 0..3),
        1usize..4,
        prop_oneof![Just(2u32), Just(1000u32)],
        prop_oneof![Just(1u32), Just(2u32), Just(1024u32)],
    )
        .prop_map(
            |(skus, groups, shards, pool_capacity, pool_slice)| CatalogDraw {
                skus,
                groups,
                shards,
                pool_capacity,
                pool_slice,
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..6, 0u64..4, 0usize..8, prop_oneof![8 => 1u32..3, 1 => Just(0u32), 1 => 3u32..6], 0u64..400)
            .prop_map(|(user, client_key, sku, quantity, arrival_ns)| Step::Buy {
                user,
                client_key,
                sku,
                quantity,
                arrival_ns,
            }),
        1 => (any::<usize>(), 0u64..100).prop_map(|(of, later_ns)| Step::Retry { of, later_ns }),
        2 => (0u64..6, 0u64..4, 0usize..8, 1u32..3, 0u64..400)
            .prop_map(|(user, client_key, sku, quantity, arrival_ns)| Step::BuyOrWait {
                user,
                client_key,
                sku,
                quantity,
                arrival_ns,
            }),
        2 => (any::<usize>(), 0u64..500).prop_map(|(of, at_ns)| Step::Pay { of, at_ns }),
        1 => (any::<usize>(), 0u64..500).prop_map(|(of, at_ns)| Step::Cancel { of, at_ns }),
        1 => (0u64..600).prop_map(|now_ns| Step::Tick { now_ns }),
        1 => (0usize..8, 0u32..4, 0u64..500).prop_map(|(sku, units, at_ns)| Step::Restock { sku, units, at_ns }),
        1 => (0usize..8, 0u32..4, 0u64..500).prop_map(|(sku, units, at_ns)| Step::Reduce { sku, units, at_ns }),
        1 => (0usize..8, 0u64..400, 0u64..300, 0u64..500).prop_map(|(sku, opens_at_ns, open_for_ns, at_ns)| Step::SetWindow { sku, opens_at_ns, open_for_ns, at_ns }),
        1 => (0usize..8, 0u64..500).prop_map(|(sku, at_ns)| Step::Close { sku, at_ns }),
    ]
}

/// SKU ids are spread out and do not start at 0, so index and id never coincide.
fn sku_id(index: usize) -> SkuId {
    SkuId(index as u32 * 7 + 3)
}

fn build(draw: &CatalogDraw) -> Catalog {
    let mut builder = Catalog::builder()
        .pool_capacity(draw.pool_capacity)
        .pool_slice(draw.pool_slice);
    for (index, &(limit, policy)) in draw.groups.iter().enumerate() {
        builder =
            builder.group_spec(GroupSpec::new(GroupId(index as u32 + 1), limit).policy(policy));
    }
    for (index, sku) in draw.skus.iter().enumerate() {
        let mut spec = SkuSpec::new(sku_id(index), sku.stock)
            .limit(sku.limit)
            .window(SaleWindow {
                opens_at_ns: sku.opens_at_ns,
                closes_at_ns: sku
                    .open_for_ns
                    .map_or(u64::MAX, |length| sku.opens_at_ns + length),
            })
            .waitlist(sku.waitlist);
        if let Some(hold_ns) = sku.hold_ns {
            spec = spec.hold(hold_ns);
        }
        match sku.group {
            Some(group) if !draw.groups.is_empty() => {
                spec = spec.group(GroupId((group % draw.groups.len()) as u32 + 1));
            }
            _ => spec = spec.policy(sku.policy),
        }
        builder = builder.sku(spec);
    }
    builder.build().expect("drawn catalogs are valid")
}

/// A drawn step as a command. `orders` are the orders confirmed so far (for payments and
/// cancellations); `earlier` the commands so far (for retries).
fn command(
    draw: &CatalogDraw,
    step: &Step,
    earlier: &[Command],
    orders: &[OrderId],
) -> Option<Command> {
    // One past the catalog is a SKU nobody sells.
    let sku = |index: usize| sku_id(index.min(draw.skus.len()));
    let intent = |user, client_key, index, quantity| Intent {
        user: UserId(user),
        client_key,
        sku: sku(index),
        quantity,
    };
    // An order nobody confirmed when there is none yet.
    let order = |of: usize| {
        orders
            .get(of % orders.len().max(1))
            .copied()
            .unwrap_or(OrderId::new(ShardId(0), 999))
    };
    Some(match *step {
        Step::Buy {
            user,
            client_key,
            sku,
            quantity,
            arrival_ns,
        } => Command::Buy {
            intent: intent(user, client_key, sku, quantity),
            arrival_ns,
        },
        Step::BuyOrWait {
            user,
            client_key,
            sku,
            quantity,
            arrival_ns,
        } => Command::BuyOrWait {
            intent: intent(user, client_key, sku, quantity),
            arrival_ns,
        },
        Step::Retry { of, later_ns } => match *earlier.get(of % earlier.len().max(1))? {
            Command::Buy { intent, arrival_ns } => Command::Buy {
                intent,
                arrival_ns: arrival_ns + later_ns,
            },
            Command::BuyOrWait { intent, arrival_ns } => Command::BuyOrWait {
                intent,
                arrival_ns: arrival_ns + later_ns,
            },
            _ => return None,
        },
        Step::Pay { of, at_ns } => Command::Pay {
            order: order(of),
            at_ns,
        },
        Step::Cancel { of, at_ns } => Command::Cancel {
            order: order(of),
            at_ns,
        },
        Step::Tick { now_ns } => Command::Tick { now_ns },
        Step::Restock {
            sku: index,
            units,
            at_ns,
        } => Command::Restock {
            sku: sku(index),
            units,
            at_ns,
        },
        Step::Reduce {
            sku: index,
            units,
            at_ns,
        } => Command::Reduce {
            sku: sku(index),
            units,
            at_ns,
        },
        Step::SetWindow {
            sku: index,
            opens_at_ns,
            open_for_ns,
            at_ns,
        } => Command::SetWindow {
            sku: sku(index),
            // A length of 0 is an inverted window, refused.
            window: SaleWindow {
                opens_at_ns,
                closes_at_ns: opens_at_ns + open_for_ns,
            },
            at_ns,
        },
        Step::Close { sku: index, at_ns } => Command::CloseSale {
            sku: sku(index),
            at_ns,
        },
    })
}

/// The shard a command is for: the owner of its SKU or order (0 if none).
fn owner(catalog: &Catalog, placement: &Placement, command: &Command) -> usize {
    let sku = match *command {
        Command::Buy { intent, .. } | Command::BuyOrWait { intent, .. } => intent.sku,
        Command::Restock { sku, .. }
        | Command::Reduce { sku, .. }
        | Command::SetWindow { sku, .. }
        | Command::CloseSale { sku, .. } => sku,
        Command::Pay { order, .. } | Command::Cancel { order, .. } => {
            return usize::from(order.shard().0) % placement.shards();
        }
        Command::Tick { .. } => return 0,
    };
    catalog
        .index_of(sku)
        .map_or(0, |index| usize::from(placement.route(index).0.0))
}

/// The core's invariants after a command: conservation per SKU, and no buyer above a
/// limit (held and sold units together).
fn invariants(catalog: &Catalog, core: &ShardCore, users: u64) -> Result<(), TestCaseError> {
    for levels in core.levels() {
        prop_assert_eq!(
            u64::from(levels.available) + u64::from(levels.held) + u64::from(levels.sold),
            u64::from(levels.stock),
            "conservation of {:?}",
            levels
        );
        let spec = catalog
            .sku(levels.id)
            .expect("owned SKUs are in the catalog");
        prop_assert_eq!(
            u64::from(levels.stock),
            u64::from(spec.stock) + levels.restocked - levels.reduced
        );
        for user in 0..users {
            prop_assert!(core.held_by(user, levels.id) <= spec.limit_per_buyer);
        }
    }
    for group in catalog.groups() {
        for user in 0..users {
            let units: u32 = catalog
                .skus()
                .iter()
                .filter(|sku| sku.group == Some(group.id))
                .map(|sku| core.held_by(user, sku.id))
                .sum();
            prop_assert!(units <= group.limit_per_buyer, "group {:?}", group.id);
        }
    }
    Ok(())
}

/// Runs the commands through core and model of every shard the command could reach (its
/// owner, and the next shard, which must refuse it as unknown) and compares everything,
/// including the outcomes decided later for buys that waited.
fn agree(draw: &CatalogDraw, steps: &[Step]) -> Result<(), TestCaseError> {
    let catalog = build(draw);
    // More shards than placement units is refused; then one shard owns everything.
    let placement = Placement::new(&catalog, draw.shards)
        .or_else(|_| Placement::new(&catalog, 1))
        .expect("one shard fits");
    let shards = placement.shards();
    let mut cores: Vec<ShardCore> = (0..shards)
        .map(|shard| ShardCore::new(&catalog, &placement, ShardId(shard as u16)))
        .collect();
    let mut models: Vec<Model> = (0..shards)
        .map(|shard| Model::for_shard(&catalog, &placement, ShardId(shard as u16)))
        .collect();
    let mut applied: Vec<Command> = Vec::new();
    let mut orders: Vec<OrderId> = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let Some(command) = command(draw, step, &applied, &orders) else {
            continue;
        };
        let owner = owner(&catalog, &placement, &command);
        for shard in [owner, (owner + 1) % shards] {
            let fast = cores[shard].apply(&command);
            let reference = models[shard].apply(&command);
            prop_assert_eq!(
                fast,
                reference,
                "command {} ({:?}) on shard {}",
                index,
                command,
                shard
            );
            let fast_deferred: Vec<_> = cores[shard].take_deferred().collect();
            prop_assert_eq!(
                &fast_deferred,
                &models[shard].take_deferred(),
                "deferred outcomes of command {} ({:?}) on shard {}",
                index,
                command,
                shard
            );
            let confirmed = fast_deferred
                .iter()
                .map(|deferred| deferred.outcome)
                .chain(fast.outcome())
                .filter_map(|outcome| match outcome {
                    Outcome::Confirmed(order) => Some(order.id),
                    Outcome::Rejected { .. } => None,
                });
            orders.extend(confirmed);
            invariants(&catalog, &cores[shard], 6)?;
            if shards == 1 {
                break;
            }
        }
        applied.push(command);
    }
    for (core, model) in cores.iter().zip(&models) {
        // Its snapshot passes every check a restore makes, and restores to the same bytes.
        let bytes = core.snapshot();
        let restored = ShardCore::restore(&catalog, &placement, core.shard(), None, &bytes);
        prop_assert!(restored.is_ok(), "refused: {:?}", restored.err());
        prop_assert!(
            restored.unwrap().snapshot() == bytes,
            "restored to other bytes"
        );
        prop_assert_eq!(core.levels().collect::<Vec<_>>(), model.levels());
        prop_assert_eq!(core.commands_applied(), model.commands_applied());
        prop_assert_eq!(core.orders_confirmed(), model.orders_confirmed());
        for user in 0..6u64 {
            for client_key in 0..4 {
                for index in 0..=draw.skus.len() {
                    prop_assert_eq!(
                        core.order_for_key(user, client_key, sku_id(index)),
                        model.order_for_key(UserId(user), client_key, sku_id(index))
                    );
                }
            }
            for index in 0..draw.skus.len() {
                prop_assert_eq!(
                    core.held_by(user, sku_id(index)),
                    model.held_by(UserId(user), sku_id(index))
                );
            }
        }
    }
    Ok(())
}

/// 1,024 cases by default, `PROPTEST_CASES` to search longer; 4 under Miri, which runs each
/// case about a thousand times slower.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(if cfg!(miri) { 4 } else { 1024 })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_and_model_agree(draw in catalog_draw(), steps in proptest::collection::vec(step(), 0..120)) {
        agree(&draw, &steps)?;
    }

    #[test]
    fn buy_many_decides_as_buy_does(
        draw in catalog_draw(),
        buys in proptest::collection::vec((0u64..6, 0u64..4, 0usize..9, 0u32..4), 0..120),
        batch in 1usize..40,
    ) {
        buy_many_agrees(&draw, &buys, batch)?;
    }
}

/// `ShardCore::buy_many` over batches of `batch` buys (each batch at its own instant) gives
/// every buy the result, and the core the state, that `buy` one at a time gives.
fn buy_many_agrees(
    draw: &CatalogDraw,
    buys: &[(u64, u64, usize, u32)],
    batch: usize,
) -> Result<(), TestCaseError> {
    let catalog = build(draw);
    let placement = Placement::new(&catalog, 1).expect("one shard fits");
    let mut one_by_one = ShardCore::new(&catalog, &placement, ShardId(0));
    let mut batched = ShardCore::new(&catalog, &placement, ShardId(0));
    let intents: Vec<Intent> = buys
        .iter()
        .map(|&(user, client_key, index, quantity)| Intent {
            user: UserId(user),
            client_key,
            // One past the catalog is a SKU nobody sells.
            sku: sku_id(index.min(draw.skus.len())),
            quantity,
        })
        .collect();
    for (number, chunk) in intents.chunks(batch).enumerate() {
        let arrival_ns = number as u64 * 37;
        let expected: Vec<_> = chunk
            .iter()
            .map(|intent| one_by_one.buy(intent, arrival_ns))
            .collect();
        let mut got = Vec::new();
        batched.buy_many(chunk, arrival_ns, |position, applied| {
            got.push((position, applied));
        });
        let positions: Vec<usize> = got.iter().map(|(position, _)| *position).collect();
        prop_assert_eq!(positions, (0..chunk.len()).collect::<Vec<_>>());
        let got: Vec<_> = got.into_iter().map(|(_, applied)| applied).collect();
        prop_assert_eq!(got, expected, "batch {}", number);
        prop_assert_eq!(
            batched.take_deferred().collect::<Vec<_>>(),
            one_by_one.take_deferred().collect::<Vec<_>>()
        );
    }
    prop_assert!(
        batched.snapshot() == one_by_one.snapshot(),
        "the same state"
    );
    Ok(())
}

/// Regression, found while writing the model: the core, fed directly (the engine's producer
/// always rejected it first), confirmed an order for 0 units while stock was left.
#[test]
fn quantity_zero_is_rejected_by_the_core_itself() {
    let catalog = Catalog::builder()
        .sku(SkuSpec::new(SkuId(1), 5).limit(2))
        .build()
        .unwrap();
    let mut core = ShardCore::whole(&catalog);
    let intent = Intent {
        user: UserId(1),
        client_key: 1,
        sku: SkuId(1),
        quantity: 0,
    };
    let outcome: Applied = core.buy(&intent, 0);
    assert_eq!(outcome.reason(), Some(RejectReason::InvalidQuantity));
    assert_eq!(outcome, Model::whole(&catalog).buy(&intent, 0));
    assert_eq!(core.orders_confirmed(), 0);
}

/// A hand-written walk through every rule, as a readable example of what the property
/// checks at random.
#[test]
fn every_rule_in_order() {
    let catalog = Catalog::builder()
        .group(GroupId(1), 3)
        .sku(
            SkuSpec::new(SkuId(1), 4)
                .limit(2)
                .group(GroupId(1))
                .window(SaleWindow {
                    opens_at_ns: 100,
                    closes_at_ns: 1_000,
                }),
        )
        .sku(SkuSpec::new(SkuId(2), 1).limit(2).group(GroupId(1)))
        .build()
        .unwrap();
    let mut core = ShardCore::whole(&catalog);
    let mut model = Model::whole(&catalog);
    let buy = |user, client_key, sku, quantity| Intent {
        user: UserId(user),
        client_key,
        sku: SkuId(sku),
        quantity,
    };
    let script: [(Intent, u64, Option<RejectReason>); 10] = [
        (buy(1, 1, 9, 1), 500, Some(RejectReason::UnknownSku)),
        (buy(1, 1, 1, 0), 500, Some(RejectReason::InvalidQuantity)),
        (buy(1, 1, 1, 1), 99, Some(RejectReason::NotOpenYet)),
        (buy(1, 1, 1, 1), 1_000, Some(RejectReason::Closed)),
        (buy(1, 1, 1, 2), 500, None),
        (
            buy(1, 1, 1, 2),
            600,
            Some(RejectReason::Duplicate(flashsale::OrderId::new(
                ShardId(0),
                0,
            ))),
        ),
        (buy(1, 2, 1, 1), 600, Some(RejectReason::UserLimit)),
        (buy(1, 3, 2, 2), 600, Some(RejectReason::UserLimit)),
        (buy(2, 1, 1, 2), 600, None),
        (buy(3, 1, 1, 1), 600, Some(RejectReason::SoldOut)),
    ];
    for (step, (intent, arrival_ns, expected)) in script.into_iter().enumerate() {
        let fast = core.buy(&intent, arrival_ns);
        assert_eq!(fast, model.buy(&intent, arrival_ns), "step {step}");
        assert_eq!(fast.reason(), expected, "step {step}");
    }
    let last = buy(3, 2, 2, 2);
    assert_eq!(
        core.buy(&last, 600).reason(),
        Some(RejectReason::InsufficientStock)
    );
    assert_eq!(
        model.buy(&last, 600).reason(),
        Some(RejectReason::InsufficientStock)
    );
}
