//! The group consumer: subscribes to topics as a member of a consumer group, gets its share of
//! partitions from the broker's coordinator, and follows rebalances.
//!
//! At-least-once by default: positions are committed (automatically every `auto_commit`, or by
//! `commit`) only for records `poll` has returned, and again before giving partitions up in a
//! rebalance; a record returned but not yet committed when a member dies is delivered again to
//! the member that takes its partition.
//!
//! Membership never blocks `poll`: each call makes at most one group request when one is due
//! (a heartbeat while stable; after joining a rebalance, a sync every [`limits::SYNC_RETRY`]
//! until the assignment is ready). With `cooperative-sticky` the member keeps consuming what it
//! owns throughout a rebalance and only stops on partitions taken away from it; with the eager
//! assignors (`range`, `roundrobin`) it gives up all partitions before joining, as in Kafka.
//!
//! The coordinator assigns partitions (server side). The subscription goes in the join's
//! protocol metadata as comma-separated topics; the assignment comes back as `topic:partition`
//! items (see `broker/src/shard/groups.rs`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use crate::accumulator::TopicPartition;
use crate::client::Client;
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, Seek};
use crate::error::{ClientError, Result};
use crate::limits;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// `range`, `roundrobin` or `cooperative-sticky`.
    pub assignor: String,
    /// Static membership: a stable id; a restart within the session timeout keeps the partitions.
    pub instance_id: Option<String>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Commit positions this often from `poll`; `None` for manual commits only.
    pub auto_commit: Option<Duration>,
    /// Where a partition with no committed offset starts.
    pub start: Seek,
    pub consumer: ConsumerConfig,
}

impl GroupConfig {
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> GroupConfig {
        GroupConfig {
            group: group.into(),
            topics,
            assignor: "range".into(),
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
            auto_commit: Some(Duration::from_secs(5)),
            start: Seek::Earliest,
            consumer: ConsumerConfig::default(),
        }
    }
}

type Callback = Box<dyn FnMut(&[TopicPartition])>;

/// Where a member is in the group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Holds the assignment of its generation; heartbeats every interval.
    Stable,
    /// Joined a rebalance at its generation and asks for the assignment every
    /// [`limits::SYNC_RETRY`] until the group is stable. A cooperative member keeps consuming
    /// what it owns meanwhile; an eager one gave everything up before joining.
    Syncing { since: Instant },
}

pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    member_id: String,
    generation: i32,
    phase: Phase,
    assignment: Vec<TopicPartition>,
    consumer: Consumer,
    /// When the next heartbeat (stable) or sync (syncing) is due.
    next_call: Instant,
    last_commit: Instant,
    on_assigned: Option<Callback>,
    on_revoked: Option<Callback>,
}

fn parse_assignment(bytes: &[u8]) -> Vec<TopicPartition> {
    let text = String::from_utf8_lossy(bytes);
    let mut out: Vec<TopicPartition> = text
        .split(',')
        .filter_map(|item| {
            let (topic, partition) = item.rsplit_once(':')?;
            Some(TopicPartition { topic: topic.into(), partition: partition.parse().ok()? })
        })
        .collect();
    out.sort();
    out
}

fn rebalancing(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::RebalanceInProgress)
            | Some(ErrorCode::IllegalGeneration)
            | Some(ErrorCode::UnknownMemberId)
    )
}

impl GroupConsumer {
    /// Joins the group and waits (up to three rebalance timeouts) for the first assignment.
    pub async fn subscribe(client: Client, config: GroupConfig) -> Result<GroupConsumer> {
        let consumer = Consumer::new(client.clone(), config.consumer.clone());
        let mut member = GroupConsumer {
            client,
            config,
            member_id: String::new(),
            generation: -1,
            phase: Phase::Stable,
            assignment: Vec::new(),
            consumer,
            next_call: Instant::now(),
            last_commit: Instant::now(),
            on_assigned: None,
            on_revoked: None,
        };
        member.join_round().await?;
        // Bounded: `keep_membership` fails once a member has been syncing too long.
        while member.rebalancing() {
            glommio::timer::sleep(limits::SYNC_RETRY).await;
            member.keep_membership().await?;
        }
        Ok(member)
    }

    /// Called with the partitions gained in each rebalance.
    pub fn on_assigned(&mut self, callback: impl FnMut(&[TopicPartition]) + 'static) {
        self.on_assigned = Some(Box::new(callback));
    }

    /// Called with the partitions lost in each rebalance, after their positions are committed.
    pub fn on_revoked(&mut self, callback: impl FnMut(&[TopicPartition]) + 'static) {
        self.on_revoked = Some(Box::new(callback));
    }

    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assignment
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Whether this member has joined a rebalance that has not given it its assignment yet.
    pub fn rebalancing(&self) -> bool {
        matches!(self.phase, Phase::Syncing { .. })
    }

