//! The follower side of replication: checking that an `Append` continues our log (log matching
//! through the term history), cutting a divergent uncommitted tail, resetting to the leader's
//! log start when the records we miss were deleted there, and acknowledging only what is both
//! verified to match the leader and durable.

use super::{Replica, Role};
use crate::effect::Effect;
use crate::limits::{APPEND_BATCHES_MAX, OFFSET_MAX, TERM_HISTORY_ENTRIES_MAX};
use crate::message::{AppendOutcome, Dropped, Message};
use crate::types::{BatchMeta, Membership, NodeId, Offset, Plant, Term};

/// The control fields of an inbound `Append`.
pub(super) struct Append {
    pub prev_end: Offset,
    pub prev_term: Term,
    pub commit: Offset,
    pub from_log_start: Option<Membership>,
    /// Echoed in the reply.
    pub seq: u64,
    pub batches: Vec<BatchMeta>,
}

impl Append {
    /// Batches are contiguous from `prev_end`, terms never decrease and never exceed the
    /// leader's, membership batches hold one record and a valid set. Returns the end offset.
    fn validate(&self, leader_term: Term) -> Result<Offset, Dropped> {
        if self.batches.len() > APPEND_BATCHES_MAX {
            return Err(Dropped::TooManyBatches);
        }
        let mut end = self.prev_end;
        let mut term = self.prev_term;
        for b in &self.batches {
            let ok = b.base_offset == end
                && b.last_offset >= b.base_offset
                && b.last_offset < OFFSET_MAX
                && b.term >= term
                && b.term >= 1
                && b.term <= leader_term
                && b.membership
                    .as_ref()
                    .is_none_or(|m| m.is_valid() && b.base_offset == b.last_offset);
            if !ok {
                return Err(Dropped::MalformedBatches);
            }
            end = b.end();
            term = b.term;
        }
        if self.prev_term > leader_term || self.prev_end > OFFSET_MAX {
            return Err(Dropped::MalformedBatches);
        }
        if self.from_log_start.as_ref().is_some_and(|m| !m.is_valid()) {
            return Err(Dropped::MalformedBatches);
        }
        Ok(end)
    }
}

impl<P> Replica<P> {
    /// What we may tell the leader is durable: only the prefix verified to match it.
    pub(super) fn acked_durable_end(&self) -> Offset {
        let durable = if self.cfg.plant == Plant::CountNondurableAsDurable {
            self.log_end
        } else {
            self.durable_end
        };
        durable.min(self.verified_end)
    }

