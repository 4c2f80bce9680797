//! Partition assignors for consumer groups. Pure functions: members with their subscriptions
//! (and, for cooperative-sticky, what they own now) in, an assignment out.
//!
//! - `range`: per topic, partitions split into contiguous ranges over the subscribed members in
//!   member-id order (Kafka's RangeAssignor).
//! - `roundrobin`: all subscribed partitions, sorted, dealt one by one over the members that
//!   subscribe to each (Kafka's RoundRobinAssignor).
//! - `cooperative-sticky`: keep every partition where it is unless balance requires a move;
//!   move as few as possible. Moving partitions are revoked in one generation and assigned in
//!   the next (`plan_cooperative`), so members that keep their partitions never stop.

use std::collections::{BTreeMap, BTreeSet};

pub type Partition = (String, u32);
pub type Assignment = BTreeMap<String, Vec<Partition>>;

/// A member as assignors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub id: String,
    pub topics: BTreeSet<String>,
    /// Partitions it owns now (cooperative-sticky only).
    pub owned: Vec<Partition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignor {
    Range,
    RoundRobin,
    CooperativeSticky,
}

impl std::str::FromStr for Assignor {
    type Err = String;
    fn from_str(name: &str) -> Result<Assignor, String> {
        match name {
            "range" => Ok(Assignor::Range),
            "roundrobin" => Ok(Assignor::RoundRobin),
            "cooperative-sticky" => Ok(Assignor::CooperativeSticky),
            other => {
                Err(format!("unknown assignor {other:?}: range, roundrobin or cooperative-sticky"))
            }
        }
    }
}

fn empty(members: &[MemberSpec]) -> Assignment {
    members.iter().map(|m| (m.id.clone(), Vec::new())).collect()
}

/// `partitions`: each topic's partition count.
pub fn range(members: &[MemberSpec], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out = empty(members);
    for (topic, count) in partitions {
        let mut subscribers: Vec<&MemberSpec> =
            members.iter().filter(|m| m.topics.contains(topic)).collect();
        subscribers.sort_by(|a, b| a.id.cmp(&b.id));
        if subscribers.is_empty() {
            continue;
        }
        let n = subscribers.len() as u32;
        let (per, extra) = (count / n, count % n);
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let take = per + u32::from((i as u32) < extra);
            out.get_mut(&member.id)
                .expect("listed")
                .extend((next..next + take).map(|p| (topic.clone(), p)));
            next += take;
        }
    }
    out
}

pub fn round_robin(members: &[MemberSpec], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out = empty(members);
    let mut sorted: Vec<&MemberSpec> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    if sorted.is_empty() {
        return out;
    }
    let mut cursor = 0usize;
    for (topic, count) in partitions {
        for partition in 0..*count {
            // The next member in the circle that subscribes to the topic (bounded by a lap).
            for _ in 0..sorted.len() {
                let member = sorted[cursor % sorted.len()];
                cursor += 1;
                if member.topics.contains(topic) {
                    out.get_mut(&member.id).expect("listed").push((topic.clone(), partition));
                    break;
                }
            }
        }
    }
    out
}

