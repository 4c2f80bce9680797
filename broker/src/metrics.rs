//! Metrics in the Prometheus text exposition format (version 0.0.4), served by shard 0 on
//! `--metrics-listen`. Each shard keeps its own counters (plain `Cell`s: a shard is one thread);
//! shard 0 asks every shard for its samples when scraped.
//!
//! - `spate_requests_total{shard,api}` counter
//! - `spate_received_bytes_total{shard}`, `spate_sent_bytes_total{shard}` counters
//! - `spate_produce_latency_seconds{shard}`, `spate_fetch_latency_seconds{shard}` histograms
//!   (request arrival to reply ready; fetch includes long-poll waiting)
//! - `spate_executor_stalls_total{shard}` counter, `spate_executor_stall_seconds_max{shard}`
//!   gauge: the shard's executor ran one task for too long (a reactor stall, in Seastar's word)
//! - `spate_replication_commit_seconds{shard}` histogram (a cluster: a proposed batch until
//!   it is committed, on its leader)
//! - `spate_partition_high_watermark{topic,partition,shard}`, `spate_partition_log_bytes{...}` gauges
//!
//! The exposition is written by hand: it is a few lines of text, and a registry crate would not
//! help aggregate per-thread counters without atomics on every request.

use std::cell::Cell;
use std::fmt::Write;
use std::time::Duration;

use spate_protocol::wire::ApiKey;

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];
const API_COUNT: usize = 18;

#[derive(Default)]
pub struct Histogram {
    counts: [Cell<u64>; BUCKETS_US.len() + 1],
    sum_us: Cell<u64>,
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = BUCKETS_US.iter().position(|bound| us <= *bound).unwrap_or(BUCKETS_US.len());
        self.counts[bucket].set(self.counts[bucket].get() + 1);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.counts[i].get();
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.counts[BUCKETS_US.len()].get();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us.get() as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[derive(Default)]
pub struct ShardMetrics {
    requests: [Cell<u64>; API_COUNT],
    pub received_bytes: Cell<u64>,
    pub sent_bytes: Cell<u64>,
    pub produce_latency: Histogram,
    pub fetch_latency: Histogram,
    pub commit_latency: Histogram,
    /// Times the shard's 100 ms ticker woke late by more than `limits::EXECUTOR_STALL_WARN`.
    pub executor_stalls: Cell<u64>,
    /// The longest such lateness, in ms.
    pub executor_stall_ms_max: Cell<u64>,
    /// Times a replica on this shard became leader / stopped leading (partitions and the
    /// internal logs), as seen each tick.
    pub leaderships_gained: Cell<u64>,
    pub leaderships_lost: Cell<u64>,
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().saturating_add(n));
}

impl ShardMetrics {
    pub fn request(&self, api: Option<ApiKey>) {
        if let Some(counter) = api.and_then(|api| self.requests.get(api.0 as usize)) {
            add(counter, 1);
        }
    }

