//! `spate-loadgen`: Spate's load generator.
//!
//! - [`pacer`]: rate pacing and coordinated-omission-corrected latency (sans-IO).
//! - [`keys`]: key distributions and message sizes (sans-IO, seeded).
//! - [`stats`]: histograms, progress counters, percentiles.
//! - [`ceiling`]: the machine's own ceilings (direct IO, fdatasync, loopback TCP).
//! - [`run`]: the per-core workers (produce, consume, e2e).
//! - [`report`]: the final table and the JSON result.
//! - `nats`, `iggy` (features of those names): the same scenarios against NATS JetStream and
//!   Apache Iggy, for the compare scripts in `benches/`.

pub mod ceiling;
pub mod failover;
#[cfg(feature = "iggy")]
pub mod iggy;
pub mod keys;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pacer;
pub mod plot;
pub mod report;
pub mod run;
pub mod stats;
