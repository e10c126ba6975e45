//! What an engine did: outcome counts by reason, per-SKU levels, and submit-to-outcome
//! latency percentiles from HDR histograms merged across shards.

use core::fmt;

use hdrhistogram::Histogram;

use crate::catalog::{Catalog, Placement};
use crate::core::{PoolLevels, SkuLevels};
use crate::types::{RejectReason, ShardId, SkuId};

// The layouts of the counts the engine keeps and this report reads. They live here, with
// their one reader, so that the report depends on nothing of the engine's.

/// A shard's count slots: one per [`RejectReason`], then confirmed orders, then confirmed
/// units.
pub const COUNTER_SLOTS: usize = RejectReason::ALL.len() + 2;
pub(crate) const CONFIRMED_ORDERS: usize = RejectReason::ALL.len();
pub(crate) const CONFIRMED_UNITS: usize = RejectReason::ALL.len() + 1;

/// A producer's count slots: one per [`RejectReason`] answered at submit, then the three
/// kinds of refusal.
pub const PRODUCER_SLOTS: usize = RejectReason::ALL.len() + 3;
pub(crate) const REFUSED_BUSY: usize = RejectReason::ALL.len();
pub(crate) const REFUSED_SHUT_DOWN: usize = RejectReason::ALL.len() + 1;
pub(crate) const REFUSED_SHARD_FAILED: usize = RejectReason::ALL.len() + 2;

/// The largest latency any of the crate's histograms records, ns (one hour); longer ones
/// saturate to it.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// An empty latency histogram: 1 ns to [`LATENCY_NS_MAX`], 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("constant bounds are valid")
}

/// Latency percentiles, in nanoseconds, read off an HDR histogram (3 significant digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// 99.99th percentile.
    pub p9999_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
    /// Mean, rounded down.
    pub mean_ns: u64,
}

impl LatencySummary {
    /// Reads the percentiles off a histogram of nanoseconds, in one pass over its buckets
    /// (the same values as [`Histogram::value_at_quantile`] and [`Histogram::mean`], which
    /// would walk its 33,000 buckets once each).
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        const QUANTILES: [f64; 5] = [0.50, 0.90, 0.99, 0.999, 0.9999];
        let total = histogram.len();
        if total == 0 {
            return Self::default();
        }
        // As `value_at_quantile`: the first bucket at which the running count reaches
        // `ceil(quantile * total)`, at least 1, read as its highest equivalent value.
        let targets = QUANTILES.map(|quantile| ((quantile * total as f64).ceil() as u64).max(1));
        let mut values = [0u64; QUANTILES.len()];
        let mut next = 0;
        let mut seen = 0u64;
        let mut mean = 0.0_f64;
        for bucket in histogram.iter_recorded() {
            let count = bucket.count_at_value();
            seen += count;
            while next < targets.len() && seen >= targets[next] {
                values[next] = bucket.value_iterated_to();
                next += 1;
            }
            mean += histogram.median_equivalent(bucket.value_iterated_to()) as f64 * count as f64
                / total as f64;
        }
        let [p50_ns, p90_ns, p99_ns, p999_ns, p9999_ns] = values;
        Self {
            samples: total,
            p50_ns,
            p90_ns,
            p99_ns,
            p999_ns,
            p9999_ns,
            max_ns: histogram.max(),
            mean_ns: mean as u64,
        }
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} | p90 {} | p99 {} | p99.9 {} | p99.99 {} | max {} ({} samples)",
            Nanos(self.p50_ns),
            Nanos(self.p90_ns),
            Nanos(self.p99_ns),
            Nanos(self.p999_ns),
            Nanos(self.p9999_ns),
            Nanos(self.max_ns),
            self.samples
        )
    }
}

/// A duration in ns, printed with a readable unit.
#[derive(Debug, Clone, Copy)]
pub struct Nanos(pub u64);

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns < 10_000 {
            write!(f, "{ns} ns")
        } else if ns < 10_000_000 {
            write!(f, "{:.1} µs", ns as f64 / 1e3)
        } else {
            write!(f, "{:.1} ms", ns as f64 / 1e6)
        }
    }
}

