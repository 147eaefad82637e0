//! One engine shard: the single writer for its instruments. It applies feed events to the
//! books, sequences and derives output events, encodes each once per subscriber group and
//! pushes the shared bytes at the end of every input batch.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use raven_book::top::{self, TopOfBook, TopWriter};
use raven_book::{BookError, OrderBook, diff_levels};
use raven_model::{
    Bbo, BookDelta, BookSnapshot, Candle, Channel, Event, EventBody, FeedEvent, FeedKind,
    InstrumentId, InstrumentName, Level, Sequence, Side, SnapshotKind, Status, StatusKind, Trade,
    UnixNanos,
};
use raven_proto::wire::{self, Header};

use super::candles::Candles;
use super::{Command, ShardContext};
use crate::fanout::{Mailbox, Pushed, Route};

/// Subscribers of one channel (or one book view) and the bytes encoded for them in the
/// current batch.
#[derive(Default)]
struct Group {
    subs: Vec<Arc<Mailbox>>,
    out: BytesMut,
    events: u32,
}

/// Encoding buffers grow in blocks this large. Flushed bytes are handed out as shared
/// slices of the block, so a small reserve would allocate again for nearly every event.
const ENCODE_BLOCK: usize = 64 * 1024;

impl Group {
    fn encode(&mut self, name: &InstrumentName, event: &Event) {
        if self.out.capacity() - self.out.len() < ENCODE_BLOCK / 16 {
            self.out.reserve(ENCODE_BLOCK);
        }
        wire::put_event(&mut self.out, name.as_str(), event);
        self.events += 1;
    }

    /// Pushes the batch's bytes to every subscriber; returns how many refused it for lag.
    fn flush(&mut self, route: Route<'_>) -> u64 {
        if self.events == 0 {
            return 0;
        }
        let bytes = self.out.split().freeze();
        let events = std::mem::take(&mut self.events);
        let mut lagged = 0;
        self.subs.retain(|m| match m.push(&bytes, events, route) {
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
        self.subs.retain(|m| m.id() != subscriber);
    }
}

/// A book view at one depth. Depth-limited views keep their last published levels so the
/// deltas they send keep exactly `depth` levels right.
struct BookView {
    depth: u32,
    group: Group,
    bids: Vec<Level>,
    asks: Vec<Level>,
}

struct Instrument {
    id: InstrumentId,
    name: InstrumentName,
    book: OrderBook,
    /// After a refused update the book is stale until the feed sends a fresh snapshot.
    awaiting_snapshot: bool,
    /// Last sequence used, per channel.
    seq: [Sequence; 4],
    /// Times of the last book change, for snapshots served later.
    book_times: (UnixNanos, UnixNanos),
    bbo: Bbo,
    top: TopWriter,
    candles: Candles,
    views: Vec<BookView>,
    /// BBO, trades and candles subscribers (indexed by `Channel::index() - 1`).
    groups: [Group; 3],
    dirty: bool,
    /// Book events tapped since the last checkpoint snapshot.
    since_checkpoint: u32,
}

impl Instrument {
    fn next_seq(&mut self, channel: Channel) -> Sequence {
        let s = &mut self.seq[channel.index()];
        *s = s.next();
        *s
    }

    fn group(&mut self, channel: Channel) -> &mut Group {
        debug_assert_ne!(channel, Channel::Book);
        &mut self.groups[channel.index() - 1]
    }

    fn has_subscribers(&self) -> bool {
        !self.views.is_empty() || self.groups.iter().any(|g| !g.subs.is_empty())
    }
}

/// Reusable buffers so the hot path does not allocate per event.
#[derive(Default)]
struct Scratch {
    bids: Vec<Level>,
    asks: Vec<Level>,
    candles: Vec<Candle>,
}

/// A shard's state. Driven by one thread (see `run_shard`); benchmarks drive it directly.
pub struct Shard {
    ctx: ShardContext,
    instruments: Vec<Option<Box<Instrument>>>,
    dirty: Vec<InstrumentId>,
    tapped: Vec<Event>,
    now: UnixNanos,
    scratch: Scratch,
}

/// The state of instrument `id`, created on first use. A free function over the table
/// (not a method) so callers can keep borrowing the shard's other fields.
fn slot<'a>(
    instruments: &'a mut Vec<Option<Box<Instrument>>>,
    ctx: &ShardContext,
    id: InstrumentId,
) -> Option<&'a mut Instrument> {
    if instruments.len() <= id.index() {
        instruments.resize_with(id.index() + 1, || None);
    }
    if instruments[id.index()].is_none() {
        let name = ctx.registry.name(id)?;
        let (writer, reader) = top::channel();
        ctx.tops
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, reader);
        instruments[id.index()] = Some(Box::new(Instrument {
            id,
            name,
            book: OrderBook::new(),
            awaiting_snapshot: true,
            seq: [Sequence(0); 4],
            book_times: (UnixNanos::ZERO, UnixNanos::ZERO),
            bbo: Bbo::default(),
            top: writer,
            candles: Candles::default(),
            views: Vec::new(),
            groups: Default::default(),
            dirty: false,
            since_checkpoint: 0,
        }));
    }
    instruments[id.index()].as_deref_mut()
}

