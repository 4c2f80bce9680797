//! Protocol costs: encoding and decoding a 1 MiB produce request of 1 KiB records, encoding a
//! request of 5,000 one-record batches, and the verification cost of one frame.
//!
//! Run: `cargo bench -p spate-benches --bench protocol`

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use spate_protocol::batch::{self, BatchBuilder, NewRecord};
use spate_protocol::codec::{self, ProducePartitionInput};
use spate_protocol::frame::FrameDecoder;
use spate_protocol::wire;

fn one_mib_batch() -> bytes::BytesMut {
    let mut builder = BatchBuilder::with_capacity(1 << 21);
    let value = Bytes::from(vec![3u8; 1000]);
    for i in 0..1024 {
        builder.push(&NewRecord {
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(value.clone()),
            timestamp: 1_700_000_000_000 + i,
            ..Default::default()
        });
    }
    builder.finish().unwrap()
}

fn produce_request(batch: &[u8]) -> bytes::BytesMut {
    codec::encode_produce(
        1,
        "bench",
        wire::Acks::All,
        1000,
        &[("orders", vec![ProducePartitionInput { partition: 0, records: batch }])],
    )
    .unwrap()
}

fn protocol(c: &mut Criterion) {
    let batch = one_mib_batch();
    let frame_bytes = produce_request(&batch);
    let mut group = c.benchmark_group("protocol");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Bytes(frame_bytes.len() as u64));

    group.bench_function("build 1 MiB batch (1024 x 1 KiB records)", |b| b.iter(one_mib_batch));
    // What a producer of small records pays per record: no key, 100-byte values.
    let small = Bytes::from(vec![5u8; 100]);
    group.throughput(Throughput::Elements(600));
    group.bench_function("build 64 KiB batch (600 x 100 B records, no key)", |b| {
        b.iter(|| {
            let mut builder = BatchBuilder::with_capacity(64 * 1024);
            for i in 0..600 {
                builder.push(&NewRecord {
                    value: Some(small.clone()),
                    timestamp: 1_700_000_000_000 + i / 8,
                    ..Default::default()
                });
            }
            builder.finish().unwrap()
        })
    });
    group.throughput(Throughput::Bytes(frame_bytes.len() as u64));
    group.bench_function("encode 1 MiB produce request", |b| {
        b.iter(|| produce_request(black_box(&batch)))
    });
    // Many partitions, one small batch each (the keyed 5,000-partition workload's requests).
    let small_batch = {
        let mut builder = BatchBuilder::with_capacity(512);
        builder.push(&NewRecord {
            key: Some(Bytes::from_static(b"key-12345")),
            value: Some(Bytes::from(vec![4u8; 200])),
            timestamp: 1_700_000_000_000,
            ..Default::default()
        });
        builder.finish().unwrap()
    };
    let partitions: Vec<ProducePartitionInput<'_>> = (0..5_000)
        .map(|partition| ProducePartitionInput { partition, records: &small_batch })
        .collect();
    let topics = [("keyed", partitions)];
    group.throughput(Throughput::Elements(5_000));
    group.bench_function("encode produce request, 5,000 partitions x 1 small batch", |b| {
        b.iter(|| {
            codec::encode_produce(1, "bench", wire::Acks::All, 1000, black_box(&topics)).unwrap()
        })
    });
    group.throughput(Throughput::Bytes(frame_bytes.len() as u64));
    let frame = FrameDecoder::default().decode(&mut frame_bytes.clone()).unwrap().unwrap();
    group.bench_function("decode 1 MiB produce request (verify + limits)", |b| {
        b.iter(|| {
            let request = codec::decode_request(black_box(&frame.header)).unwrap();
            black_box(request.body_as_produce_request().unwrap().topics().unwrap().len())
        })
    });
    group.bench_function("decode + validate batch (CRC and records)", |b| {
        b.iter(|| {
            let request = codec::decode_request(black_box(&frame.header)).unwrap();
            let produce = request.body_as_produce_request().unwrap();
            let records =
                produce.topics().unwrap().get(0).partitions().unwrap().get(0).records().unwrap();
            black_box(batch::validate(records.bytes()).unwrap())
        })
    });
    group.finish();

    // Verification per small frame: a fetch request for 10 partitions.
    let fetch = wire::RequestT {
        correlation_id: 1,
        client_id: Some("bench".into()),
        api_version: 0,
        body: wire::RequestBodyT::FetchRequest(Box::new(wire::FetchRequestT {
            max_bytes: 1 << 20,
            topics: Some(vec![wire::FetchTopicT {
                name: Some("orders".into()),
                partitions: Some(
                    (0..10)
                        .map(|p| wire::FetchPartitionT {
                            partition: p,
                            fetch_offset: 1000,
                            max_bytes: 1 << 20,
                        })
                        .collect(),
                ),
            }]),
            ..Default::default()
        })),
    };
    let small = codec::encode_request(&fetch).unwrap();
    let mut group = c.benchmark_group("protocol_small");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let small = FrameDecoder::default().decode(&mut small.clone()).unwrap().unwrap();
    group.bench_function("verify fetch request, 10 partitions", |b| {
        b.iter(|| {
            black_box(codec::decode_request(black_box(&small.header)).unwrap().correlation_id())
        })
    });
    group.finish();
}

criterion_group!(benches, protocol);
criterion_main!(benches);
