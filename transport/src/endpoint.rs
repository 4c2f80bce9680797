//! The QUIC endpoint: quinn-proto's state machines driven from one Glommio executor.
//!
//! [`Endpoint::bind`] opens a UDP socket and spawns two tasks on the current executor:
//! - the **receive task** reads datagrams and feeds them to quinn-proto (`Endpoint::handle`),
//!   accepting new connections up to [`CONNECTIONS_MAX`];
//! - the **driver** runs every connection: timeouts (`handle_timeout`), events (`poll`), moving
//!   bytes between quinn-proto's streams and our per-stream buffers, and sending what
//!   `poll_transmit` yields. It sleeps until woken by the receive task or the application, or
//!   until the earliest quinn-proto timeout or hello deadline (a `glommio::timer`).
//!
//! All state is in one `RefCell`, never borrowed across an `.await`.
//!
//! A connection is **up** only after the hello exchange (`frame.rs`): the client sends its
//! broker id on the first bidirectional stream, the server checks it against the id in the
//! client's verified certificate and replies with its own, which the client checks against the
//! id it dialled (also checked by TLS through the server name). TLS 1.3 lets a client finish
//! its handshake before the server refuses its certificate, so without the reply a refused
//! client would believe it is connected. A peer whose certificate or hello is wrong is logged
//! and closed; nothing it sent reaches the application, because streams are handed out only on
//! connections that are up.
//!
//! Backpressure: [`Stream::send`] waits while the connection has
//! [`CONNECTION_SEND_QUEUE_BYTES_MAX`] bytes queued; the driver reads from QUIC only while a
//! stream's receive buffer is below [`STREAM_RECV_BUFFER_BYTES_MAX`], so a slow reader stops the
//! peer through QUIC flow control.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, Event, ReadError, ReadableError, StreamEvent, StreamId,
    VarInt, WriteError,
};
use rustls_pki_types::CertificateDer;
use tracing::{debug, warn};

use crate::certs::{broker_dns_name, BrokerCredentials, BrokerId};
use crate::frame::{self, FrameError};
use crate::limits::*;
use crate::tls;

/// Application close codes (QUIC `APPLICATION_CLOSE`), so the peer's log says why.
mod close_code {
    pub const NORMAL: u32 = 0;
    pub const WRONG_BROKER: u32 = 1;
    pub const BAD_HELLO: u32 = 2;
    pub const HELLO_TIMEOUT: u32 = 3;
    pub const FRAME_TOO_LARGE: u32 = 4;
    pub const TOO_MANY_CONNECTIONS: u32 = 5;
    pub const PROTOCOL: u32 = 6;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("socket: {0}")]
    Io(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("cannot start a connection: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    #[error("peer's certificate says broker {certificate} but it {claimed_what} {claimed}")]
    WrongBroker { certificate: BrokerId, claimed: BrokerId, claimed_what: &'static str },
    #[error("hello: {0}")]
    BadHello(String),
    #[error("no hello within {HELLO_TIMEOUT_MS} ms")]
    HelloTimeout,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("already {CONNECTIONS_MAX} connections")]
    TooManyConnections,
    #[error("peer reset the stream (code {0})")]
    StreamReset(u64),
    #[error("peer stopped reading the stream (code {0})")]
    StreamStopped(u64),
    #[error("stream already finished")]
    StreamFinished,
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("connection closed")]
    Closed,
    #[error("endpoint closed")]
    EndpointClosed,
}

/// A bound QUIC endpoint of one broker: accepts connections from and opens connections to
/// other brokers. Lives on one Glommio executor (`!Send`); dropping it stops its tasks and
/// closes its connections.
pub struct Endpoint {
    shared: Rc<Shared>,
    _tasks: [glommio::Task<()>; 2],
}

/// A connection to another broker that passed mutual TLS and the hello. Dropping it closes the
/// connection at once: data still queued is discarded (QUIC's close is abrupt), so keep the
/// peer until the application has its replies.
pub struct Peer {
    shared: Rc<Shared>,
    handle: ConnectionHandle,
    broker_id: BrokerId,
    remote: SocketAddr,
}

/// One bidirectional stream of length-prefixed messages. Dropping it finishes its sending side
/// once everything queued is sent, and stops reading.
pub struct Stream {
    shared: Rc<Shared>,
    handle: ConnectionHandle,
    id: StreamId,
}

struct Shared {
    socket: glommio::net::UdpSocket,
    state: RefCell<State>,
}

struct State {
    endpoint: quinn_proto::Endpoint,
    local_broker_id: BrokerId,
    client_config: quinn_proto::ClientConfig,
    conns: HashMap<ConnectionHandle, Conn>,
    /// Server-side connections that are up and wait for [`Endpoint::accept`].
    accepted: VecDeque<ConnectionHandle>,
    accept_wakers: Wakers,
    driver_waker: Option<Waker>,
    dirty: bool,
    /// Stateless responses from the receive task, sent by the driver.
    responses: VecDeque<Outgoing>,
    spare_buffers: Vec<Vec<u8>>,
    closed: bool,
}

struct Outgoing {
    destination: SocketAddr,
    data: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Client { dialled: BrokerId },
    Server,
}

#[derive(Clone, PartialEq, Eq)]
enum Phase {
    Handshaking,
    /// TLS done; waiting for the hello (server) or its reply (client).
    Hello,
    Up,
    Failed(TransportError),
}