    pub fn received(&self, bytes: usize) {
        add(&self.received_bytes, bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        add(&self.sent_bytes, bytes as u64);
    }

    pub fn leaderships(&self, gained: u64, lost: u64) {
        add(&self.leaderships_gained, gained);
        add(&self.leaderships_lost, lost);
    }

    /// This shard's samples (no HELP/TYPE lines: [`header`] writes those once).
    /// `partitions`: topic, partition, high watermark, log bytes, bytes recovery cut as damaged;
    /// `peers`: this shard's replication connections (`None` on a single broker).
    pub fn render(
        &self,
        shard: usize,
        partitions: &[(String, u32, i64, u64, u64)],
        peers: Option<&[spate_transport::ConnectionStats]>,
    ) -> String {
        let mut out = String::new();
        for (i, counter) in self.requests.iter().enumerate() {
            let api = ApiKey(i as u16).variant_name().unwrap_or("Unknown");
            let _ = writeln!(
                out,
                "spate_requests_total{{shard=\"{shard}\",api=\"{api}\"}} {}",
                counter.get()
            );
        }
        let _ = writeln!(
            out,
            "spate_received_bytes_total{{shard=\"{shard}\"}} {}",
            self.received_bytes.get()
        );
        let _ =
            writeln!(out, "spate_sent_bytes_total{{shard=\"{shard}\"}} {}", self.sent_bytes.get());
        let labels = format!("shard=\"{shard}\"");
        self.produce_latency.render(&mut out, "spate_produce_latency_seconds", &labels);
        self.fetch_latency.render(&mut out, "spate_fetch_latency_seconds", &labels);
        self.commit_latency.render(&mut out, "spate_replication_commit_seconds", &labels);
        let _ =
            writeln!(out, "spate_executor_stalls_total{{{labels}}} {}", self.executor_stalls.get());
        let _ = writeln!(
            out,
            "spate_executor_stall_seconds_max{{{labels}}} {}",
            self.executor_stall_ms_max.get() as f64 / 1e3
        );
        if peers.is_some() {
            let gained = self.leaderships_gained.get();
            let _ = writeln!(out, "spate_leaderships_gained_total{{{labels}}} {gained}");
            let lost = self.leaderships_lost.get();
            let _ = writeln!(out, "spate_leaderships_lost_total{{{labels}}} {lost}");
        }
        for peer in peers.unwrap_or_default() {
            let direction = if peer.outbound { "out" } else { "in" };
            let labels =
                format!("shard=\"{shard}\",peer=\"{}\",direction=\"{direction}\"", peer.broker_id);
            let _ = writeln!(out, "spate_peer_rtt_seconds{{{labels}}} {}", peer.rtt.as_secs_f64());
            let _ =
                writeln!(out, "spate_peer_sent_packets_total{{{labels}}} {}", peer.sent_packets);
            let _ =
                writeln!(out, "spate_peer_lost_packets_total{{{labels}}} {}", peer.lost_packets);
        }
        for (topic, partition, high_watermark, bytes, recovery_cut) in partitions {
            let topic = label(topic);
            let labels = format!("topic=\"{topic}\",partition=\"{partition}\",shard=\"{shard}\"");
            let _ = writeln!(out, "spate_partition_high_watermark{{{labels}}} {high_watermark}");
            let _ = writeln!(out, "spate_partition_log_bytes{{{labels}}} {bytes}");
            let _ = writeln!(out, "spate_partition_recovery_cut_bytes{{{labels}}} {recovery_cut}");
        }
        out
    }
}

/// HELP and TYPE lines for every metric, written once per scrape.
pub fn header() -> String {
    [
        ("spate_requests_total", "counter", "Requests handled, by API."),
        ("spate_received_bytes_total", "counter", "Bytes of request frames received."),
        ("spate_sent_bytes_total", "counter", "Bytes of response frames sent."),
        (
            "spate_executor_stalls_total",
            "counter",
            "Times the shard's executor ran nothing else for longer than the stall threshold.",
        ),
        ("spate_executor_stall_seconds_max", "gauge", "The shard's longest executor stall."),
        ("spate_produce_latency_seconds", "histogram", "Produce request arrival to reply ready."),
        (
            "spate_fetch_latency_seconds",
            "histogram",
            "Fetch request arrival to reply ready, long polling included.",
        ),
        (
            "spate_replication_commit_seconds",
            "histogram",
            "A replicated batch from its proposal on the leader until committed.",
        ),
        (
            "spate_partition_high_watermark",
            "gauge",
            "Offset after the last record readers can see.",
        ),
        ("spate_partition_log_bytes", "gauge", "Bytes of the partition's log segments."),
        ("spate_partition_recovery_cut_bytes", "gauge", "Bytes the last recovery cut from the partition as damaged (a torn or lost block): acknowledged data may be lost."),
        ("spate_consumer_lag", "gauge", "Log end offset minus the group's committed offset."),
        ("spate_partitions_led", "gauge", "Replicated partitions this broker leads."),
        ("spate_controller", "gauge", "1 on the broker that leads the cluster's metadata log."),
        (
            "spate_under_replicated_partitions",
            "gauge",
            "Partitions led here with fewer in-sync replicas than replicas.",
        ),
        (
            "spate_replica_lag_offsets",
            "gauge",
            "A follower's log end behind its leader's, in offsets (on the leader).",
        ),
        (
            "spate_partition_leader_term",
            "gauge",
            "The replica's current term; it rises with every election.",
        ),
        (
            "spate_replica_lag_bytes",
            "gauge",
            "Bytes of the leader's log past a follower's log end (on the leader).",
        ),
        (
            "spate_leaderships_gained_total",
            "counter",
            "Times a replica on this shard became leader (elections won, transfers received).",
        ),
        (
            "spate_leaderships_lost_total",
            "counter",
            "Times a replica on this shard stopped leading (a newer term, a transfer, shutdown).",
        ),
        (
            "spate_peer_rtt_seconds",
            "gauge",
            "QUIC's smoothed round-trip time of a replication connection to a peer broker.",
        ),
        (
            "spate_peer_sent_packets_total",
            "counter",
            "Packets sent on a replication connection (from zero with each connection).",
        ),
        (
            "spate_peer_lost_packets_total",
            "counter",
            "Packets of a replication connection QUIC declared lost and sent again.",
        ),
    ]
    .iter()
    .map(|(name, kind, help)| format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"))
    .collect()
}

/// A label value escaped for the Prometheus text format: backslash, double quote and newline.
pub fn label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("plain-1.x"), "plain-1.x");
        assert_eq!(label("a\"b\nc\\d"), "a\\\"b\\nc\\\\d");
    }

    #[test]
    fn histograms_are_cumulative_and_samples_are_labelled() {
        let metrics = ShardMetrics::default();
        metrics.produce_latency.record(Duration::from_micros(80));
        metrics.produce_latency.record(Duration::from_micros(80));
        metrics.produce_latency.record(Duration::from_secs(10));
        metrics.request(Some(ApiKey::Produce));
        metrics.received(100);
        let text = metrics.render(1, &[("orders".into(), 0, 42, 4096, 0)], None);
        assert!(
            text.contains("spate_produce_latency_seconds_bucket{shard=\"1\",le=\"0.0001\"} 2"),
            "{text}"
        );
        assert!(text.contains("spate_produce_latency_seconds_bucket{shard=\"1\",le=\"+Inf\"} 3"));
        assert!(text.contains("spate_produce_latency_seconds_count{shard=\"1\"} 3"));
        assert!(text.contains("spate_requests_total{shard=\"1\",api=\"Produce\"} 1"));
        assert!(text.contains("spate_received_bytes_total{shard=\"1\"} 100"));
        assert!(text.contains(
            "spate_partition_high_watermark{topic=\"orders\",partition=\"0\",shard=\"1\"} 42"
        ));
        assert!(header().contains("# TYPE spate_fetch_latency_seconds histogram"));
    }
}
