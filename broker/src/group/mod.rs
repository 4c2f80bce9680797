//! Consumer-group coordination, sans-IO: membership, generations, session and rebalance
//! timeouts, static membership, commit fencing, and server-side assignment (see [`assign`]).
//! Time comes in as `now_ms`; nothing here does IO (`crate::shard::groups` drives it).
//!
//! Protocol (non-blocking, so no request is held open):
//! 1. `join` registers a member (a new one gets an id) and, if membership or subscriptions
//!    changed, starts a rebalance: the generation goes up and every member must join again.
//! 2. Members learn of a rebalance from `heartbeat` (`RebalanceInProgress`) and `join` again.
//! 3. When every member has joined, or the rebalance timeout passes (stragglers are removed),
//!    `tick` computes the assignment and the group is stable at the new generation.
//! 4. `sync` returns a member's partitions once the group is stable at its generation. Before
//!    that it answers `RebalanceInProgress` (ask again) to a member that joined this round, and
//!    `IllegalGeneration` (join again) to one whose round was superseded by a newer one.
//!
//! Partitions change owner only when a rebalance completes, so until then every member still
//! owns what it was assigned: commits are accepted from any generation since the last completed
//! one. That lets a member commit before giving partitions up, and lets cooperative members
//! consume and commit while the group rebalances.
//!
//! Cooperative-sticky rebalances take two generations: the first only takes away partitions
//! that move (everyone else keeps consuming), the second hands them to their new owners.
//! A static member (instance id) that rejoins within its session timeout takes over its old
//! member id's partitions without a rebalance; the old id is fenced.

pub mod assign;

use std::collections::{BTreeMap, BTreeSet};

use crate::limits;
use assign::{Assignment, Assignor, MemberSpec, Partition};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("unknown member id")]
    UnknownMember,
    #[error("generation {given} is not the group's {current}")]
    IllegalGeneration { given: i32, current: i32 },
    #[error("a rebalance is in progress: join again")]
    RebalanceInProgress,
    #[error("instance id {0:?} was taken over by a newer member")]
    FencedInstance(String),
    #[error("the group uses another assignor")]
    InconsistentProtocol,
    #[error("session timeout {0} ms is out of range")]
    InvalidSessionTimeout(i64),
    #[error("the group has active members")]
    NotEmpty,
    #[error("too many {what} (the limit is {max})")]
    TooMany { what: &'static str, max: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    Rebalancing,
    Stable,
}

#[derive(Debug, Clone)]
struct Member {
    instance: Option<String>,
    topics: BTreeSet<String>,
    session_ms: i64,
    rebalance_ms: i64,
    last_seen_ms: i64,
    /// Joined the rebalance in progress.
    joined: bool,
    /// Has fetched its assignment for the current generation.
    synced: bool,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub generation: i32,
    pub state: GroupState,
    assignor: Option<Assignor>,
    members: BTreeMap<String, Member>,
    /// Instance id → current member id.
    statics: BTreeMap<String, String>,
    /// Member ids replaced by a newer incarnation of their static instance.
    fenced: BTreeMap<String, String>,
    assignment: Assignment,
    /// The generation of the last completed rebalance: `assignment` was made at it.
    stable_generation: i32,
    /// Second step of a cooperative rebalance.
    pending_target: Option<PendingTarget>,
    rebalance_deadline_ms: i64,
    next_member: u64,
}

impl Group {
    fn new() -> Group {
        Group {
            generation: 0,
            state: GroupState::Empty,
            assignor: None,
            members: BTreeMap::new(),
            statics: BTreeMap::new(),
            fenced: BTreeMap::new(),
            assignment: Assignment::new(),
            stable_generation: 0,
            pending_target: None,
            rebalance_deadline_ms: 0,
            next_member: 0,
        }
    }

