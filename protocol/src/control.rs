//! Control batches: one-record batches the replication layer writes into a partition log to mark
//! a new leader's term and to record replica-set changes. The partition log is the replicated
//! log, so these travel, are stored, truncated and retained exactly like data batches; only
//! their attribute bit ([`ATTR_CONTROL`](crate::batch::ATTR_CONTROL), bit 4) sets them apart.
//! Consumers never see them: the client skips control batches (as Kafka's consumer skips
//! control records), and the broker refuses them from producers.
//!
//! A control batch is an ordinary batch (layout in [`crate::batch`]) with the control bit set,
//! exactly one record, no producer identity, and stamped with the writing leader's term. Its one
//! record has no headers; key and value are little-endian:
//!
//! ```text
//! key    version  u16   0
//!        type     u16   0 = leader marker, 1 = membership
//! value  leader marker:  term  u64   the term that starts here (equals the header's leader_term)
//!        membership:     voter_count    u16
//!                        learner_count  u16
//!                        voters         u32 x voter_count    (node ids)
//!                        learners       u32 x learner_count  (node ids)
//! ```
//!
//! Decoding never panics on bad bytes: every failure is a [`ControlError`].

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchBuilder, BatchError, BatchHeader, NewRecord, Records};
use crate::limits;

const VERSION: u16 = 0;
const TYPE_LEADER_MARKER: u16 = 0;
const TYPE_MEMBERSHIP: u16 = 1;
const KEY_BYTES: usize = 4;

/// What a control batch says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRecord {
    /// A new leader starts `term` at this batch's offset.
    LeaderMarker { term: u64 },
    /// The replica set in force from this batch's offset on.
    Membership { voters: Vec<u32>, learners: Vec<u32> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("not a control batch")]
    NotControl,
    #[error("a control batch holds exactly one record, not {0}")]
    RecordCount(u32),
    #[error("unknown control record version {0}")]
    Version(u16),
    #[error("unknown control record type {0}")]
    Type(u16),
    #[error("malformed control record: {0}")]
    Malformed(&'static str),
    #[error("{0} replicas in a membership record; at most {max}", max = limits::CONTROL_REPLICAS_MAX)]
    TooManyReplicas(usize),
}

/// A leader marker for `term` at `base_offset`, stamped and ready to append as is.
pub fn leader_marker(base_offset: i64, term: u64, timestamp_ms: i64) -> BytesMut {
    let record = ControlRecord::LeaderMarker { term };
    build(&record, base_offset, term, timestamp_ms).expect("a leader marker always fits")
}

/// A membership record for this replica set at `base_offset`, written in `term`.
pub fn membership(
    base_offset: i64,
    term: u64,
    timestamp_ms: i64,
    voters: &[u32],
    learners: &[u32],
) -> Result<BytesMut, ControlError> {
    let record = ControlRecord::Membership { voters: voters.to_vec(), learners: learners.to_vec() };
    build(&record, base_offset, term, timestamp_ms)
}

/// Builds the one-record control batch for `record`, stamped with `base_offset` and `term`.
pub fn build(
    record: &ControlRecord,
    base_offset: i64,
    term: u64,
    timestamp_ms: i64,
) -> Result<BytesMut, ControlError> {
    let (kind, value) = match record {
        ControlRecord::LeaderMarker { term } => (TYPE_LEADER_MARKER, term.to_le_bytes().to_vec()),
        ControlRecord::Membership { voters, learners } => {
            let replicas = voters.len() + learners.len();
            if replicas > limits::CONTROL_REPLICAS_MAX {
                return Err(ControlError::TooManyReplicas(replicas));
            }
            let mut value = Vec::with_capacity(4 + 4 * replicas);
            value.extend_from_slice(&(voters.len() as u16).to_le_bytes());
            value.extend_from_slice(&(learners.len() as u16).to_le_bytes());
            for node in voters.iter().chain(learners) {
                value.extend_from_slice(&node.to_le_bytes());
            }
            (TYPE_MEMBERSHIP, value)
        }
    };
    let mut key = Vec::with_capacity(KEY_BYTES);
    key.extend_from_slice(&VERSION.to_le_bytes());
    key.extend_from_slice(&kind.to_le_bytes());
    let mut builder = BatchBuilder::with_capacity(batch::HEADER_LEN + 32 + value.len());
    builder.push(&NewRecord {
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Vec::new(),
        timestamp: timestamp_ms,
    });
    let mut bytes = builder.finish_control()?;
    batch::stamp(&mut bytes, base_offset, term);
    debug_assert!(batch::validate(&bytes).is_ok_and(|h| h.is_control()));
    Ok(bytes)
}

