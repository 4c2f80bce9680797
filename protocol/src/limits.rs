//! Every maximum the wire format enforces, in one place.

/// Largest record batch, header included. Bounds one append, one network read of a batch, and
/// the memory a single malformed length field can make us reserve. 4 MiB leaves room for the
/// 256 KiB - 1 MiB batches high-throughput producers use, with headroom.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most records in one batch. A record is at least 7 bytes, so this is never the tighter limit
/// for a full-size batch; it bounds per-batch loops when records are tiny.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;

/// Most headers on one record.
pub const RECORD_HEADERS_MAX: usize = 1024;

const _: () = assert!(BATCH_RECORDS_MAX * 7 >= BATCH_BYTES_MAX / 4);
