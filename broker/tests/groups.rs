//! The group APIs through a real broker: driven with the client's raw calls, with the client's
//! `GroupConsumer`, and with `spate consume --group` processes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use spate_client::{Client, ClientConfig, ClientError};
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

/// A join of `group` subscribing to `orders`, with a 3 s rebalance timeout.
fn join(group: &str, member: Option<&str>, assignor: &str) -> RequestBodyT {
    join_to(group, member, assignor, "orders", 3_000)
}

fn join_to(
    group: &str,
    member: Option<&str>,
    assignor: &str,
    topic: &str,
    rebalance_timeout_ms: i32,
) -> RequestBodyT {
    RequestBodyT::JoinGroupRequest(Box::new(wire::JoinGroupRequestT {
        group_id: Some(group.into()),
        session_timeout_ms: 6_000,
        rebalance_timeout_ms,
        member_id: member.map(str::to_string),
        group_instance_id: None,
        protocol_type: Some("consumer".into()),
        protocols: Some(vec![wire::GroupProtocolT {
            name: Some(assignor.into()),
            metadata: Some(topic.as_bytes().to_vec()),
        }]),
    }))
}

fn sync(group: &str, member: &str, generation: i32) -> RequestBodyT {
    RequestBodyT::SyncGroupRequest(Box::new(wire::SyncGroupRequestT {
        group_id: Some(group.into()),
        generation_id: generation,
        member_id: Some(member.to_string()),
        group_instance_id: None,
        assignments: None,
    }))
}

