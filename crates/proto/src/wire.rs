//! The `raven.v1` wire format where it is hot: encoding events once for every subscriber
//! ([`encode`]: the `put_*` functions; [`EncodedBatch`], a subscriber's batch of them),
//! and reading event headers out of a `StreamResponse` without decoding bodies
//! ([`scan`]), for clients that only need sequences and timestamps.

mod batch;
mod encode;
pub mod scan;

pub use batch::EncodedBatch;
pub use encode::{
    Header, channel_number, put_event, put_heartbeat_ack, put_history_end, put_snapshot_end,
    status_number,
};
