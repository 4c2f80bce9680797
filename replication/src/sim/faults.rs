//! The fault injector and the client workload: crashes and restarts, partitions, retention,
//! leadership transfers, replica replacement, client appends and their acknowledgements.

use rand::rngs::SmallRng;
use rand::Rng;

use super::checker::Violation;
use super::disk::{CrashKind, SimDisk, SimRecord};
use super::{Pending, Sim};
use crate::replica::Event;
use crate::types::{FlushPolicy, MembershipChange, NodeId};

/// How often each fault and client action happens, per tick, drawn per seed ("swarm testing":
/// some seeds crash a lot, some partition a lot, some barely fault at all).
#[derive(Clone, Copy, Debug)]
pub(super) struct FaultRates {
    pub(super) propose: f64,
    pub(super) crash: f64,
    pub(super) cut_link: f64,
    pub(super) isolate: f64,
    pub(super) heal: f64,
    pub(super) retention: f64,
    pub(super) transfer: f64,
    pub(super) membership: f64,
    /// Disk speed: chance per tick of an OS write-back and of a device sync.
    pub(super) write: f64,
    pub(super) sync: f64,
    /// Share of crashes under flush=always that are power losses.
    pub(super) power_loss: f64,
}

impl FaultRates {
    pub(super) fn draw(rng: &mut SmallRng) -> Self {
        FaultRates {
            propose: rng.gen_range(0.1..0.9),
            crash: rng.gen_range(0.0..0.04),
            cut_link: rng.gen_range(0.0..0.02),
            isolate: rng.gen_range(0.0..0.01),
            heal: rng.gen_range(0.005..0.05),
            retention: rng.gen_range(0.0..0.02),
            transfer: rng.gen_range(0.0..0.01),
            membership: rng.gen_range(0.0..0.03),
            write: rng.gen_range(0.1..0.9),
            sync: rng.gen_range(0.05..0.6),
            power_loss: rng.gen_range(0.0..1.0),
        }
    }
}

impl Sim {
    pub(super) fn workload(&mut self) -> Result<(), Violation> {
        if !self.rng.gen_bool(self.rates.propose) {
            return Ok(());
        }
        let id = self.rng.gen_range(1..=self.nodes.len() as NodeId);
        let records = self.rng.gen_range(1..=3u64);
        let n = &mut self.nodes[(id - 1) as usize];
        let Some(core) = n.core.as_mut() else { return Ok(()) };
        let mut out = std::mem::take(&mut self.scratch);
        let Ok(meta) = core.propose(records, &mut out) else {
            self.scratch = out;
            return Ok(());
        };
        let mut ids = Vec::new();
        for _ in 0..records {
            let wid = self.next_write_id;
            self.next_write_id += 1;
            ids.push(wid);
            self.append_record(
                id,
                SimRecord {
                    term: meta.term,
                    id: wid,
                    batch_base: meta.base_offset,
                    membership: None,
                },
            )?;
        }
        self.note(format!(
            "n{id} client append {ids:?} at {} term {}",
            meta.base_offset, meta.term
        ));
        self.pending.push(Pending { node: id, term: meta.term, base: meta.base_offset, ids });
        let result = self.apply(id, &mut out);
        self.scratch = out;
        result?;
        self.check_node(id)
    }

