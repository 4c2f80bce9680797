//! The producer: `send` picks a partition and adds the record to the accumulator; a driver task
//! closes batches by size or linger and sends them, at most `max_in_flight_per_partition` per
//! partition; each record gets a delivery report with its partition and offset.
//!
//! Retries: a batch that fails with a retriable error (stale metadata, timeout, lost connection,
//! busy broker, full disk) is retried after `retry_backoff`, up to `retries` times, ahead of the
//! later batches of its partition (which wait until it is back), and never past its delivery
//! timeout (`delivery_timeout`, counted from when the batch was opened, as Kafka's
//! `delivery.timeout.ms`): a batch still unacknowledged then fails with `DeliveryTimeout`, naming
//! the last error it saw. An error that cannot succeed on retry (a record too large, a corrupt
//! batch, a storage error) fails the batch at once.
//!
//! Idempotence (the default, as in Kafka): before its first record the producer gets an id and
//! epoch from the broker (`InitProducerId`, under `producer_name` if set), and stamps each batch
//! with them and a per-partition sequence number kept across retries. The broker writes a batch
//! once and answers a retry of it with the original offsets, so up to 5 batches may be in flight
//! per partition with retries on: when one fails, the ones after it come back refused as out of
//! order (or fail themselves) and are re-sent after it, in order. A batch the broker refused for
//! good (a full disk with no retries left, say) wrote nothing, so the batches after it take over
//! its sequence numbers. `ProducerFenced` (another producer took over the name) fails the
//! producer for good, as does `OutOfOrderSequence` with no earlier batch outstanding: the
//! partition lost batches it had acknowledged, or a batch failed without an answer (its delivery
//! timed out) and did not land; Kafka bumps the epoch there, this producer does not yet. Without
//! idempotence, retries need one batch in flight per partition, and a retried batch whose first
//! attempt did land is written twice (at-least-once).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use spate_protocol::batch::{Header, NewRecord};
use spate_protocol::wire::{Acks, ErrorCode};

use crate::accumulator::{
    AccumulateError, Accumulator, ClosedBatch, ProducerIdentity, TopicPartition,
};
use crate::client::{Client, PartitionBatch};
use crate::error::{ClientError, Result};
use crate::limits;
use crate::partitioner::{DefaultPartitioner, Partitioner};

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// Close a partition's batch once it holds this many bytes. Default 256 KiB: measured on
    /// the 2-core box (`spate-loadgen produce --batch-bytes B`, two alternating runs each),
    /// 1 KiB messages at 16 / 64 / 256 / 1024 KiB gave 163–198 / 335–382 / 503–547 / 369–516
    /// MB/s, 100-byte messages 93–122 / 162–164 / 203–204 / 203–204 MB/s; request p99 2–4 ms
    /// at 256 KiB against 9–35 ms at 1 MiB. At low rates `linger` closes batches long before.
    pub batch_bytes: usize,
    /// Close a partition's batch this long after its first record, full or not.
    pub linger: Duration,
    /// Sends of one batch after its first; the delivery timeout bounds them too. Kafka's
    /// default is unlimited; so is ours ([`u32::MAX`]): the delivery timeout decides.
    pub retries: u32,
    /// The first retry's wait; each further retry of a batch waits twice as long, up to
    /// `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Longest a record may wait for its acknowledgement, retries included (Kafka's
    /// `delivery.timeout.ms`); then its delivery fails. At least `request_timeout`.
    pub delivery_timeout: Duration,
    /// Batches in flight per partition: at most 5 with idempotence; without it, more than 1
    /// requires `retries = 0` (ordering).
    pub max_in_flight_per_partition: usize,
    /// Idempotent producer (the default): each batch is written once, whatever the retries, and
    /// a partition keeps its order with several batches in flight. Needs acks other than none.
    pub enable_idempotence: bool,
    /// A stable name for an idempotent producer (Kafka's `transactional.id`, without
    /// transactions): a producer started again under the same name gets the same id with a newer
    /// epoch, which fences the old one (its batches fail with `ProducerFenced`).
    pub producer_name: Option<String>,
    /// Broker-side timeout for acks=all.
    pub request_timeout: Duration,
    /// Bytes of unsent records buffered before `send` waits.
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(120),
            max_in_flight_per_partition: limits::IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX,
            enable_idempotence: true,
            producer_name: None,
            request_timeout: Duration::from_secs(30),
            buffer_bytes: 64 * 1024 * 1024,
        }
    }
}

