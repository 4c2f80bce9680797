//! One replicated partition on this node: the core (`Replica`) over the partition's `Log`, and
//! the carrying out of its effects as `replication/PROTOCOL.md` obliges.
//!
//! Effects are handled synchronously right after each core step, in order:
//! - log and state writes (`PersistHardState`, `PersistTermStart`, `Truncate`, `ResetLog`,
//!   `AppendToLog`, leader markers, membership records, proposals, the lazy commit) go, in
//!   order, into the partition's IO queue, which one task works off: consecutive appends are
//!   coalesced into one `append_replicated` (one write round, one fdatasync), each run of
//!   persists into one `replica_state::store`;
//! - messages go to the node's outbox at once, unless a persist, truncation or reset is still
//!   queued: then they queue behind it (persist before send, I8);
//! - `SendAppend` reads whole batches from the log (`read_bounded`) in a task and sends them as
//!   an `Append`. If nothing past `prev_end` has been written yet (a proposal still in the IO
//!   queue), the send is parked and retried when the next append completes;
//! - after each append, `LogDurable` reports the log's durable end by the flush policy
//!   (`always`: fsynced; otherwise written or journaled) — unless a truncation or reset was
//!   requested since that append was queued (an `epoch` counts them), as the protocol asks;
//! - `CommitAdvanced` on a leader completes the proposals below the new commit point (acks=all);
//!   `SteppedDown` fails those still waiting (`LeadershipLost`).
//!
//! The driver keeps a mirror of the persisted replica state and changes it only in IO order, so
//! the file never names a term for records that are not (or no longer) in the log: a
//! truncation rewrites the state after the cut when it dropped history entries.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use spate_protocol::batch::{self, BatchHeader};
use spate_protocol::control;
use spate_replication::codec::Payload;
use spate_replication::{
    AppendRequest, Config, Effect, Event, GroupId, HardState, Membership, Message, NodeId, Offset,
    ProposeError, Replica, Role, Term,
};
use spate_storage::log::Proposal;
use spate_storage::replica_state::{self, ReplicaState};
use spate_storage::{FlushPolicy, Log};
use tracing::{debug, error, info, warn};

use crate::error::ReplicationError;
use crate::limits::{
    APPEND_READ_BYTES_MAX, APPEND_ROUND_BYTES_MAX, COMMIT_PERSIST_TICKS, DUPLICATE_WAIT_TICKS_MAX,
    PARTITION_IO_OPS_MAX, PARTITION_QUEUED_BYTES_MAX, PROPOSALS_IN_FLIGHT_MAX, TICK_MS,
};
use crate::node::{spawn_deferred, Shared};
use crate::restore::{self, chunk_bytes, to_replica_set, to_state_history};
use crate::wire;

/// Settings of one replicated partition.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    /// Let the group go quiet when idle (see PROTOCOL.md, "Quiescence"); the node's failure
    /// detector reports dead peers.
    pub quiesce: bool,
    /// Seeds the election-timeout randomization; derived from node and group when `None`.
    pub rng_seed: Option<u64>,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig { quiesce: true, rng_seed: None }
    }
}

/// When a proposal is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Once committed: durable by the flush policy on a majority (acks=all).
    Commit,
    /// Once this leader wrote it by the flush policy (acks=leader).
    LeaderWrite,
}

/// Where a committed proposal landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub base_offset: Offset,
    pub last_offset: Offset,
    pub term: Term,
}

/// One replica's position, as its leader knows it (for describe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node: NodeId,
    /// Its log matches the leader's below this.
    pub match_end: Offset,
    /// Of that, durable on it by the flush policy.
    pub durable_end: Offset,
}

/// A snapshot of a partition, for describe and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub group: GroupId,
    pub node: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    /// `Some` on a leader that may serve reads (its marker is committed).
    pub high_watermark: Option<Offset>,
    /// This replica's commit point (on a follower it may lag the leader's).
    pub commit: Offset,
    pub log_start: Offset,
    /// The core's log end (appends requested, not necessarily written yet).
    pub log_end: Offset,
    pub durable_end: Offset,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Leader only: every replica's position, this one included.
    pub replicas: Vec<ReplicaStatus>,
    /// Truncations of a divergent tail carried out since the partition opened.
    pub truncations: u64,
    /// Times this replica became leader / stopped leading since the partition opened.
    pub leaderships_gained: u64,
    pub leaderships_lost: u64,
    pub offline: Option<String>,
}

/// A handle to one replicated partition; cheap to clone, `!Send` (lives on its shard).
#[derive(Clone)]
pub struct Partition {
    inner: Rc<Inner>,
}

