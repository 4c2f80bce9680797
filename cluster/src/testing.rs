//! A "broker" for tests and benchmarks: its own thread and Glommio executor running a
//! [`ReplicationNode`] with one replicated partition on a real log, driven by commands from
//! another thread. Three of them in one process are a cluster on loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::StreamExt;
use glommio::{LocalExecutorBuilder, Placement};
use spate_replication::{GroupId, NodeId};
use spate_storage::{FlushPolicy, Log, LogConfig, LogOptions};
use spate_transport::BrokerCredentials;

use crate::{
    Committed, NodeConfig, PartitionConfig, PartitionStatus, ReplicationError, ReplicationNode,
};

/// How long a command may take before the caller gives up (a broker that does not answer).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const COMMANDS_QUEUED_MAX: usize = 4096;

/// Everything one test broker needs.
#[derive(Clone, Debug)]
pub struct BrokerSpec {
    pub id: NodeId,
    /// The partition's log directory (reopened as is on restart).
    pub dir: PathBuf,
    /// Where `write_cluster_certs` wrote the certificates.
    pub certs: PathBuf,
    /// Every broker's QUIC address, this one's included.
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub replicas: Vec<NodeId>,
    pub group: GroupId,
    pub flush: FlushPolicy,
    pub quiesce: bool,
    /// Pin the executor to this CPU (benchmarks).
    pub cpu: Option<usize>,
}

pub type ProposeReply = Result<Committed, ReplicationError>;

enum Command {
    Propose(Vec<u8>, mpsc::Sender<ProposeReply>),
    Status(mpsc::Sender<PartitionStatus>),
    Read(u64, mpsc::Sender<Vec<Bytes>>),
    Transfer(Option<NodeId>, mpsc::Sender<Result<NodeId, ReplicationError>>),
    Isolate(bool),
    Pause(Duration),
    Crash,
    Shutdown,
}

pub struct TestBroker {
    pub id: NodeId,
    commands: Mutex<futures_channel::mpsc::Sender<Command>>,
    executor: Option<glommio::ExecutorJoinHandle<()>>,
}

impl TestBroker {
    /// Starts the broker and waits until its partition is open.
    pub fn start(spec: BrokerSpec) -> TestBroker {
        let (commands, receiver) = futures_channel::mpsc::channel(COMMANDS_QUEUED_MAX);
        let (ready, started) = mpsc::channel();
        let id = spec.id;
        let placement = spec.cpu.map_or(Placement::Unbound, Placement::Fixed);
        let executor = LocalExecutorBuilder::new(placement)
            .name(&format!("broker-{id}"))
            .spawn(move || run(spec, receiver, ready))
            .expect("executor");
        started.recv_timeout(COMMAND_TIMEOUT).expect("broker started");
        TestBroker { id, commands: Mutex::new(commands), executor: Some(executor) }
    }

    fn command(&self, command: Command) {
        let mut commands = self.commands.lock().expect("lock");
        self.retry(&mut commands, command);
    }

    fn retry(&self, commands: &mut futures_channel::mpsc::Sender<Command>, mut command: Command) {
        for _ in 0..COMMAND_TIMEOUT.as_millis() {
            match commands.try_send(command) {
                Ok(()) => return,
                Err(e) if e.is_full() => {
                    command = e.into_inner();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => panic!("broker {} is gone", self.id),
            }
        }
        panic!("broker {} does not take commands", self.id);
    }

    /// Proposes `batch`; the answer arrives on the returned channel (none if the broker dies).
    pub fn propose(&self, batch: Vec<u8>) -> mpsc::Receiver<ProposeReply> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Propose(batch, reply));
        answer
    }

    pub fn status(&self) -> PartitionStatus {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Status(reply));
        answer.recv_timeout(COMMAND_TIMEOUT).expect("status")
    }

    /// Every batch of the log from its start, below `upper`, as `read_bounded` returns them.
    pub fn read(&self, upper: u64) -> Vec<Bytes> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Read(upper, reply));
        answer.recv_timeout(COMMAND_TIMEOUT).expect("read")
    }

    pub fn transfer(&self, to: Option<NodeId>) -> Result<NodeId, ReplicationError> {
        let (reply, answer) = mpsc::channel();
        self.command(Command::Transfer(to, reply));
        answer.recv_timeout(COMMAND_TIMEOUT).expect("transfer")
    }

    /// Drops every frame to and from peers (or heals).
    pub fn isolate(&self, isolated: bool) {
        self.command(Command::Isolate(isolated));
    }

    /// Blocks the broker's executor thread for `pause`: nothing runs (timers, network, disk),
    /// as under SIGSTOP. Returns at once.
    pub fn pause(&self, pause: Duration) {
        self.command(Command::Pause(pause));
    }

    /// Stops the broker as a crash would: nothing is flushed or closed.
    pub fn crash(mut self) {
        self.command(Command::Crash);
        self.join();
    }

    /// Stops the broker cleanly (leadership moved away, logs closed).
    pub fn shutdown(mut self) {
        self.command(Command::Shutdown);
        self.join();
    }

    fn join(&mut self) {
        if let Some(executor) = self.executor.take() {
            executor.join().expect("broker thread");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.executor.is_some() {
            if let Ok(mut commands) = self.commands.lock() {
                let _ = commands.try_send(Command::Crash);
            }
            self.join();
        }
    }
}