/// One SKU's final levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuReport {
    /// The SKU.
    pub id: SkuId,
    /// Its product label.
    pub product: String,
    /// Its variant label.
    pub variant: String,
    /// The shard that owned it.
    pub shard: ShardId,
    /// Units for sale at the start.
    pub stock: u32,
    /// Units held by confirmed orders awaiting payment.
    pub held: u32,
    /// Units left.
    pub available: u32,
    /// Units paid for.
    pub sold: u32,
    /// Units whose hold expired unpaid (they went back on sale).
    pub expired: u64,
    /// Units of cancelled orders (they went back on sale).
    pub cancelled: u64,
    /// Units restocked.
    pub restocked: u64,
    /// Units taken off sale by reductions.
    pub reduced: u64,
    /// Intents confirmed from the waitlist.
    pub waitlist_filled: u64,
}

/// Submits that were refused (the intent went back to its caller; not outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Refusals {
    /// [`SubmitError::Busy`](crate::SubmitError::Busy).
    pub busy: u64,
    /// [`SubmitError::ShutDown`](crate::SubmitError::ShutDown).
    pub shut_down: u64,
    /// [`SubmitError::ShardFailed`](crate::SubmitError::ShardFailed).
    pub shard_failed: u64,
}

/// A shard worker's final account, returned by its thread.
#[derive(Debug)]
pub(crate) struct ShardReport {
    pub(crate) shard: ShardId,
    pub(crate) failed: bool,
    pub(crate) failure: Option<crate::ShardFailure>,
    pub(crate) snapshot_failures: u64,
    pub(crate) snapshot_error: Option<String>,
    pub(crate) counts: [u64; COUNTER_SLOTS],
    pub(crate) levels: Vec<SkuLevels>,
    pub(crate) pools: Vec<PoolLevels>,
    pub(crate) commands_applied: u64,
    pub(crate) recovered_commands: u64,
    pub(crate) journal_commits: u64,
    pub(crate) snapshots: u64,
    pub(crate) latency_ns: Histogram<u64>,
}

impl ShardReport {
    /// The account of a shard whose thread died (an engine bug): nothing is known.
    pub(crate) fn lost(shard: ShardId) -> Self {
        Self {
            shard,
            failed: true,
            failure: Some(crate::ShardFailure::Panicked(
                "its thread died; nothing of its state is known".to_owned(),
            )),
            snapshot_failures: 0,
            snapshot_error: None,
            counts: [0; COUNTER_SLOTS],
            levels: Vec::new(),
            pools: Vec::new(),
            commands_applied: 0,
            recovered_commands: 0,
            journal_commits: 0,
            snapshots: 0,
            latency_ns: Histogram::new(3).expect("3 significant figures is valid"),
        }
    }
}

/// The final account of an engine, from [`Engine::shutdown`](crate::Engine::shutdown).
#[derive(Debug, Clone)]
pub struct Report {
    /// Shards the engine ran.
    pub shards: usize,
    /// Orders confirmed.
    pub confirmed_orders: u64,
    /// Units those orders hold.
    pub confirmed_units: u64,
    /// Rejections per reason, indexed by [`RejectReason::index`], whoever decided them.
    pub rejections: [u64; RejectReason::ALL.len()],
    /// How many of those rejections producers answered at submit (malformed, unknown SKU,
    /// sold-out gate), without queueing.
    pub answered_at_submit: u64,
    /// Refused submits.
    pub refusals: Refusals,
    /// Commands the shards applied (their sequence numbers used), recovered ones included.
    pub commands_applied: u64,
    /// Commands replayed from the journals at start-up, after the snapshot each shard was
    /// restored from (0 without a journal).
    pub recovered_commands: u64,
    /// Group commits of the journals (0 without a journal).
    pub journal_commits: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Snapshots that could not be written (each was skipped: the journal alone still
    /// recovers).
    pub snapshots_failed: u64,
    /// Each shard whose snapshots could not be written: how many, and the last error.
    pub snapshot_failures: Vec<(ShardId, u64, String)>,
    /// Per SKU, in catalog order.
    pub skus: Vec<SkuReport>,
    /// The pools of pooled products (opening draws, one-each-first), by shard.
    pub pools: Vec<PoolLevels>,
    /// Shards that failed (see [`failures`](Self::failures) for why).
    pub failed_shards: Vec<ShardId>,
    /// Each failed shard and why it failed (its journal could not be written, its order
    /// sink panicked, or a bug), in shard order.
    pub failures: Vec<(ShardId, crate::ShardFailure)>,
    /// Submit-to-outcome latency of the intents that reached a shard, merged over shards.
    pub latency: LatencySummary,
    /// The merged histogram behind [`latency`](Self::latency), in ns.
    pub latency_histogram: Histogram<u64>,
}

impl Report {
    /// Up to this many SKUs, the report's text ([`Display`](fmt::Display)) has a row for
    /// each; past it, rows for the [`SKU_ROWS_BUSIEST`](Self::SKU_ROWS_BUSIEST) SKUs with
    /// the most units held or sold (in catalog order), then the totals of all
    /// ([`skus`](Self::skus) has every one).
    pub const SKU_ROWS: usize = 40;
    /// See [`SKU_ROWS`](Self::SKU_ROWS).
    pub const SKU_ROWS_BUSIEST: usize = 20;