impl ProducerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |message: &str| Err(ClientError::Config(message.to_string()));
        if self.max_in_flight_per_partition == 0
            || self.max_in_flight_per_partition > limits::IN_FLIGHT_PER_PARTITION_MAX
        {
            return bad("max_in_flight_per_partition must be between 1 and 16");
        }
        if self.enable_idempotence {
            if self.max_in_flight_per_partition > limits::IDEMPOTENT_IN_FLIGHT_PER_PARTITION_MAX {
                return bad("an idempotent producer keeps at most 5 batches in flight per partition (what the broker remembers)");
            }
            if self.acks == Acks::None {
                return bad("idempotence needs acks (leader or all); turn it off for acks=none");
            }
            if self
                .producer_name
                .as_ref()
                .is_some_and(|n| n.len() > limits::PRODUCER_NAME_BYTES_MAX)
            {
                return bad("producer_name is too long");
            }
        } else if self.max_in_flight_per_partition > 1 && self.retries > 0 {
            return bad("without idempotence, retries need max_in_flight_per_partition = 1, or a retry could reorder or duplicate");
        }
        if self.delivery_timeout < self.request_timeout
            || self.delivery_timeout > limits::DELIVERY_TIMEOUT_MAX
        {
            return bad("delivery_timeout must be at least request_timeout and at most 1 hour");
        }
        if self.retry_backoff_max < self.retry_backoff
            || self.retry_backoff_max > limits::RETRY_BACKOFF_MAX
        {
            return bad("retry_backoff_max must be at least retry_backoff and at most 1 minute");
        }
        if self.buffer_bytes > limits::PRODUCER_BUFFER_BYTES_MAX
            || self.buffer_bytes < self.batch_bytes
        {
            return bad("buffer_bytes must be at least batch_bytes and at most 256 MiB");
        }
        if self.batch_bytes > limits::PRODUCER_BATCH_BYTES_MAX {
            return bad("batch_bytes must be at most 4 MiB");
        }
        Ok(())
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    /// Shared, not copied, per record: a sender of many records clones one `Arc`.
    pub topic: std::sync::Arc<str>,
    /// Explicit partition; otherwise the partitioner chooses (by key, or sticky when unkeyed).
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch; now if absent.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<std::sync::Arc<str>>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord { topic: topic.into(), value: Some(value.into()), ..Default::default() }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    pub fn with_header(
        mut self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
    ) -> ProducerRecord {
        self.headers.push((key.into(), Some(value.into())));
        self
    }
}

/// Where a record landed. `offset` is -1 with `acks=none`, which gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub partition: u32,
    pub offset: i64,
    /// Sends of the record's batch it took: above 1, an earlier attempt may also have been
    /// written (without idempotence, a duplicate).
    pub attempts: u32,
    /// When the producer received the acknowledgement (read once per batch, so a caller
    /// measuring latency per record need not read the clock per record).
    pub acknowledged_at: Instant,
}

/// Resolves once the record is acknowledged or has failed for good.
pub struct Delivery {
    partition: u32,
    reply: oneshot::Receiver<Result<DeliveryReport>>,
}

