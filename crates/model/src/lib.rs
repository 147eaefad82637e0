//! Raven's domain model: the normalized values every feed, the engine, the store and the
//! API share. Pure data and validation — this crate cannot depend on async, I/O or
//! wire-format crates, so the compiler keeps the core free of them.
//!
//! Numbers are integers at one published scale ([`FIXED_SCALE`]); there are no floats
//! here at all (display uses the exact decimal form).

mod event;
mod fixed;
mod instrument;
mod time;

pub use event::{
    Aggressor, Bbo, BookDelta, BookSnapshot, Candle, CandleInterval, Channel, Event, EventBody,
    FeedEvent, FeedKind, Level, LevelChange, PerChannel, Sequence, Side, SnapshotKind, Status,
    StatusKind, Trade,
};
pub use fixed::{FIXED_DECIMALS, FIXED_SCALE, FixedError, FixedErrorKind, Price, Qty};
pub use instrument::{
    InstrumentError, InstrumentId, InstrumentName, InstrumentRegistry, MAX_INSTRUMENT_LEN,
};
pub use time::UnixNanos;
