//! One Raven row: create the bench instruments, connect N clients (each its own HTTP/2
//! connection, reading raw `StreamResponse` bytes; or, when the target serves the
//! WebSocket gateway, each its own WebSocket), publish through `Ingest.Publish` at the
//! configured rate, and account for every event every client receives.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use prost::Message;
use raven_proto::pb::{self, ingest_client::IngestClient, stream_request::Request as Req};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::report::Row;
use super::server::{Target, Usage};
use super::workload::{self, ClientResult, Clients, Pacer, Shared, Tally};
use super::{BenchConfig, BenchError, RowPlan, websocket};

/// How long clients may take to receive everything after publishing stops. Raven never
/// loses silently (a dropped trade is reported as a gap), so running out of this is an
/// error, not loss.
const DRAIN: Duration = Duration::from_secs(30);

/// Times a client asks again for a subscription the server refused as busy, waiting
/// this much longer each time (at most about 10 s in all).
const SUBSCRIBE_RETRIES: u32 = 20;
const SUBSCRIBE_BACKOFF: Duration = Duration::from_millis(50);

/// Sends requests of type `T` and hands back each `StreamResponse` as raw bytes, so the
/// client scans headers instead of decoding.
pub(super) struct RawCodec<T>(PhantomData<T>);

impl<T> Default for RawCodec<T> {
    fn default() -> Self {
        RawCodec(PhantomData)
    }
}

pub(super) struct RequestEncoder<T>(PhantomData<T>);
pub(super) struct RawDecoder;

impl<T: Message + Send + 'static> Encoder for RequestEncoder<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
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

impl<T: Message + Send + 'static> Codec for RawCodec<T> {
    type Encode = T;
    type Decode = Bytes;
    type Encoder = RequestEncoder<T>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RequestEncoder<T> {
        RequestEncoder(PhantomData)
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// A connection to `url`; over TLS for `https://`, trusting `tls_ca` (a server
/// certificate for `localhost`, as the bench's own certificates are).
pub(super) async fn connect(url: &str, tls_ca: Option<&Path>) -> Result<Channel, BenchError> {
    let connect = |source| BenchError::Connect {
        url: url.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(connect)?;
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().domain_name("localhost");
        if let Some(ca) = tls_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                BenchError::Config(format!("cannot read the TLS CA {}: {e}", ca.display()))
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(connect)?;
    }
    endpoint.connect().await.map_err(connect)
}

async fn client(
    channel: Channel,
    names: Vec<String>,
    shared: Arc<Shared>,
    ready: oneshot::Sender<()>,
    mut finished: watch::Receiver<bool>,
) -> Result<ClientResult, BenchError> {
    let mut grpc = tonic::client::Grpc::new(channel);
    let subscribe = pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: names.clone(),
            channel: pb::Channel::Trades as i32,
            depth: 0,
            start: 0,
        })),
    };
    let mut open = async || {
        // The request stream stays open (pending) for the life of the call.
        let requests = tokio_stream::StreamExt::chain(
            tokio_stream::iter([subscribe.clone()]),
            tokio_stream::pending(),
        );
        let path = PathAndQuery::from_static("/raven.v1.Market/Stream");
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok::<_, tonic::Status>(
            grpc.streaming(tonic::Request::new(requests), path, RawCodec::default())
                .await?
                .into_inner(),
        )
    };
    let mut stream = open().await?;
    let mut tally = Tally::new(names.len());
    let mut ready = Some(ready);
    let mut refusals = 0;
    loop {
        let message = tokio::select! {
            m = stream.message() => match m {
                // A subscribe the engine had no room for even after waiting ("retry
                // shortly"), as thousands arriving at once can meet: asked again, as a
                // client should, before publishing starts (it waits for every client's
                // subscription).
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && ready.is_some()
                        && refusals < SUBSCRIBE_RETRIES =>
                {
                    refusals += 1;
                    tokio::time::sleep(SUBSCRIBE_BACKOFF * refusals).await;
                    stream = open().await?;
                    tally = Tally::new(names.len());
                    continue;
                }
                m => m?,
            },
            // Publishing ended: check below whether everything has arrived already.
            _ = finished.changed() => None,
        };
        match message {
            Some(bytes) => tally.message(&bytes, &shared)?,
            None if *finished.borrow() => {}
            None => {
                return Err(BenchError::Stalled(
                    "the server ended a client stream".into(),
                ));
            }
        }
        if tally.subscribed() {
            ready.take().map(|r| r.send(()));
        }
        if *finished.borrow() && tally.complete(&shared) {
            return Ok(tally.result());
        }
    }
}

