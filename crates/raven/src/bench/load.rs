//! One bench row: create the bench instruments, connect N clients (each its own HTTP/2
//! connection, reading raw bytes), publish at the configured rate, and account for every
//! event every client receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hdrhistogram::Histogram;
use prost::Message;
use raven_proto::pb::{self, ingest_client::IngestClient, stream_request::Request as Req};
use raven_proto::wire::scan;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use super::report::Row;
use super::server::Target;
use super::{BenchConfig, BenchError};
use crate::clock::{Clock, SystemClock};

/// Highest latency the histograms hold, in µs (60 s); above it values are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long clients may take to receive everything after publishing stops.
const DRAIN: Duration = Duration::from_secs(30);
/// Body field numbers in `Event` (see raven.proto).
const TRADE: u32 = 12;
const STATUS: u32 = 15;
const SNAPSHOT_END: u32 = 16;

/// Sends `StreamRequest`s and hands back each `StreamResponse` as raw bytes, so the client
/// scans headers instead of decoding.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RequestEncoder;
struct RawDecoder;

impl Encoder for RequestEncoder {
    type Item = pb::StreamRequest;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: pb::StreamRequest,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = pb::StreamRequest;
    type Decode = Bytes;
    type Encoder = RequestEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn connect(url: &str) -> Result<Channel, BenchError> {
    let connect = |source| BenchError::Connect {
        url: url.to_owned(),
        source,
    };
    Endpoint::from_shared(url.to_owned())
        .map_err(connect)?
        .connect()
        .await
        .map_err(connect)
}

/// What the publisher tells the clients.
struct Shared {
    /// Measurement window, exchange-time ns: only events stamped inside it are counted.
    window: (AtomicU64, AtomicU64),
    /// Events published per instrument; final once `finished` turns true.
    published: Vec<AtomicU64>,
}

/// What one client saw.
pub(super) struct ClientResult {
    pub(super) latency_us: Histogram<u64>,
    pub(super) delivered: u64,
    pub(super) gaps: u64,
}

fn instrument_index(name: &[u8]) -> Option<usize> {
    std::str::from_utf8(name.strip_prefix(b"BENCH:T")?)
        .ok()?
        .parse()
        .ok()
}

async fn client(
    channel: Channel,
    names: Vec<String>,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut finished: watch::Receiver<bool>,
) -> Result<ClientResult, BenchError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let subscribe = pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: names.clone(),
            channel: pb::Channel::Trades as i32,
            depth: 0,
        })),
    };
    // The request stream stays open (pending) for the life of the call.
    let requests =
        tokio_stream::StreamExt::chain(tokio_stream::iter([subscribe]), tokio_stream::pending());
    let path = PathAndQuery::from_static("/raven.v1.Market/Stream");
    let mut stream = grpc
        .streaming(tonic::Request::new(requests), path, RawCodec)
        .await?
        .into_inner();

    let clock = SystemClock;
    let mut latency_us = Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
        .expect("valid histogram bounds (invariant)");
    let mut first_seq = vec![0u64; names.len()];
    let mut last_seq = vec![0u64; names.len()];
    let (mut delivered, mut gaps, mut markers) = (0u64, 0u64, 0usize);
    let mut ready = Some(ready);
    loop {
        let message = tokio::select! {
            m = stream.message() => m?,
            // Publishing ended: check below whether everything has arrived already.
            _ = finished.changed() => None,
        };
        let message = match message {
            Some(m) => m,
            None if *finished.borrow() => Bytes::new(),
            None => {
                return Err(BenchError::Stalled(
                    "the server ended a client stream".into(),
                ));
            }
        };
        let now = clock.now().0;
        let (start, end) = (
            shared.window.0.load(Ordering::Acquire),
            shared.window.1.load(Ordering::Acquire),
        );
        for header in scan::events(&message) {
            let header = header?;
            let Some(i) = instrument_index(header.instrument) else {
                continue;
            };
            match header.body {
                SNAPSHOT_END => {
                    first_seq[i] = header.sequence;
                    last_seq[i] = header.sequence;
                    markers += 1;
                    if markers == names.len() {
                        ready.take().map(|r| r.send(()));
                    }
                }
                STATUS => {
                    // A gap report: the server dropped `missed` trades for this client.
                    let status = pb::Status::decode(header.body_bytes)
                        .map_err(|e| tonic::Status::internal(e.to_string()))?;
                    if status.kind == pb::StatusKind::Gap as i32 {
                        last_seq[i] += status.missed;
                        gaps += status.missed;
                    }
                }
                TRADE => {
                    gaps += header.sequence.saturating_sub(last_seq[i] + 1);
                    last_seq[i] = header.sequence;
                    if (start..end).contains(&header.exchange_time) {
                        delivered += 1;
                        latency_us
                            .saturating_record(now.saturating_sub(header.exchange_time) / 1000);
                    }
                }
                _ => {}
            }
        }
        let done = *finished.borrow()
            && (0..names.len())
                .all(|i| last_seq[i] >= first_seq[i] + shared.published[i].load(Ordering::Acquire));
        if done {
            return Ok(ClientResult {
                latency_us,
                delivered,
                gaps,
            });
        }
    }
}

