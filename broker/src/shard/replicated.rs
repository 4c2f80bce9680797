//! Replicated partitions: a cluster's topics. Each replica of a partition that lives on this
//! broker is a `spate_cluster::Partition` on the shard that owns the partition, driven by the
//! shard's own `ReplicationNode` (one QUIC endpoint per shard, talking to the same shard of every
//! peer). This file is the seam between the request handlers and that driver:
//!
//! - produce: each batch is proposed to the replica; the answer comes once it is committed
//!   (durable by the topic's flush policy on a majority). A replica that does not lead answers
//!   `NotLeader` naming the leader it knows, and the client refreshes its metadata and retries.
//!   An idempotent producer's retry is recognised by the leader (every replica keeps the
//!   producer table) and answered with the original offsets;
//! - fetch, list offsets, partition stats and the long-poll wait stop at the leader's high
//!   watermark, never at the log end: consumers never see a record that may still be truncated;
//!   only the leader serves reads (as Kafka does without follower fetching);
//! - every shard publishes what its replicas know (leader, term, high watermark, in-sync
//!   replicas, log ends) into a table all shards share, which Metadata answers from.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use spate_cluster::{Partition, ProducerRefusal, ReplicationError};
use spate_protocol::wire::ErrorCode;
use spate_replication::Role;
use spate_storage::Log;

use super::metadata_log::METADATA_DIR;
use super::{Failure, PartitionKey, ProduceOutcome, Shard};
use crate::offsets::OFFSETS_DIR;

/// What one partition's replica on this broker last reported, for Metadata on any shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaView {
    pub leader: Option<u32>,
    pub term: u64,
    /// The leader's high watermark; -1 when this replica does not lead (or not yet serves).
    pub high_watermark: i64,
    /// Leader only: replicas whose log matches its own up to the high watermark.
    pub isr: Vec<u32>,
    /// Leader only: each replica's log end, by broker id.
    pub log_ends: Vec<(u32, i64)>,
    /// Leader only: bytes of its log past each follower's log end, by broker id.
    pub lag_bytes: Vec<(u32, u64)>,
    /// Times this replica became leader / stopped leading since it opened.
    pub leaderships_gained: u64,
    pub leaderships_lost: u64,
}

/// Every replicated partition of this broker, as its shard last published it.
pub type ReplicaViews = Arc<Mutex<HashMap<PartitionKey, ReplicaView>>>;

/// Where reads of one partition stop.
pub(super) struct Readable {
    pub log: Log,
    /// The replicated partition's high watermark; `None` for a single broker's partition, whose
    /// log's own high watermark applies.
    pub upper: Option<i64>,
}

impl Readable {
    /// The end consumers may read to.
    pub fn end(&self) -> i64 {
        self.upper.unwrap_or_else(|| self.log.offsets().high_watermark)
    }
}

impl Shard {
    pub(super) fn replica(&self, topic: &str, partition: u32) -> Option<Partition> {
        self.replicas.borrow().get(&(topic.to_string(), partition)).cloned()
    }

    /// The log to read `topic/partition` from and its bound: on a replicated partition only the
    /// leader serves, up to its high watermark.
    pub(super) fn readable(&self, topic: &str, partition: u32) -> Result<Readable, Failure> {
        let log = self.log(topic, partition).ok_or_else(|| Failure::unknown(topic, partition))?;
        let Some(replica) = self.replica(topic, partition) else {
            return Ok(Readable { log, upper: None });
        };
        match replica.high_watermark() {
            Some(hw) => Ok(Readable { log, upper: Some(hw as i64) }),
            None => Err(not_leader(topic, partition, replica.leader())),
        }
    }

