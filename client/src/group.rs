//! The group consumer: subscribes to topics as a member of a consumer group, gets its share of
//! partitions from the broker's coordinator, and follows rebalances.
//!
//! At-least-once by default: positions are committed (automatically every `auto_commit`, or by
//! `commit`) only for records `poll` has returned, and again before giving partitions up in a
//! rebalance; a record returned but not yet committed when a member dies is delivered again to
//! the member that takes its partition.
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

pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    member_id: String,
    generation: i32,
    assignment: Vec<TopicPartition>,
    consumer: Consumer,
    last_heartbeat: Instant,
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
            Some(TopicPartition { topic: topic.to_string(), partition: partition.parse().ok()? })
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
    /// Joins the group and waits for the first assignment.
    pub async fn subscribe(client: Client, config: GroupConfig) -> Result<GroupConsumer> {
        let consumer = Consumer::new(client.clone(), config.consumer.clone());
        let mut member = GroupConsumer {
            client,
            config,
            member_id: String::new(),
            generation: -1,
            assignment: Vec::new(),
            consumer,
            last_heartbeat: Instant::now(),
            last_commit: Instant::now(),
            on_assigned: None,
            on_revoked: None,
        };
        member.rejoin().await?;
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

    /// Joins (again) and syncs until the group is stable; applies the new assignment.
    async fn rejoin(&mut self) -> Result<()> {
        let deadline = Instant::now() + self.config.rebalance_timeout * 3;
        // Bounded by the deadline; each round joins or syncs once.
        loop {
            if Instant::now() > deadline {
                return Err(ClientError::Timeout(
                    self.config.rebalance_timeout.as_millis() as u64 * 3,
                ));
            }
            if self.generation < 0 || self.member_id.is_empty() {
                let ResponseBodyT::JoinGroupResponse(joined) =
                    self.client.call(self.join_body()).await?
                else {
                    return Err(ClientError::UnexpectedResponse("join group".into()));
                };
                self.member_id = joined.member_id.unwrap_or_default();
                self.generation = joined.generation_id;
            }
            let sync = RequestBodyT::SyncGroupRequest(Box::new(wire::SyncGroupRequestT {
                group_id: Some(self.config.group.clone()),
                generation_id: self.generation,
                member_id: Some(self.member_id.clone()),
                group_instance_id: self.config.instance_id.clone(),
                assignments: None,
            }));
            match self.client.call(sync).await {
                Ok(ResponseBodyT::SyncGroupResponse(response)) => {
                    let assignment =
                        parse_assignment(response.assignment.as_deref().unwrap_or_default());
                    self.apply(assignment).await?;
                    self.last_heartbeat = Instant::now();
                    return Ok(());
                }
                Ok(_) => return Err(ClientError::UnexpectedResponse("sync group".into())),
                Err(error) if error.code() == Some(ErrorCode::UnknownMemberId) => {
                    self.member_id.clear();
                    self.generation = -1;
                }
                Err(error) if rebalancing(&error) => {
                    // Join again for the new generation (keeping the member id).
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    let ResponseBodyT::JoinGroupResponse(joined) =
                        self.client.call(self.join_body()).await?
                    else {
                        return Err(ClientError::UnexpectedResponse("join group".into()));
                    };
                    self.generation = joined.generation_id;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn apply(&mut self, assignment: Vec<TopicPartition>) -> Result<()> {
        let old: BTreeSet<TopicPartition> = self.assignment.iter().cloned().collect();
        let new: BTreeSet<TopicPartition> = assignment.iter().cloned().collect();
        let revoked: Vec<TopicPartition> = old.difference(&new).cloned().collect();
        let added: Vec<TopicPartition> = new.difference(&old).cloned().collect();
        if !revoked.is_empty() {
            if let Some(callback) = &mut self.on_revoked {
                callback(&revoked);
            }
        }
        self.consumer.assign(&assignment)?;
        if !added.is_empty() {
            let topics: BTreeSet<&str> = added.iter().map(|tp| tp.topic.as_str()).collect();
            for topic in topics {
                let committed = self.client.committed_offsets(&self.config.group, topic).await?;
                for tp in added.iter().filter(|tp| tp.topic == topic) {
                    let offset =
                        committed.iter().find(|(p, _)| *p == tp.partition).and_then(|(_, o)| *o);
                    self.consumer.seek(tp, offset.map_or(self.config.start, Seek::Offset))?;
                }
            }
            if let Some(callback) = &mut self.on_assigned {
                callback(&added);
            }
        }
        self.assignment = assignment;
        Ok(())
    }

    /// Heartbeats when due and follows a rebalance if one started (committing first).
    async fn keep_membership(&mut self) -> Result<()> {
        if self.last_heartbeat.elapsed() < self.config.heartbeat_interval {
            return Ok(());
        }
        self.last_heartbeat = Instant::now();
        let heartbeat = RequestBodyT::HeartbeatRequest(Box::new(wire::HeartbeatRequestT {
            group_id: Some(self.config.group.clone()),
            generation_id: self.generation,
            member_id: Some(self.member_id.clone()),
            group_instance_id: self.config.instance_id.clone(),
        }));
        match self.client.call(heartbeat).await {
            Ok(_) => Ok(()),
            Err(error) if rebalancing(&error) => {
                // Commit what was consumed before partitions may move (ignore a fenced commit:
                // our generation may already be over).
                let _ = self.commit().await;
                if error.code() == Some(ErrorCode::UnknownMemberId) {
                    self.member_id.clear();
                }
                self.generation = -1;
                self.rejoin().await
            }
            Err(error) => Err(error),
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

    /// Commits the position of every assigned partition, synchronously, as this generation's
    /// member: the coordinator refuses it if the generation is over (a zombie).
    pub async fn commit(&mut self) -> Result<()> {
        self.last_commit = Instant::now();
        let offsets: Vec<(String, u32, i64)> = self
            .assignment
            .iter()
            .filter_map(|tp| Some((tp.topic.clone(), tp.partition, self.consumer.position(tp)?)))
            .collect();
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
        let offsets: Vec<(String, u32, i64)> = self
            .assignment
            .iter()
            .filter_map(|tp| Some((tp.topic.clone(), tp.partition, self.consumer.position(tp)?)))
            .collect();
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
        let left = self.client.call(leave).await.map(|_| ());
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
