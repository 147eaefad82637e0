//! The engine on its own threads, fed by the simulator and by hand, observed through a
//! lossless tap: sequencing, derived BBO and candles, snapshots, and refused updates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use prost::Message;
use raven_book::BookFollower;
use raven_model::{
    Bbo, BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Event, EventBody, FeedEvent,
    FeedKind, InstrumentId, InstrumentName, InstrumentRegistry, Level, LevelChange, Price, Qty,
    Sequence, Side, SnapshotKind, StatusKind, Trade, UnixNanos,
};
use raven_server::clock::{Clock, SystemClock};
use raven_server::engine::{Command, Engine, EngineConfig, EngineInput, ShardContext, Tapped};
use raven_server::fanout::{Fanout, LagPolicy, QueueBound};
use raven_server::feed::sim::{SimConfig, Simulator};
use raven_server::feed::{Catalog, InstrumentInfo};
use raven_server::store::Batch;

struct Harness {
    engine: Engine,
    input: EngineInput,
    tap: Receiver<Arc<Tapped>>,
    resync: Receiver<InstrumentId>,
}

/// An engine over `registry`'s instruments, all owned by one feed whose resync
/// requests the harness holds.
fn start(registry: &InstrumentRegistry, shards: usize) -> Harness {
    let (tap_tx, tap) = bounded(1024);
    let catalog = Catalog::new(registry.clone());
    let (feed, resync, _) = catalog.add_feed("test");
    for (_, name) in registry.all() {
        let tick_size = Price::ZERO;
        catalog.add(InstrumentInfo { name, tick_size }, feed);
    }
    let mut ctx = ShardContext::new(catalog, Arc::new(SystemClock), Arc::new(Fanout::default()));
    ctx.taps.push(tap_tx);
    let engine = Engine::start(EngineConfig::with_shards(shards), ctx).unwrap();
    let input = engine.input();
    Harness {
        engine,
        input,
        tap,
        resync,
    }
}

/// Reads the tap until `n` events for which `counts` holds have come out. Tap batches
/// hold the whole output of an input batch, so derived events are never cut off.
fn collect_until(
    tap: &Receiver<Arc<Tapped>>,
    n: usize,
    counts: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    while out.iter().filter(|e| counts(e)).count() < n {
        let batch = tap
            .recv_timeout(Duration::from_secs(30))
            .expect("engine output");
        out.extend(batch.events());
    }
    out
}

fn collect(tap: &Receiver<Arc<Tapped>>, n: usize) -> Vec<Event> {
    collect_until(tap, n, |_| true)
}

fn snapshot(engine: &Engine, id: InstrumentId, depth: u32) -> Event {
    let (reply, answer) = tokio::sync::oneshot::channel();
    engine
        .commands()
        .send(
            id,
            Command::Snapshot {
                instrument: id,
                depth,
                reply,
            },
        )
        .unwrap();
    answer.blocking_recv().unwrap()
}

