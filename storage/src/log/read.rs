//! Reads: whole batches from the tail cache or, zero-copy, from a segment file; and the search
//! for the first offset at or after a timestamp.

use std::path::PathBuf;
use std::rc::Rc;

use glommio::io::ReadResult;
use spate_protocol::batch::{self, BatchHeader, Records, HEADER_LEN};

use super::read_ahead::{ReadStream, Want};
use super::{Log, LogBytes, LogRead};
use crate::error::{LogError, Result};
use crate::limits;
use crate::scan::Check;
use crate::segment;

impl Log {
    /// Reads whole batches starting with the one that holds `offset`, up to about `bytes_max`
    /// bytes (the first batch is returned whole even if larger). Reading at the high watermark
    /// returns no batches; below the start offset or past the high watermark is
    /// `OffsetOutOfRange`. A stored batch that fails its CRC is a `Corruption` error, never data.
    pub async fn read(&self, offset: i64, bytes_max: usize) -> Result<LogRead> {
        self.read_within(offset, bytes_max, None).await
    }

    /// `read` up to the log's high watermark (`upper` = `None`), or up to `upper` within what
    /// the log holds (see [`read_bounded`](Log::read_bounded)).
    pub(super) async fn read_within(
        &self,
        offset: i64,
        bytes_max: usize,
        upper: Option<i64>,
    ) -> Result<LogRead> {
        self.ensure_open()?;
        let bytes_max = bytes_max.clamp(1, limits::READ_BYTES_MAX);
        let plan = {
            let state = self.inner.state.borrow();
            let log_end =
                if upper.is_some() { state.readable_end() } else { state.high_watermark() };
            let high_watermark = upper.map_or(log_end, |upper| upper.min(log_end));
            let mut result = LogRead {
                chunks: Vec::new(),
                high_watermark,
                log_start_offset: state.start_offset,
            };
            if offset < state.start_offset || offset > log_end {
                return Err(LogError::OffsetOutOfRange {
                    offset,
                    start: state.start_offset,
                    end: log_end,
                });
            }
            if offset >= high_watermark {
                return Ok(result);
            }
            if let Some(chunks) = state.cache.read(offset, bytes_max, high_watermark) {
                if !chunks.is_empty() {
                    result.chunks = chunks.into_iter().map(LogBytes::Memory).collect();
                    return Ok(result);
                }
            }
            if offset >= state.written_offset {
                // Acknowledged from the journal, not yet in the segment, and evicted from the
                // tail cache: the queued batch itself.
                let first = state.pending.partition_point(|p| p.next_offset <= offset);
                let mut total = 0usize;
                for pending in state.pending.range(first..) {
                    if pending.next_offset > high_watermark
                        || (!result.chunks.is_empty() && total + pending.bytes.len() > bytes_max)
                    {
                        break;
                    }
                    total += pending.bytes.len();
                    result.chunks.push(LogBytes::Memory(pending.bytes.clone()));
                }
                return Ok(result);
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
                segment_base: segment.base_offset,
                generation: state.read_generation,
                position: segment.index.lookup(relative) as u64,
                end: segment.size,
                interval: state.config.index_interval_bytes as usize,
                high_watermark,
                result,
            }
        };
        self.read_from_disk(plan, offset, bytes_max).await
    }

