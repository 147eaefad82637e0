//! The SQLite store: one file in WAL mode, written by one connection. A batch is one
//! transaction of prepared inserts; `synchronous = NORMAL` (safe in WAL: a crash loses at
//! most the last commits, never consistency).
//!
//! The WAL is bounded ([`WAL_LIMIT`]). SQLite only starts the WAL over when a write
//! begins with every frame already copied back into the database (checkpointed) and no
//! reader still reading from it; a checkpoint run from another thread while the writer
//! commits every few milliseconds never gets there, and the WAL grew without end
//! (255 MB in 10 s at the default 2,000 events/s). So the writer checkpoints itself,
//! between its own commits, once [`CHECKPOINT_AT`] of frames have piled up: nothing can
//! be written meanwhile, the checkpoint copies every frame, and the next commit starts
//! the WAL over. A background thread still checkpoints passively every 250 ms, so most
//! frames are already copied (on the other core) when the writer's turn comes. Readers
//! can hold frames back; they read in chunks of [`QUERY_CHUNK`] blocks, each in a short
//! read transaction of its own, so a slow history client never pins the WAL, and past
//! [`RESTART_AT`] the writer waits for readers (a `RESTART` checkpoint) rather than let
//! it grow. `journal_size_limit` gives the file back when it did grow past the bound.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    Batch, Block, MAX_BLOCK_ROWS, Marker, Picker, Query, ReadSql, Seek, Store, StoreError, Stretch,
    WriteSql, position, read_rows, write_batch,
};

/// The most the WAL file holds with default settings while the recorder keeps up: the
/// documented bound (README, RELIABILITY.md).
pub const WAL_LIMIT: u64 = 64 << 20;

/// The writer checkpoints once the WAL holds this many bytes of frames.
pub const CHECKPOINT_AT: u64 = 16 << 20;

/// Past this, the writer's checkpoint waits (up to the lock wait) for readers to move
/// off the WAL, so that it can start over.
pub const RESTART_AT: u64 = 40 << 20;

/// Blocks a query reads per read transaction, at most (fewer once a megabyte of events
/// is picked). A reader holds the WAL frames it started on until its transaction ends,
/// so a query that stays open while its client reads slowly would hold the WAL at any
/// size: reading in chunks, each handed on after its transaction ended, ends each
/// transaction in milliseconds.
pub const QUERY_CHUNK: usize = 4096;

thread_local! {
    /// Frames in the WAL after the last commit on this thread, from SQLite's WAL hook
    /// (a plain function pointer, so the count comes back through here).
    static WAL_FRAMES: Cell<i32> = const { Cell::new(0) };
}

