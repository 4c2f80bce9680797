//! The thread-per-core runtime: one pinned Glommio executor per shard, joined by a bounded
//! cross-shard mesh; each shard recovers its partitions, then accepts on the shared client port
//! (SO_REUSEPORT spreads connections) and on its own port, and serves connections one request at
//! a time, in order.
//!
//! Shutdown (SIGTERM/SIGINT, or `Broker::stop`): shards stop accepting, let in-flight requests
//! finish, flush and close every log, and return; `run` returns once every shard is done.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_lite::StreamExt;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement, Shares};
use spate_protocol::codec;
use spate_protocol::frame::FrameDecoder;
use spate_protocol::wire::ErrorCode;

use crate::config::BrokerConfig;
use crate::limits;
use crate::shard::{envelope_error, Reply, Shard, ShardMsg};

/// How often idle loops look at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// Each shard's housekeeping tick: group sessions, published replica views, stall detection.
const TICK: Duration = Duration::from_millis(100);
/// Test-only: how often accept loops look at the shutdown flag, in microseconds, instead of
/// `SHUTDOWN_POLL`. A test sets it small so that every connection it opens meets many of those
/// looks; none may cost a connection.
pub const TEST_ACCEPT_POLL_US: &str = "SPATE_TEST_ACCEPT_POLL_US";

/// How often accept loops look at the shutdown flag: `SHUTDOWN_POLL`, or the test override.
fn accept_poll() -> Duration {
    std::env::var(TEST_ACCEPT_POLL_US)
        .ok()
        .and_then(|us| us.parse().ok())
        .map_or(SHUTDOWN_POLL, Duration::from_micros)
}
/// A connection's read buffer between frames; a larger frame gets an allocation of its own size,
/// under the shard's request budget.
const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;
/// How often each shard enforces retention.
const RETENTION_INTERVAL: Duration = Duration::from_secs(5);
/// Longest shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a broker until `stop` is set. Returns an error if a shard fails to start.
/// Raises the soft limit on open files to the hard limit: each open partition holds a few
/// descriptors (its active segment, its journal file), and the soft limit is often 1,024.
/// What Go's runtime and many servers do at start; the hard limit stays the operator's.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(from = soft, to = limit.rlim_max, "raised the open-files limit");
        }
    }
}

