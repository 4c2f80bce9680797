//! Idempotent producers against a real `spate serve` process: a produce whose reply is lost is
//! retried and written once; kill -9 with batches in flight loses, duplicates and reorders
//! nothing; a zombie producer is fenced; producer state survives a restart. The producer is the
//! Rust client, in this process. Every loop is bounded in count and time.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use spate_client::client::FetchTarget;
use spate_client::{Acks, Client, ClientError, Producer, ProducerConfig, ProducerRecord};
use spate_protocol::batch::{BatchBuilder, BatchHeader, BatchIdentity, NewRecord, Records};
use spate_protocol::codec;
use spate_protocol::frame::{self, FrameDecoder};
use spate_protocol::wire::{self, ErrorCode, RequestBody, ResponseBodyT};

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::All,
        linger: Duration::from_millis(1),
        request_timeout: Duration::from_secs(3),
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(200),
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    }
}

/// Every record of one partition, from the start to the high watermark: (offset, value).
async fn read_partition(client: &Client, topic: &str, partition: u32) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut next = 0;
    let started = Instant::now();
    // Each fetch returns at least one batch until the high watermark; bounded in time too.
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "reading {topic} took too long");
        let target =
            FetchTarget { topic: topic.into(), partition, offset: next, max_bytes: 1 << 20 };
        let fetched = client.fetch(&[target], Duration::ZERO, 0, 1 << 20).await.unwrap();
        let fetched = &fetched[0];
        assert!(fetched.error.is_none(), "{:?}", fetched.error);
        let mut bytes = &fetched.records[..];
        while let Ok(header) = BatchHeader::parse(bytes) {
            let length = header.batch_length as usize;
            for record in Records::new(&bytes[..length], header) {
                let record = record.unwrap();
                let value = String::from_utf8(record.value.unwrap().to_vec()).unwrap();
                out.push((record.offset, value));
            }
            next = header.next_offset();
            bytes = &bytes[length..];
        }
        if next >= fetched.high_watermark {
            return out;
        }
    }
}

fn record(topic: &str, value: String) -> ProducerRecord {
    ProducerRecord::new(topic, value).with_partition(0)
}

// ---- A proxy that loses a produce's reply ---------------------------------------------------

