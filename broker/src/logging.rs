//! Log output that never takes the broker down.
//!
//! `tracing-subscriber` reports a failed write with `eprintln!`, which panics when stderr itself
//! cannot be written, so a log file on a full disk (often the data disk) used to kill the shard
//! that logged — and with it every partition it owns. Here a log line that cannot be written is
//! dropped and counted instead; the broker keeps serving.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// Log lines dropped because stderr could not take them (a full disk, a closed pipe).
pub static LOG_LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Stderr that reports every write as done; failed ones are counted in [`LOG_LINES_DROPPED`].
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().lock().write_all(bytes).is_err() {
            LOG_LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `level`; colour only on a terminal.
pub fn init(level: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| LossyStderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_stderr_is_counted_not_fatal() {
        // SAFETY: fd 2 is replaced by /dev/full for the duration of this test and restored;
        // nothing else in this test binary writes to stderr meanwhile (single test).
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let saved = unsafe { libc::dup(2) };
        assert!(saved >= 0);
        unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&full), 2) };
        let before = LOG_LINES_DROPPED.load(Ordering::Relaxed);
        let written = LossyStderr.write(b"a log line\n");
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
        assert_eq!(written.unwrap(), 11);
        assert_eq!(LOG_LINES_DROPPED.load(Ordering::Relaxed), before + 1);
    }
}
