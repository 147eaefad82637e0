//! What one feed event becomes: sequenced output events, and what is derived from them
//! (each depth-limited view's delta, the BBO when the top moved, candles when a trade
//! closes a bar). Each event is encoded once: for the taps when there are any (its
//! subscribers then get a copy of those bytes), else for its subscribers.

use raven_book::diff_levels;
use raven_book::top::TopOfBook;
use raven_model::{
    Bbo, BookDelta, BookSnapshot, Candle, Channel, Event, EventBody, Level, Side, SnapshotKind,
    Status, Trade, UnixNanos,
};

use super::TapBuffer;
use super::shard::Instrument;

/// Reusable buffers so the hot path does not allocate per event.
#[derive(Default)]
pub(super) struct Scratch {
    bids: Vec<Level>,
    asks: Vec<Level>,
    candles: Vec<Candle>,
}

/// The feed's times of the event being applied.
pub(super) struct Times {
    pub(super) exchange: UnixNanos,
    pub(super) receive: UnixNanos,
    pub(super) venue_seq: u64,
}

/// Output of one event: sequencing, derivation and encoding.
pub(super) struct Output<'a> {
    pub(super) now: UnixNanos,
    pub(super) tapped: Option<&'a mut TapBuffer>,
    pub(super) scratch: &'a mut Scratch,
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
            venue_seq: times.venue_seq,
            body,
        }
    }

    /// Encodes a sequenced event for the taps and its channel's group (the full book's,
    /// for a book event; depth-limited views get bodies of their own from the caller).
    fn emit(&mut self, inst: &mut Instrument, event: &Event) {
        let channel = event.body.channel();
        let group = &mut inst.subscribers.groups[channel];
        match self.tapped.as_deref_mut() {
            Some(tap) => {
                let encoded = tap.push(&inst.name, event);
                group.copy(&tap.bytes[encoded]);
                if channel == Channel::Book {
                    inst.since_checkpoint += 1;
                }
            }
            None => group.encode(&inst.name, event),
        }
    }

    /// Publishes a book change (`delta` is `None` for a snapshot) to every view, then the
    /// BBO if the top moved.
    pub(super) fn book_changed(
        &mut self,
        inst: &mut Instrument,
        times: &Times,
        delta: Option<BookDelta>,
        kind: SnapshotKind,
    ) {
        inst.book_times = (times.exchange, times.receive, times.venue_seq);
        let body = match delta {
            Some(d) => EventBody::Delta(d),
            None => EventBody::Snapshot(inst.book.snapshot(0, kind)),
        };
        let event = self.event(inst, Channel::Book, times, body);
        self.emit(inst, &event);
        views_changed(inst, self.scratch, &event);
        let bbo = Bbo {
            bid: inst.book.best_bid(),
            ask: inst.book.best_ask(),
        };
        if bbo != inst.bbo {
            inst.bbo = bbo;
            let event = self.event(inst, Channel::Bbo, times, EventBody::Bbo(bbo));
            self.emit(inst, &event);
        }
        publish_top(inst);
    }

    /// Publishes a trade, and the candles it closes first.
    pub(super) fn trade(&mut self, inst: &mut Instrument, times: &Times, trade: Trade) {
        let mut closed = std::mem::take(&mut self.scratch.candles);
        inst.candles
            .on_trade(times.exchange, trade.price, trade.qty, &mut closed);
        for candle in closed.drain(..) {
            let event = self.event(inst, Channel::Candles, times, EventBody::Candle(candle));
            self.emit(inst, &event);
        }
        self.scratch.candles = closed;
        let event = self.event(inst, Channel::Trades, times, EventBody::Trade(trade));
        self.emit(inst, &event);
    }

    /// Publishes a status event on its channel (on the book: to every view too), with
    /// what the feed said it missed.
    pub(super) fn status(&mut self, inst: &mut Instrument, times: &Times, status: Status) {
        let channel = status.channel;
        let event = self.event(inst, channel, times, EventBody::Status(status));
        self.emit(inst, &event);
        if channel == Channel::Book {
            for view in &mut inst.subscribers.views {
                view.group.encode(&inst.name, &event);
            }
        }
        if channel == Channel::Book {
            publish_top(inst);
        }
    }
}

/// Publishes the book change `event` (a delta or a snapshot, already applied to the book)
/// to every depth-limited view: each gets its own delta of its top `depth` levels (empty
/// when they did not change, so every view's stream stays contiguous) or snapshot, with
/// the change's sequence and times.
pub(super) fn views_changed(inst: &mut Instrument, scratch: &mut Scratch, event: &Event) {
    for view in &mut inst.subscribers.views {
        let depth = view.depth as usize;
        inst.book.top_into(Side::Bid, depth, &mut scratch.bids);
        inst.book.top_into(Side::Ask, depth, &mut scratch.asks);
        let body = match &event.body {
            EventBody::Snapshot(snapshot) => EventBody::Snapshot(BookSnapshot {
                bids: scratch.bids.clone(),
                asks: scratch.asks.clone(),
                kind: snapshot.kind,
            }),
            _ => {
                let mut changes = Vec::new();
                diff_levels(Side::Bid, &view.bids, &scratch.bids, &mut changes);
                diff_levels(Side::Ask, &view.asks, &scratch.asks, &mut changes);
                EventBody::Delta(BookDelta { changes })
            }
        };
        std::mem::swap(&mut view.bids, &mut scratch.bids);
        std::mem::swap(&mut view.asks, &mut scratch.asks);
        let view_event = Event {
            instrument: event.instrument,
            sequence: event.sequence,
            exchange_time: event.exchange_time,
            receive_time: event.receive_time,
            publish_time: event.publish_time,
            venue_seq: event.venue_seq,
            body,
        };
        view.group.encode(&inst.name, &view_event);
    }
}

/// Publishes the book's top level, sequence and times to lock-free readers after every
/// book-channel event, so that a depth-1 snapshot read there is the one the shard would
/// give.
pub(super) fn publish_top(inst: &mut Instrument) {
    inst.top.publish(&TopOfBook {
        bbo: inst.bbo,
        sequence: inst.seq[Channel::Book],
        exchange_time: inst.book_times.0,
        receive_time: inst.book_times.1,
        venue_seq: inst.book_times.2,
    });
}
