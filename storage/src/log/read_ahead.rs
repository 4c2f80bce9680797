//! Sequential reads with read-ahead: what a consumer catching up from disk reads.
//!
//! A plain disk read (`read::DiskRead`) reads one window at queue depth 1, and the next fetch
//! waits for the disk again. Once a log sees a second disk read that starts exactly where the
//! previous one ended, it opens a [`ReadStream`] on that segment: Glommio's `DmaStreamReader`
//! keeps [`limits::READ_AHEAD_BUFFERS`] aligned reads of [`limits::READ_AHEAD_BUFFER_BYTES`] in
//! flight ahead of the reader, so the disk works while the batches already read travel to the
//! consumer.
//!
//! Batches come back as slices of the read-ahead buffers (no copy), except a batch that straddles
//! two buffers, which is copied into one buffer of its own (at most one per buffer boundary).
//! The stream only covers bytes of the segment that were written when it opened, which never
//! change except by truncation or a reset; both bump the log's read generation, which ends every
//! stream opened before.
//!
//! Each stream holds up to `READ_AHEAD_BUFFERS x READ_AHEAD_BUFFER_BYTES` of memory; a shard
//! keeps at most [`limits::READ_STREAMS_PER_SHARD_MAX`] of them (see `crate::memory`), taking the
//! least recently used one from its log when it has been idle for
//! [`limits::READ_STREAM_IDLE`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use glommio::io::{DmaFile, DmaStreamReader, DmaStreamReaderBuilder, ReadResult};
use spate_protocol::batch::{self, BatchHeader, HEADER_LEN};

use super::LogBytes;
use crate::error::{LogError, Result};
use crate::limits;

/// A log's place for its read stream, registered with its shard's memory budget while it holds
/// one. The stream is taken out while a read uses it (no borrow lives across an `.await`).
#[derive(Default)]
pub(crate) struct StreamSlot {
    stream: RefCell<Option<ReadStream>>,
    /// The log owns a stream: in the slot, or out of it for a read.
    active: Cell<bool>,
    last_used: Cell<Option<Instant>>,
}

impl StreamSlot {
    pub(crate) fn is_active(&self) -> bool {
        self.active.get()
    }

    pub(crate) fn last_used(&self) -> Option<Instant> {
        self.last_used.get()
    }

    /// Ends an idle stream (for the shard's budget) unless a read is using it; whether it did.
    pub(crate) fn evict(&self) -> bool {
        match self.stream.try_borrow_mut() {
            Ok(mut stream) if stream.is_some() => {
                *stream = None;
                self.active.set(false);
                true
            }
            _ => false,
        }
    }

    /// Takes the stream out for a read.
    pub(super) fn take(&self) -> Option<ReadStream> {
        self.stream.borrow_mut().take()
    }

    /// Whether the stream was last used at least [`limits::READ_STREAM_IDLE`] ago.
    pub(super) fn idle(&self, now: Instant) -> bool {
        self.last_used
            .get()
            .is_none_or(|used| now.saturating_duration_since(used) >= limits::READ_STREAM_IDLE)
    }

    /// Puts back a stream taken out but not used, leaving its last use as it was.
    pub(super) fn put_back(&self, stream: ReadStream) {
        *self.stream.borrow_mut() = Some(stream);
    }

    /// Puts a stream back after a read (or a new one in), and marks the log as holding one.
    pub(super) fn put(&self, stream: ReadStream) {
        self.last_used.set(Some(Instant::now()));
        self.active.set(true);
        *self.stream.borrow_mut() = Some(stream);
    }

    /// The log no longer holds a stream (it ended, or a read found it unusable).
    pub(super) fn release(&self) {
        *self.stream.borrow_mut() = None;
        self.active.set(false);
    }
}

/// A sequential reader of one segment with read-ahead. Its position is always at a batch
/// boundary.
pub(super) struct ReadStream {
    file: Rc<DmaFile>,
    segment_base: i64,
    generation: u64,
    reader: DmaStreamReader,
    /// Bytes read from the reader but not yet returned, in file order, starting at the stream's
    /// position (at most a few pieces: a buffer's rest, a straddling batch).
    carry: VecDeque<LogBytes>,
    /// Every offset below this was at or before the stream's position.
    next_offset: i64,
    /// The reader reached the end the segment had when the stream opened.
    exhausted: bool,
}

