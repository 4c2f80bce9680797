//! The wire codec for replication messages: an [`Envelope`] (every message for one destination
//! node, of any number of groups, as the [`Outbox`](crate::Outbox) coalesces them) in one frame.
//! Sans-IO: bytes in, messages out; the transport (one frame per QUIC stream message) is not
//! its concern.
//!
//! The payload of an `Append` is the record batches themselves, one [`Bytes`] per batch
//! ([`Payload`]). Encoding never copies them: the encoder returns the frame as a list of chunks
//! in which the batches are the caller's own `Bytes` (for a vectored send such as quinn's
//! `write_chunks`). Decoding never copies them either: each batch is a slice of the received
//! frame (`Bytes::slice`), which stays alive as long as any batch from it does.
//!
//! Layout (integers little-endian; booleans one byte, 0 or 1, anything else refused):
//!
//! ```text
//! envelope  version        u8    1
//!           reserved       u8    0
//!           count          u32   messages that follow, 1..=ENVELOPE_MESSAGES_MAX
//!           message x count
//! message   group          u64
//!           kind           u8    1 PreVote, 2 PreVoteReply, 3 Vote, 4 VoteReply, 5 Append,
//!                                6 AppendReply, 7 DurableAck, 8 Heartbeat, 9 HeartbeatReply,
//!                                10 TimeoutNow
//!           term           u64
//!           then by kind:
//!   PreVote         last_term u64, log_end u64
//!   PreVoteReply    granted u8
//!   Vote            last_term u64, log_end u64, transfer u8
//!   VoteReply       granted u8
//!   Append          prev_end u64, prev_term u64, commit u64, seq u64,
//!                   has_from_log_start u8, [membership]
//!                   batch_count u32                     (0..=APPEND_BATCHES_MAX)
//!                   batch_count x { base_offset u64, last_offset u64, term u64,
//!                                   bytes u32 (1..), has_membership u8, [membership] }
//!                   payload: the batches' bytes back to back, in order
//!                                                       (sum <= APPEND_PAYLOAD_BYTES_MAX)
//!   AppendReply     seq u64 (the Append's), outcome u8 (0 Accepted, 1 Mismatch), then
//!                   Accepted: match_end u64, durable_end u64
//!                   Mismatch: hint_term u64, hint_end u64
//!   DurableAck      durable_end u64
//!   Heartbeat       commit u64, quiesce u8
//!   HeartbeatReply  durable_end u64, quiesced u8
//!   TimeoutNow      (nothing more)
//! membership        voter_count u8, learner_count u8   (sum <= REPLICAS_MAX)
//!                   voters u32 x voter_count, learners u32 x learner_count
//! ```
//!
//! A whole envelope is at most [`ENVELOPE_BYTES_MAX`] bytes; [`encode_frames`] splits a larger
//! one into several. Decoding checks every count and length against its limit before using it,
//! never reserves memory a short frame cannot back, never panics, and refuses trailing bytes. It
//! checks structure only: what the values mean (terms, offsets, replica sets) the core checks,
//! and the batches' own CRCs the log checks when it appends them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::{
    APPEND_BATCHES_MAX, APPEND_PAYLOAD_BYTES_MAX, ENVELOPE_BYTES_MAX, ENVELOPE_MESSAGES_MAX,
    REPLICAS_MAX,
};
use crate::message::{AppendOutcome, Message};
use crate::outbox::Envelope;
use crate::types::{BatchMeta, GroupId, Membership};

/// An `Append`'s records on the wire: one `Bytes` per batch, in the order of its `batches`.
pub type Payload = Vec<Bytes>;

const VERSION: u8 = 1;
const ENVELOPE_HEADER_BYTES: usize = 6;
/// group + kind + term: the smallest message.
const MESSAGE_MIN_BYTES: usize = 8 + 1 + 8;
const BATCH_META_MIN_BYTES: usize = 8 + 8 + 8 + 4 + 1;

const KIND_PRE_VOTE: u8 = 1;
const KIND_PRE_VOTE_REPLY: u8 = 2;
const KIND_VOTE: u8 = 3;
const KIND_VOTE_REPLY: u8 = 4;
const KIND_APPEND: u8 = 5;
const KIND_APPEND_REPLY: u8 = 6;
const KIND_DURABLE_ACK: u8 = 7;
const KIND_HEARTBEAT: u8 = 8;
const KIND_HEARTBEAT_REPLY: u8 = 9;
const KIND_TIMEOUT_NOW: u8 = 10;

