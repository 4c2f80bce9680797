//! A run as a picture (`timeline.svg`): acknowledged writes per second, and acknowledgement
//! latency per second (p50 and p99, log scale), over the run's time, with every fault's window
//! shaded and labelled.
//!
//! Plain SVG text: two polylines per panel, rectangles and labels. (plotters lays out axis
//! labels through a font backend — system fonts or an embedded font file — which is more than
//! this chart needs.)

use std::fmt::Write;

use crate::history::{fault_windows, Event, FaultWindow, Outcome};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_HEIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;
const HEIGHT: f64 = TOP + 2.0 * PANEL_HEIGHT + GAP + 60.0;
/// A fault window's label is drawn only this far (px) from the previous one; the legend and
/// each window's tooltip name them all.
const LABEL_SPACING: f64 = 45.0;
/// Colours of fault kinds, in order of first appearance (then round again).
const FAULT_COLOURS: [&str; 8] =
    ["#e8a09a", "#9ac2e8", "#b5e09a", "#e8d49a", "#c9a0e8", "#9ae0d6", "#e0a9c8", "#c0c0c0"];
/// Seconds in a run's chart at most (one point per second): a bound on the output's size.
const SECONDS_MAX: usize = 24 * 3600;

/// Per second from the run's start: acknowledged sends (by completion time) and their
/// latencies in ms.
struct Series {
    acks: Vec<u64>,
    p50: Vec<Option<u64>>,
    p99: Vec<Option<u64>>,
}

fn series(events: &[Event]) -> Series {
    let mut latencies: Vec<Vec<u64>> = Vec::new();
    for event in events {
        if let Event::Send { outcome: Outcome::Ack, invoke_ms, complete_ms, .. } = event {
            let second = (*complete_ms / 1000) as usize;
            if second >= SECONDS_MAX {
                continue;
            }
            if latencies.len() <= second {
                latencies.resize_with(second + 1, Vec::new);
            }
            latencies[second].push(complete_ms.saturating_sub(*invoke_ms));
        }
    }
    let quantile = |sorted: &[u64], q: f64| {
        (!sorted.is_empty()).then(|| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
    };
    let mut series = Series { acks: Vec::new(), p50: Vec::new(), p99: Vec::new() };
    for mut second in latencies {
        second.sort_unstable();
        series.acks.push(second.len() as u64);
        series.p50.push(quantile(&second, 0.5));
        series.p99.push(quantile(&second, 0.99));
    }
    series
}

/// A round number at or above `v` (1, 2 or 5 times a power of ten).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * power).find(|c| *c >= v).unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG for a run's history.
pub fn svg(events: &[Event], title: &str) -> String {
    let series = series(events);
    let faults: Vec<FaultWindow<'_>> = fault_windows(events).collect();
    let end_ms = faults
        .iter()
        .map(|f| f.end_ms)
        .chain([series.acks.len() as u64 * 1000])
        .max()
        .unwrap_or(0)
        .max(1000);
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |ms: f64| LEFT + plot_width * ms / end_ms as f64;
    let panel_top = [TOP, TOP + PANEL_HEIGHT + GAP];
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{LEFT}" y="18" font-size="12">{}</text>"#, escape(title));
    // Fault windows across both panels, a colour per kind, labelled above the first panel
    // where there is room; every window's tooltip says what it was.
    let mut kinds: Vec<&str> = Vec::new();
    let mut last_label = f64::NEG_INFINITY;
    for fault in &faults {
        let (x0, x1) = (x(fault.start_ms as f64), x(fault.end_ms as f64));
        let bottom = panel_top[1] + PANEL_HEIGHT;
        let kind = fault.kind;
        let index = kinds.iter().position(|k| *k == kind).unwrap_or_else(|| {
            kinds.push(kind);
            kinds.len() - 1
        });
        let colour = FAULT_COLOURS[index % FAULT_COLOURS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{colour}" fill-opacity="0.45"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            bottom - TOP,
            escape(&format!("{kind}: {}", fault.target))
        );
        if x0 - last_label >= LABEL_SPACING {
            last_label = x0;
            let _ = writeln!(
                out,
                r##"<text x="{x0:.1}" y="{}" font-size="9" fill="#444">{}</text>"##,
                TOP - 4.0,
                escape(kind)
            );
        }
    }
    // The legend: each kind's colour, below the second panel.
    let legend_y = panel_top[1] + PANEL_HEIGHT + 48.0;
    for (i, kind) in kinds.iter().enumerate() {
        let lx = LEFT + 110.0 * i as f64;
        let colour = FAULT_COLOURS[i % FAULT_COLOURS.len()];
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{legend_y}">{}</text>"#,
            legend_y - 10.0,
            lx + 16.0,
            escape(kind)
        );
    }
    // Panel 1: acknowledged writes per second.
    let acks_max = nice_ceiling(series.acks.iter().copied().max().unwrap_or(1) as f64);
    let y_acks = |v: f64| panel_top[0] + PANEL_HEIGHT * (1.0 - v / acks_max);
    axes(&mut out, panel_top[0], "acknowledged writes / s", end_ms, &x);
    for i in 0..=4 {
        let v = acks_max * f64::from(i) / 4.0;
        tick_label(&mut out, y_acks(v), &format!("{v:.0}"));
    }
    let points: Vec<(f64, f64)> = series
        .acks
        .iter()
        .enumerate()
        .map(|(s, &n)| (x(s as f64 * 1000.0 + 500.0), y_acks(n as f64)))
        .collect();
    polyline(&mut out, &points, "#2060c0");
    // Panel 2: latency, log scale from 1 ms.
    let latency_max = series.p99.iter().flatten().copied().max().unwrap_or(1).max(10);
    let decades = nice_ceiling(latency_max as f64).log10().ceil().max(1.0);
    let y_latency = |ms: f64| panel_top[1] + PANEL_HEIGHT * (1.0 - ms.max(1.0).log10() / decades);
    axes(&mut out, panel_top[1], "acknowledgement latency, ms (p50 blue, p99 orange)", end_ms, &x);
    for d in 0..=decades as u32 {
        let ms = 10f64.powi(d as i32);
        tick_label(&mut out, y_latency(ms), &format!("{ms:.0}"));
    }
    for (values, colour) in [(&series.p50, "#2060c0"), (&series.p99, "#e07020")] {
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter_map(|(s, v)| v.map(|ms| (x(s as f64 * 1000.0 + 500.0), y_latency(ms as f64))))
            .collect();
        polyline(&mut out, &points, colour);
    }
    out.push_str("</svg>\n");
    out
}