fn note_wal_frames(_: &rusqlite::hooks::Wal, frames: std::os::raw::c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.set(frames);
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instruments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS events (
    run INTEGER NOT NULL,
    position INTEGER NOT NULL,
    instrument INTEGER,
    channels INTEGER NOT NULL,
    publish_time INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (run, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS checkpoints ON events (instrument, publish_time) WHERE channels = 1;
CREATE TABLE IF NOT EXISTS runs (
    run INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS marks (
    run INTEGER NOT NULL,
    instrument INTEGER NOT NULL,
    publish_time INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (run, instrument, publish_time, position)
) WITHOUT ROWID;
";

/// Events in a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    instruments: HashMap<String, i64>,
    /// Started by the first write: only the recorder's connection writes.
    checkpointer: Option<Checkpointer>,
    marker: Marker<i64>,
    /// Bytes a WAL frame takes: the page size and a 24-byte frame header.
    frame_bytes: u64,
    /// The most event bytes a block holds: what fits in a page's cell.
    block_bytes: usize,
    /// When the writer last said that readers hold the WAL back (said at most once a
    /// minute).
    pinned_warning: Option<Instant>,
}

/// Checkpoints the WAL in the background (`PASSIVE`: never blocks the writer or
/// readers) every `CHECKPOINT_EVERY`, until dropped.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How long the recorder waits for the write lock before the batch goes to the spill
/// file.
const WRITE_LOCK_WAIT: Duration = Duration::from_millis(250);

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("raven-checkpoint".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = done {
                        tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
                    }
                }
            })?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SqliteStore {
    /// Opens (creating if need be) the database at `path`, and its directory.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = connect(path)?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(SqliteStore {
            path: path.to_owned(),
            conn,
            instruments: HashMap::new(),
            checkpointer: None,
            marker: Marker::default(),
            frame_bytes: page_size as u64 + 24,
            block_bytes: block_bytes(page_size as usize),
            pinned_warning: None,
        })
    }

    /// Keeps the WAL under [`WAL_LIMIT`] (see the module doc); runs after each commit.
    /// A checkpoint that fails leaves the batch committed: it is retried after the next
    /// commit, and a store that cannot write fails that batch instead.
    fn bound_wal(&mut self) {
        let wal = WAL_FRAMES.get().max(0) as u64 * self.frame_bytes;
        if wal < CHECKPOINT_AT {
            return;
        }
        let mode = if wal >= RESTART_AT {
            "RESTART"
        } else {
            "PASSIVE"
        };
        let done = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            });
        match done {
            // Every frame copied: the next commit starts the WAL over.
            Ok((log, copied)) if copied >= log => {}
            Ok((log, copied)) => {
                if wal >= RESTART_AT
                    && self
                        .pinned_warning
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
                {
                    self.pinned_warning = Some(Instant::now());
                    tracing::warn!(
                        wal_mb = wal >> 20,
                        frames = log,
                        copied,
                        "readers hold the SQLite WAL: it cannot start over until they finish"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit")
            }
        }
    }

    /// Brings a file of the older layout to this one: its `batches` table goes (a
    /// batch's events are its claim now), in one transaction with the new version.
    /// Done by the writer before its first batch, not on opening: opening writes
    /// nothing (see [`connect`]).
    fn upgrade(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == UPGRADES_FROM {
            let upgraded = self.conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; DROP TABLE IF EXISTS batches; \
                 PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ));
            if upgraded.is_err() {
                // Tried again before the next batch, from no open transaction.
                self.rollback();
            }
            upgraded?;
            tracing::info!(
                path = %self.path.display(),
                from = UPGRADES_FROM,
                to = SCHEMA_VERSION,
                "SQLite file upgraded to this Raven's layout"
            );
        }
        Ok(())
    }

    /// `PRAGMA integrity_check`'s verdict: "ok" for a sound file.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }
}

/// The most event bytes a block holds with pages of `page_size`: a WITHOUT ROWID table
/// keeps a cell of up to (page − 12) × 64 / 255 − 23 bytes in its page (SQLite's file
/// format), and a larger one spills into overflow pages, each a page written and read on
/// its own. 64 bytes of it are left for the other columns and the record's header.
fn block_bytes(page_size: usize) -> usize {
    (page_size - 12) * 64 / 255 - 23 - 64
}

/// The layout `SCHEMA` creates, kept in `PRAGMA user_version`: 3 stores blocks of
/// events (2 stored a row per event); 4 is 3 without the `batches` table, a batch's
/// stored events being its claim ([`SqliteStore::claim`]).
const SCHEMA_VERSION: i64 = 4;

/// The one older layout this Raven reads, and writes once it has upgraded it
/// ([`SqliteStore::upgrade`]).
const UPGRADES_FROM: i64 = 3;

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // 4 KiB pages for a new file (an existing one keeps its own). Measured together
    // (BENCHMARKS.md): 4 KiB pages write 2.0M events/s and, at 20k events/s, 13 MB/s to
    // disk; 16 KiB pages 2.6M and 26 MB/s; 64 KiB pages 4.5M and 52 MB/s. Each 5 ms
    // commit writes every page it touched whole, so at the rates a server records most
    // of the time the small page writes a quarter of what the large one does, and it
    // still has headroom over the 1.5M events/s the recorder is asked to sustain. Must
    // precede WAL mode.
    conn.pragma_update(None, "page_size", 4096)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // No checkpoint inside a commit (SQLite's default, every 1000 pages, stalled the
    // recorder for up to 0.56 s at 100k events/s): the writer's `Checkpointer` does it.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // A WAL that grew past the bound (readers held it) is cut back to it when it starts
    // over, rather than keep its largest size for good.
    conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
    // 64 MiB of page cache: batches touch the tail of the table and its index.
    conn.pragma_update(None, "cache_size", -65536)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get(0),
    )?;
    if tables == 0 {
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    } else if version != SCHEMA_VERSION && version != UPGRADES_FROM {
        return Err(StoreError::Corrupt(format!(
            "{} holds events in layout version {version}, this Raven writes version {SCHEMA_VERSION}; move the file aside",
            path.display()
        )));
    }
    // Opening an existing file writes nothing, so readers opening never contend with
    // the recorder for the write lock.
    Ok(conn)
}

