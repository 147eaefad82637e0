//! The recorder end to end, in a real server: every event the engine publishes is
//! stored once, in order, byte for byte what subscribers received, across every fault
//! it is built for: PostgreSQL connections cut, a SQLite file locked by another writer, a
//! full disk (a small tmpfs), and a queue and spill file too small for the outage, where
//! the loss is recorded as gaps. (`kill -9` and a real write error need the server as a
//! process: `crates/cli/tests/serve.rs`.)

#[path = "common/collect.rs"]
mod collect;
mod common;
#[path = "common/live.rs"]
mod live;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message;
use raven_proto::pb;
use raven_server::app::RunningServer;
use raven_server::recorder::RecorderStats;
use raven_server::store::sqlite::SqliteStore;
use raven_testkit::pg::{PG, drop_schema, postgres_available, unique_schema};
use raven_testkit::rows::{StoredRow, assert_contiguous, postgres_rows, sqlite_rows};

/// Live BTC trades as a subscriber received them, for `duration`.
async fn live_trades(addr: std::net::SocketAddr, duration: Duration) -> Vec<pb::Event> {
    let mut events = collect::events_for(addr, pb::Channel::Trades, duration).await;
    events.retain(|e| matches!(e.body, Some(pb::event::Body::Trade(_))));
    events
}

