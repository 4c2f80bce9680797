//! Committed consumer offsets on shard 0: commits (fenced by group generation) and fetches,
//! and the compaction of the offsets log they trigger.

use std::collections::HashMap;
use std::rc::Rc;

use glommio::sync::RwLock;
use spate_protocol::wire::{self, ErrorCode, ResponseBodyT};

use super::{groups, Failure, Shard};
use crate::offsets::{CommitError, OffsetStore, Readiness};

impl From<CommitError> for Failure {
    fn from(error: CommitError) -> Failure {
        use spate_cluster::ReplicationError;
        match error {
            CommitError::Log(error) => Failure::from(error),
            // This broker stopped leading the offsets log, and with it coordinating groups.
            CommitError::Replication(
                ReplicationError::NotLeader { .. }
                | ReplicationError::Transferring
                | ReplicationError::TransferTimedOut,
            ) => Failure::new(
                ErrorCode::NotCoordinator,
                "this broker no longer coordinates groups; find the coordinator again",
            ),
            CommitError::Replication(error) => {
                super::replicated::replication_failure("__consumer_offsets", 0, error)
            }
        }
    }
}

impl Shard {
    /// The offset store once it may serve: in a cluster this broker must lead the offsets log,
    /// and the first request of its term replays the log into the map.
    pub(super) async fn ready_offsets(&self) -> Result<Rc<RwLock<OffsetStore>>, Failure> {
        let store = self.offsets.clone().expect("shard 0 has the offset store");
        let readiness = store.read().await.expect("lock never closed").readiness();
        match readiness {
            Readiness::Ready => Ok(store),
            Readiness::NotLeader { leader } => Err(Failure::new(
                ErrorCode::NotCoordinator,
                match leader {
                    Some(leader) => format!("groups are coordinated by broker {leader}"),
                    None => "no broker coordinates groups yet: an election is under way".into(),
                },
            )),
            Readiness::Load { .. } => {
                {
                    let exclusive = store.write().await.expect("lock never closed");
                    // Another request may have loaded it meanwhile.
                    if let Readiness::Load { term, upper } = exclusive.readiness() {
                        exclusive.load(term, upper).await?;
                    }
                }
                Ok(store)
            }
        }
    }

    pub(super) async fn commit_offsets(
        &self,
        request: wire::OffsetCommitRequestT,
    ) -> ResponseBodyT {
        let group = request.group_id.clone().unwrap_or_default();
        // Fencing: a member of an older generation (a zombie) may not commit.
        let member = request.member_id.clone().unwrap_or_default();
        let fenced = match groups::validate_group_id(&group) {
            Err(invalid) => Err(invalid),
            Ok(()) => self.check_commit(&group, &member, request.generation_id).await,
        };
        let mut accepted = Vec::new();
        let mut results: Vec<wire::TopicPartitionResultsT> = Vec::new();
        for topic in request.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            let mut partitions = Vec::new();
            for partition in topic.partitions.into_iter().flatten() {
                let known = self.owner(&name, partition.partition as u32).is_some();
                let error_code = if let Err(failure) = &fenced {
                    failure.code
                } else if !known {
                    ErrorCode::UnknownTopicOrPartition
                } else if partition.offset < 0 {
                    ErrorCode::InvalidRequest
                } else {
                    accepted.push((
                        (group.clone(), name.clone(), partition.partition as u32),
                        partition.offset,
                    ));
                    ErrorCode::None
                };
                partitions.push(wire::PartitionResultT {
                    partition: partition.partition,
                    error_code,
                    error_message: None,
                });
            }
            results.push(wire::TopicPartitionResultsT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        let committed = match self.ready_offsets().await {
            Ok(store) => {
                // Shared access: concurrent commits share fdatasyncs; compaction alone is
                // exclusive.
                let exclusive = store.read().await.expect("lock never closed");
                let committed = exclusive.commit(&accepted).await.map_err(Failure::from);
                drop(exclusive);
                if committed.is_ok() {
                    compact_offsets_if_due(store);
                }
                committed
            }
            Err(failure) => Err(failure),
        };
        if let Err(failure) = committed {
            for topic in &mut results {
                for partition in topic.partitions.iter_mut().flatten() {
                    if partition.error_code == ErrorCode::None {
                        partition.error_code = failure.code;
                        partition.error_message = Some(failure.message.clone());
                    }
                }
            }
        }
        ResponseBodyT::OffsetCommitResponse(Box::new(wire::OffsetCommitResponseT {
            topics: Some(results),
        }))
    }

    pub(super) async fn fetch_offsets(
        &self,
        request: wire::OffsetFetchRequestT,
    ) -> Result<ResponseBodyT, Failure> {
        let group = request.group_id.unwrap_or_default();
        let store = self.ready_offsets().await?;
        let store = store.read().await.expect("lock never closed");
        let topics: Vec<(String, Option<Vec<i32>>)> = match request.topics {
            Some(topics) => {
                topics.into_iter().map(|t| (t.name.unwrap_or_default(), t.partitions)).collect()
            }
            None => store.topics_of(&group).into_iter().map(|t| (t, None)).collect(),
        };
        let mut out = Vec::new();
        for (name, partitions) in topics {
            let partitions: Vec<wire::OffsetFetchPartitionT> = match partitions {
                Some(list) => list
                    .into_iter()
                    .map(|p| wire::OffsetFetchPartitionT {
                        partition: p,
                        offset: store.get(&(group.clone(), name.clone(), p as u32)).unwrap_or(-1),
                        metadata: None,
                        error_code: ErrorCode::None,
                    })
                    .collect(),
                None => {
                    let count =
                        self.catalog.borrow().topics.get(&name).map_or(0, |t| t.partition_count());
                    let committed: HashMap<u32, i64> =
                        store.for_topic(&group, &name).into_iter().collect();
                    (0..count)
                        .map(|p| wire::OffsetFetchPartitionT {
                            partition: p as i32,
                            offset: committed.get(&p).copied().unwrap_or(-1),
                            metadata: None,
                            error_code: ErrorCode::None,
                        })
                        .collect()
                }
            };
            out.push(wire::OffsetFetchTopicResponseT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        Ok(ResponseBodyT::OffsetFetchResponse(Box::new(wire::OffsetFetchResponseT {
            topics: Some(out),
        })))
    }
}

/// Compacts the committed-offsets log in the background if it is due: off the commit path, so
/// no commit waits for it and its failure never fails a commit that was already durable.
pub(crate) fn compact_offsets_if_due(store: Rc<RwLock<OffsetStore>>) {
    let claimed = store.try_read().map(|s| s.claim_compaction()).unwrap_or(false);
    if !claimed {
        return;
    }
    glommio::spawn_local(async move {
        let Ok(store) = store.write().await else { return };
        if let Err(error) = store.compact().await {
            tracing::error!(%error, "compacting the committed-offsets log failed; will retry");
        }
    })
    .detach();
}
