//! The WebSocket gateway (`/ws`) over real sockets: what a client gets equals what a gRPC
//! subscriber of the same server gets, object for object; each view is transcoded once
//! for all its clients; a conflated book is the server's book at its sequence; a client
//! that stops reading gets the gRPC policy (trade gaps counted exactly, book resyncs);
//! and every bad input gets its error or close code.

mod common;
#[path = "common/live.rs"]
mod live;
mod scrape;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use raven_proto::pb::{self, ingest_client::IngestClient, market_client::MarketClient};
use raven_server::api::auth::{Role, key_entry, new_secret};
use raven_server::app::RunningServer;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const WAIT: Duration = Duration::from_secs(20);
const NAME: &str = "TEST:ABC";

type Ws = WebSocketStream<TcpStream>;

async fn connect(server: &RunningServer) -> Ws {
    let addr = server.http_addr().expect("HTTP is on");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Ws, request: Value) {
    ws.send(Message::text(request.to_string())).await.unwrap();
}

/// The next JSON object the server sends.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT + Duration::from_secs(1), ws.next())
            .await
            .expect("a message in time")
            .expect("the socket stays open")
            .expect("a valid message");
        match message {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }
}

/// The next object of `kind` (`type`), skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let object = next(ws).await;
        if object["type"] == kind {
            return object;
        }
    }
}

/// The close frame the server ends with, after any messages before it.
async fn closed_with(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("the close in time");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code, frame.reason.as_str().to_owned());
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn stats_of(server: &RunningServer) -> Value {
    let (status, body) = scrape::get(server.http_addr().unwrap(), "/api/v1/stats")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn quiet(f: &mut raven_server::config::FileConfig) {
    f.sim.enabled = Some(false);
}

fn trade(n: u64) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: NAME.into(),
        exchange_time: 1_700_000_000_000_000_000 + n,
        receive_time: 0,
        venue_seq: n,
        body: Some(pb::feed_event::Body::Trade(pb::Trade {
            price: 100_000_000_000 + n as i64,
            qty: 1_000_000_000,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: n.to_string(),
        })),
    }
}

fn level(price: i64, qty: u64) -> pb::Level {
    pb::Level {
        price,
        qty,
        ..Default::default()
    }
}

/// A book snapshot, then `n` deltas that move the best bid and add asks.
fn book_events(n: u64) -> Vec<pb::FeedEvent> {
    let feed = |n: u64, body| pb::FeedEvent {
        instrument: NAME.into(),
        exchange_time: 1_700_000_000_000_000_000 + n,
        receive_time: 0,
        venue_seq: n,
        body: Some(body),
    };
    let mut events = vec![feed(
        0,
        pb::feed_event::Body::Snapshot(pb::BookSnapshot {
            bids: (1..=30).map(|i| level(1_000 - i, i as u64)).collect(),
            asks: (1..=30).map(|i| level(1_000 + i, i as u64)).collect(),
            ..Default::default()
        }),
    )];
    for i in 1..=n {
        events.push(feed(
            i,
            pb::feed_event::Body::Delta(pb::BookDelta {
                bids: vec![level(999, 100 + i)],
                asks: vec![level(1_000 + 30 + i as i64, i)],
            }),
        ));
    }
    events
}

async fn publish(server: &RunningServer, events: Vec<pb::FeedEvent>) {
    let n = events.len() as u64;
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    // A request carries at most 10,000 events.
    let requests: Vec<_> = events
        .chunks(10_000)
        .map(|chunk| pb::PublishRequest {
            events: chunk.to_vec(),
        })
        .collect();
    let accepted = ingest
        .publish(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, n);
}

/// Makes the instrument known to the server (an instrument is listed once it has an
/// event).
async fn introduce(server: &RunningServer) {
    publish(server, book_events(0)).await;
}

/// The JSON objects of a gRPC stream's data events (markers and acks left out), `n` of
/// them.
async fn grpc_objects(stream: &mut tonic::Streaming<pb::StreamResponse>, n: usize) -> Vec<Value> {
    let mut objects = Vec::new();
    while objects.len() < n {
        let message = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for event in message.events {
            if let Some(object) = raven_proto::json::event(&event).unwrap()
                && object["type"] != "snapshot_end"
            {
                objects.push(object);
            }
        }
    }
    objects
}

/// The server's book now (`GetSnapshot` at `depth`), as JSON.
async fn server_book(server: &RunningServer, depth: u32) -> Value {
    let mut market = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let snapshot = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: NAME.into(),
            depth,
        })
        .await
        .unwrap()
        .into_inner();
    raven_proto::json::snapshot(&snapshot).unwrap()
}