    pub(crate) fn new(
        catalog: &Catalog,
        placement: &Placement,
        mut shard_reports: Vec<ShardReport>,
        producer_counts: &[u64; PRODUCER_SLOTS],
    ) -> Self {
        let Totals {
            mut rejections,
            confirmed_orders,
            confirmed_units,
            commands_applied,
            recovered_commands,
            journal_commits,
            snapshots,
            snapshot_failures,
            failed_shards,
            failures,
            latency_histogram,
        } = Totals::of(&mut shard_reports);
        let levels_of_shard: Vec<&Vec<SkuLevels>> =
            shard_reports.iter().map(|report| &report.levels).collect();
        let mut answered_at_submit = 0;
        for (total, count) in rejections.iter_mut().zip(producer_counts) {
            *total += count;
            answered_at_submit += count;
        }
        let skus = catalog
            .skus()
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let (shard, local) = placement.route(index);
                let levels = levels_of_shard
                    .get(usize::from(shard.0))
                    .and_then(|levels| levels.get(local as usize));
                SkuReport::of(spec, shard, levels)
            })
            .collect();
        let pools = shard_reports
            .iter()
            .flat_map(|report| report.pools.iter().copied())
            .collect();
        Self {
            pools,
            shards: shard_reports.len(),
            confirmed_orders,
            confirmed_units,
            rejections,
            answered_at_submit,
            refusals: Refusals {
                busy: producer_counts[REFUSED_BUSY],
                shut_down: producer_counts[REFUSED_SHUT_DOWN],
                shard_failed: producer_counts[REFUSED_SHARD_FAILED],
            },
            commands_applied,
            recovered_commands,
            journal_commits,
            snapshots,
            snapshots_failed: snapshot_failures.iter().map(|(_, count, _)| count).sum(),
            snapshot_failures,
            skus,
            failed_shards,
            failures,
            latency: LatencySummary::from_histogram(&latency_histogram),
            latency_histogram,
        }
    }

    /// Rejections for one reason (any `Duplicate` id counts as `Duplicate`).
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejections[reason.index()]
    }

    /// All outcomes: confirmed orders plus rejections.
    pub fn outcomes(&self) -> u64 {
        self.confirmed_orders + self.rejections.iter().sum::<u64>()
    }
}

/// The shards' counts summed, and their latency histograms merged.
struct Totals {
    rejections: [u64; RejectReason::ALL.len()],
    confirmed_orders: u64,
    confirmed_units: u64,
    commands_applied: u64,
    recovered_commands: u64,
    journal_commits: u64,
    snapshots: u64,
    snapshot_failures: Vec<(ShardId, u64, String)>,
    failed_shards: Vec<ShardId>,
    failures: Vec<(ShardId, crate::ShardFailure)>,
    latency_histogram: Histogram<u64>,
}

