//! The history→live handover of a subscription with a start time: this run's recorded
//! events since the start, up to the sequence where the live part begins, then a
//! `HistoryEnd` marker. The events up to that sequence may still be on their way to the
//! store; rather than poll it, the handover waits on the recorder's commit watermark and
//! reads again only when a batch was committed.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use raven_model::{Channel, Event, EventBody, InstrumentId, Sequence, SnapshotKind, UnixNanos};
use raven_proto::convert::channel_to_pb;
use raven_proto::limits::MAX_START_BACKLOG;
use raven_proto::wire::{self, scan};
use tokio::sync::watch;

use super::book_at::Rebuilding;
use super::{QueryError, StoreReader};
use crate::store::{self, Query, Store};

/// How long a subscription waits for the recorder to store the last event before the
/// live part (normally one batch window, 5 ms).
const CATCH_UP: Duration = Duration::from_secs(5);

/// Where this server run's recorded events are, for subscriptions with a start time.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The store.
    pub reader: StoreReader,
    /// This run's id in it (its start time, ns): events published since have it.
    pub run: u64,
    /// Batches the recorder has committed; moves after every commit.
    pub committed: watch::Receiver<u64>,
}

/// Where a subscription with a start time finds what came before its live part.
#[derive(Clone)]
pub enum Backfill {
    /// This server's recording.
    Recorded(Recorded),
    /// An edge node's: the ingest node's stream.
    Stream(crate::replication::StreamHistory),
}

/// The events of `name` on `channel` published from `start`, up to and including
/// sequence `upto`, then a `HistoryEnd` marker, from `source`.
pub async fn backfill(
    source: &Backfill,
    name: &str,
    channel: Channel,
    start: u64,
    upto: u64,
    budget: &mut usize,
) -> Result<Vec<Bytes>, QueryError> {
    let mut rows = match source {
        Backfill::Recorded(recorded) => {
            backlog(recorded, name, channel, start, upto, budget).await?
        }
        Backfill::Stream(stream) => stream.backlog(name, channel, start, upto, budget).await?,
    };
    let mut marker = BytesMut::new();
    wire::put_history_end(
        &mut marker,
        &wire::Header {
            instrument: name,
            channel,
            sequence: upto,
            exchange_time: 0,
            receive_time: 0,
            publish_time: 0,
            venue_seq: 0,
        },
    );
    rows.push(marker.freeze());
    Ok(rows)
}

/// The recorded events of `name` on `channel` in this run, published from `start`, up to
/// and including sequence `upto`. For the book, what comes
/// first is the book as it was at `start` (rebuilt from the run's snapshot and deltas),
/// then every change after it. Takes the events' bytes from `budget` (what the whole
/// request may hold) and fails with [`QueryError::TooLarge`] past it.
async fn backlog(
    recorded: &Recorded,
    name: &str,
    channel: Channel,
    start: u64,
    upto: u64,
    budget: &mut usize,
) -> Result<Vec<Bytes>, QueryError> {
    let mut reader = recorded.reader.open().await?;
    let mut committed = recorded.committed.clone();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        // Marked seen before reading: a commit during the read wakes the next wait.
        committed.borrow_and_update();
        let (run, owned, limit) = (recorded.run, name.to_owned(), *budget);
        let found = reader
            .run(move |store| collect(store, &owned, channel, run, start, upto, limit))
            .await??;
        if let Some((rows, bytes)) = found {
            *budget -= bytes;
            return Ok(rows);
        }
        let behind = || {
            QueryError::Behind(format!(
                "the recorder has not stored {name} up to sequence {upto} after {}s; try again",
                CATCH_UP.as_secs()
            ))
        };
        match tokio::time::timeout_at(deadline, committed.changed()).await {
            Ok(Ok(())) => {}
            // The recorder stopped (the server is shutting down), or time is up.
            Ok(Err(_)) | Err(_) => return Err(behind()),
        }
    }
}