/// A frame-aware TCP proxy in front of a broker. It points metadata at itself, so every request
/// of a client bootstrapped on it passes through; once armed, it forwards the next produce
/// request, then drops the broker's reply to it and closes the client's connection, as a
/// network failure after the write would.
struct Proxy {
    address: SocketAddr,
    armed: Arc<AtomicBool>,
    replies_dropped: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(broker: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            address: listener.local_addr().unwrap(),
            armed: Arc::new(AtomicBool::new(false)),
            replies_dropped: Arc::new(AtomicU32::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (armed, dropped, stop, me) =
            (proxy.armed.clone(), proxy.replies_dropped.clone(), proxy.stop.clone(), proxy.address);
        std::thread::spawn(move || {
            // Until the test drops the proxy; polls so it sees the flag.
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let upstream = TcpStream::connect(broker).unwrap();
                        pipe(client, upstream, me, armed.clone(), dropped.clone());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        proxy
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads whole frames from `from` until it closes, handing each to `each` (bounded by the
/// stream; `each` returns false to stop).
fn frames(mut from: &TcpStream, mut each: impl FnMut(frame::Frame) -> bool) {
    let decoder = FrameDecoder::default();
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some(frame)) = decoder.decode(&mut buffer) {
            if !each(frame) {
                return;
            }
        }
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn raw(frame: &frame::Frame) -> Vec<u8> {
    let mut out = frame::prefix(frame.header.len(), frame.payload.len()).unwrap().to_vec();
    out.extend_from_slice(&frame.header);
    out.extend_from_slice(&frame.payload);
    out
}

fn pipe(
    client: TcpStream,
    upstream: TcpStream,
    me: SocketAddr,
    armed: Arc<AtomicBool>,
    dropped: Arc<AtomicU32>,
) {
    let doomed: Arc<Mutex<Option<u32>>> = Arc::new(Mutex::new(None));
    let (to_broker, from_client) = (upstream.try_clone().unwrap(), client.try_clone().unwrap());
    let doomed_in = doomed.clone();
    std::thread::spawn(move || {
        let mut to_broker = &to_broker;
        frames(&from_client, |frame| {
            let request = codec::decode_request(&frame.header).unwrap();
            if request.body_type() == RequestBody::ProduceRequest
                && armed.swap(false, Ordering::SeqCst)
            {
                *doomed_in.lock().unwrap() = Some(request.correlation_id());
            }
            to_broker.write_all(&raw(&frame)).is_ok()
        });
        let _ = to_broker.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut to_client = &client;
        frames(&upstream, |frame| {
            let response = codec::decode_response(&frame.header).unwrap();
            if *doomed.lock().unwrap() == Some(response.correlation_id()) {
                // The broker did the work; the client never hears of it.
                dropped.fetch_add(1, Ordering::SeqCst);
                return false;
            }
            let bytes = match response.body_type() {
                wire::ResponseBody::MetadataResponse => {
                    let mut response = response.unpack();
                    if let ResponseBodyT::MetadataResponse(metadata) = &mut response.body {
                        for broker in metadata.brokers.iter_mut().flatten() {
                            broker.host = Some(me.ip().to_string());
                            broker.port = me.port();
                        }
                        for topic in metadata.topics.iter_mut().flatten() {
                            for partition in topic.partitions.iter_mut().flatten() {
                                partition.shard_host = None;
                                partition.shard_port = 0;
                            }
                        }
                    }
                    codec::encode_response(&response, 0).unwrap().to_vec()
                }
                _ => raw(&frame),
            };
            to_client.write_all(&bytes).is_ok()
        });
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    });
}

#[test]
fn a_produce_whose_reply_is_lost_is_retried_and_written_once_at_its_original_offset() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t", "--partitions", "1", "--config", "flush=always"]);
    let proxy = Proxy::start(broker.address().parse().unwrap());
    let through_proxy = proxy.address.to_string();
    let armed = proxy.armed.clone();
    let (reports, stored) = run(async move {
        let client = Client::connect(client_config(&through_proxy)).await.unwrap();
        let producer = Producer::new(client.clone(), producer_config()).unwrap();
        let mut reports = Vec::new();
        for value in ["before", "lost-reply", "after"] {
            armed.store(value == "lost-reply", Ordering::SeqCst);
            let delivery = producer.send(record("t", value.to_string())).await.unwrap();
            reports.push(delivery.await.unwrap());
        }
        let direct = Client::connect(client_config(&broker.address())).await.unwrap();
        (reports, read_partition(&direct, "t", 0).await)
    });
    assert_eq!(proxy.replies_dropped.load(Ordering::SeqCst), 1, "the proxy dropped one reply");
    // The retried record got the offset its first, unanswered attempt was written at.
    let offsets: Vec<_> = reports.iter().map(|r| (r.offset, r.attempts)).collect();
    assert_eq!(offsets, vec![(0, 1), (1, 2), (2, 1)]);
    let expected: Vec<(i64, String)> = ["before", "lost-reply", "after"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v.to_string()))
        .collect();
    assert_eq!(stored, expected, "exactly one copy of each");
}

// ---- kill -9 with batches in flight ----------------------------------------------------------

/// The i-th message of a stream: about 40 bytes, so a 1 KiB batch holds about 20.
fn message(i: u64) -> String {
    format!("m{i:05}-{}", "x".repeat(32))
}

#[test]
fn kill_9_with_batches_in_flight_loses_duplicates_and_reorders_nothing() {
    const MESSAGES: u64 = 4_000;
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    // Durable acknowledgements are slower than sends, so batches queue up in flight.
    broker.ok(&["topic", "create", "t", "--partitions", "1", "--config", "flush=always"]);
    let address = broker.address();
    let acknowledged = Arc::new(AtomicU64::new(0));
    // Shared, so whichever side drops it last (also while a failure unwinds) stops the broker.
    let restarted: Arc<Mutex<Option<Broker>>> = Arc::new(Mutex::new(None));
    let killer = {
        let acknowledged = acknowledged.clone();
        let restarted = restarted.clone();
        let dir = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let started = Instant::now();
            // Kill once a good part of the stream is acknowledged (bounded in time).
            while acknowledged.load(Ordering::SeqCst) < MESSAGES / 4 {
                assert!(started.elapsed() < Duration::from_secs(60), "the stream did not start");
                std::thread::sleep(Duration::from_millis(1));
            }
            broker.sigkill();
            let at_kill = acknowledged.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            *restarted.lock().unwrap() = Some(Broker::start_on(&dir, port, &[]));
            at_kill
        })
    };
    let (results, retries) = run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        // Small batches so that several are in flight at once (up to 5).
        let config = ProducerConfig { batch_bytes: 1024, ..producer_config() };
        assert_eq!(config.max_in_flight_per_partition, 5);
        let producer = Producer::new(client, config).unwrap();
        let retries = Arc::new(AtomicU64::new(0));
        let counted = retries.clone();
        producer.on_retry(move |_, _| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let mut deliveries = Vec::new();
        for i in 0..MESSAGES {
            let delivery = producer.send(record("t", message(i))).await.unwrap();
            let acknowledged = acknowledged.clone();
            deliveries.push(glommio::spawn_local(async move {
                let result = delivery.await;
                acknowledged.fetch_add(1, Ordering::SeqCst);
                result
            }));
            if i % 64 == 0 {
                // Let acknowledgements be counted while sending.
                glommio::yield_if_needed().await;
            }
        }
        let mut results = Vec::new();
        for delivery in deliveries {
            results.push(delivery.await);
        }
        (results, retries.load(Ordering::SeqCst))
    });
    let at_kill = killer.join().unwrap();
    let broker = restarted.lock().unwrap().take().expect("restarted");
    assert!(at_kill < MESSAGES, "the kill came mid-stream");
    assert!(retries > 0, "the kill made batches fail and be retried");
    let stored = run(async move {
        let client = Client::connect(client_config(&broker.address())).await.unwrap();
        read_partition(&client, "t", 0).await
    });
    // Every message acknowledged (within the delivery timeout, across the restart) ...
    let offsets: Vec<i64> = results
        .iter()
        .enumerate()
        .map(|(i, r)| r.as_ref().unwrap_or_else(|e| panic!("message {i} failed: {e}")).offset)
        .collect();
    // ... stored once each, in send order, at the offsets the producer was told.
    let expected: Vec<(i64, String)> =
        offsets.iter().enumerate().map(|(i, offset)| (*offset, message(i as u64))).collect();
    assert_eq!(stored.len(), MESSAGES as usize, "no duplicates, nothing lost");
    assert_eq!(stored, expected);
}

// ---- Zombies ---------------------------------------------------------------------------------

#[test]
fn a_zombie_producer_with_an_old_epoch_is_fenced() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t", "--partitions", "1"]);
    let address = broker.address();
    let (zombie_error, later_error, stored) = run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let named = ProducerConfig { producer_name: Some("writer".into()), ..producer_config() };
        let old = Producer::new(client.clone(), named.clone()).unwrap();
        old.send(record("t", "old-1".into())).await.unwrap().await.unwrap();
        // The same name again (a restarted instance): same id, newer epoch.
        let new = Producer::new(client.clone(), named).unwrap();
        new.send(record("t", "new-1".into())).await.unwrap().await.unwrap();
        let (old_id, new_id) = (old.identity().unwrap(), new.identity().unwrap());
        assert_eq!((new_id.id, new_id.epoch), (old_id.id, old_id.epoch + 1));
        // The old instance is a zombie: its next batch is refused, and it stays failed.
        let zombie = old.send(record("t", "old-2".into())).await.unwrap().await.unwrap_err();
        let later = old.send(record("t", "old-3".into())).await.err();
        new.send(record("t", "new-2".into())).await.unwrap().await.unwrap();
        (zombie, later, read_partition(&client, "t", 0).await)
    });
    assert_eq!(zombie_error.code(), Some(ErrorCode::ProducerFenced), "{zombie_error}");
    assert_eq!(later_error.and_then(|e| e.code()), Some(ErrorCode::ProducerFenced));
    let values: Vec<_> = stored.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["old-1", "new-1", "new-2"]);
}

