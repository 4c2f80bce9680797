//! Reads a topic from the beginning and prints each record, stopping after two seconds with
//! nothing new.
//!
//!     cargo run -p spate-client --example consumer -- [BOOTSTRAP] [TOPIC]

use std::time::{Duration, Instant};

use spate_client::{Client, ClientConfig, Consumer, ConsumerConfig, Seek};

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
            let mut consumer = Consumer::new(client, ConsumerConfig::default());
            for tp in consumer.assign_topic(&topic).await? {
                consumer.seek(&tp, Seek::Earliest)?;
            }
            let mut last_record = Instant::now();
            while last_record.elapsed() < Duration::from_secs(2) {
                for record in consumer.poll().await? {
                    let value =
                        record.value.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    println!("{}/{} @{}: {value}", record.topic, record.partition, record.offset);
                    last_record = Instant::now();
                }
            }
            Ok::<(), spate_client::ClientError>(())
        })
        .unwrap_or_else(|error| {
            eprintln!("consumer: {error}");
            std::process::exit(1);
        });
}
