//! The deterministic simulator: N replicas of one group over a simulated network and simulated
//! disks, with process crashes, power losses, partitions, retention, leadership transfers and a
//! client workload, all driven from one seeded RNG. The checkers ([`checker`]) run after every
//! step; at the end the faults stop and the group must converge within a bounded time, and a
//! replica cut off from a healthy leader must not depose it when it comes back.
//!
//! A failing seed is re-run with tracing on (the run is deterministic, so it fails the same way)
//! and the failure carries the last events before it.

pub mod checker;
pub mod disk;
pub mod network;

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::effect::Effect;
use crate::message::Message;
use crate::replica::{Config, Event, Replica, Restored};
use crate::types::{
    BatchMeta, FlushPolicy, GroupId, Membership, MembershipChange, NodeId, Offset, Plant, Term,
};
use checker::{Checker, Violation};
use disk::{CrashKind, SimDisk, SimRecord};
use network::{NetworkFaults, SimNetwork};

/// The payload of a simulated `Append`: its first offset and its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPayload {
    pub start: Offset,
    pub records: Vec<SimRecord>,
}

/// Most records the simulated driver packs into one `Append` (a byte budget, in records).
const APPEND_RECORDS_MAX: usize = 64;
const ELECTION_TICKS_MIN: u32 = 8;
const ELECTION_TICKS_MAX: u32 = 16;
const HEARTBEAT_TICKS: u32 = 2;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub replicas: usize,
    pub plant: Plant,
    /// Ticks with faults and client load.
    pub fault_ticks: u64,
    /// After faults stop, the group must converge within this many ticks.
    pub converge_ticks_max: u64,
    /// Cut a follower off from a healthy leader, then heal, and require the same leader term.
    pub disruption_probe: bool,
    /// Trace lines kept for a failure report.
    pub trace_lines: usize,
}

impl SimOptions {
    pub fn new(replicas: usize) -> Self {
        SimOptions {
            replicas,
            plant: Plant::None,
            fault_ticks: 300,
            converge_ticks_max: 400,
            disruption_probe: true,
            trace_lines: 120,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub ticks: u64,
    pub messages: u64,
    pub max_term: Term,
    pub committed: usize,
    pub acked: usize,
    pub crashes: u64,
    pub elections: u64,
    pub truncations: u64,
    pub resets: u64,
    pub membership_changes: u64,
}

impl SimStats {
    pub fn add(&mut self, other: &SimStats) {
        self.ticks += other.ticks;
        self.messages += other.messages;
        self.max_term = self.max_term.max(other.max_term);
        self.committed += other.committed;
        self.acked += other.acked;
        self.crashes += other.crashes;
        self.elections += other.elections;
        self.truncations += other.truncations;
        self.resets += other.resets;
        self.membership_changes += other.membership_changes;
    }
}

#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub tick: u64,
    pub violation: Violation,
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} failed at tick {}: {}", self.seed, self.tick, self.violation)?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// Runs one seed; on failure, runs it again with tracing to report what led to it.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Result<SimStats, SimFailure> {
    match run_catching(seed, opts, false) {
        Ok(stats) => Ok(stats),
        Err((tick, violation, _)) => {
            let trace = match run_catching(seed, opts, true) {
                Err((_, _, trace)) => trace,
                Ok(_) => vec!["(the traced re-run passed: nondeterminism!)".to_string()],
            };
            Err(SimFailure { seed, tick, violation, trace })
        }
    }
}

fn run_catching(
    seed: u64,
    opts: &SimOptions,
    trace: bool,
) -> Result<SimStats, (u64, Violation, Vec<String>)> {
    let mut sim = Sim::new(seed, opts, trace);
    let result = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let trace = sim.trace.drain(..).collect::<Vec<_>>();
    match result {
        Ok(Ok(())) => Ok(sim.stats()),
        Ok(Err(v)) => Err((sim.now, v, trace)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err((sim.now, format!("assertion failed: {msg}"), trace))
        }
    }
}

/// How often each fault and client action happens, per tick, drawn per seed ("swarm testing":
/// some seeds crash a lot, some partition a lot, some barely fault at all).
#[derive(Clone, Copy, Debug)]
struct FaultRates {
    propose: f64,
    crash: f64,
    cut_link: f64,
    isolate: f64,
    heal: f64,
    retention: f64,
    transfer: f64,
    membership: f64,
    /// Disk speed: chance per tick of an OS write-back and of a device sync.
    write: f64,
    sync: f64,
    /// Share of crashes under flush=always that are power losses.
    power_loss: f64,
}

