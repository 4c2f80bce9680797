//! `spate serve`: runs a broker with the configuration from flags, a config file and defaults.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use spate_broker::config::{self, BrokerConfig};
use spate_broker::limits;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Where the broker keeps its data (default ./spate-data; relative to the working directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Client address (default 127.0.0.1:9292); shard i also listens on port + 1 + i.
    #[arg(long)]
    listen: Option<String>,
    /// Number of shards (cores), taken from the start of the allowed CPUs.
    #[arg(long)]
    cores: Option<usize>,
    /// CPUs to run shards on, e.g. 0-3,6.
    #[arg(long)]
    cpuset: Option<String>,
    /// TOML configuration file; flags override it (see README, Configuration).
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
    /// Where flush=never partitions journal unwritten batches (a tmpfs directory), so they are
    /// acknowledged before their device write and survive a broker crash; `none` to
    /// acknowledge after the write (default: /dev/shm/spate-<id of the data dir>).
    #[arg(long)]
    journal_dir: Option<String>,
    /// This broker's id in a cluster (1, 2, ...); must match its certificate.
    #[arg(long)]
    node_id: Option<u32>,
    /// UDP address of this broker's QUIC endpoint for its peers, e.g. 127.0.0.1:9500.
    #[arg(long)]
    replication_listen: Option<String>,
    /// Every broker of the cluster as ID@HOST:PORT (their --replication-listen), comma-separated.
    #[arg(long)]
    peers: Option<String>,
    /// The cluster CA certificate (PEM); peers must present certificates it signed.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This broker's certificate (PEM), naming its broker id (`spate cluster certs` makes them).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This broker's private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

pub(crate) fn serve(args: ServeArgs) -> Result<(), String> {
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
    let journal_dir = config::journal_dir(
        args.journal_dir.as_deref().or(file.journal_dir.as_deref()),
        &std::path::absolute(&data_dir).map_err(|e| e.to_string())?,
    );
    let cluster = config::cluster(
        args.node_id.or(file.node_id),
        args.replication_listen.as_deref().or(file.replication_listen.as_deref()),
        args.peers.as_deref().or(file.peers.as_deref()),
        [
            args.tls_ca.or(file.tls_ca),
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ],
    )?;
    let config = BrokerConfig {
        cluster,
        membership: None,
        replica_views: None,
        data_dir,
        listen,
        cpus,
        metrics_listen,
        layout,
        log_defaults,
        request_memory_bytes,
        journal_dir,
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
