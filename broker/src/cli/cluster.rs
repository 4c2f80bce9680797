//! `spate cluster`: certificates for trying a cluster out, and the cluster's status.

use std::path::PathBuf;

use clap::Subcommand;
use spate_client::Client;

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Write a cluster CA and one certificate per broker: DIR/ca.pem, DIR/broker-I.pem and
    /// DIR/broker-I.key for I = 1..N (for trying a cluster out; bring your own in production).
    Certs {
        /// Directory to write into (created if absent).
        #[arg(long)]
        out: PathBuf,
        /// Number of brokers (1..=64).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
        brokers: u32,
    },
    /// One line per broker: its id, its address, and `alive` or `dead`, as the broker asked
    /// sees them; then, for each broker of a cluster that answers, `leads N` (partitions it
    /// leads) and `under_replicated M` (of those, partitions missing an in-sync replica); the
    /// metadata log's leader ends its line with `controller`, and the group coordinator (the
    /// committed-offsets log's leader) with `coordinator`.
    Status {
        /// In a cluster, then a line `partitions N  under_replicated M  offline K` over every
        /// topic, and one line per such partition: `partition TOPIC P offline` (no leader
        /// serves it: none elected, or its leader is dead or did not answer), or
        /// `partition TOPIC P under_replicated  replicas A,B,C  isr A,B`.
        #[arg(long)]
        partitions: bool,
    },
}

pub(crate) fn certs(out: PathBuf, brokers: u32) -> Result<(), String> {
    spate_transport::certs::write_cluster_certs(&out, brokers)
        .map_err(|e| format!("cannot write certificates to {}: {e}", out.display()))?;
    println!("wrote {} (CA) and broker-1..{brokers}.pem/.key", out.join("ca.pem").display());
    Ok(())
}

pub(crate) async fn status(client: Client, partitions: bool) -> Result<(), String> {
    let metadata = client.metadata(Some(&[])).await.map_err(|e| e.to_string())?;
    let brokers = metadata.brokers.unwrap_or_default();
    let brokers_len = brokers.len();
    let coordinator = group_coordinator(&client).await;
    let (answered, led) = super::led_partitions(&client, &brokers, None).await;
    for broker in brokers {
        let host = broker.host.unwrap_or_default();
        let address = match broker.port {
            0 => host,
            port if host.contains(':') => format!("[{host}]:{port}"),
            port => format!("{host}:{port}"),
        };
        let state = if broker.alive { "alive" } else { "dead" };
        let mut line = format!("{}\t{address}\t{state}", broker.broker_id);
        if answered.contains(&broker.broker_id) {
            let mine = led.iter().filter(|(id, _, _)| *id == broker.broker_id);
            let under = mine.clone().filter(|(_, _, p)| under_replicated(p)).count();
            line.push_str(&format!("\tleads {}\tunder_replicated {under}", mine.count()));
        }
        if brokers_len > 1 && broker.broker_id == metadata.controller_id {
            line.push_str("\tcontroller");
        }
        if brokers_len > 1 && Some(broker.broker_id) == coordinator {
            line.push_str("\tcoordinator");
        }
        println!("{line}");
    }
    if partitions && brokers_len > 1 {
        let all = client.metadata(None).await.map_err(|e| e.to_string())?;
        let served: std::collections::HashSet<(&str, i32)> =
            led.iter().map(|(_, t, p)| (t.as_str(), p.partition)).collect();
        let mut total = 0;
        let mut offline = Vec::new();
        for topic in all.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            for partition in topic.partitions.into_iter().flatten() {
                total += 1;
                if !served.contains(&(name.as_str(), partition.partition)) {
                    offline.push((name.clone(), partition.partition));
                }
            }
        }
        offline.sort();
        let mut under: Vec<_> = led.iter().filter(|(_, _, p)| under_replicated(p)).collect();
        under.sort_by(|a, b| (&a.1, a.2.partition).cmp(&(&b.1, b.2.partition)));
        println!("partitions {total}\tunder_replicated {}\toffline {}", under.len(), offline.len());
        for (topic, partition) in offline {
            println!("partition {topic} {partition} offline");
        }
        let ids = |ids: &Option<Vec<i32>>| {
            ids.iter().flatten().map(i32::to_string).collect::<Vec<_>>().join(",")
        };
        for (_, topic, p) in under {
            println!(
                "partition {topic} {} under_replicated\treplicas {}\tisr {}",
                p.partition,
                ids(&p.replicas),
                ids(&p.isr)
            );
        }
    }
    Ok(())
}

fn under_replicated(partition: &spate_protocol::wire::PartitionMetadataT) -> bool {
    partition.isr.as_ref().map_or(0, Vec::len) < partition.replicas.as_ref().map_or(0, Vec::len)
}

/// The broker coordinating consumer groups, as the asked broker knows it (`None` if none yet).
async fn group_coordinator(client: &Client) -> Option<i32> {
    use spate_protocol::wire::{self, RequestBodyT, ResponseBodyT};
    let request = wire::FindCoordinatorRequestT { key: Some(String::new()), ..Default::default() };
    match client.call(RequestBodyT::FindCoordinatorRequest(Box::new(request))).await {
        Ok(ResponseBodyT::FindCoordinatorResponse(found)) => Some(found.broker_id),
        _ => None,
    }
}