    /// Proposes each batch in order and answers once the last is committed (or, with
    /// `Ack::LeaderWrite`, written here).
    pub(super) async fn produce_replicated(
        &self,
        topic: &str,
        partition: u32,
        replica: Partition,
        batches: Vec<BytesMut>,
        ack: spate_cluster::Ack,
    ) -> ProduceOutcome {
        if replica.is_offline() {
            // Nothing of this request was written, and this replica leads no more: the client
            // refreshes its metadata and goes to the new leader.
            return ProduceOutcome {
                result: Err(not_leader(topic, partition, None)),
                log_start_offset: replica.log().offsets().start,
            };
        }
        let mut base_offset = -1;
        for batch in batches {
            let proposed = std::time::Instant::now();
            let answer = replica.propose_with(batch, ack).await;
            if answer.is_ok() && ack == spate_cluster::Ack::Commit {
                self.metrics.commit_latency.record(proposed.elapsed());
            }
            match answer {
                Ok(committed) => {
                    if base_offset < 0 {
                        base_offset = committed.base_offset as i64;
                    }
                }
                Err(error) => {
                    return ProduceOutcome {
                        result: Err(replication_failure(topic, partition, error)),
                        log_start_offset: replica.log().offsets().start,
                    }
                }
            }
        }
        self.wake_fetchers(topic, partition);
        ProduceOutcome { result: Ok(base_offset), log_start_offset: replica.log().offsets().start }
    }

    /// The leader of an internal log (the metadata log or the committed-offsets log, by its
    /// directory name) as its shard 0 last published it.
    pub(super) fn internal_leader(&self, dir: &str) -> Option<u32> {
        let views = self.config.replica_views.as_ref()?;
        let key = (dir.to_string(), 0);
        views.lock().expect("replica views lock").get(&key).and_then(|v| v.leader)
    }

    /// Writes what this shard's replicas know into the broker's shared table (every tick), and
    /// wakes long-polling fetches of partitions whose high watermark moved.
    pub(crate) fn publish_replicas(&self) {
        let Some(views) = &self.config.replica_views else { return };
        let mut replicas: Vec<(PartitionKey, Partition)> =
            self.replicas.borrow().iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        // The metadata log too, under its directory's name: Metadata names its leader the
        // controller.
        if let Some(metadata) = self.metadata_log() {
            replicas.push(((METADATA_DIR.to_string(), 0), metadata.partition().clone()));
        }
        // And the committed-offsets log: its leader coordinates every group.
        let offsets = self
            .offsets
            .as_ref()
            .and_then(|store| store.try_read().ok().and_then(|store| store.replica().cloned()));
        if let Some(replica) = offsets {
            replicas.push(((OFFSETS_DIR.to_string(), 0), replica));
        }
        // Followers the failure detector counts as down are out of sync whatever their last
        // position (an idle partition's positions never move).
        let down = self.replication.borrow().as_ref().map(|n| n.peers_down()).unwrap_or_default();
        let mut moved = Vec::new();
        {
            let mut views = views.lock().expect("replica views lock");
            for (key, replica) in replicas {
                let view = view_of(&replica, &down);
                let previous = views.insert(key.clone(), view.clone());
                let (gained, lost) = previous
                    .as_ref()
                    .map_or((0, 0), |p| (p.leaderships_gained, p.leaderships_lost));
                // A replica opened anew (its topic re-created) counts from zero again.
                self.metrics.leaderships(
                    view.leaderships_gained.checked_sub(gained).unwrap_or(view.leaderships_gained),
                    view.leaderships_lost.checked_sub(lost).unwrap_or(view.leaderships_lost),
                );
                if previous.is_none_or(|p| p.high_watermark != view.high_watermark) {
                    moved.push(key);
                }
            }
        }
        for (topic, partition) in moved {
            self.wake_fetchers(&topic, partition);
        }
    }

    /// Hands leadership of each partition led here back to its preferred replica (the first
    /// of its replicas) when that broker is alive and holds everything this leader holds.
    /// Transfers run in the background, each bounded by a few election timeouts.
    pub(crate) fn restore_preferred_leaders(&self) {
        let (Some(cluster), Some(membership)) = (&self.config.cluster, &self.config.membership)
        else {
            return;
        };
        let me = cluster.node_id;
        let alive: Vec<u32> = membership
            .lock()
            .expect("membership lock")
            .status(std::time::Instant::now())
            .into_iter()
            .filter(|b| b.alive)
            .map(|b| b.id)
            .collect();
        let replicas: Vec<(PartitionKey, Partition)> =
            self.replicas.borrow().iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        for ((topic, partition), replica) in replicas {
            let preferred = self
                .catalog
                .borrow()
                .topics
                .get(&topic)
                .and_then(|t| t.replicas.get(partition as usize))
                .and_then(|r| r.first().copied());
            let Some(preferred) = preferred.filter(|p| *p != me && alive.contains(p)) else {
                continue;
            };
            let status = replica.status();
            let caught_up = status.role == Role::Leader
                && status
                    .replicas
                    .iter()
                    .any(|r| r.node == preferred && r.match_end == status.log_end);
            if caught_up {
                tracing::info!(%topic, partition, to = preferred, "moving leadership to the preferred replica");
                glommio::spawn_local(async move {
                    let _ = replica.transfer_leadership(Some(preferred)).await;
                })
                .detach();
            }
        }
    }

