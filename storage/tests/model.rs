//! Model-based test: random sequences of append, a follower's append (at the leader's offsets and
//! terms), read, bounded read, read-by-time, roll, truncate, retention, reset, close/reopen and
//! crash-with-torn-tail, checked after every step against a plain in-memory model of the log. Prints its seed; rerun a failure with `SPATE_SEED=<seed>`.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spate_protocol::batch::{BatchHeader, Records};
use spate_storage::{FlushPolicy, Log, LogConfig, LogError, LogOptions};

/// One batch as the model knows it.
#[derive(Clone)]
struct ModelBatch {
    base: i64,
    bytes: Vec<u8>,
    /// (offset, timestamp) of every record.
    records: Vec<(i64, i64)>,
}

impl ModelBatch {
    fn next(&self) -> i64 {
        self.base + self.records.len() as i64
    }
}

#[derive(Default)]
struct Model {
    batches: Vec<ModelBatch>,
    start: i64,
    /// The end when `batches` is empty (the base of the last batch removed).
    empty_end: i64,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(self.empty_end, |b| b.next())
    }

    /// Index of the batch holding `offset`.
    fn holding(&self, offset: i64) -> Option<usize> {
        self.batches.iter().position(|b| b.base <= offset && offset < b.next())
    }

    fn offset_for_timestamp(&self, timestamp: i64) -> Option<i64> {
        self.batches
            .iter()
            .flat_map(|b| b.records.iter())
            .find(|(offset, ts)| *offset >= self.start && *ts >= timestamp)
            .map(|(offset, _)| *offset)
    }
}

const OPS: usize = 2500;

