//! Model-based test: random sequences of append, read, read-by-time, roll, truncate, retention,
//! close/reopen and crash-with-torn-tail, checked after every step against a plain in-memory
//! model of the log. Prints its seed; rerun a failure with `SPATE_SEED=<seed>`.

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
            0..=44 => {
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
            45..=69 => {
                let offset = rng.gen_range(model.start..=model.end());
                let bytes_max = [1, 1000, 10_000, 1 << 20][rng.gen_range(0..4)];
                check_read(&log, &model, offset, bytes_max, step).await;
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
            85..=87 => {
                let offset = rng.gen_range(model.start..=model.end());
                log.advance_start_offset(offset).await.unwrap();
                model.start = offset;
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
