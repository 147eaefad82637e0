//! Engine throughput on one core, and the simulator's own speed.
//!
//! The engine bench applies simulator events to books, sequences them, derives BBO and
//! candles, and encodes every output event to the wire format once (one subscriber per
//! instrument on every channel, so nothing is skipped for lack of subscribers). The
//! mailbox is drained between batches as a client would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use raven_model::{Channel, FeedEvent, InstrumentRegistry, UnixNanos};
use raven_server::clock::SystemClock;
use raven_server::engine::{Command, Shard, ShardContext};
use raven_server::fanout::{Fanout, LagPolicy, QueueBound};
use raven_server::feed::Catalog;
use raven_server::feed::sim::{SimConfig, Simulator};

/// The simulated market both benches draw from.
fn simulator_for_bench() -> (InstrumentRegistry, Simulator) {
    let registry = InstrumentRegistry::new();
    let config = SimConfig {
        seed: 1,
        rate: 1_000_000,
        levels: 25,
    };
    let sim = Simulator::new(&config, &registry, UnixNanos(1));
    (registry, sim)
}

fn engine(c: &mut Criterion) {
    let (registry, mut sim) = simulator_for_bench();
    let mut warmup = Vec::new();
    sim.snapshots(None, &mut warmup);
    let batches: Vec<Vec<FeedEvent>> = (0..200)
        .map(|_| {
            let mut b = Vec::new();
            sim.generate(1000, &mut b);
            b
        })
        .collect();
    let events: usize = batches.iter().map(Vec::len).sum();

    let fanout = Arc::new(Fanout::default());
    let ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        fanout.clone(),
    );
    let mut shard = Shard::new(ctx);
    shard.process(warmup.clone());
    let mailbox = fanout.open(
        QueueBound {
            events: 1 << 30,
            bytes: usize::MAX,
        },
        LagPolicy::Gap,
    );
    for (id, _) in registry.all() {
        for channel in Channel::ALL {
            let (done, _) = tokio::sync::oneshot::channel();
            shard.command(Command::Subscribe {
                mailbox: mailbox.clone(),
                instrument: id,
                channel,
                depth: 0,
                state: true,
                done,
            });
        }
    }

    // Each pass restarts from the snapshots the deltas were generated against, so every
    // delta applies. Checked once here: a refused delta would leave its instrument waiting
    // for a snapshot and make the rest of the pass look cheap. The shard consumes its
    // input, so each pass gets fresh copies, made before the clock starts.
    let mut pass = |check: bool| -> Duration {
        shard.process(warmup.clone());
        mailbox.drain(usize::MAX);
        let input = batches.clone();
        let start = Instant::now();
        for batch in input {
            shard.process(batch);
            let drained = mailbox.drain(usize::MAX);
            if check {
                let response = raven_proto::pb::StreamResponse::decode(
                    drained.batch.encode_to_vec().as_slice(),
                )
                .unwrap();
                let refused = response
                    .events
                    .iter()
                    .filter(|e| matches!(e.body, Some(raven_proto::pb::event::Body::Status(_))))
                    .count();
                assert_eq!(refused, 0, "the engine refused simulator output");
            }
            std::hint::black_box(drained);
        }
        start.elapsed()
    };
    pass(true);
    pass(true);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(events as u64));
    g.sample_size(20);
    g.bench_function("sim_events_apply_sequence_encode", |b| {
        b.iter_custom(|iterations| (0..iterations).map(|_| pass(false)).sum())
    });
    g.finish();
}

/// The simulator alone: how fast it can produce events (it must sustain 1M/s).
fn simulator(c: &mut Criterion) {
    let (_registry, mut sim) = simulator_for_bench();
    let mut out = Vec::with_capacity(8192);
    let mut g = c.benchmark_group("sim");
    g.throughput(Throughput::Elements(4096));
    g.bench_function("generate_4096_events", |b| {
        b.iter(|| {
            out.clear();
            sim.generate(4096, &mut out);
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, engine, simulator);
criterion_main!(benches);
