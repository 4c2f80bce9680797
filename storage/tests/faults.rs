//! Damaged bytes and a full disk: recovery cuts a corrupt tail, a corrupt sealed batch is an
//! error on read (never data), and ENOSPC fails the append cleanly and recoverably.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use spate_protocol::batch::BatchHeader;
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// Appends `n` batches of 3 records and returns (base offset, stamped bytes) of each.
async fn fill(log: &Log, n: u64, value_bytes: usize) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for tag in 0..n {
        let batch = make_batch(tag, 3, value_bytes, 0);
        let appended = log.append(batch.clone(), 1).await.unwrap();
        out.push((appended.base_offset, stamped(batch, appended.base_offset, 1)));
    }
    out
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_lost_block_is_reported_as_damage_not_taken_for_a_clean_end() {
    let dir = temp_dir();
    let segment = dir.path().join(format!("{:020}.log", 0));
    let batches = run({
        let dir = dir.path().to_path_buf();
        async move {
            let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
            let batches = fill(&log, 12, 1_000).await;
            log.close().await.unwrap();
            batches
        }
    });
    // A clean end: nothing cut, nothing reported.
    let clean = run({
        let dir = dir.path().to_path_buf();
        async move {
            let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
            let report = log.recovery();
            log.close().await.unwrap();
            report
        }
    });
    assert_eq!(clean, spate_storage::RecoveryReport::default());
    // The device loses what was written from batch 4 to the end of the next block (it reads
    // back as zeroes); later blocks keep their data. Scanning stops at the zeroes, which look
    // like the end of the log: recovery must say that data followed.
    let lost_from: usize = batches[..4].iter().map(|(_, b)| b.len()).sum();
    let lost_to = lost_from.div_ceil(4096) * 4096 + 4096;
    let mut bytes = std::fs::read(&segment).unwrap();
    assert!(bytes.len() > lost_to + 4096, "data follows the lost range");
    bytes[lost_from..lost_to].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let (report, end) = run({
        let dir = dir.path().to_path_buf();
        async move {
            let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
            (log.recovery(), log.offsets().high_watermark)
        }
    });
    let damage = report.damage.expect("a lost block is damage, not a clean end");
    assert!(damage.contains("lost block"), "{damage}");
    assert!(report.cut_bytes > 0);
    // What survives is the batches before the lost range.
    assert_eq!(end, batches[4].0);
}

#[test]
fn flipped_bytes_in_the_tail_are_cut_on_recovery() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        let batches = fill(&log, 20, 300).await;
        log.close().await.unwrap();
        drop(log);
        // Damage batch 15's value bytes: 15..19 are cut, 0..14 kept byte for byte.
        let position: usize = batches[..15].iter().map(|(_, b)| b.len()).sum();
        flip(
            &dir.path().join(format!("{:020}.log", 0)),
            (position + batches[15].1.len() - 10) as u64,
        );
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.offsets().high_watermark, batches[15].0);
        let read = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), batches[..15].to_vec());
        // The log keeps working where it was cut, and the cut survives another reopen.
        let next = log.append(make_batch(100, 1, 10, 0), 1).await.unwrap();
        assert_eq!(next.base_offset, batches[15].0);
        log.close().await.unwrap();
        drop(log);
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        assert_eq!(log.offsets().high_watermark, batches[15].0 + 1);
    });
}

#[test]
fn a_corrupt_batch_in_a_sealed_segment_is_an_error_not_data() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        let batches = fill(&log, 20, 300).await;
        log.roll().await.unwrap();
        let after = fill(&log, 5, 300).await;
        log.close().await.unwrap();
        drop(log);
        let position: usize = batches[..10].iter().map(|(_, b)| b.len()).sum();
        flip(&dir.path().join(format!("{:020}.log", 0)), (position + 40) as u64);
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        // Sealed segments are not cut: everything is still there...
        assert_eq!(log.offsets().high_watermark, after.last().unwrap().0 + 3);
        // ...but the damaged batch is never returned.
        let bad = batches[10].0;
        assert!(matches!(log.read(bad, 1).await, Err(LogError::Corruption { .. })));
        assert!(matches!(log.read(bad + 2, 1 << 20).await, Err(LogError::Corruption { .. })));
        // A read from before it stops short of it.
        let read = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), batches[..10].to_vec());
        // Batches after it, and in later segments, read fine.
        let read = log.read(batches[11].0, 1).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), vec![batches[11].clone()]);
        let read = log.read(after[0].0, 1 << 20).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), after);
        // Timestamp search through the damaged batch reports the damage.
        assert!(log.offset_for_timestamp(1).await.is_ok());
    });
}