struct Times {
    exchange: UnixNanos,
    receive: UnixNanos,
}

impl Shard {
    /// A shard with no instruments yet; they are created on first use.
    pub fn new(ctx: ShardContext) -> Shard {
        Shard {
            ctx,
            instruments: Vec::new(),
            dirty: Vec::new(),
            tapped: Vec::new(),
            now: UnixNanos::ZERO,
            scratch: Scratch::default(),
        }
    }

    /// Applies one input batch and publishes its output. The batch is consumed: deltas
    /// and trades move into the events they produce instead of being copied.
    pub fn process(&mut self, batch: Vec<FeedEvent>) {
        self.tick();
        for event in batch {
            self.apply(event);
        }
        self.flush();
    }

    /// Reads the clock for the next publish stamp. Stamps never go backwards, even when
    /// the wall clock is stepped back: every instrument's events are then in publish-time
    /// order wherever they are recorded, which the store's time index relies on.
    fn tick(&mut self) {
        self.now = self.now.max(self.ctx.clock.now());
    }

    fn apply(&mut self, fe: FeedEvent) {
        let now = self.now;
        let tapping = !self.ctx.taps.is_empty();
        let Some(inst) = slot(&mut self.instruments, &self.ctx, fe.instrument) else {
            tracing::warn!(
                instrument = fe.instrument.0,
                "feed event for an unregistered instrument dropped"
            );
            return;
        };
        if !inst.dirty {
            inst.dirty = true;
            self.dirty.push(inst.id);
        }
        let times = Times {
            exchange: fe.exchange_time,
            receive: fe.receive_time,
        };
        let mut out = Output {
            now,
            tapped: tapping.then_some(&mut self.tapped),
            scratch: &mut self.scratch,
        };
        match fe.kind {
            FeedKind::Snapshot(s) => {
                let next = inst.book.sequence().next();
                match inst.book.apply_snapshot(next, &s) {
                    Ok(()) => {
                        let kind = if inst.awaiting_snapshot && inst.seq[0] == Sequence(0) {
                            SnapshotKind::Initial
                        } else {
                            SnapshotKind::Resync
                        };
                        inst.awaiting_snapshot = false;
                        out.book_changed(inst, &times, None, kind);
                    }
                    Err(e) => self.ctx.reject(inst, &mut out, &times, &e),
                }
            }
            FeedKind::Delta(d) => {
                if inst.awaiting_snapshot {
                    return;
                }
                let next = inst.book.sequence().next();
                match inst.book.apply_delta(next, &d) {
                    Ok(()) => out.book_changed(inst, &times, Some(d), SnapshotKind::Initial),
                    Err(e) => self.ctx.reject(inst, &mut out, &times, &e),
                }
            }
            FeedKind::Trade(t) => {
                if t.qty.is_zero() || t.qty.is_negative() {
                    let detail = format!("trade {} with quantity {} refused", t.trade_id, t.qty);
                    out.status(inst, &times, Channel::Trades, StatusKind::Rejected, detail);
                    return;
                }
                out.trade(inst, &times, t);
            }
            FeedKind::Status(s) => {
                out.status(inst, &times, s.channel, s.kind, s.detail);
            }
        }
    }

