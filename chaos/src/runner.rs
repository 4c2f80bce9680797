//! The fault-injection runner: real `spate` brokers — one, or a cluster of three or five with
//! mutual TLS and replicated topics — under a seeded schedule of faults while idempotent
//! producers with acks=all, a consumer and a consumer-group member work against them. Process
//! faults (kill -9 of a random broker, of a partition's leader, of the controller, of all at
//! once; SIGSTOP and SIGCONT) run anywhere, the cluster on loopback. Network faults
//! (partitions, packet loss) put each broker in its own network namespace ([`net`](crate::net),
//! root and nftables); without them the runner says so and runs the process faults only. Every
//! operation goes into a history; once the faults stop every partition is read back, and the
//! [`checker`](crate::checker) judges the run. A full disk (`disk`, root) fills one broker's
//! tmpfs-backed data directory, frees it and restarts the broker.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use spate_client::{
    Client, ClientConfig, ClientError, Consumer, ConsumerConfig, GroupConfig, GroupConsumer,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, Seek, TopicPartition,
};

use crate::checker::{check, Report};
use crate::history::{to_line, Event, Outcome, Stored};
use crate::net::{self, Net};
use crate::plot;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seconds: u64,
    /// Names from [`FAULTS`].
    pub faults: Vec<String>,
    pub seed: u64,
    pub partitions: u32,
    pub producers: u32,
    /// The topic's flush policy.
    pub flush: String,
    /// Where the history, the final read and the summary go.
    pub out: PathBuf,
    /// The `spate` binary.
    pub spate: PathBuf,
    /// The first broker's client port. Broker i (from 0) uses `port + 10 * i`: its client port,
    /// its shard ports after it, and in a cluster UDP `+ 5` (membership) and after it
    /// (replication); see [`free_port`].
    pub port: u16,
    /// 1: a single broker (2 shards). 3 or 5: a cluster (1 shard each), topics replicated
    /// over min(3, brokers).
    pub brokers: u32,
    /// Extra environment for the broker (the test-only unsafe mode).
    pub broker_env: Vec<(String, String)>,
}

/// A run's verdict.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub report: Report,
    pub violations: usize,
}

/// Sends per producer per second at most, so a run is bounded in count as well as time.
const SENDS_PER_SECOND_MAX: u64 = 2_000;
/// Sends per producer and partition invoked and not yet resolved, at most. A producer sends to
/// the next partition below the limit, and waits when none is (as Jepsen bounds a workload's
/// concurrency): a cluster slower than the offered rate (debug builds, a degraded majority)
/// then shows as fewer sends, not as a backlog that outlives the delivery timeout and turns
/// into thousands of unknown outcomes; and one stuck partition does not stop the others.
const SENDS_OUTSTANDING_MAX: usize = 200;
/// How long a send may wait for its acknowledgement (retries included).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// New producers a producer task may start after one failed for good.
const PRODUCER_RESTARTS_MAX: u32 = 100;
const TOPIC: &str = "chaos";
const GROUP: &str = "chaos-group";

type History = Arc<Mutex<Vec<Event>>>;

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

struct Broker {
    spate: PathBuf,
    dir: PathBuf,
    /// Its stderr, appended to across restarts (outside its data directory).
    log: PathBuf,
    /// Its IP address: 127.0.0.1, or its own in its network namespace.
    host: String,
    /// What runs it inside its network namespace (`ip netns exec NS`), if it has one.
    prefix: Vec<String>,
    port: u16,
    cores: u32,
    /// Cluster flags (node id, replication address, peers, TLS files).
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Broker {
    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn start(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let mut command = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.spate);
                command
            }
            None => Command::new(&self.spate),
        };
        // `ip netns exec` execs the broker: the child's pid is the broker's, for signals.
        let child = command
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen", &self.address(), "--cores", &self.cores.to_string()])
            .arg("--journal-dir")
            .arg(self.log.with_extension("journal"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.spate.display()))?;
        self.child = Some(child);
        let address: SocketAddr = self.address().parse().expect("valid");
        let started = Instant::now();
        // Bounded: 20 s.
        while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                return Err("the broker did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The kernel releases a killed broker's sockets asynchronously; wait until it refuses.
        let address: SocketAddr = self.address().parse().expect("valid");
        let started = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_millis(50)).is_ok()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to our own child process.
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

