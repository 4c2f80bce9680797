//! The simulated driver: carries out a core's effects on the simulated disk and network, the
//! way the broker's driver will on the real log and QUIC, and runs the checkers after each step.

use rand::Rng;

use super::checker::Violation;
use super::disk::SimRecord;
use super::{
    Datagram, Sim, SimPayload, APPEND_RECORDS_MAX, ELECTION_TICKS_MAX, ELECTION_TICKS_MIN,
    HEARTBEAT_TICKS, KEEPALIVE_TICKS, PEER_DOWN_TICKS,
};
use crate::effect::Effect;
use crate::message::Message;
use crate::replica::{Config, Event, Replica, Restored};
use crate::types::{BatchMeta, GroupId, NodeId, Offset};

impl Sim {
    /// Feeds one event to a node's core and carries out its effects, then checks.
    pub(super) fn step(&mut self, id: NodeId, event: Event<SimPayload>) -> Result<(), Violation> {
        let mut out = std::mem::take(&mut self.scratch);
        let n = self.node(id);
        let core = n.core.as_mut().expect("step on a live node");
        let dropped = core.step(event, &mut out);
        if let Err(reason) = dropped {
            if self.tracing {
                self.note(format!("n{id} dropped: {reason}"));
            }
        }
        let result = self.apply(id, &mut out);
        out.clear();
        self.scratch = out;
        result?;
        self.check_node(id)
    }

    pub(super) fn apply(
        &mut self,
        id: NodeId,
        out: &mut Vec<Effect<SimPayload>>,
    ) -> Result<(), Violation> {
        for effect in out.drain(..) {
            self.apply_one(id, effect)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, id: NodeId, effect: Effect<SimPayload>) -> Result<(), Violation> {
        let now = self.now;
        match effect {
            Effect::PersistHardState(h) => self.node(id).disk.hard_state = h,
            Effect::PersistTermStart { term, start_offset } => {
                self.node(id).disk.history.push(crate::history::TermStart { term, start_offset })
            }
            Effect::Send { to, msg } => {
                self.check_persisted_before_send(id, to, &msg)?;
                self.net.send(now, id, to, Datagram::Group(msg), &mut self.rng);
            }
            Effect::SendAppend(request) => {
                let (batches, payload) = if request.probe {
                    (Vec::new(), SimPayload { start: request.prev_end, records: Vec::new() })
                } else {
                    self.read_batches(id, request.prev_end)
                };
                let msg = request.message(batches, payload);
                let to = request.to;
                self.net.send(now, id, to, Datagram::Group(msg), &mut self.rng);
            }
            Effect::Truncate { to_offset } => {
                self.note(format!("n{id} truncate to {to_offset}"));
                self.truncations += 1;
                let n = self.node(id);
                n.disk.truncate(to_offset);
                n.reported_durable = n.reported_durable.min(to_offset);
            }
            Effect::ResetLog { log_start, term_before_start, membership } => {
                self.note(format!("n{id} reset log to start at {log_start}"));
                self.resets += 1;
                let n = self.node(id);
                n.disk.reset(log_start, term_before_start, membership);
                n.reported_durable = log_start;
            }
            Effect::AppendToLog { first_offset, batches, payload } => {
                let end = batches.last().map_or(first_offset, BatchMeta::end);
                for r in payload.records.into_iter().skip((first_offset - payload.start) as usize) {
                    let offset = self.node(id).disk.log_end();
                    if offset >= end {
                        break;
                    }
                    self.append_record(id, r)?;
                }
                assert_eq!(self.node(id).disk.log_end(), end, "payload covers the batches");
            }
            Effect::AppendLeaderMarker { offset, term } => {
                assert_eq!(self.node(id).disk.log_end(), offset);
                self.append_record(
                    id,
                    SimRecord { term, id: 0, batch_base: offset, membership: None },
                )?;
            }
            Effect::AppendMembership { offset, term, membership } => {
                assert_eq!(self.node(id).disk.log_end(), offset);
                let r = SimRecord { term, id: 0, batch_base: offset, membership: Some(membership) };
                self.append_record(id, r)?;
            }
            Effect::CommitAdvanced { commit } => {
                if self.rng.gen_bool(0.3) {
                    self.node(id).disk.commit = commit; // Persisted lazily.
                }
            }
            Effect::BecameLeader { term } => {
                self.note(format!("n{id} became leader of term {term}"));
                self.elections += 1;
                let n = &self.nodes[(id - 1) as usize];
                self.checker.on_leader(id, term, &n.disk)?;
            }
            Effect::SteppedDown { term, leader } => {
                self.note(format!("n{id} stepped down in term {term} (leader {leader:?})"));
            }
        }
        Ok(())
    }

    /// The effect order promises that votes and terms are on disk before the messages that
    /// depend on them leave: a vote request or grant names exactly the persisted hard state.
    fn check_persisted_before_send(
        &self,
        id: NodeId,
        to: NodeId,
        msg: &Message<SimPayload>,
    ) -> Result<(), Violation> {
        let hard = self.nodes[(id - 1) as usize].disk.hard_state;
        let ok = match msg {
            Message::Vote { term, .. } => hard.term == *term && hard.voted_for == Some(id),
            Message::VoteReply { term, granted: true } => {
                hard.term == *term && hard.voted_for == Some(to)
            }
            _ => {
                hard.term >= msg.term()
                    || matches!(msg, Message::PreVote { .. } | Message::PreVoteReply { .. })
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "n{id} sends {} to n{to} before persisting its hard state {hard:?}",
                msg.kind()
            ))
        }
    }