/// Decodes the control batch at the start of `bytes` (CRC and shape checked here too).
pub fn decode(bytes: &[u8]) -> Result<ControlRecord, ControlError> {
    let header: BatchHeader = batch::validate_crc(bytes)?;
    if !header.is_control() {
        return Err(ControlError::NotControl);
    }
    if header.record_count != 1 {
        return Err(ControlError::RecordCount(header.record_count));
    }
    let record = Records::new(bytes, header).next().ok_or(ControlError::RecordCount(0))??;
    if !record.headers.is_empty() {
        return Err(ControlError::Malformed("control records have no headers"));
    }
    let key = record.key.ok_or(ControlError::Malformed("no key"))?;
    let value = record.value.ok_or(ControlError::Malformed("no value"))?;
    if key.len() != KEY_BYTES {
        return Err(ControlError::Malformed("key length"));
    }
    let version = u16::from_le_bytes([key[0], key[1]]);
    if version != VERSION {
        return Err(ControlError::Version(version));
    }
    match u16::from_le_bytes([key[2], key[3]]) {
        TYPE_LEADER_MARKER => {
            let term: [u8; 8] =
                value.try_into().map_err(|_| ControlError::Malformed("marker length"))?;
            Ok(ControlRecord::LeaderMarker { term: u64::from_le_bytes(term) })
        }
        TYPE_MEMBERSHIP => {
            if value.len() < 4 {
                return Err(ControlError::Malformed("membership length"));
            }
            let voters = u16::from_le_bytes([value[0], value[1]]) as usize;
            let learners = u16::from_le_bytes([value[2], value[3]]) as usize;
            if voters + learners > limits::CONTROL_REPLICAS_MAX {
                return Err(ControlError::TooManyReplicas(voters + learners));
            }
            if value.len() != 4 + 4 * (voters + learners) {
                return Err(ControlError::Malformed("membership length"));
            }
            let mut ids = value[4..]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")));
            let voters = ids.by_ref().take(voters).collect();
            let learners = ids.collect();
            Ok(ControlRecord::Membership { voters, learners })
        }
        other => Err(ControlError::Type(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn leader_marker_round_trips_and_is_a_valid_stamped_batch() {
        let bytes = leader_marker(42, 7, 1_000);
        let header = batch::validate(&bytes).unwrap();
        assert!(header.is_control());
        assert_eq!((header.base_offset, header.leader_term, header.record_count), (42, 7, 1));
        assert_eq!(decode(&bytes).unwrap(), ControlRecord::LeaderMarker { term: 7 });
    }

    #[test]
    fn membership_round_trips() {
        let bytes = membership(10, 3, 5, &[1, 2, 3], &[9]).unwrap();
        assert_eq!(batch::validate(&bytes).unwrap().last_offset(), 10);
        assert_eq!(
            decode(&bytes).unwrap(),
            ControlRecord::Membership { voters: vec![1, 2, 3], learners: vec![9] }
        );
        let too_many: Vec<u32> = (0..=limits::CONTROL_REPLICAS_MAX as u32).collect();
        assert!(matches!(
            membership(0, 1, 0, &too_many, &[]),
            Err(ControlError::TooManyReplicas(_))
        ));
    }

    #[test]
    fn data_batches_are_not_control_and_the_flag_is_covered_by_the_crc() {
        let mut builder = BatchBuilder::new();
        builder.push(&NewRecord { value: Some(Bytes::from_static(b"x")), ..Default::default() });
        let data = builder.finish().unwrap();
        assert!(!batch::validate(&data).unwrap().is_control());
        assert_eq!(decode(&data), Err(ControlError::NotControl));
        // Flipping the bit on a data batch breaks its CRC: a client cannot forge one by
        // accident, and a damaged control batch is never taken for data.
        let mut forged = data.clone();
        forged[25] ^= 0x10;
        assert!(matches!(batch::validate(&forged), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn random_damage_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let samples = [leader_marker(5, 2, 0), membership(5, 2, 0, &[1, 2, 3], &[4]).unwrap()];
        for _ in 0..20_000 {
            let mut bytes = samples[rng.gen_range(0..2)].to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            // Recompute the CRC half the time so the record parser sees the damage.
            if rng.gen_bool(0.5) && bytes.len() >= batch::HEADER_LEN {
                let crc = batch::compute_crc(&bytes);
                bytes[21..25].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&bytes);
        }
    }
}
