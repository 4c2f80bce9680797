//! Spate's fault-injection suite: the history checker and the runner.
//!
//! Layout:
//! - [`history`]: the events a run records (sends with their outcome, reads, consumer starts,
//!   commits, faults) as JSON lines, and the final read of every partition.
//! - [`checker`]: what they say about safety (lost, inconsistent, duplicated, reordered writes;
//!   consumers going backwards or skipping; commits regressing) and availability.
//!
//! - [`runner`]: real brokers (one, or a cluster of 3 or 5) under process and network faults
//!   with producers and consumers, recording the history (`spate-chaos`).
//! - [`net`]: network namespaces, a bridge and nftables rules for partitions and packet loss.
//! - [`plot`]: the run as an SVG: throughput and latency over time, fault windows shaded.
//!
//! `spate-chaos-check HISTORY FINAL [--idempotent] [--json OUT]` runs the checker on files and
//! exits non-zero on any safety violation.

pub mod checker;
pub mod history;
pub mod net;
pub mod plot;
pub mod runner;
