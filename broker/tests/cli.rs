//! Black-box tests: the real `spate` binary, a real broker process on loopback, real disks.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.is_empty()).collect()
}

#[test]
fn keyed_messages_keep_partition_and_order_with_dense_offsets() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "orders", "--partitions", "4"]);
    let input: String = (0..200).map(|i| format!("user-{}:event-{i}\n", i % 7)).collect();
    let output = broker.cli_with_input(
        &["produce", "orders", "--key-separator", ":", "--print-offsets"],
        Some(input.as_bytes()),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let acks: Vec<(u32, i64)> = lines(std::str::from_utf8(&output.stdout).unwrap())
        .iter()
        .map(|l| {
            let (p, o) = l.split_once('\t').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(acks.len(), 200);
    // Same key, same partition.
    let mut partition_of_key = HashMap::new();
    for (i, (partition, _)) in acks.iter().enumerate() {
        assert_eq!(
            *partition_of_key.entry(i % 7).or_insert(*partition),
            *partition,
            "key user-{}",
            i % 7
        );
    }
    // Offsets dense from 0 within each partition, in input order.
    let mut next: HashMap<u32, i64> = HashMap::new();
    for (partition, offset) in &acks {
        let expected = next.entry(*partition).or_insert(0);
        assert_eq!(offset, expected);
        *expected += 1;
    }
    // Per-key order kept, as read back.
    let consumed = broker.ok(&["consume", "orders", "--format", "%k %v\\n", "--timeout-ms", "500"]);
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    let mut count = 0;
    for line in lines(&consumed) {
        let (key, value) = line.split_once(' ').unwrap();
        let n: i64 = value.trim_start_matches("event-").parse().unwrap();
        let previous = last_seen.insert(key.to_string(), n);
        assert!(previous.is_none_or(|p| p < n), "key {key}: {previous:?} then {n}");
        count += 1;
    }
    assert_eq!(count, 200);
    // `offsets` agrees with what was produced.
    let offsets = broker.ok(&["offsets", "orders"]);
    for line in lines(&offsets) {
        let fields: Vec<i64> = line.split('\t').map(|f| f.parse().unwrap()).collect();
        assert_eq!(fields[1], 0);
        assert_eq!(fields[2], *next.get(&(fields[0] as u32)).unwrap_or(&0));
    }
}

#[test]
fn replay_from_offset_and_timestamp() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t", "--partitions", "1"]);
    let first: String = (0..10).map(|i| format!("early-{i}\n")).collect();
    assert!(broker.cli_with_input(&["produce", "t"], Some(first.as_bytes())).status.success());
    std::thread::sleep(Duration::from_millis(30));
    let boundary =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    std::thread::sleep(Duration::from_millis(30));
    let second: String = (0..5).map(|i| format!("late-{i}\n")).collect();
    assert!(broker.cli_with_input(&["produce", "t"], Some(second.as_bytes())).status.success());

    let from_offset =
        broker.ok(&["consume", "t", "--from", "7", "--format", "%o:%v\\n", "--timeout-ms", "300"]);
    assert_eq!(
        lines(&from_offset),
        vec![
            "7:early-7",
            "8:early-8",
            "9:early-9",
            "10:late-0",
            "11:late-1",
            "12:late-2",
            "13:late-3",
            "14:late-4"
        ]
    );
    let from_time =
        broker.ok(&["consume", "t", "--from", &format!("@{boundary}"), "--timeout-ms", "300"]);
    assert_eq!(lines(&from_time), vec!["late-0", "late-1", "late-2", "late-3", "late-4"]);
    let counted = broker.ok(&["consume", "t", "--count", "3"]);
    assert_eq!(lines(&counted), vec!["early-0", "early-1", "early-2"]);
    assert_eq!(lines(&broker.ok(&["offsets", "t"])), vec!["0\t0\t15"]);
    // Headers and the timestamp placeholder.
    let input = b"with-header\n";
    assert!(broker
        .cli_with_input(&["produce", "t", "--header", "origin=test"], Some(input))
        .status
        .success());
    let shown = broker.ok(&[
        "consume",
        "t",
        "--from",
        "15",
        "--format",
        "%h|%v|%T\\n",
        "--timeout-ms",
        "300",
    ]);
    let line = lines(&shown)[0].to_string();
    assert!(line.starts_with("origin=test|with-header|"), "{line}");
}

#[test]
fn errors_are_one_clear_line_and_non_zero() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    let unknown = broker.cli(&["consume", "missing", "--timeout-ms", "100"]);
    assert!(!unknown.status.success());
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("missing") && message.lines().count() == 1, "{message}");
    let bad_name = broker.cli(&["topic", "create", "bad name"]);
    assert!(!bad_name.status.success());
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("invalid"));
    let bad_config = broker.cli(&["topic", "create", "x", "--config", "flush=sometimes"]);
    assert!(!bad_config.status.success());
    broker.ok(&["topic", "create", "x"]);
    let duplicate = broker.cli(&["topic", "create", "x"]);
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    // Unreachable broker.
    let output = std::process::Command::new(SPATE)
        .args(["topic", "list", "-b", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach broker"));
}

/// Sends raw bytes and returns whatever comes back before the broker closes or goes quiet.
fn raw_exchange(address: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    // Bounded by the read timeout and the broker closing.
    while let Ok(n) = stream.read(&mut buffer) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buffer[..n]);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
}

