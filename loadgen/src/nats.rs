//! The peer driver: the same scenarios against NATS JetStream (`--target nats://HOST:PORT`),
//! with the same pacer, message format and histogram code, so the numbers compare.
//!
//! Mapping: the topic becomes a file-storage stream `LOADGEN_<topic>` with subjects
//! `<topic>.<partition>`; a keyed message goes to the subject of its key's partition (the same
//! CRC-32 hash the Spate client uses), an unkeyed one round-robin. Every publish waits for its
//! JetStream acknowledgement (the stream has stored it); at most `IN_FLIGHT_MAX` are outstanding
//! per producer, as Spate's producer buffers. Consumers are ordered push-less pull consumers
//! with no acks. JetStream runs on tokio, so this driver does too (behind the `nats` feature).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::keys::KeyGen;
use crate::pacer::Pacer;
use crate::run::{due_us, now_us, share_of, Plan, Scenario, ValueArena, WorkerResult};
use crate::stats::{new_histogram, Shared};

/// Counters shared by the tasks: produced, produced bytes, consumed, consumed bytes, errors.
type Counts = Arc<Mutex<(u64, u64, u64, u64, u64)>>;

/// A histogram the tasks share.
type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// Publishes awaiting their acknowledgement, per producer.
const IN_FLIGHT_MAX: usize = 4096;

fn stream_name(topic: &str) -> String {
    let clean: String =
        topic.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("LOADGEN_{clean}")
}

/// Runs `plan` against JetStream at `url` on a tokio runtime with `threads` workers.
pub fn run(
    plan: &Plan,
    url: &str,
    threads: usize,
    shared: Arc<Shared>,
) -> Result<WorkerResult, String> {
    let address = url.trim_start_matches("nats://").to_string();
    let plan = plan.clone();
    crate::run::on_tokio(threads, drive(plan, address, shared))
}

async fn drive(plan: Plan, address: String, shared: Arc<Shared>) -> Result<WorkerResult, String> {
    let client = async_nats::connect(&address)
        .await
        .map_err(|e| format!("cannot reach NATS at {address}: {e}"))?;
    let js = jetstream::new(client);
    let name = stream_name(&plan.topic);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.*", plan.topic)],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create stream {name}: {e}"))?;
    let produce_latency = Arc::new(Mutex::new(new_histogram()));
    let request_latency = Arc::new(Mutex::new(new_histogram()));
    let e2e_latency = Arc::new(Mutex::new(new_histogram()));
    let counts: Counts = Arc::new(Mutex::new((0, 0, 0, 0, 0)));

    let mut consumers = Vec::new();
    if plan.scenario != Scenario::Produce {
        let deliver_policy =
            if plan.scenario == Scenario::E2e { DeliverPolicy::New } else { DeliverPolicy::All };
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy,
                ack_policy: jetstream::consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create a consumer: {e}"))?;
        let available = stream.get_info().await.map_err(|e| e.to_string())?.state.messages;
        let target = match plan.scenario {
            Scenario::Consume => Some(plan.messages.unwrap_or(available).min(available)),
            _ => plan.messages,
        };
        consumers.push((consumer, target));
    }
    let started = Instant::now();
    let deadline = started + plan.warmup + plan.duration;
    let mut tasks = Vec::new();
    for (consumer, target) in consumers {
        let (plan, shared, e2e_latency, counts) =
            (plan.clone(), shared.clone(), e2e_latency.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            let mut read = 0u64;
            let hard_deadline = deadline + Duration::from_secs(10);
            loop {
                if target.is_some_and(|t| read >= t)
                    || Instant::now() >= hard_deadline
                    || (target.is_none() && Instant::now() >= deadline)
                {
                    break;
                }
                let next = tokio::time::timeout(Duration::from_millis(100), messages.next()).await;
                let Ok(Some(Ok(message))) = next else { continue };
                read += 1;
                if started.elapsed() < plan.warmup {
                    continue;
                }
                let payload = &message.payload;
                if let Some(due) = due_us(payload).filter(|_| plan.scenario == Scenario::E2e) {
                    let _ = e2e_latency
                        .lock()
                        .expect("not poisoned")
                        .record(now_us().saturating_sub(due).max(1));
                }
                let mut c = counts.lock().expect("not poisoned");
                c.2 += 1;
                c.3 += payload.len() as u64;
                Shared::add(&shared.consumed, 1);
                if plan.scenario == Scenario::Consume {
                    Shared::add(&shared.messages, 1);
                    Shared::add(&shared.bytes, payload.len() as u64);
                }
            }
            Ok::<(), String>(())
        }));
    }
    if plan.scenario != Scenario::Consume {
        for index in 0..plan.producers {
            let (plan, js, shared, counts) =
                (plan.clone(), js.clone(), shared.clone(), counts.clone());
            let latency = (produce_latency.clone(), request_latency.clone());
            tasks.push(tokio::spawn(async move {
                produce(plan, index, js, shared, latency, counts, started, deadline).await
            }));
        }
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().saturating_sub(plan.warmup);
    let (produced, produced_bytes, consumed, consumed_bytes, errors) =
        *counts.lock().expect("not poisoned");
    let produce_latency = produce_latency.lock().expect("not poisoned").clone();
    let request_latency = request_latency.lock().expect("not poisoned").clone();
    let e2e_latency = e2e_latency.lock().expect("not poisoned").clone();
    Ok(WorkerResult {
        produce_latency,
        request_latency,
        e2e_latency,
        produced,
        produced_bytes,
        consumed,
        consumed_bytes,
        errors,
        elapsed,
    })
}