/// A base port for up to five brokers, below the ephemeral range: for each broker i, TCP
/// `base + 10 * i ..= + 2` and UDP `base + 10 * i + 5 ..= + 7` are free now, and no earlier
/// call in this process returned it (runs in one process, e.g. tests, run side by side).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let free = |base: u16| {
        (0..5u16).all(|i| {
            let b = base + 10 * i;
            (0..=2).all(|j| TcpListener::bind(("127.0.0.1", b + j)).is_ok())
                && (5..=7).all(|j| std::net::UdpSocket::bind(("127.0.0.1", b + j)).is_ok())
        })
    };
    // Slots of 50 ports; this process starts at a slot its id picks, and never reuses one.
    let slots = 160u16;
    let first = (std::process::id() % u32::from(slots)) as u16;
    for _ in 0..slots {
        let slot = (first + NEXT.fetch_add(1, Ordering::SeqCst)) % slots;
        let base = 21_000 + 50 * slot;
        if free(base) {
            return base;
        }
    }
    29_000
}

/// The brokers of a run: one, or a cluster with certificates made by `spate cluster certs`.
fn brokers(
    args: &RunOptions,
    root: &Path,
    net: Option<&Net>,
    disks: Option<&Disks>,
) -> Result<Vec<Broker>, String> {
    let count = args.brokers;
    if ![1, 3, 5].contains(&count) {
        return Err(format!("--brokers {count}: use 1, 3 or 5"));
    }
    let port = |i: u32| args.port + 10 * i as u16;
    let host =
        |i: u32| net.map_or_else(|| "127.0.0.1".to_string(), |n| n.broker(i as usize).to_string());
    let mut brokers: Vec<Broker> = (0..count)
        .map(|i| Broker {
            spate: args.spate.clone(),
            dir: disks
                .map_or_else(|| root.join(format!("broker-{}", i + 1)), |d| d.data_dir(i as usize)),
            log: root.join(format!("broker-{}.log", i + 1)),
            host: host(i),
            prefix: net.map(|n| n.exec_prefix(i as usize)).unwrap_or_default(),
            port: port(i),
            cores: if count == 1 { 2 } else { 1 },
            args: Vec::new(),
            env: args.broker_env.clone(),
            child: None,
        })
        .collect();
    if count > 1 {
        let certs = root.join("certs");
        let made = Command::new(&args.spate)
            .args(["cluster", "certs", "--out"])
            .arg(&certs)
            .args(["--brokers", &count.to_string()])
            .output()
            .map_err(|e| e.to_string())?;
        if !made.status.success() {
            return Err(String::from_utf8_lossy(&made.stderr).into_owned());
        }
        let peers: Vec<String> =
            (0..count).map(|i| format!("{}@{}:{}", i + 1, host(i), port(i) + 5)).collect();
        for (i, broker) in brokers.iter_mut().enumerate() {
            let id = i + 1;
            let file = |name: String| certs.join(name).display().to_string();
            broker.args = vec![
                "--node-id".into(),
                id.to_string(),
                "--replication-listen".into(),
                format!("{}:{}", host(i as u32), port(i as u32) + 5),
                "--peers".into(),
                peers.join(","),
                "--tls-ca".into(),
                file("ca.pem".into()),
                "--tls-cert".into(),
                file(format!("broker-{id}.pem")),
                "--tls-key".into(),
                file(format!("broker-{id}.key")),
            ];
        }
    }
    Ok(brokers)
}

/// The faults this runner injects: `kill` (kill -9 a random broker, then restart it), `pause`
/// (SIGSTOP, then SIGCONT), `kill-leader` (kill -9 the leader of a random partition),
/// `kill-controller` (kill -9 the metadata log's leader), `kill-all` (kill -9 every broker at
/// once, then restart them all); in a cluster, as root, [`NETWORK_FAULTS`]; as root,
/// [`DISK_FAULT`].
pub const FAULTS: [&str; 8] =
    ["kill", "pause", "kill-leader", "kill-controller", "kill-all", "partition", "loss", "disk"];

/// A fault that needs root to mount a small tmpfs under each broker's data directory: `disk`
/// fills one broker's disk to the last byte for 1-4 s, frees it, and restarts the broker.
pub const DISK_FAULT: &str = "disk";

