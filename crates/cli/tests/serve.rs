//! `raven serve` as a process, where only a process will do: `kill -9` mid-run, and a
//! real write error from a file-size limit (`prlimit`). The database is sound after
//! each, and every event the engine published is stored once, in order. And what the
//! process sets for itself: transparent huge pages off, and signal handlers in place
//! before it reports ready.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use raven_server::store::sqlite::SqliteStore;
use raven_testkit::rows::{assert_contiguous, sqlite_rows};
use raven_testkit::scratch_dir;
use raven_testkit::served::Served;

const RAVEN: &str = env!("CARGO_BIN_EXE_raven");

/// `raven serve` at 20k events/s with `dir` as its working directory.
fn serve_in(dir: &Path) -> Served {
    let mut command = Command::new(RAVEN);
    command
        .current_dir(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--rate",
            "20000",
        ])
        .env("RAVEN_LOG", "warn");
    Served::start(command)
}

/// `raven serve` at one event/s with neither HTTP nor a store: only the process itself.
fn quiet_serve(dir: &Path) -> Command {
    let mut command = Command::new(RAVEN);
    command
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "off"])
        .args(["--rate", "1", "--store", "off"])
        .env("RAVEN_LOG", "warn");
    command
}

#[test]
fn after_kill_9_the_database_is_sound_and_recording_resumes() {
    let dir = scratch_dir!("kill9");
    // The default store: ./data/raven.db under the server's working directory.
    let db = dir.join("data").join("raven.db");
    let mut first = serve_in(&dir);
    std::thread::sleep(Duration::from_millis(1500));
    first.child().kill().unwrap(); // SIGKILL
    first.child().wait().unwrap();
    let after_kill = sqlite_rows(&db);
    assert!(after_kill.len() > 1000, "{} rows", after_kill.len());
    assert_eq!(
        SqliteStore::open(&db).unwrap().integrity_check().unwrap(),
        "ok"
    );

    let second = serve_in(&dir);
    std::thread::sleep(Duration::from_millis(1500));
    let status = second.terminate();
    assert!(status.success(), "{status:?}");

    let rows = sqlite_rows(&db);
    let per_run = assert_contiguous(&rows);
    // The killed run kept what it had committed; the second run recorded from 1 again.
    assert_eq!(per_run.len(), 2, "{per_run:?}");
    assert_eq!(*per_run.values().next().unwrap(), after_kill.len());
    assert!(*per_run.values().nth(1).unwrap() > 1000);
    assert_eq!(
        SqliteStore::open(&db).unwrap().integrity_check().unwrap(),
        "ok"
    );
}

#[test]
fn the_server_process_runs_without_transparent_huge_pages() {
    let mut served = Served::start(quiet_serve(&scratch_dir!("thp")));
    let pid = served.child().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let thp: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("THP_enabled:"))
        .collect();
    assert_eq!(thp, ["THP_enabled:\t0"], "{status}");
    let status = served.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_sigterm_as_soon_as_the_address_line_is_printed_drains() {
    // A service manager may stop a server the moment it reads ready. The window between
    // that line and the handlers is short, so the test goes through it many times.
    let dir = scratch_dir!("sigterm-at-ready");
    for run in 0..20 {
        let status = Served::start(quiet_serve(&dir)).terminate();
        assert!(status.success(), "run {run}: {status:?}");
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn a_sqlite_write_error_spills_then_backfills_everything_exactly_once() {
    // A real I/O error from the file system: the server runs under a 32 MiB file-size
    // limit (`prlimit`, util-linux), so once the database outgrows it, SQLite's writes
    // fail with EFBIG; then the limit is lifted from outside, as an operator freeing
    // space would. The spill file's 16 MiB are reserved at start, under the limit.
    const LIMIT: u64 = 32 << 20;
    let dir = scratch_dir!("sqlite-write-error");
    let db = dir.join("data").join("raven.db");
    std::fs::write(
        dir.join("raven.toml"),
        "[store]\nspill_reserve_mb = 16\nqueue_mb = 1\n",
    )
    .unwrap();
    // prlimit (util-linux) runs the server under a file-size limit.
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--fsize={LIMIT}:"))
        .arg("--")
        .arg(RAVEN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--rate",
            "20000",
        ])
        .args(["--config", "raven.toml"])
        .current_dir(&dir)
        .env("RAVEN_LOG", "info")
        .stderr(Stdio::piped());
    let mut served = Served::start(command);
    let pid = served.child().id().to_string();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = served.child().stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    let wait_for = |what: &str, within: Duration| -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what:?} in the log within {within:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let failed = wait_for("store failed;", Duration::from_secs(60));
    assert!(failed.contains("sqlite: disk I/O error"), "{failed}");
    // Spill for a second (≈3 MB of events, well under the spill file's reservation).
    std::thread::sleep(Duration::from_secs(1));
    let lifted = Command::new("prlimit")
        .args(["--pid", &pid, "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(lifted.success());
    wait_for("store back;", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let status = served.terminate();
    let stopped = wait_for("recorder stopped", Duration::from_secs(15));
    assert!(status.success(), "{status:?}");

    let spilled = field(&stopped, "spilled");
    assert!(spilled > 10_000, "{stopped}");
    assert_eq!(field(&stopped, "backfilled"), spilled, "{stopped}");
    let rows = sqlite_rows(&db);
    let per_run = assert_contiguous(&rows);
    assert_eq!(per_run.len(), 1);
    // Everything the engine published was stored, once.
    assert_eq!(rows.len() as u64, field(&stopped, "received"), "{stopped}");
    assert_eq!(rows.len() as u64, field(&stopped, "stored"), "{stopped}");
    assert_eq!(
        SqliteStore::open(&db).unwrap().integrity_check().unwrap(),
        "ok"
    );
}
