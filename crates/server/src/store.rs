//! Event storage: what the recorder writes and the query side reads. Two stores, SQLite
//! (the embedded default: one file, WAL) and PostgreSQL (binary `COPY`), behind one
//! [`Store`] trait. Writing a batch is `write_batch` and reading is `read_rows`, once
//! each: the stores give them only their SQL (`WriteSql`, `ReadSql`; SQLite also reads
//! in short chunks, PostgreSQL streams). Batching, spill and retry live in the recorder
//! and are shared.
//!
//! Both stores keep these tables:
//! - `events`: one row per **block**: consecutive events of one batch (see [`blocks`]),
//!   their wire bytes end to end (each a one-event `StreamResponse`, exactly what a
//!   subscriber received; together a valid `StreamResponse`). Columns: `run` (the server
//!   run, its start time in ns; sequences restart per run), `position` (of the block's
//!   first event: batch number << 24 | index in batch, so record order; the block's
//!   events are at the positions that follow), `instrument` (the id, when every event of
//!   the block is of one instrument; NULL otherwise), `channels` (bit `c` set for each
//!   channel `c` among its events), the earliest publish time among them, the number of
//!   events, and the bytes. Primary key (run, position). A row per event cost the
//!   database more than the event itself (a SQL row takes about a microsecond to
//!   insert, whatever its size); a block of tens of events costs little more than one,
//!   and a read splits it again with `wire::scan` at memory speed, checking each event's
//!   instrument, channel, time and position. Checkpoint snapshots are blocks of their
//!   own with only the [`CHECKPOINT_CHANNEL`] bit set, under a partial index.
//! - `instruments`: name ↔ id.
//! - `batches` (PostgreSQL): (run, number, rows) of every batch written, in the batch's
//!   own transaction, so a batch retried after an unacknowledged commit is skipped,
//!   never duplicated. SQLite has no such table: a batch's positions are its own, so its
//!   stored events are its claim, and each of its commits writes a page less.
//! - `runs`: every run with stored events.
//! - `marks`: the time index: the run, instrument, publish time and position of some of
//!   an instrument's events (its first in the run, then one at most every
//!   [`MARK_EVERY`], each the first of its batch; see [`Marker`]). The engine stamps publish times that never go backwards, and each
//!   shard's events reach the recorder in order, so within a run an instrument's events
//!   are in publish-time order; two seeks in `marks` then bound the positions a time
//!   range can hold (see [`span`]), and a query reads that stretch of the primary key
//!   rather than the run.

mod batch;
mod blocks;
pub mod postgres;
pub mod spill;
pub mod sqlite;

pub use batch::{Batch, Row, channel_column, row};
pub(crate) use blocks::{Block, blocks};

use blocks::Selection;

/// The `channel` column of checkpoint snapshots (`raven.v1.Channel` 0 is unused by
/// events): queries for channels never return them; `BookAt` starts from one.
pub const CHECKPOINT_CHANNEL: u8 = 0;

/// Rows a batch may hold: `position` keeps 24 bits for the index within a batch.
pub const MAX_BATCH_ROWS: usize = 1 << 24;

/// Events a block holds at most; a read that starts inside a block finds the block's
/// start within this many positions before.
pub(crate) const MAX_BLOCK_ROWS: usize = 1024;

/// The `channels` bit of `channel`.
pub(crate) const fn channel_bit(channel: u8) -> i32 {
    1 << channel
}

/// The `channels` of a checkpoint's block; the partial indexes on checkpoints (and the
/// queries that use them) spell it out as `channels = 1`.
pub(crate) const CHECKPOINT_BIT: i32 = channel_bit(CHECKPOINT_CHANNEL);
const _: () = assert!(CHECKPOINT_BIT == 1);

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused, or the connection is gone.
    #[error("postgres: {}", postgres_reason(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The file system (database directory, spill file).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Stored or spilled bytes that do not read back.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A store URL that names no store.
    #[error("{0}")]
    Url(String),
}

impl StoreError {
    /// True when trying again later can succeed: the store is unreachable, busy, locked,
    /// out of space or failing I/O, all of which pass. False when it refused in a way
    /// that stays until someone acts: permission or authentication refused, a table or
    /// schema that is not there or not Raven's, a corrupt or read-only file, data it
    /// will never take. The recorder retries the first quietly and reports the second
    /// as recording being down, loudly.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => sqlite_transient(e),
            StoreError::Postgres(e) => postgres_transient(e),
            StoreError::Io(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ),
            StoreError::Corrupt(_) | StoreError::Url(_) => false,
        }
    }
}

