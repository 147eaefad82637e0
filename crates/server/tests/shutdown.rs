//! Connections the server does not wait on forever: a socket that never begins its
//! HTTP/2 handshake, a connection with nothing in flight, and, at shutdown, every kind
//! of client at once (half-open, idle, publishing, subscribing, watching health), with
//! the recorder's last batch still stored. Each test's timeouts only guard against a
//! hang (a regression would wait forever); they measure nothing.

mod common;
#[path = "common/live.rs"]
mod live;

use std::sync::atomic::Ordering;
use std::time::Duration;

use raven_proto::pb;
use raven_proto::pb::ingest_client::IngestClient;
use raven_proto::pb::market_client::MarketClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Resolves when the server has closed `socket` (end of stream or reset).
async fn closed_by_server(socket: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// An HTTP/2 connection that completes its handshake and sends no request; resolves
/// (with the connection's end) when the server closes it.
async fn idle_h2(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _client = client;
        let _ = connection.await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_begin_the_handshake_are_closed() {
    let server = common::server(|f| {
        f.server.handshake_timeout_secs = 1;
        f.store.url = "off".into();
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(server.local_addr()).await.unwrap());
    }
    // A client that is slow to start but does start is not among them.
    let idle = idle_h2(server.local_addr()).await;
    for socket in &mut silent {
        tokio::time::timeout(Duration::from_secs(30), closed_by_server(socket))
            .await
            .expect("a socket that sent nothing was never closed");
    }
    assert!(
        !idle.is_finished(),
        "a handshaken connection was closed too"
    );
    assert_eq!(server.connections().count(), 1);
    assert_eq!(server.connections().closed_by_server(), 50);
    server.shutdown().await.unwrap();
    idle.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_a_subscription_is_never_idle() {
    let server = common::server(|f| {
        f.server.idle_timeout_secs = 1;
        f.store.url = "off".into();
    })
    .await;
    let addr = server.local_addr();
    let idle = idle_h2(addr).await;
    let (tx, mut stream) = live::subscribe(addr, "SIM:BTC-USD", pb::Channel::Trades).await;
    tokio::time::timeout(Duration::from_secs(30), idle)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    // The subscription lived through the same wait and still streams, contiguous.
    let mut last = None;
    let mut trades = 0;
    while trades < 20 {
        let message = stream.message().await.unwrap().expect("still streaming");
        for event in message.events {
            if matches!(event.body, Some(pb::event::Body::Trade(_))) {
                if let Some(last) = last {
                    assert_eq!(event.sequence, last + 1);
                }
                last = Some(event.sequence);
                trades += 1;
            }
        }
    }
    assert_eq!(server.connections().count(), 1);
    drop(tx);
    server.shutdown().await.unwrap();
}

/// Regression (issue 10, finding 5): shutdown waited forever on a connection that had
/// sent nothing, and on an open publish stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_with_half_open_idle_publishing_and_watching_clients_attached() {
    let server = common::server(|f| {
        f.sim.rate = 5_000;
        f.shutdown.drain_secs = 2;
    })
    .await;
    let addr = server.local_addr();
    let stats = server.recorder_stats().unwrap();
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    let idle = idle_h2(addr).await;

    // A publisher that keeps its stream open.
    let (publish, published) = tokio::sync::mpsc::channel(4);
    let publisher = tokio::spawn(async move {
        let mut client = IngestClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client
            .publish(tokio_stream::wrappers::ReceiverStream::new(published))
            .await
    });
    let trade = pb::FeedEvent {
        instrument: "TEST:SHUTDOWN".into(),
        exchange_time: 1,
        receive_time: 0,
        venue_seq: 0,
        body: Some(pb::feed_event::Body::Trade(pb::Trade {
            price: 100_000_000_000,
            qty: 1_000_000_000,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: "t1".into(),
        })),
    };
    publish
        .send(pb::PublishRequest {
            events: vec![trade],
        })
        .await
        .unwrap();

    // A health watcher: its stream has no end of its own, so it holds the drain until
    // the deadline cuts it.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "raven.v1.Market".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(
        first.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // And the server as a whole ("", what `raven health --service ""` asks).
    let mut whole = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        whole.message().await.unwrap().unwrap().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A subscriber.
    let (_requests, mut stream) = live::subscribe(addr, "SIM:BTC-USD", pb::Channel::Book).await;
    let mut market = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    stream.message().await.unwrap().unwrap();
    // The publish was processed (its instrument exists) before shutdown begins.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = market
            .list_instruments(pb::ListInstrumentsRequest {})
            .await
            .unwrap()
            .into_inner();
        if listed.instruments.iter().any(|i| i.name == "TEST:SHUTDOWN") {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    tokio::time::timeout(Duration::from_secs(15), server.shutdown())
        .await
        .expect("shutdown hung")
        .unwrap();

    let status = publisher.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        "server shutting down; 1 events of this stream were accepted and will be processed"
    );
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);
    // The health watcher heard that the server is going.
    let going = watch.message().await.unwrap().unwrap();
    assert_eq!(
        going.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    assert_eq!(
        whole.message().await.unwrap().unwrap().status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    tokio::time::timeout(Duration::from_secs(5), closed_by_server(&mut half_open))
        .await
        .expect("the half-open socket was left open");
    tokio::time::timeout(Duration::from_secs(5), idle)
        .await
        .expect("the idle connection was left open")
        .unwrap();
    // The recorder's last batch went in: everything the engine published is stored.
    let received = stats.received.load(Ordering::Relaxed);
    assert!(received > 0);
    assert_eq!(stats.stored.load(Ordering::Relaxed), received);
    assert_eq!(stats.lost.load(Ordering::Relaxed), 0);
}

/// Whether `event` is the drain's `GOING_AWAY` status event.
fn going_away(event: &pb::Event) -> bool {
    matches!(&event.body, Some(pb::event::Body::Status(s)) if s.kind == pb::StatusKind::GoingAway as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_every_stream_refuses_new_ones_and_ends_once_clients_leave() {
    let server = common::server(|f| {
        f.shutdown.drain_secs = 20;
        f.shutdown.timeout_secs = 60;
    })
    .await;
    let addr = server.local_addr();
    let http = server.http_addr().unwrap();
    let (first_requests, mut first) = live::subscribe(addr, "SIM:BTC-USD", pb::Channel::Book).await;
    let (second_requests, mut second) =
        live::subscribe(addr, "SIM:ETH-USD", pb::Channel::Trades).await;
    first.message().await.unwrap().expect("a snapshot");
    // A replay at a hundredth of recorded speed: a history stream open through the drain.
    let mut history = pb::history_client::HistoryClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let replay = |speed| pb::ReplayRequest {
        query: Some(pb::HistoryRequest {
            instruments: vec!["SIM:BTC-USD".into()],
            channels: vec![],
            from: 0,
            to: 0,
            limit: 0,
        }),
        speed,
    };
    // First 200 events recorded (most of a second of BTC at the simulator's rate), so the
    // replay has over a minute of recorded time to pace out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let query = replay(0.0).query.unwrap();
        let recorded = match history
            .query(pb::HistoryRequest {
                limit: 200,
                ..query
            })
            .await
        {
            Ok(rows) => {
                let mut rows = rows.into_inner();
                let mut n = 0;
                while let Ok(Some(message)) = rows.message().await {
                    n += message.events.len();
                }
                n
            }
            // Not in the store yet.
            Err(_) => 0,
        };
        if recorded >= 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{recorded} recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = history.replay(replay(0.01)).await.unwrap().into_inner();
    let stopping = tokio::spawn(server.shutdown());

    // Each stream is told, once, with no instrument and the drain time.
    for stream in [&mut first, &mut second, &mut third] {
        let told = loop {
            let message = stream
                .message()
                .await
                .unwrap()
                .expect("open during the drain");
            if let Some(event) = message.events.into_iter().find(going_away) {
                break event;
            }
        };
        assert_eq!(told.instrument, "");
        let Some(pb::event::Body::Status(status)) = told.body else {
            unreachable!()
        };
        assert_eq!(
            status.detail,
            "server shutting down: this stream ends in 20 s; reconnect, to another server if there is one"
        );
    }
    // During the drain: not ready, no new streams, but other calls are answered.
    let mut market = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(1);
    let refused = market
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (
            tonic::Code::Unavailable,
            "server shutting down: no new streams; reconnect, to another server if there is one"
        )
    );
    let snapshot = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "SIM:BTC-USD".into(),
            depth: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snapshot.instrument, "SIM:BTC-USD");
    let (status, _) = http_get(http, "/readyz").await;
    assert_eq!(status, 503);
    // The open streams are still served.
    first.message().await.unwrap().expect("still streaming");
    assert!(!stopping.is_finished());

    // Once the clients have left, the drain is over well before its 20 s.
    drop((
        first_requests,
        first,
        second_requests,
        second,
        third,
        market,
        history,
    ));
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("the drain went on with no client left")
        .unwrap()
        .unwrap();
}

/// The status of `GET path` on the HTTP listener.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: raven\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, text)
}