/// The live trades came without a gap, and are stored, byte for byte, at the same
/// sequences.
fn assert_live_trades_stored(live: &[pb::Event], rows: &[StoredRow]) {
    assert!(live.len() > 100, "only {} live trades", live.len());
    for pair in live.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence + 1, "live trades");
    }
    let stored: BTreeMap<i64, &[u8]> = rows
        .iter()
        .filter(|r| r.1 == "SIM:BTC-USD" && r.2 == pb::Channel::Trades as i16)
        .map(|r| (r.3, r.4.as_slice()))
        .collect();
    for trade in live {
        let bytes = stored
            .get(&(trade.sequence as i64))
            .unwrap_or_else(|| panic!("live trade {} not stored", trade.sequence));
        let as_sent = pb::StreamResponse {
            events: vec![trade.clone()],
        }
        .encode_to_vec();
        assert_eq!(*bytes, as_sent.as_slice(), "trade {}", trade.sequence);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_stores_every_event_once_in_order_as_subscribers_received_it() {
    let dir = common::scratch_dir("recorder-sqlite");
    let db = dir.join("raven.db");
    let server = common::server(|f| {
        f.sim.rate = 20_000;
        f.engine.shards = 2;
        f.store.url = format!("sqlite:{}", db.display());
    })
    .await;
    let live = live_trades(server.local_addr(), Duration::from_millis(1500)).await;
    let stats = server.recorder_stats().unwrap();
    server.shutdown().await.unwrap();

    let rows = sqlite_rows(&db);
    assert_stored_once(&stats, &rows, &live);
    assert!(rows.len() > 20_000, "{} events stored", rows.len());
    assert_eq!(stats.spilled.load(Ordering::Relaxed), 0);
    // Book, BBO, trades and candles were all recorded.
    let channels: std::collections::BTreeSet<i16> = rows.iter().map(|r| r.2).collect();
    assert_eq!(channels.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let store = SqliteStore::open(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

/// Waits for the recorder to have reconnected and emptied the spill file (it retries
/// every second and backfills beside live recording), stops the server, and checks the
/// store failed, something spilled, and all of it was backfilled.
async fn backfilled_then_stopped(server: RunningServer) -> Arc<RecorderStats> {
    let stats = server.recorder_stats().unwrap();
    // A debug build on a busy machine backfills slowly: the deadline only guards a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(stats.store_up.load(Ordering::Relaxed)
        && stats.spill_bytes.load(Ordering::Relaxed) == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the spill file was never backfilled: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
    assert!(stats.failures.load(Ordering::Relaxed) >= 1);
    let spilled = stats.spilled.load(Ordering::Relaxed);
    assert!(spilled > 0, "nothing was spilled");
    assert_eq!(stats.backfilled.load(Ordering::Relaxed), spilled);
    stats
}

/// One run, every event the engine published stored exactly once, the live trades
/// among them byte for byte.
fn assert_stored_once(stats: &RecorderStats, rows: &[StoredRow], live: &[pb::Event]) {
    let per_run = assert_contiguous(rows);
    assert_eq!(per_run.len(), 1);
    let stored = stats.stored.load(Ordering::Relaxed);
    assert_eq!(rows.len() as u64, stored);
    assert_eq!(stats.received.load(Ordering::Relaxed), stored);
    assert_live_trades_stored(live, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_mid_run_spills_then_backfills_everything_exactly_once() {
    if !postgres_available() {
        return;
    }
    let schema = unique_schema("outage");
    let app = schema.clone();
    let server = common::server(|f| {
        // Well within what a debug build writes to PostgreSQL on a busy machine: the
        // backfill must catch up with live recording for the test to end.
        f.sim.rate = 5_000;
        f.store.url = format!("{PG}?application_name={app}");
        f.store.schema = app.clone();
        // No memory queue to speak of: what the store does not take goes to the spill.
        f.store.queue_mb = 0;
    })
    .await;
    let addr = server.local_addr();
    let watcher = tokio::spawn(live_trades(addr, Duration::from_millis(2500)));
    // Cut the recorder's connection three times while events keep flowing.
    let killer = tokio::task::spawn_blocking({
        let app = schema.clone();
        move || {
            let mut admin = postgres::Client::connect(PG, postgres::NoTls).unwrap();
            let mut killed = 0;
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(500));
                killed += admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1",
                        &[&app],
                    )
                    .unwrap()
                    .len();
            }
            killed
        }
    });
    let killed = killer.await.unwrap();
    let live = watcher.await.unwrap();
    let stats = backfilled_then_stopped(server).await;
    assert!(killed >= 1, "no recorder connection was found to terminate");
    // The blocking PostgreSQL client runs its own runtime: off this one.
    let rows = tokio::task::spawn_blocking(move || {
        let rows = postgres_rows(&schema);
        drop_schema(&schema);
        rows
    })
    .await
    .unwrap();
    assert_stored_once(&stats, &rows, &live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_is_reported_down_retried_slowly_and_streaming_goes_on() {
    if !postgres_available() {
        return;
    }
    let schema = unique_schema("refused");
    let server = common::server(|f| {
        f.sim.rate = 2_000;
        f.store.url = PG.into();
        f.store.schema = schema.clone();
        f.store.refused_retry_secs = 4;
    })
    .await;
    let stats = server.recorder_stats().unwrap();
    let watcher = tokio::spawn(live_trades(server.local_addr(), Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The events table goes away: the store refuses every batch, and would forever.
    let admin = |sql: String| {
        tokio::task::spawn_blocking(move || {
            let mut admin = postgres::Client::connect(PG, postgres::NoTls).unwrap();
            admin.batch_execute(&sql).unwrap();
        })
    };
    admin(format!("ALTER TABLE {schema}.events RENAME TO events_away"))
        .await
        .unwrap();
    let refused_at = now_ns();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stats.refused.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "never refused: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stats.store_up.load(Ordering::Relaxed));
    // Not retried every second (store.retry_secs) as a store that failed would be, but
    // every store.refused_retry_secs.
    let failures = stats.failures.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        stats.failures.load(Ordering::Relaxed),
        failures,
        "{stats:?}"
    );
    assert!(stats.refused.load(Ordering::Relaxed));
    // Someone acts; the next try stores everything that waited.
    admin(format!("ALTER TABLE {schema}.events_away RENAME TO events"))
        .await
        .unwrap();
    let live = watcher.await.unwrap();
    assert!(
        live.iter().filter(|e| e.publish_time > refused_at).count() > 100,
        "live streaming stopped with the store"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !stats.store_up.load(Ordering::Relaxed) || stats.memory_bytes.load(Ordering::Relaxed) > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never came back: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await.unwrap();
    let rows = tokio::task::spawn_blocking(move || {
        let rows = postgres_rows(&schema);
        drop_schema(&schema);
        rows
    })
    .await
    .unwrap();
    assert!(!stats.refused.load(Ordering::Relaxed));
    assert_stored_once(&stats, &rows, &live);
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_locked_by_another_writer_spills_then_backfills_everything_exactly_once() {
    let dir = common::scratch_dir("sqlite-locked");
    let db = dir.join("raven.db");
    let server = spilling_server(&db, |_| {}).await;
    let watcher = tokio::spawn(live_trades(
        server.local_addr(),
        Duration::from_millis(3000),
    ));
    // Another process (a sqlite3 shell, a backup) holds the write lock for 1.5 s.
    let locker = tokio::task::spawn_blocking({
        let db = db.clone();
        move || {
            std::thread::sleep(Duration::from_millis(600));
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            let from = now_ns();
            std::thread::sleep(Duration::from_millis(1500));
            let to = now_ns();
            conn.execute_batch("ROLLBACK").unwrap();
            (from, to)
        }
    });
    let (locked_from, locked_to) = locker.await.unwrap();
    let live = watcher.await.unwrap();
    let stats = backfilled_then_stopped(server).await;
    // Live streaming went on while the store was locked.
    let during = live
        .iter()
        .filter(|e| (locked_from..locked_to).contains(&e.publish_time))
        .count();
    assert!(
        during > 50,
        "{during} live trades while the store was locked"
    );
    let rows = sqlite_rows(&db);
    assert_stored_once(&stats, &rows, &live);
    assert_eq!(
        SqliteStore::open(&db).unwrap().integrity_check().unwrap(),
        "ok"
    );
}

/// A server at 20k events/s recording to the SQLite file `db` with no memory queue to
/// speak of, so that what the store does not take goes to the spill file.
async fn spilling_server(
    db: &std::path::Path,
    configure: impl FnOnce(&mut raven_server::config::FileConfig),
) -> RunningServer {
    let url = format!("sqlite:{}", db.display());
    common::server(|f| {
        f.sim.rate = 20_000;
        f.store.url = url;
        f.store.queue_mb = 0;
        configure(f);
    })
    .await
}

/// Holds the SQLite write lock from another connection (as a `sqlite3` shell or a
/// backup would) from `after` for `hold`; returns when it let go.
fn lock_sqlite(
    db: &std::path::Path,
    after: Duration,
    hold: Duration,
) -> tokio::task::JoinHandle<std::time::Instant> {
    let db = db.to_owned();
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(after);
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(hold);
        conn.execute_batch("ROLLBACK").unwrap();
        std::time::Instant::now()
    })
}

/// The status in a row's bytes, when it is one.
fn status_of(bytes: &[u8]) -> Option<pb::Status> {
    let event = pb::StreamResponse::decode(bytes).unwrap().events.remove(0);
    match event.body {
        Some(pb::event::Body::Status(status)) => Some(status),
        _ => None,
    }
}

/// Regression (issue 10, finding 4): the recorder used to backfill the spill file before
/// reading its input again, so the engine waited on the tap and live streams froze for
/// seconds after an outage. The intake must keep taking events while the writer is
/// still backfilling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_keeps_taking_events_while_the_spill_file_is_backfilled() {
    let dir = common::scratch_dir("backfill-beside-live");
    let db = dir.join("raven.db");
    let server = spilling_server(&db, |_| {}).await;
    let stats = server.recorder_stats().unwrap();
    let watcher = tokio::spawn(live_trades(server.local_addr(), Duration::from_secs(6)));
    lock_sqlite(&db, Duration::from_millis(300), Duration::from_secs(3))
        .await
        .unwrap();
    // From the moment the store answers again until the spill file is empty: both the
    // intake's count and the backfill move.
    let mut samples = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (up, spill) = (
            stats.store_up.load(Ordering::Relaxed),
            stats.spill_bytes.load(Ordering::Relaxed),
        );
        if up {
            samples.push((stats.received.load(Ordering::Relaxed), spill));
            if spill == 0 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never backfilled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let live = watcher.await.unwrap();
    server.shutdown().await.unwrap();
    let backfilling: Vec<_> = samples.iter().filter(|(_, spill)| *spill > 0).collect();
    assert!(
        backfilling.len() >= 2,
        "the backfill was too short to watch: {samples:?}"
    );
    let (first, last) = (backfilling[0].0, backfilling[backfilling.len() - 1].0);
    assert!(
        last > first,
        "the intake took nothing while the spill file was backfilled ({first} events throughout)"
    );
    let rows = sqlite_rows(&db);
    assert_stored_once(&stats, &rows, &live);
    assert!(stats.spilled.load(Ordering::Relaxed) > 0);
    assert_eq!(
        stats.backfilled.load(Ordering::Relaxed),
        stats.spilled.load(Ordering::Relaxed)
    );
}

/// Issue 10, finding 2: when the store fails for longer than the memory queue and the
/// spill file's reservation can hold, events are lost; each lost range is recorded, and
/// history returns a gap status with the count where the events would have been,
/// never a silent hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_fit_nowhere_are_recorded_as_gaps_that_history_returns() {
    let dir = common::scratch_dir("gaps");
    let db = dir.join("raven.db");
    let server = spilling_server(&db, |f| {
        // 4 MiB for batches (the rest is headroom for gap rows): about 1.2 s here.
        f.store.spill_reserve_mb = 8;
        // No checkpoints: every lost event then has a sequence and lands in a gap.
        f.store.snapshot_every = u32::MAX;
    })
    .await;
    let stats = server.recorder_stats().unwrap();
    let addr = server.local_addr();
    let watcher = tokio::spawn(live_trades(addr, Duration::from_secs(6)));
    lock_sqlite(&db, Duration::from_millis(300), Duration::from_secs(4))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(stats.gaps.load(Ordering::Relaxed) > 0
        && stats.spill_bytes.load(Ordering::Relaxed) == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gaps were never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = watcher.await.unwrap();

    // History, as a client reads it: BTC trades, each sequence either stored or counted
    // by a gap status.
    let mut history =
        raven_proto::pb::history_client::HistoryClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let mut stream = history
        .query(pb::HistoryRequest {
            instruments: vec!["SIM:BTC-USD".into()],
            channels: vec![pb::Channel::Trades as i32],
            from: 0,
            to: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let (mut expected, mut gaps_seen, mut missed_seen) = (1, 0, 0);
    let mut stored_trades = BTreeMap::new();
    while let Some(message) = stream.message().await.unwrap() {
        for event in message.events {
            match &event.body {
                Some(pb::event::Body::Status(status)) => {
                    assert_eq!(status.kind, pb::StatusKind::Gap as i32, "{status:?}");
                    assert_eq!(event.sequence, expected + status.missed - 1, "{status:?}");
                    gaps_seen += 1;
                    missed_seen += status.missed;
                    expected = event.sequence + 1;
                }
                Some(pb::event::Body::Trade(_)) => {
                    assert_eq!(event.sequence, expected);
                    expected += 1;
                    stored_trades.insert(event.sequence, event);
                }
                other => panic!("not a trade: {other:?}"),
            }
        }
    }
    assert!(gaps_seen >= 1 && missed_seen > 0, "history shows no gap");
    // Book events were lost too, and no snapshot was stored after them: the book after
    // the gap cannot be rebuilt, and BookAt says so rather than return a wrong book.
    let last_stored = stored_trades.values().last().unwrap().publish_time;
    let err = history
        .book_at(pb::BookAtRequest {
            instrument: "SIM:BTC-USD".into(),
            at: last_stored,
            depth: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains("book events up to sequence")
            && err.message().contains("were lost, not recorded"),
        "{}",
        err.message()
    );
    server.shutdown().await.unwrap();

    let (lost, received, stored) = (
        stats.lost.load(Ordering::Relaxed),
        stats.received.load(Ordering::Relaxed),
        stats.stored.load(Ordering::Relaxed),
    );
    assert!(
        lost > 0,
        "nothing was lost: the test did not fill the spill file"
    );
    assert_eq!(received, stored + lost);
    // In the file: per (instrument, channel), stored events and gap ranges cover every
    // sequence once, and the gaps count exactly what was lost.
    let rows = sqlite_rows(&db);
    let mut next: BTreeMap<(&str, i16), i64> = BTreeMap::new();
    let (mut events, mut missed, mut gap_rows) = (0u64, 0u64, 0u64);
    for (_, name, channel, sequence, bytes) in &rows {
        let expected = next.entry((name.as_str(), *channel)).or_insert(1);
        match status_of(bytes) {
            Some(status) if status.kind == pb::StatusKind::Gap as i32 => {
                assert_eq!(
                    *sequence,
                    *expected + status.missed as i64 - 1,
                    "{name} {channel}"
                );
                missed += status.missed;
                gap_rows += 1;
            }
            _ => {
                assert_eq!(*sequence, *expected, "{name} channel {channel}");
                events += 1;
            }
        }
        *expected = *sequence + 1;
    }
    assert_eq!(events, stored);
    assert_eq!(missed, lost);
    assert_eq!(gap_rows, stats.gaps.load(Ordering::Relaxed));
    // Every trade a live subscriber saw is in history byte for byte, or inside a gap.
    for trade in &live {
        if let Some(stored) = stored_trades.get(&trade.sequence) {
            assert_eq!(stored, trade);
        }
    }
    assert!(
        live.len() as u64 > missed_seen,
        "the subscriber saw the lost trades live"
    );
}

/// Unmounts the small filesystem a test mounted, even when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tmpfs of `mb` MiB at a scratch directory, or `None` (the test is skipped, with a
/// message) when this process may not mount one (mounting takes root).
fn small_filesystem(what: &str, mb: u64) -> Option<(std::path::PathBuf, Mounted)> {
    let dir = common::scratch_dir(what);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
        .arg(&dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED full-disk test: cannot mount a {mb} MiB tmpfs (needs root)");
        return None;
    }
    Some((dir.clone(), Mounted(dir)))
}

/// Fills the filesystem at `dir` with a file until the disk refuses; returns its path.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            break;
        }
    }
    path
}

/// Issue 10, finding 2: a full disk under the database and the spill file (the default
/// layout: both in one directory) used to lose every batch while it lasted. The spill
/// file's space is reserved at start, so it holds them; nothing is lost, and recording
/// resumes by itself when space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_and_recording_resumes_when_space_returns() {
    let Some((dir, _mounted)) = small_filesystem("full-disk", 96) else {
        return;
    };
    let db = dir.join("raven.db");
    let server = common::server(|f| {
        f.sim.rate = 20_000;
        f.store.url = format!("sqlite:{}", db.display());
        f.store.spill = dir.join("raven.spill");
        f.store.spill_reserve_mb = 32;
        f.store.queue_mb = 4;
    })
    .await;
    let stats = server.recorder_stats().unwrap();
    let watcher = tokio::spawn(live_trades(server.local_addr(), Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filler = fill(&dir);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while stats.store_up.load(Ordering::Relaxed) {
        assert!(
            std::time::Instant::now() < deadline,
            "the store never failed on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full for three seconds, while events keep coming.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        stats.spill_bytes.load(Ordering::Relaxed) > 0,
        "nothing reached the spill file"
    );
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !(stats.store_up.load(Ordering::Relaxed)
        && stats.spill_bytes.load(Ordering::Relaxed) == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "recording never resumed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = watcher.await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(stats.lost.load(Ordering::Relaxed), 0);
    let rows = sqlite_rows(&db);
    assert_stored_once(&stats, &rows, &live);
    assert_eq!(
        SqliteStore::open(&db).unwrap().integrity_check().unwrap(),
        "ok"
    );
}