/// Each broker's tmpfs under the `disk` fault holds this much, plus
/// `DISK_TMPFS_MIB_PER_SECOND` per second of the run: room for the run's data (a few hundred
/// KB/s per broker, no segment preallocation) and little more, so filling it (one fallocate)
/// is quick. A tmpfs uses memory only for what is written.
const DISK_TMPFS_MIB_BASE: u64 = 256;
const DISK_TMPFS_MIB_PER_SECOND: u64 = 1;

/// Bytes written per call while filling a disk; the fill is bounded by the tmpfs size.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// Faults that need each broker in its own network namespace (root and nftables; see
/// [`net`](crate::net)): `partition` (one of: the leader of a random partition cut off from
/// the other brokers, a random majority and minority, or two sides with one broker that sees
/// both) and `loss` (every broker loses 1-10% of the packets it receives). Clients are never
/// cut off, so they keep talking to an isolated leader.
pub const NETWORK_FAULTS: [&str; 2] = ["partition", "loss"];

/// A tmpfs per broker holding its data directory (`disk` fault), unmounted on drop.
struct Disks {
    mounts: Vec<PathBuf>,
}

impl Disks {
    /// Mounts a tmpfs at `root/disk-I` for each broker I (from 1), sized for a run of
    /// `seconds`.
    fn mount(root: &Path, brokers: u32, seconds: u64) -> Result<Disks, String> {
        let mut disks = Disks { mounts: Vec::new() };
        for i in 1..=brokers {
            let mount = root.join(format!("disk-{i}"));
            std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
            let mib = DISK_TMPFS_MIB_BASE + DISK_TMPFS_MIB_PER_SECOND * seconds;
            let size = format!("size={mib}m");
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &size, "spate-chaos"])
                .arg(&mount)
                .status()
                .map_err(|e| format!("mount: {e}"))?;
            if !mounted.success() {
                return Err(format!("could not mount a tmpfs at {}", mount.display()));
            }
            disks.mounts.push(mount);
        }
        Ok(disks)
    }

    /// Broker `i`'s data directory (from 0), on its tmpfs.
    fn data_dir(&self, i: usize) -> PathBuf {
        self.mounts[i].join("data")
    }

    fn ballast(&self, i: usize) -> PathBuf {
        self.mounts[i].join("ballast")
    }

    /// Fills broker `i`'s disk: writes a ballast file until the tmpfs refuses more.
    fn fill(&self, i: usize) -> Result<u64, String> {
        use std::io::Seek;
        use std::os::fd::AsRawFd;
        let path = self.ballast(i);
        let mut file =
            std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c_path = std::ffi::CString::new(self.mounts[i].as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: all-zero is a valid statvfs; statvfs gets a valid path and out-parameter.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
            return Err(format!("statvfs {}", self.mounts[i].display()));
        }
        let free = stat.f_bavail as u64 * stat.f_frsize as u64;
        let mut written = 0u64;
        // SAFETY: fallocate on a descriptor we own. If the space went meanwhile it fails
        // (ENOSPC) and the writes below take the rest.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, free as libc::off_t) } == 0 {
            written = free;
        }
        file.seek(std::io::SeekFrom::Start(written)).map_err(|e| e.to_string())?;
        let chunk = vec![0xB5u8; FILL_CHUNK_BYTES];
        // Bounded by the tmpfs size: every pass writes at least one byte or stops.
        loop {
            match file.write(&chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n as u64,
            }
        }
        Ok(written)
    }

    fn free(&self, i: usize) {
        let _ = std::fs::remove_file(self.ballast(i));
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for mount in &self.mounts {
            let _ = Command::new("umount").arg("-l").arg(mount).status();
        }
    }
}

