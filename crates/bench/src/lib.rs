//! The whole-server load generator behind `raven bench`. For each client count N it opens N
//! streaming clients on their own HTTP/2 connections, publishes trades at a fixed rate
//! through the real ingest path (`Ingest.Publish`), and measures what every client
//! receives: deliveries per second, publish→receive latency (HDR histogram, every
//! delivery counted), exact loss, and the server's RSS and CPU.
//!
//! The publisher stamps each event's exchange time with its send time, so latency covers
//! ingest, engine, fan-out and the socket. Clients read event headers with
//! `raven_proto::wire::scan` and never decode bodies, so they stay cheaper than the
//! server they measure.
//!
//! With `compare`, every row runs again on NATS core pub/sub with the same payload bytes,
//! rates and client count (`nats.rs`), and the report sets the two side by side. With
//! `floor`, every row also runs on the plain-tonic relay ([`relay`]) through the same
//! client path as Raven's: what gRPC alone costs on the machine. With
//! `max`, each N steps the rate up ×1.5 from its start and reports the highest rate it
//! sustained: published at 97% of the target or more (ingest backpressure slows a
//! publisher that the server cannot keep up with), loss ≤ 0.1%, p99 ≤ 100 ms. With
//! `sample_every` (the soak), the server's RSS is read through the run and its slope
//! reported.

mod grpc;
mod nats;
mod plot;
pub mod relay;
mod report;
mod server;
mod websocket;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

pub use plot::svg;
pub use report::{BenchReport, Entry, Latency, Row};
pub use server::{PARENT_ENV, RssSample, exit_with_parent};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A running server to target; `None` starts one (`raven_binary serve`) per run.
    pub server: Option<String>,
    /// Edge nodes of `server` (an ingest node): clients subscribe to these, in turn,
    /// while events are published to `server`. Empty: clients subscribe to `server`.
    pub via_edges: Vec<String>,
    /// The `raven` binary used to start a server when `server` is `None`.
    pub raven_binary: PathBuf,
    /// Config file for the server the bench starts.
    pub server_config: Option<PathBuf>,
    /// Client counts, one row each.
    pub clients: Vec<usize>,
    /// Events published per second, all instruments together: one rate for every row,
    /// or one per client count.
    pub rates: Vec<u64>,
    /// Measured time per row.
    pub duration: Duration,
    /// Unmeasured time before it (connections warm, queues steady).
    pub warmup: Duration,
    /// Bench instruments (`BENCH:T0`…); every client subscribes to all of them.
    pub instruments: usize,
    /// Find the highest sustained rate per N instead of measuring the given rate only:
    /// start there and step up ×1.5 until a row is not sustained (published under 97% of
    /// the target, lost over 0.1%, or p99 over 100 ms), or the next step would pass this
    /// cap. When the start rate is not sustained, step down ÷1.5 instead.
    pub max: Option<u64>,
    /// A NATS server (`nats://…`) to run the same workload on, side by side.
    pub compare: Option<String>,
    /// The `raven-tonic-relay` binary: run every row on it too, as the plain-tonic floor.
    pub floor: Option<PathBuf>,
    /// Read the Raven server's RSS this often during each row (the soak).
    pub sample_every: Option<Duration>,
    /// The CA to trust when the server is on TLS (its configuration has `[tls]`, or
    /// `server` is `https://`).
    pub tls_ca: Option<PathBuf>,
    /// Also run every row with WebSocket clients on Raven's JSON gateway (`/ws` of a
    /// server the bench starts), beside the gRPC row, and compare the server CPU each
    /// delivery costs.
    pub websocket: bool,
}

impl BenchConfig {
    fn rate_for(&self, row: usize) -> u64 {
        match self.rates.as_slice() {
            [one] => *one,
            rates => rates.get(row).copied().unwrap_or(0),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.clients.is_empty() || self.clients.contains(&0) {
            return Err(BenchError::Config(
                "client counts must be at least 1".into(),
            ));
        }
        if self.rates.len() != 1 && self.rates.len() != self.clients.len() {
            return Err(BenchError::Config(format!(
                "give one rate, or one per client count ({} rates for {} client counts)",
                self.rates.len(),
                self.clients.len()
            )));
        }
        if self.websocket && self.server.is_some() {
            return Err(BenchError::Config(
                "--transport ws runs servers of its own (with HTTP on a free port): leave out --server".into(),
            ));
        }
        if self.rates.contains(&0) {
            return Err(BenchError::Config(
                "rates must be at least 1 event/s".into(),
            ));
        }
        Ok(())
    }
}

/// One row to run: this many clients at this rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowPlan {
    pub(crate) clients: usize,
    pub(crate) rate: u64,
}

