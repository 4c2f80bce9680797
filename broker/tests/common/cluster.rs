//! A cluster of real brokers on loopback: certificates, nodes and their ports, status polling.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{free_ports, Broker, SPATE};

pub struct Node {
    pub id: u32,
    pub port: u16,
    pub replication: String,
}

pub fn nodes(count: u32) -> Vec<Node> {
    (1..=count)
        .map(|id| {
            let port = free_ports();
            // The base's fourth port is free for TCP and unused by the broker: its UDP twin
            // carries membership, and the UDP ports after it each shard's replication.
            Node { id, port, replication: format!("127.0.0.1:{}", port + 3) }
        })
        .collect()
}

pub fn peers(nodes: &[Node]) -> String {
    nodes.iter().map(|n| format!("{}@{}", n.id, n.replication)).collect::<Vec<_>>().join(",")
}

pub fn start(dir: &Path, node: &Node, peers: &str, certs: &Path) -> Broker {
    start_with_cores(dir, node, peers, certs, 2)
}

/// A one-core cluster broker that also serves metrics on its client port + 2 (free: with one
/// core only port + 1 is a shard's).
pub fn start_small(dir: &Path, node: &Node, peers: &str, certs: &Path) -> Broker {
    let metrics = format!("127.0.0.1:{}", node.port + 2);
    start_with(dir, node, peers, certs, 1, &["--metrics-listen", &metrics])
}

pub fn start_with_cores(
    dir: &Path,
    node: &Node,
    peers: &str,
    certs: &Path,
    cores: usize,
) -> Broker {
    start_with(dir, node, peers, certs, cores, &[])
}

fn start_with(
    dir: &Path,
    node: &Node,
    peers: &str,
    certs: &Path,
    cores: usize,
    extra: &[&str],
) -> Broker {
    let id = node.id.to_string();
    let ca = certs.join("ca.pem");
    let cert = certs.join(format!("broker-{}.pem", node.id));
    let key = certs.join(format!("broker-{}.key", node.id));
    let mut args = vec![
        "--node-id",
        &id,
        "--replication-listen",
        &node.replication,
        "--peers",
        peers,
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Broker::start_with_cores(&dir.join(format!("broker-{}", node.id)), node.port, cores, &args)
}

/// `spate cluster status` as (id, address, state) lines.
pub fn status(broker: &Broker) -> Vec<(u32, String, String)> {
    broker
        .ok(&["cluster", "status"])
        .lines()
        .map(|line| {
            // id, address, state; then, in a cluster, `leads N under_replicated M` and, on
            // the metadata leader's line, `controller`, on the group coordinator's
            // `coordinator`.
            let words: Vec<&str> = line.split_whitespace().collect();
            assert!((3..=9).contains(&words.len()) && words.len() != 6, "{line}");
            (words[0].parse().unwrap(), words[1].to_string(), words[2].to_string())
        })
        .collect()
}

/// Polls `status` until `want` holds (bounded), and returns the last status.
pub fn wait_for(broker: &Broker, what: &str, want: impl Fn(&[(u32, String, String)]) -> bool) {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < Duration::from_secs(30) {
        last = status(broker);
        if want(&last) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: never happened; last status {last:?}");
}

pub fn state_of(status: &[(u32, String, String)], id: u32) -> &str {
    &status.iter().find(|s| s.0 == id).expect("listed").2
}

/// `spate cluster certs` for `count` brokers into `dir`.
pub fn make_certs(dir: &Path, count: u32) {
    let made = std::process::Command::new(SPATE)
        .args(["cluster", "certs", "--out", dir.to_str().unwrap(), "--brokers", &count.to_string()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}
