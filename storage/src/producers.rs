//! Idempotent producers' state per partition: what lets a retried batch be recognised and
//! answered with its original offsets instead of being written twice, and a batch that skips
//! ahead be refused. Sans-IO: batch headers and offsets in, verdicts out; the log consults it
//! when it assigns offsets and rebuilds it by replaying batch headers.
//!
//! Rules (Kafka's, for a producer id ≥ 0; batches with producer id -1 are not checked):
//! - an epoch below the producer's current one is fenced (a zombie after a restart);
//! - a higher epoch starts over: its first batch must have sequence 0;
//! - within an epoch, a batch whose sequence range equals one of the producer's last
//!   [`BATCHES_PER_PRODUCER`] batches is a duplicate: its original offsets are returned;
//! - otherwise its first sequence must follow the last batch's last sequence (wrapping past
//!   `i32::MAX` to 0), or it is out of order (a gap: an earlier batch was lost);
//! - a producer the table does not know may only start at sequence 0 (after expiry, or
//!   retention removed its batches, it must re-initialise).
//!
//! Bounded: at most [`PRODUCERS_MAX`] producers per partition (the idlest is evicted first),
//! [`BATCHES_PER_PRODUCER`] batches each; producers idle for longer than the caller's expiry
//! are dropped by [`ProducerTable::expire`].

use std::collections::{HashMap, VecDeque};

use spate_protocol::batch::BatchHeader;

pub use crate::limits::{BATCHES_PER_PRODUCER, PRODUCERS_MAX};

/// What the table says of a batch about to be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it (also for batches of non-idempotent producers).
    Append,
    /// Already in the log at these offsets: answer with them, append nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
    /// Its first sequence is not the next one expected.
    OutOfOrder { expected: i32, got: i32 },
    /// Its epoch is older than the producer's current one.
    Fenced { current_epoch: i16 },
    /// The producer is unknown here and the batch does not start at sequence 0.
    UnknownProducer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone)]
struct Producer {
    epoch: i16,
    /// The last batches of this epoch, oldest first.
    batches: VecDeque<Appended>,
    /// The first sequence the next batch must have: after the last batch, or, once a
    /// truncation removed batches, the first sequence of the earliest one removed.
    next_sequence: i32,
    last_seen_ms: i64,
}

/// The idempotent producers of one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, Producer>,
}

