//! A simulated partition log and its small metadata files, with the three levels a real write
//! passes through: appended (in the process), written (in the OS page cache), synced (on the
//! device). A process crash keeps what was written plus a torn prefix of the rest; a power loss
//! keeps what was synced plus a torn prefix of the rest. Hard state, term history and log start
//! are tiny files written with fsync: always durable.

use rand::rngs::SmallRng;
use rand::Rng;

use crate::history::TermStart;
use crate::types::{FlushPolicy, HardState, Membership, Offset, Term};

/// One record as the simulator tracks it. `id` identifies a client write (0 for control
/// records: leader markers and membership changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRecord {
    pub term: Term,
    pub id: u64,
    /// Base offset of the batch the record belongs to (recovery cuts at batch boundaries).
    pub batch_base: Offset,
    pub membership: Option<Membership>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    /// The process dies; the OS keeps what was written.
    Process,
    /// The machine loses power; only synced data survives.
    Power,
}

#[derive(Clone, Debug)]
pub struct SimDisk {
    pub flush: FlushPolicy,
    pub log_start: Offset,
    /// `records[i]` is offset `log_start + i`.
    pub records: Vec<SimRecord>,
    pub written_end: Offset,
    pub synced_end: Offset,
    pub hard_state: HardState,
    pub history: Vec<TermStart>,
    /// Replica set in force before the first record still in the log.
    pub membership_floor: Membership,
    /// Commit point as last persisted (lazily).
    pub commit: Offset,
}

impl SimDisk {
    pub fn new(flush: FlushPolicy, membership: Membership) -> Self {
        SimDisk {
            flush,
            log_start: 0,
            records: Vec::new(),
            written_end: 0,
            synced_end: 0,
            hard_state: HardState::default(),
            history: Vec::new(),
            membership_floor: membership,
            commit: 0,
        }
    }

    pub fn log_end(&self) -> Offset {
        self.log_start + self.records.len() as u64
    }

    /// The end that counts as durable under the topic's flush policy.
    pub fn durable_end(&self) -> Offset {
        match self.flush {
            FlushPolicy::Always => self.synced_end,
            FlushPolicy::Never => self.written_end,
        }
    }

    pub fn get(&self, offset: Offset) -> Option<&SimRecord> {
        let i = offset.checked_sub(self.log_start)?;
        self.records.get(usize::try_from(i).ok()?)
    }

    pub fn push(&mut self, record: SimRecord) {
        self.records.push(record);
    }

    pub fn truncate(&mut self, to: Offset) {
        assert!(to >= self.log_start);
        self.records.truncate((to - self.log_start) as usize);
        self.written_end = self.written_end.min(to);
        self.synced_end = self.synced_end.min(to);
        self.history.retain(|e| e.start_offset < to);
    }

    pub fn reset(&mut self, log_start: Offset, term_before_start: Term, membership: Membership) {
        self.records.clear();
        self.log_start = log_start;
        self.written_end = log_start;
        self.synced_end = log_start;
        self.history.clear();
        if log_start > 0 && term_before_start > 0 {
            self.history.push(TermStart { term: term_before_start, start_offset: log_start - 1 });
        }
        self.membership_floor = membership;
    }

    /// Retention: drop records below `start` (callers keep it at or below the commit point).
    pub fn delete_before(&mut self, start: Offset) {
        if start <= self.log_start {
            return;
        }
        let n = ((start - self.log_start) as usize).min(self.records.len());
        for r in &self.records[..n] {
            if let Some(m) = &r.membership {
                self.membership_floor = m.clone();
            }
        }
        self.records.drain(..n);
        self.log_start = start;
        self.written_end = self.written_end.max(start);
        self.synced_end = self.synced_end.max(start);
    }

    /// Background IO: the OS writes some buffered records, the device syncs some written ones.
    /// `write` and `sync` are the chances per tick that the OS writes buffered records and that
    /// the device syncs written ones (a slow disk leaves a long non-durable tail).
    pub fn background_io(&mut self, rng: &mut SmallRng, write: f64, sync: f64) {
        let end = self.log_end();
        if self.written_end < end && rng.gen_bool(write) {
            let target = rng.gen_range(self.written_end..end);
            self.written_end = self.batch_end(target);
        }
        if self.synced_end < self.written_end && rng.gen_bool(sync) {
            self.synced_end = self.written_end;
        }
    }

    /// End of the batch holding `offset` (writes move whole batches).
    fn batch_end(&self, offset: Offset) -> Offset {
        let base = self.get(offset).expect("offset in log").batch_base;
        let mut end = offset + 1;
        while self.get(end).is_some_and(|r| r.batch_base == base) {
            end += 1;
        }
        end
    }

    /// What survives a crash of this kind: the safe prefix, then a torn prefix of the rest cut
    /// at a batch boundary (recovery drops a partial batch by its checksum).
    pub fn crash(&mut self, kind: CrashKind, rng: &mut SmallRng) {
        let safe = match kind {
            CrashKind::Process => self.written_end,
            CrashKind::Power => self.synced_end,
        };
        let end = self.log_end();
        let mut keep =
            if safe < end && rng.gen_bool(0.5) { rng.gen_range(safe..=end) } else { safe };
        if keep < end {
            if let Some(r) = self.get(keep) {
                keep = r.batch_base.max(safe).max(self.log_start);
            }
        }
        self.truncate(keep);
        // After recovery the surviving log is what the device holds.
        self.written_end = self.log_end();
        self.synced_end = if kind == CrashKind::Power { self.log_end() } else { self.synced_end };
    }

    /// Replica sets recorded in the log, after the floor (for `Restored::memberships`).
    pub fn memberships(&self) -> Vec<(Offset, Membership)> {
        let mut out = vec![(0, self.membership_floor.clone())];
        for (i, r) in self.records.iter().enumerate() {
            if let Some(m) = &r.membership {
                out.push((self.log_start + i as u64, m.clone()));
            }
        }
        out
    }
}
