//! The fault scenarios, one function each, with the targets they are judged by (issue
//! 10): no event lost on a full disk or through a store outage, none stored twice,
//! never a silent hole, live subscribers never paused by the recorder (≤ 100 ms), a
//! bounded WAL, and a shutdown that ends within the drain deadline + 2 s with the last
//! batch stored.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use raven_proto::pb;

use crate::db::{self, Audit};
use crate::pg::PrivatePostgres;
use crate::probe::{self, Watched};
use crate::server::{Server, Stopped, Totals};
use crate::{Options, Row};

mod edge;

/// Every scenario, in the order they run.
pub const NAMES: &[&str] = &[
    "full-disk",
    "torn-spill",
    "pg-outage-15s",
    "pg-outage-60s",
    "kill-9",
    "shutdown-clients",
    "idle-3000",
    "stalled-subscriber",
    "sigterm-load",
    "wal-2k",
    "wal-50k",
    "edge-nats-kill",
];

/// The longest pause a live subscriber may see.
const PAUSE_LIMIT: Duration = Duration::from_millis(100);
/// The default drain time ([shutdown] drain_secs), and what a shutdown may take: the
/// drain and 5 s more.
const DRAIN: Duration = Duration::from_secs(5);
const EXIT_LIMIT: Duration = Duration::from_secs(DRAIN.as_secs() + 5);
/// The documented WAL bound.
const WAL_LIMIT: u64 = raven_server::store::sqlite::WAL_LIMIT;

/// Runs scenario `name`.
pub async fn run(name: &str, o: &Options) -> anyhow::Result<Row> {
    let dir = o.work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut row = match name {
        "full-disk" => full_disk(o, &dir).await,
        "torn-spill" => torn_spill(o, &dir).await,
        "pg-outage-15s" => pg_outage(o, &dir, Duration::from_secs(15)).await,
        "pg-outage-60s" => pg_outage(o, &dir, Duration::from_secs(60)).await,
        "kill-9" => kill_9(o, &dir).await,
        "shutdown-clients" => shutdown_clients(o, &dir).await,
        "idle-3000" => idle_3000(o, &dir).await,
        "stalled-subscriber" => stalled_subscriber(o, &dir).await,
        "sigterm-load" => sigterm_load(o, &dir).await,
        "wal-2k" => wal(o, &dir, 2_000).await,
        "wal-50k" => wal(o, &dir, 50_000).await,
        "edge-nats-kill" => edge::nats_kill(o, &dir).await,
        other => bail!("no scenario {other}"),
    }?;
    row.scenario = name.to_owned();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(row)
}

/// Waits until the recorder says every batch that waited is stored (a build from before
/// that log line, `--baseline`, gets 30 s instead).
async fn caught_up(server: &Server, o: &Options) -> anyhow::Result<()> {
    if o.baseline {
        sleep(30.0).await;
        return Ok(());
    }
    blocking(|| server.wait_log("caught up", Duration::from_secs(180)))?;
    Ok(())
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn sleep(secs: f64) {
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// A row from what the recorder said at exit, the audit, and (when one watched) the
/// longest pause a live subscriber saw.
fn outcome(stopped: &Stopped, audit: &Audit, pause: Option<Duration>) -> Row {
    let published = stopped.totals().map(|t: Totals| t.received);
    Row {
        published,
        stored: audit.events,
        gaps: audit.gap_missed,
        silent: audit.holes,
        duplicates: audit.duplicates,
        lost: published.map_or(audit.gap_missed + audit.holes, |p| {
            p.saturating_sub(audit.events)
        }),
        pause,
        exit: Some(Duration::from_secs_f64(stopped.exit_s)),
        ..Row::default()
    }
}

/// Exited cleanly with everything published stored once.
fn nothing_lost(row: &Row, stopped: &Stopped) -> bool {
    stopped.success && row.lost == 0 && row.silent == 0 && row.duplicates == 0
}

fn sqlite_of(dir: &Path) -> PathBuf {
    dir.join("data").join("raven.db")
}

/// Audits the SQLite file; an unsound file is an error.
fn audit_sqlite(dir: &Path) -> anyhow::Result<Audit> {
    let (audit, integrity) = db::sqlite(&sqlite_of(dir))?;
    anyhow::ensure!(integrity == "ok", "integrity_check: {integrity}");
    Ok(audit)
}

fn exit_note(stopped: &Stopped) -> String {
    if stopped.success {
        String::new()
    } else {
        "exit status not 0; ".into()
    }
}

/// Unmounts a filesystem when dropped.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Default settings (database and spill file in one directory, 256 MiB reserved, 64 MiB
/// of memory queue) on a 1 GiB filesystem at 20k events/s; the disk is filled for 30 s,
/// then freed (the backfill and what keeps coming need the room back).
async fn full_disk(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "skipped: mounting a tmpfs needs root"
    );
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1g", "tmpfs"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(
        mounted.success(),
        "cannot mount a tmpfs at {}",
        dir.display()
    );
    let _mounted = Mounted(dir.to_owned());
    let server = Server::start(&o.raven, dir, "[sim]\nrate = 20000\n", &[])?;
    let watcher = probe::watch(server.addr).await?;
    sleep(5.0).await;
    let filler = dir.join("filler");
    let filled = blocking(|| fill(&filler))?;
    server.wait_log("store failed", Duration::from_secs(30))?;
    sleep(30.0).await;
    std::fs::remove_file(&filler)?;
    let back = blocking(|| server.wait_log("store back", Duration::from_secs(30)))?;
    caught_up(&server, o).await?;
    sleep(2.0).await;
    let watched = watcher.finish().await?;
    let stopped = blocking(|| server.terminate(Duration::from_secs(30)))?;
    let audit = blocking(|| audit_sqlite(dir))?;
    let mut row = outcome(&stopped, &audit, Some(watched.longest_pause));
    let totals = stopped.totals().unwrap_or_default();
    row.note = format!(
        "{}disk full 30 s (filler {} MB); {} events spilled, {} backfilled; shared-filesystem warning at start: {}; recovered: {}",
        exit_note(&stopped),
        filled >> 20,
        totals.spilled,
        totals.backfilled,
        stopped
            .log
            .iter()
            .any(|l| l.contains("on the database's filesystem")),
        back.contains("store back")
    );
    row.pass = nothing_lost(&row, &stopped) && watched.longest_pause <= PAUSE_LIMIT;
    Ok(row)
}

