//! Durability through a real broker process: kill -9 mid-stream, retention while serving, a full
//! disk. The producer and consumer are the Rust client, in this process.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use spate_client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, OffsetReset, Producer,
    ProducerConfig, ProducerRecord, Seek, TopicPartition,
};
use spate_protocol::wire::ErrorCode;

fn client_config(broker: &str) -> ClientConfig {
    ClientConfig {
        bootstrap: broker.to_string(),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    }
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::All,
        retries: 0,
        linger: Duration::from_millis(1),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

/// Reads every partition of `topic` from `from` to the end: (partition, offset) -> value.
async fn read_all(client: Client, topic: &str) -> BTreeMap<(u32, i64), Bytes> {
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig { fetch_max_wait: Duration::from_millis(100), ..ConsumerConfig::default() },
    );
    for tp in consumer.assign_topic(topic).await.unwrap() {
        consumer.seek(&tp, Seek::Earliest).unwrap();
    }
    let mut out = BTreeMap::new();
    let mut idle = Instant::now();
    // Until nothing new for 500 ms (bounded by the data).
    while idle.elapsed() < Duration::from_millis(500) {
        for record in consumer.poll().await.unwrap() {
            out.insert((record.partition, record.offset), record.value.unwrap_or_default());
            idle = Instant::now();
        }
    }
    out
}

#[test]
fn kill_9_during_an_acks_all_stream_loses_nothing_acknowledged() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "t", "--partitions", "3", "--config", "flush=always"]);
    let address = broker.address();
    let killed = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let killed = killed.clone();
        std::thread::spawn(move || {
            run(async move {
                let client = Client::connect(client_config(&address)).await.unwrap();
                let producer = Producer::new(client, producer_config()).unwrap();
                let mut acked = Vec::new();
                let started = Instant::now();
                // Bounded in count and time; ends at the first failure after the kill.
                'outer: for round in 0..10_000u64 {
                    if started.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                    let mut pending = Vec::new();
                    for i in 0..50u64 {
                        let value =
                            format!("message-{round}-{i}-{}", "x".repeat((i % 7) as usize * 30));
                        match producer.send(ProducerRecord::new("t", value.clone())).await {
                            Ok(delivery) => pending.push((value, delivery)),
                            Err(_) => break 'outer,
                        }
                    }
                    for (value, delivery) in pending {
                        match delivery.await {
                            Ok(report) => acked.push((report.partition, report.offset, value)),
                            Err(_) => break 'outer,
                        }
                    }
                    if killed.load(Ordering::SeqCst) && round > 0 {
                        // Keep going until the producer notices.
                    }
                }
                acked
            })
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    broker.sigkill();
    killed.store(true, Ordering::SeqCst);
    let acked = producer_thread.join().unwrap();
    assert!(acked.len() > 50, "only {} acknowledged before the kill", acked.len());
    let broker = Broker::start_on(dir.path(), port, &[]);
    let address = broker.address();
    let stored = run(async move {
        read_all(Client::connect(client_config(&address)).await.unwrap(), "t").await
    });
    for (partition, offset, value) in &acked {
        let found = stored.get(&(*partition, *offset));
        assert_eq!(
            found.map(|b| &b[..]),
            Some(value.as_bytes()),
            "acknowledged {partition}/{offset} lost or changed"
        );
    }
    println!(
        "{} acknowledged messages all present after kill -9 ({} stored)",
        acked.len(),
        stored.len()
    );
}

