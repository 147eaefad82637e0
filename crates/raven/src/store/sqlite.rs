//! The SQLite store: one file in WAL mode, written by one connection. A batch is one
//! transaction of prepared inserts; `synchronous = NORMAL` (safe in WAL: a crash loses at
//! most the last commits, never consistency).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Batch, Query, Store, StoreError, position, to_i64};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instruments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS batches (
    run INTEGER NOT NULL,
    number INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    PRIMARY KEY (run, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    run INTEGER NOT NULL,
    position INTEGER NOT NULL,
    instrument INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    exchange_time INTEGER NOT NULL,
    receive_time INTEGER NOT NULL,
    publish_time INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (run, position)
) WITHOUT ROWID;
";

/// Events in a SQLite file.
pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    instruments: HashMap<String, i64>,
}

impl SqliteStore {
    /// Opens (creating if need be) the database at `path`, and its directory.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = connect(path)?;
        Ok(SqliteStore {
            path: path.to_owned(),
            conn,
            instruments: HashMap::new(),
        })
    }

    /// `PRAGMA integrity_check`'s verdict: "ok" for a sound file.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

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
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        // Instruments first, outside the batch's transaction: an id that outlives a
        // failed batch is harmless.
        let mut ids = Vec::with_capacity(batch.len());
        for row in batch.rows() {
            ids.push(self.instrument_id(row?.instrument)?);
        }
        let run = to_i64(batch.run, "run")?;
        let number = to_i64(batch.number, "batch number")?;
        let tx = self.conn.transaction()?;
        let done = tx
            .query_row(
                "SELECT 1 FROM batches WHERE run = ?1 AND number = ?2",
                params![run, number],
                |_| Ok(()),
            )
            .optional()?;
        if done.is_some() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO batches (run, number, rows) VALUES (?1, ?2, ?3)",
            params![run, number, batch.len() as i64],
        )?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (run, position, instrument, channel, sequence, \
                 exchange_time, receive_time, publish_time, kind, event) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for (index, (row, id)) in batch.rows().zip(ids).enumerate() {
                let row = row?;
                insert.execute(params![
                    run,
                    position(batch.number, index),
                    id,
                    row.channel,
                    to_i64(row.sequence, "sequence")?,
                    to_i64(row.exchange_time, "exchange time")?,
                    to_i64(row.receive_time, "receive time")?,
                    to_i64(row.publish_time, "publish time")?,
                    row.kind,
                    row.bytes,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn query(
        &mut self,
        query: &Query,
        each: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        for name in &query.instruments {
            let id: Option<i64> = self
                .conn
                .query_row("SELECT id FROM instruments WHERE name = ?1", [name], |r| {
                    r.get(0)
                })
                .optional()?;
            ids.extend(id);
        }
        if ids.is_empty() {
            return Ok(());
        }
        // Ids and channel numbers are integers (ours), so they go in the text; the list
        // lengths vary, which placeholders cannot.
        let list = |v: &mut dyn Iterator<Item = String>| v.collect::<Vec<_>>().join(",");
        let mut sql = format!(
            "SELECT run, event FROM events WHERE instrument IN ({})",
            list(&mut ids.iter().map(i64::to_string))
        );
        if !query.channels.is_empty() {
            sql += &format!(
                " AND channel IN ({})",
                list(&mut query.channels.iter().map(u8::to_string))
            );
        }
        sql += " AND publish_time >= ?1 AND publish_time < ?2 ORDER BY run, position LIMIT ?3";
        let (from, to) = query.range();
        let limit = if query.limit == 0 {
            -1
        } else {
            i64::try_from(query.limit).unwrap_or(i64::MAX)
        };
        let mut statement = self.conn.prepare(&sql)?;
        let mut rows = statement.query(params![from, to, limit])?;
        while let Some(row) = rows.next()? {
            let run: i64 = row.get(0)?;
            let bytes = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            if !each(run as u64, bytes) {
                break;
            }
        }
        Ok(())
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
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    fn reconnect(&mut self) -> Result<(), StoreError> {
        self.conn = connect(&self.path)?;
        self.instruments.clear();
        Ok(())
    }
}