    /// Eager assignors (range, roundrobin) may move any partition, so a member gives up all of
    /// them before joining; cooperative-sticky only revokes what moves.
    fn eager(&self) -> bool {
        self.config.assignor != "cooperative-sticky"
    }

    fn join_body(&self) -> RequestBodyT {
        RequestBodyT::JoinGroupRequest(Box::new(wire::JoinGroupRequestT {
            group_id: Some(self.config.group.clone()),
            session_timeout_ms: self.config.session_timeout.as_millis() as i32,
            rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as i32,
            member_id: Some(self.member_id.clone()),
            group_instance_id: self.config.instance_id.clone(),
            protocol_type: Some("consumer".into()),
            protocols: Some(vec![wire::GroupProtocolT {
                name: Some(self.config.assignor.clone()),
                metadata: Some(self.config.topics.join(",").into_bytes()),
            }]),
        }))
    }

    /// Joins the group's current rebalance (as a new member if it has no id) and starts asking
    /// for the assignment. An eager member commits and gives up its partitions first.
    async fn join_round(&mut self) -> Result<()> {
        if self.eager() {
            // Commits first; the coordinator accepts it because partitions change owner only
            // when the rebalance completes.
            self.apply(Vec::new()).await?;
        }
        let joined = match self.client.group_call(&self.config.group, self.join_body()).await {
            Err(error) if error.code() == Some(ErrorCode::UnknownMemberId) => {
                self.lose_membership()?;
                self.client.group_call(&self.config.group, self.join_body()).await?
            }
            other => other?,
        };
        let ResponseBodyT::JoinGroupResponse(joined) = joined else {
            return Err(ClientError::UnexpectedResponse("join group".into()));
        };
        self.member_id = joined.member_id.unwrap_or_default();
        self.generation = joined.generation_id;
        self.phase = Phase::Syncing { since: Instant::now() };
        self.next_call = Instant::now() + limits::SYNC_RETRY;
        Ok(())
    }

    /// The coordinator no longer knows this member (its session expired): its partitions may
    /// already be someone else's, so they are dropped without a commit.
    fn lose_membership(&mut self) -> Result<()> {
        tracing::warn!(member = %self.member_id, "lost group membership; joining as a new member");
        let lost = std::mem::take(&mut self.assignment);
        if !lost.is_empty() {
            if let Some(callback) = &mut self.on_revoked {
                callback(&lost);
            }
        }
        self.consumer.assign(&[])?;
        self.member_id.clear();
        self.generation = -1;
        Ok(())
    }

    /// Switches to `assignment`: commits before giving partitions up, and starts gained ones at
    /// the group's committed offset (or the configured start).
    async fn apply(&mut self, assignment: Vec<TopicPartition>) -> Result<()> {
        let old: BTreeSet<TopicPartition> = self.assignment.iter().cloned().collect();
        let new: BTreeSet<TopicPartition> = assignment.iter().cloned().collect();
        let revoked: Vec<TopicPartition> = old.difference(&new).cloned().collect();
        let added: Vec<TopicPartition> = new.difference(&old).cloned().collect();
        if !revoked.is_empty() {
            // Whoever gets these starts at the committed offset: commit what `poll` returned.
            if let Err(error) = self.commit().await {
                tracing::warn!(%error, "commit before revocation failed");
            }
            if let Some(callback) = &mut self.on_revoked {
                callback(&revoked);
            }
        }
        self.consumer.assign(&assignment)?;
        self.assignment = assignment;
        if !added.is_empty() {
            let topics: BTreeSet<&str> = added.iter().map(|tp| &*tp.topic).collect();
            for topic in topics {
                let committed = self.client.committed_offsets(&self.config.group, topic).await?;
                for tp in added.iter().filter(|tp| &*tp.topic == topic) {
                    let offset =
                        committed.iter().find(|(p, _)| *p == tp.partition).and_then(|(_, o)| *o);
                    self.consumer.seek(tp, offset.map_or(self.config.start, Seek::Offset))?;
                }
            }
            if let Some(callback) = &mut self.on_assigned {
                callback(&added);
            }
        }
        Ok(())
    }

