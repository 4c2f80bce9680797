//! The controller (shard 0): it alone changes the catalog (create, delete, alter topics), saves
//! it, and publishes it to every shard before it answers. In a cluster the catalog changes only
//! by applying the metadata log (see `metadata_log`): a client's change goes through the log,
//! and `change` runs as each committed record is applied.

use std::collections::BTreeMap;

use spate_protocol::wire::{self, ErrorCode, RequestBodyT, ResponseBodyT};

use super::{Shard, ShardMsg};
use crate::catalog::{self, Catalog, CatalogError};

impl Shard {
    /// Serves a catalog change or an offsets request.
    pub(super) async fn controller(
        &self,
        body: RequestBodyT,
    ) -> Result<ResponseBodyT, super::Failure> {
        assert_eq!(self.id, 0, "controller requests run on shard 0");
        let catalog_change = matches!(
            body,
            RequestBodyT::CreateTopicsRequest(_)
                | RequestBodyT::DeleteTopicsRequest(_)
                | RequestBodyT::AlterConfigsRequest(_)
        );
        if catalog_change && self.config.cluster.is_some() {
            let kind = body.request_body_type();
            let names = topic_names(&body);
            return Ok(match self.metadata_change(body).await {
                Ok(response) => response,
                Err(failure) => failed_for_all(kind, names, failure),
            });
        }
        // Offsets have their own lock (the store's); a catalog change in progress, which may
        // wait on the metadata log, must not hold commits up.
        if let RequestBodyT::OffsetFetchRequest(request) = body {
            return self.fetch_offsets(*request).await;
        }
        if let RequestBodyT::OffsetCommitRequest(request) = body {
            return Ok(self.commit_offsets(*request).await);
        }
        if let RequestBodyT::RegisterBrokerRequest(_) = body {
            if self.config.cluster.is_none() {
                return Err(super::Failure::new(ErrorCode::InvalidRequest, "not a cluster"));
            }
            return self.metadata_change(body).await;
        }
        let Ok(_lock) = self.controller_lock.acquire_permit(1).await else {
            return Err(super::Failure::new(ErrorCode::ShuttingDown, "the controller is closed"));
        };
        Ok(self.change(body).await)
    }

