//! The history checker: what a fault-injection run's history and final read say about safety
//! (lost writes, inconsistent offsets, duplicates, per-producer order, consumers reading
//! backwards or skipping, committed offsets regressing) and availability (the longest stretches
//! without an acknowledged write, and the fault that overlapped each). Pure: events in, a
//! report out; the runner and the `spate-chaos-check` binary do the IO.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::history::{fault_windows, Event, Outcome, Stored};

/// How many anomalies of each kind the report lists (the counts are always complete).
pub const EXAMPLES_MAX: usize = 20;

/// Unavailability windows listed in the report, longest first.
pub const WINDOWS_MAX: usize = 10;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Report {
    pub faults: usize,
    pub sends: usize,
    pub acknowledged: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Acknowledged but absent from the final read at the acknowledged offset.
    pub lost: usize,
    /// Offsets at which two different values were seen (acks, reads, final read).
    pub inconsistent: usize,
    /// Values stored at more than one offset.
    pub duplicates: usize,
    /// Duplicates of sends acknowledged at their first attempt, so never retried: the broker
    /// wrote them twice by itself (with an idempotent producer, every duplicate counts).
    pub duplicates_of_certain_sends: usize,
    /// A producer's acknowledged sends to a partition whose offsets do not follow their order.
    pub reordered: usize,
    /// A consumer read an offset at or below one it had already read since it (re)started.
    pub read_backwards: usize,
    /// A consumer skipped offsets that the final read holds.
    pub read_gaps: usize,
    /// Acknowledged offset commits in the history.
    pub commits: usize,
    /// A group's committed offset for a partition went down.
    pub commit_regressions: usize,
    /// The longest stretch with no acknowledged write, in ms, and the longest ones.
    pub unavailable_ms_max: u64,
    pub unavailable_windows: Vec<Window>,
    /// The longest stretch with no acknowledged write to one partition, in ms (a partition
    /// whose leader is stuck while the others carry on), and that partition.
    pub partition_unavailable_ms_max: u64,
    pub partition_unavailable: Option<Window>,
    /// Which partition `partition_unavailable` is.
    pub partition_unavailable_partition: Option<u32>,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    pub length_ms: u64,
    /// Faults whose span overlaps the window, as `kind target`.
    pub faults: Vec<String>,
}

impl Report {
    /// Safety violations (availability is reported, not judged). With `idempotent`, every
    /// duplicate is one; without, only duplicates of sends that were never in doubt.
    pub fn violations(&self, idempotent: bool) -> usize {
        let duplicates =
            if idempotent { self.duplicates } else { self.duplicates_of_certain_sends };
        self.lost
            + self.inconsistent
            + duplicates
            + self.reordered
            + self.read_backwards
            + self.read_gaps
            + self.commit_regressions
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(text);
        }
    }
}

/// Checks a history against the final read. `window_min_ms`: stretches without an
/// acknowledged write shorter than this are not listed (steady-state gaps between sends).
pub fn check(events: &[Event], stored: &[Stored], window_min_ms: u64) -> Report {
    let mut report = Report::default();
    let final_log: BTreeMap<(u32, i64), &str> =
        stored.iter().map(|s| ((s.partition, s.offset), s.value.as_str())).collect();
    check_sends(events, &final_log, &mut report);
    check_consistency(events, stored, &mut report);
    check_duplicates(events, stored, &mut report);
    check_consumers(events, &final_log, &mut report);
    check_commits(events, &mut report);
    check_availability(events, window_min_ms, &mut report);
    report
}

fn check_sends(events: &[Event], final_log: &BTreeMap<(u32, i64), &str>, report: &mut Report) {
    // (producer, partition) -> acknowledged (seq, offset)
    let mut acked: BTreeMap<(&str, u32), Vec<(u64, i64)>> = BTreeMap::new();
    for event in events {
        match event {
            Event::Fault { .. } => report.faults += 1,
            Event::Send { producer, seq, partition, value, outcome, offset, .. } => {
                report.sends += 1;
                match outcome {
                    Outcome::Fail => report.failed += 1,
                    Outcome::Unknown => report.unknown += 1,
                    Outcome::Ack => {
                        report.acknowledged += 1;
                        let Some(offset) = *offset else {
                            report.lost += 1;
                            report.example(format!("{value}: acknowledged without an offset"));
                            continue;
                        };
                        if final_log.get(&(*partition, offset)) != Some(&value.as_str()) {
                            report.lost += 1;
                            report.example(format!(
                                "lost: {value} acknowledged at {partition}/{offset}, final read has {:?}",
                                final_log.get(&(*partition, offset))
                            ));
                        }
                        acked.entry((producer, *partition)).or_default().push((*seq, offset));
                    }
                }
            }
            _ => {}
        }
    }
    for ((producer, partition), mut sends) in acked {
        sends.sort();
        for pair in sends.windows(2) {
            if pair[1].1 <= pair[0].1 {
                report.reordered += 1;
                report.example(format!(
                    "reordered: {producer} seq {} at {partition}/{} but seq {} at {partition}/{}",
                    pair[0].0, pair[0].1, pair[1].0, pair[1].1
                ));
            }
        }
    }
}