/// The broker's metrics page (Prometheus text), from its `--metrics-listen` address.
fn scrape_metrics(address: &str) -> String {
    let response = raw_exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    String::from_utf8(response).unwrap()
}

/// The values of every sample of metric `name` (any labels) on a metrics page.
fn metric_values<'a>(text: &'a str, name: &'a str) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(move |l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
}

fn error_code_of(response: &[u8]) -> spate_protocol::wire::ErrorCode {
    let mut buffer = bytes::BytesMut::from(response);
    let frame = spate_protocol::frame::FrameDecoder::default()
        .decode(&mut buffer)
        .unwrap()
        .expect("a whole response");
    spate_protocol::codec::decode_response(&frame.header).unwrap().error_code()
}

#[test]
fn garbage_truncated_oversized_and_stalled_connections_do_not_hurt_others() {
    use spate_protocol::wire::ErrorCode;
    let dir = temp_dir();
    let broker = Broker::start_on(dir.path(), free_ports(), &["--frame-read-timeout-ms", "500"]);
    broker.ok(&["topic", "create", "t"]);
    let address = broker.address();
    // A whole frame whose flatbuffer is garbage: a typed error, and the connection stays usable.
    let mut garbage = spate_protocol::frame::prefix(16, 0).unwrap().to_vec();
    garbage.extend_from_slice(&[0xAB; 16]);
    let response = raw_exchange(&address, &garbage);
    assert_eq!(error_code_of(&response), ErrorCode::CorruptMessage);
    // An oversized length prefix: MessageTooLarge, then the broker closes.
    let oversized = [0xFF, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0];
    assert_eq!(error_code_of(&raw_exchange(&address, &oversized)), ErrorCode::MessageTooLarge);
    // Inconsistent lengths.
    let inconsistent = [8, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(error_code_of(&raw_exchange(&address, &inconsistent)), ErrorCode::CorruptMessage);
    // A truncated frame and a stalled, half-open connection: nothing comes back, others are served.
    let mut stalled = TcpStream::connect(&address).unwrap();
    stalled.write_all(&spate_protocol::frame::prefix(1000, 0).unwrap()).unwrap();
    stalled.write_all(&[1; 10]).unwrap();
    let mut half_open = TcpStream::connect(&address).unwrap();
    half_open.write_all(&[5]).unwrap();
    half_open.shutdown(std::net::Shutdown::Write).unwrap();
    // Random garbage from many connections at once.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20 {
        let noise: Vec<u8> = (0..300)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = raw_exchange(&address, &noise);
    }
    // The broker still serves everyone else.
    let output =
        broker.cli_with_input(&["produce", "t", "--print-offsets"], Some(b"still alive\n"));
    assert!(output.status.success());
    assert_eq!(lines(&broker.ok(&["consume", "t", "--timeout-ms", "300"])), vec!["still alive"]);
    // The stalled peer is cut once it has sat mid-frame past the frame read timeout: its read
    // ends (EOF or reset) instead of hanging.
    let cut_started = Instant::now();
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buffer = [0u8; 64];
    match stalled.read(&mut buffer) {
        Ok(0) => {}
        Ok(n) => panic!("a stalled peer got {n} bytes instead of being cut"),
        Err(error) => assert!(
            error.kind() == std::io::ErrorKind::ConnectionReset,
            "not cut within 10 s: {error}"
        ),
    }
    assert!(cut_started.elapsed() < Duration::from_secs(10));
}

