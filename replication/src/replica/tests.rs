//! Hand-driven scenarios on a 3-replica group over the in-memory driver.

use crate::effect::Effect;
use crate::message::{Dropped, Message};
use crate::replica::Restored;
use crate::replica::{Event, Role};
use crate::testkit::MemCluster;
use crate::types::{BatchMeta, MembershipChange};

fn others(leader: u32, n: u32) -> Vec<u32> {
    (1..=n).filter(|&i| i != leader).collect()
}

#[test]
fn elects_one_leader_and_commits_its_marker() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let leaders = c.nodes.iter().filter(|n| n.core.role() == Role::Leader).count();
    assert_eq!(leaders, 1);
    let l = &c.node(leader).core;
    assert_eq!(l.high_watermark(), Some(1), "marker at offset 0 committed");
    assert!(c
        .node(leader)
        .effects
        .contains(&Effect::AppendLeaderMarker { offset: 0, term: l.term() }));
    // Hard state is persisted before the vote request goes out.
    let fx = &c.node(leader).effects;
    let persist = fx
        .iter()
        .position(|e| matches!(e, Effect::PersistHardState(h) if h.voted_for == Some(leader)));
    let vote = fx.iter().position(|e| matches!(e, Effect::Send { msg: Message::Vote { .. }, .. }));
    assert!(persist.unwrap() < vote.unwrap());
}

#[test]
fn replicates_and_commits_on_a_majority() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    for _ in 0..10 {
        let meta = c.propose(leader, 5).unwrap();
        assert_eq!(meta.term, c.node(leader).core.term());
    }
    c.run_until(20, MemCluster::converged);
    assert_eq!(c.node(leader).core.high_watermark(), Some(51));
    for n in &c.nodes {
        assert_eq!(n.core.commit(), 51);
    }
    assert_eq!(
        c.propose(others(leader, 3)[0], 1),
        Err(crate::ProposeError::NotLeader(Some(leader)))
    );
}

#[test]
fn commit_counts_only_durable_offsets() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let before = c.node(leader).core.commit();
    for f in others(leader, 3) {
        c.node_mut(f).auto_durable = false;
    }
    c.propose(leader, 4).unwrap();
    c.tick();
    c.tick();
    assert_eq!(c.node(leader).core.commit(), before, "followers appended but nothing is durable");
    let f = others(leader, 3)[0];
    let end = c.node(f).log_end();
    c.step(f, Event::LogDurable { end });
    c.deliver_all();
    assert_eq!(c.node(leader).core.commit(), end, "leader + one durable follower is a majority");
}

#[test]
fn new_leader_truncates_old_leaders_divergent_tail() {
    let mut c = MemCluster::new(3);
    let old = c.elect();
    c.propose(old, 2).unwrap();
    c.run_until(10, MemCluster::converged);
    let committed = c.node(old).core.commit();
    // The old leader writes records nobody else gets.
    c.isolate(old);
    c.propose(old, 3).unwrap();
    c.propose(old, 3).unwrap();
    c.run_until(200, |c| c.leader().is_some_and(|l| l != old));
    let new = c.leader().unwrap();
    c.propose(new, 1).unwrap();
    c.heal();
    c.run_until(200, MemCluster::converged);
    assert_eq!(c.leader(), Some(new), "pre-vote kept the old leader from disrupting");
    let truncated = c.node(old).effects.contains(&Effect::Truncate { to_offset: committed });
    assert!(truncated, "old leader cut its uncommitted tail at {committed}");
    assert_eq!(c.node(old).record_terms(), c.node(new).record_terms());
}

#[test]
fn isolated_follower_does_not_depose_a_healthy_leader() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let term = c.node(leader).core.term();
    let f = others(leader, 3)[0];
    c.isolate(f);
    for _ in 0..200 {
        c.tick();
    }
    assert_eq!(c.node(f).core.term(), term, "pre-vote failed, so the term did not move");
    c.heal();
    for _ in 0..100 {
        c.tick();
    }
    assert_eq!(c.leader(), Some(leader));
    assert_eq!(c.node(leader).core.term(), term);
}

