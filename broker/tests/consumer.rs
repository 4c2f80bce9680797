//! The consumer against a real broker process, reading from disk: every record once and in
//! order (through the broker's read-ahead), and a seek, pause or resume between polls wins over
//! the fetch the consumer already sent ahead.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use spate_client::{
    Acks, Client, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, Seek,
    TopicPartition,
};

/// Values that say which partition and offset they were written to.
fn value(partition: u32, offset: i64) -> Bytes {
    let mut value = format!("{partition}:{offset}:").into_bytes();
    value.resize(2000, b'x');
    Bytes::from(value)
}

const PER_PARTITION: i64 = 12_000;

#[test]
fn a_consumer_reads_from_disk_in_order_and_seek_or_pause_between_polls_wins() {
    let dir = temp_dir();
    let mut broker = Broker::start(dir.path());
    // Small segments: reads cross segment ends, not just read-ahead buffers.
    broker.ok(&["topic", "create", "c", "--partitions", "2", "--config", "segment.bytes=8392704"]);
    let address = broker.address();
    run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let producer = Producer::new(
            client,
            ProducerConfig {
                acks: Acks::All,
                linger: Duration::from_millis(2),
                ..Default::default()
            },
        )
        .unwrap();
        let mut deliveries = Vec::new();
        for offset in 0..PER_PARTITION {
            for partition in 0..2 {
                let record =
                    ProducerRecord::new("c", value(partition, offset)).with_partition(partition);
                deliveries.push(producer.send(record).await.unwrap());
            }
        }
        producer.flush().await.unwrap();
        for delivery in deliveries {
            delivery.await.unwrap();
        }
    });
    // A restart empties the tail caches: everything is read from the segments.
    assert!(broker.sigterm().success());
    let broker = Broker::start(dir.path());
    let address = broker.address();
    run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let mut consumer = Consumer::new(
            client,
            ConsumerConfig {
                fetch_max_wait: Duration::from_millis(50),
                partition_max_bytes: 256 * 1024,
                ..ConsumerConfig::default()
            },
        );
        let p0 = TopicPartition { topic: "c".into(), partition: 0 };
        let p1 = TopicPartition { topic: "c".into(), partition: 1 };
        consumer.assign(&[p0.clone(), p1.clone()]).unwrap();
        consumer.seek(&p0, Seek::Earliest).unwrap();
        consumer.seek(&p1, Seek::Earliest).unwrap();
        // Next offset expected per partition; every record is checked against it.
        let mut next: BTreeMap<u32, i64> = BTreeMap::from([(0, 0), (1, 0)]);
        let (mut seeked, mut paused_at, mut resumed) = (false, None, false);
        let started = Instant::now();
        while next.values().any(|n| *n < PER_PARTITION) {
            assert!(started.elapsed() < Duration::from_secs(60), "stuck at {next:?}");
            let records = consumer.poll().await.unwrap();
            for record in &records {
                let expected = next.get_mut(&record.partition).unwrap();
                assert_eq!(record.offset, *expected, "partition {}", record.partition);
                assert_eq!(record.value.as_ref(), Some(&value(record.partition, record.offset)));
                assert_eq!(&*record.topic, "c");
                *expected += 1;
                if record.partition == 0 {
                    assert!(paused_at.is_none() || resumed, "a record of paused partition 0");
                }
            }
            if records.is_empty() {
                continue;
            }
            // Partition 0 a third of the way: seek back (the fetch sent ahead is for the old
            // position, and must not be used).
            if !seeked && next[&0] > PER_PARTITION / 3 {
                seeked = true;
                consumer.seek(&p0, Seek::Offset(100)).unwrap();
                next.insert(0, 100);
            } else if seeked && paused_at.is_none() && next[&0] > PER_PARTITION / 2 {
                consumer.pause(std::slice::from_ref(&p0));
                paused_at = Some(next[&1]);
            } else if let Some(at) = paused_at.filter(|_| !resumed) {
                // Resume once partition 1 moved on well past the pause.
                if next[&1] > at + 2_000 || next[&1] >= PER_PARTITION {
                    consumer.resume(std::slice::from_ref(&p0));
                    resumed = true;
                }
            }
        }
        assert!(seeked && resumed);
        assert_eq!(consumer.position(&p0), Some(PER_PARTITION));
        assert_eq!(consumer.position(&p1), Some(PER_PARTITION));
    });
}