// ---- Restart -------------------------------------------------------------------------------

/// An idempotent batch of one record, built by hand so the test can send it twice.
fn hand_built(value: &str, id: i64, epoch: i16, sequence: i32) -> BytesMut {
    let mut builder = BatchBuilder::new();
    builder.push(&NewRecord { value: Some(Bytes::from(value.to_string())), ..Default::default() });
    let identity =
        BatchIdentity { producer_id: id, producer_epoch: epoch, base_sequence: sequence };
    builder.finish_with(identity).unwrap()
}

#[test]
fn after_a_restart_a_retry_is_recognised_and_ids_stay_unique() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "t", "--partitions", "1"]);
    let address = broker.address();
    let timeout = Duration::from_secs(5);
    let (identity, first) = {
        run(async move {
            let client = Client::connect(client_config(&address)).await.unwrap();
            let (id, epoch) = client.init_producer_id(None).await.unwrap();
            let mut offsets = Vec::new();
            for (sequence, value) in ["a", "b"].iter().enumerate() {
                let batch = hand_built(value, id, epoch, sequence as i32);
                offsets.push(client.produce("t", 0, &batch, Acks::All, timeout).await.unwrap());
            }
            ((id, epoch), offsets)
        })
    };
    assert_eq!(first, vec![Some(0), Some(1)]);
    // The broker dies without a clean shutdown; a producer then retries its last batch.
    broker.sigkill();
    let broker = Broker::start_on(dir.path(), port, &[]);
    let (retried, next, gap, new_id, stored) = run(async move {
        let client = Client::connect(client_config(&broker.address())).await.unwrap();
        let (id, epoch) = identity;
        let produce = |batch: BytesMut| {
            let client = client.clone();
            async move { client.produce("t", 0, &batch, Acks::All, timeout).await }
        };
        let retried = produce(hand_built("b", id, epoch, 1)).await.unwrap();
        let next = produce(hand_built("c", id, epoch, 2)).await.unwrap();
        let gap = produce(hand_built("e", id, epoch, 4)).await.unwrap_err();
        let new_id = client.init_producer_id(None).await.unwrap();
        (retried, next, gap, new_id, read_partition(&client, "t", 0).await)
    });
    assert_eq!(retried, Some(1), "the retry got its original offset");
    assert_eq!(next, Some(2));
    assert!(
        matches!(&gap, ClientError::Broker { code: ErrorCode::OutOfOrderSequence, .. }),
        "{gap}"
    );
    assert!(new_id.0 > identity.0, "ids are unique across restarts: {new_id:?} after {identity:?}");
    let values: Vec<_> = stored.into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["a", "b", "c"]);
}

