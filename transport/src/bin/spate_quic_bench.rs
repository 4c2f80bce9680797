//! `spate-quic-bench`: pushes bytes over one QUIC connection between two Glommio executors on
//! two cores (mutual TLS, one stream, length-prefixed messages) and prints MB/s.
//!
//! ```text
//! cargo run --release -p spate-transport --bin spate-quic-bench -- [--bytes N] [--message-bytes N]
//! ```

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use spate_transport::certs::generate_cluster;
use spate_transport::{BrokerCredentials, Endpoint};

const USAGE: &str = "spate-quic-bench: throughput of one QUIC connection between two cores

Options:
  --bytes N           total bytes to send (default 1073741824 = 1 GiB)
  --message-bytes N   bytes per message (default 1048576 = 1 MiB)
  --help              this text";

fn main() {
    let (mut total_bytes, mut message_bytes) = (1usize << 30, 1usize << 20);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> usize {
            let v = args.next().unwrap_or_else(|| fail(&format!("{name} needs a value")));
            v.parse().unwrap_or_else(|_| fail(&format!("{name}: not a number: {v}")))
        };
        match arg.as_str() {
            "--bytes" => total_bytes = value("--bytes"),
            "--message-bytes" => message_bytes = value("--message-bytes"),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => fail(&format!("unknown argument {other}")),
        }
    }
    if message_bytes == 0 || message_bytes > spate_transport::limits::FRAME_BYTES_MAX {
        fail("--message-bytes must be in 1..=FRAME_BYTES_MAX");
    }
    let messages = total_bytes.div_ceil(message_bytes);

    let cluster = generate_cluster(2).expect("certificates");
    let creds = |id: u32| {
        let b = &cluster.brokers[id as usize - 1];
        BrokerCredentials::from_pem(id, &cluster.ca_pem, &b.cert_pem, &b.key_pem).unwrap()
    };
    let (server_creds, client_creds) = (creds(2), creds(1));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();

    let receiver = LocalExecutorBuilder::new(Placement::Fixed(1))
        .name("receiver")
        .spawn(move || async move {
            let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &server_creds).unwrap();
            addr_tx.send(endpoint.local_addr().unwrap()).unwrap();
            let peer = endpoint.accept().await.unwrap();
            let stream = peer.accept_stream().await.unwrap();
            let mut received_bytes = 0usize;
            while let Some(message) = stream.recv().await.unwrap() {
                received_bytes += message.len();
            }
            stream.send(Bytes::from_static(b"done")).await.unwrap();
            stream.finish();
            peer.closed().await;
            received_bytes
        })
        .unwrap();

    let sender = LocalExecutorBuilder::new(Placement::Fixed(0))
        .name("sender")
        .spawn(move || async move {
            let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &client_creds).unwrap();
            let server = addr_rx.recv().unwrap();
            let peer = endpoint.connect(server, 2).await.unwrap();
            let stream = peer.open_stream().await.unwrap();
            let message = Bytes::from(vec![0x5a; message_bytes]);
            let start = Instant::now();
            for _ in 0..messages {
                // A clone of `Bytes` is a reference count: the bench measures the transport.
                stream.send(message.clone()).await.unwrap();
            }
            stream.finish();
            let done = stream.recv().await.unwrap();
            let elapsed = start.elapsed();
            assert_eq!(done.as_deref(), Some(&b"done"[..]));
            drop(stream);
            drop(peer);
            endpoint.close().await;
            elapsed
        })
        .unwrap();

    let elapsed = sender.join().unwrap();
    let received_bytes = receiver.join().unwrap();
    assert_eq!(received_bytes, messages * message_bytes);
    let seconds = elapsed.as_secs_f64();
    println!(
        "{} messages of {} bytes, {} bytes in {:.3} s: {:.0} MB/s ({:.0} MiB/s)",
        messages,
        message_bytes,
        received_bytes,
        seconds,
        received_bytes as f64 / seconds / 1e6,
        received_bytes as f64 / seconds / (1024.0 * 1024.0),
    );
}

fn fail(message: &str) -> ! {
    eprintln!("{message}\n\n{USAGE}");
    std::process::exit(2);
}
