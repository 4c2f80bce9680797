//! `spate-logtool`: inspect a partition log directory, or drive one with synthetic appends.
//!
//! - `dump DIR` lists segments and batches (offsets, sizes, timestamps, CRC status).
//! - `append DIR` appends synthetic batches and prints `ACK <base> <next> <crc32>` for each
//!   acknowledged one, flushing stdout per line; the crash test SIGKILLs it mid-stream and checks
//!   every acknowledged batch survives byte for byte (`crc32` is over the whole stored batch).

use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use spate_protocol::batch::{BatchBuilder, Header, NewRecord};
use spate_storage::{FlushPolicy, Log, LogConfig, LogOptions};

#[derive(Parser)]
#[command(about = "Inspect or exercise a Spate partition log directory")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every segment and batch of the log in DIR.
    Dump { dir: PathBuf },
    /// Append synthetic batches to the log in DIR, printing each acknowledgement.
    Append {
        dir: PathBuf,
        /// always, never or interval:MS.
        #[arg(long, default_value = "always")]
        flush: FlushPolicy,
        /// Batches to append in total (stops early if killed).
        #[arg(long, default_value_t = 1000)]
        batches: u64,
        #[arg(long, default_value_t = 4)]
        records: usize,
        #[arg(long, default_value_t = 200)]
        value_bytes: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 4)]
        concurrency: u64,
        #[arg(long, default_value_t = 4 * 1024 * 1024 + 4096)]
        segment_bytes: u64,
    },
    /// Measure append throughput into a fresh log in DIR (deleted afterwards); prints MB/s.
    Bench {
        dir: PathBuf,
        #[arg(long, default_value = "never")]
        flush: FlushPolicy,
        /// Bytes per batch (records of 1 KiB values).
        #[arg(long, default_value_t = 256 * 1024)]
        batch_bytes: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 1)]
        appenders: u64,
        /// Total bytes to append.
        #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
        total_bytes: u64,
        /// fallocate each segment when it is created.
        #[arg(long)]
        preallocate: bool,
        #[arg(long, default_value_t = 1024 * 1024 * 1024)]
        segment_bytes: u64,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .unwrap_or_else(|e| fail(&format!("cannot start executor: {e}")));
    let result = executor.run(async move {
        match cli.command {
            Command::Dump { dir } => dump(dir).await,
            Command::Append {
                dir,
                flush,
                batches,
                records,
                value_bytes,
                concurrency,
                segment_bytes,
            } => {
                let config = LogConfig { flush, segment_bytes, ..LogConfig::default() };
                append(dir, config, batches, records, value_bytes, concurrency).await
            }
            Command::Bench {
                dir,
                flush,
                batch_bytes,
                appenders,
                total_bytes,
                preallocate,
                segment_bytes,
            } => {
                let config = LogConfig {
                    flush,
                    preallocate,
                    segment_bytes,
                    retention_ms: None,
                    ..LogConfig::default()
                };
                bench(dir, config, batch_bytes, appenders, total_bytes).await
            }
        }
    });
    if let Err(error) = result {
        fail(&error.to_string());
    }
}

fn fail(message: &str) -> ! {
    eprintln!("spate-logtool: {message}");
    std::process::exit(1);
}

async fn append(
    dir: PathBuf,
    config: LogConfig,
    batches: u64,
    records: usize,
    value_bytes: usize,
    concurrency: u64,
) -> spate_storage::Result<()> {
    let log = Log::open(&dir, config, LogOptions::default()).await?;
    let mut tasks = Vec::new();
    for worker in 0..concurrency.max(1) {
        let log = log.clone();
        tasks.push(glommio::spawn_local(async move {
            let mut tag = worker;
            while tag < batches {
                let batch = synthetic_batch(tag, records, value_bytes);
                let mut stamped = batch.clone();
                let appended = log.append(batch, 1).await?;
                spate_protocol::batch::stamp(&mut stamped, appended.base_offset, 1);
                let crc = crc32fast::hash(&stamped);
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "ACK {} {} {crc}",
                    appended.base_offset,
                    appended.last_offset + 1
                );
                let _ = out.flush();
                tag += concurrency;
            }
            Ok::<(), spate_storage::LogError>(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    log.close().await
}

async fn bench(
    dir: PathBuf,
    config: LogConfig,
    batch_bytes: usize,
    appenders: u64,
    total_bytes: u64,
) -> spate_storage::Result<()> {
    let dir = dir.join(format!("spate-logtool-bench-{}", std::process::id()));
    let flush = config.flush;
    let preallocate = config.preallocate;
    let log = Log::open(&dir, config, LogOptions::default()).await?;
    let records = (batch_bytes / 1024).max(1);
    let template = synthetic_batch(0, records, 1024 - 40);
    let per_appender = (total_bytes / template.len() as u64 / appenders.max(1)).max(1);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders.max(1) {
        let log = log.clone();
        let template = template.clone();
        tasks.push(glommio::spawn_local(async move {
            for _ in 0..per_appender {
                log.append(template.clone(), 1).await?;
            }
            Ok::<(), spate_storage::LogError>(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = per_appender * appenders.max(1) * template.len() as u64;
    println!(
        "append flush={flush} preallocate={preallocate} batch_bytes={} appenders={appenders}: {:.0} MB/s ({bytes} bytes in {elapsed:.2} s)",
        template.len(),
        bytes as f64 / elapsed / 1e6
    );
    log.close().await?;
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Deterministic content per tag, so a reader can tell batches apart.
fn synthetic_batch(tag: u64, records: usize, value_bytes: usize) -> bytes::BytesMut {
    let mut builder = BatchBuilder::with_capacity(records * (value_bytes + 40) + 128);
    let now_ms = spate_storage::wall_clock_ms();
    for i in 0..records {
        builder.push(&NewRecord {
            key: Some(Bytes::from(format!("key-{tag}-{i}"))),
            value: Some(Bytes::from(vec![(tag as u8).wrapping_add(i as u8); value_bytes])),
            headers: vec![Header { key: "tag".into(), value: Some(Bytes::from(tag.to_string())) }],
            timestamp: now_ms,
        });
    }
    builder.finish().expect("synthetic batch within limits")
}

async fn dump(dir: PathBuf) -> spate_storage::Result<()> {
    let log = Log::open(&dir, LogConfig::default(), LogOptions::default()).await?;
    let offsets = log.offsets();
    println!(
        "log {}: start {} end {} segments {} bytes {}",
        dir.display(),
        offsets.start,
        offsets.high_watermark,
        log.segment_count(),
        log.size_bytes()
    );
    let mut offset = offsets.start;
    // Bounded: each read advances by at least one batch.
    while offset < offsets.high_watermark {
        let read = match log.read(offset, 1 << 20).await {
            Ok(read) => read,
            Err(error) => {
                println!("  at offset {offset}: {error}");
                break;
            }
        };
        let mut progressed = false;
        for chunk in &read.chunks {
            for (header, _) in spate_storage::scan::batches(chunk) {
                println!(
                    "  batch {}..={} bytes {} records {} term {} max_ts {}",
                    header.base_offset,
                    header.last_offset(),
                    header.batch_length,
                    header.record_count,
                    header.leader_term,
                    header.max_timestamp
                );
                offset = header.next_offset();
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(())
}
