//! Produce: the request's batches are carved out of the frame without copying, each partition's
//! batches appended by its owner (here or through the mesh), and the results gathered.

use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use spate_protocol::batch::{BatchError, BatchHeader};
use spate_protocol::codec;
use spate_protocol::wire::{self, ErrorCode, ResponseBodyT};
use spate_storage::LogError;

use super::{ok_reply, push_into, Failure, ProduceOutcome, Reply, Shard, ShardMsg};
use crate::limits;

impl Shard {
    /// Appends a partition's batches on its owning shard. `acks` matters only to a replicated
    /// partition: `Leader` answers once this leader wrote them, `All` once they are committed.
    pub(super) async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        batches: Vec<BytesMut>,
        acks: wire::Acks,
    ) -> ProduceOutcome {
        let Some(log) = self.log(topic, partition) else {
            return ProduceOutcome {
                result: Err(Failure::unknown(topic, partition)),
                log_start_offset: -1,
            };
        };
        if batches.is_empty() {
            return ProduceOutcome { result: Ok(-1), log_start_offset: log.offsets().start };
        }
        // Control batches are written by replication only; a producer's would be hidden from
        // consumers and could forge a leader marker or a replica set.
        if let Some(header) =
            batches.iter().filter_map(|b| BatchHeader::parse(b).ok()).find(BatchHeader::is_control)
        {
            let refused = BatchError::BadAttributes(header.attributes);
            return ProduceOutcome {
                result: Err(Failure::from(LogError::InvalidBatch(refused))),
                log_start_offset: log.offsets().start,
            };
        }
        if let Some(replica) = self.replica(topic, partition) {
            let ack = match acks {
                wire::Acks::Leader => spate_cluster::Ack::LeaderWrite,
                _ if crate::server::unsafe_ack_before_commit() => spate_cluster::Ack::LeaderWrite,
                _ => spate_cluster::Ack::Commit,
            };
            return self.produce_replicated(topic, partition, replica, batches, ack).await;
        }
        // One unit: the request's batches take consecutive offsets, and appends take offsets in
        // the order they are called, so pipelined produces to a partition keep their order.
        let appended = log.append_batches(batches, 0).await;
        self.wake_fetchers(topic, partition);
        ProduceOutcome {
            result: appended.map(|a| a.base_offset).map_err(Failure::from),
            log_start_offset: log.offsets().start,
        }
    }

    pub(super) async fn produce_partition(
        &self,
        topic: &str,
        partition: u32,
        batches: Vec<BytesMut>,
        acks: wire::Acks,
    ) -> ProduceOutcome {
        match self.owner(topic, partition) {
            None => ProduceOutcome {
                result: Err(Failure::unknown(topic, partition)),
                log_start_offset: -1,
            },
            Some(owner) if owner == self.id => {
                self.produce_local(topic, partition, batches, acks).await
            }
            Some(owner) => self
                .call(owner, |reply| ShardMsg::Produce {
                    topic: topic.to_string(),
                    partition,
                    batches,
                    acks,
                    reply,
                })
                .await
                .unwrap_or_else(|failure| ProduceOutcome {
                    result: Err(failure),
                    log_start_offset: -1,
                }),
        }
    }

    pub(super) async fn handle_produce(
        self: &Rc<Self>,
        correlation_id: u32,
        header: BytesMut,
    ) -> Option<Reply> {
        let (acks, timeout_ms, parts) = {
            let request = codec::decode_request(&header).expect("verified by the caller");
            let produce = request.body_as_produce_request().expect("checked by the caller");
            let base = header.as_ptr() as usize;
            let mut parts: Vec<(Rc<str>, u32, Option<Range<usize>>)> = Vec::new();
            for topic in produce.topics().iter().flatten() {
                let name: Rc<str> = Rc::from(topic.name().unwrap_or_default());
                for partition in topic.partitions().iter().flatten() {
                    let range = partition.records().map(|r| {
                        let start = r.bytes().as_ptr() as usize - base;
                        start..start + r.len()
                    });
                    parts.push((name.clone(), partition.partition() as u32, range));
                }
            }
            (produce.acks(), produce.timeout_ms(), parts)
        };
        let ranges: Vec<Range<usize>> = parts.iter().filter_map(|(_, _, r)| r.clone()).collect();
        let mut carved = carve(header, &ranges).into_iter();
        let timeout =
            Duration::from_millis(u64::from(timeout_ms).clamp(1, limits::PRODUCE_TIMEOUT_MS_MAX));
        // Each partition's append is polled once right here: an append acknowledged from the
        // journal (or refused) is done without a task or a timer. Only those still waiting (for
        // a device write, a budget, a commit) get a task, and one timer bounds them all.
        let mut outcomes: Vec<Option<ProduceOutcome>> = Vec::with_capacity(parts.len());
        let mut waiting = Vec::new();
        for (topic, partition, range) in &parts {
            let records = if range.is_some() {
                carved.next().expect("one piece per range")
            } else {
                BytesMut::new()
            };
            let (shard, topic, partition) = (self.clone(), topic.clone(), *partition);
            let mut append = Box::pin(async move {
                match split_batches(records) {
                    Ok(batches) => shard.produce_partition(&topic, partition, batches, acks).await,
                    Err(failure) => ProduceOutcome { result: Err(failure), log_start_offset: -1 },
                }
            });
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            match append.as_mut().poll(&mut context) {
                std::task::Poll::Ready(outcome) => outcomes.push(Some(outcome)),
                std::task::Poll::Pending => {
                    // The task polls it again with its own waker.
                    waiting.push((outcomes.len(), glommio::spawn_local(append)));
                    outcomes.push(None);
                }
            }
        }
        if !waiting.is_empty() {
            let gather = async {
                for (i, task) in &mut waiting {
                    outcomes[*i] = Some(task.await);
                }
            };
            futures_lite::future::or(gather, glommio::timer::sleep(timeout)).await;
            // Dropping a task that has not finished cancels its append, as a timeout did.
            drop(waiting);
        }
        let mut topics: Vec<wire::ProduceTopicResponseT> = Vec::new();
        for ((topic, partition, _), outcome) in parts.into_iter().zip(outcomes) {
            let outcome = outcome.unwrap_or_else(|| ProduceOutcome {
                result: Err(Failure::new(ErrorCode::RequestTimedOut, "produce timed out")),
                log_start_offset: -1,
            });
            let (error_code, error_message, base_offset) = match outcome.result {
                Ok(base) => (ErrorCode::None, None, base),
                Err(failure) => (failure.code, Some(failure.message), -1),
            };
            let entry = wire::ProducePartitionResponseT {
                partition: partition as i32,
                error_code,
                error_message,
                base_offset,
                log_start_offset: outcome.log_start_offset,
            };
            push_into(
                &mut topics,
                &topic,
                entry,
                |t| &t.name,
                |t| t.partitions.get_or_insert_with(Vec::new),
                |name| wire::ProduceTopicResponseT { name: Some(name), partitions: None },
            );
        }
        if acks == wire::Acks::None {
            return None;
        }
        Some(ok_reply(
            correlation_id,
            ResponseBodyT::ProduceResponse(Box::new(wire::ProduceResponseT {
                topics: Some(topics),
            })),
        ))
    }
}

