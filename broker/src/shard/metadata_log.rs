//! The cluster's metadata log (as KRaft's `__cluster_metadata`): topic creates, deletes and
//! config changes, and producer-id allocations, are records in one log replicated by the same
//! consensus core as every partition. The catalog and the producer-id allocator are its state
//! machine: every broker applies the committed records in order, so every broker converges on
//! the same catalog, and a broker that was down catches up from the log when it returns.
//!
//! - The log lives on shard 0 of every broker, in `<data>/__cluster_metadata/0` (no topic name
//!   may start with `__`), as replication group 0 (topic groups are `topic id << 20 |
//!   partition` with a non-zero topic id); its voters are the cluster's initial brokers. It is
//!   written with `flush=always` and never trimmed by retention.
//! - A change a client asks any broker for goes to the metadata leader (forwarded over the
//!   client protocol). The leader, under its controller lock, first applies everything
//!   committed, then checks the change against that catalog and decides what must be decided
//!   once (a new topic's replica placement and id; the next producer id), proposes it as one
//!   record, and answers with the result of applying it. Applying is deterministic given the
//!   record, so every broker gets the same result.
//! - Records: key `topics`, value a flatbuffers `Request` (create, delete or alter, placement
//!   filled in); key `producer-ids`, value a TOML [`ProducerIdsRecord`]; key `broker`, value a
//!   TOML [`BrokerRecord`] (a broker's registration: its client address and shard count, sent
//!   by each broker at start when they changed; the leader refuses a shard count that differs
//!   from the other brokers').
//! - What is applied is noted in `<data>/meta/metadata-applied` after each batch. A crash between
//!   applying a batch and noting it applies that batch again at restart, so applying is
//!   idempotent: a create of a topic that exists with the record's id, a delete of a topic
//!   that is gone, and a config already set are no-ops; producer-id records merge.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;
use spate_cluster::Partition;
use spate_protocol::batch::{BatchBuilder, NewRecord, Records};
use spate_protocol::codec;
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

use super::controller::ForwardError;
use super::{Failure, Shard};
use crate::catalog::{BrokerRegistration, CatalogError};
use crate::limits;
use crate::producer_ids::ProducerIdsRecord;

/// The metadata log's directory under the data directory.
pub(crate) const METADATA_DIR: &str = "__cluster_metadata";

const GROUP: spate_replication::GroupId = spate_replication::GroupId(0);
const KIND_TOPICS: &[u8] = b"topics";
const KIND_PRODUCER_IDS: &[u8] = b"producer-ids";
const KIND_BROKER: &[u8] = b"broker";

/// A broker's registration, as the metadata log carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct BrokerRecord {
    id: u32,
    #[serde(flatten)]
    registration: BrokerRegistration,
}

/// Shard 0's handle on the metadata log.
pub(super) struct MetadataLog {
    partition: Partition,
    /// Records below this offset are applied.
    applied: Cell<i64>,
    /// One applier at a time.
    applying: Semaphore,
    /// What applying each recent topic record answered, by offset, for the leader that
    /// proposed it (at most `METADATA_RESULTS_MAX`).
    results: RefCell<VecDeque<(i64, ResponseBodyT)>>,
    /// The metadata term in which this broker last handed out producer ids; a broker that
    /// starts leading starts a fresh block.
    producer_ids_term: Cell<Option<u64>>,
}

impl MetadataLog {
    pub(super) fn partition(&self) -> &Partition {
        &self.partition
    }
}

fn applied_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("meta").join("metadata-applied")
}

