//! `spate tune layout`: which cores run shards, and which shard owns each partition. Pure.
//!
//! Cores: one shard per physical core (its first CPU; SMT siblings stay idle, so two shards
//! never share a core's execution units), on the NUMA node of the NIC (or disk) first, never on
//! a core reserved for interrupts. Reserved cores are those NIC interrupts are already pinned to,
//! else the last cores of that node.
//!
//! Partitions: longest-processing-time first. Partitions sorted by expected load (descending;
//! ties by topic and index) each go to the least-loaded shard (ties to the lowest shard). The
//! result is deterministic, and no shard ends more than one partition's load above the mean.

use std::collections::BTreeMap;

use crate::machine::{format_list, Machine};

/// One topic: its partitions' expected loads (bytes/s, or 1.0 each when unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicLoad {
    pub name: String,
    pub loads: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// CPU of each shard: shard i runs on `shard_cpus[i]`.
    pub shard_cpus: Vec<usize>,
    /// CPUs kept free for NIC and disk interrupts.
    pub irq_cpus: Vec<usize>,
    /// Topic → owning shard of each partition.
    pub assignments: BTreeMap<String, Vec<u16>>,
    pub shard_loads: Vec<f64>,
}

/// Parses `orders:12,logs:4` (optionally `orders:12@5e6` for bytes/s per partition).
pub fn parse_topics(text: &str) -> Result<Vec<TopicLoad>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|spec| {
            let bad = || format!("bad topic {spec:?}: expected NAME:PARTITIONS[@BYTES_PER_SEC]");
            let (name, rest) = spec.split_once(':').ok_or_else(bad)?;
            let (count, load) = match rest.split_once('@') {
                Some((count, load)) => (count, load.parse::<f64>().map_err(|_| bad())?),
                None => (rest, 1.0),
            };
            let count: usize = count.parse().map_err(|_| bad())?;
            if name.is_empty() || count == 0 || count > 10_000 || !(load >= 0.0 && load.is_finite())
            {
                return Err(bad());
            }
            Ok(TopicLoad { name: name.to_string(), loads: vec![load; count] })
        })
        .collect()
}

pub fn plan(
    machine: &Machine,
    cpuset: Option<&[usize]>,
    reserve_irq_cores: usize,
    topics: &[TopicLoad],
) -> Result<Plan, String> {
    let allowed = |cpu: usize| cpuset.is_none_or(|set| set.contains(&cpu));
    // Physical cores with at least one allowed CPU, keeping only the allowed CPUs.
    let mut cores: Vec<Vec<usize>> = machine
        .physical_cores()
        .into_iter()
        .map(|core| core.into_iter().filter(|c| allowed(*c)).collect::<Vec<_>>())
        .filter(|core| !core.is_empty())
        .collect();
    if cores.is_empty() {
        return Err("no allowed CPU is online".into());
    }
    let local_node = machine
        .nics
        .iter()
        .find_map(|n| n.node)
        .or_else(|| machine.block_devices.iter().find_map(|d| d.node));
    // Local node first (stable: within a node, by CPU number).
    cores.sort_by_key(|core| {
        (local_node.is_some_and(|node| machine.node_of(core[0]) != Some(node)), core[0])
    });
    let pinned = machine.irq_cpus();
    let mut reserved: Vec<Vec<usize>> = Vec::new();
    // Cores interrupts already land on are reserved first, then the last local cores.
    for core in cores.clone() {
        if reserved.len() < reserve_irq_cores && core.iter().any(|c| pinned.contains(c)) {
            reserved.push(core);
        }
    }
    let local_count = cores
        .iter()
        .filter(|core| local_node.is_none_or(|node| machine.node_of(core[0]) == Some(node)))
        .count();
    for core in cores[..local_count].iter().rev() {
        if reserved.len() >= reserve_irq_cores {
            break;
        }
        if !reserved.contains(core) {
            reserved.push(core.clone());
        }
    }
    let shard_cpus: Vec<usize> =
        cores.iter().filter(|core| !reserved.contains(core)).map(|core| core[0]).collect();
    if shard_cpus.is_empty() {
        return Err(format!(
            "reserving {reserve_irq_cores} cores for interrupts leaves none for shards"
        ));
    }
    let mut irq_cpus: Vec<usize> = reserved.into_iter().flatten().collect();
    irq_cpus.sort_unstable();

    let shards = shard_cpus.len();
    let mut partitions: Vec<(&str, usize, f64)> = topics
        .iter()
        .flat_map(|t| t.loads.iter().enumerate().map(move |(p, load)| (t.name.as_str(), p, *load)))
        .collect();
    partitions.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(b.0)).then(a.1.cmp(&b.1)));
    let mut shard_loads = vec![0.0f64; shards];
    let mut counts = vec![0usize; shards];
    let mut assignments: BTreeMap<String, Vec<u16>> =
        topics.iter().map(|t| (t.name.clone(), vec![0; t.loads.len()])).collect();
    for (topic, partition, load) in partitions {
        // Least load, then fewest partitions (spreads zero-load partitions), then lowest index.
        let shard = (0..shards)
            .min_by(|a, b| {
                shard_loads[*a]
                    .total_cmp(&shard_loads[*b])
                    .then(counts[*a].cmp(&counts[*b]))
                    .then(a.cmp(b))
            })
            .expect("at least one shard");
        shard_loads[shard] += load;
        counts[shard] += 1;
        assignments.get_mut(topic).expect("listed")[partition] = shard as u16;
    }
    Ok(Plan { shard_cpus, irq_cpus, assignments, shard_loads })
}

impl Plan {
    /// The layout file `spate serve --layout` reads.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Written by `spate tune layout`. Shard i runs on the i-th CPU of `cpuset`.\n",
        );
        out.push_str(&format!(
            "cpuset = \"{}\"\n",
            self.shard_cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
        ));
        if !self.irq_cpus.is_empty() {
            out.push_str(&format!(
                "# Keep NIC and disk interrupts on CPUs {}.\n",
                format_list(&self.irq_cpus)
            ));
        }
        for (topic, shards) in &self.assignments {
            out.push_str(&format!("\n[topics.{topic:?}]\nshards = {shards:?}\n"));
        }
        out
    }

    /// A readable table: shards, their CPU, load and partitions.
    pub fn table(&self) -> String {
        let mut out = format!("{:<6} {:<5} {:>12} partitions\n", "shard", "cpu", "load");
        for (shard, cpu) in self.shard_cpus.iter().enumerate() {
            let owned: Vec<String> = self
                .assignments
                .iter()
                .flat_map(|(topic, shards)| {
                    shards
                        .iter()
                        .enumerate()
                        .filter(move |(_, s)| **s as usize == shard)
                        .map(move |(p, _)| format!("{topic}/{p}"))
                })
                .collect();
            out.push_str(&format!(
                "{shard:<6} {cpu:<5} {:>12.1} {}\n",
                self.shard_loads[shard],
                owned.join(" ")
            ));
        }
        if !self.irq_cpus.is_empty() {
            out.push_str(&format!("interrupts: CPUs {}\n", format_list(&self.irq_cpus)));
        }
        out
    }
}
