//! `spate topic`: create, list, describe, alter and delete topics.

use clap::Subcommand;
use spate_client::Client;

use super::{offset_range, parse_pairs};

#[derive(Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic; its partitions are spread over the broker's shards.
    Create {
        name: String,
        /// Number of partitions (1..10000).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// key=value, repeatable: retention.ms, retention.bytes, segment.bytes, segment.ms, flush.
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// One topic per line, name first.
    List,
    /// Settings, then each partition with its shard, start and end offset.
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
        TopicCommand::Create { name, partitions, configs } => {
            let configs = parse_pairs(&configs, "--config")?;
            let refs: Vec<(&str, &str)> =
                configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .create_topic(&name, partitions, &refs)
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
            let partitions = client
                .partitions(&name)
                .await
                .map_err(|e| format!("cannot describe topic {name:?}: {e}"))?;
            let configs = client.describe_configs(&name).await.map_err(|e| e.to_string())?;
            let settings: Vec<String> =
                configs.iter().map(|(k, v, _)| format!("{k}={v}")).collect();
            println!("topic {name}\t{}", settings.join(" "));
            for partition in partitions {
                let (start, end) = offset_range(&client, &name, partition.partition).await?;
                println!(
                    "partition {}\tshard {}\tstart {}\tend {}",
                    partition.partition, partition.shard, start, end
                );
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