fn sqlite_transient(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    match error.sqlite_error_code() {
        Some(
            DatabaseBusy
            | DatabaseLocked
            | DiskFull
            | SystemIoFailure
            | OutOfMemory
            | FileLockingProtocolFailed
            | OperationInterrupted
            | SchemaChanged,
        ) => true,
        // Anything else SQLite itself says (permission, read-only, corrupt, not a
        // database, constraint, misuse) stays until someone acts.
        Some(_) => false,
        // Not from SQLite's engine (a type conversion, a bad parameter): a defect.
        None => false,
    }
}

fn postgres_transient(error: &::postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        // No answer from the server: the connection failed, closed or timed out.
        return true;
    };
    let code = db.code().code();
    // SQLSTATE classes that pass: connection exceptions (08), insufficient resources
    // (53: disk full, out of memory, too many connections), operator intervention (57:
    // shutdown, cannot connect now), transaction rollback (40: serialization, deadlock),
    // lock not available (55P03).
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code.starts_with("40")
        || code == "55P03"
}

/// What the server said, when it said something: the client's own text for a server
/// error is only "db error".
fn postgres_reason(error: &::postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => error.to_string(),
    }
}

/// Which stored events to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Instrument names; names the store does not hold match nothing.
    pub instruments: Vec<String>,
    /// `raven.v1.Channel` numbers; empty means every channel (checkpoints excluded:
    /// they are read only when asked for, as `CHECKPOINT_CHANNEL`).
    pub channels: Vec<u8>,
    /// Publish time from (inclusive), Unix ns.
    pub from: u64,
    /// Publish time to (exclusive), Unix ns.
    pub to: u64,
    /// Most events; 0 means no limit.
    pub limit: u64,
    /// Only rows at or after this (run, position), in record order.
    pub after: Option<(u64, i64)>,
}

impl Query {
    /// Everything stored for `instruments` on `channels`.
    pub fn all(instruments: &[&str], channels: &[u8]) -> Query {
        Query {
            instruments: instruments.iter().map(|s| (*s).to_owned()).collect(),
            channels: channels.to_vec(),
            from: 0,
            to: u64::MAX,
            limit: 0,
            after: None,
        }
    }

    /// The time range as the i64s both databases hold (times past 2262 clamp).
    pub(crate) fn range(&self) -> (i64, i64) {
        let clamp = |t: u64| i64::try_from(t).unwrap_or(i64::MAX);
        (clamp(self.from), clamp(self.to))
    }
}

/// A place events are recorded.
pub trait Store: Send {
    /// What and where, for logs.
    fn describe(&self) -> String;

    /// Writes `batch` in one transaction. A batch already stored (same run and number) is
    /// skipped, so retrying a batch whose commit was not acknowledged cannot duplicate it.
    fn write(&mut self, batch: &Batch) -> Result<(), StoreError>;

    /// Hands every stored event matching `query` to `each` as (run, wire bytes), in record
    /// order (run, then position), until `each` returns false.
    fn query(
        &mut self,
        query: &Query,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Where the last checkpoint snapshot of `instrument` published at or before `at`
    /// is: (run, position).
    fn last_checkpoint(
        &mut self,
        instrument: &str,
        at: u64,
    ) -> Result<Option<(u64, i64)>, StoreError>;

    /// Names of every instrument with stored events.
    fn instruments(&mut self) -> Result<Vec<String>, StoreError>;

    /// Events stored.
    fn count(&mut self) -> Result<u64, StoreError>;

    /// Drops the connection and opens a new one (after a failure).
    fn reconnect(&mut self) -> Result<(), StoreError>;
}

/// Opens the store `url` names: `postgres://…` (tables in `schema`, created if need be),
/// `sqlite:PATH`, or a plain path (SQLite).
pub fn open(url: &str, schema: &str) -> Result<Box<dyn Store>, StoreError> {
    let Some(path) = sqlite_path(url) else {
        return Ok(Box::new(postgres::PostgresStore::connect(url, schema)?));
    };
    if path.as_os_str().is_empty() || path.to_string_lossy().contains("://") {
        return Err(StoreError::Url(format!(
            "store {url:?}: expected postgres://…, sqlite:PATH or a file path"
        )));
    }
    Ok(Box::new(sqlite::SqliteStore::open(path)?))
}

/// The database file of a SQLite store `url` (as [`open`] reads it); `None` for
/// PostgreSQL.
pub fn sqlite_path(url: &str) -> Option<&std::path::Path> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    Some(std::path::Path::new(
        url.strip_prefix("sqlite:").unwrap_or(url),
    ))
}

