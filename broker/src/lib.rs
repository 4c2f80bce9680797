//! The Spate broker: thread-per-core server and the `spate` command line.
//!
//! Not built yet: this crate is a placeholder in the workspace until the broker issue lands.
//! It exports nothing, so nothing can mistake it for working code.
