//! Sparse per-segment indexes, kept in memory and written to disk when a segment is sealed.
//!
//! The active segment's indexes live only in memory: recovery scans the tail segment batch by
//! batch anyway, and rebuilds them as it goes. A sealed segment's indexes are written once, with a
//! checksummed trailer; a missing or damaged index file is rebuilt from the `.log`.
//!
//! `.index` file (all integers little-endian):
//!
//! ```text
//! entries      entry_count × { relative_offset u32, position u32 }
//! trailer      magic u32 = "SPIX", entry_count u32, log_bytes u64, next_offset i64,
//!              max_timestamp i64, crc u32 (CRC-32 of every byte before it)
//! ```
//!
//! `.timeindex` file:
//!
//! ```text
//! entries      entry_count × { max_timestamp i64, relative_offset u32 }
//! trailer      magic u32 = "SPTX", entry_count u32, crc u32 (CRC-32 of every byte before it)
//! ```
//!
//! An offset-index entry says "a batch starts at `position` and its base offset is
//! `base + relative_offset`". A time-index entry says "the largest timestamp in this segment up to
//! and including the batch at `relative_offset` is `max_timestamp`"; entries are added only when
//! that running maximum grows, so they are sorted by both fields.

use crate::limits;

const OFFSET_MAGIC: u32 = u32::from_le_bytes(*b"SPIX");
const TIME_MAGIC: u32 = u32::from_le_bytes(*b"SPTX");
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;
const OFFSET_TRAILER_BYTES: usize = 36;
const TIME_TRAILER_BYTES: usize = 12;

/// What a sealed segment's `.index` trailer records about its `.log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub log_bytes: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp: i64,
    pub relative_offset: u32,
}

/// Both sparse indexes of one segment, plus the bookkeeping that decides when to add entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
    last_offset_position: Option<u32>,
    last_time_position: Option<u32>,
    /// Largest timestamp of any batch added so far (`i64::MIN` when empty).
    pub max_timestamp: i64,
}

impl SegmentIndex {
    pub fn new() -> SegmentIndex {
        SegmentIndex { max_timestamp: i64::MIN, ..SegmentIndex::default() }
    }

    /// Records a batch that starts at `position`, deciding whether it earns index entries.
    pub fn on_batch(
        &mut self,
        relative_offset: u32,
        position: u32,
        max_timestamp: i64,
        interval: u32,
    ) {
        assert!(
            self.last_offset_position.is_none_or(|last| position > last),
            "positions must grow"
        );
        let due = |last: Option<u32>| last.is_none_or(|last| position - last >= interval);
        if due(self.last_offset_position) {
            self.offsets.push(OffsetEntry { relative_offset, position });
            self.last_offset_position = Some(position);
        }
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            if due(self.last_time_position) {
                self.times.push(TimeEntry { max_timestamp, relative_offset });
                self.last_time_position = Some(position);
            }
        }
    }

    /// Position of the last indexed batch whose relative offset is at most `relative_offset`.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let after = self.offsets.partition_point(|e| e.relative_offset <= relative_offset);
        if after == 0 {
            0
        } else {
            self.offsets[after - 1].position
        }
    }

    /// Relative offset to start a timestamp search from: the last entry whose running maximum is
    /// below `timestamp` (every batch up to it is older), or 0.
    pub fn time_lookup(&self, timestamp: i64) -> u32 {
        let after = self.times.partition_point(|e| e.max_timestamp < timestamp);
        if after == 0 {
            0
        } else {
            self.times[after - 1].relative_offset
        }
    }

    /// Drops entries for batches at or after `relative_offset` / `position` (truncation).
    /// `max_timestamp` must be recomputed by the caller.
    pub fn truncate(&mut self, relative_offset: u32) {
        self.offsets.retain(|e| e.relative_offset < relative_offset);
        self.times.retain(|e| e.relative_offset < relative_offset);
        self.last_offset_position = self.offsets.last().map(|e| e.position);
        // Time entries store offsets, not positions; look the position up in the offset index,
        // which is conservative (an earlier position only makes the next entry come sooner).
        self.last_time_position = self.times.last().map(|e| self.lookup(e.relative_offset));
    }

    pub fn encode_offsets(&self, summary: SegmentSummary) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.offsets.len() * OFFSET_ENTRY_BYTES + OFFSET_TRAILER_BYTES);
        for entry in &self.offsets {
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
            out.extend_from_slice(&entry.position.to_le_bytes());
        }
        out.extend_from_slice(&OFFSET_MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.offsets.len() as u32).to_le_bytes());
        out.extend_from_slice(&summary.log_bytes.to_le_bytes());
        out.extend_from_slice(&summary.next_offset.to_le_bytes());
        out.extend_from_slice(&summary.max_timestamp.to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_ENTRY_BYTES + TIME_TRAILER_BYTES);
        for entry in &self.times {
            out.extend_from_slice(&entry.max_timestamp.to_le_bytes());
            out.extend_from_slice(&entry.relative_offset.to_le_bytes());
        }
        out.extend_from_slice(&TIME_MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.times.len() as u32).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a sealed segment's two index files. Returns `None` if either is damaged in any
    /// way (then the caller rebuilds from the log). Checks the CRC and that entries are sorted
    /// and inside the log.
    pub fn decode(offset_file: &[u8], time_file: &[u8]) -> Option<(SegmentIndex, SegmentSummary)> {
        let (offset_body, offset_trailer) = split_trailer(offset_file, OFFSET_TRAILER_BYTES)?;
        let t = offset_trailer;
        if u32_at(t, 0) != OFFSET_MAGIC
            || u32_at(t, 32) != crc32fast::hash(&offset_file[..offset_file.len() - 4])
        {
            return None;
        }
        let count = u32_at(t, 4) as usize;
        let summary = SegmentSummary {
            log_bytes: u64_at(t, 8),
            next_offset: u64_at(t, 16) as i64,
            max_timestamp: u64_at(t, 24) as i64,
        };
        if offset_body.len() != count * OFFSET_ENTRY_BYTES
            || summary.log_bytes > limits::SEGMENT_BYTES_MAX
        {
            return None;
        }
        let offsets: Vec<OffsetEntry> = offset_body
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .map(|c| OffsetEntry { relative_offset: u32_at(c, 0), position: u32_at(c, 4) })
            .collect();
        let sorted = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position);
        let inside = offsets.iter().all(|e| u64::from(e.position) < summary.log_bytes);
        if !sorted || !inside || offsets.first().is_some_and(|e| e.position != 0) {
            return None;
        }

        let (time_body, time_trailer) = split_trailer(time_file, TIME_TRAILER_BYTES)?;
        if u32_at(time_trailer, 0) != TIME_MAGIC
            || u32_at(time_trailer, 8) != crc32fast::hash(&time_file[..time_file.len() - 4])
            || time_body.len() != u32_at(time_trailer, 4) as usize * TIME_ENTRY_BYTES
        {
            return None;
        }
        let times: Vec<TimeEntry> = time_body
            .chunks_exact(TIME_ENTRY_BYTES)
            .map(|c| TimeEntry {
                max_timestamp: u64_at(c, 0) as i64,
                relative_offset: u32_at(c, 8),
            })
            .collect();
        let times_sorted = times.windows(2).all(|w| {
            w[0].max_timestamp < w[1].max_timestamp && w[0].relative_offset < w[1].relative_offset
        });
        if !times_sorted || times.last().is_some_and(|e| e.max_timestamp > summary.max_timestamp) {
            return None;
        }
        let mut index = SegmentIndex {
            offsets,
            times,
            last_offset_position: None,
            last_time_position: None,
            max_timestamp: summary.max_timestamp,
        };
        index.last_offset_position = index.offsets.last().map(|e| e.position);
        index.last_time_position = index.times.last().map(|e| index.lookup(e.relative_offset));
        Some((index, summary))
    }
}

