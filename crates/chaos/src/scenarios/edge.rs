//! The scale-out scenario: an ingest node and its edge through a NATS outage, judged by
//! what the edge's subscriber got against what the ingest node recorded (issue 15).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use raven_testkit::nats::PrivateNats;

use super::{audit_sqlite, blocking, exit_note, max_trade_sequences, outcome, sleep, sqlite_of};
use crate::probe::{self, Watched};
use crate::server::Server;
use crate::{Options, Row};

/// An ingest node (20k events/s, recording to SQLite) and an edge on a NATS of the
/// scenario's own (file storage); NATS is killed (-9) twice and restarted after 5 s.
/// The ingest node holds its batches meanwhile (well under `buffer_bytes`) and the stream
/// keeps what it took, so nothing may be missing from replication: the recording is
/// whole, the edge finds no gap in what it reads, and its live subscriber gets every
/// trade the ingest node recorded after its first, once, in order, but for what its own
/// gap statuses count (the edge sends five seconds at once when NATS is back: a reader
/// that falls behind is served under its overflow policy, like any other).
pub(super) async fn nats_kill(o: &Options, dir: &Path) -> anyhow::Result<Row> {
    let mut nats = PrivateNats::start(dir.join("nats"));
    let replication = format!(
        "[replication]\nnats = \"{}\"\ncluster = \"chaos\"\nstorage = \"file\"\n",
        nats.url()
    );
    let ingest = Server::start(
        &o.raven,
        dir,
        &format!("[server]\nrole = \"ingest\"\n[sim]\nrate = 20000\n{replication}"),
        &[],
    )?;
    let edge = Server::start(
        &o.raven,
        &dir.join("edge"),
        &format!("[server]\nrole = \"edge\"\n{replication}"),
        &[],
    )?;
    blocking(|| edge.wait_log("edge node ready", Duration::from_secs(30)))?;
    let watcher = probe::watch(edge.addr).await?;
    for _ in 0..2 {
        sleep(5.0).await;
        blocking(|| nats.stop());
        sleep(5.0).await;
        blocking(|| nats.restart());
    }
    sleep(10.0).await;
    let stopped = blocking(|| ingest.terminate(Duration::from_secs(60)))?;
    // What the ingest node published last reaches the edge; then it has nothing more.
    sleep(3.0).await;
    let watched = watcher.finish().await?;
    let counted = blocking(|| {
        probe::metrics(
            edge.http,
            &[
                "raven_edge_gaps_total",
                "raven_edge_resyncs_total",
                "raven_subscriber_lagged_total",
            ],
        )
    })?;
    let (replica_gaps, replica_resyncs, lagged) = (counted[0], counted[1], counted[2]);
    let edge_stopped = blocking(|| edge.terminate(Duration::from_secs(60)))?;
    let audit = blocking(|| audit_sqlite(dir))?;
    let stored_max = blocking(|| max_trade_sequences(&sqlite_of(dir)))?;
    let edge = edge_trades(&watched, &stored_max);
    let mut row = outcome(&stopped, &audit, Some(watched.longest_pause));
    row.lost += edge.missing;
    row.gaps += watched.trades_missed;
    row.silent += edge.missing.saturating_sub(watched.trades_missed);
    row.duplicates += edge.repeated;
    row.note = format!(
        "{}NATS killed twice for 5 s; the edge read the stream with {replica_gaps} gaps and {replica_resyncs} resyncs; its subscriber got {} trades ({} missing, {} counted by {} gap statuses, {} twice; {} resync statuses; its queue overflowed {lagged} times; told STALE {} times; the pause is NATS's outage), edge exit {:.2} s",
        exit_note(&stopped),
        watched.trades.len(),
        edge.missing,
        watched.trades_missed,
        watched.gaps,
        edge.repeated,
        watched.resyncs,
        watched.stale,
        edge_stopped.exit_s
    );
    row.pass = stopped.success
        && audit.holes == 0
        && audit.duplicates == 0
        && row.published.is_some_and(|p| p == audit.events)
        && edge_stopped.success
        && replica_gaps == 0.0
        && replica_resyncs == 0.0
        && edge.missing == watched.trades_missed
        && edge.repeated == 0
        && watched.stale > 0
        && !watched.trades.is_empty();
    Ok(row)
}

/// What an edge's subscriber missed or got twice of the recorded trades, from its first
/// trade of each instrument to the last the ingest node recorded.
struct EdgeTrades {
    missing: u64,
    repeated: u64,
}

fn edge_trades(watched: &Watched, stored_max: &HashMap<String, u64>) -> EdgeTrades {
    let mut by: HashMap<&str, Vec<u64>> = HashMap::new();
    for (instrument, sequence) in &watched.trades {
        by.entry(instrument).or_default().push(*sequence);
    }
    let (mut missing, mut repeated) = (0, 0);
    for (instrument, &last) in stored_max {
        let Some(got) = by.get(instrument.as_str()) else {
            continue;
        };
        let mut expected = got[0];
        for &sequence in got {
            if sequence < expected {
                repeated += 1;
                continue;
            }
            missing += sequence - expected;
            expected = sequence + 1;
        }
        missing += (last + 1).saturating_sub(expected);
    }
    EdgeTrades { missing, repeated }
}
