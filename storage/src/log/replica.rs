//! What replication needs from a partition log beyond a producer's append: a follower's append
//! that keeps the leader's offsets and terms, a reset to an empty log at a given start offset,
//! and reads bounded by the caller's commit point rather than by the log's own end.
//!
//! Reset intent file: `<dir>/reset-to`, decimal text (the new start offset) and a newline,
//! written atomically (temporary file, fdatasync, rename, directory fsync). While it exists the
//! log is being reset: opening the log finishes the reset before anything else (see
//! [`Log::reset_to`] for the step order).

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use spate_protocol::batch::{self, BatchHeader};

use super::{write_start_checkpoint, Appended, Log, LogRead, State};
use crate::error::{LogError, Result};
use crate::faults::{Step, StorageFaults};
use crate::index::SegmentIndex;
use crate::journal::Journal;
use crate::limits;
use crate::segment::{self, Segment, SegmentPaths};

const RESET_INTENT_FILE: &str = "reset-to";

impl Log {
    /// A follower's append: writes `batches` exactly as the leader stamped them, at their own
    /// base offsets and with their own `leader_term` (nothing is restamped). The first batch
    /// must start at the log end (`NotAtLogEnd`), each next one where the previous ended, with
    /// a term no lower (`NotContiguous`); every batch is fully validated (shape, CRC, records)
    /// before any is queued, so a refused append leaves the log unchanged. Control batches are
    /// accepted (replication writes them; producers' appends cannot).
    ///
    /// The bytes are queued as given (no copy until the flush round copies them into its DMA
    /// buffer; a slice of a larger receive buffer keeps that buffer alive until written and
    /// evicted from the tail cache). Completes as [`append_batches`](Log::append_batches) does:
    /// once written, or durable under `flush=always`, or journaled under `flush=never` with a
    /// journal. The leader's driver writes its own leader markers, membership records and
    /// proposals (whose offsets and term the replication core chose) the same way.
    pub async fn append_replicated(&self, batches: Vec<Bytes>) -> Result<Appended> {
        let headers = validate_replicated(&batches)?;
        let length: usize = batches.iter().map(Bytes::len).sum();
        if length > limits::PENDING_BYTES_MAX {
            return Err(LogError::AppendTooLarge(length));
        }
        let turn = self.reserve_pending(length).await?;

        let (appended, replies, start_flush_task) = {
            let queued = self.ensure_open().and_then(|()| {
                let state = self.inner.state.borrow();
                let first = headers[0].base_offset;
                if first != state.next_offset {
                    return Err(LogError::NotAtLogEnd {
                        base_offset: first,
                        log_end: state.next_offset,
                    });
                }
                Ok(())
            });
            if let Err(error) = queued {
                self.release_pending(length);
                return Err(error);
            }
            let now_ms = self.inner.options.clock.now_ms();
            let mut state = self.inner.state.borrow_mut();
            self.before_queueing(&mut state);
            let first_offset = state.next_offset;
            let mut replies = Vec::new();
            let mut journaled = state.journaling();
            // Bounded by the batches given.
            for (bytes, header) in batches.into_iter().zip(&headers) {
                state.record_replicated(header, now_ms);
                let next_offset = state.queue_replicated(bytes, header);
                if journaled {
                    // Acknowledged once journaled: the journal keeps it through a process crash.
                    let bytes = state.pending.back().expect("just queued").bytes.clone();
                    journaled = state.journal_batch(
                        &self.inner.dir,
                        header.base_offset,
                        next_offset,
                        &bytes,
                    );
                }
                if !journaled {
                    replies.push(state.wait_for(next_offset));
                }
            }
            let start_flush_task = self.after_queueing(&mut state);
            let last_offset = state.next_offset - 1;
            assert_eq!(last_offset, headers.last().expect("non-empty").last_offset());
            (Appended { base_offset: first_offset, last_offset }, replies, start_flush_task)
        };
        drop(turn);
        self.complete_append(appended, replies, start_flush_task).await
    }

    /// Reads whole batches from the one holding `offset`, as [`read`](Log::read) does, but
    /// never a batch that ends past `upper` (exclusive; e.g. the high watermark the replication
    /// core computed) nor past what the log holds: everything written to a segment (or
    /// journaled), whatever the flush policy, so a leader can send what it has not yet synced.
    /// `LogRead::high_watermark` is the bound applied. Reading in `[bound, log end]` returns no
    /// batches; below the start or past the log end is `OffsetOutOfRange`.
    pub async fn read_bounded(&self, offset: i64, bytes_max: usize, upper: i64) -> Result<LogRead> {
        self.read_within(offset, bytes_max, Some(upper)).await
    }

