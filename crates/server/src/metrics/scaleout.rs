//! The scale-out metrics: an ingest node's replication publisher (`raven_replication_*`)
//! and an edge node's reading of the stream (`raven_edge_*`).

use std::fmt;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::DescriptorEncoder;

use super::{counter, gauge, histogram};
use crate::engine::stats::EngineStats;
use crate::histogram::BOUNDS_NS;
use crate::replication::{FollowerStats, ReplicationStats};

pub(super) fn replication(e: &mut DescriptorEncoder<'_>, r: &ReplicationStats) -> fmt::Result {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    for (name, help, v) in [
        (
            "raven_replication_published_batches",
            "Event messages NATS JetStream acknowledged.",
            load(&r.published),
        ),
        (
            "raven_replication_published_events",
            "Events in them.",
            load(&r.published_events),
        ),
        (
            "raven_replication_dropped_events",
            "Events not replicated: the buffer was full while NATS was unreachable or slow.",
            load(&r.dropped_events),
        ),
        (
            "raven_replication_gaps",
            "Gap markers sent to the edges (one per run of dropped batches of a shard).",
            load(&r.gaps),
        ),
        (
            "raven_replication_resends",
            "Times publishing went back to the first unacknowledged batch.",
            load(&r.resends),
        ),
        (
            "raven_replication_checkpoints",
            "Book checkpoints written to the KV bucket edges start from.",
            load(&r.checkpoints),
        ),
        (
            "raven_replication_checkpoints_failed",
            "Checkpoints not written (the instrument's next one replaces it).",
            load(&r.checkpoints_failed),
        ),
    ] {
        counter(e, name, help, v)?;
    }
    gauge(
        e,
        "raven_replication_up",
        "1 while NATS JetStream takes batches.",
        u64::from(r.up.load(Ordering::Relaxed)),
    )?;
    gauge(
        e,
        "raven_replication_buffered_bytes",
        "Bytes of batches not yet acknowledged by NATS.",
        load(&r.buffered_bytes),
    )?;
    gauge(
        e,
        "raven_replication_stream_sequence",
        "The stream sequence of the last acknowledged message.",
        load(&r.stream_sequence),
    )
}

pub(super) fn edge(
    e: &mut DescriptorEncoder<'_>,
    f: &FollowerStats,
    engine: &EngineStats,
) -> fmt::Result {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let r = &f.replica;
    for (name, help, v) in [
        (
            "raven_edge_messages",
            "Messages read from the ingest node's stream.",
            load(&f.messages),
        ),
        (
            "raven_edge_live_messages",
            "Batches handed on from the live subscription, before the stream delivered them.",
            load(&f.live),
        ),
        (
            "raven_edge_events",
            "Events applied and forwarded.",
            load(&r.events),
        ),
        (
            "raven_edge_skipped_events",
            "Events at or below what an instrument's checkpoint held, skipped.",
            load(&r.skipped),
        ),
        (
            "raven_edge_gaps",
            "Sequence gaps found in what was read, over every instrument and channel.",
            load(&r.gaps),
        ),
        (
            "raven_edge_missed_events",
            "Events those gaps missed, where the next event told how many.",
            load(&r.missed),
        ),
        (
            "raven_edge_resyncs",
            "Books resynced from a checkpoint after a gap.",
            load(&r.resyncs),
        ),
        (
            "raven_edge_undecodable_messages",
            "Messages that did not decode (their shard's books resynced).",
            load(&r.undecodable),
        ),
        (
            "raven_edge_gap_markers",
            "Gap markers read: the ingest node dropped batches.",
            load(&f.gap_markers),
        ),
        (
            "raven_edge_consumer_restarts",
            "Times the stream's consumer was made again after a failure.",
            load(&f.restarts),
        ),
        (
            "raven_edge_stale_reports",
            "Times the stream was silent for longer than two heartbeats.",
            load(&f.stale_reports),
        ),
    ] {
        counter(e, name, help, v)?;
    }
    for (name, help, v) in [
        (
            "raven_edge_up",
            "1 while connected to NATS.",
            u64::from(f.up.load(Ordering::Relaxed)),
        ),
        (
            "raven_edge_ready",
            "1 once the checkpoints are applied and the stream read up to where it was at the start.",
            u64::from(f.ready.load(Ordering::Relaxed)),
        ),
        (
            "raven_edge_stale",
            "1 while the ingest node's stream is silent.",
            u64::from(f.stale.load(Ordering::Relaxed)),
        ),
        (
            "raven_edge_stream_sequence",
            "The stream sequence of the last message read.",
            load(&f.stream_sequence),
        ),
        (
            "raven_edge_pending_messages",
            "Messages the stream held beyond the last one read.",
            load(&f.pending),
        ),
    ] {
        gauge(e, name, help, v)?;
    }
    let (buckets, sum_ns) = replication_lag(engine);
    histogram(
        e,
        "raven_edge_lag_seconds",
        "Time from the ingest node publishing a message's last event to this edge applying it.",
        &buckets,
        sum_ns,
    )
}

/// An edge's replication lag, merged over its shards: bucket counts and their sum.
pub fn replication_lag(engine: &EngineStats) -> ([u64; BOUNDS_NS.len() + 1], u64) {
    let mut buckets = [0u64; BOUNDS_NS.len() + 1];
    let mut sum_ns = 0u64;
    for stats in engine.shards() {
        for (total, n) in buckets.iter_mut().zip(stats.replication_lag.buckets()) {
            *total += n;
        }
        sum_ns += stats.replication_lag.sum_ns();
    }
    (buckets, sum_ns)
}
