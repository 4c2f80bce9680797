//! The client: connections per address, a metadata cache, and one typed call per API.
//!
//! Routing: each partition's request goes to the address of the shard that owns it when the
//! broker advertises one (so it skips the broker's cross-shard hop), else to the broker's
//! address. Errors that mean "your metadata is stale" (`NotLeader`, `UnknownTopicOrPartition`)
//! drop the cached entry so the next call refreshes it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_protocol::codec::{self, ProducePartitionInput};
use spate_protocol::frame::Frame;
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, RequestT, ResponseBodyT};

use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::limits;

/// A topic and partition as a produce response names them.
type PartitionKey<'a> = (&'a str, i32);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT` of any broker.
    pub bootstrap: String,
    pub client_id: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Talk to each partition's owning shard directly when the broker advertises its address.
    pub use_shard_addresses: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: "127.0.0.1:9292".into(),
            client_id: "spate-client".into(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            use_shard_addresses: true,
        }
    }
}

/// What the cache knows of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub leader_broker: i32,
    pub shard: u16,
    /// Where requests for this partition go.
    pub address: SocketAddr,
}

/// One fetched partition: whole batches as sent by the broker, plus its offsets.
#[derive(Debug, Clone)]
pub struct FetchedPartition {
    pub topic: String,
    pub partition: u32,
    pub error: Option<ClientError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

/// One partition's batch in a multi-partition produce.
#[derive(Debug, Clone, Copy)]
pub struct PartitionBatch<'a> {
    pub topic: &'a str,
    pub partition: u32,
    /// One whole record batch.
    pub records: &'a [u8],
}

/// Splits one address's batches (indices into `batches`) into requests within the limits on a
/// request's bytes and partitions, with at most one batch per partition in a request (as Kafka
/// sends them, so a partition's answer names exactly one batch): the k-th batch of each
/// partition goes in the k-th layer of requests, and layers go out in order.
fn split_produce(batches: &[PartitionBatch<'_>], indices: &[usize]) -> Vec<Vec<usize>> {
    let mut layers: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<(&str, u32), usize> = HashMap::new();
    for &i in indices {
        let layer = seen.entry((batches[i].topic, batches[i].partition)).or_insert(0);
        if layers.len() <= *layer {
            layers.push(Vec::new());
        }
        layers[*layer].push(i);
        *layer += 1;
    }
    let mut requests: Vec<Vec<usize>> = Vec::new();
    for layer in layers {
        let mut bytes = 0usize;
        let first = requests.len();
        for i in layer {
            let size = batches[i].records.len();
            let full = requests.len() == first
                || requests.last().is_some_and(|r| {
                    r.len() >= limits::PRODUCE_REQUEST_PARTITIONS_MAX
                        || bytes + size > limits::PRODUCE_REQUEST_BYTES_MAX
                });
            if full {
                requests.push(Vec::new());
                bytes = 0;
            }
            requests.last_mut().expect("pushed above").push(i);
            bytes += size;
        }
    }
    requests
}

/// One partition to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTarget {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    pub max_bytes: u32,
}

#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// The bootstrap brokers, in the order given; requests that need no particular broker go
    /// to `bootstrap[current]`, which moves on when that broker cannot be reached.
    bootstrap: Vec<SocketAddr>,
    current: Cell<usize>,
    connections: RefCell<HashMap<SocketAddr, Connection>>,
    /// One connect at a time per address: concurrent callers then share one connection, so
    /// requests sent in order to one address stay in order (one stream).
    connecting: RefCell<HashMap<SocketAddr, Rc<glommio::sync::Semaphore>>>,
    brokers: RefCell<HashMap<i32, SocketAddr>>,
    /// Each group's coordinating broker in a cluster (`None`: the bootstrap broker coordinates,
    /// as a single broker does).
    coordinators: RefCell<HashMap<String, Option<SocketAddr>>>,
    topics: RefCell<HashMap<String, Vec<PartitionInfo>>>,
    closed: Cell<bool>,
}

/// Latest offset (the next one to be written), for `list_offsets`.
pub const LATEST: i64 = -1;
/// Earliest offset still in the log, for `list_offsets`.
pub const EARLIEST: i64 = -2;

impl Client {
    /// Resolves the bootstrap addresses (comma-separated), connects to the first that answers
    /// and handshakes.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let bootstrap = config
            .bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .take(limits::BOOTSTRAP_BROKERS_MAX)
            .map(resolve)
            .collect::<Result<Vec<_>>>()?;
        if bootstrap.is_empty() {
            return Err(ClientError::Connect {
                address: config.bootstrap.clone(),
                message: "no bootstrap address".into(),
            });
        }
        let client = Client {
            inner: Rc::new(Inner {
                config,
                bootstrap,
                current: Cell::new(0),
                connections: RefCell::new(HashMap::new()),
                connecting: RefCell::new(HashMap::new()),
                brokers: RefCell::new(HashMap::new()),
                coordinators: RefCell::new(HashMap::new()),
                topics: RefCell::new(HashMap::new()),
                closed: Cell::new(false),
            }),
        };
        client.bootstrap_connection().await?;
        Ok(client)
    }

    fn current_bootstrap(&self) -> SocketAddr {
        self.inner.bootstrap[self.inner.current.get()]
    }

    /// A connection to a bootstrap broker: the current one, else the next that answers.
    async fn bootstrap_connection(&self) -> Result<Connection> {
        let count = self.inner.bootstrap.len();
        let mut last_error = None;
        // Bounded: each bootstrap address is tried once.
        for _ in 0..count {
            match self.connection(self.current_bootstrap()).await {
                Ok(connection) => return Ok(connection),
                // A broker that accepts but never answers (paused, overloaded) times out its
                // handshake: the next bootstrap broker is tried as for a refused connection.
                Err(error) if error.is_unreachable() => {
                    last_error = Some(error);
                    self.inner.current.set((self.inner.current.get() + 1) % count);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.expect("at least one bootstrap address"))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A live connection to `address`, connecting and handshaking if needed.
    async fn connection(&self, address: SocketAddr) -> Result<Connection> {
        if self.inner.closed.get() {
            return Err(ClientError::Closed);
        }
        let existing = self.inner.connections.borrow().get(&address).cloned();
        if let Some(connection) = existing.filter(|c| !c.is_broken()) {
            return Ok(connection);
        }
        let lock = self
            .inner
            .connecting
            .borrow_mut()
            .entry(address)
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone();
        let _connecting = lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        // Another caller may have connected while this one waited.
        let existing = self.inner.connections.borrow().get(&address).cloned();
        if let Some(connection) = existing.filter(|c| !c.is_broken()) {
            return Ok(connection);
        }
        let connection = Connection::connect(address, self.inner.config.connect_timeout).await?;
        self.handshake(&connection).await?;
        self.inner.connections.borrow_mut().insert(address, connection.clone());
        Ok(connection)
    }

    async fn handshake(&self, connection: &Connection) -> Result<()> {
        let apis = codec::SUPPORTED_APIS
            .iter()
            .map(|(api, min, max)| wire::ApiVersionRangeT {
                api: *api,
                min_version: *min,
                max_version: *max,
            })
            .collect();
        let body = RequestBodyT::HandshakeRequest(Box::new(wire::HandshakeRequestT {
            client_software: Some("spate-client".into()),
            client_version: Some(env!("CARGO_PKG_VERSION").into()),
            apis: Some(apis),
        }));
        let response = self.call_on(connection, body).await?;
        let ResponseBodyT::HandshakeResponse(handshake) = response else {
            return Err(ClientError::UnexpectedResponse("handshake".into()));
        };
        // Every API this client uses is at version 0; a broker must speak it.
        for (api, _, _) in codec::SUPPORTED_APIS
            .iter()
            .filter(|(api, _, _)| *api == wire::ApiKey::Produce || *api == wire::ApiKey::Fetch)
        {
            let spoken =
                handshake.apis.iter().flatten().any(|r| r.api == *api && r.min_version == 0);
            if !spoken {
                return Err(ClientError::broker(
                    ErrorCode::UnsupportedVersion,
                    Some("broker does not speak version 0 of produce/fetch"),
                ));
            }
        }
        Ok(())
    }

    /// Sends one request built with the object API and returns the response body, or the
    /// envelope's error.
    pub async fn call(&self, body: RequestBodyT) -> Result<ResponseBodyT> {
        let connection = self.bootstrap_connection().await?;
        self.call_on(&connection, body).await
    }

    /// Sends a request about `group` to the broker coordinating it. In a cluster every member of
    /// a group must meet at one broker: it is found with FindCoordinator, cached, and forgotten
    /// when it cannot be reached or answers `NotCoordinator` (the caller's retry finds it anew).
    pub async fn group_call(&self, group: &str, body: RequestBodyT) -> Result<ResponseBodyT> {
        let Some(address) = self.coordinator(group).await? else {
            return self.call(body).await;
        };
        let answer = match self.connection(address).await {
            Ok(connection) => self.call_on(&connection, body).await,
            Err(error) => Err(error),
        };
        let lost = answer.as_ref().is_err_and(|error| {
            error.is_unreachable() || error.code() == Some(ErrorCode::NotCoordinator)
        });
        if lost {
            self.inner.coordinators.borrow_mut().remove(group);
        }
        answer
    }

    /// The broker coordinating `group`, or `None` where the bootstrap broker does.
    async fn coordinator(&self, group: &str) -> Result<Option<SocketAddr>> {
        if let Some(known) = self.inner.coordinators.borrow().get(group) {
            return Ok(*known);
        }
        let body = RequestBodyT::FindCoordinatorRequest(Box::new(wire::FindCoordinatorRequestT {
            key: Some(group.to_string()),
            ..Default::default()
        }));
        let ResponseBodyT::FindCoordinatorResponse(found) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("find coordinator".into()));
        };
        // Broker id 0 is a single broker: the one bootstrapped on coordinates every group.
        let address = match (found.broker_id, found.host.as_deref()) {
            (id, Some(host)) if id > 0 => Some(resolve(&format!("{host}:{}", found.port))?),
            _ => None,
        };
        self.inner.coordinators.borrow_mut().insert(group.to_string(), address);
        Ok(address)
    }

    /// [`call`](Client::call) with its own timeout.
    async fn call_within(&self, body: RequestBodyT, timeout: Duration) -> Result<ResponseBodyT> {
        let connection = self.bootstrap_connection().await?;
        let frame = self.roundtrip_within(&connection, body, timeout).await?;
        body_of(&frame)
    }

    async fn call_on(&self, connection: &Connection, body: RequestBodyT) -> Result<ResponseBodyT> {
        let frame = self.roundtrip(connection, body).await?;
        body_of(&frame)
    }

    async fn roundtrip(&self, connection: &Connection, body: RequestBodyT) -> Result<Frame> {
        self.roundtrip_within(connection, body, self.inner.config.request_timeout).await
    }

    async fn roundtrip_within(
        &self,
        connection: &Connection,
        body: RequestBodyT,
        timeout: Duration,
    ) -> Result<Frame> {
        let correlation_id = connection.next_correlation_id();
        let request = RequestT {
            correlation_id,
            client_id: Some(self.inner.config.client_id.clone()),
            api_version: 0,
            body,
        };
        let frame = codec::encode_request(&request)?;
        connection.request(correlation_id, &frame, timeout).await
    }

    // ---- Metadata ---------------------------------------------------------------------------

    /// Fetches metadata for `topics` (all topics if `None`) and refreshes the cache.
    pub async fn metadata(&self, topics: Option<&[&str]>) -> Result<wire::MetadataResponseT> {
        let body = RequestBodyT::MetadataRequest(Box::new(wire::MetadataRequestT {
            topics: topics.map(|t| t.iter().map(|s| s.to_string()).collect()),
        }));
        // Metadata only reads, so a broker lost mid-request is simply asked of the next
        // bootstrap broker (each at most once).
        let timeout = self.inner.config.request_timeout.min(limits::METADATA_TIMEOUT);
        let mut answer = self.call_within(body.clone(), timeout).await;
        for _ in 1..self.inner.bootstrap.len() {
            match &answer {
                Err(ClientError::ConnectionLost { .. } | ClientError::Timeout(_)) => {
                    let count = self.inner.bootstrap.len();
                    self.inner.current.set((self.inner.current.get() + 1) % count);
                    answer = self.call_within(body.clone(), timeout).await;
                }
                _ => break,
            }
        }
        let ResponseBodyT::MetadataResponse(metadata) = answer? else {
            return Err(ClientError::UnexpectedResponse("metadata".into()));
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let leaders: Vec<(i32, i32)> = metadata
                .topics
                .iter()
                .flatten()
                .flat_map(|t| t.partitions.iter().flatten())
                .map(|p| (p.partition, p.leader_broker))
                .collect();
            tracing::debug!(from = %self.current_bootstrap(), ?leaders, "metadata");
        }
        self.absorb_metadata(&metadata);
        // A broker that knows no leader for a partition may be cut off from the others (it
        // answers, but from a stale view): ask the next bootstrap broker next time, as Kafka's
        // clients spread metadata requests over the cluster.
        let leaderless = metadata
            .topics
            .iter()
            .flatten()
            .flat_map(|t| t.partitions.iter().flatten())
            .any(|p| p.leader_broker < 0);
        if leaderless {
            let count = self.inner.bootstrap.len();
            self.inner.current.set((self.inner.current.get() + 1) % count);
        }
        Ok(*metadata)
    }

    fn absorb_metadata(&self, metadata: &wire::MetadataResponseT) {
        let mut brokers = self.inner.brokers.borrow_mut();
        for broker in metadata.brokers.iter().flatten() {
            if let Some(address) =
                broker.host.as_deref().and_then(|h| resolve(&format!("{h}:{}", broker.port)).ok())
            {
                brokers.insert(broker.broker_id, address);
            }
        }
        let mut topics = self.inner.topics.borrow_mut();
        for topic in metadata.topics.iter().flatten() {
            let Some(name) = topic.name.clone() else { continue };
            if topic.error_code != ErrorCode::None {
                topics.remove(&name);
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .flatten()
                .filter_map(|p| {
                    let shard_address = p
                        .shard_host
                        .as_deref()
                        .filter(|_| self.inner.config.use_shard_addresses && p.shard_port != 0)
                        .and_then(|h| resolve(&format!("{h}:{}", p.shard_port)).ok());
                    let address = shard_address
                        .or_else(|| brokers.get(&p.leader_broker).copied())
                        .unwrap_or_else(|| self.current_bootstrap());
                    Some(PartitionInfo {
                        partition: u32::try_from(p.partition).ok()?,
                        leader_broker: p.leader_broker,
                        shard: p.shard,
                        address,
                    })
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            topics.insert(name, partitions);
        }
    }

    /// The partitions of `topic`, from the cache or a metadata request.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<PartitionInfo>> {
        if let Some(partitions) = self.inner.topics.borrow().get(topic) {
            return Ok(partitions.clone());
        }
        self.metadata(Some(&[topic])).await?;
        self.inner
            .topics
            .borrow()
            .get(topic)
            .cloned()
            .ok_or_else(|| ClientError::UnknownTopic(topic.to_string()))
    }

    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        // The hot path of every send: no clone of the partition list.
        if let Some(partitions) = self.inner.topics.borrow().get(topic) {
            return Ok(partitions.len() as u32);
        }
        Ok(self.partitions(topic).await?.len() as u32)
    }

    /// The topic's partition count if the metadata cache holds it (no wait, no request).
    pub fn cached_partition_count(&self, topic: &str) -> Option<u32> {
        self.inner.topics.borrow().get(topic).map(|partitions| partitions.len() as u32)
    }

    /// Forgets what the cache knows of `topic`; the next call refreshes it.
    pub fn invalidate(&self, topic: &str) {
        self.inner.topics.borrow_mut().remove(topic);
    }

    async fn route(&self, topic: &str, partition: u32) -> Result<SocketAddr> {
        // The hot path of every batch sent: a lookup in the cache, no copy of the partition
        // list (a topic may have thousands of partitions, and a request thousands of batches).
        if let Some(address) = self.cached_route(topic, partition) {
            return Ok(address);
        }
        self.partitions(topic).await?;
        self.cached_route(topic, partition)
            .ok_or(ClientError::UnknownPartition { topic: topic.to_string(), partition })
    }

    fn cached_route(&self, topic: &str, partition: u32) -> Option<SocketAddr> {
        let topics = self.inner.topics.borrow();
        let partitions = topics.get(topic)?;
        // Metadata lists partitions in order, so the index is the partition; search otherwise.
        match partitions.get(partition as usize) {
            Some(p) if p.partition == partition => Some(p.address),
            _ => partitions.iter().find(|p| p.partition == partition).map(|p| p.address),
        }
    }

    /// After a failure to reach an address (refused, lost, no answer in time), forgets the
    /// routes of the topics sent there: in a cluster their partitions may have a new leader
    /// elsewhere, and the next attempt asks the metadata again.
    fn forget_routes<'a>(&self, error: &ClientError, topics: impl Iterator<Item = &'a str>) {
        if error.is_unreachable() {
            for topic in topics {
                self.invalidate(topic);
            }
        }
    }

    fn note_error(&self, topic: &str, code: ErrorCode) {
        if codec::needs_metadata_refresh(code) {
            self.invalidate(topic);
        }
    }

    // ---- Produce / fetch --------------------------------------------------------------------

    /// Sends one batch to one partition. Returns the base offset given to its first record (or
    /// `None` with `acks=none`, which gets no response).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        records: &[u8],
        acks: wire::Acks,
        timeout: Duration,
    ) -> Result<Option<i64>> {
        let batch = PartitionBatch { topic, partition, records };
        self.produce_many(&[batch], acks, timeout).await.pop().expect("one result per batch")
    }

    /// Sends one batch to each of many partitions: one request per owning address holding all
    /// of that address's batches (as Kafka's producer sends one request per broker), within
    /// the request limits, the requests to different addresses in flight at once. Returns each
    /// batch's result in the order given: its base offset, `None` with `acks=none`, or why it
    /// failed (a lost connection fails every batch that request carried).
    pub async fn produce_many(
        &self,
        batches: &[PartitionBatch<'_>],
        acks: wire::Acks,
        timeout: Duration,
    ) -> Vec<Result<Option<i64>>> {
        self.produce_in_turn(batches, acks, timeout, None).await
    }

    /// [`Client::produce_many`], which first waits for `turn` and passes it on once every
    /// request has its place in its connection's write order: calls holding consecutive
    /// tickets reach each broker in ticket order.
    pub(crate) async fn produce_in_turn(
        &self,
        batches: &[PartitionBatch<'_>],
        acks: wire::Acks,
        timeout: Duration,
        turn: Option<spate_protocol::turnstile::Ticket>,
    ) -> Vec<Result<Option<i64>>> {
        if let Some(turn) = &turn {
            turn.wait().await;
        }
        let mut results: Vec<Option<Result<Option<i64>>>> = batches.iter().map(|_| None).collect();
        let mut by_address: Vec<(SocketAddr, Vec<usize>)> = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            match self.route(batch.topic, batch.partition).await {
                Ok(address) => match by_address.iter_mut().find(|(a, _)| *a == address) {
                    Some((_, indices)) => indices.push(i),
                    None => by_address.push((address, vec![i])),
                },
                Err(error) => results[i] = Some(Err(error)),
            }
        }
        let wait = self.inner.config.request_timeout.max(timeout);
        let mut in_flight = Vec::new();
        for (address, indices) in by_address {
            for request in split_produce(batches, &indices) {
                let sent = self.send_produce(address, batches, &request, acks, timeout).await;
                match sent {
                    Ok(None) => request.iter().for_each(|&i| results[i] = Some(Ok(None))),
                    Ok(Some((connection, correlation_id, frame))) => {
                        let answer = glommio::spawn_local(async move {
                            connection.request(correlation_id, &frame, wait).await
                        });
                        in_flight.push((address, request, answer));
                    }
                    Err(error) => {
                        self.forget_routes(&error, request.iter().map(|&i| batches[i].topic));
                        request.iter().for_each(|&i| results[i] = Some(Err(error.clone())))
                    }
                }
            }
        }
        // Every request above has taken its place in its connection's order (a spawned task
        // runs at once, up to its first wait).
        drop(turn);
        // Bounded by the requests sent above.
        for (address, request, answer) in in_flight {
            match answer.await.and_then(|frame| self.produce_results(&frame, batches, &request)) {
                Ok(answers) => {
                    for (i, result) in request.iter().zip(answers) {
                        if let Err(error) = &result {
                            tracing::debug!(%address, topic = batches[*i].topic,
                                partition = batches[*i].partition, %error, "produce refused");
                        }
                        results[*i] = Some(result);
                    }
                }
                Err(error) => {
                    tracing::debug!(%address, %error, batches = request.len(), "produce failed");
                    self.forget_routes(&error, request.iter().map(|&i| batches[i].topic));
                    request.iter().for_each(|&i| results[i] = Some(Err(error.clone())))
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ClientError::UnexpectedResponse("no result".into()))))
            .collect()
    }

    /// Encodes one produce request for `request` (indices into `batches`) and sends it on the
    /// address's connection. Returns what to await the answer with, or `None` for `acks=none`.
    async fn send_produce(
        &self,
        address: SocketAddr,
        batches: &[PartitionBatch<'_>],
        request: &[usize],
        acks: wire::Acks,
        timeout: Duration,
    ) -> Result<Option<(Connection, u32, bytes::BytesMut)>> {
        let connection = self.connection(address).await?;
        let correlation_id = connection.next_correlation_id();
        let mut topics: Vec<(&str, Vec<ProducePartitionInput<'_>>)> = Vec::new();
        for &i in request {
            let batch = &batches[i];
            let input =
                ProducePartitionInput { partition: batch.partition as i32, records: batch.records };
            match topics.iter_mut().find(|(name, _)| *name == batch.topic) {
                Some((_, partitions)) => partitions.push(input),
                None => topics.push((batch.topic, vec![input])),
            }
        }
        let frame = codec::encode_produce(
            correlation_id,
            &self.inner.config.client_id,
            acks,
            timeout.as_millis() as u32,
            &topics,
        )?;
        if acks == wire::Acks::None {
            connection.send(&frame).await?;
            return Ok(None);
        }
        Ok(Some((connection, correlation_id, frame)))
    }

    /// Each batch's result in a produce response, in `request` order.
    fn produce_results(
        &self,
        frame: &Frame,
        batches: &[PartitionBatch<'_>],
        request: &[usize],
    ) -> Result<Vec<Result<Option<i64>>>> {
        let response = codec::decode_response(&frame.header)?;
        if response.error_code() != ErrorCode::None {
            return Err(ClientError::broker(response.error_code(), response.error_message()));
        }
        let produce = response
            .body_as_produce_response()
            .ok_or_else(|| ClientError::UnexpectedResponse("produce".into()))?;
        let mut answers: Vec<(PartitionKey<'_>, Result<Option<i64>>)> = Vec::new();
        for topic in produce.topics().iter().flatten() {
            let name = topic.name().unwrap_or_default();
            for partition in topic.partitions().iter().flatten() {
                let answer = if partition.error_code() == ErrorCode::None {
                    Ok(Some(partition.base_offset()))
                } else {
                    self.note_error(name, partition.error_code());
                    Err(ClientError::broker(partition.error_code(), partition.error_message()))
                };
                answers.push(((name, partition.partition()), answer));
            }
        }
        let key = |i: usize| (batches[i].topic, batches[i].partition as i32);
        // The broker answers in request order (its topics grouped as the request's were):
        // matched by position, without a map of thousands of partitions.
        let in_order = answers.len() == request.len()
            && request.iter().zip(&answers).all(|(&i, (answered, _))| key(i) == *answered);
        if in_order {
            return Ok(answers.into_iter().map(|(_, answer)| answer).collect());
        }
        let mut by_key: HashMap<PartitionKey<'_>, Result<Option<i64>>> =
            answers.into_iter().collect();
        Ok(request
            .iter()
            .map(|&i| {
                by_key.remove(&key(i)).unwrap_or_else(|| {
                    Err(ClientError::UnexpectedResponse(
                        "produce response without the partition".into(),
                    ))
                })
            })
            .collect())
    }

    /// Fetches from several partitions, one request per owning address. Waits up to `max_wait`
    /// for `min_bytes` (long polling).
    pub async fn fetch(
        &self,
        targets: &[FetchTarget],
        max_wait: Duration,
        min_bytes: u32,
        max_bytes: u32,
    ) -> Result<Vec<FetchedPartition>> {
        let mut by_address: HashMap<SocketAddr, Vec<&FetchTarget>> = HashMap::new();
        for target in targets {
            let address = self.route(&target.topic, target.partition).await?;
            by_address.entry(address).or_default().push(target);
        }
        let mut out = Vec::new();
        for (address, targets) in by_address {
            let topics_sent: Vec<&str> = targets.iter().map(|t| t.topic.as_str()).collect();
            let forget = |error: ClientError| {
                self.forget_routes(&error, topics_sent.iter().copied());
                error
            };
            let connection = self.connection(address).await.map_err(forget)?;
            let mut topics: Vec<wire::FetchTopicT> = Vec::new();
            for target in targets {
                let partition = wire::FetchPartitionT {
                    partition: target.partition as i32,
                    fetch_offset: target.offset,
                    max_bytes: target.max_bytes as i32,
                };
                match topics.iter_mut().find(|t| t.name.as_deref() == Some(target.topic.as_str())) {
                    Some(topic) => topic.partitions.get_or_insert_with(Vec::new).push(partition),
                    None => topics.push(wire::FetchTopicT {
                        name: Some(target.topic.clone()),
                        partitions: Some(vec![partition]),
                    }),
                }
            }
            let body = RequestBodyT::FetchRequest(Box::new(wire::FetchRequestT {
                max_wait_ms: max_wait.as_millis() as u32,
                min_bytes: min_bytes as i32,
                max_bytes: max_bytes as i32,
                topics: Some(topics),
            }));
            let frame = self.roundtrip(&connection, body).await.map_err(forget)?;
            out.extend(self.split_fetch(frame)?);
        }
        Ok(out)
    }

    fn split_fetch(&self, frame: Frame) -> Result<Vec<FetchedPartition>> {
        let response = codec::decode_response(&frame.header)?;
        if response.error_code() != ErrorCode::None {
            return Err(ClientError::broker(response.error_code(), response.error_message()));
        }
        let fetch = response
            .body_as_fetch_response()
            .ok_or_else(|| ClientError::UnexpectedResponse("fetch".into()))?;
        codec::fetch_payload_sizes(&fetch, frame.payload.len())?;
        let mut payload = frame.payload.freeze();
        let mut out = Vec::new();
        for topic in fetch.topics().iter().flatten() {
            let name = topic.name().unwrap_or_default().to_string();
            for partition in topic.partitions().iter().flatten() {
                let records = payload.split_to(partition.records_bytes() as usize);
                let error = (partition.error_code() != ErrorCode::None).then(|| {
                    self.note_error(&name, partition.error_code());
                    ClientError::broker(partition.error_code(), partition.error_message())
                });
                out.push(FetchedPartition {
                    topic: name.clone(),
                    partition: partition.partition() as u32,
                    error,
                    high_watermark: partition.high_watermark(),
                    log_start_offset: partition.log_start_offset(),
                    records,
                });
            }
        }
        Ok(out)
    }

    /// Offset lookup: [`LATEST`], [`EARLIEST`], or the first offset at or after a timestamp
    /// (ms). `None` when a timestamp matches no record. A lookup only reads, so a retriable
    /// error (a leader moving, an election) is retried after a metadata refresh, a bounded
    /// number of times within the request timeout.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<i64>> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut attempts = 0;
        // Bounded by the attempt limit and the deadline.
        loop {
            attempts += 1;
            match self.list_offset_once(topic, partition, timestamp).await {
                Err(error)
                    if error.is_retriable()
                        && attempts < limits::LOOKUP_ATTEMPTS_MAX
                        && Instant::now() + limits::LOOKUP_RETRY_BACKOFF < deadline =>
                {
                    glommio::timer::sleep(limits::LOOKUP_RETRY_BACKOFF).await;
                }
                answer => return answer,
            }
        }
    }

    async fn list_offset_once(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<i64>> {
        let address = self.route(topic, partition).await?;
        let forget = |error: ClientError| {
            self.forget_routes(&error, std::iter::once(topic));
            error
        };
        let connection = self.connection(address).await.map_err(forget)?;
        let body = RequestBodyT::ListOffsetsRequest(Box::new(wire::ListOffsetsRequestT {
            topics: Some(vec![wire::ListOffsetsTopicT {
                name: Some(topic.to_string()),
                partitions: Some(vec![wire::ListOffsetsPartitionT {
                    partition: partition as i32,
                    timestamp,
                }]),
            }]),
        }));
        let ResponseBodyT::ListOffsetsResponse(response) =
            self.call_on(&connection, body).await.map_err(forget)?
        else {
            return Err(ClientError::UnexpectedResponse("list offsets".into()));
        };
        let result = response
            .topics
            .iter()
            .flatten()
            .flat_map(|t| t.partitions.iter().flatten())
            .find(|p| p.partition == partition as i32)
            .ok_or_else(|| {
                ClientError::UnexpectedResponse("list offsets without the partition".into())
            })?;
        if result.error_code != ErrorCode::None {
            self.note_error(topic, result.error_code);
            return Err(ClientError::broker(result.error_code, result.error_message.as_deref()));
        }
        Ok((result.offset >= 0).then_some(result.offset))
    }

    // ---- Admin ------------------------------------------------------------------------------

    /// Creates a topic with the broker's default replication factor (1 on a single broker).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        self.create_replicated_topic(name, partitions, 0, configs).await
    }

    /// Creates a topic whose partitions each have `replication_factor` replicas in a cluster
    /// (0: the broker's default).
    pub async fn create_replicated_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
        configs: &[(&str, &str)],
    ) -> Result<()> {
        let body = RequestBodyT::CreateTopicsRequest(Box::new(wire::CreateTopicsRequestT {
            topics: Some(vec![wire::CreatableTopicT {
                name: Some(name.to_string()),
                partitions: partitions as i32,
                replication_factor: replication_factor.min(i16::MAX as u16) as i16,
                configs: Some(
                    configs
                        .iter()
                        .map(|(k, v)| wire::ConfigEntryT {
                            name: Some(k.to_string()),
                            value: Some(v.to_string()),
                        })
                        .collect(),
                ),
                ..Default::default()
            }]),
            timeout_ms: self.inner.config.request_timeout.as_millis() as u32,
            validate_only: false,
            forwarded: false,
        }));
        let ResponseBodyT::CreateTopicsResponse(response) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("create topics".into()));
        };
        first_topic_result(response.topics)
    }

    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let body = RequestBodyT::DeleteTopicsRequest(Box::new(wire::DeleteTopicsRequestT {
            names: Some(vec![name.to_string()]),
            timeout_ms: self.inner.config.request_timeout.as_millis() as u32,
            forwarded: false,
        }));
        let ResponseBodyT::DeleteTopicsResponse(response) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("delete topics".into()));
        };
        self.invalidate(name);
        first_topic_result(response.topics)
    }

    /// The topic's configuration as `(name, value, is_default)`.
    pub async fn describe_configs(&self, topic: &str) -> Result<Vec<(String, String, bool)>> {
        let body = RequestBodyT::DescribeConfigsRequest(Box::new(wire::DescribeConfigsRequestT {
            topics: Some(vec![topic.to_string()]),
        }));
        let ResponseBodyT::DescribeConfigsResponse(response) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("describe configs".into()));
        };
        let topic = response
            .topics
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| ClientError::UnexpectedResponse("no topic".into()))?;
        if topic.error_code != ErrorCode::None {
            return Err(ClientError::broker(topic.error_code, topic.error_message.as_deref()));
        }
        Ok(topic
            .configs
            .into_iter()
            .flatten()
            .map(|c| (c.name.unwrap_or_default(), c.value.unwrap_or_default(), c.is_default))
            .collect())
    }

    pub async fn alter_configs(&self, topic: &str, configs: &[(&str, &str)]) -> Result<()> {
        let body = RequestBodyT::AlterConfigsRequest(Box::new(wire::AlterConfigsRequestT {
            topics: Some(vec![wire::TopicConfigUpdateT {
                name: Some(topic.to_string()),
                configs: Some(
                    configs
                        .iter()
                        .map(|(k, v)| wire::ConfigEntryT {
                            name: Some(k.to_string()),
                            value: Some(v.to_string()),
                        })
                        .collect(),
                ),
            }]),
            validate_only: false,
            forwarded: false,
        }));
        let ResponseBodyT::AlterConfigsResponse(response) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("alter configs".into()));
        };
        first_topic_result(response.topics)
    }

    // ---- Committed offsets ------------------------------------------------------------------

    /// Commits `offsets` (the next offset to consume, per partition) for `group`. Outside group
    /// membership pass `generation = -1` and empty member ids.
    pub async fn commit_offsets(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        offsets: &[(String, u32, i64)],
    ) -> Result<()> {
        let mut topics: Vec<wire::OffsetCommitTopicT> = Vec::new();
        for (topic, partition, offset) in offsets {
            let entry = wire::OffsetCommitPartitionT {
                partition: *partition as i32,
                offset: *offset,
                metadata: None,
            };
            match topics.iter_mut().find(|t| t.name.as_deref() == Some(topic.as_str())) {
                Some(t) => t.partitions.get_or_insert_with(Vec::new).push(entry),
                None => topics.push(wire::OffsetCommitTopicT {
                    name: Some(topic.clone()),
                    partitions: Some(vec![entry]),
                }),
            }
        }
        let body = RequestBodyT::OffsetCommitRequest(Box::new(wire::OffsetCommitRequestT {
            group_id: Some(group.to_string()),
            generation_id: generation,
            member_id: Some(member_id.to_string()),
            group_instance_id: None,
            topics: Some(topics),
        }));
        let ResponseBodyT::OffsetCommitResponse(response) = self.group_call(group, body).await?
        else {
            return Err(ClientError::UnexpectedResponse("offset commit".into()));
        };
        for topic in response.topics.into_iter().flatten() {
            for partition in topic.partitions.into_iter().flatten() {
                if partition.error_code != ErrorCode::None {
                    return Err(ClientError::broker(
                        partition.error_code,
                        partition.error_message.as_deref(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Committed offsets of `group` for `topic` (all its partitions); `None` where nothing is
    /// committed.
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(u32, Option<i64>)>> {
        let body = RequestBodyT::OffsetFetchRequest(Box::new(wire::OffsetFetchRequestT {
            group_id: Some(group.to_string()),
            topics: Some(vec![wire::OffsetFetchTopicT {
                name: Some(topic.to_string()),
                partitions: None,
            }]),
        }));
        let ResponseBodyT::OffsetFetchResponse(response) = self.group_call(group, body).await?
        else {
            return Err(ClientError::UnexpectedResponse("offset fetch".into()));
        };
        let mut out = Vec::new();
        for topic in response.topics.into_iter().flatten() {
            for partition in topic.partitions.into_iter().flatten() {
                if partition.error_code != ErrorCode::None {
                    return Err(ClientError::broker(partition.error_code, None));
                }
                out.push((
                    partition.partition as u32,
                    (partition.offset >= 0).then_some(partition.offset),
                ));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Every committed offset of `group`: (topic, partition, offset).
    pub async fn group_offsets(&self, group: &str) -> Result<Vec<(String, u32, i64)>> {
        let body = RequestBodyT::OffsetFetchRequest(Box::new(wire::OffsetFetchRequestT {
            group_id: Some(group.to_string()),
            topics: None,
        }));
        let ResponseBodyT::OffsetFetchResponse(response) = self.group_call(group, body).await?
        else {
            return Err(ClientError::UnexpectedResponse("offset fetch".into()));
        };
        let mut out = Vec::new();
        for topic in response.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            for partition in topic.partitions.into_iter().flatten().filter(|p| p.offset >= 0) {
                out.push((name.clone(), partition.partition as u32, partition.offset));
            }
        }
        out.sort();
        Ok(out)
    }

    // ---- Idempotent producers -----------------------------------------------------------------

    /// Gets an idempotent producer's id and epoch. With a `name` the broker has seen before, the
    /// same id with a newer epoch, which fences whoever held it.
    pub async fn init_producer_id(&self, name: Option<&str>) -> Result<(i64, i16)> {
        let body = RequestBodyT::InitProducerIdRequest(Box::new(wire::InitProducerIdRequestT {
            producer_name: name.map(str::to_string),
        }));
        let ResponseBodyT::InitProducerIdResponse(response) = self.call(body).await? else {
            return Err(ClientError::UnexpectedResponse("init producer id".into()));
        };
        if response.producer_id < 0 || response.producer_epoch < 0 {
            return Err(ClientError::UnexpectedResponse("no producer id".into()));
        }
        Ok((response.producer_id, response.producer_epoch))
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner.connections.borrow_mut().clear();
    }
}

fn first_topic_result(results: Option<Vec<wire::TopicResultT>>) -> Result<()> {
    let result = results
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| ClientError::UnexpectedResponse("no topic result".into()))?;
    if result.error_code != ErrorCode::None {
        return Err(ClientError::broker(result.error_code, result.error_message.as_deref()));
    }
    Ok(())
}

/// A response's body, or the error its envelope carries.
fn body_of(frame: &Frame) -> Result<ResponseBodyT> {
    let response = codec::decode_response(&frame.header)?.unpack();
    if response.error_code != ErrorCode::None {
        return Err(ClientError::broker(response.error_code, response.error_message.as_deref()));
    }
    Ok(response.body)
}

fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .map_err(|e| ClientError::Connect { address: address.to_string(), message: e.to_string() })?
        .next()
        .ok_or_else(|| ClientError::Connect {
            address: address.to_string(),
            message: "no address".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_at_most_one_batch_per_partition_and_keeps_their_order() {
        let batch = |topic, partition| PartitionBatch { topic, partition, records: &[0u8; 10] };
        let batches = [
            batch("a", 0),
            batch("a", 0),
            batch("a", 1),
            batch("a", 0),
            batch("b", 0),
            batch("a", 1),
        ];
        let requests = split_produce(&batches, &[0, 1, 2, 3, 4, 5]);
        assert_eq!(requests, vec![vec![0, 2, 4], vec![1, 5], vec![3]]);
        // Within the limits: a full request starts a new one in the same layer.
        let big = vec![0u8; limits::PRODUCE_REQUEST_BYTES_MAX / 2 + 1];
        let large = |partition| PartitionBatch { topic: "a", partition, records: &big };
        let batches = [large(0), large(1), large(2)];
        assert_eq!(split_produce(&batches, &[0, 1, 2]), vec![vec![0], vec![1], vec![2]]);
    }
}
