//! The stores' contract, one test per property on each store (`on_sqlite::*` on a real
//! SQLite file, `on_postgres::*` on a real PostgreSQL database at 127.0.0.1:5432, a schema
//! per test, skipped with a message when it is not running unless
//! `RAVEN_REQUIRE_SERVICES=1` makes that a failure); then what is one store's own: the
//! SQLite WAL's bound, and layouts that are refused. The recorder's resilience, end to
//! end, is `recorder.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use raven_model::{
    Aggressor, Bbo, BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Event, EventBody,
    InstrumentId, Level, LevelChange, Price, Qty, Sequence, Side, SnapshotKind, Status, StatusKind,
    Trade, UnixNanos,
};
use raven_proto::{convert, pb};
use raven_server::store::postgres::PostgresStore;
use raven_server::store::sqlite::SqliteStore;
use raven_server::store::{self, Batch, Query, Store};
use raven_testkit::pg::{PG, drop_schema, postgres_available, unique_schema};

fn instrument(name: &str) -> raven_model::InstrumentName {
    raven_model::InstrumentName::parse(name).expect("a valid name")
}

fn p(s: &str) -> Price {
    s.parse().unwrap()
}

fn q(s: &str) -> Qty {
    s.parse().unwrap()
}

/// Every body kind, with values that would not survive a float: 18-digit prices,
/// quantities above 2^64 units, negative prices (spreads), nanosecond times.
fn fixture() -> Vec<(&'static str, Event)> {
    let event = |sequence, body| Event {
        instrument: InstrumentId(0),
        sequence: Sequence(sequence),
        exchange_time: UnixNanos::ZERO,
        receive_time: UnixNanos::ZERO,
        publish_time: UnixNanos::ZERO,
        venue_seq: 0,
        body,
    };
    let big = q("123456789012.123456789");
    let mut events = vec![
        (
            "TEST:BTC-USD",
            event(
                1,
                EventBody::Snapshot(BookSnapshot {
                    bids: vec![Level {
                        price: p("65000.123456789"),
                        qty: big,
                    }],
                    asks: vec![Level {
                        price: p("65000.2"),
                        qty: q("0.000000001"),
                    }],
                    kind: SnapshotKind::Initial,
                }),
            ),
        ),
        (
            "TEST:BTC-USD",
            event(
                2,
                EventBody::Delta(BookDelta {
                    changes: vec![
                        LevelChange {
                            side: Side::Bid,
                            price: p("65000.123456789"),
                            qty: Qty::ZERO,
                        },
                        LevelChange {
                            side: Side::Ask,
                            price: p("9223372036.854775807"),
                            qty: q("1.5"),
                        },
                    ],
                }),
            ),
        ),
        (
            "TEST:BTC-USD",
            event(
                1,
                EventBody::Trade(Trade {
                    price: p("65000.2"),
                    qty: big,
                    aggressor: Aggressor::Sell,
                    trade_id: "t-1".into(),
                }),
            ),
        ),
        (
            "TEST:SPREAD",
            event(
                1,
                EventBody::Bbo(Bbo {
                    bid: Some(Level {
                        price: p("-0.25"),
                        qty: q("3"),
                    }),
                    ask: None,
                }),
            ),
        ),
        (
            "TEST:SPREAD",
            event(
                1,
                EventBody::Candle(Candle {
                    interval: CandleInterval::Minute1,
                    open_time: UnixNanos(1_764_300_000_000_000_000),
                    open: p("-0.25"),
                    high: p("0.5"),
                    low: p("-1"),
                    close: p("0.125"),
                    volume: big,
                    trades: 42,
                }),
            ),
        ),
        (
            "TEST:BTC-USD",
            event(
                3,
                EventBody::Status(Status {
                    kind: StatusKind::Rejected,
                    channel: Channel::Book,
                    missed: 0,
                    detail: "delta would cross the book".into(),
                }),
            ),
        ),
    ];
    // Times grow through the fixture, as the engine stamps them.
    for (index, (_, event)) in events.iter_mut().enumerate() {
        let index = index as u64;
        event.exchange_time = UnixNanos(1_764_300_000_000_000_001 + index);
        event.receive_time = UnixNanos(1_764_300_000_000_000_501 + index);
        event.publish_time = UnixNanos(1_764_300_000_000_000_777 + index);
    }
    events
}

