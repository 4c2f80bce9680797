//! Spate's replication core: one log-native, push-based Raft group per partition, written as a
//! sans-IO state machine, and the deterministic simulator that tests it.
//!
//! The partition log *is* the replicated log: positions are record offsets, the term is the
//! batch header's `leader_term`, and the record bytes never pass through the core. See
//! `PROTOCOL.md` next to this crate for the protocol, its invariants and what is persisted when.
//!
//! Layout of this crate:
//! - [`replica`]: the core ([`Replica`]): events in, effects out.
//! - [`message`], [`effect`], [`types`]: what goes in and out.
//! - [`history`]: the term → start-offset history (Kafka's leader-epoch cache).
//! - [`outbox`]: groups outbound messages of many groups by destination node.
//! - [`sim`]: the deterministic simulator (network, disks, crashes, workload, checkers); the
//!   `spate-sim` binary runs it over ranges of seeds.
//! - [`testkit`]: a minimal in-memory driver for unit tests and benches.
//! - [`limits`].

pub mod effect;
pub mod history;
pub mod limits;
pub mod message;
pub mod outbox;
pub mod replica;
pub mod sim;
pub mod testkit;
pub mod types;

pub use effect::Effect;
pub use history::{TermHistory, TermStart};
pub use message::{AppendOutcome, Dropped, Message};
pub use outbox::Outbox;
pub use replica::{Config, Event, Progress, ProposeError, Replica, Restored, Role};
pub use types::{
    BatchMeta, FlushPolicy, GroupId, HardState, Membership, MembershipChange, MembershipError,
    NodeId, Offset, Plant, Term,
};