/// One attempt: `None` while the store does not yet hold sequence `upto`; otherwise the
/// rows and their size in bytes, at most `budget`.
fn collect(
    store: &mut dyn Store,
    name: &str,
    channel: Channel,
    run: u64,
    start: u64,
    upto: u64,
    budget: usize,
) -> Result<Option<(Vec<Bytes>, usize)>, QueryError> {
    let book = channel == Channel::Book;
    let mut channels = vec![channel_to_pb(channel) as u8];
    // The book is rebuilt from this run's last checkpoint at or before the start, or
    // from its first snapshot when it has none yet.
    let mut after = (run, 0);
    if book {
        channels.push(store::CHECKPOINT_CHANNEL);
        if let Some((found_run, position)) = store.last_checkpoint(name, start)?
            && found_run == run
        {
            after = (run, position);
        }
    }
    let query = Query {
        instruments: vec![name.to_owned()],
        channels,
        from: if book { run } else { start.max(run) },
        to: u64::MAX,
        limit: 0,
        after: Some(after),
    };
    let mut backlog = Backlog::new(name, channel, start, upto, budget);
    let mut failure = None;
    store.query(&query, &mut |this_run, row| {
        if this_run != run {
            return true;
        }
        let checkpoint = store::row(row).is_ok_and(|r| r.channel == store::CHECKPOINT_CHANNEL);
        match backlog.push(row, checkpoint) {
            Ok(more) => more,
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    backlog.finish()
}

/// A subscription's recorded part, made from one instrument's events on its channel in
/// order (for the book: from a snapshot at or before the start, checkpoints included):
/// the book as it was at the start (folded from what came before it), then every event
/// published after the start up to sequence `upto`, within a budget of bytes.
pub struct Backlog<'a> {
    name: &'a str,
    book: bool,
    start: u64,
    upto: u64,
    budget: usize,
    rows: Vec<Bytes>,
    bytes: usize,
    /// The last sequence taken (sent or folded).
    last: u64,
    /// The last sequence folded into the book sent first.
    folded: u64,
    rebuilt: Rebuilding,
}

impl<'a> Backlog<'a> {
    /// An empty one for `name` on `channel`.
    pub fn new(
        name: &'a str,
        channel: Channel,
        start: u64,
        upto: u64,
        budget: usize,
    ) -> Backlog<'a> {
        Backlog {
            name,
            book: channel == Channel::Book,
            start,
            upto,
            budget,
            rows: Vec::new(),
            bytes: 0,
            last: 0,
            folded: 0,
            rebuilt: Rebuilding::default(),
        }
    }

    /// Takes the next event (a one-event `StreamResponse`; `checkpoint` when it is a
    /// checkpoint snapshot); false once past `upto` (nothing more is needed).
    pub fn push(&mut self, row: &[u8], checkpoint: bool) -> Result<bool, QueryError> {
        let Some(Ok(header)) = scan::events(row).next() else {
            return Err(QueryError::DataLoss(
                "a recorded event does not scan".into(),
            ));
        };
        if header.sequence > self.upto {
            return Ok(false);
        }
        if header.publish_time > self.start && checkpoint {
            // Checkpoints are for rebuilding; subscribers never see them.
            return Ok(true);
        }
        self.last = header.sequence;
        if self.book && header.publish_time <= self.start {
            // Before the start: folded into the book sent first, not sent itself.
            self.rebuilt.fold(row)?;
            self.folded = header.sequence;
            return Ok(true);
        }
        if self.rows.len() >= MAX_START_BACKLOG {
            return Err(QueryError::TooLarge(format!(
                "more than {MAX_START_BACKLOG} recorded events of {} since the start time; fetch older ones with History.Query",
                self.name
            )));
        }
        self.bytes += row.len();
        if self.bytes > self.budget {
            return Err(too_large(self.name));
        }
        self.rows.push(Bytes::copy_from_slice(row));
        Ok(true)
    }

    /// Whether sequence `upto` has been taken.
    pub fn reached(&self) -> bool {
        self.last >= self.upto
    }

    /// `None` while sequence `upto` has not been taken; otherwise the rows (the book at
    /// the start first) and their size in bytes.
    pub fn finish(mut self) -> Result<Option<(Vec<Bytes>, usize)>, QueryError> {
        if self.last < self.upto {
            return Ok(None);
        }
        if let Some((book, event)) = self.rebuilt.finish()? {
            // The last book event folded in may be a status (it has a book sequence too).
            let snapshot = Event {
                instrument: InstrumentId(0),
                sequence: Sequence(self.folded),
                exchange_time: UnixNanos(event.exchange_time),
                receive_time: UnixNanos(event.receive_time),
                publish_time: UnixNanos(event.publish_time),
                venue_seq: 0,
                body: EventBody::Snapshot(book.snapshot(0, SnapshotKind::Initial)),
            };
            let mut buf = BytesMut::new();
            wire::put_event(&mut buf, self.name, &snapshot);
            self.bytes += buf.len();
            if self.bytes > self.budget {
                return Err(too_large(self.name));
            }
            self.rows.insert(0, buf.freeze());
        }
        Ok(Some((self.rows, self.bytes)))
    }
}

fn too_large(name: &str) -> QueryError {
    QueryError::TooLarge(format!(
        "the recorded events since the start time pass what one subscribe may hold (server.start_backlog_mb) at {name}; subscribe to fewer instruments at a time, start later, or fetch older events with History.Query"
    ))
}

#[cfg(test)]
mod tests {
    use raven_model::{Aggressor, InstrumentName, Trade};

    use super::*;
    use crate::config::StoreConfig;
    use crate::recorder::RecorderConfig;
    use crate::store::Batch;
    use crate::store::sqlite::SqliteStore;

    /// A SQLite file of its own, removed with the guard.
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn recorded(what: &str) -> (Scratch, Recorded, watch::Sender<u64>) {
        let dir =
            std::env::temp_dir().join(format!("raven-handover-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (commits, committed) = watch::channel(0);
        let reader = StoreReader::new(StoreConfig {
            url: format!("sqlite:{}", dir.join("raven.db").display()),
            schema: String::new(),
            spill: dir.join("raven.spill"),
            spill_reserve: 0,
            recorder: RecorderConfig::default(),
            snapshot_every: 1,
        });
        let recorded = Recorded {
            reader,
            run: 1_000,
            committed,
        };
        (Scratch(dir), recorded, commits)
    }

    fn trades(sequences: std::ops::RangeInclusive<u64>) -> Batch {
        let name = InstrumentName::parse("TEST:X").unwrap();
        let mut batch = Batch::new(1_000, *sequences.start());
        for sequence in sequences {
            let time = UnixNanos(2_000 + sequence);
            batch.push(
                &name,
                &Event {
                    instrument: InstrumentId(0),
                    sequence: Sequence(sequence),
                    exchange_time: time,
                    receive_time: time,
                    publish_time: time,
                    venue_seq: 0,
                    body: EventBody::Trade(Trade {
                        price: "1".parse().unwrap(),
                        qty: "1".parse().unwrap(),
                        aggressor: Aggressor::Buy,
                        trade_id: String::new(),
                    }),
                },
            );
        }
        batch
    }

    #[tokio::test(start_paused = true)]
    async fn the_handover_waits_for_a_commit_not_a_timer_and_gives_up_after_its_deadline() {
        let (dir, recorded, commits) = recorded("deadline");
        let mut store = SqliteStore::open(&dir.0.join("raven.db")).unwrap();
        store.write(&trades(1..=3)).unwrap();
        // Sequence 5 is not stored, and no commit comes: the handover gives up after its
        // deadline (in virtual time: the test takes no 5 s).
        let started = tokio::time::Instant::now();
        let mut budget = usize::MAX;
        let result = backlog(&recorded, "TEST:X", Channel::Trades, 0, 5, &mut budget).await;
        assert!(matches!(result, Err(QueryError::Behind(_))), "{result:?}");
        assert!(started.elapsed() >= CATCH_UP);
        assert_eq!(budget, usize::MAX, "nothing was taken");
        drop(commits);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_wakes_the_handover_and_it_returns_the_rows_and_a_marker() {
        let (dir, recorded, commits) = recorded("commit");
        let mut store = SqliteStore::open(&dir.0.join("raven.db")).unwrap();
        store.write(&trades(1..=3)).unwrap();
        let waiting = {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut budget = 1 << 20;
                let source = Backfill::Recorded(recorded);
                let rows = backfill(&source, "TEST:X", Channel::Trades, 0, 5, &mut budget).await;
                (rows, budget)
            })
        };
        // The recorder stores the rest and says so.
        tokio::task::yield_now().await;
        store.write(&trades(4..=5)).unwrap();
        commits.send_modify(|n| *n += 1);
        let (rows, budget) = waiting.await.unwrap();
        let rows = rows.unwrap();
        let sequences: Vec<u64> = rows
            .iter()
            .map(|r| scan::events(r).next().unwrap().unwrap().sequence)
            .collect();
        // Five trades, then the HistoryEnd marker at the last one's sequence.
        assert_eq!(sequences, vec![1, 2, 3, 4, 5, 5]);
        let taken: usize = rows[..5].iter().map(Bytes::len).sum();
        assert_eq!(budget, (1 << 20) - taken);
    }
}