pub fn run(mut config: BrokerConfig, stop: Arc<AtomicBool>) -> Result<(), String> {
    // Every path below (logs, the catalog, errors) is absolute, whatever the caller passed.
    config.data_dir = std::path::absolute(&config.data_dir)
        .map_err(|e| format!("bad data directory {}: {e}", config.data_dir.display()))?;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let _lock = lock_data_dir(&config.data_dir)?;
    raise_open_files_limit();
    check_ports_free(&config)?;
    adopt_orphaned_partitions(&config)?;
    if let Some(cluster) = &config.cluster {
        // Refuse bad TLS files now, with their paths, rather than from a running shard.
        cluster.credentials()?;
        let membership = crate::cluster::Membership::new(
            cluster,
            config.listen.to_string(),
            std::time::Instant::now(),
        );
        config.membership = Some(Arc::new(std::sync::Mutex::new(membership)));
        config.replica_views = Some(Arc::default());
    }
    let config = Arc::new(config);
    let shard_count = config.shard_count();
    let mesh = MeshBuilder::<ShardMsg, _>::full(shard_count, limits::CROSS_SHARD_QUEUE_MAX);
    let ready = Arc::new(Barrier::new(shard_count + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(shard_count);
    for (id, cpu) in config.cpus.iter().copied().enumerate() {
        let (config, mesh, ready, stop, failed) =
            (config.clone(), mesh.clone(), ready.clone(), stop.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name(format!("spate-shard-{id}"))
            .spawn(move || {
                let executor = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                    .name(&format!("shard-{id}"))
                    .make();
                let executor = match executor {
                    Ok(executor) => executor,
                    Err(error) => {
                        tracing::error!(shard = id, cpu, %error, "cannot start the executor");
                        failed.store(true, Ordering::SeqCst);
                        ready.wait();
                        return;
                    }
                };
                executor.run(shard_main(id, config, mesh, ready, stop, failed));
            })
            .map_err(|e| format!("cannot spawn shard thread: {e}"))?;
        threads.push(thread);
    }
    ready.wait();
    if failed.load(Ordering::SeqCst) {
        stop.store(true, Ordering::SeqCst);
    } else {
        tracing::info!(listen = %config.listen, shards = shard_count, data_dir = %config.data_dir.display(), "spate is serving");
    }
    for thread in threads {
        let _ = thread.join();
    }
    if failed.load(Ordering::SeqCst) {
        return Err("a shard failed to start; see the log above".into());
    }
    if let Some(root) = &config.journal_dir {
        remove_empty_dirs(root);
    }
    tracing::info!("spate stopped");
    Ok(())
}

/// A broker restarted with fewer cores than its catalog's shards: hand their partitions to
/// the shards it runs now (persisted before any shard starts), so none stays unserved.
fn adopt_orphaned_partitions(config: &BrokerConfig) -> Result<(), String> {
    let mut catalog = crate::catalog::Catalog::load(&config.data_dir)
        .map_err(|e| format!("cannot read the catalog: {e}"))?;
    let moved = catalog.reassign_orphans(config.shard_count());
    if moved > 0 {
        catalog.save(&config.data_dir).map_err(|e| format!("cannot save the catalog: {e}"))?;
        tracing::warn!(
            partitions = moved,
            shards = config.shard_count(),
            "partitions of shards this broker no longer runs were reassigned to running shards"
        );
    }
    Ok(())
}

/// A test-only unsafe mode, so the fault-injection suite can prove its checker catches lost
/// writes: with this variable set, every restart drops the last batch of each partition,
/// acknowledged or not. Never set it anywhere else.
pub const UNSAFE_LOSE_TAIL: &str = "SPATE_TEST_UNSAFE_LOSE_TAIL";

/// A test-only unsafe mode for clusters: with this variable set, a replicated partition answers
/// `acks=all` once the leader wrote the batch, before a majority holds it (as `acks=leader`),
/// so the fault-injection suite can prove it catches writes lost by a leader killed before
/// commit. Never set it anywhere else.
pub const UNSAFE_ACK_BEFORE_COMMIT: &str = "SPATE_TEST_UNSAFE_ACK_BEFORE_COMMIT";

/// Whether [`UNSAFE_ACK_BEFORE_COMMIT`] is set (read once).
pub fn unsafe_ack_before_commit() -> bool {
    static SET: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os(UNSAFE_ACK_BEFORE_COMMIT).is_some());
    *SET
}

async fn lose_last_batches(shard: &Shard) {
    tracing::error!("{UNSAFE_LOSE_TAIL} is set: dropping the last batch of every partition");
    for ((topic, partition), log) in shard.all_logs() {
        let offsets = log.offsets();
        if offsets.high_watermark <= offsets.start {
            continue;
        }
        let Ok(read) = log.read(offsets.high_watermark - 1, 1).await else { continue };
        let base = read
            .chunks
            .first()
            .and_then(|c| spate_protocol::batch::BatchHeader::parse(c).ok().map(|h| h.base_offset));
        if let Some(base) = base {
            if let Err(error) = log.truncate_to(base).await {
                tracing::error!(%topic, partition, %error, "could not drop the last batch");
            }
        }
    }
}

/// After a clean stop every log has removed its journal: remove the emptied directories too, so
/// a tmpfs holds nothing of a broker that is not running. Bounded by the tree (topic, partition).
fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn pin_current_thread(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one CPU set, applied to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "could not pin the shard thread");
        }
    }
}

/// Holds an exclusive `flock` on `<data>/.lock` for the broker's lifetime: two brokers on one
/// data directory would corrupt each other's logs.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("data directory {} is in use by another spate process", dir.display()));
    }
    Ok(file)
}

