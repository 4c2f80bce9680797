//! Walking the batches in a window of segment bytes, without IO: the pure core of recovery, index
//! rebuilds, reads and timestamp search; and walking the whole batches a log read returned.

use spate_protocol::batch::{self, BatchHeader, HEADER_LEN};

/// How much of each batch to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Header shape and offset continuity only: finds batch boundaries cheaply.
    Structure,
    /// Structure plus the CRC of every batch.
    Crc,
}

/// Why a scan of a window stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The batch at `position` continues past the window; read more from there.
    NeedMore { position: u64, batch_length: usize },
    /// The window ended exactly on a batch boundary.
    EndOfWindow,
    /// The bytes at `position` are not a valid next batch. All-zero bytes (never written) are
    /// the normal end of a log; anything else is damage, described by `reason`.
    Invalid { position: u64, zeroes: bool, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub position: u64,
    pub header: BatchHeader,
}

/// Scans batches in `window`, which holds file bytes starting at `window_position`.
/// `expected_offset` is the base offset the first batch must have (`None` to accept any).
/// Calls `visit` for each valid batch; a `false` from it stops the scan with `EndOfWindow`.
pub fn scan_window(
    window: &[u8],
    window_position: u64,
    mut expected_offset: Option<i64>,
    check: Check,
    mut visit: impl FnMut(Found, &[u8]) -> bool,
) -> Stop {
    let mut at = 0usize;
    loop {
        let rest = &window[at..];
        let position = window_position + at as u64;
        if rest.is_empty() {
            return Stop::EndOfWindow;
        }
        if rest.len() < HEADER_LEN {
            return Stop::NeedMore { position, batch_length: HEADER_LEN };
        }
        let header = BatchHeader::parse(rest).expect("length checked");
        let invalid = |reason: String| Stop::Invalid {
            position,
            zeroes: rest[..HEADER_LEN].iter().all(|b| *b == 0),
            reason,
        };
        if let Err(error) = header.check_shape() {
            return invalid(error.to_string());
        }
        if let Some(expected) = expected_offset {
            if header.base_offset != expected {
                return invalid(format!(
                    "base offset {} where {expected} was expected",
                    header.base_offset
                ));
            }
        }
        let length = header.batch_length as usize;
        if rest.len() < length {
            return Stop::NeedMore { position, batch_length: length };
        }
        let bytes = &rest[..length];
        if check == Check::Crc {
            if let Err(error) = batch::validate_crc(bytes) {
                return invalid(error.to_string());
            }
        }
        expected_offset = Some(header.next_offset());
        at += length;
        if !visit(Found { position, header }, bytes) {
            return Stop::EndOfWindow;
        }
    }
}

/// The batches in `bytes`, which hold whole batches back to back as [`crate::Log::read`] returns
/// them (checked when they were read): each header with the batch's bytes. Ends at the end of
/// `bytes`, or before anything that is not a whole batch.
pub fn batches(bytes: &[u8]) -> Batches<'_> {
    Batches { rest: bytes }
}

/// See [`batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Batches<'a> {
    type Item = (BatchHeader, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let header = BatchHeader::parse(self.rest).ok()?;
        let length = header.batch_length as usize;
        if !(HEADER_LEN..=self.rest.len()).contains(&length) {
            return None;
        }
        let (batch, rest) = self.rest.split_at(length);
        self.rest = rest;
        Some((header, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use spate_protocol::batch::{stamp, BatchBuilder, NewRecord};

    fn log_bytes(batches: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut offset = 0;
        for i in 0..batches {
            let mut builder = BatchBuilder::new();
            for _ in 0..=i {
                builder.push(&NewRecord {
                    value: Some(Bytes::from(vec![i as u8; 50])),
                    timestamp: i as i64,
                    ..Default::default()
                });
            }
            let mut batch = builder.finish().unwrap();
            stamp(&mut batch, offset, 1);
            offset += i as i64 + 1;
            out.extend_from_slice(&batch);
        }
        out
    }

    #[test]
    fn finds_every_batch_then_zeroes() {
        let mut bytes = log_bytes(4);
        let length = bytes.len();
        bytes.extend_from_slice(&[0u8; 200]);
        let mut found = Vec::new();
        let stop = scan_window(&bytes, 0, Some(0), Check::Crc, |f, _| {
            found.push(f);
            true
        });
        assert_eq!(found.len(), 4);
        assert_eq!(found[3].header.next_offset(), 10);
        match stop {
            Stop::Invalid { position, zeroes: true, .. } => assert_eq!(position, length as u64),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn partial_batch_needs_more_and_damage_is_invalid() {
        let bytes = log_bytes(3);
        let stop = scan_window(&bytes[..bytes.len() - 1], 0, Some(0), Check::Crc, |_, _| true);
        assert!(matches!(stop, Stop::NeedMore { .. }));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 3;
        damaged[last] ^= 0xff;
        let stop = scan_window(&damaged, 0, Some(0), Check::Crc, |_, _| true);
        assert!(matches!(stop, Stop::Invalid { zeroes: false, .. }));
        // Structure-only scanning does not read the CRC.
        let stop = scan_window(&damaged, 0, Some(0), Check::Structure, |_, _| true);
        assert_eq!(stop, Stop::EndOfWindow);
        // Offset discontinuity.
        let stop = scan_window(&bytes, 0, Some(5), Check::Crc, |_, _| true);
        assert!(matches!(stop, Stop::Invalid { position: 0, .. }));
    }

    #[test]
    fn batches_walks_whole_batches_and_stops_at_a_partial_one() {
        let bytes = log_bytes(3);
        let walked: Vec<_> = batches(&bytes).map(|(h, b)| (h.base_offset, b.len())).collect();
        assert_eq!(walked.len(), 3);
        assert_eq!(walked.iter().map(|(_, length)| length).sum::<usize>(), bytes.len());
        assert_eq!(walked[1].0, 1);
        assert_eq!(batches(&bytes[..bytes.len() - 1]).count(), 2);
        assert_eq!(batches(&[]).count(), 0);
    }
}