#[test]
fn simulated_market_is_sequenced_and_derived_exactly() {
    let registry = InstrumentRegistry::new();
    let mut sim = Simulator::new(
        &SimConfig {
            seed: 11,
            rate: 10_000,
            levels: 25,
        },
        &registry,
        UnixNanos(1_000),
    );
    let h = start(&registry, 2);
    let mut feed = Vec::new();
    sim.snapshots(None, &mut feed);
    sim.generate(60_000, &mut feed);
    let fed = feed.len();
    let trades_fed = feed
        .iter()
        .filter(|e| matches!(e.kind, FeedKind::Trade(_)))
        .count();
    for chunk in feed.chunks(1000) {
        assert!(h.input.send(chunk.to_vec()));
    }
    // Every book update and trade comes out (none is refused), with derived events.
    let events = collect_until(&h.tap, fed, |e| {
        matches!(e.body.channel(), Channel::Book | Channel::Trades)
    });

    let mut seqs: HashMap<(InstrumentId, Channel), u64> = HashMap::new();
    let mut books: HashMap<InstrumentId, BookFollower> = HashMap::new();
    let mut bbos: HashMap<InstrumentId, Bbo> = HashMap::new();
    let mut trades: HashMap<InstrumentId, Vec<(UnixNanos, Price, Qty)>> = HashMap::new();
    let mut candles: Vec<(InstrumentId, Candle)> = Vec::new();
    for e in &events {
        let channel = e.body.channel();
        let last = seqs.entry((e.instrument, channel)).or_default();
        assert_eq!(
            e.sequence.0,
            *last + 1,
            "{channel:?} sequence of {:?} not contiguous",
            e.instrument
        );
        *last = e.sequence.0;
        let follower = books.entry(e.instrument).or_default();
        if channel == Channel::Book {
            follower.apply(e.sequence.0, &e.body).unwrap();
        }
        match &e.body {
            EventBody::Snapshot(_) | EventBody::Delta(_) => {}
            EventBody::Bbo(b) => {
                let book = follower.book().unwrap();
                assert_eq!(
                    *b,
                    Bbo {
                        bid: book.best_bid(),
                        ask: book.best_ask()
                    },
                    "BBO derived from the book"
                );
                assert_ne!(
                    bbos.insert(e.instrument, *b),
                    Some(*b),
                    "BBO only on change"
                );
            }
            EventBody::Trade(t) => {
                trades
                    .entry(e.instrument)
                    .or_default()
                    .push((e.exchange_time, t.price, t.qty))
            }
            EventBody::Candle(c) => candles.push((e.instrument, *c)),
            EventBody::Status(s) => panic!("unexpected status {s:?}"),
        }
    }
    assert_eq!(trades.values().map(Vec::len).sum::<usize>(), trades_fed);

    // Each published candle equals the OHLCV recomputed from that bar's trades.
    assert!(
        candles
            .iter()
            .any(|(_, c)| c.interval == CandleInterval::Second1)
    );
    for (id, c) in &candles {
        let width = c.interval.nanos();
        let bar: Vec<_> = trades[id]
            .iter()
            .filter(|t| t.0.floor_to(width) == c.open_time)
            .collect();
        assert_eq!(c.trades, bar.len() as u64);
        assert_eq!(c.open, bar[0].1);
        assert_eq!(c.close, bar[bar.len() - 1].1);
        assert_eq!(c.high, bar.iter().map(|t| t.1).max().unwrap());
        assert_eq!(c.low, bar.iter().map(|t| t.1).min().unwrap());
        let volume = bar
            .iter()
            .fold(Qty::ZERO, |v, t| v.checked_add(t.2).unwrap());
        assert_eq!(c.volume, volume);
    }

    // Snapshots and the lock-free top of book agree with the replayed books.
    for (id, follower) in &books {
        let book = follower.book().unwrap();
        let snap = snapshot(&h.engine, *id, 0);
        assert_eq!(snap.sequence.0, seqs[&(*id, Channel::Book)]);
        assert_eq!(
            snap.body,
            EventBody::Snapshot(book.snapshot(0, SnapshotKind::Initial))
        );
        let top = h.engine.top_of_book(*id).unwrap();
        assert_eq!(
            top.sequence, snap.sequence,
            "the top carries the book's sequence"
        );
        assert_eq!(
            top.bbo,
            Bbo {
                bid: book.best_bid(),
                ask: book.best_ask()
            }
        );
        assert_eq!(top.bbo, bbos[id]);
    }
    h.engine.shutdown();
}

