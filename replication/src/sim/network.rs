//! A simulated network between replicas: every packet gets a random delay (so packets reorder),
//! may be lost or duplicated, and links can be cut one way or both ways. Delivery order is
//! decided by the simulation's RNG only, so a seed replays exactly.

use std::collections::BTreeSet;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::types::NodeId;

#[derive(Clone, Copy, Debug)]
pub struct NetworkFaults {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_ticks_min: u64,
    pub delay_ticks_max: u64,
}

impl NetworkFaults {
    pub const CALM: NetworkFaults =
        NetworkFaults { loss: 0.0, duplicate: 0.0, delay_ticks_min: 1, delay_ticks_max: 1 };
}

pub struct Packet<M> {
    pub deliver_at: u64,
    pub from: NodeId,
    pub to: NodeId,
    pub msg: M,
}

pub struct SimNetwork<M> {
    pub faults: NetworkFaults,
    in_flight: Vec<Packet<M>>,
    /// Cut links, `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    pub sent: u64,
}

impl<M: Clone> SimNetwork<M> {
    pub fn new(faults: NetworkFaults) -> Self {
        SimNetwork { faults, in_flight: Vec::new(), cut: BTreeSet::new(), sent: 0 }
    }

    pub fn send(&mut self, now: u64, from: NodeId, to: NodeId, msg: M, rng: &mut SmallRng) {
        self.sent += 1;
        if self.cut.contains(&(from, to)) || rng.gen_bool(self.faults.loss) {
            return;
        }
        if rng.gen_bool(self.faults.duplicate) {
            let deliver_at =
                now + rng.gen_range(self.faults.delay_ticks_min..=self.faults.delay_ticks_max);
            self.in_flight.push(Packet { deliver_at, from, to, msg: msg.clone() });
        }
        let deliver_at =
            now + rng.gen_range(self.faults.delay_ticks_min..=self.faults.delay_ticks_max);
        self.in_flight.push(Packet { deliver_at, from, to, msg });
    }

    /// Takes the packets due at `now`, in a random order.
    pub fn due(&mut self, now: u64, rng: &mut SmallRng) -> Vec<Packet<M>> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].deliver_at <= now {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Fisher-Yates with our RNG: reordering among packets due in the same tick.
        for i in (1..due.len()).rev() {
            let j = rng.gen_range(0..=i);
            due.swap(i, j);
        }
        due
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Cuts every link between `node` and the others, both ways.
    pub fn isolate(&mut self, node: NodeId, others: &[NodeId]) {
        for &o in others.iter().filter(|&&o| o != node) {
            self.cut.insert((node, o));
            self.cut.insert((o, node));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Packets to a crashed node are lost with it.
    pub fn drop_to(&mut self, node: NodeId) {
        self.in_flight.retain(|p| p.to != node);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