/// Where a read stream stands, for [`ReadStream::serves`].
pub(super) struct Want<'a> {
    pub file: &'a Rc<DmaFile>,
    pub segment_base: i64,
    pub generation: u64,
    pub offset: i64,
    /// Where the segment's index places the batch holding `offset` (at or before it).
    pub indexed_position: u64,
}

impl ReadStream {
    /// Opens a stream on `file` at `position`, a batch boundary whose batch holds offsets at
    /// or after `first_offset`, reading up to `end` (the segment's written size).
    pub(super) fn open(
        file: Rc<DmaFile>,
        segment_base: i64,
        generation: u64,
        position: u64,
        first_offset: i64,
        end: u64,
    ) -> ReadStream {
        let reader = DmaStreamReaderBuilder::from_rc(file.clone())
            .with_start_pos(position)
            .with_end_pos(end)
            .with_buffer_size(limits::READ_AHEAD_BUFFER_BYTES)
            .with_read_ahead(limits::READ_AHEAD_BUFFERS)
            .build();
        ReadStream {
            file,
            segment_base,
            generation,
            reader,
            carry: VecDeque::new(),
            next_offset: first_offset,
            exhausted: false,
        }
    }

    fn position(&self) -> u64 {
        let carried: usize = self.carry.iter().map(|piece| piece.len()).sum();
        self.reader.current_pos() - carried as u64
    }

    /// Whether a read of `want` can continue this stream: same segment and generation, at or
    /// after its position, and within what it reads ahead (further on, a fresh stream at the
    /// indexed position wastes less).
    pub(super) fn serves(&self, want: &Want) -> bool {
        const SPAN: u64 = (limits::READ_AHEAD_BUFFERS * limits::READ_AHEAD_BUFFER_BYTES) as u64;
        !self.exhausted
            && Rc::ptr_eq(&self.file, want.file)
            && self.segment_base == want.segment_base
            && self.generation == want.generation
            && self.next_offset <= want.offset
            && want.indexed_position < self.position() + SPAN
    }

    /// Whether the stream may still be read: not exhausted, and opened in the log's current
    /// read generation.
    pub(super) fn current(&self, generation: u64) -> bool {
        !self.exhausted && self.generation == generation
    }

    /// Every offset below this was at or before the stream's position.
    pub(super) fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub(super) fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// The next piece of the file in order: carried bytes first, then the reader's next buffer.
    async fn next_piece(&mut self, path: &Path) -> Result<Option<LogBytes>> {
        if let Some(piece) = self.carry.pop_front() {
            return Ok(Some(piece));
        }
        if self.exhausted {
            return Ok(None);
        }
        let buffer = self
            .reader
            .get_buffer_aligned(limits::READ_AHEAD_BUFFER_BYTES as u64)
            .await
            .map_err(|e| LogError::io("read", path, e))?;
        if buffer.is_empty() {
            self.exhausted = true;
            return Ok(None);
        }
        Ok(Some(LogBytes::Disk(buffer)))
    }

