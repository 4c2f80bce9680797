//! The replication core of one partition: a sans-IO state machine. Events (ticks, inbound
//! messages, log progress reported by the driver) go in; effects (messages, log commands,
//! persistence requests) come out, in the order the driver must carry them out. No clock, no
//! sockets, no disk, no record bytes: the core tracks offsets, terms and per-follower progress.
//!
//! Split by role: [`election`] (pre-vote, vote, terms, timeouts), [`follower`] (accepting
//! appends, truncation, reset to the leader's log start), [`leader`] (progress per follower,
//! commit point, proposals, leadership transfer, membership changes).

mod election;
mod follower;
mod leader;
mod membership_log;

use std::collections::BTreeSet;
use std::marker::PhantomData;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::effect::Effect;
use crate::history::{TermHistory, TermStart};
use crate::limits;
use crate::message::{Dropped, Message};
use crate::types::{GroupId, HardState, Membership, NodeId, Offset, Plant, Term};

pub use leader::{LeaderState, Progress, ProposeError};
pub use membership_log::MembershipLog;

/// Static settings of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub group: GroupId,
    pub election_ticks_min: u32,
    /// Exclusive upper bound of the randomized election timeout.
    pub election_ticks_max: u32,
    pub heartbeat_ticks: u32,
    /// Let idle groups go quiet (no heartbeats, frozen election timers) while the driver's
    /// node-level failure detector vouches for the leader's node (`Event::PeerDown`).
    pub quiesce: bool,
    /// Seeds the election-timeout randomization (the driver derives it, e.g. from node and
    /// group id, so a simulation replays exactly).
    pub rng_seed: u64,
    /// A planted bug, for the simulator only. `Plant::None` in production.
    pub plant: Plant,
}

impl Config {
    pub fn new(id: NodeId, group: GroupId, rng_seed: u64) -> Self {
        Config {
            id,
            group,
            election_ticks_min: limits::ELECTION_TICKS_MIN_DEFAULT,
            election_ticks_max: limits::ELECTION_TICKS_MAX_DEFAULT,
            heartbeat_ticks: limits::HEARTBEAT_TICKS_DEFAULT,
            quiesce: true,
            rng_seed,
            plant: Plant::None,
        }
    }
}

/// What the driver recovered from stable storage at start.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub hard_state: HardState,
    pub history: Vec<TermStart>,
    /// Replica sets: the first is the one in force before any membership record still in the
    /// log (initially the bootstrap set); then one per membership record, by offset.
    pub memberships: Vec<(Offset, Membership)>,
    pub log_start: Offset,
    /// Recovered log end. Everything below it must be durable by the flush policy before the
    /// core starts (under flush=always the driver fsyncs what recovery found: a process crash
    /// can leave written but unsynced records, which a later power loss would take away).
    pub log_end: Offset,
    /// Last persisted commit point; may be older than the real one.
    pub commit: Offset,
}

