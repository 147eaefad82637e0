//! Recorder write throughput (SQLite at each page size), the read rate replay and
//! history stand on, and what the time index buys: engine output (simulator events through a shard, so the mix of
//! deltas, trades, BBO and candles is the real one) in batches of 50,000 rows, each
//! written in one transaction, into a SQLite file and into PostgreSQL (127.0.0.1:5432,
//! a schema of its own, dropped afterwards; skipped with a message when it is not up).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use raven_model::{Event, InstrumentRegistry, UnixNanos};
use raven_server::clock::Clock;
use raven_server::engine::{Shard, ShardContext, Tapped};
use raven_server::fanout::Fanout;
use raven_server::feed::Catalog;
use raven_server::feed::sim::{SimConfig, Simulator};
use raven_server::store::postgres::PostgresStore;
use raven_server::store::sqlite::SqliteStore;
use raven_server::store::{Batch, Query, Store, row};

const ROWS: usize = 50_000;
const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A clock that moves 10 ms each time it is read (the shard reads it once per input
/// batch of 10,000 events: the simulator's own 1,000,000 events/s): publish times, and so where the time index's marks fall, are
/// the same in every run and every build. With the wall clock they followed how fast the
/// bench generated its data, and a 10 ms window's read varied from 11 to 32 ms between
/// runs of one build.
#[derive(Default)]
struct StepClock(std::sync::atomic::AtomicU64);

impl Clock for StepClock {
    fn now(&self) -> UnixNanos {
        let step = 10_000_000;
        UnixNanos(1_764_300_000_000_000_000 + self.0.fetch_add(step, Ordering::Relaxed))
    }
}

/// Engine output for about `rows` events, as the recorder's tap receives it.
fn engine_output(rows: usize) -> (InstrumentRegistry, Vec<Arc<Tapped>>) {
    let registry = InstrumentRegistry::new();
    let config = SimConfig {
        seed: 3,
        rate: 1_000_000,
        levels: 25,
    };
    let mut sim = Simulator::new(&config, &registry, UnixNanos(1_764_300_000_000_000_000));
    let mut ctx = ShardContext::new(
        Catalog::new(registry.clone()),
        Arc::new(StepClock::default()),
        Arc::new(Fanout::default()),
    );
    let (tap, tapped) = crossbeam_channel::unbounded::<Arc<Tapped>>();
    ctx.taps.push(tap);
    let mut shard = Shard::new(ctx);
    let mut input = Vec::new();
    sim.snapshots(None, &mut input);
    shard.process(input);
    let mut out = Vec::new();
    let mut events = 0;
    while events < rows {
        let mut input = Vec::new();
        sim.generate(10_000, &mut input);
        shard.process(input);
        while let Ok(batch) = tapped.try_recv() {
            events += batch.rows().len();
            out.push(batch);
        }
    }
    (registry, out)
}

/// `batches` batches of `ROWS` engine events, numbered from 0, built as the recorder
/// builds them.
fn engine_batches(batches: usize) -> Vec<Batch> {
    let (registry, output) = engine_output(batches * ROWS);
    let name = |id| registry.name(id).expect("registered");
    let mut out = vec![Batch::new(1, 0)];
    for tapped in &output {
        let mut taken = 0;
        while taken < tapped.rows().len() && out.len() <= batches {
            let batch = out.last_mut().expect("one at least");
            let n = (ROWS - batch.len()).min(tapped.rows().len() - taken);
            batch.extend(tapped, taken..taken + n, name);
            taken += n;
            if batch.len() == ROWS {
                out.push(Batch::new(1, out.len() as u64));
            }
        }
    }
    out.truncate(batches);
    out
}

/// What the recorder does with engine output before a store sees it, now and as it was:
/// a batch built from the tap's bytes and columns, against encoding every event again;
/// its rows' columns read as kept, against parsing them back from the bytes (what a
/// batch from the spill file still does).
fn bench_intake(c: &mut Criterion) {
    let (registry, output) = engine_output(ROWS);
    let name = |id| registry.name(id).expect("registered");
    let events: Vec<Event> = output.iter().flat_map(|t| t.events()).collect();
    let rows = output.iter().map(|t| t.rows().len()).sum::<usize>() as u64;
    let mut g = c.benchmark_group("recorder_intake");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("batch_copied_from_the_tap", |b| {
        b.iter(|| {
            let mut batch = Batch::new(1, 0);
            for tapped in &output {
                batch.extend(tapped, 0..tapped.rows().len(), name);
            }
            batch
        })
    });
    g.bench_function("batch_encoded_again", |b| {
        b.iter(|| {
            let mut batch = Batch::new(1, 0);
            for event in &events {
                batch.push(&name(event.instrument), event);
            }
            batch
        })
    });
    let mut batch = Batch::new(1, 0);
    for tapped in &output {
        batch.extend(tapped, 0..tapped.rows().len(), name);
    }
    g.bench_function("columns_kept", |b| {
        b.iter(|| batch.rows().map(|r| r.sequence).sum::<u64>())
    });
    g.bench_function("columns_parsed_back", |b| {
        b.iter(|| {
            let mut start = 0;
            let mut sum = 0;
            for &end in batch.ends() {
                let row = row(&batch.bytes()[start..end as usize]).expect("a row scans");
                start = end as usize;
                sum += row.sequence;
            }
            sum
        })
    });
    g.finish();
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
    let from = middle.rows().next().expect("rows").publish_time;
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
    // The other page sizes a file can have (Raven keeps an existing file's): blocks are
    // smaller with smaller pages (they stay within a page's cell).
    for page in [16384, 65536] {
        let path = dir.join(format!("bench-{page}.db"));
        let conn = rusqlite::Connection::open(&path).expect("create sqlite");
        conn.pragma_update(None, "page_size", page)
            .expect("page size");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("WAL");
        drop(conn);
        let mut sqlite = SqliteStore::open(&path).expect("open sqlite");
        bench_store(
            c,
            &format!("sqlite_{}k_pages", page / 1024),
            &mut sqlite,
            batches,
        );
        drop(sqlite);
    }
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

criterion_group!(benches, bench_intake, stores);
criterion_main!(benches);
