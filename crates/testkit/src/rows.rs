//! Every row a store holds, read with plain SQL rather than through the store's own code,
//! and the audit every recorder test makes of them.

use std::collections::BTreeMap;

/// One stored row: (run, instrument, channel, sequence, bytes), read in record order.
pub type StoredRow = (i64, String, i16, i64, Vec<u8>);

/// Every row of the SQLite file at `path`.
pub fn sqlite_rows(path: &std::path::Path) -> Vec<StoredRow> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut q = conn
        .prepare(
            "SELECT e.run, i.name, e.channel, e.sequence, e.event FROM events e \
             JOIN instruments i ON i.id = e.instrument ORDER BY e.run, e.position",
        )
        .unwrap();
    q.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every row of the PostgreSQL `schema` on the shared server.
pub fn postgres_rows(schema: &str) -> Vec<StoredRow> {
    let mut client = postgres::Client::connect(crate::pg::PG, postgres::NoTls).unwrap();
    client
        .query(
            &format!(
                "SELECT e.run, i.name, e.channel, e.sequence, e.event FROM {schema}.events e \
                 JOIN {schema}.instruments i ON i.id = e.instrument ORDER BY e.run, e.position"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Within each run, every (instrument, channel) holds sequences 1, 2, 3, … with none
/// missing or repeated (checkpoint snapshots, channel 0, repeat the book's sequence and
/// are not checked); returns the number of rows per run, checkpoints included.
pub fn assert_contiguous(rows: &[StoredRow]) -> BTreeMap<i64, usize> {
    let mut last: BTreeMap<(i64, &str, i16), i64> = BTreeMap::new();
    let mut per_run = BTreeMap::new();
    for (run, name, channel, sequence, _) in rows {
        *per_run.entry(*run).or_insert(0) += 1;
        if *channel == 0 {
            continue;
        }
        let prev = last.entry((*run, name.as_str(), *channel)).or_insert(0);
        assert_eq!(
            *sequence,
            *prev + 1,
            "run {run} {name} channel {channel}: sequence {sequence} after {prev}"
        );
        *prev = *sequence;
    }
    per_run
}
