//! Configuration: one TOML file (unknown keys rejected), parsed in two stages — the file
//! form ([`FileConfig`], every field optional with a documented default) and the
//! validated, resolved [`Config`] the server runs on. Command-line flags override the file.
//! The sections as written are in `config/sections.rs`.

mod sections;

pub use sections::{
    AuthSection, EngineSection, FanoutSection, HttpSection, LimitsSection, ReplicationSection,
    Role, ServerSection, ShutdownSection, SimSection, StoreSection,
};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::auth::{KeyLimits, Keys};
use crate::api::connections::ConnectionLimits;
use crate::api::tls::{Tls, TlsSection};
use crate::fanout::{FanoutConfig, QueueBound};
use crate::feed::exchange::{ExchangeConfig, FeedConfigError, FeedSection};
use crate::feed::sim::SimConfig;
use crate::recorder::RecorderConfig;
use crate::replication::ReplicationConfig;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys included).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
    },
    /// A `[[feeds]]` table cannot be used.
    #[error(transparent)]
    Feed(#[from] FeedConfigError),
    /// A value is out of its allowed range.
    #[error("invalid config value {field} = {value}: {reason}")]
    Invalid {
        /// Dotted field name.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
    /// A file a field names cannot be used.
    #[error("cannot use {field} = {path}: {reason}")]
    File {
        /// Dotted field name.
        field: &'static str,
        /// The file named.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The config file as written. Every field is optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[server]`: the gRPC listener.
    pub server: ServerSection,
    /// `[http]`: the HTTP listener (metrics, health, stats).
    pub http: HttpSection,
    /// `[tls]`: TLS and client certificates for the gRPC listener.
    pub tls: TlsSection,
    /// `[auth]`: API keys.
    pub auth: AuthSection,
    /// `[limits]`: what one client, connection or key may take.
    pub limits: LimitsSection,
    /// `[shutdown]`: the drain on SIGTERM/SIGINT.
    pub shutdown: ShutdownSection,
    /// `[sim]`: the built-in simulator feed.
    pub sim: SimSection,
    /// `[engine]`: book-keeping threads.
    pub engine: EngineSection,
    /// `[fanout]`: per-subscriber queues and their overflow policy.
    pub fanout: FanoutSection,
    /// `[store]`: where every event is recorded.
    pub store: StoreSection,
    /// `[replication]`: the NATS JetStream stream of an ingest node.
    pub replication: ReplicationSection,
    /// `[[feeds]]`: exchange connectors, one table per venue connection group.
    pub feeds: Vec<FeedSection>,
}

/// The store, resolved.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `sqlite:PATH` or `postgres://…`.
    pub url: String,
    /// PostgreSQL schema.
    pub schema: String,
    /// The spill file.
    pub spill: PathBuf,
    /// Bytes reserved for it.
    pub spill_reserve: u64,
    /// Batching, queueing and retry.
    pub recorder: RecorderConfig,
    /// Book events between stored snapshots.
    pub snapshot_every: u32,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP listen address; `None` when `http.listen = "off"`.
    pub http: Option<SocketAddr>,
    /// How long an HTTP connection may take to send a request head.
    pub http_head_timeout: Duration,
    /// TLS for the gRPC listener; `None` for plaintext.
    pub tls: Option<Tls>,
    /// The API keys file, when calls need keys.
    pub keys_file: Option<PathBuf>,
    /// Per-key limits a key does not set itself.
    pub key_limits: KeyLimits,
    /// HTTP/2 streams open at once per connection.
    pub streams_per_connection: u32,
    /// Subscribe requests per second per stream (0: no limit).
    pub subscribe_requests_per_s: u32,
    /// HTTP/2 keepalive interval.
    pub keepalive: Duration,
    /// HTTP/2 keepalive timeout.
    pub keepalive_timeout: Duration,
    /// Subscribe request size limit.
    pub max_instruments_per_request: usize,
    /// Bytes of recorded events one subscribe with a start time may send first.
    pub start_backlog_bytes: usize,
    /// Handshake and idle limits for connections.
    pub connections: ConnectionLimits,
    /// HTTP connections open at once (0: no limit).
    pub max_http_connections: usize,
    /// How long streams are served after being told the server is going away.
    pub drain: Duration,
    /// How long the whole shutdown may take.
    pub shutdown_timeout: Duration,
    /// The simulator, when it runs.
    pub sim: Option<SimConfig>,
    /// Exchange connectors.
    pub feeds: Vec<ExchangeConfig>,
    /// Engine shard threads.
    pub shards: usize,
    /// Fan-out.
    pub fanout: FanoutConfig,
    /// Recording; `None` when `store.url = "off"`.
    pub store: Option<StoreConfig>,
    /// What this node does.
    pub role: Role,
    /// The NATS JetStream stream an ingest node publishes to and edges read; `Some`
    /// unless standalone.
    pub replication: Option<ReplicationConfig>,
}

/// The password in `scheme://user:password@host…`, if there is one.
/// `value` must lie in `allowed`; `reason` says what is allowed.
fn within<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
    reason: &'static str,
) -> Result<(), ConfigError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        field,
        value: value.to_string(),
        reason,
    })
}

fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let userinfo = &rest[..rest.find('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

impl Default for Config {
    fn default() -> Self {
        FileConfig::default()
            .resolve()
            .expect("the built-in defaults are valid (invariant, tested)")
    }
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The file as TOML with every default written out (what `resolve` runs on), the
    /// password of a store URL hidden.
    pub fn to_toml(&self) -> String {
        let mut text = toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render the configuration: {e}\n"));
        if let Some(password) = url_password(&self.store.url) {
            text = text.replace(&format!(":{password}@"), ":***@");
        }
        text
    }

    /// Validates every field and resolves the configuration.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let invalid = |field, value: &dyn std::fmt::Display, reason| ConfigError::Invalid {
            field,
            value: value.to_string(),
            reason,
        };
        let listen = self.server.listen.parse().map_err(|_| {
            invalid(
                "server.listen",
                &self.server.listen,
                "expected IP:PORT, e.g. 127.0.0.1:50051",
            )
        })?;
        let http = match self.http.listen.as_str() {
            "off" => None,
            addr => Some(addr.parse().map_err(|_| {
                invalid(
                    "http.listen",
                    &self.http.listen,
                    "expected IP:PORT, e.g. 127.0.0.1:50052, or \"off\"",
                )
            })?),
        };
        self.server.check()?;
        self.http.check()?;
        self.shutdown.check()?;
        self.sim.check()?;
        self.engine.check()?;
        self.fanout.check()?;
        self.store.check()?;
        self.replication.check()?;
        self.limits.check()?;
        let role = self.server.role;
        let replication = (role != Role::Standalone).then(|| ReplicationConfig {
            nats: self.replication.nats,
            cluster: self.replication.cluster,
            storage: self.replication.storage,
            max_age: Duration::from_secs(self.replication.max_age_secs),
            max_bytes: self.replication.max_bytes,
            buffer_bytes: self.replication.buffer_bytes,
            checkpoint_every: self.store.snapshot_every,
        });
        // An edge takes its events from the ingest node, which records them.
        let edge = role == Role::Edge;
        if edge && !self.feeds.is_empty() {
            return Err(invalid(
                "feeds",
                &format!("{} tables", self.feeds.len()),
                "an edge node takes its events from the ingest node: configure the feeds there",
            ));
        }
        let store = (!edge && self.store.url != "off").then(|| StoreConfig {
            url: self.store.url,
            schema: self.store.schema,
            spill: self.store.spill,
            spill_reserve: self.store.spill_reserve_mb << 20,
            recorder: RecorderConfig {
                window: Duration::from_millis(self.store.batch_window_ms),
                max_rows: self.store.batch_max_rows,
                retry_every: Duration::from_secs(self.store.retry_secs),
                refused_retry_every: Duration::from_secs(self.store.refused_retry_secs),
                queue_bytes: self.store.queue_mb << 20,
            },
            snapshot_every: self.store.snapshot_every,
        });
        let mut feeds: Vec<ExchangeConfig> = Vec::with_capacity(self.feeds.len());
        for (index, section) in self.feeds.iter().enumerate() {
            let feed = section.resolve(index)?;
            let venue = feed.venue_name();
            let repeated = feeds
                .iter()
                .filter(|earlier| earlier.venue_name() == venue)
                .find_map(|earlier| feed.symbols.iter().find(|s| earlier.symbols.contains(s)));
            if let Some(s) = repeated {
                return Err(FeedConfigError {
                    index,
                    venue: section.venue.clone(),
                    field: "symbols",
                    reason: format!("{venue}:{s} is already in an earlier table"),
                }
                .into());
            }
            feeds.push(feed);
        }
        let tls = self.tls.resolve()?;
        let key_limits = KeyLimits {
            max_streams: self.limits.streams_per_key,
            max_subscriptions: self.limits.subscriptions_per_key,
            ingest_events_per_s: self.limits.ingest_events_per_s_per_key,
        };
        if let Some(path) = &self.auth.keys_file {
            // Read now so that a bad file stops `config check` and the start, not the
            // first call.
            Keys::load(path, key_limits).map_err(|e| ConfigError::File {
                field: "auth.keys_file",
                path: path.display().to_string(),
                reason: match e.line {
                    Some(line) => format!("line {line}: {}", e.reason),
                    None => e.reason,
                },
            })?;
        }
        Ok(Config {
            listen,
            http,
            http_head_timeout: Duration::from_secs(self.http.request_head_timeout_secs),
            tls,
            keys_file: self.auth.keys_file,
            key_limits,
            streams_per_connection: self.limits.streams_per_connection,
            subscribe_requests_per_s: self.limits.subscribe_requests_per_s,
            keepalive: Duration::from_secs(self.server.keepalive_secs),
            keepalive_timeout: Duration::from_secs(self.server.keepalive_timeout_secs.max(1)),
            max_instruments_per_request: self.server.max_instruments_per_request,
            start_backlog_bytes: self.server.start_backlog_mb << 20,
            connections: ConnectionLimits {
                handshake: Duration::from_secs(self.server.handshake_timeout_secs),
                idle: Duration::from_secs(self.server.idle_timeout_secs),
                max_connections: self.limits.max_connections,
                per_ip_per_s: self.limits.connections_per_ip_per_s,
            },
            max_http_connections: self.limits.max_http_connections,
            drain: Duration::from_secs(self.shutdown.drain_secs),
            shutdown_timeout: Duration::from_secs(self.shutdown.timeout_secs),
            sim: (!edge && self.sim.enabled.unwrap_or(feeds.is_empty())).then_some(SimConfig {
                seed: self.sim.seed,
                rate: self.sim.rate,
                levels: self.sim.levels,
            }),
            feeds,
            shards: self.engine.shards,
            fanout: FanoutConfig {
                queue: QueueBound {
                    events: self.fanout.queue_events,
                    bytes: self.fanout.queue_bytes,
                },
                trade_overflow: self.fanout.trade_overflow,
                max_batch_bytes: self.fanout.max_batch_bytes,
                batch_budget_bytes: (self.fanout.batch_budget_bytes > 0)
                    .then_some(self.fanout.batch_budget_bytes),
                write_budget_per_s: (self.fanout.write_budget_per_s > 0)
                    .then_some(self.fanout.write_budget_per_s),
                write_budget_max_per_s: (self.fanout.write_budget_max_per_s > 0)
                    .then_some(self.fanout.write_budget_max_per_s),
            },
            store,
            role,
            replication,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::LagPolicy;

    #[test]
    fn defaults_resolve() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        let sim = c.sim.expect("the simulator runs by default");
        assert_eq!((sim.seed, sim.rate, c.shards), (42, 2000, 1));
        assert_eq!(c.fanout.trade_overflow, LagPolicy::Gap);
    }

    #[test]
    fn feeds_turn_the_simulator_off_unless_it_is_asked_for() {
        let text = "[[feeds]]\nvenue = \"binance\"\nsymbols = [\"btcusdt\", \"ETHUSDT\"]\n";
        let f: FileConfig = toml::from_str(text).unwrap();
        let c = f.resolve().unwrap();
        assert!(c.sim.is_none());
        assert_eq!(c.feeds[0].symbols, ["BTCUSDT", "ETHUSDT"]);
        assert_eq!(c.feeds[0].ws_url, "wss://data-stream.binance.vision");
        assert_eq!(
            (c.feeds[0].depth_limit, c.feeds[0].rest_weight_per_minute),
            (1000, 3000)
        );
        let kraken: FileConfig =
            toml::from_str("[[feeds]]\nvenue = \"kraken\"\nsymbols = [\"btc/usd\"]\n").unwrap();
        let k = kraken.resolve().unwrap();
        assert_eq!(k.feeds[0].symbols, ["BTC/USD"]);
        assert_eq!(
            (k.feeds[0].ws_url.as_str(), k.feeds[0].depth_limit),
            ("wss://ws.kraken.com/v2", 10)
        );
        let f: FileConfig = toml::from_str(&format!("[sim]\nenabled = true\n{text}")).unwrap();
        assert!(f.resolve().unwrap().sim.is_some());
    }

    #[test]
    fn bad_feed_tables_are_refused_with_the_reason() {
        let cases = [
            (
                "venue = \"nyse\"\nsymbols = [\"X\"]",
                "venue: expected \"binance\"",
            ),
            (
                "venue = \"binance\"\nsymbols = []",
                "symbols: list at least one symbol",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"A\", \"a\"]",
                "\"a\" is listed twice",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"BTC USDT\"]",
                "is not a symbol of this venue",
            ),
            (
                "venue = \"binance-usdm\"\nsymbols = [\"A\"]\ndepth_limit = 7",
                "must be one of 5, 10",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"A\"]\nstreams_per_connection = 2000",
                "must be 2 to 1024",
            ),
            (
                "venue = \"coinbase\"\nsymbols = [\"BTCUSD\"]",
                "\"BTCUSD\" is not a symbol of this venue",
            ),
            (
                "venue = \"coinbase\"\nsymbols = [\"BTC-USD\"]\ndepth_limit = 10",
                "Coinbase sends the whole book",
            ),
            (
                "venue = \"kraken\"\nsymbols = [\"BTCUSD\"]",
                "\"BTCUSD\" is not a symbol of this venue",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"BTC/USD\"]",
                "\"BTC/USD\" is not a symbol of this venue",
            ),
            (
                "venue = \"kraken\"\nsymbols = [\"BTC/USD\"]\ndepth_limit = 20",
                "must be one of 10, 25, 100, 500, 1000",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"A\"]\nliveness_ms = 0",
                "liveness_ms: must be at least 1",
            ),
            (
                "venue = \"binance\"\nsymbols = [\"A\"]\nrotate_after_secs = 90000",
                "24 h",
            ),
            (
                "venue = \"kraken\"\nsymbols = [\"BTC/USD\"]\nrest_url = \"https://api.kraken.com\"",
                "rest_url: Kraken is read entirely over its WebSocket",
            ),
        ];
        for (table, reason) in cases {
            let f: FileConfig = toml::from_str(&format!("[[feeds]]\n{table}\n")).unwrap();
            let e = f.resolve().unwrap_err().to_string();
            assert!(e.contains(reason), "{table}: {e}");
            assert!(e.starts_with("invalid [[feeds]] table 0"), "{e}");
        }
        let e = toml::from_str::<FileConfig>(
            "[[feeds]]\nvenue = \"binance\"\nsymbols = [\"A\"]\nwsurl = \"x\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `wsurl`"), "{e}");
        let twice = "[[feeds]]\nvenue = \"binance\"\nsymbols = [\"A\"]\n[[feeds]]\nvenue = \"binance\"\nsymbols = [\"B\", \"A\"]\n";
        let e = toml::from_str::<FileConfig>(twice)
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("table 1") && e.contains("BINANCE:A is already in an earlier table"),
            "{e}"
        );
    }

    #[test]
    fn example_file_in_the_repository_shows_the_defaults() {
        let example: FileConfig =
            toml::from_str(include_str!("../../../raven.example.toml")).unwrap();
        let (example, defaults) = (example.resolve().unwrap(), Config::default());
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn file_values_are_read_and_unknown_keys_refused() {
        let f: FileConfig = toml::from_str(
            "[server]\nlisten = \"127.0.0.1:7000\"\n[sim]\nrate = 5\n[fanout]\ntrade_overflow = \"disconnect\"\nwrite_budget_per_s = 20000\nwrite_budget_max_per_s = 0\nbatch_budget_bytes = 0\n",
        )
        .unwrap();
        let c = f.resolve().unwrap();
        assert_eq!(c.fanout.write_budget_per_s, Some(20_000));
        assert_eq!(c.fanout.write_budget_max_per_s, None);
        assert_eq!(Config::default().fanout.write_budget_per_s, Some(50_000));
        assert_eq!(
            Config::default().fanout.write_budget_max_per_s,
            Some(800_000)
        );
        assert_eq!(c.fanout.batch_budget_bytes, None);
        assert_eq!(Config::default().fanout.batch_budget_bytes, Some(16 << 20));
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.sim.map(|s| s.rate), Some(5));
        assert_eq!(c.fanout.trade_overflow, LagPolicy::Disconnect);

        let err = toml::from_str::<FileConfig>("[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");

        let f: FileConfig = toml::from_str("[sim]\nrate = 0\n").unwrap();
        let err = f.resolve().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid config value sim.rate = 0: must be between 1 and 10000000 events/s"
        );
    }

    #[test]
    fn every_value_out_of_its_range_is_refused_naming_the_range() {
        let cases = [
            (
                "[server]\nkeepalive_secs = 0",
                "server.keepalive_secs = 0: must be at least 1",
            ),
            (
                "[server]\nidle_timeout_secs = 0",
                "server.idle_timeout_secs = 0: must be at least 1",
            ),
            (
                "[http]\nrequest_head_timeout_secs = 0",
                "http.request_head_timeout_secs = 0: must be at least 1",
            ),
            (
                "[server]\nstart_backlog_mb = 4097",
                "server.start_backlog_mb = 4097: must be 1 to 4096",
            ),
            (
                "[shutdown]\ndrain_secs = 3601\ntimeout_secs = 4000",
                "shutdown.drain_secs = 3601: must be at most 3600",
            ),
            (
                "[shutdown]\ndrain_secs = 5\ntimeout_secs = 5",
                "shutdown.timeout_secs = 5: must be more than shutdown.drain_secs (the drain is part of the shutdown)",
            ),
            (
                "[sim]\nlevels = 1001",
                "sim.levels = 1001: must be between 1 and 1000",
            ),
            (
                "[engine]\nshards = 65",
                "engine.shards = 65: must be between 1 and 64",
            ),
            (
                "[fanout]\nqueue_events = 15",
                "fanout.queue_events = 15: must be at least 16",
            ),
            (
                "[fanout]\nqueue_bytes = 4095",
                "fanout.queue_bytes = 4095: must be at least 4096",
            ),
            (
                "[fanout]\nmax_batch_bytes = 4194305",
                "fanout.max_batch_bytes = 4194305: must be between 4096 and 4194304 (gRPC clients refuse messages over 4 MiB by default)",
            ),
            (
                "[store]\nbatch_window_ms = 0",
                "store.batch_window_ms = 0: must be between 1 and 1000",
            ),
            (
                "[store]\nsnapshot_every = 0",
                "store.snapshot_every = 0: must be at least 1",
            ),
            (
                "[store]\nspill_reserve_mb = 7",
                "store.spill_reserve_mb = 7: must be between 8 and 1048576 (MiB)",
            ),
            (
                "[store]\nqueue_mb = 65537",
                "store.queue_mb = 65537: must be at most 65536 (MiB)",
            ),
            (
                "[replication]\ncluster = \"a.b\"",
                "replication.cluster = a.b: must be 1 to 64 letters, digits, '-' or '_' (it names a NATS stream and subjects)",
            ),
            (
                "[replication]\nnats = \"127.0.0.1:4222\"",
                "replication.nats = 127.0.0.1:4222: expected nats://HOST:PORT",
            ),
            (
                "[replication]\nmax_age_secs = 119",
                "replication.max_age_secs = 119: must be between 120 (the stream's duplicate window) and 31536000",
            ),
            (
                "[replication]\nmax_bytes = 16777215",
                "replication.max_bytes = 16777215: must be at least 16777216 (16 MiB)",
            ),
            (
                "[replication]\nbuffer_bytes = 1048575",
                "replication.buffer_bytes = 1048575: must be at least 1048576 (1 MiB)",
            ),
            (
                "[limits]\nstreams_per_connection = 0",
                "limits.streams_per_connection = 0: must be at least 1",
            ),
        ];
        for (file, message) in cases {
            let f: FileConfig = toml::from_str(file).unwrap();
            let err = f.resolve().unwrap_err().to_string();
            assert_eq!(err, format!("invalid config value {message}"), "{file}");
        }
    }

    #[test]
    fn the_file_shown_reads_back_to_the_same_configuration_without_the_password() {
        let f: FileConfig = toml::from_str(
            "[store]\nurl = \"postgres://raven:s3cret@db:5432/md\"\n[[feeds]]\nvenue = \"kraken\"\nsymbols = [\"BTC/USD\"]\n",
        )
        .unwrap();
        let shown = f.to_toml();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("url = \"postgres://raven:***@db:5432/md\""),
            "{shown}"
        );
        assert!(
            shown.contains("[[feeds]]") && shown.contains("drain_secs = 5"),
            "{shown}"
        );
        let again: FileConfig = toml::from_str(&shown).unwrap();
        assert_eq!(again.to_toml(), shown);
        let plain = FileConfig::default().to_toml();
        let back: FileConfig = toml::from_str(&plain).unwrap();
        assert_eq!(
            format!("{:?}", back.resolve().unwrap()),
            format!("{:?}", Config::default())
        );
    }

    #[test]
    fn the_http_listener_is_on_loopback_by_default_and_can_be_turned_off() {
        assert_eq!(
            Config::default().http,
            Some("127.0.0.1:50052".parse().unwrap())
        );
        let off: FileConfig = toml::from_str("[http]\nlisten = \"off\"\n").unwrap();
        assert_eq!(off.resolve().unwrap().http, None);
        let bad: FileConfig = toml::from_str("[http]\nlisten = \"50052\"\n").unwrap();
        assert_eq!(
            bad.resolve().unwrap_err().to_string(),
            "invalid config value http.listen = 50052: expected IP:PORT, e.g. 127.0.0.1:50052, or \"off\""
        );
    }
}
