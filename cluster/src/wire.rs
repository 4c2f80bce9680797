//! What travels on a node's stream to a peer, and the checks an inbound `Append` gets before its
//! batches reach the core. Sans-IO.
//!
//! Each node opens one stream per peer on its own outbound connection and only sends on it;
//! it receives on the streams its peers opened to it. Every transport message on such a stream
//! is one frame:
//!
//! ```text
//! kind  u8   0 keepalive (nothing follows)
//!            1 hello: incarnation u64 little-endian (random per process start; first frame)
//!            2 envelope: one replication envelope (`spate_replication::codec` layout)
//! ```
//!
//! The hello's incarnation tells a peer that we restarted: it then drops its outbound
//! connection to us (which may still look alive to QUIC until its idle timeout) and dials again.

use bytes::Bytes;
use spate_protocol::batch::BatchHeader;
use spate_protocol::control::{self, ControlRecord};
use spate_replication::codec::{self, Payload};
use spate_replication::outbox::Envelope;
use spate_replication::{BatchMeta, Membership};

const KIND_KEEPALIVE: u8 = 0;
const KIND_HELLO: u8 = 1;
const KIND_ENVELOPE: u8 = 2;

/// A frame received from a peer.
#[derive(Debug)]
pub enum Inbound {
    Keepalive,
    Hello { incarnation: u64 },
    Envelope(Envelope<Payload>),
}

/// Why a received frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("malformed hello")]
    Hello,
    #[error(transparent)]
    Envelope(#[from] codec::DecodeError),
}

pub fn keepalive() -> Vec<Bytes> {
    vec![Bytes::from_static(&[KIND_KEEPALIVE])]
}

pub fn hello(incarnation: u64) -> Vec<Bytes> {
    let mut frame = vec![KIND_HELLO];
    frame.extend_from_slice(&incarnation.to_le_bytes());
    vec![Bytes::from(frame)]
}

/// An encoded envelope frame as chunks (the batches stay the caller's buffers).
pub fn envelope(frame: codec::Frame) -> Vec<Bytes> {
    let mut chunks = Vec::with_capacity(frame.chunks.len() + 1);
    chunks.push(Bytes::from_static(&[KIND_ENVELOPE]));
    chunks.extend(frame.chunks);
    chunks
}

pub fn decode(frame: Bytes) -> Result<Inbound, WireError> {
    let kind = *frame.first().ok_or(WireError::Empty)?;
    match kind {
        KIND_KEEPALIVE if frame.len() == 1 => Ok(Inbound::Keepalive),
        KIND_HELLO => {
            let bytes: [u8; 8] = frame[1..].try_into().map_err(|_| WireError::Hello)?;
            Ok(Inbound::Hello { incarnation: u64::from_le_bytes(bytes) })
        }
        KIND_ENVELOPE => Ok(Inbound::Envelope(codec::decode_envelope(frame.slice(1..))?)),
        other => Err(WireError::Kind(other)),
    }
}

/// The core's description of a stored batch: offsets, term, and the replica set if it is a
/// membership record. `None` if the bytes are not one whole batch with a sane header.
pub fn batch_meta(bytes: &[u8]) -> Option<BatchMeta> {
    let header = BatchHeader::parse(bytes).ok()?;
    if header.batch_length as usize != bytes.len() || header.base_offset < 0 {
        return None;
    }
    header.check_shape().ok()?;
    let membership = if header.is_control() {
        match control::decode(bytes).ok()? {
            ControlRecord::LeaderMarker { .. } => None,
            ControlRecord::Membership { voters, learners } => {
                let m = Membership { voters, learners };
                if !m.is_valid() {
                    return None;
                }
                Some(m)
            }
        }
    } else {
        None
    };
    Some(BatchMeta {
        base_offset: header.base_offset as u64,
        last_offset: header.last_offset() as u64,
        term: header.leader_term,
        membership,
    })
}

/// Whether an inbound `Append`'s payload is exactly what its batch descriptions say: the core
/// trusts the descriptions, the log trusts the bytes, so they must agree before either sees
/// them. (CRCs are checked by the log when it appends.)
pub fn payload_matches(batches: &[BatchMeta], payload: &Payload) -> bool {
    batches.len() == payload.len()
        && batches.iter().zip(payload).all(|(meta, bytes)| batch_meta(bytes).as_ref() == Some(meta))
}

/// Splits a read of whole batches back to back into one buffer per batch. `None` if the bytes
/// do not split into whole batches.
pub fn split_batches(mut bytes: Bytes) -> Option<Vec<Bytes>> {
    let mut batches = Vec::new();
    // Bounded: every step consumes at least a header's worth of bytes.
    while !bytes.is_empty() {
        let header = BatchHeader::parse(&bytes).ok()?;
        let length = header.batch_length as usize;
        if length < spate_protocol::batch::HEADER_LEN || length > bytes.len() {
            return None;
        }
        batches.push(bytes.split_to(length));
    }
    Some(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let join = |chunks: Vec<Bytes>| Bytes::from(chunks.concat());
        assert!(matches!(decode(join(keepalive())), Ok(Inbound::Keepalive)));
        assert!(matches!(decode(join(hello(77))), Ok(Inbound::Hello { incarnation: 77 })));
        assert!(decode(Bytes::new()).is_err());
        assert!(decode(Bytes::from_static(&[9])).is_err());
        assert!(decode(Bytes::from_static(&[1, 2])).is_err());
        assert!(decode(Bytes::from_static(&[2, 1, 0])).is_err());
    }

    #[test]
    fn control_batches_describe_their_replica_set() {
        let marker = control::leader_marker(5, 3, 0).freeze();
        assert_eq!(batch_meta(&marker), Some(BatchMeta::data(5, 5, 3)));
        let set = control::membership(6, 3, 0, &[1, 2, 3], &[]).unwrap().freeze();
        let meta = batch_meta(&set).unwrap();
        assert_eq!(meta.membership, Some(Membership::new(&[1, 2, 3])));
        let both = Bytes::from([marker.to_vec(), set.to_vec()].concat());
        let split = split_batches(both).unwrap();
        assert_eq!(split.len(), 2);
        assert!(payload_matches(&[BatchMeta::data(5, 5, 3), meta.clone()], &split));
        assert!(!payload_matches(&[BatchMeta::data(5, 5, 4), meta], &split));
        assert!(split_batches(marker.slice(..20)).is_none());
    }
}