/// Why a message could not be encoded (a driver bug: the core never produces these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("an Append has {batches} batches but {payload} payload chunks")]
    PayloadMismatch { batches: usize, payload: usize },
    #[error("an Append with {0} batches; at most APPEND_BATCHES_MAX")]
    TooManyBatches(usize),
    #[error("an Append carrying {0} bytes; at most APPEND_PAYLOAD_BYTES_MAX")]
    PayloadTooLarge(usize),
    #[error("an empty batch in an Append")]
    EmptyBatch,
    #[error("a replica set of {0} replicas; at most REPLICAS_MAX")]
    TooManyReplicas(usize),
}

/// Why a received frame was refused. Never a panic: frames come from the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes; at most ENVELOPE_BYTES_MAX")]
    FrameTooLarge(usize),
    #[error("frame cut short at byte {0}")]
    Truncated(usize),
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("reserved envelope byte is {0}, not 0")]
    Reserved(u8),
    #[error("{0} messages in an envelope; 1..=ENVELOPE_MESSAGES_MAX")]
    MessageCount(u32),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("boolean byte {0} is neither 0 nor 1")]
    Bool(u8),
    #[error("unknown append outcome {0}")]
    Outcome(u8),
    #[error("{0} batches in an Append; at most APPEND_BATCHES_MAX")]
    TooManyBatches(u32),
    #[error("a batch of {0} bytes")]
    BatchBytes(u32),
    #[error("an Append carrying {0} bytes; at most APPEND_PAYLOAD_BYTES_MAX")]
    PayloadTooLarge(u64),
    #[error("a replica set of {0} replicas; at most REPLICAS_MAX")]
    TooManyReplicas(usize),
    #[error("{0} bytes after the last message")]
    TrailingBytes(usize),
}

/// One encoded frame: `chunks` back to back are its bytes (`len` of them). The batches of
/// `Append` payloads are the caller's own `Bytes`, not copies.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub chunks: Vec<Bytes>,
    pub len: usize,
}

impl Frame {
    /// The frame as one contiguous buffer (a copy; for tests and for transports that need it).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len);
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// Bytes `msg` takes on the wire (after checking it can be encoded).
pub fn encoded_len(msg: &Message<Payload>) -> Result<usize, EncodeError> {
    let body = match msg {
        Message::PreVote { .. } => 16,
        Message::Vote { .. } => 17,
        Message::PreVoteReply { .. } | Message::VoteReply { .. } => 1,
        Message::Append { from_log_start, batches, payload, .. } => {
            check_append(batches, payload)?;
            let mut length = 32 + 1 + membership_len(from_log_start.as_ref())? + 4;
            for batch in batches {
                length += BATCH_META_MIN_BYTES + membership_len(batch.membership.as_ref())?;
            }
            length + payload.iter().map(Bytes::len).sum::<usize>()
        }
        Message::AppendReply { .. } => 25,
        Message::DurableAck { .. } => 8,
        Message::Heartbeat { .. } | Message::HeartbeatReply { .. } => 9,
        Message::TimeoutNow { .. } => 0,
    };
    Ok(MESSAGE_MIN_BYTES + body)
}

fn check_append(batches: &[BatchMeta], payload: &Payload) -> Result<(), EncodeError> {
    if batches.len() != payload.len() {
        return Err(EncodeError::PayloadMismatch {
            batches: batches.len(),
            payload: payload.len(),
        });
    }
    if batches.len() > APPEND_BATCHES_MAX {
        return Err(EncodeError::TooManyBatches(batches.len()));
    }
    if payload.iter().any(Bytes::is_empty) {
        return Err(EncodeError::EmptyBatch);
    }
    let bytes: usize = payload.iter().map(Bytes::len).sum();
    if bytes > APPEND_PAYLOAD_BYTES_MAX {
        return Err(EncodeError::PayloadTooLarge(bytes));
    }
    Ok(())
}

fn membership_len(membership: Option<&Membership>) -> Result<usize, EncodeError> {
    let Some(m) = membership else { return Ok(0) };
    let replicas = m.voters.len() + m.learners.len();
    if replicas > REPLICAS_MAX {
        return Err(EncodeError::TooManyReplicas(replicas));
    }
    Ok(2 + 4 * replicas)
}

/// Encodes an envelope as one frame. Fails if a message cannot be encoded, or if the envelope
/// is empty, holds more than [`ENVELOPE_MESSAGES_MAX`] messages or more than
/// [`ENVELOPE_BYTES_MAX`] bytes (use [`encode_frames`] to split it).
pub fn encode_envelope(envelope: &[(GroupId, Message<Payload>)]) -> Result<Frame, EncodeError> {
    let lengths = envelope.iter().map(|(_, m)| encoded_len(m)).collect::<Result<Vec<_>, _>>()?;
    let total = ENVELOPE_HEADER_BYTES + lengths.iter().sum::<usize>();
    assert!(!envelope.is_empty(), "an envelope holds at least one message");
    assert!(envelope.len() <= ENVELOPE_MESSAGES_MAX, "split with encode_frames");
    assert!(total <= ENVELOPE_BYTES_MAX, "split with encode_frames");
    let mut frame = Frame { chunks: Vec::new(), len: total };
    // Everything but the payloads goes through `head`, cut into a chunk before each payload.
    let payload_bytes: usize = envelope
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Append { payload, .. } => Some(payload.iter().map(Bytes::len).sum::<usize>()),
            _ => None,
        })
        .sum();
    let mut head = BytesMut::with_capacity(total - payload_bytes);
    head.put_u8(VERSION);
    head.put_u8(0);
    head.put_u32_le(envelope.len() as u32);
    for (group, msg) in envelope {
        put_message(&mut head, &mut frame.chunks, *group, msg);
    }
    if !head.is_empty() {
        frame.chunks.push(head.freeze());
    }
    debug_assert_eq!(frame.chunks.iter().map(Bytes::len).sum::<usize>(), total);
    Ok(frame)
}