impl Delivery {
    /// The partition the record was sent to (known before it is acknowledged, and also when
    /// the delivery fails).
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl std::future::Future for Delivery {
    type Output = Result<DeliveryReport>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.reply).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// Called with each error that a batch will be retried after (see [`Producer::on_retry`]).
pub type RetryObserver = Box<dyn Fn(&TopicPartition, &ClientError)>;

/// Called with the time each send round took and the batches it carried (see
/// [`Producer::on_request`]).
pub type RequestObserver = Box<dyn Fn(Duration, usize)>;

/// Called with the tag and outcome of each record sent with [`Producer::send_tagged`] (see
/// [`Producer::on_delivery`]).
pub type DeliveryObserver = Box<dyn Fn(u64, Result<DeliveryReport>)>;

/// How a record's outcome reaches its sender: a [`Delivery`] future, or a callback run by the
/// producer's driver (no channel, no task: what a load generator sending millions wants).
enum Reply {
    Channel(oneshot::Sender<Result<DeliveryReport>>),
    Callback(Box<dyn FnOnce(Result<DeliveryReport>)>),
    /// To the producer's delivery observer, with the sender's tag (no allocation).
    Tag(u64),
}

impl Reply {
    fn send(self, inner: &Inner, outcome: Result<DeliveryReport>) {
        match self {
            Reply::Channel(sender) => {
                let _ = sender.send(outcome);
            }
            Reply::Callback(callback) => callback(outcome),
            Reply::Tag(tag) => {
                if let Some(observer) = inner.on_delivery.borrow().as_ref() {
                    observer(tag, outcome);
                }
            }
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Channel(_) => "Reply::Channel",
            Reply::Callback(_) => "Reply::Callback",
            Reply::Tag(_) => "Reply::Tag",
        })
    }
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    accumulator: RefCell<Accumulator<Reply>>,
    partitioner: RefCell<Box<dyn Partitioner>>,
    wake: LocalSender<()>,
    /// Completed when the accumulator next becomes idle.
    idle_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    /// Woken when buffered bytes drop (backpressure).
    space_waiters: RefCell<Vec<oneshot::Sender<()>>>,
    closed: Cell<bool>,
    /// When the driver last looked for batches past their delivery timeout.
    overdue_checked: Cell<Instant>,
    /// Sends go out in the order the driver drained their batches.
    sends: spate_protocol::turnstile::Turnstile,
    driver: RefCell<Option<glommio::Task<()>>>,
    on_retry: RefCell<Option<RetryObserver>>,
    on_request: RefCell<Option<RequestObserver>>,
    on_delivery: RefCell<Option<DeliveryObserver>>,
    wall_clock: WallClock,
    /// Serializes the idempotent producer's `InitProducerId` (first send only).
    init_lock: glommio::sync::Semaphore,
    /// Set when the producer failed for good (fenced, or a partition lost acknowledged
    /// batches): every queued and later record fails with it.
    fatal: RefCell<Option<ClientError>>,
}

#[derive(Clone)]
pub struct Producer {
    inner: Rc<Inner>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer> {
        Producer::with_partitioner(client, config, Box::new(DefaultPartitioner::default()))
    }

    pub fn with_partitioner(
        client: Client,
        config: ProducerConfig,
        partitioner: Box<dyn Partitioner>,
    ) -> Result<Producer> {
        config.validate()?;
        let (wake, wakeups) = local_channel::new_bounded(1);
        let inner = Rc::new(Inner {
            client,
            accumulator: RefCell::new(Accumulator::new(config.batch_bytes, config.linger)),
            config,
            partitioner: RefCell::new(partitioner),
            wake,
            idle_waiters: RefCell::new(Vec::new()),
            space_waiters: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            overdue_checked: Cell::new(Instant::now()),
            sends: spate_protocol::turnstile::Turnstile::default(),
            driver: RefCell::new(None),
            on_retry: RefCell::new(None),
            on_request: RefCell::new(None),
            on_delivery: RefCell::new(None),
            wall_clock: WallClock::new(),
            init_lock: glommio::sync::Semaphore::new(1),
            fatal: RefCell::new(None),
        });
        let driver = glommio::spawn_local(drive(Rc::downgrade(&inner), wakeups));
        *inner.driver.borrow_mut() = Some(driver);
        Ok(Producer { inner })
    }

    /// Calls `observer` with every error a batch is about to be retried after, so that an
    /// application can report a problem (a full disk, an unreachable broker) while the producer
    /// keeps retrying within the delivery timeout.
    pub fn on_retry(&self, observer: impl Fn(&TopicPartition, &ClientError) + 'static) {
        *self.inner.on_retry.borrow_mut() = Some(Box::new(observer));
    }

    /// Calls `observer` once per send round with how long it took and how many batches it
    /// carried: from the moment the batches left the buffer (were drained for sending) to the
    /// broker's answer to all of them, one request per broker shard they go to. This is the
    /// per-request latency, beside the per-record one that includes time spent in the buffer.
    pub fn on_request(&self, observer: impl Fn(Duration, usize) + 'static) {
        *self.inner.on_request.borrow_mut() = Some(Box::new(observer));
    }

    /// Calls `observer` with the tag and outcome of every record sent with
    /// [`send_tagged`](Producer::send_tagged) (as a Kafka producer interceptor's
    /// `onAcknowledgement`). It runs on the producer's driver task: keep it short, and do not
    /// set another observer from inside it. Outcomes of tagged records sent while no observer
    /// is set are dropped.
    pub fn on_delivery(&self, observer: impl Fn(u64, Result<DeliveryReport>) + 'static) {
        *self.inner.on_delivery.borrow_mut() = Some(Box::new(observer));
    }