    fn flush(&mut self) {
        let mut lagged = 0;
        let tapping = !self.ctx.taps.is_empty();
        for id in std::mem::take(&mut self.dirty) {
            let Some(inst) = self.instruments[id.index()].as_deref_mut() else {
                continue;
            };
            inst.dirty = false;
            if tapping
                && inst.since_checkpoint >= self.ctx.checkpoint_every
                && !inst.awaiting_snapshot
            {
                // For the recorder only: subscribers never see checkpoints.
                inst.since_checkpoint = 0;
                let now = self.now;
                self.tapped
                    .push(snapshot_event(inst, 0, SnapshotKind::Checkpoint, now));
            }
            let name = &inst.name;
            for view in &mut inst.views {
                lagged += view.group.flush(Route {
                    instrument: id,
                    name,
                    channel: Channel::Book,
                    depth: view.depth,
                });
            }
            for (group, channel) in
                inst.groups
                    .iter_mut()
                    .zip([Channel::Bbo, Channel::Trades, Channel::Candles])
            {
                lagged += group.flush(Route {
                    instrument: id,
                    name,
                    channel,
                    depth: 0,
                });
            }
            inst.views.retain(|v| !v.group.subs.is_empty());
        }
        if lagged > 0 {
            self.ctx.fanout.record_lagged(lagged);
        }
        if !self.tapped.is_empty() {
            let batch: Arc<[Event]> = std::mem::take(&mut self.tapped).into();
            for tap in &self.ctx.taps {
                // Blocking: taps are lossless, a slow one slows the engine (and the feed).
                let _ = tap.send(batch.clone());
            }
        }
    }

    /// Handles an API command between batches, when no output is pending.
    pub fn command(&mut self, command: Command) {
        self.tick();
        match command {
            Command::Subscribe {
                mailbox,
                instrument,
                channel,
                depth,
                state,
                done,
            } => {
                let mut sequence = 0;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    remove_subscriber(inst, mailbox.id(), Some(channel));
                    let now = self.now;
                    let initial = if state {
                        initial_state(inst, channel, depth, SnapshotKind::Initial, now)
                    } else {
                        snapshot_end(inst, channel, now)
                    };
                    mailbox.push_control(initial);
                    sequence = inst.seq[channel.index()].0;
                    match channel {
                        Channel::Book => book_view(inst, depth).group.subs.push(mailbox),
                        other => inst.group(other).subs.push(mailbox),
                    }
                }
                let _ = done.send(sequence);
            }
            Command::Unsubscribe {
                subscriber,
                instrument,
                channel,
                done,
            } => {
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    remove_subscriber(inst, subscriber, Some(channel));
                }
                let _ = done.send(());
            }
            Command::Resync {
                mailbox,
                instrument,
                depth,
            } => {
                let now = self.now;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    let subscribed = inst.views.iter().any(|v| {
                        v.depth == depth && v.group.subs.iter().any(|m| m.id() == mailbox.id())
                    });
                    let bytes = if subscribed {
                        initial_state(inst, Channel::Book, depth, SnapshotKind::Resync, now)
                    } else {
                        Bytes::new()
                    };
                    mailbox.complete_resync(instrument, depth, bytes);
                    if subscribed {
                        self.ctx.fanout.record_resync();
                    }
                }
            }
            Command::Snapshot {
                instrument,
                depth,
                reply,
            } => {
                let now = self.now;
                if let Some(inst) = slot(&mut self.instruments, &self.ctx, instrument) {
                    let _ = reply.send(snapshot_event(inst, depth, SnapshotKind::Initial, now));
                }
            }
            Command::Detach { subscriber } => {
                for inst in self.instruments.iter_mut().flatten() {
                    if inst.has_subscribers() {
                        remove_subscriber(inst, subscriber, None);
                    }
                }
            }
            Command::Stop => {}
        }
    }
}

