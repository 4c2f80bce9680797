//! One shard: the partitions one core owns, and the handlers for every request that reaches it.
//!
//! Ownership: a partition belongs to exactly one shard, found by a pure lookup in the catalog
//! (`owner`). A request for a partition of another shard goes there as a [`ShardMsg`] over the
//! bounded cross-shard mesh, and the answer comes back on a oneshot. Fetched bytes that cross
//! shards are copied (Glommio's DMA read buffers are `!Send`); the owning shard's own address,
//! advertised in metadata, avoids that hop.
//!
//! Shard 0 is the controller: it alone changes the catalog (create, delete, alter) and the
//! committed offsets, and sends each shard the new catalog before it answers.
//!
//! Layout of this module (one file per concern; each adds its own `impl Shard` block):
//! - this file: the [`Shard`] itself, opening it, the owner lookup, applying a catalog, and the
//!   dispatch of each request frame to its handler;
//! - `mesh`: the cross-shard calls ([`ShardMsg`], `call`) and serving them (`handle_peer`);
//! - `produce`: produce requests, carved into batches without copying;
//! - `fetch`: fetch requests and the long-poll wait for data (local and `AwaitData`);
//! - `metadata`: metadata, describe configs, list offsets, partition stats, metrics scrape;
//! - `controller`: catalog changes on shard 0 and publishing them to every shard;
//! - `offsets`: committing and fetching consumer offsets, and the compaction they trigger;
//! - `groups`: the consumer-group APIs;
//! - `producer_ids`: `InitProducerId`, served by shard 0;
//! - `metadata_log`: a cluster's metadata log on shard 0 (catalog changes and producer ids
//!   through consensus, applied on every broker);
//! - `replicated`: a cluster's replicated partitions (produce by proposal, reads up to the
//!   high watermark, the leader table Metadata answers from).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Senders;
use glommio::sync::{RwLock, Semaphore};
use spate_protocol::codec;
use spate_protocol::frame::Frame;
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT, ResponseT};
use spate_storage::memory::ShardMemory;
use spate_storage::{Log, LogBytes, LogError, LogOptions};

use crate::catalog::{self, Catalog};
use crate::config::BrokerConfig;
use crate::limits;
use crate::offsets::OffsetStore;
use crate::producer_ids::ProducerIds;

pub type PartitionKey = (String, u32);

mod controller;
mod fetch;
mod groups;
mod mesh;
mod metadata;
mod metadata_log;
mod offsets;
mod produce;
mod producer_ids;
mod replicated;

use fetch::Wakeup;
pub use mesh::ShardMsg;
pub(crate) use offsets::compact_offsets_if_due;
pub use replicated::{ReplicaView, ReplicaViews};

/// An error for one partition, as it goes on the wire.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    fn unknown(topic: &str, partition: u32) -> Failure {
        Failure::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("{topic}/{partition} does not exist"),
        )
    }
}

impl From<LogError> for Failure {
    fn from(error: LogError) -> Failure {
        let code = match &error {
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::InvalidBatch(_) => ErrorCode::CorruptMessage,
            LogError::Corruption { .. } => ErrorCode::CorruptStorage,
            LogError::DiskFull { .. } => ErrorCode::DiskFull,
            LogError::Closed => ErrorCode::NotLeader,
            LogError::NotBatchBoundary(_)
            | LogError::NotAtLogEnd { .. }
            | LogError::NotContiguous { .. }
            | LogError::AppendTooLarge(_)
            | LogError::Config(_) => ErrorCode::InvalidRequest,
            LogError::TooManySegments(_) | LogError::Io { .. } | LogError::Offline(_) => {
                ErrorCode::StorageError
            }
            LogError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            LogError::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            LogError::UnknownProducer { .. } => ErrorCode::UnknownProducerId,
        };
        Failure::new(code, error.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct ProduceOutcome {
    pub result: Result<i64, Failure>,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone)]
pub struct FetchOutcome<B> {
    pub result: Result<Vec<B>, Failure>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct PartitionStats {
    pub start: i64,
    pub end: i64,
    pub bytes: u64,
}

/// Bytes in a fetch response payload: local (zero-copy) or copied from another shard.
pub enum Payload {
    Local(LogBytes),
    Remote(Bytes),
}

impl std::ops::Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Local(bytes) => bytes,
            Payload::Remote(bytes) => bytes,
        }
    }
}