impl Shard {
    /// Opens the metadata log and starts its replica (shard 0 of a cluster broker only).
    pub(super) async fn open_metadata_log(&self) -> Result<(), LogError> {
        let node = self.replication.borrow().clone();
        let (Some(cluster), Some(node), 0) = (&self.config.cluster, node, self.id) else {
            return Ok(());
        };
        let config = LogConfig {
            segment_bytes: limits::METADATA_SEGMENT_BYTES,
            segment_ms: None,
            retention_bytes: None,
            retention_ms: None,
            flush: FlushPolicy::Always,
            ..LogConfig::default()
        };
        let options = LogOptions { task_queue: Some(self.background), ..LogOptions::default() };
        let dir = self.config.data_dir.join(METADATA_DIR).join("0");
        let log = Log::open(&dir, config, options).await?;
        let partition = node
            .open_partition(GROUP, &cluster.broker_ids(), log, Default::default())
            .await
            .map_err(|e| LogError::Config(format!("the metadata log: {e}")))?;
        let path = applied_path(&self.config.data_dir);
        let applied = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|e| LogError::Config(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(LogError::Config(format!("{}: {e}", path.display()))),
        };
        *self.metadata.borrow_mut() = Some(Rc::new(MetadataLog {
            partition,
            applied: Cell::new(applied),
            applying: Semaphore::new(1),
            results: RefCell::new(VecDeque::new()),
            producer_ids_term: Cell::new(None),
        }));
        Ok(())
    }

    pub(super) fn metadata_log(&self) -> Option<Rc<MetadataLog>> {
        self.metadata.borrow().clone()
    }

