//! The memory one shard's logs may hold, shared by all of them, so that a broker's memory is
//! bounded by its shard count, not by its partition count.
//!
//! Two budgets:
//! - **unwritten bytes**: batches appended but not yet written to their segment. Every log also
//!   has its own budget ([`limits::PENDING_BYTES_MAX`]); an append waits for room in both, its
//!   own first. Once more than half of the shard's budget is taken, every log writes what it
//!   holds at once instead of letting it gather (see write-behind in `log::write`).
//! - **tail caches**: each log's cache holds at most an equal share of the shard's cache budget
//!   (but at least [`limits::CACHE_BYTES_PER_LOG_MIN`], and never more than its topic's
//!   `cache_bytes`). The share is recomputed whenever a log opens or closes, and applied to a
//!   log at its next append and by [`crate::Log::fit_cache`].
//!
//! - **read streams**: read-ahead buffers of consumers catching up from disk (see
//!   `log::read_ahead`): at most [`limits::READ_STREAMS_PER_SHARD_MAX`] streams at a time.
//!
//! Single-threaded: a `ShardMemory` lives on one executor and is shared through `Rc`.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Instant;

use crate::limits;
use crate::log::StreamSlot;

pub struct ShardMemory {
    pending: tokio::sync::Semaphore,
    pending_bytes_max: usize,
    cache_bytes_max: usize,
    logs: Cell<usize>,
    /// Logs' stream slots that held a read stream when last looked at.
    streams: RefCell<Vec<Weak<StreamSlot>>>,
}

impl ShardMemory {
    /// A shard budget of `pending_bytes_max` unwritten bytes and `cache_bytes_max` bytes of tail
    /// caches.
    pub fn new(pending_bytes_max: usize, cache_bytes_max: usize) -> Rc<ShardMemory> {
        assert!(
            pending_bytes_max >= limits::PENDING_BYTES_MAX,
            "a shard must hold at least one log's full pending budget"
        );
        Rc::new(ShardMemory {
            pending: tokio::sync::Semaphore::new(pending_bytes_max),
            pending_bytes_max,
            cache_bytes_max,
            logs: Cell::new(0),
            streams: RefCell::new(Vec::new()),
        })
    }

    /// Unwritten bytes the shard may hold.
    pub fn pending_bytes_max(&self) -> usize {
        self.pending_bytes_max
    }

    /// Unwritten bytes the shard's logs hold now.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes_max - self.pending.available_permits()
    }

    /// Over half the unwritten budget is taken: logs write at once rather than gather.
    pub fn under_pressure(&self) -> bool {
        self.pending.available_permits() < self.pending_bytes_max / 2
    }

    /// The tail cache one log may hold, given its topic's own `cache_bytes`.
    pub fn cache_share(&self, configured: usize) -> usize {
        let share = self.cache_bytes_max / self.logs.get().max(1);
        configured.min(share.max(limits::CACHE_BYTES_PER_LOG_MIN))
    }

    /// Open logs sharing this budget.
    pub fn logs(&self) -> usize {
        self.logs.get()
    }

    pub(crate) fn log_opened(&self) {
        self.logs.set(self.logs.get() + 1);
    }

    pub(crate) fn log_closed(&self) {
        self.logs.set(self.logs.get().checked_sub(1).expect("closed a log that was not open"));
    }

    /// Room for `bytes` unwritten bytes. The caller `forget`s the permit once the bytes are
    /// queued (whatever releases the log's own permits for them releases these too); dropped
    /// before, by a cancelled append, it gives the room back.
    pub(crate) async fn acquire_pending(&self, bytes: usize) -> tokio::sync::SemaphorePermit<'_> {
        assert!(bytes <= self.pending_bytes_max);
        let permits = self.pending.acquire_many(bytes as u32).await;
        permits.expect("a shard's memory budget is never closed")
    }

    /// Whether a log may open a read stream in `slot`: yes while the shard holds fewer than
    /// [`limits::READ_STREAMS_PER_SHARD_MAX`], or once the least recently used one, idle for
    /// [`limits::READ_STREAM_IDLE`], was taken from its log.
    pub(crate) fn admit_stream(&self, slot: &Rc<StreamSlot>, now: Instant) -> bool {
        let mut streams = self.streams.borrow_mut();
        streams.retain(|held| {
            held.upgrade().is_some_and(|held| held.is_active() && !Rc::ptr_eq(&held, slot))
        });
        if streams.len() >= limits::READ_STREAMS_PER_SHARD_MAX {
            let idlest = streams
                .iter()
                .enumerate()
                .filter_map(|(i, held)| Some((i, held.upgrade()?.last_used()?)))
                .filter(|(_, used)| {
                    now.saturating_duration_since(*used) >= limits::READ_STREAM_IDLE
                })
                .min_by_key(|(_, used)| *used);
            let Some((i, _)) = idlest else { return false };
            let evicted = streams[i].upgrade().is_some_and(|held| held.evict());
            if !evicted {
                return false;
            }
            streams.swap_remove(i);
        }
        streams.push(Rc::downgrade(slot));
        true
    }

    /// Read streams the shard's logs hold now.
    pub fn read_streams(&self) -> usize {
        self.streams.borrow().iter().filter(|s| s.upgrade().is_some_and(|s| s.is_active())).count()
    }

    pub(crate) fn release_pending(&self, bytes: usize) {
        self.pending.add_permits(bytes);
        debug_assert!(self.pending.available_permits() <= self.pending_bytes_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_share_splits_the_budget_within_its_bounds() {
        let memory = ShardMemory::new(limits::PENDING_BYTES_MAX, 64 << 20);
        assert_eq!(memory.cache_share(16 << 20), 16 << 20, "no logs yet: the topic's own size");
        for _ in 0..8 {
            memory.log_opened();
        }
        assert_eq!(memory.cache_share(16 << 20), 8 << 20);
        assert_eq!(memory.cache_share(1 << 20), 1 << 20, "never above the topic's own size");
        for _ in 0..100_000 {
            memory.log_opened();
        }
        assert_eq!(memory.cache_share(16 << 20), limits::CACHE_BYTES_PER_LOG_MIN);
    }

    #[test]
    fn pressure_starts_at_half_the_unwritten_budget() {
        let memory = ShardMemory::new(limits::PENDING_BYTES_MAX, 0);
        let half = limits::PENDING_BYTES_MAX / 2;
        glommio::LocalExecutor::default().run(async {
            memory.acquire_pending(half).await.forget();
            assert!(!memory.under_pressure());
            let cancelled = memory.acquire_pending(1).await;
            assert!(memory.under_pressure());
            drop(cancelled);
            assert!(!memory.under_pressure(), "an append cancelled before queueing gives it back");
            memory.acquire_pending(1).await.forget();
            assert!(memory.under_pressure());
            assert_eq!(memory.pending_bytes(), half + 1);
            memory.release_pending(half + 1);
            assert!(!memory.under_pressure());
        });
    }
}
