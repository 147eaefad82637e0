//! Fan-out publish cost against subscriber count, and with one stalled subscriber; and
//! for subscribers that all take the trades of several instruments.
//!
//! `fanout_publish`: one shard, one instrument (SIM:BTC-USD), N subscribers to its full book. Each
//! iteration publishes a batch of simulator events (apply, encode once, push the shared
//! bytes to every mailbox). Mailboxes are drained outside the timed section, except the
//! stalled one, which is never drained: its queue fills, and from then on every push to it
//! is refused and its book view marked for resync.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use raven_model::{
    Aggressor, Channel, FeedEvent, FeedKind, InstrumentId, InstrumentName, InstrumentRegistry,
    Price, Qty, Trade, UnixNanos,
};
use raven_server::clock::SystemClock;
use raven_server::engine::{Command, Shard, ShardContext};
use raven_server::fanout::{Fanout, LagPolicy, Mailbox, QueueBound};
use raven_server::feed::Catalog;
use raven_server::feed::sim::{SimConfig, Simulator};

/// A shard over `registry`'s instruments, with a fan-out of its own.
fn shard(registry: &InstrumentRegistry) -> (Shard, Arc<Fanout>) {
    let fanout = Arc::new(Fanout::default());
    let ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        fanout.clone(),
    );
    (Shard::new(ctx), fanout)
}

/// A subscriber of `channel` on each of `instruments`, whose queue holds 8,192 events.
fn subscriber(
    shard: &mut Shard,
    fanout: &Fanout,
    instruments: &[InstrumentId],
    channel: Channel,
) -> Arc<Mailbox> {
    let mailbox = fanout.open(
        QueueBound {
            events: 8192,
            bytes: usize::MAX,
        },
        LagPolicy::Gap,
    );
    for &instrument in instruments {
        let (done, _) = tokio::sync::oneshot::channel();
        shard.command(Command::Subscribe {
            mailbox: mailbox.clone(),
            instrument,
            channel,
            depth: 0,
            state: true,
            done,
        });
    }
    mailbox
}

fn fanout(c: &mut Criterion) {
    let registry = InstrumentRegistry::new();
    let mut sim = Simulator::new(
        &SimConfig {
            seed: 3,
            rate: 1_000_000,
            levels: 25,
        },
        &registry,
        UnixNanos(1),
    );
    let btc = registry.all()[0].0;
    let mut snapshots = Vec::new();
    sim.snapshots(Some(btc), &mut snapshots);
    let mut events = Vec::new();
    sim.generate(400_000, &mut events);
    // Only BTC book events: every one of them goes to every subscriber.
    let events: Vec<FeedEvent> = events
        .into_iter()
        .filter(|e| e.instrument == btc && matches!(e.kind, FeedKind::Delta(_)))
        .collect();
    let batches: Vec<Vec<FeedEvent>> = events.chunks(100).map(<[FeedEvent]>::to_vec).collect();

    let mut g = c.benchmark_group("fanout_publish");
    g.throughput(Throughput::Elements(100));
    for (subscribers, stalled) in [(1, false), (100, false), (1000, false), (1000, true)] {
        let (mut shard, fanout) = shard(&registry);
        shard.process(snapshots.clone());
        let mailboxes: Vec<Arc<Mailbox>> = (0..subscribers)
            .map(|_| subscriber(&mut shard, &fanout, &[btc], Channel::Book))
            .collect();
        let readers = if stalled {
            &mailboxes[1..]
        } else {
            &mailboxes[..]
        };
        // Batches replay in order from the snapshot they were generated against (a delta
        // applied to another state could cross the book and be refused, and a refused book
        // publishes nothing). Checked once: no status event reaches a subscriber.
        for batch in &batches {
            shard.process(batch.clone());
            let out = readers[0].drain(usize::MAX).batch.encode_to_vec();
            let response = raven_proto::pb::StreamResponse::decode(out.as_slice()).unwrap();
            assert!(
                response
                    .events
                    .iter()
                    .all(|e| !matches!(e.body, Some(raven_proto::pb::event::Body::Status(_))))
            );
            for m in &readers[1..] {
                m.drain(usize::MAX);
            }
        }
        let label = if stalled {
            format!("{subscribers}_one_stalled")
        } else {
            subscribers.to_string()
        };
        let mut next = 0;
        g.bench_with_input(BenchmarkId::from_parameter(label), &subscribers, |b, _| {
            // Only `process` is timed; draining readers and re-applying the snapshot at
            // wrap-around happen between timings, in order.
            b.iter_custom(|iterations| {
                let mut timed = Duration::ZERO;
                for _ in 0..iterations {
                    for m in readers {
                        m.drain(usize::MAX);
                    }
                    if next == 0 {
                        shard.process(snapshots.clone());
                    }
                    // The shard consumes its input: copy it before the clock starts.
                    let batch = batches[next].clone();
                    next = (next + 1) % batches.len();
                    let start = Instant::now();
                    shard.process(batch);
                    timed += start.elapsed();
                }
                timed
            })
        });
        if stalled {
            assert!(
                fanout.lagged() > 0,
                "the stalled subscriber never overflowed"
            );
        }
    }
    g.finish();
}

/// `fanout_trades`: one shard, 8 instruments, 1,000 subscribers each taking the trades of
/// all 8 (as `raven bench` clients do); each iteration publishes a batch of 40 trades, five
/// an instrument (10,000 events/s arriving in 4 ms batches).
fn trades(c: &mut Criterion) {
    let registry = InstrumentRegistry::new();
    let ids: Vec<_> = (0..8)
        .map(|i| registry.intern(&InstrumentName::parse(&format!("BENCH:T{i}")).unwrap()))
        .collect();
    let (mut shard, fanout) = shard(&registry);
    let mailboxes: Vec<Arc<Mailbox>> = (0..1000)
        .map(|_| subscriber(&mut shard, &fanout, &ids, Channel::Trades))
        .collect();
    let batch: Vec<FeedEvent> = (0..40)
        .map(|n| FeedEvent {
            instrument: ids[n % ids.len()],
            exchange_time: UnixNanos(1),
            receive_time: UnixNanos(1),
            venue_seq: 0,
            kind: FeedKind::Trade(Trade {
                price: Price::from_units(100),
                qty: Qty::from_units(1),
                aggressor: Aggressor::Buy,
                trade_id: n.to_string(),
            }),
        })
        .collect();
    let mut g = c.benchmark_group("fanout_trades");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("8_instruments_1000", |b| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                for m in &mailboxes {
                    m.drain(usize::MAX);
                }
                let batch = batch.clone();
                let start = Instant::now();
                shard.process(batch);
                timed += start.elapsed();
            }
            timed
        })
    });
    g.finish();
    assert_eq!(fanout.lagged(), 0);
}

criterion_group!(benches, fanout, trades);
criterion_main!(benches);
