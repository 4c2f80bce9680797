//! Replication core benchmarks, driven by the in-memory driver (`testkit`): no IO, so these
//! measure the core's own cost.
//!
//! - `append_3_replicas`: records/s committed through a 3-replica group (64 batches of 16 records
//!   proposed, then every message delivered until the group is quiet).
//! - `idle_round_10k_partitions`: one timer round (tick every replica, deliver the coalesced
//!   heartbeats and replies) of 10,000 idle partitions x 3 brokers; elements are replicas, so
//!   time per element is the cost of one idle replica per tick: `heartbeating` with quiescence
//!   off (heartbeats and replies every 3 ticks), `quiesced` with it on (the steady state).
//! - `tick_10k_idle_followers`: the timer alone, no heartbeat due.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate_replication::testkit::{MemCluster, MultiGroup};
use spate_replication::{Config, Event, GroupId, Replica, Restored};

const BATCHES_PER_ITER: u64 = 64;
const RECORDS_PER_BATCH: u64 = 16;

fn append_3_replicas(c: &mut Criterion) {
    let mut cluster = MemCluster::new(3);
    cluster.record_effects = false;
    let leader = cluster.elect();
    let mut g = c.benchmark_group("append_3_replicas");
    g.throughput(Throughput::Elements(BATCHES_PER_ITER * RECORDS_PER_BATCH));
    let mut iters = 0u64;
    g.bench_function("records", |b| {
        b.iter(|| {
            for _ in 0..BATCHES_PER_ITER {
                cluster.propose(leader, RECORDS_PER_BATCH).expect("leader");
            }
            cluster.deliver_all();
            iters += 1;
            if iters.is_multiple_of(256) {
                cluster.trim(1024);
            }
        })
    });
    g.finish();
    let l = &cluster.node(leader).core;
    assert_eq!(l.commit(), l.log_end(), "everything proposed was committed");
}

fn idle_round_10k_partitions(c: &mut Criterion) {
    let mut g = c.benchmark_group("idle_round_10k_partitions");
    g.sample_size(20);
    for (name, quiesce) in [("heartbeating", false), ("quiesced", true)] {
        let mut mg = MultiGroup::new(3, 10_000, quiesce);
        assert!(mg.elect_all(300));
        for _ in 0..10 {
            mg.round(); // Let quiesced groups settle.
        }
        g.throughput(Throughput::Elements(mg.replica_count() as u64));
        g.bench_function(name, |b| b.iter(|| mg.round()));
    }
    g.finish();
}

/// The timer's share alone: ticking 10,000 idle follower replicas whose election timeout is far
/// away (no heartbeat due), i.e. the floor of what an idle partition costs per tick.
fn tick_10k_idle_followers(c: &mut Criterion) {
    let mut replicas: Vec<Replica<()>> = (0..10_000u64)
        .map(|g| {
            let mut cfg = Config::new(2, GroupId(g), g);
            cfg.election_ticks_min = u32::MAX / 2;
            cfg.election_ticks_max = u32::MAX;
            Replica::new(cfg, Restored::bootstrap(&[1, 2, 3]))
        })
        .collect();
    let mut out = Vec::new();
    let mut g = c.benchmark_group("tick_10k_idle_followers");
    g.throughput(Throughput::Elements(replicas.len() as u64));
    g.bench_function("replicas", |b| {
        b.iter(|| {
            for r in &mut replicas {
                let _ = r.step(Event::Tick, &mut out);
            }
            assert!(out.is_empty());
        })
    });
    g.finish();
}

criterion_group!(benches, append_3_replicas, idle_round_10k_partitions, tick_10k_idle_followers);
criterion_main!(benches);
