//! The HTTP listener over a real socket: `/metrics` read with an OpenMetrics parser gives
//! exact counts of known traffic, two servers in one process keep separate counts,
//! `/readyz` turns 503 when a drain starts while `/healthz` stays up, `/api/v1/stats`
//! has the per-subscriber detail, and a connection that sends no request (or half of
//! one) is closed rather than held, and past `limits.max_http_connections` a new one is
//! answered 503 (a WebSocket holding its place until its socket closes).

mod common;
#[path = "common/live.rs"]
mod live;
mod scrape;

use std::collections::BTreeMap;
use std::time::Duration;

use raven_proto::pb::{self, ingest_client::IngestClient, market_client::MarketClient};
use raven_server::app::RunningServer;
use scrape::{get, scrape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// Scrapes until `done` holds (the recorder commits every 5 ms).
async fn scrape_until(
    server: &RunningServer,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let samples = scrape(server).await;
        if done(&samples) {
            return samples;
        }
        assert!(tokio::time::Instant::now() < deadline, "{samples:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn trade(n: u64) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: "TEST:ABC".into(),
        exchange_time: 1_700_000_000_000_000_000 + n,
        receive_time: 0,
        venue_seq: n,
        body: Some(pb::feed_event::Body::Trade(pb::Trade {
            price: 100_000_000_000,
            qty: 1_000_000_000,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: n.to_string(),
        })),
    }
}

/// Publishes `n` trades of `TEST:ABC` on a connection of its own.
async fn publish_trades(server: &RunningServer, n: u64) {
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let events: Vec<pb::FeedEvent> = (1..=n).map(trade).collect();
    let accepted = ingest
        .publish(tokio_stream::iter([pb::PublishRequest { events }]))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, n);
}