/// A size-limited tmpfs, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(bytes: u64) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
        }
        Ok(SmallFs { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted =
            Command::new("umount").arg(self.dir.path()).output().is_ok_and(|o| o.status.success());
        if !unmounted {
            // Descriptors the executor closes lazily may still be open: detach now, freed later.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

#[test]
#[ignore = "needs root to mount a tmpfs; scripts/test.sh runs ignored tests as root (CI does)"]
fn a_full_disk_fails_appends_cleanly_and_recovers_when_space_is_freed() {
    let fs = SmallFs::mount(8 * 1024 * 1024).expect("mount a size-limited tmpfs (needs root)");
    let root = fs.path();
    let ballast = root.join("ballast");
    std::fs::write(&ballast, vec![1u8; 1024 * 1024]).unwrap();
    let dir = root.join("topic").join("0");
    run(async move {
        let config = LogConfig { flush: FlushPolicy::Always, ..config() };
        let log = Log::open(&dir, config.clone(), LogOptions::default()).await.unwrap();
        let mut acked = Vec::new();
        let mut full = None;
        // Bounded: 8 MiB of space, 30 KiB batches.
        for tag in 0..1000u64 {
            let batch = make_batch(tag, 3, 10_000, 0);
            match log.append(batch.clone(), 1).await {
                Ok(appended) => {
                    acked.push((appended.base_offset, stamped(batch, appended.base_offset, 1)))
                }
                Err(error) => {
                    full = Some(error);
                    break;
                }
            }
        }
        let error = full.expect("the disk filled up");
        assert!(matches!(error, LogError::DiskFull { .. }), "got {error:?}");
        let end = acked.last().unwrap().0 + 3;
        assert_eq!(log.offsets().high_watermark, end);
        assert_eq!(log.offsets().next, end, "the failed batch's offsets are released");
        // Still full: still a clean, typed failure.
        assert!(matches!(
            log.append(make_batch(5000, 3, 10_000, 0), 1).await,
            Err(LogError::DiskFull { .. })
        ));
        // Everything acknowledged reads back.
        let mut offset = 0;
        let mut seen = Vec::new();
        while offset < end {
            let read = log.read(offset, 1 << 20).await.unwrap();
            let batches = split_batches(&read_bytes(&read));
            offset = BatchHeader::parse(&batches.last().unwrap().1).unwrap().next_offset();
            seen.extend(batches);
        }
        assert_eq!(seen, acked);
        // Free space: appends work again, at the next offset.
        std::fs::remove_file(&ballast).unwrap();
        let batch = make_batch(6000, 3, 10_000, 0);
        let appended = log.append(batch.clone(), 1).await.unwrap();
        assert_eq!(appended.base_offset, end);
        acked.push((end, stamped(batch, end, 1)));
        log.close().await.unwrap();
        drop(log);
        // After a reopen: exactly the acknowledged batches, no phantom of the failed ones.
        let log = Log::open(&dir, config, LogOptions::default()).await.unwrap();
        assert_eq!(log.offsets().high_watermark, end + 3);
        let mut offset = 0;
        let mut seen = Vec::new();
        while offset < end + 3 {
            let read = log.read(offset, 1 << 20).await.unwrap();
            let batches = split_batches(&read_bytes(&read));
            offset = BatchHeader::parse(&batches.last().unwrap().1).unwrap().next_offset();
            seen.extend(batches);
        }
        assert_eq!(seen, acked);
    });
}
