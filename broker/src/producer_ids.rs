//! Producer ids for idempotent producers: unique across restarts, handed out in blocks, and
//! named producers' (id, epoch). Sans-IO apart from `load`/`save`; shard 0 owns the only copy
//! and serves every `InitProducerId`.
//!
//! File: `<data>/meta/producer-ids.toml`, written atomically (temporary file, fsync, rename,
//! fsync of the directory) before any id or epoch it covers is handed out:
//!
//! ```toml
//! version = 1
//! next_block = 2000          # every id below this may have been handed out
//! [names.orders-writer]      # named producers: re-initialising bumps the epoch
//! id = 17
//! epoch = 3
//! ```
//!
//! Unnamed producers take ids from the current block in memory; only starting a new block
//! writes the file, so a restart skips what was left of the block (ids are plentiful: 2^63).
//! A named producer's init writes the file every time, since its epoch is what fences the
//! previous holder.
//!
//! In a cluster every broker keeps this state, and the metadata log keeps it equal: the metadata
//! leader alone hands out identities, and each init that must be saved is first committed to
//! the log as a [`ProducerIdsRecord`] (the new block end and the named producer's identity),
//! which every broker merges. A broker that becomes metadata leader starts a fresh block, past
//! whatever the previous leader may have handed out from its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits;

/// An idempotent producer's identity, as stamped on its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerIdsFile {
    version: u32,
    next_block: i64,
    #[serde(default)]
    names: BTreeMap<String, ProducerIdentity>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    #[error("producer names are limited to {} per broker", limits::PRODUCER_NAMES_MAX)]
    TooManyNames,
    #[error("producer ids are exhausted")]
    Exhausted,
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// What an init that must be saved changed, as the metadata log carries it. Merging it is
/// idempotent, so a record applied twice (a crash between applying and noting it) is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdsRecord {
    pub next_block: i64,
    #[serde(default)]
    pub names: BTreeMap<String, ProducerIdentity>,
}

/// The allocator's state. `next_id..block_end` is what remains of the current block; the file
/// says `next_block = block_end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerIds {
    next_id: i64,
    block_end: i64,
    names: BTreeMap<String, ProducerIdentity>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("meta").join("producer-ids.toml")
}

impl ProducerIds {
    /// Loads the allocator; a missing file is a new broker. The first id handed out is past
    /// every id any earlier run could have handed out.
    pub fn load(data_dir: &Path) -> Result<ProducerIds, ProducerIdError> {
        let path = path(data_dir);
        let bad = |message: String| ProducerIdError::File { path: path.clone(), message };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: ProducerIdsFile =
                    toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
                if file.version != 1 || file.next_block < 0 {
                    return Err(bad(format!("unsupported version {}", file.version)));
                }
                let names_top = file.names.values().map(|p| p.id + 1).max().unwrap_or(0);
                let next = file.next_block.max(names_top);
                Ok(ProducerIds { next_id: next, block_end: next, names: file.names })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProducerIds::default()),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// Writes the state durably (see the module docs).
    pub fn save(&self, data_dir: &Path) -> Result<(), ProducerIdError> {
        let path = path(data_dir);
        let bad = |message: String| ProducerIdError::File { path: path.clone(), message };
        let file =
            ProducerIdsFile { version: 1, next_block: self.block_end, names: self.names.clone() };
        let text = toml::to_string(&file).map_err(|e| bad(e.to_string()))?;
        std::fs::create_dir_all(path.parent().expect("meta dir"))
            .map_err(|e| bad(e.to_string()))?;
        spate_storage::durable::write_atomically(&path, text.as_bytes())
            .map_err(|e| bad(e.to_string()))
    }