#[test]
fn empty_follower_catches_up_from_leaders_log_start() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let lagging = others(leader, 3)[0];
    c.isolate(lagging);
    let mut bases = Vec::new();
    for _ in 0..20 {
        bases.push(c.propose(leader, 10).unwrap().base_offset);
        c.tick();
    }
    c.run_until(20, |c| c.node(leader).core.commit() == c.node(leader).log_end());
    // Retention deletes on the leader what the lagging follower still needs.
    let start = bases[10];
    c.delete_before(leader, start);
    // The lagging follower also lost its disk: it restarts empty.
    let f = c.node_mut(lagging);
    f.batches.clear();
    f.log_start = 0;
    c.restart(lagging);
    c.heal();
    c.run_until(100, MemCluster::converged);
    let reset = c
        .node(lagging)
        .effects
        .iter()
        .any(|e| matches!(e, Effect::ResetLog { log_start, .. } if *log_start == start));
    assert!(reset, "follower reset its log to the leader's log start");
    assert_eq!(c.node(lagging).core.log_start(), start);
    assert_eq!(c.node(lagging).log_end(), c.node(leader).log_end());
}

#[test]
fn follower_behind_catches_up_through_divergence_hints() {
    let mut c = MemCluster::new(3);
    let first = c.elect();
    let f = others(first, 3)[0];
    c.isolate(f);
    for _ in 0..30 {
        c.propose(first, 2).unwrap();
        c.tick();
    }
    c.heal();
    c.run_until(100, MemCluster::converged);
    assert_eq!(c.node(f).log_end(), c.node(first).log_end());
}

#[test]
fn leadership_transfer_hands_over_to_the_target() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let term = c.node(leader).core.term();
    c.propose(leader, 3).unwrap();
    let target = others(leader, 3)[1];
    c.transfer(leader, target).unwrap();
    assert_eq!(c.propose(leader, 1), Err(crate::ProposeError::Transferring));
    c.run_until(50, |c| c.leader() == Some(target));
    assert!(c.node(target).core.term() > term);
    c.run_until(50, MemCluster::converged);
}

#[test]
fn replace_a_voter_one_step_at_a_time() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    c.propose(leader, 5).unwrap();
    c.run_until(20, MemCluster::converged);
    // Node 4 joins as a learner: it boots knowing the set that names it.
    let mut with_learner = c.bootstrap_membership().apply(MembershipChange::AddLearner(4)).unwrap();
    c.add_node(4, Restored { memberships: vec![(0, with_learner.clone())], ..Restored::default() });
    c.change_membership(leader, MembershipChange::AddLearner(4)).unwrap();
    assert_eq!(
        c.change_membership(leader, MembershipChange::RemoveReplica(3)),
        Err(crate::ProposeError::ChangePending)
    );
    c.run_until(50, MemCluster::converged);
    assert!(!c.node(4).core.current_membership().is_voter(4));
    c.change_membership(leader, MembershipChange::PromoteLearner(4)).unwrap();
    c.run_until(50, MemCluster::converged);
    with_learner = c.node(leader).core.current_membership().clone();
    assert_eq!(with_learner.voters, vec![1, 2, 3, 4]);
    let victim = others(leader, 3)[0];
    c.change_membership(leader, MembershipChange::RemoveReplica(victim)).unwrap();
    c.run_until(50, |c| c.node(leader).core.commit() == c.node(leader).log_end());
    // The removed replica is gone: the others still commit without it.
    c.node_mut(victim).up = false;
    c.propose(leader, 2).unwrap();
    c.run_until(50, |c| c.node(leader).core.commit() == c.node(leader).log_end());
    assert_eq!(c.node(leader).core.current_membership().voters.len(), 3);
    assert_eq!(
        c.change_membership(leader, MembershipChange::RemoveReplica(leader)),
        Err(crate::ProposeError::RemovingLeader)
    );
}

