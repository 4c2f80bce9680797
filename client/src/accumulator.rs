//! The producer's record accumulator: per-partition batching by size and linger time, a
//! per-partition in-flight limit, and retries that keep a partition's order. Sans-IO: time is
//! passed in, closed batches come out; the producer's driver sends them.
//!
//! Ordering: a partition's batches leave in the order they were closed (their *ordinal*). A
//! batch that fails with a retriable error goes back into its partition's queue at its ordinal,
//! ahead of every later batch, and nothing of that partition is sent while any of its batches
//! waits out a retry backoff: the batches after a failed one are re-sent after it, in order.
//!
//! Idempotence: with a producer identity set, each batch is stamped when it is closed with the
//! producer id, epoch and its partition's next sequence number, which it keeps across retries;
//! the broker then writes it once and refuses a batch that skips ahead, so several batches may
//! be in flight per partition without duplicates or reordering. A partition's sequence starts
//! over (its queued batches re-stamped from 0) when the broker has forgotten the producer there,
//! and continues from a dropped batch's sequence when never-sent batches time out or the broker
//! refused a batch for good.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustc_hash::FxHashMap;
use spate_protocol::batch::{self, BatchBuilder, BatchIdentity, NewRecord, HEADER_LEN};
use spate_protocol::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX};

use crate::error::ClientError;

/// Identifies a partition of a topic. The name is shared, not copied, when it is cloned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: std::sync::Arc<str>,
    pub partition: u32,
}

/// An idempotent producer's identity, stamped on every batch it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub id: i64,
    pub epoch: i16,
}

/// Sequence numbers wrap past `i32::MAX` to 0 (as the broker counts them).
fn add_sequence(sequence: i32, records: u32) -> i32 {
    ((i64::from(sequence) + i64::from(records)) % (i64::from(i32::MAX) + 1)) as i32
}

/// A closed batch ready to be sent, with the delivery handles of its records in order.
#[derive(Debug)]
pub struct ClosedBatch<D> {
    pub target: TopicPartition,
    pub bytes: BytesMut,
    /// Bytes of encoded records (the batch minus its header): what `complete` releases.
    pub record_bytes: usize,
    pub deliveries: Vec<D>,
    /// Sends tried so far (0 before the first).
    pub attempts: u32,
    /// When the batch's first record arrived: its delivery timeout counts from here.
    pub opened_at: Instant,
    /// The error of the last failed send, if any (reported when the batch times out).
    pub last_error: Option<ClientError>,
    /// Whether a failed send of it may have been written all the same (no answer, a lost
    /// connection, a leader lost before commit): then it must never be treated as refused, and
    /// its sequence numbers never reused, whatever a later attempt is told.
    pub maybe_written: bool,
    /// Its place among its partition's batches, in closing order.
    pub ordinal: u64,
    /// Its first sequence number, when the producer is idempotent.
    pub sequence: Option<i32>,
    pub record_count: u32,
}

struct OpenBatch<D> {
    builder: BatchBuilder,
    deliveries: Vec<D>,
    opened_at: Instant,
    /// Which batch this is, in opening order (see `Accumulator::lingering`).
    generation: u64,
}

struct PartitionQueue<D> {
    open: Option<OpenBatch<D>>,
    /// Closed batches waiting to be sent, in ordinal order.
    ready: VecDeque<ClosedBatch<D>>,
    /// Batches sent and not yet settled, including those waiting out a retry backoff.
    in_flight: usize,
    /// Of those, the ones waiting out a retry backoff: the partition sends nothing meanwhile.
    retrying: usize,
    /// The last error a send to this partition failed with: a queued batch that times out
    /// before it was ever sent reports it, since it is why the batch waited.
    last_error: Option<ClientError>,
    next_ordinal: u64,
    next_sequence: i32,
    /// Ordinals of closed batches not yet acknowledged or failed.
    unacked: Unacked,
    /// Whether it is in `Accumulator::sendable`.
    listed: bool,
    /// Bytes of its last closed batch: the next one's first allocation (a partition that sends
    /// one small record per batch does not allocate a whole `batch_bytes` for each).
    last_batch_bytes: usize,
    /// The sequence to continue from once nothing is in flight (the queued batches are then
    /// re-stamped from it), with the ordinal of the batch it comes from: the first sequence of
    /// a batch the broker refused for good, or 0 when the broker has forgotten the producer.
    rewind: Option<(u64, i32)>,
}

