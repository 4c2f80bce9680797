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

pub mod accumulator;
pub mod client;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod limits;
pub mod partitioner;
pub mod producer;

pub use accumulator::TopicPartition;
pub use client::{Client, ClientConfig, EARLIEST, LATEST};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset, Seek};
pub use error::{ClientError, Result};
pub use group::{GroupConfig, GroupConsumer};
pub use partitioner::{key_partition, DefaultPartitioner, Partitioner};
pub use producer::{Delivery, DeliveryReport, Producer, ProducerConfig, ProducerRecord};
pub use spate_protocol::wire::Acks;
