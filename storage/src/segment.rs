//! One segment of a partition log: a `.log` file of batches plus its sparse indexes, and the
//! direct-IO helpers that read, scan and repair it.
//!
//! Segment files are named by the base offset of their first batch, zero-padded to 20 digits:
//! `00000000000000000042.log`, `.index`, `.timeindex`. The `.log` holds batches back to back from
//! byte 0 (format in `spate_protocol::batch`); after the last batch the file holds zeros up to the
//! next 4 KiB boundary, because direct IO writes whole blocks. A reader never reads past the
//! segment's logical size, so the padding is invisible.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions, ReadResult};

use crate::error::{LogError, Result};
use crate::index::SegmentIndex;
use crate::limits::{BLOCK_BYTES, SCAN_CHUNK_BYTES};
use crate::scan::{self, Check, Found, Stop};

pub(crate) const LOG_SUFFIX: &str = "log";

#[derive(Debug, Clone)]
pub(crate) struct SegmentPaths {
    pub log: PathBuf,
    pub index: PathBuf,
    pub time_index: PathBuf,
}

impl SegmentPaths {
    pub fn new(dir: &Path, base_offset: i64) -> SegmentPaths {
        let stem = format!("{base_offset:020}");
        SegmentPaths {
            log: dir.join(format!("{stem}.{LOG_SUFFIX}")),
            index: dir.join(format!("{stem}.index")),
            time_index: dir.join(format!("{stem}.timeindex")),
        }
    }
}

/// Parses a segment file name back into its base offset.
pub(crate) fn parse_segment_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub file: Rc<DmaFile>,
    pub paths: SegmentPaths,
    /// Logical bytes: everything before this is whole, written batches.
    pub size: u64,
    /// Offset after the last batch written to this segment.
    pub next_offset: i64,
    pub index: SegmentIndex,
    /// The bytes of the last, partial block (`size % BLOCK_BYTES` of them), kept so the next
    /// append can rewrite that block whole. Empty for sealed segments.
    pub tail: Vec<u8>,
    pub created_ms: i64,
}

impl Segment {
    /// File position where the next write starts: the beginning of the partial tail block.
    pub fn write_position(&self) -> u64 {
        debug_assert_eq!(self.tail.len() as u64, self.size % BLOCK_BYTES as u64);
        self.size - self.tail.len() as u64
    }
}

pub(crate) fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

pub(crate) fn round_down(n: u64) -> u64 {
    n / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}

thread_local! {
    /// Devices (st_dev) whose Glommio IO-poll probe this executor thread has already primed.
    static PRIMED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Makes Glommio's per-thread "is this device pollable" probe see a real read, so it caches
/// "not pollable" on devices without poll queues. Without this, the first DMA file opened on a
/// device is often an empty new segment, the probe wrongly succeeds, and every later DMA read on
/// that device from this thread fails with EOPNOTSUPP (see shared/NOTES.md). Idempotent and
/// cheap after the first call per device and thread.
pub async fn prime_dma_probe(dir: &Path) -> Result<()> {
    let device = std::fs::metadata(dir).map_err(|e| LogError::io("stat", dir, e))?.dev();
    if PRIMED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let probe = dir.join(".spate-dma-probe");
    let long_enough = std::fs::metadata(&probe).is_ok_and(|m| m.len() >= BLOCK_BYTES as u64);
    if !long_enough {
        std::fs::write(&probe, vec![0u8; BLOCK_BYTES])
            .map_err(|e| LogError::io("write", &probe, e))?;
    }
    let file = DmaFile::open(&probe).await.map_err(|e| LogError::io("open", &probe, e))?;
    let _ = file.close().await;
    PRIMED_DEVICES.with(|p| p.borrow_mut().insert(device));
    Ok(())
}

/// Opens a segment `.log` for direct-IO reading and writing.
pub(crate) async fn open_log_file(path: &Path, create: bool) -> Result<DmaFile> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(create)
        .dma_open(path)
        .await
        .map_err(|e| LogError::io("open", path, e))
}