/// Listening sockets use SO_REUSEPORT, which would let a second broker silently share a port
/// with a running one. So before binding: if something keeps accepting connections on one of
/// our addresses, refuse to start. (A plain bind probe would trip over the previous run's
/// lingering connections after a crash.) The probe retries for about a second because a
/// process killed with SIGKILL keeps accepting briefly: the kernel tears down its io_uring, and
/// the accept requests that hold the socket, after the process is reaped.
fn check_ports_free(config: &BrokerConfig) -> Result<(), String> {
    const PROBES: usize = 10;
    let addresses: Vec<_> = std::iter::once(config.listen)
        .chain((0..config.shard_count()).map(|s| config.shard_address(s)))
        .collect();
    // Every listener sets SO_REUSEPORT, so a metrics port that is also a client port would bind
    // and then get half of that port's connections: refuse it by name instead.
    if let Some(metrics) = config.metrics_listen {
        let overlaps = |a: &std::net::SocketAddr| {
            a.port() == metrics.port()
                && (a.ip() == metrics.ip()
                    || a.ip().is_unspecified()
                    || metrics.ip().is_unspecified())
        };
        if let Some(clash) = addresses.iter().find(|a| overlaps(a)) {
            return Err(format!(
                "metrics_listen {metrics} is also a client port of this broker ({clash}; the \
                 broker listens on the client port and on the client port + 1 + shard for each \
                 of its {} shards): choose another",
                config.shard_count()
            ));
        }
    }
    for address in addresses {
        let accepting = |_| {
            let accepted =
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok();
            if accepted {
                std::thread::sleep(Duration::from_millis(100));
            }
            accepted
        };
        if (0..PROBES).all(accepting) {
            return Err(format!(
                "cannot listen on {address}: another process is already listening there"
            ));
        }
    }
    Ok(())
}

/// A listening socket with SO_REUSEPORT (every shard listens on the client port; the kernel
/// spreads connections) and SO_REUSEADDR (a restart can bind while the previous run's accepted
/// connections sit in TIME_WAIT).
fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    // SAFETY: a listening TCP socket we own, handed over whole.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

