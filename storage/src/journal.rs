//! The unwritten-batch journal: what will let a log acknowledge a `flush=never` append before
//! its `O_DIRECT` write reaches the device, without losing it to a process crash.
//!
//! The device stalls for 100–450 ms at times (see the performance issue); an acknowledgement
//! that waits for the device write inherits every stall. Kafka acknowledges once a batch is in
//! the page cache, which outlives the process but not the machine. The journal gives Spate the
//! same promise without giving up direct IO for the log itself: each batch is also copied into
//! a file on a tmpfs (by default under `/dev/shm`), which is memory that the kernel keeps when
//! the process dies and loses with the machine. Once the log has written a batch to its segment,
//! the batch's journal copy is dropped; on restart, recovery replays what the journal holds past
//! the segment's recovered end.
//!
//! What `flush=never` then promises: an acknowledged batch survives `kill -9` of the broker
//! (replayed from the journal) but not a kernel crash or a power cut (the tmpfs is gone) unless
//! it was written by then: the log gathers journaled batches for at most
//! [`crate::limits::WRITE_BEHIND`] (1 s) or 256 KiB before it writes them, so that window is
//! one second plus the length of any device stall, bounded by the unwritten-bytes budgets.
//!
//! # Layout
//!
//! One directory per log, holding files named `journal-<generation>` (decimal, increasing).
//! Each file starts with a 16-byte header and holds records back to back; integers are
//! little-endian:
//!
//! ```text
//! header:  magic    8 bytes  "SPJRNL01"
//!          gen      u64      the generation in the file name
//! record:  length   u32      bytes of the batch that follows
//!          crc      u32      CRC-32 of base_offset (8 bytes LE) then the batch
//!          base     i64      the batch's base offset
//!          batch    length bytes, exactly as queued for the segment
//! ```
//!
//! A record is written at the end of the current file: a large one with one `pwritev`, a small
//! one ([`MAPPED_RECORD_BYTES_MAX`]) by a copy into the file's mapping (`MAP_SHARED`,
//! [`MAP_BYTES`]). Either way the pages belong to the tmpfs and outlive the process; the
//! mapping saves a system call per batch where batches are small (with thousands of
//! partitions and one small batch each, a `pwritev` per batch was a quarter of the broker's
//! CPU), and `pwritev` saves a page fault per page where they are large. The file grows by
//! [`GROW_BYTES`] ahead of mapped records (writing past a mapped file's end would fault), so
//! its tail past the last record is zeros, which replay stops at. Should mapping fail (the
//! process's map count), every record goes by `pwritev`; the files are the same. A process
//! killed in the middle of a copy or a `pwritev` leaves a short or mismatching record, which
//! replay stops at: that batch was never acknowledged. When the current file reaches
//! [`ROTATE_BYTES`] a new generation starts; a file is deleted once every batch in it is
//! written to the segment.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::{MmapMut, MmapOptions};

const MAGIC: &[u8; 8] = b"SPJRNL01";
const HEADER_BYTES: u64 = 16;
const RECORD_HEADER_BYTES: usize = 16;

/// A journal file starts a new generation past this size, so a log that never catches up
/// completely still frees its journal file by file.
pub const ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// Journal files one log may hold at once: unwritten bytes are bounded by the log's pending
/// budget, so more would mean a bug, not load.
pub const FILES_MAX: usize = 64;

const _: () = assert!(
    ROTATE_BYTES * (FILES_MAX as u64 - 1) >= crate::limits::PENDING_BYTES_MAX as u64,
    "the files must hold a full pending budget"
);

/// How much of the current file is mapped: a file rotates once past [`ROTATE_BYTES`], so a
/// mapped (small) record ends within [`MAPPED_RECORD_BYTES_MAX`] of it. Address space only;
/// pages exist once written.
pub const MAP_BYTES: u64 = ROTATE_BYTES + MAPPED_RECORD_BYTES_MAX as u64;

/// The current file grows in steps of this much (one `ftruncate` per step): also the most a
/// replay reads past the last record.
pub const GROW_BYTES: u64 = 64 * 1024;

