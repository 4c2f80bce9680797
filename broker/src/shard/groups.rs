//! The group APIs on the broker: each group lives on one shard (CRC-32 of its id modulo the
//! shard count), which runs the sans-IO [`crate::group::Coordinator`] for it. Requests that
//! reach another shard are forwarded there.
//!
//! Encodings (server-side assignment, so no member ever sees another's subscription):
//! - `JoinGroup.protocols[0].name` is the assignor (`range`, `roundrobin`,
//!   `cooperative-sticky`); its `metadata` is the subscribed topics, UTF-8, comma-separated.
//! - `SyncGroup.assignment` (and `DescribedMember.assignment`) is the member's partitions as
//!   UTF-8 `topic:partition` items, comma-separated.

use std::collections::BTreeMap;
use std::rc::Rc;

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};
use spate_storage::wall_clock_ms;

use super::{Failure, Shard, ShardMsg};
use crate::group::assign::Assignor;
use crate::group::{GroupError, GroupState, JoinRequest};

impl From<GroupError> for Failure {
    fn from(error: GroupError) -> Failure {
        let code = match error {
            GroupError::UnknownMember => ErrorCode::UnknownMemberId,
            GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
            GroupError::RebalanceInProgress => ErrorCode::RebalanceInProgress,
            GroupError::FencedInstance(_) => ErrorCode::FencedInstanceId,
            GroupError::InconsistentProtocol => ErrorCode::InconsistentProtocol,
            GroupError::InvalidSessionTimeout(_) => ErrorCode::InvalidSessionTimeout,
            GroupError::NotEmpty => ErrorCode::NonEmptyGroup,
            GroupError::TooMany { .. } => ErrorCode::InvalidRequest,
        };
        Failure::new(code, error.to_string())
    }
}

pub fn encode_assignment(partitions: &[(String, u32)]) -> Vec<u8> {
    partitions.iter().map(|(t, p)| format!("{t}:{p}")).collect::<Vec<_>>().join(",").into_bytes()
}

/// Group ids follow the topic-name rule (1-249 of `[A-Za-z0-9._-]`): they name metrics,
/// appear in logs and in `group describe`, and a quote or a newline in one would break those.
pub fn validate_group_id(group: &str) -> Result<(), Failure> {
    let ok = !group.is_empty()
        && group.len() <= spate_protocol::limits::TOPIC_NAME_BYTES_MAX
        && group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            ErrorCode::InvalidRequest,
            format!("group id {group:?} is invalid: use 1-249 of [A-Za-z0-9._-]"),
        ))
    }
}

/// The group id a group request names, if it is one.
pub fn group_of(body: &RequestBodyT) -> Option<&str> {
    match body {
        RequestBodyT::JoinGroupRequest(r) => r.group_id.as_deref(),
        RequestBodyT::SyncGroupRequest(r) => r.group_id.as_deref(),
        RequestBodyT::HeartbeatRequest(r) => r.group_id.as_deref(),
        RequestBodyT::LeaveGroupRequest(r) => r.group_id.as_deref(),
        _ => None,
    }
}