    /// Common to `Append` and `Heartbeat` in our current term: the sender is our leader.
    fn accept_leader(&mut self, from: NodeId) -> Result<(), Dropped> {
        match self.role {
            Role::Leader => return Err(Dropped::ConflictingLeader),
            Role::PreCandidate | Role::Candidate => {
                let term = self.hard.term;
                let mut sink = Vec::new();
                self.become_follower(term, Some(from), &mut sink);
                debug_assert!(sink.is_empty(), "same term: nothing to persist");
            }
            Role::Follower => {}
        }
        if self.leader_id.is_some_and(|l| l != from) {
            return Err(Dropped::ConflictingLeader);
        }
        self.leader_id = Some(from);
        self.election_elapsed = 0;
        self.quiesced = false;
        Ok(())
    }

    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        commit: Offset,
        quiesce: bool,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        self.accept_leader(from)?;
        self.follow_commit(commit, out);
        let holds_all = self.commit == commit
            && self.log_end == commit
            && self.verified_end == commit
            && self.durable_end == commit;
        // We hold everything the leader does: go quiet, and say so (the leader goes quiet once
        // every replica has, so a lost quiesce heartbeat only delays it).
        self.quiesced = quiesce && holds_all;
        let msg = Message::HeartbeatReply {
            term: self.hard.term,
            durable_end: self.acked_durable_end(),
            quiesced: self.quiesced,
        };
        out.push(Effect::Send { to: from, msg });
        Ok(())
    }

    fn follow_commit(&mut self, leader_commit: Offset, out: &mut Vec<Effect<P>>) {
        let commit = leader_commit.min(self.verified_end);
        self.set_commit(commit, out);
    }

    pub(super) fn on_append(
        &mut self,
        from: NodeId,
        append: Append,
        payload: P,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        let end = append.validate(self.hard.term)?;
        // Bounded memory on network input: a message may not start more terms than our history
        // has room for (an honest one starts a handful).
        let terms_new = append.batches.windows(2).filter(|w| w[0].term != w[1].term).count() + 1;
        if self.history.entries().len() + terms_new > TERM_HISTORY_ENTRIES_MAX {
            return Err(Dropped::TooManyTerms);
        }
        self.accept_leader(from)?;
        if !self.prefix_matches(append.prev_end, append.prev_term) {
            match &append.from_log_start {
                Some(floor) if append.prev_end >= self.log_start => {
                    if append.prev_end < self.commit {
                        // Our committed prefix matches every leader's; a reset below it is a
                        // corrupt message, not a leader's request.
                        return Err(Dropped::BelowCommit);
                    }
                    self.reset_log(append.prev_end, append.prev_term, floor.clone(), out)
                }
                _ => {
                    let (hint_term, hint_end) =
                        self.divergence_hint(append.prev_end, append.prev_term);
                    let outcome = AppendOutcome::Mismatch { hint_term, hint_end };
                    out.push(Effect::Send {
                        to: from,
                        msg: Message::AppendReply {
                            term: self.hard.term,
                            seq: append.seq,
                            outcome,
                        },
                    });
                    return Ok(());
                }
            }
        }
        self.append_matching(append.commit, append.batches, payload, out)?;
        self.verified_end = self.verified_end.max(end.min(self.log_end));
        self.follow_commit(append.commit, out);
        let outcome = AppendOutcome::Accepted {
            match_end: self.verified_end,
            durable_end: self.acked_durable_end(),
        };
        out.push(Effect::Send {
            to: from,
            msg: Message::AppendReply { term: self.hard.term, seq: append.seq, outcome },
        });
        Ok(())
    }

    /// Log matching: our record at `prev_end - 1` has the leader's term there (by the term
    /// history), so everything up to `prev_end` is identical to the leader's log.
    fn prefix_matches(&self, prev_end: Offset, prev_term: Term) -> bool {
        prev_end >= self.log_start
            && prev_end <= self.log_end
            && self.history.term_before(prev_end) == prev_term
    }

    /// KRaft's diverging epoch, from the follower side: our largest term `<= prev_term` and
    /// where it ends in our log. Below our log start everything is committed, so we point there.
    fn divergence_hint(&self, prev_end: Offset, prev_term: Term) -> (Term, Offset) {
        if prev_end < self.log_start {
            return (self.history.term_before(self.log_start), self.log_start);
        }
        let (term, end) = self.history.last_term_at_or_below(prev_term, self.log_end);
        (term, end.min(prev_end))
    }

    /// The leader no longer has what we miss and our log does not match where it starts: start
    /// over, empty, at the leader's log start. Everything below it is committed on the leader.
    fn reset_log(
        &mut self,
        log_start: Offset,
        term_before_start: Term,
        floor: Membership,
        out: &mut Vec<Effect<P>>,
    ) {
        assert!(self.commit <= log_start, "reset would drop committed records past {log_start}");
        out.push(Effect::ResetLog { log_start, term_before_start, membership: floor.clone() });
        self.log_start = log_start;
        self.log_end = log_start;
        self.durable_end = log_start;
        self.commit = self.commit.max(log_start);
        self.verified_end = log_start;
        self.history.reset(log_start, term_before_start);
        self.memberships.reset(floor);
    }

    /// Appends what we do not have yet, cutting our log first at the first batch whose term
    /// differs from ours (an uncommitted tail of an old term).
    fn append_matching(
        &mut self,
        leader_commit: Offset,
        batches: Vec<BatchMeta>,
        payload: P,
        out: &mut Vec<Effect<P>>,
    ) -> Result<(), Dropped> {
        let first_new = batches.iter().position(|b| !self.holds(b));
        let Some(first_new) = first_new else { return Ok(()) };
        let cut = batches[first_new].base_offset;
        if cut < self.commit {
            // Committed records are the same in every leader's log: a conflict below our commit
            // point is a corrupt message.
            return Err(Dropped::BelowCommit);
        }
        let mut batches = batches;
        if cut < self.log_end {
            if self.cfg.plant == Plant::SkipTruncation {
                // Planted bug: keep our divergent records and append only past our end.
                let log_end = self.log_end;
                batches.retain(|b| b.base_offset >= log_end);
                if batches.first().map(|b| b.base_offset) != Some(log_end) {
                    return Ok(());
                }
            } else {
                self.truncate(cut, out);
                batches.drain(..first_new);
            }
        } else {
            batches.drain(..first_new);
        }
        let first_offset = batches[0].base_offset;
        assert_eq!(first_offset, self.log_end, "append must continue the log");
        for b in &batches {
            if self.history.append(b.term, b.base_offset) {
                out.push(Effect::PersistTermStart { term: b.term, start_offset: b.base_offset });
            }
            if let Some(m) = &b.membership {
                // Sets older than the leader's commit point can no longer come back: a
                // follower catching up through many changes keeps only the newest ones.
                self.memberships.compact(leader_commit.min(b.base_offset).max(self.commit));
                self.memberships.push(b.base_offset, m.clone());
            }
            self.log_end = b.end();
        }
        out.push(Effect::AppendToLog { first_offset, batches, payload });
        Ok(())
    }

    /// Whether our log already holds batch `b` (same term at its last offset means the same
    /// batch, by log matching).
    fn holds(&self, b: &BatchMeta) -> bool {
        b.last_offset < self.log_end
            && b.base_offset >= self.log_start
            && self.history.term_at(b.last_offset) == b.term
    }

    fn truncate(&mut self, to_offset: Offset, out: &mut Vec<Effect<P>>) {
        assert!(
            to_offset >= self.commit,
            "truncating committed records: {to_offset} < {}",
            self.commit
        );
        assert!(to_offset >= self.log_start && to_offset < self.log_end);
        out.push(Effect::Truncate { to_offset });
        self.log_end = to_offset;
        self.durable_end = self.durable_end.min(to_offset);
        self.verified_end = self.verified_end.min(to_offset);
        self.history.truncate(to_offset);
        self.memberships.truncate(to_offset);
    }
}
