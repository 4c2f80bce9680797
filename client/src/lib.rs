//! The Spate client: producer and consumer on Glommio.
//!
//! Not built yet: this crate is a placeholder in the workspace until the protocol/client issue
//! lands. It exports nothing, so nothing can mistake it for working code.
