//! The config file's sections as written: each `[section]` table with its documented
//! defaults and the ranges its values must lie in (`check`). `FileConfig` (in the
//! parent) gathers them; `resolve` there checks them and resolves the `Config` the
//! server runs on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, within};
use crate::fanout::LagPolicy;
use crate::replication::Storage;

const AT_LEAST_1: &str = "must be at least 1";

/// `[store]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Where events are recorded: `sqlite:PATH`, `postgres://USER@HOST:PORT/DB`, or `off`.
    /// Default `sqlite:./data/raven.db`.
    pub url: String,
    /// PostgreSQL schema for Raven's tables (created if need be). Default `raven`.
    pub schema: String,
    /// Where batches wait, once the memory queue is full, while the store is
    /// unavailable; they are backfilled from it when the store returns. Best on another
    /// disk than the database, so that one full disk does not stop both. Default
    /// `./data/raven.spill`.
    pub spill: PathBuf,
    /// Disk reserved for the spill file at start (MiB), so that a disk filling up later
    /// cannot refuse it: at 20,000 events/s (about 2.6 MB/s of rows) the default holds
    /// about 100 s, at the simulator's default 2,000 events/s about 16 minutes. The last
    /// 4 MiB are kept for the record of lost events. Default 256, at least 8.
    pub spill_reserve_mb: u64,
    /// Batches waiting for the store in memory (MiB) before they go to the spill file.
    /// Default 64.
    pub queue_mb: u64,
    /// A batch is written at most this many ms after its first event. Default 5.
    pub batch_window_ms: u64,
    /// ...or as soon as it holds this many events. Default 50000.
    pub batch_max_rows: usize,
    /// Seconds between attempts to reach a failed store. Default 1.
    pub retry_secs: u64,
    /// Seconds between tries of a store that refused (permission, a table gone, a
    /// corrupt file: it will not pass by itself; each try is logged as an error).
    /// Default 30.
    pub refused_retry_secs: u64,
    /// A book's full snapshot is stored after this many of its events (or a minute after
    /// the last one, if it changed), so a past book (`History.BookAt`) is rebuilt from the
    /// nearest one; an ingest node also writes it to the checkpoint bucket. Default 10000.
    pub snapshot_every: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            url: "sqlite:./data/raven.db".into(),
            schema: "raven".into(),
            spill: "./data/raven.spill".into(),
            spill_reserve_mb: 256,
            queue_mb: 64,
            batch_window_ms: 5,
            batch_max_rows: 50_000,
            retry_secs: 1,
            refused_retry_secs: 30,
            snapshot_every: 10_000,
        }
    }
}

impl StoreSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let window = self.batch_window_ms;
        within(
            "store.batch_window_ms",
            window,
            1..=1000,
            "must be between 1 and 1000",
        )?;
        within(
            "store.batch_max_rows",
            self.batch_max_rows,
            1..=crate::store::MAX_BATCH_ROWS,
            "must be between 1 and 16777216",
        )?;
        within(
            "store.retry_secs",
            self.retry_secs,
            1..=u64::MAX,
            AT_LEAST_1,
        )?;
        let refused = self.refused_retry_secs;
        within(
            "store.refused_retry_secs",
            refused,
            1..=u64::MAX,
            AT_LEAST_1,
        )?;
        let every = self.snapshot_every;
        within("store.snapshot_every", every, 1..=u32::MAX, AT_LEAST_1)?;
        within(
            "store.spill_reserve_mb",
            self.spill_reserve_mb,
            8..=1 << 20,
            "must be between 8 and 1048576 (MiB)",
        )?;
        let queue = self.queue_mb;
        within(
            "store.queue_mb",
            queue,
            0..=1 << 16,
            "must be at most 65536 (MiB)",
        )
    }
}

