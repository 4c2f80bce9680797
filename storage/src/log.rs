//! The partition log: appends with group commit, zero-copy reads, recovery, truncation and
//! retention, for one partition, on the Glommio executor that owns it.
//!
//! Directory layout: `<data>/<topic>/<partition>/` holds the segments (see [`crate::segment`])
//! and an optional `start-offset` checkpoint (decimal text) written when the start offset is
//! advanced inside a segment.
//!
//! Write path: `append` validates the batch, stamps its offset, and queues it (no IO, no copy).
//! One flush task per log, started on demand, drains the queue: it copies the queued batches
//! behind the in-memory partial tail block into one aligned DMA buffer (the only user-space copy
//! of record bytes), writes it with `O_DIRECT`, and, under `flush=always`, issues one
//! `fdatasync` for everything it wrote. Appends that arrive during a write are written, and
//! synced, together by the next round: that is the group commit.
//!
//! Offsets: `next` (assigned) ≥ `written` (in the file) ≥ `durable` (fdatasync'd). Readers see
//! batches up to the high watermark: `durable` under `flush=always`, `written` otherwise, so a
//! consumer never reads a batch a crash could take back under `always`.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::io::{DmaFile, ReadResult};
use glommio::sync::Semaphore;
use glommio::TaskQueueHandle;
use spate_protocol::batch::{self, BatchHeader, Records, HEADER_LEN};

use crate::cache::{CachedBatch, TailCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::faults::StorageFaults;
use crate::index::{SegmentIndex, SegmentSummary};
use crate::limits;
use crate::scan::Check;
use crate::segment::{self, round_down, round_up, Segment, SegmentPaths};

const START_OFFSET_FILE: &str = "start-offset";

/// Where a successful append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    pub last_offset: i64,
}

/// Bytes returned by a read: whole batches, back to back, without a user-space copy.
#[derive(Debug, Clone)]
pub enum LogBytes {
    /// From the tail cache: the very buffer the batch was appended with.
    Memory(Bytes),
    /// From disk: a slice of Glommio's DMA read buffer.
    Disk(ReadResult),
}

impl std::ops::Deref for LogBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            LogBytes::Memory(bytes) => bytes,
            LogBytes::Disk(read) => read,
        }
    }
}

/// The result of a read.
#[derive(Debug, Clone, Default)]
pub struct LogRead {
    /// Whole batches in offset order. Empty when the read is at the high watermark.
    pub chunks: Vec<LogBytes>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl LogRead {
    pub fn bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len()).sum()
    }
}

/// A snapshot of the log's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOffsets {
    pub start: i64,
    /// Next offset to be assigned.
    pub next: i64,
    pub written: i64,
    pub durable: i64,
    /// What readers can see.
    pub high_watermark: i64,
}

/// What recovery found at the end of the last segment when the log was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes past the last valid batch that recovery cut because they were damaged (0 when the
    /// log ended cleanly in zero padding).
    pub cut_bytes: u64,
    /// Why the end was not clean: a torn or corrupt batch, or a zeroed block followed by
    /// written data (a block the device lost). `None` when the log ended in zero padding.
    pub damage: Option<String>,
}

/// What a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
}

/// How a log is driven: its clock, the task queue its background IO runs in, and (in tests)
/// hooks under its fdatasyncs.
#[derive(Clone)]
pub struct LogOptions {
    pub clock: Rc<dyn Clock>,
    pub task_queue: Option<TaskQueueHandle>,
    pub faults: Option<Rc<dyn StorageFaults>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions { clock: Rc::new(SystemClock), task_queue: None, faults: None }
    }
}

/// fdatasyncs a segment file, through the fault hooks if there are any.
async fn fdatasync(
    file: &DmaFile,
    path: &Path,
    faults: Option<&Rc<dyn StorageFaults>>,
) -> Result<()> {
    if let Some(faults) = faults {
        faults.before_sync(path).map_err(|e| LogError::io("fdatasync", path, e))?;
    }
    file.fdatasync().await.map_err(|e| LogError::io("fdatasync", path, e))?;
    if let Some(faults) = faults {
        faults.after_sync(path);
    }
    Ok(())
}

/// A partition log. Cheap to clone; all clones share the same log. Not `Send`: it lives on the
/// executor that owns the partition.
#[derive(Clone)]
pub struct Log {
    inner: Rc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: LogOptions,
    state: RefCell<State>,
    /// Serializes everything that writes files: flush rounds, rolls, truncation, retention.
    io_lock: Semaphore,
    /// Bytes of queued batches; appenders wait for room (backpressure), strictly first come,
    /// first served, so that appends take offsets in the order they were called.
    pending_budget: tokio::sync::Semaphore,
}

