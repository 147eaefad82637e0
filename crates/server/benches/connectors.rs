//! The Binance connector end to end through the mock exchange, as a measurement (not a
//! test): `cargo bench -p raven-server --bench connectors [-- SECONDS]`.
//!
//! 50 instruments at about 20,000 venue messages/s (a diff per instrument every 3 ms, a
//! trade one time in three) for 60 s by default, every book event a subscriber receives
//! checked against the venue's truth at its update id. Then a dropped diff (resync time:
//! the `Gap`'s publish time to the rebuilt snapshot's), an abrupt drop (the first
//! reconnection after it, as the venue saw it), and ten seconds of a quiet venue (the
//! feed thread's CPU). The server records every event into SQLite, as `raven serve` does by
//! default. Prints one table.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use raven_mockex::{MockConfig, MockExchange};
use raven_model::{EventBody, Price, Qty, StatusKind};
use raven_proto::convert::body_from_pb;
use raven_proto::pb::{self, market_client::MarketClient, stream_request::Request as Req};
use raven_server::app::{bind, start};
use raven_server::clock::SystemClock;
use raven_server::config::FileConfig;
use raven_server::feed::exchange::FeedSection;

/// The allocator `raven serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Side = Vec<(Price, Qty)>;
/// One side of a client's book, by price.
type Levels = BTreeMap<Price, Qty>;

/// One book event in this many is checked against the venue's truth.
const CHECK_EVERY: u64 = 20;

fn parse(side: &[(String, String)]) -> Side {
    side.iter()
        .map(|(p, q)| (p.parse().unwrap(), q.parse().unwrap()))
        .collect()
}

/// CPU ticks (user + system) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        total += fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let seconds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(60);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(seconds));
}