impl<D> Default for PartitionQueue<D> {
    fn default() -> Self {
        PartitionQueue {
            open: None,
            ready: VecDeque::new(),
            in_flight: 0,
            retrying: 0,
            last_error: None,
            next_ordinal: 0,
            next_sequence: 0,
            unacked: Unacked::default(),
            listed: false,
            last_batch_bytes: 0,
            rewind: None,
        }
    }
}

impl<D> PartitionQueue<D> {
    fn is_empty(&self) -> bool {
        self.open.is_none() && self.ready.is_empty() && self.in_flight == 0
    }

    /// Re-stamps every queued batch with sequences from `from`, in order.
    fn renumber(&mut self, from: i32, identity: ProducerIdentity) {
        let mut sequence = from;
        for batch in &mut self.ready {
            let stamp = BatchIdentity {
                producer_id: identity.id,
                producer_epoch: identity.epoch,
                base_sequence: sequence,
            };
            batch::restamp_identity(&mut batch.bytes, stamp);
            batch.sequence = Some(sequence);
            sequence = add_sequence(sequence, batch.record_count);
        }
        self.next_sequence = sequence;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccumulateError {
    #[error("record of {0} bytes cannot fit in a batch (limit {BATCH_BYTES_MAX})")]
    RecordTooLarge(usize),
}

/// A partition's unacknowledged batch ordinals, oldest first. Batches close in ordinal
/// order, so this is a deque kept sorted by pushing at the back; a partition holds a few (up
/// to its buffered batches), and unlike a `BTreeSet` it allocates nothing once it has held as
/// many (a set allocates a node each time it goes from empty to one entry: every batch of a
/// partition with one batch at a time, 4% of the client's CPU with 5,000 partitions).
#[derive(Default)]
struct Unacked(VecDeque<u64>);

impl Unacked {
    fn insert(&mut self, ordinal: u64) {
        debug_assert!(self.0.back().is_none_or(|last| *last < ordinal), "ordinals increase");
        self.0.push_back(ordinal);
    }

    fn remove(&mut self, ordinal: &u64) {
        if let Ok(i) = self.0.binary_search(ordinal) {
            self.0.remove(i);
        }
    }

    fn first(&self) -> Option<&u64> {
        self.0.front()
    }
}

pub struct Accumulator<D> {
    batch_bytes: usize,
    linger: Duration,
    /// Stamped on batches as they close; `None`: not idempotent.
    identity: Option<ProducerIdentity>,
    /// Fx-hashed: the keys are the application's own partitions, and SipHash cost more than
    /// anything else per record here.
    queues: FxHashMap<TopicPartition, PartitionQueue<D>>,
    /// Open batches in the order they opened, with their generation: as every batch lingers
    /// equally long, the front is the next to run out. An entry whose batch has closed since
    /// is skipped; there are at most a few times as many as partitions (see `compact`).
    lingering: VecDeque<(Instant, TopicPartition, u64)>,
    /// Partitions that may have a batch to send: a batch closed, or one came back. Each round
    /// looks at these only, not at every partition.
    sendable: Vec<TopicPartition>,
    /// Batches opened so far (by every partition, so that a partition's queue dropped while
    /// idle and made again never reuses one): the generation of the next.
    next_generation: u64,
    /// Bytes of records buffered and not yet acknowledged or failed.
    buffered_bytes: usize,
}

/// Whether the `lingering` entry (`target`, `generation`) is still its partition's open batch.
fn still_open<D>(
    queues: &FxHashMap<TopicPartition, PartitionQueue<D>>,
    target: &TopicPartition,
    generation: u64,
) -> bool {
    queues
        .get(target)
        .and_then(|q| q.open.as_ref())
        .is_some_and(|open| open.generation == generation)
}

/// Puts `target` on the sendable list, once.
fn list<D>(
    sendable: &mut Vec<TopicPartition>,
    queue: &mut PartitionQueue<D>,
    target: &TopicPartition,
) {
    if !queue.listed {
        queue.listed = true;
        sendable.push(target.clone());
    }
}

impl<D> Accumulator<D> {
    pub fn new(batch_bytes: usize, linger: Duration) -> Accumulator<D> {
        Accumulator {
            batch_bytes: batch_bytes.clamp(HEADER_LEN + 1, BATCH_BYTES_MAX),
            linger,
            identity: None,
            queues: FxHashMap::default(),
            lingering: VecDeque::new(),
            sendable: Vec::new(),
            next_generation: 0,
            buffered_bytes: 0,
        }
    }

    /// Makes the batches closed from now on idempotent, with this identity.
    pub fn set_identity(&mut self, identity: ProducerIdentity) {
        self.identity = Some(identity);
    }

    pub fn identity(&self) -> Option<ProducerIdentity> {
        self.identity
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Adds a record to its partition's open batch. Returns `true` if that closed a batch (the
    /// open one was full), which the caller's partitioner may want to know.
    pub fn append(
        &mut self,
        target: &TopicPartition,
        record: &NewRecord,
        delivery: D,
        now: Instant,
    ) -> Result<bool, AccumulateError> {
        let record_bytes = BatchBuilder::encoded_len(record);
        if HEADER_LEN + record_bytes > BATCH_BYTES_MAX {
            return Err(AccumulateError::RecordTooLarge(record_bytes));
        }
        let batch_bytes = self.batch_bytes;
        // One lookup per record; the topic name is cloned only for a new partition.
        let queue = match self.queues.get_mut(target) {
            Some(queue) => queue,
            None => self.queues.entry(target.clone()).or_default(),
        };
        let mut closed = false;
        if let Some(open) = &queue.open {
            let full = open.builder.len() + record_bytes > batch_bytes
                || open.builder.record_count() as usize >= BATCH_RECORDS_MAX;
            if full {
                Self::close(queue, target, self.identity);
                list(&mut self.sendable, queue, target);
                closed = true;
            }
        }
        if queue.open.is_none() {
            let generation = self.next_generation;
            self.next_generation += 1;
            self.lingering.push_back((now, target.clone(), generation));
            queue.open = Some(OpenBatch {
                builder: BatchBuilder::with_capacity(
                    (HEADER_LEN + record_bytes).max(queue.last_batch_bytes.min(batch_bytes)),
                ),
                deliveries: Vec::new(),
                opened_at: now,
                generation,
            });
        }
        let open = queue.open.as_mut().expect("opened above");
        open.builder.push(record);
        open.deliveries.push(delivery);
        self.buffered_bytes += record_bytes;
        self.compact();
        Ok(closed)
    }

    /// Drops the `lingering` entries of batches closed early (full, or flushed) once they
    /// outnumber the partitions: amortized O(1) per batch, and bounded.
    fn compact(&mut self) {
        if self.lingering.len() <= 2 * self.queues.len() + 64 {
            return;
        }
        let queues = &self.queues;
        self.lingering.retain(|(_, target, generation)| still_open(queues, target, *generation));
    }

    fn close(
        queue: &mut PartitionQueue<D>,
        target: &TopicPartition,
        identity: Option<ProducerIdentity>,
    ) {
        if let Some(open) = queue.open.take() {
            let record_bytes = open.builder.len() - HEADER_LEN;
            let record_count = open.builder.record_count();
            let sequence = identity.map(|_| queue.next_sequence);
            let stamp = match identity {
                Some(identity) => BatchIdentity {
                    producer_id: identity.id,
                    producer_epoch: identity.epoch,
                    base_sequence: queue.next_sequence,
                },
                None => BatchIdentity::default(),
            };
            let bytes = open
                .builder
                .finish_with(stamp)
                .expect("a batch within limits with at least one record");
            queue.last_batch_bytes = bytes.len();
            if identity.is_some() {
                queue.next_sequence = add_sequence(queue.next_sequence, record_count);
            }
            let ordinal = queue.next_ordinal;
            queue.next_ordinal += 1;
            queue.unacked.insert(ordinal);
            queue.ready.push_back(ClosedBatch {
                target: target.clone(),
                bytes,
                record_bytes,
                deliveries: open.deliveries,
                attempts: 0,
                opened_at: open.opened_at,
                last_error: None,
                maybe_written: false,
                ordinal,
                sequence,
                record_count,
            });
        }
    }

    /// Closes open batches older than the linger time. Returns the partitions closed.
    pub fn expire(&mut self, now: Instant) -> Vec<TopicPartition> {
        let linger = self.linger;
        let mut closed = Vec::new();
        // Bounded by the entries: each is popped once.
        while let Some((opened_at, _, _)) = self.lingering.front() {
            if now.saturating_duration_since(*opened_at) < linger {
                break;
            }
            let (_, target, generation) = self.lingering.pop_front().expect("checked");
            let Some(queue) = self.queues.get_mut(&target) else { continue };
            if queue.open.as_ref().is_some_and(|o| o.generation == generation) {
                Self::close(queue, &target, self.identity);
                list(&mut self.sendable, queue, &target);
                closed.push(target);
            }
        }
        closed
    }

    /// Closes every open batch now (flush).
    pub fn close_all(&mut self) {
        for (target, queue) in &mut self.queues {
            if queue.open.is_some() {
                Self::close(queue, target, self.identity);
                list(&mut self.sendable, queue, target);
            }
        }
        self.lingering.clear();
    }

    /// When the next open batch's linger runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        // The first entry whose batch is still open; closed ones are few (see `compact`).
        self.lingering
            .iter()
            .find(|(_, target, generation)| still_open(&self.queues, target, *generation))
            .map(|(opened_at, _, _)| *opened_at + self.linger)
    }

    /// Removes the batches waiting to be sent (not in flight) whose delivery timeout has passed,
    /// releasing their bytes; the caller fails their deliveries. When an idempotent batch that
    /// was never sent leaves, the queued batches after it (never sent either) take over its
    /// sequence numbers, so the broker sees no gap.
    pub fn take_overdue(&mut self, now: Instant, timeout: Duration) -> Vec<ClosedBatch<D>> {
        let mut overdue = Vec::new();
        for queue in self.queues.values_mut() {
            let mut rewind_to = None;
            // A partition's batches are queued in ordinal order, which is the order they were
            // opened in, so the overdue ones are a prefix.
            while queue.ready.front().is_some_and(|b| now >= b.opened_at + timeout) {
                let mut batch = queue.ready.pop_front().expect("checked");
                if batch.last_error.is_none() {
                    batch.last_error.clone_from(&queue.last_error);
                }
                if batch.attempts == 0 && rewind_to.is_none() {
                    rewind_to = batch.sequence;
                }
                queue.unacked.remove(&batch.ordinal);
                self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.record_bytes);
                overdue.push(batch);
            }
            if let (Some(from), Some(identity)) = (rewind_to, self.identity) {
                // Batches are sent in order, so everything after a never-sent one is unsent too.
                assert!(queue.ready.iter().all(|b| b.attempts == 0));
                queue.renumber(from, identity);
            }
        }
        self.forget_idle_queues();
        overdue
    }

    /// Takes the next batch of every partition below `in_flight_max`, counting it in flight.
    /// Skips a partition while one of its batches waits out a retry backoff, or while its
    /// sequence must start over and batches are still in flight.
    pub fn drain_ready(&mut self, in_flight_max: usize) -> Vec<ClosedBatch<D>> {
        let mut out = Vec::new();
        // Only partitions where something changed: a blocked one is listed again when what
        // blocks it (a batch in flight, a retry backoff) comes back.
        for target in std::mem::take(&mut self.sendable) {
            let Some(queue) = self.queues.get_mut(&target) else { continue };
            queue.listed = false;
            if queue.retrying > 0 {
                continue;
            }
            if let Some((_, from)) = queue.rewind {
                if queue.in_flight > 0 {
                    continue;
                }
                if let Some(identity) = self.identity {
                    queue.renumber(from, identity);
                }
                queue.rewind = None;
            }
            // Bounded by the in-flight limit.
            while queue.in_flight < in_flight_max {
                let Some(mut batch) = queue.ready.pop_front() else { break };
                batch.attempts += 1;
                queue.in_flight += 1;
                out.push(batch);
            }
        }
        out
    }

    /// An in-flight batch was acknowledged or failed for good: its records leave the buffer.
    pub fn complete(&mut self, target: &TopicPartition, ordinal: u64, record_bytes: usize) {
        if let Some(queue) = self.queues.get_mut(target) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            queue.unacked.remove(&ordinal);
            list(&mut self.sendable, queue, target);
        }
        self.forget_idle_queues_of(target);
        self.buffered_bytes = self.buffered_bytes.saturating_sub(record_bytes);
    }