impl ShardContext {
    fn reject(
        &self,
        inst: &mut Instrument,
        out: &mut Output<'_>,
        times: &Times,
        error: &BookError,
    ) {
        inst.awaiting_snapshot = true;
        let detail = format!("{error}; update refused, book resyncing from a fresh snapshot");
        tracing::warn!(instrument = %inst.name, %error, "feed update refused");
        out.status(inst, times, Channel::Book, StatusKind::Rejected, detail);
        self.catalog.request_resync(inst.id);
    }
}

/// Output of one event: sequencing, derivation and encoding.
struct Output<'a> {
    now: UnixNanos,
    tapped: Option<&'a mut Vec<Event>>,
    scratch: &'a mut Scratch,
}

impl Output<'_> {
    fn event(
        &self,
        inst: &mut Instrument,
        channel: Channel,
        times: &Times,
        body: EventBody,
    ) -> Event {
        Event {
            instrument: inst.id,
            sequence: inst.next_seq(channel),
            exchange_time: times.exchange,
            receive_time: times.receive,
            publish_time: self.now,
            body,
        }
    }

    fn emit(&mut self, inst: &mut Instrument, event: Event) {
        let channel = event.body.channel();
        if channel != Channel::Book {
            let group = &mut inst.groups[channel.index() - 1];
            if !group.subs.is_empty() {
                group.encode(&inst.name, &event);
            }
        }
        if let Some(tapped) = self.tapped.as_deref_mut() {
            if channel == Channel::Book {
                inst.since_checkpoint += 1;
            }
            tapped.push(event);
        }
    }

    /// Publishes a book change (`delta` is `None` for a snapshot) to every view, then the
    /// BBO if the top moved.
    fn book_changed(
        &mut self,
        inst: &mut Instrument,
        times: &Times,
        delta: Option<BookDelta>,
        kind: SnapshotKind,
    ) {
        inst.book_times = (times.exchange, times.receive);
        let is_delta = delta.is_some();
        let body = match delta {
            Some(d) => EventBody::Delta(d),
            None => EventBody::Snapshot(inst.book.snapshot(0, kind)),
        };
        let event = self.event(inst, Channel::Book, times, body);
        for view in &mut inst.views {
            if view.depth == 0 {
                view.group.encode(&inst.name, &event);
                continue;
            }
            let depth = view.depth as usize;
            let s = &mut *self.scratch;
            inst.book.top_into(Side::Bid, depth, &mut s.bids);
            inst.book.top_into(Side::Ask, depth, &mut s.asks);
            let body = if is_delta {
                let mut changes = Vec::new();
                diff_levels(Side::Bid, &view.bids, &s.bids, &mut changes);
                diff_levels(Side::Ask, &view.asks, &s.asks, &mut changes);
                EventBody::Delta(BookDelta { changes })
            } else {
                EventBody::Snapshot(BookSnapshot {
                    bids: s.bids.clone(),
                    asks: s.asks.clone(),
                    kind,
                })
            };
            std::mem::swap(&mut view.bids, &mut s.bids);
            std::mem::swap(&mut view.asks, &mut s.asks);
            // Every view carries the book sequence, so each view's stream stays contiguous
            // (an unchanged top-N is an empty delta).
            let view_event = Event {
                instrument: event.instrument,
                sequence: event.sequence,
                exchange_time: event.exchange_time,
                receive_time: event.receive_time,
                publish_time: event.publish_time,
                body,
            };
            view.group.encode(&inst.name, &view_event);
        }
        let book_seq = event.sequence;
        self.emit(inst, event);
        let bbo = Bbo {
            bid: inst.book.best_bid(),
            ask: inst.book.best_ask(),
        };
        if bbo != inst.bbo {
            inst.bbo = bbo;
            inst.top.publish(&TopOfBook {
                bbo,
                sequence: book_seq,
                time: times.exchange,
            });
            let event = self.event(inst, Channel::Bbo, times, EventBody::Bbo(bbo));
            self.emit(inst, event);
        }
    }

    fn trade(&mut self, inst: &mut Instrument, times: &Times, trade: Trade) {
        let mut closed = std::mem::take(&mut self.scratch.candles);
        inst.candles
            .on_trade(times.exchange, trade.price, trade.qty, &mut closed);
        for candle in closed.drain(..) {
            let event = self.event(inst, Channel::Candles, times, EventBody::Candle(candle));
            self.emit(inst, event);
        }
        self.scratch.candles = closed;
        let event = self.event(inst, Channel::Trades, times, EventBody::Trade(trade));
        self.emit(inst, event);
    }

    fn status(
        &mut self,
        inst: &mut Instrument,
        times: &Times,
        channel: Channel,
        kind: StatusKind,
        detail: String,
    ) {
        let status = Status {
            kind,
            channel,
            missed: 0,
            detail,
        };
        let event = self.event(inst, channel, times, EventBody::Status(status));
        if channel == Channel::Book {
            for view in &mut inst.views {
                view.group.encode(&inst.name, &event);
            }
        }
        self.emit(inst, event);
    }
}

