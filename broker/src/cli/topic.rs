//! `spate topic`: create, list, describe, alter and delete topics.

use clap::Subcommand;
use spate_client::Client;

use super::{offset_range, parse_pairs};

#[derive(Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic; its partitions are spread over the broker's shards (and in a cluster
    /// their replicas over the brokers).
    Create {
        name: String,
        /// Number of partitions (1..10000).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Copies of each partition in a cluster (default: min(3, brokers); 1 on a single
        /// broker).
        #[arg(long)]
        replication_factor: Option<u16>,
        /// key=value, repeatable: retention.ms, retention.bytes, segment.bytes, segment.ms, flush.
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// One topic per line, name first.
    List,
    /// Settings, then one line per partition: its shard, start and end offset, leader,
    /// replicas, in-sync replicas, high watermark and each replica's log end.
    Describe { name: String },
    /// Change settings (an empty value resets one to the broker's default).
    Alter {
        name: String,
        /// key=value, repeatable (as for create).
        #[arg(long = "config", required = true)]
        configs: Vec<String>,
    },
    /// Delete the topic and its data.
    Delete { name: String },
}

pub(crate) async fn topic(client: Client, command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create { name, partitions, replication_factor, configs } => {
            let configs = parse_pairs(&configs, "--config")?;
            let refs: Vec<(&str, &str)> =
                configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .create_replicated_topic(&name, partitions, replication_factor.unwrap_or(0), &refs)
                .await
                .map_err(|e| format!("cannot create topic {name:?}: {e}"))?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            let metadata = client.metadata(None).await.map_err(|e| e.to_string())?;
            for topic in metadata.topics.into_iter().flatten() {
                let partitions = topic.partitions.map_or(0, |p| p.len());
                println!("{}\t{partitions} partitions", topic.name.unwrap_or_default());
            }
        }
        TopicCommand::Describe { name } => {
            let metadata = client
                .metadata(Some(&[name.as_str()]))
                .await
                .map_err(|e| format!("cannot describe topic {name:?}: {e}"))?;
            let topic = metadata.topics.into_iter().flatten().next();
            let Some(partitions) =
                topic.filter(|t| t.partitions.is_some()).and_then(|t| t.partitions)
            else {
                return Err(format!("cannot describe topic {name:?}: it does not exist"));
            };
            let configs = client.describe_configs(&name).await.map_err(|e| e.to_string())?;
            let settings: Vec<String> =
                configs.iter().map(|(k, v, _)| format!("{k}={v}")).collect();
            println!("topic {name}\t{}", settings.join(" "));
            let brokers = metadata.brokers.unwrap_or_default();
            let leaders = leaders_view(&client, &name, &brokers).await;
            for partition in partitions {
                let partition = leaders.get(&partition.partition).cloned().unwrap_or(partition);
                let p = partition.partition as u32;
                let (start, end) = match offset_range(&client, &name, p).await {
                    Ok(range) => (range.0.to_string(), range.1.to_string()),
                    Err(_) => ("-".into(), "-".into()),
                };
                let ids = |ids: &Option<Vec<i32>>| {
                    let ids: Vec<String> = ids.iter().flatten().map(i32::to_string).collect();
                    if ids.is_empty() {
                        "-".to_string()
                    } else {
                        ids.join(",")
                    }
                };
                let leader = match partition.leader_broker {
                    -1 => "-".to_string(),
                    id => id.to_string(),
                };
                let ends: Vec<String> = partition
                    .replicas
                    .iter()
                    .flatten()
                    .zip(partition.replica_log_ends.iter().flatten())
                    .filter(|(_, end)| **end >= 0)
                    .map(|(replica, end)| format!("{replica}:{end}"))
                    .collect();
                let mut line = format!(
                    "partition {p}\tshard {}\tstart {start}\tend {end}\tleader {leader}\treplicas {}\tisr {}",
                    partition.shard,
                    ids(&partition.replicas),
                    ids(&partition.isr),
                );
                if partition.high_watermark >= 0 {
                    line.push_str(&format!("\thw {}", partition.high_watermark));
                }
                if !ends.is_empty() {
                    line.push_str(&format!("\tlog_ends {}", ends.join(",")));
                }
                println!("{line}");
            }
        }
        TopicCommand::Alter { name, configs } => {
            let configs = parse_pairs(&configs, "--config")?;
            let refs: Vec<(&str, &str)> =
                configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .alter_configs(&name, &refs)
                .await
                .map_err(|e| format!("cannot alter topic {name:?}: {e}"))?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(&name)
                .await
                .map_err(|e| format!("cannot delete topic {name:?}: {e}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// In a cluster, what each partition's leader says of it (only a leader knows the in-sync
/// replicas, the high watermark and its followers' log ends): a partition's answer is kept from
/// the broker that leads it.
async fn leaders_view(
    client: &Client,
    topic: &str,
    brokers: &[spate_protocol::wire::BrokerInfoT],
) -> std::collections::HashMap<i32, spate_protocol::wire::PartitionMetadataT> {
    let mut view = std::collections::HashMap::new();
    for (_, _, partition) in super::led_partitions(client, brokers, Some(topic)).await.1 {
        view.insert(partition.partition, partition);
    }
    view
}