/// `topic:partition` items of an assignment, as a set.
fn assignment_set(text: &str) -> BTreeSet<String> {
    text.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The assignment a SyncGroup response carries.
fn synced(response: &wire::SyncGroupResponseT) -> BTreeSet<String> {
    assignment_set(std::str::from_utf8(response.assignment.as_deref().unwrap_or_default()).unwrap())
}

async fn call(client: &Client, body: RequestBodyT) -> Result<ResponseBodyT, ClientError> {
    client.call(body).await
}

/// Joins, then heartbeats/rejoins/syncs every member until all have a stable assignment.
async fn settle(
    client: &Client,
    group: &str,
    members: &mut [(String, i32)],
) -> Vec<BTreeSet<String>> {
    let started = Instant::now();
    // Bounded: 20 s.
    while started.elapsed() < Duration::from_secs(20) {
        let mut assignments = Vec::new();
        for (member, generation) in members.iter_mut() {
            match call(client, sync(group, member, *generation)).await {
                Ok(ResponseBodyT::SyncGroupResponse(response)) => {
                    assignments.push(synced(&response));
                }
                Err(error) if rebalance_error(&error) => {
                    if let Ok(ResponseBodyT::JoinGroupResponse(joined)) =
                        call(client, join(group, Some(member), "range")).await
                    {
                        *generation = joined.generation_id;
                    }
                }
                other => panic!("sync: {other:?}"),
            }
        }
        if assignments.len() == members.len() {
            return assignments;
        }
        glommio::timer::sleep(Duration::from_millis(150)).await;
    }
    panic!("the group did not settle");
}

#[test]
fn members_split_partitions_and_a_stale_generation_cannot_commit() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "orders", "--partitions", "6"]);
    let address = broker.address();
    run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let ResponseBodyT::FindCoordinatorResponse(coordinator) = call(
            &client,
            RequestBodyT::FindCoordinatorRequest(Box::new(wire::FindCoordinatorRequestT {
                key: Some("billing".into()),
                key_type: wire::CoordinatorType::Group,
            })),
        )
        .await
        .unwrap() else {
            panic!("find coordinator")
        };
        assert!(coordinator.shard < 2 && coordinator.shard_port > 0);
        let mut members = Vec::new();
        for _ in 0..2 {
            let ResponseBodyT::JoinGroupResponse(joined) =
                call(&client, join("billing", None, "range")).await.unwrap()
            else {
                panic!()
            };
            members.push((joined.member_id.unwrap(), joined.generation_id));
        }
        let assignments = settle(&client, "billing", &mut members).await;
        let all: BTreeSet<String> = assignments.iter().flatten().cloned().collect();
        assert_eq!(all.len(), 6, "{assignments:?}");
        assert!(assignments.iter().all(|a| a.len() == 3), "{assignments:?}");
        let old_generation = members[0].1;
        // A third member joins: everyone rebalances to two partitions each.
        let ResponseBodyT::JoinGroupResponse(joined) =
            call(&client, join("billing", None, "range")).await.unwrap()
        else {
            panic!()
        };
        members.push((joined.member_id.unwrap(), joined.generation_id));
        let assignments = settle(&client, "billing", &mut members).await;
        assert!(assignments.iter().all(|a| a.len() == 2), "{assignments:?}");
        // A commit at the old generation is fenced; at the current one it is accepted.
        let commit = |generation: i32, member: &str| {
            RequestBodyT::OffsetCommitRequest(Box::new(wire::OffsetCommitRequestT {
                group_id: Some("billing".into()),
                generation_id: generation,
                member_id: Some(member.to_string()),
                group_instance_id: None,
                topics: Some(vec![wire::OffsetCommitTopicT {
                    name: Some("orders".into()),
                    partitions: Some(vec![wire::OffsetCommitPartitionT {
                        partition: 0,
                        offset: 5,
                        metadata: None,
                    }]),
                }]),
            }))
        };
        let result_code = |response: ResponseBodyT| match response {
            ResponseBodyT::OffsetCommitResponse(r) => {
                r.topics.unwrap()[0].partitions.as_ref().unwrap()[0].error_code
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            result_code(call(&client, commit(old_generation, &members[0].0)).await.unwrap()),
            ErrorCode::IllegalGeneration
        );
        assert_eq!(
            result_code(call(&client, commit(members[0].1, &members[0].0)).await.unwrap()),
            ErrorCode::None
        );
        // List and describe.
        let ResponseBodyT::ListGroupsResponse(listed) =
            call(&client, RequestBodyT::ListGroupsRequest(Box::default())).await.unwrap()
        else {
            panic!()
        };
        assert_eq!(listed.groups.unwrap()[0].group_id.as_deref(), Some("billing"));
        let described = call(
            &client,
            RequestBodyT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
                groups: Some(vec!["billing".into()]),
            })),
        )
        .await
        .unwrap();
        let ResponseBodyT::DescribeGroupsResponse(described) = described else { panic!() };
        let group = &described.groups.unwrap()[0];
        assert_eq!(group.state.as_deref(), Some("Stable"));
        assert_eq!(group.members.as_ref().unwrap().len(), 3);
    });
}

#[test]
fn group_cli_lists_describes_with_lag_and_resets_only_an_empty_group() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "orders", "--partitions", "2"]);
    let input: String = (0..10).map(|i| format!("m{i}\n")).collect();
    assert!(broker
        .cli_with_input(&["produce", "orders", "--partition", "0"], Some(input.as_bytes()))
        .status
        .success());
    let address = broker.address();
    let member = run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let ResponseBodyT::JoinGroupResponse(joined) =
            call(&client, join("reports", None, "range")).await.unwrap()
        else {
            panic!()
        };
        let mut members = vec![(joined.member_id.unwrap(), joined.generation_id)];
        settle(&client, "reports", &mut members).await;
        let (member, generation) = members[0].clone();
        let commit = RequestBodyT::OffsetCommitRequest(Box::new(wire::OffsetCommitRequestT {
            group_id: Some("reports".into()),
            generation_id: generation,
            member_id: Some(member.clone()),
            group_instance_id: None,
            topics: Some(vec![wire::OffsetCommitTopicT {
                name: Some("orders".into()),
                partitions: Some(vec![wire::OffsetCommitPartitionT {
                    partition: 0,
                    offset: 4,
                    metadata: None,
                }]),
            }]),
        }));
        call(&client, commit).await.unwrap();
        member
    });
    let listed = broker.ok(&["group", "list"]);
    assert!(listed.contains("reports\tStable"), "{listed}");
    let described = broker.ok(&["group", "describe", "reports"]);
    assert!(described.contains("state Stable") && described.contains("members 1"), "{described}");
    // Lag = log end - committed offset.
    assert!(described.contains("orders\t0\t4\t10\t6\t"), "{described}");
    // Resetting offsets of a group with members is refused, clearly.
    let refused =
        broker.cli(&["group", "reset-offsets", "reports", "--topic", "orders", "--to", "earliest"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("active members"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // Once the member leaves, the group is empty and the reset goes through.
    let address = broker.address();
    run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let leave = RequestBodyT::LeaveGroupRequest(Box::new(wire::LeaveGroupRequestT {
            group_id: Some("reports".into()),
            members: Some(vec![wire::MemberIdentityT {
                member_id: Some(member),
                group_instance_id: None,
            }]),
        }));
        call(&client, leave).await.unwrap();
    });
    let reset =
        broker.ok(&["group", "reset-offsets", "reports", "--topic", "orders", "--to", "latest"]);
    assert!(reset.contains("orders\t0\t10"), "{reset}");
    assert!(broker.ok(&["group", "describe", "reports"]).contains("orders\t0\t10\t10\t0\t"));
}

