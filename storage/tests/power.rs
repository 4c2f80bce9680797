//! Power loss and failing fdatasyncs, modelled under a real log on a real disk.
//!
//! A SIGKILL cannot show a missing fdatasync: an `O_DIRECT` write survives the death of the
//! process. [`PowerLoss`] models the device instead: it snapshots each segment file after every
//! fdatasync, and `cut` puts every file back to its last snapshot, which is what a device with
//! a volatile cache may do when the power goes. A log that acknowledged a batch before an
//! fdatasync covered it loses that batch here.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::*;
use spate_storage::faults::StorageFaults;
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

#[derive(Default)]
struct PowerLoss {
    /// Each segment file's content as of its last fdatasync.
    synced: RefCell<BTreeMap<PathBuf, Vec<u8>>>,
    /// While set, every fdatasync fails as a dying device's would.
    failing: Cell<bool>,
    syncs: Cell<usize>,
}

impl StorageFaults for PowerLoss {
    fn before_sync(&self, _path: &Path) -> std::io::Result<()> {
        if self.failing.get() {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn after_sync(&self, path: &Path) {
        self.syncs.set(self.syncs.get() + 1);
        let content = std::fs::read(path).expect("read a synced file");
        self.synced.borrow_mut().insert(path.to_path_buf(), content);
    }
}

impl PowerLoss {
    /// The power goes: every segment file holds what its last fdatasync covered, nothing more
    /// (a file never synced holds nothing). Returns how many bytes were lost.
    fn cut(&self, dir: &Path) -> u64 {
        let mut lost = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let current = std::fs::read(&path).unwrap();
            let kept = self.synced.borrow().get(&path).cloned().unwrap_or_default();
            lost += (current.len() as u64).saturating_sub(kept.len() as u64);
            std::fs::write(&path, &kept).unwrap();
        }
        self.synced.borrow_mut().clear();
        lost
    }
}

fn options(model: &Rc<PowerLoss>) -> LogOptions {
    LogOptions { faults: Some(model.clone() as Rc<dyn StorageFaults>), ..LogOptions::default() }
}

fn config(flush: FlushPolicy) -> LogConfig {
    LogConfig {
        flush,
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// Every batch in the log, as (base offset, bytes).
async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let end = log.offsets().high_watermark;
    let mut offset = log.offsets().start;
    let mut batches = Vec::new();
    // Each read returns at least one batch.
    while offset < end {
        let read = log.read(offset, 1 << 20).await.unwrap();
        let chunk = split_batches(&read_bytes(&read));
        let last = chunk.last().expect("a batch");
        offset = spate_protocol::batch::BatchHeader::parse(&last.1).unwrap().next_offset();
        batches.extend(chunk);
    }
    batches
}

#[test]
fn acknowledged_appends_survive_a_power_cut_under_flush_always() {
    let dir = temp_dir();
    let model = Rc::new(PowerLoss::default());
    let acked = run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            let mut tasks = Vec::new();
            for appender in 0..4u64 {
                let log = log.clone();
                tasks.push(glommio::spawn_local(async move {
                    let mut acked = Vec::new();
                    // Enough to roll segments (4 MiB + 4 KiB each) a few times.
                    for i in 0..60u64 {
                        let batch = make_batch(appender * 1000 + i, 3, 20_000 + i as usize, 0);
                        let appended = log.append(batch.clone(), 1).await.unwrap();
                        acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
                    }
                    acked
                }));
            }
            let mut acked = Vec::new();
            for task in tasks {
                acked.extend(task.await);
            }
            // Queued but never acknowledged: may be lost, must not corrupt anything.
            let log2 = log.clone();
            glommio::spawn_local(async move {
                let _ = log2.append(make_batch(9_999, 2, 5_000, 0), 1).await;
            })
            .detach();
            glommio::yield_if_needed().await;
            // The process "dies" here: no close, no final sync.
            acked
        }
    });
    assert!(model.syncs.get() > 0);
    model.cut(dir.path());
    run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            let stored: BTreeMap<i64, Vec<u8>> = read_all(&log).await.into_iter().collect();
            for (base, bytes) in &acked {
                assert_eq!(stored.get(base), Some(bytes), "acknowledged batch at {base} lost");
            }
        }
    });
}

#[test]
fn a_failed_fdatasync_takes_the_log_offline_and_recovery_keeps_what_was_durable() {
    let dir = temp_dir();
    let model = Rc::new(PowerLoss::default());
    let acked = run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            let mut acked = Vec::new();
            for tag in 0..5u64 {
                let batch = make_batch(tag, 2, 1_000, 0);
                let appended = log.append(batch.clone(), 1).await.unwrap();
                acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
            }
            let durable = log.offsets().high_watermark;
            model.failing.set(true);
            let failed = log.append(make_batch(100, 2, 1_000, 0), 1).await;
            assert!(failed.is_err(), "an append whose fdatasync failed is not acknowledged");
            // Fail-stop: even once the device answers again, the log refuses everything, and
            // never serves the round whose fdatasync failed.
            model.failing.set(false);
            assert!(matches!(
                log.append(make_batch(101, 1, 10, 0), 1).await,
                Err(LogError::Offline(_))
            ));
            assert!(matches!(log.read(0, 1 << 20).await, Err(LogError::Offline(_))));
            assert_eq!(log.offsets().high_watermark, durable);
            acked
        }
    });
    // A restart recovers: what was durable is there, and the log works again.
    model.cut(dir.path());
    run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            let stored = read_all(&log).await;
            assert_eq!(stored, acked);
            log.append(make_batch(200, 1, 10, 0), 1).await.unwrap();
        }
    });
}

#[test]
fn recovery_makes_the_tail_durable_before_serving_it() {
    let dir = temp_dir();
    let model = Rc::new(PowerLoss::default());
    // Written with flush=never, then the process dies: the data is in the file, not synced.
    let written = run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Never), options(&model)).await.unwrap();
            let mut written = Vec::new();
            for tag in 0..8u64 {
                let batch = make_batch(tag, 2, 3_000, 0);
                let appended = log.append(batch.clone(), 1).await.unwrap();
                written.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
            }
            written
        }
    });
    // Restarted under flush=always: a consumer reads the recovered tail...
    let written_again = written.clone();
    run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            assert_eq!(read_all(&log).await, written_again);
        }
    });
    // ...so a power cut afterwards must not take it back.
    assert_eq!(model.cut(dir.path()), 0, "recovery left the served tail unsynced");
    run({
        let (dir, model) = (dir.path().to_path_buf(), model.clone());
        async move {
            let log = Log::open(&dir, config(FlushPolicy::Always), options(&model)).await.unwrap();
            assert_eq!(read_all(&log).await, written);
        }
    });
}
