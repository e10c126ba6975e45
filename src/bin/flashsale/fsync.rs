//! `flashsale fsync`: how long this machine's disk takes to make an append durable, the
//! floor under a durable group commit (one `write` plus one `fdatasync` per group).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use flashsale::report::Nanos;
use serde::Serialize;

/// Most appends one run times.
const COUNT_MAX: u32 = 100_000;
/// Largest append.
const BYTES_MAX: usize = 64 << 20;

/// `flashsale fsync` arguments.
#[derive(Args)]
pub struct FsyncArgs {
    /// Directory on the disk to measure. A scratch file is created there and removed from
    /// the directory at once (its blocks live until the run ends), so nothing is left
    /// behind even when the run is killed.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Appends to time (at most 100,000).
    #[arg(long, default_value_t = 500)]
    count: u32,
    /// Bytes per append, at most 64 MiB (a group of 100 intents is about 5 KB of journal).
    #[arg(long, default_value_t = 4096)]
    bytes: usize,
    /// Print the figures as JSON instead of a line.
    #[arg(long)]
    json: bool,
}

/// What `fsync --json` prints (times in ns).
#[derive(Debug, Serialize)]
struct FsyncJson {
    dir: PathBuf,
    count: u32,
    bytes: usize,
    per_s: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    max_ns: u64,
}

/// Times `count` appends of `bytes` each followed by `fdatasync`.
pub fn fsync(args: &FsyncArgs) -> Result<bool, String> {
    if !(1..=COUNT_MAX).contains(&args.count) {
        return Err(format!(
            "count: must be 1..={COUNT_MAX}, got {}",
            args.count
        ));
    }
    if !(1..=BYTES_MAX).contains(&args.bytes) {
        return Err(format!(
            "bytes: must be 1..={BYTES_MAX} (64 MiB), got {}",
            args.bytes
        ));
    }
    let path = args
        .dir
        .join(format!(".flashsale-fsync-{}", std::process::id()));
    let failed = |error: std::io::Error| format!("dir: {}: {error}", args.dir.display());
    let mut file = std::fs::File::create(&path).map_err(failed)?;
    // Unlinked while open: the file's blocks are written and synced as any file's, and no
    // signal can leave the scratch file behind. (Where an open file cannot be removed, it
    // is removed after the run instead.)
    let unlinked = std::fs::remove_file(&path).is_ok();
    let block = vec![0x5Au8; args.bytes];
    let mut latency = flashsale::report::latency_histogram();
    let started = Instant::now();
    let result = (|| {
        for _ in 0..args.count {
            let at = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            latency.saturating_record(at.elapsed().as_nanos() as u64);
        }
        Ok::<(), std::io::Error>(())
    })();
    drop(file);
    if !unlinked {
        let _ = std::fs::remove_file(&path);
    }
    result.map_err(failed)?;
    let elapsed = started.elapsed().as_secs_f64();
    let report = FsyncJson {
        dir: args.dir.clone(),
        count: args.count,
        bytes: args.bytes,
        per_s: f64::from(args.count) / elapsed,
        p50_ns: latency.value_at_quantile(0.5),
        p90_ns: latency.value_at_quantile(0.9),
        p99_ns: latency.value_at_quantile(0.99),
        max_ns: latency.max(),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
        println!("{text}");
        return Ok(true);
    }
    println!(
        "{} appends of {} bytes + fdatasync in {}: {:.0}/s; p50 {} | p90 {} | p99 {} | max {}",
        report.count,
        report.bytes,
        report.dir.display(),
        report.per_s,
        Nanos(report.p50_ns),
        Nanos(report.p90_ns),
        Nanos(report.p99_ns),
        Nanos(report.max_ns)
    );
    Ok(true)
}