async fn shard_main(
    thread_index: usize,
    config: Arc<BrokerConfig>,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    ready: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
) {
    let fail = |message: String| {
        tracing::error!(thread = thread_index, "{message}");
        failed.store(true, Ordering::SeqCst);
    };
    let (senders, mut receivers) = match mesh.join().await {
        Ok(joined) => joined,
        Err(error) => {
            fail(format!("cannot join the cross-shard mesh: {error}"));
            ready.wait();
            return;
        }
    };
    // The mesh numbers peers in the order they joined; that number is the shard's identity
    // (its partitions, its port). The thread's CPU was chosen before, so shard ids are a
    // permutation of the configured CPUs.
    let id = senders.peer_id();
    // Run on the CPU of this shard id, so a layout's "shard i on CPU c" holds.
    pin_current_thread(config.cpus[id]);
    let background = glommio::executor().create_task_queue(
        Shares::Static(100),
        glommio::Latency::NotImportant,
        "background",
    );
    // In a cluster this shard replicates its partitions with the same shard of every peer.
    let replication = match &config.cluster {
        None => None,
        Some(cluster) => {
            let node = cluster.credentials().and_then(|credentials| {
                let node = cluster.shard_node(id);
                let listen = node.listen;
                spate_cluster::ReplicationNode::start(node, &credentials)
                    .map_err(|e| format!("shard {id}: cannot replicate on {listen}: {e}"))
            });
            match node {
                Ok(node) => Some(node),
                Err(error) => {
                    fail(error);
                    ready.wait();
                    return;
                }
            }
        }
    };
    // Recovery happens here, before any listener exists.
    let opened = Shard::open(id, Rc::new((*config).clone()), senders, background, replication);
    let shard = match opened.await {
        Ok(shard) => shard,
        Err(error) => {
            fail(format!("recovery failed: {error}"));
            ready.wait();
            return;
        }
    };
    if std::env::var_os(UNSAFE_LOSE_TAIL).is_some() {
        lose_last_batches(&shard).await;
    }
    if unsafe_ack_before_commit() {
        tracing::error!("{UNSAFE_ACK_BEFORE_COMMIT} is set: acks=all answers before commit");
    }
    let listeners = [config.listen, config.shard_address(id)]
        .map(|address| listen(address).map_err(|e| format!("cannot listen on {address}: {e}")));
    let listeners: Vec<TcpListener> = match listeners.into_iter().collect::<Result<_, _>>() {
        Ok(listeners) => listeners,
        Err(error) => {
            fail(error);
            ready.wait();
            return;
        }
    };
    for (peer, stream) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut stream = stream;
            // Bounded by the peer: the stream ends when that shard's senders drop.
            while let Some(message) = stream.next().await {
                let shard = shard.clone();
                glommio::spawn_local(async move { shard.handle_peer(message).await }).detach();
            }
            tracing::debug!(peer, "cross-shard stream closed");
        })
        .detach();
    }
    // Every shard has recovered before any serves: a cross-shard call never meets a shard that
    // is still opening its logs.
    ready.wait();
    if failed.load(Ordering::SeqCst) {
        return;
    }
    if let (0, Some(cluster), Some(membership)) = (id, &config.cluster, &config.membership) {
        let run = crate::cluster::run(
            cluster.clone(),
            config.listen.to_string(),
            membership.clone(),
            stop.clone(),
        );
        let (stop, failed) = (stop.clone(), failed.clone());
        glommio::spawn_local(async move {
            if let Err(error) = run.await {
                tracing::error!(%error, "cluster membership failed; stopping");
                failed.store(true, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            }
        })
        .detach();
    }
    let connections = Rc::new(Semaphore::new(limits::CONNECTIONS_PER_SHARD_MAX as u64));
    let mut accept_tasks = Vec::new();
    for listener in listeners {
        accept_tasks.push(glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            connections.clone(),
            stop.clone(),
        )));
    }
    if id == 0 && config.cluster.is_some() {
        let registrar = shard.clone();
        let registering = stop.clone();
        glommio::spawn_local(async move { registrar.register_broker(&registering).await }).detach();
        let applier = shard.clone();
        let applying = stop.clone();
        glommio::spawn_local(async move {
            // Until stop: apply what the metadata log committed since the last look.
            while !applying.load(Ordering::SeqCst) {
                applier.apply_metadata().await;
                glommio::timer::sleep(limits::METADATA_APPLY_INTERVAL).await;
            }
        })
        .detach();
    }
    let ticker = shard.clone();
    let ticking = stop.clone();
    glommio::spawn_local(async move {
        // Group sessions and rebalances advance every 100 ms, until stop; leadership goes back
        // to preferred replicas every `PREFERRED_LEADER_CHECK_TICKS`.
        let mut ticks = 0u64;
        while !ticking.load(Ordering::SeqCst) {
            let asleep = std::time::Instant::now();
            glommio::timer::sleep(TICK).await;
            ticker.note_lateness(asleep.elapsed().saturating_sub(TICK));
            ticker.tick_groups();
            ticker.publish_replicas();
            ticks += 1;
            if ticks.is_multiple_of(limits::PREFERRED_LEADER_CHECK_TICKS) {
                ticker.restore_preferred_leaders();
            }
        }
    })
    .detach();
    glommio::spawn_local_into(retention_loop(shard.clone(), stop.clone()), shard.background)
        .map(|t| t.detach())
        .ok();
    if let (0, Some(address)) = (id, config.metrics_listen) {
        match listen(address) {
            Ok(listener) => accept_tasks.push(glommio::spawn_local(metrics_loop(
                shard.clone(),
                listener,
                stop.clone(),
            ))),
            Err(error) => tracing::error!(%address, %error, "cannot serve metrics"),
        }
    }
    for task in accept_tasks {
        task.await;
    }
    // Stop: let in-flight requests finish, then make everything durable and close. In a
    // cluster, leadership moves away first, so producers retry on the new leaders.
    shard.stop_replication().await;
    shard.shutting_down.set(true);
    let drain_started = std::time::Instant::now();
    while shard.in_flight.get() > 0 && drain_started.elapsed() < DRAIN_TIMEOUT {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    for ((topic, partition), log) in shard.all_logs() {
        if let Err(error) = log.close().await {
            tracing::error!(%topic, partition, %error, "closing the log failed");
        }
    }
    if let Some(log) = shard.offset_store_log() {
        let _ = log.close().await;
    }
    tracing::debug!(shard = id, "shard stopped");
}

