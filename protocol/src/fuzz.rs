//! A seeded mutation fuzzer for every decoder and the batch validator, on stable Rust
//! (`cargo fuzz` needs nightly; `protocol/fuzz` keeps a libFuzzer target for machines that
//! have it). Inputs are random bytes and mutations (byte flips, overwrites, 0xff runs,
//! truncation, splices of two inputs) of a corpus of valid frames and batches. Each input goes
//! through the frame decoder, the request and response verifiers and unpackers, the fetch
//! payload split, and, for every batch it holds, header parsing, the shape check, the CRC check,
//! full validation and the record walk. The property is the absence of panics and hangs: every
//! path must decode or return an error.
//!
//! `cargo test` runs a short campaign; `spate-fuzz --inputs 1000000` (in `benches`) a long one.
//! A failing input is reproducible from the seed and its index.

use bytes::BytesMut;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::batch::{self, BatchBuilder, BatchHeader, NewRecord, Records};
use crate::codec::{self, ProducePartitionInput};
use crate::frame::FrameDecoder;
use crate::wire::{self, RequestBodyT, RequestT};

/// What a campaign saw: inputs run, and how many decoded or were refused at each layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub inputs: u64,
    pub frames_decoded: u64,
    pub frames_refused: u64,
    pub batches_valid: u64,
    pub batches_refused: u64,
}

pub struct Fuzzer {
    rng: SmallRng,
    corpus: Vec<Vec<u8>>,
    decoder: FrameDecoder,
    pub stats: Stats,
}

/// A few valid batches: keyed and unkeyed records, headers, one large value.
fn seed_batches() -> Vec<Vec<u8>> {
    (0..4u8)
        .map(|n| {
            let mut builder = BatchBuilder::new();
            for i in 0..=n {
                builder.push(&NewRecord {
                    key: (i % 2 == 0).then(|| bytes::Bytes::from(vec![b'k'; usize::from(i) + 1])),
                    value: Some(bytes::Bytes::from(vec![i; 10 + 200 * usize::from(n)])),
                    headers: vec![batch::Header {
                        key: "h".into(),
                        value: Some(bytes::Bytes::from_static(b"v")),
                    }],
                    timestamp: 1_000 + i64::from(i),
                });
            }
            builder.finish().expect("valid batch").to_vec()
        })
        .collect()
}

/// Valid frames: a produce request carrying real batches, and a few other requests.
fn seed_frames(batches: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let joined: Vec<u8> = batches.concat();
    let produce = codec::encode_produce(
        7,
        "fuzz",
        wire::Acks::All,
        1_000,
        &[
            ("t", vec![ProducePartitionInput { partition: 0, records: &joined }]),
            ("u", vec![ProducePartitionInput { partition: 3, records: &batches[0] }]),
        ],
    )
    .expect("encodable");
    let fetch = RequestBodyT::FetchRequest(Box::new(wire::FetchRequestT {
        max_wait_ms: 100,
        min_bytes: 1,
        max_bytes: 1 << 20,
        topics: Some(vec![wire::FetchTopicT {
            name: Some("t".into()),
            partitions: Some(vec![wire::FetchPartitionT {
                partition: 0,
                fetch_offset: 5,
                max_bytes: 1000,
            }]),
        }]),
    }));
    let metadata = RequestBodyT::MetadataRequest(Box::new(wire::MetadataRequestT {
        topics: Some(vec!["t".into(), "u".into()]),
    }));
    let mut frames = vec![produce.to_vec()];
    for body in [fetch, metadata] {
        frames.push(
            codec::encode_request(&RequestT { body, ..Default::default() })
                .expect("encodable")
                .to_vec(),
        );
    }
    frames
}

impl Fuzzer {
    /// A fuzzer seeded with `seed`, its corpus the built-in seeds plus `extra` frames.
    pub fn new(seed: u64, extra: Vec<Vec<u8>>) -> Fuzzer {
        let batches = seed_batches();
        let mut corpus = seed_frames(&batches);
        corpus.extend(batches);
        corpus.extend(extra);
        Fuzzer {
            rng: SmallRng::seed_from_u64(seed),
            corpus,
            decoder: FrameDecoder::with_limit(1 << 20),
            stats: Stats::default(),
        }
    }

    /// Runs `inputs` inputs (bounded: each does work proportional to its length).
    pub fn run(&mut self, inputs: u64) -> Stats {
        for _ in 0..inputs {
            let input = self.next_input();
            self.exercise(&input);
            self.stats.inputs += 1;
        }
        self.stats
    }