    /// The topic's partition count, from the cache or the metadata; a retriable failure to get
    /// it (a broker lost, a leader moving) is retried with backoff for up to the request
    /// timeout, as Kafka's `send` blocks up to `max.block.ms` for metadata.
    async fn partition_count(&self, topic: &str) -> Result<u32> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let mut attempts = 0;
        loop {
            match self.inner.client.partition_count(topic).await {
                Err(error)
                    if error.is_retriable()
                        && !matches!(error, ClientError::UnknownTopic(_))
                        && Instant::now() < deadline =>
                {
                    attempts += 1;
                    glommio::timer::sleep(retry_backoff(&self.inner.config, attempts)).await;
                }
                answer => return answer,
            }
        }
    }

    /// Queues a record. Returns once it is buffered (waiting while the buffer is full); the
    /// returned [`Delivery`] resolves when it is acknowledged.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery> {
        let (reply, delivery) = oneshot::channel();
        let partition = self.enqueue(record, Reply::Channel(reply)).await?;
        Ok(Delivery { partition, reply: delivery })
    }

    /// Queues a record as [`Producer::send`] does, and has the producer call `on_delivery` with
    /// its outcome (as Kafka's `send(record, callback)`): no future to poll and no channel per
    /// record. Returns the record's partition once it is buffered. The callback runs on the
    /// producer's driver task: keep it short and do not block in it.
    pub async fn send_with(
        &self,
        record: ProducerRecord,
        on_delivery: impl FnOnce(Result<DeliveryReport>) + 'static,
    ) -> Result<u32> {
        self.enqueue(record, Reply::Callback(Box::new(on_delivery))).await
    }

    /// Queues a record as [`Producer::send`] does; its outcome goes to the producer's delivery
    /// observer (see [`on_delivery`](Producer::on_delivery)) with `tag`, whatever the caller
    /// wants to know about it then (a load generator packs its send time and size). Nothing is
    /// allocated per record: no callback, channel or future.
    pub async fn send_tagged(&self, record: ProducerRecord, tag: u64) -> Result<u32> {
        self.enqueue(record, Reply::Tag(tag)).await
    }

    /// Buffers `record` with where its outcome goes; returns its partition. Most sends need no
    /// wait (the producer's identity known, the topic's partition count cached, room in the
    /// buffer) and are buffered right here; only the others take the asynchronous path, boxed,
    /// so that the common case neither builds nor moves that path's large future (moving it
    /// was a tenth of a load generator's CPU at a million records a second).
    async fn enqueue(&self, record: ProducerRecord, reply: Reply) -> Result<u32> {
        match self.enqueue_now(record, reply) {
            Ok(outcome) => outcome,
            Err((record, reply)) => Box::pin(self.enqueue_waiting(record, reply)).await,
        }
    }

    /// Buffers `record` if that needs no wait; otherwise gives it back. Never overtakes a send
    /// waiting for room.
    #[allow(clippy::result_large_err)]
    fn enqueue_now(
        &self,
        record: ProducerRecord,
        reply: Reply,
    ) -> std::result::Result<Result<u32>, (ProducerRecord, Reply)> {
        if let Err(error) = self.usable() {
            return Ok(Err(error));
        }
        let ready = !(self.inner.config.enable_idempotence && self.identity().is_none())
            && self.inner.space_waiters.borrow().is_empty()
            && self.inner.accumulator.borrow().buffered_bytes() < self.inner.config.buffer_bytes;
        let count =
            if ready { self.inner.client.cached_partition_count(&record.topic) } else { None };
        let Some(count) = count else { return Err((record, reply)) };
        Ok(self.choose_partition(&record, count).and_then(|p| self.buffer(record, p, reply)))
    }

    /// The path of a send that waits: for the producer's identity, the topic's metadata, or
    /// room in the buffer.
    async fn enqueue_waiting(&self, record: ProducerRecord, reply: Reply) -> Result<u32> {
        self.usable()?;
        if self.inner.config.enable_idempotence && self.identity().is_none() {
            self.init_identity().await?;
        }
        let partition_count = self.partition_count(&record.topic).await?;
        let partition = self.choose_partition(&record, partition_count)?;
        // Backpressure, bounded by the request timeout.
        let mut deadline = None;
        while self.inner.accumulator.borrow().buffered_bytes() >= self.inner.config.buffer_bytes {
            let deadline =
                *deadline.get_or_insert_with(|| Instant::now() + self.inner.config.request_timeout);
            let (tx, rx) = oneshot::channel();
            self.inner.space_waiters.borrow_mut().push(tx);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if glommio::timer::timeout(remaining, async { Ok(rx.await) }).await.is_err() {
                return Err(ClientError::Timeout(
                    self.inner.config.request_timeout.as_millis() as u64
                ));
            }
        }
        self.buffer(record, partition, reply)
    }

    /// Fails if the producer is closed or failed for good.
    fn usable(&self) -> Result<()> {
        if self.inner.closed.get() {
            return Err(ClientError::Closed);
        }
        match self.inner.fatal.borrow().as_ref() {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// The record's partition: its own, or the partitioner's choice.
    fn choose_partition(&self, record: &ProducerRecord, partition_count: u32) -> Result<u32> {
        if partition_count == 0 {
            return Err(ClientError::UnknownTopic(record.topic.to_string()));
        }
        match record.partition {
            Some(p) if p < partition_count => Ok(p),
            Some(p) => {
                Err(ClientError::UnknownPartition { topic: record.topic.to_string(), partition: p })
            }
            None => Ok(self
                .inner
                .partitioner
                .borrow_mut()
                .partition(record.key.as_deref(), partition_count)),
        }
    }

    /// Appends the record to its partition's open batch and wakes the driver.
    fn buffer(&self, record: ProducerRecord, partition: u32, reply: Reply) -> Result<u32> {
        let now = Instant::now();
        let new_record = NewRecord {
            key: record.key,
            value: record.value,
            headers: record.headers.into_iter().map(|(key, value)| Header { key, value }).collect(),
            timestamp: record.timestamp.unwrap_or_else(|| self.inner.wall_clock.ms_at(now)),
        };
        let target = TopicPartition { topic: record.topic, partition };
        let closed =
            self.inner
                .accumulator
                .borrow_mut()
                .append(&target, &new_record, reply, now)
                .map_err(|AccumulateError::RecordTooLarge(n)| ClientError::RecordTooLarge(n))?;
        if closed {
            self.inner.partitioner.borrow_mut().on_batch_closed(partition);
        }
        let _ = self.inner.wake.try_send(());
        Ok(partition)
    }

    /// The idempotent producer's id and epoch, once it has them (after its first send).
    pub fn identity(&self) -> Option<ProducerIdentity> {
        self.inner.accumulator.borrow().identity()
    }

    /// Gets the idempotent producer's id and epoch now, rather than at the first send (which
    /// otherwise does it): a named producer fences its previous instance here, and the first
    /// send then does not wait for it. Does nothing without idempotence or when done already.
    pub async fn init(&self) -> Result<()> {
        if self.inner.config.enable_idempotence && self.identity().is_none() {
            self.init_identity().await?;
        }
        Ok(())
    }

    /// Gets an id and epoch from the broker, retrying retriable errors a bounded number of
    /// times within the request timeout.
    async fn init_identity(&self) -> Result<()> {
        let _permit =
            self.inner.init_lock.acquire_permit(1).await.map_err(|_| ClientError::Closed)?;
        if self.identity().is_some() {
            return Ok(());
        }
        let config = &self.inner.config;
        let deadline = Instant::now() + config.request_timeout;
        let mut attempts = 0;
        // Bounded by the attempt limit and the deadline.
        let (id, epoch) = loop {
            attempts += 1;
            match self.inner.client.init_producer_id(config.producer_name.as_deref()).await {
                Ok(identity) => break identity,
                Err(error)
                    if error.is_retriable()
                        && attempts < limits::INIT_PRODUCER_ID_ATTEMPTS_MAX
                        && Instant::now() + retry_backoff(config, attempts) < deadline =>
                {
                    tracing::debug!(%error, attempts, "InitProducerId failed; retrying");
                    glommio::timer::sleep(retry_backoff(config, attempts)).await;
                }
                Err(error) => return Err(error),
            }
        };
        tracing::debug!(id, epoch, name = ?config.producer_name, "idempotent producer initialised");
        self.inner.accumulator.borrow_mut().set_identity(ProducerIdentity { id, epoch });
        Ok(())
    }

    /// Sends everything buffered now and waits until every record sent so far is acknowledged
    /// or failed.
    pub async fn flush(&self) -> Result<()> {
        self.inner.accumulator.borrow_mut().close_all();
        if self.inner.accumulator.borrow().is_idle() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.inner.idle_waiters.borrow_mut().push(tx);
        let _ = self.inner.wake.try_send(());
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Flushes, then stops the driver.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.inner.closed.set(true);
        self.inner.driver.borrow_mut().take();
        flushed
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Record timestamps (wall-clock milliseconds) from the monotonic clock the producer reads
/// anyway: the wall clock is read again at most every [`limits::WALL_CLOCK_REFRESH`], so a
/// record costs one clock read, not two, and a clock step shows within that bound.
struct WallClock {
    base: Cell<(Instant, i64)>,
}

impl WallClock {
    fn new() -> WallClock {
        WallClock { base: Cell::new((Instant::now(), now_ms())) }
    }

    fn ms_at(&self, now: Instant) -> i64 {
        let (instant, ms) = self.base.get();
        let since = now.saturating_duration_since(instant);
        if since >= limits::WALL_CLOCK_REFRESH {
            self.base.set((now, now_ms()));
            return self.base.get().1;
        }
        ms + since.as_millis() as i64
    }
}

/// The driver: closes lingering batches, launches ready ones, and sleeps until woken or until the
/// next linger deadline.
async fn drive(inner: std::rc::Weak<Inner>, wakeups: LocalReceiver<()>) {
    loop {
        let next_deadline = {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            let mut accumulator = inner.accumulator.borrow_mut();
            for target in accumulator.expire(now) {
                inner.partitioner.borrow_mut().on_batch_closed(target.partition);
            }
            let check_due = inner.overdue_checked.get() + limits::DELIVERY_TIMEOUT_CHECK;
            let overdue = if now >= check_due {
                inner.overdue_checked.set(now);
                accumulator.take_overdue(now, inner.config.delivery_timeout)
            } else {
                Vec::new()
            };
            let ready = accumulator.drain_ready(inner.config.max_in_flight_per_partition);
            let mut deadline = accumulator.next_deadline();
            if !accumulator.is_idle() {
                // Back for the next delivery-timeout check while anything is buffered.
                let check = inner.overdue_checked.get() + limits::DELIVERY_TIMEOUT_CHECK;
                deadline = Some(deadline.map_or(check, |d| d.min(check)));
            }
            drop(accumulator);
            let failed_overdue = !overdue.is_empty();
            for batch in overdue {
                let error = delivery_timeout(&inner.config, batch.last_error);
                fail_deliveries(&inner, batch.deliveries, &error);
            }
            if failed_overdue {
                wake_waiters(&inner);
            }
            if !ready.is_empty() {
                // Every ready batch in one go: the client sends one request per broker shard.
                let turn = inner.sends.ticket();
                glommio::spawn_local(send_batches(inner.clone(), ready, turn)).detach();
            }
            deadline
        };
        match next_deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                let woken = async {
                    wakeups.recv().await;
                };
                futures_lite::future::or(woken, glommio::timer::sleep(wait)).await;
            }
            None => {
                if wakeups.recv().await.is_none() {
                    return;
                }
            }
        }
    }
}

/// Sends ready batches of many partitions together (one request per destination shard), then
/// settles each: acknowledged, retried after a backoff, or failed.
async fn send_batches(
    inner: Rc<Inner>,
    batches: Vec<ClosedBatch<Reply>>,
    turn: spate_protocol::turnstile::Ticket,
) {
    let config = &inner.config;
    let drained = Instant::now();
    let results = {
        let parts: Vec<PartitionBatch<'_>> = batches
            .iter()
            .map(|b| PartitionBatch {
                topic: &b.target.topic,
                partition: b.target.partition,
                records: &b.bytes,
            })
            .collect();
        // In drain order: a partition's batches reach its broker in sequence.
        inner.client.produce_in_turn(&parts, config.acks, config.request_timeout, Some(turn)).await
    };
    if let Some(observer) = inner.on_request.borrow().as_ref() {
        observer(drained.elapsed(), batches.len());
    }
    for (batch, result) in batches.into_iter().zip(results) {
        settle(&inner, batch, result);
    }
    wake_waiters(&inner);
    let _ = inner.wake.try_send(());
}

/// Completes one sent batch: its deliveries on success or a final error; back into its queue
/// after a backoff on a retriable error within the delivery timeout.
fn settle(inner: &Rc<Inner>, mut batch: ClosedBatch<Reply>, result: Result<Option<i64>>) {
    let config = &inner.config;
    let error = match result {
        Ok(base_offset) => {
            let acknowledged_at = Instant::now();
            for (i, reply) in std::mem::take(&mut batch.deliveries).into_iter().enumerate() {
                let offset = base_offset.map_or(-1, |base| base + i as i64);
                let report = DeliveryReport {
                    partition: batch.target.partition,
                    offset,
                    attempts: batch.attempts,
                    acknowledged_at,
                };
                reply.send(inner, Ok(report));
            }
            inner.accumulator.borrow_mut().complete(
                &batch.target,
                batch.ordinal,
                batch.record_bytes,
            );
            return;
        }
        Err(error) => error,
    };
    let target = batch.target.clone();
    match error {
        error if inner.fatal.borrow().is_some() => {
            let fatal = inner.fatal.borrow().clone().unwrap_or(error);
            fail_batch(inner, batch, fatal);
        }
        error if is_fatal(inner, &batch, &error) => {
            tracing::error!(topic = %target.topic, partition = target.partition, %error,
                "the idempotent producer failed for good");
            *inner.fatal.borrow_mut() = Some(error.clone());
            fail_batch(inner, batch, error.clone());
            let queued = inner.accumulator.borrow_mut().take_all_queued();
            for batch in queued {
                fail_deliveries(inner, batch.deliveries, &error);
            }
        }
        error if should_retry(inner, &batch, &error) && !inner.closed.get() => {
            let backoff = retry_backoff(config, batch.attempts);
            let retry_at = Instant::now() + backoff;
            if batch.attempts > config.retries {
                fail_batch(inner, batch, error);
            } else if retry_at >= batch.opened_at + config.delivery_timeout {
                fail_batch(inner, batch, delivery_timeout(config, Some(error)));
            } else {
                tracing::debug!(topic = %target.topic, partition = target.partition, attempt = batch.attempts, %error, "retrying batch");
                if let Some(observer) = inner.on_retry.borrow().as_ref() {
                    observer(&target, &error);
                }
                batch.maybe_written |= !refused_for_good(&error);
                batch.last_error = Some(error);
                inner.accumulator.borrow_mut().hold_for_retry(&target);
                let inner = inner.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(backoff).await;
                    inner.accumulator.borrow_mut().retry(batch);
                    let _ = inner.wake.try_send(());
                })
                .detach();
            }
        }
        error => fail_batch(inner, batch, error),
    }
}