    /// One step of the group protocol when due, never waiting for the group: a heartbeat while
    /// stable (joining the next rebalance if one started), or a sync while rebalancing.
    async fn keep_membership(&mut self) -> Result<()> {
        let now = Instant::now();
        if now < self.next_call {
            return Ok(());
        }
        match self.phase {
            Phase::Stable => {
                self.next_call = now + self.config.heartbeat_interval;
                let heartbeat = RequestBodyT::HeartbeatRequest(Box::new(wire::HeartbeatRequestT {
                    group_id: Some(self.config.group.clone()),
                    generation_id: self.generation,
                    member_id: Some(self.member_id.clone()),
                    group_instance_id: self.config.instance_id.clone(),
                }));
                match self.client.group_call(&self.config.group, heartbeat).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.code() == Some(ErrorCode::UnknownMemberId) => {
                        self.lose_membership()?;
                        self.join_round().await
                    }
                    Err(error) if rebalancing(&error) => self.join_round().await,
                    Err(error) => Err(error),
                }
            }
            Phase::Syncing { since } => {
                let limit = self.config.rebalance_timeout * 3;
                if since.elapsed() > limit {
                    return Err(ClientError::Timeout(limit.as_millis() as u64));
                }
                self.next_call = now + limits::SYNC_RETRY;
                let sync = RequestBodyT::SyncGroupRequest(Box::new(wire::SyncGroupRequestT {
                    group_id: Some(self.config.group.clone()),
                    generation_id: self.generation,
                    member_id: Some(self.member_id.clone()),
                    group_instance_id: self.config.instance_id.clone(),
                    assignments: None,
                }));
                match self.client.group_call(&self.config.group, sync).await {
                    Ok(ResponseBodyT::SyncGroupResponse(response)) => {
                        let assignment =
                            parse_assignment(response.assignment.as_deref().unwrap_or_default());
                        self.phase = Phase::Stable;
                        self.next_call = Instant::now() + self.config.heartbeat_interval;
                        self.apply(assignment).await
                    }
                    Ok(_) => Err(ClientError::UnexpectedResponse("sync group".into())),
                    // Not complete yet: ask again later.
                    Err(error) if error.code() == Some(ErrorCode::RebalanceInProgress) => Ok(()),
                    Err(error) if error.code() == Some(ErrorCode::UnknownMemberId) => {
                        self.lose_membership()?;
                        self.join_round().await
                    }
                    // A newer round replaced the one this member joined.
                    Err(error) if error.code() == Some(ErrorCode::IllegalGeneration) => {
                        self.join_round().await
                    }
                    Err(error) => Err(error),
                }
            }
        }
    }

    /// The next records of the assigned partitions (waits up to the fetch wait).
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.keep_membership().await?;
        if let Some(interval) = self.config.auto_commit {
            if self.last_commit.elapsed() >= interval {
                match self.commit().await {
                    Ok(()) => {}
                    Err(error) if rebalancing(&error) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        self.consumer.poll().await
    }

    /// Rewinds a partition (e.g. to re-read records not processed).
    pub fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<()> {
        self.consumer.seek(tp, seek)
    }

    /// (topic, partition, position) of every assigned partition that has a position.
    fn positions(&self) -> Vec<(String, u32, i64)> {
        self.assignment
            .iter()
            .filter_map(|tp| {
                Some((tp.topic.to_string(), tp.partition, self.consumer.position(tp)?))
            })
            .collect()
    }

    /// Commits the position of every assigned partition, synchronously, as this generation's
    /// member: the coordinator refuses it if the generation is over (a zombie).
    pub async fn commit(&mut self) -> Result<()> {
        self.last_commit = Instant::now();
        let offsets = self.positions();
        if offsets.is_empty() || self.generation < 0 {
            return Ok(());
        }
        self.client
            .commit_offsets(&self.config.group, self.generation, &self.member_id, &offsets)
            .await
    }

    /// Commits in the background; the result is only logged.
    pub fn commit_async(&mut self) {
        self.last_commit = Instant::now();
        let offsets = self.positions();
        let (client, group, generation, member) = (
            self.client.clone(),
            self.config.group.clone(),
            self.generation,
            self.member_id.clone(),
        );
        glommio::spawn_local(async move {
            if let Err(error) = client.commit_offsets(&group, generation, &member, &offsets).await {
                tracing::warn!(%error, "async commit failed");
            }
        })
        .detach();
    }

    /// Commits and leaves the group, so its partitions move at once.
    pub async fn close(mut self) -> Result<()> {
        let committed = self.commit().await;
        let leave = RequestBodyT::LeaveGroupRequest(Box::new(wire::LeaveGroupRequestT {
            group_id: Some(self.config.group.clone()),
            members: Some(vec![wire::MemberIdentityT {
                member_id: Some(self.member_id.clone()),
                group_instance_id: self.config.instance_id.clone(),
            }]),
        }));
        let left = self.client.group_call(&self.config.group, leave).await.map(|_| ());
        committed.and(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_parse() {
        let parsed = parse_assignment(b"orders:2,orders:0,logs:1");
        assert_eq!(parsed[0], TopicPartition { topic: "logs".into(), partition: 1 });
        assert_eq!(parsed.len(), 3);
        assert!(parse_assignment(b"").is_empty());
        assert_eq!(
            parse_assignment(b"a:b:3").len(),
            1,
            "topic names may not contain ':' but we take the last"
        );
    }
}
