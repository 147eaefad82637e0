//! Prometheus metrics: one registry per server (two servers in one process keep separate
//! counts), every series read at scrape time from the counters the parts keep — each
//! feed's (counted once per batch it sends), each engine shard's (written only by its
//! thread, merged here), the fan-out's, the recorder's (`recording`), the listener's,
//! replication's (`scaleout`) — from `/proc` for the process, and from `statvfs` for the
//! disks the recorder writes to (`recording`). Nothing here is called per event: a scrape costs some atomic
//! loads and one pass over the subscribers.
//!
//! No per-instrument or per-subscriber labels (their number is the clients' to choose):
//! that detail is in `/api/v1/stats`. Feeds are few and named in the configuration, so
//! they are a label.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use raven_model::UnixNanos;

use crate::api::auth::{AuthStats, Keys};
use crate::api::calls::CallStats;
use crate::api::connections::{Connections, Refusal};
use crate::engine::stats::EngineStats;
use crate::fanout::Fanout;
use crate::feed::{Catalog, FeedStats, STATUS_KINDS};
use crate::histogram::BOUNDS_NS;
use crate::http::HttpConnections;
use crate::recorder::RecorderStats;
use crate::replication::{FollowerStats, ReplicationStats};

mod recording;
mod scaleout;

pub use scaleout::replication_lag;

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the metrics are read from.
#[derive(Clone)]
pub struct Sources {
    /// Subscribers.
    pub fanout: Arc<Fanout>,
    /// The recorder's counters, when recording.
    pub recorder: Option<Arc<RecorderStats>>,
    /// The replication publisher's counters, on an ingest node.
    pub replication: Option<Arc<ReplicationStats>>,
    /// What an edge node has read of its ingest node's stream.
    pub edge: Option<Arc<FollowerStats>>,
    /// The gRPC listener's connections.
    pub connections: Arc<Connections>,
    /// The HTTP listener's.
    pub http: Arc<HttpConnections>,
    /// Finished gRPC calls.
    pub calls: Arc<CallStats>,
    /// API keys, when calls need them.
    pub keys: Option<Arc<Keys>>,
    /// Feeds, their instruments and counters.
    pub catalog: Catalog,
    /// The engine's shards.
    pub engine: EngineStats,
    /// When the server started.
    pub started: UnixNanos,
    /// The recorder's files on disk, named by role (`database` for a SQLite store,
    /// `spill`): their filesystems' free space is read at each scrape.
    pub files: Vec<(&'static str, PathBuf)>,
}

/// A server's registry.
pub struct Metrics {
    registry: Registry,
}

impl Sources {
    /// False while an edge node is still starting from its checkpoints (true elsewhere).
    pub fn following(&self) -> bool {
        self.edge
            .as_ref()
            .is_none_or(|f| f.ready.load(Ordering::Relaxed))
    }
}

impl Metrics {
    /// A registry reading `sources` at each scrape.
    pub fn new(sources: Sources) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(sources)));
        Metrics { registry }
    }

    /// The OpenMetrics text of every series now.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a collector's error would be ours.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

