//! [`BookFollower`]: a subscriber's copy of one instrument's book, kept from the events of
//! Raven's book channel (live, recorded or replayed). It checks what a client must check
//! and says what happened: a snapshot replaced the book, a delta applied, a status took
//! its place in the sequence, or events were missed and the book is unknown until the
//! next snapshot.
//!
//! The channel's rules, which the follower relies on: every book event and every status
//! on the channel carries the next sequence; a snapshot may jump ahead (a resync) and may
//! repeat the last sequence (a stored checkpoint); an `INITIAL` snapshot starts the
//! channel afresh at any sequence (a new subscription, or a new server run in recorded
//! history, which numbers from 1 again); a `GAP` status carries the last sequence lost,
//! so it may jump ahead too.

use raven_model::{EventBody, Sequence, SnapshotKind, StatusKind};

use crate::{BookError, OrderBook};

/// What one event did to the followed book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A snapshot replaced the book; `resync` when the server sent it to repair a lagging
    /// view or a refused feed update.
    Replaced {
        /// The snapshot was a resync.
        resync: bool,
    },
    /// A delta was applied.
    Applied,
    /// A status event took its place in the sequence; after a `GAP` the book is unknown.
    Status(StatusKind),
    /// A delta arrived while the book is unknown (before the first snapshot, or after a
    /// gap): skipped until a snapshot comes.
    Waiting,
    /// Not a book-channel event (a trade, BBO or candle): not the follower's business.
    Ignored,
}

/// An event the follower could not take. Except for [`FollowError::Repeated`], the book
/// is unknown afterwards, until the next snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FollowError {
    /// Sequences were skipped: events were missed.
    #[error("book sequence gap: expected {expected}, got {got}")]
    Gap {
        /// The sequence that should have come.
        expected: u64,
        /// The one that came.
        got: u64,
    },
    /// A sequence at or before the last one (a duplicate): ignored, the book is unchanged.
    #[error("book event {got} repeats or precedes the last one ({last})")]
    Repeated {
        /// The last sequence taken.
        last: u64,
        /// The one that came.
        got: u64,
    },
    /// The event does not apply to the book (it would cross it, or holds a negative
    /// quantity or a duplicate level).
    #[error("book event {sequence} does not apply: {error}")]
    Invalid {
        /// Its sequence.
        sequence: u64,
        /// Why.
        error: BookError,
    },
}

/// One instrument's book, followed from its book channel.
#[derive(Debug, Clone, Default)]
pub struct BookFollower {
    /// Levels as of the last snapshot and deltas; its sequence is the channel's last.
    book: OrderBook,
    /// Whether `book` holds the server's book (a snapshot came and nothing was missed).
    known: bool,
    /// Whether any book-channel event came yet (before that, no sequence is expected).
    started: bool,
    resyncs: u64,
    gaps: u64,
}

impl BookFollower {
    /// A follower that has seen nothing yet.
    pub fn new() -> BookFollower {
        BookFollower::default()
    }

    /// Takes the event with `sequence` on the channel and `body`.
    pub fn apply(&mut self, sequence: u64, body: &EventBody) -> Result<Step, FollowError> {
        match body {
            EventBody::Snapshot(snapshot) => self.snapshot(sequence, snapshot),
            EventBody::Delta(delta) => {
                self.next(sequence)?;
                if !self.known {
                    self.book.advance(Sequence(sequence));
                    return Ok(Step::Waiting);
                }
                self.book
                    .apply_delta(Sequence(sequence), delta)
                    .map_err(|error| {
                        self.lose(sequence, FollowError::Invalid { sequence, error })
                    })?;
                Ok(Step::Applied)
            }
            EventBody::Status(status) if status.channel == raven_model::Channel::Book => {
                if status.kind == StatusKind::Gap {
                    // It reports the loss itself: its sequence is the last one lost.
                    let last = self.book.sequence().0;
                    if self.started && sequence <= last {
                        return Err(FollowError::Repeated {
                            last,
                            got: sequence,
                        });
                    }
                    self.started = true;
                    self.gaps += 1;
                    self.known = false;
                } else {
                    self.next(sequence)?;
                }
                self.book.advance(Sequence(sequence));
                Ok(Step::Status(status.kind))
            }
            _ => Ok(Step::Ignored),
        }
    }

