//! `spate produce`: messages read from stdin, one per line, produced with the client's producer.

use std::io::{BufRead, Write};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use futures_lite::StreamExt;
use spate_broker::limits;
use spate_client::{Acks, Client, Producer, ProducerConfig, ProducerRecord, TopicPartition};

use super::{parse_pairs, Bootstrap};

#[derive(Args)]
pub(crate) struct ProduceArgs {
    pub(crate) topic: String,
    /// Split each line at the first SEP: key before, value after.
    #[arg(long)]
    pub(crate) key_separator: Option<String>,
    /// Send every message to this partition (default: by key, or spread when unkeyed).
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// none, leader or all (with one broker, all = durable per the topic's flush policy).
    #[arg(long, default_value = "all")]
    pub(crate) acks: String,
    /// k=v, repeatable.
    #[arg(long = "header")]
    pub(crate) headers: Vec<String>,
    /// Print one line per input message, in input order: PARTITION<TAB>OFFSET once it is
    /// acknowledged, or PARTITION<TAB>-1<TAB>error if it failed (PARTITION is -1 if none was
    /// chosen).
    #[arg(long)]
    pub(crate) print_offsets: bool,
    /// Give up on a message not acknowledged within this long, retries included (Kafka's
    /// delivery.timeout.ms).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub(crate) delivery_timeout_ms: u64,
    /// Produce as this named idempotent producer: running again under the same name fences the
    /// previous run (its unsent messages fail with ProducerFenced).
    #[arg(long)]
    pub(crate) producer_name: Option<String>,
    /// Plain at-least-once producer: one batch in flight per partition, and a retry after a lost
    /// acknowledgement may write a message twice. (--acks none implies it.)
    #[arg(long, conflicts_with = "producer_name")]
    pub(crate) no_idempotence: bool,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
}

pub(crate) async fn produce(client: Client, args: ProduceArgs) -> Result<(), String> {
    let acks = match args.acks.as_str() {
        "none" | "0" => Acks::None,
        "leader" | "1" => Acks::Leader,
        "all" | "-1" => Acks::All,
        other => return Err(format!("bad --acks {other:?}: expected none, leader or all")),
    };
    let headers = parse_pairs(&args.headers, "--header")?;
    client
        .partition_count(&args.topic)
        .await
        .map_err(|e| format!("cannot produce to {:?}: {e}", args.topic))?;
    let delivery_timeout = Duration::from_millis(args.delivery_timeout_ms);
    let idempotent = !args.no_idempotence && acks != Acks::None;
    if args.producer_name.is_some() && !idempotent {
        return Err("--producer-name needs an idempotent producer (acks leader or all)".into());
    }
    let config = ProducerConfig {
        acks,
        enable_idempotence: idempotent,
        producer_name: args.producer_name.clone(),
        max_in_flight_per_partition: if idempotent { 5 } else { 1 },
        delivery_timeout,
        request_timeout: ProducerConfig::default().request_timeout.min(delivery_timeout),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).map_err(|e| e.to_string())?;
    producer.on_retry(report_retry(delivery_timeout));
    let topic: std::sync::Arc<str> = args.topic.as_str().into();
    let record = |line: String| {
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(Bytes::from(key.to_string())), value.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        ProducerRecord {
            topic: topic.clone(),
            partition: args.partition,
            key,
            value: Some(Bytes::from(value)),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
                .collect(),
            timestamp: None,
        }
    };
    let mut lines = Some(stdin_lines());
    let mut unacked = std::collections::VecDeque::new();
    let mut tally = ProduceTally::default();
    let stdout = std::io::stdout();
    // Bounded by the input; at most PRODUCE_CLI_UNACKED_MAX messages await acknowledgement.
    // Input stops being read at the end of stdin or at the first message that failed for good.
    loop {
        let may_read = lines.is_some() && unacked.len() < limits::PRODUCE_CLI_UNACKED_MAX;
        let event = match (unacked.front_mut(), lines.as_mut()) {
            (Some(oldest), Some(input)) if may_read => {
                let acked = async { Input::Acked(PendingLine::wait(oldest).await) };
                futures_lite::future::or(acked, async { Input::Line(input.next().await) }).await
            }
            (Some(oldest), _) => Input::Acked(PendingLine::wait(oldest).await),
            (None, Some(input)) => Input::Line(input.next().await),
            (None, None) => break,
        };
        match event {
            Input::Line(Some(chunk)) => {
                for line in chunk.map_err(|e| format!("cannot read stdin: {e}"))? {
                    tally.read += 1;
                    unacked.push_back(match producer.send(record(line)).await {
                        Ok(delivery) => PendingLine::Sent(delivery),
                        Err(error) => PendingLine::Refused(Some(error)),
                    });
                }
            }
            Input::Line(None) => {
                lines = None;
                tally.input_ended = true;
            }
            Input::Acked((partition, result)) => {
                unacked.pop_front();
                let mut out = stdout.lock();
                match result {
                    Ok(report) => {
                        tally.acknowledged += 1;
                        if args.print_offsets {
                            let _ = writeln!(out, "{}\t{}", report.partition, report.offset);
                        }
                    }
                    Err(error) => {
                        if tally.first_error.is_none() {
                            eprintln!("spate: message {} failed: {error}", tally.finished() + 1);
                            // Stop reading: what was printed stays a prefix of the input.
                            lines = None;
                        }
                        tally.first_error.get_or_insert(error);
                        tally.failed += 1;
                        if args.print_offsets {
                            let _ = writeln!(out, "{partition}\t-1\terror");
                        }
                    }
                }
                let _ = out.flush();
            }
        }
    }
    producer.close().await.map_err(|e| e.to_string())?;
    match &tally.first_error {
        Some(error) => Err(format!(
            "{} of {} messages read were acknowledged, {} failed (first error: {error}){}",
            tally.acknowledged,
            tally.read,
            tally.failed,
            if tally.input_ended { "" } else { "; the rest of the input was not read" }
        )),
        None => Ok(()),
    }
}