/// Errors that end the idempotent producer: another producer took over its id (a zombie must
/// stop), or a partition refuses a sequence while no earlier batch is outstanding (it lost
/// batches it had acknowledged: continuing would hide the loss).
fn is_fatal(inner: &Inner, batch: &ClosedBatch<Reply>, error: &ClientError) -> bool {
    match error.code() {
        Some(ErrorCode::ProducerFenced) => true,
        Some(ErrorCode::OutOfOrderSequence) => {
            let accumulator = inner.accumulator.borrow();
            !accumulator.earlier_unacked(&batch.target, batch.ordinal)
                && !accumulator.sequence_rewinding(&batch.target)
        }
        _ => false,
    }
}

/// Whether the broker's answer says it wrote nothing of the batch: any refusal but a timeout
/// (the append may still complete) or a storage failure (recovery may keep what was written).
/// Client-side failures (lost connection, no answer in time) say nothing.
fn refused_for_good(error: &ClientError) -> bool {
    let error = match error {
        ClientError::DeliveryTimeout { last_error: Some(last), .. } => last,
        other => other,
    };
    error.code().is_some_and(|code| {
        !matches!(code, ErrorCode::RequestTimedOut | ErrorCode::StorageError | ErrorCode::Unknown)
    })
}

/// Whether a failed batch is sent again (within the retry limits). Beyond the retriable
/// errors: an out-of-order refusal while an earlier batch is still outstanding (it lands first
/// on the retry), and an unknown producer (see `Accumulator::unknown_producer`: the sequence
/// may start over).
fn should_retry(inner: &Inner, batch: &ClosedBatch<Reply>, error: &ClientError) -> bool {
    match error.code() {
        Some(ErrorCode::OutOfOrderSequence) => true,
        Some(ErrorCode::UnknownProducerId) => {
            inner.accumulator.borrow_mut().unknown_producer(&batch.target, batch.ordinal);
            true
        }
        _ => error.is_retriable(),
    }
}

