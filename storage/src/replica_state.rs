//! The replica-state file: what a partition's replication core must find again after a restart
//! and cannot read from the log itself. One small file per partition, `<log dir>/replica-state`,
//! rewritten whole and atomically on every change: a temporary file `replica-state.tmp`,
//! fdatasync, rename over the old one, fsync of the directory. A crash at any step leaves the
//! old file or the new one whole (a leftover temporary file is ignored and overwritten).
//!
//! It holds (see `replication/PROTOCOL.md`, "Terms, offsets, state"):
//! - the hard state: current term and the vote in it (fsynced before any message depending on
//!   it leaves the node);
//! - the term history (Kafka's leader-epoch cache): `(term, start_offset)` entries, strictly
//!   increasing in both, fsynced before the batch that starts a term is written;
//! - the membership floor: the replica set in force before the log start (after a reset, or
//!   once retention deleted the membership records);
//! - the commit point, persisted lazily (it may be older than the real one; never newer).
//!
//! Layout (integers little-endian):
//!
//! ```text
//! offset size  field
//!      0    8  magic          "SPRSTATE"
//!      8    2  version  u16   1
//!     10    2  reserved u16   0
//!     12    4  body_length u32
//!     16       body:
//!                term             u64
//!                vote_flag        u8    0 = no vote in this term, 1 = voted
//!                voted_for        u32   node id (0 without a vote)
//!                commit           u64   exclusive end of the committed prefix
//!                floor_flag       u8    0 = no membership floor, 1 = one follows
//!                  voter_count    u16   (only with floor_flag = 1)
//!                  learner_count  u16
//!                  voters         u32 x voter_count
//!                  learners       u32 x learner_count
//!                history_count    u32
//!                history          (term u64, start_offset u64) x history_count
//! 16+body_length 4  crc  u32      CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Size is bounded by [`limits::REPLICA_STATE_BYTES_MAX`] (history and replica counts have their
//! own limits). A damaged file (bad magic, CRC, length or structure) is a
//! [`ReplicaStateError::Corrupt`], never an older version or a default: falling back to an older
//! term or vote could let this replica vote twice in one term, and an empty history could let
//! it accept an append that does not match its log. A replica whose state file is corrupt must
//! be treated as having lost its disk (removed from the group and re-added empty).

use std::path::{Path, PathBuf};

use crate::limits;
use crate::segment;

pub const FILE_NAME: &str = "replica-state";
const TEMPORARY_NAME: &str = "replica-state.tmp";
const MAGIC: &[u8; 8] = b"SPRSTATE";
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 16;
const CRC_BYTES: usize = 4;

/// One term-history entry: `term` wrote the records from `start_offset` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermStart {
    pub term: u64,
    pub start_offset: u64,
}

/// A replica set, by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaSet {
    pub voters: Vec<u32>,
    pub learners: Vec<u32>,
}

/// A partition replica's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaState {
    pub term: u64,
    pub voted_for: Option<u32>,
    /// The commit point as last persisted (exclusive); may be older than the real one.
    pub commit: u64,
    /// The replica set in force before the log start, if one has been recorded.
    pub membership_floor: Option<ReplicaSet>,
    /// Strictly increasing in term and in start offset.
    pub term_history: Vec<TermStart>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaStateError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a whole, valid state file. Not recoverable from this file:
    /// see the module docs.
    #[error("corrupt replica state {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A state this code cannot write: over a limit, or a history out of order.
    #[error("invalid replica state: {0}")]
    Invalid(String),
}

impl ReplicaStateError {
    fn io(op: &'static str, path: &Path, source: impl Into<std::io::Error>) -> Self {
        ReplicaStateError::Io { op, path: path.to_path_buf(), source: source.into() }
    }
}

