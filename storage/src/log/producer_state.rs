//! Idempotent producers in the log: the [`ProducerTable`] is consulted when an append takes its
//! offsets, under the same borrow of the log's state, so pipelined batches are checked in the
//! order they take offsets. It is rebuilt on open by replaying the batch headers of the last
//! [`limits::PRODUCER_REPLAY_BYTES_MAX`] bytes of the log, cut back with the log on truncation
//! and on a failed write's rollback, and forgets producers idle for
//! [`limits::PRODUCER_IDLE_MS_MAX`].
//!
//! A duplicate (a retry of a batch already in the log) is answered with the original offsets
//! and nothing is written. The answer waits, as the original's would, until the original is
//! acknowledged (durable under `flush=always`, written or journaled otherwise), so a retry is
//! never told "done" about a batch that a crash could still take back.

use std::path::PathBuf;
use std::rc::Rc;

use futures_channel::oneshot;
use glommio::io::DmaFile;
use spate_protocol::batch::BatchHeader;

use super::{Appended, Log, State, Waiter};
use crate::config::FlushPolicy;
use crate::error::{LogError, Result};
use crate::limits;
use crate::producers::{ProducerTable, Verdict};
use crate::scan::Check;
use crate::segment;

/// What the producer table says of an append about to take offsets.
pub(super) enum Admission {
    /// Take offsets and queue the batches (an idempotent batch is already recorded).
    Append,
    /// A retry of a batch in the log: answer with its offsets once `acknowledged` completes
    /// (`None`: it already is).
    Duplicate { appended: Appended, acknowledged: Option<oneshot::Receiver<Result<()>>> },
    /// Out of order, fenced, or from an unknown producer: nothing is appended.
    Refused(LogError),
}

impl Admission {
    /// The append's result, for anything but [`Admission::Append`].
    pub(super) async fn outcome(self) -> Result<Appended> {
        match self {
            Admission::Append => unreachable!("an admitted append is queued, not settled here"),
            Admission::Duplicate { appended, acknowledged: None } => Ok(appended),
            Admission::Duplicate { appended, acknowledged: Some(reply) } => match reply.await {
                Ok(Ok(())) => Ok(appended),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(LogError::Closed),
            },
            Admission::Refused(error) => Err(error),
        }
    }
}

/// One piece of a segment to replay: `[from, to)` of its file, whose first batch has offset
/// `base`.
struct ReplaySpan {
    file: Rc<DmaFile>,
    path: PathBuf,
    from: u64,
    to: u64,
    base: i64,
}

impl State {
    /// Checks batches about to take offsets (at `next_offset`, in this borrow) against the
    /// producer table, and records an admitted idempotent batch at the offset it will take.
    pub(super) fn admit(&mut self, headers: &[BatchHeader], now_ms: i64) -> Admission {
        if headers.iter().all(|h| h.producer_id < 0) {
            return Admission::Append;
        }
        // One batch per call (the protocol sends one per partition and request): a refused
        // later batch can then never leave an earlier one of the same call appended.
        let [header] = headers else {
            return Admission::Refused(LogError::Config(
                "an idempotent producer's batch is appended alone".into(),
            ));
        };
        self.expire_idle_producers(now_ms);
        let producer_id = header.producer_id;
        match self.producers.check(header) {
            Verdict::Append => {
                self.producers.record(header, self.next_offset, now_ms);
                Admission::Append
            }
            Verdict::Duplicate { base_offset, last_offset } => {
                assert!(last_offset < self.next_offset, "a duplicate is already in the log");
                Admission::Duplicate {
                    appended: Appended { base_offset, last_offset },
                    acknowledged: self.wait_acknowledged(last_offset + 1),
                }
            }
            Verdict::OutOfOrder { expected, got } => {
                Admission::Refused(LogError::OutOfOrderSequence { producer_id, expected, got })
            }
            Verdict::Fenced { current_epoch } => Admission::Refused(LogError::ProducerFenced {
                producer_id,
                epoch: header.producer_epoch,
                current_epoch,
            }),
            Verdict::UnknownProducer => Admission::Refused(LogError::UnknownProducer {
                producer_id,
                sequence: header.base_sequence,
            }),
        }
    }

    /// Records an idempotent batch a replica appends at the offsets its leader chose, unless
    /// the leader's own proposal already recorded it there (see [`Log::check_proposal`]).
    /// Replicated data is the leader's word: no refusal here, only bookkeeping, so a replica
    /// that becomes leader knows every producer's sequence.
    pub(super) fn record_replicated(&mut self, header: &BatchHeader, now_ms: i64) {
        if header.producer_id < 0 || header.is_control() {
            return;
        }
        let recorded = matches!(
            self.producers.check(header),
            Verdict::Duplicate { base_offset, .. } if base_offset == header.base_offset
        );
        if !recorded {
            self.producers.record(header, header.base_offset, now_ms);
        }
    }

    /// What completes once everything before `end` is acknowledged as an append would be;
    /// `None` if it already is.
    fn wait_acknowledged(&mut self, end: i64) -> Option<oneshot::Receiver<Result<()>>> {
        let durable = self.config.flush == FlushPolicy::Always;
        let reached = if durable {
            self.durable_offset
        } else if self.journaling() {
            self.written_offset.max(self.acked_end)
        } else {
            self.written_offset
        };
        if end <= reached {
            return None;
        }
        // Behind later waiters it may be woken a little late, never early: `wake_waiters` stops
        // at the first waiter not yet satisfied.
        let (reply, acknowledged) = oneshot::channel();
        self.waiters.push_back(Waiter { next_offset: end, durable, reply });
        Some(acknowledged)
    }