fn batch(run: u64, number: u64, events: &[(&str, Event)]) -> Batch {
    let mut batch = Batch::new(run, number);
    for (name, event) in events {
        batch.push(&instrument(name), event);
    }
    batch
}

/// Every stored event of one instrument and channel.
fn read(store: &mut dyn Store, instrument: &str, channel: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    store
        .query(&Query::all(&[instrument], &[channel]), &mut |_, bytes| {
            out.push(bytes.to_vec());
            true
        })
        .unwrap();
    out
}

/// A fresh store of one kind for one test, with what opens it again; removed after.
struct Fresh {
    store: Box<dyn Store>,
    url: String,
    schema: String,
    /// What `describe` says of it.
    describes: String,
    cleanup: Option<Box<dyn FnOnce()>>,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(cleanup) = self.cleanup.take() {
            cleanup();
        }
    }
}

/// A SQLite file of its own, in a directory that does not exist yet.
fn sqlite(test: &str) -> Fresh {
    let dir = raven_testkit::scratch_dir!(&format!("sqlite-{test}"));
    let path = dir.join("nested").join("raven.db");
    Fresh {
        store: Box::new(SqliteStore::open(&path).unwrap()),
        url: format!("sqlite:{}", path.display()),
        schema: "unused".into(),
        describes: format!("sqlite {}", path.display()),
        cleanup: Some(Box::new(move || {
            // Whatever the test did, the file it leaves is sound.
            if !std::thread::panicking() {
                let check = SqliteStore::open(&path).unwrap().integrity_check().unwrap();
                assert_eq!(check, "ok");
            }
            let _ = std::fs::remove_dir_all(dir);
        })),
    }
}

/// A PostgreSQL schema of its own on the shared server; `None` (the test skipped, with
/// a message) when the server is not running.
fn postgres() -> Option<Fresh> {
    if !postgres_available() {
        return None;
    }
    // Unique by process and time: the tests of one run share the server.
    let schema = unique_schema("contract");
    let cleanup = schema.clone();
    Some(Fresh {
        store: Box::new(PostgresStore::connect(PG, &schema).unwrap()),
        url: PG.into(),
        describes: format!("postgres 127.0.0.1:5432/test schema {schema}"),
        schema,
        cleanup: Some(Box::new(move || drop_schema(&cleanup))),
    })
}

