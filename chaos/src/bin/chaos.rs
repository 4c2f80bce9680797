//! `spate-chaos`: real `spate` brokers (one, or a cluster of three or five) under a seeded
//! schedule of process and (as root) network faults while producers and consumers work; the history and
//! a final read of every partition go through the checker. Exits 1 on any safety violation (see
//! `spate_chaos::runner`).
//!
//! ```text
//! spate-chaos [--seconds S] [--brokers 1|3|5]
//!             [--faults kill,pause,kill-leader,kill-controller,kill-all,partition,loss]
//!             [--seed N] [--partitions P]
//!             [--producers K] [--flush never|always] [--out DIR] [--spate PATH]
//! ```

use std::path::PathBuf;

use clap::Parser;
use spate_chaos::runner::{free_port, run, RunOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// 1 (a single broker), 3 or 5 (a cluster, topics replicated over 3; on loopback, or in
    /// network namespaces for network faults).
    #[arg(long, default_value_t = 1)]
    brokers: u32,
    /// Comma-separated, from: kill, pause, kill-leader, kill-controller, kill-all, and (a
    /// cluster, as root, with nftables) partition, loss.
    #[arg(long, default_value = "kill,pause")]
    faults: String,
    /// Random if absent; printed either way.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    #[arg(long, default_value_t = 2)]
    producers: u32,
    #[arg(long, default_value = "never")]
    flush: String,
    /// Keep the history, the final read and the summary here (default: a temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The `spate` binary (default: next to this one).
    #[arg(long)]
    spate: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    // The client's own log (retries, routes) goes to stderr when asked for, e.g.
    // `SPATE_CHAOS_LOG=spate_client=debug`.
    if let Ok(filter) = std::env::var("SPATE_CHAOS_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let spate = args
        .spate
        .clone()
        .unwrap_or_else(|| std::env::current_exe().expect("own path").with_file_name("spate"));
    let options = RunOptions {
        seconds: args.seconds,
        faults: args.faults.split(',').filter(|f| !f.is_empty()).map(str::to_string).collect(),
        seed: args.seed.unwrap_or_else(rand::random),
        partitions: args.partitions,
        producers: args.producers,
        flush: args.flush,
        out: args.out.unwrap_or_else(|| scratch.path().to_path_buf()),
        spate,
        port: free_port(),
        brokers: args.brokers,
        broker_env: Vec::new(),
    };
    match run(options) {
        Ok(result) => {
            let r = &result.report;
            println!(
                "faults {} acknowledged {} failed {} unknown {} commits {} | lost {} inconsistent {} duplicates {} ({} of certain sends) reordered {} read backwards {} read gaps {} commit regressions {} | longest unavailability {} ms (one partition: {} ms)",
                r.faults, r.acknowledged, r.failed, r.unknown, r.commits, r.lost, r.inconsistent,
                r.duplicates, r.duplicates_of_certain_sends, r.reordered, r.read_backwards,
                r.read_gaps, r.commit_regressions, r.unavailable_ms_max,
                r.partition_unavailable_ms_max
            );
            for example in &r.examples {
                println!("  {example}");
            }
            if result.violations == 0 {
                println!("no safety violation");
            } else {
                println!("{} safety violations", result.violations);
                std::process::exit(1);
            }
        }
        Err(message) => {
            eprintln!("spate-chaos: {message}");
            std::process::exit(2);
        }
    }
}