#[test]
fn refused_update_reports_status_requests_resync_and_is_never_half_applied() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    let h = start(&registry, 1);
    let lvl = |p: i64, q: i128| Level {
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    let ev = |kind| FeedEvent {
        instrument: id,
        exchange_time: UnixNanos(5),
        receive_time: UnixNanos(6),
        venue_seq: 0,
        kind,
    };
    let change = |side, p, q| LevelChange {
        side,
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    let initial = BookSnapshot {
        bids: vec![lvl(100, 1)],
        asks: vec![lvl(102, 1)],
        kind: SnapshotKind::Initial,
    };
    h.input.send(vec![
        ev(FeedKind::Snapshot(initial.clone())),
        // Valid first change, then one that would cross: the whole delta is refused.
        ev(FeedKind::Delta(BookDelta {
            changes: vec![change(Side::Bid, 99, 4), change(Side::Bid, 103, 1)],
        })),
        // While resyncing, deltas are not applied.
        ev(FeedKind::Delta(BookDelta {
            changes: vec![change(Side::Ask, 105, 3)],
        })),
    ]);
    let events = collect(&h.tap, 3);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(&events[0].body, EventBody::Snapshot(s) if s.kind == SnapshotKind::Initial));
    assert!(matches!(events[1].body, EventBody::Bbo(_)));
    match &events[2].body {
        EventBody::Status(s) => {
            assert_eq!((s.kind, s.channel), (StatusKind::Rejected, Channel::Book));
            assert!(s.detail.contains("cross"), "{}", s.detail);
        }
        other => panic!("expected a status, got {other:?}"),
    }
    assert_eq!(events[2].sequence, Sequence(2));
    assert_eq!(h.resync.recv_timeout(Duration::from_secs(5)).unwrap(), id);
    let snap = snapshot(&h.engine, id, 0);
    assert_eq!(snap.body, EventBody::Snapshot(initial));

    // A fresh snapshot ends the resync; it is flagged so subscribers replace their book.
    let fresh = BookSnapshot {
        bids: vec![lvl(98, 2)],
        asks: vec![lvl(101, 7)],
        kind: SnapshotKind::Initial,
    };
    h.input.send(vec![ev(FeedKind::Snapshot(fresh.clone()))]);
    let events = collect(&h.tap, 1);
    assert_eq!(events[0].sequence, Sequence(3));
    assert_eq!(
        events[0].body,
        EventBody::Snapshot(BookSnapshot {
            kind: SnapshotKind::Resync,
            ..fresh
        })
    );
    h.engine.shutdown();
}

#[test]
fn a_feed_status_reaches_clients_with_what_it_missed() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    let h = start(&registry, 1);
    let trade = |trade_id: &str| {
        FeedKind::Trade(Trade {
            price: Price::from_units(100),
            qty: Qty::from_units(1),
            aggressor: raven_model::Aggressor::Sell,
            trade_id: trade_id.to_owned(),
        })
    };
    let gap = FeedKind::Status(raven_model::Status {
        kind: StatusKind::Gap,
        channel: Channel::Trades,
        missed: 3,
        detail: "trade ids 2..=4 never arrived".to_owned(),
    });
    let events: Vec<FeedEvent> = [trade("1"), gap.clone(), trade("5")]
        .into_iter()
        .map(|kind| FeedEvent {
            instrument: id,
            exchange_time: UnixNanos(5),
            receive_time: UnixNanos(6),
            venue_seq: 0,
            kind,
        })
        .collect();
    h.input.send(events);
    let out: Vec<Event> = collect_until(&h.tap, 3, |e| e.body.channel() == Channel::Trades)
        .into_iter()
        .filter(|e| e.body.channel() == Channel::Trades)
        .collect();
    let FeedKind::Status(expected) = gap else {
        unreachable!()
    };
    assert_eq!(out[1].body, EventBody::Status(expected));
    let seqs: Vec<u64> = out.iter().map(|e| e.sequence.0).collect();
    assert_eq!(seqs, [1, 2, 3]);
    h.engine.shutdown();
}

/// A wall clock the test sets.
struct SetClock(std::sync::atomic::AtomicU64);

