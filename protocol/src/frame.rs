//! Framing: how requests and responses are delimited on a byte stream. Sans-IO: bytes in,
//! frames out.
//!
//! ```text
//! frame_length   u32 LE   bytes after this field, at most limits::FRAME_BYTES_MAX
//! header_length  u32 LE   bytes of the flatbuffer that follows, at most frame_length - 4
//! header         the flatbuffer (a Request or a Response)
//! payload        frame_length - 4 - header_length bytes; raw record batches (fetch responses)
//! ```
//!
//! As in mini-redis: first check that a whole frame is buffered, then split it off. A length
//! prefix over the limit is refused before its body is buffered, so a peer cannot make us
//! reserve more than the limit.

use bytes::{Buf, BufMut, BytesMut};

use crate::limits::{FRAME_BYTES_MAX, HEADER_BYTES_MAX};

/// Bytes of the two length fields in front of every frame.
pub const PREFIX_BYTES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {length} bytes exceeds the {max}-byte limit")]
    TooLarge { length: usize, max: usize },
    #[error("frame of {frame} bytes cannot hold a {header}-byte header")]
    BadHeaderLength { frame: usize, header: usize },
}

/// One whole frame, split off the read buffer without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: BytesMut,
    pub payload: BytesMut,
}

/// Splits frames off the front of a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder { frame_bytes_max: FRAME_BYTES_MAX }
    }
}

impl FrameDecoder {
    /// A decoder with a lower frame limit than the protocol's (e.g. a broker's request limit).
    pub fn with_limit(frame_bytes_max: usize) -> FrameDecoder {
        FrameDecoder { frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX) }
    }

    /// Takes one whole frame off the front of `buffer`, or returns `Ok(None)` if more bytes are
    /// needed. An error means the stream cannot be resynchronized: answer and close.
    pub fn decode(&self, buffer: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(frame_length) = self.frame_length(buffer)? else { return Ok(None) };
        if buffer.len() < 4 + frame_length {
            return Ok(None);
        }
        let header_length = u32::from_le_bytes(buffer[4..8].try_into().expect("4 bytes")) as usize;
        if header_length > frame_length - 4 || header_length > HEADER_BYTES_MAX {
            return Err(FrameError::BadHeaderLength { frame: frame_length, header: header_length });
        }
        buffer.advance(PREFIX_BYTES);
        let mut body = buffer.split_to(frame_length - 4);
        let payload = body.split_off(header_length);
        Ok(Some(Frame { header: body, payload }))
    }

    /// Bytes still missing before the frame at the front of `buffer` is whole (0 if it is).
    /// Lets a reader size its next read, and lets it tell a stalled peer mid-frame from an
    /// idle one.
    pub fn missing(&self, buffer: &BytesMut) -> Result<usize, FrameError> {
        match self.frame_length(buffer)? {
            None => Ok(PREFIX_BYTES - buffer.len()),
            Some(length) => Ok((4 + length).saturating_sub(buffer.len())),
        }
    }

    /// The whole size of the frame at the front of `buffer` (length prefix included), once its
    /// prefix is there: what a reader must hold room for before it reads the body.
    pub fn frame_bytes(&self, buffer: &BytesMut) -> Result<Option<usize>, FrameError> {
        Ok(self.frame_length(buffer)?.map(|length| 4 + length))
    }

    fn frame_length(&self, buffer: &BytesMut) -> Result<Option<usize>, FrameError> {
        if buffer.len() < PREFIX_BYTES {
            return Ok(None);
        }
        let length = u32::from_le_bytes(buffer[0..4].try_into().expect("4 bytes")) as usize;
        if length > self.frame_bytes_max {
            return Err(FrameError::TooLarge { length, max: self.frame_bytes_max });
        }
        if length < 4 {
            return Err(FrameError::BadHeaderLength { frame: length, header: 0 });
        }
        Ok(Some(length))
    }
}

/// The 8-byte prefix for a frame with this header and payload size.
pub fn prefix(header_bytes: usize, payload_bytes: usize) -> Result<[u8; PREFIX_BYTES], FrameError> {
    let frame = 4 + header_bytes + payload_bytes;
    if frame > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge { length: frame, max: FRAME_BYTES_MAX });
    }
    let mut out = [0u8; PREFIX_BYTES];
    out[..4].copy_from_slice(&(frame as u32).to_le_bytes());
    out[4..].copy_from_slice(&(header_bytes as u32).to_le_bytes());
    Ok(out)
}

/// A whole frame with no payload, in one buffer.
pub fn encode(header: &[u8]) -> Result<BytesMut, FrameError> {
    let mut out = BytesMut::with_capacity(PREFIX_BYTES + header.len());
    out.put_slice(&prefix(header.len(), 0)?);
    out.put_slice(header);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_at_any_boundary() {
        let mut stream = BytesMut::new();
        stream.put_slice(&prefix(3, 2).unwrap());
        stream.put_slice(b"abcde");
        stream.put_slice(&encode(b"xyz").unwrap());
        let decoder = FrameDecoder::default();
        // Feed one byte at a time: frames appear exactly when whole.
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in stream.iter() {
            buffer.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].header[..], b"abc");
        assert_eq!(&frames[0].payload[..], b"de");
        assert_eq!(&frames[1].header[..], b"xyz");
        assert!(frames[1].payload.is_empty());
        assert!(buffer.is_empty());
    }

    #[test]
    fn oversized_and_inconsistent_lengths_are_refused() {
        let decoder = FrameDecoder::with_limit(100);
        let mut buffer = BytesMut::from(&[200u8, 0, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!(
            decoder.decode(&mut buffer),
            Err(FrameError::TooLarge { length: 200, max: 100 })
        );
        let mut buffer = BytesMut::from(&[8u8, 0, 0, 0, 9, 0, 0, 0, 1, 2, 3, 4][..]);
        assert!(matches!(decoder.decode(&mut buffer), Err(FrameError::BadHeaderLength { .. })));
        let mut buffer = BytesMut::from(&[2u8, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(decoder.decode(&mut buffer).is_err());
        assert!(prefix(FRAME_BYTES_MAX, 1).is_err());
    }

    #[test]
    fn missing_counts_down() {
        let decoder = FrameDecoder::default();
        let mut buffer = BytesMut::new();
        assert_eq!(decoder.missing(&buffer), Ok(8));
        buffer.put_slice(&prefix(10, 0).unwrap());
        assert_eq!(decoder.missing(&buffer), Ok(10));
        buffer.put_slice(&[0; 10]);
        assert_eq!(decoder.missing(&buffer), Ok(0));
    }
}