    /// The next input: random bytes (one in eight) or a mutated corpus entry.
    pub fn next_input(&mut self) -> Vec<u8> {
        let rng = &mut self.rng;
        if rng.gen_ratio(1, 8) {
            let length = rng.gen_range(0..512);
            return (0..length).map(|_| rng.gen()).collect();
        }
        let mut bytes = self.corpus[rng.gen_range(0..self.corpus.len())].clone();
        for _ in 0..rng.gen_range(1..=4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.gen_range(0..bytes.len());
            match rng.gen_range(0..6) {
                0 => bytes[at] = rng.gen(),
                1 => bytes[at] ^= 1 << rng.gen_range(0..8),
                2 => {
                    let end = (at + rng.gen_range(1..9)).min(bytes.len());
                    bytes[at..end].fill(0xff);
                }
                3 => bytes.truncate(at),
                4 => {
                    // A little-endian length or offset field set to an extreme.
                    let end = (at + 8).min(bytes.len());
                    let extreme: [u8; 8] = match rng.gen_range(0..3) {
                        0 => i64::MAX.to_le_bytes(),
                        1 => (-1i64).to_le_bytes(),
                        _ => (u32::MAX as u64).to_le_bytes(),
                    };
                    bytes[at..end].copy_from_slice(&extreme[..end - at]);
                }
                _ => {
                    let other = &self.corpus[rng.gen_range(0..self.corpus.len())];
                    let from = rng.gen_range(0..=other.len());
                    bytes.truncate(at);
                    bytes.extend_from_slice(&other[from..]);
                }
            }
        }
        bytes
    }

    /// Every decoder over one input. Panics only if a decoder does.
    pub fn exercise(&mut self, input: &[u8]) {
        self.exercise_batch(input);
        let mut buffer = BytesMut::from(input);
        // Bounded: each decoded frame consumes at least its 8-byte prefix.
        for _ in 0..input.len() / 8 + 1 {
            match self.decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    self.exercise_frame(&frame.header, frame.payload.len());
                }
                Ok(None) => break,
                Err(_) => {
                    self.stats.frames_refused += 1;
                    break;
                }
            }
        }
    }

    fn exercise_frame(&mut self, header: &[u8], payload_bytes: usize) {
        let mut decoded = false;
        if let Ok(request) = codec::decode_request(header) {
            decoded = true;
            let _ = request.unpack();
            if let Some(produce) = request.body_as_produce_request() {
                for topic in produce.topics().iter().flatten() {
                    for partition in topic.partitions().iter().flatten() {
                        if let Some(records) = partition.records() {
                            self.exercise_batches(records.bytes());
                        }
                    }
                }
            }
        }
        if let Ok(response) = codec::decode_response(header) {
            decoded = true;
            let _ = response.unpack();
            if let Some(fetch) = response.body_as_fetch_response() {
                let _ = codec::fetch_payload_sizes(&fetch, payload_bytes);
            }
        }
        if decoded {
            self.stats.frames_decoded += 1;
        } else {
            self.stats.frames_refused += 1;
        }
    }

    /// Batches back to back, as a produce request or a fetch payload carries them.
    fn exercise_batches(&mut self, mut bytes: &[u8]) {
        // Bounded: each step consumes at least a header.
        while bytes.len() >= batch::HEADER_LEN {
            let length = self.exercise_batch(bytes);
            match length {
                Some(length) if length > 0 && length <= bytes.len() => bytes = &bytes[length..],
                _ => break,
            }
        }
    }

    /// One batch at the front of `bytes`; returns its length if its header was readable.
    fn exercise_batch(&mut self, bytes: &[u8]) -> Option<usize> {
        let header = BatchHeader::parse(bytes).ok()?;
        let _ = (header.last_offset(), header.next_offset());
        let _ = header.check_shape();
        let _ = batch::validate_crc(bytes);
        let length = (header.batch_length as usize).min(bytes.len());
        match batch::validate(&bytes[..length]) {
            Ok(_) => self.stats.batches_valid += 1,
            Err(_) => self.stats.batches_refused += 1,
        }
        // Walk records even of a batch that failed validation: a reader must never panic.
        for record in Records::new(&bytes[..length], header).take(batch_records_walk_max()) {
            if record.is_err() {
                break;
            }
        }
        Some(header.batch_length as usize)
    }
}

/// Records walked per batch at most, so a lying record count cannot make one input slow.
fn batch_records_walk_max() -> usize {
    crate::limits::BATCH_RECORDS_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_campaign_reaches_every_layer_without_panicking() {
        let seed: u64 = std::env::var("SPATE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("fuzz seed {seed} (rerun with SPATE_SEED={seed})");
        let stats = Fuzzer::new(seed, Vec::new()).run(30_000);
        // The corpus must reach both outcomes at each layer, or the campaign proves nothing.
        assert!(stats.frames_decoded > 500 && stats.frames_refused > 500, "{stats:?}");
        assert!(stats.batches_valid > 500 && stats.batches_refused > 500, "{stats:?}");
    }
}
