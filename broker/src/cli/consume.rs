//! `spate consume`: prints a topic's records in a given format, alone or as a group member.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use spate_client::{Client, Consumer, ConsumerConfig, OffsetReset, Seek, TopicPartition};

use super::{parse_seek, Bootstrap};

#[derive(Args)]
pub(crate) struct ConsumeArgs {
    pub(crate) topic: String,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub(crate) partition: Option<u32>,
    /// earliest, latest, an offset, or @UNIX_MS.
    #[arg(long, default_value = "earliest")]
    pub(crate) from: String,
    /// Stop after printing this many messages.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Start from the group's committed offsets (where it has them) and commit on exit.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// %t topic, %p partition, %o offset, %k key, %v value, %T timestamp, %h headers; \t \n.
    #[arg(long, default_value = "%v\\n")]
    pub(crate) format: String,
    /// Stop after this long with nothing new (unless --follow).
    #[arg(long, default_value_t = 2000)]
    pub(crate) timeout_ms: u64,
    /// Group session timeout: a member silent this long loses its partitions.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) session_timeout_ms: u64,
    /// Static group membership: a stable member name.
    #[arg(long)]
    pub(crate) instance_id: Option<String>,
    /// Group assignor: range, roundrobin or cooperative-sticky.
    #[arg(long, default_value = "range")]
    pub(crate) assignor: String,
    /// Keep waiting for new messages instead of stopping after --timeout-ms.
    #[arg(long)]
    pub(crate) follow: bool,
    #[command(flatten)]
    pub(crate) bootstrap: Bootstrap,
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

pub(crate) async fn consume(client: Client, args: ConsumeArgs) -> Result<(), String> {
    let seek = parse_seek(&args.from, "--from")?;
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
        .map(|p| TopicPartition { topic: args.topic.as_str().into(), partition: p.partition })
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
