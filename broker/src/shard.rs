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

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::{RwLock, Semaphore};
use spate_protocol::batch::BatchHeader;
use spate_protocol::codec;
use spate_protocol::frame::Frame;
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT, ResponseT};
use spate_storage::{Log, LogBytes, LogError, LogOptions};

use crate::catalog::{self, Catalog, CatalogError};
use crate::config::BrokerConfig;
use crate::limits;
use crate::offsets::OffsetStore;

pub type PartitionKey = (String, u32);

/// Calls between shards. Everything in it is `Send`.
pub enum ShardMsg {
    Produce {
        topic: String,
        partition: u32,
        batches: Vec<BytesMut>,
        reply: oneshot::Sender<ProduceOutcome>,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome<Bytes>>,
    },
    /// Reply once the partition's high watermark passes `offset`, `wait` passes, or the asker
    /// gives up (drops the reply): how a long-polling fetch waits on another shard's partition.
    AwaitData {
        topic: String,
        partition: u32,
        offset: i64,
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
    ListOffset {
        topic: String,
        partition: u32,
        timestamp: i64,
        reply: oneshot::Sender<Result<i64, Failure>>,
    },
    Describe {
        topic: String,
        partition: u32,
        reply: oneshot::Sender<Option<PartitionStats>>,
    },
    Controller {
        body: RequestBodyT,
        reply: oneshot::Sender<ResponseBodyT>,
    },
    Catalog {
        catalog: Catalog,
        reply: oneshot::Sender<()>,
    },
    /// This shard's metric samples, for a scrape served by shard 0.
    Metrics {
        reply: oneshot::Sender<String>,
    },
    /// Join, sync, heartbeat or leave for a group this shard coordinates.
    Group {
        body: RequestBodyT,
        reply: oneshot::Sender<Result<ResponseBodyT, Failure>>,
    },
    ListGroups {
        reply: oneshot::Sender<Vec<wire::ListedGroupT>>,
    },
    DescribeGroup {
        group: String,
        reply: oneshot::Sender<wire::DescribedGroupT>,
    },
    CheckCommit {
        group: String,
        member: String,
        generation: i32,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Forget an empty group (its coordinator shard).
    DeleteGroup {
        group: String,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Remove a group's committed offsets (shard 0).
    DeleteGroupOffsets {
        group: String,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
}

mod groups;

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
            LogError::NotBatchBoundary(_) | LogError::Config(_) => ErrorCode::InvalidRequest,
            LogError::TooManySegments(_) | LogError::Io { .. } | LogError::Offline(_) => {
                ErrorCode::StorageError
            }
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

/// Wakes a long-polling fetch once, from whichever of its partitions gets data first.
type Wakeup = Rc<RefCell<Option<oneshot::Sender<()>>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registered {
    Waiting,
    /// A partition already has data past its fetch offset: no need to wait.
    HasData,
}

pub struct Shard {
    pub id: usize,
    pub config: Rc<BrokerConfig>,
    catalog: RefCell<Catalog>,
    logs: RefCell<HashMap<PartitionKey, Log>>,
    waiters: RefCell<HashMap<PartitionKey, Vec<Wakeup>>>,
    peers: Senders<ShardMsg>,
    /// Shard 0 only. Commits take shared access, compaction exclusive.
    offsets: Option<Rc<RwLock<OffsetStore>>>,
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
    /// Groups this shard coordinates.
    groups: RefCell<crate::group::Coordinator>,
}

pub(crate) fn now_ms() -> i64 {
    spate_storage::Clock::now_ms(&spate_storage::SystemClock)
}

impl Shard {
    /// Opens this shard's partitions (recovering each log) and, on shard 0, the offset store.
    pub async fn open(
        id: usize,
        config: Rc<BrokerConfig>,
        peers: Senders<ShardMsg>,
        background: glommio::TaskQueueHandle,
    ) -> std::io::Result<Rc<Shard>> {
        let catalog = Catalog::load(&config.data_dir)?;
        let offsets = if id == 0 {
            let store = OffsetStore::open(&config.data_dir)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Some(Rc::new(RwLock::new(store)))
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
            controller_lock: Semaphore::new(1),
            request_memory,
            fetch_memory: Arc::new(tokio::sync::Semaphore::new(
                limits::FETCH_MEMORY_PER_SHARD_BYTES_MAX,
            )),
            shutting_down: Cell::new(false),
            in_flight: Cell::new(0),
            background,
            metrics: crate::metrics::ShardMetrics::default(),
            groups: RefCell::new(crate::group::Coordinator::default()),
        });
        shard.apply_catalog(catalog).await.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(shard)
    }

    /// The shard that owns a partition: a pure lookup.
    pub fn owner(&self, topic: &str, partition: u32) -> Option<usize> {
        let catalog = self.catalog.borrow();
        catalog.topics.get(topic)?.shards.get(partition as usize).map(|s| *s as usize)
    }

    fn log(&self, topic: &str, partition: u32) -> Option<Log> {
        self.logs.borrow().get(&(topic.to_string(), partition)).cloned()
    }

    /// Makes this shard's open logs match `catalog`: opens new partitions it owns, closes and
    /// deletes removed ones, and applies changed configs.
    pub async fn apply_catalog(&self, catalog: Catalog) -> Result<(), LogError> {
        let defaults = self.config.log_defaults.clone();
        let mut wanted: BTreeMap<PartitionKey, spate_storage::LogConfig> = BTreeMap::new();
        for (name, topic) in &catalog.topics {
            let config =
                catalog::log_config(&defaults, &topic.configs).unwrap_or_else(|_| defaults.clone());
            for (partition, shard) in topic.shards.iter().enumerate() {
                if *shard as usize == self.id {
                    wanted.insert((name.clone(), partition as u32), config.clone());
                }
            }
        }
        let existing: Vec<PartitionKey> = self.logs.borrow().keys().cloned().collect();
        for key in existing {
            if !wanted.contains_key(&key) {
                let log = self.logs.borrow_mut().remove(&key).expect("listed");
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
        }
        for (key, config) in wanted {
            let existing = self.log(&key.0, key.1);
            match existing {
                Some(log) => {
                    if log.config() != config {
                        log.set_config(config)?;
                    }
                }
                None => {
                    let dir = self.config.data_dir.join(&key.0).join(key.1.to_string());
                    let options =
                        LogOptions { task_queue: Some(self.background), ..LogOptions::default() };
                    let log = Log::open(&dir, config, options).await?;
                    tracing::debug!(topic = %key.0, partition = key.1, shard = self.id, "opened partition");
                    self.logs.borrow_mut().insert(key, log);
                }
            }
        }
        *self.catalog.borrow_mut() = catalog;
        Ok(())
    }

    /// Every log this shard owns (for retention, metrics and shutdown).
    pub fn all_logs(&self) -> Vec<(PartitionKey, Log)> {
        self.logs.borrow().iter().map(|(k, l)| (k.clone(), l.clone())).collect()
    }

    pub fn offset_store_log(&self) -> Option<Log> {
        let store = self.offsets.as_ref()?;
        let guard = store.try_read().ok()?;
        Some(guard.log().clone())
    }

    // ---- Cross-shard calls ------------------------------------------------------------------

    async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<T, Failure> {
        let (reply, response) = oneshot::channel();
        if self.peers.send_to(shard, make(reply)).await.is_err() {
            return Err(Failure::new(
                ErrorCode::ShuttingDown,
                format!("shard {shard} is not reachable"),
            ));
        }
        response.await.map_err(|_| {
            Failure::new(ErrorCode::ShuttingDown, format!("shard {shard} dropped the call"))
        })
    }

    /// Serves a call from another shard.
    pub async fn handle_peer(self: &Rc<Self>, message: ShardMsg) {
        match message {
            ShardMsg::Produce { topic, partition, batches, reply } => {
                let _ = reply.send(self.produce_local(&topic, partition, batches).await);
            }
            ShardMsg::Fetch { topic, partition, offset, max_bytes, reply } => {
                let outcome = self.fetch_local(&topic, partition, offset, max_bytes).await;
                let copied = FetchOutcome {
                    result: outcome
                        .result
                        .map(|chunks| chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()),
                    high_watermark: outcome.high_watermark,
                    log_start_offset: outcome.log_start_offset,
                };
                let _ = reply.send(copied);
            }
            ShardMsg::AwaitData { topic, partition, offset, wait, mut reply } => {
                let wait = wait.min(Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
                let asker_gone = reply.cancellation();
                self.wait_for_local_data(&[(topic, partition, offset)], wait, asker_gone).await;
                let _ = reply.send(());
            }
            ShardMsg::ListOffset { topic, partition, timestamp, reply } => {
                let _ = reply.send(self.list_offset_local(&topic, partition, timestamp).await);
            }
            ShardMsg::Describe { topic, partition, reply } => {
                let _ = reply.send(self.stats_local(&topic, partition));
            }
            ShardMsg::Controller { body, reply } => {
                let _ = reply.send(self.controller(body).await);
            }
            ShardMsg::Group { body, reply } => {
                let _ = reply.send(self.group_local(body));
            }
            ShardMsg::ListGroups { reply } => {
                let _ = reply.send(self.list_local_groups());
            }
            ShardMsg::DescribeGroup { group, reply } => {
                let _ = reply.send(self.describe_local(&group));
            }
            ShardMsg::CheckCommit { group, member, generation, reply } => {
                let _ = reply.send(
                    self.groups
                        .borrow()
                        .check_commit(&group, &member, generation)
                        .map_err(Failure::from),
                );
            }
            ShardMsg::DeleteGroup { group, reply } => {
                let _ = reply.send(self.groups.borrow_mut().delete(&group).map_err(Failure::from));
            }
            ShardMsg::DeleteGroupOffsets { group, reply } => {
                let _ = reply.send(self.delete_group_offsets(&group).await);
            }
            ShardMsg::Metrics { reply } => {
                let _ = reply.send(self.render_metrics());
            }
            ShardMsg::Catalog { catalog, reply } => {
                if let Err(error) = self.apply_catalog(catalog).await {
                    tracing::error!(shard = self.id, %error, "applying the catalog failed");
                }
                let _ = reply.send(());
            }
        }
    }

    // ---- Produce ------------------------------------------------------------------------------

    async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        batches: Vec<BytesMut>,
    ) -> ProduceOutcome {
        let Some(log) = self.log(topic, partition) else {
            return ProduceOutcome {
                result: Err(Failure::unknown(topic, partition)),
                log_start_offset: -1,
            };
        };
        if batches.is_empty() {
            return ProduceOutcome { result: Ok(-1), log_start_offset: log.offsets().start };
        }
        // One unit: the request's batches take consecutive offsets, and appends take offsets in
        // the order they are called, so pipelined produces to a partition keep their order.
        let appended = log.append_batches(batches, 0).await;
        self.wake_fetchers(topic, partition);
        ProduceOutcome {
            result: appended.map(|a| a.base_offset).map_err(Failure::from),
            log_start_offset: log.offsets().start,
        }
    }

    async fn produce_partition(
        &self,
        topic: String,
        partition: u32,
        batches: Vec<BytesMut>,
    ) -> ProduceOutcome {
        match self.owner(&topic, partition) {
            None => ProduceOutcome {
                result: Err(Failure::unknown(&topic, partition)),
                log_start_offset: -1,
            },
            Some(owner) if owner == self.id => self.produce_local(&topic, partition, batches).await,
            Some(owner) => self
                .call(owner, |reply| ShardMsg::Produce {
                    topic: topic.clone(),
                    partition,
                    batches,
                    reply,
                })
                .await
                .unwrap_or_else(|failure| ProduceOutcome {
                    result: Err(failure),
                    log_start_offset: -1,
                }),
        }
    }

    async fn handle_produce(
        self: &Rc<Self>,
        correlation_id: u32,
        header: BytesMut,
    ) -> Option<Reply> {
        let (acks, timeout_ms, parts) = {
            let request = codec::decode_request(&header).expect("verified by the caller");
            let produce = request.body_as_produce_request().expect("checked by the caller");
            let base = header.as_ptr() as usize;
            let mut parts: Vec<(String, u32, Option<Range<usize>>)> = Vec::new();
            for topic in produce.topics().iter().flatten() {
                let name = topic.name().unwrap_or_default().to_string();
                for partition in topic.partitions().iter().flatten() {
                    let range = partition.records().map(|r| {
                        let start = r.bytes().as_ptr() as usize - base;
                        start..start + r.len()
                    });
                    parts.push((name.clone(), partition.partition() as u32, range));
                }
            }
            (produce.acks(), produce.timeout_ms(), parts)
        };
        let ranges: Vec<Range<usize>> = parts.iter().filter_map(|(_, _, r)| r.clone()).collect();
        let mut carved = carve(header, &ranges).into_iter();
        let timeout =
            Duration::from_millis(u64::from(timeout_ms).clamp(1, limits::PRODUCE_TIMEOUT_MS_MAX));
        let mut tasks = Vec::with_capacity(parts.len());
        for (topic, partition, range) in parts {
            let records = if range.is_some() {
                carved.next().expect("one piece per range")
            } else {
                BytesMut::new()
            };
            let shard = self.clone();
            tasks.push((
                topic.clone(),
                partition,
                glommio::spawn_local(async move {
                    let batches = match split_batches(records) {
                        Ok(batches) => batches,
                        Err(failure) => {
                            return ProduceOutcome { result: Err(failure), log_start_offset: -1 }
                        }
                    };
                    let produced = glommio::timer::timeout(timeout, async {
                        Ok(shard.produce_partition(topic, partition, batches).await)
                    })
                    .await;
                    produced.unwrap_or_else(|_| ProduceOutcome {
                        result: Err(Failure::new(ErrorCode::RequestTimedOut, "produce timed out")),
                        log_start_offset: -1,
                    })
                }),
            ));
        }
        let mut topics: Vec<wire::ProduceTopicResponseT> = Vec::new();
        for (topic, partition, task) in tasks {
            let outcome = task.await;
            let (error_code, error_message, base_offset) = match outcome.result {
                Ok(base) => (ErrorCode::None, None, base),
                Err(failure) => (failure.code, Some(failure.message), -1),
            };
            let entry = wire::ProducePartitionResponseT {
                partition: partition as i32,
                error_code,
                error_message,
                base_offset,
                log_start_offset: outcome.log_start_offset,
            };
            push_into(
                &mut topics,
                topic,
                entry,
                |t| &t.name,
                |t| t.partitions.get_or_insert_with(Vec::new),
                |name| wire::ProduceTopicResponseT { name: Some(name), partitions: None },
            );
        }
        if acks == wire::Acks::None {
            return None;
        }
        Some(ok_reply(
            correlation_id,
            ResponseBodyT::ProduceResponse(Box::new(wire::ProduceResponseT {
                topics: Some(topics),
            })),
        ))
    }

    fn wake_fetchers(&self, topic: &str, partition: u32) {
        let waiters = self.waiters.borrow_mut().remove(&(topic.to_string(), partition));
        for wakeup in waiters.into_iter().flatten() {
            if let Some(sender) = wakeup.borrow_mut().take() {
                let _ = sender.send(());
            }
        }
    }

    // ---- Fetch --------------------------------------------------------------------------------

    async fn fetch_local(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> FetchOutcome<LogBytes> {
        let Some(log) = self.log(topic, partition) else {
            return FetchOutcome {
                result: Err(Failure::unknown(topic, partition)),
                high_watermark: -1,
                log_start_offset: -1,
            };
        };
        let offsets = log.offsets();
        match log.read(offset, max_bytes).await {
            Ok(read) => FetchOutcome {
                result: Ok(read.chunks),
                high_watermark: read.high_watermark,
                log_start_offset: read.log_start_offset,
            },
            Err(error) => FetchOutcome {
                result: Err(error.into()),
                high_watermark: offsets.high_watermark,
                log_start_offset: offsets.start,
            },
        }
    }

    async fn fetch_partition(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> FetchOutcome<Payload> {
        match self.owner(topic, partition) {
            None => FetchOutcome {
                result: Err(Failure::unknown(topic, partition)),
                high_watermark: -1,
                log_start_offset: -1,
            },
            Some(owner) if owner == self.id => {
                let outcome = self.fetch_local(topic, partition, offset, max_bytes).await;
                FetchOutcome {
                    result: outcome
                        .result
                        .map(|chunks| chunks.into_iter().map(Payload::Local).collect()),
                    high_watermark: outcome.high_watermark,
                    log_start_offset: outcome.log_start_offset,
                }
            }
            Some(owner) => {
                let called = self
                    .call(owner, |reply| ShardMsg::Fetch {
                        topic: topic.to_string(),
                        partition,
                        offset,
                        max_bytes,
                        reply,
                    })
                    .await;
                match called {
                    Ok(outcome) => FetchOutcome {
                        result: outcome
                            .result
                            .map(|chunks| chunks.into_iter().map(Payload::Remote).collect()),
                        high_watermark: outcome.high_watermark,
                        log_start_offset: outcome.log_start_offset,
                    },
                    Err(failure) => FetchOutcome {
                        result: Err(failure),
                        high_watermark: -1,
                        log_start_offset: -1,
                    },
                }
            }
        }
    }

    async fn handle_fetch(&self, correlation_id: u32, request: wire::FetchRequestT) -> Reply {
        let max_wait =
            Duration::from_millis(u64::from(request.max_wait_ms).min(limits::FETCH_WAIT_MS_MAX));
        let deadline = Instant::now() + max_wait;
        let total_max = (request.max_bytes.max(1) as usize).min(limits::FETCH_RESPONSE_BYTES_MAX);
        let min_bytes = request.min_bytes.max(0) as usize;
        let wanted: Vec<(String, u32, i64, usize)> = request
            .topics
            .iter()
            .flatten()
            .flat_map(|t| {
                let name = t.name.clone().unwrap_or_default();
                t.partitions.iter().flatten().map(move |p| {
                    (name.clone(), p.partition as u32, p.fetch_offset, p.max_bytes.max(1) as usize)
                })
            })
            .collect();
        // Each round reads every partition once; rounds repeat only while the request waits for
        // data, and each waits for an append or the deadline.
        loop {
            // Held while this round's payload exists; a round that waits for data gives it back
            // while it waits. First come, first served.
            let Ok(memory) = self.fetch_memory.clone().acquire_many_owned(total_max as u32).await
            else {
                return envelope_error(correlation_id, ErrorCode::ShuttingDown, "shutting down");
            };
            let mut results = Vec::with_capacity(wanted.len());
            let mut total = 0usize;
            for (topic, partition, offset, max_bytes) in &wanted {
                let budget = (*max_bytes).min(total_max.saturating_sub(total));
                let outcome = if budget == 0 {
                    FetchOutcome {
                        result: Ok(Vec::new()),
                        high_watermark: -1,
                        log_start_offset: -1,
                    }
                } else {
                    self.fetch_partition(topic, *partition, *offset, budget).await
                };
                if let Ok(chunks) = &outcome.result {
                    total += chunks.iter().map(|c| c.len()).sum::<usize>();
                }
                results.push(outcome);
            }
            let errors = results.iter().any(|r| r.result.is_err());
            let now = Instant::now();
            if total >= min_bytes.max(1) || errors || now >= deadline || self.shutting_down.get() {
                let mut reply = self.fetch_reply(correlation_id, &wanted, results);
                reply.memory = Some(memory);
                return reply;
            }
            // Wait for data beyond what this round saw (not merely past the fetch offset: with
            // `min_bytes` above what is there, that would spin).
            let seen: Vec<(String, u32, i64)> = wanted
                .iter()
                .zip(&results)
                .map(|((topic, partition, offset, _), r)| {
                    (topic.clone(), *partition, r.high_watermark.max(*offset))
                })
                .collect();
            // Nothing is held while waiting.
            drop(results);
            drop(memory);
            self.wait_for_data(&seen, deadline - now).await;
        }
    }

    /// Waits until one of the partitions in `seen` (topic, partition, high watermark seen) has
    /// data past what was seen, or `wait` passes. Local partitions wake it from their append;
    /// partitions of other shards through an `AwaitData` call to their owner.
    async fn wait_for_data(&self, seen: &[(String, u32, i64)], wait: Duration) {
        // Calls are lazy: nothing is sent unless the local check below finds no data.
        let mut remote: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>>> =
            Vec::new();
        for (topic, partition, offset) in seen {
            match self.owner(topic, *partition) {
                Some(owner) if owner != self.id => {
                    remote.push(Box::pin(self.call(owner, move |reply| ShardMsg::AwaitData {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                        wait,
                        reply,
                    })))
                }
                _ => {}
            }
        }
        // Ready once any owner answers (bounded by `seen`'s length per poll).
        let any_remote = std::future::poll_fn(|cx| {
            if remote.iter_mut().any(|call| call.as_mut().poll(cx).is_ready()) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        self.wait_for_local_data(seen, wait, any_remote).await;
    }

    /// Waits until one of the local partitions in `seen` has data past what was seen, `wait`
    /// passes, or `also` completes.
    async fn wait_for_local_data(
        &self,
        seen: &[(String, u32, i64)],
        wait: Duration,
        also: impl std::future::Future<Output = ()>,
    ) {
        let (sender, receiver) = oneshot::channel();
        let wakeup: Wakeup = Rc::new(RefCell::new(Some(sender)));
        if self.register_waiter(seen, &wakeup) == Registered::Waiting {
            let woken = async {
                let _ = receiver.await;
            };
            let raced = futures_lite::future::or(woken, also);
            futures_lite::future::or(raced, glommio::timer::sleep(wait)).await;
        }
        self.unregister_waiter(seen, &wakeup);
    }

    /// Registers `wakeup` on each local partition in `seen`, unless one already has data past
    /// what was seen (an append that landed after the fetch read it). No await in between, so
    /// no append is missed.
    fn register_waiter(&self, seen: &[(String, u32, i64)], wakeup: &Wakeup) -> Registered {
        for (topic, partition, offset) in seen {
            if self.owner(topic, *partition) != Some(self.id) {
                continue;
            }
            let key = (topic.clone(), *partition);
            if self.logs.borrow().get(&key).is_some_and(|l| l.offsets().high_watermark > *offset) {
                return Registered::HasData;
            }
            self.waiters.borrow_mut().entry(key).or_default().push(wakeup.clone());
        }
        Registered::Waiting
    }

    /// Forgets `wakeup` (it may remain on partitions that were not appended to).
    fn unregister_waiter(&self, seen: &[(String, u32, i64)], wakeup: &Wakeup) {
        wakeup.borrow_mut().take();
        for (topic, partition, _) in seen {
            if let Some(list) = self.waiters.borrow_mut().get_mut(&(topic.clone(), *partition)) {
                list.retain(|w| w.borrow().is_some());
            }
        }
    }

    fn fetch_reply(
        &self,
        correlation_id: u32,
        wanted: &[(String, u32, i64, usize)],
        results: Vec<FetchOutcome<Payload>>,
    ) -> Reply {
        let mut topics: Vec<wire::FetchTopicResponseT> = Vec::new();
        let mut payload = Vec::new();
        for ((topic, partition, _, _), outcome) in wanted.iter().zip(results) {
            let (error_code, error_message, records_bytes) = match outcome.result {
                Ok(chunks) => {
                    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                    payload.extend(chunks);
                    (ErrorCode::None, None, bytes as u32)
                }
                Err(failure) => (failure.code, Some(failure.message), 0),
            };
            let entry = wire::FetchPartitionResponseT {
                partition: *partition as i32,
                error_code,
                error_message,
                high_watermark: outcome.high_watermark,
                log_start_offset: outcome.log_start_offset,
                records_bytes,
            };
            push_into(
                &mut topics,
                topic.clone(),
                entry,
                |t| &t.name,
                |t| t.partitions.get_or_insert_with(Vec::new),
                |name| wire::FetchTopicResponseT { name: Some(name), partitions: None },
            );
        }
        let mut reply = ok_reply(
            correlation_id,
            ResponseBodyT::FetchResponse(Box::new(wire::FetchResponseT { topics: Some(topics) })),
        );
        reply.payload = payload;
        reply
    }

    // ---- List offsets, describe ---------------------------------------------------------------

    async fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, Failure> {
        let log = self.log(topic, partition).ok_or_else(|| Failure::unknown(topic, partition))?;
        match timestamp {
            -1 => Ok(log.offsets().high_watermark),
            -2 => Ok(log.offsets().start),
            ts => Ok(log.offset_for_timestamp(ts).await?.unwrap_or(-1)),
        }
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, Failure> {
        match self.owner(topic, partition) {
            None => Err(Failure::unknown(topic, partition)),
            Some(owner) if owner == self.id => {
                self.list_offset_local(topic, partition, timestamp).await
            }
            Some(owner) => {
                self.call(owner, |reply| ShardMsg::ListOffset {
                    topic: topic.to_string(),
                    partition,
                    timestamp,
                    reply,
                })
                .await?
            }
        }
    }

    fn stats_local(&self, topic: &str, partition: u32) -> Option<PartitionStats> {
        let log = self.log(topic, partition)?;
        let offsets = log.offsets();
        Some(PartitionStats {
            start: offsets.start,
            end: offsets.high_watermark,
            bytes: log.size_bytes(),
        })
    }

    pub async fn stats(&self, topic: &str, partition: u32) -> Option<PartitionStats> {
        match self.owner(topic, partition)? {
            owner if owner == self.id => self.stats_local(topic, partition),
            owner => self
                .call(owner, |reply| ShardMsg::Describe {
                    topic: topic.to_string(),
                    partition,
                    reply,
                })
                .await
                .ok()?,
        }
    }

    // ---- Requests -----------------------------------------------------------------------------

    /// This shard's metric samples.
    pub fn render_metrics(&self) -> String {
        let mut partitions: Vec<(String, u32, i64, u64, u64)> = self
            .all_logs()
            .into_iter()
            .map(|((topic, partition), log)| {
                let cut = log.recovery().cut_bytes;
                (topic, partition, log.offsets().high_watermark, log.size_bytes(), cut)
            })
            .collect();
        partitions.sort();
        self.metrics.render(self.id, &partitions)
    }

    /// Every shard's samples, with HELP/TYPE lines: one Prometheus scrape.
    pub async fn scrape(&self) -> String {
        let mut out = crate::metrics::header();
        for shard in 0..self.config.shard_count() {
            if shard == self.id {
                out.push_str(&self.render_metrics());
            } else if let Ok(samples) = self.call(shard, |reply| ShardMsg::Metrics { reply }).await
            {
                out.push_str(&samples);
            }
        }
        // Consumer lag: the committed offsets live on this shard (0), the log ends on the owners.
        let committed = match &self.offsets {
            Some(store) => store.read().await.map(|s| s.all()).unwrap_or_default(),
            None => Vec::new(),
        };
        for ((group, topic, partition), offset) in committed {
            if let Some(stats) = self.stats(&topic, partition).await {
                let lag = (stats.end - offset).max(0);
                out.push_str(&format!(
                    "spate_consumer_lag{{group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}\n",
                    crate::metrics::label(&group),
                    crate::metrics::label(&topic)
                ));
            }
        }
        out
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
            | RequestBodyT::OffsetFetchRequest(_)) => {
                let response = if self.id == 0 {
                    self.controller(body).await
                } else {
                    match self.call(0, |reply| ShardMsg::Controller { body, reply }).await {
                        Ok(response) => response,
                        Err(failure) => {
                            return Some(envelope_error(
                                correlation_id,
                                failure.code,
                                &failure.message,
                            ))
                        }
                    }
                };
                ok_reply(correlation_id, response)
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
            _ => envelope_error(correlation_id, ErrorCode::UnsupportedApi, "unknown request"),
        })
    }

    fn metadata(&self, topics: Option<Vec<String>>) -> ResponseBodyT {
        let catalog = self.catalog.borrow();
        let names: Vec<String> = topics.unwrap_or_else(|| catalog.topics.keys().cloned().collect());
        let listen = self.config.listen;
        let topics = names
            .into_iter()
            .map(|name| match catalog.topics.get(&name) {
                None => wire::TopicMetadataT {
                    name: Some(name),
                    error_code: ErrorCode::UnknownTopicOrPartition,
                    partitions: None,
                },
                Some(topic) => wire::TopicMetadataT {
                    name: Some(name),
                    error_code: ErrorCode::None,
                    partitions: Some(
                        topic
                            .shards
                            .iter()
                            .enumerate()
                            .map(|(partition, shard)| {
                                let address = self.config.shard_address(*shard as usize);
                                wire::PartitionMetadataT {
                                    partition: partition as i32,
                                    error_code: ErrorCode::None,
                                    leader_broker: 0,
                                    leader_term: 0,
                                    shard: *shard,
                                    shard_host: Some(address.ip().to_string()),
                                    shard_port: address.port(),
                                    replicas: Some(vec![0]),
                                }
                            })
                            .collect(),
                    ),
                },
            })
            .collect();
        ResponseBodyT::MetadataResponse(Box::new(wire::MetadataResponseT {
            brokers: Some(vec![wire::BrokerInfoT {
                broker_id: 0,
                host: Some(listen.ip().to_string()),
                port: listen.port(),
            }]),
            controller_id: 0,
            topics: Some(topics),
        }))
    }

    fn describe_configs(&self, topics: Vec<String>) -> ResponseBodyT {
        let catalog = self.catalog.borrow();
        let topics = topics
            .into_iter()
            .map(|name| match catalog.topics.get(&name) {
                None => wire::TopicConfigsT {
                    name: Some(name.clone()),
                    error_code: ErrorCode::UnknownTopicOrPartition,
                    error_message: Some(format!("topic {name:?} does not exist")),
                    configs: None,
                },
                Some(topic) => {
                    let mut configs: Vec<wire::DescribedConfigT> = vec![wire::DescribedConfigT {
                        name: Some("partitions".into()),
                        value: Some(topic.partition_count().to_string()),
                        is_default: false,
                    }];
                    configs.extend(
                        catalog::describe(&self.config.log_defaults, topic).into_iter().map(
                            |(name, value, is_default)| wire::DescribedConfigT {
                                name: Some(name),
                                value: Some(value),
                                is_default,
                            },
                        ),
                    );
                    wire::TopicConfigsT {
                        name: Some(name),
                        error_code: ErrorCode::None,
                        error_message: None,
                        configs: Some(configs),
                    }
                }
            })
            .collect();
        ResponseBodyT::DescribeConfigsResponse(Box::new(wire::DescribeConfigsResponseT {
            topics: Some(topics),
        }))
    }

    async fn list_offsets(&self, request: wire::ListOffsetsRequestT) -> ResponseBodyT {
        let mut topics = Vec::new();
        for topic in request.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            let mut partitions = Vec::new();
            for partition in topic.partitions.into_iter().flatten() {
                let result =
                    self.list_offset(&name, partition.partition as u32, partition.timestamp).await;
                partitions.push(match result {
                    Ok(offset) => wire::ListOffsetsPartitionResponseT {
                        partition: partition.partition,
                        error_code: ErrorCode::None,
                        error_message: None,
                        offset,
                    },
                    Err(failure) => wire::ListOffsetsPartitionResponseT {
                        partition: partition.partition,
                        error_code: failure.code,
                        error_message: Some(failure.message),
                        offset: -1,
                    },
                });
            }
            topics.push(wire::ListOffsetsTopicResponseT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        ResponseBodyT::ListOffsetsResponse(Box::new(wire::ListOffsetsResponseT {
            topics: Some(topics),
        }))
    }

    // ---- Controller (shard 0) -----------------------------------------------------------------

    async fn controller(&self, body: RequestBodyT) -> ResponseBodyT {
        assert_eq!(self.id, 0, "controller requests run on shard 0");
        let Ok(_lock) = self.controller_lock.acquire_permit(1).await else {
            return ResponseBodyT::NONE;
        };
        match body {
            RequestBodyT::CreateTopicsRequest(request) => {
                let mut results = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.unwrap_or_default();
                    let configs: BTreeMap<String, String> = topic
                        .configs
                        .into_iter()
                        .flatten()
                        .map(|c| (c.name.unwrap_or_default(), c.value.unwrap_or_default()))
                        .collect();
                    let layout = self.config.layout.topics.get(&name).map(|t| t.shards.clone());
                    let mut catalog = self.catalog.borrow().clone();
                    let created = catalog
                        .create(
                            &name,
                            i64::from(topic.partitions),
                            configs,
                            &self.config.log_defaults,
                            self.config.shard_count(),
                            layout.as_deref(),
                        )
                        .map(|_| ());
                    let result = match created {
                        Ok(()) if request.validate_only => Ok(()),
                        Ok(()) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::CreateTopicsResponse(Box::new(wire::CreateTopicsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::DeleteTopicsRequest(request) => {
                let mut results = Vec::new();
                for name in request.names.into_iter().flatten() {
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.delete(&name) {
                        Ok(_) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::DeleteTopicsResponse(Box::new(wire::DeleteTopicsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::AlterConfigsRequest(request) => {
                let mut results = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.unwrap_or_default();
                    let updates: Vec<(String, String)> = topic
                        .configs
                        .into_iter()
                        .flatten()
                        .map(|c| (c.name.unwrap_or_default(), c.value.unwrap_or_default()))
                        .collect();
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.alter(&name, &updates, &self.config.log_defaults) {
                        Ok(()) if request.validate_only => Ok(()),
                        Ok(()) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::AlterConfigsResponse(Box::new(wire::AlterConfigsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::OffsetCommitRequest(request) => self.commit_offsets(*request).await,
            RequestBodyT::OffsetFetchRequest(request) => self.fetch_offsets(*request).await,
            _ => ResponseBodyT::NONE,
        }
    }

    /// Persists a new catalog and waits until every shard runs with it.
    async fn publish(&self, catalog: Catalog) -> Result<(), CatalogError> {
        catalog.save(&self.config.data_dir).map_err(|e| CatalogError::InvalidConfig {
            key: "catalog".into(),
            value: String::new(),
            reason: e.to_string(),
        })?;
        for shard in 0..self.config.shard_count() {
            if shard == self.id {
                if let Err(error) = self.apply_catalog(catalog.clone()).await {
                    tracing::error!(%error, "applying the catalog on the controller failed");
                }
            } else {
                let snapshot = catalog.clone();
                if let Err(failure) =
                    self.call(shard, |reply| ShardMsg::Catalog { catalog: snapshot, reply }).await
                {
                    tracing::error!(shard, message = %failure.message, "a shard did not take the new catalog");
                }
            }
        }
        Ok(())
    }

    async fn commit_offsets(&self, request: wire::OffsetCommitRequestT) -> ResponseBodyT {
        let group = request.group_id.clone().unwrap_or_default();
        // Fencing: a member of an older generation (a zombie) may not commit.
        let member = request.member_id.clone().unwrap_or_default();
        let fenced = match groups::validate_group_id(&group) {
            Err(invalid) => Err(invalid),
            Ok(()) => self.check_commit(&group, &member, request.generation_id).await,
        };
        let mut accepted = Vec::new();
        let mut results: Vec<wire::TopicPartitionResultsT> = Vec::new();
        for topic in request.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            let mut partitions = Vec::new();
            for partition in topic.partitions.into_iter().flatten() {
                let known = self.owner(&name, partition.partition as u32).is_some();
                let error_code = if let Err(failure) = &fenced {
                    failure.code
                } else if !known {
                    ErrorCode::UnknownTopicOrPartition
                } else if partition.offset < 0 {
                    ErrorCode::InvalidRequest
                } else {
                    accepted.push((
                        (group.clone(), name.clone(), partition.partition as u32),
                        partition.offset,
                    ));
                    ErrorCode::None
                };
                partitions.push(wire::PartitionResultT {
                    partition: partition.partition,
                    error_code,
                    error_message: None,
                });
            }
            results.push(wire::TopicPartitionResultsT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        let store = self.offsets.clone().expect("shard 0 has the offset store");
        // Shared access: concurrent commits share fdatasyncs; compaction alone is exclusive.
        let committed = store.read().await.expect("lock never closed").commit(&accepted).await;
        if committed.is_ok() {
            compact_offsets_if_due(store);
        }
        if let Err(error) = committed {
            let failure = Failure::from(error);
            for topic in &mut results {
                for partition in topic.partitions.iter_mut().flatten() {
                    if partition.error_code == ErrorCode::None {
                        partition.error_code = failure.code;
                        partition.error_message = Some(failure.message.clone());
                    }
                }
            }
        }
        ResponseBodyT::OffsetCommitResponse(Box::new(wire::OffsetCommitResponseT {
            topics: Some(results),
        }))
    }

    async fn fetch_offsets(&self, request: wire::OffsetFetchRequestT) -> ResponseBodyT {
        let group = request.group_id.unwrap_or_default();
        let store = self.offsets.as_ref().expect("shard 0 has the offset store");
        let store = store.read().await.expect("lock never closed");
        let topics: Vec<(String, Option<Vec<i32>>)> = match request.topics {
            Some(topics) => {
                topics.into_iter().map(|t| (t.name.unwrap_or_default(), t.partitions)).collect()
            }
            None => store.topics_of(&group).into_iter().map(|t| (t, None)).collect(),
        };
        let mut out = Vec::new();
        for (name, partitions) in topics {
            let partitions: Vec<wire::OffsetFetchPartitionT> = match partitions {
                Some(list) => list
                    .into_iter()
                    .map(|p| wire::OffsetFetchPartitionT {
                        partition: p,
                        offset: store.get(&(group.clone(), name.clone(), p as u32)).unwrap_or(-1),
                        metadata: None,
                        error_code: ErrorCode::None,
                    })
                    .collect(),
                None => {
                    let count =
                        self.catalog.borrow().topics.get(&name).map_or(0, |t| t.partition_count());
                    let committed: HashMap<u32, i64> =
                        store.for_topic(&group, &name).into_iter().collect();
                    (0..count)
                        .map(|p| wire::OffsetFetchPartitionT {
                            partition: p as i32,
                            offset: committed.get(&p).copied().unwrap_or(-1),
                            metadata: None,
                            error_code: ErrorCode::None,
                        })
                        .collect()
                }
            };
            out.push(wire::OffsetFetchTopicResponseT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        ResponseBodyT::OffsetFetchResponse(Box::new(wire::OffsetFetchResponseT {
            topics: Some(out),
        }))
    }
}

fn topic_result(name: String, result: Result<(), CatalogError>) -> wire::TopicResultT {
    match result {
        Ok(()) => wire::TopicResultT {
            name: Some(name),
            error_code: ErrorCode::None,
            error_message: None,
        },
        Err(error) => {
            let code = match &error {
                CatalogError::InvalidName(_) => ErrorCode::InvalidTopic,
                CatalogError::Exists(_) => ErrorCode::TopicAlreadyExists,
                CatalogError::Unknown(_) => ErrorCode::UnknownTopicOrPartition,
                CatalogError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
                CatalogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
                CatalogError::TooManyTopics => ErrorCode::InvalidRequest,
            };
            wire::TopicResultT {
                name: Some(name),
                error_code: code,
                error_message: Some(error.to_string()),
            }
        }
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

/// Compacts the committed-offsets log in the background if it is due: off the commit path, so
/// no commit waits for it and its failure never fails a commit that was already durable.
pub(crate) fn compact_offsets_if_due(store: Rc<RwLock<OffsetStore>>) {
    let claimed = store.try_read().map(|s| s.claim_compaction()).unwrap_or(false);
    if !claimed {
        return;
    }
    glommio::spawn_local(async move {
        let Ok(store) = store.write().await else { return };
        if let Err(error) = store.compact().await {
            tracing::error!(%error, "compacting the committed-offsets log failed; will retry");
        }
    })
    .detach();
}

/// Best effort at the correlation id of a request that failed verification: only if the buffer
/// is at least a valid `Request` root without the limits check. Otherwise 0.
fn correlation_id_of(header: &[u8]) -> u32 {
    flatbuffers::root::<wire::Request>(header).map_or(0, |r| r.correlation_id())
}

/// Splits `buffer` into the pieces at `ranges`, without copying when the ranges are ascending
/// and disjoint (as flatc lays vectors out). A crafted but valid flatbuffer may reference one
/// vector twice or out of order: then each piece is copied, so bad input costs a copy, never a
/// panic.
fn carve(buffer: BytesMut, ranges: &[Range<usize>]) -> Vec<BytesMut> {
    let in_bounds = ranges.iter().all(|r| r.start <= r.end && r.end <= buffer.len());
    if !in_bounds {
        return ranges.iter().map(|_| BytesMut::new()).collect();
    }
    // Flatbuffers builds back to front, so a request's vectors usually come in descending
    // order: carve in ascending order, then put the pieces back where they were asked.
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let disjoint = order.windows(2).all(|w| ranges[w[0]].end <= ranges[w[1]].start);
    if !disjoint {
        // Two partitions sharing bytes (a crafted request): copies, never a panic.
        return ranges.iter().map(|r| BytesMut::from(&buffer[r.clone()])).collect();
    }
    let mut rest = buffer;
    let mut consumed = 0;
    let mut out: Vec<BytesMut> = ranges.iter().map(|_| BytesMut::new()).collect();
    for i in order {
        let range = &ranges[i];
        let mut piece = rest.split_off(range.start - consumed);
        let tail = piece.split_off(range.end - range.start);
        out[i] = piece;
        rest = tail;
        consumed = range.end;
    }
    out
}

/// Splits a partition's records into whole batches (zero-copy), checking each header's shape.
fn split_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, Failure> {
    let mut batches = Vec::new();
    // Bounded by the batch-count limit.
    while !records.is_empty() {
        if batches.len() >= spate_protocol::limits::BATCHES_PER_PARTITION_MAX {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                "a produce request carries one record batch per partition",
            ));
        }
        let header = BatchHeader::parse(&records)
            .map_err(|e| Failure::new(ErrorCode::CorruptMessage, e.to_string()))?;
        header.check_shape().map_err(|e| Failure::new(ErrorCode::CorruptMessage, e.to_string()))?;
        let length = header.batch_length as usize;
        if length > records.len() {
            return Err(Failure::new(
                ErrorCode::CorruptMessage,
                "batch runs past the end of the partition's records",
            ));
        }
        batches.push(records.split_to(length));
    }
    if batches.is_empty() {
        return Err(Failure::new(ErrorCode::CorruptMessage, "no record batch for the partition"));
    }
    Ok(batches)
}

/// Appends `entry` to the topic entry named `name` in `topics`, creating it if needed.
fn push_into<T, E>(
    topics: &mut Vec<T>,
    name: String,
    entry: E,
    name_of: impl Fn(&T) -> &Option<String>,
    entries_of: impl Fn(&mut T) -> &mut Vec<E>,
    new: impl FnOnce(String) -> T,
) {
    let index = match topics.iter().position(|t| name_of(t).as_deref() == Some(name.as_str())) {
        Some(index) => index,
        None => {
            topics.push(new(name));
            topics.len() - 1
        }
    };
    entries_of(&mut topics[index]).push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carve_splits_without_copying() {
        let buffer = BytesMut::from(&b"0123456789"[..]);
        let pointer = buffer.as_ptr() as usize;
        let pieces = carve(buffer, &[1..3, 5..9]);
        assert_eq!(&pieces[0][..], b"12");
        assert_eq!(&pieces[1][..], b"5678");
        assert_eq!(pieces[1].as_ptr() as usize, pointer + 5);
    }

    #[test]
    fn carve_splits_a_real_multi_partition_request_without_copying() {
        let batches: Vec<BytesMut> = (0..3u8)
            .map(|i| {
                let mut builder = spate_protocol::batch::BatchBuilder::new();
                builder.push(&spate_protocol::batch::NewRecord {
                    value: Some(Bytes::from(vec![i; 100 + usize::from(i)])),
                    ..Default::default()
                });
                builder.finish().unwrap()
            })
            .collect();
        let partitions: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(p, b)| codec::ProducePartitionInput { partition: p as i32, records: b })
            .collect();
        let frame =
            codec::encode_produce(1, "c", wire::Acks::All, 1000, &[("t", partitions)]).unwrap();
        let mut buffer = frame;
        let mut decoded =
            spate_protocol::frame::FrameDecoder::default().decode(&mut buffer).unwrap().unwrap();
        let header = std::mem::take(&mut decoded.header);
        let base = header.as_ptr() as usize;
        let end = base + header.len();
        let ranges: Vec<Range<usize>> = {
            let request = codec::decode_request(&header).unwrap();
            let produce = request.body_as_produce_request().unwrap();
            let topic = produce.topics().unwrap().get(0);
            topic
                .partitions()
                .unwrap()
                .iter()
                .map(|p| {
                    let records = p.records().unwrap();
                    let start = records.bytes().as_ptr() as usize - base;
                    start..start + records.len()
                })
                .collect()
        };
        assert!(ranges[0].start > ranges[2].start, "flatbuffers lays vectors back to front");
        let pieces = carve(header, &ranges);
        for (piece, batch) in pieces.iter().zip(&batches) {
            assert_eq!(&piece[..], &batch[..]);
            let at = piece.as_ptr() as usize;
            assert!(base <= at && at < end, "carved in place, not copied");
        }
    }

    #[test]
    fn carve_copies_shared_or_unordered_ranges_instead_of_panicking() {
        let buffer = BytesMut::from(&b"0123456789"[..]);
        let pieces = carve(buffer.clone(), &[2..5, 2..5]);
        assert_eq!(&pieces[0][..], b"234");
        assert_eq!(&pieces[1][..], b"234");
        let pieces = carve(buffer.clone(), &[3..8, 5..9]);
        assert_eq!(&pieces[0][..], b"34567");
        assert_eq!(&pieces[1][..], b"5678");
        assert!(carve(buffer, &[5..50, 60..70]).iter().all(|p| p.is_empty()));
    }

    #[test]
    fn split_batches_checks_shapes() {
        let mut builder = spate_protocol::batch::BatchBuilder::new();
        builder.push(&spate_protocol::batch::NewRecord {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        });
        let batch = builder.finish().unwrap();
        assert_eq!(split_batches(batch.clone()).unwrap().len(), 1);
        // One batch per partition and request, so its result says exactly what was written.
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        let refused = split_batches(two).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidRequest);
        let mut cut = batch.clone();
        cut.truncate(batch.len() - 1);
        assert!(split_batches(cut).is_err());
        assert!(split_batches(BytesMut::new()).is_err());
        assert!(split_batches(BytesMut::from(&[0u8; 100][..])).is_err());
    }
}
