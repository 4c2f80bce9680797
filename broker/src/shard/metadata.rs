//! Metadata and describe requests, list offsets, partition stats, and the metrics scrape.

use spate_protocol::wire::{self, ErrorCode, ResponseBodyT};

use super::{Failure, PartitionStats, Shard, ShardMsg};
use crate::catalog;

impl Shard {
    pub(super) async fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, Failure> {
        let readable = self.readable(topic, partition)?;
        match timestamp {
            -1 => Ok(readable.end()),
            -2 => Ok(readable.log.offsets().start),
            ts => {
                let found = readable.log.offset_for_timestamp(ts).await?;
                Ok(found.filter(|offset| *offset < readable.end()).unwrap_or(-1))
            }
        }
    }

    pub(super) async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<i64, Failure> {
        match self.owner(topic, partition) {
            None => Err(Failure::unknown(topic, partition)),
            Some(owner) if owner == self.id => {
                self.list_offset_local(topic, partition, timestamp).await
            }
            Some(owner) => {
                self.call(owner, |reply| ShardMsg::ListOffset {
                    topic: topic.to_string(),
                    partition,
                    timestamp,
                    reply,
                })
                .await?
            }
        }
    }

    pub(super) fn stats_local(&self, topic: &str, partition: u32) -> Option<PartitionStats> {
        let readable = self.readable(topic, partition).ok()?;
        Some(PartitionStats {
            start: readable.log.offsets().start,
            end: readable.end(),
            bytes: readable.log.size_bytes(),
        })
    }

    pub async fn stats(&self, topic: &str, partition: u32) -> Option<PartitionStats> {
        match self.owner(topic, partition)? {
            owner if owner == self.id => self.stats_local(topic, partition),
            owner => self
                .call(owner, |reply| ShardMsg::Describe {
                    topic: topic.to_string(),
                    partition,
                    reply,
                })
                .await
                .ok()?,
        }
    }

    /// This shard's metric samples.
    pub fn render_metrics(&self) -> String {
        let mut partitions: Vec<(String, u32, i64, u64, u64)> = self
            .all_logs()
            .into_iter()
            .map(|((topic, partition), log)| {
                let cut = log.recovery().cut_bytes;
                (topic, partition, log.offsets().high_watermark, log.size_bytes(), cut)
            })
            .collect();
        partitions.sort();
        let peers = self.replication.borrow().as_ref().map(|node| node.connection_stats());
        self.metrics.render(self.id, &partitions, peers.as_deref())
    }

    /// Every shard's samples, with HELP/TYPE lines: one Prometheus scrape.
    pub async fn scrape(&self) -> String {
        let mut out = crate::metrics::header();
        for shard in 0..self.config.shard_count() {
            if shard == self.id {
                out.push_str(&self.render_metrics());
            } else if let Ok(samples) = self.call(shard, |reply| ShardMsg::Metrics { reply }).await
            {
                out.push_str(&samples);
            }
        }
        // Consumer lag: the committed offsets live on this shard (0), the log ends on the owners.
        let committed = match &self.offsets {
            Some(store) => store.read().await.map(|s| s.all()).unwrap_or_default(),
            None => Vec::new(),
        };
        for ((group, topic, partition), offset) in committed {
            if let Some(stats) = self.stats(&topic, partition).await {
                let lag = (stats.end - offset).max(0);
                out.push_str(&format!(
                    "spate_consumer_lag{{group=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {lag}\n",
                    crate::metrics::label(&group),
                    crate::metrics::label(&topic)
                ));
            }
        }
        out.push_str(&self.replication_metrics());
        out
    }

