//! `spate-produce-bench`: produce throughput and per-message latency (send → acknowledgement,
//! HdrHistogram, every message) against a running broker. A stopgap until `spate-loadgen`.
//!
//!     spate-produce-bench -b 127.0.0.1:9292 --partitions 1 --flush always --megabytes 512
//!
//! `--via-bootstrap` sends every request to the bootstrap address, so partitions owned by the
//! other shard cost a cross-shard hop; by default the client talks to each owning shard directly.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use spate_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};

#[derive(Parser)]
struct Args {
    #[arg(short = 'b', long, default_value = "127.0.0.1:9292")]
    bootstrap: String,
    #[arg(long, default_value = "bench")]
    topic: String,
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Topic flush policy: always, never, interval:MS (the topic is recreated).
    #[arg(long, default_value = "never")]
    flush: String,
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    #[arg(long, default_value_t = 64 * 1024)]
    batch_bytes: usize,
    #[arg(long, default_value_t = 256)]
    megabytes: u64,
    /// Stop after this many seconds even if not all data was sent.
    #[arg(long, default_value_t = 60)]
    seconds_max: u64,
    #[arg(long)]
    via_bootstrap: bool,
    /// Producer buffer: bounds queueing, so latency shows the pipeline rather than the backlog.
    #[arg(long, default_value_t = 1024 * 1024)]
    buffer_bytes: usize,
    /// Batches in flight per partition (more than 1 turns retries off, to keep order).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
}

fn main() {
    let args = Args::parse();
    let result = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .expect("executor")
        .run(run(args));
    if let Err(error) = result {
        eprintln!("spate-produce-bench: {error}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let config = ClientConfig {
        bootstrap: args.bootstrap.clone(),
        use_shard_addresses: !args.via_bootstrap,
        ..ClientConfig::default()
    };
    let client = Client::connect(config).await.map_err(|e| e.to_string())?;
    let _ = client.delete_topic(&args.topic).await;
    client
        .create_topic(&args.topic, args.partitions, &[("flush", &args.flush)])
        .await
        .map_err(|e| e.to_string())?;
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            batch_bytes: args.batch_bytes,
            linger: Duration::from_millis(2),
            buffer_bytes: args.buffer_bytes.max(args.batch_bytes),
            max_in_flight_per_partition: args.in_flight,
            retries: if args.in_flight > 1 { 0 } else { 10 },
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let histogram =
        Rc::new(RefCell::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")));
    let errors = Rc::new(RefCell::new(0u64));
    let value = Bytes::from(vec![b'x'; args.message_bytes]);
    let messages = args.megabytes * 1_000_000 / args.message_bytes as u64;
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let started = Instant::now();
    let mut sent = 0u64;
    // Bounded in count and time.
    while sent < messages && Instant::now() < deadline {
        let partition = (sent % u64::from(args.partitions)) as u32;
        let record = ProducerRecord {
            topic: args.topic.as_str().into(),
            partition: Some(partition),
            value: Some(value.clone()),
            ..Default::default()
        };
        let sent_at = Instant::now();
        let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
        let (histogram, errors) = (histogram.clone(), errors.clone());
        glommio::spawn_local(async move {
            match delivery.await {
                Ok(_) => {
                    let _ =
                        histogram.borrow_mut().record(sent_at.elapsed().as_micros().max(1) as u64);
                }
                Err(_) => *errors.borrow_mut() += 1,
            }
        })
        .detach();
        sent += 1;
    }
    producer.flush().await.map_err(|e| e.to_string())?;
    // Let the last delivery tasks record.
    glommio::timer::sleep(Duration::from_millis(50)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let histogram = histogram.borrow();
    let mb = (sent * args.message_bytes as u64) as f64 / 1e6;
    println!(
        "partitions={} flush={} message={}B batch={}B in-flight={} route={}: {sent} messages, {:.0} MB/s, latency p50 {} µs p99 {} µs p99.9 {} µs max {} µs, errors {}",
        args.partitions,
        args.flush,
        args.message_bytes,
        args.batch_bytes,
        args.in_flight,
        if args.via_bootstrap { "bootstrap(hop)" } else { "direct" },
        mb / elapsed,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max(),
        errors.borrow()
    );
    Ok(())
}