// ---- The command line ----------------------------------------------------------------------

#[test]
fn spate_produce_runs_as_a_named_producer_and_each_run_takes_the_next_epoch() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t", "--partitions", "1"]);
    let produce = ["produce", "t", "--producer-name", "nightly", "--print-offsets"];
    for (run, expected) in [(0, "0\t0\n0\t1\n"), (1, "0\t2\n0\t3\n")] {
        let output = broker.cli_with_input(&produce, Some(b"a\nb\n"));
        assert!(output.status.success(), "run {run}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(String::from_utf8_lossy(&output.stdout), expected);
        // The name's epoch is durable before the run's first message.
        let ids = std::fs::read_to_string(dir.path().join("meta/producer-ids.toml")).unwrap();
        assert!(
            ids.contains("[names.nightly]") && ids.contains(&format!("epoch = {run}")),
            "{ids}"
        );
    }
    let refused = broker.cli(&["produce", "t", "--producer-name", "x", "--acks", "none"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--producer-name"));
}

// ---- Callbacks instead of futures -------------------------------------------------------------

#[test]
fn send_with_calls_back_once_per_record_in_offset_order_per_partition() {
    const PARTITIONS: u32 = 8;
    const RECORDS: u64 = 4_000;
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "cb", "--partitions", &PARTITIONS.to_string()]);
    let address = broker.address();
    let (reports, stored) = run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        // Small batches, several in flight per partition: many pipelined requests.
        let config = ProducerConfig { batch_bytes: 512, ..producer_config() };
        let producer = Producer::new(client.clone(), config).unwrap();
        let reports = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        for i in 0..RECORDS {
            let partition = (i % u64::from(PARTITIONS)) as u32;
            let record = ProducerRecord::new("cb", message(i)).with_partition(partition);
            let reports = reports.clone();
            let sent_to = producer
                .send_with(record, move |outcome| reports.borrow_mut().push((i, outcome)))
                .await
                .unwrap();
            assert_eq!(sent_to, partition);
        }
        producer.flush().await.unwrap();
        let mut stored = Vec::new();
        for partition in 0..PARTITIONS {
            stored.push(read_partition(&client, "cb", partition).await);
        }
        let reports = reports.borrow_mut().drain(..).collect::<Vec<_>>();
        (reports, stored)
    });
    assert_eq!(reports.len() as u64, RECORDS, "one callback per record");
    let mut offsets: Vec<Vec<(i64, u64)>> = vec![Vec::new(); PARTITIONS as usize];
    for (i, outcome) in reports {
        let report = outcome.unwrap();
        assert_eq!(u64::from(report.partition), i % u64::from(PARTITIONS));
        offsets[report.partition as usize].push((report.offset, i));
    }
    for (partition, mut acknowledged) in offsets.into_iter().enumerate() {
        acknowledged.sort();
        // Sent in order, acknowledged at consecutive offsets in that order, stored as sent.
        for (n, (offset, i)) in acknowledged.iter().enumerate() {
            assert_eq!(*offset, n as i64, "partition {partition}");
            assert_eq!(stored[partition][n], (*offset, message(*i)), "partition {partition}");
        }
        assert_eq!(stored[partition].len(), acknowledged.len(), "nothing else stored");
    }
}

