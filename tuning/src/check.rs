//! `spate tune check`: one row per check, with what is, what should be, why it matters for
//! Spate, and the exact command that fixes it. Pure: a [`Machine`] in, rows out.

use serde::Serialize;

use crate::machine::{Cpu, Machine};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// A write that fixes a check: `apply` performs it (as root), or prints it as a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub check: String,
    pub status: Status,
    pub current: String,
    pub recommended: String,
    pub why: String,
    /// The shell command that fixes it ("" when nothing needs doing or no command can).
    pub fix: String,
    /// Set when the fix is a sysfs/procfs write that `apply` can perform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Fix>,
}

fn row(
    check: &str,
    status: Status,
    current: impl Into<String>,
    recommended: impl Into<String>,
    why: &str,
) -> Row {
    Row {
        check: check.into(),
        status,
        current: current.into(),
        recommended: recommended.into(),
        why: why.into(),
        fix: String::new(),
        write: None,
    }
}

fn with_write(mut r: Row, path: &str, value: &str) -> Row {
    if r.status != Status::Ok {
        r.fix = format!("echo {value} | sudo tee {path}");
        r.write = Some(Fix { path: path.into(), value: value.into() });
    }
    r
}

fn show(value: Option<u64>) -> String {
    value.map_or_else(|| "unknown".into(), |v| v.to_string())
}

