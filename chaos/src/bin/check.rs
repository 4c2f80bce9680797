//! `spate-chaos-check HISTORY FINAL [--idempotent] [--window-min-ms MS] [--json OUT] [--svg OUT]`:
//! checks a fault-injection history (JSON lines) against the final read of every partition;
//! prints the counts and examples, writes the JSON summary (and the timeline as SVG), and exits
//! 1 on any safety violation.

use std::path::PathBuf;

use clap::Parser;
use spate_chaos::checker::check;
use spate_chaos::history::{parse_lines, Event, Stored};

#[derive(Parser)]
struct Args {
    history: PathBuf,
    final_read: PathBuf,
    /// The producers were idempotent: every duplicate is a violation.
    #[arg(long)]
    idempotent: bool,
    /// List stretches without an acknowledged write at least this long.
    #[arg(long, default_value_t = 1000)]
    window_min_ms: u64,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write throughput and latency over time, fault windows shaded, as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn run(args: &Args) -> Result<usize, String> {
    let events: Vec<Event> = parse_lines(&read(&args.history)?)
        .map_err(|e| format!("{}: {e}", args.history.display()))?;
    let stored: Vec<Stored> = parse_lines(&read(&args.final_read)?)
        .map_err(|e| format!("{}: {e}", args.final_read.display()))?;
    let report = check(&events, &stored, args.window_min_ms);
    let violations = report.violations(args.idempotent);
    println!(
        "faults {} sends {} acknowledged {} failed {} unknown {}",
        report.faults, report.sends, report.acknowledged, report.failed, report.unknown
    );
    println!(
        "lost {} inconsistent {} duplicates {} ({} of certain sends) reordered {} read backwards {} read gaps {} commit regressions {}",
        report.lost,
        report.inconsistent,
        report.duplicates,
        report.duplicates_of_certain_sends,
        report.reordered,
        report.read_backwards,
        report.read_gaps,
        report.commit_regressions
    );
    println!("longest unavailability {} ms", report.unavailable_ms_max);
    if let (Some(window), Some(partition)) =
        (&report.partition_unavailable, report.partition_unavailable_partition)
    {
        println!(
            "longest unavailability of one partition {} ms: partition {partition}, {}..{} ms, during {:?}",
            window.length_ms, window.start_ms, window.end_ms, window.faults
        );
    }
    for window in &report.unavailable_windows {
        println!(
            "  {} ms from {} ms, during {:?}",
            window.length_ms, window.start_ms, window.faults
        );
    }
    for example in &report.examples {
        println!("  {example}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("serializable");
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "{}: {} acknowledged, {violations} violations",
            args.history.display(),
            report.acknowledged
        );
        std::fs::write(path, spate_chaos::plot::svg(&events, &title))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(violations)
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(0) => println!("no safety violation"),
        Ok(violations) => {
            println!("{violations} safety violations");
            std::process::exit(1);
        }
        Err(message) => {
            eprintln!("spate-chaos-check: {message}");
            std::process::exit(2);
        }
    }
}