impl Clock for SetClock {
    fn now(&self) -> UnixNanos {
        UnixNanos(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// One shard over `registry` on `clock`, with `configure` applied, and its tap.
fn start_on(
    registry: &InstrumentRegistry,
    clock: Arc<SetClock>,
    configure: impl FnOnce(&mut ShardContext),
) -> (Engine, Receiver<Arc<Tapped>>) {
    let (tap_tx, tap) = bounded(1024);
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        clock,
        Arc::new(Fanout::default()),
    );
    ctx.taps.push(tap_tx);
    configure(&mut ctx);
    (
        Engine::start(EngineConfig::with_shards(1), ctx).unwrap(),
        tap,
    )
}

#[test]
fn publish_times_never_go_backwards_when_the_wall_clock_does() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    let clock = Arc::new(SetClock(1_000.into()));
    let (engine, tap) = start_on(&registry, clock.clone(), |_| {});
    let mut published = Vec::new();
    // The clock reads 1000, is stepped back to 500, then moves on to 2000.
    for (wall, n) in [(1_000, 1), (500, 2), (2_000, 3)] {
        clock.0.store(wall, std::sync::atomic::Ordering::SeqCst);
        assert!(engine.input().send(vec![FeedEvent {
            instrument: id,
            exchange_time: UnixNanos(n),
            receive_time: UnixNanos(n),
            venue_seq: 0,
            kind: FeedKind::Trade(Trade {
                price: Price::from_units(100),
                qty: Qty::from_units(1),
                aggressor: raven_model::Aggressor::Buy,
                trade_id: n.to_string(),
            }),
        }]));
        let events = collect_until(&tap, 1, |e| matches!(e.body, EventBody::Trade(_)));
        published.extend(
            events
                .iter()
                .filter(|e| matches!(e.body, EventBody::Trade(_)))
                .map(|e| e.publish_time.0),
        );
    }
    assert_eq!(published, vec![1_000, 1_000, 2_000]);
    engine.shutdown();
}

fn trade(instrument: InstrumentId, n: u64) -> FeedEvent {
    FeedEvent {
        instrument,
        exchange_time: UnixNanos(n),
        receive_time: UnixNanos(n),
        venue_seq: 0,
        kind: FeedKind::Trade(Trade {
            price: Price::from_units(100),
            qty: Qty::from_units(i128::from(n)),
            aggressor: raven_model::Aggressor::Buy,
            trade_id: n.to_string(),
        }),
    }
}

/// Waits (polling, never sleeping a fixed time) until `ready` holds.
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::yield_now();
    }
}

#[test]
fn batches_waiting_behind_a_busy_shard_are_published_together_and_exactly() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    // A tap of one slot: while its batch is unread, the shard waits in its next flush.
    let (tap_tx, tap) = bounded(1);
    let fanout = Arc::new(Fanout::default());
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        fanout.clone(),
    );
    ctx.taps.push(tap_tx);
    let engine = Engine::start(EngineConfig::with_shards(1), ctx).unwrap();
    let mailbox = fanout.open(
        QueueBound {
            events: 1024,
            bytes: 1 << 20,
        },
        LagPolicy::Gap,
    );
    let (done, subscribed) = tokio::sync::oneshot::channel();
    engine
        .commands()
        .send(
            id,
            Command::Subscribe {
                mailbox: mailbox.clone(),
                instrument: id,
                channel: Channel::Trades,
                depth: 0,
                state: true,
                done,
            },
        )
        .unwrap();
    subscribed.blocking_recv().unwrap();
    let stats = engine.stats();
    let shard = &stats.shards()[0];
    let input = engine.input();
    // Trade 1 fills the tap, which is left unread.
    assert!(input.send(vec![trade(id, 1)]));
    wait_for("trade 1 published", || shard.flushes.get() == 1);
    // The shard takes trade 2 (with whatever of 3 to 5 has arrived by then) and its flush
    // waits for the tap; the rest waits for the shard. Without coalescing, that would be
    // four flushes.
    for n in 2..=5 {
        assert!(input.send(vec![trade(id, n)]));
    }
    let mut tapped: Vec<Vec<u64>> = Vec::new();
    while tapped.iter().map(Vec::len).sum::<usize>() < 5 {
        let batch = tap.recv_timeout(Duration::from_secs(30)).unwrap();
        tapped.push(batch.events().iter().map(|e| e.sequence.0).collect());
    }
    assert_eq!(tapped[0], vec![1]);
    assert_eq!(tapped.concat(), vec![1, 2, 3, 4, 5]);
    assert!(tapped.len() <= 3, "{tapped:?}");
    assert_eq!(shard.batches.get(), 5);
    assert_eq!(shard.flushes.get(), tapped.len() as u64);
    // The subscriber got every trade once, in order.
    let drained = mailbox.drain(usize::MAX);
    let bytes = drained.batch.encode_to_vec();
    let response = raven_proto::pb::StreamResponse::decode(bytes.as_slice()).unwrap();
    let trades: Vec<(u64, u64)> = response
        .events
        .iter()
        .filter_map(|e| match &e.body {
            Some(raven_proto::pb::event::Body::Trade(t)) => Some((e.sequence, t.qty)),
            _ => None,
        })
        .collect();
    assert_eq!(trades, (1..=5).map(|n| (n, n)).collect::<Vec<_>>());
    engine.shutdown();
}