/// `[server]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address for gRPC. Default `127.0.0.1:50051` (loopback only).
    pub listen: String,
    /// Seconds between HTTP/2 keepalive pings to detect dead peers. Default 10.
    pub keepalive_secs: u64,
    /// Seconds to wait for a keepalive answer before dropping the connection. Default 20.
    pub keepalive_timeout_secs: u64,
    /// Most instruments one subscribe request may name. Default 1000.
    pub max_instruments_per_request: usize,
    /// Seconds a new connection has to begin its HTTP/2 handshake before it is closed.
    /// Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight before it is
    /// closed (a streaming subscription is in flight for as long as it lasts). Default
    /// 300.
    pub idle_timeout_secs: u64,
    /// MiB of recorded events one subscribe with a start time may send before its live
    /// part, over all the instruments it names; past it the subscribe is refused with
    /// `RESOURCE_EXHAUSTED`. Bounds what the server holds in memory for one request.
    /// Default 64.
    pub start_backlog_mb: usize,
    /// What this node does: `"standalone"` (feeds, engine, recording and clients on one
    /// machine), `"ingest"` (the same, and every engine batch published to NATS
    /// JetStream for edge nodes, `[replication]`) or `"edge"` (no feeds and no
    /// recording: replica books kept from the ingest node's stream, served to this node's
    /// clients). Default `"standalone"`.
    pub role: Role,
}

/// `[server] role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One node does everything.
    Standalone,
    /// Also publishes every engine batch to NATS JetStream.
    Ingest,
    /// Serves clients from an ingest node's stream.
    Edge,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: "127.0.0.1:50051".into(),
            keepalive_secs: 10,
            keepalive_timeout_secs: 20,
            max_instruments_per_request: 1000,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
            start_backlog_mb: 64,
            role: Role::Standalone,
        }
    }
}

impl ServerSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        within(
            "server.keepalive_secs",
            self.keepalive_secs,
            1..=u64::MAX,
            AT_LEAST_1,
        )?;
        let handshake = self.handshake_timeout_secs;
        within(
            "server.handshake_timeout_secs",
            handshake,
            1..=u64::MAX,
            AT_LEAST_1,
        )?;
        let idle = self.idle_timeout_secs;
        within("server.idle_timeout_secs", idle, 1..=u64::MAX, AT_LEAST_1)?;
        let backlog = self.start_backlog_mb;
        within(
            "server.start_backlog_mb",
            backlog,
            1..=4096,
            "must be 1 to 4096",
        )?;
        within(
            "server.max_instruments_per_request",
            self.max_instruments_per_request,
            1..=usize::MAX,
            AT_LEAST_1,
        )
    }
}

/// The least `replication.max_bytes`: 64 of the largest messages.
const MIN_STREAM_BYTES: u64 = 16 << 20;

/// `[replication]`: the NATS JetStream stream an ingest node publishes to.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// The NATS server. Default `nats://127.0.0.1:4222`.
    pub nats: String,
    /// Names the stream `RAVEN_<cluster>` and its subjects `raven.<cluster>.…`; letters,
    /// digits, `-` and `_`. One ingest node per cluster. Default `"main"`.
    pub cluster: String,
    /// Where NATS keeps the stream: `"file"` (survives a NATS restart) or `"memory"`.
    /// Default `"file"`.
    pub storage: Storage,
    /// How long the stream keeps a batch, at least 120 (its duplicate window). Default
    /// 3600.
    pub max_age_secs: u64,
    /// Bytes the stream keeps at most, the oldest batches discarded first, at least
    /// 16777216 (16 MiB). Without a bound NATS fills its JetStream memory or disk and
    /// then refuses every batch. Default 1073741824 (1 GiB: the hour at 5,000 events/s,
    /// three minutes at 100,000).
    pub max_bytes: u64,
    /// Bytes of batches held while NATS is unreachable or slow; past them batches are
    /// dropped and the gap is recorded for the edges. Default 67108864 (64 MiB: at 20,000
    /// events/s about 25 s of an outage).
    pub buffer_bytes: usize,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            nats: "nats://127.0.0.1:4222".into(),
            cluster: "main".into(),
            storage: Storage::File,
            max_age_secs: 3600,
            max_bytes: 1 << 30,
            buffer_bytes: 64 << 20,
        }
    }
}