    /// Drops the queues of partitions with nothing open, queued or in flight, unless the
    /// producer is idempotent: a partition's queue then keeps its sequence for the next batch
    /// (bounded by the partitions the producer writes to).
    fn forget_idle_queues(&mut self) {
        if self.identity.is_none() {
            self.queues.retain(|_, q| !q.is_empty());
        }
    }

    fn forget_idle_queues_of(&mut self, target: &TopicPartition) {
        if self.identity.is_none() && self.queues.get(target).is_some_and(|q| q.is_empty()) {
            self.queues.remove(target);
        }
    }

    /// An in-flight batch failed retriably and waits out a backoff before [`retry`](Self::retry)
    /// puts it back: its partition sends nothing meanwhile, so its batches go out again in order.
    pub fn hold_for_retry(&mut self, target: &TopicPartition) {
        if let Some(queue) = self.queues.get_mut(target) {
            queue.retrying += 1;
        }
    }

    /// The batch failed with a retriable error: it goes back into its partition's queue ahead
    /// of every later batch.
    pub fn retry(&mut self, batch: ClosedBatch<D>) {
        let target = batch.target.clone();
        let queue = self.queues.entry(target.clone()).or_default();
        queue.in_flight = queue.in_flight.saturating_sub(1);
        queue.retrying = queue.retrying.saturating_sub(1);
        queue.last_error.clone_from(&batch.last_error);
        let at = queue.ready.partition_point(|b| b.ordinal < batch.ordinal);
        queue.ready.insert(at, batch);
        list(&mut self.sendable, queue, &target);
    }

