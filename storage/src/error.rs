//! The storage layer's typed errors.

use std::path::PathBuf;

use spate_protocol::batch::BatchError;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The requested offset is below the log start or past its end.
    #[error("offset {offset} out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// The batch handed to `append` is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// Stored bytes fail their checksum or structure; they are never returned as data.
    #[error("corrupt batch in {path} at byte {position}: {reason}")]
    Corruption { path: PathBuf, position: u64, reason: String },
    /// The device is full. Nothing of the failed append is visible; the log stays readable and
    /// appends work again once space is freed.
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    /// `truncate_to` must land on a batch boundary.
    #[error("offset {0} is not a batch boundary")]
    NotBatchBoundary(i64),
    /// A replicated append (`append_replicated`) must start exactly at the log end.
    #[error("replicated batch at offset {base_offset} does not start at the log end {log_end}")]
    NotAtLogEnd { base_offset: i64, log_end: i64 },
    /// Batches of one replicated append must follow each other without gap or overlap, with
    /// non-decreasing leader terms.
    #[error("replicated batch at offset {found} (term {term}) does not follow the previous one (expected offset {expected})")]
    NotContiguous { expected: i64, found: i64, term: u64 },
    /// One append larger than the log's pending budget could never be queued.
    #[error("append of {0} bytes exceeds the pending budget")]
    AppendTooLarge(usize),
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The log was closed, or an earlier IO failure made it refuse further work.
    #[error("log is closed")]
    Closed,
    /// An fdatasync failed: what that round wrote may or may not be on the device, and the
    /// kernel may already have dropped the dirty pages ("fsyncgate"), so the log refuses all
    /// further reads and appends until a restart, where recovery decides what the file holds.
    #[error("partition offline after a failed fdatasync ({0}); restart the broker to recover it")]
    Offline(String),
    #[error("too many segments ({0})")]
    TooManySegments(usize),
    /// An idempotent producer's batch does not continue its sequence: an earlier batch is
    /// missing (still in flight, or lost). Nothing was appended.
    #[error("producer {producer_id}: sequence {got} where {expected} was expected")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    /// The batch's producer epoch is older than the producer's current one: another producer
    /// took over its id (a zombie). Nothing was appended.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    ProducerFenced { producer_id: i64, epoch: i16, current_epoch: i16 },
    /// The partition has no state for this producer (never seen, expired or evicted) and the
    /// batch does not start its sequence at 0. Nothing was appended.
    #[error("producer {producer_id} is unknown here and sequence {sequence} is not 0")]
    UnknownProducer { producer_id: i64, sequence: i32 },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LogError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        error: impl Into<std::io::Error>,
    ) -> LogError {
        let path = path.into();
        let source: std::io::Error = error.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == std::io::ErrorKind::StorageFull
            || source.kind() == std::io::ErrorKind::QuotaExceeded
        {
            return LogError::DiskFull { path };
        }
        LogError::Io { op, path, source }
    }

    /// A copy for fanning one failure out to every waiting appender.
    pub(crate) fn duplicate(&self) -> LogError {
        match self {
            LogError::OffsetOutOfRange { offset, start, end } => {
                LogError::OffsetOutOfRange { offset: *offset, start: *start, end: *end }
            }
            LogError::InvalidBatch(e) => LogError::InvalidBatch(e.clone()),
            LogError::Corruption { path, position, reason } => LogError::Corruption {
                path: path.clone(),
                position: *position,
                reason: reason.clone(),
            },
            LogError::DiskFull { path } => LogError::DiskFull { path: path.clone() },
            LogError::NotBatchBoundary(o) => LogError::NotBatchBoundary(*o),
            LogError::NotAtLogEnd { base_offset, log_end } => {
                LogError::NotAtLogEnd { base_offset: *base_offset, log_end: *log_end }
            }
            LogError::NotContiguous { expected, found, term } => {
                LogError::NotContiguous { expected: *expected, found: *found, term: *term }
            }
            LogError::AppendTooLarge(n) => LogError::AppendTooLarge(*n),
            LogError::Config(c) => LogError::Config(c.clone()),
            LogError::Closed => LogError::Closed,
            LogError::Offline(reason) => LogError::Offline(reason.clone()),
            LogError::TooManySegments(n) => LogError::TooManySegments(*n),
            LogError::OutOfOrderSequence { producer_id, expected, got } => {
                LogError::OutOfOrderSequence {
                    producer_id: *producer_id,
                    expected: *expected,
                    got: *got,
                }
            }
            LogError::ProducerFenced { producer_id, epoch, current_epoch } => {
                LogError::ProducerFenced {
                    producer_id: *producer_id,
                    epoch: *epoch,
                    current_epoch: *current_epoch,
                }
            }
            LogError::UnknownProducer { producer_id, sequence } => {
                LogError::UnknownProducer { producer_id: *producer_id, sequence: *sequence }
            }
            LogError::Io { op, path, source } => LogError::Io {
                op,
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
