//! Spate's Rust client, on Glommio: a [`Producer`], a [`Consumer`], and the [`Client`] they
//! share (connections, metadata cache, one typed call per API).
//!
//! Layout:
//! - [`partitioner`], [`accumulator`], [`consumer::Positions`]: the sans-IO cores (partition
//!   choice, batching and in-flight/retry bookkeeping, consumer positions), tested without
//!   sockets.
//! - [`connection`]: one TCP connection, requests matched to responses by correlation id.
//! - [`client`]: routing to each partition's owning shard, metadata refresh, the APIs.
//! - [`producer`], [`consumer`]: the drivers.
//!
//! Every type here is `!Send`: create and use it inside a Glommio executor.
//!
//! Producing, and consuming as a member of a consumer group:
//!
//! ```no_run
//! use spate_client::{Client, ClientConfig, GroupConfig, GroupConsumer, Producer, ProducerRecord};
//!
//! glommio::LocalExecutor::default().run(async {
//!     let config = ClientConfig { bootstrap: "127.0.0.1:9292".into(), ..Default::default() };
//!     let client = Client::connect(config).await?;
//!
//!     let producer = Producer::new(client.clone(), Default::default())?;
//!     // Same key, same partition; `send` returns once buffered, the delivery once acknowledged.
//!     let delivery = producer.send(ProducerRecord::new("orders", "42 EUR").with_key("alice")).await?;
//!     let report = delivery.await?;
//!     println!("stored at partition {} offset {}", report.partition, report.offset);
//!
//!     let mut group = GroupConfig::new("billing", vec!["orders".into()]);
//!     group.assignor = "cooperative-sticky".into();
//!     let mut member = GroupConsumer::subscribe(client, group).await?;
//!     member.on_revoked(|lost| println!("revoked {lost:?}"));
//!     for _ in 0..100 {
//!         for record in member.poll().await? {
//!             println!("{}/{}@{}", record.topic, record.partition, record.offset);
//!         }
//!     }
//!     member.close().await // commits what poll returned and leaves the group
//! })?;
//! # Ok::<(), spate_client::ClientError>(())
//! ```

pub mod accumulator;
pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod limits;
pub mod partitioner;
pub mod producer;

pub use accumulator::{ProducerIdentity, TopicPartition};
pub use client::{Client, ClientConfig, PartitionBatch, EARLIEST, LATEST};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset, Seek};
pub use error::{ClientError, Result};
pub use group::{GroupConfig, GroupConsumer};
pub use partitioner::{key_partition, DefaultPartitioner, Partitioner};
pub use producer::{Delivery, DeliveryReport, Producer, ProducerConfig, ProducerRecord};
pub use spate_protocol::wire::Acks;
