//! What a shard has done, for metrics: counters and a receive → publish latency
//! histogram that only the shard's thread writes (a relaxed load and store, no locked
//! instruction, nothing shared written on the hot path) and a scrape reads, summing the
//! shards.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::EngineInput;

/// A counter with one writer: `add` is a plain load and store.
#[derive(Debug, Default)]
pub struct Tally(AtomicU64);

impl Tally {
    fn add(&self, n: u64) {
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

/// Upper bounds of the latency buckets, ns: 10 µs to 1 s.
pub const LATENCY_BOUNDS_NS: [u64; 15] = [
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
];

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Feed events applied.
    pub events: Tally,
    /// Input batches processed.
    pub batches: Tally,
    /// Time spent processing them, ns.
    pub busy_ns: Tally,
    /// Time spent waiting for a full tap (the recorder behind), ns.
    pub tap_wait_ns: Tally,
    /// Events with a receive time, per latency bucket (the last: over the last bound).
    latency: [Tally; LATENCY_BOUNDS_NS.len() + 1],
    /// Their receive → publish latencies summed, ns.
    pub latency_sum_ns: Tally,
}

impl ShardStats {
    /// Counts one event that was received at `receive` and published at `publish`.
    pub(super) fn latency(&self, receive: u64, publish: u64) {
        let ns = publish.saturating_sub(receive);
        let bucket = LATENCY_BOUNDS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.latency[bucket].add(1);
        self.latency_sum_ns.add(ns);
    }

    pub(super) fn batch(&self, events: usize, busy_ns: u64) {
        self.events.add(events as u64);
        self.batches.add(1);
        self.busy_ns.add(busy_ns);
    }

    pub(super) fn tap_wait(&self, ns: u64) {
        self.tap_wait_ns.add(ns);
    }

    /// Events per latency bucket (not cumulative), the last over every bound.
    pub fn latency_buckets(&self) -> [u64; LATENCY_BOUNDS_NS.len() + 1] {
        std::array::from_fn(|i| self.latency[i].get())
    }
}

/// Every shard's counters, with their input queues, for a scrape.
#[derive(Clone)]
pub struct EngineStats {
    pub(super) shards: Vec<Arc<ShardStats>>,
    pub(super) input: EngineInput,
}

impl EngineStats {
    /// Each shard's counters, by shard number.
    pub fn shards(&self) -> &[Arc<ShardStats>] {
        &self.shards
    }

    /// Input batches waiting for shard `n`.
    pub fn queued(&self, n: usize) -> usize {
        self.input.shards.get(n).map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_the_first_bucket_that_holds_them() {
        let stats = ShardStats::default();
        stats.latency(1_000, 11_000); // 10 µs: the first bucket, its bound included
        stats.latency(0, 10_001); // just over
        stats.latency(0, 2_000_000_000); // over every bound
        stats.latency(5, 0); // a clock step back counts as 0
        let mut expected = [0u64; LATENCY_BOUNDS_NS.len() + 1];
        expected[0] = 2;
        expected[1] = 1;
        expected[LATENCY_BOUNDS_NS.len()] = 1;
        assert_eq!(stats.latency_buckets(), expected);
        assert_eq!(stats.latency_sum_ns.get(), 10_000 + 10_001 + 2_000_000_000);
    }
}