impl ReplicationSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let cluster_ok = !self.cluster.is_empty()
            && self.cluster.len() <= 64
            && self
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !cluster_ok {
            return Err(ConfigError::Invalid {
                field: "replication.cluster",
                value: self.cluster.clone(),
                reason: "must be 1 to 64 letters, digits, '-' or '_' (it names a NATS stream and subjects)",
            });
        }
        if !self.nats.starts_with("nats://") {
            return Err(ConfigError::Invalid {
                field: "replication.nats",
                value: self.nats.clone(),
                reason: "expected nats://HOST:PORT",
            });
        }
        within(
            "replication.max_age_secs",
            self.max_age_secs,
            crate::replication::DUPLICATE_WINDOW.as_secs()..=365 * 86_400,
            "must be between 120 (the stream's duplicate window) and 31536000",
        )?;
        within(
            "replication.max_bytes",
            self.max_bytes,
            MIN_STREAM_BYTES..=i64::MAX as u64,
            "must be at least 16777216 (16 MiB)",
        )?;
        within(
            "replication.buffer_bytes",
            self.buffer_bytes,
            1 << 20..=usize::MAX,
            "must be at least 1048576 (1 MiB)",
        )
    }
}

/// `[http]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address for HTTP: `/metrics` (OpenMetrics), `/healthz`, `/readyz` and
    /// `/api/v1/stats`; `"off"` serves none of them. Default `127.0.0.1:50052`.
    pub listen: String,
    /// Seconds a connection has to send a whole request head (from the accept, or from
    /// its previous response) before it is closed. Default 10.
    pub request_head_timeout_secs: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:50052".into(),
            request_head_timeout_secs: 10,
        }
    }
}

impl HttpSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        within(
            "http.request_head_timeout_secs",
            self.request_head_timeout_secs,
            1..=u64::MAX,
            AT_LEAST_1,
        )
    }
}

/// `[shutdown]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// Seconds between telling every stream the server is going away (a `GOING_AWAY`
    /// status event; health `NOT_SERVING`, `/readyz` 503, new streams refused) and
    /// ending them, so that clients move elsewhere first; over early when no call is
    /// left. Then the feeds stop, streams end with `UNAVAILABLE` and the recorder writes
    /// its last batches. Default 5.
    pub drain_secs: u64,
    /// Seconds the whole shutdown may take; past it the server exits 1 naming what had
    /// not finished (what the recorder had not stored waits in the spill file). Default
    /// 30.
    pub timeout_secs: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection {
            drain_secs: 5,
            timeout_secs: 30,
        }
    }
}

impl ShutdownSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let drain = self.drain_secs;
        within(
            "shutdown.drain_secs",
            drain,
            0..=3600,
            "must be at most 3600",
        )?;
        within(
            "shutdown.timeout_secs",
            self.timeout_secs,
            drain + 1..=u64::MAX,
            "must be more than shutdown.drain_secs (the drain is part of the shutdown)",
        )
    }
}

/// `[auth]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The API keys file (TOML, `[[keys]]` tables; `raven keys add` writes them). When
    /// set, every call but health and reflection needs a key; SIGHUP reloads it.
    /// Default: none, every call is served.
    pub keys_file: Option<PathBuf>,
}