    fn expire_idle_producers(&mut self, now_ms: i64) {
        if now_ms - self.producers_expired_ms >= limits::PRODUCER_EXPIRY_INTERVAL_MS {
            self.producers.expire(now_ms - limits::PRODUCER_IDLE_MS_MAX);
            self.producers_expired_ms = now_ms;
        }
    }
}

/// What a replicated partition's leader does with a producer's batch (see
/// [`Log::check_proposal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposal {
    /// Propose it, then [`Log::record_proposal`] at the offset it takes.
    Append,
    /// A retry of a batch already proposed: answer with its offsets once they are committed.
    Duplicate(Appended),
}

impl Log {
    /// A replicated partition's leader checks a producer's batch before proposing it, as
    /// `append_batches` does before taking offsets: a duplicate gets its original offsets, a gap,
    /// a fenced epoch or an unknown producer is refused. Pure: a batch to append is recorded by
    /// [`record_proposal`](Log::record_proposal) once the core gave it offsets, in the same
    /// synchronous step, so pipelined proposals are checked in order.
    pub fn check_proposal(&self, header: &BatchHeader) -> Result<Proposal> {
        self.ensure_open()?;
        if header.producer_id < 0 {
            return Ok(Proposal::Append);
        }
        let now_ms = self.inner.options.clock.now_ms();
        let mut state = self.inner.state.borrow_mut();
        state.expire_idle_producers(now_ms);
        let producer_id = header.producer_id;
        match state.producers.check(header) {
            Verdict::Append => Ok(Proposal::Append),
            Verdict::Duplicate { base_offset, last_offset } => {
                Ok(Proposal::Duplicate(Appended { base_offset, last_offset }))
            }
            Verdict::OutOfOrder { expected, got } => {
                Err(LogError::OutOfOrderSequence { producer_id, expected, got })
            }
            Verdict::Fenced { current_epoch } => Err(LogError::ProducerFenced {
                producer_id,
                epoch: header.producer_epoch,
                current_epoch,
            }),
            Verdict::UnknownProducer => {
                Err(LogError::UnknownProducer { producer_id, sequence: header.base_sequence })
            }
        }
    }

    /// Records a proposed batch at `base_offset`, where the replication core placed it (ahead
    /// of the log end: it is written later, in order). A proposal that never reaches the log
    /// leaves its record until a truncation or the next open, which rebuild the table from the
    /// log.
    pub fn record_proposal(&self, header: &BatchHeader, base_offset: i64) {
        let now_ms = self.inner.options.clock.now_ms();
        self.inner.state.borrow_mut().producers.record(header, base_offset, now_ms);
    }

    /// Rebuilds the producer table from the batch headers in the last
    /// [`limits::PRODUCER_REPLAY_BYTES_MAX`] bytes of the log (starting at an indexed batch
    /// boundary, so up to one index interval more). Producers whose batches lie further back
    /// are unknown: their next batch is refused unless it starts a sequence over.
    pub(super) async fn rebuild_producers(&self) -> Result<()> {
        let spans = self.replay_spans();
        let now_ms = self.inner.options.clock.now_ms();
        let mut table = ProducerTable::default();
        // Bounded by the replay window.
        for span in spans {
            let end = segment::scan_file(
                &span.file,
                &span.path,
                span.from,
                span.to,
                Some(span.base),
                Check::Structure,
                |batch, _| {
                    table.record(&batch.header, batch.header.base_offset, now_ms);
                    true
                },
            )
            .await?;
            if end.damage.is_some() {
                // A sealed segment's damaged batch: the producers after it stay unknown.
                tracing::warn!(path = %span.path.display(), position = end.end,
                    "producer state replay stopped at a damaged batch");
            }
        }
        let mut state = self.inner.state.borrow_mut();
        assert!(state.pending.is_empty(), "producer state is rebuilt before any append");
        tracing::debug!(dir = %self.inner.dir.display(), producers = table.len(), "rebuilt producer state");
        state.producers = table;
        state.producers_expired_ms = now_ms;
        Ok(())
    }

    /// The pieces of the newest segments that hold the last
    /// [`limits::PRODUCER_REPLAY_BYTES_MAX`] bytes of the log, oldest first.
    fn replay_spans(&self) -> Vec<ReplaySpan> {
        let state = self.inner.state.borrow();
        let mut remaining = limits::PRODUCER_REPLAY_BYTES_MAX;
        let mut spans = Vec::new();
        // Bounded by the segment count; stops once the window is covered.
        for segment in state.segments.values().rev() {
            if remaining == 0 {
                break;
            }
            let (from, base) = if segment.size <= remaining {
                remaining -= segment.size;
                (0, segment.base_offset)
            } else {
                let start = segment.size - remaining;
                remaining = 0;
                let entry = segment.index.offsets.iter().find(|e| u64::from(e.position) >= start);
                match entry {
                    Some(e) => {
                        (u64::from(e.position), segment.base_offset + i64::from(e.relative_offset))
                    }
                    None => (segment.size, segment.next_offset),
                }
            };
            spans.push(ReplaySpan {
                file: segment.file.clone(),
                path: segment.paths.log.clone(),
                from,
                to: segment.size,
                base,
            });
        }
        spans.reverse();
        spans
    }
}