/// Each property of the stores' contract, as a test of its own on each store.
macro_rules! on_both_stores {
    ($($property:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[test]
                fn $property() {
                    super::$property(&mut super::sqlite(stringify!($property)));
                }
            )*
        }
        mod on_postgres {
            $(
                #[test]
                fn $property() {
                    if let Some(mut fresh) = super::postgres() {
                        super::$property(&mut fresh);
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    events_read_back_exactly_as_written,
    a_retried_batch_is_stored_once_and_runs_stay_apart,
    queries_select_by_time_channel_and_limit_and_stop_early,
    empty_batches_and_reconnects_change_nothing,
    checkpoints_are_kept_apart_found_by_time_and_start_a_read,
    time_ranges_read_what_a_plain_filter_selects,
    what_was_written_is_there_when_opened_again,
);

/// Publish time of the fixture's first events.
const BASE: u64 = 1_764_300_000_000_000_777;

/// Writes the fixture as runs 7 (two batches) and 8 (the first three events again).
fn recorded(store: &mut dyn Store) -> usize {
    let events = fixture();
    let (first, second) = events.split_at(3);
    store.write(&batch(7, 0, first)).unwrap();
    store.write(&batch(7, 1, second)).unwrap();
    store.write(&batch(8, 0, first)).unwrap();
    events.len() + 3
}

/// (run, channel, sequence) of every event `query` selects.
fn select(store: &mut dyn Store, query: Query) -> Vec<(u64, i32, u64)> {
    let mut out = Vec::new();
    store
        .query(&query, &mut |run, bytes| {
            let e = &pb::StreamResponse::decode(bytes).unwrap().events[0];
            out.push((run, e.channel, e.sequence));
            true
        })
        .unwrap();
    out
}

/// TEST:BTC-USD, every channel, publish time in [from, to), at most `limit`.
fn btc(from: u64, to: u64, limit: u64) -> Query {
    Query {
        instruments: vec!["TEST:BTC-USD".into()],
        channels: Vec::new(),
        from,
        to,
        limit,
        after: None,
    }
}

fn events_read_back_exactly_as_written(fresh: &mut Fresh) {
    let store = fresh.store.as_mut();
    let events = fixture();
    let (first, second) = events.split_at(3);
    assert_eq!(store.count().unwrap(), 0);
    store.write(&batch(7, 0, first)).unwrap();
    store.write(&batch(7, 1, second)).unwrap();
    assert_eq!(store.count().unwrap(), events.len() as u64);

    // Read back: the same bytes, and decoded, the same events (prices included).
    for (name, channel) in [
        ("TEST:BTC-USD", Channel::Book),
        ("TEST:BTC-USD", Channel::Trades),
        ("TEST:SPREAD", Channel::Bbo),
        ("TEST:SPREAD", Channel::Candles),
    ] {
        let expected: Vec<&Event> = events
            .iter()
            .filter(|(n, e)| *n == name && e.body.channel() == channel)
            .map(|(_, e)| e)
            .collect();
        let stored = read(store, name, convert::channel_to_pb(channel) as u8);
        assert_eq!(stored.len(), expected.len(), "{name} {channel:?}");
        for (bytes, original) in stored.iter().zip(expected) {
            let mut one = Batch::new(0, 0);
            one.push(&instrument(name), original);
            assert_eq!(bytes.as_slice(), one.bytes(), "{name} {channel:?}");
            let decoded = &pb::StreamResponse::decode(bytes.as_slice()).unwrap().events[0];
            assert_eq!(decoded.instrument, name);
            assert_eq!(decoded.sequence, original.sequence.0);
            assert_eq!(decoded.exchange_time, original.exchange_time.0);
            assert_eq!(decoded.receive_time, original.receive_time.0);
            assert_eq!(decoded.publish_time, original.publish_time.0);
            assert_eq!(
                convert::body_from_pb(decoded).unwrap().as_ref(),
                Some(&original.body)
            );
        }
    }
    assert!(read(store, "TEST:NOPE", 3).is_empty());
}

fn a_retried_batch_is_stored_once_and_runs_stay_apart(fresh: &mut Fresh) {
    let store = fresh.store.as_mut();
    let events = fixture();
    let (first, second) = events.split_at(3);
    store.write(&batch(7, 0, first)).unwrap();
    store.write(&batch(7, 1, second)).unwrap();
    // A batch written again (a retry after an unacknowledged commit) is not duplicated;
    // the same number in another run is another batch.
    store.write(&batch(7, 0, first)).unwrap();
    assert_eq!(store.count().unwrap(), events.len() as u64);
    store.write(&batch(8, 0, first)).unwrap();
    assert_eq!(store.count().unwrap(), events.len() as u64 + 3);
    // Runs come back in order, each in record order.
    let trades = read(store, "TEST:BTC-USD", 3);
    assert_eq!(trades.len(), 2);
    assert_eq!(
        trades[0], trades[1],
        "the same trade, recorded by runs 7 and 8"
    );
}

fn queries_select_by_time_channel_and_limit_and_stop_early(fresh: &mut Fresh) {
    let store = fresh.store.as_mut();
    recorded(store);
    let base = BASE;
    // Queries: publish time in [from, to), channels (none = all), limit, early stop.
    // Only the deltas were published at base + 1, once by run 7 and once by run 8.
    assert_eq!(
        select(store, btc(base + 1, base + 2, 0)),
        vec![(7, 1, 2), (8, 1, 2)]
    );
    // Everything of BTC, record order: run 7's snapshot, delta, trade, status; run 8's.
    assert_eq!(
        select(store, btc(0, u64::MAX, 0)),
        vec![
            (7, 1, 1),
            (7, 1, 2),
            (7, 3, 1),
            (7, 1, 3),
            (8, 1, 1),
            (8, 1, 2),
            (8, 3, 1)
        ]
    );
    assert_eq!(
        select(store, btc(0, u64::MAX, 2)),
        vec![(7, 1, 1), (7, 1, 2)]
    );
    assert!(select(store, btc(base + 2, base + 2, 0)).is_empty());
    let both = Query {
        instruments: vec![
            "TEST:SPREAD".into(),
            "TEST:BTC-USD".into(),
            "TEST:NOPE".into(),
        ],
        channels: vec![2, 3],
        ..btc(0, u64::MAX, 0)
    };
    assert_eq!(select(store, both), vec![(7, 3, 1), (7, 2, 1), (8, 3, 1)]);
    let mut calls = 0;
    store
        .query(&btc(0, u64::MAX, 0), &mut |_, _| {
            calls += 1;
            calls < 3
        })
        .unwrap();
    assert_eq!(calls, 3);
    assert_eq!(
        store.instruments().unwrap(),
        vec!["TEST:BTC-USD".to_owned(), "TEST:SPREAD".to_owned()]
    );
}

fn empty_batches_and_reconnects_change_nothing(fresh: &mut Fresh) {
    let store = fresh.store.as_mut();
    let stored = recorded(store) as u64;
    // An empty batch is a valid (if pointless) transaction.
    store.write(&Batch::new(8, 1)).unwrap();
    assert_eq!(store.count().unwrap(), stored);

    // Reconnecting keeps everything.
    store.reconnect().unwrap();
    assert_eq!(store.count().unwrap(), stored);
}

fn checkpoints_are_kept_apart_found_by_time_and_start_a_read(fresh: &mut Fresh) {
    let store = fresh.store.as_mut();
    recorded(store);
    let base = BASE;
    // Checkpoint snapshots: kept apart from the book's events, found by time, and a
    // read can start at one.
    let at = |sequence: u64, publish: u64, body| Event {
        instrument: InstrumentId(0),
        sequence: Sequence(sequence),
        exchange_time: UnixNanos(publish),
        receive_time: UnixNanos(publish),
        publish_time: UnixNanos(publish),
        venue_seq: 0,
        body,
    };
    let book = BookSnapshot {
        bids: vec![Level {
            price: p("100"),
            qty: q("1"),
        }],
        asks: vec![],
        kind: SnapshotKind::Checkpoint,
    };
    let delta = BookDelta {
        changes: vec![LevelChange {
            side: Side::Bid,
            price: p("99"),
            qty: q("2"),
        }],
    };
    let later = [
        (
            "TEST:BTC-USD",
            at(5, base + 10, EventBody::Delta(delta.clone())),
        ),
        ("TEST:BTC-USD", at(5, base + 10, EventBody::Snapshot(book))),
        ("TEST:BTC-USD", at(6, base + 20, EventBody::Delta(delta))),
    ];
    store.write(&batch(9, 0, &later)).unwrap();
    assert_eq!(
        store.last_checkpoint("TEST:BTC-USD", base + 9).unwrap(),
        None
    );
    let found = store.last_checkpoint("TEST:BTC-USD", base + 10).unwrap();
    assert_eq!(found, Some((9, 1)));
    assert_eq!(
        store.last_checkpoint("TEST:SPREAD", u64::MAX).unwrap(),
        None
    );
    // Channel queries never see it; asking for channel 0 does.
    let run9 = |channels: Vec<u8>, after| Query {
        channels,
        after,
        ..btc(base + 10, u64::MAX, 0)
    };
    assert_eq!(
        select(store, run9(vec![], None)),
        vec![(9, 1, 5), (9, 1, 6)]
    );
    // From the checkpoint on: the checkpoint itself, then the delta after it.
    let mut kinds = Vec::new();
    store
        .query(&run9(vec![0, 1], found), &mut |_, bytes| {
            let e = pb::StreamResponse::decode(bytes).unwrap().events.remove(0);
            kinds.push(match e.body {
                Some(pb::event::Body::Snapshot(s)) if s.checkpoint => ("checkpoint", e.sequence),
                Some(pb::event::Body::Delta(_)) => ("delta", e.sequence),
                other => panic!("{other:?}"),
            });
            true
        })
        .unwrap();
    assert_eq!(kinds, vec![("checkpoint", 5), ("delta", 6)]);
}

fn time_ranges_read_what_a_plain_filter_selects(fresh: &mut Fresh) {
    let written = time_index(fresh.store.as_mut());
    assert_eq!(fresh.store.count().unwrap(), written);
}

fn what_was_written_is_there_when_opened_again(fresh: &mut Fresh) {
    let stored = recorded(fresh.store.as_mut()) as u64;
    assert_eq!(fresh.store.describe(), fresh.describes);
    let mut again = store::open(&fresh.url, &fresh.schema).unwrap();
    assert_eq!(again.count().unwrap(), stored);
}

/// Time-range queries, each checked against a plain filter of everything written: three
/// runs of 40 batches whose times overlap, three instruments interleaved out of time
/// order across instruments (as two shards' output is) but in order within each (as the
/// engine stamps them), equal stamps, batches without some instruments, and steps of
/// 0–49 ms, so some batches carry marks (at most one per instrument per 100 ms) and
/// some do not; trades and book changes mixed, so a query for one channel picks events
/// out of blocks that hold both, and some batches with one instrument's 400 events, cut
/// into several blocks. Returns the events it wrote.
fn time_index(store: &mut dyn Store) -> u64 {
    const MS: u64 = 1_000_000;
    const NAMES: [&str; 3] = ["TIME:A", "TIME:B", "TIME:C"];
    // (run, position, instrument, publish time, sequence, channel), in record order.
    let mut written: Vec<(u64, i64, usize, u64, u64, u8)> = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for run in [100u64, 200, 300] {
        let mut clocks = [MS + run * MS; 3];
        let mut sequences = [0u64; 3];
        let mut batches = Vec::new();
        for number in 0..40u64 {
            let mut batch = Batch::new(run, number);
            // Every tenth batch is one instrument's 400 events in a row, more than a
            // block of either store holds.
            let long = number % 10 == 5;
            for _ in 0..if long { 400 } else { next(12) } {
                let i = if long {
                    (number / 10 % 3) as usize
                } else {
                    next(3) as usize
                };
                clocks[i] += next(if long { 3 } else { 50 }) * MS;
                sequences[i] += 1;
                let time = UnixNanos(clocks[i]);
                // Trades and book changes mixed: blocks hold both channels.
                let (channel, body) = if next(3) == 0 {
                    (
                        1,
                        EventBody::Delta(BookDelta {
                            changes: vec![LevelChange {
                                side: Side::Ask,
                                price: p("2"),
                                qty: q("3"),
                            }],
                        }),
                    )
                } else {
                    (
                        3,
                        EventBody::Trade(Trade {
                            price: p("1"),
                            qty: q("1"),
                            aggressor: Aggressor::Buy,
                            trade_id: format!("{run}-{}", sequences[i]),
                        }),
                    )
                };
                let event = Event {
                    instrument: InstrumentId(0),
                    sequence: Sequence(sequences[i]),
                    exchange_time: time,
                    receive_time: time,
                    publish_time: time,
                    venue_seq: 0,
                    body,
                };
                let position = ((number << 24) | batch.len() as u64) as i64;
                written.push((run, position, i, clocks[i], sequences[i], channel));
                batch.push(&instrument(NAMES[i]), &event);
            }
            batches.push(batch);
        }
        // Batches can reach the store out of order (a gap batch stored after later
        // ones, a retry from the spill file): run 200 is written backwards, and run 300
        // with every seventh batch last. What queries return must not change.
        match run {
            200 => batches.reverse(),
            300 => batches.sort_by_key(|b| b.number % 7 == 3),
            _ => {}
        }
        for batch in &batches {
            store.write(batch).unwrap();
        }
    }
    let end = written.iter().map(|w| w.3).max().unwrap() + 10 * MS;
    for case in 0..300 {
        let picked: Vec<usize> = (0..3).filter(|_| next(2) == 1).collect();
        let picked = if picked.is_empty() { vec![0] } else { picked };
        let from = MS + next(end - MS);
        let to = if case % 10 == 0 {
            u64::MAX
        } else {
            from + next(600) * MS
        };
        let limit = if next(3) == 0 { 1 + next(30) } else { 0 };
        let after = (next(4) == 0).then(|| {
            let w = written[next(written.len() as u64) as usize];
            (w.0, w.1)
        });
        let expected: Vec<(u64, String, u64)> = written
            .iter()
            .filter(|w| picked.contains(&w.2) && w.3 >= from && w.3 < to)
            .filter(|w| case % 2 == 1 || w.5 == 3)
            .filter(|w| after.is_none_or(|a| (w.0, w.1) >= a))
            .take(if limit == 0 {
                usize::MAX
            } else {
                limit as usize
            })
            .map(|w| (w.0, NAMES[w.2].to_owned(), w.4))
            .collect();
        let query = Query {
            instruments: picked.iter().map(|&i| NAMES[i].to_owned()).collect(),
            channels: if case % 2 == 0 { vec![3] } else { Vec::new() },
            from,
            to,
            limit,
            after,
        };
        let mut got = Vec::new();
        store
            .query(&query, &mut |run, bytes| {
                let e = pb::StreamResponse::decode(bytes).unwrap().events.remove(0);
                got.push((run, e.instrument, e.sequence));
                true
            })
            .unwrap();
        assert_eq!(got, expected, "case {case}: {query:?}");
    }
    written.len() as u64
}

/// Regression: with checkpoints only from a background thread, the WAL was never started
/// over while the writer committed every few ms (255 MB after 10 s of the default
/// server). Small batches are written back to back while a slow reader keeps querying;
/// the WAL file must never pass its bound, and every row must read back.
#[test]
fn the_sqlite_wal_stays_under_its_bound_while_writing_with_a_slow_reader() {
    use raven_server::store::sqlite::WAL_LIMIT;
    const NAMES: [&str; 8] = ["W:A", "W:B", "W:C", "W:D", "W:E", "W:F", "W:G", "W:H"];
    const BATCHES: u64 = 1200;
    const ROWS: u64 = 100;
    let dir = raven_testkit::scratch_dir!("sqlite-wal");
    let path = dir.join("raven.db");
    let wal = dir.join("raven.db-wal");
    let mut store = SqliteStore::open(&path).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), path.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut store = SqliteStore::open(&path).unwrap();
            while !stop.load(Ordering::Relaxed) {
                // A client that reads slowly: a pause every 1,000 rows.
                let mut seen = 0u64;
                store
                    .query(&Query::all(&NAMES, &[]), &mut |_, _| {
                        seen += 1;
                        if seen.is_multiple_of(1000) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        !stop.load(Ordering::Relaxed)
                    })
                    .unwrap();
                reads += 1;
            }
            reads
        })
    };
    let mut largest = 0;
    for number in 0..BATCHES {
        let mut batch = Batch::new(1, number);
        for i in 0..ROWS {
            let n = number * ROWS + i;
            let event = Event {
                instrument: InstrumentId(0),
                sequence: Sequence(n / 8 + 1),
                exchange_time: UnixNanos(n),
                receive_time: UnixNanos(n),
                publish_time: UnixNanos(1_000_000 + n * 1000),
                venue_seq: 0,
                body: EventBody::Trade(Trade {
                    price: p("65000.25"),
                    qty: q("0.5"),
                    aggressor: Aggressor::Buy,
                    trade_id: format!("t{n}"),
                }),
            };
            batch.push(&instrument(NAMES[(n % 8) as usize]), &event);
        }
        store.write(&batch).unwrap();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0, "the reader ran");
    assert!(
        largest <= WAL_LIMIT,
        "the WAL reached {largest} bytes; its bound is {WAL_LIMIT}"
    );
    assert_eq!(store.count().unwrap(), BATCHES * ROWS);
    let mut got = 0u64;
    store
        .query(&Query::all(&NAMES, &[]), &mut |_, _| {
            got += 1;
            true
        })
        .unwrap();
    assert_eq!(got, BATCHES * ROWS);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    drop(store);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_store_urls_and_schemas_are_refused_with_the_reason() {
    let err = |r: Result<Box<dyn Store>, store::StoreError>| r.err().unwrap().to_string();
    assert_eq!(
        err(store::open("mysql://localhost/x", "raven")),
        "store \"mysql://localhost/x\": expected postgres://…, sqlite:PATH or a file path"
    );
    assert_eq!(
        err(store::open("sqlite:", "raven")),
        "store \"sqlite:\": expected postgres://…, sqlite:PATH or a file path"
    );
    assert!(
        err(store::open(PG, "Robert'); DROP TABLE x;--"))
            .starts_with("postgres schema \"Robert'); DROP TABLE x;--\": use lower-case letters")
    );
}

#[test]
fn a_sqlite_file_of_another_layout_is_refused_not_written_into() {
    let dir = raven_testkit::scratch_dir!("sqlite-layout");
    let path = dir.join("old.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE events (run INTEGER, exchange_time INTEGER)")
        .unwrap();
    drop(conn);
    let error = SqliteStore::open(&path).err().unwrap().to_string();
    assert_eq!(
        error,
        format!(
            "corrupt data: {} holds events in layout version 0, this Raven writes version 4; move the file aside",
            path.display()
        )
    );
}

#[test]
fn a_sqlite_file_of_the_layout_before_is_read_and_upgraded_by_its_first_write() {
    let dir = raven_testkit::scratch_dir!("sqlite-upgrade");
    let path = dir.join("v3.db");
    let events = fixture();
    let (first, second) = events.split_at(3);
    let mut store = SqliteStore::open(&path).unwrap();
    store.write(&batch(7, 0, first)).unwrap();
    drop(store);
    // Layout 3 was this one with a claim table, holding a row per batch written.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE batches (run INTEGER NOT NULL, number INTEGER NOT NULL, \
         rows INTEGER NOT NULL, PRIMARY KEY (run, number)) WITHOUT ROWID; \
         INSERT INTO batches VALUES (7, 0, 3); PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);
    let tables = |path: &std::path::Path| {
        let conn = rusqlite::Connection::open(path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        let batches: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'batches'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (version, batches)
    };
    // Opened and read: nothing written.
    let mut store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.count().unwrap(), 3);
    assert_eq!(tables(&path), (3, 1));
    // The first write upgrades it; the batch stored before is still claimed by its
    // events, so its retry is skipped.
    store.write(&batch(7, 0, first)).unwrap();
    assert_eq!(tables(&path), (4, 0));
    store.write(&batch(7, 1, second)).unwrap();
    assert_eq!(store.count().unwrap(), events.len() as u64);
    assert_eq!(store.integrity_check().unwrap(), "ok");
    drop(store);
    // Opened again, it is of this layout.
    let mut again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.count().unwrap(), events.len() as u64);
}

#[test]
fn a_postgres_schema_of_another_layout_is_refused_not_written_into() {
    if !postgres_available() {
        return;
    }
    let schema = unique_schema("layout");
    let mut client = postgres::Client::connect(PG, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; CREATE TABLE {schema}.events (run BIGINT)"
        ))
        .unwrap();
    let error = PostgresStore::connect(PG, &schema)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        format!(
            "corrupt data: schema {schema} holds events in layout version 1, this Raven writes version 3; use another schema"
        )
    );
    // A fresh schema is laid out once; opening it again finds its own layout.
    let fresh = unique_schema("layout_fresh");
    drop(PostgresStore::connect(PG, &fresh).unwrap());
    let mut again = PostgresStore::connect(PG, &fresh).unwrap();
    assert_eq!(again.count().unwrap(), 0);
    drop(again);
    drop_schema(&schema);
    drop_schema(&fresh);
}
