//! API keys against the real server: every status code a caller can get (no key or an
//! unknown one, a role or an instrument the key lacks, a per-key limit), what stays open
//! (health), a key's view of the instrument list, revocation by reload ending the
//! revoked key's stream and no other, a bad reload keeping the keys in force, and one key
//! at its ingest limit slowed without slowing another. The refusals are counted exactly
//! in `/metrics`.

mod common;
#[path = "scrape/mod.rs"]
mod scrape;

use std::path::Path;
use std::time::Duration;

use raven_proto::pb::feed_event::Body;
use raven_proto::pb::{
    self, history_client::HistoryClient, ingest_client::IngestClient, market_client::MarketClient,
    stream_request::Request as Req,
};
use raven_server::api::auth::{Role, key_entry, new_secret};
use raven_server::app::RunningServer;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A caller's connection: its own channel, with its key (if any) on every call.
type Authed = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer(Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        }
        Ok(r)
    }
}

async fn channel(server: &RunningServer, secret: Option<&str>) -> Authed {
    let channel = Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(channel, Bearer(secret.map(str::to_owned)))
}

/// The keys of these tests, their secrets, and the file that lists them.
struct KeySet {
    reader: String,
    ops: String,
    limited: String,
    publisher: String,
}

fn write_keys(path: &Path, keys: &KeySet, with_reader: bool) {
    let mut text = String::from("# test keys\n");
    if with_reader {
        text += &key_entry(
            "reader",
            &keys.reader,
            &[Role::Subscribe],
            &["SIM:BTC-USD".into(), "SIM:ETH*".into()],
        );
    }
    text += &key_entry("ops", &keys.ops, &[Role::Admin], &[]);
    text += &key_entry("limited", &keys.limited, &[Role::Subscribe], &[]);
    text += "max_streams = 1\nmax_subscriptions = 2\n";
    text += &key_entry(
        "publisher",
        &keys.publisher,
        &[Role::Ingest],
        &["KEYS:*".into()],
    );
    text += "ingest_events_per_s = 1000\n";
    std::fs::write(path, text).unwrap();
}

async fn keyed_server() -> (RunningServer, KeySet, std::path::PathBuf) {
    let keys = KeySet {
        reader: new_secret().unwrap(),
        ops: new_secret().unwrap(),
        limited: new_secret().unwrap(),
        publisher: new_secret().unwrap(),
    };
    let path = common::scratch_dir("auth").join("keys.toml");
    write_keys(&path, &keys, true);
    let server = common::server(|f| f.auth.keys_file = Some(path.clone())).await;
    (server, keys, path)
}

/// The code and message of a failed call.
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), status.message().to_owned())
}

async fn open_stream(
    client: &mut MarketClient<Authed>,
    instruments: &[&str],
) -> (
    tokio::sync::mpsc::Sender<pb::StreamRequest>,
    Result<tonic::Streaming<pb::StreamResponse>, tonic::Status>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(subscribe(instruments)).await.unwrap();
    let stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (tx, stream)
}

fn subscribe(instruments: &[&str]) -> pb::StreamRequest {
    pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: instruments.iter().map(|s| s.to_string()).collect(),
            channel: pb::Channel::Book as i32,
            depth: 0,
            start: 0,
        })),
    }
}

