//! The machine's own ceilings, measured on the data directory's device and this host, so every
//! result can be printed as a fraction of what the hardware does:
//! - raw direct-IO sequential write (1 MiB `O_DIRECT` writes, one at a time), and reading
//!   that file back (1 MiB `O_DIRECT` reads, 4 in flight),
//! - fdatasync'd write (64 KiB `O_DIRECT` write + `fdatasync`, one at a time) and the
//!   `fdatasync` latency distribution,
//! - loopback TCP (one connection, 1 MiB writes, std threads).

use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::OpenOptions;
use serde::{Deserialize, Serialize};

use crate::stats::new_histogram;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct FsyncLatency {
    pub p50: u64,
    pub p99: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Ceiling {
    pub direct_write_mb_per_sec: f64,
    /// Reading the written file back: 1 MiB `O_DIRECT` reads, [`READ_DEPTH`] at a time.
    #[serde(default)]
    pub direct_read_mb_per_sec: f64,
    pub fdatasync_write_mb_per_sec: f64,
    pub fdatasync_latency_us: FsyncLatency,
    pub loopback_tcp_mb_per_sec: f64,
}

/// How much each measurement moves; small values keep smoke tests fast.
#[derive(Debug, Clone, Copy)]
pub struct CeilingSize {
    pub direct_bytes: u64,
    pub fsync_writes: u64,
    pub tcp_bytes: u64,
}

impl Default for CeilingSize {
    fn default() -> Self {
        CeilingSize { direct_bytes: 1 << 30, fsync_writes: 2000, tcp_bytes: 2 << 30 }
    }
}

/// Measures all three, each bounded in bytes and in time (10 s).
pub fn measure(dir: &Path, size: CeilingSize) -> Result<Ceiling, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = dir.to_path_buf();
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| e.to_string())?;
    let (direct, read, (fsync_mb, fsync_latency)) = executor.run(async move {
        spate_storage::prime_dma_probe(&dir).await.map_err(|e| e.to_string())?;
        let path = dir.join("ceiling-direct.tmp");
        let direct = direct_write(&path, size.direct_bytes).await;
        let read = match direct {
            Ok((_, written)) => direct_read(&path, written).await,
            Err(_) => Ok(0.0),
        };
        let _ = std::fs::remove_file(&path);
        let fsync = fsync_write(&dir, size.fsync_writes).await?;
        Ok::<_, String>((direct?.0, read?, fsync))
    })?;
    let tcp = loopback_tcp(size.tcp_bytes)?;
    Ok(Ceiling {
        direct_write_mb_per_sec: direct,
        direct_read_mb_per_sec: read,
        fdatasync_write_mb_per_sec: fsync_mb,
        fdatasync_latency_us: fsync_latency,
        loopback_tcp_mb_per_sec: tcp,
    })
}

const TIME_MAX: Duration = Duration::from_secs(10);
/// Sequential direct IO in 1 MiB requests.
const CHUNK: usize = 1 << 20;
/// Direct reads in flight at once when measuring the read ceiling.
pub const READ_DEPTH: u64 = 4;

/// Sequential 1 MiB `O_DIRECT` writes of up to `bytes` to `path`: MB/s and bytes written.
async fn direct_write(path: &Path, bytes: u64) -> Result<(f64, u64), String> {
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes && started.elapsed() < TIME_MAX {
        let mut buffer = file.alloc_dma_buffer(CHUNK);
        buffer.as_bytes_mut().fill(0x5a);
        written += file.write_at(buffer, written).await.map_err(|e| e.to_string())? as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = file.close().await;
    Ok((written as f64 / elapsed / 1e6, written))
}

/// 1 MiB `O_DIRECT` reads at a time, each of [`READ_DEPTH`] lanes reading every
/// `READ_DEPTH`-th chunk of the first `bytes` of `path`: the device's catch-up read ceiling.
async fn direct_read(path: &Path, bytes: u64) -> Result<f64, String> {
    let file =
        Rc::new(OpenOptions::new().read(true).dma_open(path).await.map_err(|e| e.to_string())?);
    let started = Instant::now();
    let lanes: Vec<_> = (0..READ_DEPTH)
        .map(|lane| {
            let file = file.clone();
            glommio::spawn_local(async move {
                let mut read = 0u64;
                let mut position = lane * CHUNK as u64;
                // Bounded by the file's size and the time limit.
                while position < bytes && started.elapsed() < TIME_MAX {
                    let got = file.read_at(position, CHUNK).await.map_err(|e| e.to_string())?;
                    if got.is_empty() {
                        break;
                    }
                    read += got.len() as u64;
                    position += READ_DEPTH * CHUNK as u64;
                }
                Ok::<u64, String>(read)
            })
        })
        .collect();
    let mut total = 0u64;
    for lane in lanes {
        total += lane.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(total as f64 / elapsed.max(1e-9) / 1e6)
}

async fn fsync_write(dir: &Path, writes: u64) -> Result<(f64, FsyncLatency), String> {
    const CHUNK: usize = 64 * 1024;
    let path = dir.join("ceiling-fsync.tmp");
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .map_err(|e| e.to_string())?;
    let mut latency = new_histogram();
    let started = Instant::now();
    let mut done = 0u64;
    while done < writes && started.elapsed() < TIME_MAX {
        let mut buffer = file.alloc_dma_buffer(CHUNK);
        buffer.as_bytes_mut().fill(0xa5);
        file.write_at(buffer, done * CHUNK as u64).await.map_err(|e| e.to_string())?;
        let synced = Instant::now();
        file.fdatasync().await.map_err(|e| e.to_string())?;
        let _ = latency.record(synced.elapsed().as_micros().max(1) as u64);
        done += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    let percentiles =
        FsyncLatency { p50: latency.value_at_quantile(0.5), p99: latency.value_at_quantile(0.99) };
    Ok(((done * CHUNK as u64) as f64 / elapsed / 1e6, percentiles))
}

fn loopback_tcp(bytes: u64) -> Result<f64, String> {
    const CHUNK: usize = 1 << 20;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buffer = vec![0u8; CHUNK];
        let mut total = 0u64;
        // Until the writer closes.
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    });
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| e.to_string())?;
    let chunk = vec![0x33u8; CHUNK];
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes && started.elapsed() < TIME_MAX {
        stream.write_all(&chunk).map_err(|e| e.to_string())?;
        sent += CHUNK as u64;
    }
    drop(stream);
    let received =
        reader.join().map_err(|_| "reader panicked".to_string())?.map_err(|e| e.to_string())?;
    Ok(received as f64 / started.elapsed().as_secs_f64() / 1e6)
}