    /// Whether a batch of the partition closed before the one with `ordinal` is still
    /// unacknowledged (in flight, waiting to be retried, or queued).
    pub fn earlier_unacked(&self, target: &TopicPartition, ordinal: u64) -> bool {
        self.queues
            .get(target)
            .and_then(|q| q.unacked.first())
            .is_some_and(|first| *first < ordinal)
    }

    /// The broker does not know the producer on this partition and refused the batch with
    /// `ordinal`. If no earlier batch is outstanding, the partition forgot the producer (idle,
    /// evicted, or past what a restart replays): once its in-flight batches have come back, its
    /// queued batches are re-stamped with sequences from 0. Otherwise the batch merely overtook
    /// the partition's first one, which will introduce the producer; starting over then would
    /// reuse that batch's sequence, and the broker would take a new batch for its duplicate.
    pub fn unknown_producer(&mut self, target: &TopicPartition, ordinal: u64) {
        if self.earlier_unacked(target, ordinal) {
            return;
        }
        if let Some(queue) = self.queues.get_mut(target) {
            queue.rewind = Some((0, 0));
        }
    }

    /// The broker refused `batch` for good and wrote nothing of it: once the partition's
    /// in-flight batches have come back (refused as out of order after the gap), its queued
    /// batches take over the sequences from that batch's on. The earliest such batch wins.
    pub fn rewind_sequence(&mut self, batch: &ClosedBatch<D>) {
        let (Some(queue), Some(sequence)) = (self.queues.get_mut(&batch.target), batch.sequence)
        else {
            return;
        };
        if queue.rewind.is_none_or(|(ordinal, _)| batch.ordinal < ordinal && ordinal != 0) {
            queue.rewind = Some((batch.ordinal, sequence));
        }
    }

