//! Recorder write throughput, the read rate replay and history stand on, and what the
//! time index buys: engine output (simulator events through a shard, so the mix of
//! deltas, trades, BBO and candles is the real one) in batches of 50,000 rows, each
//! written in one transaction, into a SQLite file and into PostgreSQL (127.0.0.1:5432,
//! a schema of its own, dropped afterwards; skipped with a message when it is not up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use raven_model::{Event, InstrumentRegistry, UnixNanos};
use raven_server::clock::SystemClock;
use raven_server::engine::{Shard, ShardContext};
use raven_server::fanout::Fanout;
use raven_server::feed::Catalog;
use raven_server::feed::sim::{SimConfig, Simulator};
use raven_server::store::postgres::PostgresStore;
use raven_server::store::sqlite::SqliteStore;
use raven_server::store::{Batch, Query, Store};

const ROWS: usize = 50_000;
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// `batches` batches of `ROWS` engine events, numbered from 0.
fn engine_batches(batches: usize) -> Vec<Batch> {
    let registry = InstrumentRegistry::new();
    let config = SimConfig {
        seed: 3,
        rate: 1_000_000,
        levels: 25,
    };
    let mut sim = Simulator::new(&config, &registry, UnixNanos(1_764_300_000_000_000_000));
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(SystemClock),
        Arc::new(Fanout::default()),
    );
    let (tap, tapped) = crossbeam_channel::unbounded::<Arc<[Event]>>();
    ctx.taps.push(tap);
    let mut shard = Shard::new(ctx);
    let mut input = Vec::new();
    sim.snapshots(None, &mut input);
    shard.process(input);
    let mut events: Vec<Event> = Vec::new();
    while events.len() < batches * ROWS {
        let mut input = Vec::new();
        sim.generate(10_000, &mut input);
        shard.process(input);
        while let Ok(out) = tapped.try_recv() {
            events.extend(out.iter().cloned());
        }
    }
    events
        .chunks(ROWS)
        .take(batches)
        .enumerate()
        .map(|(number, chunk)| {
            let mut batch = Batch::new(1, number as u64);
            for event in chunk {
                let name = registry.name(event.instrument).expect("registered");
                batch.push(name.as_str(), event);
            }
            batch
        })
        .collect()
}

/// Reads every stored event back in record order, as `History.Query` and `Replay` do.
fn bench_read(c: &mut Criterion, name: &str, store: &mut dyn Store) {
    let mut rows = 0u64;
    let names = raven_server::feed::sim::instrument_names();
    let query = Query::all(&names, &[]);
    store
        .query(&query, &mut |_, _| {
            rows += 1;
            true
        })
        .expect("read");
    let mut g = c.benchmark_group("store_read");
    g.throughput(Throughput::Elements(rows));
    g.sample_size(10);
    g.bench_function(format!("{name}/{rows}_rows_in_record_order"), |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            store
                .query(&query, &mut |_, row| {
                    bytes += row.len();
                    true
                })
                .expect("read");
            bytes
        });
    });
    g.finish();
}

/// Writes each iteration's batch under a fresh number, so none is skipped as a repeat.
fn bench_store(c: &mut Criterion, name: &str, store: &mut dyn Store, batches: &[Batch]) {
    let mut g = c.benchmark_group("store_write");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    let mut number = 1_000_000u64;
    g.bench_function(format!("{name}/{ROWS}_rows_per_batch"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let template = &batches[i as usize % batches.len()];
                number += 1;
                let batch = Batch::from_parts(
                    template.run,
                    number,
                    template.bytes().to_vec(),
                    template.ends().to_vec(),
                )
                .expect("a valid batch");
                let start = Instant::now();
                store.write(&batch).expect("write");
                total += start.elapsed();
            }
            total
        });
    });
    g.finish();
}

/// A 10 ms window of one instrument from the middle of `WINDOW_BATCHES` batches, read
/// through the time index, beside the same instrument read whole (what any window cost
/// before the index: the run was scanned). `batches` are written first, as they were
/// recorded (publish times growing).
fn bench_window(c: &mut Criterion, name: &str, store: &mut dyn Store, batches: &[Batch]) {
    for batch in batches {
        store.write(batch).expect("write");
    }
    let middle = &batches[batches.len() / 2];
    let from = middle
        .rows()
        .next()
        .expect("rows")
        .expect("a row")
        .publish_time;
    let rows = (batches.len() * ROWS) as u64;
    let window = Query {
        from,
        to: from + 10_000_000,
        ..Query::all(&["SIM:BTC-USD"], &[])
    };
    let whole = Query::all(&["SIM:BTC-USD"], &[]);
    let mut g = c.benchmark_group("store_window");
    g.sample_size(10);
    for (what, query) in [("10ms_window", &window), ("whole_run", &whole)] {
        let mut found = 0u64;
        store
            .query(query, &mut |_, _| {
                found += 1;
                true
            })
            .expect("read");
        g.bench_function(format!("{name}/btc_{what}_{found}_of_{rows}_rows"), |b| {
            b.iter(|| {
                let mut bytes = 0usize;
                store
                    .query(query, &mut |_, row| {
                        bytes += row.len();
                        true
                    })
                    .expect("read");
                bytes
            });
        });
    }
    g.finish();
}

/// Batches for the window bench: 2M rows.
const WINDOW_BATCHES: usize = 40;

fn stores(c: &mut Criterion) {
    let recorded = engine_batches(WINDOW_BATCHES);
    let batches = &recorded[..4];
    let dir = std::env::temp_dir().join(format!("raven-store-bench-{}", std::process::id()));
    let mut sqlite = SqliteStore::open(&dir.join("bench.db")).expect("open sqlite");
    bench_store(c, "sqlite", &mut sqlite, batches);
    bench_read(c, "sqlite", &mut sqlite);
    drop(sqlite);
    let mut sqlite = SqliteStore::open(&dir.join("window.db")).expect("open sqlite");
    bench_window(c, "sqlite", &mut sqlite, &recorded);
    drop(sqlite);
    let _ = std::fs::remove_dir_all(&dir);

    if std::net::TcpStream::connect("127.0.0.1:5432").is_err() {
        eprintln!("SKIPPED postgres store bench: no server on 127.0.0.1:5432");
        return;
    }
    let schema = format!("raven_bench_{}", std::process::id());
    let mut pg = PostgresStore::connect(PG, &schema).expect("connect postgres");
    bench_store(c, "postgres", &mut pg, batches);
    bench_read(c, "postgres", &mut pg);
    drop(pg);
    let window_schema = format!("{schema}_window");
    let mut pg = PostgresStore::connect(PG, &window_schema).expect("connect postgres");
    bench_window(c, "postgres", &mut pg, &recorded);
    drop(pg);
    let mut admin = postgres::Client::connect(PG, postgres::NoTls).expect("connect postgres");
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {schema} CASCADE; DROP SCHEMA {window_schema} CASCADE"
        ))
        .expect("drop the bench schemas");
}

criterion_group!(benches, stores);
criterion_main!(benches);
