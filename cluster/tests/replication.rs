//! The replication driver end to end: three brokers, each on its own thread and Glommio
//! executor in this process, with real logs in temporary directories on the disk and real QUIC
//! with mutual TLS on 127.0.0.1. Every wait is bounded; the tests check behaviour, not timing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_cluster::testing::{batch_tag, loopback_addrs, tagged_batch, BrokerSpec, TestBroker};
use spate_cluster::{Committed, PartitionStatus, ReplicationError};
use spate_replication::{GroupId, NodeId, Role};
use spate_storage::FlushPolicy;

const IDS: [NodeId; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// The tests share two cores with each other and with builds: one cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Cluster {
    _dir: tempfile::TempDir,
    specs: BTreeMap<NodeId, BrokerSpec>,
    brokers: BTreeMap<NodeId, TestBroker>,
    /// Cut off from the others: left out of leader agreement.
    isolated: BTreeSet<NodeId>,
}

impl Cluster {
    fn start() -> Cluster {
        let base =
            std::env::var_os("CARGO_TARGET_TMPDIR").map_or_else(std::env::temp_dir, Into::into);
        let dir = tempfile::Builder::new().prefix("spate-cluster-").tempdir_in(base).expect("dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        spate_transport::certs::write_cluster_certs(&certs, 3).expect("certs");
        let addrs = loopback_addrs(&IDS);
        let specs: BTreeMap<NodeId, BrokerSpec> = IDS
            .iter()
            .map(|&id| {
                let spec = BrokerSpec {
                    id,
                    dir: dir.path().join(format!("broker-{id}")).join("topic").join("0"),
                    certs: certs.clone(),
                    addrs: addrs.clone(),
                    replicas: IDS.to_vec(),
                    group: GroupId(1),
                    flush: FlushPolicy::Always,
                    quiesce: true,
                    cpu: None,
                };
                (id, spec)
            })
            .collect();
        let brokers = specs.iter().map(|(&id, s)| (id, TestBroker::start(s.clone()))).collect();
        Cluster { _dir: dir, specs, brokers, isolated: BTreeSet::new() }
    }

    fn broker(&self, id: NodeId) -> &TestBroker {
        &self.brokers[&id]
    }

    fn crash(&mut self, id: NodeId) {
        self.brokers.remove(&id).expect("running").crash();
    }

    fn restart(&mut self, id: NodeId) {
        assert!(!self.brokers.contains_key(&id));
        self.brokers.insert(id, TestBroker::start(self.specs[&id].clone()));
    }

    /// Waits until one running broker leads with a high watermark and every running broker
    /// agrees on who leads.
    fn leader(&self) -> NodeId {
        let mut found = None;
        wait_until("a leader every running broker follows", || {
            let statuses: Vec<PartitionStatus> = self
                .brokers
                .values()
                .filter(|b| !self.isolated.contains(&b.id))
                .map(TestBroker::status)
                .collect();
            let leaders: Vec<&PartitionStatus> = statuses
                .iter()
                .filter(|s| s.role == Role::Leader && s.high_watermark.is_some())
                .collect();
            let [leader] = leaders[..] else { return false };
            found = Some(leader.node);
            statuses.iter().all(|s| s.leader == Some(leader.node))
        });
        found.expect("leader")
    }

    /// Waits until every running broker's commit point reached the leader's high watermark,
    /// then checks that their logs are byte-identical below it. Returns the leader's batches.
    /// The leader is looked up on every poll: leadership may move while followers catch up.
    fn assert_logs_match(&self) -> Vec<Bytes> {
        let mut leader = 0;
        let mut high_watermark = 0;
        let mut last = Vec::new();
        let reached = poll_until(|| {
            last = self.brokers.values().map(TestBroker::status).collect();
            let leaders: Vec<&PartitionStatus> = last
                .iter()
                .filter(|s| !self.isolated.contains(&s.node))
                .filter(|s| s.role == Role::Leader && s.high_watermark.is_some())
                .collect();
            let [leader_status] = leaders[..] else { return false };
            let Some(hw) = leader_status.high_watermark else { return false };
            (leader, high_watermark) = (leader_status.node, hw);
            // Durable, not only requested: the log itself holds it.
            last.iter().all(|s| s.commit == hw && s.durable_end == leader_status.log_end)
        });
        assert!(
            reached,
            "not reached within {WAIT:?}: every replica committed the leader's high watermark \
             (statuses {last:#?})"
        );
        let reference = self.broker(leader).read(high_watermark);
        let end = reference.last().map_or(0, |b| next_offset(b));
        assert_eq!(end, high_watermark, "the leader's batches reach its high watermark");
        for broker in self.brokers.values() {
            let batches = broker.read(high_watermark);
            assert_eq!(
                batches.len(),
                reference.len(),
                "broker {} batch count below {high_watermark}: {:?}\nits batches {:?}\nleader {leader}'s {:?}",
                broker.id,
                broker.status(),
                summary(&batches),
                summary(&reference)
            );
            for (i, (ours, theirs)) in batches.iter().zip(&reference).enumerate() {
                assert!(
                    ours == theirs,
                    "broker {} differs from leader {leader} at batch {i}",
                    broker.id
                );
            }
        }
        reference
    }
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(poll_until(done), "not reached within {WAIT:?}: {what}");
}

/// Polls `done` until it holds (true) or `WAIT` passes (false).
fn poll_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

/// (base offset, next offset, term, tag) of each batch, for failure messages.
fn summary(batches: &[Bytes]) -> Vec<(i64, i64, u64, Option<u64>)> {
    batches
        .iter()
        .map(|b| {
            let h = spate_protocol::batch::BatchHeader::parse(b).expect("header");
            (h.base_offset, h.next_offset(), h.leader_term, batch_tag(b))
        })
        .collect()
}

fn next_offset(batch: &[u8]) -> u64 {
    spate_protocol::batch::BatchHeader::parse(batch).expect("header").next_offset() as u64
}

fn base_offset(batch: &[u8]) -> u64 {
    spate_protocol::batch::BatchHeader::parse(batch).expect("header").base_offset as u64
}

/// Proposes batches tagged `tags` on `broker`, all at once (pipelined).
fn propose(
    broker: &TestBroker,
    tags: impl IntoIterator<Item = u64>,
) -> Vec<(u64, mpsc::Receiver<spate_cluster::testing::ProposeReply>)> {
    tags.into_iter().map(|tag| (tag, broker.propose(tagged_batch(tag, 10, 100)))).collect()
}

/// Each proposal's answer: `None` if the broker died before answering.
fn answers(
    pending: Vec<(u64, mpsc::Receiver<spate_cluster::testing::ProposeReply>)>,
) -> Vec<(u64, Option<Result<Committed, ReplicationError>>)> {
    let deadline = Instant::now() + WAIT;
    pending
        .into_iter()
        .map(|(tag, answer)| {
            let left = deadline.saturating_duration_since(Instant::now());
            (tag, answer.recv_timeout(left).ok())
        })
        .collect()
}

fn committed(
    answers: &[(u64, Option<Result<Committed, ReplicationError>>)],
) -> Vec<(u64, Committed)> {
    answers
        .iter()
        .filter_map(|(tag, a)| match a {
            Some(Ok(c)) => Some((*tag, *c)),
            _ => None,
        })
        .collect()
}

/// Commits `count` batches through whoever leads, tagged from `first`. A proposal that fails
/// (leadership moved meanwhile: a real election may follow a fault) is retried under a new
/// tag, at most a few rounds; only acknowledged tags are returned, so none is ever duplicated.
fn commit_through_leader(cluster: &Cluster, first: u64, count: u64) -> Vec<(u64, Committed)> {
    let mut acknowledged = Vec::new();
    let mut next_tag = first;
    let mut missing = count;
    for _round in 0..5 {
        if missing == 0 {
            break;
        }
        let leader = cluster.leader();
        let replies = answers(propose(cluster.broker(leader), next_tag..next_tag + missing));
        next_tag += missing;
        let ok = committed(&replies);
        missing -= ok.len() as u64;
        acknowledged.extend(ok);
    }
    assert_eq!(missing, 0, "{count} batches committed within 5 rounds");
    acknowledged
}

/// Every acknowledged batch is in `log` exactly once, at its acknowledged offsets.
fn assert_acknowledged_present(log: &[Bytes], acknowledged: &[(u64, Committed)]) {
    let mut by_base: BTreeMap<u64, &Bytes> = BTreeMap::new();
    let mut tags: BTreeMap<u64, usize> = BTreeMap::new();
    for batch in log {
        by_base.insert(base_offset(batch), batch);
        if let Some(tag) = batch_tag(batch) {
            *tags.entry(tag).or_default() += 1;
        }
    }
    for (tag, c) in acknowledged {
        let batch = by_base
            .get(&c.base_offset)
            .unwrap_or_else(|| panic!("batch {tag} missing at {}", c.base_offset));
        assert_eq!(batch_tag(batch), Some(*tag), "batch at {} is not {tag}", c.base_offset);
        assert_eq!(next_offset(batch), c.last_offset + 1, "batch {tag} ends elsewhere");
        assert_eq!(tags[tag], 1, "batch {tag} is in the log {} times", tags[tag]);
    }
}

/// Test 1: RF 3, a leader is elected, batches proposed through it each resolve committed at
/// increasing offsets, and every replica's log is byte-identical up to the high watermark.
#[test]
fn rf3_commits_every_batch_and_logs_match() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    let leader = cluster.leader();
    let replies = answers(propose(cluster.broker(leader), 0..200));
    let acknowledged = committed(&replies);
    assert_eq!(acknowledged.len(), 200, "every batch committed: {replies:?}");
    for pair in acknowledged.windows(2) {
        assert!(pair[0].1.last_offset < pair[1].1.base_offset, "offsets in proposal order");
    }
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
    // A follower refuses proposals and names the leader.
    let follower = IDS.iter().copied().find(|&n| n != leader).expect("follower");
    let refused = answers(propose(cluster.broker(follower), [1_000]));
    assert!(
        matches!(refused[0].1, Some(Err(ReplicationError::NotLeader { leader: Some(l) })) if l == leader),
        "{refused:?}"
    );
}