/// The directory a file is in (`.` for a bare name): where its filesystem is asked about.
pub fn directory(file: &std::path::Path) -> &std::path::Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// True when `url` is a SQLite file on the same filesystem as `spill` (both directories
/// exist by now): one full disk then fails the store and leaves the spill file only its
/// reservation.
pub fn shares_filesystem(url: &str, spill: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(database) = sqlite_path(url) else {
        return false;
    };
    let device = |file: &std::path::Path| std::fs::metadata(directory(file)).map(|m| m.dev()).ok();
    matches!((device(database), device(spill)), (Some(a), Some(b)) if a == b)
}

/// A seek in one run's marks of one instrument.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seek {
    /// The position of the last mark published before this time.
    LastBefore(i64),
    /// The position of the first mark published at or after this time.
    FirstFrom(i64),
}

/// The positions `[start, end)` of `run` that can hold rows of `query` (instruments
/// `ids`), from each instrument's marks (`seek`), or `None` when none can. An
/// instrument's events before its last mark published before `from` were all published
/// before `from`, and its events from its first mark published at or after `to` on were
/// all published at or after `to`, because its publish times only grow within a run.
pub(crate) fn span<I: Copy>(
    query: &Query,
    run: u64,
    ids: &[I],
    mut seek: impl FnMut(I, Seek) -> Result<Option<i64>, StoreError>,
) -> Result<Option<(i64, i64)>, StoreError> {
    let (from, to) = query.range();
    let (mut start, mut end) = (i64::MAX, i64::MIN);
    for &id in ids {
        let first = match seek(id, Seek::LastBefore(from))? {
            Some(position) => Some(position),
            None => seek(id, Seek::FirstFrom(from))?,
        };
        // No mark at all: the instrument has no events in this run.
        let Some(first) = first else { continue };
        let past = seek(id, Seek::FirstFrom(to))?.unwrap_or(i64::MAX);
        if first < past {
            start = start.min(first);
            end = end.max(past);
        }
    }
    if let Some((after_run, after_position)) = query.after
        && after_run == run
    {
        start = start.max(after_position);
    }
    Ok((start < end).then_some((start, end)))
}

/// An instrument gets a new mark once its last is this old (ns). Any of an instrument's
/// events may be a mark, so sparse marks bound a range as exactly as dense ones, only
/// less tightly: a query reads up to this much of the run more on each side. One per
/// 100 ms keeps the index to a few rows a second: a mark per batch put a page of each
/// instrument's marks in every commit's WAL frames.
pub(crate) const MARK_EVERY: u64 = 100_000_000;

/// Which rows of a batch become marks: an instrument's first event in a run (always: a
/// range's start is found from it), then its first event in a batch once its last mark
/// is `MARK_EVERY` old. Batches may reach the store out of order (a gap batch written
/// after later ones, a batch retried from the spill file), so an event published before
/// the earliest mark of its instrument is marked too: it may be the first. Remembers the
/// (earliest, latest) mark written per (run, instrument).
#[derive(Debug, Default)]
pub(crate) struct Marker<I> {
    marks: std::collections::HashMap<(u64, I), (u64, u64)>,
}

