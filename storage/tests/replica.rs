//! The storage hooks replication needs, on a real log on a real disk: a follower's append at
//! the leader's offsets and terms, reads bounded by the caller, control batches, the reset to an
//! empty log, the replica-state file, and truncation and reset stopped at every step (as a crash
//! would stop them) with the recovered log checked each time.

mod common;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use common::*;
use spate_protocol::batch::BatchHeader;
use spate_protocol::control::{self, ControlRecord};
use spate_storage::faults::{Step, StorageFaults};
use spate_storage::replica_state::{self, ReplicaSet, ReplicaState, ReplicaStateError, TermStart};
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: 0,
        ..LogConfig::default()
    }
}

/// A batch as a leader stamped it: `count` records at `base`, written in `term`.
fn leader_batch(tag: u64, base: i64, count: usize, term: u64) -> Bytes {
    Bytes::from(stamped(make_batch(tag, count, 200, 1_000 + tag as i64), base, term))
}

/// Every batch in the log, as (base offset, bytes).
async fn read_all(log: &Log) -> Vec<(i64, Vec<u8>)> {
    let (start, end) = (log.offsets().start, log.offsets().high_watermark);
    let mut offset = start;
    let mut batches = Vec::new();
    // Each read returns at least one batch.
    while offset < end {
        let read = log.read(offset, 1 << 20).await.unwrap();
        let chunk = split_batches(&read_bytes(&read));
        offset = BatchHeader::parse(&chunk.last().expect("a batch").1).unwrap().next_offset();
        batches.extend(chunk);
    }
    batches
}

/// Appends `n` leader-stamped batches of 3 records from the log end in `term`, rolling a
/// segment every `per_segment` batches. Returns what was appended.
async fn fill(log: &Log, n: u64, per_segment: u64, term: u64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for tag in 0..n {
        if tag > 0 && tag % per_segment == 0 {
            log.roll().await.unwrap();
        }
        let base = log.offsets().next;
        let batch = leader_batch(tag, base, 3, term);
        log.append_replicated(vec![batch.clone()]).await.unwrap();
        out.push((base, batch.to_vec()));
    }
    out
}

#[test]
fn a_follower_append_keeps_the_leaders_offsets_and_terms() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        // Two batches of term 3 then one of term 5, as one replicated append.
        let batches =
            vec![leader_batch(1, 0, 3, 3), leader_batch(2, 3, 2, 3), leader_batch(3, 5, 4, 5)];
        let appended = log.append_replicated(batches.clone()).await.unwrap();
        assert_eq!((appended.base_offset, appended.last_offset), (0, 8));
        let stored = read_all(&log).await;
        let expected: Vec<(i64, Vec<u8>)> =
            [0, 3, 5].into_iter().zip(batches.iter().map(|b| b.to_vec())).collect();
        assert_eq!(stored, expected, "byte for byte: nothing restamped");
        assert_eq!(BatchHeader::parse(&stored[2].1).unwrap().leader_term, 5);

        // Refused, each leaving the log unchanged.
        let gap = log.append_replicated(vec![leader_batch(4, 10, 1, 5)]).await;
        assert!(
            matches!(gap, Err(LogError::NotAtLogEnd { base_offset: 10, log_end: 9 })),
            "{gap:?}"
        );
        let behind = log.append_replicated(vec![leader_batch(4, 8, 1, 5)]).await;
        assert!(matches!(behind, Err(LogError::NotAtLogEnd { .. })), "{behind:?}");
        let hole = vec![leader_batch(4, 9, 1, 5), leader_batch(5, 11, 1, 5)];
        assert!(matches!(log.append_replicated(hole).await, Err(LogError::NotContiguous { .. })));
        let older_term = vec![leader_batch(4, 9, 1, 5), leader_batch(5, 10, 1, 4)];
        assert!(matches!(
            log.append_replicated(older_term).await,
            Err(LogError::NotContiguous { .. })
        ));
        let mut damaged = leader_batch(4, 9, 1, 5).to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let damaged = vec![leader_batch(6, 9, 1, 5), Bytes::from(damaged)];
        assert!(matches!(log.append_replicated(damaged).await, Err(LogError::InvalidBatch(_))));
        assert!(log.append_replicated(Vec::new()).await.is_err());
        assert_eq!(log.offsets().next, 9);
        assert_eq!(read_all(&log).await, expected);

        // Control batches go through the same path, and a producer's append still works after.
        let marker = Bytes::from(control::leader_marker(9, 6, 0).to_vec());
        let membership =
            Bytes::from(control::membership(10, 6, 0, &[1, 2, 3], &[4]).unwrap().to_vec());
        log.append_replicated(vec![marker, membership]).await.unwrap();
        let next = log.append(make_batch(7, 2, 10, 0), 6).await.unwrap();
        assert_eq!(next.base_offset, 11);
        log.close().await.unwrap();
        drop(log);

        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        let stored = read_all(&log).await;
        assert_eq!(stored[..3], expected[..]);
        assert_eq!(control::decode(&stored[3].1).unwrap(), ControlRecord::LeaderMarker { term: 6 });
        assert_eq!(
            control::decode(&stored[4].1).unwrap(),
            ControlRecord::Membership { voters: vec![1, 2, 3], learners: vec![4] }
        );
        assert!(!BatchHeader::parse(&stored[5].1).unwrap().is_control());
        assert_eq!(log.offsets().next, 13);
    });
}

