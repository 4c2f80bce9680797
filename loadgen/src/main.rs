//! `spate-loadgen`: produce, consume, e2e and ceiling scenarios against a broker (or an
//! embedded one), thread-per-core, with coordinated-omission-corrected HdrHistogram latencies.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use spate_client::{Acks, Client, ClientConfig};
use spate_loadgen::ceiling::{self, Ceiling, CeilingSize};
use spate_loadgen::keys::{KeySpec, SizeSpec};
use spate_loadgen::report::{self, Outcome};
use spate_loadgen::run::{self, Plan, Scenario, WorkerResult};
use spate_loadgen::stats::{new_histogram, percentile_distribution, Percentiles, Shared};

#[derive(Parser)]
#[command(name = "spate-loadgen", about = "Spate's load generator")]
struct Cli {
    #[command(subcommand)]
    scenario: ScenarioCommand,
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Producers at a rate or as fast as possible; latency = send → acknowledgement.
    Produce(Options),
    /// Consumers read back what the topic holds (or --messages).
    Consume(Options),
    /// Producers and consumers together; latency = receive time − due time carried in the record.
    E2e(Options),
    /// The machine's ceilings: direct-IO write, fdatasync'd write, loopback TCP.
    Ceiling(CeilingOptions),
    /// A cluster's failover: kill -9 a replicated partition's leader mid-stream and time the
    /// first acknowledgement by the new leader (one run; see benches/replication.sh).
    Failover(FailoverOptions),
}

#[derive(Args, Clone, Debug)]
struct FailoverOptions {
    /// Every broker of the cluster, comma-separated.
    #[arg(short = 'b', long)]
    bootstrap: String,
    /// Topic to create (replication factor 3, one partition); must not exist.
    #[arg(long)]
    topic: String,
    /// Each broker's process id, as ID=PID,ID=PID,...
    #[arg(long)]
    pids: String,
    /// Time between messages (ms).
    #[arg(long, default_value_t = 2)]
    interval_ms: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
struct Options {
    #[arg(short = 'b', long, default_value = "127.0.0.1:9292")]
    bootstrap: String,
    /// Send every request to the bootstrap address instead of each partition's owning shard
    /// (what a client that ignores shard addresses does: other shards' partitions cost a hop).
    #[arg(long)]
    via_bootstrap: bool,
    /// `spate` (default), `nats://HOST:PORT` to run the same scenario against NATS JetStream
    /// (needs the `nats` feature), or `iggy://HOST:PORT` against Apache Iggy's TCP transport
    /// (needs the `iggy` feature).
    #[arg(long, default_value = "spate")]
    target: String,
    /// Start an in-process broker on a temporary data directory.
    #[arg(long)]
    embedded: bool,
    #[arg(long, default_value = "loadgen")]
    topic: String,
    /// Partitions of the topic (created if absent).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    #[arg(long, default_value_t = 1)]
    producers: u32,
    #[arg(long, default_value_t = 1)]
    consumers: u32,
    /// BYTES or MIN..MAX.
    #[arg(long, default_value = "1024")]
    message_size: SizeSpec,
    /// none, round-robin, uniform:N, zipf:N:S.
    #[arg(long, default_value = "none")]
    keys: KeySpec,
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: usize,
    #[arg(long, default_value_t = 2)]
    linger_ms: u64,
    #[arg(long, default_value = "all")]
    acks: String,
    /// Batches each producer keeps in flight per partition (at most 5 with idempotence; without
    /// it, more than 1 turns retries off, to keep order).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=16))]
    max_in_flight: u64,
    /// Each producer's buffer of unacknowledged records, in bytes (0: 64 batches, between 4
    /// and 64 MiB). At the maximum rate it fills, and every record waits for it to drain.
    #[arg(long, default_value_t = 0)]
    buffer_bytes: usize,
    /// Plain at-least-once producers instead of idempotent ones (the default, unless
    /// --acks none).
    #[arg(long)]
    no_idempotence: bool,
    /// Topic flush policy when the topic is created: always, never, interval:MS.
    #[arg(long, default_value = "never")]
    flush: String,
    /// Replicas of each partition when the topic is created on a cluster (0: the brokers'
    /// default, min(3, brokers)).
    #[arg(long, default_value_t = 0)]
    replication_factor: u16,
    /// Messages per second over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long)]
    messages: Option<u64>,
    /// Seconds to run (default 10, or at most 300 with --messages).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Cores (executors) of the generator; default 1.
    #[arg(long)]
    cores: Option<usize>,
    #[arg(long)]
    cpuset: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram text) here.
    #[arg(long)]
    hdr: Option<PathBuf>,
    /// Write an SVG of latency by percentile and throughput over time here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Produce only: run once per partition count (a topic TOPIC-<N>p each) and print the
    /// curve, e.g. 1,100,1000,5000; --json then holds one entry per count.
    #[arg(long, value_delimiter = ',')]
    sweep_partitions: Vec<u32>,
    /// A separate broker's process id, to report its resident memory after each sweep step.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Ceilings JSON from `spate-loadgen ceiling --json` to compare against (else measured now, briefly).
    #[arg(long)]
    ceiling_json: Option<PathBuf>,
    /// Skip the ceiling comparison.
    #[arg(long)]
    no_ceiling: bool,
    /// Data directory of the embedded broker, and where ceilings are measured.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Layout file for the embedded broker (its cpuset and partition-to-shard plan).
    #[arg(long)]
    layout: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
struct CeilingOptions {
    /// Directory on the device to measure.
    #[arg(long, default_value = "target/loadgen-ceiling")]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 1024)]
    direct_mb: u64,
    #[arg(long, default_value_t = 2000)]
    fsync_writes: u64,
    #[arg(long, default_value_t = 2048)]
    tcp_mb: u64,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    spate_broker::logging::init("warn");
    let cli = Cli::parse();
    let result = match cli.scenario {
        ScenarioCommand::Produce(options) if !options.sweep_partitions.is_empty() => {
            sweep_partitions(options)
        }
        ScenarioCommand::Produce(options) => scenario(Scenario::Produce, options).map(drop),
        ScenarioCommand::Consume(options) => scenario(Scenario::Consume, options).map(drop),
        ScenarioCommand::E2e(options) => scenario(Scenario::E2e, options).map(drop),
        ScenarioCommand::Ceiling(options) => ceiling_command(options),
        ScenarioCommand::Failover(options) => failover_command(options),
    };
    if let Err(message) = result {
        eprintln!("spate-loadgen: {message}");
        std::process::exit(1);
    }
}

/// An absolute path, so every message names the full path (and Glommio, which opens some paths
/// without a base directory, never sees a relative one).
fn absolute(path: &std::path::Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("bad path {}: {e}", path.display()))
}

