//! Hooks under a log's durability points, for tests that model what a device does when it
//! fails or loses power. A log without hooks ([`LogOptions::faults`](crate::LogOptions) `None`)
//! pays one branch per fdatasync.
//!
//! What the hooks see: every `fdatasync` of a segment file (on append rounds, on roll, on
//! truncation, in recovery), before and after it; every write round; and each step of the
//! multi-step file operations (truncation, reset; [`Step`]), so a test can stop one at any step
//! as a crash would and check what recovery makes of the files. A power-loss model snapshots each file's
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

    /// Called before each file-changing step of `Log::truncate_to` and `Log::reset_to` (and of
    /// a reset that recovery finishes on open). An error stops the operation right there, with
    /// the files as a crash at that point would leave them; the log then goes offline, and
    /// reopening it is the recovery under test.
    fn before_step(&self, _step: Step) -> std::io::Result<()> {
        Ok(())
    }
}

/// The file-changing steps of truncation and reset, in the order they run (steps that repeat
/// per segment are called once per segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Truncation: empty the journal (it must not replay a batch past the cut).
    TruncateRestartJournal,
    /// Truncation: delete one segment wholly past the cut (newest first).
    TruncateRemoveSegment,
    /// Truncation: fsync the directory, so those deletions are durable before the cut.
    TruncateSyncDir,
    /// Truncation: cut the segment holding the cut point (file length, to the next block).
    TruncateCutFile,
    /// Truncation: rewrite the partial last block, zero past the cut.
    TruncateRewriteTail,
    /// Truncation: delete the cut segment's now stale index files.
    TruncateRemoveIndexes,
    /// Reset: write the `reset-to` intent file (atomically; the point of no return).
    ResetWriteIntent,
    /// Reset: delete one segment (newest first).
    ResetRemoveSegment,
    /// Reset: fsync the directory after the deletions.
    ResetSyncDir,
    /// Reset: write the start-offset checkpoint.
    ResetWriteStart,
    /// Reset: create the empty segment at the new start (and fsync the directory).
    ResetCreateSegment,
    /// Reset: delete the intent file (and fsync the directory): the reset is complete.
    ResetRemoveIntent,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::TruncateRestartJournal => "truncate: restart journal",
            Step::TruncateRemoveSegment => "truncate: remove segment",
            Step::TruncateSyncDir => "truncate: sync dir",
            Step::TruncateCutFile => "truncate: cut file",
            Step::TruncateRewriteTail => "truncate: rewrite tail block",
            Step::TruncateRemoveIndexes => "truncate: remove indexes",
            Step::ResetWriteIntent => "reset: write intent",
            Step::ResetRemoveSegment => "reset: remove segment",
            Step::ResetSyncDir => "reset: sync dir",
            Step::ResetWriteStart => "reset: write start offset",
            Step::ResetCreateSegment => "reset: create segment",
            Step::ResetRemoveIntent => "reset: remove intent",
        }
    }
}
