//! Exchange codecs, pure: for each venue, the frames Raven sends (subscriptions), the
//! decoding of what it receives (borrowed JSON fields, exact decimals straight into
//! [`raven_model::Price`]/[`raven_model::Qty`], unknown fields and messages skipped and
//! counted), the per-instrument book-sync state machine, and normalization to
//! [`Action`]s: book snapshots and deltas with the venue's own ids, trades de-duplicated
//! by venue trade id, status events, and requests only the connection runtime can carry
//! out (a REST snapshot, a resubscription). No sockets, no async, no clock: every time is
//! passed in, so recorded payloads replay exactly.
//!
//! - [`binance`]: spot and USD-M futures (REST snapshot + diff stream, `U`/`u`/`pu`).
//! - [`coinbase`]: Advanced Trade (`level2` snapshot in-band, `sequence_num`).
//! - [`kraken`]: spot v2 (`book` with a CRC32 over the top ten levels).

mod json;

pub mod action;
pub mod binance;
pub mod coinbase;
pub mod kraken;
pub mod tape;
pub mod time;

pub use action::Action;
pub use json::{DecPrice, DecQty, PairLevels};