struct Inner {
    group: GroupId,
    log: Log,
    node: Rc<Shared>,
    flush: FlushPolicy,
    /// Proposals waiting for commit; FIFO so proposals keep their order.
    in_flight: tokio::sync::Semaphore,
    state: RefCell<State>,
}

enum Io {
    HardState(HardState),
    TermStart { term: Term, start_offset: Offset },
    Commit(Offset),
    Truncate(Offset),
    Reset { log_start: Offset, term_before_start: Term, membership: Membership },
    Append { batches: Vec<Bytes>, bytes: usize, epoch: u64 },
    Send(NodeId, Message<Payload>),
    SendAppend(AppendRequest),
}

impl Io {
    /// Later messages wait for these (persist before send).
    fn is_barrier(&self) -> bool {
        matches!(self, Io::HardState(_) | Io::TermStart { .. } | Io::Truncate(_) | Io::Reset { .. })
    }
}

struct Waiter {
    committed: Committed,
    reply: oneshot::Sender<Result<Committed, ReplicationError>>,
}

struct State {
    core: Replica<Payload>,
    io: VecDeque<Io>,
    /// Bytes of appends in `io`.
    io_bytes: usize,
    /// Barrier operations in `io` or being carried out.
    barriers: usize,
    /// Truncations and resets requested so far (see the module docs).
    epoch: u64,
    /// One parked `SendAppend` per follower, waiting for its data to be written.
    parked: BTreeMap<NodeId, AppendRequest>,
    /// Proposals in offset order, waiting for the commit point to pass them.
    waiters: VecDeque<Waiter>,
    /// acks=leader proposals in offset order, waiting for this replica's own write.
    written_waiters: VecDeque<Waiter>,
    /// The term this replica leads in, between `BecameLeader` and `SteppedDown`.
    leading: Option<Term>,
    /// The persisted replica state, changed in IO order.
    mirror: ReplicaState,
    /// Largest commit point queued for (lazy) persistence.
    commit_queued: Offset,
    io_waker: Option<Waker>,
    truncations: u64,
    leaderships_gained: u64,
    leaderships_lost: u64,
    offline: Option<String>,
    /// An offline leader told its followers to elect another (once; see `hand_over`).
    handed_over: bool,
    stopped: bool,
    scratch: Vec<Effect<Payload>>,
}

