//! `--plot FILE.svg`: the latency percentile curve (HdrHistogram style, a log-scaled
//! "percentile" axis) and outcomes/s over time.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::output::RunJson;

/// Nines shown on the percentile axis: 0 is the median's left edge (0%), 5 is 99.999%.
const NINES_MAX: f64 = 5.0;

fn percentile_label(nines: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("{percent:.4}");
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

pub fn draw(path: &Path, run: &RunJson, latency_ns: &Histogram<u64>) -> Result<(), String> {
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|error| error.to_string())?;
    let (top, bottom) = root.split_vertically(400);

    let points: Vec<(f64, f64)> = (0..=500)
        .map(|step| {
            let nines = f64::from(step) / 100.0;
            let quantile = (1.0 - 10f64.powf(-nines)).min(1.0);
            let micros = latency_ns.value_at_quantile(quantile).max(1) as f64 / 1e3;
            (nines, micros)
        })
        .collect();
    let latency_max = points.iter().map(|&(_, micros)| micros).fold(1.0, f64::max) * 1.5;
    let latency_min = points
        .iter()
        .map(|&(_, micros)| micros)
        .fold(f64::MAX, f64::min)
        .max(0.01)
        / 1.5;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!(
                "{}: latency by percentile (from intended send)",
                run.scenario.name
            ),
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..NINES_MAX, (latency_min..latency_max).log_scale())
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(6)
        .x_label_formatter(&percentile_label)
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(LineSeries::new(points, &BLUE))
        .map_err(|error| error.to_string())?;

    let rates: Vec<(f64, f64)> = run
        .timeline
        .iter()
        .map(|point| (point.t_ms as f64 / 1e3, point.intents_per_s / 1e6))
        .collect();
    let t_max = rates.last().map_or(1.0, |&(t, _)| t).max(0.01);
    let rate_max = rates
        .iter()
        .map(|&(_, rate)| rate)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "outcomes per second over run time (10 ms buckets)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..rate_max)
        .map_err(|error| error.to_string())?;
    chart
        .configure_mesh()
        .x_desc("run time (s)")
        .y_desc("M outcomes/s")
        .draw()
        .map_err(|error| error.to_string())?;
    chart
        .draw_series(LineSeries::new(rates, &RED))
        .map_err(|error| error.to_string())?;
    root.present().map_err(|error| error.to_string())?;
    Ok(())
}
