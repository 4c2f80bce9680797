//! Opening a replica: what the core needs back from the log and the replica-state file
//! (`Restored`), and the conversions between the core's types and the state file's.

use bytes::Bytes;
use spate_protocol::batch::{BatchHeader, HEADER_LEN};
use spate_replication::{HardState, Membership, Offset, Restored, TermStart};
use spate_storage::replica_state::{self, ReplicaSet, ReplicaState};
use spate_storage::{FlushPolicy, Log, LogBytes};

use crate::error::ReplicationError;
use crate::limits::OPEN_SCAN_READ_BYTES;
use crate::wire;

/// Reads back a replica from its log and state file. A new replica (no state file, empty log)
/// starts with `bootstrap` as its replica set, which is persisted at once as the floor.
/// Returns what the core starts from and the persisted state the driver keeps a mirror of.
pub async fn restore(
    log: &Log,
    bootstrap: &Membership,
) -> Result<(Restored, ReplicaState), ReplicationError> {
    let dir = log.dir().to_path_buf();
    // Recovery fsyncs what it found under flush=always; flushing again is cheap and makes the
    // core's assumption (everything below the recovered end is durable) hold whatever ran before.
    if log.config().flush == FlushPolicy::Always {
        log.flush().await?;
    }
    let offsets = log.offsets();
    let (log_start, log_end) = (offsets.start as u64, offsets.next as u64);
    let state = match replica_state::load(&dir)? {
        Some(state) => state,
        None if log_end > log_start => {
            return Err(ReplicationError::Config(format!(
                "{} holds records but no replica state: it was not written by replication",
                dir.display()
            )))
        }
        None => {
            let state = ReplicaState {
                membership_floor: Some(to_replica_set(bootstrap)),
                ..ReplicaState::default()
            };
            replica_state::store(&dir, &state).await?;
            state
        }
    };
    let floor = state.membership_floor.as_ref().map_or_else(|| bootstrap.clone(), to_membership);
    if !floor.is_valid() {
        return Err(ReplicationError::Config(format!("invalid replica set {floor:?}")));
    }
    let mut memberships = vec![(0, floor)];
    for (offset, membership) in scan_memberships(log, log_start, log_end).await? {
        if offset == 0 {
            memberships[0].1 = membership;
        } else {
            memberships.push((offset, membership));
        }
    }
    let restored = Restored {
        hard_state: HardState { term: state.term, voted_for: state.voted_for },
        history: state
            .term_history
            .iter()
            .map(|e| TermStart { term: e.term, start_offset: e.start_offset })
            .collect(),
        memberships,
        log_start,
        log_end,
        commit: state.commit,
    };
    Ok((restored, state))
}

/// Every membership record in `[start, end)`, by offset. Reads the whole log once (a known
/// cost: the broker will want their offsets in the state file instead).
async fn scan_memberships(
    log: &Log,
    start: Offset,
    end: Offset,
) -> Result<Vec<(Offset, Membership)>, ReplicationError> {
    let mut found = Vec::new();
    let mut offset = start;
    // Each read returns at least one whole batch of at least HEADER_LEN bytes.
    let reads_max = log.size_bytes() / HEADER_LEN as u64 + 2;
    for _ in 0..reads_max {
        if offset >= end {
            return Ok(found);
        }
        let read = log.read_bounded(offset as i64, OPEN_SCAN_READ_BYTES, end as i64).await?;
        if read.chunks.is_empty() {
            break;
        }
        for chunk in &read.chunks {
            let mut bytes: &[u8] = chunk;
            // Bounded: each step consumes a whole batch.
            while bytes.len() >= HEADER_LEN {
                let header = BatchHeader::parse(bytes).map_err(|e| {
                    ReplicationError::Storage(format!("scanning for replica sets: {e}"))
                })?;
                let length = (header.batch_length as usize).clamp(HEADER_LEN, bytes.len());
                if header.is_control() {
                    if let Some(meta) = wire::batch_meta(&bytes[..length]) {
                        if let Some(m) = meta.membership {
                            found.push((meta.base_offset, m));
                        }
                    }
                }
                offset = header.next_offset() as u64;
                bytes = &bytes[length..];
            }
        }
    }
    if offset < end {
        return Err(ReplicationError::Storage(format!(
            "scanning for replica sets stopped at {offset} before the log end {end}"
        )));
    }
    Ok(found)
}

/// A read chunk as `Bytes`: the tail cache's own buffer, or a copy of a DMA read buffer
/// (which is `!Send` and cannot outlive the read in a frame).
pub fn chunk_bytes(chunk: &LogBytes) -> Bytes {
    match chunk {
        LogBytes::Memory(bytes) => bytes.clone(),
        LogBytes::Disk(read) => Bytes::copy_from_slice(read),
    }
}

pub fn to_replica_set(m: &Membership) -> ReplicaSet {
    ReplicaSet { voters: m.voters.clone(), learners: m.learners.clone() }
}

pub fn to_membership(s: &ReplicaSet) -> Membership {
    let mut m = Membership { voters: s.voters.clone(), learners: s.learners.clone() };
    m.voters.sort_unstable();
    m.learners.sort_unstable();
    m
}

pub fn to_state_history(entries: &[TermStart]) -> Vec<replica_state::TermStart> {
    entries
        .iter()
        .map(|e| replica_state::TermStart { term: e.term, start_offset: e.start_offset })
        .collect()
}
