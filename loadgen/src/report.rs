//! The final table and the JSON result (`--json`): the keys the load-generator issue fixes, at
//! the top level, plus more.

use serde_json::{json, Value};

use crate::ceiling::Ceiling;
use crate::stats::Percentiles;

pub struct Outcome {
    pub scenario: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub duration_s: f64,
    pub errors: u64,
    /// Per record, from its due or send time to its acknowledgement (time in the producer's
    /// buffer included).
    pub produce_latency: Percentiles,
    /// Per produce request (a round of batches): sent to answered.
    pub request_latency: Percentiles,
    pub e2e_latency: Percentiles,
    pub consumed: u64,
}

impl Outcome {
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.duration_s.max(1e-9)
    }

    /// 10^6 bytes of record values per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.duration_s.max(1e-9) / 1e6
    }

    /// The latency this scenario is judged by.
    pub fn latency(&self) -> Percentiles {
        if self.scenario == "e2e" {
            self.e2e_latency
        } else {
            self.produce_latency
        }
    }
}

pub fn machine(data_dir: &std::path::Path) -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_model": cpu_model,
        "kernel": kernel,
        "data_dir_filesystem": filesystem(data_dir),
    })
}

fn filesystem(path: &std::path::Path) -> String {
    // statfs's f_type, named for the common ones.
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return "unknown".into();
    }
    match stat.f_type as i64 {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x9123_683E => "btrfs".into(),
        other => format!("{other:#x}"),
    }
}

pub fn to_json(
    outcome: &Outcome,
    config: Value,
    machine: Value,
    ceiling: Option<&Ceiling>,
) -> Value {
    let mut value = json!({
        "scenario": outcome.scenario,
        "messages": outcome.messages,
        "bytes": outcome.bytes,
        "duration_s": outcome.duration_s,
        "msgs_per_sec": outcome.msgs_per_sec(),
        "mb_per_sec": outcome.mb_per_sec(),
        "errors": outcome.errors,
        "latency_us": outcome.latency(),
        "produce_latency_us": outcome.produce_latency,
        "request_latency_us": outcome.request_latency,
        "e2e_latency_us": outcome.e2e_latency,
        "consumed": outcome.consumed,
        "config": config,
        "machine": machine,
    });
    if let Some(ceiling) = ceiling {
        value["ceiling"] = json!(ceiling);
        value["fraction_of_ceiling"] = json!({
            "direct_write": outcome.mb_per_sec() / ceiling.direct_write_mb_per_sec.max(1e-9),
            "direct_read": outcome.mb_per_sec() / ceiling.direct_read_mb_per_sec.max(1e-9),
            "fdatasync_write": outcome.mb_per_sec() / ceiling.fdatasync_write_mb_per_sec.max(1e-9),
            "loopback_tcp": outcome.mb_per_sec() / ceiling.loopback_tcp_mb_per_sec.max(1e-9),
        });
    }
    value
}

pub fn table(outcome: &Outcome, ceiling: Option<&Ceiling>) -> String {
    let mut out = String::new();
    let p = outcome.latency();
    out.push_str(&format!(
        "{:<10} {:>12} {:>12} {:>10} {:>10} {:>8}\n",
        "scenario", "messages", "msgs/s", "MB/s", "duration", "errors"
    ));
    out.push_str(&format!(
        "{:<10} {:>12} {:>12.0} {:>10.1} {:>9.2}s {:>8}\n",
        outcome.scenario,
        outcome.messages,
        outcome.msgs_per_sec(),
        outcome.mb_per_sec(),
        outcome.duration_s,
        outcome.errors
    ));
    let label = if outcome.scenario == "e2e" { "e2e latency" } else { "produce latency" };
    if p.max > 0 {
        out.push_str(&format!(
            "{label} µs: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}\n",
            p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
        ));
    }
    if outcome.scenario == "e2e" && outcome.produce_latency.max > 0 {
        let q = outcome.produce_latency;
        out.push_str(&format!(
            "produce latency µs: p50 {} p99 {} p99.9 {} max {}\n",
            q.p50, q.p99, q.p999, q.max
        ));
    }
    if outcome.request_latency.max > 0 {
        let r = outcome.request_latency;
        out.push_str(&format!(
            "request latency µs: p50 {} p99 {} p99.9 {} max {}\n",
            r.p50, r.p99, r.p999, r.max
        ));
    }
    if let Some(c) = ceiling.filter(|_| outcome.scenario == "consume") {
        out.push_str(&format!(
            "vs ceiling: {:.2} of direct-IO read ({:.0} MB/s)\n",
            outcome.mb_per_sec() / c.direct_read_mb_per_sec.max(1e-9),
            c.direct_read_mb_per_sec
        ));
    }
    if let Some(c) = ceiling {
        let mb = outcome.mb_per_sec();
        out.push_str(&format!(
            "vs ceilings: {:.2} of direct-IO write ({:.0} MB/s), {:.2} of fdatasync'd write ({:.0} MB/s), {:.2} of loopback TCP ({:.0} MB/s)\n",
            mb / c.direct_write_mb_per_sec.max(1e-9),
            c.direct_write_mb_per_sec,
            mb / c.fdatasync_write_mb_per_sec.max(1e-9),
            c.fdatasync_write_mb_per_sec,
            mb / c.loopback_tcp_mb_per_sec.max(1e-9),
            c.loopback_tcp_mb_per_sec
        ));
    }
    out
}
