//! Wiring: builds the catalog, engine, recorder, replication publisher (an ingest node) or
//! follower (an edge node, whose only feed is the ingest node's stream), feeds (the
//! simulator, exchanges and the publish feed), gRPC services (market, ingest, history,
//! health, reflection) and the HTTP listener (metrics, health, stats) from a
//! [`Config`], runs them, and shuts them down in order: the feeds; client streams told
//! the server is going away (`UNAVAILABLE`) and connections drained, what is left of them
//! cut at the drain deadline; the engine, which finishes what it accepted; then the
//! recorder's last batches. Entry points take the listener and the clock as arguments, so
//! tests bind port 0 and can set the time.
//!
//! How each part is stopped: whatever waits on outside events (a feed's thread or its
//! open publish streams, history streams, the gRPC server) watches a
//! [`crate::shutdown::Shutdown`] signal, one per phase above. The engine and the
//! recorder are told in band instead, because they must first finish what they
//! accepted: a shard's `Stop` command queues behind the feed batches it has, and the
//! recorder ends when the last shard's tap closes, with a deadline for the store. The
//! stop itself is in [`stop`].

mod stop;

use std::net::SocketAddr;
use std::sync::Arc;

use raven_model::InstrumentRegistry;
use raven_proto::history_server::HistoryServer;
use raven_proto::ingest_server::IngestServer;
use raven_proto::limits::{
    MAX_MARKET_REQUEST_BYTES, MAX_PUBLISH_REQUEST_BYTES, MAX_SUBSCRIPTIONS_PER_STREAM,
};
use raven_proto::market_server::MarketServer;
use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::api::auth::{Authenticate, Keys, KeysError};
use crate::api::calls::CallStats;
use crate::api::connections::{Connections, TrackRequests};
use crate::api::drain::{Draining, RefuseWhileDraining};
use crate::api::history::HistoryApi;
use crate::api::ingest::{self, IngestApi};
use crate::api::market::{Limits, MarketApi, MarketService};
use crate::api::tls::Acceptor;
use crate::clock::Clock;
use crate::config::{Config, Role};
use crate::engine::{Engine, EngineConfig, ReplicaContext, ShardContext};
use crate::fanout::{Fanout, WriteBudget};
use crate::feed::exchange::ExchangeFeed;
use crate::feed::sim::SimFeed;
use crate::feed::{Catalog, Feed, FeedContext, FeedHandle, FeedInput};
use crate::http::{HttpConnections, HttpState};
use crate::metrics::{Metrics, Sources};
use crate::query::{Backfill, Recorded, StoreReader};
use crate::recorder::{Recorder, RecorderStats};
use crate::replication::{
    Follower, FollowerStats, ReplicationError, ReplicationStats, Replicator, StreamHistory,
};
use crate::shutdown::{self, Trigger};
use crate::store::StoreError;
use crate::store::spill::Spill;
pub use stop::Progress;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Threads or sockets.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The gRPC transport failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load the descriptors (a build defect).
    #[error("gRPC reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The store (or its spill file) could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The API keys file cannot be used.
    #[error("{0}")]
    Keys(KeysError),
    /// Replication to NATS JetStream cannot start.
    #[error("{0}")]
    Replication(#[from] ReplicationError),
    /// The HTTP listener's address could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Http {
        /// `[http] listen`.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running server. [`RunningServer::shutdown`] stops it in order; dropped without it
/// (a test that panicked), it still stops its threads, without the drain.
pub struct RunningServer {
    addr: SocketAddr,
    fanout: Arc<Fanout>,
    // Options so that both `shutdown` and `Drop` can take them, whichever comes first.
    engine: Option<Engine>,
    feeds: Vec<FeedHandle>,
    grpc: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    stop_grpc: Trigger,
    connections: Arc<Connections>,
    http_connections: Arc<HttpConnections>,
    health: tonic_health::server::HealthReporter,
    shutdown: Trigger,
    drain_trigger: Trigger,
    drain: std::time::Duration,
    clock: Arc<dyn Clock>,
    progress: Progress,
    recorder: Option<Recorder>,
    replicator: Option<Replicator>,
    /// An edge node's reader of the ingest node's stream, and what stops it.
    follower: Option<(Follower, Trigger)>,
    http: Option<Http>,
    keys: Option<Arc<Keys>>,
    /// The Market service, whose subscribe rate a reload sets.
    market: Arc<MarketService>,
    /// What every connection was told in its HTTP/2 settings.
    streams_per_connection: u32,
    /// The TLS configuration handshakes use, which a reload renews.
    tls: Option<Acceptor>,
}

/// The running HTTP listener.
struct Http {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: Trigger,
}

/// Engine output batches the recorder's tap holds before the engine waits for it.
const TAP_BATCHES: usize = 4096;

/// Accept-queue length for the gRPC listener. Tokio's default (1024) overflows when a
/// thousand clients connect at once (seen in the 1,000-client test as connection resets);
/// the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the gRPC listener with a backlog fit for thousands of clients.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts everything on `listener`, with `clock` as the time of events, runs and
/// requests (`SystemClock` outside tests).
pub async fn start(
    config: &Config,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
) -> Result<RunningServer, AppError> {
    let addr = listener.local_addr()?;
    // Bound first: a taken port fails the start before any thread runs.
    let http_listener = match config.http {
        Some(http) => Some(
            TcpListener::bind(http)
                .await
                .map_err(|source| AppError::Http { addr: http, source })?,
        ),
        None => None,
    };
    let keys = match &config.keys_file {
        Some(path) => {
            let keys = Keys::load(path, config.key_limits).map_err(AppError::Keys)?;
            tracing::info!(keys_file = %path.display(), keys = keys.len(), "API keys required");
            if config.tls.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(%addr, "API keys are sent in the clear: the gRPC listener is not on loopback and has no TLS ([tls] cert and key)");
            }
            Some(Arc::new(keys))
        }
        None => None,
    };
    let started = clock.now();
    let registry = InstrumentRegistry::new();
    let fanout = Arc::new(Fanout::with_budget(WriteBudget::new(
        config.fanout.write_budget_per_s,
        config.fanout.write_budget_max_per_s,
    )));
    let catalog = Catalog::new(registry.clone());

    let mut ctx = ShardContext::new(catalog.clone(), clock.clone(), fanout.clone());
    let recorder = match config.store.clone() {
        Some(store) => {
            let (tap, tapped) = crossbeam_channel::bounded(TAP_BATCHES);
            ctx.taps.push(tap);
            ctx.checkpoint_every = store.snapshot_every;
            let (registry, clock) = (registry.clone(), clock.clone());
            // Opening may connect to PostgreSQL with a blocking client: off the runtime.
            let recorder = tokio::task::spawn_blocking(move || {
                let db = crate::store::open(&store.url, &store.schema)?;
                let spill = Spill::open(&store.spill, store.spill_reserve)?;
                tracing::info!(
                    store = %db.describe(),
                    spill = %store.spill.display(),
                    spill_reserved_mb = store.spill_reserve >> 20,
                    queue_mb = store.recorder.queue_bytes >> 20,
                    "recording"
                );
                if crate::store::shares_filesystem(&store.url, &store.spill) {
                    tracing::warn!(
                        spill = %store.spill.display(),
                        "the spill file is on the database's filesystem: when that disk fills, the store fails and only the spill file's reservation and the memory queue hold new events; set store.spill to another disk"
                    );
                }
                let run = clock.now().0;
                Recorder::start(store.recorder, db, spill, registry, tapped, run, clock)
                    .map_err(StoreError::from)
            })
            .await
            .map_err(std::io::Error::other)??;
            Some(recorder)
        }
        None => None,
    };
    let replicator = match config.replication.clone() {
        Some(replication) if config.role == Role::Ingest => {
            ctx.replica_checkpoints = true;
            ctx.checkpoint_every = replication.checkpoint_every;
            let run = recorder.as_ref().map_or(clock.now().0, Recorder::run);
            let replicator =
                Replicator::start(replication, (run, config.shards), clock.clone()).await?;
            ctx.inline_taps.push(replicator.tap());
            Some(replicator)
        }
        _ => None,
    };
    let edge = match &config.replication {
        Some(replication) if config.role == Role::Edge => {
            let stats = Arc::new(FollowerStats::default());
            let (feed, _, _) = catalog.add_feed(&format!("edge of {}", replication.stream()));
            ctx.replica = Some(ReplicaContext {
                feed,
                stats: stats.replica.clone(),
            });
            Some((replication.clone(), stats))
        }
        _ => None,
    };
    let engine = Engine::start(EngineConfig::with_shards(config.shards), ctx)?;
    if let Some(replicator) = &replicator {
        replicator.attach(engine.commands());
    }
    let follower = match edge {
        Some((replication, stats)) => {
            let (stop, stopped) = shutdown::channel();
            let follower =
                Follower::start(replication, engine.input(), stats, clock.clone(), stopped).await?;
            Some((follower, stop))
        }
        None => None,
    };
    // The simulator first, so its instruments keep the ids they have always had.
    let mut feeds: Vec<Box<dyn Feed>> = Vec::new();
    if let Some(sim) = config.sim {
        feeds.push(Box::new(SimFeed::new(sim)));
    }
    for exchange in &config.feeds {
        feeds.push(Box::new(ExchangeFeed::new(exchange.clone())));
    }
    let ingest = if follower.is_some() {
        ingest::on_edge()
    } else {
        let (publish, ingest) = ingest::publish_feed();
        feeds.push(Box::new(publish));
        ingest
    };
    let feeds = feeds
        .into_iter()
        .map(|feed| {
            let (id, resync, stats) = catalog.add_feed(feed.name());
            feed.spawn(FeedContext {
                id,
                catalog: catalog.clone(),
                input: FeedInput::new(engine.input(), stats, clock.clone()),
                clock: clock.clone(),
                resync,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;

    let (trigger, shutdown) = shutdown::channel();
    // Fired first at shutdown: the HTTP listener's readiness is this signal, and new
    // streams are refused from then on.
    let (drain_trigger, draining) = shutdown::channel();
    let ingest = IngestServer::new(ingest).max_decoding_message_size(MAX_PUBLISH_REQUEST_BYTES);
    let connections = Connections::new(config.connections);
    let http_connections = HttpConnections::new(config.max_http_connections);
    let calls = Arc::new(CallStats::default());
    let mut service = MarketService::new(
        catalog.clone(),
        engine.commands(),
        fanout.clone(),
        clock.clone(),
        calls.clone(),
        Limits {
            max_instruments_per_request: config.max_instruments_per_request,
            max_subscriptions: MAX_SUBSCRIPTIONS_PER_STREAM,
            start_backlog_bytes: config.start_backlog_bytes,
            fanout: config.fanout,
        },
    );
    if let (Some(store), Some(recorder)) = (&config.store, &recorder) {
        service = service.with_history(Backfill::Recorded(Recorded {
            reader: StoreReader::new(store.clone()),
            run: recorder.run(),
            committed: recorder.committed(),
        }));
    }
    if let (Some(replication), Some(_)) = (&config.replication, &follower) {
        service = service.with_history(Backfill::Stream(StreamHistory::new(replication.clone())));
    }
    let service = Arc::new(service);
    service.set_subscribe_rate(config.subscribe_requests_per_s);
    let sources = Sources {
        fanout: fanout.clone(),
        recorder: recorder.as_ref().map(Recorder::stats),
        replication: replicator.as_ref().map(Replicator::stats),
        edge: follower.as_ref().map(|(f, _)| f.stats()),
        connections: connections.clone(),
        http: http_connections.clone(),
        calls: calls.clone(),
        keys: keys.clone(),
        catalog: catalog.clone(),
        engine: engine.stats(),
        started,
        files: config
            .store
            .iter()
            .flat_map(|store| {
                let database =
                    crate::store::sqlite_path(&store.url).map(|p| ("database", p.to_owned()));
                database.into_iter().chain([("spill", store.spill.clone())])
            })
            .collect(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    match follower.as_ref().map(|(f, _)| f.stats()) {
        // An edge serves once it has started from the checkpoints.
        Some(edge) => {
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            tokio::spawn(serving_when_ready(health.clone(), edge, draining.clone()));
        }
        None => set_serving(&health).await,
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(raven_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let market_api = MarketApi::new(service.clone());
    let history_api = HistoryApi::new(
        config.store.clone().map(StoreReader::new),
        clock.clone(),
        shutdown.clone(),
        Draining {
            signal: draining.clone(),
            time: config.drain,
            clock: clock.clone(),
        },
    );
    let market =
        MarketServer::new(market_api.clone()).max_decoding_message_size(MAX_MARKET_REQUEST_BYTES);

    let tls = config.tls.as_ref().map(Acceptor::new);
    let incoming = connections.incoming(listener, tls.clone());
    tokio::spawn(connections.clone().watch(shutdown.clone()));
    if fanout.budget().adapts() {
        tokio::spawn(fanout.budget().clone().follow_load(shutdown.clone()));
    }
    let (stop_grpc, mut stopped) = shutdown::channel();
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .max_concurrent_streams(Some(config.streams_per_connection))
        // Outermost first: refusals (draining, no key) are counted as calls too.
        .layer(TrackRequests::new(calls.clone()))
        .layer(RefuseWhileDraining::new(draining.clone()))
        .layer(Authenticate::new(keys.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(market)
        .add_service(ingest)
        .add_service(HistoryServer::new(history_api.clone()))
        .serve_with_incoming_shutdown(incoming, async move { stopped.wait().await });
    let grpc = tokio::spawn(grpc);
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        client_certs = config.tls.as_ref().is_some_and(|tls| tls.client_certs),
        "serving gRPC"
    );
    let http = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let state = Arc::new(HttpState {
                metrics: Metrics::new(sources.clone()),
                sources,
                draining,
                clock: clock.clone(),
                market: market_api,
                history: history_api,
                keys: keys.clone(),
            });
            let (stop, stopped) = shutdown::channel();
            let task = tokio::spawn(crate::http::serve(
                listener,
                state,
                config.http_head_timeout,
                stopped,
            ));
            tracing::info!(%addr, "serving HTTP: the dashboard at /, the WebSocket gateway at /ws, /metrics, /healthz, /readyz, /api/v1/stats, /api/v1/instruments, /api/v1/snapshot, /api/v1/history");
            Some(Http { addr, task, stop })
        }
        None => None,
    };
    Ok(RunningServer {
        addr,
        fanout,
        engine: Some(engine),
        feeds,
        grpc: Some(grpc),
        stop_grpc,
        connections,
        http_connections,
        health,
        shutdown: trigger,
        drain_trigger,
        drain: config.drain,
        clock,
        progress: Progress::default(),
        recorder,
        replicator,
        follower,
        http,
        keys,
        market: service,
        streams_per_connection: config.streams_per_connection,
        tls,
    })
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscriber stats.
    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    /// The engine (for lock-free top-of-book reads).
    pub fn engine(&self) -> &Engine {
        self.engine
            .as_ref()
            .expect("the engine runs until the server is stopped, which takes it (invariant)")
    }

    /// The recorder's counters, when recording.
    pub fn recorder_stats(&self) -> Option<Arc<RecorderStats>> {
        self.recorder.as_ref().map(Recorder::stats)
    }

    /// The replication publisher's counters, on an ingest node.
    pub fn replication_stats(&self) -> Option<Arc<ReplicationStats>> {
        self.replicator.as_ref().map(Replicator::stats)
    }

    /// What an edge node has read of its ingest node's stream.
    pub fn edge_stats(&self) -> Option<Arc<FollowerStats>> {
        self.follower.as_ref().map(|(f, _)| f.stats())
    }

    /// The gRPC listener's connections.
    pub fn connections(&self) -> &Arc<Connections> {
        &self.connections
    }

    /// The HTTP listener's bound address, when it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// What SIGHUP does. With `config` (the configuration file read again, TLS files
    /// included), applies its `[limits]` and the connection timeouts and serves its TLS
    /// certificate, key and client CA from the next handshake on; then reads the API keys
    /// file again (with the limits it sets), ending the streams of keys no longer in it. A
    /// keys file that cannot be used changes no key and is logged with its line. What
    /// cannot change while running (listeners, store, feeds, TLS on or off, HTTP/2
    /// settings) is left as it is.
    pub fn reload(&self, config: Option<&Config>) {
        if let Some(config) = config {
            self.connections.set_limits(config.connections);
            self.http_connections.set_max(config.max_http_connections);
            self.market
                .set_subscribe_rate(config.subscribe_requests_per_s);
            if let Some(keys) = &self.keys {
                keys.set_defaults(config.key_limits);
            }
            if config.streams_per_connection != self.streams_per_connection {
                tracing::warn!(
                    running = self.streams_per_connection,
                    configured = config.streams_per_connection,
                    "limits.streams_per_connection is in every connection's HTTP/2 settings: it changes at the next start"
                );
            }
            if config.keys_file.as_deref() != self.keys.as_ref().map(|k| k.path()) {
                tracing::warn!(
                    "auth.keys_file changes (to or from none, or to another file) at the next start"
                );
            }
            match (&self.tls, &config.tls) {
                (Some(running), Some(tls)) => {
                    running.replace(tls);
                    tracing::info!(
                        client_certs = tls.client_certs,
                        "reloaded the TLS certificate, key and client CA"
                    );
                }
                (None, None) => {}
                _ => tracing::warn!("TLS is turned on or off at the next start"),
            }
            tracing::info!(
                max_connections = config.connections.max_connections,
                connections_per_ip_per_s = config.connections.per_ip_per_s,
                max_http_connections = config.max_http_connections,
                subscribe_requests_per_s = config.subscribe_requests_per_s,
                "reloaded limits; listeners, store and feeds change at the next start"
            );
        }
        let Some(keys) = &self.keys else {
            return;
        };
        match keys.reload() {
            Ok((count, revoked)) => tracing::info!(keys = count, revoked, "reloaded API keys"),
            Err(e) => tracing::error!(error = %e, "API keys not reloaded; the keys in force stay"),
        }
    }
}

/// Every service serving, as health checks see them.
async fn set_serving(health: &tonic_health::server::HealthReporter) {
    health.set_serving::<MarketServer<MarketApi>>().await;
    health.set_serving::<IngestServer<IngestApi>>().await;
    health.set_serving::<HistoryServer<HistoryApi>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
}

/// Sets an edge node's services serving once it is ready, unless the drain began.
async fn serving_when_ready(
    health: tonic_health::server::HealthReporter,
    edge: Arc<FollowerStats>,
    draining: crate::shutdown::Shutdown,
) {
    while !edge.ready.load(std::sync::atomic::Ordering::Relaxed) {
        if draining.is_set() {
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    if !draining.is_set() {
        set_serving(&health).await;
    }
}

/// How often an edge's health looks whether it is ready.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(50);
