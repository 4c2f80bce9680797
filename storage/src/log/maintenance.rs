//! Maintenance: truncation to an offset, moving the start offset, retention, close and flush.

use std::rc::Rc;

use super::recovery::index_segment;
use super::{fdatasync, write_start_checkpoint, Log, RetentionReport};
use crate::error::{LogError, Result};
use crate::faults::Step;
use crate::scan::Check;
use crate::segment::{self, round_up, Segment};

impl Log {
    /// Removes every batch at or after `offset`, which must be a batch boundary in
    /// `[start, next]`. Queued appends are written first. Crash-safe at every step (see
    /// `cut_files`): a crash leaves a prefix of the old log holding everything below `offset`;
    /// once this returns, the cut is durable. A failed step takes the log offline.
    pub async fn truncate_to(&self, offset: i64) -> Result<()> {
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        self.drain_locked().await?;
        let (file, paths, base, search_from, size) = {
            let state = self.inner.state.borrow();
            if offset > state.next_offset || offset < state.start_offset {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: state.start_offset,
                    end: state.next_offset,
                });
            }
            if offset == state.next_offset {
                return Ok(());
            }
            let (_, segment) = state
                .segments
                .range(..=offset)
                .next_back()
                .ok_or(LogError::NotBatchBoundary(offset))?;
            let relative = (offset - segment.base_offset) as u32;
            (
                segment.file.clone(),
                segment.paths.clone(),
                segment.base_offset,
                segment.index.lookup(relative) as u64,
                segment.size,
            )
        };
        // Find the byte position of the batch starting at `offset`.
        let mut cut = None;
        let mut straddles = false;
        if offset == base {
            cut = Some(0);
        } else {
            segment::scan_file(
                &file,
                &paths.log,
                search_from,
                size,
                None,
                Check::Structure,
                |batch, _| {
                    if batch.header.base_offset == offset {
                        cut = Some(batch.position);
                        return false;
                    }
                    if batch.header.base_offset < offset && batch.header.next_offset() > offset {
                        straddles = true;
                        return false;
                    }
                    batch.header.base_offset < offset
                },
            )
            .await?;
        }
        let cut = match cut {
            Some(cut) if !straddles => cut,
            _ => return Err(LogError::NotBatchBoundary(offset)),
        };
        // Recompute the segment's running max timestamp and index for what remains (reads only).
        let interval = self.inner.state.borrow().config.index_interval_bytes;
        let (index, _) =
            index_segment(&file, &paths.log, base, cut, Check::Structure, interval).await?;
        let tail = segment::read_tail(&file, &paths.log, cut).await?;

        // From here on files change. A failed step leaves memory and files apart: the log goes
        // offline and reopening recovers (see `cut_files` for what a crash at each step leaves).
        let doomed = match self.cut_files(base, &file, &paths, cut, &tail).await {
            Ok(doomed) => doomed,
            Err(error) => {
                self.take_offline(&error);
                return Err(error);
            }
        };

        let mut state = self.inner.state.borrow_mut();
        let active = state.active_mut();
        assert_eq!(active.base_offset, base);
        active.size = cut;
        active.next_offset = offset;
        active.index = index;
        active.tail = tail;
        // Everything was written before the cut, so the journal holds nothing past it.
        state.end_at(offset);
        tracing::info!(dir = %self.inner.dir.display(), offset, segments_removed = doomed.len(), "truncated log");
        Ok(())
    }

    /// The file-changing steps of `truncate_to`, in an order that keeps the log consistent if
    /// the process dies (or the power goes) after any of them: recovery then finds a prefix of
    /// the old log that still holds everything below the cut, and once this returns nothing at
    /// or past the cut can come back.
    /// 1. Restart the journal (after the drain it holds nothing that is not in a segment; a
    ///    batch past the cut left in it would be replayed on open).
    /// 2. Delete the segments wholly past the cut, newest first: a crash in between leaves a
    ///    shorter but gap-free log.
    /// 3. fsync the directory: those deletions are durable before the cut segment changes, so
    ///    no later segment can reappear behind a cut (and later rewritten) segment.
    /// 4. Cut the segment's file to the block holding the cut, rewrite that block zero-padded
    ///    past the cut, fdatasync. Before the fdatasync, recovery scans the (now last) segment
    ///    and stops at the cut or at an old batch after it (whole or torn): a prefix either way.
    /// 5. Delete its stale index files (the last segment's indexes are rebuilt on open anyway),
    ///    fsync the directory.
    ///
    /// Returns the deleted segments. Caller holds the IO lock and takes the log offline on error.
    async fn cut_files(
        &self,
        base: i64,
        file: &glommio::io::DmaFile,
        paths: &crate::segment::SegmentPaths,
        cut: u64,
        tail: &[u8],
    ) -> Result<Vec<Segment>> {
        self.before_step(Step::TruncateRestartJournal)?;
        self.restart_journal();
        let doomed: Vec<Segment> = {
            let mut state = self.inner.state.borrow_mut();
            let later: Vec<i64> = state.segments.range(base + 1..).map(|(b, _)| *b).collect();
            later.into_iter().rev().filter_map(|b| state.segments.remove(&b)).collect()
        };
        for segment in &doomed {
            self.before_step(Step::TruncateRemoveSegment)?;
            segment::remove_segment_files(&segment.paths);
        }
        if !doomed.is_empty() {
            self.before_step(Step::TruncateSyncDir)?;
            segment::sync_dir(&self.inner.dir).await?;
        }
        self.before_step(Step::TruncateCutFile)?;
        file.truncate(round_up(cut)).await.map_err(|e| LogError::io("truncate", &paths.log, e))?;
        self.before_step(Step::TruncateRewriteTail)?;
        segment::rewrite_tail_block(file, &paths.log, cut, tail).await?;
        fdatasync(file, &paths.log, self.inner.options.faults.as_ref()).await?;
        self.before_step(Step::TruncateRemoveIndexes)?;
        for path in [&paths.index, &paths.time_index] {
            let _ = std::fs::remove_file(path);
        }
        segment::sync_dir(&self.inner.dir).await?;
        Ok(doomed)
    }

    /// Moves the start offset forward (never past the high watermark): reads below it get
    /// `OffsetOutOfRange`, and whole segments below it are deleted. Persisted.
    pub async fn advance_start_offset(&self, offset: i64) -> Result<()> {
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        let new_start = {
            let state = self.inner.state.borrow();
            offset.clamp(state.start_offset, state.high_watermark())
        };
        write_start_checkpoint(&self.inner.dir, new_start)?;
        {
            let mut state = self.inner.state.borrow_mut();
            state.start_offset = new_start;
            state.cache.drop_before(new_start);
        }
        self.delete_old_segments(i64::MIN).await;
        Ok(())
    }

    /// Deletes sealed segments past the retention limits (size, then time). The active segment
    /// is never deleted.
    pub async fn enforce_retention(&self) -> Result<RetentionReport> {
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        let now_ms = self.inner.options.clock.now_ms();
        Ok(self.delete_old_segments(now_ms).await)
    }

    /// Caller holds the IO lock. `now_ms = i64::MIN` skips time retention.
    async fn delete_old_segments(&self, now_ms: i64) -> RetentionReport {
        let mut report = RetentionReport::default();
        let mut doomed = Vec::new();
        {
            let mut state = self.inner.state.borrow_mut();
            // Bounded by the segment count; each iteration removes one segment or stops.
            while state.segments.len() > 1 {
                let total = state.size_bytes();
                let first = state.segments.values().next().expect("len > 1");
                let below_start = first.next_offset <= state.start_offset;
                let over_size =
                    state.config.retention_bytes.is_some_and(|limit| total - first.size >= limit);
                let too_old = now_ms != i64::MIN
                    && state
                        .config
                        .retention_ms
                        .is_some_and(|ms| first.index.max_timestamp < now_ms - ms as i64);
                if !(below_start || over_size || too_old) {
                    break;
                }
                let base = first.base_offset;
                let segment = state.segments.remove(&base).expect("exists");
                report.segments_deleted += 1;
                report.bytes_deleted += segment.size;
                let new_start = *state.segments.keys().next().expect("len > 1 before removal");
                state.start_offset = state.start_offset.max(new_start);
                let start = state.start_offset;
                state.cache.drop_before(start);
                doomed.push(segment);
            }
        }
        for segment in &doomed {
            segment::remove_segment_files(&segment.paths);
            tracing::info!(path = %segment.paths.log.display(), bytes = segment.size, "retention deleted segment");
        }
        report
    }

    /// Writes everything queued, fdatasyncs, and refuses further appends.
    pub async fn close(&self) -> Result<()> {
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        if self.ensure_open().is_err() {
            return Ok(());
        }
        let drained = self.drain_locked().await;
        let synced = self.sync_active().await;
        let files: Vec<_> = {
            let mut state = self.inner.state.borrow_mut();
            // Everything is in the segment: the journal has nothing left to keep. (After a
            // failed drain it stays, and the next open replays it.)
            if let (Ok(()), Some(journal)) = (&drained, state.journal.take()) {
                if let Err(error) = journal.remove() {
                    tracing::warn!(%error, "could not remove the journal");
                }
            }
            state.closed = true;
            if let Some(memory) = &self.inner.options.memory {
                memory.log_closed();
            }
            state.fail_waiters(&LogError::Closed);
            state.cache.clear();
            self.inner.read_stream.release();
            // Appenders waiting for room fail with `Closed` instead of waiting forever.
            self.inner.pending_budget.close();
            std::mem::take(&mut state.segments).into_values().map(|s| s.file).collect()
        };
        // Close descriptors now rather than at the executor's next IO cycle. A file a reader
        // still holds is closed when that reader drops it.
        for file in files {
            if let Ok(file) = Rc::try_unwrap(file) {
                let _ = file.close().await;
            }
        }
        drained.and(synced)
    }

    /// Waits until everything appended so far is written and durable, whatever the policy.
    pub async fn flush(&self) -> Result<()> {
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        self.drain_locked().await?;
        self.sync_active().await
    }
}
