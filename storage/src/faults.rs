//! Hooks under a log's durability points, for tests that model what a device does when it
//! fails or loses power. A log without hooks ([`LogOptions::faults`](crate::LogOptions) `None`)
//! pays one branch per fdatasync.
//!
//! What the hooks see: every `fdatasync` of a segment file (on append rounds, on roll, on
//! truncation, in recovery), before and after it. A power-loss model snapshots each file's
//! content after its fdatasync and, when the power is "cut", puts every file back to its last
//! snapshot: exactly the bytes a real device may lose are lost. A test that checks acknowledged
//! data against such a cut fails if any fdatasync that acknowledgements rely on is skipped.

use std::path::Path;

pub trait StorageFaults {
    /// Called before an fdatasync of `path`; an error fails the fdatasync as the device would.
    fn before_sync(&self, _path: &Path) -> std::io::Result<()> {
        Ok(())
    }

    /// Called after an fdatasync of `path` succeeded: its content up to now is durable.
    fn after_sync(&self, _path: &Path) {}

    /// Called before a write round writes to `path`; an error fails the write as the device
    /// would (nothing of it reaches the file).
    fn before_write(&self, _path: &Path) -> std::io::Result<()> {
        Ok(())
    }
}
