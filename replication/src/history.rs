//! The term history of one replica's log: for every term that wrote records, the offset of its
//! first record (Kafka's leader-epoch cache). It names the term of any record without reading
//! the log, which is all log matching and divergence search need.
//!
//! The first entry may start before the log start offset: after retention, or after a follower
//! reset its log to the leader's log start, it still names the term of the record just before
//! the log start (what a Raft snapshot calls its last included term).

use crate::limits::TERM_HISTORY_ENTRIES_MAX;
use crate::types::{Offset, Term};

/// One history entry: `term` wrote the records from `start_offset` up to the next entry's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermStart {
    pub term: Term,
    pub start_offset: Offset,
}

/// Entries strictly increasing in both term and start offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermHistory {
    entries: Vec<TermStart>,
}

impl TermHistory {
    pub fn new(entries: Vec<TermStart>) -> Self {
        let history = TermHistory { entries };
        assert!(history.is_well_formed(), "term history out of order: {history:?}");
        history
    }

    fn is_well_formed(&self) -> bool {
        self.entries.len() <= TERM_HISTORY_ENTRIES_MAX
            && self
                .entries
                .windows(2)
                .all(|w| w[0].term < w[1].term && w[0].start_offset < w[1].start_offset)
            && self.entries.iter().all(|e| e.term > 0)
    }

    pub fn entries(&self) -> &[TermStart] {
        &self.entries
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Term of the record at `offset`: the last entry starting at or before it; 0 before all.
    pub fn term_at(&self, offset: Offset) -> Term {
        let i = self.entries.partition_point(|e| e.start_offset <= offset);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].term
        }
    }

    /// Term of the record just before `end` (0 for an empty prefix).
    pub fn term_before(&self, end: Offset) -> Term {
        if end == 0 {
            0
        } else {
            self.term_at(end - 1)
        }
    }

    /// The largest term `<= term` in this history and the offset where that term's records end
    /// in a log ending at `log_end`; `(0, 0)` when there is none. The divergence search uses it
    /// on both sides (follower: hint; leader: end of the hinted term in its own log).
    pub fn last_term_at_or_below(&self, term: Term, log_end: Offset) -> (Term, Offset) {
        let i = self.entries.partition_point(|e| e.term <= term);
        if i == 0 {
            return (0, 0);
        }
        let end = self.entries.get(i).map_or(log_end, |next| next.start_offset.min(log_end));
        (self.entries[i - 1].term, end)
    }

    /// Records that `term` starts at `start_offset`. Returns false (and changes nothing) when the
    /// term is already the last one: the caller only persists real changes.
    pub fn append(&mut self, term: Term, start_offset: Offset) -> bool {
        if let Some(last) = self.entries.last() {
            if last.term == term {
                return false;
            }
            assert!(last.term < term, "term {term} appended after {}", last.term);
            assert!(last.start_offset < start_offset, "history start goes backwards");
        }
        assert!(self.entries.len() < TERM_HISTORY_ENTRIES_MAX, "term history full");
        self.entries.push(TermStart { term, start_offset });
        true
    }

    /// Forgets terms whose first record is at or after `end` (the log was cut there).
    pub fn truncate(&mut self, end: Offset) {
        let keep = self.entries.partition_point(|e| e.start_offset < end);
        self.entries.truncate(keep);
    }

    /// Forgets entries that only describe records before `log_start - 1` (retention). Keeps the
    /// entry naming the record just before the log start.
    pub fn trim_before(&mut self, log_start: Offset) {
        if log_start == 0 {
            return;
        }
        let covering = self.entries.partition_point(|e| e.start_offset < log_start);
        if covering >= 2 {
            self.entries.drain(..covering - 1);
        }
    }

    /// Replaces the history of a log that restarts empty at `log_start` after a record of
    /// `term_before_start`.
    pub fn reset(&mut self, log_start: Offset, term_before_start: Term) {
        self.entries.clear();
        if log_start > 0 && term_before_start > 0 {
            self.entries.push(TermStart { term: term_before_start, start_offset: log_start - 1 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> TermHistory {
        TermHistory::new(vec![
            TermStart { term: 1, start_offset: 0 },
            TermStart { term: 3, start_offset: 10 },
            TermStart { term: 4, start_offset: 15 },
        ])
    }

    #[test]
    fn term_at_follows_entries() {
        let h = history();
        assert_eq!(h.term_at(0), 1);
        assert_eq!(h.term_at(9), 1);
        assert_eq!(h.term_at(10), 3);
        assert_eq!(h.term_at(100), 4);
        assert_eq!(h.term_before(0), 0);
        assert_eq!(h.term_before(10), 1);
        assert_eq!(TermHistory::default().term_at(5), 0);
    }

    #[test]
    fn last_term_at_or_below_gives_end_of_that_term() {
        let h = history();
        assert_eq!(h.last_term_at_or_below(2, 20), (1, 10));
        assert_eq!(h.last_term_at_or_below(3, 20), (3, 15));
        assert_eq!(h.last_term_at_or_below(9, 20), (4, 20));
        assert_eq!(h.last_term_at_or_below(0, 20), (0, 0));
        assert_eq!(h.last_term_at_or_below(3, 12), (3, 12));
    }

    #[test]
    fn truncate_and_trim() {
        let mut h = history();
        h.truncate(15);
        assert_eq!(h.last_term(), 3);
        h.truncate(10);
        assert_eq!(h.last_term(), 1);
        let mut h = history();
        h.trim_before(16);
        assert_eq!(h.entries().len(), 1);
        assert_eq!(h.term_before(16), 4);
        let mut h = history();
        h.trim_before(12);
        assert_eq!(h.entries()[0].term, 3);
        assert_eq!(h.term_before(12), 3);
    }

    #[test]
    fn reset_names_record_before_start() {
        let mut h = history();
        h.reset(50, 4);
        assert_eq!(h.term_before(50), 4);
        assert!(h.append(5, 50));
        assert_eq!(h.term_at(50), 5);
    }
}