/// Records up to this size are copied into the mapping; larger ones go by `pwritev`. A copy
/// into a mapped tmpfs page that is not there yet costs a page fault (allocate and zero the
/// page, then map it), about as much as a `pwritev`, which allocates the pages it writes
/// without faults or zeroing: mapping only pays where one fault serves several records.
/// Measured (W1, 1 MiB batches of 1 KiB messages): all records mapped, 18% less throughput
/// than all by `pwritev`, page faults 36% of the broker's CPU.
pub const MAPPED_RECORD_BYTES_MAX: usize = 2048;

struct JournalFile {
    generation: u64,
    file: File,
    path: PathBuf,
    /// Bytes of header and records.
    length: u64,
    /// The file's size: at least `length`, zeros past it.
    size: u64,
    /// The offset just past the last batch in the file (`None` while empty).
    end_offset: Option<i64>,
    /// The current file, mapped for writing (`None` for older files, or if mapping failed).
    map: Option<MmapMut>,
}

/// One log's journal. Synchronous: every call is a tmpfs operation (memory, no device).
pub struct Journal {
    dir: PathBuf,
    files: VecDeque<JournalFile>,
    /// Whether new files are mapped (always, outside tests of the `pwritev` path).
    map_files: bool,
}

/// A batch found in a journal, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journaled {
    pub base_offset: i64,
    pub batch: Bytes,
}

fn record_crc(base_offset: i64, batch: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&base_offset.to_le_bytes());
    hasher.update(batch);
    hasher.finalize()
}

fn generation_of(name: &str) -> Option<u64> {
    name.strip_prefix("journal-")?.parse().ok()
}

/// The journal files in `dir`, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if let Some(generation) = entry.file_name().to_str().and_then(generation_of) {
                    files.push((generation, entry.path()));
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    files.sort();
    Ok(files)
}

/// Reads every whole, valid record of one file, stopping at the first short or bad one.
fn read_records(path: &Path) -> io::Result<Vec<Journaled>> {
    let bytes = std::fs::read(path)?;
    let mut records = Vec::new();
    if bytes.len() < HEADER_BYTES as usize || &bytes[..8] != MAGIC {
        return Ok(records);
    }
    let bytes = Bytes::from(bytes);
    let mut at = HEADER_BYTES as usize;
    // Bounded: each step consumes at least a record header.
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let base_offset = i64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        let start = at + RECORD_HEADER_BYTES;
        let Some(end) = start.checked_add(length).filter(|end| *end <= bytes.len()) else {
            break;
        };
        let batch = bytes.slice(start..end);
        if length == 0 || record_crc(base_offset, &batch) != crc {
            break;
        }
        records.push(Journaled { base_offset, batch });
        at = end;
    }
    Ok(records)
}

/// The batches a journal directory holds from `from_offset` on, contiguous: each starts where
/// the previous one ended (by its header's record count), the first at `from_offset`. Batches
/// below `from_offset` (already in the segment) are skipped; a gap ends the replay.
pub fn replay(dir: &Path, from_offset: i64) -> io::Result<Vec<Journaled>> {
    let mut next = from_offset;
    let mut out = Vec::new();
    for (_, path) in list(dir)? {
        for record in read_records(&path)? {
            let Ok(header) = spate_protocol::batch::BatchHeader::parse(&record.batch) else {
                return Ok(out);
            };
            let record_next = record.base_offset.saturating_add(i64::from(header.record_count));
            if record_next <= next {
                continue;
            }
            if record.base_offset != next {
                return Ok(out);
            }
            next = record_next;
            out.push(record);
        }
    }
    Ok(out)
}

impl Journal {
    /// Opens the journal in `dir` for appending, deleting whatever it held: call [`replay`]
    /// first.
    pub fn create(dir: &Path) -> io::Result<Journal> {
        Self::create_with(dir, true)
    }

