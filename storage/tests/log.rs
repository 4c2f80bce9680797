//! Behaviour of one log on a real disk: appends, reads from cache and disk, rolls, indexes,
//! timestamps, truncation, retention, flush policies, recovery.

mod common;

use std::rc::Rc;

use common::*;
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions, ManualClock};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: 0,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

#[test]
fn append_assigns_dense_offsets_and_reads_back_byte_identical() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        let mut expected = Vec::new();
        let mut next = 0;
        for tag in 0..50u64 {
            let count = 1 + (tag as usize % 7);
            let batch = make_batch(tag, count, 100 + tag as usize * 13, 1_000 + tag as i64);
            let appended = log.append(batch.clone(), 3).await.unwrap();
            assert_eq!(appended.base_offset, next);
            assert_eq!(appended.last_offset, next + count as i64 - 1);
            expected.push((next, stamped(batch, next, 3)));
            next += count as i64;
        }
        assert_eq!(log.offsets().high_watermark, next);
        // Read everything from every starting offset: the batch holding it comes first.
        for offset in [0, 1, 5, 17, next - 1] {
            let read = log.read(offset, usize::MAX).await.unwrap();
            let batches = split_batches(&read_bytes(&read));
            let first = expected.iter().position(|(base, b)| {
                let h = spate_protocol::batch::BatchHeader::parse(b).unwrap();
                *base <= offset && offset <= h.last_offset()
            });
            assert_eq!(batches, expected[first.unwrap()..].to_vec(), "read at {offset}");
        }
        // At the high watermark: empty. Past it: out of range.
        assert!(log.read(next, 1 << 20).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(next + 1, 1 << 20).await,
            Err(LogError::OffsetOutOfRange { .. })
        ));
        // A byte limit returns at least one whole batch.
        let read = log.read(0, 1).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), expected[..1].to_vec());
        log.close().await.unwrap();
    });
}

#[test]
fn cache_serves_tail_reads_with_the_same_bytes_as_disk() {
    let dir = temp_dir();
    run(async {
        let config = LogConfig { cache_bytes: 64 * 1024, ..small_config() };
        let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
        for tag in 0..40u64 {
            log.append(make_batch(tag, 4, 1000, 0), 1).await.unwrap();
        }
        let tail = log.read(150, 1 << 20).await.unwrap();
        assert!(matches!(tail.chunks[0], spate_storage::LogBytes::Memory(_)));
        let head = log.read(0, 1 << 20).await.unwrap();
        assert!(matches!(head.chunks[0], spate_storage::LogBytes::Disk(_)));
        // Reopen (cache empty): the tail now comes from disk, byte-identical.
        let from_cache = read_bytes(&tail);
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        let from_disk = log.read(150, 1 << 20).await.unwrap();
        assert!(matches!(from_disk.chunks[0], spate_storage::LogBytes::Disk(_)));
        assert_eq!(read_bytes(&from_disk), from_cache);
    });
}

#[test]
fn rolls_by_size_and_recovers_indexes() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        // ~300 KiB batches into 4 MiB segments.
        let mut ends = Vec::new();
        for tag in 0..40u64 {
            let appended =
                log.append(make_batch(tag, 30, 10_000, tag as i64 * 100), 1).await.unwrap();
            ends.push(appended.last_offset + 1);
        }
        assert!(log.segment_count() >= 3, "segments: {}", log.segment_count());
        let before = read_bytes(&log.read(0, 64 << 20).await.unwrap());
        let bases = log.segment_bases();
        log.close().await.unwrap();
        drop(log);
        // Damage one sealed index and delete another: both are rebuilt.
        let index0 = dir.path().join(format!("{:020}.index", bases[0]));
        let mut bytes = std::fs::read(&index0).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&index0, bytes).unwrap();
        std::fs::remove_file(dir.path().join(format!("{:020}.timeindex", bases[1]))).unwrap();
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.segment_bases(), bases);
        assert_eq!(log.offsets().next, *ends.last().unwrap());
        let after = read_bytes(&log.read(0, 64 << 20).await.unwrap());
        assert_eq!(after, before);
        // Reads that start inside each segment find their batch.
        for (i, end) in ends.iter().enumerate().take(39) {
            let read = log.read(*end, 1).await.unwrap();
            assert_eq!(split_batches(&read_bytes(&read))[0].0, *end, "batch {i}");
        }
    });
}

