//! `spate offsets`: the earliest and latest offset of each partition of a topic.

use spate_client::Client;

use super::offset_range;

pub(crate) async fn offsets(client: Client, topic: String) -> Result<(), String> {
    let partitions = client
        .partitions(&topic)
        .await
        .map_err(|e| format!("cannot read offsets of {topic:?}: {e}"))?;
    for partition in partitions {
        let (earliest, latest) = offset_range(&client, &topic, partition.partition).await?;
        println!("{}\t{}\t{}", partition.partition, earliest, latest);
    }
    Ok(())
}
