//! The Apache Iggy driver: the same scenarios against an Iggy server (`--target
//! iggy://HOST:PORT`, its TCP transport), with the same pacer, message format and histogram
//! code as the Spate driver, so the numbers compare. Behind the `iggy` feature.
//!
//! Mapping:
//! - The topic is an Iggy topic of the same name, with the plan's partition count, in the
//!   stream [`STREAM`] (created if missing). Logged in as `IGGY_USER`/`IGGY_PASSWORD`
//!   (default `iggy`/`iggy`, as `benches/compare-iggy.sh` starts the server).
//! - A producer is one connection. It fills one batch per partition, up to `--batch-bytes` of
//!   values or until `--linger` passes, and sends it with `send_messages`, which returns once
//!   the server has appended it (in memory unless the topic enforces fsync). One batch is in
//!   flight per producer, as iggy-bench does. A keyed message goes to its key's partition (the
//!   CRC-32 hash the Spate client uses), an unkeyed one round-robin by batch.
//! - `--flush always` creates the topic with `enforce_fsync` and `messages_required_to_save
//!   = 1`: every batch is persisted and fsynced before it is acknowledged.
//! - Consumers poll their share of the partitions by offset (`PollingStrategy::offset`), up
//!   to [`POLL_MESSAGES_MAX`] messages a poll, without committing.
//! - Per-record produce latency runs from the record's due time to its batch's
//!   acknowledgement, as for Spate; per-request latency from `send_messages` to its return.
//!
//! The Iggy SDK runs on tokio, so this driver does too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use iggy::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::keys::KeyGen;
use crate::pacer::Pacer;
use crate::run::{due_us, now_us, share_of, Plan, Scenario, ValueArena, WorkerResult};
use crate::stats::{new_histogram, Shared};

/// The stream every load generator topic lives in.
pub const STREAM: &str = "loadgen";
/// Messages one poll asks for.
pub const POLL_MESSAGES_MAX: u32 = 1000;
/// Messages one batch holds at most, whatever `--batch-bytes` says (Iggy's own bench sends
/// 1000 a batch by default).
pub const BATCH_MESSAGES_MAX: usize = 100_000;
/// Connections (producers plus consumers) one run opens at most.
pub const CONNECTIONS_MAX: u32 = 256;

/// What one producer or consumer task measured.
struct Tally {
    produce: Histogram<u64>,
    request: Histogram<u64>,
    e2e: Histogram<u64>,
    produced: u64,
    produced_bytes: u64,
    consumed: u64,
    consumed_bytes: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            produce: new_histogram(),
            request: new_histogram(),
            e2e: new_histogram(),
            produced: 0,
            produced_bytes: 0,
            consumed: 0,
            consumed_bytes: 0,
            errors: 0,
        }
    }
}

/// Runs `plan` against the Iggy server at `url` on a tokio runtime with `threads` workers.
pub fn run(
    plan: &Plan,
    url: &str,
    threads: usize,
    shared: Arc<Shared>,
) -> Result<WorkerResult, String> {
    if plan.producers + plan.consumers > CONNECTIONS_MAX {
        return Err(format!("at most {CONNECTIONS_MAX} producers and consumers against Iggy"));
    }
    let address = url.trim_start_matches("iggy://").to_string();
    let plan = plan.clone();
    crate::run::on_tokio(threads, drive(plan, address, shared))
}

async fn connect(address: &str) -> Result<IggyClient, String> {
    let client = IggyClientBuilder::new()
        .with_tcp()
        .with_server_address(address.to_string())
        .with_no_delay()
        .build()
        .map_err(|e| format!("cannot make an Iggy client for {address}: {e}"))?;
    client.connect().await.map_err(|e| format!("cannot reach Iggy at {address}: {e}"))?;
    let user = std::env::var("IGGY_USER").unwrap_or_else(|_| "iggy".into());
    let password = std::env::var("IGGY_PASSWORD").unwrap_or_else(|_| "iggy".into());
    client.login_user(&user, &password).await.map_err(|e| format!("cannot log in to Iggy: {e}"))?;
    Ok(client)
}