#[test]
fn consumer_lag_is_on_the_metrics_endpoint() {
    let dir = temp_dir();
    let port = free_ports();
    let metrics = format!("127.0.0.1:{}", port + 3);
    let broker = Broker::start_on(dir.path(), port, &["--metrics-listen", &metrics]);
    broker.ok(&["topic", "create", "lagging", "--partitions", "1"]);
    let input: String = (0..10).map(|i| format!("m{i}\n")).collect();
    assert!(broker
        .cli_with_input(&["produce", "lagging"], Some(input.as_bytes()))
        .status
        .success());
    broker.ok(&["group", "reset-offsets", "slow", "--topic", "lagging", "--to", "3"]);
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&metrics).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.read_to_string(&mut text);
    assert!(
        text.contains("spate_consumer_lag{group=\"slow\",topic=\"lagging\",partition=\"0\"} 7"),
        "{text}"
    );
}

/// Three `spate consume --group` processes on a 6-partition topic: each partition read by
/// exactly one of them and no message twice while membership is stable; after one is SIGKILLed,
/// its partitions move to the others within the session timeout and every produced message is
/// consumed at least once.
#[test]
fn three_cli_consumers_share_partitions_and_survive_a_killed_member() {
    use std::collections::{BTreeMap, HashSet};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "work", "--partitions", "6"]);
    let seen: Arc<Mutex<Vec<(usize, u32, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut children = Vec::new();
    for index in 0..3 {
        let mut child = Command::new(SPATE)
            .args(["consume", "work", "--group", "workers", "--follow", "--format", "%p %o\\n"])
            .args(["--session-timeout-ms", "2000", "--timeout-ms", "100", "-b", &broker.address()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut parts = line.split(' ');
                if let (Some(p), Some(o)) = (
                    parts.next().and_then(|p| p.parse().ok()),
                    parts.next().and_then(|o| o.parse().ok()),
                ) {
                    seen.lock().unwrap().push((index, p, o));
                }
            }
        });
        children.push(child);
    }
    // Wait (bounded) for a stable group of three.
    let started = Instant::now();
    loop {
        let described = broker.ok(&["group", "describe", "workers"]);
        if described.contains("state Stable") && described.contains("members 3") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "group never stabilized: {described}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let produce = |from: usize| -> Vec<(u32, i64)> {
        let input: String = (from..from + 600).map(|i| format!("k{}:v{i}\n", i % 60)).collect();
        let output = broker.cli_with_input(
            &["produce", "work", "--key-separator", ":", "--print-offsets"],
            Some(input.as_bytes()),
        );
        assert!(output.status.success());
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (p, o) = l.split_once('\t').unwrap();
                (p.parse().unwrap(), o.parse().unwrap())
            })
            .collect()
    };
    let wait_for = |wanted: &[(u32, i64)]| {
        let started = Instant::now();
        loop {
            let got: HashSet<(u32, i64)> =
                seen.lock().unwrap().iter().map(|(_, p, o)| (*p, *o)).collect();
            if wanted.iter().all(|w| got.contains(w)) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "not everything was consumed");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = produce(0);
    wait_for(&first);
    {
        let seen = seen.lock().unwrap();
        let mut reader_of: BTreeMap<u32, usize> = BTreeMap::new();
        let mut once = HashSet::new();
        for (index, partition, offset) in seen.iter() {
            assert_eq!(
                *reader_of.entry(*partition).or_insert(*index),
                *index,
                "partition {partition} read by two members"
            );
            assert!(
                once.insert((*partition, *offset)),
                "{partition}/{offset} consumed twice while membership was stable"
            );
        }
        let readers: HashSet<usize> = reader_of.values().copied().collect();
        assert_eq!(readers.len(), 3, "every member got partitions: {reader_of:?}");
    }
    // Kill one member without warning; the others take over its partitions.
    children[0].kill().unwrap();
    children[0].wait().unwrap();
    let second = produce(600);
    wait_for(&second);
    let seen = seen.lock().unwrap();
    for (index, partition, offset) in seen.iter() {
        if second.contains(&(*partition, *offset)) {
            assert_ne!(*index, 0, "the killed member cannot have read new messages");
        }
    }
    drop(seen);
    for child in &mut children[1..] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn group_delete_is_refused_with_members_and_durable_once_done() {
    let dir = temp_dir();
    let port = free_ports();
    let mut broker = Broker::start_on(dir.path(), port, &[]);
    broker.ok(&["topic", "create", "d", "--partitions", "1"]);
    assert!(broker.cli_with_input(&["produce", "d"], Some(b"a\nb\nc\n")).status.success());
    broker.ok(&["group", "reset-offsets", "gone", "--topic", "d", "--to", "2"]);
    broker.ok(&["group", "reset-offsets", "kept", "--topic", "d", "--to", "1"]);
    // A live member blocks deletion.
    let address = broker.address();
    let member = run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let ResponseBodyT::JoinGroupResponse(joined) =
            call(&client, join("gone", None, "range")).await.unwrap()
        else {
            panic!()
        };
        joined.member_id.unwrap()
    });
    let refused = broker.cli(&["group", "delete", "gone"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("active members"));
    let address = broker.address();
    run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let leave = RequestBodyT::LeaveGroupRequest(Box::new(wire::LeaveGroupRequestT {
            group_id: Some("gone".into()),
            members: Some(vec![wire::MemberIdentityT {
                member_id: Some(member),
                group_instance_id: None,
            }]),
        }));
        call(&client, leave).await.unwrap();
    });
    broker.ok(&["group", "delete", "gone"]);
    assert!(!broker.ok(&["group", "describe", "gone"]).contains("d\t0\t2"));
    // After kill -9 the deletion holds, and the other group's offsets are intact.
    broker.sigkill();
    let broker = Broker::start_on(dir.path(), port, &[]);
    assert!(!broker.ok(&["group", "describe", "gone"]).contains("d\t0\t"));
    assert!(broker.ok(&["group", "describe", "kept"]).contains("d\t0\t1\t3\t2\t"));
}