/// Encodes an envelope as as many frames as its size and message count need, in order. Each
/// frame decodes on its own.
pub fn encode_frames(envelope: &Envelope<Payload>) -> Result<Vec<Frame>, EncodeError> {
    let mut frames = Vec::new();
    let mut start = 0;
    let mut bytes = ENVELOPE_HEADER_BYTES;
    // Bounded by the envelope: each message joins exactly one frame.
    for (i, (_, msg)) in envelope.iter().enumerate() {
        let length = encoded_len(msg)?;
        assert!(
            ENVELOPE_HEADER_BYTES + length <= ENVELOPE_BYTES_MAX,
            "limits.rs: one message fits"
        );
        let full = i - start == ENVELOPE_MESSAGES_MAX || bytes + length > ENVELOPE_BYTES_MAX;
        if full {
            frames.push(encode_envelope(&envelope[start..i])?);
            start = i;
            bytes = ENVELOPE_HEADER_BYTES;
        }
        bytes += length;
    }
    if start < envelope.len() {
        frames.push(encode_envelope(&envelope[start..])?);
    }
    Ok(frames)
}

fn put_message(
    head: &mut BytesMut,
    chunks: &mut Vec<Bytes>,
    group: GroupId,
    msg: &Message<Payload>,
) {
    head.put_u64_le(group.0);
    let kind = match msg {
        Message::PreVote { .. } => KIND_PRE_VOTE,
        Message::PreVoteReply { .. } => KIND_PRE_VOTE_REPLY,
        Message::Vote { .. } => KIND_VOTE,
        Message::VoteReply { .. } => KIND_VOTE_REPLY,
        Message::Append { .. } => KIND_APPEND,
        Message::AppendReply { .. } => KIND_APPEND_REPLY,
        Message::DurableAck { .. } => KIND_DURABLE_ACK,
        Message::Heartbeat { .. } => KIND_HEARTBEAT,
        Message::HeartbeatReply { .. } => KIND_HEARTBEAT_REPLY,
        Message::TimeoutNow { .. } => KIND_TIMEOUT_NOW,
    };
    head.put_u8(kind);
    head.put_u64_le(msg.term());
    match msg {
        Message::PreVote { last_term, log_end, .. } => {
            head.put_u64_le(*last_term);
            head.put_u64_le(*log_end);
        }
        Message::Vote { last_term, log_end, transfer, .. } => {
            head.put_u64_le(*last_term);
            head.put_u64_le(*log_end);
            head.put_u8(u8::from(*transfer));
        }
        Message::PreVoteReply { granted, .. } | Message::VoteReply { granted, .. } => {
            head.put_u8(u8::from(*granted));
        }
        Message::Append {
            prev_end,
            prev_term,
            commit,
            seq,
            from_log_start,
            batches,
            payload,
            ..
        } => {
            head.put_u64_le(*prev_end);
            head.put_u64_le(*prev_term);
            head.put_u64_le(*commit);
            head.put_u64_le(*seq);
            put_optional_membership(head, from_log_start.as_ref());
            head.put_u32_le(batches.len() as u32);
            for (batch, bytes) in batches.iter().zip(payload) {
                head.put_u64_le(batch.base_offset);
                head.put_u64_le(batch.last_offset);
                head.put_u64_le(batch.term);
                head.put_u32_le(bytes.len() as u32);
                put_optional_membership(head, batch.membership.as_ref());
            }
            if !payload.is_empty() {
                chunks.push(head.split().freeze());
                chunks.extend(payload.iter().cloned());
            }
        }
        Message::AppendReply { seq, outcome, .. } => match outcome {
            AppendOutcome::Accepted { match_end, durable_end } => {
                head.put_u64_le(*seq);
                head.put_u8(0);
                head.put_u64_le(*match_end);
                head.put_u64_le(*durable_end);
            }
            AppendOutcome::Mismatch { hint_term, hint_end } => {
                head.put_u64_le(*seq);
                head.put_u8(1);
                head.put_u64_le(*hint_term);
                head.put_u64_le(*hint_end);
            }
        },
        Message::DurableAck { durable_end, .. } => head.put_u64_le(*durable_end),
        Message::Heartbeat { commit, quiesce, .. } => {
            head.put_u64_le(*commit);
            head.put_u8(u8::from(*quiesce));
        }
        Message::HeartbeatReply { durable_end, quiesced, .. } => {
            head.put_u64_le(*durable_end);
            head.put_u8(u8::from(*quiesced));
        }
        Message::TimeoutNow { .. } => {}
    }
}