impl Partition {
    /// Opens a replica of `group` on `log` (recovering its state; a new one starts with
    /// `replicas` as its voters) and starts its IO task. The node ticks it and routes its
    /// messages from now on.
    pub(crate) async fn open(
        node: Rc<Shared>,
        group: GroupId,
        replicas: &[NodeId],
        log: Log,
        config: PartitionConfig,
    ) -> Result<Partition, ReplicationError> {
        let mut bootstrap = Membership { voters: replicas.to_vec(), learners: Vec::new() };
        bootstrap.voters.sort_unstable();
        bootstrap.voters.dedup();
        if !bootstrap.is_valid() || !bootstrap.contains(node.id) {
            return Err(ReplicationError::Config(format!(
                "replica set {replicas:?} must name this node ({}) and fit REPLICAS_MAX",
                node.id
            )));
        }
        let (restored, mut mirror) = restore::restore(&log, &bootstrap).await?;
        let seed = config
            .rng_seed
            .unwrap_or_else(|| u64::from(node.id) << 48 ^ group.0 ^ node.incarnation);
        let mut core_config = Config::new(node.id, group, seed);
        core_config.quiesce = config.quiesce;
        let core = Replica::new(core_config, restored);
        // The core dropped history entries past the recovered log end: so does the mirror.
        mirror.term_history = to_state_history(core.history().entries());
        let commit_queued = mirror.commit;
        info!(
            group = group.0,
            node = node.id,
            term = core.term(),
            log_end = core.log_end(),
            commit = core.commit(),
            "opened replicated partition"
        );
        let flush = log.config().flush;
        let inner = Rc::new(Inner {
            group,
            log,
            node,
            flush,
            in_flight: tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT_MAX),
            state: RefCell::new(State {
                core,
                io: VecDeque::new(),
                io_bytes: 0,
                barriers: 0,
                epoch: 0,
                parked: BTreeMap::new(),
                waiters: VecDeque::new(),
                written_waiters: VecDeque::new(),
                leading: None,
                mirror,
                commit_queued,
                io_waker: None,
                truncations: 0,
                leaderships_gained: 0,
                leaderships_lost: 0,
                offline: None,
                handed_over: false,
                stopped: false,
                scratch: Vec::new(),
            }),
        });
        spawn_deferred(io_task(inner.clone()));
        Ok(Partition { inner })
    }

    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// The partition's log (readers use `read_bounded` up to the high watermark).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// Appends `batch` (a producer's batch; its offsets and term are stamped here) if this
    /// replica leads, and resolves once it is committed — durable by the flush policy on a
    /// majority (acks=all) — with where it landed. Waits while `PROPOSALS_IN_FLIGHT_MAX`
    /// proposals are pending.
    pub async fn propose(&self, batch: BytesMut) -> Result<Committed, ReplicationError> {
        self.propose_with(batch, Ack::Commit).await
    }

    /// [`propose`](Self::propose), answered at `ack`: once committed, or (acks=leader) once
    /// this leader wrote it by the flush policy, before any follower has it — a batch a new
    /// leader may then truncate, as with Kafka's acks=1.
    pub async fn propose_with(
        &self,
        mut batch: BytesMut,
        ack: Ack,
    ) -> Result<Committed, ReplicationError> {
        let header =
            batch::validate(&batch).map_err(|e| ReplicationError::InvalidBatch(e.to_string()))?;
        if header.is_control() {
            return Err(ReplicationError::InvalidBatch("control batches are replication's".into()));
        }
        let _permit =
            self.inner.in_flight.acquire().await.map_err(|_| ReplicationError::Stopped)?;
        let reply = {
            let mut guard = self.inner.state.borrow_mut();
            let st = &mut *guard;
            st.check_usable()?;
            if !st.core.is_leader() {
                return Err(ReplicationError::NotLeader { leader: st.core.leader() });
            }
            // An idempotent producer's batch is checked against the producer table first (the
            // table follows every replica's log, so a new leader knows the sequences): a retry
            // of a batch already proposed gets its original offsets once they are committed.
            let proposal = self
                .inner
                .log
                .check_proposal(&header)
                .map_err(ReplicationError::from_producer_check)?;
            if let Proposal::Duplicate(original) = proposal {
                Err(original)
            } else {
                let mut out = std::mem::take(&mut st.scratch);
                let records = u64::from(header.last_offset_delta) + 1;
                let meta = st.core.propose(records, &mut out).map_err(|e| match e {
                    ProposeError::NotLeader(leader) => ReplicationError::NotLeader { leader },
                    ProposeError::Transferring => ReplicationError::Transferring,
                    other => ReplicationError::InvalidBatch(other.to_string()),
                });
                let meta = match meta {
                    Ok(meta) => meta,
                    Err(e) => {
                        st.scratch = out;
                        return Err(e);
                    }
                };
                self.inner.log.record_proposal(&header, meta.base_offset as i64);
                batch::stamp(&mut batch, meta.base_offset as i64, meta.term);
                let bytes = batch.freeze();
                st.push_append(bytes);
                let (reply, wait) = oneshot::channel();
                let committed = Committed {
                    base_offset: meta.base_offset,
                    last_offset: meta.last_offset,
                    term: meta.term,
                };
                let waiters = match ack {
                    Ack::Commit => &mut st.waiters,
                    Ack::LeaderWrite => &mut st.written_waiters,
                };
                assert!(waiters.back().is_none_or(|w| w.committed.last_offset < meta.base_offset));
                waiters.push_back(Waiter { committed, reply });
                self.inner.carry_out(st, &mut out);
                st.scratch = out;
                Ok(wait)
            }
        };
        match reply {
            Ok(wait) => wait.await.unwrap_or(Err(ReplicationError::Stopped)),
            Err(original) => self.await_duplicate(original).await,
        }
    }

    /// Answers a producer's retry of a batch already in the log (or proposed) once that batch
    /// is committed, with its original offsets; `NotLeader` if leadership goes meanwhile.
    /// Bounded: `DUPLICATE_WAIT_TICKS_MAX` ticks.
    async fn await_duplicate(
        &self,
        original: spate_storage::Appended,
    ) -> Result<Committed, ReplicationError> {
        for _ in 0..DUPLICATE_WAIT_TICKS_MAX {
            {
                let st = self.inner.state.borrow();
                st.check_usable()?;
                if !st.core.is_leader() {
                    return Err(ReplicationError::NotLeader { leader: st.core.leader() });
                }
                if st.core.high_watermark().is_some_and(|hw| hw > original.last_offset as u64) {
                    return Ok(Committed {
                        base_offset: original.base_offset as Offset,
                        last_offset: original.last_offset as Offset,
                        term: st.core.term(),
                    });
                }
            }
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        }
        Err(ReplicationError::LeadershipLost { leader: self.leader() })
    }

    /// Hands leadership to `to` (or to the most caught-up voter) and waits, at most a few
    /// election timeouts, until another replica leads. For graceful shutdown.
    pub async fn transfer_leadership(
        &self,
        to: Option<NodeId>,
    ) -> Result<NodeId, ReplicationError> {
        {
            let mut guard = self.inner.state.borrow_mut();
            let st = &mut *guard;
            st.check_usable()?;
            let me = self.inner.node.id;
            let target = to.or_else(|| {
                st.core
                    .progress()
                    .filter(|(n, _)| st.core.current_membership().is_voter(*n))
                    .max_by_key(|(n, p)| (p.match_end, std::cmp::Reverse(*n)))
                    .map(|(n, _)| n)
            });
            let Some(target) = target else {
                return Err(ReplicationError::NotLeader { leader: st.core.leader() });
            };
            let mut out = std::mem::take(&mut st.scratch);
            let result = st.core.transfer_leadership(target, &mut out);
            self.inner.carry_out(st, &mut out);
            st.scratch = out;
            result.map_err(|e| match e {
                ProposeError::NotLeader(leader) => ReplicationError::NotLeader { leader },
                ProposeError::Transferring => ReplicationError::Transferring,
                other => ReplicationError::Config(other.to_string()),
            })?;
            debug!(group = self.inner.group.0, from = me, to = target, "leadership transfer");
        }
        let ticks_max = 4 * spate_replication::limits::ELECTION_TICKS_MAX_DEFAULT;
        for _ in 0..ticks_max {
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
            let st = self.inner.state.borrow();
            if let (false, Some(leader)) = (st.core.is_leader(), st.core.leader()) {
                return Ok(leader);
            }
        }
        Err(ReplicationError::TransferTimedOut)
    }

    /// The leader this replica knows of (itself included). `None` while this replica is
    /// offline: its view stopped moving, and it must not send clients to itself.
    pub fn leader(&self) -> Option<NodeId> {
        let st = self.inner.state.borrow();
        st.offline.is_none().then(|| st.core.leader()).flatten()
    }

    /// The high watermark readers and acks may use: `Some` only on a leader that has committed
    /// its own marker and is not offline.
    pub fn high_watermark(&self) -> Option<Offset> {
        let st = self.inner.state.borrow();
        st.offline.is_none().then(|| st.core.high_watermark()).flatten()
    }

    /// Offline (a log operation failed, e.g. a full disk): it serves, leads and votes no more
    /// until the broker restarts.
    pub fn is_offline(&self) -> bool {
        self.inner.state.borrow().offline.is_some()
    }

    pub fn status(&self) -> PartitionStatus {
        let st = self.inner.state.borrow();
        let core = &st.core;
        let membership = core.current_membership();
        let mut replicas: Vec<ReplicaStatus> = core
            .progress()
            .map(|(node, p)| ReplicaStatus {
                node,
                match_end: p.match_end,
                durable_end: p.durable_end,
            })
            .collect();
        if core.is_leader() {
            replicas.push(ReplicaStatus {
                node: core.id(),
                match_end: core.log_end(),
                durable_end: core.durable_end(),
            });
            replicas.sort_by_key(|r| r.node);
        }
        // An offline replica leads nothing: its core stopped where the failure found it.
        let online = st.offline.is_none();
        PartitionStatus {
            group: self.inner.group,
            node: core.id(),
            role: if online { core.role() } else { Role::Follower },
            term: core.term(),
            leader: core.leader().filter(|_| online),
            high_watermark: core.high_watermark().filter(|_| online),
            commit: core.commit(),
            log_start: core.log_start(),
            log_end: core.log_end(),
            durable_end: core.durable_end(),
            voters: membership.voters.clone(),
            learners: membership.learners.clone(),
            replicas,
            truncations: st.truncations,
            leaderships_gained: st.leaderships_gained,
            leaderships_lost: st.leaderships_lost,
            offline: st.offline.clone(),
        }
    }

    /// One driver tick.
    pub(crate) fn tick(&self, tick: u64, peers_down: &[NodeId]) {
        let mut guard = self.inner.state.borrow_mut();
        let st = &mut *guard;
        if st.check_usable().is_err() {
            if st.offline.is_some() && !std::mem::replace(&mut st.handed_over, true) {
                self.inner.hand_over(st);
            }
            return;
        }
        let mut out = std::mem::take(&mut st.scratch);
        for &node in peers_down {
            let _ = st.core.step(Event::PeerDown { node }, &mut out);
        }
        let _ = st.core.step(Event::Tick, &mut out);
        if tick.is_multiple_of(u64::from(COMMIT_PERSIST_TICKS))
            && st.core.commit() > st.commit_queued
        {
            st.commit_queued = st.core.commit();
            st.push(Io::Commit(st.commit_queued));
        }
        self.inner.carry_out(st, &mut out);
        st.scratch = out;
    }

    /// A message from `from` (authenticated by the transport) for this group.
    pub(crate) fn receive(&self, from: NodeId, msg: Message<Payload>) {
        let mut guard = self.inner.state.borrow_mut();
        let st = &mut *guard;
        if st.check_usable().is_err() {
            return;
        }
        if let Message::Append { batches, payload, .. } = &msg {
            if !wire::payload_matches(batches, payload) {
                warn!(
                    group = self.inner.group.0,
                    from, "dropped an Append whose batches do not match their descriptions"
                );
                return;
            }
            if st.io_bytes > PARTITION_QUEUED_BYTES_MAX {
                debug!(group = self.inner.group.0, from, "dropped an Append: log queue full");
                return;
            }
        }
        let mut out = std::mem::take(&mut st.scratch);
        if let Err(reason) = st.core.step(Event::Message { from, msg }, &mut out) {
            debug!(group = self.inner.group.0, from, %reason, "dropped a message");
        }
        self.inner.carry_out(st, &mut out);
        st.scratch = out;
    }

    /// Stops the partition: fails waiting proposals, stops its IO task and closes the log
    /// cleanly (queued appends are written first).
    pub(crate) async fn close(&self) {
        self.abandon();
        if let Err(e) = self.inner.log.close().await {
            warn!(group = self.inner.group.0, error = %e, "closing the log");
        }
    }
}

