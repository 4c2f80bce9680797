//! `spate tune`: the command-line side of `spate-tuning` (check, apply, layout, and proving a
//! layout by measuring it with the load generator).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use spate_tuning::{apply, check, layout, machine};

#[derive(Subcommand)]
pub enum TuneCommand {
    /// One row per check: status, current and recommended value, why, and the fix.
    Check {
        /// One JSON array of rows instead of the table.
        #[arg(long)]
        json: bool,
        /// Read sysfs/procfs under this root instead of / (fixture trees).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Apply the fixes that are sysfs/procfs writes (as root), or write them to a script.
    Apply {
        /// Print what would be written, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write the fixes to this shell script instead of applying them.
        #[arg(long)]
        output_script: Option<PathBuf>,
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
    /// Plan which cores run shards and which shard owns each partition.
    Layout {
        /// NAME:PARTITIONS[@BYTES_PER_SEC_PER_PARTITION], comma-separated.
        #[arg(long)]
        topics: Option<String>,
        /// Read live per-partition byte rates from a running broker's metrics endpoint.
        #[arg(long)]
        from_metrics: Option<String>,
        /// CPUs the broker may use (default: all online).
        #[arg(long)]
        cpuset: Option<String>,
        /// Physical cores to keep free for NIC and disk interrupts.
        #[arg(long, default_value_t = 0)]
        reserve_irq_cores: usize,
        /// Write the layout file (`spate serve --layout FILE` reads it).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Measure the plan against the naive layout with `spate-loadgen`.
        #[arg(long)]
        measure: bool,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
    },
}

pub fn run(command: TuneCommand) -> Result<(), String> {
    match command {
        TuneCommand::Check { json, root } => {
            let rows = check::checks(&machine::read_machine(&root));
            if json {
                println!("{}", serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?);
            } else {
                print!("{}", check::table(&rows));
            }
            Ok(())
        }
        TuneCommand::Apply { dry_run, output_script, root } => {
            let rows = check::checks(&machine::read_machine(&root));
            if let Some(path) = output_script {
                std::fs::write(&path, apply::script(&rows))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                println!("wrote {} (review it, then run it as root)", path.display());
                return Ok(());
            }
            for line in apply::apply(&rows, &root, dry_run) {
                println!("{line}");
            }
            Ok(())
        }
        TuneCommand::Layout {
            topics,
            from_metrics,
            cpuset,
            reserve_irq_cores,
            output,
            measure,
            seconds,
            root,
        } => {
            let machine = machine::read_machine(&root);
            let topics = match (topics, from_metrics) {
                (_, Some(address)) => topics_from_metrics(&address)?,
                (Some(text), None) => layout::parse_topics(&text)?,
                (None, None) => {
                    return Err(
                        "give --topics NAME:PARTITIONS,... or --from-metrics HOST:PORT".into()
                    )
                }
            };
            let cpuset = cpuset.map(|text| crate::config::parse_cpuset(&text)).transpose()?;
            let plan = layout::plan(&machine, cpuset.as_deref(), reserve_irq_cores, &topics)?;
            print!("{}", plan.table());
            let file = match &output {
                Some(path) => path.clone(),
                None => {
                    std::env::temp_dir().join(format!("spate-layout-{}.toml", std::process::id()))
                }
            };
            std::fs::write(&file, plan.to_toml())
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            if output.is_some() {
                println!("wrote {}", file.display());
            }
            if measure {
                measure_layouts(&plan, &topics, &file, seconds)?;
            }
            Ok(())
        }
    }
}

/// Scrapes twice, two seconds apart, and turns each partition's log growth into a load.
fn topics_from_metrics(address: &str) -> Result<Vec<layout::TopicLoad>, String> {
    let first = scrape(address)?;
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape(address)?;
    let mut topics: std::collections::BTreeMap<String, Vec<f64>> =
        std::collections::BTreeMap::new();
    for ((topic, partition), bytes) in &second {
        let rate = (bytes - first.get(&(topic.clone(), *partition)).copied().unwrap_or(*bytes))
            .max(0.0)
            / 2.0;
        let loads = topics.entry(topic.clone()).or_default();
        if loads.len() <= *partition as usize {
            loads.resize(*partition as usize + 1, 0.0);
        }
        // A floor of 1 byte/s spreads idle partitions too.
        loads[*partition as usize] = rate.max(1.0);
    }
    if topics.is_empty() {
        return Err(format!("no partition metrics at {address}"));
    }
    Ok(topics.into_iter().map(|(name, loads)| layout::TopicLoad { name, loads }).collect())
}

fn scrape(address: &str) -> Result<std::collections::BTreeMap<(String, u32), f64>, String> {
    let mut stream = std::net::TcpStream::connect(address)
        .map_err(|e| format!("cannot reach metrics at {address}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: spate\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.take(64 << 20).read_to_string(&mut text).map_err(|e| e.to_string())?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("spate_partition_log_bytes{")) {
        let label = |key: &str| {
            line.split(&format!("{key}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .map(str::to_string)
        };
        let (Some(topic), Some(partition)) =
            (label("topic"), label("partition").and_then(|p| p.parse::<u32>().ok()))
        else {
            continue;
        };
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            out.insert((topic, partition), value);
        }
    }
    Ok(out)
}

/// Runs the load generator's produce scenario on an embedded broker with the planned layout and
/// with the naive one (all CPUs, partitions spread by the broker's default), side by side.
fn measure_layouts(
    plan: &layout::Plan,
    topics: &[layout::TopicLoad],
    layout_file: &Path,
    seconds: u64,
) -> Result<(), String> {
    let loadgen =
        std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("spate-loadgen");
    if !loadgen.exists() {
        return Err(format!(
            "--measure needs {} (cargo build --release -p spate-loadgen)",
            loadgen.display()
        ));
    }
    let topic = &topics[0];
    let partitions = topic.loads.len();
    let producers = partitions.clamp(1, 4);
    let run = |label: &str, layout: Option<&Path>| -> Result<serde_json::Value, String> {
        let json =
            std::env::temp_dir().join(format!("spate-measure-{label}-{}.json", std::process::id()));
        let mut command = std::process::Command::new(&loadgen);
        command
            .args(["produce", "--embedded", "--no-ceiling", "--topic", &topic.name])
            .args(["--partitions", &partitions.to_string(), "--producers", &producers.to_string()])
            .args([
                "--cores",
                &producers.to_string(),
                "--duration",
                &seconds.to_string(),
                "--warmup",
                "1",
                "--json",
            ])
            .arg(&json);
        if let Some(layout) = layout {
            command.arg("--layout").arg(layout);
        }
        let output =
            command.output().map_err(|e| format!("cannot run {}: {e}", loadgen.display()))?;
        if !output.status.success() {
            return Err(format!("{label} run failed: {}", String::from_utf8_lossy(&output.stderr)));
        }
        let text = std::fs::read_to_string(&json).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&json);
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let planned = run("planned", Some(layout_file))?;
    let naive = run("naive", None)?;
    println!("\nmeasured: produce, {partitions} partitions of {:?}, {producers} producers, {seconds} s each", topic.name);
    println!("{:<10} {:>12} {:>10} {:>10} {:>10}", "layout", "msgs/s", "MB/s", "p50 µs", "p99 µs");
    for (label, result) in [("planned", &planned), ("naive", &naive)] {
        println!(
            "{label:<10} {:>12.0} {:>10.1} {:>10} {:>10}",
            result["msgs_per_sec"].as_f64().unwrap_or(0.0),
            result["mb_per_sec"].as_f64().unwrap_or(0.0),
            result["latency_us"]["p50"],
            result["latency_us"]["p99"]
        );
    }
    let ratio = planned["mb_per_sec"].as_f64().unwrap_or(0.0)
        / naive["mb_per_sec"].as_f64().unwrap_or(1.0).max(1e-9);
    println!("planned / naive throughput: {ratio:.2}x (shards on CPUs {:?})", plan.shard_cpus);
    Ok(())
}