/// `[limits]`: 0 is no limit throughout.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// gRPC connections open at once; past it new ones are closed at once. Default: the
    /// open-file limit (raised to its hard limit at start) less 1,024 descriptors kept
    /// for the store, feeds and HTTP; `raven config show` prints it.
    pub max_connections: usize,
    /// New gRPC connections per second from one IP address; past it they are closed at
    /// once. Default 0.
    pub connections_per_ip_per_s: u32,
    /// HTTP connections (the dashboard, WebSockets, scrapes, REST reads) open at once;
    /// past it a new one is answered 503 and closed. Default 512: half the descriptors
    /// `max_connections` leaves for the store, feeds and HTTP (raise both together).
    pub max_http_connections: usize,
    /// HTTP/2 streams (calls) open at once on one connection. Default 1024.
    pub streams_per_connection: u32,
    /// Subscribe requests per second on one stream; past it the stream ends with
    /// `RESOURCE_EXHAUSTED`. Default 100.
    pub subscribe_requests_per_s: u32,
    /// With API keys, the streaming calls one key may have open (a key's own
    /// `max_streams` overrides it). Default 100.
    pub streams_per_key: usize,
    /// With API keys, the subscriptions one key may hold over all its streams
    /// (`max_subscriptions`). Default 10000.
    pub subscriptions_per_key: usize,
    /// With API keys, the events per second one key may publish; past it the publisher
    /// is slowed, never trimmed (`ingest_events_per_s`). Default 0.
    pub ingest_events_per_s_per_key: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: crate::api::connections::default_max_connections(),
            connections_per_ip_per_s: 0,
            max_http_connections: 512,
            streams_per_connection: 1024,
            subscribe_requests_per_s: 100,
            streams_per_key: 100,
            subscriptions_per_key: 10_000,
            ingest_events_per_s_per_key: 0,
        }
    }
}

impl LimitsSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let streams = self.streams_per_connection;
        within(
            "limits.streams_per_connection",
            streams,
            1..=u32::MAX,
            AT_LEAST_1,
        )
    }
}

/// `[sim]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSection {
    /// Run the simulator. Default: on, unless `[[feeds]]` are configured.
    pub enabled: Option<bool>,
    /// PRNG seed: the same seed gives the same market. Default 42.
    pub seed: u64,
    /// Events per second over all instruments. Default 2000.
    pub rate: u64,
    /// Price levels per side the simulated books start with. Default 25.
    pub levels: usize,
}

impl Default for SimSection {
    fn default() -> Self {
        SimSection {
            enabled: None,
            seed: 42,
            rate: 2000,
            levels: 25,
        }
    }
}

impl SimSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let rate = self.rate;
        within(
            "sim.rate",
            rate,
            1..=10_000_000,
            "must be between 1 and 10000000 events/s",
        )?;
        within(
            "sim.levels",
            self.levels,
            1..=1000,
            "must be between 1 and 1000",
        )
    }
}

/// `[engine]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Worker threads; instruments are spread over them, one writer per instrument.
    /// Default 1 (this leaves cores for gRPC on small machines).
    pub shards: usize,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection { shards: 1 }
    }
}

impl EngineSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        within(
            "engine.shards",
            self.shards,
            1..=64,
            "must be between 1 and 64",
        )
    }
}