pub fn checks(machine: &Machine) -> Vec<Row> {
    let mut rows = Vec::new();
    // CPU frequency.
    let governors: Vec<&str> = machine.cpus.iter().filter_map(|c| c.governor.as_deref()).collect();
    if governors.is_empty() {
        rows.push(row(
            "cpu.governor",
            Status::Ok,
            "not exposed (VM?)",
            "performance",
            "Frequency scaling adds wake-up latency to a shard that parks when idle.",
        ));
    } else {
        let slow: Vec<&Cpu> = machine
            .cpus
            .iter()
            .filter(|c| c.governor.as_deref().is_some_and(|g| g != "performance"))
            .collect();
        let status = if slow.is_empty() { Status::Ok } else { Status::Warn };
        let why = "Frequency scaling adds wake-up latency to a shard that parks when idle.";
        let mut summary = row(
            "cpu.governor",
            status,
            governors.first().copied().unwrap_or_default(),
            "performance",
            why,
        );
        if status != Status::Ok {
            summary.fix =
                "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
                    .into();
        }
        rows.push(summary);
        for cpu in slow {
            let per_cpu = row(
                &format!("cpu{}.governor", cpu.id),
                Status::Warn,
                cpu.governor.clone().unwrap_or_default(),
                "performance",
                why,
            );
            rows.push(with_write(
                per_cpu,
                &format!("/sys/devices/system/cpu/cpu{}/cpufreq/scaling_governor", cpu.id),
                "performance",
            ));
        }
    }
    // Memory.
    let thp = machine.transparent_hugepages.clone().unwrap_or_else(|| "unknown".into());
    let status = if thp == "always" { Status::Warn } else { Status::Ok };
    rows.push(with_write(row("memory.transparent_hugepages", status, thp, "madvise", "Compaction for always-on huge pages stalls the shard that faults; Spate's buffers do not need them."), "/sys/kernel/mm/transparent_hugepage/enabled", "madvise"));
    let status = if machine.swappiness.is_some_and(|s| s > 10) { Status::Warn } else { Status::Ok };
    rows.push(with_write(row("memory.swappiness", status, show(machine.swappiness), "1", "A swapped-out tail cache or index turns a memory read into a disk read on the request path."), "/proc/sys/vm/swappiness", "1"));
    // Disks.
    for disk in &machine.block_devices {
        let name = &disk.name;
        let queue = format!("/sys/block/{name}/queue");
        let scheduler = disk.scheduler.clone().unwrap_or_else(|| "unknown".into());
        let fast = disk.rotational == Some(false);
        let wanted = if fast { "none" } else { "mq-deadline" };
        let status =
            if scheduler == wanted || scheduler == "unknown" { Status::Ok } else { Status::Warn };
        rows.push(with_write(row(&format!("disk.{name}.scheduler"), status, scheduler, wanted, "Spate already writes large, ordered O_DIRECT blocks; a scheduler only adds latency on flash (rotational disks still want merging)."), &format!("{queue}/scheduler"), wanted));
        let status =
            if disk.nr_requests.is_some_and(|n| n < 256) { Status::Warn } else { Status::Ok };
        rows.push(with_write(row(&format!("disk.{name}.nr_requests"), status, show(disk.nr_requests), ">= 256", "Group commit keeps many writes in flight per shard; a short queue serializes them."), &format!("{queue}/nr_requests"), "256"));
        let status =
            if disk.max_sectors_kb.is_some_and(|k| k < 1024) { Status::Warn } else { Status::Ok };
        rows.push(with_write(
            row(
                &format!("disk.{name}.max_sectors_kb"),
                status,
                show(disk.max_sectors_kb),
                ">= 1024",
                "Flush rounds write about 1 MiB at once; a smaller limit splits every write.",
            ),
            &format!("{queue}/max_sectors_kb"),
            "1024",
        ));
        rows.push(row(&format!("disk.{name}.write_cache"), Status::Ok, disk.write_cache.clone().unwrap_or_else(|| "unknown".into()), "any", "With a volatile write-back cache, fdatasync also flushes it: flush=always stays durable either way."));
        let poll = disk.io_poll.map_or("unknown".to_string(), |p| {
            if p { "poll queues" } else { "no poll queues" }.into()
        });
        rows.push(row(&format!("disk.{name}.io_poll"), Status::Ok, poll, "either", "Without poll queues Glommio uses interrupt-driven IO; Spate primes Glommio's probe so reads work either way."));
        let status = if disk.atomic_write_bytes.is_some_and(|b| b < 4096) {
            Status::Warn
        } else {
            Status::Ok
        };
        let mut atomic = row(
            &format!("disk.{name}.atomic_write"),
            status,
            disk.atomic_write_bytes.map_or("unknown".into(), |b| format!("{b} bytes")),
            ">= 4096 bytes",
            "Each write round rewrites the log's last partial 4 KiB block, which holds acknowledged bytes: only a device that writes 4 KiB atomically (or keeps its cache through a power cut) guarantees a power cut cannot tear them. Recovery reports a torn block; replication keeps the data on other brokers.",
        );
        if status != Status::Ok {
            atomic.fix = "use a device with power-loss protection for flush=always data, or replicate the topic".into();
        }
        rows.push(atomic);
    }
    // io_uring and limits.
    let status = match machine.io_uring_disabled {
        Some(0) | None => Status::Ok,
        Some(_) => Status::Fail,
    };
    rows.push(with_write(
        row(
            "kernel.io_uring_disabled",
            status,
            show(machine.io_uring_disabled),
            "0",
            "Every shard runs on io_uring; with it disabled Spate cannot start.",
        ),
        "/proc/sys/kernel/io_uring_disabled",
        "0",
    ));
    let memlock = machine.memlock_bytes;
    let status = match memlock {
        Some(bytes) if bytes < 512 * 1024 => Status::Fail,
        Some(bytes) if bytes < 32 * 1024 * 1024 => Status::Warn,
        _ => Status::Ok,
    };
    let mut r = row("limits.memlock", status, show(memlock), ">= 32 MiB (unlimited)", "Each executor registers ~30 MiB of IO buffers; below that (as non-root) Glommio falls back to unregistered buffers, and below 512 KiB it cannot start.");
    if status != Status::Ok {
        r.fix = "ulimit -l unlimited   # or LimitMEMLOCK=infinity in the systemd unit".into();
    }
    rows.push(r);
    let status =
        if machine.open_files.is_some_and(|n| n < 65_536) { Status::Warn } else { Status::Ok };
    let mut r = row(
        "limits.open_files",
        status,
        show(machine.open_files),
        ">= 65536",
        "Three files per segment, per partition, plus connections.",
    );
    if status != Status::Ok {
        r.fix = "ulimit -n 1048576   # or LimitNOFILE=1048576 in the systemd unit".into();
    }
    rows.push(r);
    let status =
        if machine.aio_max_nr.is_some_and(|n| n < 65_536) { Status::Warn } else { Status::Ok };
    rows.push(with_write(row("fs.aio_max_nr", status, show(machine.aio_max_nr), ">= 65536", "Glommio uses io_uring, but some of its fallbacks and other tools on the host use Linux AIO."), "/proc/sys/fs/aio-max-nr", "1048576"));
    // Network.
    let status =
        if machine.somaxconn.is_some_and(|n| n < 1024) { Status::Warn } else { Status::Ok };
    rows.push(with_write(
        row(
            "net.somaxconn",
            status,
            show(machine.somaxconn),
            ">= 1024",
            "Every shard accepts on the shared port; a short backlog drops connection bursts.",
        ),
        "/proc/sys/net/core/somaxconn",
        "4096",
    ));
    for (key, value) in [("rmem_max", machine.rmem_max), ("wmem_max", machine.wmem_max)] {
        let status =
            if value.is_some_and(|v| v < 4 * 1024 * 1024) { Status::Warn } else { Status::Ok };
        rows.push(with_write(row(&format!("net.{key}"), status, show(value), ">= 4194304", "Replication over QUIC needs 4 MiB UDP buffers, or receivers drop packets under load."), &format!("/proc/sys/net/core/{key}"), "4194304"));
    }
    for nic in &machine.nics {
        let spread = nic.irqs.values().filter(|cpus| cpus.len() == machine.cpus.len()).count();
        let status = if !nic.irqs.is_empty() && spread == nic.irqs.len() && machine.cpus.len() > 2 {
            Status::Warn
        } else {
            Status::Ok
        };
        let current = format!(
            "{} IRQs, {} unpinned; RPS on {} queues, XPS on {}",
            nic.irqs.len(),
            spread,
            nic.rps_queues,
            nic.xps_queues
        );
        let mut r = row(&format!("nic.{}.irq_affinity", nic.name), status, current, "pinned to reserved cores", "Interrupts landing on shard cores steal time from the executors; `spate tune layout --reserve-irq-cores` plans cores for them.");
        if status != Status::Ok {
            r.fix = "spate tune layout --reserve-irq-cores 1 ...   # then pin: echo CPU | sudo tee /proc/irq/N/smp_affinity_list".into();
        }
        rows.push(r);
    }
    let clocksource = machine.clocksource.clone().unwrap_or_else(|| "unknown".into());
    let status =
        if clocksource == "tsc" || clocksource == "unknown" || clocksource == "arch_sys_counter" {
            Status::Ok
        } else {
            Status::Warn
        };
    rows.push(with_write(row("time.clocksource", status, clocksource, "tsc", "Latency histograms and timers read the clock on every message; non-TSC sources cost microseconds per read."), "/sys/devices/system/clocksource/clocksource0/current_clocksource", "tsc"));
    rows
}

/// A readable table of the rows.
pub fn table(rows: &[Row]) -> String {
    let mut out =
        format!("{:<32} {:<6} {:<28} {:<22} fix\n", "check", "status", "current", "recommended");
    for r in rows {
        let status = match r.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{:<32} {:<6} {:<28} {:<22} {}\n",
            r.check,
            status,
            truncate(&r.current, 28),
            truncate(&r.recommended, 22),
            r.fix
        ));
        if r.status != Status::Ok {
            out.push_str(&format!("{:<32}        why: {}\n", "", r.why));
        }
    }
    out
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let cut: String = text.chars().take(width - 1).collect();
        format!("{cut}…")
    }
}
