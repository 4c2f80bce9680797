//! The write path: appends queue batches, one flush task per log writes them in rounds behind
//! the partial tail block, and fdatasyncs as the flush policy asks. Also rolls, and what a
//! failed write (rollback, repair) or a failed fdatasync (offline) leaves behind.

use std::rc::Rc;

use bytes::BytesMut;
use spate_protocol::batch;

use super::producer_state::Admission;
use super::{fdatasync, Appended, Log, Pending, State};
use crate::config::FlushPolicy;
use crate::error::{LogError, Result};
use crate::index::{SegmentIndex, SegmentSummary};
use crate::limits;
use crate::segment::{self, round_down, round_up, Segment, SegmentPaths};

impl Log {
    /// Appends one batch (validated here: shape, CRC and records). Stamps its base offset and
    /// `leader_term` in place, and completes once the batch is written, or under
    /// `flush=always` once it is durable, or under `flush=never` with a journal once it is
    /// journaled (see the module docs of `log`).
    pub async fn append(&self, batch: BytesMut, leader_term: u64) -> Result<Appended> {
        self.append_batches(vec![batch], leader_term).await
    }

    /// Appends batches as one unit: all are validated before any is queued, and they take
    /// consecutive offsets, with no other append in between. Appends take offsets strictly in
    /// the order they were called (the budget they wait for is first come, first served), so
    /// pipelined produces to one partition keep their order. Returns the offsets of all of them;
    /// fails with the first error if any batch failed to be written (an earlier batch may then
    /// have been written: it is readable, and its offsets stay taken).
    pub async fn append_batches(
        &self,
        mut batches: Vec<BytesMut>,
        leader_term: u64,
    ) -> Result<Appended> {
        let headers = batches.iter().map(|b| batch::validate(b)).collect::<Result<Vec<_>, _>>()?;
        let length: usize = batches.iter().map(BytesMut::len).sum();
        if headers.is_empty() {
            return Err(LogError::Config("no batch to append".into()));
        }
        assert!(length <= limits::PENDING_BYTES_MAX);
        let turn = self.reserve_pending(length).await?;

        // Idempotent producers are checked where offsets are taken: nothing awaits between this
        // and the queueing below, so pipelined batches are checked in the order they queue.
        if self.ensure_open().is_ok() {
            let now_ms = self.inner.options.clock.now_ms();
            let admission = self.inner.state.borrow_mut().admit(&headers, now_ms);
            if !matches!(admission, Admission::Append) {
                self.release_pending(length);
                // A duplicate waits for its original's acknowledgement, not holding the turn.
                drop(turn);
                return admission.outcome().await;
            }
        }
        let (appended, replies, start_flush_task) = {
            if let Err(error) = self.ensure_open() {
                self.release_pending(length);
                return Err(error);
            }
            let mut state = self.inner.state.borrow_mut();
            self.before_queueing(&mut state);
            let first_offset = state.next_offset;
            let mut replies = Vec::new();
            let mut journaled = state.journaling();
            for (batch, header) in batches.iter_mut().zip(&headers) {
                let base_offset = state.next_offset;
                let next_offset = state.queue(std::mem::take(batch), header, leader_term);
                if journaled {
                    // Acknowledged once journaled: the journal keeps it through a process crash.
                    let bytes = state.pending.back().expect("just queued").bytes.clone();
                    journaled =
                        state.journal_batch(&self.inner.dir, base_offset, next_offset, &bytes);
                }
                if !journaled {
                    replies.push(state.wait_for(next_offset));
                }
            }
            let start_flush_task = self.after_queueing(&mut state);
            let appended =
                Appended { base_offset: first_offset, last_offset: state.next_offset - 1 };
            (appended, replies, start_flush_task)
        };
        // Queued: the next append may take its offsets (not only once this one is written).
        drop(turn);
        self.complete_append(appended, replies, start_flush_task).await
    }