    /// Applies every committed record not applied yet, in order. Runs every
    /// `METADATA_APPLY_INTERVAL` on shard 0, and after each change this broker leads.
    pub(crate) async fn apply_metadata(&self) {
        let Some(metadata) = self.metadata_log() else { return };
        let Ok(_one) = metadata.applying.acquire_permit(1).await else { return };
        let status = metadata.partition.status();
        let commit = status.high_watermark.unwrap_or(status.commit) as i64;
        // Bounded: each round reads at most METADATA_READ_BYTES_MAX and moves `applied` on, or
        // stops.
        for _ in 0..limits::METADATA_APPLY_ROUNDS_MAX {
            let from = metadata.applied.get();
            if from >= commit {
                return;
            }
            let log = metadata.partition.log();
            let read = match log.read_bounded(from, limits::METADATA_READ_BYTES_MAX, commit).await {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, offset = from, "cannot read the metadata log");
                    return;
                }
            };
            let mut next = from;
            for chunk in &read.chunks {
                for (header, batch) in spate_storage::scan::batches(chunk) {
                    if header.next_offset() <= next {
                        continue;
                    }
                    if !header.is_control() {
                        for record in Records::new(batch, header) {
                            match record {
                                Ok(record) if record.offset >= next => {
                                    self.apply_record(
                                        &metadata,
                                        record.offset,
                                        record.key,
                                        record.value,
                                    )
                                    .await;
                                }
                                Ok(_) => {}
                                Err(error) => {
                                    tracing::error!(%error, "a malformed metadata record; skipped");
                                }
                            }
                        }
                    }
                    next = header.next_offset();
                }
            }
            if next == from {
                return;
            }
            let path = applied_path(&self.config.data_dir);
            let noted = std::fs::create_dir_all(path.parent().expect("meta dir")).and_then(|()| {
                spate_storage::durable::write_atomically(&path, next.to_string().as_bytes())
            });
            if let Err(error) = noted {
                // Applied but not noted: a restart applies these records again, harmlessly.
                tracing::warn!(%error, "cannot note the applied metadata offset");
            }
            metadata.applied.set(next);
        }
    }

    async fn apply_record(
        &self,
        metadata: &MetadataLog,
        offset: i64,
        kind: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let value = value.unwrap_or_default();
        match kind {
            Some(KIND_TOPICS) => {
                let body = match codec::decode_request(value) {
                    Ok(request) => request.unpack().body,
                    Err(error) => {
                        tracing::error!(offset, %error, "an undecodable metadata record; skipped");
                        return;
                    }
                };
                let response = self.change(body).await;
                let mut results = metadata.results.borrow_mut();
                if results.len() >= limits::METADATA_RESULTS_MAX {
                    results.pop_front();
                }
                results.push_back((offset, response));
            }
            Some(KIND_PRODUCER_IDS) => {
                let record: ProducerIdsRecord = match decode_toml(value) {
                    Ok(record) => record,
                    Err(error) => {
                        tracing::error!(offset, %error, "an undecodable producer-id record; skipped");
                        return;
                    }
                };
                let ids = self.producer_ids.as_ref().expect("producer ids live on shard 0");
                let mut merged = ids.borrow().clone();
                merged.merge(&record);
                if let Err(error) = merged.save(&self.config.data_dir) {
                    tracing::error!(%error, "cannot save producer ids");
                }
                *ids.borrow_mut() = merged;
            }
            Some(KIND_BROKER) => {
                let record: BrokerRecord = match decode_toml(value) {
                    Ok(record) => record,
                    Err(error) => {
                        tracing::error!(offset, %error, "an undecodable broker record; skipped");
                        return;
                    }
                };
                let mut catalog = self.catalog.borrow().clone();
                catalog.brokers.insert(record.id, record.registration);
                if let Err(error) = self.publish(catalog).await {
                    tracing::error!(%error, "cannot save a broker registration");
                }
            }
            other => tracing::error!(offset, kind = ?other, "an unknown metadata record; skipped"),
        }
    }

    /// A catalog change or a producer init in a cluster: made by the metadata leader through
    /// the log. A broker that does not lead passes the request to the one that does and, for
    /// creates and deletes, waits a little until it has applied the change itself, so that a
    /// client that asks it next sees its own change.
    pub(super) async fn metadata_change(
        &self,
        body: RequestBodyT,
    ) -> Result<ResponseBodyT, Failure> {
        let metadata = self
            .metadata_log()
            .ok_or_else(|| Failure::new(ErrorCode::ShuttingDown, "the metadata log is closed"))?;
        let me = self.config.cluster.as_ref().map(|c| c.node_id);
        let deadline = Instant::now() + limits::METADATA_CHANGE_TIMEOUT;
        let mut last_error = String::from("no broker leads the metadata log yet");
        // Bounded by the deadline; each pass that does not answer waits METADATA_LEADER_POLL.
        loop {
            match metadata.partition.leader() {
                Some(leader) if Some(leader) == me => {
                    match self.lead_change(&metadata, body.clone()).await {
                        Err(failure) if failure.code == ErrorCode::NotLeader => {
                            last_error = failure.message;
                        }
                        answer => return answer,
                    }
                }
                Some(leader) => match self.client_address(leader) {
                    Some(address) => {
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .min(limits::METADATA_FORWARD_ATTEMPT_TIMEOUT);
                        // A leader that stops leading meanwhile (paused, cut off) may never
                        // answer: go to the next one as soon as this broker hears of it.
                        let forwarded = futures_lite::future::or(
                            super::controller::forward_to(&address, body.clone(), left),
                            async {
                                // Bounded by the forward's own timeout, which `or` races.
                                while metadata.partition.leader() == Some(leader) {
                                    glommio::timer::sleep(limits::METADATA_LEADER_POLL).await;
                                }
                                Err(ForwardError::Unreachable("it stopped leading".into()))
                            },
                        );
                        match forwarded.await {
                            Ok(response) => {
                                self.await_applied_here(&response, deadline).await;
                                return Ok(response);
                            }
                            // It stopped leading before it took the change: ask again.
                            Err(ForwardError::Refused(failure))
                                if failure.code == ErrorCode::NotLeader =>
                            {
                                last_error = failure.message
                            }
                            Err(ForwardError::Refused(failure)) => return Err(failure),
                            Err(ForwardError::Unreachable(message)) => {
                                last_error = format!("metadata leader {leader}: {message}")
                            }
                        }
                    }
                    None => last_error = format!("metadata leader {leader} has no known address"),
                },
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(Failure::new(ErrorCode::RequestTimedOut, last_error));
            }
            glommio::timer::sleep(limits::METADATA_LEADER_POLL).await;
        }
    }

    /// The client address of broker `id`: as its registration says, else as its heartbeats
    /// told the membership.
    pub(super) fn client_address(&self, id: u32) -> Option<String> {
        if let Some(registered) = self.catalog.borrow().brokers.get(&id) {
            return Some(registered.client_address.clone());
        }
        let membership = self.config.membership.as_ref()?;
        let statuses = membership.lock().expect("membership lock").status(Instant::now());
        statuses.into_iter().find(|s| s.id == id).map(|s| s.address)
    }

    /// Waits (bounded) until the topics a forwarded create or delete changed look changed here.
    async fn await_applied_here(&self, response: &ResponseBodyT, deadline: Instant) {
        let (names, created) = match response {
            ResponseBodyT::CreateTopicsResponse(r) => (r.topics.as_ref(), true),
            ResponseBodyT::DeleteTopicsResponse(r) => (r.topics.as_ref(), false),
            _ => return,
        };
        let names: Vec<&str> = names
            .into_iter()
            .flatten()
            .filter(|t| t.error_code == ErrorCode::None)
            .filter_map(|t| t.name.as_deref())
            .collect();
        let until = deadline.min(Instant::now() + limits::METADATA_PROPAGATION_WAIT);
        // Bounded by `until`.
        while Instant::now() < until {
            self.apply_metadata().await;
            let done = {
                let catalog = self.catalog.borrow();
                names.iter().all(|n| catalog.topics.contains_key(*n) == created)
            };
            if done {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The leader's side of a change: under the controller lock, apply what is committed,
    /// prepare the record, commit it, apply it, and answer with what applying it said.
    async fn lead_change(
        &self,
        metadata: &MetadataLog,
        body: RequestBodyT,
    ) -> Result<ResponseBodyT, Failure> {
        let Ok(_lock) = self.controller_lock.acquire_permit(1).await else {
            return Err(Failure::new(ErrorCode::ShuttingDown, "the controller is closed"));
        };
        let Some(committed) = metadata.partition.high_watermark() else {
            return Err(Failure::new(ErrorCode::NotLeader, "not the metadata leader"));
        };
        self.apply_metadata().await;
        if metadata.applied.get() < committed as i64 {
            return Err(Failure::new(
                ErrorCode::RequestTimedOut,
                "the metadata leader could not apply the log up to its commit point",
            ));
        }
        if let RequestBodyT::InitProducerIdRequest(request) = body {
            return self.lead_producer_init(metadata, request.producer_name).await;
        }
        if let RequestBodyT::RegisterBrokerRequest(request) = body {
            return self.lead_registration(metadata, *request).await;
        }
        let (record, mut answer) = self.prepare(body).await;
        let Some(record) = record else { return Ok(answer) };
        let offset = self.propose_metadata(metadata, KIND_TOPICS, encode(record)).await?;
        self.apply_metadata().await;
        let applied =
            metadata.results.borrow().iter().find(|(o, _)| *o == offset).map(|(_, r)| r.clone());
        match applied {
            Some(applied) => {
                append_results(&mut answer, applied);
                Ok(answer)
            }
            None => Err(Failure::new(
                ErrorCode::RequestTimedOut,
                "the change is committed but not yet applied here",
            )),
        }
    }

    /// What the leader decides once: the record to commit (creates with their placement and id,
    /// and the deletes and config changes that hold against the current catalog), and the
    /// answer for everything that does not go into it (refusals, validate-only checks).
    async fn prepare(&self, body: RequestBodyT) -> (Option<RequestBodyT>, ResponseBodyT) {
        let mut refused = Vec::new();
        let kind = body.request_body_type();
        let record = match body {
            RequestBodyT::CreateTopicsRequest(request) => {
                let mut placed = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.clone().unwrap_or_default();
                    match self.create(topic, true, false).await {
                        Ok(_) if request.validate_only => refused.push(topic_ok(name)),
                        Ok(Some(topic)) => placed.push(topic),
                        Ok(None) => refused.push(super::controller::topic_result(
                            name,
                            Err(CatalogError::Storage("no placement in a cluster".into())),
                        )),
                        Err(error) => {
                            refused.push(super::controller::topic_result(name, Err(error)))
                        }
                    }
                }
                (!placed.is_empty()).then(|| {
                    RequestBodyT::CreateTopicsRequest(Box::new(wire::CreateTopicsRequestT {
                        topics: Some(placed),
                        forwarded: true,
                        ..*request
                    }))
                })
            }
            RequestBodyT::DeleteTopicsRequest(request) => {
                let mut names = Vec::new();
                for name in request.names.into_iter().flatten() {
                    if self.catalog.borrow().topics.contains_key(&name) {
                        names.push(name);
                    } else {
                        refused.push(super::controller::topic_result(
                            name.clone(),
                            Err(CatalogError::Unknown(name)),
                        ));
                    }
                }
                (!names.is_empty()).then(|| {
                    RequestBodyT::DeleteTopicsRequest(Box::new(wire::DeleteTopicsRequestT {
                        names: Some(names),
                        forwarded: true,
                        ..*request
                    }))
                })
            }
            RequestBodyT::AlterConfigsRequest(request) => {
                let mut valid = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.clone().unwrap_or_default();
                    let updates: Vec<(String, String)> =
                        super::controller::config_pairs(topic.configs.clone()).collect();
                    let mut catalog = self.catalog.borrow().clone();
                    match catalog.alter(&name, &updates, &self.config.log_defaults) {
                        Ok(()) if request.validate_only => refused.push(topic_ok(name)),
                        Ok(()) => valid.push(topic),
                        Err(error) => {
                            refused.push(super::controller::topic_result(name, Err(error)))
                        }
                    }
                }
                (!valid.is_empty()).then(|| {
                    RequestBodyT::AlterConfigsRequest(Box::new(wire::AlterConfigsRequestT {
                        topics: Some(valid),
                        validate_only: false,
                        forwarded: true,
                    }))
                })
            }
            _ => None,
        };
        (record, super::controller::answer_of(kind, refused))
    }

    /// Hands out a producer identity. An init that changes what must survive (a new block, a
    /// named producer's epoch) is committed to the log first; the rest come from the block.
    async fn lead_producer_init(
        &self,
        metadata: &MetadataLog,
        name: Option<String>,
    ) -> Result<ResponseBodyT, Failure> {
        let ids = self.producer_ids.as_ref().expect("producer ids live on shard 0");
        let term = metadata.partition.status().term;
        let mut next = ids.borrow().clone();
        if metadata.producer_ids_term.get() != Some(term) {
            // What is left of a block from an earlier term may have been handed out by another
            // leader since.
            next.start_new_block();
        }
        let (identity, save) = next.init(name.as_deref()).map_err(super::producer_ids::failure)?;
        if save {
            let record = toml::to_string(&next.record(name.as_deref()))
                .map_err(|e| Failure::new(ErrorCode::Unknown, e.to_string()))?;
            self.propose_metadata(metadata, KIND_PRODUCER_IDS, Bytes::from(record)).await?;
            self.apply_metadata().await;
        }
        *ids.borrow_mut() = next;
        metadata.producer_ids_term.set(Some(term));
        tracing::debug!(name = ?name, id = identity.id, epoch = identity.epoch, "init producer id");
        Ok(ResponseBodyT::InitProducerIdResponse(Box::new(wire::InitProducerIdResponseT {
            producer_id: identity.id,
            producer_epoch: identity.epoch,
        })))
    }

    /// Commits a broker's registration unless the catalog already holds it; refuses a shard
    /// count other than the other registered brokers'.
    async fn lead_registration(
        &self,
        metadata: &MetadataLog,
        request: wire::RegisterBrokerRequestT,
    ) -> Result<ResponseBodyT, Failure> {
        let registration = BrokerRegistration {
            client_address: request.client_address.unwrap_or_default(),
            shards: request.shards,
        };
        let id = request.broker_id;
        let known = self.config.cluster.as_ref().is_some_and(|c| c.broker_ids().contains(&id));
        if !known {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("broker {id} is not one of the cluster's --peers"),
            ));
        }
        let (unchanged, mismatch) = {
            let catalog = self.catalog.borrow();
            let unchanged = catalog.brokers.get(&id) == Some(&registration);
            let mismatch = catalog
                .brokers
                .iter()
                .find(|(other, r)| **other != id && r.shards != registration.shards)
                .map(|(other, r)| (*other, r.shards));
            (unchanged, mismatch)
        };
        if let Some((other, shards)) = mismatch {
            return Err(Failure::new(
                ErrorCode::InvalidConfig,
                format!(
                    "broker {id} runs {} shards and broker {other} runs {shards}: every broker \
                     of a cluster must run the same number of cores (--cores)",
                    registration.shards
                ),
            ));
        }
        if !unchanged {
            let record = BrokerRecord { id, registration };
            let value = toml::to_string(&record)
                .map_err(|e| Failure::new(ErrorCode::Unknown, e.to_string()))?;
            self.propose_metadata(metadata, KIND_BROKER, Bytes::from(value)).await?;
            self.apply_metadata().await;
        }
        Ok(ResponseBodyT::RegisterBrokerResponse(Box::default()))
    }

    /// Registers this broker (shard 0 of a cluster broker) once the metadata log has a leader,
    /// retrying every `METADATA_REGISTER_RETRY` until it is registered or `stop` is set.
    pub(crate) async fn register_broker(&self, stop: &std::sync::atomic::AtomicBool) {
        let Some(cluster) = &self.config.cluster else { return };
        let request = wire::RegisterBrokerRequestT {
            broker_id: cluster.node_id,
            client_address: Some(self.config.listen.to_string()),
            shards: self.config.shard_count() as u16,
        };
        let mut complained = false;
        // Bounded by `stop`; one attempt per METADATA_REGISTER_RETRY.
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let body = RequestBodyT::RegisterBrokerRequest(Box::new(request.clone()));
            match self.metadata_change(body).await {
                Ok(_) => {
                    tracing::info!(broker = cluster.node_id, "registered in the metadata log");
                    return;
                }
                // A refusal is a configuration error: say so loudly, once, and keep trying
                // (the operator may restart the other brokers).
                Err(failure) if failure.code == ErrorCode::InvalidConfig => {
                    if !complained {
                        tracing::error!(message = %failure.message, "the cluster refused this broker");
                        complained = true;
                    }
                }
                Err(failure) => {
                    tracing::debug!(message = %failure.message, "registration failed; retrying")
                }
            }
            glommio::timer::sleep(limits::METADATA_REGISTER_RETRY).await;
        }
    }

    /// Commits one record to the metadata log; returns its offset.
    async fn propose_metadata(
        &self,
        metadata: &MetadataLog,
        kind: &'static [u8],
        value: Bytes,
    ) -> Result<i64, Failure> {
        let mut builder = BatchBuilder::new();
        builder.push(&NewRecord {
            key: Some(Bytes::from_static(kind)),
            value: Some(value),
            headers: Vec::new(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        });
        let batch =
            builder.finish().map_err(|e| Failure::new(ErrorCode::Unknown, e.to_string()))?;
        match metadata.partition.propose(batch).await {
            Ok(committed) => Ok(committed.base_offset as i64),
            Err(error) => Err(super::replicated::replication_failure(METADATA_DIR, 0, error)),
        }
    }
}

