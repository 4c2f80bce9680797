//! The workers: one Glommio executor per core, each running its share of producers and
//! consumers, recording every message's latency in its own histogram.
//!
//! Every value carries, in its first 8 bytes, the microsecond time (since the Unix epoch) the
//! message was *due* (its intended send time when paced), so a consumer computes end-to-end
//! latency as receive time minus that.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use spate_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, Seek, TopicPartition,
};

use crate::keys::{KeyGen, KeySpec, SizeSpec};
use crate::pacer::Pacer;
use crate::stats::{new_histogram, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Produce,
    Consume,
    E2e,
}

/// Everything a worker needs, `Send` so it can go to each core's thread.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub bootstrap: String,
    /// Every request to the bootstrap address (not to each partition's shard).
    pub via_bootstrap: bool,
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    pub consumers: u32,
    pub size: SizeSpec,
    pub keys: KeySpec,
    pub batch_bytes: usize,
    pub linger: Duration,
    pub acks: Acks,
    /// Batches in flight per partition, per producer.
    pub max_in_flight: usize,
    /// Each producer's buffer; 0: 64 batches, between 4 and 64 MiB.
    pub buffer_bytes: usize,
    /// Idempotent producers (retries write nothing twice, order kept with several in flight).
    pub idempotence: bool,
    /// Messages per second over all producers; 0 = as fast as possible.
    pub rate: f64,
    /// Messages to produce in all (produce, e2e) or to read (consume); `None` = until duration.
    pub messages: Option<u64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Messages the consume scenario reads when `messages` is `None`: what the topic holds.
    pub consume_target: u64,
    /// The topic is created with `flush=always` (a peer broker: fsync every batch).
    pub fsync: bool,
}

/// What one worker measured.
pub struct WorkerResult {
    /// Per record: from its due (paced) or send time to its acknowledgement.
    pub produce_latency: Histogram<u64>,
    /// Per produce request: from sending a batch (or a round of them) to the answer.
    pub request_latency: Histogram<u64>,
    pub e2e_latency: Histogram<u64>,
    pub produced: u64,
    pub produced_bytes: u64,
    pub consumed: u64,
    pub consumed_bytes: u64,
    pub errors: u64,
    /// Measured time of this worker (after warmup).
    pub elapsed: Duration,
}

impl WorkerResult {
    /// A worker that measured nothing.
    pub fn empty() -> WorkerResult {
        WorkerResult {
            produce_latency: new_histogram(),
            request_latency: new_histogram(),
            e2e_latency: new_histogram(),
            produced: 0,
            produced_bytes: 0,
            consumed: 0,
            consumed_bytes: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        }
    }
}