    /// Takes room for `length` bytes of queued batches (the log's pending budget, then its
    /// shard's), then waits for this append's turn, and returns the turn: the caller passes it
    /// on (drops it) once it queued. Appends so take offsets in the order they were called.
    ///
    /// Both budgets are first come, first served, but that decides who is granted room, not who
    /// runs first: an append granted room is woken, and a newcomer that finds room left over
    /// (Glommio runs a spawned task ahead of woken ones) would queue before it. The turn keeps
    /// call order. It is waited for only once room is held. Every earlier append of this log
    /// already holds its room in the log's budget (that one is fair), so the wait is for
    /// earlier appends that are runnable, or that wait for the shard's room, which flush rounds
    /// give back whatever this append holds (a shard's budget is at least a log's): the turn
    /// is never part of a wait cycle. (6e002f5 waited for the turn first, and then held it
    /// while waiting for room; CI then hung twice in tests that commit offsets.)
    ///
    /// The budgets are guards until taken for good, so an append cancelled while it waits gives
    /// them back; afterwards the flush round that writes the bytes (or a rollback) releases
    /// them.
    pub(super) async fn reserve_pending(
        &self,
        length: usize,
    ) -> Result<spate_protocol::turnstile::Ticket> {
        // Taken before any wait, so in call order (and before the budgets' queues are joined).
        let turn = self.inner.admission.ticket();
        self.ensure_open()?;
        self.ensure_writable()?;
        let permits = self
            .inner
            .pending_budget
            .acquire_many(length as u32)
            .await
            .map_err(|_| LogError::Closed)?;
        let shard_permits = match &self.inner.options.memory {
            Some(memory) => Some(memory.acquire_pending(length).await),
            None => None,
        };
        turn.wait().await;
        self.ensure_open()?;
        permits.forget();
        if let Some(shard_permits) = shard_permits {
            shard_permits.forget();
        }
        Ok(turn)
    }

    /// Before batches are queued: write-behind counts from the first, and the tail cache takes
    /// its current share of the shard's budget.
    pub(super) fn before_queueing(&self, state: &mut State) {
        if state.pending.is_empty() {
            state.pending_since = std::time::Instant::now();
        }
        if let Some(memory) = &self.inner.options.memory {
            let capacity = memory.cache_share(state.config.cache_bytes);
            state.cache.set_capacity(capacity);
        }
    }

    /// After batches are queued: a roll the segment's age asks for, and the flush task (returns
    /// whether one must be started; a gathering one is told to write if these tipped it).
    pub(super) fn after_queueing(&self, state: &mut State) -> bool {
        if let Some(segment_ms) = state.config.segment_ms {
            let now_ms = self.inner.options.clock.now_ms();
            let active = state.active();
            if active.size > 0 && now_ms - active.created_ms >= segment_ms as i64 {
                state.roll_requested = true;
            }
        }
        let start_flush_task = !state.flush_task_running;
        state.flush_task_running = true;
        if !start_flush_task && self.write_behind_wait(state).is_none() {
            self.inner.write_now.notify_one();
        }
        start_flush_task
    }

