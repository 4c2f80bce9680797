//! Spate's wire formats.
//!
//! - [`batch`]: the record batch, the unit that producers send, the log stores and fetches return.
//! - [`control`]: control batches (leader markers, replica sets) that replication writes into a
//!   partition log and consumers skip.
//! - [`frame`]: length-prefixed frames on a byte stream (sans-IO).
//! - [`codec`]: verified decoding and encoding of requests and responses.
//! - [`wire`]: the flatbuffers types generated from `schema/spate.fbs` (regenerate with
//!   `protocol/regen.sh`; never edit by hand).
//! - [`limits`]: every maximum the protocol enforces.
//! - `fuzz` (feature `fuzz`): a seeded mutation fuzzer over every decoder, on stable Rust.

// The generated code names `alloc::` paths, which need the crate in the extern prelude.
extern crate alloc;

pub mod batch;
pub mod codec;
pub mod control;
pub mod frame;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod limits;
pub mod turnstile;

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, unused_imports, dead_code, non_camel_case_types, non_snake_case, deprecated, mismatched_lifetime_syntaxes)]
#[path = "generated/spate_generated.rs"]
mod generated;

/// The generated flatbuffers types: views (`Request<'a>`), builders and owned `...T` types.
pub use generated::spate::wire;

#[cfg(test)]
mod roundtrip_tests;
