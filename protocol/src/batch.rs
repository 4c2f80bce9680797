//! The record batch: the unit a producer sends, the log stores and a fetch returns, byte for byte.
//!
//! A batch is a fixed-width little-endian header followed by its records. The broker assigns
//! offsets by stamping `base_offset` and `leader_term` in place; both sit *before* the CRC'd region
//! so stamping never recomputes the CRC.
//!
//! ```text
//! offset size  field              notes
//! ------ ----  -----------------  -------------------------------------------------------------
//!      0    8  base_offset   i64  offset of the first record; stamped by the broker
//!      8    4  batch_length  u32  length of the whole batch in bytes, this header included
//!     12    8  leader_term   u64  term of the leader that appended it; stamped by the broker
//!     20    1  version       u8   format version, currently 1
//!     21    4  crc           u32  CRC-32 (IEEE, crc32fast) of bytes [25, batch_length)
//! ------ ----- CRC'd region starts here ----------------------------------------------------------
//!     25    2  attributes    u16  bits 0-2 compression (0 = none; others reserved),
//!                                 bit 3 timestamp type (0 = create time, 1 = log append time),
//!                                 bit 4 control batch (1 = one control record written by the
//!                                 replication layer, never by a client; see `control`),
//!                                 bits 5-15 reserved, must be 0
//!     27    4  last_offset_delta u32  offset of the last record minus base_offset
//!     31    8  first_timestamp  i64  ms since the Unix epoch
//!     39    8  max_timestamp    i64  largest record timestamp in the batch
//!     47    8  producer_id      i64  -1 when the producer is not idempotent
//!     55    2  producer_epoch   i16  -1 when unused
//!     57    4  base_sequence    i32  -1 when unused
//!     61    4  record_count     u32  number of records that follow
//!     65       records
//! ```
//!
//! Each record (varints are LEB128; signed ones zigzag-encoded, via `integer-encoding`):
//!
//! ```text
//! length           uvarint   bytes of the record after this field
//! attributes       u8        reserved, 0
//! timestamp_delta  varint    timestamp - first_timestamp
//! offset_delta     uvarint   offset - base_offset
//! key_length       varint    -1 for a null key
//! key              bytes
//! value_length     varint    -1 for a null value (a tombstone)
//! value            bytes
//! header_count     uvarint
//!   header_key_length   uvarint, header_key bytes (UTF-8)
//!   header_value_length varint (-1 = null), header_value bytes
//! ```
//!
//! Decoding and validation never panic on bad bytes: every read is bounds-checked and every
//! failure is a [`BatchError`].

use bytes::{BufMut, Bytes, BytesMut};
use integer_encoding::VarInt;

use crate::limits;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 65;
/// The only format version this code writes and reads.
pub const VERSION: u8 = 1;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_TERM: usize = 12;
const VERSION_AT: usize = 20;
const CRC: usize = 21;
/// First byte covered by the CRC.
pub const CRC_START: usize = 25;
const ATTRIBUTES: usize = 25;
const LAST_OFFSET_DELTA: usize = 27;
const FIRST_TIMESTAMP: usize = 31;
const MAX_TIMESTAMP: usize = 39;
const PRODUCER_ID: usize = 47;
const PRODUCER_EPOCH: usize = 55;
const BASE_SEQUENCE: usize = 57;
const RECORD_COUNT: usize = 61;
const _: () = assert!(RECORD_COUNT + 4 == HEADER_LEN);

const ATTR_COMPRESSION_MASK: u16 = 0b0111;
/// Attribute bit: timestamps are the broker's append time rather than the producer's.
pub const ATTR_LOG_APPEND_TIME: u16 = 0b1000;
/// Attribute bit: a control batch (leader marker, membership; see [`crate::control`]). Consumers
/// skip it; the broker refuses it from producers.
pub const ATTR_CONTROL: u16 = 0b1_0000;
const ATTR_RESERVED_MASK: u16 = !(ATTR_COMPRESSION_MASK | ATTR_LOG_APPEND_TIME | ATTR_CONTROL);

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} is out of range")]
    BadLength(u64),
    #[error("unsupported batch format version {0}")]
    BadVersion(u8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("batch has {0} records; must be between 1 and the record limit")]
    BadRecordCount(u32),
    #[error("malformed record {index}: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error("record count {count} does not match last offset delta {last_offset_delta}")]
    OffsetDeltaMismatch { count: u32, last_offset_delta: u32 },
    #[error("base offset {0} is out of range (0..={max})", max = limits::OFFSET_MAX)]
    BadBaseOffset(i64),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fixed header of a batch, decoded. Reading it checks only that the header bytes exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: u32,
    pub leader_term: u64,
    pub version: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: u32,
}

