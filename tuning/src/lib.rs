//! `spate tune`: read the machine, check it, plan and verify per-core layouts.
//!
//! - [`machine`]: sysfs/procfs readers, all relative to a root path (fixtures in `fixtures/`).
//! - [`check`]: the checks, each with current and recommended values, why, and the fix.
//! - [`layout`]: the shard-core and partition-to-shard planner.
//! - [`apply`]: performs the checks' sysfs/procfs fixes, or writes them as a script.

pub mod apply;
pub mod check;
pub mod layout;
pub mod machine;
