//! The topic catalog: topics, their configs, and which shard owns each partition. Sans-IO apart
//! from `load`/`save`. Shard 0 (the controller) changes it and persists it, then sends every shard
//! a copy.
//!
//! File: `<data>/meta/catalog.toml`, written atomically (temporary file, fsync, rename, fsync of
//! the directory), so after a crash it is either the old or the new catalog, never a mix:
//!
//! ```toml
//! version = 1
//! [topics.orders]
//! shards = [0, 1, 0, 1]          # owning shard of each partition
//! [topics.orders.configs]
//! flush = "always"               # only settings that differ from the defaults
//! ```
//!
//! In a cluster a topic also has a cluster-wide `id` and each partition's `replicas` (broker ids,
//! preferred leader first); its shards are the same on every broker, so a partition's replicas
//! talk shard to shard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spate_storage::{FlushPolicy, LogConfig};

use crate::limits;

/// Settings a topic may override, and their names on the wire and in files.
pub const CONFIG_KEYS: [&str; 5] =
    ["retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "flush"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Owning shard of each partition, by partition index.
    pub shards: Vec<u16>,
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
    /// A cluster's topic: the replicas of each partition by broker id, preferred leader first.
    /// Empty on a single broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<Vec<u32>>,
    /// A cluster's topic: its id, the same on every broker (it names the replication groups).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub id: u64,
}

fn is_zero(id: &u64) -> bool {
    *id == 0
}

impl Topic {
    pub fn partition_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn is_replicated(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// The replication group of one partition: the topic id in the high bits, the partition in
    /// the low 20 (`PARTITIONS_PER_TOPIC_MAX` fits).
    pub fn group(&self, partition: u32) -> u64 {
        (self.id << PARTITION_BITS) | u64::from(partition)
    }
}

const PARTITION_BITS: u32 = 20;
const _: () = assert!(limits::PARTITIONS_PER_TOPIC_MAX < (1 << PARTITION_BITS));

/// A new topic id for a cluster's topic: random, non-zero, fits above the partition bits.
pub fn new_topic_id() -> u64 {
    loop {
        let id = rand::random::<u64>() >> PARTITION_BITS;
        if id != 0 {
            return id;
        }
    }
}

/// Spreads `partitions` partitions' `factor` replicas over `brokers` round robin from `first`:
/// partition p's replicas are the `factor` brokers from position `first + p`, so preferred
/// leaders are spread too (as Kafka assigns without racks).
pub fn assign_replicas(
    brokers: &[u32],
    partitions: u32,
    factor: usize,
    first: usize,
) -> Vec<Vec<u32>> {
    assert!(factor >= 1 && factor <= brokers.len());
    (0..partitions as usize)
        .map(|p| (0..factor).map(|i| brokers[(first + p + i) % brokers.len()]).collect())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    #[serde(default)]
    pub topics: BTreeMap<String, Topic>,
    /// A cluster's brokers as they registered through the metadata log, by id (TOML keys are
    /// strings: `[brokers.3]`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "id_keys")]
    pub brokers: BTreeMap<u32, BrokerRegistration>,
}

/// A map by broker id, written with the ids as strings (TOML table keys must be).
mod id_keys {
    use std::collections::BTreeMap;

    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, V: Serialize>(
        map: &BTreeMap<u32, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let by_text: BTreeMap<String, &V> = map.iter().map(|(k, v)| (k.to_string(), v)).collect();
        by_text.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<u32, V>, D::Error> {
        let by_text = BTreeMap::<String, V>::deserialize(deserializer)?;
        by_text
            .into_iter()
            .map(|(k, v)| k.parse().map(|k| (k, v)).map_err(D::Error::custom))
            .collect()
    }
}

/// What a broker of a cluster registered: how clients reach it, and how many shards it runs
/// (every broker must run the same number: replicas talk shard to shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub client_address: String,
    pub shards: u16,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog { version: 1, topics: BTreeMap::new(), brokers: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("topic name {0:?} is invalid: use 1-249 of [A-Za-z0-9._-], not . or .., not starting with __")]
    InvalidName(String),
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    #[error("partitions must be between 1 and {max}, got {got}", max = limits::PARTITIONS_PER_TOPIC_MAX)]
    InvalidPartitions { got: i64 },
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig { key: String, value: String, reason: String },
    #[error("too many topics (limit {})", limits::TOPICS_MAX)]
    TooManyTopics,
    #[error("cannot save the catalog: {0}")]
    Storage(String),
    #[error("replication factor {got} is invalid: use 1 to {brokers} (the brokers in the cluster), or 0 for the default")]
    InvalidReplicationFactor { got: i64, brokers: usize },
    #[error("brokers {0:?} are down: too few brokers are up for the replication factor")]
    BrokersDown(Vec<u32>),
    #[error("the topic's shards do not exist on this broker ({shards} shards): every broker of a cluster must run the same number of cores")]
    ShardMismatch { shards: usize },
    #[error("{partitions} more partitions need about {needed} more open files, and {open} of this broker's limit of {limit} are in use: raise its open-files limit (ulimit -n, systemd LimitNOFILE)")]
    OpenFilesLimit { partitions: u64, needed: u64, open: u64, limit: u64 },
}

/// Refuses `partitions` more partitions when their files would not fit under the process's
/// open-files limit: a shard that runs out of descriptors fails to open partitions the catalog
/// already lists (measured: 10,000 partitions under a limit of 20,000).
pub fn check_open_files(partitions: u64) -> Result<(), CatalogError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return Ok(()) };
    let open = entries.count() as u64;
    let needed = partitions * limits::OPEN_FILES_PER_PARTITION;
    if open + needed + limits::OPEN_FILES_RESERVED > limit.rlim_cur {
        return Err(CatalogError::OpenFilesLimit {
            partitions,
            needed,
            open,
            limit: limit.rlim_cur,
        });
    }
    Ok(())
}

