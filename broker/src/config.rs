//! Broker configuration: a TOML file (`--config`) whose every setting is also a flag; flags win.
//!
//! ```toml
//! data_dir = "./spate-data"
//! listen = "127.0.0.1:9292"      # shard i also listens on port + 1 + i
//! cores = 2                      # or cpuset = "0-3"
//! metrics_listen = "127.0.0.1:9393"
//! layout = "layout.toml"         # partition-to-shard overrides (spate tune layout writes these)
//! log_level = "info"
//! request_memory_bytes = 268435456   # request frames one shard holds at once (backpressure)
//! journal_dir = "/dev/shm/spate-x"   # flush=never journal on a tmpfs; "none" to go without
//! node_id = 1                    # cluster membership (all six, or none):
//! replication_listen = "127.0.0.1:9500"
//! peers = "1@127.0.0.1:9500,2@127.0.0.1:9501,3@127.0.0.1:9502"
//! tls_ca = "certs/ca.pem"
//! tls_cert = "certs/broker-1.pem"
//! tls_key = "certs/broker-1.key"
//! [defaults]                     # topic settings used when a topic does not override them
//! flush = "never"                # always | never | interval:MS
//! retention_ms = 604800000
//! segment_bytes = 1073741824
//! ```
//!
//! Layout file (`--layout`):
//!
//! ```toml
//! [topics.orders]
//! shards = [0, 1, 0, 1]          # owning shard of each partition, used when the topic is created
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spate_storage::{FlushPolicy, LogConfig};

use crate::limits;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub cores: Option<usize>,
    pub cpuset: Option<String>,
    pub metrics_listen: Option<String>,
    pub layout: Option<PathBuf>,
    pub log_level: Option<String>,
    pub request_memory_bytes: Option<usize>,
    pub frame_read_timeout_ms: Option<u64>,
    pub journal_dir: Option<String>,
    pub node_id: Option<u32>,
    pub replication_listen: Option<String>,
    pub peers: Option<String>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub defaults: DefaultsConfig,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsConfig {
    pub flush: Option<String>,
    pub retention_ms: Option<i64>,
    pub retention_bytes: Option<i64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct Layout {
    /// CPUs to run shards on, shard i on the i-th (used when no --cpuset is given).
    #[serde(default)]
    pub cpuset: Option<String>,
    #[serde(default)]
    pub topics: BTreeMap<String, LayoutTopic>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct LayoutTopic {
    pub shards: Vec<u16>,
}

/// The journal directory: `--journal-dir DIR`, `none` to go without, or by default a directory
/// under `/dev/shm` named after the data directory (a stable CRC of its absolute path, so a
/// restarted broker, or a newer binary, finds its predecessor's journal), if `/dev/shm` exists.
pub fn journal_dir(flag: Option<&str>, data_dir: &Path) -> Option<PathBuf> {
    match flag {
        Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            let shm = Path::new("/dev/shm");
            shm.is_dir().then(|| {
                let id = crc32fast::hash(data_dir.as_os_str().as_encoded_bytes());
                shm.join(format!("spate-{id:08x}"))
            })
        }
    }
}

/// Checks `--request-memory-bytes` against its limits.
pub fn request_memory_bytes(bytes: Option<usize>) -> Result<usize, String> {
    let bytes = bytes.unwrap_or(limits::REQUEST_MEMORY_PER_SHARD_BYTES_MAX);
    let range =
        limits::REQUEST_MEMORY_PER_SHARD_BYTES_MIN..=limits::REQUEST_MEMORY_PER_SHARD_BYTES_MAX;
    if range.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "request_memory_bytes {bytes}: must be between {} and {}",
            range.start(),
            range.end()
        ))
    }
}

