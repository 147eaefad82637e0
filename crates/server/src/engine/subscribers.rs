//! Who receives an instrument's events: a group of subscribers per channel (the book's
//! at full depth) and a view per depth-limited book, each with the bytes encoded for it
//! in the current batch; and what a new (or resynced) subscriber receives first.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raven_book::OrderBook;
use raven_model::{
    Channel, Event, EventBody, InstrumentId, InstrumentName, Level, PerChannel, Side, SnapshotKind,
    UnixNanos,
};
use raven_proto::wire::{self, Header};

use super::shard::Instrument;
use crate::fanout::{Mailbox, Pushed, Route};

/// Subscribers of one channel (or one book view) and the bytes encoded for them in the
/// current batch.
#[derive(Default)]
pub(super) struct Group {
    /// In id order, so two groups with the same subscribers list them alike.
    subs: Vec<Arc<Mailbox>>,
    /// The sum of the subscribers' [`mixed`] ids: groups with the same subscribers have
    /// the same key, which lets a flush find them without comparing every pair.
    key: u64,
    out: BytesMut,
    events: u32,
}

/// Encoding buffers grow in blocks this large. Flushed bytes are handed out as shared
/// slices of the block, so a small reserve would allocate again for nearly every event.
const ENCODE_BLOCK: usize = 64 * 1024;

/// A subscriber id spread over all 64 bits, so sums of different sets rarely meet.
fn mixed(id: u64) -> u64 {
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Room for the next event in an encoding buffer.
fn reserve(out: &mut BytesMut) {
    if out.capacity() - out.len() < ENCODE_BLOCK / 16 {
        out.reserve(ENCODE_BLOCK);
    }
}

impl Group {
    /// Encodes `event` for the group's subscribers, if it has any.
    pub(super) fn encode(&mut self, name: &InstrumentName, event: &Event) {
        if self.subs.is_empty() {
            return;
        }
        reserve(&mut self.out);
        wire::put_event(&mut self.out, name.as_str(), event);
        self.events += 1;
    }

    /// Takes an event already encoded (for the taps), if the group has subscribers.
    pub(super) fn copy(&mut self, encoded: &[u8]) {
        if self.subs.is_empty() {
            return;
        }
        reserve(&mut self.out);
        self.out.extend_from_slice(encoded);
        self.events += 1;
    }

    fn insert(&mut self, mailbox: Arc<Mailbox>) {
        let id = mailbox.id();
        let at = self.subs.partition_point(|m| m.id() < id);
        self.subs.insert(at, mailbox);
        self.key = self.key.wrapping_add(mixed(id));
    }

    /// Keeps the subscribers `keep` says to, and the key with them.
    fn retain(&mut self, mut keep: impl FnMut(&Arc<Mailbox>) -> bool) {
        let key = &mut self.key;
        self.subs.retain(|m| {
            let kept = keep(m);
            if !kept {
                *key = key.wrapping_sub(mixed(m.id()));
            }
            kept
        });
    }

    /// Whether `other` has exactly these subscribers.
    fn same_subscribers(&self, other: &Group) -> bool {
        self.key == other.key
            && self.subs.len() == other.subs.len()
            && self
                .subs
                .iter()
                .zip(&other.subs)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// Pushes the batch's bytes to every subscriber; returns how many refused it for lag.
    fn flush(&mut self, route: Route<'_>) -> u64 {
        if self.events == 0 {
            return 0;
        }
        let bytes = self.out.split().freeze();
        let events = std::mem::take(&mut self.events);
        let mut lagged = 0;
        self.retain(|m| match m.push(&bytes, events, route) {
            Pushed::Queued => true,
            Pushed::Dropped => {
                lagged += 1;
                true
            }
            Pushed::Disconnected => {
                lagged += 1;
                false
            }
            Pushed::Closed => false,
        });
        lagged
    }

    fn remove(&mut self, subscriber: u64) {
        self.retain(|m| m.id() != subscriber);
    }

    fn has(&self, subscriber: u64) -> bool {
        self.subs.iter().any(|m| m.id() == subscriber)
    }
}

/// A non-book channel of an instrument with output in the current batch, waiting for
/// [`flush_together`].
pub(super) struct Pending {
    instrument: InstrumentId,
    channel: Channel,
    /// Its group's subscriber count and key, by which the flush sorts.
    len: usize,
    key: u64,
}

/// Pushes the batch's output of the `pending` channels, which [`Subscribers::flush`]
/// left: channels with the same subscribers (a client taking trades of many instruments,
/// and many clients taking the same ones) go to each of them as one chunk, in one push,
/// instead of a chunk and a push for each channel. Returns how many pushes were refused
/// for lag, counting each channel of a combined push. `combined` is the buffer that
/// combined chunks are copied into.
pub(super) fn flush_together(
    instruments: &mut [Option<Box<Instrument>>],
    pending: &mut Vec<Pending>,
    combined: &mut BytesMut,
) -> u64 {
    // Stable: alike channels keep the order their instruments were changed in.
    pending.sort_by_key(|p| (p.len, p.key));
    let mut lagged = 0;
    let mut closed = Vec::new();
    let mut start = 0;
    while start < pending.len() {
        let first = &pending[start];
        let mut end = start + 1;
        while end < pending.len() && (pending[end].len, pending[end].key) == (first.len, first.key)
        {
            end += 1;
        }
        let alike = &pending[start..end];
        start = end;
        if let [alone] = alike {
            lagged += flush_alone(instruments, alone);
            continue;
        }
        let first = group(instruments, &alike[0]);
        let (together, alone): (Vec<&Pending>, Vec<&Pending>) = alike
            .iter()
            .partition(|p| group(instruments, p).same_subscribers(first));
        if together.len() == 1 {
            // Keys alike by chance: nothing to combine.
            for p in alike {
                lagged += flush_alone(instruments, p);
            }
            continue;
        }
        for p in alone {
            lagged += flush_alone(instruments, p);
        }
        let mut parts = Vec::with_capacity(together.len());
        for p in &together {
            let g = group(instruments, p);
            reserve(combined);
            combined.extend_from_slice(&g.out);
            let inst = instruments[p.instrument.index()]
                .as_deref()
                .expect("pending instruments exist");
            let route = Route {
                instrument: p.instrument,
                name: &inst.name,
                channel: p.channel,
                depth: 0,
            };
            parts.push((route, g.events));
        }
        let bytes = combined.split().freeze();
        for m in &group(instruments, together[0]).subs {
            match m.push_parts(&bytes, &parts) {
                Pushed::Queued => {}
                Pushed::Dropped => lagged += parts.len() as u64,
                Pushed::Disconnected => {
                    lagged += parts.len() as u64;
                    closed.push(m.id());
                }
                Pushed::Closed => closed.push(m.id()),
            }
        }
        drop(parts);
        closed.sort_unstable();
        for p in together {
            let inst = instruments[p.instrument.index()]
                .as_deref_mut()
                .expect("pending instruments exist");
            let g = &mut inst.subscribers.groups[p.channel];
            g.out.clear();
            g.events = 0;
            if !closed.is_empty() {
                g.retain(|m| closed.binary_search(&m.id()).is_err());
            }
        }
        closed.clear();
    }
    pending.clear();
    lagged
}

/// Pushes one pending channel's output on its own.
fn flush_alone(instruments: &mut [Option<Box<Instrument>>], p: &Pending) -> u64 {
    let inst = instruments[p.instrument.index()]
        .as_deref_mut()
        .expect("pending instruments exist");
    inst.subscribers.groups[p.channel].flush(Route {
        instrument: p.instrument,
        name: &inst.name,
        channel: p.channel,
        depth: 0,
    })
}

fn group<'a>(instruments: &'a [Option<Box<Instrument>>], p: &Pending) -> &'a Group {
    let inst = instruments[p.instrument.index()]
        .as_deref()
        .expect("pending instruments exist");
    &inst.subscribers.groups[p.channel]
}

