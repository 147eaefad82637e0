//! One Binance instrument's book synchronization: diffs are buffered from the moment the
//! stream is subscribed, a REST snapshot is asked for, buffered diffs older than the
//! snapshot are dropped and the rest are applied after it, and from then on every diff
//! must continue the last one, forever. A break resyncs this instrument only.
//!
//! Spot (binance-spot-api-docs `web-socket-streams.md`, corrected 2025-11-12): the first
//! diff after the snapshot `id` must satisfy `U <= id + 1 <= u`, every later one
//! `U == previous u + 1`; a snapshot older than the first buffered `U - 1` is fetched again
//! with the buffer kept (the docs' "strictly less than first U" refetch is the
//! conservative form of the same rule). USD-M ("How to manage a local order book
//! correctly"): diffs with `u < id` are dropped, the first must satisfy `U <= id <= u`
//! (or continue it exactly, `pu == id`, as tardis-node observed live), every later one
//! `pu == previous u`.
//!
//! Levels beyond the snapshot's depth are unknown until they change (the docs' caveat).

use std::collections::VecDeque;

use raven_model::{
    BookDelta, BookSnapshot, Channel, Level, LevelChange, Side, SnapshotKind, StatusKind, UnixNanos,
};

use super::Market;
use super::wire::{DepthSnapshot, DepthUpdate};
use crate::action::Action;

/// Diffs kept while a snapshot is awaited; a venue slower than this is a restart with a
/// `Gap`, not unbounded memory.
pub const DEFAULT_BUFFER: usize = 10_000;

/// A depth diff, owned so it can wait in the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// `U`.
    pub first: u64,
    /// `u`.
    pub last: u64,
    /// `pu` (USD-M).
    pub prev: Option<u64>,
    /// Event time.
    pub exchange_time: UnixNanos,
    /// Bids then asks, absolute quantities.
    pub changes: Vec<LevelChange>,
}

impl Diff {
    /// Normalizes a decoded diff; `time` turns the venue's event time into nanoseconds.
    pub fn from_wire(d: DepthUpdate<'_>, time: impl Fn(u64) -> UnixNanos) -> Diff {
        let mut changes = Vec::with_capacity(d.bids.0.len() + d.asks.0.len());
        let sides = [(Side::Bid, d.bids.0), (Side::Ask, d.asks.0)];
        for (side, levels) in sides {
            changes.extend(
                levels
                    .into_iter()
                    .map(|(price, qty)| LevelChange { side, price, qty }),
            );
        }
        Diff {
            first: d.first_id,
            last: d.last_id,
            prev: d.prev_id,
            exchange_time: time(d.event_time),
            changes,
        }
    }
}

/// A REST snapshot, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `lastUpdateId`.
    pub id: u64,
    /// The venue's time for it (USD-M only; `ZERO` for spot).
    pub exchange_time: UnixNanos,
    /// Bids, best first, no empty levels.
    pub bids: Vec<Level>,
    /// Asks, best first, no empty levels.
    pub asks: Vec<Level>,
}

impl Snapshot {
    /// Normalizes a decoded snapshot.
    pub fn from_wire(s: DepthSnapshot, time: impl Fn(u64) -> UnixNanos) -> Snapshot {
        let levels = |l: Vec<(raven_model::Price, raven_model::Qty)>| {
            l.into_iter()
                .filter(|(_, qty)| !qty.is_zero())
                .map(|(price, qty)| Level { price, qty })
                .collect()
        };
        Snapshot {
            id: s.last_update_id,
            exchange_time: if s.event_time == 0 {
                UnixNanos::ZERO
            } else {
                time(s.event_time)
            },
            bids: levels(s.bids.0),
            asks: levels(s.asks.0),
        }
    }
}

/// Where a diff stands against the book's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Already in the book: drop it.
    Old,
    /// Continues the book: apply it.
    Next,
    /// Does not continue it; `missed` ids were skipped when the venue's ids say so.
    Break { missed: u64 },
}