fn ceiling_command(mut options: CeilingOptions) -> Result<(), String> {
    options.data_dir = absolute(&options.data_dir)?;
    let size = CeilingSize {
        direct_bytes: options.direct_mb << 20,
        fsync_writes: options.fsync_writes,
        tcp_bytes: options.tcp_mb << 20,
    };
    let measured = ceiling::measure(&options.data_dir, size)?;
    println!(
        "direct-IO sequential write   {:>8.0} MB/s   (1 MiB O_DIRECT writes)",
        measured.direct_write_mb_per_sec
    );
    println!(
        "direct-IO sequential read    {:>8.0} MB/s   (1 MiB O_DIRECT reads, {} in flight)",
        measured.direct_read_mb_per_sec,
        ceiling::READ_DEPTH
    );
    println!(
        "fdatasync'd write            {:>8.0} MB/s   (64 KiB write + fdatasync)",
        measured.fdatasync_write_mb_per_sec
    );
    println!(
        "fdatasync latency            p50 {} µs, p99 {} µs",
        measured.fdatasync_latency_us.p50, measured.fdatasync_latency_us.p99
    );
    println!(
        "loopback TCP                 {:>8.0} MB/s   (1 MiB writes, one connection)",
        measured.loopback_tcp_mb_per_sec
    );
    if let Some(path) = options.json {
        let mut value = json!(measured);
        value["scenario"] = json!("ceiling");
        value["machine"] = report::machine(&options.data_dir);
        std::fs::write(&path, serde_json::to_string_pretty(&value).expect("serializable"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// An in-process broker on a temporary directory, stopped on drop.
struct Embedded {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn free_port() -> u16 {
    // Below the ephemeral range, with the two shard ports after it free too.
    for base in (21_000..31_000).step_by(7) {
        let base = base as u16 + (std::process::id() % 7) as u16;
        if (0..=3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    29_292
}

fn start_embedded(
    data_dir: Option<PathBuf>,
    layout: Option<&std::path::Path>,
) -> Result<(Embedded, String, PathBuf), String> {
    let layout = match layout {
        Some(path) => spate_broker::config::load_layout(path)?,
        None => spate_broker::config::Layout::default(),
    };
    let cpus = match &layout.cpuset {
        Some(set) => spate_broker::config::parse_cpuset(set)?,
        None => spate_broker::config::allowed_cpus(),
    };
    let (dir, keep) = match data_dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("spate-loadgen-")
                .tempdir_in(".")
                .map_err(|e| format!("cannot create a data directory here: {e}"))?;
            (absolute(temp.path())?, Some(temp))
        }
    };
    let port = free_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid");
    let config = spate_broker::config::BrokerConfig {
        data_dir: dir.clone(),
        listen,
        cpus,
        metrics_listen: None,
        layout,
        log_defaults: Default::default(),
        request_memory_bytes: spate_broker::limits::REQUEST_MEMORY_PER_SHARD_BYTES_MAX,
        frame_read_timeout: Duration::from_millis(spate_broker::limits::FRAME_READ_TIMEOUT_MS),
        journal_dir: spate_broker::config::journal_dir(None, &dir),
        cluster: None,
        membership: None,
        replica_views: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let broker_stop = stop.clone();
    let thread = std::thread::spawn(move || spate_broker::server::run(config, broker_stop));
    let started = Instant::now();
    while std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_err() {
        if started.elapsed() > Duration::from_secs(20) || thread.is_finished() {
            return Err("the embedded broker did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((Embedded { stop, thread: Some(thread), _dir: keep }, listen.to_string(), dir))
}

fn parse_cpus(options: &Options) -> Result<Vec<usize>, String> {
    let mut cpus = match &options.cpuset {
        Some(set) => spate_broker::config::parse_cpuset(set)?,
        None => spate_broker::config::allowed_cpus(),
    };
    cpus.truncate(options.cores.unwrap_or(1).max(1));
    Ok(cpus)
}

/// The produce scenario once per partition count; prints throughput, latency and (with
/// `--broker-pid`) the broker's memory for each.
fn sweep_partitions(options: Options) -> Result<(), String> {
    let mut rows = Vec::new();
    for &partitions in &options.sweep_partitions {
        let step = Options {
            partitions,
            topic: format!("{}-{partitions}p", options.topic),
            json: None,
            hdr: None,
            plot: None,
            sweep_partitions: Vec::new(),
            ..options.clone()
        };
        eprintln!("== {partitions} partitions");
        let outcome = scenario(Scenario::Produce, step)?;
        let rss_mb = options.broker_pid.map(|pid| resident_bytes(pid) as f64 / 1e6);
        rows.push((partitions, outcome, rss_mb));
    }
    println!(
        "\npartition sweep ({} producers, {} B messages, keys {:?})",
        options.producers, options.message_size.max, options.keys
    );
    println!(
        "{:>10} {:>12} {:>9} {:>10} {:>10} {:>8} {:>12}",
        "partitions", "msgs/s", "MB/s", "p50 ms", "p99 ms", "errors", "broker RSS MB"
    );
    let mut entries = Vec::new();
    for (partitions, outcome, rss_mb) in &rows {
        println!(
            "{partitions:>10} {:>12.0} {:>9.1} {:>10.2} {:>10.2} {:>8} {:>12}",
            outcome.msgs_per_sec(),
            outcome.mb_per_sec(),
            outcome.produce_latency.p50 as f64 / 1e3,
            outcome.produce_latency.p99 as f64 / 1e3,
            outcome.errors,
            rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
        );
        entries.push(json!({
            "partitions": partitions, "msgs_per_sec": outcome.msgs_per_sec(),
            "mb_per_sec": outcome.mb_per_sec(), "errors": outcome.errors,
            "produce_latency_us": outcome.produce_latency, "broker_rss_mb": rss_mb,
        }));
    }
    if let Some(path) = &options.json {
        let value = json!({ "scenario": "produce-sweep", "steps": entries });
        std::fs::write(path, serde_json::to_string_pretty(&value).expect("serializable"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A process's resident memory (VmRSS) in bytes; 0 if it cannot be read.
fn resident_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn scenario(scenario: Scenario, mut options: Options) -> Result<Outcome, String> {
    options.data_dir = options.data_dir.as_deref().map(absolute).transpose()?;
    let acks = match options.acks.as_str() {
        "none" | "0" => Acks::None,
        "leader" | "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => return Err(format!("bad --acks {other:?}")),
    };
    if options.producers == 0 || options.consumers == 0 || options.partitions == 0 {
        return Err("--producers, --consumers and --partitions must be at least 1".into());
    }
    let cpus = parse_cpus(&options)?;
    let peer_target = (options.target.starts_with("nats://")
        || options.target.starts_with("iggy://"))
    .then(|| options.target.clone());
    if options.target != "spate" && peer_target.is_none() {
        return Err(format!(
            "bad --target {:?}: expected spate, nats://HOST:PORT or iggy://HOST:PORT",
            options.target
        ));
    }
    let (embedded, bootstrap, data_dir) = if options.embedded && peer_target.is_none() {
        let (broker, address, dir) =
            start_embedded(options.data_dir.clone(), options.layout.as_deref())?;
        (Some(broker), address, dir)
    } else {
        (
            None,
            options.bootstrap.clone(),
            match options.data_dir.clone() {
                Some(dir) => dir,
                None => absolute(std::path::Path::new("target/loadgen-ceiling"))?,
            },
        )
    };
    let ceiling = if options.no_ceiling {
        None
    } else if let Some(path) = &options.ceiling_json {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Some(
            serde_json::from_str::<Ceiling>(&text)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        )
    } else {
        let quick =
            CeilingSize { direct_bytes: 256 << 20, fsync_writes: 300, tcp_bytes: 512 << 20 };
        Some(ceiling::measure(&data_dir.join("ceiling"), quick)?)
    };
    let consume_target =
        if peer_target.is_some() { u64::MAX } else { prepare_topic(&bootstrap, &options)? };
    let duration =
        Duration::from_secs_f64(options.duration.unwrap_or(if options.messages.is_some() {
            300.0
        } else {
            10.0
        }));
    let plan = Plan {
        scenario,
        bootstrap: bootstrap.clone(),
        via_bootstrap: options.via_bootstrap,
        topic: options.topic.clone(),
        partitions: options.partitions,
        producers: options.producers,
        consumers: options.consumers,
        size: options.message_size,
        keys: options.keys.clone(),
        batch_bytes: options.batch_bytes,
        linger: Duration::from_millis(options.linger_ms),
        acks,
        max_in_flight: options.max_in_flight as usize,
        buffer_bytes: options.buffer_bytes,
        idempotence: !options.no_idempotence && acks != Acks::None,
        rate: options.rate,
        messages: options.messages,
        duration,
        warmup: Duration::from_secs_f64(options.warmup),
        consume_target,
        fsync: options.flush == "always",
    };
    let shared = Arc::new(Shared::default());
    let start = Arc::new(Barrier::new(cpus.len() + 1));
    let mut threads = Vec::new();
    if let Some(url) = &peer_target {
        let (plan, shared, barrier, url, cores) =
            (plan.clone(), shared.clone(), start.clone(), url.clone(), cpus.len());
        threads.push(std::thread::spawn(move || -> Result<WorkerResult, String> {
            barrier.wait();
            if url.starts_with("iggy://") {
                run_iggy(&plan, &url, cores, shared)
            } else {
                run_nats(&plan, &url, cores, shared)
            }
        }));
        // The other cores' slots in the barrier.
        for _ in 1..cpus.len() {
            let start = start.clone();
            threads.push(std::thread::spawn(move || {
                start.wait();
                Ok(WorkerResult::empty())
            }));
        }
    }
    for (core, cpu) in cpus.iter().copied().enumerate().filter(|_| peer_target.is_none()) {
        let (plan, shared, start, cores) =
            (plan.clone(), shared.clone(), start.clone(), cpus.len());
        threads.push(std::thread::spawn(move || -> Result<WorkerResult, String> {
            let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
                .make()
                .map_err(|e| e.to_string())?;
            executor.run(async move {
                let result = run::worker(core, cores, plan, shared, start.clone()).await;
                result
            })
        }));
    }
    start.wait();
    let started = Instant::now();
    // One progress line per second until every worker is done.
    let mut last = (0u64, 0u64);
    let mut samples: Vec<spate_loadgen::plot::Sample> = Vec::new();
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed().as_secs() > last.0 {
            let messages = shared.messages.load(Ordering::Relaxed);
            let bytes = shared.bytes.load(Ordering::Relaxed);
            eprintln!(
                "[{:>4}s] {:>10} msgs/s {:>8.1} MB/s p99 {} µs errors {}",
                started.elapsed().as_secs(),
                messages - last.1,
                bytes as f64 / 1e6 / started.elapsed().as_secs_f64(),
                shared.p99_us(),
                shared.errors.load(Ordering::Relaxed)
            );
            samples.push((started.elapsed().as_secs() as f64, (messages - last.1) as f64));
            last = (started.elapsed().as_secs(), messages);
        }
    }
    let mut produce = new_histogram();
    let mut request = new_histogram();
    let mut e2e = new_histogram();
    let (mut produced, mut produced_bytes, mut consumed, mut consumed_bytes, mut errors) =
        (0, 0, 0, 0, 0);
    let mut elapsed = Duration::ZERO;
    for thread in threads {
        let result = thread.join().map_err(|_| "a worker panicked".to_string())??;
        let _ = produce.add(&result.produce_latency);
        let _ = request.add(&result.request_latency);
        let _ = e2e.add(&result.e2e_latency);
        produced += result.produced;
        produced_bytes += result.produced_bytes;
        consumed += result.consumed;
        consumed_bytes += result.consumed_bytes;
        errors += result.errors;
        elapsed = elapsed.max(result.elapsed);
    }
    drop(embedded);
    let (name, messages, bytes) = match scenario {
        Scenario::Produce => ("produce", produced, produced_bytes),
        Scenario::Consume => ("consume", consumed, consumed_bytes),
        Scenario::E2e => ("e2e", consumed, consumed_bytes),
    };
    let outcome = Outcome {
        scenario: name,
        messages,
        bytes,
        duration_s: elapsed.as_secs_f64(),
        errors,
        produce_latency: Percentiles::of(&produce),
        request_latency: Percentiles::of(&request),
        e2e_latency: Percentiles::of(&e2e),
        consumed,
    };
    print!("{}", report::table(&outcome, ceiling.as_ref()));
    if scenario == Scenario::E2e && produced != consumed {
        println!("note: produced {produced}, consumed {consumed} (measured after warmup)");
    }
    if let Some(path) = &options.json {
        let config = json!({
            "bootstrap": bootstrap, "embedded": options.embedded, "topic": options.topic, "partitions": options.partitions,
            "producers": options.producers, "consumers": options.consumers,
            "message_size": format!("{}..{}", options.message_size.min, options.message_size.max),
            "keys": format!("{:?}", options.keys), "batch_bytes": options.batch_bytes, "linger_ms": options.linger_ms,
            "acks": options.acks, "max_in_flight": options.max_in_flight,
            "idempotence": !options.no_idempotence && options.acks != "none", "flush": options.flush, "replication_factor": options.replication_factor, "rate": options.rate, "messages": options.messages,
            "duration_s": duration.as_secs_f64(), "warmup_s": options.warmup, "cores": cpus.len(), "cpus": cpus,
            "target": options.target,
        });
        let mut value =
            report::to_json(&outcome, config, report::machine(&data_dir), ceiling.as_ref());
        value["produced"] = json!(produced);
        std::fs::write(path, serde_json::to_string_pretty(&value).expect("serializable"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &options.plot {
        let histogram = if scenario == Scenario::E2e { &e2e } else { &produce };
        let title = format!(
            "spate-loadgen {name}: {:.0} msgs/s, {:.1} MB/s",
            outcome.msgs_per_sec(),
            outcome.mb_per_sec()
        );
        spate_loadgen::plot::write(path, &title, histogram, &samples)?;
    }
    if let Some(path) = &options.hdr {
        let histogram = if scenario == Scenario::E2e { &e2e } else { &produce };
        std::fs::write(path, percentile_distribution(histogram))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(outcome)
}

#[cfg(feature = "nats")]
fn run_nats(
    plan: &Plan,
    url: &str,
    threads: usize,
    shared: Arc<Shared>,
) -> Result<WorkerResult, String> {
    spate_loadgen::nats::run(plan, url, threads, shared)
}

#[cfg(not(feature = "nats"))]
fn run_nats(_: &Plan, _: &str, _: usize, _: Arc<Shared>) -> Result<WorkerResult, String> {
    Err("this spate-loadgen was built without NATS support: cargo build --release -p spate-loadgen --features nats".into())
}

#[cfg(feature = "iggy")]
fn run_iggy(
    plan: &Plan,
    url: &str,
    threads: usize,
    shared: Arc<Shared>,
) -> Result<WorkerResult, String> {
    spate_loadgen::iggy::run(plan, url, threads, shared)
}

#[cfg(not(feature = "iggy"))]
fn run_iggy(_: &Plan, _: &str, _: usize, _: Arc<Shared>) -> Result<WorkerResult, String> {
    Err("this spate-loadgen was built without Iggy support: cargo build --release -p spate-loadgen --features iggy".into())
}

/// Creates the topic if absent; returns how many messages it holds (the consume target).
fn prepare_topic(bootstrap: &str, options: &Options) -> Result<u64, String> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| e.to_string())?;
    let (bootstrap, options) = (bootstrap.to_string(), options.clone());
    executor.run(async move {
        let client = Client::connect(ClientConfig {
            bootstrap: bootstrap.clone(),
            ..ClientConfig::default()
        })
        .await
        .map_err(|e| format!("cannot reach {bootstrap}: {e}"))?;
        if client.partition_count(&options.topic).await.is_err() {
            client
                .create_replicated_topic(
                    &options.topic,
                    options.partitions,
                    options.replication_factor,
                    &[("flush", options.flush.as_str())],
                )
                .await
                .map_err(|e| format!("cannot create topic {:?}: {e}", options.topic))?;
        }
        let mut held = 0u64;
        for partition in client.partitions(&options.topic).await.map_err(|e| e.to_string())? {
            let latest =
                offset_when_led(&client, &options.topic, partition.partition, spate_client::LATEST)
                    .await?;
            let earliest = offset_when_led(
                &client,
                &options.topic,
                partition.partition,
                spate_client::EARLIEST,
            )
            .await?;
            held += (latest - earliest).max(0) as u64;
        }
        Ok(held)
    })
}

fn failover_command(options: FailoverOptions) -> Result<(), String> {
    let mut pids = std::collections::BTreeMap::new();
    for pair in options.pids.split(',').filter(|p| !p.is_empty()) {
        let (id, pid) = pair.split_once('=').ok_or(format!("--pids: {pair:?} is not ID=PID"))?;
        let id: i32 = id.parse().map_err(|_| format!("--pids: bad broker id {id:?}"))?;
        let pid: u32 = pid.parse().map_err(|_| format!("--pids: bad process id {pid:?}"))?;
        pids.insert(id, pid);
    }
    let plan = spate_loadgen::failover::FailoverPlan {
        bootstrap: options.bootstrap,
        topic: options.topic,
        pids,
        interval: Duration::from_millis(options.interval_ms.max(1)),
    };
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| e.to_string())?;
    let result = executor.run(spate_loadgen::failover::run(plan))?;
    let ms = result.recovery.as_secs_f64() * 1e3;
    println!(
        "killed broker {} (the leader); broker {} leads; first acknowledgement {ms:.0} ms after the kill",
        result.killed, result.new_leader
    );
    if let Some(path) = options.json {
        let report = json!({
            "killed": result.killed, "new_leader": result.new_leader, "recovery_ms": ms,
        });
        std::fs::write(&path, report.to_string())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// A partition's offset; in a cluster a new partition answers `NotLeader` until its first
/// election is over, so retriable errors are retried (bounded: `LEADER_WAIT`).
async fn offset_when_led(
    client: &Client,
    topic: &str,
    partition: u32,
    which: i64,
) -> Result<i64, String> {
    const LEADER_WAIT: Duration = Duration::from_secs(30);
    let started = Instant::now();
    loop {
        match client.list_offset(topic, partition, which).await {
            Ok(offset) => return Ok(offset.unwrap_or(0)),
            Err(error) if error.is_retriable() && started.elapsed() < LEADER_WAIT => {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(format!("{topic}/{partition}: {error}")),
        }
    }
}