#[test]
fn sigterm_exits_zero_and_keeps_everything_acknowledged() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "t", "--partitions", "2", "--config", "flush=interval:100"]);
    let input: String = (0..500).map(|i| format!("m{i}\n")).collect();
    let output =
        broker.cli_with_input(&["produce", "t", "--print-offsets"], Some(input.as_bytes()));
    assert!(output.status.success());
    let acked = lines(std::str::from_utf8(&output.stdout).unwrap()).len();
    assert_eq!(acked, 500);
    let status = broker.sigterm();
    assert!(status.success(), "exit status {status}");
    let broker = Broker::start_on(dir.path(), port, &[]);
    let consumed = broker.ok(&["consume", "t", "--timeout-ms", "300"]);
    let mut values: Vec<&str> = lines(&consumed);
    values.sort_unstable();
    let mut expected: Vec<String> = (0..500).map(|i| format!("m{i}")).collect();
    expected.sort_unstable();
    assert_eq!(values, expected);
}

#[test]
fn topics_configs_and_shards_are_described_and_survive_restart() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "a", "--partitions", "3", "--config", "retention.ms=60000"]);
    broker.ok(&["topic", "create", "b", "--partitions", "1"]);
    assert_eq!(
        lines(&broker.ok(&["topic", "list"]))
            .iter()
            .map(|l| l.split('\t').next().unwrap())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    broker.ok(&["topic", "alter", "a", "--config", "flush=always"]);
    let described = broker.ok(&["topic", "describe", "a"]);
    assert!(
        described.contains("retention.ms=60000") && described.contains("flush=always"),
        "{described}"
    );
    assert!(
        described.contains("partition 0\tshard 0") && described.contains("partition 1\tshard 1"),
        "{described}"
    );
    broker.sigkill();
    let broker = Broker::start_on(dir.path(), port, &[]);
    let after = broker.ok(&["topic", "describe", "a"]);
    assert_eq!(after, described);
    broker.ok(&["topic", "delete", "b"]);
    assert_eq!(lines(&broker.ok(&["topic", "list"])).len(), 1);
    assert!(!dir.path().join("b").exists());
}

#[test]
fn a_layout_file_places_partitions_on_the_planned_shards() {
    let dir = temp_dir();
    let layout = dir.path().with_extension("layout.toml");
    std::fs::write(&layout, "[topics.planned]\nshards = [1, 1, 0]\n").unwrap();
    let broker =
        Broker::start_on(dir.path(), free_ports(), &["--layout", layout.to_str().unwrap()]);
    broker.ok(&["topic", "create", "planned", "--partitions", "3"]);
    let described = broker.ok(&["topic", "describe", "planned"]);
    for expected in ["partition 0\tshard 1", "partition 1\tshard 1", "partition 2\tshard 0"] {
        assert!(described.contains(expected), "{described}");
    }
}

#[test]
fn group_offsets_resume_and_survive_kill_9() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "t", "--partitions", "2"]);
    let input: String = (0..20).map(|i| format!("v{i}\n")).collect();
    assert!(broker.cli_with_input(&["produce", "t"], Some(input.as_bytes())).status.success());
    let first = broker.ok(&["consume", "t", "--group", "g", "--count", "8", "--timeout-ms", "500"]);
    assert_eq!(lines(&first).len(), 8);
    broker.sigkill();
    let broker = Broker::start_on(dir.path(), port, &[]);
    let rest = broker.ok(&["consume", "t", "--group", "g", "--timeout-ms", "500"]);
    let mut all: Vec<&str> = lines(&first);
    all.extend(lines(&rest));
    all.sort_unstable();
    let mut expected: Vec<String> = (0..20).map(|i| format!("v{i}")).collect();
    expected.sort_unstable();
    assert_eq!(all, expected, "each message exactly once across the two runs");
}