impl Partition {
    /// Stops the partition without touching the log (as a crash leaves it): fails waiting
    /// proposals and lets the IO task end.
    pub(crate) fn abandon(&self) {
        let mut st = self.inner.state.borrow_mut();
        st.stopped = true;
        st.fail_waiters(|_| ReplicationError::Stopped);
        st.io.clear();
        if let Some(waker) = st.io_waker.take() {
            waker.wake();
        }
        self.inner.in_flight.close();
    }
}

impl State {
    fn check_usable(&self) -> Result<(), ReplicationError> {
        if let Some(reason) = &self.offline {
            return Err(ReplicationError::Offline(reason.clone()));
        }
        if self.stopped {
            return Err(ReplicationError::Stopped);
        }
        Ok(())
    }

    fn push(&mut self, op: Io) {
        if self.io.len() >= PARTITION_IO_OPS_MAX {
            self.go_offline(format!("more than {PARTITION_IO_OPS_MAX} log operations queued"));
            return;
        }
        if op.is_barrier() {
            self.barriers += 1;
        }
        self.io.push_back(op);
        if let Some(waker) = self.io_waker.take() {
            waker.wake();
        }
    }

    fn push_append(&mut self, batch: Bytes) {
        if let Some(Io::Append { batches, bytes, epoch }) = self.io.back_mut() {
            if *epoch == self.epoch && *bytes + batch.len() <= APPEND_ROUND_BYTES_MAX {
                *bytes += batch.len();
                self.io_bytes += batch.len();
                batches.push(batch);
                return;
            }
        }
        self.io_bytes += batch.len();
        self.push(Io::Append { bytes: batch.len(), batches: vec![batch], epoch: self.epoch });
    }