#[test]
fn malformed_and_stale_messages_are_dropped_not_panicked_on() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    let f = others(leader, 3)[0];
    let term = c.node(leader).core.term();
    let end = c.node(f).log_end();
    let gap = Message::Append {
        term,
        prev_end: end,
        prev_term: term,
        commit: 0,
        from_log_start: None,
        seq: 1,
        batches: vec![BatchMeta::data(end + 5, end + 6, term)],
        payload: (),
    };
    let mut out = Vec::new();
    assert_eq!(
        c.node_mut(f).core.step(Event::Message { from: leader, msg: gap }, &mut out),
        Err(Dropped::MalformedBatches)
    );
    let future_term = Message::Append {
        term,
        prev_end: end,
        prev_term: term,
        commit: 0,
        from_log_start: None,
        seq: 1,
        batches: vec![BatchMeta::data(end, end, term + 9)],
        payload: (),
    };
    assert_eq!(
        c.node_mut(f).core.step(Event::Message { from: leader, msg: future_term }, &mut out),
        Err(Dropped::MalformedBatches)
    );
    let stale = Message::Heartbeat { term: term - 1, commit: u64::MAX, quiesce: false };
    let r = c.node_mut(f).core.step(Event::Message { from: leader, msg: stale }, &mut out);
    assert!(matches!(r, Err(Dropped::StaleTerm { .. } | Dropped::ZeroTerm)));
    let absurd = Message::AppendReply {
        term,
        seq: 1,
        outcome: crate::AppendOutcome::Accepted { match_end: u64::MAX, durable_end: u64::MAX },
    };
    let r = c.node_mut(leader).core.step(Event::Message { from: f, msg: absurd }, &mut out);
    assert_eq!(r, Err(Dropped::OffsetOutOfRange));
    assert_eq!(
        c.node_mut(f)
            .core
            .step(Event::Message { from: f, msg: Message::TimeoutNow { term } }, &mut out),
        Err(Dropped::FromSelf)
    );
}

#[test]
fn a_vote_survives_a_restart() {
    let mut c = MemCluster::new(3);
    let mut out = Vec::new();
    let vote =
        |_candidate: u32| Message::Vote { term: 5, last_term: 0, log_end: 0, transfer: false };
    c.node_mut(1).core.step(Event::Message { from: 2, msg: vote(2) }, &mut out).unwrap();
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Send { msg: Message::VoteReply { granted: true, .. }, .. })));
    c.node_mut(1).hard_state = c.node(1).core.hard_state();
    c.restart(1);
    out.clear();
    c.node_mut(1).core.step(Event::Message { from: 3, msg: vote(3) }, &mut out).unwrap();
    assert!(out
        .iter()
        .any(|e| matches!(e, Effect::Send { msg: Message::VoteReply { granted: false, .. }, .. })));
}

#[test]
fn hostile_terms_and_rewrites_of_committed_records_are_dropped() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    c.run_until(20, MemCluster::converged);
    let f = others(leader, 3)[0];
    let term = c.node(leader).core.term();
    let mut out = Vec::new();
    let huge = Message::Heartbeat { term: u64::MAX, commit: 0, quiesce: false };
    let r = c.node_mut(f).core.step(Event::Message { from: leader, msg: huge }, &mut out);
    assert_eq!(r, Err(Dropped::TermOutOfRange));
    // A "leader" of a later term rewriting a committed record is refused.
    let commit = c.node(f).core.commit();
    assert!(commit >= 1);
    let t0 = c.node(f).core.history().term_at(0);
    let append = |batch_term| Message::Append {
        term: term + 1,
        prev_end: 0,
        prev_term: 0,
        commit: 0,
        from_log_start: None,
        seq: 1,
        batches: vec![BatchMeta::data(0, 0, batch_term)],
        payload: (),
    };
    let r =
        c.node_mut(f).core.step(Event::Message { from: leader, msg: append(term + 1) }, &mut out);
    assert_eq!(r, Err(Dropped::BelowCommit));
    out.clear();
    c.node_mut(f).core.step(Event::Message { from: leader, msg: append(t0) }, &mut out).unwrap();
    assert!(
        !out.iter().any(|e| matches!(e, Effect::Truncate { .. })),
        "same record: nothing to cut"
    );
    assert_eq!(c.node(f).core.commit(), commit);
}

