//! Spate's fault-injection suite: the history checker and a single-broker runner.
//!
//! Layout:
//! - [`history`]: the events a run records (sends with their outcome, reads, consumer starts,
//!   commits, faults) as JSON lines, and the final read of every partition.
//! - [`checker`]: what they say about safety (lost, inconsistent, duplicated, reordered writes;
//!   consumers going backwards or skipping; commits regressing) and availability.
//!
//! - [`runner`]: a real broker under kill -9 and SIGSTOP faults with producers and a consumer,
//!   recording the history (`spate-chaos`). One broker for now; network faults need the cluster.
//!
//! `spate-chaos-check HISTORY FINAL [--idempotent] [--json OUT]` runs the checker on files and
//! exits non-zero on any safety violation.

pub mod checker;
pub mod history;
pub mod runner;
