//! The history a fault-injection run records, one JSON object per line, and the final read of
//! every partition that the checker compares it with.
//!
//! ```text
//! {"op":"send","producer":"p1","seq":42,"partition":0,"value":"p1-42","invoke_ms":100,"complete_ms":103,"outcome":"ack","offset":17}
//! {"op":"read","consumer":"c1","partition":0,"offset":17,"value":"p1-42","t_ms":140}
//! {"op":"consumer_start","consumer":"c1","partition":0,"offset":0,"t_ms":90}
//! {"op":"commit","group":"g","partition":0,"offset":18,"t_ms":150}
//! {"op":"fault","kind":"kill","target":"broker-2","start_ms":120,"end_ms":900}
//! ```
//!
//! A send's `outcome` is `ack` (acknowledged, with its `offset` and the `attempts` its batch
//! took), `fail` (definitely not
//! written: the broker said so) or `unknown` (timed out or the connection died: it may or may
//! not be in the log). Values are unique per send (producer and sequence), which is what lets
//! the checker tell a lost write from a duplicate. The final read (`{"partition":0,
//! "offset":17,"value":"p1-42"}` per record) is every partition read from its start once the
//! faults have stopped.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ack,
    Fail,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Event {
    Send {
        producer: String,
        seq: u64,
        partition: u32,
        value: String,
        invoke_ms: u64,
        complete_ms: u64,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<i64>,
        /// Sends of the record's batch the client made (0 = not known). An acknowledged send
        /// that took one attempt was never in doubt: a duplicate of it is the broker's fault.
        #[serde(default)]
        attempts: u32,
        /// Why a send failed or is unknown, as the client said it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Read {
        consumer: String,
        partition: u32,
        offset: i64,
        value: String,
        t_ms: u64,
    },
    /// A consumer (re)starts reading a partition at `offset` (a start, a restart, a seek).
    ConsumerStart {
        consumer: String,
        partition: u32,
        offset: i64,
        t_ms: u64,
    },
    /// An acknowledged offset commit.
    Commit {
        group: String,
        partition: u32,
        offset: i64,
        t_ms: u64,
    },
    Fault {
        kind: String,
        target: String,
        start_ms: u64,
        end_ms: u64,
    },
}

/// One record of the final read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub partition: u32,
    pub offset: i64,
    pub value: String,
}

/// Parses JSON lines; blank lines are skipped. The error names the line.
/// One fault from a history: when it started and ended, its kind and what it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultWindow<'a> {
    pub start_ms: u64,
    pub end_ms: u64,
    pub kind: &'a str,
    pub target: &'a str,
}

/// Every fault of a history, in order.
pub fn fault_windows(events: &[Event]) -> impl Iterator<Item = FaultWindow<'_>> {
    events.iter().filter_map(|e| match e {
        Event::Fault { kind, target, start_ms, end_ms } => {
            Some(FaultWindow { start_ms: *start_ms, end_ms: *end_ms, kind, target })
        }
        _ => None,
    })
}

pub fn parse_lines<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// One JSON line.
pub fn to_line<T: Serialize>(item: &T) -> String {
    serde_json::to_string(item).expect("serializable")
}