impl<I: Copy + Eq + std::hash::Hash> Marker<I> {
    /// The indexes of `rows` (with their instrument `ids`) to mark.
    pub(crate) fn pick(&self, run: u64, rows: &[Row<'_>], ids: &[I]) -> Vec<usize> {
        let mut seen = std::collections::HashSet::new();
        let mut previous = None;
        let mut out = Vec::new();
        for (index, (&id, row)) in ids.iter().zip(rows).enumerate() {
            // An instrument's events come in runs (a shard flushes one at a time): most
            // rows are settled by comparing with the row before.
            if previous == Some(id) {
                continue;
            }
            previous = Some(id);
            if !seen.insert(id) {
                continue;
            }
            let due = self
                .marks
                .get(&(run, id))
                .is_none_or(|&(earliest, latest)| {
                    row.publish_time < earliest
                        || row.publish_time >= latest.saturating_add(MARK_EVERY)
                });
            if due {
                out.push(index);
            }
        }
        out
    }

    /// Records the marks of a committed batch (a batch that failed wrote none).
    pub(crate) fn written(&mut self, run: u64, rows: &[Row<'_>], ids: &[I], marks: &[usize]) {
        for &index in marks {
            let time = rows[index].publish_time;
            self.marks
                .entry((run, ids[index]))
                .and_modify(|(earliest, latest)| {
                    *earliest = (*earliest).min(time);
                    *latest = (*latest).max(time);
                })
                .or_insert((time, time));
        }
    }

    /// Forgets everything (a new connection): the next batches mark again.
    pub(crate) fn clear(&mut self) {
        self.marks.clear();
    }
}

/// The SQL a store speaks to write a batch. What writing a batch is (instrument ids
/// outside the transaction, the claim that makes a retried batch a no-op,
/// the run, the time index's marks, the rows, commit, then remembering the marks) is
/// [`write_batch`], once for every store.
pub(crate) trait WriteSql {
    /// An instrument's id in this store.
    type Id: Copy + Eq + std::hash::Hash;

    /// The id of `name`, added when new (outside the batch's transaction: an id that
    /// outlives a failed batch is harmless).
    fn instrument_id(&mut self, name: &str) -> Result<Self::Id, StoreError>;

    /// Opens the batch's transaction.
    fn begin(&mut self) -> Result<(), StoreError>;

    /// Claims batch (run, number) for this transaction; false when the store holds it
    /// already (the retry of a batch whose commit went through unacknowledged).
    fn claim(&mut self, run: i64, number: i64, rows: usize) -> Result<bool, StoreError>;

    /// Records the run in `runs`, unless it is there.
    fn add_run(&mut self, run: i64) -> Result<(), StoreError>;

    /// Writes marks: (instrument, publish time, position).
    fn add_marks(&mut self, run: i64, marks: &[(Self::Id, i64, i64)]) -> Result<(), StoreError>;

    /// The most event bytes a block of this store holds (one event may be larger: it is
    /// a block of its own).
    fn block_bytes(&self) -> usize;

    /// Writes a batch's blocks.
    fn add_blocks(&mut self, run: i64, blocks: &[Block<'_, Self::Id>]) -> Result<(), StoreError>;

    /// Commits the batch's transaction.
    fn commit(&mut self) -> Result<(), StoreError>;

    /// Ends the transaction without its writes (after an error, or for a batch that was
    /// there already). Best effort: a connection that failed has no transaction left.
    fn rollback(&mut self);
}

/// Writes `batch` through `sql` in one transaction; a batch already stored is skipped.
pub(crate) fn write_batch<S: WriteSql>(
    sql: &mut S,
    marker: &mut Marker<S::Id>,
    batch: &Batch,
) -> Result<(), StoreError> {
    let rows: Vec<_> = batch.rows().collect();
    let ids = rows
        .iter()
        .map(|row| sql.instrument_id(row.instrument))
        .collect::<Result<Vec<_>, _>>()?;
    let run = to_i64(batch.run, "run")?;
    let number = to_i64(batch.number, "batch number")?;
    let picked = marker.pick(batch.run, &rows, &ids);
    let marks = picked
        .iter()
        .map(|&i| {
            let time = to_i64(rows[i].publish_time, "publish time")?;
            Ok((ids[i], time, position(batch.number, i)))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let blocks = blocks(batch, &rows, &ids, sql.block_bytes())?;
    sql.begin()?;
    let mut steps = || {
        if !sql.claim(run, number, rows.len())? {
            return Ok(false);
        }
        sql.add_run(run)?;
        sql.add_marks(run, &marks)?;
        sql.add_blocks(run, &blocks)?;
        sql.commit()?;
        Ok(true)
    };
    match steps() {
        Ok(true) => {
            marker.written(batch.run, &rows, &ids, &picked);
            Ok(())
        }
        Ok(false) => {
            sql.rollback();
            Ok(())
        }
        Err(error) => {
            sql.rollback();
            Err(error)
        }
    }
}

/// The SQL a store speaks to read. What a read is (the instruments' ids, the runs from
/// the query's start, each run's stretch from the time index, the limit, stopping when
/// told) is [`read_rows`], once for every store.
pub(crate) trait ReadSql {
    /// An instrument's id in this store.
    type Id: Copy;

    /// The ids of the instruments among `names` that the store holds.
    fn ids(&mut self, names: &[String]) -> Result<Vec<Self::Id>, StoreError>;

    /// The runs from `first` on, in order.
    fn runs_from(&mut self, first: i64) -> Result<Vec<i64>, StoreError>;

    /// One seek in the marks of (`run`, `id`).
    fn seek(&mut self, run: i64, id: Self::Id, seek: Seek) -> Result<Option<i64>, StoreError>;

    /// Reads the blocks `stretch` selects, in record order, into `picker`: each block
    /// goes to [`Picker::pick`] while the store reads (it only copies out the events
    /// the query selects), and what was picked to [`Picker::hand`] between reads, which
    /// the store keeps short. Stops when `hand` says so or the blocks run out.
    fn blocks(
        &mut self,
        stretch: &Stretch<'_, Self::Id>,
        picker: &mut dyn Picker,
    ) -> Result<(), StoreError>;
}

/// What a read does with the blocks a store finds (see [`ReadSql::blocks`]).
pub(crate) trait Picker {
    /// Copies the events of a block at `position` (with `channels`) that the query
    /// selects. False when it has picked enough for one hand: the store then ends its
    /// read and hands them on (it may also go on picking: nothing picked is lost).
    fn pick(&mut self, position: i64, channels: i32, bytes: &[u8]) -> Result<bool, StoreError>;

    /// Hands on what was picked; false when the query wants no more.
    fn hand(&mut self) -> bool;
}

/// The blocks a read asks a store for.
pub(crate) struct Stretch<'a, I> {
    /// Blocks of these instruments, or of several (each event is checked).
    pub ids: &'a [I],
    /// The run.
    pub run: i64,
    /// Blocks that hold events at positions `[start, end)`: starting before `end`, and
    /// ending after `start` (so starting less than [`MAX_BLOCK_ROWS`] before it).
    pub positions: (i64, i64),
    /// Blocks with any of these `channels` bits.
    pub channels: i32,
    /// Blocks whose first event was published before this.
    pub before: i64,
    /// Events still wanted, when the query has a limit: a store asks for no more blocks
    /// than this at a time. A block holds one event at least but may hold none the query
    /// selects (the time range and the position are checked per event), so a store
    /// reads on, chunk by chunk, until told to stop or out of blocks.
    pub wanted: Option<u64>,
}

/// Hands `each` every stored event `query` selects, through `sql`, as [`Store::query`]
/// promises: the store selects blocks by run, position, instrument, channels and
/// earliest publish time; a [`Selection`] picks the events out of them.
pub(crate) fn read_rows<S: ReadSql>(
    sql: &mut S,
    query: &Query,
    each: &mut dyn FnMut(u64, &[u8]) -> bool,
) -> Result<(), StoreError> {
    let ids = sql.ids(&query.instruments)?;
    if ids.is_empty() {
        return Ok(());
    }
    let first_run = match query.after {
        Some((run, _)) => to_i64(run, "run")?,
        None => i64::MIN,
    };
    let mut selection = Selection::new(query, each);
    for run in sql.runs_from(first_run)? {
        let bounds = span(query, run as u64, &ids, |id, seek| sql.seek(run, id, seek))?;
        let Some(positions) = bounds else {
            continue;
        };
        selection.run = run;
        selection.positions = positions;
        let stretch = Stretch {
            ids: &ids,
            run,
            positions,
            channels: selection.channels,
            before: query.range().1,
            wanted: selection.left,
        };
        sql.blocks(&stretch, &mut selection)?;
        if selection.done {
            return Ok(());
        }
    }
    Ok(())
}

/// `position` of row `index` of batch `number`.
pub(crate) fn position(number: u64, index: usize) -> i64 {
    ((number << 24) | index as u64) as i64
}

/// A stored time, sequence or run (u64) as the i64 both databases hold. Nanosecond
/// times fit until 2262; a value over i64::MAX is refused rather than wrapped.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} exceeds i64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> StoreError {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        ))
    }

    #[test]
    fn failures_that_pass_are_transient_and_refusals_are_not() {
        use rusqlite::ffi;
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
        ] {
            assert!(sqlite(code).is_transient(), "{}", sqlite(code));
        }
        for code in [
            ffi::SQLITE_READONLY,
            ffi::SQLITE_PERM,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_CONSTRAINT,
        ] {
            assert!(!sqlite(code).is_transient(), "{}", sqlite(code));
        }
        let io = |kind| StoreError::Io(std::io::Error::from(kind));
        assert!(io(std::io::ErrorKind::StorageFull).is_transient());
        assert!(io(std::io::ErrorKind::ConnectionReset).is_transient());
        assert!(!io(std::io::ErrorKind::PermissionDenied).is_transient());
        assert!(!StoreError::Corrupt("a row does not scan".into()).is_transient());
    }
}