struct Pending {
    base_offset: i64,
    next_offset: i64,
    max_timestamp: i64,
    bytes: Bytes,
}

struct Waiter {
    next_offset: i64,
    durable: bool,
    reply: oneshot::Sender<Result<()>>,
}

struct State {
    config: LogConfig,
    segments: BTreeMap<i64, Segment>,
    start_offset: i64,
    next_offset: i64,
    written_offset: i64,
    durable_offset: i64,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    cache: TailCache,
    waiters: VecDeque<Waiter>,
    flush_task_running: bool,
    sync_timer_armed: bool,
    last_sync_ms: i64,
    roll_requested: bool,
    closed: bool,
    /// Set by a failed fdatasync: the log refuses every read and append from then on.
    offline: Option<String>,
    recovery: RecoveryReport,
}

impl State {
    fn high_watermark(&self) -> i64 {
        match self.config.flush {
            FlushPolicy::Always => self.durable_offset,
            _ => self.written_offset,
        }
    }

    fn active(&self) -> &Segment {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Stamps a validated batch with the next offset and `leader_term`, and queues it for the
    /// flush task (and the tail cache). Returns what completes once it is written (or durable).
    fn queue(
        &mut self,
        mut batch: BytesMut,
        header: &BatchHeader,
        leader_term: u64,
    ) -> oneshot::Receiver<Result<()>> {
        let base_offset = self.next_offset;
        batch::stamp(&mut batch, base_offset, leader_term);
        let length = batch.len();
        let bytes = batch.freeze();
        let next_offset = header.next_offset() - header.base_offset + base_offset;
        self.next_offset = next_offset;
        self.cache.push(CachedBatch { base_offset, next_offset, bytes: bytes.clone() });
        self.pending.push_back(Pending {
            base_offset,
            next_offset,
            max_timestamp: header.max_timestamp,
            bytes,
        });
        self.pending_bytes += length;
        let (tx, rx) = oneshot::channel();
        let durable = self.config.flush == FlushPolicy::Always;
        self.waiters.push_back(Waiter { next_offset, durable, reply: tx });
        rx
    }

    /// Completes every waiter the offsets now satisfy.
    fn wake_waiters(&mut self) {
        while let Some(waiter) = self.waiters.front() {
            let reached = if waiter.durable { self.durable_offset } else { self.written_offset };
            if waiter.next_offset > reached {
                break;
            }
            let waiter = self.waiters.pop_front().expect("checked");
            let _ = waiter.reply.send(Ok(()));
        }
    }

    /// Fails every waiter not yet satisfied.
    fn fail_waiters(&mut self, error: &LogError) {
        self.wake_waiters();
        for waiter in self.waiters.drain(..) {
            let _ = waiter.reply.send(Err(error.duplicate()));
        }
    }
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it first: sealed segments load their
    /// indexes (rebuilding damaged ones), and the last segment is validated batch by batch, its
    /// torn or corrupt tail cut off.
    pub async fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        options: LogOptions,
    ) -> Result<Log> {
        // Absolute, because Glommio opens directories with no base descriptor (a relative path
        // fails with EBADF), and so that every error and log line names the full path.
        let dir = std::path::absolute(dir.as_ref())
            .map_err(|e| LogError::io("resolve", dir.as_ref(), e))?;
        config.validate().map_err(LogError::Config)?;
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create", &dir, e))?;
        segment::prime_dma_probe(&dir).await?;

        let mut bases = list_segments(&dir)?;
        let checkpoint = read_start_checkpoint(&dir)?;
        let now_ms = options.clock.now_ms();
        if bases.is_empty() {
            let base = checkpoint.unwrap_or(0);
            let paths = SegmentPaths::new(&dir, base);
            let file = segment::open_log_file(&paths.log, true).await?;
            file.close().await.map_err(|e| LogError::io("close", &paths.log, e))?;
            segment::sync_dir(&dir).await?;
            bases.push(base);
        }
        if bases.len() > limits::SEGMENTS_MAX {
            return Err(LogError::TooManySegments(bases.len()));
        }

        let mut segments = BTreeMap::new();
        let mut recovery = RecoveryReport::default();
        let last = *bases.last().expect("at least one segment");
        for base in bases {
            let segment = if base == last {
                let (segment, report) =
                    recover_tail_segment(&dir, base, &config, now_ms, options.faults.as_ref())
                        .await?;
                recovery = report;
                segment
            } else {
                open_sealed_segment(&dir, base, &config, now_ms).await?
            };
            segments.insert(base, segment);
        }
        check_continuity(&segments);

        let first_base = *segments.keys().next().expect("non-empty");
        let next_offset = segments.values().next_back().expect("non-empty").next_offset;
        let start_offset = checkpoint.unwrap_or(first_base).clamp(first_base, next_offset);
        if checkpoint.is_some_and(|c| c > next_offset) {
            // Recovery cut the log below the checkpointed start. Persist the lower start now, or
            // a later reopen, after new appends, would hide records it already exposed.
            tracing::warn!(dir = %dir.display(), checkpoint = ?checkpoint, next_offset, "start offset above the recovered end; lowering it");
            write_start_checkpoint(&dir, start_offset)?;
        }
        let cache = TailCache::new(config.cache_bytes);
        let state = State {
            config,
            segments,
            start_offset,
            next_offset,
            written_offset: next_offset,
            durable_offset: next_offset,
            pending: VecDeque::new(),
            pending_bytes: 0,
            cache,
            waiters: VecDeque::new(),
            flush_task_running: false,
            sync_timer_armed: false,
            last_sync_ms: now_ms,
            roll_requested: false,
            closed: false,
            offline: None,
            recovery,
        };
        Ok(Log {
            inner: Rc::new(Inner {
                dir,
                options,
                state: RefCell::new(state),
                io_lock: Semaphore::new(1),
                pending_budget: tokio::sync::Semaphore::new(limits::PENDING_BYTES_MAX),
            }),
        })
    }

