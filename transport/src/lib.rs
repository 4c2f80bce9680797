//! Spate's broker-to-broker transport: QUIC with mutual TLS, driven by a Glommio executor.
//!
//! Brokers replicate to each other over QUIC. Every broker holds a certificate from the
//! cluster's own CA that names its broker id; both ends of a connection present one, and a
//! connection is usable only after an application-level hello agrees with the certificates.
//!
//! # Layout
//! - [`certs`]: the cluster CA and per-broker certificates (rcgen): generate, write
//!   (`DIR/ca.pem`, `DIR/broker-I.pem`, `DIR/broker-I.key`), load ([`BrokerCredentials`]).
//! - [`tls`]: rustls configs (client certificates required, only the cluster CA trusted, TLS
//!   1.3, `ring`) and the broker id of a verified certificate.
//! - [`frame`]: sans-IO framing (`u32` big-endian length + payload) and the hello messages.
//! - [`endpoint`]: the Glommio driver around quinn-proto: [`Endpoint`], [`Peer`], [`Stream`].
//! - [`limits`]: every bound (connections, streams, frame size, queued bytes, windows, timeouts).
//! - `src/bin/spate_quic_bench.rs`: throughput of one connection between two cores.
//!
//! # Use
//! ```no_run
//! # async fn example() -> Result<(), spate_transport::TransportError> {
//! use spate_transport::{BrokerCredentials, Endpoint};
//! let creds = BrokerCredentials::load("certs".as_ref(), 1).expect("certificates");
//! let endpoint = Endpoint::bind("0.0.0.0:9093".parse().unwrap(), &creds)?; // in an executor
//! let peer = endpoint.connect("10.0.0.2:9093".parse().unwrap(), 2).await?; // TLS + hello done
//! let stream = peer.open_stream().await?;
//! stream.send(bytes::Bytes::from_static(b"append ...")).await?; // waits when queues are full
//! let reply = stream.recv().await?; // Some(message), or None once the peer finished
//! # let _ = reply; Ok(()) }
//! ```
//! The other side calls [`Endpoint::accept`], then [`Peer::accept_stream`].
//!
//! # Why quinn-proto and Glommio's own UDP socket
//! quinn's `Runtime` needs `Send + Sync` timers and sockets; Glommio's are `!Send`. So we drive
//! quinn-proto (sans-IO) ourselves: one receive task feeds datagrams to it, one driver task
//! runs timeouts, events, stream buffers and `poll_transmit`, with `glommio::timer` for
//! deadlines. No extra thread, no tokio.
//!
//! For IO we use `glommio::net::UdpSocket` (`send_to`, `recv_from` with the source address:
//! all quinn-proto needs), created through `socket2` to set 4 MiB socket buffers. It tries the
//! non-blocking syscall first and falls back to io_uring only when the socket would block.
//! It has no GSO/GRO, so each datagram is one syscall. We recover most of what GSO gives by
//! allowing large datagrams: we advertise a `max_udp_payload_size` of 8972 bytes (a jumbo
//! frame) and let MTU discovery go up to it; on a 1500-byte path it settles at ~1452, on
//! jumbo-frame networks and loopback it reaches 8972. `quinn-udp` (GSO/GRO through
//! `sendmsg`/`recvmmsg` on the raw fd) is the next step if 1500-byte paths need more: Glommio
//! 0.9 has no public "wait until this fd is readable/writable", so it would need readiness
//! through e.g. `UdpSocket::peek_from` (an io_uring recvmsg with `MSG_PEEK`).
//!
//! # Measured (loopback, this 2-core VM, shared with other work; noise ±20%)
//! ```text
//! cargo build --release -p spate-transport --bin spate-quic-bench
//! nice -n 10 $CARGO_TARGET_DIR/release/spate-quic-bench      # --bytes N --message-bytes N
//! ```
//! 1 GiB in 1 MiB messages over one stream of one connection, sender and receiver executors
//! pinned to cores 0 and 1, mutual TLS with `ring`, 2026-12-01:
//! - UDP payloads up to 8972 bytes (the shipped setting): **median 604 MB/s** (5 runs:
//!   562–634; other runs 478–785 while the machine was busy), the same as quinn on tokio and as
//!   the quinn-proto + quinn-udp (GSO/GRO) driver measured in `NOTES.md` (~600 MB/s). Both
//!   executors are CPU-bound (crypto, quinn-proto, one syscall per datagram); the receiver's
//!   socket still drops ~1.4k datagrams per GiB (recovered by QUIC).
//! - UDP payloads capped at 1472 (a 1500-byte MTU): 120–145 MB/s; GSO would be the lever there.

//! # Security
//! TLS 1.3 completes a client's handshake before the server has judged the client's
//! certificate, so a client cannot learn from TLS alone that it was refused. [`Endpoint::connect`]
//! therefore returns only after the server's hello reply, which the server sends only after
//! checking the client's certificate and claimed id. The server hands out a [`Peer`] (and so
//! any stream or message) only for a connection whose hello matched; everything a refused peer
//! sent is dropped with its connection. Refusals are logged (`tracing::warn!`) with the reason.

pub mod certs;
pub mod endpoint;
pub mod frame;
pub mod limits;
pub mod tls;

pub use certs::{BrokerCredentials, BrokerId};
pub use endpoint::{ConnectionStats, Endpoint, Peer, Stream, TransportError};
