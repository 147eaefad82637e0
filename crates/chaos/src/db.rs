//! What a store holds, checked event by event in record order (read from the tables
//! directly, each block split into its events): per (run, instrument,
//! channel), every sequence must be stored once or counted by a gap row; anything else
//! is a duplicate or a silent hole.

use std::collections::HashMap;

use prost::Message;
use raven_proto::pb;
use raven_proto::wire::scan;

/// `raven.v1.Event` body field number of a status.
const STATUS: u32 = 15;

/// The audit of one store.
#[derive(Debug, Default, Clone, Copy)]
pub struct Audit {
    /// Event rows (checkpoints included, gap rows not).
    pub events: u64,
    /// Gap rows, and the events they say were lost.
    pub gap_rows: u64,
    pub gap_missed: u64,
    /// Rows whose sequence was already stored.
    pub duplicates: u64,
    /// Sequences neither stored nor counted by a gap: silent loss.
    pub holes: u64,
    /// Runs seen.
    pub runs: u64,
    /// Per-run event rows, oldest run first.
    pub per_run: [u64; 4],
}

#[derive(Default)]
struct Tally {
    audit: Audit,
    next: HashMap<(i64, Vec<u8>, i64), i64>,
    runs: Vec<i64>,
}

impl Tally {
    fn row(
        &mut self,
        run: i64,
        instrument: &[u8],
        channel: i64,
        sequence: i64,
        status: Option<&[u8]>,
    ) {
        if self.runs.last() != Some(&run) {
            self.runs.push(run);
        }
        let index = (self.runs.len() - 1).min(3);
        let gap = status
            .and_then(|bytes| pb::StreamResponse::decode(bytes).ok())
            .and_then(|r| r.events.into_iter().next())
            .and_then(|e| match e.body {
                Some(pb::event::Body::Status(s)) if s.kind == pb::StatusKind::Gap as i32 => {
                    Some(s.missed as i64)
                }
                _ => None,
            });
        if channel == 0 {
            // Checkpoints repeat the book's sequence.
            self.audit.events += 1;
            self.audit.per_run[index] += 1;
            return;
        }
        let next = self
            .next
            .entry((run, instrument.to_vec(), channel))
            .or_insert(1);
        let (first, last) = match gap {
            Some(missed) => {
                self.audit.gap_rows += 1;
                self.audit.gap_missed += missed as u64;
                (sequence - missed + 1, sequence)
            }
            None => {
                self.audit.events += 1;
                self.audit.per_run[index] += 1;
                (sequence, sequence)
            }
        };
        if first < *next {
            self.audit.duplicates += 1;
        } else {
            self.audit.holes += (first - *next) as u64;
            *next = last + 1;
        }
    }

    fn finish(mut self) -> Audit {
        self.audit.runs = self.runs.len() as u64;
        self.audit
    }
}

/// Every block in record order; its events are split out with `wire::scan`.
const BLOCKS: &str = "SELECT run, channels, bytes FROM events ORDER BY run, position";

impl Tally {
    /// Tallies each event of a stored block (a checkpoint's block has only channel bit 0).
    fn block(&mut self, run: i64, channels: i64, bytes: &[u8]) -> anyhow::Result<()> {
        for event in scan::framed(bytes) {
            let (own, header) = event?;
            let channel = if channels == 1 {
                0
            } else {
                header.channel as i64
            };
            let status = (header.body == STATUS).then_some(own);
            self.row(
                run,
                header.instrument,
                channel,
                header.sequence as i64,
                status,
            );
        }
        Ok(())
    }
}

/// Audits a SQLite file.
pub fn sqlite(path: &std::path::Path) -> anyhow::Result<(Audit, String)> {
    let conn = rusqlite::Connection::open(path)?;
    let mut tally = Tally::default();
    let mut query = conn.prepare(BLOCKS)?;
    let mut rows = query.query([])?;
    while let Some(r) = rows.next()? {
        let bytes = r.get_ref(2)?.as_blob()?;
        tally.block(r.get(0)?, r.get(1)?, bytes)?;
    }
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    Ok((tally.finish(), integrity))
}

/// Audits a PostgreSQL schema.
pub fn postgres(url: &str, schema: &str) -> anyhow::Result<Audit> {
    let mut client = postgres::Client::connect(url, postgres::NoTls)?;
    client.batch_execute(&format!("SET search_path TO {schema}"))?;
    let mut tally = Tally::default();
    for r in client.query(BLOCKS, &[])? {
        let (run, channels): (i64, i32) = (r.get(0), r.get(1));
        tally.block(run, i64::from(channels), r.get(2))?;
    }
    Ok(tally.finish())
}
