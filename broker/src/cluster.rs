//! Cluster membership: which brokers form the cluster, and which of them are alive, over the
//! QUIC transport with mutual TLS (`spate-transport`).
//!
//! What exists: every broker started with `--node-id`, `--replication-listen`, `--peers` and the
//! `--tls-*` files dials every peer, keeps one stream open to each and sends a heartbeat every
//! [`limits::HEARTBEAT_INTERVAL`]; it also accepts its peers' connections and records when it
//! last heard each. A peer is alive while its heartbeats arrive within
//! [`limits::PEER_DEAD_AFTER`]. A connection whose certificate is not signed by the cluster CA,
//! or names a broker id the certificate does not hold, never gets past the transport's TLS and
//! hello; a verified broker that is not in `--peers` is refused here. `spate cluster status`
//! shows the result (through the Metadata API's broker list).
//!
//! Not yet: replicating partitions (the consensus core in `spate-replication` is not wired to a
//! driver), adding and removing brokers at run time.
//!
//! Layout: [`Membership`] is the sans-IO state (heartbeats and time in, statuses out); the
//! heartbeat's byte layout is below; [`run`] is the thin Glommio driver on shard 0.
//!
//! Heartbeat (little-endian):
//!
//! ```text
//! magic     4 bytes  "SPHB"
//! node_id   u32      the sender's broker id (must match its certificate)
//! length    u16      bytes of the address that follows
//! address   length bytes, UTF-8: the sender's client address (`--listen`)
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use spate_transport::{BrokerCredentials, Endpoint, Peer};

use crate::limits;

const MAGIC: &[u8; 4] = b"SPHB";

/// How a broker joins a cluster (all of `spate serve`'s cluster flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u32,
    /// Where this broker's QUIC endpoint listens (UDP).
    pub replication_listen: SocketAddr,
    /// Every broker of the cluster (this one included or not) by id: its replication address.
    pub peers: BTreeMap<u32, SocketAddr>,
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// Parses `--peers 1@host:port,2@host:port`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u32, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, address) =
            item.split_once('@').ok_or_else(|| format!("peer {item:?}: expected ID@HOST:PORT"))?;
        let id: u32 = id.parse().map_err(|_| format!("peer {item:?}: bad broker id {id:?}"))?;
        if id == 0 {
            return Err(format!("peer {item:?}: broker ids start at 1"));
        }
        let address = std::net::ToSocketAddrs::to_socket_addrs(address)
            .map_err(|e| format!("peer {item:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("peer {item:?}: no address"))?;
        if peers.insert(id, address).is_some() {
            return Err(format!("peer id {id} appears twice in --peers"));
        }
        if peers.len() > limits::CLUSTER_BROKERS_MAX {
            return Err(format!("more than {} brokers in --peers", limits::CLUSTER_BROKERS_MAX));
        }
    }
    Ok(peers)
}

impl ClusterConfig {
    /// Checks the parts against each other: this broker's own entry in `peers`, if any, is its
    /// replication address.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("--node-id: broker ids start at 1".into());
        }
        match self.peers.get(&self.node_id) {
            Some(address) if *address != self.replication_listen => Err(format!(
                "--peers gives broker {} the address {address}, but --replication-listen is {}",
                self.node_id, self.replication_listen
            )),
            _ => Ok(()),
        }
    }

    fn others(&self) -> impl Iterator<Item = (u32, SocketAddr)> + '_ {
        self.peers.iter().filter(|(id, _)| **id != self.node_id).map(|(id, a)| (*id, *a))
    }

    /// Every broker of the cluster, this one included, in id order.
    pub fn broker_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.peers.keys().copied().collect();
        if !ids.contains(&self.node_id) {
            ids.push(self.node_id);
            ids.sort_unstable();
        }
        ids
    }

    pub fn credentials(&self) -> Result<BrokerCredentials, String> {
        BrokerCredentials::from_files(self.node_id, &self.tls_ca, &self.tls_cert, &self.tls_key)
            .map_err(|e| format!("cluster TLS files: {e}"))
    }

    /// The replication endpoint of shard `shard`: each shard replicates its partitions with
    /// the same shard of every peer, on the replication port + 1 + shard (as client ports go),
    /// so no replication traffic crosses cores.
    pub fn shard_node(&self, shard: usize) -> spate_cluster::NodeConfig {
        let shift = |mut address: SocketAddr| {
            address.set_port(address.port().wrapping_add(1 + shard as u16));
            address
        };
        spate_cluster::NodeConfig {
            node_id: self.node_id,
            listen: shift(self.replication_listen),
            peers: self.others().map(|(id, address)| (id, shift(address))).collect(),
        }
    }
}