/// A cluster partition's replication group and replicas, from the catalog.
struct Replicas {
    group: u64,
    brokers: Vec<u32>,
}

/// A request frame after its one verification.
enum Decoded {
    /// A produce request: its batches are carved out of the frame by `handle_produce`.
    Produce {
        correlation_id: u32,
    },
    Other {
        correlation_id: u32,
        body: RequestBodyT,
    },
    /// Verification failed: the error reply.
    Invalid(Reply),
}

/// What a connection writes back: a response header and the raw batches that follow it.
pub struct Reply {
    pub response: ResponseT,
    pub payload: Vec<Payload>,
    /// The fetch-memory budget the payload was read under, released once it is written.
    pub memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

pub struct Shard {
    pub id: usize,
    pub config: Rc<BrokerConfig>,
    catalog: RefCell<Catalog>,
    /// Topic, then partition: looked up by `&str` without building a key.
    logs: RefCell<HashMap<String, HashMap<u32, Log>>>,
    waiters: RefCell<HashMap<PartitionKey, Vec<Wakeup>>>,
    peers: Senders<ShardMsg>,
    /// Shard 0 only. Commits take shared access, compaction exclusive.
    offsets: Option<Rc<RwLock<OffsetStore>>>,
    /// Shard 0 only: the producer id allocator.
    producer_ids: Option<RefCell<ProducerIds>>,
    /// Serializes catalog changes on the controller.
    controller_lock: Semaphore,
    /// Bytes of request frames held (see `limits::REQUEST_MEMORY_PER_SHARD_BYTES_MAX`): taken
    /// by the connection before it reads a frame's body, released when the request is done.
    pub request_memory: Arc<tokio::sync::Semaphore>,
    /// Bytes of fetch responses being read or written (see
    /// `limits::FETCH_MEMORY_PER_SHARD_BYTES_MAX`): taken before a fetch reads, released once its
    /// response is on the socket.
    fetch_memory: Arc<tokio::sync::Semaphore>,
    pub shutting_down: Cell<bool>,
    pub in_flight: Cell<usize>,
    pub background: glommio::TaskQueueHandle,
    pub metrics: crate::metrics::ShardMetrics,
    /// The memory this shard's logs share: unwritten batches and tail caches.
    pub log_memory: Rc<ShardMemory>,
    /// Groups this shard coordinates.
    groups: RefCell<crate::group::Coordinator>,
    /// In a cluster: this shard's replication driver (taken at shutdown).
    replication: RefCell<Option<Rc<spate_cluster::ReplicationNode>>>,
    /// In a cluster: the replicated partitions this shard holds a replica of (their logs are
    /// in `logs` too).
    replicas: RefCell<HashMap<PartitionKey, spate_cluster::Partition>>,
    /// In a cluster, shard 0 only: the metadata log.
    metadata: RefCell<Option<Rc<metadata_log::MetadataLog>>>,
}

impl Shard {
    /// Opens this shard's partitions (recovering each log) and, on shard 0, the offset store.
    pub async fn open(
        id: usize,
        config: Rc<BrokerConfig>,
        peers: Senders<ShardMsg>,
        background: glommio::TaskQueueHandle,
        replication: Option<spate_cluster::ReplicationNode>,
    ) -> std::io::Result<Rc<Shard>> {
        let catalog = Catalog::load(&config.data_dir)?;
        let offsets = if id == 0 {
            let store = match (&config.cluster, &replication) {
                (Some(cluster), Some(node)) => {
                    OffsetStore::open_replicated(&config.data_dir, node, &cluster.broker_ids())
                        .await
                }
                _ => OffsetStore::open(&config.data_dir).await,
            };
            let store = store.map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(Rc::new(RwLock::new(store)))
        } else {
            None
        };
        let producer_ids = if id == 0 {
            let ids = ProducerIds::load(&config.data_dir)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(RefCell::new(ids))
        } else {
            None
        };
        let request_memory = Arc::new(tokio::sync::Semaphore::new(config.request_memory_bytes));
        let shard = Rc::new(Shard {
            id,
            config,
            catalog: RefCell::new(Catalog::default()),
            logs: RefCell::new(HashMap::new()),
            waiters: RefCell::new(HashMap::new()),
            peers,
            offsets,
            producer_ids,
            controller_lock: Semaphore::new(1),
            request_memory,
            fetch_memory: Arc::new(tokio::sync::Semaphore::new(
                limits::FETCH_MEMORY_PER_SHARD_BYTES_MAX,
            )),
            shutting_down: Cell::new(false),
            in_flight: Cell::new(0),
            background,
            metrics: crate::metrics::ShardMetrics::default(),
            log_memory: ShardMemory::new(
                limits::UNWRITTEN_PER_SHARD_BYTES_MAX,
                limits::LOG_CACHE_PER_SHARD_BYTES_MAX,
            ),
            groups: RefCell::new(crate::group::Coordinator::default()),
            replication: RefCell::new(replication.map(Rc::new)),
            replicas: RefCell::new(HashMap::new()),
            metadata: RefCell::new(None),
        });
        shard.apply_catalog(catalog).await.map_err(|e| std::io::Error::other(e.to_string()))?;
        shard.open_metadata_log().await.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(shard)
    }