impl Restored {
    /// A brand-new replica of a group with these voters.
    pub fn bootstrap(voters: &[NodeId]) -> Self {
        Restored { memberships: vec![(0, Membership::new(voters))], ..Restored::default() }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// An input to the core.
#[derive(Clone, Debug)]
pub enum Event<P> {
    /// One unit of time passed. The driver ticks every local replica from one timer.
    Tick,
    Message {
        from: NodeId,
        msg: Message<P>,
    },
    /// The local log now ends at `end` (optional: the core already counts what it asked to
    /// append; this only checks the driver agrees).
    LogAppended {
        end: Offset,
    },
    /// Everything below `end` is durable by the topic's flush policy.
    LogDurable {
        end: Offset,
    },
    /// The driver's node-level failure detector lost contact with `node` (no envelope or
    /// keepalive from it for a while). Wakes quiesced replicas that follow it.
    PeerDown {
        node: NodeId,
    },
    /// Retention deleted records below `start`. Must not pass the commit point.
    LogStartAdvanced {
        start: Offset,
    },
}

/// One replica of one group.
pub struct Replica<P> {
    cfg: Config,
    rng: SmallRng,
    hard: HardState,
    role: Role,
    leader_id: Option<NodeId>,
    history: TermHistory,
    memberships: MembershipLog,
    log_start: Offset,
    /// End of the log including appends the driver has been asked to do.
    log_end: Offset,
    durable_end: Offset,
    commit: Offset,
    /// Follower: the prefix of our log verified to match the leader of `hard.term`. Only that
    /// prefix may be acknowledged or committed.
    verified_end: Offset,
    /// Ticks since we last heard from a leader (or since we started an election).
    election_elapsed: u32,
    election_timeout: u32,
    /// Idle and quiet: a leader sends no heartbeats, a follower's election timer is frozen.
    quiesced: bool,
    votes: BTreeSet<NodeId>,
    leader: Option<LeaderState>,
    _payload: PhantomData<P>,
}

impl<P> Replica<P> {
    pub fn new(cfg: Config, restored: Restored) -> Self {
        assert!(cfg.election_ticks_min < cfg.election_ticks_max);
        assert!(cfg.heartbeat_ticks >= 1 && cfg.heartbeat_ticks < cfg.election_ticks_min);
        assert!(restored.log_start <= restored.log_end, "log start past log end");
        let mut history = TermHistory::new(restored.history);
        // The history is persisted before the batch it describes, so a crash can leave entries
        // for records that never made it to the log.
        history.truncate(restored.log_end.max(restored.log_start));
        history.trim_before(restored.log_start);
        let memberships = MembershipLog::new(restored.memberships, restored.log_end);
        let mut rng = SmallRng::seed_from_u64(cfg.rng_seed);
        let election_timeout = rng.gen_range(cfg.election_ticks_min..cfg.election_ticks_max);
        Replica {
            hard: restored.hard_state,
            role: Role::Follower,
            leader_id: None,
            history,
            memberships,
            log_start: restored.log_start,
            log_end: restored.log_end,
            durable_end: restored.log_end,
            commit: restored.commit.clamp(restored.log_start, restored.log_end),
            verified_end: 0,
            election_elapsed: 0,
            election_timeout,
            quiesced: false,
            votes: BTreeSet::new(),
            leader: None,
            rng,
            cfg,
            _payload: PhantomData,
        }
    }

    /// Handles one event, appending the effects to `out`. Returns why a message was dropped.
    pub fn step(&mut self, event: Event<P>, out: &mut Vec<Effect<P>>) -> Result<(), Dropped> {
        match event {
            Event::Tick => {
                self.tick(out);
                Ok(())
            }
            Event::Message { from, msg } => self.receive(from, msg, out),
            Event::LogAppended { end } => {
                assert!(end <= self.log_end, "driver appended past what it was asked");
                Ok(())
            }
            Event::LogDurable { end } => {
                self.log_durable(end, out);
                Ok(())
            }
            Event::LogStartAdvanced { start } => {
                self.advance_log_start(start);
                Ok(())
            }
            Event::PeerDown { node } => {
                self.peer_down(node);
                Ok(())
            }
        }
    }

    fn tick(&mut self, out: &mut Vec<Effect<P>>) {
        if self.quiesced {
            return; // An idle group costs one branch per tick.
        }
        if self.role == Role::Leader {
            self.tick_leader(out);
        } else {
            self.tick_election(out);
        }
    }

    fn receive(
        &mut self,
        from: NodeId,
        msg: Message<P>,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if from == self.cfg.id {
            return Err(Dropped::FromSelf);
        }
        if msg.term() == 0 {
            return Err(Dropped::ZeroTerm);
        }
        if msg.term() > limits::TERM_MAX {
            return Err(Dropped::TermOutOfRange);
        }
        if !self.observe_term(from, &msg, out)? {
            return Ok(());
        }
        match msg {
            Message::PreVote { term, last_term, log_end } => {
                self.on_prevote(from, term, last_term, log_end, out);
                Ok(())
            }
            Message::PreVoteReply { term, granted } => {
                self.on_prevote_reply(from, term, granted, out)
            }
            Message::Vote { term, last_term, log_end, .. } => {
                self.on_vote(from, term, last_term, log_end, out);
                Ok(())
            }
            Message::VoteReply { granted, .. } => self.on_vote_reply(from, granted, out),
            Message::Append {
                prev_end,
                prev_term,
                commit,
                from_log_start,
                seq,
                batches,
                payload,
                ..
            } => {
                let append =
                    follower::Append { prev_end, prev_term, commit, from_log_start, seq, batches };
                self.on_append(from, append, payload, out)
            }
            Message::AppendReply { seq, outcome, .. } => {
                self.on_append_reply(from, seq, outcome, out)
            }
            Message::DurableAck { durable_end, .. } => {
                self.on_durable_ack(from, durable_end, None, out)
            }
            Message::Heartbeat { commit, quiesce, .. } => {
                self.on_heartbeat(from, commit, quiesce, out)
            }
            Message::HeartbeatReply { durable_end, quiesced, .. } => {
                self.on_durable_ack(from, durable_end, Some(quiesced), out)
            }
            Message::TimeoutNow { .. } => self.on_timeout_now(from, out),
        }
    }

    fn log_durable(&mut self, end: Offset, out: &mut Vec<Effect<P>>) {
        let end = end.min(self.log_end);
        if end <= self.durable_end {
            return;
        }
        self.durable_end = end;
        if self.role == Role::Leader {
            self.maybe_commit(out);
        } else if let Some(leader) = self.leader_id {
            let durable_end = self.acked_durable_end();
            if durable_end > 0 {
                out.push(Effect::Send {
                    to: leader,
                    msg: Message::DurableAck { term: self.hard.term, durable_end },
                });
            }
        }
    }

    fn advance_log_start(&mut self, start: Offset) {
        assert!(start <= self.commit, "retention past the commit point: {start} > {}", self.commit);
        if start <= self.log_start {
            return;
        }
        self.log_start = start;
        self.history.trim_before(start);
        self.memberships.compact(self.commit);
    }

    fn set_commit(&mut self, commit: Offset, out: &mut Vec<Effect<P>>) {
        if commit <= self.commit {
            return;
        }
        assert!(commit <= self.log_end, "commit {commit} past log end {}", self.log_end);
        self.commit = commit;
        self.memberships.compact(commit);
        out.push(Effect::CommitAdvanced { commit });
    }

    fn persist_hard_state(&self, out: &mut Vec<Effect<P>>) {
        out.push(Effect::PersistHardState(self.hard));
    }

    fn random_election_timeout(&mut self) -> u32 {
        self.rng.gen_range(self.cfg.election_ticks_min..self.cfg.election_ticks_max)
    }

    /// Term of the last record (0 for an empty log with nothing before it).
    fn last_term(&self) -> Term {
        self.history.term_before(self.log_end)
    }

    fn membership(&self) -> &Membership {
        self.memberships.current()
    }

    // --- read-only view for drivers, tests and the simulator ---

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn group(&self) -> GroupId {
        self.cfg.group
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn term(&self) -> Term {
        self.hard.term
    }
    pub fn hard_state(&self) -> HardState {
        self.hard
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_id
    }
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn log_start(&self) -> Offset {
        self.log_start
    }
    pub fn log_end(&self) -> Offset {
        self.log_end
    }
    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }
    /// The commit point as this replica knows it (exclusive).
    pub fn commit(&self) -> Offset {
        self.commit
    }
    pub fn history(&self) -> &TermHistory {
        &self.history
    }
    pub fn current_membership(&self) -> &Membership {
        self.membership()
    }
    pub fn memberships(&self) -> &MembershipLog {
        &self.memberships
    }
    /// The high watermark consumers may read up to, served by the leader only once it has
    /// committed its own marker (before that, its commit point may be older than one a
    /// previous leader already showed to clients).
    pub fn high_watermark(&self) -> Option<Offset> {
        let leader = self.leader.as_ref()?;
        (self.commit > leader.marker_offset).then_some(self.commit)
    }
}

#[cfg(test)]
mod tests;
