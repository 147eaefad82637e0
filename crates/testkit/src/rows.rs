//! Every event a store holds, read with plain SQL (each block split by the events' own
//! headers) rather than through the store's own code, and the audit every recorder test
//! makes of them.

use std::collections::BTreeMap;

/// One stored event: (run, instrument, channel, sequence, bytes), read in record order;
/// channel 0 for a checkpoint snapshot.
pub type StoredRow = (i64, String, i16, i64, Vec<u8>);

/// The blocks' SQL, both stores: every block in record order.
const BLOCKS: &str = "SELECT run, channels, bytes FROM events ORDER BY run, position";

/// The events of a block, split by their own headers (a checkpoint's block has only
/// channel bit 0).
fn split(run: i64, channels: i32, bytes: &[u8], out: &mut Vec<StoredRow>) {
    for event in raven_proto::wire::scan::framed(bytes) {
        let (own, header) = event.expect("a stored event scans");
        out.push((
            run,
            String::from_utf8(header.instrument.to_vec()).expect("a UTF-8 instrument"),
            if channels == 1 {
                0
            } else {
                header.channel as i16
            },
            header.sequence as i64,
            own.to_vec(),
        ));
    }
}

/// Every event of the SQLite file at `path`.
pub fn sqlite_rows(path: &std::path::Path) -> Vec<StoredRow> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut q = conn.prepare(BLOCKS).unwrap();
    let mut blocks = q.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(r) = blocks.next().unwrap() {
        let bytes = r.get_ref(2).unwrap().as_blob().unwrap();
        split(r.get(0).unwrap(), r.get(1).unwrap(), bytes, &mut out);
    }
    out
}

/// Every event of the PostgreSQL `schema` on the shared server.
pub fn postgres_rows(schema: &str) -> Vec<StoredRow> {
    let mut client = postgres::Client::connect(crate::pg::PG, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("SET search_path TO {schema}"))
        .unwrap();
    let mut out = Vec::new();
    for r in client.query(BLOCKS, &[]).unwrap() {
        split(r.get(0), r.get(1), r.get(2), &mut out);
    }
    out
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
