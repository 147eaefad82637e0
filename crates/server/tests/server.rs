//! The real server on port 0, driven over real sockets by gRPC clients.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

mod common;
#[path = "common/stalled.rs"]
mod stalled;

use raven_book::{BookFollower, Step};
use raven_model::{EventBody, SnapshotKind, StatusKind};
use raven_proto::convert::body_from_pb;
use raven_proto::pb::{self, market_client::MarketClient, stream_request::Request as Req};
use raven_server::app::RunningServer;
use raven_server::config::FileConfig;
use raven_server::feed::sim::instrument_names;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

async fn server(configure: impl FnOnce(&mut FileConfig)) -> RunningServer {
    common::server(|f| {
        f.sim.rate = 5000;
        configure(f);
    })
    .await
}

async fn client(server: &RunningServer) -> MarketClient<Channel> {
    MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap()
}

/// One `Stream` call.
struct Sub {
    requests: mpsc::Sender<pb::StreamRequest>,
    responses: tonic::Streaming<pb::StreamResponse>,
    pending: VecDeque<pb::Event>,
}

impl Sub {
    async fn open(client: &mut MarketClient<Channel>) -> Sub {
        let (requests, rx) = mpsc::channel(16);
        let responses = client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sub {
            requests,
            responses,
            pending: VecDeque::new(),
        }
    }

    async fn send(&self, request: Req) {
        self.requests
            .send(pb::StreamRequest {
                request: Some(request),
            })
            .await
            .unwrap();
    }

    async fn subscribe(&self, instruments: &[&str], channel: pb::Channel, depth: u32) {
        let instruments = instruments.iter().map(|s| s.to_string()).collect();
        self.send(Req::Subscribe(pb::Subscribe {
            instruments,
            channel: channel as i32,
            depth,
            start: 0,
        }))
        .await;
    }

    async fn next(&mut self) -> pb::Event {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            let batch = tokio::time::timeout(WAIT, self.responses.message())
                .await
                .expect("timed out waiting for events")
                .expect("stream failed")
                .expect("stream ended");
            self.pending.extend(batch.events);
        }
    }

    /// The status the stream ends with.
    async fn error(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(WAIT, self.responses.message())
                .await
                .expect("timed out")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("stream ended without an error"),
                Err(status) => return status,
            }
        }
    }
}

fn is_snapshot_end(e: &pb::Event) -> bool {
    matches!(e.body, Some(pb::event::Body::SnapshotEnd(_)))
}

/// A client-side book per instrument: every book event in sequence, none refused.
#[derive(Default)]
struct Books(HashMap<String, BookFollower>);

impl Books {
    fn apply(&mut self, e: &pb::Event) {
        let Some(body) = body_from_pb(e).unwrap() else {
            return;
        };
        let follower = self.0.entry(e.instrument.clone()).or_default();
        let step = follower
            .apply(e.sequence, &body)
            .unwrap_or_else(|error| panic!("{}: {error}", e.instrument));
        assert!(
            matches!(step, Step::Replaced { .. } | Step::Applied),
            "{}: unexpected book-channel event {body:?}",
            e.instrument
        );
    }

