//! The small value types shared by the core, its messages and effects: ids, offsets, terms,
//! batch metadata, persisted hard state, membership and the planted-bug switch.

use crate::limits::REPLICAS_MAX;

/// A broker (node) id. Replicas of a group are named by the node they live on.
pub type NodeId = u32;
/// A leader term (Kafka: leader epoch). Stored in each batch header as `leader_term`.
pub type Term = u64;
/// A Spate record offset. A batch covers `[base_offset, last_offset]`.
pub type Offset = u64;

/// The replicated partition a message or effect belongs to. Opaque to the core; the driver uses
/// it to route inbound messages and to coalesce outbound ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

/// What the core knows about one batch: where it is and which term wrote it. The bytes stay with
/// the driver. `membership` is set for the control batch that changes the replica set (the
/// driver decodes it from the batch when it reads one; the leader core creates it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub term: Term,
    pub membership: Option<Membership>,
}

impl BatchMeta {
    pub fn data(base_offset: Offset, last_offset: Offset, term: Term) -> Self {
        BatchMeta { base_offset, last_offset, term, membership: None }
    }

    /// Offset just past the batch.
    pub fn end(&self) -> Offset {
        self.last_offset + 1
    }
}

/// State that must be on stable storage before any message that depends on it leaves the node
/// (see `Effect::PersistHardState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// The replica set of a group: voters elect and count for commit; learners receive the log but
/// do neither (a new replica catches up as a learner before it is promoted).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Membership {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Membership {
    pub fn new(voters: &[NodeId]) -> Self {
        let mut m = Membership { voters: voters.to_vec(), learners: Vec::new() };
        m.voters.sort_unstable();
        assert!(m.is_valid(), "invalid membership {m:?}");
        m
    }

    /// Sorted, no duplicates, no node in both lists, at least one voter, within limits.
    pub fn is_valid(&self) -> bool {
        let sorted = |v: &[NodeId]| v.windows(2).all(|w| w[0] < w[1]);
        !self.voters.is_empty()
            && self.voters.len() + self.learners.len() <= REPLICAS_MAX
            && sorted(&self.voters)
            && sorted(&self.learners)
            && self.learners.iter().all(|l| !self.voters.contains(l))
    }

    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.binary_search(&node).is_ok()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.is_voter(node) || self.learners.binary_search(&node).is_ok()
    }

    /// Votes (or durable acknowledgements) needed out of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every replica except `me`, voters then learners, in id order.
    pub fn others(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied().filter(move |&n| n != me)
    }

    /// The membership after `change`, or why it is refused. One replica at a time.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(n) => {
                if self.contains(n) {
                    return Err(MembershipError::AlreadyMember(n));
                }
                next.learners.push(n);
                next.learners.sort_unstable();
            }
            MembershipChange::PromoteLearner(n) => {
                let Ok(i) = self.learners.binary_search(&n) else {
                    return Err(MembershipError::NotALearner(n));
                };
                next.learners.remove(i);
                next.voters.push(n);
                next.voters.sort_unstable();
            }
            MembershipChange::RemoveReplica(n) => {
                if let Ok(i) = self.voters.binary_search(&n) {
                    next.voters.remove(i);
                } else if let Ok(i) = self.learners.binary_search(&n) {
                    next.learners.remove(i);
                } else {
                    return Err(MembershipError::NotAMember(n));
                }
            }
        }
        if !next.is_valid() {
            return Err(MembershipError::Invalid);
        }
        Ok(next)
    }
}

/// One step of a replica-set change. Only one may be uncommitted at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner(NodeId),
    PromoteLearner(NodeId),
    RemoveReplica(NodeId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("node {0} is already a replica")]
    AlreadyMember(NodeId),
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    #[error("node {0} is not a replica")]
    NotAMember(NodeId),
    #[error("the change would leave no voter or too many replicas")]
    Invalid,
}

/// The durability setting of the topic, which decides what `durable_end` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Durable = fsynced.
    Always,
    /// Durable = handed to the OS write path (survives a process crash, not a power loss).
    Never,
}

/// Known bugs that can be switched on to prove the simulator's checkers catch them. Compiled in
/// always, checked at the exact site of the bug, off (`None`) by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Plant {
    #[default]
    None,
    /// The leader commits once a minority (itself alone in a 3-group) holds an offset.
    CommitOnMinority,
    /// A follower keeps its divergent tail instead of truncating it.
    SkipTruncation,
    /// A follower acknowledges its log end instead of its durable end.
    CountNondurableAsDurable,
    /// A voter grants a vote to every candidate of a term, not only the first.
    GrantTwoVotesInATerm,
    /// Candidates skip pre-vote: a replica that was cut off deposes a healthy leader on return.
    NoPrevote,
    /// A candidate sends its vote requests before its own vote is persisted.
    VoteBeforePersist,
}

impl Plant {
    pub const ALL: [(&'static str, Plant); 6] = [
        ("commit-on-minority", Plant::CommitOnMinority),
        ("skip-truncation", Plant::SkipTruncation),
        ("count-nondurable-as-durable", Plant::CountNondurableAsDurable),
        ("grant-two-votes-in-a-term", Plant::GrantTwoVotesInATerm),
        ("no-prevote", Plant::NoPrevote),
        ("vote-before-persist", Plant::VoteBeforePersist),
    ];

    pub fn from_name(name: &str) -> Option<Plant> {
        Plant::ALL.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    pub fn name(self) -> &'static str {
        Plant::ALL.iter().find(|(_, p)| *p == self).map_or("none", |(n, _)| n)
    }
}
