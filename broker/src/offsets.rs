//! Committed consumer offsets, made durable by appending them to an internal partition log
//! (`<data>/__consumer_offsets/0`, `flush=always`) and replayed into memory on start.
//!
//! Each commit is one batch; each record's key is `group \0 topic \0 partition` (UTF-8) and its
//! value the committed offset as 8 bytes, little-endian; a null value (tombstone) deletes the
//! key. The latest record for a key wins.
//!
//! Commits run concurrently (shared access): each is one append, so commits that arrive while
//! an fdatasync is in flight share the next one (the log's group commit). Their results reach
//! the in-memory map in whatever order the appends complete, so each entry remembers the log
//! offset of the record it came from and only a later record replaces it (tombstones too, until
//! the next compaction) — the map always equals a replay of the log.
//!
//! Compaction: once the log holds [`limits::OFFSETS_COMPACT_BYTES_MIN`] and four times its last
//! snapshot, the live offsets are written again as a snapshot in a fresh segment and the start
//! offset moves to it, deleting every older segment. It runs off the commit path, with
//! exclusive access (no commit is appended meanwhile, so no commit can land between snapshot
//! records and be overwritten by an older snapshot value on replay); its failure never fails a
//! commit. A crash before the start moves replays the old records and then the (possibly
//! partial) snapshot, whose values are the live ones, so the result is the same.
//!
//! In a cluster the same log is a replicated partition (group 1, on shard 0 of every broker,
//! voters = the `--peers` brokers, as Kafka's `__consumer_offsets`): a commit is proposed and
//! applied once committed, so committed offsets survive the loss of a minority of brokers. The
//! broker that leads it coordinates every group (see `shard::groups`). Only the leader's map
//! is used: a broker that starts leading (a new term) replays the log up to the high watermark
//! before it serves offsets. It is not compacted (followers could not follow a local
//! compaction); every commit stays in the log.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use spate_cluster::{Partition, ReplicationError};
use spate_protocol::batch::{BatchBuilder, NewRecord, Records};
use spate_replication::Role;
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

use crate::limits;

pub type OffsetKey = (String, String, u32);

/// A key's latest record: its offset (`None` for a tombstone) and where it is in the log.
#[derive(Debug, Clone, Copy)]
struct Entry {
    offset: Option<i64>,
    log_offset: i64,
}

/// The offsets log's directory under the data directory.
pub const OFFSETS_DIR: &str = "__consumer_offsets";

/// The offsets log's replication group in a cluster (topic groups are `topic id << 20 |
/// partition` with a non-zero topic id; the metadata log is group 0).
pub const OFFSETS_GROUP: u64 = 1;

/// Why offsets could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the committed-offsets log: {0}")]
    Replication(#[from] ReplicationError),
}

/// Whether a cluster broker may serve offsets now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A single broker, or the leader with its map loaded for this term.
    Ready,
    /// The leader of `term`, whose map must first be replayed up to `upper`.
    Load { term: u64, upper: i64 },
    /// Not the leader (or not yet able to serve reads).
    NotLeader { leader: Option<u32> },
}

pub struct OffsetStore {
    log: Log,
    /// In a cluster: the log's replica.
    replica: Option<Partition>,
    /// In a cluster: the leader term the map was replayed for.
    loaded_term: Cell<Option<u64>>,
    committed: RefCell<BTreeMap<OffsetKey, Entry>>,
    /// Compact once the log holds this many bytes (and four times the last snapshot).
    compact_bytes_min: u64,
    snapshot_bytes: Cell<u64>,
    /// A compaction was claimed and has not finished.
    compacting: Cell<bool>,
}