    /// The shard that owns a partition: a pure lookup.
    pub fn owner(&self, topic: &str, partition: u32) -> Option<usize> {
        let catalog = self.catalog.borrow();
        catalog.topics.get(topic)?.shards.get(partition as usize).map(|s| *s as usize)
    }

    /// Records how late the shard's ticker woke: past `limits::EXECUTOR_STALL_WARN`, something
    /// held the executor (a long synchronous step, a starved machine) and everything on this
    /// shard, heartbeats included, waited for it.
    pub fn note_lateness(&self, late: std::time::Duration) {
        if late < crate::limits::EXECUTOR_STALL_WARN {
            return;
        }
        let ms = late.as_millis() as u64;
        let metrics = &self.metrics;
        metrics.executor_stalls.set(metrics.executor_stalls.get() + 1);
        metrics.executor_stall_ms_max.set(metrics.executor_stall_ms_max.get().max(ms));
        tracing::warn!(shard = self.id, late_ms = ms, "shard executor stalled");
    }

    fn log(&self, topic: &str, partition: u32) -> Option<Log> {
        self.logs.borrow().get(topic).and_then(|partitions| partitions.get(&partition)).cloned()
    }

    /// Makes this shard's open logs match `catalog`: opens new partitions it owns (and, in a
    /// cluster, starts their replicas), closes and deletes removed ones, and applies changed
    /// configs. A cluster's partition is held here only if this broker is one of its replicas.
    pub async fn apply_catalog(&self, catalog: Catalog) -> Result<(), LogError> {
        let defaults = self.config.log_defaults.clone();
        let node_id = self.config.cluster.as_ref().map(|c| c.node_id);
        let mut wanted: BTreeMap<PartitionKey, (spate_storage::LogConfig, Option<Replicas>)> =
            BTreeMap::new();
        for (name, topic) in &catalog.topics {
            let config =
                catalog::log_config(&defaults, &topic.configs).unwrap_or_else(|_| defaults.clone());
            for (partition, shard) in topic.shards.iter().enumerate() {
                if *shard as usize != self.id {
                    continue;
                }
                let replicas = if topic.is_replicated() {
                    let replicas = topic.replicas.get(partition).cloned().unwrap_or_default();
                    if node_id.is_none_or(|id| !replicas.contains(&id)) {
                        continue;
                    }
                    Some(Replicas { group: topic.group(partition as u32), brokers: replicas })
                } else {
                    None
                };
                wanted.insert((name.clone(), partition as u32), (config.clone(), replicas));
            }
        }
        let existing: Vec<PartitionKey> = self
            .logs
            .borrow()
            .iter()
            .flat_map(|(topic, logs)| logs.keys().map(|p| (topic.clone(), *p)))
            .collect();
        for key in existing {
            if !wanted.contains_key(&key) {
                self.remove_partition(&key).await;
            }
        }
        for (key, (config, replicas)) in wanted {
            let existing = self.log(&key.0, key.1);
            match existing {
                Some(log) => {
                    if log.config() != config {
                        log.set_config(config)?;
                    }
                }
                None => {
                    let dir = self.config.data_dir.join(&key.0).join(key.1.to_string());
                    let journal_dir = self
                        .config
                        .journal_dir
                        .as_ref()
                        .map(|root| root.join(&key.0).join(key.1.to_string()));
                    let options = LogOptions {
                        task_queue: Some(self.background),
                        journal_dir,
                        memory: Some(self.log_memory.clone()),
                        ..LogOptions::default()
                    };
                    let log = Log::open(&dir, config, options).await?;
                    tracing::debug!(topic = %key.0, partition = key.1, shard = self.id, "opened partition");
                    if let Some(replicas) = replicas {
                        self.open_replica(&key, &replicas, log.clone()).await?;
                    }
                    self.logs.borrow_mut().entry(key.0).or_default().insert(key.1, log);
                }
            }
        }
        // Logs opened or closed: every cache gets its new share of the shard's budget now,
        // not at its next append, so the budget holds for idle partitions too.
        for log in self.logs.borrow().values().flat_map(HashMap::values) {
            log.fit_cache();
        }
        *self.catalog.borrow_mut() = catalog;
        Ok(())
    }

