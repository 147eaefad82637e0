//! Feeds: sources of normalized [`raven_model::FeedEvent`]s for the engine. Each feed
//! registers its instruments, sends batches through an [`crate::engine::EngineInput`],
//! and answers the engine's resync requests with fresh snapshots.
//!
//! - [`sim`]: the deterministic built-in market, the default.

pub mod sim;

use raven_model::{InstrumentName, Price};

/// What a feed says about one of its instruments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstrumentInfo {
    /// `VENUE:SYMBOL`.
    pub name: InstrumentName,
    /// Minimum price increment.
    pub tick_size: Price,
}
