//! `spate-loadgen`: Spate's load generator.
//!
//! - [`pacer`]: rate pacing and coordinated-omission-corrected latency (sans-IO).
//! - [`keys`]: key distributions and message sizes (sans-IO, seeded).
//! - [`stats`]: histograms, progress counters, percentiles.
//! - [`ceiling`]: the machine's own ceilings (direct IO, fdatasync, loopback TCP).
//! - [`run`]: the per-core workers (produce, consume, e2e).
//! - [`report`]: the final table and the JSON result.

pub mod ceiling;
pub mod failover;
pub mod keys;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pacer;
pub mod plot;
pub mod report;
pub mod run;
pub mod stats;
