//! `raven bench`: the whole-server load generator. For each client count N it opens N
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
//! With `max`, each N steps the rate up ×1.5 from `rate` and reports the highest rate it
//! sustained: published at 97% of the target or more (ingest backpressure slows a
//! publisher that the server cannot keep up with), loss ≤ 0.1%, p99 ≤ 100 ms.
//!
//! Not here yet (issue 4): `--compare nats://…`, `--soak`, the SVG plot and
//! `scripts/bench.sh`.

mod load;
mod report;
mod server;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{BenchReport, Row};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A running server to target; `None` starts one (`raven_binary serve`) per run.
    pub server: Option<String>,
    /// The `raven` binary used to start a server when `server` is `None`.
    pub raven_binary: PathBuf,
    /// Config file for the server the bench starts.
    pub server_config: Option<PathBuf>,
    /// Client counts, one row each.
    pub clients: Vec<usize>,
    /// Events published per second, all instruments together.
    pub rate: u64,
    /// Measured time per row.
    pub duration: Duration,
    /// Unmeasured time before it (connections warm, queues steady).
    pub warmup: Duration,
    /// Bench instruments (`BENCH:T0`…); every client subscribes to all of them.
    pub instruments: usize,
    /// Find the highest sustained rate per N instead of measuring `rate` only: start at
    /// `rate` and step up ×1.5 until a row is not sustained (published under 97% of the
    /// target, lost over 0.1%, or p99 over 100 ms), or the next step would pass this cap.
    pub max: Option<u64>,
}

/// A row sustains its rate when the publisher actually achieved it (ingest applies
/// backpressure, so a saturated server slows the publisher instead of losing events)...
const MIN_ACHIEVED: f64 = 0.97;
/// ...it loses at most this fraction of deliveries...
const MAX_LOSS: f64 = 0.001;
/// ...and its p99 latency stays within this (µs).
const MAX_P99_US: u64 = 100_000;

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
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
}

/// Runs every row of `config`, reporting progress through `progress`.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let mut rows = Vec::new();
    for &clients in &config.clients {
        let mut rate = config.rate;
        let mut best: Option<Row> = None;
        loop {
            let row = run_one(config, clients, rate, &mut progress).await?;
            progress(&row.summary());
            let sustained = row.published_per_s >= MIN_ACHIEVED * rate as f64
                && (row.lost as f64) <= MAX_LOSS * (row.published * clients as u64) as f64
                && row.latency_us.p99 <= MAX_P99_US;
            let Some(cap) = config.max else {
                rows.push(row);
                break;
            };
            if !sustained {
                progress(&format!(
                    "N={clients}: {rate} events/s not sustained; stopping"
                ));
                break;
            }
            best = Some(row);
            let next = rate + rate / 2;
            if next > cap {
                break;
            }
            rate = next;
        }
        rows.extend(best);
    }
    Ok(BenchReport {
        duration_s: config.duration.as_secs_f64(),
        rows,
    })
}

async fn run_one(
    config: &BenchConfig,
    clients: usize,
    rate: u64,
    progress: &mut impl FnMut(&str),
) -> Result<Row, BenchError> {
    let server = match &config.server {
        Some(url) => server::Target::remote(url.clone()),
        None => {
            progress(&format!("N={clients}: starting a server"));
            server::Target::spawn(&config.raven_binary, config.server_config.as_deref()).await?
        }
    };
    let row = load::run_row(config, clients, rate, &server, progress).await;
    server.stop().await;
    row
}