    /// Starts the replica of a cluster's partition over its freshly opened log.
    async fn open_replica(
        &self,
        key: &PartitionKey,
        replicas: &Replicas,
        log: Log,
    ) -> Result<(), LogError> {
        let node = self.replication.borrow().clone();
        let Some(node) = node else {
            return Err(LogError::Config(format!(
                "{}/{} is replicated, but this broker is not in a cluster",
                key.0, key.1
            )));
        };
        let group = spate_replication::GroupId(replicas.group);
        let config = spate_cluster::PartitionConfig::default();
        let replica = node
            .open_partition(group, &replicas.brokers, log, config)
            .await
            .map_err(|e| LogError::Config(format!("{}/{}: {e}", key.0, key.1)))?;
        self.replicas.borrow_mut().insert(key.clone(), replica);
        Ok(())
    }

    /// Closes a partition that left the catalog and deletes its files.
    async fn remove_partition(&self, key: &PartitionKey) {
        let removed = {
            let mut logs = self.logs.borrow_mut();
            let removed = logs.get_mut(&key.0).and_then(|partitions| partitions.remove(&key.1));
            if logs.get(&key.0).is_some_and(HashMap::is_empty) {
                logs.remove(&key.0);
            }
            removed
        };
        let Some(log) = removed else { return };
        let replica = self.replicas.borrow_mut().remove(key);
        if let Some(replica) = replica {
            let node = self.replication.borrow().clone();
            if let Some(node) = node {
                node.close_partition(replica.group()).await;
            }
            self.unpublish_replica(key);
        }
        let _ = log.close().await;
        let dir = log.dir().to_path_buf();
        drop(log);
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), %error, "could not delete partition directory");
        }
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        tracing::info!(topic = %key.0, partition = key.1, "deleted partition");
    }

    /// Graceful stop of replication: leadership of every partition led here moves to another
    /// replica first (Kafka's controlled shutdown), then the replicas and their logs close.
    pub async fn stop_replication(&self) {
        self.metadata.borrow_mut().take();
        let node = self.replication.borrow_mut().take();
        // Every other holder is a catalog change in progress, long done by shutdown.
        match node.map(Rc::try_unwrap) {
            Some(Ok(node)) => node.shutdown().await,
            Some(Err(_)) => tracing::warn!(shard = self.id, "replication still in use at stop"),
            None => {}
        }
        self.replicas.borrow_mut().clear();
    }

    /// Every log this shard owns (for retention, metrics and shutdown).
    pub fn all_logs(&self) -> Vec<(PartitionKey, Log)> {
        let logs = self.logs.borrow();
        logs.iter()
            .flat_map(|(topic, logs)| logs.iter().map(|(p, l)| ((topic.clone(), *p), l.clone())))
            .collect()
    }

    pub fn offset_store_log(&self) -> Option<Log> {
        let store = self.offsets.as_ref()?;
        let guard = store.try_read().ok()?;
        Some(guard.log().clone())
    }

    /// Handles one request frame, counting it and timing produce and fetch. The frame is verified
    /// once, here.
    pub async fn handle(self: &Rc<Self>, frame: Frame) -> Option<Reply> {
        let started = Instant::now();
        let decoded = match codec::decode_request(&frame.header) {
            Ok(request) if request.body_type() == wire::RequestBody::ProduceRequest => {
                Decoded::Produce { correlation_id: request.correlation_id() }
            }
            Ok(request) => Decoded::Other {
                correlation_id: request.correlation_id(),
                body: request.unpack().body,
            },
            Err(error) => {
                let correlation_id = correlation_id_of(&frame.header);
                Decoded::Invalid(envelope_error(
                    correlation_id,
                    error.error_code(),
                    &error.to_string(),
                ))
            }
        };
        let body_type = match &decoded {
            Decoded::Produce { .. } => Some(wire::RequestBody::ProduceRequest),
            Decoded::Other { body, .. } => Some(body.request_body_type()),
            Decoded::Invalid(_) => None,
        };
        self.metrics.request(body_type.and_then(codec::api_key));
        let reply = self.handle_request(frame.header, decoded).await;
        match body_type {
            Some(wire::RequestBody::ProduceRequest) => {
                self.metrics.produce_latency.record(started.elapsed())
            }
            Some(wire::RequestBody::FetchRequest) => {
                self.metrics.fetch_latency.record(started.elapsed())
            }
            _ => {}
        }
        reply
    }

    /// Handles one verified request. `None` means no response is sent (produce with acks=none).
    async fn handle_request(self: &Rc<Self>, header: BytesMut, decoded: Decoded) -> Option<Reply> {
        let (correlation_id, body) = match decoded {
            Decoded::Invalid(reply) => return Some(reply),
            Decoded::Produce { correlation_id } | Decoded::Other { correlation_id, .. }
                if self.shutting_down.get() =>
            {
                return Some(envelope_error(
                    correlation_id,
                    ErrorCode::ShuttingDown,
                    "broker is shutting down",
                ));
            }
            // Produce carves its batches out of the request buffer itself.
            Decoded::Produce { correlation_id } => {
                return self.handle_produce(correlation_id, header).await
            }
            Decoded::Other { correlation_id, body } => (correlation_id, body),
        };
        if let Some(failure) = group_of(&body).and_then(|group| self.not_coordinator(group)) {
            return Some(envelope_error(correlation_id, failure.code, &failure.message));
        }
        Some(match body {
            RequestBodyT::HandshakeRequest(_) => ok_reply(correlation_id, handshake()),
            RequestBodyT::MetadataRequest(request) => {
                ok_reply(correlation_id, self.metadata(request.topics))
            }
            RequestBodyT::DescribeConfigsRequest(request) => {
                ok_reply(correlation_id, self.describe_configs(request.topics.unwrap_or_default()))
            }
            RequestBodyT::FetchRequest(request) => {
                self.handle_fetch(correlation_id, *request).await
            }
            RequestBodyT::ListOffsetsRequest(request) => {
                ok_reply(correlation_id, self.list_offsets(*request).await)
            }
            body @ (RequestBodyT::CreateTopicsRequest(_)
            | RequestBodyT::DeleteTopicsRequest(_)
            | RequestBodyT::AlterConfigsRequest(_)
            | RequestBodyT::OffsetCommitRequest(_)
            | RequestBodyT::OffsetFetchRequest(_)
            | RequestBodyT::RegisterBrokerRequest(_)) => {
                let response = if self.id == 0 {
                    self.controller(body).await
                } else {
                    self.call(0, |reply| ShardMsg::Controller { body, reply }).await.and_then(|r| r)
                };
                match response {
                    Ok(response) => ok_reply(correlation_id, response),
                    Err(failure) => envelope_error(correlation_id, failure.code, &failure.message),
                }
            }
            body @ (RequestBodyT::FindCoordinatorRequest(_)
            | RequestBodyT::JoinGroupRequest(_)
            | RequestBodyT::SyncGroupRequest(_)
            | RequestBodyT::HeartbeatRequest(_)
            | RequestBodyT::LeaveGroupRequest(_)
            | RequestBodyT::ListGroupsRequest(_)
            | RequestBodyT::DescribeGroupsRequest(_)
            | RequestBodyT::DeleteGroupsRequest(_)) => match self.group_request(body).await {
                Ok(response) => ok_reply(correlation_id, response),
                Err(failure) => envelope_error(correlation_id, failure.code, &failure.message),
            },
            RequestBodyT::InitProducerIdRequest(request) => {
                match self.handle_init_producer_id(request.producer_name).await {
                    Ok(response) => ok_reply(correlation_id, response),
                    Err(failure) => envelope_error(correlation_id, failure.code, &failure.message),
                }
            }
            _ => envelope_error(correlation_id, ErrorCode::UnsupportedApi, "unknown request"),
        })
    }
}

