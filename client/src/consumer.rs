//! The consumer: assigned partitions, each with a position; `poll` fetches from every
//! partition that is not paused (one request per owning shard), decodes the records and advances
//! positions. Seek to earliest, latest, an offset or a timestamp; commit positions and read
//! committed ones; an offset-reset policy for positions that fell out of the log.
//!
//! The position bookkeeping ([`Positions`]) is sans-IO; [`Consumer`] drives it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use spate_protocol::batch::{self, BatchHeader, Records};
use spate_protocol::wire::ErrorCode;

use crate::accumulator::TopicPartition;
use crate::client::{Client, FetchTarget, FetchedPartition, EARLIEST, LATEST};
use crate::error::{ClientError, Result};
use crate::limits;

/// Where to start reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seek {
    Earliest,
    Latest,
    Offset(i64),
    /// The first record whose timestamp (ms) is at or after this; the end if none is.
    Timestamp(i64),
}

/// What to do when a position is no longer in the log (retention deleted it, or it is past the
/// end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Return the `OffsetOutOfRange` error from `poll`.
    Fail,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Group whose committed offsets `commit` and `committed` use, and where positions start
    /// when they are not set.
    pub group_id: Option<String>,
    pub offset_reset: OffsetReset,
    pub fetch_max_wait: Duration,
    pub fetch_min_bytes: u32,
    pub fetch_max_bytes: u32,
    pub partition_max_bytes: u32,
    pub max_poll_records: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group_id: None,
            offset_reset: OffsetReset::Latest,
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
            max_poll_records: 10_000,
        }
    }
}

/// A consumed record. Key, value and header values share the fetched buffer (no copies); the
/// topic name is shared by every record of a fetched partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: std::sync::Arc<str>,
    pub partition: u32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// Next offset to return; `None` until resolved from a seek or a committed offset.
    position: Option<i64>,
    pending_seek: Option<Seek>,
    paused: bool,
    high_watermark: i64,
}

/// Assigned partitions and their positions. Sans-IO.
#[derive(Debug, Default)]
pub struct Positions {
    partitions: BTreeMap<TopicPartition, PartitionState>,
}

impl Positions {
    pub fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        if partitions.len() > limits::ASSIGNED_PARTITIONS_MAX {
            return Err(ClientError::Config("too many partitions assigned".into()));
        }
        let mut next = BTreeMap::new();
        for tp in partitions {
            let state = self.partitions.remove(tp).unwrap_or_default();
            next.insert(tp.clone(), state);
        }
        self.partitions = next;
        Ok(())
    }

    pub fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<()> {
        let state = self
            .partitions
            .get_mut(tp)
            .ok_or_else(|| ClientError::Config(format!("{tp:?} is not assigned")))?;
        match seek {
            Seek::Offset(offset) => {
                state.position = Some(offset);
                state.pending_seek = None;
            }
            other => state.pending_seek = Some(other),
        }
        Ok(())
    }

    pub fn set_paused(&mut self, tps: &[TopicPartition], paused: bool) {
        for tp in tps {
            if let Some(state) = self.partitions.get_mut(tp) {
                state.paused = paused;
            }
        }
    }

    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|s| s.position)
    }

    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    /// Partitions whose start must be looked up (pending seek, or no position yet).
    fn unresolved(&self) -> Vec<(TopicPartition, Option<Seek>)> {
        self.partitions
            .iter()
            .filter(|(_, s)| s.pending_seek.is_some() || s.position.is_none())
            .map(|(tp, s)| (tp.clone(), s.pending_seek))
            .collect()
    }

    fn resolve(&mut self, tp: &TopicPartition, position: i64) {
        if let Some(state) = self.partitions.get_mut(tp) {
            state.position = Some(position);
            state.pending_seek = None;
        }
    }

    fn fetchable(&self, max_bytes: u32) -> Vec<FetchTarget> {
        self.partitions
            .iter()
            .filter(|(_, s)| !s.paused && s.pending_seek.is_none())
            .filter_map(|(tp, s)| {
                Some(FetchTarget {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: s.position?,
                    max_bytes,
                })
            })
            .collect()
    }

    /// Decodes fetched batches into records at or after the position, advancing it. Stops
    /// after `max_records`; the rest is fetched again next time. A batch that fails its CRC is a
    /// protocol error, never records. Control batches are skipped (the position moves past them).
    pub fn absorb(
        &mut self,
        fetched: &FetchedPartition,
        max_records: usize,
        out: &mut Vec<ConsumerRecord>,
    ) -> Result<()> {
        let tp =
            TopicPartition { topic: fetched.topic.as_str().into(), partition: fetched.partition };
        let Some(state) = self.partitions.get_mut(&tp) else { return Ok(()) };
        let Some(mut position) = state.position else { return Ok(()) };
        if state.paused {
            return Ok(());
        }
        state.high_watermark = fetched.high_watermark;
        let mut rest = &fetched.records[..];
        // Each iteration consumes one whole batch.
        while !rest.is_empty() && out.len() < max_records {
            let header = batch::validate_crc(rest)
                .map_err(|e| ClientError::UnexpectedResponse(format!("fetched batch: {e}")))?;
            let length = header.batch_length as usize;
            let batch_bytes = fetched.records.slice_ref(&rest[..length]);
            rest = &rest[length..];
            if header.next_offset() <= position {
                continue;
            }
            if header.is_control() {
                // Replication's leader markers and replica sets: not records for the
                // application (Kafka's consumer hides control records the same way). The
                // position moves past them so the next fetch does not return them again.
                position = header.next_offset();
                continue;
            }
            absorb_batch(
                &tp.topic,
                tp.partition,
                &batch_bytes,
                header,
                &mut position,
                max_records,
                out,
            )?;
        }
        state.position = Some(position);
        Ok(())
    }
}

