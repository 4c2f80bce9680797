//! Every limit of the transport, stated once, with why; compile-time checks where two must agree.

/// Brokers in one cluster that one broker keeps connections with (in and out). A replication
/// mesh needs one per peer; more is a misconfiguration or an attack.
pub const CONNECTIONS_MAX: usize = 64;

/// Bidirectional streams a peer may have open at once on one connection (both directions
/// each). Replication needs a handful (data, control); each stream costs buffers.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 16;

/// The largest message (payload of one length-prefixed frame). A replication batch of 1 MiB
/// fits with room; a frame header above this closes the connection (no unbounded buffering).
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix of a frame (u32, big-endian).
pub const FRAME_HEADER_BYTES: usize = 4;

/// Bytes queued for sending on one connection (all its streams) before `send` waits:
/// the backpressure bound. Must take at least one largest frame.
pub const CONNECTION_SEND_QUEUE_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Bytes read from QUIC into one stream's receive buffer that the application has not taken
/// yet. Past this the driver stops reading, QUIC's flow control stops the peer. Must take one
/// largest frame, or a frame could never complete.
pub const STREAM_RECV_BUFFER_BYTES_MAX: usize = FRAME_BYTES_MAX + FRAME_HEADER_BYTES;

/// Chunks of a message shorter than this are copied together (with the frame header) before
/// they reach QUIC; longer ones go as they are, without a copy. quinn-proto finds the bytes of
/// each packet by walking its list of unacknowledged chunks from the start, so a window full of
/// tiny chunks (100-byte record batches, 4-byte frame headers) made every packet cost a walk of
/// hundreds of thousands of entries: seconds of CPU per catch-up, with the executor stalled.
pub const SEND_CHUNK_COPY_BYTES_MAX: usize = 4 * 1024;

/// Small chunks are copied into pieces of up to this many bytes. With
/// `SEND_CHUNK_COPY_BYTES_MAX` it bounds the chunks in flight by window / 4 KiB on average.
pub const SEND_COALESCED_BYTES_MAX: usize = 64 * 1024;

/// QUIC flow-control window of one stream (NOTES.md: 16 MiB was best measured).
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// QUIC flow-control window of a whole connection.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 64 * 1024 * 1024;

/// Bytes QUIC keeps unacknowledged per connection (NOTES.md: 64 MiB was best measured).
pub const SEND_WINDOW_BYTES: u64 = 64 * 1024 * 1024;

/// UDP socket send and receive buffers. The 208 KiB default drops thousands of packets per
/// GiB at full speed (NOTES.md); 4 MiB is `rmem_max` on our machines.
pub const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// The largest UDP payload we accept (advertised to peers as QUIC's `max_udp_payload_size`, so
/// they never send more) and the upper bound of path MTU discovery: a jumbo Ethernet frame
/// (9000) less IP and UDP headers. On a 1500-byte path, MTU discovery settles at ~1452; on
/// jumbo frames or loopback it reaches this, and each packet costs one sixth of the syscalls.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 8_972;

/// Receive buffer for one datagram: exactly the largest payload a peer may send us.
pub const DATAGRAM_BYTES_MAX: usize = UDP_PAYLOAD_BYTES_MAX as usize;

/// Datagrams the driver produces in one pass before it sends them and yields.
pub const DATAGRAMS_PER_PASS_MAX: usize = 64;

/// Datagrams each connection may produce in one pass however many connections there are (so
/// a pass may produce up to this times [`CONNECTIONS_MAX`]).
pub const DATAGRAMS_PER_CONNECTION_PASS_MIN: usize = 4;

/// Datagrams the receive task takes in a row before it yields to the driver.
pub const DATAGRAMS_PER_RECV_BURST_MAX: usize = 64;

/// Pause of the receive task after a socket error (an ICMP error or worse), so a socket that
/// keeps failing cannot spin the executor.
pub const RECV_ERROR_PAUSE_MS: u64 = 1;

/// Stateless responses (version negotiation, refusals) waiting to be sent; more are dropped.
pub const RESPONSES_QUEUED_MAX: usize = 64;

/// Events taken from one connection in one pass (quinn-proto's queues are finite; this bounds
/// our loop regardless).
pub const EVENTS_PER_PASS_MAX: usize = 1024;

/// Time from starting a connection to a verified hello, either side. A peer that authenticates
/// but never says who it is must not hold a connection slot.
pub const HELLO_TIMEOUT_MS: u64 = 5_000;

/// A connection with no packets for this long is dead.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;

/// Keep-alive pings, so an idle but healthy connection never reaches the idle timeout.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 2_000;

/// How long `Endpoint::close` waits for its connections to tell their peers (QUIC's draining
/// period is three probe timeouts: milliseconds on a LAN).
pub const CLOSE_WAIT_MS: u64 = 2_000;

const _: () = assert!(CONNECTION_SEND_QUEUE_BYTES_MAX >= FRAME_BYTES_MAX + FRAME_HEADER_BYTES);
const _: () = assert!(STREAM_RECV_BUFFER_BYTES_MAX >= FRAME_BYTES_MAX + FRAME_HEADER_BYTES);
const _: () = assert!(FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(CONNECTION_RECEIVE_WINDOW_BYTES >= STREAM_RECEIVE_WINDOW_BYTES);
const _: () = assert!(KEEP_ALIVE_INTERVAL_MS * 2 < IDLE_TIMEOUT_MS);
const _: () = assert!(HELLO_TIMEOUT_MS < IDLE_TIMEOUT_MS);
// QUIC's minimum; quinn-proto refuses less.
const _: () = assert!(UDP_PAYLOAD_BYTES_MAX >= 1200);

const _: () = assert!(SEND_CHUNK_COPY_BYTES_MAX < SEND_COALESCED_BYTES_MAX);
