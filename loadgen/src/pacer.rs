//! Rate pacing without coordinated omission. Sans-IO.
//!
//! At a fixed rate, message `i` is *due* at `start + i / rate`. Latency is measured from that
//! intended time, not from when the generator got round to sending: if the system stalls for a
//! second, every message that should have gone out during the stall is charged the wait, as a
//! real client at that rate would have been. (Gil Tene's "coordinated omission".) At rate 0 the
//! generator sends as fast as it can and each message is due when it is sent.

use std::time::Duration;

/// A paced generator sends every message due within this much of now at once, and sleeps only
/// for longer waits. Sleeping before each message at 100k msgs/s (a 10 us timer per message)
/// took the generator's whole core and put its own queueing into the measured tail. A message
/// sent early is measured from when it was sent (see [`Pacer::latency`]).
pub const PACE_SLICE: Duration = Duration::from_micros(50);

#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    /// Nanoseconds between two messages; 0 = as fast as possible.
    interval_ns: u64,
}

impl Pacer {
    /// `rate` messages per second (0 = unpaced).
    pub fn new(rate: f64) -> Pacer {
        let interval_ns = if rate > 0.0 { (1e9 / rate).round().max(1.0) as u64 } else { 0 };
        Pacer { interval_ns }
    }

    pub fn is_paced(&self) -> bool {
        self.interval_ns > 0
    }

    /// When message `index` is due, as an offset from the start.
    pub fn due(&self, index: u64) -> Duration {
        Duration::from_nanos(index.saturating_mul(self.interval_ns))
    }

    /// How long to wait before sending message `index`, `elapsed` after the start: zero when it
    /// is due within [`PACE_SLICE`], or late (a late message is sent at once, never skipped).
    pub fn wait(&self, index: u64, elapsed: Duration) -> Duration {
        let wait = self.due(index).saturating_sub(elapsed);
        if wait < PACE_SLICE {
            Duration::ZERO
        } else {
            wait
        }
    }

    /// Where message `index`'s latency counts from, sent `sent` after the start: its due time,
    /// or when it was sent if that was earlier (within the slice) or the generator is unpaced.
    pub fn origin(&self, index: u64, sent: Duration) -> Duration {
        if self.is_paced() {
            self.due(index).min(sent)
        } else {
            sent
        }
    }

    /// The latency to record for a message acknowledged `acked` after the start and sent
    /// `sent` after the start: measured from its due time when paced, from sending otherwise.
    pub fn latency(&self, index: u64, sent: Duration, acked: Duration) -> Duration {
        acked.saturating_sub(self.origin(index, sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_follow_the_rate() {
        let pacer = Pacer::new(1000.0);
        assert_eq!(pacer.due(0), Duration::ZERO);
        assert_eq!(pacer.due(1500), Duration::from_millis(1500));
        assert_eq!(pacer.wait(10, Duration::from_millis(4)), Duration::from_millis(6));
        assert_eq!(pacer.wait(10, Duration::from_millis(40)), Duration::ZERO);
        // Due within the slice: sent now, and measured from now.
        let early = Duration::from_millis(10) - PACE_SLICE / 2;
        assert_eq!(pacer.wait(10, early), Duration::ZERO);
        assert_eq!(pacer.origin(10, early), early);
        assert_eq!(pacer.origin(10, Duration::from_millis(12)), Duration::from_millis(10));
        assert!(!Pacer::new(0.0).is_paced());
        assert_eq!(Pacer::new(0.0).wait(1_000_000, Duration::ZERO), Duration::ZERO);
    }

    /// A simulated one-second stall at 1000 msg/s: the generator sends messages 100..1100 late
    /// (all at t = 1.1 s) and each is acknowledged 1 ms after sending. Corrected latencies charge
    /// each its wait; uncorrected ones would all read 1 ms and hide the stall.
    #[test]
    fn a_stall_shows_in_the_corrected_p99() {
        let pacer = Pacer::new(1000.0);
        let mut histogram = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut naive = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for index in 0..2000u64 {
            let due = pacer.due(index);
            let sent = if (100..1100).contains(&index) { Duration::from_millis(1100) } else { due };
            let acked = sent + Duration::from_millis(1);
            histogram.record(pacer.latency(index, sent, acked).as_micros() as u64).unwrap();
            naive.record((acked - sent).as_micros() as u64).unwrap();
        }
        // Half the messages waited; the worst waited the whole second.
        assert!(
            histogram.value_at_quantile(0.99) >= 900_000,
            "p99 {}",
            histogram.value_at_quantile(0.99)
        );
        assert!(histogram.value_at_quantile(0.5) < 500_000);
        assert!(histogram.max() >= 1_000_000);
        assert!(naive.value_at_quantile(0.99) <= 1_001);
    }
}