/// Crashes the leader while it has proposals in flight; returns the old leader and the batches
/// acknowledged before and after the crash.
fn crash_leader_while_proposing(cluster: &mut Cluster) -> (NodeId, Vec<(u64, Committed)>) {
    let old = cluster.leader();
    let first = answers(propose(cluster.broker(old), 0..100));
    let mut acknowledged = committed(&first);
    assert_eq!(acknowledged.len(), 100);
    // Keep proposing, and crash with these in flight.
    let in_flight = propose(cluster.broker(old), 100..400);
    std::thread::sleep(Duration::from_millis(30));
    cluster.crash(old);
    let during = answers(in_flight);
    acknowledged.extend(committed(&during));
    let new = cluster.leader();
    assert_ne!(new, old, "a new leader among the other two");
    acknowledged.extend(commit_through_leader(cluster, 1_000, 50));
    (old, acknowledged)
}

/// Test 2: the leader's executor dies (nothing closed or flushed) while batches are in
/// flight: the other two elect a new leader, and every batch acknowledged as committed is on
/// it exactly once at its acknowledged offset.
#[test]
fn leader_crash_keeps_every_acknowledged_batch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let (old, acknowledged) = crash_leader_while_proposing(&mut cluster);
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
    // And the old leader, restarted, agrees.
    cluster.restart(old);
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
}

