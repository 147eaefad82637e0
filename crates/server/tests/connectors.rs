//! The exchange connectors against the mock exchange (`raven-mockex`): the real server on
//! a loopback port, its Binance feed pointed at a venue on another, read back through
//! `GetSnapshot` and live subscriptions. Every scenario ends with the published books
//! equal to the venue's truth at its update id, and asserts what the venue saw.

mod common;
mod scrape;

use std::collections::HashMap;
use std::time::Duration;

use raven_mockex::{Message, MockConfig, MockExchange, SnapshotFault, TrueSide};
use raven_model::{EventBody, Price, Qty, StatusKind};
use raven_proto::convert::body_from_pb;
use raven_proto::pb::{self, market_client::MarketClient, stream_request::Request as Req};
use raven_server::app::RunningServer;
use raven_server::feed::exchange::FeedSection;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// How long a condition may take before the test fails: only a failure waits it out.
/// 750 books syncing while the machine compiles beside the tests took over 15 s twice.
const WAIT: Duration = Duration::from_secs(45);

fn feed(mock: &MockExchange, venue: &str, symbols: &[&str]) -> FeedSection {
    FeedSection {
        venue: venue.into(),
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        ws_url: Some(mock.ws_url()),
        rest_url: Some(mock.rest_url()),
        depth_limit: Some(1000),
        streams_per_connection: None,
        stale_after_ms: Some(60_000),
        liveness_ms: Some(5_000),
        ping_every_ms: Some(1_000),
        rotate_after_secs: None,
        rest_weight_per_minute: None,
    }
}

async fn serve(feeds: Vec<FeedSection>) -> RunningServer {
    common::server(|f| {
        f.store.url = "off".into();
        f.feeds = feeds;
    })
    .await
}

async fn client(server: &RunningServer) -> MarketClient<Channel> {
    MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap()
}

type Side = Vec<(Price, Qty)>;

fn parse_side(side: &TrueSide) -> Side {
    side.iter()
        .map(|(p, q)| (p.parse().unwrap(), q.parse().unwrap()))
        .collect()
}

/// The published book of `name`, if it has one.
async fn published(c: &mut MarketClient<Channel>, name: &str) -> Option<(Side, Side)> {
    let event = c
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: name.into(),
            depth: 0,
        })
        .await
        .ok()?
        .into_inner();
    match body_from_pb(&event).ok()?? {
        EventBody::Snapshot(s) if !s.bids.is_empty() || !s.asks.is_empty() => Some((
            s.bids.iter().map(|l| (l.price, l.qty)).collect(),
            s.asks.iter().map(|l| (l.price, l.qty)).collect(),
        )),
        _ => None,
    }
}

