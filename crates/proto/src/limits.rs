//! The limits the server enforces on requests, published here so that clients can stay
//! inside them without depending on the server. A request past one is refused with
//! `INVALID_ARGUMENT` or `RESOURCE_EXHAUSTED` and a message naming the limit.

/// Deepest book view a subscription or snapshot may ask for (0 is the full book).
pub const MAX_DEPTH: u32 = 10_000;

/// Subscriptions (instruments × channels) one `Market.Stream` may hold.
pub const MAX_SUBSCRIPTIONS_PER_STREAM: usize = 10_000;

/// Largest `Market` request message, in bytes: a subscribe naming 100,000 instruments
/// still decodes, so that the instrument limit can refuse it precisely.
pub const MAX_MARKET_REQUEST_BYTES: usize = 4 << 20;

/// Most events one `Ingest.Publish` request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 10_000;

/// Largest `Ingest.Publish` request message, in bytes.
pub const MAX_PUBLISH_REQUEST_BYTES: usize = 16 << 20;

/// Most instruments one `History.Query` or `History.Replay` may name.
pub const MAX_HISTORY_INSTRUMENTS: usize = 1000;

/// Largest `limit` of a history request (0 means no limit).
pub const MAX_HISTORY_LIMIT: u64 = 1_000_000_000;

/// Fastest replay speed (0 means as fast as possible).
pub const MAX_REPLAY_SPEED: f64 = 1_000_000.0;

/// Recorded events one instrument and channel of a subscription with a start time may
/// send ahead of live ones; an older start is refused (fetch it with `History.Query`).
pub const MAX_START_BACKLOG: usize = 100_000;