    fn go_offline(&mut self, reason: String) {
        error!(reason, "replicated partition offline");
        self.fail_waiters(|_| ReplicationError::Offline(reason.clone()));
        self.offline = Some(reason);
        self.io.clear();
        if let Some(waker) = self.io_waker.take() {
            waker.wake();
        }
    }

    fn fail_waiters(&mut self, error: impl Fn(&Committed) -> ReplicationError) {
        for waiter in self.waiters.drain(..).chain(self.written_waiters.drain(..)) {
            let _ = waiter.reply.send(Err(error(&waiter.committed)));
        }
    }

    /// Completes the acks=leader proposals this replica has written below `end`.
    fn complete_written(&mut self, end: Offset) {
        complete_below(&mut self.written_waiters, self.leading, end);
    }

    /// Completes the proposals below `commit`.
    fn complete_waiters(&mut self, commit: Offset) {
        complete_below(&mut self.waiters, self.leading, commit);
    }
}

/// Answers the waiters (in offset order, all of the term this replica leads in, `leading`)
/// whose batches end below `end`.
fn complete_below(waiters: &mut VecDeque<Waiter>, leading: Option<Term>, end: Offset) {
    let Some(term) = leading else { return };
    // Bounded by the waiters.
    while let Some(w) = waiters.front() {
        if w.committed.last_offset >= end {
            break;
        }
        let w = waiters.pop_front().expect("front");
        assert_eq!(w.committed.term, term, "a waiter from another term survived a step-down");
        let _ = w.reply.send(Ok(w.committed));
    }
}