#[test]
fn bytes_from_counts_what_is_left_to_read_across_segments() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        // Batches larger than the index interval: every batch boundary is indexed, so the
        // count is exact at each of them.
        let mut bases = vec![0];
        let mut sizes = Vec::new();
        for tag in 0..30u64 {
            let before = log.size_bytes();
            let appended =
                log.append(make_batch(tag, 1 + tag as usize % 4, 90_000, 0), 1).await.unwrap();
            sizes.push(log.size_bytes() - before);
            bases.push(appended.last_offset + 1);
        }
        assert!(log.segment_count() >= 2, "segments: {}", log.segment_count());
        for (i, base) in bases.iter().enumerate() {
            let left: u64 = sizes[i..].iter().sum();
            assert_eq!(log.bytes_from(*base), left, "from batch {i} at offset {base}");
        }
        assert_eq!(log.bytes_from(i64::MAX), 0);
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        // Batch t holds records with timestamps 1000*t .. 1000*t + 9, offsets 10*t ...
        for t in 0..60i64 {
            log.append(make_batch(t as u64, 10, 2000, 1000 * t), 1).await.unwrap();
        }
        assert_eq!(log.offset_for_timestamp(i64::MIN).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(5).await.unwrap(), Some(5));
        assert_eq!(log.offset_for_timestamp(10).await.unwrap(), Some(10));
        assert_eq!(log.offset_for_timestamp(33_004).await.unwrap(), Some(334));
        assert_eq!(log.offset_for_timestamp(59_009).await.unwrap(), Some(599));
        assert_eq!(log.offset_for_timestamp(59_010).await.unwrap(), None);
    });
}

#[test]
fn truncate_to_a_batch_boundary_across_segments() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        let mut bases = Vec::new();
        for tag in 0..30u64 {
            bases.push(log.append(make_batch(tag, 20, 10_000, 0), 1).await.unwrap().base_offset);
        }
        let segments_before = log.segment_count();
        assert!(segments_before >= 2);
        assert!(matches!(log.truncate_to(bases[3] + 1).await, Err(LogError::NotBatchBoundary(_))));
        let cut = bases[5];
        log.truncate_to(cut).await.unwrap();
        assert_eq!(log.offsets().next, cut);
        assert!(log.segment_count() < segments_before);
        assert!(matches!(log.read(cut + 1, 100).await, Err(LogError::OffsetOutOfRange { .. })));
        // Appends continue at the cut, with new content.
        let replacement = make_batch(999, 3, 50, 0);
        let appended = log.append(replacement.clone(), 2).await.unwrap();
        assert_eq!(appended.base_offset, cut);
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.offsets().next, cut + 3);
        let read = log.read(cut, 1 << 20).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), vec![(cut, stamped(replacement, cut, 2))]);
    });
}