/// A row sustains its rate when the publisher actually achieved it (ingest applies
/// backpressure, so a saturated server slows the publisher instead of losing events)...
const MIN_ACHIEVED: f64 = 0.97;
/// ...it loses at most this fraction of deliveries...
const MAX_LOSS: f64 = 0.001;
/// ...and its p99 latency stays within this (µs).
const MAX_P99_US: u64 = 100_000;
/// `max` gives up stepping down below this rate.
const MIN_RATE: u64 = 10;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The configuration cannot be run.
    #[error("{0}")]
    Config(String),
    /// Starting or talking to the server process.
    #[error("server process: {0}")]
    Process(#[from] std::io::Error),
    /// Connecting to the server.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{0}")]
    Call(#[from] tonic::Status),
    /// The server sent bytes that are not a `StreamResponse`.
    #[error("malformed stream data: {0}")]
    Scan(#[from] raven_proto::wire::scan::ScanError),
    /// Deliveries did not complete in time.
    #[error("{0}")]
    Stalled(String),
    /// The NATS side of `compare`.
    #[error("NATS: {0}")]
    Nats(String),
}

/// The system a row runs on.
#[derive(Debug, Clone, Copy)]
enum System<'a> {
    Raven,
    WebSocket,
    Floor(&'a std::path::Path),
    Nats(&'a str),
}

impl System<'_> {
    fn name(self) -> &'static str {
        match self {
            System::Raven => "Raven",
            System::WebSocket => "WS",
            System::Floor(_) => "tonic",
            System::Nats(_) => "NATS",
        }
    }
}

/// Replays `request` from the server at `url` and counts its events by scanning headers
/// (no decode, so the client is not what is measured); returns the events and the time
/// from the call to the last message. For measuring `History.Replay` at full speed.
pub async fn replay_rate(
    url: &str,
    request: raven_proto::pb::ReplayRequest,
) -> Result<(u64, std::time::Duration), BenchError> {
    use tonic::codegen::http::uri::PathAndQuery;
    let mut grpc = tonic::client::Grpc::new(grpc::connect(url, None).await?)
        .max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let begun = std::time::Instant::now();
    let path = PathAndQuery::from_static("/raven.v1.History/Replay");
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(request),
            path,
            grpc::RawCodec::default(),
        )
        .await?
        .into_inner();
    let mut events = 0u64;
    while let Some(message) = stream.message().await? {
        for header in raven_proto::wire::scan::events(&message) {
            header?;
            events += 1;
        }
    }
    Ok((events, begun.elapsed()))
}

/// Runs every row of `config`, reporting progress through `progress`.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let mut entries = Vec::new();
    for (index, &clients) in config.clients.iter().enumerate() {
        let plan = RowPlan {
            clients,
            rate: config.rate_for(index),
        };
        let raven = search(config, System::Raven, plan, &mut progress).await?;
        let websocket = match config.websocket {
            true => search(config, System::WebSocket, plan, &mut progress).await?,
            false => None,
        };
        let floor = match &config.floor {
            Some(relay) => search(config, System::Floor(relay), plan, &mut progress).await?,
            None => None,
        };
        let nats = match &config.compare {
            Some(url) => search(config, System::Nats(url), plan, &mut progress).await?,
            None => None,
        };
        entries.push(Entry::new(clients, raven, floor, nats).with_websocket(websocket));
    }
    Ok(BenchReport {
        duration_s: config.duration.as_secs_f64(),
        max: config.max.is_some(),
        rows: entries,
    })
}

fn sustained(row: &Row) -> bool {
    row.published_per_s >= MIN_ACHIEVED * row.rate as f64
        && (row.lost as f64) <= MAX_LOSS * (row.published * row.clients as u64) as f64
        && row.latency_us.p99 <= MAX_P99_US
}

/// One row at `plan`'s rate, or with `max` the highest sustained rate found from it.
async fn search(
    config: &BenchConfig,
    system: System<'_>,
    plan: RowPlan,
    progress: &mut impl FnMut(&str),
) -> Result<Option<Row>, BenchError> {
    let Some(cap) = config.max else {
        let row = run_one(config, system, plan, progress).await?;
        progress(&format!("{}: {}", system.name(), row.summary()));
        return Ok(Some(row));
    };
    let mut rate = plan.rate;
    let mut best: Option<Row> = None;
    let mut stepping_down = false;
    loop {
        let row = run_one(config, system, RowPlan { rate, ..plan }, progress).await?;
        progress(&format!("{}: {}", system.name(), row.summary()));
        let name = system.name();
        let clients = plan.clients;
        if sustained(&row) {
            best = Some(row);
            // Found by stepping down: the rate above was already refused.
            if stepping_down || rate + rate / 2 > cap {
                break;
            }
            rate += rate / 2;
        } else if best.is_none() && rate * 2 / 3 >= MIN_RATE {
            progress(&format!(
                "{name}: N={clients}: {rate} events/s not sustained; trying lower"
            ));
            stepping_down = true;
            rate = rate * 2 / 3;
        } else {
            progress(&format!(
                "{name}: N={clients}: {rate} events/s not sustained; stopping"
            ));
            break;
        }
    }
    Ok(best)
}

async fn run_one(
    config: &BenchConfig,
    system: System<'_>,
    plan: RowPlan,
    progress: &mut impl FnMut(&str),
) -> Result<Row, BenchError> {
    match system {
        System::Raven | System::WebSocket => {
            let websocket = matches!(system, System::WebSocket);
            let server = match &config.server {
                Some(url) => server::Target::remote(url.clone()),
                None => {
                    progress(&format!("N={}: starting a Raven server", plan.clients));
                    let config_file = config.server_config.as_deref();
                    server::Target::spawn(&config.raven_binary, config_file, websocket).await?
                }
            };
            let row = grpc::run_row(config, plan, &server, progress).await;
            server.stop().await;
            row
        }
        System::Floor(relay) => {
            progress(&format!(
                "N={}: starting the plain-tonic relay",
                plan.clients
            ));
            let server = server::Target::spawn_relay(relay).await?;
            let row = grpc::run_row(config, plan, &server, progress).await;
            server.stop().await;
            row
        }
        System::Nats(url) => {
            let target = server::Target::nats(url.to_owned());
            nats::run_row(config, plan, &target, progress).await
        }
    }
}
