//! The controller (shard 0): it alone changes the catalog (create, delete, alter topics), saves
//! it, and publishes it to every shard before it answers.

use std::collections::BTreeMap;

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use super::{Shard, ShardMsg};
use crate::catalog::{self, Catalog, CatalogError};

impl Shard {
    /// Serves a catalog change or an offsets request. In a cluster a change a client asked for
    /// is made here first, then passed on to every other broker (see `forward`), after this
    /// broker's controller lock is released: two brokers passing changes to each other must not
    /// wait on each other's lock.
    pub(super) async fn controller(&self, body: RequestBodyT) -> ResponseBodyT {
        assert_eq!(self.id, 0, "controller requests run on shard 0");
        let (mut response, forward) = {
            let Ok(_lock) = self.controller_lock.acquire_permit(1).await else {
                return ResponseBodyT::NONE;
            };
            self.change(body).await
        };
        if let Some(forward) = forward {
            self.forward(forward, &mut response).await;
        }
        response
    }

    /// Applies one request to the catalog; in a cluster also returns the request to pass on.
    async fn change(&self, body: RequestBodyT) -> (ResponseBodyT, Option<RequestBodyT>) {
        let cluster = self.config.cluster.is_some();
        match body {
            RequestBodyT::CreateTopicsRequest(request) => {
                let mut results = Vec::new();
                let mut forward = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.clone().unwrap_or_default();
                    let result = match self.create(topic, request.validate_only).await {
                        Ok(Some(placed)) if cluster && !request.forwarded => {
                            forward.push(placed);
                            Ok(())
                        }
                        Ok(_) => Ok(()),
                        Err(error) => Err(error),
                    };
                    results.push(topic_result(name, result));
                }
                let forward = (!forward.is_empty()).then(|| {
                    RequestBodyT::CreateTopicsRequest(Box::new(wire::CreateTopicsRequestT {
                        topics: Some(forward),
                        timeout_ms: request.timeout_ms,
                        validate_only: false,
                        forwarded: true,
                    }))
                });
                let response =
                    ResponseBodyT::CreateTopicsResponse(Box::new(wire::CreateTopicsResponseT {
                        topics: Some(results),
                    }));
                (response, forward)
            }
            RequestBodyT::DeleteTopicsRequest(request) => {
                let mut results = Vec::new();
                let mut forward = Vec::new();
                for name in request.names.into_iter().flatten() {
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.delete(&name) {
                        Ok(_) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    if result.is_ok() && cluster && !request.forwarded {
                        forward.push(name.clone());
                    }
                    results.push(topic_result(name, result));
                }
                let forward = (!forward.is_empty()).then(|| {
                    RequestBodyT::DeleteTopicsRequest(Box::new(wire::DeleteTopicsRequestT {
                        names: Some(forward),
                        timeout_ms: request.timeout_ms,
                        forwarded: true,
                    }))
                });
                let response =
                    ResponseBodyT::DeleteTopicsResponse(Box::new(wire::DeleteTopicsResponseT {
                        topics: Some(results),
                    }));
                (response, forward)
            }
            RequestBodyT::AlterConfigsRequest(request) => {
                let mut results = Vec::new();
                let mut forward = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.clone().unwrap_or_default();
                    let updates: Vec<(String, String)> =
                        config_pairs(topic.configs.clone()).collect();
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.alter(&name, &updates, &self.config.log_defaults) {
                        Ok(()) if request.validate_only => Ok(()),
                        Ok(()) => self.publish(catalog).await,
                        Err(error) => Err(error),
                    };
                    if result.is_ok() && cluster && !request.forwarded && !request.validate_only {
                        forward.push(topic);
                    }
                    results.push(topic_result(name, result));
                }
                let forward = (!forward.is_empty()).then(|| {
                    RequestBodyT::AlterConfigsRequest(Box::new(wire::AlterConfigsRequestT {
                        topics: Some(forward),
                        validate_only: false,
                        forwarded: true,
                    }))
                });
                let response =
                    ResponseBodyT::AlterConfigsResponse(Box::new(wire::AlterConfigsResponseT {
                        topics: Some(results),
                    }));
                (response, forward)
            }
            RequestBodyT::OffsetCommitRequest(request) => {
                (self.commit_offsets(*request).await, None)
            }
            RequestBodyT::OffsetFetchRequest(request) => (self.fetch_offsets(*request).await, None),
            _ => (ResponseBodyT::NONE, None),
        }
    }

    /// Creates one topic. On a single broker its partitions go to the least-loaded shards. In
    /// a cluster every topic is replicated: the broker a client asked places the replicas
    /// (round robin over the brokers, `replication_factor` each, its default
    /// `min(3, brokers)`), needs every broker up, and returns the placement to pass on; a
    /// forwarded create takes the placement it is given.
    async fn create(
        &self,
        topic: wire::CreatableTopicT,
        validate_only: bool,
    ) -> Result<Option<wire::CreatableTopicT>, CatalogError> {
        let name = topic.name.clone().unwrap_or_default();
        let configs: BTreeMap<String, String> = config_pairs(topic.configs.clone()).collect();
        let placement = match &self.config.cluster {
            None if topic.replication_factor > 1 || topic.replication_factor < 0 => {
                return Err(CatalogError::InvalidReplicationFactor {
                    got: topic.replication_factor.into(),
                    brokers: 1,
                });
            }
            None => None,
            Some(cluster) => Some(self.place(cluster, &topic)?),
        };
        let layout = match &placement {
            Some(placed) => Some(placed.shards.clone()),
            None => self.config.layout.topics.get(&name).map(|t| t.shards.clone()),
        };
        let mut catalog = self.catalog.borrow().clone();
        catalog
            .create(
                &name,
                i64::from(topic.partitions),
                configs,
                &self.config.log_defaults,
                self.config.shard_count(),
                layout.as_deref(),
            )
            .map(|_| ())
            .and_then(|()| catalog::check_open_files(topic.partitions.max(0) as u64))?;
        if let Some(placed) = &placement {
            let created = catalog.topics.get_mut(&name).expect("just created");
            if created.shards != placed.shards {
                return Err(CatalogError::ShardMismatch { shards: self.config.shard_count() });
            }
            created.replicas = placed.replicas.clone();
            created.id = placed.id;
        }
        if validate_only {
            return Ok(None);
        }
        self.publish(catalog).await?;
        Ok(placement.map(|placed| wire::CreatableTopicT {
            replica_assignment: Some(
                placed
                    .replicas
                    .iter()
                    .map(|r| wire::PartitionReplicasT {
                        replicas: Some(r.iter().map(|b| *b as i32).collect()),
                    })
                    .collect(),
            ),
            topic_id: placed.id,
            shards: Some(placed.shards),
            ..topic
        }))
    }

    /// Where a cluster topic's partitions and replicas go.
    fn place(
        &self,
        cluster: &crate::cluster::ClusterConfig,
        topic: &wire::CreatableTopicT,
    ) -> Result<Placement, CatalogError> {
        let brokers = cluster.broker_ids();
        let partitions = topic.partitions.max(0) as u32;
        if let Some(assignment) = topic.replica_assignment.as_ref().filter(|a| !a.is_empty()) {
            let replicas: Vec<Vec<u32>> = assignment
                .iter()
                .map(|p| p.replicas.iter().flatten().map(|b| *b as u32).collect())
                .collect();
            let valid = replicas.len() == partitions as usize
                && replicas.iter().all(|r| {
                    !r.is_empty()
                        && r.iter().all(|b| brokers.contains(b))
                        && r.iter().collect::<std::collections::BTreeSet<_>>().len() == r.len()
                });
            if !valid {
                return Err(CatalogError::InvalidReplicationFactor {
                    got: topic.replication_factor.into(),
                    brokers: brokers.len(),
                });
            }
            let shards = match topic.shards.clone().filter(|s| !s.is_empty()) {
                Some(shards) => shards,
                None => self.spread_shards(partitions),
            };
            let id = if topic.topic_id != 0 { topic.topic_id } else { catalog::new_topic_id() };
            return Ok(Placement { replicas, shards, id });
        }
        let factor = match topic.replication_factor {
            0 => brokers.len().min(crate::limits::DEFAULT_REPLICATION_FACTOR_MAX),
            f if f < 0 || f as usize > brokers.len() => {
                return Err(CatalogError::InvalidReplicationFactor {
                    got: f.into(),
                    brokers: brokers.len(),
                })
            }
            f => f as usize,
        };
        let first = rand::random::<u32>() as usize % brokers.len();
        let replicas = catalog::assign_replicas(&brokers, partitions, factor, first);
        let down = self.brokers_down(&replicas);
        if !down.is_empty() {
            return Err(CatalogError::BrokersDown(down));
        }
        Ok(Placement {
            replicas,
            shards: self.spread_shards(partitions),
            id: catalog::new_topic_id(),
        })
    }

    /// A cluster topic's shards: round robin from the least-loaded shard of this broker. Every
    /// broker uses the same (so replicas talk shard to shard), which needs the same number of
    /// shards on every broker.
    fn spread_shards(&self, partitions: u32) -> Vec<u16> {
        let shard_count = self.config.shard_count();
        let loads = self.catalog.borrow().shard_loads(shard_count);
        let first = (0..shard_count).min_by_key(|s| (loads[*s], *s)).unwrap_or(0);
        (0..partitions as usize).map(|p| ((first + p) % shard_count) as u16).collect()
    }

    /// Brokers named in `replicas` that this broker does not hear from.
    fn brokers_down(&self, replicas: &[Vec<u32>]) -> Vec<u32> {
        let Some(membership) = &self.config.membership else { return Vec::new() };
        let statuses =
            membership.lock().expect("membership lock").status(std::time::Instant::now());
        let mut down: Vec<u32> = replicas
            .iter()
            .flatten()
            .copied()
            .filter(|b| statuses.iter().any(|s| s.id == *b && !s.alive))
            .collect();
        down.sort_unstable();
        down.dedup();
        down
    }

    /// Passes a change on to every other broker of the cluster and folds their failures into
    /// `response`: a topic one of them refused says so, with the broker, in its result.
    ///
    /// Until the catalog is itself a replicated log this is best effort with a clear answer:
    /// the change holds on every broker that answered OK; one that was down misses it (a
    /// create needs all brokers up, see `place`).
    async fn forward(&self, request: RequestBodyT, response: &mut ResponseBodyT) {
        let Some(membership) = &self.config.membership else { return };
        let peers: Vec<crate::cluster::BrokerStatus> = {
            let statuses =
                membership.lock().expect("membership lock").status(std::time::Instant::now());
            let me = self.config.cluster.as_ref().map(|c| c.node_id);
            statuses.into_iter().filter(|s| Some(s.id) != me).collect()
        };
        for peer in peers {
            let answered = forward_to(&peer.address, request.clone()).await;
            let results = match answered {
                Ok(ResponseBodyT::CreateTopicsResponse(r)) => r.topics.unwrap_or_default(),
                Ok(ResponseBodyT::DeleteTopicsResponse(r)) => r.topics.unwrap_or_default(),
                Ok(ResponseBodyT::AlterConfigsResponse(r)) => r.topics.unwrap_or_default(),
                Ok(_) => Vec::new(),
                Err(message) => {
                    tracing::warn!(broker = peer.id, %message, "could not pass a catalog change on");
                    mark_all(response, peer.id, &message);
                    continue;
                }
            };
            for result in results.into_iter().filter(|r| r.error_code != ErrorCode::None) {
                let message = format!(
                    "{:?}: {}",
                    result.error_code,
                    result.error_message.unwrap_or_default()
                );
                mark(response, result.name.as_deref().unwrap_or_default(), peer.id, &message);
            }
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
                CatalogError::InvalidReplicationFactor { .. } => {
                    ErrorCode::InvalidReplicationFactor
                }
                CatalogError::BrokersDown(_) => ErrorCode::NotEnoughReplicas,
                CatalogError::ShardMismatch { .. } => ErrorCode::InvalidConfig,
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

/// A cluster topic's placement: replicas and shard of each partition, and its id.
struct Placement {
    replicas: Vec<Vec<u32>>,
    shards: Vec<u16>,
    id: u64,
}

/// Sends `request` to the broker at `address` (its client port) and returns its answer.
async fn forward_to(address: &str, request: RequestBodyT) -> Result<ResponseBodyT, String> {
    let config = spate_client::ClientConfig {
        bootstrap: address.to_string(),
        client_id: "spate-controller".into(),
        request_timeout: crate::limits::FORWARD_TIMEOUT,
        connect_timeout: crate::limits::FORWARD_TIMEOUT,
        ..spate_client::ClientConfig::default()
    };
    let client = spate_client::Client::connect(config).await.map_err(|e| e.to_string())?;
    let answer = client.call(request).await.map_err(|e| e.to_string());
    client.close();
    answer
}

/// Every topic result of `response` that succeeded here records that `broker` failed.
fn mark_all(response: &mut ResponseBodyT, broker: u32, message: &str) {
    for result in results_mut(response) {
        add_failure(result, broker, message);
    }
}

fn mark(response: &mut ResponseBodyT, topic: &str, broker: u32, message: &str) {
    for result in results_mut(response).filter(|r| r.name.as_deref() == Some(topic)) {
        add_failure(result, broker, message);
    }
}

fn add_failure(result: &mut wire::TopicResultT, broker: u32, message: &str) {
    if result.error_code == ErrorCode::None {
        result.error_code = ErrorCode::NotEnoughReplicas;
    }
    let note = format!("broker {broker} did not apply it: {message}");
    result.error_message = Some(match result.error_message.take() {
        Some(previous) => format!("{previous}; {note}"),
        None => format!("done here; {note}"),
    });
}

fn results_mut(response: &mut ResponseBodyT) -> impl Iterator<Item = &mut wire::TopicResultT> {
    let topics = match response {
        ResponseBodyT::CreateTopicsResponse(r) => r.topics.as_mut(),
        ResponseBodyT::DeleteTopicsResponse(r) => r.topics.as_mut(),
        ResponseBodyT::AlterConfigsResponse(r) => r.topics.as_mut(),
        _ => None,
    };
    topics.into_iter().flatten()
}