/// A book view at one depth. It keeps its last published levels so the deltas it sends
/// keep exactly `depth` levels right.
pub(super) struct BookView {
    pub(super) depth: u32,
    pub(super) group: Group,
    pub(super) bids: Vec<Level>,
    pub(super) asks: Vec<Level>,
}

/// Everyone subscribed to one instrument.
#[derive(Default)]
pub(super) struct Subscribers {
    /// Per channel; the book's group takes the full book.
    pub(super) groups: PerChannel<Group>,
    /// Depth-limited book views, one per depth asked for.
    pub(super) views: Vec<BookView>,
}

impl Subscribers {
    pub(super) fn is_empty(&self) -> bool {
        self.views.is_empty() && self.groups.iter().all(|(_, g)| g.subs.is_empty())
    }

    /// Adds `mailbox` to `channel` (at `depth`, for the book, whose current levels start
    /// a new view).
    pub(super) fn add(
        &mut self,
        channel: Channel,
        depth: u32,
        mailbox: Arc<Mailbox>,
        book: &OrderBook,
    ) {
        if channel != Channel::Book || depth == 0 {
            self.groups[channel].insert(mailbox);
            return;
        }
        let view = match self.views.iter().position(|v| v.depth == depth) {
            Some(i) => &mut self.views[i],
            None => {
                let mut view = BookView {
                    depth,
                    group: Group::default(),
                    bids: Vec::new(),
                    asks: Vec::new(),
                };
                book.top_into(Side::Bid, depth as usize, &mut view.bids);
                book.top_into(Side::Ask, depth as usize, &mut view.asks);
                self.views.push(view);
                self.views.last_mut().expect("just pushed")
            }
        };
        view.group.insert(mailbox);
    }