/// Splits `buffer` into the pieces at `ranges`, without copying when the ranges are ascending
/// and disjoint (as flatc lays vectors out). A crafted but valid flatbuffer may reference one
/// vector twice or out of order: then each piece is copied, so bad input costs a copy, never a
/// panic.
pub(super) fn carve(buffer: BytesMut, ranges: &[Range<usize>]) -> Vec<BytesMut> {
    let in_bounds = ranges.iter().all(|r| r.start <= r.end && r.end <= buffer.len());
    if !in_bounds {
        return ranges.iter().map(|_| BytesMut::new()).collect();
    }
    // Flatbuffers builds back to front, so a request's vectors usually come in descending
    // order: carve in ascending order, then put the pieces back where they were asked.
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let disjoint = order.windows(2).all(|w| ranges[w[0]].end <= ranges[w[1]].start);
    if !disjoint {
        // Two partitions sharing bytes (a crafted request): copies, never a panic.
        return ranges.iter().map(|r| BytesMut::from(&buffer[r.clone()])).collect();
    }
    let mut rest = buffer;
    let mut consumed = 0;
    let mut out: Vec<BytesMut> = ranges.iter().map(|_| BytesMut::new()).collect();
    for i in order {
        let range = &ranges[i];
        let mut piece = rest.split_off(range.start - consumed);
        let tail = piece.split_off(range.end - range.start);
        out[i] = piece;
        rest = tail;
        consumed = range.end;
    }
    out
}