async fn run(
    spec: BrokerSpec,
    mut commands: futures_channel::mpsc::Receiver<Command>,
    ready: mpsc::Sender<()>,
) {
    let credentials = BrokerCredentials::load(&spec.certs, spec.id).expect("credentials");
    let peers = spec.addrs.iter().filter(|(&n, _)| n != spec.id).map(|(&n, &a)| (n, a)).collect();
    let config = NodeConfig { node_id: spec.id, listen: spec.addrs[&spec.id], peers };
    let node = ReplicationNode::start(config, &credentials).expect("node");
    let log_config = LogConfig {
        flush: spec.flush,
        segment_bytes: 256 * 1024 * 1024,
        cache_bytes: 32 * 1024 * 1024,
        ..LogConfig::default()
    };
    let log = Log::open(&spec.dir, log_config, LogOptions::default()).await.expect("log");
    let partition_config = PartitionConfig { quiesce: spec.quiesce, rng_seed: None };
    let partition = node
        .open_partition(spec.group, &spec.replicas, log, partition_config)
        .await
        .expect("partition");
    let _ = ready.send(());
    // One iteration per command; ends on Crash, Shutdown, or when the handle is dropped.
    while let Some(command) = commands.next().await {
        match command {
            Command::Propose(batch, reply) => {
                let partition = partition.clone();
                glommio::spawn_local(async move {
                    let result = partition.propose(BytesMut::from(&batch[..])).await;
                    let _ = reply.send(result);
                })
                .detach();
            }
            Command::Status(reply) => {
                let _ = reply.send(partition.status());
            }
            Command::Read(upper, reply) => {
                let _ = reply.send(read_all(partition.log(), upper).await);
            }
            Command::Transfer(to, reply) => {
                let partition = partition.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(partition.transfer_leadership(to).await);
                })
                .detach();
            }
            Command::Isolate(isolated) => node.set_isolated(isolated),
            Command::Pause(pause) => std::thread::sleep(pause),
            Command::Crash => break,
            Command::Shutdown => {
                drop(partition);
                node.shutdown().await;
                return;
            }
        }
    }
    drop(partition);
    drop(node);
    // Let the executor run the stopped tasks to their end (the endpoint's close waits up to
    // CLOSE_WAIT_MS for peers), so the UDP port and the log files are released for a restart
    // in this process. No work is admitted meanwhile: nothing is written that was not already
    // handed to the log.
    let close_wait_ms = spate_transport::limits::CLOSE_WAIT_MS + 500;
    glommio::timer::sleep(Duration::from_millis(close_wait_ms)).await;
}

async fn read_all(log: &Log, upper: u64) -> Vec<Bytes> {
    let mut batches = Vec::new();
    let mut offset = log.offsets().start;
    let reads_max = log.size_bytes() / spate_protocol::batch::HEADER_LEN as u64 + 2;
    // Each read returns at least one batch.
    for _ in 0..reads_max {
        if offset as u64 >= upper {
            break;
        }
        let read = match log.read_bounded(offset, 1 << 20, upper as i64).await {
            Ok(read) => read,
            Err(e) => panic!(
                "read at {offset} below {upper}: {e}; offsets {:?}, recovery {:?}",
                log.offsets(),
                log.recovery()
            ),
        };
        if read.chunks.is_empty() {
            break;
        }
        for chunk in &read.chunks {
            let split = crate::wire::split_batches(crate::restore::chunk_bytes(chunk))
                .expect("whole batches");
            for batch in split {
                offset = spate_protocol::batch::BatchHeader::parse(&batch)
                    .expect("header")
                    .next_offset();
                batches.push(batch);
            }
        }
    }
    batches
}

/// Free UDP ports on 127.0.0.1, one per id.
pub fn loopback_addrs(ids: &[NodeId]) -> BTreeMap<NodeId, SocketAddr> {
    let sockets: Vec<_> = ids
        .iter()
        .map(|&id| (id, std::net::UdpSocket::bind("127.0.0.1:0").expect("bind")))
        .collect();
    sockets.iter().map(|(id, s)| (*id, s.local_addr().expect("addr"))).collect()
}

/// A data batch of `records` records of `value_bytes` bytes, its first record's value
/// starting with `tag` (little-endian u64), so a test can find it again.
pub fn tagged_batch(tag: u64, records: usize, value_bytes: usize) -> Vec<u8> {
    use spate_protocol::batch::{BatchBuilder, NewRecord};
    let mut builder = BatchBuilder::with_capacity(records * (value_bytes + 16) + 128);
    for i in 0..records {
        let mut value = vec![(i % 251) as u8; value_bytes.max(8)];
        value[..8].copy_from_slice(&tag.to_le_bytes());
        builder.push(&NewRecord {
            key: None,
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
            timestamp: 1_000,
        });
    }
    builder.finish().expect("batch").to_vec()
}

/// The tag of a batch made by [`tagged_batch`]; `None` for control batches.
pub fn batch_tag(batch: &[u8]) -> Option<u64> {
    let header = spate_protocol::batch::BatchHeader::parse(batch).ok()?;
    if header.is_control() {
        return None;
    }
    let record = spate_protocol::batch::Records::new(batch, header).next()?.ok()?;
    let value = record.value?;
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}
