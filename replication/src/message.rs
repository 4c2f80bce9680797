//! Messages between replicas of one group. Every message names the sender's term; none carries
//! record bytes except `Append`, whose payload is opaque to the core (`P`).
//!
//! Messages are small and per group so a driver can pack many groups' messages for one
//! destination node into one envelope (see [`crate::outbox`]).

use crate::types::{BatchMeta, Membership, NodeId, Offset, Term};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<P> {
    /// "Would you vote for me in `term`?" Changes no state on the receiver (pre-vote, Raft
    /// thesis §9.6): a replica that was cut off asks before it bumps its term.
    PreVote {
        term: Term,
        last_term: Term,
        log_end: Offset,
    },
    PreVoteReply {
        term: Term,
        granted: bool,
    },
    /// A real vote request. `transfer` is set when the leader asked this candidate to take over
    /// (`TimeoutNow`); it is informational (voters never refuse a real vote for liveness reasons).
    Vote {
        term: Term,
        last_term: Term,
        log_end: Offset,
        transfer: bool,
    },
    VoteReply {
        term: Term,
        granted: bool,
    },
    /// Records `[prev_end, prev_end + ..)` as described by `batches` (contiguous, whole
    /// batches). `prev_term` is the term of the record at `prev_end - 1` in the leader's log.
    /// `from_log_start` is set when `prev_end` is the leader's log start: the leader has
    /// nothing older, so a follower that does not match there resets its log to start at
    /// `prev_end`, with this replica set in force (what a Raft snapshot would carry).
    /// `seq` numbers the leader's Appends to this follower; the reply echoes it, so the leader
    /// tells the answer to its latest Append from a late one.
    Append {
        term: Term,
        prev_end: Offset,
        prev_term: Term,
        commit: Offset,
        from_log_start: Option<Membership>,
        seq: u64,
        batches: Vec<BatchMeta>,
        payload: P,
    },
    AppendReply {
        term: Term,
        seq: u64,
        outcome: AppendOutcome,
    },
    /// A follower's durable end moved (after a flush). `durable_end` never exceeds the prefix
    /// the follower has verified to match this term's leader.
    DurableAck {
        term: Term,
        durable_end: Offset,
    },
    /// Liveness and commit point only: a few integers, cheap to coalesce by the thousand.
    /// `quiesce`: the group is idle and every replica holds everything; a follower that does
    /// too stops its election timer (and answers nothing) until something wakes it.
    Heartbeat {
        term: Term,
        commit: Offset,
        quiesce: bool,
    },
    /// `quiesced`: the follower went quiet on a quiesce heartbeat (the leader goes quiet once
    /// every replica has said so).
    HeartbeatReply {
        term: Term,
        durable_end: Offset,
        quiesced: bool,
    },
    /// Leadership transfer: "start an election now, skipping pre-vote".
    TimeoutNow {
        term: Term,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `match_end`; of that, `durable_end` is
    /// durable by the topic's flush policy.
    Accepted { match_end: Offset, durable_end: Offset },
    /// `prev_end`/`prev_term` did not match. Hint (KRaft's diverging epoch): the follower's
    /// largest term `<= prev_term` and where that term's records end in its log.
    Mismatch { hint_term: Term, hint_end: Offset },
}

impl<P> Message<P> {
    pub fn term(&self) -> Term {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteReply { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteReply { term, .. }
            | Message::Append { term, .. }
            | Message::AppendReply { term, .. }
            | Message::DurableAck { term, .. }
            | Message::Heartbeat { term, .. }
            | Message::HeartbeatReply { term, .. }
            | Message::TimeoutNow { term } => *term,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "PreVote",
            Message::PreVoteReply { .. } => "PreVoteReply",
            Message::Vote { .. } => "Vote",
            Message::VoteReply { .. } => "VoteReply",
            Message::Append { .. } => "Append",
            Message::AppendReply { .. } => "AppendReply",
            Message::DurableAck { .. } => "DurableAck",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatReply { .. } => "HeartbeatReply",
            Message::TimeoutNow { .. } => "TimeoutNow",
        }
    }
}

/// Why an inbound message was dropped instead of handled. Never a panic: network input is
/// untrusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("sender {0} is not a replica of this group")]
    UnknownSender(NodeId),
    #[error("message from ourselves")]
    FromSelf,
    #[error("term 0 is never sent")]
    ZeroTerm,
    #[error("term beyond TERM_MAX")]
    TermOutOfRange,
    #[error("the append would make us drop or rewrite committed records")]
    BelowCommit,
    #[error("stale term {msg} < {ours}")]
    StaleTerm { msg: Term, ours: Term },
    #[error("append batches are not contiguous from prev_end or have bad terms")]
    MalformedBatches,
    #[error("too many batches in one append")]
    TooManyBatches,
    #[error("the append starts more terms than the term history can hold")]
    TooManyTerms,
    #[error("reply or request does not fit our role")]
    UnexpectedForRole,
    #[error("offset beyond anything we sent")]
    OffsetOutOfRange,
    #[error("an answer to an Append we never sent")]
    UnexpectedReply,
    #[error("a second leader claims our term")]
    ConflictingLeader,
}
