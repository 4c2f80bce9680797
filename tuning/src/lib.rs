//! `spate tune`: machine checks and per-core layout planning.
//!
//! Not built yet: this crate is a placeholder in the workspace until the tuning issue lands.
//! It exports nothing, so nothing can mistake it for working code.