/// Exponential backoff: `retry_backoff` after the first attempt, doubling, capped.
fn retry_backoff(config: &ProducerConfig, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    config.retry_backoff.saturating_mul(1 << doublings).min(config.retry_backoff_max)
}

fn delivery_timeout(config: &ProducerConfig, last_error: Option<ClientError>) -> ClientError {
    ClientError::DeliveryTimeout {
        ms: config.delivery_timeout.as_millis() as u64,
        last_error: last_error.map(Box::new),
    }
}

/// Fails every record of an in-flight `batch` with `error` and releases its buffer space.
fn fail_batch(inner: &Inner, batch: ClosedBatch<Reply>, error: ClientError) {
    // Refused at every attempt: no gap for the broker to see, so the next batches take over
    // its sequence numbers. An earlier attempt that may have been written forbids it: a later
    // batch under those numbers would be taken for a retry of this one and answered with its
    // offsets (the chaos suite found exactly that: a NotLeader after a lost leader's write).
    if sequences_reusable(batch.maybe_written, &error) {
        inner.accumulator.borrow_mut().rewind_sequence(&batch);
    }
    fail_deliveries(inner, batch.deliveries, &error);
    inner.accumulator.borrow_mut().complete(&batch.target, batch.ordinal, batch.record_bytes);
}

