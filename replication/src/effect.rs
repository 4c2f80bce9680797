//! What the core asks its driver to do. Effects come out in order and the driver must carry them
//! out in that order; in particular a `PersistHardState` or `PersistTermStart` must be on stable
//! storage before any later `Send`/`SendAppend` of the same batch of effects leaves the node, and
//! a `Truncate`/`ResetLog` must happen before a later `AppendToLog`.

use crate::message::Message;
use crate::types::{BatchMeta, HardState, Membership, NodeId, Offset, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect<P> {
    /// Write `{term, voted_for}` durably (fsync, whatever the topic's flush policy) before
    /// sending anything that follows: a vote forgotten in a crash could be given twice.
    PersistHardState(HardState),
    /// Add `(term, start_offset)` to the persisted term history before writing the batch that
    /// starts the term. Durable like the hard state; the driver drops entries that start at or
    /// past the recovered log end when it restarts.
    PersistTermStart {
        term: Term,
        start_offset: Offset,
    },
    /// Send a control message to one replica.
    Send {
        to: NodeId,
        msg: Message<P>,
    },
    /// Read whole batches from the local log starting at `prev_end` (at most up to the current
    /// log end; the driver may stop earlier, e.g. at a byte budget) and send them as
    /// `Message::Append` (`AppendRequest::message`). The core never sees the bytes. A `probe`
    /// carries no batches at all (a resend: the answer says where the follower is).
    SendAppend(AppendRequest),
    /// Remove every record at or after `to_offset` (and term-history entries starting there).
    Truncate {
        to_offset: Offset,
    },
    /// Delete the whole log and restart it empty at `log_start`; persist the term history as the
    /// single entry `(term_before_start, log_start - 1)` and `membership` as the replica set in
    /// force before the log start. Used when the leader no longer has the records this replica
    /// needs (retention) and its log does not match.
    ResetLog {
        log_start: Offset,
        term_before_start: Term,
        membership: Membership,
    },
    /// Write the batches of an inbound `Append` whose base offset is `>= first_offset` (earlier
    /// ones are already in the log). Then report `Event::LogAppended` / `Event::LogDurable`.
    AppendToLog {
        first_offset: Offset,
        batches: Vec<BatchMeta>,
        payload: P,
    },
    /// Leader only: write a one-record control batch at `offset` in `term` (leader-epoch start;
    /// lets the leader commit records of earlier terms, Raft §5.4.2).
    AppendLeaderMarker {
        offset: Offset,
        term: Term,
    },
    /// Leader only: write a one-record control batch at `offset` carrying the new replica set.
    AppendMembership {
        offset: Offset,
        term: Term,
        membership: Membership,
    },
    /// The commit point (high watermark) moved. Persist it lazily if you like; consumers may
    /// now read below it.
    CommitAdvanced {
        commit: Offset,
    },
    /// This replica became leader / stopped being leader (for routing produce requests).
    BecameLeader {
        term: Term,
    },
    SteppedDown {
        term: Term,
        leader: Option<NodeId>,
    },
}

/// What `Effect::SendAppend` asks the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub to: NodeId,
    pub term: Term,
    pub prev_end: Offset,
    pub prev_term: Term,
    pub commit: Offset,
    pub from_log_start: Option<Membership>,
    pub seq: u64,
    pub probe: bool,
}

impl AppendRequest {
    /// The `Append` carrying `batches` (none for a probe) and their `payload`.
    pub fn message<P>(&self, batches: Vec<BatchMeta>, payload: P) -> Message<P> {
        Message::Append {
            term: self.term,
            prev_end: self.prev_end,
            prev_term: self.prev_term,
            commit: self.commit,
            from_log_start: self.from_log_start.clone(),
            seq: self.seq,
            batches,
            payload,
        }
    }
}
