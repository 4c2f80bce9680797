//! The fault-injection suite's short run: a real broker under kill -9 and SIGSTOP while
//! producers and a consumer work, checked for lost, inconsistent, reordered and duplicated
//! writes and consumer anomalies. And proof that the checker can fail: the same run against a
//! broker in its test-only unsafe mode (each restart drops the last batch of every partition)
//! must be caught.

mod common;

use spate_chaos::runner::{run, RunOptions};

fn options(seed: u64, faults: &[&str], out: &std::path::Path) -> RunOptions {
    RunOptions {
        seconds: 15,
        faults: faults.iter().map(|f| f.to_string()).collect(),
        seed,
        partitions: 3,
        producers: 2,
        flush: "never".into(),
        out: out.to_path_buf(),
        spate: common::SPATE.into(),
        port: common::free_ports(),
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
