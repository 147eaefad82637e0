//! `[limits]` against the real server: connections over `max_connections` are closed at
//! once while those open carry on, each connection is told its stream limit in its
//! HTTP/2 settings, and a stream that subscribes faster than `subscribe_requests_per_s`
//! ends with `RESOURCE_EXHAUSTED` naming the limit. Refusals are counted by limit.

mod common;
#[path = "common/live.rs"]
mod live;
#[path = "scrape/mod.rs"]
mod scrape;

use std::time::Duration;

use raven_proto::pb::{self, stream_request::Request as Req};
use tonic::Code;

/// Reads `stream` until it ends, returning its status.
async fn end_of(stream: &mut tonic::Streaming<pb::StreamResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("ended without a status"),
            Err(status) => return status,
        }
    }
}

/// Sends a subscribe to each of `names`' trades on `requests`, until the server has
/// ended the stream (a limit may end it before the last is sent).
async fn subscribe_each(requests: &tokio::sync::mpsc::Sender<pb::StreamRequest>, names: &[&str]) {
    for name in names {
        let request = pb::StreamRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                instruments: vec![(*name).into()],
                channel: pb::Channel::Trades as i32,
                depth: 0,
                start: 0,
            })),
        };
        if requests.send(request).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_and_counted() {
    let server = common::server(|f| f.limits.max_connections = 2).await;
    let addr = server.local_addr();
    let (_a, mut first) = live::subscribe(addr, "SIM:BTC-USD", pb::Channel::Trades).await;
    let (_b, mut second) = live::subscribe(addr, "SIM:ETH-USD", pb::Channel::Trades).await;

    // The third is accepted and closed before a byte is read.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut third, &mut buf),
    )
    .await
    .expect("the server closes it");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics[r#"raven_connections_refused{limit="max_connections"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"raven_connections_refused{limit="connections_per_ip_per_s"}"#],
        0.0
    );
    // The two open go on.
    for stream in [&mut first, &mut second] {
        stream.message().await.unwrap().expect("still open");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_is_told_its_stream_limit() {
    let server = common::server(|f| f.limits.streams_per_connection = 7).await;
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut client = client.ready().await.unwrap();
    // The server's SETTINGS arrive just after the handshake.
    while client.current_max_send_streams() != 7 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SETTINGS_MAX_CONCURRENT_STREAMS is {}",
            client.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        client = client.ready().await.unwrap();
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_subscribing_too_fast_ends_naming_the_limit() {
    let server = common::server(|f| f.limits.subscribe_requests_per_s = 3).await;
    let (tx, mut stream) =
        live::subscribe(server.local_addr(), "SIM:BTC-USD", pb::Channel::Trades).await;
    subscribe_each(&tx, &["SIM:ETH-USD", "SIM:SOL-USD", "SIM:XRP-USD"]).await;
    let status = end_of(&mut stream).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "more than 3 subscribe requests in one second on this stream: limit subscribe_requests_per_s = 3"
    );
    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics[r#"raven_limit_hits{limit="subscribe_requests_per_s"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"raven_grpc_calls{code="RESOURCE_EXHAUSTED",method="raven.v1.Market/Stream"}"#],
        1.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_limits_to_what_comes_next() {
    let server = common::server(|_| {}).await;
    let addr = server.local_addr();
    let (tx, mut stream) = live::subscribe(addr, "SIM:BTC-USD", pb::Channel::Trades).await;
    stream.message().await.unwrap().expect("subscribed");

    // What SIGHUP does with the file read again.
    server.reload(Some(&common::config(|f| {
        f.limits.max_connections = 1;
        f.limits.subscribe_requests_per_s = 1;
    })));

    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut refused, &mut buf),
    )
    .await
    .expect("the server closes it");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics[r#"raven_connections_refused{limit="max_connections"}"#],
        1.0
    );

    subscribe_each(&tx, &["SIM:ETH-USD", "SIM:SOL-USD"]).await;
    let status = end_of(&mut stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::ResourceExhausted,
            "more than 1 subscribe requests in one second on this stream: limit subscribe_requests_per_s = 1"
        )
    );
    server.shutdown().await.unwrap();
}