impl ReplicaState {
    /// The file's bytes, or why this state cannot be written.
    pub fn encode(&self) -> Result<Vec<u8>, ReplicaStateError> {
        self.check()?;
        let floor_bytes = self
            .membership_floor
            .as_ref()
            .map_or(0, |f| 4 + 4 * (f.voters.len() + f.learners.len()));
        let body_length = 8 + 1 + 4 + 8 + 1 + floor_bytes + 4 + 16 * self.term_history.len();
        let mut out = Vec::with_capacity(HEADER_BYTES + body_length + CRC_BYTES);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body_length as u32).to_le_bytes());
        out.extend_from_slice(&self.term.to_le_bytes());
        out.push(u8::from(self.voted_for.is_some()));
        out.extend_from_slice(&self.voted_for.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&self.commit.to_le_bytes());
        if let Some(floor) = &self.membership_floor {
            out.push(1);
            out.extend_from_slice(&(floor.voters.len() as u16).to_le_bytes());
            out.extend_from_slice(&(floor.learners.len() as u16).to_le_bytes());
            for node in floor.voters.iter().chain(&floor.learners) {
                out.extend_from_slice(&node.to_le_bytes());
            }
        } else {
            out.push(0);
        }
        out.extend_from_slice(&(self.term_history.len() as u32).to_le_bytes());
        for entry in &self.term_history {
            out.extend_from_slice(&entry.term.to_le_bytes());
            out.extend_from_slice(&entry.start_offset.to_le_bytes());
        }
        assert_eq!(out.len(), HEADER_BYTES + body_length);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        assert!(out.len() <= limits::REPLICA_STATE_BYTES_MAX);
        Ok(out)
    }

    /// Parses a state file's bytes. Never panics; every failure is a reason.
    pub fn decode(bytes: &[u8]) -> Result<ReplicaState, String> {
        if bytes.len() > limits::REPLICA_STATE_BYTES_MAX {
            return Err(format!("{} bytes, more than the limit", bytes.len()));
        }
        if bytes.len() < HEADER_BYTES + CRC_BYTES {
            return Err(format!("{} bytes, shorter than a header", bytes.len()));
        }
        if &bytes[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let mut reader = Reader { bytes, at: 8 };
        let version = reader.u16()?;
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let _reserved = reader.u16()?;
        let body_length = reader.u32()? as usize;
        if bytes.len() != HEADER_BYTES + body_length + CRC_BYTES {
            return Err(format!(
                "{} bytes, header says {}",
                bytes.len(),
                HEADER_BYTES + body_length + CRC_BYTES
            ));
        }
        let (covered, crc) = bytes.split_at(HEADER_BYTES + body_length);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(covered) != stored {
            return Err("CRC mismatch".into());
        }
        let mut reader = Reader { bytes: covered, at: HEADER_BYTES };
        let term = reader.u64()?;
        let vote_flag = reader.u8()?;
        let voted = reader.u32()?;
        let voted_for = match vote_flag {
            0 => None,
            1 => Some(voted),
            other => return Err(format!("bad vote flag {other}")),
        };
        let commit = reader.u64()?;
        let membership_floor = match reader.u8()? {
            0 => None,
            1 => {
                let voters = reader.u16()? as usize;
                let learners = reader.u16()? as usize;
                if voters + learners > limits::REPLICA_STATE_REPLICAS_MAX {
                    return Err(format!("{} replicas in the floor", voters + learners));
                }
                let voters = (0..voters).map(|_| reader.u32()).collect::<Result<_, _>>()?;
                let learners = (0..learners).map(|_| reader.u32()).collect::<Result<_, _>>()?;
                Some(ReplicaSet { voters, learners })
            }
            other => return Err(format!("bad floor flag {other}")),
        };
        let count = reader.u32()? as usize;
        if count > limits::REPLICA_STATE_HISTORY_ENTRIES_MAX {
            return Err(format!("{count} history entries"));
        }
        // The length was checked against the limit, so `count` entries fit in memory.
        let mut term_history = Vec::with_capacity(count);
        for _ in 0..count {
            term_history.push(TermStart { term: reader.u64()?, start_offset: reader.u64()? });
        }
        if reader.at != covered.len() {
            return Err(format!("{} trailing bytes", covered.len() - reader.at));
        }
        let state = ReplicaState { term, voted_for, commit, membership_floor, term_history };
        state.check().map_err(|e| e.to_string())?;
        Ok(state)
    }

    /// Limits, and the history's order (the core asserts the same, A3).
    fn check(&self) -> Result<(), ReplicaStateError> {
        let invalid = |reason: String| Err(ReplicaStateError::Invalid(reason));
        if self.term_history.len() > limits::REPLICA_STATE_HISTORY_ENTRIES_MAX {
            return invalid(format!("{} history entries", self.term_history.len()));
        }
        if let Some(floor) = &self.membership_floor {
            if floor.voters.len() + floor.learners.len() > limits::REPLICA_STATE_REPLICAS_MAX {
                return invalid("too many replicas in the membership floor".into());
            }
        }
        let increasing = self
            .term_history
            .windows(2)
            .all(|w| w[0].term < w[1].term && w[0].start_offset < w[1].start_offset);
        if !increasing {
            return invalid("term history not strictly increasing".into());
        }
        if self.term_history.last().is_some_and(|last| last.term > self.term) {
            return invalid("term history names a term above the current term".into());
        }
        Ok(())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at.checked_add(N).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let out = self.bytes[self.at..end].try_into().expect("N bytes");
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }
}

