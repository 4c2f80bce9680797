//! The driver's errors, as the broker will see them.

use spate_replication::NodeId;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicationError {
    /// This replica does not lead; `leader` is the one it follows, if it knows one. Nothing
    /// was written: retry there.
    #[error("not the leader (leader is {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The leader is handing over leadership and takes no proposals meanwhile. Nothing was
    /// written: retry shortly (on the new leader).
    #[error("leadership transfer in progress")]
    Transferring,
    /// Leadership was lost after the batch was written locally and before it was known to be
    /// committed: it may or may not be committed (a retry may duplicate it, as with Kafka's
    /// NOT_LEADER after a send). `leader` is the new leader, if known.
    #[error("leadership lost before the batch was known to be committed (leader now {leader:?})")]
    LeadershipLost { leader: Option<NodeId> },
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The leader refused an idempotent producer's batch (nothing was proposed): a gap in its
    /// sequence, a fenced epoch, or a producer the partition does not know.
    #[error("{message}")]
    Producer { refusal: ProducerRefusal, message: String },
    /// The partition failed a log or state write and stopped (fail-stop, like the log itself);
    /// it comes back when reopened.
    #[error("partition offline: {0}")]
    Offline(String),
    #[error("partition or node stopped")]
    Stopped,
    #[error("leadership transfer did not complete")]
    TransferTimedOut,
    #[error("storage: {0}")]
    Storage(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Why a leader refused an idempotent producer's batch (see `spate_storage::LogError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerRefusal {
    OutOfOrderSequence,
    Fenced,
    UnknownProducer,
}

impl ReplicationError {
    /// A producer check's error: its refusal kept apart from a log failure.
    pub fn from_producer_check(error: spate_storage::LogError) -> ReplicationError {
        use spate_storage::LogError;
        let refusal = match &error {
            LogError::OutOfOrderSequence { .. } => ProducerRefusal::OutOfOrderSequence,
            LogError::ProducerFenced { .. } => ProducerRefusal::Fenced,
            LogError::UnknownProducer { .. } => ProducerRefusal::UnknownProducer,
            LogError::Closed => return ReplicationError::Stopped,
            _ => return ReplicationError::Storage(error.to_string()),
        };
        ReplicationError::Producer { refusal, message: error.to_string() }
    }
}

impl From<spate_storage::LogError> for ReplicationError {
    fn from(e: spate_storage::LogError) -> Self {
        ReplicationError::Storage(e.to_string())
    }
}

impl From<spate_storage::replica_state::ReplicaStateError> for ReplicationError {
    fn from(e: spate_storage::replica_state::ReplicaStateError) -> Self {
        ReplicationError::Storage(e.to_string())
    }
}

impl From<spate_transport::TransportError> for ReplicationError {
    fn from(e: spate_transport::TransportError) -> Self {
        ReplicationError::Transport(e.to_string())
    }
}