fn absorb_batch(
    topic: &std::sync::Arc<str>,
    partition: u32,
    batch_bytes: &Bytes,
    header: BatchHeader,
    position: &mut i64,
    max_records: usize,
    out: &mut Vec<ConsumerRecord>,
) -> Result<()> {
    let share = |slice: Option<&[u8]>| slice.map(|s| batch_bytes.slice_ref(s));
    for record in Records::new(batch_bytes, header) {
        let record =
            record.map_err(|e| ClientError::UnexpectedResponse(format!("fetched record: {e}")))?;
        if record.offset < *position {
            continue;
        }
        if out.len() >= max_records {
            break;
        }
        out.push(ConsumerRecord {
            topic: topic.clone(),
            partition,
            offset: record.offset,
            timestamp: record.timestamp,
            key: share(record.key),
            value: share(record.value),
            headers: record.headers.iter().map(|(k, v)| (k.to_string(), share(*v))).collect(),
        });
        *position = record.offset + 1;
    }
    Ok(())
}

pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    positions: Positions,
    /// The next fetch, sent when the last one returned records, before they were handed out
    /// (as Kafka's consumer does): a consumer catching up then overlaps its own work on the
    /// records with the broker's work on the next fetch. Used by the next `poll` if it would
    /// fetch exactly the same; otherwise its answer is dropped when it comes.
    prefetch: Option<Prefetch>,
}

type FetchResult = Result<Vec<FetchedPartition>>;

