//! Every bound and interval of the replication driver, in one place, each with its reason.

use spate_replication::limits::{APPEND_PAYLOAD_BYTES_MAX, ELECTION_TICKS_MIN_DEFAULT};

/// One driver tick: the core's unit of time. Every local replica of a shard is ticked by one
/// timer. With the core's defaults (election timeout 15..30 ticks, heartbeat 3) this gives
/// elections in 150..300 ms and heartbeats every 30 ms, quick enough for tests and a LAN.
pub const TICK_MS: u64 = 10;

/// Bytes of record batches one `Append` carries at most: the driver's read budget per
/// `SendAppend`. With one `Append` in flight per follower (see PROTOCOL.md), a follower's
/// throughput is about this much per round trip; 1 MiB over a ~0.3 ms loopback round trip is
/// far above what the disk takes.
pub const APPEND_READ_BYTES_MAX: usize = 1024 * 1024;

/// Proposals waiting for their commit on one partition. Bounds the waiter list and the bytes a
/// leader holds for acks=all; `propose` waits (first come, first served) beyond it.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 256;

/// Bytes of appends queued for one partition's log and not yet handed to it. A follower drops
/// further inbound `Append`s while over it (the leader resends after `APPEND_RESEND_TICKS`):
/// backpressure through the core's own retransmission.
pub const PARTITION_QUEUED_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Operations queued for one partition's log (appends, truncations, persists, held sends).
/// Appends are bounded by `PROPOSALS_IN_FLIGHT_MAX` and `PARTITION_QUEUED_BYTES_MAX`, the rest
/// are rare; past this the partition is taken offline (a driver bug, never input).
pub const PARTITION_IO_OPS_MAX: usize = 64 * 1024;

/// Bytes handed to the log in one `append_replicated` call: consecutive queued appends are
/// coalesced up to this (one write round and, under flush=always, one fdatasync for all).
pub const APPEND_ROUND_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Bytes of encoded frames queued for one peer and not yet taken by its stream. Frames past it
/// are dropped (the core resends what matters): a dead or slow peer never grows memory.
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The same bound while no connection to the peer is up: what waits for a dead peer is stale
/// by the time it returns (the core resends from its progress), and a restarted follower was
/// sent tens of MiB of old catch-up Appends before anything current.
pub const PEER_QUEUE_BYTES_UNCONNECTED_MAX: usize = 1024 * 1024;

/// Frames queued for one peer (keepalives and envelopes), for the same reason.
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;

/// A keepalive frame goes to every peer this often (in ticks) when nothing else did.
pub const KEEPALIVE_TICKS: u32 = 5;

/// A peer unheard for this many ticks is reported down (`Event::PeerDown`) to every local
/// replica: the node-level failure detector that lets idle groups quiesce.
pub const PEER_SILENCE_TICKS: u32 = 40;

/// The commit point is persisted (lazily) at most this often, in ticks, when it moved.
pub const COMMIT_PERSIST_TICKS: u32 = 50;

/// Reconnect backoff to a peer: first and largest wait.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 1_000;

/// Most peers (other brokers) one node talks to.
pub const PEERS_MAX: usize = spate_transport::limits::CONNECTIONS_MAX / 2;

/// Most replicated partitions one node (shard) runs.
pub const PARTITIONS_MAX: usize = 100_000;

/// Bytes read per step while scanning a log for membership records when a partition opens.
pub const OPEN_SCAN_READ_BYTES: usize = 4 * 1024 * 1024;

const _: () = assert!(APPEND_READ_BYTES_MAX <= APPEND_PAYLOAD_BYTES_MAX);
const _: () = assert!(APPEND_ROUND_BYTES_MAX <= spate_storage::limits::PENDING_BYTES_MAX);
const _: () = assert!(KEEPALIVE_TICKS * 4 <= PEER_SILENCE_TICKS);
// Silence is judged well after a heartbeat round, but a dead leader's node is reported before
// a few election timeouts have passed.
const _: () = assert!(PEER_SILENCE_TICKS <= 4 * ELECTION_TICKS_MIN_DEFAULT);
const _: () = assert!(PEER_QUEUE_BYTES_MAX >= 2 * spate_replication::limits::ENVELOPE_BYTES_MAX);

/// Ticks a producer's retry of an already-proposed batch waits for that batch to commit before
/// it is answered as lost leadership (retriable): 30 s.
pub const DUPLICATE_WAIT_TICKS_MAX: u32 = 3_000;