    /// Starts the flush task if asked (with no borrow held: Glommio may run it before this task
    /// yields) and waits for the batches that were not acknowledged from the journal.
    pub(super) async fn complete_append(
        &self,
        appended: Appended,
        replies: Vec<futures_channel::oneshot::Receiver<Result<()>>>,
        start_flush_task: bool,
    ) -> Result<Appended> {
        if start_flush_task {
            self.spawn_background(flush_task(self.clone()));
        }
        // Bounded by the batches given.
        for reply in replies {
            match reply.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(appended)
    }

    /// Writes one round of queued batches. Returns whether more are queued, or the error that
    /// failed (and rolled back) the round. Caller holds the IO lock.
    async fn flush_round(&self) -> Result<bool> {
        // Copies of the handles: the batches stay queued (and readable) until written.
        let work: Vec<Pending> = {
            let state = self.inner.state.borrow();
            let count = round_batch_count(state.pending.iter().map(|p| p.bytes.len()));
            if count == 0 {
                return Ok(false);
            }
            state.pending.iter().take(count).cloned().collect()
        };
        let result = self.write_batches(&work).await;
        let result = match result {
            Ok(()) => self.sync_after_write().await,
            Err(error) => {
                // Keep what did reach the file; make it durable if the policy wants that.
                let _ = self.sync_after_write().await;
                Err(error)
            }
        };
        drop(work);
        let (offline, released) = {
            let mut state = self.inner.state.borrow_mut();
            let written = state.written_offset;
            let mut released = 0usize;
            // Bounded by the queue.
            while state.pending.front().is_some_and(|p| p.next_offset <= written) {
                released += state.pending.pop_front().expect("checked").bytes.len();
            }
            state.pending_bytes -= released;
            match &result {
                Ok(()) => {
                    state.write_error = None;
                    state.wake_waiters();
                    if let Some(journal) = state.journal.as_mut() {
                        if let Err(error) = journal.release(written) {
                            tracing::warn!(%error, "could not release journal files");
                        }
                    }
                }
                Err(error) if state.acked_end > written && state.offline.is_none() => {
                    // Acknowledged (journaled) batches must still be written: keep them queued,
                    // ahead of the rest, and retry; refuse new appends until a write succeeds.
                    if state.write_error.is_none() {
                        tracing::warn!(dir = %self.inner.dir.display(), %error, written, acknowledged = state.acked_end,
                            "write failed; keeping the acknowledged batches queued and retrying");
                    }
                    state.write_error = Some(error.duplicate());
                }
                Err(error) => self.roll_back_unwritten(&mut state, error),
            }
            (state.offline.is_some(), released)
        };
        self.release_pending(released);
        // An offline log touches its files no more: recovery on restart decides.
        if result.is_err() && !offline {
            self.repair_after_failed_write().await;
        }
        result.map(|()| !self.inner.state.borrow().pending.is_empty())
    }

    /// A failed fdatasync is fail-stop: the pages it covered may be gone from the page cache
    /// and from the device alike, so nothing written since the last good fdatasync may ever be
    /// reported or served as written. Every waiting appender fails; every later call fails.
    pub(super) fn take_offline(&self, error: &LogError) {
        let mut state = self.inner.state.borrow_mut();
        if state.offline.is_none() {
            tracing::error!(dir = %self.inner.dir.display(), %error,
                "fdatasync failed; the partition is offline until the broker restarts");
            state.offline = Some(error.to_string());
        }
        let queued: usize = state.pending.drain(..).map(|p| p.bytes.len()).sum();
        state.pending_bytes -= queued;
        self.release_pending(queued);
        state.cache.clear();
        let offline = LogError::Offline(state.offline.clone().expect("set above"));
        // Only what an earlier fdatasync covered stays acknowledged.
        state.written_offset = state.durable_offset;
        state.next_offset = state.durable_offset;
        state.fail_waiters(&offline);
    }

    /// Refuses appends while acknowledged batches wait for a write that keeps failing.
    pub(super) fn ensure_writable(&self) -> Result<()> {
        match &self.inner.state.borrow().write_error {
            Some(error) => Err(error.duplicate()),
            None => Ok(()),
        }
    }

    /// After a failed write: every batch past `written` is gone. Fail their appenders, release
    /// their budget, and reset `next` so the next append reuses those offsets.
    fn roll_back_unwritten(&self, state: &mut State, error: &LogError) {
        tracing::warn!(dir = %self.inner.dir.display(), %error, written = state.written_offset,
            dropped = state.next_offset - state.written_offset, "append failed; rolling back unwritten batches");
        let queued: usize = state.pending.drain(..).map(|p| p.bytes.len()).sum();
        state.pending_bytes -= queued;
        self.release_pending(queued);
        state.next_offset = state.written_offset;
        let written = state.written_offset;
        state.cache.truncate(written);
        state.producers.truncate(written);
        state.fail_waiters(error);
    }

    /// A failed write may have put some blocks past the logical end. Cut them and restore the
    /// tail block, so a later crash can never resurrect a batch its producer was told failed.
    async fn repair_after_failed_write(&self) {
        let (file, path, size, tail) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            (active.file.clone(), active.paths.log.clone(), active.size, active.tail.clone())
        };
        if let Err(error) = file.truncate(round_up(size)).await {
            tracing::warn!(path = %path.display(), %error, "could not cut blocks after failed write");
        }
        if let Err(error) = segment::rewrite_tail_block(&file, &path, size, &tail).await {
            tracing::warn!(path = %path.display(), %error, "could not restore tail block after failed write");
        }
    }

