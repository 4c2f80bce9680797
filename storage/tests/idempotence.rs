//! Idempotent producers in a real log: duplicates answered with their original offsets and not
//! written again, gaps and zombies refused, and the producer state rebuilt on reopen (after a
//! clean close and after the process lost the log without closing it), across segments, and cut
//! back by truncation.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use spate_protocol::batch::{BatchBuilder, BatchIdentity, NewRecord};
use spate_storage::{Appended, FlushPolicy, Log, LogConfig, LogError, LogOptions};

fn config() -> LogConfig {
    LogConfig { cache_bytes: 0, index_interval_bytes: 1024, ..LogConfig::default() }
}

/// A batch of `count` records from producer `id`/`epoch`, starting at `sequence`.
fn idempotent(id: i64, epoch: i16, sequence: i32, count: usize) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        builder.push(&NewRecord {
            value: Some(Bytes::from(format!("p{id} e{epoch} s{}", sequence + i as i32))),
            timestamp: 1_000,
            ..Default::default()
        });
    }
    let identity =
        BatchIdentity { producer_id: id, producer_epoch: epoch, base_sequence: sequence };
    builder.finish_with(identity).unwrap()
}

fn at(base_offset: i64, last_offset: i64) -> Appended {
    Appended { base_offset, last_offset }
}

/// Every batch in the log: (base offset, producer id, base sequence).
async fn contents(log: &Log) -> Vec<(i64, i64, i32)> {
    let mut out = Vec::new();
    let mut next = 0;
    // A read stops at a segment's end; each step reads at least one batch.
    while next < log.offsets().high_watermark {
        let read = log.read(next, usize::MAX).await.unwrap();
        for (header, _) in spate_storage::scan::batches(&read_bytes(&read)) {
            out.push((header.base_offset, header.producer_id, header.base_sequence));
            next = header.next_offset();
        }
    }
    out
}

#[test]
fn a_retry_gets_the_original_offsets_and_nothing_is_written_twice() {
    let dir = temp_dir();
    run(async {
        let config = LogConfig { flush: FlushPolicy::Always, ..config() };
        let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
        assert_eq!(log.append(idempotent(7, 0, 0, 3), 1).await.unwrap(), at(0, 2));
        // A non-idempotent batch in between is neither checked nor in the way.
        assert_eq!(log.append(make_batch(1, 2, 10, 0), 1).await.unwrap(), at(3, 4));
        assert_eq!(log.append(idempotent(7, 0, 3, 2), 1).await.unwrap(), at(5, 6));
        // Retries of both: their original offsets, and the log does not grow.
        assert_eq!(log.append(idempotent(7, 0, 0, 3), 1).await.unwrap(), at(0, 2));
        assert_eq!(log.append(idempotent(7, 0, 3, 2), 1).await.unwrap(), at(5, 6));
        assert_eq!(log.offsets().next, 7);
        assert_eq!(contents(&log).await, vec![(0, 7, 0), (3, -1, -1), (5, 7, 3)]);
        // A gap and an unknown producer's non-zero start are refused, and write nothing.
        assert!(matches!(
            log.append(idempotent(7, 0, 9, 1), 1).await,
            Err(LogError::OutOfOrderSequence { producer_id: 7, expected: 5, got: 9 })
        ));
        assert!(matches!(
            log.append(idempotent(8, 0, 4, 1), 1).await,
            Err(LogError::UnknownProducer { producer_id: 8, sequence: 4 })
        ));
        // A new epoch starts over at 0 and fences the old one.
        assert_eq!(log.append(idempotent(7, 1, 0, 1), 1).await.unwrap(), at(7, 7));
        assert!(matches!(
            log.append(idempotent(7, 0, 5, 1), 1).await,
            Err(LogError::ProducerFenced { producer_id: 7, epoch: 0, current_epoch: 1 })
        ));
        assert_eq!(log.offsets().next, 8);
        // Idempotent batches go one per append.
        let two = vec![idempotent(9, 0, 0, 1), idempotent(9, 0, 1, 1)];
        assert!(matches!(log.append_batches(two, 1).await, Err(LogError::Config(_))));
        log.close().await.unwrap();
    });
}

