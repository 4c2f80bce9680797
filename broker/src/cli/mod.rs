//! The `spate` commands, one file each: `serve` runs a broker; `topic`, `produce`, `consume`,
//! `group` and `offsets` are clients of one. This file holds what the client commands share.
//! (A module of the binary only: the library crate `spate_broker` does not include it.)

pub(crate) mod cluster;
pub(crate) mod consume;
pub(crate) mod group;
pub(crate) mod offsets;
pub(crate) mod produce;
pub(crate) mod serve;
pub(crate) mod topic;

use clap::Args;
use spate_client::{Client, ClientConfig, Seek};

#[derive(Args, Clone)]
pub(crate) struct Bootstrap {
    /// Broker address, or several comma-separated (the first that answers is used).
    #[arg(
        short = 'b',
        long = "bootstrap",
        env = "SPATE_BOOTSTRAP",
        default_value = "127.0.0.1:9292",
        global = true
    )]
    pub(crate) bootstrap: String,
}

/// Runs a client command on a Glommio executor.
pub(crate) fn run_client<F, Fut>(bootstrap: &str, command: F) -> Result<(), String>
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

pub(crate) fn parse_pairs(pairs: &[String], what: &str) -> Result<Vec<(String, String)>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("bad {what} {pair:?}: expected key=value"))
        })
        .collect()
}

/// A position named on the command line (`--from`, `--to`): `earliest`, `latest`, an offset, or
/// `@UNIX_MS`.
pub(crate) fn parse_seek(text: &str, flag: &str) -> Result<Seek, String> {
    Ok(match text {
        "earliest" => Seek::Earliest,
        "latest" => Seek::Latest,
        text if text.starts_with('@') => {
            Seek::Timestamp(text[1..].parse().map_err(|_| format!("bad {flag} {text:?}"))?)
        }
        text => Seek::Offset(text.parse().map_err(|_| {
            format!("bad {flag} {text:?}: expected earliest, latest, OFFSET or @UNIX_MS")
        })?),
    })
}

/// A partition's earliest and latest offsets (0 for what the broker does not report).
pub(crate) async fn offset_range(
    client: &Client,
    topic: &str,
    partition: u32,
) -> Result<(i64, i64), String> {
    let earliest = client
        .list_offset(topic, partition, spate_client::EARLIEST)
        .await
        .map_err(|e| e.to_string())?;
    let latest = client
        .list_offset(topic, partition, spate_client::LATEST)
        .await
        .map_err(|e| e.to_string())?;
    Ok((earliest.unwrap_or(0), latest.unwrap_or(0)))
}

/// How long a command waits for each broker's own view of the partitions it leads.
const LEADER_VIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// In a cluster, every live broker's account of the partitions it leads (of `topic`, or of
/// every topic): only a leader knows its in-sync replicas, high watermark and followers' log
/// ends. Each broker gets `LEADER_VIEW_TIMEOUT`, so one that hangs (paused, overloaded) does
/// not hold the command up. Returns the brokers that answered and the partitions each leads;
/// both empty on a single broker.
pub(crate) async fn led_partitions(
    client: &Client,
    brokers: &[spate_protocol::wire::BrokerInfoT],
    topic: Option<&str>,
) -> (Vec<i32>, Vec<(i32, String, spate_protocol::wire::PartitionMetadataT)>) {
    let (mut answered, mut led) = (Vec::new(), Vec::new());
    if brokers.len() < 2 {
        return (answered, led);
    }
    for broker in brokers.iter().filter(|b| b.alive) {
        let Some(host) = broker.host.as_deref() else { continue };
        let patience = client.config().request_timeout.min(LEADER_VIEW_TIMEOUT);
        let config = spate_client::ClientConfig {
            bootstrap: format!("{host}:{}", broker.port),
            request_timeout: patience,
            connect_timeout: patience,
            ..client.config().clone()
        };
        let Ok(peer) = Client::connect(config).await else { continue };
        let topics = topic.map(|t| [t]);
        if let Ok(metadata) = peer.metadata(topics.as_ref().map(|t| &t[..])).await {
            answered.push(broker.broker_id);
            for topic in metadata.topics.into_iter().flatten() {
                let name = topic.name.unwrap_or_default();
                for partition in topic.partitions.into_iter().flatten() {
                    if partition.leader_broker == broker.broker_id && partition.high_watermark >= 0
                    {
                        led.push((broker.broker_id, name.clone(), partition));
                    }
                }
            }
        }
        peer.close();
    }
    (answered, led)
}
