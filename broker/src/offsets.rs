//! Committed consumer offsets, made durable by appending them to an internal partition log
//! (`<data>/__consumer_offsets/0`, `flush=always`) and replayed into memory on start.
//!
//! Each commit is one batch; each record's key is `group \0 topic \0 partition` (UTF-8) and its
//! value the committed offset as 8 bytes, little-endian; a null value (tombstone) deletes the
//! key. The latest record for a key wins.
//!
//! Compaction: once the log holds [`limits::OFFSETS_COMPACT_BYTES_MIN`] and four times its last
//! snapshot, the live offsets are written again as a snapshot in a fresh segment and the start
//! offset moves to it, deleting every older segment. A crash before the start moves replays the
//! old records and then the (possibly partial) snapshot, whose values are the live ones, so the
//! result is the same.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use spate_protocol::batch::{BatchBuilder, BatchHeader, NewRecord, Records};
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

use crate::limits;

pub type OffsetKey = (String, String, u32);

pub struct OffsetStore {
    log: Log,
    committed: BTreeMap<OffsetKey, i64>,
    /// Compact once the log holds this many bytes (and four times the last snapshot).
    compact_bytes_min: u64,
    snapshot_bytes: u64,
}

fn encode_key(key: &OffsetKey) -> Bytes {
    Bytes::from(format!("{}\0{}\0{}", key.0, key.1, key.2))
}

/// The record of one committed offset.
fn offset_record(key: &OffsetKey, offset: i64, timestamp: i64) -> NewRecord {
    NewRecord {
        key: Some(encode_key(key)),
        value: Some(Bytes::copy_from_slice(&offset.to_le_bytes())),
        headers: Vec::new(),
        timestamp,
    }
}

fn decode_key(bytes: &[u8]) -> Option<OffsetKey> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split('\0');
    let group = parts.next()?.to_string();
    let topic = parts.next()?.to_string();
    let partition = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((group, topic, partition))
}

impl OffsetStore {
    pub async fn open(data_dir: &Path) -> Result<OffsetStore, LogError> {
        OffsetStore::open_with(data_dir, limits::OFFSETS_COMPACT_BYTES_MIN).await
    }

    /// `open` with another compaction threshold (tests use a small one).
    pub async fn open_with(
        data_dir: &Path,
        compact_bytes_min: u64,
    ) -> Result<OffsetStore, LogError> {
        let config = LogConfig {
            flush: FlushPolicy::Always,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: 64 * 1024 * 1024,
            ..LogConfig::default()
        };
        let log =
            Log::open(data_dir.join("__consumer_offsets").join("0"), config, LogOptions::default())
                .await?;
        let mut committed = BTreeMap::new();
        let offsets = log.offsets();
        let mut offset = offsets.start;
        // Bounded: each read advances past at least one batch.
        while offset < offsets.high_watermark {
            let read = log.read(offset, 4 << 20).await?;
            let mut advanced = false;
            for chunk in &read.chunks {
                let mut rest: &[u8] = chunk;
                while let Ok(header) = BatchHeader::parse(rest) {
                    let length = header.batch_length as usize;
                    for record in Records::new(&rest[..length], header).flatten() {
                        let key = record.key.and_then(decode_key);
                        let value =
                            record.value.and_then(|v| v.try_into().ok()).map(i64::from_le_bytes);
                        match (key, value) {
                            (Some(key), Some(value)) => {
                                committed.insert(key, value);
                            }
                            // A tombstone (null value): the group was deleted.
                            (Some(key), None) if record.value.is_none() => {
                                committed.remove(&key);
                            }
                            _ => {}
                        }
                    }
                    offset = header.next_offset();
                    advanced = true;
                    rest = &rest[length..];
                }
            }
            if !advanced {
                break;
            }
        }
        let mut store = OffsetStore { log, committed, compact_bytes_min, snapshot_bytes: 0 };
        store.compact_if_due().await?;
        Ok(store)
    }

    async fn compact_if_due(&mut self) -> Result<(), LogError> {
        let threshold = self.compact_bytes_min.max(self.snapshot_bytes.saturating_mul(4));
        if self.log.size_bytes() < threshold {
            return Ok(());
        }
        self.compact().await
    }

    /// Rewrites the log as one snapshot of the live offsets (see the module docs).
    pub async fn compact(&mut self) -> Result<(), LogError> {
        let before = self.log.size_bytes();
        self.log.roll().await?;
        let start = self.log.offsets().next;
        let now = spate_storage::Clock::now_ms(&spate_storage::SystemClock);
        let mut builder = BatchBuilder::new();
        for (key, offset) in &self.committed {
            let record = offset_record(key, *offset, now);
            if !builder.is_empty()
                && builder.len() + BatchBuilder::encoded_len(&record)
                    > limits::OFFSETS_SNAPSHOT_BATCH_BYTES_MAX
            {
                let full = std::mem::replace(&mut builder, BatchBuilder::new());
                self.log.append(full.finish()?, 0).await?;
            }
            builder.push(&record);
        }
        if !builder.is_empty() {
            self.log.append(builder.finish()?, 0).await?;
        }
        self.log.advance_start_offset(start).await?;
        self.snapshot_bytes = self.log.size_bytes();
        tracing::info!(
            offsets = self.committed.len(),
            bytes_before = before,
            bytes_after = self.snapshot_bytes,
            "compacted the committed-offsets log"
        );
        Ok(())
    }

