//! `spate tune apply`: performs the fixes that are plain sysfs/procfs writes (never reboots,
//! never edits config files), or writes them to a script for review.

use std::path::Path;

use crate::check::Row;

/// The fixes `apply` would perform, as a shell script.
pub fn script(rows: &[Row]) -> String {
    let mut out = String::from("#!/bin/sh\n# Written by `spate tune apply --output-script`. Review, then run as root.\nset -e\n");
    for row in rows {
        if let Some(fix) = &row.write {
            out.push_str(&format!(
                "# {}: {} -> {}\necho {} > {}\n",
                row.check, row.current, row.recommended, fix.value, fix.path
            ));
        }
    }
    out
}

/// Performs each write under `root`; returns one line per fix saying what happened.
pub fn apply(rows: &[Row], root: &Path, dry_run: bool) -> Vec<String> {
    rows.iter()
        .filter_map(|row| row.write.as_ref().map(|fix| (row, fix)))
        .map(|(row, fix)| {
            let target = root.join(fix.path.trim_start_matches('/'));
            if dry_run {
                return format!("would write {} to {} ({})", fix.value, fix.path, row.check);
            }
            match std::fs::write(&target, format!("{}\n", fix.value)) {
                Ok(()) => format!("wrote {} to {} ({})", fix.value, fix.path, row.check),
                Err(error) => format!(
                    "could not write {} to {}: {error} ({})",
                    fix.value, fix.path, row.check
                ),
            }
        })
        .collect()
}
