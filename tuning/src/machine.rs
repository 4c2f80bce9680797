//! Reading the machine from sysfs and procfs. Every reader takes a root path, so the same code
//! reads `/` or a fixture tree (see `tuning/fixtures/`). Missing files are normal (VMs hide much
//! of sysfs) and read as `None`, never as errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub id: usize,
    /// Core id within its package; CPUs sharing (package, core) are SMT siblings.
    pub core: usize,
    pub package: usize,
    pub node: Option<usize>,
    pub governor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub name: String,
    pub scheduler: Option<String>,
    pub rotational: Option<bool>,
    pub nr_requests: Option<u64>,
    pub write_cache: Option<String>,
    pub io_poll: Option<bool>,
    pub max_sectors_kb: Option<u64>,
    /// Largest write the device promises to apply whole or not at all across a power cut
    /// (`queue/atomic_write_unit_max_bytes`; 0 = no promise; absent before Linux 6.11).
    pub atomic_write_bytes: Option<u64>,
    pub node: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub node: Option<usize>,
    /// IRQ number → CPUs it may run on.
    pub irqs: BTreeMap<u32, Vec<usize>>,
    /// Receive queues with RPS enabled (non-zero rps_cpus mask).
    pub rps_queues: usize,
    pub xps_queues: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Machine {
    pub cpus: Vec<Cpu>,
    /// NUMA node → its CPUs; empty when the kernel shows no NUMA information.
    pub nodes: BTreeMap<usize, Vec<usize>>,
    pub transparent_hugepages: Option<String>,
    pub swappiness: Option<u64>,
    pub block_devices: Vec<BlockDevice>,
    pub io_uring_disabled: Option<u64>,
    pub memlock_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub aio_max_nr: Option<u64>,
    pub nics: Vec<Nic>,
    pub somaxconn: Option<u64>,
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
    pub clocksource: Option<String>,
}

impl Machine {
    /// SMT sibling groups: CPUs that share a physical core, each group sorted.
    pub fn physical_cores(&self) -> Vec<Vec<usize>> {
        let mut cores: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for cpu in &self.cpus {
            cores.entry((cpu.package, cpu.core)).or_default().push(cpu.id);
        }
        let mut groups: Vec<Vec<usize>> = cores.into_values().collect();
        groups.iter_mut().for_each(|g| g.sort_unstable());
        groups.sort();
        groups
    }

    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.cpus.iter().find(|c| c.id == cpu).and_then(|c| c.node)
    }

    /// CPUs that NIC interrupts are pinned to (an IRQ allowed everywhere pins nothing).
    pub fn irq_cpus(&self) -> Vec<usize> {
        let all = self.cpus.len();
        let mut cpus: Vec<usize> = self
            .nics
            .iter()
            .flat_map(|n| n.irqs.values())
            .filter(|set| set.len() < all)
            .flatten()
            .copied()
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        cpus
    }
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_u64(root: &Path, path: &str) -> Option<u64> {
    read(root, path)?.parse().ok()
}

/// Parses a kernel CPU list like `0-3,8,10-11`.
pub fn parse_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    if b >= a && b - a < 65_536 {
                        out.extend(a..=b);
                    }
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

/// Formats CPUs as a kernel list (`0-3,8`).
pub fn format_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    parts.join(",")
}

/// The value in brackets of a sysfs choice list (`always [madvise] never` → `madvise`).
pub fn selected(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map_or_else(|| text.trim().to_string(), |w| w.trim_matches(['[', ']']).to_string())
}