#[allow(clippy::too_many_arguments)]
async fn produce(
    plan: Plan,
    index: u32,
    js: jetstream::Context,
    shared: Arc<Shared>,
    // Per record, and per request (here a publish, one record).
    latency: (SharedHistogram, SharedHistogram),
    counts: Counts,
    started: Instant,
    deadline: Instant,
) -> Result<(), String> {
    let pacer = Pacer::new(plan.rate / f64::from(plan.producers.max(1)));
    let quota = plan.messages.map(|m| share_of(m, plan.producers, index));
    let mut keys = KeyGen::new(plan.keys.clone(), 0x5EED ^ u64::from(index));
    let mut rng = SmallRng::seed_from_u64(u64::from(index) + 1);
    let epoch_offset_us = now_us() - started.elapsed().as_micros() as u64;
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_MAX));
    let mut sent = 0u64;
    let mut values = ValueArena::default();
    // Bounded by the quota and the deadline.
    while quota.is_none_or(|q| sent < q) && Instant::now() < deadline {
        let wait = pacer.wait(sent, started.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let size = plan.size.draw(rng.gen());
        let due = pacer.origin(sent, started.elapsed());
        let value = values.value(epoch_offset_us, due, size);
        let partition = match keys.next_key() {
            Some(key) => spate_client::key_partition(&key, plan.partitions),
            None => (sent % u64::from(plan.partitions)) as u32,
        };
        let permit = in_flight.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let sent_at = started.elapsed();
        let ack = js.publish(format!("{}.{partition}", plan.topic), value).await;
        let (latency, counts, shared) = (latency.clone(), counts.clone(), shared.clone());
        let measured = sent_at >= plan.warmup;
        let message = sent;
        tokio::spawn(async move {
            let acked = match ack {
                Ok(future) => future.await.is_ok(),
                Err(_) => false,
            };
            let mut c = counts.lock().expect("not poisoned");
            if !acked {
                c.4 += 1;
                Shared::add(&shared.errors, 1);
            } else if measured {
                let acked_at = started.elapsed();
                let elapsed = pacer.latency(message, sent_at, acked_at);
                let _ = latency
                    .0
                    .lock()
                    .expect("not poisoned")
                    .record(elapsed.as_micros().max(1) as u64);
                let request = acked_at.saturating_sub(sent_at).as_micros().max(1) as u64;
                let _ = latency.1.lock().expect("not poisoned").record(request);
                c.0 += 1;
                c.1 += size as u64;
                Shared::add(&shared.messages, 1);
                Shared::add(&shared.bytes, size as u64);
            }
            drop(permit);
        });
        sent += 1;
    }
    // Wait for every outstanding acknowledgement (bounded by the permits coming back).
    let _all = in_flight.acquire_many(IN_FLIGHT_MAX as u32).await.map_err(|e| e.to_string())?;
    Ok(())
}
