//! One node's (one shard's) replication driver: the QUIC endpoint, one outbound link per peer,
//! inbound streams, the timer that ticks every local replica, the node-level failure detector,
//! and the outbox that coalesces every partition's messages per destination.
//!
//! Tasks on the shard's executor: one timer; one acceptor plus one per inbound connection; one
//! per peer dialling it and sending its queue on one stream; one IO task per partition; short
//! tasks reading the log for appends and flushing the outbox.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_replication::codec::{self, Payload};
use spate_replication::{GroupId, Message, NodeId, Outbox};
use spate_storage::Log;
use spate_transport::{BrokerCredentials, Endpoint, Peer, Stream};
use tracing::{debug, info, warn};

use crate::error::ReplicationError;
use crate::limits::{
    KEEPALIVE_TICKS, PARTITIONS_MAX, PEERS_MAX, PEER_QUEUE_BYTES_MAX,
    PEER_QUEUE_BYTES_UNCONNECTED_MAX, PEER_QUEUE_FRAMES_MAX, PEER_SILENCE_TICKS,
    RECONNECT_BACKOFF_MS_MAX, RECONNECT_BACKOFF_MS_MIN, TICK_MS,
};
use crate::partition::{Partition, PartitionConfig};
use crate::wire::{self, Inbound};

/// Where this node listens and who its peers are.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The QUIC address to bind (the broker's `--replication-listen`).
    pub listen: SocketAddr,
    /// Every other node's QUIC address (the broker's `--peers`, without this node).
    pub peers: BTreeMap<NodeId, SocketAddr>,
}

/// The replication driver of one shard. `!Send`: create it on the shard's executor.
pub struct ReplicationNode {
    shared: Rc<Shared>,
}

/// What partitions and tasks share. Crate-private.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    /// Random per start: peers learn from a new value that we restarted.
    pub(crate) incarnation: u64,
    endpoint: Endpoint,
    partitions: RefCell<BTreeMap<GroupId, Partition>>,
    outbox: RefCell<Outbox<Payload>>,
    flush_scheduled: Cell<bool>,
    peers: RefCell<BTreeMap<NodeId, Link>>,
    stopped: Cell<bool>,
    /// Tests: drop every frame to and from peers (a network partition around this node).
    isolated: Cell<bool>,
}

/// This node's link to one peer: the frames waiting for its stream, and liveness.
struct Link {
    addr: SocketAddr,
    queue: VecDeque<Vec<Bytes>>,
    queued_bytes: usize,
    waker: Option<Waker>,
    /// Ticks since anything arrived from the peer.
    silent_ticks: u32,
    down: bool,
    /// The peer's incarnation as last announced.
    incarnation: Option<u64>,
    /// Drop the outbound connection and dial again (the peer restarted).
    redial: bool,
    frames_dropped: u64,
    connected: bool,
}

impl ReplicationNode {
    /// Binds the QUIC endpoint and starts the node's tasks on the current executor.
    pub fn start(
        config: NodeConfig,
        credentials: &BrokerCredentials,
    ) -> Result<ReplicationNode, ReplicationError> {
        if credentials.broker_id != config.node_id {
            return Err(ReplicationError::Config(format!(
                "credentials are for broker {}, not node {}",
                credentials.broker_id, config.node_id
            )));
        }
        if config.peers.len() > PEERS_MAX || config.peers.contains_key(&config.node_id) {
            return Err(ReplicationError::Config(format!(
                "peers must exclude this node and number at most {PEERS_MAX}"
            )));
        }
        let endpoint = Endpoint::bind(config.listen, credentials)?;
        let peers = config
            .peers
            .iter()
            .map(|(&id, &addr)| {
                let link = Link {
                    addr,
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    waker: None,
                    silent_ticks: 0,
                    down: false,
                    incarnation: None,
                    redial: false,
                    frames_dropped: 0,
                    connected: false,
                };
                (id, link)
            })
            .collect();
        let shared = Rc::new(Shared {
            id: config.node_id,
            incarnation: rand::random(),
            endpoint,
            partitions: RefCell::new(BTreeMap::new()),
            outbox: RefCell::new(Outbox::default()),
            flush_scheduled: Cell::new(false),
            peers: RefCell::new(peers),
            stopped: Cell::new(false),
            isolated: Cell::new(false),
        });
        glommio::spawn_local(tick_task(shared.clone())).detach();
        glommio::spawn_local(accept_task(shared.clone())).detach();
        for &peer in config.peers.keys() {
            glommio::spawn_local(outbound_task(shared.clone(), peer)).detach();
        }
        info!(node = config.node_id, listen = %config.listen, peers = config.peers.len(), "replication node started");
        Ok(ReplicationNode { shared })
    }