    /// Copies `work` behind the tail block into aligned buffers and writes them, rolling segments
    /// as needed. Updates `written` after each successful write.
    async fn write_batches(&self, work: &[Pending]) -> Result<()> {
        let mut i = 0;
        // Each iteration writes at least one batch or fails.
        while i < work.len() {
            if self.roll_is_due(work[i].bytes.len()) {
                self.roll_locked(work[i].base_offset).await?;
            }
            let (file, path, position, buffer, new_tail, end) = {
                let state = self.inner.state.borrow();
                let active = state.active();
                let plan = plan_write(
                    active.size,
                    active.tail.len(),
                    state.config.segment_bytes,
                    work[i..].iter().map(|p| p.bytes.len()),
                );
                let end = i + plan.batches;
                let mut buffer = active.file.alloc_dma_buffer(plan.buffer_bytes);
                let bytes = buffer.as_bytes_mut();
                bytes[..active.tail.len()].copy_from_slice(&active.tail);
                let mut at = active.tail.len();
                for pending in &work[i..end] {
                    bytes[at..at + pending.bytes.len()].copy_from_slice(&pending.bytes);
                    at += pending.bytes.len();
                }
                assert_eq!(at, plan.new_tail.end);
                bytes[at..].fill(0);
                let new_tail = bytes[plan.new_tail].to_vec();
                (
                    active.file.clone(),
                    active.paths.log.clone(),
                    active.write_position(),
                    buffer,
                    new_tail,
                    end,
                )
            };
            if let Some(faults) = &self.inner.options.faults {
                faults.before_write(&path).map_err(|e| LogError::io("write", &path, e))?;
            }
            segment::write_all_at(&file, &path, buffer, position).await?;
            let mut state = self.inner.state.borrow_mut();
            let interval = state.config.index_interval_bytes;
            let active = state.active_mut();
            for pending in &work[i..end] {
                assert_eq!(pending.base_offset, active.next_offset, "batches are written in order");
                let relative = (pending.base_offset - active.base_offset) as u32;
                active.index.on_batch(
                    relative,
                    active.size as u32,
                    pending.max_timestamp,
                    interval,
                );
                active.size += pending.bytes.len() as u64;
                active.next_offset = pending.next_offset;
            }
            active.tail = new_tail;
            assert_eq!(active.tail.len() as u64, active.size % limits::BLOCK_BYTES as u64);
            state.written_offset = work[end - 1].next_offset;
            i = end;
        }
        Ok(())
    }

    fn roll_is_due(&self, next_batch_bytes: usize) -> bool {
        let state = self.inner.state.borrow();
        roll_due(
            state.active().size,
            next_batch_bytes,
            state.config.segment_bytes,
            state.roll_requested,
        )
    }

