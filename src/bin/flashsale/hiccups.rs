//! `flashsale hiccups`: how long the machine itself stops a spinning thread (in the manner
//! of jHiccup). Each thread reads the clock in a tight loop and records every gap between
//! two readings; with nothing to do but read the clock, any gap above a few tens of ns is
//! the platform (timer ticks, interrupts, the hypervisor taking the vCPU), and it bounds
//! from below the tail latency any engine can show on this machine.

use std::time::Duration;

use clap::Args;
use flashsale::report::Nanos;
use hdrhistogram::Histogram;
use serde::Serialize;

/// `flashsale hiccups` arguments.
#[derive(Args)]
pub struct HiccupArgs {
    /// Spinning threads (the simulator's producer and shard are 2); at most one per CPU,
    /// since more would measure each other rather than the machine.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// How long to measure, in seconds (at most 3600).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Print the figures as JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Gaps above one threshold.
#[derive(Debug, Serialize)]
struct OverJson {
    threshold_ns: u64,
    gaps: u64,
    per_s_per_thread: f64,
    /// Share of the measured time lost in such gaps, in percent.
    percent_of_time: f64,
}

/// What `hiccups --json` prints.
#[derive(Debug, Serialize)]
struct HiccupsJson {
    threads: u32,
    seconds: f64,
    cpus: usize,
    over: Vec<OverJson>,
    longest_ns: u64,
}

/// Runs the meter and prints one line per threshold; `Err` names a bad knob.
pub fn hiccups(args: &HiccupArgs) -> Result<bool, String> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if !(1..=cpus as u64).contains(&u64::from(args.threads)) {
        return Err(format!(
            "threads: must be 1..={cpus} (one per CPU of this machine), got {}",
            args.threads
        ));
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(format!(
            "seconds: must be above 0 and at most 3600, got {}",
            args.seconds
        ));
    }
    let span = Duration::from_secs_f64(args.seconds);
    let threads: Vec<_> = (0..args.threads)
        .map(|_| std::thread::spawn(move || spin(span)))
        .collect();
    let mut gaps = flashsale::report::latency_histogram();
    for thread in threads {
        let theirs = thread
            .join()
            .map_err(|_| "a meter thread panicked".to_string())?;
        let _ = gaps.add(&theirs);
    }
    let total_ns = span.as_nanos() as f64 * f64::from(args.threads);
    let over: Vec<OverJson> = [1_000u64, 10_000, 100_000, 1_000_000, 5_000_000]
        .into_iter()
        .map(|threshold| {
            let (count, lost) = gaps
                .iter_recorded()
                .filter(|value| value.value_iterated_to() > threshold)
                .fold((0u64, 0u64), |(count, lost), value| {
                    let n = value.count_at_value();
                    (count + n, lost + n * value.value_iterated_to())
                });
            OverJson {
                threshold_ns: threshold,
                gaps: count,
                per_s_per_thread: count as f64 / args.seconds / f64::from(args.threads),
                percent_of_time: lost as f64 / total_ns * 100.0,
            }
        })
        .collect();
    let report = HiccupsJson {
        threads: args.threads,
        seconds: args.seconds,
        cpus,
        over,
        longest_ns: gaps.max(),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|error| error.to_string())?;
        println!("{text}");
        return Ok(true);
    }
    println!(
        "{} thread(s) spinning for {:.1} s on {} CPUs; gaps between clock readings:",
        report.threads, report.seconds, report.cpus
    );
    for line in &report.over {
        println!(
            "  over {:>9}: {:>8} ({:>8.1}/s per thread), {:.3}% of the time",
            Nanos(line.threshold_ns).to_string(),
            line.gaps,
            line.per_s_per_thread,
            line.percent_of_time
        );
    }
    println!("  longest: {}", Nanos(report.longest_ns));
    Ok(true)
}

fn spin(span: Duration) -> Histogram<u64> {
    let clock = quanta::Clock::new();
    let mut gaps = flashsale::report::latency_histogram();
    let start = clock.raw();
    let end_ns = span.as_nanos() as u64;
    let mut last = start;
    loop {
        let now = clock.raw();
        let gap = clock.delta_as_nanos(last, now);
        // Gaps of a few ns are the loop itself; keep the histogram to the pauses.
        if gap >= 200 {
            gaps.saturating_record(gap);
        }
        last = now;
        if clock.delta_as_nanos(start, now) >= end_ns {
            return gaps;
        }
    }
}