#[test]
fn reads_are_bounded_by_the_caller_not_only_by_the_log() {
    let dir = temp_dir();
    run(async {
        let log = Log::open(dir.path(), config(), LogOptions::default()).await.unwrap();
        let batches = fill(&log, 6, 100, 1).await; // offsets 0..18, batches of 3
                                                   // A bound inside a batch stops before that batch: only whole batches below it.
        for (upper, expected) in [(18, 6), (12, 4), (13, 4), (14, 4), (15, 5), (3, 1), (2, 0)] {
            let read = log.read_bounded(0, 1 << 20, upper).await.unwrap();
            let got = split_batches(&read_bytes(&read));
            assert_eq!(got, batches[..expected].to_vec(), "upper {upper}");
            assert_eq!(read.high_watermark, upper.min(18));
        }
        // Between the bound and the log end: nothing yet, not an error (a consumer ahead of a
        // new leader's high watermark waits); past the log end: out of range.
        let read = log.read_bounded(12, 1 << 20, 9).await.unwrap();
        assert!(read.chunks.is_empty());
        assert_eq!(read.high_watermark, 9);
        assert!(log.read_bounded(18, 1 << 20, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read_bounded(19, 1 << 20, 100).await,
            Err(LogError::OffsetOutOfRange { end: 18, .. })
        ));
        // A bound past the end reads to the end; the plain read is unchanged.
        let read = log.read_bounded(6, 1 << 20, 1_000).await.unwrap();
        assert_eq!(split_batches(&read_bytes(&read)), batches[2..].to_vec());
        assert_eq!(read.high_watermark, 18);
        assert_eq!(read_all(&log).await, batches);
    });
}

#[test]
fn a_reset_restarts_the_log_empty_at_any_offset_and_survives_a_reopen() {
    let dir = temp_dir();
    run(async {
        for (flush, start) in [(FlushPolicy::Never, 1_000), (FlushPolicy::Always, 4)] {
            let config = LogConfig { flush, ..config() };
            let log = Log::open(dir.path(), config.clone(), LogOptions::default()).await.unwrap();
            fill(&log, 9, 3, 2).await;
            assert!(log.segment_count() >= 3);
            log.reset_to(start).await.unwrap();
            let offsets = log.offsets();
            assert_eq!(
                (offsets.start, offsets.next, offsets.high_watermark),
                (start, start, start)
            );
            assert_eq!(log.segment_bases(), vec![start]);
            assert!(log.read(start, 100).await.unwrap().chunks.is_empty());
            assert!(matches!(
                log.read(start - 1, 100).await,
                Err(LogError::OffsetOutOfRange { .. })
            ));
            // Appends continue at the new start, by a follower or a producer.
            log.append_replicated(vec![leader_batch(50, start, 2, 7)]).await.unwrap();
            assert_eq!(
                log.append(make_batch(51, 1, 10, 0), 7).await.unwrap().base_offset,
                start + 2
            );
            let expected = read_all(&log).await;
            assert_eq!(expected.len(), 2);
            // A crash (no close) keeps the reset and the appends (written, flush never or always).
            drop(log);
            let log = Log::open(dir.path(), config, LogOptions::default()).await.unwrap();
            assert_eq!(log.offsets().start, start);
            assert_eq!(read_all(&log).await, expected);
            assert!(!dir.path().join("reset-to").exists());
            log.close().await.unwrap();
        }
    });
}

