//! Arbitrary catalog input (any ids, stocks, limits, windows, groups) and shard counts:
//! building gives a catalog or a named error, placing gives a placement or a named error,
//! never a panic; what is accepted is consistent.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use arbitrary::Arbitrary;
use flashsale::{Catalog, GroupId, Placement, SaleWindow, ShardCore, ShardId, SkuId, SkuSpec};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Sku {
    id: u32,
    stock: u32,
    limit: u32,
    opens_at_ns: u64,
    closes_at_ns: u64,
    group: Option<u32>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    groups: Vec<(u32, u32)>,
    skus: Vec<Sku>,
    shards: u16,
}

fuzz_target!(|input: Input| {
    let mut builder = Catalog::builder();
    for &(id, limit) in input.groups.iter().take(64) {
        builder = builder.group(GroupId(id), limit);
    }
    for sku in input.skus.iter().take(256) {
        let mut spec = SkuSpec::new(SkuId(sku.id), sku.stock)
            .limit(sku.limit)
            .window(SaleWindow {
                opens_at_ns: sku.opens_at_ns,
                closes_at_ns: sku.closes_at_ns,
            });
        if let Some(group) = sku.group {
            spec = spec.group(GroupId(group));
        }
        builder = builder.sku(spec);
    }
    let catalog = match builder.build() {
        Ok(catalog) => catalog,
        Err(error) => {
            // Every refusal has a message naming what was wrong.
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    assert!(!catalog.skus().is_empty());
    for (index, sku) in catalog.skus().iter().enumerate() {
        assert_eq!(catalog.index_of(sku.id), Some(index));
        assert!(sku.limit_per_buyer >= 1);
        assert!(sku.window.closes_at_ns > sku.window.opens_at_ns);
        if let Some(group) = sku.group {
            assert!(catalog.group(group).is_some());
        }
    }
    let placement = match Placement::new(&catalog, usize::from(input.shards)) {
        Ok(placement) => placement,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    // Every SKU on exactly one shard, and a product's variants together.
    let mut owner = vec![None; catalog.skus().len()];
    for shard in 0..placement.shards() {
        for &index in placement.skus_of(ShardId(shard as u16)) {
            assert!(owner[index as usize].replace(shard).is_none());
        }
    }
    for (index, sku) in catalog.skus().iter().enumerate() {
        let (shard, _) = placement.route(index);
        assert_eq!(owner[index], Some(usize::from(shard.0)));
        if let Some(group) = sku.group {
            for (other, other_sku) in catalog.skus().iter().enumerate() {
                if other_sku.group == Some(group) {
                    assert_eq!(placement.route(other).0, shard);
                }
            }
        }
    }
    // A shard core can be made for every shard (with little room, to keep runs fast).
    for shard in 0..placement.shards().min(4) {
        let core =
            ShardCore::with_order_capacity(&catalog, &placement, ShardId(shard as u16), Some(16));
        assert_eq!(
            core.levels().count(),
            placement.skus_of(ShardId(shard as u16)).len()
        );
    }
});
