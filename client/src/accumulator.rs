//! The producer's record accumulator: per-partition batching by size and linger time, a
//! per-partition in-flight limit, and retries that keep a partition's order. Sans-IO: time is
//! passed in, closed batches come out; the producer's driver sends them.
//!
//! Ordering: a partition's batches leave in the order they were closed. A batch that fails with
//! a retriable error goes back to the *front* of its partition's queue. With at most one batch
//! in flight per partition (the default whenever retries are on), no later batch can overtake a
//! retried one, so a partition is never reordered.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spate_protocol::batch::{BatchBuilder, NewRecord, HEADER_LEN};
use spate_protocol::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX};

use crate::error::ClientError;

/// Identifies a partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
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
}

struct OpenBatch<D> {
    builder: BatchBuilder,
    deliveries: Vec<D>,
    opened_at: Instant,
}

struct PartitionQueue<D> {
    open: Option<OpenBatch<D>>,
    ready: VecDeque<ClosedBatch<D>>,
    in_flight: usize,
    /// The last error a send to this partition failed with: a queued batch that times out
    /// before it was ever sent reports it, since it is why the batch waited.
    last_error: Option<ClientError>,
}

impl<D> Default for PartitionQueue<D> {
    fn default() -> Self {
        PartitionQueue { open: None, ready: VecDeque::new(), in_flight: 0, last_error: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccumulateError {
    #[error("record of {0} bytes cannot fit in a batch (limit {BATCH_BYTES_MAX})")]
    RecordTooLarge(usize),
}

pub struct Accumulator<D> {
    batch_bytes: usize,
    linger: Duration,
    queues: HashMap<TopicPartition, PartitionQueue<D>>,
    /// Bytes of records buffered and not yet acknowledged or failed.
    buffered_bytes: usize,
}

impl<D> Accumulator<D> {
    pub fn new(batch_bytes: usize, linger: Duration) -> Accumulator<D> {
        Accumulator {
            batch_bytes: batch_bytes.clamp(HEADER_LEN + 1, BATCH_BYTES_MAX),
            linger,
            queues: HashMap::new(),
            buffered_bytes: 0,
        }
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
        let queue = self.queues.entry(target.clone()).or_default();
        let mut closed = false;
        if let Some(open) = &queue.open {
            let full = open.builder.len() + record_bytes > batch_bytes
                || open.builder.record_count() as usize >= BATCH_RECORDS_MAX;
            if full {
                Self::close(queue, target);
                closed = true;
            }
        }
        let open = queue.open.get_or_insert_with(|| OpenBatch {
            builder: BatchBuilder::with_capacity(
                (HEADER_LEN + record_bytes).max(batch_bytes.min(64 * 1024)),
            ),
            deliveries: Vec::new(),
            opened_at: now,
        });
        open.builder.push(record);
        open.deliveries.push(delivery);
        self.buffered_bytes += record_bytes;
        Ok(closed)
    }

    fn close(queue: &mut PartitionQueue<D>, target: &TopicPartition) {
        if let Some(open) = queue.open.take() {
            let record_bytes = open.builder.len() - HEADER_LEN;
            let bytes =
                open.builder.finish().expect("a batch within limits with at least one record");
            queue.ready.push_back(ClosedBatch {
                target: target.clone(),
                bytes,
                record_bytes,
                deliveries: open.deliveries,
                attempts: 0,
                opened_at: open.opened_at,
                last_error: None,
            });
        }
    }

    /// Closes open batches older than the linger time. Returns the partitions closed.
    pub fn expire(&mut self, now: Instant) -> Vec<TopicPartition> {
        let linger = self.linger;
        let mut closed = Vec::new();
        for (target, queue) in &mut self.queues {
            if queue.open.as_ref().is_some_and(|o| now.duration_since(o.opened_at) >= linger) {
                Self::close(queue, target);
                closed.push(target.clone());
            }
        }
        closed
    }

    /// Closes every open batch now (flush).
    pub fn close_all(&mut self) {
        for (target, queue) in &mut self.queues {
            Self::close(queue, target);
        }
    }

    /// When the next open batch's linger runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| q.open.as_ref())
            .map(|o| o.opened_at + self.linger)
            .min()
    }

    /// Removes the batches waiting to be sent (not in flight) whose delivery timeout has passed,
    /// releasing their bytes; the caller fails their deliveries.
    pub fn take_overdue(&mut self, now: Instant, timeout: Duration) -> Vec<ClosedBatch<D>> {
        let mut overdue = Vec::new();
        for queue in self.queues.values_mut() {
            // A partition's batches are queued in the order they were opened (retried ones go
            // back to the front, and are the oldest), so the overdue ones are a prefix.
            while queue.ready.front().is_some_and(|b| now >= b.opened_at + timeout) {
                let mut batch = queue.ready.pop_front().expect("checked");
                if batch.last_error.is_none() {
                    batch.last_error.clone_from(&queue.last_error);
                }
                self.buffered_bytes = self.buffered_bytes.saturating_sub(batch.record_bytes);
                overdue.push(batch);
            }
        }
        self.queues.retain(|_, q| q.open.is_some() || !q.ready.is_empty() || q.in_flight > 0);
        overdue
    }

    /// Takes the next batch of every partition below `in_flight_max`, counting it in flight.
    pub fn drain_ready(&mut self, in_flight_max: usize) -> Vec<ClosedBatch<D>> {
        let mut out = Vec::new();
        for queue in self.queues.values_mut() {
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

    /// The batch was acknowledged or failed for good: its records leave the buffer.
    pub fn complete(&mut self, target: &TopicPartition, record_bytes: usize) {
        if let Some(queue) = self.queues.get_mut(target) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if queue.open.is_none() && queue.ready.is_empty() && queue.in_flight == 0 {
                self.queues.remove(target);
            }
        }
        self.buffered_bytes = self.buffered_bytes.saturating_sub(record_bytes);
    }

    /// The batch failed with a retriable error: it goes back to the front of its partition.
    pub fn retry(&mut self, batch: ClosedBatch<D>) {
        let queue = self.queues.entry(batch.target.clone()).or_default();
        queue.in_flight = queue.in_flight.saturating_sub(1);
        queue.last_error.clone_from(&batch.last_error);
        queue.ready.push_front(batch);
    }

    /// Nothing open, queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.queues.values().all(|q| q.open.is_none() && q.ready.is_empty() && q.in_flight == 0)
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
        acc.complete(&tp(1), bytes);
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
        acc.complete(&tp(0), in_flight_bytes);
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

    #[test]
    fn oversized_record_is_refused() {
        let mut acc: Accumulator<()> = Accumulator::new(1000, Duration::ZERO);
        let error = acc.append(&tp(0), &record(BATCH_BYTES_MAX), (), Instant::now()).unwrap_err();
        assert!(matches!(error, AccumulateError::RecordTooLarge(_)));
        assert!(acc.is_idle());
    }
}