/// Member id → assignment, from `spate group describe`.
fn members_of(
    broker: &Broker,
    group: &str,
) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    parse_members(&broker.ok(&["group", "describe", group]))
}

/// Member id → assignment, from one `spate group describe` output.
fn parse_members(described: &str) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    described
        .lines()
        .filter_map(|l| l.strip_prefix("member "))
        .map(|l| {
            let (id, assignment) = l.split_once('\t').unwrap_or((l, ""));
            (id.to_string(), assignment_set(assignment))
        })
        .collect()
}

fn spawn_consumer(broker: &Broker, group: &str, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(SPATE)
        .args([
            "consume",
            "co",
            "--group",
            group,
            "--follow",
            "--session-timeout-ms",
            "3000",
            "--timeout-ms",
            "100",
            "-b",
            &broker.address(),
        ])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_members(
    broker: &Broker,
    group: &str,
    count: usize,
) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let started = Instant::now();
    loop {
        // State and members from one snapshot: two calls could straddle a rebalance.
        let described = broker.ok(&["group", "describe", group]);
        let members = parse_members(&described);
        let assigned: usize = members.values().map(BTreeSet::len).sum();
        if described.contains("state Stable") && members.len() == count && assigned == 6 {
            return members;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "group {group} never settled at {count}: {described}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cooperative-sticky join, seen from outside: the old members keep all but the partitions the
/// newcomer receives.
#[test]
fn a_cooperative_join_moves_only_the_newcomers_partitions() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "co", "--partitions", "6"]);
    let mut children = vec![spawn_consumer(&broker, "coop", &["--assignor", "cooperative-sticky"])];
    wait_members(&broker, "coop", 1);
    children.push(spawn_consumer(&broker, "coop", &["--assignor", "cooperative-sticky"]));
    let before = wait_members(&broker, "coop", 2);
    children.push(spawn_consumer(&broker, "coop", &["--assignor", "cooperative-sticky"]));
    let after = wait_members(&broker, "coop", 3);
    let newcomer: Vec<&String> = after.keys().filter(|id| !before.contains_key(*id)).collect();
    assert_eq!(newcomer.len(), 1);
    for (id, owned) in &before {
        let kept = &after[id];
        assert!(
            kept.is_subset(owned),
            "{id} gained partitions it did not own: {owned:?} -> {kept:?}"
        );
        for lost in owned.difference(kept) {
            assert!(
                after[newcomer[0]].contains(lost),
                "{lost} moved somewhere other than the newcomer: before {before:?} after {after:?}"
            );
        }
    }
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A static member killed and restarted within its session timeout gets its partitions back and
/// the other member is not disturbed (same member id, same partitions).
#[test]
fn a_static_member_restart_does_not_rebalance_the_others() {
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "co", "--partitions", "6"]);
    let mut a = spawn_consumer(&broker, "static", &["--instance-id", "host-a"]);
    let mut b = spawn_consumer(&broker, "static", &["--instance-id", "host-b"]);
    let before = wait_members(&broker, "static", 2);
    let (a_id, a_owned) = before
        .iter()
        .find(|(id, _)| id.starts_with("host-a"))
        .map(|(i, o)| (i.clone(), o.clone()))
        .unwrap();
    let (b_id, b_owned) = before
        .iter()
        .find(|(id, _)| id.starts_with("host-b"))
        .map(|(i, o)| (i.clone(), o.clone()))
        .unwrap();
    a.kill().unwrap();
    a.wait().unwrap();
    let mut a = spawn_consumer(&broker, "static", &["--instance-id", "host-a"]);
    // Bounded wait for host-a's new incarnation.
    let started = Instant::now();
    let after = loop {
        let members = members_of(&broker, "static");
        if members.keys().any(|id| id.starts_with("host-a") && *id != a_id) {
            break members;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "host-a did not come back");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_, a_again) = after.iter().find(|(id, _)| id.starts_with("host-a")).unwrap();
    assert_eq!(a_again, &a_owned, "host-a gets its partitions back");
    assert_eq!(after.get(&b_id), Some(&b_owned), "host-b keeps its member id and partitions");
    for child in [&mut a, &mut b] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// What a `GroupConsumer` task saw, shared with the test.