#[test]
fn retention_by_size_and_time_deletes_sealed_segments_only() {
    let dir = temp_dir();
    run(async {
        let clock = ManualClock::new(1_000_000);
        let options = LogOptions { clock: Rc::new(clock.clone()), ..LogOptions::default() };
        let log = Log::open(dir.path(), small_config(), options.clone()).await.unwrap();
        for tag in 0..70u64 {
            log.append(make_batch(tag, 20, 10_000, 1_000 * tag as i64), 1).await.unwrap();
        }
        let segments = log.segment_count();
        assert!(segments >= 3);
        // Size: keep about 5 MiB.
        let mut config = log.config();
        config.retention_bytes = Some(5 << 20);
        config.retention_ms = None;
        log.set_config(config.clone()).unwrap();
        let report = log.enforce_retention().await.unwrap();
        assert!(report.segments_deleted >= 1);
        assert!(log.size_bytes() >= 5 << 20);
        let start = log.offsets().start;
        assert_eq!(start, log.segment_bases()[0]);
        assert!(matches!(log.read(start - 1, 10).await, Err(LogError::OffsetOutOfRange { .. })));
        assert!(!log.read(start, 10).await.unwrap().chunks.is_empty());
        // Time: everything is older than an hour once the clock moves; the active segment stays.
        config.retention_bytes = None;
        config.retention_ms = Some(3_600_000);
        log.set_config(config).unwrap();
        assert_eq!(log.enforce_retention().await.unwrap().segments_deleted, 0);
        clock.advance(10 * 3_600_000);
        log.enforce_retention().await.unwrap();
        assert_eq!(log.segment_count(), 1);
        let offsets = log.offsets();
        assert_eq!(offsets.start, log.segment_bases()[0]);
        // Start offset survives a reopen (derived from the first segment).
        drop(log);
        let log = Log::open(dir.path(), small_config(), options).await.unwrap();
        assert_eq!(log.offsets().start, offsets.start);
    });
}

#[test]
fn advance_start_offset_is_persisted() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        for tag in 0..10u64 {
            log.append(make_batch(tag, 10, 100, 0), 1).await.unwrap();
        }
        log.advance_start_offset(37).await.unwrap();
        assert_eq!(log.offsets().start, 37);
        assert!(matches!(log.read(36, 10).await, Err(LogError::OffsetOutOfRange { .. })));
        // Reading 37 returns the batch holding it (base 30).
        let read = log.read(37, 10).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read))[0].0, 30);
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.offsets().start, 37);
    });
}

#[test]
fn concurrent_appends_share_fdatasyncs_and_are_durable_when_acknowledged() {
    let dir = temp_dir();
    run(async {
        let config = LogConfig { flush: FlushPolicy::Always, ..small_config() };
        let syncs = Rc::new(SyncCounter::default());
        let options = LogOptions {
            faults: Some(syncs.clone() as Rc<dyn spate_storage::faults::StorageFaults>),
            ..LogOptions::default()
        };
        let log = Log::open(dir.path(), config, options).await.unwrap();
        let recovery_syncs = syncs.0.get();
        let mut tasks = Vec::new();
        for appender in 0..8u64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for i in 0..25u64 {
                    let tag = appender * 1000 + i;
                    let appended = log.append(make_batch(tag, 2, 500, 0), 1).await.unwrap();
                    // Acknowledged under flush=always means durable.
                    assert!(log.offsets().durable > appended.last_offset);
                    acked.push(appended);
                }
                acked
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await);
        }
        all.sort_by_key(|a| a.base_offset);
        for pair in all.windows(2) {
            assert_eq!(pair[0].last_offset + 1, pair[1].base_offset, "dense, no overlap");
        }
        assert_eq!(log.offsets().high_watermark, 400);
        // 200 acknowledged appends; with 8 appenders waiting at once, rounds share fdatasyncs.
        let appends = 200;
        let round_syncs = syncs.0.get() - recovery_syncs;
        assert!(round_syncs * 2 <= appends, "{round_syncs} fdatasyncs for {appends} appends");
    });
}

/// Counts fdatasyncs.
#[derive(Default)]
struct SyncCounter(std::cell::Cell<usize>);

impl spate_storage::faults::StorageFaults for SyncCounter {
    fn after_sync(&self, _path: &std::path::Path) {
        self.0.set(self.0.get() + 1);
    }
}