#[test]
fn on_request_reports_every_send_round_with_the_batches_it_carried() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "rq", "--partitions", "4"]);
    let address = broker.address();
    let (rounds, took_max, elapsed) = run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let producer = Producer::new(client, producer_config()).unwrap();
        let rounds = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = rounds.clone();
        producer.on_request(move |took, batches| seen.borrow_mut().push((took, batches)));
        let started = Instant::now();
        // One record, then a flush, three times: three rounds of one batch each.
        for i in 0..3 {
            producer.send(record("rq", message(i)).with_partition(0)).await.unwrap();
            producer.flush().await.unwrap();
        }
        assert_eq!(rounds.borrow().len(), 3, "one round per flushed record");
        // One record to each partition: four batches, in however many rounds.
        for partition in 0..4 {
            producer.send(record("rq", message(9)).with_partition(partition)).await.unwrap();
        }
        producer.flush().await.unwrap();
        let elapsed = started.elapsed();
        let rounds = rounds.borrow().clone();
        let took_max = rounds.iter().map(|r| r.0).max().unwrap();
        (rounds.iter().map(|r| r.1).collect::<Vec<_>>(), took_max, elapsed)
    });
    assert_eq!(rounds[..3], [1, 1, 1]);
    assert_eq!(rounds[3..].iter().sum::<usize>(), 4, "every batch reported once: {rounds:?}");
    assert!(took_max > Duration::ZERO && took_max <= elapsed, "{took_max:?} of {elapsed:?}");
}

#[test]
fn send_tagged_reports_every_record_once_to_the_delivery_observer_with_its_offset() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "tg", "--partitions", "2"]);
    let address = broker.address();
    let (reports, refused) = run(async move {
        let client = Client::connect(client_config(&address)).await.unwrap();
        let producer = Producer::new(client, producer_config()).unwrap();
        let reports = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = reports.clone();
        producer.on_delivery(move |tag, outcome| {
            let report = outcome.unwrap();
            seen.borrow_mut().push((tag, report.partition, report.offset));
        });
        for i in 0..2_000u64 {
            let record = record("tg", message(i)).with_partition((i % 2) as u32);
            producer.send_tagged(record, 1_000_000 + i).await.unwrap();
        }
        // Refused before it is buffered: an error here, nothing for the observer.
        let refused = producer.send_tagged(record("tg", message(0)).with_partition(7), 5).await;
        producer.flush().await.unwrap();
        let reports = reports.borrow().clone();
        (reports, refused)
    });
    assert!(refused.is_err());
    assert_eq!(reports.len(), 2_000, "every tagged record reported once");
    let mut tags: Vec<u64> = reports.iter().map(|r| r.0).collect();
    tags.sort_unstable();
    assert_eq!(tags, (1_000_000..1_002_000).collect::<Vec<_>>());
    // Tags follow send order per partition, at offsets 0, 1, 2, ...
    for (tag, partition, offset) in reports {
        let i = tag - 1_000_000;
        assert_eq!(partition, (i % 2) as u32);
        assert_eq!(offset, (i / 2) as i64, "tag {tag}");
    }
}