struct Scrape(Sources);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// One series without labels.
fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One family of counters with one label.
fn labelled_counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: &[(&str, u64)],
) -> fmt::Result {
    let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        family
            .encode_family(&[(label, *value)])?
            .encode_counter::<NoLabelSet, _, u64>(n, None)?;
    }
    Ok(())
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    v: V,
) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.0;
        e.encode_descriptor("raven_build", "Raven's version.", None, MetricType::Info)?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        process(&mut e, s.started)?;

        feeds(&mut e, &s.catalog)?;
        engine(&mut e, &s.engine)?;

        gauge(
            &mut e,
            "raven_subscribers",
            "Subscriber streams open.",
            s.fanout.subscribers() as u64,
        )?;
        gauge(
            &mut e,
            "raven_subscriptions",
            "Subscriptions (instrument and channel) held over all subscriber streams.",
            s.fanout.subscriptions() as u64,
        )?;
        let (max_events, max_bytes) = s.fanout.max_queued();
        gauge(
            &mut e,
            "raven_subscriber_queue_max_events",
            "The most events any subscriber has queued now.",
            max_events as u64,
        )?;
        gauge(
            &mut e,
            "raven_subscriber_queue_max_bytes",
            "The most encoded bytes any subscriber has queued now.",
            max_bytes as u64,
        )?;
        counter(
            &mut e,
            "raven_subscriber_lagged",
            "Pushes a full subscriber queue refused (conflated, dropped or disconnected under its policy).",
            s.fanout.lagged(),
        )?;
        let delivered = s.fanout.delivered();
        counter(
            &mut e,
            "raven_subscriber_messages",
            "Stream messages sent to subscribers.",
            delivered.messages,
        )?;
        counter(
            &mut e,
            "raven_subscriber_delivered_events",
            "Events sent to subscribers, counted once per subscriber.",
            delivered.events,
        )?;
        counter(
            &mut e,
            "raven_subscriber_delivered_bytes",
            "Encoded bytes of the messages sent to subscribers.",
            delivered.bytes,
        )?;
        let gone = s.fanout.disconnects();
        labelled_counters(
            &mut e,
            "raven_subscriber_disconnects",
            "Subscriber streams ended, by reason: client_left, too_slow (the disconnect policy), refused (a status from the server, shutdown included).",
            "reason",
            &[
                ("client_left", gone.client_left),
                ("too_slow", gone.too_slow),
                ("refused", gone.refused),
            ],
        )?;
        counter(
            &mut e,
            "raven_subscriber_resyncs",
            "Resync snapshots sent to subscribers that lagged.",
            s.fanout.resyncs(),
        )?;
        gauge(
            &mut e,
            "raven_subscriber_write_budget",
            "Stream writes per second all subscribers share now (0: no budget); it moves between fanout.write_budget_per_s and fanout.write_budget_max_per_s with the machine's CPU load.",
            s.fanout.budget().per_s().unwrap_or(0),
        )?;

        gauge(
            &mut e,
            "raven_connections",
            "gRPC connections open.",
            s.connections.count() as u64,
        )?;
        counter(
            &mut e,
            "raven_connections_accepted",
            "gRPC connections accepted.",
            s.connections.accepted(),
        )?;
        counter(
            &mut e,
            "raven_connections_closed_by_server",
            "gRPC connections the server closed (limits and drains).",
            s.connections.closed_by_server(),
        )?;
        let refused = Refusal::ALL.map(|r| (r.limit(), s.connections.refused(r)));
        labelled_counters(
            &mut e,
            "raven_connections_refused",
            "gRPC connections closed as soon as accepted, by the limit they were over.",
            "limit",
            &refused,
        )?;
        gauge(
            &mut e,
            "raven_http_connections",
            "HTTP connections open (WebSockets included).",
            s.http.open() as u64,
        )?;
        counter(
            &mut e,
            "raven_http_connections_refused",
            "HTTP connections answered 503 and closed as soon as accepted: over limits.max_http_connections.",
            s.http.refused(),
        )?;
        if let Some(keys) = &s.keys {
            let stats = &keys.stats;
            let failures = [
                (
                    "unauthenticated",
                    stats.unauthenticated.load(Ordering::Relaxed),
                ),
                (
                    "permission_denied",
                    stats.permission_denied.load(Ordering::Relaxed),
                ),
            ];
            labelled_counters(
                &mut e,
                "raven_auth_failures",
                "Calls refused for their API key: none or unknown (unauthenticated), or a role or instrument it lacks (permission_denied).",
                "reason",
                &failures,
            )?;
            counter(
                &mut e,
                "raven_auth_keys_revoked",
                "API keys revoked by a reload.",
                stats.revoked.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut e,
                "raven_auth_keys",
                "API keys in force.",
                keys.len() as i64,
            )?;
        }
        let key_hits = |hits: fn(&AuthStats) -> &AtomicU64| {
            s.keys
                .as_ref()
                .map_or(0, |keys| hits(&keys.stats).load(Ordering::Relaxed))
        };
        let limits = &s.calls.limits;
        let hits = [
            ("max_streams", key_hits(|k| &k.streams_limited)),
            ("max_subscriptions", key_hits(|k| &k.subscriptions_limited)),
            ("ingest_events_per_s", key_hits(|k| &k.ingest_slowed)),
            (
                "subscribe_requests_per_s",
                limits.subscribe_rate.load(Ordering::Relaxed),
            ),
            (
                "subscriptions_per_stream",
                limits.subscriptions.load(Ordering::Relaxed),
            ),
        ];
        labelled_counters(
            &mut e,
            "raven_limit_hits",
            "Requests held to a limit, by limit: refused RESOURCE_EXHAUSTED (a key's max_streams and max_subscriptions, a stream's subscribe rate and subscriptions), or slowed (a publisher over its key's ingest_events_per_s).",
            "limit",
            &hits,
        )?;
        counter(
            &mut e,
            "raven_connections_tls_failures",
            "TLS handshakes refused or not finished in time (bad, expired or unknown-CA certificates).",
            s.connections.tls_failures(),
        )?;

        // Only the (method, code) pairs that happened; none at all before the first call
        // (a family without samples trips some parsers).
        let calls = s.calls.counts();
        if !calls.is_empty() {
            let mut family = e.encode_descriptor(
                "raven_grpc_calls",
                "Finished gRPC calls by method and status code (CANCELLED: the body went before its status).",
                None,
                MetricType::Counter,
            )?;
            for (method, code, n) in calls {
                family
                    .encode_family(&[("method", method), ("code", code)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }

        if let Some(r) = &s.recorder {
            recording::recorder(&mut e, r)?;
        }
        recording::disks(&mut e, &s.files)?;
        if let Some(r) = &s.replication {
            scaleout::replication(&mut e, r)?;
        }
        if let Some(f) = &s.edge {
            scaleout::edge(&mut e, f, &s.engine)?;
        }
        Ok(())
    }
}

fn feeds(e: &mut DescriptorEncoder<'_>, catalog: &Catalog) -> fmt::Result {
    let feeds = catalog.feeds();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    type Gauge = fn(usize, &FeedStats) -> u64;
    let gauges: [(&str, &str, Gauge); 2] = [
        (
            "raven_feed_instruments",
            "Instruments each feed owns.",
            |n, _| n as u64,
        ),
        (
            "raven_feed_instruments_down",
            "Instruments of each feed whose connection is down.",
            |_, f| f.instruments_down() as u64,
        ),
    ];
    for (metric, help, read) in gauges {
        let mut family = e.encode_descriptor(metric, help, None, MetricType::Gauge)?;
        for (name, n, stats) in &feeds {
            family
                .encode_family(&[("feed", name.as_str())])?
                .encode_gauge(&read(*n, stats))?;
        }
    }
    type Counter = fn(&FeedStats) -> &std::sync::atomic::AtomicU64;
    let counters: [(&str, &str, Counter); 5] = [
        (
            "raven_feed_events",
            "Events each feed sent the engine.",
            |f| &f.events,
        ),
        (
            "raven_feed_missed",
            "Venue ids (or events) each feed's gaps reported missed.",
            |f| &f.missed,
        ),
        (
            "raven_feed_connects",
            "Connections each exchange feed opened to its venue (rotations included).",
            |f| &f.connects,
        ),
        (
            "raven_feed_unknown_fields",
            "Keys of venue messages the decoders did not know, skipped: a rise means the venue changed its messages.",
            |f| &f.unknown_fields,
        ),
        (
            "raven_feed_unhandled_messages",
            "Venue messages not handled: unknown types, or symbols not subscribed.",
            |f| &f.unhandled,
        ),
    ];
    for (metric, help, read) in counters {
        let mut family = e.encode_descriptor(metric, help, None, MetricType::Counter)?;
        for (name, _, stats) in &feeds {
            family
                .encode_family(&[("feed", name.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&load(read(stats)), None)?;
        }
    }
    let mut family = e.encode_descriptor(
        "raven_feed_statuses",
        "Status events each feed sent, by kind (gap, resync, feed_down, feed_up, stale, rejected).",
        None,
        MetricType::Counter,
    )?;
    for (name, _, stats) in &feeds {
        for kind in STATUS_KINDS {
            family
                .encode_family(&[("feed", name.as_str()), ("kind", kind.name())])?
                .encode_counter::<NoLabelSet, _, u64>(&stats.statuses(kind), None)?;
        }
    }
    let mut family = e.encode_descriptor(
        "raven_feed_last_event_timestamp_seconds",
        "When each feed last sent the engine anything (0: never).",
        None,
        MetricType::Gauge,
    )?;
    for (name, _, stats) in &feeds {
        family
            .encode_family(&[("feed", name.as_str())])?
            .encode_gauge(&(load(&stats.last_event_ns) as f64 / 1e9))?;
    }
    Ok(())
}

fn engine(e: &mut DescriptorEncoder<'_>, engine: &EngineStats) -> fmt::Result {
    let shards = engine.shards();
    let names: Vec<String> = (0..shards.len()).map(|n| n.to_string()).collect();
    type Read = fn(&crate::engine::stats::ShardStats) -> u64;
    let counters: [(&str, &str, Read, f64); 5] = [
        (
            "raven_engine_events",
            "Feed events each shard applied.",
            |s| s.events.get(),
            1.0,
        ),
        (
            "raven_engine_batches",
            "Input batches each shard processed.",
            |s| s.batches.get(),
            1.0,
        ),
        (
            "raven_engine_flushes",
            "Times each shard published its output; below the batches when batches already \
             waiting went out together (the shard fell behind).",
            |s| s.flushes.get(),
            1.0,
        ),
        (
            "raven_engine_busy_seconds",
            "Time each shard spent processing input.",
            |s| s.busy_ns.get(),
            1e-9,
        ),
        (
            "raven_engine_recorder_wait_seconds",
            "Time each shard waited for the recorder's full tap.",
            |s| s.tap_wait_ns.get(),
            1e-9,
        ),
    ];
    for (metric, help, read, scale) in counters {
        let mut family = e.encode_descriptor(metric, help, None, MetricType::Counter)?;
        for (name, stats) in names.iter().zip(shards) {
            let labels = [("shard", name.as_str())];
            let mut one = family.encode_family(&labels)?;
            if scale == 1.0 {
                one.encode_counter::<NoLabelSet, _, u64>(&read(stats), None)?;
            } else {
                one.encode_counter::<NoLabelSet, _, u64>(&(read(stats) as f64 * scale), None)?;
            }
        }
    }
    let mut family = e.encode_descriptor(
        "raven_engine_input_queue_batches",
        "Feed batches waiting for each shard.",
        None,
        MetricType::Gauge,
    )?;
    for (n, name) in names.iter().enumerate() {
        family
            .encode_family(&[("shard", name.as_str())])?
            .encode_gauge(&(engine.queued(n) as u64))?;
    }
    // Merged over the shards: one series, whatever their number.
    let mut buckets = [0u64; BOUNDS_NS.len() + 1];
    let mut sum_ns = 0u64;
    for stats in shards {
        for (total, n) in buckets.iter_mut().zip(stats.latency.buckets()) {
            *total += n;
        }
        sum_ns += stats.latency.sum_ns();
    }
    histogram(
        e,
        "raven_engine_receive_to_publish_seconds",
        "Time from a feed receiving an event to the engine publishing it.",
        &buckets,
        sum_ns,
    )
}

/// A histogram of durations counted in [`BOUNDS_NS`] buckets, in seconds.
fn histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    buckets: &[u64; BOUNDS_NS.len() + 1],
    sum_ns: u64,
) -> fmt::Result {
    let bounds: Vec<(f64, u64)> = BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .chain([f64::MAX])
        .zip(buckets.iter().copied())
        .collect();
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, buckets.iter().sum(), &bounds, None)
}

/// The process's CPU time, resident memory and descriptors, from `/proc/self` (absent
/// elsewhere), and its start time.
fn process(e: &mut DescriptorEncoder<'_>, started: UnixNanos) -> fmt::Result {
    gauge(
        e,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch.",
        started.0 as f64 / 1e9,
    )?;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // After the parenthesised name: utime and stime are fields 14 and 15, in USER_HZ
        // (100 on Linux).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent.",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&(ticks as f64 / 100.0), None)?;
    }
    let rss_kb = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        });
    if let Some(kb) = rss_kb {
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size.",
            kb * 1024,
        )?;
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            e,
            "process_open_fds",
            "Open file descriptors.",
            fds.count() as u64,
        )?;
    }
    Ok(())
}