/// `[fanout]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSection {
    /// Events a subscriber may have queued before its overflow policy applies. Default
    /// 32768: at 50k events/s a client may stall about 0.65 s before losing any (the
    /// 10-minute soak saw a 0.34 s stall overflow 8192). Queued events share the engine's
    /// encoded chunks, so the bound costs references, not copies.
    pub queue_events: usize,
    /// Encoded bytes a subscriber may have queued before its overflow policy applies (a
    /// chunk larger than this still goes to a subscriber with nothing queued). Queued
    /// chunks are the engine's, shared by all subscribers, but a stalled subscriber keeps
    /// alive what it has not sent: this bounds that in bytes, where the event bound
    /// alone would let one stalled client of deep book snapshots pin gigabytes. Default
    /// 4 MiB: about twice the event bound's worth of the simulator's and the bench's
    /// events (BENCHMARKS.md), so for small events the event bound applies first.
    pub queue_bytes: usize,
    /// Trade, BBO and candle channels on overflow: `"gap"` (drop, then report how many
    /// were missed) or `"disconnect"`. Book channels always conflate to a resync snapshot.
    /// Default `"gap"`.
    pub trade_overflow: LagPolicy,
    /// Largest stream message the server sends, in bytes (one event larger than it, a
    /// deep snapshot, still goes whole). Default 64 KiB: each drain copies up to this much
    /// for its subscriber, and HTTP/2 buffers messages whole, so with 1,000 clients that
    /// fall behind the server holds about this much per client several times over; at 1
    /// MiB that was 0.8–2.1 GiB of RSS and seconds of latency, at 64 KiB 250 MiB, with a
    /// higher sustained rate at 100 clients too (BENCHMARKS.md).
    pub max_batch_bytes: usize,
    /// Stream message bytes for all gRPC clients together: each client's messages are
    /// at most this over the number of subscribers (at least 4 KiB, at most
    /// `max_batch_bytes`). 0 means no budget. Default 16 MiB: a client that falls behind
    /// holds about a message's worth several times over below its queue, so with 1,000
    /// lagging clients (10k events/s each) 64 KiB messages held 230 MiB of RSS and 16 KiB
    /// ones 133, while 100 clients keep 64 KiB messages, which their highest rate needs
    /// (10.1M deliveries/s, 6.75M at 16 KiB; BENCHMARKS.md).
    pub batch_budget_bytes: usize,
    /// Stream writes per second for all clients together; each client's writes are spaced
    /// by `subscribers / budget` (when that is 1 ms or more) so that a write carries more
    /// events. 0 means no limit. Default 50000: with many clients, per-message costs on
    /// both ends (HTTP/2 framing, a syscall, the client's own per-message work) dominate,
    /// and without spacing 1,000 clients at 1k events/s on a 2-core box queue for seconds;
    /// with it, p99 is about 30 ms. Costs about 2 ms with 100 clients at 10k events/s,
    /// nothing with fewer than 50 (see BENCHMARKS.md). This is the budget on a busy
    /// machine: see `write_budget_max_per_s`.
    pub write_budget_per_s: u64,
    /// The most the write budget rises to while the machine's CPUs have room (under 50%
    /// busy, read from `/proc/stat` four times a second, and from the cgroup where the
    /// process has a CPU quota; it doubles each time, and halves back toward
    /// `write_budget_per_s` over 70%). 0 keeps it at `write_budget_per_s`.
    /// Default 800000: no spacing below 800 clients while the CPU is not what runs out,
    /// which takes 100 clients at 10k events/s from a 4.4 ms p99 to about 1.5 ms
    /// (BENCHMARKS.md).
    pub write_budget_max_per_s: u64,
}

impl Default for FanoutSection {
    fn default() -> Self {
        FanoutSection {
            queue_events: 32768,
            queue_bytes: 4 << 20,
            trade_overflow: LagPolicy::Gap,
            max_batch_bytes: 64 << 10,
            batch_budget_bytes: 16 << 20,
            write_budget_per_s: 50_000,
            write_budget_max_per_s: 800_000,
        }
    }
}

impl FanoutSection {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let events = self.queue_events;
        within(
            "fanout.queue_events",
            events,
            16..=usize::MAX,
            "must be at least 16",
        )?;
        let bytes = self.queue_bytes;
        within(
            "fanout.queue_bytes",
            bytes,
            4096..=usize::MAX,
            "must be at least 4096",
        )?;
        within(
            "fanout.max_batch_bytes",
            self.max_batch_bytes,
            4096..=4 << 20,
            "must be between 4096 and 4194304 (gRPC clients refuse messages over 4 MiB by default)",
        )?;
        if self.batch_budget_bytes != 0 {
            within(
                "fanout.batch_budget_bytes",
                self.batch_budget_bytes,
                4096..=usize::MAX,
                "must be 0 (no budget) or at least 4096",
            )?;
        }
        Ok(())
    }
}
