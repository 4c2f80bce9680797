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
//! batches up to the high watermark: `durable` under `flush=always`, so a consumer never reads a
//! batch a crash could take back; under `never` and `interval`, `written`, or, with a journal,
//! everything journaled.
//!
//! The journal (`LogOptions::journal_dir`, see [`crate::journal`]): under `flush=never` an
//! append is copied into a file on a tmpfs when it is queued, and completes at once, before the
//! device write; a device stall then delays the write, not the producer. A journaled batch
//! survives the death of the process (recovery replays it) but not a kernel crash or a power
//! cut before it is written. Journaled batches are written behind: the flush task gathers them
//! until `limits::WRITE_BEHIND_BYTES` or `limits::WRITE_BEHIND` (or its shard's memory is under
//! pressure), so many slow partitions make few large writes. Unwritten bytes are bounded by the
//! log's pending budget and its shard's (`crate::memory`). A write that
//! fails after batches were acknowledged keeps them queued and retries; new appends fail with
//! the write's error meanwhile.
//!
//! Layout of this module:
//! - this file: the log's handle ([`Log`]), its shared state, opening, offsets and config;
//! - `write`: appends, the flush task and its rounds, fdatasync, rolls, and what a failed
//!   write or fdatasync leaves behind;
//! - `read`: reads and the search by timestamp;
//! - `recovery`: what opening does to each segment (index load or rebuild, tail validation);
//! - `maintenance`: truncation, the start offset, retention, close and flush;
//! - `replica`: what replication needs: a follower's append at the leader's offsets and terms,
//!   a crash-safe reset to an empty log at a given start, and reads bounded by the caller.
//! - `producer_state`: idempotent producers' sequences, checked where appends take offsets and
//!   rebuilt on open (see its module docs).

mod maintenance;
mod producer_state;
mod read;
mod read_ahead;
mod recovery;
mod replica;
mod write;
pub use producer_state::Proposal;
pub(crate) use read_ahead::StreamSlot;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::io::{DmaFile, ReadResult};
use glommio::sync::Semaphore;
use glommio::TaskQueueHandle;
use spate_protocol::batch::{self, BatchHeader};

use crate::cache::{CachedBatch, TailCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::faults::StorageFaults;
use crate::journal::{self, Journal};
use crate::limits;
use crate::memory::ShardMemory;
use crate::producers::ProducerTable;
use crate::segment::{self, Segment, SegmentPaths};
use recovery::{open_sealed_segment, recover_tail_segment};

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
    /// Where this log journals unwritten `flush=never` batches (a directory on a tmpfs, one
    /// per log); `None`: `flush=never` appends complete after their device write.
    pub journal_dir: Option<PathBuf>,
    /// The shard's memory budget this log shares with its shard's other logs (see
    /// [`crate::memory`]); `None`: only the log's own limits apply.
    pub memory: Option<Rc<ShardMemory>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            clock: Rc::new(SystemClock),
            task_queue: None,
            faults: None,
            journal_dir: None,
            memory: None,
        }
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
    /// Bytes of queued batches; appenders wait for room (backpressure).
    pending_budget: tokio::sync::Semaphore,
    /// Appends take offsets in the order they were called: each takes a ticket when called and
    /// waits for its turn before it waits for room, and passes the turn on once queued. (The
    /// budgets' fairness alone did not keep that order: an append granted room still runs
    /// after a newcomer that finds room free, and pipelined batches of an idempotent producer
    /// then arrived out of sequence.)
    admission: spate_protocol::turnstile::Turnstile,
    /// Wakes a flush task that is gathering batches (write-behind) to write now.
    write_now: tokio::sync::Notify,
    /// The read stream of a consumer catching up from disk (see `read_ahead`).
    read_stream: Rc<StreamSlot>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(memory) = &self.options.memory {
            if !self.state.get_mut().closed {
                memory.log_closed();
            }
        }
    }
}

#[derive(Clone)]
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
    /// The unwritten-batch journal, while it works.
    journal: Option<Journal>,
    /// Offsets below this are acknowledged and survive a process crash: written, or journaled.
    acked_end: i64,
    /// Set when a write failed while it held acknowledged (journaled) batches: they stay queued
    /// and are retried, and new appends fail with this error until a write succeeds.
    write_error: Option<LogError>,
    /// When the oldest batch still queued was queued; write-behind counts from it. Real time,
    /// not the log's clock: it schedules device writes.
    pending_since: std::time::Instant,
    /// The log's directory entries (its first segment, just created) are not yet durable.
    dir_sync_due: bool,
    /// Idempotent producers' last batches (see `producer_state`).
    producers: ProducerTable,
    /// When idle producers were last looked for.
    producers_expired_ms: i64,
    /// Bumped whenever bytes already written may change (truncation, reset): read streams
    /// opened before it are not used again.
    read_generation: u64,
    /// Where the last disk read ended (next offset, read generation): a disk read starting
    /// there is sequential and opens a read stream.
    last_disk_read: Option<(i64, u64)>,
}