#[test]
fn metadata_advertises_shard_addresses_that_serve_directly() {
    let dir = temp_dir();
    let port = free_ports();
    let metrics = format!("127.0.0.1:{}", port + 3);
    let broker = Broker::start_on(dir.path(), port, &["--metrics-listen", &metrics]);
    broker.ok(&["topic", "create", "t", "--partitions", "2"]);
    // Talk to shard 1's own port only: it serves its partition, and forwards the other.
    let shard_port = broker.port + 2;
    let output = std::process::Command::new(SPATE)
        .args(["offsets", "t", "-b", &format!("127.0.0.1:{shard_port}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(lines(std::str::from_utf8(&output.stdout).unwrap()), vec!["0\t0\t0", "1\t0\t0"]);
    let started = Instant::now();
    assert!(broker
        .cli_with_input(&["produce", "t", "--partition", "0"], Some(b"x\n"))
        .status
        .success());
    assert!(started.elapsed() < Duration::from_secs(10));
    // The client went straight to the owning shard: only it counted a produce request.
    let described = broker.ok(&["topic", "describe", "t"]);
    let owner = described
        .lines()
        .find_map(|l| l.strip_prefix("partition 0\tshard "))
        .and_then(|rest| rest.split('\t').next())
        .expect("partition 0's shard")
        .to_string();
    let text = scrape_metrics(&metrics);
    let produces = |shard: &str| -> u64 {
        let prefix = format!("spate_requests_total{{shard=\"{shard}\",api=\"Produce\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse().ok())
            .expect("a produce counter per shard")
    };
    let other = if owner == "0" { "1" } else { "0" };
    assert_eq!((produces(&owner), produces(other)), (1, 0), "{text}");
}

#[test]
fn metrics_endpoint_reports_requests_latency_and_partitions() {
    let dir = temp_dir();
    let port = free_ports();
    // free_ports reserves port..=port+3: the client port, two shard ports, and this one.
    let metrics = format!("127.0.0.1:{}", port + 3);
    let broker = Broker::start_on(dir.path(), port, &["--metrics-listen", &metrics]);
    broker.ok(&["topic", "create", "m", "--partitions", "2"]);
    let input: String = (0..10).map(|i| format!("x{i}\n")).collect();
    assert!(broker
        .cli_with_input(&["produce", "m", "--partition", "1"], Some(input.as_bytes()))
        .status
        .success());
    broker.ok(&["consume", "m", "--timeout-ms", "200"]);
    let text = scrape_metrics(&metrics);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("# TYPE spate_produce_latency_seconds histogram"));
    for shard in ["0", "1"] {
        assert!(
            text.contains(&format!("spate_received_bytes_total{{shard=\"{shard}\"}}")),
            "{text}"
        );
    }
    assert!(
        text.contains("spate_partition_high_watermark{topic=\"m\",partition=\"1\",shard=\"1\"} 10"),
        "{text}"
    );
    let produce_count: u64 = text
        .lines()
        .filter(|l| l.starts_with("spate_requests_total{") && l.contains("api=\"Produce\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(produce_count >= 1);
}

#[test]
fn a_broker_paused_mid_run_reports_an_executor_stall() {
    let dir = temp_dir();
    let port = free_ports();
    let metrics = format!("127.0.0.1:{}", port + 3);
    let broker = Broker::start_on(dir.path(), port, &["--metrics-listen", &metrics]);
    let scrape = || {
        let text = scrape_metrics(&metrics);
        let stalls: f64 = metric_values(&text, "spate_executor_stalls_total").sum();
        (stalls, text)
    };
    let (before, text) = scrape();
    assert!(text.contains("# TYPE spate_executor_stalls_total counter"), "{text}");
    // Every shard's executor is held, as a long synchronous step would hold one: the ticker
    // wakes a second late and says so.
    let pid = broker.child.as_ref().expect("running").id() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(1_000));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (after, text) = loop {
        let (after, text) = scrape();
        if after > before || Instant::now() > deadline {
            break (after, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(after > before, "no stall counted: {text}");
    let longest = metric_values(&text, "spate_executor_stall_seconds_max").fold(0.0, f64::max);
    assert!(longest >= 0.5, "longest stall {longest} s: {text}");
}

#[test]
fn a_layout_generated_by_spate_tune_places_partitions_on_the_planned_shards() {
    let dir = temp_dir();
    let layout = dir.path().with_extension("tuned.toml");
    // Unequal loads: the heavy partition gets a shard to itself, the three light ones share the
    // other, unlike the broker's own round-robin spread.
    let output = std::process::Command::new(SPATE)
        .args(["tune", "layout", "--topics", "big:1@100,small:3@1", "--cpuset", "0-1", "--output"])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(&layout).unwrap();
    assert!(text.contains("cpuset = \"0,1\""), "{text}");
    assert!(text.contains("shards = [1, 1, 1]"), "{text}");
    let broker =
        Broker::start_on(dir.path(), free_ports(), &["--layout", layout.to_str().unwrap()]);
    broker.ok(&["topic", "create", "small", "--partitions", "3"]);
    broker.ok(&["topic", "create", "big", "--partitions", "1"]);
    let small = broker.ok(&["topic", "describe", "small"]);
    for partition in 0..3 {
        assert!(small.contains(&format!("partition {partition}\tshard 1")), "{small}");
    }
    assert!(broker.ok(&["topic", "describe", "big"]).contains("partition 0\tshard 0"));
    let check =
        std::process::Command::new(SPATE).args(["tune", "check", "--json"]).output().unwrap();
    assert!(check.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.get("status").is_some() && r.get("fix").is_some()));
}

/// A verifier-valid produce request whose two partitions share one records vector (flatc never
/// writes this, an attacker can): the broker answers and keeps serving.
#[test]
fn a_crafted_produce_request_sharing_one_vector_is_answered_not_fatal() {
    use spate_protocol::wire;
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t", "--partitions", "2"]);
    let mut batch = spate_protocol::batch::BatchBuilder::new();
    batch.push(&spate_protocol::batch::NewRecord {
        value: Some(bytes::Bytes::from_static(b"shared")),
        ..Default::default()
    });
    let batch = batch.finish().unwrap();
    let mut builder = flatbuffers::FlatBufferBuilder::new();
    let records = builder.create_vector(&batch[..]);
    let partitions: Vec<_> = (0..2)
        .map(|p| {
            wire::ProducePartition::create(
                &mut builder,
                &wire::ProducePartitionArgs { partition: p, records: Some(records) },
            )
        })
        .collect();
    let partitions = builder.create_vector(&partitions);
    let name = builder.create_string("t");
    let topic = wire::ProduceTopic::create(
        &mut builder,
        &wire::ProduceTopicArgs { name: Some(name), partitions: Some(partitions) },
    );
    let topics = builder.create_vector(&[topic]);
    let body = wire::ProduceRequest::create(
        &mut builder,
        &wire::ProduceRequestArgs { acks: wire::Acks::All, timeout_ms: 5000, topics: Some(topics) },
    );
    let request = wire::Request::create(
        &mut builder,
        &wire::RequestArgs {
            correlation_id: 7,
            client_id: None,
            api_version: 0,
            body_type: wire::RequestBody::ProduceRequest,
            body: Some(body.as_union_value()),
        },
    );
    builder.finish_minimal(request);
    let frame = spate_protocol::frame::encode(builder.finished_data()).unwrap();
    let response = raw_exchange(&broker.address(), &frame);
    assert_eq!(error_code_of(&response), wire::ErrorCode::None);
    // Both partitions got the record; the broker is still serving.
    assert_eq!(lines(&broker.ok(&["offsets", "t"])), vec!["0\t0\t1", "1\t0\t1"]);
}

/// `spate produce` sends each line as it is typed: with stdin still open, a line's offset is
/// printed and the message is readable before the next line arrives.
#[test]
fn interactive_produce_sends_each_line_before_the_next_arrives() {
    use std::io::{BufRead, Write};
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "chat", "--partitions", "1"]);
    let mut child = std::process::Command::new(SPATE)
        .args(["produce", "chat", "--print-offsets", "-b", &broker.address()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (printed, offsets) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if printed.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    for (i, text) in ["hello", "world"].iter().enumerate() {
        writeln!(stdin, "{text}").unwrap();
        stdin.flush().unwrap();
        let offset = offsets.recv_timeout(Duration::from_secs(10)).expect("offset printed");
        assert_eq!(offset, format!("0\t{i}"));
        let read = broker.ok(&["consume", "chat", "--from", "earliest", "--timeout-ms", "200"]);
        assert_eq!(read.lines().last(), Some(*text), "{read}");
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// A long-polling fetch sent to one shard for partitions of both shards wakes when data lands on
/// either: the other shard's partition through its owner's wake-up. The fetch may wait 30 s;
/// it must answer long before (the test gives it 15 s), with the record.
#[test]
fn a_long_poll_through_one_shard_wakes_for_either_shards_partition() {
    use spate_client::client::FetchTarget;
    use spate_client::{Client, ClientConfig, Producer, ProducerRecord, LATEST};
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "lp", "--partitions", "2"]);
    let address = broker.address();
    run(async move {
        let config = ClientConfig {
            bootstrap: address,
            use_shard_addresses: false,
            ..ClientConfig::default()
        };
        let client = Client::connect(config).await.unwrap();
        let producer = Producer::new(client.clone(), Default::default()).unwrap();
        // Before the long poll: its InitProducerId would wait behind the poll on the one
        // connection, and the poll for the record the producer cannot send yet.
        producer.init().await.unwrap();
        // Whichever shard holds the connection, one of the two partitions is the other's.
        for written in 0..2u32 {
            let mut targets = Vec::new();
            for partition in 0..2u32 {
                let end = client.list_offset("lp", partition, LATEST).await.unwrap().unwrap();
                targets.push(FetchTarget {
                    topic: "lp".into(),
                    partition,
                    offset: end,
                    max_bytes: 1 << 20,
                });
            }
            let fetch = async {
                Some(client.fetch(&targets, Duration::from_secs(30), 1, 1 << 20).await.unwrap())
            };
            let produce = async {
                glommio::timer::sleep(Duration::from_millis(300)).await;
                let record = ProducerRecord::new("lp", "late").with_partition(written);
                producer.send(record).await.unwrap().await.unwrap();
                glommio::timer::sleep(Duration::from_secs(15)).await;
                None
            };
            let fetched = futures_lite::future::or(fetch, produce)
                .await
                .expect("the fetch answered when the record landed, not at its deadline");
            let got = fetched.iter().find(|f| f.partition == written).unwrap();
            assert!(!got.records.is_empty(), "partition {written}: {fetched:?}");
        }
        producer.close().await.unwrap();
    });
}

#[test]
fn a_restart_with_fewer_cores_serves_every_partition() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "wide", "--partitions", "4"]);
    let described = broker.ok(&["topic", "describe", "wide"]);
    assert!(described.contains("shard 1"), "spread over both shards: {described}");
    let input: String = (0..40).map(|i| format!("k{i}:v{i}\n")).collect();
    let produced =
        broker.cli_with_input(&["produce", "wide", "--key-separator", ":"], Some(input.as_bytes()));
    assert!(produced.status.success());
    assert!(broker.sigterm().success());
    let broker = Broker::start_with_cores(dir.path(), port, 1, &[]);
    let described = broker.ok(&["topic", "describe", "wide"]);
    assert_eq!(described.matches("shard 0").count(), 4, "{described}");
    let consumed = broker.ok(&["consume", "wide", "--timeout-ms", "500"]);
    assert_eq!(lines(&consumed).len(), 40, "every message readable: {consumed}");
    let log = std::fs::read_to_string(&broker.log).unwrap();
    assert!(log.contains("reassigned to running shards"), "{log}");
}

#[test]
fn group_ids_that_would_break_metrics_are_refused_with_a_clear_error() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "t"]);
    for group in ["bad\"group", "new\nline", ""] {
        let output = broker.cli(&["consume", "t", "--group", group, "--timeout-ms", "200"]);
        assert!(!output.status.success(), "group {group:?} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("is invalid") || stderr.contains("needs a group id"),
            "{group:?}: {stderr}"
        );
    }
    // Commits outside membership are checked too.
    let output = broker.cli(&["group", "reset-offsets", "a b", "--topic", "t", "--to", "earliest"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("InvalidRequest"));
}