/// Test 3: a leader cut off from its followers writes batches nobody else gets (an uncommitted
/// tail), the others elect a new leader and commit more, the old leader crashes and restarts
/// from its directory: it truncates its tail, catches up, and all logs match.
#[test]
fn restarted_old_leader_truncates_its_tail_and_catches_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let old = cluster.leader();
    let mut acknowledged = committed(&answers(propose(cluster.broker(old), 0..50)));
    assert_eq!(acknowledged.len(), 50);
    let before = cluster.broker(old).status();
    cluster.broker(old).isolate(true);
    cluster.isolated.insert(old);
    // Written on the old leader only: never committed (their answers never come).
    let _lost = propose(cluster.broker(old), 500..520);
    wait_until("the isolated leader wrote its tail", || {
        let s = cluster.broker(old).status();
        s.durable_end >= before.log_end + 20 * 10
    });
    let others: Vec<NodeId> = IDS.iter().copied().filter(|&n| n != old).collect();
    let mut new = 0;
    wait_until("the other two elect a leader", || {
        others.iter().any(|&n| {
            let s = cluster.broker(n).status();
            new = n;
            s.role == Role::Leader && s.high_watermark.is_some()
        })
    });
    assert_ne!(new, old);
    acknowledged.extend(commit_through_leader(&cluster, 1_000, 100));
    cluster.crash(old);
    cluster.isolated.remove(&old);
    cluster.restart(old);
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
    let restarted = cluster.broker(old).status();
    assert!(restarted.truncations >= 1, "the old leader cut its tail: {restarted:?}");
    let tags: BTreeSet<u64> = log.iter().filter_map(|b| batch_tag(b)).collect();
    assert!(!(500..520).any(|t| tags.contains(&t)), "the uncommitted tail is gone");
}

