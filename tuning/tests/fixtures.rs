//! The readers, checks and planner against fixture trees shaped like real machines.

use spate_tuning::check::{checks, Status};
use spate_tuning::layout::{parse_topics, plan, TopicLoad};
use spate_tuning::machine::{fixture, read_machine};

fn status_of(rows: &[spate_tuning::check::Row], check: &str) -> Status {
    rows.iter().find(|r| r.check == check).unwrap_or_else(|| panic!("no check {check}")).status
}

#[test]
fn laptop_topology_and_checks() {
    let machine = read_machine(&fixture("laptop"));
    assert_eq!(machine.cpus.len(), 8);
    assert_eq!(machine.physical_cores(), vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    assert_eq!(machine.nodes.len(), 1);
    assert_eq!(machine.block_devices[0].name, "nvme0n1");
    assert_eq!(machine.block_devices[0].rotational, Some(false));
    let rows = checks(&machine);
    assert_eq!(status_of(&rows, "cpu.governor"), Status::Warn);
    assert_eq!(status_of(&rows, "memory.transparent_hugepages"), Status::Warn);
    assert_eq!(status_of(&rows, "memory.swappiness"), Status::Warn);
    assert_eq!(status_of(&rows, "disk.nvme0n1.scheduler"), Status::Ok);
    assert_eq!(status_of(&rows, "disk.nvme0n1.max_sectors_kb"), Status::Warn);
    assert_eq!(status_of(&rows, "disk.nvme0n1.atomic_write"), Status::Ok);
    assert_eq!(status_of(&rows, "limits.open_files"), Status::Warn);
    assert_eq!(status_of(&rows, "limits.memlock"), Status::Warn);
    assert_eq!(status_of(&rows, "net.rmem_max"), Status::Warn);
    // Every non-ok row says how to fix it.
    assert!(rows.iter().filter(|r| r.status != Status::Ok).all(|r| !r.fix.is_empty()), "{rows:#?}");
}

#[test]
fn two_socket_server_topology_and_layout() {
    let machine = read_machine(&fixture("two-socket"));
    assert_eq!(machine.cpus.len(), 32);
    assert_eq!(machine.physical_cores().len(), 16);
    assert_eq!(machine.nodes[&1].len(), 16);
    assert_eq!(machine.nics[0].node, Some(1));
    assert_eq!(machine.nics[0].irqs.len(), 4);
    assert_eq!(machine.irq_cpus(), vec![8, 24]);
    let rows = checks(&machine);
    assert_eq!(status_of(&rows, "disk.sda.nr_requests"), Status::Warn);
    assert_eq!(status_of(&rows, "memory.transparent_hugepages"), Status::Ok);
    assert_eq!(status_of(&rows, "nic.ens1f0.irq_affinity"), Status::Ok);
    // Shards: one per physical core, node 1 (the NIC's) first, the IRQ core (8 and its sibling 24)
    // reserved, no SMT sibling used.
    let topics = parse_topics("orders:12,logs:4").unwrap();
    let plan = plan(&machine, None, 1, &topics).unwrap();
    assert_eq!(plan.irq_cpus, vec![8, 24]);
    assert_eq!(plan.shard_cpus.len(), 15);
    assert!(
        plan.shard_cpus[..7].iter().all(|c| (9..16).contains(c)),
        "node 1 first: {:?}",
        plan.shard_cpus
    );
    assert!(plan.shard_cpus.iter().all(|c| *c < 16), "no SMT siblings: {:?}", plan.shard_cpus);
    assert!(plan.to_toml().contains("[topics.\"orders\"]"));
}

#[test]
fn vm_without_numa_and_this_machine() {
    let vm = read_machine(&fixture("vm-no-numa"));
    assert_eq!(vm.cpus.len(), 2);
    assert!(vm.nodes.is_empty());
    assert!(vm.cpus.iter().all(|c| c.node.is_none()));
    assert_eq!(vm.nics[0].irqs.len(), 2, "virtio IRQs found through the device link");
    let rows = checks(&vm);
    assert_eq!(status_of(&rows, "cpu.governor"), Status::Ok);
    assert_eq!(status_of(&rows, "net.somaxconn"), Status::Warn);
    assert_eq!(status_of(&rows, "time.clocksource"), Status::Warn);
    let plan = plan(&vm, None, 0, &parse_topics("t:4").unwrap()).unwrap();
    assert_eq!(plan.shard_cpus, vec![0, 1]);
    assert_eq!(plan.assignments["t"], vec![0, 1, 0, 1]);
    assert!(spate_tuning::layout::plan(&vm, None, 2, &parse_topics("t:4").unwrap()).is_err());

    let here = read_machine(&fixture("this-machine"));
    assert_eq!(here.physical_cores(), vec![vec![0], vec![1]]);
    assert_eq!(here.block_devices[0].scheduler.as_deref(), Some("mq-deadline"));
    assert_eq!(here.block_devices[0].io_poll, Some(false));
    assert_eq!(checks(&here).iter().filter(|r| r.status == Status::Fail).count(), 0);
    // The virtio disk promises no atomic writes: a torn tail block is possible on power loss.
    assert_eq!(here.block_devices[0].atomic_write_bytes, Some(0));
    assert_eq!(status_of(&checks(&here), "disk.vda.atomic_write"), Status::Warn);
}

#[test]
fn the_real_machine_reads_without_errors() {
    let machine = read_machine(std::path::Path::new("/"));
    assert!(!machine.cpus.is_empty());
    assert!(!checks(&machine).is_empty());
}

/// Planner properties over seeded random inputs: every partition assigned exactly once (to a
/// valid shard); shard loads within one partition's load of the mean; no shard on a reserved
/// interrupt core; the same input gives the same plan.
#[test]
fn planner_properties() {
    let machine = read_machine(&fixture("two-socket"));
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut checked = 0;
    for case in 0..300 {
        let topic_count = 1 + next() % 5;
        let topics: Vec<TopicLoad> = (0..topic_count)
            .map(|t| TopicLoad {
                name: format!("t{t}"),
                loads: (0..1 + next() % 40).map(|_| (next() % 1000) as f64).collect(),
            })
            .collect();
        let reserve = (next() % 3) as usize;
        let cpuset: Vec<usize> = (0..32).filter(|_| next() % 4 != 0).collect();
        let Ok(plan) = plan(&machine, Some(&cpuset), reserve, &topics) else {
            // Only when no shard can be placed (every allowed core reserved).
            assert!(cpuset.is_empty() || reserve > 0, "case {case}: plan refused");
            continue;
        };
        checked += 1;
        let shards = plan.shard_cpus.len();
        for topic in &topics {
            let assigned = &plan.assignments[&topic.name];
            assert_eq!(assigned.len(), topic.loads.len(), "case {case}");
            assert!(assigned.iter().all(|s| (*s as usize) < shards), "case {case}");
        }
        let total: f64 = topics.iter().flat_map(|t| t.loads.iter()).sum();
        let largest = topics.iter().flat_map(|t| t.loads.iter()).copied().fold(0.0, f64::max);
        let mean = total / shards as f64;
        assert!(
            plan.shard_loads.iter().all(|l| *l <= mean + largest + 1e-9),
            "case {case}: {:?}",
            plan.shard_loads
        );
        assert!(
            plan.shard_cpus.iter().all(|c| !plan.irq_cpus.contains(c) && cpuset.contains(c)),
            "case {case}"
        );
        assert_eq!(
            spate_tuning::layout::plan(&machine, Some(&cpuset), reserve, &topics).unwrap(),
            plan,
            "case {case}: deterministic"
        );
    }
    // The properties were checked on (nearly) every case, not skipped.
    assert!(checked >= 250, "only {checked} of 300 cases produced a plan");
    println!("planner properties held on {checked} of 300 cases");
}

#[test]
fn apply_writes_fixes_under_a_root_and_scripts_them() {
    let root = tempfile::tempdir().unwrap();
    let machine = read_machine(&fixture("laptop"));
    let rows = checks(&machine);
    let script = spate_tuning::apply::script(&rows);
    assert!(script.contains("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"));
    // Make the target files exist in a scratch root, then apply there.
    for row in rows.iter().filter_map(|r| r.write.as_ref()) {
        let path = root.path().join(row.path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old\n").unwrap();
    }
    let dry = spate_tuning::apply::apply(&rows, root.path(), true);
    assert!(dry.iter().all(|l| l.starts_with("would write")));
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(),
        "old\n"
    );
    let done = spate_tuning::apply::apply(&rows, root.path(), false);
    assert!(done.iter().all(|l| l.starts_with("wrote")), "{done:?}");
    assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(), "1\n");
}