    /// Makes written data durable as the flush policy asks. Caller holds the IO lock.
    async fn sync_after_write(&self) -> Result<()> {
        let (policy, last_sync_ms) = {
            let state = self.inner.state.borrow();
            if state.durable_offset == state.written_offset {
                return Ok(());
            }
            (state.config.flush, state.last_sync_ms)
        };
        match policy {
            FlushPolicy::Always => self.sync_active().await,
            FlushPolicy::Never => Ok(()),
            FlushPolicy::Interval(interval) => {
                let now_ms = self.inner.options.clock.now_ms();
                let interval_ms = interval.as_millis() as i64;
                if now_ms - last_sync_ms >= interval_ms {
                    return self.sync_active().await;
                }
                let arm =
                    !std::mem::replace(&mut self.inner.state.borrow_mut().sync_timer_armed, true);
                if arm {
                    let wait = std::time::Duration::from_millis(
                        (interval_ms - (now_ms - last_sync_ms)) as u64,
                    );
                    let log = self.clone();
                    self.spawn_background(async move {
                        glommio::timer::sleep(wait).await;
                        log.inner.state.borrow_mut().sync_timer_armed = false;
                        let Ok(_permit) = log.inner.io_lock.acquire_permit(1).await else { return };
                        if log.ensure_open().is_err() {
                            return;
                        }
                        if let Err(error) = log.sync_active().await {
                            tracing::error!(%error, "interval fdatasync failed");
                        }
                    });
                }
                Ok(())
            }
        }
    }

    /// fdatasyncs the active segment and advances `durable`. Caller holds the IO lock.
    pub(super) async fn sync_active(&self) -> Result<()> {
        let (file, path, target, dir_sync_due) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            // An empty log needs no durable directory entry: recovery creates it again.
            let holds_data = state.segments.len() > 1 || active.size > 0;
            (
                active.file.clone(),
                active.paths.log.clone(),
                state.written_offset,
                state.dir_sync_due && holds_data,
            )
        };
        if dir_sync_due {
            // The new segment's entry, the partition directory's and the topic directory's.
            let dir = &self.inner.dir;
            for dir in [Some(dir.as_path()), dir.parent(), dir.parent().and_then(|p| p.parent())]
                .into_iter()
                .flatten()
            {
                segment::sync_dir(dir).await?;
            }
            self.inner.state.borrow_mut().dir_sync_due = false;
        }
        if let Err(error) = fdatasync(&file, &path, self.inner.options.faults.as_ref()).await {
            self.take_offline(&error);
            return Err(error);
        }
        let mut state = self.inner.state.borrow_mut();
        state.durable_offset = state.durable_offset.max(target);
        state.last_sync_ms = self.inner.options.clock.now_ms();
        state.wake_waiters();
        Ok(())
    }

    /// Seals the active segment and starts a new one at `new_base`. Caller holds the IO lock
    /// and has written everything before `new_base`.
    async fn roll_locked(&self, new_base: i64) -> Result<()> {
        let (old_file, old_paths, offset_index, time_index, preallocate, segment_bytes) = {
            let state = self.inner.state.borrow();
            if state.segments.len() >= limits::SEGMENTS_MAX {
                return Err(LogError::TooManySegments(state.segments.len()));
            }
            let active = state.active();
            assert_eq!(
                active.next_offset, new_base,
                "roll must start where the active segment ends"
            );
            let summary = SegmentSummary {
                log_bytes: active.size,
                next_offset: active.next_offset,
                max_timestamp: active.index.max_timestamp,
            };
            (
                active.file.clone(),
                active.paths.clone(),
                active.index.encode_offsets(summary),
                active.index.encode_times(),
                state.config.preallocate,
                state.config.segment_bytes,
            )
        };
        // Order matters for crash safety: the old segment and its indexes are durable before the
        // new segment exists, so recovery only ever has to repair the last segment.
        if let Err(error) =
            fdatasync(&old_file, &old_paths.log, self.inner.options.faults.as_ref()).await
        {
            self.take_offline(&error);
            return Err(error);
        }
        segment::write_small_file(&old_paths.index, offset_index).await?;
        segment::write_small_file(&old_paths.time_index, time_index).await?;
        let paths = SegmentPaths::new(&self.inner.dir, new_base);
        let file = segment::open_log_file(&paths.log, true).await?;
        let created = async {
            if preallocate {
                file.pre_allocate(segment_bytes, false)
                    .await
                    .map_err(|e| LogError::io("fallocate", &paths.log, e))?;
            }
            segment::sync_dir(&self.inner.dir).await
        }
        .await;
        if let Err(error) = created {
            let _ = file.close().await;
            segment::remove_segment_files(&paths);
            return Err(error);
        }
        let mut state = self.inner.state.borrow_mut();
        state.active_mut().tail = Vec::new();
        let now_ms = self.inner.options.clock.now_ms();
        state.segments.insert(
            new_base,
            Segment {
                base_offset: new_base,
                file: Rc::new(file),
                paths,
                size: 0,
                next_offset: new_base,
                index: SegmentIndex::new(),
                tail: Vec::new(),
                created_ms: now_ms,
            },
        );
        state.roll_requested = false;
        tracing::debug!(dir = %self.inner.dir.display(), base = new_base, "rolled segment");
        Ok(())
    }

    /// Writes everything queued. Caller holds the IO lock.
    pub(super) async fn drain_locked(&self) -> Result<()> {
        // Each round takes at least one batch off the bounded queue, or fails and empties it.
        while self.flush_round().await? {}
        // A flush task gathering batches has nothing left to wait for: let it finish now.
        self.inner.write_now.notify_one();
        Ok(())
    }

    /// Seals the active segment (if it holds anything) and starts a new one.
    pub async fn roll(&self) -> Result<()> {
        self.ensure_open()?;
        let _permit = self.inner.io_lock.acquire_permit(1).await.map_err(|_| LogError::Closed)?;
        self.ensure_open()?;
        self.drain_locked().await?;
        let (empty, next) = {
            let state = self.inner.state.borrow();
            (state.active().size == 0, state.written_offset)
        };
        if empty {
            return Ok(());
        }
        self.roll_locked(next).await
    }
}

