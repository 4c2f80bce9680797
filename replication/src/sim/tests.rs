//! Seeds through the simulator, and proof that it catches each planted bug.

use super::{first_failing_seed, run_seeds, SimOptions};
use crate::types::Plant;

fn assert_all_pass(replicas: usize, seeds: std::ops::Range<u64>) {
    let failures = run_seeds(seeds.clone(), &SimOptions::new(replicas));
    if let Some(f) = failures.first() {
        panic!(
            "{} of {:?} seeds failed with {replicas} replicas; first:\n{f}",
            failures.len(),
            seeds
        );
    }
}

#[test]
fn seeds_pass_with_3_replicas() {
    assert_all_pass(3, 0..2500);
}

#[test]
fn seeds_pass_with_5_replicas() {
    assert_all_pass(5, 0..1200);
}

#[test]
fn seeds_pass_with_1_replica() {
    assert_all_pass(1, 0..500);
}

/// The seeds-to-catch budgets are recorded in PROTOCOL.md; this fails if a checker stops
/// catching its bug within the budget.
fn assert_caught(plant: Plant, replicas: usize, seeds_max: u64) {
    let mut opts = SimOptions::new(replicas);
    opts.plant = plant;
    let caught = first_failing_seed(0..seeds_max, &opts);
    assert!(
        caught.is_some(),
        "plant {} survived {seeds_max} seeds with {replicas} replicas",
        plant.name()
    );
}

#[test]
fn catches_commit_on_minority() {
    assert_caught(Plant::CommitOnMinority, 3, 10);
    assert_caught(Plant::CommitOnMinority, 5, 10);
}

#[test]
fn catches_skip_truncation() {
    assert_caught(Plant::SkipTruncation, 3, 50);
    assert_caught(Plant::SkipTruncation, 5, 50);
}

#[test]
fn catches_count_nondurable_as_durable() {
    assert_caught(Plant::CountNondurableAsDurable, 3, 10);
    assert_caught(Plant::CountNondurableAsDurable, 5, 10);
}

#[test]
fn catches_grant_two_votes_in_a_term() {
    assert_caught(Plant::GrantTwoVotesInATerm, 3, 50);
    assert_caught(Plant::GrantTwoVotesInATerm, 5, 50);
}

#[test]
fn catches_no_prevote() {
    assert_caught(Plant::NoPrevote, 3, 10);
    assert_caught(Plant::NoPrevote, 5, 10);
}

#[test]
fn failing_seed_replays_identically() {
    let mut opts = SimOptions::new(3);
    opts.plant = Plant::SkipTruncation;
    let a = first_failing_seed(0..50, &opts).expect("caught");
    let b = super::run_seed(a.seed, &opts).expect_err("same seed fails again");
    assert_eq!((a.tick, &a.violation, &a.trace), (b.tick, &b.violation, &b.trace));
    assert!(!a.trace.is_empty());
}

/// The flush=never promise is exactly "survives process crashes": add simultaneous power losses
/// of a majority and acknowledged writes are lost; under flush=always the same faults are safe.
#[test]
fn flush_never_does_not_survive_a_majority_power_loss() {
    let mut opts = SimOptions::new(3);
    opts.flush = Some(crate::types::FlushPolicy::Never);
    opts.majority_power_loss = true;
    let caught = first_failing_seed(0..50, &opts).expect("flush=never loses acknowledged writes");
    assert!(!caught.violation.contains("assertion"), "{caught}");
}

#[test]
fn flush_always_survives_a_majority_power_loss() {
    for replicas in [3, 5] {
        let mut opts = SimOptions::new(replicas);
        opts.flush = Some(crate::types::FlushPolicy::Always);
        opts.majority_power_loss = true;
        let failures = run_seeds(0..300, &opts);
        assert!(failures.is_empty(), "{}", failures[0]);
    }
}

#[test]
fn catches_vote_before_persist() {
    assert_caught(Plant::VoteBeforePersist, 3, 10);
    assert_caught(Plant::VoteBeforePersist, 5, 10);
}
