//! Histograms, counters shared for progress lines, and the result a run reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Counters and a histogram every worker adds to, read by the progress printer.
#[derive(Default)]
pub struct Shared {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub consumed: AtomicU64,
    /// Messages consumers saw, warmup included (e2e consumers stop when all produced arrived).
    pub seen: AtomicU64,
    /// Each core's latest latency snapshot, for the progress line's p99.
    pub latency: Mutex<Vec<Histogram<u64>>>,
}

impl Shared {
    /// Replaces core `core`'s snapshot.
    pub fn publish(&self, core: usize, snapshot: Histogram<u64>) {
        let mut slots = self.latency.lock().expect("not poisoned");
        if slots.len() <= core {
            slots.resize_with(core + 1, new_histogram);
        }
        slots[core] = snapshot;
    }

    /// p99 over every core's snapshot.
    pub fn p99_us(&self) -> u64 {
        let slots = self.latency.lock().expect("not poisoned");
        let mut all = new_histogram();
        for slot in slots.iter() {
            let _ = all.add(slot);
        }
        if all.is_empty() {
            0
        } else {
            all.value_at_quantile(0.99)
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            p9999: histogram.value_at_quantile(0.9999),
            max: histogram.max(),
        }
    }
}

/// HdrHistogram's percentile-distribution text (as `outputPercentileDistribution` writes it).
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for value in histogram.iter_quantiles(2) {
        let quantile = value.quantile_iterated_to();
        let inverse =
            if quantile < 1.0 { format!("{:.2}", 1.0 / (1.0 - quantile)) } else { "inf".into() };
        out.push_str(&format!(
            "{:12.3} {:14.12} {:10} {:>14}\n",
            value.value_iterated_to() as f64,
            quantile,
            value.count_since_last_iteration(),
            inverse
        ));
    }
    out.push_str(&format!(
        "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {}, Total count = {}]\n",
        histogram.mean(),
        histogram.stdev(),
        histogram.max(),
        histogram.len()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_distribution() {
        let mut histogram = new_histogram();
        for us in 1..=10_000u64 {
            histogram.record(us).unwrap();
        }
        let p = Percentiles::of(&histogram);
        assert!((4990..=5010).contains(&p.p50), "{p:?}");
        assert!((9890..=9910).contains(&p.p99), "{p:?}");
        // 3 significant digits: max is reported at the top of its bucket.
        assert!((10_000..=10_010).contains(&p.max), "{p:?}");
        let text = percentile_distribution(&histogram);
        assert!(text.contains("Total count = 10000"));
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn shared_merges_worker_histograms() {
        let shared = Shared::default();
        assert_eq!(shared.p99_us(), 0);
        let mut local = new_histogram();
        local.record(1000).unwrap();
        shared.publish(1, local);
        assert!((995..=1005).contains(&shared.p99_us()));
    }
}