/// Reads messages until the stream ends, returning how it ended.
async fn end_of(stream: &mut tonic::Streaming<pb::StreamResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_code_and_names_what_is_missing() {
    let (server, keys, _path) = keyed_server().await;

    // No key, a malformed header, an unknown key.
    let mut anonymous = MarketClient::new(channel(&server, None).await);
    let (code, message) = refused(
        anonymous
            .list_instruments(pb::ListInstrumentsRequest {})
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("authorization: Bearer"), "{message}");
    let mut stranger = MarketClient::new(channel(&server, Some("rvn_nobody")).await);
    assert_eq!(
        refused(
            stranger
                .list_instruments(pb::ListInstrumentsRequest {})
                .await
        ),
        (Code::Unauthenticated, "unknown or revoked API key".into())
    );

    // Health stays open.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(&server, None).await);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "raven.v1.Market".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // The reader sees its instruments only, and is refused the others by name.
    let reader = channel(&server, Some(&keys.reader)).await;
    let mut market = MarketClient::new(reader.clone());
    let mut listed: Vec<String> = market
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .instruments
        .into_iter()
        .map(|i| i.name)
        .collect();
    listed.sort();
    assert_eq!(listed, ["SIM:BTC-USD", "SIM:ETH-USD"]);
    let snapshot = |name: &str| pb::GetSnapshotRequest {
        instrument: name.into(),
        depth: 1,
    };
    assert_eq!(
        market
            .get_snapshot(snapshot("SIM:ETH-USD"))
            .await
            .unwrap()
            .into_inner()
            .instrument,
        "SIM:ETH-USD"
    );
    assert_eq!(
        refused(market.get_snapshot(snapshot("SIM:SOL-USD")).await),
        (
            Code::PermissionDenied,
            "API key \"reader\" may not use instrument SIM:SOL-USD".into()
        )
    );
    let (_tx, stream) = open_stream(&mut market, &["SIM:BTC-USD", "SIM:XRP-USD"]).await;
    let status = end_of(&mut stream.unwrap()).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::PermissionDenied,
            "API key \"reader\" may not use instrument SIM:XRP-USD"
        )
    );
    // A role it lacks.
    let mut history = HistoryClient::new(reader.clone());
    let query = pb::HistoryRequest {
        instruments: vec!["SIM:BTC-USD".into()],
        channels: vec![],
        from: 0,
        to: 0,
        limit: 1,
    };
    assert_eq!(
        refused(history.query(query.clone()).await),
        (
            Code::PermissionDenied,
            "API key \"reader\" lacks the history role".into()
        )
    );
    // Admin has every role.
    let mut history = HistoryClient::new(channel(&server, Some(&keys.ops)).await);
    assert!(history.query(query).await.is_ok());

    // Limits: one stream, two subscriptions.
    let mut limited = MarketClient::new(channel(&server, Some(&keys.limited)).await);
    let (_held, first) = open_stream(&mut limited, &["SIM:BTC-USD", "SIM:ETH-USD"]).await;
    let mut first = first.unwrap();
    first.message().await.unwrap().expect("snapshots");
    let (_tx, second) = open_stream(&mut limited, &["SIM:SOL-USD"]).await;
    assert_eq!(
        refused(second),
        (
            Code::ResourceExhausted,
            "API key \"limited\" has 1 streams open: limit max_streams = 1".into()
        )
    );
    _held.send(subscribe(&["SIM:SOL-USD"])).await.unwrap();
    let status = end_of(&mut first).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "API key \"limited\" holds 2 subscriptions and asked for 1 more: limit max_subscriptions = 2"
        )
    );
    // The stream that ended gave its stream and subscriptions back.
    let (_tx, again) = open_stream(&mut limited, &["SIM:SOL-USD", "SIM:XRP-USD"]).await;
    again.unwrap().message().await.unwrap().expect("snapshots");

    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics[r#"raven_auth_failures{reason="unauthenticated"}"#],
        2.0
    );
    // SOL-USD's snapshot, XRP-USD's subscribe, the history role.
    assert_eq!(
        metrics[r#"raven_auth_failures{reason="permission_denied"}"#],
        3.0
    );
    assert_eq!(metrics[r#"raven_limit_hits{limit="max_streams"}"#], 1.0);
    assert_eq!(
        metrics[r#"raven_limit_hits{limit="max_subscriptions"}"#],
        1.0
    );
    assert_eq!(metrics["raven_auth_keys"], 4.0);
    assert_eq!(
        metrics[r#"raven_grpc_calls{code="UNAUTHENTICATED",method="raven.v1.Market/ListInstruments"}"#],
        2.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_a_removed_key_and_ends_its_stream_alone() {
    let (server, keys, path) = keyed_server().await;
    let mut reader = MarketClient::new(channel(&server, Some(&keys.reader)).await);
    let mut ops = MarketClient::new(channel(&server, Some(&keys.ops)).await);
    let (_r, reader_stream) = open_stream(&mut reader, &["SIM:BTC-USD"]).await;
    let (_o, ops_stream) = open_stream(&mut ops, &["SIM:BTC-USD"]).await;
    let (mut reader_stream, mut ops_stream) = (reader_stream.unwrap(), ops_stream.unwrap());
    reader_stream.message().await.unwrap().expect("snapshot");
    ops_stream.message().await.unwrap().expect("snapshot");

    // A file that does not parse changes nothing.
    std::fs::write(&path, "[[keys]]\nid = \"x\"\nroles = [\"subscribe\"]\n").unwrap();
    server.reload(None);
    reader
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .expect("the keys in force stay");

    write_keys(&path, &keys, false);
    server.reload(None);
    let status = end_of(&mut reader_stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "API key revoked")
    );
    assert_eq!(
        refused(reader.list_instruments(pb::ListInstrumentsRequest {}).await),
        (Code::Unauthenticated, "unknown or revoked API key".into())
    );
    // The other key's stream goes on.
    for _ in 0..5 {
        ops_stream
            .message()
            .await
            .unwrap()
            .expect("still streaming");
    }
    let metrics = scrape::scrape(&server).await;
    assert_eq!(metrics["raven_auth_keys_revoked"], 1.0);
    assert_eq!(metrics["raven_auth_keys"], 3.0);
    server.shutdown().await.unwrap();
}

fn trades(instrument: &str, from: u64, n: u64) -> pb::PublishRequest {
    pb::PublishRequest {
        events: (from..from + n)
            .map(|i| pb::FeedEvent {
                instrument: instrument.into(),
                exchange_time: 1_700_000_000_000_000_000 + i,
                receive_time: 0,
                venue_seq: 0,
                body: Some(Body::Trade(pb::Trade {
                    price: 100,
                    qty: 1,
                    qty_hi: 0,
                    aggressor: pb::Aggressor::Buy as i32,
                    trade_id: format!("t{i}"),
                })),
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_at_its_ingest_limit_is_slowed_alone_and_loses_nothing() {
    let (server, keys, _path) = keyed_server().await;
    let mut publisher = IngestClient::new(channel(&server, Some(&keys.publisher)).await);
    let mut ops = IngestClient::new(channel(&server, Some(&keys.ops)).await);

    // Outside its instruments: refused by name, nothing applied.
    let (code, message) = refused(
        publisher
            .publish(tokio_stream::iter([trades("OTHER:X", 0, 1)]))
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("API key \"publisher\" may not use instrument OTHER:X"),
        "{message}"
    );

    // 3,000 events at 1,000/s: a second's worth at once, then two seconds owed.
    let started = tokio::time::Instant::now();
    let slowed = tokio::spawn(async move {
        let requests = (0..30).map(|i| trades("KEYS:SLOW", i * 100, 100));
        let accepted = publisher
            .publish(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner()
            .accepted;
        (accepted, started.elapsed())
    });
    // Meanwhile another key publishes as much without waiting on the first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let requests = (0..30).map(|i| trades("KEYS:FAST", i * 100, 100));
    let fast = ops.publish(tokio_stream::iter(requests)).await.unwrap();
    assert_eq!(fast.into_inner().accepted, 3000);
    assert!(!slowed.is_finished(), "the limited key finished first");
    let (accepted, took) = slowed.await.unwrap();
    assert_eq!(accepted, 3000, "slowed, never trimmed");
    assert!(
        took >= Duration::from_secs(2),
        "{took:?}: the limit was not applied"
    );
    // Requests 11 to 30 each waited for their 100 events' worth.
    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics[r#"raven_limit_hits{limit="ingest_events_per_s"}"#],
        20.0
    );
    server.shutdown().await.unwrap();
}

#[test]
fn a_bad_keys_file_stops_the_start_naming_file_and_line() {
    let path = common::scratch_dir("auth").join("keys.toml");
    let secret = new_secret().unwrap();
    let mut text = key_entry("ops", &secret, &[Role::Admin], &[]);
    text += "\n[[keys]]\nid = \"ops\"\nsha256 = \"00\"\nroles = [\"subscribe\"]\n";
    std::fs::write(&path, &text).unwrap();
    let resolve = || {
        let mut file = raven_server::config::FileConfig::default();
        file.auth.keys_file = Some(path.clone());
        file.resolve().unwrap_err().to_string()
    };
    assert_eq!(
        resolve(),
        format!(
            "cannot use auth.keys_file = {}: line 7: key id \"ops\" is already used on line 2",
            path.display()
        )
    );
    std::fs::write(
        &path,
        text.replace(
            "id = \"ops\"\nsha256 = \"00\"",
            "id = \"two\"\nsha256 = \"00\"",
        ),
    )
    .unwrap();
    assert_eq!(
        resolve(),
        format!(
            "cannot use auth.keys_file = {}: line 7: key \"two\": sha256 must be 64 hex digits (the SHA-256 of the secret; `raven keys add` writes it)",
            path.display()
        )
    );
    std::fs::write(&path, "[[keys]]\nid = \"x\"\nroles = [\"subscribe\"\n").unwrap();
    let error = resolve();
    assert!(
        error.starts_with(&format!(
            "cannot use auth.keys_file = {}: line 3:",
            path.display()
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_limits_changes_the_defaults_of_keys_without_their_own() {
    let (server, keys, path) = keyed_server().await;
    server.reload(Some(&common::config(|f| {
        f.auth.keys_file = Some(path.clone());
        f.limits.streams_per_key = 1;
    })));
    let mut ops = MarketClient::new(channel(&server, Some(&keys.ops)).await);
    let (_held, first) = open_stream(&mut ops, &["SIM:BTC-USD"]).await;
    first.unwrap().message().await.unwrap().expect("snapshot");
    let (_tx, second) = open_stream(&mut ops, &["SIM:ETH-USD"]).await;
    assert_eq!(
        refused(second),
        (
            Code::ResourceExhausted,
            "API key \"ops\" has 1 streams open: limit max_streams = 1".into()
        )
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_reads_over_http_take_the_same_keys() {
    let (server, keys, _) = keyed_server().await;
    let http = server.http_addr().unwrap();
    let call = |path: &'static str, key: Option<&str>| {
        let header = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
        async move {
            let (status, body) = scrape::get_with(http, path, &header).await.unwrap();
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            (status, body)
        }
    };
    let (status, body) = call("/api/v1/instruments", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHENTICATED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("an API key is required")
    );
    let (status, body) = call("/api/v1/instruments", Some("rvn_nonsense")).await;
    assert_eq!(
        (status, &body["error"]["message"]),
        (401, &"unknown or revoked API key".into())
    );
    // A key sees the instruments it may use, and no other's book.
    let (status, body) = call("/api/v1/instruments", Some(&keys.reader)).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SIM:BTC-USD", "SIM:ETH-USD"]);
    let (status, body) = call("/api/v1/snapshot/SIM:BTC-USD?depth=1", Some(&keys.reader)).await;
    assert_eq!((status, body["bids"].as_array().unwrap().len()), (200, 1));
    let (status, body) = call("/api/v1/snapshot/SIM:SOL-USD", Some(&keys.reader)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &"PERMISSION_DENIED".into())
    );
    // A key without the subscribe role reads nothing.
    let (status, body) = call("/api/v1/instruments", Some(&keys.publisher)).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["message"],
        "API key \"publisher\" lacks the subscribe role"
    );
    let (status, _) = call("/api/v1/snapshot/SIM:SOL-USD", Some(&keys.ops)).await;
    assert_eq!(status, 200);
    // History takes the history role.
    let (status, body) = call(
        "/api/v1/history?instruments=SIM:BTC-USD",
        Some(&keys.reader),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["message"],
        "API key \"reader\" lacks the history role"
    );
    server.shutdown().await.unwrap();
}