    /// Applies one change to the catalog: a client's on a single broker, a committed record of
    /// the metadata log in a cluster (then `forwarded` is set and creates carry their placement).
    pub(super) async fn change(&self, body: RequestBodyT) -> ResponseBodyT {
        match body {
            RequestBodyT::CreateTopicsRequest(request) => {
                let applying = request.forwarded && self.config.cluster.is_some();
                let mut results = Vec::new();
                for topic in request.topics.into_iter().flatten() {
                    let name = topic.name.clone().unwrap_or_default();
                    let result =
                        self.create(topic, request.validate_only, applying).await.map(|_| ());
                    results.push(topic_result(name, result));
                }
                ResponseBodyT::CreateTopicsResponse(Box::new(wire::CreateTopicsResponseT {
                    topics: Some(results),
                }))
            }
            RequestBodyT::DeleteTopicsRequest(request) => {
                let applying = request.forwarded && self.config.cluster.is_some();
                let mut results = Vec::new();
                for name in request.names.into_iter().flatten() {
                    let mut catalog = self.catalog.borrow().clone();
                    let result = match catalog.delete(&name) {
                        Ok(_) => self.publish(catalog).await,
                        // Applied again after a crash: already gone.
                        Err(CatalogError::Unknown(_)) if applying => Ok(()),
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
                    let name = topic.name.clone().unwrap_or_default();
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
            _ => ResponseBodyT::NONE,
        }
    }

    /// Creates one topic (or, with `validate_only`, checks that it could be created). On a single
    /// broker its partitions go to the least-loaded shards. In a cluster every topic is
    /// replicated, and the metadata leader places it (`place`) before the create goes into the
    /// log; the create returns that placement. `applying` is a committed record being applied:
    /// its placement is taken as given, the local open-files check (which could differ between
    /// brokers) is skipped, and a topic that already exists with the record's id is no error.
    pub(super) async fn create(
        &self,
        topic: wire::CreatableTopicT,
        validate_only: bool,
        applying: bool,
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
            Some(cluster) => {
                // Replicas talk shard to shard: a broker registered with another shard count
                // could not hold this broker's placement.
                let shards = self.config.shard_count();
                let registered =
                    self.catalog.borrow().brokers.values().map(|b| b.shards).collect::<Vec<_>>();
                if !applying && registered.iter().any(|s| usize::from(*s) != shards) {
                    return Err(CatalogError::ShardMismatch { shards });
                }
                Some(self.place(cluster, &topic)?)
            }
        };
        if let (true, Some(placed)) = (applying, &placement) {
            if self.catalog.borrow().topics.get(&name).is_some_and(|t| t.id == placed.id) {
                return Ok(None);
            }
        }
        let layout = match &placement {
            Some(placed) => Some(placed.shards.clone()),
            None => self.config.layout.topics.get(&name).map(|t| t.shards.clone()),
        };
        let mut catalog = self.catalog.borrow().clone();
        catalog.create(
            &name,
            i64::from(topic.partitions),
            configs,
            &self.config.log_defaults,
            self.config.shard_count(),
            layout.as_deref(),
        )?;
        if !applying {
            catalog::check_open_files(topic.partitions.max(0) as u64)?;
        }
        if let Some(placed) = &placement {
            let created = catalog.topics.get_mut(&name).expect("just created");
            if created.shards != placed.shards {
                return Err(CatalogError::ShardMismatch { shards: self.config.shard_count() });
            }
            created.replicas = placed.replicas.clone();
            created.id = placed.id;
        }
        if !validate_only {
            self.publish(catalog).await?;
        }
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
        // Replicas go to brokers that are up: one that is down would leave every partition
        // placed on it under-replicated from the start.
        let (alive, down) = self.brokers_alive(&brokers);
        if alive.len() < factor {
            return Err(CatalogError::BrokersDown(down));
        }
        let first = rand::random::<u32>() as usize % alive.len();
        let replicas = catalog::assign_replicas(&alive, partitions, factor, first);
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

    /// `brokers` split into those not known to be down (this one included) and those known to be.
    fn brokers_alive(&self, brokers: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let Some(membership) = &self.config.membership else {
            return (brokers.to_vec(), Vec::new());
        };
        let down =
            membership.lock().expect("membership lock").known_down(std::time::Instant::now());
        brokers.iter().partition(|b| !down.contains(b))
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

pub(super) fn topic_result(name: String, result: Result<(), CatalogError>) -> wire::TopicResultT {
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
pub(super) fn config_pairs(
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

/// Why a request passed on to another broker got no answer body.
pub(super) enum ForwardError {
    /// That broker answered with an error.
    Refused(super::Failure),
    /// It could not be reached, or did not answer in time.
    Unreachable(String),
}

/// Sends `request` to the broker at `address` (its client port) and returns its answer, within
/// `timeout` (at most `FORWARD_TIMEOUT`).
pub(super) async fn forward_to(
    address: &str,
    request: RequestBodyT,
    timeout: std::time::Duration,
) -> Result<ResponseBodyT, ForwardError> {
    let timeout = timeout.min(crate::limits::FORWARD_TIMEOUT);
    let config = spate_client::ClientConfig {
        bootstrap: address.to_string(),
        client_id: "spate-controller".into(),
        request_timeout: timeout,
        connect_timeout: timeout,
        ..spate_client::ClientConfig::default()
    };
    let client = spate_client::Client::connect(config)
        .await
        .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
    let answer = client.call(request).await.map_err(|error| match error {
        spate_client::ClientError::Broker { code, message } => {
            ForwardError::Refused(super::Failure::new(code, message))
        }
        other => ForwardError::Unreachable(other.to_string()),
    });
    client.close();
    answer
}

/// The topics a create, delete or alter names.
fn topic_names(body: &RequestBodyT) -> Vec<String> {
    match body {
        RequestBodyT::CreateTopicsRequest(r) => {
            r.topics.iter().flatten().map(|t| t.name.clone().unwrap_or_default()).collect()
        }
        RequestBodyT::DeleteTopicsRequest(r) => r.names.clone().unwrap_or_default(),
        RequestBodyT::AlterConfigsRequest(r) => {
            r.topics.iter().flatten().map(|t| t.name.clone().unwrap_or_default()).collect()
        }
        _ => Vec::new(),
    }
}

/// The answer to a create, delete or alter (`kind`) that failed as a whole: each topic says why.
fn failed_for_all(
    kind: wire::RequestBody,
    names: Vec<String>,
    failure: super::Failure,
) -> ResponseBodyT {
    let results = names
        .into_iter()
        .map(|name| wire::TopicResultT {
            name: Some(name),
            error_code: failure.code,
            error_message: Some(failure.message.clone()),
        })
        .collect();
    answer_of(kind, results)
}

/// The answer to a request of type `kind` (create, delete or alter) holding `results`.
pub(super) fn answer_of(
    kind: wire::RequestBody,
    results: Vec<wire::TopicResultT>,
) -> ResponseBodyT {
    let topics = Some(results);
    match kind {
        wire::RequestBody::DeleteTopicsRequest => {
            ResponseBodyT::DeleteTopicsResponse(Box::new(wire::DeleteTopicsResponseT { topics }))
        }
        wire::RequestBody::AlterConfigsRequest => {
            ResponseBodyT::AlterConfigsResponse(Box::new(wire::AlterConfigsResponseT { topics }))
        }
        _ => ResponseBodyT::CreateTopicsResponse(Box::new(wire::CreateTopicsResponseT { topics })),
    }
}