impl Inner {
    /// Carries out `out`'s effects in order (see the module docs). Synchronous: anything that
    /// waits is queued or spawned.
    fn carry_out(self: &Rc<Self>, st: &mut State, out: &mut Vec<Effect<Payload>>) {
        for effect in out.drain(..) {
            if st.offline.is_some() {
                return;
            }
            match effect {
                Effect::PersistHardState(hard) => st.push(Io::HardState(hard)),
                Effect::PersistTermStart { term, start_offset } => {
                    st.push(Io::TermStart { term, start_offset })
                }
                Effect::Send { to, msg } => {
                    if st.barriers > 0 {
                        st.push(Io::Send(to, msg));
                    } else {
                        self.node.send(to, self.group, msg);
                    }
                }
                Effect::SendAppend(args) => {
                    if st.barriers > 0 {
                        st.push(Io::SendAppend(args));
                    } else {
                        self.send_append(st, args);
                    }
                }
                Effect::Truncate { to_offset } => {
                    st.epoch += 1;
                    st.push(Io::Truncate(to_offset));
                }
                Effect::ResetLog { log_start, term_before_start, membership } => {
                    st.epoch += 1;
                    st.push(Io::Reset { log_start, term_before_start, membership });
                }
                Effect::AppendToLog { first_offset, batches, payload } => {
                    // The payload holds every batch of the Append (checked against their
                    // descriptions on receipt); the core wants those from `first_offset` on.
                    let new: Vec<Bytes> = payload
                        .into_iter()
                        .filter(|b| {
                            BatchHeader::parse(b)
                                .is_ok_and(|h| h.base_offset as u64 >= first_offset)
                        })
                        .collect();
                    assert_eq!(new.len(), batches.len(), "payload checked on receipt");
                    for batch in new {
                        st.push_append(batch);
                    }
                }
                Effect::AppendLeaderMarker { offset, term } => {
                    let marker = control::leader_marker(offset as i64, term, now_ms());
                    st.push_append(marker.freeze());
                }
                Effect::AppendMembership { offset, term, membership } => {
                    match control::membership(
                        offset as i64,
                        term,
                        now_ms(),
                        &membership.voters,
                        &membership.learners,
                    ) {
                        Ok(record) => st.push_append(record.freeze()),
                        Err(e) => st.go_offline(format!("membership record: {e}")),
                    }
                }
                Effect::CommitAdvanced { commit } => st.complete_waiters(commit),
                Effect::BecameLeader { term } => {
                    info!(group = self.group.0, node = self.node.id, term, "became leader");
                    st.leading = Some(term);
                    st.leaderships_gained += 1;
                }
                Effect::SteppedDown { term, leader } => {
                    info!(group = self.group.0, node = self.node.id, term, ?leader, "stepped down");
                    st.leading = None;
                    st.leaderships_lost += 1;
                    st.parked.clear();
                    st.fail_waiters(|_| ReplicationError::LeadershipLost { leader });
                }
            }
        }
    }

    /// A leader gone offline (its log failed) can do nothing for its group, but its followers
    /// may be quiesced, and its broker still answers keepalives: nothing would ever start an
    /// election. So it asks the follower with the longest log to start one at once
    /// (`TimeoutNow`, as a leadership transfer does) and wakes the others with a last
    /// heartbeat; they elect without it. (The chaos suite's disk fault found a partition with
    /// no leader for good.)
    fn hand_over(&self, st: &State) {
        if !st.core.is_leader() {
            return;
        }
        let (term, commit) = (st.core.term(), st.core.commit());
        let membership = st.core.current_membership();
        let target = st
            .core
            .progress()
            .filter(|(node, _)| membership.is_voter(*node))
            .max_by_key(|(_, p)| p.match_end)
            .map(|(node, _)| node);
        warn!(group = self.group.0, node = self.node.id, ?target, "offline leader hands over");
        for (node, _) in st.core.progress() {
            let msg = if Some(node) == target {
                Message::TimeoutNow { term }
            } else {
                Message::Heartbeat { term, commit, quiesce: false }
            };
            self.node.send(node, self.group, msg);
        }
    }

    /// Reads what `args` asks for and sends it as an `Append`, or parks it if nothing past
    /// `prev_end` is written yet.
    fn send_append(self: &Rc<Self>, st: &mut State, args: AppendRequest) {
        let log_end = st.core.log_end();
        let offsets = self.log.offsets();
        let readable = offsets.written.max(offsets.high_watermark) as u64;
        let unreachable = !self.node.reachable(args.to);
        if args.probe
            || args.prev_end >= log_end
            || args.prev_end < offsets.start as u64
            || unreachable
        {
            // A resend (the core's probe), nothing to carry, the log no longer holds prev_end,
            // or the follower is down (no record reads for a dead peer): an empty Append; the
            // follower's answer moves the leader on.
            self.node.send(args.to, self.group, args.message(Vec::new(), Vec::new()));
            return;
        }
        if readable <= args.prev_end {
            st.parked.insert(args.to, args);
            return;
        }
        let inner = self.clone();
        spawn_deferred(async move { inner.read_and_send(args, log_end).await });
    }