pub(crate) async fn read_at(
    file: &DmaFile,
    path: &Path,
    position: u64,
    length: usize,
) -> Result<ReadResult> {
    file.read_at(position, length).await.map_err(|e| LogError::io("read", path, e))
}

/// How a scan of a whole file range ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Position just past the last valid batch.
    pub end: u64,
    /// Offset after the last valid batch (the `expected` offset if there was none).
    pub next_offset: Option<i64>,
    /// `None` when the range ended cleanly (exactly at a batch boundary, or in zero padding);
    /// otherwise what was wrong at `end`.
    pub damage: Option<String>,
}

/// Scans batches in `[from, to)` of a file, reading it in bounded chunks, calling `visit` for
/// each valid batch until it returns `false`.
pub(crate) async fn scan_file(
    file: &DmaFile,
    path: &Path,
    from: u64,
    to: u64,
    expected: Option<i64>,
    check: Check,
    mut visit: impl FnMut(Found, &[u8]) -> bool,
) -> Result<ScanEnd> {
    let mut position = from;
    let mut expected = expected;
    let mut want = SCAN_CHUNK_BYTES;
    let mut stopped = false;
    // Each iteration either advances `position` by at least one batch, or grows `want` to hold
    // the next batch whole, or ends; the loop is bounded by the range.
    while position < to && !stopped {
        let length = want.min((to - position) as usize);
        let window = read_at(file, path, position, length).await?;
        let window = &window[..window.len().min(length)];
        let mut progressed = 0u64;
        let stop = scan::scan_window(window, position, expected, check, |found, bytes| {
            expected = Some(found.header.next_offset());
            progressed = found.position + found.header.batch_length as u64 - position;
            let keep_going = visit(found, bytes);
            stopped |= !keep_going;
            keep_going
        });
        match stop {
            Stop::EndOfWindow if stopped => break,
            Stop::EndOfWindow if window.len() < length => {
                // Short read: the file ends before `to`.
                return Ok(ScanEnd {
                    end: position + progressed,
                    next_offset: expected,
                    damage: None,
                });
            }
            Stop::EndOfWindow => {
                position += progressed;
                want = SCAN_CHUNK_BYTES;
            }
            Stop::NeedMore { position: at, batch_length } => {
                let available = to - at;
                if (batch_length as u64) > available || window.len() < length {
                    // The range (or file) ends inside this batch: a torn tail, or zero padding.
                    let rest =
                        read_at(file, path, at, available.min(BLOCK_BYTES as u64) as usize).await?;
                    let damage = (!rest.iter().all(|b| *b == 0)).then(|| {
                        format!("batch of {batch_length} bytes cut short by the end of the file")
                    });
                    return Ok(ScanEnd { end: at, next_offset: expected, damage });
                }
                if at == position {
                    want = batch_length.max(SCAN_CHUNK_BYTES);
                }
                position = at;
            }
            Stop::Invalid { position: at, zeroes, reason } => {
                let damage = (!zeroes).then_some(reason);
                return Ok(ScanEnd { end: at, next_offset: expected, damage });
            }
        }
    }
    Ok(ScanEnd { end: position, next_offset: expected, damage: None })
}