fn book_view(inst: &mut Instrument, depth: u32) -> &mut BookView {
    let i = match inst.views.iter().position(|v| v.depth == depth) {
        Some(i) => i,
        None => {
            let mut view = BookView {
                depth,
                group: Group::default(),
                bids: Vec::new(),
                asks: Vec::new(),
            };
            if depth > 0 {
                inst.book
                    .top_into(Side::Bid, depth as usize, &mut view.bids);
                inst.book
                    .top_into(Side::Ask, depth as usize, &mut view.asks);
            }
            inst.views.push(view);
            inst.views.len() - 1
        }
    };
    &mut inst.views[i]
}

fn remove_subscriber(inst: &mut Instrument, subscriber: u64, channel: Option<Channel>) {
    if channel.is_none_or(|c| c == Channel::Book) {
        for view in &mut inst.views {
            view.group.remove(subscriber);
        }
        inst.views.retain(|v| !v.group.subs.is_empty());
    }
    for (group, c) in inst
        .groups
        .iter_mut()
        .zip([Channel::Bbo, Channel::Trades, Channel::Candles])
    {
        if channel.is_none_or(|ch| ch == c) {
            group.remove(subscriber);
        }
    }
}

fn snapshot_event(inst: &Instrument, depth: u32, kind: SnapshotKind, now: UnixNanos) -> Event {
    Event {
        instrument: inst.id,
        sequence: inst.seq[Channel::Book.index()],
        exchange_time: inst.book_times.0,
        receive_time: inst.book_times.1,
        publish_time: now,
        body: EventBody::Snapshot(inst.book.snapshot(depth as usize, kind)),
    }
}

/// What a new (or resynced) subscriber receives first: the current state of the channel
/// at its current sequence, then a `SnapshotEnd` marker.
fn initial_state(
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
        Channel::Bbo if inst.seq[Channel::Bbo.index()].0 > 0 => {
            let event = Event {
                instrument: inst.id,
                sequence: inst.seq[Channel::Bbo.index()],
                exchange_time: inst.book_times.0,
                receive_time: inst.book_times.1,
                publish_time: now,
                body: EventBody::Bbo(inst.bbo),
            };
            wire::put_event(&mut buf, name, &event);
        }
        _ => {}
    }
    buf.extend_from_slice(&snapshot_end(inst, channel, now));
    buf.freeze()
}

/// The `SnapshotEnd` marker: live events of `channel` continue from the next sequence.
fn snapshot_end(inst: &Instrument, channel: Channel, now: UnixNanos) -> Bytes {
    let mut buf = BytesMut::new();
    wire::put_snapshot_end(
        &mut buf,
        &Header {
            instrument: inst.name.as_str(),
            channel,
            sequence: inst.seq[channel.index()].0,
            exchange_time: 0,
            receive_time: 0,
            publish_time: now.0,
        },
    );
    buf.freeze()
}