    fn create_with(dir: &Path, map_files: bool) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let mut last = 0;
        for (generation, path) in list(dir)? {
            last = generation;
            std::fs::remove_file(path)?;
        }
        let mut journal = Journal { dir: dir.to_path_buf(), files: VecDeque::new(), map_files };
        journal.start_file(last + 1)?;
        Ok(journal)
    }

    fn start_file(&mut self, generation: u64) -> io::Result<()> {
        assert!(self.files.len() < FILES_MAX, "journal files past their limit");
        let path = self.dir.join(format!("journal-{generation}"));
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(&path)?;
        let mut header = [0u8; HEADER_BYTES as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&generation.to_le_bytes());
        file.write_all_at(&header, 0)?;
        let map = if self.map_files { map_file(&file) } else { None };
        // The previous file takes no more records: its mapping goes.
        if let Some(previous) = self.files.back_mut() {
            previous.map = None;
        }
        self.files.push_back(JournalFile {
            generation,
            file,
            path,
            length: HEADER_BYTES,
            size: HEADER_BYTES,
            end_offset: None,
            map,
        });
        Ok(())
    }

    /// Records one batch queued for the segment at `base_offset`, ending before `next_offset`.
    /// Once this returns, the batch survives the death of the process.
    pub fn append(&mut self, base_offset: i64, next_offset: i64, batch: &[u8]) -> io::Result<()> {
        assert!(base_offset < next_offset && !batch.is_empty());
        let current = self.files.back().expect("a current file");
        if current.length >= ROTATE_BYTES {
            let generation = current.generation + 1;
            self.start_file(generation)?;
        }
        let current = self.files.back_mut().expect("a current file");
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&(batch.len() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&record_crc(base_offset, batch).to_le_bytes());
        header[8..16].copy_from_slice(&base_offset.to_le_bytes());
        let end = current.length + (RECORD_HEADER_BYTES + batch.len()) as u64;
        let small = RECORD_HEADER_BYTES + batch.len() <= MAPPED_RECORD_BYTES_MAX;
        match current.map.as_mut().filter(|_| small && end <= MAP_BYTES) {
            Some(map) => {
                if end > current.size {
                    let size = end.next_multiple_of(GROW_BYTES).min(MAP_BYTES);
                    current.file.set_len(size)?;
                    current.size = size;
                }
                // Within the file (grown above) and the mapping (`end <= MAP_BYTES`).
                let at = current.length as usize;
                map[at..at + RECORD_HEADER_BYTES].copy_from_slice(&header);
                map[at + RECORD_HEADER_BYTES..end as usize].copy_from_slice(batch);
            }
            None => {
                write_record_at(&current.file, &header, batch, current.length)?;
                current.size = current.size.max(end);
            }
        }
        current.length = end;
        current.end_offset = Some(next_offset);
        Ok(())
    }

    /// The segment now holds everything before `written_offset`: drop the files it covers
    /// wholly (the current one is emptied instead, keeping its generation).
    pub fn release(&mut self, written_offset: i64) -> io::Result<()> {
        // Bounded by the file count.
        while let Some(oldest) = self.files.front() {
            let covered = oldest.end_offset.is_none_or(|end| end <= written_offset);
            if !covered {
                break;
            }
            if self.files.len() == 1 {
                let current = self.files.front_mut().expect("checked");
                if current.length > HEADER_BYTES {
                    // Also zeros (frees) the mapped pages past the header.
                    current.file.set_len(HEADER_BYTES)?;
                    current.length = HEADER_BYTES;
                    current.size = HEADER_BYTES;
                    current.end_offset = None;
                }
                break;
            }
            let oldest = self.files.pop_front().expect("checked");
            std::fs::remove_file(&oldest.path)?;
        }
        Ok(())
    }

    /// Bytes the journal holds (memory on its tmpfs).
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// Removes the journal (a clean close: everything is in the segment).
    pub fn remove(self) -> io::Result<()> {
        for file in &self.files {
            std::fs::remove_file(&file.path)?;
        }
        match std::fs::remove_dir(&self.dir) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }
}