/// `GetSnapshot` of `name` equals the venue's book at the venue id it carries.
async fn assert_snapshot_true(c: &mut MarketClient<Channel>, mock: &MockExchange, name: &str) {
    let event = c
        .get_snapshot(pb::GetSnapshotRequest {
            instrument: name.into(),
            depth: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let Ok(Some(EventBody::Snapshot(s))) = body_from_pb(&event) else {
        panic!("{name}: not a snapshot")
    };
    let symbol = name.split_once(':').unwrap().1;
    let (bids, asks) = mock
        .truth_at(symbol, event.venue_seq)
        .unwrap_or_else(|| panic!("{name}: no venue book at {}", event.venue_seq));
    let book: (Side, Side) = (
        s.bids.iter().map(|l| (l.price, l.qty)).collect(),
        s.asks.iter().map(|l| (l.price, l.qty)).collect(),
    );
    assert_eq!(
        book,
        (parse_side(&bids), parse_side(&asks)),
        "{name} at {}",
        event.venue_seq
    );
}

/// Stops `symbols` at the venue, then waits until each published book equals the truth
/// at the venue's last update id.
async fn settle(c: &mut MarketClient<Channel>, mock: &MockExchange, venue: &str, symbols: &[&str]) {
    for s in symbols {
        mock.quiet(s, Duration::from_secs(3));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for s in symbols {
        let id = mock.last_id(s);
        let (bids, asks) = mock.truth_at(s, id).expect("the truth at the last id");
        let truth = (parse_side(&bids), parse_side(&asks));
        let name = format!("{venue}:{s}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let book = published(c, &name).await;
            if book.as_ref() == Some(&truth) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never equalled the venue's book at {id}: {book:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn wait_synced(c: &mut MarketClient<Channel>, names: &[String]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for name in names {
        while published(c, name).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} never synced"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every event of `names` on `channel`, collected in the background.
struct Watch {
    events: mpsc::UnboundedReceiver<pb::Event>,
    _requests: mpsc::Sender<pb::StreamRequest>,
    seen: Vec<pb::Event>,
}

/// The tick sizes of `names` as `ListInstruments` gives them, once all are known (the
/// feeds read them beside syncing books).
async fn tick_sizes(c: &mut MarketClient<Channel>, names: &[String]) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = c
            .list_instruments(pb::ListInstrumentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .instruments;
        let ticks: Vec<i64> = names
            .iter()
            .map(|n| {
                listed
                    .iter()
                    .find(|i| &i.name == n)
                    .map_or(0, |i| i.tick_size)
            })
            .collect();
        if ticks.iter().all(|&t| t != 0) || tokio::time::Instant::now() > deadline {
            return ticks;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn watch(server: &RunningServer, names: &[String], channel: pb::Channel) -> Watch {
    let mut c = client(server).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::StreamRequest {
        request: Some(Req::Subscribe(pb::Subscribe {
            instruments: names.to_vec(),
            channel: channel as i32,
            depth: 0,
            start: 0,
        })),
    })
    .await
    .unwrap();
    let mut stream = c
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let (out, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(batch)) = stream.message().await {
            for e in batch.events {
                if out.send(e).is_err() {
                    return;
                }
            }
        }
    });
    Watch {
        events,
        _requests: tx,
        seen: Vec::new(),
    }
}

impl Watch {
    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }

    /// Statuses seen so far, as (instrument, kind, missed).
    fn statuses(&mut self) -> Vec<(String, StatusKind, u64)> {
        self.drain();
        self.seen
            .iter()
            .filter_map(|e| match body_from_pb(e).ok()?? {
                EventBody::Status(s) => Some((e.instrument.clone(), s.kind, s.missed)),
                _ => None,
            })
            .collect()
    }

    /// Waits until a status of `kind` for `name` has been seen.
    async fn until(&mut self, name: &str, kind: StatusKind) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self
            .statuses()
            .iter()
            .any(|(n, k, _)| n == name && *k == kind)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind:?} for {name}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `name` has had a snapshot marked resync (its book rebuilt).
    async fn until_rebuilt(&mut self, name: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.drain();
            let rebuilt = self.seen.iter().any(|e| {
                e.instrument == name
                    && matches!(body_from_pb(e), Ok(Some(EventBody::Snapshot(s))) if s.kind == raven_model::SnapshotKind::Resync)
            });
            if rebuilt {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} was never rebuilt"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Applies every book event seen to a book per instrument and checks it against the
    /// venue's truth at the event's venue id: every published book was the venue's.
    /// Returns how many books were checked.
    fn assert_books_true(&mut self, mock: &MockExchange, venue: &str) -> usize {
        self.drain();
        let mut books: HashMap<String, (Side, Side)> = HashMap::new();
        let mut checked = 0;
        for e in &self.seen {
            let Ok(Some(body)) = body_from_pb(e) else {
                continue;
            };
            let book = books.entry(e.instrument.clone()).or_default();
            match body {
                EventBody::Snapshot(s) => {
                    book.0 = s.bids.iter().map(|l| (l.price, l.qty)).collect();
                    book.1 = s.asks.iter().map(|l| (l.price, l.qty)).collect();
                }
                EventBody::Delta(d) => {
                    for c in d.changes {
                        let side = match c.side {
                            raven_model::Side::Bid => &mut book.0,
                            raven_model::Side::Ask => &mut book.1,
                        };
                        side.retain(|(p, _)| *p != c.price);
                        if !c.qty.is_zero() {
                            side.push((c.price, c.qty));
                        }
                    }
                    book.0.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
                    book.1.sort_by_key(|(p, _)| *p);
                }
                _ => continue,
            }
            assert_ne!(
                e.venue_seq, 0,
                "a connector book event without the venue's id"
            );
            let symbol = e.instrument.strip_prefix(&format!("{venue}:")).unwrap();
            let (bids, asks) = mock
                .truth_at(symbol, e.venue_seq)
                .unwrap_or_else(|| panic!("{symbol}: no venue book at {}", e.venue_seq));
            assert_eq!(
                *book,
                (parse_side(&bids), parse_side(&asks)),
                "{} at venue id {}",
                e.instrument,
                e.venue_seq
            );
            checked += 1;
        }
        checked
    }

    /// Per-instrument sequences of book events are contiguous from the first one seen.
    fn assert_contiguous(&mut self) {
        self.drain();
        let mut last: HashMap<(String, i32), u64> = HashMap::new();
        for e in &self.seen {
            // Markers (the end of the subscribe snapshot) repeat the sequence they follow.
            if !matches!(body_from_pb(e), Ok(Some(_))) {
                continue;
            }
            let key = (e.instrument.clone(), e.channel);
            if let Some(prev) = last.get(&key) {
                assert_eq!(e.sequence, prev + 1, "{key:?}");
            }
            last.insert(key, e.sequence);
        }
    }
}

/// The venue (`config`), a server whose one feed `section` builds for it, a client, and
/// the instrument names, once every book has synced.
async fn synced(
    config: MockConfig,
    section: impl FnOnce(&MockExchange) -> FeedSection,
    venue: &str,
    symbols: &[&str],
) -> (
    MockExchange,
    RunningServer,
    MarketClient<Channel>,
    Vec<String>,
) {
    let mock = MockExchange::start(config).await.unwrap();
    let server = serve(vec![section(&mock)]).await;
    let mut c = client(&server).await;
    let names = names(venue, symbols);
    wait_synced(&mut c, &names).await;
    (mock, server, c, names)
}

/// [`synced`] on Binance spot with the default feed table.
async fn spot(
    symbols: &[&str],
) -> (
    MockExchange,
    RunningServer,
    MarketClient<Channel>,
    Vec<String>,
) {
    synced(
        MockConfig::spot(symbols),
        |m| feed(m, "binance", symbols),
        "BINANCE",
        symbols,
    )
    .await
}

fn names(venue: &str, symbols: &[&str]) -> Vec<String> {
    symbols.iter().map(|s| format!("{venue}:{s}")).collect()
}

#[tokio::test]
async fn binance_books_sync_and_equal_the_venue() {
    let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
    let (mock, server, mut c, _) = spot(&symbols).await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;

    // Tick sizes come from the venue's exchangeInfo.
    let listed = c
        .list_instruments(pb::ListInstrumentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .instruments;
    let btc = listed.iter().find(|i| i.name == "BINANCE:BTCUSDT").unwrap();
    assert_eq!(btc.tick_size, "0.01".parse::<Price>().unwrap().units());
    assert!(
        listed.iter().all(|i| !i.name.starts_with("SIM:")),
        "the simulator is off"
    );

    // A message of a symbol never subscribed, with two keys no decoder knows: skipped,
    // and counted as both.
    mock.send_raw(Message::text(
        r#"{"stream":"zzzusdt@aggTrade","data":{"e":"aggTrade","E":1,"s":"ZZZUSDT","a":1,"p":"1.0","q":"1.0","f":1,"l":1,"T":1,"m":true,"M":true,"new1":1,"new2":"x"}}"#,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = scrape::scrape(&server).await;
        if metrics[r#"raven_feed_unhandled_messages{feed="binance"}"#] > 0.0 {
            break metrics;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        metrics[r#"raven_feed_unhandled_messages{feed="binance"}"#],
        1.0
    );
    assert_eq!(metrics[r#"raven_feed_unknown_fields{feed="binance"}"#], 2.0);
    assert_eq!(metrics[r#"raven_feed_connects{feed="binance"}"#], 1.0);

    let stats = mock.stats();
    assert_eq!(stats.violations, Vec::<String>::new());
    assert_eq!(stats.connections, 1);
    assert_eq!((stats.subscribe_frames, stats.max_params), (1, 6));
    assert_eq!(stats.depth_requests, 3);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_dropped_diff_resyncs_only_its_instrument() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    mock.drop_depth("BTCUSDT", 1);
    w.until_rebuilt("BINANCE:BTCUSDT").await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    let statuses = w.statuses();
    let gaps: Vec<_> = statuses.iter().filter(|s| s.1 == StatusKind::Gap).collect();
    assert_eq!(gaps.len(), 1, "{statuses:?}");
    assert_eq!(gaps[0].0, "BINANCE:BTCUSDT");
    assert!(
        gaps[0].2 >= 1,
        "the gap counts the ids skipped: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s.0 == "BINANCE:BTCUSDT"),
        "ETHUSDT untouched: {statuses:?}"
    );
    w.assert_contiguous();
    assert_eq!(
        mock.stats().depth_requests,
        3,
        "one snapshot more, for BTCUSDT only"
    );
    // The feed's counters say the same as its status events.
    let metrics = scrape::scrape(&server).await;
    let count = |kind: StatusKind| statuses.iter().filter(|s| s.1 == kind).count() as f64;
    assert_eq!(
        metrics[r#"raven_feed_statuses{feed="binance",kind="gap"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"raven_feed_statuses{feed="binance",kind="resync"}"#],
        count(StatusKind::Resync)
    );
    assert_eq!(
        metrics[r#"raven_feed_missed{feed="binance"}"#],
        gaps[0].2 as f64
    );
    assert_eq!(
        metrics[r#"raven_feed_instruments_down{feed="binance"}"#],
        0.0
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn stale_snapshots_are_fetched_again_until_one_overlaps() {
    let symbols = ["BTCUSDT"];
    let mock = MockExchange::start(MockConfig::spot(&symbols))
        .await
        .unwrap();
    // The venue's very first book: older than anything the connection has buffered.
    mock.snapshot_faults([
        SnapshotFault::Stale(1_000_000),
        SnapshotFault::Stale(1_000_000),
        SnapshotFault::Stale(1_000_000),
    ]);
    let server = serve(vec![feed(&mock, "binance", &symbols)]).await;
    let mut c = client(&server).await;
    wait_synced(&mut c, &names("BINANCE", &symbols)).await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    let stats = mock.stats();
    assert_eq!((stats.depth_requests, stats.depth_served), (4, 4));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn rate_limited_snapshots_wait_for_retry_after() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let mock = MockExchange::start(MockConfig::spot(&symbols))
        .await
        .unwrap();
    mock.snapshot_faults([SnapshotFault::Fail(429, 1), SnapshotFault::Fail(418, 1)]);
    let server = serve(vec![feed(&mock, "binance", &symbols)]).await;
    let mut c = client(&server).await;
    wait_synced(&mut c, &names("BINANCE", &symbols)).await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    let stats = mock.stats();
    assert_eq!(stats.early_retries, 0, "{:?}", stats.violations);
    assert_eq!((stats.depth_requests, stats.depth_served), (4, 2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_abrupt_drop_is_feed_down_then_up_and_books_rebuilt() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.close_abruptly();
    for name in &names {
        w.until(name, StatusKind::FeedDown).await;
        w.until(name, StatusKind::FeedUp).await;
        w.until_rebuilt(name).await;
    }
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    assert_eq!(mock.stats().connections, 2);
    w.assert_contiguous();
    assert!(w.assert_books_true(&mock, "BINANCE") > 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_pings_on_an_idle_stream_are_all_answered() {
    let symbols = ["BTCUSDT"];
    let mut config = MockConfig::spot(&symbols);
    // Four pings a second: with our own, within the venue's five control frames.
    config.ping_every = Some(Duration::from_millis(250));
    config.pong_within = Duration::from_millis(300);
    let mock = MockExchange::start(config).await.unwrap();
    let server = serve(vec![feed(&mock, "binance", &symbols)]).await;
    let mut c = client(&server).await;
    wait_synced(&mut c, &names("BINANCE", &symbols)).await;
    mock.quiet("BTCUSDT", Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = mock.stats();
    assert_eq!(
        (stats.connections, stats.no_pong_closes),
        (1, 0),
        "{stats:?}"
    );
    assert!(stats.pings >= 12, "{stats:?}");
    assert!(
        stats.pongs + 1 >= stats.pings,
        "every ping answered: {stats:?}"
    );
    assert_eq!(stats.violations, Vec::<String>::new());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_silent_socket_is_declared_dead_and_replaced() {
    let symbols = ["BTCUSDT"];
    let mock = MockExchange::start(MockConfig::spot(&symbols))
        .await
        .unwrap();
    let mut section = feed(&mock, "binance", &symbols);
    section.liveness_ms = Some(500);
    section.ping_every_ms = Some(200);
    let server = serve(vec![section]).await;
    let mut c = client(&server).await;
    let names = names("BINANCE", &symbols);
    wait_synced(&mut c, &names).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    mock.silence(Duration::from_secs(5));
    w.until("BINANCE:BTCUSDT", StatusKind::FeedDown).await;
    w.until("BINANCE:BTCUSDT", StatusKind::FeedUp).await;
    w.until_rebuilt("BINANCE:BTCUSDT").await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    assert_eq!(mock.stats().connections, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn server_shutdown_rotates_make_before_break() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.server_shutdown();
    // The venue closes the old connection a second after announcing it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    assert_eq!(mock.stats().connections, 2);
    assert_eq!(w.statuses(), vec![], "no FeedDown, no gap, no resync");
    w.assert_contiguous();
    assert!(w.assert_books_true(&mock, "BINANCE") > 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_quiet_instrument_is_stale_without_a_reconnect() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let mock = MockExchange::start(MockConfig::spot(&symbols))
        .await
        .unwrap();
    let mut section = feed(&mock, "binance", &symbols);
    section.stale_after_ms = Some(500);
    let server = serve(vec![section]).await;
    let mut c = client(&server).await;
    let names = names("BINANCE", &symbols);
    wait_synced(&mut c, &names).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    mock.quiet("BTCUSDT", Duration::from_secs(2));
    w.until("BINANCE:BTCUSDT", StatusKind::Stale).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let statuses = w.statuses();
    assert_eq!(
        statuses,
        vec![("BINANCE:BTCUSDT".to_owned(), StatusKind::Stale, 0)]
    );
    assert_eq!(mock.stats().connections, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn usdm_books_follow_pu_across_public_and_market_connections() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = synced(
        MockConfig::usdm(&symbols),
        |m| feed(m, "binance-usdm", &symbols),
        "BINANCE_USDM",
        &symbols,
    )
    .await;
    let mut books = watch(&server, &names, pb::Channel::Book).await;
    let mut trades = watch(&server, &names, pb::Channel::Trades).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.drop_depth("ETHUSDT", 1);
    books.until_rebuilt("BINANCE_USDM:ETHUSDT").await;
    settle(&mut c, &mock, "BINANCE_USDM", &symbols).await;
    let statuses = books.statuses();
    assert!(
        statuses.contains(&("BINANCE_USDM:ETHUSDT".to_owned(), StatusKind::Gap, 0)),
        "a pu break is a gap of unknown size: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s.0 == "BINANCE_USDM:ETHUSDT"),
        "{statuses:?}"
    );
    trades.drain();
    assert!(
        trades
            .seen
            .iter()
            .any(|e| matches!(body_from_pb(e), Ok(Some(EventBody::Trade(_))))),
        "trades arrive over the /market connection"
    );
    let stats = mock.stats();
    assert_eq!(stats.violations, Vec::<String>::new());
    assert_eq!(
        stats.connections, 2,
        "one /public and one /market connection"
    );
    books.assert_contiguous();
    let checked = books.assert_books_true(&mock, "BINANCE_USDM");
    assert!(checked > 10, "{checked} books checked");
    trades.assert_contiguous();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_input_is_refused_and_never_breaks_a_book() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Ignored: not JSON, a stream nobody asked for, a binary frame, unknown fields.
    for raw in [
        Message::text("not json at all"),
        Message::text(r#"{"stream":"btcusdt@kline_1m","data":{"e":"kline"}}"#),
        Message::binary(vec![1u8, 2, 3]),
        Message::text(r#"{"result":null,"id":99,"extra":{"x":1}}"#),
    ] {
        mock.send_raw(raw);
    }
    // A book message that cannot be decoded is a lost message: refused, then resynced.
    mock.send_raw(Message::text(
        r#"{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[["0.-10000","1"]],"a":[]}}"#,
    ));
    w.until_rebuilt("BINANCE:BTCUSDT").await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    let statuses = w.statuses();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| s.1 == StatusKind::Rejected)
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["BINANCE:BTCUSDT"],
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s.0 == "BINANCE:BTCUSDT"),
        "{statuses:?}"
    );
    assert_eq!(
        mock.stats().connections,
        1,
        "nothing above needs a reconnect"
    );

    // Broken framing is a protocol error: the connection is replaced.
    let oversize = "x".repeat(5 << 20);
    mock.send_raw(Message::text(oversize));
    w.until("BINANCE:ETHUSDT", StatusKind::FeedDown).await;
    w.until_rebuilt("BINANCE:ETHUSDT").await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    assert_eq!(mock.stats().connections, 2);
    w.assert_contiguous();
    assert!(w.assert_books_true(&mock, "BINANCE") > 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn crossed_venue_data_is_refused_and_the_book_resynced() {
    let symbols = ["BTCUSDT", "ETHUSDT"];
    let (mock, server, mut c, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.phantom_cross("BTCUSDT");
    w.until("BINANCE:BTCUSDT", StatusKind::Rejected).await;
    w.until_rebuilt("BINANCE:BTCUSDT").await;
    settle(&mut c, &mock, "BINANCE", &symbols).await;
    let statuses = w.statuses();
    assert!(
        statuses.iter().all(|s| s.0 == "BINANCE:BTCUSDT"),
        "{statuses:?}"
    );
    w.assert_contiguous();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn trade_gaps_are_reported_and_repeats_never_published() {
    let symbols = ["BTCUSDT"];
    let (mock, server, _, names) = spot(&symbols).await;
    let mut w = watch(&server, &names, pb::Channel::Trades).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.duplicate("BTCUSDT", 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    mock.skip_trades("BTCUSDT", 5);
    w.until("BINANCE:BTCUSDT", StatusKind::Gap).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let statuses = w.statuses();
    assert_eq!(
        statuses,
        vec![("BINANCE:BTCUSDT".to_owned(), StatusKind::Gap, 5)]
    );
    let ids: Vec<u64> = w
        .seen
        .iter()
        .filter_map(|e| match body_from_pb(e).ok()?? {
            EventBody::Trade(t) => Some(t.trade_id.parse().unwrap()),
            _ => None,
        })
        .collect();
    assert!(ids.len() > 10, "{ids:?}");
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "no repeat, in order: {ids:?}"
    );
    let jumps: Vec<u64> = ids
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|&d| d != 1)
        .collect();
    assert_eq!(jumps, [6], "one jump, over the five skipped ids");
    w.assert_contiguous();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn fifteen_hundred_streams_subscribe_within_the_venue_rules() {
    let symbols: Vec<String> = (0..750).map(|i| format!("S{i:03}USDT")).collect();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut config = MockConfig::spot(&refs);
    config.tick = Duration::from_millis(100);
    let mock = MockExchange::start(config).await.unwrap();
    let mut section = feed(&mock, "binance", &refs);
    section.streams_per_connection = Some(1024);
    section.depth_limit = Some(100);
    section.rest_weight_per_minute = Some(6000);
    let server = serve(vec![section]).await;
    let mut c = client(&server).await;
    let all = names("BINANCE", &refs);
    wait_synced(&mut c, &all).await;
    settle(&mut c, &mock, "BINANCE", &refs[..3]).await;
    let stats = mock.stats();
    assert_eq!(
        stats.violations,
        Vec::<String>::new(),
        "5 control frames/s enforced"
    );
    assert_eq!(
        stats.connections, 2,
        "1,500 streams need two connections of at most 1,024"
    );
    assert_eq!((stats.subscribe_frames, stats.max_params), (9, 200));
    assert!(stats.max_weight_1m <= 6000, "{}", stats.max_weight_1m);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ten_connections_dropped_together_reconnect_spread_out() {
    let symbols: Vec<String> = (0..10).map(|i| format!("S{i}USDT")).collect();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut config = MockConfig::spot(&refs);
    config.tick = Duration::from_millis(20);
    let mock = MockExchange::start(config).await.unwrap();
    let mut section = feed(&mock, "binance", &refs);
    section.streams_per_connection = Some(2);
    let server = serve(vec![section]).await;
    let mut c = client(&server).await;
    let all = names("BINANCE", &refs);
    wait_synced(&mut c, &all).await;
    let mut w = None;
    for round in 1..=5u64 {
        if round == 5 {
            w = Some(watch(&server, &all, pb::Channel::Book).await);
        }
        mock.close_abruptly();
        let deadline = tokio::time::Instant::now() + WAIT;
        while mock.stats().connections < 10 * (round + 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round} never recovered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut w = w.expect("watched the last round");
    for name in &all {
        w.until_rebuilt(name).await;
    }
    settle(&mut c, &mock, "BINANCE", &refs).await;
    let stats = mock.stats();
    assert_eq!(stats.connections, 60);
    // Attempts are reserved 40 ms apart, but the mock sees them when they arrive: a busy
    // machine can wake several late and land them close together. Ten reconnecting at
    // once (the storm this prevents) land within the 20 ms of first-retry jitter; spaced,
    // any seven span 240 ms, so "at most six in any 100 ms" holds with 140 ms of slack.
    let at = &stats.connected_at;
    for (i, t) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_millis(100))
            .count();
        assert!(
            within <= 6,
            "{within} connections within 100 ms of attempt {i}"
        );
    }
    server.shutdown().await.unwrap();
}

fn kraken_feed(mock: &MockExchange, symbols: &[&str]) -> FeedSection {
    FeedSection {
        ws_url: Some(format!("{}/v2", mock.ws_url())),
        rest_url: None,
        depth_limit: Some(10),
        ..feed(mock, "kraken", symbols)
    }
}

#[tokio::test]
async fn kraken_books_are_checksummed_and_equal_the_venue() {
    let symbols = ["BTC/USD", "ETH/USD"];
    let (mock, server, mut c, names) = synced(
        MockConfig::kraken(&symbols),
        |m| kraken_feed(m, &symbols),
        "KRAKEN",
        &symbols,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    let mut trades = watch(&server, &names, pb::Channel::Trades).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for name in &names {
        assert_snapshot_true(&mut c, &mock, name).await;
    }
    assert!(w.assert_books_true(&mock, "KRAKEN") > 10);
    assert_eq!(w.statuses(), vec![]);
    trades.drain();
    let taker = trades
        .seen
        .iter()
        .find_map(|e| match body_from_pb(e).ok()?? {
            EventBody::Trade(t) => Some(t.aggressor),
            _ => None,
        });
    assert!(taker.is_some(), "trades arrive");
    trades.assert_contiguous();
    assert_eq!(mock.stats().violations, Vec::<String>::new());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_kraken_checksum_mismatch_resubscribes_only_that_pair() {
    let symbols = ["BTC/USD", "ETH/USD"];
    let (mock, server, mut c, names) = synced(
        MockConfig::kraken(&symbols),
        |m| kraken_feed(m, &symbols),
        "KRAKEN",
        &symbols,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let subscribed = mock.stats().subscribe_frames;
    mock.bad_checksum("BTC/USD", 1);
    w.until_rebuilt("KRAKEN:BTC/USD").await;
    // Lost updates: the next checksum shows it, unless a later update happened to
    // restore every level the lost ones changed (absolute quantities heal); either way
    // the published book is the venue's.
    mock.drop_depth("ETH/USD", 3);
    // Resubscriptions wait their turn under the control-frame limit (4/s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let statuses = w.statuses();
    let resyncs = |name: &str| {
        statuses
            .iter()
            .filter(|s| s.0 == name && s.1 == StatusKind::Resync)
            .count()
    };
    assert_eq!(resyncs("KRAKEN:BTC/USD"), 1, "{statuses:?}");
    assert!(resyncs("KRAKEN:ETH/USD") <= 1, "{statuses:?}");
    let expected = subscribed + 1 + resyncs("KRAKEN:ETH/USD") as u64;
    assert_eq!(
        mock.stats().subscribe_frames,
        expected,
        "one resubscription each"
    );
    assert_eq!(mock.stats().connections, 1);
    for name in &names {
        assert_snapshot_true(&mut c, &mock, name).await;
    }
    w.assert_contiguous();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unreliable_kraken_checksum_is_reported_not_looped_on() {
    let symbols = ["BTC/USD"];
    let (mock, server, mut c, names) = synced(
        MockConfig::kraken(&symbols),
        |m| kraken_feed(m, &symbols),
        "KRAKEN",
        &symbols,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let subscribed = mock.stats().subscribe_frames;
    // One wrong checksum on an update (a resync), then on every fresh snapshot, three
    // times: the third says the checksum is unreliable and keeps the book.
    mock.bad_snapshot_checksum("BTC/USD", 3);
    mock.bad_checksum("BTC/USD", 1);
    w.until("KRAKEN:BTC/USD", StatusKind::Rejected).await;
    w.until_rebuilt("KRAKEN:BTC/USD").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let statuses = w.statuses();
    let kinds: Vec<StatusKind> = statuses.iter().map(|s| s.1).collect();
    assert_eq!(
        kinds,
        [StatusKind::Resync, StatusKind::Rejected],
        "{statuses:?}"
    );
    assert_eq!(
        mock.stats().subscribe_frames,
        subscribed + 3,
        "no resubscription storm"
    );
    assert_snapshot_true(&mut c, &mock, "KRAKEN:BTC/USD").await;
    server.shutdown().await.unwrap();
}

fn coinbase_feed(mock: &MockExchange, products: &[&str]) -> FeedSection {
    FeedSection {
        rest_url: Some(mock.rest_url()),
        depth_limit: None,
        ..feed(mock, "coinbase", products)
    }
}

/// The trade ids `name` published, in order.
fn trade_ids(w: &mut Watch, name: &str) -> Vec<u64> {
    w.drain();
    w.seen
        .iter()
        .filter(|e| e.instrument == name)
        .filter_map(|e| match body_from_pb(e).ok()?? {
            EventBody::Trade(t) => Some(t.trade_id.parse().unwrap()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn coinbase_books_come_in_band_and_equal_the_venue() {
    let products = ["BTC-USD", "ETH-USD"];
    let mut config = MockConfig::coinbase(&products);
    // Subscriptions go out at once: a tight deadline is met.
    config.subscribe_within = Duration::from_millis(500);
    let mock = MockExchange::start(config).await.unwrap();
    let server = serve(vec![coinbase_feed(&mock, &products)]).await;
    let mut c = client(&server).await;
    let names = names("COINBASE", &products);
    wait_synced(&mut c, &names).await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    let mut trades = watch(&server, &names, pb::Channel::Trades).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for name in &names {
        assert_snapshot_true(&mut c, &mock, name).await;
    }
    assert!(w.assert_books_true(&mock, "COINBASE") > 10);
    assert_eq!(w.statuses(), vec![]);
    w.assert_contiguous();
    for name in &names {
        let ids = trade_ids(&mut trades, name);
        assert!(
            ids.len() > 5 && ids.windows(2).all(|w| w[1] > w[0]),
            "{ids:?}"
        );
    }
    let stats = mock.stats();
    assert_eq!(
        stats.violations,
        Vec::<String>::new(),
        "one channel per subscribe, in time"
    );
    assert_eq!((stats.connections, stats.subscribe_frames), (1, 3));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_coinbase_sequence_jump_rebuilds_the_connections_books() {
    let products = ["BTC-USD", "ETH-USD"];
    let (mock, server, mut c, names) = synced(
        MockConfig::coinbase(&products),
        |m| coinbase_feed(m, &products),
        "COINBASE",
        &products,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    mock.drop_depth("BTC-USD", 1);
    for name in &names {
        w.until_rebuilt(name).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let statuses = w.statuses();
    for name in &names {
        // Which messages were lost is known, how many book updates they held is not.
        assert!(
            statuses.contains(&(name.clone(), StatusKind::Gap, 0)),
            "{statuses:?}"
        );
        assert!(
            statuses.contains(&(name.clone(), StatusKind::Resync, 0)),
            "{statuses:?}"
        );
        assert_snapshot_true(&mut c, &mock, name).await;
    }
    assert!(w.assert_books_true(&mock, "COINBASE") > 10);
    w.assert_contiguous();
    // Both products in one resubscription: 3 subscriptions, then level2 once more.
    assert_eq!(mock.stats().subscribe_frames, 4);
    assert_eq!(mock.stats().connections, 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn coinbase_trades_resent_after_a_reconnect_are_not_published_twice() {
    let products = ["BTC-USD"];
    let (mock, server, _, names) = synced(
        MockConfig::coinbase(&products),
        |m| coinbase_feed(m, &products),
        "COINBASE",
        &products,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Trades).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mock.close_abruptly();
    w.until("COINBASE:BTC-USD", StatusKind::FeedUp).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = trade_ids(&mut w, "COINBASE:BTC-USD");
    assert!(ids.len() > 10, "{ids:?}");
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "no trade twice: {ids:?}"
    );
    assert_eq!(mock.stats().connections, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn all_four_venues_at_once() {
    let spot = MockExchange::start(MockConfig::spot(&["BTCUSDT", "ETHUSDT"]))
        .await
        .unwrap();
    let usdm = MockExchange::start(MockConfig::usdm(&["BTCUSDT"]))
        .await
        .unwrap();
    let coinbase = MockExchange::start(MockConfig::coinbase(&["BTC-USD", "ETH-USD"]))
        .await
        .unwrap();
    let kraken = MockExchange::start(MockConfig::kraken(&["BTC/USD"]))
        .await
        .unwrap();
    let server = serve(vec![
        feed(&spot, "binance", &["BTCUSDT", "ETHUSDT"]),
        feed(&usdm, "binance-usdm", &["BTCUSDT"]),
        coinbase_feed(&coinbase, &["BTC-USD", "ETH-USD"]),
        kraken_feed(&kraken, &["BTC/USD"]),
    ])
    .await;
    let mut c = client(&server).await;
    let venues: [(&MockExchange, &str, &[&str]); 4] = [
        (&spot, "BINANCE", &["BTCUSDT", "ETHUSDT"]),
        (&usdm, "BINANCE_USDM", &["BTCUSDT"]),
        (&coinbase, "COINBASE", &["BTC-USD", "ETH-USD"]),
        (&kraken, "KRAKEN", &["BTC/USD"]),
    ];
    let all: Vec<String> = venues.iter().flat_map(|(_, v, s)| names(v, s)).collect();
    wait_synced(&mut c, &all).await;
    let mut watches = Vec::new();
    for (_, venue, symbols) in &venues {
        watches.push(watch(&server, &names(venue, symbols), pb::Channel::Book).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every venue's reference data, read once: Binance's exchangeInfo, Coinbase's product
    // list (its price_increment, not its different quote_increment), Kraken's instrument
    // channel on a connection of its own.
    let tick = "0.01".parse::<Price>().unwrap().units();
    assert_eq!(
        tick_sizes(&mut c, &all).await,
        vec![tick; all.len()],
        "{all:?}"
    );
    // Heartbeats, statuses and acknowledgements are expected messages, and the mock
    // sends no key the decoders do not know.
    let metrics = scrape::scrape(&server).await;
    for feed in ["binance", "binance-usdm", "coinbase", "kraken"] {
        for counter in ["raven_feed_unhandled_messages", "raven_feed_unknown_fields"] {
            let key = format!("{counter}{{feed=\"{feed}\"}}");
            assert_eq!(metrics[&key], 0.0, "{key}");
        }
    }
    for ((mock, venue, symbols), w) in venues.iter().zip(&mut watches) {
        assert_eq!(mock.stats().reference_reads, 1, "{venue}");
        assert_eq!(
            mock.stats().connections,
            1 + u64::from(*venue == "BINANCE_USDM"),
            "{venue}"
        );
        for name in names(venue, symbols) {
            assert_snapshot_true(&mut c, mock, &name).await;
        }
        assert!(w.assert_books_true(mock, venue) > 10, "{venue}");
        assert_eq!(w.statuses(), vec![], "{venue}: no gap, no resync");
        w.assert_contiguous();
        assert_eq!(mock.stats().violations, Vec::<String>::new(), "{venue}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_rotate_before_the_venues_age_limit() {
    let symbols = ["BTCUSDT"];
    let mut config = MockConfig::spot(&symbols);
    // The venue cuts connections at 3 s; the feed replaces them at 1 s.
    config.max_conn_age = Some(Duration::from_secs(3));
    let (mock, server, _, names) = synced(
        config,
        |m| FeedSection {
            rotate_after_secs: Some(1),
            ..feed(m, "binance", &symbols)
        },
        "BINANCE",
        &symbols,
    )
    .await;
    let mut w = watch(&server, &names, pb::Channel::Book).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let connections = mock.stats().connections;
    assert!(
        connections >= 3,
        "rotated about every second: {connections}"
    );
    assert_eq!(w.statuses(), vec![], "no FeedDown, no gap, no resync");
    w.assert_contiguous();
    assert!(w.assert_books_true(&mock, "BINANCE") > 10);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_kraken_and_coinbase_book_messages_rebuild_only_their_book() {
    for (config, venue, symbols, raw) in [
        (
            MockConfig::kraken(&["BTC/USD", "ETH/USD"]),
            "KRAKEN",
            ["BTC/USD", "ETH/USD"],
            // An exponent is not an exact decimal.
            r#"{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":1e-5,"qty":1.0}],"asks":[],"checksum":1}]}"#,
        ),
        (
            MockConfig::coinbase(&["BTC-USD", "ETH-USD"]),
            "COINBASE",
            ["BTC-USD", "ETH-USD"],
            // A size seen in a real Coinbase capture.
            r#"{"channel":"l2_data","client_id":"","timestamp":"t","sequence_num":1,"events":[{"type":"update","product_id":"BTC-USD","updates":[{"side":"bid","event_time":"","price_level":"40531.19","new_quantity":"0.-10000"}]}]}"#,
        ),
    ] {
        let (mock, server, mut c, names) = synced(
            config,
            |m| match venue {
                "KRAKEN" => kraken_feed(m, &symbols),
                _ => coinbase_feed(m, &symbols),
            },
            venue,
            &symbols,
        )
        .await;
        let mut w = watch(&server, &names, pb::Channel::Book).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        mock.send_raw(Message::text(raw));
        let first = &names[0];
        w.until(first, StatusKind::Rejected).await;
        w.until_rebuilt(first).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let statuses = w.statuses();
        let rejected: Vec<&str> = statuses
            .iter()
            .filter(|s| s.1 == StatusKind::Rejected)
            .map(|s| s.0.as_str())
            .collect();
        assert_eq!(rejected, [first.as_str()], "{venue}: {statuses:?}");
        for name in &names {
            assert_snapshot_true(&mut c, &mock, name).await;
        }
        assert_eq!(mock.stats().connections, 1, "{venue}: no reconnect");
        w.assert_contiguous();
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_venue_that_cannot_be_reached_is_feed_down_at_once() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let section = FeedSection {
        venue: "kraken".into(),
        symbols: vec!["BTC/USD".into()],
        ws_url: Some(format!("ws://127.0.0.1:{port}/v2")),
        rest_url: None,
        depth_limit: None,
        streams_per_connection: None,
        stale_after_ms: None,
        liveness_ms: None,
        ping_every_ms: None,
        rotate_after_secs: None,
        rest_weight_per_minute: None,
    };
    // Recorded, so the status is read back whenever it was published.
    let server = common::server(|f| f.feeds = vec![section]).await;
    let mut history =
        pb::history_client::HistoryClient::connect(format!("http://{}", server.local_addr()))
            .await
            .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let detail = loop {
        let answer = history
            .query(pb::HistoryRequest {
                instruments: vec!["KRAKEN:BTC/USD".into()],
                channels: vec![],
                from: 0,
                to: u64::MAX,
                limit: 0,
            })
            .await;
        let mut found = None;
        // NOT_FOUND until the recorder has stored something of the instrument.
        let mut stream = match answer {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                assert!(tokio::time::Instant::now() < deadline, "nothing recorded");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while let Some(batch) = stream.message().await.unwrap() {
            for e in batch.events {
                if let Ok(Some(EventBody::Status(s))) = body_from_pb(&e)
                    && s.kind == StatusKind::FeedDown
                {
                    found = Some(s.detail);
                }
            }
        }
        if let Some(detail) = found {
            break detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no FeedDown recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(detail.starts_with("cannot connect: "), "{detail}");
    server.shutdown().await.unwrap();
}
