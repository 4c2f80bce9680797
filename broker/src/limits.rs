//! Every maximum the broker enforces, in one place.
//!
//! # A shard's memory, worst case
//!
//! What one shard can hold at once, with the defaults (P = partitions it owns, C = open
//! connections, at most `CONNECTIONS_PER_SHARD_MAX`):
//!
//! | what | bound |
//! |---|---|
//! | request frames being read or handled (produce batches until appended) | `REQUEST_MEMORY_PER_SHARD_BYTES_MAX` = 256 MiB |
//! | fetch responses being read or written | `FETCH_MEMORY_PER_SHARD_BYTES_MAX` = 256 MiB |
//! | connection read buffers between frames | C x 64 KiB (4096 x 64 KiB = 256 MiB) |
//! | replies queued per connection | `REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX` per connection, covered by the two budgets above |
//! | tail caches, all logs | `LOG_CACHE_PER_SHARD_BYTES_MAX` = 256 MiB, or P x 16 KiB (`storage::limits::CACHE_BYTES_PER_LOG_MIN`) beyond 16,384 partitions |
//! | batches appended but not yet written, all logs | `UNWRITTEN_PER_SHARD_BYTES_MAX` = 128 MiB, plus the same bytes in the journal's tmpfs (its current files are mapped, so these pages show in the broker's RSS as shared memory; each partition maps 8 MiB of address space) |
//! | write buffers of the rounds being written | one per log with unwritten batches, each at most `storage::limits::WRITE_ROUND_TARGET_BYTES` (1 MiB) plus one batch, copies of unwritten bytes: within twice the unwritten budget |
//! | read-ahead of consumers catching up from disk | `storage::limits::READ_STREAMS_PER_SHARD_MAX` x `READ_AHEAD_BUFFERS` x `READ_AHEAD_BUFFER_BYTES` = 8 x 4 x 1 MiB = 32 MiB |
//! | consumer groups | `GROUPS_PER_SHARD_MAX` x `MEMBERS_PER_GROUP_MAX` members of bounded strings |
//! | Glommio's registered IO buffers | 3 rings x 10 MiB |
//!
//! Queued produce batches count against the request budget (they are slices of request
//! frames) until they are acknowledged: written, or under `flush=never` with a journal,
//! journaled; from then until written, against their log's pending budget
//! (`storage::limits::PENDING_BYTES_MAX`, 64 MiB per log) and the shard's unwritten budget
//! (see `storage::memory`). Only the tail caches' floor still grows with P: 16 KiB per
//! partition beyond 16,384 partitions on one shard.
//! `broker/tests/durability.rs` checks that 32 connections offering ~300 MB of produces at once
//! grow a broker with a 16 MiB request budget by well under 100 MiB.

use spate_protocol::limits as wire;

/// Largest request frame a client may send. Produce requests carry their batches inside, so it
/// must hold a few full batches.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Requests one connection may have in progress at once (pipelining); reading pauses beyond.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: usize = 16;

/// Connections one shard accepts at once; more are closed on accept.
pub const CONNECTIONS_PER_SHARD_MAX: usize = 4096;

/// Bytes of request frames one shard holds at once, from the moment a frame's length is read
/// until its handler is done. Taken before the body is read, first come first served: a
/// connection whose next frame does not fit stops reading, so backpressure reaches the socket.
/// The default of `spate serve --request-memory-bytes`, and its largest value.
pub const REQUEST_MEMORY_PER_SHARD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The smallest request memory a shard may be given: one largest request must fit.
pub const REQUEST_MEMORY_PER_SHARD_BYTES_MIN: usize = REQUEST_BYTES_MAX;

/// Bytes of fetch responses one shard holds at once, from the read until the response is on
/// the socket. A fetch takes its whole `max_bytes` (at most `FETCH_RESPONSE_BYTES_MAX`) first,
/// first come first served, and waits while the budget is used up.
pub const FETCH_MEMORY_PER_SHARD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// A peer that started a frame must finish it within this long, or is disconnected (stalled,
/// half-open connections).
pub const FRAME_READ_TIMEOUT_MS: u64 = 30_000;

/// Bytes of batches one shard's logs hold appended but not yet written to their segments
/// (`storage::memory::ShardMemory`). Appends wait beyond it; past half of it, logs stop gathering
/// small writes (write-behind) and write at once. Twice one log's own budget, so that one hot
/// partition can ride out a device stall while the others keep appending.
pub const UNWRITTEN_PER_SHARD_BYTES_MAX: usize = 2 * spate_storage::limits::PENDING_BYTES_MAX;

