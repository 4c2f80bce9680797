//! The Spate broker: a thread-per-core server over the partition log.
//!
//! Layout:
//! - [`server`]: the runtime: one pinned Glommio executor per shard, the cross-shard mesh,
//!   listeners, connections, retention, shutdown.
//! - [`shard`]: one shard's partitions and the handler of every request; cross-shard calls.
//! - [`catalog`]: topics, configs and the partition-to-shard assignment (durable).
//! - [`offsets`]: committed consumer offsets, durable in an internal log.
//! - [`producer_ids`]: idempotent producers' ids and epochs, durable, unique across restarts.
//! - [`config`]: configuration file, flags, layout file.
//! - [`limits`]: every maximum the broker enforces.
//! - [`logging`]: log output that survives a full disk.
//!
//! The `spate` binary (`src/main.rs`, its commands in `src/cli/`, a module of the binary only)
//! runs a broker (`spate serve`) or acts as a client.

pub mod catalog;
pub mod cluster;
pub mod config;
pub mod group;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod offsets;
pub mod producer_ids;
pub mod server;
pub mod shard;
pub mod tune;