/// A panel's frame, its title and the time axis (seconds) below it.
fn axes(out: &mut String, top: f64, title: &str, end_ms: u64, x: &dyn Fn(f64) -> f64) {
    let bottom = top + PANEL_HEIGHT;
    let right = WIDTH - RIGHT;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{:.1}" height="{PANEL_HEIGHT}" fill="none" stroke="#888"/>"##,
        right - LEFT
    );
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}">{}</text>"#, bottom + 30.0, escape(title));
    let seconds = end_ms as f64 / 1000.0;
    let step = nice_ceiling(seconds / 10.0);
    let mut s = 0.0;
    // Bounded: at most about ten ticks.
    while s <= seconds {
        let px = x(s * 1000.0);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{bottom}" x2="{px:.1}" y2="{}" stroke="#888"/><text x="{px:.1}" y="{}" text-anchor="middle">{s:.0} s</text>"##,
            bottom + 4.0,
            bottom + 15.0
        );
        s += step;
    }
}

fn tick_label(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#888"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
        LEFT - 4.0,
        LEFT - 6.0,
        y + 4.0
    );
}

fn polyline(out: &mut String, points: &[(f64, f64)], colour: &str) {
    let mut coordinates = String::new();
    for (px, py) in points {
        let _ = write!(coordinates, "{px:.1},{py:.1} ");
    }
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
        coordinates.trim_end()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(invoke_ms: u64, complete_ms: u64) -> Event {
        Event::Send {
            producer: "p0".into(),
            seq: invoke_ms,
            partition: 0,
            value: format!("p0-{invoke_ms}"),
            invoke_ms,
            complete_ms,
            outcome: Outcome::Ack,
            offset: Some(invoke_ms as i64),
            attempts: 1,
            error: None,
        }
    }

    #[test]
    fn throughput_latency_and_fault_windows_are_drawn() {
        let mut events: Vec<Event> = (0..3_000).map(|t| ack(t, t + 2)).collect();
        events.extend((3_000..3_010).map(|t| ack(t, t + 900)));
        events.push(Event::Fault {
            kind: "partition".into(),
            target: "broker-1 | broker-2+broker-3 <&>".into(),
            start_ms: 1_500,
            end_ms: 2_500,
        });
        let series = series(&events);
        assert_eq!(series.acks, vec![998, 1_000, 1_000, 12]);
        assert_eq!(series.p50[0], Some(2));
        assert_eq!(series.p99[3], Some(900));
        let svg = svg(&events, "seed 1");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3, "throughput, p50, p99");
        assert!(svg.contains("fill=\"#e8a09a\" fill-opacity"), "the fault window is shaded");
        assert!(svg.contains("<rect x=\"70\""), "a legend entry");
        assert!(svg.contains("&lt;&amp;&gt;") && !svg.contains("<&>"), "labels are escaped");
    }
}
