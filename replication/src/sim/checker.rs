//! The simulator's safety checkers, run after every step. Each keeps just enough state to check
//! incrementally (no whole-log comparisons per step):
//! - one leader per term;
//! - log matching: a record at `(offset, term)` is the same on every replica and is preceded by
//!   the same record (so, inductively, the logs are identical up to there);
//! - the committed log never changes: every replica's commit point extends one global committed
//!   log, and every new leader holds all of it (from its log start);
//! - every write acknowledged to a client is in every later leader's log at its offset;
//! - the high watermark a client sees never goes backwards (clients fence by term, like Kafka
//!   clients fence by leader epoch);
//! - (in `Sim::check_durable_majority`, which needs every disk) everything below a leader's
//!   commit point is durable by the flush policy on a majority of its voters.

use std::collections::BTreeMap;

use super::disk::SimDisk;
use crate::types::{NodeId, Offset, Term};

/// Identity of a record: its term and client write id.
pub type RecordKey = (Term, u64);

#[derive(Default)]
pub struct Checker {
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// `(offset, term)` → (record id, the record before it if known).
    seen: BTreeMap<(Offset, Term), (u64, Option<RecordKey>)>,
    /// The committed log, from offset 0.
    committed: Vec<RecordKey>,
    /// Per node: the commit point already checked against `committed`.
    checked_commit: BTreeMap<NodeId, Offset>,
    /// Writes acknowledged to clients: offset → record.
    acked: BTreeMap<Offset, RecordKey>,
    /// Highest `(term, high watermark)` a client saw.
    client_seen: (Term, Offset),
}

pub type Violation = String;

impl Checker {
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    pub fn on_leader(&mut self, node: NodeId, term: Term, disk: &SimDisk) -> Result<(), Violation> {
        if let Some(&other) = self.leaders_by_term.get(&term) {
            if other != node {
                return Err(format!("two leaders in term {term}: {other} and {node}"));
            }
        }
        self.leaders_by_term.insert(term, node);
        for (o, want) in self.committed.iter().enumerate() {
            let o = o as Offset;
            if o < disk.log_start {
                continue;
            }
            match disk.get(o) {
                Some(r) if (r.term, r.id) == *want => {}
                got => {
                    let got = got.map(|r| (r.term, r.id));
                    return Err(format!(
                        "new leader {node} (term {term}) lacks committed offset {o}: has {got:?}, committed {want:?}"
                    ));
                }
            }
        }
        for (&o, want) in self.acked.range(disk.log_start..) {
            let got = disk.get(o).map(|r| (r.term, r.id));
            if got != Some(*want) {
                return Err(format!(
                    "new leader {node} (term {term}) lost acknowledged write at {o}: has {got:?}, acked {want:?}"
                ));
            }
        }
        Ok(())
    }

    /// A record was appended at `offset` on `node`.
    pub fn on_append(
        &mut self,
        node: NodeId,
        offset: Offset,
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        let r = disk.get(offset).expect("just appended");
        let pred = if offset > disk.log_start {
            disk.get(offset - 1).map(|p| (p.term, p.id))
        } else {
            None
        };
        match self.seen.get_mut(&(offset, r.term)) {
            None => {
                self.seen.insert((offset, r.term), (r.id, pred));
            }
            Some((id, known_pred)) => {
                if *id != r.id {
                    return Err(format!(
                        "log matching: node {node} has id {} at ({offset}, term {}), another replica has id {id}",
                        r.id, r.term
                    ));
                }
                match (*known_pred, pred) {
                    (Some(a), Some(b)) if a != b => {
                        return Err(format!(
                            "log matching: node {node} at ({offset}, term {}) follows {b:?}, another replica follows {a:?}",
                            r.term
                        ));
                    }
                    (None, Some(b)) => *known_pred = Some(b),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The node's commit point is `commit`: the records below it extend the committed log.
    pub fn on_commit(
        &mut self,
        node: NodeId,
        commit: Offset,
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        let from = *self.checked_commit.get(&node).unwrap_or(&0);
        if commit <= from {
            self.checked_commit.insert(node, commit);
            return Ok(());
        }
        for o in from.max(disk.log_start)..commit {
            let Some(r) = disk.get(o) else {
                // Committed but not here: a follower may know a commit point past its log.
                break;
            };
            let key = (r.term, r.id);
            let i = o as usize;
            if i < self.committed.len() {
                if self.committed[i] != key {
                    return Err(format!(
                        "committed offset {o} changed on node {node}: {key:?}, was {:?}",
                        self.committed[i]
                    ));
                }
            } else if i == self.committed.len() {
                self.committed.push(key);
            } else {
                return Err(format!(
                    "node {node} commits {o} past the known committed end {}",
                    self.committed.len()
                ));
            }
        }
        self.checked_commit.insert(node, commit);
        Ok(())
    }

    pub fn restarted(&mut self, node: NodeId, commit: Offset) {
        let c = self.checked_commit.entry(node).or_insert(0);
        *c = (*c).min(commit);
    }

    pub fn on_ack(&mut self, offset: Offset, key: RecordKey) -> Result<(), Violation> {
        if let Some(prev) = self.acked.insert(offset, key) {
            if prev != key {
                return Err(format!("offset {offset} acknowledged twice: {prev:?} then {key:?}"));
            }
        }
        match self.committed.get(offset as usize) {
            Some(c) if *c == key => Ok(()),
            c => Err(format!("acknowledged {key:?} at {offset} but committed log has {c:?}")),
        }
    }

    /// A client read high watermark `hw` from a leader of `term`. Answers from older terms are
    /// refused by the client (fencing), so they are not checked.
    pub fn on_client_read(&mut self, term: Term, hw: Offset) -> Result<(), Violation> {
        if term < self.client_seen.0 {
            return Ok(());
        }
        if hw < self.client_seen.1 {
            return Err(format!(
                "high watermark went back: {hw} (term {term}) after {:?}",
                self.client_seen
            ));
        }
        self.client_seen = (term, hw);
        Ok(())
    }
}