/// Whether a batch failing for good with `error` frees its sequence numbers for the next
/// batches: only if the broker refused it and no earlier attempt may have written it.
fn sequences_reusable(maybe_written: bool, error: &ClientError) -> bool {
    refused_for_good(error) && !maybe_written
}

fn fail_deliveries(inner: &Inner, deliveries: Vec<Reply>, error: &ClientError) {
    for reply in deliveries {
        reply.send(inner, Err(error.clone()));
    }
}

/// Buffer space was released: wake senders waiting for it, and flushes if nothing is left.
fn wake_waiters(inner: &Inner) {
    for waiter in inner.space_waiters.borrow_mut().drain(..) {
        let _ = waiter.send(());
    }
    if inner.accumulator.borrow().is_idle() {
        for waiter in inner.idle_waiters.borrow_mut().drain(..) {
            let _ = waiter.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader() -> ClientError {
        ClientError::broker(ErrorCode::NotLeader, Some("no leader yet"))
    }

    #[test]
    fn record_timestamps_follow_the_monotonic_clock_and_reread_the_wall_clock() {
        let clock = WallClock::new();
        let (base, base_ms) = clock.base.get();
        assert_eq!(clock.ms_at(base + Duration::from_millis(30)), base_ms + 30);
        assert_eq!(clock.ms_at(base), base_ms);
        // Past the refresh interval the wall clock is read again and becomes the new base.
        let later = base + limits::WALL_CLOCK_REFRESH + Duration::from_millis(1);
        let before = now_ms();
        let ms = clock.ms_at(later);
        assert!(ms >= before && ms <= now_ms(), "{ms} read from the wall clock");
        assert_eq!(clock.base.get(), (later, ms));
        assert_eq!(clock.ms_at(later + Duration::from_millis(5)), ms + 5);
    }

    #[test]
    fn a_batch_that_may_have_been_written_never_gives_up_its_sequence_numbers() {
        let config = ProducerConfig::default();
        // Refused at every attempt: its numbers go to the next batches.
        assert!(sequences_reusable(false, &not_leader()));
        assert!(sequences_reusable(false, &delivery_timeout(&config, Some(not_leader()))));
        // An earlier attempt went unanswered (or lost its leader before commit): the last
        // attempt's refusal says nothing about that one.
        assert!(!sequences_reusable(true, &delivery_timeout(&config, Some(not_leader()))));
        assert!(!sequences_reusable(true, &not_leader()));
        // Unknown outcomes are never refusals.
        let timed_out = ClientError::broker(ErrorCode::RequestTimedOut, Some("lost leadership"));
        assert!(!refused_for_good(&timed_out));
        assert!(!sequences_reusable(false, &ClientError::Timeout(3000)));
    }
}