    fn ensure_open(&self) -> Result<()> {
        let state = self.inner.state.borrow();
        if let Some(reason) = &state.offline {
            return Err(LogError::Offline(reason.clone()));
        }
        if state.closed {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn config(&self) -> LogConfig {
        self.inner.state.borrow().config.clone()
    }

    /// Changes the configuration; takes effect for the next append, roll and retention pass.
    pub fn set_config(&self, config: LogConfig) -> Result<()> {
        config.validate().map_err(LogError::Config)?;
        let mut state = self.inner.state.borrow_mut();
        state.cache.set_capacity(config.cache_bytes);
        state.config = config;
        Ok(())
    }

    /// What recovery found at the end of the log when it was opened.
    pub fn recovery(&self) -> RecoveryReport {
        self.inner.state.borrow().recovery.clone()
    }

    pub fn offsets(&self) -> LogOffsets {
        let state = self.inner.state.borrow();
        LogOffsets {
            start: state.start_offset,
            next: state.next_offset,
            written: state.written_offset,
            durable: state.durable_offset,
            high_watermark: state.high_watermark(),
        }
    }

    /// Logical bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state.borrow().size_bytes()
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.inner.state.borrow().segments.keys().copied().collect()
    }

    /// Appends one batch (validated here: shape, CRC and records). Stamps its base offset and
    /// `leader_term` in place, and completes once the batch is written, or under
    /// `flush=always` once it is durable.
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
        self.ensure_open()?;
        // Queued in call order even when this waits: no later append can take offsets first.
        let permits = self
            .inner
            .pending_budget
            .acquire_many(length as u32)
            .await
            .map_err(|_| LogError::Closed)?;
        // Released by the flush round that writes these bytes (or by a rollback).
        permits.forget();

        let (appended, replies, start_flush_task) = {
            if let Err(error) = self.ensure_open() {
                self.inner.pending_budget.add_permits(length);
                return Err(error);
            }
            let mut state = self.inner.state.borrow_mut();
            let first_offset = state.next_offset;
            let mut replies = Vec::with_capacity(batches.len());
            for (batch, header) in batches.iter_mut().zip(&headers) {
                replies.push(state.queue(std::mem::take(batch), header, leader_term));
            }
            if let Some(segment_ms) = state.config.segment_ms {
                let now_ms = self.inner.options.clock.now_ms();
                let active = state.active();
                if active.size > 0 && now_ms - active.created_ms >= segment_ms as i64 {
                    state.roll_requested = true;
                }
            }
            let start_flush_task = !state.flush_task_running;
            state.flush_task_running = true;
            let appended =
                Appended { base_offset: first_offset, last_offset: state.next_offset - 1 };
            (appended, replies, start_flush_task)
        };
        // Spawned with no borrow held: Glommio may run the new task before this one yields.
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

    fn spawn_background(&self, future: impl std::future::Future<Output = ()> + 'static) {
        match self.inner.options.task_queue {
            Some(queue) => match glommio::spawn_local_into(future, queue) {
                Ok(task) => {
                    task.detach();
                }
                Err(error) => {
                    tracing::error!(%error, "cannot spawn log task in its queue");
                }
            },
            None => {
                glommio::spawn_local(future).detach();
            }
        }
    }

    /// Writes one round of queued batches. Returns whether more are queued, or the error that
    /// failed (and rolled back) the round. Caller holds the IO lock.
    async fn flush_round(&self) -> Result<bool> {
        let work: Vec<Pending> = {
            let mut state = self.inner.state.borrow_mut();
            let mut taken = 0usize;
            let mut work = Vec::new();
            while let Some(front) = state.pending.front() {
                if !work.is_empty() && taken + front.bytes.len() > limits::WRITE_ROUND_TARGET_BYTES
                {
                    break;
                }
                taken += front.bytes.len();
                work.push(state.pending.pop_front().expect("checked"));
            }
            if work.is_empty() {
                return Ok(false);
            }
            work
        };
        let released: usize = work.iter().map(|p| p.bytes.len()).sum();
        let result = self.write_batches(&work).await;
        let result = match result {
            Ok(()) => self.sync_after_write().await,
            Err(error) => {
                // Keep what did reach the file; make it durable if the policy wants that.
                let _ = self.sync_after_write().await;
                Err(error)
            }
        };
        let offline = {
            let mut state = self.inner.state.borrow_mut();
            state.pending_bytes -= released;
            match &result {
                Ok(()) => state.wake_waiters(),
                Err(error) => self.roll_back_unwritten(&mut state, error),
            }
            state.offline.is_some()
        };
        self.inner.pending_budget.add_permits(released);
        // An offline log touches its files no more: recovery on restart decides.
        if result.is_err() && !offline {
            self.repair_after_failed_write().await;
        }
        result.map(|()| !self.inner.state.borrow().pending.is_empty())
    }

    /// A failed fdatasync is fail-stop: the pages it covered may be gone from the page cache
    /// and from the device alike, so nothing written since the last good fdatasync may ever be
    /// reported or served as written. Every waiting appender fails; every later call fails.
    fn take_offline(&self, error: &LogError) {
        let mut state = self.inner.state.borrow_mut();
        if state.offline.is_none() {
            tracing::error!(dir = %self.inner.dir.display(), %error,
                "fdatasync failed; the partition is offline until the broker restarts");
            state.offline = Some(error.to_string());
        }
        let queued: usize = state.pending.drain(..).map(|p| p.bytes.len()).sum();
        state.pending_bytes -= queued;
        self.inner.pending_budget.add_permits(queued);
        state.cache.clear();
        let offline = LogError::Offline(state.offline.clone().expect("set above"));
        // Only what an earlier fdatasync covered stays acknowledged.
        state.written_offset = state.durable_offset;
        state.next_offset = state.durable_offset;
        state.fail_waiters(&offline);
    }

    /// After a failed write: every batch past `written` is gone. Fail their appenders, release
    /// their budget, and reset `next` so the next append reuses those offsets.
    fn roll_back_unwritten(&self, state: &mut State, error: &LogError) {
        tracing::warn!(dir = %self.inner.dir.display(), %error, written = state.written_offset,
            dropped = state.next_offset - state.written_offset, "append failed; rolling back unwritten batches");
        let queued: usize = state.pending.drain(..).map(|p| p.bytes.len()).sum();
        state.pending_bytes -= queued;
        self.inner.pending_budget.add_permits(queued);
        state.next_offset = state.written_offset;
        let written = state.written_offset;
        state.cache.truncate(written);
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
            if self.roll_due(work[i].bytes.len()) {
                self.roll_locked(work[i].base_offset).await?;
            }
            let (file, path, position, buffer, new_tail, end) = {
                let state = self.inner.state.borrow();
                let active = state.active();
                let segment_bytes = state.config.segment_bytes;
                let mut total = active.tail.len();
                let mut size = active.size;
                let mut end = i;
                while end < work.len() {
                    let length = work[end].bytes.len();
                    let too_big = size + length as u64 > segment_bytes
                        || total + length > limits::WRITE_BYTES_MAX - limits::BLOCK_BYTES;
                    if end > i && too_big {
                        break;
                    }
                    total += length;
                    size += length as u64;
                    end += 1;
                }
                let mut buffer = active.file.alloc_dma_buffer(round_up(total as u64) as usize);
                let bytes = buffer.as_bytes_mut();
                bytes[..active.tail.len()].copy_from_slice(&active.tail);
                let mut at = active.tail.len();
                for pending in &work[i..end] {
                    bytes[at..at + pending.bytes.len()].copy_from_slice(&pending.bytes);
                    at += pending.bytes.len();
                }
                bytes[at..].fill(0);
                let new_tail = bytes[round_down(at as u64) as usize..at].to_vec();
                (
                    active.file.clone(),
                    active.paths.log.clone(),
                    active.write_position(),
                    buffer,
                    new_tail,
                    end,
                )
            };
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

    fn roll_due(&self, next_batch_bytes: usize) -> bool {
        let state = self.inner.state.borrow();
        let active = state.active();
        active.size > 0
            && (state.roll_requested
                || active.size + next_batch_bytes as u64 > state.config.segment_bytes)
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
    async fn sync_active(&self) -> Result<()> {
        let (file, path, target) = {
            let state = self.inner.state.borrow();
            let active = state.active();
            (active.file.clone(), active.paths.log.clone(), state.written_offset)
        };
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
    async fn drain_locked(&self) -> Result<()> {
        // Each round takes at least one batch off the bounded queue, or fails and empties it.
        while self.flush_round().await? {}
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

    /// Reads whole batches starting with the one that holds `offset`, up to about `bytes_max`
    /// bytes (the first batch is returned whole even if larger). Reading at the high watermark
    /// returns no batches; below the start offset or past the high watermark is
    /// `OffsetOutOfRange`. A stored batch that fails its CRC is a `Corruption` error, never data.
    pub async fn read(&self, offset: i64, bytes_max: usize) -> Result<LogRead> {
        self.ensure_open()?;
        let bytes_max = bytes_max.clamp(1, limits::READ_BYTES_MAX);
        let plan = {
            let state = self.inner.state.borrow();
            let high_watermark = state.high_watermark();
            let mut result = LogRead {
                chunks: Vec::new(),
                high_watermark,
                log_start_offset: state.start_offset,
            };
            if offset < state.start_offset || offset > high_watermark {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: state.start_offset,
                    end: high_watermark,
                });
            }
            if offset == high_watermark {
                return Ok(result);
            }
            if let Some(chunks) = state.cache.read(offset, bytes_max, high_watermark) {
                if !chunks.is_empty() {
                    result.chunks = chunks.into_iter().map(LogBytes::Memory).collect();
                    return Ok(result);
                }
            }
            let segment = state
                .segments
                .range(..=offset)
                .next_back()
                .map(|(_, s)| s)
                .filter(|s| offset < s.next_offset)
                .or_else(|| state.segments.range(offset..).next().map(|(_, s)| s))
                .ok_or(LogError::OffsetOutOfRange {
                    offset,
                    start: state.start_offset,
                    end: high_watermark,
                })?;
            let relative = (offset.max(segment.base_offset) - segment.base_offset) as u32;
            DiskRead {
                file: segment.file.clone(),
                path: segment.paths.log.clone(),
                position: segment.index.lookup(relative) as u64,
                end: segment.size,
                interval: state.config.index_interval_bytes as usize,
                high_watermark,
                result,
            }
        };
        plan.run(offset, bytes_max).await
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or `None` if no
    /// visible record is that new.
    pub async fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<i64>> {
        self.ensure_open()?;
        let candidates: Vec<(Rc<glommio::io::DmaFile>, PathBuf, u64, u64, i64)> = {
            let state = self.inner.state.borrow();
            state
                .segments
                .values()
                .filter(|s| {
                    s.next_offset > state.start_offset && s.index.max_timestamp >= timestamp_ms
                })
                .map(|s| {
                    let relative = s.index.time_lookup(timestamp_ms);
                    (
                        s.file.clone(),
                        s.paths.log.clone(),
                        s.index.lookup(relative) as u64,
                        s.size,
                        s.base_offset,
                    )
                })
                .collect()
        };
        let (start, high_watermark) = {
            let state = self.inner.state.borrow();
            (state.start_offset, state.high_watermark())
        };
        // One scan per candidate segment; the first match wins.
        for (file, path, position, size, _base) in candidates {
            let mut found = None;
            let mut corrupt = None;
            segment::scan_file(&file, &path, position, size, None, Check::Crc, |batch, bytes| {
                if batch.header.max_timestamp < timestamp_ms || batch.header.next_offset() <= start
                {
                    return true;
                }
                for record in Records::new(bytes, batch.header) {
                    match record {
                        Ok(r) if r.timestamp >= timestamp_ms && r.offset >= start => {
                            found = Some(r.offset);
                            return false;
                        }
                        Ok(_) => {}
                        Err(error) => {
                            corrupt = Some((batch.position, error.to_string()));
                            return false;
                        }
                    }
                }
                true
            })
            .await?;
            if let Some((position, reason)) = corrupt {
                return Err(LogError::Corruption { path, position, reason });
            }
            if let Some(offset) = found {
                return Ok((offset < high_watermark).then_some(offset));
            }
        }
        Ok(None)
    }

    /// Removes every batch at or after `offset`, which must be a batch boundary in
    /// `[start, next]`. Queued appends are written first.
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

        // Drop later segments, newest first.
        let doomed: Vec<Segment> = {
            let mut state = self.inner.state.borrow_mut();
            let later: Vec<i64> = state.segments.range(base + 1..).map(|(b, _)| *b).collect();
            later.into_iter().rev().filter_map(|b| state.segments.remove(&b)).collect()
        };
        for segment in &doomed {
            segment::remove_segment_files(&segment.paths);
        }

        // Recompute the segment's running max timestamp and index for what remains.
        let mut index = SegmentIndex::new();
        let interval = self.inner.state.borrow().config.index_interval_bytes;
        segment::scan_file(&file, &paths.log, 0, cut, Some(base), Check::Structure, |batch, _| {
            let relative = (batch.header.base_offset - base) as u32;
            index.on_batch(relative, batch.position as u32, batch.header.max_timestamp, interval);
            true
        })
        .await?;
        let tail = segment::read_tail(&file, &paths.log, cut).await?;
        file.truncate(round_up(cut)).await.map_err(|e| LogError::io("truncate", &paths.log, e))?;
        segment::rewrite_tail_block(&file, &paths.log, cut, &tail).await?;
        if let Err(error) = fdatasync(&file, &paths.log, self.inner.options.faults.as_ref()).await {
            self.take_offline(&error);
            return Err(error);
        }
        for path in [&paths.index, &paths.time_index] {
            let _ = std::fs::remove_file(path);
        }
        segment::sync_dir(&self.inner.dir).await?;

        let mut state = self.inner.state.borrow_mut();
        let active = state.active_mut();
        assert_eq!(active.base_offset, base);
        active.size = cut;
        active.next_offset = offset;
        active.index = index;
        active.tail = tail;
        state.next_offset = offset;
        state.written_offset = offset;
        state.durable_offset = offset;
        state.cache.truncate(offset);
        tracing::info!(dir = %self.inner.dir.display(), offset, segments_removed = doomed.len(), "truncated log");
        Ok(())
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
            state.closed = true;
            state.fail_waiters(&LogError::Closed);
            state.cache.clear();
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

/// A planned read from one segment file.
struct DiskRead {
    file: Rc<glommio::io::DmaFile>,
    path: PathBuf,
    position: u64,
    end: u64,
    interval: usize,
    high_watermark: i64,
    result: LogRead,
}

impl DiskRead {
    async fn run(mut self, offset: i64, bytes_max: usize) -> Result<LogRead> {
        let mut want = bytes_max.max(limits::BLOCK_BYTES) + self.interval + HEADER_LEN;
        for _attempt in 0..limits::READ_ATTEMPTS_MAX {
            let remaining = self.end.saturating_sub(self.position) as usize;
            if remaining == 0 {
                return Ok(self.result);
            }
            let length = want.min(remaining);
            let window = segment::read_at(&self.file, &self.path, self.position, length).await?;
            let available = window.len().min(length);
            let mut at = 0usize;
            let mut first = None;
            let mut total = 0usize;
            let mut need: Option<usize> = None;
            // Bounded by the window: every iteration consumes one whole batch or stops.
            while at < available {
                if available - at < HEADER_LEN {
                    need = Some(HEADER_LEN);
                    break;
                }
                let header = BatchHeader::parse(&window[at..available]).expect("length checked");
                let corrupt = |reason: String| LogError::Corruption {
                    path: self.path.clone(),
                    position: self.position + at as u64,
                    reason,
                };
                header.check_shape().map_err(|e| corrupt(e.to_string()))?;
                let length = header.batch_length as usize;
                if available - at < length {
                    need = Some(length);
                    break;
                }
                if header.next_offset() <= offset {
                    at += length;
                    continue;
                }
                if header.next_offset() > self.high_watermark
                    || (first.is_some() && total + length > bytes_max)
                {
                    break;
                }
                if let Err(error) = batch::validate_crc(&window[at..at + length]) {
                    if first.is_none() {
                        return Err(corrupt(error.to_string()));
                    }
                    break;
                }
                first.get_or_insert(at);
                total += length;
                at += length;
            }
            match (first, need) {
                (Some(start), _) => {
                    let slice =
                        ReadResult::slice(&window, start, total).expect("inside the window");
                    self.result.chunks.push(LogBytes::Disk(slice));
                    return Ok(self.result);
                }
                (None, Some(batch_length)) => {
                    // The wanted batch starts at `at` but is not whole in the window: re-read
                    // from there, large enough to hold it.
                    self.position += at as u64;
                    want = batch_length.max(bytes_max);
                }
                (None, None) => return Ok(self.result),
            }
        }
        Err(LogError::Corruption {
            path: self.path.clone(),
            position: self.position,
            reason: "could not find a whole batch at the read position".into(),
        })
    }
}

fn list_segments(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("read dir", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("read dir", dir, e))?;
        if let Some(base) = entry.file_name().to_str().and_then(segment::parse_segment_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn read_start_checkpoint(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(START_OFFSET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => match text.trim().parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(Some(offset)),
            _ => {
                tracing::warn!(path = %path.display(), "ignoring unreadable start-offset checkpoint");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LogError::io("read", path, e)),
    }
}

/// Writes the checkpoint atomically (see [`crate::durable::write_atomically`]).
fn write_start_checkpoint(dir: &Path, offset: i64) -> Result<()> {
    let path = dir.join(START_OFFSET_FILE);
    crate::durable::write_atomically(&path, format!("{offset}\n").as_bytes())
        .map_err(|e| LogError::io("write", &path, e))
}

async fn flush_task(log: Log) {
    // Runs until the queue is empty; each round writes at least one batch.
    loop {
        let Ok(permit) = log.inner.io_lock.acquire_permit(1).await else { return };
        let outcome = log.flush_round().await;
        drop(permit);
        if let Ok(true) = outcome {
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

async fn open_sealed_segment(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    now_ms: i64,
) -> Result<Segment> {
    let paths = SegmentPaths::new(dir, base);
    let file = segment::open_log_file(&paths.log, false).await?;
    let file_size = file.file_size().await.map_err(|e| LogError::io("stat", &paths.log, e))?;
    let loaded = match (std::fs::read(&paths.index), std::fs::read(&paths.time_index)) {
        (Ok(offsets), Ok(times)) => SegmentIndex::decode(&offsets, &times)
            .filter(|(_, summary)| summary.log_bytes <= file_size && summary.next_offset > base),
        _ => None,
    };
    let (index, summary) = match loaded {
        Some(loaded) => loaded,
        None => {
            tracing::warn!(path = %paths.index.display(), "index missing or damaged; rebuilding from the log");
            let (index, end) = rebuild_index(&file, &paths, base, file_size, config).await?;
            let summary = SegmentSummary {
                log_bytes: end.end,
                next_offset: end.next_offset.unwrap_or(base),
                max_timestamp: index.max_timestamp,
            };
            segment::write_small_file(&paths.index, index.encode_offsets(summary)).await?;
            segment::write_small_file(&paths.time_index, index.encode_times()).await?;
            (index, summary)
        }
    };
    Ok(Segment {
        base_offset: base,
        file: Rc::new(file),
        paths,
        size: summary.log_bytes,
        next_offset: summary.next_offset,
        index,
        tail: Vec::new(),
        created_ms: now_ms,
    })
}

/// The position of the first non-zero byte in `[from, to)` of a file, if any (bounded: reads
/// the range once, in chunks).
async fn written_after(file: &DmaFile, path: &Path, from: u64, to: u64) -> Result<Option<u64>> {
    let mut position = from;
    while position < to {
        let length = ((to - position) as usize).min(limits::WRITE_BYTES_MAX);
        let chunk = segment::read_at(file, path, position, length).await?;
        let chunk = &chunk[..chunk.len().min(length)];
        if chunk.is_empty() {
            break;
        }
        if let Some(at) = chunk.iter().position(|b| *b != 0) {
            return Ok(Some(position + at as u64));
        }
        position += chunk.len() as u64;
    }
    Ok(None)
}

/// Rebuilds a sealed segment's index from batch headers. Only structure is checked: a sealed
/// batch with a bad CRC stays in place and is reported when read, rather than hiding the batches
/// after it.
async fn rebuild_index(
    file: &glommio::io::DmaFile,
    paths: &SegmentPaths,
    base: i64,
    file_size: u64,
    config: &LogConfig,
) -> Result<(SegmentIndex, segment::ScanEnd)> {
    let mut index = SegmentIndex::new();
    let end = segment::scan_file(
        file,
        &paths.log,
        0,
        file_size,
        Some(base),
        Check::Structure,
        |batch, _| {
            let relative = (batch.header.base_offset - base) as u32;
            index.on_batch(
                relative,
                batch.position as u32,
                batch.header.max_timestamp,
                config.index_interval_bytes,
            );
            true
        },
    )
    .await?;
    if let Some(damage) = &end.damage {
        tracing::error!(path = %paths.log.display(), position = end.end, %damage,
            "sealed segment is damaged; batches after this point are unreadable");
    }
    Ok((index, end))
}

/// Validates the last segment batch by batch (length, CRC, offset continuity) and cuts
/// whatever follows the last valid batch.
async fn recover_tail_segment(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    now_ms: i64,
    faults: Option<&Rc<dyn StorageFaults>>,
) -> Result<(Segment, RecoveryReport)> {
    let paths = SegmentPaths::new(dir, base);
    let file = segment::open_log_file(&paths.log, false).await?;
    let file_size = file.file_size().await.map_err(|e| LogError::io("stat", &paths.log, e))?;
    let mut index = SegmentIndex::new();
    let end =
        segment::scan_file(&file, &paths.log, 0, file_size, Some(base), Check::Crc, |batch, _| {
            let relative = (batch.header.base_offset - base) as u32;
            index.on_batch(
                relative,
                batch.position as u32,
                batch.header.max_timestamp,
                config.index_interval_bytes,
            );
            true
        })
        .await?;
    let size = end.end;
    let tail = segment::read_tail(&file, &paths.log, size).await?;
    // Zeroes where the next batch should be are the normal end of a log only if nothing was
    // written after them: a zeroed block followed by data is a block the device lost.
    let damage = match end.damage {
        Some(damage) => Some(damage),
        None => written_after(&file, &paths.log, round_up(size), file_size).await?.map(|at| {
            format!("zeroed bytes at {size} followed by written data at {at}: a lost block")
        }),
    };
    // Zero padding after a clean end is not data; after damage, everything past it is cut.
    let cut_bytes = if damage.is_some() { file_size.saturating_sub(size) } else { 0 };
    let report = RecoveryReport { cut_bytes, damage };
    if let Some(damage) = &report.damage {
        tracing::error!(path = %paths.log.display(), position = size, next_offset = end.next_offset,
            cut_bytes = report.cut_bytes, %damage,
            "recovery cut a damaged tail: any acknowledged data in it is lost");
    }
    let end = segment::ScanEnd { damage: report.damage.clone(), ..end };
    if file_size > round_up(size) || end.damage.is_some() {
        file.truncate(round_up(size)).await.map_err(|e| LogError::io("truncate", &paths.log, e))?;
    }
    if end.damage.is_some() {
        segment::rewrite_tail_block(&file, &paths.log, size, &tail).await?;
    }
    // What recovery found may have been written but never synced (the process died between a
    // write and its fdatasync). Make it durable before anyone reads it, so that a later power
    // loss cannot take back what a consumer already saw.
    fdatasync(&file, &paths.log, faults).await?;
    let segment = Segment {
        base_offset: base,
        file: Rc::new(file),
        paths,
        size,
        next_offset: end.next_offset.unwrap_or(base),
        index,
        tail,
        created_ms: now_ms,
    };
    Ok((segment, report))
}

fn check_continuity(segments: &BTreeMap<i64, Segment>) {
    let mut previous: Option<&Segment> = None;
    for segment in segments.values() {
        if let Some(previous) = previous {
            if previous.next_offset != segment.base_offset {
                tracing::error!(
                    previous = %previous.paths.log.display(), ends_at = previous.next_offset,
                    next = %segment.paths.log.display(), "offset gap or overlap between segments"
                );
            }
        }
        previous = Some(segment);
    }
}
