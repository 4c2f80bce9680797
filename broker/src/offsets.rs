//! Committed consumer offsets, made durable by appending them to an internal partition log
//! (`<data>/__consumer_offsets/0`, `flush=always`) and replayed into memory on start.
//!
//! Each commit is one batch; each record's key is `group \0 topic \0 partition` (UTF-8) and its
//! value the committed offset as 8 bytes, little-endian. The latest record for a key wins.
//! The log is never compacted yet, so it grows with every commit (noted in README's limits).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use spate_protocol::batch::{BatchBuilder, BatchHeader, NewRecord, Records};
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

pub type OffsetKey = (String, String, u32);

pub struct OffsetStore {
    log: Log,
    committed: BTreeMap<OffsetKey, i64>,
}

fn encode_key(key: &OffsetKey) -> Bytes {
    Bytes::from(format!("{}\0{}\0{}", key.0, key.1, key.2))
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
        Ok(OffsetStore { log, committed })
    }

    /// Durably records `offsets` (all or nothing: one batch).
    pub async fn commit(&mut self, offsets: &[(OffsetKey, i64)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let now = spate_storage::Clock::now_ms(&spate_storage::SystemClock);
        let mut builder = BatchBuilder::new();
        for (key, offset) in offsets {
            builder.push(&NewRecord {
                key: Some(encode_key(key)),
                value: Some(Bytes::copy_from_slice(&offset.to_le_bytes())),
                headers: Vec::new(),
                timestamp: now,
            });
        }
        let batch = builder.finish()?;
        self.log.append(batch, 0).await?;
        for (key, offset) in offsets {
            self.committed.insert(key.clone(), *offset);
        }
        Ok(())
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
        Ok(())
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
}