#[test]
fn random_operations_match_the_model() {
    let seed: u64 =
        std::env::var("SPATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("model test seed {seed} (rerun with SPATE_SEED={seed})");
    let dir = temp_dir();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(drive(seed, dir.path().to_path_buf()));
    }));
    if let Err(panic) = result {
        eprintln!("model test failed with seed {seed}; rerun with SPATE_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

fn config_for(rng: &mut StdRng) -> LogConfig {
    LogConfig {
        segment_bytes: spate_storage::limits::SEGMENT_BYTES_MIN,
        cache_bytes: [0, 8 * 1024, 64 * 1024][rng.gen_range(0..3)],
        index_interval_bytes: [512, 1024, 4096][rng.gen_range(0..3)],
        flush: if rng.gen_bool(0.2) { FlushPolicy::Always } else { FlushPolicy::Never },
        retention_ms: None,
        segment_ms: None,
        ..LogConfig::default()
    }
}

async fn drive(seed: u64, dir: std::path::PathBuf) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    let mut log = Log::open(&dir, config_for(&mut rng), LogOptions::default()).await.unwrap();
    let mut tag = 0u64;
    let mut timestamp = 1_000_000i64;
    for step in 0..OPS {
        let op = rng.gen_range(0..100);
        match op {
            40..=44 => {
                // A follower's append: batches the leader stamped, kept byte for byte.
                let mut batches = Vec::new();
                let mut base = model.end();
                let term = rng.gen_range(0..5);
                for _ in 0..rng.gen_range(1..4) {
                    tag += 1;
                    timestamp += rng.gen_range(0..100);
                    let count = rng.gen_range(1..6);
                    let value_bytes = rng.gen_range(0..1500);
                    let batch = make_batch(tag, count, value_bytes, timestamp);
                    batches.push(bytes::Bytes::from(stamped(batch, base, term)));
                    base += count as i64;
                }
                if rng.gen_bool(0.1) {
                    // Not at the log end: refused, the log unchanged.
                    let wrong = model.end() + rng.gen_range(1..3);
                    let batch = stamped(make_batch(tag, 1, 10, timestamp), wrong, term);
                    let result = log.append_replicated(vec![bytes::Bytes::from(batch)]).await;
                    assert!(matches!(result, Err(LogError::NotAtLogEnd { .. })), "step {step}");
                }
                let appended = log.append_replicated(batches.clone()).await.unwrap();
                assert_eq!(appended.base_offset, model.end(), "step {step}: follower append");
                for bytes in batches {
                    let header = BatchHeader::parse(&bytes).unwrap();
                    let records = Records::new(&bytes, header)
                        .map(|r| r.unwrap())
                        .map(|r| (r.offset, r.timestamp))
                        .collect();
                    model.batches.push(ModelBatch {
                        base: header.base_offset,
                        bytes: bytes.to_vec(),
                        records,
                    });
                }
            }
            0..=39 => {
                tag += 1;
                let count = rng.gen_range(1..6);
                let value_bytes = if rng.gen_bool(0.03) {
                    rng.gen_range(20_000..120_000)
                } else {
                    rng.gen_range(0..1500)
                };
                // Mostly rising timestamps, sometimes a step back.
                timestamp += rng.gen_range(-50..200);
                let batch = make_batch(tag, count, value_bytes, timestamp);
                let term = rng.gen_range(0..5);
                let appended = log.append(batch.clone(), term).await.unwrap();
                assert_eq!(appended.base_offset, model.end(), "step {step}: append offset");
                let bytes = stamped(batch, appended.base_offset, term);
                let header = BatchHeader::parse(&bytes).unwrap();
                let records = Records::new(&bytes, header)
                    .map(|r| r.unwrap())
                    .map(|r| (r.offset, r.timestamp))
                    .collect();
                model.batches.push(ModelBatch { base: appended.base_offset, bytes, records });
            }
            45..=64 => {
                let offset = rng.gen_range(model.start..=model.end());
                let bytes_max = [1, 1000, 10_000, 1 << 20][rng.gen_range(0..4)];
                check_read(&log, &model, offset, bytes_max, step).await;
            }
            65..=69 => {
                let offset = rng.gen_range(model.start..=model.end());
                let upper = rng.gen_range(model.start..=model.end() + 5);
                let bytes_max = [1, 1000, 10_000, 1 << 20][rng.gen_range(0..4)];
                check_bounded_read(&log, &model, offset, upper, bytes_max, step).await;
            }
            70..=76 => {
                let target = timestamp + rng.gen_range(-3000..300);
                let got = log.offset_for_timestamp(target).await.unwrap();
                assert_eq!(
                    got,
                    model.offset_for_timestamp(target),
                    "step {step}: timestamp {target}"
                );
            }
            77..=80 => log.roll().await.unwrap(),
            81..=84 => {
                // Truncate to a batch boundary at or after the start.
                let candidates: Vec<i64> =
                    model.batches.iter().map(|b| b.base).filter(|b| *b >= model.start).collect();
                if let Some(cut) =
                    candidates.get(rng.gen_range(0..candidates.len().max(1))).copied()
                {
                    log.truncate_to(cut).await.unwrap();
                    model.batches.retain(|b| b.base < cut);
                    model.empty_end = cut;
                } else {
                    // No batch starts at or after the start: the start lies inside the last
                    // batch or at the end. One past it is the end (nothing to cut), past the
                    // end, or inside that batch.
                    let target = model.start + 1;
                    let result = log.truncate_to(target).await;
                    match target.cmp(&model.end()) {
                        std::cmp::Ordering::Equal => assert!(result.is_ok(), "step {step}"),
                        std::cmp::Ordering::Greater => assert!(
                            matches!(result, Err(LogError::OffsetOutOfRange { .. })),
                            "step {step}: {result:?}"
                        ),
                        std::cmp::Ordering::Less => assert!(
                            matches!(result, Err(LogError::NotBatchBoundary(_))),
                            "step {step}: {result:?}"
                        ),
                    }
                }
            }
            85..=86 => {
                let offset = rng.gen_range(model.start..=model.end());
                log.advance_start_offset(offset).await.unwrap();
                model.start = offset;
            }
            87 => {
                // A reset, to anywhere (a replica restarting at its leader's log start).
                let offset = rng.gen_range(0..=model.end() + 1000);
                log.reset_to(offset).await.unwrap();
                model.batches.clear();
                model.start = offset;
                model.empty_end = offset;
            }
            88..=89 => {
                let mut config = log.config();
                config.retention_bytes = Some(rng.gen_range(0..200_000));
                log.set_config(config.clone()).unwrap();
                log.enforce_retention().await.unwrap();
                config.retention_bytes = None;
                log.set_config(config).unwrap();
                let start = log.offsets().start;
                assert!(start >= model.start, "step {step}: retention moved start back");
                assert!(
                    start == model.start
                        || start == model.end()
                        || model.batches.iter().any(|b| b.base == start),
                    "step {step}: start {start} not a batch boundary"
                );
                model.start = start;
            }
            90..=94 => {
                log.close().await.unwrap();
                drop(log);
                log = Log::open(&dir, config_for(&mut rng), LogOptions::default()).await.unwrap();
            }
            _ => {
                drop(log);
                tear_tail(&dir, &mut model, &mut rng);
                log = Log::open(&dir, config_for(&mut rng), LogOptions::default()).await.unwrap();
            }
        }
        let offsets = log.offsets();
        assert_eq!(offsets.high_watermark, model.end(), "step {step} (op {op}): end");
        assert_eq!(offsets.start, model.start, "step {step} (op {op}): start");
        assert!(log.read(model.end() + 1, 100).await.is_err());
        if model.start > 0 {
            assert!(matches!(
                log.read(model.start - 1, 100).await,
                Err(LogError::OffsetOutOfRange { .. })
            ));
        }
    }
    // Finally everything left reads back, byte for byte.
    let mut offset = model.start;
    let mut guard = 0;
    while offset < model.end() {
        guard += 1;
        assert!(guard < 100_000);
        let read = log.read(offset, 1 << 20).await.unwrap();
        let batches = split_batches(&read_bytes(&read));
        for (base, bytes) in &batches {
            let expected = &model.batches[model.holding(*base).unwrap()];
            assert_eq!(&expected.bytes, bytes);
        }
        offset = BatchHeader::parse(&batches.last().unwrap().1).unwrap().next_offset();
    }
}

async fn check_read(log: &Log, model: &Model, offset: i64, bytes_max: usize, step: usize) {
    let read = log
        .read(offset, bytes_max)
        .await
        .unwrap_or_else(|e| panic!("step {step}: read {offset}: {e}"));
    let batches = split_batches(&read_bytes(&read));
    if offset == model.end() {
        assert!(batches.is_empty(), "step {step}: read at end returned data");
        return;
    }
    let first = model.holding(offset).unwrap();
    assert!(!batches.is_empty(), "step {step}: read at {offset} returned nothing");
    let total: usize = batches.iter().map(|(_, b)| b.len()).sum();
    assert!(batches.len() == 1 || total <= bytes_max, "step {step}: read exceeded byte limit");
    for (i, (base, bytes)) in batches.iter().enumerate() {
        let expected = &model.batches[first + i];
        assert_eq!(*base, expected.base, "step {step}: batch {i} of read at {offset}");
        assert!(bytes == &expected.bytes, "step {step}: batch at {base} differs");
    }
}

async fn check_bounded_read(
    log: &Log,
    model: &Model,
    offset: i64,
    upper: i64,
    bytes_max: usize,
    step: usize,
) {
    let read = log
        .read_bounded(offset, bytes_max, upper)
        .await
        .unwrap_or_else(|e| panic!("step {step}: bounded read {offset} below {upper}: {e}"));
    let bound = upper.min(model.end());
    assert_eq!(read.high_watermark, bound, "step {step}");
    let batches = split_batches(&read_bytes(&read));
    let Some(first) = model.holding(offset) else {
        assert!(batches.is_empty(), "step {step}: data at the end");
        return;
    };
    // Whole batches from the one holding `offset`, none ending past the bound.
    let expected_first = model.batches[first].next() <= bound;
    assert_eq!(!batches.is_empty(), expected_first, "step {step}: read at {offset} below {bound}");
    for (i, (base, bytes)) in batches.iter().enumerate() {
        let expected = &model.batches[first + i];
        assert_eq!(*base, expected.base, "step {step}: batch {i}");
        assert!(bytes == &expected.bytes, "step {step}: batch at {base} differs");
        assert!(expected.next() <= bound, "step {step}: batch at {base} ends past {bound}");
    }
}

/// Simulates a crash that tore the last write: garbage after the end, the last batch cut short,
/// or a byte of it flipped. Only the active (last) segment is touched, as a real crash would.
fn tear_tail(dir: &std::path::Path, model: &mut Model, rng: &mut StdRng) {
    let mut bases: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    bases.sort_unstable();
    let active_base = *bases.last().unwrap();
    let path = dir.join(format!("{active_base:020}.log"));
    let in_active: Vec<&ModelBatch> =
        model.batches.iter().filter(|b| b.base >= active_base).collect();
    let logical: usize = in_active.iter().map(|b| b.bytes.len()).sum();
    let mut file = std::fs::read(&path).unwrap();
    assert!(file.len() >= logical);
    let last_len = in_active.last().map(|b| b.bytes.len());
    match (rng.gen_range(0..3), last_len) {
        (0, _) | (_, None) => {
            // Garbage after the logical end (a write that landed partly): must be cut, all kept.
            let garbage: Vec<u8> =
                (0..rng.gen_range(1..5000)).map(|_| rng.gen_range(1..=255)).collect();
            file.truncate(logical);
            file.extend_from_slice(&garbage);
        }
        (1, Some(last_len)) => {
            // The last batch cut short.
            let cut = logical - rng.gen_range(1..last_len);
            file.truncate(cut);
            model.empty_end = model.batches.pop().unwrap().base;
        }
        (_, Some(last_len)) => {
            // A byte of the last batch's CRC'd region damaged.
            let at = logical - last_len + rng.gen_range(25..last_len);
            file[at] ^= 0x40;
            model.empty_end = model.batches.pop().unwrap().base;
        }
    }
    std::fs::write(&path, file).unwrap();
    model.start = model.start.min(model.end());
}