    /// Drops every segment and restarts the log empty at `start_offset` (any offset, above or
    /// below the current end): for a replica whose missing records the leader has already
    /// deleted. Queued appends are written first. Crash-safe: a crash at any step recovers to
    /// either the old log or the new empty one, never a mix. The steps:
    /// 1. write the intent file `reset-to` atomically — before it is durable, recovery finds
    ///    the old log untouched; after, opening the log finishes the reset (steps 2-6, each
    ///    safe to repeat) before it looks at any segment;
    /// 2. delete every segment, newest first; 3. fsync the directory;
    /// 4. write the start-offset checkpoint; 5. create the empty segment at `start_offset`,
    ///    fsync the directory; 6. delete the intent, fsync the directory.
    ///
    /// The replication driver persists the matching replica state (term history, membership
    /// floor) *after* this returns: a crash in between leaves a reset log with the old replica
    /// state, whose history entries at or past the new end the driver drops on restart.
    /// A failed step takes the log offline; reopening finishes or abandons the reset as above.
    pub async fn reset_to(&self, start_offset: i64) -> Result<()> {
        if !(0..=spate_protocol::limits::OFFSET_MAX).contains(&start_offset) {
            return Err(LogError::OffsetOutOfRange {
                offset: start_offset,
                start: 0,
                end: spate_protocol::limits::OFFSET_MAX,
            });
        }
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        self.drain_locked().await?;
        let result = self.reset_files(start_offset).await;
        match result {
            Ok(segment) => {
                let mut state = self.inner.state.borrow_mut();
                let old = std::mem::take(&mut state.segments);
                state.segments.insert(start_offset, segment);
                state.start_offset = start_offset;
                state.end_at(start_offset);
                state.roll_requested = false;
                state.cache.clear();
                assert!(state.pending.is_empty() && state.waiters.is_empty(), "drained");
                tracing::info!(dir = %self.inner.dir.display(), start_offset, segments_removed = old.len(), "reset log");
                Ok(())
            }
            Err(error) => {
                self.take_offline(&error);
                Err(error)
            }
        }
    }

    /// Steps 1-6 of `reset_to`; returns the new, empty segment. Caller holds the IO lock.
    async fn reset_files(&self, start_offset: i64) -> Result<Segment> {
        let dir = &self.inner.dir;
        let faults = self.inner.options.faults.as_ref();
        // Drained, so everything the journal held is in a segment; emptied before the intent,
        // so the reset that open() may finish never meets an old batch in it.
        self.restart_journal();
        before_step(faults, dir, Step::ResetWriteIntent)?;
        let intent = dir.join(RESET_INTENT_FILE);
        crate::durable::write_atomically(&intent, format!("{start_offset}\n").as_bytes())
            .map_err(|e| LogError::io("write", &intent, e))?;
        let paths = finish_reset(dir, start_offset, faults).await?;
        let file = segment::open_log_file(&paths.log, false).await?;
        let now_ms = self.inner.options.clock.now_ms();
        Ok(Segment {
            base_offset: start_offset,
            file: Rc::new(file),
            paths,
            size: 0,
            next_offset: start_offset,
            index: SegmentIndex::new(),
            tail: Vec::new(),
            created_ms: now_ms,
        })
    }

    /// Empties the journal of a `flush=never` log: after a drain everything it held is in a
    /// segment, and after a truncation or reset a batch it still held could be replayed past
    /// the new end. A journal that cannot be restarted is given up (appends then complete after
    /// their write), as when it fails on append.
    pub(super) fn restart_journal(&self) {
        let Some(journal_dir) = self.inner.options.journal_dir.as_ref() else { return };
        let mut state = self.inner.state.borrow_mut();
        if state.journal.is_none() {
            return;
        }
        assert!(state.pending.is_empty(), "the journal restarts only after a drain");
        match Journal::create(journal_dir) {
            Ok(journal) => state.journal = Some(journal),
            Err(error) => {
                tracing::error!(dir = %journal_dir.display(), %error,
                    "could not restart the journal; flush=never appends now complete after their write");
                state.journal = None;
            }
        }
    }

