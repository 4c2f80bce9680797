//! Sans-IO framing of a stream and the hello that opens every connection.
//!
//! A stream carries frames: `u32` big-endian payload length, then the payload. A length above
//! [`FRAME_BYTES_MAX`] is a protocol error (the connection is closed), so a peer cannot make
//! us buffer without bound.
//!
//! Hello (client → server, the payload of the first frame on the first bidirectional stream):
//! `b"SPHELLO1"` then the client's broker id (`u32` big-endian), 12 bytes. The reply (server →
//! client, on the same stream) is `b"SPHELLOK"` then the server's broker id, 12 bytes. Each
//! side checks the id against the peer's verified certificate.

use bytes::{Buf, Bytes, BytesMut};

use crate::certs::BrokerId;
use crate::limits::{FRAME_BYTES_MAX, FRAME_HEADER_BYTES};

const HELLO_MAGIC: &[u8; 8] = b"SPHELLO1";
const HELLO_REPLY_MAGIC: &[u8; 8] = b"SPHELLOK";
/// Bytes of a hello or a hello reply payload.
pub const HELLO_BYTES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {bytes} bytes exceeds the maximum of {FRAME_BYTES_MAX}")]
    TooLarge { bytes: u64 },
    #[error("malformed hello: {0}")]
    BadHello(&'static str),
}

/// The length prefix of a payload of `payload_bytes` bytes.
pub fn header(payload_bytes: usize) -> Result<[u8; FRAME_HEADER_BYTES], FrameError> {
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { bytes: payload_bytes as u64 });
    }
    Ok((payload_bytes as u32).to_be_bytes())
}

/// Takes one whole frame's payload off the front of `buf`, if a whole frame is there. Checks
/// the length before waiting for the payload, so an oversized frame fails at its header.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    let Some(prefix) = buf.get(..FRAME_HEADER_BYTES) else { return Ok(None) };
    let payload_bytes = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if payload_bytes > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { bytes: payload_bytes as u64 });
    }
    if buf.len() < FRAME_HEADER_BYTES + payload_bytes {
        return Ok(None);
    }
    buf.advance(FRAME_HEADER_BYTES);
    Ok(Some(buf.split_to(payload_bytes).freeze()))
}

fn encode(magic: &[u8; 8], id: BrokerId) -> Bytes {
    let mut out = Vec::with_capacity(HELLO_BYTES);
    out.extend_from_slice(magic);
    out.extend_from_slice(&id.to_be_bytes());
    Bytes::from(out)
}

fn decode(magic: &[u8; 8], payload: &[u8]) -> Result<BrokerId, FrameError> {
    if payload.len() != HELLO_BYTES {
        return Err(FrameError::BadHello("wrong length"));
    }
    if &payload[..8] != magic {
        return Err(FrameError::BadHello("wrong magic"));
    }
    Ok(u32::from_be_bytes([payload[8], payload[9], payload[10], payload[11]]))
}

/// The hello payload of broker `id`.
pub fn encode_hello(id: BrokerId) -> Bytes {
    encode(HELLO_MAGIC, id)
}

/// The broker id a hello payload claims.
pub fn decode_hello(payload: &[u8]) -> Result<BrokerId, FrameError> {
    decode(HELLO_MAGIC, payload)
}

/// The hello reply payload of broker `id`.
pub fn encode_hello_reply(id: BrokerId) -> Bytes {
    encode(HELLO_REPLY_MAGIC, id)
}

/// The broker id a hello reply payload claims.
pub fn decode_hello_reply(payload: &[u8]) -> Result<BrokerId, FrameError> {
    decode(HELLO_REPLY_MAGIC, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_only_when_whole() {
        let mut buf = BytesMut::new();
        assert_eq!(split_frame(&mut buf), Ok(None));
        buf.extend_from_slice(&header(5).unwrap());
        buf.extend_from_slice(b"hel");
        assert_eq!(split_frame(&mut buf), Ok(None));
        buf.extend_from_slice(b"lo");
        buf.extend_from_slice(&header(0).unwrap());
        assert_eq!(split_frame(&mut buf), Ok(Some(Bytes::from_static(b"hello"))));
        assert_eq!(split_frame(&mut buf), Ok(Some(Bytes::new())));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_frames_fail_at_the_header() {
        let mut buf = BytesMut::from(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes()[..]);
        assert!(matches!(split_frame(&mut buf), Err(FrameError::TooLarge { .. })));
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(split_frame(&mut buf), Err(FrameError::TooLarge { .. })));
        assert!(header(FRAME_BYTES_MAX + 1).is_err());
        assert!(header(FRAME_BYTES_MAX).is_ok());
    }

    #[test]
    fn hellos_round_trip_and_are_not_confused() {
        assert_eq!(decode_hello(&encode_hello(7)), Ok(7));
        assert_eq!(decode_hello_reply(&encode_hello_reply(9)), Ok(9));
        assert!(decode_hello(&encode_hello_reply(7)).is_err());
        assert!(decode_hello_reply(&encode_hello(7)).is_err());
        assert!(decode_hello(b"SPHELLO1").is_err());
        assert!(decode_hello(b"").is_err());
    }
}