#[test]
fn producer_state_survives_close_and_a_lost_process_and_spans_segments() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.append(idempotent(1, 0, 0, 2), 1).await.unwrap(), at(0, 1));
        log.roll().await.unwrap();
        assert_eq!(log.append(idempotent(2, 4, 0, 1), 1).await.unwrap(), at(2, 2));
        assert_eq!(log.append(idempotent(1, 0, 2, 2), 1).await.unwrap(), at(3, 4));
        log.roll().await.unwrap();
        assert_eq!(log.append(idempotent(1, 0, 4, 1), 1).await.unwrap(), at(5, 5));
        assert_eq!(log.segment_count(), 3);
        log.close().await.unwrap();
        drop(log);

        // Reopened: retries written before the restart, in any of the segments, are recognised.
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.append(idempotent(1, 0, 0, 2), 1).await.unwrap(), at(0, 1));
        assert_eq!(log.append(idempotent(1, 0, 4, 1), 1).await.unwrap(), at(5, 5));
        assert_eq!(log.append(idempotent(2, 4, 0, 1), 1).await.unwrap(), at(2, 2));
        assert!(matches!(
            log.append(idempotent(2, 3, 1, 1), 1).await,
            Err(LogError::ProducerFenced { current_epoch: 4, .. })
        ));
        assert!(matches!(
            log.append(idempotent(1, 0, 7, 1), 1).await,
            Err(LogError::OutOfOrderSequence { expected: 5, got: 7, .. })
        ));
        assert_eq!(log.append(idempotent(1, 0, 5, 3), 1).await.unwrap(), at(6, 8));
        // The process dies without closing the log (the batch was written, not synced).
        drop(log);

        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.append(idempotent(1, 0, 5, 3), 1).await.unwrap(), at(6, 8));
        assert_eq!(log.offsets().next, 9);
        let producers: Vec<_> = contents(&log).await.iter().map(|c| (c.1, c.2)).collect();
        assert_eq!(producers, vec![(1, 0), (2, 0), (1, 2), (1, 4), (1, 5)]);
        log.close().await.unwrap();
    });
}

#[test]
fn truncation_forgets_the_removed_batches_and_their_retries_are_appended_again() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        for sequence in 0..4 {
            let appended = log.append(idempotent(3, 0, sequence, 1), 1).await.unwrap();
            assert_eq!(appended.base_offset, i64::from(sequence));
        }
        log.truncate_to(2).await.unwrap();
        // The batch after the cut is still a gap; the first removed one is next, appended anew.
        assert!(matches!(
            log.append(idempotent(3, 0, 3, 1), 1).await,
            Err(LogError::OutOfOrderSequence { expected: 2, got: 3, .. })
        ));
        assert_eq!(log.append(idempotent(3, 0, 2, 1), 1).await.unwrap(), at(2, 2));
        assert_eq!(log.append(idempotent(3, 0, 1, 1), 1).await.unwrap(), at(1, 1));
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.append(idempotent(3, 0, 3, 1), 1).await.unwrap(), at(3, 3));
        log.close().await.unwrap();
    });
}

/// A producer's batch as a leader proposes it: offsets and term stamped.
fn proposed(id: i64, sequence: i32, count: usize, base_offset: i64) -> Bytes {
    let mut batch = idempotent(id, 0, sequence, count);
    spate_protocol::batch::stamp(&mut batch, base_offset, 1);
    batch.freeze()
}

#[test]
fn a_follower_keeps_the_producer_table_so_as_leader_it_recognises_retries() {
    use spate_storage::log::Proposal;
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        // As a follower: the leader's batches arrive with their offsets.
        log.append_replicated(vec![proposed(7, 0, 3, 0), proposed(7, 3, 2, 3)]).await.unwrap();
        // As the new leader: a producer's retry of either is a duplicate with its offsets ...
        let header = |b: &BytesMut| spate_protocol::batch::BatchHeader::parse(b).unwrap();
        let retry = idempotent(7, 0, 3, 2);
        assert_eq!(log.check_proposal(&header(&retry)).unwrap(), Proposal::Duplicate(at(3, 4)));
        // ... the next batch is appended, a gap refused.
        let next = idempotent(7, 0, 5, 1);
        assert_eq!(log.check_proposal(&header(&next)).unwrap(), Proposal::Append);
        let gap = idempotent(7, 0, 9, 1);
        assert!(matches!(
            log.check_proposal(&header(&gap)),
            Err(LogError::OutOfOrderSequence { producer_id: 7, expected: 5, got: 9 })
        ));
        // A proposal recorded ahead of the log is known at once (pipelined proposals), and its
        // replicated append records nothing twice.
        log.record_proposal(&header(&next), 5);
        assert_eq!(log.check_proposal(&header(&next)).unwrap(), Proposal::Duplicate(at(5, 5)));
        log.append_replicated(vec![proposed(7, 5, 1, 5)]).await.unwrap();
        let after = idempotent(7, 0, 6, 1);
        assert_eq!(log.check_proposal(&header(&after)).unwrap(), Proposal::Append);
        assert_eq!(log.check_proposal(&header(&retry)).unwrap(), Proposal::Duplicate(at(3, 4)));
    });
}