#[derive(Default)]
struct Seen {
    assignment: Vec<spate_client::TopicPartition>,
    rebalancing: bool,
    records: usize,
    /// Records `poll` returned while the member waited for a rebalance to complete.
    records_while_rebalancing: usize,
}

/// Most polls one member task makes (at 50 ms fetch waits, far longer than any test here).
const MEMBER_POLLS_MAX: usize = 2_000;

fn member_task(
    client: Client,
    assignor: &str,
    seen: std::rc::Rc<std::cell::RefCell<Seen>>,
    stop: std::rc::Rc<std::cell::Cell<bool>>,
) -> glommio::task::JoinHandle<()> {
    let mut config = spate_client::GroupConfig::new("live", vec!["live".into()]);
    config.assignor = assignor.into();
    config.session_timeout = Duration::from_secs(6);
    config.rebalance_timeout = Duration::from_secs(10);
    config.heartbeat_interval = Duration::from_millis(100);
    config.auto_commit = Some(Duration::from_millis(200));
    config.consumer.fetch_max_wait = Duration::from_millis(50);
    glommio::spawn_local(async move {
        let mut member = spate_client::GroupConsumer::subscribe(client, config).await.unwrap();
        for _ in 0..MEMBER_POLLS_MAX {
            if stop.get() {
                break;
            }
            let records = member.poll().await.unwrap();
            let mut seen = seen.borrow_mut();
            seen.assignment = member.assignment().to_vec();
            seen.rebalancing = member.rebalancing();
            seen.records += records.len();
            if member.rebalancing() {
                seen.records_while_rebalancing += records.len();
            }
        }
        member.close().await.unwrap();
    })
    .detach()
}