    /// Forgets a replica that is gone (its topic was deleted).
    pub(super) fn unpublish_replica(&self, key: &PartitionKey) {
        if let Some(views) = &self.config.replica_views {
            views.lock().expect("replica views lock").remove(key);
        }
    }
}

/// What `replica` says of itself; `down`: peers the failure detector counts as down, never in
/// sync (Kafka drops a follower from the ISR when it stops fetching).
fn view_of(replica: &Partition, down: &[u32]) -> ReplicaView {
    let status = replica.status();
    let leads = status.role == Role::Leader;
    let high_watermark = status.high_watermark.map_or(-1, |hw| hw as i64);
    let (isr, log_ends, lag_bytes) = if leads {
        let isr = status
            .replicas
            .iter()
            .filter(|r| status.high_watermark.is_some_and(|hw| r.match_end >= hw))
            .filter(|r| !down.contains(&r.node))
            .map(|r| r.node)
            .collect();
        let ends = status.replicas.iter().map(|r| (r.node, r.match_end as i64)).collect();
        let log = replica.log();
        let lag = status
            .replicas
            .iter()
            .filter(|r| r.node != status.node)
            .map(|r| (r.node, log.bytes_from(r.match_end as i64)))
            .collect();
        (isr, ends, lag)
    } else {
        (Vec::new(), vec![(status.node, status.log_end as i64)], Vec::new())
    };
    ReplicaView {
        leader: status.leader,
        term: status.term,
        high_watermark,
        isr,
        log_ends,
        lag_bytes,
        leaderships_gained: status.leaderships_gained,
        leaderships_lost: status.leaderships_lost,
    }
}

fn not_leader(topic: &str, partition: u32, leader: Option<u32>) -> Failure {
    let message = match leader {
        Some(leader) => format!("{topic}/{partition} is led by broker {leader}"),
        None => format!("{topic}/{partition} has no leader yet; an election is under way"),
    };
    Failure::new(ErrorCode::NotLeader, message)
}

pub(super) fn replication_failure(topic: &str, partition: u32, error: ReplicationError) -> Failure {
    match error {
        ReplicationError::NotLeader { leader } => not_leader(topic, partition, leader),
        // Written here but not known to be committed: the outcome is unknown, which a client
        // must not take for a refusal (it would reuse the batch's sequence numbers), so this is
        // a timeout, not NotLeader; its retry finds the new leader.
        ReplicationError::LeadershipLost { .. } => Failure::new(
            ErrorCode::RequestTimedOut,
            format!("{topic}/{partition}: {error}; the batch may or may not be committed"),
        ),
        // The same for a batch in flight when this replica's log failed: the followers may
        // hold it and the leader they elect may commit it. The retry finds that leader (this
        // replica now refuses with NotLeader) and its producer state answers a duplicate.
        ReplicationError::Offline(_) => Failure::new(
            ErrorCode::RequestTimedOut,
            format!("{topic}/{partition}: {error}; the batch may or may not be committed"),
        ),
        ReplicationError::Transferring | ReplicationError::TransferTimedOut => {
            Failure::new(ErrorCode::NotLeader, format!("{topic}/{partition}: {error}"))
        }
        ReplicationError::InvalidBatch(_) => {
            Failure::new(ErrorCode::CorruptMessage, error.to_string())
        }
        ReplicationError::Producer { refusal, message } => {
            let code = match refusal {
                ProducerRefusal::OutOfOrderSequence => ErrorCode::OutOfOrderSequence,
                ProducerRefusal::Fenced => ErrorCode::ProducerFenced,
                ProducerRefusal::UnknownProducer => ErrorCode::UnknownProducerId,
            };
            Failure::new(code, message)
        }
        ReplicationError::Stopped => Failure::new(ErrorCode::ShuttingDown, error.to_string()),
        ReplicationError::Storage(_)
        | ReplicationError::Transport(_)
        | ReplicationError::Config(_) => Failure::new(ErrorCode::StorageError, error.to_string()),
    }
}
