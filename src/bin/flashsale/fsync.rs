//! `flashsale fsync`: how long this machine's disk takes to make an append durable, the
//! floor under a durable group commit (one `write` plus one `fdatasync` per group).

use std::io::Write;
use std::path::{Path, PathBuf};
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
    /// `tmpfs` or `ramfs` where the directory is on a filesystem in memory (whose syncs
    /// reach no disk), else null.
    in_memory_filesystem: Option<&'static str>,
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
        in_memory_filesystem: in_memory_filesystem(&args.dir),
        count: args.count,
        bytes: args.bytes,
        per_s: f64::from(args.count) / elapsed,
        p50_ns: latency.value_at_quantile(0.5),
        p90_ns: latency.value_at_quantile(0.9),
        p99_ns: latency.value_at_quantile(0.99),
        max_ns: latency.max(),
    };
    if let Some(kind) = report.in_memory_filesystem {
        note!(
            "note: {} is on {kind}, in memory: its syncs reach no disk, so these are not a \
             disk's figures",
            args.dir.display()
        );
    }
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

/// The in-memory filesystem (`tmpfs`, `ramfs`) that `dir` is on, if it is on one: what is
/// written and synced there lives in memory, so it survives a restart of the process but
/// not of the machine, and a sync there costs what a copy does. `None` elsewhere, and
/// where the filesystem cannot be read.
#[cfg(target_os = "linux")]
pub fn in_memory_filesystem(dir: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string alive for the call, and `stats` is room for
    // one `statfs`, which the call only writes.
    if unsafe { libc::statfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: `statfs` returned 0, so it filled `stats` in.
    let kind = unsafe { stats.assume_init() }.f_type;
    #[allow(
        clippy::unnecessary_cast,
        reason = "the field's type differs by platform"
    )]
    // The filesystems' magic numbers, as linux/magic.h has them.
    match kind as u64 & 0xFFFF_FFFF {
        0x0102_1994 => Some("tmpfs"),
        0x8584_58f6 => Some("ramfs"),
        _ => None,
    }
}

/// Elsewhere than Linux: not known, so never said.
#[cfg(not(target_os = "linux"))]
pub fn in_memory_filesystem(_: &Path) -> Option<&'static str> {
    None
}
