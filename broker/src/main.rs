//! `spate`: the broker (`spate serve`) and the command-line client, in one binary.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use futures_lite::StreamExt;
use spate_broker::config::{self, BrokerConfig};
use spate_broker::limits;
use spate_client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset, Producer, ProducerConfig,
    ProducerRecord, Seek, TopicPartition,
};

#[derive(Parser)]
#[command(name = "spate", version, about = "Spate: a thread-per-core streaming log broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Bootstrap {
    /// Broker address.
    #[arg(
        short = 'b',
        long = "bootstrap",
        env = "SPATE_BOOTSTRAP",
        default_value = "127.0.0.1:9292",
        global = true
    )]
    bootstrap: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(ServeArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Produce messages read from stdin, one per line.
    Produce(ProduceArgs),
    /// Print messages of a topic.
    Consume(ConsumeArgs),
    /// List and describe consumer groups; reset their offsets.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
    /// Check the machine, apply fixes, plan per-core layouts.
    Tune {
        #[command(subcommand)]
        command: spate_broker::tune::TuneCommand,
    },
    /// Print PARTITION<TAB>EARLIEST<TAB>LATEST for each partition of a topic.
    Offsets {
        topic: String,
        #[command(flatten)]
        bootstrap: Bootstrap,
    },
}

#[derive(Args)]
struct ServeArgs {
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client address; shard i also listens on port + 1 + i.
    #[arg(long)]
    listen: Option<String>,
    /// Number of shards (cores), taken from the start of the allowed CPUs.
    #[arg(long)]
    cores: Option<usize>,
    /// CPUs to run shards on, e.g. 0-3,6.
    #[arg(long)]
    cpuset: Option<String>,
    #[arg(long)]
    config: Option<PathBuf>,
    /// Partition-to-shard layout file (TOML).
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// trace, debug, info, warn or error (RUST_LOG overrides).
    #[arg(long)]
    log_level: Option<String>,
    /// Bytes of request frames one shard holds at once (16 MiB..256 MiB, default 256 MiB);
    /// connections stop reading while it is used up.
    #[arg(long)]
    request_memory_bytes: Option<usize>,
    /// Cut a connection that started a frame and did not finish it within this long
    /// (100..=30000, default 30000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=30_000))]
    frame_read_timeout_ms: Option<u64>,
}

#[derive(Subcommand)]
enum TopicCommand {
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// key=value, repeatable: retention.ms, retention.bytes, segment.bytes, segment.ms, flush.
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    List,
    Describe {
        name: String,
    },
    Alter {
        name: String,
        #[arg(long = "config", required = true)]
        configs: Vec<String>,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// One group per line: name, state.
    List,
    /// State, members and their partitions, and per partition the committed offset, log end
    /// and lag.
    Describe { group: String },
    /// Delete the group and its committed offsets (refused while the group has members).
    Delete { group: String },
    /// Set the group's committed offsets for a topic (refused while the group has members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or @UNIX_MS.
        #[arg(long)]
        to: String,
    },
}