/// Publishes at `rate` for `warmup + duration`; returns (events in the window, per
/// instrument totals).
async fn publish(
    mut ingest: IngestClient<Channel>,
    names: &[String],
    rate: u64,
    warmup: Duration,
    duration: Duration,
    shared: &Shared,
) -> Result<(u64, Vec<u64>), BenchError> {
    let (tx, rx) = mpsc::channel(256);
    let call = tokio::spawn(async move { ingest.publish(ReceiverStream::new(rx)).await });
    let clock = SystemClock;
    let begin_ns = clock.now().0;
    let start = begin_ns + warmup.as_nanos() as u64;
    let end = start + duration.as_nanos() as u64;
    shared.window.0.store(start, Ordering::Release);
    shared.window.1.store(end, Ordering::Release);
    let begin = Instant::now();
    let total = warmup + duration;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut in_window) = (0u64, 0u64);
    let mut per_instrument = vec![0u64; names.len()];
    while begin.elapsed() < total {
        ticker.tick().await;
        let due = (begin.elapsed().as_nanos().min(total.as_nanos()) * u128::from(rate)
            / 1_000_000_000) as u64;
        if due <= sent {
            continue;
        }
        let now = clock.now().0;
        let events: Vec<pb::FeedEvent> = (sent..due)
            .map(|n| {
                let i = (n % names.len() as u64) as usize;
                per_instrument[i] += 1;
                trade(&names[i], now)
            })
            .collect();
        if (start..end).contains(&now) {
            in_window += events.len() as u64;
        }
        sent = due;
        // Chunks stay under the server's per-request limit at any rate.
        for chunk in events.chunks(crate::api::ingest::MAX_EVENTS_PER_REQUEST) {
            if tx
                .send(pb::PublishRequest {
                    events: chunk.to_vec(),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    }
    drop(tx);
    let accepted = call
        .await
        .map_err(std::io::Error::other)??
        .into_inner()
        .accepted;
    if accepted != sent {
        return Err(BenchError::Stalled(format!(
            "published {sent} events, the server accepted {accepted}"
        )));
    }
    Ok((in_window, per_instrument))
}

fn trade(instrument: &str, stamp: u64) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: instrument.to_owned(),
        exchange_time: stamp,
        receive_time: 0,
        body: Some(pb::feed_event::Body::Trade(pb::Trade {
            price: 1_000_000_000,
            qty: 1_000_000_000,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: String::new(),
        })),
    }
}

pub(super) async fn run_row(
    config: &BenchConfig,
    clients: usize,
    rate: u64,
    target: &Target,
    progress: &mut impl FnMut(&str),
) -> Result<Row, BenchError> {
    let names: Vec<String> = (0..config.instruments.max(1))
        .map(|i| format!("BENCH:T{i}"))
        .collect();
    let mut ingest = IngestClient::new(connect(&target.url).await?);
    // One unmeasured trade per instrument creates them (exchange time 0: never counted).
    let create = pb::PublishRequest {
        events: names.iter().map(|n| trade(n, 0)).collect(),
    };
    ingest.publish(tokio_stream::iter([create])).await?;
    let shared = Arc::new(Shared {
        window: (AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)),
        published: names.iter().map(|_| AtomicU64::new(0)).collect(),
    });
    let (finish, finished) = watch::channel(false);

    progress(&format!("N={clients}: connecting {clients} clients"));
    let mut tasks = Vec::with_capacity(clients);
    let mut readies = Vec::with_capacity(clients);
    for _ in 0..clients {
        let channel = connect(&target.url).await?;
        let (ready, is_ready) = oneshot::channel();
        readies.push(is_ready);
        tasks.push(tokio::spawn(client(
            channel,
            names.clone(),
            shared.clone(),
            ready,
            finished.clone(),
        )));
    }
    for r in readies {
        if r.await.is_err() {
            // That client failed before it was subscribed: report its error.
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    return Err(e);
                }
            }
            return Err(BenchError::Stalled(
                "a client ended before subscribing".into(),
            ));
        }
    }

    progress(&format!(
        "N={clients}: publishing {rate} events/s for {:.1}s after {:.1}s of warm-up",
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64()
    ));
    let before = target.usage();
    let wall = Instant::now();
    let (published, per_instrument) = publish(
        ingest,
        &names,
        rate,
        config.warmup,
        config.duration,
        &shared,
    )
    .await?;
    let elapsed = wall.elapsed();
    let after = target.usage();
    for (slot, n) in shared.published.iter().zip(per_instrument) {
        slot.store(n, Ordering::Release);
    }
    finish.send_replace(true);

    progress(&format!(
        "N={clients}: waiting for every client to receive everything"
    ));
    let mut results = Vec::with_capacity(clients);
    let collect = async {
        for t in tasks {
            results.push(t.await.map_err(std::io::Error::other)??);
        }
        Ok::<_, BenchError>(())
    };
    tokio::time::timeout(DRAIN, collect).await.map_err(|_| {
        BenchError::Stalled(format!(
            "clients still missing events {}s after publishing ended",
            DRAIN.as_secs()
        ))
    })??;
    Ok(Row::new(
        (clients, rate),
        published,
        &results,
        config.duration,
        elapsed,
        (before, after),
    ))
}
