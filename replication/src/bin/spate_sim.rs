//! `spate-sim`: runs the replication simulator over a range of seeds (a soak), or with a planted
//! bug to show the checkers catch it. Exits 0 only if every seed passed.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use spate_replication::sim::{run_seed, SimOptions, SimStats};
use spate_replication::{FlushPolicy, Plant};

#[derive(Parser)]
#[command(about = "Deterministic simulation of Spate's replication core")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Replicas per group (3 or 5; 1 is allowed too).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Plant a known bug (`list` prints the names).
    #[arg(long)]
    plant: Option<String>,
    /// Ticks of faults and load per seed.
    #[arg(long, default_value_t = 600)]
    fault_ticks: u64,
    /// Force the flush policy (`always` or `never`) instead of drawing it per seed.
    #[arg(long)]
    flush: Option<String>,
    /// Also cut the power of a majority at once now and then.
    #[arg(long)]
    majority_power_loss: bool,
    /// Events shown for a failing seed.
    #[arg(long, default_value_t = 120)]
    trace_lines: usize,
    /// Stop at the first failing seed.
    #[arg(long)]
    stop: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plant = match args.plant.as_deref() {
        None => Plant::None,
        Some("list") => {
            for (name, _) in Plant::ALL {
                println!("{name}");
            }
            return ExitCode::SUCCESS;
        }
        Some(name) => match Plant::from_name(name) {
            Some(p) => p,
            None => {
                eprintln!("unknown plant {name:?}; try --plant list");
                return ExitCode::from(2);
            }
        },
    };
    if !(1..=5).contains(&args.replicas) {
        eprintln!("--replicas must be 1..=5");
        return ExitCode::from(2);
    }
    // Core assertions are reported as failures of their seed; keep the default hook quiet.
    std::panic::set_hook(Box::new(|_| {}));
    let flush = match args.flush.as_deref() {
        None => None,
        Some("always") => Some(FlushPolicy::Always),
        Some("never") => Some(FlushPolicy::Never),
        Some(other) => {
            eprintln!("--flush must be always or never, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let mut opts = SimOptions::new(args.replicas);
    opts.flush = flush;
    opts.majority_power_loss = args.majority_power_loss;
    opts.plant = plant;
    opts.fault_ticks = args.fault_ticks;
    opts.trace_lines = args.trace_lines;
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let mut totals = SimStats::default();
    for seed in args.from..args.from + args.seeds {
        match run_seed(seed, &opts) {
            Ok(stats) => {
                passed += 1;
                totals.add(&stats);
            }
            Err(failure) => {
                failed += 1;
                println!("{failure}");
                if args.stop {
                    break;
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ran = passed + failed;
    println!(
        "ran {ran} seeds ({} replicas, plant {}): {passed} passed, {failed} failed; {:.0} seeds/s",
        args.replicas,
        plant.name(),
        ran as f64 / secs.max(1e-9)
    );
    if passed > 0 {
        let per = |x: u64| x as f64 / passed as f64;
        println!(
            "per passing seed: {:.0} ticks, {:.0} messages, {:.1} elections, {:.1} crashes, {:.1} truncations, {:.2} log resets, {:.2} membership changes, {:.0} quiet leader ticks, {:.0} committed records, {:.0} acknowledged writes; highest term {}",
            per(totals.ticks),
            per(totals.messages),
            per(totals.elections),
            per(totals.crashes),
            per(totals.truncations),
            per(totals.resets),
            per(totals.membership_changes),
            per(totals.quiet_ticks),
            per(totals.committed as u64),
            per(totals.acked as u64),
            totals.max_term
        );
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
