//! Terms, election timeouts, pre-vote and vote.
//!
//! Pre-vote: a replica whose election timeout fires first asks the voters whether they would
//! vote for it in `term + 1`, without changing anyone's term. Voters that heard from a leader
//! within the minimum election timeout say no, so a replica that was cut off (and is behind in
//! nothing but patience) cannot depose a healthy leader when it comes back.

use super::{Replica, Role};
use crate::effect::Effect;
use crate::message::{Dropped, Message};
use crate::types::{NodeId, Offset, Plant, Term};

impl<P> Replica<P> {
    /// Adopts a higher term seen in `msg`, answers a stale one. Returns whether to go on
    /// handling the message.
    pub(super) fn observe_term(
        &mut self,
        from: NodeId,
        msg: &Message<P>,
        out: &mut Vec<Effect<P>>,
    ) -> Result<bool, Dropped> {
        let term = msg.term();
        let ours = self.hard.term;
        match msg {
            // A pre-vote names the term the candidate would use; it changes nobody's term.
            Message::PreVote { .. } => return Ok(true),
            // A granted pre-vote echoes the proposed term; a refusal carries the voter's term.
            Message::PreVoteReply { granted: true, .. } => return Ok(true),
            _ => {}
        }
        if term > ours {
            let leader = match msg {
                Message::Append { .. } | Message::Heartbeat { .. } | Message::TimeoutNow { .. } => {
                    Some(from)
                }
                _ => None,
            };
            self.become_follower(term, leader, out);
            return Ok(true);
        }
        if term < ours {
            self.answer_stale(from, msg, out);
            return Err(Dropped::StaleTerm { msg: term, ours });
        }
        Ok(true)
    }

    /// Tells a sender with an old term about ours, so an old leader or candidate steps down.
    fn answer_stale(&self, from: NodeId, msg: &Message<P>, out: &mut Vec<Effect<P>>) {
        let term = self.hard.term;
        let reply = match msg {
            Message::Append { .. } | Message::Heartbeat { .. } => {
                Message::HeartbeatReply { term, durable_end: 0, quiesced: false }
            }
            Message::Vote { .. } => Message::VoteReply { term, granted: false },
            _ => return,
        };
        out.push(Effect::Send { to: from, msg: reply });
    }

    pub(super) fn become_follower(
        &mut self,
        term: Term,
        leader: Option<NodeId>,
        out: &mut Vec<Effect<P>>,
    ) {
        assert!(term >= self.hard.term);
        let was_leader = self.role == Role::Leader;
        if term > self.hard.term {
            self.hard.term = term;
            self.hard.voted_for = None;
            self.verified_end = 0;
            self.persist_hard_state(out);
        }
        self.role = Role::Follower;
        self.leader = None;
        self.quiesced = false;
        self.leader_id = leader;
        self.votes.clear();
        self.election_elapsed = 0;
        self.election_timeout = self.random_election_timeout();
        if was_leader {
            out.push(Effect::SteppedDown { term, leader });
        }
    }

    /// The driver's failure detector lost `node`. A follower of it wakes and, its timer
    /// already past the minimum, grants pre-votes and campaigns at its next timeout.
    pub(super) fn peer_down(&mut self, node: NodeId) {
        if self.role != Role::Leader && self.leader_id == Some(node) {
            self.quiesced = false;
            self.election_elapsed = self.election_elapsed.max(self.cfg.election_ticks_min);
        }
    }