/// Fails the `fail_at`-th step (counting from 0) of truncation or reset, as a crash there would
/// stop it, and records every step seen.
#[derive(Default)]
struct StepFaults {
    calls: Cell<usize>,
    fail_at: Cell<Option<usize>>,
    seen: RefCell<Vec<Step>>,
}

impl StorageFaults for StepFaults {
    fn before_step(&self, step: Step) -> std::io::Result<()> {
        let call = self.calls.get();
        self.calls.set(call + 1);
        self.seen.borrow_mut().push(step);
        if self.fail_at.get() == Some(call) {
            return Err(std::io::Error::other(format!("crash before {}", step.name())));
        }
        Ok(())
    }
}

fn faulty(faults: &Rc<StepFaults>) -> LogOptions {
    LogOptions { faults: Some(faults.clone() as Rc<dyn StorageFaults>), ..LogOptions::default() }
}

/// A log of 12 batches over 4 segments (3 batches each), term 1. Returns its batches.
async fn build_old_log(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let log = Log::open(dir, config(), LogOptions::default()).await.unwrap();
    let batches = fill(&log, 12, 3, 1).await;
    log.close().await.unwrap();
    batches
}

fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn truncation_stopped_at_any_step_recovers_a_prefix_that_keeps_everything_below_the_cut() {
    let root = temp_dir();
    run(async move {
        // Cuts: inside the second segment (later segments go too), at a segment base, and in
        // the last segment.
        for cut_batch in [4usize, 6, 10] {
            // A full run first, to learn the steps.
            let dir = fresh_dir(root.path(), "dry");
            let old = build_old_log(&dir).await;
            let cut = old[cut_batch].0;
            let faults = Rc::new(StepFaults::default());
            let log = Log::open(&dir, config(), faulty(&faults)).await.unwrap();
            log.truncate_to(cut).await.unwrap();
            let steps = faults.seen.borrow().clone();
            assert_eq!(steps.first(), Some(&Step::TruncateRestartJournal));
            assert_eq!(steps.last(), Some(&Step::TruncateRemoveIndexes));
            drop(log);

            for (fail_at, step) in steps.iter().enumerate() {
                let context = format!("cut {cut}, crash before step {fail_at} ({:?})", step);
                let dir = fresh_dir(root.path(), &format!("cut-{cut_batch}-{fail_at}"));
                let old = build_old_log(&dir).await;
                let faults = Rc::new(StepFaults::default());
                faults.fail_at.set(Some(fail_at));
                let log = Log::open(&dir, config(), faulty(&faults)).await.unwrap();
                let error = log.truncate_to(cut).await.expect_err(&context);
                assert!(error.to_string().contains("crash before"), "{context}: {error}");
                // The log refuses work until it is reopened.
                assert!(matches!(log.read(0, 100).await, Err(LogError::Offline(_))), "{context}");
                drop(log);

                let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
                let recovered = read_all(&log).await;
                assert!(recovered.len() >= cut_batch, "{context}: lost data below the cut");
                assert_eq!(recovered[..], old[..recovered.len()], "{context}: not a prefix");
                // Retrying the truncation finishes it; new data at the cut then stays, and
                // nothing of the old tail comes back after another crash.
                log.truncate_to(cut).await.unwrap();
                let new = leader_batch(900, cut, 2, 2);
                log.append_replicated(vec![new.clone()]).await.unwrap();
                drop(log);
                let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
                let mut expected = old[..cut_batch].to_vec();
                expected.push((cut, new.to_vec()));
                assert_eq!(read_all(&log).await, expected, "{context}: after retry");
                log.close().await.unwrap();
            }
        }
    });
}

