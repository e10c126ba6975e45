//! Arbitrary catalogs (limits, groups, windows, payment deadlines, waitlists, opening
//! draws, one-each-first), placements and command sequences (buys, buys that wait,
//! retries, payments, cancellations, ticks, restocks, reductions, moved windows, early
//! closes): the shard core and the reference model must give the same result and the same
//! deferred outcomes for every command, conserve units after every command
//! (`available + held + sold == stock`), and end in the same state.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use arbitrary::Arbitrary;
use flashsale::reference::Model;
use flashsale::{
    Catalog, Command, GroupId, GroupSpec, Intent, OrderId, Outcome, Placement, Policy, SaleWindow,
    ShardCore, ShardId, SkuId, SkuSpec, UserId,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum PolicyDraw {
    FirstCome,
    Draw { window: u8, seed: u64 },
    OneEach { window: u8 },
}

impl PolicyDraw {
    fn policy(&self) -> Policy {
        match *self {
            Self::FirstCome => Policy::FirstCome,
            Self::Draw { window, seed } => Policy::OpeningDraw {
                window_ns: u64::from(window),
                seed,
            },
            Self::OneEach { window } => Policy::OneEachFirst {
                window_ns: u64::from(window),
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Sku {
    stock: u8,
    limit: u8,
    group: Option<u8>,
    opens_at: u8,
    open_for: Option<u8>,
    hold: Option<u8>,
    waitlist: u8,
    policy: PolicyDraw,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Buy {
        user: u8,
        client_key: u8,
        sku: u8,
        quantity: u8,
        arrival: u16,
        wait: bool,
    },
    Retry {
        of: u16,
        later: u8,
    },
    Pay {
        of: u16,
        at: u16,
    },
    Cancel {
        of: u16,
        at: u16,
    },
    Tick {
        now: u16,
    },
    Restock {
        sku: u8,
        units: u8,
        at: u16,
    },
    Reduce {
        sku: u8,
        units: u8,
        at: u16,
    },
    SetWindow {
        sku: u8,
        opens_at: u8,
        open_for: u8,
        at: u16,
    },
    Close {
        sku: u8,
        at: u16,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    skus: Vec<Sku>,
    groups: Vec<(u8, PolicyDraw)>,
    shards: u8,
    small_pools: bool,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let skus = &input.skus[..input.skus.len().min(16)];
    let groups = &input.groups[..input.groups.len().min(4)];
    // The shard count's high bits pick the pool slice: mostly slicing every pool.
    let slice = match (input.shards >> 2) % 4 {
        0 => 1024,
        bits => u32::from(bits),
    };
    let mut builder = Catalog::builder()
        .pool_capacity(if input.small_pools { 3 } else { 1000 })
        .pool_slice(slice);
    for (index, (limit, policy)) in groups.iter().enumerate() {
        builder = builder.group_spec(
            GroupSpec::new(GroupId(index as u32), u32::from((*limit).max(1)))
                .policy(policy.policy()),
        );
    }
    for (index, sku) in skus.iter().enumerate() {
        let opens_at_ns = u64::from(sku.opens_at);
        let mut spec = SkuSpec::new(SkuId(index as u32 * 3), u32::from(sku.stock))
            .limit(u32::from(sku.limit.max(1)))
            .window(SaleWindow {
                opens_at_ns,
                closes_at_ns: sku
                    .open_for
                    .map_or(u64::MAX, |length| opens_at_ns + u64::from(length) + 1),
            })
            .waitlist(u32::from(sku.waitlist % 4));
        if let Some(hold) = sku.hold {
            spec = spec.hold(u64::from(hold) + 1);
        }
        match sku.group {
            Some(group) if !groups.is_empty() => {
                spec = spec.group(GroupId(u32::from(group) % groups.len() as u32));
            }
            _ => spec = spec.policy(sku.policy.policy()),
        }
        builder = builder.sku(spec);
    }
    let Ok(catalog) = builder.build() else {
        return;
    };
    let placement = Placement::new(&catalog, usize::from(input.shards % 4).max(1))
        .or_else(|_| Placement::new(&catalog, 1))
        .expect("one shard fits");
    let shards = placement.shards();
    // Room for a few orders only: the book then grows on the hot path, which is fuzzed too,
    // and no input pays for faulting in an order book sized for its whole stock.
    let mut cores: Vec<ShardCore> = (0..shards)
        .map(|shard| {
            ShardCore::with_order_capacity(&catalog, &placement, ShardId(shard as u16), Some(4))
        })
        .collect();
    let mut models: Vec<Model> = (0..shards)
        .map(|shard| Model::for_shard(&catalog, &placement, ShardId(shard as u16)))
        .collect();
    let mut done: Vec<Command> = Vec::new();
    // The buyers and client keys that appear, for the end-state comparison.
    let (mut buyers, mut keys) = (0u16, 0u8);
    let mut orders: Vec<OrderId> = Vec::new();
    let order = |orders: &[OrderId], of: u16| {
        orders
            .get(usize::from(of) % orders.len().max(1))
            .copied()
            .unwrap_or(OrderId::new(ShardId(0), 999))
    };
    for step in input.steps.iter().take(512) {
        let command = match *step {
            Step::Buy {
                user,
                client_key,
                sku,
                quantity,
                arrival,
                wait,
            } => {
                buyers |= 1 << (user % 16);
                keys |= 1 << (client_key % 4);
                let intent = Intent {
                    user: UserId(u64::from(user % 16)),
                    client_key: u64::from(client_key % 4),
                    // Ids are multiples of 3 up to the catalog's end; others are unknown.
                    sku: SkuId(u32::from(sku)),
                    quantity: u32::from(quantity % 6),
                };
                let arrival_ns = u64::from(arrival);
                if wait {
                    Command::BuyOrWait { intent, arrival_ns }
                } else {
                    Command::Buy { intent, arrival_ns }
                }
            }
            Step::Retry { of, later } => match done.get(usize::from(of) % done.len().max(1)) {
                Some(&Command::Buy { intent, arrival_ns }) => Command::Buy {
                    intent,
                    arrival_ns: arrival_ns + u64::from(later),
                },
                Some(&Command::BuyOrWait { intent, arrival_ns }) => Command::BuyOrWait {
                    intent,
                    arrival_ns: arrival_ns + u64::from(later),
                },
                _ => continue,
            },
            Step::Pay { of, at } => Command::Pay {
                order: order(&orders, of),
                at_ns: u64::from(at),
            },
            Step::Cancel { of, at } => Command::Cancel {
                order: order(&orders, of),
                at_ns: u64::from(at),
            },
            Step::Tick { now } => Command::Tick {
                now_ns: u64::from(now),
            },
            Step::Restock { sku, units, at } => Command::Restock {
                sku: SkuId(u32::from(sku)),
                units: u32::from(units % 8),
                at_ns: u64::from(at),
            },
            Step::Reduce { sku, units, at } => Command::Reduce {
                sku: SkuId(u32::from(sku)),
                units: u32::from(units % 8),
                at_ns: u64::from(at),
            },
            Step::SetWindow {
                sku,
                opens_at,
                open_for,
                at,
            } => Command::SetWindow {
                sku: SkuId(u32::from(sku)),
                window: SaleWindow {
                    opens_at_ns: u64::from(opens_at),
                    closes_at_ns: u64::from(opens_at) + u64::from(open_for),
                },
                at_ns: u64::from(at),
            },
            Step::Close { sku, at } => Command::CloseSale {
                sku: SkuId(u32::from(sku)),
                at_ns: u64::from(at),
            },
        };
        done.push(command);
        let sku = match command {
            Command::Buy { intent, .. } | Command::BuyOrWait { intent, .. } => Some(intent.sku),
            Command::Restock { sku, .. }
            | Command::Reduce { sku, .. }
            | Command::SetWindow { sku, .. }
            | Command::CloseSale { sku, .. } => Some(sku),
            Command::Pay { .. } | Command::Cancel { .. } | Command::Tick { .. } => None,
        };
        let owner = match command {
            Command::Pay { order, .. } | Command::Cancel { order, .. } => {
                usize::from(order.shard().0) % shards
            }
            _ => sku
                .and_then(|sku| catalog.index_of(sku))
                .map_or(0, |index| usize::from(placement.route(index).0.0)),
        };
        // The owner, and (with two shards or more) the next shard, which does not own it:
        // each applies the command once.
        for shard in [owner, (owner + 1) % shards]
            .into_iter()
            .take(shards.min(2))
        {
            let fast = cores[shard].apply(&command);
            let reference = models[shard].apply(&command);
            assert_eq!(fast, reference, "{command:?} on shard {shard}");
            let deferred: Vec<_> = cores[shard].take_deferred().collect();
            assert_eq!(
                deferred,
                models[shard].take_deferred(),
                "deferred outcomes of {command:?} on shard {shard}"
            );
            for outcome in deferred.iter().map(|d| d.outcome).chain(fast.outcome()) {
                if let Outcome::Confirmed(order) = outcome {
                    orders.push(order.id);
                }
            }
            for levels in cores[shard].levels() {
                assert_eq!(
                    u64::from(levels.available) + u64::from(levels.held) + u64::from(levels.sold),
                    u64::from(levels.stock),
                    "conservation of {levels:?}"
                );
            }
        }
    }
    let applied: u64 = cores.iter().map(|core| core.commands_applied()).sum();
    assert_eq!(
        applied,
        done.len() as u64 * shards.min(2) as u64,
        "every command applied once per shard it is given to"
    );
    // Buyers that never bought hold nothing on either side, and a shard answers only for
    // the SKUs it owns: the comparison covers every pair that can differ.
    for (shard, (core, model)) in cores.iter().zip(&models).enumerate() {
        assert_eq!(core.levels().collect::<Vec<_>>(), model.levels());
        assert_eq!(core.orders_confirmed(), model.orders_confirmed());
        for user in (0..16u64).filter(|user| buyers & (1 << user) != 0) {
            for &index in placement.skus_of(ShardId(shard as u16)) {
                let sku = &catalog.skus()[index as usize];
                assert!(core.held_by(user, sku.id) <= sku.limit_per_buyer);
                assert_eq!(
                    core.held_by(user, sku.id),
                    model.held_by(UserId(user), sku.id)
                );
                for client_key in (0..4u64).filter(|key| keys & (1 << key) != 0) {
                    assert_eq!(
                        core.order_for_key(user, client_key, sku.id),
                        model.order_for_key(UserId(user), client_key, sku.id)
                    );
                }
            }
        }
    }
});