impl Shard {
    /// The shard that coordinates `group`: a pure function of its id.
    pub fn group_shard(&self, group: &str) -> usize {
        crc32fast::hash(group.as_bytes()) as usize % self.config.shard_count()
    }

    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.catalog
            .borrow()
            .topics
            .iter()
            .map(|(name, topic)| (name.clone(), topic.partition_count()))
            .collect()
    }

    /// Expires members and completes rebalances (called every 100 ms).
    pub fn tick_groups(&self) {
        let counts = self.partition_counts();
        self.groups.borrow_mut().tick(wall_clock_ms(), &counts);
    }

    /// The broker that coordinates groups: this one on a single broker (id 0); in a cluster the
    /// leader of the committed-offsets log (as Kafka's group coordinator is the leader of the
    /// group's `__consumer_offsets` partition), so a group's offsets are committed where its
    /// members meet, and survive that broker.
    fn coordinator_broker(&self) -> Result<(i32, std::net::SocketAddr), Failure> {
        let Some(cluster) = &self.config.cluster else {
            return Ok((0, self.config.listen));
        };
        let unavailable = |why: String| Failure::new(ErrorCode::CoordinatorNotAvailable, why);
        let leader = self
            .internal_leader(crate::offsets::OFFSETS_DIR)
            .ok_or_else(|| unavailable("the committed-offsets log has no leader yet".into()))?;
        if leader == cluster.node_id {
            return Ok((leader as i32, self.config.listen));
        }
        self.client_address(leader)
            .and_then(|address| address.parse().ok())
            .map(|address| (leader as i32, address))
            .ok_or_else(|| {
                unavailable(format!("the coordinator, broker {leader}, has no known address"))
            })
    }

    /// In a cluster, a group request that reached a broker which does not coordinate groups is
    /// refused with `NotCoordinator` naming the one that does (the client finds it again).
    pub(super) fn not_coordinator(&self, group: &str) -> Option<Failure> {
        let cluster = self.config.cluster.as_ref()?;
        match self.coordinator_broker() {
            Ok((coordinator, _)) if coordinator == cluster.node_id as i32 => None,
            Ok((coordinator, _)) => Some(Failure::new(
                ErrorCode::NotCoordinator,
                format!("group {group:?} is coordinated by broker {coordinator}"),
            )),
            Err(failure) => Some(failure),
        }
    }

    /// Answers FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups and
    /// DescribeGroups, forwarding to the coordinating shard where needed.
    pub async fn group_request(
        self: &Rc<Self>,
        body: RequestBodyT,
    ) -> Result<ResponseBodyT, Failure> {
        match body {
            RequestBodyT::FindCoordinatorRequest(request) => {
                let group = request.key.as_deref().unwrap_or_default();
                let shard = self.group_shard(group);
                let (broker_id, listen) = self.coordinator_broker()?;
                let mut address = listen;
                address.set_port(listen.port().wrapping_add(1 + shard as u16));
                Ok(ResponseBodyT::FindCoordinatorResponse(Box::new(
                    wire::FindCoordinatorResponseT {
                        broker_id,
                        host: Some(listen.ip().to_string()),
                        port: listen.port(),
                        shard: shard as u16,
                        shard_host: Some(address.ip().to_string()),
                        shard_port: address.port(),
                    },
                )))
            }
            RequestBodyT::ListGroupsRequest(_) => {
                let mut groups = self.list_local_groups();
                for shard in (0..self.config.shard_count()).filter(|s| *s != self.id) {
                    groups.extend(self.call(shard, |reply| ShardMsg::ListGroups { reply }).await?);
                }
                groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
                Ok(ResponseBodyT::ListGroupsResponse(Box::new(wire::ListGroupsResponseT {
                    groups: Some(groups),
                })))
            }
            RequestBodyT::DeleteGroupsRequest(request) => {
                let mut results = Vec::new();
                for group in request.groups.into_iter().flatten() {
                    let result = self.delete_group(&group).await;
                    let (error_code, error_message) = match result {
                        Ok(()) => (ErrorCode::None, None),
                        Err(failure) => (failure.code, Some(failure.message)),
                    };
                    results.push(wire::TopicResultT {
                        name: Some(group),
                        error_code,
                        error_message,
                    });
                }
                Ok(ResponseBodyT::DeleteGroupsResponse(Box::new(wire::DeleteGroupsResponseT {
                    groups: Some(results),
                })))
            }
            RequestBodyT::DescribeGroupsRequest(request) => {
                let mut described = Vec::new();
                for group in request.groups.into_iter().flatten() {
                    let shard = self.group_shard(&group);
                    let one = if shard == self.id {
                        self.describe_local(&group)
                    } else {
                        let name = group.clone();
                        self.call(shard, |reply| ShardMsg::DescribeGroup { group: name, reply })
                            .await?
                    };
                    described.push(one);
                }
                Ok(ResponseBodyT::DescribeGroupsResponse(Box::new(wire::DescribeGroupsResponseT {
                    groups: Some(described),
                })))
            }
            body => {
                let group = group_of(&body).unwrap_or_default().to_string();
                if group.is_empty() {
                    return Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        "a group request needs a group id",
                    ));
                }
                let shard = self.group_shard(&group);
                if shard == self.id {
                    self.group_local(body)
                } else {
                    self.call(shard, |reply| ShardMsg::Group { body, reply }).await?
                }
            }
        }
    }

    /// Join, sync, heartbeat and leave, on the coordinating shard.
    pub fn group_local(&self, body: RequestBodyT) -> Result<ResponseBodyT, Failure> {
        let now = wall_clock_ms();
        let mut groups = self.groups.borrow_mut();
        match body {
            RequestBodyT::JoinGroupRequest(request) => {
                validate_group_id(request.group_id.as_deref().unwrap_or_default())?;
                let protocol =
                    request.protocols.as_ref().and_then(|p| p.first()).cloned().unwrap_or_default();
                let assignor: Assignor = protocol
                    .name
                    .as_deref()
                    .unwrap_or("range")
                    .parse()
                    .map_err(|e: String| Failure::new(ErrorCode::InconsistentProtocol, e))?;
                let topics: Vec<String> =
                    String::from_utf8_lossy(&protocol.metadata.unwrap_or_default())
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect();
                let joined = groups.join(
                    request.group_id.as_deref().unwrap_or_default(),
                    JoinRequest {
                        member_id: request.member_id.as_deref(),
                        instance_id: request.group_instance_id.as_deref().filter(|i| !i.is_empty()),
                        topics: &topics,
                        assignor,
                        session_ms: i64::from(request.session_timeout_ms),
                        rebalance_ms: i64::from(request.rebalance_timeout_ms.max(0)),
                    },
                    now,
                )?;
                Ok(ResponseBodyT::JoinGroupResponse(Box::new(wire::JoinGroupResponseT {
                    generation_id: joined.generation,
                    protocol_name: protocol.name,
                    leader: Some(String::new()),
                    member_id: Some(joined.member_id),
                    members: None,
                })))
            }
            RequestBodyT::SyncGroupRequest(request) => {
                let group = request.group_id.as_deref().unwrap_or_default();
                let partitions = groups.sync(
                    group,
                    request.member_id.as_deref().unwrap_or_default(),
                    request.generation_id,
                    now,
                )?;
                Ok(ResponseBodyT::SyncGroupResponse(Box::new(wire::SyncGroupResponseT {
                    assignment: Some(encode_assignment(&partitions)),
                })))
            }
            RequestBodyT::HeartbeatRequest(request) => {
                let group = request.group_id.as_deref().unwrap_or_default();
                groups.heartbeat(
                    group,
                    request.member_id.as_deref().unwrap_or_default(),
                    request.generation_id,
                    now,
                )?;
                Ok(ResponseBodyT::HeartbeatResponse(Box::default()))
            }
            RequestBodyT::LeaveGroupRequest(request) => {
                let group = request.group_id.as_deref().unwrap_or_default();
                let members = request
                    .members
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let id = m.member_id.unwrap_or_default();
                        let error_code = match groups.leave(group, &id, now) {
                            Ok(()) => ErrorCode::None,
                            Err(error) => Failure::from(error).code,
                        };
                        wire::MemberResultT {
                            member_id: Some(id),
                            group_instance_id: m.group_instance_id,
                            error_code,
                        }
                    })
                    .collect();
                Ok(ResponseBodyT::LeaveGroupResponse(Box::new(wire::LeaveGroupResponseT {
                    members: Some(members),
                })))
            }
            _ => Err(Failure::new(ErrorCode::InvalidRequest, "not a group request")),
        }
    }

    pub fn list_local_groups(&self) -> Vec<wire::ListedGroupT> {
        let groups = self.groups.borrow();
        groups
            .ids()
            .into_iter()
            .filter(|id| self.group_shard(id) == self.id)
            .map(|id| {
                let state = groups.group(&id).map_or(GroupState::Empty, |g| g.state);
                wire::ListedGroupT {
                    group_id: Some(id),
                    protocol_type: Some("consumer".into()),
                    state: Some(state_name(state).into()),
                }
            })
            .collect()
    }

    pub fn describe_local(&self, id: &str) -> wire::DescribedGroupT {
        let groups = self.groups.borrow();
        let Some(group) = groups.group(id) else {
            return wire::DescribedGroupT {
                group_id: Some(id.to_string()),
                error_code: ErrorCode::None,
                state: Some("Dead".into()),
                ..Default::default()
            };
        };
        let members = group
            .members()
            .into_iter()
            .map(|member| wire::DescribedMemberT {
                assignment: Some(encode_assignment(&group.assignment_of(&member))),
                member_id: Some(member),
                ..Default::default()
            })
            .collect();
        wire::DescribedGroupT {
            group_id: Some(id.to_string()),
            error_code: ErrorCode::None,
            state: Some(state_name(group.state).into()),
            protocol_type: Some("consumer".into()),
            protocol: group.assignor_name().map(str::to_string),
            members: Some(members),
        }
    }

    /// Deletes an empty group: its coordinator forgets it, then shard 0 drops its offsets.
    async fn delete_group(&self, group: &str) -> Result<(), Failure> {
        let shard = self.group_shard(group);
        if shard == self.id {
            self.groups.borrow_mut().delete(group).map_err(Failure::from)?;
        } else {
            let name = group.to_string();
            self.call(shard, |reply| ShardMsg::DeleteGroup { group: name, reply }).await??;
        }
        if self.id == 0 {
            self.delete_group_offsets(group).await
        } else {
            let name = group.to_string();
            self.call(0, |reply| ShardMsg::DeleteGroupOffsets { group: name, reply }).await?
        }
    }

    /// Shard 0: removes the group's committed offsets, durably.
    pub async fn delete_group_offsets(&self, group: &str) -> Result<(), Failure> {
        let store = self
            .offsets
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorCode::NotCoordinator, "offsets live on shard 0"))?;
        let deleted = store
            .read()
            .await
            .map_err(|_| Failure::new(ErrorCode::ShuttingDown, "offset store closed"))?
            .delete_group(group)
            .await;
        if deleted.is_ok() {
            super::compact_offsets_if_due(store.clone());
        }
        deleted.map_err(Failure::from)
    }

    /// Whether the coordinator accepts a commit from this member and generation.
    pub async fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: i32,
    ) -> Result<(), Failure> {
        let shard = self.group_shard(group);
        if shard == self.id {
            return self
                .groups
                .borrow()
                .check_commit(group, member, generation)
                .map_err(Failure::from);
        }
        let (group, member) = (group.to_string(), member.to_string());
        self.call(shard, |reply| ShardMsg::CheckCommit { group, member, generation, reply }).await?
    }
}

fn state_name(state: GroupState) -> &'static str {
    match state {
        GroupState::Empty => "Empty",
        GroupState::Rebalancing => "PreparingRebalance",
        GroupState::Stable => "Stable",
    }
}
