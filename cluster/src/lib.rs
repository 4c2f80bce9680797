//! Spate's replication driver: runs the sans-IO replication core (`spate-replication`) for
//! each replicated partition of a shard over the partition's real `spate_storage::Log` and the
//! QUIC transport (`spate-transport`), on the shard's Glommio executor.
//!
//! The core decides; this crate carries out its effects as `replication/PROTOCOL.md` obliges
//! (persist before send, truncate before append, durability reported per the flush policy,
//! batches read from the log for `Append`s) and turns commit points into acks=all replies.
//!
//! ```no_run
//! # async fn example(log: spate_storage::Log, creds: spate_transport::BrokerCredentials)
//! # -> Result<(), spate_cluster::ReplicationError> {
//! use spate_cluster::{NodeConfig, PartitionConfig, ReplicationNode};
//! use spate_replication::GroupId;
//! let config = NodeConfig {
//!     node_id: 1,
//!     listen: "127.0.0.1:9500".parse().unwrap(),
//!     peers: [(2, "127.0.0.1:9501".parse().unwrap()), (3, "127.0.0.1:9502".parse().unwrap())]
//!         .into_iter()
//!         .collect(),
//! };
//! let node = ReplicationNode::start(config, &creds)?; // on the shard's executor
//! let partition = node.open_partition(GroupId(7), &[1, 2, 3], log, PartitionConfig::default()).await?;
//! # let batch = bytes::BytesMut::new();
//! let committed = partition.propose(batch).await?; // acks=all: majority durable
//! println!("{}..={}", committed.base_offset, committed.last_offset);
//! # Ok(()) }
//! ```
//!
//! Layout:
//! - [`node`]: [`ReplicationNode`], one per shard: endpoint, one link (outbound connection and
//!   stream) per peer, inbound streams, the tick timer, the node-level failure detector, and the
//!   outbox that coalesces all partitions' messages per destination.
//! - [`partition`]: [`Partition`], one replicated partition: the core, its IO queue over the
//!   log and the replica-state file, proposals waiting for commit, describe.
//! - [`restore`]: reading a replica back from its log and state file.
//! - [`wire`]: frames on a peer stream (hello with incarnation, keepalive, envelope) and the
//!   checks an inbound `Append` gets.
//! - [`limits`], [`error`].
//! - `testing`: a broker on its own thread and executor, for the tests and the benchmark.
//!
//! Why a crate and not a module of `spate-replication`: the core stays free of Glommio,
//! storage and QUIC (its simulator and tests build and run without them), and the broker
//! depends on this crate the way it depends on the log.

pub mod error;
pub mod limits;
pub mod node;
pub mod partition;
pub mod restore;
#[doc(hidden)]
pub mod testing;
pub mod wire;

pub use error::{ProducerRefusal, ReplicationError};
pub use node::{NodeConfig, ReplicationNode};
pub use partition::{Ack, Committed, Partition, PartitionConfig, PartitionStatus, ReplicaStatus};