fn put_optional_membership(head: &mut BytesMut, membership: Option<&Membership>) {
    let Some(m) = membership else {
        head.put_u8(0);
        return;
    };
    head.put_u8(1);
    head.put_u8(m.voters.len() as u8);
    head.put_u8(m.learners.len() as u8);
    for node in m.voters.iter().chain(&m.learners) {
        head.put_u32_le(*node);
    }
}

/// Decodes one frame into its messages, in order. Payload batches are slices of `frame`.
pub fn decode_envelope(frame: Bytes) -> Result<Envelope<Payload>, DecodeError> {
    if frame.len() > ENVELOPE_BYTES_MAX {
        return Err(DecodeError::FrameTooLarge(frame.len()));
    }
    let mut reader = Reader { frame: &frame, at: 0 };
    let version = reader.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let reserved = reader.u8()?;
    if reserved != 0 {
        return Err(DecodeError::Reserved(reserved));
    }
    let count = reader.u32()?;
    if count == 0 || count as usize > ENVELOPE_MESSAGES_MAX {
        return Err(DecodeError::MessageCount(count));
    }
    // Never more than the frame could hold, whatever the count says.
    let mut messages =
        Vec::with_capacity((count as usize).min(reader.remaining() / MESSAGE_MIN_BYTES));
    for _ in 0..count {
        let group = GroupId(reader.u64()?);
        messages.push((group, decode_message(&mut reader)?));
    }
    if reader.remaining() > 0 {
        return Err(DecodeError::TrailingBytes(reader.remaining()));
    }
    Ok(messages)
}