    async fn read_and_send(self: Rc<Self>, args: AppendRequest, upper: Offset) {
        let read =
            self.log.read_bounded(args.prev_end as i64, APPEND_READ_BYTES_MAX, upper as i64).await;
        let read = match read {
            Ok(read) => read,
            Err(e) => {
                debug!(group = self.group.0, to = args.to, error = %e, "append read failed; the core resends");
                return;
            }
        };
        let split: Option<Vec<Vec<Bytes>>> =
            read.chunks.iter().map(|chunk| wire::split_batches(chunk_bytes(chunk))).collect();
        let Some(split) = split else {
            warn!(group = self.group.0, "a read did not split into whole batches");
            return;
        };
        let payload = append_payload(split);
        let mut metas = Vec::with_capacity(payload.len());
        let mut next = args.prev_end;
        for bytes in &payload {
            match wire::batch_meta(bytes) {
                Some(meta) if meta.base_offset == next => {
                    next = meta.end();
                    metas.push(meta);
                }
                _ => {
                    warn!(
                        group = self.group.0,
                        at = next,
                        "read batches are not contiguous from prev_end"
                    );
                    return;
                }
            }
        }
        let st = self.state.borrow();
        // The read took time: send only if we still lead in the term that asked.
        if st.core.is_leader() && st.core.term() == args.term && st.offline.is_none() {
            self.node.send(args.to, self.group, args.message(metas, payload));
        }
    }

    /// After an append completed: report durability (unless a truncation or reset came since)
    /// and retry parked sends.
    fn appended(self: &Rc<Self>, epoch: u64) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        if st.offline.is_some() || st.stopped {
            return;
        }
        let mut out = std::mem::take(&mut st.scratch);
        if epoch == st.epoch {
            let offsets = self.log.offsets();
            let durable = match self.flush {
                FlushPolicy::Always => offsets.durable,
                _ => offsets.high_watermark,
            };
            let _ = st.core.step(Event::LogDurable { end: durable as u64 }, &mut out);
            st.complete_written(durable as u64);
        }
        let parked = std::mem::take(&mut st.parked);
        for (_, args) in parked {
            if st.core.is_leader() && st.core.term() == args.term {
                out.push(Effect::SendAppend(AppendRequest {
                    commit: st.core.commit().max(args.commit),
                    ..args
                }));
            }
        }
        self.carry_out(st, &mut out);
        st.scratch = out;
    }

    async fn store_state(&self, state: &ReplicaState) -> Result<(), String> {
        replica_state::store(self.log.dir(), state).await.map_err(|e| e.to_string())
    }
}

/// The batches one Append carries from a read: its whole batches in order, at most
/// `APPEND_BATCHES_MAX` of them. The read is bounded by bytes (1 MiB), and small batches would
/// otherwise exceed the codec's count limit: the envelope would fail to encode, every time, and
/// the follower never catch up (the chaos suite found a partition stalled so). The rest goes in
/// the next Append, which the core asks for once this one is acknowledged.
fn append_payload(split: Vec<Vec<Bytes>>) -> Vec<Bytes> {
    split.into_iter().flatten().take(spate_replication::limits::APPEND_BATCHES_MAX).collect()
}

fn now_ms() -> i64 {
    spate_storage::wall_clock_ms()
}

