//! Every size and setting the engine builder takes has a documented range: at 0, 1, its
//! maximum, its maximum + 1 and its type's maximum, `start()` either starts or refuses
//! with `EngineError::OutOfRange` naming the setting, and a refusal allocates nothing near
//! the size asked for (a counting allocator watches the largest single allocation). Its
//! own binary, so that no other test's allocations are counted, and its tests take
//! [`one_at_a_time`] so that neither counts the other's (an engine started at a setting's
//! maximum allocates a MiB at once while the other test is between reset and read).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flashsale::{
    Catalog, Engine, EngineBuilder, EngineError, JournalConfig, Placement, PlacementError, SkuId,
    SkuSpec,
};

struct Largest;

static LARGEST: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; the counter is an atomic.
unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

/// Held by each test for its whole run: the counter is process-wide.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A catalog of `skus` SKUs of 10 units each (one placement unit per SKU).
fn catalog(skus: u32) -> Catalog {
    Catalog::builder()
        .skus((1..=skus).map(|id| SkuSpec::new(SkuId(id), 10)))
        .build()
        .unwrap()
}

/// One setting: its name, how to apply a value, its range and its type's maximum.
struct Setting {
    name: &'static str,
    apply: fn(EngineBuilder, u128) -> EngineBuilder,
    min: u128,
    max: u128,
    type_max: u128,
    /// Whether starting at the maximum is too costly for a test (then only `validate`).
    validate_only_at_max: bool,
}

fn journal(dir: &std::path::Path) -> JournalConfig {
    JournalConfig::durable(dir)
}

fn settings() -> Vec<Setting> {
    let usize_max = usize::MAX as u128;
    vec![
        Setting {
            name: "shards",
            apply: |b, v| b.shards(v as usize),
            min: 1,
            max: EngineBuilder::SHARDS_MAX as u128,
            type_max: usize_max,
            validate_only_at_max: cfg!(miri),
        },
        Setting {
            name: "ring_capacity",
            apply: |b, v| b.ring_capacity(v as usize),
            min: 1,
            max: EngineBuilder::RING_CAPACITY_MAX as u128,
            type_max: usize_max,
            validate_only_at_max: false,
        },
        Setting {
            name: "batch_max",
            apply: |b, v| b.batch_max(v as usize),
            min: 1,
            max: EngineBuilder::BATCH_MAX_MAX as u128,
            type_max: usize_max,
            validate_only_at_max: cfg!(miri),
        },
        Setting {
            name: "max_quantity",
            apply: |b, v| b.max_quantity(v as u32),
            min: 1,
            max: u128::from(u32::MAX),
            type_max: u128::from(u32::MAX),
            validate_only_at_max: false,
        },
        Setting {
            name: "order_capacity",
            apply: |b, v| b.order_capacity(v as usize),
            min: 0,
            max: EngineBuilder::ORDER_CAPACITY_MAX as u128,
            type_max: usize_max,
            // About 10 GiB of order book room, faulted in at start-up.
            validate_only_at_max: true,
        },
        Setting {
            name: "group_commands",
            apply: |b, v| {
                let dir = std::env::temp_dir().join("flashsale-limits-group-commands");
                let _ = std::fs::remove_dir_all(&dir);
                b.journal(JournalConfig {
                    group_commands: v as usize,
                    ..journal(&dir)
                })
            },
            min: 1,
            max: EngineBuilder::GROUP_COMMANDS_MAX as u128,
            type_max: usize_max,
            validate_only_at_max: cfg!(miri),
        },
        Setting {
            name: "group_delay",
            apply: |b, v| {
                let dir = std::env::temp_dir().join("flashsale-limits-group-delay");
                let _ = std::fs::remove_dir_all(&dir);
                let delay = Duration::new((v / 1_000_000_000) as u64, (v % 1_000_000_000) as u32);
                b.journal(JournalConfig {
                    group_delay: delay,
                    ..journal(&dir)
                })
            },
            min: 0,
            max: EngineBuilder::GROUP_DELAY_MAX.as_nanos(),
            type_max: Duration::MAX.as_nanos(),
            validate_only_at_max: cfg!(miri),
        },
        Setting {
            name: "snapshot_every",
            apply: |b, v| {
                let dir = std::env::temp_dir().join("flashsale-limits-snapshot-every");
                let _ = std::fs::remove_dir_all(&dir);
                b.journal(JournalConfig {
                    snapshot_every: Some(v as u64),
                    ..journal(&dir)
                })
            },
            min: 1,
            max: u128::from(u64::MAX),
            type_max: u128::from(u64::MAX),
            validate_only_at_max: cfg!(miri),
        },
    ]
}

