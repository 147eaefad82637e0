//! The ingest service over a real socket: published events reach subscribers through the
//! engine exactly, and bad publishes get precise errors without disturbing anything.

mod common;
#[path = "scrape/mod.rs"]
mod scrape;
#[path = "common/stalled.rs"]
mod stalled;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raven_book::{BookFollower, OrderBook};
use raven_model::{
    BookDelta, EventBody, LevelChange, Price, Qty, Sequence, Side, SnapshotKind, StatusKind,
    UnixNanos,
};
use raven_proto::convert::body_from_pb;
use raven_proto::pb::{
    self, history_client::HistoryClient, ingest_client::IngestClient, market_client::MarketClient,
    stream_request::Request as Req,
};
use raven_server::clock::Clock;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

fn level(price: i64, qty: u64) -> pb::Level {
    pb::Level {
        price,
        qty,
        qty_hi: 0,
    }
}

fn event(instrument: &str, body: pb::feed_event::Body) -> pb::FeedEvent {
    pb::FeedEvent {
        instrument: instrument.into(),
        exchange_time: 1_700_000_000_000_000_000,
        receive_time: 0,
        venue_seq: 0,
        body: Some(body),
    }
}

async fn publish(
    client: &mut IngestClient<Channel>,
    requests: Vec<Vec<pb::FeedEvent>>,
) -> Result<u64, tonic::Status> {
    let requests = requests
        .into_iter()
        .map(|events| pb::PublishRequest { events });
    client
        .publish(tokio_stream::iter(requests))
        .await
        .map(|r| r.into_inner().accepted)
}