/// The sides of a partition, picked from `rng`, and what it is for the log: the leader of
/// `partition` alone (a random broker if none leads it now), a random minority and majority,
/// or two sides with one broker left on neither (it sees both).
fn partition_sides(
    rng: &mut SmallRng,
    brokers: &[Broker],
    partition: u32,
) -> (Vec<Vec<usize>>, String) {
    let n = brokers.len();
    let mut order: Vec<usize> = (0..n).collect();
    // Fisher-Yates, from the seed.
    for i in (1..n).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let names = |side: &[usize]| {
        side.iter().map(|b| format!("broker-{}", b + 1)).collect::<Vec<_>>().join("+")
    };
    match rng.gen_range(0..3) {
        0 => {
            let leader = leader_of(brokers, partition).unwrap_or(order[0]);
            let others: Vec<usize> = (0..n).filter(|&b| b != leader).collect();
            let what = format!(
                "leader of {partition} cut off: broker-{} | {}",
                leader + 1,
                names(&others)
            );
            (vec![vec![leader], others], what)
        }
        1 => {
            let minority = order[..n / 2].to_vec();
            let majority = order[n / 2..].to_vec();
            let what = format!("minority | majority: {} | {}", names(&minority), names(&majority));
            (vec![minority, majority], what)
        }
        _ => {
            let bridge = order[0];
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            let what = format!("bridge broker-{} sees {} | {}", bridge + 1, names(a), names(b));
            (vec![a.to_vec(), b.to_vec()], what)
        }
    }
}

/// Runs `spate ARGS -b <every broker>` and returns its stdout, if it succeeded.
fn ask(brokers: &[Broker], args: &[&str]) -> Option<String> {
    let bootstrap: Vec<String> = brokers.iter().map(Broker::address).collect();
    let output = Command::new(&brokers[0].spate)
        .args(args)
        .args(["-b", &bootstrap.join(",")])
        .output()
        .ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The index of the broker leading `partition` of the workload's topic now (a cluster only).
fn leader_of(brokers: &[Broker], partition: u32) -> Option<usize> {
    if brokers.len() == 1 {
        return None;
    }
    let described = ask(brokers, &["topic", "describe", TOPIC])?;
    let line = described.lines().find(|l| l.starts_with(&format!("partition {partition}\t")))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let leader: usize =
        words.iter().position(|w| *w == "leader").and_then(|i| words.get(i + 1))?.parse().ok()?;
    (1..=brokers.len()).contains(&leader).then(|| leader - 1)
}

/// The index of the broker leading the metadata log now (a cluster only).
fn controller_of(brokers: &[Broker]) -> Option<usize> {
    if brokers.len() == 1 {
        return None;
    }
    let status = ask(brokers, &["cluster", "status"])?;
    let line = status.lines().find(|l| l.split('\t').any(|w| w == "controller"))?;
    let id: usize = line.split('\t').next()?.parse().ok()?;
    (1..=brokers.len()).contains(&id).then(|| id - 1)
}

/// Waits (bounded) until every broker sees all the others alive.
fn wait_cluster(brokers: &[Broker]) -> Result<(), String> {
    if brokers.len() == 1 {
        return Ok(());
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let all = brokers.iter().all(|b| {
            Command::new(&b.spate)
                .args(["cluster", "status", "-b", &b.address()])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).matches("\talive").count() == brokers.len()
                })
                .unwrap_or(false)
        });
        if all {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("the cluster did not come up".into())
}

fn client_config(bootstrap: &str) -> ClientConfig {
    ClientConfig {
        bootstrap: bootstrap.to_string(),
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    }
}

/// Whether a failed send is known not to be in the log: the broker refused it outright.
fn definitely_not_written(error: &ClientError) -> bool {
    use spate_protocol::wire::ErrorCode;
    const NOT_WRITTEN: [ErrorCode; 4] = [
        ErrorCode::CorruptMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::InvalidRequest,
        ErrorCode::DiskFull,
    ];
    matches!(error.code(), Some(code) if NOT_WRITTEN.contains(&code))
}