/// Every value seen at an offset, from any source, must be the same one.
fn check_consistency(events: &[Event], stored: &[Stored], report: &mut Report) {
    let mut seen: BTreeMap<(u32, i64), BTreeSet<&str>> = BTreeMap::new();
    for event in events {
        match event {
            Event::Send {
                partition, value, outcome: Outcome::Ack, offset: Some(offset), ..
            }
            | Event::Read { partition, offset, value, .. } => {
                seen.entry((*partition, *offset)).or_default().insert(value);
            }
            _ => {}
        }
    }
    for record in stored {
        seen.entry((record.partition, record.offset)).or_default().insert(&record.value);
    }
    for ((partition, offset), values) in seen {
        if values.len() > 1 {
            report.inconsistent += 1;
            report.example(format!("inconsistent: {partition}/{offset} held {values:?}"));
        }
    }
}

fn check_duplicates(events: &[Event], stored: &[Stored], report: &mut Report) {
    let mut places: HashMap<&str, Vec<(u32, i64)>> = HashMap::new();
    for record in stored {
        places.entry(&record.value).or_default().push((record.partition, record.offset));
    }
    // Acknowledged at the first attempt: no retry could have written it twice.
    let certain: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Send { value, outcome: Outcome::Ack, attempts: 1, .. } => Some(value.as_str()),
            _ => None,
        })
        .collect();
    let mut values: Vec<_> = places.into_iter().filter(|(_, at)| at.len() > 1).collect();
    values.sort();
    for (value, at) in values {
        report.duplicates += 1;
        if certain.contains(value) {
            report.duplicates_of_certain_sends += 1;
        }
        report.example(format!("duplicate: {value} stored at {at:?}"));
    }
}

/// Per consumer and partition, reads after a (re)start go strictly up and skip nothing that the
/// final read holds.
fn check_consumers(events: &[Event], final_log: &BTreeMap<(u32, i64), &str>, report: &mut Report) {
    let mut position: HashMap<(&str, u32), i64> = HashMap::new();
    let mut ordered: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::Read { .. } | Event::ConsumerStart { .. }))
        .collect();
    ordered.sort_by_key(|e| match e {
        Event::Read { t_ms, .. } | Event::ConsumerStart { t_ms, .. } => *t_ms,
        _ => 0,
    });
    for event in ordered {
        match event {
            Event::ConsumerStart { consumer, partition, offset, .. } => {
                position.insert((consumer, *partition), *offset);
            }
            Event::Read { consumer, partition, offset, .. } => {
                let key = (consumer.as_str(), *partition);
                let expected = position.get(&key).copied();
                if let Some(expected) = expected {
                    if *offset < expected {
                        report.read_backwards += 1;
                        report.example(format!(
                            "read backwards: {consumer} read {partition}/{offset} after reaching {expected}"
                        ));
                    } else if *offset > expected {
                        let skipped =
                            final_log.range((*partition, expected)..(*partition, *offset)).count();
                        if skipped > 0 {
                            report.read_gaps += 1;
                            report.example(format!(
                                "gap: {consumer} read {partition}/{offset} next, skipping {skipped} stored records from {expected}"
                            ));
                        }
                    }
                }
                position.insert(key, offset + 1);
            }
            _ => {}
        }
    }
}

fn check_commits(events: &[Event], report: &mut Report) {
    let mut commits: Vec<(u64, &str, u32, i64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Commit { group, partition, offset, t_ms } => {
                Some((*t_ms, group.as_str(), *partition, *offset))
            }
            _ => None,
        })
        .collect();
    commits.sort();
    report.commits = commits.len();
    let mut last: HashMap<(&str, u32), i64> = HashMap::new();
    for (t, group, partition, offset) in commits {
        if let Some(previous) = last.insert((group, partition), offset) {
            if offset < previous {
                report.commit_regressions += 1;
                report.example(format!(
                    "commit regression: {group} {partition} went from {previous} to {offset} at {t} ms"
                ));
            }
        }
    }
}

