//! A real crash test: a child process appends with `flush=always` and reports each acknowledged
//! batch; the test SIGKILLs it at random moments, reopens the log, and checks that every
//! acknowledged batch is present at its offset and byte-identical (CRC-32 of the whole batch).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use spate_protocol::batch::BatchHeader;
use spate_storage::{Log, LogConfig, LogOptions};

const ROUNDS: usize = 6;

#[test]
fn sigkill_never_loses_an_acknowledged_batch() {
    let seed: u64 =
        std::env::var("SPATE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = temp_dir();
    let mut acked: Vec<(i64, i64, u32)> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spate-logtool"))
            .args([
                "append",
                dir.path().to_str().unwrap(),
                "--flush",
                "always",
                "--batches",
                "1000000",
            ])
            .args(["--concurrency", "4", "--records", "3", "--value-bytes"])
            .arg(rng.gen_range(50..5000).to_string())
            .args(["--segment-bytes", "4198400"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn spate-logtool");
        let stdout = child.stdout.take().unwrap();
        let (first_line, first_line_seen) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.is_empty() {
                    let _ = first_line.send(());
                }
                lines.push(line);
            }
            lines
        });
        // Wait for its first acknowledgement (a loaded machine may take a while to start it),
        // let it run a random while more (bounded), then kill it without warning.
        let _ = first_line_seen.recv_timeout(Duration::from_secs(30));
        let run_for = Duration::from_millis(rng.gen_range(100..700));
        let started = Instant::now();
        while started.elapsed() < run_for {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("round {round}: logtool exited early with {status}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = acked.len();
        for line in lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            // A line cut by the kill is not an acknowledgement the test saw whole.
            if parts.len() == 4 && parts[0] == "ACK" {
                acked.push((
                    parts[1].parse().unwrap(),
                    parts[2].parse().unwrap(),
                    parts[3].parse().unwrap(),
                ));
            }
        }
        assert!(acked.len() > before, "round {round}: no acknowledgements in {run_for:?}");
        verify(dir.path(), &acked, round);
    }
}

fn verify(dir: &std::path::Path, acked: &[(i64, i64, u32)], round: usize) {
    let acked = acked.to_vec();
    let dir = dir.to_path_buf();
    run(async move {
        let log = Log::open(&dir, LogConfig::default(), LogOptions::default()).await.unwrap();
        let end = log.offsets().high_watermark;
        // One sequential pass over the log: base offset -> (next offset, CRC of the whole batch).
        let mut stored = std::collections::HashMap::new();
        let mut offset = 0;
        while offset < end {
            let read = log.read(offset, 4 << 20).await.unwrap();
            for (base, bytes) in split_batches(&read_bytes(&read)) {
                let header = BatchHeader::parse(&bytes).unwrap();
                stored.insert(base, (header.next_offset(), crc32fast::hash(&bytes)));
                offset = header.next_offset();
            }
        }
        for (base, next, crc) in &acked {
            assert!(
                *next <= end,
                "round {round}: acknowledged batch {base}..{next} beyond recovered end {end}"
            );
            let (stored_next, stored_crc) =
                stored.get(base).unwrap_or_else(|| panic!("round {round}: batch {base} missing"));
            assert_eq!(stored_next, next, "round {round}: batch {base} has other records");
            assert_eq!(stored_crc, crc, "round {round}: batch {base} changed");
        }
        println!("round {round}: {} acknowledged batches intact, log end {end}", acked.len());
        log.close().await.unwrap();
    });
}
