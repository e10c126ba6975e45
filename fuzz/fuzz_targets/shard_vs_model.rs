//! Arbitrary catalogs, placements and command sequences: the shard core and the reference
//! model must give the same outcome for every command and end in the same state.
#![no_main]

use arbitrary::Arbitrary;
use flashsale::reference::Model;
use flashsale::{
    Catalog, Command, GroupId, Intent, Placement, SaleWindow, ShardCore, ShardId, SkuId, SkuSpec,
    UserId,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Sku {
    stock: u8,
    limit: u8,
    group: Option<u8>,
    opens_at: u8,
    open_for: Option<u8>,
}

#[derive(Debug, Arbitrary)]
enum Step {
    Buy {
        user: u8,
        client_key: u8,
        sku: u8,
        quantity: u8,
        arrival: u16,
    },
    Retry {
        of: u16,
        later: u8,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    skus: Vec<Sku>,
    group_limits: Vec<u8>,
    shards: u8,
    steps: Vec<Step>,
}

fuzz_target!(|input: Input| {
    let skus = &input.skus[..input.skus.len().min(16)];
    let groups = &input.group_limits[..input.group_limits.len().min(4)];
    let mut builder = Catalog::builder();
    for (index, &limit) in groups.iter().enumerate() {
        builder = builder.group(GroupId(index as u32), u32::from(limit.max(1)));
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
            });
        if let Some(group) = sku.group
            && !groups.is_empty()
        {
            spec = spec.group(GroupId(u32::from(group) % groups.len() as u32));
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
    let mut cores: Vec<ShardCore> = (0..shards)
        .map(|shard| ShardCore::new(&catalog, &placement, ShardId(shard as u16)))
        .collect();
    let mut models: Vec<Model> = (0..shards)
        .map(|shard| Model::for_shard(&catalog, &placement, ShardId(shard as u16)))
        .collect();
    let mut done: Vec<Command> = Vec::new();
    for step in input.steps.iter().take(512) {
        let command = match *step {
            Step::Buy {
                user,
                client_key,
                sku,
                quantity,
                arrival,
            } => Command::Buy {
                intent: Intent {
                    user: UserId(u64::from(user % 16)),
                    client_key: u64::from(client_key % 4),
                    // Ids are multiples of 3 up to the catalog's end; others are unknown.
                    sku: SkuId(u32::from(sku)),
                    quantity: u32::from(quantity % 6),
                },
                arrival_ns: u64::from(arrival),
            },
            Step::Retry { of, later } => match done.get(usize::from(of) % done.len().max(1)) {
                Some(&Command::Buy { intent, arrival_ns }) => Command::Buy {
                    intent,
                    arrival_ns: arrival_ns + u64::from(later),
                },
                None => continue,
            },
        };
        done.push(command);
        let Command::Buy { intent, .. } = command;
        let owner = catalog
            .index_of(intent.sku)
            .map_or(0, |index| usize::from(placement.route(index).0.0));
        for shard in [owner, (owner + 1) % shards] {
            let fast = cores[shard].apply(&command);
            let reference = models[shard].apply(&command);
            assert_eq!(fast, reference, "{command:?} on shard {shard}");
        }
    }
    for (core, model) in cores.iter().zip(&models) {
        assert_eq!(core.levels().collect::<Vec<_>>(), model.levels());
        assert_eq!(core.orders_confirmed(), model.orders_confirmed());
        for user in 0..16u64 {
            for client_key in 0..4 {
                for sku in catalog.skus() {
                    assert_eq!(
                        core.order_for_key(user, client_key, sku.id),
                        model.order_for_key(UserId(user), client_key, sku.id)
                    );
                }
            }
        }
    }
});