fn check_availability(events: &[Event], window_min_ms: u64, report: &mut Report) {
    let mut acks: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Send { outcome: Outcome::Ack, complete_ms, .. } => Some(*complete_ms),
            _ => None,
        })
        .collect();
    let mut bounds: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Send { invoke_ms, complete_ms, .. } => Some([*invoke_ms, *complete_ms]),
            _ => None,
        })
        .flatten()
        .collect();
    bounds.sort_unstable();
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else { return };
    acks.push(first);
    acks.push(last);
    acks.sort_unstable();
    let faults: Vec<(u64, u64, String)> = fault_windows(events)
        .map(|f| (f.start_ms, f.end_ms, format!("{} {}", f.kind, f.target)))
        .collect();
    // The stretch between two acknowledgements, with the faults that overlap it.
    let window = |w: &[u64]| Window {
        start_ms: w[0],
        end_ms: w[1],
        length_ms: w[1] - w[0],
        faults: faults
            .iter()
            .filter(|(s, e, _)| *s < w[1] && *e > w[0])
            .map(|(_, _, f)| f.clone())
            .collect(),
    };
    let mut windows: Vec<Window> =
        acks.windows(2).filter(|w| w[1] - w[0] >= window_min_ms.max(1)).map(window).collect();
    report.unavailable_ms_max = acks.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    windows.sort_by_key(|w| std::cmp::Reverse(w.length_ms));
    windows.truncate(WINDOWS_MAX);
    report.unavailable_windows = windows;

    // The same per partition, over the same span (a partition never acknowledged at all is
    // unavailable for the whole run).
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for event in events {
        if let Event::Send { partition, outcome, complete_ms, .. } = event {
            let times = by_partition.entry(*partition).or_default();
            if *outcome == Outcome::Ack {
                times.push(*complete_ms);
            }
        }
    }
    for (partition, mut times) in by_partition {
        times.push(first);
        times.push(last);
        times.sort_unstable();
        let Some(w) = times.windows(2).max_by_key(|w| w[1] - w[0]) else { continue };
        if w[1] - w[0] > report.partition_unavailable_ms_max {
            report.partition_unavailable_ms_max = w[1] - w[0];
            report.partition_unavailable_partition = Some(partition);
            report.partition_unavailable = Some(window(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(
        producer: &str,
        seq: u64,
        partition: u32,
        offset: Option<i64>,
        outcome: Outcome,
        at: u64,
    ) -> Event {
        Event::Send {
            producer: producer.into(),
            seq,
            partition,
            value: format!("{producer}-{seq}"),
            invoke_ms: at,
            complete_ms: at + 1,
            outcome,
            offset,
            attempts: 1,
            error: None,
        }
    }

    fn stored(partition: u32, offset: i64, value: &str) -> Stored {
        Stored { partition, offset, value: value.into() }
    }

    fn read(consumer: &str, partition: u32, offset: i64, value: &str, t_ms: u64) -> Event {
        Event::Read { consumer: consumer.into(), partition, offset, value: value.into(), t_ms }
    }

    /// A clean history: three acknowledged sends, read back in order.
    fn clean() -> (Vec<Event>, Vec<Stored>) {
        let events = vec![
            send("p", 0, 0, Some(0), Outcome::Ack, 10),
            send("p", 1, 0, Some(1), Outcome::Ack, 20),
            send("p", 2, 0, Some(2), Outcome::Ack, 30),
            Event::ConsumerStart { consumer: "c".into(), partition: 0, offset: 0, t_ms: 5 },
            read("c", 0, 0, "p-0", 40),
            read("c", 0, 1, "p-1", 41),
            read("c", 0, 2, "p-2", 42),
            Event::Commit { group: "g".into(), partition: 0, offset: 3, t_ms: 50 },
        ];
        let log = vec![stored(0, 0, "p-0"), stored(0, 1, "p-1"), stored(0, 2, "p-2")];
        (events, log)
    }

    #[test]
    fn a_clean_history_has_no_violation() {
        let (events, log) = clean();
        let report = check(&events, &log, 5);
        assert_eq!(report.violations(true), 0, "{report:#?}");
        assert_eq!(report.acknowledged, 3);
    }

    #[test]
    fn a_lost_write_is_caught() {
        let (events, mut log) = clean();
        log.remove(1);
        let report = check(&events, &log, 5);
        assert_eq!(report.lost, 1);
        assert!(report.violations(false) > 0);
    }

    #[test]
    fn two_values_at_one_offset_are_inconsistent() {
        let (mut events, log) = clean();
        events.push(read("d", 0, 1, "p-9", 60));
        let report = check(&events, &log, 5);
        assert_eq!(report.inconsistent, 1);
    }

    #[test]
    fn duplicates_count_against_certain_sends_or_with_idempotence() {
        let (mut events, mut log) = clean();
        // p-1 stored twice though it was acknowledged once and never in doubt.
        log.push(stored(0, 3, "p-1"));
        let report = check(&events, &log, 5);
        assert_eq!((report.duplicates, report.duplicates_of_certain_sends), (1, 1));
        assert!(report.violations(false) > 0);
        // An unknown send stored twice is only a violation with idempotence.
        events.push(send("q", 0, 0, None, Outcome::Unknown, 70));
        log.pop();
        log.push(stored(0, 3, "q-0"));
        log.push(stored(0, 4, "q-0"));
        let report = check(&events, &log, 5);
        assert_eq!(report.violations(false), 0);
        assert_eq!(report.violations(true), 1);
    }

    #[test]
    fn acknowledged_sends_out_of_order_are_caught() {
        let (mut events, log) = clean();
        events[1] = send("p", 1, 0, Some(2), Outcome::Ack, 20);
        events[2] = send("p", 2, 0, Some(1), Outcome::Ack, 30);
        let swapped = vec![stored(0, 0, "p-0"), stored(0, 2, "p-1"), stored(0, 1, "p-2")];
        let report = check(&events[..3], &swapped, 5);
        assert_eq!(report.reordered, 1);
        let _ = log;
    }

    #[test]
    fn consumers_going_backwards_or_skipping_are_caught() {
        let (mut events, log) = clean();
        events.push(read("c", 0, 1, "p-1", 43));
        assert_eq!(check(&events, &log, 5).read_backwards, 1);
        // A restart at an earlier offset is not going backwards.
        let (mut events, log) = clean();
        events.push(Event::ConsumerStart {
            consumer: "c".into(),
            partition: 0,
            offset: 1,
            t_ms: 43,
        });
        events.push(read("c", 0, 1, "p-1", 44));
        assert_eq!(check(&events, &log, 5).violations(true), 0);
        // Skipping offset 1 that the log holds is a gap.
        let (mut events, log) = clean();
        events.retain(|e| !matches!(e, Event::Read { offset: 1, .. }));
        assert_eq!(check(&events, &log, 5).read_gaps, 1);
    }

    #[test]
    fn a_committed_offset_going_down_is_caught() {
        let (mut events, log) = clean();
        events.push(Event::Commit { group: "g".into(), partition: 0, offset: 1, t_ms: 60 });
        assert_eq!(check(&events, &log, 5).commit_regressions, 1);
    }

    #[test]
    fn unavailability_windows_name_the_fault_that_overlapped_them() {
        let events = vec![
            send("p", 0, 0, Some(0), Outcome::Ack, 0),
            send("p", 1, 0, None, Outcome::Unknown, 100),
            send("p", 2, 0, Some(1), Outcome::Ack, 3_000),
            Event::Fault {
                kind: "kill".into(),
                target: "broker-1".into(),
                start_ms: 90,
                end_ms: 500,
            },
        ];
        let log = vec![stored(0, 0, "p-0"), stored(0, 1, "p-2")];
        let report = check(&events, &log, 100);
        assert_eq!(report.unavailable_ms_max, 3_000);
        assert_eq!(report.unavailable_windows[0].faults, vec!["kill broker-1".to_string()]);
        assert_eq!(report.faults, 1);
    }

    #[test]
    fn a_partition_stuck_while_the_others_carry_on_is_measured_on_its_own() {
        let events = vec![
            send("p", 0, 0, Some(0), Outcome::Ack, 0),
            send("p", 1, 1, Some(0), Outcome::Ack, 100),
            send("p", 2, 0, Some(1), Outcome::Ack, 1_000),
            send("p", 3, 0, Some(2), Outcome::Ack, 2_000),
            send("p", 4, 1, Some(1), Outcome::Ack, 2_500),
            send("p", 5, 0, Some(3), Outcome::Ack, 3_000),
            Event::Fault {
                kind: "disk".into(),
                target: "broker-2".into(),
                start_ms: 200,
                end_ms: 2_000,
            },
        ];
        let log = vec![
            stored(0, 0, "p-0"),
            stored(0, 1, "p-2"),
            stored(0, 2, "p-3"),
            stored(0, 3, "p-5"),
            stored(1, 0, "p-1"),
            stored(1, 1, "p-4"),
        ];
        let report = check(&events, &log, 100);
        // Writes went on throughout: at most a second without any.
        assert_eq!(report.unavailable_ms_max, 1_000);
        // Partition 1 had none from 101 ms to 2,501 ms (each send completes 1 ms after it starts).
        assert_eq!(report.partition_unavailable_ms_max, 2_400);
        assert_eq!(report.partition_unavailable_partition, Some(1));
        let window = report.partition_unavailable.expect("a window");
        assert_eq!((window.start_ms, window.end_ms), (101, 2_501));
        assert_eq!(window.faults, vec!["disk broker-2".to_string()]);
    }
}
