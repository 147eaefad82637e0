//! A subscriber's mailbox: the bounded queue between the engine, which pushes each
//! encoded chunk into every subscriber of its (instrument, channel) — or of the several
//! channels it holds, when they have the same subscribers — and the gRPC stream, which
//! drains what is queued into one message. The overflow policy is applied here as chunks
//! are pushed: book views are marked for a resync snapshot, other channels drop and count
//! what they missed (or close the stream, as configured).
//!
//! The bound is in events and in bytes ([`QueueBound`]). Events bound what the subscriber
//! holds alone (a queue entry for each chunk); bytes bound what it keeps alive of the
//! engine's encoded chunks, which are shared with every other subscriber but freed only
//! when the last one has sent them: a client that stalls on deep book snapshots would
//! otherwise pin thousands of them within the event bound.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use raven_model::{Channel, InstrumentId, InstrumentName, Status, StatusKind};
use raven_proto::convert::event_to_pb;
use raven_proto::wire::{self, EncodedBatch};
use tokio::sync::Notify;

use super::{Closed, Form, LagPolicy, Pushed, QueueBound, Route};

/// Queue entries a drained mailbox keeps room for...
const RETAINED_ENTRIES: usize = 256;
/// ...once a burst has grown it past this (the gap is hysteresis: a subscriber that
/// often holds a few hundred entries does not reallocate at every drain).
const SHRINK_ABOVE: usize = 4 * RETAINED_ENTRIES;

enum Entry {
    Chunk {
        bytes: Bytes,
        events: u32,
    },
    /// Control entries (snapshots on subscribe, acks) bypass the bound; see `push_control`.
    Control(Bytes),
    Gap {
        name: InstrumentName,
        channel: Channel,
        missed: u64,
    },
}

#[derive(Default)]
struct State {
    entries: VecDeque<Entry>,
    /// Data events and their encoded bytes queued (control entries are not counted).
    queued: usize,
    queued_bytes: usize,
    /// Book views marked for a resync snapshot, and whether the engine was asked yet.
    resync: Vec<(InstrumentId, u32, bool)>,
    /// Non-book events dropped per (instrument, channel) since the last delivered one.
    missed: HashMap<(InstrumentId, Channel), (InstrumentName, u64)>,
    closed: Option<Closed>,
    /// While above 0, drains hand out nothing: recorded history is being put in front
    /// of what is queued (see `hold`).
    held: u32,
    /// What drains have handed out, counted under the lock they already take.
    delivered: Delivered,
}

/// What subscribers were sent: stream messages, the events and bytes in them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Stream messages.
    pub messages: u64,
    /// Events in them (data events; control and gap events are not counted).
    pub events: u64,
    /// Their encoded bytes.
    pub bytes: u64,
}

impl Delivered {
    pub(super) fn add(&mut self, other: Delivered) {
        self.messages += other.messages;
        self.events += other.events;
        self.bytes += other.bytes;
    }
}

/// A subscriber's bounded queue of encoded events.
pub struct Mailbox {
    id: u64,
    bound: QueueBound,
    policy: LagPolicy,
    form: Form,
    state: Mutex<State>,
    notify: Notify,
}

/// What a drain produced.
pub struct Drained {
    /// Events to send as one message (may be empty).
    pub batch: EncodedBatch,
    /// Book views that overflowed and still need the engine to send a resync snapshot.
    pub resync_requests: Vec<(InstrumentId, u32)>,
    /// Set when the stream must end.
    pub closed: Option<Closed>,
}

impl Mailbox {
    /// A new mailbox holding at most `bound` of data events, encoded as gRPC stream
    /// entries.
    pub fn new(id: u64, bound: QueueBound, policy: LagPolicy) -> Mailbox {
        Mailbox::with_form(id, bound, policy, Form::Protobuf)
    }