impl FaultRates {
    fn draw(rng: &mut SmallRng) -> Self {
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

struct SimNode {
    id: NodeId,
    /// Started at least once: the initial replicas, and the spare once it was added.
    joined: bool,
    core: Option<Replica<SimPayload>>,
    disk: SimDisk,
    /// Durable end last reported to the core.
    reported_durable: Offset,
    down_until: u64,
    restarts: u64,
}

struct Pending {
    node: NodeId,
    term: Term,
    base: Offset,
    ids: Vec<u64>,
}

pub struct Sim {
    seed: u64,
    opts: SimOptions,
    rng: SmallRng,
    now: u64,
    nodes: Vec<SimNode>,
    net: SimNetwork<SimPayload>,
    checker: Checker,
    pending: Vec<Pending>,
    next_write_id: u64,
    tracing: bool,
    trace: VecDeque<String>,
    scratch: Vec<Effect<SimPayload>>,
    crashes: u64,
    elections: u64,
    truncations: u64,
    resets: u64,
    membership_changes: u64,
    faults: bool,
    rates: FaultRates,
}

impl Sim {
    pub fn new(seed: u64, opts: &SimOptions, tracing: bool) -> Self {
        assert!((1..=5).contains(&opts.replicas));
        let mut rng = SmallRng::seed_from_u64(seed);
        let flush = if rng.gen_bool(0.5) { FlushPolicy::Always } else { FlushPolicy::Never };
        let faults = NetworkFaults {
            loss: rng.gen_range(0.0..0.15),
            duplicate: rng.gen_range(0.0..0.05),
            delay_ticks_min: 1,
            delay_ticks_max: rng.gen_range(1..=4),
        };
        let rates = FaultRates::draw(&mut rng);
        let ids: Vec<NodeId> = (1..=opts.replicas as NodeId).collect();
        let membership = Membership::new(&ids);
        let mut sim = Sim {
            seed,
            opts: opts.clone(),
            rng,
            now: 0,
            nodes: Vec::new(),
            net: SimNetwork::new(faults),
            checker: Checker::default(),
            pending: Vec::new(),
            next_write_id: 1,
            tracing,
            trace: VecDeque::new(),
            scratch: Vec::new(),
            crashes: 0,
            elections: 0,
            truncations: 0,
            resets: 0,
            membership_changes: 0,
            faults: true,
            rates,
        };
        // One spare node beyond the replica set: the workload may replace a replica with it
        // (add as learner, promote, remove another voter).
        let spare = opts.replicas as NodeId + 1;
        for id in ids.iter().copied().chain([spare]) {
            let disk = SimDisk::new(flush, membership.clone());
            sim.nodes.push(SimNode {
                id,
                joined: id != spare,
                core: None,
                disk,
                reported_durable: 0,
                down_until: 0,
                restarts: 0,
            });
            if id != spare {
                sim.start_node(id);
            }
        }
        sim.note(format!(
            "seed {seed}: {} replicas, flush {flush:?}, network {faults:?}",
            opts.replicas
        ));
        sim
    }

    fn node(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn note(&mut self, line: String) {
        if self.tracing {
            if self.trace.len() >= self.opts.trace_lines {
                self.trace.pop_front();
            }
            self.trace.push_back(format!("t={} {line}", self.now));
        }
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            ticks: self.now,
            messages: self.net.sent,
            max_term: self
                .nodes
                .iter()
                .filter_map(|n| n.core.as_ref())
                .map(|c| c.term())
                .max()
                .unwrap_or(0),
            committed: self.checker.committed_len(),
            acked: self.checker.acked_count(),
            crashes: self.crashes,
            elections: self.elections,
            truncations: self.truncations,
            resets: self.resets,
            membership_changes: self.membership_changes,
        }
    }

    /// Starts (or restarts) a node's core from what its disk holds.
    fn start_node(&mut self, id: NodeId) {
        let seed = self.seed;
        let plant = self.opts.plant;
        let n = self.node(id);
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

    fn run(&mut self) -> Result<(), Violation> {
        while self.now < self.opts.fault_ticks {
            self.tick()?;
        }
        self.calm();
        self.converge()?;
        self.note(format!("converged: {}", self.describe_nodes()));
        if self.opts.disruption_probe {
            self.disruption_probe()?;
        }
        Ok(())
    }

    /// Waits until the group converged and stays so, with the same leader and term, for two
    /// election timeouts (a leader whose check-quorum window still covers a fault may yet step
    /// down; that is not a disruption).
    fn converge(&mut self) -> Result<(), Violation> {
        let deadline = self.now + self.opts.converge_ticks_max;
        loop {
            while !self.converged() {
                if self.now >= deadline {
                    return Err(format!(
                        "no convergence {} ticks after faults stopped: {}",
                        self.opts.converge_ticks_max,
                        self.describe_nodes()
                    ));
                }
                self.tick()?;
            }
            let leader = self.leader();
            let stable_until = self.now + 2 * u64::from(ELECTION_TICKS_MAX);
            while self.now < stable_until {
                self.tick()?;
            }
            if self.converged() && self.leader() == leader {
                return Ok(());
            }
        }
    }

    /// Faults stop: links heal, the network turns reliable, every crashed node restarts.
    fn calm(&mut self) {
        self.faults = false;
        self.net.heal();
        self.net.faults = NetworkFaults::CALM;
        for id in self.ids() {
            if self.node(id).joined && self.node(id).core.is_none() {
                self.restart(id);
            }
        }
        self.note("faults stop".to_string());
    }

    fn leader(&self) -> Option<(NodeId, Term)> {
        let top = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .filter(|c| c.is_leader())
            .max_by_key(|c| c.term())?;
        Some((top.id(), top.term()))
    }

    fn converged(&self) -> bool {
        let Some((leader, term)) = self.leader() else { return false };
        let l = self.nodes[(leader - 1) as usize].core.as_ref().expect("leader is up");
        let end = l.log_end();
        let members = l.current_membership();
        // Replicas removed from the group (and a spare never added) are not expected to follow.
        l.high_watermark() == Some(end)
            && l.transfer_target().is_none()
            && self.nodes.iter().filter(|n| members.contains(n.id)).all(|n| {
                n.core.as_ref().is_some_and(|c| {
                    c.term() == term
                        && c.leader() == Some(leader)
                        && c.log_end() == end
                        && c.commit() == end
                        && c.durable_end() == end
                })
            })
    }

    fn describe_nodes(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            match &n.core {
                None => s.push_str(&format!("[n{} down] ", n.id)),
                Some(c) => s.push_str(&format!(
                    "[n{} {:?} t{} start {} end {} durable {} commit {}] ",
                    n.id,
                    c.role(),
                    c.term(),
                    c.log_start(),
                    c.log_end(),
                    c.durable_end(),
                    c.commit()
                )),
            }
        }
        s
    }

    fn disruption_probe(&mut self) -> Result<(), Violation> {
        let Some((leader, term)) = self.leader() else { return Ok(()) };
        let members =
            self.node(leader).core.as_ref().expect("leader is up").current_membership().clone();
        if members.voters.len() < 3 {
            return Ok(()); // Cutting off any voter of a 2-voter group stops it: nothing to probe.
        }
        let followers: Vec<NodeId> = members.others(leader).collect();
        if followers.is_empty() {
            return Ok(());
        }
        let cut = followers[self.rng.gen_range(0..followers.len())];
        let ids = self.ids();
        self.net.isolate(cut, &ids);
        self.note(format!("probe: isolate follower n{cut} from leader n{leader} (term {term})"));
        let until = self.now + 4 * u64::from(ELECTION_TICKS_MAX);
        while self.now < until {
            self.tick()?;
        }
        self.net.heal();
        self.note("probe: heal".to_string());
        let until = self.now + 4 * u64::from(ELECTION_TICKS_MAX);
        while self.now < until {
            self.tick()?;
        }
        match self.leader() {
            Some((l, t)) if l == leader && t == term => Ok(()),
            other => Err(format!(
                "disruption: follower n{cut} came back from isolation and the leader changed: was n{leader} term {term}, now {other:?}"
            )),
        }
    }

    fn tick(&mut self) -> Result<(), Violation> {
        self.now += 1;
        for p in self.net.due(self.now, &mut self.rng) {
            if self.node(p.to).core.is_some() {
                if self.tracing {
                    self.note(format!("n{} <- n{} {}", p.to, p.from, describe(&p.msg)));
                }
                self.step(p.to, Event::Message { from: p.from, msg: p.msg })?;
            }
        }
        for id in self.ids() {
            if self.node(id).core.is_some() {
                self.step(id, Event::Tick)?;
                self.background_io(id)?;
            }
        }
        if self.faults {
            self.workload()?;
            self.inject_faults()?;
        }
        self.settle_pending()
    }

    /// Feeds one event to a node's core and carries out its effects, then checks.
    fn step(&mut self, id: NodeId, event: Event<SimPayload>) -> Result<(), Violation> {
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

    fn apply(&mut self, id: NodeId, out: &mut Vec<Effect<SimPayload>>) -> Result<(), Violation> {
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
            Effect::Send { to, msg } => self.net.send(now, id, to, msg, &mut self.rng),
            Effect::SendAppend { to, term, prev_end, prev_term, commit, from_log_start } => {
                let (batches, payload) = self.read_batches(id, prev_end);
                let msg = Message::Append {
                    term,
                    prev_end,
                    prev_term,
                    commit,
                    from_log_start,
                    batches,
                    payload,
                };
                self.net.send(now, id, to, msg, &mut self.rng);
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

    fn append_record(&mut self, id: NodeId, r: SimRecord) -> Result<(), Violation> {
        let n = &mut self.nodes[(id - 1) as usize];
        let offset = n.disk.log_end();
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

    fn check_node(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = &self.nodes[(id - 1) as usize];
        let Some(core) = &n.core else { return Ok(()) };
        assert_eq!(core.log_end(), n.disk.log_end(), "core and disk agree on the log end");
        let commit = core.commit();
        self.checker.on_commit(id, commit, &n.disk)?;
        if let Some(hw) = core.high_watermark() {
            let term = core.term();
            self.checker.on_client_read(term, hw)?;
        }
        if core.is_leader() {
            self.check_durable_majority(id)?;
        }
        Ok(())
    }

    /// Everything below a leader's commit point is durable, by the flush policy, on a majority
    /// of its voters (retention counts as held: it deletes only committed records).
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

    fn background_io(&mut self, id: NodeId) -> Result<(), Violation> {
        let n = &mut self.nodes[(id - 1) as usize];
        n.disk.background_io(&mut self.rng, self.rates.write, self.rates.sync);
        let durable = n.disk.durable_end();
        if durable > n.reported_durable {
            n.reported_durable = durable;
            return self.step(id, Event::LogDurable { end: durable });
        }
        Ok(())
    }

    fn workload(&mut self) -> Result<(), Violation> {
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
    fn settle_pending(&mut self) -> Result<(), Violation> {
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

    fn inject_faults(&mut self) -> Result<(), Violation> {
        let ids = self.ids();
        let pick = |rng: &mut SmallRng| ids[rng.gen_range(0..ids.len())];
        // Crash.
        if self.rng.gen_bool(self.rates.crash) {
            let id = pick(&mut self.rng);
            if self.node(id).core.is_some() {
                self.crash(id);
            }
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

    fn crash(&mut self, id: NodeId) {
        let flush = self.node(id).disk.flush;
        let kind = match flush {
            // flush=never promises nothing across a power loss: only process crashes there.
            FlushPolicy::Never => CrashKind::Process,
            FlushPolicy::Always if self.rng.gen_bool(self.rates.power_loss) => CrashKind::Power,
            FlushPolicy::Always => CrashKind::Process,
        };
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

    fn restart(&mut self, id: NodeId) {
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

/// One line per message for traces (payloads summarized).
fn describe(msg: &Message<SimPayload>) -> String {
    match msg {
        Message::Append { term, prev_end, prev_term, commit, from_log_start, batches, .. } => {
            let end = batches.last().map_or(*prev_end, BatchMeta::end);
            format!(
                "Append t{term} prev ({prev_end}, t{prev_term}) records [{prev_end}, {end}) in {} batches commit {commit}{}",
                batches.len(),
                if from_log_start.is_some() { " from-log-start" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// Runs a range of seeds; returns the failures (empty if all passed).
pub fn run_seeds(seeds: std::ops::Range<u64>, opts: &SimOptions) -> Vec<SimFailure> {
    seeds.filter_map(|s| run_seed(s, opts).err()).collect()
}

/// The first seed in `seeds` that fails, if any (for proving a planted bug is caught).
pub fn first_failing_seed(seeds: std::ops::Range<u64>, opts: &SimOptions) -> Option<SimFailure> {
    seeds.into_iter().find_map(|s| run_seed(s, opts).err())
}

#[cfg(test)]
mod tests;
