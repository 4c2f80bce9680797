//! `flush=never` with a journal: appends complete before their device write, survive the death
//! of the process, and a write that fails keeps them queued instead of dropping them.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use common::*;
use spate_storage::faults::StorageFaults;
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

/// Fails every segment write while `failing` is set (a stalled or full device).
#[derive(Default)]
struct FailingWrites {
    failing: Cell<bool>,
}

impl StorageFaults for FailingWrites {
    fn before_write(&self, _path: &Path) -> std::io::Result<()> {
        if self.failing.get() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

fn config() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Never,
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

fn options(journal: &Path, faults: &Rc<FailingWrites>) -> LogOptions {
    LogOptions {
        journal_dir: Some(journal.to_path_buf()),
        faults: Some(faults.clone() as Rc<dyn StorageFaults>),
        ..LogOptions::default()
    }
}

/// Every batch from the start, as (base offset, bytes).
async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let end = log.offsets().high_watermark;
    let mut offset = log.offsets().start;
    let mut out = Vec::new();
    // Each read returns at least one batch.
    while offset < end {
        let read = log.read(offset, 1 << 20).await.unwrap();
        let batches = split_batches(&read_bytes(&read));
        offset = spate_protocol::batch::BatchHeader::parse(&batches.last().unwrap().1)
            .unwrap()
            .next_offset();
        out.extend(batches);
    }
    out
}

#[test]
fn acknowledged_before_the_write_and_replayed_after_a_crash() {
    let data = temp_dir();
    let journal = temp_dir();
    let faults = Rc::new(FailingWrites::default());
    let acked = run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let log = Log::open(&data, config(), options(&journal, &faults)).await.unwrap();
            let mut acked = Vec::new();
            for tag in 0..5u64 {
                let batch = make_batch(tag, 2, 500, 0);
                let appended = log.append(batch.clone(), 1).await.unwrap();
                acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
            }
            // The device refuses every write from here on (a full disk): appends are still
            // acknowledged at once, from the journal, and readable.
            faults.failing.set(true);
            for tag in 5..12u64 {
                let batch = make_batch(tag, 2, 500, 0);
                let appended = log.append(batch.clone(), 1).await.unwrap();
                acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
            }
            assert_eq!(log.offsets().high_watermark, 24, "acknowledged batches are visible");
            assert!(read_all(&log).await == acked, "acknowledged batches read back");
            // Once a write has failed with acknowledged batches queued, new appends fail with
            // its error. The first write comes after at most the write-behind delay; bounded:
            // the flush task retries every 200 ms. Appends until then are acknowledged too.
            let mut refused = None;
            for _ in 0..300 {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                let batch = make_batch(99, 1, 10, 0);
                match log.append(batch.clone(), 1).await {
                    Ok(appended) => {
                        acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)))
                    }
                    Err(error) => {
                        refused = Some(error);
                        break;
                    }
                }
            }
            assert!(matches!(refused, Some(LogError::DiskFull { .. })), "{refused:?}");
            assert!(log.offsets().written < 24, "the failing device wrote nothing");
            // The process dies here: nothing more is written.
            acked
        }
    });
    // Restarted with a working device: the journal replays what was never written.
    faults.failing.set(false);
    run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let log = Log::open(&data, config(), options(&journal, &faults)).await.unwrap();
            let acked_end = acked.len() as i64 + 12;
            assert_eq!(log.offsets().written, acked_end, "replayed and written before serving");
            assert!(read_all(&log).await == acked, "replayed batches read back");
            let next = log.append(make_batch(50, 1, 10, 0), 1).await.unwrap();
            assert_eq!(next.base_offset, acked_end);
            log.close().await.unwrap();
        }
    });
    // A clean close leaves no journal behind.
    assert!(!journal.path().exists() || std::fs::read_dir(journal.path()).unwrap().count() == 0);
}

