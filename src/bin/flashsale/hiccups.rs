//! `flashsale hiccups`: how long the machine itself stops a spinning thread (in the manner
//! of jHiccup). Each thread reads the clock in a tight loop and records every gap between
//! two readings; with nothing to do but read the clock, any gap above a few tens of ns is
//! the platform (timer ticks, interrupts, the hypervisor taking the vCPU), and it bounds
//! from below the tail latency any engine can show on this machine.

use std::time::Duration;

use clap::Args;
use flashsale::report::Nanos;
use hdrhistogram::Histogram;

/// `flashsale hiccups` arguments.
#[derive(Args)]
pub struct HiccupArgs {
    /// Spinning threads (the simulator's producer and shard are 2).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// Runs the meter and prints one line per threshold; `Err` names a bad knob.
pub fn hiccups(args: &HiccupArgs) -> Result<bool, String> {
    if args.threads == 0 {
        return Err("threads: must be at least 1".into());
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("seconds: must be above 0 and at most 3600".into());
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
    println!(
        "{} thread(s) spinning for {:.1} s on {} CPUs; gaps between clock readings:",
        args.threads,
        args.seconds,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for threshold in [1_000u64, 10_000, 100_000, 1_000_000, 5_000_000] {
        let (count, lost) = gaps
            .iter_recorded()
            .filter(|value| value.value_iterated_to() > threshold)
            .fold((0u64, 0u64), |(count, lost), value| {
                let n = value.count_at_value();
                (count + n, lost + n * value.value_iterated_to())
            });
        println!(
            "  over {:>9}: {:>8} ({:>8.1}/s per thread), {:.3}% of the time",
            Nanos(threshold).to_string(),
            count,
            count as f64 / args.seconds / f64::from(args.threads),
            lost as f64 / total_ns * 100.0
        );
    }
    println!("  longest: {}", Nanos(gaps.max()));
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
