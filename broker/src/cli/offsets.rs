//! `spate offsets`: the earliest and latest offset of each partition of a topic.

use spate_client::Client;

pub(crate) async fn offsets(client: Client, topic: String) -> Result<(), String> {
    let partitions = client
        .partitions(&topic)
        .await
        .map_err(|e| format!("cannot read offsets of {topic:?}: {e}"))?;
    for partition in partitions {
        let earliest = client
            .list_offset(&topic, partition.partition, spate_client::EARLIEST)
            .await
            .map_err(|e| e.to_string())?;
        let latest = client
            .list_offset(&topic, partition.partition, spate_client::LATEST)
            .await
            .map_err(|e| e.to_string())?;
        println!("{}\t{}\t{}", partition.partition, earliest.unwrap_or(0), latest.unwrap_or(0));
    }
    Ok(())
}
