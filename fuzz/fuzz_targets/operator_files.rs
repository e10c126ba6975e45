//! The files an operator writes, as arbitrary text: a sale's catalog (`flashsale serve
//! --catalog`) and a scenario (`flashsale simulate --file`), read by the same code the
//! binary runs. A catalog file gives a catalog or one line naming the file (and the entry
//! and field where it can), never a panic; a catalog it gives places on one to four shards
//! or is refused by name. A scenario gives a named error or a scenario; one that passes
//! its checks gives its estimates, and, where it makes at most a few thousand presses, the
//! plan a run would make (its catalog and every producer's schedule), without a panic.
#![no_main]

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(
    dead_code,
    reason = "the binary's file reading; only the parsing is fuzzed"
)]
#[path = "../../src/bin/flashsale/input.rs"]
mod input;

#[allow(dead_code, reason = "the binary's module; only the parsing is fuzzed")]
#[path = "../../src/bin/flashsale/serve/catalog_file.rs"]
mod catalog_file;

#[allow(dead_code, reason = "the binary's module; only the parsing is fuzzed")]
#[path = "../../src/bin/flashsale/scenario.rs"]
mod scenario;

#[allow(dead_code, reason = "the binary's module; only the plan is fuzzed")]
#[path = "../../src/bin/flashsale/plan.rs"]
mod plan;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;

/// Presses a validated scenario may make for its plan to be built here.
const PLAN_PRESSES_MAX: f64 = 5_000.0;

fuzz_target!(|bytes: &[u8]| {
    let Some((&kind, text)) = bytes.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    if kind % 2 == 0 {
        let epoch = UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        match catalog_file::parse("sale.toml", &text, epoch) {
            Ok(catalog) => {
                assert!(!catalog.skus().is_empty());
                for shards in 1..=4 {
                    let _ = flashsale::Placement::new(&catalog, shards);
                }
                for sku in catalog.skus() {
                    let _ = catalog_file::wall_time(epoch, sku.window.opens_at_ns);
                }
            }
            Err(error) => {
                assert!(error.0.starts_with("sale.toml: "), "{}", error.0);
                assert!(!error.0.contains('\n'), "{}", error.0);
            }
        }
        let _ = catalog_file::instant(&text, SystemTime::UNIX_EPOCH);
    } else if let Ok(scenario) = scenario::Scenario::from_toml(&text)
        && scenario.validate().is_ok()
    {
        let _ = (
            scenario.skus(),
            scenario.engine_policy(),
            scenario.closes_after_ms(),
            scenario.span_ms(),
            scenario.wall_seconds(),
            scenario.memory_bytes(),
            scenario.has_lifecycle(),
        );
        if scenario.presses_generated() <= PLAN_PRESSES_MAX {
            let _ = plan::Plan::new(&scenario);
        }
    }
});
