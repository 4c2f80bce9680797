//! Every maximum and default the replication core enforces, in one place, each with its reason.

/// Most replicas (voters plus learners) in one group. Partitions are replicated 3 or 5 ways;
/// 7 leaves room for one replica being added while another is removed. Quorum math and the
/// per-follower progress table are sized by it.
pub const REPLICAS_MAX: usize = 7;

/// Most batches one `Append` message may describe. Bounds the work one inbound message costs
/// (validation walks every batch) and the size of an `AppendToLog` effect.
pub const APPEND_BATCHES_MAX: usize = 4096;

/// Most entries in a replica's term history. One entry is added per term that wrote data while
/// this replica followed or led; retention trims entries that only describe deleted records.
/// A group that elects 64 Ki leaders without its log rolling once is broken in other ways.
pub const TERM_HISTORY_ENTRIES_MAX: usize = 64 * 1024;

/// Most membership entries a replica remembers (the newest is in force; older ones are kept so
/// a truncation can fall back to the configuration that was in force before the cut).
pub const MEMBERSHIP_HISTORY_MAX: usize = 64;

/// Largest term accepted from the network. No honest group gets near it (a term per
/// millisecond lasts 146 million years); refusing more keeps `term + 1` from overflowing when a
/// corrupt or hostile message names a huge term.
pub const TERM_MAX: u64 = u64::MAX / 2;

/// Largest offset the core accepts. Kafka offsets are signed 64-bit on the wire, so nothing
/// honest goes past `i64::MAX`; the headroom above it keeps `offset + n` from overflowing.
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// Default lower bound of the randomized election timeout, in ticks. With a 10 ms driver tick
/// this is 150 ms: several heartbeat rounds, so one lost heartbeat does not start an election.
pub const ELECTION_TICKS_MIN_DEFAULT: u32 = 15;
/// Default upper bound (exclusive) of the randomized election timeout, in ticks. The spread
/// (2x) makes split votes rare.
pub const ELECTION_TICKS_MAX_DEFAULT: u32 = 30;
/// Default heartbeat interval, in ticks.
pub const HEARTBEAT_TICKS_DEFAULT: u32 = 3;

/// A leader resends an `Append` that got no answer after this many ticks (lost message). Must be
/// shorter than an election timeout so a lossy link does not look like a dead leader.
pub const APPEND_RESEND_TICKS: u32 = 4;

/// Divergence-search rounds (mismatch → resend) a leader runs back to back for one follower;
/// beyond it, one per `APPEND_RESEND_TICKS`. Each honest round drops to a lower term, so this
/// covers a divergent tail spanning 16 terms at full speed and bounds the work a corrupt follower
/// can cause.
pub const PROBES_BACK_TO_BACK_MAX: u32 = 16;

/// Largest encoded envelope (one frame of the wire codec, `codec.rs`): the transport's largest
/// frame (`spate_transport::limits::FRAME_BYTES_MAX`, 16 MiB), so one envelope is one transport
/// frame. Larger envelopes are split (`codec::encode_frames`); a received frame over it is
/// refused before it is parsed.
pub const ENVELOPE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most messages in one encoded envelope. A heartbeat round of 10,000 partitions to one broker
/// is 10,000 messages (~250 KiB); more are split over several frames. Bounds the message vector
/// a received count can make us reserve.
pub const ENVELOPE_MESSAGES_MAX: usize = 64 * 1024;

/// Most record bytes one `Append` carries. The driver's read budget per append must stay under
/// it; it holds two of the largest batches (4 MiB, `spate_protocol::limits::BATCH_BYTES_MAX`),
/// so an append always carries at least one whole batch, and leaves room in an envelope for the
/// metadata of `APPEND_BATCHES_MAX` batches and for other groups' small messages.
pub const APPEND_PAYLOAD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Bytes of an `Append` besides its payload, at most: the fixed fields and `APPEND_BATCHES_MAX`
/// batch descriptions, each with a full replica set.
pub const APPEND_OVERHEAD_BYTES_MAX: usize =
    17 + 24 + 1 + 2 + 4 * REPLICAS_MAX + 4 + APPEND_BATCHES_MAX * (29 + 2 + 4 * REPLICAS_MAX);

const _: () = assert!(ELECTION_TICKS_MIN_DEFAULT < ELECTION_TICKS_MAX_DEFAULT);
const _: () = assert!(OFFSET_MAX <= u64::MAX / 2);
const _: () = assert!(HEARTBEAT_TICKS_DEFAULT * 3 <= ELECTION_TICKS_MIN_DEFAULT);
const _: () = assert!(APPEND_RESEND_TICKS < ELECTION_TICKS_MIN_DEFAULT);
const _: () = assert!(REPLICAS_MAX % 2 == 1);
const _: () = assert!(MEMBERSHIP_HISTORY_MAX >= 2);
const _: () =
    assert!(6 + APPEND_PAYLOAD_BYTES_MAX + APPEND_OVERHEAD_BYTES_MAX <= ENVELOPE_BYTES_MAX);
const _: () = assert!(APPEND_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(APPEND_BATCHES_MAX <= u32::MAX as usize);
const _: () = assert!(REPLICAS_MAX <= u8::MAX as usize);