    /// Runs the fault hook of a step, if any.
    pub(super) fn before_step(&self, step: Step) -> Result<()> {
        before_step(self.inner.options.faults.as_ref(), &self.inner.dir, step)
    }
}

impl State {
    /// Queues a batch that carries its own offsets and term (a follower's append): no stamp.
    /// Returns the offset after it.
    fn queue_replicated(&mut self, bytes: Bytes, header: &BatchHeader) -> i64 {
        assert_eq!(header.base_offset, self.next_offset, "checked by append_replicated");
        let next_offset = header.next_offset();
        self.push_queued(bytes, header.base_offset, next_offset, header.max_timestamp);
        next_offset
    }
}

fn before_step(faults: Option<&Rc<dyn StorageFaults>>, dir: &Path, step: Step) -> Result<()> {
    match faults {
        Some(faults) => faults.before_step(step).map_err(|e| LogError::io(step.name(), dir, e)),
        None => Ok(()),
    }
}

/// Validates a follower's batches: each whole and valid, contiguous, terms non-decreasing.
fn validate_replicated(batches: &[Bytes]) -> Result<Vec<BatchHeader>> {
    if batches.is_empty() {
        return Err(LogError::Config("no batch to append".into()));
    }
    let mut headers: Vec<BatchHeader> = Vec::with_capacity(batches.len());
    for bytes in batches {
        let header = batch::validate(bytes)?;
        if let Some(previous) = headers.last() {
            if header.base_offset != previous.next_offset()
                || header.leader_term < previous.leader_term
            {
                return Err(LogError::NotContiguous {
                    expected: previous.next_offset(),
                    found: header.base_offset,
                    term: header.leader_term,
                });
            }
        }
        headers.push(header);
    }
    Ok(headers)
}

/// The reset start offset recorded by an unfinished reset, if any.
fn read_reset_intent(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(RESET_INTENT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(offset) if (0..=spate_protocol::limits::OFFSET_MAX).contains(&offset) => {
                Ok(Some(offset))
            }
            // Written atomically, so this is damage: refusing is safer than guessing between
            // the old log and a reset one.
            _ => Err(LogError::Corruption {
                path,
                position: 0,
                reason: format!("unreadable reset intent {text:?}"),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("read", path, e)),
    }
}

/// On open: finishes a reset that a crash interrupted (after its intent became durable).
pub(super) async fn finish_interrupted_reset(
    dir: &Path,
    faults: Option<&Rc<dyn StorageFaults>>,
) -> Result<()> {
    let Some(start_offset) = read_reset_intent(dir)? else { return Ok(()) };
    tracing::warn!(dir = %dir.display(), start_offset, "finishing an interrupted log reset");
    finish_reset(dir, start_offset, faults).await.map(|_| ())
}

/// Steps 2-6 of a reset (the intent is durable). Each step can be repeated after a crash.
/// Returns the new segment's paths.
async fn finish_reset(
    dir: &Path,
    start_offset: i64,
    faults: Option<&Rc<dyn StorageFaults>>,
) -> Result<SegmentPaths> {
    let mut bases = super::list_segments(dir)?;
    bases.reverse();
    // Bounded by the segments listed (at most `SEGMENTS_MAX`, checked on open).
    for base in bases {
        before_step(faults, dir, Step::ResetRemoveSegment)?;
        segment::remove_segment_files(&SegmentPaths::new(dir, base));
    }
    before_step(faults, dir, Step::ResetSyncDir)?;
    segment::sync_dir(dir).await?;
    before_step(faults, dir, Step::ResetWriteStart)?;
    write_start_checkpoint(dir, start_offset)?;
    before_step(faults, dir, Step::ResetCreateSegment)?;
    let paths = SegmentPaths::new(dir, start_offset);
    let file = segment::open_log_file(&paths.log, true).await?;
    file.close().await.map_err(|e| LogError::io("close", &paths.log, e))?;
    segment::sync_dir(dir).await?;
    before_step(faults, dir, Step::ResetRemoveIntent)?;
    let intent = dir.join(RESET_INTENT_FILE);
    std::fs::remove_file(&intent).map_err(|e| LogError::io("remove", &intent, e))?;
    segment::sync_dir(dir).await?;
    Ok(paths)
}