    fn snapshot(
        &mut self,
        sequence: u64,
        snapshot: &raven_model::BookSnapshot,
    ) -> Result<Step, FollowError> {
        let last = self.book.sequence().0;
        if self.started && sequence < last && snapshot.kind != SnapshotKind::Initial {
            return Err(FollowError::Repeated {
                last,
                got: sequence,
            });
        }
        self.started = true;
        if let Err(error) = self.book.apply_snapshot(Sequence(sequence), snapshot) {
            return Err(self.lose(sequence, FollowError::Invalid { sequence, error }));
        }
        self.known = true;
        let resync = snapshot.kind == SnapshotKind::Resync;
        self.resyncs += u64::from(resync);
        Ok(Step::Replaced { resync })
    }

    /// Checks that `sequence` follows the last one.
    fn next(&mut self, sequence: u64) -> Result<(), FollowError> {
        if !self.started {
            self.started = true;
            return Ok(());
        }
        let last = self.book.sequence().0;
        if sequence <= last {
            return Err(FollowError::Repeated {
                last,
                got: sequence,
            });
        }
        if sequence != last + 1 {
            self.gaps += 1;
            return Err(self.lose(
                sequence,
                FollowError::Gap {
                    expected: last + 1,
                    got: sequence,
                },
            ));
        }
        Ok(())
    }

    /// The book is unknown from `sequence` on, until a snapshot.
    fn lose(&mut self, sequence: u64, error: FollowError) -> FollowError {
        self.known = false;
        self.book.advance(Sequence(sequence));
        error
    }

    /// The book, while it is known to be the server's.
    pub fn book(&self) -> Option<&OrderBook> {
        self.known.then_some(&self.book)
    }

    /// The book, while it is known to be the server's, given up.
    pub fn into_book(self) -> Option<OrderBook> {
        self.known.then_some(self.book)
    }

    /// The last sequence taken on the channel (0 before any).
    pub fn sequence(&self) -> u64 {
        self.book.sequence().0
    }