async fn flush_task(log: Log) {
    // Runs until the queue is empty; each round writes at least one batch, or fails (and then,
    // holding acknowledged batches, retries after a pause until a write succeeds). Gathering
    // (write-behind) ends within `limits::WRITE_BEHIND`.
    loop {
        let wait = log.write_behind_wait(&log.inner.state.borrow());
        if let Some(wait) = wait {
            futures_lite::future::or(glommio::timer::sleep(wait), log.inner.write_now.notified())
                .await;
            continue;
        }
        let Ok(permit) = log.inner.io_lock.acquire_permit(1).await else { return };
        let outcome = log.flush_round().await;
        drop(permit);
        if let Ok(true) = outcome {
            continue;
        }
        let retry = {
            let state = log.inner.state.borrow();
            state.write_error.is_some() && state.offline.is_none() && !state.closed
        };
        if retry {
            glommio::timer::sleep(limits::WRITE_RETRY_BACKOFF).await;
            continue;
        }
        // Appends that arrived during the round see the flag set and rely on this task.
        let mut state = log.inner.state.borrow_mut();
        if state.pending.is_empty() {
            state.flush_task_running = false;
            return;
        }
    }
}

impl Log {
    /// How long the flush task may still gather journaled batches before it writes them
    /// (write-behind, see [`limits::WRITE_BEHIND_BYTES`]); `None`: write now. Only batches that
    /// are already acknowledged from the journal gather; nothing else waits for a write it
    /// could have had.
    pub(super) fn write_behind_wait(&self, state: &State) -> Option<std::time::Duration> {
        if !state.journaling()
            || state.closed
            || state.write_error.is_some()
            || state.pending.is_empty()
            || state.acked_end < state.next_offset
            || state.pending_bytes >= limits::WRITE_BEHIND_BYTES
            || self.inner.options.memory.as_ref().is_some_and(|m| m.under_pressure())
        {
            return None;
        }
        limits::WRITE_BEHIND
            .checked_sub(state.pending_since.elapsed())
            .filter(|left| !left.is_zero())
    }
}