/// A record's request as flatbuffers bytes.
fn encode(body: RequestBodyT) -> Bytes {
    let request = wire::RequestT { body, ..Default::default() };
    let mut builder = flatbuffers::FlatBufferBuilder::with_capacity(1024);
    let root = request.pack(&mut builder);
    builder.finish_minimal(root);
    Bytes::copy_from_slice(builder.finished_data())
}

fn topic_ok(name: String) -> wire::TopicResultT {
    super::controller::topic_result(name, Ok(()))
}

/// Adds the topic results of `applied` to `answer`.
fn append_results(answer: &mut ResponseBodyT, applied: ResponseBodyT) {
    let more = match applied {
        ResponseBodyT::CreateTopicsResponse(r) => r.topics,
        ResponseBodyT::DeleteTopicsResponse(r) => r.topics,
        ResponseBodyT::AlterConfigsResponse(r) => r.topics,
        _ => None,
    };
    let topics = match answer {
        ResponseBodyT::CreateTopicsResponse(r) => &mut r.topics,
        ResponseBodyT::DeleteTopicsResponse(r) => &mut r.topics,
        ResponseBodyT::AlterConfigsResponse(r) => &mut r.topics,
        _ => return,
    };
    topics.get_or_insert_with(Vec::new).extend(more.into_iter().flatten());
}

fn decode_toml<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
    toml::from_str(text).map_err(|e| e.to_string())
}