fn ids(topic: &str) -> Result<(Identifier, Identifier), String> {
    let stream = Identifier::named(STREAM).map_err(|e| e.to_string())?;
    let topic = Identifier::named(topic).map_err(|e| format!("bad topic name {topic:?}: {e}"))?;
    Ok((stream, topic))
}

/// The topic's details, creating the stream and the topic if missing.
async fn prepare(client: &IggyClient, plan: &Plan) -> Result<TopicDetails, String> {
    let (stream_id, topic_id) = ids(&plan.topic)?;
    if client.get_stream(&stream_id).await.map_err(|e| e.to_string())?.is_none() {
        client.create_stream(STREAM).await.map_err(|e| format!("cannot create stream: {e}"))?;
    }
    if let Some(topic) = client.get_topic(&stream_id, &topic_id).await.map_err(|e| e.to_string())? {
        if topic.partitions_count != plan.partitions {
            return Err(format!(
                "topic {} has {} partitions, not {}",
                plan.topic, topic.partitions_count, plan.partitions
            ));
        }
        return Ok(topic);
    }
    // `--flush always`: fsync, and persist after every batch (by default Iggy persists once
    // 1024 messages or 1 MiB are unsaved, so its fsync would not be per batch).
    let options = TopicCreateOptions {
        partitions_count: Some(plan.partitions),
        message_expiry: Some(IggyExpiry::NeverExpire),
        enforce_fsync: plan.fsync.then_some(true),
        messages_required_to_save: plan.fsync.then_some(1),
        ..TopicCreateOptions::default()
    };
    client
        .create_topic(&stream_id, &plan.topic, &options)
        .await
        .map_err(|e| format!("cannot create topic {}: {e}", plan.topic))?;
    client
        .get_topic(&stream_id, &topic_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("topic {} vanished after creation", plan.topic))
}

async fn drive(plan: Plan, address: String, shared: Arc<Shared>) -> Result<WorkerResult, String> {
    let admin = connect(&address).await?;
    let topic = prepare(&admin, &plan).await?;
    // Iggy numbers partitions from 0 at this version, as Spate does.
    let mut ends: Vec<u64> = vec![0; plan.partitions as usize];
    for partition in &topic.partitions {
        if let Some(end) = ends.get_mut(partition.id as usize) {
            *end = partition.messages_count;
        }
    }
    let started = Instant::now();
    let deadline = started + plan.warmup + plan.duration;
    let mut tasks = Vec::new();
    if plan.scenario != Scenario::Produce {
        let consumers = plan.consumers.clamp(1, plan.partitions);
        let available: u64 = ends.iter().sum();
        let target = match plan.scenario {
            Scenario::Consume => Some(plan.messages.unwrap_or(available).min(available)),
            _ => plan.messages,
        };
        for index in 0..consumers {
            let partitions: Vec<u32> =
                (0..plan.partitions).filter(|p| p % consumers == index).collect();
            // E2e reads what is produced from now on; consume reads from the start.
            let from: Vec<u64> = partitions
                .iter()
                .map(|&p| if plan.scenario == Scenario::E2e { ends[p as usize] } else { 0 })
                .collect();
            let share = target.map(|t| match plan.scenario {
                Scenario::Consume => partitions.iter().map(|&p| ends[p as usize]).sum::<u64>(),
                _ => share_of(t, consumers, index),
            });
            let (plan, address, shared) = (plan.clone(), address.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                consume(plan, address, index, partitions, from, share, shared, started, deadline)
                    .await
            }));
        }
    }
    if plan.scenario != Scenario::Consume {
        for index in 0..plan.producers {
            let (plan, address, shared) = (plan.clone(), address.clone(), shared.clone());
            tasks.push(tokio::spawn(async move {
                produce(plan, address, index, shared, started, deadline).await
            }));
        }
    }
    let mut total = Tally::new();
    for task in tasks {
        let tally = task.await.map_err(|e| e.to_string())??;
        let _ = total.produce.add(&tally.produce);
        let _ = total.request.add(&tally.request);
        let _ = total.e2e.add(&tally.e2e);
        total.produced += tally.produced;
        total.produced_bytes += tally.produced_bytes;
        total.consumed += tally.consumed;
        total.consumed_bytes += tally.consumed_bytes;
        total.errors += tally.errors;
    }
    Ok(WorkerResult {
        produce_latency: total.produce,
        request_latency: total.request,
        e2e_latency: total.e2e,
        produced: total.produced,
        produced_bytes: total.produced_bytes,
        consumed: total.consumed,
        consumed_bytes: total.consumed_bytes,
        errors: total.errors,
        elapsed: started.elapsed().saturating_sub(plan.warmup),
    })
}