/// The last sequence of a batch: sequences wrap past `i32::MAX` to 0.
fn last_sequence(header: &BatchHeader) -> i32 {
    let span = header.record_count.saturating_sub(1) as i64;
    ((i64::from(header.base_sequence) + span) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

impl ProducerTable {
    /// Decides what to do with a batch before it gets offsets. Pure: call
    /// [`record`](Self::record) once it is queued.
    pub fn check(&self, header: &BatchHeader) -> Verdict {
        if header.producer_id < 0 {
            return Verdict::Append;
        }
        let first = header.base_sequence;
        let Some(producer) = self.producers.get(&header.producer_id) else {
            return if first == 0 { Verdict::Append } else { Verdict::UnknownProducer };
        };
        if header.producer_epoch < producer.epoch {
            return Verdict::Fenced { current_epoch: producer.epoch };
        }
        if header.producer_epoch > producer.epoch {
            return if first == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0, got: first }
            };
        }
        let last = last_sequence(header);
        if let Some(original) =
            producer.batches.iter().find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Verdict::Duplicate {
                base_offset: original.base_offset,
                last_offset: original.last_offset,
            };
        }
        let expected = producer.next_sequence;
        if first == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder { expected, got: first }
        }
    }

    /// Remembers a batch that took offsets `base_offset..` (appended, or replayed on recovery).
    pub fn record(&mut self, header: &BatchHeader, base_offset: i64, now_ms: i64) {
        if header.producer_id < 0 {
            return;
        }
        if !self.producers.contains_key(&header.producer_id)
            && self.producers.len() >= PRODUCERS_MAX
        {
            self.evict_idlest();
        }
        let producer = self.producers.entry(header.producer_id).or_insert(Producer {
            epoch: header.producer_epoch,
            batches: VecDeque::new(),
            next_sequence: 0,
            last_seen_ms: now_ms,
        });
        if header.producer_epoch != producer.epoch {
            producer.epoch = header.producer_epoch;
            producer.batches.clear();
        }
        producer.next_sequence = next_sequence(last_sequence(header));
        if producer.batches.len() == BATCHES_PER_PRODUCER {
            producer.batches.pop_front();
        }
        producer.batches.push_back(Appended {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset,
            last_offset: base_offset + i64::from(header.last_offset_delta),
        });
        producer.last_seen_ms = producer.last_seen_ms.max(now_ms);
        assert!(producer.batches.len() <= BATCHES_PER_PRODUCER);
    }

    /// The log dropped everything at or after `offset` (a failed write rolled back, or a
    /// truncation): forget those batches, so a retry of them is appended again. A producer
    /// that lost batches expects the first of them next (its batches are contiguous in
    /// sequence), so its retries in order are accepted and a later batch is still a gap.
    pub fn truncate(&mut self, offset: i64) {
        for producer in self.producers.values_mut() {
            if let Some(first_removed) = producer.batches.iter().find(|b| b.base_offset >= offset) {
                producer.next_sequence = first_removed.first_sequence;
                producer.batches.retain(|b| b.base_offset < offset);
            }
        }
    }

    /// Forgets producers not seen since `before_ms`.
    pub fn expire(&mut self, before_ms: i64) {
        self.producers.retain(|_, p| p.last_seen_ms >= before_ms);
    }

    fn evict_idlest(&mut self) {
        let idlest = self.producers.iter().min_by_key(|(_, p)| p.last_seen_ms).map(|(id, _)| *id);
        if let Some(id) = idlest {
            self.producers.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(producer_id: i64, epoch: i16, sequence: i32, records: u32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            leader_term: 1,
            version: 1,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            first_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            record_count: records,
        }
    }

    /// Checks and, if appended, records a batch at `*offset`; returns the verdict.
    fn send(table: &mut ProducerTable, h: BatchHeader, offset: &mut i64) -> Verdict {
        let verdict = table.check(&h);
        if verdict == Verdict::Append {
            table.record(&h, *offset, 0);
            *offset += i64::from(h.record_count);
        }
        verdict
    }

    #[test]
    fn retries_of_any_of_the_last_five_batches_are_duplicates() {
        let mut table = ProducerTable::default();
        let mut offset = 100;
        for i in 0..5 {
            assert_eq!(send(&mut table, header(7, 0, i * 10, 10), &mut offset), Verdict::Append);
        }
        for i in 0..5 {
            assert_eq!(
                table.check(&header(7, 0, i * 10, 10)),
                Verdict::Duplicate {
                    base_offset: 100 + i64::from(i) * 10,
                    last_offset: 109 + i64::from(i) * 10
                }
            );
        }
        // The sixth pushes the first out: it is no longer recognised, and is out of order.
        assert_eq!(send(&mut table, header(7, 0, 50, 10), &mut offset), Verdict::Append);
        assert_eq!(table.check(&header(7, 0, 0, 10)), Verdict::OutOfOrder { expected: 60, got: 0 });
    }

    #[test]
    fn gaps_zombies_and_new_epochs() {
        let mut table = ProducerTable::default();
        let mut offset = 0;
        assert_eq!(send(&mut table, header(1, 3, 0, 2), &mut offset), Verdict::Append);
        // A gap: sequence 2 was expected.
        assert_eq!(table.check(&header(1, 3, 4, 1)), Verdict::OutOfOrder { expected: 2, got: 4 });
        // A zombie with an older epoch is fenced.
        assert_eq!(table.check(&header(1, 2, 2, 1)), Verdict::Fenced { current_epoch: 3 });
        // A restarted producer (bumped epoch) starts at 0 and fences the old one.
        assert_eq!(table.check(&header(1, 4, 5, 1)), Verdict::OutOfOrder { expected: 0, got: 5 });
        assert_eq!(send(&mut table, header(1, 4, 0, 1), &mut offset), Verdict::Append);
        assert_eq!(table.check(&header(1, 3, 2, 1)), Verdict::Fenced { current_epoch: 4 });
        // Unknown producers start at 0; non-idempotent batches are never checked.
        assert_eq!(table.check(&header(9, 0, 3, 1)), Verdict::UnknownProducer);
        assert_eq!(table.check(&header(-1, -1, -1, 1)), Verdict::Append);
    }

    #[test]
    fn sequences_wrap_and_truncation_forgets_rolled_back_batches() {
        let mut table = ProducerTable::default();
        let mut offset = 0;
        assert_eq!(send(&mut table, header(1, 0, 0, 1), &mut offset), Verdict::Append);
        let producer = table.producers.get_mut(&1).unwrap();
        producer.batches.back_mut().unwrap().last_sequence = i32::MAX - 1;
        producer.next_sequence = i32::MAX;
        let wrapping = header(1, 0, i32::MAX, 3);
        assert_eq!(last_sequence(&wrapping), 1);
        assert_eq!(send(&mut table, wrapping, &mut offset), Verdict::Append);
        assert_eq!(table.check(&header(1, 0, 2, 1)), Verdict::Append);
        // The batch at offset 1 was rolled back: its retry must be appended again, and the
        // batch after it is still a gap.
        table.truncate(1);
        assert_eq!(table.check(&header(1, 0, i32::MAX, 3)), Verdict::Append);
        assert_eq!(
            table.check(&header(1, 0, 2, 1)),
            Verdict::OutOfOrder { expected: i32::MAX, got: 2 }
        );
        // Truncating everything of a producer keeps what it must send next.
        table.truncate(0);
        assert_eq!(table.len(), 1);
        assert_eq!(table.check(&header(1, 0, 0, 1)), Verdict::Append);
        assert_eq!(table.check(&header(1, 0, 5, 1)), Verdict::OutOfOrder { expected: 0, got: 5 });
    }

    #[test]
    fn the_table_is_bounded_and_idle_producers_expire() {
        let mut table = ProducerTable::default();
        for id in 0..(PRODUCERS_MAX as i64 + 10) {
            table.record(&header(id, 0, 0, 1), id, id);
        }
        assert_eq!(table.len(), PRODUCERS_MAX);
        // The idlest (oldest) were evicted.
        assert_eq!(table.check(&header(0, 0, 1, 1)), Verdict::UnknownProducer);
        table.expire(PRODUCERS_MAX as i64);
        assert_eq!(table.len(), 10);
    }
}
