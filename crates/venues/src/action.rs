//! What a venue codec hands its connection runtime: normalized book and trade output with
//! the venue's own ids (so a client can audit against the exchange), status events, and
//! the requests only the runtime can carry out (a REST snapshot, a resubscription).

use raven_model::{BookDelta, BookSnapshot, Channel, StatusKind, Trade, UnixNanos};

/// One step for the runtime, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Replace the instrument's book.
    Snapshot {
        /// The venue's id for the book's state: Binance's update id, Coinbase's message
        /// `sequence_num`, Kraken's checksum (Kraken books carry no update id).
        venue_id: u64,
        /// When the venue says the book was taken (`ZERO` when it did not say).
        exchange_time: UnixNanos,
        /// The book.
        book: BookSnapshot,
    },
    /// Apply changed levels.
    Delta {
        /// The venue's id for the book's state after this delta, as for snapshots.
        venue_id: u64,
        /// When the venue says it happened.
        exchange_time: UnixNanos,
        /// The changes, in venue order.
        delta: BookDelta,
    },
    /// A trade, new to this instrument's tape.
    Trade {
        /// When the venue says it happened.
        exchange_time: UnixNanos,
        /// The trade; `trade_id` is the venue's id.
        trade: Trade,
    },
    /// A status event for clients.
    Status {
        /// The channel it concerns.
        channel: Channel,
        /// Gap, resync, rejected, stale.
        kind: StatusKind,
        /// Venue ids skipped, for gaps (0 when unknown).
        missed: u64,
        /// A sentence for people.
        detail: String,
    },
    /// Fetch a REST snapshot for this instrument; `attempt` counts refetches of the same
    /// sync (0 first), so the runtime can back off from a venue serving stale books.
    FetchSnapshot {
        /// Refetches so far in this sync.
        attempt: u32,
    },
    /// Subscribe the instrument's book again (the venue resends a snapshot in-band).
    Resubscribe,
}

impl Action {
    /// A status action.
    pub fn status(channel: Channel, kind: StatusKind, missed: u64, detail: String) -> Action {
        Action::Status {
            channel,
            kind,
            missed,
            detail,
        }
    }
}