/// One partition's batch being filled: the messages, each one's (index, due, size) for its
/// latency, and when the first was added.
#[derive(Default)]
struct Open {
    messages: Vec<IggyMessage>,
    records: Vec<(u64, Duration, usize)>,
    bytes: usize,
    opened: Option<Instant>,
}

/// What sending a batch needs, shared by a producer's sends.
struct Sender<'a> {
    client: &'a IggyClient,
    stream_id: Identifier,
    topic_id: Identifier,
    plan: &'a Plan,
    pacer: Pacer,
    shared: &'a Shared,
    started: Instant,
}

impl Sender<'_> {
    /// Sends one batch and waits for its acknowledgement, recording its latencies.
    async fn send(&self, partition: u32, batch: Open, tally: &mut Tally) {
        let Open { mut messages, records, .. } = batch;
        if messages.is_empty() {
            return;
        }
        let partitioning = Partitioning::partition_id(partition);
        let before = Instant::now();
        let result = self
            .client
            .send_messages(&self.stream_id, &self.topic_id, &partitioning, &mut messages)
            .await;
        let acked = self.started.elapsed();
        match result {
            Ok(_) => {
                if before.duration_since(self.started) >= self.plan.warmup {
                    let _ = tally.request.record(before.elapsed().as_micros().max(1) as u64);
                }
                for (message, due, size) in records {
                    if due < self.plan.warmup {
                        continue;
                    }
                    let latency = self.pacer.latency(message, due, acked);
                    let _ = tally.produce.record(latency.as_micros().max(1) as u64);
                    tally.produced += 1;
                    tally.produced_bytes += size as u64;
                    Shared::add(&self.shared.messages, 1);
                    Shared::add(&self.shared.bytes, size as u64);
                }
            }
            Err(error) => {
                tracing::debug!(%error, "an Iggy send failed");
                tally.errors += records.len() as u64;
                Shared::add(&self.shared.errors, records.len() as u64);
            }
        }
    }
}

