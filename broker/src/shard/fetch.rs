//! Fetch: reads from each partition's owner under a per-shard memory budget, and the long-poll
//! wait for data (appends wake local waiters; other shards answer an `AwaitData` call).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use spate_protocol::wire::{self, ErrorCode, ResponseBodyT};
use spate_storage::LogBytes;

use super::{
    envelope_error, ok_reply, push_into, Failure, FetchOutcome, Payload, Reply, Shard, ShardMsg,
};
use crate::limits;

/// Wakes a long-polling fetch once, from whichever of its partitions gets data first.
pub(super) type Wakeup = Rc<RefCell<Option<oneshot::Sender<()>>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Registered {
    Waiting,
    /// A partition already has data past its fetch offset: no need to wait.
    HasData,
}

impl Shard {
    pub(super) fn wake_fetchers(&self, topic: &str, partition: u32) {
        if self.waiters.borrow().is_empty() {
            return; // No fetch is waiting: no key to build.
        }
        let waiters = self.waiters.borrow_mut().remove(&(topic.to_string(), partition));
        for wakeup in waiters.into_iter().flatten() {
            if let Some(sender) = wakeup.borrow_mut().take() {
                let _ = sender.send(());
            }
        }
    }

    pub(super) async fn fetch_local(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> FetchOutcome<LogBytes> {
        let readable = match self.readable(topic, partition) {
            Ok(readable) => readable,
            Err(failure) => {
                return FetchOutcome {
                    result: Err(failure),
                    high_watermark: -1,
                    log_start_offset: -1,
                }
            }
        };
        let log = &readable.log;
        let offsets = log.offsets();
        let read = match readable.upper {
            None => log.read(offset, max_bytes).await,
            Some(upper) => log.read_bounded(offset, max_bytes, upper).await,
        };
        match read {
            Ok(read) => FetchOutcome {
                result: Ok(read.chunks),
                high_watermark: read.high_watermark,
                log_start_offset: read.log_start_offset,
            },
            Err(error) => FetchOutcome {
                result: Err(error.into()),
                high_watermark: readable.end(),
                log_start_offset: offsets.start,
            },
        }
    }

    pub(super) async fn fetch_partition(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> FetchOutcome<Payload> {
        match self.owner(topic, partition) {
            None => FetchOutcome {
                result: Err(Failure::unknown(topic, partition)),
                high_watermark: -1,
                log_start_offset: -1,
            },
            Some(owner) if owner == self.id => {
                let outcome = self.fetch_local(topic, partition, offset, max_bytes).await;
                FetchOutcome {
                    result: outcome
                        .result
                        .map(|chunks| chunks.into_iter().map(Payload::Local).collect()),
                    high_watermark: outcome.high_watermark,
                    log_start_offset: outcome.log_start_offset,
                }
            }
            Some(owner) => {
                let called = self
                    .call(owner, |reply| ShardMsg::Fetch {
                        topic: topic.to_string(),
                        partition,
                        offset,
                        max_bytes,
                        reply,
                    })
                    .await;
                match called {
                    Ok(outcome) => FetchOutcome {
                        result: outcome
                            .result
                            .map(|chunks| chunks.into_iter().map(Payload::Remote).collect()),
                        high_watermark: outcome.high_watermark,
                        log_start_offset: outcome.log_start_offset,
                    },
                    Err(failure) => FetchOutcome {
                        result: Err(failure),
                        high_watermark: -1,
                        log_start_offset: -1,
                    },
                }
            }
        }
    }

    pub(super) async fn handle_fetch(
        &self,
        correlation_id: u32,
        request: wire::FetchRequestT,
    ) -> Reply {
        let max_wait =
            Duration::from_millis(u64::from(request.max_wait_ms).min(limits::FETCH_WAIT_MS_MAX));
        let deadline = Instant::now() + max_wait;
        let total_max = (request.max_bytes.max(1) as usize).min(limits::FETCH_RESPONSE_BYTES_MAX);
        let min_bytes = request.min_bytes.max(0) as usize;
        let wanted: Vec<(String, u32, i64, usize)> = request
            .topics
            .iter()
            .flatten()
            .flat_map(|t| {
                let name = t.name.clone().unwrap_or_default();
                t.partitions.iter().flatten().map(move |p| {
                    (name.clone(), p.partition as u32, p.fetch_offset, p.max_bytes.max(1) as usize)
                })
            })
            .collect();
        // Each round reads every partition once; rounds repeat only while the request waits for
        // data, and each waits for an append or the deadline.
        loop {
            // Held while this round's payload exists; a round that waits for data gives it back
            // while it waits. First come, first served.
            let Ok(memory) = self.fetch_memory.clone().acquire_many_owned(total_max as u32).await
            else {
                return envelope_error(correlation_id, ErrorCode::ShuttingDown, "shutting down");
            };
            let mut results = Vec::with_capacity(wanted.len());
            let mut total = 0usize;
            for (topic, partition, offset, max_bytes) in &wanted {
                let budget = (*max_bytes).min(total_max.saturating_sub(total));
                let outcome = if budget == 0 {
                    FetchOutcome {
                        result: Ok(Vec::new()),
                        high_watermark: -1,
                        log_start_offset: -1,
                    }
                } else {
                    self.fetch_partition(topic, *partition, *offset, budget).await
                };
                if let Ok(chunks) = &outcome.result {
                    total += chunks.iter().map(|c| c.len()).sum::<usize>();
                }
                results.push(outcome);
            }
            let errors = results.iter().any(|r| r.result.is_err());
            let now = Instant::now();
            if total >= min_bytes.max(1) || errors || now >= deadline || self.shutting_down.get() {
                let mut reply = self.fetch_reply(correlation_id, &wanted, results);
                reply.memory = Some(memory);
                return reply;
            }
            // Wait for data beyond what this round saw (not merely past the fetch offset: with
            // `min_bytes` above what is there, that would spin).
            let seen: Vec<(String, u32, i64)> = wanted
                .iter()
                .zip(&results)
                .map(|((topic, partition, offset, _), r)| {
                    (topic.clone(), *partition, r.high_watermark.max(*offset))
                })
                .collect();
            // Nothing is held while waiting.
            drop(results);
            drop(memory);
            self.wait_for_data(&seen, deadline - now).await;
        }
    }

    /// Waits until one of the partitions in `seen` (topic, partition, high watermark seen) has
    /// data past what was seen, or `wait` passes. Local partitions wake it from their append;
    /// partitions of other shards through an `AwaitData` call to their owner.
    pub(super) async fn wait_for_data(&self, seen: &[(String, u32, i64)], wait: Duration) {
        // Calls are lazy: nothing is sent unless the local check below finds no data.
        let mut remote: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>>> =
            Vec::new();
        for (topic, partition, offset) in seen {
            match self.owner(topic, *partition) {
                Some(owner) if owner != self.id => {
                    remote.push(Box::pin(self.call(owner, move |reply| ShardMsg::AwaitData {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                        wait,
                        reply,
                    })))
                }
                _ => {}
            }
        }
        // Ready once any owner answers (bounded by `seen`'s length per poll).
        let any_remote = std::future::poll_fn(|cx| {
            if remote.iter_mut().any(|call| call.as_mut().poll(cx).is_ready()) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        self.wait_for_local_data(seen, wait, any_remote).await;
    }

    /// Waits until one of the local partitions in `seen` has data past what was seen, `wait`
    /// passes, or `also` completes.
    pub(super) async fn wait_for_local_data(
        &self,
        seen: &[(String, u32, i64)],
        wait: Duration,
        also: impl std::future::Future<Output = ()>,
    ) {
        let (sender, receiver) = oneshot::channel();
        let wakeup: Wakeup = Rc::new(RefCell::new(Some(sender)));
        if self.register_waiter(seen, &wakeup) == Registered::Waiting {
            let woken = async {
                let _ = receiver.await;
            };
            let raced = futures_lite::future::or(woken, also);
            futures_lite::future::or(raced, glommio::timer::sleep(wait)).await;
        }
        self.unregister_waiter(seen, &wakeup);
    }

    /// Registers `wakeup` on each local partition in `seen`, unless one already has data past
    /// what was seen (an append that landed after the fetch read it). No await in between, so
    /// no append is missed.
    pub(super) fn register_waiter(
        &self,
        seen: &[(String, u32, i64)],
        wakeup: &Wakeup,
    ) -> Registered {
        for (topic, partition, offset) in seen {
            if self.owner(topic, *partition) != Some(self.id) {
                continue;
            }
            let key = (topic.clone(), *partition);
            if self.readable(topic, *partition).is_ok_and(|r| r.end() > *offset) {
                return Registered::HasData;
            }
            self.waiters.borrow_mut().entry(key).or_default().push(wakeup.clone());
        }
        Registered::Waiting
    }

    /// Forgets `wakeup` (it may remain on partitions that were not appended to).
    pub(super) fn unregister_waiter(&self, seen: &[(String, u32, i64)], wakeup: &Wakeup) {
        wakeup.borrow_mut().take();
        for (topic, partition, _) in seen {
            if let Some(list) = self.waiters.borrow_mut().get_mut(&(topic.clone(), *partition)) {
                list.retain(|w| w.borrow().is_some());
            }
        }
    }

    pub(super) fn fetch_reply(
        &self,
        correlation_id: u32,
        wanted: &[(String, u32, i64, usize)],
        results: Vec<FetchOutcome<Payload>>,
    ) -> Reply {
        let mut topics: Vec<wire::FetchTopicResponseT> = Vec::new();
        let mut payload = Vec::new();
        for ((topic, partition, _, _), outcome) in wanted.iter().zip(results) {
            let (error_code, error_message, records_bytes) = match outcome.result {
                Ok(chunks) => {
                    let bytes: usize = chunks.iter().map(|c| c.len()).sum();
                    payload.extend(chunks);
                    (ErrorCode::None, None, bytes as u32)
                }
                Err(failure) => (failure.code, Some(failure.message), 0),
            };
            let entry = wire::FetchPartitionResponseT {
                partition: *partition as i32,
                error_code,
                error_message,
                high_watermark: outcome.high_watermark,
                log_start_offset: outcome.log_start_offset,
                records_bytes,
            };
            push_into(
                &mut topics,
                topic,
                entry,
                |t| &t.name,
                |t| t.partitions.get_or_insert_with(Vec::new),
                |name| wire::FetchTopicResponseT { name: Some(name), partitions: None },
            );
        }
        let mut reply = ok_reply(
            correlation_id,
            ResponseBodyT::FetchResponse(Box::new(wire::FetchResponseT { topics: Some(topics) })),
        );
        reply.payload = payload;
        reply
    }
}