#[test]
fn a_full_device_that_recovers_writes_the_acknowledged_batches_and_accepts_appends_again() {
    let data = temp_dir();
    let journal = temp_dir();
    let faults = Rc::new(FailingWrites::default());
    run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let log = Log::open(&data, config(), options(&journal, &faults)).await.unwrap();
            faults.failing.set(true);
            // Acknowledged from the journal, then its write fails: appends are refused until a
            // write succeeds (bounded wait: the flush task retries every 200 ms).
            log.append(make_batch(0, 1, 100, 0), 1).await.unwrap();
            let mut refused = false;
            for _ in 0..100 {
                if log.append(make_batch(1, 1, 100, 0), 1).await.is_err() {
                    refused = true;
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(refused);
            let acknowledged = log.offsets().high_watermark;
            faults.failing.set(false);
            // Bounded: the retry comes within a few backoffs.
            for _ in 0..200 {
                if log.offsets().written == acknowledged {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(log.offsets().written, acknowledged);
            let next = log.append(make_batch(9, 1, 100, 0), 1).await.unwrap();
            assert_eq!(next.base_offset, acknowledged);
        }
    });
}

#[test]
fn gathered_batches_are_written_without_further_appends() {
    let data = temp_dir();
    let journal = temp_dir();
    let faults = Rc::new(FailingWrites::default());
    run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let log = Log::open(&data, config(), options(&journal, &faults)).await.unwrap();
            for tag in 0..5u64 {
                log.append(make_batch(tag, 2, 100, 0), 1).await.unwrap();
            }
            assert_eq!(log.offsets().high_watermark, 10, "acknowledged from the journal");
            // Written within the write-behind delay, with nothing else happening (bounded).
            for _ in 0..1000 {
                if log.offsets().written == 10 {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert_eq!(log.offsets().written, 10);
            assert_eq!(log.memory_bytes().1, 0, "nothing left queued");
            log.close().await.unwrap();
        }
    });
}

#[test]
fn logs_of_one_shard_share_its_memory_budget() {
    use spate_storage::limits::{CACHE_BYTES_PER_LOG_MIN, PENDING_BYTES_MAX};
    use spate_storage::memory::ShardMemory;

    let data = temp_dir();
    let journal = temp_dir();
    let faults = Rc::new(FailingWrites::default());
    run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let memory = ShardMemory::new(PENDING_BYTES_MAX, 4 * CACHE_BYTES_PER_LOG_MIN);
            let config = LogConfig { cache_bytes: 16 << 20, ..config() };
            let mut logs = Vec::new();
            for i in 0..8 {
                let options = LogOptions {
                    memory: Some(memory.clone()),
                    ..options(&journal.join(i.to_string()), &faults)
                };
                logs.push(
                    Log::open(data.join(i.to_string()), config.clone(), options).await.unwrap(),
                );
            }
            assert_eq!(memory.logs(), 8);
            // Eight logs, a budget of four minimum shares: each gets the minimum.
            for log in &logs {
                for tag in 0..40u64 {
                    log.append(make_batch(tag, 10, 1000, 0), 1).await.unwrap();
                }
                let (cache, pending) = log.memory_bytes();
                assert!(cache <= CACHE_BYTES_PER_LOG_MIN, "{cache}");
                assert!(pending > 0 && memory.pending_bytes() >= pending);
            }
            for log in &logs {
                log.flush().await.unwrap();
            }
            assert_eq!(memory.pending_bytes(), 0, "written batches give their budget back");
            // Half the logs close: the others may grow their caches again.
            for log in logs.drain(4..) {
                log.close().await.unwrap();
            }
            assert_eq!(memory.logs(), 4);
            drop(logs.pop());
            assert_eq!(memory.logs(), 3, "a log dropped without close leaves too");
            for log in &logs {
                log.close().await.unwrap();
            }
            assert_eq!(memory.logs(), 0);
        }
    });
}

#[test]
fn a_search_by_time_finds_batches_not_yet_written() {
    let data = temp_dir();
    let journal = temp_dir();
    let faults = Rc::new(FailingWrites::default());
    run({
        let (data, journal, faults) =
            (data.path().to_path_buf(), journal.path().to_path_buf(), faults.clone());
        async move {
            let log = Log::open(&data, config(), options(&journal, &faults)).await.unwrap();
            log.append(make_batch(0, 3, 10, 1_000), 1).await.unwrap();
            log.flush().await.unwrap();
            // The device refuses writes: these stay queued (and journaled) only.
            faults.failing.set(true);
            log.append(make_batch(1, 3, 10, 2_000), 1).await.unwrap();
            assert_eq!(log.offsets().written, 3);
            assert_eq!(log.offset_for_timestamp(1_001).await.unwrap(), Some(1), "in the segment");
            assert_eq!(log.offset_for_timestamp(1_500).await.unwrap(), Some(3), "queued only");
            assert_eq!(log.offset_for_timestamp(2_002).await.unwrap(), Some(5));
            assert_eq!(log.offset_for_timestamp(2_003).await.unwrap(), None);
            faults.failing.set(false);
            log.close().await.unwrap();
        }
    });
}