    pub fn assignor_name(&self) -> Option<&'static str> {
        self.assignor.map(|a| match a {
            Assignor::Range => "range",
            Assignor::RoundRobin => "roundrobin",
            Assignor::CooperativeSticky => "cooperative-sticky",
        })
    }

    pub fn members(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn assignment_of(&self, member: &str) -> Vec<Partition> {
        self.assignment.get(member).cloned().unwrap_or_default()
    }

    fn start_rebalance(&mut self, now_ms: i64, joined: Option<&str>) {
        self.generation += 1;
        self.state = GroupState::Rebalancing;
        let timeout = self.members.values().map(|m| m.rebalance_ms).max().unwrap_or(0);
        self.rebalance_deadline_ms = now_ms + timeout;
        for (id, member) in &mut self.members {
            member.joined = Some(id.as_str()) == joined;
            member.synced = false;
        }
    }

    fn check_member(&self, member_id: &str) -> Result<(), GroupError> {
        if let Some(instance) = self.fenced.get(member_id) {
            return Err(GroupError::FencedInstance(instance.clone()));
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMember);
        }
        Ok(())
    }

    fn remove(&mut self, member_id: &str) {
        if let Some(member) = self.members.remove(member_id) {
            if let Some(instance) = member.instance {
                if self.statics.get(&instance).map(String::as_str) == Some(member_id) {
                    self.statics.remove(&instance);
                }
            }
        }
        self.assignment.remove(member_id);
    }
}

/// Session timeouts a member may ask for.
pub const SESSION_TIMEOUT_MS_MIN: i64 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i64 = 300_000;

#[derive(Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
}

/// What a join returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub member_id: String,
    pub generation: i32,
}

/// A join request's parameters.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    pub member_id: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    pub topics: &'a [String],
    pub assignor: Assignor,
    pub session_ms: i64,
    pub rebalance_ms: i64,
}

impl Coordinator {
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Forgets a group with no members (absent groups are fine); refuses one with members.
    pub fn delete(&mut self, group_id: &str) -> Result<(), GroupError> {
        if self.groups.get(group_id).is_some_and(|g| !g.members.is_empty()) {
            return Err(GroupError::NotEmpty);
        }
        self.groups.remove(group_id);
        Ok(())
    }

