//! Edge nodes serving an ingest node's market through NATS JetStream: one ingest node
//! (its simulator, or events published to it) and edges, each a real server on its own
//! loopback port, against a `nats-server -js` of each test's own (a free port, a scratch
//! store: stopping it disturbs nothing else). Skipped with a message where `nats-server`
//! is missing, unless `RAVEN_REQUIRE_SERVICES=1` (CI) makes that a failure.

mod common;
#[path = "common/scaleout.rs"]
mod scaleout;
#[path = "scrape/mod.rs"]
mod scrape;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;
use raven_proto::pb::{
    self, ingest_client::IngestClient, market_client::MarketClient, stream_request::Request as Req,
};
use raven_server::app::RunningServer;
use raven_server::config::{FileConfig, Role};
use raven_server::replication::FollowerStats;
use raven_testkit::nats::{PrivateNats, nats_server_available};
use scaleout::{LIVENESS, cluster, load, wait_for};
use tonic::Code;

/// An ingest node of `cluster` on `nats`, its simulator at `rate` events/s over two
/// shards, a checkpoint every 500 book events, with `configure` applied last.
async fn ingest(
    nats: &PrivateNats,
    cluster: &str,
    rate: u64,
    configure: impl FnOnce(&mut FileConfig),
) -> RunningServer {
    common::server(|f| {
        f.server.role = Role::Ingest;
        f.replication.nats = nats.url();
        f.replication.cluster = cluster.to_owned();
        f.engine.shards = 2;
        f.sim.rate = rate;
        f.store.snapshot_every = 500;
        configure(f);
    })
    .await
}

/// An edge node of `cluster` with `shards` shards, once ready.
async fn edge(
    nats: &PrivateNats,
    cluster: &str,
    shards: usize,
) -> (RunningServer, Arc<FollowerStats>) {
    let server = common::server(|f| {
        f.server.role = Role::Edge;
        f.replication.nats = nats.url();
        f.replication.cluster = cluster.to_owned();
        f.engine.shards = shards;
    })
    .await;
    let stats = server.edge_stats().expect("an edge node");
    wait_for("the edge ready", LIVENESS, || {
        stats.ready.load(Ordering::Relaxed)
    })
    .await;
    (server, stats)
}

/// What one subscription received after its initial state: every event in order
/// (sequenced ones and the edge's unsequenced status events alike).
struct Received {
    what: String,
    events: Vec<pb::Event>,
}

impl Received {
    /// The sequenced events, by sequence, as the bytes a one-event message holds.
    fn by_sequence(&self) -> BTreeMap<u64, Vec<u8>> {
        self.events
            .iter()
            .filter(|e| e.sequence > 0)
            .map(|e| {
                let bytes = pb::StreamResponse {
                    events: vec![e.clone()],
                }
                .encode_to_vec();
                (e.sequence, bytes)
            })
            .collect()
    }

    /// Sequences follow each other with no gap and no duplicate.
    fn assert_contiguous(&self) {
        let sequences: Vec<u64> = self
            .events
            .iter()
            .filter(|e| e.sequence > 0)
            .map(|e| e.sequence)
            .collect();
        assert!(
            sequences.len() > 10,
            "{}: {} events",
            self.what,
            sequences.len()
        );
        for pair in sequences.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{}: {} then {}",
                self.what,
                pair[0],
                pair[1]
            );
        }
    }
}

/// Subscribes to `instrument` on `channel` at `depth` and collects until `until`.
async fn collect(
    addr: SocketAddr,
    instrument: &str,
    channel: pb::Channel,
    depth: u32,
    until: Instant,
) -> Received {
    let what = format!("{addr} {instrument} {channel:?} depth {depth}");
    let (_requests, mut stream) = subscribe(addr, instrument, channel, depth).await;
    let mut events = Vec::new();
    let mut live = false;
    while let Ok(message) = tokio::time::timeout_at(until.into(), stream.message()).await {
        for event in message.unwrap().expect("the stream stays open").events {
            match event.body {
                Some(pb::event::Body::SnapshotEnd(_)) => live = true,
                _ if live => events.push(event),
                _ => {}
            }
        }
    }
    Received { what, events }
}