/// Counts of `spate produce`'s messages, for its exit message.
#[derive(Default)]
struct ProduceTally {
    read: u64,
    acknowledged: u64,
    failed: u64,
    first_error: Option<spate_client::ClientError>,
    input_ended: bool,
}

impl ProduceTally {
    fn finished(&self) -> u64 {
        self.acknowledged + self.failed
    }
}

/// Prints an error the producer is retrying after, once per kind of error, so that a user
/// sees at once why nothing is acknowledged (a full disk, a broker that went away).
fn report_retry(
    delivery_timeout: Duration,
) -> impl Fn(&TopicPartition, &spate_client::ClientError) {
    let reported = std::cell::RefCell::new(std::collections::HashSet::new());
    move |target, error| {
        let kind = match error.code() {
            Some(code) => format!("{code:?}"),
            None => format!("{:?}", std::mem::discriminant(error)),
        };
        if reported.borrow_mut().insert(kind) {
            eprintln!(
                "spate: partition {}: {error}; retrying for up to {} s",
                target.partition,
                delivery_timeout.as_secs()
            );
        }
    }
}

/// A line sent to the producer, or refused before it was queued.
enum PendingLine {
    Sent(spate_client::Delivery),
    Refused(Option<spate_client::ClientError>),
}

impl PendingLine {
    /// The line's partition (-1 if none was chosen) and its outcome.
    async fn wait(&mut self) -> (i64, spate_client::Result<spate_client::DeliveryReport>) {
        match self {
            PendingLine::Sent(delivery) => {
                let partition = i64::from(delivery.partition());
                (partition, delivery.await)
            }
            PendingLine::Refused(error) => {
                (-1, Err(error.take().unwrap_or(spate_client::ClientError::Closed)))
            }
        }
    }
}

/// What `spate produce` waits for next.
enum Input {
    Line(Option<std::io::Result<Vec<String>>>),
    Acked((i64, spate_client::Result<spate_client::DeliveryReport>)),
}

/// Stdin's lines, read on their own thread so that a blocking read never stalls the executor
/// (the producer's linger timer and acknowledgements keep running while the user types). Lines
/// come in chunks of those already read (at most `PRODUCE_CLI_LINES_PER_CHUNK_MAX`), so piped
/// input does not pay a wake-up per line.
fn stdin_lines() -> futures_channel::mpsc::Receiver<std::io::Result<Vec<String>>> {
    let (mut sender, receiver) =
        futures_channel::mpsc::channel(limits::PRODUCE_CLI_CHUNKS_QUEUED_MAX);
    std::thread::spawn(move || {
        let mut input = std::io::BufReader::with_capacity(64 * 1024, std::io::stdin());
        let mut ended = false;
        while !ended {
            let mut chunk = Vec::new();
            // The first line may block; further ones are taken only while a whole line is
            // already buffered.
            let read = loop {
                let mut line = String::new();
                match input.read_line(&mut line) {
                    Ok(0) => {
                        ended = true;
                        break Ok(chunk);
                    }
                    Ok(_) => {
                        if line.ends_with('\n') {
                            line.pop();
                            if line.ends_with('\r') {
                                line.pop();
                            }
                        }
                        chunk.push(line);
                    }
                    Err(error) => {
                        ended = true;
                        break Err(error);
                    }
                }
                if chunk.len() >= limits::PRODUCE_CLI_LINES_PER_CHUNK_MAX
                    || !input.buffer().contains(&b'\n')
                {
                    break Ok(chunk);
                }
            };
            if matches!(&read, Ok(chunk) if chunk.is_empty()) {
                return;
            }
            let ready = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
                sender.poll_ready(cx)
            }));
            // A closed receiver means the command is finishing: stop reading.
            if ready.is_err() || sender.start_send(read).is_err() {
                return;
            }
        }
    });
    receiver
}