/// Runs a peer driver's `future` on a tokio runtime with `threads` workers (the NATS and
/// Iggy clients run on tokio).
#[cfg(any(feature = "nats", feature = "iggy"))]
pub(crate) fn on_tokio<T>(
    threads: usize,
    future: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(future)
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Part `index` of `total` split over `parts` as evenly as possible (the first
/// `total % parts` parts get one more).
pub(crate) fn share_of(total: u64, parts: u32, index: u32) -> u64 {
    let parts = u64::from(parts.max(1));
    total / parts + u64::from(u64::from(index) < total % parts)
}

/// Message values cut from one buffer of [`VALUE_ARENA_BYTES`] at a time, so a message costs
/// no allocation of its own. (The producer copies each value into its batch and drops it; a
/// buffer is freed once every value cut from it is dropped.)
#[derive(Default)]
pub(crate) struct ValueArena {
    buffer: BytesMut,
}

/// The buffer message values are cut from; a larger value gets a buffer of its own size.
pub const VALUE_ARENA_BYTES: usize = 1 << 20;

impl ValueArena {
    /// A message value of `size` bytes (at least 8) whose first 8 bytes carry its due time in
    /// microseconds since the epoch, little-endian; the rest is filler.
    pub(crate) fn value(&mut self, epoch_offset_us: u64, due: Duration, size: usize) -> Bytes {
        let size = size.max(8);
        if self.buffer.capacity() - self.buffer.len() < size {
            self.buffer = BytesMut::with_capacity(VALUE_ARENA_BYTES.max(size));
        }
        self.buffer.put_u64_le(epoch_offset_us + due.as_micros() as u64);
        let filled = self.buffer.len() + size - 8;
        self.buffer.resize(filled, b'x');
        self.buffer.split().freeze()
    }
}

/// The due time a value carries (see [`ValueArena::value`]), if it is long enough.
/// A record's delivery tag: where its latency counts from (µs since the start, low 40 bits:
/// 12 days) and its size (high 24 bits: up to 16 MiB, above the largest batch the broker
/// takes, so any larger record fails before it is counted).
fn tag(from: Duration, size: usize) -> u64 {
    let size = (size as u64).min((1 << 24) - 1);
    (from.as_micros() as u64 & ((1 << 40) - 1)) | (size << 40)
}

fn untag(tag: u64) -> (u64, u64) {
    (tag & ((1 << 40) - 1), tag >> 40)
}

pub(crate) fn due_us(value: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(value.get(..8)?.try_into().ok()?))
}

/// The producers and consumers (global indexes) that run on core `core` of `cores`.
fn share(count: u32, core: usize, cores: usize) -> Vec<u32> {
    (0..count).filter(|i| *i as usize % cores == core).collect()
}

struct Local {
    produce: RefCell<Histogram<u64>>,
    request: RefCell<Histogram<u64>>,
    e2e: RefCell<Histogram<u64>>,
    produced: RefCell<(u64, u64)>,
    consumed: RefCell<(u64, u64)>,
    errors: RefCell<u64>,
}

/// Runs this core's share of the plan. `start` lines all cores up (consumers ready first).
pub async fn worker(
    core: usize,
    cores: usize,
    plan: Plan,
    shared: Arc<Shared>,
    start: Arc<Barrier>,
) -> Result<WorkerResult, String> {
    let config = ClientConfig {
        bootstrap: plan.bootstrap.clone(),
        client_id: format!("spate-loadgen-{core}"),
        use_shard_addresses: !plan.via_bootstrap,
        ..ClientConfig::default()
    };
    let client = Client::connect(config)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", plan.bootstrap))?;
    let local = Rc::new(Local {
        produce: RefCell::new(new_histogram()),
        request: RefCell::new(new_histogram()),
        e2e: RefCell::new(new_histogram()),
        produced: RefCell::new((0, 0)),
        consumed: RefCell::new((0, 0)),
        errors: RefCell::new(0),
    });
    let producers = if plan.scenario == Scenario::Consume {
        Vec::new()
    } else {
        share(plan.producers, core, cores)
    };
    let consumers = if plan.scenario == Scenario::Produce {
        Vec::new()
    } else {
        share(plan.consumers, core, cores)
    };
    let mut consumer_states = Vec::new();
    for index in &consumers {
        consumer_states.push(prepare_consumer(&client, &plan, *index).await?);
    }
    // All consumers are positioned before any producer starts (e2e reads from the end).
    start.wait();
    let started = Instant::now();
    let deadline = started + plan.warmup + plan.duration;
    let mut tasks = Vec::new();
    for index in producers {
        tasks.push(glommio::spawn_local(produce(
            client.clone(),
            plan.clone(),
            index,
            local.clone(),
            shared.clone(),
            started,
            deadline,
        )));
    }
    for consumer in consumer_states {
        tasks.push(glommio::spawn_local(consume(
            consumer,
            plan.clone(),
            local.clone(),
            shared.clone(),
            started,
            deadline,
        )));
    }
    let reporter = glommio::spawn_local(report(core, local.clone(), shared.clone()));
    for task in tasks {
        task.await?;
    }
    drop(reporter);
    let elapsed = started.elapsed().saturating_sub(plan.warmup);
    let produce = local.produce.borrow().clone();
    let request = local.request.borrow().clone();
    let e2e = local.e2e.borrow().clone();
    let (produced, produced_bytes) = *local.produced.borrow();
    let (consumed, consumed_bytes) = *local.consumed.borrow();
    let errors = *local.errors.borrow();
    Ok(WorkerResult {
        produce_latency: produce,
        request_latency: request,
        e2e_latency: e2e,
        produced,
        produced_bytes,
        consumed,
        consumed_bytes,
        errors,
        elapsed,
    })
}

/// Publishes this worker's latency so far for the progress lines (until cancelled).
/// Publishes this core's progress for the progress line: the latency snapshot, and the
/// records its producers had acknowledged (counted locally, so a record costs no atomic add).
async fn report(core: usize, local: Rc<Local>, shared: Arc<Shared>) {
    let mut published = (0u64, 0u64);
    loop {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        let produced = *local.produced.borrow();
        Shared::add(&shared.messages, produced.0 - published.0);
        Shared::add(&shared.bytes, produced.1 - published.1);
        published = produced;
        let mut snapshot = local.produce.borrow().clone();
        let _ = snapshot.add(&*local.e2e.borrow());
        shared.publish(core, snapshot);
    }
}

async fn produce(
    client: Client,
    plan: Plan,
    index: u32,
    local: Rc<Local>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let config = ProducerConfig {
        acks: plan.acks,
        batch_bytes: plan.batch_bytes,
        linger: plan.linger,
        buffer_bytes: match plan.buffer_bytes {
            0 => (plan.batch_bytes * 64).clamp(4 << 20, 64 << 20),
            bytes => bytes,
        },
        max_in_flight_per_partition: plan.max_in_flight,
        enable_idempotence: plan.idempotence,
        // Without idempotence, a retry with several batches in flight could reorder.
        retries: if plan.idempotence || plan.max_in_flight == 1 { u32::MAX } else { 0 },
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).map_err(|e| e.to_string())?;
    let (local_requests, plan_warmup) = (local.clone(), plan.warmup);
    producer.on_request(move |took, _batches| {
        if started.elapsed() >= plan_warmup {
            let _ = local_requests.request.borrow_mut().record(took.as_micros().max(1) as u64);
        }
    });
    let pacer = Pacer::new(plan.rate / f64::from(plan.producers.max(1)));
    let quota = plan.messages.map(|m| share_of(m, plan.producers, index));
    let mut keys = KeyGen::new(plan.keys.clone(), 0x5EED ^ u64::from(index));
    let mut rng = SmallRng::seed_from_u64(u64::from(index) + 1);
    let epoch_offset_us = now_us() - started.elapsed().as_micros() as u64;
    let mut sent = 0u64;
    // Deliveries not recorded yet.
    let recording = Rc::new(std::cell::Cell::new(0u64));
    let run_end = deadline.saturating_duration_since(started);
    let mut values = ValueArena::default();
    // One name for every record: an `Arc` clone per message, not a copy of the string.
    let topic: std::sync::Arc<str> = plan.topic.as_str().into();
    // One observer for every record: each record's tag says where its latency counts from and
    // its size, so nothing is allocated per message.
    let warmup_us = plan.warmup.as_micros() as u64;
    let (local_now, shared_now, recording_now) = (local.clone(), shared.clone(), recording.clone());
    producer.on_delivery(move |tag, outcome| {
        let (from_us, size) = untag(tag);
        match outcome {
            Ok(report) if from_us >= warmup_us => {
                let acked = report.acknowledged_at.saturating_duration_since(started);
                let latency = (acked.as_micros() as u64).saturating_sub(from_us);
                let _ = local_now.produce.borrow_mut().record(latency.max(1));
                let mut produced = local_now.produced.borrow_mut();
                produced.0 += 1;
                produced.1 += size;
            }
            Ok(_) => {}
            Err(_) => {
                *local_now.errors.borrow_mut() += 1;
                Shared::add(&shared_now.errors, 1);
            }
        }
        recording_now.set(recording_now.get() - 1);
    });
    // Bounded by the quota or the deadline. One clock read per message: the acknowledgement
    // time comes with the delivery report, read once per batch.
    loop {
        let mut now = started.elapsed();
        if quota.is_some_and(|q| sent >= q) || now >= run_end {
            break;
        }
        let wait = pacer.wait(sent, now);
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
            now = started.elapsed();
        }
        let size = plan.size.draw(rng.gen());
        // Paced: latency counts from the due time (no coordinated omission), or from now if
        // sent early (within the pacing slice).
        let from = pacer.origin(sent, now);
        let value = values.value(epoch_offset_us, from, size);
        let record = ProducerRecord {
            topic: topic.clone(),
            key: keys.next_key(),
            value: Some(value),
            ..Default::default()
        };
        recording.set(recording.get() + 1);
        if producer.send_tagged(record, tag(from, size)).await.is_err() {
            // Not buffered: the observer will not hear of it.
            recording.set(recording.get() - 1);
            *local.errors.borrow_mut() += 1;
            Shared::add(&shared.errors, 1);
        }
        sent += 1;
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    // Every delivery has resolved; wait until each task has recorded it. Bounded: each yield
    // lets the executor run the ready tasks, at most one per message sent.
    for _ in 0..=sent {
        if recording.get() == 0 {
            break;
        }
        futures_lite::future::yield_now().await;
    }
    match recording.get() {
        0 => Ok(()),
        left => Err(format!("{left} deliveries were never recorded")),
    }
}

struct ConsumerState {
    consumer: Consumer,
    /// Messages this consumer should read (its partitions' share of the target).
    target: Option<u64>,
}

async fn prepare_consumer(
    client: &Client,
    plan: &Plan,
    index: u32,
) -> Result<ConsumerState, String> {
    let mine: Vec<TopicPartition> = (0..plan.partitions)
        .filter(|p| p % plan.consumers.max(1) == index)
        .map(|partition| TopicPartition { topic: plan.topic.as_str().into(), partition })
        .collect();
    let config = ConsumerConfig {
        offset_reset: OffsetReset::Earliest,
        fetch_max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign(&mine).map_err(|e| e.to_string())?;
    let mut available = 0u64;
    for tp in &mine {
        let latest = client
            .list_offset(&tp.topic, tp.partition, spate_client::LATEST)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        let earliest = client
            .list_offset(&tp.topic, tp.partition, spate_client::EARLIEST)
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or(0);
        available += (latest - earliest).max(0) as u64;
        let seek = if plan.scenario == Scenario::E2e {
            Seek::Offset(latest)
        } else {
            Seek::Offset(earliest)
        };
        consumer.seek(tp, seek).map_err(|e| e.to_string())?;
    }
    let share = |total: u64| share_of(total, plan.consumers, index);
    let target = match plan.scenario {
        Scenario::Consume => {
            Some(plan.messages.map_or(available.min(plan.consume_target), share).min(available))
        }
        // e2e: consumers stop together once every produced message arrived (see `consume`).
        _ => None,
    };
    Ok(ConsumerState { consumer, target })
}

async fn consume(
    mut state: ConsumerState,
    plan: Plan,
    local: Rc<Local>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let mut read = 0u64;
    // With a count, keep going a little past the deadline for the tail to arrive (bounded).
    let hard_deadline = deadline + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        let all_arrived = plan.scenario == Scenario::E2e
            && plan.messages.is_some_and(|m| shared.seen.load(Ordering::Relaxed) >= m);
        match state.target {
            Some(target) if read >= target => break,
            _ if all_arrived => break,
            _ if now >= hard_deadline => break,
            None if now >= deadline && plan.messages.is_none() => break,
            _ => {}
        }
        let records = match state.consumer.poll().await {
            Ok(records) => records,
            Err(_) => {
                *local.errors.borrow_mut() += 1;
                Shared::add(&shared.errors, 1);
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let received_us = now_us();
        let measured = started.elapsed() >= plan.warmup;
        Shared::add(&shared.seen, records.len() as u64);
        read += records.len() as u64;
        if !measured {
            continue;
        }
        // Counted once per poll, not per record (shared counters are atomics).
        let mut bytes = 0u64;
        {
            let mut e2e = local.e2e.borrow_mut();
            for record in &records {
                let value = record.value.as_deref().unwrap_or_default();
                bytes += value.len() as u64;
                if plan.scenario == Scenario::E2e {
                    if let Some(due) = due_us(value) {
                        let _ = e2e.record(received_us.saturating_sub(due).max(1));
                    }
                }
            }
        }
        let count = records.len() as u64;
        let mut consumed = local.consumed.borrow_mut();
        consumed.0 += count;
        consumed.1 += bytes;
        Shared::add(&shared.consumed, count);
        if plan.scenario == Scenario::Consume {
            Shared::add(&shared.messages, count);
            Shared::add(&shared.bytes, bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_the_latency_origin_and_size() {
        let from = Duration::from_micros(11 * 24 * 3600 * 1_000_000 + 7);
        assert_eq!(untag(tag(from, 1024)), (from.as_micros() as u64, 1024));
        assert_eq!(untag(tag(Duration::ZERO, 4 << 20)), (0, 4 << 20));
        assert_eq!(untag(tag(Duration::from_micros(5), usize::MAX)).1, (1 << 24) - 1);
    }

    #[test]
    fn arena_values_carry_their_due_time_and_size_and_never_share_bytes() {
        let mut arena = ValueArena::default();
        let sizes = [1, 8, 100, 1024, VALUE_ARENA_BYTES - 50, 3 * VALUE_ARENA_BYTES, 200];
        let values: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| arena.value(1_000, Duration::from_micros(i as u64), size))
            .collect();
        for (i, (value, &size)) in values.iter().zip(&sizes).enumerate() {
            assert_eq!(value.len(), size.max(8));
            assert_eq!(due_us(value), Some(1_000 + i as u64));
            assert!(value[8..].iter().all(|&b| b == b'x'));
        }
        // Values cut from one buffer are disjoint slices of it.
        let (a, b) = (&values[2], &values[3]);
        assert!(a.as_ptr() as usize + a.len() <= b.as_ptr() as usize);
    }
}
