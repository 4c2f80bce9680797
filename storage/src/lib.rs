//! Spate's partition log.