    pub fn ids(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    pub fn join(
        &mut self,
        group_id: &str,
        request: JoinRequest<'_>,
        now_ms: i64,
    ) -> Result<Joined, GroupError> {
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&request.session_ms) {
            return Err(GroupError::InvalidSessionTimeout(request.session_ms));
        }
        if request.topics.len() > limits::MEMBER_TOPICS_MAX {
            return Err(GroupError::TooMany {
                what: "topics in a subscription",
                max: limits::MEMBER_TOPICS_MAX,
            });
        }
        if !self.groups.contains_key(group_id) && self.groups.len() >= limits::GROUPS_PER_SHARD_MAX
        {
            return Err(GroupError::TooMany {
                what: "groups on this shard",
                max: limits::GROUPS_PER_SHARD_MAX,
            });
        }
        let group = self.groups.entry(group_id.to_string()).or_insert_with(Group::new);
        if group.assignor.is_some_and(|a| a != request.assignor) && !group.members.is_empty() {
            return Err(GroupError::InconsistentProtocol);
        }
        group.assignor = Some(request.assignor);
        let topics: BTreeSet<String> = request.topics.iter().cloned().collect();
        // A static member coming back: take over its previous id, no rebalance if nothing changed.
        if let Some(instance) = request.instance_id {
            if let Some(previous) = group.statics.get(instance).cloned() {
                if request.member_id != Some(previous.as_str()) {
                    let old = group.members.remove(&previous).expect("static member listed");
                    // A fresh number: the old id is fenced, so the new one must never equal it.
                    group.next_member += 1;
                    let new_id = format!("{instance}-{}", group.next_member);
                    group.fenced.insert(previous.clone(), instance.to_string());
                    let same = old.topics == topics;
                    let owned = group.assignment.remove(&previous).unwrap_or_default();
                    group.assignment.insert(new_id.clone(), owned);
                    group.members.insert(
                        new_id.clone(),
                        Member {
                            topics,
                            last_seen_ms: now_ms,
                            session_ms: request.session_ms,
                            rebalance_ms: request.rebalance_ms,
                            joined: true,
                            synced: false,
                            ..old
                        },
                    );
                    group.statics.insert(instance.to_string(), new_id.clone());
                    if !same {
                        group.start_rebalance(now_ms, Some(&new_id));
                    }
                    return Ok(Joined { member_id: new_id, generation: group.generation });
                }
            }
        }
        let member_id = match request.member_id.filter(|id| !id.is_empty()) {
            Some(id) => {
                group.check_member(id)?;
                id.to_string()
            }
            None => {
                if group.members.len() >= limits::MEMBERS_PER_GROUP_MAX {
                    return Err(GroupError::TooMany {
                        what: "members in the group",
                        max: limits::MEMBERS_PER_GROUP_MAX,
                    });
                }
                group.next_member += 1;
                let id =
                    format!("{}-{}", request.instance_id.unwrap_or("member"), group.next_member);
                group.members.insert(
                    id.clone(),
                    Member {
                        instance: request.instance_id.map(str::to_string),
                        topics: topics.clone(),
                        session_ms: request.session_ms,
                        rebalance_ms: request.rebalance_ms,
                        last_seen_ms: now_ms,
                        joined: true,
                        synced: false,
                    },
                );
                if let Some(instance) = request.instance_id {
                    group.statics.insert(instance.to_string(), id.clone());
                }
                group.start_rebalance(now_ms, Some(&id));
                return Ok(Joined { member_id: id, generation: group.generation });
            }
        };
        let member = group.members.get_mut(&member_id).expect("checked");
        member.last_seen_ms = now_ms;
        let changed = member.topics != topics;
        member.topics = topics;
        if changed || group.state != GroupState::Rebalancing && group.state != GroupState::Stable {
            group.start_rebalance(now_ms, Some(&member_id));
        } else if group.state == GroupState::Rebalancing {
            group.members.get_mut(&member_id).expect("checked").joined = true;
        }
        Ok(Joined { member_id, generation: group.generation })
    }

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        let group = self.groups.get_mut(group_id).ok_or(GroupError::UnknownMember)?;
        group.check_member(member_id)?;
        let member = group.members.get_mut(member_id).expect("checked");
        member.last_seen_ms = now_ms;
        if group.state == GroupState::Rebalancing && !member.joined {
            return Err(GroupError::RebalanceInProgress);
        }
        if generation != group.generation && group.state == GroupState::Stable {
            return Err(GroupError::IllegalGeneration {
                given: generation,
                current: group.generation,
            });
        }
        Ok(())
    }

    /// The member's partitions for `generation`, once the group is stable at it.
    pub fn sync(
        &mut self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        now_ms: i64,
    ) -> Result<Vec<Partition>, GroupError> {
        let group = self.groups.get_mut(group_id).ok_or(GroupError::UnknownMember)?;
        group.check_member(member_id)?;
        let member = group.members.get_mut(member_id).expect("checked");
        member.last_seen_ms = now_ms;
        let in_this_round = group.state == GroupState::Stable || member.joined;
        if generation != group.generation || !in_this_round {
            // A newer round started (or completed without this member's join): join again.
            return Err(GroupError::IllegalGeneration {
                given: generation,
                current: group.generation,
            });
        }
        if group.state != GroupState::Stable {
            return Err(GroupError::RebalanceInProgress);
        }
        member.synced = true;
        Ok(group.assignment_of(member_id))
    }

    pub fn leave(
        &mut self,
        group_id: &str,
        member_id: &str,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        let group = self.groups.get_mut(group_id).ok_or(GroupError::UnknownMember)?;
        group.check_member(member_id)?;
        group.remove(member_id);
        if group.members.is_empty() {
            group.state = GroupState::Empty;
        } else {
            group.start_rebalance(now_ms, None);
        }
        Ok(())
    }

    /// Whether a commit from this member at this generation is accepted: a current member's, at
    /// any generation since the last completed rebalance (it still owns its partitions until the
    /// next completes). Outside membership (`generation == -1`, empty member id) only while the
    /// group has no members.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let Some(group) = self.groups.get(group_id) else {
            return if generation < 0 { Ok(()) } else { Err(GroupError::UnknownMember) };
        };
        if generation < 0 && member_id.is_empty() {
            return if group.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::RebalanceInProgress)
            };
        }
        group.check_member(member_id)?;
        if !(group.stable_generation..=group.generation).contains(&generation) {
            return Err(GroupError::IllegalGeneration {
                given: generation,
                current: group.generation,
            });
        }
        Ok(())
    }

    /// Expires members past their session timeout, and completes rebalances whose members have
    /// all joined or whose timeout passed. `partitions`: each topic's partition count now.
    pub fn tick(&mut self, now_ms: i64, partitions: &BTreeMap<String, u32>) {
        for group in self.groups.values_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| now_ms - m.last_seen_ms > m.session_ms)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                group.remove(id);
            }
            if !expired.is_empty() {
                if group.members.is_empty() {
                    group.state = GroupState::Empty;
                    continue;
                }
                group.start_rebalance(now_ms, None);
            }
            // The second step of a cooperative rebalance starts once everyone has seen the first.
            if group.state == GroupState::Stable
                && group.pending_target.is_some()
                && group.members.values().all(|m| m.synced)
            {
                group.start_rebalance(now_ms, None);
            }
            if group.state != GroupState::Rebalancing {
                continue;
            }
            let all_joined = group.members.values().all(|m| m.joined);
            if !all_joined && now_ms < group.rebalance_deadline_ms {
                continue;
            }
            let stragglers: Vec<String> =
                group.members.iter().filter(|(_, m)| !m.joined).map(|(id, _)| id.clone()).collect();
            for id in &stragglers {
                group.remove(id);
            }
            if group.members.is_empty() {
                group.state = GroupState::Empty;
                continue;
            }
            complete(group, partitions);
        }
    }
}