/// Splits a partition's records into whole batches (zero-copy), checking each header's shape.
pub(super) fn split_batches(mut records: BytesMut) -> Result<Vec<BytesMut>, Failure> {
    let mut batches = Vec::new();
    // Bounded by the batch-count limit.
    while !records.is_empty() {
        if batches.len() >= spate_protocol::limits::BATCHES_PER_PARTITION_MAX {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                "a produce request carries one record batch per partition",
            ));
        }
        let header = BatchHeader::parse(&records)
            .map_err(|e| Failure::new(ErrorCode::CorruptMessage, e.to_string()))?;
        header.check_shape().map_err(|e| Failure::new(ErrorCode::CorruptMessage, e.to_string()))?;
        let length = header.batch_length as usize;
        if length > records.len() {
            return Err(Failure::new(
                ErrorCode::CorruptMessage,
                "batch runs past the end of the partition's records",
            ));
        }
        batches.push(records.split_to(length));
    }
    if batches.is_empty() {
        return Err(Failure::new(ErrorCode::CorruptMessage, "no record batch for the partition"));
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn carve_splits_without_copying() {
        let buffer = BytesMut::from(&b"0123456789"[..]);
        let pointer = buffer.as_ptr() as usize;
        let pieces = carve(buffer, &[1..3, 5..9]);
        assert_eq!(&pieces[0][..], b"12");
        assert_eq!(&pieces[1][..], b"5678");
        assert_eq!(pieces[1].as_ptr() as usize, pointer + 5);
    }

    #[test]
    fn carve_splits_a_real_multi_partition_request_without_copying() {
        let batches: Vec<BytesMut> = (0..3u8)
            .map(|i| {
                let mut builder = spate_protocol::batch::BatchBuilder::new();
                builder.push(&spate_protocol::batch::NewRecord {
                    value: Some(Bytes::from(vec![i; 100 + usize::from(i)])),
                    ..Default::default()
                });
                builder.finish().unwrap()
            })
            .collect();
        let partitions: Vec<_> = batches
            .iter()
            .enumerate()
            .map(|(p, b)| codec::ProducePartitionInput { partition: p as i32, records: b })
            .collect();
        let frame =
            codec::encode_produce(1, "c", wire::Acks::All, 1000, &[("t", partitions)]).unwrap();
        let mut buffer = frame;
        let mut decoded =
            spate_protocol::frame::FrameDecoder::default().decode(&mut buffer).unwrap().unwrap();
        let header = std::mem::take(&mut decoded.header);
        let base = header.as_ptr() as usize;
        let end = base + header.len();
        let ranges: Vec<Range<usize>> = {
            let request = codec::decode_request(&header).unwrap();
            let produce = request.body_as_produce_request().unwrap();
            let topic = produce.topics().unwrap().get(0);
            topic
                .partitions()
                .unwrap()
                .iter()
                .map(|p| {
                    let records = p.records().unwrap();
                    let start = records.bytes().as_ptr() as usize - base;
                    start..start + records.len()
                })
                .collect()
        };
        assert!(ranges[0].start > ranges[2].start, "flatbuffers lays vectors back to front");
        let pieces = carve(header, &ranges);
        for (piece, batch) in pieces.iter().zip(&batches) {
            assert_eq!(&piece[..], &batch[..]);
            let at = piece.as_ptr() as usize;
            assert!(base <= at && at < end, "carved in place, not copied");
        }
    }

    #[test]
    fn carve_copies_shared_or_unordered_ranges_instead_of_panicking() {
        let buffer = BytesMut::from(&b"0123456789"[..]);
        let pieces = carve(buffer.clone(), &[2..5, 2..5]);
        assert_eq!(&pieces[0][..], b"234");
        assert_eq!(&pieces[1][..], b"234");
        let pieces = carve(buffer.clone(), &[3..8, 5..9]);
        assert_eq!(&pieces[0][..], b"34567");
        assert_eq!(&pieces[1][..], b"5678");
        assert!(carve(buffer, &[5..50, 60..70]).iter().all(|p| p.is_empty()));
    }

    #[test]
    fn split_batches_checks_shapes() {
        let mut builder = spate_protocol::batch::BatchBuilder::new();
        builder.push(&spate_protocol::batch::NewRecord {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        });
        let batch = builder.finish().unwrap();
        assert_eq!(split_batches(batch.clone()).unwrap().len(), 1);
        // One batch per partition and request, so its result says exactly what was written.
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        let refused = split_batches(two).unwrap_err();
        assert_eq!(refused.code, ErrorCode::InvalidRequest);
        let mut cut = batch.clone();
        cut.truncate(batch.len() - 1);
        assert!(split_batches(cut).is_err());
        assert!(split_batches(BytesMut::new()).is_err());
        assert!(split_batches(BytesMut::from(&[0u8; 100][..])).is_err());
    }
}
