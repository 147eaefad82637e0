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

/// The recorded events of `name` on `channel` in this run, published from `start`, up to
/// and including sequence `upto`, then a `HistoryEnd` marker. For the book, what comes
/// first is the book as it was at `start` (rebuilt from the run's snapshot and deltas),
/// then every change after it. Takes the events' bytes from `budget` (what the whole
/// request may hold) and fails with [`QueryError::TooLarge`] past it.
pub async fn backlog(
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
        if let Some((mut rows, bytes)) = found {
            *budget -= bytes;
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
                },
            );
            rows.push(marker.freeze());
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
    let mut rows: Vec<Bytes> = Vec::new();
    let mut bytes = 0;
    let (mut last, mut folded) = (0, 0);
    let mut rebuilt = Rebuilding::default();
    let mut failure = None;
    store.query(&query, &mut |this_run, row| {
        if this_run != run {
            return true;
        }
        let Some(Ok(header)) = scan::events(row).next() else {
            failure = Some(QueryError::DataLoss("a stored event does not scan".into()));
            return false;
        };
        if header.sequence > upto {
            return false;
        }
        if header.publish_time > start
            && store::row(row).is_ok_and(|r| r.channel == store::CHECKPOINT_CHANNEL)
        {
            // Checkpoints are for rebuilding; subscribers never see them.
            return true;
        }
        last = header.sequence;
        if book && header.publish_time <= start {
            // Before the start: folded into the book sent first, not sent itself.
            if let Err(error) = rebuilt.fold(row) {
                failure = Some(error);
                return false;
            }
            folded = header.sequence;
            return true;
        }
        if rows.len() >= MAX_START_BACKLOG {
            failure = Some(QueryError::TooLarge(format!(
                "more than {MAX_START_BACKLOG} recorded events of {name} since the start time; fetch older ones with History.Query"
            )));
            return false;
        }
        bytes += row.len();
        if bytes > budget {
            failure = Some(too_large(name));
            return false;
        }
        rows.push(Bytes::copy_from_slice(row));
        true
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    if last < upto {
        return Ok(None);
    }
    if let Some((book, event)) = rebuilt.finish()? {
        // The last book event folded in may be a status (it has a book sequence too).
        let snapshot = Event {
            instrument: InstrumentId(0),
            sequence: Sequence(folded),
            exchange_time: UnixNanos(event.exchange_time),
            receive_time: UnixNanos(event.receive_time),
            publish_time: UnixNanos(event.publish_time),
            body: EventBody::Snapshot(book.snapshot(0, SnapshotKind::Initial)),
        };
        let mut buf = BytesMut::new();
        wire::put_event(&mut buf, name, &snapshot);
        bytes += buf.len();
        if bytes > budget {
            return Err(too_large(name));
        }
        rows.insert(0, buf.freeze());
    }
    Ok(Some((rows, bytes)))
}

fn too_large(name: &str) -> QueryError {
    QueryError::TooLarge(format!(
        "the recorded events since the start time pass what one subscribe may hold (server.start_backlog_mb) at {name}; subscribe to fewer instruments at a time, start later, or fetch older events with History.Query"
    ))
}