#[test]
fn every_setting_is_bounded_and_refused_by_name() {
    let _alone = one_at_a_time();
    let many_skus = catalog(EngineBuilder::SHARDS_MAX as u32);
    let one_sku = catalog(1);
    for setting in settings() {
        let values = [0, 1, setting.max, setting.max + 1, setting.type_max];
        for value in values {
            if value > setting.type_max {
                continue;
            }
            let base = if setting.name == "shards" {
                Engine::builder(many_skus.clone())
            } else {
                Engine::builder(one_sku.clone())
            };
            let builder = (setting.apply)(base, value);
            let name = setting.name;
            if (setting.min..=setting.max).contains(&value) {
                match builder.validate() {
                    Ok(()) => {}
                    // In range, but the room asked for is past this machine's memory.
                    Err(EngineError::NotEnoughMemory { .. }) if name == "order_capacity" => {
                        continue;
                    }
                    Err(e) => panic!("{name} = {value} is in range: {e}"),
                }
                if !(value == setting.max && setting.validate_only_at_max) {
                    let engine = builder
                        .start()
                        .unwrap_or_else(|e| panic!("{name} = {value} starts: {e}"));
                    drop(engine.shutdown());
                }
                continue;
            }
            LARGEST.store(0, Ordering::Relaxed);
            let error = builder.start().expect_err(name);
            let largest = LARGEST.load(Ordering::Relaxed);
            match &error {
                EngineError::OutOfRange {
                    setting: named,
                    value: given,
                    min,
                    max,
                } => {
                    assert_eq!(*named, name);
                    assert_eq!((*given, *min, *max), (value, setting.min, setting.max));
                }
                other => panic!("{name} = {value}: {other:?}"),
            }
            assert!(
                error.to_string().starts_with(name),
                "the message names the setting: {error}"
            );
            assert!(
                largest < 1 << 20,
                "{name} = {value} was refused after allocating {largest} bytes at once"
            );
        }
    }
    // A placement over more shards than the catalog has units is refused before anything
    // per shard is allocated (65,536 empty lists would take 1.5 MiB at once).
    LARGEST.store(0, Ordering::Relaxed);
    let refused = Placement::new(&catalog(2), 65_536);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        matches!(
            refused,
            Err(PlacementError::MoreShardsThanUnits {
                shards: 65_536,
                units: 2
            })
        ),
        "{refused:?}"
    );
    assert!(
        largest < 1 << 20,
        "placement refused after allocating {largest} bytes"
    );
    for dir in ["group-commands", "group-delay", "snapshot-every"] {
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("flashsale-limits-{dir}")));
    }
}

/// Room for orders past the machine's memory is refused by name before any of it is
/// allocated: every shard at the largest room (about 6 GiB each) is terabytes, which
/// would otherwise be written at start until the kernel's out-of-memory killer ended the
/// process.
#[test]
#[cfg(target_os = "linux")]
fn room_past_the_machines_memory_is_refused_by_name() {
    let _alone = one_at_a_time();
    let shards = EngineBuilder::SHARDS_MAX;
    let builder = Engine::builder(catalog(shards as u32))
        .shards(shards)
        .order_capacity(EngineBuilder::ORDER_CAPACITY_MAX);
    LARGEST.store(0, Ordering::Relaxed);
    let error = builder.start().expect_err("terabytes of room");
    let largest = LARGEST.load(Ordering::Relaxed);
    match &error {
        EngineError::NotEnoughMemory {
            needs_bytes,
            has_bytes,
            shards: named,
        } => {
            assert_eq!(*named, shards);
            assert!(needs_bytes > has_bytes, "{error}");
            // At least the order book's slots: twice the room, a power of two.
            let slots = (2 * EngineBuilder::ORDER_CAPACITY_MAX).next_power_of_two() as u64;
            assert!(*needs_bytes >= shards as u64 * slots * 16, "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("order_capacity"), "{error}");
    assert!(
        largest < 1 << 20,
        "refused after allocating {largest} bytes at once"
    );
    // The same room on one shard fits this machine (if it has the memory): validated.
    let one = Engine::builder(catalog(1)).order_capacity(EngineBuilder::ORDER_CAPACITY_MAX);
    match one.validate() {
        Ok(()) | Err(EngineError::NotEnoughMemory { shards: 1, .. }) => {}
        Err(other) => panic!("{other}"),
    }
}
