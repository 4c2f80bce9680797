//! `spate-loadgen`: the bundled load generator.
//!
//! Not built yet: this crate is a placeholder in the workspace until the load-generator issue
//! lands. It exports nothing, so nothing can mistake it for working code.