/// One request being handled on a shard, for the count shutdown drains.
struct InFlight(Rc<Shard>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get() - 1);
    }
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    connections: Rc<Semaphore>,
    stop: Arc<AtomicBool>,
) {
    let poll = accept_poll();
    // Runs until stop; each iteration accepts one connection.
    while let Some(accepted) = accept_until_stop(&listener, &stop, poll).await {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = connections.try_acquire_static_permit(1) else {
            tracing::warn!(shard = shard.id, "connection limit reached; closing a new connection");
            continue;
        };
        let shard = shard.clone();
        let stop = stop.clone();
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().ok();
            if let Err(reason) = serve_connection(&shard, stream, &stop).await {
                tracing::debug!(?peer, %reason, "connection closed");
            }
            drop(permit);
        })
        .detach();
    }
}

/// The next connection on `listener`, or `None` once `stop` is set (looked at every `poll`).
///
/// The accept in flight is kept across those looks, never dropped while the broker runs. Glommio
/// accepts through io_uring, and dropping a pending accept only asks the kernel to cancel it: a
/// connection that arrives before the cancellation lands is accepted anyway, and its descriptor
/// goes to a completion nobody waits for. That connection is never read nor closed; its client's
/// requests time out. (Timing the accept out every poll did lose connections that arrived just
/// as a poll interval ended.) At stop the accept is dropped; a connection lost then is closed when
/// the process exits.
async fn accept_until_stop(
    listener: &TcpListener,
    stop: &AtomicBool,
    poll: Duration,
) -> Option<glommio::Result<TcpStream, ()>> {
    if stop.load(Ordering::SeqCst) {
        return None;
    }
    let mut accepting = std::pin::pin!(listener.accept());
    // One iteration per poll interval; ends on a connection, an accept error, or stop.
    loop {
        // `or` polls the accept first: a connection that is ready wins over the tick.
        let accepted = futures_lite::future::or(async { Some(accepting.as_mut().await) }, async {
            glommio::timer::sleep(poll).await;
            None
        })
        .await;
        if accepted.is_some() {
            return accepted;
        }
        if stop.load(Ordering::SeqCst) {
            return None;
        }
    }
}

