//! Spate's partition log: one append-only log per partition, stored as direct-IO segment files
//! and driven by the Glommio executor that owns the partition.
//!
//! Layout of this crate:
//! - [`log`]: the log itself: append with group commit, zero-copy reads, recovery, truncation,
//!   retention. Its module doc describes the write path and the offsets it tracks.
//! - [`segment`]: one segment's files, their on-disk layout, and the direct-IO helpers.
//! - [`index`]: sparse offset and time indexes, and their file format.
//! - [`scan`]: walking batches in a window of bytes, without IO (recovery's pure core).
//! - [`cache`]: the bounded in-memory cache of recent batches.
//! - [`journal`]: unwritten batches kept on a tmpfs, so `flush=never` can acknowledge before the
//!   device write and still survive a process crash (not wired into the log yet).
//! - [`producers`]: idempotent producers' sequences per partition (duplicates, gaps, fencing),
//!   consulted by the log where appends take offsets.
//! - [`replica_state`]: the small fsynced per-partition file of replication state (hard state,
//!   term history, membership floor, commit point).
//! - [`faults`]: hooks under the log's fdatasyncs and the steps of truncation and reset, for
//!   failure, crash and power-loss tests.
//! - [`config`], [`limits`], [`error`], [`clock`].
//!
//! The record batch format itself is `spate_protocol::batch`: clients build batches, the log
//! stores them byte for byte, and fetches return them unchanged.

pub mod cache;
pub mod clock;
pub mod config;
pub mod durable;
pub mod error;
pub mod faults;
pub mod index;
pub mod journal;
pub mod limits;
pub mod log;
pub mod memory;
pub mod producers;
pub mod replica_state;
pub mod scan;
pub mod segment;

pub use clock::{wall_clock_ms, Clock, ManualClock, SystemClock};
pub use config::{FlushPolicy, LogConfig};
pub use error::{LogError, Result};
pub use log::{
    Appended, Log, LogBytes, LogOffsets, LogOptions, LogRead, RecoveryReport, RetentionReport,
};
pub use segment::prime_dma_probe;