    /// Acknowledges client writes whose leader committed them in the term they were written.
    pub(super) fn settle_pending(&mut self) -> Result<(), Violation> {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let core = self.nodes[(p.node - 1) as usize].core.as_ref();
            let state = core.map(|c| (c.is_leader() && c.term() == p.term, c.commit()));
            match state {
                Some((true, commit)) if commit >= p.base + p.ids.len() as u64 => {
                    let p = self.pending.swap_remove(i);
                    for (k, wid) in p.ids.iter().enumerate() {
                        self.checker.on_ack(p.base + k as u64, (p.term, *wid))?;
                    }
                }
                Some((true, _)) => i += 1,
                _ => {
                    self.pending.swap_remove(i); // Outcome unknown to the client.
                }
            }
        }
        Ok(())
    }

    pub(super) fn inject_faults(&mut self) -> Result<(), Violation> {
        let ids = self.ids();
        let pick = |rng: &mut SmallRng| ids[rng.gen_range(0..ids.len())];
        // Crash.
        if self.rng.gen_bool(self.rates.crash) {
            let id = pick(&mut self.rng);
            if self.node(id).core.is_some() {
                self.crash(id);
            }
        }
        if self.opts.majority_power_loss && self.rng.gen_bool(0.01) {
            self.power_loss_majority();
        }
        // Restart crashed nodes whose downtime is over.
        for &id in &ids {
            let n = self.node(id);
            if n.joined && n.core.is_none() && n.down_until <= self.now {
                self.restart(id);
            }
        }
        // Partitions.
        let rates = self.rates;
        if self.rng.gen_bool(rates.cut_link) {
            let a = pick(&mut self.rng);
            let b = pick(&mut self.rng);
            if a != b {
                self.net.cut(a, b);
                self.note(format!("cut link n{a} -> n{b}"));
            }
        }
        if self.rng.gen_bool(rates.isolate) {
            let a = pick(&mut self.rng);
            self.net.isolate(a, &ids);
            self.note(format!("isolate n{a}"));
        }
        if self.rng.gen_bool(rates.heal) {
            self.net.heal();
            self.note("heal network".to_string());
        }
        // Retention on one replica.
        if self.rng.gen_bool(rates.retention) {
            let id = pick(&mut self.rng);
            self.retention(id)?;
        }
        if self.rng.gen_bool(rates.membership) {
            self.membership_step()?;
        }
        // Leadership transfer.
        if self.rng.gen_bool(rates.transfer) {
            let id = pick(&mut self.rng);
            let to = pick(&mut self.rng);
            let mut out = std::mem::take(&mut self.scratch);
            if let Some(core) = self.node(id).core.as_mut() {
                if core.transfer_leadership(to, &mut out).is_ok() {
                    self.note(format!("n{id} transfers leadership to n{to}"));
                }
            }
            let result = self.apply(id, &mut out);
            self.scratch = out;
            result?;
        }
        Ok(())
    }

    /// One step of replacing a replica with the spare node: add it as a learner, promote it once
    /// caught up, then remove another voter. The core refuses steps that are not allowed yet
    /// (change pending, learner behind, leader not ready); we just try again later.
    fn membership_step(&mut self) -> Result<(), Violation> {
        let Some((leader, _)) = self.leader() else { return Ok(()) };
        let spare = self.nodes.len() as NodeId;
        let current =
            self.node(leader).core.as_ref().expect("leader is up").current_membership().clone();
        let change = if !current.contains(spare) {
            if current.voters.len() > self.opts.replicas {
                return Ok(()); // The replacement is done.
            }
            MembershipChange::AddLearner(spare)
        } else if !current.is_voter(spare) {
            MembershipChange::PromoteLearner(spare)
        } else if current.voters.len() > self.opts.replicas {
            let victims: Vec<NodeId> =
                current.voters.iter().copied().filter(|&v| v != leader && v != spare).collect();
            if victims.is_empty() {
                return Ok(());
            }
            MembershipChange::RemoveReplica(victims[self.rng.gen_range(0..victims.len())])
        } else {
            return Ok(());
        };
        let mut out = std::mem::take(&mut self.scratch);
        let result = self
            .node(leader)
            .core
            .as_mut()
            .expect("leader is up")
            .propose_membership(change, &mut out);
        if result.is_ok() {
            self.note(format!("n{leader} proposes {change:?}: {result:?}"));
            self.membership_changes += 1;
            if let MembershipChange::AddLearner(n) = change {
                if !self.node(n).joined {
                    // The new replica boots knowing the set that names it.
                    let joining = current.apply(change).expect("leader accepted it");
                    let flush = self.node(leader).disk.flush;
                    let n = self.node(n);
                    n.disk = SimDisk::new(flush, joining);
                    n.joined = true;
                }
            }
        }
        let applied = self.apply(leader, &mut out);
        self.scratch = out;
        applied?;
        if let MembershipChange::AddLearner(n) = change {
            if result.is_ok() && self.node(n).core.is_none() {
                self.start_node(n);
            }
        }
        self.check_node(leader)
    }

    /// A power cut on a majority of the replicas at once (a rack or a data center).
    fn power_loss_majority(&mut self) {
        let mut live: Vec<NodeId> =
            self.ids().into_iter().filter(|&id| self.node(id).core.is_some()).collect();
        let joined = self.nodes.iter().filter(|n| n.joined).count();
        let majority = joined / 2 + 1;
        for i in (1..live.len()).rev() {
            let j = self.rng.gen_range(0..=i);
            live.swap(i, j);
        }
        self.note(format!("power loss on {:?}", &live[..majority.min(live.len())]));
        for &id in live.iter().take(majority) {
            self.crash_with(id, CrashKind::Power);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let flush = self.node(id).disk.flush;
        let kind = match flush {
            // flush=never promises nothing across a power loss: only process crashes there.
            FlushPolicy::Never => CrashKind::Process,
            FlushPolicy::Always if self.rng.gen_bool(self.rates.power_loss) => CrashKind::Power,
            FlushPolicy::Always => CrashKind::Process,
        };
        self.crash_with(id, kind);
    }

    fn crash_with(&mut self, id: NodeId, kind: CrashKind) {
        let down = self.rng.gen_range(1..40);
        let now = self.now;
        let n = &mut self.nodes[(id - 1) as usize];
        n.core = None;
        n.disk.crash(kind, &mut self.rng);
        n.down_until = now + down;
        n.restarts += 1;
        self.crashes += 1;
        self.net.drop_to(id);
        let end = self.node(id).disk.log_end();
        self.note(format!("n{id} crashes ({kind:?}), log survives to {end}"));
    }

    pub(super) fn restart(&mut self, id: NodeId) {
        // Recovery fsyncs the log it found before the core starts: `Restored::log_end` promises
        // that everything below it is durable (a process crash under flush=always can leave
        // written but unsynced records behind).
        let disk = &mut self.node(id).disk;
        disk.written_end = disk.log_end();
        disk.synced_end = disk.log_end();
        self.start_node(id);
        self.note(format!("n{id} restarts"));
    }

    fn retention(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = self.node(id);
        let Some(core) = n.core.as_ref() else { return Ok(()) };
        let (start, commit) = (core.log_start(), core.commit());
        if commit <= start + 1 {
            return Ok(());
        }
        let mut new_start = self.rng.gen_range(start + 1..=commit);
        let n = self.node(id);
        if let Some(r) = n.disk.get(new_start) {
            new_start = r.batch_base;
        }
        if new_start <= start {
            return Ok(());
        }
        n.disk.delete_before(new_start);
        self.note(format!("n{id} retention deletes below {new_start}"));
        self.step(id, Event::LogStartAdvanced { start: new_start })
    }
}