    /// Snapshots marked `resync` so far.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Times events were missed: sequence gaps seen, and `GAP` statuses.
    pub fn gaps(&self) -> u64 {
        self.gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use raven_model::{
        BookDelta, BookSnapshot, Channel, Level, LevelChange, Price, Qty, Side, Status,
    };

    fn level(price: i64, qty: i128) -> Level {
        Level {
            price: Price::from_units(price),
            qty: Qty::from_units(qty),
        }
    }

    fn status(kind: StatusKind) -> EventBody {
        EventBody::Status(Status {
            kind,
            channel: Channel::Book,
            missed: 0,
            detail: String::new(),
        })
    }

    fn levels(book: &OrderBook) -> BookSnapshot {
        book.snapshot(0, SnapshotKind::Initial)
    }

    /// What the server does with a stream of changes: applies each to its book, or
    /// refuses it with a `REJECTED` status; now and then sends a resync snapshot (which
    /// may skip sequences) or a `GAP` status. Returns every event with the server's book
    /// after it.
    fn server_stream(ops: &[(u8, bool, i64, i128)]) -> Vec<(u64, EventBody, BookSnapshot)> {
        let mut book = OrderBook::new();
        let first = BookSnapshot {
            bids: (90..100).map(|p| level(p, 5)).collect(),
            asks: (101..111).map(|p| level(p, 5)).collect(),
            kind: SnapshotKind::Initial,
        };
        book.apply_snapshot(Sequence(7), &first).unwrap();
        let mut out = vec![(7, EventBody::Snapshot(first), levels(&book))];
        for &(op, bid, offset, qty) in ops {
            let next = book.sequence().0 + 1;
            let body = match op {
                0..=6 => {
                    let (side, price) = if bid {
                        (Side::Bid, 85 + offset)
                    } else {
                        (Side::Ask, 96 + offset)
                    };
                    let change = LevelChange {
                        side,
                        price: Price::from_units(price),
                        qty: Qty::from_units(qty),
                    };
                    let delta = BookDelta {
                        changes: vec![change],
                    };
                    match book.apply_delta(Sequence(next), &delta) {
                        Ok(()) => EventBody::Delta(delta),
                        Err(_) => {
                            book.advance(Sequence(next));
                            status(StatusKind::Rejected)
                        }
                    }
                }
                7 => {
                    let sequence = next + (offset % 3) as u64;
                    let mut snapshot = book.snapshot(0, SnapshotKind::Resync);
                    snapshot.kind = SnapshotKind::Resync;
                    book.apply_snapshot(Sequence(sequence), &snapshot).unwrap();
                    out.push((sequence, EventBody::Snapshot(snapshot), levels(&book)));
                    continue;
                }
                _ => {
                    // A recorded loss: the status carries the last sequence lost.
                    let sequence = next + (offset % 3) as u64;
                    book.advance(Sequence(sequence));
                    out.push((sequence, status(StatusKind::Gap), levels(&book)));
                    continue;
                }
            };
            out.push((next, body, levels(&book)));
        }
        out
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, bool, i64, i128)>> {
        prop::collection::vec((0u8..9, any::<bool>(), 0i64..16, 0i128..4), 0..200)
    }

    proptest! {
        #[test]
        fn a_whole_stream_keeps_the_servers_book(ops in ops()) {
            let mut follower = BookFollower::new();
            let mut gap_since_snapshot = false;
            for (sequence, body, expected) in server_stream(&ops) {
                let step = follower.apply(sequence, &body).unwrap();
                match (&body, step) {
                    (EventBody::Snapshot(_), Step::Replaced { .. }) => gap_since_snapshot = false,
                    (EventBody::Status(s), Step::Status(kind)) => {
                        prop_assert_eq!(s.kind, kind);
                        gap_since_snapshot |= kind == StatusKind::Gap;
                    }
                    (EventBody::Delta(_), Step::Applied | Step::Waiting) => {}
                    (body, step) => prop_assert!(false, "{:?} gave {:?}", body, step),
                }
                prop_assert_eq!(follower.sequence(), sequence);
                // Unknown exactly while a recorded loss has not been repaired.
                prop_assert_eq!(follower.book().is_none(), gap_since_snapshot);
                if let Some(book) = follower.book() {
                    prop_assert_eq!(levels(book), expected);
                }
            }
        }

        #[test]
        fn missed_events_are_reported_and_the_next_snapshot_repairs_the_book(
            ops in ops(),
            dropped in prop::collection::vec(any::<bool>(), 200),
        ) {
            let stream = server_stream(&ops);
            let mut follower = BookFollower::new();
            let mut missed = false;
            for (i, (sequence, body, expected)) in stream.into_iter().enumerate() {
                // The first snapshot always arrives; later events are dropped at random.
                if i > 0 && dropped[i % dropped.len()] {
                    missed = true;
                    continue;
                }
                let last = follower.sequence();
                let result = follower.apply(sequence, &body);
                let reported = matches!(&body, EventBody::Status(s) if s.kind == StatusKind::Gap);
                match (std::mem::take(&mut missed), &body) {
                    (true, EventBody::Delta(_) | EventBody::Status(_)) if !reported => {
                        prop_assert_eq!(
                            result,
                            Err(FollowError::Gap { expected: last + 1, got: sequence })
                        );
                        prop_assert!(follower.book().is_none());
                    }
                    _ => {
                        result.unwrap();
                    }
                }
                if let Some(book) = follower.book() {
                    prop_assert_eq!(levels(book), expected);
                }
                if matches!(body, EventBody::Snapshot(_)) {
                    prop_assert!(follower.book().is_some());
                }
            }
        }
    }

    #[test]
    fn a_repeated_event_is_refused_and_changes_nothing() {
        let mut follower = BookFollower::new();
        let snapshot = BookSnapshot {
            bids: vec![level(99, 1)],
            asks: vec![level(101, 1)],
            kind: SnapshotKind::Initial,
        };
        let delta = EventBody::Delta(BookDelta {
            changes: vec![LevelChange {
                side: Side::Bid,
                price: Price::from_units(100),
                qty: Qty::from_units(2),
            }],
        });
        follower
            .apply(4, &EventBody::Snapshot(snapshot.clone()))
            .unwrap();
        assert_eq!(follower.apply(5, &delta), Ok(Step::Applied));
        assert_eq!(
            follower.apply(5, &delta),
            Err(FollowError::Repeated { last: 5, got: 5 })
        );
        let resync = BookSnapshot {
            kind: SnapshotKind::Resync,
            ..snapshot.clone()
        };
        assert_eq!(
            follower.apply(3, &EventBody::Snapshot(resync)),
            Err(FollowError::Repeated { last: 5, got: 3 })
        );
        let book = follower.book().unwrap();
        assert_eq!(book.best_bid(), Some(level(100, 2)));
        // An initial snapshot starts afresh: a new subscription, or a new server run.
        let restarted = follower.apply(1, &EventBody::Snapshot(snapshot));
        assert_eq!(restarted, Ok(Step::Replaced { resync: false }));
        assert_eq!(follower.sequence(), 1);
        // A delta before any snapshot waits for one.
        let mut fresh = BookFollower::new();
        assert_eq!(fresh.apply(9, &delta), Ok(Step::Waiting));
        assert!(fresh.book().is_none());
    }
}