/// Subscribes `ws` and returns the ack.
async fn subscribe(ws: &mut Ws, id: u64, channel: &str, extra: Value) -> Value {
    let mut request =
        json!({"op": "subscribe", "id": id, "instruments": [NAME], "channel": channel});
    if let (Value::Object(request), Value::Object(extra)) = (&mut request, extra) {
        request.extend(extra);
    }
    send(ws, request).await;
    next_of(ws, "ack").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_gets_what_a_grpc_subscriber_gets() {
    // A small write budget (4 streams at 100 writes/s: a write per client per 40 ms), so
    // that this exact comparison runs on the paced write path of both transports; the
    // other tests here write unpaced (below 50 streams the default budget spaces nothing).
    let server = common::server(|f| {
        quiet(f);
        f.fanout.write_budget_per_s = 100;
        f.fanout.write_budget_max_per_s = 0;
    })
    .await;
    introduce(&server).await;
    let (_tx, mut grpc_trades) =
        live::subscribe(server.local_addr(), NAME, pb::Channel::Trades).await;
    let (_tx2, mut grpc_book) = live::subscribe(server.local_addr(), NAME, pb::Channel::Book).await;
    // The gRPC streams' initial snapshots are out of the way before anything is published.
    let initial = grpc_objects(&mut grpc_book, 1).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    for ws in [&mut a, &mut b] {
        let ack = subscribe(ws, 1, "trades", json!({})).await;
        assert_eq!(ack, json!({"type": "ack", "id": 1, "op": "subscribe"}));
        let end = next(ws).await;
        assert_eq!(
            (end["type"].as_str(), end["sequence"].as_str()),
            (Some("snapshot_end"), Some("0"))
        );
    }
    let ack = subscribe(&mut a, 2, "book", json!({"depth": 0, "interval_ms": 0})).await;
    assert_eq!(ack["id"], 2);
    // The book view's state: the book at the engine's sequence, as the gRPC stream's.
    let mut snapshot = next_of(&mut a, "snapshot").await;
    assert_eq!(snapshot["sequence"], initial[0]["sequence"]);
    for field in ["bids", "asks", "exchange_time", "resync"] {
        assert_eq!(snapshot[field], initial[0][field], "{field}");
    }
    snapshot["publish_time"] = initial[0]["publish_time"].clone();
    assert_eq!(snapshot, initial[0]);
    assert_eq!(next(&mut a).await["type"], "snapshot_end");

    // Two clients on one view: it is transcoded once.
    let stats = stats_of(&server).await;
    assert_eq!(stats["gateway"]["views"], 2, "trades and the book: {stats}");
    assert_eq!(
        stats["subscribers"]["count"], 4,
        "2 gRPC streams and 2 WebSockets"
    );
    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        (metrics["raven_subscribers"], metrics["raven_subscriptions"]),
        (4.0, 5.0),
        "a's trades and book, b's trades, the two gRPC streams'"
    );

    let mut events: Vec<_> = (1..=500).map(trade).collect();
    events.extend(book_events(200).into_iter().skip(1));
    publish(&server, events).await;
    let grpc_trades = grpc_objects(&mut grpc_trades, 500).await;
    let grpc_book = grpc_objects(&mut grpc_book, 200).await;
    for (ws, who) in [(&mut a, "a"), (&mut b, "b")] {
        let mut trades = Vec::new();
        let mut book = Vec::new();
        while trades.len() < 500 || (who == "a" && book.len() < 200) {
            let object = next(ws).await;
            match object["channel"].as_str() {
                Some("trades") => trades.push(object),
                Some("book") => book.push(object),
                _ => panic!("{who}: unexpected {object}"),
            }
        }
        // Object for object, every field: the engine's bytes transcoded.
        assert_eq!(trades, grpc_trades, "{who}'s trades");
        assert_eq!(trades[499]["price"], "100.0000005");
        assert_eq!(trades[499]["sequence"], "500");
        if who == "a" {
            assert_eq!(book, grpc_book, "a's book deltas");
        }
    }
    // Unsubscribed: nothing more of the book; b's leaving closes nothing of a's.
    send(
        &mut a,
        json!({"op": "unsubscribe", "id": 3, "instruments": [NAME], "channel": "book"}),
    )
    .await;
    assert_eq!(
        next_of(&mut a, "ack").await,
        json!({"type": "ack", "id": 3, "op": "unsubscribe"})
    );
    drop(b);
    publish(&server, vec![trade(501)]).await;
    let last = next(&mut a).await;
    assert_eq!(
        (last["type"].as_str(), last["trade_id"].as_str()),
        (Some("trade"), Some("501"))
    );
    send(&mut a, json!({"op": "ping", "id": "p"})).await;
    let pong = next(&mut a).await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("p"))
    );
    assert!(pong["time"].as_str().unwrap().parse::<u64>().unwrap() > 1_700_000_000_000_000_000);
    // The book view ended with its client; the trades view lives on for a.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = stats_of(&server).await;
        if stats["gateway"]["views"] == 1 && stats["subscribers"]["count"] == 3 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflated_book_is_the_servers_book_at_its_sequence() {
    let server = common::server(quiet).await;
    introduce(&server).await;
    let mut ws = connect(&server).await;
    // The defaults: depth 20, every 100 ms.
    subscribe(&mut ws, 1, "book", json!({})).await;
    let first = next_of(&mut ws, "snapshot").await;
    assert_eq!(first["bids"].as_array().unwrap().len(), 20);
    assert_eq!(first["bids"][0], json!(["0.000000999", "0.000000001"]));
    publish(&server, book_events(300).into_iter().skip(1).collect()).await;
    // Conflated: far fewer than 300 books, the last at the last sequence.
    let mut books = 0;
    let last = loop {
        let book = next_of(&mut ws, "snapshot").await;
        books += 1;
        if book["sequence"] == "301" {
            break book;
        }
    };
    assert!(books < 300, "{books} books for 300 changes");
    let expected = server_book(&server, 20).await;
    assert_eq!(expected["sequence"], "301");
    assert_eq!(
        (&last["bids"], &last["asks"]),
        (&expected["bids"], &expected["asks"])
    );
    assert_eq!(last["bids"][0], json!(["0.000000999", "0.0000004"]));
    assert_eq!(last["resync"], false);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_gaps_and_resyncs_like_a_grpc_client() {
    let server = common::server(|f| {
        quiet(f);
        f.fanout.queue_events = 64;
    })
    .await;
    introduce(&server).await;
    let mut ws = connect(&server).await;
    subscribe(&mut ws, 1, "trades", json!({})).await;
    subscribe(&mut ws, 2, "book", json!({"depth": 0, "interval_ms": 0})).await;
    // Not read while 60,000 trades and 3,000 book changes are published: the socket's
    // buffers fill, then the queue.
    let trades = 60_000;
    let mut events: Vec<_> = (1..=trades).map(trade).collect();
    events.extend(book_events(3_000).into_iter().skip(1));
    publish(&server, events).await;
    let expected = server_book(&server, 0).await;
    assert_eq!(expected["sequence"], "3001");
    let (mut received, mut missed, mut resyncs) = (0u64, 0u64, 0);
    let mut book: Option<Value> = None;
    let mut book_done = false;
    while received + missed < trades || !book_done {
        let object = match tokio::time::timeout(WAIT, next(&mut ws)).await {
            Ok(object) => object,
            Err(_) => panic!(
                "stalled: {received} trades received, {missed} missed, {resyncs} resyncs, book at {:?}",
                book.as_ref().map(|b| b["sequence"].clone())
            ),
        };
        match (object["channel"].as_str(), object["type"].as_str()) {
            (Some("trades"), Some("trade")) => received += 1,
            (Some("trades"), Some("status")) => {
                assert_eq!(object["kind"], "gap", "{object}");
                missed += object["missed"].as_str().unwrap().parse::<u64>().unwrap();
            }
            (Some("book"), Some("snapshot")) => {
                resyncs += u32::from(object["resync"] == true);
                book = Some(object);
            }
            (Some("book"), Some("delta")) => {
                let book = book.as_mut().expect("a delta after a snapshot");
                let next = book["sequence"].as_str().unwrap().parse::<u64>().unwrap() + 1;
                assert_eq!(object["sequence"], next.to_string(), "deltas follow on");
                apply(book, &object);
            }
            (_, Some("snapshot_end")) => {}
            _ => panic!("unexpected {object}"),
        }
        book_done = book.as_ref().is_some_and(|b| b["sequence"] == "3001");
    }
    assert_eq!(
        received + missed,
        trades,
        "every trade received or counted missing"
    );
    assert!(
        missed > 0 && resyncs > 0,
        "the queue overflowed: {missed} missed, {resyncs} resyncs"
    );
    let book = book.unwrap();
    assert_eq!(
        (&book["bids"], &book["asks"]),
        (&expected["bids"], &expected["asks"])
    );
    let stats = stats_of(&server).await;
    assert!(
        stats["subscribers"]["resyncs"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    server.shutdown().await.unwrap();
}

/// Applies a JSON delta to a JSON snapshot (levels best first).
fn apply(book: &mut Value, delta: &Value) {
    for (side, descending) in [("bids", true), ("asks", false)] {
        let mut levels: Vec<(f64, Value)> = book[side]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (sort_key(&l[0]), l.clone()))
            .collect();
        for change in delta[side].as_array().unwrap() {
            levels.retain(|(_, l)| l[0] != change[0]);
            if change[1] != "0" {
                levels.push((sort_key(&change[0]), change.clone()));
            }
        }
        levels.sort_by(|a, b| a.0.total_cmp(&b.0));
        if descending {
            levels.reverse();
        }
        book[side] = Value::Array(levels.into_iter().map(|(_, l)| l).collect());
    }
    book["sequence"] = delta["sequence"].clone();
}

/// Orders test prices (a few digits, exact in a double); never used for a value.
fn sort_key(price: &Value) -> f64 {
    price.as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_error_or_close_code() {
    let server = common::server(|f| {
        quiet(f);
        f.limits.subscribe_requests_per_s = 2;
    })
    .await;
    introduce(&server).await;
    let mut ws = connect(&server).await;
    let error = |object: &Value| {
        assert_eq!(object["type"], "error", "{object}");
        (
            object["code"].as_str().unwrap().to_owned(),
            object["message"].as_str().unwrap().to_owned(),
        )
    };
    ws.send(Message::text("{not json")).await.unwrap();
    let (code, message) = error(&next(&mut ws).await);
    assert_eq!(code, "INVALID_ARGUMENT");
    assert!(message.starts_with("malformed JSON: "), "{message}");
    send(&mut ws, json!({"op": "dance", "id": 7})).await;
    let reply = next(&mut ws).await;
    assert_eq!(reply["id"], 7);
    assert_eq!(
        error(&reply),
        (
            "INVALID_ARGUMENT".into(),
            "unknown op \"dance\": auth, subscribe, unsubscribe or ping".into()
        )
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 8, "instruments": ["SIM:NOPE"], "channel": "trades"}),
    )
    .await;
    let (code, message) = error(&next(&mut ws).await);
    assert_eq!(code, "NOT_FOUND");
    assert!(message.contains("\"SIM:NOPE\""), "{message}");
    send(
        &mut ws,
        json!({"op": "subscribe", "instruments": [NAME], "channel": "quotes"}),
    )
    .await;
    assert_eq!(
        error(&next(&mut ws).await).1,
        "unknown channel \"quotes\": book, bbo, trades or candles"
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "instruments": [NAME], "channel": "trades", "depth": 5}),
    )
    .await;
    assert_eq!(
        error(&next(&mut ws).await).1,
        "depth and interval_ms apply to the book channel only"
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "instruments": [NAME], "channel": "book", "depth": -1}),
    )
    .await;
    assert_eq!(
        error(&next(&mut ws).await).1,
        "\"depth\" must be a whole number, got -1"
    );
    // The third subscribe request within a second that names a channel (all count,
    // refused or not): over the limit.
    send(
        &mut ws,
        json!({"op": "subscribe", "instruments": [NAME], "channel": "trades"}),
    )
    .await;
    let (code, message) = error(&next(&mut ws).await);
    assert_eq!(code, "RESOURCE_EXHAUSTED");
    assert!(
        message.contains("subscribe_requests_per_s = 2"),
        "{message}"
    );
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(error(&next(&mut ws).await).0, "INVALID_ARGUMENT");
    send(&mut ws, json!(["op", "ping"])).await;
    assert_eq!(error(&next(&mut ws).await).0, "INVALID_ARGUMENT");
    // Nine errors so far; the connection still serves.
    send(&mut ws, json!({"op": "ping", "id": 1})).await;
    assert_eq!(next(&mut ws).await["type"], "pong");
    send(&mut ws, json!({})).await;
    assert_eq!(
        error(&next(&mut ws).await).1,
        "the request has no \"op\": auth, subscribe, unsubscribe or ping"
    );
    // The eleventh: the error, then the close.
    send(&mut ws, json!({"op": "?"})).await;
    assert_eq!(error(&next(&mut ws).await).0, "INVALID_ARGUMENT");
    assert_eq!(
        closed_with(&mut ws).await,
        (CloseCode::Policy, "more than 10 errors".into())
    );

    // A message over 64 KiB: 1009.
    let mut ws = connect(&server).await;
    let big = json!({"op": "ping", "id": "x".repeat(70_000)});
    ws.send(Message::text(big.to_string())).await.unwrap();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, CloseCode::Size, "{reason}");
    assert!(reason.contains("65536"), "{reason}");

    // Not a WebSocket request: 426 with a word on what /ws is.
    let (status, body) = scrape::get(server.http_addr().unwrap(), "/ws")
        .await
        .unwrap();
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("WebSocket upgrade"), "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_a_client_authenticates_within_five_seconds() {
    let dir = common::scratch_dir("ws-auth");
    let (reader, publisher) = (new_secret().unwrap(), new_secret().unwrap());
    let keys = dir.join("keys.toml");
    // One socket at a time for the reader.
    let mut text = key_entry("reader", &reader, &[Role::Subscribe], &[]);
    text += "max_streams = 1\n";
    let publisher_entry = key_entry("publisher", &publisher, &[Role::Ingest], &[]);
    text += &publisher_entry;
    std::fs::write(&keys, text).unwrap();
    let server = common::server(|f| {
        quiet(f);
        f.auth.keys_file = Some(keys.clone());
        f.http.request_head_timeout_secs = 2;
    })
    .await;
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 1, "instruments": [NAME], "channel": "trades"}),
    )
    .await;
    let reply = next(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_u64()),
        (Some("UNAUTHENTICATED"), Some(1))
    );
    send(&mut ws, json!({"op": "auth", "id": 2, "key": "rvn_wrong"})).await;
    let reply = next(&mut ws).await;
    assert_eq!(reply["code"], "UNAUTHENTICATED");
    assert_eq!(reply["message"], "unknown or revoked API key");
    send(&mut ws, json!({"op": "auth", "id": 3, "key": publisher})).await;
    let reply = next(&mut ws).await;
    assert_eq!(reply["code"], "PERMISSION_DENIED");
    // No key that may subscribe in 5 s: 4001.
    let started = tokio::time::Instant::now();
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(code, CloseCode::Library(4001), "{reason}");
    assert!(reason.starts_with("no auth within 5 s"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(6));

    let mut ws = connect(&server).await;
    send(&mut ws, json!({"op": "auth", "id": 1, "key": reader})).await;
    assert_eq!(
        next(&mut ws).await,
        json!({"type": "ack", "id": 1, "op": "auth"})
    );
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "instruments": [NAME], "channel": "trades"}),
    )
    .await;
    let reply = next(&mut ws).await;
    // Authenticated: the request is served (the instrument is unknown here).
    assert_eq!(reply["code"], "NOT_FOUND", "{reply}");
    // Past the 5 s auth limit and the HTTP listener's 2 s request-head limit (which
    // applies to requests, not to an upgraded socket).
    tokio::time::sleep(Duration::from_secs(6)).await;
    send(&mut ws, json!({"op": "ping", "id": 3})).await;
    assert_eq!(
        next(&mut ws).await["type"],
        "pong",
        "an authenticated client stays"
    );

    // A second socket of the reader's is over its max_streams.
    let mut second = connect(&server).await;
    send(&mut second, json!({"op": "auth", "id": 1, "key": reader})).await;
    let reply = next(&mut second).await;
    assert_eq!(reply["code"], "RESOURCE_EXHAUSTED", "{reply}");
    assert_eq!(
        reply["message"],
        "API key \"reader\" has 1 streams open: limit max_streams = 1"
    );

    // A reload that drops the key ends its socket.
    std::fs::write(&keys, &publisher_entry).unwrap();
    server.reload(None);
    let reply = next(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), reply["message"].as_str()),
        (Some("UNAUTHENTICATED"), Some("API key revoked"))
    );
    assert_eq!(
        closed_with(&mut ws).await,
        (CloseCode::Policy, "API key revoked".into())
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_the_client_and_closes_with_going_away() {
    let server = common::server(|f| {
        quiet(f);
        f.shutdown.drain_secs = 1;
    })
    .await;
    introduce(&server).await;
    let mut ws = connect(&server).await;
    subscribe(&mut ws, 1, "trades", json!({})).await;
    let stopping = tokio::spawn(server.shutdown());
    let told = next_of(&mut ws, "status").await;
    assert_eq!(told["kind"], "going_away", "{told}");
    assert!(
        told["detail"].as_str().unwrap().contains("ends in 1 s"),
        "{told}"
    );
    let (code, reason) = closed_with(&mut ws).await;
    assert_eq!(
        (code, reason.as_str()),
        (CloseCode::Away, "server shutting down")
    );
    stopping.await.unwrap().unwrap();
}
