//! A book as it was at an instant: the nearest checkpoint snapshot at or before it, then
//! every stored book event up to it, through a [`BookFollower`]. Each server run starts
//! from its own snapshots (a new run's book does not continue the old one's).

use prost::Message;
use raven_book::{BookFollower, OrderBook, Step};
use raven_model::{Channel, Event, EventBody, InstrumentId, SnapshotKind, StatusKind, UnixNanos};
use raven_proto::convert::{body_from_pb, channel_to_pb, event_to_pb};
use raven_proto::pb;

use super::{QueryError, Reader};
use crate::store::{self, Query, Store};

/// The book of `name` as it was at `at` (publish time, inclusive), to `depth` levels a
/// side (0: all). [`QueryError::NotFound`] when no book was recorded by then,
/// [`QueryError::DataLoss`] when book events before `at` were lost and no snapshot
/// followed.
pub async fn book_at(
    reader: &mut Reader,
    name: &str,
    at: u64,
    depth: u32,
) -> Result<pb::Event, QueryError> {
    let instrument = name.to_owned();
    let rebuilt = reader
        .run(move |store| {
            let mut query = Query {
                instruments: vec![instrument.clone()],
                channels: vec![
                    channel_to_pb(Channel::Book) as u8,
                    store::CHECKPOINT_CHANNEL,
                ],
                from: 0,
                // Events published at the instant count: the range's end is exclusive.
                to: at.saturating_add(1),
                limit: 0,
                after: None,
            };
            // Start from the nearest checkpoint snapshot at or before the instant, so the
            // work is bounded by the checkpoint interval rather than the run's length.
            query.after = store.last_checkpoint(&instrument, at)?;
            rebuild(store, &query)
        })
        .await??;
    let Some((book, last)) = rebuilt else {
        return Err(QueryError::NotFound(format!(
            "no recorded book for {name} at or before {at}"
        )));
    };
    let event = Event {
        instrument: InstrumentId(0),
        sequence: book.sequence(),
        exchange_time: UnixNanos(last.exchange_time),
        receive_time: UnixNanos(last.receive_time),
        publish_time: UnixNanos(last.publish_time),
        venue_seq: 0,
        body: EventBody::Snapshot(book.snapshot(depth as usize, SnapshotKind::Initial)),
    };
    Ok(event_to_pb(name, &event))
}

/// Replays the book events `query` selects, each run from its own snapshots. Returns the
/// book and the last event applied, or `None` when no snapshot was found.
fn rebuild(
    store: &mut dyn Store,
    query: &Query,
) -> Result<Option<(OrderBook, pb::Event)>, QueryError> {
    let mut book = Rebuilding::default();
    let mut run = None;
    let mut failure = None;
    store.query(query, &mut |this_run, row| {
        if run != Some(this_run) {
            run = Some(this_run);
            book = Rebuilding::default();
        }
        match book.fold(row) {
            Ok(()) => true,
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    match failure {
        Some(error) => Err(error),
        None => book.finish(),
    }
}

/// A book being rebuilt from stored events.
#[derive(Default)]
pub(super) struct Rebuilding {
    follower: BookFollower,
    /// The last event that changed the book.
    last: Option<pb::Event>,
    /// A recorded gap since the last snapshot: the book is unknown until the next one.
    lost: Option<(u64, pb::Status)>,
}

impl Rebuilding {
    /// Applies one stored book event.
    pub(super) fn fold(&mut self, row: &[u8]) -> Result<(), QueryError> {
        let event = pb::StreamResponse::decode(row)
            .ok()
            .and_then(|r| r.events.into_iter().next())
            .ok_or_else(|| QueryError::DataLoss("a stored book event does not decode".into()))?;
        let invalid = |e: &dyn std::fmt::Display| {
            QueryError::DataLoss(format!(
                "stored book event {} does not apply: {e}",
                event.sequence
            ))
        };
        let Some(body) = body_from_pb(&event).map_err(|e| invalid(&e))? else {
            return Ok(());
        };
        match self
            .follower
            .apply(event.sequence, &body)
            .map_err(|e| invalid(&e))?
        {
            Step::Replaced { .. } => {
                self.lost = None;
                self.last = Some(event);
            }
            Step::Applied => self.last = Some(event),
            Step::Status(StatusKind::Gap) => {
                if let Some(pb::event::Body::Status(recorded)) = event.body {
                    self.lost = Some((event.sequence, recorded));
                }
            }
            Step::Status(_) | Step::Waiting | Step::Ignored => {}
        }
        Ok(())
    }

    /// The book and the last event that changed it, `None` when no snapshot was found,
    /// or [`QueryError::DataLoss`] when events were lost after the last one.
    pub(super) fn finish(self) -> Result<Option<(OrderBook, pb::Event)>, QueryError> {
        match self.lost {
            Some((sequence, gap)) => Err(QueryError::DataLoss(format!(
                "{} book events up to sequence {sequence} were lost, not recorded ({}); the book is unknown until the next stored snapshot",
                gap.missed, gap.detail
            ))),
            None => Ok(self.follower.into_book().zip(self.last)),
        }
    }
}
