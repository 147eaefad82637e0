//! Counters and histograms with one writer (an engine shard's thread, the recorder's
//! writer), read by a scrape: adding is a relaxed load and store, with no locked
//! instruction and nothing shared written by another thread.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with one writer: `add` is a plain load and store.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    /// Adds `n`; only one thread may call it.
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of the buckets, ns: 10 µs to 60 s (the recorder's commit lag reaches
/// the long end while a store is down and its batches wait).
pub const BOUNDS_NS: [u64; 18] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// Durations per bucket of [`BOUNDS_NS`], and their sum.
#[derive(Debug, Default)]
pub struct Histogram {
    /// The last bucket holds what is over every bound.
    buckets: [Tally; BOUNDS_NS.len() + 1],
    sum_ns: Tally,
}

impl Histogram {
    /// Counts one duration; only one thread may call it.
    pub fn record(&self, ns: u64) {
        let bucket = BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BOUNDS_NS.len());
        self.buckets[bucket].add(1);
        self.sum_ns.add(ns);
    }

    /// Counts per bucket (not cumulative), the last over every bound.
    pub fn buckets(&self) -> [u64; BOUNDS_NS.len() + 1] {
        std::array::from_fn(|i| self.buckets[i].get())
    }

    /// Every duration counted, summed, ns.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns.get()
    }
}

/// The upper bound of the bucket that holds quantile `q` (0 to 1) of `buckets` (as
/// [`Histogram::buckets`] gives them, perhaps summed over several), ns; `None` when
/// nothing was counted, `u64::MAX` when it is over every bound.
pub fn quantile_bound(buckets: &[u64; BOUNDS_NS.len() + 1], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(BOUNDS_NS.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    Some(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        histogram.record(10_000); // the first bucket, its bound included
        histogram.record(10_001); // just over
        histogram.record(0);
        histogram.record(120_000_000_000); // over every bound
        let mut expected = [0u64; BOUNDS_NS.len() + 1];
        expected[0] = 2;
        expected[1] = 1;
        expected[BOUNDS_NS.len()] = 1;
        assert_eq!(histogram.buckets(), expected);
        assert_eq!(histogram.sum_ns(), 10_000 + 10_001 + 120_000_000_000);
        // Four counted: the median is in the first bucket, the 99th in the last.
        assert_eq!(quantile_bound(&histogram.buckets(), 0.5), Some(10_000));
        assert_eq!(quantile_bound(&histogram.buckets(), 0.75), Some(25_000));
        assert_eq!(quantile_bound(&histogram.buckets(), 0.99), Some(u64::MAX));
        assert_eq!(quantile_bound(&Histogram::default().buckets(), 0.5), None);
    }
}
