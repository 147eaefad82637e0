//! The order book: one L2 book per instrument, owned and mutated by a single writer.
//!
//! - [`OrderBook`] applies snapshots and deltas; integrity problems (crossed book,
//!   negative quantity, sequence gap) come back as [`BookError`] values and leave the book
//!   exactly as it was — an update is never applied half-way.
//! - [`BookFollower`] keeps a subscriber's copy of a book from Raven's book channel and
//!   says when events were missed or a resync replaced it.
//! - [`diff_levels`] turns two top-N views into the changes between them, which is how
//!   depth-limited subscribers get deltas that keep their N levels exact.
//! - [`top`] publishes the top of book through a seqlock so other threads read it without
//!   locks and without ever seeing a torn state.

mod book;
mod depth;
mod follow;
pub mod top;

pub use book::{BookError, OrderBook};
pub use depth::diff_levels;
pub use follow::{BookFollower, FollowError, Step};
