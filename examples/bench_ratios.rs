//! Reads the last `cargo bench --bench engine` run's estimates (criterion's JSON under
//! `target/criterion`) and prints each row's throughput and its ratio to every baseline row
//! of the same workload, so that no ratio quoted in the docs is worked out by hand.
//!
//! Run: `cargo run --release --example bench_ratios [-- DIR]` (default `target/criterion`).
//!
//! A workload is a group (`core`) or a group and the part of the function name before `/`
//! (`e2e_1p1s/burst`); its baselines are the rows whose name starts with `baseline_`. Each
//! row's time is criterion's median estimate of one iteration, whose element count is the
//! row's declared throughput.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One benchmark row: its workload, its name, and intents per second.
struct Row {
    workload: String,
    name: String,
    per_second: f64,
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/criterion"), PathBuf::from);
    let mut rows = Vec::new();
    collect(&dir, &mut rows);
    if rows.is_empty() {
        eprintln!(
            "no criterion estimates under {}: run `cargo bench --bench engine` first",
            dir.display()
        );
        std::process::exit(2);
    }
    let mut workloads: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        workloads.entry(&row.workload).or_default().push(row);
    }
    for (workload, mut rows) in workloads {
        rows.sort_by(|a, b| b.per_second.total_cmp(&a.per_second));
        let baselines: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|row| row.name.starts_with("baseline_"))
            .collect();
        println!("{workload}");
        for row in &rows {
            let ratios: Vec<String> = baselines
                .iter()
                .filter(|baseline| baseline.name != row.name)
                .map(|baseline| {
                    format!(
                        "{:.2}x {}",
                        row.per_second / baseline.per_second,
                        baseline.name
                    )
                })
                .collect();
            println!(
                "  {:<32} {:>8.2} M/s   {}",
                row.name,
                row.per_second / 1e6,
                ratios.join(", ")
            );
        }
    }
}

/// Finds every `new/benchmark.json` (with its `new/estimates.json`) below `dir`.
fn collect(dir: &Path, rows: &mut Vec<Row>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|name| name == "new") {
            if let Some(row) = read_row(&path) {
                rows.push(row);
            }
        } else if path.is_dir() {
            collect(&path, rows);
        }
    }
}

fn read_row(new: &Path) -> Option<Row> {
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(new.join(name)).ok()?).ok()
    };
    let benchmark = read("benchmark.json")?;
    let estimates = read("estimates.json")?;
    let group = benchmark["group_id"].as_str()?;
    let function = benchmark["function_id"].as_str()?;
    let elements = benchmark["throughput"]["Elements"].as_f64()?;
    let median_ns = estimates["median"]["point_estimate"].as_f64()?;
    let (workload, name) = match function.split_once('/') {
        Some((part, name)) => (format!("{group}/{part}"), name.to_string()),
        None => (group.to_string(), function.to_string()),
    };
    Some(Row {
        workload,
        name,
        per_second: elements / (median_ns * 1e-9),
    })
}