/// The cluster settings from flags and file: all of them, or none (a single broker).
pub fn cluster(
    node_id: Option<u32>,
    replication_listen: Option<&str>,
    peers: Option<&str>,
    tls: [Option<PathBuf>; 3],
) -> Result<Option<crate::cluster::ClusterConfig>, String> {
    let [tls_ca, tls_cert, tls_key] = tls;
    let given = [
        node_id.is_some(),
        replication_listen.is_some(),
        peers.is_some(),
        tls_ca.is_some(),
        tls_cert.is_some(),
        tls_key.is_some(),
    ];
    if given.iter().all(|g| !g) {
        return Ok(None);
    }
    let (
        Some(node_id),
        Some(replication_listen),
        Some(peers),
        Some(tls_ca),
        Some(tls_cert),
        Some(tls_key),
    ) = (node_id, replication_listen, peers, tls_ca, tls_cert, tls_key)
    else {
        return Err("a cluster broker needs all of --node-id, --replication-listen, --peers, \
                    --tls-ca, --tls-cert and --tls-key"
            .into());
    };
    let replication_listen = std::net::ToSocketAddrs::to_socket_addrs(replication_listen)
        .map_err(|e| format!("bad --replication-listen {replication_listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("bad --replication-listen {replication_listen:?}"))?;
    let config = crate::cluster::ClusterConfig {
        node_id,
        replication_listen,
        peers: crate::cluster::parse_peers(peers)?,
        tls_ca,
        tls_cert,
        tls_key,
    };
    config.validate()?;
    Ok(Some(config))
}

/// The resolved configuration a broker runs with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// CPUs the shards are pinned to; shard i runs on `cpus[i]`.
    pub cpus: Vec<usize>,
    pub metrics_listen: Option<SocketAddr>,
    pub layout: Layout,
    pub log_defaults: LogConfig,
    /// Bytes of request frames one shard holds at once (see
    /// `limits::REQUEST_MEMORY_PER_SHARD_BYTES_MAX`, the default and the largest allowed).
    pub request_memory_bytes: usize,
    /// A peer that started a frame must finish it within this long (see
    /// `limits::FRAME_READ_TIMEOUT_MS`, the default).
    pub frame_read_timeout: std::time::Duration,
    /// Where `flush=never` partitions journal their unwritten batches (a directory on a tmpfs);
    /// `None`: they are acknowledged after their device write.
    pub journal_dir: Option<PathBuf>,
    /// Set when the broker is one of a cluster (`--node-id` and the other cluster flags).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// The cluster's membership view, shared by every shard; made by `server::run`.
    pub membership: Option<crate::cluster::SharedMembership>,
    /// In a cluster: what every shard's replicas know, for Metadata; made by `server::run`.
    pub replica_views: Option<crate::shard::ReplicaViews>,
}

impl BrokerConfig {
    /// The address shard `shard` listens on by itself: the client port + 1 + shard.
    pub fn shard_address(&self, shard: usize) -> SocketAddr {
        let mut address = self.listen;
        address.set_port(self.listen.port().wrapping_add(1 + shard as u16));
        address
    }

    pub fn shard_count(&self) -> usize {
        self.cpus.len()
    }
}

pub fn load_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn load_layout(path: &Path) -> Result<Layout, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read layout {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("layout {}: {e}", path.display()))
}

/// Parses a cpuset like `0-3,6,8-9`.
pub fn parse_cpuset(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad cpuset {text:?}: expected e.g. 0-3,6");
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high): (usize, usize) =
                    (low.parse().map_err(|_| bad())?, high.parse().map_err(|_| bad())?);
                if low > high || high - low > limits::SHARDS_MAX {
                    return Err(bad());
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() || cpus.len() > limits::SHARDS_MAX {
        return Err(format!("cpuset {text:?} must name 1 to {} CPUs", limits::SHARDS_MAX));
    }
    Ok(cpus)
}

/// CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    let count = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !ok {
        return (0..count).collect();
    }
    (0..libc::CPU_SETSIZE as usize).filter(|cpu| unsafe { libc::CPU_ISSET(*cpu, &set) }).collect()
}

/// Applies `[defaults]` from the file to the storage defaults.
pub fn log_defaults(defaults: &DefaultsConfig) -> Result<LogConfig, String> {
    let mut config = LogConfig::default();
    let optional = |v: Option<i64>, current: Option<u64>| match v {
        Some(-1) => None,
        Some(v) if v >= 0 => Some(v as u64),
        _ => current,
    };
    if let Some(flush) = &defaults.flush {
        config.flush = flush.parse::<FlushPolicy>()?;
    }
    config.retention_ms = optional(defaults.retention_ms, config.retention_ms);
    config.retention_bytes = optional(defaults.retention_bytes, config.retention_bytes);
    config.segment_ms = optional(defaults.segment_ms, config.segment_ms);
    if let Some(bytes) = defaults.segment_bytes {
        config.segment_bytes = bytes;
    }
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets_parse() {
        assert_eq!(parse_cpuset("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_cpuset("1").unwrap(), vec![1]);
        assert!(parse_cpuset("3-1").is_err());
        assert!(parse_cpuset("x").is_err());
        assert!(parse_cpuset("").is_err());
    }

    #[test]
    fn files_parse_and_unknown_keys_are_refused() {
        let config: FileConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\n[defaults]\nflush = \"always\"\n").unwrap();
        assert_eq!(log_defaults(&config.defaults).unwrap().flush, FlushPolicy::Always);
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        let layout: Layout = toml::from_str("[topics.orders]\nshards = [0, 1]\n").unwrap();
        assert_eq!(layout.topics["orders"].shards, vec![0, 1]);
    }
}