pub fn validate_name(name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= spate_protocol::limits::TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && !name.starts_with("__")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CatalogError::InvalidName(name.to_string()))
    }
}

/// The log configuration a topic's partitions use: the defaults, overridden by its configs.
pub fn log_config(
    defaults: &LogConfig,
    configs: &BTreeMap<String, String>,
) -> Result<LogConfig, CatalogError> {
    let mut config = defaults.clone();
    for (key, value) in configs {
        apply_config(&mut config, key, value)?;
    }
    config.validate().map_err(|reason| CatalogError::InvalidConfig {
        key: "*".into(),
        value: String::new(),
        reason,
    })?;
    Ok(config)
}

fn apply_config(config: &mut LogConfig, key: &str, value: &str) -> Result<(), CatalogError> {
    let invalid = |reason: &str| CatalogError::InvalidConfig {
        key: key.into(),
        value: value.into(),
        reason: reason.into(),
    };
    let number = || value.parse::<u64>().map_err(|_| invalid("not a non-negative integer"));
    // -1 means "no limit", as in Kafka.
    let optional = || if value == "-1" { Ok(None) } else { number().map(Some) };
    match key {
        "retention.ms" => config.retention_ms = optional()?,
        "retention.bytes" => config.retention_bytes = optional()?,
        "segment.bytes" => config.segment_bytes = number()?,
        "segment.ms" => config.segment_ms = optional()?,
        "flush" => config.flush = value.parse::<FlushPolicy>().map_err(|e| invalid(&e))?,
        _ => return Err(invalid("unknown setting")),
    }
    Ok(())
}

/// The value of every config key for `topic`: (name, value, is_default).
pub fn describe(defaults: &LogConfig, topic: &Topic) -> Vec<(String, String, bool)> {
    let effective = log_config(defaults, &topic.configs).unwrap_or_else(|_| defaults.clone());
    let show = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let values = [
        show(effective.retention_ms),
        show(effective.retention_bytes),
        effective.segment_bytes.to_string(),
        show(effective.segment_ms),
        effective.flush.to_string(),
    ];
    CONFIG_KEYS
        .iter()
        .zip(values)
        .map(|(key, value)| (key.to_string(), value, !topic.configs.contains_key(*key)))
        .collect()
}

impl Catalog {
    /// Partitions owned by each shard now.
    pub fn shard_loads(&self, shard_count: usize) -> Vec<usize> {
        let mut loads = vec![0usize; shard_count];
        for topic in self.topics.values() {
            for shard in &topic.shards {
                if let Some(load) = loads.get_mut(*shard as usize) {
                    *load += 1;
                }
            }
        }
        loads
    }