// The write-round arithmetic, without IO: which queued batches one round takes, which of them one
// write takes, and where that write leaves the partial tail block.

/// How many of the queued batches (given by length, oldest first) one flush round takes: at
/// least one, then as many as fit in [`limits::WRITE_ROUND_TARGET_BYTES`].
fn round_batch_count(pending_lengths: impl IntoIterator<Item = usize>) -> usize {
    let mut taken = 0usize;
    let mut count = 0usize;
    for length in pending_lengths {
        if count > 0 && taken + length > limits::WRITE_ROUND_TARGET_BYTES {
            break;
        }
        taken += length;
        count += 1;
    }
    count
}

/// One write of a round: the tail block followed by the batches it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WritePlan {
    /// How many of the offered batches the write takes (at least one).
    batches: usize,
    /// The DMA buffer's length: tail plus batches, rounded up to whole blocks.
    buffer_bytes: usize,
    /// Where, in the buffer, the new partial tail block lies (empty when the write ends on a
    /// block boundary).
    new_tail: std::ops::Range<usize>,
}

/// Plans one write into the active segment, of `segment_size` bytes whose last
/// `tail_bytes` are the partial tail block written again in front of the batches. Takes the
/// first batch whatever its size, then every batch that keeps the segment within
/// `segment_bytes` and the buffer within [`limits::WRITE_BYTES_MAX`].
fn plan_write(
    segment_size: u64,
    tail_bytes: usize,
    segment_bytes: u64,
    batch_lengths: impl IntoIterator<Item = usize>,
) -> WritePlan {
    assert_eq!(tail_bytes as u64, segment_size % limits::BLOCK_BYTES as u64);
    let mut total = tail_bytes;
    let mut size = segment_size;
    let mut batches = 0usize;
    for length in batch_lengths {
        let too_big = size + length as u64 > segment_bytes
            || total + length > limits::WRITE_BYTES_MAX - limits::BLOCK_BYTES;
        if batches > 0 && too_big {
            break;
        }
        total += length;
        size += length as u64;
        batches += 1;
    }
    assert!(batches > 0, "a write takes at least one batch");
    WritePlan {
        batches,
        buffer_bytes: round_up(total as u64) as usize,
        new_tail: round_down(total as u64) as usize..total,
    }
}

