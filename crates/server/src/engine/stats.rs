//! What a shard has done, for metrics: counters and a receive → publish latency
//! histogram that only the shard's thread writes (a relaxed load and store, no locked
//! instruction, nothing shared written on the hot path) and a scrape reads, summing the
//! shards.

use std::sync::Arc;

use super::EngineInput;
use crate::histogram::{Histogram, Tally};

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Feed events applied.
    pub events: Tally,
    /// Input batches processed.
    pub batches: Tally,
    /// Times their output went to subscribers and taps: fewer than `batches` when the
    /// shard fell behind and published batches already waiting together.
    pub flushes: Tally,
    /// Time spent processing them, ns.
    pub busy_ns: Tally,
    /// Time spent waiting for a full tap (the recorder behind), ns.
    pub tap_wait_ns: Tally,
    /// Receive → publish latencies of the events with a receive time.
    pub latency: Histogram,
    /// On an edge: from the ingest node publishing a message's last event to this shard
    /// applying it (NATS, the ingest node's outbox and the edge's reader included).
    pub replication_lag: Histogram,
}

impl ShardStats {
    /// Counts one event that was received at `receive` and published at `publish` (a
    /// clock step back counts as 0).
    pub(super) fn latency(&self, receive: u64, publish: u64) {
        self.latency.record(publish.saturating_sub(receive));
    }

    pub(super) fn batches(&self, batches: u64, events: usize, busy_ns: u64) {
        self.events.add(events as u64);
        self.batches.add(batches);
        self.flushes.add(1);
        self.busy_ns.add(busy_ns);
    }

    pub(super) fn tap_wait(&self, ns: u64) {
        self.tap_wait_ns.add(ns);
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