    fn resyncs(&self) -> u64 {
        self.0.values().map(BookFollower::resyncs).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instrument_rebuilt_from_stream_equals_snapshot_call() {
    let server = server(|_| {}).await;
    let mut c = client(&server).await;
    let names: Vec<String> = c
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .instruments
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names.len(), 8);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Depth 1 is answered from the lock-free top of book, the others by the shard.
    for depth in [0u32, 1, 5] {
        let mut sub = Sub::open(&mut c).await;
        sub.subscribe(&refs, pb::Channel::Book, depth).await;
        let mut books = Books::default();
        let mut ends = 0;
        while ends < names.len() {
            let e = sub.next().await;
            if is_snapshot_end(&e) {
                ends += 1;
            } else {
                books.apply(&e);
            }
        }
        for name in &names {
            let snap = c
                .get_snapshot(pb::GetSnapshotRequest {
                    instrument: name.clone(),
                    depth,
                })
                .await
                .unwrap()
                .into_inner();
            // The stream is behind the engine: read until this book reaches that sequence.
            while books.0[name].sequence() < snap.sequence {
                let e = sub.next().await;
                books.apply(&e);
            }
            let (seq, book) = (books.0[name].sequence(), books.0[name].book().unwrap());
            assert_eq!(seq, snap.sequence, "{name} passed the snapshot's sequence");
            let expected = body_from_pb(&snap).unwrap().unwrap();
            assert_eq!(
                EventBody::Snapshot(book.snapshot(depth as usize, SnapshotKind::Initial)),
                expected,
                "{name} depth {depth}"
            );
            if depth > 0 {
                assert!(book.depth(raven_model::Side::Bid) <= depth as usize);
            }
        }
        assert_eq!(books.resyncs(), 0);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_heartbeats_answer_and_disconnect_cleans_up() {
    let server = server(|f| f.sim.rate = 20_000).await;
    let mut c = client(&server).await;
    let mut sub = Sub::open(&mut c).await;
    sub.subscribe(&["SIM:BTC-USD"], pb::Channel::Book, 0).await;
    sub.subscribe(&["SIM:ETH-USD"], pb::Channel::Trades, 0)
        .await;
    let mut ends = 0;
    while ends < 2 {
        ends += usize::from(is_snapshot_end(&sub.next().await));
    }
    assert_eq!(server.fanout().subscribers(), 1);

    sub.send(Req::Unsubscribe(pb::Unsubscribe {
        instruments: vec!["SIM:BTC-USD".into()],
        channel: pb::Channel::Book as i32,
    }))
    .await;
    sub.send(Req::Heartbeat(pb::Heartbeat { id: 7 })).await;
    loop {
        let e = sub.next().await;
        if let Some(pb::event::Body::HeartbeatAck(ack)) = e.body {
            assert_eq!(ack.id, 7);
            assert!(ack.server_time > 0);
            break;
        }
    }
    // Requests are handled in order: after the ack, BTC book events have stopped.
    for _ in 0..50 {
        let e = sub.next().await;
        assert_eq!(
            (e.instrument.as_str(), e.channel),
            ("SIM:ETH-USD", pb::Channel::Trades as i32),
            "{e:?}"
        );
    }

    let mut count = server.fanout().watch_subscribers();
    drop(sub);
    drop(c);
    tokio::time::timeout(WAIT, count.wait_for(|&n| n == 0))
        .await
        .expect("subscriber not cleaned up")
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_is_resynced_while_a_fast_client_sees_no_gap() {
    const QUEUE: usize = 256;
    let server = server(|f| {
        f.sim.rate = 20_000;
        f.fanout.queue_events = QUEUE;
    })
    .await;
    let all = instrument_names();

    // Own connections, so the stalled one's flow-control window is its own.
    let mut fast_client = client(&server).await;
    let mut stalled_client = client(&server).await;
    let mut stalled = Sub::open(&mut stalled_client).await;
    stalled.subscribe(&all, pb::Channel::Book, 0).await;
    stalled.subscribe(&all, pb::Channel::Trades, 0).await;

    let mut fast = Sub::open(&mut fast_client).await;
    fast.subscribe(&all[..1], pb::Channel::Book, 0).await;
    let fanout = server.fanout().clone();
    let fast_reader = tokio::spawn(async move {
        let mut books = Books::default();
        let mut events = 0u64;
        // Read until the stalled client has clearly overflowed, and then some more.
        let mut after_lag = 0;
        while after_lag < 3_000 {
            let e = fast.next().await;
            if !is_snapshot_end(&e) {
                books.apply(&e);
                events += 1;
            }
            if fanout.lagged() > 1000 {
                after_lag += 1;
            }
        }
        (events, books.resyncs())
    });
    let (fast_events, fast_resyncs) = fast_reader.await.unwrap();
    assert!(fast_events > 3_000);
    assert_eq!(fast_resyncs, 0, "the fast client never lagged");
    // Memory stays bounded: the stalled client's queue never exceeds its bound (process
    // RSS is not a usable measure here, test functions share this process).
    assert!(
        server.fanout().max_queued().0 <= QUEUE,
        "queue {:?} over bound",
        server.fanout().max_queued()
    );

    // Now the stalled client reads: old deltas, then a resync snapshot per book view that
    // overflowed, then contiguous deltas; trades report the gap and resume exactly.
    let mut books = Books::default();
    let mut trade_seq: HashMap<String, u64> = HashMap::new();
    let mut gaps = 0;
    let mut pending_gap: HashMap<String, u64> = HashMap::new();
    let mut after_resync = 0;
    while books.resyncs() == 0 || gaps == 0 || after_resync < 2000 {
        let e = stalled.next().await;
        if is_snapshot_end(&e) {
            continue;
        }
        if e.channel == pb::Channel::Book as i32 {
            books.apply(&e);
            if books.resyncs() > 0 {
                after_resync += 1;
            }
            continue;
        }
        match body_from_pb(&e).unwrap().unwrap() {
            EventBody::Status(s) => {
                assert_eq!(s.kind, StatusKind::Gap);
                assert!(s.missed > 0);
                gaps += 1;
                // Consecutive reports add up (a drained queue reports drops at once).
                *pending_gap.entry(e.instrument.clone()).or_default() += s.missed;
            }
            EventBody::Trade(_) => {
                let missed = pending_gap.remove(&e.instrument).unwrap_or(0);
                let last = trade_seq
                    .entry(e.instrument.clone())
                    .or_insert(e.sequence - 1);
                assert_eq!(
                    e.sequence,
                    *last + 1 + missed,
                    "{}: trade sequence does not match the gap report",
                    e.instrument
                );
                *last = e.sequence;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(server.fanout().resyncs() >= 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streaming_clients_all_receive_data() {
    let server = server(|f| f.sim.rate = 10_000).await;
    let addr = format!("http://{}", server.local_addr());
    let mut tasks = Vec::new();
    for i in 0..1000 {
        // Each client on its own HTTP/2 connection; connections are made one after the
        // other, then all stream at once.
        let mut c = MarketClient::connect(addr.clone()).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut sub = Sub::open(&mut c).await;
            let name = ["SIM:BTC-USD", "SIM:ETH-USD", "SIM:SOL-USD", "SIM:XRP-USD"][i % 4];
            sub.subscribe(&[name], pb::Channel::Bbo, 0).await;
            let mut live = 0;
            let mut last = 0;
            let mut started = false;
            while live < 5 {
                let e = sub.next().await;
                assert_eq!(e.instrument, name);
                if is_snapshot_end(&e) {
                    started = true;
                    last = e.sequence;
                } else if started {
                    assert_eq!(e.sequence, last + 1);
                    last = e.sequence;
                    live += 1;
                }
            }
            (c, sub)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    assert_eq!(server.fanout().subscribers(), 1000);
    drop(held);
    let mut count = server.fanout().watch_subscribers();
    tokio::time::timeout(WAIT, count.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    server.shutdown().await.unwrap();
}

async fn stream_error(c: &mut MarketClient<Channel>, request: Option<Req>) -> tonic::Status {
    let mut sub = Sub::open(c).await;
    sub.requests
        .send(pb::StreamRequest { request })
        .await
        .unwrap();
    sub.error().await
}

fn subscribe(instruments: Vec<String>, channel: i32, depth: u32) -> Option<Req> {
    Some(Req::Subscribe(pb::Subscribe {
        instruments,
        channel,
        depth,
        start: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_codes_and_others_keep_being_served() {
    let server = server(|_| {}).await;
    let mut c = client(&server).await;
    let mut healthy = Sub::open(&mut c).await;
    healthy
        .subscribe(&["SIM:BTC-USD"], pb::Channel::Book, 0)
        .await;
    let mut books = Books::default();
    books.apply(&healthy.next().await);

    let book = pb::Channel::Book as i32;
    let cases: Vec<(Option<Req>, Code, &str)> = vec![
        (
            subscribe(vec!["SIM:NOPE".into()], book, 0),
            Code::NotFound,
            "unknown instrument \"SIM:NOPE\"",
        ),
        (
            subscribe(vec![], book, 0),
            Code::InvalidArgument,
            "names no instruments",
        ),
        (
            subscribe(vec!["".into()], book, 0),
            Code::InvalidArgument,
            "instrument name is empty",
        ),
        (
            subscribe(vec!["BTCUSD".into()], book, 0),
            Code::InvalidArgument,
            "expected VENUE:SYMBOL",
        ),
        (
            subscribe(vec!["SIM:BTC-USD".into()], 0, 0),
            Code::InvalidArgument,
            "channel is required",
        ),
        (
            subscribe(vec!["SIM:BTC-USD".into()], 99, 0),
            Code::InvalidArgument,
            "unknown channel 99",
        ),
        (
            subscribe(vec!["SIM:BTC-USD".into()], pb::Channel::Trades as i32, 5),
            Code::InvalidArgument,
            "depth applies",
        ),
        (
            subscribe(vec!["SIM:BTC-USD".into()], book, 1_000_000),
            Code::InvalidArgument,
            "depth 1000000 is too large",
        ),
        (
            subscribe((0..100_000).map(|i| format!("SIM:X{i}")).collect(), book, 0),
            Code::ResourceExhausted,
            "names 100000 instruments; at most 1000",
        ),
        (None, Code::InvalidArgument, "empty StreamRequest"),
    ];
    for (request, code, message) in cases {
        let status = stream_error(&mut c, request).await;
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }
    let status = c
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "SIM:NOPE".into(),
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = c
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "nope".into(),
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Garbage on the port: that connection is closed, nothing else is disturbed.
    let mut raw = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    raw.write_all(b"\x16\x03\x01 this is not HTTP/2 at all \x00\xff\xfe garbage\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut sink))
        .await
        .expect("server kept a garbage connection open")
        .ok();

    // The healthy stream kept flowing through all of it, contiguously.
    for _ in 0..200 {
        let e = healthy.next().await;
        books.apply(&e);
    }
    let list = c
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.instruments.len(), 8);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = server(|_| {}).await;
    let url = format!("http://{}", server.local_addr());
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "raven.v1.Market", "raven.v1.Ingest", "raven.v1.History"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "raven.v1.History",
            "raven.v1.Ingest",
            "raven.v1.Market"
        ]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_trade_subscriber_is_disconnected_when_configured() {
    let server = server(|f| {
        f.sim.rate = 20_000;
        f.fanout.queue_events = 64;
        f.fanout.trade_overflow = raven_server::fanout::LagPolicy::Disconnect;
    })
    .await;
    let mut c = MarketClient::new(stalled::small_windows(server.local_addr()).await);
    let mut sub = Sub::open(&mut c).await;
    let all = instrument_names();
    sub.subscribe(&all, pb::Channel::Trades, 0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.fanout().lagged() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled trade subscriber never overflowed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = sub.error().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with("client too slow"),
        "{}",
        status.message()
    );
    let mut count = server.fanout().watch_subscribers();
    drop(sub);
    tokio::time::timeout(WAIT, count.wait_for(|&n| n == 0))
        .await
        .unwrap()
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_stream_closed_bars_in_sequence() {
    let server = server(|f| f.sim.rate = 20_000).await;
    let mut c = client(&server).await;
    let mut sub = Sub::open(&mut c).await;
    sub.subscribe(&["SIM:BTC-USD"], pb::Channel::Candles, 0)
        .await;
    let end = sub.next().await;
    assert!(is_snapshot_end(&end));
    let mut last = end.sequence;
    // The simulator's exchange clock follows wall time, so 1 s bars close every second.
    for _ in 0..2 {
        let e = sub.next().await;
        assert_eq!(e.sequence, last + 1);
        last = e.sequence;
        let Some(EventBody::Candle(bar)) = body_from_pb(&e).unwrap() else {
            panic!("{e:?}")
        };
        // A 1 min bar closes too when a minute boundary falls inside the test.
        assert_eq!(bar.open_time.0 % bar.interval.nanos(), 0, "{bar:?}");
        assert!(bar.low <= bar.open && bar.open <= bar.high);
        assert!(bar.low <= bar.close && bar.close <= bar.high);
        assert!(bar.trades > 0 && bar.volume > raven_model::Qty::ZERO);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_budget_batches_more_events_per_message() {
    async fn second_message_events(budget: u64) -> usize {
        let server = server(|f| {
            f.fanout.write_budget_per_s = budget;
            f.fanout.write_budget_max_per_s = 0;
        })
        .await;
        let mut c = client(&server).await;
        let mut sub = Sub::open(&mut c).await;
        sub.subscribe(&["SIM:BTC-USD"], pb::Channel::Trades, 0)
            .await;
        // First message: the SnapshotEnd marker (and perhaps a trade).
        let first = sub.responses.message().await.unwrap().unwrap();
        assert!(first.events.iter().any(is_snapshot_end));
        let second = sub.responses.message().await.unwrap().unwrap();
        server.shutdown().await.unwrap();
        second.events.len()
    }
    // One write per second for the one subscriber: the second message holds about a
    // second of BTC trades (~125 at 5,000 events/s); without a budget, one or two.
    let budgeted = second_message_events(1).await;
    let unbudgeted = second_message_events(0).await;
    assert!(
        budgeted >= 30,
        "with a budget: {budgeted} events in the second message"
    );
    assert!(
        unbudgeted < 30,
        "without a budget: {unbudgeted} events in the second message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_budget_caps_a_lone_subscribers_messages_at_the_budget() {
    // One write a second, so the second message would hold a second of every instrument's
    // trades (tens of KiB at 5,000 events/s) but for the cap: `max_batch_bytes` (64 KiB)
    // without a budget, the budget itself for a lone subscriber.
    async fn second_message_bytes(budget: usize) -> usize {
        let server = server(|f| {
            f.fanout.write_budget_per_s = 1;
            f.fanout.write_budget_max_per_s = 0;
            f.fanout.batch_budget_bytes = budget;
        })
        .await;
        let mut c = client(&server).await;
        let mut sub = Sub::open(&mut c).await;
        sub.subscribe(&instrument_names(), pb::Channel::Trades, 0)
            .await;
        let first = sub.responses.message().await.unwrap().unwrap();
        assert!(first.events.iter().any(is_snapshot_end));
        let second = sub.responses.message().await.unwrap().unwrap();
        server.shutdown().await.unwrap();
        prost::Message::encoded_len(&second)
    }
    let capped = second_message_bytes(4096).await;
    let uncapped = second_message_bytes(0).await;
    // A drain stops once the batch reaches the cap: at most one queue entry past it, and
    // an entry holds one engine batch's trades of every instrument (the subscriber takes
    // them all, so they come combined): a few hundred bytes at this rate.
    assert!(
        (1..2 * 4096).contains(&capped),
        "with a 4 KiB budget: {capped} bytes"
    );
    assert!(uncapped > 4 * 4096, "without a budget: {uncapped} bytes");
}
