//! The replica sets recorded in a log: the newest is in force as soon as it is appended (Raft
//! single-server changes), older ones are kept only as long as a truncation could fall back to
//! them (that is, while the newer one is not committed).

use crate::limits::MEMBERSHIP_HISTORY_MAX;
use crate::types::{Membership, Offset};

#[derive(Clone, Debug)]
pub struct MembershipLog {
    /// `(offset of the membership record, set)`. The first entry is the floor: the set in force
    /// before every record still tracked; truncation never removes it.
    entries: Vec<(Offset, Membership)>,
}

impl MembershipLog {
    pub fn new(mut entries: Vec<(Offset, Membership)>, log_end: Offset) -> Self {
        assert!(!entries.is_empty(), "a replica needs a replica set to start from");
        assert!(entries.iter().all(|(_, m)| m.is_valid()));
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0), "membership offsets out of order");
        // Records past the recovered log end were lost in a crash; so were the sets they held.
        let keep = 1 + entries[1..].iter().take_while(|(o, _)| *o < log_end).count();
        entries.truncate(keep);
        MembershipLog { entries }
    }

    pub fn current(&self) -> &Membership {
        &self.entries.last().expect("never empty").1
    }

    /// Offset of the newest membership record, None if only the floor is known.
    pub fn last_change_offset(&self) -> Option<Offset> {
        (self.entries.len() > 1).then(|| self.entries.last().expect("never empty").0)
    }

    pub fn entries(&self) -> &[(Offset, Membership)] {
        &self.entries
    }

    /// The set in force just before `offset` (for a follower that resets to our log start).
    pub fn at(&self, offset: Offset) -> &Membership {
        let i = self.entries[1..].partition_point(|(o, _)| *o < offset);
        &self.entries[i].1
    }

    pub fn push(&mut self, offset: Offset, membership: Membership) {
        assert!(membership.is_valid());
        assert!(self.entries.len() == 1 || self.entries.last().expect("never empty").0 < offset);
        if self.entries.len() == MEMBERSHIP_HISTORY_MAX {
            // An honest leader has at most one uncommitted change, so only a corrupt stream of
            // appends gets here; stay bounded by forgetting the oldest fallback instead of
            // panicking on network input.
            self.entries.remove(0);
        }
        self.entries.push((offset, membership));
    }

    pub fn truncate(&mut self, end: Offset) {
        let keep = 1 + self.entries[1..].iter().take_while(|(o, _)| *o < end).count();
        self.entries.truncate(keep);
    }

    /// Sets replaced by a committed newer one can never come back: drop them.
    pub fn compact(&mut self, commit: Offset) {
        let committed = self.entries[1..].iter().take_while(|(o, _)| *o < commit).count();
        if committed > 0 {
            self.entries.drain(..committed);
        }
    }

    pub fn reset(&mut self, floor: Membership) {
        assert!(floor.is_valid());
        self.entries = vec![(0, floor)];
    }
}
