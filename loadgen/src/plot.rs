//! `--plot FILE.svg`: latency by percentile (log scale of 1/(1-p), as HdrHistogram plots do) and
//! throughput over time, side by side.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// One progress sample: seconds since the start and messages per second in that second.
pub type Sample = (f64, f64);

pub fn write(
    path: &Path,
    title: &str,
    latency: &Histogram<u64>,
    throughput: &[Sample],
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(600);

    // Latency by percentile: x = log10(1/(1-p)) so 90%, 99%, 99.9% ... are evenly spaced.
    let points: Vec<(f64, f64)> = if latency.is_empty() {
        Vec::new()
    } else {
        latency
            .iter_quantiles(4)
            .map(|v| {
                let q = v.quantile_iterated_to().min(0.999_999);
                ((1.0 / (1.0 - q)).log10(), v.value_iterated_to() as f64 / 1000.0)
            })
            .collect()
    };
    let max_latency = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let max_x = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency by percentile (ms)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_x, 0.0..max_latency)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|x| {
            let label = format!("{:.4}", 100.0 * (1.0 - 10f64.powf(-x)));
            format!("{}%", label.trim_end_matches('0').trim_end_matches('.'))
        })
        .y_desc("ms")
        .draw()
        .map_err(|e| e.to_string())?;
    chart.draw_series(LineSeries::new(points, &BLUE)).map_err(|e| e.to_string())?;

    let max_time = throughput.iter().map(|s| s.0).fold(1.0, f64::max);
    let max_rate = throughput.iter().map(|s| s.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("throughput (messages/s)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_time, 0.0..max_rate)
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("seconds").draw().map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(throughput.iter().copied(), &RED))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_both_charts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        let mut histogram = crate::stats::new_histogram();
        for us in 1..=5000u64 {
            histogram.record(us).unwrap();
        }
        write(&path, "test", &histogram, &[(1.0, 100.0), (2.0, 150.0), (3.0, 120.0)]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg")
                && svg.contains("latency by percentile")
                && svg.contains("throughput")
        );
        assert!(svg.matches("<polyline").count() >= 2, "two line series");
    }
}