async fn run(seconds: u64) {
    let symbols: Vec<String> = (0..50).map(|i| format!("S{i:02}USDT")).collect();
    let refs: Vec<&str> = symbols.iter().map(String::as_str).collect();
    let mut config = MockConfig::spot(&refs);
    config.tick = Duration::from_millis(3);
    config.history = 20_000;
    let mock = MockExchange::start(config).await.unwrap();
    // Recorded as `raven serve` records by default: every event into SQLite.
    let dir = raven_testkit::scratch_dir!("connectors-bench");
    let mut file = FileConfig::default();
    file.http.listen = "off".into();
    file.store.url = format!("sqlite:{}", dir.join("raven.db").display());
    file.store.spill = dir.join("raven.spill");
    file.feeds = vec![FeedSection {
        venue: "binance".into(),
        symbols: symbols.clone(),
        ws_url: Some(mock.ws_url()),
        rest_url: Some(mock.rest_url()),
        depth_limit: Some(1000),
        streams_per_connection: None,
        stale_after_ms: None,
        liveness_ms: None,
        ping_every_ms: None,
        rotate_after_secs: None,
        rest_weight_per_minute: None,
    }];
    let config = file.resolve().unwrap();
    let server = start(
        &config,
        std::sync::Arc::new(SystemClock),
        bind("127.0.0.1:0".parse().unwrap()).unwrap(),
    )
    .await
    .unwrap();
    let mut c = MarketClient::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    let names: Vec<String> = symbols.iter().map(|s| format!("BINANCE:{s}")).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for channel in [pb::Channel::Book, pb::Channel::Trades] {
        tx.send(pb::StreamRequest {
            request: Some(Req::Subscribe(pb::Subscribe {
                instruments: names.clone(),
                channel: channel as i32,
                depth: 0,
                start: 0,
            })),
        })
        .await
        .unwrap();
    }
    let mut stream = c
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // Steady state: every book checked against the truth at its venue id.
    // The client's books, kept cheaply (a subscriber on the same two cores competes with
    // what is measured): ordered maps, turned into sides only when checked.
    let mut books: HashMap<String, (Levels, Levels)> = HashMap::new();
    let (mut checked, mut trades, mut gaps, mut latencies) = (0u64, 0u64, 0u64, Vec::new());
    let mut book_events = 0u64;
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let warm = started + Duration::from_secs(5);
    while Instant::now() < end {
        let Ok(Ok(Some(batch))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        else {
            panic!("the stream stalled");
        };
        for e in batch.events {
            let Ok(Some(body)) = body_from_pb(&e) else {
                continue;
            };
            if Instant::now() > warm && e.receive_time > 0 && !matches!(body, EventBody::Status(_))
            {
                latencies.push(e.publish_time.saturating_sub(e.receive_time));
            }
            let symbol = e.instrument.trim_start_matches("BINANCE:").to_owned();
            let book = books.entry(symbol.clone()).or_default();
            match body {
                EventBody::Snapshot(s) => {
                    book.0 = s.bids.iter().map(|l| (l.price, l.qty)).collect();
                    book.1 = s.asks.iter().map(|l| (l.price, l.qty)).collect();
                }
                EventBody::Delta(d) => {
                    for ch in d.changes {
                        let side = if ch.side == raven_model::Side::Bid {
                            &mut book.0
                        } else {
                            &mut book.1
                        };
                        if ch.qty.is_zero() {
                            side.remove(&ch.price);
                        } else {
                            side.insert(ch.price, ch.qty);
                        }
                    }
                }
                EventBody::Trade(_) => {
                    trades += 1;
                    continue;
                }
                EventBody::Status(s) => {
                    if matches!(s.kind, StatusKind::Gap | StatusKind::Resync) {
                        gaps += 1;
                    }
                    continue;
                }
                _ => continue,
            }
            if e.venue_seq == 0 {
                // The empty book a subscription starts with before the feed synced it.
                assert!(book.0.is_empty() && book.1.is_empty());
                continue;
            }
            book_events += 1;
            // Rendering the truth costs the two cores more than Raven's whole path does:
            // check one book event in CHECK_EVERY (the tests check every one).
            if !book_events.is_multiple_of(CHECK_EVERY) {
                continue;
            }
            let (bids, asks) = mock
                .truth_at(&symbol, e.venue_seq)
                .expect("a venue book at that id");
            let sides: (Side, Side) = (
                book.0.iter().rev().map(|(p, q)| (*p, *q)).collect(),
                book.1.iter().map(|(p, q)| (*p, *q)).collect(),
            );
            assert_eq!(
                sides,
                (parse(&bids), parse(&asks)),
                "{} at {}",
                e.instrument,
                e.venue_seq
            );
            checked += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();

    // A dropped diff: from the Gap's publish to the rebuilt book's.
    mock.drop_depth("S00USDT", 1);
    let (mut gap_at, mut resync_ms) = (0u64, None);
    while resync_ms.is_none() {
        let batch = stream.message().await.unwrap().unwrap();
        for e in batch.events {
            if e.instrument != "BINANCE:S00USDT" {
                continue;
            }
            match body_from_pb(&e) {
                Ok(Some(EventBody::Status(s))) if s.kind == StatusKind::Gap => {
                    gap_at = e.publish_time
                }
                Ok(Some(EventBody::Snapshot(s)))
                    if gap_at > 0 && s.kind == raven_model::SnapshotKind::Resync =>
                {
                    resync_ms = Some((e.publish_time - gap_at) as f64 / 1e6);
                }
                _ => {}
            }
        }
    }

    // An abrupt drop: the first reconnection the venue sees.
    drop(stream);
    let before = mock.stats().connections;
    let dropped = Instant::now();
    mock.close_abruptly();
    while mock.stats().connections == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let reconnect_ms = mock
        .stats()
        .connected_at
        .last()
        .unwrap()
        .duration_since(dropped)
        .as_secs_f64()
        * 1e3;

    // A quiet venue: the feed thread's CPU over ten seconds.
    for s in &symbols {
        mock.quiet(s, Duration::from_secs(12));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ticks = thread_ticks("raven-binance");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = (thread_ticks("raven-binance") - ticks) as f64 / 100.0 / 10.0 * 100.0;

    println!(
        "connectors bench, {seconds} s, 50 instruments, one Binance spot connection through the mock"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| venue messages/s published (diffs + trades) | {:.0} |",
        (book_events + trades) as f64 / elapsed
    );
    println!(
        "| book events checked against the truth (1 in {CHECK_EVERY}) | {checked} of {book_events}, all equal |"
    );
    println!("| trades published | {trades} |");
    println!("| gaps or resyncs during the run | {gaps} |");
    println!(
        "| receive → publish p50 / p99 / p99.9 / max | {:.1} / {:.1} / {:.1} / {:.1} µs |",
        percentile(&latencies, 0.5) as f64 / 1e3,
        percentile(&latencies, 0.99) as f64 / 1e3,
        percentile(&latencies, 0.999) as f64 / 1e3,
        latencies.last().copied().unwrap_or(0) as f64 / 1e3
    );
    println!(
        "| gap → rebuilt book published | {:.1} ms |",
        resync_ms.unwrap_or(f64::NAN)
    );
    println!("| drop → first reconnection at the venue | {reconnect_ms:.1} ms |");
    println!("| quiet venue: feed thread CPU | {idle:.2}% of a core |");
    assert_eq!(mock.stats().violations, Vec::<String>::new());
    server.shutdown().await.unwrap();
}