/// Producers and one consumer on one executor until `stop`; records everything.
async fn workload(
    args: RunOptions,
    bootstrap: String,
    history: History,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let client = loop {
        match Client::connect(client_config(&bootstrap)).await {
            Ok(client) => break client,
            Err(_) => glommio::timer::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut tasks = Vec::new();
    for p in 0..args.producers {
        let (client, history, stop, args) =
            (client.clone(), history.clone(), stop.clone(), args.clone());
        tasks.push(glommio::spawn_local(async move {
            produce(p, client, args, history, stop, start).await
        }));
    }
    let consumer = {
        let (client, history, stop, partitions) =
            (client.clone(), history.clone(), stop.clone(), args.partitions);
        glommio::spawn_local(async move { consume(client, partitions, history, stop, start).await })
    };
    let member = {
        let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
        glommio::spawn_local(async move { group_consume(client, history, stop, start).await })
    };
    for task in tasks {
        task.await;
    }
    consumer.await;
    member.await;
}

/// A consumer group's one member, committing its position after every poll that read
/// something; each acknowledged commit goes into the history. The checker fails a group whose
/// committed offset goes down: a coordinator that lost commits (its broker killed) would send
/// the group back to the earliest offset, and its next commits would be lower.
async fn group_consume(client: Client, history: History, stop: Arc<AtomicBool>, start: Instant) {
    // Each pass (re)joins the group; bounded by `stop`.
    while !stop.load(Ordering::SeqCst) {
        let mut config = GroupConfig::new(GROUP, vec![TOPIC.into()]);
        config.auto_commit = None;
        config.consumer.fetch_max_wait = Duration::from_millis(200);
        let Ok(mut member) = GroupConsumer::subscribe(client.clone(), config).await else {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            let records = match member.poll().await {
                Ok(records) => records,
                Err(_) => {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    break;
                }
            };
            // The position each partition read here moves to, which the commit carries.
            let mut read: BTreeMap<u32, i64> = BTreeMap::new();
            for record in &records {
                let next = read.entry(record.partition).or_insert(0);
                *next = (*next).max(record.offset + 1);
            }
            if read.is_empty() {
                continue;
            }
            if member.commit().await.is_err() {
                // Not acknowledged: nothing to record. Rejoin (the group may have moved).
                break;
            }
            let t_ms = now_ms(start);
            let mut history = history.lock().expect("not poisoned");
            for (partition, offset) in read {
                history.push(Event::Commit { group: GROUP.into(), partition, offset, t_ms });
            }
        }
    }
}

async fn produce(
    index: u32,
    client: Client,
    args: RunOptions,
    history: History,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let config = ProducerConfig {
        delivery_timeout: DELIVERY_TIMEOUT,
        request_timeout: Duration::from_secs(3),
        linger: Duration::from_millis(1),
        ..ProducerConfig::default()
    };
    let Ok(mut producer) = Producer::new(client.clone(), config.clone()) else { return };
    let mut restarts = 0u32;
    let producer_name = format!("p{index}");
    // Sends outstanding per partition.
    let pending = Rc::new(RefCell::new(vec![0usize; args.partitions as usize]));
    let mut next_partition = 0u32;
    let mut seq = 0u64;
    let pace = Duration::from_micros(1_000_000 / SENDS_PER_SECOND_MAX);
    // Bounded by `stop` (set after the run's duration) and the rate.
    while !stop.load(Ordering::SeqCst) {
        let open = (0..args.partitions)
            .map(|i| (next_partition + i) % args.partitions)
            .find(|&p| pending.borrow()[p as usize] < SENDS_OUTSTANDING_MAX);
        let Some(partition) = open else {
            glommio::timer::sleep(pace).await;
            continue;
        };
        next_partition = (partition + 1) % args.partitions;
        let value = format!("{producer_name}-{seq}");
        let invoke_ms = now_ms(start);
        let record = ProducerRecord::new(TOPIC, value.clone()).with_partition(partition);
        let sent = producer.send(record).await;
        // A producer that failed for good (a gap after a batch abandoned with an unknown
        // outcome, as Kafka's before KIP-360) refuses every send; the application starts a new
        // one, as a Kafka application must. Bounded by `PRODUCER_RESTARTS_MAX`.
        let refused_at_once = sent.is_err();
        if refused_at_once && restarts < PRODUCER_RESTARTS_MAX {
            let _ = producer.close().await;
            if let Ok(fresh) = Producer::new(client.clone(), config.clone()) {
                producer = fresh;
                restarts += 1;
            }
        }
        let (history, producer_name, pending) =
            (history.clone(), producer_name.clone(), pending.clone());
        pending.borrow_mut()[partition as usize] += 1;
        glommio::spawn_local(async move {
            let result = match sent {
                Ok(delivery) => delivery.await,
                Err(error) => Err(error),
            };
            let (outcome, offset, attempts) = match &result {
                Ok(report) => (Outcome::Ack, Some(report.offset), report.attempts),
                // Refused by the producer itself: never sent.
                Err(_) if refused_at_once => (Outcome::Fail, None, 0),
                Err(error) if definitely_not_written(error) => (Outcome::Fail, None, 0),
                Err(_) => (Outcome::Unknown, None, 0),
            };
            history.lock().expect("not poisoned").push(Event::Send {
                producer: producer_name,
                seq,
                partition,
                value,
                invoke_ms,
                complete_ms: now_ms(start),
                outcome,
                offset,
                attempts,
                error: result.err().map(|e| e.to_string()),
            });
            pending.borrow_mut()[partition as usize] -= 1;
        })
        .detach();
        seq += 1;
        glommio::timer::sleep(pace).await;
    }
    let _ = producer.flush().await;
    // Every delivery has resolved after the flush; let the recording tasks run (bounded).
    for _ in 0..=seq {
        if pending.borrow().iter().all(|&n| n == 0) {
            break;
        }
        futures_lite::future::yield_now().await;
    }
}

async fn consume(
    client: Client,
    partitions: u32,
    history: History,
    stop: Arc<AtomicBool>,
    start: Instant,
) {
    let assigned: Vec<TopicPartition> = (0..partitions)
        .map(|partition| TopicPartition { topic: TOPIC.into(), partition })
        .collect();
    let mut next: BTreeMap<u32, i64> = assigned.iter().map(|tp| (tp.partition, 0)).collect();
    // Each pass (re)creates the consumer at the next unread offsets; bounded by `stop`.
    while !stop.load(Ordering::SeqCst) {
        let config = ConsumerConfig {
            offset_reset: OffsetReset::Earliest,
            fetch_max_wait: Duration::from_millis(200),
            ..ConsumerConfig::default()
        };
        let mut consumer = Consumer::new(client.clone(), config);
        if consumer.assign(&assigned).is_err() {
            return;
        }
        for tp in &assigned {
            let offset = next[&tp.partition];
            let _ = consumer.seek(tp, Seek::Offset(offset));
            history.lock().expect("not poisoned").push(Event::ConsumerStart {
                consumer: "c0".into(),
                partition: tp.partition,
                offset,
                t_ms: now_ms(start),
            });
        }
        while !stop.load(Ordering::SeqCst) {
            let Ok(records) = consumer.poll().await else {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                break;
            };
            let t_ms = now_ms(start);
            let mut history = history.lock().expect("not poisoned");
            for record in records {
                next.insert(record.partition, record.offset + 1);
                history.push(Event::Read {
                    consumer: "c0".into(),
                    partition: record.partition,
                    offset: record.offset,
                    value: String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned(),
                    t_ms,
                });
            }
        }
    }
}

/// Every record of every partition, from a healthy broker (bounded by the log ends).
async fn final_read(bootstrap: &str, partitions: u32) -> Result<Vec<Stored>, String> {
    let client = Client::connect(client_config(bootstrap)).await.map_err(|e| e.to_string())?;
    let mut stored = Vec::new();
    for partition in 0..partitions {
        // A leader may still be settling after the last fault: retry (bounded: 60 s).
        let asked = Instant::now();
        let end = loop {
            match client.list_offset(TOPIC, partition, spate_client::LATEST).await {
                Ok(end) => break end.unwrap_or(0),
                Err(error) if asked.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("partition {partition}: {error}"))
                }
                Err(_) => glommio::timer::sleep(Duration::from_millis(100)).await,
            }
        };
        let tp = TopicPartition { topic: TOPIC.into(), partition };
        let mut consumer = Consumer::new(
            client.clone(),
            ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::default() },
        );
        consumer.assign(std::slice::from_ref(&tp)).map_err(|e| e.to_string())?;
        consumer.seek(&tp, Seek::Earliest).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut offset = 0;
        while offset < end {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("final read of partition {partition} stalled at {offset}"));
            }
            let Ok(records) = consumer.poll().await else {
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // The position, not the last record: it also moves past replication's control
            // batches (a new leader's marker may end the log).
            offset = offset.max(consumer.position(&tp).unwrap_or(0));
            for record in records {
                offset = offset.max(record.offset + 1);
                stored.push(Stored {
                    partition,
                    offset: record.offset,
                    value: String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned(),
                });
            }
        }
    }
    Ok(stored)
}