/// Writes a file until the disk refuses; returns its size.
fn fill(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let block = vec![0xa5u8; 1 << 20];
    let mut written = 0;
    loop {
        match file.write(&block) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(written),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The SQLite file is locked by another writer for 4 s at 20k events/s with no memory
/// queue, so everything goes to the spill file; the server is killed; one record in
/// the middle of the spill file is damaged; the server restarts with the store free.
/// Every sound record must be backfilled (the first layout cut the file at the damage).
async fn torn_spill(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let config = "[sim]\nrate = 20000\n[store]\nqueue_mb = 0\n";
    let server = Server::start(&o.raven, dir, config, &[])?;
    sleep(1.0).await;
    let db = sqlite_of(dir);
    let lock = rusqlite::Connection::open(&db)?;
    lock.busy_timeout(Duration::from_secs(5))?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    sleep(4.0).await;
    blocking(|| server.kill9())?;
    let stored_before: u64 =
        lock.query_row("SELECT coalesce(sum(rows), 0) FROM events", [], |r| {
            r.get(0)
        })?;
    let spill_path = dir.join("data").join("raven.spill");
    let reserve = 256 << 20;
    let count = |path: &Path| -> anyhow::Result<(u64, u64, u64)> {
        let mut spill = raven_server::store::spill::Spill::open(path, reserve)?;
        let (records, used) = (spill.batches(), spill.used());
        let mut events = 0;
        while let Some((batch, _)) = spill.read_next()? {
            events += batch.len() as u64;
            spill.release();
        }
        Ok((records, events, used))
    };
    let (records, spilled, used) = count(&spill_path)?;
    anyhow::ensure!(records >= 10, "only {records} spilled records to damage");
    // One flipped byte in the middle of the records.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&spill_path)?;
        file.write_all_at(&[0x5a, 0xa5, 0x5a, 0xa5], 64 + used / 2)?;
    }
    let (records_after, kept, _) = count(&spill_path)?;
    lock.execute_batch("ROLLBACK")?;
    drop(lock);
    let server = Server::start(&o.raven, dir, config, &[])?;
    caught_up(&server, o).await?;
    sleep(1.0).await;
    let stopped = blocking(|| server.terminate(Duration::from_secs(30)))?;
    let audit = blocking(|| audit_sqlite(dir))?;
    let run_1 = audit.per_run[0];
    let mut row = Row {
        published: None,
        stored: run_1,
        lost: spilled - kept,
        silent: audit.holes,
        duplicates: audit.duplicates,
        ..Row::default()
    };
    row.note = format!(
        "{}run 1: {stored_before} stored before the lock + {kept} of {spilled} spilled events backfilled ({records} records, {} damaged and skipped); run 2 recorded {} events",
        exit_note(&stopped),
        records - records_after,
        audit.per_run[1]
    );
    row.pass = stopped.success
        && records - records_after == 1
        && run_1 == stored_before + kept
        && audit.duplicates == 0;
    Ok(row)
}

/// PostgreSQL (a private server) stopped for real for `outage`, then started again, at
/// 20k events/s with default settings.
async fn pg_outage(o: &Options, dir: &Path, outage: Duration) -> anyhow::Result<Row> {
    let pg = blocking(|| PrivatePostgres::start(dir))?;
    let config = format!(
        "[sim]\nrate = 20000\n[store]\nurl = \"{}\"\nschema = \"raven_chaos\"\n",
        pg.url()
    );
    let server = Server::start(&o.raven, &dir.join("raven"), &config, &[])?;
    let watcher = probe::watch(server.addr).await?;
    sleep(5.0).await;
    let stopped_at = Instant::now();
    blocking(|| pg.stop())?;
    tokio::time::sleep_until((stopped_at + outage).into()).await;
    blocking(|| pg.resume())?;
    let back = blocking(|| server.wait_log("store back", Duration::from_secs(60)))?;
    caught_up(&server, o).await?;
    sleep(2.0).await;
    let watched = watcher.finish().await?;
    let stopped = blocking(|| server.terminate(Duration::from_secs(60)))?;
    let audit = blocking(|| db::postgres(&pg.url(), "raven_chaos"))?;
    let mut row = outcome(&stopped, &audit, Some(watched.longest_pause));
    let totals = stopped.totals().unwrap_or_default();
    row.note = format!(
        "{}{} events spilled, {} backfilled; {}",
        exit_note(&stopped),
        totals.spilled,
        totals.backfilled,
        back.split("INFO").nth(1).unwrap_or("").trim()
    );
    row.pass = nothing_lost(&row, &stopped) && watched.longest_pause <= PAUSE_LIMIT;
    Ok(row)
}

/// `kill -9` at 20k events/s: the file must be sound, the run a contiguous prefix of what
/// subscribers saw (at most the batches in flight lost), and a restart records a new run.
async fn kill_9(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let config = "[sim]\nrate = 20000\n";
    let server = Server::start(&o.raven, dir, config, &[])?;
    let watcher = probe::watch(server.addr).await?;
    sleep(3.0).await;
    blocking(|| server.kill9())?;
    let watched = watcher.finish().await?;
    let after_kill = blocking(|| audit_sqlite(dir))?;
    let stored_max = blocking(|| max_trade_sequences(&sqlite_of(dir)))?;
    let unstored = watched
        .trades
        .iter()
        .filter(|(name, seq)| stored_max.get(name).is_none_or(|max| seq > max))
        .count() as u64;
    let server = Server::start(&o.raven, dir, config, &[])?;
    sleep(2.0).await;
    let stopped = blocking(|| server.terminate(Duration::from_secs(30)))?;
    let audit = blocking(|| audit_sqlite(dir))?;
    let row = Row {
        stored: audit.events,
        lost: unstored,
        silent: audit.holes,
        duplicates: audit.duplicates,
        exit: Some(Duration::from_secs_f64(stopped.exit_s)),
        note: format!(
            "{}integrity ok; run 1: {} events stored, a contiguous prefix; {unstored} of {} live trades after it (the batches in flight); runs after restart: {}",
            exit_note(&stopped),
            after_kill.events,
            watched.trades.len(),
            audit.runs
        ),
        pass: stopped.success
            && audit.runs == 2
            && audit.holes == 0
            && audit.duplicates == 0
            && after_kill.holes == 0,
        ..Row::default()
    };
    Ok(row)
}

/// Each instrument's last stored trade sequence.
fn max_trade_sequences(db: &Path) -> anyhow::Result<std::collections::HashMap<String, u64>> {
    use raven_server::store::Store;
    let mut store = raven_server::store::sqlite::SqliteStore::open(db)?;
    let names = store.instruments()?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let trades = pb::Channel::Trades as u8;
    let mut max = std::collections::HashMap::new();
    let mut failed = None;
    store.query(
        &raven_server::store::Query::all(&names, &[trades]),
        &mut |_, bytes| match raven_proto::wire::scan::events(bytes).next() {
            Some(Ok(h)) => {
                let name = String::from_utf8_lossy(h.instrument).into_owned();
                let last = max.entry(name).or_insert(0);
                *last = h.sequence.max(*last);
                true
            }
            other => {
                failed = Some(format!("a stored trade does not scan: {other:?}"));
                false
            }
        },
    )?;
    match failed {
        Some(why) => bail!(why),
        None => Ok(max),
    }
}

/// SIGTERM with 100 sockets that never began HTTP/2, 100 idle HTTP/2 connections, a
/// publisher holding its stream open, a health watcher and a subscriber attached.
async fn shutdown_clients(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let server = Server::start(&o.raven, dir, "[sim]\nrate = 5000\n", &[])?;
    let addr = server.addr;
    let _half_open = probe::half_open(addr, 100).await?;
    let idle = probe::idle_h2(addr, 100).await?;
    let (publish, published) = tokio::sync::mpsc::channel(4);
    let publisher = tokio::spawn(async move {
        let mut client = pb::ingest_client::IngestClient::connect(format!("http://{addr}")).await?;
        let result = client
            .publish(tokio_stream::wrappers::ReceiverStream::new(published))
            .await;
        anyhow::Ok(result)
    });
    publish
        .send(pb::PublishRequest {
            events: vec![pb::FeedEvent {
                instrument: "CHAOS:PUBLISHED".into(),
                exchange_time: 1,
                receive_time: 0,
                venue_seq: 0,
                body: Some(pb::feed_event::Body::Trade(pb::Trade {
                    price: 1_000_000_000,
                    qty: 1_000_000_000,
                    qty_hi: 0,
                    aggressor: pb::Aggressor::Buy as i32,
                    trade_id: "1".into(),
                })),
            }],
        })
        .await?;
    let watcher = probe::watch(addr).await?;
    sleep(2.0).await;
    let watched = watcher.finish().await?;
    let stopped = blocking(|| server.terminate(Duration::from_secs(60)))?;
    let totals = stopped.totals().unwrap_or_default();
    let publish_ended = match publisher.await? {
        Ok(Err(status)) => format!("{:?}", status.code()),
        Ok(Ok(_)) => "Ok".into(),
        Err(e) => format!("{e}"),
    };
    let idle_closed = idle.iter().filter(|t| t.is_finished()).count();
    drop(publish);
    let exit = Duration::from_secs_f64(stopped.exit_s);
    let row = Row {
        published: Some(totals.received),
        stored: totals.stored,
        lost: totals.received.saturating_sub(totals.stored),
        pause: Some(watched.longest_pause),
        exit: Some(exit),
        note: format!(
            "{}drain {} s; publisher ended with {publish_ended}; {idle_closed} of 100 idle HTTP/2 connections closed by the server",
            exit_note(&stopped),
            DRAIN.as_secs()
        ),
        pass: stopped.success
            && exit <= EXIT_LIMIT
            && totals.received == totals.stored
            && totals.received > 0
            && idle_closed == 100,
        ..Row::default()
    };
    Ok(row)
}

/// 3,000 sockets that never send a byte to the gRPC listener and 1,000 to the HTTP one:
/// the HTTP listener holds no more than its connection limit (the default, 512), and the
/// server's descriptors must come back once the time limits (10 s each: the HTTP/2
/// handshake, the HTTP request head) pass.
async fn idle_3000(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    /// `limits.max_http_connections`' default.
    const HTTP_HELD: usize = 512;
    /// Refused connections the server may still be answering (for up to 2 s each).
    const HTTP_LINGERING: usize = 64;
    let server = Server::start(&o.raven, dir, "[store]\nurl = \"off\"\n", &[])?;
    sleep(1.0).await;
    let base = server.fds();
    let mut sockets = probe::half_open(server.addr, 3000).await?;
    sockets.extend(probe::half_open(server.http, 1000).await?);
    sleep(1.0).await;
    let peak = server.fds();
    let opened = Instant::now();
    // The limits plus the watcher's period and some slack.
    let mut after = peak;
    while opened.elapsed() < Duration::from_secs(20) {
        sleep(0.5).await;
        after = server.fds();
        if after <= base + 5 {
            break;
        }
    }
    let released_after = opened.elapsed();
    drop(sockets);
    let stopped = blocking(|| server.terminate(Duration::from_secs(30)))?;
    Ok(Row {
        exit: Some(Duration::from_secs_f64(stopped.exit_s)),
        note: format!(
            "{}descriptors {base} → {peak} with 3,000 silent sockets on gRPC and 1,000 on HTTP (at most {HTTP_HELD} held, {HTTP_LINGERING} more while refused) → {after} after {:.1} s (limits 10 s)",
            exit_note(&stopped),
            released_after.as_secs_f64()
        ),
        pass: stopped.success
            && (base + 3000 + HTTP_HELD - 10..=base + 3000 + HTTP_HELD + HTTP_LINGERING + 5)
                .contains(&peak)
            && after <= base + 5,
        ..Row::default()
    })
}

/// One subscriber that stops reading among 19 that read, at 20k events/s for 15 s.
async fn stalled_subscriber(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let server = Server::start(&o.raven, dir, "[sim]\nrate = 20000\n", &[])?;
    let _stalled = probe::stalled(server.addr).await?;
    let mut watchers = Vec::new();
    for _ in 0..19 {
        watchers.push(probe::watch(server.addr).await?);
    }
    sleep(15.0).await;
    let rss = rss_mib(server.pid());
    let mut seen: Vec<Watched> = Vec::new();
    for w in watchers {
        seen.push(w.finish().await?);
    }
    let stopped = blocking(|| server.terminate(Duration::from_secs(30)))?;
    let pause = seen
        .iter()
        .map(|s| s.longest_pause)
        .max()
        .unwrap_or_default();
    let gaps: u64 = seen.iter().map(|s| s.gaps).sum();
    let messages: u64 = seen.iter().map(|s| s.messages).sum();
    let audit = blocking(|| audit_sqlite(dir))?;
    let mut row = outcome(&stopped, &audit, Some(pause));
    row.note = format!(
        "{}19 reading subscribers: {messages} messages, {gaps} gap statuses; server RSS {rss:.0} MiB with the stalled one attached",
        exit_note(&stopped)
    );
    row.pass = nothing_lost(&row, &stopped) && gaps == 0 && pause <= PAUSE_LIMIT;
    Ok(row)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// SIGTERM at 50k events/s with 20 subscribers attached: they are told the server is
/// going away, served through the drain, then ended.
async fn sigterm_load(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let server = Server::start(&o.raven, dir, "[sim]\nrate = 50000\n", &[])?;
    let mut watchers = Vec::new();
    for _ in 0..20 {
        watchers.push(probe::watch(server.addr).await?);
    }
    sleep(5.0).await;
    let stopped = blocking(|| server.terminate(Duration::from_secs(60)))?;
    let mut pause = Duration::ZERO;
    let mut told = 0;
    for w in watchers {
        let seen = w.finish().await?;
        pause = pause.max(seen.longest_pause);
        told += usize::from(seen.told_going_away);
    }
    let audit = blocking(|| audit_sqlite(dir))?;
    let mut row = outcome(&stopped, &audit, Some(pause));
    row.note = format!(
        "{}20 subscribers attached at the signal, {told} told GOING_AWAY and served through the drain",
        exit_note(&stopped)
    );
    row.pass = nothing_lost(&row, &stopped)
        && told == 20
        && Duration::from_secs_f64(stopped.exit_s) <= EXIT_LIMIT
        && row.published.is_some_and(|p| p > 0);
    Ok(row)
}

/// The WAL's size every second for `o.wal_minutes` at `rate` events/s, default settings.
async fn wal(o: &Options, dir: &Path, rate: u64) -> anyhow::Result<Row> {
    let server = Server::start(&o.raven, dir, &format!("[sim]\nrate = {rate}\n"), &[])?;
    let wal = dir.join("data").join("raven.db-wal");
    let end = Instant::now() + Duration::from_secs(o.wal_minutes * 60);
    let (mut largest, mut samples) = (0u64, 0u64);
    while Instant::now() < end {
        sleep(1.0).await;
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        samples += 1;
    }
    let db_size = std::fs::metadata(sqlite_of(dir)).map_or(0, |m| m.len());
    let stopped = blocking(|| server.terminate(Duration::from_secs(60)))?;
    let audit = blocking(|| audit_sqlite(dir))?;
    let mut row = outcome(&stopped, &audit, None);
    let lag = stopped
        .log
        .iter()
        .rev()
        .find(|l| l.contains("recorder stopped"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("max_lag_ms=")))
        .unwrap_or("")
        .to_owned();
    row.note = format!(
        "{}{} min at {rate} events/s: WAL at most {:.1} MiB over {samples} samples (bound {} MiB), database {:.0} MiB; {lag}",
        exit_note(&stopped),
        o.wal_minutes,
        largest as f64 / (1 << 20) as f64,
        WAL_LIMIT >> 20,
        db_size as f64 / (1 << 20) as f64,
    );
    row.pass = nothing_lost(&row, &stopped) && largest <= WAL_LIMIT;
    Ok(row)
}
