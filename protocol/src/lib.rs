//! Spate's wire format.
//!
//! - [`batch`]: the record batch, the unit that producers send, the log stores and fetches return.
//! - [`limits`]: every maximum the format enforces.
//!
//! The flatbuffers request/response protocol lands here with its own issue.

pub mod batch;
pub mod limits;
