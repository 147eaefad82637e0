//! `raven.v1.History` over real sockets, against a real server recording to SQLite:
//! history equals what live subscribers received, book-at-time equals the live book at
//! that sequence, replay yields the identical sequence, bad queries get precise errors.

#[path = "common/collect.rs"]
mod collect;
mod common;
#[path = "common/live.rs"]
mod live;
#[path = "common/recorded.rs"]
mod recorded;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_select::concat::concat_batches;

use prost::Message;
use raven_arrow::{Table, TableBuilder};
use raven_model::{EventBody, SnapshotKind};
use raven_proto::pb::history_client::HistoryClient;
use raven_proto::pb::ingest_client::IngestClient;
use raven_proto::pb::market_client::MarketClient;
use raven_proto::pb::stream_request::Request as Req;
use raven_proto::{convert, pb};
use raven_server::app::RunningServer;
use recorded::wait_recorded;
use tonic::Code;
use tonic::transport::Channel;

async fn history(server: &RunningServer) -> HistoryClient<Channel> {
    HistoryClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap()
}

fn request(instruments: &[&str], channels: &[pb::Channel]) -> pb::HistoryRequest {
    pb::HistoryRequest {
        instruments: instruments.iter().map(|s| (*s).to_owned()).collect(),
        channels: channels.iter().map(|&c| c as i32).collect(),
        from: 0,
        to: 0,
        limit: 0,
    }
}

/// Every event of a history (or replay) stream, and the raw bytes of its messages.
async fn collect(mut stream: tonic::Streaming<pb::StreamResponse>) -> Vec<pb::Event> {
    let mut events = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        events.extend(message.events);
    }
    events
}

async fn query(server: &RunningServer, request: pb::HistoryRequest) -> Vec<pb::Event> {
    let stream = history(server)
        .await
        .query(request)
        .await
        .unwrap()
        .into_inner();
    collect(stream).await
}

/// Live events of one channel of BTC as a subscriber receives them, for `duration`.
async fn live(server: &RunningServer, channel: pb::Channel, duration: Duration) -> Vec<pb::Event> {
    collect::events_for(server.local_addr(), channel, duration).await
}