/// The assignment a cooperative rebalance's second step hands out, and what it was planned for.
#[derive(Debug, Clone)]
struct PendingTarget {
    target: Assignment,
    /// Each member's subscription, and the partition counts, when the target was planned.
    members: BTreeMap<String, BTreeSet<String>>,
    partitions: BTreeMap<String, u32>,
}

fn complete(group: &mut Group, partitions: &BTreeMap<String, u32>) {
    let specs: Vec<MemberSpec> = group
        .members
        .iter()
        .map(|(id, m)| MemberSpec {
            id: id.clone(),
            topics: m.topics.clone(),
            owned: group.assignment.get(id).cloned().unwrap_or_default(),
        })
        .collect();
    let assignor = group.assignor.unwrap_or(Assignor::Range);
    let subscriptions: BTreeMap<String, BTreeSet<String>> =
        group.members.iter().map(|(id, m)| (id.clone(), m.topics.clone())).collect();
    // A member that joined, left or changed its subscription between the two steps makes the
    // planned target wrong (it could leave a newcomer with nothing): plan again from what
    // everyone owns now.
    let pending = group
        .pending_target
        .take()
        .filter(|p| p.members == subscriptions && &p.partitions == partitions);
    group.assignment = match (assignor, pending) {
        (Assignor::CooperativeSticky, Some(pending)) => pending.target,
        (Assignor::CooperativeSticky, None) => {
            let plan = assign::plan_cooperative(&specs, partitions);
            let moves = specs.iter().any(|m| plan.target[&m.id] != plan.revoke[&m.id]);
            let gains = specs.iter().any(|m| plan.target[&m.id].len() > plan.revoke[&m.id].len());
            if moves && gains {
                // Step one: only revocations; step two follows when everyone has synced.
                group.pending_target = Some(PendingTarget {
                    target: plan.target,
                    members: subscriptions,
                    partitions: partitions.clone(),
                });
                plan.revoke
            } else {
                plan.target
            }
        }
        (assignor, _) => assign::assign(assignor, &specs, partitions),
    };
    group.state = GroupState::Stable;
    group.stable_generation = group.generation;
    for member in group.members.values_mut() {
        member.joined = false;
        member.synced = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> BTreeMap<String, u32> {
        [("t".to_string(), 6)].into_iter().collect()
    }

    fn request<'a>(
        member: Option<&'a str>,
        instance: Option<&'a str>,
        subscribed: &'a [String],
        assignor: Assignor,
    ) -> JoinRequest<'a> {
        JoinRequest {
            member_id: member,
            instance_id: instance,
            topics: subscribed,
            assignor,
            session_ms: 10_000,
            rebalance_ms: 5_000,
        }
    }

    #[test]
    fn groups_members_and_subscriptions_are_capped() {
        let subscribed = vec!["t".to_string()];
        let mut c = Coordinator::default();
        for _ in 0..limits::MEMBERS_PER_GROUP_MAX {
            c.join("g", request(None, None, &subscribed, Assignor::Range), 0).unwrap();
        }
        let full = c.join("g", request(None, None, &subscribed, Assignor::Range), 0);
        assert!(matches!(full, Err(GroupError::TooMany { .. })), "{full:?}");
        let wide: Vec<String> = (0..=limits::MEMBER_TOPICS_MAX).map(|i| format!("t{i}")).collect();
        let too_wide = c.join("h", request(None, None, &wide, Assignor::Range), 0);
        assert!(matches!(too_wide, Err(GroupError::TooMany { .. })));
        let mut c = Coordinator::default();
        for g in 0..limits::GROUPS_PER_SHARD_MAX {
            c.join(&format!("g{g}"), request(None, None, &subscribed, Assignor::Range), 0).unwrap();
        }
        let one_more = c.join("new", request(None, None, &subscribed, Assignor::Range), 0);
        assert!(matches!(one_more, Err(GroupError::TooMany { .. })));
        // An existing group still takes members.
        c.join("g0", request(None, None, &subscribed, Assignor::Range), 0).unwrap();
    }

    /// Drives members through join → heartbeat/join → sync until all are stable (bounded).
    fn settle(
        c: &mut Coordinator,
        ids: &mut [String],
        subscribed: &[String],
        assignor: Assignor,
        now: &mut i64,
    ) -> BTreeMap<String, Vec<Partition>> {
        drive(c, ids, subscribed, assignor, now, |group| group.pending_target.is_none())
    }

    /// Drives members until all have synced and `until` holds for the group (bounded).
    fn drive(
        c: &mut Coordinator,
        ids: &mut [String],
        subscribed: &[String],
        assignor: Assignor,
        now: &mut i64,
        until: impl Fn(&Group) -> bool,
    ) -> BTreeMap<String, Vec<Partition>> {
        for _ in 0..10 {
            c.tick(*now, &topics());
            let mut out = BTreeMap::new();
            let mut all = true;
            for id in ids.iter() {
                let generation = c.group("g").unwrap().generation;
                match c.sync("g", id, generation, *now) {
                    Ok(assigned) => {
                        out.insert(id.clone(), assigned);
                    }
                    Err(GroupError::RebalanceInProgress)
                    | Err(GroupError::IllegalGeneration { .. }) => {
                        all = false;
                        if c.heartbeat("g", id, generation, *now)
                            == Err(GroupError::RebalanceInProgress)
                        {
                            c.join("g", request(Some(id), None, subscribed, assignor), *now)
                                .unwrap();
                        }
                    }
                    Err(error) => panic!("{error}"),
                }
            }
            *now += 100;
            if all && until(c.group("g").unwrap()) {
                return out;
            }
        }
        panic!("group did not settle");
    }

    #[test]
    fn three_members_split_six_partitions_then_a_dead_member_is_replaced() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let mut ids: Vec<String> = (0..3)
            .map(|_| {
                c.join("g", request(None, None, &subscribed, Assignor::Range), now)
                    .unwrap()
                    .member_id
            })
            .collect();
        let assignment = settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        let mut all: Vec<Partition> = assignment.values().flatten().cloned().collect();
        all.sort();
        assert_eq!(all.len(), 6);
        all.dedup();
        assert_eq!(all.len(), 6, "each partition owned by exactly one member");
        assert!(assignment.values().all(|v| v.len() == 2));
        // Member 0 stops heartbeating: after its session timeout the others take its partitions.
        let dead = ids.remove(0);
        for _ in 0..120 {
            now += 100;
            for id in &ids {
                let generation = c.group("g").unwrap().generation;
                if c.heartbeat("g", id, generation, now) == Err(GroupError::RebalanceInProgress) {
                    c.join("g", request(Some(id), None, &subscribed, Assignor::Range), now)
                        .unwrap();
                }
            }
            c.tick(now, &topics());
        }
        assert!(!c.group("g").unwrap().members().contains(&dead));
        let after = settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        assert_eq!(after.values().map(Vec::len).sum::<usize>(), 6);
        // A commit from the dead member (a zombie) is rejected.
        assert!(c.check_commit("g", &dead, 1).is_err());
        let generation = c.group("g").unwrap().generation;
        assert!(c.check_commit("g", &ids[0], generation).is_ok());
        assert!(matches!(
            c.check_commit("g", &ids[0], generation - 1),
            Err(GroupError::IllegalGeneration { .. })
        ));
    }

    #[test]
    fn a_static_member_restart_causes_no_rebalance() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let a = c
            .join("g", request(None, Some("host-a"), &subscribed, Assignor::Range), now)
            .unwrap()
            .member_id;
        let b = c
            .join("g", request(None, Some("host-b"), &subscribed, Assignor::Range), now)
            .unwrap()
            .member_id;
        let mut ids = vec![a.clone(), b.clone()];
        let before = settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        let generation = c.group("g").unwrap().generation;
        // host-a restarts (new process, no member id) within its session timeout.
        now += 3_000;
        let again =
            c.join("g", request(None, Some("host-a"), &subscribed, Assignor::Range), now).unwrap();
        assert_eq!(again.generation, generation, "no new generation");
        assert_eq!(c.sync("g", &again.member_id, generation, now).unwrap(), before[&a]);
        assert_eq!(
            c.heartbeat("g", &b, generation, now),
            Ok(()),
            "the other member is undisturbed"
        );
        assert!(matches!(
            c.heartbeat("g", &a, generation, now),
            Err(GroupError::FencedInstance(_))
        ));
        assert_ne!(again.member_id, a, "the new incarnation never reuses the fenced id");
        assert_eq!(c.heartbeat("g", &again.member_id, generation, now), Ok(()));
        // A second restart works the same way.
        let third =
            c.join("g", request(None, Some("host-a"), &subscribed, Assignor::Range), now).unwrap();
        assert_ne!(third.member_id, again.member_id);
        assert_eq!(c.heartbeat("g", &third.member_id, generation, now), Ok(()));
    }

    #[test]
    fn a_cooperative_join_revokes_only_what_moves() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let mut ids: Vec<String> = (0..2)
            .map(|_| {
                c.join("g", request(None, None, &subscribed, Assignor::CooperativeSticky), now)
                    .unwrap()
                    .member_id
            })
            .collect();
        let before = settle(&mut c, &mut ids, &subscribed, Assignor::CooperativeSticky, &mut now);
        assert!(before.values().all(|v| v.len() == 3));
        // A third member joins. Watch each generation's assignment: the old members only ever
        // lose partitions that end up with the new one.
        let newcomer = c
            .join("g", request(None, None, &subscribed, Assignor::CooperativeSticky), now)
            .unwrap()
            .member_id;
        ids.push(newcomer.clone());
        let after = settle(&mut c, &mut ids, &subscribed, Assignor::CooperativeSticky, &mut now);
        assert_eq!(after[&newcomer].len(), 2);
        for id in &ids[..2] {
            let kept: Vec<&Partition> =
                before[id].iter().filter(|p| after[id].contains(p)).collect();
            assert_eq!(kept.len(), 2, "{id} lost only one partition");
            let lost: Vec<&Partition> =
                before[id].iter().filter(|p| !after[id].contains(p)).collect();
            assert!(
                lost.iter().all(|p| after[&newcomer].contains(p)),
                "what moved went to the newcomer"
            );
        }
    }

    #[test]
    fn a_member_joining_between_the_cooperative_steps_gets_partitions() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let coop = Assignor::CooperativeSticky;
        let mut ids: Vec<String> = (0..2)
            .map(|_| c.join("g", request(None, None, &subscribed, coop), now).unwrap().member_id)
            .collect();
        settle(&mut c, &mut ids, &subscribed, coop, &mut now);
        ids.push(c.join("g", request(None, None, &subscribed, coop), now).unwrap().member_id);
        // Step one (revocations) is done when everyone has synced with a target pending.
        drive(&mut c, &mut ids, &subscribed, coop, &mut now, |g| g.pending_target.is_some());
        ids.push(c.join("g", request(None, None, &subscribed, coop), now).unwrap().member_id);
        let after = settle(&mut c, &mut ids, &subscribed, coop, &mut now);
        let mut all: Vec<&Partition> = after.values().flatten().collect();
        assert!(after.values().all(|owned| !owned.is_empty()), "{after:?}");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 6, "{after:?}");
    }

    #[test]
    fn cooperative_members_joining_one_at_a_time_balance() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let mut ids = vec![
            c.join("g", request(None, None, &subscribed, Assignor::CooperativeSticky), now)
                .unwrap()
                .member_id,
        ];
        let one = settle(&mut c, &mut ids, &subscribed, Assignor::CooperativeSticky, &mut now);
        assert_eq!(one[&ids[0]].len(), 6, "{one:?}");
        ids.push(
            c.join("g", request(None, None, &subscribed, Assignor::CooperativeSticky), now)
                .unwrap()
                .member_id,
        );
        let two = settle(&mut c, &mut ids, &subscribed, Assignor::CooperativeSticky, &mut now);
        assert!(two.values().all(|v| v.len() == 3), "{two:?}");
    }

    #[test]
    fn a_member_waiting_for_its_assignment_rejoins_when_a_newer_round_starts() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let mut ids: Vec<String> = (0..2)
            .map(|_| {
                c.join("g", request(None, None, &subscribed, Assignor::Range), now)
                    .unwrap()
                    .member_id
            })
            .collect();
        settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        // A third member starts a round; the first joins it and waits for its assignment.
        c.join("g", request(None, None, &subscribed, Assignor::Range), now).unwrap();
        let round = c.join("g", request(Some(&ids[0]), None, &subscribed, Assignor::Range), now);
        let round = round.unwrap().generation;
        assert_eq!(c.sync("g", &ids[0], round, now), Err(GroupError::RebalanceInProgress));
        // A fourth member supersedes that round: waiting is no longer enough, it must join again.
        c.join("g", request(None, None, &subscribed, Assignor::Range), now).unwrap();
        assert!(matches!(
            c.sync("g", &ids[0], round, now),
            Err(GroupError::IllegalGeneration { .. })
        ));
        let again = c.join("g", request(Some(&ids[0]), None, &subscribed, Assignor::Range), now);
        let again = again.unwrap().generation;
        assert_eq!(again, round + 1);
        assert_eq!(c.sync("g", &ids[0], again, now), Err(GroupError::RebalanceInProgress));
    }

    #[test]
    fn commits_are_accepted_until_the_rebalance_completes_then_fenced() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut now = 0;
        let mut ids: Vec<String> = (0..2)
            .map(|_| {
                c.join("g", request(None, None, &subscribed, Assignor::Range), now)
                    .unwrap()
                    .member_id
            })
            .collect();
        settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        let old = c.group("g").unwrap().generation;
        // A newcomer starts a rebalance: until it completes the old members still own their
        // partitions, so they may commit at the old generation (and at the new one once joined).
        let newcomer =
            c.join("g", request(None, None, &subscribed, Assignor::Range), now).unwrap().member_id;
        assert_eq!(c.check_commit("g", &ids[0], old), Ok(()));
        assert_eq!(c.check_commit("g", &ids[0], old + 1), Ok(()));
        assert!(c.check_commit("g", &ids[0], old + 2).is_err(), "no generation from the future");
        ids.push(newcomer);
        settle(&mut c, &mut ids, &subscribed, Assignor::Range, &mut now);
        let new = c.group("g").unwrap().generation;
        assert!(matches!(
            c.check_commit("g", &ids[0], old),
            Err(GroupError::IllegalGeneration { .. })
        ));
        assert_eq!(c.check_commit("g", &ids[0], new), Ok(()));
    }

    #[test]
    fn session_timeouts_and_protocols_are_validated() {
        let mut c = Coordinator::default();
        let subscribed = vec!["t".to_string()];
        let mut bad = request(None, None, &subscribed, Assignor::Range);
        bad.session_ms = 10;
        assert_eq!(c.join("g", bad, 0), Err(GroupError::InvalidSessionTimeout(10)));
        c.join("g", request(None, None, &subscribed, Assignor::Range), 0).unwrap();
        assert_eq!(
            c.join("g", request(None, None, &subscribed, Assignor::RoundRobin), 0),
            Err(GroupError::InconsistentProtocol)
        );
        assert_eq!(c.heartbeat("g", "nobody", 1, 0), Err(GroupError::UnknownMember));
        assert!(c.check_commit("other", "", -1).is_ok(), "standalone commits outside any group");
    }
}