/// A stream subscribed to `instrument` on `channels`, and the sender that keeps its
/// requests open.
async fn subscribe(
    market: &mut MarketClient<Channel>,
    instrument: &str,
    channels: &[pb::Channel],
) -> (
    tokio::sync::mpsc::Sender<pb::StreamRequest>,
    tonic::Streaming<pb::StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for &channel in channels {
        let subscribe = pb::Subscribe {
            instruments: vec![instrument.into()],
            channel: channel as i32,
            depth: 0,
            start: 0,
        };
        tx.send(pb::StreamRequest {
            request: Some(Req::Subscribe(subscribe)),
        })
        .await
        .unwrap();
    }
    let stream = market
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_reach_subscribers_exactly() {
    let server = common::server(|f| f.sim.rate = 100).await;
    let url = format!("http://{}", server.local_addr());
    let mut ingest = IngestClient::connect(url.clone()).await.unwrap();
    let mut market = MarketClient::connect(url).await.unwrap();

    use pb::feed_event::Body;
    let snapshot = pb::BookSnapshot {
        bids: vec![level(100, 5), level(99, 7)],
        asks: vec![level(101, 3)],
        resync: false,
        checkpoint: false,
    };
    assert_eq!(
        publish(
            &mut ingest,
            vec![vec![event("TEST:ABC", Body::Snapshot(snapshot))]]
        )
        .await
        .unwrap(),
        1
    );
    let listed = market
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let test = listed
        .instruments
        .iter()
        .find(|i| i.name == "TEST:ABC")
        .expect("published instrument listed");
    assert_eq!(
        (test.venue.as_str(), test.symbol.as_str(), test.tick_size),
        ("TEST", "ABC", 0)
    );

    let (_requests, mut stream) = subscribe(
        &mut market,
        "TEST:ABC",
        &[pb::Channel::Book, pb::Channel::Trades],
    )
    .await;
    // Both subscriptions are live once their SnapshotEnd markers arrive; publishing
    // before that would race them. What came first (the book snapshot) is kept.
    let mut pending: Vec<pb::Event> = Vec::new();
    let mut markers = 0;
    while markers < 2 {
        let batch = tokio::time::timeout(WAIT, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for e in batch.events {
            if matches!(e.body, Some(pb::event::Body::SnapshotEnd(_))) {
                markers += 1;
            }
            pending.push(e);
        }
    }

    let deltas = [
        pb::BookDelta {
            bids: vec![level(100, 0), level(98, 2)],
            asks: vec![level(102, 4)],
        },
        pb::BookDelta {
            bids: vec![],
            asks: vec![level(101, 1)],
        },
        // Crosses the book: accepted by ingest, refused by the engine as a status event.
        pb::BookDelta {
            bids: vec![level(105, 1)],
            asks: vec![],
        },
    ];
    let trade = pb::Trade {
        price: 101,
        qty: 2,
        qty_hi: 0,
        aggressor: pb::Aggressor::Buy as i32,
        trade_id: "x-1".into(),
    };
    let mut requests: Vec<Vec<pb::FeedEvent>> = deltas
        .iter()
        .map(|d| vec![event("TEST:ABC", Body::Delta(d.clone()))])
        .collect();
    requests.insert(2, vec![event("TEST:ABC", Body::Trade(trade))]);
    assert_eq!(publish(&mut ingest, requests).await.unwrap(), 4);

    // The book a client builds equals the published snapshot with the two valid deltas.
    let mut expected = OrderBook::new();
    let lvl = |p: i64, q: i128| raven_model::Level {
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    let snap = raven_model::BookSnapshot {
        bids: vec![lvl(100, 5), lvl(99, 7)],
        asks: vec![lvl(101, 3)],
        kind: SnapshotKind::Initial,
    };
    expected.apply_snapshot(Sequence(1), &snap).unwrap();
    let change = |side, p, q| LevelChange {
        side,
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    let d1 = BookDelta {
        changes: vec![
            change(Side::Bid, 100, 0),
            change(Side::Bid, 98, 2),
            change(Side::Ask, 102, 4),
        ],
    };
    let d2 = BookDelta {
        changes: vec![change(Side::Ask, 101, 1)],
    };
    expected.apply_delta(Sequence(2), &d1).unwrap();
    expected.apply_delta(Sequence(3), &d2).unwrap();

    let mut book = BookFollower::new();
    let (mut trade_seen, mut rejected) = (false, false);
    while !(trade_seen && rejected) {
        let events = if pending.is_empty() {
            tokio::time::timeout(WAIT, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .events
        } else {
            std::mem::take(&mut pending)
        };
        for e in events {
            let Some(body) = body_from_pb(&e).unwrap() else {
                continue;
            };
            // Every book-channel event, the status included, in sequence.
            book.apply(e.sequence, &body).unwrap();
            match body {
                EventBody::Snapshot(_) | EventBody::Delta(_) => {}
                EventBody::Trade(t) => {
                    assert_eq!(
                        (t.price, t.qty, t.trade_id.as_str()),
                        (Price::from_units(101), Qty::from_units(2), "x-1")
                    );
                    assert_eq!(t.aggressor, raven_model::Aggressor::Buy);
                    trade_seen = true;
                }
                EventBody::Status(s) => {
                    assert_eq!(s.kind, StatusKind::Rejected);
                    assert!(s.detail.contains("cross"), "{}", s.detail);
                    rejected = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(
        book.book().unwrap().snapshot(0, SnapshotKind::Initial),
        expected.snapshot(0, SnapshotKind::Initial)
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_get_precise_errors() {
    let server = common::server(|_| {}).await;
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    use pb::feed_event::Body;
    let delta = || {
        Body::Delta(pb::BookDelta {
            bids: vec![level(1, 1)],
            asks: vec![],
        })
    };
    let good = || event("TEST:OK", delta());
    let trade = |aggressor, qty_hi| {
        Body::Trade(pb::Trade {
            price: 1,
            qty: 1,
            qty_hi,
            aggressor,
            trade_id: String::new(),
        })
    };
    let cases: Vec<(Vec<Vec<pb::FeedEvent>>, Code, &str)> = vec![
        (
            vec![vec![event("SIM:BTC-USD", delta())]],
            Code::FailedPrecondition,
            "SIM:BTC-USD is fed by the Simulator feed",
        ),
        (
            vec![vec![event("nonsense", delta())]],
            Code::InvalidArgument,
            "invalid instrument name \"nonsense\"",
        ),
        (
            vec![vec![pb::FeedEvent {
                instrument: "TEST:OK".into(),
                exchange_time: 0,
                receive_time: 0,
                venue_seq: 0,
                body: None,
            }]],
            Code::InvalidArgument,
            "event body is missing",
        ),
        (
            vec![vec![event("TEST:OK", trade(7, 0))]],
            Code::InvalidArgument,
            "trade.aggressor has unknown value 7",
        ),
        (
            vec![vec![event("TEST:OK", trade(1, u64::MAX))]],
            Code::InvalidArgument,
            "quantity out of range",
        ),
        (
            vec![vec![good()], vec![good(), event("bad", delta())]],
            Code::InvalidArgument,
            "event 1 of the request (\"bad\") refused",
        ),
        (
            vec![(0..10_001).map(|_| good()).collect()],
            Code::ResourceExhausted,
            "at most 10000",
        ),
    ];
    for (requests, code, message) in cases {
        let status = publish(&mut ingest, requests).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(message),
            "{:?} lacks {message:?}",
            status.message()
        );
    }
    // The earlier request of a failed call stands; the refused one did not apply.
    let status = publish(
        &mut ingest,
        vec![vec![good()], vec![good(), event("bad", delta())]],
    )
    .await
    .unwrap_err();
    assert!(
        status.message().contains("1 events accepted before it"),
        "{}",
        status.message()
    );
    assert_eq!(
        publish(&mut ingest, vec![vec![good(), good()]])
            .await
            .unwrap(),
        2
    );
    server.shutdown().await.unwrap();
}

/// The names `ListInstruments` answers with, in its order.
async fn instrument_names(market: &mut MarketClient<tonic::transport::Channel>) -> Vec<String> {
    market
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .instruments
        .into_iter()
        .map(|i| i.name)
        .collect()
}

/// Regression (issue 10, finding 6): each refused request used to create the new
/// instruments it named before its bad event was found (1,000 refused requests, 1,000
/// empty instruments in `ListInstruments`). A refused request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_creates_no_instrument() {
    use pb::feed_event::Body;
    let server = common::server(|f| f.store.url = "off".into()).await;
    let addr = server.local_addr();
    let mut ingest = IngestClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut market = MarketClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let before = instrument_names(&mut market).await;
    let snapshot = || {
        Body::Snapshot(pb::BookSnapshot {
            bids: vec![],
            asks: vec![],
            checkpoint: false,
            resync: false,
        })
    };
    for n in 0..200 {
        // A new instrument, then an event the request is refused for: a book the
        // simulator owns, a malformed name, a missing body.
        let bad = match n % 3 {
            0 => event("SIM:BTC-USD", snapshot()),
            1 => event("not a name", snapshot()),
            _ => pb::FeedEvent {
                instrument: "TEST:ALSO-NEW".into(),
                exchange_time: 0,
                receive_time: 0,
                venue_seq: 0,
                body: None,
            },
        };
        let status = publish(
            &mut ingest,
            vec![vec![event(&format!("TEST:NEW-{n}"), snapshot()), bad]],
        )
        .await
        .unwrap_err();
        assert!(
            status.message().contains("event 1 of the request"),
            "{}",
            status.message()
        );
    }
    let after = instrument_names(&mut market).await;
    assert_eq!(after, before);
    // The same instrument in an accepted request is created once.
    assert_eq!(
        publish(
            &mut ingest,
            vec![vec![
                event("TEST:NEW-0", snapshot()),
                event("TEST:NEW-0", snapshot())
            ]],
        )
        .await
        .unwrap(),
        2
    );
    let after = instrument_names(&mut market).await;
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.contains(&"TEST:NEW-0".to_owned()));
    server.shutdown().await.unwrap();
}

/// A wall clock the test sets.
struct SetClock(AtomicU64);

impl Clock for SetClock {
    fn now(&self) -> UnixNanos {
        UnixNanos(self.0.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reads_time_from_the_clock_it_is_given() {
    // 2030-03-17: far from the machine's clock, so no time here can come from it.
    let t0 = 1_900_000_000_000_000_000;
    let clock = Arc::new(SetClock(AtomicU64::new(t0)));
    let server = common::start_with(&common::config(|f| f.sim.rate = 10), clock.clone()).await;
    let url = format!("http://{}", server.local_addr());
    let mut ingest = IngestClient::connect(url.clone()).await.unwrap();
    let mut market = MarketClient::connect(url.clone()).await.unwrap();
    let mut history = HistoryClient::connect(url).await.unwrap();

    use pb::feed_event::Body;
    let trade = |trade_id: &str| {
        let body = Body::Trade(pb::Trade {
            price: 1_000,
            qty: 2,
            qty_hi: 0,
            aggressor: pb::Aggressor::Buy as i32,
            trade_id: trade_id.into(),
        });
        event("TEST:CLOCK", body)
    };
    assert_eq!(
        publish(&mut ingest, vec![vec![trade("1")]]).await.unwrap(),
        1
    );
    let (tx, mut stream) = subscribe(&mut market, "TEST:CLOCK", &[pb::Channel::Trades]).await;
    let mut next = async || -> pb::Event {
        loop {
            let batch = tokio::time::timeout(WAIT, stream.message()).await;
            if let Some(e) = batch.unwrap().unwrap().unwrap().events.into_iter().next() {
                return e;
            }
        }
    };
    assert!(matches!(
        next().await.body,
        Some(pb::event::Body::SnapshotEnd(_))
    ));

    let t1 = t0 + 5_000_000_000;
    clock.0.store(t1, Ordering::SeqCst);
    assert_eq!(
        publish(&mut ingest, vec![vec![trade("2")]]).await.unwrap(),
        1
    );
    let traded = next().await;
    assert_eq!(
        (traded.receive_time, traded.publish_time),
        (t1, t1),
        "a published event without a receive time gets the clock's"
    );
    tx.send(pb::StreamRequest {
        request: Some(Req::Heartbeat(pb::Heartbeat { id: 9 })),
    })
    .await
    .unwrap();
    match next().await.body {
        Some(pb::event::Body::HeartbeatAck(ack)) => assert_eq!((ack.id, ack.server_time), (9, t1)),
        other => panic!("expected a heartbeat ack, got {other:?}"),
    }
    let future = history
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at: t1 + 1,
            depth: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(future.code(), Code::InvalidArgument);
    assert!(
        future.message().contains(&format!("server time {t1}")),
        "{}",
        future.message()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_queues_at_most_queue_bytes_then_learns_exactly_what_it_missed() {
    const QUEUE_BYTES: usize = 64 << 10;
    const REQUESTS: usize = 500;
    const PER_REQUEST: usize = 10;
    let server = common::server(|f| {
        f.sim.rate = 1;
        f.fanout.queue_bytes = QUEUE_BYTES;
    })
    .await;
    let mut ingest = IngestClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    use pb::feed_event::Body;
    // Trades of about 600 encoded bytes: the queue holds about a hundred of them, while
    // the event bound (32,768) is never reached.
    let trade = |n: usize| {
        event(
            "TEST:BIG",
            Body::Trade(pb::Trade {
                price: 100 + n as i64,
                qty: 1,
                qty_hi: 0,
                aggressor: pb::Aggressor::Sell as i32,
                trade_id: format!("{n:0>540}"),
            }),
        )
    };
    assert_eq!(publish(&mut ingest, vec![vec![trade(0)]]).await.unwrap(), 1);

    let mut market = MarketClient::new(stalled::small_windows(server.local_addr()).await);
    let (_requests, mut stream) = subscribe(&mut market, "TEST:BIG", &[pb::Channel::Trades]).await;
    let mut received: Vec<pb::Event> = Vec::new();
    while !received
        .iter()
        .any(|e| matches!(e.body, Some(pb::event::Body::SnapshotEnd(_))))
    {
        let batch = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
        received.extend(batch.unwrap().unwrap().events);
    }

    // The client stops reading; the rest is published in small requests (each a chunk
    // well under the bound).
    for r in 0..REQUESTS {
        let events = (0..PER_REQUEST)
            .map(|i| trade(1 + r * PER_REQUEST + i))
            .collect();
        assert_eq!(
            publish(&mut ingest, vec![events]).await.unwrap(),
            PER_REQUEST as u64
        );
    }
    let published = (REQUESTS * PER_REQUEST) as u64;
    let (_, deepest) = server.fanout().max_queued();
    assert!(
        server.fanout().lagged() > 0,
        "the stalled subscriber never overflowed"
    );
    assert!(
        deepest > QUEUE_BYTES / 2 && deepest <= QUEUE_BYTES,
        "{deepest} bytes queued against a bound of {QUEUE_BYTES}"
    );
    // Operators see the same: the client reads nothing, so its queue stays as it is.
    let metrics = scrape::scrape(&server).await;
    assert_eq!(
        metrics["raven_subscriber_queue_max_bytes"], deepest as f64,
        "{metrics:?}"
    );
    let (status, stats) = scrape::get(server.http_addr().unwrap(), "/api/v1/stats")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let streams = stats["subscribers"]["streams"].as_array().unwrap();
    assert!(
        streams.iter().any(|s| s["queued_bytes"] == deepest),
        "{streams:?}"
    );

    // Reading again: every trade arrives in order or is counted in a gap report, exactly.
    // Trade 0 took sequence 1 before the subscription.
    let (mut trades, mut missed, mut next) = (0u64, 0u64, 2);
    let mut pending_gap = 0;
    while trades + missed < published {
        for e in received.drain(..) {
            match body_from_pb(&e).unwrap() {
                Some(EventBody::Trade(t)) => {
                    assert_eq!(e.sequence, next + pending_gap, "{t:?}");
                    let n: usize = t.trade_id.parse().unwrap();
                    assert_eq!(t.price, Price::from_units(100 + n as i64));
                    next = e.sequence + 1;
                    pending_gap = 0;
                    trades += 1;
                }
                Some(EventBody::Status(s)) => {
                    assert_eq!(
                        (s.kind, s.channel),
                        (StatusKind::Gap, raven_model::Channel::Trades)
                    );
                    pending_gap += s.missed;
                    missed += s.missed;
                }
                _ => {}
            }
        }
        if trades + missed < published {
            let batch = tokio::time::timeout(WAIT, stream.message()).await.unwrap();
            received.extend(batch.unwrap().unwrap().events);
        }
    }
    assert_eq!(trades + missed, published);
    assert!(missed > 0 && trades > 0, "{trades} trades, {missed} missed");
    assert_eq!(server.fanout().max_queued(), (0, 0));
    server.shutdown().await.unwrap();
}
