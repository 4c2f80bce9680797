//! The controller (shard 0): it alone changes the catalog (create, delete, alter topics), saves
//! it, and publishes it to every shard before it answers.

use std::collections::BTreeMap;

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use super::{Shard, ShardMsg};
use crate::catalog::{self, Catalog, CatalogError};

impl Shard {
    pub(super) async fn controller(&self, body: RequestBodyT) -> ResponseBodyT {
        assert_eq!(self.id, 0, "controller requests run on shard 0");
        let Ok(_lock) = self.controller_lock.acquire_permit(1).await else {
            return ResponseBodyT::NONE;
        };
        match body {
            RequestBodyT::CreateTopicsRequest(request) => {
                let mut results = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.unwrap_or_default();
                    let configs: BTreeMap<String, String> = config_pairs(topic.configs).collect();
                    let layout = self.config.layout.topics.get(&name).map(|t| t.shards.clone());
                    let mut catalog = self.catalog.borrow().clone();
                    let created = catalog
                        .create(
                            &name,
                            i64::from(topic.partitions),
                            configs,
                            &self.config.log_defaults,
                            self.config.shard_count(),
                            layout.as_deref(),
                        )
                        .map(|_| ())
                        .and_then(|()| catalog::check_open_files(topic.partitions.max(0) as u64));
                    let result = match created {
                        Ok(()) if request.validate_only => Ok(()),
                        Ok(()) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::CreateTopicsResponse(Box::new(wire::CreateTopicsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::DeleteTopicsRequest(request) => {
                let mut results = Vec::new();
                for name in request.names.into_iter().flatten() {
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.delete(&name) {
                        Ok(_) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::DeleteTopicsResponse(Box::new(wire::DeleteTopicsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::AlterConfigsRequest(request) => {
                let mut results = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.unwrap_or_default();
                    let updates: Vec<(String, String)> = config_pairs(topic.configs).collect();
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.alter(&name, &updates, &self.config.log_defaults) {
                        Ok(()) if request.validate_only => Ok(()),
                        Ok(()) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::AlterConfigsResponse(Box::new(wire::AlterConfigsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::OffsetCommitRequest(request) => self.commit_offsets(*request).await,
            RequestBodyT::OffsetFetchRequest(request) => self.fetch_offsets(*request).await,
            _ => ResponseBodyT::NONE,
        }
    }

    /// Persists a new catalog and waits until every shard runs with it.
    pub(super) async fn publish(&self, catalog: Catalog) -> Result<(), CatalogError> {
        catalog.save(&self.config.data_dir).map_err(|e| CatalogError::Storage(e.to_string()))?;
        for shard in 0..self.config.shard_count() {
            if shard == self.id {
                if let Err(error) = self.apply_catalog(catalog.clone()).await {
                    tracing::error!(%error, "applying the catalog on the controller failed");
                }
            } else {
                let snapshot = catalog.clone();
                if let Err(failure) =
                    self.call(shard, |reply| ShardMsg::Catalog { catalog: snapshot, reply }).await
                {
                    tracing::error!(shard, message = %failure.message, "a shard did not take the new catalog");
                }
            }
        }
        Ok(())
    }
}

fn topic_result(name: String, result: Result<(), CatalogError>) -> wire::TopicResultT {
    match result {
        Ok(()) => wire::TopicResultT {
            name: Some(name),
            error_code: ErrorCode::None,
            error_message: None,
        },
        Err(error) => {
            let code = match &error {
                CatalogError::InvalidName(_) => ErrorCode::InvalidTopic,
                CatalogError::Exists(_) => ErrorCode::TopicAlreadyExists,
                CatalogError::Unknown(_) => ErrorCode::UnknownTopicOrPartition,
                CatalogError::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
                CatalogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
                CatalogError::TooManyTopics => ErrorCode::InvalidRequest,
                CatalogError::Storage(_) => ErrorCode::StorageError,
                CatalogError::OpenFilesLimit { .. } => ErrorCode::InvalidPartitions,
            };
            wire::TopicResultT {
                name: Some(name),
                error_code: code,
                error_message: Some(error.to_string()),
            }
        }
    }
}

/// A request's topic configs as (name, value) pairs; a missing name or value is empty.
fn config_pairs(
    configs: Option<Vec<wire::ConfigEntryT>>,
) -> impl Iterator<Item = (String, String)> {
    configs.into_iter().flatten().map(|c| (c.name.unwrap_or_default(), c.value.unwrap_or_default()))
}
