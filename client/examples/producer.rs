//! Sends ten keyed messages to a topic on a local broker and prints where each landed.
//!
//!     cargo run -p spate-client --example producer -- [BOOTSTRAP] [TOPIC]

use spate_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};

fn main() {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9292".into());
    let topic = args.next().unwrap_or_else(|| "example".into());
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("executor")
        .run(async move {
            let client =
                Client::connect(ClientConfig { bootstrap, ..ClientConfig::default() }).await?;
            if client.partition_count(&topic).await.is_err() {
                client.create_topic(&topic, 3, &[]).await?;
            }
            let producer = Producer::new(client, ProducerConfig::default())?;
            let mut deliveries = Vec::new();
            for i in 0..10 {
                let record = ProducerRecord::new(topic.clone(), format!("hello {i}"))
                    .with_key(format!("user-{}", i % 3));
                deliveries.push(producer.send(record).await?);
            }
            producer.flush().await?;
            for (i, delivery) in deliveries.into_iter().enumerate() {
                let report = delivery.await?;
                println!("message {i}: partition {} offset {}", report.partition, report.offset);
            }
            Ok::<(), spate_client::ClientError>(())
        })
        .unwrap_or_else(|error| {
            eprintln!("producer: {error}");
            std::process::exit(1);
        });
}