    /// Adds a topic, spreading its partitions over the least-loaded shards (ties to the lowest
    /// index: deterministic), unless `layout` says where each goes.
    pub fn create(
        &mut self,
        name: &str,
        partitions: i64,
        configs: BTreeMap<String, String>,
        defaults: &LogConfig,
        shard_count: usize,
        layout: Option<&[u16]>,
    ) -> Result<&Topic, CatalogError> {
        validate_name(name)?;
        if self.topics.contains_key(name) {
            return Err(CatalogError::Exists(name.into()));
        }
        if self.topics.len() >= limits::TOPICS_MAX {
            return Err(CatalogError::TooManyTopics);
        }
        if partitions < 1 || partitions > i64::from(limits::PARTITIONS_PER_TOPIC_MAX) {
            return Err(CatalogError::InvalidPartitions { got: partitions });
        }
        log_config(defaults, &configs)?;
        let shards = match layout.filter(|l| {
            l.len() == partitions as usize && l.iter().all(|s| (*s as usize) < shard_count)
        }) {
            Some(layout) => layout.to_vec(),
            None => {
                let mut loads = self.shard_loads(shard_count);
                (0..partitions)
                    .map(|_| {
                        let (shard, _) = loads
                            .iter()
                            .enumerate()
                            .min_by_key(|(i, load)| (**load, *i))
                            .expect("at least one shard");
                        loads[shard] += 1;
                        shard as u16
                    })
                    .collect()
            }
        };
        self.topics
            .insert(name.to_string(), Topic { shards, configs, replicas: Vec::new(), id: 0 });
        Ok(&self.topics[name])
    }

    pub fn delete(&mut self, name: &str) -> Result<Topic, CatalogError> {
        self.topics.remove(name).ok_or_else(|| CatalogError::Unknown(name.into()))
    }

    /// Sets topic configs; an empty value resets a setting to the broker default.
    pub fn alter(
        &mut self,
        name: &str,
        updates: &[(String, String)],
        defaults: &LogConfig,
    ) -> Result<(), CatalogError> {
        let topic = self.topics.get(name).ok_or_else(|| CatalogError::Unknown(name.into()))?;
        let mut configs = topic.configs.clone();
        for (key, value) in updates {
            if key == "partitions" {
                return Err(CatalogError::InvalidConfig {
                    key: key.clone(),
                    value: value.clone(),
                    reason: "partition counts cannot change".into(),
                });
            }
            if value.is_empty() {
                configs.remove(key);
            } else {
                configs.insert(key.clone(), value.clone());
            }
        }
        log_config(defaults, &configs)?;
        self.topics.get_mut(name).expect("checked").configs = configs;
        Ok(())
    }

    /// Gives partitions owned by shards this broker no longer runs (it restarted with fewer
    /// cores) to the shards it has, spread by partition number. A partition's files do not
    /// depend on its shard, so the new owner simply opens them. Returns how many moved.
    pub fn reassign_orphans(&mut self, shard_count: usize) -> usize {
        assert!(shard_count > 0);
        let mut moved = 0;
        for topic in self.topics.values_mut() {
            for (partition, shard) in topic.shards.iter_mut().enumerate() {
                if usize::from(*shard) >= shard_count {
                    *shard = (partition % shard_count) as u16;
                    moved += 1;
                }
            }
        }
        moved
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("meta").join("catalog.toml")
    }