fn decode_message(reader: &mut Reader<'_>) -> Result<Message<Payload>, DecodeError> {
    let kind = reader.u8()?;
    let term = reader.u64()?;
    Ok(match kind {
        KIND_PRE_VOTE => {
            Message::PreVote { term, last_term: reader.u64()?, log_end: reader.u64()? }
        }
        KIND_PRE_VOTE_REPLY => Message::PreVoteReply { term, granted: reader.bool()? },
        KIND_VOTE => Message::Vote {
            term,
            last_term: reader.u64()?,
            log_end: reader.u64()?,
            transfer: reader.bool()?,
        },
        KIND_VOTE_REPLY => Message::VoteReply { term, granted: reader.bool()? },
        KIND_APPEND => decode_append(reader, term)?,
        KIND_APPEND_REPLY => {
            let seq = reader.u64()?;
            let outcome = match reader.u8()? {
                0 => {
                    AppendOutcome::Accepted { match_end: reader.u64()?, durable_end: reader.u64()? }
                }
                1 => AppendOutcome::Mismatch { hint_term: reader.u64()?, hint_end: reader.u64()? },
                other => return Err(DecodeError::Outcome(other)),
            };
            Message::AppendReply { term, seq, outcome }
        }
        KIND_DURABLE_ACK => Message::DurableAck { term, durable_end: reader.u64()? },
        KIND_HEARTBEAT => {
            Message::Heartbeat { term, commit: reader.u64()?, quiesce: reader.bool()? }
        }
        KIND_HEARTBEAT_REPLY => {
            Message::HeartbeatReply { term, durable_end: reader.u64()?, quiesced: reader.bool()? }
        }
        KIND_TIMEOUT_NOW => Message::TimeoutNow { term },
        other => return Err(DecodeError::Kind(other)),
    })
}

fn decode_append(reader: &mut Reader<'_>, term: u64) -> Result<Message<Payload>, DecodeError> {
    let prev_end = reader.u64()?;
    let prev_term = reader.u64()?;
    let commit = reader.u64()?;
    let seq = reader.u64()?;
    let from_log_start = reader.optional_membership()?;
    let count = reader.u32()?;
    if count as usize > APPEND_BATCHES_MAX {
        return Err(DecodeError::TooManyBatches(count));
    }
    let capacity = (count as usize).min(reader.remaining() / BATCH_META_MIN_BYTES);
    let mut batches = Vec::with_capacity(capacity);
    let mut lengths = Vec::with_capacity(capacity);
    let mut total = 0u64;
    for _ in 0..count {
        let base_offset = reader.u64()?;
        let last_offset = reader.u64()?;
        let batch_term = reader.u64()?;
        let length = reader.u32()?;
        if length == 0 {
            return Err(DecodeError::BatchBytes(length));
        }
        total += u64::from(length);
        if total > APPEND_PAYLOAD_BYTES_MAX as u64 {
            return Err(DecodeError::PayloadTooLarge(total));
        }
        let membership = reader.optional_membership()?;
        batches.push(BatchMeta { base_offset, last_offset, term: batch_term, membership });
        lengths.push(length as usize);
    }
    let mut payload = Vec::with_capacity(lengths.len());
    for length in lengths {
        payload.push(reader.slice(length)?);
    }
    Ok(Message::Append { term, prev_end, prev_term, commit, from_log_start, seq, batches, payload })
}