impl Totals {
    fn of(reports: &mut [ShardReport]) -> Self {
        // The first shard's histogram takes the others' counts (they share their bounds),
        // rather than allocating one more of about 270 KB.
        let latency_histogram = match reports.first_mut() {
            Some(first) => std::mem::replace(
                &mut first.latency_ns,
                Histogram::new(1).expect("one significant digit is valid"),
            ),
            None => latency_histogram(),
        };
        let mut totals = Self {
            rejections: [0; RejectReason::ALL.len()],
            confirmed_orders: 0,
            confirmed_units: 0,
            commands_applied: 0,
            recovered_commands: 0,
            journal_commits: 0,
            snapshots: 0,
            snapshot_failures: Vec::new(),
            failed_shards: Vec::new(),
            failures: Vec::new(),
            latency_histogram,
        };
        for (position, report) in reports.iter().enumerate() {
            for (total, count) in totals.rejections.iter_mut().zip(&report.counts) {
                *total += count;
            }
            totals.confirmed_orders += report.counts[CONFIRMED_ORDERS];
            totals.confirmed_units += report.counts[CONFIRMED_UNITS];
            totals.commands_applied += report.commands_applied;
            totals.recovered_commands += report.recovered_commands;
            totals.journal_commits += report.journal_commits;
            totals.snapshots += report.snapshots;
            if report.snapshot_failures > 0 {
                totals.snapshot_failures.push((
                    report.shard,
                    report.snapshot_failures,
                    report.snapshot_error.clone().unwrap_or_default(),
                ));
            }
            if report.failed {
                totals.failed_shards.push(report.shard);
                // A failed shard's worker names why before it raises the flag.
                if let Some(why) = &report.failure {
                    totals.failures.push((report.shard, why.clone()));
                }
            }
            if position > 0 {
                // Histograms with identical bounds always merge; a lost shard's is empty.
                let _ = totals.latency_histogram.add(&report.latency_ns);
            }
        }
        totals
    }
}

impl SkuReport {
    /// A SKU's line: its spec, and the levels its shard reported (zeros if the shard's
    /// report was lost).
    pub fn of(spec: &crate::catalog::SkuSpec, shard: ShardId, levels: Option<&SkuLevels>) -> Self {
        let level = |read: fn(&SkuLevels) -> u64| levels.map_or(0, read);
        Self {
            id: spec.id,
            product: spec.product.clone(),
            variant: spec.variant.clone(),
            shard,
            stock: spec.stock,
            held: levels.map_or(0, |levels| levels.held),
            available: levels.map_or(0, |levels| levels.available),
            sold: levels.map_or(0, |levels| levels.sold),
            expired: level(|levels| levels.expired),
            cancelled: level(|levels| levels.cancelled),
            restocked: level(|levels| levels.restocked),
            reduced: level(|levels| levels.reduced),
            waitlist_filled: level(|levels| levels.waitlist_filled),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "outcomes {:>12}   confirmed orders {} ({} units)   shards {}",
            self.outcomes(),
            self.confirmed_orders,
            self.confirmed_units,
            self.shards
        )?;
        writeln!(
            f,
            "rejections (answered at submit: {}):",
            self.answered_at_submit
        )?;
        for reason in RejectReason::ALL {
            let count = self.rejected(reason);
            if count > 0 {
                writeln!(f, "  {:<20}{count:>12}", reason.name())?;
            }
        }
        writeln!(
            f,
            "refused submits: busy {}, shut down {}, shard failed {}",
            self.refusals.busy, self.refusals.shut_down, self.refusals.shard_failed
        )?;
        for (shard, why) in &self.failures {
            writeln!(f, "FAILED shard {}: {why}", shard.0)?;
        }
        for (shard, count, why) in &self.snapshot_failures {
            writeln!(
                f,
                "snapshots of shard {} not written: {count} (the last: {why}); its journal alone recovers it",
                shard.0
            )?;
        }
        writeln!(f, "submit-to-outcome latency: {}", self.latency)?;
        writeln!(
            f,
            "{:>8}  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "sku", "product / variant", "stock", "held", "sold", "expired", "left"
        )?;
        // A large catalog: the SKUs that sold most, and the totals (a line per SKU of
        // 200,000 is a log no one reads, and took seconds to write at a server's stop).
        let shown: Vec<&SkuReport> = if self.skus.len() <= Self::SKU_ROWS {
            self.skus.iter().collect()
        } else {
            let mut busiest: Vec<(usize, &SkuReport)> = self.skus.iter().enumerate().collect();
            busiest.sort_by_key(|&(at, sku)| {
                (
                    std::cmp::Reverse(u64::from(sku.sold) + u64::from(sku.held)),
                    at,
                )
            });
            busiest.truncate(Self::SKU_ROWS_BUSIEST);
            busiest.sort_by_key(|&(at, _)| at);
            busiest.into_iter().map(|(_, sku)| sku).collect()
        };
        for sku in &shown {
            let label = fit_words(&format!("{} {}", sku.product, sku.variant), 23);
            writeln!(
                f,
                "{:>8}  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
                sku.id.0, label, sku.stock, sku.held, sku.sold, sku.expired, sku.available
            )?;
        }
        if shown.len() < self.skus.len() {
            let sum = |field: fn(&SkuReport) -> u64| self.skus.iter().map(field).sum::<u64>();
            writeln!(
                f,
                "{:>8}  {} more SKUs",
                "...",
                self.skus.len() - shown.len()
            )?;
            writeln!(
                f,
                "{:>8}  {:<24}{:>10}{:>10}{:>10}{:>10}{:>10}",
                "all",
                format!("{} SKUs", self.skus.len()),
                sum(|sku| u64::from(sku.stock)),
                sum(|sku| u64::from(sku.held)),
                sum(|sku| u64::from(sku.sold)),
                sum(|sku| sku.expired),
                sum(|sku| u64::from(sku.available))
            )?;
        }
        for pool in &self.pools {
            writeln!(
                f,
                "pool of SKU {}: {:?}, {} buyers pooled{}",
                pool.first_sku.0,
                pool.policy,
                pool.tickets,
                if pool.served { "" } else { " (not served)" }
            )?;
        }
        Ok(())
    }
}