    /// Removes a subscriber from `channel`, or from every channel.
    pub(super) fn remove(&mut self, subscriber: u64, channel: Option<Channel>) {
        if channel.is_none_or(|c| c == Channel::Book) {
            for view in &mut self.views {
                view.group.remove(subscriber);
            }
            self.views.retain(|v| !v.group.subs.is_empty());
        }
        for (c, group) in self.groups.iter_mut() {
            if channel.is_none_or(|ch| ch == c) {
                group.remove(subscriber);
            }
        }
    }

    /// Ends every subscriber's stream with `why` and forgets them.
    pub(super) fn close_all(&mut self, why: &crate::fanout::Closed) {
        let groups = self.groups.iter_mut().map(|(_, g)| g);
        for group in groups.chain(self.views.iter_mut().map(|v| &mut v.group)) {
            for mailbox in group.subs.drain(..) {
                mailbox.close(why.clone());
            }
            group.key = 0;
            group.out.clear();
            group.events = 0;
        }
        self.views.clear();
    }

    /// Whether `subscriber` takes the book at `depth`.
    pub(super) fn has_book(&self, subscriber: u64, depth: u32) -> bool {
        if depth == 0 {
            return self.groups[Channel::Book].has(subscriber);
        }
        self.views
            .iter()
            .any(|v| v.depth == depth && v.group.has(subscriber))
    }

    /// Pushes the batch's book output to its subscribers, and lists the other channels
    /// with output in `pending` for [`flush_together`]; returns how many subscribers
    /// lagged.
    pub(super) fn flush(
        &mut self,
        instrument: InstrumentId,
        name: &InstrumentName,
        pending: &mut Vec<Pending>,
    ) -> u64 {
        let mut lagged = 0;
        for view in &mut self.views {
            lagged += view.group.flush(Route {
                instrument,
                name,
                channel: Channel::Book,
                depth: view.depth,
            });
        }
        self.views.retain(|v| !v.group.subs.is_empty());
        for (channel, group) in self.groups.iter_mut() {
            if channel == Channel::Book {
                lagged += group.flush(Route {
                    instrument,
                    name,
                    channel,
                    depth: 0,
                });
            } else if group.events > 0 {
                pending.push(Pending {
                    instrument,
                    channel,
                    len: group.subs.len(),
                    key: group.key,
                });
            }
        }
        lagged
    }
}

/// The book at `depth` (0: full) as a snapshot event at the book's sequence.
pub(super) fn snapshot_event(
    inst: &Instrument,
    depth: u32,
    kind: SnapshotKind,
    now: UnixNanos,
) -> Event {
    let body = EventBody::Snapshot(inst.book.snapshot(depth as usize, kind));
    state_event(inst, Channel::Book, body, now)
}

/// The instrument's last BBO as an event published `now`, at the BBO channel's sequence.
pub(super) fn bbo_event(inst: &Instrument, now: UnixNanos) -> Event {
    state_event(inst, Channel::Bbo, EventBody::Bbo(inst.bbo), now)
}

/// `body`, state derived from the book, as an event published `now`: at `channel`'s last
/// sequence, with the times of the book's last change.
fn state_event(inst: &Instrument, channel: Channel, body: EventBody, now: UnixNanos) -> Event {
    Event {
        instrument: inst.id,
        sequence: inst.seq[channel],
        exchange_time: inst.book_times.0,
        receive_time: inst.book_times.1,
        publish_time: now,
        venue_seq: inst.book_times.2,
        body,
    }
}

/// What a new (or resynced) subscriber receives first: the current state of the channel
/// at its current sequence, then a `SnapshotEnd` marker.
pub(super) fn initial_state(
    inst: &Instrument,
    channel: Channel,
    depth: u32,
    kind: SnapshotKind,
    now: UnixNanos,
) -> Bytes {
    let mut buf = BytesMut::new();
    let name = inst.name.as_str();
    match channel {
        Channel::Book => wire::put_event(&mut buf, name, &snapshot_event(inst, depth, kind, now)),
        Channel::Bbo if inst.seq[Channel::Bbo].0 > 0 => {
            wire::put_event(&mut buf, name, &bbo_event(inst, now));
        }
        _ => {}
    }
    buf.extend_from_slice(&snapshot_end(inst, channel, now));
    buf.freeze()
}

/// The `SnapshotEnd` marker: live events of `channel` continue from the next sequence.
pub(super) fn snapshot_end(inst: &Instrument, channel: Channel, now: UnixNanos) -> Bytes {
    let mut buf = BytesMut::new();
    wire::put_snapshot_end(
        &mut buf,
        &Header {
            instrument: inst.name.as_str(),
            channel,
            sequence: inst.seq[channel].0,
            exchange_time: 0,
            receive_time: 0,
            publish_time: now.0,
            venue_seq: 0,
        },
    );
    buf.freeze()
}
