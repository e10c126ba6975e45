//! The shard core against the reference model: random catalogs and command sequences
//! (buys, retries with the same key, malformed intents, intents outside the sale window,
//! SKUs the shard does not own) must get the same outcome from both, command for command,
//! and leave the same state. `PROPTEST_CASES=20000 cargo test --release --test model` runs
//! a longer search; failures shrink to a minimal catalog and sequence, and proptest keeps
//! them in `tests/model.proptest-regressions` so they are re-run first.
#![cfg(feature = "reference")]

use flashsale::reference::Model;
use flashsale::{
    Catalog, Command, GroupId, Intent, Placement, RejectReason, SaleWindow, ShardCore, ShardId,
    SkuId, SkuSpec, UserId,
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
}

#[derive(Debug, Clone)]
struct CatalogDraw {
    skus: Vec<SkuDraw>,
    group_limits: Vec<u32>,
    shards: usize,
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
    Retry { of: usize, later_ns: u64 },
}

fn sku_draw() -> impl Strategy<Value = SkuDraw> {
    (
        prop_oneof![Just(0u32), 1u32..4, 4u32..30],
        1u32..4,
        proptest::option::of(0usize..3),
        prop_oneof![Just(0u64), 0u64..200],
        proptest::option::of(1u64..300),
    )
        .prop_map(|(stock, limit, group, opens_at_ns, open_for_ns)| SkuDraw {
            stock,
            limit,
            group,
            opens_at_ns,
            open_for_ns,
        })
}

fn catalog_draw() -> impl Strategy<Value = CatalogDraw> {
    (
        proptest::collection::vec(sku_draw(), 1..7),
        proptest::collection::vec(1u32..5, 0..3),
        1usize..4,
    )
        .prop_map(|(skus, group_limits, shards)| CatalogDraw {
            skus,
            group_limits,
            shards,
        })
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
    ]
}

/// SKU ids are spread out and do not start at 0, so index and id never coincide.
fn sku_id(index: usize) -> SkuId {
    SkuId(index as u32 * 7 + 3)
}

fn build(draw: &CatalogDraw) -> Catalog {
    let mut builder = Catalog::builder();
    for (index, &limit) in draw.group_limits.iter().enumerate() {
        builder = builder.group(GroupId(index as u32 + 1), limit);
    }
    for (index, sku) in draw.skus.iter().enumerate() {
        let mut spec = SkuSpec::new(sku_id(index), sku.stock)
            .limit(sku.limit)
            .window(SaleWindow {
                opens_at_ns: sku.opens_at_ns,
                closes_at_ns: sku
                    .open_for_ns
                    .map_or(u64::MAX, |length| sku.opens_at_ns + length),
            });
        if let Some(group) = sku.group
            && !draw.group_limits.is_empty()
        {
            spec = spec.group(GroupId((group % draw.group_limits.len()) as u32 + 1));
        }
        builder = builder.sku(spec);
    }
    builder.build().expect("drawn catalogs are valid")
}

/// Turns steps into commands (retries resolved to the press they repeat).
fn commands(draw: &CatalogDraw, steps: &[Step]) -> Vec<Command> {
    let mut out: Vec<Command> = Vec::with_capacity(steps.len());
    for step in steps {
        let command = match *step {
            Step::Buy {
                user,
                client_key,
                sku,
                quantity,
                arrival_ns,
            } => Command::Buy {
                intent: Intent {
                    user: UserId(user),
                    client_key,
                    // One past the catalog is a SKU nobody sells.
                    sku: sku_id(sku.min(draw.skus.len())),
                    quantity,
                },
                arrival_ns,
            },
            Step::Retry { of, later_ns } => match out.get(of % out.len().max(1)) {
                Some(&Command::Buy { intent, arrival_ns }) => Command::Buy {
                    intent,
                    arrival_ns: arrival_ns + later_ns,
                },
                None => continue,
            },
        };
        out.push(command);
    }
    out
}

/// Runs the commands through core and model of every shard the command could reach (its
/// owner, and the next shard, which must answer UnknownSku) and compares everything.
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
    for (index, command) in commands(draw, steps).iter().enumerate() {
        let Command::Buy { intent, .. } = command;
        let owner = catalog
            .index_of(intent.sku)
            .map_or(0, |index| usize::from(placement.route(index).0.0));
        for shard in [owner, (owner + 1) % shards] {
            let fast = cores[shard].apply(command);
            let reference = models[shard].apply(command);
            prop_assert_eq!(
                fast,
                reference,
                "command {} ({:?}) on shard {}",
                index,
                command,
                shard
            );
            if shards == 1 {
                break;
            }
        }
    }
    for (core, model) in cores.iter().zip(&models) {
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
    let outcome = core.buy(&intent, 0);
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