#[test]
fn what_the_engine_taps_is_what_the_recorder_would_encode_and_parse() {
    let registry = InstrumentRegistry::new();
    let mut sim = Simulator::new(
        &SimConfig {
            seed: 5,
            rate: 10_000,
            levels: 25,
        },
        &registry,
        UnixNanos(1_000),
    );
    // Checkpoints every 20 book events, so the tap carries some.
    let (tap_tx, tap) = bounded(1024);
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        Arc::new(Fanout::default()),
    );
    ctx.taps.push(tap_tx);
    ctx.checkpoint_every = 20;
    let engine = Engine::start(EngineConfig::with_shards(1), ctx).unwrap();
    let mut feed = Vec::new();
    sim.snapshots(None, &mut feed);
    sim.generate(20_000, &mut feed);
    for chunk in feed.chunks(500) {
        assert!(engine.input().send(chunk.to_vec()));
    }
    engine.shutdown();
    let name = |id| registry.name(id).unwrap();
    let (mut rows, mut checkpoints) = (0, 0);
    for (number, tapped) in tap.try_iter().enumerate() {
        let mut kept = Batch::new(1, number as u64);
        kept.extend(&tapped, 0..tapped.rows().len(), name);
        // The columns kept are the ones parsing the bytes back gives.
        let parsed = Batch::from_parts(
            1,
            number as u64,
            kept.bytes().to_vec(),
            kept.ends().to_vec(),
        )
        .unwrap();
        assert_eq!(kept, parsed);
        // The bytes are the ones encoding the events again gives.
        let mut encoded = Batch::new(1, number as u64);
        for event in tapped.events() {
            encoded.push(&name(event.instrument), &event);
        }
        assert_eq!(kept, encoded);
        rows += kept.len();
        checkpoints += kept.rows().filter(|r| r.channel == 0).count();
    }
    assert!(
        rows > 20_000 && checkpoints > 100,
        "{rows} rows, {checkpoints} checkpoints"
    );
}