#[derive(Args)]
struct ProduceArgs {
    topic: String,
    /// Split each line at the first SEP: key before, value after.
    #[arg(long)]
    key_separator: Option<String>,
    #[arg(long)]
    partition: Option<u32>,
    #[arg(long, default_value = "all")]
    acks: String,
    /// k=v, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Print one line per input message, in input order: PARTITION<TAB>OFFSET once it is
    /// acknowledged, or PARTITION<TAB>-1<TAB>error if it failed (PARTITION is -1 if none was
    /// chosen).
    #[arg(long)]
    print_offsets: bool,
    /// Give up on a message not acknowledged within this long, retries included (Kafka's
    /// delivery.timeout.ms).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    delivery_timeout_ms: u64,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

#[derive(Args)]
struct ConsumeArgs {
    topic: String,
    #[arg(long)]
    partition: Option<u32>,
    /// earliest, latest, an offset, or @UNIX_MS.
    #[arg(long, default_value = "earliest")]
    from: String,
    #[arg(long)]
    count: Option<u64>,
    /// Start from the group's committed offsets (where it has them) and commit on exit.
    #[arg(long)]
    group: Option<String>,
    /// %t topic, %p partition, %o offset, %k key, %v value, %T timestamp, %h headers; \t \n.
    #[arg(long, default_value = "%v\\n")]
    format: String,
    /// Stop after this long with nothing new (unless --follow).
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Group session timeout: a member silent this long loses its partitions.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Static group membership: a stable member name.
    #[arg(long)]
    instance_id: Option<String>,
    /// Group assignor: range, roundrobin or cooperative-sticky.
    #[arg(long, default_value = "range")]
    assignor: String,
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    bootstrap: Bootstrap,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic { command, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| topic(client, command))
        }
        Command::Produce(args) => {
            let bootstrap = args.bootstrap.bootstrap.clone();
            run_client(&bootstrap, |client| produce(client, args))
        }
        Command::Consume(args) => {
            let bootstrap = args.bootstrap.bootstrap.clone();
            run_client(&bootstrap, |client| consume(client, args))
        }
        Command::Tune { command } => spate_broker::tune::run(command),
        Command::Group { command, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| group(client, command))
        }
        Command::Offsets { topic, bootstrap } => {
            run_client(&bootstrap.bootstrap, |client| offsets(client, topic))
        }
    };
    if let Err(message) = result {
        eprintln!("spate: {message}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let file = match &args.config {
        Some(path) => config::load_file(path)?,
        None => config::FileConfig::default(),
    };
    spate_broker::logging::init(
        args.log_level.as_deref().or(file.log_level.as_deref()).unwrap_or("info"),
    );
    // A shard that panics must take the process down (fail-stop: restart, then recovery
    // decides), never leave a broker that accepts connections but no longer serves a shard.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("./spate-data"));
    let listen_text = args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:9292".into());
    let listen = std::net::ToSocketAddrs::to_socket_addrs(&listen_text)
        .map_err(|e| format!("bad --listen {listen_text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("bad --listen {listen_text:?}"))?;
    let layout = match args.layout.or(file.layout) {
        Some(path) => config::load_layout(&path)?,
        None => config::Layout::default(),
    };
    let mut cpus = match args.cpuset.or(file.cpuset).or(layout.cpuset.clone()) {
        Some(set) => config::parse_cpuset(&set)?,
        None => config::allowed_cpus(),
    };
    if let Some(cores) = args.cores.or(file.cores) {
        if cores == 0 || cores > cpus.len() {
            return Err(format!(
                "--cores {cores}: between 1 and {} CPUs are available",
                cpus.len()
            ));
        }
        cpus.truncate(cores);
    }
    let log_defaults = config::log_defaults(&file.defaults)?;
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", data_dir.display()))?;
    let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
        Some(text) => Some(
            std::net::ToSocketAddrs::to_socket_addrs(&text)
                .map_err(|e| format!("bad --metrics-listen {text:?}: {e}"))?
                .next()
                .ok_or_else(|| format!("bad --metrics-listen {text:?}"))?,
        ),
        None => None,
    };
    let request_memory_bytes =
        config::request_memory_bytes(args.request_memory_bytes.or(file.request_memory_bytes))?;
    let config = BrokerConfig {
        data_dir,
        listen,
        cpus,
        metrics_listen,
        layout,
        log_defaults,
        request_memory_bytes,
        frame_read_timeout: Duration::from_millis(
            args.frame_read_timeout_ms
                .or(file.frame_read_timeout_ms)
                .unwrap_or(limits::FRAME_READ_TIMEOUT_MS)
                .clamp(limits::FRAME_READ_TIMEOUT_MS_MIN, limits::FRAME_READ_TIMEOUT_MS),
        ),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    spate_broker::server::run(config, stop.clone())?;
    if stop.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err("the broker stopped unexpectedly".into())
    }
}

/// Runs a client command on a Glommio executor.
fn run_client<F, Fut>(bootstrap: &str, command: F) -> Result<(), String>
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    spate_broker::logging::init("warn");
    // A client command writing into a closed pipe (`spate consume ... | head`) ends quietly,
    // as Unix tools do. (The server keeps Rust's default of ignoring SIGPIPE.)
    // SAFETY: restoring the default disposition of a signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .make()
        .map_err(|e| format!("cannot start: {e}"))?;
    let bootstrap = bootstrap.to_string();
    executor.run(async move {
        let config = ClientConfig {
            bootstrap: bootstrap.clone(),
            client_id: "spate-cli".into(),
            ..ClientConfig::default()
        };
        let client = Client::connect(config).await.map_err(|e| {
            format!("cannot reach broker at {bootstrap}: {e} (is `spate serve` running there?)")
        })?;
        command(client).await
    })
}

