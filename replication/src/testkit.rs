//! A tiny in-memory driver for one group: logs are vectors of batch metadata, the network is a
//! FIFO queue with cuttable links, durability is immediate unless turned off per node. Used by
//! the hand-driven unit tests and the benches; the fault-injecting driver is [`crate::sim`].

use std::collections::{BTreeSet, VecDeque};

use crate::effect::{AppendRequest, Effect};
use crate::message::{Dropped, Message};
use crate::outbox::Outbox;
use crate::replica::{Config, Event, ProposeError, Replica, Restored, Role};
use crate::types::{BatchMeta, GroupId, HardState, Membership, MembershipChange, NodeId, Offset};

/// Payload of an in-memory `Append`: the batch metadata is all there is.
pub type MemPayload = ();

pub struct MemNode {
    pub id: NodeId,
    pub core: Replica<MemPayload>,
    /// The log, as batches; `log_start` is the first offset still held.
    pub batches: Vec<BatchMeta>,
    pub log_start: Offset,
    pub hard_state: HardState,
    /// Report appends as durable at once.
    pub auto_durable: bool,
    pub up: bool,
    /// Every effect this node produced, for assertions.
    pub effects: Vec<Effect<MemPayload>>,
    pub dropped: Vec<Dropped>,
}

impl MemNode {
    pub fn log_end(&self) -> Offset {
        self.batches.last().map_or(self.log_start, BatchMeta::end)
    }

    /// Terms of the records, one per offset from `log_start`.
    pub fn record_terms(&self) -> Vec<u64> {
        self.batches
            .iter()
            .flat_map(|b| (b.base_offset..=b.last_offset).map(move |_| b.term))
            .collect()
    }
}

pub struct MemCluster {
    pub nodes: Vec<MemNode>,
    queue: VecDeque<(NodeId, NodeId, Message<MemPayload>)>,
    cut: BTreeSet<(NodeId, NodeId)>,
    pub delivered: u64,
    scratch: Vec<Effect<MemPayload>>,
    /// Keep every effect in `MemNode::effects` (tests); off for benches.
    pub record_effects: bool,
}

impl MemCluster {
    pub fn new(replicas: u32) -> Self {
        let ids: Vec<NodeId> = (1..=replicas).collect();
        let mut c = MemCluster {
            nodes: Vec::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: 0,
            scratch: Vec::new(),
            record_effects: true,
        };
        for &id in &ids {
            c.add_node(id, Restored::bootstrap(&ids));
        }
        c
    }

    /// Adds a node with an empty log (a new replica joins with the set that names it).
    pub fn add_node(&mut self, id: NodeId, restored: Restored) {
        assert_eq!(id as usize, self.nodes.len() + 1, "ids are 1..=n");
        let core = Replica::new(Config::new(id, GroupId(7), u64::from(id) * 7919), restored);
        self.nodes.push(MemNode {
            id,
            core,
            batches: Vec::new(),
            log_start: 0,
            hard_state: HardState::default(),
            auto_durable: true,
            up: true,
            effects: Vec::new(),
            dropped: Vec::new(),
        });
    }

