//! Choosing a partition for a record. Sans-IO.
//!
//! - A record with an explicit partition goes there.
//! - A record with a key goes to `crc32(key) mod partition_count`, where crc32 is CRC-32/IEEE
//!   (the `crc32fast` crate, the same checksum as record batches). This is stable across
//!   versions, languages and processes: for a given partition count, a key always maps to the
//!   same partition. Changing the partition count remaps keys, as in Kafka.
//! - A record with neither goes to a "sticky" partition, kept until its batch closes, then the
//!   next partition round-robin from a random start (Kafka's sticky partitioner, but rotating
//!   rather than random, so the spread is even over any window of batches, not just on average).
//! - Or implement [`Partitioner`] for anything else.

/// Picks a partition for a record with this key, among `partition_count` partitions.
pub trait Partitioner {
    fn partition(&mut self, key: Option<&[u8]>, partition_count: u32) -> u32;

    /// Told when the batch for `partition` was closed, so a sticky choice can move on.
    fn on_batch_closed(&mut self, _partition: u32) {}
}

/// The stable key hash: CRC-32/IEEE of the key bytes.
pub fn key_partition(key: &[u8], partition_count: u32) -> u32 {
    assert!(partition_count > 0);
    crc32fast::hash(key) % partition_count
}

/// The default: keys hash with [`key_partition`]; unkeyed records stick to one partition per
/// batch, rotating round the partitions from a random start.
#[derive(Debug, Clone)]
pub struct DefaultPartitioner {
    sticky: Option<u32>,
    /// The partition the last sticky batch went to.
    last: Option<u32>,
    rng_state: u64,
}

impl DefaultPartitioner {
    pub fn new(seed: u64) -> DefaultPartitioner {
        DefaultPartitioner { sticky: None, last: None, rng_state: seed | 1 }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: a partition choice needs spread, not cryptographic quality.
        let mut x = self.rng_state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng_state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl Default for DefaultPartitioner {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        DefaultPartitioner::new(seed)
    }
}

impl Partitioner for DefaultPartitioner {
    fn partition(&mut self, key: Option<&[u8]>, partition_count: u32) -> u32 {
        assert!(partition_count > 0);
        if let Some(key) = key {
            return key_partition(key, partition_count);
        }
        match self.sticky {
            Some(sticky) if sticky < partition_count => sticky,
            _ => {
                let choice = match self.last {
                    Some(last) => (last + 1) % partition_count,
                    None => (self.next_random() % u64::from(partition_count)) as u32,
                };
                self.sticky = Some(choice);
                self.last = Some(choice);
                choice
            }
        }
    }

    fn on_batch_closed(&mut self, partition: u32) {
        if self.sticky == Some(partition) {
            self.sticky = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_partition_and_documented_values() {
        let mut partitioner = DefaultPartitioner::new(7);
        for i in 0..1000 {
            let key = format!("user-{i}");
            let first = partitioner.partition(Some(key.as_bytes()), 12);
            for _ in 0..3 {
                assert_eq!(partitioner.partition(Some(key.as_bytes()), 12), first);
            }
            assert_eq!(first, crc32fast::hash(key.as_bytes()) % 12);
        }
        // Pinned values: these must never change between versions.
        assert_eq!(key_partition(b"orders-1", 12), 0x33DC_FDC6 % 12);
        assert_eq!(key_partition(b"", 7), 0);
    }

    #[test]
    fn unkeyed_records_spread_evenly() {
        // 100k unkeyed messages over 12 partitions, batches closing every 100 records:
        // every partition within ±10% of even.
        let mut partitioner = DefaultPartitioner::new(42);
        let mut counts = [0u32; 12];
        let mut in_batch = 0;
        for _ in 0..100_000 {
            let partition = partitioner.partition(None, 12);
            counts[partition as usize] += 1;
            in_batch += 1;
            if in_batch == 100 {
                partitioner.on_batch_closed(partition);
                in_batch = 0;
            }
        }
        let even = 100_000.0 / 12.0;
        for (partition, count) in counts.iter().enumerate() {
            let deviation = (f64::from(*count) - even).abs() / even;
            assert!(
                deviation <= 0.10,
                "partition {partition}: {count} ({:.1}% off)",
                deviation * 100.0
            );
        }
    }

    #[test]
    fn keyed_records_spread_evenly() {
        let mut counts = [0u32; 12];
        for i in 0..100_000 {
            counts[key_partition(format!("key-{i}").as_bytes(), 12) as usize] += 1;
        }
        let even = 100_000.0 / 12.0;
        assert!(counts.iter().all(|c| (f64::from(*c) - even).abs() / even <= 0.10), "{counts:?}");
    }

    #[test]
    fn sticky_partition_holds_until_its_batch_closes() {
        let mut partitioner = DefaultPartitioner::new(3);
        let first = partitioner.partition(None, 8);
        assert!((0..50).all(|_| partitioner.partition(None, 8) == first));
        partitioner.on_batch_closed((first + 1) % 8);
        assert_eq!(partitioner.partition(None, 8), first);
    }
}
