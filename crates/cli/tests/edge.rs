//! Scale-out as processes, where only a process will do: an edge killed with `kill -9`
//! mid-stream, its client resuming on another edge with `start`. One ingest node and two
//! edges (`raven serve --role …`) on a `nats-server -js` of the test's own. Skipped with a
//! message where `nats-server` is missing, unless `RAVEN_REQUIRE_SERVICES=1`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use raven_proto::pb::{self, market_client::MarketClient, stream_request::Request as Req};
use raven_testkit::nats::{PrivateNats, nats_server_available};
use raven_testkit::scratch_dir;
use raven_testkit::served::Served;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");

/// `raven serve --role ROLE` with `config`, on free ports, recording nothing.
fn serve(dir: &Path, config: &Path, role: &str) -> Served {
    let mut command = Command::new(RAVEN);
    command
        .current_dir(dir)
        .args(["serve", "--role", role, "--config"])
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--store",
            "off",
        ])
        .args(["--rate", "5000"])
        .env("RAVEN_LOG", "warn");
    Served::start(command)
}

/// Waits until `served` answers `GetSnapshot` for BTC (an edge: once it is ready).
async fn answering(served: &Served) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = MarketClient::connect(served.url()).await
            && client
                .get_snapshot(pb::GetSnapshotRequest {
                    instrument: "SIM:BTC-USD".into(),
                    depth: 1,
                })
                .await
                .is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} answers within 60 s",
            served.url()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn subscribe(
    url: String,
    channel: pb::Channel,
    start: u64,
) -> tonic::Streaming<pb::StreamResponse> {
    let mut client = MarketClient::connect(url).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: vec!["SIM:BTC-USD".into()],
            channel: channel as i32,
            depth: 0,
            start,
        })),
    })
    .await
    .unwrap();
    // The request side stays open as long as the stream is read.
    std::mem::forget(tx);
    client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner()
}

/// Reads `stream` until it ends (the server died) or for `limit`.
async fn read(
    stream: &mut tonic::Streaming<pb::StreamResponse>,
    limit: Duration,
) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let until = tokio::time::Instant::now() + limit;
    while let Ok(Ok(Some(message))) = tokio::time::timeout_at(until, stream.message()).await {
        events.extend(message.events);
    }
    events
}

fn is_marker(e: &pb::Event) -> bool {
    matches!(
        e.body,
        Some(pb::event::Body::SnapshotEnd(_) | pb::event::Body::HistoryEnd(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_edge_s_client_resumes_on_another_edge_with_start_no_gap_no_duplicate() {
    if !nats_server_available() {
        return;
    }
    let dir = scratch_dir!("edge-kill");
    let nats = PrivateNats::start(dir.join("nats"));
    let config = dir.join("raven.toml");
    std::fs::write(
        &config,
        format!(
            "[replication]\nnats = \"{}\"\ncluster = \"kill9_{}\"\n\n[store]\nsnapshot_every = 500\n",
            nats.url(),
            std::process::id()
        ),
    )
    .unwrap();
    let ingest = serve(&dir, &config, "ingest");
    answering(&ingest).await;
    let mut doomed = serve(&dir, &config, "edge");
    let other = serve(&dir, &config, "edge");
    answering(&doomed).await;
    answering(&other).await;

    let channels = [pb::Channel::Trades, pb::Channel::Book];
    let mut streams = Vec::new();
    for channel in channels {
        streams.push(subscribe(doomed.url(), channel, 0).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    doomed.child().kill().unwrap(); // SIGKILL
    doomed.child().wait().unwrap();
    for (channel, mut stream) in channels.into_iter().zip(streams) {
        // The stream ends with the process: what it delivered before is what the client has.
        let had = read(&mut stream, Duration::from_secs(10)).await;
        let last = had
            .iter()
            .rfind(|e| e.sequence > 0 && !is_marker(e))
            .expect("events before the kill")
            .clone();
        resume(&other, channel, &last).await;
    }
    drop(ingest);
}

/// A client that last received `last` subscribes on `edge` from its publish time: what it
/// receives continues right after `last` (the events up to it, at the same publish time,
/// are the ones it drops as already had), with no gap and no duplicate into the live part.
async fn resume(edge: &Served, channel: pb::Channel, last: &pb::Event) {
    let mut after = subscribe(edge.url(), channel, last.publish_time).await;
    let events = read(&mut after, Duration::from_secs(3)).await;
    let end = events
        .iter()
        .position(|e| matches!(e.body, Some(pb::event::Body::HistoryEnd(_))))
        .expect("the history part ends with its marker");
    assert!(
        events[end + 1..].iter().any(|e| e.sequence > 0),
        "live events follow"
    );
    let sequenced: Vec<&pb::Event> = events
        .iter()
        .filter(|e| e.sequence > 0 && !is_marker(e))
        .collect();
    if channel == pb::Channel::Book {
        // The book as it was at the start time first: at or before the last one had.
        let Some(pb::event::Body::Snapshot(_)) = &sequenced[0].body else {
            panic!("the book starts with a snapshot: {:?}", sequenced[0]);
        };
        assert!(sequenced[0].sequence <= last.sequence);
    } else {
        assert!(sequenced[0].sequence <= last.sequence + 1, "no gap");
        assert!(sequenced[0].publish_time >= last.publish_time);
    }
    for pair in sequenced.windows(2) {
        assert_eq!(
            pair[1].sequence,
            pair[0].sequence + 1,
            "{channel:?}: contiguous, once each"
        );
    }
    assert!(sequenced.last().unwrap().sequence > last.sequence);
}