fn write_lines<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<(), String> {
    let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    for item in items {
        writeln!(file, "{}", to_line(item)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs the workload under faults, reads everything back, writes `history.jsonl`,
/// `final.jsonl`, `summary.json` and `timeline.svg` to `options.out`, and checks the history.
pub fn run(args: RunOptions) -> Result<RunResult, String> {
    let seed = args.seed;
    let faults: Vec<&str> = args.faults.iter().map(String::as_str).collect();
    if let Some(bad) = faults.iter().find(|f| !FAULTS.contains(f)) {
        return Err(format!("unknown fault {bad:?}: this runner has {}", FAULTS.join(", ")));
    }
    let wants_network = faults.iter().any(|f| NETWORK_FAULTS.contains(f));
    let net = match (wants_network, args.brokers) {
        (false, _) => None,
        (true, 1) => {
            println!("spate-chaos: network faults need a cluster; running process faults only");
            None
        }
        (true, _) => match net::available() {
            Ok(()) => Some(Net::create(args.brokers as usize)?),
            Err(why) => {
                println!("spate-chaos: {why}; running on loopback with process faults only");
                None
            }
        },
    };
    let faults: Vec<&str> =
        faults.into_iter().filter(|f| net.is_some() || !NETWORK_FAULTS.contains(f)).collect();
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if faults.contains(&DISK_FAULT) && !root {
        println!("spate-chaos: the disk fault needs root (a tmpfs per broker); leaving it out");
    }
    let faults: Vec<&str> = faults.into_iter().filter(|f| root || *f != DISK_FAULT).collect();
    let network = match (&net, args.brokers) {
        (_, 1) => "1 broker".to_string(),
        (Some(net), _) => format!(
            "a cluster, each broker in its own network namespace behind a bridge ({}/24)",
            net.host()
        ),
        (None, _) => "a cluster on loopback".to_string(),
    };
    println!(
        "spate-chaos: seed {seed}, {} s, faults {faults:?}, {} broker(s), {network}",
        args.seconds, args.brokers
    );
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    // The brokers' data and logs stay in OUT/brokers when the run fails, for a look.
    let scratch = out.join("brokers");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let disks = match faults.contains(&DISK_FAULT) {
        true => Some(Disks::mount(&scratch, args.brokers, args.seconds)?),
        false => None,
    };
    let mut brokers = brokers(&args, &scratch, net.as_ref(), disks.as_ref())?;
    for broker in &mut brokers {
        broker.start()?;
    }
    wait_cluster(&brokers)?;
    let bootstrap: String = brokers.iter().map(Broker::address).collect::<Vec<_>>().join(",");
    let factor = args.brokers.min(3).to_string();
    let created = Command::new(&brokers[0].spate)
        .args(["topic", "create", TOPIC, "--partitions", &args.partitions.to_string()])
        .args(["--replication-factor", &factor])
        .args(["--config", &format!("flush={}", args.flush), "-b", &bootstrap])
        .output()
        .map_err(|e| e.to_string())?;
    if !created.status.success() {
        return Err(String::from_utf8_lossy(&created.stderr).into_owned());
    }
    let start = Instant::now();
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (args, bootstrap, history, stop) =
            (args.clone(), bootstrap.clone(), history.clone(), stop.clone());
        std::thread::spawn(move || {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .map_err(|e| e.to_string())
                .map(|executor| executor.run(workload(args, bootstrap, history, stop, start)))
        })
    };
    // The fault schedule: a fault every 2-5 s, from the seed.
    let mut rng = SmallRng::seed_from_u64(seed);
    let deadline = start + Duration::from_secs(args.seconds);
    while !faults.is_empty() && Instant::now() + Duration::from_secs(5) < deadline {
        std::thread::sleep(Duration::from_millis(rng.gen_range(2_000..5_000)));
        let kind = faults[rng.gen_range(0..faults.len())];
        let random = rng.gen_range(0..brokers.len());
        let partition = rng.gen_range(0..args.partitions);
        // Who the fault hits: a random broker, or the one that holds a role now (found by
        // asking the cluster; a random one if nobody holds it at the moment).
        let (target, role) = match kind {
            "kill-leader" => (leader_of(&brokers, partition), format!(" (leader of {partition})")),
            "kill-controller" => (controller_of(&brokers), " (controller)".to_string()),
            _ => (None, String::new()),
        };
        let target = target.unwrap_or(random);
        let start_ms = now_ms(start);
        // What a network or disk fault hit, for the log.
        let mut fault_target = None;
        match kind {
            "kill" | "kill-leader" | "kill-controller" => {
                brokers[target].kill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(100..1_500)));
                brokers[target].start()?;
            }
            "kill-all" => {
                // As close to at once as signals go: every SIGKILL is sent before any wait.
                for broker in &mut brokers {
                    broker.signal(libc::SIGKILL);
                }
                for broker in &mut brokers {
                    broker.kill();
                }
                std::thread::sleep(Duration::from_millis(rng.gen_range(100..1_500)));
                for broker in &mut brokers {
                    broker.start()?;
                }
            }
            DISK_FAULT => {
                let disks = disks.as_ref().expect("the disk fault runs with disks");
                let filled = disks.fill(target)?;
                std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..4_000)));
                disks.free(target);
                // An operator frees space and restarts the broker: a replica whose write
                // failed stays offline until then (as Kafka takes a failed log directory
                // offline until a restart).
                brokers[target].kill();
                brokers[target].start()?;
                fault_target = Some(format!(
                    "broker-{} (filled with {} MiB)",
                    target + 1,
                    filled / (1024 * 1024)
                ));
            }
            "partition" | "loss" => {
                let net = net.as_ref().expect("network faults run with a network");
                let what = if kind == "loss" {
                    let permille = rng.gen_range(10..=100);
                    net.loss(permille)?;
                    format!("{}% loss at every broker", permille / 10)
                } else {
                    let (sides, what) = partition_sides(&mut rng, &brokers, partition);
                    net.partition(&sides)?;
                    what
                };
                std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..6_000)));
                net.heal()?;
                fault_target = Some(what);
            }
            _ => {
                brokers[target].signal(libc::SIGSTOP);
                std::thread::sleep(Duration::from_millis(rng.gen_range(200..3_000)));
                brokers[target].signal(libc::SIGCONT);
            }
        }
        let target = match kind {
            "kill-all" => "all brokers".to_string(),
            "partition" | "loss" | DISK_FAULT => fault_target.take().unwrap_or_default(),
            _ => format!("broker-{}{role}", target + 1),
        };
        let event = Event::Fault { kind: kind.into(), target, start_ms, end_ms: now_ms(start) };
        println!("  {}", to_line(&event));
        history.lock().expect("not poisoned").push(event);
    }
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::SeqCst);
    worker.join().map_err(|_| "the workload panicked".to_string())??;
    wait_cluster(&brokers)?;
    let stored = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| e.to_string())?
        .run(async move { final_read(&bootstrap, args.partitions).await })?;
    let events = std::mem::take(&mut *history.lock().expect("not poisoned"));
    write_lines(&out.join("history.jsonl"), &events)?;
    write_lines(&out.join("final.jsonl"), &stored)?;
    let report = check(&events, &stored, 1_000);
    // The producers are idempotent: a duplicate of any send is a violation.
    let violations = report.violations(true);
    let mut summary = serde_json::to_value(&report).expect("serializable");
    summary["seed"] = serde_json::json!(seed);
    summary["violations"] = serde_json::json!(violations);
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary).expect("json"))
        .map_err(|e| e.to_string())?;
    let title = format!(
        "spate-chaos: {} broker(s), seed {seed}, {} s, {} faults: {} acknowledged, {} violations",
        args.brokers, args.seconds, report.faults, report.acknowledged, violations
    );
    std::fs::write(out.join("timeline.svg"), plot::svg(&events, &title))
        .map_err(|e| e.to_string())?;
    drop(brokers);
    if let (Some(disks), true) = (&disks, violations > 0) {
        // The tmpfs goes with the unmount: keep a copy of each broker's data for a look.
        for (i, mount) in disks.mounts.iter().enumerate() {
            let copy = scratch.join(format!("broker-{}-data", i + 1));
            let _ = Command::new("cp").arg("-a").arg(mount.join("data")).arg(copy).status();
        }
    }
    drop(disks);
    if violations == 0 && std::env::var_os("SPATE_CHAOS_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(RunResult { report, violations })
}