    /// A new mailbox whose entries are in `form`.
    pub fn with_form(id: u64, bound: QueueBound, policy: LagPolicy, form: Form) -> Mailbox {
        Mailbox {
            id,
            bound,
            policy,
            form,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    /// The subscriber id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How its entries are encoded.
    pub fn form(&self) -> Form {
        self.form
    }

    // A std Mutex, not tokio's: the lock is never held across an await, and the publisher
    // is a plain thread. A poisoned lock only means another holder panicked mid-push; the
    // queue is still structurally valid, so keep going.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(&self, was_empty: bool) {
        // `notify_one` stores a permit when nobody waits, so a drain that checked the
        // queue just before this push still wakes up.
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Queues `events` encoded events under the overflow policy.
    pub fn push(&self, bytes: &Bytes, events: u32, route: Route<'_>) -> Pushed {
        if route.channel != Channel::Book {
            return self.push_parts(bytes, &[(route, events)]);
        }
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        if s.resync
            .iter()
            .any(|r| (r.0, r.1) == (route.instrument, route.depth))
        {
            return Pushed::Dropped;
        }
        if !self.fits(&s, bytes.len(), events) {
            s.resync.push((route.instrument, route.depth, false));
            drop(s);
            // Wake the drain even when the queue is empty, so it asks for the snapshot.
            self.notify.notify_one();
            return Pushed::Dropped;
        }
        self.queue(s, bytes, events)
    }

    /// Queues one chunk holding the events of several non-book (instrument, channel)
    /// `parts`, each with its count: the engine's output for subscribers that share all
    /// of them. It fits or is dropped whole; what is dropped is counted per part, and
    /// reported per part as [`Mailbox::push`] reports it.
    pub fn push_parts(&self, bytes: &Bytes, parts: &[(Route<'_>, u32)]) -> Pushed {
        debug_assert!(parts.iter().all(|(r, _)| r.channel != Channel::Book));
        let events = parts.iter().map(|(_, n)| n).sum();
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        if !self.fits(&s, bytes.len(), events) {
            match self.policy {
                LagPolicy::Gap => {
                    for (route, n) in parts {
                        let missed = s
                            .missed
                            .entry((route.instrument, route.channel))
                            .or_insert_with(|| (route.name.clone(), 0));
                        missed.1 += u64::from(*n);
                    }
                    return Pushed::Dropped;
                }
                LagPolicy::Disconnect => {
                    s.closed = Some(Closed::TooSlow { queued: s.queued });
                    drop(s);
                    self.notify.notify_one();
                    return Pushed::Disconnected;
                }
            }
        }
        if !s.missed.is_empty() {
            // Checked first: the map is empty unless this client lagged, and hashing the
            // key on every push was 5% of a 1,000-client server's profile.
            for (route, _) in parts {
                if let Some((name, missed)) = s.missed.remove(&(route.instrument, route.channel)) {
                    s.entries.push_back(Entry::Gap {
                        name,
                        channel: route.channel,
                        missed,
                    });
                }
            }
        }
        self.queue(s, bytes, events)
    }

    /// Queues a data chunk that fits, under the lock its checks took.
    fn queue(&self, mut s: MutexGuard<'_, State>, bytes: &Bytes, events: u32) -> Pushed {
        let was_empty = s.entries.is_empty();
        s.entries.push_back(Entry::Chunk {
            bytes: bytes.clone(),
            events,
        });
        s.queued += events as usize;
        s.queued_bytes += bytes.len();
        drop(s);
        self.wake(was_empty);
        Pushed::Queued
    }

    /// Counts `missed` events of `route` lost before they reached this mailbox (by the
    /// gateway view it is fed from), reported as its own drops are: one gap event in
    /// front of the next event of that channel, or once the queue drains.
    pub fn add_missed(&self, route: Route<'_>, missed: u64) {
        let mut s = self.lock();
        if s.closed.is_some() {
            return;
        }
        let entry = s
            .missed
            .entry((route.instrument, route.channel))
            .or_insert_with(|| (route.name.clone(), 0));
        entry.1 += missed;
        drop(s);
        self.notify.notify_one();
    }

    /// Whether a chunk of `len` bytes holding `events` fits under the bound. A chunk
    /// larger than the bound still goes to a subscriber with nothing queued, so a single
    /// large event (a deep snapshot) or batch (an ingest request's trades, for the
    /// gateway's views) is delayed by nothing and dropped for no one — and a drop always
    /// finds a drain pending that will report it.
    fn fits(&self, s: &State, len: usize, events: u32) -> bool {
        (s.queued == 0 || s.queued + events as usize <= self.bound.events)
            && (s.queued_bytes == 0 || s.queued_bytes + len <= self.bound.bytes)
    }

    /// Queues control output (subscribe snapshots, markers, acks) regardless of the bound:
    /// it is produced at most once per request or resync, so it cannot grow without limit.
    pub fn push_control(&self, bytes: Bytes) -> Pushed {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        let was_empty = s.entries.is_empty();
        s.entries.push_back(Entry::Control(bytes));
        drop(s);
        self.wake(was_empty);
        Pushed::Queued
    }

    /// Ends a resync: queues the fresh snapshot and lets book events for the view flow again.
    /// Must be called by the engine thread that owns the instrument, between batches, so no
    /// delta can slip between the snapshot and the reopening.
    pub fn complete_resync(&self, instrument: InstrumentId, depth: u32, snapshot: Bytes) -> Pushed {
        let mut s = self.lock();
        if s.closed.is_some() {
            return Pushed::Closed;
        }
        s.resync.retain(|r| (r.0, r.1) != (instrument, depth));
        let was_empty = s.entries.is_empty();
        s.entries.push_back(Entry::Control(snapshot));
        drop(s);
        self.wake(was_empty);
        Pushed::Queued
    }

    /// Marks a resync as not yet requested, so the next drain asks the engine again.
    pub fn rearm_resync(&self, instrument: InstrumentId, depth: u32) {
        let mut s = self.lock();
        for r in s
            .resync
            .iter_mut()
            .filter(|r| (r.0, r.1) == (instrument, depth))
        {
            r.2 = false;
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Closes the mailbox; pending output is dropped and publishers forget it.
    pub fn close(&self, why: Closed) {
        let mut s = self.lock();
        if s.closed.is_none() {
            s.closed = Some(why);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Data events and their encoded bytes currently queued.
    pub fn queued(&self) -> (usize, usize) {
        let s = self.lock();
        (s.queued, s.queued_bytes)
    }

    /// Waits until there may be something to drain.
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Holds output back (drains hand out nothing) until [`Mailbox::release`], so that
    /// recorded history can go in front of live events already queued. Live events
    /// still queue under the usual bound meanwhile.
    pub fn hold(&self) {
        self.lock().held += 1;
    }

    /// Ends a [`Mailbox::hold`].
    pub fn release(&self) {
        let mut s = self.lock();
        s.held = s.held.saturating_sub(1);
        drop(s);
        self.notify.notify_one();
    }

    /// Puts control output (recorded history) in front of everything queued, in order.
    pub fn prepend_control(&self, chunks: Vec<Bytes>) {
        let mut s = self.lock();
        for chunk in chunks.into_iter().rev() {
            s.entries.push_front(Entry::Control(chunk));
        }
    }

    /// Takes up to `max_bytes` of queued output (at least one entry) as one batch.
    pub fn drain(&self, max_bytes: usize) -> Drained {
        let mut batch = EncodedBatch::new();
        let mut s = self.lock();
        if let Some(closed) = s.closed.clone() {
            return Drained {
                batch,
                resync_requests: Vec::new(),
                closed: Some(closed),
            };
        }
        if s.held > 0 {
            return Drained {
                batch,
                resync_requests: Vec::new(),
                closed: None,
            };
        }
        let mut events = 0u64;
        while let Some(entry) = s.entries.pop_front() {
            match entry {
                Entry::Chunk { bytes, events: n } => {
                    s.queued -= n as usize;
                    s.queued_bytes -= bytes.len();
                    events += u64::from(n);
                    batch.push(bytes);
                }
                Entry::Control(bytes) => batch.push(bytes),
                Entry::Gap {
                    name,
                    channel,
                    missed,
                } => batch.push(gap_event(self.form, &name, channel, missed)),
            }
            if batch.len_bytes() >= max_bytes {
                break;
            }
        }
        if s.entries.is_empty() && s.entries.capacity() > SHRINK_ABOVE {
            // A burst grew the queue (to 32,768 entries, about 1.3 MB, at the default
            // bound); once it has drained, that memory goes back, or every subscriber
            // that ever fell behind would hold its peak for as long as it stays.
            s.entries.shrink_to(RETAINED_ENTRIES);
        }
        if s.entries.is_empty() && !s.missed.is_empty() {
            // The client caught up with everything queued; report drops now rather than
            // in front of a next event that may never come (the end of a burst).
            for ((_, channel), (name, missed)) in s.missed.drain() {
                batch.push(gap_event(self.form, &name, channel, missed));
            }
        }
        let resync_requests = s
            .resync
            .iter_mut()
            .filter(|r| !r.2)
            .map(|r| {
                r.2 = true;
                (r.0, r.1)
            })
            .collect();
        if !s.entries.is_empty() {
            // More to send: make sure the next `ready` returns at once.
            self.notify.notify_one();
        }
        if !batch.is_empty() {
            s.delivered.add(Delivered {
                messages: 1,
                events,
                bytes: batch.len_bytes() as u64,
            });
        }
        Drained {
            batch,
            resync_requests,
            closed: None,
        }
    }

    /// What it delivered and why it was closed, for the counts kept once it is gone.
    pub(super) fn outcome(&self) -> (Delivered, Option<Closed>) {
        let state = self.lock();
        (state.delivered, state.closed.clone())
    }

    /// What drains have handed out so far.
    pub fn delivered(&self) -> Delivered {
        self.lock().delivered
    }
}

/// A per-subscriber `Status` gap event in the mailbox's form. It has no sequence of its
/// own: the channel's sequence jumps by `missed`, and this event says why.
fn gap_event(form: Form, name: &InstrumentName, channel: Channel, missed: u64) -> Bytes {
    use raven_model::{Event, EventBody, Sequence, UnixNanos};
    let event = Event {
        instrument: InstrumentId(0),
        sequence: Sequence(0),
        exchange_time: UnixNanos::ZERO,
        receive_time: UnixNanos::ZERO,
        publish_time: UnixNanos::ZERO,
        venue_seq: 0,
        body: EventBody::Status(Status {
            kind: StatusKind::Gap,
            channel,
            missed,
            detail: format!("subscriber lagged: {missed} events dropped"),
        }),
    };
    match form {
        Form::Protobuf => {
            let mut buf = BytesMut::new();
            wire::put_event(&mut buf, name.as_str(), &event);
            buf.freeze()
        }
        Form::Json => Form::json(&event_to_pb(name.as_str(), &event)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use raven_proto::pb;

    fn route(name: &InstrumentName) -> Route<'_> {
        Route {
            instrument: InstrumentId(0),
            name,
            channel: Channel::Trades,
            depth: 0,
        }
    }

    /// A bound in events only.
    fn events(events: usize) -> QueueBound {
        QueueBound {
            events,
            bytes: usize::MAX,
        }
    }

    fn decode(drained: Drained) -> Vec<pb::Event> {
        pb::StreamResponse::decode(drained.batch.encode_to_vec().as_slice())
            .unwrap()
            .events
    }

    #[test]
    fn drops_at_the_end_of_a_burst_are_reported_when_the_queue_drains() {
        let name = InstrumentName::parse("TEST:X").unwrap();
        let mailbox = Mailbox::new(1, events(16), LagPolicy::Gap);
        let mut chunk = BytesMut::new();
        let trade = raven_model::Event {
            instrument: InstrumentId(0),
            sequence: raven_model::Sequence(1),
            exchange_time: raven_model::UnixNanos(1),
            receive_time: raven_model::UnixNanos(1),
            publish_time: raven_model::UnixNanos(1),
            venue_seq: 0,
            body: raven_model::EventBody::Trade(raven_model::Trade {
                price: raven_model::Price::from_units(1),
                qty: raven_model::Qty::from_units(1),
                aggressor: raven_model::Aggressor::Buy,
                trade_id: "1".into(),
            }),
        };
        for _ in 0..10 {
            wire::put_event(&mut chunk, "TEST:X", &trade);
        }
        let chunk = chunk.freeze();
        assert_eq!(mailbox.push(&chunk, 10, route(&name)), Pushed::Queued);
        // 10 more do not fit in 16: dropped, and nothing follows them.
        assert_eq!(mailbox.push(&chunk, 10, route(&name)), Pushed::Dropped);
        assert_eq!(mailbox.push(&chunk, 10, route(&name)), Pushed::Dropped);
        let events = decode(mailbox.drain(usize::MAX));
        assert_eq!(events.len(), 11);
        let Some(pb::event::Body::Status(gap)) = &events[10].body else {
            panic!("{:?}", events[10])
        };
        assert_eq!((gap.kind, gap.missed), (pb::StatusKind::Gap as i32, 20));
        assert_eq!(events[10].instrument, "TEST:X");
        // Reported once: the next accepted chunk is not preceded by it again.
        assert_eq!(mailbox.push(&chunk, 10, route(&name)), Pushed::Queued);
        assert_eq!(decode(mailbox.drain(usize::MAX)).len(), 10);
        assert_eq!(mailbox.queued(), (0, 0));
        // A chunk of more events than the bound goes to an empty queue, and only there.
        let mut big = BytesMut::new();
        for _ in 0..20 {
            wire::put_event(&mut big, "TEST:X", &trade);
        }
        let big = big.freeze();
        assert_eq!(mailbox.push(&big, 20, route(&name)), Pushed::Queued);
        assert_eq!(mailbox.push(&chunk, 10, route(&name)), Pushed::Dropped);
        // Losses counted before the mailbox (a gateway view's) are reported with its own.
        mailbox.add_missed(route(&name), 5);
        let events = decode(mailbox.drain(usize::MAX));
        assert_eq!(events.len(), 21);
        let Some(pb::event::Body::Status(gap)) = &events[20].body else {
            panic!("{:?}", events[20])
        };
        assert_eq!(gap.missed, 15);
    }

    #[test]
    fn the_byte_bound_drops_what_does_not_fit_and_a_large_chunk_goes_to_an_empty_queue() {
        let name = InstrumentName::parse("TEST:X").unwrap();
        let bound = QueueBound {
            events: 1000,
            bytes: 100,
        };
        let trades = Mailbox::new(1, bound, LagPolicy::Gap);
        let chunk = Bytes::from(vec![0u8; 40]);
        assert_eq!(trades.push(&chunk, 1, route(&name)), Pushed::Queued);
        assert_eq!(trades.push(&chunk, 1, route(&name)), Pushed::Queued);
        // 120 bytes would not fit in 100, though 3 events fit in 1,000.
        assert_eq!(trades.push(&chunk, 1, route(&name)), Pushed::Dropped);
        assert_eq!(trades.queued(), (2, 80));
        let small = Bytes::from(vec![0u8; 20]);
        assert_eq!(trades.push(&small, 1, route(&name)), Pushed::Queued);
        assert_eq!(trades.queued(), (3, 100));
        assert_eq!(
            trades.drain(usize::MAX).batch.len_bytes(),
            100 + gap_len(&name, 1)
        );
        assert_eq!(trades.queued(), (0, 0));
        // Alone, a chunk over the bound goes; with it queued, nothing more does.
        let large = Bytes::from(vec![0u8; 500]);
        assert_eq!(trades.push(&large, 1, route(&name)), Pushed::Queued);
        assert_eq!(trades.push(&small, 1, route(&name)), Pushed::Dropped);
        assert_eq!(trades.queued(), (1, 500));

        // A book view over the byte bound is marked for a resync, and its next events are
        // dropped until the snapshot goes out.
        let book = Mailbox::new(2, bound, LagPolicy::Gap);
        let book_route = Route {
            channel: Channel::Book,
            ..route(&name)
        };
        assert_eq!(book.push(&large, 1, book_route), Pushed::Queued);
        assert_eq!(book.push(&small, 1, book_route), Pushed::Dropped);
        let drained = book.drain(usize::MAX);
        assert_eq!(drained.batch.len_bytes(), 500);
        assert_eq!(drained.resync_requests, vec![(InstrumentId(0), 0)]);
        assert_eq!(book.push(&small, 1, book_route), Pushed::Dropped);
        book.complete_resync(InstrumentId(0), 0, large.clone());
        assert_eq!(book.push(&small, 1, book_route), Pushed::Queued);
        // The snapshot is control output, outside the bound.
        assert_eq!(book.queued(), (1, 20));
    }

    /// The encoded length of a gap report of `missed` events on `name`'s trades.
    fn gap_len(name: &InstrumentName, missed: u64) -> usize {
        gap_event(Form::Protobuf, name, Channel::Trades, missed).len()
    }

    #[test]
    fn a_drained_mailbox_gives_back_what_a_burst_grew() {
        let name = InstrumentName::parse("TEST:X").unwrap();
        let mailbox = Mailbox::new(1, events(32_768), LagPolicy::Gap);
        let chunk = Bytes::from_static(b"not decoded here");
        let capacity = |m: &Mailbox| m.lock().entries.capacity();
        for _ in 0..20_000 {
            assert_eq!(mailbox.push(&chunk, 1, route(&name)), Pushed::Queued);
        }
        assert!(capacity(&mailbox) >= 20_000);
        // Drained in messages of 64 KiB: the room goes back only once it is empty.
        let mut drained = 0;
        while mailbox.queued().0 > 0 {
            let batch = mailbox.drain(64 << 10).batch;
            drained += batch.len_bytes() / chunk.len();
            if mailbox.queued().0 > 0 {
                assert!(capacity(&mailbox) >= 20_000);
            }
        }
        assert_eq!(drained, 20_000);
        assert_eq!(capacity(&mailbox), RETAINED_ENTRIES);
        // A subscriber that holds a few hundred at a time keeps its room.
        for _ in 0..600 {
            mailbox.push(&chunk, 1, route(&name));
        }
        let grown = capacity(&mailbox);
        mailbox.drain(usize::MAX);
        assert_eq!(capacity(&mailbox), grown);
    }
}
