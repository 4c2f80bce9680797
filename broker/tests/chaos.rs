//! The fault-injection suite's short runs: a real broker, and a three-broker cluster with
//! replicated topics, under kill -9 and SIGSTOP (and, as root, network partitions and packet
//! loss) while idempotent producers and a consumer work,
//! checked for lost, inconsistent, reordered and duplicated writes and consumer anomalies. And proof that the checker can fail: the same run against a
//! broker in its test-only unsafe mode (each restart drops the last batch of every partition)
//! must be caught.

mod common;

use spate_chaos::runner::{run, RunOptions};

fn options(seed: u64, faults: &[&str], out: &std::path::Path) -> RunOptions {
    options_for(1, seed, faults, out)
}

fn options_for(brokers: u32, seed: u64, faults: &[&str], out: &std::path::Path) -> RunOptions {
    RunOptions {
        seconds: 15,
        faults: faults.iter().map(|f| f.to_string()).collect(),
        seed,
        partitions: 3,
        producers: 2,
        flush: "never".into(),
        out: out.to_path_buf(),
        spate: common::SPATE.into(),
        port: spate_chaos::runner::free_port(),
        brokers,
        broker_env: Vec::new(),
    }
}

#[test]
fn kill_9_and_pauses_lose_nothing_acknowledged() {
    let out = common::temp_dir();
    let result = run(options(1, &["kill", "pause"], out.path())).unwrap();
    let report = &result.report;
    assert!(report.faults >= 2, "{report:#?}");
    assert!(report.acknowledged > 1_000, "{report:#?}");
    assert_eq!(result.violations, 0, "{report:#?}");
}

/// Every fault of the runner: random kills and pauses, the leader of a partition and the
/// controller killed, all three brokers killed at once, and (as root) partitions and loss.
#[test]
fn a_three_broker_cluster_under_kill_9_and_pauses_loses_and_duplicates_nothing() {
    cluster_run_loses_and_duplicates_nothing(3, &spate_chaos::runner::FAULTS);
}

/// Network faults: each broker in its own network namespace, the leader of a partition cut
/// off (clients still reach it), minority and majority, a broker bridging two sides, and
/// packet loss. Needs root (namespaces) and nftables; `scripts/test.sh` installs nftables when
/// it runs as root, as CI does.
#[test]
#[ignore = "needs root and nftables (network namespaces); CI runs it as root"]
fn a_three_broker_cluster_under_partitions_and_packet_loss_loses_and_duplicates_nothing() {
    spate_chaos::net::available().expect("network faults can run here");
    cluster_run_loses_and_duplicates_nothing(8, &spate_chaos::runner::NETWORK_FAULTS);
}

/// 30 s on three brokers with `faults` from `seed`: at least three faults, the group member
/// committed, writes acknowledged, and no safety violation.
fn cluster_run_loses_and_duplicates_nothing(seed: u64, faults: &[&str]) {
    let out = common::temp_dir();
    let mut run_options = options_for(3, seed, faults, out.path());
    run_options.seconds = 30;
    let result = run(run_options).unwrap();
    let report = &result.report;
    let failed = [
        (report.faults < 3, "at least three faults"),
        (report.commits <= 10, "the group member committed"),
        (report.acknowledged <= 1_000, "writes acknowledged"),
        (result.violations != 0, "no safety violation"),
    ];
    if let Some((_, what)) = failed.iter().find(|(failed, _)| *failed) {
        // The history, timeline and brokers' logs stay for a post-mortem.
        let kept = out.keep();
        panic!("{what}: not so (run kept in {}): {report:#?}", kept.display());
    }
}

#[test]
fn the_checker_catches_a_broker_that_loses_acknowledged_writes() {
    let out = common::temp_dir();
    let mut unsafe_run = options(2, &["kill"], out.path());
    unsafe_run.broker_env = vec![(spate_broker::server::UNSAFE_LOSE_TAIL.into(), "1".into())];
    let result = run(unsafe_run).unwrap();
    assert!(result.report.faults >= 2);
    assert!(result.report.lost > 0, "{:#?}", result.report);
    assert!(result.violations > 0);
}

/// The same proof against a cluster: leaders that answer acks=all before commit (the planted
/// bug), cut off from the other brokers while clients still reach them. An isolated leader
/// acknowledges until it notices it lost its majority; the other side elects a leader without
/// those writes, and the checker must say they are lost. (Killing the leader is not enough:
/// its followers almost always hold a batch before its own write completes.)
#[test]
#[ignore = "needs root and nftables (network namespaces); CI runs it as root"]
fn the_checker_catches_a_cluster_that_acknowledges_before_commit() {
    spate_chaos::net::available().expect("network faults can run here");
    let out = common::temp_dir();
    let mut unsafe_run = options_for(3, 7, &["partition"], out.path());
    unsafe_run.seconds = 20;
    unsafe_run.broker_env =
        vec![(spate_broker::server::UNSAFE_ACK_BEFORE_COMMIT.into(), "1".into())];
    let result = run(unsafe_run).unwrap();
    assert!(result.report.faults >= 2);
    assert!(result.report.lost > 0, "{:#?}", result.report);
    assert!(result.violations > 0);
}
