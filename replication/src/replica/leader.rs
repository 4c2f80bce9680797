//! The leader side: per-follower progress (push-based: the leader sends, one `Append` in flight
//! per follower), the commit point, proposals, leadership transfer and replica-set changes.
//!
//! The commit point is the largest offset held durably by a majority of voters, counting the
//! leader's own durable end, and only once that offset's record is of the leader's term
//! (Raft §5.4.2: earlier-term records commit indirectly, through the leader's marker).

use std::collections::BTreeMap;

use super::{Replica, Role};
use crate::effect::{AppendRequest, Effect};
use crate::limits::{APPEND_RESEND_TICKS, OFFSET_MAX, PROBES_BACK_TO_BACK_MAX, REPLICAS_MAX};
use crate::message::{AppendOutcome, Dropped, Message};
use crate::types::{BatchMeta, MembershipChange, MembershipError, NodeId, Offset, Plant};

/// What the leader knows about one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Where the next `Append` starts.
    pub next: Offset,
    /// The follower's log matches ours below this.
    pub match_end: Offset,
    /// Of that, durable on the follower by the flush policy (counts for commit).
    pub durable_end: Offset,
    /// Ticks since the `Append` in flight was sent; None when nothing is in flight.
    inflight_ticks: Option<u32>,
    /// The `seq` of the last `Append` sent: only its answer sends the next one.
    sent_seq: u64,
    /// Heard from since the last quorum check.
    active: bool,
    /// Mismatches since the last accepted append (divergence search rounds).
    probes: u32,
    /// Went quiet on our last quiesce heartbeat, and nothing happened since.
    quiet: bool,
}

