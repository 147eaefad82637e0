//! Normalized events. `FeedEvent` is what a feed produces (no sequence yet); `Event` is
//! what the engine publishes, with its per-instrument, per-channel sequence and three
//! timestamps.
//!
//! Sequences are contiguous per (instrument, channel): a client that reads only trades
//! must be able to detect a gap in trades, which one counter shared by all channels would
//! not allow. Book snapshots, deltas and book status events share the book sequence.

use crate::{InstrumentId, Price, Qty, UnixNanos};

/// Contiguous per-(instrument, channel) sequence number; the first event is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sequence(pub u64);

impl Sequence {
    /// The sequence after this one.
    pub fn next(self) -> Sequence {
        Sequence(self.0 + 1)
    }
}

/// Side of the book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Buy orders.
    Bid,
    /// Sell orders.
    Ask,
}

/// Which side took liquidity in a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggressor {
    /// The buyer crossed the spread.
    Buy,
    /// The seller crossed the spread.
    Sell,
    /// The venue did not say.
    Unknown,
}

/// The stream an event belongs to. Subscriptions and sequences are per channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Book snapshots, deltas and book status.
    Book,
    /// Top-of-book changes.
    Bbo,
    /// Trades.
    Trades,
    /// OHLCV candles.
    Candles,
}

impl Channel {
    /// Every channel, in wire order.
    pub const ALL: [Channel; 4] = [
        Channel::Book,
        Channel::Bbo,
        Channel::Trades,
        Channel::Candles,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One `T` per channel, indexed by [`Channel`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerChannel<T>([T; 4]);

impl<T> PerChannel<T> {
    /// Each channel with its value, in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (Channel, &T)> {
        Channel::ALL.into_iter().zip(&self.0)
    }

    /// Each channel with its value, mutable, in wire order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Channel, &mut T)> {
        Channel::ALL.into_iter().zip(&mut self.0)
    }
}

impl<T> std::ops::Index<Channel> for PerChannel<T> {
    type Output = T;

    fn index(&self, channel: Channel) -> &T {
        &self.0[channel.index()]
    }
}

impl<T> std::ops::IndexMut<Channel> for PerChannel<T> {
    fn index_mut(&mut self, channel: Channel) -> &mut T {
        &mut self.0[channel.index()]
    }
}

/// One aggregated price level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Level {
    /// Price of the level.
    pub price: Price,
    /// Total resting quantity at the price.
    pub qty: Qty,
}

/// A changed level in a delta. Quantities are absolute; zero removes the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LevelChange {
    /// Bid or ask.
    pub side: Side,
    /// Price of the level.
    pub price: Price,
    /// New total quantity; zero removes the level.
    pub qty: Qty,
}

/// Why a snapshot was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnapshotKind {
    /// First state of a book (from a feed, or on subscribe).
    Initial,
    /// Sent after a gap or to a lagging subscriber: discard the book and start again.
    Resync,
    /// Taken for the recorder every so many book events, so that a past book is rebuilt
    /// from the nearest one rather than from the start; stored, never sent live.
    Checkpoint,
}

/// A full book (or its top levels), best level first on each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookSnapshot {
    /// Bids, highest price first.
    pub bids: Vec<Level>,
    /// Asks, lowest price first.
    pub asks: Vec<Level>,
    /// Initial or resync.
    pub kind: SnapshotKind,
}

/// Changed levels, applied in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BookDelta {
    /// The changes.
    pub changes: Vec<LevelChange>,
}

/// A trade print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// Execution price.
    pub price: Price,
    /// Executed quantity.
    pub qty: Qty,
    /// Which side took liquidity.
    pub aggressor: Aggressor,
    /// The venue's trade id, verbatim.
    pub trade_id: String,
}

/// Top of book; a side is `None` when empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bbo {
    /// Best bid.
    pub bid: Option<Level>,
    /// Best ask.
    pub ask: Option<Level>,
}

/// Candle width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CandleInterval {
    /// One second.
    Second1,
    /// One minute.
    Minute1,
}

impl CandleInterval {
    /// Every interval the engine builds.
    pub const ALL: [CandleInterval; 2] = [CandleInterval::Second1, CandleInterval::Minute1];