/// Writes a whole aligned buffer at `position`. A short write (the kernel reports ENOSPC only on
/// the call after a partial one) continues with the remainder, so the caller sees the real error.
pub(crate) async fn write_all_at(
    file: &DmaFile,
    path: &Path,
    buffer: glommio::io::DmaBuffer,
    position: u64,
) -> Result<()> {
    let length = buffer.len();
    let buffer = Rc::new(buffer);
    let mut done = file
        .write_rc_at(buffer.clone(), position)
        .await
        .map_err(|e| LogError::io("write", path, e))?;
    // Bounded: each iteration writes at least one block more, or fails.
    for _ in 0..length / BLOCK_BYTES {
        if done >= length {
            break;
        }
        if done % BLOCK_BYTES != 0 {
            let error = std::io::Error::other(format!("unaligned short write: {done} of {length}"));
            return Err(LogError::io("write", path, error));
        }
        // Rare path, only while the device is filling up: copy the unwritten remainder.
        let mut remainder = file.alloc_dma_buffer(length - done);
        remainder.as_bytes_mut().copy_from_slice(&buffer.as_bytes()[done..]);
        let written = file
            .write_at(remainder, position + done as u64)
            .await
            .map_err(|e| LogError::io("write", path, e))?;
        if written == 0 {
            return Err(LogError::io(
                "write",
                path,
                std::io::Error::from(std::io::ErrorKind::WriteZero),
            ));
        }
        done += written;
    }
    if done < length {
        return Err(LogError::io("write", path, std::io::Error::other("short write")));
    }
    Ok(())
}

/// Writes `tail` (the bytes of a partial last block) back as a whole block padded with zeros, so
/// nothing after the logical end survives in that block.
pub(crate) async fn rewrite_tail_block(
    file: &DmaFile,
    path: &Path,
    size: u64,
    tail: &[u8],
) -> Result<()> {
    assert_eq!(tail.len() as u64, size % BLOCK_BYTES as u64);
    if tail.is_empty() {
        return Ok(());
    }
    let mut buffer = file.alloc_dma_buffer(BLOCK_BYTES);
    let bytes = buffer.as_bytes_mut();
    bytes[..tail.len()].copy_from_slice(tail);
    bytes[tail.len()..].fill(0);
    write_all_at(file, path, buffer, round_down(size)).await
}

/// Reads the partial last block of a segment of `size` bytes.
pub(crate) async fn read_tail(file: &DmaFile, path: &Path, size: u64) -> Result<Vec<u8>> {
    let partial = (size % BLOCK_BYTES as u64) as usize;
    if partial == 0 {
        return Ok(Vec::new());
    }
    let block = read_at(file, path, round_down(size), BLOCK_BYTES).await?;
    if block.len() < partial {
        return Err(LogError::Corruption {
            path: path.to_path_buf(),
            position: round_down(size),
            reason: "file shorter than its logical size".into(),
        });
    }
    Ok(block[..partial].to_vec())
}

/// Writes a small file whole and fdatasyncs it (index files at seal time).
pub(crate) async fn write_small_file(path: &Path, bytes: Vec<u8>) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(path)
        .await
        .map_err(|e| LogError::io("open", path, e))?;
    let length = bytes.len();
    let written = file.write_at(bytes, 0).await.map_err(|e| LogError::io("write", path, e))?;
    if written != length {
        return Err(LogError::io("write", path, std::io::Error::other("short write")));
    }
    file.fdatasync().await.map_err(|e| LogError::io("fdatasync", path, e))?;
    file.close().await.map_err(|e| LogError::io("close", path, e))?;
    Ok(())
}

/// Makes directory entries (new or removed segment files) durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<()> {
    let handle =
        glommio::io::Directory::open(dir).await.map_err(|e| LogError::io("open", dir, e))?;
    handle.sync().await.map_err(|e| LogError::io("fsync", dir, e))?;
    let _ = handle.close().await;
    Ok(())
}

pub(crate) fn remove_segment_files(paths: &SegmentPaths) {
    for path in [&paths.log, &paths.index, &paths.time_index] {
        if let Err(error) = std::fs::remove_file(path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "could not remove segment file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let paths = SegmentPaths::new(Path::new("/d"), 42);
        assert_eq!(paths.log, Path::new("/d/00000000000000000042.log"));
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.log"), None);
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(1), 4096);
        assert_eq!(round_up(4096), 4096);
        assert_eq!(round_down(4097), 4096);
    }
}
