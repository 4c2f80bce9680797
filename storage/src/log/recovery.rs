//! Recovery on open: sealed segments load their indexes (rebuilt from the log when missing or
//! damaged); the last segment is validated batch by batch and its damaged tail cut.

use std::path::Path;
use std::rc::Rc;

use glommio::io::DmaFile;

use super::{fdatasync, RecoveryReport};
use crate::config::{FlushPolicy, LogConfig};
use crate::error::{LogError, Result};
use crate::faults::StorageFaults;
use crate::index::{SegmentIndex, SegmentSummary};
use crate::limits;
use crate::scan::Check;
use crate::segment::{self, round_up, Segment, SegmentPaths};

pub(super) async fn open_sealed_segment(
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
    let (index, end) = index_segment(
        file,
        &paths.log,
        base,
        file_size,
        Check::Structure,
        config.index_interval_bytes,
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
pub(super) async fn recover_tail_segment(
    dir: &Path,
    base: i64,
    config: &LogConfig,
    now_ms: i64,
    faults: Option<&Rc<dyn StorageFaults>>,
) -> Result<(Segment, RecoveryReport)> {
    let paths = SegmentPaths::new(dir, base);
    let file = segment::open_log_file(&paths.log, false).await?;
    let file_size = file.file_size().await.map_err(|e| LogError::io("stat", &paths.log, e))?;
    let (index, end) =
        index_segment(&file, &paths.log, base, file_size, Check::Crc, config.index_interval_bytes)
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
    // loss cannot take back what a consumer already saw. Not for an empty segment (a new
    // partition: nothing to keep), nor under flush=never, which promises nothing across a power
    // loss (and thousands of partitions would each pay a sync at every start).
    if size > 0 && config.flush != FlushPolicy::Never {
        fdatasync(&file, &paths.log, faults).await?;
    }
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

/// Builds the index of a segment starting at offset `base` from the batches in `[0, end)` of its
/// file, checked as `check` says; the scan stops at the first batch that fails the check, and the
/// returned [`ScanEnd`](segment::ScanEnd) says where and why.
pub(super) async fn index_segment(
    file: &DmaFile,
    path: &Path,
    base: i64,
    end: u64,
    check: Check,
    interval: u32,
) -> Result<(SegmentIndex, segment::ScanEnd)> {
    let mut index = SegmentIndex::new();
    let scan_end = segment::scan_file(file, path, 0, end, Some(base), check, |batch, _| {
        let relative = (batch.header.base_offset - base) as u32;
        index.on_batch(relative, batch.position as u32, batch.header.max_timestamp, interval);
        true
    })
    .await?;
    Ok((index, scan_end))
}