    /// Width in nanoseconds.
    pub fn nanos(self) -> u64 {
        match self {
            CandleInterval::Second1 => UnixNanos::PER_SECOND,
            CandleInterval::Minute1 => 60 * UnixNanos::PER_SECOND,
        }
    }
}

/// An OHLCV bar built from trades; published when the bar closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candle {
    /// Bar width.
    pub interval: CandleInterval,
    /// Start of the bar (exchange time).
    pub open_time: UnixNanos,
    /// First trade price.
    pub open: Price,
    /// Highest trade price.
    pub high: Price,
    /// Lowest trade price.
    pub low: Price,
    /// Last trade price.
    pub close: Price,
    /// Sum of trade quantities.
    pub volume: Qty,
    /// Number of trades.
    pub trades: u64,
}

/// What a status event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusKind {
    /// Events were lost; `missed` says how many when known.
    Gap,
    /// The book is being rebuilt from a fresh snapshot.
    Resync,
    /// The feed connection is down.
    FeedDown,
    /// The feed connection is back.
    FeedUp,
    /// No data for longer than expected.
    Stale,
    /// A feed event was refused (it would have broken the book) and was not applied.
    Rejected,
    /// The server is shutting down: the stream ends after its drain time.
    GoingAway,
}

impl StatusKind {
    /// The kind in snake case, as metrics labels and the CLI write it.
    pub fn name(self) -> &'static str {
        match self {
            StatusKind::Gap => "gap",
            StatusKind::Resync => "resync",
            StatusKind::FeedDown => "feed_down",
            StatusKind::FeedUp => "feed_up",
            StatusKind::Stale => "stale",
            StatusKind::Rejected => "rejected",
            StatusKind::GoingAway => "going_away",
        }
    }
}

/// A status event: gaps, resyncs and feed state are events in the stream, not only logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What happened.
    pub kind: StatusKind,
    /// The channel it concerns.
    pub channel: Channel,
    /// Number of events missed, for gaps (0 when unknown or not applicable).
    pub missed: u64,
    /// A sentence for people.
    pub detail: String,
}

/// The payload of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// Full book.
    Snapshot(BookSnapshot),
    /// Changed levels.
    Delta(BookDelta),
    /// A trade.
    Trade(Trade),
    /// New top of book.
    Bbo(Bbo),
    /// A closed bar.
    Candle(Candle),
    /// Gap, resync, feed state.
    Status(Status),
}

impl EventBody {
    /// The channel this body travels on.
    pub fn channel(&self) -> Channel {
        match self {
            EventBody::Snapshot(_) | EventBody::Delta(_) => Channel::Book,
            EventBody::Trade(_) => Channel::Trades,
            EventBody::Bbo(_) => Channel::Bbo,
            EventBody::Candle(_) => Channel::Candles,
            EventBody::Status(s) => s.channel,
        }
    }
}

/// An event as the engine publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Which instrument.
    pub instrument: InstrumentId,
    /// Contiguous per (instrument, channel).
    pub sequence: Sequence,
    /// When the venue says it happened.
    pub exchange_time: UnixNanos,
    /// When Raven received it.
    pub receive_time: UnixNanos,
    /// When the engine published it, so clients can measure end-to-end latency.
    pub publish_time: UnixNanos,
    /// The venue's own id for the event (its update id, message number or checksum), so
    /// a client can audit against the exchange; 0 when the source has none.
    pub venue_seq: u64,
    /// The payload.
    pub body: EventBody,
}

/// What a feed hands the engine: normalized, not yet sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    /// Which instrument.
    pub instrument: InstrumentId,
    /// When the venue says it happened.
    pub exchange_time: UnixNanos,
    /// When Raven received it.
    pub receive_time: UnixNanos,
    /// The venue's own id for the event; 0 when the source has none.
    pub venue_seq: u64,
    /// The payload.
    pub kind: FeedKind,
}

/// Feed payloads. BBO and candles are not here: the engine derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedKind {
    /// Replace the book.
    Snapshot(BookSnapshot),
    /// Change levels.
    Delta(BookDelta),
    /// A trade.
    Trade(Trade),
    /// Feed state (down, up, stale).
    Status(Status),
}