impl ReadSql for SqliteStore {
    type Id = i64;

    fn ids(&mut self, names: &[String]) -> Result<Vec<i64>, StoreError> {
        let mut ids = Vec::new();
        for name in names {
            let id: Option<i64> = self
                .conn
                .query_row("SELECT id FROM instruments WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            ids.extend(id);
        }
        Ok(ids)
    }

    fn runs_from(&mut self, first: i64) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT run FROM runs WHERE run >= ?1 ORDER BY run")?
            .query_map([first], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn seek(&mut self, run: i64, id: i64, seek: Seek) -> Result<Option<i64>, StoreError> {
        let (sql, time) = match seek {
            Seek::LastBefore(t) => (
                "SELECT position FROM marks WHERE run = ?1 AND instrument = ?2 \
                 AND publish_time < ?3 ORDER BY publish_time DESC, position DESC LIMIT 1",
                t,
            ),
            Seek::FirstFrom(t) => (
                "SELECT position FROM marks WHERE run = ?1 AND instrument = ?2 \
                 AND publish_time >= ?3 ORDER BY publish_time, position LIMIT 1",
                t,
            ),
        };
        Ok(self
            .conn
            .prepare_cached(sql)?
            .query_row(params![run, id, time], |r| r.get(0))
            .optional()?)
    }

    /// Reads in chunks of [`QUERY_CHUNK`] blocks (fewer when the picker has enough),
    /// each in a read transaction of its own that ends before the picked events are
    /// handed on: a slow client never holds the WAL back.
    fn blocks(
        &mut self,
        stretch: &Stretch<'_, i64>,
        picker: &mut dyn Picker,
    ) -> Result<(), StoreError> {
        // Ids are integers (ours), so they go in the text; the list's length varies,
        // which placeholders cannot.
        let ids: Vec<String> = stretch.ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT position, channels, bytes FROM events WHERE run = ?1 \
             AND position > ?7 AND position + rows > ?2 AND position < ?3 \
             AND (instrument IS NULL OR instrument IN ({})) AND channels & ?4 <> 0 \
             AND publish_time < ?5 ORDER BY position LIMIT ?6",
            ids.join(",")
        );
        let (start, end) = stretch.positions;
        let want = stretch
            .wanted
            .map_or(QUERY_CHUNK, |w| w.clamp(1, QUERY_CHUNK as u64) as usize);
        // Blocks start after this one: a block starting up to `MAX_BLOCK_ROWS` before
        // `start` may hold events from it on; the next chunk starts after the last block.
        let mut after = start - MAX_BLOCK_ROWS as i64;
        loop {
            // Whether the chunk stopped before the blocks ran out.
            let mut more = false;
            {
                let mut statement = self.conn.prepare_cached(&sql)?;
                let mut rows = statement.query(params![
                    stretch.run,
                    start,
                    end,
                    stretch.channels,
                    stretch.before,
                    want as i64,
                    after
                ])?;
                let mut read = 0;
                while let Some(row) = rows.next()? {
                    let bytes = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
                    after = row.get(0)?;
                    read += 1;
                    if !picker.pick(after, row.get(1)?, bytes)? || read == want {
                        more = true;
                        break;
                    }
                }
                // Dropping the rows resets the statement: the read transaction ends.
            }
            if !picker.hand() || !more {
                return Ok(());
            }
        }
    }
}

impl WriteSql for SqliteStore {
    type Id = i64;

    fn instrument_id(&mut self, name: &str) -> Result<i64, StoreError> {
        if let Some(&id) = self.instruments.get(name) {
            return Ok(id);
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO instruments (name) VALUES (?1)",
            [name],
        )?;
        let id: i64 =
            self.conn
                .query_row("SELECT id FROM instruments WHERE name = ?1", [name], |r| {
                    r.get(0)
                })?;
        self.instruments.insert(name.to_owned(), id);
        Ok(id)
    }

