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
mod driver;
mod faults;
pub mod network;

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::effect::Effect;
use crate::message::Message;
use crate::replica::{Event, Replica};
use crate::types::{BatchMeta, FlushPolicy, Membership, NodeId, Offset, Plant, Term};
use checker::{Checker, Violation};
use disk::{SimDisk, SimRecord};
use faults::FaultRates;
use network::{NetworkFaults, SimNetwork};

/// The payload of a simulated `Append`: its first offset and its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimPayload {
    pub start: Offset,
    pub records: Vec<SimRecord>,
}

/// What travels between simulated nodes: a group's message, or the driver's node-level
/// keepalive that feeds the failure detector (and lets idle groups stay quiesced).
#[derive(Clone, Debug)]
pub enum Datagram {
    Group(Message<SimPayload>),
    Keepalive,
}

/// Ticks between keepalives from each node to each peer.
const KEEPALIVE_TICKS: u64 = 2;
/// A peer not heard from (group message or keepalive) for this long is reported down.
const PEER_DOWN_TICKS: u64 = ELECTION_TICKS_MIN as u64;

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
    /// Force one flush policy instead of drawing it per seed.
    pub flush: Option<FlushPolicy>,
    /// Also cut the power of a majority at once, under either policy (flush=never does not
    /// promise to survive that; the tests show it is needed and sufficient).
    pub majority_power_loss: bool,
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
            flush: None,
            majority_power_loss: false,
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
    /// Ticks on which the leader was quiesced (idle group, no heartbeats).
    pub quiet_ticks: u64,
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
        self.quiet_ticks += other.quiet_ticks;
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

struct SimNode {
    id: NodeId,
    /// Failure detector: when each peer was last heard from, and the peers reported down.
    last_heard: BTreeMap<NodeId, u64>,
    suspected: std::collections::BTreeSet<NodeId>,
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
    net: SimNetwork<Datagram>,
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
    quiet_ticks: u64,
    /// Per leader: the `(term, commit)` last checked by `check_durable_majority`.
    leader_commits: BTreeMap<NodeId, (Term, Offset)>,
    faults: bool,
    rates: FaultRates,
}

impl Sim {
    pub fn new(seed: u64, opts: &SimOptions, tracing: bool) -> Self {
        assert!((1..=5).contains(&opts.replicas));
        let mut rng = SmallRng::seed_from_u64(seed);
        let drawn = if rng.gen_bool(0.5) { FlushPolicy::Always } else { FlushPolicy::Never };
        let flush = opts.flush.unwrap_or(drawn);
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
            quiet_ticks: 0,
            leader_commits: BTreeMap::new(),
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
                last_heard: BTreeMap::new(),
                suspected: std::collections::BTreeSet::new(),
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
            quiet_ticks: self.quiet_ticks,
        }
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
            if self.node(p.to).core.is_none() {
                continue;
            }
            self.heard(p.to, p.from);
            if let Datagram::Group(msg) = p.msg {
                if self.tracing {
                    self.note(format!("n{} <- n{} {}", p.to, p.from, describe(&msg)));
                }
                self.step(p.to, Event::Message { from: p.from, msg })?;
            }
        }
        let quiet = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .any(|c| c.is_leader() && c.is_quiesced());
        self.quiet_ticks += u64::from(quiet);
        for id in self.ids() {
            if self.node(id).core.is_some() {
                self.step(id, Event::Tick)?;
                self.background_io(id)?;
                self.failure_detector(id)?;
            }
        }
        if self.faults {
            self.workload()?;
            self.inject_faults()?;
        }
        self.settle_pending()
    }
}

/// One line per message for traces (payloads summarized).
fn describe(msg: &Message<SimPayload>) -> String {
    match msg {
        Message::Append {
            term, prev_end, prev_term, commit, from_log_start, seq, batches, ..
        } => {
            let end = batches.last().map_or(*prev_end, BatchMeta::end);
            format!(
                "Append #{seq} t{term} prev ({prev_end}, t{prev_term}) records [{prev_end}, {end}) in {} batches commit {commit}{}",
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
