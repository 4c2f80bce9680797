//! Spate's broker-to-broker transport.
pub mod certs;
pub mod limits;
pub mod tls;
