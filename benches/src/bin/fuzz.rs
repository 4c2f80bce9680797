//! `spate-fuzz`: a long campaign of the stable mutation fuzzer over every decoder and the batch
//! validator (see `spate_protocol::fuzz`). Exits 0 after the inputs ran; a panic is a bug, and
//! `--seed S` replays the same inputs.
//!
//! `cargo run --release -p spate-benches --bin spate-fuzz -- --inputs 1000000`

use clap::Parser;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// Random if absent; printed either way.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("spate-fuzz: seed {seed}, {} inputs", args.inputs);
    let started = std::time::Instant::now();
    let mut fuzzer = spate_protocol::fuzz::Fuzzer::new(seed, Vec::new());
    // In chunks, so a long run shows progress.
    let chunk = 100_000;
    let mut done = 0;
    while done < args.inputs {
        let step = chunk.min(args.inputs - done);
        fuzzer.run(step);
        done += step;
        eprintln!("  {done} inputs, {:.0} /s", done as f64 / started.elapsed().as_secs_f64());
    }
    let stats = fuzzer.stats;
    println!(
        "ran {} inputs in {:.1} s: frames decoded {}, refused {}; batches valid {}, refused {}; no panic",
        stats.inputs,
        started.elapsed().as_secs_f64(),
        stats.frames_decoded,
        stats.frames_refused,
        stats.batches_valid,
        stats.batches_refused
    );
}