#[test]
fn interval_flush_makes_data_durable_without_new_appends() {
    let dir = temp_dir();
    run(async {
        let config = LogConfig {
            flush: FlushPolicy::Interval(std::time::Duration::from_millis(20)),
            ..small_config()
        };
        let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
        log.append(make_batch(1, 1, 10, 0), 1).await.unwrap();
        let appended = log.append(make_batch(2, 1, 10, 0), 1).await.unwrap();
        // Bounded wait for the timer-driven sync.
        for _ in 0..200 {
            if log.offsets().durable > appended.last_offset {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(log.offsets().durable, 2);
    });
}

#[test]
fn invalid_batches_are_refused_and_change_nothing() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        let mut bad = make_batch(1, 3, 100, 0);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(log.append(bad, 1).await, Err(LogError::InvalidBatch(_))));
        let mut short = make_batch(1, 3, 100, 0);
        short.truncate(30);
        assert!(matches!(log.append(short, 1).await, Err(LogError::InvalidBatch(_))));
        assert_eq!(log.offsets().next, 0);
        assert_eq!(log.append(make_batch(2, 1, 1, 0), 1).await.unwrap().base_offset, 0);
    });
}

#[test]
fn roll_by_age() {
    let dir = temp_dir();
    run(async {
        let clock = ManualClock::new(0);
        let options = LogOptions { clock: Rc::new(clock.clone()), ..LogOptions::default() };
        let config = LogConfig { segment_ms: Some(1000), ..small_config() };
        let log = Log::open(dir.path(), config, options).await.unwrap();
        log.append(make_batch(1, 1, 10, 0), 1).await.unwrap();
        log.append(make_batch(2, 1, 10, 0), 1).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        clock.advance(1500);
        log.append(make_batch(3, 1, 10, 0), 1).await.unwrap();
        assert_eq!(log.segment_bases(), vec![0, 2]);
    });
}

#[test]
fn appends_take_offsets_in_call_order_even_when_waiting_for_room() {
    let dir = temp_dir();
    run(async {
        let config = LogConfig { segment_bytes: 1 << 30, ..small_config() };
        let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
        // Mixed sizes, far more than the pending budget (64 MiB): large appends wait for room,
        // and a small one called after a waiting large one must not pass it.
        let sizes: Vec<usize> =
            (0..60).map(|i| if i % 3 == 2 { 200 } else { 3_000_000 + i * 1_000 }).collect();
        let mut tasks = Vec::new();
        for (call, size) in sizes.iter().enumerate() {
            let log = log.clone();
            let batch = make_batch(call as u64, 1, *size, 0);
            tasks.push(glommio::spawn_local(async move {
                (call, log.append(batch, 1).await.unwrap().base_offset)
            }));
        }
        let mut offsets = Vec::new();
        for task in tasks {
            offsets.push(task.await);
        }
        for pair in offsets.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "call {} got offset {}, but call {} got {}",
                pair[0].0,
                pair[0].1,
                pair[1].0,
                pair[1].1
            );
        }
    });
}

#[test]
fn batches_appended_together_are_consecutive_and_validated_first() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), small_config(), LogOptions::default()).await.unwrap();
        // Another appender's batch is called in between: it lands after the whole unit.
        let unit = vec![make_batch(1, 2, 100, 0), make_batch(2, 3, 100, 0)];
        let first = {
            let log = log.clone();
            glommio::spawn_local(async move { log.append_batches(unit, 1).await.unwrap() })
        };
        let other = {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(make_batch(3, 1, 100, 0), 1).await })
        };
        let appended = first.await;
        assert_eq!((appended.base_offset, appended.last_offset), (0, 4));
        assert_eq!(other.await.unwrap().base_offset, 5);
        // One bad batch refuses the whole unit: nothing of it is appended.
        let mut corrupt = make_batch(5, 1, 100, 0);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let refused = log.append_batches(vec![make_batch(4, 1, 100, 0), corrupt], 1).await;
        assert!(refused.is_err());
        assert_eq!(log.offsets().next, 6);
        assert_eq!(log.offsets().high_watermark, 6);
    });
}
