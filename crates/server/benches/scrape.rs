//! What a Prometheus scrape costs on a loaded server: `GET /metrics` (and, beside it,
//! `GET /api/v1/stats`, which lists every subscriber) over HTTP from a server holding
//! 10,000 instruments and 1,000 subscriber streams, each subscribed to ten of them.
//! `cargo bench -p raven-server --bench scrape`. Issue 13's target: a scrape ≤ 5 ms.

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use raven_proto::pb::{
    self, feed_event::Body, ingest_client::IngestClient, market_client::MarketClient,
    stream_request::Request as Req,
};
use raven_server::app::{RunningServer, bind, start};
use raven_server::clock::SystemClock;
use raven_server::config::FileConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The allocator `raven serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INSTRUMENTS: usize = 10_000;
const SUBSCRIBERS: usize = 1_000;
/// Streams share connections, as a client library multiplexing its subscriptions would.
const STREAMS_PER_CONNECTION: usize = 100;

async fn get(addr: SocketAddr, path: &str) -> usize {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: raven\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut body = Vec::new();
    tcp.read_to_end(&mut body).await.unwrap();
    assert!(
        body.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    body.len()
}

/// A server with the instruments and subscribers, and what keeps the streams open.
async fn loaded() -> (
    RunningServer,
    Vec<tokio::sync::mpsc::Sender<pb::StreamRequest>>,
) {
    let mut file = FileConfig::default();
    file.sim.enabled = Some(false);
    file.store.url = "off".into();
    file.http.listen = "127.0.0.1:0".into();
    file.limits.subscribe_requests_per_s = 0;
    let config = file.resolve().unwrap();
    let server = start(
        &config,
        std::sync::Arc::new(SystemClock),
        bind("127.0.0.1:0".parse().unwrap()).unwrap(),
    )
    .await
    .unwrap();
    let url = format!("http://{}", server.local_addr());
    let mut ingest = IngestClient::connect(url.clone()).await.unwrap();
    let events = (0..INSTRUMENTS).map(|i| pb::FeedEvent {
        instrument: format!("SCRAPE:I{i}"),
        exchange_time: 1,
        receive_time: 0,
        venue_seq: 0,
        body: Some(Body::Trade(pb::Trade {
            price: 100,
            qty: 1,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: String::new(),
        })),
    });
    let request = pb::PublishRequest {
        events: events.collect(),
    };
    ingest.publish(tokio_stream::iter([request])).await.unwrap();
    let mut held = Vec::new();
    for c in 0..SUBSCRIBERS / STREAMS_PER_CONNECTION {
        let market = MarketClient::connect(url.clone()).await.unwrap();
        for s in 0..STREAMS_PER_CONNECTION {
            let n = c * STREAMS_PER_CONNECTION + s;
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tx.send(pb::StreamRequest {
                request: Some(Req::Subscribe(pb::Subscribe {
                    instruments: (0..10)
                        .map(|k| format!("SCRAPE:I{}", (n * 10 + k) % INSTRUMENTS))
                        .collect(),
                    channel: pb::Channel::Trades as i32,
                    depth: 0,
                    start: 0,
                })),
            })
            .await
            .unwrap();
            let mut stream = market
                .clone()
                .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().expect("subscribed");
            tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
            held.push(tx);
        }
    }
    assert_eq!(server.fanout().subscribers(), SUBSCRIBERS);
    (server, held)
}

fn scrape(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, held) = runtime.block_on(loaded());
    let http = server.http_addr().unwrap();
    let mut group = c.benchmark_group("scrape, 10,000 instruments, 1,000 subscribers");
    group.measurement_time(Duration::from_secs(5));
    for path in ["/metrics", "/api/v1/stats"] {
        let bytes = runtime.block_on(get(http, path));
        eprintln!("{path}: {bytes} bytes");
        group.bench_function(path, |b| b.iter(|| runtime.block_on(get(http, path))));
    }
    group.finish();
    drop(held);
    runtime.block_on(server.shutdown()).unwrap();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