/// Test 4: a follower whose executor is stopped for a while (as under SIGSTOP) misses
/// batches the other two commit, and catches up when it runs again.
#[test]
fn paused_follower_catches_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    let leader = cluster.leader();
    let follower = IDS.iter().copied().find(|&n| n != leader).expect("follower");
    let mut acknowledged = committed(&answers(propose(cluster.broker(leader), 0..20)));
    cluster.broker(follower).pause(Duration::from_secs(2));
    // Committed by the leader and the other follower while this one sleeps.
    acknowledged.extend(committed(&answers(propose(cluster.broker(leader), 20..220))));
    assert_eq!(acknowledged.len(), 220);
    let leader_end = cluster.broker(leader).status().log_end;
    // The paused broker answers only once it runs again, and must then catch up.
    let log = cluster.assert_logs_match();
    assert!(cluster.broker(follower).status().log_end >= leader_end);
    assert_acknowledged_present(&log, &acknowledged);
}

/// A follower that fell behind by more small batches than one Append may carry
/// (`APPEND_BATCHES_MAX`, while the read is bounded by bytes) still catches up: the driver
/// sends them over several Appends. (Found by the chaos suite: a partition stalled for 20 s.)
#[test]
fn a_follower_behind_by_many_small_batches_catches_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start();
    let leader = cluster.leader();
    let follower = IDS.iter().copied().find(|&n| n != leader).expect("follower");
    // Down while the others commit: on its return the leader reads the backlog from its log.
    cluster.crash(follower);
    let small = |tag: u64| cluster.broker(leader).propose(tagged_batch(tag, 1, 100));
    let count = spate_replication::limits::APPEND_BATCHES_MAX as u64 * 2;
    let pending: Vec<_> = (0..count).map(|tag| (tag, small(tag))).collect();
    let acknowledged = committed(&answers(pending));
    assert_eq!(acknowledged.len() as u64, count);
    cluster.restart(follower);
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
}

/// Test 5: leadership transfer on request: the target leads, nothing committed is lost, and
/// the new leader takes proposals.
#[test]
fn leadership_transfer_keeps_data_and_new_leader_accepts() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start();
    let old = cluster.leader();
    let target = IDS.iter().copied().rev().find(|&n| n != old).expect("target");
    let mut acknowledged = committed(&answers(propose(cluster.broker(old), 0..100)));
    assert_eq!(acknowledged.len(), 100);
    let new = cluster.broker(old).transfer(Some(target)).expect("transfer");
    assert_eq!(new, target);
    assert_eq!(cluster.leader(), target);
    let refused = answers(propose(cluster.broker(old), [999]));
    assert!(matches!(refused[0].1, Some(Err(ReplicationError::NotLeader { .. }))), "{refused:?}");
    acknowledged.extend(commit_through_leader(&cluster, 1_000, 100));
    let log = cluster.assert_logs_match();
    assert_acknowledged_present(&log, &acknowledged);
}