/// A member driven by hand with raw calls, so the test decides when it joins a rebalance.
struct Holder {
    member: String,
    generation: i32,
    assignor: String,
    assignment: Option<BTreeSet<String>>,
}

impl Holder {
    /// One protocol step. While `hold`, it only heartbeats: it stays a member but does not join
    /// a rebalance, which keeps the rebalance open.
    async fn step(&mut self, client: &Client, hold: bool) {
        if self.assignment.is_some() || hold {
            let heartbeat = RequestBodyT::HeartbeatRequest(Box::new(wire::HeartbeatRequestT {
                group_id: Some("live".into()),
                generation_id: self.generation,
                member_id: Some(self.member.clone()),
                group_instance_id: None,
            }));
            match call(client, heartbeat).await {
                Ok(_) => return,
                Err(error) if error.code() == Some(ErrorCode::RebalanceInProgress) && hold => {
                    return
                }
                Err(error) if rebalance_error(&error) => self.assignment = None,
                Err(error) => panic!("heartbeat: {error}"),
            }
        }
        let join = join_to("live", Some(&self.member), &self.assignor, "live", 10_000);
        let ResponseBodyT::JoinGroupResponse(joined) = call(client, join).await.unwrap() else {
            panic!("join")
        };
        self.member = joined.member_id.unwrap();
        self.generation = joined.generation_id;
        match call(client, sync("live", &self.member, self.generation)).await {
            Ok(ResponseBodyT::SyncGroupResponse(response)) => {
                self.assignment = Some(synced(&response));
            }
            Err(error) if rebalance_error(&error) => {}
            other => panic!("sync: {other:?}"),
        }
    }
}

fn rebalance_error(error: &ClientError) -> bool {
    matches!(
        error.code(),
        Some(ErrorCode::RebalanceInProgress) | Some(ErrorCode::IllegalGeneration)
    )
}