    /// Whether the partition's sequence is about to continue from an earlier point, so that
    /// out-of-order refusals of its in-flight batches are expected.
    pub fn sequence_rewinding(&self, target: &TopicPartition) -> bool {
        self.queues.get(target).is_some_and(|q| q.rewind.is_some())
    }

    /// Closes every open batch and takes every batch not in flight (the producer failed for
    /// good); the caller fails their deliveries. In-flight batches settle as they come back.
    pub fn take_all_queued(&mut self) -> Vec<ClosedBatch<D>> {
        self.close_all();
        let mut taken = Vec::new();
        for queue in self.queues.values_mut() {
            for batch in queue.ready.drain(..) {
                queue.unacked.remove(&batch.ordinal);
                self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.record_bytes);
                taken.push(batch);
            }
        }
        self.forget_idle_queues();
        taken
    }

    /// Nothing open, queued or in flight.
    pub fn is_idle(&self) -> bool {
        // Every buffered record is in a batch that is open, queued or in flight.
        self.buffered_bytes == 0
            && self
                .queues
                .values()
                .all(|q| q.open.is_none() && q.ready.is_empty() && q.in_flight == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use spate_protocol::batch::{validate, BatchHeader, Records};

    fn record(value: usize) -> NewRecord {
        NewRecord { value: Some(Bytes::from(vec![1u8; value])), timestamp: 5, ..Default::default() }
    }

    fn tp(partition: u32) -> TopicPartition {
        TopicPartition { topic: "t".into(), partition }
    }

    #[test]
    fn batches_close_by_size_and_linger() {
        let start = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::from_millis(5));
        for i in 0..10u32 {
            acc.append(&tp(0), &record(300), i, start).unwrap();
        }
        // 300-byte records in 1000-byte batches: 3 per batch, so 3 closed and one open.
        let closed = acc.drain_ready(10);
        assert_eq!(closed.len(), 3);
        for batch in &closed {
            let header = validate(&batch.bytes).unwrap();
            assert_eq!(header.record_count, 3);
            assert!(batch.bytes.len() <= 1000);
        }
        assert_eq!(closed[0].deliveries, vec![0, 1, 2]);
        assert_eq!(acc.next_deadline(), Some(start + Duration::from_millis(5)));
        assert!(acc.expire(start + Duration::from_millis(4)).is_empty());
        assert_eq!(acc.expire(start + Duration::from_millis(5)), vec![tp(0)]);
        let last = acc.drain_ready(10);
        assert_eq!(last[0].deliveries, vec![9]);
    }

    #[test]
    fn a_round_looks_only_at_partitions_that_changed_and_linger_entries_stay_bounded() {
        let now = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::from_millis(5));
        // 3 records per batch: 66 batches of each partition close full, one stays open.
        for i in 0..10_000u32 {
            acc.append(&tp(i % 50), &record(300), i, now).unwrap();
        }
        assert!(acc.lingering.len() <= 2 * acc.queues.len() + 64 + 1, "compacted");
        let first = acc.drain_ready(1);
        assert_eq!(first.len(), 50, "one in flight per partition");
        assert!(acc.drain_ready(1).is_empty(), "nothing came back");
        let back = &first[7];
        acc.complete(&back.target, back.ordinal, back.record_bytes);
        let next = acc.drain_ready(1);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].target, back.target, "only the partition whose batch came back");
        // The open batches still linger in opening order.
        assert_eq!(acc.next_deadline(), Some(now + Duration::from_millis(5)));
        assert_eq!(acc.expire(now + Duration::from_millis(5)).len(), 50);
        assert_eq!(acc.next_deadline(), None);
    }

    #[test]
    fn in_flight_limit_and_retry_keep_order() {
        let now = Instant::now();
        let mut acc = Accumulator::new(100, Duration::ZERO);
        for i in 0..4u32 {
            acc.append(&tp(1), &record(60), i, now).unwrap();
        }
        acc.close_all();
        let first = acc.drain_ready(1);
        assert_eq!(first.len(), 1);
        assert!(acc.drain_ready(1).is_empty(), "one in flight per partition");
        // The in-flight batch fails retriably: it must be sent again before the others.
        let failed = first.into_iter().next().unwrap();
        assert_eq!(failed.deliveries, vec![0]);
        acc.retry(failed);
        let again = acc.drain_ready(1);
        assert_eq!(again[0].deliveries, vec![0]);
        assert_eq!(again[0].attempts, 2);
        let bytes = again[0].record_bytes;
        acc.complete(&tp(1), again[0].ordinal, bytes);
        let next = acc.drain_ready(1);
        assert_eq!(next[0].deliveries, vec![1]);
    }

    #[test]
    fn overdue_batches_leave_in_order_and_release_their_bytes() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut acc = Accumulator::new(100, Duration::ZERO);
        acc.append(&tp(0), &record(60), 0u32, start).unwrap();
        acc.append(&tp(0), &record(60), 1u32, start + Duration::from_secs(5)).unwrap();
        acc.close_all();
        let sent = acc.drain_ready(1);
        assert_eq!(sent[0].deliveries, vec![0]);
        // The in-flight batch is never taken as overdue; the queued one only after its timeout.
        assert!(acc.take_overdue(start + Duration::from_secs(14), timeout).is_empty());
        let overdue = acc.take_overdue(start + Duration::from_secs(15), timeout);
        assert_eq!(overdue.len(), 1);
        assert_eq!(overdue[0].deliveries, vec![1]);
        let in_flight_bytes = sent[0].record_bytes;
        assert_eq!(acc.buffered_bytes(), in_flight_bytes);
        acc.complete(&tp(0), sent[0].ordinal, in_flight_bytes);
        assert!(acc.is_idle());
        assert_eq!(acc.buffered_bytes(), 0);
    }

    #[test]
    fn records_survive_batching_byte_for_byte() {
        let now = Instant::now();
        let mut acc = Accumulator::new(64 * 1024, Duration::ZERO);
        let records: Vec<NewRecord> = (0..50)
            .map(|i| NewRecord {
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("value {i}"))),
                timestamp: 1000 + i,
                ..Default::default()
            })
            .collect();
        for (i, r) in records.iter().enumerate() {
            acc.append(&tp(0), r, i, now).unwrap();
        }
        acc.close_all();
        let batch = acc.drain_ready(1).pop().unwrap();
        let header = BatchHeader::parse(&batch.bytes).unwrap();
        let decoded: Vec<_> = Records::new(&batch.bytes, header).map(|r| r.unwrap()).collect();
        for (r, d) in records.iter().zip(decoded) {
            assert_eq!(r.key.as_deref(), d.key);
            assert_eq!(r.value.as_deref(), d.value);
            assert_eq!(r.timestamp, d.timestamp);
        }
    }

    fn sequence_of(batch: &ClosedBatch<u32>) -> (i64, i16, i32) {
        let header = validate(&batch.bytes).unwrap();
        (header.producer_id, header.producer_epoch, header.base_sequence)
    }

    /// Four closed batches of two records each on partition 0, from producer 7 epoch 1.
    fn idempotent_accumulator(now: Instant) -> Accumulator<u32> {
        let mut acc = Accumulator::new(200, Duration::ZERO);
        acc.set_identity(ProducerIdentity { id: 7, epoch: 1 });
        for i in 0..8u32 {
            acc.append(&tp(0), &record(60), i, now).unwrap();
        }
        acc.close_all();
        acc
    }

    #[test]
    fn idempotent_batches_carry_sequences_that_survive_retries_in_order() {
        let now = Instant::now();
        let mut acc = idempotent_accumulator(now);
        let sent = acc.drain_ready(5);
        let sequences: Vec<_> = sent.iter().map(sequence_of).collect();
        assert_eq!(sequences, vec![(7, 1, 0), (7, 1, 2), (7, 1, 4), (7, 1, 6)]);
        // The second fails; the third and fourth come back refused as out of order (an earlier
        // one is outstanding). Nothing is sent while any waits out its backoff.
        let mut sent = sent.into_iter();
        let first = sent.next().unwrap();
        let failed: Vec<_> = sent.collect();
        assert!(!acc.earlier_unacked(&tp(0), first.ordinal));
        assert!(acc.earlier_unacked(&tp(0), failed[1].ordinal));
        for _ in &failed {
            acc.hold_for_retry(&tp(0));
        }
        acc.append(&tp(0), &record(60), 8, now).unwrap();
        acc.close_all();
        assert!(acc.drain_ready(5).is_empty(), "a partition waits for its retries");
        // They come back out of order (backoff timers), and leave in order, before the new one.
        for batch in failed.into_iter().rev() {
            acc.retry(batch);
        }
        let again = acc.drain_ready(5);
        let sequences: Vec<_> = again.iter().map(|b| sequence_of(b).2).collect();
        assert_eq!(sequences, vec![2, 4, 6, 8], "first batch still in flight: 4 more");
        assert!(again[..3].iter().all(|b| b.attempts == 2));
        acc.complete(&tp(0), first.ordinal, first.record_bytes);
        for batch in again {
            acc.complete(&tp(0), batch.ordinal, batch.record_bytes);
        }
        assert!(acc.is_idle());
        // An idle partition keeps its sequence.
        acc.append(&tp(0), &record(60), 9, now).unwrap();
        acc.close_all();
        assert_eq!(sequence_of(&acc.drain_ready(5)[0]).2, 9);
    }

    #[test]
    fn a_forgotten_producer_starts_the_partition_over_once_nothing_is_in_flight() {
        let now = Instant::now();
        let mut acc = idempotent_accumulator(now);
        let mut sent = acc.drain_ready(2);
        // The second overtook the first (another connection, say): that is no reason to start
        // over, since the first will introduce the producer.
        acc.unknown_producer(&tp(0), sent[1].ordinal);
        assert!(!acc.sequence_rewinding(&tp(0)));
        // The first is refused too: nothing earlier is outstanding, so the partition forgot it.
        acc.unknown_producer(&tp(0), sent[0].ordinal);
        assert!(acc.sequence_rewinding(&tp(0)));
        let second = sent.pop().unwrap();
        acc.hold_for_retry(&tp(0));
        acc.retry(second);
        assert!(acc.drain_ready(5).is_empty(), "the first is still in flight");
        let first = sent.pop().unwrap();
        acc.hold_for_retry(&tp(0));
        acc.retry(first);
        let again = acc.drain_ready(5);
        let sequences: Vec<_> = again.iter().map(|b| sequence_of(b).2).collect();
        assert_eq!(sequences, vec![0, 2, 4, 6]);
        assert_eq!(again[0].deliveries, vec![0, 1]);
    }

    #[test]
    fn a_batch_refused_for_good_hands_its_sequence_to_the_next_ones() {
        let now = Instant::now();
        let mut acc = idempotent_accumulator(now);
        let mut sent = acc.drain_ready(3).into_iter();
        let (first, refused, third) =
            (sent.next().unwrap(), sent.next().unwrap(), sent.next().unwrap());
        acc.complete(&tp(0), first.ordinal, first.record_bytes);
        // The second is refused for good; the third, sent after it, comes back out of order.
        acc.rewind_sequence(&refused);
        acc.complete(&tp(0), refused.ordinal, refused.record_bytes);
        assert!(acc.sequence_rewinding(&tp(0)));
        assert!(!acc.earlier_unacked(&tp(0), third.ordinal));
        acc.hold_for_retry(&tp(0));
        acc.retry(third);
        let again = acc.drain_ready(5);
        let sequences: Vec<_> = again.iter().map(|b| sequence_of(b).2).collect();
        assert_eq!(sequences, vec![2, 4], "the third and fourth batches, from the refused one's");
        assert_eq!(again[0].deliveries, vec![4, 5]);
        assert!(!acc.sequence_rewinding(&tp(0)));
    }

    #[test]
    fn never_sent_batches_that_time_out_leave_no_sequence_gap() {
        let start = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut acc: Accumulator<u32> = Accumulator::new(200, Duration::ZERO);
        acc.set_identity(ProducerIdentity { id: 7, epoch: 0 });
        acc.append(&tp(0), &record(60), 0, start).unwrap();
        acc.close_all();
        let sent = acc.drain_ready(1);
        acc.append(&tp(0), &record(60), 1, start).unwrap();
        acc.append(&tp(0), &record(60), 2, start).unwrap();
        acc.close_all();
        acc.append(&tp(0), &record(60), 3, start + timeout).unwrap();
        acc.close_all();
        // The queued batch (sequence 1) times out unsent: the next one takes its sequence.
        let overdue = acc.take_overdue(start + timeout, timeout);
        assert_eq!(overdue.len(), 1);
        assert_eq!(sequence_of(&overdue[0]).2, 1);
        acc.complete(&tp(0), sent[0].ordinal, sent[0].record_bytes);
        let next = acc.drain_ready(1);
        assert_eq!(sequence_of(&next[0]).2, 1);
        assert_eq!(next[0].deliveries, vec![3]);
    }

    #[test]
    fn oversized_record_is_refused() {
        let mut acc: Accumulator<()> = Accumulator::new(1000, Duration::ZERO);
        let error = acc.append(&tp(0), &record(BATCH_BYTES_MAX), (), Instant::now()).unwrap_err();
        assert!(matches!(error, AccumulateError::RecordTooLarge(_)));
        assert!(acc.is_idle());
    }
}