/// Serves one connection. Requests are pipelined: each whole frame is handed to its own task
/// as soon as it is read (at most `REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX` at once), and a writer
/// task sends the replies in request order. Pipelined produces to one partition keep their order:
/// tasks start in arrival order and every queue on the way to the log's offset assignment is
/// FIFO. Concurrent produces share the log's write rounds (group commit).
async fn serve_connection(
    shard: &Rc<Shard>,
    stream: TcpStream,
    stop: &AtomicBool,
) -> Result<(), String> {
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (replies, queued) = glommio::channels::local_channel::new_bounded(
        limits::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
    );
    let writer_task = glommio::spawn_local(write_replies(shard.clone(), socket, writer, queued));
    let decoder = FrameDecoder::with_limit(limits::REQUEST_BYTES_MAX);
    let mut buffer = BytesMut::with_capacity(CONNECTION_BUFFER_BYTES);
    let mut frame_started: Option<std::time::Instant> = None;
    // The current frame's bytes in the shard's request budget, taken once its length is known
    // and before its body is read.
    let mut frame_memory: Option<tokio::sync::OwnedSemaphorePermit> = None;
    // One iteration per read or per request; ends on close, error or stop.
    let outcome = loop {
        if frame_memory.is_none() {
            if let Ok(Some(bytes)) = decoder.frame_bytes(&buffer) {
                // Waits, first come first served, while the shard holds too many requests: this
                // connection stops reading and its peer feels backpressure.
                let acquired = shard.request_memory.clone().acquire_many_owned(bytes as u32).await;
                match acquired {
                    Ok(permit) => frame_memory = Some(permit),
                    Err(_) => break Ok(()),
                }
                // One allocation of the frame's size, rather than doublings past it.
                buffer.reserve(bytes.saturating_sub(buffer.len()));
                // Time spent waiting for the budget is ours, not a stall of the peer.
                frame_started = Some(std::time::Instant::now());
            }
        }
        match decoder.decode(&mut buffer) {
            Ok(Some(frame)) => {
                frame_started = None;
                shard.metrics.received(
                    spate_protocol::frame::PREFIX_BYTES + frame.header.len() + frame.payload.len(),
                );
                shard.in_flight.set(shard.in_flight.get() + 1);
                // What is left of the read buffer still shares the frame's allocation: copy the
                // few read-ahead bytes out, or a connection waiting for its next frame's budget
                // would keep the whole previous frame alive after its budget was released.
                if buffer.capacity() > CONNECTION_BUFFER_BYTES {
                    let mut rest = BytesMut::with_capacity(CONNECTION_BUFFER_BYTES);
                    rest.extend_from_slice(&buffer);
                    buffer = rest;
                }
                let handler = shard.clone();
                let memory = frame_memory.take();
                let task = glommio::spawn_local(async move {
                    // Counted down on drop too: a connection torn down with requests in flight
                    // drops (cancels) their tasks, and shutdown waits for this count.
                    let _in_flight = InFlight(handler.clone());
                    let reply = handler.handle(frame).await;
                    drop(memory);
                    reply
                });
                if replies.send(task).await.is_err() {
                    break Err("writer stopped".to_string());
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                // The stream cannot be resynchronized: say why (after earlier replies), then close.
                let code = if matches!(error, spate_protocol::frame::FrameError::TooLarge { .. }) {
                    ErrorCode::MessageTooLarge
                } else {
                    ErrorCode::CorruptMessage
                };
                let reply = envelope_error(0, code, &error.to_string());
                let _ = replies.send(glommio::spawn_local(async move { Some(reply) })).await;
                break Err(error.to_string());
            }
        }
        if stop.load(Ordering::SeqCst) && buffer.is_empty() {
            break Ok(());
        }
        if !buffer.is_empty() {
            let started = *frame_started.get_or_insert_with(std::time::Instant::now);
            if started.elapsed() > shard.config.frame_read_timeout {
                break Err("peer stalled mid-frame".into());
            }
        }
        let missing = decoder.missing(&buffer).unwrap_or(1).max(1);
        let want = missing.clamp(16 * 1024, 1024 * 1024);
        let start = buffer.len();
        buffer.resize(start + want, 0);
        let read = glommio::timer::timeout(SHUTDOWN_POLL, async {
            Ok(reader.read(&mut buffer[start..]).await)
        })
        .await;
        match read {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => buffer.truncate(start + n),
            Ok(Err(error)) => break Err(error.to_string()),
            Err(_) => buffer.truncate(start),
        }
    };
    // Let queued requests finish and their replies go out before the connection closes.
    drop(replies);
    let written = writer_task.await;
    outcome.and(written)
}

/// Writes replies in request order; `None` (acks=none) writes nothing. `socket` is the
/// connection's descriptor, for vectored writes (Glommio's stream has none).
async fn write_replies(
    shard: Rc<Shard>,
    socket: std::os::fd::RawFd,
    mut writer: futures_lite::io::WriteHalf<TcpStream>,
    queued: glommio::channels::local_channel::LocalReceiver<glommio::Task<Option<Reply>>>,
) -> Result<(), String> {
    // Ends when the reader side drops its sender and the queue is drained.
    while let Some(task) = queued.recv().await {
        if let Some(reply) = task.await {
            let bytes = write_reply(socket, &mut writer, reply).await?;
            shard.metrics.sent(bytes);
        }
    }
    Ok(())
}

/// Most buffers one vectored write takes (Linux's `IOV_MAX`).
const IOVECS_PER_WRITE_MAX: usize = 1024;

/// Writes one reply; returns the bytes written. The header and the stored batches go out in
/// one `writev` when the socket takes them all (the common case), straight from the log's
/// buffers; whatever it did not take is written through the stream, which waits for room.
async fn write_reply(
    socket: std::os::fd::RawFd,
    stream: &mut futures_lite::io::WriteHalf<TcpStream>,
    reply: Reply,
) -> Result<usize, String> {
    let payload_bytes: usize = reply.payload.iter().map(|p| p.len()).sum();
    let header =
        codec::encode_response(&reply.response, payload_bytes).map_err(|e| e.to_string())?;
    let parts: Vec<&[u8]> = std::iter::once(&header[..])
        .chain(reply.payload.iter().map(|chunk| &chunk[..]))
        .filter(|part| !part.is_empty())
        .collect();
    let iovecs: Vec<libc::iovec> = parts
        .iter()
        .take(IOVECS_PER_WRITE_MAX)
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: every iovec points into a buffer that `parts` borrows for this call; the socket is
    // this connection's, non-blocking, and no other write to it is in progress.
    let written = unsafe { libc::writev(socket, iovecs.as_ptr(), iovecs.len() as libc::c_int) };
    let mut skip = if written < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(error.to_string());
        }
        0
    } else {
        written as usize
    };
    // Bounded by the parts.
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        stream.write_all(&part[skip..]).await.map_err(|e| e.to_string())?;
        skip = 0;
    }
    stream.flush().await.map_err(|e| e.to_string())?;
    // `reply` (and with it the fetch budget it holds) is released here, once written.
    drop(reply);
    Ok(header.len() + payload_bytes)
}

