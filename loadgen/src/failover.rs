//! `spate-loadgen failover`: how long a cluster takes to accept writes again after its leader
//! dies. One run: create a replicated topic (one partition), wait until a leader has every
//! replica in sync, send one message every `interval` with acks=all, kill -9 the leader's
//! process, and measure from the kill to the acknowledgement of the first message *sent after
//! it* (that one can only be acknowledged by a new leader). Runs are bounded in time; the
//! caller restarts the killed broker between runs (`benches/replication.sh`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spate_client::{Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};

/// Longest a run waits for anything (a leader, an acknowledgement).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends before the kill, so the stream is flowing when it comes.
pub const SENDS_BEFORE_KILL: u32 = 100;

#[derive(Debug, Clone)]
pub struct FailoverPlan {
    pub bootstrap: String,
    pub topic: String,
    /// Broker id → process id, to kill the leader.
    pub pids: BTreeMap<i32, u32>,
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct FailoverResult {
    pub killed: i32,
    pub new_leader: i32,
    /// Kill → acknowledgement of the first message sent after the kill.
    pub recovery: Duration,
}

pub async fn run(plan: FailoverPlan) -> Result<FailoverResult, String> {
    let config = ClientConfig {
        bootstrap: plan.bootstrap.clone(),
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    let client = Client::connect(config).await.map_err(|e| e.to_string())?;
    client
        .create_replicated_topic(&plan.topic, 1, 3, &[])
        .await
        .map_err(|e| format!("cannot create {}: {e}", plan.topic))?;
    let leader = wait_leader(&client, &plan.topic, None).await?;
    let pid = *plan.pids.get(&leader).ok_or(format!("no process id for broker {leader}"))?;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::ZERO,
            retry_backoff: Duration::from_millis(10),
            retry_backoff_max: Duration::from_millis(100),
            delivery_timeout: RUN_TIMEOUT,
            request_timeout: Duration::from_secs(2),
            ..ProducerConfig::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let record = || ProducerRecord::new(plan.topic.as_str(), vec![0u8; 100]).with_partition(0);
    for _ in 0..SENDS_BEFORE_KILL {
        let delivery = producer.send(record()).await.map_err(|e| e.to_string())?;
        glommio::spawn_local(delivery).detach();
        glommio::timer::sleep(plan.interval).await;
    }
    // SAFETY: kill only sends a signal; the pid is a broker the caller started.
    if unsafe { libc::kill(pid as i32, libc::SIGKILL) } != 0 {
        return Err(format!("cannot kill broker {leader} (pid {pid})"));
    }
    let killed_at = Instant::now();
    let first = producer.send(record()).await.map_err(|e| e.to_string())?;
    // Keep the stream going while the first post-kill message waits, as a real producer would.
    let keep_sending = {
        let producer = producer.clone();
        let topic = plan.topic.clone();
        let interval = plan.interval;
        glommio::spawn_local(async move {
            while killed_at.elapsed() < RUN_TIMEOUT {
                let record = ProducerRecord::new(topic.as_str(), vec![0u8; 100]).with_partition(0);
                match producer.send(record).await {
                    Ok(delivery) => {
                        glommio::spawn_local(delivery).detach();
                    }
                    Err(_) => break,
                }
                glommio::timer::sleep(interval).await;
            }
        })
    };
    let acked = first.await;
    let recovery = killed_at.elapsed();
    keep_sending.cancel().await;
    acked.map_err(|e| format!("the first message after the kill failed: {e}"))?;
    let new_leader = wait_leader(&client, &plan.topic, Some(leader)).await?;
    // Messages still in flight are abandoned with the executor: only the timing matters here.
    drop(producer);
    Ok(FailoverResult { killed: leader, new_leader, recovery })
}

/// The partition's leader once one is known (and is not `not`), bounded by `RUN_TIMEOUT`.
async fn wait_leader(client: &Client, topic: &str, not: Option<i32>) -> Result<i32, String> {
    let started = Instant::now();
    while started.elapsed() < RUN_TIMEOUT {
        client.invalidate(topic);
        if let Ok(metadata) = client.metadata(Some(&[topic])).await {
            let leader = metadata
                .topics
                .into_iter()
                .flatten()
                .flat_map(|t| t.partitions.into_iter().flatten())
                .find(|p| p.partition == 0)
                .map(|p| p.leader_broker)
                .filter(|l| *l > 0 && Some(*l) != not);
            if let Some(leader) = leader {
                return Ok(leader);
            }
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("no leader for {topic} within {RUN_TIMEOUT:?}"))
}
