//! `flashsale fsync`: how long this machine's disk takes to make an append durable, the
//! floor under a durable group commit (one `write` plus one `fdatasync` per group).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use flashsale::report::Nanos;

/// `flashsale fsync` arguments.
#[derive(Args)]
pub struct FsyncArgs {
    /// Directory on the disk to measure (a scratch file is created and removed there).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Appends to time.
    #[arg(long, default_value_t = 500)]
    count: u32,
    /// Bytes per append (a group of 100 intents is about 5 KB of journal).
    #[arg(long, default_value_t = 4096)]
    bytes: usize,
}

/// Times `count` appends of `bytes` each followed by `fdatasync`.
pub fn fsync(args: &FsyncArgs) -> Result<bool, String> {
    if args.count == 0 || args.bytes == 0 || args.bytes > 64 << 20 {
        return Err("count: and bytes must be at least 1 (bytes at most 64 MiB)".into());
    }
    let path = args
        .dir
        .join(format!(".flashsale-fsync-{}", std::process::id()));
    let failed = |error: std::io::Error| format!("dir: {}: {error}", args.dir.display());
    let mut file = std::fs::File::create(&path).map_err(failed)?;
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
    let _ = std::fs::remove_file(&path);
    result.map_err(failed)?;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{} appends of {} bytes + fdatasync in {}: {:.0}/s; p50 {} | p90 {} | p99 {} | max {}",
        args.count,
        args.bytes,
        args.dir.display(),
        f64::from(args.count) / elapsed,
        Nanos(latency.value_at_quantile(0.5)),
        Nanos(latency.value_at_quantile(0.9)),
        Nanos(latency.value_at_quantile(0.99)),
        Nanos(latency.max())
    );
    Ok(true)
}