impl Market {
    /// The first diff after a snapshot at `id`.
    fn fit_first(self, d: &Diff, id: u64) -> Fit {
        match self {
            Market::Spot if d.last <= id => Fit::Old,
            Market::Spot if d.first <= id + 1 => Fit::Next,
            Market::UsdM if d.last < id => Fit::Old,
            Market::UsdM if d.first <= id || d.prev == Some(id) => Fit::Next,
            _ => Fit::Break {
                missed: d.first.saturating_sub(id + 1),
            },
        }
    }

    /// Every later diff, after one ending at `id`.
    fn fit_next(self, d: &Diff, id: u64) -> Fit {
        match self {
            _ if d.last <= id => Fit::Old,
            Market::Spot if d.first == id + 1 => Fit::Next,
            Market::UsdM if d.prev == Some(id) => Fit::Next,
            // USD-M ids are not contiguous between events, only chained by `pu`; spot's
            // overlap (`U <= id < u`) is not continuity either. Only a jump is counted.
            Market::Spot => Fit::Break {
                missed: d.first.saturating_sub(id + 1),
            },
            Market::UsdM => Fit::Break { missed: 0 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No book: diffs wait in the buffer for a snapshot. `pending` is a snapshot newer
    /// than every buffered diff, waiting for the diff that continues it.
    Buffering {
        fetching: bool,
        attempt: u32,
        pending: Option<Snapshot>,
    },
    /// The book is at venue id `id`.
    Synced { id: u64 },
}

/// The sync state of one instrument's book.
#[derive(Debug, Clone)]
pub struct BookSync {
    market: Market,
    state: State,
    buffer: VecDeque<Diff>,
    buffer_cap: usize,
    synced_once: bool,
}

impl BookSync {
    /// A book waiting for its first diff; at most `buffer_cap` diffs wait for a snapshot.
    pub fn new(market: Market, buffer_cap: usize) -> BookSync {
        BookSync {
            market,
            state: State::Buffering {
                fetching: false,
                attempt: 0,
                pending: None,
            },
            buffer: VecDeque::new(),
            buffer_cap: buffer_cap.max(1),
            synced_once: false,
        }
    }

    /// The venue update id the published book is at, once synced.
    pub fn synced_at(&self) -> Option<u64> {
        match self.state {
            State::Synced { id } => Some(id),
            State::Buffering { .. } => None,
        }
    }

    /// Diffs waiting for a snapshot.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// A diff arrived.
    pub fn on_diff(&mut self, diff: Diff, out: &mut Vec<Action>) {
        match &mut self.state {
            State::Synced { id } => match self.market.fit_next(&diff, *id) {
                Fit::Old => {}
                Fit::Next => {
                    *id = diff.last;
                    push_delta(diff, out);
                }
                Fit::Break { missed } => {
                    let detail = format!(
                        "update ids broke after {id}: the next diff covers {}..={}{}",
                        diff.first,
                        diff.last,
                        diff.prev.map(|p| format!(" after {p}")).unwrap_or_default(),
                    );
                    self.restart(Some(missed), detail, out);
                    // The diff that showed the break opens the new buffer.
                    self.on_diff(diff, out);
                }
            },
            State::Buffering {
                fetching,
                attempt,
                pending,
            } => {
                if let Some(snapshot) = pending.take() {
                    match self.market.fit_first(&diff, snapshot.id) {
                        Fit::Old => *pending = Some(snapshot),
                        Fit::Next => {
                            self.buffer.push_back(diff);
                            self.publish(snapshot, out);
                        }
                        Fit::Break { .. } => {
                            // Diffs between the snapshot and this one never came: the
                            // snapshot cannot be continued, ask again.
                            *fetching = true;
                            *attempt += 1;
                            out.push(Action::FetchSnapshot { attempt: *attempt });
                            self.buffer.push_back(diff);
                        }
                    }
                    return;
                }
                if self.buffer.len() >= self.buffer_cap {
                    let dropped = self.buffer.len();
                    self.buffer.clear();
                    out.push(Action::status(
                        Channel::Book,
                        StatusKind::Gap,
                        0,
                        format!(
                            "{dropped} diffs buffered while waiting for a snapshot were dropped; \
                             buffering again"
                        ),
                    ));
                }
                self.buffer.push_back(diff);
                if !*fetching {
                    *fetching = true;
                    out.push(Action::FetchSnapshot { attempt: *attempt });
                }
            }
        }
    }

    /// The REST snapshot asked for arrived.
    pub fn on_snapshot(&mut self, snapshot: Snapshot, out: &mut Vec<Action>) {
        let State::Buffering {
            fetching, attempt, ..
        } = &mut self.state
        else {
            // Synced already (a late answer to an earlier request): the book continues.
            return;
        };
        *fetching = false;
        while self
            .buffer
            .front()
            .is_some_and(|d| self.market.fit_first(d, snapshot.id) == Fit::Old)
        {
            self.buffer.pop_front();
        }
        match self.buffer.front() {
            None => {
                // Newer than every buffered diff: wait for the one that continues it.
                self.state = State::Buffering {
                    fetching: false,
                    attempt: *attempt,
                    pending: Some(snapshot),
                };
            }
            Some(first) if self.market.fit_first(first, snapshot.id) != Fit::Next => {
                // Older than the stream we hold: fetch again, keeping the buffer (the venue
                // may serve a cached book; dropping the buffer would loop forever).
                *fetching = true;
                *attempt += 1;
                out.push(Action::FetchSnapshot { attempt: *attempt });
            }
            Some(_) => self.publish(snapshot, out),
        }
    }

    /// Starts again from a fresh snapshot: the engine refused an update, a message for
    /// this book could not be decoded, or the connection was replaced. `detail` says why.
    pub fn resync(&mut self, detail: String, out: &mut Vec<Action>) {
        self.restart(None, detail, out);
        if let State::Buffering { fetching, .. } = &mut self.state {
            *fetching = true;
        }
        out.push(Action::FetchSnapshot { attempt: 0 });
    }

    /// The connection carrying this book is gone: its diffs no longer continue anything.
    /// The next diff starts a new sync.
    pub fn disconnect(&mut self) {
        self.buffer.clear();
        self.state = State::Buffering {
            fetching: false,
            attempt: 0,
            pending: None,
        };
    }

    /// A snapshot was asked for and could not be had; the next diff asks again.
    pub fn snapshot_failed(&mut self) {
        if let State::Buffering { fetching, .. } = &mut self.state {
            *fetching = false;
        }
    }

    /// Drops the book; a `gap` (venue ids skipped, 0 when unknown) is reported first.
    fn restart(&mut self, gap: Option<u64>, detail: String, out: &mut Vec<Action>) {
        if self.synced_at().is_some() {
            if let Some(missed) = gap {
                out.push(Action::status(
                    Channel::Book,
                    StatusKind::Gap,
                    missed,
                    detail.clone(),
                ));
            }
            out.push(Action::status(
                Channel::Book,
                StatusKind::Resync,
                0,
                format!("{detail}; rebuilding the book from a fresh snapshot"),
            ));
        }
        self.buffer.clear();
        self.state = State::Buffering {
            fetching: false,
            attempt: 0,
            pending: None,
        };
    }

    /// Publishes `snapshot` and then the buffered diffs that continue it.
    fn publish(&mut self, snapshot: Snapshot, out: &mut Vec<Action>) {
        let id = snapshot.id;
        out.push(Action::Snapshot {
            venue_id: id,
            exchange_time: snapshot.exchange_time,
            book: BookSnapshot {
                bids: snapshot.bids,
                asks: snapshot.asks,
                kind: if self.synced_once {
                    SnapshotKind::Resync
                } else {
                    SnapshotKind::Initial
                },
            },
        });
        self.synced_once = true;
        let buffered = std::mem::take(&mut self.buffer);
        let mut buffered = buffered.into_iter();
        if let Some(first) = buffered.next() {
            // `publish` is only called with a first diff that fits.
            self.state = State::Synced { id: first.last };
            push_delta(first, out);
        } else {
            self.state = State::Synced { id };
        }
        for diff in buffered {
            self.on_diff(diff, out);
        }
    }
}

fn push_delta(diff: Diff, out: &mut Vec<Action>) {
    if diff.changes.is_empty() {
        return;
    }
    out.push(Action::Delta {
        venue_id: diff.last,
        exchange_time: diff.exchange_time,
        delta: BookDelta {
            changes: diff.changes,
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use raven_model::{Price, Qty};

    fn diff(first: u64, last: u64, prev: Option<u64>) -> Diff {
        Diff {
            first,
            last,
            prev,
            exchange_time: UnixNanos(last),
            changes: vec![LevelChange {
                side: Side::Bid,
                price: Price::from_units(last as i64),
                qty: Qty::from_whole(1),
            }],
        }
    }

    fn snap(id: u64) -> Snapshot {
        Snapshot {
            id,
            exchange_time: UnixNanos::ZERO,
            bids: vec![],
            asks: vec![],
        }
    }

    /// The actions, reduced to what the scenarios check.
    fn shape(out: &[Action]) -> Vec<String> {
        out.iter()
            .map(|a| match a {
                Action::Snapshot { venue_id, book, .. } => {
                    format!("snapshot {venue_id} {:?}", book.kind)
                }
                Action::Delta { venue_id, .. } => format!("delta {venue_id}"),
                Action::Status { kind, missed, .. } => format!("{kind:?} {missed}"),
                Action::FetchSnapshot { attempt } => format!("fetch {attempt}"),
                Action::Trade { .. } | Action::Resubscribe => format!("{a:?}"),
            })
            .collect()
    }

    fn feed(sync: &mut BookSync, diffs: impl IntoIterator<Item = Diff>) -> Vec<String> {
        let mut out = Vec::new();
        for d in diffs {
            sync.on_diff(d, &mut out);
        }
        shape(&out)
    }

    fn answer(sync: &mut BookSync, id: u64) -> Vec<String> {
        let mut out = Vec::new();
        sync.on_snapshot(snap(id), &mut out);
        shape(&out)
    }

    #[test]
    fn spot_buffers_asks_once_and_applies_after_the_snapshot() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        let ds = [
            diff(101, 103, None),
            diff(104, 106, None),
            diff(107, 110, None),
        ];
        assert_eq!(feed(&mut s, ds), ["fetch 0"]);
        assert_eq!(s.buffered(), 3);
        assert_eq!(
            answer(&mut s, 105),
            ["snapshot 105 Initial", "delta 106", "delta 110"]
        );
        assert_eq!(s.synced_at(), Some(110));
        assert_eq!(feed(&mut s, [diff(111, 111, None)]), ["delta 111"]);
    }

    #[test]
    fn a_first_diff_starting_right_after_the_snapshot_is_continuous() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(106, 108, None)]);
        assert_eq!(answer(&mut s, 105), ["snapshot 105 Initial", "delta 108"]);
    }

    #[test]
    fn a_stale_snapshot_is_fetched_again_keeping_the_buffer() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 103, None)]);
        assert_eq!(answer(&mut s, 50), ["fetch 1"]);
        assert_eq!(feed(&mut s, [diff(104, 104, None)]), Vec::<String>::new());
        assert_eq!(answer(&mut s, 60), ["fetch 2"]);
        assert_eq!(answer(&mut s, 99), ["fetch 3"]);
        assert_eq!(s.buffered(), 2);
        assert_eq!(
            answer(&mut s, 100),
            ["snapshot 100 Initial", "delta 103", "delta 104"]
        );
    }

    #[test]
    fn a_snapshot_newer_than_the_buffer_waits_for_the_diff_that_continues_it() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 103, None)]);
        assert_eq!(answer(&mut s, 200), Vec::<String>::new());
        assert_eq!(feed(&mut s, [diff(104, 200, None)]), Vec::<String>::new());
        assert_eq!(
            feed(&mut s, [diff(201, 205, None)]),
            ["snapshot 200 Initial", "delta 205"]
        );
        // The same, but the stream skips past the snapshot: ask again.
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 103, None)]);
        answer(&mut s, 200);
        assert_eq!(feed(&mut s, [diff(203, 205, None)]), ["fetch 1"]);
        assert_eq!(answer(&mut s, 204), ["snapshot 204 Initial", "delta 205"]);
    }

    #[test]
    fn a_jump_is_a_gap_a_resync_and_a_new_sync_of_this_book() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 103, None)]);
        answer(&mut s, 102);
        assert_eq!(
            feed(&mut s, [diff(107, 109, None)]),
            ["Gap 3", "Resync 0", "fetch 0"]
        );
        assert_eq!(s.synced_at(), None);
        assert_eq!(answer(&mut s, 108), ["snapshot 108 Resync", "delta 109"]);
    }

    #[test]
    fn swapped_diffs_resync_and_the_late_one_is_never_applied() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 101, None)]);
        answer(&mut s, 100);
        // 102 and 103 arrive as 103, 102.
        assert_eq!(
            feed(&mut s, [diff(103, 103, None), diff(102, 102, None)]),
            ["Gap 1", "Resync 0", "fetch 0"]
        );
        // The snapshot at 102 drops the late 102 (already in it) and applies 103.
        assert_eq!(answer(&mut s, 102), ["snapshot 102 Resync", "delta 103"]);
        assert_eq!(feed(&mut s, [diff(102, 102, None)]), Vec::<String>::new());
    }

    #[test]
    fn a_duplicated_diff_is_dropped() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 102, None)]);
        answer(&mut s, 100);
        assert_eq!(
            feed(
                &mut s,
                [
                    diff(103, 104, None),
                    diff(103, 104, None),
                    diff(105, 105, None)
                ]
            ),
            ["delta 104", "delta 105"]
        );
    }

    #[test]
    fn spot_refuses_an_overlapping_later_diff() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(101, 104, None)]);
        answer(&mut s, 100);
        assert_eq!(
            feed(&mut s, [diff(103, 106, None)]),
            ["Gap 0", "Resync 0", "fetch 0"]
        );
    }

    #[test]
    fn usdm_accepts_the_pu_seam_and_resyncs_on_a_pu_break() {
        let mut s = BookSync::new(Market::UsdM, DEFAULT_BUFFER);
        // Buffered: one ending before the snapshot, one straddling it, one chained by pu.
        let ds = [
            diff(140, 149, Some(139)),
            diff(150, 160, Some(149)),
            diff(165, 170, Some(160)),
        ];
        assert_eq!(feed(&mut s, ds), ["fetch 0"]);
        assert_eq!(
            answer(&mut s, 155),
            ["snapshot 155 Initial", "delta 160", "delta 170"]
        );
        assert_eq!(
            feed(&mut s, [diff(180, 190, Some(175))]),
            ["Gap 0", "Resync 0", "fetch 0"]
        );
        // A live stream continuing straight from the snapshot (`pu == lastUpdateId`).
        let mut s = BookSync::new(Market::UsdM, DEFAULT_BUFFER);
        feed(&mut s, [diff(157, 160, Some(149))]);
        assert_eq!(answer(&mut s, 149), ["snapshot 149 Initial", "delta 160"]);
        // USD-M drops only `u < lastUpdateId`: an event ending at the id is applied.
        let mut s = BookSync::new(Market::UsdM, DEFAULT_BUFFER);
        feed(&mut s, [diff(150, 155, Some(149))]);
        assert_eq!(answer(&mut s, 155), ["snapshot 155 Initial", "delta 155"]);
    }

    #[test]
    fn an_overflowing_buffer_is_dropped_with_a_gap_and_keeps_one_request() {
        let mut s = BookSync::new(Market::Spot, 2);
        assert_eq!(
            feed(&mut s, (1..=3).map(|i| diff(i, i, None))),
            ["fetch 0", "Gap 0"]
        );
        assert_eq!(s.buffered(), 1);
        assert_eq!(answer(&mut s, 2), ["snapshot 2 Initial", "delta 3"]);
    }

    #[test]
    fn a_resync_request_and_a_disconnect_start_over() {
        let mut s = BookSync::new(Market::Spot, DEFAULT_BUFFER);
        feed(&mut s, [diff(1, 1, None)]);
        answer(&mut s, 0);
        let mut out = Vec::new();
        s.resync("crossed book refused by the engine".to_owned(), &mut out);
        assert_eq!(shape(&out), ["Resync 0", "fetch 0"]);
        // A late snapshot for the old request is still a snapshot for this one.
        assert_eq!(feed(&mut s, [diff(2, 2, None)]), Vec::<String>::new());
        assert_eq!(answer(&mut s, 1), ["snapshot 1 Resync", "delta 2"]);
        s.disconnect();
        assert_eq!(s.synced_at(), None);
        assert_eq!(feed(&mut s, [diff(9, 9, None)]), ["fetch 0"]);
    }
}