    pub(super) fn append_record(&mut self, id: NodeId, r: SimRecord) -> Result<(), Violation> {
        let n = &mut self.nodes[(id - 1) as usize];
        let offset = n.disk.log_end();
        // The term history is persisted before the first batch of its term.
        let named = n.disk.history.iter().rev().find(|e| e.start_offset <= offset).map(|e| e.term);
        if named != Some(r.term) {
            return Err(format!(
                "n{id} writes a term-{} record at {offset} but its persisted history names {named:?}",
                r.term
            ));
        }
        n.disk.push(r);
        self.checker.on_append(id, offset, &n.disk)
    }

    /// The driver's read for `SendAppend`: whole batches from `from`, up to a budget.
    fn read_batches(&mut self, id: NodeId, from: Offset) -> (Vec<BatchMeta>, SimPayload) {
        let disk = &self.nodes[(id - 1) as usize].disk;
        assert!(
            from >= disk.log_start && from <= disk.log_end(),
            "core asked for records we do not have"
        );
        let mut batches: Vec<BatchMeta> = Vec::new();
        let mut records = Vec::new();
        let mut o = from;
        while let Some(r) = disk.get(o) {
            let new_batch = batches.last().is_none_or(|b| b.base_offset != r.batch_base);
            if new_batch {
                if records.len() >= APPEND_RECORDS_MAX {
                    break;
                }
                batches.push(BatchMeta {
                    base_offset: o,
                    last_offset: o,
                    term: r.term,
                    membership: r.membership.clone(),
                });
            }
            batches.last_mut().expect("pushed").last_offset = o;
            records.push(r.clone());
            o += 1;
        }
        (batches, SimPayload { start: from, records })
    }