/// Random, mostly nonsensical messages from any node, in every role: the core may drop or act
/// on them (they can be forged: safety is not checked here), but never panics.
#[test]
fn random_messages_never_panic() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(7);
    for round in 0..300 {
        let mut c = MemCluster::new(3);
        c.record_effects = false;
        let leader = c.elect();
        for _ in 0..rng.gen_range(0..5) {
            c.propose(leader, rng.gen_range(1..4)).unwrap();
            c.tick();
        }
        for i in 0..2_000 {
            let to = rng.gen_range(1..=3);
            let from = rng.gen_range(1..=4);
            let node = &c.node(to).core;
            let (term, end) = (node.term(), node.log_end());
            let msg = random_message(&mut rng, term, end);
            c.step(to, Event::Message { from, msg });
            if i % 50 == 0 {
                c.tick();
            }
        }
        assert!(round < 300);
    }
}

fn random_message(rng: &mut rand::rngs::SmallRng, term: u64, end: u64) -> Message<()> {
    use rand::Rng;
    let t = |rng: &mut rand::rngs::SmallRng| match rng.gen_range(0..6) {
        0 => 0,
        1 => u64::MAX,
        _ => term.saturating_sub(1) + rng.gen_range(0..3),
    };
    let o = |rng: &mut rand::rngs::SmallRng| match rng.gen_range(0..8) {
        0 => u64::MAX,
        1 => u64::MAX - 1,
        _ => rng.gen_range(0..end.saturating_add(3)),
    };
    match rng.gen_range(0..10) {
        0 => Message::PreVote { term: t(rng), last_term: t(rng), log_end: o(rng) },
        1 => Message::PreVoteReply { term: t(rng), granted: rng.gen() },
        2 => {
            Message::Vote { term: t(rng), last_term: t(rng), log_end: o(rng), transfer: rng.gen() }
        }
        3 => Message::VoteReply { term: t(rng), granted: rng.gen() },
        4 => {
            let prev_end = o(rng);
            let mut base = if rng.gen_bool(0.8) { prev_end } else { o(rng) };
            let mut batches = Vec::new();
            for _ in 0..rng.gen_range(0..4) {
                let last = base.saturating_add(rng.gen_range(0..3));
                let mut b = BatchMeta::data(base, last, t(rng));
                if rng.gen_bool(0.1) {
                    b.membership =
                        Some(crate::types::Membership::new(&[1, 2, 3, 4][..rng.gen_range(1..5)]));
                }
                batches.push(b);
                base = last.saturating_add(1);
            }
            let from_log_start =
                rng.gen_bool(0.2).then(|| crate::types::Membership::new(&[1, 2, 3]));
            Message::Append {
                term: t(rng),
                prev_end,
                prev_term: t(rng),
                commit: o(rng),
                from_log_start,
                seq: rng.gen_range(0..4),
                batches,
                payload: (),
            }
        }
        5 => {
            let outcome = if rng.gen() {
                crate::AppendOutcome::Accepted { match_end: o(rng), durable_end: o(rng) }
            } else {
                crate::AppendOutcome::Mismatch { hint_term: t(rng), hint_end: o(rng) }
            };
            Message::AppendReply { term: t(rng), seq: rng.gen_range(0..4), outcome }
        }
        6 => Message::DurableAck { term: t(rng), durable_end: o(rng) },
        7 => Message::Heartbeat { term: t(rng), commit: o(rng), quiesce: rng.gen() },
        8 => Message::HeartbeatReply { term: t(rng), durable_end: o(rng), quiesced: rng.gen() },
        _ => Message::TimeoutNow { term: t(rng) },
    }
}

