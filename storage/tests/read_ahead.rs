//! Sequential reads from disk through a log's read stream (read-ahead): the bytes are the
//! same as a plain read's, whatever the read sizes and batch sizes, across segments and
//! truncations; a shard holds a bounded number of streams.

mod common;

use std::rc::Rc;

use common::*;
use spate_storage::limits::{READ_AHEAD_BUFFER_BYTES, READ_STREAMS_PER_SHARD_MAX};
use spate_storage::memory::ShardMemory;
use spate_storage::{Log, LogConfig, LogOptions};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        cache_bytes: 0,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    }
}

fn options(memory: &Rc<ShardMemory>) -> LogOptions {
    LogOptions { memory: Some(memory.clone()), ..LogOptions::default() }
}

fn memory() -> Rc<ShardMemory> {
    ShardMemory::new(spate_storage::limits::PENDING_BYTES_MAX, 0)
}

/// Appends batches of assorted sizes (a few KiB to 1.5 MiB, so that many straddle the stream's
/// 1 MiB buffers and some span two); returns each batch as stored.
async fn fill(log: &Log, tag: u64, batches: u64) -> Vec<(i64, Vec<u8>)> {
    let mut stored = Vec::new();
    for i in 0..batches {
        let (count, value) = match i % 5 {
            0 => (3, 1_000),
            1 => (40, 7_000),
            2 => (150, 10_000),
            3 => (1, 100),
            _ => (25, 3_333),
        };
        let batch = make_batch(tag * 1000 + i, count, value, i as i64);
        let appended = log.append(batch.clone(), 1).await.unwrap();
        stored.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
    }
    stored
}

/// Reads from `offset` to the high watermark, `bytes_max` per read, like a consumer.
async fn read_to_end(log: &Log, mut offset: i64, bytes_max: usize) -> Vec<(i64, Vec<u8>)> {
    let end = log.offsets().high_watermark;
    let mut batches = Vec::new();
    for _ in 0..100_000 {
        if offset >= end {
            break;
        }
        let read = log.read(offset, bytes_max).await.unwrap();
        let got = split_batches(&read_bytes(&read));
        assert!(!got.is_empty(), "a read below the high watermark returns a batch");
        let last = spate_protocol::batch::BatchHeader::parse(&got.last().unwrap().1).unwrap();
        offset = last.next_offset();
        batches.extend(got);
    }
    batches
}

/// Reads the log's first `reads` batches one read at a time, as a consumer fetching one batch
/// per request; returns the offset after them.
async fn read_one_by_one(log: &Log, reads: usize) -> i64 {
    let mut offset = 0;
    for _ in 0..reads {
        let read = log.read(offset, 1).await.unwrap();
        let got = split_batches(&read_bytes(&read));
        offset = spate_protocol::batch::BatchHeader::parse(&got[0].1).unwrap().next_offset();
    }
    offset
}

#[test]
fn sequential_reads_through_a_stream_return_every_batch_byte_identical() {
    let dir = temp_dir();
    let memory = memory();
    run(async {
        let log = Log::open(dir.path(), config(), options(&memory)).await.unwrap();
        let stored = fill(&log, 1, 120).await;
        assert!(log.segment_count() >= 3, "segments: {}", log.segment_count());
        for bytes_max in [1, 64 * 1024, READ_AHEAD_BUFFER_BYTES, 3 * READ_AHEAD_BUFFER_BYTES + 7] {
            let read = read_to_end(&log, 0, bytes_max).await;
            assert_eq!(read, stored, "reading {bytes_max} bytes at a time");
        }
        // The second sequential disk read opened a stream (and the last one released it at
        // the end of the log, or keeps it while more may come).
        let read = log.read(0, 1).await.unwrap();
        let next = split_batches(&read_bytes(&read)).len() as i64;
        let _ = log.read(stored[next as usize].0, 1).await.unwrap();
        assert_eq!(memory.read_streams(), 1, "a sequential reader holds a stream");
        // Reads that jump about (inside batches, backwards, far ahead) still get exactly the
        // batch that holds their offset.
        let last = stored.last().unwrap();
        let end = spate_protocol::batch::BatchHeader::parse(&last.1).unwrap().next_offset();
        for offset in [5, 4, 3_000, 2_999, 17, end - 1, 0, end / 2, end / 2 + 1] {
            let read = log.read(offset, 200_000).await.unwrap();
            let first = &split_batches(&read_bytes(&read))[0];
            let holder = stored.iter().rev().find(|(base, _)| *base <= offset).unwrap();
            assert_eq!(first, holder, "read at {offset}");
        }
        log.close().await.unwrap();
        assert_eq!(memory.read_streams(), 0, "closing the log ends its stream");
    });
}

#[test]
fn a_stream_never_returns_bytes_a_truncation_replaced() {
    let dir = temp_dir();
    let memory = memory();
    run(async {
        let log = Log::open(dir.path(), config(), options(&memory)).await.unwrap();
        let stored = fill(&log, 1, 30).await;
        // A consumer reads the first few batches: a stream now reads ahead past them.
        let offset = read_one_by_one(&log, 3).await;
        assert_eq!(memory.read_streams(), 1);
        // Cut the log right where the consumer is, and write different batches there.
        log.truncate_to(offset).await.unwrap();
        let replaced = fill(&log, 2, 10).await;
        assert_eq!(replaced[0].0, offset);
        assert_ne!(replaced[0].1, stored.iter().find(|(b, _)| *b == offset).unwrap().1);
        // Reading on sees the new batches only.
        let read = read_to_end(&log, offset, READ_AHEAD_BUFFER_BYTES).await;
        assert_eq!(read, replaced);
        log.close().await.unwrap();
    });
}

#[test]
fn a_shard_holds_a_bounded_number_of_streams_and_readers_beyond_it_still_read() {
    let memory = memory();
    let dirs: Vec<_> = (0..READ_STREAMS_PER_SHARD_MAX + 2).map(|_| temp_dir()).collect();
    run(async {
        let mut logs = Vec::new();
        for dir in &dirs {
            let log = Log::open(dir.path(), config(), options(&memory)).await.unwrap();
            let stored = fill(&log, logs.len() as u64, 12).await;
            logs.push((log, stored));
        }
        // Every log gets two sequential reads; only the first MAX open streams.
        let mut positions = Vec::new();
        for (log, _) in &logs {
            positions.push(read_one_by_one(log, 2).await);
        }
        assert_eq!(memory.read_streams(), READ_STREAMS_PER_SHARD_MAX);
        // All of them read the rest correctly, with or without a stream.
        for ((log, stored), offset) in logs.iter().zip(positions) {
            let first = stored.iter().position(|(base, _)| *base == offset).unwrap();
            assert_eq!(read_to_end(log, offset, 512 * 1024).await, stored[first..].to_vec());
        }
        assert!(memory.read_streams() <= READ_STREAMS_PER_SHARD_MAX);
        for (log, _) in &logs {
            log.close().await.unwrap();
        }
    });
}