/// Whether the active segment, of `segment_size` bytes, must be sealed before a batch of
/// `next_batch_bytes` is written: never when it is empty.
fn roll_due(
    segment_size: u64,
    next_batch_bytes: usize,
    segment_bytes: u64,
    roll_requested: bool,
) -> bool {
    segment_size > 0 && (roll_requested || segment_size + next_batch_bytes as u64 > segment_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: usize = limits::BLOCK_BYTES;

    #[test]
    fn a_round_takes_at_least_one_batch_then_up_to_its_target() {
        assert_eq!(round_batch_count([]), 0);
        assert_eq!(round_batch_count([limits::WRITE_ROUND_TARGET_BYTES * 2, 1]), 1);
        let half = limits::WRITE_ROUND_TARGET_BYTES / 2;
        assert_eq!(round_batch_count([half, half, 1]), 2);
        assert_eq!(round_batch_count([100; 3]), 3);
    }

    #[test]
    fn a_write_after_a_partial_tail_keeps_the_new_tail() {
        let plan = plan_write(BLOCK as u64 + 100, 100, 1 << 30, [BLOCK, 50]);
        assert_eq!(plan.batches, 2);
        // 100 + 4096 + 50 bytes: one whole block and a new tail of 150 bytes.
        assert_eq!(plan.buffer_bytes, 2 * BLOCK);
        assert_eq!(plan.new_tail, BLOCK..BLOCK + 150);
    }

    #[test]
    fn a_write_ending_on_a_block_boundary_leaves_no_tail() {
        let plan = plan_write(0, 0, 1 << 30, [BLOCK, BLOCK]);
        assert_eq!(
            plan,
            WritePlan { batches: 2, buffer_bytes: 2 * BLOCK, new_tail: 2 * BLOCK..2 * BLOCK }
        );
    }

    #[test]
    fn a_write_stops_at_the_segment_size_but_takes_its_first_batch() {
        let plan = plan_write(900, 900, 1000, [200, 10]);
        assert_eq!(plan.batches, 1);
        assert_eq!(plan.new_tail, 0..1100);
        let plan = plan_write(0, 0, 1000, [600, 400, 1]);
        assert_eq!(plan.batches, 2);
    }

    #[test]
    fn a_write_stops_at_the_buffer_limit() {
        let room = limits::WRITE_BYTES_MAX - BLOCK;
        let plan = plan_write(10, 10, u64::MAX, [room - 10, 1]);
        assert_eq!(plan.batches, 1);
        assert_eq!(plan.buffer_bytes, room);
        let plan = plan_write(10, 10, u64::MAX, [room, 1]);
        assert_eq!(plan.batches, 1);
        assert!(plan.buffer_bytes <= limits::WRITE_BYTES_MAX);
    }

    #[test]
    fn rolls_only_a_non_empty_segment_that_is_full_or_asked_to() {
        assert!(!roll_due(0, 1 << 20, 1000, true));
        assert!(roll_due(1, 0, 1000, true));
        assert!(roll_due(900, 101, 1000, false));
        assert!(!roll_due(900, 100, 1000, false));
    }
}

#[cfg(test)]
mod admission_tests {
    use bytes::Bytes;
    use spate_protocol::batch::{BatchBuilder, BatchIdentity, NewRecord};

    use crate::memory::ShardMemory;
    use crate::{Log, LogConfig, LogOptions};

    fn idempotent(sequence: i32, count: usize) -> bytes::BytesMut {
        let mut builder = BatchBuilder::new();
        for _ in 0..count {
            builder
                .push(&NewRecord { value: Some(Bytes::from_static(b"v")), ..Default::default() });
        }
        let identity = BatchIdentity { producer_id: 1, producer_epoch: 0, base_sequence: sequence };
        builder.finish_with(identity).unwrap()
    }

    /// An append that waited for room, was granted it, and has not run yet must still take its
    /// offsets before an append called after it that finds room free. (Glommio runs a spawned
    /// task at once, ahead of the woken one: the budgets' fairness alone let the newcomer in
    /// first, and an idempotent producer's pipelined batches were refused out of sequence.)
    #[test]
    fn appends_take_offsets_in_call_order_even_after_waiting_for_room() {
        let dir = tempfile::tempdir().unwrap();
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).make();
        executor.unwrap().run(async move {
            let memory = ShardMemory::new(crate::limits::PENDING_BYTES_MAX, 1 << 20);
            let options = LogOptions { memory: Some(memory.clone()), ..LogOptions::default() };
            let log = Log::open(dir.path(), LogConfig::default(), options).await.unwrap();
            // The shard's whole budget is held elsewhere: the first append waits for room.
            let held = memory.acquire_pending(crate::limits::PENDING_BYTES_MAX).await;
            held.forget();
            let first = {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(idempotent(0, 3), 1).await })
            };
            glommio::yield_if_needed().await;
            futures_lite::future::yield_now().await;
            // Room comes back: the first is granted it and woken, but has not run yet when the
            // second is called (and, spawned, runs at once).
            memory.release_pending(crate::limits::PENDING_BYTES_MAX);
            let second = {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(idempotent(3, 2), 1).await })
            };
            let first = first.await.expect("the first batch is appended");
            let second = second.await.expect("the second batch is appended after it");
            assert_eq!((first.base_offset, first.last_offset), (0, 2));
            assert_eq!((second.base_offset, second.last_offset), (3, 4));
            log.close().await.unwrap();
        });
    }
}