struct Conn {
    conn: quinn_proto::Connection,
    role: Role,
    phase: Phase,
    hello_deadline: Instant,
    certificate_broker_id: Option<BrokerId>,
    hello_stream: Option<StreamId>,
    streams: HashMap<StreamId, StreamBuf>,
    /// Streams the peer opened, not yet taken by [`Peer::accept_stream`].
    incoming_streams: VecDeque<StreamId>,
    send_queued_bytes: usize,
    wakers: Wakers,
    timeout: Option<Instant>,
}

#[derive(Default)]
struct StreamBuf {
    send: VecDeque<Bytes>,
    finish: bool,
    finish_sent: bool,
    recv: BytesMut,
    recv_done: bool,
    error: Option<TransportError>,
    /// The application dropped its [`Stream`]: remove once everything queued is sent.
    dropped: bool,
}

/// Wakers of tasks waiting on one thing; each task registers once.
#[derive(Default)]
struct Wakers(Vec<Waker>);

impl Wakers {
    fn register(&mut self, waker: &Waker) {
        if !self.0.iter().any(|w| w.will_wake(waker)) {
            self.0.push(waker.clone());
        }
    }
    fn wake_all(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

fn transport_config() -> Arc<quinn_proto::TransportConfig> {
    let mut config = quinn_proto::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS as u32).into()))
        .keep_alive_interval(Some(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS)))
        .datagram_receive_buffer_size(None);
    let mut mtu_discovery = quinn_proto::MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(UDP_PAYLOAD_BYTES_MAX);
    config.mtu_discovery_config(Some(mtu_discovery));
    Arc::new(config)
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<glommio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
    socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // SAFETY: the fd is a freshly bound UDP socket whose ownership moves to Glommio.
    Ok(unsafe { glommio::net::UdpSocket::from_raw_fd(socket.into_raw_fd()) })
}

impl Endpoint {
    /// Binds `addr` and starts the endpoint's tasks on the current Glommio executor.
    ///
    /// `creds.broker_id` is the id this broker claims in its hello; peers refuse it unless it
    /// is the id in `creds.cert`.
    pub fn bind(addr: SocketAddr, creds: &BrokerCredentials) -> Result<Endpoint, TransportError> {
        let server_crypto =
            tls::quic_server_crypto(creds).map_err(|e| TransportError::Tls(e.to_string()))?;
        let client_crypto =
            tls::quic_client_crypto(creds).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server_config = quinn_proto::ServerConfig::with_crypto(server_crypto);
        server_config.transport_config(transport_config());
        let mut client_config = quinn_proto::ClientConfig::new(client_crypto);
        client_config.transport_config(transport_config());
        let mut endpoint_config = quinn_proto::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(UDP_PAYLOAD_BYTES_MAX)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let endpoint = quinn_proto::Endpoint::new(
            Arc::new(endpoint_config),
            Some(Arc::new(server_config)),
            true,
            None,
        );
        let socket = bind_socket(addr).map_err(|e| TransportError::Io(e.to_string()))?;
        let shared = Rc::new(Shared {
            socket,
            state: RefCell::new(State {
                endpoint,
                local_broker_id: creds.broker_id,
                client_config,
                conns: HashMap::new(),
                accepted: VecDeque::new(),
                accept_wakers: Wakers::default(),
                driver_waker: None,
                dirty: true,
                responses: VecDeque::new(),
                spare_buffers: Vec::new(),
                closed: false,
            }),
        });
        let receive = glommio::spawn_local(receive_task(shared.clone()));
        let driver = glommio::spawn_local(driver_task(shared.clone()));
        Ok(Endpoint { shared, _tasks: [receive, driver] })
    }