    pub fn node_id(&self) -> NodeId {
        self.shared.id
    }

    /// QUIC's numbers (RTT, packets sent and lost) of each connection to a peer, for metrics.
    pub fn connection_stats(&self) -> Vec<spate_transport::ConnectionStats> {
        self.shared.endpoint.connection_stats()
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> Result<SocketAddr, ReplicationError> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// Creates or reopens the replica of `group` on this node over `log` (opened by the caller
    /// in its partition directory; the replica-state file lives beside the segments). A new
    /// replica starts with `replicas` as its voters; a reopened one with what it persisted.
    pub async fn open_partition(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        log: Log,
        config: PartitionConfig,
    ) -> Result<Partition, ReplicationError> {
        if self.shared.partitions.borrow().contains_key(&group) {
            return Err(ReplicationError::Config(format!("group {} is already open", group.0)));
        }
        if self.shared.partitions.borrow().len() >= PARTITIONS_MAX {
            return Err(ReplicationError::Config(format!("at most {PARTITIONS_MAX} partitions")));
        }
        let unknown: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|&n| n != self.shared.id && !self.shared.peers.borrow().contains_key(&n))
            .collect();
        if !unknown.is_empty() {
            return Err(ReplicationError::Config(format!("replicas {unknown:?} are not peers")));
        }
        let partition = Partition::open(self.shared.clone(), group, replicas, log, config).await?;
        self.shared.partitions.borrow_mut().insert(group, partition.clone());
        Ok(partition)
    }

    /// Stops the replica of `group` (a deleted topic) and closes its log; the caller deletes
    /// its files. Its peers stop hearing from it, as from a replica that is gone.
    pub async fn close_partition(&self, group: GroupId) {
        let partition = self.shared.partitions.borrow_mut().remove(&group);
        if let Some(partition) = partition {
            partition.close().await;
        }
    }

    pub fn partition(&self, group: GroupId) -> Option<Partition> {
        self.shared.partitions.borrow().get(&group).cloned()
    }

    /// For tests: cut this node off from every peer (frames in and out are dropped), or heal.
    #[doc(hidden)]
    pub fn set_isolated(&self, isolated: bool) {
        self.shared.isolated.set(isolated);
    }

    /// Peers the failure detector currently counts as down.
    pub fn peers_down(&self) -> Vec<NodeId> {
        self.shared.peers.borrow().iter().filter(|(_, l)| l.down).map(|(&id, _)| id).collect()
    }

    /// Graceful stop: moves leadership of every partition led here to another replica (best
    /// effort, each bounded in time), closes every log cleanly, then the endpoint.
    pub async fn shutdown(self) {
        let partitions: Vec<Partition> =
            self.shared.partitions.borrow().values().cloned().collect();
        // All at once: each transfer waits up to a few election timeouts, and with thousands of
        // partitions (or peers stopping at the same time) one after another would take minutes.
        let transfers: Vec<_> = partitions
            .iter()
            .filter(|p| p.status().role == spate_replication::Role::Leader)
            .map(|partition| {
                let partition = partition.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = partition.transfer_leadership(None).await {
                        warn!(group = partition.group().0, error = %e, "leadership transfer on shutdown");
                    }
                })
            })
            .collect();
        for transfer in transfers {
            transfer.await;
        }
        self.shared.stop();
        for partition in &partitions {
            partition.close().await;
        }
        self.shared.partitions.borrow_mut().clear();
        self.shared.endpoint.close().await;
    }
}

impl Drop for ReplicationNode {
    /// Abandons everything as a crash would (nothing is flushed or closed; see `shutdown` for
    /// a clean stop): stops every task and drops every partition's log and the endpoint once
    /// the executor has run the tasks' cancellation.
    fn drop(&mut self) {
        self.shared.stop();
        let partitions = std::mem::take(&mut *self.shared.partitions.borrow_mut());
        for partition in partitions.values() {
            partition.abandon();
        }
    }
}

impl Shared {
    /// Stops every task: wakes the links, and closes the endpoint (every connection fails, so
    /// tasks waiting to accept, dial, send or receive return). The endpoint's close marks it
    /// closed before its first wait, so this takes effect at once.
    fn stop(self: &Rc<Self>) {
        self.stopped.set(true);
        for link in self.peers.borrow_mut().values_mut() {
            if let Some(waker) = link.waker.take() {
                waker.wake();
            }
        }
        let shared = self.clone();
        glommio::spawn_local(async move { shared.endpoint.close().await }).detach();
    }

