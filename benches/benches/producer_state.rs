//! The cost of idempotence on the append path: one producer-table check (and record) per
//! batch, as `Log::append_batches` does under its state borrow, for a partition with 1, 1,000
//! and 10,000 (the limit) producers; a duplicate's lookup; a non-idempotent batch, which is not
//! checked at all; and, for scale, the validation every appended 64 KiB batch already gets.
//!
//! Run: `cargo bench -p spate-benches --bench producer_state`

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use spate_protocol::batch::{self, BatchBuilder, BatchHeader, NewRecord};
use spate_storage::producers::{ProducerTable, Verdict};

/// The header of a 64-record batch from `producer_id` starting at `sequence`.
fn header(producer_id: i64, sequence: i32) -> BatchHeader {
    BatchHeader {
        base_offset: 0,
        batch_length: 64 * 1024,
        leader_term: 0,
        version: 1,
        crc: 0,
        attributes: 0,
        last_offset_delta: 63,
        first_timestamp: 0,
        max_timestamp: 0,
        producer_id,
        producer_epoch: 0,
        base_sequence: sequence,
        record_count: 64,
    }
}

/// `sequence + delta`, wrapping past `i32::MAX` to 0 as sequences do.
fn advance(sequence: i32, delta: i64) -> i32 {
    (i64::from(sequence) + delta).rem_euclid(i64::from(i32::MAX) + 1) as i32
}

fn producer_state(c: &mut Criterion) {
    let mut group = c.benchmark_group("producer_state");
    group
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for producers in [1i64, 1_000, 10_000] {
        let mut table = ProducerTable::default();
        let mut next = vec![0i32; producers as usize];
        let mut offset = 0i64;
        // Each producer has its 5 batches remembered, as in steady state.
        for _ in 0..5 {
            for id in 0..producers {
                let h = header(id, next[id as usize]);
                table.record(&h, offset, 0);
                next[id as usize] = advance(next[id as usize], 64);
                offset += 64;
            }
        }
        let mut turn = 0i64;
        group.bench_function(BenchmarkId::new("check+record new batch", producers), |b| {
            b.iter(|| {
                let id = turn % producers;
                turn += 1;
                let h = header(id, next[id as usize]);
                assert_eq!(table.check(black_box(&h)), Verdict::Append);
                table.record(&h, offset, 0);
                next[id as usize] = advance(next[id as usize], 64);
                offset += 64;
            })
        });
        group.bench_function(BenchmarkId::new("check duplicate", producers), |b| {
            b.iter(|| {
                let id = turn % producers;
                turn += 1;
                // The oldest remembered batch: the longest search.
                let h = header(id, advance(next[id as usize], -5 * 64));
                let verdict = table.check(black_box(&h));
                assert!(matches!(verdict, Verdict::Duplicate { .. }));
            })
        });
    }
    let table = ProducerTable::default();
    group.bench_function("check non-idempotent batch", |b| {
        b.iter(|| black_box(table.check(black_box(&header(-1, -1)))))
    });
    let mut builder = BatchBuilder::with_capacity(70 * 1024);
    for _ in 0..64 {
        builder
            .push(&NewRecord { value: Some(Bytes::from(vec![7u8; 1000])), ..Default::default() });
    }
    let batch = builder.finish().unwrap();
    group.bench_function("validate a 64 KiB batch (CRC and records), for scale", |b| {
        b.iter(|| black_box(batch::validate(black_box(&batch)).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, producer_state);
criterion_main!(benches);