    /// The bound address (with the port the kernel chose, if 0 was asked).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.shared.socket.local_addr().map_err(|e| TransportError::Io(e.to_string()))
    }

    /// Connects to broker `broker_id` at `addr`; returns once TLS and the hello succeeded
    /// (or fails within [`HELLO_TIMEOUT_MS`]).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        broker_id: BrokerId,
    ) -> Result<Peer, TransportError> {
        let handle = {
            let mut guard = self.shared.state.borrow_mut();
            let state = &mut *guard;
            if state.closed {
                return Err(TransportError::EndpointClosed);
            }
            if state.conns.len() >= CONNECTIONS_MAX {
                return Err(TransportError::TooManyConnections);
            }
            let now = Instant::now();
            let (handle, conn) = state
                .endpoint
                .connect(now, state.client_config.clone(), addr, &broker_dns_name(broker_id))
                .map_err(|e| TransportError::Connect(e.to_string()))?;
            state.conns.insert(handle, Conn::new(conn, Role::Client { dialled: broker_id }, now));
            state.wake_driver();
            handle
        };
        // Built before waiting, so a cancelled connect closes the connection.
        let peer = Peer { shared: self.shared.clone(), handle, broker_id, remote: addr };
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            let Some(conn) = state.conns.get_mut(&handle) else {
                return Poll::Ready(Err(TransportError::Closed));
            };
            match &conn.phase {
                Phase::Up => Poll::Ready(Ok(())),
                Phase::Failed(e) => Poll::Ready(Err(e.clone())),
                Phase::Handshaking | Phase::Hello => {
                    conn.wakers.register(cx.waker());
                    Poll::Pending
                }
            }
        })
        .await?;
        Ok(peer)
    }

    /// The next peer that connected to us and passed TLS and the hello.
    pub async fn accept(&self) -> Result<Peer, TransportError> {
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            for _ in 0..CONNECTIONS_MAX {
                let Some(handle) = state.accepted.pop_front() else { break };
                let Some(conn) = state.conns.get(&handle) else { continue };
                if conn.phase != Phase::Up {
                    continue;
                }
                let (Some(broker_id), remote) =
                    (conn.certificate_broker_id, conn.conn.remote_address())
                else {
                    continue;
                };
                return Poll::Ready(Ok(Peer {
                    shared: self.shared.clone(),
                    handle,
                    broker_id,
                    remote,
                }));
            }
            if state.closed {
                return Poll::Ready(Err(TransportError::EndpointClosed));
            }
            state.accept_wakers.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Closes every connection (queued data not yet sent is dropped; the peer sees a normal
    /// close) and waits, at most [`CLOSE_WAIT_MS`], until QUIC has told the peers.
    pub async fn close(&self) {
        {
            let mut state = self.shared.state.borrow_mut();
            close_all(&mut state);
            state.wake_driver();
        }
        let drained = poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            if state.conns.is_empty() {
                return Poll::Ready(());
            }
            for conn in state.conns.values_mut() {
                conn.wakers.register(cx.waker());
            }
            Poll::Pending
        });
        futures_lite::future::or(
            drained,
            glommio::timer::sleep(Duration::from_millis(CLOSE_WAIT_MS)),
        )
        .await;
    }

    /// Connections (any phase), for metrics and tests.
    pub fn connection_count(&self) -> usize {
        self.shared.state.borrow().conns.len()
    }

    /// What QUIC measures of each connection that is up (passed TLS and the hello), for
    /// metrics: one per direction when both brokers dialled.
    pub fn connection_stats(&self) -> Vec<ConnectionStats> {
        let state = self.shared.state.borrow();
        let mut out: Vec<ConnectionStats> = state
            .conns
            .values()
            .filter(|c| c.phase == Phase::Up)
            .filter_map(|c| {
                let (broker_id, outbound) = match c.role {
                    Role::Client { dialled } => (dialled, true),
                    Role::Server => (c.certificate_broker_id?, false),
                };
                let path = c.conn.stats().path;
                Some(ConnectionStats {
                    broker_id,
                    outbound,
                    rtt: path.rtt,
                    sent_packets: path.sent_packets,
                    lost_packets: path.lost_packets,
                    lost_bytes: path.lost_bytes,
                    congestion_window_bytes: path.cwnd,
                })
            })
            .collect();
        out.sort_by_key(|s| (s.broker_id, s.outbound));
        out
    }
}

/// One connection's numbers from QUIC's own accounting (quinn's `PathStats`); the counters
/// start at zero with each connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The broker at the other end.
    pub broker_id: BrokerId,
    /// This broker dialled it (else it dialled us).
    pub outbound: bool,
    /// QUIC's smoothed round-trip time.
    pub rtt: Duration,
    pub sent_packets: u64,
    /// Packets declared lost (and so sent again).
    pub lost_packets: u64,
    pub lost_bytes: u64,
    pub congestion_window_bytes: u64,
}

/// Marks the endpoint closed and fails every connection (the peers see a normal close); wakes
/// whoever waits to accept. Shared by `close` and `Drop`.
fn close_all(state: &mut State) {
    state.closed = true;
    let now = Instant::now();
    for conn in state.conns.values_mut() {
        conn.fail(now, TransportError::EndpointClosed, close_code::NORMAL);
    }
    state.accept_wakers.wake_all();
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        close_all(&mut self.shared.state.borrow_mut());
    }
}

impl Peer {
    /// The peer's broker id, as its certificate and its hello agree.
    pub fn broker_id(&self) -> BrokerId {
        self.broker_id
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Opens a bidirectional stream; waits while the peer allows no more streams. The peer
    /// learns of the stream (and its `accept_stream` returns) with the first message sent on it.
    pub async fn open_stream(&self) -> Result<Stream, TransportError> {
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            let conn = match state.up_conn(self.handle) {
                Ok(conn) => conn,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let Some(id) = conn.conn.streams().open(Dir::Bi) else {
                conn.wakers.register(cx.waker());
                return Poll::Pending;
            };
            conn.streams.insert(id, StreamBuf::default());
            Poll::Ready(Ok(Stream { shared: self.shared.clone(), handle: self.handle, id }))
        })
        .await
    }