/// Bytes of tail caches one shard's logs hold together: each log gets an equal share, within
/// its topic's `cache_bytes` and at least `storage::limits::CACHE_BYTES_PER_LOG_MIN`.
pub const LOG_CACHE_PER_SHARD_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Descriptors a partition holds open: its active segment and its journal file (each sealed
/// segment adds one more). Topic creation checks the open-files limit against it.
pub const OPEN_FILES_PER_PARTITION: u64 = 2;

/// Descriptors topic creation leaves free for everything else: connections, the catalog, index
/// files being written, segments that roll.
pub const OPEN_FILES_RESERVED: u64 = 1024;

/// Brokers one cluster may list in `--peers`.
pub const CLUSTER_BROKERS_MAX: usize = 64;

/// A cluster topic's replication factor when the create does not say: at most this many
/// (fewer when the cluster has fewer brokers).
pub const DEFAULT_REPLICATION_FACTOR_MAX: usize = 3;

/// A shard's 100 ms ticker waking later than this logs a warning and counts an executor stall:
/// something ran on the shard's thread without yielding (Seastar's and Redpanda's reactor stall
/// warning). Replication's heartbeats and elections run on the same thread, so a stall this
/// long can cost a leadership.
pub const EXECUTOR_STALL_WARN: std::time::Duration = std::time::Duration::from_millis(250);

/// Every this many 100 ms ticks (5 s) a leader hands each partition whose preferred replica
/// (the first of its replicas) is alive and fully caught up back to it, so leadership, and
/// with it produce and fetch load, spreads over the brokers again after failovers (Kafka's
/// auto leader rebalance).
pub const PREFERRED_LEADER_CHECK_TICKS: u64 = 50;

/// The longest a broker waits for the metadata leader's answer to a request it passed on.
pub const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest a catalog change or producer init waits for the metadata log (a leader to be
/// elected, the record to commit): below a client's 5 s request timeout in the tests, so the
/// client hears `RequestTimedOut` rather than timing out itself.
pub const METADATA_CHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// The longest one pass of a change waits for the metadata leader it was passed to: a leader
/// that is paused (SIGSTOP) still accepts connections, and the change must go on to the next
/// leader once the others elect one (well within this).
pub const METADATA_FORWARD_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a change waiting for a metadata leader looks again.
pub const METADATA_LEADER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// After the metadata leader answered a create or delete another broker passed on, the longest
/// that broker waits to have applied it too (so the client sees its own change there).
pub const METADATA_PROPAGATION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a broker that could not register in the metadata log tries again.
pub const METADATA_REGISTER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often shard 0 applies newly committed metadata records.
pub const METADATA_APPLY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Bytes of the metadata log read per apply round, and rounds per apply (the rest waits for
/// the next one).
pub const METADATA_READ_BYTES_MAX: usize = 1024 * 1024;
pub const METADATA_APPLY_ROUNDS_MAX: usize = 64;

/// Answers of applied topic records kept for the leader that proposed them (it holds the
/// controller lock until it has read its own, so a few suffice).
pub const METADATA_RESULTS_MAX: usize = 16;

/// The metadata log's segment size (it is small, and never trimmed).
pub const METADATA_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// How often a broker sends each peer a heartbeat.
pub const HEARTBEAT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// A peer heard from less recently than this is dead: six missed heartbeats.
pub const PEER_DEAD_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Pause before dialling a peer again after its connection failed.
pub const PEER_RECONNECT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// Shortest frame read timeout a broker may be given (`--frame-read-timeout-ms`).
pub const FRAME_READ_TIMEOUT_MS_MIN: u64 = 100;

/// Longest a fetch may wait for data (long polling).
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Bytes one fetch response carries at most.
pub const FETCH_RESPONSE_BYTES_MAX: usize = wire::FETCH_BYTES_MAX;

/// Chunks of stdin lines `spate produce` reads ahead of the producer (stdin is read on its own
/// thread), and lines per chunk.
pub const PRODUCE_CLI_CHUNKS_QUEUED_MAX: usize = 16;
pub const PRODUCE_CLI_LINES_PER_CHUNK_MAX: usize = 1024;

/// Messages `spate produce` has sent but not yet seen acknowledged; reading pauses beyond.
pub const PRODUCE_CLI_UNACKED_MAX: usize = 65_536;

/// The committed-offsets log is compacted (rewritten as a snapshot of the live offsets) once it
/// holds this many bytes and four times its last snapshot.
pub const OFFSETS_COMPACT_BYTES_MIN: u64 = 16 * 1024 * 1024;

/// Bytes of one batch of an offsets snapshot at most.
pub const OFFSETS_SNAPSHOT_BATCH_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(OFFSETS_SNAPSHOT_BATCH_BYTES_MAX < wire::BATCH_BYTES_MAX / 2);

/// Longest a produce may wait for acknowledgement.
pub const PRODUCE_TIMEOUT_MS_MAX: u64 = 300_000;

/// Consumer groups one shard coordinates, members per group, and topics one member may
/// subscribe to: together they bound a coordinator's memory (a member's strings are bounded by
/// the protocol's `STRING_BYTES_MAX`).
pub const GROUPS_PER_SHARD_MAX: usize = 10_000;
pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;
pub const MEMBER_TOPICS_MAX: usize = 1_000;

/// Producer ids a broker hands out per write of `meta/producer-ids.toml`: an unnamed
/// producer's init touches the disk once per block, and a restart skips at most one block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Named producers (`InitProducerId` with a `producer_name`) one broker remembers; the whole
/// list is rewritten at each named init, so this bounds that write (~50 bytes a name).
pub const PRODUCER_NAMES_MAX: usize = 10_000;

/// Messages queued between two shards.
pub const CROSS_SHARD_QUEUE_MAX: usize = 1024;

/// Topics per broker, and partitions per topic.
pub const TOPICS_MAX: usize = 10_000;
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;

/// Shards (cores) one broker runs.
pub const SHARDS_MAX: usize = 256;

const _: () = assert!(REQUEST_BYTES_MAX <= wire::FRAME_BYTES_MAX);
const _: () = assert!(REQUEST_MEMORY_PER_SHARD_BYTES_MIN <= REQUEST_MEMORY_PER_SHARD_BYTES_MAX);
// Permits of the FIFO budget are counted in u32.
const _: () = assert!(REQUEST_MEMORY_PER_SHARD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FETCH_RESPONSE_BYTES_MAX < wire::FRAME_BYTES_MAX);
const _: () = assert!(FETCH_RESPONSE_BYTES_MAX <= FETCH_MEMORY_PER_SHARD_BYTES_MAX);
const _: () = assert!(FETCH_MEMORY_PER_SHARD_BYTES_MAX <= u32::MAX as usize);