/// Drives the holder until `done` holds (bounded: 20 s).
async fn drive_until(
    client: &Client,
    holder: &mut Holder,
    hold: bool,
    what: &str,
    mut done: impl FnMut(&Holder) -> bool,
) {
    let started = Instant::now();
    while !done(holder) {
        assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        holder.step(client, hold).await;
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

/// Members (two `GroupConsumer`s and a hand-driven holder) settle on a 6-partition topic that is
/// being produced to; then a third `GroupConsumer` joins while the holder keeps the rebalance
/// open. Returns what the two old members consumed while they waited in that rebalance, and
/// the partitions they owned then.
fn consume_during_a_held_rebalance(assignor: &str) -> Vec<(usize, usize)> {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    let dir = temp_dir();
    let broker = Broker::start(dir.path());
    broker.ok(&["topic", "create", "live", "--partitions", "6"]);
    let address = broker.address();
    let assignor = assignor.to_string();
    run(async move {
        let client =
            Client::connect(ClientConfig { bootstrap: address, ..ClientConfig::default() })
                .await
                .unwrap();
        let stop = Rc::new(Cell::new(false));
        let producing = {
            let (client, stop) = (client.clone(), stop.clone());
            glommio::spawn_local(async move {
                let producer = spate_client::Producer::new(client, Default::default()).unwrap();
                // Bounded: at most 4 000 records, one every 5 ms.
                for i in 0..4_000u32 {
                    if stop.get() {
                        break;
                    }
                    let record = spate_client::ProducerRecord::new("live", vec![b'x'; 16]);
                    // Delivery is not awaited: `close` flushes.
                    drop(producer.send(record.with_partition(i % 6)).await.unwrap());
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
                producer.close().await.unwrap();
            })
            .detach()
        };
        let mut holder = Holder {
            member: String::new(),
            generation: -1,
            assignor: assignor.clone(),
            assignment: None,
        };
        let eager = assignor != "cooperative-sticky";
        drive_until(&client, &mut holder, false, "the holder alone", |h| h.assignment.is_some())
            .await;
        let seen: Vec<Rc<RefCell<Seen>>> = (0..3).map(|_| Rc::default()).collect();
        let mut tasks = Vec::new();
        for s in &seen[..2] {
            tasks.push(member_task(client.clone(), &assignor, s.clone(), stop.clone()));
        }
        let settled = |seen: &[Rc<RefCell<Seen>>], holder: &Holder| {
            let Some(held) = &holder.assignment else { return false };
            let mut owned: Vec<String> = held.iter().cloned().collect();
            for s in seen {
                let s = s.borrow();
                if s.rebalancing || s.assignment.is_empty() || s.records == 0 {
                    return false;
                }
                owned.extend(s.assignment.iter().map(|tp| format!("live:{}", tp.partition)));
            }
            let unique: BTreeSet<&String> = owned.iter().collect();
            owned.len() == 6 && unique.len() == 6
        };
        drive_until(&client, &mut holder, false, "three members to settle", |h| {
            settled(&seen[..2], h)
        })
        .await;
        for s in &seen[..2] {
            s.borrow_mut().records_while_rebalancing = 0;
        }
        // A newcomer joins; the holder keeps the rebalance open (heartbeats, no join).
        tasks.push(member_task(client.clone(), &assignor, seen[2].clone(), stop.clone()));
        let mut during = Vec::new();
        let held_since = Instant::now();
        drive_until(&client, &mut holder, true, "the old members to wait in the rebalance", |_| {
            let waiting = seen[..2].iter().all(|s| s.borrow().rebalancing);
            let consumed = seen[..2].iter().all(|s| s.borrow().records_while_rebalancing > 0);
            // Eager members consume nothing while waiting; give them time to prove it.
            waiting && (consumed || eager && held_since.elapsed() > Duration::from_secs(2))
        })
        .await;
        for s in &seen[..2] {
            let s = s.borrow();
            during.push((s.records_while_rebalancing, s.assignment.len()));
        }
        // Let the rebalance complete: all four members own the six partitions once.
        holder.assignment = None;
        drive_until(&client, &mut holder, false, "four members to settle", |h| settled(&seen, h))
            .await;
        stop.set(true);
        for task in tasks {
            task.await;
        }
        producing.await;
        during
    })
}

/// Cooperative-sticky: the old members keep consuming their partitions while the group
/// rebalances around a newcomer (here held open by a member that has not rejoined yet).
#[test]
fn cooperative_members_keep_consuming_during_a_rebalance() {
    for (records, owned) in consume_during_a_held_rebalance("cooperative-sticky") {
        assert!(records > 0 && owned > 0, "consumed {records} records on {owned} partitions");
    }
}

/// Eager (range): the old members give up every partition and consume nothing until the
/// rebalance completes, so no partition is ever read by two members.
#[test]
fn eager_members_stop_consuming_during_a_rebalance() {
    for (records, owned) in consume_during_a_held_rebalance("range") {
        assert_eq!((records, owned), (0, 0));
    }
}