fn limit(root: &Path, name: &str) -> Option<u64> {
    let limits = read(root, "/proc/self/limits")?;
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

fn list_dir(root: &Path, path: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(path.trim_start_matches('/')))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Reads everything `spate tune` looks at under `root` (`/` for this machine).
pub fn read_machine(root: &Path) -> Machine {
    let mut nodes = BTreeMap::new();
    for name in list_dir(root, "/sys/devices/system/node") {
        if let Some(id) = name.strip_prefix("node").and_then(|n| n.parse::<usize>().ok()) {
            if let Some(list) = read(root, &format!("/sys/devices/system/node/{name}/cpulist")) {
                nodes.insert(id, parse_list(&list));
            }
        }
    }
    let online =
        read(root, "/sys/devices/system/cpu/online").map(|l| parse_list(&l)).unwrap_or_default();
    let cpus = online
        .iter()
        .map(|&id| {
            let base = format!("/sys/devices/system/cpu/cpu{id}");
            Cpu {
                id,
                core: read_u64(root, &format!("{base}/topology/core_id")).unwrap_or(id as u64)
                    as usize,
                package: read_u64(root, &format!("{base}/topology/physical_package_id"))
                    .unwrap_or(0) as usize,
                node: nodes.iter().find(|(_, cpus)| cpus.contains(&id)).map(|(node, _)| *node),
                governor: read(root, &format!("{base}/cpufreq/scaling_governor")),
            }
        })
        .collect();
    let block_devices = list_dir(root, "/sys/block")
        .into_iter()
        .filter(|name| {
            !name.starts_with("loop") && !name.starts_with("ram") && !name.starts_with("zram")
        })
        .map(|name| {
            let queue = format!("/sys/block/{name}/queue");
            BlockDevice {
                scheduler: read(root, &format!("{queue}/scheduler")).map(|s| selected(&s)),
                rotational: read_u64(root, &format!("{queue}/rotational")).map(|r| r == 1),
                nr_requests: read_u64(root, &format!("{queue}/nr_requests")),
                write_cache: read(root, &format!("{queue}/write_cache")),
                io_poll: read_u64(root, &format!("{queue}/io_poll")).map(|p| p == 1),
                max_sectors_kb: read_u64(root, &format!("{queue}/max_sectors_kb")),
                atomic_write_bytes: read_u64(root, &format!("{queue}/atomic_write_unit_max_bytes")),
                node: read(root, &format!("/sys/block/{name}/device/numa_node"))
                    .and_then(|n| n.parse::<i64>().ok())
                    .filter(|n| *n >= 0)
                    .map(|n| n as usize),
                name,
            }
        })
        .collect();
    let interrupts = read(root, "/proc/interrupts").unwrap_or_default();
    let nics = list_dir(root, "/sys/class/net")
        .into_iter()
        .filter(|name| {
            name != "lo"
                && std::fs::metadata(root.join(format!("sys/class/net/{name}/device"))).is_ok()
        })
        .map(|name| read_nic(root, &name, &interrupts))
        .collect();
    Machine {
        cpus,
        nodes,
        transparent_hugepages: read(root, "/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| selected(&s)),
        swappiness: read_u64(root, "/proc/sys/vm/swappiness"),
        block_devices,
        io_uring_disabled: read_u64(root, "/proc/sys/kernel/io_uring_disabled"),
        memlock_bytes: limit(root, "Max locked memory"),
        open_files: limit(root, "Max open files"),
        aio_max_nr: read_u64(root, "/proc/sys/fs/aio-max-nr"),
        nics,
        somaxconn: read_u64(root, "/proc/sys/net/core/somaxconn"),
        rmem_max: read_u64(root, "/proc/sys/net/core/rmem_max"),
        wmem_max: read_u64(root, "/proc/sys/net/core/wmem_max"),
        clocksource: read(root, "/sys/devices/system/clocksource/clocksource0/current_clocksource"),
    }
}

fn read_nic(root: &Path, name: &str, interrupts: &str) -> Nic {
    // IRQ lines name the interface (eth0-TxRx-0) or its device (virtio2-input.0, mlx5_comp0@pci:...).
    let device = std::fs::read_link(root.join(format!("sys/class/net/{name}/device")))
        .ok()
        .and_then(|target| target.file_name().map(|f| f.to_string_lossy().into_owned()));
    let mut irqs = BTreeMap::new();
    for line in interrupts.lines() {
        let Some((number, rest)) = line.trim_start().split_once(':') else { continue };
        let Ok(irq) = number.trim().parse::<u32>() else { continue };
        let label = rest.split_whitespace().last().unwrap_or_default();
        let matches = label.starts_with(&format!("{name}-"))
            || label == name
            || device.as_deref().is_some_and(|d| label.starts_with(&format!("{d}-")));
        if matches {
            let allowed = read(root, &format!("/proc/irq/{irq}/smp_affinity_list"))
                .map(|l| parse_list(&l))
                .unwrap_or_default();
            irqs.insert(irq, allowed);
        }
    }
    let queues = list_dir(root, &format!("/sys/class/net/{name}/queues"));
    let mask_set = |kind: &str, file: &str| {
        queues
            .iter()
            .filter(|q| q.starts_with(kind))
            .filter(|q| {
                read(root, &format!("/sys/class/net/{name}/queues/{q}/{file}"))
                    .is_some_and(|m| m.chars().any(|c| c.is_ascii_hexdigit() && c != '0'))
            })
            .count()
    };
    Nic {
        name: name.to_string(),
        node: read(root, &format!("/sys/class/net/{name}/device/numa_node"))
            .and_then(|n| n.parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .map(|n| n as usize),
        irqs,
        rps_queues: mask_set("rx-", "rps_cpus"),
        xps_queues: mask_set("tx-", "xps_cpus"),
    }
}

/// The fixture tree shipped with the crate, by name (tests and examples).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_format() {
        assert_eq!(parse_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_list(""), Vec::<usize>::new());
        assert_eq!(format_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(selected("always [madvise] never"), "madvise");
        assert_eq!(selected("none [mq-deadline] kyber bfq"), "mq-deadline");
    }
}