/// One broker as `spate cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerStatus {
    pub id: u32,
    /// Its client address once a heartbeat told it, else its replication address.
    pub address: String,
    pub alive: bool,
}

#[derive(Debug, Clone)]
struct PeerState {
    replication: SocketAddr,
    client: Option<String>,
    last_heard: Option<Instant>,
}

/// What this broker knows of its peers. Sans-IO: heartbeats and the time in, statuses out.
#[derive(Debug, Clone)]
pub struct Membership {
    node_id: u32,
    client_address: String,
    peers: BTreeMap<u32, PeerState>,
    /// When this broker started listening for peers.
    started: Instant,
}

impl Membership {
    pub fn new(config: &ClusterConfig, client_address: String, now: Instant) -> Membership {
        let peers = config
            .others()
            .map(|(id, replication)| {
                (id, PeerState { replication, client: None, last_heard: None })
            })
            .collect();
        Membership { node_id: config.node_id, client_address, peers, started: now }
    }

    /// Records a heartbeat from `id`. Returns false (and records nothing) for a broker that is
    /// not a configured peer.
    pub fn heard(&mut self, id: u32, client_address: String, now: Instant) -> bool {
        let Some(peer) = self.peers.get_mut(&id) else { return false };
        peer.client = Some(client_address);
        peer.last_heard = Some(now);
        true
    }

