//! Spate's replication core: one log-native, push-based Raft group per partition, written as a
//! sans-IO state machine, and the deterministic simulator that tests it.
//!
//! The partition log *is* the replicated log: positions are record offsets, the term is the
//! batch header's `leader_term`, and the record bytes never pass through the core. See
//! `PROTOCOL.md` next to this crate for the protocol, its invariants and what is persisted when.
//!
//! Built for thousands of groups per broker: one timer ticks every local replica, messages of
//! all groups are coalesced per destination node ([`Outbox`]), and idle groups quiesce (no
//! heartbeats, frozen timers) while the driver's node-level failure detector vouches for the
//! leader's node (`Event::PeerDown` when it stops doing so).
//!
//! Layout of this crate:
//! - [`replica`]: the core ([`Replica`]): events in, effects out.
//! - [`message`], [`effect`], [`types`]: what goes in and out.
//! - [`history`]: the term → start-offset history (Kafka's leader-epoch cache).
//! - [`outbox`]: groups outbound messages of many groups by destination node.
//! - [`codec`]: the wire format of an outbox envelope (all messages for one node, payloads
//!   zero-copy), and its limits.
//! - [`sim`]: the deterministic simulator (network, disks, crashes, workload, checkers); the
//!   `spate-sim` binary runs it over ranges of seeds.
//! - [`testkit`]: a minimal in-memory driver for unit tests and benches.
//! - [`limits`].
//!
//! A driver, in outline (the in-memory one in [`testkit`] is a complete example):
//!
//! ```
//! use spate_replication::{Config, Effect, Event, GroupId, Replica, Restored};
//!
//! // One replica of partition 7 on node 1, in a group of nodes 1, 2, 3.
//! let restored = Restored::bootstrap(&[1, 2, 3]);
//! let mut replica: Replica<Vec<u8>> = Replica::new(Config::new(1, GroupId(7), 42), restored);
//! let mut out = Vec::new();
//! for _ in 0..100 {
//!     replica.step(Event::Tick, &mut out).unwrap();
//! }
//! // Alone, it times out and asks the others for pre-votes, changing no persisted state yet.
//! assert!(out.iter().any(|e| matches!(e, Effect::Send { to: 2, .. })));
//! assert!(!out.iter().any(|e| matches!(e, Effect::PersistHardState(_))));
//! for effect in out.drain(..) {
//!     match effect {
//!         Effect::PersistHardState(_) | Effect::PersistTermStart { .. } => { /* fsync first */ }
//!         Effect::Send { .. } | Effect::SendAppend(_) => { /* to the Outbox */ }
//!         _ => { /* log commands, in order */ }
//!     }
//! }
//! ```

pub mod codec;
pub mod effect;
pub mod history;
pub mod limits;
pub mod message;
pub mod outbox;
pub mod replica;
pub mod sim;
pub mod testkit;
pub mod types;

pub use effect::{AppendRequest, Effect};
pub use history::{TermHistory, TermStart};
pub use message::{AppendOutcome, Dropped, Message};
pub use outbox::Outbox;
pub use replica::{Config, Event, Progress, ProposeError, Replica, Restored, Role};
pub use types::{
    BatchMeta, FlushPolicy, GroupId, HardState, Membership, MembershipChange, MembershipError,
    NodeId, Offset, Plant, Term,
};