    // Every statement of a commit is prepared once and cached: at 200 commits a second
    // (a 5 ms window), parsing them again each time was a tenth of the writer's time.
    fn begin(&mut self) -> Result<(), StoreError> {
        // Immediate: the write lock is taken (or waited for) up front, not on the first
        // insert after a read.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(())
    }

    /// A batch's events are its claim: the positions from its number's first to the next
    /// number's are its own ([`position`]), so one block there means it is stored. A row
    /// of its own in a claim table was a sixth of the pages each commit wrote (at the
    /// idle server's 140 commits a second, BENCHMARKS.md).
    fn claim(&mut self, run: i64, number: i64, _rows: usize) -> Result<bool, StoreError> {
        let number = number as u64;
        let done = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM events WHERE run = ?1 AND position >= ?2 AND position < ?3 LIMIT 1",
            )?
            .query_row(
                params![run, position(number, 0), position(number + 1, 0)],
                |_| Ok(()),
            )
            .optional()?;
        Ok(done.is_none())
    }

    fn add_run(&mut self, run: i64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO runs (run) VALUES (?1)")?
            .execute([run])?;
        Ok(())
    }

    fn add_marks(&mut self, run: i64, marks: &[(i64, i64, i64)]) -> Result<(), StoreError> {
        let mut mark = self.conn.prepare_cached(
            "INSERT INTO marks (run, instrument, publish_time, position) \
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        for &(id, time, position) in marks {
            mark.execute(params![run, id, time, position])?;
        }
        Ok(())
    }

    fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    fn add_blocks(&mut self, run: i64, blocks: &[Block<'_, i64>]) -> Result<(), StoreError> {
        let mut insert = self.conn.prepare_cached(
            "INSERT INTO events (run, position, instrument, channels, publish_time, rows, \
             bytes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        // Raw binds: the block loop is the recorder's hot path.
        insert.raw_bind_parameter(1, run)?;
        for block in blocks {
            insert.raw_bind_parameter(2, block.position)?;
            insert.raw_bind_parameter(3, block.instrument)?;
            insert.raw_bind_parameter(4, block.channels)?;
            insert.raw_bind_parameter(5, block.publish_time)?;
            insert.raw_bind_parameter(6, block.rows)?;
            insert.raw_bind_parameter(7, block.bytes)?;
            insert.raw_execute()?;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if self.checkpointer.is_none() {
            // Only another process can hold the write lock (readers never take it): the
            // recorder waits this long for it, then spills, rather than stall the engine
            // behind a `sqlite3` shell's open transaction.
            self.conn.busy_timeout(WRITE_LOCK_WAIT)?;
            self.upgrade()?;
            self.checkpointer = Some(Checkpointer::start(&self.path)?);
            self.conn.wal_hook(Some(note_wal_frames));
        }
        let mut marker = std::mem::take(&mut self.marker);
        let written = write_batch(self, &mut marker, batch);
        self.marker = marker;
        written?;
        self.bound_wal();
        Ok(())
    }

    fn query(
        &mut self,
        query: &Query,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        read_rows(self, query, each)
    }

    fn last_checkpoint(
        &mut self,
        instrument: &str,
        at: u64,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let at = i64::try_from(at).unwrap_or(i64::MAX);
        let found: Option<(i64, i64)> = self
            .conn
            .query_row(
                "SELECT e.run, e.position FROM events e JOIN instruments i ON i.id = e.instrument \
                 WHERE i.name = ?1 AND e.channels = 1 AND e.publish_time <= ?2 \
                 ORDER BY e.publish_time DESC, e.run DESC, e.position DESC LIMIT 1",
                params![instrument, at],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(found.map(|(run, position)| (run as u64, position)))
    }

    fn instruments(&mut self) -> Result<Vec<String>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT name FROM instruments ORDER BY name")?;
        let names = q.query_map([], |r| r.get(0))?;
        Ok(names.collect::<Result<_, _>>()?)
    }

    fn count(&mut self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT coalesce(sum(rows), 0) FROM events", [], |r| {
                r.get(0)
            })?;
        Ok(n as u64)
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.checkpointer = None;
        self.conn = connect(&self.path)?;
        self.instruments.clear();
        self.marker.clear();
        Ok(())
    }
}