impl BatchHeader {
    /// Decodes the header at the start of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_LEN {
            return Err(BatchError::Truncated { needed: HEADER_LEN, available: bytes.len() });
        }
        Ok(BatchHeader {
            base_offset: u64_at(bytes, BASE_OFFSET) as i64,
            batch_length: u32_at(bytes, BATCH_LENGTH),
            leader_term: u64_at(bytes, LEADER_TERM),
            version: bytes[VERSION_AT],
            crc: u32_at(bytes, CRC),
            attributes: u16_at(bytes, ATTRIBUTES),
            last_offset_delta: u32_at(bytes, LAST_OFFSET_DELTA),
            first_timestamp: u64_at(bytes, FIRST_TIMESTAMP) as i64,
            max_timestamp: u64_at(bytes, MAX_TIMESTAMP) as i64,
            producer_id: u64_at(bytes, PRODUCER_ID) as i64,
            producer_epoch: u16_at(bytes, PRODUCER_EPOCH) as i16,
            base_sequence: u32_at(bytes, BASE_SEQUENCE) as i32,
            record_count: u32_at(bytes, RECORD_COUNT),
        })
    }

    /// Whether this is a control batch (replication metadata, hidden from consumers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Offset of the last record in the batch. Saturates rather than overflows on a header
    /// that [`check_shape`](Self::check_shape) would refuse.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// Offset just past the batch (saturating, as [`last_offset`](Self::last_offset)).
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Checks what can be checked without the body: version, length bounds, attributes, counts.
    /// A scanner uses this to find batch boundaries; [`validate`] adds the CRC and the records.
    pub fn check_shape(&self) -> Result<(), BatchError> {
        if self.version != VERSION {
            return Err(BatchError::BadVersion(self.version));
        }
        let length = self.batch_length as usize;
        if !(HEADER_LEN..=limits::BATCH_BYTES_MAX).contains(&length) {
            return Err(BatchError::BadLength(u64::from(self.batch_length)));
        }
        if self.attributes & (ATTR_RESERVED_MASK | ATTR_COMPRESSION_MASK) != 0 {
            return Err(BatchError::BadAttributes(self.attributes));
        }
        if self.record_count == 0 || self.record_count as usize > limits::BATCH_RECORDS_MAX {
            return Err(BatchError::BadRecordCount(self.record_count));
        }
        if self.last_offset_delta != self.record_count - 1 {
            return Err(BatchError::OffsetDeltaMismatch {
                count: self.record_count,
                last_offset_delta: self.last_offset_delta,
            });
        }
        // So that base + delta + 1 never overflows, whatever a peer wrote.
        if !(0..=limits::OFFSET_MAX - i64::from(self.record_count)).contains(&self.base_offset) {
            return Err(BatchError::BadBaseOffset(self.base_offset));
        }
        Ok(())
    }
}

/// Computes the CRC of a whole batch's covered region.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// Validates the header shape and CRC of the batch at the start of `bytes`, and that exactly
/// `batch_length` bytes are present. Returns the header. The records are not walked: the CRC
/// guarantees they are what the producer wrote, and [`validate_records`] walks them when needed.
pub fn validate_crc(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    header.check_shape()?;
    let length = header.batch_length as usize;
    if bytes.len() < length {
        return Err(BatchError::Truncated { needed: length, available: bytes.len() });
    }
    let computed = compute_crc(&bytes[..length]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    Ok(header)
}

/// Full validation of a batch arriving from the network: shape, CRC, and every record decodes
/// with the offset deltas 0, 1, 2, ... `bytes` must hold exactly one batch.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate_crc(bytes)?;
    if bytes.len() != header.batch_length as usize {
        return Err(BatchError::BadLength(bytes.len() as u64));
    }
    validate_records(bytes, &header)?;
    Ok(header)
}