/// Waits until the store holds BTC `channel` events up to `sequence`.
async fn stored_up_to(
    server: &RunningServer,
    channel: pb::Channel,
    sequence: u64,
) -> Vec<pb::Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = query(server, request(&["SIM:BTC-USD"], &[channel])).await;
        if events.last().is_some_and(|e| e.sequence >= sequence) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "sequence {sequence} never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_exactly_what_live_subscribers_received() {
    let server = common::server(|f| f.sim.rate = 5000).await;
    let live_trades: Vec<pb::Event> = live(&server, pb::Channel::Trades, Duration::from_secs(1))
        .await
        .into_iter()
        .filter(|e| matches!(e.body, Some(pb::event::Body::Trade(_))))
        .collect();
    assert!(live_trades.len() > 50, "{} live trades", live_trades.len());
    let last = live_trades.last().unwrap().sequence;
    let stored = stored_up_to(&server, pb::Channel::Trades, last).await;
    // Contiguous from the first trade of the run.
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(e.instrument, "SIM:BTC-USD");
    }
    for trade in &live_trades {
        assert_eq!(&stored[trade.sequence as usize - 1], trade);
    }
    // The time range selects by publish time, [from, to).
    let (from, to) = (live_trades[10].publish_time, live_trades[20].publish_time);
    let window = query(
        &server,
        pb::HistoryRequest {
            from,
            to,
            ..request(&["SIM:BTC-USD"], &[pb::Channel::Trades])
        },
    )
    .await;
    let expected: Vec<&pb::Event> = stored
        .iter()
        .filter(|e| e.publish_time >= from && e.publish_time < to)
        .collect();
    assert_eq!(window.iter().collect::<Vec<_>>(), expected);
    assert!(!window.is_empty());
    // A limit cuts the stream.
    let limited = query(
        &server,
        pb::HistoryRequest {
            limit: 7,
            ..request(&["SIM:BTC-USD", "SIM:ETH-USD"], &[])
        },
    )
    .await;
    assert_eq!(limited.len(), 7);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_at_time_equals_the_live_book_at_that_sequence() {
    // A checkpoint snapshot every 50 book events: the rebuild starts from the nearest.
    let dir = common::scratch_dir("book-at");
    let db = dir.join("raven.db");
    let server = common::server(|f| {
        f.sim.rate = 5000;
        f.store.snapshot_every = 50;
        f.store.url = format!("sqlite:{}", db.display());
    })
    .await;
    wait_recorded(&server, 1_500).await;
    let mut market = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let live_book = market
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: "SIM:BTC-USD".into(),
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::event::Body::Snapshot(live_levels)) = &live_book.body else {
        panic!("{live_book:?}");
    };
    let sequence = live_book.sequence;
    let book_events = stored_up_to(&server, pb::Channel::Book, sequence).await;
    let at = book_events
        .iter()
        .find(|e| e.sequence == sequence)
        .unwrap()
        .publish_time;
    let mut client = history(&server).await;
    let rebuilt = client
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at,
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rebuilt.sequence, sequence);
    assert_eq!(rebuilt.publish_time, at);
    let Some(pb::event::Body::Snapshot(levels)) = &rebuilt.body else {
        panic!("{rebuilt:?}");
    };
    assert_eq!(levels.bids, live_levels.bids);
    assert_eq!(levels.asks, live_levels.asks);
    assert!(levels.bids.len() >= 20 && levels.asks.len() >= 20);
    // At a depth: the top levels of the same book.
    let top = client
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at,
            depth: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::event::Body::Snapshot(top)) = top.body else {
        panic!();
    };
    assert_eq!(top.bids, live_levels.bids[..5]);
    assert_eq!(top.asks, live_levels.asks[..5]);
    // Checkpoints were stored, and never show in a query's results.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let checkpoints: i64 = conn
        .query_row("SELECT count(*) FROM events WHERE channels = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(checkpoints > 5, "{checkpoints} checkpoints");
    let stored = query(&server, request(&["SIM:BTC-USD"], &[])).await;
    assert!(stored.iter().all(|e| !matches!(&e.body,
        Some(pb::event::Body::Snapshot(s)) if s.checkpoint)));
    // Before anything was recorded there is no book.
    let none = client
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at: 1,
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::NotFound);
    assert_eq!(
        none.message(),
        "no recorded book for SIM:BTC-USD at or before 1"
    );
    // Regression (issue 10, finding 7): an instant in the future was answered with the
    // last recorded book, labelled with that instant.
    let future = client
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at: u64::MAX / 2,
            depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), Code::InvalidArgument);
    assert!(
        future.message().starts_with(&format!(
            "at ({}) is in the future (server time ",
            u64::MAX / 2
        )),
        "{}",
        future.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_yields_the_identical_sequence_paced_by_speed() {
    let server = common::server(|f| f.sim.rate = 5000).await;
    wait_recorded(&server, 2_500).await;
    let stored = query(&server, request(&["SIM:BTC-USD"], &[])).await;
    let (from, to) = (
        stored[0].publish_time,
        stored[stored.len() / 2].publish_time,
    );
    let window = pb::HistoryRequest {
        from,
        to,
        ..request(&["SIM:BTC-USD"], &[])
    };
    let expected = query(&server, window.clone()).await;
    assert!(expected.len() > 100);
    let mut client = history(&server).await;
    for speed in [0.0, 4.0] {
        let begun = Instant::now();
        let stream = client
            .replay(pb::ReplayRequest {
                query: Some(window.clone()),
                speed,
            })
            .await
            .unwrap()
            .into_inner();
        let replayed = collect(stream).await;
        // Byte for byte: every event re-encodes to what the query sent.
        assert_eq!(replayed.len(), expected.len());
        for (a, b) in replayed.iter().zip(&expected) {
            assert_eq!(a.encode_to_vec(), b.encode_to_vec());
        }
        if speed > 0.0 {
            // Paced: it cannot finish before the recorded span divided by the speed.
            let span = Duration::from_nanos(expected.last().unwrap().publish_time - from);
            assert!(
                begun.elapsed() >= span.div_f64(speed),
                "{:?}",
                begun.elapsed()
            );
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_precise_errors() {
    let server = common::server(|_| {}).await;
    wait_recorded(&server, 200).await;
    let mut client = history(&server).await;
    let refused =
        |r: Result<tonic::Response<tonic::Streaming<pb::StreamResponse>>, tonic::Status>| match r {
            Ok(_) => panic!("accepted"),
            Err(e) => (e.code(), e.message().to_owned()),
        };
    let base = request(&["SIM:BTC-USD"], &[pb::Channel::Trades]);
    let cases: Vec<(pb::HistoryRequest, Code, &str)> = vec![
        (
            pb::HistoryRequest {
                from: 10,
                to: 5,
                ..base.clone()
            },
            Code::InvalidArgument,
            "from (10) is after to (5)",
        ),
        (
            request(&[], &[]),
            Code::InvalidArgument,
            "the query names no instruments",
        ),
        (
            request(&["SIM:NOPE"], &[]),
            Code::NotFound,
            "no recorded events for instrument \"SIM:NOPE\"",
        ),
        (
            pb::HistoryRequest {
                limit: 2_000_000_000,
                ..base.clone()
            },
            Code::InvalidArgument,
            "limit 2000000000 is too large; use 1..=1000000000, or 0 for no limit",
        ),
        (
            pb::HistoryRequest {
                channels: vec![0],
                ..base.clone()
            },
            Code::InvalidArgument,
            "channel is required: CHANNEL_BOOK, CHANNEL_BBO, CHANNEL_TRADES or CHANNEL_CANDLES",
        ),
    ];
    for (req, code, message) in cases {
        assert_eq!(refused(client.query(req).await), (code, message.to_owned()));
    }
    let malformed = refused(client.query(request(&["no-colon"], &[])).await);
    assert_eq!(malformed.0, Code::InvalidArgument);
    for speed in [-1.0, f64::NAN, 1e9] {
        let r = client
            .replay(pb::ReplayRequest {
                query: Some(base.clone()),
                speed,
            })
            .await;
        assert_eq!(refused(r).0, Code::InvalidArgument, "speed {speed}");
    }
    assert_eq!(
        refused(
            client
                .replay(pb::ReplayRequest {
                    query: None,
                    speed: 1.0
                })
                .await
        ),
        (Code::InvalidArgument, "the replay has no query".to_owned())
    );
    // The server is unharmed: a good query still answers.
    assert!(!query(&server, base).await.is_empty());
    server.shutdown().await.unwrap();

    let off = common::server(|f| f.store.url = "off".into()).await;
    let mut client = history(&off).await;
    let e = client
        .query(request(&["SIM:BTC-USD"], &[]))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition);
    off.shutdown().await.unwrap();
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Opens a stream, sends `subscribes`, and reads every event for `duration`.
async fn stream_events(
    server: &RunningServer,
    subscribes: Vec<pb::Subscribe>,
    duration: Duration,
) -> Result<Vec<pb::Event>, tonic::Status> {
    let mut client = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for s in subscribes {
        tx.send(pb::StreamRequest {
            request: Some(Req::Subscribe(s)),
        })
        .await
        .unwrap();
    }
    let mut stream = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut events = Vec::new();
    let end = tokio::time::Instant::now() + duration;
    while let Ok(message) = tokio::time::timeout_at(end, stream.message()).await {
        match message? {
            Some(m) => events.extend(m.events),
            None => break,
        }
    }
    Ok(events)
}

fn subscribe(channel: pb::Channel, depth: u32, start: u64) -> pb::Subscribe {
    pb::Subscribe {
        instruments: vec!["SIM:BTC-USD".into()],
        channel: channel as i32,
        depth,
        start,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_a_start_gets_history_then_live_with_no_gap() {
    // Checkpoints every 50 book events: the book at the start is rebuilt from one.
    let dir = common::scratch_dir("start");
    let db = dir.join("raven.db");
    let server = common::server(|f| {
        f.sim.rate = 20_000;
        f.store.snapshot_every = 50;
        f.store.url = format!("sqlite:{}", db.display());
    })
    .await;
    // 0.8 s of events at 20,000/s.
    wait_recorded(&server, 16_000).await;
    let start = now_ns() - 400_000_000;
    let events = stream_events(
        &server,
        vec![
            subscribe(pb::Channel::Trades, 0, start),
            subscribe(pb::Channel::Book, 0, start),
        ],
        Duration::from_millis(1200),
    )
    .await
    .unwrap();
    use pb::event::Body;
    for channel in [pb::Channel::Trades, pb::Channel::Book] {
        let mine: Vec<&pb::Event> = events
            .iter()
            .filter(|e| e.channel == channel as i32)
            .collect();
        let end = mine
            .iter()
            .position(|e| matches!(e.body, Some(Body::HistoryEnd(_))))
            .unwrap_or_else(|| panic!("{channel:?}: no HistoryEnd"));
        let (history, rest) = mine.split_at(end);
        let marker = rest[0];
        assert!(
            history.len() > 100,
            "{channel:?}: {} recorded",
            history.len()
        );
        // The live part: its SnapshotEnd marks the same sequence, then live events.
        assert!(
            matches!(rest[1].body, Some(Body::SnapshotEnd(_))),
            "{:?}",
            rest[1]
        );
        assert_eq!(rest[1].sequence, marker.sequence);
        let live = &rest[2..];
        assert!(live.len() > 100, "{channel:?}: {} live", live.len());
        if channel == pb::Channel::Book {
            // The book as it was at the start, then every change, no checkpoint among
            // them.
            assert!(history[0].publish_time <= start);
            assert!(history[1].publish_time > start);
            assert!(
                history[1..]
                    .iter()
                    .all(|e| !matches!(e.body, Some(Body::Snapshot(_))))
            );
            // The same book as every stored book event from the run's first snapshot up
            // to that sequence gives.
            let stored = query(&server, request(&["SIM:BTC-USD"], &[channel])).await;
            let mut follower = raven_book::BookFollower::new();
            for e in stored
                .iter()
                .take_while(|e| e.sequence <= history[0].sequence)
            {
                if let Some(body) = convert::body_from_pb(e).unwrap() {
                    follower.apply(e.sequence, &body).unwrap();
                }
            }
            let book = follower.book().unwrap();
            let Some(EventBody::Snapshot(first)) = convert::body_from_pb(history[0]).unwrap()
            else {
                panic!("{:?}", history[0]);
            };
            let expected = book.snapshot(0, SnapshotKind::Initial);
            assert_eq!(book.sequence().0, history[0].sequence);
            assert_eq!((first.bids, first.asks), (expected.bids, expected.asks));
        } else {
            assert!(history.iter().all(|e| e.publish_time >= start));
        }
        assert_eq!(history.last().unwrap().sequence, marker.sequence);
        // History and live together: every sequence once, none skipped.
        let sequences: Vec<u64> = history.iter().chain(live).map(|e| e.sequence).collect();
        for pair in sequences.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "{channel:?}: {} then {}",
                pair[0],
                pair[1]
            );
        }
    }
    // The book is rebuilt from a checkpoint, not from the run's start: with every block
    // stored before the last BTC checkpoint at or before a new start made unreadable, a
    // subscription from that start still gets the book as it was, then every change.
    // Read from the run's start, the first such block would fail it.
    let start = now_ns() - 200_000_000;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let spoiled = conn
        .execute(
            "UPDATE events SET bytes = x'ff' WHERE position < \
             (SELECT max(position) FROM events WHERE channels = 1 AND instrument = ?2 \
              AND publish_time <= ?1)",
            rusqlite::params![
                start as i64,
                conn.query_row(
                    "SELECT id FROM instruments WHERE name = 'SIM:BTC-USD'",
                    [],
                    |r| r.get::<_, i64>(0)
                )
                .unwrap()
            ],
        )
        .unwrap();
    assert!(spoiled > 10, "{spoiled} blocks spoiled");
    drop(conn);
    let events = stream_events(
        &server,
        vec![subscribe(pb::Channel::Book, 0, start)],
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    assert!(
        matches!(events[0].body, Some(Body::Snapshot(_))) && events[0].publish_time <= start,
        "{:?}",
        events[0]
    );
    let end = events
        .iter()
        .position(|e| matches!(e.body, Some(Body::HistoryEnd(_))))
        .unwrap();
    assert!(end > 10, "{end} recorded");
    for pair in events[..end].windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_with_a_start_are_refused_precisely_when_they_cannot_be_served() {
    let server = common::server(|_| {}).await;
    let future = now_ns() + 3_600_000_000_000;
    let e = stream_events(
        &server,
        vec![subscribe(pb::Channel::Trades, 0, future)],
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .starts_with(&format!("start ({future}) is in the future")),
        "{}",
        e.message()
    );
    let e = stream_events(
        &server,
        vec![subscribe(pb::Channel::Book, 5, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "a book subscription with a start time is full depth: use depth 0"
        )
    );
    server.shutdown().await.unwrap();

    let off = common::server(|f| f.store.url = "off".into()).await;
    let e = stream_events(
        &off,
        vec![subscribe(pb::Channel::Trades, 0, 1)],
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    off.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_a_start_is_bounded_in_bytes_over_all_its_instruments() {
    let server = common::server(|f| {
        f.sim.rate = 20_000;
        f.server.start_backlog_mb = 1;
    })
    .await;
    let start = now_ns();
    // 2 s of events at 20,000/s.
    wait_recorded(&server, 40_000).await;
    let names = raven_server::feed::sim::instrument_names();
    let stored = |names: &[&str]| {
        let request = pb::HistoryRequest {
            from: start,
            ..request(names, &[pb::Channel::Book])
        };
        async {
            query(&server, request)
                .await
                .iter()
                .map(Message::encoded_len)
                .sum::<usize>()
        }
    };
    // What the test relies on: the eight books together pass 1 MiB, one of them does not.
    let (all, one) = (stored(&names).await, stored(&names[..1]).await);
    assert!(
        all > 1_200_000 && one < 800_000,
        "all {all} bytes, one {one}"
    );

    let book = |instruments: &[&str]| pb::Subscribe {
        instruments: instruments.iter().map(|n| n.to_string()).collect(),
        ..subscribe(pb::Channel::Book, 0, start)
    };
    let refused = match stream_events(&server, vec![book(&names)], Duration::from_secs(5)).await {
        Err(status) => status,
        Ok(events) => panic!("not refused: {} events came", events.len()),
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("server.start_backlog_mb"),
        "{}",
        refused.message()
    );
    // One book's history fits: it comes, then the marker, then live events.
    let events = stream_events(&server, vec![book(&names[..1])], Duration::from_secs(1))
        .await
        .unwrap();
    let end = events
        .iter()
        .position(|e| matches!(e.body, Some(pb::event::Body::HistoryEnd(_))))
        .expect("HistoryEnd");
    assert!(end > 100, "{end} recorded events before the marker");
    assert!(events.len() > end + 1, "no live events after the marker");
    server.shutdown().await.unwrap();
}

/// Every Arrow batch of a `QueryArrow` stream, decoded, by channel.
async fn query_arrow(
    client: &mut HistoryClient<Channel>,
    request: pb::HistoryRequest,
) -> Result<BTreeMap<i32, Vec<RecordBatch>>, tonic::Status> {
    let mut stream = client.query_arrow(request).await?.into_inner();
    let mut tables: BTreeMap<i32, Vec<RecordBatch>> = BTreeMap::new();
    while let Some(message) = stream.message().await? {
        let reader = StreamReader::try_new(&message.ipc[..], None).unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1, "one record batch per message");
        tables.entry(message.channel).or_default().extend(batches);
    }
    Ok(tables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_arrow_is_the_query_as_each_channels_table() {
    let server = common::server(|f| f.sim.rate = 5000).await;
    // Every channel has events once a candle has closed (a bar closes after its second).
    wait_recorded(&server, 1000).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !query(&server, request(&["SIM:BTC-USD"], &[pb::Channel::Candles]))
        .await
        .iter()
        .any(|e| matches!(e.body, Some(pb::event::Body::Candle(_))))
    {
        assert!(Instant::now() < deadline, "no candle recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A range ending now, so that both calls read the same events; they are all stored
    // once a thousand more are.
    let recorded = wait_recorded(&server, 1).await;
    let both = request_to(&["SIM:BTC-USD", "SIM:ETH-USD"], &[]);
    wait_recorded(&server, recorded + 1000).await;
    let events = query(&server, both.clone()).await;
    let mut client = history(&server).await;
    let tables = query_arrow(&mut client, both).await.unwrap();
    for table in Table::ALL {
        let mut expected = TableBuilder::new(table);
        for e in events.iter().filter(|e| e.channel == table.channel()) {
            expected.push(e).unwrap();
        }
        let expected = expected.finish();
        let got = &tables[&table.channel()];
        let got = concat_batches(&table.schema(), got).unwrap();
        assert!(expected.num_rows() > 0, "{table:?}");
        assert_eq!(got, expected, "{table:?}");
    }
    // One channel asked: only its table comes.
    let trades = query_arrow(
        &mut client,
        request_to(&["SIM:BTC-USD"], &[pb::Channel::Trades]),
    )
    .await
    .unwrap();
    assert_eq!(
        trades.keys().copied().collect::<Vec<_>>(),
        vec![pb::Channel::Trades as i32]
    );

    // Bad input: the query's own errors, and a quantity a decimal128(38, 9) cannot hold,
    // named by its event.
    let unknown = query_arrow(&mut client, request(&["SIM:NOPE"], &[]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let huge = 10u128.pow(38);
    let accepted = ingest
        .publish(tokio_stream::iter([pb::PublishRequest {
            events: vec![pb::FeedEvent {
                instrument: "TEST:HUGE".into(),
                exchange_time: 1,
                body: Some(pb::feed_event::Body::Trade(pb::Trade {
                    price: 1,
                    qty: huge as u64,
                    qty_hi: (huge >> 64) as u64,
                    aggressor: pb::Aggressor::Buy as i32,
                    trade_id: "t".into(),
                })),
                ..Default::default()
            }],
        }]))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match query_arrow(&mut client, request(&["TEST:HUGE"], &[])).await {
            Err(e) if e.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(refused.code(), Code::OutOfRange);
    assert_eq!(
        refused.message(),
        "TEST:HUGE sequence 1: quantity of 100000000000000000000000000000000000000 units (10⁻⁹) is beyond decimal128(38, 9), which holds less than 10³⁸"
    );
    server.shutdown().await.unwrap();
}

fn request_to(instruments: &[&str], channels: &[pb::Channel]) -> pb::HistoryRequest {
    pb::HistoryRequest {
        to: now_ns(),
        ..request(instruments, channels)
    }
}