impl Progress {
    fn new(next: Offset) -> Self {
        Progress {
            next,
            match_end: 0,
            durable_end: 0,
            inflight_ticks: None,
            sent_seq: 0,
            active: true,
            probes: 0,
            quiet: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LeaderState {
    /// Offset of this term's leader marker; the leader serves a high watermark only past it.
    pub marker_offset: Offset,
    progress: BTreeMap<NodeId, Progress>,
    heartbeat_elapsed: u32,
    quorum_elapsed: u32,
    /// Leadership transfer in progress: target, ticks since it began, TimeoutNow sent.
    transfer: Option<(NodeId, u32, bool)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader is {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("leadership transfer in progress")]
    Transferring,
    #[error("a batch holds at least one record")]
    Empty,
    #[error("the log would pass the largest offset")]
    OffsetsExhausted,
    #[error("the leader has not committed its first record of this term yet")]
    NotReady,
    #[error("a replica-set change is not committed yet")]
    ChangePending,
    #[error("learner {0} has not caught up")]
    NotCaughtUp(NodeId),
    #[error("the leader cannot remove itself; transfer leadership first")]
    RemovingLeader,
    #[error("node {0} is not a voter of this group")]
    NotAVoter(NodeId),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

impl<P> Replica<P> {
    pub(super) fn become_leader(&mut self, out: &mut Vec<Effect<P>>) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.hard.voted_for, Some(self.cfg.id));
        let term = self.hard.term;
        let marker_offset = self.log_end;
        self.role = Role::Leader;
        self.leader_id = Some(self.cfg.id);
        self.votes.clear();
        let progress = self
            .membership()
            .others(self.cfg.id)
            .map(|n| (n, Progress::new(marker_offset)))
            .collect();
        self.leader = Some(LeaderState {
            marker_offset,
            progress,
            heartbeat_elapsed: 0,
            quorum_elapsed: 0,
            transfer: None,
        });
        out.push(Effect::BecameLeader { term });
        assert!(
            self.history.append(term, marker_offset),
            "a new term starts with the leader marker"
        );
        out.push(Effect::PersistTermStart { term, start_offset: marker_offset });
        out.push(Effect::AppendLeaderMarker { offset: marker_offset, term });
        self.log_end = marker_offset + 1;
        self.replicate_all(out);
        self.maybe_commit(out);
    }

    fn leader_state(&mut self) -> &mut LeaderState {
        self.leader.as_mut().expect("leader state exists while leader")
    }

    pub(super) fn tick_leader(&mut self, out: &mut Vec<Effect<P>>) {
        let ls = self.leader_state();
        ls.heartbeat_elapsed += 1;
        ls.quorum_elapsed += 1;
        self.tick_transfer();
        self.resend_unanswered_appends(out);
        if self.leader_state().quorum_elapsed >= self.election_timeout && !self.check_quorum() {
            let term = self.hard.term;
            self.become_follower(term, None, out);
            return;
        }
        if self.leader_state().heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.leader_state().heartbeat_elapsed = 0;
            self.heartbeat_round(out);
        }
    }

    /// A transfer whose target did not take over within an election timeout is abandoned: lead on.
    fn tick_transfer(&mut self) {
        let timeout = self.election_timeout;
        let ls = self.leader_state();
        if let Some((_, elapsed, _)) = ls.transfer.as_mut() {
            *elapsed += 1;
            if *elapsed >= timeout {
                ls.transfer = None;
            }
        }
    }

    /// An `Append` unanswered for `APPEND_RESEND_TICKS` was lost (or its answer was, or it is
    /// slow): resend it as a probe, which carries no records. Its answer (the latest) sends
    /// the records; a late answer to the first one only moves the follower's progress.
    fn resend_unanswered_appends(&mut self, out: &mut Vec<Effect<P>>) {
        let mut resend = Vec::new(); // Allocates only when something is due.
        for (&node, p) in self.leader_state().progress.iter_mut() {
            if let Some(t) = p.inflight_ticks.as_mut() {
                *t += 1;
                if *t >= APPEND_RESEND_TICKS {
                    resend.push(node);
                }
            }
        }
        for node in resend {
            self.send_append_probing(node, true, out);
        }
    }

    /// Heartbeats, asking followers to go quiet if the group is idle; once all of them have, go
    /// quiet ourselves instead.
    fn heartbeat_round(&mut self, out: &mut Vec<Effect<P>>) {
        let idle = self.cfg.quiesce && self.is_idle();
        let all_quiet = self.leader_state().progress.values().all(|p| p.quiet);
        if idle && all_quiet {
            self.quiesced = true;
        } else {
            self.send_heartbeats(idle, out);
        }
    }

    /// Nothing to do until a proposal: every replica holds the whole log durably, it is all
    /// committed in our term, nothing is in flight or being handed over.
    fn is_idle(&self) -> bool {
        let ls = self.leader.as_ref().expect("leader");
        let end = self.log_end;
        ls.transfer.is_none()
            && self.commit == end
            && self.durable_end == end
            && ls.marker_offset < end
            && ls
                .progress
                .values()
                .all(|p| p.inflight_ticks.is_none() && p.match_end == end && p.durable_end == end)
    }

    /// Something happened: followers' consent to go quiet is void, and a quiesced leader
    /// resumes heartbeats (and check-quorum) now, from a clean slate.
    pub(super) fn wake(&mut self, out: &mut Vec<Effect<P>>) {
        if self.role != Role::Leader {
            return;
        }
        for p in self.leader_state().progress.values_mut() {
            p.quiet = false;
        }
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        let ls = self.leader_state();
        ls.heartbeat_elapsed = 0;
        ls.quorum_elapsed = 0;
        for p in ls.progress.values_mut() {
            p.active = true;
        }
        self.send_heartbeats(false, out);
    }

    /// A leader that has not heard from a majority for an election timeout steps down, so a
    /// partitioned leader stops serving a high watermark that can no longer advance.
    fn check_quorum(&mut self) -> bool {
        let me = self.cfg.id;
        let membership = self.memberships.current().clone();
        let ls = self.leader.as_mut().expect("leader");
        ls.quorum_elapsed = 0;
        let mut active = usize::from(membership.is_voter(me));
        for (node, p) in ls.progress.iter_mut() {
            if p.active && membership.is_voter(*node) {
                active += 1;
            }
            p.active = false;
        }
        active >= membership.quorum()
    }

    fn send_heartbeats(&mut self, quiesce: bool, out: &mut Vec<Effect<P>>) {
        let (term, commit) = (self.hard.term, self.commit);
        let ls = self.leader.as_ref().expect("leader");
        for &to in ls.progress.keys() {
            out.push(Effect::Send { to, msg: Message::Heartbeat { term, commit, quiesce } });
        }
    }

    pub(super) fn replicate_all(&mut self, out: &mut Vec<Effect<P>>) {
        let idle: Vec<NodeId> = self
            .leader_state()
            .progress
            .iter()
            .filter(|(_, p)| p.inflight_ticks.is_none())
            .map(|(n, _)| *n)
            .collect();
        for node in idle {
            self.send_append(node, out);
        }
    }

    /// Asks the driver to send `node` everything from its `next` offset (or from our log start
    /// if we no longer have that).
    fn send_append(&mut self, node: NodeId, out: &mut Vec<Effect<P>>) {
        self.send_append_probing(node, false, out);
    }

    /// `send_append`, or with `probe` the same `Append` without records.
    fn send_append_probing(&mut self, node: NodeId, probe: bool, out: &mut Vec<Effect<P>>) {
        let log_start = self.log_start;
        let (term, commit) = (self.hard.term, self.commit);
        let p = self.leader_state().progress.get_mut(&node).expect("progress for every replica");
        p.inflight_ticks = Some(0);
        p.sent_seq += 1;
        let seq = p.sent_seq;
        let next = p.next;
        let (prev_end, from_log_start) = if next <= log_start {
            (log_start, Some(self.memberships.at(log_start).clone()))
        } else {
            (next, None)
        };
        assert!(
            prev_end >= self.log_start && prev_end <= self.log_end,
            "append from outside the log"
        );
        let prev_term = self.history.term_before(prev_end);
        out.push(Effect::SendAppend(AppendRequest {
            to: node,
            term,
            prev_end,
            prev_term,
            commit,
            from_log_start,
            seq,
            probe,
        }));
    }

    pub(super) fn on_append_reply(
        &mut self,
        from: NodeId,
        seq: u64,
        outcome: AppendOutcome,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if self.role != Role::Leader {
            return Err(Dropped::UnexpectedForRole);
        }
        self.wake(out);
        let log_end = self.log_end;
        let Some(p) = self.leader_state().progress.get(&from).copied() else {
            return Err(Dropped::UnknownSender(from));
        };
        let mut p = p;
        p.active = true;
        if seq > p.sent_seq {
            return Err(Dropped::UnexpectedReply);
        }
        if seq < p.sent_seq || p.inflight_ticks.is_none() {
            // A late answer: its Append was resent (or already answered). What it verified
            // still counts; the latest Append's answer sends the next one.
            if let AppendOutcome::Accepted { match_end, durable_end } = outcome {
                if match_end > log_end || durable_end > match_end {
                    return Err(Dropped::OffsetOutOfRange);
                }
                p.match_end = p.match_end.max(match_end);
                p.next = p.next.max(match_end);
                p.durable_end = p.durable_end.max(durable_end);
            }
            self.leader_state().progress.insert(from, p);
            self.maybe_commit(out);
            self.maybe_finish_transfer(out);
            return Ok(());
        }
        p.inflight_ticks = None;
        let mut send_now = true;
        match outcome {
            AppendOutcome::Accepted { match_end, durable_end } => {
                if match_end > log_end || durable_end > match_end {
                    return Err(Dropped::OffsetOutOfRange);
                }
                p.match_end = p.match_end.max(match_end);
                p.next = p.next.max(match_end);
                p.probes = 0;
                p.durable_end = p.durable_end.max(durable_end);
            }
            AppendOutcome::Mismatch { hint_term, hint_end } => {
                let (_, our_end) = self.history.last_term_at_or_below(hint_term, log_end);
                // Not bounded below by `match_end`: a follower that restarted may have lost an
                // unsynced tail we had matched (durable records are never lost, and `durable_end`
                // is kept). A stale hint only costs a resend.
                p.next = our_end.min(hint_end);
                p.match_end = p.match_end.min(p.next);
                // An honest search ends in a few rounds (each one drops to a lower term); a
                // corrupt follower could keep it going forever, so past a bound the probes go at
                // the resend timer's pace instead of back to back.
                p.probes = p.probes.saturating_add(1);
                if p.probes > PROBES_BACK_TO_BACK_MAX {
                    send_now = false;
                    p.inflight_ticks = Some(0);
                }
            }
        }
        self.leader_state().progress.insert(from, p);
        if send_now && p.next < log_end {
            self.send_append(from, out);
        }
        self.maybe_commit(out);
        self.maybe_finish_transfer(out);
        Ok(())
    }

    /// A `DurableAck`, or a `HeartbeatReply` (`heartbeat` is `Some(quiesced)`) that also
    /// restarts replication to a follower that fell behind (e.g. restarted and lost its unsynced
    /// tail) and collects the follower's consent to go quiet.
    pub(super) fn on_durable_ack(
        &mut self,
        from: NodeId,
        durable_end: Offset,
        heartbeat: Option<bool>,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if self.role != Role::Leader {
            return Err(Dropped::UnexpectedForRole);
        }
        let quiet = heartbeat == Some(true);
        if !quiet {
            self.wake(out);
        }
        let log_end = self.log_end;
        let Some(p) = self.leader_state().progress.get_mut(&from) else {
            return Err(Dropped::UnknownSender(from));
        };
        if durable_end > log_end {
            return Err(Dropped::OffsetOutOfRange);
        }
        p.active = true;
        p.quiet = quiet;
        // A follower only acknowledges what it verified to match us in this term.
        let moved = durable_end > p.durable_end;
        p.durable_end = p.durable_end.max(durable_end);
        let behind = heartbeat.is_some() && durable_end < log_end && p.inflight_ticks.is_none();
        if behind {
            self.send_append(from, out);
        }
        if moved {
            self.maybe_commit(out);
        }
        Ok(())
    }

    /// Moves the commit point to the largest offset a majority of voters holds durably.
    pub(super) fn maybe_commit(&mut self, out: &mut Vec<Effect<P>>) {
        let membership = self.memberships.current();
        let ls = self.leader.as_ref().expect("leader");
        // No allocation: this runs on every acknowledgement of every group.
        let mut durable = [0; REPLICAS_MAX];
        let voters = membership.voters.len();
        for (slot, &v) in durable.iter_mut().zip(&membership.voters) {
            *slot = if v == self.cfg.id {
                self.durable_end
            } else {
                ls.progress.get(&v).map_or(0, |p| p.durable_end)
            };
        }
        let durable = &mut durable[..voters];
        durable.sort_unstable_by(|a, b| b.cmp(a));
        let needed = if self.cfg.plant == Plant::CommitOnMinority {
            (membership.quorum() - 1).max(1)
        } else {
            membership.quorum()
        };
        let candidate = durable[needed - 1];
        assert!(candidate <= self.log_end, "a durable end past our log end was accepted");
        if candidate > self.commit && self.history.term_before(candidate) == self.hard.term {
            self.set_commit(candidate, out);
        }
    }

    /// Leader only: reserves offsets for a batch of `records` records in this term. The driver
    /// writes the batch at exactly `base_offset` with `leader_term = term`, then reports
    /// `LogDurable` as it becomes durable.
    pub fn propose(
        &mut self,
        records: u64,
        out: &mut Vec<Effect<P>>,
    ) -> Result<BatchMeta, ProposeError> {
        self.check_can_propose()?;
        if records == 0 {
            return Err(ProposeError::Empty);
        }
        if self.log_end.saturating_add(records) > OFFSET_MAX {
            return Err(ProposeError::OffsetsExhausted);
        }
        self.wake(out);
        assert_eq!(self.history.last_term(), self.hard.term, "a leader's log ends in its term");
        let base_offset = self.log_end;
        self.log_end = base_offset + records;
        self.replicate_all(out);
        Ok(BatchMeta::data(base_offset, self.log_end - 1, self.hard.term))
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        let Some(ls) = &self.leader else {
            return Err(ProposeError::NotLeader(self.leader_id));
        };
        if ls.transfer.is_some() {
            return Err(ProposeError::Transferring);
        }
        Ok(())
    }

    /// Leader only: hands leadership to voter `to` once it has our whole log (TimeoutNow). New
    /// proposals are refused meanwhile; the transfer is abandoned after an election timeout.
    pub fn transfer_leadership(
        &mut self,
        to: NodeId,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), ProposeError> {
        self.check_can_propose()?;
        if to == self.cfg.id || !self.membership().is_voter(to) {
            return Err(ProposeError::NotAVoter(to));
        }
        self.wake(out);
        self.leader_state().transfer = Some((to, 0, false));
        self.maybe_finish_transfer(out);
        if self.leader.as_ref().is_some_and(|ls| ls.transfer.is_some()) {
            let idle =
                self.leader_state().progress.get(&to).is_some_and(|p| p.inflight_ticks.is_none());
            if idle {
                self.send_append(to, out);
            }
        }
        Ok(())
    }

    fn maybe_finish_transfer(&mut self, out: &mut Vec<Effect<P>>) {
        let (term, log_end) = (self.hard.term, self.log_end);
        let ls = self.leader_state();
        let Some((to, elapsed, false)) = ls.transfer else { return };
        if ls.progress.get(&to).is_some_and(|p| p.match_end == log_end) {
            ls.transfer = Some((to, elapsed, true));
            out.push(Effect::Send { to, msg: Message::TimeoutNow { term } });
        }
    }

    /// Leader only: starts one replica-set change (add a learner, promote a caught-up learner,
    /// remove a replica). It is in force from the moment it is appended; another may start once
    /// it is committed.
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
        out: &mut Vec<Effect<P>>,
    ) -> Result<Offset, ProposeError> {
        self.check_can_propose()?;
        if self.high_watermark().is_none() {
            // Raft single-server changes need a committed entry of the leader's term first.
            return Err(ProposeError::NotReady);
        }
        if self.memberships.last_change_offset().is_some_and(|o| o >= self.commit) {
            return Err(ProposeError::ChangePending);
        }
        match change {
            MembershipChange::RemoveReplica(n) if n == self.cfg.id => {
                return Err(ProposeError::RemovingLeader)
            }
            MembershipChange::PromoteLearner(n) => {
                let commit = self.commit;
                let caught_up =
                    self.leader_state().progress.get(&n).is_some_and(|p| p.durable_end >= commit);
                if !caught_up {
                    return Err(ProposeError::NotCaughtUp(n));
                }
            }
            _ => {}
        }
        let next = self.membership().apply(change)?;
        self.wake(out);
        let (offset, term) = (self.log_end, self.hard.term);
        self.memberships.push(offset, next.clone());
        self.log_end = offset + 1;
        out.push(Effect::AppendMembership { offset, term, membership: next.clone() });
        let ls = self.leader.as_mut().expect("leader");
        ls.progress.retain(|n, _| next.contains(*n));
        for n in next.others(self.cfg.id) {
            ls.progress.entry(n).or_insert_with(|| Progress::new(offset));
        }
        self.replicate_all(out);
        self.maybe_commit(out);
        Ok(offset)
    }

    /// Leader only: progress of each other replica (for metrics and tests).
    pub fn progress(&self) -> impl Iterator<Item = (NodeId, Progress)> + '_ {
        self.leader.iter().flat_map(|ls| ls.progress.iter().map(|(n, p)| (*n, *p)))
    }

    pub fn transfer_target(&self) -> Option<NodeId> {
        self.leader.as_ref().and_then(|ls| ls.transfer.map(|(n, _, _)| n))
    }
}