/// The balanced target that moves the fewest partitions: members keep what they own (if they
/// still subscribe and it still exists) up to their fair share; the rest goes to the members
/// with the fewest.
pub fn sticky_target(members: &[MemberSpec], partitions: &BTreeMap<String, u32>) -> Assignment {
    let mut out = empty(members);
    let exists = |p: &Partition| partitions.get(&p.0).is_some_and(|count| p.1 < *count);
    let all: Vec<Partition> =
        partitions.iter().flat_map(|(t, c)| (0..*c).map(move |p| (t.clone(), p))).collect();
    let eligible: Vec<&Partition> =
        all.iter().filter(|p| members.iter().any(|m| m.topics.contains(&p.0))).collect();
    let subscribed = members.iter().filter(|m| !m.topics.is_empty()).count().max(1);
    let fair_max = eligible.len().div_ceil(subscribed);
    let mut taken: BTreeSet<Partition> = BTreeSet::new();
    let mut sorted: Vec<&MemberSpec> = members.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for member in &sorted {
        let mut keep: Vec<Partition> = member
            .owned
            .iter()
            .filter(|p| exists(p) && member.topics.contains(&p.0) && !taken.contains(*p))
            .cloned()
            .collect();
        keep.sort();
        keep.truncate(fair_max);
        taken.extend(keep.iter().cloned());
        out.insert(member.id.clone(), keep);
    }
    for partition in eligible.into_iter().filter(|p| !taken.contains(*p)) {
        let receiver = sorted
            .iter()
            .filter(|m| m.topics.contains(&partition.0))
            .min_by_key(|m| (out[&m.id].len(), m.id.clone()))
            .expect("eligible means someone subscribes");
        out.get_mut(&receiver.id).expect("listed").push(partition.clone());
    }
    // Rebalance counts between members that could swap (bounded: each move lowers the spread).
    for _ in 0..all.len() {
        let most = sorted
            .iter()
            .max_by_key(|m| (out[&m.id].len(), std::cmp::Reverse(m.id.clone())))
            .map(|m| m.id.clone());
        let least =
            sorted.iter().min_by_key(|m| (out[&m.id].len(), m.id.clone())).map(|m| m.id.clone());
        let (Some(most), Some(least)) = (most, least) else { break };
        if out[&most].len() <= out[&least].len() + 1 {
            break;
        }
        let least_topics = &members.iter().find(|m| m.id == least).expect("member").topics;
        let Some(index) = out[&most].iter().rposition(|p| least_topics.contains(&p.0)) else {
            break;
        };
        let moved = out.get_mut(&most).expect("listed").remove(index);
        out.get_mut(&least).expect("listed").push(moved);
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// The two steps of a cooperative rebalance. `revoke` is what each member keeps during the first
/// generation (its current partitions minus those that move away); `target` is what each owns
/// after the second. Members whose `revoke` equals what they own lose nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CooperativePlan {
    pub revoke: Assignment,
    pub target: Assignment,
}

pub fn plan_cooperative(
    members: &[MemberSpec],
    partitions: &BTreeMap<String, u32>,
) -> CooperativePlan {
    let target = sticky_target(members, partitions);
    let revoke = members
        .iter()
        .map(|m| {
            let keeps: Vec<Partition> =
                m.owned.iter().filter(|p| target[&m.id].contains(p)).cloned().collect();
            (m.id.clone(), keeps)
        })
        .collect();
    CooperativePlan { revoke, target }
}

pub fn assign(
    assignor: Assignor,
    members: &[MemberSpec],
    partitions: &BTreeMap<String, u32>,
) -> Assignment {
    match assignor {
        Assignor::Range => range(members, partitions),
        Assignor::RoundRobin => round_robin(members, partitions),
        Assignor::CooperativeSticky => sticky_target(members, partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str], owned: &[(&str, u32)]) -> MemberSpec {
        MemberSpec {
            id: id.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            owned: owned.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
        }
    }

    fn counts(topics: &[(&str, u32)]) -> BTreeMap<String, u32> {
        topics.iter().map(|(t, c)| (t.to_string(), *c)).collect()
    }

    /// Every partition of a subscribed topic is assigned exactly once, to a subscriber.
    fn assert_exact(
        assignment: &Assignment,
        members: &[MemberSpec],
        partitions: &BTreeMap<String, u32>,
    ) {
        let mut seen = BTreeSet::new();
        for (id, owned) in assignment {
            let spec = members.iter().find(|m| &m.id == id).unwrap();
            for p in owned {
                assert!(spec.topics.contains(&p.0), "{id} got {p:?} without subscribing");
                assert!(seen.insert(p.clone()), "{p:?} assigned twice");
            }
        }
        let expected: usize = partitions
            .iter()
            .filter(|(t, _)| members.iter().any(|m| m.topics.contains(*t)))
            .map(|(_, c)| *c as usize)
            .sum();
        assert_eq!(seen.len(), expected);
    }

    #[test]
    fn range_and_round_robin_cover_everything_once() {
        let members = vec![
            member("a", &["t", "u"], &[]),
            member("b", &["t"], &[]),
            member("c", &["t", "u"], &[]),
        ];
        let partitions = counts(&[("t", 7), ("u", 2), ("v", 3)]);
        let ranged = range(&members, &partitions);
        assert_exact(&ranged, &members, &partitions);
        assert_eq!(ranged["a"].iter().filter(|p| p.0 == "t").count(), 3);
        // With different subscriptions round-robin covers everything but need not balance (b
        // only takes t); equal subscriptions balance to within one (next test).
        let dealt = round_robin(&members, &partitions);
        assert_exact(&dealt, &members, &partitions);
    }

    #[test]
    fn six_partitions_three_members_two_each() {
        let members =
            vec![member("a", &["t"], &[]), member("b", &["t"], &[]), member("c", &["t"], &[])];
        let partitions = counts(&[("t", 6)]);
        for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
            let assignment = assign(assignor, &members, &partitions);
            assert_exact(&assignment, &members, &partitions);
            assert!(assignment.values().all(|v| v.len() == 2), "{assignor:?}: {assignment:?}");
        }
    }

    #[test]
    fn cooperative_join_revokes_only_what_moves() {
        // a and b own 3 each of 6; c joins: each of a and b gives up exactly one.
        let before = vec![
            member("a", &["t"], &[("t", 0), ("t", 1), ("t", 2)]),
            member("b", &["t"], &[("t", 3), ("t", 4), ("t", 5)]),
            member("c", &["t"], &[]),
        ];
        let partitions = counts(&[("t", 6)]);
        let plan = plan_cooperative(&before, &partitions);
        assert_exact(&plan.target, &before, &partitions);
        assert!(plan.target.values().all(|v| v.len() == 2));
        let revoked: usize = before.iter().map(|m| m.owned.len() - plan.revoke[&m.id].len()).sum();
        assert_eq!(revoked, 2, "only the two partitions c receives move: {plan:?}");
        // Everything a and b keep in the first step they still own at the end.
        for id in ["a", "b"] {
            assert!(plan.revoke[id].iter().all(|p| plan.target[id].contains(p)));
        }
    }

    #[test]
    fn sticky_keeps_owners_when_a_member_leaves() {
        let members = vec![
            member("a", &["t"], &[("t", 0), ("t", 1)]),
            member("c", &["t"], &[("t", 4), ("t", 5)]),
        ];
        let partitions = counts(&[("t", 6)]);
        let target = sticky_target(&members, &partitions);
        assert_exact(&target, &members, &partitions);
        assert!(target["a"].contains(&("t".into(), 0)) && target["a"].contains(&("t".into(), 1)));
        assert!(target["c"].contains(&("t".into(), 4)) && target["c"].contains(&("t".into(), 5)));
        assert_eq!(target["a"].len() + target["c"].len(), 6);
    }

    /// Seeded random groups: every assignor covers each subscribed partition exactly once;
    /// sticky never moves more partitions than balance needs.
    #[test]
    fn random_groups_property() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let topics = ["t0", "t1", "t2"];
            let partitions: BTreeMap<String, u32> =
                topics.iter().map(|t| (t.to_string(), (next() % 9) as u32)).collect();
            let member_count = 1 + next() % 6;
            let mut owned_pool: Vec<Partition> =
                partitions.iter().flat_map(|(t, c)| (0..*c).map(move |p| (t.clone(), p))).collect();
            let members: Vec<MemberSpec> = (0..member_count)
                .map(|i| {
                    let subscribed: BTreeSet<String> =
                        topics.iter().filter(|_| next() % 3 != 0).map(|t| t.to_string()).collect();
                    let take = (next() % 4) as usize;
                    let owned: Vec<Partition> =
                        (0..take).filter_map(|_| owned_pool.pop()).collect();
                    MemberSpec { id: format!("m{i}"), topics: subscribed, owned }
                })
                .collect();
            for assignor in [Assignor::Range, Assignor::RoundRobin, Assignor::CooperativeSticky] {
                assert_exact(&assign(assignor, &members, &partitions), &members, &partitions);
            }
            let plan = plan_cooperative(&members, &partitions);
            for m in &members {
                assert!(plan.revoke[&m.id]
                    .iter()
                    .all(|p| m.owned.contains(p) && plan.target[&m.id].contains(p)));
            }
        }
    }
}