    /// Peers known to be down: silent for [`limits::PEER_DEAD_AFTER`], counting from this
    /// broker's start for one not heard yet. Unlike `status`, which calls an unheard peer dead
    /// at once, this gives a peer the benefit of the doubt while this broker has just started
    /// (a broker that just took over the metadata log must still place replicas on its peers).
    pub fn known_down(&self, now: Instant) -> Vec<u32> {
        self.peers
            .iter()
            .filter(|(_, peer)| {
                let since = peer.last_heard.unwrap_or(self.started);
                now.saturating_duration_since(since) >= limits::PEER_DEAD_AFTER
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every broker of the cluster, this one first; alive while heard within
    /// [`limits::PEER_DEAD_AFTER`].
    pub fn status(&self, now: Instant) -> Vec<BrokerStatus> {
        let mut out = vec![BrokerStatus {
            id: self.node_id,
            address: self.client_address.clone(),
            alive: true,
        }];
        for (id, peer) in &self.peers {
            let alive = peer.last_heard.is_some_and(|heard| {
                now.saturating_duration_since(heard) < limits::PEER_DEAD_AFTER
            });
            let address = peer.client.clone().unwrap_or_else(|| peer.replication.to_string());
            out.push(BrokerStatus { id: *id, address, alive });
        }
        out
    }
}

/// A heartbeat: `MAGIC`, the sender's id (u32 LE), its incarnation (u64 LE: random per
/// process start, so a restart shows), and its client address (u16 LE length, UTF-8).
pub fn encode_heartbeat(node_id: u32, incarnation: u64, client_address: &str) -> Bytes {
    let address = &client_address.as_bytes()[..client_address.len().min(u16::MAX as usize)];
    let mut out = BytesMut::with_capacity(HEARTBEAT_HEADER_LEN + address.len());
    out.put_slice(MAGIC);
    out.put_u32_le(node_id);
    out.put_u64_le(incarnation);
    out.put_u16_le(address.len() as u16);
    out.put_slice(address);
    out.freeze()
}

const HEARTBEAT_HEADER_LEN: usize = 18;

/// The sender's id, incarnation and client address, or why the bytes are not a heartbeat.
pub fn decode_heartbeat(bytes: &[u8]) -> Result<(u32, u64, String), String> {
    if bytes.len() < HEARTBEAT_HEADER_LEN || &bytes[..4] != MAGIC {
        return Err("not a heartbeat".into());
    }
    let node_id = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let incarnation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let length = u16::from_le_bytes(bytes[16..18].try_into().expect("2 bytes")) as usize;
    if bytes.len() != HEARTBEAT_HEADER_LEN + length {
        return Err(format!("heartbeat of {} bytes announces {length} address bytes", bytes.len()));
    }
    let address =
        std::str::from_utf8(&bytes[HEARTBEAT_HEADER_LEN..]).map_err(|_| "address is not UTF-8")?;
    Ok((node_id, incarnation, address.to_string()))
}

/// The membership view every shard reads (Metadata answers) and shard 0's driver writes.
pub type SharedMembership = Arc<Mutex<Membership>>;

/// Runs membership on this executor (shard 0) until `stop` is set: binds the QUIC endpoint,
/// dials every peer and sends heartbeats, accepts peers and records theirs.
pub async fn run(
    config: ClusterConfig,
    client_address: String,
    view: SharedMembership,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let credentials = config.credentials()?;
    let endpoint = Rc::new(
        Endpoint::bind(config.replication_listen, &credentials)
            .map_err(|e| format!("cannot listen on {}: {e}", config.replication_listen))?,
    );
    tracing::info!(node_id = config.node_id, replication_listen = %config.replication_listen,
        peers = config.peers.len(), "joined the cluster's membership");
    let mut tasks = Vec::new();
    let incarnation = rand::random::<u64>();
    let accepted = Accepted::default();
    for (id, address) in config.others() {
        let (endpoint, stop, accepted) = (endpoint.clone(), stop.clone(), accepted.clone());
        let heartbeat = encode_heartbeat(config.node_id, incarnation, &client_address);
        tasks.push(glommio::spawn_local(dial(endpoint, id, address, heartbeat, accepted, stop)));
    }
    tasks.push(glommio::spawn_local(accept(endpoint.clone(), view, accepted, stop.clone())));
    // Bounded: checks the stop flag every tick.
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(limits::HEARTBEAT_INTERVAL).await;
    }
    endpoint.close().await;
    for task in tasks {
        task.cancel().await;
    }
    Ok(())
}

/// Each peer's incarnation, as its heartbeats said. A peer that restarted comes back with a new
/// one at once, while this broker's connection to its previous run looks alive until QUIC's
/// idle timeout: a new incarnation is the sign to dial again.
type Accepted = Rc<RefCell<HashMap<u32, u64>>>;

/// Keeps a connection to peer `id` and sends it a heartbeat every interval; reconnects after
/// a pause when the connection fails, and at once when the peer connected anew (it restarted).
async fn dial(
    endpoint: Rc<Endpoint>,
    id: u32,
    address: SocketAddr,
    heartbeat: Bytes,
    accepted: Accepted,
    stop: Arc<AtomicBool>,
) {
    let mut reported_down = false;
    let incarnation = || accepted.borrow().get(&id).copied().unwrap_or(0);
    while !stop.load(Ordering::SeqCst) {
        let sent = async {
            // The run of the peer this connection reaches (0 until heard from).
            let mut connected_to = incarnation();
            let peer = endpoint.connect(address, id).await?;
            let stream = peer.open_stream().await?;
            tracing::info!(peer = id, %address, "connected to peer");
            reported_down = false;
            // Bounded by the stop flag and the peer's restart; each iteration sends one
            // heartbeat.
            while !stop.load(Ordering::SeqCst) {
                let heard = incarnation();
                if connected_to == 0 {
                    connected_to = heard;
                } else if heard != connected_to {
                    tracing::info!(peer = id, "peer restarted: dialling its new run");
                    break;
                }
                stream.send(heartbeat.clone()).await?;
                glommio::timer::sleep(limits::HEARTBEAT_INTERVAL).await;
            }
            drop(peer);
            Ok::<(), spate_transport::TransportError>(())
        }
        .await;
        if let Err(error) = sent {
            if !reported_down {
                tracing::warn!(peer = id, %address, %error, "cannot reach peer; retrying");
                reported_down = true;
            }
            glommio::timer::sleep(limits::PEER_RECONNECT_BACKOFF).await;
        }
    }
}

/// Accepts peers' connections and records their heartbeats.
async fn accept(
    endpoint: Rc<Endpoint>,
    view: SharedMembership,
    accepted: Accepted,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let peer = match endpoint.accept().await {
            Ok(peer) => peer,
            Err(error) => {
                tracing::debug!(%error, "membership endpoint stopped accepting");
                return;
            }
        };
        glommio::spawn_local(receive(peer, view.clone(), accepted.clone())).detach();
    }
}

async fn receive(peer: Peer, view: SharedMembership, accepted: Accepted) {
    let id = peer.broker_id();
    let Ok(stream) = peer.accept_stream().await else { return };
    // Bounded by the connection: each iteration takes one message or ends.
    loop {
        let message = match stream.recv().await {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => return,
        };
        let heard = match decode_heartbeat(&message) {
            Ok((node_id, _, _)) if node_id != id => {
                Err(format!("heartbeat names broker {node_id}, certificate {id}"))
            }
            Ok((_, incarnation, address)) => {
                accepted.borrow_mut().insert(id, incarnation);
                let mut view = view.lock().expect("membership lock");
                if view.heard(id, address, Instant::now()) {
                    Ok(())
                } else {
                    Err(format!("broker {id} is not in --peers"))
                }
            }
            Err(error) => Err(error),
        };
        if let Err(error) = heard {
            tracing::warn!(peer = id, remote = %peer.remote_addr(), %error, "refusing peer");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            replication_listen: "127.0.0.1:7001".parse().unwrap(),
            peers: parse_peers("1@127.0.0.1:7001, 2@127.0.0.1:7002,3@127.0.0.1:7003").unwrap(),
            tls_ca: "ca.pem".into(),
            tls_cert: "broker-1.pem".into(),
            tls_key: "broker-1.key".into(),
        }
    }

    #[test]
    fn peers_parse_and_bad_lists_are_refused() {
        assert_eq!(config().peers.len(), 3);
        assert!(parse_peers("1@127.0.0.1:1,1@127.0.0.1:2").unwrap_err().contains("twice"));
        assert!(parse_peers("0@127.0.0.1:1").is_err());
        assert!(parse_peers("x@127.0.0.1:1").is_err());
        assert!(parse_peers("127.0.0.1:1").is_err());
        assert!(config().validate().is_ok());
        let mismatched =
            ClusterConfig { replication_listen: "127.0.0.1:9".parse().unwrap(), ..config() };
        assert!(mismatched.validate().is_err());
    }

    #[test]
    fn a_peer_is_alive_while_its_heartbeats_arrive() {
        let start = Instant::now();
        let mut membership = Membership::new(&config(), "127.0.0.1:9292".into(), start);
        let alive =
            |m: &Membership, now| -> Vec<bool> { m.status(now).iter().map(|s| s.alive).collect() };
        assert_eq!(alive(&membership, start), [true, false, false], "unheard peers are dead");
        assert!(membership.known_down(start).is_empty(), "but not known to be down yet");
        assert!(membership.heard(2, "127.0.0.1:9300".into(), start));
        assert!(!membership.heard(9, "127.0.0.1:9".into(), start), "not a configured peer");
        assert_eq!(alive(&membership, start), [true, true, false]);
        assert_eq!(membership.status(start)[1].address, "127.0.0.1:9300");
        assert_eq!(membership.status(start)[2].address, "127.0.0.1:7003");
        let later = start + limits::PEER_DEAD_AFTER;
        assert_eq!(alive(&membership, later), [true, false, false], "silent too long");
        assert_eq!(membership.known_down(later), [2, 3]);
        assert!(membership.heard(3, "127.0.0.1:9301".into(), later));
        assert_eq!(membership.known_down(later), [2]);
    }

    #[test]
    fn heartbeats_round_trip_and_garbage_is_refused() {
        let bytes = encode_heartbeat(7, 42, "10.0.0.1:9292");
        assert_eq!(decode_heartbeat(&bytes).unwrap(), (7, 42, "10.0.0.1:9292".to_string()));
        assert!(decode_heartbeat(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_heartbeat(b"nope").is_err());
        let mut wrong = bytes.to_vec();
        wrong[0] = b'X';
        assert!(decode_heartbeat(&wrong).is_err());
    }
}
