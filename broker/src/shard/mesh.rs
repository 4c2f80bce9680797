//! The cross-shard mesh: every call one shard makes to another is a [`ShardMsg`] sent through
//! [`Shard::call`](super::Shard), and answered on a oneshot; `handle_peer` serves them.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use super::{Failure, FetchOutcome, PartitionStats, ProduceOutcome, Shard};
use crate::catalog::Catalog;
use crate::limits;

/// Calls between shards. Everything in it is `Send`.
pub enum ShardMsg {
    Produce {
        topic: String,
        partition: u32,
        batches: Vec<BytesMut>,
        acks: wire::Acks,
        reply: oneshot::Sender<ProduceOutcome>,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        reply: oneshot::Sender<FetchOutcome<Bytes>>,
    },
    /// Reply once the partition's high watermark passes `offset`, `wait` passes, or the asker
    /// gives up (drops the reply): how a long-polling fetch waits on another shard's partition.
    AwaitData {
        topic: String,
        partition: u32,
        offset: i64,
        wait: Duration,
        reply: oneshot::Sender<()>,
    },
    ListOffset {
        topic: String,
        partition: u32,
        timestamp: i64,
        reply: oneshot::Sender<Result<i64, Failure>>,
    },
    Describe {
        topic: String,
        partition: u32,
        reply: oneshot::Sender<Option<PartitionStats>>,
    },
    Controller {
        body: RequestBodyT,
        reply: oneshot::Sender<Result<ResponseBodyT, Failure>>,
    },
    Catalog {
        catalog: Catalog,
        reply: oneshot::Sender<()>,
    },
    /// This shard's metric samples, for a scrape served by shard 0.
    Metrics {
        reply: oneshot::Sender<String>,
    },
    /// Join, sync, heartbeat or leave for a group this shard coordinates.
    Group {
        body: RequestBodyT,
        reply: oneshot::Sender<Result<ResponseBodyT, Failure>>,
    },
    ListGroups {
        reply: oneshot::Sender<Vec<wire::ListedGroupT>>,
    },
    DescribeGroup {
        group: String,
        reply: oneshot::Sender<wire::DescribedGroupT>,
    },
    CheckCommit {
        group: String,
        member: String,
        generation: i32,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Forget an empty group (its coordinator shard).
    DeleteGroup {
        group: String,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
    /// Hand out a producer id (shard 0).
    InitProducerId {
        name: Option<String>,
        reply: oneshot::Sender<Result<ResponseBodyT, Failure>>,
    },
    /// Remove a group's committed offsets (shard 0).
    DeleteGroupOffsets {
        group: String,
        reply: oneshot::Sender<Result<(), Failure>>,
    },
}

impl Shard {
    pub(super) async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> ShardMsg,
    ) -> Result<T, Failure> {
        let (reply, response) = oneshot::channel();
        if self.peers.send_to(shard, make(reply)).await.is_err() {
            return Err(Failure::new(
                ErrorCode::ShuttingDown,
                format!("shard {shard} is not reachable"),
            ));
        }
        response.await.map_err(|_| {
            Failure::new(ErrorCode::ShuttingDown, format!("shard {shard} dropped the call"))
        })
    }

    /// Serves a call from another shard.
    pub async fn handle_peer(self: &Rc<Self>, message: ShardMsg) {
        match message {
            ShardMsg::Produce { topic, partition, batches, acks, reply } => {
                let _ = reply.send(self.produce_local(&topic, partition, batches, acks).await);
            }
            ShardMsg::Fetch { topic, partition, offset, max_bytes, reply } => {
                let outcome = self.fetch_local(&topic, partition, offset, max_bytes).await;
                let copied = FetchOutcome {
                    result: outcome
                        .result
                        .map(|chunks| chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()),
                    high_watermark: outcome.high_watermark,
                    log_start_offset: outcome.log_start_offset,
                };
                let _ = reply.send(copied);
            }
            ShardMsg::AwaitData { topic, partition, offset, wait, mut reply } => {
                let wait = wait.min(Duration::from_millis(limits::FETCH_WAIT_MS_MAX));
                let asker_gone = reply.cancellation();
                self.wait_for_local_data(&[(topic, partition, offset)], wait, asker_gone).await;
                let _ = reply.send(());
            }
            ShardMsg::ListOffset { topic, partition, timestamp, reply } => {
                let _ = reply.send(self.list_offset_local(&topic, partition, timestamp).await);
            }
            ShardMsg::Describe { topic, partition, reply } => {
                let _ = reply.send(self.stats_local(&topic, partition));
            }
            ShardMsg::Controller { body, reply } => {
                let _ = reply.send(self.controller(body).await);
            }
            ShardMsg::Group { body, reply } => {
                let _ = reply.send(self.group_local(body));
            }
            ShardMsg::ListGroups { reply } => {
                let _ = reply.send(self.list_local_groups());
            }
            ShardMsg::DescribeGroup { group, reply } => {
                let _ = reply.send(self.describe_local(&group));
            }
            ShardMsg::CheckCommit { group, member, generation, reply } => {
                let _ = reply.send(
                    self.groups
                        .borrow()
                        .check_commit(&group, &member, generation)
                        .map_err(Failure::from),
                );
            }
            ShardMsg::DeleteGroup { group, reply } => {
                let _ = reply.send(self.groups.borrow_mut().delete(&group).map_err(Failure::from));
            }
            ShardMsg::DeleteGroupOffsets { group, reply } => {
                let _ = reply.send(self.delete_group_offsets(&group).await);
            }
            ShardMsg::InitProducerId { name, reply } => {
                let _ = reply.send(self.init_producer_id_here(name).await);
            }
            ShardMsg::Metrics { reply } => {
                let _ = reply.send(self.render_metrics());
            }
            ShardMsg::Catalog { catalog, reply } => {
                if let Err(error) = self.apply_catalog(catalog).await {
                    tracing::error!(shard = self.id, %error, "applying the catalog failed");
                }
                let _ = reply.send(());
            }
        }
    }
}