fn handshake() -> ResponseBodyT {
    ResponseBodyT::HandshakeResponse(Box::new(wire::HandshakeResponseT {
        protocol_version: 1,
        apis: Some(
            codec::SUPPORTED_APIS
                .iter()
                .map(|(api, min, max)| wire::ApiVersionRangeT {
                    api: *api,
                    min_version: *min,
                    max_version: *max,
                })
                .collect(),
        ),
        broker_id: 0,
        cluster_id: Some("spate".into()),
    }))
}

pub fn ok_reply(correlation_id: u32, body: ResponseBodyT) -> Reply {
    Reply {
        response: ResponseT {
            correlation_id,
            error_code: ErrorCode::None,
            error_message: None,
            body,
        },
        payload: Vec::new(),
        memory: None,
    }
}

/// The consumer group a request is about, for those a group's coordinator must serve.
fn group_of(body: &RequestBodyT) -> Option<&str> {
    match body {
        RequestBodyT::JoinGroupRequest(r) => r.group_id.as_deref(),
        RequestBodyT::SyncGroupRequest(r) => r.group_id.as_deref(),
        RequestBodyT::HeartbeatRequest(r) => r.group_id.as_deref(),
        RequestBodyT::LeaveGroupRequest(r) => r.group_id.as_deref(),
        RequestBodyT::OffsetCommitRequest(r) => r.group_id.as_deref(),
        RequestBodyT::OffsetFetchRequest(r) => r.group_id.as_deref(),
        RequestBodyT::DescribeGroupsRequest(r) => {
            r.groups.as_ref().and_then(|g| g.first()).map(String::as_str)
        }
        RequestBodyT::DeleteGroupsRequest(r) => {
            r.groups.as_ref().and_then(|g| g.first()).map(String::as_str)
        }
        _ => None,
    }
}