    /// A planned disk read: through the log's read stream when it continues one (or a second
    /// sequential read opens one), else one read at queue depth 1 (see `read_ahead`).
    async fn read_from_disk(
        &self,
        plan: DiskRead,
        offset: i64,
        bytes_max: usize,
    ) -> Result<LogRead> {
        let slot = &self.inner.read_stream;
        let want = Want {
            file: &plan.file,
            segment_base: plan.segment_base,
            generation: plan.generation,
            offset,
            indexed_position: plan.position,
        };
        let mut stream = None;
        match slot.take() {
            Some(held) if held.serves(&want) => stream = Some(held),
            // Another reader's stream (two consumers of one partition at different places):
            // it keeps it while it uses it; this read goes to the disk directly.
            Some(held)
                if held.current(plan.generation) && !slot.idle(std::time::Instant::now()) =>
            {
                slot.put_back(held)
            }
            held => {
                drop(held);
                let sequential =
                    self.inner.state.borrow().last_disk_read == Some((offset, plan.generation));
                let admitted =
                    sequential
                        && self.inner.options.memory.as_ref().is_none_or(|memory| {
                            memory.admit_stream(slot, std::time::Instant::now())
                        });
                if admitted {
                    stream = Some(ReadStream::open(
                        plan.file.clone(),
                        plan.segment_base,
                        plan.generation,
                        plan.position,
                        plan.segment_base,
                        plan.end,
                    ));
                } else {
                    slot.release();
                }
            }
        }
        if let Some(mut stream) = stream {
            let chunks = stream.read(&plan.path, offset, bytes_max, plan.high_watermark).await;
            // Where this reader goes next: a stream that ends with its segment is followed by
            // one on the next segment at once.
            self.inner.state.borrow_mut().last_disk_read =
                Some((stream.next_offset(), plan.generation));
            let keep = chunks.is_ok() && !stream.exhausted() && !self.inner.state.borrow().closed;
            if keep {
                slot.put(stream);
            } else {
                slot.release();
            }
            let chunks = chunks?;
            if !chunks.is_empty() || keep {
                let mut result = plan.result;
                result.chunks = chunks;
                return Ok(result);
            }
            // The stream ended where the segment did when it opened: the plain read below
            // sees what was written since.
        }
        let generation = plan.generation;
        let (result, next_offset) = plan.run(offset, bytes_max).await?;
        self.inner.state.borrow_mut().last_disk_read = next_offset.map(|next| (next, generation));
        Ok(result)
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
        // Then the batches not yet in a segment (journaled, written behind), in memory.
        let unwritten: Vec<bytes::Bytes> = {
            let state = self.inner.state.borrow();
            let newer_ones = state
                .pending
                .iter()
                .filter(|p| p.max_timestamp >= timestamp_ms && p.next_offset > start);
            newer_ones.map(|p| p.bytes.clone()).collect()
        };
        // Bounded by the queue, whose bytes passed validation when appended.
        for bytes in unwritten {
            let header = BatchHeader::parse(&bytes).map_err(LogError::InvalidBatch)?;
            for record in Records::new(&bytes, header) {
                let record = record.map_err(LogError::InvalidBatch)?;
                if record.timestamp >= timestamp_ms && record.offset >= start {
                    return Ok((record.offset < high_watermark).then_some(record.offset));
                }
            }
        }
        Ok(None)
    }
}

/// A planned read from one segment file.
struct DiskRead {
    file: Rc<glommio::io::DmaFile>,
    path: PathBuf,
    segment_base: i64,
    generation: u64,
    position: u64,
    end: u64,
    interval: usize,
    high_watermark: i64,
    result: LogRead,
}

impl DiskRead {
    /// The read, and the offset after its last batch (where a sequential reader reads next).
    async fn run(mut self, offset: i64, bytes_max: usize) -> Result<(LogRead, Option<i64>)> {
        let mut want = bytes_max.max(limits::BLOCK_BYTES) + self.interval + HEADER_LEN;
        for _attempt in 0..limits::READ_ATTEMPTS_MAX {
            let remaining = self.end.saturating_sub(self.position) as usize;
            if remaining == 0 {
                return Ok((self.result, None));
            }
            let length = want.min(remaining);
            let window = segment::read_at(&self.file, &self.path, self.position, length).await?;
            let available = window.len().min(length);
            let mut at = 0usize;
            let mut first = None;
            let mut total = 0usize;
            let mut next_offset = None;
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
                next_offset = Some(header.next_offset());
            }
            match (first, need) {
                (Some(start), _) => {
                    let slice =
                        ReadResult::slice(&window, start, total).expect("inside the window");
                    self.result.chunks.push(LogBytes::Disk(slice));
                    return Ok((self.result, next_offset));
                }
                (None, Some(batch_length)) => {
                    // The wanted batch starts at `at` but is not whole in the window: re-read
                    // from there, large enough to hold it.
                    self.position += at as u64;
                    want = batch_length.max(bytes_max);
                }
                (None, None) => return Ok((self.result, None)),
            }
        }
        Err(LogError::Corruption {
            path: self.path.clone(),
            position: self.position,
            reason: "could not find a whole batch at the read position".into(),
        })
    }
}
