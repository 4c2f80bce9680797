//! The tail cache: the most recently appended batches, kept in memory so consumers that keep up
//! with producers never touch the disk. Bounded in bytes; evicts the oldest batches first.
//!
//! The cache is contiguous: it holds every batch from `first_offset()` to the log's next offset,
//! so a read at or above its first offset is served from it entirely.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug, Clone)]
pub struct CachedBatch {
    pub base_offset: i64,
    pub next_offset: i64,
    pub bytes: Bytes,
}

#[derive(Debug, Default)]
pub struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes: usize,
    bytes_max: usize,
}

impl TailCache {
    pub fn new(bytes_max: usize) -> TailCache {
        TailCache { batches: VecDeque::new(), bytes: 0, bytes_max }
    }

    pub fn set_capacity(&mut self, bytes_max: usize) {
        self.bytes_max = bytes_max;
        self.evict();
    }

    /// Adds the batch that follows the last one cached.
    pub fn push(&mut self, batch: CachedBatch) {
        if let Some(last) = self.batches.back() {
            assert_eq!(last.next_offset, batch.base_offset, "cache must stay contiguous");
        }
        self.bytes += batch.bytes.len();
        self.batches.push_back(batch);
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.bytes_max {
            let Some(evicted) = self.batches.pop_front() else { break };
            self.bytes -= evicted.bytes.len();
        }
    }

    pub fn first_offset(&self) -> Option<i64> {
        self.batches.front().map(|b| b.base_offset)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Batches from the one holding `offset`, while their total stays within `bytes_max` (the
    /// first is always included) and they end at or before `visible_end`. `None` when the cache
    /// does not reach back to `offset`.
    pub fn read(&self, offset: i64, bytes_max: usize, visible_end: i64) -> Option<Vec<Bytes>> {
        let first = self.first_offset()?;
        if offset < first {
            return None;
        }
        let start = self.batches.partition_point(|b| b.next_offset <= offset);
        let mut out = Vec::new();
        let mut total = 0usize;
        for batch in self.batches.range(start..) {
            if batch.next_offset > visible_end {
                break;
            }
            if !out.is_empty() && total + batch.bytes.len() > bytes_max {
                break;
            }
            total += batch.bytes.len();
            out.push(batch.bytes.clone());
        }
        Some(out)
    }

    /// Drops every batch at or after `offset` (truncation, or a failed write).
    pub fn truncate(&mut self, offset: i64) {
        while self.batches.back().is_some_and(|b| b.base_offset >= offset) {
            let dropped = self.batches.pop_back().expect("checked");
            self.bytes -= dropped.bytes.len();
        }
        if self.batches.back().is_some_and(|b| b.next_offset > offset) {
            // A batch straddles the cut; the log refuses such cuts, but stay safe.
            let dropped = self.batches.pop_back().expect("checked");
            self.bytes -= dropped.bytes.len();
        }
    }

    /// Drops batches that end at or before `offset` (retention moved the start past them).
    pub fn drop_before(&mut self, offset: i64) {
        while self.batches.front().is_some_and(|b| b.next_offset <= offset) {
            let dropped = self.batches.pop_front().expect("checked");
            self.bytes -= dropped.bytes.len();
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, count: i64, size: usize) -> CachedBatch {
        CachedBatch {
            base_offset: base,
            next_offset: base + count,
            bytes: Bytes::from(vec![base as u8; size]),
        }
    }

    #[test]
    fn evicts_oldest_and_reads_contiguously() {
        let mut cache = TailCache::new(300);
        cache.push(batch(0, 10, 100));
        cache.push(batch(10, 10, 100));
        cache.push(batch(20, 10, 100));
        cache.push(batch(30, 10, 100));
        assert_eq!(cache.first_offset(), Some(10));
        assert_eq!(cache.bytes(), 300);
        assert!(cache.read(5, 1000, 40).is_none());
        let read = cache.read(15, 1000, 40).unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[0][0], 10);
        // Byte limit: the first batch always, then only what fits.
        assert_eq!(cache.read(15, 150, 40).unwrap().len(), 1);
        assert_eq!(cache.read(15, 10, 40).unwrap().len(), 1);
        // Visibility.
        assert_eq!(cache.read(15, 1000, 30).unwrap().len(), 2);
        assert_eq!(cache.read(40, 1000, 40).unwrap().len(), 0);
    }

    #[test]
    fn truncate_and_drop_before() {
        let mut cache = TailCache::new(1000);
        for i in 0..5 {
            cache.push(batch(i * 10, 10, 100));
        }
        cache.truncate(30);
        assert_eq!(cache.bytes(), 300);
        cache.drop_before(10);
        assert_eq!(cache.first_offset(), Some(10));
        assert_eq!(cache.bytes(), 200);
    }
}
