//! Every maximum the client enforces, in one place.

/// Requests one connection may have awaiting responses. Further requests wait.
pub const IN_FLIGHT_PER_CONNECTION_MAX: usize = 64;

/// Bytes of batches one produce request carries at most: half the broker's request limit
/// (16 MiB), so a request of many partitions' batches is never refused for its size. A batch
/// larger than this still goes, alone in its request.
pub const PRODUCE_REQUEST_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Partitions one produce request carries at most (the protocol's per-request limit).
pub const PRODUCE_REQUEST_PARTITIONS_MAX: usize =
    spate_protocol::limits::PARTITIONS_PER_REQUEST_MAX;

const _: () = assert!(PRODUCER_BATCH_BYTES_MAX <= PRODUCE_REQUEST_BYTES_MAX);

/// Bytes the read buffer of one connection grows to at most (one frame plus a little).
pub const READ_BUFFER_BYTES_MAX: usize = spate_protocol::limits::FRAME_BYTES_MAX + 64 * 1024;

/// Largest batch the producer builds (it always fits one record, within the protocol's limit).
pub const PRODUCER_BATCH_BYTES_MAX: usize = spate_protocol::limits::BATCH_BYTES_MAX;

/// Most bytes of records a producer buffers before `send` waits (backpressure).
pub const PRODUCER_BUFFER_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most batches one producer keeps in flight per partition.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = 16;

/// Most batches an idempotent producer keeps in flight per partition, and its default: the
/// broker remembers the last 5 batches of each producer per partition
/// (`spate_storage::limits::BATCHES_PER_PRODUCER`), so any retry is one it can recognise.
pub const IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX: usize = 5;

/// Longest producer name (the protocol's string limit).
pub const PRODUCER_NAME_BYTES_MAX: usize = spate_protocol::limits::STRING_BYTES_MAX;

/// Attempts at `InitProducerId` before a producer's first send gives up (retriable errors only,
/// each after the retry backoff, all within the request timeout).
pub const INIT_PRODUCER_ID_ATTEMPTS_MAX: u32 = 10;

const _: () = assert!(IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX <= IN_FLIGHT_PER_PARTITION_MAX);

/// Longest delivery timeout a producer accepts: a record should not wait for an answer longer.
pub const DELIVERY_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

/// Longest wait between two sends of one batch.
pub const RETRY_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// Attempts of one offset lookup that meets retriable errors, and the pause between them.
pub const LOOKUP_ATTEMPTS_MAX: u32 = 10;
pub const LOOKUP_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Most records one `poll` returns.
pub const POLL_RECORDS_MAX: usize = 100_000;

/// Most partitions a consumer can be assigned.
pub const ASSIGNED_PARTITIONS_MAX: usize = 100_000;

/// How often a group member that joined a rebalance asks whether its assignment is ready.
pub const SYNC_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

const _: () = assert!(PRODUCER_BATCH_BYTES_MAX < PRODUCER_BUFFER_BYTES_MAX);

/// Bootstrap brokers one client takes from its comma-separated list.
pub const BOOTSTRAP_BROKERS_MAX: usize = 64;

/// The longest a metadata request waits before the next bootstrap broker is asked: a healthy
/// broker answers from memory at once, and a paused or overloaded one must not hold up every
/// producer's failover for a whole request timeout.
pub const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How often the producer's driver looks for queued batches past their delivery timeout: a
/// scan of every partition, so not at every round (a batch fails at most this much late).
pub const DELIVERY_TIMEOUT_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the producer derives record timestamps from the monotonic clock before it reads
/// the wall clock again (a wall-clock step shows in timestamps at most this late).
pub const WALL_CLOCK_REFRESH: std::time::Duration = std::time::Duration::from_millis(100);