#[test]
fn a_reset_stopped_at_any_step_recovers_the_old_log_or_the_new_empty_one() {
    let root = temp_dir();
    run(async move {
        let start = 500;
        let dir = fresh_dir(root.path(), "dry");
        build_old_log(&dir).await;
        let faults = Rc::new(StepFaults::default());
        let log = Log::open(&dir, config(), faulty(&faults)).await.unwrap();
        log.reset_to(start).await.unwrap();
        let steps = faults.seen.borrow().clone();
        assert_eq!(steps.first(), Some(&Step::ResetWriteIntent));
        assert_eq!(steps.last(), Some(&Step::ResetRemoveIntent));
        drop(log);

        for (fail_at, step) in steps.iter().enumerate() {
            // Also crash the reset that opening finishes, at each of its steps.
            for fail_on_open in [None, Some(0), Some(2)] {
                let context =
                    format!("crash before step {fail_at} ({:?}), then {fail_on_open:?}", step);
                let dir = fresh_dir(root.path(), "run");
                let old = build_old_log(&dir).await;
                let faults = Rc::new(StepFaults::default());
                faults.fail_at.set(Some(fail_at));
                let log = Log::open(&dir, config(), faulty(&faults)).await.unwrap();
                assert!(log.reset_to(start).await.is_err(), "{context}");
                drop(log);
                let intent_written = fail_at > 0;
                if let (true, Some(at)) = (intent_written, fail_on_open) {
                    let faults = Rc::new(StepFaults::default());
                    faults.fail_at.set(Some(at));
                    if let Err(error) = Log::open(&dir, config(), faulty(&faults)).await {
                        assert!(error.to_string().contains("crash before"), "{context}: {error}");
                    }
                }
                let log = Log::open(&dir, config(), LogOptions::default()).await.unwrap();
                let offsets = log.offsets();
                if intent_written {
                    assert_eq!((offsets.start, offsets.next), (start, start), "{context}");
                    assert_eq!(log.segment_bases(), vec![start], "{context}");
                    assert!(read_all(&log).await.is_empty(), "{context}");
                } else {
                    assert_eq!(read_all(&log).await, old, "{context}: the old log, whole");
                }
                assert!(!dir.join("reset-to").exists(), "{context}");
                log.close().await.unwrap();
            }
        }
    });
}

#[test]
fn a_damaged_reset_intent_is_an_error_not_a_guess() {
    let dir = temp_dir();
    run(async {
        build_old_log(dir.path()).await;
        std::fs::write(dir.path().join("reset-to"), b"12x\n").unwrap();
        let opened = Log::open(dir.path(), config(), LogOptions::default()).await;
        assert!(matches!(opened, Err(LogError::Corruption { .. })));
    });
}

#[test]
fn the_replica_state_file_round_trips_and_refuses_damage() {
    let dir = temp_dir();
    run(async {
        let dir = dir.path();
        assert!(replica_state::load(dir).unwrap().is_none(), "a new replica has none");
        let mut state = ReplicaState {
            term: 3,
            voted_for: Some(2),
            commit: 17,
            membership_floor: Some(ReplicaSet { voters: vec![1, 2, 3], learners: vec![] }),
            term_history: vec![
                TermStart { term: 1, start_offset: 0 },
                TermStart { term: 3, start_offset: 9 },
            ],
        };
        replica_state::store(dir, &state).await.unwrap();
        assert_eq!(replica_state::load(dir).unwrap(), Some(state.clone()));
        state.term = 4;
        state.voted_for = None;
        replica_state::store(dir, &state).await.unwrap();
        assert_eq!(replica_state::load(dir).unwrap(), Some(state.clone()));
        // A crash while writing the next version leaves a torn temporary file: ignored.
        std::fs::write(dir.join("replica-state.tmp"), b"SPRSTATE\x01\x00torn").unwrap();
        assert_eq!(replica_state::load(dir).unwrap(), Some(state.clone()));
        replica_state::store(dir, &state).await.unwrap();
        assert!(!dir.join("replica-state.tmp").exists());
        // Damage to the file itself is an error, never an older or default state.
        let path = dir.join(replica_state::FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(replica_state::load(dir), Err(ReplicaStateError::Corrupt { .. })));
        bytes.truncate(10);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(replica_state::load(dir), Err(ReplicaStateError::Corrupt { .. })));
    });
}