#[test]
fn a_changed_book_is_checkpointed_a_minute_after_its_last_checkpoint_with_what_a_replica_needs() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:X").unwrap());
    let t0 = 1_000 * UnixNanos::PER_SECOND;
    let clock = Arc::new(SetClock(t0.into()));
    let (engine, tap) = start_on(&registry, clock.clone(), |ctx| {
        ctx.checkpoint_every = 1_000;
        ctx.replica_checkpoints = true;
    });
    let book = |kind, n: u64| FeedEvent {
        instrument: id,
        exchange_time: UnixNanos(n),
        receive_time: UnixNanos(n),
        venue_seq: n,
        kind,
    };
    let bid = |p, q| LevelChange {
        side: Side::Bid,
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    // Sends `events` at `secs` past t0; returns what was tapped for them.
    let at = |secs: u64, events: Vec<FeedEvent>| {
        clock.0.store(
            t0 + secs * UnixNanos::PER_SECOND,
            std::sync::atomic::Ordering::SeqCst,
        );
        assert!(engine.input().send(events));
        tap.recv_timeout(Duration::from_secs(30))
            .expect("engine output")
    };
    let first = at(
        0,
        vec![
            book(
                FeedKind::Snapshot(BookSnapshot {
                    bids: vec![Level {
                        price: Price::from_units(100),
                        qty: Qty::from_units(1),
                    }],
                    asks: vec![Level {
                        price: Price::from_units(102),
                        qty: Qty::from_units(1),
                    }],
                    kind: SnapshotKind::Initial,
                }),
                1,
            ),
            trade(id, 2),
        ],
    );
    // A bid below the best: a book change that leaves the BBO as it is.
    let bid_at = |secs, price, qty, n| {
        let changes = vec![bid(price, qty)];
        at(secs, vec![book(FeedKind::Delta(BookDelta { changes }), n)])
    };
    let checkpoints = |t: &Tapped| t.rows().iter().filter(|r| r.channel == 0).count();
    assert_eq!((checkpoints(&first), first.replicas().len()), (0, 0));
    let early = bid_at(59, 99, 2, 3);
    assert_eq!(checkpoints(&early), 0, "59 s after the book's first events");

    // A minute after: the delta, then the book's checkpoint with its replica state.
    let due = bid_at(60, 98, 3, 4);
    assert_eq!(checkpoints(&due), 1);
    let events = due.events();
    let row = due.rows().iter().position(|r| r.channel == 0).unwrap();
    let EventBody::Snapshot(snapshot) = &events[row].body else {
        panic!("{:?}", events[row])
    };
    assert_eq!(snapshot.kind, SnapshotKind::Checkpoint);
    assert_eq!(snapshot.bids.len(), 3);
    let [replica] = due.replicas() else {
        panic!("{:?}", due.replicas())
    };
    assert_eq!(replica.row as usize, row);
    // Book 3 (the snapshot and two deltas), BBO 1 (the deltas were below the best bid),
    // trades 1, candles none yet.
    let sequences: Vec<u64> = replica.sequences.iter().map(|(_, s)| s.0).collect();
    assert_eq!(sequences, [3, 1, 1, 0]);
    let bbo = raven_proto::pb::StreamResponse::decode(replica.bbo.clone().unwrap()).unwrap();
    assert_eq!(bbo.events[0].sequence, 1);
    let level = |p, q| Level {
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    assert_eq!(
        raven_proto::convert::body_from_pb(&bbo.events[0]).unwrap(),
        Some(EventBody::Bbo(Bbo {
            bid: Some(level(100, 1)),
            ask: Some(level(102, 1)),
        }))
    );

    // The age counts from that checkpoint.
    let after = bid_at(61, 97, 1, 5);
    assert_eq!(checkpoints(&after), 0);
    engine.shutdown();
}

#[test]
fn a_quiet_book_is_checkpointed_every_minute_for_the_edges() {
    let registry = InstrumentRegistry::new();
    let id = registry.intern(&InstrumentName::parse("TEST:QUIET").unwrap());
    let t0 = 1_000 * UnixNanos::PER_SECOND;
    let clock = Arc::new(SetClock(t0.into()));
    let (engine, tap) = start_on(&registry, clock.clone(), |ctx| {
        ctx.checkpoint_every = 1_000;
        ctx.replica_checkpoints = true;
    });
    let level = |p, q| Level {
        price: Price::from_units(p),
        qty: Qty::from_units(q),
    };
    let snapshot = BookSnapshot {
        bids: vec![level(100, 1)],
        asks: vec![level(102, 1)],
        kind: SnapshotKind::Initial,
    };
    assert!(engine.input().send(vec![FeedEvent {
        instrument: id,
        exchange_time: UnixNanos(1),
        receive_time: UnixNanos(1),
        venue_seq: 1,
        kind: FeedKind::Snapshot(snapshot.clone()),
    }]));
    let first = tap.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        first.rows().iter().all(|r| r.channel != 0),
        "no checkpoint yet"
    );
    // No event since: a minute on, the sweep checkpoints it, and a minute later again.
    for minutes in 1..=2 {
        clock.0.store(
            t0 + minutes * 61 * UnixNanos::PER_SECOND,
            std::sync::atomic::Ordering::SeqCst,
        );
        let swept = tap.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(swept.rows().len(), 1);
        assert_eq!(swept.rows()[0].channel, 0, "a checkpoint snapshot");
        let [replica] = swept.replicas() else {
            panic!("{:?}", swept.replicas())
        };
        let sequences: Vec<u64> = replica.sequences.iter().map(|(_, s)| s.0).collect();
        assert_eq!(sequences, [1, 1, 0, 0]);
        let EventBody::Snapshot(book) = &swept.events()[0].body else {
            panic!("{:?}", swept.events())
        };
        assert_eq!((&book.bids, &book.asks), (&snapshot.bids, &snapshot.asks));
        assert_eq!(book.kind, SnapshotKind::Checkpoint);
    }
    engine.shutdown();
}