/// Applies one record at `log_offset` unless a later record of the key is already applied.
fn apply(
    committed: &mut BTreeMap<OffsetKey, Entry>,
    key: OffsetKey,
    offset: Option<i64>,
    log_offset: i64,
) {
    let entry = committed.entry(key).or_insert(Entry { offset, log_offset });
    if entry.log_offset <= log_offset {
        *entry = Entry { offset, log_offset };
    }
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

async fn open_log(data_dir: &Path) -> Result<Log, LogError> {
    let config = LogConfig {
        flush: FlushPolicy::Always,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: 64 * 1024 * 1024,
        ..LogConfig::default()
    };
    Log::open(data_dir.join(OFFSETS_DIR).join("0"), config, LogOptions::default()).await
}

/// The map a replay of `log` below `upper` gives.
async fn replay(log: &Log, upper: i64) -> Result<BTreeMap<OffsetKey, Entry>, LogError> {
    let mut committed = BTreeMap::new();
    let mut offset = log.offsets().start;
    // Bounded: each read advances past at least one batch.
    while offset < upper {
        let read = log.read_bounded(offset, 4 << 20, upper).await?;
        let mut advanced = false;
        for chunk in &read.chunks {
            for (header, batch) in spate_storage::scan::batches(chunk) {
                // Replication's control batches (leader markers, replica sets) are not
                // offset commits.
                let records = Records::new(batch, header).filter(|_| !header.is_control());
                for record in records.flatten() {
                    let key = record.key.and_then(decode_key);
                    let value =
                        record.value.and_then(|v| v.try_into().ok()).map(i64::from_le_bytes);
                    match (key, value) {
                        (Some(key), Some(value)) => {
                            apply(&mut committed, key, Some(value), record.offset);
                        }
                        // A tombstone (null value): the group was deleted.
                        (Some(key), None) if record.value.is_none() => {
                            apply(&mut committed, key, None, record.offset);
                        }
                        _ => {}
                    }
                }
                offset = header.next_offset();
                advanced = true;
            }
        }
        if !advanced {
            break;
        }
    }
    Ok(committed)
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
        let log = open_log(data_dir).await?;
        let committed = replay(&log, log.offsets().high_watermark).await?;
        let store = OffsetStore {
            log,
            replica: None,
            loaded_term: Cell::new(None),
            committed: RefCell::new(committed),
            compact_bytes_min,
            snapshot_bytes: Cell::new(0),
            compacting: Cell::new(false),
        };
        if store.compaction_due() {
            store.compact().await?;
        }
        Ok(store)
    }

    /// The store of a cluster broker: its log is a replica of group [`OFFSETS_GROUP`] on
    /// `node`, with `voters`. Its map is loaded when this broker starts leading.
    pub async fn open_replicated(
        data_dir: &Path,
        node: &spate_cluster::ReplicationNode,
        voters: &[u32],
    ) -> Result<OffsetStore, LogError> {
        let log = open_log(data_dir).await?;
        let group = spate_replication::GroupId(OFFSETS_GROUP);
        let replica = node
            .open_partition(group, voters, log.clone(), Default::default())
            .await
            .map_err(|e| LogError::Config(format!("the committed-offsets log: {e}")))?;
        Ok(OffsetStore {
            log,
            replica: Some(replica),
            loaded_term: Cell::new(None),
            committed: RefCell::new(BTreeMap::new()),
            compact_bytes_min: u64::MAX,
            snapshot_bytes: Cell::new(0),
            compacting: Cell::new(false),
        })
    }

    /// In a cluster, the log's replica (for metadata and metrics).
    pub fn replica(&self) -> Option<&Partition> {
        self.replica.as_ref()
    }

    /// Whether this store may serve offsets now (always on a single broker).
    pub fn readiness(&self) -> Readiness {
        let Some(replica) = &self.replica else { return Readiness::Ready };
        let status = replica.status();
        match (status.role, status.high_watermark) {
            (Role::Leader, Some(_)) if self.loaded_term.get() == Some(status.term) => {
                Readiness::Ready
            }
            (Role::Leader, Some(hw)) => Readiness::Load { term: status.term, upper: hw as i64 },
            _ => Readiness::NotLeader { leader: status.leader.filter(|l| *l != status.node) },
        }
    }

    /// Replays the log up to `upper` into the map, for leader term `term` (see [`Readiness`]).
    /// The caller holds exclusive access.
    pub async fn load(&self, term: u64, upper: i64) -> Result<(), LogError> {
        let committed = replay(&self.log, upper).await?;
        *self.committed.borrow_mut() = committed;
        self.loaded_term.set(Some(term));
        tracing::info!(term, upper, "loaded committed offsets as the new coordinator");
        Ok(())
    }

    /// Whether the log has grown enough since the last snapshot to compact it.
    pub fn compaction_due(&self) -> bool {
        let threshold = self.compact_bytes_min.max(self.snapshot_bytes.get().saturating_mul(4));
        self.log.size_bytes() >= threshold
    }

    /// Claims the next compaction if one is due and none is running: the caller then runs
    /// [`compact`](Self::compact), which releases the claim.
    pub fn claim_compaction(&self) -> bool {
        if self.compacting.get() || !self.compaction_due() {
            return false;
        }
        self.compacting.set(true);
        true
    }

    /// Rewrites the log as one snapshot of the live offsets (see the module docs). The caller
    /// must hold exclusive access: no commit may be appended while the snapshot is written.
    pub async fn compact(&self) -> Result<(), LogError> {
        let result = self.write_snapshot().await;
        self.compacting.set(false);
        result
    }

    async fn write_snapshot(&self) -> Result<(), LogError> {
        let before = self.log.size_bytes();
        self.log.roll().await?;
        let start = self.log.offsets().next;
        let now = spate_storage::wall_clock_ms();
        let live = self.all();
        let mut builder = BatchBuilder::new();
        for (key, offset) in &live {
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
        self.snapshot_bytes.set(self.log.size_bytes());
        // Tombstones are no longer needed: no record before the snapshot is replayed again.
        self.committed.borrow_mut().retain(|_, entry| entry.offset.is_some());
        tracing::info!(
            offsets = live.len(),
            bytes_before = before,
            bytes_after = self.snapshot_bytes.get(),
            "compacted the committed-offsets log"
        );
        Ok(())
    }

    /// Durably records `offsets` (all or nothing: one batch). Concurrent commits share
    /// fdatasyncs. Never compacts: see [`compaction_due`](Self::compaction_due).
    pub async fn commit(&self, offsets: &[(OffsetKey, i64)]) -> Result<(), CommitError> {
        let records: Vec<(OffsetKey, Option<i64>)> =
            offsets.iter().map(|(k, o)| (k.clone(), Some(*o))).collect();
        self.append(&records).await
    }

    /// Appends one batch of records (`None` = tombstone) and applies them once durable.
    async fn append(&self, records: &[(OffsetKey, Option<i64>)]) -> Result<(), CommitError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = spate_storage::wall_clock_ms();
        let mut builder = BatchBuilder::new();
        for (key, offset) in records {
            builder.push(&match offset {
                Some(offset) => offset_record(key, *offset, now),
                None => NewRecord {
                    key: Some(encode_key(key)),
                    value: None,
                    headers: Vec::new(),
                    timestamp: now,
                },
            });
        }
        let batch = builder.finish().map_err(LogError::from)?;
        let base_offset = match &self.replica {
            Some(replica) => replica.propose(batch).await?.base_offset as i64,
            None => self.log.append(batch, 0).await?.base_offset,
        };
        let mut committed = self.committed.borrow_mut();
        for (i, (key, offset)) in records.iter().enumerate() {
            apply(&mut committed, key.clone(), *offset, base_offset + i as i64);
        }
        Ok(())
    }

    /// Every committed offset: ((group, topic, partition), offset).
    pub fn all(&self) -> Vec<(OffsetKey, i64)> {
        self.committed.borrow().iter().filter_map(|(k, e)| Some((k.clone(), e.offset?))).collect()
    }

    /// Removes every committed offset of `group`, durably (tombstones in the log).
    pub async fn delete_group(&self, group: &str) -> Result<(), CommitError> {
        let tombstones: Vec<(OffsetKey, Option<i64>)> = self
            .all()
            .into_iter()
            .filter(|((g, _, _), _)| g == group)
            .map(|(key, _)| (key, None))
            .collect();
        self.append(&tombstones).await
    }

    pub fn get(&self, key: &OffsetKey) -> Option<i64> {
        self.committed.borrow().get(key).and_then(|e| e.offset)
    }

    /// Every committed offset of `group` for `topic`.
    pub fn for_topic(&self, group: &str, topic: &str) -> Vec<(u32, i64)> {
        self.committed
            .borrow()
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .filter_map(|((_, _, p), e)| Some((*p, e.offset?)))
            .collect()
    }

    /// Every topic with offsets committed by `group`.
    pub fn topics_of(&self, group: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .committed
            .borrow()
            .iter()
            .filter(|((g, _, _), e)| g == group && e.offset.is_some())
            .map(|((_, t, _), _)| t.clone())
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
            let store = OffsetStore::open(dir.path()).await.unwrap();
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
    fn concurrent_commits_leave_the_map_equal_to_a_replay_of_the_log() {
        let dir = tempfile::tempdir_in(
            std::env::var_os("CARGO_TARGET_TMPDIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .unwrap();
        glommio::LocalExecutorBuilder::default().make().unwrap().run(async {
            let store = std::rc::Rc::new(OffsetStore::open(dir.path()).await.unwrap());
            let key = ("g".to_string(), "t".to_string(), 0);
            // 40 commits of one key in flight at once, plus a delete and a recommit of another.
            let tasks: Vec<_> = (0..40i64)
                .map(|value| {
                    let (store, key) = (store.clone(), key.clone());
                    glommio::spawn_local(async move {
                        store.commit(&[(key, value)]).await.unwrap();
                        if value == 20 {
                            store.commit(&[(("h".into(), "t".into(), 1), 5)]).await.unwrap();
                            store.delete_group("h").await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            let live = store.all();
            store.log().close().await.unwrap();
            let replayed = OffsetStore::open(dir.path()).await.unwrap();
            assert_eq!(replayed.all(), live, "the map is what a replay of the log gives");
            assert_eq!(live.len(), 1);
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
            let store = OffsetStore::open_with(dir.path(), THRESHOLD).await.unwrap();
            let key = |p: u32| ("g".to_string(), "t".to_string(), p);
            // About 260 KB of commits in total: many times the threshold.
            for round in 0..200i64 {
                let offsets: Vec<(OffsetKey, i64)> = (0..50).map(|p| (key(p), round)).collect();
                store.commit(&offsets).await.unwrap();
                if round == 100 {
                    store.commit(&[(("gone".into(), "t".into(), 0), 7)]).await.unwrap();
                    store.delete_group("gone").await.unwrap();
                }
                if store.compaction_due() {
                    store.compact().await.unwrap();
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