    /// Durably records `offsets` (all or nothing: one batch).
    pub async fn commit(&mut self, offsets: &[(OffsetKey, i64)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let now = spate_storage::Clock::now_ms(&spate_storage::SystemClock);
        let mut builder = BatchBuilder::new();
        for (key, offset) in offsets {
            builder.push(&offset_record(key, *offset, now));
        }
        let batch = builder.finish()?;
        self.log.append(batch, 0).await?;
        for (key, offset) in offsets {
            self.committed.insert(key.clone(), *offset);
        }
        self.compact_if_due().await
    }

    /// Every committed offset: ((group, topic, partition), offset).
    pub fn all(&self) -> Vec<(OffsetKey, i64)> {
        self.committed.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Removes every committed offset of `group`, durably (tombstones in the log).
    pub async fn delete_group(&mut self, group: &str) -> Result<(), LogError> {
        let keys: Vec<OffsetKey> =
            self.committed.keys().filter(|(g, _, _)| g == group).cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut builder = BatchBuilder::new();
        for key in &keys {
            builder.push(&NewRecord {
                key: Some(encode_key(key)),
                value: None,
                headers: Vec::new(),
                timestamp: 0,
            });
        }
        self.log.append(builder.finish()?, 0).await?;
        for key in keys {
            self.committed.remove(&key);
        }
        self.compact_if_due().await
    }

    pub fn get(&self, key: &OffsetKey) -> Option<i64> {
        self.committed.get(key).copied()
    }

    /// Every committed offset of `group` for `topic`.
    pub fn for_topic(&self, group: &str, topic: &str) -> Vec<(u32, i64)> {
        self.committed
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .map(|((_, _, p), o)| (*p, *o))
            .collect()
    }

    /// Every topic with offsets committed by `group`.
    pub fn topics_of(&self, group: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .committed
            .keys()
            .filter(|(g, _, _)| g == group)
            .map(|(_, t, _)| t.clone())
            .collect();
        topics.dedup();
        topics
    }

    pub fn log(&self) -> &Log {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = ("g".to_string(), "t.x".to_string(), 7);
        assert_eq!(decode_key(&encode_key(&key)), Some(key));
        assert_eq!(decode_key(b"a\0b"), None);
        assert_eq!(decode_key(b"a\0b\0x"), None);
    }

    #[test]
    fn commits_survive_reopen() {
        let dir = tempfile::tempdir_in(
            std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .unwrap();
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let mut store = OffsetStore::open(dir.path()).await.unwrap();
            let key = ("g".to_string(), "t".to_string(), 1);
            store.commit(&[(key.clone(), 10)]).await.unwrap();
            store.commit(&[(key.clone(), 42), (("g".into(), "t".into(), 2), 5)]).await.unwrap();
            store.log().close().await.unwrap();
            drop(store);
            let store = OffsetStore::open(dir.path()).await.unwrap();
            assert_eq!(store.get(&key), Some(42));
            assert_eq!(store.for_topic("g", "t"), vec![(1, 42), (2, 5)]);
            assert_eq!(store.topics_of("g"), vec!["t".to_string()]);
        });
    }

    #[test]
    fn the_log_is_compacted_and_keeps_the_live_offsets_and_deletions() {
        let dir = tempfile::tempdir_in(
            std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .unwrap();
        const THRESHOLD: u64 = 16 * 1024;
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let mut store = OffsetStore::open_with(dir.path(), THRESHOLD).await.unwrap();
            let key = |p: u32| ("g".to_string(), "t".to_string(), p);
            // About 260 KB of commits in total: many times the threshold.
            for round in 0..200i64 {
                let offsets: Vec<(OffsetKey, i64)> = (0..50).map(|p| (key(p), round)).collect();
                store.commit(&offsets).await.unwrap();
                if round == 100 {
                    store.commit(&[(("gone".into(), "t".into(), 0), 7)]).await.unwrap();
                    store.delete_group("gone").await.unwrap();
                }
            }
            assert!(store.log().offsets().start > 0, "older records were dropped");
            assert!(
                store.log().size_bytes() < 2 * THRESHOLD,
                "{} bytes on disk",
                store.log().size_bytes()
            );
            store.log().close().await.unwrap();
            drop(store);
            let store = OffsetStore::open_with(dir.path(), THRESHOLD).await.unwrap();
            assert!((0..50).all(|p| store.get(&key(p)) == Some(199)));
            assert_eq!(store.all().len(), 50, "the deleted group stays deleted");
        });
    }
}