/// Maps `MAP_BYTES` of a new journal file for writing, or `None` (logged once) if the system
/// refuses: records then go by `pwritev`.
fn map_file(file: &File) -> Option<MmapMut> {
    // SAFETY: the file is this journal's own (created with `create_new` in its directory), and
    // only this journal changes its size; it writes into the mapping only below the size it set
    // (`JournalFile::size`), so no access faults past the end of the file.
    match unsafe { MmapOptions::new().len(MAP_BYTES as usize).map_mut(file) } {
        Ok(map) => Some(map),
        Err(error) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(
                || tracing::warn!(%error, "could not map a journal file; journaling with pwritev"),
            );
            None
        }
    }
}

/// Writes a record header and its batch at `position` with one `pwritev`, without copying the
/// batch; finishes a short write (rare on a tmpfs) with plain positional writes.
fn write_record_at(file: &File, header: &[u8], batch: &[u8], position: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let slices = [
        libc::iovec { iov_base: header.as_ptr() as *mut libc::c_void, iov_len: header.len() },
        libc::iovec { iov_base: batch.as_ptr() as *mut libc::c_void, iov_len: batch.len() },
    ];
    // SAFETY: both iovecs point into slices that outlive the call, which only reads them.
    let written =
        unsafe { libc::pwritev(file.as_raw_fd(), slices.as_ptr(), 2, position as libc::off_t) };
    if written < 0 {
        return Err(io::Error::last_os_error());
    }
    let written = written as usize;
    if written < header.len() {
        file.write_all_at(&header[written..], position + written as u64)?;
        file.write_all_at(batch, position + header.len() as u64)?;
    } else if written < header.len() + batch.len() {
        let done = written - header.len();
        file.write_all_at(&batch[done..], position + written as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_protocol::batch::{BatchBuilder, NewRecord};

    fn batch(records: usize, fill: u8) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for _ in 0..records {
            builder.push(&NewRecord {
                value: Some(Bytes::from(vec![fill; 300])),
                ..Default::default()
            });
        }
        builder.finish().unwrap().to_vec()
    }

    fn replay_returns_the_unwritten_batches_contiguously(map_files: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create_with(dir.path(), map_files).unwrap();
        let mut offset = 0;
        let mut batches = Vec::new();
        for i in 0..10u8 {
            let bytes = batch(1 + usize::from(i % 3), i);
            let count = 1 + i64::from(i % 3);
            journal.append(offset, offset + count, &bytes).unwrap();
            batches.push((offset, bytes));
            offset += count;
        }
        // The segment holds the first four: replay from there gives the other six.
        let from = batches[4].0;
        journal.release(from).unwrap();
        let replayed = replay(dir.path(), from).unwrap();
        let expected: Vec<_> = batches[4..]
            .iter()
            .map(|(base, b)| Journaled { base_offset: *base, batch: Bytes::from(b.clone()) })
            .collect();
        assert_eq!(replayed, expected);
        // A gap (the segment ends earlier than the journal starts) replays nothing.
        assert!(replay(dir.path(), from + 1).unwrap().is_empty());
        // Everything written: the journal is empty.
        journal.release(offset).unwrap();
        assert!(replay(dir.path(), 0).unwrap().is_empty());
        assert_eq!(journal.bytes(), HEADER_BYTES);
    }

    fn a_torn_last_record_ends_the_replay_before_it(map_files: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create_with(dir.path(), map_files).unwrap();
        journal.append(0, 1, &batch(1, 1)).unwrap();
        journal.append(1, 2, &batch(1, 2)).unwrap();
        let length = journal.bytes();
        drop(journal);
        let path = list(dir.path()).unwrap().pop().unwrap().1;
        // The process died in the middle of copying the second record.
        OpenOptions::new().write(true).open(&path).unwrap().set_len(length - 7).unwrap();
        let replayed = replay(dir.path(), 0).unwrap();
        assert_eq!(replayed.len(), 1);
        // A flipped byte is caught by the CRC the same way.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(replay(dir.path(), 0).unwrap().len(), 1);
    }

    fn files_rotate_and_are_deleted_once_written(map_files: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create_with(dir.path(), map_files).unwrap();
        // Mapped (when mapping) and written alike: small and large records in turn.
        let (small, large) = (batch(4, 7), batch(20, 8)); // ~1.3 KB, ~6.5 KB
        assert!(small.len() + RECORD_HEADER_BYTES <= MAPPED_RECORD_BYTES_MAX);
        assert!(large.len() + RECORD_HEADER_BYTES > MAPPED_RECORD_BYTES_MAX);
        let mut offset = 0;
        let mut bases = Vec::new();
        // About 3 rotations' worth.
        while journal.bytes() < 3 * ROTATE_BYTES {
            let (bytes, count) = if bases.len() % 3 == 2 { (&large, 20) } else { (&small, 4) };
            journal.append(offset, offset + count, bytes).unwrap();
            bases.push(offset);
            offset += count;
        }
        let files = list(dir.path()).unwrap().len();
        assert!(files >= 3, "{files} files");
        // Half written: the files wholly below are gone, the rest replay from there.
        let half = bases[bases.len() / 2];
        journal.release(half).unwrap();
        assert!(list(dir.path()).unwrap().len() < files);
        let replayed = replay(dir.path(), half).unwrap();
        let replayed: Vec<i64> = replayed.iter().map(|r| r.base_offset).collect();
        assert_eq!(replayed, bases[bases.len() / 2..]);
        journal.release(offset).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        // A new journal in the same directory starts past the old generations.
        drop(journal);
        let journal = Journal::create_with(dir.path(), map_files).unwrap();
        assert!(replay(dir.path(), 0).unwrap().is_empty());
        journal.remove().unwrap();
        assert!(!dir.path().exists());
    }

    fn records_larger_than_a_grow_step_replay_whole(map_files: bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::create_with(dir.path(), map_files).unwrap();
        let sizes = [1, 3500, 1, 700, 1]; // 300 B values: ~1 MB and ~210 KB among small ones
        let mut offset = 0;
        let mut expected = Vec::new();
        for (i, records) in sizes.into_iter().enumerate() {
            let bytes = batch(records, i as u8);
            assert!(bytes.len() < spate_protocol::limits::BATCH_BYTES_MAX);
            journal.append(offset, offset + records as i64, &bytes).unwrap();
            expected.push(Journaled { base_offset: offset, batch: Bytes::from(bytes) });
            offset += records as i64;
        }
        assert_eq!(replay(dir.path(), 0).unwrap(), expected);
        let path = list(dir.path()).unwrap().pop().unwrap().1;
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= journal.bytes() && size < journal.bytes() + GROW_BYTES, "{size}");
        // Emptied, the file takes records again from its start.
        journal.release(offset).unwrap();
        journal.append(offset, offset + 1, &expected[0].batch).unwrap();
        let again = replay(dir.path(), offset).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].batch, expected[0].batch);
    }

    #[test]
    fn records_larger_than_a_grow_step_replay_whole_mapped() {
        records_larger_than_a_grow_step_replay_whole(true);
    }

    #[test]
    fn records_larger_than_a_grow_step_replay_whole_by_pwritev() {
        records_larger_than_a_grow_step_replay_whole(false);
    }

    #[test]
    fn replay_returns_the_unwritten_batches_contiguously_mapped() {
        replay_returns_the_unwritten_batches_contiguously(true);
    }

    #[test]
    fn replay_returns_the_unwritten_batches_contiguously_by_pwritev() {
        replay_returns_the_unwritten_batches_contiguously(false);
    }

    #[test]
    fn a_torn_last_record_ends_the_replay_before_it_mapped() {
        a_torn_last_record_ends_the_replay_before_it(true);
    }

    #[test]
    fn a_torn_last_record_ends_the_replay_before_it_by_pwritev() {
        a_torn_last_record_ends_the_replay_before_it(false);
    }

    #[test]
    fn files_rotate_and_are_deleted_once_written_mapped() {
        files_rotate_and_are_deleted_once_written(true);
    }

    #[test]
    fn files_rotate_and_are_deleted_once_written_by_pwritev() {
        files_rotate_and_are_deleted_once_written(false);
    }
}