/// Fails every segment write while set: journaled batches then live only in the journal.
#[derive(Default)]
struct StalledDevice {
    failing: Cell<bool>,
}

impl StorageFaults for StalledDevice {
    fn before_write(&self, _path: &Path) -> std::io::Result<()> {
        if self.failing.get() {
            return Err(std::io::Error::other("device stalled"));
        }
        Ok(())
    }
}

#[test]
fn with_a_journal_follower_appends_survive_a_crash_and_cut_or_reset_batches_never_come_back() {
    let root = temp_dir();
    run(async move {
        let dir = root.path().join("log");
        let journal = root.path().join("journal");
        let config = LogConfig { flush: FlushPolicy::Never, ..config() };
        let device = Rc::new(StalledDevice::default());
        let options = LogOptions {
            journal_dir: Some(journal.clone()),
            faults: Some(device.clone() as Rc<dyn StorageFaults>),
            ..LogOptions::default()
        };
        // Acknowledged from the journal while the device refuses every write; then a crash.
        let log = Log::open(&dir, config.clone(), options.clone()).await.unwrap();
        device.failing.set(true);
        let first = vec![leader_batch(1, 0, 3, 2), leader_batch(2, 3, 3, 2)];
        log.append_replicated(first.clone()).await.unwrap();
        assert_eq!(log.offsets().written, 0, "nothing reached the segment");
        // The crashed log's flush task keeps retrying in this executor; its device stays
        // stalled so it never writes again, as a dead process would not.
        drop(log);
        let options = LogOptions { faults: None, ..options };
        let log = Log::open(&dir, config.clone(), options.clone()).await.unwrap();
        let expected: Vec<(i64, Vec<u8>)> = vec![(0, first[0].to_vec()), (3, first[1].to_vec())];
        assert_eq!(read_all(&log).await, expected, "replayed from the journal");

        // Truncate below them, append a different batch, crash: the cut one stays cut.
        log.truncate_to(3).await.unwrap();
        let replacement = leader_batch(3, 3, 1, 4);
        log.append_replicated(vec![replacement.clone()]).await.unwrap();
        drop(log);
        let log = Log::open(&dir, config.clone(), options.clone()).await.unwrap();
        assert_eq!(read_all(&log).await, vec![expected[0].clone(), (3, replacement.to_vec())]);

        // Reset, crash: empty at the new start, nothing replayed into it.
        log.reset_to(3).await.unwrap();
        drop(log);
        let log = Log::open(&dir, config.clone(), options).await.unwrap();
        let offsets = log.offsets();
        assert_eq!((offsets.start, offsets.next), (3, 3));
        assert!(read_all(&log).await.is_empty());
        log.close().await.unwrap();
    });
}

#[test]
fn follower_appends_take_and_give_back_the_shards_memory_budget() {
    let dir = temp_dir();
    run(async {
        let memory = spate_storage::memory::ShardMemory::new(
            spate_storage::limits::PENDING_BYTES_MAX,
            1 << 20,
        );
        let options = LogOptions { memory: Some(memory.clone()), ..LogOptions::default() };
        let log = Log::open(dir.path(), config(), options).await.unwrap();
        let batches: Vec<Bytes> = (0..4).map(|i| leader_batch(i, i as i64 * 3, 3, 1)).collect();
        log.append_replicated(batches).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(memory.pending_bytes(), 0, "released once written");
        // A refused append gives its share back too.
        assert!(log.append_replicated(vec![leader_batch(9, 100, 1, 1)]).await.is_err());
        assert_eq!(memory.pending_bytes(), 0);
        log.close().await.unwrap();
    });
}
