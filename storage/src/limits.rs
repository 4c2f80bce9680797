//! Every maximum the storage layer enforces, in one place, each with the reason for its value.

use spate_protocol::limits::BATCH_BYTES_MAX;

/// Direct-IO alignment we write and read at. 4 KiB satisfies both 512-byte and 4 KiB devices.
pub const BLOCK_BYTES: usize = 4096;

/// Largest segment allowed by configuration. Index positions are `u32`, so a segment must stay
/// below 4 GiB.
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
/// Smallest segment allowed by configuration: a segment must hold at least one largest batch.
pub const SEGMENT_BYTES_MIN: u64 = BATCH_BYTES_MAX as u64 + BLOCK_BYTES as u64;

/// Most bytes written to disk by one `write_at` of a flush round. Bounds the DMA buffer one
/// round allocates; a round with more pending data issues several writes.
pub const WRITE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A flush round stops adding batches to one write once it holds this many bytes (it always
/// takes at least one batch). Larger rounds were measured slower here: buffers beyond Glommio's
/// registered pool are allocated and page-faulted afresh each round.
pub const WRITE_ROUND_TARGET_BYTES: usize = 1024 * 1024;

/// Most bytes of appended-but-not-yet-written batches one log holds. Appenders beyond it wait
/// (backpressure) instead of growing memory.
pub const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Write-behind, for logs that acknowledge from the journal: a log gathers unwritten batches
/// until it holds this many bytes (or [`WRITE_BEHIND`] passed since the oldest was queued,
/// or its shard's unwritten budget is half taken) before it writes them. Many small batches of
/// many partitions then cost a few large device writes instead of one 4 KiB-aligned write (and
/// a rewrite of the partial tail block) each. 256 KiB writes run near the device's bandwidth
/// here (see `../shared/NOTES.md`).
pub const WRITE_BEHIND_BYTES: usize = 256 * 1024;

/// The longest a journaled batch waits for its device write, unless the device stalls: what a
/// power cut (not a process crash: the journal keeps it) can lose under `flush=never`. Kafka
/// leaves dirty pages for up to 30 s; Redpanda's write caching flushes every 100 ms by default.
/// 1 s keeps 5,000 slowly written partitions at about 5,000 writes per second in all.
pub const WRITE_BEHIND: std::time::Duration = std::time::Duration::from_millis(1000);

/// Smallest tail cache a log is given out of its shard's cache budget, however many logs the
/// shard has: a few small batches. Small on purpose: beyond budget / this many logs, memory
/// grows with the partition count again (by this much per partition).
pub const CACHE_BYTES_PER_LOG_MIN: usize = 16 * 1024;

/// How long the flush task waits before writing again after a failed write that left
/// acknowledged (journaled) batches queued: a full disk is retried a few times a second.
pub const WRITE_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// Largest tail cache a log may be configured with.
pub const CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Most bytes one read returns (beyond the first batch, which is always returned whole).
pub const READ_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Read-ahead of a consumer catching up from disk (see `log::read_ahead`): reads of this size,
/// this many in flight. 1 MiB at queue depth 4 is where this machine's disk reaches its read
/// ceiling (`spate-loadgen ceiling`, and fio; see `../shared/NOTES.md`).
pub const READ_AHEAD_BUFFER_BYTES: usize = 1024 * 1024;
pub const READ_AHEAD_BUFFERS: usize = 4;

/// Read streams one shard holds at a time, each up to `READ_AHEAD_BUFFERS x
/// READ_AHEAD_BUFFER_BYTES` (4 MiB): 32 MiB per shard. Further sequential readers read at queue
/// depth 1 until a stream idles.
pub const READ_STREAMS_PER_SHARD_MAX: usize = 8;

/// A read stream unused this long may be taken for another log's reader when the shard is at
/// its maximum.
pub const READ_STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Bound on the pieces one read of a stream consumes: the largest read plus the read-ahead it
/// may skip, in buffers, twice over for batches straddling two buffers, and a few spare.
pub const READ_STREAM_STEPS_MAX: usize = 2
    * (READ_BYTES_MAX + READ_AHEAD_BUFFERS * READ_AHEAD_BUFFER_BYTES + BATCH_BYTES_MAX)
    / READ_AHEAD_BUFFER_BYTES
    + 8;

/// Bytes read per step when scanning a segment (recovery, index rebuild, timestamp search).
pub const SCAN_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Most read attempts one `read` makes while realigning to a batch boundary. Each attempt
/// either returns or grows the window to hold a whole batch, so two are always enough.
pub const READ_ATTEMPTS_MAX: usize = 4;

/// Smallest and largest sparse-index interval.
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 512;
pub const INDEX_INTERVAL_BYTES_MAX: u32 = 1024 * 1024;

/// Most segments one log may have; bounds open file descriptors per partition.
pub const SEGMENTS_MAX: usize = 100_000;

/// Most term-history entries in a replica-state file. Equal to the replication core's
/// `TERM_HISTORY_ENTRIES_MAX` (64 Ki; one entry per term that wrote data and is still in the
/// log), so every history the core keeps can be persisted.
pub const REPLICA_STATE_HISTORY_ENTRIES_MAX: usize = 64 * 1024;

/// Most replicas in a replica-state file's membership floor: what a membership control record
/// may name (the core itself allows 7).
pub const REPLICA_STATE_REPLICAS_MAX: usize = spate_protocol::limits::CONTROL_REPLICAS_MAX;

/// Largest replica-state file: header, the fixed fields, a full floor and a full history, CRC
/// (about 1 MiB; a typical file is well under 100 bytes and is rewritten whole on each change).
pub const REPLICA_STATE_BYTES_MAX: usize = 16
    + (8 + 1 + 4 + 8 + 1 + 4 + 4 * REPLICA_STATE_REPLICAS_MAX + 4)
    + 16 * REPLICA_STATE_HISTORY_ENTRIES_MAX
    + 4;

/// Batches an idempotent producer's state remembers per partition: a producer keeps at most this
/// many in flight per partition (the client refuses more), so any retry it sends is one of them.
pub const BATCHES_PER_PRODUCER: usize = 5;

/// Idempotent producers one partition remembers; past it, the idlest is forgotten (its next
/// batch is refused as from an unknown producer, and the client starts its sequence over).
/// Bounds a partition's producer state to about 10,000 x 200 bytes = 2 MiB.
pub const PRODUCERS_MAX: usize = 10_000;

/// A producer that sent nothing to a partition for this long is forgotten there. Kafka keeps
/// them a day (`producer.id.expiration.ms`); an hour covers every retry (the client's delivery
/// timeout is at most an hour) and keeps producers that come and go (every `spate produce`
/// run is a new one) from filling the table.
pub const PRODUCER_IDLE_MS_MAX: i64 = 60 * 60 * 1000;

/// How often appends look for idle producers to forget (a pass is linear in the producers).
pub const PRODUCER_EXPIRY_INTERVAL_MS: i64 = 60 * 1000;

/// Bytes at the end of a log that opening replays to rebuild producer state (batch headers
/// only). A retry of a batch written further back than this before a restart is not recognised
/// as a duplicate. 32 MiB holds the 5 in-flight batches of a producer even at the largest batch
/// size (5 x 4 MiB), or of hundreds of producers at 64 KiB, and costs one sequential read of at
/// most that much per partition at startup.
pub const PRODUCER_REPLAY_BYTES_MAX: u64 = 32 * 1024 * 1024;

const _: () = assert!(BATCHES_PER_PRODUCER * BATCH_BYTES_MAX <= PRODUCER_REPLAY_BYTES_MAX as usize);
const _: () = assert!(PRODUCER_EXPIRY_INTERVAL_MS < PRODUCER_IDLE_MS_MAX);
const _: () = assert!(BATCH_BYTES_MAX + BLOCK_BYTES <= WRITE_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX < PENDING_BYTES_MAX);
const _: () = assert!(WRITE_ROUND_TARGET_BYTES <= WRITE_BYTES_MAX);
const _: () = assert!(WRITE_BEHIND_BYTES <= WRITE_ROUND_TARGET_BYTES);
const _: () = assert!(WRITE_BEHIND_BYTES < PENDING_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX < u32::MAX as u64);
const _: () = assert!(READ_AHEAD_BUFFER_BYTES.is_power_of_two());
const _: () = assert!(READ_AHEAD_BUFFER_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= SCAN_CHUNK_BYTES);
const _: () = assert!(WRITE_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(REPLICA_STATE_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(REPLICA_STATE_REPLICAS_MAX <= u16::MAX as usize);