/// The next queued operation, or `None` once the partition stopped or went offline.
async fn next_io(inner: &Inner) -> Option<Io> {
    poll_fn(|cx| {
        let mut st = inner.state.borrow_mut();
        if st.stopped || st.offline.is_some() {
            return Poll::Ready(None);
        }
        match st.io.pop_front() {
            Some(op) => Poll::Ready(Some(op)),
            None => {
                st.io_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// Works off the partition's IO queue, in order, until it stops.
async fn io_task(inner: Rc<Inner>) {
    // Each iteration takes one operation off a bounded queue; ends when the partition stops.
    while let Some(op) = next_io(&inner).await {
        let result = match op {
            Io::Append { batches, bytes, epoch } => {
                let result = inner.log.append_replicated(batches).await;
                inner.state.borrow_mut().io_bytes -= bytes;
                match result {
                    Ok(_) => {
                        inner.appended(epoch);
                        Ok(())
                    }
                    Err(e) => Err(format!("append: {e}")),
                }
            }
            Io::HardState(_) | Io::TermStart { .. } | Io::Commit(_) => persist(&inner, op).await,
            Io::Truncate(to_offset) => truncate(&inner, to_offset).await,
            Io::Reset { log_start, term_before_start, membership } => {
                reset(&inner, log_start, term_before_start, &membership).await
            }
            Io::Send(to, msg) => {
                inner.node.send(to, inner.group, msg);
                Ok(())
            }
            Io::SendAppend(args) => {
                let mut st = inner.state.borrow_mut();
                if st.core.is_leader() && st.core.term() == args.term {
                    inner.send_append(&mut st, args);
                }
                Ok(())
            }
        };
        if let Err(reason) = result {
            inner.state.borrow_mut().go_offline(reason);
            return;
        }
    }
}

/// A run of persists (this one and those queued right behind it) in one store.
async fn persist(inner: &Inner, first: Io) -> Result<(), String> {
    let (state, barriers) = {
        let mut st = inner.state.borrow_mut();
        let mut barriers = 0;
        let mut op = Some(first);
        // Bounded by the queue.
        while let Some(next) = op.take() {
            barriers += usize::from(next.is_barrier());
            match next {
                Io::HardState(hard) => {
                    st.mirror.term = hard.term;
                    st.mirror.voted_for = hard.voted_for;
                }
                Io::TermStart { term, start_offset } => {
                    assert!(
                        st.mirror
                            .term_history
                            .last()
                            .is_none_or(|e| e.term < term && e.start_offset < start_offset),
                        "term history out of order"
                    );
                    st.mirror.term_history.push(replica_state::TermStart { term, start_offset });
                }
                Io::Commit(commit) => st.mirror.commit = st.mirror.commit.max(commit),
                _ => unreachable!("only persists are gathered"),
            }
            if matches!(
                st.io.front(),
                Some(Io::HardState(_) | Io::TermStart { .. } | Io::Commit(_))
            ) {
                op = st.io.pop_front();
            }
        }
        (st.mirror.clone(), barriers)
    };
    let result = inner.store_state(&state).await;
    release_barriers(inner, barriers);
    result
}

async fn truncate(inner: &Inner, to_offset: Offset) -> Result<(), String> {
    inner.log.truncate_to(to_offset as i64).await.map_err(|e| format!("truncate: {e}"))?;
    // After the cut, never before: a crash in between leaves history entries past the log
    // end, which a restart drops; the other order could name a wrong term for surviving
    // records.
    let state = {
        let mut st = inner.state.borrow_mut();
        st.truncations += 1;
        let before = st.mirror.term_history.len();
        st.mirror.term_history.retain(|e| e.start_offset < to_offset);
        (st.mirror.term_history.len() != before).then(|| st.mirror.clone())
    };
    let result = match state {
        Some(state) => inner.store_state(&state).await,
        None => Ok(()),
    };
    release_barriers(inner, 1);
    result
}

async fn reset(
    inner: &Inner,
    log_start: Offset,
    term_before_start: Term,
    membership: &Membership,
) -> Result<(), String> {
    inner.log.reset_to(log_start as i64).await.map_err(|e| format!("reset: {e}"))?;
    let state = {
        let mut st = inner.state.borrow_mut();
        st.mirror.term_history.clear();
        if log_start > 0 && term_before_start > 0 {
            st.mirror.term_history.push(replica_state::TermStart {
                term: term_before_start,
                start_offset: log_start - 1,
            });
        }
        st.mirror.membership_floor = Some(to_replica_set(membership));
        st.mirror.commit = st.mirror.commit.max(log_start);
        st.mirror.clone()
    };
    let result = inner.store_state(&state).await;
    release_barriers(inner, 1);
    result
}

fn release_barriers(inner: &Inner, barriers: usize) {
    let mut st = inner.state.borrow_mut();
    assert!(st.barriers >= barriers, "barrier count");
    st.barriers -= barriers;
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_replication::limits::APPEND_BATCHES_MAX;

    /// More small batches than one Append may carry: the first `APPEND_BATCHES_MAX`, in order,
    /// across the read's chunks.
    #[test]
    fn an_append_carries_at_most_the_codec_batch_limit() {
        let batch = |i: usize| Bytes::from(i.to_le_bytes().to_vec());
        let chunks: Vec<Vec<Bytes>> =
            vec![(0..3_000).map(batch).collect(), (3_000..6_000).map(batch).collect()];
        let payload = append_payload(chunks);
        assert_eq!(payload.len(), APPEND_BATCHES_MAX);
        assert!(payload.iter().enumerate().all(|(i, b)| *b == batch(i)));
        let few = append_payload(vec![vec![batch(0)], vec![], vec![batch(1)]]);
        assert_eq!(few, vec![batch(0), batch(1)]);
    }
}