    /// Whole batches from the stream's position: those wholly below `offset` are skipped, then
    /// up to about `bytes_max` bytes (the first batch whole even if larger) of batches that end
    /// at or below `high_watermark`. Empty when the next batch is above the high watermark, or
    /// the stream is exhausted (see [`exhausted`](Self::exhausted)).
    pub(super) async fn read(
        &mut self,
        path: &Path,
        offset: i64,
        bytes_max: usize,
        high_watermark: i64,
    ) -> Result<Vec<LogBytes>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        // Each step consumes one piece (or splits a straddling batch off the front of the
        // carry); enough steps for the largest read plus what a stream may skip.
        for _step in 0..limits::READ_STREAM_STEPS_MAX {
            let Some(piece) = self.next_piece(path).await? else { break };
            let mut at = 0usize;
            let mut run: Option<usize> = None;
            // Bounded by the piece: every iteration consumes one whole batch or stops.
            let stop = loop {
                if at == piece.len() {
                    break Stop::Consumed;
                }
                if piece.len() - at < HEADER_LEN {
                    break Stop::Straddles;
                }
                let header = BatchHeader::parse(&piece[at..]).expect("length checked");
                let corrupt = |reason: String| LogError::Corruption {
                    path: path.to_path_buf(),
                    position: self.position_after_carry(&piece, at),
                    reason,
                };
                header.check_shape().map_err(|e| corrupt(e.to_string()))?;
                let length = header.batch_length as usize;
                if piece.len() - at < length {
                    break Stop::Straddles;
                }
                if header.next_offset() <= offset {
                    debug_assert!(run.is_none(), "skipping only happens before the first batch");
                    self.next_offset = header.next_offset();
                    at += length;
                    continue;
                }
                if header.next_offset() > high_watermark
                    || (total > 0 && total + length > bytes_max)
                {
                    break Stop::Full;
                }
                if let Err(error) = batch::validate_crc(&piece[at..at + length]) {
                    if total == 0 {
                        return Err(corrupt(error.to_string()));
                    }
                    // Return what came before; the next read starts at the bad batch.
                    break Stop::Full;
                }
                run.get_or_insert(at);
                at += length;
                total += length;
                self.next_offset = header.next_offset();
            };
            if let Some(start) = run {
                out.push(slice(&piece, start, at - start));
            }
            match stop {
                Stop::Consumed => {}
                Stop::Full => {
                    self.carry.push_front(slice(&piece, at, piece.len() - at));
                    return Ok(out);
                }
                Stop::Straddles => {
                    let rest = slice(&piece, at, piece.len() - at);
                    match self.join_straddling(path, rest).await? {
                        Some(whole) => self.carry.push_front(whole),
                        // The segment's written end cut a batch: nothing more to read here.
                        None => {
                            self.exhausted = true;
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The file position of `at` in a piece just taken from the front of the carry.
    fn position_after_carry(&self, piece: &LogBytes, at: usize) -> u64 {
        self.position() - piece.len() as u64 + at as u64
    }

    /// Copies the batch that starts `first` and continues into the following pieces into one
    /// buffer; what follows it goes back to the carry. `None` if the stream ends first.
    async fn join_straddling(&mut self, path: &Path, first: LogBytes) -> Result<Option<LogBytes>> {
        let mut joined = BytesMut::from(&first[..]);
        let mut needed = HEADER_LEN;
        let mut known = false;
        for _step in 0..limits::READ_STREAM_STEPS_MAX {
            if !known && joined.len() >= HEADER_LEN {
                let header = BatchHeader::parse(&joined).expect("length checked");
                header.check_shape().map_err(|e| LogError::Corruption {
                    path: path.to_path_buf(),
                    position: self.position() - joined.len() as u64,
                    reason: e.to_string(),
                })?;
                needed = header.batch_length as usize;
                known = true;
            }
            if known && joined.len() >= needed {
                return Ok(Some(LogBytes::Memory(joined.freeze())));
            }
            let Some(next) = self.next_piece(path).await? else { return Ok(None) };
            let take = (needed - joined.len()).min(next.len());
            joined.extend_from_slice(&next[..take]);
            if take < next.len() {
                self.carry.push_front(slice(&next, take, next.len() - take));
            }
        }
        Ok(None)
    }
}

enum Stop {
    /// The piece held only whole batches, all taken or skipped.
    Consumed,
    /// The read is complete (size, high watermark, or a bad batch after good ones).
    Full,
    /// The next batch continues into the next piece.
    Straddles,
}

fn slice(piece: &LogBytes, from: usize, length: usize) -> LogBytes {
    match piece {
        LogBytes::Memory(bytes) => LogBytes::Memory(bytes.slice(from..from + length)),
        LogBytes::Disk(read) => {
            LogBytes::Disk(ReadResult::slice(read, from, length).expect("inside the piece"))
        }
    }
}