/// Publishes the paced workload through one `Ingest.Publish` call; returns the events
/// sent inside the measurement window.
async fn publish(
    mut ingest: IngestClient<Channel>,
    names: &[String],
    mut pacer: Pacer<'_>,
) -> Result<u64, BenchError> {
    let (tx, rx) = mpsc::channel(256);
    let call = tokio::spawn(async move { ingest.publish(ReceiverStream::new(rx)).await });
    while let Some((stamp, due)) = pacer.next().await {
        let events: Vec<pb::FeedEvent> =
            due.iter().map(|&i| feed_trade(&names[i], stamp)).collect();
        // Chunks stay under the server's per-request limit at any rate.
        for chunk in events.chunks(raven_proto::limits::MAX_EVENTS_PER_REQUEST) {
            let request = pb::PublishRequest {
                events: chunk.to_vec(),
            };
            if tx.send(request).await.is_err() {
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
    let sent = pacer.sent();
    if accepted != sent {
        return Err(BenchError::Stalled(format!(
            "published {sent} events, the server accepted {accepted}"
        )));
    }
    Ok(pacer.finish())
}

fn feed_trade(instrument: &str, stamp: u64) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: instrument.to_owned(),
        exchange_time: stamp,
        receive_time: 0,
        venue_seq: 0,
        body: Some(pb::feed_event::Body::Trade(workload::trade())),
    }
}

/// How long an edge may take to list instruments just created on its ingest node.
const EDGE_CATCH_UP: Duration = Duration::from_secs(30);

/// Waits until the edge at `url` lists every one of `names`.
async fn edge_lists(url: &str, names: &[String], tls_ca: Option<&Path>) -> Result<(), BenchError> {
    let mut market = pb::market_client::MarketClient::new(connect(url, tls_ca).await?);
    let deadline = Instant::now() + EDGE_CATCH_UP;
    loop {
        let listed = market
            .list_instruments(pb::ListInstrumentsRequest {})
            .await?
            .into_inner()
            .instruments;
        if names.iter().all(|n| listed.iter().any(|i| &i.name == n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Config(format!(
                "edge {url} does not list the bench instruments {EDGE_CATCH_UP:?} after they were created: is it an edge of --server?"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn run_row(
    config: &BenchConfig,
    plan: RowPlan,
    target: &Target,
    progress: &mut impl FnMut(&str),
) -> Result<Row, BenchError> {
    let RowPlan { clients, rate } = plan;
    let names = workload::instrument_names(config.instruments);
    let mut ingest = IngestClient::new(connect(&target.url, config.tls_ca.as_deref()).await?);
    // One unmeasured trade per instrument creates them (exchange time 0: never counted).
    let create = pb::PublishRequest {
        events: names.iter().map(|n| feed_trade(n, 0)).collect(),
    };
    ingest.publish(tokio_stream::iter([create])).await?;
    let shared = Arc::new(Shared::new(names.len()));
    let (finish, finished) = watch::channel(false);

    // Through edges, clients subscribe once the edges have the instruments too.
    let subscribe_to = if config.via_edges.is_empty() {
        vec![target.url.clone()]
    } else {
        for edge in &config.via_edges {
            progress(&format!(
                "waiting for edge {edge} to list the bench instruments"
            ));
            edge_lists(edge, &names, config.tls_ca.as_deref()).await?;
        }
        config.via_edges.clone()
    };
    let how = if target.ws.is_some() {
        "WebSocket"
    } else {
        "gRPC"
    };
    progress(&format!(
        "N={clients}: connecting {clients} Raven {how} clients"
    ));
    let mut fleet = Clients::new(clients);
    for n in 0..clients {
        let (names, shared, finished) = (names.clone(), shared.clone(), finished.clone());
        if let Some(ws) = &target.ws {
            let ws = ws.clone();
            fleet.spawn(|ready| websocket::client(ws, names, shared, ready, finished));
            continue;
        }
        let url = &subscribe_to[n % subscribe_to.len()];
        let channel = connect(url, config.tls_ca.as_deref()).await?;
        fleet.spawn(|ready| client(channel, names, shared, ready, finished));
    }
    fleet.all_ready().await?;

    progress(&format!(
        "N={clients}: publishing {rate} events/s to Raven for {:.1}s after {:.1}s of warm-up",
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64()
    ));
    let (before, client_before) = (target.usage(), Usage::own());
    let wall = Instant::now();
    let pacer = Pacer::start(&shared, rate, config.warmup, config.duration);
    let publishing = publish(ingest, &names, pacer);
    let (published, samples) = target
        .sample_while((config.sample_every, config.warmup), progress, publishing)
        .await;
    let published = published?;
    let elapsed = wall.elapsed();
    let (after, client_after) = (target.usage(), Usage::own());
    finish.send_replace(true);

    progress(&format!(
        "N={clients}: waiting for every Raven client to receive everything"
    ));
    let results = tokio::time::timeout(DRAIN, fleet.results())
        .await
        .map_err(|_| {
            BenchError::Stalled(format!(
                "clients still missing events {}s after publishing ended",
                DRAIN.as_secs()
            ))
        })??;
    Ok(Row::new(
        plan,
        published,
        &results,
        (config.duration, elapsed),
        (before, after),
        (client_before, client_after),
        samples,
    ))
}