    pub(super) fn check_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = &self.nodes[(id - 1) as usize];
        let Some(core) = &n.core else { return Ok(()) };
        assert_eq!(core.log_end(), n.disk.log_end(), "core and disk agree on the log end");
        let commit = core.commit();
        self.checker.on_commit(id, commit, &n.disk)?;
        if let Some(hw) = core.high_watermark() {
            let term = core.term();
            self.checker.on_client_read(term, hw)?;
        }
        let leading = core.is_leader().then(|| (core.term(), commit));
        if let Some((term, commit)) = leading {
            // Only a commit point this leader moved in this term: the one it was elected with
            // was decided earlier, maybe under another replica set.
            let known = self.leader_commits.insert(id, (term, commit));
            if known.is_some_and(|(t, c)| t == term && c < commit) {
                self.check_durable_majority(id)?;
            }
        }
        Ok(())
    }

    /// When a leader moves its commit point, everything below it is durable, by the flush
    /// policy, on a majority of its voters (retention counts as held: it deletes only committed
    /// records). Checked when the commit point moves, not later: after a truncation reverts a
    /// membership change, the holders may be a majority of the newer set only, which is safe
    /// (Raft single-server changes: majorities of the two sets overlap).
    fn check_durable_majority(&self, leader: NodeId) -> Result<(), Violation> {
        let l = &self.nodes[(leader - 1) as usize];
        let core = l.core.as_ref().expect("leader is up");
        let commit = core.commit();
        if commit == 0 || commit <= l.disk.log_start {
            return Ok(());
        }
        let last = l.disk.get(commit - 1).map(|r| (r.term, r.id));
        let members = core.current_membership();
        let holding = members
            .voters
            .iter()
            .filter(|&&v| {
                let d = &self.nodes[(v - 1) as usize].disk;
                let same =
                    commit - 1 < d.log_start || d.get(commit - 1).map(|r| (r.term, r.id)) == last;
                same && d.durable_end() >= commit
            })
            .count();
        if holding < members.quorum() {
            return Err(format!(
                "leader n{leader} commits {commit} but only {holding} of voters {:?} hold it durably",
                members.voters
            ));
        }
        Ok(())
    }

    /// Any datagram from `from` proves its node is up.
    pub(super) fn heard(&mut self, id: NodeId, from: NodeId) {
        let now = self.now;
        let n = self.node(id);
        n.last_heard.insert(from, now);
        n.suspected.remove(&from);
    }

    /// The driver's node-level liveness: keepalives out, and `PeerDown` for peers silent for
    /// `PEER_DOWN_TICKS` (reported once until heard from again).
    pub(super) fn failure_detector(&mut self, id: NodeId) -> Result<(), Violation> {
        let now = self.now;
        let peers: Vec<NodeId> =
            self.nodes.iter().filter(|n| n.joined && n.id != id).map(|n| n.id).collect();
        if now.is_multiple_of(KEEPALIVE_TICKS) {
            for &peer in &peers {
                self.net.send(now, id, peer, Datagram::Keepalive, &mut self.rng);
            }
        }
        for peer in peers {
            let n = self.node(id);
            let last = *n.last_heard.entry(peer).or_insert(now);
            if now - last >= PEER_DOWN_TICKS && n.suspected.insert(peer) {
                self.note(format!("n{id} suspects n{peer}"));
                self.step(id, Event::PeerDown { node: peer })?;
            }
        }
        Ok(())
    }

    pub(super) fn background_io(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = &mut self.nodes[(id - 1) as usize];
        n.disk.background_io(&mut self.rng, self.rates.write, self.rates.sync);
        let durable = n.disk.durable_end();
        if durable > n.reported_durable {
            n.reported_durable = durable;
            return self.step(id, Event::LogDurable { end: durable });
        }
        Ok(())
    }

    /// Starts (or restarts) a node's core from what its disk holds.
    pub(super) fn start_node(&mut self, id: NodeId) {
        let seed = self.seed;
        let plant = self.opts.plant;
        let n = self.node(id);
        n.last_heard.clear();
        n.suspected.clear();
        let restored = Restored {
            hard_state: n.disk.hard_state,
            history: n.disk.history.clone(),
            memberships: n.disk.memberships(),
            log_start: n.disk.log_start,
            log_end: n.disk.log_end(),
            commit: n.disk.commit,
        };
        let mut cfg = Config::new(id, GroupId(1), seed ^ (u64::from(id) << 32) ^ n.restarts);
        cfg.election_ticks_min = ELECTION_TICKS_MIN;
        cfg.election_ticks_max = ELECTION_TICKS_MAX;
        cfg.heartbeat_ticks = HEARTBEAT_TICKS;
        cfg.plant = plant;
        let core = Replica::new(cfg, restored);
        n.reported_durable = core.durable_end();
        let commit = core.commit();
        n.core = Some(core);
        self.checker.restarted(id, commit);
    }
}
