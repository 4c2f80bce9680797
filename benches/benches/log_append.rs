//! Partition-log throughput: appends (flush never/always, 16 KiB and 256 KiB batches of 1 KiB
//! records, 1 and 8 concurrent appenders) and reads (tail cache, disk).
//!
//! Run: `cargo bench -p spate-benches --bench log_append`. Set `SPATE_BENCH_DIR` to put the logs
//! on a particular device (default: the system temp dir, which must not be tmpfs to measure
//! direct IO).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use spate_protocol::batch::{BatchBuilder, NewRecord};
use spate_storage::{FlushPolicy, Log, LogConfig, LogOptions};

const RECORD_VALUE_BYTES: usize = 1024 - 24;

fn batch_of(bytes: usize) -> BytesMut {
    let mut builder = BatchBuilder::with_capacity(bytes + 1024);
    let value = Bytes::from(vec![7u8; RECORD_VALUE_BYTES]);
    for _ in 0..(bytes / 1024).max(1) {
        builder.push(&NewRecord { value: Some(value.clone()), timestamp: 1, ..Default::default() });
    }
    builder.finish().expect("valid")
}

fn bench_dir() -> PathBuf {
    std::env::var_os("SPATE_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn executor() -> LocalExecutor {
    LocalExecutorBuilder::new(Placement::Unbound).make().expect("executor")
}

fn appends(c: &mut Criterion) {
    let executor = executor();
    let mut group = c.benchmark_group("log_append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for flush in [FlushPolicy::Never, FlushPolicy::Always] {
        for batch_bytes in [16 * 1024, 256 * 1024] {
            for appenders in [1usize, 8] {
                let batch = batch_of(batch_bytes);
                group.throughput(Throughput::Bytes((batch.len() * appenders) as u64));
                let id = BenchmarkId::new(
                    format!("flush={flush}"),
                    format!("{}KiB x{appenders}", batch_bytes / 1024),
                );
                group.bench_function(id, |b| {
                    b.iter_custom(|iterations| {
                        executor.run(append_run(batch.clone(), flush, appenders, iterations))
                    })
                });
            }
        }
    }
    group.finish();
}

/// Each of `appenders` tasks appends `iterations` batches to a fresh log.
async fn append_run(
    batch: BytesMut,
    flush: FlushPolicy,
    appenders: usize,
    iterations: u64,
) -> Duration {
    let dir = tempfile::Builder::new().prefix("spate-bench-").tempdir_in(bench_dir()).expect("dir");
    let config = LogConfig { flush, ..LogConfig::default() };
    let log = Log::open(dir.path(), config, LogOptions::default()).await.expect("open");
    let started = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let log = log.clone();
            let batch = batch.clone();
            glommio::spawn_local(async move {
                for _ in 0..iterations {
                    log.append(batch.clone(), 1).await.expect("append");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = started.elapsed();
    log.close().await.expect("close");
    elapsed
}

fn reads(c: &mut Criterion) {
    let executor = executor();
    let dir =
        tempfile::Builder::new().prefix("spate-bench-read-").tempdir_in(bench_dir()).expect("dir");
    let batch = batch_of(256 * 1024);
    let batches = 1024u64; // 256 MiB
    let log_bytes = batch.len() as u64 * batches;
    executor.run(async {
        let log = Log::open(dir.path(), LogConfig::default(), LogOptions::default()).await.unwrap();
        for _ in 0..batches {
            log.append(batch.clone(), 1).await.unwrap();
        }
        log.close().await.unwrap();
    });
    let mut group = c.benchmark_group("log_read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(log_bytes));
    for (name, cache_bytes) in [("disk", 0usize), ("cache", 256 * 1024 * 1024)] {
        group.bench_function(BenchmarkId::new("1MiB reads", name), |b| {
            b.iter_custom(|iterations| {
                executor.run(async {
                    let config = LogConfig { cache_bytes, ..LogConfig::default() };
                    let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
                    if cache_bytes > 0 {
                        // Re-append to fill the cache with the same data; only reads are timed.
                        log.truncate_to(0).await.unwrap();
                        for _ in 0..batches {
                            log.append(batch.clone(), 1).await.unwrap();
                        }
                    }
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let mut offset = 0;
                        let end = log.offsets().high_watermark;
                        while offset < end {
                            let read = log.read(offset, 1 << 20).await.unwrap();
                            let mut bytes = 0;
                            for chunk in &read.chunks {
                                bytes += chunk.len();
                                let header = spate_protocol::batch::BatchHeader::parse(
                                    &chunk[chunk.len() - batch.len()..],
                                )
                                .unwrap();
                                offset = header.next_offset();
                            }
                            assert!(bytes > 0);
                        }
                    }
                    let elapsed = started.elapsed();
                    log.close().await.unwrap();
                    elapsed
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, appends, reads);
criterion_main!(benches);
