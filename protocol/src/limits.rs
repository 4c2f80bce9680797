//! Every maximum the wire format enforces, in one place.

/// Largest record batch, header included. Bounds one append, one network read of a batch, and
/// the memory a single malformed length field can make us reserve. 4 MiB leaves room for the
/// 256 KiB - 1 MiB batches high-throughput producers use, with headroom.
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Most records in one batch. A record is at least 7 bytes, so this is never the tighter limit
/// for a full-size batch; it bounds per-batch loops when records are tiny.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;

/// Largest offset a record may have: 2^62, which at ten million records a second takes 14,000
/// years to reach. Checking batches against it keeps every offset sum far from overflowing.
pub const OFFSET_MAX: i64 = 1 << 62;

const _: () = assert!(OFFSET_MAX < i64::MAX - BATCH_RECORDS_MAX as i64);

/// Most replicas (voters plus learners) one membership control record may name. Replication
/// groups have at most 7 (`spate_replication::limits::REPLICAS_MAX`); the headroom lets that
/// limit grow without a format change, and bounds what a damaged record can make us allocate.
pub const CONTROL_REPLICAS_MAX: usize = 64;

/// Most headers on one record.
pub const RECORD_HEADERS_MAX: usize = 1024;

const _: () = assert!(BATCH_RECORDS_MAX * 7 >= BATCH_BYTES_MAX / 4);

/// Largest frame (length prefix excluded): a produce request of a few full batches, or a fetch
/// response of `FETCH_BYTES_MAX` plus its header. A longer length prefix is refused before any
/// byte of the body is buffered.
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest flatbuffer header in a frame. Fetch payloads travel after it, so headers stay small;
/// produce requests carry their batches inside it, so it may be as large as a frame.
pub const HEADER_BYTES_MAX: usize = FRAME_BYTES_MAX;

/// Most bytes a fetch response carries (sum over partitions).
pub const FETCH_BYTES_MAX: usize = 56 * 1024 * 1024;

/// Most topics in one request, and partitions per topic in one request.
pub const TOPICS_PER_REQUEST_MAX: usize = 1024;
pub const PARTITIONS_PER_TOPIC_MAX: usize = 10_000;
/// Most partitions over all topics of one request.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 10_000;

/// Most record batches in one partition of one produce request.
/// One, as in Kafka (since produce v3): a partition's result then says exactly what was
/// written. With several, a failed later batch after an appended earlier one could not be
/// reported without a partial-success answer, and a retry would duplicate the earlier one.
pub const BATCHES_PER_PARTITION_MAX: usize = 1;

/// Longest topic name (Kafka's limit) and longest other string (ids, config values, messages).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
pub const STRING_BYTES_MAX: usize = 4096;

/// Most config entries per topic in one request, and members/groups in one group request.
pub const CONFIGS_PER_TOPIC_MAX: usize = 64;
pub const GROUPS_PER_REQUEST_MAX: usize = 1024;
pub const MEMBERS_PER_GROUP_MAX: usize = 4096;
/// Largest member metadata or assignment blob.
pub const GROUP_BLOB_BYTES_MAX: usize = 1024 * 1024;

/// Flatbuffers verifier limits: nesting depth and number of tables in one buffer. Our deepest
/// message (Response > body > topics > partitions > replicas) nests 6 levels.
pub const VERIFIER_DEPTH_MAX: usize = 16;
pub const VERIFIER_TABLES_MAX: usize = 1_000_000;

const _: () = assert!(FETCH_BYTES_MAX + 1024 * 1024 <= FRAME_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(PARTITIONS_PER_TOPIC_MAX <= PARTITIONS_PER_REQUEST_MAX);