    pub fn node(&self, id: NodeId) -> &MemNode {
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut MemNode {
        &mut self.nodes[(id - 1) as usize]
    }

    pub fn leader(&self) -> Option<NodeId> {
        let top = self
            .nodes
            .iter()
            .filter(|n| n.up && n.core.role() == Role::Leader)
            .max_by_key(|n| n.core.term())?;
        Some(top.id)
    }

    /// Cuts `id` off; the failure detectors on both sides notice (`Event::PeerDown`).
    pub fn isolate(&mut self, id: NodeId) {
        for n in 1..=self.nodes.len() as NodeId {
            if n != id {
                self.cut.insert((id, n));
                self.cut.insert((n, id));
                self.step(n, Event::PeerDown { node: id });
                self.step(id, Event::PeerDown { node: n });
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn step(&mut self, id: NodeId, event: Event<MemPayload>) {
        if id == 0 || id as usize > self.nodes.len() {
            return; // No such node (yet): the message is lost.
        }
        let mut out = std::mem::take(&mut self.scratch);
        let n = self.node_mut(id);
        if !n.up {
            self.scratch = out;
            return;
        }
        if let Err(d) = n.core.step(event, &mut out) {
            n.dropped.push(d);
        }
        self.apply(id, &mut out);
        self.scratch = out;
    }

    fn apply(&mut self, id: NodeId, out: &mut Vec<Effect<MemPayload>>) {
        for effect in out.drain(..) {
            if self.record_effects {
                self.node_mut(id).effects.push(effect.clone());
            }
            self.apply_one(id, effect);
        }
        let n = self.node_mut(id);
        if n.auto_durable && n.core.durable_end() < n.log_end() {
            let end = n.log_end();
            self.step(id, Event::LogDurable { end });
        }
    }

    fn apply_one(&mut self, id: NodeId, effect: Effect<MemPayload>) {
        let n = self.node_mut(id);
        match effect {
            Effect::PersistHardState(h) => n.hard_state = h,
            Effect::Send { to, msg } => {
                if !self.cut.contains(&(id, to)) {
                    self.queue.push_back((id, to, msg));
                }
            }
            Effect::SendAppend(request) => {
                let (to, msg) = append_message(&request, &n.batches);
                if !self.cut.contains(&(id, to)) {
                    self.queue.push_back((id, to, msg));
                }
            }
            Effect::Truncate { to_offset } => truncate(&mut n.batches, to_offset),
            Effect::ResetLog { log_start, .. } => {
                n.batches.clear();
                n.log_start = log_start;
            }
            Effect::AppendToLog { batches, .. } => n.batches.extend(batches),
            Effect::AppendLeaderMarker { offset, term } => {
                n.batches.push(BatchMeta::data(offset, offset, term))
            }
            Effect::AppendMembership { offset, term, membership } => n.batches.push(BatchMeta {
                base_offset: offset,
                last_offset: offset,
                term,
                membership: Some(membership),
            }),
            Effect::PersistTermStart { .. }
            | Effect::CommitAdvanced { .. }
            | Effect::BecameLeader { .. }
            | Effect::SteppedDown { .. } => {}
        }
    }

    /// Delivers queued messages until none are left (bounded).
    pub fn deliver_all(&mut self) {
        for _ in 0..1_000_000 {
            let Some((from, to, msg)) = self.queue.pop_front() else { return };
            if self.cut.contains(&(from, to)) {
                continue;
            }
            self.delivered += 1;
            self.step(to, Event::Message { from, msg });
        }
        panic!("messages never stop");
    }

    /// One tick on every node, then deliver everything.
    pub fn tick(&mut self) {
        for id in 1..=self.nodes.len() as NodeId {
            self.step(id, Event::Tick);
        }
        self.deliver_all();
    }

    /// Ticks until `done` holds; panics after `ticks_max`.
    pub fn run_until(&mut self, ticks_max: u32, mut done: impl FnMut(&MemCluster) -> bool) {
        for _ in 0..ticks_max {
            if done(self) {
                return;
            }
            self.tick();
        }
        assert!(done(self), "condition not reached in {ticks_max} ticks");
    }

    /// Ticks until some node leads and its marker is committed.
    pub fn elect(&mut self) -> NodeId {
        self.run_until(500, |c| {
            c.leader().is_some_and(|l| c.node(l).core.high_watermark().is_some())
        });
        self.leader().expect("elected")
    }

    /// Proposes a batch of `records` on `id` and writes it to its log (what a produce does).
    pub fn propose(&mut self, id: NodeId, records: u64) -> Result<BatchMeta, ProposeError> {
        let mut out = std::mem::take(&mut self.scratch);
        let result = self.node_mut(id).core.propose(records, &mut out);
        if let Ok(meta) = &result {
            self.node_mut(id).batches.push(meta.clone());
        }
        self.apply(id, &mut out);
        self.scratch = out;
        result
    }

    pub fn transfer(&mut self, from: NodeId, to: NodeId) -> Result<(), ProposeError> {
        let mut out = std::mem::take(&mut self.scratch);
        let result = self.node_mut(from).core.transfer_leadership(to, &mut out);
        self.apply(from, &mut out);
        self.scratch = out;
        result
    }

    pub fn change_membership(
        &mut self,
        leader: NodeId,
        change: MembershipChange,
    ) -> Result<Offset, ProposeError> {
        let mut out = std::mem::take(&mut self.scratch);
        let result = self.node_mut(leader).core.propose_membership(change, &mut out);
        self.apply(leader, &mut out);
        self.scratch = out;
        result
    }

    /// Retention on one node: drop whole batches ending at or below `start`.
    pub fn delete_before(&mut self, id: NodeId, start: Offset) {
        let n = self.node_mut(id);
        assert!(n.batches.iter().any(|b| b.base_offset == start), "retention at a batch boundary");
        n.batches.retain(|b| b.base_offset >= start);
        n.log_start = start;
        self.step(id, Event::LogStartAdvanced { start });
    }

    /// Retention everywhere: keep about the last `keep` batches below each node's commit point
    /// (benches run long; the logs must not grow without bound).
    pub fn trim(&mut self, keep: usize) {
        for id in 1..=self.nodes.len() as NodeId {
            let n = self.node(id);
            let committed = n.batches.partition_point(|b| b.end() <= n.core.commit());
            if committed > 2 * keep {
                let start = n.batches[committed - keep].base_offset;
                self.delete_before(id, start);
            }
        }
    }

    /// Crash and restart a node from what it persisted (everything, here: durability is
    /// immediate), keeping its log.
    pub fn restart(&mut self, id: NodeId) {
        let n = self.node_mut(id);
        let mut history = Vec::new();
        let mut last = 0;
        for b in &n.batches {
            if b.term != last {
                history
                    .push(crate::history::TermStart { term: b.term, start_offset: b.base_offset });
                last = b.term;
            }
        }
        let mut memberships = vec![(0, n.core.memberships().entries()[0].1.clone())];
        for b in &n.batches {
            if let Some(m) = &b.membership {
                memberships.push((b.base_offset, m.clone()));
            }
        }
        let restored = Restored {
            hard_state: n.hard_state,
            history,
            memberships,
            log_start: n.log_start,
            log_end: n.log_end(),
            commit: n.core.commit(),
        };
        n.core = Replica::new(Config::new(id, GroupId(7), u64::from(id) * 104_729), restored);
    }

    /// All up nodes hold the same log and commit point, and follow one leader.
    pub fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let leader = self.node(l);
        self.nodes.iter().filter(|n| n.up).all(|n| {
            n.log_end() == leader.log_end()
                && n.core.commit() == leader.log_end()
                && n.core.leader() == Some(l)
                && n.record_terms()
                    .iter()
                    .rev()
                    .zip(leader.record_terms().iter().rev())
                    .all(|(a, b)| a == b)
        })
    }

    pub fn bootstrap_membership(&self) -> Membership {
        self.node(1).core.memberships().entries()[0].1.clone()
    }
}

/// Whole batches from `from` on (the log is sorted by offset).
/// The `Append` a `SendAppend` asks for, read from `batches` (none for a probe), and its
/// destination.
fn append_message(request: &AppendRequest, batches: &[BatchMeta]) -> (NodeId, Message<()>) {
    let carried = if request.probe { Vec::new() } else { batches_from(batches, request.prev_end) };
    (request.to, request.message(carried, ()))
}

fn batches_from(batches: &[BatchMeta], from: Offset) -> Vec<BatchMeta> {
    let i = batches.partition_point(|b| b.base_offset < from);
    batches[i..].to_vec()
}

fn truncate(batches: &mut Vec<BatchMeta>, to: Offset) {
    let keep = batches.partition_point(|b| b.base_offset < to);
    batches.truncate(keep);
}

/// Many groups over a few brokers, with one `Outbox` per broker: what one timer round and one
/// coalesced send per destination cost when thousands of partitions are idle.
pub struct MultiGroup {
    pub brokers: u32,
    /// `replicas[broker - 1][group]`.
    replicas: Vec<Vec<GroupReplica>>,
    outboxes: Vec<Outbox<MemPayload>>,
    scratch: Vec<Effect<MemPayload>>,
    /// Messages sent and envelopes (one per destination per flush) in the last round.
    pub messages_last_round: usize,
    pub envelopes_last_round: usize,
}

struct GroupReplica {
    core: Replica<MemPayload>,
    batches: Vec<BatchMeta>,
}

impl MultiGroup {
    /// `quiesce`: let idle groups go quiet (`Config::quiesce`).
    pub fn new(brokers: u32, groups: u64, quiesce: bool) -> Self {
        let ids: Vec<NodeId> = (1..=brokers).collect();
        let replicas = ids
            .iter()
            .map(|&b| {
                (0..groups)
                    .map(|g| {
                        let mut cfg = Config::new(b, GroupId(g), g * 31 + u64::from(b));
                        cfg.quiesce = quiesce;
                        GroupReplica {
                            core: Replica::new(cfg, Restored::bootstrap(&ids)),
                            batches: Vec::new(),
                        }
                    })
                    .collect()
            })
            .collect();
        let outboxes = ids.iter().map(|_| Outbox::default()).collect();
        MultiGroup {
            brokers,
            replicas,
            outboxes,
            scratch: Vec::new(),
            messages_last_round: 0,
            envelopes_last_round: 0,
        }
    }

    fn step(&mut self, broker: NodeId, group: u64, event: Event<MemPayload>) {
        let mut out = std::mem::take(&mut self.scratch);
        let r = &mut self.replicas[(broker - 1) as usize][group as usize];
        // Dropped messages (stale terms during elections) are fine here.
        let _ = r.core.step(event, &mut out);
        let outbox = &mut self.outboxes[(broker - 1) as usize];
        // Touch the log only when the core wrote to it: an idle tick stays in the core.
        let mut wrote = false;
        for effect in out.drain(..) {
            wrote |=
                matches!(effect, Effect::AppendToLog { .. } | Effect::AppendLeaderMarker { .. });
            match effect {
                Effect::Send { to, msg } => outbox.push(to, GroupId(group), msg),
                Effect::SendAppend(request) => {
                    let (to, msg) = append_message(&request, &r.batches);
                    outbox.push(to, GroupId(group), msg);
                }
                Effect::Truncate { to_offset } => truncate(&mut r.batches, to_offset),
                Effect::AppendToLog { batches, .. } => r.batches.extend(batches),
                Effect::AppendLeaderMarker { offset, term } => {
                    r.batches.push(BatchMeta::data(offset, offset, term))
                }
                _ => {}
            }
        }
        let end = if wrote { r.batches.last().map_or(0, BatchMeta::end) } else { 0 };
        if r.core.durable_end() < end {
            let _ = r.core.step(Event::LogDurable { end }, &mut out);
            for effect in out.drain(..) {
                if let Effect::Send { to, msg } = effect {
                    outbox.push(to, GroupId(group), msg);
                }
            }
        }
        self.scratch = out;
    }

    /// One timer round: tick every replica of every group on every broker, then deliver the
    /// coalesced envelopes until none are left (replies included).
    pub fn round(&mut self) {
        let groups = self.replicas[0].len() as u64;
        for b in 1..=self.brokers {
            for g in 0..groups {
                self.step(b, g, Event::Tick);
            }
        }
        self.messages_last_round = 0;
        self.envelopes_last_round = 0;
        for _ in 0..64 {
            let mut envelopes = Vec::new();
            for (i, outbox) in self.outboxes.iter_mut().enumerate() {
                self.messages_last_round += outbox.len();
                for (to, envelope) in outbox.drain() {
                    envelopes.push((i as NodeId + 1, to, envelope));
                }
            }
            if envelopes.is_empty() {
                return;
            }
            self.envelopes_last_round += envelopes.len();
            for (from, to, envelope) in envelopes {
                for (group, msg) in envelope {
                    self.step(to, group.0, Event::Message { from, msg });
                }
            }
        }
    }

    /// Rounds until every group has a leader that committed its marker.
    pub fn elect_all(&mut self, rounds_max: u32) -> bool {
        for _ in 0..rounds_max {
            if self.all_led() {
                return true;
            }
            self.round();
        }
        self.all_led()
    }

    fn all_led(&self) -> bool {
        let groups = self.replicas[0].len();
        (0..groups).all(|g| self.replicas.iter().any(|b| b[g].core.high_watermark().is_some()))
    }

    /// Replicas in all groups on all brokers.
    pub fn replica_count(&self) -> usize {
        self.replicas.iter().map(Vec::len).sum()
    }
}
