//! The client's typed errors. `Clone`, so one failure can complete every waiting delivery.

use spate_protocol::codec::{self, ProtocolError};
use spate_protocol::wire::ErrorCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The broker answered with an error code.
    #[error("{}: {message}", code.variant_name().unwrap_or("unknown error code"))]
    Broker { code: ErrorCode, message: String },
    #[error("cannot reach {address}: {message}")]
    Connect { address: String, message: String },
    #[error("connection to {address} lost: {message}")]
    ConnectionLost { address: String, message: String },
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("request timed out after {0} ms")]
    Timeout(u64),
    /// A record was not acknowledged within the producer's delivery timeout.
    #[error("not acknowledged within the delivery timeout of {ms} ms{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    DeliveryTimeout { ms: u64, last_error: Option<Box<ClientError>> },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("partition {partition} of topic {topic:?} does not exist")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("record too large: {0} bytes")]
    RecordTooLarge(usize),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the producer or consumer is closed")]
    Closed,
    #[error("unexpected response: {0}")]
    UnexpectedResponse(String),
}

impl ClientError {
    pub fn broker(code: ErrorCode, message: Option<&str>) -> ClientError {
        ClientError::Broker { code, message: message.unwrap_or_default().to_string() }
    }

    /// Whether retrying (after a backoff, and a metadata refresh where needed) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Broker { code, .. } => codec::is_retriable(*code),
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout(_) => true,
            ClientError::UnknownTopic(_) | ClientError::UnknownPartition { .. } => true,
            _ => false,
        }
    }

    /// The broker could not be reached or did not answer (refused, lost, timed out): it may be
    /// down or paused, so what the client knows of where things live may be stale.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::Timeout(_)
        )
    }

    /// The broker error code, if the broker sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