fn validate_records(bytes: &[u8], header: &BatchHeader) -> Result<(), BatchError> {
    let records = Records::new(bytes, *header);
    let mut index = 0u32;
    for record in records {
        let record = record?;
        if record.offset != header.base_offset.saturating_add(i64::from(index)) {
            return Err(BatchError::BadRecord { index, reason: "offset delta out of sequence" });
        }
        index += 1;
    }
    if index != header.record_count {
        return Err(BatchError::BadRecordCount(index));
    }
    Ok(())
}

/// Stamps the broker-assigned base offset and leader term into a batch, in place.
/// The CRC stays valid because neither field is covered by it.
pub fn stamp(batch: &mut [u8], base_offset: i64, leader_term: u64) {
    assert!(batch.len() >= HEADER_LEN, "stamp needs a whole header");
    assert!((0..=limits::OFFSET_MAX).contains(&base_offset));
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
    batch[LEADER_TERM..LEADER_TERM + 8].copy_from_slice(&leader_term.to_le_bytes());
}

/// Rewrites a finished batch's idempotent-producer fields and its CRC, in place (a producer
/// whose partition must start its sequence over). Costs one pass of the CRC over the batch.
pub fn restamp_identity(batch: &mut [u8], identity: BatchIdentity) {
    assert!(batch.len() >= HEADER_LEN, "restamp needs a whole header");
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&identity.producer_id.to_le_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2]
        .copy_from_slice(&identity.producer_epoch.to_le_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&identity.base_sequence.to_le_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as decoded from a batch; key, value and header values borrow the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// Iterator over the records of one batch. Stops at the first malformed record, yielding its
/// error once.
pub struct Records<'a> {
    body: &'a [u8],
    position: usize,
    header: BatchHeader,
    yielded: u32,
    failed: bool,
}