/// Bounds-checked little-endian reads over a received frame.
struct Reader<'a> {
    frame: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.frame.len() - self.at
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.remaining() < N {
            return Err(DecodeError::Truncated(self.at));
        }
        let out = self.frame[self.at..self.at + N].try_into().expect("N bytes");
        self.at += N;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_le_bytes)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Bool(other)),
        }
    }

    /// The next `length` bytes as a slice of the frame (no copy).
    fn slice(&mut self, length: usize) -> Result<Bytes, DecodeError> {
        if self.remaining() < length {
            return Err(DecodeError::Truncated(self.at));
        }
        let slice = self.frame.slice(self.at..self.at + length);
        self.at += length;
        Ok(slice)
    }

    fn optional_membership(&mut self) -> Result<Option<Membership>, DecodeError> {
        if !self.bool()? {
            return Ok(None);
        }
        let voters = self.u8()? as usize;
        let learners = self.u8()? as usize;
        if voters + learners > REPLICAS_MAX {
            return Err(DecodeError::TooManyReplicas(voters + learners));
        }
        let voters = (0..voters).map(|_| self.u32()).collect::<Result<_, _>>()?;
        let learners = (0..learners).map(|_| self.u32()).collect::<Result<_, _>>()?;
        Ok(Some(Membership { voters, learners }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn batch(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(bytes)
    }

    /// One message of every kind (and both append outcomes, with and without memberships).
    fn every_variant() -> Envelope<Payload> {
        let set = Membership { voters: vec![1, 2, 3], learners: vec![9] };
        let messages = vec![
            Message::PreVote { term: 5, last_term: 4, log_end: 100 },
            Message::PreVoteReply { term: 5, granted: true },
            Message::Vote { term: 6, last_term: 4, log_end: 100, transfer: true },
            Message::VoteReply { term: 6, granted: false },
            Message::Append {
                term: 6,
                prev_end: 100,
                prev_term: 4,
                commit: 90,
                from_log_start: Some(set.clone()),
                seq: 7,
                batches: vec![
                    BatchMeta::data(100, 102, 6),
                    BatchMeta {
                        base_offset: 103,
                        last_offset: 103,
                        term: 6,
                        membership: Some(set),
                    },
                ],
                payload: vec![batch(b"three records"), batch(b"a membership record")],
            },
            Message::Append {
                term: 6,
                prev_end: 104,
                prev_term: 6,
                commit: 104,
                from_log_start: None,
                seq: u64::MAX,
                batches: Vec::new(),
                payload: Vec::new(),
            },
            Message::AppendReply {
                term: 6,
                seq: 7,
                outcome: AppendOutcome::Accepted { match_end: 104, durable_end: 101 },
            },
            Message::AppendReply {
                term: 6,
                seq: 1,
                outcome: AppendOutcome::Mismatch { hint_term: 3, hint_end: 80 },
            },
            Message::DurableAck { term: 6, durable_end: 104 },
            Message::Heartbeat { term: 6, commit: 104, quiesce: true },
            Message::HeartbeatReply { term: 6, durable_end: 104, quiesced: false },
            Message::TimeoutNow { term: 6 },
        ];
        messages.into_iter().enumerate().map(|(i, m)| (GroupId(i as u64 * 1_000_003), m)).collect()
    }

    #[test]
    fn every_variant_round_trips() {
        let envelope = every_variant();
        let frame = encode_envelope(&envelope).unwrap();
        let bytes = frame.to_bytes();
        assert_eq!(bytes.len(), frame.len);
        assert_eq!(decode_envelope(bytes).unwrap(), envelope);
        // One message at a time too.
        for message in envelope {
            let one = vec![message];
            let bytes = encode_envelope(&one).unwrap().to_bytes();
            assert_eq!(decode_envelope(bytes).unwrap(), one);
        }
    }

    #[test]
    fn payloads_are_not_copied_either_way() {
        let envelope = every_variant();
        let frame = encode_envelope(&envelope).unwrap();
        let Message::Append { payload, .. } = &envelope[4].1 else { panic!() };
        // Sent: the caller's own buffers are chunks of the frame.
        for batch in payload {
            assert!(frame.chunks.iter().any(|c| c.as_ptr() == batch.as_ptr()));
        }
        // Received: every batch points into the received frame.
        let bytes = frame.to_bytes();
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        let decoded = decode_envelope(bytes.clone()).unwrap();
        let Message::Append { payload, .. } = &decoded[4].1 else { panic!() };
        for batch in payload {
            assert!(range.contains(&(batch.as_ptr() as usize)));
        }
    }

    fn random_membership(rng: &mut SmallRng) -> Membership {
        let voters = rng.gen_range(1..=4);
        let learners = rng.gen_range(0..=REPLICAS_MAX - voters);
        Membership {
            voters: (0..voters).map(|_| rng.gen()).collect(),
            learners: (0..learners).map(|_| rng.gen()).collect(),
        }
    }

    fn random_message(rng: &mut SmallRng) -> Message<Payload> {
        let term = rng.gen();
        match rng.gen_range(0..10) {
            0 => Message::PreVote { term, last_term: rng.gen(), log_end: rng.gen() },
            1 => Message::PreVoteReply { term, granted: rng.gen() },
            2 => Message::Vote {
                term,
                last_term: rng.gen(),
                log_end: rng.gen(),
                transfer: rng.gen(),
            },
            3 => Message::VoteReply { term, granted: rng.gen() },
            4 => {
                let count = rng.gen_range(0..20);
                let batches = (0..count)
                    .map(|_| BatchMeta {
                        base_offset: rng.gen(),
                        last_offset: rng.gen(),
                        term: rng.gen(),
                        membership: rng.gen_bool(0.2).then(|| random_membership(rng)),
                    })
                    .collect();
                let payload = (0..count)
                    .map(|_| {
                        Bytes::from(
                            (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect::<Vec<u8>>(),
                        )
                    })
                    .collect();
                Message::Append {
                    term,
                    prev_end: rng.gen(),
                    prev_term: rng.gen(),
                    commit: rng.gen(),
                    from_log_start: rng.gen_bool(0.3).then(|| random_membership(rng)),
                    seq: rng.gen(),
                    batches,
                    payload,
                }
            }
            5 => {
                let outcome = if rng.gen() {
                    AppendOutcome::Accepted { match_end: rng.gen(), durable_end: rng.gen() }
                } else {
                    AppendOutcome::Mismatch { hint_term: rng.gen(), hint_end: rng.gen() }
                };
                Message::AppendReply { term, seq: rng.gen(), outcome }
            }
            6 => Message::DurableAck { term, durable_end: rng.gen() },
            7 => Message::Heartbeat { term, commit: rng.gen(), quiesce: rng.gen() },
            8 => Message::HeartbeatReply { term, durable_end: rng.gen(), quiesced: rng.gen() },
            _ => Message::TimeoutNow { term },
        }
    }

    fn random_envelope(rng: &mut SmallRng) -> Envelope<Payload> {
        (0..rng.gen_range(1..40)).map(|_| (GroupId(rng.gen()), random_message(rng))).collect()
    }

    #[test]
    fn random_envelopes_round_trip() {
        let mut rng = SmallRng::seed_from_u64(140);
        for _ in 0..2_000 {
            let envelope = random_envelope(&mut rng);
            let bytes = encode_envelope(&envelope).unwrap().to_bytes();
            assert_eq!(decode_envelope(bytes).unwrap(), envelope);
        }
    }

    /// Random bytes, and valid frames with bytes changed, cut or appended: decoding returns an
    /// error or messages, never panics, and never returns more payload than the frame holds.
    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let seed: u64 =
            std::env::var("SPATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(141);
        println!("codec fuzz seed {seed} (rerun with SPATE_SEED={seed})");
        let mut rng = SmallRng::seed_from_u64(seed);
        let valid: Vec<Bytes> = (0..32)
            .map(|_| encode_envelope(&random_envelope(&mut rng)).unwrap().to_bytes())
            .collect();
        let (mut decoded, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let mut bytes = if rng.gen_bool(0.2) {
                (0..rng.gen_range(0..256)).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                valid[rng.gen_range(0..valid.len())].to_vec()
            };
            match rng.gen_range(0..4) {
                0 if !bytes.is_empty() => {
                    for _ in 0..rng.gen_range(1..4) {
                        let at = rng.gen_range(0..bytes.len());
                        bytes[at] = rng.gen();
                    }
                }
                1 => bytes.truncate(rng.gen_range(0..=bytes.len())),
                2 => bytes.extend((0..rng.gen_range(1..16)).map(|_| rng.gen::<u8>())),
                _ if bytes.len() > 6 => {
                    // Small values in a length or count field are where the bugs hide.
                    let at = rng.gen_range(0..bytes.len() - 4);
                    let value: u32 = [0, 1, 2, 255, 4096, 4097, u32::MAX][rng.gen_range(0..7)];
                    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
                }
                _ => {}
            }
            let length = bytes.len();
            match decode_envelope(Bytes::from(bytes)) {
                Ok(messages) => {
                    decoded += 1;
                    let payload: usize = messages
                        .iter()
                        .filter_map(|(_, m)| match m {
                            Message::Append { payload, .. } => {
                                Some(payload.iter().map(Bytes::len).sum::<usize>())
                            }
                            _ => None,
                        })
                        .sum();
                    assert!(payload <= length);
                }
                Err(_) => refused += 1,
            }
        }
        assert!(decoded > 0 && refused > 0, "{decoded} decoded, {refused} refused");
    }

    #[test]
    fn limits_are_enforced_both_ways() {
        // A frame claiming more messages, batches or replicas than allowed is refused before
        // anything is reserved for them.
        let mut frame = vec![VERSION, 0];
        frame.extend_from_slice(&(ENVELOPE_MESSAGES_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_envelope(Bytes::from(frame)),
            Err(DecodeError::MessageCount(ENVELOPE_MESSAGES_MAX as u32 + 1))
        );
        let append = |batches: Vec<BatchMeta>, payload: Payload| {
            vec![(
                GroupId(1),
                Message::Append {
                    term: 1,
                    prev_end: 0,
                    prev_term: 0,
                    commit: 0,
                    from_log_start: None,
                    seq: 1,
                    batches,
                    payload,
                },
            )]
        };
        let bytes = encode_envelope(&append(vec![BatchMeta::data(0, 0, 1)], vec![batch(b"x")]))
            .unwrap()
            .to_bytes();
        let count_at = ENVELOPE_HEADER_BYTES + MESSAGE_MIN_BYTES + 32 + 1;
        let mut too_many = bytes.to_vec();
        too_many[count_at..count_at + 4]
            .copy_from_slice(&(APPEND_BATCHES_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_envelope(Bytes::from(too_many)),
            Err(DecodeError::TooManyBatches(APPEND_BATCHES_MAX as u32 + 1))
        );
        let length_at = count_at + 4 + 24;
        let mut huge = bytes.to_vec();
        huge[length_at..length_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode_envelope(Bytes::from(huge)), Err(DecodeError::PayloadTooLarge(_))));
        let oversized = Bytes::from(vec![0u8; ENVELOPE_BYTES_MAX + 1]);
        assert_eq!(
            decode_envelope(oversized),
            Err(DecodeError::FrameTooLarge(ENVELOPE_BYTES_MAX + 1))
        );
        // The encoder refuses what the decoder would.
        let mismatch = append(vec![BatchMeta::data(0, 0, 1)], Vec::new());
        assert!(matches!(encode_envelope(&mismatch), Err(EncodeError::PayloadMismatch { .. })));
        let big = Bytes::from(vec![1u8; APPEND_PAYLOAD_BYTES_MAX + 1]);
        let too_big = append(vec![BatchMeta::data(0, 0, 1)], vec![big]);
        assert!(matches!(encode_envelope(&too_big), Err(EncodeError::PayloadTooLarge(_))));
        let crowd = Membership { voters: (0..=REPLICAS_MAX as u32).collect(), learners: vec![] };
        let crowded = vec![(
            GroupId(1),
            Message::Append {
                term: 1,
                prev_end: 0,
                prev_term: 0,
                commit: 0,
                from_log_start: Some(crowd),
                seq: 1,
                batches: Vec::new(),
                payload: Vec::new(),
            },
        )];
        assert!(matches!(encode_envelope(&crowded), Err(EncodeError::TooManyReplicas(_))));
    }

    #[test]
    fn large_envelopes_split_into_frames_that_decode_in_order() {
        // 70,000 heartbeats (more messages than one frame may hold) and appends of 6 MiB each
        // (three do not fit one frame's bytes).
        let mut envelope: Envelope<Payload> = (0..70_000u64)
            .map(|g| (GroupId(g), Message::Heartbeat { term: 2, commit: g, quiesce: false }))
            .collect();
        let chunk = Bytes::from(vec![7u8; 6 * 1024 * 1024]);
        for g in 0..3u64 {
            envelope.push((
                GroupId(100_000 + g),
                Message::Append {
                    term: 2,
                    prev_end: 0,
                    prev_term: 0,
                    commit: 0,
                    from_log_start: None,
                    seq: g,
                    batches: vec![BatchMeta::data(0, 9, 2)],
                    payload: vec![chunk.clone()],
                },
            ));
        }
        let frames = encode_frames(&envelope).unwrap();
        assert!(frames.len() >= 3, "{} frames", frames.len());
        let mut decoded = Vec::new();
        for frame in &frames {
            assert!(frame.len <= ENVELOPE_BYTES_MAX);
            decoded.extend(decode_envelope(frame.to_bytes()).unwrap());
        }
        assert_eq!(decoded, envelope);
    }

    #[test]
    fn an_outbox_drains_into_frames() {
        let mut outbox: crate::Outbox<Payload> = crate::Outbox::default();
        for (group, msg) in every_variant() {
            outbox.push(2, group, msg.clone());
            outbox.push(3, group, msg);
        }
        for (_node, envelope) in outbox.drain() {
            let frames = encode_frames(&envelope).unwrap();
            assert_eq!(frames.len(), 1);
            assert_eq!(decode_envelope(frames[0].to_bytes()).unwrap(), envelope);
        }
    }
}