/// Serves `GET /metrics` (any path) with one scrape per connection.
async fn metrics_loop(shard: Rc<Shard>, listener: TcpListener, stop: Arc<AtomicBool>) {
    let poll = accept_poll();
    // Until stop; each iteration serves one scrape.
    while let Some(accepted) = accept_until_stop(&listener, &stop, poll).await {
        let Ok(mut stream) = accepted else { continue };
        let shard = shard.clone();
        glommio::spawn_local(async move {
            // Read the request head, bounded in size and time; its content does not matter.
            let mut head = Vec::with_capacity(1024);
            let mut buffer = [0u8; 1024];
            while head.len() < 8 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = glommio::timer::timeout(Duration::from_secs(5), async { Ok(stream.read(&mut buffer).await) }).await;
                match read {
                    Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buffer[..n]),
                    _ => return,
                }
            }
            let body = shard.scrape().await;
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}

async fn retention_loop(shard: Rc<Shard>, stop: Arc<AtomicBool>) {
    let mut last = std::time::Instant::now();
    // Until stop; each tick is bounded by the number of partitions.
    while !stop.load(Ordering::SeqCst) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
        if last.elapsed() < RETENTION_INTERVAL {
            continue;
        }
        last = std::time::Instant::now();
        for ((topic, partition), log) in shard.all_logs() {
            match log.enforce_retention().await {
                Ok(report) if report.segments_deleted > 0 => {
                    tracing::info!(%topic, partition, segments = report.segments_deleted, bytes = report.bytes_deleted, "retention");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%topic, partition, %error, "retention failed"),
            }
        }
    }
}
