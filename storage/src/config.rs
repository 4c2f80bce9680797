//! Per-log configuration: segment sizing, retention, flush policy.

use std::time::Duration;

use crate::limits;

/// When appended data is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append completes only after an fdatasync that covers it. Appends that arrive while a
    /// write or sync is in flight share the next one (group commit).
    Always,
    /// Written data is fdatasync'd at most this long after it was written.
    Interval(Duration),
    /// Never fdatasync on append; the OS decides (segments are still synced when sealed).
    Never,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;

    /// Parses `always`, `never`, `interval:MS` or a bare number of milliseconds.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(FlushPolicy::Always),
            "never" => Ok(FlushPolicy::Never),
            other => {
                let ms = other.strip_prefix("interval:").unwrap_or(other);
                ms.parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(|ms| FlushPolicy::Interval(Duration::from_millis(ms)))
                    .ok_or_else(|| {
                        format!("flush policy must be always, never or interval:MS; got {text:?}")
                    })
            }
        }
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::Always => write!(f, "always"),
            FlushPolicy::Never => write!(f, "never"),
            FlushPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment when the active one would grow past this.
    pub segment_bytes: u64,
    /// Roll to a new segment when the active one is older than this.
    pub segment_ms: Option<u64>,
    /// Delete the oldest sealed segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    pub flush: FlushPolicy,
    /// Bytes between sparse offset-index entries.
    pub index_interval_bytes: u32,
    /// Bytes of recent batches kept in memory to serve tail reads.
    pub cache_bytes: usize,
    /// `fallocate` each new segment to `segment_bytes`. Off by default: measured here it does
    /// not speed up appends (see README), and it makes a full disk fail at roll time.
    pub preallocate: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1024 * 1024 * 1024,
            segment_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            flush: FlushPolicy::Never,
            index_interval_bytes: 4096,
            cache_bytes: 16 * 1024 * 1024,
            preallocate: false,
        }
    }
}

impl LogConfig {
    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), String> {
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment.bytes must be between {} and {}",
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX
            ));
        }
        if !(limits::INDEX_INTERVAL_BYTES_MIN..=limits::INDEX_INTERVAL_BYTES_MAX)
            .contains(&self.index_interval_bytes)
        {
            return Err("index interval out of range".into());
        }
        if self.cache_bytes > limits::CACHE_BYTES_MAX {
            return Err(format!("cache bytes must be at most {}", limits::CACHE_BYTES_MAX));
        }
        if self.segment_ms == Some(0) {
            return Err("segment.ms must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policy_parses() {
        assert_eq!("always".parse(), Ok(FlushPolicy::Always));
        assert_eq!("never".parse(), Ok(FlushPolicy::Never));
        assert_eq!("interval:50".parse(), Ok(FlushPolicy::Interval(Duration::from_millis(50))));
        assert_eq!("250".parse(), Ok(FlushPolicy::Interval(Duration::from_millis(250))));
        assert!("interval:0".parse::<FlushPolicy>().is_err());
        assert!("sometimes".parse::<FlushPolicy>().is_err());
        for policy in [
            FlushPolicy::Always,
            FlushPolicy::Never,
            FlushPolicy::Interval(Duration::from_millis(7)),
        ] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
    }

    #[test]
    fn defaults_are_valid_and_limits_enforced() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
        let tiny = LogConfig { segment_bytes: 1, ..LogConfig::default() };
        assert!(tiny.validate().is_err());
    }
}