fn quiet(f: &mut raven_server::config::FileConfig) {
    f.sim.enabled = Some(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() {
    let dir = common::scratch_dir("metrics");
    let db = dir.join("raven.db");
    let server = common::server(|f| {
        quiet(f);
        f.store.url = format!("sqlite:{}", db.display());
        f.store.spill = dir.join("raven.spill");
        // A budget the CPU load does not move, to be read back exactly.
        f.fanout.write_budget_per_s = 20_000;
        f.fanout.write_budget_max_per_s = 0;
    })
    .await;
    let before = scrape(&server).await;
    assert_eq!(before["raven_subscriber_write_budget"], 20_000.0);
    assert_eq!(before["raven_subscribers"], 0.0);
    assert_eq!(before["raven_subscriptions"], 0.0);
    assert_eq!(before["raven_connections_accepted"], 0.0);
    assert_eq!(before["raven_recorder_received_events"], 0.0);
    assert_eq!(before["raven_build{version=\"0.1.0\"}"], 1.0);
    assert_eq!(before["raven_feed_instruments{feed=\"Publisher\"}"], 0.0);

    // One subscriber to the trades of an instrument the publisher is about to create.
    publish_trades(&server, 1).await;
    let (tx, mut stream) =
        live::subscribe(server.local_addr(), "TEST:ABC", pb::Channel::Trades).await;
    let during = scrape_until(&server, |m| {
        m["raven_subscribers"] == 1.0 && m["raven_subscriptions"] == 1.0
    })
    .await;
    assert_eq!(during["raven_feed_instruments{feed=\"Publisher\"}"], 1.0);

    publish_trades(&server, 250).await;
    let mut trades = 0;
    while trades < 250 {
        let batch = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        trades += batch
            .events
            .iter()
            .filter(|e| matches!(e.body, Some(pb::event::Body::Trade(_))))
            .count();
    }
    assert_eq!(trades, 250);
    // Those 250 trades (and nothing else: the subscription started with the instrument's
    // first trade already published, and trades have no snapshot) went to one subscriber.
    let sent = scrape(&server).await;
    assert_eq!(sent["raven_subscriber_delivered_events"], 250.0);
    assert!(sent["raven_subscriber_messages"] >= 1.0);
    assert!(sent["raven_subscriber_delivered_bytes"] > 250.0 * 20.0);

    // Everything the engine published is stored, and the counts say exactly how much.
    let after = scrape_until(&server, |m| {
        m["raven_recorder_received_events"] > 0.0
            && m["raven_recorder_stored_events"] == m["raven_recorder_received_events"]
    })
    .await;
    let rows = raven_testkit::rows::sqlite_rows(&db);
    assert_eq!(after["raven_recorder_stored_events"], rows.len() as f64);
    let trade_rows = rows
        .iter()
        .filter(|r| r.1 == "TEST:ABC" && r.2 == pb::Channel::Trades as i16)
        .count();
    assert_eq!(trade_rows, 251);
    assert!(after["raven_recorder_batches"] >= 1.0);
    // Every committed batch's lag is in the histogram, none over the longest.
    assert_eq!(
        after["raven_recorder_commit_lag_seconds"],
        after["raven_recorder_batches"]
    );
    assert!(
        after["raven_recorder_commit_lag_seconds_sum"]
            <= after["raven_recorder_commit_lag_max_seconds"] * after["raven_recorder_batches"]
    );
    for zero in [
        "raven_recorder_spilled_events",
        "raven_recorder_lost_events",
        "raven_store_errors",
        "raven_subscriber_lagged",
        "raven_subscriber_resyncs",
        "raven_connections_closed_by_server",
    ] {
        assert_eq!(after[zero], 0.0, "{zero}");
    }
    assert_eq!(after["raven_store_up"], 1.0);
    // The disk: the database and the spill file share the scratch directory's filesystem,
    // whose size is fixed; its free space moves with whatever else writes there.
    let filesystem = rustix::fs::statvfs(&dir).unwrap();
    let size = (filesystem.f_blocks * filesystem.f_frsize) as f64;
    let free = (filesystem.f_bavail * filesystem.f_frsize) as f64;
    for file in ["database", "spill"] {
        assert_eq!(
            after[&format!("raven_disk_size_bytes{{file=\"{file}\"}}")],
            size
        );
        let reported = after[&format!("raven_disk_free_bytes{{file=\"{file}\"}}")];
        assert!(
            reported > 0.0 && reported <= size,
            "{file}: {reported} of {size}"
        );
        assert!(
            (reported - free).abs() < (1u64 << 30) as f64,
            "{file}: {reported}, {free}"
        );
    }
    // The database with its WAL, as `stat` gives them (read again until no commit or
    // checkpoint falls between the scrape and the `stat`).
    let on_disk = || {
        let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        (size("raven.db") + size("raven.db-wal")) as f64
    };
    scrape_until(&server, |m| m["raven_store_file_bytes"] == on_disk()).await;
    assert!(on_disk() > 0.0);
    // The feed sent 251 events, the engine applied them, each with a receive time.
    assert_eq!(after["raven_feed_events{feed=\"Publisher\"}"], 251.0);
    for kind in ["gap", "resync", "feed_down", "feed_up", "stale", "rejected"] {
        let key = format!("raven_feed_statuses{{feed=\"Publisher\",kind=\"{kind}\"}}");
        assert_eq!(after[&key], 0.0, "{key}");
    }
    assert!(after["raven_feed_last_event_timestamp_seconds{feed=\"Publisher\"}"] > 1.7e9);
    assert_eq!(
        after["raven_feed_instruments_down{feed=\"Publisher\"}"],
        0.0
    );
    assert_eq!(after["raven_engine_events{shard=\"0\"}"], 251.0);
    assert_eq!(after["raven_engine_batches{shard=\"0\"}"], 2.0);
    // Apart in time (the subscriber attached between them): published apart.
    assert_eq!(after["raven_engine_flushes{shard=\"0\"}"], 2.0);
    assert!(after["raven_engine_busy_seconds{shard=\"0\"}"] > 0.0);
    assert_eq!(after["raven_engine_input_queue_batches{shard=\"0\"}"], 0.0);
    assert_eq!(after["raven_engine_receive_to_publish_seconds"], 251.0);
    assert_eq!(
        after["raven_engine_receive_to_publish_seconds_bucket{le=\"inf\"}"],
        251.0
    );
    // Two publishers and one subscriber, each on a connection of its own.
    assert_eq!(after["raven_connections_accepted"], 3.0);
    assert!(after["process_open_fds"] > 0.0);
    assert!(after["process_resident_memory_bytes"] > 0.0);
    assert!(after["process_start_time_seconds"] > 1.7e9);

    // A refused request is counted by method and code, as are the publishes.
    let mut market = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let refused = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "TEST:NOPE".into(),
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    let calls = scrape(&server).await;
    let call = |method: &str, code: &str| {
        let key = format!("raven_grpc_calls{{code=\"{code}\",method=\"raven.v1.{method}\"}}");
        calls.get(&key).copied().unwrap_or(0.0)
    };
    assert_eq!(call("Market/GetSnapshot", "NOT_FOUND"), 1.0);
    assert_eq!(call("Ingest/Publish", "OK"), 2.0);
    assert_eq!(
        call("Market/Stream", "OK") + call("Market/Stream", "CANCELLED"),
        0.0
    );

    // The subscriber leaves: the gauge follows, and its call is counted.
    drop(stream);
    drop(tx);
    let gone = scrape_until(&server, |m| {
        m["raven_subscribers"] == 0.0 && m["raven_subscriptions"] == 0.0
    })
    .await;
    let streams: f64 = gone
        .iter()
        .filter(|(k, _)| {
            k.starts_with("raven_grpc_calls{") && k.ends_with(",method=\"raven.v1.Market/Stream\"}")
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(streams, 1.0, "{gone:#?}");
    assert_eq!(
        gone[r#"raven_subscriber_disconnects{reason="client_left"}"#],
        1.0
    );
    assert_eq!(
        gone[r#"raven_subscriber_disconnects{reason="refused"}"#],
        0.0
    );
    assert_eq!(gone["raven_subscriber_delivered_events"], 250.0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_separate_counts() {
    let a = common::server(quiet).await;
    let b = common::server(quiet).await;
    publish_trades(&a, 40).await;
    let on_a = scrape_until(&a, |m| {
        m["raven_recorder_stored_events"] >= 40.0
            && m["raven_recorder_stored_events"] == m["raven_recorder_received_events"]
    })
    .await;
    let on_b = scrape(&b).await;
    assert_eq!(on_a["raven_connections_accepted"], 1.0);
    assert_eq!(on_b["raven_connections_accepted"], 0.0);
    assert_eq!(on_b["raven_recorder_received_events"], 0.0);
    assert_eq!(on_b["raven_feed_instruments{feed=\"Publisher\"}"], 0.0);
    assert_eq!(on_a["raven_feed_instruments{feed=\"Publisher\"}"], 1.0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_drain_and_health_the_process() {
    let server = common::server(|f| {
        quiet(f);
        f.shutdown.drain_secs = 1;
    })
    .await;
    let http = server.http_addr().unwrap();
    assert_eq!(get(http, "/healthz").await.unwrap(), (200, "ok\n".into()));
    assert_eq!(get(http, "/readyz").await.unwrap(), (200, "ready\n".into()));
    assert_eq!(get(http, "/nope").await.unwrap().0, 404);

    // A peer that finished its HTTP/2 handshake (the server acknowledged its settings, so
    // it is past the handshake a drain cuts at once) and then reads nothing: the drain
    // waits its full second for the answer to its closing ping, and meanwhile the server
    // says it is not ready.
    let mut peer = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    loop {
        let mut header = [0u8; 9];
        peer.read_exact(&mut header).await.unwrap();
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        peer.read_exact(&mut payload).await.unwrap();
        if header[3] == 4 && header[4] & 1 == 1 {
            break;
        }
    }
    let stopping = tokio::spawn(server.shutdown());
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    let answer = loop {
        let answer = get(http, "/readyz").await.unwrap();
        if answer.0 != 200 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(answer, (503, "not ready: draining\n".into()));
    assert_eq!(get(http, "/healthz").await.unwrap().0, 200);
    assert!(
        !stopping.is_finished(),
        "the drain still waits for the peer"
    );
    stopping.await.unwrap().unwrap();
    // The HTTP listener stops last.
    assert!(get(http, "/healthz").await.is_err());
    drop(peer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_give_the_per_subscriber_detail() {
    let server = common::server(quiet).await;
    publish_trades(&server, 3).await;
    let _subscriber = live::subscribe(server.local_addr(), "TEST:ABC", pb::Channel::Book).await;
    let http = server.http_addr().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let (status, body) = get(http, "/api/v1/stats").await.unwrap();
        assert_eq!(status, 200);
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        if stats["subscribers"]["count"] == 1 {
            break stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["version"], "0.1.0");
    assert_eq!(stats["ready"], true);
    let shards = stats["engine"]["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0]["events"], 3);
    assert_eq!(stats["feeds"][0]["events"], 3);
    assert_eq!(stats["feeds"][0]["name"], "Publisher");
    assert_eq!(stats["feeds"][0]["instruments"], 1);
    let streams = stats["subscribers"]["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["queued_events"], 0);
    assert_eq!(stats["connections"]["accepted"], 2);
    assert_eq!(stats["recorder"]["store_up"], true);
    assert_eq!(stats["recorder"]["lost"], 0);
    server.shutdown().await.unwrap();
}

/// A JSON answer of the HTTP API.
async fn get_json(server: &RunningServer, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = get(server.http_addr().unwrap(), path).await.unwrap();
    let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_reads_over_http_answer_as_the_grpc_calls_do() {
    let server = common::server(quiet).await;
    publish_trades(&server, 3).await;
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let level = |price: i64, qty: u64| pb::Level {
        price,
        qty,
        qty_hi: 0,
    };
    let book = pb::FeedEvent {
        instrument: "TEST:BOOK".into(),
        exchange_time: 1_700_000_000_000_000_000,
        body: Some(pb::feed_event::Body::Snapshot(pb::BookSnapshot {
            bids: vec![level(99, 1), level(98, 2), level(97, 3)],
            asks: vec![level(101, 4), level(i64::MAX, u64::MAX)],
            ..Default::default()
        })),
        ..Default::default()
    };
    ingest
        .publish(tokio_stream::iter([pb::PublishRequest {
            events: vec![book],
        }]))
        .await
        .unwrap();
    let mut market = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();

    let listed = market
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let (status, instruments) = get_json(&server, "/api/v1/instruments").await;
    assert_eq!(status, 200);
    let expected: Vec<serde_json::Value> = listed
        .instruments
        .iter()
        .map(raven_proto::json::instrument)
        .collect();
    assert_eq!(instruments, serde_json::Value::Array(expected));
    assert_eq!(instruments.as_array().unwrap().len(), 2);

    let grpc = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "TEST:BOOK".into(),
            depth: 2,
        })
        .await
        .unwrap()
        .into_inner();
    let (status, mut http) = get_json(&server, "/api/v1/snapshot/TEST:BOOK?depth=2").await;
    assert_eq!(status, 200);
    let mut expected = raven_proto::json::snapshot(&grpc).unwrap();
    // Each answer is stamped when it is made.
    for answer in [&mut http, &mut expected] {
        let published = answer.as_object_mut().unwrap().remove("publish_time");
        assert!(published.unwrap().as_str().unwrap().parse::<u64>().is_ok());
    }
    assert_eq!(http, expected);
    assert_eq!(
        http["asks"],
        serde_json::json!([
            ["0.000000101", "0.000000004"],
            ["9223372036.854775807", "18446744073.709551615"]
        ])
    );
    assert_eq!(http["bids"].as_array().unwrap().len(), 2);
    let (_, whole) = get_json(&server, "/api/v1/snapshot/TEST:BOOK").await;
    assert_eq!(whole["bids"].as_array().unwrap().len(), 3);

    // Refusals: the gRPC code's name and the service's own message.
    let unknown = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "TEST:NOPE".into(),
            depth: 0,
        })
        .await
        .unwrap_err();
    let (status, body) = get_json(&server, "/api/v1/snapshot/TEST:NOPE").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        serde_json::json!({"error": {"code": "NOT_FOUND", "message": unknown.message()}})
    );
    for (path, message) in [
        (
            "/api/v1/snapshot/TEST:BOOK?depth=abc",
            "depth \"abc\" is not a level count",
        ),
        (
            "/api/v1/snapshot/TEST:BOOK?levels=3",
            "unknown query parameter \"levels=3\": this call takes depth=N",
        ),
    ] {
        let (status, body) = get_json(&server, path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "INVALID_ARGUMENT", "message": message}})
        );
    }
    let (status, body) = get_json(&server, "/api/v1/snapshot/nocolon").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &"INVALID_ARGUMENT".into())
    );
    let (status, body) = get_json(&server, "/api/v1/snapshot/TEST:BOOK?depth=1000000").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &"INVALID_ARGUMENT".into())
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_over_http_is_the_query_as_json_lines() {
    let server = common::server(quiet).await;
    // Two publishes apart: two publish times.
    publish_trades(&server, 3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    ingest
        .publish(tokio_stream::iter([pb::PublishRequest {
            events: (4..=5).map(trade).collect(),
        }]))
        .await
        .unwrap();
    let request = pb::HistoryRequest {
        instruments: vec!["TEST:ABC".into()],
        channels: vec![pb::Channel::Trades as i32],
        ..Default::default()
    };
    let mut history = raven_proto::pb::history_client::HistoryClient::connect(format!(
        "http://{}",
        server.local_addr()
    ))
    .await
    .unwrap();
    // Recorded within the 5 ms window: wait until the store has all five.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let mut events = Vec::new();
        if let Ok(answer) = history.query(request.clone()).await {
            let mut stream = answer.into_inner();
            while let Some(message) = stream.message().await.unwrap() {
                events.extend(message.events);
            }
        }
        if events.len() == 5 {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let lines = |body: &str| -> Vec<serde_json::Value> {
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let expected: Vec<serde_json::Value> = events
        .iter()
        .map(|e| raven_proto::json::event(e).unwrap().unwrap())
        .collect();
    let http = server.http_addr().unwrap();
    // The colon percent-encoded, as a browser sends it.
    let (status, body) = get(
        http,
        "/api/v1/history?instruments=TEST%3AABC&channels=trades",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(lines(&body), expected);
    // A time range (RFC 3339 and Unix ns) and a limit, as History.Query takes them.
    let (first, second) = (events[0].publish_time, events[3].publish_time);
    assert!(first < second && events[4].publish_time == second);
    let path = format!(
        "/api/v1/history?instruments=TEST:ABC&from={first}&to={second}&limit=10&channels=trades,book"
    );
    let (_, body) = get(http, &path).await.unwrap();
    assert_eq!(lines(&body), expected[..3]);
    let path = format!("/api/v1/history?instruments=TEST:ABC&from={second}");
    let (_, body) = get(http, &path).await.unwrap();
    assert_eq!(lines(&body), expected[3..]);
    let (_, body) = get(
        http,
        "/api/v1/history?instruments=TEST:ABC&from=1970-01-01T00:00:00Z&limit=2",
    )
    .await
    .unwrap();
    assert_eq!(lines(&body), expected[..2]);

    for (path, status, code, message) in [
        (
            "/api/v1/history",
            400,
            "INVALID_ARGUMENT",
            "the query names no instruments",
        ),
        (
            "/api/v1/history?instruments=TEST:ABC&channels=quotes",
            400,
            "INVALID_ARGUMENT",
            "unknown channel \"quotes\": book, bbo, trades or candles",
        ),
        (
            "/api/v1/history?instruments=TEST:ABC&from=yesterday",
            400,
            "INVALID_ARGUMENT",
            "from: invalid time \"yesterday\": expected Unix nanoseconds or RFC 3339, e.g. 2026-11-28T05:00:00Z or 2026-11-28T06:00:00.5+01:00",
        ),
        (
            "/api/v1/history?instruments=TEST:ABC&sort=desc",
            400,
            "INVALID_ARGUMENT",
            "unknown query parameter \"sort\": this call takes instruments, channels, from, to and limit",
        ),
        (
            "/api/v1/history?instruments=TEST%3",
            400,
            "INVALID_ARGUMENT",
            "\"TEST%3\" is not a valid query value",
        ),
        (
            "/api/v1/history?instruments=TEST:NOPE",
            404,
            "NOT_FOUND",
            "no recorded events for instrument \"TEST:NOPE\"",
        ),
    ] {
        let (got, body) = get(http, path).await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"error": {"code": code, "message": message}}),
            "{path}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_whole_request_is_closed_and_others_are_served() {
    let server = common::server(|f| {
        quiet(f);
        f.http.request_head_timeout_secs = 2;
    })
    .await;
    let http = server.http_addr().unwrap();
    let opened = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(http).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: raven\r\n")
        .await
        .unwrap();
    // The request-head limit is 2 s here; the server closes both (a 408 for the half
    // request), before the default's 10 s would have passed.
    for (name, socket) in [("silent", &mut silent), ("half a request", &mut half)] {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("the {name} connection was held open"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{name}: {answer}"
        );
        assert!(opened.elapsed() < Duration::from_secs(9), "{name}");
    }
    // Meanwhile, and after, whole requests are answered.
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    server.shutdown().await.unwrap();
}

/// `GET path` until it is answered 200 (a connection closed a moment ago may not have
/// given its place back yet): the body, and how many 503s came first.
async fn get_when_free(http: std::net::SocketAddr, path: &str) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut busy = 0;
    loop {
        let (status, body) = get(http, path).await.unwrap();
        if status == 200 {
            return (body, busy);
        }
        assert_eq!(status, 503, "{body}");
        busy += 1;
        assert!(tokio::time::Instant::now() < deadline, "never free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_past_the_limit_are_answered_503_and_a_reload_moves_it() {
    let limited = |max: usize| {
        move |f: &mut raven_server::config::FileConfig| {
            quiet(f);
            f.limits.max_http_connections = max;
        }
    };
    let server = common::server(limited(2)).await;
    let http = server.http_addr().expect("HTTP on");
    const BUSY: &str = "too many HTTP connections (limits.max_http_connections)\n";

    // Two held: a silent socket and a WebSocket, which keeps its place after the upgrade
    // for as long as its socket lives.
    let silent = tokio::net::TcpStream::connect(http).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{http}/ws"), tcp)
        .await
        .unwrap();
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (503, BUSY));

    // The silent one goes; a scrape takes its place and sees itself and the WebSocket.
    drop(silent);
    let (metrics, busy) = get_when_free(http, "/metrics").await;
    let metrics = scrape::samples(&metrics);
    assert_eq!(metrics["raven_http_connections"], 2.0);
    assert_eq!(metrics["raven_http_connections_refused"], (1 + busy) as f64);

    // What SIGHUP does: one place, which the WebSocket holds, until it closes.
    server.reload(Some(&common::config(limited(1))));
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (503, BUSY));
    drop(ws);
    let (body, _) = get_when_free(http, "/healthz").await;
    assert_eq!(body, "ok\n");

    // No limit: three silent sockets and a request, all taken.
    server.reload(Some(&common::config(limited(0))));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(http).await.unwrap());
    }
    let (status, body) = get(http, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    server.shutdown().await.unwrap();
}