/// Reads the state file in `dir`: `Ok(None)` if there is none (a new replica), an error if it
/// is damaged (see the module docs for why there is no fallback).
pub fn load(dir: &Path) -> Result<Option<ReplicaState>, ReplicaStateError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReplicaStateError::io("read", &path, e)),
    };
    ReplicaState::decode(&bytes)
        .map(Some)
        .map_err(|reason| ReplicaStateError::Corrupt { path, reason })
}

/// Replaces the state file in `dir` atomically and durably (temporary file, fdatasync, rename,
/// directory fsync; the fsyncs run off the executor thread, through Glommio). Returns once the
/// new state survives a crash or power loss.
pub async fn store(dir: &Path, state: &ReplicaState) -> Result<(), ReplicaStateError> {
    let bytes = state.encode()?;
    let temporary = dir.join(TEMPORARY_NAME);
    let path = dir.join(FILE_NAME);
    segment::write_small_file(&temporary, bytes).await.map_err(|e| match e {
        crate::LogError::Io { op, path, source } => ReplicaStateError::Io { op, path, source },
        other => ReplicaStateError::Io {
            op: "write",
            path: temporary.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    std::fs::rename(&temporary, &path).map_err(|e| ReplicaStateError::io("rename", &path, e))?;
    segment::sync_dir(dir).await.map_err(|e| ReplicaStateError::Io {
        op: "fsync",
        path: dir.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample() -> ReplicaState {
        ReplicaState {
            term: 9,
            voted_for: Some(3),
            commit: 1234,
            membership_floor: Some(ReplicaSet { voters: vec![1, 2, 3], learners: vec![7] }),
            term_history: vec![
                TermStart { term: 1, start_offset: 0 },
                TermStart { term: 4, start_offset: 100 },
                TermStart { term: 9, start_offset: 1000 },
            ],
        }
    }

    #[test]
    fn round_trips() {
        for state in [sample(), ReplicaState::default()] {
            let bytes = state.encode().unwrap();
            assert_eq!(ReplicaState::decode(&bytes).unwrap(), state);
        }
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_refused() {
        let bytes = sample().encode().unwrap();
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x21;
            assert!(ReplicaState::decode(&damaged).is_err(), "flip at {at}");
        }
        for length in 0..bytes.len() {
            assert!(ReplicaState::decode(&bytes[..length]).is_err(), "cut at {length}");
        }
    }

    #[test]
    fn states_beyond_limits_or_out_of_order_are_not_written() {
        let mut state = sample();
        state.term_history.swap(0, 1);
        assert!(matches!(state.encode(), Err(ReplicaStateError::Invalid(_))));
        let mut state = sample();
        state.term = 2;
        assert!(matches!(state.encode(), Err(ReplicaStateError::Invalid(_))));
        let mut state = sample();
        state.membership_floor = Some(ReplicaSet {
            voters: (0..=limits::REPLICA_STATE_REPLICAS_MAX as u32).collect(),
            learners: vec![],
        });
        assert!(matches!(state.encode(), Err(ReplicaStateError::Invalid(_))));
        // The largest state fits the byte limit exactly.
        let largest = ReplicaState {
            term: u64::MAX,
            voted_for: Some(u32::MAX),
            commit: 0,
            membership_floor: Some(ReplicaSet {
                voters: (0..limits::REPLICA_STATE_REPLICAS_MAX as u32).collect(),
                learners: vec![],
            }),
            term_history: (0..limits::REPLICA_STATE_HISTORY_ENTRIES_MAX as u64)
                .map(|i| TermStart { term: i + 1, start_offset: i })
                .collect(),
        };
        let bytes = largest.encode().unwrap();
        assert_eq!(bytes.len(), limits::REPLICA_STATE_BYTES_MAX);
        assert_eq!(ReplicaState::decode(&bytes).unwrap(), largest);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let valid = sample().encode().unwrap();
        for _ in 0..20_000 {
            let mut bytes = if rng.gen_bool(0.3) {
                (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if let Some(at) = (!bytes.is_empty()).then(|| rng.gen_range(0..bytes.len())) {
                    bytes[at] = rng.gen();
                }
            }
            // Fix the CRC half the time, so the structure checks see the damage.
            if rng.gen_bool(0.5) && bytes.len() >= HEADER_BYTES + CRC_BYTES {
                let end = bytes.len() - CRC_BYTES;
                let crc = crc32fast::hash(&bytes[..end]);
                bytes[end..].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = ReplicaState::decode(&bytes);
        }
    }
}