    /// In a cluster: partitions led here, those of them missing an in-sync replica, each
    /// follower's lag behind its leader in offsets, and each replica's term (it rises with
    /// every election), from the table every shard publishes each tick.
    fn replication_metrics(&self) -> String {
        let (Some(views), Some(cluster)) = (&self.config.replica_views, &self.config.cluster)
        else {
            return String::new();
        };
        let me = cluster.node_id;
        let mut views: Vec<_> = views
            .lock()
            .expect("replica views lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let catalog = self.catalog.borrow();
        let (mut led, mut under) = (0, 0);
        let mut out = String::new();
        let metadata_log = super::metadata_log::METADATA_DIR;
        let controller = views.iter().any(|((n, _), v)| n == metadata_log && v.leader == Some(me));
        out.push_str(&format!("spate_controller {}\n", u8::from(controller)));
        // The internal logs (`__`-prefixed, which no topic name may be) are not partitions.
        for ((name, partition), view) in
            views.into_iter().filter(|((n, _), _)| !n.starts_with("__"))
        {
            let topic = crate::metrics::label(&name);
            out.push_str(&format!(
                "spate_partition_leader_term{{topic=\"{topic}\",partition=\"{partition}\"}} {}\n",
                view.term
            ));
            if view.leader != Some(me) {
                continue;
            }
            led += 1;
            let replicas = catalog
                .topics
                .get(&name)
                .and_then(|t| t.replicas.get(partition as usize))
                .map_or(0, Vec::len);
            if view.isr.len() < replicas {
                under += 1;
            }
            let end = view.log_ends.iter().find(|(id, _)| *id == me).map_or(0, |(_, e)| *e);
            for (replica, replica_end) in view.log_ends.iter().filter(|(id, _)| *id != me) {
                out.push_str(&format!(
                    "spate_replica_lag_offsets{{topic=\"{topic}\",partition=\"{partition}\",replica=\"{replica}\"}} {}\n",
                    (end - replica_end).max(0)
                ));
            }
            for (replica, bytes) in &view.lag_bytes {
                out.push_str(&format!(
                    "spate_replica_lag_bytes{{topic=\"{topic}\",partition=\"{partition}\",replica=\"{replica}\"}} {bytes}\n",
                ));
            }
        }
        out.push_str(&format!(
            "spate_partitions_led {led}\nspate_under_replicated_partitions {under}\n"
        ));
        out
    }

    pub(super) fn metadata(&self, topics: Option<Vec<String>>) -> ResponseBodyT {
        let catalog = self.catalog.borrow();
        let names: Vec<String> = topics.unwrap_or_else(|| catalog.topics.keys().cloned().collect());
        let listen = self.config.listen;
        let brokers = self.brokers(listen);
        let topics = names
            .into_iter()
            .map(|name| match catalog.topics.get(&name) {
                None => wire::TopicMetadataT {
                    name: Some(name),
                    error_code: ErrorCode::UnknownTopicOrPartition,
                    partitions: None,
                },
                Some(topic) => {
                    let partitions = (0..topic.partition_count())
                        .map(|partition| {
                            if topic.is_replicated() {
                                self.replicated_metadata(&name, topic, partition, &brokers)
                            } else {
                                self.local_metadata(topic, partition)
                            }
                        })
                        .collect();
                    wire::TopicMetadataT {
                        name: Some(name),
                        error_code: ErrorCode::None,
                        partitions: Some(partitions),
                    }
                }
            })
            .collect();
        ResponseBodyT::MetadataResponse(Box::new(wire::MetadataResponseT {
            brokers: Some(brokers),
            controller_id: self.controller_id(),
            topics: Some(topics),
        }))
    }

    /// The controller Metadata names: a single broker itself (0); in a cluster the metadata
    /// log's leader as shard 0 last published it, -1 while there is none.
    fn controller_id(&self) -> i32 {
        if self.config.replica_views.is_none() {
            return 0;
        }
        self.internal_leader(super::metadata_log::METADATA_DIR).map_or(-1, |id| id as i32)
    }

    /// A single broker's partition: this broker leads it, on its shard.
    fn local_metadata(&self, topic: &catalog::Topic, partition: u32) -> wire::PartitionMetadataT {
        let shard = topic.shards[partition as usize];
        let address = self.config.shard_address(shard as usize);
        let broker = self.config.cluster.as_ref().map_or(0, |c| c.node_id as i32);
        wire::PartitionMetadataT {
            partition: partition as i32,
            error_code: ErrorCode::None,
            leader_broker: broker,
            leader_term: 0,
            shard,
            shard_host: Some(address.ip().to_string()),
            shard_port: address.port(),
            replicas: Some(vec![broker]),
            isr: Some(vec![broker]),
            high_watermark: -1,
            replica_log_ends: None,
        }
    }

    /// A cluster's partition: its leader as this broker's replica knows it (published by the
    /// owning shard every tick), or, where this broker holds no replica, the preferred leader
    /// (a wrong guess costs the client one `NotLeader` and a refresh). The leader's shard
    /// address follows from its client address as this broker's own do.
    fn replicated_metadata(
        &self,
        name: &str,
        topic: &catalog::Topic,
        partition: u32,
        brokers: &[wire::BrokerInfoT],
    ) -> wire::PartitionMetadataT {
        let shard = topic.shards[partition as usize];
        let replicas = topic.replicas.get(partition as usize).cloned().unwrap_or_default();
        let view = self.config.replica_views.as_ref().and_then(|views| {
            views.lock().expect("replica views lock").get(&(name.to_string(), partition)).cloned()
        });
        let hosted = view.is_some();
        let view = view.unwrap_or_default();
        let leader = match (hosted, view.leader) {
            (true, leader) => leader,
            (false, _) => replicas.first().copied(),
        };
        let leader_info = leader.and_then(|id| brokers.iter().find(|b| b.broker_id == id as i32));
        let shard_address = leader_info.and_then(|b| {
            let host = b.host.as_deref()?;
            let port = b.port.checked_add(1 + shard)?;
            Some((host.to_string(), port))
        });
        let log_ends = replicas
            .iter()
            .map(|r| view.log_ends.iter().find(|(id, _)| id == r).map_or(-1, |(_, end)| *end))
            .collect();
        wire::PartitionMetadataT {
            partition: partition as i32,
            error_code: if leader.is_some() { ErrorCode::None } else { ErrorCode::NotLeader },
            leader_broker: leader.map_or(-1, |id| id as i32),
            leader_term: view.term,
            shard,
            shard_host: shard_address.as_ref().map(|(host, _)| host.clone()),
            shard_port: shard_address.map_or(0, |(_, port)| port),
            replicas: Some(replicas.iter().map(|r| *r as i32).collect()),
            isr: Some(view.isr.iter().map(|r| *r as i32).collect()),
            high_watermark: view.high_watermark,
            replica_log_ends: Some(log_ends),
        }
    }

    /// This broker, and in a cluster every other one with whether it is alive.
    fn brokers(&self, listen: std::net::SocketAddr) -> Vec<wire::BrokerInfoT> {
        let this = |broker_id| wire::BrokerInfoT {
            broker_id,
            host: Some(listen.ip().to_string()),
            port: listen.port(),
            alive: true,
        };
        let Some(membership) = &self.config.membership else { return vec![this(0)] };
        let statuses =
            membership.lock().expect("membership lock").status(std::time::Instant::now());
        statuses
            .into_iter()
            .map(|status| {
                let address = status.address.parse::<std::net::SocketAddr>().ok();
                wire::BrokerInfoT {
                    broker_id: status.id as i32,
                    host: Some(address.map_or(status.address.clone(), |a| a.ip().to_string())),
                    port: address.map_or(0, |a| a.port()),
                    alive: status.alive,
                }
            })
            .collect()
    }

    pub(super) fn describe_configs(&self, topics: Vec<String>) -> ResponseBodyT {
        let catalog = self.catalog.borrow();
        let topics = topics
            .into_iter()
            .map(|name| match catalog.topics.get(&name) {
                None => wire::TopicConfigsT {
                    name: Some(name.clone()),
                    error_code: ErrorCode::UnknownTopicOrPartition,
                    error_message: Some(format!("topic {name:?} does not exist")),
                    configs: None,
                },
                Some(topic) => {
                    let factor = topic.replicas.first().map_or(1, Vec::len);
                    let mut configs: Vec<wire::DescribedConfigT> = vec![
                        wire::DescribedConfigT {
                            name: Some("partitions".into()),
                            value: Some(topic.partition_count().to_string()),
                            is_default: false,
                        },
                        wire::DescribedConfigT {
                            name: Some("replication.factor".into()),
                            value: Some(factor.to_string()),
                            is_default: !topic.is_replicated(),
                        },
                    ];
                    configs.extend(
                        catalog::describe(&self.config.log_defaults, topic).into_iter().map(
                            |(name, value, is_default)| wire::DescribedConfigT {
                                name: Some(name),
                                value: Some(value),
                                is_default,
                            },
                        ),
                    );
                    wire::TopicConfigsT {
                        name: Some(name),
                        error_code: ErrorCode::None,
                        error_message: None,
                        configs: Some(configs),
                    }
                }
            })
            .collect();
        ResponseBodyT::DescribeConfigsResponse(Box::new(wire::DescribeConfigsResponseT {
            topics: Some(topics),
        }))
    }

    pub(super) async fn list_offsets(&self, request: wire::ListOffsetsRequestT) -> ResponseBodyT {
        let mut topics = Vec::new();
        for topic in request.topics.into_iter().flatten() {
            let name = topic.name.unwrap_or_default();
            let mut partitions = Vec::new();
            for partition in topic.partitions.into_iter().flatten() {
                let result =
                    self.list_offset(&name, partition.partition as u32, partition.timestamp).await;
                partitions.push(match result {
                    Ok(offset) => wire::ListOffsetsPartitionResponseT {
                        partition: partition.partition,
                        error_code: ErrorCode::None,
                        error_message: None,
                        offset,
                    },
                    Err(failure) => wire::ListOffsetsPartitionResponseT {
                        partition: partition.partition,
                        error_code: failure.code,
                        error_message: Some(failure.message),
                        offset: -1,
                    },
                });
            }
            topics.push(wire::ListOffsetsTopicResponseT {
                name: Some(name),
                partitions: Some(partitions),
            });
        }
        ResponseBodyT::ListOffsetsResponse(Box::new(wire::ListOffsetsResponseT {
            topics: Some(topics),
        }))
    }
}
