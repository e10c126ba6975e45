//! `--plot FILE.svg`: the latency percentile curve (HdrHistogram style, a log-scaled
//! "percentile" axis) and outcomes/s over run time, confirmed and rejected apart, with the
//! sale openings and each SKU's sell-out marked.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::output::RunJson;
use crate::scenario::Mode;

/// Nines shown on the percentile axis: 0 is the median's left edge (0%), 5 is 99.999%.
const NINES_MAX: f64 = 5.0;
const CONFIRMED: RGBColor = RGBColor(0x1b, 0x9e, 0x4b);
const REJECTED: RGBColor = RGBColor(0xd6, 0x3a, 0x2f);
const OPENING: RGBColor = RGBColor(0x2b, 0x5c, 0xd6);

fn percentile_label(nines: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("{percent:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// A rate as people say it: 850/s, 12k/s, 2.5M/s.
fn rate_label(per_s: &f64) -> String {
    let trimmed = |x: f64| {
        let text = format!("{x:.1}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match *per_s {
        x if x >= 1e6 => format!("{}M/s", trimmed(x / 1e6)),
        x if x >= 1e3 => format!("{}k/s", trimmed(x / 1e3)),
        x => format!("{}/s", trimmed(x)),
    }
}

/// A latency on a log axis: 100 ns, 10 µs, 2.5 ms (no trailing zeros).
fn latency_label(ns: &f64) -> String {
    let (value, unit) = match *ns {
        x if x >= 1e9 => (x / 1e9, "s"),
        x if x >= 1e6 => (x / 1e6, "ms"),
        x if x >= 1e3 => (x / 1e3, "µs"),
        x => (x, "ns"),
    };
    let text = format!("{value:.1}");
    format!(
        "{} {unit}",
        text.trim_end_matches('0').trim_end_matches('.')
    )
}

/// Run time in the unit that suits the run's length.
fn time_label(ms: &f64, in_seconds: bool) -> String {
    if in_seconds {
        let text = format!("{:.2}", ms / 1e3);
        format!("{} s", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{ms:.0} ms")
    }
}

fn failed(error: impl std::fmt::Display) -> String {
    error.to_string()
}

/// Whether the plot's file can be written, checked before a run: the file is opened for
/// writing (made if missing, and then removed again), its contents left as they are.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if !existed {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

pub fn draw(path: &Path, run: &RunJson, latency_ns: &Histogram<u64>) -> Result<(), String> {
    let root = SVGBackend::new(path, (1100, 860)).into_drawing_area();
    root.fill(&WHITE).map_err(failed)?;
    let (top, bottom) = root.split_vertically(420);
    draw_latency(&top, run, latency_ns)?;
    draw_timeline(&bottom, run)?;
    root.present().map_err(failed)?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The top chart: latency by percentile (0 to 5 nines) on a log scale.
fn draw_latency(top: &Area<'_>, run: &RunJson, latency_ns: &Histogram<u64>) -> Result<(), String> {
    let scenario = &run.scenario;
    let (loop_name, measured_from) = match (scenario.mode, scenario.latency_sample) {
        (Mode::Open, _) => ("open loop", "intended send".to_string()),
        (Mode::Closed, 1) => ("closed loop", "submit".to_string()),
        (Mode::Closed, n) => ("closed loop", format!("submit, one press in {n}")),
    };

    let points: Vec<(f64, f64)> = (0..=500)
        .map(|step| {
            let nines = f64::from(step) / 100.0;
            let quantile = (1.0 - 10f64.powf(-nines)).min(1.0);
            let ns = latency_ns.value_at_quantile(quantile).max(1) as f64;
            (nines, ns)
        })
        .collect();
    let latency_max = points.iter().map(|&(_, ns)| ns).fold(1.0, f64::max) * 1.5;
    let latency_min = points
        .iter()
        .map(|&(_, ns)| ns)
        .fold(f64::MAX, f64::min)
        .max(10.0)
        / 1.5;
    let mut chart = ChartBuilder::on(top)
        .caption(
            format!(
                "{} (seed {}, {loop_name}): latency by percentile, from {measured_from} to outcome",
                scenario.name, scenario.seed
            ),
            ("sans-serif", 20),
        )
        .margin_top(10)
        .margin_left(10)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..NINES_MAX, (latency_min..latency_max).log_scale())
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_labels(6)
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&latency_label)
        .draw()
        .map_err(failed)?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(failed)?;

    Ok(())
}

/// The bottom chart: confirmed and rejected outcomes per second over the run, with the
/// openings and sell-outs marked.
fn draw_timeline(bottom: &Area<'_>, run: &RunJson) -> Result<(), String> {
    let t_max_ms = run
        .timeline
        .last()
        .map_or(10.0, |point| point.t_ms as f64 + 10.0)
        .max(10.0);
    let in_seconds = t_max_ms >= 2_000.0;
    let rate_max = run
        .timeline
        .iter()
        .map(|point| point.confirmed_per_s.max(point.rejected_per_s))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(bottom)
        .caption(
            format!(
                "outcomes per second over run time (10 ms buckets); {} intents, {} orders",
                run.intents, run.confirmed_orders
            ),
            ("sans-serif", 20),
        )
        .margin_top(10)
        .margin_left(10)
        .margin_right(40)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..t_max_ms, 0f64..rate_max)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("run time")
        .y_desc("outcomes per second")
        .x_labels(8)
        .x_label_formatter(&|ms: &f64| time_label(ms, in_seconds))
        .y_label_formatter(&rate_label)
        .draw()
        .map_err(failed)?;
    // Rejections first, so that the (usually far fewer) confirmations are drawn on top.
    for (name, color, value) in [
        (
            "rejected",
            REJECTED,
            (|point: &crate::output::TimelinePoint| point.rejected_per_s)
                as fn(&crate::output::TimelinePoint) -> f64,
        ),
        ("confirmed", CONFIRMED, |point| point.confirmed_per_s),
    ] {
        chart
            .draw_series(LineSeries::new(
                run.timeline
                    .iter()
                    .map(|point| (point.t_ms as f64, value(point))),
                color.stroke_width(2),
            ))
            .map_err(failed)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    draw_marks(&mut chart, run, t_max_ms, rate_max)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(failed)?;
    Ok(())
}

/// Openings as vertical lines, sell-outs as triangles.
fn draw_marks(
    chart: &mut Chart<'_, '_>,
    run: &RunJson,
    t_max_ms: f64,
    rate_max: f64,
) -> Result<(), String> {
    // Openings (after the run's start) as vertical lines; with many products opening at
    // once they coincide.
    let openings: Vec<f64> = run
        .opens_at_run_ms
        .iter()
        .copied()
        .filter(|&ms| ms > 0.0 && ms < t_max_ms)
        .collect();
    if !openings.is_empty() {
        chart
            .draw_series(openings.iter().map(|&ms| {
                PathElement::new(vec![(ms, 0.0), (ms, rate_max)], OPENING.stroke_width(1))
            }))
            .map_err(failed)?
            .label("sale opens")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], OPENING.stroke_width(1)));
    }
    let sell_outs: Vec<f64> = run
        .skus
        .iter()
        .filter_map(|sku| sku.sold_out_at_run_ms)
        .filter(|&ms| ms < t_max_ms)
        .collect();
    if !sell_outs.is_empty() {
        let marker_y = rate_max / 1.15;
        chart
            .draw_series(
                sell_outs
                    .iter()
                    .map(|&ms| TriangleMarker::new((ms, marker_y), 6, BLACK.filled())),
            )
            .map_err(failed)?
            .label(format!("a SKU sells out ({})", sell_outs.len()))
            .legend(|(x, y)| TriangleMarker::new((x + 10, y), 6, BLACK.filled()));
    }
    Ok(())
}