fn parse_pairs(pairs: &[String], what: &str) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("bad {what} {pair:?}: expected key=value"))
        })
        .collect()
}

async fn topic(client: Client, command: TopicCommand) -> Result<(), String> {
    match command {
        TopicCommand::Create { name, partitions, configs } => {
            let configs = parse_pairs(&configs, "--config")?;
            let refs: Vec<(&str, &str)> =
                configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .create_topic(&name, partitions, &refs)
                .await
                .map_err(|e| format!("cannot create topic {name:?}: {e}"))?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            let metadata = client.metadata(None).await.map_err(|e| e.to_string())?;
            for topic in metadata.topics.into_iter().flatten() {
                let partitions = topic.partitions.map_or(0, |p| p.len());
                println!("{}\t{partitions} partitions", topic.name.unwrap_or_default());
            }
        }
        TopicCommand::Describe { name } => {
            let partitions = client
                .partitions(&name)
                .await
                .map_err(|e| format!("cannot describe topic {name:?}: {e}"))?;
            let configs = client.describe_configs(&name).await.map_err(|e| e.to_string())?;
            let settings: Vec<String> =
                configs.iter().map(|(k, v, _)| format!("{k}={v}")).collect();
            println!("topic {name}\t{}", settings.join(" "));
            for partition in partitions {
                let start = client
                    .list_offset(&name, partition.partition, spate_client::EARLIEST)
                    .await
                    .map_err(|e| e.to_string())?;
                let end = client
                    .list_offset(&name, partition.partition, spate_client::LATEST)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "partition {}\tshard {}\tstart {}\tend {}",
                    partition.partition,
                    partition.shard,
                    start.unwrap_or(0),
                    end.unwrap_or(0)
                );
            }
        }
        TopicCommand::Alter { name, configs } => {
            let configs = parse_pairs(&configs, "--config")?;
            let refs: Vec<(&str, &str)> =
                configs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client
                .alter_configs(&name, &refs)
                .await
                .map_err(|e| format!("cannot alter topic {name:?}: {e}"))?;
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client
                .delete_topic(&name)
                .await
                .map_err(|e| format!("cannot delete topic {name:?}: {e}"))?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

async fn produce(client: Client, args: ProduceArgs) -> Result<(), String> {
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
    let config = ProducerConfig {
        acks,
        delivery_timeout,
        request_timeout: ProducerConfig::default().request_timeout.min(delivery_timeout),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).map_err(|e| e.to_string())?;
    producer.on_retry(report_retry(delivery_timeout));
    let record = |line: String| {
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(Bytes::from(key.to_string())), value.to_string()),
                None => (None, line),
            },
            None => (None, line),
        };
        ProducerRecord {
            topic: args.topic.clone(),
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

fn render(format: &str, record: &spate_client::ConsumerRecord) -> String {
    let text = |b: &Option<Bytes>| {
        b.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
    };
    let mut out = String::new();
    let mut chars = format.chars();
    // Bounded by the format string.
    while let Some(c) = chars.next() {
        match c {
            '%' => match chars.next() {
                Some('t') => out.push_str(&record.topic),
                Some('p') => out.push_str(&record.partition.to_string()),
                Some('o') => out.push_str(&record.offset.to_string()),
                Some('k') => out.push_str(&text(&record.key)),
                Some('v') => out.push_str(&text(&record.value)),
                Some('T') => out.push_str(&record.timestamp.to_string()),
                Some('h') => {
                    let headers: Vec<String> =
                        record.headers.iter().map(|(k, v)| format!("{k}={}", text(v))).collect();
                    out.push_str(&headers.join(","));
                }
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            },
            '\\' => match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

async fn consume(client: Client, args: ConsumeArgs) -> Result<(), String> {
    let seek = match args.from.as_str() {
        "earliest" => Seek::Earliest,
        "latest" => Seek::Latest,
        text if text.starts_with('@') => {
            Seek::Timestamp(text[1..].parse().map_err(|_| format!("bad --from {text:?}"))?)
        }
        text => Seek::Offset(text.parse().map_err(|_| {
            format!("bad --from {text:?}: expected earliest, latest, OFFSET or @UNIX_MS")
        })?),
    };
    let partitions = client
        .partitions(&args.topic)
        .await
        .map_err(|e| format!("cannot consume {:?}: {e}", args.topic))?;
    if args.group.is_some() && args.partition.is_none() {
        return consume_in_group(client, args, seek).await;
    }
    let assigned: Vec<TopicPartition> = partitions
        .iter()
        .filter(|p| args.partition.is_none_or(|wanted| wanted == p.partition))
        .map(|p| TopicPartition { topic: args.topic.clone(), partition: p.partition })
        .collect();
    if assigned.is_empty() {
        return Err(format!(
            "topic {:?} has no partition {}",
            args.topic,
            args.partition.unwrap_or(0)
        ));
    }
    let config = ConsumerConfig {
        group_id: args.group.clone(),
        offset_reset: OffsetReset::Earliest,
        fetch_max_wait: Duration::from_millis(args.timeout_ms.clamp(10, 500)),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client.clone(), config);
    consumer.assign(&assigned).map_err(|e| e.to_string())?;
    let committed = match &args.group {
        Some(group) => {
            client.committed_offsets(group, &args.topic).await.map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    for tp in &assigned {
        let from_group = committed.iter().find(|(p, _)| *p == tp.partition).and_then(|(_, o)| *o);
        consumer.seek(tp, from_group.map_or(seek, Seek::Offset)).map_err(|e| e.to_string())?;
    }
    print_records(&mut consumer, &args).await?;
    if args.group.is_some() {
        consumer.commit().await.map_err(|e| format!("cannot commit offsets: {e}"))?;
    }
    Ok(())
}

async fn group(client: Client, command: GroupCommand) -> Result<(), String> {
    use spate_protocol::wire::{self, RequestBodyT, ResponseBodyT};
    match command {
        GroupCommand::List => {
            let response = client
                .call(RequestBodyT::ListGroupsRequest(Box::default()))
                .await
                .map_err(|e| e.to_string())?;
            let ResponseBodyT::ListGroupsResponse(listed) = response else {
                return Err("unexpected response".into());
            };
            for group in listed.groups.into_iter().flatten() {
                println!(
                    "{}\t{}",
                    group.group_id.unwrap_or_default(),
                    group.state.unwrap_or_default()
                );
            }
        }
        GroupCommand::Describe { group } => {
            let request =
                RequestBodyT::DescribeGroupsRequest(Box::new(wire::DescribeGroupsRequestT {
                    groups: Some(vec![group.clone()]),
                }));
            let ResponseBodyT::DescribeGroupsResponse(described) =
                client.call(request).await.map_err(|e| e.to_string())?
            else {
                return Err("unexpected response".into());
            };
            let described =
                described.groups.into_iter().flatten().next().ok_or("no group in the response")?;
            let members = described.members.unwrap_or_default();
            println!(
                "group {group}\tstate {}\tprotocol {}\tmembers {}",
                described.state.unwrap_or_default(),
                described.protocol.unwrap_or_else(|| "-".into()),
                members.len()
            );
            let mut owner = std::collections::BTreeMap::new();
            for member in &members {
                let id = member.member_id.clone().unwrap_or_default();
                let assignment =
                    String::from_utf8_lossy(member.assignment.as_deref().unwrap_or_default())
                        .into_owned();
                println!("member {id}\t{assignment}");
                for item in assignment.split(',').filter(|s| !s.is_empty()) {
                    owner.insert(item.to_string(), id.clone());
                }
            }
            let committed = client.group_offsets(&group).await.map_err(|e| e.to_string())?;
            let mut rows: std::collections::BTreeMap<(String, u32), Option<i64>> =
                committed.into_iter().map(|(t, p, o)| ((t, p), Some(o))).collect();
            for item in owner.keys() {
                if let Some((topic, partition)) =
                    item.rsplit_once(':').and_then(|(t, p)| Some((t.to_string(), p.parse().ok()?)))
                {
                    rows.entry((topic, partition)).or_insert(None);
                }
            }
            println!("TOPIC\tPARTITION\tCOMMITTED\tLOG-END\tLAG\tOWNER");
            for ((topic, partition), committed) in rows {
                let end = client
                    .list_offset(&topic, partition, spate_client::LATEST)
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0);
                let owner = owner
                    .get(&format!("{topic}:{partition}"))
                    .cloned()
                    .unwrap_or_else(|| "-".into());
                match committed {
                    Some(offset) => println!(
                        "{topic}\t{partition}\t{offset}\t{end}\t{}\t{owner}",
                        (end - offset).max(0)
                    ),
                    None => println!("{topic}\t{partition}\t-\t{end}\t-\t{owner}"),
                }
            }
        }
        GroupCommand::Delete { group } => {
            let request = RequestBodyT::DeleteGroupsRequest(Box::new(wire::DeleteGroupsRequestT {
                groups: Some(vec![group.clone()]),
            }));
            let ResponseBodyT::DeleteGroupsResponse(response) =
                client.call(request).await.map_err(|e| e.to_string())?
            else {
                return Err("unexpected response".into());
            };
            let result =
                response.groups.into_iter().flatten().next().ok_or("no result in the response")?;
            match result.error_code {
                wire::ErrorCode::None => println!("deleted group {group}"),
                wire::ErrorCode::NonEmptyGroup => {
                    return Err(format!(
                        "cannot delete group {group:?}: it has active members; stop them first"
                    ))
                }
                code => {
                    return Err(format!(
                        "cannot delete group {group:?}: {:?} {}",
                        code,
                        result.error_message.unwrap_or_default()
                    ))
                }
            }
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            let partitions = client
                .partitions(&topic)
                .await
                .map_err(|e| format!("cannot reset offsets of {topic:?}: {e}"))?;
            let mut offsets = Vec::new();
            for partition in partitions {
                let target = match to.as_str() {
                    "earliest" => spate_client::EARLIEST,
                    "latest" => spate_client::LATEST,
                    text if text.starts_with('@') => {
                        text[1..].parse().map_err(|_| format!("bad --to {text:?}"))?
                    }
                    text => {
                        let offset: i64 = text.parse().map_err(|_| {
                            format!(
                                "bad --to {text:?}: expected earliest, latest, OFFSET or @UNIX_MS"
                            )
                        })?;
                        offsets.push((topic.clone(), partition.partition, offset));
                        continue;
                    }
                };
                let offset = match client
                    .list_offset(&topic, partition.partition, target)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(offset) => offset,
                    None => client
                        .list_offset(&topic, partition.partition, spate_client::LATEST)
                        .await
                        .map_err(|e| e.to_string())?
                        .unwrap_or(0),
                };
                offsets.push((topic.clone(), partition.partition, offset));
            }
            // Generation -1 outside membership: the coordinator refuses it while members exist.
            client.commit_offsets(&group, -1, "", &offsets).await.map_err(|e| match e.code() {
                Some(wire::ErrorCode::RebalanceInProgress) => format!("cannot reset offsets of group {group:?}: it has active members; stop them first"),
                _ => format!("cannot reset offsets of group {group:?}: {e}"),
            })?;
            for (topic, partition, offset) in offsets {
                println!("{topic}\t{partition}\t{offset}");
            }
        }
    }
    Ok(())
}

/// Where `spate consume` gets records: a plain consumer or a group member.
trait RecordSource {
    async fn poll(
        &mut self,
    ) -> Result<Vec<spate_client::ConsumerRecord>, spate_client::ClientError>;
    fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<(), spate_client::ClientError>;
}

impl RecordSource for Consumer {
    async fn poll(
        &mut self,
    ) -> Result<Vec<spate_client::ConsumerRecord>, spate_client::ClientError> {
        Consumer::poll(self).await
    }
    fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<(), spate_client::ClientError> {
        Consumer::seek(self, tp, seek)
    }
}

impl RecordSource for spate_client::GroupConsumer {
    async fn poll(
        &mut self,
    ) -> Result<Vec<spate_client::ConsumerRecord>, spate_client::ClientError> {
        spate_client::GroupConsumer::poll(self).await
    }
    fn seek(&mut self, tp: &TopicPartition, seek: Seek) -> Result<(), spate_client::ClientError> {
        spate_client::GroupConsumer::seek(self, tp, seek)
    }
}

/// Prints records in `--format` until `--count`, or `--timeout-ms` without records (unless
/// `--follow`). A record fetched but not printed is rewound, so a commit does not skip it.
async fn print_records(source: &mut impl RecordSource, args: &ConsumeArgs) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let limit = args.count.unwrap_or(u64::MAX);
    while printed < limit
        && (args.follow || last_record.elapsed() < Duration::from_millis(args.timeout_ms))
    {
        let records = source.poll().await.map_err(|e| e.to_string())?;
        let mut out = stdout.lock();
        for record in records {
            if printed >= limit {
                let tp =
                    TopicPartition { topic: record.topic.clone(), partition: record.partition };
                let _ = source.seek(&tp, Seek::Offset(record.offset));
                break;
            }
            out.write_all(render(&args.format, &record).as_bytes())
                .map_err(|e| format!("cannot write: {e}"))?;
            printed += 1;
            last_record = Instant::now();
        }
        out.flush().map_err(|e| format!("cannot write: {e}"))?;
    }
    Ok(())
}

/// `spate consume --group`: joins the group, prints its share, commits what it printed, leaves.
async fn consume_in_group(client: Client, args: ConsumeArgs, seek: Seek) -> Result<(), String> {
    let group = args.group.clone().expect("checked by the caller");
    let mut config = spate_client::GroupConfig::new(group.clone(), vec![args.topic.clone()]);
    config.start = seek;
    config.assignor = args.assignor.clone();
    config.instance_id = args.instance_id.clone();
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.rebalance_timeout = Duration::from_millis(args.session_timeout_ms);
    config.heartbeat_interval =
        Duration::from_millis((args.session_timeout_ms / 5).clamp(100, 3000));
    config.auto_commit = Some(Duration::from_secs(1));
    config.consumer = ConsumerConfig {
        fetch_max_wait: Duration::from_millis(args.timeout_ms.clamp(10, 200)),
        ..ConsumerConfig::default()
    };
    let mut member = spate_client::GroupConsumer::subscribe(client, config)
        .await
        .map_err(|e| format!("cannot join group {group:?}: {e}"))?;
    print_records(&mut member, &args).await?;
    member.close().await.map_err(|e| format!("cannot commit and leave group {group:?}: {e}"))
}

async fn offsets(client: Client, topic: String) -> Result<(), String> {
    let partitions = client
        .partitions(&topic)
        .await
        .map_err(|e| format!("cannot read offsets of {topic:?}: {e}"))?;
    for partition in partitions {
        let earliest = client
            .list_offset(&topic, partition.partition, spate_client::EARLIEST)
            .await
            .map_err(|e| e.to_string())?;
        let latest = client
            .list_offset(&topic, partition.partition, spate_client::LATEST)
            .await
            .map_err(|e| e.to_string())?;
        println!("{}\t{}\t{}", partition.partition, earliest.unwrap_or(0), latest.unwrap_or(0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_render() {
        let record = spate_client::ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp: 99,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("a".into(), Some(Bytes::from_static(b"1")))],
        };
        assert_eq!(render("%t/%p@%o %k=%v %T %h\\n", &record), "t/2@7 k=v 99 a=1\n");
        assert_eq!(render("100%%\\t%x", &record), "100%\t%x");
    }
}