fn split_trailer(file: &[u8], trailer: usize) -> Option<(&[u8], &[u8])> {
    (file.len() >= trailer).then(|| file.split_at(file.len() - trailer))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut index = SegmentIndex::new();
        // 10 batches of 1000 bytes, 5 records each, timestamps with one step back.
        let timestamps = [10, 20, 15, 30, 30, 40, 5, 50, 60, 70];
        for (i, ts) in timestamps.iter().enumerate() {
            index.on_batch(i as u32 * 5, i as u32 * 1000, *ts, 2048);
        }
        index
    }

    #[test]
    fn sparse_entries_and_lookup() {
        let index = sample();
        // An entry at 0, then every >= 2048 bytes: positions 0, 3000, 6000, 9000.
        let positions: Vec<u32> = index.offsets.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![0, 3000, 6000, 9000]);
        assert_eq!(index.lookup(0), 0);
        assert_eq!(index.lookup(14), 0);
        assert_eq!(index.lookup(15), 3000);
        assert_eq!(index.lookup(1_000_000), 9000);
        assert_eq!(index.max_timestamp, 70);
    }

    #[test]
    fn time_lookup_never_skips_a_match() {
        let index = sample();
        // Every batch before the returned start has a running max below the target.
        for target in [0, 10, 11, 31, 45, 70, 71] {
            let start = index.time_lookup(target);
            let timestamps = [10, 20, 15, 30, 30, 40, 5, 50, 60, 70];
            let first_match = timestamps.iter().position(|ts| *ts >= target).map(|i| i as u32 * 5);
            if let Some(first) = first_match {
                assert!(start <= first, "target {target}: start {start} past first match {first}");
            }
        }
    }

    #[test]
    fn files_round_trip_and_damage_is_detected() {
        let index = sample();
        let summary = SegmentSummary { log_bytes: 10_000, next_offset: 50, max_timestamp: 70 };
        let offsets = index.encode_offsets(summary);
        let times = index.encode_times();
        let (decoded, decoded_summary) = SegmentIndex::decode(&offsets, &times).expect("decodes");
        // Entry bookkeeping positions are reconstructed conservatively; the entries are exact.
        assert_eq!(decoded.offsets, index.offsets);
        assert_eq!(decoded.times, index.times);
        assert_eq!(decoded.max_timestamp, index.max_timestamp);
        assert_eq!(decoded_summary, summary);
        for at in 0..offsets.len() {
            let mut damaged = offsets.clone();
            damaged[at] ^= 1;
            assert!(SegmentIndex::decode(&damaged, &times).is_none(), "offset byte {at}");
        }
        for at in 0..times.len() {
            let mut damaged = times.clone();
            damaged[at] ^= 1;
            assert!(SegmentIndex::decode(&offsets, &damaged).is_none(), "time byte {at}");
        }
        assert!(SegmentIndex::decode(&offsets[..offsets.len() - 1], &times).is_none());
        assert!(SegmentIndex::decode(&[], &[]).is_none());
    }

    #[test]
    fn truncate_drops_later_entries() {
        let mut index = sample();
        index.truncate(15);
        assert_eq!(index.offsets.len(), 1);
        assert!(index.times.iter().all(|e| e.relative_offset < 15));
    }
}