    /// The identity for a producer initialising under `name` (or unnamed), and whether the
    /// state must be saved before it is handed out.
    pub fn init(
        &mut self,
        name: Option<&str>,
    ) -> Result<(ProducerIdentity, bool), ProducerIdError> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            let started_block = self.next_id == self.block_end;
            return Ok((ProducerIdentity { id: self.allocate()?, epoch: 0 }, started_block));
        };
        let identity = match self.names.get(name).copied() {
            // A new epoch fences the previous holder; past the last epoch, a new id does.
            Some(old) if old.epoch < i16::MAX => {
                ProducerIdentity { id: old.id, epoch: old.epoch + 1 }
            }
            Some(_) => ProducerIdentity { id: self.allocate()?, epoch: 0 },
            None if self.names.len() >= limits::PRODUCER_NAMES_MAX => {
                return Err(ProducerIdError::TooManyNames)
            }
            None => ProducerIdentity { id: self.allocate()?, epoch: 0 },
        };
        self.names.insert(name.to_string(), identity);
        Ok((identity, true))
    }

    /// The record that carries an `init(name)` just made to the other brokers.
    pub fn record(&self, name: Option<&str>) -> ProducerIdsRecord {
        let names = name
            .filter(|n| !n.is_empty())
            .and_then(|n| self.names.get(n).map(|identity| (n.to_string(), *identity)))
            .into_iter()
            .collect();
        ProducerIdsRecord { next_block: self.block_end, names }
    }

    /// Takes in a committed record: the block end only grows, and named producers take the
    /// record's identity (records merge in log order, so the later one wins).
    pub fn merge(&mut self, record: &ProducerIdsRecord) {
        self.block_end = self.block_end.max(record.next_block);
        for (name, identity) in &record.names {
            self.names.insert(name.clone(), *identity);
        }
    }

    /// Gives up what is left of the current block: the next id starts a new one.
    pub fn start_new_block(&mut self) {
        self.next_id = self.block_end;
    }

    fn allocate(&mut self) -> Result<i64, ProducerIdError> {
        if self.next_id == self.block_end {
            self.block_end = self
                .block_end
                .checked_add(limits::PRODUCER_ID_BLOCK)
                .ok_or(ProducerIdError::Exhausted)?;
        }
        let id = self.next_id;
        self.next_id += 1;
        assert!(self.next_id <= self.block_end);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inits and saves as the broker does.
    fn init(ids: &mut ProducerIds, dir: &Path, name: Option<&str>) -> ProducerIdentity {
        let (identity, save) = ids.init(name).unwrap();
        if save {
            ids.save(dir).unwrap();
        }
        identity
    }

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::load(dir.path()).unwrap();
        let first: Vec<i64> = (0..3).map(|_| init(&mut ids, dir.path(), None).id).collect();
        assert_eq!(first, vec![0, 1, 2]);
        // A restart (crash or not) starts past the block the previous run used.
        let mut ids = ProducerIds::load(dir.path()).unwrap();
        let next = init(&mut ids, dir.path(), None);
        assert_eq!(next, ProducerIdentity { id: limits::PRODUCER_ID_BLOCK, epoch: 0 });
        // Crossing into a new block saves it.
        let mut last = next.id;
        for _ in 0..limits::PRODUCER_ID_BLOCK {
            last = init(&mut ids, dir.path(), None).id;
        }
        assert_eq!(last, 2 * limits::PRODUCER_ID_BLOCK);
        let reloaded = ProducerIds::load(dir.path()).unwrap();
        assert_eq!(reloaded.next_id, 3 * limits::PRODUCER_ID_BLOCK);
    }

    #[test]
    fn a_named_producer_keeps_its_id_and_bumps_its_epoch_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = ProducerIds::load(dir.path()).unwrap();
        let a0 = init(&mut ids, dir.path(), Some("a"));
        let a1 = init(&mut ids, dir.path(), Some("a"));
        assert_eq!((a1.id, a1.epoch), (a0.id, a0.epoch + 1));
        let b = init(&mut ids, dir.path(), Some("b"));
        assert_ne!(b.id, a0.id);
        let unnamed = init(&mut ids, dir.path(), Some(""));
        assert_eq!(unnamed.epoch, 0);
        let mut ids = ProducerIds::load(dir.path()).unwrap();
        let a2 = init(&mut ids, dir.path(), Some("a"));
        assert_eq!((a2.id, a2.epoch), (a0.id, 2));
        assert!(init(&mut ids, dir.path(), None).id > unnamed.id);
        // Past the last epoch, a new id.
        ids.names.get_mut("a").unwrap().epoch = i16::MAX;
        let a3 = init(&mut ids, dir.path(), Some("a"));
        assert_ne!(a3.id, a0.id);
        assert_eq!(a3.epoch, 0);
    }

    /// Two brokers of a cluster: the leader inits and commits records, the follower merges them;
    /// after a change of leader the new one hands out nothing the old one did.
    #[test]
    fn merged_records_keep_a_follower_able_to_take_over() {
        let (mut leader, mut follower) = (ProducerIds::default(), ProducerIds::default());
        let mut handed_out = Vec::new();
        for name in [None, Some("a"), None, Some("a")] {
            let (identity, save) = leader.init(name).unwrap();
            handed_out.push(identity.id);
            if save {
                let record = leader.record(name);
                follower.merge(&record);
                follower.merge(&record);
            }
        }
        assert_eq!(follower.names.get("a").map(|a| a.epoch), Some(1));
        // The follower leads now.
        follower.start_new_block();
        let (next, _) = follower.init(None).unwrap();
        assert!(handed_out.iter().all(|id| next.id > *id), "{next:?} after {handed_out:?}");
        let (a, _) = follower.init(Some("a")).unwrap();
        assert_eq!((a.id, a.epoch), (handed_out[1], 2));
    }

    #[test]
    fn names_are_bounded() {
        let mut ids = ProducerIds::default();
        for i in 0..limits::PRODUCER_NAMES_MAX {
            ids.init(Some(&format!("p{i}"))).unwrap();
        }
        assert!(matches!(ids.init(Some("one-more")), Err(ProducerIdError::TooManyNames)));
        // Known names still re-initialise.
        assert_eq!(ids.init(Some("p0")).unwrap().0.epoch, 1);
    }
}