    pub fn load(data_dir: &Path) -> std::io::Result<Catalog> {
        let path = Catalog::path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(e),
        }
    }

    /// Persists atomically: after a crash the file holds either the old or the new catalog.
    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Catalog::path(data_dir);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        let text = toml::to_string(self).map_err(|e| std::io::Error::other(e.to_string()))?;
        spate_storage::durable::write_atomically(&path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphaned_partitions_move_to_running_shards_and_others_stay() {
        let mut catalog = Catalog::default();
        catalog.topics.insert(
            "t".into(),
            Topic {
                shards: vec![0, 3, 1, 2, 5],
                configs: BTreeMap::new(),
                replicas: Vec::new(),
                id: 0,
            },
        );
        assert_eq!(catalog.reassign_orphans(2), 3);
        assert_eq!(catalog.topics["t"].shards, vec![0, 1, 1, 1, 0]);
        assert_eq!(catalog.reassign_orphans(2), 0);
    }

    #[test]
    fn replicas_and_preferred_leaders_spread_round_robin() {
        let replicas = assign_replicas(&[1, 2, 3], 4, 3, 1);
        assert_eq!(replicas, vec![vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3], vec![2, 3, 1]]);
        let replicas = assign_replicas(&[1, 2, 3, 4, 5], 5, 2, 0);
        let leaders: Vec<u32> = replicas.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 4, 5], "each broker leads one partition");
        assert!(replicas.iter().all(|r| r[0] != r[1]), "no broker twice in a partition");
        // Group ids: one per partition, topic id above the partition bits.
        let topic = Topic { shards: vec![0; 3], configs: BTreeMap::new(), replicas, id: 5 };
        assert_eq!(topic.group(2), (5 << 20) | 2);
        assert!(new_topic_id() < (1 << 44) && new_topic_id() != 0);
    }

    #[test]
    fn names_are_validated() {
        for good in ["orders", "a.b-c_d", "X1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "__internal", &"x".repeat(250)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partitions_balance_over_shards_deterministically() {
        let defaults = LogConfig::default();
        let mut catalog = Catalog::default();
        catalog.create("a", 3, BTreeMap::new(), &defaults, 2, None).unwrap();
        catalog.create("b", 3, BTreeMap::new(), &defaults, 2, None).unwrap();
        assert_eq!(catalog.topics["a"].shards, vec![0, 1, 0]);
        assert_eq!(catalog.topics["b"].shards, vec![1, 0, 1]);
        assert_eq!(catalog.shard_loads(2), vec![3, 3]);
        let layout = [1u16, 1, 1];
        catalog.create("c", 3, BTreeMap::new(), &defaults, 2, Some(&layout)).unwrap();
        assert_eq!(catalog.topics["c"].shards, vec![1, 1, 1]);
        assert!(matches!(
            catalog.create("a", 1, BTreeMap::new(), &defaults, 2, None),
            Err(CatalogError::Exists(_))
        ));
        assert!(matches!(
            catalog.create("z", 0, BTreeMap::new(), &defaults, 2, None),
            Err(CatalogError::InvalidPartitions { .. })
        ));
    }

    #[test]
    fn configs_map_to_log_configs_and_are_validated() {
        let defaults = LogConfig::default();
        let mut configs = BTreeMap::new();
        configs.insert("flush".to_string(), "interval:50".to_string());
        configs.insert("retention.bytes".to_string(), "1000000".to_string());
        configs.insert("retention.ms".to_string(), "-1".to_string());
        let config = log_config(&defaults, &configs).unwrap();
        assert_eq!(config.flush, FlushPolicy::Interval(std::time::Duration::from_millis(50)));
        assert_eq!(config.retention_bytes, Some(1_000_000));
        assert_eq!(config.retention_ms, None);
        for (key, value) in [
            ("flush", "sometimes"),
            ("segment.bytes", "10"),
            ("colour", "red"),
            ("retention.ms", "x"),
        ] {
            let mut bad = BTreeMap::new();
            bad.insert(key.to_string(), value.to_string());
            assert!(log_config(&defaults, &bad).is_err(), "{key}={value}");
        }
    }

    #[test]
    fn broker_registrations_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::default();
        let registration =
            BrokerRegistration { client_address: "127.0.0.1:9292".into(), shards: 2 };
        catalog.brokers.insert(3, registration.clone());
        catalog.save(dir.path()).unwrap();
        let loaded = Catalog::load(dir.path()).unwrap();
        assert_eq!(loaded.brokers.get(&3), Some(&registration));
    }

    #[test]
    fn saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::default();
        let mut configs = BTreeMap::new();
        configs.insert("flush".to_string(), "always".to_string());
        catalog.create("orders", 4, configs, &LogConfig::default(), 2, None).unwrap();
        catalog.save(dir.path()).unwrap();
        assert_eq!(Catalog::load(dir.path()).unwrap(), catalog);
        assert_eq!(Catalog::load(&dir.path().join("nothing")).unwrap(), Catalog::default());
    }
}