impl State {
    fn high_watermark(&self) -> i64 {
        match self.config.flush {
            FlushPolicy::Always => self.durable_offset,
            _ => self.written_offset.max(self.acked_end),
        }
    }

    /// The end of what the log holds whatever the flush policy: written to a segment, or
    /// journaled (and so replayed after a process crash). Bounded reads may go up to it.
    fn readable_end(&self) -> i64 {
        self.written_offset.max(self.acked_end)
    }

    /// Whether appends are acknowledged from the journal (before their write).
    fn journaling(&self) -> bool {
        self.config.flush == FlushPolicy::Never && self.journal.is_some()
    }

    /// Journals a queued batch; on success it counts as acknowledged. A journal that fails is
    /// given up (logged): appends then complete after their write again.
    fn journal_batch(
        &mut self,
        dir: &Path,
        base_offset: i64,
        next_offset: i64,
        bytes: &[u8],
    ) -> bool {
        let Some(journal) = self.journal.as_mut() else { return false };
        match journal.append(base_offset, next_offset, bytes) {
            Ok(()) => {
                self.acked_end = next_offset;
                true
            }
            Err(error) => {
                tracing::error!(dir = %dir.display(), %error,
                    "the journal failed; flush=never appends now complete after their write");
                self.journal = None;
                false
            }
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
    /// Returns the batch's next offset; [`State::wait_for`] gives what completes once it is
    /// written.
    fn queue(&mut self, mut batch: BytesMut, header: &BatchHeader, leader_term: u64) -> i64 {
        let base_offset = self.next_offset;
        batch::stamp(&mut batch, base_offset, leader_term);
        let next_offset = header.next_offset() - header.base_offset + base_offset;
        self.push_queued(batch.freeze(), base_offset, next_offset, header.max_timestamp);
        next_offset
    }

    /// What completes once everything before `next_offset` is written (or durable, under
    /// `flush=always`). Called in offset order.
    fn wait_for(&mut self, next_offset: i64) -> oneshot::Receiver<Result<()>> {
        let (tx, rx) = oneshot::channel();
        let durable = self.config.flush == FlushPolicy::Always;
        self.waiters.push_back(Waiter { next_offset, durable, reply: tx });
        rx
    }

    /// Queues a batch that already carries its offsets and term (replayed from the journal).
    fn queue_stamped(&mut self, bytes: Bytes, header: &BatchHeader) {
        assert_eq!(header.base_offset, self.next_offset, "replayed batches are contiguous");
        self.push_queued(bytes, header.base_offset, header.next_offset(), header.max_timestamp);
    }

    /// Puts a stamped batch at the end of the queue and the tail cache.
    fn push_queued(
        &mut self,
        bytes: Bytes,
        base_offset: i64,
        next_offset: i64,
        max_timestamp: i64,
    ) {
        self.next_offset = next_offset;
        self.pending_bytes += bytes.len();
        self.cache.push(CachedBatch { base_offset, next_offset, bytes: bytes.clone() });
        self.pending.push_back(Pending { base_offset, next_offset, max_timestamp, bytes });
    }

    /// The log now ends at `offset`, written and durable (after a truncation or a reset): every
    /// offset level, the tail cache and the producers' last batches follow.
    fn end_at(&mut self, offset: i64) {
        self.next_offset = offset;
        self.written_offset = offset;
        self.durable_offset = offset;
        self.acked_end = offset;
        self.cache.truncate(offset);
        self.producers.truncate(offset);
        self.read_generation += 1;
        self.last_disk_read = None;
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
        replica::finish_interrupted_reset(&dir, options.faults.as_ref()).await?;

        let mut bases = list_segments(&dir)?;
        let mut dir_sync_due = false;
        let checkpoint = read_start_checkpoint(&dir)?;
        let now_ms = options.clock.now_ms();
        if bases.is_empty() {
            let base = checkpoint.unwrap_or(0);
            let paths = SegmentPaths::new(&dir, base);
            let file = segment::open_log_file(&paths.log, true).await?;
            file.close().await.map_err(|e| LogError::io("close", &paths.log, e))?;
            // The directory is synced before the first fdatasync that acknowledges anything
            // (`sync_active`), not here: creating thousands of partitions costs one directory
            // sync each only once they are written to. Lost in a crash before then, an empty
            // segment is simply created again.
            dir_sync_due = true;
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
        if let Some(memory) = &options.memory {
            memory.log_opened();
        }
        let cache_bytes = match &options.memory {
            Some(memory) => memory.cache_share(config.cache_bytes),
            None => config.cache_bytes,
        };
        let cache = TailCache::new(cache_bytes);
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
            journal: None,
            acked_end: next_offset,
            write_error: None,
            pending_since: std::time::Instant::now(),
            dir_sync_due,
            producers: ProducerTable::default(),
            producers_expired_ms: now_ms,
            read_generation: 0,
            last_disk_read: None,
        };
        let log = Log {
            inner: Rc::new(Inner {
                dir,
                options,
                state: RefCell::new(state),
                io_lock: Semaphore::new(1),
                pending_budget: tokio::sync::Semaphore::new(limits::PENDING_BYTES_MAX),
                admission: Default::default(),
                write_now: tokio::sync::Notify::new(),
                read_stream: Rc::default(),
            }),
        };
        if let Some(journal_dir) = log.inner.options.journal_dir.clone() {
            log.replay_journal(&journal_dir).await?;
        }
        // After the journal's batches are written, so they are replayed too.
        log.rebuild_producers().await?;
        Ok(log)
    }

    /// Writes (and syncs) what the journal holds past the recovered end, then starts a fresh
    /// journal. A crash meanwhile leaves the old journal in place for the next attempt.
    async fn replay_journal(&self, journal_dir: &Path) -> Result<()> {
        let next = self.inner.state.borrow().next_offset;
        let replayed = journal::replay(journal_dir, next)
            .map_err(|e| LogError::io("replay", journal_dir, e))?;
        let mut batches = 0usize;
        let mut bytes = 0usize;
        {
            let mut state = self.inner.state.borrow_mut();
            // Bounded by the journal's contents.
            for record in replayed {
                let Ok(header) = batch::validate(&record.batch) else { break };
                if header.base_offset != state.next_offset {
                    break;
                }
                bytes += record.batch.len();
                batches += 1;
                state.queue_stamped(record.batch, &header);
            }
        }
        if batches > 0 {
            // The replayed bytes hold their share of the pending budget until written.
            let permits = self.inner.pending_budget.try_acquire_many(bytes as u32);
            permits.expect("a journal holds at most one pending budget").forget();
            if let Some(memory) = &self.inner.options.memory {
                // Logs open one at a time, each writing its replay before the next: the room
                // comes, at the latest, as other logs' writes complete.
                memory.acquire_pending(bytes).await.forget();
            }
            tracing::warn!(dir = %self.inner.dir.display(), batches, bytes,
                "replayed acknowledged batches the previous process had not written");
            self.flush().await?;
        }
        let journal =
            Journal::create(journal_dir).map_err(|e| LogError::io("create", journal_dir, e))?;
        let mut state = self.inner.state.borrow_mut();
        state.acked_end = state.next_offset;
        state.journal = Some(journal);
        Ok(())
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
        state.cache.set_capacity(self.cache_capacity(config.cache_bytes));
        state.config = config;
        Ok(())
    }

    /// Shrinks (or grows) the tail cache to this log's share of its shard's cache budget, which
    /// changes as logs open and close on the shard.
    pub fn fit_cache(&self) {
        let mut state = self.inner.state.borrow_mut();
        let capacity = self.cache_capacity(state.config.cache_bytes);
        state.cache.set_capacity(capacity);
    }

    fn cache_capacity(&self, configured: usize) -> usize {
        match &self.inner.options.memory {
            Some(memory) => memory.cache_share(configured),
            None => configured,
        }
    }

    /// Gives back the budget of `bytes` of queued batches that were written or dropped.
    fn release_pending(&self, bytes: usize) {
        self.inner.pending_budget.add_permits(bytes);
        if let Some(memory) = &self.inner.options.memory {
            memory.release_pending(bytes);
        }
    }

    /// Bytes this log holds in memory: its tail cache, and its queued (unwritten) batches.
    /// A queued batch is usually in the cache too, so the two overlap.
    pub fn memory_bytes(&self) -> (usize, usize) {
        let state = self.inner.state.borrow();
        (state.cache.bytes(), state.pending_bytes)
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

    /// Bytes the log holds from `offset` to its end, unwritten batches included: what a
    /// follower (or reader) at `offset` has left to read. Exact for queued batches; within a
    /// segment it counts from the index entry at or before `offset`, so it may count up to
    /// the index interval too much. 0 at or past the end.
    pub fn bytes_from(&self, offset: i64) -> u64 {
        let state = self.inner.state.borrow();
        // Bounded by the pending budget and the segment count.
        let queued: u64 = state
            .pending
            .iter()
            .filter(|p| p.next_offset > offset)
            .map(|p| p.bytes.len() as u64)
            .sum();
        // The segment holding `offset` counts from its index entry, later ones whole: a
        // caught-up follower costs one lookup, however many segments the log keeps.
        use std::ops::Bound::{Excluded, Unbounded};
        let holding = state.segments.range(..=offset).next_back().map(|(_, s)| s);
        let partial = holding.filter(|s| s.next_offset > offset).map_or(0, |s| {
            let relative = (offset - s.base_offset).min(i64::from(u32::MAX)) as u32;
            s.size.saturating_sub(u64::from(s.index.lookup(relative)))
        });
        let later: u64 =
            state.segments.range((Excluded(offset), Unbounded)).map(|(_, s)| s.size).sum();
        queued + partial + later
    }

    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<i64> {
        self.inner.state.borrow().segments.keys().copied().collect()
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
