//! Helpers shared by the storage integration tests.
#![allow(dead_code)]

use std::future::Future;

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use spate_protocol::batch::{BatchBuilder, Header, NewRecord};

/// Runs `future` to completion on a fresh Glommio executor on this thread.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    init_tracing();
    LocalExecutorBuilder::new(Placement::Unbound).make().expect("glommio executor").run(future)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A temporary directory on the real disk (not tmpfs), so files are opened with O_DIRECT.
pub fn temp_dir() -> tempfile::TempDir {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("spate-storage-").tempdir_in(base).expect("temp dir")
}

/// A batch of `count` records whose values are `value_bytes` long, derived from `tag` so every
/// batch's content is distinct and checkable.
pub fn make_batch(tag: u64, count: usize, value_bytes: usize, timestamp: i64) -> BytesMut {
    let mut builder = BatchBuilder::with_capacity(count * (value_bytes + 32) + 128);
    for i in 0..count {
        let fill = (tag as usize).wrapping_mul(31).wrapping_add(i) as u8;
        builder.push(&NewRecord {
            key: Some(Bytes::from(format!("key-{tag}-{i}"))),
            value: Some(Bytes::from(vec![fill; value_bytes])),
            headers: vec![Header {
                key: "tag".into(),
                value: Some(Bytes::from(tag.to_le_bytes().to_vec())),
            }],
            timestamp: timestamp + i as i64,
        });
    }
    builder.finish().expect("valid batch")
}

/// The batch bytes as the log stores them once stamped: offset and term patched in.
pub fn stamped(mut batch: BytesMut, base_offset: i64, term: u64) -> Vec<u8> {
    spate_protocol::batch::stamp(&mut batch, base_offset, term);
    batch.to_vec()
}

/// Concatenated bytes of a read.
pub fn read_bytes(read: &spate_storage::LogRead) -> Vec<u8> {
    read.chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// Splits concatenated batches into (base offset, bytes) pairs.
pub fn split_batches(mut bytes: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let header = spate_protocol::batch::validate_crc(bytes).expect("whole valid batches");
        let length = header.batch_length as usize;
        out.push((header.base_offset, bytes[..length].to_vec()));
        bytes = &bytes[length..];
    }
    out
}