async fn produce(
    plan: Plan,
    address: String,
    index: u32,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
) -> Result<Tally, String> {
    let client = connect(&address).await?;
    let (stream_id, topic_id) = ids(&plan.topic)?;
    let pacer = Pacer::new(plan.rate / f64::from(plan.producers.max(1)));
    let sender = Sender {
        client: &client,
        stream_id,
        topic_id,
        plan: &plan,
        pacer,
        shared: &shared,
        started,
    };
    let quota = plan.messages.map(|m| share_of(m, plan.producers, index));
    let mut keys = KeyGen::new(plan.keys.clone(), 0x5EED ^ u64::from(index));
    let mut rng = SmallRng::seed_from_u64(u64::from(index) + 1);
    let epoch_offset_us = now_us() - started.elapsed().as_micros() as u64;
    let mut open: Vec<Open> = (0..plan.partitions).map(|_| Open::default()).collect();
    let mut values = ValueArena::default();
    let mut tally = Tally::new();
    // Unkeyed messages fill one partition's batch, then the next partition's.
    let mut unkeyed_partition = index % plan.partitions;
    let mut sent = 0u64;
    let run_end = deadline.saturating_duration_since(started);
    // Bounded by the quota and the deadline. One clock read per message.
    loop {
        let mut now = started.elapsed();
        if quota.is_some_and(|q| sent >= q) || now >= run_end {
            break;
        }
        let wait = pacer.wait(sent, now);
        if !wait.is_zero() {
            // Batches open for the linger go out before the pause.
            for partition in 0..plan.partitions {
                let slot = &mut open[partition as usize];
                if slot.opened.is_some_and(|opened| opened.elapsed() >= plan.linger) {
                    sender.send(partition, std::mem::take(slot), &mut tally).await;
                }
            }
            tokio::time::sleep(pacer.wait(sent, started.elapsed())).await;
            now = started.elapsed();
        }
        let size = plan.size.draw(rng.gen());
        let due = pacer.origin(sent, now);
        let value: Bytes = values.value(epoch_offset_us, due, size);
        let (partition, keyed) = match keys.next_key() {
            Some(key) => (spate_client::key_partition(&key, plan.partitions), true),
            None => (unkeyed_partition, false),
        };
        let message = IggyMessage::builder().payload(value).build().map_err(|e| e.to_string())?;
        let slot = &mut open[partition as usize];
        slot.opened.get_or_insert(started + now);
        slot.messages.push(message);
        slot.records.push((sent, due, size));
        slot.bytes += size;
        sent += 1;
        if slot.bytes >= plan.batch_bytes || slot.messages.len() >= BATCH_MESSAGES_MAX {
            if !keyed {
                unkeyed_partition = (unkeyed_partition + 1) % plan.partitions;
            }
            sender.send(partition, std::mem::take(slot), &mut tally).await;
        }
    }
    for partition in 0..plan.partitions {
        sender.send(partition, std::mem::take(&mut open[partition as usize]), &mut tally).await;
    }
    Ok(tally)
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    plan: Plan,
    address: String,
    index: u32,
    partitions: Vec<u32>,
    mut next: Vec<u64>,
    target: Option<u64>,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
) -> Result<Tally, String> {
    let client = connect(&address).await?;
    let (stream_id, topic_id) = ids(&plan.topic)?;
    let consumer = Consumer::new(Identifier::numeric(index + 1).map_err(|e| e.to_string())?);
    let mut tally = Tally::new();
    let mut read = 0u64;
    // Past the run's end, a consume run still has this long to read what it was asked to.
    let hard_deadline = deadline + Duration::from_secs(10);
    let mut turn = 0usize;
    // Bounded by the target and the deadlines.
    loop {
        let now = Instant::now();
        if target.is_some_and(|t| read >= t)
            || now >= hard_deadline
            || (target.is_none() && now >= deadline)
        {
            break;
        }
        let slot = turn % partitions.len();
        turn += 1;
        let polled = client
            .poll_messages(
                &stream_id,
                &topic_id,
                Some(partitions[slot]),
                &consumer,
                &PollingStrategy::offset(next[slot]),
                POLL_MESSAGES_MAX,
                false,
            )
            .await;
        let polled = match polled {
            Ok(polled) => polled,
            Err(error) => {
                tracing::debug!(%error, "an Iggy poll failed");
                tally.errors += 1;
                Shared::add(&shared.errors, 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if polled.messages.is_empty() {
            if slot + 1 == partitions.len() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            continue;
        }
        let measured = started.elapsed() >= plan.warmup;
        for message in &polled.messages {
            next[slot] = message.header.offset + 1;
            read += 1;
            if !measured {
                continue;
            }
            let payload = &message.payload;
            if let Some(due) = due_us(payload).filter(|_| plan.scenario == Scenario::E2e) {
                let _ = tally.e2e.record(now_us().saturating_sub(due).max(1));
            }
            tally.consumed += 1;
            tally.consumed_bytes += payload.len() as u64;
            Shared::add(&shared.consumed, 1);
            if plan.scenario == Scenario::Consume {
                Shared::add(&shared.messages, 1);
                Shared::add(&shared.bytes, payload.len() as u64);
            }
        }
    }
    Ok(tally)
}