#[test]
fn idle_group_goes_quiet_and_wakes_on_demand() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    c.propose(leader, 3).unwrap();
    c.run_until(50, |c| c.nodes.iter().all(|n| n.core.is_quiesced()));
    let before = c.delivered;
    for _ in 0..100 {
        c.tick();
    }
    assert_eq!(c.delivered, before, "a quiet group sends nothing");
    // A proposal wakes it, and it commits as usual.
    let meta = c.propose(leader, 2).unwrap();
    c.run_until(20, |c| c.node(leader).core.commit() > meta.last_offset);
    // The leader's node dies: followers hear it from their failure detector and elect.
    c.run_until(50, |c| c.nodes.iter().all(|n| n.core.is_quiesced()));
    c.isolate(leader);
    c.run_until(100, |c| c.leader().is_some_and(|l| l != leader));
}

#[test]
fn a_resent_append_is_a_probe_and_a_late_answer_starts_no_second_stream() {
    let mut c = MemCluster::new(3);
    let leader = c.elect();
    c.run_until(50, MemCluster::converged);
    let f = others(leader, 3)[0];
    let term = c.node(leader).core.term();
    let sends_to_f = |out: &[Effect<()>]| -> Vec<(u64, bool)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::SendAppend(r) if r.to == f => Some((r.seq, r.probe)),
                _ => None,
            })
            .collect()
    };
    let accepted = |seq, end| Message::AppendReply {
        term,
        seq,
        outcome: crate::AppendOutcome::Accepted { match_end: end, durable_end: end },
    };
    let mut out = Vec::new();
    let first = c.node_mut(leader).core.propose(1, &mut out).unwrap();
    let sent = sends_to_f(&out);
    assert_eq!(sent.len(), 1);
    let (seq, probe) = sent[0];
    assert!(!probe, "the first send carries the records");
    // Unanswered: resent as a probe (no records to read again), under the next number.
    out.clear();
    for _ in 0..crate::limits::APPEND_RESEND_TICKS {
        c.node_mut(leader).core.step(Event::Tick, &mut out).unwrap();
    }
    assert_eq!(sends_to_f(&out), vec![(seq + 1, true)]);
    // The first Append's answer arrives late: what it verified counts, but it sends nothing
    // (before, it started a second stream of Appends beside the probe's).
    out.clear();
    let late = accepted(seq, first.end());
    c.node_mut(leader).core.step(Event::Message { from: f, msg: late.clone() }, &mut out).unwrap();
    assert!(sends_to_f(&out).is_empty());
    // A new proposal waits for the probe's answer: one Append in flight per follower...
    out.clear();
    let second = c.node_mut(leader).core.propose(1, &mut out).unwrap();
    assert!(sends_to_f(&out).is_empty());
    // ...and that answer sends the rest, once.
    out.clear();
    let probe_answer = accepted(seq + 1, first.end());
    c.node_mut(leader).core.step(Event::Message { from: f, msg: probe_answer }, &mut out).unwrap();
    assert_eq!(sends_to_f(&out), vec![(seq + 2, false)]);
    // A duplicate of a late answer changes nothing; an answer to an Append never sent is
    // dropped.
    out.clear();
    c.node_mut(leader).core.step(Event::Message { from: f, msg: late }, &mut out).unwrap();
    assert!(sends_to_f(&out).is_empty());
    let unsent = accepted(seq + 9, second.end());
    let r = c.node_mut(leader).core.step(Event::Message { from: f, msg: unsent }, &mut out);
    assert_eq!(r, Err(Dropped::UnexpectedReply));
}