    /// Queues `msg` for `to`; the outbox is flushed once the current task yields, so messages
    /// of many groups to one node share an envelope.
    pub(crate) fn send(self: &Rc<Self>, to: NodeId, group: GroupId, msg: Message<Payload>) {
        self.outbox.borrow_mut().push(to, group, msg);
        if !self.flush_scheduled.replace(true) {
            spawn_deferred(flush_outbox(self.clone()));
        }
    }

    /// Whether `to` is connected and heard from lately: worth sending records to.
    pub(crate) fn reachable(&self, to: NodeId) -> bool {
        self.peers.borrow().get(&to).is_some_and(|link| link.connected && !link.down)
    }

    /// Puts a frame on `to`'s link queue, or drops it if the queue is full.
    fn enqueue(&self, to: NodeId, frame: Vec<Bytes>) {
        if self.isolated.get() {
            return;
        }
        let mut peers = self.peers.borrow_mut();
        let Some(link) = peers.get_mut(&to) else {
            debug!(to, "message for a node that is not a peer dropped");
            return;
        };
        let bytes: usize = frame.iter().map(Bytes::len).sum();
        let bytes_max =
            if link.connected { PEER_QUEUE_BYTES_MAX } else { PEER_QUEUE_BYTES_UNCONNECTED_MAX };
        if link.queue.len() >= PEER_QUEUE_FRAMES_MAX || link.queued_bytes + bytes > bytes_max {
            link.frames_dropped += 1;
            return;
        }
        link.queued_bytes += bytes;
        link.queue.push_back(frame);
        if let Some(waker) = link.waker.take() {
            waker.wake();
        }
    }

    /// A frame arrived from `from` (whose identity the transport checked).
    fn on_frame(self: &Rc<Self>, from: NodeId, frame: Bytes) {
        if self.isolated.get() {
            return;
        }
        {
            let mut peers = self.peers.borrow_mut();
            let Some(link) = peers.get_mut(&from) else { return };
            link.silent_ticks = 0;
            link.down = false;
        }
        match wire::decode(frame) {
            Ok(Inbound::Keepalive) => {}
            Ok(Inbound::Hello { incarnation }) => {
                let mut peers = self.peers.borrow_mut();
                let link = peers.get_mut(&from).expect("checked above");
                if link.incarnation != Some(incarnation) {
                    // A peer we had not heard from in this incarnation: our outbound
                    // connection may be to its previous life, which QUIC would only notice
                    // at the idle timeout. Dial again.
                    debug!(from, incarnation, "peer (re)started; redialling");
                    link.incarnation = Some(incarnation);
                    link.redial = true;
                    if let Some(waker) = link.waker.take() {
                        waker.wake();
                    }
                }
            }
            Ok(Inbound::Envelope(envelope)) => {
                // Bounded by ENVELOPE_MESSAGES_MAX (checked by the codec).
                for (group, msg) in envelope {
                    let partition = self.partitions.borrow().get(&group).cloned();
                    match partition {
                        Some(partition) => partition.receive(from, msg),
                        None => {
                            debug!(from, group = group.0, "message for an unknown group dropped")
                        }
                    }
                }
            }
            Err(e) => warn!(from, error = %e, "refused a frame"),
        }
    }

    /// One tick of the timer: failure detector, keepalives, then every local replica.
    fn tick(self: &Rc<Self>, tick: u64) {
        let mut down = Vec::new();
        for (&id, link) in self.peers.borrow_mut().iter_mut() {
            link.silent_ticks = link.silent_ticks.saturating_add(1);
            if link.silent_ticks >= PEER_SILENCE_TICKS && !link.down {
                info!(node = self.id, peer = id, "peer silent: down");
                link.down = true;
                down.push(id);
            }
        }
        if tick.is_multiple_of(u64::from(KEEPALIVE_TICKS)) {
            let ids: Vec<NodeId> = self.peers.borrow().keys().copied().collect();
            for id in ids {
                if self.peers.borrow()[&id].queue.is_empty() {
                    self.enqueue(id, wire::keepalive());
                }
            }
        }
        let partitions: Vec<Partition> = self.partitions.borrow().values().cloned().collect();
        for partition in partitions {
            partition.tick(tick, &down);
        }
    }
}

/// Spawns `task` to run after the current task yields. Glommio runs a task spawned into the
/// current task queue *at once*, inside the spawner (`spawn_and_run`), which would both defeat
/// coalescing and run it while the spawner holds a `RefCell` borrow.
pub(crate) fn spawn_deferred(task: impl std::future::Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        futures_lite::future::yield_now().await;
        task.await;
    })
    .detach();
}