    /// The next stream the peer opened.
    pub async fn accept_stream(&self) -> Result<Stream, TransportError> {
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            let conn = match state.up_conn(self.handle) {
                Ok(conn) => conn,
                Err(e) => return Poll::Ready(Err(e)),
            };
            if let Some(id) = conn.incoming_streams.pop_front() {
                return Poll::Ready(Ok(Stream {
                    shared: self.shared.clone(),
                    handle: self.handle,
                    id,
                }));
            }
            conn.wakers.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Waits until the connection is closed or lost; returns why.
    pub async fn closed(&self) -> TransportError {
        poll_fn(|cx| {
            let mut state = self.shared.state.borrow_mut();
            match state.up_conn(self.handle) {
                Err(e) => Poll::Ready(e),
                Ok(_) => {
                    if let Some(conn) = state.conns.get_mut(&self.handle) {
                        conn.wakers.register(cx.waker());
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Bytes queued for sending on this connection, not yet taken by QUIC.
    pub fn send_queued_bytes(&self) -> usize {
        self.shared.state.borrow().conns.get(&self.handle).map_or(0, |c| c.send_queued_bytes)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let mut state = self.shared.state.borrow_mut();
        if let Some(conn) = state.conns.get_mut(&self.handle) {
            conn.fail(Instant::now(), TransportError::Closed, close_code::NORMAL);
        }
        state.wake_driver();
    }
}

impl Stream {
    /// Queues one message; waits while the connection's send queue is full.
    pub async fn send(&self, message: Bytes) -> Result<(), TransportError> {
        self.send_chunks(vec![message]).await
    }

    /// Queues one message made of `chunks` back to back, without copying them (e.g. a
    /// replication envelope whose record batches are the log's own buffers); waits while the
    /// connection's send queue is full. The peer receives one message, as from [`send`](Self::send).
    pub async fn send_chunks(&self, chunks: Vec<Bytes>) -> Result<(), TransportError> {
        let length: usize = chunks.iter().map(Bytes::len).sum();
        let header = frame::header(length)?;
        let frame_bytes = FRAME_HEADER_BYTES + length;
        let mut message = Some(chunks);
        poll_fn(|cx| {
            let mut guard = self.shared.state.borrow_mut();
            let state = &mut *guard;
            let conn = match state.up_conn(self.handle) {
                Ok(conn) => conn,
                Err(e) => return Poll::Ready(Err(e)),
            };
            let Some(stream) = conn.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(TransportError::Closed));
            };
            if let Some(e) = &stream.error {
                return Poll::Ready(Err(e.clone()));
            }
            if stream.finish {
                return Poll::Ready(Err(TransportError::StreamFinished));
            }
            if conn.send_queued_bytes + frame_bytes > CONNECTION_SEND_QUEUE_BYTES_MAX {
                conn.wakers.register(cx.waker());
                return Poll::Pending;
            }
            coalesce_into(&header, message.take().unwrap_or_default(), &mut stream.send);
            conn.send_queued_bytes += frame_bytes;
            assert!(conn.send_queued_bytes <= CONNECTION_SEND_QUEUE_BYTES_MAX);
            state.wake_driver();
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The next message; `None` once the peer finished the stream.
    pub async fn recv(&self) -> Result<Option<Bytes>, TransportError> {
        poll_fn(|cx| {
            let mut guard = self.shared.state.borrow_mut();
            let state = &mut *guard;
            let Some(conn) = state.conns.get_mut(&self.handle) else {
                return Poll::Ready(Err(TransportError::Closed));
            };
            let Some(stream) = conn.streams.get_mut(&self.id) else {
                return Poll::Ready(Err(TransportError::Closed));
            };
            // Whole frames already received are delivered even if the connection failed since.
            match frame::split_frame(&mut stream.recv) {
                Ok(Some(message)) => {
                    state.wake_driver();
                    return Poll::Ready(Ok(Some(message)));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(peer = ?conn.certificate_broker_id, error = %e, "closing connection");
                    let error = TransportError::Frame(e);
                    conn.fail(Instant::now(), error.clone(), close_code::FRAME_TOO_LARGE);
                    state.wake_driver();
                    return Poll::Ready(Err(error));
                }
            }
            if let Some(e) = &stream.error {
                return Poll::Ready(Err(e.clone()));
            }
            if stream.recv_done {
                let result =
                    if stream.recv.is_empty() { Ok(None) } else { Err(TransportError::Truncated) };
                return Poll::Ready(result);
            }
            if let Phase::Failed(e) = &conn.phase {
                return Poll::Ready(Err(e.clone()));
            }
            conn.wakers.register(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Finishes the sending side once everything queued is sent.
    pub fn finish(&self) {
        let mut state = self.shared.state.borrow_mut();
        if let Some(stream) =
            state.conns.get_mut(&self.handle).and_then(|c| c.streams.get_mut(&self.id))
        {
            stream.finish = true;
        }
        state.wake_driver();
    }
}

/// Queues a frame (`header`, then `chunks`) for sending: chunks of at least
/// `SEND_CHUNK_COPY_BYTES_MAX` as they are, runs of smaller ones (and the header) copied into
/// pieces of up to `SEND_COALESCED_BYTES_MAX`, so QUIC never holds a long list of tiny chunks.
fn coalesce_into(header: &[u8], chunks: Vec<Bytes>, queue: &mut VecDeque<Bytes>) {
    let mut small = BytesMut::new();
    small.extend_from_slice(header);
    // Bounded by the chunks given.
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        if chunk.len() >= SEND_CHUNK_COPY_BYTES_MAX {
            if !small.is_empty() {
                queue.push_back(small.split().freeze());
            }
            queue.push_back(chunk);
            continue;
        }
        if small.len() + chunk.len() > SEND_COALESCED_BYTES_MAX {
            queue.push_back(small.split().freeze());
        }
        // Grows as needed: a heartbeat-sized frame keeps a small allocation.
        small.extend_from_slice(&chunk);
    }
    if !small.is_empty() {
        queue.push_back(small.freeze());
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut state = self.shared.state.borrow_mut();
        if let Some(stream) =
            state.conns.get_mut(&self.handle).and_then(|c| c.streams.get_mut(&self.id))
        {
            stream.finish = true;
            stream.dropped = true;
        }
        state.wake_driver();
    }
}

impl State {
    fn wake_driver(&mut self) {
        self.dirty = true;
        if let Some(waker) = self.driver_waker.take() {
            waker.wake();
        }
    }

    /// The connection if it is up, or why not.
    fn up_conn(&mut self, handle: ConnectionHandle) -> Result<&mut Conn, TransportError> {
        if self.closed {
            return Err(TransportError::EndpointClosed);
        }
        match self.conns.get_mut(&handle) {
            None => Err(TransportError::Closed),
            Some(conn) => match &conn.phase {
                Phase::Up => Ok(conn),
                Phase::Failed(e) => Err(e.clone()),
                Phase::Handshaking | Phase::Hello => Err(TransportError::Closed),
            },
        }
    }

    /// One datagram from the socket.
    fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, data: &[u8]) {
        let mut buf = self.spare_buffers.pop().unwrap_or_default();
        buf.clear();
        let event = self.endpoint.handle(now, remote, None, None, BytesMut::from(data), &mut buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(conn) = self.conns.get_mut(&handle) {
                    conn.conn.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.closed || self.conns.len() >= CONNECTIONS_MAX {
                    debug!(%remote, "refusing connection: endpoint closed or full");
                    let transmit = self.endpoint.refuse(incoming, &mut buf);
                    self.queue_response(remote, &buf[..transmit.size]);
                } else {
                    match self.endpoint.accept(incoming, now, &mut buf, None) {
                        Ok((handle, conn)) => {
                            self.conns.insert(handle, Conn::new(conn, Role::Server, now));
                        }
                        Err(e) => {
                            debug!(%remote, cause = %e.cause, "refusing connection");
                            if let Some(transmit) = e.response {
                                self.queue_response(remote, &buf[..transmit.size]);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.queue_response(transmit.destination, &buf[..transmit.size]);
            }
            None => {}
        }
        self.spare_buffers.push(buf);
        self.wake_driver();
    }

    fn queue_response(&mut self, destination: SocketAddr, data: &[u8]) {
        if self.responses.len() < RESPONSES_QUEUED_MAX {
            self.responses.push_back(Outgoing { destination, data: data.to_vec() });
        }
    }

    /// One pass over every connection: returns the datagrams to send, whether the pass stopped
    /// early at the datagram budget, and the earliest deadline.
    fn drive(&mut self, now: Instant, out: &mut Vec<Outgoing>) -> (bool, Option<Instant>) {
        assert!(self.conns.len() <= CONNECTIONS_MAX);
        assert!(self.accepted.len() <= self.conns.len());
        self.dirty = false;
        out.extend(self.responses.drain(..));
        let mut more = false;
        let mut deadline: Option<Instant> = None;
        let mut drained = Vec::new();
        let local_broker_id = self.local_broker_id;
        let conn_budget = (DATAGRAMS_PER_PASS_MAX / self.conns.len().max(1))
            .max(DATAGRAMS_PER_CONNECTION_PASS_MIN);
        for (&handle, conn) in self.conns.iter_mut() {
            if conn.timeout.is_some_and(|t| t <= now) {
                conn.conn.handle_timeout(now);
            }
            let mut progress = false;
            exchange_endpoint_events(&mut self.endpoint, handle, conn);
            for _ in 0..EVENTS_PER_PASS_MAX {
                let Some(event) = conn.conn.poll() else { break };
                progress = true;
                conn.on_event(now, event, local_broker_id);
            }
            progress |= conn.pump_streams();
            if conn.check_hello(now, local_broker_id) {
                progress = true;
                if conn.role == Role::Server {
                    if self.accepted.len() < CONNECTIONS_MAX {
                        self.accepted.push_back(handle);
                        self.accept_wakers.wake_all();
                    } else {
                        conn.fail(
                            now,
                            TransportError::TooManyConnections,
                            close_code::TOO_MANY_CONNECTIONS,
                        );
                    }
                }
                // The reply may be queued now.
                conn.pump_streams();
            }
            if !matches!(conn.phase, Phase::Up | Phase::Failed(_)) && now >= conn.hello_deadline {
                warn!(remote = %conn.conn.remote_address(), "no hello in time; closing");
                conn.fail(now, TransportError::HelloTimeout, close_code::HELLO_TIMEOUT);
            }
            // Every connection gets a share of the pass, so one busy connection cannot starve
            // the others' acknowledgements and keep-alives.
            let mut emitted = 0;
            while emitted < conn_budget {
                let mut buf = self.spare_buffers.pop().unwrap_or_default();
                buf.clear();
                match conn.conn.poll_transmit(now, 1, &mut buf) {
                    Some(transmit) => {
                        buf.truncate(transmit.size);
                        out.push(Outgoing { destination: transmit.destination, data: buf });
                        emitted += 1;
                    }
                    None => {
                        self.spare_buffers.push(buf);
                        break;
                    }
                }
            }
            if emitted >= conn_budget {
                more = true;
            }
            exchange_endpoint_events(&mut self.endpoint, handle, conn);
            conn.timeout = conn.conn.poll_timeout();
            let hello_deadline = conn.hello_pending().then_some(conn.hello_deadline);
            for t in [conn.timeout, hello_deadline].into_iter().flatten() {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
            if conn.conn.is_drained() {
                drained.push(handle);
            }
            if progress {
                conn.wakers.wake_all();
            }
        }
        for handle in drained {
            self.accepted.retain(|&accepted| accepted != handle);
            if let Some(mut conn) = self.conns.remove(&handle) {
                if !matches!(conn.phase, Phase::Failed(_)) {
                    conn.phase = Phase::Failed(TransportError::Closed);
                }
                conn.wakers.wake_all();
            }
        }
        (more, deadline)
    }
}

fn exchange_endpoint_events(
    endpoint: &mut quinn_proto::Endpoint,
    handle: ConnectionHandle,
    conn: &mut Conn,
) {
    for _ in 0..EVENTS_PER_PASS_MAX {
        let Some(event) = conn.conn.poll_endpoint_events() else { break };
        if let Some(event) = endpoint.handle_event(handle, event) {
            conn.conn.handle_event(event);
        }
    }
}

impl Conn {
    fn new(conn: quinn_proto::Connection, role: Role, now: Instant) -> Conn {
        Conn {
            conn,
            role,
            phase: Phase::Handshaking,
            hello_deadline: now + Duration::from_millis(HELLO_TIMEOUT_MS),
            certificate_broker_id: None,
            hello_stream: None,
            streams: HashMap::new(),
            incoming_streams: VecDeque::new(),
            send_queued_bytes: 0,
            wakers: Wakers::default(),
            timeout: None,
        }
    }

    fn hello_pending(&self) -> bool {
        matches!(self.phase, Phase::Handshaking | Phase::Hello)
    }

    /// Closes the connection (if not failed already) and tells every waiter why.
    fn fail(&mut self, now: Instant, error: TransportError, code: u32) {
        if matches!(self.phase, Phase::Failed(_)) {
            return;
        }
        self.conn.close(now, VarInt::from_u32(code), Bytes::from(error.to_string()));
        self.phase = Phase::Failed(error);
        self.wakers.wake_all();
    }

    fn on_event(&mut self, now: Instant, event: Event, local_broker_id: BrokerId) {
        match event {
            Event::Connected => self.on_connected(now, local_broker_id),
            Event::ConnectionLost { reason } => {
                if !matches!(self.phase, Phase::Failed(_)) {
                    debug!(remote = %self.conn.remote_address(), %reason, "connection lost");
                    self.phase = Phase::Failed(TransportError::ConnectionLost(reason.to_string()));
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                for _ in 0..STREAMS_PER_CONNECTION_MAX {
                    let Some(id) = self.conn.streams().accept(Dir::Bi) else { break };
                    self.on_peer_stream(now, id);
                }
            }
            Event::Stream(_)
            | Event::HandshakeDataReady
            | Event::DatagramReceived
            | Event::DatagramsUnblocked => {}
        }
    }

    fn on_connected(&mut self, now: Instant, local_broker_id: BrokerId) {
        let chain = self
            .conn
            .crypto_session()
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok());
        let certificate_id = match chain.as_deref().map(|chain| tls::peer_broker_id(chain)) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                warn!(remote = %self.conn.remote_address(), error = %e, "refusing peer");
                let error = TransportError::PeerCertificate(e.to_string());
                return self.fail(now, error, close_code::WRONG_BROKER);
            }
            None => {
                let error = TransportError::PeerCertificate("none presented".into());
                return self.fail(now, error, close_code::WRONG_BROKER);
            }
        };
        self.certificate_broker_id = Some(certificate_id);
        match self.role {
            Role::Client { dialled } => {
                if certificate_id != dialled {
                    let error = TransportError::WrongBroker {
                        certificate: certificate_id,
                        claimed: dialled,
                        claimed_what: "was dialled as",
                    };
                    warn!(remote = %self.conn.remote_address(), %error, "refusing peer");
                    return self.fail(now, error, close_code::WRONG_BROKER);
                }
                #[cfg(test)]
                if tests::SILENT_CLIENT.with(std::cell::Cell::get) {
                    self.phase = Phase::Hello;
                    return;
                }
                let Some(id) = self.conn.streams().open(Dir::Bi) else {
                    let error = TransportError::BadHello("peer allows no stream".into());
                    return self.fail(now, error, close_code::PROTOCOL);
                };
                let mut stream = StreamBuf::default();
                let hello = frame::encode_hello(local_broker_id);
                stream.send.push_back(Bytes::copy_from_slice(&(hello.len() as u32).to_be_bytes()));
                stream.send.push_back(hello);
                stream.finish = true;
                self.send_queued_bytes += FRAME_HEADER_BYTES + frame::HELLO_BYTES;
                self.streams.insert(id, stream);
                self.hello_stream = Some(id);
            }
            Role::Server => {}
        }
        if self.phase == Phase::Handshaking {
            self.phase = Phase::Hello;
        }
    }

    fn on_peer_stream(&mut self, now: Instant, id: StreamId) {
        match (&self.phase, self.role) {
            (Phase::Handshaking | Phase::Hello, Role::Server) if self.hello_stream.is_none() => {
                self.hello_stream = Some(id);
                self.streams.insert(id, StreamBuf::default());
            }
            (Phase::Up, _) => {
                self.streams.insert(id, StreamBuf::default());
                self.incoming_streams.push_back(id);
            }
            (Phase::Failed(_), _) => {}
            _ => {
                warn!(remote = %self.conn.remote_address(), "stream before hello; closing");
                let error = TransportError::BadHello("stream opened before the hello".into());
                self.fail(now, error, close_code::PROTOCOL);
            }
        }
    }

    /// Checks a complete hello (server) or reply (client); true when the connection just came
    /// up.
    fn check_hello(&mut self, now: Instant, local_broker_id: BrokerId) -> bool {
        if self.phase != Phase::Hello {
            return false;
        }
        let (Some(hello_id), Some(certificate_id)) =
            (self.hello_stream, self.certificate_broker_id)
        else {
            return false;
        };
        let Some(stream) = self.streams.get_mut(&hello_id) else { return false };
        let payload = match frame::split_frame(&mut stream.recv) {
            Ok(Some(payload)) => payload,
            Ok(None) if stream.recv_done || stream.error.is_some() => {
                let error = TransportError::BadHello("stream ended before the hello".into());
                self.fail(now, error, close_code::BAD_HELLO);
                return false;
            }
            Ok(None) => {
                // Refuse a wrong length at the header instead of buffering its payload.
                let header = stream.recv.get(..FRAME_HEADER_BYTES);
                if header.is_some_and(|h| h != (frame::HELLO_BYTES as u32).to_be_bytes()) {
                    let error = TransportError::BadHello("wrong length".into());
                    self.fail(now, error, close_code::BAD_HELLO);
                }
                return false;
            }
            Err(e) => {
                self.fail(now, TransportError::Frame(e), close_code::BAD_HELLO);
                return false;
            }
        };
        let decoded = match self.role {
            Role::Server => frame::decode_hello(&payload),
            Role::Client { .. } => frame::decode_hello_reply(&payload),
        };
        let claimed = match decoded {
            Ok(id) => id,
            Err(e) => {
                warn!(remote = %self.conn.remote_address(), error = %e, "refusing peer");
                self.fail(now, TransportError::BadHello(e.to_string()), close_code::BAD_HELLO);
                return false;
            }
        };
        if claimed != certificate_id {
            let error = TransportError::WrongBroker {
                certificate: certificate_id,
                claimed,
                claimed_what: "says in its hello it is",
            };
            warn!(remote = %self.conn.remote_address(), %error, "refusing peer");
            self.fail(now, error, close_code::WRONG_BROKER);
            return false;
        }
        if self.role == Role::Server {
            let reply = frame::encode_hello_reply(local_broker_id);
            stream.send.push_back(Bytes::copy_from_slice(&(reply.len() as u32).to_be_bytes()));
            stream.send.push_back(reply);
            stream.finish = true;
            self.send_queued_bytes += FRAME_HEADER_BYTES + frame::HELLO_BYTES;
        }
        debug!(remote = %self.conn.remote_address(), broker = claimed, "peer up");
        self.phase = Phase::Up;
        true
    }

    /// Moves bytes between quinn-proto's streams and ours; true if anything moved.
    fn pump_streams(&mut self) -> bool {
        let mut progress = false;
        let mut removed = Vec::new();
        for (&id, stream) in self.streams.iter_mut() {
            progress |= pump_send(&mut self.conn, id, stream, &mut self.send_queued_bytes);
            progress |= pump_recv(&mut self.conn, id, stream);
            let sent = stream.send.is_empty() && (stream.finish_sent || stream.error.is_some());
            if stream.dropped && sent {
                removed.push(id);
            }
        }
        for id in removed {
            self.streams.remove(&id);
            if self.hello_stream == Some(id) {
                self.hello_stream = None;
            }
            // We will read no more; tell the peer (errors mean it is finished already).
            let _ = self.conn.recv_stream(id).stop(VarInt::from_u32(0));
        }
        progress
    }
}

fn pump_send(
    conn: &mut quinn_proto::Connection,
    id: StreamId,
    stream: &mut StreamBuf,
    send_queued_bytes: &mut usize,
) -> bool {
    let mut progress = false;
    // Each round either empties chunks from the queue or stops.
    while !stream.send.is_empty() {
        match conn.send_stream(id).write_chunks(stream.send.make_contiguous()) {
            Ok(written) => {
                assert!(written.bytes <= *send_queued_bytes, "send queue accounting");
                *send_queued_bytes -= written.bytes;
                stream.send.drain(..written.chunks);
                progress = true;
                if written.bytes == 0 {
                    break;
                }
            }
            Err(WriteError::Blocked) => break,
            Err(WriteError::Stopped(code)) => {
                stream.error = Some(TransportError::StreamStopped(code.into_inner()));
                discard(stream, send_queued_bytes);
                progress = true;
            }
            Err(WriteError::ClosedStream) => {
                stream.error = Some(TransportError::Closed);
                discard(stream, send_queued_bytes);
                progress = true;
            }
        }
    }
    if stream.finish && !stream.finish_sent && stream.send.is_empty() {
        // An error means the stream is gone already; nothing more to finish.
        let _ = conn.send_stream(id).finish();
        stream.finish_sent = true;
    }
    progress
}

fn discard(stream: &mut StreamBuf, send_queued_bytes: &mut usize) {
    let bytes: usize = stream.send.iter().map(Bytes::len).sum();
    *send_queued_bytes -= bytes;
    stream.send.clear();
}

fn pump_recv(conn: &mut quinn_proto::Connection, id: StreamId, stream: &mut StreamBuf) -> bool {
    if stream.recv_done || stream.recv.len() >= STREAM_RECV_BUFFER_BYTES_MAX {
        return false;
    }
    let mut recv = conn.recv_stream(id);
    let mut chunks = match recv.read(true) {
        Ok(chunks) => chunks,
        Err(ReadableError::ClosedStream) => {
            stream.recv_done = true;
            return true;
        }
        Err(ReadableError::IllegalOrderedRead) => {
            stream.error = Some(TransportError::Closed);
            stream.recv_done = true;
            return true;
        }
    };
    let mut progress = false;
    // Bounded: every chunk is non-empty and takes from a finite room.
    loop {
        let room = STREAM_RECV_BUFFER_BYTES_MAX - stream.recv.len();
        if room == 0 {
            break;
        }
        match chunks.next(room) {
            Ok(Some(chunk)) => {
                stream.recv.extend_from_slice(&chunk.bytes);
                progress = true;
            }
            Ok(None) => {
                stream.recv_done = true;
                progress = true;
                break;
            }
            Err(ReadError::Blocked) => break,
            Err(ReadError::Reset(code)) => {
                stream.error = Some(TransportError::StreamReset(code.into_inner()));
                stream.recv_done = true;
                progress = true;
                break;
            }
        }
    }
    assert!(stream.recv.len() <= STREAM_RECV_BUFFER_BYTES_MAX);
    // Whether a flow-control update is due is picked up by the next `poll_transmit`.
    let _ = chunks.finalize();
    progress
}

async fn receive_task(shared: Rc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        // Driven by IO: each round waits for datagrams, then yields after a bounded burst.
        for _ in 0..DATAGRAMS_PER_RECV_BURST_MAX {
            match shared.socket.recv_from(&mut buf).await {
                Ok((bytes, remote)) => {
                    let mut state = shared.state.borrow_mut();
                    state.handle_datagram(Instant::now(), remote, &buf[..bytes]);
                }
                Err(e) => {
                    // ICMP errors surface here on Linux (ECONNREFUSED); QUIC recovers. A pause,
                    // so a socket that keeps failing cannot spin the executor.
                    debug!(error = %e, "recv_from");
                    glommio::timer::sleep(Duration::from_millis(RECV_ERROR_PAUSE_MS)).await;
                }
            }
        }
        futures_lite::future::yield_now().await;
    }
}

async fn driver_task(shared: Rc<Shared>) {
    let mut out = Vec::with_capacity(DATAGRAMS_PER_PASS_MAX + RESPONSES_QUEUED_MAX);
    // Reused across passes: at most one pass's datagrams are in flight.
    loop {
        let (more, deadline) = shared.state.borrow_mut().drive(Instant::now(), &mut out);
        for outgoing in out.drain(..) {
            if let Err(e) = shared.socket.send_to(&outgoing.data, outgoing.destination).await {
                debug!(error = %e, destination = %outgoing.destination, "send_to");
            }
            let mut state = shared.state.borrow_mut();
            if state.spare_buffers.len() < DATAGRAMS_PER_PASS_MAX {
                state.spare_buffers.push(outgoing.data);
            }
        }
        if more {
            futures_lite::future::yield_now().await;
            continue;
        }
        let woken = poll_fn(|cx: &mut Context<'_>| {
            let mut state = shared.state.borrow_mut();
            if state.dirty {
                return Poll::Ready(());
            }
            state.driver_waker = Some(cx.waker().clone());
            Poll::Pending
        });
        match deadline {
            Some(deadline) => {
                let sleep =
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
                futures_lite::future::or(woken, sleep).await;
            }
            None => woken.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate_cluster;
    use std::cell::Cell;

    thread_local! {
        /// Makes clients on this thread complete TLS but never send their hello.
        pub(super) static SILENT_CLIENT: Cell<bool> = const { Cell::new(false) };
    }

    #[test]
    fn small_chunks_are_coalesced_and_large_ones_kept_without_a_copy() {
        let large = Bytes::from(vec![7u8; SEND_CHUNK_COPY_BYTES_MAX]);
        let mut chunks: Vec<Bytes> =
            (0..2_000u32).map(|i| Bytes::from(vec![i as u8; 100])).collect();
        chunks.insert(1_000, large.clone());
        chunks.insert(500, Bytes::new());
        let mut expected = vec![1u8, 2, 3, 4];
        for c in &chunks {
            expected.extend_from_slice(c);
        }
        let mut queue = VecDeque::new();
        coalesce_into(&[1, 2, 3, 4], chunks, &mut queue);
        let joined: Vec<u8> = queue.iter().flat_map(|c| c.iter().copied()).collect();
        assert_eq!(joined, expected, "same bytes in the same order");
        assert!(queue.iter().all(|c| !c.is_empty() && c.len() <= SEND_COALESCED_BYTES_MAX));
        // 200,004 bytes of small chunks in 64 KiB pieces on either side of the large chunk.
        assert!(queue.len() <= 6, "{} pieces", queue.len());
        let kept = queue.iter().find(|c| c.len() == large.len()).expect("large chunk");
        assert_eq!(kept.as_ptr(), large.as_ptr(), "a large chunk is not copied");
    }

    #[test]
    fn a_peer_that_never_says_hello_is_dropped() {
        let cluster = generate_cluster(2).unwrap();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                SILENT_CLIENT.with(|silent| silent.set(true));
                let creds = |id: u32| {
                    let b = &cluster.brokers[id as usize - 1];
                    BrokerCredentials::from_pem(id, &cluster.ca_pem, &b.cert_pem, &b.key_pem)
                        .unwrap()
                };
                let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let client = Endpoint::bind(localhost, &creds(1)).unwrap();
                let server = Endpoint::bind(localhost, &creds(2)).unwrap();
                let started = Instant::now();
                let accepted = async { Some(server.accept().await) };
                let connected = async {
                    let result = client.connect(server.local_addr().unwrap(), 2).await;
                    assert!(result.is_err(), "a silent client came up");
                    // Let the server's own deadline pass too.
                    glommio::timer::sleep(Duration::from_millis(200)).await;
                    None
                };
                assert!(futures_lite::future::or(accepted, connected).await.is_none());
                let waited = started.elapsed();
                assert!(waited >= Duration::from_millis(HELLO_TIMEOUT_MS), "{waited:?}");
                assert!(waited < Duration::from_millis(HELLO_TIMEOUT_MS * 3), "{waited:?}");
                let state = server.shared.state.borrow();
                assert!(state.conns.values().all(|c| matches!(c.phase, Phase::Failed(_))));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
