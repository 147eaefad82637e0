//! The Raven market-data server, as a library (the `raven` command line in `crates/cli`
//! runs it). Data flows one way:
//!
//! `feed` (the seam every source plugs into: the simulator, the publish API) →
//! `engine` (one writer per instrument: books, sequences, BBO, candles; encodes each
//! event once, for subscribers and the recorder alike) → `fanout` (bounded
//! per-subscriber mailboxes, the delivery policy) → `api` (gRPC streams, request
//! validation). The `recorder` taps the engine and writes every event, as encoded, to a
//! `store` (SQLite or PostgreSQL); `query` reads it back (history, book-at-time, replay, the history→live
//! handover). On an ingest node `replication` taps it too, publishing every batch to NATS
//! JetStream for edge nodes. `app` wires them together from a `config`, with the time from a
//! `clock`, and stops them on a `shutdown` signal. `http` serves the `metrics` read from
//! their counters, health and stats.

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod engine;
pub mod fanout;
pub mod feed;
pub mod histogram;
pub mod http;
pub mod metrics;
pub mod net;
pub mod query;
pub mod recorder;
pub mod replication;
pub mod shutdown;
pub mod store;