/// A stream subscribed to `instrument` on `channel` at `depth`, and the sender that keeps
/// its requests open.
async fn subscribe(
    addr: SocketAddr,
    instrument: &str,
    channel: pb::Channel,
    depth: u32,
) -> (
    tokio::sync::mpsc::Sender<pb::StreamRequest>,
    tonic::Streaming<pb::StreamResponse>,
) {
    let mut client = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: vec![instrument.into()],
            channel: channel as i32,
            depth,
            start: 0,
        })),
    })
    .await
    .unwrap();
    let stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

async fn snapshot(addr: SocketAddr, instrument: &str) -> pb::Event {
    let mut client = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: instrument.into(),
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

fn level(price: i64, qty: u64) -> pb::Level {
    pb::Level {
        price,
        qty,
        qty_hi: 0,
    }
}

/// A snapshot and then `deltas` changes of one published instrument, in one request each.
fn quiet_book(instrument: &str, deltas: u64) -> Vec<pb::PublishRequest> {
    let event = |body| pb::FeedEvent {
        instrument: instrument.into(),
        exchange_time: 1_700_000_000_000_000_000,
        receive_time: 0,
        venue_seq: 0,
        body: Some(body),
    };
    let mut requests = vec![pb::PublishRequest {
        events: vec![event(pb::feed_event::Body::Snapshot(pb::BookSnapshot {
            bids: (1..=50).map(|i| level(1_000 - i, 10)).collect(),
            asks: (1..=50).map(|i| level(1_000 + i, 10)).collect(),
            ..Default::default()
        }))],
    }];
    // Quantities change on levels that stay on their side of the book.
    for n in 0..deltas {
        let step = (n % 50) as i64;
        requests.push(pb::PublishRequest {
            events: vec![event(pb::feed_event::Body::Delta(pb::BookDelta {
                bids: vec![level(999 - step, 1 + n % 7)],
                asks: vec![level(1_001 + step, 1 + n % 5)],
            }))],
        });
    }
    requests
}

/// One ingest node with the simulator and two edges (one started late, with another
/// shard count): for a while every live event a client receives, on every channel and at
/// every depth, is the same on the three, byte for byte, with no gap and no duplicate;
/// and an edge's book equals the ingest node's at the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_serve_the_ingest_node_s_events_byte_for_byte() {
    if !nats_server_available() {
        return;
    }
    let seconds: u64 = std::env::var("RAVEN_EDGE_TEST_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("bytes");
    let ingest = ingest(&nats, &cluster, 10_000, |_| {}).await;
    let (first, first_stats) = edge(&nats, &cluster, 2).await;
    // The second starts from checkpoints the ingest node has written meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What the first edge's checkpoints covered is behind it: from here on it skips
    // nothing, though it reads each batch twice (live, then from the stream).
    let skipped_by_first = load(&first_stats.replica.skipped);
    let (late, late_stats) = edge(&nats, &cluster, 1).await;
    assert!(
        load(&late_stats.checkpoints) >= 8,
        "the simulator's 8 books checkpointed"
    );

    let until = Instant::now() + Duration::from_secs(seconds);
    let views = [
        (pb::Channel::Book, 0),
        (pb::Channel::Book, 10),
        (pb::Channel::Bbo, 0),
        (pb::Channel::Trades, 0),
    ];
    let mut tasks = Vec::new();
    for (instrument, (channel, depth)) in ["SIM:BTC-USD", "SIM:ETH-USD"]
        .into_iter()
        .flat_map(|i| views.map(|v| (i, v)))
    {
        for addr in [ingest.local_addr(), first.local_addr(), late.local_addr()] {
            tasks.push(tokio::spawn(collect(
                addr, instrument, channel, depth, until,
            )));
        }
    }
    let mut received = Vec::new();
    for task in tasks {
        received.push(task.await.unwrap());
    }
    for three in received.chunks(3) {
        let direct = three[0].by_sequence();
        for r in three {
            r.assert_contiguous();
            assert!(
                r.events.iter().all(|e| e.sequence > 0),
                "{}: no status of the edge's own in a healthy run",
                r.what
            );
        }
        for on_edge in &three[1..] {
            let edge = on_edge.by_sequence();
            // Subscribed moments apart: over the sequences both were live for, each event
            // is in both, the same bytes; and that is most of the run.
            let first = *edge
                .keys()
                .next()
                .unwrap()
                .max(direct.keys().next().unwrap());
            let last = *edge
                .keys()
                .last()
                .unwrap()
                .min(direct.keys().last().unwrap());
            assert!(
                (last - first + 1) * 2 >= direct.len() as u64,
                "{}: live together for {first}..={last} of {} events",
                on_edge.what,
                direct.len()
            );
            for sequence in first..=last {
                assert_eq!(
                    edge.get(&sequence),
                    direct.get(&sequence),
                    "{} at {sequence}",
                    on_edge.what
                );
            }
        }
    }

    // A quiet book published to the ingest node: the edges' books equal its own.
    let mut publisher = IngestClient::connect(format!("http://{}", ingest.local_addr()))
        .await
        .unwrap();
    let accepted = publisher
        .publish(tokio_stream::iter(quiet_book("TEST:QUIET", 2_000)))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 2_001);
    let mut at_ingest = snapshot(ingest.local_addr(), "TEST:QUIET").await;
    let deadline = Instant::now() + LIVENESS;
    while at_ingest.sequence < 2_001 {
        assert!(
            Instant::now() < deadline,
            "the ingest node applied TEST:QUIET"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        at_ingest = snapshot(ingest.local_addr(), "TEST:QUIET").await;
    }
    for server in [&first, &late] {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let mut client = MarketClient::connect(format!("http://{}", server.local_addr()))
                .await
                .unwrap();
            let found = client
                .get_snapshot(pb::GetSnapshotRequest {
                    instrument: "TEST:QUIET".into(),
                    depth: 0,
                })
                .await;
            match found {
                Ok(event) if event.get_ref().sequence == at_ingest.sequence => {
                    let event = event.into_inner();
                    assert_eq!(event.body, at_ingest.body);
                    assert_eq!(
                        (event.exchange_time, event.receive_time),
                        (at_ingest.exchange_time, at_ingest.receive_time)
                    );
                    break;
                }
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "the edge caught up with TEST:QUIET"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    for stats in [&first_stats, &late_stats] {
        let r = &stats.replica;
        assert_eq!(
            (load(&r.gaps), load(&r.resyncs), load(&r.undecodable)),
            (0, 0, 0),
            "a healthy run"
        );
        assert!(load(&r.events) > 0);
    }
    // The late edge skipped what its checkpoints held.
    assert!(load(&late_stats.replica.skipped) > 0);
    // Each batch went on once, from whichever copy came first: the live one, mostly.
    assert_eq!(load(&first_stats.replica.skipped), skipped_by_first);
    for stats in [&first_stats, &late_stats] {
        let (live, read) = (load(&stats.live), load(&stats.messages));
        assert!(live * 2 > read, "{live} of {read} batches went on live");
    }
    // What /metrics and /api/v1/stats say is what the counters hold.
    let applied = load(&first_stats.replica.events) as f64;
    let went_live = load(&first_stats.live) as f64;
    let samples = scrape::scrape(&first).await;
    assert!(samples["raven_edge_events"] >= applied, "{samples:#?}");
    assert!(
        samples["raven_edge_live_messages"] >= went_live,
        "{samples:#?}"
    );
    assert_eq!(samples["raven_edge_ready"], 1.0);
    assert_eq!(samples["raven_edge_gaps"], 0.0);
    let lagged = samples["raven_edge_lag_seconds"];
    assert!(
        lagged > 0.0 && lagged <= load(&first_stats.messages) as f64,
        "{lagged}"
    );
    let (status, body) = scrape::get(first.http_addr().unwrap(), "/api/v1/stats")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["edge"]["ready"], true);
    assert!(
        stats["edge"]["lag_p99_ms_at_most"].as_f64().is_some(),
        "{body}"
    );
    for server in [late, first, ingest] {
        server.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_refuses_publishes_and_without_nats_does_not_start() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("refuse");
    let ingest = ingest(&nats, &cluster, 1_000, |_| {}).await;
    let (edge, _) = edge(&nats, &cluster, 1).await;
    let mut publisher = IngestClient::connect(format!("http://{}", edge.local_addr()))
        .await
        .unwrap();
    let refused = publisher
        .publish(tokio_stream::iter(quiet_book("TEST:EDGE", 1)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(refused.message(), "edge node: publish to the ingest node");
    // The simulator's instruments are listed as the ingest node lists them.
    let list = |addr: SocketAddr| async move {
        let mut client = MarketClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let mut names: Vec<String> = client
            .list_instruments(pb::ListInstrumentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .instruments
            .into_iter()
            .map(|i| i.name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        list(edge.local_addr()).await,
        list(ingest.local_addr()).await
    );
    edge.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();

    let unreachable = PrivateNats::stopped(common::scratch_dir("nats-down"));
    let config = common::config(|f| {
        f.server.role = Role::Edge;
        f.replication.nats = unreachable.url();
        f.replication.cluster = cluster.clone();
    });
    let listener = raven_server::app::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let error = raven_server::app::start(
        &config,
        Arc::new(raven_server::clock::SystemClock),
        listener,
    )
    .await
    .err()
    .expect("an edge cannot start without NATS");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "edge node: cannot reach NATS at {}: ",
            unreachable.url()
        )),
        "{message}"
    );
}

/// The status events of the edge's own in what a subscriber received: (kind, missed).
fn statuses(r: &Received) -> Vec<(i32, u64)> {
    r.events
        .iter()
        .filter(|e| e.sequence == 0)
        .filter_map(|e| match &e.body {
            Some(pb::event::Body::Status(s)) => Some((s.kind, s.missed)),
            _ => None,
        })
        .collect()
}

/// NATS stopped for 10 s while the ingest node's buffer holds only 1 MiB (the outage
/// overflows it): the ingest node's own clients lose nothing; the edge tells its clients
/// their data is stale, and once NATS is back resyncs the books from the fresh
/// checkpoints and tells trade clients how many trades they missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_the_edge_goes_stale_then_resyncs_with_the_gaps_counted() {
    if !nats_server_available() {
        return;
    }
    let mut nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("outage");
    let ingest = ingest(&nats, &cluster, 10_000, |f| {
        f.replication.buffer_bytes = 1 << 20
    })
    .await;
    let (edge, stats) = edge(&nats, &cluster, 1).await;
    let end = Instant::now() + Duration::from_secs(30);
    let direct = tokio::spawn(collect(
        ingest.local_addr(),
        "SIM:BTC-USD",
        pb::Channel::Trades,
        0,
        end,
    ));
    let book = tokio::spawn(collect(
        edge.local_addr(),
        "SIM:BTC-USD",
        pb::Channel::Book,
        0,
        end,
    ));
    let trades = tokio::spawn(collect(
        edge.local_addr(),
        "SIM:BTC-USD",
        pb::Channel::Trades,
        0,
        end,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.stop();
    let stopped = Instant::now();
    wait_for("the edge stale", LIVENESS, || {
        stats.stale.load(Ordering::Relaxed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed())).await;
    nats.restart();
    let back = Instant::now();
    wait_for("the edge's books resynced", LIVENESS, || {
        load(&stats.replica.resyncs) > 0
    })
    .await;
    eprintln!("resynced {:?} after NATS came back", back.elapsed());
    assert!(!stats.stale.load(Ordering::Relaxed));
    assert!(load(&stats.gap_markers) > 0);
    let (direct, book, trades) = (
        direct.await.unwrap(),
        book.await.unwrap(),
        trades.await.unwrap(),
    );
    direct.assert_contiguous();

    const STALE: i32 = pb::StatusKind::Stale as i32;
    const RESYNC: i32 = pb::StatusKind::Resync as i32;
    const GAP: i32 = pb::StatusKind::Gap as i32;
    let book_statuses = statuses(&book);
    assert!(book_statuses.contains(&(STALE, 0)), "{book_statuses:?}");
    assert!(
        book_statuses.iter().any(|s| s.0 == RESYNC),
        "{book_statuses:?}"
    );
    // After the resync status: a RESYNC snapshot, then deltas from its sequence on.
    let told = book
        .events
        .iter()
        .position(|e| {
            e.sequence == 0
                && matches!(&e.body, Some(pb::event::Body::Status(s)) if s.kind == RESYNC)
        })
        .unwrap();
    let after = &book.events[told + 1..];
    let resync = after
        .iter()
        .position(|e| matches!(&e.body, Some(pb::event::Body::Snapshot(s)) if s.resync))
        .expect("a RESYNC snapshot after the resync status");
    assert!(
        after[..resync].iter().all(|e| e.sequence == 0),
        "nothing of the book before it"
    );
    // From it on the book is whole: each event follows the one before, unless it is
    // another RESYNC snapshot (the ingest node may drop again while its backlog drains).
    let mut expected = after[resync].sequence;
    let mut waiting = false;
    for e in &after[resync + 1..] {
        match &e.body {
            Some(pb::event::Body::Snapshot(s)) if s.resync => {
                expected = e.sequence;
                waiting = false;
            }
            Some(pb::event::Body::Status(s)) if e.sequence == 0 && s.kind == RESYNC => {
                waiting = true;
            }
            _ if e.sequence > 0 => {
                assert!(
                    !waiting,
                    "a book event between a resync status and its snapshot"
                );
                expected += 1;
                assert_eq!(e.sequence, expected, "book events after the resync");
            }
            _ => {}
        }
    }
    assert!(expected > after[resync].sequence, "book events flow again");

    // Trades: the gap status counts exactly what the sequence skipped.
    let trade_statuses = statuses(&trades);
    assert!(trade_statuses.contains(&(STALE, 0)), "{trade_statuses:?}");
    let at = trades
        .events
        .iter()
        .position(|e| {
            e.sequence == 0 && matches!(&e.body, Some(pb::event::Body::Status(s)) if s.kind == GAP)
        })
        .expect("a trade gap");
    let missed = trade_statuses.iter().find(|s| s.0 == GAP).unwrap().1;
    let before = trades.events[..at]
        .iter()
        .rev()
        .find(|e| e.sequence > 0)
        .unwrap()
        .sequence;
    let resumed = trades.events[at..]
        .iter()
        .find(|e| e.sequence > 0)
        .unwrap()
        .sequence;
    assert_eq!(resumed - before - 1, missed);
    assert!(missed > 0);
    // Every instrument's channels are counted, whether subscribed or not.
    assert!(load(&stats.replica.missed) >= missed);
    assert!(load(&stats.replica.gaps) >= 1);
    // What the edge forwards after the gap is the ingest node's, byte for byte.
    let (on_edge, at_ingest) = (trades.by_sequence(), direct.by_sequence());
    let after_gap: Vec<_> = on_edge.keys().filter(|&&s| s >= resumed).collect();
    assert!(!after_gap.is_empty());
    for s in after_gap {
        assert_eq!(on_edge.get(s), at_ingest.get(s), "trade {s}");
    }
    edge.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();
}

/// A message on a shard's subject that does not decode (not the ingest node's): the edge
/// logs it with its stream sequence, resyncs that shard's books from their next
/// checkpoints and goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_resyncs_its_shard_and_the_edge_goes_on() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("garbage");
    let ingest = ingest(&nats, &cluster, 4_000, |_| {}).await;
    let (edge, stats) = edge(&nats, &cluster, 2).await;
    wait_for("events through the edge", LIVENESS, || {
        load(&stats.replica.events) > 1_000
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let ack = js
        .publish(
            format!("raven.{cluster}.ev.0"),
            vec![0x0a, 0xff, 0xff].into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_for("the message read", LIVENESS, || {
        load(&stats.stream_sequence) >= ack.sequence
    })
    .await;
    // Read, then applied by its shard a moment later.
    wait_for("the message refused", LIVENESS, || {
        load(&stats.replica.undecodable) > 0
    })
    .await;
    wait_for("shard 0's books resynced", LIVENESS, || {
        load(&stats.replica.resyncs) > 0
    })
    .await;
    assert_eq!(load(&stats.replica.undecodable), 1);
    let events = load(&stats.replica.events);
    wait_for("events after it", LIVENESS, || {
        load(&stats.replica.events) > events + 1_000
    })
    .await;
    let until = Instant::now() + Duration::from_secs(2);
    collect(
        edge.local_addr(),
        "SIM:BTC-USD",
        pb::Channel::Trades,
        0,
        until,
    )
    .await
    .assert_contiguous();
    edge.shutdown().await.unwrap();
    ingest.shutdown().await.unwrap();
}

/// The ingest node restarts (a new run: its sequences start again at 1): the edge ends its
/// client streams with `UNAVAILABLE`, saying why, and a client that subscribes again gets
/// the new run's book and sequences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_node_restart_ends_the_edge_s_streams_and_the_books_start_over() {
    if !nats_server_available() {
        return;
    }
    let nats = PrivateNats::start(common::scratch_dir("nats"));
    let cluster = cluster("restart");
    let first = ingest(&nats, &cluster, 2_000, |_| {}).await;
    let (edge, stats) = edge(&nats, &cluster, 1).await;
    let (_requests, mut stream) =
        subscribe(edge.local_addr(), "SIM:BTC-USD", pb::Channel::Book, 0).await;
    let mut before = 0;
    while before < 1_000 {
        let message = stream.message().await.unwrap().expect("open");
        before = message
            .events
            .iter()
            .map(|e| e.sequence)
            .max()
            .unwrap_or(before);
    }
    first.shutdown().await.unwrap();
    let events = load(&stats.replica.events);
    let second = ingest(&nats, &cluster, 2_000, |_| {}).await;
    let ended = loop {
        match tokio::time::timeout(LIVENESS, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Err(status)) => break status,
            other => panic!("the stream ends with a status: {other:?}"),
        }
    };
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(
        ended.message().contains("the ingest node restarted"),
        "{ended:?}"
    );
    wait_for("the new run's events", LIVENESS, || {
        load(&stats.replica.events) > events + 500
    })
    .await;
    // Subscribed again: the new run's book, its sequences from the start again.
    let until = Instant::now() + Duration::from_secs(2);
    let again = collect(
        edge.local_addr(),
        "SIM:BTC-USD",
        pb::Channel::Trades,
        0,
        until,
    )
    .await;
    again.assert_contiguous();
    let at_edge = snapshot(edge.local_addr(), "SIM:BTC-USD").await;
    assert!(
        at_edge.sequence < before,
        "{} then {before}",
        at_edge.sequence
    );
    assert_eq!(load(&stats.replica.gaps), 0, "a new run is not a gap");
    edge.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}