async fn flush_outbox(shared: Rc<Shared>) {
    shared.flush_scheduled.set(false);
    let envelopes: Vec<_> = shared.outbox.borrow_mut().drain().collect();
    for (to, envelope) in envelopes {
        match codec::encode_frames(&envelope) {
            Ok(frames) => {
                for frame in frames {
                    shared.enqueue(to, wire::envelope(frame));
                }
            }
            Err(e) => warn!(to, error = %e, "could not encode an envelope (a driver bug)"),
        }
    }
}

async fn tick_task(shared: Rc<Shared>) {
    let tick_interval = Duration::from_millis(TICK_MS);
    let mut next = Instant::now() + tick_interval;
    let mut tick: u64 = 0;
    // One iteration per tick until the node stops.
    while !shared.stopped.get() {
        let now = Instant::now();
        if next > now {
            glommio::timer::sleep(next - now).await;
        }
        // After a stall (the executor was blocked), do not burst the missed ticks.
        next = Instant::now().max(next) + tick_interval;
        if shared.stopped.get() {
            break;
        }
        tick += 1;
        shared.tick(tick);
    }
}

async fn accept_task(shared: Rc<Shared>) {
    // One iteration per accepted connection; ends when the endpoint closes.
    while let Ok(peer) = shared.endpoint.accept().await {
        let from = peer.broker_id();
        if !shared.peers.borrow().contains_key(&from) {
            warn!(node = shared.id, from, "refused a connection from a broker that is not a peer");
            continue;
        }
        glommio::spawn_local(inbound_task(shared.clone(), peer)).detach();
    }
}

/// Receives on the streams `peer` opens to us (one at a time; our peers open one per
/// connection) until the connection ends.
async fn inbound_task(shared: Rc<Shared>, peer: Peer) {
    let from = peer.broker_id();
    // One iteration per stream; ends with the connection.
    while let Ok(stream) = peer.accept_stream().await {
        // One iteration per frame; ends with the stream.
        while let Ok(Some(frame)) = stream.recv().await {
            if shared.stopped.get() {
                return;
            }
            shared.on_frame(from, frame);
        }
    }
}

/// Dials `peer`, opens one stream, announces our incarnation and sends the link's queue,
/// again and again (with backoff) whenever the connection fails or the peer restarted.
async fn outbound_task(shared: Rc<Shared>, peer: NodeId) {
    let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
    // One iteration per connection attempt; ends when the node stops.
    while !shared.stopped.get() {
        let addr = shared.peers.borrow()[&peer].addr;
        match connect(&shared, addr, peer).await {
            Ok((connection, stream)) => {
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
                send_queue(&shared, peer, &stream).await;
                shared.peers.borrow_mut().get_mut(&peer).expect("peer").connected = false;
                drop(stream);
                drop(connection);
            }
            Err(e) => {
                debug!(node = shared.id, peer, error = %e, "dial failed");
                // In tick-sized steps, so a stopping node does not wait out the backoff.
                for _ in 0..backoff_ms.div_ceil(TICK_MS) {
                    if shared.stopped.get() {
                        return;
                    }
                    glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
                }
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
            }
        }
    }
}

async fn connect(
    shared: &Rc<Shared>,
    addr: SocketAddr,
    peer: NodeId,
) -> Result<(Peer, Stream), ReplicationError> {
    let connection = shared.endpoint.connect(addr, peer).await?;
    let stream = connection.open_stream().await?;
    {
        let mut peers = shared.peers.borrow_mut();
        let link = peers.get_mut(&peer).expect("peer");
        link.redial = false;
        link.connected = true;
    }
    stream.send_chunks(wire::hello(shared.incarnation)).await?;
    debug!(node = shared.id, peer, "connected");
    Ok((connection, stream))
}

/// Sends the link's frames until the stream fails, the peer restarted or the node stops.
async fn send_queue(shared: &Rc<Shared>, peer: NodeId, stream: &Stream) {
    // One iteration per frame.
    loop {
        let frame = poll_fn(|cx| {
            let mut peers = shared.peers.borrow_mut();
            let link = peers.get_mut(&peer).expect("peer");
            if shared.stopped.get() || link.redial {
                return Poll::Ready(None);
            }
            match link.queue.pop_front() {
                Some(frame) => {
                    link.queued_bytes -= frame.iter().map(Bytes::len).sum::<usize>();
                    Poll::Ready(Some(frame))
                }
                None => {
                    link.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let Some(frame) = frame else { return };
        if let Err(e) = stream.send_chunks(frame).await {
            debug!(node = shared.id, peer, error = %e, "send failed; redialling");
            return;
        }
    }
}
