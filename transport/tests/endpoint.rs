//! Two endpoints on 127.0.0.1 in one Glommio executor: messages, refusals, a large transfer.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use spate_transport::certs::{generate_cluster, ClusterPem};
use spate_transport::limits::FRAME_BYTES_MAX;
use spate_transport::{BrokerCredentials, BrokerId, Endpoint, TransportError};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let timeout = async {
                glommio::timer::sleep(TEST_TIMEOUT).await;
                panic!("test timed out");
            };
            futures_lite::future::or(test(), timeout).await
        })
        .unwrap()
        .join()
        .unwrap();
}

fn creds(cluster: &ClusterPem, id: BrokerId) -> BrokerCredentials {
    let b = &cluster.brokers[id as usize - 1];
    BrokerCredentials::from_pem(id, &cluster.ca_pem, &b.cert_pem, &b.key_pem).unwrap()
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Whether `endpoint` accepts any peer within a while.
async fn accepts_within(endpoint: &Endpoint, wait: Duration) -> bool {
    let accepted = async { endpoint.accept().await.is_ok() };
    let waited = async {
        glommio::timer::sleep(wait).await;
        false
    };
    futures_lite::future::or(accepted, waited).await
}

#[test]
fn messages_flow_both_ways() {
    let cluster = generate_cluster(2).unwrap();
    run(move || async move {
        let a = Endpoint::bind(localhost(), &creds(&cluster, 1)).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let b_addr = b.local_addr().unwrap();
        let server = glommio::spawn_local(async move {
            let peer = b.accept().await.unwrap();
            assert_eq!(peer.broker_id(), 1);
            let stream = peer.accept_stream().await.unwrap();
            for i in 0..100u32 {
                let message = stream.recv().await.unwrap().unwrap();
                assert_eq!(message, Bytes::from(format!("ping {i}")));
                stream.send(Bytes::from(format!("pong {i}"))).await.unwrap();
            }
            assert_eq!(stream.recv().await.unwrap(), None);
            // QUIC's numbers name the dialling broker, inbound.
            let stats = b.connection_stats();
            assert_eq!(stats.len(), 1, "{stats:?}");
            assert_eq!((stats[0].broker_id, stats[0].outbound), (1, false));
            assert!(stats[0].sent_packets > 0, "{stats:?}");
            stream.finish();
            // Keep the endpoint until the client has read everything.
            peer.closed().await;
        });
        let peer = a.connect(b_addr, 2).await.unwrap();
        assert_eq!(peer.broker_id(), 2);
        let stream = peer.open_stream().await.unwrap();
        for i in 0..100u32 {
            stream.send(Bytes::from(format!("ping {i}"))).await.unwrap();
            let reply = stream.recv().await.unwrap().unwrap();
            assert_eq!(reply, Bytes::from(format!("pong {i}")));
        }
        // A hundred round trips measured the RTT: well under QUIC's initial guess (333 ms).
        let stats = a.connection_stats();
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!((stats[0].broker_id, stats[0].outbound), (2, true));
        assert!(stats[0].sent_packets >= 100, "{stats:?}");
        assert!(stats[0].rtt < Duration::from_millis(100), "{stats:?}");
        stream.finish();
        assert_eq!(stream.recv().await.unwrap(), None);
        let too_large = Bytes::from(vec![0u8; FRAME_BYTES_MAX + 1]);
        assert!(matches!(stream.send(too_large).await, Err(TransportError::Frame(_))));
        drop(stream);
        drop(peer);
        server.await;
    });
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_cannot_connect() {
    let cluster = generate_cluster(2).unwrap();
    let rogue_cluster = generate_cluster(1).unwrap();
    run(move || async move {
        // The rogue trusts the real CA, so only the server can refuse it.
        let mut rogue = creds(&rogue_cluster, 1);
        rogue.ca = creds(&cluster, 1).ca;
        let a = Endpoint::bind(localhost(), &rogue).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let result = a.connect(b.local_addr().unwrap(), 2).await;
        // TLS 1.3: the client's handshake completes; the server's refusal arrives before the
        // hello reply, so connect fails instead of reporting a peer that is not there.
        match result {
            Err(TransportError::ConnectionLost(reason)) => assert!(reason.contains("certificate")),
            other => panic!("rogue connected or failed oddly: {:?}", other.err()),
        }
        assert!(!accepts_within(&b, Duration::from_millis(300)).await);
    });
}

#[test]
fn a_peer_claiming_another_broker_id_is_refused() {
    let cluster = generate_cluster(3).unwrap();
    run(move || async move {
        // Broker 1's certificate, but its hello says 3.
        let mut liar = creds(&cluster, 1);
        liar.broker_id = 3;
        let a = Endpoint::bind(localhost(), &liar).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let result = a.connect(b.local_addr().unwrap(), 2).await;
        match result {
            Err(TransportError::ConnectionLost(reason)) => assert!(reason.contains("hello")),
            other => panic!("liar connected or failed oddly: {:?}", other.err()),
        }
        assert!(!accepts_within(&b, Duration::from_millis(300)).await);
    });
}

#[test]
fn a_server_that_is_not_the_dialled_broker_is_refused() {
    let cluster = generate_cluster(3).unwrap();
    run(move || async move {
        let a = Endpoint::bind(localhost(), &creds(&cluster, 1)).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        // Dialling broker 3 at broker 2's address: TLS refuses the name.
        assert!(a.connect(b.local_addr().unwrap(), 3).await.is_err());
        // Broker 2's certificate, but its hello reply says 3: the client refuses the reply.
        let mut liar = creds(&cluster, 2);
        liar.broker_id = 3;
        let c = Endpoint::bind(localhost(), &liar).unwrap();
        let result = a.connect(c.local_addr().unwrap(), 2).await;
        assert!(matches!(result, Err(TransportError::WrongBroker { .. })), "{:?}", result.err());
        assert!(!accepts_within(&b, Duration::from_millis(100)).await);
    });
}

#[test]
fn a_large_transfer_arrives_intact() {
    const MESSAGES: usize = 64;
    const MESSAGE_BYTES: usize = 1024 * 1024;
    let cluster = generate_cluster(2).unwrap();
    run(move || async move {
        let a = Endpoint::bind(localhost(), &creds(&cluster, 1)).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let b_addr = b.local_addr().unwrap();
        let receiver = glommio::spawn_local(async move {
            let peer = b.accept().await.unwrap();
            let stream = peer.accept_stream().await.unwrap();
            let mut received = 0;
            while let Some(message) = stream.recv().await.unwrap() {
                assert_eq!(message.len(), MESSAGE_BYTES);
                let expected = pattern(received, MESSAGE_BYTES);
                assert!(message == expected, "message {received} differs");
                received += 1;
            }
            assert_eq!(received, MESSAGES);
            stream.send(Bytes::from_static(b"done")).await.unwrap();
            stream.finish();
            peer.closed().await;
        });
        let peer = a.connect(b_addr, 2).await.unwrap();
        let stream = peer.open_stream().await.unwrap();
        for i in 0..MESSAGES {
            stream.send(pattern(i, MESSAGE_BYTES)).await.unwrap();
            assert!(
                peer.send_queued_bytes()
                    <= spate_transport::limits::CONNECTION_SEND_QUEUE_BYTES_MAX
            );
        }
        stream.finish();
        assert_eq!(stream.recv().await.unwrap(), Some(Bytes::from_static(b"done")));
        drop(stream);
        drop(peer);
        receiver.await;
    });
}

/// Message `index`: bytes that differ per message and per position.
fn pattern(index: usize, bytes: usize) -> Bytes {
    (0..bytes).map(|i| (i as u8).wrapping_mul(31).wrapping_add(index as u8)).collect()
}

#[test]
fn a_reader_that_does_not_read_stops_the_sender() {
    const MESSAGE_BYTES: usize = 1024 * 1024;
    let cluster = generate_cluster(2).unwrap();
    run(move || async move {
        let a = Endpoint::bind(localhost(), &creds(&cluster, 1)).unwrap();
        let b = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let b_addr = b.local_addr().unwrap();
        let (ready_tx, ready_rx) = futures_channel_oneshot();
        let receiver = glommio::spawn_local(async move {
            let peer = b.accept().await.unwrap();
            let stream = peer.accept_stream().await.unwrap();
            ready_rx.await;
            // Now read everything: the sender is released and nothing was lost.
            let mut received = 0usize;
            while let Some(message) = stream.recv().await.unwrap() {
                assert_eq!(message.len(), MESSAGE_BYTES);
                received += 1;
            }
            received
        });
        let peer = a.connect(b_addr, 2).await.unwrap();
        let stream = peer.open_stream().await.unwrap();
        let message = Bytes::from(vec![7u8; MESSAGE_BYTES]);
        let mut sent = 0usize;
        // Bounded: at most this many messages fit in the queues and windows on both sides.
        let fits = (spate_transport::limits::CONNECTION_SEND_QUEUE_BYTES_MAX
            + spate_transport::limits::STREAM_RECV_BUFFER_BYTES_MAX
            + spate_transport::limits::CONNECTION_RECEIVE_WINDOW_BYTES as usize)
            / MESSAGE_BYTES
            + 1;
        loop {
            let send = async {
                stream.send(message.clone()).await.unwrap();
                true
            };
            let stall = async {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                false
            };
            if !futures_lite::future::or(send, stall).await {
                break;
            }
            sent += 1;
            assert!(sent <= fits, "sent {sent} messages to a reader that reads nothing");
        }
        assert!(sent >= 16, "only {sent} messages before backpressure");
        ready_tx.send();
        stream.finish();
        // The send that stalled was cancelled before queueing anything.
        assert_eq!(receiver.await, sent);
    });
}

/// A one-shot signal between two tasks of one executor.
fn futures_channel_oneshot() -> (Signal, impl Future<Output = ()>) {
    let flag = std::rc::Rc::new(std::cell::Cell::new(false));
    let waiter = flag.clone();
    let wait = async move {
        for _ in 0..10_000 {
            if waiter.get() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        panic!("never signalled");
    };
    (Signal(flag), wait)
}

struct Signal(std::rc::Rc<std::cell::Cell<bool>>);

impl Signal {
    fn send(self) {
        self.0.set(true);
    }
}

#[test]
fn three_brokers_connect_to_each_other() {
    let cluster = generate_cluster(3).unwrap();
    run(move || async move {
        let endpoints: Vec<Endpoint> =
            (1..=3).map(|id| Endpoint::bind(localhost(), &creds(&cluster, id)).unwrap()).collect();
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.local_addr().unwrap()).collect();
        let endpoints = std::rc::Rc::new(endpoints);
        // Every broker accepts from the brokers with a lower id and echoes one message.
        let mut servers = Vec::new();
        for (index, lower) in [(1usize, 1usize), (2, 2)] {
            let endpoints = endpoints.clone();
            servers.push(glommio::spawn_local(async move {
                let mut peers = Vec::new();
                for _ in 0..lower {
                    let peer = endpoints[index].accept().await.unwrap();
                    let stream = peer.accept_stream().await.unwrap();
                    let message = stream.recv().await.unwrap().unwrap();
                    assert_eq!(
                        message,
                        Bytes::from(format!("{}->{}", peer.broker_id(), index + 1))
                    );
                    stream.send(message).await.unwrap();
                    peers.push((peer, stream));
                }
                // Returned, not dropped: dropping a peer closes it at once.
                peers
            }));
        }
        let mut clients = Vec::new();
        for from in 0..3usize {
            for (to, &addr) in addrs.iter().enumerate().skip(from + 1) {
                let peer = endpoints[from].connect(addr, to as BrokerId + 1).await.unwrap();
                let stream = peer.open_stream().await.unwrap();
                let message = Bytes::from(format!("{}->{}", from + 1, to + 1));
                stream.send(message.clone()).await.unwrap();
                assert_eq!(stream.recv().await.unwrap(), Some(message));
                clients.push((peer, stream));
            }
        }
        assert_eq!(clients.len(), 3);
        let mut server_peers = Vec::new();
        for server in servers {
            server_peers.extend(server.await);
        }
        assert_eq!(server_peers.len(), 3);
        assert_eq!(endpoints[0].connection_count(), 2);
    });
}

#[test]
fn connections_past_the_limit_are_refused() {
    use spate_transport::limits::CONNECTIONS_MAX;
    let cluster = generate_cluster(2).unwrap();
    run(move || async move {
        let server = Endpoint::bind(localhost(), &creds(&cluster, 2)).unwrap();
        let server_addr = server.local_addr().unwrap();
        let client_creds = creds(&cluster, 1);
        let mut peers = Vec::new();
        // One endpoint per connection, as separate brokers would have.
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS_MAX {
            let client = Endpoint::bind(localhost(), &client_creds).unwrap();
            peers.push(client.connect(server_addr, 2).await.unwrap());
            clients.push(client);
        }
        assert_eq!(server.connection_count(), CONNECTIONS_MAX);
        let extra = Endpoint::bind(localhost(), &client_creds).unwrap();
        let result = extra.connect(server_addr, 2).await;
        assert!(result.is_err(), "connection {} accepted", CONNECTIONS_MAX + 1);
        assert_eq!(server.connection_count(), CONNECTIONS_MAX);
        // A slot frees when a peer goes.
        drop(peers.pop());
        for _ in 0..200 {
            if server.connection_count() < CONNECTIONS_MAX {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let count = server.connection_count();
        let again = extra.connect(server_addr, 2).await;
        assert!(again.is_ok(), "{count} connections: {:?}", again.err());
    });
}