impl<'a> Records<'a> {
    /// `batch` must start with the header described by `header`.
    pub fn new(batch: &'a [u8], header: BatchHeader) -> Records<'a> {
        let end = (header.batch_length as usize).min(batch.len());
        let body = if end >= HEADER_LEN { &batch[HEADER_LEN..end] } else { &[] };
        Records { body, position: 0, header, yielded: 0, failed: false }
    }

    fn decode_one(&mut self) -> Result<Record<'a>, BatchError> {
        let index = self.yielded;
        let bad = |reason| BatchError::BadRecord { index, reason };
        let mut cursor = Cursor { bytes: self.body, position: self.position };
        let length = cursor.uvarint().ok_or(bad("bad length"))?;
        let start = cursor.position;
        let end = start
            .checked_add(usize::try_from(length).map_err(|_| bad("bad length"))?)
            .filter(|end| *end <= self.body.len())
            .ok_or(bad("length past end of batch"))?;
        let mut record = Cursor { bytes: &self.body[..end], position: start };
        let _attributes = record.take(1).ok_or(bad("missing attributes"))?;
        let timestamp_delta = record.varint().ok_or(bad("bad timestamp delta"))?;
        let offset_delta = record.uvarint().ok_or(bad("bad offset delta"))?;
        if offset_delta > u64::from(self.header.last_offset_delta) {
            return Err(bad("offset delta past the batch"));
        }
        let key = record.nullable_bytes().ok_or(bad("bad key"))?;
        let value = record.nullable_bytes().ok_or(bad("bad value"))?;
        let header_count = record.uvarint().ok_or(bad("bad header count"))?;
        if header_count > limits::RECORD_HEADERS_MAX as u64 {
            return Err(bad("too many headers"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key_length = record.uvarint().ok_or(bad("bad header key length"))?;
            let key_bytes = record.take(key_length).ok_or(bad("header key past end"))?;
            let key = std::str::from_utf8(key_bytes).map_err(|_| bad("header key not UTF-8"))?;
            let value = record.nullable_bytes().ok_or(bad("bad header value"))?;
            headers.push((key, value));
        }
        if record.position != end {
            return Err(bad("trailing bytes in record"));
        }
        self.position = end;
        Ok(Record {
            // offset_delta <= last_offset_delta < 2^32: no overflow but at a saturated end.
            offset: self.header.base_offset.saturating_add(offset_delta as i64),
            timestamp: self.header.first_timestamp.wrapping_add(timestamp_delta),
            key,
            value,
            headers,
        })
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.yielded >= self.header.record_count {
            return None;
        }
        match self.decode_one() {
            Ok(record) => {
                self.yielded += 1;
                Some(Ok(record))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// Bounds-checked reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, length: u64) -> Option<&'a [u8]> {
        let length = usize::try_from(length).ok()?;
        let end = self.position.checked_add(length)?;
        let slice = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(slice)
    }

    fn uvarint(&mut self) -> Option<u64> {
        let (value, used) = u64::decode_var(self.bytes.get(self.position..)?)?;
        self.position += used;
        Some(value)
    }

    fn varint(&mut self) -> Option<i64> {
        let (value, used) = i64::decode_var(self.bytes.get(self.position..)?)?;
        self.position += used;
        Some(value)
    }

    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.varint()? {
            -1 => Some(None),
            length if length >= 0 => self.take(length as u64).map(Some),
            _ => None,
        }
    }
}

/// A record to be put in a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// Builds one batch from records; clients use it, and so do tests and benches.
pub struct BatchBuilder {
    buffer: BytesMut,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(4096)
    }

    pub fn with_capacity(capacity: usize) -> BatchBuilder {
        let mut buffer = BytesMut::with_capacity(capacity.max(HEADER_LEN));
        buffer.put_bytes(0, HEADER_LEN);
        BatchBuilder { buffer, record_count: 0, first_timestamp: 0, max_timestamp: 0 }
    }

    /// Bytes the batch would have if built now.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes `record` would add to the batch as its first record (later records may differ by a
    /// byte or two: their timestamp and offset deltas are encoded relative to the first).
    pub fn encoded_len(record: &NewRecord) -> usize {
        record_len(record, 0, 0).1
    }

    /// Appends a record. The caller keeps the batch within [`limits::BATCH_BYTES_MAX`] and
    /// [`limits::BATCH_RECORDS_MAX`]; `finish` refuses a batch that is not. The record is
    /// written straight into the batch: its value is copied once.
    pub fn push(&mut self, record: &NewRecord) {
        if self.record_count == 0 {
            self.first_timestamp = record.timestamp;
            self.max_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let timestamp_delta = record.timestamp.wrapping_sub(self.first_timestamp);
        let offset_delta = u64::from(self.record_count);
        let (body, total) = record_len(record, timestamp_delta, offset_delta);
        let start = self.buffer.len();
        self.buffer.resize(start + total, 0);
        let mut out = Writer { buf: &mut self.buffer[start..], at: 0 };
        out.uvarint(body as u64);
        out.bytes(&[0]); // attributes
        out.varint(timestamp_delta);
        out.uvarint(offset_delta);
        out.nullable(record.key.as_deref());
        out.nullable(record.value.as_deref());
        out.uvarint(record.headers.len() as u64);
        for header in &record.headers {
            out.uvarint(header.key.len() as u64);
            out.bytes(header.key.as_bytes());
            out.nullable(header.value.as_deref());
        }
        debug_assert_eq!(out.at, total, "record_len and the writes agree");
        self.record_count += 1;
    }

    /// Writes the header and CRC; base offset and term are 0 until the broker stamps them.
    pub fn finish(self) -> Result<BytesMut, BatchError> {
        self.finish_with(BatchIdentity::default())
    }

    /// Like [`finish`](Self::finish), with idempotent-producer fields.
    pub fn finish_with(self, identity: BatchIdentity) -> Result<BytesMut, BatchError> {
        self.finish_with_attributes(identity, 0)
    }

    /// Like [`finish`](Self::finish), with the control attribute set (see [`crate::control`]).
    pub(crate) fn finish_control(self) -> Result<BytesMut, BatchError> {
        self.finish_with_attributes(BatchIdentity::default(), ATTR_CONTROL)
    }

    fn finish_with_attributes(
        mut self,
        identity: BatchIdentity,
        attributes: u16,
    ) -> Result<BytesMut, BatchError> {
        assert_eq!(attributes & ATTR_RESERVED_MASK, 0, "only defined attribute bits");
        if self.record_count == 0 || self.record_count as usize > limits::BATCH_RECORDS_MAX {
            return Err(BatchError::BadRecordCount(self.record_count));
        }
        if self.buffer.len() > limits::BATCH_BYTES_MAX {
            return Err(BatchError::BadLength(self.buffer.len() as u64));
        }
        let length = self.buffer.len() as u32;
        let header = &mut self.buffer[..HEADER_LEN];
        header[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        header[VERSION_AT] = VERSION;
        header[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_le_bytes());
        header[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&(self.record_count - 1).to_le_bytes());
        header[FIRST_TIMESTAMP..FIRST_TIMESTAMP + 8]
            .copy_from_slice(&self.first_timestamp.to_le_bytes());
        header[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        header[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&identity.producer_id.to_le_bytes());
        header[PRODUCER_EPOCH..PRODUCER_EPOCH + 2]
            .copy_from_slice(&identity.producer_epoch.to_le_bytes());
        header[BASE_SEQUENCE..BASE_SEQUENCE + 4]
            .copy_from_slice(&identity.base_sequence.to_le_bytes());
        header[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&self.record_count.to_le_bytes());
        let crc = compute_crc(&self.buffer);
        self.buffer[CRC..CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(self.buffer)
    }
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder::new()
    }
}

/// Idempotent-producer identity of a batch; all -1 when unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchIdentity {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for BatchIdentity {
    fn default() -> Self {
        BatchIdentity { producer_id: -1, producer_epoch: -1, base_sequence: -1 }
    }
}

/// A record's body length (what its length prefix says) and its whole encoded length.
fn record_len(record: &NewRecord, timestamp_delta: i64, offset_delta: u64) -> (usize, usize) {
    fn nullable(bytes: Option<&[u8]>) -> usize {
        bytes.map_or(1, |b| (b.len() as i64).required_space() + b.len())
    }
    let mut body = 1 + timestamp_delta.required_space() + offset_delta.required_space();
    body += nullable(record.key.as_deref()) + nullable(record.value.as_deref());
    body += (record.headers.len() as u64).required_space();
    for header in &record.headers {
        body += (header.key.len() as u64).required_space()
            + header.key.len()
            + nullable(header.value.as_deref());
    }
    (body, (body as u64).required_space() + body)
}

/// Writes a record's fields into the room `push` made for it (sized by `record_len`).
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn uvarint(&mut self, value: u64) {
        self.at += value.encode_var(&mut self.buf[self.at..]);
    }

    fn varint(&mut self, value: i64) {
        self.at += value.encode_var(&mut self.buf[self.at..]);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn nullable(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.varint(-1),
            Some(bytes) => {
                self.varint(bytes.len() as i64);
                self.bytes(bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn record(key: Option<&str>, value: &str, timestamp: i64) -> NewRecord {
        NewRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: vec![Header { key: "h".into(), value: Some(Bytes::from_static(b"v")) }],
            timestamp,
        }
    }

    fn sample() -> BytesMut {
        let mut builder = BatchBuilder::new();
        builder.push(&record(Some("k1"), "hello", 1_000));
        builder.push(&record(None, "world", 999));
        builder.push(&NewRecord { timestamp: 1_005, ..Default::default() });
        builder.finish().expect("valid batch")
    }

    #[test]
    fn base_offsets_near_the_top_are_refused_not_overflowed() {
        // The base offset is outside the CRC: a peer can set anything there.
        for base in [i64::MAX, i64::MAX - 1, limits::OFFSET_MAX - 2, -1, i64::MIN] {
            let mut batch = sample();
            batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base.to_le_bytes());
            assert_eq!(validate(&batch), Err(BatchError::BadBaseOffset(base)), "base {base}");
            // A header that skipped the shape check still never panics.
            let header = BatchHeader::parse(&batch).unwrap();
            assert!(header.next_offset() >= header.base_offset.min(0));
            assert!(Records::new(&batch, header).count() <= 3);
        }
        let mut batch = sample();
        batch[BASE_OFFSET..BASE_OFFSET + 8]
            .copy_from_slice(&(limits::OFFSET_MAX - 3).to_le_bytes());
        assert!(validate(&batch).is_ok(), "the last batch that fits");
    }

    #[test]
    fn round_trip() {
        let mut batch = sample();
        stamp(&mut batch, 42, 7);
        let header = validate(&batch).expect("valid");
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.leader_term, 7);
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(header.first_timestamp, 1_000);
        assert_eq!(header.max_timestamp, 1_005);
        let records: Vec<_> = Records::new(&batch, header).map(|r| r.unwrap()).collect();
        assert_eq!(records[0].offset, 42);
        assert_eq!(records[0].key, Some(&b"k1"[..]));
        assert_eq!(records[0].value, Some(&b"hello"[..]));
        assert_eq!(records[0].headers, vec![("h", Some(&b"v"[..]))]);
        assert_eq!(records[1].key, None);
        assert_eq!(records[1].timestamp, 999);
        assert_eq!(records[2].offset, 44);
        assert_eq!(records[2].value, None);
        assert!(records[2].headers.is_empty());
    }

    #[test]
    fn restamping_the_identity_rewrites_the_fields_and_the_crc() {
        let mut batch = sample();
        let identity = BatchIdentity { producer_id: 9, producer_epoch: 2, base_sequence: 40 };
        restamp_identity(&mut batch, identity);
        let header = validate(&batch).expect("valid after restamp");
        assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (9, 2, 40));
        let mut builder = BatchBuilder::new();
        builder.push(&record(Some("k1"), "hello", 1_000));
        builder.push(&record(None, "world", 999));
        builder.push(&NewRecord { timestamp: 1_005, ..Default::default() });
        assert_eq!(batch, builder.finish_with(identity).unwrap(), "as if built with it");
    }

    #[test]
    fn stamping_keeps_crc_valid() {
        let mut batch = sample();
        let crc_before = BatchHeader::parse(&batch).unwrap().crc;
        stamp(&mut batch, limits::OFFSET_MAX / 2, u64::MAX);
        assert_eq!(BatchHeader::parse(&batch).unwrap().crc, crc_before);
        validate(&batch).expect("still valid");
    }

    #[test]
    fn every_flipped_byte_is_detected_or_harmless() {
        let batch = sample();
        for at in 0..batch.len() {
            let mut damaged = batch.clone();
            damaged[at] ^= 0x5a;
            let result = validate(&damaged);
            let stamped_field = (BASE_OFFSET..BASE_OFFSET + 8).contains(&at)
                || (LEADER_TERM..LEADER_TERM + 8).contains(&at);
            if stamped_field {
                // Base offset and term are outside the CRC by design; a negative offset is
                // still rejected.
                continue;
            }
            assert!(result.is_err(), "flip at byte {at} went unnoticed");
        }
    }

    #[test]
    fn encoded_len_matches_a_real_first_record() {
        for record in [
            record(Some("k1"), "hello", 1_000),
            record(None, &"x".repeat(300), 5),
            NewRecord::default(),
        ] {
            let mut builder = BatchBuilder::new();
            builder.push(&record);
            assert_eq!(BatchBuilder::encoded_len(&record), builder.len() - HEADER_LEN);
        }
    }

    #[test]
    fn empty_batch_is_refused() {
        assert!(matches!(BatchBuilder::new().finish(), Err(BatchError::BadRecordCount(0))));
    }

    #[test]
    fn truncated_batches_are_errors() {
        let batch = sample();
        for length in 0..batch.len() {
            assert!(validate(&batch[..length]).is_err(), "length {length}");
        }
    }

    /// Seeded fuzzing: random bytes and mutated valid batches never panic the decoder.
    #[test]
    fn fuzz_never_panics() {
        let seed: u64 = std::env::var("SPATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("fuzz seed {seed} (rerun with SPATE_SEED={seed})");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let valid = sample();
        for _ in 0..20_000 {
            let mut bytes = if rng.gen_bool(0.5) {
                let length = rng.gen_range(0..200);
                (0..length).map(|_| rng.gen()).collect::<Vec<u8>>()
            } else {
                valid.to_vec()
            };
            let flips = rng.gen_range(1..4);
            for _ in 0..flips {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if rng.gen_bool(0.2) {
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            // Decode records even when the CRC fails, to exercise the record parser on garbage.
            if let Ok(header) = BatchHeader::parse(&bytes) {
                for record in Records::new(&bytes, header).take(1000) {
                    let _ = record;
                }
            }
            let _ = validate(&bytes);
        }
    }
}