/// `text` in at most `width` characters: whole when it fits, else cut after the last whole
/// word that fits with an ellipsis (or mid-word only when one word is wider than that).
fn fit_words(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let room = width.saturating_sub(1);
    let mut fitted = String::new();
    for word in text.split_whitespace() {
        let needed =
            fitted.chars().count() + usize::from(!fitted.is_empty()) + word.chars().count();
        if needed > room {
            break;
        }
        if !fitted.is_empty() {
            fitted.push(' ');
        }
        fitted.push_str(word);
    }
    if fitted.is_empty() {
        fitted = text.chars().take(room).collect();
    }
    fitted.push('…');
    fitted
}

#[cfg(test)]
mod fit_tests {
    use super::fit_words;

    #[test]
    fn labels_are_cut_between_words() {
        assert_eq!(
            fit_words("seller 0 product 1 variant 2", 40),
            "seller 0 product 1 variant 2"
        );
        assert_eq!(
            fit_words("seller 0 product 1 variant 2", 23),
            "seller 0 product 1…"
        );
        assert_eq!(fit_words("Supercalifragilistic-shoe", 10), "Supercali…");
        assert!(fit_words("a b c d e f g h i j k l m n", 9).chars().count() <= 9);
    }
}

#[cfg(test)]
mod summary_tests {
    use super::{LatencySummary, latency_histogram};

    /// The one-pass summary reads the same values as the histogram's own per-quantile
    /// walks, on small and large, narrow and heavy-tailed samples.
    #[test]
    #[cfg_attr(
        miri,
        ignore = "walks of 33,000-bucket histograms, no unsafe; minutes under Miri"
    )]
    fn one_pass_summary_matches_the_histogram_walks() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        for (samples, spread) in [
            (1, 10),
            (2, 1_000),
            (7, 1),
            (1_000, 50_000),
            (100_000, 1 << 30),
        ] {
            let mut histogram = latency_histogram();
            for _ in 0..samples {
                // A few far outliers among the bulk.
                let value = if next() % 97 == 0 {
                    next() << 8
                } else {
                    next() % spread
                };
                histogram.saturating_record(value.max(1));
            }
            let summary = LatencySummary::from_histogram(&histogram);
            let expected = LatencySummary {
                samples: histogram.len(),
                p50_ns: histogram.value_at_quantile(0.50),
                p90_ns: histogram.value_at_quantile(0.90),
                p99_ns: histogram.value_at_quantile(0.99),
                p999_ns: histogram.value_at_quantile(0.999),
                p9999_ns: histogram.value_at_quantile(0.9999),
                max_ns: histogram.max(),
                mean_ns: histogram.mean() as u64,
            };
            assert_eq!(summary, expected, "{samples} samples spread over {spread}");
        }
        assert_eq!(
            LatencySummary::from_histogram(&latency_histogram()),
            LatencySummary::default()
        );
    }
}
