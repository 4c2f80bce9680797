//! Cluster membership through real `spate` processes on loopback: certificates from
//! `spate cluster certs`, brokers that see each other over QUIC with mutual TLS, a dead broker
//! shown dead, and a broker with a certificate from another CA kept out.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

#[test]
fn brokers_see_each_other_and_a_killed_one_goes_dead() {
    let dir = temp_dir();
    let certs = dir.path().join("certs");
    let made = std::process::Command::new(SPATE)
        .args(["cluster", "certs", "--out", certs.to_str().unwrap(), "--brokers", "3"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    for file in ["ca.pem", "broker-1.pem", "broker-1.key", "broker-3.pem", "broker-3.key"] {
        assert!(certs.join(file).is_file(), "{file} written");
    }
    let nodes = nodes(3);
    let peers = peers(&nodes);
    let mut brokers: Vec<Broker> =
        nodes.iter().map(|node| start(dir.path(), node, &peers, &certs)).collect();
    for broker in &brokers {
        wait_for(broker, "all three alive", |s| {
            s.len() == 3 && s.iter().all(|(_, _, state)| state == "alive")
        });
    }
    // Each broker's client address, learnt from its heartbeats.
    let seen = status(&brokers[0]);
    for node in &nodes {
        let address = &seen.iter().find(|s| s.0 == node.id).unwrap().1;
        assert_eq!(address, &format!("127.0.0.1:{}", node.port));
    }
    // A topic (replicated over the three by default) takes a produce through broker 2.
    brokers[1].ok(&["topic", "create", "t", "--partitions", "2"]);
    let produced = brokers[1].cli_with_input(&["produce", "t", "--partition", "1"], Some(b"x\n"));
    assert!(produced.status.success());
    brokers[2].sigkill();
    wait_for(&brokers[0], "broker 3 dead", |s| {
        state_of(s, 3) == "dead" && state_of(s, 2) == "alive"
    });
    wait_for(&brokers[1], "broker 3 dead on broker 2", |s| state_of(s, 3) == "dead");
    // -b takes a list and keeps working while any broker in it is up.
    let bootstrap = format!("{},{}", brokers[2].address(), brokers[0].address());
    let listed = std::process::Command::new(SPATE)
        .args(["cluster", "status", "-b", &bootstrap])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 3);
    // Restarted, broker 3 hears the others again within a few heartbeats: they dial its new
    // run as soon as its heartbeats show it restarted, rather than sending into their
    // connection to its previous run until QUIC's 10 s idle timeout (at least 6 s from here).
    brokers[2] = start(dir.path(), &nodes[2], &peers, &certs);
    let restarted = Instant::now();
    // Bounded: 5 s.
    while status(&brokers[2]).iter().any(|(_, _, state)| state != "alive") {
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "the restarted broker does not hear its peers: {:?}",
            status(&brokers[2])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_broker_with_a_certificate_from_another_ca_stays_out() {
    let dir = temp_dir();
    let certs = dir.path().join("certs");
    let foreign = dir.path().join("foreign");
    for (out, count) in [(&certs, "2"), (&foreign, "2")] {
        let made = std::process::Command::new(SPATE)
            .args(["cluster", "certs", "--out", out.to_str().unwrap(), "--brokers", count])
            .output()
            .unwrap();
        assert!(made.status.success());
    }
    let nodes = nodes(2);
    let peers = peers(&nodes);
    let first = start(dir.path(), &nodes[0], &peers, &certs);
    // Broker 2 holds a certificate for id 2, but from another CA.
    let intruder = start(dir.path(), &nodes[1], &peers, &foreign);
    // Long enough for many heartbeats and reconnects either way.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(state_of(&status(&first), 2), "dead", "broker 1 never accepts the intruder");
    assert_eq!(state_of(&status(&intruder), 1), "dead", "nor does the intruder accept broker 1");
}

#[test]
fn cluster_flags_come_all_together_or_not_at_all() {
    let output = std::process::Command::new(SPATE)
        .args(["serve", "--node-id", "1", "--data-dir", "/nonexistent/never-used"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--replication-listen"), "{stderr}");
}

/// Polls `broker`'s log until it contains `text` (bounded: 20 s).
fn wait_log(broker: &Broker, text: &str) -> String {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(&broker.log).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never logged {text:?}:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Brokers register (client address, shard count) through the metadata log; one that runs
/// another number of cores than the registered brokers is refused with a clear error, since
/// replicas talk shard to shard.
#[test]
fn a_broker_with_another_core_count_is_refused_at_registration() {
    let dir = temp_dir();
    let certs = dir.path().join("certs");
    make_certs(&certs, 3);
    let nodes = nodes(3);
    let peers = peers(&nodes);
    let first = start_with_cores(dir.path(), &nodes[0], &peers, &certs, 1);
    let second = start_with_cores(dir.path(), &nodes[1], &peers, &certs, 1);
    for broker in [&first, &second] {
        wait_log(broker, "registered in the metadata log");
    }
    let odd = start_with_cores(dir.path(), &nodes[2], &peers, &certs, 2);
    let log = wait_log(&odd, "the cluster refused this broker");
    assert!(log.contains("broker 3 runs 2 shards") && log.contains("--cores"), "{log}");
    // The registered brokers' catalogs hold both registrations (and not the refused one).
    for broker in [&first, &second] {
        let started = Instant::now();
        let registered = || {
            let catalog =
                std::fs::read_to_string(broker.dir.join("meta").join("catalog.toml")).unwrap();
            catalog.matches("[brokers.").count()
        };
        // Bounded: 20 s for the follower to apply both registrations.
        while registered() != 2 {
            assert!(started.elapsed() < Duration::from_secs(20), "registrations not applied");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
