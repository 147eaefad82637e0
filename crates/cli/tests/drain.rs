//! SIGTERM on `raven serve` with 1,000 clients streaming, each on its own connection:
//! every stream is told `GOING_AWAY` and then ends with `UNAVAILABLE`, the process exits
//! 0 within the drain time and 5 s, and every event published before the signal is in
//! the database. (The bounds are the drain's contract, not a measure of speed.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use raven_proto::pb::feed_event::Body;
use raven_proto::pb::{
    self, ingest_client::IngestClient, market_client::MarketClient, stream_request::Request as Req,
};
use raven_testkit::rows::{assert_contiguous, sqlite_rows};
use raven_testkit::served::Served;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");
const CLIENTS: usize = 1000;
const DRAIN_SECS: u64 = 2;

fn trades(from: u64, n: u64) -> pb::PublishRequest {
    pb::PublishRequest {
        events: (from..from + n)
            .map(|i| pb::FeedEvent {
                instrument: "TEST:DRAIN".into(),
                exchange_time: 1_700_000_000_000_000_000 + i,
                receive_time: 0,
                venue_seq: 0,
                body: Some(Body::Trade(pb::Trade {
                    price: 100_000_000_000,
                    qty: 1_000_000_000,
                    qty_hi: 0,
                    aggressor: pb::Aggressor::Buy as i32,
                    trade_id: format!("t{i}"),
                })),
            })
            .collect(),
    }
}

/// What one client saw: trades, whether `GOING_AWAY` came, and how its stream ended.
#[derive(Debug)]
struct Seen {
    trades: u64,
    going_away_then_end: bool,
    end: tonic::Code,
}

#[test]
fn sigterm_with_a_thousand_clients_drains_every_stream_and_stores_everything() {
    let dir = raven_testkit::scratch_dir!("drain");
    std::fs::write(
        dir.join("raven.toml"),
        format!("[sim]\nenabled = false\n[shutdown]\ndrain_secs = {DRAIN_SECS}\n"),
    )
    .unwrap();
    let mut command = Command::new(RAVEN);
    command
        .current_dir(&dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "off",
            "--config",
            "raven.toml",
        ])
        .env("RAVEN_LOG", "warn")
        .stderr(Stdio::inherit());
    let mut server = Served::start(command);
    let url = server.url();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    let (clients, published) = runtime.block_on(async {
        let mut ingest = IngestClient::connect(url.clone()).await.unwrap();
        // The instrument exists before anyone subscribes to it.
        let first = ingest
            .publish(tokio_stream::iter([trades(0, 1)]))
            .await
            .unwrap()
            .into_inner()
            .accepted;
        let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(CLIENTS);
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let mut market = MarketClient::connect(url.clone()).await.unwrap();
            let subscribed_tx = subscribed_tx.clone();
            clients.push(tokio::spawn(async move {
                let (requests, rx) = tokio::sync::mpsc::channel(1);
                requests
                    .send(pb::StreamRequest {
                        request: Some(Req::Subscribe(pb::Subscribe {
                            instruments: vec!["TEST:DRAIN".into()],
                            channel: pb::Channel::Trades as i32,
                            depth: 0,
                            start: 0,
                        })),
                    })
                    .await
                    .unwrap();
                let mut stream = market
                    .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let mut seen = Seen {
                    trades: 0,
                    going_away_then_end: false,
                    end: tonic::Code::Ok,
                };
                let mut told = false;
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            for event in message.events {
                                match event.body {
                                    Some(pb::event::Body::SnapshotEnd(_)) => {
                                        subscribed_tx.send(()).await.unwrap();
                                    }
                                    Some(pb::event::Body::Trade(_)) => seen.trades += 1,
                                    Some(pb::event::Body::Status(s))
                                        if s.kind == pb::StatusKind::GoingAway as i32 =>
                                    {
                                        told = true;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            seen.end = status.code();
                            break;
                        }
                    }
                }
                seen.going_away_then_end = told;
                drop(requests);
                seen
            }));
        }
        for _ in 0..CLIENTS {
            subscribed.recv().await.unwrap();
        }
        let mut published = first;
        for batch in 0..50 {
            published += ingest
                .publish(tokio_stream::iter([trades(1 + batch * 100, 100)]))
                .await
                .unwrap()
                .into_inner()
                .accepted;
        }
        (clients, published)
    });
    assert_eq!(published, 5001);

    let signalled = Instant::now();
    let pid = server.child().id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let seen: Vec<Seen> = runtime.block_on(async {
        let mut seen = Vec::new();
        for client in clients {
            seen.push(client.await.unwrap());
        }
        seen
    });
    let status = server.child().wait().unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took <= Duration::from_secs(DRAIN_SECS + 5),
        "exit {took:?} after SIGTERM"
    );
    for (i, client) in seen.iter().enumerate() {
        assert!(client.going_away_then_end, "client {i}: {client:?}");
        assert_eq!(
            client.end,
            tonic::Code::Unavailable,
            "client {i}: {client:?}"
        );
    }
    // Every trade published after the clients subscribed reached every one of them.
    for (i, client) in seen.iter().enumerate() {
        assert_eq!(client.trades, 5000, "client {i}");
    }
    eprintln!("{CLIENTS} clients: exit 0 {took:?} after SIGTERM (drain {DRAIN_SECS} s)");

    let rows = sqlite_rows(&dir.join("data").join("raven.db"));
    assert_contiguous(&rows);
    let stored = rows
        .iter()
        .filter(|(_, name, channel, _, _)| {
            name == "TEST:DRAIN" && *channel == pb::Channel::Trades as i16
        })
        .count() as u64;
    assert_eq!(stored, published, "stored rows equal published events");
}