    pub(super) fn tick_election(&mut self, out: &mut Vec<Effect<P>>) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed < self.election_timeout {
            return;
        }
        if !self.membership().is_voter(self.cfg.id) {
            // Learners and removed replicas never campaign; they wait for a leader. The timer
            // keeps running: a learner may be a voter in the leader's newer set and must grant
            // pre-votes once the leader is gone. Once per timeout it asks the voters (a
            // pre-vote it will not act on): a live but quiesced leader wakes and answers.
            if self.election_elapsed.is_multiple_of(self.election_timeout) {
                let (term, last_term, log_end) =
                    (self.hard.term + 1, self.last_term(), self.log_end);
                self.send_to_voters(|| Message::PreVote { term, last_term, log_end }, out);
            }
            return;
        }
        if self.cfg.plant == Plant::NoPrevote {
            self.start_election(false, out);
        } else {
            self.start_prevote(out);
        }
    }

    fn start_prevote(&mut self, out: &mut Vec<Effect<P>>) {
        self.role = Role::PreCandidate;
        self.leader_id = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id);
        self.election_elapsed = 0;
        self.election_timeout = self.random_election_timeout();
        if self.votes.len() >= self.membership().quorum() {
            self.start_election(false, out);
            return;
        }
        let (term, last_term, log_end) = (self.hard.term + 1, self.last_term(), self.log_end);
        self.send_to_voters(|| Message::PreVote { term, last_term, log_end }, out);
    }

    pub(super) fn start_election(&mut self, transfer: bool, out: &mut Vec<Effect<P>>) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        assert!(self.membership().is_voter(self.cfg.id), "only voters campaign");
        self.hard.term += 1;
        self.hard.voted_for = Some(self.cfg.id);
        let persist_late = self.cfg.plant == Plant::VoteBeforePersist;
        if !persist_late {
            self.persist_hard_state(out);
        }
        self.role = Role::Candidate;
        self.leader_id = None;
        self.verified_end = 0;
        self.votes.clear();
        self.votes.insert(self.cfg.id);
        self.election_elapsed = 0;
        self.election_timeout = self.random_election_timeout();
        if self.votes.len() >= self.membership().quorum() {
            if persist_late {
                self.persist_hard_state(out);
            }
            self.become_leader(out);
            return;
        }
        let (term, last_term, log_end) = (self.hard.term, self.last_term(), self.log_end);
        self.send_to_voters(|| Message::Vote { term, last_term, log_end, transfer }, out);
        if persist_late {
            // The planted bug: the vote requests are out before our own vote is on disk.
            self.persist_hard_state(out);
        }
    }

    fn send_to_voters(&self, msg: impl Fn() -> Message<P>, out: &mut Vec<Effect<P>>) {
        for to in self.membership().voters.iter().copied().filter(|&n| n != self.cfg.id) {
            out.push(Effect::Send { to, msg: msg() });
        }
    }

    /// Raft §5.4.1: a candidate's log must be at least as up to date as the voter's.
    fn log_up_to_date(&self, last_term: Term, log_end: Offset) -> bool {
        (last_term, log_end) >= (self.last_term(), self.log_end)
    }

    pub(super) fn on_prevote(
        &mut self,
        from: NodeId,
        term: Term,
        last_term: Term,
        log_end: Offset,
        out: &mut Vec<Effect<P>>,
    ) {
        if self.role == Role::Leader && self.membership().contains(from) {
            // A replica of ours wants a new leader: it lost us (a heartbeat, or its failure
            // detector gave up on our node). Wake up so it hears from us again.
            self.wake(out);
        }
        if self.role != Role::Leader && self.leader_id == Some(from) {
            // Our leader campaigns: it restarted and leads no more (a quiesced follower would
            // otherwise refuse it forever, its node being alive).
            self.leader_id = None;
            self.quiesced = false;
        }
        let leader_alive = self.role == Role::Leader
            || (self.leader_id.is_some() && self.election_elapsed < self.cfg.election_ticks_min);
        let granted =
            term > self.hard.term && !leader_alive && self.log_up_to_date(last_term, log_end);
        let reply_term = if granted { term } else { self.hard.term };
        out.push(Effect::Send {
            to: from,
            msg: Message::PreVoteReply { term: reply_term, granted },
        });
    }

    pub(super) fn on_prevote_reply(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if self.role != Role::PreCandidate || !granted || term != self.hard.term + 1 {
            return Err(Dropped::UnexpectedForRole);
        }
        if !self.membership().is_voter(from) {
            return Err(Dropped::UnknownSender(from));
        }
        self.votes.insert(from);
        if self.votes.len() >= self.membership().quorum() {
            self.start_election(false, out);
        }
        Ok(())
    }

    pub(super) fn on_vote(
        &mut self,
        from: NodeId,
        term: Term,
        last_term: Term,
        log_end: Offset,
        out: &mut Vec<Effect<P>>,
    ) {
        debug_assert_eq!(term, self.hard.term, "observe_term adopted the term");
        let free = match self.hard.voted_for {
            None => true,
            // The planted bug: a voter that voted for another candidate votes again.
            Some(v) => {
                v == from || (self.cfg.plant == Plant::GrantTwoVotesInATerm && v != self.cfg.id)
            }
        };
        let granted = free && self.role != Role::Leader && self.log_up_to_date(last_term, log_end);
        if granted {
            assert!(
                self.hard.voted_for.is_none_or(|v| v == from)
                    || self.cfg.plant == Plant::GrantTwoVotesInATerm
            );
            self.hard.voted_for = Some(from);
            self.persist_hard_state(out);
            // Granting a vote counts as hearing from a would-be leader: do not compete with it.
            self.election_elapsed = 0;
        }
        out.push(Effect::Send {
            to: from,
            msg: Message::VoteReply { term: self.hard.term, granted },
        });
    }

    pub(super) fn on_vote_reply(
        &mut self,
        from: NodeId,
        granted: bool,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if self.role != Role::Candidate {
            return Err(Dropped::UnexpectedForRole);
        }
        if !self.membership().is_voter(from) {
            return Err(Dropped::UnknownSender(from));
        }
        if granted {
            self.votes.insert(from);
            if self.votes.len() >= self.membership().quorum() {
                self.become_leader(out);
            }
        }
        Ok(())
    }

    pub(super) fn on_timeout_now(
        &mut self,
        from: NodeId,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        if self.leader_id != Some(from) || self.role != Role::Follower {
            return Err(Dropped::UnexpectedForRole);
        }
        if !self.membership().is_voter(self.cfg.id) {
            return Err(Dropped::UnexpectedForRole);
        }
        self.start_election(true, out);
        Ok(())
    }
}
