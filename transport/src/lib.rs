//! Spate's broker-to-broker transport.
pub mod certs;
pub mod endpoint;
pub mod frame;
pub mod limits;
pub mod tls;

pub use certs::{BrokerCredentials, BrokerId};
pub use endpoint::{Endpoint, Peer, Stream, TransportError};
