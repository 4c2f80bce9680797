//! Committed MB/s through an RF 3 group on loopback (three brokers, each on its own thread and
//! Glommio executor in this process, real logs, real QUIC with mutual TLS) against the same
//! appends to one local log, in one run so the ratio is fair.
//!
//! ```text
//! cargo build --release -p spate-cluster --bin spate-repl-bench
//! $CARGO_TARGET_DIR/release/spate-repl-bench --batches 2000 --batch-bytes 65536 --in-flight 64
//! ```

use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Parser;
use spate_cluster::testing::{loopback_addrs, tagged_batch, BrokerSpec, TestBroker};
use spate_replication::{GroupId, NodeId, Role};
use spate_storage::{FlushPolicy, Log, LogConfig, LogOptions};

#[derive(Parser, Debug)]
struct Args {
    /// Batches to commit in each run.
    #[arg(long, default_value_t = 2000)]
    batches: u64,
    /// Bytes of record values per batch (64 records).
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: usize,
    /// Proposals (or local appends) in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// `always` or `never`.
    #[arg(long, default_value = "always")]
    flush: String,
    /// Where the logs go (a directory on the disk under test).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

const RECORDS_PER_BATCH: usize = 64;

fn main() {
    let args = Args::parse();
    let flush: FlushPolicy = args.flush.parse().expect("flush policy");
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("spate-repl-bench-").tempdir_in(base).expect("dir");
    let value_bytes = args.batch_bytes / RECORDS_PER_BATCH;
    let batch = tagged_batch(0, RECORDS_PER_BATCH, value_bytes);
    let batch_len = batch.len();
    println!(
        "{} batches of {} bytes ({} records), {} in flight, flush={flush}",
        args.batches, batch_len, RECORDS_PER_BATCH, args.in_flight
    );

    let local = local_run(&dir.path().join("local"), &batch, args.batches, args.in_flight, flush);
    let replicated = replicated_run(dir.path(), &batch, args.batches, args.in_flight, flush);
    let mb =
        |elapsed: Duration| (args.batches as f64 * batch_len as f64) / elapsed.as_secs_f64() / 1e6;
    println!("one local log:       {:>8.1} MB/s ({:.2?})", mb(local), local);
    println!("RF 3 committed:      {:>8.1} MB/s ({:.2?})", mb(replicated), replicated);
    println!("ratio RF3 / local:   {:>8.2}", local.as_secs_f64() / replicated.as_secs_f64());
}

/// The same batches appended to one log on one executor, `in_flight` at a time.
fn local_run(
    dir: &std::path::Path,
    batch: &[u8],
    batches: u64,
    in_flight: usize,
    flush: FlushPolicy,
) -> Duration {
    let dir = dir.to_path_buf();
    let batch = batch.to_vec();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .spawn(move || async move {
            let config = LogConfig {
                flush,
                segment_bytes: 1024 * 1024 * 1024,
                cache_bytes: 32 * 1024 * 1024,
                ..LogConfig::default()
            };
            let log = Log::open(&dir, config, LogOptions::default()).await.expect("log");
            let start = Instant::now();
            let semaphore = std::rc::Rc::new(glommio::sync::Semaphore::new(in_flight as u64));
            let mut tasks = Vec::new();
            for _ in 0..batches {
                let permit = semaphore.acquire_static_permit(1).await.expect("permit");
                let (log, batch) = (log.clone(), BytesMut::from(&batch[..]));
                tasks.push(glommio::spawn_local(async move {
                    log.append(batch, 1).await.expect("append");
                    drop(permit);
                }));
            }
            for task in tasks {
                task.await;
            }
            let elapsed = start.elapsed();
            log.close().await.expect("close");
            elapsed
        })
        .expect("executor")
        .join()
        .expect("local run")
}

/// Three brokers; the batches proposed through the leader, `in_flight` at a time, each
/// counted once committed.
fn replicated_run(
    dir: &std::path::Path,
    batch: &[u8],
    batches: u64,
    in_flight: usize,
    flush: FlushPolicy,
) -> Duration {
    let ids: [NodeId; 3] = [1, 2, 3];
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    spate_transport::certs::write_cluster_certs(&certs, 3).expect("certs");
    let addrs = loopback_addrs(&ids);
    let brokers: Vec<TestBroker> = ids
        .iter()
        .map(|&id| {
            TestBroker::start(BrokerSpec {
                id,
                dir: dir.join(format!("broker-{id}")),
                certs: certs.clone(),
                addrs: addrs.clone(),
                replicas: ids.to_vec(),
                group: GroupId(1),
                flush,
                quiesce: true,
                cpu: Some(id as usize % 2),
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        assert!(Instant::now() < deadline, "no leader");
        let led = brokers.iter().find(|b| {
            let s = b.status();
            s.role == Role::Leader && s.high_watermark.is_some()
        });
        if let Some(b) = led {
            break b;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let start = Instant::now();
    let mut pending: std::collections::VecDeque<
        std::sync::mpsc::Receiver<spate_cluster::testing::ProposeReply>,
    > = std::collections::VecDeque::new();
    for _ in 0..batches {
        if pending.len() >= in_flight {
            let answer = pending.pop_front().expect("pending");
            answer.recv_timeout(Duration::from_secs(60)).expect("answer").expect("committed");
        }
        pending.push_back(leader.propose(batch.to_vec()));
    }
    for answer in pending {
        answer.recv_timeout(Duration::from_secs(60)).expect("answer").expect("committed");
    }
    let elapsed = start.elapsed();
    for broker in brokers {
        broker.shutdown();
    }
    elapsed
}