#[test]
fn retention_runs_while_serving_and_consumers_below_the_start_reset() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    // Smallest segments, and keep about one of them.
    broker.ok(&[
        "topic",
        "create",
        "r",
        "--partitions",
        "1",
        "--config",
        "segment.bytes=4198400",
        "--config",
        "retention.bytes=4300000",
    ]);
    let address = broker.address();
    run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let producer =
            Producer::new(client.clone(), ProducerConfig { retries: 3, ..producer_config() })
                .unwrap();
        let value = Bytes::from(vec![b'v'; 1000]);
        let mut deliveries = Vec::new();
        for _ in 0..14_000 {
            deliveries.push(
                producer
                    .send(ProducerRecord {
                        topic: "r".into(),
                        value: Some(value.clone()),
                        ..Default::default()
                    })
                    .await
                    .unwrap(),
            );
        }
        producer.flush().await.unwrap();
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        // The retention pass runs every 5 s on the broker; wait (bounded) for it.
        let started = Instant::now();
        let mut start = 0;
        while start == 0 && started.elapsed() < Duration::from_secs(30) {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            start = client.list_offset("r", 0, spate_client::EARLIEST).await.unwrap().unwrap();
        }
        assert!(start > 0, "retention never advanced the start offset");
        let tp = TopicPartition { topic: "r".into(), partition: 0 };
        // Fail policy: the error reaches the caller.
        let mut strict = Consumer::new(
            client.clone(),
            ConsumerConfig {
                offset_reset: OffsetReset::Fail,
                fetch_max_wait: Duration::from_millis(50),
                ..ConsumerConfig::default()
            },
        );
        strict.assign(std::slice::from_ref(&tp)).unwrap();
        strict.seek(&tp, Seek::Offset(0)).unwrap();
        let error = strict.poll().await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error}");
        // Earliest policy: resets to the new start and reads on.
        let mut lenient = Consumer::new(
            client.clone(),
            ConsumerConfig {
                offset_reset: OffsetReset::Earliest,
                fetch_max_wait: Duration::from_millis(50),
                ..ConsumerConfig::default()
            },
        );
        lenient.assign(std::slice::from_ref(&tp)).unwrap();
        lenient.seek(&tp, Seek::Offset(0)).unwrap();
        let mut records = Vec::new();
        for _ in 0..20 {
            records = lenient.poll().await.unwrap();
            if !records.is_empty() {
                break;
            }
        }
        assert!(!records.is_empty());
        assert!(records[0].offset >= start, "read {} below the start {start}", records[0].offset);
    });
}

#[test]
#[ignore = "needs root to mount a tmpfs; scripts/test.sh runs ignored tests as root (CI does)"]
fn a_full_disk_gives_a_clear_error_and_produce_resumes_after_space_is_freed() {
    let mount = Tmpfs::mount("24m");
    let ballast = mount.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 4 * 1024 * 1024]).unwrap();
    let data = mount.path().join("data");
    let mut broker = Broker::start_on(&data, free_ports(), &[]);
    broker.ok(&[
        "topic",
        "create",
        "full",
        "--config",
        "segment.bytes=4198400",
        "--config",
        "flush=always",
    ]);
    let address = broker.address();
    run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let producer = Producer::new(client.clone(), producer_config()).unwrap();
        let value = Bytes::from(vec![b'f'; 4000]);
        let mut acked = 0u64;
        let mut failure: Option<ClientError> = None;
        // Bounded: 24 MiB of space, 4 KB records.
        for _ in 0..20_000 {
            let delivery = producer
                .send(ProducerRecord {
                    topic: "full".into(),
                    value: Some(value.clone()),
                    ..Default::default()
                })
                .await
                .unwrap();
            match delivery.await {
                Ok(_) => acked += 1,
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let failure = failure.expect("the disk filled up");
        assert_eq!(failure.code(), Some(ErrorCode::DiskFull), "{failure}");
        // The broker stays up and answers; what was acknowledged is readable.
        let end = client.list_offset("full", 0, spate_client::LATEST).await.unwrap().unwrap();
        assert_eq!(end as u64, acked);
        std::fs::remove_file(&ballast).unwrap();
        let delivery = producer
            .send(ProducerRecord {
                topic: "full".into(),
                value: Some(value.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let report = delivery.await.expect("produce works again once space is freed");
        assert_eq!(report.offset, end);
    });
    assert!(broker.sigterm().success());
}