struct Prefetch {
    targets: Vec<FetchTarget>,
    /// Detached: dropping it lets the request finish (a request cancelled mid-write would
    /// leave half a frame on the connection) and drops the answer.
    response: glommio::task::JoinHandle<FetchResult>,
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        Consumer { client, config, positions: Positions::default(), prefetch: None }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Replaces the assignment. Kept partitions keep their positions.
    pub fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.positions.assign(partitions)
    }

    /// Assigns every partition of `topic`.
    pub async fn assign_topic(&mut self, topic: &str) -> Result<Vec<TopicPartition>> {
        let partitions: Vec<TopicPartition> = self
            .client
            .partitions(topic)
            .await?
            .iter()
            .map(|p| TopicPartition { topic: topic.into(), partition: p.partition })
            .collect();
        let mut all = self.positions.assigned();
        all.retain(|tp| &*tp.topic != topic);
        all.extend(partitions.iter().cloned());
        self.positions.assign(&all)?;
        Ok(partitions)
    }

    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.assigned()
    }

    pub fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<()> {
        self.positions.seek(tp, seek)
    }

    pub fn pause(&mut self, tps: &[TopicPartition]) {
        self.positions.set_paused(tps, true);
    }

    pub fn resume(&mut self, tps: &[TopicPartition]) {
        self.positions.set_paused(tps, false);
    }

    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.position(tp)
    }

    async fn resolve_positions(&mut self) -> Result<()> {
        for (tp, seek) in self.positions.unresolved() {
            let seek = match seek {
                Some(seek) => seek,
                None => match self.committed_position(&tp).await? {
                    Some(offset) => Seek::Offset(offset),
                    None => match self.config.offset_reset {
                        OffsetReset::Earliest => Seek::Earliest,
                        OffsetReset::Latest | OffsetReset::Fail => Seek::Latest,
                    },
                },
            };
            let offset = match seek {
                Seek::Offset(offset) => offset,
                Seek::Earliest => {
                    self.client.list_offset(&tp.topic, tp.partition, EARLIEST).await?.unwrap_or(0)
                }
                Seek::Latest => {
                    self.client.list_offset(&tp.topic, tp.partition, LATEST).await?.unwrap_or(0)
                }
                Seek::Timestamp(ts) => {
                    match self.client.list_offset(&tp.topic, tp.partition, ts).await? {
                        Some(offset) => offset,
                        None => self
                            .client
                            .list_offset(&tp.topic, tp.partition, LATEST)
                            .await?
                            .unwrap_or(0),
                    }
                }
            };
            self.positions.resolve(&tp, offset);
        }
        Ok(())
    }

    async fn committed_position(&self, tp: &TopicPartition) -> Result<Option<i64>> {
        let Some(group) = &self.config.group_id else { return Ok(None) };
        let committed = self.client.committed_offsets(group, &tp.topic).await?;
        Ok(committed.into_iter().find(|(p, _)| *p == tp.partition).and_then(|(_, o)| o))
    }

    /// Returns the next records (at most `max_poll_records`), waiting up to the fetch wait time
    /// for some to arrive. Empty when nothing new arrived in time.
    pub async fn poll(&mut self) -> Result<Vec<ConsumerRecord>> {
        self.resolve_positions().await?;
        let targets = self.positions.fetchable(self.config.partition_max_bytes);
        let prefetched = self.prefetch.take().filter(|p| p.targets == targets);
        if targets.is_empty() {
            glommio::timer::sleep(self.config.fetch_max_wait).await;
            return Ok(Vec::new());
        }
        let fetched = match prefetched {
            Some(prefetch) => match prefetch.response.await {
                Some(result) => result?,
                None => self.fetch(targets).await?,
            },
            None => self.fetch(targets).await?,
        };
        let out = self.absorb(&fetched)?;
        if !out.is_empty() {
            let targets = self.positions.fetchable(self.config.partition_max_bytes);
            if !targets.is_empty() {
                let fetch = self.fetch(targets.clone());
                let response = glommio::spawn_local(fetch).detach();
                self.prefetch = Some(Prefetch { targets, response });
            }
        }
        Ok(out)
    }

    /// A fetch of `targets` with this consumer's limits (a `'static` future: a prefetch runs
    /// as its own task).
    fn fetch(&self, targets: Vec<FetchTarget>) -> impl std::future::Future<Output = FetchResult> {
        let client = self.client.clone();
        let ConsumerConfig { fetch_max_wait, fetch_min_bytes, fetch_max_bytes, .. } = self.config;
        async move { client.fetch(&targets, fetch_max_wait, fetch_min_bytes, fetch_max_bytes).await }
    }

    /// Records of a fetch's partitions at or after their positions, advancing them; reacts to
    /// per-partition errors (offset reset, retry, or the error).
    fn absorb(&mut self, fetched: &[FetchedPartition]) -> Result<Vec<ConsumerRecord>> {
        let mut out = Vec::new();
        for partition in fetched {
            match &partition.error {
                None => self.positions.absorb(partition, self.config.max_poll_records, &mut out)?,
                Some(error) if error.code() == Some(ErrorCode::OffsetOutOfRange) => {
                    let tp = TopicPartition {
                        topic: partition.topic.as_str().into(),
                        partition: partition.partition,
                    };
                    match self.config.offset_reset {
                        OffsetReset::Earliest => self.positions.seek(&tp, Seek::Earliest)?,
                        OffsetReset::Latest => self.positions.seek(&tp, Seek::Latest)?,
                        OffsetReset::Fail => return Err(error.clone()),
                    }
                }
                Some(error) if error.is_retriable() => {
                    tracing::debug!(topic = %partition.topic, partition = partition.partition, %error, "fetch error; will retry");
                }
                Some(error) => return Err(error.clone()),
            }
        }
        Ok(out)
    }

    /// Commits the current position of every assigned partition that has one.
    pub async fn commit(&self) -> Result<()> {
        let group = self
            .config
            .group_id
            .as_deref()
            .ok_or_else(|| ClientError::Config("commit needs a group id".into()))?;
        let offsets: Vec<(String, u32, i64)> = self
            .positions
            .assigned()
            .into_iter()
            .filter_map(|tp| {
                Some((tp.topic.to_string(), tp.partition, self.positions.position(&tp)?))
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        self.client.commit_offsets(group, -1, "", &offsets).await
    }

    /// Committed offsets of this consumer's group for `topic`.
    pub async fn committed(&self, topic: &str) -> Result<Vec<(u32, Option<i64>)>> {
        let group = self
            .config
            .group_id
            .as_deref()
            .ok_or_else(|| ClientError::Config("committed needs a group id".into()))?;
        self.client.committed_offsets(group, topic).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_protocol::batch::{stamp, BatchBuilder, NewRecord};

    fn batches(base: i64, counts: &[usize]) -> Bytes {
        let mut out = Vec::new();
        let mut offset = base;
        for count in counts {
            let mut builder = BatchBuilder::new();
            for i in 0..*count {
                builder.push(&NewRecord {
                    value: Some(Bytes::from(format!("v{}", offset + i as i64))),
                    timestamp: 1,
                    ..Default::default()
                });
            }
            let mut batch = builder.finish().unwrap();
            stamp(&mut batch, offset, 1);
            offset += *count as i64;
            out.extend_from_slice(&batch);
        }
        Bytes::from(out)
    }

    fn fetched(records: Bytes) -> FetchedPartition {
        FetchedPartition {
            topic: "t".into(),
            partition: 0,
            error: None,
            high_watermark: 100,
            log_start_offset: 0,
            records,
        }
    }

    #[test]
    fn positions_skip_records_before_them_and_advance() {
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        let mut positions = Positions::default();
        positions.assign(std::slice::from_ref(&tp)).unwrap();
        positions.seek(&tp, Seek::Offset(12)).unwrap();
        // Batches 10..15 and 15..20; the fetch starts at the batch holding 12.
        let mut out = Vec::new();
        positions.absorb(&fetched(batches(10, &[5, 5])), 100, &mut out).unwrap();
        let offsets: Vec<i64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (12..20).collect::<Vec<_>>());
        assert_eq!(out[0].value.as_deref(), Some(&b"v12"[..]));
        assert_eq!(positions.position(&tp), Some(20));
        // A record limit stops mid-batch; the position says where to resume.
        positions.seek(&tp, Seek::Offset(10)).unwrap();
        let mut out = Vec::new();
        positions.absorb(&fetched(batches(10, &[5, 5])), 3, &mut out).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(positions.position(&tp), Some(13));
    }

    #[test]
    fn control_batches_are_skipped_and_the_position_moves_past_them() {
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        let mut positions = Positions::default();
        positions.assign(std::slice::from_ref(&tp)).unwrap();
        positions.seek(&tp, Seek::Offset(0)).unwrap();
        // Records 0..3, a leader marker at 3, records 4..6, a membership record at 6.
        let mut fetch = batches(0, &[3]).to_vec();
        fetch.extend_from_slice(&spate_protocol::control::leader_marker(3, 2, 1));
        fetch.extend_from_slice(&batches(4, &[2]));
        let membership = spate_protocol::control::membership(6, 2, 1, &[1, 2, 3], &[]).unwrap();
        fetch.extend_from_slice(&membership);
        let mut out = Vec::new();
        positions.absorb(&fetched(Bytes::from(fetch)), 100, &mut out).unwrap();
        let offsets: Vec<i64> = out.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2, 4, 5]);
        assert_eq!(positions.position(&tp), Some(7), "past the trailing control batch");
    }

    #[test]
    fn paused_partitions_are_not_fetched_and_corrupt_batches_are_errors() {
        let tp = TopicPartition { topic: "t".into(), partition: 0 };
        let mut positions = Positions::default();
        positions.assign(std::slice::from_ref(&tp)).unwrap();
        positions.seek(&tp, Seek::Offset(0)).unwrap();
        assert_eq!(positions.fetchable(100).len(), 1);
        positions.set_paused(std::slice::from_ref(&tp), true);
        assert!(positions.fetchable(100).is_empty());
        positions.set_paused(std::slice::from_ref(&tp), false);
        let mut damaged = batches(0, &[3]).to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let mut out = Vec::new();
        assert!(positions.absorb(&fetched(Bytes::from(damaged)), 100, &mut out).is_err());
        assert!(out.is_empty());
        // Unresolved seeks are reported, not fetched.
        positions.seek(&tp, Seek::Earliest).unwrap();
        assert!(positions.fetchable(100).is_empty());
        assert_eq!(positions.unresolved().len(), 1);
    }
}