pub fn envelope_error(correlation_id: u32, code: ErrorCode, message: &str) -> Reply {
    Reply {
        response: ResponseT {
            correlation_id,
            error_code: code,
            error_message: Some(message.to_string()),
            body: ResponseBodyT::NONE,
        },
        payload: Vec::new(),
        memory: None,
    }
}

/// Best effort at the correlation id of a request that failed verification: only if the buffer
/// is at least a valid `Request` root without the limits check. Otherwise 0.
fn correlation_id_of(header: &[u8]) -> u32 {
    flatbuffers::root::<wire::Request>(header).map_or(0, |r| r.correlation_id())
}

/// Appends `entry` to the topic entry named `name` in `topics`, creating it if needed.
fn push_into<T, E>(
    topics: &mut Vec<T>,
    name: &str,
    entry: E,
    name_of: impl Fn(&T) -> &Option<String>,
    entries_of: impl Fn(&mut T) -> &mut Vec<E>,
    new: impl FnOnce(String) -> T,
) {
    // Requests list a topic's partitions together: the last topic is the likely one.
    let index = match topics.iter().rposition(|t| name_of(t).as_deref() == Some(name)) {
        Some(index) => index,
        None => {
            topics.push(new(name.to_string()));
            topics.len() - 1
        }
    };
    entries_of(&mut topics[index]).push(entry);
}
